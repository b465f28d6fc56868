//! `reloadsup ctl`: steers a running primary over its control socket.
//!
//! One connection per invocation: hello, one request, progress lines, one reply. Exit codes:
//! 0 done, 1 the request failed (a reload rolled back, an error reply, no instance), 2 bad usage.
//!
//! It never hangs on a primary that is stopped or wedged: the connect, the hello and every
//! reply have a deadline (`--timeout`; a reload, restart or stop waits for its outcome without
//! one unless `--timeout` is given, since a generation may take its whole `--ready-timeout`).
//! And it only talks to a server running as its own uid or root (`SO_PEERCRED`), so a socket
//! planted by another user is refused before a byte is sent.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};

use reloadsup_protocol::{
    self as proto, notify::sanitize_log_line, FrameReader, LogQuery, Message, Outcome, Progress,
    Reply, Request, Status,
};

use crate::error::{CtlError, Error};
// The text forms moved to `crate::text` so that the shell need not depend on this client; the
// shell still names them here until it imports them from there.
use crate::text::{progress_line, skipped_marker, status_table};

/// Log lines as they came (each has its newline), after the skipped marker. A closed stdout
/// (`ctl logs -f | head`) ends the program quietly, as it does for `tail -f`.
/// Writes `text` to stdout. A reader that went away (`ctl reload | head -1`) is no error and
/// no panic: the command still runs to its end, and its exit status says how it went.
fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

fn print_lines(skipped: u64, lines: &[String]) {
    let mut out = std::io::stdout().lock();
    let written = out
        .write_all(skipped_marker(skipped).as_bytes())
        .and_then(|()| {
            lines
                .iter()
                .try_for_each(|l| out.write_all(sanitize_log_line(l).as_bytes()))
        })
        .and_then(|()| out.flush());
    if written.is_err() {
        std::process::exit(0);
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "reloadsup ctl",
    about = "Steer a running reloadsup over its control socket"
)]
pub(crate) struct CtlArgs {
    /// Instance name (as given to --name; default state dir).
    #[arg(long, value_name = "NAME", conflicts_with = "control")]
    pub name: Option<String>,
    /// Path of the control socket (STATE_DIR/control.sock), or `fd:N`, the channel a console
    /// program inherits.
    #[arg(long, value_name = "PATH", env = "RELOADSUP_CONTROL")]
    pub control: Option<PathBuf>,
    /// How long to wait to connect and for each reply (default 10s; a reload, restart or
    /// stop waits for its outcome unless this is given).
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    pub timeout: Option<Duration>,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CtlCommand {
    /// Show listeners, generations and workers.
    Status {
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// A readiness probe: exit 0 only while a generation is serving with every slot
        /// ready, 1 otherwise (one line says why).
        #[arg(long)]
        ready: bool,
    },
    /// Start a new generation; exit 1 if it was rolled back.
    Reload {
        /// Start this many new workers first and the rest once they are ready (and stable
        /// for --stable-for); a canary failure rolls back only the canaries.
        #[arg(long, value_name = "N")]
        canary: Option<u32>,
    },
    /// Set the number of workers.
    Scale { workers: u32 },
    /// One worker more.
    Inc,
    /// One worker fewer.
    Dec,
    /// Restart dead workers.
    Revive,
    /// Upgrade the primary, then reload every worker and replace the shell worker.
    Restart,
    /// Graceful shutdown; returns when the primary is gone.
    Stop,
    /// Re-exec the primary in place (same pid, workers and sockets kept); exit 1 with the
    /// reason if the new binary fails its pre-flight.
    Upgrade {
        /// The reloadsup executable to run (default: the path the primary was started from).
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
    },
    /// The workers' recent output lines (with --log-output stdout or file:PATH), labelled.
    Logs {
        /// How many recent lines.
        #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 10)]
        lines: u32,
        /// Keep printing new lines until interrupted.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only this slot's lines (across its restarts and generations).
        #[arg(long, value_name = "SLOT")]
        worker: Option<u32>,
        /// Only this generation's lines.
        #[arg(long, value_name = "G")]
        generation: Option<u64>,
    },
}

/// A blocking connection to a primary's control socket.
pub(crate) struct Client {
    stream: UnixStream,
    reader: FrameReader,
    next_id: u32,
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    match crate::config::parse_duration(s).map_err(|e| e.to_string())? {
        d if d.is_zero() => Err("must be more than 0".into()),
        d => Ok(d),
    }
}

/// The default for `--timeout`.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl Client {
    /// Connects, checks the server's uid and exchanges hellos, all within `timeout`.
    pub(crate) fn connect(path: &Path, timeout: Duration) -> Result<Client, CtlError> {
        let no_instance = |source| CtlError::NoInstance {
            path: path.display().to_string(),
            source,
        };
        let stream = match door(path) {
            // A console program's inherited channel: trusted as inherited, no uid to check.
            Some(fd) => UnixStream::from(
                crate::sys::connect_through_door(fd, timeout).map_err(no_instance)?,
            ),
            None => {
                let stream = connect_within(path, timeout).map_err(no_instance)?;
                check_server_uid(&stream, path)?;
                stream
            }
        };
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(CtlError::Setup)?;
        let mut client = Client {
            stream,
            reader: FrameReader::new(),
            next_id: 1,
        };
        client.send(&Message::hello())?;
        let hello = client.recv()?;
        proto::check_hello(&hello).map_err(CtlError::Protocol)?;
        Ok(client)
    }

    fn send(&mut self, msg: &Message) -> Result<(), CtlError> {
        let frame = proto::encode_frame(msg).map_err(CtlError::Protocol)?;
        self.stream.write_all(&frame).map_err(CtlError::Send)
    }

    /// How long each later read may wait; `None` waits for as long as it takes.
    pub(crate) fn set_reply_timeout(&mut self, timeout: Option<Duration>) -> Result<(), CtlError> {
        self.stream
            .set_read_timeout(timeout)
            .map_err(CtlError::Setup)
    }

    fn recv(&mut self) -> Result<Message, CtlError> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some(msg) = self
                .reader
                .next_frame::<Message>()
                .map_err(CtlError::Protocol)?
            {
                return Ok(msg);
            }
            let n = self.stream.read(&mut buf).map_err(|e| match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => CtlError::Timeout,
                _ => CtlError::Lost(e),
            })?;
            if n == 0 {
                return Err(CtlError::Closed);
            }
            self.reader.push(&buf[..n]);
        }
    }

    /// Sends a request and waits for its reply, passing progress to `on_progress`.
    pub(crate) fn request(
        &mut self,
        request: Request,
        mut on_progress: impl FnMut(&Progress),
    ) -> Result<Reply, CtlError> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&Message::Request { id, request })?;
        loop {
            match self.recv()? {
                Message::Progress { id: pid, progress } if pid == id => on_progress(&progress),
                Message::Reply { id: rid, reply } if rid == id => return Ok(reply),
                _ => {}
            }
        }
    }

    /// Waits until the primary closes the connection (it exits), at most `timeout`.
    pub(crate) fn wait_closed(&mut self, timeout: Duration) {
        let _ = self.stream.set_read_timeout(Some(timeout));
        let mut buf = [0u8; 1024];
        while let Ok(n) = self.stream.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    }
}

/// A connect that gives up after `timeout`: a blocking connect to a Unix socket whose backlog
/// is full (a stopped primary) would wait forever.
/// The fd number of `fd:N`, the control channel a console program inherits (see the shell's
/// `Proxy`), instead of a path.
fn door(path: &Path) -> Option<std::os::fd::RawFd> {
    path.to_str()?.strip_prefix("fd:")?.parse().ok()
}

fn connect_within(path: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let addr = UnixAddr::new(path).map_err(std::io::Error::from)?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(std::io::Error::from)?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr) {
            Ok(()) => break,
            // A Unix socket's backlog is full: nothing tells us when it drains, so poll.
            Err(nix::errno::Errno::EAGAIN) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(nix::errno::Errno::EAGAIN) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the connection was not accepted in time",
                ))
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Refuses a server that runs as neither our uid nor root: whoever could plant a socket
/// where we look for one must not get our requests.
fn check_server_uid(stream: &UnixStream, path: &Path) -> Result<(), CtlError> {
    let ours = nix::unistd::geteuid().as_raw();
    match nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials) {
        Ok(cred) if cred.uid() == ours || cred.uid() == 0 => Ok(()),
        Ok(cred) => Err(CtlError::ForeignServer {
            path: path.display().to_string(),
            uid: cred.uid(),
            ours,
        }),
        Err(e) => Err(CtlError::PeerCredentials {
            path: path.display().to_string(),
            source: e.into(),
        }),
    }
}

/// Whether the control socket at `path` under `/tmp/reloadsup-0` is root's own: the socket
/// (no symlink: a symlink planted there could lead to another instance of root's) and every
/// directory up to `/tmp` belong to root and nobody else can write them. `check_server_uid`
/// alone would accept a symlink to any root instance's socket.
fn roots_own(path: &Path) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(socket) = std::fs::symlink_metadata(path) else {
        return false;
    };
    if !socket.file_type().is_socket() || socket.uid() != 0 {
        return false;
    }
    path.ancestors()
        .skip(1)
        .take_while(|d| *d != Path::new("/tmp"))
        .all(|d| {
            std::fs::symlink_metadata(d)
                .is_ok_and(|m| m.is_dir() && m.uid() == 0 && m.mode() & 0o022 == 0)
        })
}

/// The control socket for `--name`, `--control` or the default instance.
pub(crate) fn control_path(
    name: Option<&str>,
    control: Option<&Path>,
) -> Result<PathBuf, CtlError> {
    if let Some(c) = control {
        return Ok(c.to_path_buf());
    }
    if let Some(n) = name {
        let path = crate::config::default_state_dir(n).join("control.sock");
        // An instance upgraded in place from a release that kept root's state under /tmp.
        let legacy = crate::config::legacy_state_dir(n).map(|d| d.join("control.sock"));
        return Ok(match legacy {
            Some(old) if !path.exists() && roots_own(&old) => old,
            _ => path,
        });
    }
    // No name: the only instance in the default place, if there is exactly one.
    let base = crate::config::default_state_dir("x");
    let base = base.parent().map(Path::to_path_buf).unwrap_or_default();
    let legacy =
        crate::config::legacy_state_dir("x").and_then(|d| d.parent().map(Path::to_path_buf));
    let listed = |base: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(base)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.path().join("control.sock"))
                    .filter(|p| p.exists())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut found = listed(&base);
    if let Some(legacy) = &legacy {
        found.extend(listed(legacy).into_iter().filter(|p| roots_own(p)));
    }
    match found.len() {
        1 => Ok(found[0].clone()),
        0 => Err(CtlError::NoneFound {
            base: base.display().to_string(),
        }),
        _ => Err(CtlError::SeveralFound {
            base: base.display().to_string(),
            found: found.iter().map(|p| p.display().to_string()).collect(),
        }),
    }
}

/// Runs `reloadsup ctl`; `Ok` is 0 or 1 (a reload that was rolled back), an error exits 1.
pub(crate) fn main(args: Vec<std::ffi::OsString>) -> Result<u8, Error> {
    let args = CtlArgs::try_parse_from(args)?;
    Ok(run(args)?)
}

fn run(args: CtlArgs) -> Result<u8, CtlError> {
    let path = control_path(args.name.as_deref(), args.control.as_deref())?;
    let timeout = args.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let mut client = Client::connect(&path, timeout)?;
    if args.timeout.is_none()
        && matches!(
            args.command,
            CtlCommand::Reload { .. }
                | CtlCommand::Restart
                | CtlCommand::Stop
                | CtlCommand::Upgrade { .. }
                | CtlCommand::Logs { follow: true, .. }
        )
    {
        // The outcome of a generation comes after up to its --ready-timeout, which only the
        // primary knows; progress lines show it is alive.
        client.set_reply_timeout(None)?;
    }
    let request = match &args.command {
        CtlCommand::Status { .. } => Request::Status,
        // Without --canary, the request every primary understands.
        CtlCommand::Reload { canary: None } => Request::Reload,
        CtlCommand::Reload {
            canary: Some(canary),
        } => Request::ReloadWith { canary: *canary },
        CtlCommand::Scale { workers } => Request::Scale { workers: *workers },
        CtlCommand::Inc => Request::Add { workers: 1 },
        CtlCommand::Dec => Request::Remove { workers: 1 },
        CtlCommand::Revive => Request::Revive,
        CtlCommand::Restart => Request::Restart,
        CtlCommand::Stop => Request::Stop,
        CtlCommand::Logs {
            lines,
            follow,
            worker,
            generation,
        } => Request::Logs(LogQuery {
            lines: *lines,
            follow: *follow,
            worker: *worker,
            generation: *generation,
        }),
        CtlCommand::Upgrade { binary } => Request::Upgrade {
            // Relative to where `ctl` runs, not to the primary's working directory.
            binary: binary.as_ref().map(|b| {
                std::path::absolute(b)
                    .unwrap_or_else(|_| b.clone())
                    .into_os_string()
                    .into_encoded_bytes()
            }),
        },
    };
    let reply = client.request(request, |p| match p {
        Progress::Log { skipped, lines } => print_lines(*skipped, lines),
        p => say(&format!("{}\n", progress_line(p))),
    })?;
    match (&args.command, reply) {
        (CtlCommand::Logs { .. }, Reply::Done(_)) => Ok(0),
        (CtlCommand::Status { json, ready }, Reply::Status(status)) => {
            if *ready {
                let (ok, line) = readiness(&status);
                say(&format!("{line}\n"));
                return Ok(if ok { 0 } else { 1 });
            }
            if *json {
                say(&format!("{}\n", status_json(&status)));
            } else {
                say(&status_table(&status));
            }
            Ok(0)
        }
        (_, Reply::Reload(outcome)) => match outcome.outcome {
            Outcome::Succeeded if !outcome.reason.is_empty() => {
                say(&format!(
                    "generation {} is serving ({})\n",
                    outcome.generation, outcome.reason
                ));
                Ok(0)
            }
            Outcome::Succeeded => {
                say(&format!("generation {} is serving\n", outcome.generation));
                Ok(0)
            }
            _ => {
                say(&format!(
                    "reload to generation {} {}: {}\n",
                    outcome.generation,
                    outcome.outcome.as_str(),
                    outcome.reason
                ));
                Ok(1)
            }
        },
        (CtlCommand::Stop, Reply::Done(text)) => {
            client.wait_closed(Duration::from_secs(10));
            say(&format!("{text}\n"));
            Ok(0)
        }
        (_, Reply::Done(text)) => {
            say(&format!("{text}\n"));
            Ok(0)
        }
        (_, Reply::Error(text)) => Err(CtlError::Refused(text)),
        (_, other) => Err(CtlError::UnexpectedReply(format!("{other:?}"))),
    }
}

/// The JSON object of DESIGN.md section 6.
/// Whether a generation is serving with every slot ready, and a line that says so.
pub(crate) fn readiness(s: &Status) -> (bool, String) {
    if s.generation == 0 {
        return (false, "not ready: no generation is serving yet".into());
    }
    if s.target_workers == 0 {
        return (false, "not ready: scaled to 0 workers".into());
    }
    let ready = (0..s.target_workers)
        .filter(|slot| {
            s.workers.iter().any(|w| {
                w.slot == *slot
                    && w.generation == s.generation
                    && w.state == proto::WorkerState::Ready
            })
        })
        .count() as u32;
    let line = format!(
        "generation {}: {ready}/{} workers ready",
        s.generation, s.target_workers
    );
    if ready == s.target_workers {
        (true, format!("ready: {line}"))
    } else {
        (false, format!("not ready: {line}"))
    }
}

pub(crate) fn status_json(s: &Status) -> serde_json::Value {
    serde_json::json!({
        "pid": s.pid,
        "name": s.name,
        "generation": s.generation,
        "target_workers": s.target_workers,
        "current_workers": s.current_workers,
        "dead_workers": s.dead_workers,
        "listeners": s.listeners.iter().map(|l| serde_json::json!({"name": l.name, "address": l.address})).collect::<Vec<_>>(),
        "workers": s.workers.iter().map(|w| serde_json::json!({
            "slot": w.slot,
            "pid": w.pid,
            "generation": w.generation,
            "state": w.state.as_str(),
            "restarts": w.restarts,
            "uptime_s": w.uptime_ms as f64 / 1000.0,
            "status": w.status,
        })).collect::<Vec<_>>(),
        "last_reload": s.last_reload.as_ref().map(|r| serde_json::json!({
            "generation": r.generation,
            "outcome": r.outcome.as_str(),
            "reason": r.reason,
        })),
        "version": s.version,
        "upgrades": s.upgrades,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The attacker's review of issue 18, item 10: a symlink planted under /tmp/reloadsup-0 to
    /// another root instance's socket passed the server check (root serves it); only root's
    /// own socket in root's own directories is taken there.
    #[test]
    fn only_roots_own_socket_is_taken_from_the_legacy_place() {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true and this test needs root"
            );
            return;
        }
        let base = Path::new("/tmp").join(format!("reloadsup-ctl-legacy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dir = base.join("web");
        std::fs::create_dir_all(&dir).unwrap();
        for d in [&base, &dir] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let socket = dir.join("control.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        assert!(roots_own(&socket));
        let link = dir.join("link.sock");
        std::os::unix::fs::symlink(&socket, &link).unwrap();
        assert!(!roots_own(&link), "a symlink is refused");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(
            !roots_own(&socket),
            "a directory others can write is refused"
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&base, Some(65534), None).unwrap();
        assert!(
            !roots_own(&socket),
            "a directory of another user is refused"
        );
        let _ = std::fs::remove_dir_all(&base);
    }
}
