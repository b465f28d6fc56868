//! The inspector role (`__inspector`, with `--ready listening`): looks at starting workers for
//! the primary and says which of them wait for connections (see [`look`]).
//!
//! Reading another process's `/proc` files, fds and memory can take seconds, or wait on that
//! process for as long as it likes (an epoll's fdinfo waits on the epoll's mutex, which a
//! thread faulting on a userfaultfd or FUSE page in `epoll_wait` holds; a page of its memory
//! may never come). So the primary never does it: it sends this process an [`Inspect`] at a
//! time and reads the [`Looked`] answer when it comes; one that does not come in time gets
//! this process killed and replaced (see `primary/helpers/inspector.rs`).
//!
//! It runs as the workers' user where the kernel lets that user look at them (`__inspector
//! --uid U --gid G`), switched to before it reads anything, and undumpable. It dies with the
//! primary, exits when its link closes, and exits on its own after [`IDLE`] without a
//! request: the primary starts one again when a worker is next starting.

mod look;

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use reloadsup_protocol::{self as proto, Inspect, Looked, SeenListening, PROTOCOL_VERSION};

pub(crate) use look::{socket_inode, tcp_address};

use crate::sys;

/// How long it waits for a request before it exits.
pub(crate) const IDLE: Duration = Duration::from_secs(10);

/// The largest request read (the primary sends at most 128 KiB).
const MAX_REQUEST: usize = 256 * 1024;

/// A request's workers are looked at until this much time went by; the answer then says what
/// was seen so far, and the others are asked about again: one worker that is slow to look at
/// does not keep the others from being seen.
const BUDGET: Duration = Duration::from_millis(500);

/// Runs the inspector role; `args` are the words after `__inspector`: `--uid U --gid G` when
/// it must switch to the workers' user, or nothing.
pub(crate) fn run(args: &[OsString]) -> u8 {
    crate::roles::run_as_workers("inspector", args, serve)
}

fn serve(drop_to: Option<(u32, u32)>) -> io::Result<()> {
    let link = sys::take_role_link()?;
    if let Some((uid, gid)) = drop_to {
        // Before it reads anything of a worker's: it needs nothing but its link.
        sys::drop_privileges(Some(uid), Some(gid)).map_err(io::Error::other)?;
    }
    // A worker of the same uid must not ptrace it and answer for it.
    sys::set_undumpable()?;
    // One that attached between the drop and that call (with fs.suid_dumpable=1, where the
    // kernel leaves a process dumpable across a change of user) stays attached: then stop.
    if traced() {
        return Err(io::Error::other("traced by another process; exiting"));
    }
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut parent_checked = false;
    loop {
        if !sys::wait_readable(link.as_fd(), Some(IDLE))? {
            return Ok(());
        }
        let n = match sys::recv_nowait(link.as_fd(), &mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let request: Inspect = proto::decode(&buf[..n]).map_err(io::Error::other)?;
        if request.version != PROTOCOL_VERSION {
            return Err(io::Error::other(proto::Error::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: request.version,
            }));
        }
        if !parent_checked {
            // After the drop: a change of credentials clears the parent-death signal.
            sys::die_with_parent(request.primary_pid)?;
            parent_checked = true;
        }
        let answer = proto::encode(&look_at(&request)).map_err(io::Error::other)?;
        // The primary reads its link every turn; a full link is a primary that is gone.
        nix::sys::socket::send(
            link.as_raw_fd(),
            &answer,
            nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        )
        .map_err(io::Error::from)?;
    }
}

/// Whether a process traces this one (`TracerPid` of `/proc/self/status`).
fn traced() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("TracerPid:"))
            .is_some_and(|p| p.trim() != "0")
    })
}

/// One scan of the workers `request` names, within [`BUDGET`].
fn look_at(request: &Inspect) -> Looked {
    let mut scan = look::Scan::new(u32::from(request.may_dump));
    let began = Instant::now();
    let mut seen = Vec::new();
    let mut looked = 0;
    for worker in &request.workers {
        if began.elapsed() > BUDGET {
            break;
        }
        looked += 1;
        let ours = look::Ours {
            inodes: worker.inodes.clone(),
            tcp: worker.tcp.clone(),
        };
        let cgroup = worker.cgroup.as_deref().map(Path::new);
        if let Some(s) = look::group_waits(worker.pid, cgroup, &ours, &mut scan) {
            seen.push(SeenListening {
                worker: worker.pid,
                pid: s.pid,
                how: s.how,
            });
        }
    }
    log::trace!(
        "looked at {} workers in {:?}",
        request.workers.len(),
        began.elapsed()
    );
    Looked {
        id: request.id,
        seen,
        dumped_ns: scan.dumped.as_nanos() as u64,
        looked,
    }
}
