//! The primary's side of the shell worker: it binds the admin listener, spawns the shell role
//! with the listener and a link, restarts it with back-off when it dies, and replaces it on
//! `restart`. The link is adopted as one more control connection, so console commands take the
//! same code path as `reloadsup ctl` and signals.
//!
//! When it is started again is decided in `state::roles`, from plain data.
//!
//! Nothing the shell worker does can stall the primary: the link is non-blocking like every
//! control connection, and the shell's process is reaped like a worker's.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use mio::Poll;
use nix::sys::signal::Signal;
use reloadsup_protocol::{self as proto, ShellSpec, PROTOCOL_VERSION};

use super::{timer_from, timer_image, Helper, LinkKind};
use crate::primary::control::{ConnId, Connections};
use crate::primary::state::roles::RoleTimer;
use crate::sys;

pub(crate) struct Shell {
    spec: ShellSpec,
    listener: OwnedFd,
    /// Its process (`__shell --uid U --gid G` when it drops to other credentials than ours);
    /// its link is a control connection of the primary's, `conn`.
    pub helper: Helper,
    /// The directory of the programs' control socket an older release made (carried in its
    /// image), removed at exit; this release makes none.
    pub proxy_dir: Option<PathBuf>,
    conn: Option<ConnId>,
}

impl Shell {
    pub(crate) fn new(spec: ShellSpec, listener: OwnedFd, drop_to: Option<(u32, u32)>) -> Shell {
        Shell {
            spec,
            listener,
            helper: helper(crate::roles::credential_args(drop_to)),
            proxy_dir: None,
            conn: None,
        }
    }

    /// Spawns the shell worker; false (logged) if it could not be started.
    pub(crate) fn start(&mut self, poll: &Poll, conns: &mut Connections) -> bool {
        let frame = match proto::encode_frame(&self.spec) {
            Ok(frame) => frame,
            Err(e) => {
                log::error!("admin console: unable to encode the shell worker's spec: {e}");
                return false;
            }
        };
        let (listener, conn) = (&self.listener, &mut self.conn);
        self.helper.start(poll, |link| {
            sys::send_with_fds(link.as_fd(), &frame, &[listener.as_fd()])?;
            let stream = std::os::unix::net::UnixStream::from(link);
            stream.set_nonblocking(true)?;
            *conn = Some(conns.adopt(poll, mio::net::UnixStream::from_std(stream))?);
            // The control connections own the link.
            Ok(None)
        })
    }

    pub(crate) fn exited(&mut self, poll: &Poll, conns: &mut Connections) {
        self.helper.exited();
        if let Some(id) = self.conn.take() {
            conns.close(poll, id, "the shell worker exited");
        }
    }

    /// SIGTERM to the shell worker (a replacement, a shutdown); it is reaped like any child.
    pub(crate) fn terminate(&mut self) {
        self.helper.signal(Signal::SIGTERM);
    }

    /// Whether `conn` is this shell worker's link.
    pub(crate) fn is_link(&self, conn: ConnId) -> bool {
        self.conn == Some(conn)
    }

    /// A reload changed the console's custom commands or password hash: the next shell worker
    /// gets them (see `RoleEvent::Replace`).
    pub(crate) fn reconfigure(
        &mut self,
        commands: Vec<proto::CustomCommand>,
        password_hash: String,
    ) {
        self.spec.commands = commands;
        self.spec.password_hash = password_hash;
    }

    /// At exit: nothing the shell worker does matters any more.
    pub(crate) fn kill(&mut self) {
        self.terminate();
        self.helper.signal(Signal::SIGKILL);
    }
}

/// The uid and gid the shell worker drops to once it holds its fds, or `None` when they are
/// ours already (see [`crate::config::Admin`]).
pub(crate) fn drop_to(admin: &crate::config::Admin) -> Option<(u32, u32)> {
    crate::roles::switch_to(admin.uid, admin.gid)
}

/// The spec sent to every shell worker, built once at start.
pub(crate) fn spec(
    config: &crate::config::Config,
    control_path: &Path,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    password_hash: String,
) -> ShellSpec {
    use std::os::unix::ffi::OsStrExt;
    ShellSpec {
        version: PROTOCOL_VERSION,
        primary_pid: std::process::id(),
        name: config.name.clone(),
        cert_pem,
        key_pem,
        password_hash,
        control_path: control_path.as_os_str().as_bytes().to_vec(),
        commands: config.commands.clone(),
        fd_count: 1,
    }
}

impl Shell {
    /// The plain-data image, for an upgrade in place (its back-off deadline included, from
    /// the roles' `timer`).
    pub(crate) fn image(
        &self,
        timer: &RoleTimer,
        clock: &crate::primary::handoff::Clock,
    ) -> reloadsup_protocol::upgrade::ShellImage {
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        let (started, backoff, restart_at) = timer_image(timer, clock);
        reloadsup_protocol::upgrade::ShellImage {
            spec: self.spec.clone(),
            listener_fd: self.listener.as_raw_fd(),
            // Without the role's name: the words after it, as the image always carried them.
            role_args: self.helper.args()[1..].to_vec(),
            proxy_dir: self
                .proxy_dir
                .as_ref()
                .map(|p| p.as_os_str().as_bytes().to_vec()),
            pid: self.helper.pid,
            conn: self.conn.map(|c| c.0 as u64),
            started,
            backoff,
            restart_at,
            replacing: timer.replacing,
            stopping: timer.stopping,
        }
    }

    pub(crate) fn resume(
        image: reloadsup_protocol::upgrade::ShellImage,
        listener: OwnedFd,
        clock: &crate::primary::handoff::Clock,
    ) -> (Shell, RoleTimer) {
        use std::os::unix::ffi::OsStringExt;
        let timer = RoleTimer {
            replacing: image.replacing,
            stopping: image.stopping,
            ..timer_from(
                image.pid.is_some(),
                (image.started, image.backoff, image.restart_at),
                clock,
            )
        };
        let shell = Shell {
            spec: image.spec,
            listener,
            helper: Helper {
                pid: image.pid,
                ..helper(image.role_args)
            },
            proxy_dir: image
                .proxy_dir
                .map(|p| PathBuf::from(std::ffi::OsString::from_vec(p))),
            conn: image.conn.map(|c| ConnId(c as usize)),
        };
        (shell, timer)
    }
}

/// The shell worker's helper, with the words after `__shell`.
fn helper(role_args: Vec<String>) -> Helper {
    let mut args = vec!["__shell".to_string()];
    args.extend(role_args);
    Helper::new(
        "admin console: shell worker",
        "reloadsup-shell",
        args,
        LinkKind::Stream,
        None,
    )
}
