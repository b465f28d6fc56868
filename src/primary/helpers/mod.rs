//! The primary's specialised workers, one file each: the shell worker (`shell.rs`, the TLS
//! console), the keeper (`keeper.rs`, kills every worker's group and cgroup if the primary
//! dies), the logger (`logger.rs`, the workers' output) and the metrics worker (`metrics.rs`).
//! Each is a hidden role of this executable, spawned through `/proc/self/exe` with a link,
//! restarted with back-off by `state::roles`, replaced when it misbehaves, and carried across
//! an upgrade in place in its image.

pub(crate) mod keeper;
pub(crate) mod logger;
pub(crate) mod metrics;
pub(crate) mod shell;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Interest, Poll, Token};
use nix::sys::signal::Signal;

use super::handoff::Clock;
use super::state::roles::RoleTimer;
use crate::error::lower;
use crate::sys;

/// The kind of socket pair a helper's link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkKind {
    /// SOCK_SEQPACKET: one bare postcard message per packet (keeper, logger, metrics).
    Packets,
    /// SOCK_STREAM of length-prefixed frames, read as a control connection (the shell).
    Stream,
}

/// One specialised worker's process and link: what every role has, in one place. The role's
/// file adds only what differs (its spec, its messages, its image's own fields).
pub(crate) struct Helper {
    /// How the log names it ("logger worker").
    name: &'static str,
    /// Its argv[0] and the words after it (`__logger --uid U --gid G`).
    arg0: &'static str,
    args: Vec<String>,
    kind: LinkKind,
    /// The poll token of its link, when the primary reads the link itself.
    token: Option<Token>,
    pub pid: Option<u32>,
    /// The primary's end of the link, when the helper keeps it (not the shell's, which the
    /// control connections own).
    pub link: Option<OwnedFd>,
}

impl Helper {
    pub(crate) fn new(
        name: &'static str,
        arg0: &'static str,
        args: Vec<String>,
        kind: LinkKind,
        token: Option<Token>,
    ) -> Helper {
        Helper {
            name,
            arg0,
            args,
            kind,
            token,
            pid: None,
            link: None,
        }
    }

    /// The words after argv[0], for an image.
    pub(crate) fn args(&self) -> &[String] {
        &self.args
    }

    /// Spawns it through `/proc/self/exe` with a fresh link; `hello` sends what it needs first
    /// (its spec, fds, what it must know) and gives the link back to be kept, or keeps it
    /// itself. One that cannot take that is killed. False (logged) if it could not start.
    pub(crate) fn start(
        &mut self,
        poll: &Poll,
        hello: impl FnOnce(OwnedFd) -> io::Result<Option<OwnedFd>>,
    ) -> bool {
        match self.spawn(poll, hello) {
            Ok(pid) => {
                log::info!("{} started as pid {pid}", self.name);
                self.pid = Some(pid);
                true
            }
            Err(e) => {
                log::error!("unable to start the {}: {}", self.name, lower(&e));
                false
            }
        }
    }

    fn spawn(
        &mut self,
        poll: &Poll,
        hello: impl FnOnce(OwnedFd) -> io::Result<Option<OwnedFd>>,
    ) -> io::Result<u32> {
        let (ours, theirs) = match self.kind {
            LinkKind::Packets => sys::seqpacket_pair()?,
            LinkKind::Stream => sys::stream_pair()?,
        };
        let mut args = vec![];
        args.extend(self.args.iter().map(String::as_str));
        let pid = sys::spawn_role(Path::new("/proc/self/exe"), self.arg0, &args, &theirs)?;
        let pid = pid.as_raw() as u32;
        drop(theirs);
        let kept = hello(ours).and_then(|link| {
            if let (Some(link), Some(token)) = (&link, self.token) {
                poll.registry().register(
                    &mut SourceFd(&link.as_raw_fd()),
                    token,
                    Interest::READABLE,
                )?;
            }
            Ok(link)
        });
        match kept {
            Ok(link) => {
                self.link = link;
                Ok(pid)
            }
            Err(e) => {
                let _ = sys::kill_group(pid, Signal::SIGKILL);
                Err(e)
            }
        }
    }

    pub(crate) fn is(&self, pid: u32) -> bool {
        self.pid == Some(pid)
    }

    /// It was reaped: its link is closed; the roles' timer starts another.
    pub(crate) fn exited(&mut self) {
        self.pid = None;
        self.close_link();
    }

    /// It cannot take a message, or sent what it must not (`why`): it is killed, and the
    /// reap starts another, which learns everything again.
    pub(crate) fn replace(&mut self, why: &str) {
        log::warn!("the {} {why}; replacing it", self.name);
        self.close_link();
        self.signal(Signal::SIGKILL);
    }

    /// Closing the link takes it out of the poll too: nothing else holds that socket (every fd
    /// of ours is close-on-exec), and epoll forgets a socket once its last fd is closed. An
    /// event of this turn for it finds no link and is ignored.
    pub(crate) fn close_link(&mut self) {
        self.link = None;
    }

    /// Sends `sig` to its process group, if it runs.
    pub(crate) fn signal(&self, sig: Signal) {
        if let Some(pid) = self.pid {
            let _ = sys::kill_group(pid, sig);
        }
    }

    /// The link's fd number, for an image.
    pub(crate) fn link_fd(&self) -> Option<i32> {
        self.link.as_ref().map(|l| l.as_raw_fd())
    }

    /// The new image's: the pid and link the hand-off carried, the link polled again.
    pub(crate) fn resume(
        mut self,
        pid: Option<u32>,
        link: Option<OwnedFd>,
        poll: &Poll,
    ) -> io::Result<Helper> {
        if let (Some(link), Some(token)) = (&link, self.token) {
            poll.registry().register(
                &mut SourceFd(&link.as_raw_fd()),
                token,
                Interest::READABLE,
            )?;
        }
        self.pid = pid;
        self.link = link;
        Ok(self)
    }
}

/// The words after argv[0] of a role that runs as the workers' user and group `run_as`
/// (`--user`, `--group`) because it parses bytes they or the network chose: `ROLE --uid U
/// --gid G`, or `ROLE` alone when those are the primary's own.
pub(crate) fn as_workers(role: &str, (uid, gid): (Option<u32>, Option<u32>)) -> Vec<String> {
    let mut args = vec![role.to_string()];
    args.extend(crate::roles::credential_args(crate::roles::switch_to(
        uid, gid,
    )));
    args
}

/// A role's restart timer as every role's image carries it: its start, back-off and next
/// restart, as absolute monotonic nanoseconds.
pub(crate) fn timer_image(t: &RoleTimer, clock: &Clock) -> (Option<u64>, u64, Option<u64>) {
    (
        clock.opt_ns(t.started),
        t.backoff.as_nanos() as u64,
        clock.opt_ns(t.restart_at),
    )
}

/// The timer back from an image; `running` when the image names a live pid.
pub(crate) fn timer_from(
    running: bool,
    (started, backoff, restart_at): (Option<u64>, u64, Option<u64>),
    clock: &Clock,
) -> RoleTimer {
    RoleTimer {
        running,
        started: clock.opt_instant(started),
        backoff: Duration::from_nanos(backoff),
        restart_at: clock.opt_instant(restart_at),
        replacing: false,
        stopping: false,
    }
}
