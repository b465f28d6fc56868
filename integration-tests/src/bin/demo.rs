//! `reloadsup-demo`: watch reloads lose nothing.
//!
//! Runs `hello --delay 200ms` under reloadsup with 4 workers on 127.0.0.1 (any free port),
//! hammers it with 8 clients for about 8 seconds while sending 5 SIGHUPs, prints what the
//! clients saw, then stops the supervisor with SIGTERM. Exits 1 if any request failed.

use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use reloadsup_integration_tests::{Limits, Load, Run, Sandbox, DEADLINE};

const WORKERS: usize = 4;
const CLIENTS: usize = 8;
const RELOADS: u32 = 5;
const DURATION: Duration = Duration::from_secs(8);

fn main() -> ExitCode {
    let sb = Sandbox::new("demo");
    let mut sup = Run::hello(&["--delay", "200ms"])
        .args(["-n", &WORKERS.to_string(), "--ready", "notify"])
        .args(["--ready-timeout", "10s", "--graceful-timeout", "10s"])
        .env("RUST_LOG", "info")
        .start(&sb);
    let addr = sup.addr();
    println!(
        "reloadsup (pid {}) serves http://{addr}/ with {WORKERS} workers of `hello --delay 200ms`",
        sup.pid()
    );
    println!(
        "{CLIENTS} clients send requests for {DURATION:?}; meanwhile {RELOADS} reloads (SIGHUP)..."
    );

    let start = Instant::now();
    let load = Load::start(addr, CLIENTS, Limits::duration(DURATION));
    load.wait_for_generation(1, DEADLINE);
    let step = DURATION / (RELOADS + 1);
    for i in 1..=RELOADS {
        if let Some(wait) = (step * i).checked_sub(start.elapsed()) {
            thread::sleep(wait);
        }
        let generation = i + 1;
        let sent = Instant::now();
        match sup.reload(generation) {
            Ok(()) => println!(
                "  SIGHUP #{i}: generation {generation} serving after {:.0} ms",
                sent.elapsed().as_secs_f64() * 1e3
            ),
            Err(reason) => println!("  SIGHUP #{i}: reload failed, rolled back: {reason}"),
        }
    }
    let report = load.finish();

    println!();
    println!("requests:  {}", report.total());
    println!("failures:  {}", report.failed());
    println!("req/s:     {:.0}", report.req_per_s());
    println!(
        "latency:   p50 {:.2} ms, p99 {:.2} ms",
        report.latency(0.5).unwrap_or_default().as_secs_f64() * 1e3,
        report.latency(0.99).unwrap_or_default().as_secs_f64() * 1e3
    );
    println!("answers by generation (pids of the workers that answered):");
    let answers = report.answers_by_generation();
    for (generation, pids) in report.pids_by_generation() {
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        println!(
            "  generation {generation}: {:>7} answers from pids {}",
            answers.get(&generation).copied().unwrap_or(0),
            pids.join(", ")
        );
    }
    if report.failed() > 0 {
        println!("{}", report.summary());
    }

    sup.signal(libc::SIGTERM);
    let status = sup.wait_exit(Duration::from_secs(30));
    println!("\nSIGTERM: reloadsup stopped its workers and exited ({status}).");
    if report.failed() == 0 && report.ok() > 0 && status.success() {
        println!("No request failed.");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
