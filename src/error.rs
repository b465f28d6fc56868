//! The error types of reloadsup's layers, and the one place that maps them to exit codes.
//!
//! Each layer has a concrete enum with a hand-written `Display`: one lowercase line with its
//! context, like "unable to bind tcp://127.0.0.1:80: permission denied", ready to be printed
//! as it is. Because the user sees only that line, `Display` includes the cause's message too;
//! `source()` still returns the cause for a program that wants to look at it. Nothing here
//! does I/O or decides what to do about an error: the primary's loop, the roles and the
//! clients do.

use std::fmt;
use std::io;

use reloadsup_protocol::{SetupFailure, SetupStage};

/// Exit status of a successful run (DESIGN.md section 3).
pub(crate) const EXIT_OK: u8 = 0;
/// Exit status for anything that went wrong but bad usage.
pub(crate) const EXIT_FAILURE: u8 = 1;
/// Exit status for bad usage or a bad config: the message names the flag or key.
pub(crate) const EXIT_USAGE: u8 = 2;

/// An io error's message without the "(os error N)" tail, in lowercase.
pub(crate) fn lower(e: &io::Error) -> String {
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

/// Whatever ends a run of the executable with an error, by layer. [`Error::exit_code`] is the
/// one place that turns an error into an exit status; `main_with` prints it.
#[derive(Debug)]
pub(crate) enum Error {
    /// clap's own: a usage error, or `--help`/`--version` (which clap prints and which exit 0).
    Cli(clap::Error),
    /// The run mode's command line or config file.
    Config(ConfigError),
    /// The primary could not start, or had to stop.
    Fatal(Fatal),
    /// `reloadsup ctl` could not get an answer, or got an error for one.
    Ctl(CtlError),
    /// The sockets a socket activator passed cannot be used.
    Activation(ActivationError),
}

impl Error {
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Error::Cli(e) if e.use_stderr() => EXIT_USAGE,
            Error::Cli(_) => EXIT_OK,
            Error::Config(_) => EXIT_USAGE,
            Error::Fatal(e) => e.exit_code(),
            Error::Ctl(_) => EXIT_FAILURE,
            Error::Activation(_) => EXIT_USAGE,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Cli(e) => e.fmt(f),
            Error::Config(e) => e.fmt(f),
            Error::Fatal(e) => e.fmt(f),
            Error::Ctl(e) => e.fmt(f),
            Error::Activation(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Cli(e) => Some(e),
            Error::Config(e) => Some(e),
            Error::Fatal(e) => Some(e),
            Error::Ctl(e) => Some(e),
            Error::Activation(e) => Some(e),
        }
    }
}

impl From<clap::Error> for Error {
    fn from(e: clap::Error) -> Error {
        Error::Cli(e)
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Error {
        Error::Config(e)
    }
}

impl From<Fatal> for Error {
    fn from(e: Fatal) -> Error {
        Error::Fatal(e)
    }
}

impl From<ActivationError> for Error {
    fn from(e: ActivationError) -> Error {
        Error::Activation(e)
    }
}

impl From<CtlError> for Error {
    fn from(e: CtlError) -> Error {
        Error::Ctl(e)
    }
}

// ---------------------------------------------------------------------------------------------
// `reloadsup ctl`
// ---------------------------------------------------------------------------------------------

/// Why `reloadsup ctl` got no answer. Exit 1, like a failed request.
#[derive(Debug)]
pub(crate) enum CtlError {
    /// Nothing answers on the control socket.
    NoInstance {
        path: String,
        source: io::Error,
    },
    /// No `--name` or `--control`, and no instance in the default place.
    NoneFound {
        base: String,
    },
    /// No `--name` or `--control`, and several instances in the default place.
    SeveralFound {
        base: String,
        found: Vec<String>,
    },
    /// The server at the control socket runs as neither our uid nor root.
    ForeignServer {
        path: String,
        uid: u32,
        ours: u32,
    },
    PeerCredentials {
        path: String,
        source: io::Error,
    },
    /// Setting the socket's timeouts failed.
    Setup(io::Error),
    Send(io::Error),
    Lost(io::Error),
    /// No answer within `--timeout`.
    Timeout,
    Closed,
    /// The primary's frames did not decode, or its hello was not ours.
    Protocol(reloadsup_protocol::Error),
    /// The primary answered with an error.
    Refused(String),
    /// The primary answered with a reply that does not fit the request.
    UnexpectedReply(String),
}

impl fmt::Display for CtlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAME_ONE: &str = "name one with --name NAME or --control PATH";
        match self {
            CtlError::NoInstance { path, source } => write!(
                f,
                "no reloadsup instance answers at {path} ({}); name another with --name NAME or --control PATH",
                lower(source)
            ),
            CtlError::NoneFound { base } => {
                write!(f, "no reloadsup instance found under {base}; {NAME_ONE}")
            }
            CtlError::SeveralFound { base, found } => write!(
                f,
                "several instances run under {base}: {NAME_ONE} ({})",
                found.join(", ")
            ),
            CtlError::ForeignServer { path, uid, ours } => write!(
                f,
                "refusing the server at {path}: it runs as uid {uid}, not as uid {ours} or root"
            ),
            CtlError::PeerCredentials { path, source } => write!(
                f,
                "unable to check the server's uid at {path}: {}",
                lower(source)
            ),
            CtlError::Setup(e) => write!(f, "unable to set a timeout: {}", lower(e)),
            CtlError::Timeout => f.write_str(
                "the primary did not answer in time (stopped or overloaded?); give more with --timeout",
            ),
            CtlError::Send(e) => write!(f, "unable to send to the primary: {}", lower(e)),
            CtlError::Lost(e) => write!(f, "lost the primary: {}", lower(e)),
            CtlError::Closed => f.write_str("the primary closed the connection"),
            CtlError::Protocol(e) => e.fmt(f),
            CtlError::Refused(text) => f.write_str(text),
            CtlError::UnexpectedReply(what) => write!(f, "unexpected reply: {what}"),
        }
    }
}

impl std::error::Error for CtlError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CtlError::NoInstance { source, .. } | CtlError::PeerCredentials { source, .. } => {
                Some(source)
            }
            CtlError::Send(e) | CtlError::Lost(e) | CtlError::Setup(e) => Some(e),
            CtlError::Protocol(e) => Some(e),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The command line and the config file
// ---------------------------------------------------------------------------------------------

/// Where a bad value came from; a message always names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A command-line flag, by its long name without the dashes.
    Flag(&'static str),
    /// A key of the config file.
    Key(&'static str),
    /// The command after `--`.
    Command,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "--{flag}"),
            Origin::Key(key) => write!(f, "config key '{key}'"),
            Origin::Command => f.write_str("COMMAND"),
        }
    }
}

/// What is wrong with one value, whatever flag or key it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ValueError {
    NotInetAddress(String),
    NotFileName(String),
    NoWatchDirectory(String),
    ListenOption {
        option: String,
        problem: String,
    },
    EmptyUnixPath(String),
    UnixPathTooLong {
        path: String,
        len: usize,
    },
    NotAddress(String),
    NotListenerName(String),
    NameTwice(String),
    AddressTwice(String),
    NotDuration(String),
    DurationUnit {
        value: String,
        unit: String,
    },
    DurationRange(String),
    NotSignalNumber(String),
    NotSignalName(String),
    NotReadyMode(String),
    NotRestartPolicy(String),
    NotStopTarget(String),
    NoUser(String),
    NoGroup(String),
    /// `--admin-user` that is not `USER` or `USER:GROUP`.
    NotUserGroup(String),
    NotPositive,
    OverLimit {
        value: u32,
        limit: u32,
    },
    NotKeyValue(String),
    NotDirectoryName(String),
    /// Sockets in the state directory would not fit a unix socket address.
    StateDirTooLong {
        path: String,
        len: usize,
        max: usize,
    },
    NotAdminAddress(String),
    /// The command's file: `stat` failed.
    Unreadable {
        path: String,
        reason: String,
    },
    IsDirectory(String),
    NotExecutable(String),
    NotInPath(String),
    /// `{fd}` with no `--listen`.
    FdWithoutListener,
    /// `{fd:NAME}` naming no listener; `names` lists the listeners.
    NoSuchListener {
        name: String,
        names: String,
    },
    NotLogOutput(String),
    NotLogFormat(String),
    NotSize(String),
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueError::NotFileName(s) => write!(f, "'{s}' does not name a file"),
            ValueError::NoWatchDirectory(s) => write!(f, "the directory of '{s}' does not exist (the watch is on the directory, so the file may be replaced)"),
            ValueError::NotInetAddress(s) => write!(f, "'{s}' is not an internet address: expected HOST:PORT with an IP address, a host name or nothing (every interface) as HOST, like 127.0.0.1:8080, [::1]:8080, localhost:8080, :8080 or 8080"),
            ValueError::ListenOption { option, problem } => write!(f, "listen option '{option}' {problem}"),
            ValueError::EmptyUnixPath(s) => write!(f, "'{s}' has an empty unix socket path"),
            ValueError::StateDirTooLong { path, len, max } => write!(f, "'{path}' is {len} bytes long; the sockets inside it need it to be at most {max} bytes"),
            ValueError::UnixPathTooLong { path, len } => write!(f, "unix socket path '{path}' is {len} bytes long, the limit is 107"),
            ValueError::NotAddress(s) => write!(f, "'{s}' is not an address: expected [tcp://]HOST:PORT, :PORT, PORT, udp://HOST:PORT, unix:PATH or unix:@NAME, with options after '?'"),
            ValueError::NotListenerName(name) => write!(f, "'{name}' is not a listener name: use letters, digits and punctuation other than ':'"),
            ValueError::NameTwice(name) => write!(f, "the name '{name}' is used twice"),
            ValueError::AddressTwice(address) => write!(f, "{address} is given twice"),
            ValueError::NotDuration(s) => write!(f, "'{s}' is not a duration: expected a number and a unit, like 250ms, 2s or 1m"),
            ValueError::DurationUnit { value, unit } => write!(f, "'{value}' has an unknown unit '{unit}': use ms, s, m or h"),
            ValueError::DurationRange(s) => write!(f, "'{s}' is out of range"),
            ValueError::NotSignalNumber(s) => write!(f, "'{s}' is not a signal number"),
            ValueError::NotSignalName(s) => write!(f, "'{s}' is not a signal name: use TERM, INT, QUIT, USR1, ..."),
            ValueError::NotReadyMode(s) => write!(f, "'{s}' is not a readiness mode: use notify, listening, delay:DURATION or immediate"),
            ValueError::NotRestartPolicy(s) => write!(f, "'{s}' is not a restart policy: use on-failure, always or never"),
            ValueError::NotStopTarget(s) => write!(f, "'{s}' is not a stop signal target: use worker or group"),
            ValueError::NoUser(s) => write!(f, "no such user '{s}'"),
            ValueError::NoGroup(s) => write!(f, "no such group '{s}'"),
            ValueError::NotPositive => f.write_str("must be at least 1"),
            ValueError::OverLimit { value, limit } => write!(f, "{value} is more than the limit of {limit}"),
            ValueError::NotKeyValue(s) => write!(f, "'{s}' is not KEY=VALUE"),
            ValueError::NotDirectoryName(s) => write!(f, "'{s}' is not usable as a directory name"),
            ValueError::NotAdminAddress(s) => write!(f, "'{s}' is not HOST:PORT with an IP host, like 127.0.0.1:9443"),
            ValueError::Unreadable { path, reason } => write!(f, "{path}: {reason}"),
            ValueError::IsDirectory(path) => write!(f, "{path} is a directory"),
            ValueError::NotExecutable(path) => write!(f, "{path} is not executable"),
            ValueError::NotInPath(name) => write!(f, "'{name}' was not found in PATH"),
            ValueError::FdWithoutListener => f.write_str("'{fd}' is used but there is no --listen"),
            ValueError::NotUserGroup(s) => write!(f, "'{s}' is not USER or USER:GROUP"),
            ValueError::NotLogOutput(s) => write!(f, "'{s}' is not a log output: use inherit, stdout or file:PATH"),
            ValueError::NotLogFormat(s) => write!(f, "'{s}' is not a log format: use text or json"),
            ValueError::NotSize(s) => write!(f, "'{s}' is not a size: expected a number of bytes with an optional K, M or G, like 100M"),
            ValueError::NoSuchListener { name, names } => write!(f, "'{{fd:{name}}}' names no listener; the listeners are: {names}"),
        }
    }
}

impl std::error::Error for ValueError {}

/// A bad command line or config file: exit 2. Each message names the flag or key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConfigError {
    /// A value that is wrong in itself or next to the others.
    Value {
        origin: Origin,
        error: ValueError,
    },
    /// `--config` names a file that cannot be read; `reason` is the io error's message.
    ReadFile {
        path: String,
        reason: String,
    },
    /// The config file is not valid TOML of our keys.
    ParseFile {
        path: String,
        message: String,
        line: Option<usize>,
    },
    NoCommand,
    NeedsPasswordHash,
    /// The password hash does not parse; `from` names where it came from; the message never
    /// repeats the hash.
    PasswordHash {
        from: String,
        error: crate::password::HashError,
    },
    /// A password hash file that cannot be read; `what` names the flag or key and the path.
    HashFile {
        what: String,
        reason: String,
    },
    /// Both `admin-password-hash` and `admin-password-hash-file` in the config file.
    BothHashKeys,
    CertWithoutKey,
    /// `[commands.NAME]` with an empty `run`.
    EmptyCustomCommand(String),
    /// `--admin-user` (or the key) without the console.
    AdminUserWithoutAdmin(Origin),
    /// No `--admin-user`, and the default one (`nobody`) is the workers' user too.
    AdminUserIsWorkers(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Value { origin, error } => write!(f, "{origin}: {error}"),
            ConfigError::ReadFile { path, reason } => {
                write!(f, "--config: unable to read {path}: {reason}")
            }
            ConfigError::ParseFile {
                path,
                message,
                line,
            } => {
                write!(f, "--config {path}: {message}")?;
                match line {
                    Some(line) => write!(f, " (line {line})"),
                    None => Ok(()),
                }
            }
            ConfigError::NoCommand => f.write_str("no COMMAND given: put the server to run after '--', like: reloadsup -l tcp://127.0.0.1:8080 -- ./myserver"),
            ConfigError::NeedsPasswordHash => f.write_str("--admin needs --admin-password-hash-file (or RELOADSUP_ADMIN_PASSWORD_HASH, or --admin-password-hash): make one with 'reloadsup hash-password'"),
            ConfigError::PasswordHash { from, error } => write!(f, "{from}: {error}; make one with 'reloadsup hash-password'"),
            ConfigError::HashFile { what, reason } => write!(f, "{what}: unable to read: {reason}"),
            ConfigError::BothHashKeys => f.write_str("config keys 'admin-password-hash' and 'admin-password-hash-file' cannot both be given"),
            ConfigError::CertWithoutKey => f.write_str("--admin-cert and --admin-key go together"),
            ConfigError::AdminUserIsWorkers(user) => write!(f, "--admin: the console's shell worker would run as {user}, which is also the workers' user (--user), so any worker process could stop it or use its console programs' channel: give --admin-user a user of its own (or --admin-user {user} to accept that)"),
            ConfigError::EmptyCustomCommand(name) => write!(f, "config key 'commands.{name}.run' is empty"),
            ConfigError::AdminUserWithoutAdmin(origin) => write!(f, "{origin} needs --admin"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Value { error, .. } => Some(error),
            ConfigError::PasswordHash { error, .. } => Some(error),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The primary
// ---------------------------------------------------------------------------------------------

/// A listener that could not be bound. `flag` is how the user asked for it: `--listen NAME`
/// for a worker listener, `--admin` for the console's.
#[derive(Debug)]
pub(crate) struct BindError {
    pub flag: String,
    pub address: String,
    pub source: io::Error,
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: unable to bind {}: {}",
            self.flag,
            self.address,
            lower(&self.source)
        )
    }
}

impl std::error::Error for BindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Why the primary could not start, or had to stop: it logs the message and exits. The
/// variants the user can fix with a flag exit 2, the others 1; see [`Fatal::exit_code`].
#[derive(Debug)]
pub(crate) enum Fatal {
    /// A listener (or the console's) cannot be bound: in use, not permitted, bad path.
    Bind(BindError),
    /// `--state-dir` cannot be created or used; `problem` says why.
    StateDir { dir: String, problem: String },
    /// Another instance with the same name answers on the control socket.
    AlreadyRunning { name: String, control: String },
    /// `--pidfile` cannot be written.
    Pidfile { problem: String },
    /// `--admin-cert`/`--admin-key` cannot be loaded, or no identity can be made.
    AdminIdentity(String),
    /// `--log-output file:PATH` names a file in a directory that fails the checks of
    /// `logfile.rs`; `problem` says which.
    LogFile { path: String, problem: String },
    /// The console's shell worker should switch credentials and the primary is not root.
    AdminUser { uid: u32, gid: u32 },
    /// The notify or the control socket cannot be bound.
    Socket {
        what: &'static str,
        path: String,
        source: io::Error,
    },
    /// A system facility the primary needs failed: `what` is the step, like "create the
    /// poll" or "install signal handlers".
    System {
        what: &'static str,
        source: io::Error,
    },
    /// The new image of an upgrade in place cannot take over the hand-off (the pre-flight
    /// proved it could; the configuration file may have changed since).
    Resume(String),
    /// An inherited socket cannot serve the listener that names it.
    Activation(ActivationError),
}

impl Fatal {
    /// Exit codes, DESIGN.md section 3: 2 for what the user asked and can fix by a flag.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Fatal::Bind(_)
            | Fatal::StateDir { .. }
            | Fatal::AlreadyRunning { .. }
            | Fatal::Pidfile { .. }
            | Fatal::AdminIdentity(_)
            | Fatal::AdminUser { .. }
            | Fatal::LogFile { .. }
            | Fatal::Activation(_) => EXIT_USAGE,
            Fatal::Socket { .. } | Fatal::System { .. } | Fatal::Resume(_) => EXIT_FAILURE,
        }
    }

    /// A failure of a system call the primary needs, at `what`.
    pub(crate) fn system(what: &'static str) -> impl FnOnce(io::Error) -> Fatal {
        move |source| Fatal::System { what, source }
    }
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fatal::Bind(e) => e.fmt(f),
            Fatal::StateDir { dir, problem } => write!(f, "--state-dir {dir}: {problem}"),
            Fatal::LogFile { path, problem } => write!(f, "--log-output file:{path}: {problem}"),
            Fatal::AlreadyRunning { name, control } => write!(
                f,
                "another reloadsup named '{name}' is running (control socket {control}); give this one another --name or --state-dir"
            ),
            Fatal::Pidfile { problem } => write!(f, "--pidfile: {problem}"),
            Fatal::AdminIdentity(e) => write!(f, "--admin-cert/--admin-key: {e}"),
            Fatal::AdminUser { uid, gid } => write!(
                f,
                "--admin-user: the console's shell worker cannot switch to uid {uid} gid {gid} (by default those of --user/--group): only root can"
            ),
            Fatal::Socket { what, path, source } => {
                write!(f, "unable to bind the {what} socket {path}: {}", lower(source))
            }
            Fatal::System { what, source } => write!(f, "unable to {what}: {}", lower(source)),
            Fatal::Resume(why) => write!(f, "upgrade in place: unable to resume: {why}"),
            Fatal::Activation(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Fatal {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Fatal::Bind(e) => Some(e),
            Fatal::Socket { source, .. } | Fatal::System { source, .. } => Some(source),
            Fatal::Activation(e) => Some(e),
            Fatal::StateDir { .. }
            | Fatal::Resume(_)
            | Fatal::Pidfile { .. }
            | Fatal::AlreadyRunning { .. }
            | Fatal::AdminIdentity(_)
            | Fatal::AdminUser { .. }
            | Fatal::LogFile { .. } => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Socket activation of the primary
// ---------------------------------------------------------------------------------------------

/// Why the sockets passed by a socket activator (`LISTEN_FDS`) cannot be used. Exit 2: the
/// unit or the activator's command line is what the user fixes.
#[derive(Debug)]
pub(crate) enum ActivationError {
    /// `LISTEN_PID` names this process but `LISTEN_FDS` is missing.
    NoCount,
    /// `LISTEN_FDS` is not a number of fds.
    BadCount(String),
    /// `LISTEN_FDNAMES` does not name each fd once.
    NameCount { names: String, count: usize },
    /// An inherited fd is not a socket reloadsup can serve.
    Fd {
        fd: i32,
        name: String,
        problem: String,
    },
    /// `--listen NAME=...` names an inherited socket of another kind.
    Kind {
        name: String,
        wanted: String,
        inherited: String,
    },
}

impl fmt::Display for ActivationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActivationError::NoCount => {
                write!(f, "socket activation: LISTEN_PID is set but LISTEN_FDS is not")
            }
            ActivationError::BadCount(s) => write!(
                f,
                "socket activation: LISTEN_FDS={s} is not a number of fds (0 to 4096)"
            ),
            ActivationError::NameCount { names, count } => write!(
                f,
                "socket activation: LISTEN_FDNAMES={names} does not name each of the {count} fds of LISTEN_FDS"
            ),
            ActivationError::Fd { fd, name, problem } => write!(
                f,
                "socket activation: inherited fd {fd} ({name}) is unusable: {problem}"
            ),
            ActivationError::Kind {
                name,
                wanted,
                inherited,
            } => write!(
                f,
                "--listen {name}: names the inherited socket {inherited}, which is not the kind of {wanted}"
            ),
        }
    }
}

impl std::error::Error for ActivationError {}

// ---------------------------------------------------------------------------------------------
// The worker role's setup
// ---------------------------------------------------------------------------------------------

/// Why a worker role could not run the command. The role prints it, sends it to the primary as
/// a [`SetupFailure`], and the primary rebuilds it from there for the reload's reason.
#[derive(Debug)]
pub(crate) enum SetupError {
    /// The spec or the listener fds did not arrive intact.
    Handoff(io::Error),
    /// The primary speaks another protocol version (its binary was replaced by another one).
    Protocol { ours: u32, theirs: u32 },
    /// The parent-death signal could not be set, or the parent is already gone.
    ParentDeath(io::Error),
    /// `setgroups` refused the one supplementary group.
    Groups { gid: u32, source: io::Error },
    /// `setgid` refused.
    Group { gid: u32, source: io::Error },
    /// `setuid` refused.
    User { uid: u32, source: io::Error },
    /// The listeners could not be placed at fd 3...
    Fds(io::Error),
    /// The role could not leave the batch scheduling class a spare waits in.
    Scheduling(io::Error),
    /// `execvp` of the command failed.
    Exec { program: String, source: io::Error },
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupError::Handoff(e) => {
                write!(f, "unable to receive the hand-off from the primary: {}", lower(e))
            }
            SetupError::Protocol { ours, theirs } => write!(
                f,
                "protocol version mismatch: the worker role speaks version {ours}, the primary version {theirs}"
            ),
            SetupError::ParentDeath(e) => {
                write!(f, "unable to set the parent-death signal: {}", lower(e))
            }
            SetupError::Groups { gid, source } => write!(
                f,
                "unable to set the supplementary groups to gid {gid}: {}",
                lower(source)
            ),
            SetupError::Group { gid, source } => {
                write!(f, "unable to switch to gid {gid}: {}", lower(source))
            }
            SetupError::User { uid, source } => {
                write!(f, "unable to switch to uid {uid}: {}", lower(source))
            }
            SetupError::Fds(e) => write!(f, "unable to place the listeners at fd 3: {}", lower(e)),
            SetupError::Scheduling(e) => {
                write!(f, "unable to leave the batch scheduling class: {}", lower(e))
            }
            SetupError::Exec { program, source } => {
                write!(f, "unable to run {program}: {}", lower(source))
            }
        }
    }
}

impl std::error::Error for SetupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SetupError::Protocol { .. } => None,
            SetupError::Handoff(e)
            | SetupError::ParentDeath(e)
            | SetupError::Fds(e)
            | SetupError::Scheduling(e)
            | SetupError::Groups { source: e, .. }
            | SetupError::Group { source: e, .. }
            | SetupError::User { source: e, .. }
            | SetupError::Exec { source: e, .. } => Some(e),
        }
    }
}

impl SetupError {
    /// The wire form the role sends to the primary.
    pub(crate) fn to_wire(&self) -> SetupFailure {
        let (stage, cause) = match self {
            SetupError::Handoff(e) => (SetupStage::Handoff, Some(e)),
            SetupError::Protocol { ours, theirs } => (
                SetupStage::Protocol {
                    ours: *ours,
                    theirs: *theirs,
                },
                None,
            ),
            SetupError::ParentDeath(e) => (SetupStage::ParentDeath, Some(e)),
            SetupError::Groups { gid, source } => (SetupStage::Groups { gid: *gid }, Some(source)),
            SetupError::Group { gid, source } => (SetupStage::Group { gid: *gid }, Some(source)),
            SetupError::User { uid, source } => (SetupStage::User { uid: *uid }, Some(source)),
            SetupError::Fds(e) => (SetupStage::Fds, Some(e)),
            SetupError::Scheduling(e) => (SetupStage::Scheduling, Some(e)),
            SetupError::Exec { source, .. } => (SetupStage::Exec, Some(source)),
        };
        let errno = cause.and_then(io::Error::raw_os_error).unwrap_or(0);
        let detail = match cause {
            Some(e) if errno == 0 => lower(e),
            _ => String::new(),
        };
        SetupFailure {
            stage,
            errno,
            detail,
        }
    }

    /// Rebuilds the error from its wire form. `program` is the command's argv[0], which the
    /// primary knows and the message does not repeat.
    pub(crate) fn from_wire(failure: &SetupFailure, program: &str) -> SetupError {
        let cause = || {
            if failure.errno != 0 {
                io::Error::from_raw_os_error(failure.errno)
            } else {
                // Bounded: the text came from another process.
                io::Error::other(failure.detail.chars().take(256).collect::<String>())
            }
        };
        match failure.stage {
            SetupStage::Handoff => SetupError::Handoff(cause()),
            SetupStage::Protocol { ours, theirs } => SetupError::Protocol { ours, theirs },
            SetupStage::ParentDeath => SetupError::ParentDeath(cause()),
            SetupStage::Groups { gid } => SetupError::Groups {
                gid,
                source: cause(),
            },
            SetupStage::Group { gid } => SetupError::Group {
                gid,
                source: cause(),
            },
            SetupStage::User { uid } => SetupError::User {
                uid,
                source: cause(),
            },
            SetupStage::Fds => SetupError::Fds(cause()),
            SetupStage::Scheduling => SetupError::Scheduling(cause()),
            SetupStage::Exec => SetupError::Exec {
                program: program.to_string(),
                source: cause(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_design() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Args {
            #[arg(long)]
            flag: bool,
        }
        let usage = Args::try_parse_from(["x", "--nope"]).unwrap_err();
        let help = Args::try_parse_from(["x", "--help"]).unwrap_err();
        let io = || io::Error::from_raw_os_error(libc::EADDRINUSE);
        let cases: Vec<(Error, u8)> = vec![
            (usage.into(), EXIT_USAGE),
            (help.into(), EXIT_OK),
            (ConfigError::NoCommand.into(), EXIT_USAGE),
            (
                Fatal::Bind(BindError {
                    flag: "--admin".into(),
                    address: "tcp://127.0.0.1:1".into(),
                    source: io(),
                })
                .into(),
                EXIT_USAGE,
            ),
            (
                Fatal::AlreadyRunning {
                    name: "n".into(),
                    control: "c".into(),
                }
                .into(),
                EXIT_USAGE,
            ),
            (Fatal::system("create the poll")(io()).into(), EXIT_FAILURE),
            (CtlError::Closed.into(), EXIT_FAILURE),
        ];
        for (error, code) in cases {
            assert_eq!(error.exit_code(), code, "{error}");
        }
    }

    #[test]
    fn messages_are_lowercase_and_name_their_flag() {
        let e = Fatal::Bind(BindError {
            flag: "--admin".into(),
            address: "tcp://127.0.0.1:9443".into(),
            source: io::Error::from_raw_os_error(libc::EADDRINUSE),
        });
        assert_eq!(
            e.to_string(),
            "--admin: unable to bind tcp://127.0.0.1:9443: address already in use"
        );
        let e = ConfigError::Value {
            origin: Origin::Key("stop-signal"),
            error: ValueError::NotSignalName("SIGFOO".into()),
        };
        assert!(
            e.to_string()
                .starts_with("config key 'stop-signal': 'SIGFOO' is not a signal name"),
            "{e}"
        );
        assert!(
            std::error::Error::source(&e).is_some(),
            "the value error is the source"
        );
    }

    #[test]
    fn setup_errors_survive_the_wire_with_their_reason() {
        let sent = SetupError::User {
            uid: 65534,
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        assert_eq!(
            sent.to_wire().errno,
            libc::EPERM,
            "the errno travels as a number"
        );
        let got = SetupError::from_wire(&sent.to_wire(), "ignored");
        assert_eq!(
            got.to_string(),
            "unable to switch to uid 65534: operation not permitted"
        );
        let sent = SetupError::Exec {
            program: "./server".into(),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert_eq!(
            SetupError::from_wire(&sent.to_wire(), "./server").to_string(),
            "unable to run ./server: no such file or directory"
        );
        let sent = SetupError::Handoff(io::Error::other("message was truncated"));
        assert_eq!(
            SetupError::from_wire(&sent.to_wire(), "x").to_string(),
            "unable to receive the hand-off from the primary: message was truncated"
        );
        let sent = SetupError::Protocol { ours: 2, theirs: 1 };
        assert!(SetupError::from_wire(&sent.to_wire(), "x")
            .to_string()
            .contains("speaks version 2, the primary version 1"));
    }
}
