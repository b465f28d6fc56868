//! `reloadsup ctl` against a live primary: status, reload outcomes, scaling, revive, and a
//! crowd of control clients (good and idle) during reloads.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use reloadsup_integration_tests::{
    bins, ctl, proc, shell_quote, wait_for, wait_until, Limits, Load, Run, Sandbox, Supervisor,
    DEADLINE,
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

/// Issue 19, mutant M8: the 4096-worker limit of `scale` (and of `-n`) had no test; a scale
/// past it is refused and changes nothing.
#[test]
fn scale_past_4096_workers_is_refused_and_changes_nothing() {
    let sb = Sandbox::new("scale_past_4096");
    let (sup, _) = start(&sb, Run::hello(&[]).args(standard(1)), 1);
    let out = sup.ctl(&["scale", "4097"]);
    assert!(
        !out.status.success(),
        "scale 4097 went through: {}",
        text(&out)
    );
    assert!(text(&out).contains("limit of 4096"), "{}", text(&out));
    assert_eq!(sup.status_json()["target_workers"], 1);
    let out = Run::hello(&[]).args(["-n", "4097"]).output(&sb, DEADLINE);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("4096"), "{err}");
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

/// One raw control client: connect, hello, `status`; `Ok` once its reply arrived.
fn raw_status(stream: &mut UnixStream) -> Result<(), String> {
    use reloadsup_protocol::{encode_frame, FrameReader, Message, Request};
    use std::io::{Read, Write};
    let hello = encode_frame(&Message::hello()).map_err(|e| e.to_string())?;
    let req = encode_frame(&Message::Request {
        id: 1,
        request: Request::Status,
    })
    .map_err(|e| e.to_string())?;
    stream
        .write_all(&[hello, req].concat())
        .map_err(|e| format!("write: {e}"))?;
    let mut reader = FrameReader::new();
    let mut buf = [0u8; 4096];
    loop {
        while let Some(msg) = reader.next_frame::<Message>().map_err(|e| e.to_string())? {
            if matches!(msg, Message::Reply { id: 1, .. }) {
                return Ok(());
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => return Err("closed before the reply".into()),
            Ok(n) => reader.push(&buf[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// Regression (issue 12, item 8): the primary accepted a fixed batch per wake-up and mio, being
/// edge-triggered, never said again that more clients were waiting: of a burst larger than the
/// batch, the rest went unanswered until yet another client came.
#[test]
fn burst_of_ctl_clients_is_all_answered_without_a_later_client() {
    const CLIENTS: usize = 150;
    let sb = Sandbox::new("burst_of_ctl_clients_is_all_answered");
    let (sup, _) = start(&sb, Run::hello(&[]).args(standard(1)), 1);
    let control = sup.control_path();
    // Stopped, the primary lets the whole burst pile up in the backlog, as one wake-up.
    proc::kill(sup.pid(), libc::SIGSTOP).expect("SIGSTOP the primary");
    let connected = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let control = control.clone();
            let connected = Arc::clone(&connected);
            thread::spawn(move || {
                let mut s = UnixStream::connect(&control).map_err(|e| format!("connect: {e}"))?;
                s.set_read_timeout(Some(DEADLINE))
                    .map_err(|e| e.to_string())?;
                connected.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                raw_status(&mut s)
            })
        })
        .collect();
    let all_in = std::panic::catch_unwind(|| {
        wait_for(DEADLINE, "the burst to be connected", || {
            (connected.load(std::sync::atomic::Ordering::SeqCst) == CLIENTS).then_some(())
        })
    });
    proc::kill(sup.pid(), libc::SIGCONT).expect("SIGCONT the primary");
    all_in.expect("every client connected to the stopped primary");
    let failed: Vec<String> = clients
        .into_iter()
        .filter_map(|c| c.join().expect("client thread").err())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {CLIENTS} clients got no answer: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
}

/// `ctl` never hangs on a primary that does not answer: it gives up after `--timeout`.
#[test]
fn ctl_gives_up_on_a_stopped_primary() {
    let sb = Sandbox::new("ctl_gives_up_on_a_stopped_primary");
    let (sup, _) = start(&sb, Run::hello(&[]).args(standard(1)), 1);
    proc::kill(sup.pid(), libc::SIGSTOP).expect("SIGSTOP the primary");
    let out = sup.ctl(&["--timeout", "1s", "status"]);
    proc::kill(sup.pid(), libc::SIGCONT).expect("SIGCONT the primary");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("did not answer in time"), "{}", text(&out));
    assert!(
        sup.ctl(&["status"]).status.success(),
        "answers once resumed"
    );
}

/// Regression (issue 12, item 12): each connection was bounded, but not all of them together:
/// a same-uid client holding half-sent frames on hundreds of connections made the primary
/// hold gigabytes. Past the global budget the connection that would cross it is closed, and
/// only it.
#[test]
fn control_connections_share_one_buffer_budget() {
    use reloadsup_protocol::{encode_frame, Message, MAX_FRAME};
    use std::io::{Read, Write};
    const HOGS: usize = 48; // of ~1 MiB each, past the 32 MiB budget
    let sb = Sandbox::new("control_connections_share_one_buffer_budget");
    let (sup, _) = start(&sb, Run::hello(&[]).args(standard(1)), 1);
    let rss_before = proc::status_kb(sup.pid(), "VmRSS").unwrap_or(0);
    let hello = encode_frame(&Message::hello()).expect("hello");
    // A frame that announces MAX_FRAME bytes and stops one short: the primary must keep it.
    let mut half = hello.clone();
    half.extend_from_slice(&(MAX_FRAME as u32).to_le_bytes());
    half.extend(std::iter::repeat_n(0u8, MAX_FRAME - 1));
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..HOGS {
        let mut s = UnixStream::connect(sup.control_path()).expect("connect");
        s.set_write_timeout(Some(DEADLINE)).expect("timeout");
        match s.write_all(&half) {
            Ok(()) => open.push(s),
            Err(_) => refused += 1,
        }
    }
    // The primary reads on its own time: wait until it has closed some, or read them all.
    wait_for(DEADLINE, "a connection closed for the budget", || {
        (sup.count_in_log("hold too much") > 0).then_some(())
    });
    let rss_peak = proc::status_kb(sup.pid(), "VmRSS").unwrap_or(0);
    eprintln!("primary VmRSS: {rss_before} kB before, {rss_peak} kB with {HOGS} half frames");
    // The first connections came in under the budget and are still open.
    for s in open.iter_mut().take(8) {
        s.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Ok(0) => panic!("a connection under the budget was closed"),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("a connection under the budget failed: {e}"),
        }
    }
    assert!(
        rss_peak < rss_before + 64 * 1024,
        "the primary grew from {rss_before} kB to {rss_peak} kB"
    );
    eprintln!("{refused} writes refused, {} connections kept", open.len());
    drop(open);
    let out = sup.ctl(&["status"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// Regression (issue 12, item 11): `ctl` talked to whatever served the control socket. One
/// run by another user (here a real primary as uid 65534) is refused before a request is sent.
#[test]
fn ctl_refuses_a_control_socket_served_by_another_uid() {
    use std::os::unix::process::CommandExt;
    if !crate::running_as_root("ctl_refuses_a_control_socket_served_by_another_uid") {
        return;
    }
    let sb = Sandbox::new("ctl_refuses_a_control_socket_served_by_another_uid");
    let home = sb.join("nobody");
    std::fs::create_dir(&home).expect("mkdir");
    std::os::unix::fs::chown(&home, Some(65534), Some(65534)).expect("chown");
    let state = home.join("state");
    // The build tree may sit in a directory only root can enter (a 0700 home, a CI clone):
    // the other user runs a copy it can reach (issue 22, defect 4).
    let reloadsup = sb.shared_copy(&bins::reloadsup());
    let mut child = std::process::Command::new(reloadsup)
        .args([
            "-l",
            "tcp://127.0.0.1:0",
            "--ready",
            "immediate",
            "--name",
            "t",
        ])
        .arg("--state-dir")
        .arg(&state)
        .args(["--", "/bin/sleep", "600"])
        .uid(65534)
        .gid(65534)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(sb.join("stderr")).expect("stderr file"))
        .current_dir(&home)
        .spawn()
        .expect("start a primary as uid 65534");
    let control = state.join("control.sock");
    wait_for(DEADLINE, "the other user's control socket", || {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(sb.join("stderr")).unwrap_or_default();
            panic!("the primary of uid 65534 exited ({status}): {log}");
        }
        control.exists().then_some(())
    });
    let out = ctl(&control, &["status"]);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("runs as uid 65534"), "{}", text(&out));
}

/// Regression (issue 12, item 11): a state directory under a shared sticky directory (like
/// `/tmp/reloadsup-UID`) was used whoever owned it. Planted by another user, open to others,
/// or a symlink: start refuses with a usage error naming --state-dir. A symlinked pidfile is
/// refused too, and its target left alone.
#[test]
fn planted_state_dir_or_pidfile_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    if !crate::running_as_root("planted_state_dir_or_pidfile_is_refused") {
        return;
    }
    let sb = Sandbox::new("planted_state_dir_or_pidfile_is_refused");
    let uid = crate::euid();
    let refused = |case: &str, prepare: &dyn Fn(&Path), flags: &[&str], expect: &str| {
        // A /tmp of our own: root's and sticky, open to all.
        let tmp = sb.join(case);
        std::fs::create_dir(&tmp).expect("mkdir");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        let planted = tmp.join(format!("reloadsup-{uid}"));
        prepare(&planted);
        let state = planted.join("t");
        let out = Run::hello(&[])
            .bare()
            .args([
                "-l",
                "tcp://127.0.0.1:0",
                "--ready",
                "immediate",
                "--state-dir",
            ])
            .arg(&state)
            .args(flags)
            .output(&sb, DEADLINE);
        assert_eq!(out.status.code(), Some(2), "{case}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expect), "{case}: {}", text(&out));
        // (The pidfile is written last, after the sockets are bound.)
        if flags.is_empty() {
            assert!(!state.exists(), "{case}: the state dir was made");
        }
    };
    refused(
        "other-owner",
        &|p| {
            std::fs::create_dir(p).expect("mkdir");
            std::os::unix::fs::chown(p, Some(65534), Some(65534)).expect("chown");
        },
        &[],
        "owned by uid 65534",
    );
    refused(
        "world-writable",
        &|p| {
            std::fs::create_dir(p).expect("mkdir");
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        },
        &[],
        "writable by others",
    );
    let elsewhere = sb.join("elsewhere");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    refused(
        "symlink",
        &|p| std::os::unix::fs::symlink(&elsewhere, p).expect("symlink"),
        &[],
        "is a symlink",
    );
    assert!(!elsewhere.join("t").exists(), "the symlink was followed");

    let victim = sb.join("victim");
    std::fs::write(&victim, "keep").expect("write");
    let link = sb.join("pid-link");
    std::os::unix::fs::symlink(&victim, &link).expect("symlink");
    let link_arg = link.to_string_lossy().into_owned();
    refused(
        "pidfile",
        &|p| std::fs::create_dir(p).expect("mkdir"),
        &["--pidfile", &link_arg],
        "--pidfile",
    );
    assert_eq!(std::fs::read_to_string(&victim).expect("read"), "keep");
}

/// Regression (issue 12, item 12): a worker's `STATUS=` text reached `ctl status` (and the
/// console) raw, escape sequences and all.
#[test]
fn status_text_is_shown_without_control_characters() {
    let test = "status_text_is_shown_without_control_characters";
    let Some(py) = reloadsup_integration_tests::python3().or_else(|| crate::tool(test, "python3"))
    else {
        return;
    };
    let sb = Sandbox::new(test);
    let script = sb.write_script(
        "server",
        &format!(
            "#!/bin/sh\nexec {} -c 'import os,socket,time; socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b\"READY=1\\nSTATUS=\\x1b[2J\\x1b]0;owned\\x07red\\rfake\\x7f\\xc2\\x9bend\", os.environ[\"NOTIFY_SOCKET\"]); time.sleep(600)'\n",
            shell_quote(&py.to_string_lossy())
        ),
    );
    let (sup, _) = start(&sb, Run::new([&script]).args(standard(1)), 1);
    let status = wait_status(&sup, "the worker's status text", |s| {
        s["workers"][0]["status"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    });
    assert_eq!(
        status["workers"][0]["status"], "?[2J?]0;owned?red?fake??end",
        "{status:#}"
    );
    let table = sup.ctl(&["status"]);
    let out = String::from_utf8_lossy(&table.stdout);
    assert!(
        !out.chars().any(|c| c.is_control() && c != '\n'),
        "control characters in: {out:?}"
    );
}

/// Removes the command from disk and reloads: every worker role of the new generation fails
/// its exec, and `ctl reload` says so, with the errno, instead of a bare exit status.
fn reload_names_a_command_that_cannot_be_run(name: &str, spares: usize) {
    let sb = Sandbox::new(name);
    let script = sb.exec_script("server", &bins::example("hello"), &[]);
    let prespawn = spares.to_string();
    let run = Run::new([&script])
        .args(standard(2))
        .args(["--prespawn", &prespawn]);
    let (sup, _) = start(&sb, run, 2);
    // The spares are started a moment after the first generation; the reload must find them.
    sup.wait_workers(2 + spares);
    std::fs::remove_file(&script).expect("removing the command");
    let out = sup.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let expected = format!(
        "could not start: unable to run {}: no such file or directory",
        script.display()
    );
    assert!(stdout.contains(&expected), "{}", text(&out));
    let status = sup.status_json();
    assert!(
        json_reason(&status).contains(&expected),
        "the status keeps the reason: {status:#}"
    );
    let from_spares = sup.count_in_log("runs in spare pid");
    assert_eq!(from_spares, spares, "the workers that ran in a spare");
}

fn json_reason(status: &Value) -> String {
    status["last_reload"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn ctl_reload_names_a_command_that_cannot_be_run() {
    reload_names_a_command_that_cannot_be_run("ctl_reload_names_a_command_that_cannot_be_run", 0);
}

#[test]
fn ctl_reload_names_a_command_that_cannot_be_run_from_a_spare() {
    reload_names_a_command_that_cannot_be_run(
        "ctl_reload_names_a_command_that_cannot_be_run_from_a_spare",
        2,
    );
}

/// A group id the kernel refuses in the worker role, as root (setgroups) and not (setgid):
/// (gid_t)-1 is no valid group. The config cannot know, so the role's setup fails, and both
/// the crash of the first generation and `ctl reload` name the step and the errno rather than
/// "the command could not be run".
#[test]
fn ctl_reload_names_the_setup_step_that_failed() {
    let sb = Sandbox::new("ctl_reload_names_the_setup_step_that_failed");
    let mut sup = Run::hello(&[])
        .args(standard(1))
        .args(["--group", "4294967295"])
        .start(&sb);
    let line = sup.wait_for_log("could not start", DEADLINE);
    assert!(
        line.contains("gid 4294967295: invalid argument"),
        "the crash names the step: {line}"
    );
    let out = sup.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("could not start: unable to")
            && stdout.contains("gid 4294967295: invalid argument"),
        "{}",
        text(&out)
    );
    assert!(!stdout.contains("could not be run"), "{}", text(&out));
}

/// Issue 18, item 10: root's default state directory was `/tmp/reloadsup-0/NAME`, which any
/// user could create first and so stop every start of root's without `--state-dir`. Root's is
/// `/run/reloadsup/NAME` now (without `XDG_RUNTIME_DIR`), and `ctl --name` finds it there.
#[test]
fn roots_default_state_dir_is_under_run() {
    if !crate::running_as_root("roots_default_state_dir_is_under_run") {
        return;
    }
    let sb = Sandbox::new("root_default_state_dir");
    let name = format!("it-run-{}", std::process::id());
    let dir = Path::new("/run/reloadsup").join(&name);
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = sb.join("stderr");
    let mut child = std::process::Command::new(bins::reloadsup())
        .args([
            "-l",
            "tcp://127.0.0.1:0",
            "--ready",
            "immediate",
            "--name",
            &name,
        ])
        .arg("--")
        .arg(bins::example("hello"))
        .env_remove("XDG_RUNTIME_DIR")
        .current_dir(sb.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("reloadsup");
    let ctl = |args: &[&str]| {
        let mut cmd = std::process::Command::new(bins::reloadsup());
        cmd.arg("ctl")
            .args(["--name", &name])
            .args(args)
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("RELOADSUP_CONTROL");
        reloadsup_integration_tests::output_with_timeout(&mut cmd, DEADLINE)
    };
    wait_until(DEADLINE, "the control socket under /run", || {
        dir.join("control.sock").exists()
    });
    let out = ctl(&["status"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = ctl(&["stop"]);
    assert!(out.status.success(), "{}", text(&out));
    let status = child.wait().expect("wait");
    assert!(
        status.success(),
        "{status}: {}",
        std::fs::read_to_string(&stderr).unwrap_or_default()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 22, defect 9: `reloadsup ctl reload | head -1` panicked on EPIPE (exit 101). A
/// reader that went away is no error: the reload runs to its end and the exit status says how.
#[test]
fn ctl_whose_reader_went_away_finishes_without_a_panic() {
    let sb = Sandbox::new("ctl_epipe");
    let (sup, _) = start(&sb, Run::hello(&[]).args(standard(1)), 1);
    for args in [&["reload"][..], &["status"][..]] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let err = sb.join("ctl.stderr");
        // Not output_with_timeout: it would capture stdout in a pipe of its own.
        let mut child = std::process::Command::new(bins::reloadsup())
            .arg("ctl")
            .arg("--control")
            .arg(sup.control_path())
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(writer)
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("ctl");
        let status = wait_for(DEADLINE, "ctl to exit", || child.try_wait().ok().flatten());
        let stderr = std::fs::read_to_string(&err).unwrap_or_default();
        assert_eq!(status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    assert_eq!(
        sup.status_json()["generation"],
        2,
        "the reload ran to its end"
    );
}
