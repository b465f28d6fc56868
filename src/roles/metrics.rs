//! The metrics worker role (`__metrics`, with `--metrics HOST:PORT`): serves `GET /metrics` in
//! the Prometheus text exposition format (version 0.0.4) on the listener the primary bound.
//!
//! It answers HTTP itself, with plain std and a thread per connection, so that a slow or
//! hostile scraper costs this process at most one of [`MAX_CONNECTIONS`] threads for at most
//! [`REQUEST_DEADLINE`], and never touches the primary; one source (an IPv4 address or an IPv6
//! /64) holds at most [`PER_SOURCE`] of them, so a host that opens connections and sends
//! nothing cannot refuse every other scraper. A request is read up to
//! [`MAX_REQUEST`] bytes, then answered and closed. For each scrape it asks the primary for its
//! figures on its link (one ask at a time, with a timeout) and renders them here; the primary
//! only answers a small message. It dies with the primary (`PR_SET_PDEATHSIG`) and exits when
//! its link closes. With `--user`, it runs as the workers' user (`__metrics --uid U --gid G`),
//! switched to before its first thread, and undumpable.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reloadsup_protocol::{
    self as proto, Figures, MetricsMessage, MetricsSpec, PROTOCOL_VERSION, RELOAD_BUCKETS_MS,
};

use crate::error::lower;
use crate::sys;

/// Connections served at once; one more is closed at once.
pub(crate) const MAX_CONNECTIONS: usize = 16;
/// Connections one source may have served at once; one more is refused like one over
/// [`MAX_CONNECTIONS`].
pub(crate) const PER_SOURCE: usize = 4;
/// The most bytes of a request (its line and headers) read.
pub(crate) const MAX_REQUEST: usize = 8 * 1024;
/// How long a client has to send its request, and to read the answer.
pub(crate) const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// How long a closing connection's unread bytes are drained (see [`close_gently`]).
const LINGER: Duration = Duration::from_millis(500);
/// The same for a refused connection, shorter: the refusing thread serves one at a time, and a
/// client that sends nothing and never closes must not hold up the next refusal for long.
const REFUSE_LINGER: Duration = Duration::from_millis(100);
/// Refused connections waiting for the refusing thread; more are refused on the spot.
const REFUSED_QUEUE: usize = 32;
/// How long the primary has to answer an ask.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs the metrics role; `args` are the words after `__metrics`: `--uid U --gid G` when it
/// must switch to the workers' user, or nothing.
pub(crate) fn run(args: &[OsString]) -> u8 {
    super::run_as_workers("metrics", args, serve)
}

struct Shared {
    spec: MetricsSpec,
    link: Mutex<OwnedFd>,
    slots: Mutex<Slots>,
}

/// Where a connection comes from, as far as the limits are concerned: one host usually owns
/// a whole IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(u32),
    V6(u64),
}

impl Source {
    fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::V4(u32::from(v4)),
            IpAddr::V6(v6) => Source::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

/// How long a connection may take to send its request before, with every slot held, a
/// newcomer of a source that holds fewer may take its slot (issue 18, item 7). A scraper
/// sends its request at once.
const EVICTABLE_AFTER: Duration = Duration::from_millis(500);

/// One connection being served.
#[derive(Debug)]
struct Held {
    source: Source,
    since: Instant,
    /// A copy of the connection while its request is still read, so that a newcomer can end
    /// it; `None` once it is being answered.
    reading: Option<TcpStream>,
}

/// The connections being served, in all and by source.
#[derive(Debug, Default)]
struct Slots {
    total: usize,
    by_source: HashMap<Source, usize>,
    held: HashMap<u64, Held>,
    next: u64,
}

impl Slots {
    /// Takes a slot for a connection from `source` (`reading` a copy of it), unless that would
    /// pass a limit. With every slot held, the slowest connection still sending its request,
    /// for longer than [`EVICTABLE_AFTER`], of a source that holds at least two more than this
    /// one's, is ended to make room: four hosts that hold their connections open cannot make
    /// every other scrape a 503. Returns the slot's id.
    fn take(&mut self, source: Source, reading: Option<TcpStream>, now: Instant) -> Option<u64> {
        let held = self.by_source.get(&source).copied().unwrap_or(0);
        if held >= PER_SOURCE {
            return None;
        }
        if self.total >= MAX_CONNECTIONS {
            let count = |s: &Source| self.by_source.get(s).copied().unwrap_or(0);
            let victim = self
                .held
                .iter()
                .filter(|(_, h)| h.reading.is_some())
                .filter(|(_, h)| now.saturating_duration_since(h.since) >= EVICTABLE_AFTER)
                .filter(|(_, h)| count(&h.source) > held + 1)
                .max_by_key(|(id, h)| (count(&h.source), std::cmp::Reverse((h.since, **id))))
                .map(|(&id, _)| id)?;
            if let Some(Held {
                reading: Some(stream),
                ..
            }) = self.held.get(&victim)
            {
                // Its thread reads end-of-file and finishes; its give() finds nothing.
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
            self.give(victim);
        }
        let id = self.next;
        self.next += 1;
        self.total += 1;
        self.by_source.insert(source, held + 1);
        self.held.insert(
            id,
            Held {
                source,
                since: now,
                reading,
            },
        );
        Some(id)
    }

    /// Connection `id` sent its request: it is answered now, never ended for a newcomer.
    fn read(&mut self, id: u64) {
        if let Some(h) = self.held.get_mut(&id) {
            h.reading = None;
        }
    }

    /// Connection `id` ended (or was ended for a newcomer: then nothing is left to give).
    fn give(&mut self, id: u64) {
        let Some(h) = self.held.remove(&id) else {
            return;
        };
        self.total -= 1;
        if let Some(n) = self.by_source.get_mut(&h.source) {
            *n -= 1;
            if *n == 0 {
                self.by_source.remove(&h.source);
            }
        }
    }
}

impl Shared {
    fn take(&self, source: Source, stream: &TcpStream) -> Option<u64> {
        let copy = stream.try_clone().ok();
        self.slots
            .lock()
            .ok()
            .and_then(|mut s| s.take(source, copy, Instant::now()))
    }

    fn read(&self, id: u64) {
        if let Ok(mut s) = self.slots.lock() {
            s.read(id);
        }
    }

    fn give(&self, id: u64) {
        if let Ok(mut s) = self.slots.lock() {
            s.give(id);
        }
    }
}

fn serve(drop_to: Option<(u32, u32)>) -> io::Result<()> {
    let link = sys::take_role_link()?;
    let mut buf = vec![0u8; 4096];
    let (n, mut fds) = sys::recv_with_fds(link.as_fd(), &mut buf, 1)?;
    if n == 0 {
        return Ok(());
    }
    let spec: MetricsSpec = proto::decode(&buf[..n]).map_err(io::Error::other)?;
    if spec.version != PROTOCOL_VERSION {
        return Err(io::Error::other(proto::Error::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: spec.version,
        }));
    }
    if let Some((uid, gid)) = drop_to {
        // It parses what any scraper sends: not as root. Before any thread starts, so that
        // every thread has the new credentials; it needs nothing but the fds it holds.
        sys::drop_privileges(Some(uid), Some(gid)).map_err(io::Error::other)?;
        // A worker of the same uid must not ptrace it and use its link.
        sys::set_undumpable()?;
    }
    // After the drop: a change of credentials clears the parent-death signal.
    sys::die_with_parent(spec.primary_pid)?;
    if fds.len() != 1 {
        return Err(io::Error::other(proto::Error::FdCount {
            expected: 1,
            received: fds.len(),
        }));
    }
    let listener = TcpListener::from(fds.remove(0));
    // The primary's copy may be non-blocking; this process blocks in accept.
    listener.set_nonblocking(false)?;
    let (refused, queue) = std::sync::mpsc::sync_channel::<TcpStream>(REFUSED_QUEUE);
    std::thread::Builder::new()
        .name("refuse".into())
        .spawn(move || queue.into_iter().for_each(busy))?;
    let shared = Arc::new(Shared {
        spec,
        link: Mutex::new(link),
        slots: Mutex::new(Slots::default()),
    });
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A client that reset before it was accepted, or no fd left: serve the next one.
            Err(e) => {
                eprintln!("reloadsup: metrics: accept: {}", lower(&e));
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let source = Source::of(peer.ip());
        let Some(id) = shared.take(source, &stream) else {
            if let Err(std::sync::mpsc::TrySendError::Full(stream)) = refused.try_send(stream) {
                refuse_now(stream);
            }
            continue;
        };
        let s = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("scrape".into())
            .spawn(move || {
                let _ = answer(&s, id, stream);
                s.give(id);
            });
        if spawned.is_err() {
            shared.give(id);
        }
    }
}

/// Over the connection limit, on the refusing thread: a 503, then a gentle close, each bounded
/// by [`REFUSE_LINGER`], so a refused client reads its answer instead of a reset.
fn busy(stream: TcpStream) {
    let _ = stream.set_write_timeout(Some(REFUSE_LINGER));
    if (&stream).write_all(&too_many()).is_ok() {
        close_gently(stream, Instant::now() + REFUSE_LINGER);
    }
}

/// Over the connection limit with the refusing thread's queue full too: a 503 that never waits,
/// after reading whatever of the request has already arrived (closing a socket with unread
/// bytes resets it, and the reset discards the answer).
fn refuse_now(stream: TcpStream) {
    let _ = stream.set_nonblocking(true);
    let mut buf = [0u8; 1024];
    let mut left = MAX_REQUEST;
    while left > 0 {
        match (&stream).read(&mut buf) {
            Ok(n) if n > 0 => left = left.saturating_sub(n),
            _ => break,
        }
    }
    let _ = (&stream).write_all(&too_many());
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

fn too_many() -> Vec<u8> {
    response("503 Service Unavailable", "too many scrapes\n")
}

/// Ends a connection whose answer is written: sends the end of stream, then reads what the
/// client still sends (at most `8 * MAX_REQUEST` bytes, until `until`) before the close, since a
/// close with unread bytes would reset the connection and could discard the answer in flight.
fn close_gently(stream: TcpStream, until: Instant) {
    if stream.shutdown(std::net::Shutdown::Write).is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    let mut left = 8 * MAX_REQUEST;
    while left > 0 {
        let wait = until.saturating_duration_since(Instant::now());
        if wait.is_zero() || stream.set_read_timeout(Some(wait)).is_err() {
            return;
        }
        match (&stream).read(&mut buf) {
            Ok(0) => return,
            Ok(n) => left = left.saturating_sub(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn answer(shared: &Shared, id: u64, mut stream: TcpStream) -> io::Result<()> {
    stream.set_write_timeout(Some(REQUEST_DEADLINE))?;
    let until = Instant::now() + REQUEST_DEADLINE;
    let head = read_head(&mut stream, until)?;
    shared.read(id);
    let reply = match head {
        Some(head) => reply(shared, &head),
        None => response("431 Request Header Fields Too Large", "request too large\n"),
    };
    stream.write_all(&reply)?;
    close_gently(stream, until.min(Instant::now() + LINGER));
    Ok(())
}

/// The answer to one request, given its line and headers.
fn reply(shared: &Shared, head: &str) -> Vec<u8> {
    let line = head.lines().next().unwrap_or_default();
    let mut words = line.split(' ');
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if path != "/metrics" {
        response("404 Not Found", "only /metrics is served here\n")
    } else if method != "GET" && method != "HEAD" {
        response("405 Method Not Allowed", "GET /metrics\n")
    } else {
        match ask(shared) {
            Ok(f) => {
                let mut r = response("200 OK", &render(&shared.spec.name, &f));
                if method == "HEAD" {
                    if let Some(end) = r.windows(4).position(|w| w == b"\r\n\r\n") {
                        r.truncate(end + 4);
                    }
                }
                r
            }
            Err(e) => response(
                "503 Service Unavailable",
                &format!("no figures from the primary: {}\n", lower(&e)),
            ),
        }
    }
}

/// Reads the request line and headers; `None` if they pass [`MAX_REQUEST`] bytes.
fn read_head(stream: &mut TcpStream, until: Instant) -> io::Result<Option<String>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let n = match stream.read(&mut buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        head.extend_from_slice(&buf[..n]);
        let end = head
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .or_else(|| head.windows(2).position(|w| w == b"\n\n"));
        if let Some(end) = end.filter(|&e| e <= MAX_REQUEST) {
            head.truncate(end);
            return Ok(Some(String::from_utf8_lossy(&head).into_owned()));
        }
        if head.len() > MAX_REQUEST {
            return Ok(None);
        }
    }
}

fn response(status: &str, body: &str) -> Vec<u8> {
    let kind = if status.starts_with("200") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One ask at a time: an answer that came too late for an earlier ask is dropped first.
fn ask(shared: &Shared) -> io::Result<Figures> {
    let link = shared
        .link
        .lock()
        .map_err(|_| io::Error::other("a scrape thread panicked"))?;
    let mut buf = vec![0u8; 4096];
    loop {
        match sys::recv_nowait(link.as_fd(), &mut buf) {
            Ok(0) => gone(),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    let body = proto::encode(&MetricsMessage::Ask).map_err(io::Error::other)?;
    sys::send_nonblocking(link.as_fd(), &body)?;
    let until = Instant::now() + ASK_TIMEOUT;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if !sys::wait_readable(link.as_fd(), Some(left))? {
            return Err(io::Error::other("the primary did not answer in time"));
        }
        match sys::recv_nowait(link.as_fd(), &mut buf) {
            Ok(0) => gone(),
            Ok(n) => {
                return match proto::decode::<MetricsMessage>(&buf[..n]) {
                    Ok(MetricsMessage::Figures(f)) => Ok(f),
                    Ok(MetricsMessage::Ask) => Err(io::Error::other("unexpected message")),
                    Err(e) => Err(io::Error::other(e)),
                }
            }
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The primary closed the link: it replaced this worker, or it is exiting.
fn gone() -> ! {
    std::process::exit(0)
}

/// A label value, escaped as the text format wants.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Nanoseconds as decimal seconds, exactly (a float would round the start time).
fn seconds(ns: u64) -> String {
    let (whole, frac) = (ns / 1_000_000_000, ns % 1_000_000_000);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:09}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// The figures in the Prometheus text exposition format.
pub(crate) fn render(name: &str, f: &Figures) -> String {
    let mut out = String::with_capacity(4096);
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
    };
    family(
        &mut out,
        "reloadsup_info",
        "gauge",
        "The instance and version of reloadsup; always 1.",
    );
    let _ = writeln!(
        out,
        "reloadsup_info{{name=\"{}\",version=\"{}\"}} 1",
        label(name),
        env!("CARGO_PKG_VERSION")
    );
    family(
        &mut out,
        "reloadsup_reloads_total",
        "counter",
        "Reloads by outcome: succeeded, rolled_back (the new generation failed), refused (the re-read config was refused), cancelled (by a shutdown).",
    );
    for (outcome, n) in [
        ("succeeded", f.reloads_succeeded),
        ("rolled_back", f.reloads_rolled_back),
        ("refused", f.reloads_refused),
        ("cancelled", f.reloads_cancelled),
    ] {
        let _ = writeln!(out, "reloadsup_reloads_total{{outcome=\"{outcome}\"}} {n}");
    }
    family(
        &mut out,
        "reloadsup_reload_duration_seconds",
        "histogram",
        "Time from a new generation's start to the reload's outcome.",
    );
    let mut cumulative = 0u64;
    for (i, bound) in RELOAD_BUCKETS_MS.iter().enumerate() {
        cumulative += f.reload_buckets.get(i).copied().unwrap_or(0);
        let le = *bound as f64 / 1000.0;
        let _ = writeln!(
            out,
            "reloadsup_reload_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
        );
    }
    cumulative += f
        .reload_buckets
        .get(RELOAD_BUCKETS_MS.len())
        .copied()
        .unwrap_or(0);
    let _ = writeln!(
        out,
        "reloadsup_reload_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
    );
    let _ = writeln!(
        out,
        "reloadsup_reload_duration_seconds_sum {}",
        seconds(f.reload_seconds_sum_ns)
    );
    let _ = writeln!(out, "reloadsup_reload_duration_seconds_count {cumulative}");
    family(
        &mut out,
        "reloadsup_generation",
        "gauge",
        "The generation serving now.",
    );
    let _ = writeln!(out, "reloadsup_generation {}", f.generation);
    family(
        &mut out,
        "reloadsup_target_workers",
        "gauge",
        "Workers per generation asked for.",
    );
    let _ = writeln!(out, "reloadsup_target_workers {}", f.target_workers);
    family(
        &mut out,
        "reloadsup_workers",
        "gauge",
        "Worker processes and slots by state.",
    );
    for (state, n) in [
        ("starting", f.starting),
        ("ready", f.ready),
        ("draining", f.draining),
        ("backoff", f.backoff),
        ("dead", f.dead),
        ("stopped", f.stopped),
    ] {
        let _ = writeln!(out, "reloadsup_workers{{state=\"{state}\"}} {n}");
    }
    family(
        &mut out,
        "reloadsup_worker_restarts_total",
        "counter",
        "Workers restarted after they died.",
    );
    let _ = writeln!(out, "reloadsup_worker_restarts_total {}", f.worker_restarts);
    family(
        &mut out,
        "reloadsup_upgrades_total",
        "counter",
        "In-place upgrades of reloadsup itself under this pid.",
    );
    let _ = writeln!(out, "reloadsup_upgrades_total {}", f.upgrades);
    family(
        &mut out,
        "reloadsup_console_logins_total",
        "counter",
        "Admin console password checks by result.",
    );
    let _ = writeln!(
        out,
        "reloadsup_console_logins_total{{result=\"ok\"}} {}",
        f.logins_ok
    );
    let _ = writeln!(
        out,
        "reloadsup_console_logins_total{{result=\"failed\"}} {}",
        f.logins_failed
    );
    family(
        &mut out,
        "reloadsup_start_time_seconds",
        "gauge",
        "When the supervisor started, in seconds since the Unix epoch.",
    );
    let _ = writeln!(
        out,
        "reloadsup_start_time_seconds {}",
        seconds(f.start_time_ns)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures() -> Figures {
        let mut buckets = vec![0; RELOAD_BUCKETS_MS.len() + 1];
        buckets[2] = 2;
        buckets[RELOAD_BUCKETS_MS.len()] = 1;
        Figures {
            reloads_succeeded: 2,
            reloads_rolled_back: 1,
            reload_buckets: buckets,
            reload_seconds_sum_ns: 1_500_000_000,
            generation: 3,
            target_workers: 2,
            ready: 2,
            dead: 1,
            worker_restarts: 4,
            upgrades: 1,
            logins_ok: 5,
            logins_failed: 6,
            start_time_ns: 1_700_000_000_250_000_000,
            ..Figures::default()
        }
    }

    #[test]
    fn one_source_holds_at_most_its_share_of_the_slots() {
        let mut slots = Slots::default();
        let t = Instant::now();
        let one = Source::of("192.0.2.1".parse().unwrap());
        // The same host by its IPv4-mapped IPv6 address is the same source.
        let mapped = Source::of("::ffff:192.0.2.1".parse().unwrap());
        assert_eq!(one, mapped);
        let ones: Vec<u64> = (0..PER_SOURCE)
            .map(|_| slots.take(one, None, t).unwrap())
            .collect();
        assert!(
            slots.take(mapped, None, t).is_none(),
            "past its share, a source is refused"
        );
        // Another address, and an IPv6 host of another /64, still get in; one /64 is one source.
        assert!(slots
            .take(Source::of("192.0.2.2".parse().unwrap()), None, t)
            .is_some());
        let a = Source::of("2001:db8:0:1::1".parse().unwrap());
        let b = Source::of("2001:db8:0:1::ffff".parse().unwrap());
        assert_eq!(a, b);
        assert!(slots.take(a, None, t).is_some());
        assert!(slots
            .take(Source::of("2001:db8:0:2::1".parse().unwrap()), None, t)
            .is_some());
        // A slot given back can be taken again.
        slots.give(ones[0]);
        assert!(slots.take(one, None, t).is_some() && slots.take(one, None, t).is_none());
        // The total stays bounded whoever asks (nobody here is evictable: no copy to end).
        let mut n = slots.total;
        let mut ids = Vec::new();
        for i in 0..64u32 {
            if let Some(id) = slots.take(Source::V4(i), None, t) {
                ids.push(id);
                n += 1;
            }
        }
        assert_eq!((n, slots.total), (MAX_CONNECTIONS, MAX_CONNECTIONS));
        for id in ids {
            slots.give(id);
        }
        assert!(slots.by_source.len() <= MAX_CONNECTIONS);
    }

    /// Issue 18, item 7: four hosts that held slow connections made every scrape a 503. With
    /// every slot held, a newcomer of a source holding fewer ends the slowest connection still
    /// sending its request, of the source holding the most; one being answered is never ended.
    #[test]
    fn a_newcomer_ends_the_slowest_reader_of_the_largest_source() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let pair = || {
            let client = TcpStream::connect(addr).unwrap();
            let (server, _) = listener.accept().unwrap();
            (client, server)
        };
        let mut slots = Slots::default();
        let t0 = Instant::now();
        // The serving threads' own ends stay open: only a shutdown ends a connection.
        let (mut clients, mut servers) = (Vec::new(), Vec::new());
        let mut first = None;
        for host in 0..4u32 {
            for k in 0..PER_SOURCE {
                let (client, server) = pair();
                let since = t0 + Duration::from_millis(u64::from(host) * 10 + k as u64);
                let copy = server.try_clone().unwrap();
                let id = slots.take(Source::V4(host), Some(copy), since).unwrap();
                first.get_or_insert(id);
                clients.push(client);
                servers.push(server);
            }
        }
        assert_eq!(slots.total, MAX_CONNECTIONS);
        let newcomer = Source::V4(99);
        // Too soon: a scraper that just connected has not had the time to send its request.
        assert!(slots
            .take(newcomer, None, t0 + Duration::from_millis(100))
            .is_none());
        let later = t0 + EVICTABLE_AFTER + Duration::from_secs(1);
        // One that is being answered is never ended: the first host's first goes instead of
        // nobody only while it still reads.
        slots.read(first.unwrap());
        let id = slots
            .take(newcomer, None, later)
            .expect("a slot for the newcomer");
        assert!(slots.held.contains_key(&id));
        assert!(
            slots.held.contains_key(&first.unwrap()),
            "an answered one was ended"
        );
        assert_eq!(slots.total, MAX_CONNECTIONS);
        // The ended connection's client reads end-of-file.
        let mut ended = 0;
        for c in &mut clients {
            c.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            if matches!(c.read(&mut [0u8; 1]), Ok(0)) {
                ended += 1;
            }
        }
        assert_eq!(ended, 1);
        // Sources of one connection each never end one another.
        let mut singles = Slots::default();
        for host in 0..MAX_CONNECTIONS as u32 {
            let (_client, server) = pair();
            singles.take(Source::V4(host), Some(server), t0).unwrap();
        }
        assert!(singles.take(newcomer, None, later).is_none());
    }

    #[test]
    fn counters_and_gauges_are_rendered_with_their_labels() {
        let text = render("web", &figures());
        for line in [
            "reloadsup_info{name=\"web\",version=\"",
            "reloadsup_reloads_total{outcome=\"succeeded\"} 2\n",
            "reloadsup_reloads_total{outcome=\"rolled_back\"} 1\n",
            "reloadsup_reloads_total{outcome=\"refused\"} 0\n",
            "reloadsup_generation 3\n",
            "reloadsup_workers{state=\"ready\"} 2\n",
            "reloadsup_workers{state=\"dead\"} 1\n",
            "reloadsup_workers{state=\"starting\"} 0\n",
            "reloadsup_worker_restarts_total 4\n",
            "reloadsup_upgrades_total 1\n",
            "reloadsup_console_logins_total{result=\"ok\"} 5\n",
            "reloadsup_console_logins_total{result=\"failed\"} 6\n",
            "reloadsup_start_time_seconds 1700000000.25\n",
            "# TYPE reloadsup_reloads_total counter\n",
            "# TYPE reloadsup_reload_duration_seconds histogram\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf_sum_and_count() {
        let text = render("web", &figures());
        let buckets: Vec<(&str, u64)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("reloadsup_reload_duration_seconds_bucket{le=\""))
            .map(|l| {
                let (le, n) = l.split_once("\"} ").unwrap();
                (le, n.parse().unwrap())
            })
            .collect();
        assert_eq!(buckets.len(), RELOAD_BUCKETS_MS.len() + 1);
        assert_eq!(buckets[0], ("0.1", 0));
        assert_eq!(buckets[2], ("0.5", 2));
        assert_eq!(buckets[3], ("1", 2));
        assert_eq!(buckets.last(), Some(&("+Inf", 3)));
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1));
        assert!(text.contains("reloadsup_reload_duration_seconds_sum 1.5\n"));
        assert!(text.contains("reloadsup_reload_duration_seconds_count 3\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        let text = render("a\"b\\c\nd", &Figures::default());
        assert!(text.contains("name=\"a\\\"b\\\\c\\nd\""), "{text}");
        // An empty figure set still renders every bucket.
        assert!(text.contains("reloadsup_reload_duration_seconds_bucket{le=\"+Inf\"} 0\n"));
    }

    #[test]
    fn every_sample_line_belongs_to_a_declared_family() {
        let text = render("web", &figures());
        let declared: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let metric = line.split(['{', ' ']).next().unwrap();
            assert!(
                declared.iter().any(|d| metric == *d
                    || metric
                        .strip_prefix(d)
                        .is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))),
                "{line}"
            );
        }
    }
}
