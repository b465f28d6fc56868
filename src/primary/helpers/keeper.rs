//! The primary's side of the keeper (see `roles/keeper.rs`): it decides at start whether
//! workers get cgroups of their own, spawns the keeper, tells it every worker process group when
//! it is spawned and forgets it just before it is reaped, and restarts a keeper that died with
//! back-off, telling the new one the whole live set again.
//!
//! It must never block the loop: every message is one small non-blocking send; a keeper that
//! does not keep up is killed and replaced, since a replacement learns the full set anyway.
//! What must survive a re-exec of the primary in place lives in [`KeeperState`], plain data;
//! its restart timer lives in `state::roles`.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use reloadsup_protocol::{self as proto, KeeperMessage, KeeperSpec, PROTOCOL_VERSION};

use crate::primary::state::roles::RoleTimer;
use crate::error::lower;
use crate::sys::{self, cgroup};

/// Set (to anything) in the primary's environment: no per-worker cgroups even where they could
/// be created; the keeper watches process groups only.
pub(crate) const NO_CGROUP_VAR: &str = "RELOADSUP_NO_CGROUP";

/// What the primary knows about the keeper and the worker groups it guards: plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeeperState {
    pub pid: Option<u32>,
    /// Every worker role process group not reaped yet (workers and spares).
    pub tracked: BTreeSet<u32>,
    /// The base of the per-worker cgroups, when they are used.
    pub cgroup: Option<PathBuf>,
}

pub(crate) struct Keeper {
    pub state: KeeperState,
    link: Option<OwnedFd>,
    primary_pid: u32,
}

impl Keeper {
    /// Decides whether workers get cgroups of their own, and says which guard is in use.
    pub(crate) fn new(primary_pid: u32) -> Keeper {
        let cgroup = if std::env::var_os(NO_CGROUP_VAR).is_some() {
            log::info!(
                "worker children: guarded by the keeper through process groups ({NO_CGROUP_VAR} is set)"
            );
            None
        } else {
            match cgroup::create_base(primary_pid) {
                Ok(base) => {
                    log::info!(
                        "worker children: guarded by the keeper through process groups and a cgroup per worker under {}",
                        base.display()
                    );
                    Some(base)
                }
                Err(why) => {
                    log::info!(
                        "worker children: guarded by the keeper through process groups only (no per-worker cgroup: {why})"
                    );
                    None
                }
            }
        };
        Keeper {
            state: KeeperState {
                pid: None,
                tracked: BTreeSet::new(),
                cgroup,
            },
            link: None,
            primary_pid,
        }
    }

    /// The word a worker role gets after the primary's pid: the cgroup base, if any.
    pub(crate) fn worker_arg(&self) -> Option<&str> {
        self.state.cgroup.as_deref().and_then(Path::to_str)
    }

    /// Spawns the keeper and tells it the whole live set; false (logged) if it could not.
    pub(crate) fn start(&mut self) -> bool {
        match self.spawn() {
            Ok(pid) => {
                log::info!("keeper started as pid {pid}");
                self.state.pid = Some(pid);
                true
            }
            Err(e) => {
                log::error!("unable to start the keeper: {}", lower(&e));
                false
            }
        }
    }

    fn spawn(&mut self) -> io::Result<u32> {
        let (pid, ours) = sys::spawn_linked_role("reloadsup-keeper", &["__keeper"])?;
        let spec = KeeperSpec {
            version: PROTOCOL_VERSION,
            primary_pid: self.primary_pid,
            cgroup: self
                .state
                .cgroup
                .as_ref()
                .map(|p| p.as_os_str().as_bytes().to_vec()),
        };
        self.link = Some(ours);
        let tracked: Vec<u32> = self.state.tracked.iter().copied().collect();
        // A fresh socket buffer takes the spec and a few thousand groups without blocking.
        let sent = proto::encode(&spec)
            .map_err(io::Error::other)
            .and_then(|body| {
                self.send_raw(&body)?;
                for pgids in tracked.chunks(proto::MAX_TRACK_BATCH) {
                    self.send(&KeeperMessage::Track {
                        pgids: pgids.to_vec(),
                    })?;
                }
                Ok(())
            });
        if let Err(e) = sent {
            self.link = None;
            let _ = sys::kill_group(pid, Signal::SIGKILL);
            return Err(e);
        }
        Ok(pid)
    }

    /// A worker role was spawned as `pgid` (its own group).
    pub(crate) fn track(&mut self, pgid: u32) {
        self.state.tracked.insert(pgid);
        self.tell(&KeeperMessage::Track { pgids: vec![pgid] });
    }

    /// A child `pid` is about to be reaped, its group already SIGKILLed: kill its cgroup too
    /// (children that left the group), so nothing of it is left when its slot is reused, and
    /// stop guarding its group, whose id may be recycled once it is reaped.
    pub(crate) fn forget(&mut self, pid: u32) {
        if !self.state.tracked.remove(&pid) {
            return;
        }
        if let Some(base) = &self.state.cgroup {
            if let Err(e) = cgroup::kill(&cgroup::worker_dir(base, pid)) {
                log::warn!("unable to kill the cgroup of pid {pid}: {}", lower(&e));
            }
        }
        self.tell(&KeeperMessage::Forget { pgid: pid });
    }

    /// Sends to a running keeper; one that cannot take it is replaced.
    fn tell(&mut self, msg: &KeeperMessage) {
        if self.link.is_none() {
            return;
        }
        if let Err(e) = self.send(msg) {
            log::warn!("the keeper does not keep up ({}); replacing it", lower(&e));
            self.link = None;
            if let Some(pid) = self.state.pid {
                // Reaped like any child; `exited` then starts a new one with the whole set.
                let _ = sys::kill_group(pid, Signal::SIGKILL);
            }
        }
    }

    fn send(&self, msg: &KeeperMessage) -> io::Result<()> {
        let body = proto::encode(msg).map_err(io::Error::other)?;
        self.send_raw(&body)
    }

    fn send_raw(&self, body: &[u8]) -> io::Result<()> {
        match &self.link {
            Some(link) => sys::send_nonblocking(link.as_fd(), body),
            None => Ok(()),
        }
    }

    pub(crate) fn is(&self, pid: u32) -> bool {
        self.state.pid == Some(pid)
    }

    /// The keeper was reaped; the roles' timer starts another.
    pub(crate) fn exited(&mut self, status: sys::ExitStatus) {
        self.state.pid = None;
        self.link = None;
        log::warn!("the keeper {status}");
    }

    /// At a normal exit, every worker is reaped: closing the link makes the keeper remove the
    /// cgroups and exit. Without a keeper, try to remove them here.
    pub(crate) fn close(&mut self) {
        if self.link.take().is_none() {
            if let Some(base) = &self.state.cgroup {
                let _ = cgroup::remove_tree(base);
            }
        }
    }
}

impl Keeper {
    /// The plain-data image, for an upgrade in place: the link must stay open across the exec,
    /// or the keeper would see EOF and kill every worker.
    pub(crate) fn image(
        &self,
        timer: &RoleTimer,
        clock: &crate::primary::handoff::Clock,
    ) -> reloadsup_protocol::upgrade::KeeperImage {
        use std::os::fd::AsRawFd;
        reloadsup_protocol::upgrade::KeeperImage {
            link_fd: self.link.as_ref().map(|l| l.as_raw_fd()),
            pid: self.state.pid,
            tracked: self.state.tracked.iter().copied().collect(),
            cgroup: self
                .state
                .cgroup
                .as_ref()
                .map(|p| p.as_os_str().as_bytes().to_vec()),
            started: clock.opt_ns(timer.started),
            backoff: timer.backoff.as_nanos() as u64,
            restart_at: clock.opt_ns(timer.restart_at),
        }
    }

    pub(crate) fn resume(
        primary_pid: u32,
        image: reloadsup_protocol::upgrade::KeeperImage,
        link: Option<OwnedFd>,
        clock: &crate::primary::handoff::Clock,
    ) -> (Keeper, RoleTimer) {
        use std::os::unix::ffi::OsStringExt;
        let timer = RoleTimer {
            running: image.pid.is_some(),
            started: clock.opt_instant(image.started),
            backoff: Duration::from_nanos(image.backoff),
            restart_at: clock.opt_instant(image.restart_at),
            replacing: false,
            stopping: false,
        };
        let keeper = Keeper {
            state: KeeperState {
                pid: image.pid,
                tracked: image.tracked.into_iter().collect(),
                cgroup: image
                    .cgroup
                    .map(|c| PathBuf::from(std::ffi::OsString::from_vec(c))),
            },
            link,
            primary_pid,
        };
        (keeper, timer)
    }
}
