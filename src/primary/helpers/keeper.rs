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

use mio::Poll;
use reloadsup_protocol::{self as proto, KeeperMessage, KeeperSpec, PROTOCOL_VERSION};

use super::{timer_from, timer_image, Helper, LinkKind};
use crate::error::lower;
use crate::primary::state::roles::RoleTimer;
use crate::sys::{self, cgroup};

/// Set (to anything) in the primary's environment: no per-worker cgroups even where they could
/// be created; the keeper watches process groups only.
pub(crate) const NO_CGROUP_VAR: &str = "RELOADSUP_NO_CGROUP";

/// What the primary knows about the keeper and the worker groups it guards: plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeeperState {
    /// Every worker role process group not reaped yet (workers and spares).
    pub tracked: BTreeSet<u32>,
    /// The base of the per-worker cgroups, when they are used.
    pub cgroup: Option<PathBuf>,
}

pub(crate) struct Keeper {
    pub state: KeeperState,
    /// Its process and link (the primary only writes to it: not polled).
    helper: Helper,
    primary_pid: u32,
}

fn helper() -> Helper {
    Helper::new(
        "keeper",
        "reloadsup-keeper",
        vec!["__keeper".into()],
        LinkKind::Packets,
        None,
    )
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
                tracked: BTreeSet::new(),
                cgroup,
            },
            helper: helper(),
            primary_pid,
        }
    }

    /// The cgroup of worker `pid` (its process group id), when per-worker cgroups are used.
    pub(crate) fn worker_cgroup(&self, pid: u32) -> Option<String> {
        let base = self.state.cgroup.as_deref()?;
        cgroup::worker_dir(base, pid).to_str().map(str::to_string)
    }

    /// The word a worker role gets after the primary's pid: the cgroup base, if any.
    pub(crate) fn worker_arg(&self) -> Option<&str> {
        self.state.cgroup.as_deref().and_then(Path::to_str)
    }

    /// Spawns the keeper and tells it the whole live set; false (logged) if it could not.
    pub(crate) fn start(&mut self, poll: &Poll) -> bool {
        let spec = KeeperSpec {
            version: PROTOCOL_VERSION,
            primary_pid: self.primary_pid,
            cgroup: self
                .state
                .cgroup
                .as_ref()
                .map(|p| p.as_os_str().as_bytes().to_vec()),
        };
        let tracked = &self.state.tracked;
        // A fresh socket buffer takes the spec and a few thousand groups without blocking.
        self.helper.start(poll, |link| {
            let body = proto::encode(&spec).map_err(io::Error::other)?;
            sys::send_nonblocking(link.as_fd(), &body)?;
            let tracked: Vec<u32> = tracked.iter().copied().collect();
            for pgids in tracked.chunks(proto::MAX_TRACK_BATCH) {
                let msg = KeeperMessage::Track {
                    pgids: pgids.to_vec(),
                };
                let body = proto::encode(&msg).map_err(io::Error::other)?;
                sys::send_nonblocking(link.as_fd(), &body)?;
            }
            Ok(Some(link))
        })
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
        let Some(link) = &self.helper.link else {
            return;
        };
        let sent = proto::encode(msg)
            .map_err(io::Error::other)
            .and_then(|body| sys::send_nonblocking(link.as_fd(), &body));
        if let Err(e) = sent {
            // Reaped like any child; `exited` then starts a new one with the whole set.
            self.helper
                .replace(&format!("does not keep up ({})", lower(&e)));
        }
    }

    pub(crate) fn is(&self, pid: u32) -> bool {
        self.helper.is(pid)
    }

    /// The keeper was reaped; the roles' timer starts another.
    pub(crate) fn exited(&mut self, status: sys::ExitStatus) {
        self.helper.exited();
        log::warn!("the keeper {status}");
    }

    /// At a normal exit, every worker is reaped: closing the link makes the keeper remove the
    /// cgroups and exit. Without a keeper, try to remove them here.
    pub(crate) fn close(&mut self) {
        if self.helper.link.take().is_none() {
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
        let (started, backoff, restart_at) = timer_image(timer, clock);
        reloadsup_protocol::upgrade::KeeperImage {
            link_fd: self.helper.link_fd(),
            pid: self.helper.pid,
            tracked: self.state.tracked.iter().copied().collect(),
            cgroup: self
                .state
                .cgroup
                .as_ref()
                .map(|p| p.as_os_str().as_bytes().to_vec()),
            started,
            backoff,
            restart_at,
        }
    }

    pub(crate) fn resume(
        primary_pid: u32,
        image: reloadsup_protocol::upgrade::KeeperImage,
        link: Option<OwnedFd>,
        clock: &crate::primary::handoff::Clock,
    ) -> (Keeper, RoleTimer) {
        use std::os::unix::ffi::OsStringExt;
        let timer = timer_from(
            image.pid.is_some(),
            (image.started, image.backoff, image.restart_at),
            clock,
        );
        let keeper = Keeper {
            state: KeeperState {
                tracked: image.tracked.into_iter().collect(),
                cgroup: image
                    .cgroup
                    .map(|c| PathBuf::from(std::ffi::OsString::from_vec(c))),
            },
            // Not polled: no registration can fail.
            helper: Helper {
                pid: image.pid,
                link,
                ..helper()
            },
            primary_pid,
        };
        (keeper, timer)
    }
}
