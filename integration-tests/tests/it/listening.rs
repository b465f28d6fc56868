//! `--ready listening`: unchanged servers become ready when they wait on their listener, seen
//! through /proc by the primary; a worker that never waits on one of its own listeners is
//! rolled back at the ready timeout.

use std::time::{Duration, Instant};

use reloadsup_integration_tests::{
    python3, require, shell_quote, wait_until, Limits, Load, Run, Sandbox, DEADLINE,
};

use crate::servers::{example, os, reload_server, venv_program, Expect};

/// Runs examples/python/server.py, which sleeps `--delay 0.5` before it polls its listener and
/// never sends READY=1 here: every reload takes at least the delay, and loses nothing.
#[test]
fn listening_python_server_is_ready_no_sooner_than_it_listens_and_loses_nothing() {
    let Some(python) = python3() else {
        require("python3", false);
        return;
    };
    let sb = Sandbox::new("listening_python");
    let server = example("python/server.py");
    let mut sup = Run::new([
        python.as_os_str(),
        server.as_os_str(),
        "--delay".as_ref(),
        "0.5".as_ref(),
    ])
    .args(["-n", "2", "--ready", "listening", "--ready-timeout", "30s"])
    .args(["--graceful-timeout", "10s"])
    .env("PYTHONUNBUFFERED", "1")
    .start(&sb);
    let addr = sup.addr();
    sup.wait_ready(1, 2);
    let load = Load::start(addr, 4, Limits::duration(Duration::from_secs(300)));
    load.wait_for_more_answers(20, DEADLINE);
    for generation in 2..=4 {
        let begun = Instant::now();
        if let Err(reason) = sup.reload(generation) {
            panic!("reload to generation {generation} failed: {reason}");
        }
        let took = begun.elapsed();
        assert!(
            took >= Duration::from_millis(500),
            "generation {generation} was ready after {took:?}, before its 500 ms delay ended"
        );
        load.wait_for_generation(generation, DEADLINE);
    }
    load.wait_for_more_answers(20, DEADLINE);
    let report = load.stop();
    eprintln!("{}", report.summary());
    report.assert_no_failures();
    assert!(
        sup.log().contains("is listening: pid"),
        "the debug log says how each worker was seen"
    );
}

#[test]
fn listening_node_example_loses_nothing() {
    if !require(
        "node",
        reloadsup_integration_tests::have_command("node", &["--version"]),
    ) {
        return;
    }
    let server = example("node/server.js");
    reload_server(
        "listening_node",
        vec!["node".into(), server.into_os_string()],
        &["-n", "2", "--ready", "listening"],
        Expect::Nothing,
    );
}

/// uvicorn never sends READY=1; with `--ready listening` it needs no guessed delay. Its own
/// defect (closing accepted, unread connections at SIGTERM) is what its README row says.
#[test]
fn listening_uvicorn_needs_no_delay() {
    let Some(uvicorn) = venv_program("uvicorn") else {
        return;
    };
    let mut command = vec![uvicorn.into_os_string()];
    command.extend(os(&["--fd", "{fd}", "--no-access-log", "--app-dir"]));
    command.push(example("asgi").into_os_string());
    command.push("app:app".into());
    reload_server(
        "listening_uvicorn",
        command,
        &["--ready", "listening"],
        Expect::ClosesUnread("uvicorn closes connections it accepted but had not read at SIGTERM"),
    );
}

/// Generation 1 serves with server.py; later generations run `broken`, which never waits on
/// its listener: each reload is rolled back at the 1 s ready timeout, the old workers keep
/// serving, and nothing is lost.
fn never_listening_is_rolled_back(name: &str, broken: &str) {
    let Some(python) = python3() else {
        require("python3", false);
        return;
    };
    let sb = Sandbox::new(name);
    let server = example("python/server.py");
    let broken = sb.write("broken.py", broken);
    let script = sb.write_script(
        "server",
        &format!(
            "#!/bin/sh\nif [ \"$RELOADSUP_GENERATION\" = 1 ]; then exec {py} {good}; fi\n\
             exec {py} {broken}\n",
            py = shell_quote(&python.to_string_lossy()),
            good = shell_quote(&server.to_string_lossy()),
            broken = shell_quote(&broken.to_string_lossy()),
        ),
    );
    let mut sup = Run::new([&script])
        .args(["-n", "2", "--ready", "listening", "--ready-timeout", "1s"])
        .start(&sb);
    let addr = sup.addr();
    sup.wait_ready(1, 2);
    let old = sup.wait_workers(2);
    let load = Load::start(addr, 4, Limits::duration(Duration::from_secs(120)));
    load.wait_for_more_answers(20, DEADLINE);
    let begun = Instant::now();
    let out = sup.ctl(&["reload"]);
    let took = begun.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "ctl reload: {text}");
    assert!(text.contains("not ready within 1s"), "{text}");
    assert!(
        took >= Duration::from_secs(1),
        "rolled back after {took:?}, before the ready timeout"
    );
    wait_until(DEADLINE, "only the old workers left", || {
        sup.workers() == old
    });
    load.wait_for_more_answers(20, DEADLINE);
    let report = load.stop();
    eprintln!("{}", report.summary());
    report.assert_no_failures();
    assert_eq!(report.generations(), [1].into());
}

#[test]
fn listening_worker_that_never_waits_is_rolled_back_at_the_ready_timeout() {
    // Holds fd 3 (already listening: the primary called listen()) but never accepts.
    never_listening_is_rolled_back("listening_never", "import time\ntime.sleep(60)\n");
}

#[test]
fn listening_on_a_socket_not_its_own_does_not_count() {
    // Accepts, polls and holds in epoll a socket of its own; fd 3 it never touches.
    never_listening_is_rolled_back(
        "listening_not_ours",
        "import select, socket, threading\n\
         o = socket.socket()\no.bind(('127.0.0.1', 0))\no.listen()\n\
         e = select.epoll()\ne.register(o.fileno())\n\
         threading.Thread(target=lambda: select.select([o], [], []), daemon=True).start()\n\
         o.accept()\n",
    );
}

/// The mode crosses an upgrade in place (`ReadyImage::Listening`): the new image sees the next
/// generation listen, and nothing is lost meanwhile.
#[test]
fn listening_mode_survives_an_upgrade_in_place() {
    let sb = Sandbox::new("listening_upgrade");
    let mut sup = Run::hello(&["--delay", "200ms", "--no-ready"])
        .args(["-n", "2", "--ready", "listening", "--ready-timeout", "20s"])
        .start(&sb);
    let addr = sup.addr();
    sup.wait_ready(1, 2);
    let load = Load::start(addr, 4, Limits::duration(Duration::from_secs(120)));
    load.wait_for_more_answers(20, DEADLINE);
    let out = sup.ctl(&["upgrade"]);
    assert!(
        out.status.success(),
        "ctl upgrade: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if let Err(reason) = sup.reload(2) {
        panic!("reload after the upgrade failed: {reason}");
    }
    assert!(
        sup.log()
            .lines()
            .any(|l| l.contains("of generation 2 (pid ") && l.contains("is listening: pid")),
        "generation 2 was seen listening by the new image"
    );
    load.wait_for_generation(2, DEADLINE);
    let report = load.stop();
    eprintln!("{}", report.summary());
    report.assert_no_failures();
}

/// gunicorn's sync workers under sustained load never block: a connection is always waiting,
/// so each does a non-blocking accept and a `select` that returns at once, and holds an
/// accepted connection most of the time. They are seen by that connection (a sock_diag dump of
/// the connections on the listener's port; the old bounded read of `/proc/net/tcp`, mostly
/// TIME_WAIT rows under load, missed it and the reload was rolled back). The app takes 200 ms
/// to import, in each worker (no `--preload`).
#[test]
fn listening_gunicorn_sync_workers_are_seen_under_sustained_load() {
    let Some(mut command) = crate::servers::gunicorn(&[]) else {
        return;
    };
    // Python's own output (gunicorn's log) is not what is asserted on.
    command.extend(os(&["--log-level", "warning"]));
    let sb = Sandbox::new("listening_gunicorn");
    let mut sup = Run::new(command)
        .args(["--ready", "listening", "--ready-timeout", "20s"])
        .args(["--graceful-timeout", "10s"])
        .env("APP_IMPORT_DELAY", "0.2")
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("HOME", sb.path())
        .start(&sb);
    let addr = sup.addr();
    sup.wait_for_log("generation 1 is serving", Duration::from_secs(60));
    let load = Load::start(addr, 6, Limits::duration(Duration::from_secs(300)));
    // Sustained: the socket table fills with TIME_WAIT connections before the first reload.
    load.wait_for_more_answers(2000, Duration::from_secs(120));
    for generation in 2..=4 {
        if let Err(reason) = sup.reload(generation) {
            panic!("reload to generation {generation} failed: {reason}");
        }
        load.wait_for_generation(generation, DEADLINE);
        load.wait_for_more_answers(200, DEADLINE);
    }
    let report = load.stop();
    eprintln!("{}", report.summary());
    report.assert_no_failures();
    let log = sup.log();
    for generation in 2..=4 {
        let seen = format!("of generation {generation} (pid ");
        let line = log
            .lines()
            .find(|l| l.contains(&seen) && l.contains("is listening: pid"))
            .unwrap_or_else(|| panic!("how generation {generation} was seen is logged"));
        eprintln!("{line}");
    }
}

/// Issue 18, item 2: a worker can make a read of its own `/proc` wait as long as it likes (an
/// epoll's fdinfo waits on the epoll's mutex, held here by a thread whose copy of a ready
/// event faults on a userfaultfd page). When the primary read it itself, `ctl status` timed
/// out and SIGTERM went unanswered. Now the inspector waits, the primary answers at once,
/// kills the inspector after its deadline, and rolls the reload back at the ready timeout
/// saying why.
#[test]
fn a_worker_that_freezes_every_look_never_blocks_the_primary() {
    let Some(python) = python3() else {
        require("python3", false);
        return;
    };
    let sb = Sandbox::new("listening_frozen");
    let trap = sb.write("frozen_epoll.py", include_str!("frozen_epoll.py"));
    let usable = std::process::Command::new(&python)
        .arg(&trap)
        .arg("check")
        .output()
        .is_ok_and(|o| o.status.success());
    if !require("a userfaultfd for kernel faults (root)", usable) {
        return;
    }
    let server = example("python/server.py");
    let script = sb.write_script(
        "server",
        &format!(
            "#!/bin/sh\nif [ \"$RELOADSUP_GENERATION\" = 1 ]; then exec {py} {good}; fi\n\
             exec {py} {trap}\n",
            py = shell_quote(&python.to_string_lossy()),
            good = shell_quote(&server.to_string_lossy()),
            trap = shell_quote(&trap.to_string_lossy()),
        ),
    );
    let mut sup = Run::new([&script])
        .args(["-n", "1", "--ready", "listening", "--ready-timeout", "8s"])
        .start(&sb);
    sup.wait_ready(1, 1);
    let old = sup.wait_workers(1);
    sup.signal(libc::SIGHUP);
    sup.wait_for_log("did not answer within", DEADLINE);
    // The inspector is stuck on the worker: the primary is not.
    for _ in 0..3 {
        let asked = Instant::now();
        let out = sup.ctl(&["status"]);
        assert!(
            out.status.success(),
            "ctl status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "ctl status took {:?} while a look was frozen",
            asked.elapsed()
        );
    }
    let reason = sup
        .wait_reload(2)
        .expect_err("the frozen generation is rolled back");
    assert!(
        reason.contains("not ready within 8s") && reason.contains("inspector"),
        "{reason}"
    );
    wait_until(DEADLINE, "only the old worker left", || {
        sup.workers() == old
    });
    assert!(sup.ctl(&["status"]).status.success());
}

/// Whether `cond` holds within `timeout` (checked every 20 ms).
fn wait_for_or(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Issue 18, item 2: the inspector reads what workers control, so it runs as their user, not
/// as the root primary, unless Yama restricts ptrace (then only root may read their syscalls).
#[test]
fn the_inspector_runs_as_the_workers_user() {
    if !crate::running_as_root("the_inspector_runs_as_the_workers_user") {
        return;
    }
    let yama = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .is_ok_and(|s| s.trim() != "0");
    let expected = if yama { "0" } else { "65534" };
    let sb = Sandbox::new("listening_inspector_uid");
    // Never listens: the inspector keeps looking until the test ends.
    let sup = Run::new(["/bin/sleep", "60"])
        .args(["--user", "65534", "--group", "65534", "-n", "1"])
        .args(["--ready", "listening", "--ready-timeout", "60s"])
        .start(&sb);
    let mut inspector = None;
    wait_until(DEADLINE, "the inspector to run", || {
        inspector = reloadsup_integration_tests::proc::children_of(sup.pid())
            .into_iter()
            .find(|&p| reloadsup_integration_tests::proc::is_inspector(p));
        inspector.is_some()
    });
    let pid = inspector.unwrap();
    let uids = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .map(|u| u.split_whitespace().map(str::to_string).collect::<Vec<_>>())
    };
    // It switches users as soon as it runs; it was started as root a moment ago.
    let settled = wait_for_or(Duration::from_secs(10), || {
        uids().is_some_and(|u| u.iter().all(|id| id == expected))
    });
    assert!(
        settled,
        "the inspector's uids: {:?}, not {expected}",
        uids()
    );
}
