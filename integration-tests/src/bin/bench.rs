//! `reloadsup-bench`: the `make bench` tables of DESIGN.md section 10.
//!
//! Three runs of the same load against `hello`, side by side: the server run directly, the
//! server under reloadsup with reloads during the load, and the naive baseline of killing the
//! server and starting it again on the same port. Then the supervisor's own costs: reload
//! overhead for 1 and 16 workers, the primary's RSS, and its wake-ups per second at rest.
//!
//! ```text
//! reloadsup-bench [--duration 8s] [--reloads 10] [--clients 8] [--workers 4] [--delay 200ms]
//! ```

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use reloadsup_integration_tests::{
    bins, proc, tcp_connect_ok, wait_for, wait_until, Limits, Load, LoadReport, Run, Sandbox,
    DEADLINE,
};

const USAGE: &str =
    "usage: reloadsup-bench [--duration D] [--reloads N] [--clients N] [--workers N] [--delay D]
  --duration D   load duration of each run (default 8s)
  --reloads N    reloads (or kill-and-restarts) during the load (default 10)
  --clients N    concurrent clients (default 8)
  --workers N    workers under reloadsup (default 4)
  --delay D      the server's start-up delay before it accepts (default 200ms)";

/// Requests that start within this long after a reload count as 'during a reload'.
const WINDOW: Duration = Duration::from_secs(1);

struct Options {
    duration: Duration,
    reloads: u32,
    clients: usize,
    workers: usize,
    delay: Duration,
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
        duration: Duration::from_secs(8),
        reloads: 10,
        clients: 8,
        workers: 4,
        delay: Duration::from_millis(200),
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
            "--reloads" => o.reloads = number(&value)? as u32,
            "--clients" => o.clients = number(&value)?.max(1),
            "--workers" => o.workers = number(&value)?.max(1),
            "--delay" => o.delay = parse_duration(&value)?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(o)
}

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
    let delay = format!("{}ms", o.delay.as_millis());
    eprintln!(
        "reloadsup-bench: {} clients, {:?} per run, {} reloads, {} workers, start-up delay {delay}",
        o.clients, o.duration, o.reloads, o.workers
    );

    let mut rows = Vec::new();
    eprintln!("run 1/3: hello directly");
    rows.push(direct(&o));
    eprintln!("run 2/3: hello under reloadsup with {} reloads", o.reloads);
    rows.push(supervised(&o, &delay));
    eprintln!("run 3/3: kill-and-restart loop, {} restarts", o.reloads);
    rows.push(kill_and_restart(&o, &delay));

    println!(
        "\n### Reloads under load ({} clients, {:?} per run, {} reloads, {} workers, worker start-up delay {delay})\n",
        o.clients, o.duration, o.reloads, o.workers
    );
    println!("| run | requests | failures | req/s | p50 steady | p99 steady | p50 ≤1 s after reload | p99 ≤1 s after reload | longest pause after reload | switch time median / max |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!("{}", r.markdown());
    }
    for r in &rows {
        if !r.failures.is_empty() {
            println!("\n{} failures: {}", r.name, r.failures);
        }
    }
    println!(
        "\nSwitch time: from the reload signal (or the kill) to the first answer from the new \
         generation (or process); it includes the {delay} start-up delay."
    );

    eprintln!("supervisor costs");
    let overhead: Vec<(usize, Vec<Duration>)> = [1, 16]
        .into_iter()
        .map(|n| (n, reload_overhead(n, 10)))
        .collect();
    let (rss, wakeups) = at_rest(o.workers);
    println!("\n### Supervisor costs\n");
    println!("| measure | value |");
    println!("|---|---:|");
    for (n, samples) in &overhead {
        println!(
            "| reload overhead, {n} worker{} (`--ready immediate`, SIGHUP handled → generation serving), median / max of {} | {} / {} |",
            if *n == 1 { "" } else { "s" },
            samples.len(),
            ms(median(samples)),
            ms(samples.iter().max().copied())
        );
    }
    println!("| primary RSS at rest ({} workers) | {} |", o.workers, rss);
    println!("| primary wake-ups per second at rest (context switches over 5 s) | {wakeups} |");
    println!("| shell worker RSS | n/a (no `--admin` in this run) |");
    ExitCode::SUCCESS
}

/// One line of the main table.
struct Row {
    name: String,
    requests: u64,
    failed: u64,
    failures: String,
    req_per_s: f64,
    steady: (Option<Duration>, Option<Duration>),
    during: (Option<Duration>, Option<Duration>),
    pause: Option<Duration>,
    switch: Vec<Duration>,
}

impl Row {
    fn new(name: &str, report: &LoadReport, reloads: &[Instant], switch: Vec<Duration>) -> Row {
        let failures = report
            .failures()
            .iter()
            .map(|(kind, count, _)| format!("{kind} {count}"))
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
            pause: reloaded.then(|| report.longest_gap_after(reloads, WINDOW)),
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
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
            self.name,
            self.requests,
            self.failed,
            self.req_per_s,
            ms(self.steady.0),
            ms(self.steady.1),
            ms(self.during.0),
            ms(self.during.1),
            ms(self.pause),
            switch
        )
    }
}

fn ms(d: Option<Duration>) -> String {
    match d {
        None => "—".to_owned(),
        Some(d) if d < Duration::from_millis(10) => format!("{:.2} ms", d.as_secs_f64() * 1e3),
        Some(d) => format!("{:.0} ms", d.as_secs_f64() * 1e3),
    }
}

fn median(samples: &[Duration]) -> Option<Duration> {
    let mut s = samples.to_vec();
    s.sort_unstable();
    s.get(s.len() / 2).copied()
}

/// A free port on 127.0.0.1 (bound, read, released; fine on a machine without port races).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
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
    sup.signal(libc::SIGTERM);
    sup.wait_exit(Duration::from_secs(60));
    Row::new("hello under reloadsup", &report, &reloads, switch)
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

/// Milliseconds since midnight from a log line's leading `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn log_millis(line: &str) -> Option<u64> {
    let time = line.split_whitespace().next()?.split_once('T')?.1;
    let time = time.trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: u64 = parts.next()?.parse().ok()?;
    let m: u64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some((h * 3600 + m * 60) * 1000 + (s * 1000.0).round() as u64)
}

/// SIGHUP handled → `generation N is serving`, from the log's millisecond timestamps, for
/// `reloads` reloads of `workers` workers that are ready at once.
fn reload_overhead(workers: usize, reloads: u32) -> Vec<Duration> {
    let sb = Sandbox::new("bench-overhead");
    let mut sup = Run::hello(&[])
        .args(["-n", &workers.to_string(), "--ready", "immediate"])
        .env("RUST_LOG", "info")
        .start(&sb);
    sup.addr();
    sup.wait_workers(workers);
    let mut samples = Vec::new();
    for generation in 2..=reloads + 1 {
        let n = sup.count_in_log("SIGHUP: reloading") + 1;
        if let Err(reason) = sup.reload(generation) {
            eprintln!("reload to generation {generation} failed: {reason}");
            continue;
        }
        let hup = sup.wait_for_nth_log("SIGHUP: reloading", n, DEADLINE);
        let serving = sup.wait_for_log(&format!("generation {generation} is serving"), DEADLINE);
        if let (Some(a), Some(b)) = (log_millis(&hup), log_millis(&serving)) {
            samples.push(Duration::from_millis(b.saturating_sub(a)));
        }
        // Let the old generation drain so each sample starts from rest.
        sup.wait_workers(workers);
    }
    sup.signal(libc::SIGTERM);
    sup.wait_exit(Duration::from_secs(60));
    samples
}

/// The primary's RSS and its wake-ups per second while nothing happens.
fn at_rest(workers: usize) -> (String, String) {
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
    let rss = proc::status_kb(pid, "VmRSS").map_or("?".to_owned(), |kb| format!("{kb} kB"));
    let wakeups = match (before, after) {
        (Some(b), Some(a)) => format!("{:.1}", (a - b) as f64 / span.as_secs_f64()),
        _ => "?".to_owned(),
    };
    sup.signal(libc::SIGTERM);
    sup.wait_exit(Duration::from_secs(60));
    (rss, wakeups)
}
