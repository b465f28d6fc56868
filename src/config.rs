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

/// A bad flag, key or value. Exit code 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// Where a listener binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(addr) => write!(f, "tcp://{addr}"),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl Address {
    pub fn parse(s: &str) -> Result<Address, String> {
        if let Some(rest) = s.strip_prefix("tcp://") {
            let rest = rest.trim_end_matches('/');
            return rest.parse::<SocketAddr>().map(Address::Tcp).map_err(|_| {
                format!("'{s}' is not a tcp address: expected tcp://HOST:PORT with an IP host, like tcp://127.0.0.1:8080 or tcp://[::1]:8080")
            });
        }
        if let Some(path) = s.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(format!("'{s}' has an empty unix socket path"));
            }
            // sun_path holds 108 bytes including the terminating NUL.
            if path.len() > 107 {
                return Err(format!(
                    "unix socket path '{path}' is {} bytes long, the limit is 107",
                    path.len()
                ));
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        Err(format!(
            "'{s}' is not an address: expected tcp://HOST:PORT or unix:PATH"
        ))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    pub name: String,
    pub address: Address,
}

/// When a new worker counts as ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyMode {
    /// `READY=1` on the notify socket.
    Notify,
    /// Alive for this long.
    Delay(Duration),
    /// As soon as it is spawned.
    Immediate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    OnFailure,
    Always,
    Never,
}

/// The validated configuration of a run.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub listeners: Vec<ListenerSpec>,
    pub backlog: i32,
    pub workers: u32,
    /// Worker roles kept exec'd and waiting for a spec, so a reload costs only the command's
    /// own start.
    pub prespawn: u32,
    pub ready: ReadyMode,
    pub ready_timeout: Duration,
    pub stop_signal: Signal,
    pub graceful_timeout: Duration,
    pub restart: RestartPolicy,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub env: Vec<(OsString, OsString)>,
    pub einhorn_env: bool,
    pub state_dir: PathBuf,
    pub pidfile: Option<PathBuf>,
    /// argv with `{fd:NAME}` templates still in place; see [`Config::argv`].
    pub command: Vec<OsString>,
    pub admin: Option<Admin>,
    pub commands: Vec<reloadsup_protocol::CustomCommand>,
}

#[derive(Debug, Clone)]
pub struct Admin {
    pub address: SocketAddr,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub password_hash: String,
    /// Who the shell worker runs as once it holds its fds: `--admin-user`, else the workers'
    /// `--user`/`--group`, else (both `None`) the primary's own credentials.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// What the user should hear about how the hash was given (on the command line, in a
    /// file others can read), logged once the logger runs.
    pub warnings: Vec<String>,
}

impl Config {
    /// The command with templates replaced by fd numbers: `{fd}` is the first listener,
    /// `{fd:NAME}` the named one. `{{` and `}}` stand for literal braces only around templates.
    pub fn argv(&self) -> Vec<OsString> {
        self.command
            .iter()
            .map(|arg| substitute(arg, &self.listeners).unwrap_or_else(|_| arg.clone()))
            .collect()
    }
}

/// Replaces `{fd}` and `{fd:NAME}` in one argument.
fn substitute(arg: &OsStr, listeners: &[ListenerSpec]) -> Result<OsString, String> {
    let bytes = arg.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"{fd") {
            if let Some(end) = bytes[i..].iter().position(|&b| b == b'}') {
                let inner = &bytes[i + 1..i + end];
                let index = if inner == b"fd" {
                    if listeners.is_empty() {
                        return Err("'{fd}' is used but there is no --listen".into());
                    }
                    Some(0)
                } else if let Some(name) = inner.strip_prefix(b"fd:") {
                    let name = String::from_utf8_lossy(name);
                    match listeners.iter().position(|l| l.name == name) {
                        Some(idx) => Some(idx),
                        None => {
                            return Err(format!(
                                "'{{fd:{name}}}' names no listener; the listeners are: {}",
                                listeners
                                    .iter()
                                    .map(|l| l.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ))
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
#[derive(Debug, Parser, Default)]
#[command(
    name = "reloadsup",
    version,
    about = "Zero-downtime reload supervisor: holds the listening sockets, runs generations of workers, reloads on SIGHUP.",
    override_usage = "reloadsup [OPTIONS] -- COMMAND [ARG...]\n       reloadsup ctl [--name NAME | --control PATH] COMMAND\n       reloadsup console [OPTIONS] HOST:PORT\n       reloadsup hash-password",
    after_help = "Signals: HUP reload, TTIN/TTOU one worker more/fewer, TERM/INT graceful shutdown, QUIT fast shutdown.\nCOMMAND may contain {fd} or {fd:NAME}, replaced by the listener's fd number."
)]
pub struct RunArgs {
    /// Listening socket: [NAME=]tcp://HOST:PORT or [NAME=]unix:PATH (repeatable).
    #[arg(short = 'l', long = "listen", value_name = "[NAME=]ADDR")]
    pub listen: Vec<String>,
    /// Listen backlog [default: 1024].
    #[arg(long, value_name = "N")]
    pub backlog: Option<i32>,
    /// Workers per generation [default: 1].
    #[arg(short = 'n', long, value_name = "N")]
    pub workers: Option<u32>,
    /// Keep N worker processes started ahead of time, so a reload only costs the command's own
    /// start [default: 0].
    #[arg(long, value_name = "N")]
    pub prespawn: Option<u32>,
    /// Readiness: notify | delay:DURATION | immediate [default: delay:1s].
    #[arg(long, value_name = "MODE")]
    pub ready: Option<String>,
    /// How long a new worker may take to become ready [default: 60s].
    #[arg(long, value_name = "D")]
    pub ready_timeout: Option<String>,
    /// Signal that asks a worker to drain [default: TERM].
    #[arg(long, value_name = "SIG")]
    pub stop_signal: Option<String>,
    /// How long a draining worker may take before SIGKILL [default: 30s].
    #[arg(long, value_name = "D")]
    pub graceful_timeout: Option<String>,
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
    /// Instance name [default: COMMAND's file name].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// State directory (control.sock, notify.sock, console certificate).
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
    /// Run the console's shell worker as USER[:GROUP] [default: --user/--group].
    #[arg(long, value_name = "USER[:GROUP]")]
    pub admin_user: Option<String>,
    /// TOML file with the same keys; command-line flags win.
    #[arg(short = 'c', long, value_name = "FILE")]
    pub config: Option<PathBuf>,
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
    workers: Option<u32>,
    prespawn: Option<u32>,
    ready: Option<String>,
    #[serde(alias = "ready_timeout")]
    ready_timeout: Option<String>,
    #[serde(alias = "stop_signal")]
    stop_signal: Option<String>,
    #[serde(alias = "graceful_timeout")]
    graceful_timeout: Option<String>,
    restart: Option<String>,
    user: Option<String>,
    group: Option<String>,
    env: Option<Vec<String>>,
    #[serde(alias = "einhorn_env")]
    einhorn_env: Option<bool>,
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
    command: Option<Vec<String>>,
    commands: Option<BTreeMap<String, FileCommand>>,
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
    let text = std::fs::read_to_string(path)
        .or_else(|e| err(format!("{what}: unable to read: {}", lower(&e))))?;
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

/// Parses a duration: `250ms`, `2s`, `1m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| {
        format!("'{s}' is not a duration: expected a number and a unit, like 250ms, 2s or 1m")
    })?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "'{s}' has an unknown unit '{other}': use ms, s, m or h"
            ))
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a signal: `TERM`, `SIGTERM`, `term` or `15`.
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    let upper = s.trim().to_ascii_uppercase();
    if let Ok(n) = upper.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("'{s}' is not a signal number"));
    }
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map_err(|_| format!("'{s}' is not a signal name: use TERM, INT, QUIT, USR1, ..."))
}

fn parse_ready(s: &str) -> Result<ReadyMode, String> {
    match s {
        "notify" => Ok(ReadyMode::Notify),
        "immediate" => Ok(ReadyMode::Immediate),
        _ => match s.strip_prefix("delay:") {
            Some(d) => parse_duration(d).map(ReadyMode::Delay),
            None => Err(format!(
                "'{s}' is not a readiness mode: use notify, delay:DURATION or immediate"
            )),
        },
    }
}

fn parse_restart(s: &str) -> Result<RestartPolicy, String> {
    match s {
        "on-failure" => Ok(RestartPolicy::OnFailure),
        "always" => Ok(RestartPolicy::Always),
        "never" => Ok(RestartPolicy::Never),
        _ => Err(format!(
            "'{s}' is not a restart policy: use on-failure, always or never"
        )),
    }
}

fn parse_listener(s: &str, index: usize) -> Result<ListenerSpec, String> {
    // A NAME= prefix is recognised only before the scheme, so `unix:/a=b` keeps its '='.
    let (name, addr) = match s.split_once('=') {
        Some((name, addr)) if !name.contains(':') && !name.contains('/') => {
            (name.to_string(), addr)
        }
        _ => (format!("listen{index}"), s),
    };
    if name.is_empty() || name.contains(':') || !name.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!(
            "'{name}' is not a listener name: use letters, digits and punctuation other than ':'"
        ));
    }
    Ok(ListenerSpec {
        name,
        address: Address::parse(addr)?,
    })
}

fn resolve_user(s: &str) -> Result<(u32, u32), String> {
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
        _ => Err(format!("no such user '{s}'")),
    }
}

/// `USER[:GROUP]`, each a name or a number; without a group, the user's own.
fn resolve_user_group(s: &str) -> Result<(u32, u32), String> {
    let (user, group) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    if user.is_empty() || group.is_some_and(str::is_empty) {
        return Err(format!("'{s}' is not USER or USER:GROUP"));
    }
    let (uid, gid) = resolve_user(user)?;
    match group {
        Some(g) => Ok((uid, resolve_group(g)?)),
        None => Ok((uid, gid)),
    }
}

fn resolve_group(s: &str) -> Result<u32, String> {
    if let Ok(gid) = s.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(s) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        _ => Err(format!("no such group '{s}'")),
    }
}

/// Finds `program` the way execvp will: as a path when it has a slash, else in PATH.
pub fn resolve_command(program: &OsStr) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let name = Path::new(program);
    let check = |p: &Path| -> Result<(), String> {
        let meta = std::fs::metadata(p).map_err(|e| format!("{}: {}", p.display(), lower(&e)))?;
        if meta.is_dir() {
            return Err(format!("{} is a directory", p.display()));
        }
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(format!("{} is not executable", p.display()));
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
        Err(last
            .unwrap_or_else(|| format!("'{}' was not found in PATH", program.to_string_lossy())))
    }
}

/// An io error's message without the "(os error N)" tail, in lowercase.
pub fn lower(e: &std::io::Error) -> String {
    let s = e.to_string();
    let s = match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    };
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => s,
    }
}

/// The default state directory for an instance name.
pub fn default_state_dir(name: &str) -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => Path::new(&dir).join("reloadsup").join(name),
        _ => PathBuf::from(format!("/tmp/reloadsup-{}", nix::unistd::getuid())).join(name),
    }
}

impl Config {
    /// Merges the command line over the config file and validates everything.
    pub fn from_args(args: RunArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).or_else(|e| {
                    err(format!(
                        "--config: unable to read {}: {}",
                        path.display(),
                        lower(&e)
                    ))
                })?;
                toml::from_str::<FileConfig>(&text).or_else(|e| {
                    err(
                        format!("--config {}: {}", path.display(), e.message().trim())
                            .replace('`', "'")
                            + &line_of(&text, e.span()),
                    )
                })?
            }
            None => FileConfig::default(),
        };
        let from_file = args.config.is_some();
        let src = |flag: &str, key: &str, cli: bool| -> String {
            if cli || !from_file {
                format!("--{flag}")
            } else {
                format!("config key '{key}'")
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
            let spec = parse_listener(l, i)
                .or_else(|e| err(format!("{}: {e}", src("listen", "listen", listen_cli))))?;
            if listeners.iter().any(|o: &ListenerSpec| o.name == spec.name) {
                return err(format!(
                    "{}: the name '{}' is used twice",
                    src("listen", "listen", listen_cli),
                    spec.name
                ));
            }
            if listeners
                .iter()
                .any(|o: &ListenerSpec| o.address == spec.address)
                && !matches!(&spec.address, Address::Tcp(a) if a.port() == 0)
            {
                return err(format!(
                    "{}: {} is given twice",
                    src("listen", "listen", listen_cli),
                    spec.address
                ));
            }
            listeners.push(spec);
        }

        let backlog = args.backlog.or(file.backlog).unwrap_or(1024);
        if backlog <= 0 {
            return err(format!(
                "{}: must be at least 1",
                src("backlog", "backlog", args.backlog.is_some())
            ));
        }
        let workers = args.workers.or(file.workers).unwrap_or(1);
        if workers > 4096 {
            return err(format!(
                "{}: {workers} is more than the limit of 4096",
                src("workers", "workers", args.workers.is_some())
            ));
        }

        let prespawn = args.prespawn.or(file.prespawn).unwrap_or(0);
        if prespawn > 4096 {
            return err(format!(
                "{}: {prespawn} is more than the limit of 4096",
                src("prespawn", "prespawn", args.prespawn.is_some())
            ));
        }

        macro_rules! pick {
            ($cli:expr, $file:expr, $flag:literal, $key:literal, $default:expr, $parse:expr) => {{
                let cli = $cli.is_some();
                match $cli.or($file) {
                    Some(v) => {
                        $parse(&v).or_else(|e| err(format!("{}: {e}", src($flag, $key, cli))))?
                    }
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
        let graceful_timeout = pick!(
            args.graceful_timeout,
            file.graceful_timeout,
            "graceful-timeout",
            "graceful-timeout",
            Duration::from_secs(30),
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

        let user_cli = args.user.is_some();
        let (mut uid, mut gid) = (None, None);
        if let Some(user) = args.user.or(file.user) {
            let (u, g) = resolve_user(&user)
                .or_else(|e| err(format!("{}: {e}", src("user", "user", user_cli))))?;
            uid = Some(u);
            gid = Some(g);
        }
        let group_cli = args.group.is_some();
        if let Some(group) = args.group.or(file.group) {
            gid = Some(
                resolve_group(&group)
                    .or_else(|e| err(format!("{}: {e}", src("group", "group", group_cli))))?,
            );
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
                _ => {
                    return err(format!(
                        "{}: '{kv}' is not KEY=VALUE",
                        src("env", "env", env_cli)
                    ))
                }
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
            return err("no COMMAND given: put the server to run after '--', like: reloadsup -l tcp://127.0.0.1:8080 -- ./myserver");
        };
        let what = if command_cli {
            "COMMAND".to_string()
        } else {
            "config key 'command'".to_string()
        };
        resolve_command(program).or_else(|e| err(format!("{what}: {e}")))?;
        for arg in &command {
            substitute(arg, &listeners).or_else(|e| err(format!("{what}: {e}")))?;
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
            return err(format!(
                "{}: '{name}' is not usable as a directory name",
                src("name", "name", name_cli)
            ));
        }
        let state_dir = args
            .state_dir
            .or(file.state_dir)
            .unwrap_or_else(|| default_state_dir(&name));
        let pidfile = args.pidfile.or(file.pidfile);

        let admin_cli = args.admin.is_some();
        let admin = match args.admin.or(file.admin) {
            None if args.admin_user.is_some() => return err("--admin-user needs --admin"),
            None if file.admin_user.is_some() => {
                return err("config key 'admin-user' needs the key 'admin'")
            }
            None => None,
            Some(a) => {
                let address: SocketAddr = a.parse().or_else(|_| {
                    err(format!(
                        "{}: '{a}' is not HOST:PORT with an IP host, like 127.0.0.1:9443",
                        src("admin", "admin", admin_cli)
                    ))
                })?;
                let mut warnings = Vec::new();
                if file.admin_password_hash.is_some() && file.admin_password_hash_file.is_some() {
                    return err("config keys 'admin-password-hash' and 'admin-password-hash-file' cannot both be given");
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
                    return err("--admin needs --admin-password-hash-file (or RELOADSUP_ADMIN_PASSWORD_HASH, or --admin-password-hash): make one with 'reloadsup hash-password'");
                };
                // The message never repeats the hash itself.
                crate::shell::auth::PasswordHash::parse(&password_hash).or_else(|e| {
                    err(format!(
                        "{from}: {e}; make one with 'reloadsup hash-password'"
                    ))
                })?;
                let cert = args.admin_cert.or(file.admin_cert);
                let key = args.admin_key.or(file.admin_key);
                if cert.is_some() != key.is_some() {
                    return err("--admin-cert and --admin-key go together");
                }
                let admin_user_cli = args.admin_user.is_some();
                let (uid, gid) = match args.admin_user.or(file.admin_user) {
                    Some(spec) => {
                        let (u, g) = resolve_user_group(&spec).or_else(|e| {
                            err(format!(
                                "{}: {e}",
                                src("admin-user", "admin-user", admin_user_cli)
                            ))
                        })?;
                        (Some(u), Some(g))
                    }
                    None => (uid, gid),
                };
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
                return err(format!("config key 'commands.{cname}.run' is empty"));
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
            backlog,
            workers,
            prespawn,
            ready,
            ready_timeout,
            stop_signal,
            graceful_timeout,
            restart,
            uid,
            gid,
            env,
            einhorn_env: args.einhorn_env || file.einhorn_env.unwrap_or(false),
            state_dir,
            pidfile,
            command,
            admin,
            commands,
        })
    }
}

/// " (line N)" for a TOML error's span, so a typo is easy to find.
fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(r) => {
            let line = text[..r.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["reloadsup"];
        argv.extend_from_slice(args);
        let args = RunArgs::try_parse_from(argv).map_err(|e| ConfigError(e.to_string()))?;
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
        assert!(e.0.contains("{fd:nope}"), "{e}");
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
            assert!(e.0.contains(needle), "{args:?}: {e}");
        }
    }

    /// Issue 12, item 4: the shell worker runs as `--admin-user`, else as the workers' user.
    #[test]
    fn admin_user_defaults_to_the_workers_user() {
        let hash = crate::shell::auth::PasswordHash::create(b"pw", 1)
            .unwrap()
            .encode();
        let admin = |args: &[&str]| {
            let mut a = vec!["--admin", "127.0.0.1:0", "--admin-password-hash", &hash];
            a.extend_from_slice(args);
            a.extend_from_slice(&["--", "/bin/sh"]);
            parse(&a).map(|c| c.admin.unwrap())
        };
        let a = admin(&[]).unwrap();
        assert_eq!((a.uid, a.gid), (None, None));
        let a = admin(&["--user", "65534", "--group", "65533"]).unwrap();
        assert_eq!((a.uid, a.gid), (Some(65534), Some(65533)));
        let a = admin(&["--user", "65534", "--admin-user", "65532:65531"]).unwrap();
        assert_eq!((a.uid, a.gid), (Some(65532), Some(65531)));
        for bad in [":1", "1:", "no-such-user-here", "1:no-such-group-here"] {
            let e = admin(&["--admin-user", bad]).unwrap_err();
            assert!(e.0.starts_with("--admin-user: "), "{bad}: {e}");
        }
        let e = parse(&["--admin-user", "1", "--", "/bin/sh"]).unwrap_err();
        assert!(e.0.contains("--admin-user needs --admin"), "{e}");
    }

    /// Issue 12, item 7: the hash on argv is readable by every local user, so it can come
    /// from a file (flag or config key) and argv earns a warning.
    #[test]
    fn password_hash_from_a_file_and_a_warning_on_argv() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("reloadsup-hashfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hash = crate::shell::auth::PasswordHash::create(b"pw", 1)
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
        assert!(e.0.contains("--admin-password-hash-file"), "{e}");
        std::fs::write(&file, "nonsense\n").unwrap();
        let e = admin(&["--admin-password-hash-file", f]).unwrap_err();
        assert!(e.0.starts_with("--admin-password-hash-file"), "{e}");
        assert!(!e.0.contains("nonsense"), "{e}");
        let e = admin(&[
            "--admin-password-hash",
            &hash,
            "--admin-password-hash-file",
            f,
        ]);
        assert!(e.is_err());
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
        assert!(e.0.contains("wrokers") && e.0.contains("line 2"), "{e}");
        let bad_value = dir.join("bad-value.toml");
        std::fs::write(&bad_value, "stop-signal = \"SIGFOO\"\n").unwrap();
        let e = parse(&["-c", bad_value.to_str().unwrap(), "--", "/bin/sh"]).unwrap_err();
        assert!(e.0.contains("config key 'stop-signal'"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
