//! The command line and the TOML config file, turned into one validated [`Config`].
//!
//! Everything a user can get wrong is caught here, before a socket is bound or a process
//! started, and reported as a [`ConfigError`] that names the flag or key. Nothing in this
//! module touches the running service.

use clap::Parser;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::net::SocketAddr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::error::lower;
pub(crate) use crate::error::{ConfigError, Origin, ValueError};

/// A bad value of `origin`.
fn bad<T>(origin: Origin, error: ValueError) -> Result<T, ConfigError> {
    Err(ConfigError::Value { origin, error })
}

pub(crate) use crate::address::{Address, ListenOptions};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListenerSpec {
    pub name: String,
    pub address: Address,
    pub options: ListenOptions,
}

impl fmt::Display for ListenerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}{}", self.name, self.address, self.options)
    }
}

/// When a new worker counts as ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadyMode {
    /// `READY=1` on the notify socket.
    Notify,
    /// Alive for this long.
    Delay(Duration),
    /// As soon as it is spawned.
    Immediate,
    /// Once it, or a process of its group, waits for connections on one of its listeners
    /// (see `primary::listening`).
    Listening,
}

/// Who gets the stop signal of a draining worker: the process reloadsup started, or its whole
/// process group (the worker and every process it started that stayed in its group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopTarget {
    Worker,
    Group,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RestartPolicy {
    OnFailure,
    Always,
    Never,
}

/// The validated configuration of a run.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub name: String,
    pub listeners: Vec<ListenerSpec>,
    /// The sockets the primary adopted from a socket activator at start (see
    /// `primary::activation`), as `NAME=ADDRESS`: the listeners when none is configured, and
    /// never unlinked, since the activator owns their paths.
    pub activated: Vec<ListenerSpec>,
    pub backlog: i32,
    pub workers: u32,
    /// Worker roles kept exec'd and waiting for a spec, so a reload costs only the command's
    /// own start.
    pub prespawn: u32,
    pub ready: ReadyMode,
    pub ready_timeout: Duration,
    pub stop_signal: Signal,
    pub stop_signal_to: StopTarget,
    pub graceful_timeout: Duration,
    /// How long a new generation must stay up beside the old one before the old one drains
    /// (`--stable-for`); zero commits a reload as soon as every new worker is ready.
    pub stable_for: Duration,
    /// Canary workers for every reload (`--canary`): that many new workers start first, the
    /// rest once they are ready (and stable); zero starts every new worker at once.
    pub canary: u32,
    pub restart: RestartPolicy,
    /// Files whose change starts a reload (`--watch`), absolute, and how long they must be
    /// quiet first (`--watch-delay`).
    pub watch: Vec<PathBuf>,
    pub watch_delay: Duration,
    /// Serve `GET /metrics` (Prometheus text format) on this address (`--metrics`).
    pub metrics: Option<SocketAddr>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub env: Vec<(OsString, OsString)>,
    pub einhorn_env: bool,
    /// Set `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES` (not with `--no-listen-env`).
    pub listen_env: bool,
    /// Become a child subreaper (`--subreaper`): orphans of workers are re-parented to the
    /// primary and reaped.
    pub subreaper: bool,
    pub state_dir: PathBuf,
    pub pidfile: Option<PathBuf>,
    /// argv with `{fd:NAME}` templates still in place; see [`Config::argv`].
    pub command: Vec<OsString>,
    pub admin: Option<Admin>,
    pub commands: Vec<reloadsup_protocol::CustomCommand>,
    /// The `--config` file's text this config was parsed from, and the text the primary
    /// started with: an upgrade in place carries both and rebuilds the running config from
    /// them, never from a file that may have changed (or broken) since.
    pub file_text: Option<String>,
    pub start_text: Option<String>,
    /// What becomes of the workers' stdout and stderr (`--log-*`).
    pub log: LogConfig,
}

/// Where the workers' output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LogOutput {
    /// The primary's own stdout and stderr, unlabelled (no logger worker).
    Inherit,
    /// Captured and labelled by the logger worker, written to the primary's stdout.
    Stdout,
    /// Captured and labelled, appended to this file, rotated.
    File(PathBuf),
}

/// `--log-output`, `--log-format`, `--log-rotate-size`, `--log-rotate-keep`, `--log-ring`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogConfig {
    pub output: LogOutput,
    pub json: bool,
    pub rotate_size: u64,
    pub rotate_keep: u32,
    pub ring: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            output: LogOutput::Inherit,
            json: false,
            rotate_size: 100 << 20,
            rotate_keep: 5,
            ring: 1 << 20,
        }
    }
}

/// Parses `--log-output`: `inherit`, `stdout` or `file:PATH`.
pub(crate) fn parse_log_output(s: &str) -> Result<LogOutput, ValueError> {
    match s {
        "inherit" => Ok(LogOutput::Inherit),
        "stdout" => Ok(LogOutput::Stdout),
        _ => match s.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(LogOutput::File(PathBuf::from(path))),
            _ => Err(ValueError::NotLogOutput(s.to_string())),
        },
    }
}

/// Parses `--log-format`: `text` or `json`; true for JSON.
pub(crate) fn parse_log_format(s: &str) -> Result<bool, ValueError> {
    match s {
        "text" => Ok(false),
        "json" => Ok(true),
        _ => Err(ValueError::NotLogFormat(s.to_string())),
    }
}

/// Parses a size in bytes: `1048576`, `512K`, `100M`, `1G` (powers of 1024; `KiB`, `MB` and
/// the like are accepted too, all binary).
pub(crate) fn parse_size(s: &str) -> Result<u64, ValueError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: u64 = num
        .parse()
        .map_err(|_| ValueError::NotSize(s.to_string()))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(ValueError::NotSize(s.to_string())),
    };
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| ValueError::NotSize(s.to_string()))
}

#[derive(Debug, Clone)]
pub(crate) struct Admin {
    pub address: SocketAddr,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub password_hash: String,
    /// Who the shell worker runs as once it holds its fds: `--admin-user`, else `nobody` under
    /// a root primary, else (both `None`) the primary's own credentials.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// What the user should hear about how the hash was given (on the command line, in a
    /// file others can read), logged once the logger runs.
    pub warnings: Vec<String>,
}

impl Config {
    /// The command with templates replaced by fd numbers: `{fd}` is the first listener,
    /// `{fd:NAME}` the named one. `{{` and `}}` stand for literal braces only around templates.
    pub(crate) fn argv(&self) -> Vec<OsString> {
        self.command
            .iter()
            .map(|arg| substitute(arg, &self.listeners).unwrap_or_else(|_| arg.clone()))
            .collect()
    }
}

/// Replaces `{fd}` and `{fd:NAME}` in one argument.
fn substitute(arg: &OsStr, listeners: &[ListenerSpec]) -> Result<OsString, ValueError> {
    let bytes = arg.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"{fd") {
            if let Some(end) = bytes[i..].iter().position(|&b| b == b'}') {
                let inner = &bytes[i + 1..i + end];
                let index = if inner == b"fd" {
                    if listeners.is_empty() {
                        return Err(ValueError::FdWithoutListener);
                    }
                    Some(0)
                } else if let Some(name) = inner.strip_prefix(b"fd:") {
                    let name = String::from_utf8_lossy(name);
                    match listeners.iter().position(|l| l.name == name) {
                        Some(idx) => Some(idx),
                        None => {
                            return Err(ValueError::NoSuchListener {
                                name: name.into_owned(),
                                names: listeners
                                    .iter()
                                    .map(|l| l.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", "),
                            })
                        }
                    }
                } else {
                    None
                };
                if let Some(idx) = index {
                    out.extend_from_slice((3 + idx).to_string().as_bytes());
                    i += end + 1;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    Ok(OsString::from_vec(out))
}

/// The run mode's command line, DESIGN.md section 3.
#[derive(Debug, Clone, Parser, Default)]
#[command(
    name = "reloadsup",
    version,
    about = "Zero-downtime reload supervisor: holds the listening sockets, runs generations of workers, reloads on SIGHUP.",
    override_usage = "reloadsup [OPTIONS] -- COMMAND [ARG...]\n       reloadsup ctl [--name NAME | --control PATH] COMMAND\n       reloadsup console [OPTIONS] HOST:PORT\n       reloadsup hash-password",
    after_help = "Signals: HUP reload, TTIN/TTOU one worker more/fewer, USR1 reopen the log file, USR2 upgrade in place, TERM/INT graceful shutdown, QUIT fast shutdown.\nCOMMAND may contain {fd} or {fd:NAME}, replaced by the listener's fd number."
)]
pub(crate) struct RunArgs {
    /// Listening socket (repeatable): [NAME=]ADDR[?OPTIONS], ADDR one of tcp://HOST:PORT, HOST:PORT, :PORT, PORT, udp://HOST:PORT, unix:PATH, unix:@NAME; OPTIONS backlog=N, reuseport, v6only=BOOL, defer-accept=DURATION, fastopen=N, freebind, mode=OCTAL, owner=USER, group=GROUP, joined by '&'.
    #[arg(short = 'l', long = "listen", value_name = "[NAME=]ADDR[?OPTIONS]")]
    pub listen: Vec<String>,
    /// Listen backlog [default: 1024].
    #[arg(long, value_name = "N")]
    pub backlog: Option<i32>,
    /// Reload when this file changes: written in place, replaced by a rename, or touched
    /// (repeatable).
    #[arg(long, value_name = "PATH")]
    pub watch: Vec<PathBuf>,
    /// How long a watched file must be quiet before the reload starts [default: 500ms].
    #[arg(long, value_name = "D")]
    pub watch_delay: Option<String>,
    /// Serve GET /metrics in the Prometheus text format on HOST:PORT (off unless given).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics: Option<String>,
    /// Workers per generation [default: 1].
    #[arg(short = 'n', long, value_name = "N")]
    pub workers: Option<u32>,
    /// Keep N worker processes started ahead of time, so a reload only costs the command's own
    /// start [default: 0].
    #[arg(long, value_name = "N")]
    pub prespawn: Option<u32>,
    /// Readiness: notify | listening | delay:DURATION | immediate [default: delay:1s].
    #[arg(long, value_name = "MODE")]
    pub ready: Option<String>,
    /// How long a new worker may take to become ready [default: 60s].
    #[arg(long, value_name = "D")]
    pub ready_timeout: Option<String>,
    /// Signal that asks a worker to drain [default: TERM].
    #[arg(long, value_name = "SIG")]
    pub stop_signal: Option<String>,
    /// Who gets the stop signal: worker (the process started) | group (its process group)
    /// [default: worker].
    #[arg(long, value_name = "worker|group")]
    pub stop_signal_to: Option<String>,
    /// How long a draining worker may take before SIGKILL [default: 30s].
    #[arg(long, value_name = "D")]
    pub graceful_timeout: Option<String>,
    /// Keep the old generation serving this long after every new worker is ready; a new
    /// worker that exits meanwhile rolls the reload back [default: 0s].
    #[arg(long, value_name = "D")]
    pub stable_for: Option<String>,
    /// Start this many workers of each new generation first, the rest once they are ready
    /// (and stable for --stable-for); a canary failure rolls back only the canaries [default: 0].
    #[arg(long, value_name = "N")]
    pub canary: Option<u32>,
    /// on-failure | always | never [default: on-failure].
    #[arg(long, value_name = "POLICY")]
    pub restart: Option<String>,
    /// Run workers as this user (name or uid).
    #[arg(long, value_name = "U")]
    pub user: Option<String>,
    /// Run workers as this group (name or gid).
    #[arg(long, value_name = "G")]
    pub group: Option<String>,
    /// KEY=VALUE added to the workers' environment (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Also export EINHORN_FD_COUNT and EINHORN_FD_n to workers.
    #[arg(long)]
    pub einhorn_env: bool,
    /// Do not set LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES: for servers given the socket by a flag
    /// ({fd}) that would also take it from LISTEN_FDS (gunicorn --bind fd://{fd}).
    #[arg(long)]
    pub no_listen_env: bool,
    /// Become a child subreaper (PR_SET_CHILD_SUBREAPER): processes that workers daemonise are
    /// re-parented to reloadsup and reaped, as they are when it runs as PID 1.
    #[arg(long)]
    pub subreaper: bool,
    /// Instance name [default: COMMAND's file name].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// State directory (control.sock, the workers' notify sockets, the console certificate).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Write the primary's pid here.
    #[arg(long, value_name = "PATH")]
    pub pidfile: Option<PathBuf>,
    /// Serve the TLS admin console on HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub admin: Option<String>,
    /// PEM certificate chain for the console.
    #[arg(long, value_name = "PEM")]
    pub admin_cert: Option<PathBuf>,
    /// PEM private key for the console.
    #[arg(long, value_name = "PEM")]
    pub admin_key: Option<PathBuf>,
    /// Console password hash from `reloadsup hash-password`; visible to every local user in
    /// /proc/PID/cmdline, so prefer --admin-password-hash-file or RELOADSUP_ADMIN_PASSWORD_HASH.
    #[arg(long, value_name = "H", conflicts_with = "admin_password_hash_file")]
    pub admin_password_hash: Option<String>,
    /// File holding the console password hash (one line; keep it mode 0600).
    #[arg(long, value_name = "PATH")]
    pub admin_password_hash_file: Option<PathBuf>,
    /// Run the console's shell worker as USER or USER:GROUP [default: --user/--group].
    #[arg(long, value_name = "USER[:GROUP]")]
    pub admin_user: Option<String>,
    /// Workers' stdout and stderr: inherit | stdout | file:PATH [default: inherit]. With
    /// stdout or file, a logger worker labels every line.
    #[arg(long, value_name = "WHERE")]
    pub log_output: Option<String>,
    /// text | json [default: text].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Rotate the log file once it passes this size, like 100M [default: 100M; 0: never].
    #[arg(long, value_name = "SIZE")]
    pub log_rotate_size: Option<String>,
    /// Rotated log files kept [default: 5].
    #[arg(long, value_name = "N")]
    pub log_rotate_keep: Option<u32>,
    /// Bytes of recent lines kept for `ctl logs` [default: 1M].
    #[arg(long, value_name = "SIZE")]
    pub log_ring: Option<String>,
    /// TOML file with the same keys; command-line flags win.
    #[arg(short = 'c', long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Internal: a socket adopted from a socket activator, as NAME=ADDR. The primary adds one
    /// for each at start, so that a reload and an upgrade in place (which parse the command
    /// line again) still know them.
    #[arg(long = "inherited-listener", value_name = "NAME=ADDR", hide = true)]
    pub inherited_listener: Vec<String>,
    /// The server to run.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// The config file: the same keys as the long flags (dashes or underscores).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    listen: Option<Vec<String>>,
    backlog: Option<i32>,
    watch: Option<Vec<PathBuf>>,
    #[serde(alias = "watch_delay")]
    watch_delay: Option<String>,
    metrics: Option<String>,
    workers: Option<u32>,
    prespawn: Option<u32>,
    ready: Option<String>,
    #[serde(alias = "ready_timeout")]
    ready_timeout: Option<String>,
    #[serde(alias = "stop_signal")]
    stop_signal: Option<String>,
    #[serde(alias = "stop_signal_to")]
    stop_signal_to: Option<String>,
    #[serde(alias = "graceful_timeout")]
    graceful_timeout: Option<String>,
    #[serde(alias = "stable_for")]
    stable_for: Option<String>,
    canary: Option<u32>,
    restart: Option<String>,
    user: Option<String>,
    group: Option<String>,
    #[serde(default, deserialize_with = "env_list_or_table")]
    env: Option<Vec<String>>,
    #[serde(alias = "einhorn_env")]
    einhorn_env: Option<bool>,
    #[serde(alias = "no_listen_env")]
    no_listen_env: Option<bool>,
    subreaper: Option<bool>,
    name: Option<String>,
    #[serde(alias = "state_dir")]
    state_dir: Option<PathBuf>,
    pidfile: Option<PathBuf>,
    admin: Option<String>,
    #[serde(alias = "admin_cert")]
    admin_cert: Option<PathBuf>,
    #[serde(alias = "admin_key")]
    admin_key: Option<PathBuf>,
    #[serde(alias = "admin_password_hash")]
    admin_password_hash: Option<String>,
    #[serde(alias = "admin_password_hash_file")]
    admin_password_hash_file: Option<PathBuf>,
    #[serde(alias = "admin_user")]
    admin_user: Option<String>,
    #[serde(alias = "log_output")]
    log_output: Option<String>,
    #[serde(alias = "log_format")]
    log_format: Option<String>,
    #[serde(alias = "log_rotate_size")]
    log_rotate_size: Option<toml::Value>,
    #[serde(alias = "log_rotate_keep")]
    log_rotate_keep: Option<u32>,
    #[serde(alias = "log_ring")]
    log_ring: Option<toml::Value>,
    command: Option<Vec<String>>,
    commands: Option<BTreeMap<String, FileCommand>>,
}

/// A size in the config file: a number of bytes or a string like "100M".
fn size_text(v: toml::Value) -> String {
    match v {
        toml::Value::String(s) => s,
        other => other.to_string(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCommand {
    run: Vec<String>,
    #[serde(default)]
    help: String,
}

/// Reads the console password hash from `path` (its first line); `what` names the flag or key
/// in errors. A file that others may read earns a warning, not a refusal: the hash is salted
/// and slow to attack, and refusing would break a start that worked before.
fn read_hash_file(
    path: &Path,
    what: &str,
    warnings: &mut Vec<String>,
) -> Result<String, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let text = crate::trusted::read_to_string(path).map_err(|e| ConfigError::HashFile {
        what: what.to_string(),
        reason: lower(&e),
    })?;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o044 != 0 {
            warnings.push(format!(
                "{what}: the password hash file is readable by other users (mode {:o}); chmod 600 it",
                meta.permissions().mode() & 0o777
            ));
        }
    }
    Ok(text.lines().next().unwrap_or("").trim().to_string())
}

/// The longest state directory: 107 bytes of a unix socket path, less `/` and the longest
/// socket name in it (`n-` and 16 characters, a worker's notify socket).
pub(crate) const MAX_STATE_DIR: usize = 107 - 1 - 18;

/// Parses a duration: `250ms`, `2s`, `1m`, `1h`, or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, ValueError> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| ValueError::NotDuration(s.to_string()))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(ValueError::DurationUnit {
                value: s.to_string(),
                unit: other.to_string(),
            })
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(ValueError::DurationRange(s.to_string()));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a signal: `TERM`, `SIGTERM`, `term` or `15`.
pub(crate) fn parse_signal(s: &str) -> Result<Signal, ValueError> {
    let upper = s.trim().to_ascii_uppercase();
    if let Ok(n) = upper.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| ValueError::NotSignalNumber(s.to_string()));
    }
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map_err(|_| ValueError::NotSignalName(s.to_string()))
}

fn parse_ready(s: &str) -> Result<ReadyMode, ValueError> {
    match s {
        "notify" => Ok(ReadyMode::Notify),
        "immediate" => Ok(ReadyMode::Immediate),
        "listening" => Ok(ReadyMode::Listening),
        _ => match s.strip_prefix("delay:") {
            Some(d) => parse_duration(d).map(ReadyMode::Delay),
            None => Err(ValueError::NotReadyMode(s.to_string())),
        },
    }
}

fn parse_stop_target(s: &str) -> Result<StopTarget, ValueError> {
    match s {
        "worker" => Ok(StopTarget::Worker),
        "group" => Ok(StopTarget::Group),
        _ => Err(ValueError::NotStopTarget(s.to_string())),
    }
}

fn parse_restart(s: &str) -> Result<RestartPolicy, ValueError> {
    match s {
        "on-failure" => Ok(RestartPolicy::OnFailure),
        "always" => Ok(RestartPolicy::Always),
        "never" => Ok(RestartPolicy::Never),
        _ => Err(ValueError::NotRestartPolicy(s.to_string())),
    }
}

pub(crate) fn parse_listener(s: &str, index: usize) -> Result<ListenerSpec, ValueError> {
    // A NAME= prefix is recognised only before the scheme and the options, so `unix:/a=b` and
    // `8080?backlog=5` keep their '='.
    let (name, addr) = match s.split_once('=') {
        Some((name, addr)) if !name.contains([':', '/', '?']) => (name.to_string(), addr),
        _ => (format!("listen{index}"), s),
    };
    if name.is_empty() || name.contains(':') || !name.chars().all(|c| c.is_ascii_graphic()) {
        return Err(ValueError::NotListenerName(name));
    }
    let (address, options) = crate::address::parse_with_options(
        addr,
        |u| resolve_user(u).map(|(uid, _)| uid),
        resolve_group,
    )?;
    Ok(ListenerSpec {
        name,
        address,
        options,
    })
}

fn resolve_user(s: &str) -> Result<(u32, u32), ValueError> {
    if let Ok(uid) = s.parse::<u32>() {
        let gid = nix::unistd::User::from_uid(uid.into())
            .ok()
            .flatten()
            .map(|u| u.gid.as_raw())
            .unwrap_or(uid);
        return Ok((uid, gid));
    }
    match nix::unistd::User::from_name(s) {
        Ok(Some(user)) => Ok((user.uid.as_raw(), user.gid.as_raw())),
        _ => Err(ValueError::NoUser(s.to_string())),
    }
}

/// The shell worker's user without `--admin-user`: `nobody` (and its group) under a root
/// primary, never the workers' user, whose processes could otherwise stop it and reach its
/// programs' control channel (issue 18, item 4); else the primary's own credentials (`None`).
fn default_admin_user() -> Result<(Option<u32>, Option<u32>), ValueError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok((None, None));
    }
    let (uid, gid) = resolve_user("nobody")?;
    Ok((Some(uid), Some(gid)))
}

/// `USER[:GROUP]`, each a name or a number; without a group, the user's own.
fn resolve_user_group(s: &str) -> Result<(u32, u32), ValueError> {
    let (user, group) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    if user.is_empty() || group.is_some_and(str::is_empty) {
        return Err(ValueError::NotUserGroup(s.to_string()));
    }
    let (uid, gid) = resolve_user(user)?;
    match group {
        Some(g) => Ok((uid, resolve_group(g)?)),
        None => Ok((uid, gid)),
    }
}

fn resolve_group(s: &str) -> Result<u32, ValueError> {
    if let Ok(gid) = s.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(s) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        _ => Err(ValueError::NoGroup(s.to_string())),
    }
}

/// Finds `program` the way execvp will: as a path when it has a slash, else in PATH.
pub(crate) fn resolve_command(program: &OsStr) -> Result<PathBuf, ValueError> {
    use std::os::unix::fs::PermissionsExt;
    let name = Path::new(program);
    let check = |p: &Path| -> Result<(), ValueError> {
        let meta = std::fs::metadata(p).map_err(|e| ValueError::Unreadable {
            path: p.display().to_string(),
            reason: lower(&e),
        })?;
        if meta.is_dir() {
            return Err(ValueError::IsDirectory(p.display().to_string()));
        }
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(ValueError::NotExecutable(p.display().to_string()));
        }
        Ok(())
    };
    if program.as_bytes().contains(&b'/') {
        check(name).map(|_| name.to_path_buf())
    } else {
        let path =
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        let mut last = None;
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.exists() {
                match check(&candidate) {
                    Ok(()) => return Ok(candidate),
                    Err(e) => last = Some(e),
                }
            }
        }
        Err(last.unwrap_or_else(|| ValueError::NotInPath(program.to_string_lossy().into_owned())))
    }
}

/// The default state directory for an instance name (see [`state_dir_for`]).
pub(crate) fn default_state_dir(name: &str) -> PathBuf {
    state_dir_for(
        name,
        std::env::var_os("XDG_RUNTIME_DIR"),
        nix::unistd::getuid().as_raw(),
    )
}

/// `$XDG_RUNTIME_DIR/reloadsup/NAME`; else `/run/reloadsup/NAME` for root, since any user
/// may create `/tmp/reloadsup-0` first and so stop every start of root's (issue 18, item 10);
/// else `/tmp/reloadsup-UID/NAME`, checked component by component at start.
pub(crate) fn state_dir_for(name: &str, xdg: Option<OsString>, uid: u32) -> PathBuf {
    match xdg {
        Some(dir) if !dir.is_empty() => Path::new(&dir).join("reloadsup").join(name),
        _ if uid == 0 => Path::new("/run/reloadsup").join(name),
        _ => PathBuf::from(format!("/tmp/reloadsup-{uid}")).join(name),
    }
}

/// Where releases before 0.1.0's issue 18 kept root's state without `XDG_RUNTIME_DIR`: `ctl`
/// still looks there for an instance that was upgraded in place and so kept its directory.
/// `ctl` trusts a control socket there only if root or its own user serves it.
pub(crate) fn legacy_state_dir(name: &str) -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty());
    (xdg.is_none() && nix::unistd::getuid().is_root())
        .then(|| PathBuf::from("/tmp/reloadsup-0").join(name))
}

impl Config {
    /// Merges the command line over the config file and validates everything.
    pub(crate) fn from_args(args: RunArgs) -> Result<Config, ConfigError> {
        let text = match &args.config {
            Some(path) => {
                // Bounded, never a FIFO or a device, root's or ours and nobody else's: it
                // names the workers' user and command (issue 18, item 3).
                Some(
                    crate::trusted::read_to_string(path).map_err(|e| ConfigError::ReadFile {
                        path: path.display().to_string(),
                        reason: lower(&e),
                    })?,
                )
            }
            None => None,
        };
        Config::from_text(args, text)
    }

    /// Merges the command line over `text`, the `--config` file's contents as read before,
    /// and validates everything.
    pub(crate) fn from_text(args: RunArgs, text: Option<String>) -> Result<Config, ConfigError> {
        let file = match (&args.config, &text) {
            (Some(path), Some(text)) => {
                toml::from_str::<FileConfig>(text).map_err(|e| ConfigError::ParseFile {
                    path: path.display().to_string().replace('`', "'"),
                    message: nearest_key(e.message().trim()).replace('`', "'"),
                    line: line_of(text, e.span()),
                })?
            }
            _ => FileConfig::default(),
        };
        let from_file = args.config.is_some();
        // The flag when the value came from the command line (or there is no file), else the key.
        let src = |flag: &'static str, key: &'static str, cli: bool| -> Origin {
            if cli || !from_file {
                Origin::Flag(flag)
            } else {
                Origin::Key(key)
            }
        };

        let listen_cli = !args.listen.is_empty();
        let listen = if listen_cli {
            args.listen
        } else {
            file.listen.unwrap_or_default()
        };
        let mut listeners = Vec::new();
        for (i, l) in listen.iter().enumerate() {
            let origin = || src("listen", "listen", listen_cli);
            let spec = parse_listener(l, i).or_else(|e| bad(origin(), e))?;
            if listeners.iter().any(|o: &ListenerSpec| o.name == spec.name) {
                return bad(origin(), ValueError::NameTwice(spec.name));
            }
            // A host name may be given once per address it resolves to, under different names.
            if listeners
                .iter()
                .any(|o: &ListenerSpec| o.address == spec.address)
                && !spec.address.any_port()
                && !matches!(
                    spec.address,
                    Address::Inet {
                        host: crate::address::Host::Name(_),
                        ..
                    }
                )
            {
                return bad(origin(), ValueError::AddressTwice(spec.address.to_string()));
            }
            listeners.push(spec);
        }
        let mut activated = Vec::new();
        for (i, l) in args.inherited_listener.iter().enumerate() {
            let spec =
                parse_listener(l, i).or_else(|e| bad(Origin::Flag("inherited-listener"), e))?;
            activated.push(spec);
        }
        // No listener configured at all: every inherited socket, in order, with its name.
        if listeners.is_empty() {
            listeners = activated.clone();
        }

        let backlog = args.backlog.or(file.backlog).unwrap_or(1024);
        if backlog <= 0 {
            return bad(
                src("backlog", "backlog", args.backlog.is_some()),
                ValueError::NotPositive,
            );
        }
        let workers = args.workers.or(file.workers).unwrap_or(1);
        if workers > 4096 {
            return bad(
                src("workers", "workers", args.workers.is_some()),
                ValueError::OverLimit {
                    value: workers,
                    limit: 4096,
                },
            );
        }

        let watch_cli = !args.watch.is_empty();
        let watch: Vec<PathBuf> = if watch_cli {
            args.watch.clone()
        } else {
            file.watch.clone().unwrap_or_default()
        };
        let mut watched = Vec::with_capacity(watch.len());
        for path in watch {
            if path.file_name().is_none() {
                return bad(
                    src("watch", "watch", watch_cli),
                    ValueError::NotFileName(path.display().to_string()),
                );
            }
            // Absolute, so the watch does not depend on the primary's working directory.
            let path = std::path::absolute(&path).unwrap_or(path);
            // The watch is on the directory (the file itself may come and go).
            if !path.parent().is_some_and(Path::is_dir) {
                return bad(
                    src("watch", "watch", watch_cli),
                    ValueError::NoWatchDirectory(path.display().to_string()),
                );
            }
            watched.push(path);
        }
        let watch_delay = match args.watch_delay.as_ref().or(file.watch_delay.as_ref()) {
            None => Duration::from_millis(500),
            Some(d) => parse_duration(d).or_else(|e| {
                bad(
                    src("watch-delay", "watch-delay", args.watch_delay.is_some()),
                    e,
                )
            })?,
        };

        let prespawn = args.prespawn.or(file.prespawn).unwrap_or(0);
        if prespawn > 4096 {
            return bad(
                src("prespawn", "prespawn", args.prespawn.is_some()),
                ValueError::OverLimit {
                    value: prespawn,
                    limit: 4096,
                },
            );
        }

        macro_rules! pick {
            ($cli:expr, $file:expr, $flag:literal, $key:literal, $default:expr, $parse:expr) => {{
                let cli = $cli.is_some();
                match $cli.or($file) {
                    Some(v) => $parse(&v).or_else(|e| bad(src($flag, $key, cli), e))?,
                    None => $default,
                }
            }};
        }
        let ready = pick!(
            args.ready,
            file.ready,
            "ready",
            "ready",
            ReadyMode::Delay(Duration::from_secs(1)),
            parse_ready
        );
        let ready_timeout = pick!(
            args.ready_timeout,
            file.ready_timeout,
            "ready-timeout",
            "ready-timeout",
            Duration::from_secs(60),
            parse_duration
        );
        let stop_signal = pick!(
            args.stop_signal,
            file.stop_signal,
            "stop-signal",
            "stop-signal",
            Signal::SIGTERM,
            parse_signal
        );
        let stop_signal_to = pick!(
            args.stop_signal_to,
            file.stop_signal_to,
            "stop-signal-to",
            "stop-signal-to",
            StopTarget::Worker,
            parse_stop_target
        );
        let graceful_timeout = pick!(
            args.graceful_timeout,
            file.graceful_timeout,
            "graceful-timeout",
            "graceful-timeout",
            Duration::from_secs(30),
            parse_duration
        );
        let stable_for = pick!(
            args.stable_for,
            file.stable_for,
            "stable-for",
            "stable-for",
            Duration::ZERO,
            parse_duration
        );
        let restart = pick!(
            args.restart,
            file.restart,
            "restart",
            "restart",
            RestartPolicy::OnFailure,
            parse_restart
        );

        let defaults = LogConfig::default();
        let log_output = pick!(
            args.log_output,
            file.log_output,
            "log-output",
            "log-output",
            defaults.output,
            parse_log_output
        );
        let log_json = pick!(
            args.log_format,
            file.log_format,
            "log-format",
            "log-format",
            defaults.json,
            parse_log_format
        );
        let rotate_size = pick!(
            args.log_rotate_size,
            file.log_rotate_size.map(size_text),
            "log-rotate-size",
            "log-rotate-size",
            defaults.rotate_size,
            parse_size
        );
        let rotate_keep = args
            .log_rotate_keep
            .or(file.log_rotate_keep)
            .unwrap_or(defaults.rotate_keep);
        if rotate_keep > 1000 {
            return bad(
                src(
                    "log-rotate-keep",
                    "log-rotate-keep",
                    args.log_rotate_keep.is_some(),
                ),
                ValueError::OverLimit {
                    value: rotate_keep,
                    limit: 1000,
                },
            );
        }
        let ring_cli = args.log_ring.is_some();
        let ring = pick!(
            args.log_ring,
            file.log_ring.map(size_text),
            "log-ring",
            "log-ring",
            defaults.ring,
            parse_size
        );
        if ring > 1 << 30 {
            return bad(
                src("log-ring", "log-ring", ring_cli),
                ValueError::NotSize(format!("{ring} bytes is more than the limit of 1G")),
            );
        }
        let log = LogConfig {
            output: log_output,
            json: log_json,
            rotate_size,
            rotate_keep,
            ring,
        };

        let user_cli = args.user.is_some();
        let (mut uid, mut gid) = (None, None);
        if let Some(user) = args.user.or(file.user) {
            let (u, g) = resolve_user(&user).or_else(|e| bad(src("user", "user", user_cli), e))?;
            uid = Some(u);
            gid = Some(g);
        }
        let group_cli = args.group.is_some();
        if let Some(group) = args.group.or(file.group) {
            gid =
                Some(resolve_group(&group).or_else(|e| bad(src("group", "group", group_cli), e))?);
        }

        let mut env = Vec::new();
        let env_cli = !args.env.is_empty();
        let env_list = if env_cli {
            args.env
        } else {
            file.env.unwrap_or_default()
        };
        for kv in env_list {
            match kv.split_once('=') {
                Some((k, v)) if !k.is_empty() => env.push((OsString::from(k), OsString::from(v))),
                _ => return bad(src("env", "env", env_cli), ValueError::NotKeyValue(kv)),
            }
        }

        let command_cli = !args.command.is_empty();
        let command: Vec<OsString> = if command_cli {
            args.command
        } else {
            file.command
                .unwrap_or_default()
                .into_iter()
                .map(OsString::from)
                .collect()
        };
        let Some(program) = command.first() else {
            return Err(ConfigError::NoCommand);
        };
        let what = || {
            if command_cli {
                Origin::Command
            } else {
                Origin::Key("command")
            }
        };
        resolve_command(program).or_else(|e| bad(what(), e))?;
        for arg in &command {
            substitute(arg, &listeners).or_else(|e| bad(what(), e))?;
        }

        let name_cli = args.name.is_some();
        let name = match args.name.or(file.name) {
            Some(n) => n,
            None => Path::new(program)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| "reloadsup".into()),
        };
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return bad(
                src("name", "name", name_cli),
                ValueError::NotDirectoryName(name),
            );
        }
        let state_dir_cli = args.state_dir.is_some();
        let state_dir = args
            .state_dir
            .or(file.state_dir)
            .unwrap_or_else(|| default_state_dir(&name));
        // Its sockets (control.sock, the workers' n-<16 chars> notify sockets) must fit in a
        // unix socket address; refuse now rather than fail at every spawn.
        let len = state_dir.as_os_str().len();
        if len > MAX_STATE_DIR {
            return bad(
                src("state-dir", "state-dir", state_dir_cli),
                ValueError::StateDirTooLong {
                    path: state_dir.display().to_string(),
                    len,
                    max: MAX_STATE_DIR,
                },
            );
        }
        let pidfile = args.pidfile.or(file.pidfile);

        let metrics_cli = args.metrics.is_some();
        let metrics = match args.metrics.as_ref().or(file.metrics.as_ref()) {
            None => None,
            Some(m) => Some(m.parse::<SocketAddr>().or_else(|_| {
                bad(
                    src("metrics", "metrics", metrics_cli),
                    ValueError::NotAdminAddress(m.clone()),
                )
            })?),
        };
        let admin_cli = args.admin.is_some();
        let admin = match args.admin.or(file.admin) {
            None if args.admin_user.is_some() => {
                return Err(ConfigError::AdminUserWithoutAdmin(Origin::Flag(
                    "admin-user",
                )))
            }
            None if file.admin_user.is_some() => {
                return Err(ConfigError::AdminUserWithoutAdmin(Origin::Key(
                    "admin-user",
                )))
            }
            None => None,
            Some(a) => {
                let address: SocketAddr = a.parse().or_else(|_| {
                    bad(
                        src("admin", "admin", admin_cli),
                        ValueError::NotAdminAddress(a.clone()),
                    )
                })?;
                let mut warnings = Vec::new();
                if file.admin_password_hash.is_some() && file.admin_password_hash_file.is_some() {
                    return Err(ConfigError::BothHashKeys);
                }
                // Command line first, then the config file, then the environment; in each, the
                // hash itself or a file holding it.
                let (password_hash, from) = if let Some(h) = args.admin_password_hash {
                    warnings.push("the console password hash was given on the command line, where every local user can read it (/proc/PID/cmdline); use --admin-password-hash-file or RELOADSUP_ADMIN_PASSWORD_HASH".to_string());
                    (Some(h), "--admin-password-hash".to_string())
                } else if let Some(path) = args.admin_password_hash_file {
                    let what = format!("--admin-password-hash-file {}", path.display());
                    (Some(read_hash_file(&path, &what, &mut warnings)?), what)
                } else if let Some(h) = file.admin_password_hash {
                    (Some(h), "config key 'admin-password-hash'".to_string())
                } else if let Some(path) = file.admin_password_hash_file {
                    let what =
                        format!("config key 'admin-password-hash-file' ({})", path.display());
                    (Some(read_hash_file(&path, &what, &mut warnings)?), what)
                } else {
                    (
                        std::env::var("RELOADSUP_ADMIN_PASSWORD_HASH").ok(),
                        "RELOADSUP_ADMIN_PASSWORD_HASH".to_string(),
                    )
                };
                let Some(password_hash) = password_hash.filter(|h| !h.is_empty()) else {
                    return Err(ConfigError::NeedsPasswordHash);
                };
                // The message never repeats the hash itself.
                crate::password::PasswordHash::parse(&password_hash)
                    .map_err(|error| ConfigError::PasswordHash { from, error })?;
                let cert = args.admin_cert.or(file.admin_cert);
                let key = args.admin_key.or(file.admin_key);
                if cert.is_some() != key.is_some() {
                    return Err(ConfigError::CertWithoutKey);
                }
                let admin_user_cli = args.admin_user.is_some();
                let (admin_uid, admin_gid) = match args.admin_user.or(file.admin_user) {
                    Some(spec) => {
                        let (u, g) = resolve_user_group(&spec)
                            .or_else(|e| bad(src("admin-user", "admin-user", admin_user_cli), e))?;
                        (Some(u), Some(g))
                    }
                    None => {
                        let default = default_admin_user()
                            .or_else(|e| bad(src("admin-user", "admin-user", false), e))?;
                        // Never the workers' user unless asked for (issue 18, item 4).
                        if default.0.is_some() && default.0 == uid {
                            return Err(ConfigError::AdminUserIsWorkers("nobody".into()));
                        }
                        default
                    }
                };
                let workers_uid = uid.unwrap_or_else(|| nix::unistd::geteuid().as_raw());
                if admin_uid.is_some() && admin_uid == Some(workers_uid) {
                    warnings.push(format!(
                        "the shell worker runs as the workers' user (uid {workers_uid}): any \
                         worker process can stop it or use its console programs' control \
                         channel; give --admin-user another user"
                    ));
                }
                let (uid, gid) = (admin_uid, admin_gid);
                Some(Admin {
                    address,
                    cert,
                    key,
                    password_hash,
                    uid,
                    gid,
                    warnings,
                })
            }
        };

        let mut commands = Vec::new();
        for (cname, c) in file.commands.unwrap_or_default() {
            if c.run.is_empty() {
                return Err(ConfigError::EmptyCustomCommand(cname));
            }
            commands.push(reloadsup_protocol::CustomCommand {
                name: cname,
                run: c.run,
                help: c.help,
            });
        }

        Ok(Config {
            name,
            listeners,
            activated,
            backlog,
            workers,
            prespawn,
            ready,
            ready_timeout,
            stop_signal,
            stop_signal_to,
            graceful_timeout,
            stable_for,
            canary: args.canary.or(file.canary).unwrap_or(0),
            restart,
            watch: watched,
            watch_delay,
            metrics,
            uid,
            gid,
            env,
            einhorn_env: args.einhorn_env || file.einhorn_env.unwrap_or(false),
            listen_env: !(args.no_listen_env || file.no_listen_env.unwrap_or(false)),
            subreaper: args.subreaper || file.subreaper.unwrap_or(false),
            state_dir,
            pidfile,
            command,
            admin,
            commands,
            start_text: text.clone(),
            file_text: text,
            log,
        })
    }
}

/// `env` as a list of `"KEY=VALUE"` strings, or as the table TOML users write first
/// (`env = { KEY = "value" }`), turned into that list (issue 22, defect 14).
fn env_list_or_table<'de, D>(d: D) -> Result<Option<Vec<String>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Env;
    impl<'de> serde::de::Visitor<'de> for Env {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of \"KEY=VALUE\" strings or a table of KEY = \"VALUE\"")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(kv) = seq.next_element::<String>()? {
                out.push(kv);
            }
            Ok(out)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((k, v)) = map.next_entry::<String, String>()? {
                if k.is_empty() || k.contains('=') {
                    return Err(serde::de::Error::custom(format!(
                        "'{k}' is not a variable name"
                    )));
                }
                out.push(format!("{k}={v}"));
            }
            Ok(out)
        }
    }
    d.deserialize_any(Env).map(Some)
}

/// toml's message for an unknown key lists all sixty keys; the nearest one, when one is near,
/// reads better (issue 22, defect 14).
fn nearest_key(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_string();
    };
    let Some((field, rest)) = rest.split_once('`') else {
        return message.to_string();
    };
    let nearest = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|key| (strsim::jaro_winkler(field, key), key))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match nearest {
        Some((_, key)) => format!("unknown key `{field}`: did you mean `{key}`?"),
        None => format!(
            "unknown key `{field}` (the keys are the long options' names, as in README's options table)"
        ),
    }
}

/// The line of a TOML error's span, so a typo is easy to find.
fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> Option<usize> {
    let r = span?;
    // `get` rather than slicing: a span is toml's claim, not ours.
    let before = text.get(..r.start.min(text.len()))?;
    Some(before.matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 18, item 10: root's default is under /run, not a /tmp name anyone can take.
    #[test]
    fn roots_default_state_dir_is_under_run() {
        let xdg = Some(OsString::from("/run/user/1000"));
        assert_eq!(
            state_dir_for("web", xdg, 1000),
            Path::new("/run/user/1000/reloadsup/web")
        );
        assert_eq!(
            state_dir_for("web", None, 0),
            Path::new("/run/reloadsup/web")
        );
        assert_eq!(
            state_dir_for("web", Some(OsString::new()), 1000),
            Path::new("/tmp/reloadsup-1000/web")
        );
    }

    /// The config file's `text` under `-c` (never read: the text is given).
    fn from_file(text: &str) -> Result<Config, ConfigError> {
        let args = RunArgs::try_parse_from(["reloadsup", "-c", "/nonexistent.toml"]).unwrap();
        Config::from_text(args, Some(text.to_string()))
    }

    /// Issue 22, defect 14: `env = {K = "v"}`, the natural TOML, was refused as "expected a
    /// sequence"; a misspelt key listed all the keys.
    #[test]
    fn env_as_a_table_and_a_misspelt_key_named_with_the_nearest() {
        let c = from_file("command = [\"/bin/sh\"]\nenv = { A = \"1\", B = \"x=y\" }\n").unwrap();
        assert_eq!(
            c.env,
            [("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        let c = from_file("command = [\"/bin/sh\"]\nenv = [\"A=1\"]\n").unwrap();
        assert_eq!(c.env, [("A".into(), "1".into())]);
        let e = from_file("command = [\"/bin/sh\"]\nenv = 3\n").unwrap_err();
        assert!(e.to_string().contains("a list of"), "{e}");
        let e = from_file("command = [\"/bin/sh\"]\nwokers = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("did you mean 'workers'"), "{e}");
        assert!(!e.contains("backlog"), "the whole list again: {e}");
        let e = from_file("command = [\"/bin/sh\"]\nzzzzqq = 3\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown key 'zzzzqq'") && !e.contains("did you mean"),
            "{e}"
        );
    }

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["reloadsup"];
        argv.extend_from_slice(args);
        let args = RunArgs::try_parse_from(argv).expect("the tests pass well-formed flags");
        Config::from_args(args)
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("5parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn ready_modes() {
        assert_eq!(parse_ready("listening"), Ok(ReadyMode::Listening));
        assert_eq!(parse_ready("notify"), Ok(ReadyMode::Notify));
        assert_eq!(
            parse_ready("delay:250ms"),
            Ok(ReadyMode::Delay(Duration::from_millis(250)))
        );
        let e = parse_ready("listen").unwrap_err().to_string();
        assert!(e.contains("listening"), "{e}");
        let c = parse(&["--ready", "listening", "--", "/bin/sh"]).unwrap();
        assert_eq!(c.ready, ReadyMode::Listening);
        let dir = std::env::temp_dir().join(format!("reloadsup-ready-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ready.toml");
        std::fs::write(&file, "ready = \"listening\"\ncommand = [\"/bin/sh\"]\n").unwrap();
        let c = parse(&["-c", file.to_str().unwrap()]).unwrap();
        assert_eq!(c.ready, ReadyMode::Listening, "the config key");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("TERM"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("sigint"), Ok(Signal::SIGINT));
        assert_eq!(parse_signal("9"), Ok(Signal::SIGKILL));
        assert!(parse_signal("SIGFOO").is_err());
    }

    #[test]
    fn listeners_and_templates() {
        let c = parse(&[
            "-l",
            "web=tcp://127.0.0.1:0",
            "-l",
            "unix:/tmp/x.sock",
            "--",
            "/bin/sh",
            "{fd:web}",
            "--x={fd}",
            "{fd:listen1}",
        ])
        .unwrap();
        assert_eq!(c.listeners[0].name, "web");
        assert_eq!(c.listeners[1].name, "listen1");
        assert_eq!(c.listeners[1].address, Address::Unix("/tmp/x.sock".into()));
        assert_eq!(c.argv(), vec!["/bin/sh", "3", "--x=3", "4"]);
        let e = parse(&["-l", "tcp://127.0.0.1:0", "--", "/bin/sh", "{fd:nope}"]).unwrap_err();
        assert!(e.to_string().contains("{fd:nope}"), "{e}");
    }

    #[test]
    fn ipv6_listener() {
        let c = parse(&["-l", "tcp://[::1]:8080", "--", "/bin/sh"]).unwrap();
        assert_eq!(c.listeners[0].address.to_string(), "tcp://[::1]:8080");
    }

    #[test]
    fn bad_values_name_their_flag() {
        for (args, needle) in [
            (vec!["-l", "tcp://nonsense", "--", "/bin/sh"], "--listen"),
            (
                vec!["--stop-signal", "SIGFOO", "--", "/bin/sh"],
                "--stop-signal",
            ),
            (
                vec!["--ready-timeout", "5parsecs", "--", "/bin/sh"],
                "--ready-timeout",
            ),
            (vec!["--ready", "soon", "--", "/bin/sh"], "--ready"),
            (vec!["--restart", "sometimes", "--", "/bin/sh"], "--restart"),
            (vec!["--", "/nonexistent/server"], "/nonexistent/server"),
            (vec!["--", "no-such-command-here"], "no-such-command-here"),
            (vec![], "no COMMAND"),
            (
                vec!["--admin", "127.0.0.1:9443", "--", "/bin/sh"],
                "--admin-password-hash",
            ),
        ] {
            let e = parse(&args).unwrap_err();
            assert!(e.to_string().contains(needle), "{args:?}: {e}");
        }
    }

    /// Regression: a long --state-dir made every worker's spawn fail ("path must be shorter
    /// than SUN_LEN") and the slots die; it is a usage error at start instead.
    #[test]
    fn a_state_dir_too_long_for_its_sockets_is_refused() {
        let long = format!("/tmp/{}", "d".repeat(MAX_STATE_DIR - 5));
        assert!(parse(&["--state-dir", &long, "--", "/bin/sh"]).is_ok());
        let longer = format!("{long}x");
        let e = parse(&["--state-dir", &longer, "--", "/bin/sh"]).unwrap_err();
        assert!(e.to_string().starts_with("--state-dir: "), "{e}");
        assert!(e.to_string().contains("at most 88 bytes"), "{e}");
    }

    /// Issue 12, item 4, and issue 18, item 4: the shell worker runs as `--admin-user`, else
    /// as nobody under root, never as the workers' user unless asked.
    #[test]
    fn admin_user_defaults_to_nobody_not_the_workers_user() {
        let hash = crate::password::PasswordHash::create(b"pw", 1)
            .unwrap()
            .encode();
        let admin = |args: &[&str]| {
            let mut a = vec!["--admin", "127.0.0.1:0", "--admin-password-hash", &hash];
            a.extend_from_slice(args);
            a.extend_from_slice(&["--", "/bin/sh"]);
            parse(&a).map(|c| c.admin.unwrap())
        };
        // Never the workers' user unless asked: under root, nobody.
        let nobody = nix::unistd::User::from_name("nobody")
            .unwrap()
            .map(|u| (Some(u.uid.as_raw()), Some(u.gid.as_raw())));
        let default = if nix::unistd::geteuid().is_root() {
            nobody.expect("a user nobody")
        } else {
            (None, None)
        };
        let a = admin(&[]).unwrap();
        assert_eq!((a.uid, a.gid), default);
        let a = admin(&["--user", "1234", "--group", "65533"]).unwrap();
        assert_eq!((a.uid, a.gid), default);
        if let Some(nobody) = default.0 {
            // The default would be the workers' user: refused, unless asked for.
            let workers = nobody.to_string();
            let e = admin(&["--user", &workers]).unwrap_err();
            assert!(e.to_string().contains("--admin-user"), "{e}");
            let a = admin(&["--user", &workers, "--admin-user", &workers]).unwrap();
            assert!(a.warnings.iter().any(|w| w.contains("workers' user")));
        }
        assert!(
            !a.warnings.iter().any(|w| w.contains("workers' user")),
            "{:?}",
            a.warnings
        );
        let a = admin(&["--user", "65534", "--admin-user", "65532:65531"]).unwrap();
        assert_eq!((a.uid, a.gid), (Some(65532), Some(65531)));
        // Asked for, or falling on the workers' user: said.
        let a = admin(&["--user", "65532", "--admin-user", "65532:65531"]).unwrap();
        assert!(
            a.warnings.iter().any(|w| w.contains("workers' user")),
            "{:?}",
            a.warnings
        );
        for bad in [":1", "1:", "no-such-user-here", "1:no-such-group-here"] {
            let e = admin(&["--admin-user", bad]).unwrap_err();
            assert!(e.to_string().starts_with("--admin-user: "), "{bad}: {e}");
        }
        let e = parse(&["--admin-user", "1", "--", "/bin/sh"]).unwrap_err();
        assert!(e.to_string().contains("--admin-user needs --admin"), "{e}");
    }

    /// Issue 12, item 7: the hash on argv is readable by every local user, so it can come
    /// from a file (flag or config key) and argv earns a warning.
    #[test]
    fn password_hash_from_a_file_and_a_warning_on_argv() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("reloadsup-hashfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hash = crate::password::PasswordHash::create(b"pw", 1)
            .unwrap()
            .encode();
        let file = dir.join("hash");
        std::fs::write(&file, format!("{hash}\n")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let f = file.to_str().unwrap();
        let admin = |args: &[&str]| {
            let mut a = vec!["--admin", "127.0.0.1:0"];
            a.extend_from_slice(args);
            a.extend_from_slice(&["--", "/bin/sh"]);
            parse(&a).map(|c| c.admin.unwrap())
        };
        let a = admin(&["--admin-password-hash-file", f]).unwrap();
        assert_eq!(a.password_hash, hash);
        assert!(a.warnings.is_empty(), "{:?}", a.warnings);

        let a = admin(&["--admin-password-hash", &hash]).unwrap();
        assert!(a.warnings[0].contains("command line"), "{:?}", a.warnings);

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let a = admin(&["--admin-password-hash-file", f]).unwrap();
        assert!(
            a.warnings[0].contains("readable by other users"),
            "{:?}",
            a.warnings
        );

        let toml = dir.join("c.toml");
        std::fs::write(&toml, format!("admin-password-hash-file = {f:?}\n")).unwrap();
        let a = admin(&["-c", toml.to_str().unwrap()]).unwrap();
        assert_eq!(a.password_hash, hash);

        let missing = dir.join("missing");
        let e = admin(&["--admin-password-hash-file", missing.to_str().unwrap()]).unwrap_err();
        assert!(e.to_string().contains("--admin-password-hash-file"), "{e}");
        std::fs::write(&file, "nonsense\n").unwrap();
        let e = admin(&["--admin-password-hash-file", f]).unwrap_err();
        assert!(
            e.to_string().starts_with("--admin-password-hash-file"),
            "{e}"
        );
        assert!(!e.to_string().contains("nonsense"), "{e}");
        // Both on one command line: clap refuses it, a usage error (exit 2).
        let both = RunArgs::try_parse_from([
            "reloadsup",
            "--admin",
            "127.0.0.1:0",
            "--admin-password-hash",
            &hash,
            "--admin-password-hash-file",
            f,
            "--",
            "/bin/sh",
        ]);
        assert!(both.is_err_and(|e| e.use_stderr()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn config_file_keys_and_typos() {
        let dir =
            std::env::temp_dir().join(format!("reloadsup-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(&good, "listen = [\"tcp://127.0.0.1:0\"]\nworkers = 3\nready-timeout = \"2s\"\ncommand = [\"/bin/sh\"]\n[commands.foo]\nrun = [\"echo\"]\nhelp = \"says hi\"\n").unwrap();
        let c = parse(&["-c", good.to_str().unwrap(), "-n", "5"]).unwrap();
        assert_eq!(c.workers, 5, "the command line wins");
        assert_eq!(c.ready_timeout, Duration::from_secs(2));
        assert_eq!(c.commands[0].name, "foo");
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "workers = 3\nwrokers = 4\n").unwrap();
        let e = parse(&["-c", bad.to_str().unwrap(), "--", "/bin/sh"]).unwrap_err();
        assert!(
            e.to_string().contains("wrokers") && e.to_string().contains("line 2"),
            "{e}"
        );
        let bad_value = dir.join("bad-value.toml");
        std::fs::write(&bad_value, "stop-signal = \"SIGFOO\"\n").unwrap();
        let e = parse(&["-c", bad_value.to_str().unwrap(), "--", "/bin/sh"]).unwrap_err();
        assert!(e.to_string().contains("config key 'stop-signal'"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn stable_for_from_the_flag_and_the_config_key() {
        let c = parse(&["--", "/bin/sh"]).unwrap();
        assert_eq!(c.stable_for, Duration::ZERO, "off unless asked for");
        let c = parse(&["--stable-for", "3s", "--", "/bin/sh"]).unwrap();
        assert_eq!(c.stable_for, Duration::from_secs(3));
        let e = parse(&["--stable-for", "soon", "--", "/bin/sh"]).unwrap_err();
        assert!(e.to_string().contains("stable-for"), "{e}");
        let dir = std::env::temp_dir().join(format!(
            "reloadsup-config-stable-test-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("stable.toml");
        std::fs::write(&file, "stable-for = \"1m\"\ncommand = [\"/bin/sh\"]\n").unwrap();
        let c = parse(&["-c", file.to_str().unwrap()]).unwrap();
        assert_eq!(c.stable_for, Duration::from_secs(60));
        let c = parse(&["-c", file.to_str().unwrap(), "--stable-for", "250ms"]).unwrap();
        assert_eq!(
            c.stable_for,
            Duration::from_millis(250),
            "the command line wins"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn canary_from_the_flag_and_the_config_key() {
        let c = parse(&["--", "/bin/sh"]).unwrap();
        assert_eq!(c.canary, 0, "off unless asked for");
        let c = parse(&["--canary", "2", "--", "/bin/sh"]).unwrap();
        assert_eq!(c.canary, 2);
        let dir = std::env::temp_dir().join(format!(
            "reloadsup-config-canary-test-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("canary.toml");
        std::fs::write(&file, "canary = 1\ncommand = [\"/bin/sh\"]\n").unwrap();
        let c = parse(&["-c", file.to_str().unwrap()]).unwrap();
        assert_eq!(c.canary, 1);
        let c = parse(&["-c", file.to_str().unwrap(), "--canary", "3"]).unwrap();
        assert_eq!(c.canary, 3, "the command line wins");
        std::fs::remove_dir_all(&dir).ok();
    }
}
