//! The one integration-test binary: every test runs the real `reloadsup` with real clients.
//!
//! Build the binaries first (`make test` does): `cargo build --workspace --bins --examples`.

mod chaos;
mod console;
mod control;
mod core;
mod lifecycle;

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
