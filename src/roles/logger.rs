//! The logger role (`reloadsup-logger`): reads every worker's stdout and stderr pipe, labels
//! each line (time, generation, slot, pid, stream) and writes it to the sink (the primary's
//! stdout, or a file that it appends to, rotates and reopens on SIGUSR1); keeps a ring of
//! recent lines.
//!
//! The primary never reads a worker's output: it makes the pipes, keeps a copy of every read
//! end that is still open, and sends each one here over the link (SCM_RIGHTS) with its labels.
//! A logger that dies is restarted and gets every open pipe again, so what waited in a pipe is
//! read by the next one. This role tells the primary when a pipe reached end-of-file and its
//! last line was written ([`LoggerEvent::Drained`]), and the primary closes its copy then.
//!
//! It must keep reading: a sink that fails (a full disk, an unwritable file) costs the lines
//! that could not be written, counted and reported at most once a minute, never a stalled
//! pipe. Lines are written as soon as they are read (no buffering across turns), so a logger
//! killed while it waits in the poll loses nothing. It has no parent-death signal: when the
//! primary exits (its link closes) it reads every pipe to end-of-file, for at most
//! [`DRAIN_FOR`], then exits.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use reloadsup_protocol::{
    self as proto, LogFormat, LogQuery, LogSink, LogStream, LoggerEvent, LoggerMessage, LoggerSpec,
    PROTOCOL_VERSION,
};
use signal_hook::consts::signal::{SIGTERM, SIGUSR1};
use signal_hook_mio::v1_0::Signals;

use crate::error::lower;
use crate::logfile::Access;
use crate::sys;

/// The longest line written as one; a longer one is split in pieces of this size, each but
/// the last marked as continued.
pub(crate) const MAX_LINE: usize = 16 * 1024;

/// How long the logger keeps reading its pipes after the primary closed the link.
const DRAIN_FOR: Duration = Duration::from_secs(2);

/// How often a failing sink is reported, at most.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// Bytes read from one pipe per turn, so that a flooding worker cannot starve the others.
const READ_PER_TURN: usize = 256 * 1024;

/// Bytes of lines in one [`LoggerEvent::Lines`] message (a longer line goes alone).
const TAIL_CHUNK: usize = 32 * 1024;

/// Bytes of lines waiting for one tail's link sends; past it, new lines are skipped (and
/// counted), so a reader that does not keep up never holds the logger back.
const TAIL_QUEUE: usize = 1 << 20;

/// Tails open at once; the primary bounds them too.
const MAX_TAILS: usize = 64;

/// Bytes of formatted lines written at once.
const BATCH: usize = 256 * 1024;

/// Bytes waiting for a slow stdout, past which lines are dropped (counted and reported).
const STDOUT_BUFFER: usize = 4 << 20;

/// Bytes written to stdout at once: a pipe that polls writable takes this without blocking.
const STDOUT_WRITE: usize = 4096;

/// How often waiting tail messages (and stdout bytes) are retried while the link is full.
const TAIL_RETRY: Duration = Duration::from_millis(10);

const LINK: Token = Token(0);
const SIGNALS: Token = Token(1);
const FIRST_PIPE: usize = 16;

/// Runs the logger role; `args` are the words after `__logger`: `--uid U --gid G` when it
/// must switch to the workers' user, whose bytes it parses, or nothing.
pub(crate) fn run(args: &[OsString]) -> u8 {
    super::run_as_workers("logger", args, serve)
}

/// What a pipe's lines are labelled with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Labels {
    pub generation: u64,
    pub slot: u32,
    pub pid: u32,
    pub stream: LogStream,
}

struct Pipe {
    id: u64,
    labels: Labels,
    file: File,
    /// The start of a line whose end has not arrived yet.
    partial: Vec<u8>,
}

fn serve(drop_to: Option<(u32, u32)>) -> io::Result<()> {
    let link = sys::take_role_link()?;
    let mut buf = vec![0u8; 64 * 1024];
    let (n, _) = sys::recv_with_fds(link.as_fd(), &mut buf, 0)?;
    if n == 0 {
        return Ok(());
    }
    let spec: LoggerSpec = proto::decode(&buf[..n]).map_err(io::Error::other)?;
    if spec.version != PROTOCOL_VERSION {
        return Err(io::Error::other(proto::Error::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: spec.version,
        }));
    }
    // The file's directory is checked, and its opener forked off, while this process may
    // still become another user; then it drops to the workers' user for good.
    let access = match &spec.sink {
        LogSink::File(p) => {
            let uid = drop_to.map_or_else(|| nix::unistd::geteuid().as_raw(), |(uid, _)| uid);
            let path = PathBuf::from(OsString::from_vec(p.clone()));
            Some(Access::new(&path, uid, spec.rotate_keep, spec.rotate_size))
        }
        LogSink::Stdout => None,
    };
    if let Some((uid, gid)) = drop_to {
        sys::drop_privileges(Some(uid), Some(gid)).map_err(io::Error::other)?;
        // A worker of the same uid must not ptrace the logger and use its link.
        sys::set_undumpable()?;
    }
    sys::set_nonblocking(link.as_fd(), true)?;
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut SourceFd(&link.as_raw_fd()), LINK, Interest::READABLE)?;
    let mut signals = Signals::new([SIGUSR1, SIGTERM])?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)?;
    let mut sink = Sink::new(&spec, access);
    let mut ring = Ring::new(spec.ring_bytes as usize);
    let mut pipes: HashMap<usize, Pipe> = HashMap::new();
    let mut next_token = FIRST_PIPE;
    let mut pending: BTreeSet<usize> = BTreeSet::new();
    let mut drain_until: Option<Instant> = None;
    let mut events = Events::with_capacity(256);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut scratch = Scratch::new()?;
    loop {
        if let Some(t) = drain_until {
            if pipes.is_empty() || Instant::now() >= t {
                return Ok(());
            }
        }
        let timeout = if !pending.is_empty() {
            Some(Duration::ZERO)
        } else {
            let drain = drain_until.map(|t| t.saturating_duration_since(Instant::now()));
            match (drain, ring.tails.waiting() || sink.waiting()) {
                (Some(d), true) => Some(d.min(TAIL_RETRY)),
                (None, true) => Some(TAIL_RETRY),
                (d, false) => d,
            }
        };
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut ready: BTreeSet<usize> = std::mem::take(&mut pending);
        ready.extend(events.iter().map(|e| e.token().0));
        for token in ready {
            match Token(token) {
                LINK => {
                    if drain_until.is_some() {
                        continue;
                    }
                    match read_link(&link, &mut buf) {
                        Ok(LinkRead::Messages(msgs)) => {
                            for (msg, fd) in msgs {
                                match (msg, fd) {
                                    (
                                        LoggerMessage::Pipe {
                                            id,
                                            generation,
                                            slot,
                                            pid,
                                            stream,
                                        },
                                        Some(fd),
                                    ) => {
                                        let t = next_token;
                                        next_token += 1;
                                        sys::set_nonblocking(fd.as_fd(), true)?;
                                        poll.registry().register(
                                            &mut SourceFd(&fd.as_raw_fd()),
                                            Token(t),
                                            Interest::READABLE,
                                        )?;
                                        // Read at once: a pipe of a restarted logger may be
                                        // full already, and its edge long past.
                                        pending.insert(t);
                                        pipes.insert(
                                            t,
                                            Pipe {
                                                id,
                                                labels: Labels {
                                                    generation,
                                                    slot,
                                                    pid,
                                                    stream,
                                                },
                                                file: File::from(fd),
                                                partial: Vec::new(),
                                            },
                                        );
                                    }
                                    (LoggerMessage::Reopen, _) => sink.reopen(),
                                    (LoggerMessage::Tail { tail, query }, _) => {
                                        ring.tail(tail, query)
                                    }
                                    (LoggerMessage::Untail { tail }, _) => ring.tails.remove(tail),
                                    (LoggerMessage::Pipe { .. }, None) => {
                                        return Err(io::Error::other(
                                            "a pipe message arrived without its fd",
                                        ))
                                    }
                                }
                            }
                        }
                        Ok(LinkRead::Closed) => {
                            poll.registry()
                                .deregister(&mut SourceFd(&link.as_raw_fd()))?;
                            drain_until = Some(Instant::now() + DRAIN_FOR);
                            ring.tails.clear();
                        }
                        Err(e) => return Err(e),
                    }
                }
                SIGNALS => {
                    for sig in signals.pending() {
                        match sig {
                            SIGUSR1 => sink.reopen(),
                            _ => {
                                if drain_until.is_none() {
                                    drain_until = Some(Instant::now() + DRAIN_FOR);
                                }
                            }
                        }
                    }
                }
                Token(t) => {
                    let Some(pipe) = pipes.get_mut(&t) else {
                        continue;
                    };
                    let (eof, more) =
                        read_pipe(pipe, &mut chunk, &mut scratch, &mut sink, &mut ring);
                    if more {
                        pending.insert(t);
                    }
                    if eof {
                        let pipe = pipes.remove(&t).expect("the pipe was just found");
                        // Closing the fd takes it out of the poll.
                        let id = pipe.id;
                        drop(pipe);
                        if drain_until.is_none() {
                            let body = proto::encode(&LoggerEvent::Drained { id })
                                .map_err(io::Error::other)?;
                            // The primary reads its link whenever it is readable: a full link
                            // means it is gone or stuck, and the next logger tells it again.
                            let _ = sys::send_nonblocking(link.as_fd(), &body);
                        }
                    }
                }
            }
        }
        sink.flush();
        if let Some(why) = sink.restart.take() {
            return Err(io::Error::other(why));
        }
        if drain_until.is_none() {
            ring.tails.send(&link);
        }
    }
}

enum LinkRead {
    Messages(Vec<(LoggerMessage, Option<OwnedFd>)>),
    Closed,
}

/// Every message waiting on the link (bare postcard, at most one fd each).
fn read_link(link: &OwnedFd, buf: &mut [u8]) -> io::Result<LinkRead> {
    let mut out = Vec::new();
    loop {
        match sys::recv_with_fds(link.as_fd(), buf, 1) {
            Ok((0, _)) => {
                return Ok(if out.is_empty() {
                    LinkRead::Closed
                } else {
                    LinkRead::Messages(out)
                })
            }
            Ok((n, mut fds)) => {
                let msg: LoggerMessage = proto::decode(&buf[..n]).map_err(io::Error::other)?;
                out.push((msg, fds.pop()));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(LinkRead::Messages(out)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => return Ok(LinkRead::Closed),
            Err(e) => return Err(e),
        }
    }
}

/// Reads what one pipe holds, up to [`READ_PER_TURN`]; writes every whole line. Returns
/// (end-of-file, more to read).
/// A pipe of the logger's own: what `tee(2)` copies out of a worker's pipe without taking it.
pub(crate) struct Scratch {
    r: File,
    w: OwnedFd,
}

impl Scratch {
    fn new() -> io::Result<Scratch> {
        let (r, w) = sys::pipe()?;
        sys::set_nonblocking(r.as_fd(), true)?;
        sys::set_nonblocking(w.as_fd(), true)?;
        Ok(Scratch {
            r: File::from(r),
            w,
        })
    }
}

/// Reads what one pipe holds, up to [`READ_PER_TURN`], and writes every whole line; returns
/// (end-of-file, more to read).
///
/// The bytes are copied out with `tee(2)` and taken out of the pipe only once their whole lines
/// are written, so a logger killed at any moment loses no whole line: its replacement reads
/// them again (a line may then be written twice). Only the start of a line whose end has not
/// arrived yet (a worker that writes a line in pieces) is held here, and lost with a killed
/// logger.
fn read_pipe(
    pipe: &mut Pipe,
    chunk: &mut [u8],
    scratch: &mut Scratch,
    sink: &mut Sink,
    ring: &mut Ring,
) -> (bool, bool) {
    let mut read = 0;
    loop {
        if read >= READ_PER_TURN {
            return (false, true);
        }
        if sink.restart.is_some() {
            // This logger is about to make way for one that can reach the file: what waits
            // in the pipe is for that one.
            return (false, false);
        }
        let n = match sys::tee(pipe.file.as_fd(), scratch.w.as_fd(), chunk.len()) {
            Ok(0) => {
                if !pipe.partial.is_empty() {
                    let rest = std::mem::take(&mut pipe.partial);
                    emit(&pipe.labels, &rest, false, sink, ring);
                    sink.commit();
                }
                return (true, false);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (false, false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // Not a pipe (tee refuses it): read it the plain way.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                return read_plain(pipe, chunk, sink, ring)
            }
            Err(_) => return (true, false),
        };
        if read_exactly(&mut scratch.r, &mut chunk[..n]).is_err() {
            // The scratch pipe holds what tee put there; failing to read it is not expected.
            return (false, false);
        }
        pipe.partial.extend_from_slice(&chunk[..n]);
        let labels = &pipe.labels;
        let rest = split_lines(&pipe.partial, |line, continued| {
            emit(labels, line, continued, sink, ring)
        });
        pipe.partial.drain(..pipe.partial.len() - rest);
        sink.commit();
        if sink.restart.is_some() {
            // The file was lost in the middle of these lines (its opener died at a rotation):
            // they stay in the pipe for the next logger, which writes again the ones written.
            return (false, false);
        }
        // Everything copied is taken: a pipe write to a pipe that is not empty may not wake an
        // edge-triggered reader, so nothing may be left waiting in it.
        if read_exactly(&mut pipe.file, &mut chunk[..n]).is_err() {
            return (true, false);
        }
        read += n;
    }
}

/// Reads exactly `buf.len()` bytes that are known to wait in the pipe `from`.
fn read_exactly(from: &mut File, buf: &mut [u8]) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match from.read(&mut buf[got..]) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// [`read_pipe`] for an fd that is not a pipe: read, then write (a kill in between loses the
/// bytes read).
fn read_plain(pipe: &mut Pipe, chunk: &mut [u8], sink: &mut Sink, ring: &mut Ring) -> (bool, bool) {
    let mut read = 0;
    loop {
        if read >= READ_PER_TURN {
            return (false, true);
        }
        match pipe.file.read(chunk) {
            Ok(0) => {
                if !pipe.partial.is_empty() {
                    let rest = std::mem::take(&mut pipe.partial);
                    emit(&pipe.labels, &rest, false, sink, ring);
                    sink.commit();
                }
                return (true, false);
            }
            Ok(n) => {
                read += n;
                pipe.partial.extend_from_slice(&chunk[..n]);
                let labels = &pipe.labels;
                let rest = split_lines(&pipe.partial, |line, continued| {
                    emit(labels, line, continued, sink, ring)
                });
                pipe.partial.drain(..pipe.partial.len() - rest);
                // Written before the next read: a logger killed now loses at most this read.
                sink.commit();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (false, false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                // Not a pipe we can read any more: as good as end-of-file.
                return (true, false);
            }
        }
    }
}

/// Calls `line` with every whole line of `bytes` (without its newline; `continued` for a piece
/// of a line longer than [`MAX_LINE`] that goes on in the next piece). Returns how many bytes
/// at the end are the start of a line still to come.
pub(crate) fn split_lines(bytes: &[u8], mut line: impl FnMut(&[u8], bool)) -> usize {
    let mut start = 0;
    loop {
        let rest = &bytes[start..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(end) if end <= MAX_LINE => {
                line(&rest[..end], false);
                start += end + 1;
            }
            _ if rest.len() > MAX_LINE => {
                let cut = utf8_cut(rest, MAX_LINE);
                line(&rest[..cut], true);
                start += cut;
            }
            _ => return rest.len(),
        }
    }
}

/// The largest cut at most `max` bytes into `bytes` that does not split a UTF-8 sequence
/// (when there is one within 3 bytes; invalid input is cut at `max`).
fn utf8_cut(bytes: &[u8], max: usize) -> usize {
    let mut cut = max;
    while cut > max.saturating_sub(3) && cut < bytes.len() && (bytes[cut] & 0xc0) == 0x80 {
        cut -= 1;
    }
    if cut == max.saturating_sub(3) && (bytes[cut] & 0xc0) == 0x80 {
        return max;
    }
    cut
}

fn emit(labels: &Labels, line: &[u8], continued: bool, sink: &mut Sink, ring: &mut Ring) {
    let text = String::from_utf8_lossy(line);
    let formatted = format_line(sink.format, SystemTime::now(), labels, &text, continued);
    sink.write(&formatted);
    ring.push(labels, formatted);
}

/// One labelled line, with its newline.
pub(crate) fn format_line(
    format: LogFormat,
    now: SystemTime,
    labels: &Labels,
    line: &str,
    continued: bool,
) -> String {
    let ts = rfc3339_millis(now);
    match format {
        LogFormat::Text => format!(
            "{ts} gen={} worker={} pid={} {}{}: {line}\n",
            labels.generation,
            labels.slot,
            labels.pid,
            labels.stream.as_str(),
            if continued { "+" } else { "" }
        ),
        LogFormat::Json => {
            let mut v = serde_json::json!({
                "ts": ts,
                "generation": labels.generation,
                "worker": labels.slot,
                "pid": labels.pid,
                "stream": labels.stream.as_str(),
                "line": line,
            });
            if continued {
                v["continued"] = serde_json::Value::Bool(true);
            }
            let mut s = v.to_string();
            s.push('\n');
            s
        }
    }
}

/// `2026-12-02T02:10:30.615Z`.
pub(crate) fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Recent lines, bounded in bytes, and the tails that read them.
pub(crate) struct Ring {
    lines: VecDeque<(u64, u32, String)>,
    bytes: usize,
    max: usize,
    tails: Tails,
}

impl Ring {
    pub(crate) fn new(max: usize) -> Ring {
        Ring {
            lines: VecDeque::new(),
            bytes: 0,
            max,
            tails: Tails::default(),
        }
    }

    /// A new tail: the last `query.lines` matching lines are queued for it at once.
    fn tail(&mut self, tail: u64, query: LogQuery) {
        if self.tails.open.len() >= MAX_TAILS {
            self.tails.open.insert(
                tail,
                Tail {
                    query: LogQuery {
                        follow: false,
                        ..query
                    },
                    queue: VecDeque::new(),
                    queued: 0,
                },
            );
            return;
        }
        let mut recent: Vec<&String> = self
            .lines
            .iter()
            .rev()
            .filter(|(g, s, _)| query.matches(*g, *s))
            .take(query.lines as usize)
            .map(|(_, _, l)| l)
            .collect();
        recent.reverse();
        let mut t = Tail {
            query,
            queue: VecDeque::new(),
            queued: 0,
        };
        for line in recent {
            t.push(line);
        }
        self.tails.open.insert(tail, t);
    }

    fn push(&mut self, labels: &Labels, line: String) {
        for t in self.tails.open.values_mut() {
            if t.query.follow && t.query.matches(labels.generation, labels.slot) {
                t.push(&line);
            }
        }
        if line.len() > self.max {
            return;
        }
        self.bytes += line.len();
        self.lines.push_back((labels.generation, labels.slot, line));
        while self.bytes > self.max {
            match self.lines.pop_front() {
                Some((_, _, l)) => self.bytes -= l.len(),
                None => break,
            }
        }
    }
}

trait Matches {
    fn matches(&self, generation: u64, slot: u32) -> bool;
}

impl Matches for LogQuery {
    fn matches(&self, generation: u64, slot: u32) -> bool {
        self.worker.is_none_or(|w| w == slot) && self.generation.is_none_or(|g| g == generation)
    }
}

/// What waits for one tail: lines, and counts of lines skipped between them.
enum Item {
    Line(String),
    Skipped(u64),
}

struct Tail {
    query: LogQuery,
    queue: VecDeque<Item>,
    /// Bytes of the lines in `queue`.
    queued: usize,
}

impl Tail {
    /// Queues `line`, or counts it as skipped when the queue is full.
    fn push(&mut self, line: &str) {
        if self.queued + line.len() > TAIL_QUEUE {
            match self.queue.back_mut() {
                Some(Item::Skipped(n)) => *n += 1,
                _ => self.queue.push_back(Item::Skipped(1)),
            }
            return;
        }
        self.queued += line.len();
        self.queue.push_back(Item::Line(line.to_owned()));
    }

    /// The next message: a count of skipped lines, then lines up to [`TAIL_CHUNK`] bytes.
    /// Taken off the queue only once sent.
    fn next_chunk(&self) -> (u64, usize, Vec<String>) {
        let mut skipped = 0;
        let mut items = 0;
        let mut lines = Vec::new();
        let mut bytes = 0;
        for item in &self.queue {
            match item {
                Item::Skipped(n) if lines.is_empty() => skipped += n,
                Item::Skipped(_) => break,
                Item::Line(l) => {
                    if !lines.is_empty() && bytes + l.len() > TAIL_CHUNK {
                        break;
                    }
                    bytes += l.len();
                    lines.push(l.clone());
                }
            }
            items += 1;
        }
        (skipped, items, lines)
    }
}

/// The open tails, by the primary's id.
#[derive(Default)]
struct Tails {
    open: HashMap<u64, Tail>,
}

impl Tails {
    /// Whether a message waits for room on the link.
    fn waiting(&self) -> bool {
        self.open
            .values()
            .any(|t| !t.queue.is_empty() || !t.query.follow)
    }

    fn remove(&mut self, tail: u64) {
        self.open.remove(&tail);
    }

    fn clear(&mut self) {
        self.open.clear();
    }

    /// Sends what waits, without ever blocking: what does not fit stays queued (and new lines
    /// are skipped once a queue is full); a tail that is not following ends once sent.
    fn send(&mut self, link: &OwnedFd) {
        let mut ended = Vec::new();
        'tails: for (&id, t) in self.open.iter_mut() {
            while !t.queue.is_empty() {
                let (skipped, items, lines) = t.next_chunk();
                let event = LoggerEvent::Lines {
                    tail: id,
                    skipped,
                    lines,
                };
                let Ok(body) = proto::encode(&event) else {
                    break 'tails;
                };
                match sys::send_nonblocking(link.as_fd(), &body) {
                    Ok(()) => {
                        for item in t.queue.drain(..items) {
                            if let Item::Line(l) = item {
                                t.queued -= l.len();
                            }
                        }
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                        // One line too large for a message: skipped, and said so.
                        if let Some(Item::Line(l)) = t.queue.get(items - 1) {
                            t.queued -= l.len();
                        }
                        t.queue.remove(items - 1);
                        t.queue.insert(items - 1, Item::Skipped(1));
                    }
                    // Full (or gone): retried at the next turn.
                    Err(_) => break 'tails,
                }
            }
            if !t.query.follow {
                let Ok(body) = proto::encode(&LoggerEvent::TailEnd { tail: id }) else {
                    break;
                };
                if sys::send_nonblocking(link.as_fd(), &body).is_err() {
                    break;
                }
                ended.push(id);
            }
        }
        for id in ended {
            self.open.remove(&id);
        }
    }
}

/// Where lines go: stdout, or a file appended to and rotated.
struct Sink {
    format: LogFormat,
    target: Target,
    /// Lines that could not be written since the last report.
    dropped: u64,
    /// Formatted lines of the current read, not written yet, and how many.
    batch: Vec<u8>,
    batch_lines: u64,
    reported: Option<Instant>,
    /// Why this logger must exit so that a new one starts (its file's opener was lost, or a
    /// reopen was asked of a file it could not reach).
    restart: Option<String>,
}

enum Target {
    /// A duplicate of fd 1 and what waits for it: stdout is never set non-blocking (the open
    /// file is shared with the primary and whoever started it), so it is written only in
    /// pieces that fit when it polls writable.
    Stdout { out: File, waiting: VecDeque<u8> },
    File {
        path: PathBuf,
        access: Access,
        file: Option<File>,
        /// A regular file, rotated at `rotate_size` (not a character device).
        rotatable: bool,
        size: u64,
        rotate_size: u64,
    },
}

impl Sink {
    /// `access` is how a file sink reaches its file (`None` for stdout).
    fn new(spec: &LoggerSpec, access: Option<Access>) -> Sink {
        let target = match &spec.sink {
            LogSink::Stdout => match io::stdout().as_fd().try_clone_to_owned() {
                Ok(fd) => Target::Stdout {
                    out: File::from(fd),
                    waiting: VecDeque::new(),
                },
                Err(e) => {
                    eprintln!(
                        "reloadsup: logger: unable to use stdout: {}; lines are dropped",
                        lower(&e)
                    );
                    Target::File {
                        path: PathBuf::from("stdout"),
                        access: Access::Broken {
                            why: format!("stdout: {}", lower(&e)),
                            restart: false,
                        },
                        file: None,
                        rotatable: false,
                        size: 0,
                        rotate_size: 0,
                    }
                }
            },
            LogSink::File(p) => Target::File {
                path: PathBuf::from(OsString::from_vec(p.clone())),
                access: access.unwrap_or_else(|| Access::Broken {
                    why: "no access to the file was set up".to_string(),
                    restart: false,
                }),
                file: None,
                rotatable: false,
                size: 0,
                rotate_size: spec.rotate_size,
            },
        };
        let mut sink = Sink {
            format: spec.format,
            target,
            dropped: 0,
            batch: Vec::new(),
            batch_lines: 0,
            reported: None,
            restart: None,
        };
        if let Err(e) = sink.open() {
            sink.report(&e);
        }
        sink
    }

    /// Opens the file (appending) if it is not open; a no-op for stdout.
    fn open(&mut self) -> io::Result<()> {
        if let Target::File {
            access,
            file,
            rotatable,
            size,
            ..
        } = &mut self.target
        {
            if file.is_none() {
                let opened = access.open();
                if let Some((why, true)) = access.broken() {
                    self.restart = Some(why.to_string());
                }
                let opened = opened?;
                *size = opened.file.metadata().map(|m| m.len()).unwrap_or(0);
                *rotatable = opened.rotatable;
                *file = Some(opened.file);
            }
        }
        Ok(())
    }

    /// SIGUSR1: the file was moved away; write to a new one at the path. A file that could
    /// not be reached since the start is looked for again by a new logger (which starts
    /// with the privilege to start an opener): this one exits.
    fn reopen(&mut self) {
        if let Target::File { access, file, .. } = &mut self.target {
            *file = None;
            if let Some((why, _)) = access.broken() {
                self.restart = Some(format!(
                    "{why}; exiting on the reopen so that a new logger looks again"
                ));
                return;
            }
        }
        if let Err(e) = self.open() {
            self.report(&e);
        }
    }

    /// Adds `line` to the batch of this read; [`Sink::commit`] writes the batch. A batch that
    /// takes the file to its rotation size is written at once, so rotation happens at the
    /// same line as it would line by line.
    fn write(&mut self, line: &str) {
        self.batch.extend_from_slice(line.as_bytes());
        self.batch_lines += 1;
        let rotates = match &self.target {
            Target::File {
                size, rotate_size, ..
            } => *rotate_size > 0 && *size + self.batch.len() as u64 >= *rotate_size,
            Target::Stdout { .. } => false,
        };
        if rotates || self.batch.len() >= BATCH {
            self.commit();
        }
    }

    /// Writes the lines of this read in one write: one system call per read, not per line.
    fn commit(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        let lines = std::mem::take(&mut self.batch_lines);
        if self.dropped > 0 && self.reported.is_some() {
            // The sink works again: say what was lost first (best effort).
            let note = format!(
                "{} reloadsup-logger: {} lines were dropped: the log could not be written\n",
                rfc3339_millis(SystemTime::now()),
                self.dropped
            );
            if self.write_raw(note.as_bytes()).is_ok() {
                self.dropped = 0;
                self.reported = None;
            }
        }
        if let Err(e) = self.write_raw(&batch) {
            self.dropped += lines;
            self.report(&e);
        }
        // The allocation is kept for the next batch.
        self.batch = batch;
        self.batch.clear();
    }

    fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.open()?;
        match &mut self.target {
            Target::Stdout { out, waiting } => {
                if waiting.len() + bytes.len() > STDOUT_BUFFER {
                    return Err(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        format!("{} MiB wait for it", STDOUT_BUFFER >> 20),
                    ));
                }
                waiting.extend(bytes);
                write_waiting(out, waiting)
            }
            Target::File {
                access,
                file,
                rotatable,
                size,
                rotate_size,
                ..
            } => {
                let f = file.as_mut().ok_or_else(|| io::Error::other("not open"))?;
                if let Err(e) = f.write_all(bytes) {
                    // Reopened at the next line: the file may have been fixed or freed.
                    *file = None;
                    return Err(e);
                }
                if !*rotatable {
                    return Ok(());
                }
                *size += bytes.len() as u64;
                if *rotate_size > 0 && *size >= *rotate_size {
                    *file = None;
                    *size = 0;
                    // A failed rename is no lost line (as before): the next open goes on in
                    // whatever file is at the path. A lost opener ends this logger.
                    let _ = access.rotate();
                    if let Some((why, true)) = access.broken() {
                        self.restart = Some(why.to_string());
                    }
                }
                Ok(())
            }
        }
    }

    /// Writes the batch, and what waits for stdout as far as it goes without blocking.
    fn flush(&mut self) {
        self.commit();
        if let Target::Stdout { out, waiting } = &mut self.target {
            if let Err(e) = write_waiting(out, waiting) {
                // Whatever waits is lost with the stdout that broke.
                self.dropped += 1;
                waiting.clear();
                self.report(&e);
            }
        }
    }

    /// Whether bytes wait for stdout.
    fn waiting(&self) -> bool {
        matches!(&self.target, Target::Stdout { waiting, .. } if !waiting.is_empty())
    }

    /// Says why lines are lost, once a minute at most.
    fn report(&mut self, e: &io::Error) {
        let now = Instant::now();
        if self
            .reported
            .is_some_and(|t| now.saturating_duration_since(t) < REPORT_EVERY)
        {
            return;
        }
        self.reported = Some(now);
        let what = match &self.target {
            Target::Stdout { .. } => "stdout".to_string(),
            Target::File { path, .. } => path.display().to_string(),
        };
        eprintln!(
            "reloadsup: logger: unable to write {what}: {}; lines are dropped until it works again ({} so far)",
            lower(e),
            self.dropped
        );
    }
}

/// Writes `waiting` to `out` in pieces of [`STDOUT_WRITE`] while it polls writable.
fn write_waiting(out: &mut File, waiting: &mut VecDeque<u8>) -> io::Result<()> {
    while !waiting.is_empty() && sys::writable_now(out.as_fd()) {
        let (front, _) = waiting.as_slices();
        let n = front.len().min(STDOUT_WRITE);
        match out.write(&front[..n]) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0")),
            Ok(n) => {
                waiting.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(bytes: &[u8]) -> (Vec<(Vec<u8>, bool)>, usize) {
        let mut out = Vec::new();
        let rest = split_lines(bytes, |l, c| out.push((l.to_vec(), c)));
        (out, rest)
    }

    #[test]
    fn whole_lines_are_split_and_the_rest_waits() {
        let (lines, rest) = lines_of(b"one\ntwo\nthr");
        assert_eq!(
            lines,
            vec![(b"one".to_vec(), false), (b"two".to_vec(), false)]
        );
        assert_eq!(rest, 3);
        assert_eq!(lines_of(b"\n").0, vec![(Vec::new(), false)]);
    }

    #[test]
    fn a_long_line_is_cut_in_marked_pieces() {
        let mut bytes = vec![b'a'; MAX_LINE * 2 + 10];
        bytes.push(b'\n');
        let (lines, rest) = lines_of(&bytes);
        assert_eq!(rest, 0);
        assert_eq!(lines.len(), 3);
        assert!(lines[0].1 && lines[1].1 && !lines[2].1);
        assert_eq!(lines[0].0.len(), MAX_LINE);
        assert_eq!(lines[2].0.len(), 10);
        // Without its newline yet, the long line's first piece is out already.
        let (lines, rest) = lines_of(&vec![b'b'; MAX_LINE + 5]);
        assert_eq!((lines.len(), rest), (1, 5));
    }

    #[test]
    fn a_cut_does_not_split_a_utf8_character() {
        let mut bytes = vec![b'a'; MAX_LINE - 1];
        bytes.extend_from_slice("é".as_bytes());
        bytes.extend_from_slice(b"z\n");
        let (lines, _) = lines_of(&bytes);
        assert_eq!(lines[0].0.len(), MAX_LINE - 1);
        assert_eq!(lines[1].0, "éz".as_bytes());
    }

    #[test]
    fn text_and_json_lines_carry_every_label() {
        let labels = Labels {
            generation: 3,
            slot: 1,
            pid: 1234,
            stream: LogStream::Stderr,
        };
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_177_430_615);
        assert_eq!(
            format_line(LogFormat::Text, t, &labels, "hi", false),
            "2026-12-02T02:10:30.615Z gen=3 worker=1 pid=1234 stderr: hi\n"
        );
        assert!(format_line(LogFormat::Text, t, &labels, "x", true).contains(" stderr+: x"));
        let bad = String::from_utf8_lossy(b"a\xffb\"");
        let json = format_line(LogFormat::Json, t, &labels, &bad, false);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["ts"], "2026-12-02T02:10:30.615Z");
        assert_eq!(v["generation"], 3);
        assert_eq!(v["worker"], 1);
        assert_eq!(v["pid"], 1234);
        assert_eq!(v["stream"], "stderr");
        assert_eq!(v["line"], "a\u{fffd}b\"");
        assert!(v.get("continued").is_none());
        let cont = format_line(LogFormat::Json, t, &labels, "x", true);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&cont).unwrap()["continued"],
            true
        );
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(
            rfc3339_millis(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
        // 2000-02-29 (a leap day of a century divisible by 400).
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339_millis(t), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn the_ring_keeps_the_newest_within_its_bytes() {
        let labels = Labels {
            generation: 1,
            slot: 0,
            pid: 1,
            stream: LogStream::Stdout,
        };
        let mut ring = Ring::new(10);
        for s in ["aaaa", "bbbb", "cccc"] {
            ring.push(&labels, s.to_string());
        }
        let kept: Vec<&str> = ring.lines.iter().map(|l| l.2.as_str()).collect();
        assert_eq!(kept, vec!["bbbb", "cccc"]);
    }

    #[test]
    fn a_tail_that_is_not_read_skips_lines_and_says_how_many() {
        let mut t = Tail {
            query: LogQuery {
                lines: 0,
                follow: true,
                worker: None,
                generation: None,
            },
            queue: VecDeque::new(),
            queued: 0,
        };
        let line = "x".repeat(1000);
        // A full queue, then 50 lines skipped, then (once room was made) more lines.
        for _ in 0..TAIL_QUEUE / 1000 + 50 {
            t.push(&line);
        }
        assert_eq!(t.queued, TAIL_QUEUE / 1000 * 1000);
        assert!(matches!(t.queue.back(), Some(Item::Skipped(50))));
        let (skipped, items, lines) = t.next_chunk();
        assert_eq!(
            (skipped, items, lines.len()),
            (0, TAIL_CHUNK / 1000, TAIL_CHUNK / 1000)
        );
        // Everything but the marker is sent: the next chunk is the marker and what follows.
        let n = t.queue.len() - 1;
        for item in t.queue.drain(..n) {
            if let Item::Line(l) = item {
                t.queued -= l.len();
            }
        }
        t.push("after");
        let (skipped, items, lines) = t.next_chunk();
        assert_eq!((skipped, items, lines), (50, 2, vec!["after".to_string()]));
    }

    #[test]
    fn a_tail_starts_with_the_newest_matching_lines() {
        let mut ring = Ring::new(1 << 20);
        for (slot, text) in [(0, "a"), (1, "b"), (0, "c"), (1, "d"), (0, "e")] {
            let labels = Labels {
                generation: 1,
                slot,
                pid: 1,
                stream: LogStream::Stdout,
            };
            ring.push(&labels, text.to_string());
        }
        let query = LogQuery {
            lines: 2,
            follow: false,
            worker: Some(0),
            generation: Some(1),
        };
        ring.tail(9, query);
        let (_, _, lines) = ring.tails.open[&9].next_chunk();
        assert_eq!(lines, vec!["c".to_string(), "e".to_string()]);
    }
}
