//! `reloadsup ctl` against a live primary: status, reload outcomes, scaling, revive, and a
//! crowd of control clients (good and idle) during reloads.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use reloadsup_integration_tests::{
    bins, ctl, proc, shell_quote, wait_for, Limits, Load, Run, Sandbox, Supervisor, DEADLINE,
};
use serde_json::Value;

use crate::{standard, start};

fn text(out: &Output) -> String {
    format!(
        "exit {}; stdout: {}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Polls `ctl status --json` until `pred` holds; returns that status.
fn wait_status(sup: &Supervisor, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for(DEADLINE, what, || {
            last = sup.status_json();
            pred(&last).then(|| last.clone())
        })
    }));
    match found {
        Ok(v) => v,
        Err(_) => panic!("status never showed {what}; last: {last:#}"),
    }
}

fn ready_workers(status: &Value) -> usize {
    status["workers"]
        .as_array()
        .map_or(0, |w| w.iter().filter(|w| w["state"] == "ready").count())
}

/// `n` workers, all ready, current and target both `n`.
fn has_ready_workers(status: &Value, n: u64) -> bool {
    status["target_workers"] == n
        && status["current_workers"] == n
        && ready_workers(status) == n as usize
}

fn hello_script(sb: &Sandbox) -> std::path::PathBuf {
    sb.exec_script("server", &bins::example("hello"), &["--delay", "200ms"])
}

#[test]
fn status_json_reports_workers_and_listeners() {
    let sb = Sandbox::new("status_json_reports_workers_and_listeners");
    let (sup, addr) = start(&sb, Run::hello(&[]).args(standard(2)), 2);
    let children = sup.wait_workers(2);
    let status = wait_status(&sup, "2 ready workers", |s| has_ready_workers(s, 2));

    assert_eq!(status["pid"], sup.pid(), "{status:#}");
    assert_eq!(status["generation"], 1, "{status:#}");
    assert_eq!(status["dead_workers"], 0, "{status:#}");
    let listeners = status["listeners"].as_array().expect("listeners");
    assert_eq!(listeners.len(), 1, "{status:#}");
    assert_eq!(listeners[0]["name"], "listen0");
    assert_eq!(listeners[0]["address"], format!("tcp://{addr}"));
    let workers = status["workers"].as_array().expect("workers");
    let mut pids: Vec<u32> = workers
        .iter()
        .map(|w| w["pid"].as_u64().expect("worker pid") as u32)
        .collect();
    pids.sort_unstable();
    assert_eq!(pids, children, "{status:#}");
    let mut slots: Vec<u64> = workers
        .iter()
        .map(|w| w["slot"].as_u64().expect("slot"))
        .collect();
    slots.sort_unstable();
    assert_eq!(slots, [0, 1]);
    for w in workers {
        assert_eq!(w["generation"], 1, "{w}");
        assert_eq!(w["restarts"], 0, "{w}");
        assert!(w["uptime_s"].is_number(), "{w}");
        assert!(w.get("status").is_some(), "{w}");
    }
    assert!(status.get("last_reload").is_some(), "{status:#}");

    // The plain form works too and mentions the generation.
    let plain = sup.ctl(&["status"]);
    assert!(plain.status.success(), "{}", text(&plain));
}

#[test]
fn ctl_reload_reports_outcome() {
    let sb = Sandbox::new("ctl_reload_reports_outcome");
    let script = hello_script(&sb);
    let (sup, addr) = start(&sb, Run::new([&script]).args(standard(2)), 2);
    let load = Load::start(addr, 4, Limits::default());
    load.wait_for_more_answers(20, DEADLINE);

    let out = sup.ctl(&["reload"]);
    assert!(out.status.success(), "good reload: {}", text(&out));
    let status = sup.status_json();
    assert_eq!(status["generation"], 2, "{status:#}");
    assert_eq!(status["last_reload"]["generation"], 2, "{status:#}");
    assert_eq!(status["last_reload"]["outcome"], "succeeded", "{status:#}");

    sb.write_script("server", "#!/bin/sh\nexit 1\n");
    let out = sup.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "failing reload: {}", text(&out));
    let status = sup.status_json();
    assert_eq!(status["generation"], 2, "{status:#}");
    assert_eq!(
        status["last_reload"]["outcome"], "rolled back",
        "{status:#}"
    );
    assert!(
        status["last_reload"]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "a rollback has a reason: {status:#}"
    );

    load.wait_for_more_answers(20, DEADLINE);
    let report = load.stop();
    report.assert_no_failures();
}

#[test]
fn ctl_scale_under_load() {
    let sb = Sandbox::new("ctl_scale_under_load");
    let (sup, addr) = start(&sb, Run::hello(&["--delay", "200ms"]).args(standard(1)), 1);
    let load = Load::start(addr, 8, Limits::default());
    load.wait_for_more_answers(20, DEADLINE);
    for n in [8u64, 2] {
        let out = sup.ctl(&["scale", &n.to_string()]);
        assert!(out.status.success(), "scale {n}: {}", text(&out));
        wait_status(&sup, &format!("{n} ready workers"), |s| {
            has_ready_workers(s, n)
        });
        sup.wait_workers(n as usize);
        load.wait_for_more_answers(20, DEADLINE);
    }
    let report = load.stop();
    eprintln!("{}", report.summary());
    report.assert_no_failures();
}

#[test]
fn ctl_inc_dec_and_stop() {
    let sb = Sandbox::new("ctl_inc_dec_and_stop");
    let (mut sup, _) = start(&sb, Run::hello(&[]).args(standard(2)), 2);
    let out = sup.ctl(&["inc"]);
    assert!(out.status.success(), "inc: {}", text(&out));
    wait_status(&sup, "3 ready workers", |s| has_ready_workers(s, 3));
    let out = sup.ctl(&["dec"]);
    assert!(out.status.success(), "dec: {}", text(&out));
    wait_status(&sup, "2 ready workers", |s| has_ready_workers(s, 2));
    let workers = sup.wait_workers(2);

    let out = sup.ctl(&["stop"]);
    assert!(out.status.success(), "stop: {}", text(&out));
    let status = sup.wait_exit(DEADLINE);
    assert_eq!(
        status.code(),
        Some(0),
        "primary exit after ctl stop: {status}"
    );
    assert!(!workers.iter().any(|&p| proc::is_alive(p)), "workers left");
}

#[test]
fn dead_slot_is_revived() {
    let sb = Sandbox::new("dead_slot_is_revived");
    let crash = sb.join("crash");
    let hello = bins::example("hello");
    let script = sb.write_script(
        "server",
        &format!(
            "#!/bin/sh\nif [ -e {} ]; then exit 1; fi\nexec {} \"$@\"\n",
            shell_quote(&crash.to_string_lossy()),
            shell_quote(&hello.to_string_lossy())
        ),
    );
    let (sup, addr) = start(&sb, Run::new([&script]).args(standard(1)), 1);
    let worker = sup.wait_workers(1)[0];
    sb.write("crash", "");
    proc::kill(worker, libc::SIGKILL).expect("kill the worker");
    let status = wait_status(&sup, "a dead slot", |s| s["dead_workers"] == 1);
    assert_eq!(status["target_workers"], 1, "{status:#}");

    std::fs::remove_file(&crash).expect("remove the crash marker");
    let out = sup.ctl(&["revive"]);
    assert!(out.status.success(), "revive: {}", text(&out));
    wait_status(&sup, "the revived worker ready", |s| {
        s["dead_workers"] == 0 && has_ready_workers(s, 1)
    });
    let load = Load::start(addr, 2, Limits::default());
    load.wait_for_more_answers(20, DEADLINE);
    load.stop().assert_no_failures();
}

#[test]
fn many_control_clients_during_reloads() {
    const GOOD: usize = 64;
    const IDLE: usize = 8;
    const ROUNDS: usize = 3;
    let sb = Sandbox::new("many_control_clients_during_reloads");
    let (mut sup, addr) = start(&sb, Run::hello(&["--delay", "200ms"]).args(standard(2)), 2);
    let load = Load::start(addr, 8, Limits::default());
    load.wait_for_more_answers(20, DEADLINE);

    // Idle clients connect and never send a byte; they must not hold anyone up.
    let idle: Vec<UnixStream> = (0..IDLE)
        .map(|_| UnixStream::connect(sup.control_path()).expect("connect to control.sock"))
        .collect();

    let control = sup.control_path();
    let barrier = Arc::new(Barrier::new(GOOD + 1));
    let clients: Vec<_> = (0..GOOD)
        .map(|_| {
            let control = control.clone();
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                (0..ROUNDS)
                    .map(|_| status_ok(&control))
                    .filter_map(Result::err)
                    .collect::<Vec<String>>()
            })
        })
        .collect();
    barrier.wait();
    for generation in 2..=4 {
        if let Err(reason) = sup.reload(generation) {
            panic!("reload to {generation} failed: {reason}");
        }
        // Pacing, not a wait: the ctl clients get to run between reloads.
        thread::sleep(Duration::from_millis(20));
    }
    let mut problems = Vec::new();
    for c in clients {
        problems.extend(c.join().expect("control client thread"));
    }
    drop(idle);
    load.wait_for_more_answers(20, DEADLINE);
    let report = load.stop();
    assert!(
        problems.is_empty(),
        "{} of {} ctl status calls failed, e.g. {:?}",
        problems.len(),
        GOOD * ROUNDS,
        &problems[..problems.len().min(5)]
    );
    report.assert_no_failures();
    // The primary is still fine.
    assert!(sup.status_json()["generation"] == 4);
}

fn status_ok(control: &Path) -> Result<(), String> {
    let out = ctl(control, &["status", "--json"]);
    if !out.status.success() {
        return Err(text(&out));
    }
    let v: Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", text(&out)))?;
    if v["pid"].is_number() {
        Ok(())
    } else {
        Err(format!("no pid in {v}"))
    }
}

#[test]
fn ctl_with_missing_instance_exits_1() {
    let path = Path::new("/nonexistent/control.sock");
    let out = ctl(path, &["status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr.contains("/nonexistent/control.sock"),
        "{}",
        text(&out)
    );
    assert!(!stderr.contains("panicked"), "{}", text(&out));
}

#[test]
fn peer_of_another_uid_is_refused_and_garbage_closes_only_its_connection() {
    let sb = Sandbox::new("peer_of_another_uid_is_refused");
    let (sup, _) = start(&sb, Run::hello(&[]).args(standard(1)), 1);
    let control = sup.control_path();

    // Garbage: a frame that announces 4 GiB, then random bytes. Only that connection closes.
    {
        use std::io::{Read, Write};
        let mut bad = UnixStream::connect(&control).expect("connect");
        bad.set_read_timeout(Some(DEADLINE)).expect("timeout");
        bad.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
            .expect("write");
        let mut buf = Vec::new();
        // The primary's hello, then EOF.
        let _ = bad.read_to_end(&mut buf);
    }
    assert!(status_ok(&control).is_ok(), "the primary still answers");

    if !reloadsup_integration_tests::require(
        "root for the uid part (to act as another user)",
        reloadsup_integration_tests::is_root(),
    ) {
        return;
    }
    // Let uid 65534 reach the socket, so SO_PEERCRED is what refuses it.
    use std::os::unix::fs::PermissionsExt;
    for p in [
        sb.path().to_path_buf(),
        sup.state_dir().to_path_buf(),
        control.clone(),
    ] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    let out = {
        use std::os::unix::process::CommandExt;
        // The build tree may be in a home directory of mode 0700: the other user runs a copy.
        let mut cmd = std::process::Command::new(sb.shared_copy(&bins::reloadsup()));
        cmd.arg("ctl").arg("--control").arg(&control).arg("status");
        cmd.uid(65534).gid(65534);
        reloadsup_integration_tests::output_with_timeout(&mut cmd, Duration::from_secs(30))
    };
    assert!(
        !out.status.success(),
        "a stranger got an answer: {}",
        text(&out)
    );
    assert!(
        sup.log().contains("refused a peer of uid 65534"),
        "the refusal is logged"
    );
    assert!(
        status_ok(&control).is_ok(),
        "the primary still answers its own user"
    );
}
