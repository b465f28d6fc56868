//! Every type that crosses a process boundary in reloadsup, and the framing that carries it.
//!
//! This crate owns the wire format and nothing else: no I/O, no `unsafe`. Messages are encoded
//! with postcard, which numbers enum variants by position, so every enum here is append-only:
//! add new variants at the end, never reorder or remove one, and never change a field's type.
//!
//! A frame is a 4-byte little-endian length followed by that many bytes of postcard. A frame
//! longer than [`MAX_FRAME`] is refused before anything is allocated for it. Decoding never
//! panics: truncated, oversized and random input all come back as [`Error`].
//!
//! Every connection opens with [`Message::Hello`] from both sides; a peer whose
//! [`PROTOCOL_VERSION`] differs is refused with [`Error::VersionMismatch`].
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use std::fmt;

pub mod notify;
pub mod upgrade;

/// Bumped on any change that is not an append.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest frame body either side accepts: a status of a few thousand workers fits easily.
pub const MAX_FRAME: usize = 1 << 20;

/// Bytes of the length prefix in front of every frame.
pub const HEADER_LEN: usize = 4;

/// What can go wrong on the wire. Messages are lowercase and carry their context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The length prefix announces more than [`MAX_FRAME`] bytes.
    FrameTooLarge { len: usize },
    /// The body is not a valid postcard encoding of the expected type.
    Malformed(String),
    /// The peer speaks another protocol version.
    VersionMismatch { ours: u32, theirs: u32 },
    /// The peer sent something other than the message the exchange expects.
    Unexpected(&'static str),
    /// A message said it carries `expected` fds and `received` arrived.
    FdCount { expected: usize, received: usize },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::FrameTooLarge { len } => {
                write!(f, "frame of {len} bytes exceeds the limit of {MAX_FRAME} bytes")
            }
            Error::Malformed(why) => write!(f, "malformed message: {why}"),
            Error::VersionMismatch { ours, theirs } => write!(
                f,
                "protocol version mismatch: this side speaks version {ours}, the peer version {theirs}"
            ),
            Error::Unexpected(what) => write!(f, "unexpected message: expected {what}"),
            Error::FdCount { expected, received } => {
                write!(f, "expected {expected} file descriptors, received {received}")
            }
        }
    }
}

impl std::error::Error for Error {}

/// postcard's messages are capitalised sentences ("Hit the end of buffer, ..."); ours are
/// lowercase.
fn malformed(e: postcard::Error) -> Error {
    Error::Malformed(e.to_string().to_lowercase())
}

/// Encodes `msg` as one frame: length prefix and postcard body.
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, Error> {
    let mut out = vec![0u8; HEADER_LEN];
    out = postcard::to_extend(msg, out).map_err(malformed)?;
    let len = out.len() - HEADER_LEN;
    if len > MAX_FRAME {
        return Err(Error::FrameTooLarge { len });
    }
    out[..HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(out)
}

/// Encodes `msg` as a bare postcard body, for transports that keep message boundaries
/// (SOCK_SEQPACKET).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, Error> {
    let out = postcard::to_stdvec(msg).map_err(malformed)?;
    if out.len() > MAX_FRAME {
        return Err(Error::FrameTooLarge { len: out.len() });
    }
    Ok(out)
}

/// Decodes one bare postcard body; trailing bytes are an error.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Error> {
    if bytes.len() > MAX_FRAME {
        return Err(Error::FrameTooLarge { len: bytes.len() });
    }
    let (msg, rest) = postcard::take_from_bytes(bytes).map_err(malformed)?;
    if !rest.is_empty() {
        return Err(Error::Malformed(format!("{} trailing bytes", rest.len())));
    }
    Ok(msg)
}

/// The `version` a [`WorkerSpec`] or [`ShellSpec`] body starts with, read on its own: a spec
/// of another version may not decode as ours at all, and the receiver should still say that
/// the versions differ rather than that the message is malformed.
pub fn leading_version(bytes: &[u8]) -> Option<u32> {
    postcard::take_from_bytes::<u32>(bytes).ok().map(|(v, _)| v)
}

/// Accumulates bytes from a stream and yields whole frames.
///
/// Feed it whatever `read` returned; call [`FrameReader::next_frame`] until it returns
/// `Ok(None)`. Memory use is bounded by [`MAX_FRAME`] plus one read's worth of bytes.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the peer.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that do not yet form a whole frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The bytes held, to carry them across an upgrade in place.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// The next whole frame decoded as `T`, `Ok(None)` when more bytes are needed.
    ///
    /// After an error the stream is out of step and the connection should be closed.
    pub fn next_frame<T: for<'de> Deserialize<'de>>(&mut self) -> Result<Option<T>, Error> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.buf[..HEADER_LEN]);
        let len = u32::from_le_bytes(header) as usize;
        if len > MAX_FRAME {
            return Err(Error::FrameTooLarge { len });
        }
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let result = decode(&self.buf[HEADER_LEN..HEADER_LEN + len]);
        self.buf.drain(..HEADER_LEN + len);
        result.map(Some)
    }
}

/// Checks a received hello against our version.
pub fn check_hello(msg: &Message) -> Result<(), Error> {
    match msg {
        Message::Hello { version } if *version == PROTOCOL_VERSION => Ok(()),
        Message::Hello { version } => Err(Error::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: *version,
        }),
        _ => Err(Error::Unexpected("hello")),
    }
}

// ---------------------------------------------------------------------------------------------
// Control connections: `reloadsup ctl`, the shell worker, and the primary.
// ---------------------------------------------------------------------------------------------

/// Every frame on a control connection (control socket or shell link), in either direction.
///
/// A client sends `Hello`, then any number of `Request`s, each with an id of its choosing. The
/// primary answers `Hello`, then for each request zero or more `Progress` frames and exactly one
/// final `Reply` with the same id. Requests may be in flight concurrently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    Hello { version: u32 },
    Request { id: u32, request: Request },
    Progress { id: u32, progress: Progress },
    Reply { id: u32, reply: Reply },
}

impl Message {
    pub fn hello() -> Self {
        Message::Hello {
            version: PROTOCOL_VERSION,
        }
    }
}

/// What a client can ask the primary to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// The whole state: listeners, generations, workers.
    Status,
    /// Start a new generation; the reply comes when it took over or was rolled back.
    Reload,
    /// Set the number of workers per generation.
    Scale { workers: u32 },
    /// Add this many workers.
    Add { workers: u32 },
    /// Remove this many workers (never below zero).
    Remove { workers: u32 },
    /// Restart every dead slot.
    Revive,
    /// Reload every worker and replace the shell worker.
    Restart,
    /// Graceful shutdown; the reply comes when every worker is gone.
    Stop,
    /// Re-exec the primary in place (same pid) from `binary`, or from the path it was started
    /// from; the reply comes from the new image, or says why the upgrade was refused.
    Upgrade { binary: Option<Vec<u8>> },
    /// Recent lines of the workers' output from the logger's ring, then (with `follow`) every
    /// new line, as [`Progress::Log`]; a follow ends when the connection closes.
    Logs(LogQuery),
    /// End the follow of `request` (a [`Request::Logs`] with `follow` on this connection):
    /// it gets its reply, and so does this one.
    StopLogs { request: u32 },
    /// From the shell worker only: a console password check ended, `ok` or not; counted for
    /// `reloadsup_console_logins_total`. Answered `Done`; refused from any other connection.
    Login { ok: bool },
    /// A [`Request::Reload`] with `canary` workers of the new generation started first, the
    /// rest once those are ready (and stable); a canary failure rolls back only the canaries.
    /// `canary` 0 (or at least the worker count) is an ordinary reload, whatever the config says.
    ReloadWith { canary: u32 },
}

/// Which log lines a [`Request::Logs`] wants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogQuery {
    /// How many of the most recent lines (that match) to send first.
    pub lines: u32,
    /// Keep sending new lines until the client goes away.
    pub follow: bool,
    /// Only this slot's lines.
    pub worker: Option<u32>,
    /// Only this generation's lines.
    pub generation: Option<u64>,
}

/// Intermediate news about a request in flight (a reload, a stop).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Progress {
    /// A new generation started with this many workers.
    GenerationStarted { generation: u64, workers: u32 },
    /// A worker of the new generation was spawned.
    WorkerSpawned {
        generation: u64,
        slot: u32,
        pid: u32,
    },
    /// A worker of the new generation is ready.
    WorkerReady {
        generation: u64,
        slot: u32,
        pid: u32,
    },
    /// The request was coalesced with one already in flight and waits for its turn.
    Queued,
    /// The old generation was sent the stop signal.
    Draining { generation: u64, workers: u32 },
    /// Free text (shutdown progress and the like).
    Text(String),
    /// Log lines (each with its newline) for [`Request::Logs`]; `skipped` lines were dropped
    /// just before these because the reader did not keep up.
    Log { skipped: u64, lines: Vec<String> },
}

/// The final answer to a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Status(Status),
    Reload(ReloadOutcome),
    /// Done; the text says what happened.
    Done(String),
    /// Refused or failed; the text says why.
    Error(String),
}

/// Whether a reload took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The new generation is serving.
    Succeeded,
    /// The new generation failed and was killed; the old one is still serving.
    RolledBack,
    /// The reload was abandoned because the primary is shutting down.
    Cancelled,
    /// The re-read configuration was refused (it does not parse or validate, or a new
    /// listener cannot be bound): no generation was started and nothing changed.
    Refused,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::RolledBack => "rolled back",
            Outcome::Cancelled => "cancelled",
            Outcome::Refused => "refused",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    pub generation: u64,
    pub outcome: Outcome,
    /// Empty on success; otherwise why the generation failed.
    pub reason: String,
}

/// A worker's phase as shown to users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerState {
    Starting,
    Ready,
    Draining,
    /// Waiting for its back-off to pass before it is restarted.
    Backoff,
    /// Crashed too often; not restarted until revived.
    Dead,
    /// Exited and not restarted because of `--restart never`.
    Stopped,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Ready => "ready",
            WorkerState::Draining => "draining",
            WorkerState::Backoff => "backoff",
            WorkerState::Dead => "dead",
            WorkerState::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerInfo {
    pub name: String,
    /// The bound address, `tcp://127.0.0.1:41234` or `unix:/path`; port 0 is resolved.
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub slot: u32,
    /// 0 when no process runs in the slot (back-off, dead, stopped).
    pub pid: u32,
    pub generation: u64,
    pub state: WorkerState,
    pub restarts: u32,
    pub uptime_ms: u64,
    /// The last `STATUS=` text the worker sent, or why the slot is down.
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub name: String,
    /// The generation serving now.
    pub generation: u64,
    pub target_workers: u32,
    /// Workers of the serving generation that are running (starting or ready).
    pub current_workers: u32,
    pub dead_workers: u32,
    pub listeners: Vec<ListenerInfo>,
    pub workers: Vec<WorkerInfo>,
    pub last_reload: Option<ReloadOutcome>,
    /// The running image's version.
    pub version: String,
    /// In-place upgrades this pid has been through.
    pub upgrades: u64,
}

// ---------------------------------------------------------------------------------------------
// Hand-off from the primary to a freshly exec'd role process.
// ---------------------------------------------------------------------------------------------

/// The first and only message on a worker's hand-off socket (SOCK_SEQPACKET, bare postcard).
/// It arrives together with `fd_count` listener fds in SCM_RIGHTS messages, in `--listen`
/// order; more than one control message may carry them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub version: u32,
    /// The primary's pid: the role process exits at once if its parent is another process.
    pub primary_pid: u32,
    pub generation: u64,
    pub slot: u32,
    /// argv of the command, templates already substituted; `argv[0]` is looked up in PATH.
    pub argv: Vec<Vec<u8>>,
    /// Added to (or replacing in) the inherited environment.
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    /// One name per listener, for `LISTEN_FDNAMES`.
    pub listener_names: Vec<String>,
    /// How many listener fds follow.
    pub fd_count: u32,
    /// Path of the primary's notify socket, when readiness is `notify`.
    pub notify_socket: Option<Vec<u8>>,
    /// Switch to this uid/gid before exec.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Also export `EINHORN_FD_COUNT` and `EINHORN_FD_n`.
    pub einhorn_env: bool,
    /// Export `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES` (false with `--no-listen-env`).
    pub listen_env: bool,
}

/// Sent on a hand-off socket in front of the fd batches when there are more listeners than
/// fit in one SCM_RIGHTS message: each batch is a `FdBatch` frame carrying `count` fds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdBatch {
    pub index: u32,
    pub count: u32,
}

/// Sent back by a worker role on its hand-off socket when it cannot run the command, right
/// before it exits; a role that execs the command sends nothing (the socket is close-on-exec,
/// so the primary reads end-of-file instead). Bare postcard, no fds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupFailure {
    pub stage: SetupStage,
    /// The errno of the call that failed; 0 when there is none (then `detail` says why).
    pub errno: i32,
    /// Text for a failure without an errno (a malformed spec); empty otherwise.
    pub detail: String,
}

/// Which step of the worker role's setup failed. Append-only, like every wire enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetupStage {
    /// The spec or the listener fds did not arrive intact.
    Handoff,
    /// The spec is of another protocol version than the role's.
    Protocol { ours: u32, theirs: u32 },
    /// `PR_SET_PDEATHSIG` or the parent check.
    ParentDeath,
    /// `setgroups` to the one group `gid`.
    Groups { gid: u32 },
    /// `setgid`.
    Group { gid: u32 },
    /// `setuid`.
    User { uid: u32 },
    /// Placing the listeners at fd 3...
    Fds,
    /// Leaving the batch scheduling class a spare waits in.
    Scheduling,
    /// `execvp` of the command.
    Exec,
}

/// Everything the shell worker needs, sent once over its link with the admin listener fd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShellSpec {
    pub version: u32,
    pub primary_pid: u32,
    pub name: String,
    /// PEM certificate chain and key for the console.
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// `pbkdf2-sha256$ITERATIONS$SALT$HASH`, salt and hash in hex.
    pub password_hash: String,
    /// Path of the control socket, exported to custom commands as `RELOADSUP_CONTROL`.
    pub control_path: Vec<u8>,
    pub commands: Vec<CustomCommand>,
    /// How many fds follow (the admin listener: 1).
    pub fd_count: u32,
}

/// A `[commands.NAME]` entry of the config: an external program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomCommand {
    pub name: String,
    pub run: Vec<String>,
    pub help: String,
}

// ---------------------------------------------------------------------------------------------
// The keeper: a watcher that kills every worker's process group (and cgroup) when the primary
// dies.
// ---------------------------------------------------------------------------------------------

/// The most process groups one [`KeeperMessage::Track`] carries, so that every message on the
/// keeper's link stays small (a few KiB at most) however many workers there are.
pub const MAX_TRACK_BATCH: usize = 256;

/// The first message on the keeper's link (SOCK_SEQPACKET, bare postcard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeeperSpec {
    pub version: u32,
    pub primary_pid: u32,
    /// The cgroup v2 directory under which every worker has a cgroup `w<PGID>` of its own,
    /// when the primary could create one; killed as a whole (`cgroup.kill`) with the primary.
    pub cgroup: Option<Vec<u8>>,
}

/// Every later message on the keeper's link, in the order the primary spawns and reaps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeeperMessage {
    /// These worker process groups exist: kill them if the primary dies. At most
    /// [`MAX_TRACK_BATCH`] per message.
    Track { pgids: Vec<u32> },
    /// This group's leader is about to be reaped (its group was killed): never signal it again,
    /// and remove its cgroup once it is empty.
    Forget { pgid: u32 },
}

// ---------------------------------------------------------------------------------------------
// The logger worker: reads every worker's stdout and stderr pipe, labels each line and writes it
// to the chosen sink; keeps a ring of recent lines.
// ---------------------------------------------------------------------------------------------

/// Where the logger writes the lines it labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogSink {
    /// The logger's (the primary's) stdout.
    Stdout,
    /// This file, appended to and rotated.
    File(Vec<u8>),
}

/// How each line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogFormat {
    /// `TS gen=G worker=S pid=P STREAM: LINE`
    Text,
    /// One JSON object per line: `ts`, `generation`, `worker`, `pid`, `stream`, `line`.
    Json,
}

/// Which of a worker's outputs a pipe carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// The first message on the logger's link (SOCK_SEQPACKET, bare postcard, no fds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggerSpec {
    pub version: u32,
    pub primary_pid: u32,
    pub sink: LogSink,
    pub format: LogFormat,
    /// A file is rotated once it passes this many bytes (0: never).
    pub rotate_size: u64,
    /// How many rotated files (`PATH.1` ..) are kept.
    pub rotate_keep: u32,
    /// Bytes of recent lines kept for `ctl logs`.
    pub ring_bytes: u64,
}

/// Every later message from the primary to the logger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoggerMessage {
    /// The read end of one worker output pipe, attached (exactly one fd), with its labels.
    /// `id` is the primary's, unique for its life (and across upgrades in place).
    Pipe {
        id: u64,
        generation: u64,
        slot: u32,
        pid: u32,
        stream: LogStream,
    },
    /// Reopen the log file (SIGUSR1 to the primary, after logrotate moved it away).
    Reopen,
    /// Send the ring's lines for `query` as [`LoggerEvent::Lines`] tagged `tail`, then
    /// [`LoggerEvent::TailEnd`], or with `follow` every new matching line until [`LoggerMessage::Untail`].
    Tail { tail: u64, query: LogQuery },
    /// Stop following `tail` (its client went away).
    Untail { tail: u64 },
}

/// Every message from the logger to the primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoggerEvent {
    /// The pipe `id` reached end-of-file and every line of it was written: no writer is left,
    /// so the primary closes its copy.
    Drained { id: u64 },
    /// Lines for `tail`, each with its newline; `skipped` lines were dropped just before
    /// these because the link was full.
    Lines {
        tail: u64,
        skipped: u64,
        lines: Vec<String>,
    },
    /// Every ring line of `tail` (not following) was sent.
    TailEnd { tail: u64 },
}

// ---------------------------------------------------------------------------------------------
// The metrics worker: serves `GET /metrics` on the listener the primary bound, asking the
// primary for its figures over its link.
// ---------------------------------------------------------------------------------------------

/// The upper bounds of `reloadsup_reload_duration_seconds`' buckets, in milliseconds; the
/// `+Inf` bucket follows. [`Figures::reload_buckets`] has one count more than this.
pub const RELOAD_BUCKETS_MS: &[u64] = &[
    100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 120_000,
];

/// The first message on the metrics worker's link (SOCK_SEQPACKET, bare postcard), with the
/// metrics listener attached (exactly one fd).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsSpec {
    pub version: u32,
    pub primary_pid: u32,
    /// The instance name (`--name`), a label of every figure's `reloadsup_info`.
    pub name: String,
}

/// Every later message on the metrics link, either way: the worker sends `Ask`, the primary
/// answers each with `Figures`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetricsMessage {
    Ask,
    Figures(Figures),
}

/// The primary's figures at one moment: plain counters and gauges.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Figures {
    pub reloads_succeeded: u64,
    pub reloads_rolled_back: u64,
    pub reloads_refused: u64,
    pub reloads_cancelled: u64,
    /// Per bucket of [`RELOAD_BUCKETS_MS`] and `+Inf` (not cumulative): finished reloads whose
    /// duration fell in it.
    pub reload_buckets: Vec<u64>,
    pub reload_seconds_sum_ns: u64,
    pub generation: u64,
    pub target_workers: u32,
    pub starting: u32,
    pub ready: u32,
    pub draining: u32,
    pub backoff: u32,
    pub dead: u32,
    pub stopped: u32,
    pub worker_restarts: u64,
    pub upgrades: u64,
    pub logins_ok: u64,
    pub logins_failed: u64,
    /// When this primary (pid) started, in nanoseconds since the Unix epoch.
    pub start_time_ns: u64,
}

/// The primary's request to the inspector (`--ready listening`, the `__inspector` role): look
/// at these starting workers and say which of them wait for connections on their listeners.
/// The primary sends one at a time and waits for its [`Looked`] before the next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inspect {
    pub version: u32,
    pub primary_pid: u32,
    /// Echoed in the answer, so that a late answer is never taken for the next request's.
    pub id: u64,
    /// Whether a sock_diag dump of the listeners' connections may be made (the primary paces
    /// them).
    pub may_dump: bool,
    pub workers: Vec<Inspected>,
}

/// One starting worker, as the inspector looks at it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inspected {
    /// The worker's pid, which is also its process group id.
    pub pid: u32,
    /// Its own cgroup directory (per-worker cgroups), whose processes are looked at;
    /// without one, the processes of its group that descend from it.
    pub cgroup: Option<String>,
    /// The socket inodes of the listeners it was given.
    pub inodes: Vec<u64>,
    /// The local addresses of the TCP ones.
    pub tcp: Vec<std::net::SocketAddr>,
}

/// The inspector's answer to the [`Inspect`] of the same `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Looked {
    pub id: u64,
    /// The workers seen listening.
    pub seen: Vec<SeenListening>,
    /// The time spent in sock_diag dumps, in nanoseconds (the primary paces the next one).
    pub dumped_ns: u64,
    /// How many of the request's workers were looked at, in order, before its time ran out:
    /// the next request starts after them.
    pub looked: u32,
}

/// A worker seen waiting for connections: by which of its processes, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenListening {
    pub worker: u32,
    pub pid: u32,
    pub how: String,
}

#[cfg(test)]
mod tests;
