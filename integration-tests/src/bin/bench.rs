//! `reloadsup-bench`: the `make bench` tables of DESIGN.md section 10 and the figures the issues
//! ask for, each next to its target with PASS or MISS.
//!
//! 1. Reloads under load: the same load against `hello` run directly, under reloadsup with
//!    reloads during the load, and under the naive kill-and-restart loop, side by side.
//! 2. Supervisor costs: reload overhead (SIGHUP → every new worker exec'd, and SIGHUP → the
//!    `generation N is serving` line) for 1 and 16 workers, the primary's RSS and its wake-ups
//!    per second at rest.
//! 3. Control plane: `ctl status` round trips over the control socket with 16 workers, the wall
//!    time of a `reloadsup ctl status` process, and reload overhead through the protocol's
//!    `Reload` request.
//! 4. Soak: 1000 reloads of 4 workers through the control socket; the primary's fds and RSS
//!    along the way.
//! 5. Admin console (when the binary has one): shell worker RSS and `worker info` round trips
//!    over real TLS.
//! 6. Chaos (issue 12, item 16): the chaos run of `integration-tests/src/chaos.rs` for
//!    `--chaos D` (default 150 s) with `--prespawn 2`; `make bench-chaos` runs only this.
//! 7. Upgrade in place (issue 8): the pause from SIGUSR2 to the new image's answer to `Status`,
//!    failed requests over the upgrades, and the p99 in the second after an upgrade beside the
//!    steady p99.
//! 8. Worker logs (issue 10): the logger's CPU per MB of log and the rate it held with no line
//!    lost (a worker that writes as fast as it can into its pipe); reload time, `Status` round
//!    trip, failed requests and the primary's CPU with a worker writing 50 MB/s of log lines
//!    beside the same run without it.
//! 9. Readiness (issue 11): the Node example under reloads with `--ready listening` beside
//!    `delay:300ms` and `delay:1s`, and gunicorn's sync workers (a 200 ms import) with
//!    `--ready listening` beside its own `READY=1`: failed requests, the longest pause after a
//!    reload and how long reloads take; and, for the Node example and the Python one with
//!    `--delay 0.5`, how long after a new worker listens (its own `LISTENING_STAMP=1` line) the
//!    primary declares it ready.
//!
//! Every loop is bounded in count and time; all traffic goes to 127.0.0.1; only processes this
//! program started are signalled.
//!
//! ```text
//! reloadsup-bench [--duration 15s] [--reloads 10] [--clients 8] [--workers 4] [--delay 200ms]
//!                 [--soak 1000] [--chaos 150s]
//!                 [--only load,costs,control,soak,console,chaos,upgrade,logs,ready,metrics]
//! ```

use std::collections::HashSet;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use reloadsup_integration_tests::{
    bins, chaos, proc, tcp_connect_ok, wait_for, wait_until, Limits, Load, LoadReport, Run,
    Sandbox, Supervisor, DEADLINE,
};
use reloadsup_protocol::{
    check_hello, encode_frame, FrameReader, Message, Outcome, Reply, Request,
};

const USAGE: &str = "usage: reloadsup-bench [--duration D] [--reloads N] [--clients N] [--workers N] [--delay D] [--soak N] [--chaos D] [--only LIST]
  --duration D   load duration of each of the three load runs (default 15s)
  --reloads N    reloads (or kill-and-restarts) during the load (default 10)
  --clients N    concurrent clients (default 8)
  --workers N    workers under reloadsup in the load run (default 4)
  --delay D      the server's start-up delay before it accepts (default 200ms)
  --soak N       reloads in the soak run (default 1000)
  --chaos D      how long the chaos run issues actions (default 150s); CHAOS_SEED=N replays
  --only LIST    comma-separated sections to run: load, costs, control, soak, console, chaos,
                 upgrade, logs, ready, metrics
                 (default: all)";

const SECTIONS: [&str; 10] = [
    "load", "costs", "control", "soak", "console", "chaos", "upgrade", "logs", "ready", "metrics",
];
/// In-place upgrades under load in the upgrade section.
const UPGRADES: u32 = 20;

/// Requests that start within this long after a reload count as 'during a reload'.
const WINDOW: Duration = Duration::from_secs(1);
/// Reloads per configuration for the overhead figures (the median is judged).
const OVERHEAD_RELOADS: u32 = 11;
/// Sequential `Status` requests for the round-trip figure.
const STATUS_REQUESTS: usize = 2000;
/// Runs of the `reloadsup ctl status` process.
const CTL_RUNS: usize = 20;
/// The soak run stops here even if it has not done all its reloads.
const SOAK_CAP: Duration = Duration::from_secs(120);
/// `worker info` round trips in one console session, and `reloadsup console` process runs.
const CONSOLE_COMMANDS: usize = 300;
const CONSOLE_RUNS: usize = 5;
const CONSOLE_PASSWORD: &str = "bench-password";
/// How often the reload-overhead probes look at procfs, the log and the control socket.
const PROBE_EVERY: Duration = Duration::from_micros(500);

struct Options {
    duration: Duration,
    reloads: u32,
    clients: usize,
    workers: usize,
    delay: Duration,
    soak: u32,
    chaos: Duration,
    only: Vec<String>,
}

impl Options {
    fn runs(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        duration: Duration::from_secs(15),
        reloads: 10,
        clients: 8,
        workers: 4,
        delay: Duration::from_millis(200),
        soak: 1000,
        chaos: Duration::from_secs(150),
        only: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let number = |v: &str| {
            v.parse::<usize>()
                .map_err(|_| format!("{flag} {v:?}: a number"))
        };
        match flag.as_str() {
            "--duration" => o.duration = parse_duration(&value)?,
            "--reloads" => o.reloads = number(&value)?.max(1) as u32,
            "--clients" => o.clients = number(&value)?.max(1),
            "--workers" => o.workers = number(&value)?.max(1),
            "--delay" => o.delay = parse_duration(&value)?,
            "--soak" => o.soak = number(&value)?.clamp(10, 100_000) as u32,
            "--chaos" => {
                o.chaos = parse_duration(&value)?.clamp(Duration::from_secs(5), SOAK_CAP * 5)
            }
            "--only" => {
                for s in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    if !SECTIONS.contains(&s) {
                        return Err(format!("--only: unknown section {s:?}"));
                    }
                    o.only.push(s.to_owned());
                }
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(o)
}

// ---------------------------------------------------------------------------------------------
// Verdicts
// ---------------------------------------------------------------------------------------------

/// One figure next to its target.
struct Check {
    issue: u32,
    figure: String,
    measured: String,
    target: String,
    /// `None`: no verdict (no target, or not measurable here).
    pass: Option<bool>,
}

#[derive(Default)]
struct Checks(Vec<Check>);

impl Checks {
    fn add(&mut self, issue: u32, figure: &str, measured: String, target: &str, pass: bool) {
        self.0.push(Check {
            issue,
            figure: figure.to_owned(),
            measured,
            target: target.to_owned(),
            pass: Some(pass),
        });
    }

    fn info(&mut self, issue: u32, figure: &str, measured: String) {
        self.0.push(Check {
            issue,
            figure: figure.to_owned(),
            measured,
            target: "—".to_owned(),
            pass: None,
        });
    }

    /// Prints the checks from index `from` on (a section's own) as a table.
    fn print(&self, from: usize) {
        println!("| # | figure | measured | target | verdict |");
        println!("|---|---|---:|---:|---|");
        for c in self.0.iter().skip(from) {
            println!(
                "| {} | {} | {} | {} | {} |",
                c.issue,
                c.figure,
                c.measured,
                c.target,
                verdict(c.pass)
            );
        }
    }
}

fn verdict(pass: Option<bool>) -> &'static str {
    match pass {
        Some(true) => "PASS",
        Some(false) => "**MISS**",
        None => "info",
    }
}

// ---------------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------------

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("reloadsup-bench: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let mut checks = Checks::default();
    println!(
        "# reloadsup-bench\n\n{} CPUs, load average at start {}, reloadsup {}",
        thread::available_parallelism().map_or(0, usize::from),
        load_average(),
        bins::reloadsup().display()
    );
    if o.runs("load") {
        load_section(&o, &mut checks);
    }
    if o.runs("costs") {
        costs_section(&o, &mut checks);
    }
    if o.runs("control") {
        control_section(&mut checks);
    }
    if o.runs("soak") {
        soak_section(&o, &mut checks);
    }
    if o.runs("console") {
        console_section(&mut checks);
    }
    if o.runs("chaos") {
        chaos_section(&o, &mut checks);
    }
    if o.runs("upgrade") {
        upgrade_section(&o, &mut checks);
    }
    if o.runs("logs") {
        logs_section(&mut checks);
    }
    if o.runs("ready") {
        ready_section(&o, &mut checks);
    }
    if o.runs("metrics") {
        metrics_section(&o, &mut checks);
    }

    println!("\n## Every target\n");
    checks.print(0);
    let missed: Vec<&Check> = checks.0.iter().filter(|c| c.pass == Some(false)).collect();
    let passed = checks.0.iter().filter(|c| c.pass == Some(true)).count();
    println!(
        "\n{passed} PASS, {} MISS, {} without a target; {:.0} s in all; load average at the end {} (anything above 0 is other work sharing these CPUs).",
        missed.len(),
        checks.0.len() - passed - missed.len(),
        started.elapsed().as_secs_f64(),
        load_average()
    );
    for c in missed {
        println!(
            "MISS (issue {}): {}: {} (target {})",
            c.issue, c.figure, c.measured, c.target
        );
    }
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------------------------
// Formatting and statistics
// ---------------------------------------------------------------------------------------------

fn ms(d: Option<Duration>) -> String {
    match d {
        None => "—".to_owned(),
        Some(d) if d < Duration::from_millis(10) => format!("{:.2} ms", d.as_secs_f64() * 1e3),
        Some(d) => format!("{:.0} ms", d.as_secs_f64() * 1e3),
    }
}

fn us(d: Option<Duration>) -> String {
    match d {
        None => "—".to_owned(),
        Some(d) if d < Duration::from_millis(1) => format!("{} µs", d.as_micros()),
        d => ms(d),
    }
}

fn median(samples: &[Duration]) -> Option<Duration> {
    quantile(samples, 0.5)
}

/// The `q` quantile by the nearest-rank method.
fn quantile(samples: &[Duration], q: f64) -> Option<Duration> {
    let mut s = samples.to_vec();
    s.sort_unstable();
    if s.is_empty() {
        return None;
    }
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    Some(s[rank - 1])
}

fn kib(kb: Option<u64>) -> String {
    kb.map_or("?".to_owned(), |kb| format!("{kb} kB"))
}

/// `median / max of N`.
fn spread(samples: &[Duration]) -> String {
    if samples.is_empty() {
        return "— (no sample)".to_owned();
    }
    format!(
        "{} / {} (n={})",
        ms(median(samples)),
        ms(samples.iter().max().copied()),
        samples.len()
    )
}

/// The 1, 5 and 15 minute load averages, from `/proc/loadavg`.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg").map_or("?".to_owned(), |s| {
        s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    })
}

/// A free port on 127.0.0.1 (bound, read, released; fine on a machine without port races).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// SIGTERM to the primary and a bounded wait for its exit (the drop SIGKILLs otherwise).
fn shut_down(mut sup: Supervisor) {
    if !sup.has_exited() {
        sup.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sup.has_exited() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Reloads under load
// ---------------------------------------------------------------------------------------------

/// One line of the main table.
struct Row {
    name: String,
    requests: u64,
    failed: u64,
    failures: String,
    req_per_s: f64,
    steady: (Option<Duration>, Option<Duration>),
    during: (Option<Duration>, Option<Duration>),
    steady_pause: Duration,
    pause: Option<Duration>,
    /// The longest pause after each reload, in order.
    pauses: Vec<Duration>,
    switch: Vec<Duration>,
}

impl Row {
    fn new(name: &str, report: &LoadReport, reloads: &[Instant], switch: Vec<Duration>) -> Row {
        let failures = report
            .failures()
            .iter()
            .map(|(kind, count, examples)| {
                format!(
                    "{kind} {count} (e.g. {})",
                    examples.first().map_or("", |e| e)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let reloaded = !reloads.is_empty();
        Row {
            name: name.to_owned(),
            requests: report.total(),
            failed: report.failed(),
            failures,
            req_per_s: report.req_per_s(),
            steady: (
                report.latency_outside(0.5, reloads, WINDOW),
                report.latency_outside(0.99, reloads, WINDOW),
            ),
            during: if reloaded {
                (
                    report.latency_after(0.5, reloads, WINDOW),
                    report.latency_after(0.99, reloads, WINDOW),
                )
            } else {
                (None, None)
            },
            steady_pause: report.longest_gap_outside(reloads, WINDOW),
            pause: reloaded.then(|| report.longest_gap_after(reloads, WINDOW)),
            pauses: report.gaps_after(reloads, WINDOW),
            switch,
        }
    }

    fn markdown(&self) -> String {
        let switch = if self.switch.is_empty() {
            "—".to_owned()
        } else {
            format!(
                "{} / {}",
                ms(median(&self.switch)),
                ms(self.switch.iter().max().copied())
            )
        };
        format!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            self.name,
            self.requests,
            self.failed,
            self.req_per_s,
            ms(self.steady.0),
            ms(self.steady.1),
            ms(self.during.0),
            ms(self.during.1),
            ms(Some(self.steady_pause)),
            ms(self.pause),
            switch
        )
    }
}

fn load_section(o: &Options, checks: &mut Checks) {
    let mark = checks.0.len();
    let delay = format!("{}ms", o.delay.as_millis());
    eprintln!(
        "load: {} clients, {:?} per run, {} reloads, {} workers, start-up delay {delay}",
        o.clients, o.duration, o.reloads, o.workers
    );
    eprintln!("load 1/3: hello directly");
    let direct = direct(o);
    let mut loads = vec![load_average()];
    eprintln!("load 2/3: hello under reloadsup with {} reloads", o.reloads);
    let supervised = supervised(o, &delay);
    loads.push(load_average());
    eprintln!("load 3/3: kill-and-restart loop, {} restarts", o.reloads);
    let restart = kill_and_restart(o, &delay);
    loads.push(load_average());
    let rows = [&direct, &supervised, &restart];

    println!(
        "\n## 1. Reloads under load (issue 2)\n\n{} clients, a new connection per request, {:?} per run, {} reloads, {} workers, worker start-up delay {delay}; 'after a reload' = requests started ≤ {:?} after one.\n",
        o.clients, o.duration, o.reloads, o.workers, WINDOW
    );
    println!("| run | requests | failures | req/s | p50 steady | p99 steady | p50 after reload | p99 after reload | longest pause steady | longest pause after reload | switch time median / max |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!("{}", r.markdown());
    }
    for r in rows {
        if !r.failures.is_empty() {
            println!("\n{} failures: {}", r.name, r.failures);
        }
    }
    for r in rows.iter().filter(|r| !r.pauses.is_empty()) {
        let each: Vec<String> = r.pauses.iter().map(|&p| ms(Some(p))).collect();
        println!(
            "\n{}: longest pause after each reload, in order: {}",
            r.name,
            each.join(", ")
        );
    }
    println!(
        "\nLoad average right after each run (the runs are sequential, so other work on the machine skews the comparison): directly {}; under reloadsup {}; kill and restart {}.",
        loads[0], loads[1], loads[2]
    );
    println!(
        "\nSwitch time: from the reload signal (or the kill) to the first answer from the new \
         generation (or process); it includes the worker's {delay} start-up delay."
    );

    checks.add(
        2,
        "failed requests under reloadsup",
        supervised.failed.to_string(),
        "0",
        supervised.failed == 0 && supervised.requests > 0,
    );
    let limit = supervised.steady_pause * 2;
    checks.add(
        2,
        "longest pause after a reload (vs 2× the steady longest pause)",
        format!(
            "{} (steady {}; median over the reloads {})",
            ms(supervised.pause),
            ms(Some(supervised.steady_pause)),
            ms(median(&supervised.pauses))
        ),
        &format!("≤ {}", ms(Some(limit))),
        supervised.pause.is_some_and(|p| p <= limit),
    );
    let switch = median(&supervised.switch);
    let limit = o.delay + Duration::from_millis(20);
    checks.add(
        2,
        "switch time, median (SIGHUP → first answer from a new worker)",
        format!(
            "{} (max {}; start-up delay {delay})",
            ms(switch),
            ms(supervised.switch.iter().max().copied())
        ),
        &format!("≤ start-up + 20 ms = {}", ms(Some(limit))),
        switch.is_some_and(|s| s <= limit) && supervised.switch.len() == o.reloads as usize,
    );
    let ratio = if direct.req_per_s > 0.0 {
        supervised.req_per_s / direct.req_per_s
    } else {
        0.0
    };
    let ab = throughput_ab(o);
    println!(
        "\nThroughput, steady state, one `hello` process each way on a listener at fd 3, {AB_ROUNDS} alternating runs of {AB_RUN:?} (so machine noise hits both sides alike): directly {} req/s, under reloadsup {} req/s (medians; every run: {:?} vs {:?}).",
        ab.direct_median().map_or("?".into(), |v| format!("{v:.0}")),
        ab.supervised_median().map_or("?".into(), |v| format!("{v:.0}")),
        ab.direct.iter().map(|v| v.round()).collect::<Vec<_>>(),
        ab.supervised.iter().map(|v| v.round()).collect::<Vec<_>>(),
    );
    if let Some(ratio) = ab.paired_ratio() {
        checks.add(
            2,
            "throughput under reloadsup vs direct, steady, 1 worker each (median of the paired runs' ratios)",
            format!("{:+.1} %", (ratio - 1.0) * 100.0),
            "within 5 % (≥ −5 %)",
            ratio >= 0.95,
        );
    }
    checks.info(
        2,
        "throughput under reloadsup (with reloads) vs direct",
        format!(
            "{:.0} vs {:.0} req/s ({:+.1} %)",
            supervised.req_per_s,
            direct.req_per_s,
            (ratio - 1.0) * 100.0
        ),
    );
    checks.info(
        2,
        "kill-and-restart baseline: failed requests",
        format!(
            "{} of {} ({:.2} %)",
            restart.failed,
            restart.requests,
            restart.failed as f64 * 100.0 / restart.requests.max(1) as f64
        ),
    );
    println!();
    checks.print(mark);
}

/// `hello` run by this process, killed on drop.
struct Server(Child);

impl Server {
    fn start(addr: SocketAddr, delay: &str) -> Server {
        let child = Command::new(bins::example("hello"))
            .args(["--listen", &addr.to_string(), "--delay", delay])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start hello");
        Server(child)
    }

    /// hello on a listener passed at fd 3 with the socket-activation variables, exactly as
    /// reloadsup hands it over but without reloadsup: the same code path in hello, so a
    /// comparison measures the supervisor and nothing else.
    fn activated() -> (Server, SocketAddr) {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let fd = listener.as_raw_fd();
        // SAFETY: listen(2) on our own socket, to give it reloadsup's default backlog.
        unsafe { libc::listen(fd, 1024) };
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\""])
            .arg(bins::example("hello"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: dup2 is async-signal-safe; it places our listener at fd 3 (which clears
        // close-on-exec there) in the child only.
        unsafe {
            cmd.pre_exec(move || {
                // dup2 onto itself would leave close-on-exec set: clear it instead.
                let placed = if fd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, 3)
                };
                if placed == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start hello");
        drop(listener);
        (Server(child), addr)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGTERM, then wait for the exit (hello drains in-flight requests first).
    fn stop(mut self) {
        let _ = proc::kill(self.pid(), libc::SIGTERM);
        let _ = self.0.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn direct(o: &Options) -> Row {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let server = Server::start(addr, "0ms");
    wait_until(DEADLINE, "hello to accept", || tcp_connect_ok(addr));
    let report = Load::start(addr, o.clients, Limits::duration(o.duration)).finish();
    server.stop();
    Row::new("hello directly", &report, &[], Vec::new())
}

/// Alternating runs for the throughput comparison.
const AB_ROUNDS: usize = 5;
const AB_RUN: Duration = Duration::from_secs(3);

/// Requests per second of each run, directly and under reloadsup.
struct Ab {
    direct: Vec<f64>,
    supervised: Vec<f64>,
}

impl Ab {
    fn direct_median(&self) -> Option<f64> {
        median_f64(&self.direct)
    }
    fn supervised_median(&self) -> Option<f64> {
        median_f64(&self.supervised)
    }
    /// Each supervised run against the direct run just before it: the machine's speed drifts
    /// between rounds, much less within one.
    fn paired_ratio(&self) -> Option<f64> {
        let ratios: Vec<f64> = self
            .direct
            .iter()
            .zip(&self.supervised)
            .filter(|(d, _)| **d > 0.0)
            .map(|(d, u)| u / d)
            .collect();
        median_f64(&ratios)
    }
}

fn median_f64(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied()
}

/// One `hello` directly and one under reloadsup (`-n 1`, no reloads), in alternating runs: the
/// supervisor is not in the data path, so the two should match within noise.
fn throughput_ab(o: &Options) -> Ab {
    let mut ab = Ab {
        direct: Vec::new(),
        supervised: Vec::new(),
    };
    eprintln!("load: throughput, {AB_ROUNDS} alternating runs of {AB_RUN:?} each way");
    for _ in 0..AB_ROUNDS {
        let (server, addr) = Server::activated();
        wait_until(DEADLINE, "hello to accept", || tcp_connect_ok(addr));
        let report = Load::start(addr, o.clients, Limits::duration(AB_RUN)).finish();
        server.stop();
        ab.direct.push(report.req_per_s());

        let sb = Sandbox::new("bench-throughput");
        let mut sup = Run::hello(&[])
            .args(["-n", "1", "--ready", "notify"])
            .env("RUST_LOG", "info")
            .start(&sb);
        let addr = sup.addr();
        sup.wait_ready(1, 1);
        let report = Load::start(addr, o.clients, Limits::duration(AB_RUN)).finish();
        ab.supervised.push(report.req_per_s());
        shut_down(sup);
    }
    ab
}

/// The moments to reload at: evenly spread over the run, leaving a steady stretch at each end.
fn schedule(o: &Options) -> Vec<Duration> {
    let step = o.duration / (o.reloads + 1);
    (1..=o.reloads).map(|i| step * i).collect()
}

fn supervised(o: &Options, delay: &str) -> Row {
    let sb = Sandbox::new("bench-supervised");
    let mut sup = Run::hello(&["--delay", delay])
        .args(["-n", &o.workers.to_string(), "--ready", "notify"])
        .args(["--ready-timeout", "30s", "--graceful-timeout", "30s"])
        .env("RUST_LOG", "info")
        .start(&sb);
    let addr = sup.addr();
    let load_start = Instant::now();
    let load = Load::start(addr, o.clients, Limits::duration(o.duration));
    load.wait_for_generation(1, DEADLINE);
    let mut reloads = Vec::new();
    for (i, at) in schedule(o).into_iter().enumerate() {
        let generation = i as u32 + 2;
        if let Some(wait) = at.checked_sub(load_start.elapsed()) {
            thread::sleep(wait);
        }
        reloads.push(Instant::now());
        if let Err(reason) = sup.reload(generation) {
            eprintln!("reload to generation {generation} failed: {reason}");
        }
    }
    let report = load.finish();
    let switch = reloads
        .iter()
        .enumerate()
        .filter_map(|(i, &t)| {
            let first = report.first_answer_from_generation(i as u32 + 2)?;
            Some(first.saturating_duration_since(t))
        })
        .collect();
    shut_down(sup);
    Row::new("hello under reloadsup", &report, &reloads, switch)
}

/// `command` under reloadsup with `-n slots --ready ready` (and `env`) under reloads: the
/// longest pause after each reload and how long each reload took (SIGHUP to "is serving").
fn ready_row(
    o: &Options,
    name: &str,
    command: &[std::ffi::OsString],
    slots: usize,
    ready: &str,
    env: &[(&str, &str)],
) -> (Row, Vec<Duration>) {
    let sb = Sandbox::new("bench-ready");
    let mut run = Run::new(command)
        .args(["-n", &slots.to_string(), "--ready", ready])
        .args(["--ready-timeout", "30s", "--graceful-timeout", "30s"])
        .env("RUST_LOG", "info,reloadsup=debug");
    for (k, v) in env {
        run = run.env(k, v);
    }
    let mut sup = run.start(&sb);
    let addr = sup.addr();
    sup.wait_ready(1, slots);
    let load_start = Instant::now();
    let load = Load::start(addr, o.clients, Limits::duration(o.duration));
    load.wait_for_generation(1, DEADLINE);
    let mut reloads = Vec::new();
    let mut took = Vec::new();
    for (i, at) in schedule(o).into_iter().enumerate() {
        let generation = i as u32 + 2;
        if let Some(wait) = at.checked_sub(load_start.elapsed()) {
            thread::sleep(wait);
        }
        let begun = Instant::now();
        reloads.push(begun);
        match sup.reload(generation) {
            Ok(()) => took.push(begun.elapsed()),
            Err(reason) => eprintln!("{name}: reload to generation {generation} failed: {reason}"),
        }
    }
    let report = load.finish();
    let switch = reloads
        .iter()
        .enumerate()
        .filter_map(|(i, &t)| {
            let first = report.first_answer_from_generation(i as u32 + 2)?;
            Some(first.saturating_duration_since(t))
        })
        .collect();
    shut_down(sup);
    (Row::new(name, &report, &reloads, switch), took)
}

/// The Node example (which cannot send READY=1) with `ready`.
fn node_ready_row(o: &Options, ready: &str) -> (Row, Vec<Duration>) {
    let server = bins::workspace_root().join("examples/node/server.js");
    let command = ["node".into(), server.into_os_string()];
    let name = format!("node, --ready {ready}");
    ready_row(o, &name, &command, o.workers, ready, &[])
}

/// gunicorn's sync workers (`--workers N` under `-n 1`, no `--preload`) serving the WSGI
/// example, whose import takes 200 ms in each worker, with `ready`.
fn gunicorn_ready_row(o: &Options, gunicorn: &Path, ready: &str) -> (Row, Vec<Duration>) {
    let mut command: Vec<std::ffi::OsString> = vec![gunicorn.into()];
    for arg in ["--no-control-socket", "--log-level", "warning", "--workers"] {
        command.push(arg.into());
    }
    command.push(o.workers.to_string().into());
    command.push("--chdir".into());
    command.push(bins::workspace_root().join("examples/wsgi").into());
    command.push("app:app".into());
    let name = format!("gunicorn sync, --ready {ready}");
    let env = [
        ("APP_IMPORT_DELAY", "0.2"),
        ("PYTHONDONTWRITEBYTECODE", "1"),
    ];
    ready_row(o, &name, &command, 1, ready, &env)
}

/// Unix milliseconds of the primary's log timestamp (`2026-12-02T17:13:48.123Z`, UTC).
fn log_unix_ms(line: &str) -> Option<i64> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, millis) = time.split_once('.')?;
    let mut t = hms.splitn(3, ':').map(|x| x.parse::<i64>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    // Days from the civil date (Howard Hinnant's algorithm), 1970-01-01 being day 0.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + min) * 60_000 + sec * 1000 + millis.parse::<i64>().ok()?)
}

/// `ready - listening` in ms for every worker of generation 2 on in `log`: the server's own
/// `pid=P listening at MS` line against the primary's `(pid P) is ready` line.
fn ready_after_listening(log: &str) -> Vec<i64> {
    let mut listening = std::collections::HashMap::new();
    let mut ready = Vec::new();
    for line in log.lines() {
        if let Some((head, at)) = line.split_once(" listening at ") {
            let pid = head
                .rsplit_once("pid=")
                .and_then(|(_, p)| p.parse::<u32>().ok());
            if let (Some(pid), Ok(at)) = (pid, at.trim().parse::<i64>()) {
                listening.insert(pid, at);
            }
        } else if line.trim_end().ends_with(") is ready") {
            let generation = line
                .split_once(" of generation ")
                .and_then(|(_, r)| r.split_whitespace().next()?.parse::<u32>().ok());
            let pid = line
                .rsplit_once("(pid ")
                .and_then(|(_, r)| r.split(')').next()?.parse::<u32>().ok());
            if let (Some(generation), Some(pid), Some(at)) = (generation, pid, log_unix_ms(line)) {
                if generation >= 2 {
                    ready.push((pid, at));
                }
            }
        }
    }
    ready
        .into_iter()
        .filter_map(|(pid, at)| Some(at - listening.get(&pid)?))
        .collect()
}

/// Issue 11, "Done when", item 1: the Node example and the Python example with a 500 ms start-up
/// delay, under `--ready listening`, are declared ready no sooner than they listen and within
/// 300 ms after, for every new worker over the reloads (no load: this is the detection's own
/// latency). Both clocks are the wall clock with millisecond resolution, hence 1 ms of slack.
fn ready_latency(o: &Options, checks: &mut Checks) {
    let root = bins::workspace_root();
    let mut servers: Vec<(&str, Vec<std::ffi::OsString>)> = Vec::new();
    if reloadsup_integration_tests::have_command("node", &["--version"]) {
        servers.push((
            "node server.js",
            vec!["node".into(), root.join("examples/node/server.js").into()],
        ));
    }
    if let Some(python) = reloadsup_integration_tests::python3() {
        servers.push((
            "python server.py --delay 0.5",
            vec![
                python.into(),
                root.join("examples/python/server.py").into(),
                "--delay".into(),
                "0.5".into(),
            ],
        ));
    }
    println!(
        "\nReady after listening: {} workers, {} reloads, no load; per new worker, the primary's `is ready` log time minus the server's own `listening at` time (LISTENING_STAMP=1).\n",
        o.workers, o.reloads
    );
    println!("| server | new workers measured | ready − listening min | max |");
    println!("|---|---:|---:|---:|");
    for (name, argv) in servers {
        eprintln!("ready: {name}, --ready listening, {} reloads", o.reloads);
        let sb = Sandbox::new("bench-ready-latency");
        let mut sup = Run::new(&argv)
            .args(["-n", &o.workers.to_string(), "--ready", "listening"])
            .args(["--ready-timeout", "30s", "--graceful-timeout", "30s"])
            .env("RUST_LOG", "info,reloadsup=debug")
            .env("LISTENING_STAMP", "1")
            .start(&sb);
        sup.wait_ready(1, o.workers);
        for generation in 2..o.reloads + 2 {
            if let Err(reason) = sup.reload(generation) {
                eprintln!("reload to generation {generation} failed: {reason}");
            }
        }
        let diffs = ready_after_listening(&sup.log());
        shut_down(sup);
        let expected = o.reloads as usize * o.workers;
        let (min, max) = (diffs.iter().min().copied(), diffs.iter().max().copied());
        let show = |v: Option<i64>| v.map_or("—".to_owned(), |v| format!("{v} ms"));
        println!(
            "| {name} | {} of {expected} | {} | {} |",
            diffs.len(),
            show(min),
            show(max)
        );
        checks.add(
            11,
            &format!(
                "{name} --ready listening: ready − listening, min (never ready before listening)"
            ),
            show(min),
            "≥ −1 ms",
            min.is_some_and(|m| m >= -1),
        );
        checks.add(
            11,
            &format!(
                "{name} --ready listening: ready − listening, max over {expected} new workers"
            ),
            format!("{} ({} measured)", show(max), diffs.len()),
            "< 300 ms, all measured",
            diffs.len() == expected && max.is_some_and(|m| m < 300),
        );
    }
}

/// Issue 11, item 1: `--ready listening` against guessed delays, with the Node example, and
/// gunicorn's sync workers under load (seen by the connections they hold) beside gunicorn's
/// own `READY=1`.
fn ready_section(o: &Options, checks: &mut Checks) {
    let mark = checks.0.len();
    println!("\n## Readiness without code changes (issue 11)\n");
    let mut rows = Vec::new();
    if reloadsup_integration_tests::have_command("node", &["--version"]) {
        for ready in ["listening", "delay:300ms", "delay:1s"] {
            eprintln!("ready: node with --ready {ready}, {} reloads", o.reloads);
            rows.push((format!("node --ready {ready}"), node_ready_row(o, ready)));
        }
    } else {
        println!("node rows skipped: no node on PATH\n");
    }
    let gunicorn = bins::workspace_root().join("target/servers/venv/bin/gunicorn");
    if gunicorn.is_file() {
        for ready in ["listening", "notify"] {
            eprintln!(
                "ready: gunicorn with --ready {ready}, {} reloads",
                o.reloads
            );
            rows.push((
                format!("gunicorn sync --ready {ready}"),
                gunicorn_ready_row(o, &gunicorn, ready),
            ));
        }
    } else {
        println!(
            "gunicorn rows skipped: no {} (`make servers`)\n",
            gunicorn.display()
        );
    }
    println!(
        "examples/node/server.js with {} workers; gunicorn with `--workers {}` under `-n 1`, no `--preload`, examples/wsgi/app.py with APP_IMPORT_DELAY=0.2 (a 200 ms import in each worker); {} clients, {} reloads, {:?} per run; 'reload' = SIGHUP to the new generation serving.\n",
        o.workers, o.workers, o.clients, o.reloads, o.duration
    );
    println!("| run | requests | failures | req/s | p50 steady | p99 steady | p50 after reload | p99 after reload | longest pause steady | longest pause after reload | switch time median / max | reload median / max |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (_, (row, took)) in &rows {
        let line = row.markdown();
        println!(
            "{line} {} / {} |",
            ms(median(took)),
            ms(took.iter().max().copied())
        );
    }
    for (run, (row, took)) in &rows {
        checks.info(
            11,
            &format!("{run}: longest pause after a reload / reload median"),
            format!("{} / {}", ms(row.pause), ms(median(took))),
        );
        if run.ends_with("--ready listening") {
            checks.add(
                11,
                &format!("{run}: failed requests over the reloads"),
                row.failed.to_string(),
                "0",
                row.failed == 0,
            );
            if run.starts_with("gunicorn") {
                checks.add(
                    11,
                    &format!("{run}: longest pause after a reload"),
                    ms(row.pause),
                    "< 30 ms",
                    row.pause.is_some_and(|p| p < Duration::from_millis(30)),
                );
            }
            checks.add(
                11,
                &format!("{run}: reloads that succeeded"),
                format!("{} of {}", took.len(), o.reloads),
                "all",
                took.len() == o.reloads as usize,
            );
        }
    }
    ready_latency(o, checks);
    println!();
    checks.print(mark);
}

fn kill_and_restart(o: &Options, delay: &str) -> Row {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut server = Server::start(addr, delay);
    wait_until(DEADLINE, "hello to accept", || tcp_connect_ok(addr));
    let load_start = Instant::now();
    let load = Load::start(addr, o.clients, Limits::duration(o.duration));
    let mut restarts = Vec::new();
    let mut pids = Vec::new();
    for at in schedule(o) {
        if let Some(wait) = at.checked_sub(load_start.elapsed()) {
            thread::sleep(wait);
        }
        restarts.push(Instant::now());
        server.stop();
        server = Server::start(addr, delay);
        pids.push(server.pid());
    }
    let report = load.finish();
    server.stop();
    let switch = restarts
        .iter()
        .zip(&pids)
        .filter_map(|(&t, &pid)| {
            Some(
                report
                    .first_answer_from_pid(pid)?
                    .saturating_duration_since(t),
            )
        })
        .collect();
    Row::new("kill and restart", &report, &restarts, switch)
}

// ---------------------------------------------------------------------------------------------
// Reload overhead probes
// ---------------------------------------------------------------------------------------------

/// Follows a growing log file from a position on, cheaply (only new bytes are read).
struct LogTail {
    file: fs::File,
    pending: String,
}

impl LogTail {
    /// Starts at the current end of `path`.
    fn at_end(path: &Path) -> io::Result<LogTail> {
        let mut file = fs::File::open(path)?;
        file.seek(SeekFrom::End(0))?;
        Ok(LogTail {
            file,
            pending: String::new(),
        })
    }

    /// Whether a line containing `needle` was appended since the start.
    fn seen(&mut self, needle: &str) -> bool {
        let mut bytes = Vec::new();
        if self.file.read_to_end(&mut bytes).is_err() {
            return false;
        }
        self.pending.push_str(&String::from_utf8_lossy(&bytes));
        if self.pending.contains(needle) {
            return true;
        }
        // Keep only the last, possibly incomplete, line.
        if let Some(i) = self.pending.rfind('\n') {
            self.pending.drain(..=i);
        }
        false
    }
}

/// The canonical path of a binary, as `/proc/PID/exe` shows it.
fn canonical(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// How many of the primary's children outside `old` run `exe` (have exec'd it).
fn execd(primary: u32, old: &HashSet<u32>, exe: &Path) -> usize {
    proc::task_children(primary)
        .into_iter()
        .filter(|p| !old.contains(p))
        .filter(|p| fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e == exe))
        .count()
}

/// Waits until the primary has exactly `n` live children (the old generation is gone) and all
/// of them are asleep: spares started by a refill have finished starting, so a reload measured
/// next starts from rest.
fn settle(sup: &Supervisor, n: usize) -> HashSet<u32> {
    let children = sup.wait_workers(n);
    let asleep = |p: &u32| {
        fs::read_to_string(format!("/proc/{p}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('S')))
            .unwrap_or(true)
    };
    wait_until(DEADLINE, "every child of the primary asleep", || {
        children.iter().all(asleep)
    });
    children.into_iter().collect()
}

/// What one reload took, from the moment the request (signal or frame) was sent.
#[derive(Default)]
struct Sample {
    /// Until every new worker had exec'd the command.
    execd: Option<Duration>,
    /// Until the reload was reported done (the `serving` log line, or the `Reload` reply).
    done: Option<Duration>,
    /// CPU time the primary spent on the whole reload, old generation reaped included.
    cpu: Option<Duration>,
}

/// The samples of one configuration.
#[derive(Default)]
struct Overhead {
    workers: usize,
    /// `--prespawn`: worker roles exec'd ahead of the reload.
    spares: usize,
    execd: Vec<Duration>,
    done: Vec<Duration>,
    cpu: Vec<Duration>,
}

impl Overhead {
    fn label(&self) -> String {
        match self.spares {
            0 => self.workers.to_string(),
            n => format!("{} (`--prespawn {n}`)", self.workers),
        }
    }
}

/// How a reload is asked for.
enum Via<'a> {
    Signal,
    Control(&'a mut Control),
}

/// One reload of `workers` workers running `exe`, probed every [`PROBE_EVERY`].
fn reload_once(
    sup: &Supervisor,
    via: &mut Via<'_>,
    generation: u64,
    workers: usize,
    spares: usize,
    exe: &Path,
) -> Result<Sample, String> {
    // The old generation: children running the command (spares run reloadsup until used).
    let old: HashSet<u32> = settle(sup, workers + spares)
        .into_iter()
        .filter(|p| fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e == exe))
        .collect();
    let mut tail = LogTail::at_end(sup.log_path()).map_err(|e| format!("log: {e}"))?;
    let serving = format!("generation {generation} is serving");
    let primary = sup.pid();
    let mut sample = Sample::default();
    let cpu0 = proc::cpu_time_ns(primary);
    let t0 = Instant::now();
    let id = match via {
        Via::Signal => {
            sup.signal(libc::SIGHUP);
            0
        }
        Via::Control(c) => c.send(Request::Reload)?,
    };
    let deadline = t0 + Duration::from_secs(10);
    while sample.execd.is_none() || sample.done.is_none() {
        if sample.execd.is_none() && execd(primary, &old, exe) >= workers {
            sample.execd = Some(t0.elapsed());
        }
        if sample.done.is_none() {
            let done = match via {
                Via::Signal => tail.seen(&serving),
                Via::Control(c) => match c.try_reply(id)? {
                    None => false,
                    Some(Reply::Reload(r)) if r.outcome == Outcome::Succeeded => true,
                    Some(other) => return Err(format!("reload answered {other:?}")),
                },
            };
            if done {
                sample.done = Some(t0.elapsed());
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "reload to generation {generation} not done within 10 s"
            ));
        }
        thread::sleep(PROBE_EVERY);
    }
    settle(sup, workers + spares);
    if let (Some(a), Some(b)) = (cpu0, proc::cpu_time_ns(primary)) {
        sample.cpu = Some(Duration::from_nanos(b.saturating_sub(a)));
    }
    Ok(sample)
}

/// `reloads` reloads of `workers` `hello`s with `--ready immediate`, each from rest.
fn reload_overhead(workers: usize, spares: usize, reloads: u32, signal: bool) -> Overhead {
    let sb = Sandbox::new("bench-overhead");
    let mut sup = Run::hello(&[])
        .args(["-n", &workers.to_string(), "--ready", "immediate"])
        .args(["--graceful-timeout", "5s"])
        .args(["--prespawn", &spares.to_string()])
        .env("RUST_LOG", "info")
        .start(&sb);
    sup.addr();
    settle(&sup, workers + spares);
    let exe = canonical(&bins::example("hello"));
    let mut control = if signal {
        None
    } else {
        match Control::connect(&sup.control_path()) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("control socket: {e}");
                shut_down(sup);
                return Overhead {
                    workers,
                    spares,
                    ..Overhead::default()
                };
            }
        }
    };
    let mut o = Overhead {
        workers,
        spares,
        ..Overhead::default()
    };
    for generation in 2..=u64::from(reloads) + 1 {
        let mut via = match control.as_mut() {
            Some(c) => Via::Control(c),
            None => Via::Signal,
        };
        match reload_once(&sup, &mut via, generation, workers, spares, &exe) {
            Ok(s) => {
                o.execd.extend(s.execd);
                o.done.extend(s.done);
                o.cpu.extend(s.cpu);
            }
            Err(e) => {
                eprintln!("overhead: {e}");
                break;
            }
        }
    }
    drop(control);
    shut_down(sup);
    o
}

// ---------------------------------------------------------------------------------------------
// 2. Supervisor costs
// ---------------------------------------------------------------------------------------------

/// Prints the overhead table of `rows` and adds its checks (the 5 ms target at 16 workers).
fn overhead_report(issue: u32, via: &str, done: &str, rows: &[Overhead], checks: &mut Checks) {
    println!("| workers | {via} → every new worker exec'd, median / max | {via} → {done}, median / max | primary CPU per reload (old generation reaped included), median / max |");
    println!("|---:|---:|---:|---:|");
    for o in rows {
        println!(
            "| {} | {} | {} | {} |",
            o.label(),
            spread(&o.execd),
            spread(&o.done),
            spread(&o.cpu)
        );
    }
    println!();
    let limit = Duration::from_millis(5);
    for o in rows {
        let figure = |what: &str| {
            format!(
                "reload overhead, {} worker(s), {via} → {what}, median",
                o.label()
            )
        };
        let enough = o.execd.len() == OVERHEAD_RELOADS as usize;
        if o.workers == 16 {
            checks.add(
                issue,
                &figure("every new worker exec'd"),
                ms(median(&o.execd)),
                "≤ 5 ms",
                enough && median(&o.execd).is_some_and(|m| m <= limit),
            );
            checks.add(
                issue,
                &figure(done),
                ms(median(&o.done)),
                "≤ 5 ms",
                enough && median(&o.done).is_some_and(|m| m <= limit),
            );
        } else {
            checks.info(
                issue,
                &figure("every new worker exec'd"),
                ms(median(&o.execd)),
            );
            checks.info(issue, &figure(done), ms(median(&o.done)));
        }
        checks.info(
            issue,
            &format!(
                "primary CPU time per reload, {} worker(s), median",
                o.label()
            ),
            ms(median(&o.cpu)),
        );
    }
}

fn costs_section(o: &Options, checks: &mut Checks) {
    let mark = checks.0.len();
    eprintln!("costs: reload overhead through SIGHUP, RSS and wake-ups at rest");
    let overhead: Vec<Overhead> = [(1, 0), (16, 0), (16, 16)]
        .into_iter()
        .map(|(n, spares)| reload_overhead(n, spares, OVERHEAD_RELOADS, true))
        .collect();
    let (rss, keeper_rss, wakeups) = at_rest(o.workers);

    println!("\n## 2. Supervisor costs (issue 2)\n");
    println!("Reload overhead with `--ready immediate`, `hello` workers, {OVERHEAD_RELOADS} reloads each from rest; timed from `kill(SIGHUP)` in this process, probing `/proc/<primary>/task/*/children` and each new child's `/proc/<pid>/exe` every {PROBE_EVERY:?}.\n");
    overhead_report(
        2,
        "SIGHUP",
        "`generation N is serving` logged",
        &overhead,
        checks,
    );
    checks.add(
        2,
        &format!("primary RSS at rest ({} workers)", o.workers),
        kib(rss),
        "≤ 4096 kB (4 MiB)",
        rss.is_some_and(|kb| kb <= 4096),
    );
    checks.add(
        2,
        "keeper RSS at rest",
        kib(keeper_rss),
        "≤ 1536 kB (1.5 MiB)",
        keeper_rss.is_some_and(|kb| kb <= 1536),
    );
    checks.add(
        2,
        "primary wake-ups per second at rest (context switches over 5 s)",
        wakeups.map_or("?".to_owned(), |w| format!("{w:.1}")),
        "0",
        wakeups == Some(0.0),
    );
    checks.print(mark);
}

/// The primary's RSS (kB), the keeper's, and the primary's wake-ups per second while nothing
/// happens.
fn at_rest(workers: usize) -> (Option<u64>, Option<u64>, Option<f64>) {
    let sb = Sandbox::new("bench-rest");
    let mut sup = Run::hello(&[])
        .args(["-n", &workers.to_string(), "--ready", "notify"])
        .env("RUST_LOG", "info")
        .start(&sb);
    let addr = sup.addr();
    sup.wait_workers(workers);
    // Let start-up settle (readiness, first reaps) before measuring.
    wait_for(DEADLINE, "a first answer", || {
        reloadsup_integration_tests::get(addr, "/").ok()
    });
    thread::sleep(Duration::from_secs(1));
    let pid = sup.pid();
    let before = proc::context_switches(pid);
    let span = Duration::from_secs(5);
    thread::sleep(span);
    let after = proc::context_switches(pid);
    let rss = proc::status_kb(pid, "VmRSS");
    let keeper_rss = proc::children_of(pid)
        .into_iter()
        .find(|&c| proc::is_keeper(c))
        .and_then(|k| proc::status_kb(k, "VmRSS"));
    let wakeups = match (before, after) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / span.as_secs_f64()),
        _ => None,
    };
    shut_down(sup);
    (rss, keeper_rss, wakeups)
}

// ---------------------------------------------------------------------------------------------
// The control-socket client
// ---------------------------------------------------------------------------------------------

/// A client speaking the control protocol directly over `<state>/control.sock`.
struct Control {
    stream: UnixStream,
    reader: FrameReader,
    next_id: u32,
    blocking: bool,
}

impl Control {
    fn connect(path: &Path) -> Result<Control, String> {
        let what = |e: io::Error| format!("{}: {e}", path.display());
        let stream = UnixStream::connect(path).map_err(what)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(what)?;
        let mut c = Control {
            stream,
            reader: FrameReader::new(),
            next_id: 0,
            blocking: true,
        };
        c.write(&Message::hello())?;
        let hello = c.read_message(true)?.ok_or("no hello")?;
        check_hello(&hello).map_err(|e| e.to_string())?;
        Ok(c)
    }

    fn write(&mut self, msg: &Message) -> Result<(), String> {
        let frame = encode_frame(msg).map_err(|e| e.to_string())?;
        self.set_blocking(true)?;
        self.stream
            .write_all(&frame)
            .map_err(|e| format!("control socket write: {e}"))
    }

    fn set_blocking(&mut self, blocking: bool) -> Result<(), String> {
        if self.blocking != blocking {
            self.stream
                .set_nonblocking(!blocking)
                .map_err(|e| format!("control socket: {e}"))?;
            self.blocking = blocking;
        }
        Ok(())
    }

    /// The next message; `Ok(None)` when `block` is false and none is complete yet.
    fn read_message(&mut self, block: bool) -> Result<Option<Message>, String> {
        let mut buf = [0u8; 64 * 1024];
        loop {
            if let Some(msg) = self.reader.next_frame().map_err(|e| e.to_string())? {
                return Ok(Some(msg));
            }
            self.set_blocking(block)?;
            match self.stream.read(&mut buf) {
                Ok(0) => return Err("the primary closed the control connection".to_owned()),
                Ok(n) => self.reader.push(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !block => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("control socket read: {e}")),
            }
        }
    }

    /// Sends `request`; returns its id.
    fn send(&mut self, request: Request) -> Result<u32, String> {
        self.next_id = self.next_id.wrapping_add(1);
        let id = self.next_id;
        self.write(&Message::Request { id, request })?;
        Ok(id)
    }

    /// The reply to `id` if it has arrived (progress frames are skipped).
    fn try_reply(&mut self, id: u32) -> Result<Option<Reply>, String> {
        self.next_reply(id, false)
    }

    fn next_reply(&mut self, id: u32, block: bool) -> Result<Option<Reply>, String> {
        loop {
            match self.read_message(block)? {
                None => return Ok(None),
                Some(Message::Reply { id: got, reply }) if got == id => return Ok(Some(reply)),
                Some(Message::Progress { .. }) => {}
                Some(other) => return Err(format!("unexpected frame {other:?}")),
            }
        }
    }

    /// Sends `request` and waits for its reply.
    fn request(&mut self, request: Request) -> Result<Reply, String> {
        let id = self.send(request)?;
        self.next_reply(id, true)?
            .ok_or_else(|| "no reply".to_owned())
    }
}

/// Runs `cmd` (output discarded) and returns its wall time and success, killing it after
/// `timeout`.
fn timed_run(cmd: &mut Command, timeout: Duration) -> Result<(Duration, bool), String> {
    let t0 = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok((t0.elapsed(), status.success())),
            Ok(None) if t0.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{cmd:?} did not finish within {timeout:?}"));
            }
            Ok(None) => thread::sleep(Duration::from_micros(200)),
            Err(e) => return Err(format!("waiting for {cmd:?}: {e}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Control plane
// ---------------------------------------------------------------------------------------------

fn control_section(checks: &mut Checks) {
    let mark = checks.0.len();
    eprintln!("control: ctl status round trips with 16 workers, reload overhead through the control socket");
    let status = status_round_trips(16);
    let overhead: Vec<Overhead> = [(1, 0), (16, 0), (16, 16)]
        .into_iter()
        .map(|(n, spares)| reload_overhead(n, spares, OVERHEAD_RELOADS, false))
        .collect();

    println!("\n## 3. Control plane (issue 3)\n");
    let limit = Duration::from_millis(1);
    match &status {
        Ok((rtt, wall)) => {
            println!(
                "`Status` request → `Reply::Status` over one connection to `control.sock`, {} sequential requests after 50 to warm up, 16 workers:\n",
                rtt.len()
            );
            println!("| measure | p50 | p99 | max |");
            println!("|---|---:|---:|---:|");
            println!(
                "| `Status` round trip (protocol client) | {} | {} | {} |",
                us(quantile(rtt, 0.5)),
                us(quantile(rtt, 0.99)),
                us(rtt.iter().max().copied())
            );
            println!(
                "| `reloadsup ctl status` process wall time (n={}) | {} | {} | {} |",
                wall.len(),
                ms(quantile(wall, 0.5)),
                ms(quantile(wall, 0.99)),
                ms(wall.iter().max().copied())
            );
            checks.add(
                3,
                "`ctl status` round trip p99, 16 workers (protocol client)",
                format!(
                    "{} (p50 {})",
                    us(quantile(rtt, 0.99)),
                    us(quantile(rtt, 0.5))
                ),
                "< 1 ms",
                rtt.len() == STATUS_REQUESTS && quantile(rtt, 0.99).is_some_and(|p| p < limit),
            );
            checks.info(
                3,
                "`reloadsup ctl status` process wall time, median (context)",
                ms(median(wall)),
            );
        }
        Err(e) => {
            println!("`ctl status` round trips: not measured: {e}");
            checks.add(
                3,
                "`ctl status` round trip p99, 16 workers",
                format!("error: {e}"),
                "< 1 ms",
                false,
            );
        }
    }
    println!("\nReload overhead through the control socket (the protocol's `Request::Reload`, as `ctl reload` sends it), `--ready immediate`, `hello` workers, {OVERHEAD_RELOADS} reloads each from rest:\n");
    overhead_report(
        3,
        "`Reload` request",
        "`Reply::Reload` (succeeded)",
        &overhead,
        checks,
    );
    checks.print(mark);
}

/// `Status` round trips over the protocol, and `reloadsup ctl status` process wall times.
fn status_round_trips(workers: usize) -> Result<(Vec<Duration>, Vec<Duration>), String> {
    let sb = Sandbox::new("bench-status");
    let mut sup = Run::hello(&[])
        .args(["-n", &workers.to_string(), "--ready", "immediate"])
        .env("RUST_LOG", "info")
        .start(&sb);
    sup.addr();
    settle(&sup, workers);
    let result = (|| {
        let mut c = Control::connect(&sup.control_path())?;
        let mut rtt = Vec::with_capacity(STATUS_REQUESTS);
        let deadline = Instant::now() + Duration::from_secs(30);
        for i in 0..STATUS_REQUESTS + 50 {
            let t0 = Instant::now();
            match c.request(Request::Status)? {
                Reply::Status(s) if s.workers.len() >= workers => {}
                other => return Err(format!("status answered {other:?}")),
            }
            if i >= 50 {
                rtt.push(t0.elapsed());
            }
            if Instant::now() > deadline {
                break;
            }
        }
        drop(c);
        let mut wall = Vec::new();
        for _ in 0..CTL_RUNS {
            let mut cmd = Command::new(bins::reloadsup());
            cmd.arg("ctl")
                .arg("--control")
                .arg(sup.control_path())
                .arg("status");
            let (took, ok) = timed_run(&mut cmd, Duration::from_secs(10))?;
            if !ok {
                return Err("`reloadsup ctl status` failed".to_owned());
            }
            wall.push(took);
        }
        Ok((rtt, wall))
    })();
    shut_down(sup);
    result
}

// ---------------------------------------------------------------------------------------------
// 4. Soak: many reloads
// ---------------------------------------------------------------------------------------------

/// The primary's open fds and RSS at one point of the soak.
struct Point {
    reload: u32,
    fds: usize,
    rss: Option<u64>,
    children: usize,
}

fn measure_point(sup: &Supervisor, reload: u32, workers: usize) -> Point {
    // The old generations must be gone, or their hand-off and pidfds would be counted.
    let children = settle(sup, workers).len();
    let pid = sup.pid();
    Point {
        reload,
        fds: proc::fds_of(pid).len(),
        rss: proc::status_kb(pid, "VmRSS"),
        children,
    }
}

fn soak_section(o: &Options, checks: &mut Checks) {
    let mark = checks.0.len();
    const WORKERS: usize = 4;
    eprintln!(
        "soak: {} reloads of {WORKERS} workers through the control socket",
        o.soak
    );
    let sb = Sandbox::new("bench-soak");
    let sup = Run::new(["/bin/sleep", "3600"])
        .args(["-n", &WORKERS.to_string(), "--ready", "immediate"])
        .args(["--graceful-timeout", "1s"])
        .env("RUST_LOG", "info")
        .start(&sb);
    settle(&sup, WORKERS);
    let marks: Vec<u32> = [1, 10, 100, o.soak / 2, o.soak]
        .into_iter()
        .filter(|&m| m <= o.soak)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut points = Vec::new();
    let mut rtts = Vec::new();
    let mut failed = 0u32;
    let mut done = 0u32;
    let mut error = None;
    let start = Instant::now();
    match Control::connect(&sup.control_path()) {
        Err(e) => error = Some(e),
        Ok(mut c) => {
            for i in 1..=o.soak {
                if start.elapsed() > SOAK_CAP {
                    error = Some(format!("stopped at the {SOAK_CAP:?} cap"));
                    break;
                }
                let t0 = Instant::now();
                match c.request(Request::Reload) {
                    Ok(Reply::Reload(r)) if r.outcome == Outcome::Succeeded => {}
                    Ok(other) => {
                        failed += 1;
                        if failed <= 3 {
                            eprintln!("soak: reload {i} answered {other:?}");
                        }
                    }
                    Err(e) => {
                        error = Some(format!("reload {i}: {e}"));
                        break;
                    }
                }
                rtts.push(t0.elapsed());
                done = i;
                if marks.contains(&i) {
                    points.push(measure_point(&sup, i, WORKERS));
                }
            }
        }
    }
    let total = start.elapsed();
    let zombies = proc::task_children(sup.pid())
        .into_iter()
        .filter(|&p| proc::is_zombie(p))
        .count();
    shut_down(sup);

    println!(
        "\n## 4. Soak: {} reloads (issue 4)\n\n{WORKERS} workers of `/bin/sleep 3600`, `--ready immediate`, `--graceful-timeout 1s`; each reload is a `Reload` request through the control socket that waits for its reply; the primary's fds and RSS are read once the old generations are gone.\n",
        o.soak
    );
    println!("| after reload | primary open fds | primary RSS | live children |");
    println!("|---:|---:|---:|---:|");
    for p in &points {
        println!(
            "| {} | {} | {} | {} |",
            p.reload,
            p.fds,
            kib(p.rss),
            p.children
        );
    }
    println!(
        "\n{done} reloads ({failed} not succeeded) in {:.1} s, {} per reload; reload round trip median {} p99 {} max {}; zombies at the end: {zombies}.",
        total.as_secs_f64(),
        ms(Some(total / done.max(1))),
        ms(median(&rtts)),
        ms(quantile(&rtts, 0.99)),
        ms(rtts.iter().max().copied())
    );
    if let Some(e) = &error {
        println!("\nsoak stopped early: {e}");
    }
    println!();
    let at = |r: u32| points.iter().find(|p| p.reload == r);
    checks.add(
        4,
        "reloads done through the control socket, all succeeded, 0 zombies",
        format!("{done} of {} ({failed} failed), {zombies} zombies", o.soak),
        &o.soak.to_string(),
        done == o.soak && failed == 0 && zombies == 0 && error.is_none(),
    );
    match (at(10), at(o.soak)) {
        (Some(a), Some(b)) => {
            checks.add(
                4,
                &format!("primary open fds at reload 10 vs {}", o.soak),
                format!("{} vs {}", a.fds, b.fds),
                "equal",
                a.fds == b.fds,
            );
            let (ra, rb) = (a.rss.unwrap_or(0), b.rss.unwrap_or(u64::MAX));
            // Noise: a few pages of allocator slack.
            let noise = (ra / 20).max(64);
            checks.add(
                4,
                &format!("primary RSS at reload 10 vs {}", o.soak),
                format!(
                    "{} vs {} ({:+} kB)",
                    kib(a.rss),
                    kib(b.rss),
                    rb as i64 - ra as i64
                ),
                &format!("equal within noise (±{noise} kB)"),
                rb <= ra + noise && ra <= rb + noise,
            );
        }
        _ => checks.add(
            4,
            &format!("primary fds and RSS at reload 10 vs {}", o.soak),
            "not reached".to_owned(),
            "equal",
            false,
        ),
    }
    checks.info(
        4,
        &format!("total time of {} reloads", o.soak),
        format!("{:.1} s", total.as_secs_f64()),
    );
    checks.print(mark);
}

// ---------------------------------------------------------------------------------------------
// 5. The admin console
// ---------------------------------------------------------------------------------------------

fn console_section(checks: &mut Checks) {
    let mark = checks.0.len();
    println!("\n## 5. Admin console (issue 5)\n");
    let na = |checks: &mut Checks, why: &str| {
        println!("n/a ({why})\n");
        checks.info(5, "shell worker RSS", format!("n/a ({why})"));
        checks.info(
            5,
            "console `worker info` round trip p50/p99",
            format!("n/a ({why})"),
        );
        checks.print(mark);
    };
    if !console_built() {
        na(checks, "console not built");
        return;
    }
    eprintln!("console: shell worker RSS and `worker info` round trips over TLS");
    match console_figures() {
        Ok(f) => {
            println!("`hello` × 4 under reloadsup with `--admin 127.0.0.1:PORT`.\n");
            println!("| measure | p50 | p99 | max |");
            println!("|---|---:|---:|---:|");
            match &f.session {
                Ok(rtt) => println!(
                    "| `worker info` round trip in one session through `openssl s_client` (n={}) | {} | {} | {} |",
                    rtt.len(),
                    us(quantile(rtt, 0.5)),
                    us(quantile(rtt, 0.99)),
                    us(rtt.iter().max().copied())
                ),
                Err(e) => println!("| `worker info` round trip in one session | {e} | | |"),
            }
            match &f.process {
                Ok(wall) => println!(
                    "| `reloadsup console -c 'worker info'` process wall time: TLS handshake, password check (PBKDF2), command (n={}) | {} | {} | {} |",
                    wall.len(),
                    ms(quantile(wall, 0.5)),
                    ms(quantile(wall, 0.99)),
                    ms(wall.iter().max().copied())
                ),
                Err(e) => println!("| `reloadsup console -c 'worker info'` process | {e} | | |"),
            }
            println!(
                "\nShell worker RSS: {} after start, {} after the sessions.\n",
                kib(f.rss_start),
                kib(f.rss_after)
            );
            checks.info(
                5,
                "shell worker RSS (after start / after the sessions)",
                format!("{} / {}", kib(f.rss_start), kib(f.rss_after)),
            );
            match &f.session {
                Ok(rtt) => checks.info(
                    5,
                    "console `worker info` round trip p50 / p99 (one TLS session)",
                    format!("{} / {}", us(quantile(rtt, 0.5)), us(quantile(rtt, 0.99))),
                ),
                Err(e) => checks.info(5, "console `worker info` round trip", format!("n/a ({e})")),
            }
            match &f.process {
                Ok(wall) => checks.info(
                    5,
                    "`reloadsup console -c 'worker info'` wall time p50 / p99",
                    format!("{} / {}", ms(quantile(wall, 0.5)), ms(quantile(wall, 0.99))),
                ),
                Err(e) => checks.info(5, "`reloadsup console -c` wall time", format!("n/a ({e})")),
            }
            checks.print(mark);
        }
        Err(e) => na(checks, &e),
    }
}

/// Whether this `reloadsup` has `--admin`, `hash-password` and `console`.
fn console_built() -> bool {
    let help = Command::new(bins::reloadsup())
        .arg("--help")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    let has_admin = help.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--admin"));
    let works = |sub: &str| {
        Command::new(bins::reloadsup())
            .args([sub, "--help"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    has_admin && works("hash-password") && works("console")
}

struct ConsoleFigures {
    rss_start: Option<u64>,
    rss_after: Option<u64>,
    session: Result<Vec<Duration>, String>,
    process: Result<Vec<Duration>, String>,
}

/// `reloadsup hash-password` for [`CONSOLE_PASSWORD`].
fn hash_password() -> Result<String, String> {
    let mut child = Command::new(bins::reloadsup())
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("hash-password: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // Twice, in case it asks for a confirmation.
        let _ = write!(stdin, "{CONSOLE_PASSWORD}\n{CONSOLE_PASSWORD}\n");
    }
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| "hash-password did not finish within 30 s".to_owned())?
        .map_err(|e| format!("hash-password: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let hash = text
        .lines()
        .map(str::trim)
        .rfind(|l| l.contains('$'))
        .map(str::to_owned);
    match hash {
        Some(h) if out.status.success() => Ok(h),
        _ => Err(format!(
            "hash-password failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

fn console_figures() -> Result<ConsoleFigures, String> {
    let hash = hash_password()?;
    let sb = Sandbox::new("bench-console");
    let port = free_port();
    let admin = format!("127.0.0.1:{port}");
    let mut sup = Run::hello(&[])
        .args(["-n", "4", "--ready", "immediate"])
        .args(["--admin", &admin, "--admin-password-hash", &hash])
        .env("RUST_LOG", "info")
        .start(&sb);
    sup.addr();
    let line = sup.wait_for_log("shell worker started as pid ", DEADLINE);
    let shell: u32 = line
        .rsplit("pid ")
        .next()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no shell worker pid in {line:?}"))?;
    sup.wait_for_log("shell worker listening on", DEADLINE);
    let addr: SocketAddr = admin.parse().map_err(|e| format!("{admin}: {e}"))?;
    wait_until(DEADLINE, "the admin console to accept", || {
        tcp_connect_ok(addr)
    });
    thread::sleep(Duration::from_millis(200));
    let rss_start = proc::status_kb(shell, "VmRSS");
    let session = s_client_round_trips(addr);
    let process = console_processes(&admin, &sb);
    let rss_after = proc::status_kb(shell, "VmRSS");
    shut_down(sup);
    Ok(ConsoleFigures {
        rss_start,
        rss_after,
        session,
        process,
    })
}

/// `openssl s_client` with piped stdin and stdout, killed on drop.
struct SClient {
    child: Child,
    stdin: ChildStdin,
    chunks: mpsc::Receiver<Vec<u8>>,
    text: String,
}

impl SClient {
    fn start(addr: SocketAddr) -> Result<SClient, String> {
        let mut child = Command::new("openssl")
            .args(["s_client", "-quiet", "-connect", &addr.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("openssl s_client: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let (tx, chunks) = mpsc::channel();
        thread::spawn(move || loop {
            let n = match stdout.fill_buf() {
                Ok([]) | Err(_) => break,
                Ok(buf) => {
                    if tx.send(buf.to_vec()).is_err() {
                        break;
                    }
                    buf.len()
                }
            };
            stdout.consume(n);
        });
        Ok(SClient {
            child,
            stdin,
            chunks,
            text: String::new(),
        })
    }

    /// Reads until the output so far ends with `suffix`; returns it and clears it.
    fn until(&mut self, suffix: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        while !self.text.ends_with(suffix) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.chunks.recv_timeout(left) {
                Ok(chunk) => self.text.push_str(&String::from_utf8_lossy(&chunk)),
                Err(_) => {
                    return Err(format!(
                        "no {suffix:?} within {timeout:?}; got {:?}",
                        self.text
                    ))
                }
            }
        }
        Ok(std::mem::take(&mut self.text))
    }

    fn send(&mut self, line: &str) -> Result<(), String> {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .map_err(|e| format!("writing to s_client: {e}"))
    }
}

impl Drop for SClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `worker info` round trips in one TLS session driven through `openssl s_client`.
fn s_client_round_trips(addr: SocketAddr) -> Result<Vec<Duration>, String> {
    let mut c = SClient::start(addr)?;
    c.until("Password: ", Duration::from_secs(10))?;
    c.send(CONSOLE_PASSWORD)?;
    c.until("> ", Duration::from_secs(10))?;
    let mut rtt = Vec::with_capacity(CONSOLE_COMMANDS);
    let deadline = Instant::now() + Duration::from_secs(30);
    for _ in 0..CONSOLE_COMMANDS + 10 {
        let t0 = Instant::now();
        c.send("worker info")?;
        let out = c.until("> ", Duration::from_secs(5))?;
        let took = t0.elapsed();
        if !out.contains("Current Workers:") {
            return Err(format!("unexpected answer to `worker info`: {out:?}"));
        }
        rtt.push(took);
        if Instant::now() > deadline {
            break;
        }
    }
    let _ = c.send(".exit");
    // The first answers warm the session up.
    Ok(rtt.split_off(rtt.len().min(10)))
}

/// Wall times of `reloadsup console -c 'worker info'` processes.
fn console_processes(admin: &str, sb: &Sandbox) -> Result<Vec<Duration>, String> {
    let known_hosts = sb.join("known_hosts");
    let mut wall = Vec::new();
    for i in 0..=CONSOLE_RUNS {
        let mut cmd = Command::new(bins::reloadsup());
        cmd.arg("console")
            .arg("--known-hosts")
            .arg(&known_hosts)
            .args(["-c", "worker info", admin])
            .env("RELOADSUP_PASSWORD", CONSOLE_PASSWORD);
        let (took, ok) = timed_run(&mut cmd, Duration::from_secs(20))?;
        if !ok {
            return Err(format!(
                "`reloadsup console -c 'worker info'` failed (run {i})"
            ));
        }
        // The first run also records the certificate in the known-hosts file.
        if i > 0 {
            wall.push(took);
        }
    }
    Ok(wall)
}

// ---------------------------------------------------------------------------------------------
// 6. Chaos
// ---------------------------------------------------------------------------------------------

fn chaos_section(o: &Options, checks: &mut Checks) {
    let mark = checks.0.len();
    let config = chaos::ChaosConfig::bench(chaos::seed_from_env(), o.chaos);
    eprintln!(
        "chaos: {:?} of actions with {} workers, --prespawn {}, {} clients",
        config.duration, config.workers, config.prespawn, config.clients
    );
    let sb = Sandbox::new("bench-chaos");
    let r = chaos::run(&sb, &config);
    println!(
        "\n## 6. Chaos run (issue 12, item 16)\n\n{} workers of `hello`, `--ready notify --ready-timeout {} --prespawn {}`, the admin console on, {} clients; actions for {:?}. Replay with `CHAOS_SEED={}`.\n",
        config.workers, config.ready_timeout, config.prespawn, config.clients, config.duration, r.seed
    );
    println!("```\n{}```\n", r.summary());
    checks.add(
        16,
        "requests failed on connections no killed worker held",
        format!(
            "{} of {} ({} failed on killed workers' connections, {} kills)",
            r.requests_failed - r.requests_excused,
            r.requests_ok + r.requests_failed,
            r.requests_excused,
            r.kills
        ),
        "0",
        r.requests_failed == r.requests_excused,
    );
    let hung = r
        .reload_outcomes
        .iter()
        .filter(|(k, _)| k.ends_with("hung"))
        .map(|(_, n)| n)
        .sum::<u32>();
    checks.add(
        16,
        "reloads reported (exit 0, or 1 with a reason; bad releases failed)",
        format!("{:?}", r.reload_outcomes),
        "all, none hung",
        hung == 0
            && !r
                .violations
                .iter()
                .any(|v| v.contains("Release") || v.contains("Reload")),
    );
    checks.add(
        16,
        "zombie children of the primary at the end",
        r.zombies_end.len().to_string(),
        "0",
        r.zombies_end.is_empty(),
    );
    checks.add(
        16,
        "primary open fds before vs after",
        format!("{} vs {}", r.fds_start, r.fds_end),
        "equal",
        r.fds_start == r.fds_end,
    );
    checks.add(
        16,
        "primary RSS before vs after",
        format!(
            "{} vs {} ({:+} kB)",
            kib(Some(r.rss_start_kb)),
            kib(Some(r.rss_end_kb)),
            r.rss_end_kb as i64 - r.rss_start_kb as i64
        ),
        &format!(
            "≤ +{} kB",
            chaos::ChaosReport::rss_limit_kb(r.rss_start_kb) - r.rss_start_kb
        ),
        r.rss_end_kb <= chaos::ChaosReport::rss_limit_kb(r.rss_start_kb),
    );
    checks.add(
        16,
        "every rule of the chaos run",
        format!("{} violation(s)", r.violations.len()),
        "0",
        r.holds(),
    );
    checks.print(mark);
}

// ---------------------------------------------------------------------------------------------
// Metrics (issue 11, item 5)
// ---------------------------------------------------------------------------------------------

/// One `GET /metrics` on a new connection: its wall time, or why it failed.
fn scrape(addr: SocketAddr) -> Result<Duration, String> {
    use std::io::{Read, Write};
    let t0 = Instant::now();
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut body = Vec::new();
    s.read_to_end(&mut body).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&body);
    if !text.starts_with("HTTP/1.1 200") || !text.contains("reloadsup_generation") {
        return Err(format!(
            "unexpected answer: {}",
            text.lines().next().unwrap_or("")
        ));
    }
    Ok(t0.elapsed())
}

/// Scrape round trips of the metrics worker beside a loaded service, and the `Status` round
/// trip of the primary while 8 clients scrape as fast as they can.
fn metrics_section(o: &Options, checks: &mut Checks) {
    let mark = checks.0.len();
    const SCRAPES: usize = 500;
    eprintln!("metrics: {SCRAPES} scrapes under load; Status round trips while scrapers flood");
    let sb = Sandbox::new("bench-metrics");
    let mut sup = Run::hello(&[])
        .args([
            "-n",
            &o.workers.to_string(),
            "--ready",
            "notify",
            "--metrics",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "info")
        .start(&sb);
    let addr = sup.addr();
    settle(&sup, o.workers);
    let line = sup.wait_for_log("metrics on http://", DEADLINE);
    let shown = line
        .split("metrics on http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_default()
        .to_string();
    let Ok(metrics) = shown.parse::<SocketAddr>() else {
        println!("\n## Metrics (issue 11)\n\nnot measured: no address in {line:?}");
        return;
    };
    let control = sup.control_path();
    let status = |n: usize| -> Vec<Duration> {
        let Ok(mut c) = Control::connect(&control) else {
            return Vec::new();
        };
        (0..n)
            .filter_map(|_| {
                let t0 = Instant::now();
                matches!(c.request(Request::Status), Ok(Reply::Status(_))).then(|| t0.elapsed())
            })
            .collect()
    };
    let quiet = status(2000);
    let load = Load::start(addr, o.clients, Limits::default());
    load.wait_for_more_answers(200, DEADLINE);
    let mut took = Vec::new();
    let mut errors = 0usize;
    for _ in 0..SCRAPES {
        match scrape(metrics) {
            Ok(d) => took.push(d),
            Err(_) => errors += 1,
        }
    }
    // Eight scrapers flood the worker while the primary answers Status.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scrapers: Vec<_> = (0..8)
        .map(|_| {
            let stop = std::sync::Arc::clone(&stop);
            thread::spawn(move || {
                let until = Instant::now() + Duration::from_secs(30);
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < until {
                    if scrape(metrics).is_ok() {
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    let flooded = status(2000);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let flood_scrapes: u64 = scrapers.into_iter().map(|t| t.join().unwrap_or(0)).sum();
    let report = load.stop();
    sup.signal(libc::SIGTERM);
    let _ = sup.wait_exit(DEADLINE);
    let p99 = |v: &[Duration]| quantile(v, 0.99);
    println!(
        "\n## Metrics (issue 11)\n\n{} workers, {} clients of hello; {SCRAPES} sequential scrapes (a new connection each), then 8 scrapers flooding the metrics worker ({flood_scrapes} scrapes) while `Status` round trips are timed.\n",
        o.workers, o.clients
    );
    println!("| figure | p50 | p99 | max |");
    println!("|---|---:|---:|---:|");
    println!(
        "| scrape round trip ({errors} failed) | {} | {} | {} |",
        ms(median(&took)),
        ms(p99(&took)),
        ms(took.iter().max().copied())
    );
    println!(
        "| `Status` round trip, quiet | {} | {} | {} |",
        ms(median(&quiet)),
        ms(p99(&quiet)),
        ms(quiet.iter().max().copied())
    );
    println!(
        "| `Status` round trip, scrapers flooding | {} | {} | {} |",
        ms(median(&flooded)),
        ms(p99(&flooded)),
        ms(flooded.iter().max().copied())
    );
    checks.info(
        11,
        "metrics scrape round trip p50 / p99",
        format!("{} / {}", ms(median(&took)), ms(p99(&took))),
    );
    checks.add(
        11,
        "failed requests of the service while scraped",
        report.failed().to_string(),
        "0",
        report.failed() == 0 && errors == 0,
    );
    checks.info(
        11,
        "`Status` p99 with scrapers flooding / quiet",
        format!("{} / {}", ms(p99(&flooded)), ms(p99(&quiet))),
    );
    println!();
    checks.print(mark);
}

// ---------------------------------------------------------------------------------------------
// 7. Upgrade in place
// ---------------------------------------------------------------------------------------------

/// The `upgrades` field of a `Status` answer, or `None` when nothing answers yet.
fn upgrades_answered(control: &Path) -> Option<u64> {
    let mut c = Control::connect(control).ok()?;
    match c.request(Request::Status) {
        Ok(Reply::Status(s)) => Some(s.upgrades),
        _ => None,
    }
}

fn upgrade_section(o: &Options, checks: &mut Checks) {
    let mark = checks.0.len();
    eprintln!("upgrade: {UPGRADES} upgrades in place under load");
    let sb = Sandbox::new("bench-upgrade");
    let delay = format!("{}ms", o.delay.as_millis());
    let mut sup = Run::hello(&["--delay", &delay])
        .args(["-n", &o.workers.to_string(), "--ready", "notify"])
        .env("RUST_LOG", "info")
        .start(&sb);
    let addr = sup.addr();
    settle(&sup, o.workers);
    let control = sup.control_path();
    let load = Load::start(addr, o.clients, Limits::default());
    load.wait_for_more_answers(200, DEADLINE);
    // Steady load before the first upgrade and between them.
    thread::sleep(Duration::from_secs(2));
    let mut pauses = Vec::new();
    let mut at = Vec::new();
    let mut error = None;
    for n in 1..=UPGRADES as u64 {
        let t0 = Instant::now();
        at.push(t0);
        sup.signal(libc::SIGUSR2);
        // Bounded: the pre-flight's own deadline is 10 s.
        let answered =
            wait_for(
                DEADLINE,
                "the new image to answer Status",
                || match upgrades_answered(&control) {
                    Some(u) if u >= n => Some(true),
                    _ if sup.has_exited() => Some(false),
                    _ => {
                        thread::sleep(PROBE_EVERY);
                        None
                    }
                },
            );
        if !answered {
            error = Some(format!("the primary exited during upgrade {n}"));
            break;
        }
        pauses.push(t0.elapsed());
        // A second after each upgrade is measured apart, then steady load again.
        thread::sleep(Duration::from_millis(1500));
    }
    let report = load.stop();
    let workers_same = sup.workers().len() == o.workers;
    shut_down(sup);
    let after = report.latency_after(0.99, &at, WINDOW);
    let steady = report.latency_outside(0.99, &at, WINDOW);
    println!(
        "\n## 7. Upgrade in place (issue 8)\n\n{} workers of `hello --delay {delay}`, `--ready notify`, {} clients; {UPGRADES} SIGUSR2 upgrades 1.5 s apart; the pause is SIGUSR2 → the first `Status` answer from the new image (`upgrades` incremented), pre-flight included.\n",
        o.workers, o.clients
    );
    println!(
        "{}; pause median {} p99 {} max {}; p99 in the second after an upgrade {} vs steady {}.\n",
        report.summary(),
        ms(median(&pauses)),
        ms(quantile(&pauses, 0.99)),
        ms(pauses.iter().max().copied()),
        ms(after),
        ms(steady)
    );
    if let Some(e) = &error {
        println!("upgrade run stopped early: {e}\n");
    }
    let med = median(&pauses);
    checks.add(
        8,
        "upgrade pause (SIGUSR2 → the new image answers Status), median",
        ms(med),
        "< 20 ms",
        error.is_none() && med.is_some_and(|m| m < Duration::from_millis(20)),
    );
    checks.add(
        8,
        &format!("failed requests over {UPGRADES} upgrades under load"),
        report.failed().to_string(),
        "0",
        report.failed() == 0 && error.is_none() && workers_same,
    );
    let ratio = match (after, steady) {
        (Some(a), Some(s)) if !s.is_zero() => Some(a.as_secs_f64() / s.as_secs_f64()),
        _ => None,
    };
    checks.add(
        8,
        "p99 in the second after an upgrade / steady p99",
        ratio.map_or("—".to_owned(), |r| {
            format!("{r:.2}x ({} vs {})", ms(after), ms(steady))
        }),
        "≤ 1.5x",
        ratio.is_some_and(|r| r <= 1.5),
    );
    checks.print(mark);
}

// ---------------------------------------------------------------------------------------------
// 8. Worker logs (issue 10)
// ---------------------------------------------------------------------------------------------

/// Lines the flood worker writes in the throughput run (100 bytes each with the newline).
const FLOOD_LINES: u64 = 500_000;
/// `Status` round trips and reloads in each run beside a 50 MB/s logger.
const LOG_STATUS: usize = 300;
const LOG_RELOADS: usize = 5;

/// The logger worker's pid: the primary's child whose `argv[0]` is `reloadsup-logger`.
fn logger_of(sup: &Supervisor) -> Option<u32> {
    sup.workers().into_iter().find(|&p| {
        fs::read(format!("/proc/{p}/cmdline"))
            .is_ok_and(|c| c.split(|&b| b == 0).next() == Some(b"reloadsup-logger"))
    })
}

struct Throughput {
    mb: f64,
    secs: f64,
    logger_cpu_ms: f64,
    lost: u64,
}

/// One worker writes [`FLOOD_LINES`] lines into its pipe as fast as the logger takes them.
fn log_throughput() -> Result<Throughput, String> {
    let sb = Sandbox::new("bench-log-rate");
    let file = sb.join("app.log");
    let line = "x".repeat(99);
    let script = sb.write_script(
        "flood.sh",
        &format!("#!/bin/sh\nyes '{line}' | head -n {FLOOD_LINES}\nexec sleep 600\n"),
    );
    let t0 = Instant::now();
    let sup = Run::new([script])
        .args(["-n", "1", "--ready", "immediate", "--log-output"])
        .arg(format!("file:{}", file.display()))
        .env("RUST_LOG", "info")
        .start(&sb);
    let result = (|| {
        let logger = wait_for(DEADLINE, "the logger worker", || logger_of(&sup));
        let first = wait_for(DEADLINE, "the first log line", || {
            let text = fs::read(&file).ok()?;
            let end = text.iter().position(|&b| b == b'\n')?;
            Some(end + 1)
        });
        let expected = first as u64 * FLOOD_LINES;
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut done = None;
        while Instant::now() < deadline {
            if fs::metadata(&file).map(|m| m.len()).unwrap_or(0) >= expected {
                done = Some(t0.elapsed());
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        let cpu = proc::cpu_time_ns(logger).unwrap_or(0);
        let text = fs::read(&file).map_err(|e| e.to_string())?;
        let written = text.iter().filter(|&&b| b == b'\n').count() as u64;
        let secs = done
            .ok_or("the log did not reach its size in 120 s")?
            .as_secs_f64();
        Ok(Throughput {
            mb: (FLOOD_LINES * 100) as f64 / 1e6,
            secs,
            logger_cpu_ms: cpu as f64 / 1e6,
            lost: FLOOD_LINES.saturating_sub(written),
        })
    })();
    shut_down(sup);
    result
}

struct BesideFlood {
    reload: Vec<Duration>,
    status: Vec<Duration>,
    failed: u64,
    requests: u64,
    primary_cpu_ms_per_s: f64,
    log_mb_per_s: f64,
}

/// Four `hello` workers; with `flood`, worker 0 also runs a writer of 50 MB/s of log lines
/// (in its process group, so it is stopped with it). Status round trips and reloads under a
/// light load.
fn beside_flood(python: &Path, flood: bool) -> Result<BesideFlood, String> {
    let sb = Sandbox::new(if flood {
        "bench-log-flood"
    } else {
        "bench-log-quiet"
    });
    let file = sb.join("app.log");
    let writer = sb.write(
        "flood.py",
        "import sys, time\nline = b'y' * 99 + b'\\n'\nchunk = line * 5000\nout = sys.stdout.buffer\nt = time.monotonic()\nwhile True:\n    out.write(chunk)\n    out.flush()\n    t += 0.01\n    d = t - time.monotonic()\n    if d > 0:\n        time.sleep(d)\n",
    );
    let script = sb.write_script(
        "worker.sh",
        &format!(
            "#!/bin/sh\nif [ \"$FLOOD\" = 1 ] && [ \"$RELOADSUP_WORKER\" = 0 ]; then {} {} & fi\nexec {}\n",
            python.display(),
            writer.display(),
            bins::example("hello").display()
        ),
    );
    let mut sup = Run::new([script])
        .args([
            "-n",
            "4",
            "--ready",
            "immediate",
            "--stop-signal-to",
            "group",
        ])
        .args(["--graceful-timeout", "5s", "--env"])
        .arg(format!("FLOOD={}", u8::from(flood)))
        .arg("--log-output")
        .arg(format!("file:{}", file.display()))
        .env("RUST_LOG", "info")
        .start(&sb);
    let addr = sup.addr();
    let result = (|| {
        settle(&sup, 5);
        thread::sleep(Duration::from_millis(500));
        let mut c = Control::connect(&sup.control_path())?;
        let load = Load::start(addr, 4, Limits::duration(Duration::from_secs(120)));
        let cpu0 = proc::cpu_time_ns(sup.pid()).unwrap_or(0);
        let size0 = fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        let t0 = Instant::now();
        let mut status = Vec::with_capacity(LOG_STATUS);
        let mut reload = Vec::with_capacity(LOG_RELOADS);
        for r in 0..LOG_RELOADS {
            for _ in 0..LOG_STATUS / LOG_RELOADS {
                let t = Instant::now();
                c.request(Request::Status)?;
                status.push(t.elapsed());
            }
            let t = Instant::now();
            match c.request(Request::Reload)? {
                Reply::Reload(o) if o.outcome == Outcome::Succeeded => reload.push(t.elapsed()),
                other => return Err(format!("reload {r}: {other:?}")),
            }
            thread::sleep(Duration::from_millis(300));
        }
        let secs = t0.elapsed().as_secs_f64();
        let cpu = proc::cpu_time_ns(sup.pid())
            .unwrap_or(0)
            .saturating_sub(cpu0);
        let size = fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        let report = load.stop();
        Ok(BesideFlood {
            reload,
            status,
            failed: report.failed(),
            requests: report.total(),
            primary_cpu_ms_per_s: cpu as f64 / 1e6 / secs,
            log_mb_per_s: size.saturating_sub(size0) as f64 / 1e6 / secs,
        })
    })();
    shut_down(sup);
    result
}

fn ratio(a: Option<Duration>, b: Option<Duration>) -> Option<f64> {
    Some(a?.as_secs_f64() / b?.as_secs_f64().max(1e-9))
}

fn logs_section(checks: &mut Checks) {
    let mark = checks.0.len();
    eprintln!("logs: logger throughput, then a 50 MB/s logging worker beside none");
    println!("\n## 8. Worker logs (issue 10)\n");
    match log_throughput() {
        Ok(t) => {
            println!(
                "One worker writes {FLOOD_LINES} lines of 100 bytes ({:.0} MB) into its pipe as fast as the logger takes them; `--log-output file:`, text format (about 160 bytes a line written):\n",
                t.mb
            );
            println!(
                "| MB in | seconds | MB/s held | lines lost | logger CPU | logger CPU per MB |"
            );
            println!("|---:|---:|---:|---:|---:|---:|");
            let per_mb = t.logger_cpu_ms / t.mb;
            println!(
                "| {:.0} | {:.2} | {:.1} | {} | {:.0} ms | {:.2} ms |",
                t.mb,
                t.secs,
                t.mb / t.secs,
                t.lost,
                t.logger_cpu_ms,
                per_mb
            );
            checks.add(
                10,
                "lines lost by the logger at full rate",
                t.lost.to_string(),
                "0",
                t.lost == 0,
            );
            checks.info(
                10,
                "largest log rate held with no line lost",
                format!("{:.1} MB/s", t.mb / t.secs),
            );
            checks.info(10, "logger CPU per MB of log", format!("{per_mb:.2} ms"));
        }
        Err(e) => {
            println!("logger throughput: not measured: {e}");
            checks.add(
                10,
                "lines lost by the logger at full rate",
                format!("error: {e}"),
                "0",
                false,
            );
        }
    }
    let Some(python) = reloadsup_integration_tests::python3() else {
        println!("\nThe 50 MB/s writer needs python3: not measured.");
        checks.add(
            10,
            "reload time beside a 50 MB/s logging worker",
            "no python3".into(),
            "≤ 1.5× without",
            false,
        );
        checks.print(mark);
        return;
    };
    let runs = (beside_flood(&python, false), beside_flood(&python, true));
    match runs {
        (Ok(quiet), Ok(flood)) => {
            println!(
                "\nFour `hello` workers, `--log-output file:`, 4 clients of load, {LOG_STATUS} `Status` round trips and {LOG_RELOADS} reloads (`Request::Reload` to its reply); with the flood, worker 0 also runs a writer of 50 MB/s of log lines:\n"
            );
            println!("| run | log MB/s | reload p50 | reload max | `Status` p50 | `Status` p99 | failed / requests | primary CPU |");
            println!("|---|---:|---:|---:|---:|---:|---:|---:|");
            for (name, r) in [
                ("quiet workers", &quiet),
                ("one worker logging 50 MB/s", &flood),
            ] {
                println!(
                    "| {name} | {:.1} | {} | {} | {} | {} | {} / {} | {:.1} ms/s |",
                    r.log_mb_per_s,
                    ms(median(&r.reload)),
                    ms(r.reload.iter().max().copied()),
                    us(quantile(&r.status, 0.5)),
                    us(quantile(&r.status, 0.99)),
                    r.failed,
                    r.requests,
                    r.primary_cpu_ms_per_s
                );
            }
            let reload = ratio(median(&flood.reload), median(&quiet.reload));
            let status = ratio(quantile(&flood.status, 0.5), quantile(&quiet.status, 0.5));
            let show = |r: Option<f64>| r.map_or("—".to_string(), |r| format!("{r:.2}×"));
            checks.add(
                10,
                "reload time with a 50 MB/s logging worker / without (median)",
                show(reload),
                "≤ 1.5×",
                reload.is_some_and(|r| r <= 1.5),
            );
            checks.add(
                10,
                "`Status` round trip with a 50 MB/s logging worker / without (p50)",
                show(status),
                "≤ 1.5×",
                status.is_some_and(|r| r <= 1.5),
            );
            checks.add(
                10,
                "failed requests beside a 50 MB/s logging worker",
                flood.failed.to_string(),
                "0",
                flood.failed == 0 && quiet.failed == 0,
            );
            checks.add(
                10,
                "primary CPU with a 50 MB/s logging worker",
                format!(
                    "{:.1} ms/s (without: {:.1} ms/s)",
                    flood.primary_cpu_ms_per_s, quiet.primary_cpu_ms_per_s
                ),
                "≤ without + 5 ms/s",
                flood.primary_cpu_ms_per_s <= quiet.primary_cpu_ms_per_s + 5.0,
            );
            checks.info(
                10,
                "log rate the flood run wrote",
                format!("{:.1} MB/s", flood.log_mb_per_s),
            );
        }
        (a, b) => {
            let e = a.err().or(b.err()).unwrap_or_default();
            println!("\nBeside a 50 MB/s logging worker: not measured: {e}");
            checks.add(
                10,
                "reload time beside a 50 MB/s logging worker",
                format!("error: {e}"),
                "≤ 1.5× without",
                false,
            );
        }
    }
    checks.print(mark);
}
