//! The upgrade hand-off: what an old image of the primary gives the new one across `execve`,
//! under the same pid (DESIGN.md promise 6).
//!
//! The old image encodes one [`Handoff`] with postcard into a memfd that survives the exec and
//! names it on the new image's command line (`__upgrade FD`). fds are carried as their numbers:
//! `execve` keeps every fd whose close-on-exec flag was cleared, at the same number, and the new
//! image takes each number once. Instants are absolute `CLOCK_MONOTONIC` nanoseconds, the
//! clock `std::time::Instant` uses, which an exec does not reset; durations are nanoseconds.
//!
//! The new image reads a hand-off of [`MIN_HANDOFF_VERSION`] up to [`HANDOFF_VERSION`] and
//! refuses any other before the body is trusted; the pre-flight (`__preflight`) proves, before
//! the exec, that the new binary decodes this very hand-off. Like every wire type: enums
//! append-only, fields never change type. A version that only appends fields at the end of
//! [`Handoff`] keeps the older versions readable: each appended field is an `Option` or a `Vec`,
//! whose empty value postcard writes as the one byte 0, so an older hand-off is read as if it
//! ended with those bytes (the `APPENDED` table).

use serde::{Deserialize, Serialize};

use crate::ReloadOutcome;
use crate::ShellSpec;

/// Bumped on any change of the hand-off that is not an append.
pub const HANDOFF_VERSION: u32 = 6;

/// The oldest hand-off this image still reads: an upgrade from a binary that wrote it works.
pub const MIN_HANDOFF_VERSION: u32 = 2;

/// `(version, fields)`: how many fields version `version` appended at the end of [`Handoff`],
/// each `None` or empty in a hand-off of an older version.
const APPENDED: &[(u32, usize)] = &[(3, 1), (4, 1), (5, 1), (6, 1)];

/// Everything the primary holds, as plain data and fd numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    pub version: u32,
    /// The old image's version (`CARGO_PKG_VERSION`), for the log.
    pub from_version: String,
    /// The primary's own command line, without `argv[0]`: the new image parses it again.
    pub args: Vec<Vec<u8>>,
    /// The absolute path the primary was started from: what the next upgrade execs.
    pub binary: Vec<u8>,
    /// In-place upgrades this pid has been through, this one included.
    pub upgrades: u64,
    /// Who waits for this upgrade's outcome: the new image answers them.
    pub waiters: Vec<u64>,
    /// Who asked for `restart`: the new image reloads for them, then replaces the shell.
    pub restarters: Vec<u64>,
    pub state: StateImage,
    pub listeners: Vec<ListenerImage>,
    pub control: ControlImage,
    pub notify: Option<NotifyImage>,
    pub spares: Vec<LinkImage>,
    pub links: Vec<LinkImage>,
    pub keeper: KeeperImage,
    pub shell: Option<ShellImage>,
    /// Requesters of a `restart` whose reload is in flight.
    pub restarting: Vec<u64>,
    pub refill_at: Option<u64>,
    /// Version 2: the `--config` file's text the running config was parsed from, and the text
    /// the primary started with (its keys that cannot change at run time still rule). The new
    /// image rebuilds its config from these, never from the file, which may have changed.
    pub config_text: Option<String>,
    pub start_text: Option<String>,
    /// Version 2: the worker spec of each run of live generations, oldest first.
    pub epochs: Vec<EpochImage>,
    /// Version 3: the logger worker and every open worker output pipe
    /// (`--log-output stdout|file:PATH`).
    pub logger: Option<LoggerImage>,
    /// Version 4: what the service manager above (reloadsup's own `NOTIFY_SOCKET`) was told,
    /// and when its watchdog is due.
    pub manager: Option<ManagerImage>,
    /// Version 5: the counters behind `/metrics` and the metrics worker (`--metrics`).
    pub metrics: Option<MetricsImage>,
    /// Version 6: the canary count asked for by the reload queued behind the starting one
    /// (`ctl reload --canary N`; the largest, when several were coalesced). `None`: the
    /// config's `canary`, as for a queued plain `reload` (and for an older hand-off).
    pub pending_canary: Option<u32>,
}

/// The service manager's notify socket as the primary uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerImage {
    /// `NOTIFY_SOCKET` as given (`@` for an abstract name).
    pub socket: Vec<u8>,
    pub watchdog_usec: Option<u64>,
    pub watchdog_at: Option<u64>,
    /// `READY=1` was sent (it is not sent again).
    pub ready: bool,
    pub status: String,
}

/// The figures the primary counts (they survive upgrades in place) and the metrics worker as
/// the primary knows it: listener, link and back-off.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MetricsImage {
    pub reloads_succeeded: u64,
    pub reloads_rolled_back: u64,
    pub reloads_refused: u64,
    pub reloads_cancelled: u64,
    pub reload_buckets: Vec<u64>,
    pub reload_seconds_sum_ns: u64,
    /// When the reload in flight began, if one is.
    pub reload_began: Option<u64>,
    pub worker_restarts: u64,
    pub logins_ok: u64,
    pub logins_failed: u64,
    /// Nanoseconds since the Unix epoch.
    pub start_time_ns: u64,
    /// With `--metrics`: the listener the primary bound, its bound address, the worker.
    pub listener_fd: Option<i32>,
    pub bound: String,
    pub pid: Option<u32>,
    pub link_fd: Option<i32>,
    pub started: Option<u64>,
    pub backoff: u64,
    pub restart_at: Option<u64>,
}

/// The logger worker as the primary knows it: its spec, link and back-off, and the read end
/// of every worker output pipe not drained yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggerImage {
    pub spec: crate::LoggerSpec,
    pub pipes: Vec<PipeImage>,
    pub next_id: u64,
    pub pid: Option<u32>,
    pub link_fd: Option<i32>,
    pub started: Option<u64>,
    pub backoff: u64,
    pub restart_at: Option<u64>,
}

/// One worker output pipe: the read end's fd number and its labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipeImage {
    pub id: u64,
    pub generation: u64,
    pub slot: u32,
    pub pid: u32,
    pub stream: crate::LogStream,
    pub fd: i32,
}

/// The worker spec of generations `from` up to the next epoch's `from`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochImage {
    pub from: u64,
    pub argv: Vec<Vec<u8>>,
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    pub einhorn_env: bool,
    /// `(name, bound address)`: the bound address names one of [`Handoff::listeners`].
    pub listeners: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerImage {
    pub name: String,
    pub bound: String,
    pub fd: i32,
}

/// A worker role's link (a spare waiting for its spec, or one not exec'd yet), by pid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkImage {
    pub pid: u32,
    pub fd: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlImage {
    pub listener_fd: i32,
    pub conns: Vec<ConnImage>,
    /// The next connection id: ids are never reused while the pid lives.
    pub next: u64,
    pub serial: u64,
}

/// A control connection (or the shell link) with what it had buffered either way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnImage {
    pub id: u64,
    pub fd: i32,
    /// Read but not yet a whole frame.
    pub input: Vec<u8>,
    /// Replies not yet written.
    pub output: Vec<u8>,
    pub greeted: bool,
    pub inflight: u32,
    pub serial: u64,
    pub pinned: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyImage {
    pub next: u64,
    pub sockets: Vec<NotifySocketImage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifySocketImage {
    pub token: u64,
    pub fd: i32,
    pub path: Vec<u8>,
    pub pid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeeperImage {
    pub link_fd: Option<i32>,
    pub pid: Option<u32>,
    pub tracked: Vec<u32>,
    pub cgroup: Option<Vec<u8>>,
    pub started: Option<u64>,
    pub backoff: u64,
    pub restart_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShellImage {
    pub spec: ShellSpec,
    pub listener_fd: i32,
    pub role_args: Vec<String>,
    pub proxy_dir: Option<Vec<u8>>,
    pub pid: Option<u32>,
    pub conn: Option<u64>,
    pub started: Option<u64>,
    pub backoff: u64,
    pub restart_at: Option<u64>,
    pub replacing: bool,
    pub stopping: bool,
}

/// The generation state machine's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateImage {
    pub settings: SettingsImage,
    pub target: u32,
    pub serving: u64,
    pub starting: Option<StartingImage>,
    pub pending: Option<Vec<u64>>,
    pub next_generation: u64,
    pub processes: Vec<ProcessImage>,
    pub slots: Vec<SlotImage>,
    pub last_reload: Option<ReloadOutcome>,
    pub shutdown: Option<Vec<u64>>,
    pub first_ready: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadyImage {
    Notify,
    Delay {
        ns: u64,
    },
    Immediate,
    /// Appended: `--ready listening` (no version bump: an older image never writes it).
    Listening,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartImage {
    OnFailure,
    Always,
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsImage {
    pub ready: ReadyImage,
    pub ready_timeout: u64,
    pub graceful_timeout: u64,
    pub restart: RestartImage,
    pub stop_signal: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartingImage {
    pub generation: u64,
    pub waiters: Vec<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PhaseImage {
    Starting,
    Ready,
    Draining,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessImage {
    pub pid: u32,
    pub generation: u64,
    pub slot: u32,
    pub phase: PhaseImage,
    pub started: u64,
    pub ready_at: Option<u64>,
    pub deadline: Option<u64>,
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DownImage {
    Backoff,
    Dead(String),
    Stopped(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotImage {
    pub restarts: u32,
    pub streak: u32,
    pub backoff: u64,
    pub restart_at: Option<u64>,
    pub down: Option<DownImage>,
    pub since: Option<u64>,
}

/// Decodes a hand-off of any version from [`MIN_HANDOFF_VERSION`] up to ours, refusing another
/// version before the body is trusted. `version` keeps the version the old image wrote.
pub fn decode_handoff(bytes: &[u8]) -> Result<Handoff, crate::Error> {
    // `version` is the first field: read it alone so that a newer layout is named as such
    // rather than reported as garbage.
    let (version, _): (u32, _) =
        postcard::take_from_bytes(bytes).map_err(|e| crate::Error::Malformed(e.to_string()))?;
    if !(MIN_HANDOFF_VERSION..=HANDOFF_VERSION).contains(&version) {
        return Err(crate::Error::VersionMismatch {
            ours: HANDOFF_VERSION,
            theirs: version,
        });
    }
    let missing: usize = APPENDED
        .iter()
        .filter(|(since, _)| *since > version)
        .map(|(_, fields)| fields)
        .sum();
    if missing == 0 {
        return crate::decode(bytes);
    }
    let mut padded = Vec::with_capacity(bytes.len() + missing);
    padded.extend_from_slice(bytes);
    padded.resize(bytes.len() + missing, 0);
    crate::decode(&padded)
}
