//! The primary's specialised workers, one file each: the shell worker (`shell.rs`, the TLS
//! console), the keeper (`keeper.rs`, kills every worker's group and cgroup if the primary
//! dies), the logger (`logger.rs`, the workers' output), the metrics worker (`metrics.rs`) and
//! the inspector (`inspector.rs`, `--ready listening`'s look at starting workers, started only
//! when needed and not carried across an upgrade).
//! Each is a hidden role of this executable, spawned through `/proc/self/exe` with a link,
//! restarted with back-off by `state::roles`, replaced when it misbehaves, and carried across
//! an upgrade in place in its image.

pub(crate) mod inspector;
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
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let pid = sys::spawn_role(Path::new("/proc/self/exe"), self.arg0, &args, &theirs)?;
        let pid = pid.as_raw() as u32;
        drop(theirs);
        let kept = hello(ours).and_then(|link| {
            self.register(poll, link.as_ref())?;
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

    /// One that was stopped (a process of its uid, or of the workers' where it runs as theirs,
    /// sent it SIGSTOP) serves nobody, and its link fills: it is replaced (issue 18, item 4).
    /// Called on every SIGCHLD, which a stop raises too.
    pub(crate) fn replace_if_stopped(&mut self) {
        if self.pid.is_some_and(sys::was_stopped) {
            self.replace("was stopped");
        }
    }

    /// Closing the link takes it out of the poll too: epoll forgets a socket once its last fd
    /// is closed. Every fd of ours is close-on-exec, so a copy lives on only in a child between
    /// its fork and its exec; an event delivered meanwhile under the old token finds no link,
    /// or the next one, whose read does not block, and is harmless either way.
    pub(crate) fn close_link(&mut self) {
        // Messages left in it may carry fds whose close waits (a helper that misbehaves).
        if let Some(link) = self.link.take() {
            sys::close_own(link);
        }
    }

    /// Sends `sig` to its process group, if it runs.
    pub(crate) fn signal(&self, sig: Signal) {
        if let Some(pid) = self.pid {
            let _ = sys::kill_group(pid, sig);
        }
    }

    /// After an upgrade in place: a helper still running as another user than its role words
    /// now say (one an older release started as root, before it dropped to the workers' user)
    /// is replaced, so that the next one runs as it should. Reads the helper's own
    /// `/proc/PID/status`, a child of ours, once per upgrade.
    pub(crate) fn replace_if_stale(&mut self) {
        let Some(pid) = self.pid else { return };
        let wanted = match self.args.iter().position(|a| a == "--uid") {
            Some(i) => self.args.get(i + 1).and_then(|u| u.parse().ok()),
            None => Some(nix::unistd::geteuid().as_raw()),
        };
        let running = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|ids| ids.split_whitespace().nth(1)?.parse::<u32>().ok())
            });
        if let (Some(wanted), Some(running)) = (wanted, running) {
            if wanted != running {
                self.replace(&format!(
                    "runs as uid {running} (started before an upgrade), not {wanted}"
                ));
            }
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
        self.register(poll, link.as_ref())?;
        self.pid = pid;
        self.link = link;
        Ok(self)
    }

    /// Polls `link` under the helper's token, when it has one (the primary reads its link).
    fn register(&self, poll: &Poll, link: Option<&OwnedFd>) -> io::Result<()> {
        match (link, self.token) {
            (Some(link), Some(token)) => poll.registry().register(
                &mut SourceFd(&link.as_raw_fd()),
                token,
                Interest::READABLE,
            ),
            _ => Ok(()),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    /// The attacker's review of issue 18, items 1 and 8: an upgrade in place kept the logger
    /// and the metrics worker an older release had started as root; one running as another
    /// uid than its role words say is replaced.
    #[test]
    fn a_helper_running_as_another_user_than_its_words_is_replaced() {
        let spawn = || {
            std::process::Command::new("sleep")
                .arg("30")
                .process_group(0)
                .spawn()
                .expect("sleep")
        };
        let ours = nix::unistd::geteuid().as_raw();
        let other = if ours == 0 { 65534 } else { 0 };
        let words = |uid: u32| as_workers_words("__metrics", uid);
        let mut right = spawn();
        let mut h = Helper::new("test helper", "t", words(ours), LinkKind::Packets, None);
        h.pid = Some(right.id());
        h.replace_if_stale();
        assert!(
            right.try_wait().unwrap().is_none(),
            "replaced a helper of the right uid"
        );
        let mut stale = spawn();
        let mut h = Helper::new("test helper", "t", words(other), LinkKind::Packets, None);
        h.pid = Some(stale.id());
        h.replace_if_stale();
        let status = stale.wait().unwrap();
        assert!(!status.success(), "the stale helper was left running");
        let _ = right.kill();
        let _ = right.wait();
    }

    fn as_workers_words(role: &str, uid: u32) -> Vec<String> {
        vec![
            role.to_string(),
            "--uid".into(),
            uid.to_string(),
            "--gid".into(),
            uid.to_string(),
        ]
    }
}
