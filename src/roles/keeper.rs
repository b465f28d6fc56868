//! The keeper role: a watcher that makes every process a worker started die with the primary.
//!
//! `PR_SET_PDEATHSIG` kills a worker with the primary, but not the children the worker started:
//! one left running keeps the listening socket, and the port becomes a black hole that a new
//! reloadsup cannot bind. The keeper holds one end of a socketpair whose other end only the
//! primary has; the kernel closes that end when the primary dies, however it dies (SIGKILL
//! included). On that EOF the keeper SIGKILLs every worker process group the primary told it
//! about, writes `cgroup.kill` on the workers' base cgroup when there is one (which also catches
//! children that `setsid()` out of their group), removes the cgroups, and exits.
//!
//! It must not die before the primary of a signal meant for the primary's terminal or unit,
//! so TERM, INT, HUP and QUIT are ignored; it runs in its own process group (set at spawn). It
//! signals only groups whose leader the primary had not reaped when it said so (see
//! ARCHITECTURE.md, "No stranger is ever signalled"), and it never blocks the primary: it reads
//! whatever it is sent, as fast as it is sent.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use reloadsup_protocol::{self as proto, KeeperMessage, KeeperSpec, PROTOCOL_VERSION};

use crate::sys::{self, cgroup};

/// How often a worker cgroup that was still busy is tried again, and for how long.
const RMDIR_RETRY: Duration = Duration::from_millis(20);
const RMDIR_FOR: Duration = Duration::from_secs(5);

/// Runs the keeper role; `_args` are the words after `__keeper` (none).
pub(crate) fn run(_args: &[OsString]) -> u8 {
    sys::ignore_signals(&[
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ]);
    match keep() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("reloadsup: keeper: {}", crate::error::lower(&e));
            1
        }
    }
}

fn keep() -> io::Result<()> {
    let link = sys::take_role_link()?;
    // Room for a spec with a cgroup path of PATH_MAX and for the largest Track batch.
    let mut buf = vec![0u8; 16 * 1024];
    let (n, _) = sys::recv_with_fds(link.as_fd(), &mut buf, 0)?;
    if n == 0 {
        return Ok(());
    }
    let spec: KeeperSpec = proto::decode(&buf[..n]).map_err(io::Error::other)?;
    // It waits for the rest of the primary's life: most of what start-up ran is never run
    // again (issue 19, item 10).
    sys::shed_code_pages();
    if spec.version != PROTOCOL_VERSION {
        return Err(io::Error::other(proto::Error::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: spec.version,
        }));
    }
    let base = spec.cgroup.map(|b| PathBuf::from(OsString::from_vec(b)));
    let mut tracked = BTreeSet::new();
    // Worker cgroups whose leader was reaped, to remove once their last process is gone.
    let mut busy: Vec<(PathBuf, Instant)> = Vec::new();
    loop {
        let timeout = (!busy.is_empty()).then_some(RMDIR_RETRY);
        if sys::wait_readable(link.as_fd(), timeout)? {
            // A reset link is the primary's death too.
            let n = match sys::recv_with_fds(link.as_fd(), &mut buf, 0) {
                Ok((n, _)) => n,
                Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => 0,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A broken link (not the primary's death): kill nothing, exit, and let the
                // primary start a keeper with a fresh link and the whole set.
                Err(e) => return Err(e),
            };
            if n == 0 {
                break;
            }
            match proto::decode::<KeeperMessage>(&buf[..n]) {
                Ok(KeeperMessage::Track { pgids }) => tracked.extend(pgids),
                Ok(KeeperMessage::Forget { pgid }) => {
                    tracked.remove(&pgid);
                    if let Some(base) = &base {
                        busy.push((cgroup::worker_dir(base, pgid), Instant::now()));
                    }
                }
                // A bug on the primary's side; losing one message is better than dying.
                Err(e) => eprintln!("reloadsup: keeper: bad message: {e}"),
            }
        }
        // The primary killed the cgroup before it said Forget; its processes are dying. One
        // still there after RMDIR_FOR is left to the final sweep.
        busy.retain(|(dir, since)| {
            !cgroup::remove(dir).unwrap_or(true) && since.elapsed() < RMDIR_FOR
        });
    }
    // The primary is gone: whatever it started goes with it.
    for &pgid in &tracked {
        let _ = sys::kill_group(pgid, Signal::SIGKILL);
    }
    if let Some(base) = &base {
        if let Err(e) = cgroup::kill(base) {
            eprintln!(
                "reloadsup: keeper: unable to kill {}: {}",
                base.display(),
                crate::error::lower(&e)
            );
        }
    }
    if !tracked.is_empty() {
        eprintln!(
            "reloadsup: keeper: the primary (pid {}) is gone; killed {} worker process group(s)",
            spec.primary_pid,
            tracked.len()
        );
    }
    if let Some(base) = &base {
        // Killed processes leave their cgroup within milliseconds; bounded anyway.
        let until = Instant::now() + RMDIR_FOR;
        while !cgroup::remove_tree(base).unwrap_or(true) && Instant::now() < until {
            std::thread::sleep(RMDIR_RETRY);
        }
    }
    Ok(())
}
