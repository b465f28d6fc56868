//! The one integration-test binary: every test runs the real `reloadsup` with real clients.
//!
//! Build the binaries first (`make test` does): `cargo build --workspace --bins --examples`.

mod activation;
mod canary;
mod chaos;
mod console;
mod control;
mod core;
mod hostile;
mod lifecycle;
mod listen;
mod listening;
mod logs;
mod manager;
mod metrics;
mod reconfigure;
mod servers;
mod stable;
mod upgrade;
mod watch;

use std::net::SocketAddr;

use reloadsup_integration_tests::{Run, Sandbox, Supervisor};

/// The flags most tests run with: `workers` notify-ready workers, a 2 s ready timeout, a 5 s
/// graceful timeout.
fn standard(workers: usize) -> Vec<String> {
    [
        "-n",
        &workers.to_string(),
        "--ready",
        "notify",
        "--ready-timeout",
        "2s",
        "--graceful-timeout",
        "5s",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Starts `run` and waits for its first generation of `workers` to be ready.
fn start(sandbox: &Sandbox, run: Run, workers: usize) -> (Supervisor, SocketAddr) {
    let mut sup = run.start(sandbox);
    let addr = sup.addr();
    sup.wait_ready(1, workers);
    (sup, addr)
}

/// Whether this test may do what only root can (chown, run as another uid). Not root: under
/// `CI=true` the test fails, elsewhere it says it is skipped.
fn running_as_root(test: &str) -> bool {
    let root = euid() == 0;
    if !root {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test} needs root, and CI=true"
        );
        eprintln!("{test}: skipped, needs root");
    }
    root
}

/// The effective uid, from the owner of /proc/self (no libc call needed).
fn euid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(u32::MAX)
}

/// `tool` on PATH, or (under `CI=true`) a failure, or a skip note.
fn tool(test: &str, name: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test} needs {name}, and CI=true"
        );
        eprintln!("{test}: skipped, no {name}");
    }
    found
}
