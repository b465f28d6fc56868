//! A load generator for the `hello` protocol and the report it produces.
//!
//! Each client thread loops: a new TCP connection, `GET / HTTP/1.1` with `Connection: close`,
//! read to EOF, check the answer is exactly `200 OK` with the body
//! `pid=<pid> generation=<gen> worker=<slot>\n` and a matching `Content-Length`. Every request is
//! classified; answers are kept as small fixed-size records (16 bytes, so a million requests cost
//! 16 MB), failures as counts with a few example messages.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long one request may take (connect, write, read to EOF) before it counts as a timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Example messages kept per failure kind.
const EXAMPLES: usize = 5;

/// What identifies the worker that answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    pub pid: u32,
    pub generation: u32,
    pub worker: u32,
}

/// Why a request did not get a correct answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    /// The connection was refused.
    Refused,
    /// The connection was reset (or aborted, or the pipe broke).
    Reset,
    /// Connect, write or read took longer than the request timeout.
    Timeout,
    /// EOF before the end of the headers or before `Content-Length` bytes of body.
    Short,
    /// A complete answer that is not `200` with the expected body.
    Wrong,
    /// Any other I/O error.
    Other(io::ErrorKind),
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureKind::Other(kind) => write!(f, "other ({kind:?})"),
            kind => write!(f, "{}", format!("{kind:?}").to_lowercase()),
        }
    }
}

fn classify(e: &io::Error) -> FailureKind {
    use io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => FailureKind::Refused,
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => FailureKind::Reset,
        K::TimedOut | K::WouldBlock => FailureKind::Timeout,
        K::UnexpectedEof => FailureKind::Short,
        kind => FailureKind::Other(kind),
    }
}

/// One `GET path` over a fresh connection, with `timeout` for each step.
pub fn request(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<Answer, (FailureKind, String)> {
    request_traced(addr, path, timeout, &mut None)
}

/// Like [`request`], and stores the client's local port in `port` as soon as the connection is
/// up, so that a failure can be attributed to the worker that held the other end (the chaos
/// run matches it against the sockets of the workers it killed).
pub fn request_traced(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    port: &mut Option<u16>,
) -> Result<Answer, (FailureKind, String)> {
    let io_err = |what: &str, e: io::Error| (classify(&e), format!("{what}: {e}"));
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| io_err("connect", e))?;
    *port = stream.local_addr().ok().map(|a| a.port());
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| io_err("setsockopt", e))?;
    let _ = stream.set_nodelay(true);
    let head = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    stream
        .write_all(head.as_bytes())
        .map_err(|e| io_err("write", e))?;
    let mut buf = Vec::with_capacity(256);
    if let Err(e) = stream.read_to_end(&mut buf) {
        return Err(io_err(&format!("read after {} bytes", buf.len()), e));
    }
    parse(&buf)
}

/// Checks a complete answer (everything up to EOF).
fn parse(buf: &[u8]) -> Result<Answer, (FailureKind, String)> {
    let shown = || String::from_utf8_lossy(&buf[..buf.len().min(200)]).into_owned();
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err((
            FailureKind::Short,
            format!("EOF before the end of the headers: {:?}", shown()),
        ));
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let body = &buf[end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if !(status.starts_with("HTTP/1.1 200 ") || status == "HTTP/1.1 200") {
        return Err((FailureKind::Wrong, format!("status line {status:?}")));
    }
    let length = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
    });
    let Some(Some(length)) = length else {
        return Err((
            FailureKind::Wrong,
            format!("no valid Content-Length in {head:?}"),
        ));
    };
    if body.len() < length {
        return Err((
            FailureKind::Short,
            format!("{} of {length} body bytes: {:?}", body.len(), shown()),
        ));
    }
    if body.len() > length {
        return Err((
            FailureKind::Wrong,
            format!("{} body bytes, Content-Length {length}", body.len()),
        ));
    }
    parse_body(body).ok_or_else(|| {
        (
            FailureKind::Wrong,
            format!("unexpected body {:?}", String::from_utf8_lossy(body)),
        )
    })
}

/// `pid=(\d+) generation=(\d+) worker=(\d+)\n`, exactly.
pub fn parse_body(body: &[u8]) -> Option<Answer> {
    let text = std::str::from_utf8(body).ok()?.strip_suffix('\n')?;
    let mut parts = text.split(' ');
    let mut field = |name: &str| -> Option<u32> {
        let value = parts.next()?.strip_prefix(name)?.strip_prefix('=')?;
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        value.parse().ok()
    };
    let answer = Answer {
        pid: field("pid")?,
        generation: field("generation")?,
        worker: field("worker")?,
    };
    parts.next().is_none().then_some(answer)
}

/// When a load stops by itself.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_duration: Duration,
    pub max_requests: u64,
}

impl Limits {
    /// Bounded by time only.
    pub fn duration(max_duration: Duration) -> Limits {
        Limits {
            max_duration,
            max_requests: u64::MAX,
        }
    }
}

impl Default for Limits {
    /// Two minutes at most: a safety net for loads that are meant to be stopped explicitly.
    fn default() -> Limits {
        Limits {
            max_duration: Duration::from_secs(120),
            max_requests: u64::MAX,
        }
    }
}

/// One correct answer, times in microseconds since the load started.
#[derive(Clone, Copy, Debug)]
struct Record {
    started_us: u32,
    finished_us: u32,
    pid: u32,
    generation: u32,
}

#[derive(Default)]
struct Failures {
    by_kind: HashMap<FailureKind, (u64, Vec<String>)>,
}

struct Shared {
    start: Instant,
    limits: Limits,
    stop: AtomicBool,
    issued: AtomicU64,
    answered: AtomicU64,
    failed: AtomicU64,
    max_generation: AtomicU32,
    failures: Mutex<Failures>,
}

impl Shared {
    fn micros(&self, t: Instant) -> u32 {
        u32::try_from(t.saturating_duration_since(self.start).as_micros()).unwrap_or(u32::MAX)
    }

    fn should_stop(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
            || self.start.elapsed() >= self.limits.max_duration
            || self.issued.fetch_add(1, Ordering::Relaxed) >= self.limits.max_requests
    }
}

/// A running load: `clients` threads hammering one address.
pub struct Load {
    shared: Arc<Shared>,
    clients: usize,
    threads: Vec<JoinHandle<Vec<Record>>>,
}

impl Load {
    /// Starts `clients` threads sending `GET /` to `addr` until `limits` or [`Load::stop`].
    pub fn start(addr: SocketAddr, clients: usize, limits: Limits) -> Load {
        Load::start_path(addr, "/", clients, limits)
    }

    /// Like [`Load::start`] with another request path (e.g. `/slow?ms=50`).
    pub fn start_path(addr: SocketAddr, path: &str, clients: usize, limits: Limits) -> Load {
        let shared = Arc::new(Shared {
            start: Instant::now(),
            limits,
            stop: AtomicBool::new(false),
            issued: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            max_generation: AtomicU32::new(0),
            failures: Mutex::new(Failures::default()),
        });
        let threads = (0..clients)
            .map(|i| {
                let shared = Arc::clone(&shared);
                let path = path.to_owned();
                thread::Builder::new()
                    .name(format!("load-{i}"))
                    .spawn(move || client(&shared, addr, &path))
                    .expect("spawning a load thread")
            })
            .collect();
        Load {
            shared,
            clients,
            threads,
        }
    }

    pub fn started_at(&self) -> Instant {
        self.shared.start
    }

    /// Correct answers so far.
    pub fn answered(&self) -> u64 {
        self.shared.answered.load(Ordering::Relaxed)
    }

    /// Failed requests so far.
    pub fn failed(&self) -> u64 {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// The highest generation that answered so far.
    pub fn max_generation(&self) -> u32 {
        self.shared.max_generation.load(Ordering::Relaxed)
    }

    /// Waits until `n` more answers than now have arrived.
    pub fn wait_for_more_answers(&self, n: u64, timeout: Duration) {
        let target = self.answered() + n;
        crate::wait_until(timeout, &format!("{n} more answers from the load"), || {
            self.answered() >= target
        });
    }

    /// Waits until some worker of `generation` (or a later one) has answered.
    pub fn wait_for_generation(&self, generation: u32, timeout: Duration) {
        crate::wait_until(
            timeout,
            &format!("an answer from generation {generation}"),
            || self.max_generation() >= generation,
        );
    }

    /// Stops the clients after their current request and returns the report.
    pub fn stop(mut self) -> LoadReport {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.collect()
    }

    /// Waits for the limits to end the load and returns the report.
    pub fn finish(mut self) -> LoadReport {
        self.collect()
    }

    fn collect(&mut self) -> LoadReport {
        let mut records = Vec::new();
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(r) => records.extend(r),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        let end = Instant::now();
        records.sort_unstable_by_key(|r| r.finished_us);
        let failures = std::mem::take(
            &mut self
                .shared
                .failures
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .by_kind,
        );
        let mut failures: Vec<(FailureKind, u64, Vec<String>)> = failures
            .into_iter()
            .map(|(kind, (count, examples))| (kind, count, examples))
            .collect();
        failures.sort_unstable_by_key(|f| f.0);
        LoadReport {
            start: self.shared.start,
            end,
            clients: self.clients,
            records,
            failures,
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn client(shared: &Shared, addr: SocketAddr, path: &str) -> Vec<Record> {
    let mut records = Vec::new();
    while !shared.should_stop() {
        let started = Instant::now();
        match request(addr, path, REQUEST_TIMEOUT) {
            Ok(answer) => {
                let finished = Instant::now();
                records.push(Record {
                    started_us: shared.micros(started),
                    finished_us: shared.micros(finished),
                    pid: answer.pid,
                    generation: answer.generation,
                });
                shared
                    .max_generation
                    .fetch_max(answer.generation, Ordering::Relaxed);
                shared.answered.fetch_add(1, Ordering::Relaxed);
            }
            Err((kind, message)) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                let at = started.saturating_duration_since(shared.start);
                let mut failures = shared
                    .failures
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let entry = failures.by_kind.entry(kind).or_default();
                entry.0 += 1;
                if entry.1.len() < EXAMPLES {
                    entry.1.push(format!("at {at:?}: {message}"));
                }
            }
        }
    }
    records
}

/// What a finished load saw.
pub struct LoadReport {
    pub start: Instant,
    pub end: Instant,
    pub clients: usize,
    /// Correct answers sorted by completion time.
    records: Vec<Record>,
    failures: Vec<(FailureKind, u64, Vec<String>)>,
}

impl LoadReport {
    fn micros(&self, t: Instant) -> u32 {
        u32::try_from(t.saturating_duration_since(self.start).as_micros()).unwrap_or(u32::MAX)
    }

    fn instant(&self, us: u32) -> Instant {
        self.start + Duration::from_micros(u64::from(us))
    }

    pub fn ok(&self) -> u64 {
        self.records.len() as u64
    }

    pub fn failed(&self) -> u64 {
        self.failures.iter().map(|f| f.1).sum()
    }

    pub fn total(&self) -> u64 {
        self.ok() + self.failed()
    }

    /// Failures by kind: (kind, count, a few example messages).
    pub fn failures(&self) -> &[(FailureKind, u64, Vec<String>)] {
        &self.failures
    }

    pub fn failures_of(&self, kind: FailureKind) -> u64 {
        self.failures
            .iter()
            .filter(|f| f.0 == kind)
            .map(|f| f.1)
            .sum()
    }

    /// A one-paragraph description for assertion messages.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} requests, {} ok, {} failed, {:.0} req/s over {:?}, generations {:?}",
            self.total(),
            self.ok(),
            self.failed(),
            self.req_per_s(),
            self.end - self.start,
            self.generations()
        );
        for (kind, count, examples) in &self.failures {
            s.push_str(&format!("\n  {kind}: {count}"));
            for e in examples {
                s.push_str(&format!("\n    {e}"));
            }
        }
        s
    }

    /// Panics with the summary unless every request got a correct answer.
    pub fn assert_no_failures(&self) {
        assert!(
            self.ok() > 0,
            "the load got no answer at all: {}",
            self.summary()
        );
        assert_eq!(self.failed(), 0, "failed requests: {}", self.summary());
    }

    pub fn generations(&self) -> BTreeSet<u32> {
        self.records.iter().map(|r| r.generation).collect()
    }

    pub fn pids(&self) -> BTreeSet<u32> {
        self.records.iter().map(|r| r.pid).collect()
    }

    pub fn pids_by_generation(&self) -> BTreeMap<u32, BTreeSet<u32>> {
        let mut map: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        for r in &self.records {
            map.entry(r.generation).or_default().insert(r.pid);
        }
        map
    }

    /// Correct answers by the pid that gave them: (its generation, how many).
    pub fn answers_by_pid(&self) -> BTreeMap<u32, (u32, u64)> {
        let mut map: BTreeMap<u32, (u32, u64)> = BTreeMap::new();
        for r in &self.records {
            map.entry(r.pid).or_insert((r.generation, 0)).1 += 1;
        }
        map
    }

    pub fn answers_by_generation(&self) -> BTreeMap<u32, u64> {
        let mut map = BTreeMap::new();
        for r in &self.records {
            *map.entry(r.generation).or_default() += 1;
        }
        map
    }

    /// Correct answers per second over the whole load.
    pub fn req_per_s(&self) -> f64 {
        let secs = (self.end - self.start).as_secs_f64();
        if secs > 0.0 {
            self.ok() as f64 / secs
        } else {
            0.0
        }
    }

    /// The `q` quantile (0.5, 0.99) of the latency of correct answers.
    pub fn latency(&self, q: f64) -> Option<Duration> {
        quantile(self.records.iter().map(latency_us).collect(), q)
    }

    /// The `q` quantile of the latency of correct answers to requests that started within
    /// `window` after any of `instants`.
    pub fn latency_after(
        &self,
        q: f64,
        instants: &[Instant],
        window: Duration,
    ) -> Option<Duration> {
        self.latency_where(q, instants, window, true)
    }

    /// The `q` quantile of the latency of requests that started outside every window: the
    /// steady state.
    pub fn latency_outside(
        &self,
        q: f64,
        instants: &[Instant],
        window: Duration,
    ) -> Option<Duration> {
        self.latency_where(q, instants, window, false)
    }

    fn latency_where(
        &self,
        q: f64,
        instants: &[Instant],
        window: Duration,
        inside_windows: bool,
    ) -> Option<Duration> {
        let windows = self.windows(instants, window);
        let inside = |us: u32| windows.iter().any(|&(a, b)| a <= us && us <= b);
        quantile(
            self.records
                .iter()
                .filter(|r| inside(r.started_us) == inside_windows)
                .map(latency_us)
                .collect(),
            q,
        )
    }

    /// The longest time between two consecutive correct answers.
    pub fn longest_gap(&self) -> Duration {
        self.gaps()
            .map(|(_, _, gap)| gap)
            .max()
            .map_or(Duration::ZERO, |us| Duration::from_micros(u64::from(us)))
    }

    /// The longest time between two consecutive correct answers where the pause overlaps
    /// `window` after any of `instants`.
    pub fn longest_gap_after(&self, instants: &[Instant], window: Duration) -> Duration {
        let windows = self.windows(instants, window);
        self.gaps()
            .filter(|&(a, b, _)| windows.iter().any(|&(ws, we)| b >= ws && a <= we))
            .map(|(_, _, gap)| gap)
            .max()
            .map_or(Duration::ZERO, |us| Duration::from_micros(u64::from(us)))
    }

    /// The longest time between two consecutive correct answers where the pause overlaps no
    /// `window` after any of `instants`: the steady-state pause.
    pub fn longest_gap_outside(&self, instants: &[Instant], window: Duration) -> Duration {
        let windows = self.windows(instants, window);
        self.gaps()
            .filter(|&(a, b, _)| !windows.iter().any(|&(ws, we)| b >= ws && a <= we))
            .map(|(_, _, gap)| gap)
            .max()
            .map_or(Duration::ZERO, |us| Duration::from_micros(u64::from(us)))
    }

    /// For each instant, the longest pause overlapping `window` after it.
    pub fn gaps_after(&self, instants: &[Instant], window: Duration) -> Vec<Duration> {
        instants
            .iter()
            .map(|&t| self.longest_gap_after(&[t], window))
            .collect()
    }

    /// When the first correct answer from `generation` arrived.
    pub fn first_answer_from_generation(&self, generation: u32) -> Option<Instant> {
        self.records
            .iter()
            .find(|r| r.generation == generation)
            .map(|r| self.instant(r.finished_us))
    }

    /// When the first correct answer from a generation greater than or equal to `generation`
    /// arrived.
    pub fn first_answer_from_generation_at_least(&self, generation: u32) -> Option<Instant> {
        self.records
            .iter()
            .find(|r| r.generation >= generation)
            .map(|r| self.instant(r.finished_us))
    }

    /// When the first correct answer from process `pid` arrived.
    pub fn first_answer_from_pid(&self, pid: u32) -> Option<Instant> {
        self.records
            .iter()
            .find(|r| r.pid == pid)
            .map(|r| self.instant(r.finished_us))
    }

    fn windows(&self, instants: &[Instant], window: Duration) -> Vec<(u32, u32)> {
        instants
            .iter()
            .map(|&t| (self.micros(t), self.micros(t + window)))
            .collect()
    }

    /// (previous finish, next finish, gap) for consecutive answers, in microseconds.
    fn gaps(&self) -> impl Iterator<Item = (u32, u32, u32)> + '_ {
        self.records.windows(2).map(|w| {
            (
                w[0].finished_us,
                w[1].finished_us,
                w[1].finished_us - w[0].finished_us,
            )
        })
    }
}

fn latency_us(r: &Record) -> u32 {
    r.finished_us.saturating_sub(r.started_us)
}

fn quantile(mut values: Vec<u32>, q: f64) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(Duration::from_micros(u64::from(values[rank - 1])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_correct_answer() {
        let body = "pid=12 generation=3 worker=1\n";
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(
            parse(answer.as_bytes()),
            Ok(Answer {
                pid: 12,
                generation: 3,
                worker: 1
            })
        );
    }

    #[test]
    fn classifies_bad_answers() {
        let kind = |s: &str| parse(s.as_bytes()).map_err(|e| e.0);
        assert_eq!(kind("HTTP/1.1 200 OK\r\n"), Err(FailureKind::Short));
        assert_eq!(
            kind("HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\npid=1 generation=1 worker=0\n"),
            Err(FailureKind::Short)
        );
        assert_eq!(
            kind("HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"),
            Err(FailureKind::Wrong)
        );
        assert_eq!(
            kind("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
            Err(FailureKind::Wrong)
        );
        assert_eq!(
            kind("HTTP/1.1 200 OK\r\n\r\npid=1 generation=1 worker=0\n"),
            Err(FailureKind::Wrong)
        );
    }

    #[test]
    fn body_must_match_exactly() {
        assert!(parse_body(b"pid=1 generation=2 worker=3\n").is_some());
        assert!(parse_body(b"pid=1 generation=2 worker=3").is_none());
        assert!(parse_body(b"pid=1 generation=2 worker=3 x\n").is_none());
        assert!(parse_body(b"pid=-1 generation=2 worker=3\n").is_none());
        assert!(parse_body(b"pid= generation=2 worker=3\n").is_none());
        assert!(parse_body(b"pid=1  generation=2 worker=3\n").is_none());
    }

    #[test]
    fn gaps_and_quantiles() {
        let rec = |s: u32, f: u32, g: u32| Record {
            started_us: s,
            finished_us: f,
            pid: 1,
            generation: g,
        };
        let start = Instant::now();
        let report = LoadReport {
            start,
            end: start + Duration::from_secs(1),
            clients: 1,
            records: vec![
                rec(0, 10, 1),
                rec(10, 20, 1),
                rec(20, 500, 2),
                rec(500, 510, 2),
            ],
            failures: Vec::new(),
        };
        assert_eq!(report.longest_gap(), Duration::from_micros(480));
        let after = |us| [start + Duration::from_micros(us)];
        assert_eq!(
            report.longest_gap_after(&after(15), Duration::from_micros(5)),
            Duration::from_micros(480)
        );
        assert_eq!(
            report.longest_gap_after(&after(501), Duration::from_micros(5)),
            Duration::from_micros(10)
        );
        assert_eq!(report.latency(0.5), Some(Duration::from_micros(10)));
        assert_eq!(report.latency(0.99), Some(Duration::from_micros(480)));
        assert_eq!(
            report.first_answer_from_generation(2),
            Some(start + Duration::from_micros(500))
        );
        assert_eq!(report.generations(), BTreeSet::from([1, 2]));
    }
}
