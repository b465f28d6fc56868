//! Real third-party servers, unchanged, under reloadsup: README's compatibility table.
//!
//! Each test runs one server (installed by `make servers` under `target/servers`, or on PATH)
//! with the command line of its README row, reloads it a few times under load, and asserts the
//! row's figure: 0 failed requests, or, for a server with a known defect, no more than the
//! defect can lose (at most one request per load client per reload, each a connection closed
//! by the old server) and nothing of any other kind. A missing server is a skip, and under
//! `CI=true` a failure (`require`).
//!
//! `RELOADSUP_SERVER_RELOADS=N` (default 3) and `RELOADSUP_SERVER_CLIENTS=N` (default 4) make a
//! longer run for the table's figures: `RELOADSUP_SERVER_RELOADS=20 cargo test -p
//! reloadsup-integration-tests --test it -- servers:: --nocapture`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use reloadsup_integration_tests::{
    bins, require, FailureKind, Limits, Load, LoadReport, Run, Sandbox,
};

/// How long a generation of a Python server may take to start on a busy machine.
const START: Duration = Duration::from_secs(60);
/// Pacing between reloads, so each generation serves under load for a while.
const PACING: Duration = Duration::from_millis(300);

fn env_number(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

fn reloads() -> u32 {
    env_number("RELOADSUP_SERVER_RELOADS", 3)
}

fn clients() -> usize {
    env_number("RELOADSUP_SERVER_CLIENTS", 4) as usize
}

/// `target/servers`, where `make servers` installs them.
fn servers_dir() -> PathBuf {
    bins::workspace_root().join("target/servers")
}

/// A program of the servers' venv, or `None` (after `require` said why) when it is missing.
pub(crate) fn venv_program(name: &str) -> Option<PathBuf> {
    let path = servers_dir().join("venv/bin").join(name);
    let what = format!("{} (run `make servers`)", path.display());
    require(&what, path.is_file()).then_some(path)
}

pub(crate) fn example(path: &str) -> PathBuf {
    bins::workspace_root().join("examples").join(path)
}

/// What a server's row says about reloads under load.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Expect {
    /// 0 failed requests.
    Nothing,
    /// A known server-side defect: it closes connections it accepted but had not read yet when
    /// it gets the stop signal, so each reload may cost each client its request in flight.
    ClosesUnread(&'static str),
}

/// Runs `command` under reloadsup with `flags`, reloads it under load and checks `expect`.
pub(crate) fn reload_server(
    name: &str,
    command: Vec<OsString>,
    flags: &[&str],
    expect: Expect,
) -> LoadReport {
    let sb = Sandbox::new(name);
    let mut run = Run::new(command)
        .args(flags)
        .args(["--ready-timeout", "60s", "--graceful-timeout", "10s"])
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    // gunicorn's and uWSGI's own files stay in the sandbox.
    run = run.env("HOME", sb.path());
    let mut sup = run.start(&sb);
    let addr = sup.addr();
    sup.wait_for_log("generation 1 is serving", START);
    let clients = clients();
    let reloads = reloads();
    let load = Load::start(addr, clients, Limits::duration(Duration::from_secs(600)));
    load.wait_for_more_answers(20, START);
    for generation in 2..=reloads + 1 {
        if let Err(reason) = sup.reload(generation) {
            panic!("{name}: reload to generation {generation} failed: {reason}");
        }
        load.wait_for_generation(generation, START);
        thread::sleep(PACING);
    }
    load.wait_for_more_answers(20, START);
    let report = load.stop();
    eprintln!(
        "{name}: {} reloads, {clients} clients: {}\np50 {:?} p99 {:?}",
        reloads,
        report.summary(),
        report.latency(0.5),
        report.latency(0.99)
    );
    let expected: std::collections::BTreeSet<u32> = (1..=reloads + 1).collect();
    assert_eq!(
        report.generations(),
        expected,
        "{name}: generations that answered"
    );
    match expect {
        Expect::Nothing => report.assert_no_failures(),
        Expect::ClosesUnread(defect) => {
            let closed =
                report.failures_of(FailureKind::Reset) + report.failures_of(FailureKind::Short);
            assert_eq!(
                report.failed(),
                closed,
                "{name}: only connections closed by the old server may fail ({defect}): {}",
                report.summary()
            );
            let bound = clients as u64 * u64::from(reloads);
            assert!(
                closed <= bound,
                "{name}: {closed} failed, more than one per client per reload ({bound}), which \
                 is more than {defect}: {}",
                report.summary()
            );
        }
    }
    report
}

pub(crate) fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

#[test]
fn servers_go_net_http_loses_nothing() {
    let server = servers_dir().join("bin/go-server");
    if !require(
        &format!("{} (run `make servers`)", server.display()),
        server.is_file(),
    ) {
        return;
    }
    reload_server(
        "servers_go",
        vec![server.into_os_string()],
        &["-n", "2", "--ready", "notify"],
        Expect::Nothing,
    );
}

/// gunicorn from the venv serving the WSGI example with 2 sync workers, `extra` flags first
/// (README's rows add `--preload`).
pub(crate) fn gunicorn(extra: &[&str]) -> Option<Vec<OsString>> {
    let mut command = vec![venv_program("gunicorn")?.into_os_string()];
    command.extend(os(extra));
    command.extend(os(&["--no-control-socket", "--workers", "2", "--chdir"]));
    command.push(example("wsgi").into_os_string());
    command.push("app:app".into());
    Some(command)
}

#[test]
fn servers_gunicorn_loses_nothing() {
    let Some(command) = gunicorn(&["--preload"]) else {
        return;
    };
    reload_server(
        "servers_gunicorn",
        command,
        &["--ready", "notify"],
        Expect::Nothing,
    );
}

/// The README's advice for servers that take the socket by a flag: `--bind fd://{fd}` with
/// `--no-listen-env` (with LISTEN_FDS set too, gunicorn adopts fd 3 twice and every worker
/// dies of EBADF).
#[test]
fn servers_gunicorn_bind_fd_no_listen_env_loses_nothing() {
    let Some(command) = gunicorn(&["--preload", "--bind", "fd://{fd}"]) else {
        return;
    };
    reload_server(
        "servers_gunicorn_fd",
        command,
        &["--ready", "notify", "--no-listen-env"],
        Expect::Nothing,
    );
}

#[test]
fn servers_uwsgi() {
    let Some(uwsgi) = venv_program("uwsgi") else {
        return;
    };
    let mut command = vec![uwsgi.into_os_string()];
    command.extend(os(&[
        "--protocol",
        "http",
        "--master",
        "--workers",
        "2",
        "--hook-master-start",
        "unix_signal:15 gracefully_kill_them_all",
        "--listen",
        "1024",
        "--need-app",
        "--disable-logging",
        "--wsgi-file",
    ]));
    command.push(example("wsgi/app.py").into_os_string());
    reload_server(
        "servers_uwsgi",
        command,
        &["--ready", "notify"],
        Expect::ClosesUnread(
            "uWSGI's gracefully_kill_them_all now and then closes a connection it accepted but \
             had not read",
        ),
    );
}

#[test]
fn servers_uvicorn() {
    let Some(uvicorn) = venv_program("uvicorn") else {
        return;
    };
    let mut command = vec![uvicorn.into_os_string()];
    command.extend(os(&["--fd", "{fd}", "--no-access-log", "--app-dir"]));
    command.push(example("asgi").into_os_string());
    command.push("app:app".into());
    reload_server(
        "servers_uvicorn",
        command,
        &["--ready", "delay:2s"],
        Expect::ClosesUnread("uvicorn closes connections it accepted but had not read at SIGTERM"),
    );
}

#[test]
fn servers_hypercorn() {
    let Some(hypercorn) = venv_program("hypercorn") else {
        return;
    };
    let mut command = vec![hypercorn.into_os_string()];
    command.extend(os(&["--bind", "fd://{fd}", "--workers", "0", "app:app"]));
    let mut flags = vec!["--ready", "delay:2s"];
    let dir = example("asgi");
    let env = format!("PYTHONPATH={}", dir.display());
    flags.extend(["--env", env.as_str()]);
    reload_server(
        "servers_hypercorn",
        command,
        &flags,
        Expect::ClosesUnread(
            "hypercorn closes connections it accepted but had not read at SIGTERM",
        ),
    );
}

#[test]
fn servers_daphne() {
    let Some(daphne) = venv_program("daphne") else {
        return;
    };
    let mut command = vec![daphne.into_os_string()];
    command.extend(os(&["--fd", "{fd}", "app:app"]));
    let dir = example("asgi");
    let env = format!("PYTHONPATH={}", dir.display());
    reload_server(
        "servers_daphne",
        command,
        &["--ready", "delay:2s", "--env", env.as_str()],
        Expect::ClosesUnread("daphne closes connections it accepted but had not read at SIGTERM"),
    );
}
