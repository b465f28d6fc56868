//! The only place in reloadsup that talks to the kernel below nix's safe API: spawning role
//! processes, passing and placing fds, exec, and reaping.
//!
//! Every fd created here is close-on-exec in the same call that creates it. Between fork and
//! exec (in [`spawn_role`]) only async-signal-safe calls run: no allocation, no locks.
//! Nothing here knows about generations or workers; it works on pids and fds.
#![allow(unsafe_code)]

pub(crate) mod cgroup;
mod fork;

pub(crate) use fork::{close_all_except, fork_with};

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sys::signal::{self, SigSet, SigmaskHow, Signal};
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType};
use nix::unistd::Pid;

/// The fd at which a role process finds its link to the primary.
pub(crate) const ROLE_LINK_FD: RawFd = 3;

/// The most fds sent in one SCM_RIGHTS message (the kernel's SCM_MAX_FD is 253).
pub(crate) const MAX_FDS_PER_MESSAGE: usize = 250;

fn errno(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Makes sure fds 0, 1 and 2 are open, on `/dev/null` if they were closed, so that no socket of
/// ours is ever created there and handed to a worker as its standard stream.
pub(crate) fn ensure_std_fds() -> io::Result<()> {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries the fd table; an invalid fd yields EBADF.
        let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1;
        if !open {
            let flags = if fd == 0 {
                libc::O_RDONLY
            } else {
                libc::O_WRONLY
            };
            // SAFETY: the path is a NUL-terminated literal. Without O_CLOEXEC on purpose: this
            // becomes a standard stream that children inherit.
            let got = unsafe { libc::open(c"/dev/null".as_ptr(), flags) };
            if got < 0 {
                return Err(io::Error::last_os_error());
            }
            if got != fd {
                // The lowest free fd is taken by open(2), so a lower std fd is still closed;
                // the loop opens that one first. This cannot happen, but do not leak.
                // SAFETY: `got` was just opened by us and is owned by nobody else.
                unsafe { libc::close(got) };
                return Err(io::Error::other(
                    "unable to place /dev/null on a closed standard fd",
                ));
            }
        }
    }
    Ok(())
}

/// A connected pair of SOCK_SEQPACKET Unix sockets, both close-on-exec.
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(errno)
}

/// A connected pair of SOCK_STREAM Unix sockets, both close-on-exec.
pub(crate) fn stream_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    socket::socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(errno)
}

/// Sends `bytes` with `fds` attached as SCM_RIGHTS. Uses the `sendfd` crate for the send side.
pub(crate) fn send_with_fds(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    use sendfd::SendWithFd;
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    // sendfd works on std socket types; borrow ours as one without taking ownership.
    // SAFETY: the fd is valid for the duration of the borrow and ManuallyDrop keeps the
    // temporary UnixStream from closing it.
    let stream = std::mem::ManuallyDrop::new(unsafe {
        std::os::unix::net::UnixStream::from_raw_fd(sock.as_raw_fd())
    });
    let sent = stream.send_with_fd(bytes, &raw)?;
    if sent != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short send of a hand-off message",
        ));
    }
    Ok(())
}

/// One message as [`recvmsg_owning`] received it.
struct Received {
    bytes: usize,
    /// Every fd the message carried, owned (and close-on-exec) whatever else went wrong.
    fds: Vec<OwnedFd>,
    /// The sender's pid, when credentials came with it (SO_PASSCRED).
    pid: Option<u32>,
    /// MSG_TRUNC, MSG_CTRUNC.
    truncated: bool,
    control_truncated: bool,
}

/// The kernel's SCM_MAX_FD: one message carries at most this many fds, however many
/// SCM_RIGHTS headers the sender put in it (they are merged into one list).
const SCM_MAX_FD: usize = 253;

/// Room for credentials and [`SCM_MAX_FD`] fds with their headers (about 1 KiB), as 8-byte
/// words for the alignment `cmsghdr` wants.
const CONTROL_WORDS: usize = {
    // SAFETY: CMSG_SPACE is plain arithmetic on its argument.
    let bytes = unsafe {
        libc::CMSG_SPACE(std::mem::size_of::<libc::ucred>() as libc::c_uint)
            + libc::CMSG_SPACE((SCM_MAX_FD * std::mem::size_of::<libc::c_int>()) as libc::c_uint)
    };
    (bytes as usize).div_ceil(8)
};

/// `recvmsg(2)` of one message with `MSG_CMSG_CLOEXEC`, taking ownership of every fd it carried.
///
/// Not nix's `recvmsg`: its control-message iterator refuses a message with MSG_CTRUNC set,
/// and the fds the kernel had already installed in our table were then left there, open and
/// owned by nobody: a worker that sent a notify datagram with more fds than the buffer held
/// leaked 8 of them into the primary each time. Here the buffer holds the most any message can
/// carry, and the walk below owns whatever arrived, truncated or not.
fn recvmsg_owning(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: libc::c_int,
) -> io::Result<Received> {
    let mut control = [0u64; CONTROL_WORDS];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty header; the fields set below point at `iov`
    // and `control`, which outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` describes buffers we own, valid and large enough for what it says.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags | libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut got = Received {
        bytes: n as usize,
        fds: Vec::new(),
        pid: None,
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        control_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    };
    let control_end =
        control.as_ptr() as usize + (msg.msg_controllen as usize).min(8 * CONTROL_WORDS);
    // SAFETY: the CMSG_* macros walk the headers the kernel wrote in `control`, CMSG_NXTHDR
    // stopping at msg_controllen; each header's data is read only up to the end of the control
    // data, unaligned; every fd in an SCM_RIGHTS header was installed in our table for us by
    // this call, and nobody else owns it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            let claimed = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
            let len = claimed.min(control_end.saturating_sub(data as usize));
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let ints = data.cast::<libc::c_int>();
                for i in 0..len / std::mem::size_of::<libc::c_int>() {
                    got.fds
                        .push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(ints.add(i))));
                }
            } else if (*c).cmsg_level == libc::SOL_SOCKET
                && (*c).cmsg_type == libc::SCM_CREDENTIALS
                && len >= std::mem::size_of::<libc::ucred>()
            {
                let cred = std::ptr::read_unaligned(data.cast::<libc::ucred>());
                got.pid = Some(cred.pid as u32);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(got)
}

/// Receives one message and the fds attached to it, at most `max_fds`.
///
/// Received fds are close-on-exec (MSG_CMSG_CLOEXEC) and owned at once. Truncated data or
/// truncated control data is an error, and every fd that did arrive is closed then.
pub(crate) fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let got = recvmsg_owning(sock, buf, 0)?;
    if got.control_truncated {
        return Err(io::Error::other(
            "control data was truncated: too many fds in one message",
        ));
    }
    if got.truncated {
        return Err(io::Error::other("message was truncated"));
    }
    if got.fds.len() > max_fds {
        return Err(io::Error::other(format!(
            "received {} fds where at most {max_fds} were expected",
            got.fds.len()
        )));
    }
    Ok((got.bytes, got.fds))
}

/// Receives one datagram with the sender's credentials (SO_PASSCRED must be on), without
/// waiting. Returns the sender's pid, or `None` when the kernel attached no credentials; a
/// datagram longer than `buf` is consumed and an `InvalidData` error.
/// Whatever fds came with it are closed: nobody should send us fds there.
pub(crate) fn recv_with_creds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Option<u32>)> {
    let got = recvmsg_owning(sock, buf, libc::MSG_DONTWAIT)?;
    if got.truncated {
        // As systemd does: a message cut short is not read at all.
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a datagram longer than {} bytes, ignored", buf.len()),
        ));
    }
    Ok((got.bytes, got.pid))
}

/// Starts a helper thread of the primary with every signal blocked in it, so that a signal is
/// always delivered to the loop's thread (its handlers, and the window around an in-place
/// upgrade's exec, where the loop's thread blocks signals so none is lost, count on that).
pub(crate) fn spawn_quiet_thread(
    name: &str,
    f: impl FnOnce() + Send + 'static,
) -> io::Result<std::thread::JoinHandle<()>> {
    let mut old = SigSet::empty();
    signal::pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old),
    )
    .map_err(errno)?;
    // The new thread starts with the mask of this one: all blocked.
    let spawned = std::thread::Builder::new().name(name.into()).spawn(f);
    let _ = signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    spawned
}

/// A copy of file descriptor `fd` of process `pid` (`pidfd_open` and `pidfd_getfd`, Linux 5.6),
/// close-on-exec. Allowed where reading `/proc/PID/mem` is (the same ptrace access check). The
/// copy holds the open file: look at it and drop it at once.
pub(crate) fn copy_fd_of(pid: u32, fd: RawFd) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open takes a pid and flags, no memory; it returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pidfd_open just returned this fd (close-on-exec); nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    // SAFETY: pidfd_getfd takes our pidfd, the target's fd number and flags 0, no memory; it
    // returns a new close-on-exec fd or -1.
    let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pidfd_getfd just returned this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(copy as RawFd) })
}

/// Spawns this executable (`/proc/self/exe`) in a hidden role, `arg0` and `args`, with a fresh
/// SEQPACKET link at [`ROLE_LINK_FD`]; returns the child's pid and the primary's end of the link.
pub(crate) fn spawn_linked_role(arg0: &str, args: &[&str]) -> io::Result<(u32, OwnedFd)> {
    let (ours, theirs) = seqpacket_pair()?;
    let pid = spawn_role(Path::new("/proc/self/exe"), arg0, args, &theirs)?;
    Ok((pid.as_raw() as u32, ours))
}

/// Spawns `exe` (normally `/proc/self/exe`) with `args` in its own process group, with `link`
/// placed at [`ROLE_LINK_FD`] and every other fd of ours left behind by close-on-exec.
///
/// A plain fork, not std's `Command`: `Command` waits for the child's exec to succeed, which
/// serialises the exec of every worker of a generation in the primary (about 2 ms each);
/// here the parent returns right after fork and the children exec in parallel. A failed exec
/// shows up as the child's exit status 127. The child starts with every signal blocked, so no
/// handler of ours runs in it; the role unblocks them once it runs (see [`unblock_signals`]).
pub(crate) fn spawn_role(exe: &Path, arg0: &str, args: &[&str], link: &OwnedFd) -> io::Result<Pid> {
    // Everything the child touches is built before fork: after it, no allocation.
    let path = CString::new(exe.as_os_str().as_bytes())?;
    let argv: Vec<CString> = std::iter::once(arg0)
        .chain(args.iter().copied())
        .map(CString::new)
        .collect::<Result<_, _>>()?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let link_fd = link.as_raw_fd();

    let mut old = SigSet::empty();
    signal::sigprocmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old),
    )
    .map_err(errno)?;
    // SAFETY: the primary is single-threaded, so the child's copy of the address space is
    // consistent. The child calls only async-signal-safe functions (setpgid, fcntl, dup2,
    // execv, _exit) on data prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: in the child; see above. `_exit` skips every destructor and atexit hook.
        unsafe {
            libc::setpgid(0, 0);
            let placed = if link_fd == ROLE_LINK_FD {
                // dup2 onto itself would leave close-on-exec set; clear it instead.
                libc::fcntl(link_fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(link_fd, ROLE_LINK_FD)
            };
            if placed != -1 {
                libc::execv(path.as_ptr(), argv_ptrs.as_ptr());
            }
            libc::_exit(127);
        }
    }
    let fork_error = io::Error::last_os_error();
    let _ = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    if pid < 0 {
        return Err(fork_error);
    }
    // Also from this side, so the group exists before we might signal it; after the child's
    // exec this fails with EACCES, harmlessly, because the child did it itself.
    // SAFETY: setpgid on our own child changes nothing else.
    unsafe { libc::setpgid(pid, pid) };
    Ok(Pid::from_raw(pid))
}

/// Moves this process from SCHED_OTHER to SCHED_BATCH while it waits to become a worker, so
/// that waking it does not preempt the primary while it hands out a generation. Returns
/// whether it changed anything; a supervisor run under another policy is left alone.
///
/// Not SCHED_IDLE, though it frees the primary better: on a machine saturated by the serving
/// generation an idle-class process gets almost no CPU, and a reload would wait for it.
pub(crate) fn sched_defer() -> bool {
    // SAFETY: sched_getscheduler(0) only reads our own policy.
    if unsafe { libc::sched_getscheduler(0) } != libc::SCHED_OTHER {
        return false;
    }
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a valid sched_param; it changes only this process's own policy, and going
    // between SCHED_OTHER and SCHED_BATCH needs no privilege.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) == 0 }
}

/// Undoes [`sched_defer`] before the command runs, so the worker schedules like the primary.
pub(crate) fn sched_normal() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: as above.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Unblocks every signal: role processes start with all of them blocked (see [`spawn_role`]).
pub(crate) fn unblock_signals() {
    let _ = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// Takes the role link inherited at [`ROLE_LINK_FD`] and makes it close-on-exec.
pub(crate) fn take_role_link() -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only queries the fd table.
    if unsafe { libc::fcntl(ROLE_LINK_FD, libc::F_GETFD) } == -1 {
        return Err(io::Error::other(
            "no link to the primary at fd 3: this role is started by reloadsup itself",
        ));
    }
    // SAFETY: fd 3 was placed for us by the primary and nothing else in this fresh process
    // owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(ROLE_LINK_FD) };
    set_cloexec(fd.as_fd(), true)?;
    Ok(fd)
}

/// `setsockopt(2)` with an `int` value, for the options nix does not name (`TCP_DEFER_ACCEPT`,
/// `TCP_FASTOPEN`).
pub(crate) fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `fd` is an open socket borrowed for the call; the pointer and length describe
    // `value`, a live `c_int` on this stack frame that the kernel only reads.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `getsockopt(2)` of an `int` option, the reading side of [`setsockopt_int`] (for tests).
#[cfg(test)]
pub(crate) fn getsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is an open socket borrowed for the call; the kernel writes at most `len`
    // bytes into `value`, a live `c_int` on this stack frame, and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

pub(crate) fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let flags = if on {
        FdFlag::FD_CLOEXEC
    } else {
        FdFlag::empty()
    };
    fcntl(fd, FcntlArg::F_SETFD(flags)).map_err(errno)?;
    Ok(())
}

/// Places `fds` at `first`, `first+1`, ... without close-on-exec, moves `keep` to the fd right
/// after them (close-on-exec), and closes every other fd at or above `first`. Used by the
/// worker role right before exec: `keep` is its link to the primary, which stays open to
/// report a failed exec and closes by itself on a successful one.
///
/// The fds are first moved above the target range, so that placing one never overwrites
/// another still to be placed (the `dup2(fd, fd)` trap and its cousins).
pub(crate) fn place_fds(fds: Vec<OwnedFd>, first: RawFd, keep: &mut OwnedFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg};
    let end = first + fds.len() as RawFd;
    // Everything goes above `end` (not to it), so that moving `keep` onto `end` at the last
    // step cannot overwrite one of the copies still open.
    let high_keep = fcntl(keep.as_fd(), FcntlArg::F_DUPFD_CLOEXEC(end + 1)).map_err(errno)?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new fd that we own; the old one is closed by the
    // assignment.
    *keep = unsafe { OwnedFd::from_raw_fd(high_keep) };
    let mut moved = Vec::with_capacity(fds.len());
    for fd in fds {
        let high = fcntl(fd.as_fd(), FcntlArg::F_DUPFD_CLOEXEC(end + 1)).map_err(errno)?;
        // SAFETY: F_DUPFD_CLOEXEC returned a new fd that we own.
        moved.push(unsafe { OwnedFd::from_raw_fd(high) });
        drop(fd);
    }
    for (i, fd) in moved.iter().enumerate() {
        let target = first + i as RawFd;
        // SAFETY: dup2 onto a target below `end`: every fd we still need lives above `end`,
        // so nothing of ours is overwritten; dup2 clears close-on-exec on the target.
        if unsafe { libc::dup2(fd.as_raw_fd(), target) } == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    drop(moved);
    // SAFETY: dup3 onto `end`, which holds nothing of ours (our copies are all above it).
    if unsafe { libc::dup3(keep.as_raw_fd(), end, libc::O_CLOEXEC) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: dup3 just made `end` a copy that we own; the old one is closed by the assignment.
    *keep = unsafe { OwnedFd::from_raw_fd(end) };
    close_from(end + 1);
    Ok(())
}

/// A pipe, both ends close-on-exec: (read end, write end).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(errno)
}

/// Makes `target` (0, 1 or 2) a copy of `fd` without close-on-exec: a worker role puts its
/// output pipes at stdout and stderr this way, right before exec.
pub(crate) fn dup_onto(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    if fd.as_raw_fd() == target {
        // dup2 onto itself would leave close-on-exec set: clear it instead.
        return set_cloexec(fd, false);
    }
    // SAFETY: dup2 onto a standard fd, which the caller means to replace; dup2 clears
    // close-on-exec on the target and closes what was there.
    if unsafe { libc::dup2(fd.as_raw_fd(), target) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends one message with `fds` attached (SCM_RIGHTS) without ever blocking, and without
/// SIGPIPE when the peer is gone. A full socket buffer is `WouldBlock`.
pub(crate) fn send_with_fds_nonblocking(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let iov = [io::IoSlice::new(bytes)];
    let cmsg = [socket::ControlMessage::ScmRights(&raw)];
    let cmsgs: &[socket::ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
    let sent = socket::sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, flags, None).map_err(errno)?;
    if sent != bytes.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short send"));
    }
    Ok(())
}

/// Waits for child `pid` to exit and reaps it, at most `timeout`; whether it did. Only for
/// the primary's exit, when nothing else waits on the loop.
pub(crate) fn wait_exit(pid: u32, timeout: std::time::Duration) -> bool {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(_) => return true,
            Err(nix::Error::EINTR) => {}
            Err(_) => return true,
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Sets or clears O_NONBLOCK on an fd's open file description.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).map_err(errno)?);
    let flags = if on {
        flags | OFlag::O_NONBLOCK
    } else {
        flags - OFlag::O_NONBLOCK
    };
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(errno)?;
    Ok(())
}

/// Receives one message without waiting; attached fds, if any, are discarded by the kernel.
/// `Ok(0)` is end-of-file on a SOCK_SEQPACKET socket.
pub(crate) fn recv_nowait(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    socket::recv(sock.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT).map_err(errno)
}

/// Whether the peer closed this SOCK_SEQPACKET socket with nothing left to read. Neither waits
/// nor consumes a message.
pub(crate) fn at_eof(sock: BorrowedFd<'_>) -> bool {
    let mut buf = [0u8; 1];
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_PEEK;
    matches!(socket::recv(sock.as_raw_fd(), &mut buf, flags), Ok(0))
}

/// Closes every fd at or above `first`.
pub(crate) fn close_from(first: RawFd) {
    // SAFETY: close_range only closes fds; callers have given up every fd at or above `first`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            0,
        )
    };
    if r == 0 {
        return;
    }
    // Old kernels: walk /proc/self/fd instead.
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd >= first)
        .collect();
    for fd in fds {
        // SAFETY: as above; an fd that was the directory's own is already gone (EBADF).
        unsafe { libc::close(fd) };
    }
}

/// Makes the program `cmd` starts inherit no fd above 2: in the child, after fork, every fd
/// from 3 up is marked close-on-exec (not closed: std's own exec-error pipe must survive
/// until the exec), so whatever a library leaked without CLOEXEC goes at the exec.
pub(crate) fn no_inherited_fds(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs between fork and exec in the child of a multi-threaded process, so
    // it makes only async-signal-safe calls (raw close_range and fcntl syscalls) and no
    // allocation.
    unsafe {
        cmd.pre_exec(|| {
            const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
            let r = libc::syscall(
                libc::SYS_close_range,
                3,
                libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC,
            );
            if r != 0 {
                // Kernels before 5.11: one fcntl per possible fd, bounded.
                for fd in 3..65536 {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            Ok(())
        });
    }
}

/// Asks the kernel to SIGKILL us when our parent dies, then checks the parent is still the one
/// we expect (it may have died before the request took effect).
pub(crate) fn die_with_parent(expected_parent: u32) -> io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and changes only our own state.
    if unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    } == -1
    {
        return Err(io::Error::last_os_error());
    }
    let parent = nix::unistd::getppid().as_raw() as u32;
    if parent != expected_parent {
        return Err(io::Error::other(format!(
            "the primary (pid {expected_parent}) is gone; parent is now pid {parent}"
        )));
    }
    Ok(())
}

/// Makes the process non-dumpable: no core file, and no process of the same uid may ptrace it
/// or open its `/proc/PID/mem` and fds (they, and its `/proc/PID` entries, belong to root).
pub(crate) fn set_undumpable() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes a plain integer and changes only our own state.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0 as libc::c_ulong, 0, 0, 0) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Restores every signal to its default disposition and unblocks all, so the command starts
/// as if the supervisor was not there (Rust ignores SIGPIPE, and ignored signals survive exec).
pub(crate) fn reset_signals() {
    for sig in Signal::iterator() {
        if sig == Signal::SIGKILL || sig == Signal::SIGSTOP {
            continue;
        }
        // SAFETY: installing SIG_DFL is always sound: no handler code of ours can run after.
        let _ = unsafe { signal::signal(sig, signal::SigHandler::SigDfl) };
    }
    let _ = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// Replaces this process with `argv[0]` looked up in PATH. Returns only on failure.
pub(crate) fn execvp(argv: &[impl AsRef<OsStr>]) -> io::Error {
    let cargs: Result<Vec<CString>, _> = argv
        .iter()
        .map(|a| CString::new(a.as_ref().as_bytes()))
        .collect();
    let Ok(cargs) = cargs else {
        return io::Error::new(
            io::ErrorKind::InvalidInput,
            "an argument contains a NUL byte",
        );
    };
    if cargs.is_empty() {
        return io::Error::new(io::ErrorKind::InvalidInput, "empty command");
    }
    match nix::unistd::execvp(&cargs[0], &cargs) {
        Ok(never) => match never {},
        Err(e) => errno(e),
    }
}

/// Switches to `gid` and `uid` (supplementary groups dropped), for workers run as another user.
pub(crate) fn drop_privileges(
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<(), crate::error::SetupError> {
    use crate::error::SetupError;
    use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
    if let Some(gid) = gid {
        if nix::unistd::getuid().is_root() {
            setgroups(&[Gid::from_raw(gid)]).map_err(|e| SetupError::Groups {
                gid,
                source: errno(e),
            })?;
        }
        setgid(Gid::from_raw(gid)).map_err(|e| SetupError::Group {
            gid,
            source: errno(e),
        })?;
    }
    if let Some(uid) = uid {
        setuid(Uid::from_raw(uid)).map_err(|e| SetupError::User {
            uid,
            source: errno(e),
        })?;
    }
    Ok(())
}

/// Sends `sig` to the process group `pgid`. A group that is gone is not an error.
/// Sends `sig` to the process `pid` alone (not its group); a process already gone is no error.
pub(crate) fn kill(pid: u32, sig: Signal) -> io::Result<()> {
    match signal::kill(Pid::from_raw(pid as i32), sig) {
        Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
        Err(e) => Err(errno(e)),
    }
}

pub(crate) fn kill_group(pgid: u32, sig: Signal) -> io::Result<()> {
    match signal::killpg(Pid::from_raw(pgid as i32), sig) {
        Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
        Err(e) => Err(errno(e)),
    }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Exited(code) => write!(f, "exited with status {code}"),
            ExitStatus::Signaled(sig) => match Signal::try_from(*sig) {
                Ok(s) => write!(f, "was killed by {}", s.as_str()),
                Err(_) => write!(f, "was killed by signal {sig}"),
            },
        }
    }
}

/// Reaps one exited child, if any, without blocking.
///
/// The child is first observed with WNOWAIT and its process group SIGKILLed while the child is
/// still a zombie: its pid (the group's id) cannot have been recycled then, so no stranger is
/// ever signalled, and whatever the worker left running in its group goes with it.
/// `before_reap(pid)` runs after that kill and before the reap, while the pid still names our
/// zombie: the primary uses it to kill the worker's cgroup and tell the keeper to forget it.
pub(crate) fn reap_one(mut before_reap: impl FnMut(u32)) -> io::Result<Option<(u32, ExitStatus)>> {
    // SAFETY: siginfo_t is plain data; waitid fills it in, and zeroed si_pid means "no child".
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a siginfo_t we own; P_ALL with WNOHANG never blocks.
    let r = unsafe {
        libc::waitid(
            libc::P_ALL,
            0,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if r == -1 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ECHILD) {
            return Ok(None);
        }
        return Err(e);
    }
    // SAFETY: after a successful waitid the pid and status fields are initialised.
    let (pid, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    // Our children all lead their own process group (spawn_role sets it).
    let _ = kill_group(pid as u32, Signal::SIGKILL);
    before_reap(pid as u32);
    let status = if code == libc::CLD_EXITED {
        ExitStatus::Exited(status)
    } else {
        ExitStatus::Signaled(status)
    };
    // SAFETY: reaps exactly the child observed above; WNOHANG keeps it non-blocking.
    let mut raw = 0;
    unsafe { libc::waitpid(pid, &mut raw, libc::WNOHANG) };
    Ok(Some((pid as u32, status)))
}

/// Sends one message on a SOCK_SEQPACKET socket without ever blocking (and without SIGPIPE
/// when the peer is gone). A full socket buffer is `WouldBlock`.
pub(crate) fn send_nonblocking(sock: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<()> {
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
    let sent = socket::send(sock.as_raw_fd(), bytes, flags).map_err(errno)?;
    if sent != bytes.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short send"));
    }
    Ok(())
}

/// Waits until `fd` is readable (or hung up), at most `timeout` (`None`: no limit).
/// Returns whether it is; an interrupted wait counts as a timeout.
pub(crate) fn wait_readable(
    fd: BorrowedFd<'_>,
    timeout: Option<std::time::Duration>,
) -> io::Result<bool> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let timeout = match timeout {
        None => PollTimeout::NONE,
        Some(t) => PollTimeout::try_from(t).unwrap_or(PollTimeout::MAX),
    };
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    match poll(&mut fds, timeout) {
        Ok(n) => Ok(n > 0),
        Err(nix::Error::EINTR) => Ok(false),
        Err(e) => Err(errno(e)),
    }
}

/// Copies up to `len` bytes from the pipe `from` into the pipe `to` without consuming them
/// (`tee(2)`, non-blocking): `Ok(0)` when `from` is empty and has no writer left, `WouldBlock`
/// when it is empty with writers.
pub(crate) fn tee(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: tee only moves pipe buffer references between two fds we borrow for the call;
    // no memory of ours is touched.
    let n = unsafe {
        libc::tee(
            from.as_raw_fd(),
            to.as_raw_fd(),
            len,
            libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Whether a write to `fd` would not block now (or would fail at once: an error or a hang-up
/// counts, so that the write reports it). For a pipe this means room for `PIPE_BUF` bytes.
pub(crate) fn writable_now(fd: BorrowedFd<'_>) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// Ignores `signals` and unblocks every other one (role processes start with all blocked).
/// Ignored dispositions survive exec; only the keeper uses this, and it execs nothing.
pub(crate) fn ignore_signals(signals: &[Signal]) {
    for &sig in signals {
        // SAFETY: installing SIG_IGN runs no code of ours.
        let _ = unsafe { signal::signal(sig, signal::SigHandler::SigIgn) };
    }
    unblock_signals();
}

/// The process group of `pid`, if it still exists.
pub(crate) fn getpgid(pid: u32) -> Option<u32> {
    nix::unistd::getpgid(Some(Pid::from_raw(pid as i32)))
        .ok()
        .map(|p| p.as_raw() as u32)
}

/// An anonymous memory file holding `bytes`, positioned at its start, close-on-exec: the
/// upgrade hand-off (and the pre-flight's stdin). A memfd never blocks its writer, whatever
/// the size, unlike a pipe.
pub(crate) fn memfd_with(name: &str, bytes: &[u8]) -> io::Result<std::fs::File> {
    use std::io::{Seek, Write};
    let cname = CString::new(name).map_err(io::Error::other)?;
    // SAFETY: `cname` is a valid NUL-terminated string for the duration of the call.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create just returned this fd, owned by nobody else.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(bytes)?;
    file.rewind()?;
    Ok(file)
}

/// Absolute `CLOCK_MONOTONIC` nanoseconds: the clock of `std::time::Instant`, shared by the
/// old and the new image across an exec, so deadlines carried as these numbers stay exact.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        // CLOCK_MONOTONIC cannot fail on Linux; 0 makes every carried deadline due at once,
        // which is safe (the loop re-checks each).
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Re-execs this process in place (same pid) as `exe args...`, keeping `keep` open across the
/// exec. Every signal is blocked first: the mask survives `execve`, so a signal that arrives in
/// the window stays pending until the new image has installed its handlers and unblocks it
/// ([`unblock_signals`]). Returns only on failure, with the mask and the fds' close-on-exec
/// flags as they were, so the old image carries on untouched.
pub(crate) fn exec_in_place(exe: &Path, args: &[&str], keep: &[RawFd]) -> io::Error {
    let cargs: Result<Vec<CString>, _> = std::iter::once(exe.as_os_str().as_bytes())
        .chain(args.iter().map(|a| a.as_bytes()))
        .map(CString::new)
        .collect();
    let Ok(cargs) = cargs else {
        return io::Error::new(io::ErrorKind::InvalidInput, "a path contains a NUL byte");
    };
    // Prepared before the window opens, so that it is as short as it can be.
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    let mut old = SigSet::empty();
    if let Err(e) = signal::sigprocmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old),
    ) {
        return errno(e);
    }
    let restore = |old: &SigSet| {
        for &fd in keep {
            // SAFETY: `fd` is one of ours, open for the whole call (the caller holds it).
            let _ = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        let _ = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(old), None);
    };
    for &fd in keep {
        // SAFETY: `fd` is one of ours, open for the whole call; only its flags change.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == -1 {
            let e = io::Error::last_os_error();
            restore(&old);
            return e;
        }
    }
    let e = match nix::unistd::execve(&cargs[0], &cargs, &env) {
        Ok(never) => match never {},
        Err(e) => errno(e),
    };
    restore(&old);
    e
}

/// Takes ownership of an fd number inherited across an upgrade exec, after checking it is open,
/// not a standard stream, and makes it close-on-exec again.
pub(crate) fn take_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd <= 2 {
        return Err(io::Error::other(format!("fd {fd} is a standard stream")));
    }
    // SAFETY: F_GETFD only queries the fd table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(io::Error::other(format!("fd {fd} is not open")));
    }
    // SAFETY: the old image handed this number over to us alone; the caller takes each
    // number once (it checks for duplicates before calling).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_cloexec(owned.as_fd(), true)?;
    Ok(owned)
}

/// `PR_SET_CHILD_SUBREAPER`: orphaned descendants are re-parented to this process (kept across
/// an exec, so an upgrade in place keeps it).
pub(crate) fn set_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};

    #[test]
    fn a_quiet_thread_blocks_every_signal_and_the_caller_keeps_its_mask() {
        let before = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        spawn_quiet_thread("quiet-test", move || {
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            tx.send(status).unwrap();
        })
        .unwrap()
        .join()
        .unwrap();
        let blocked = |status: &str| {
            let hex = status
                .lines()
                .find_map(|l| l.strip_prefix("SigBlk:"))
                .unwrap()
                .trim()
                .to_string();
            u64::from_str_radix(&hex, 16).unwrap()
        };
        let quiet = blocked(&rx.recv().unwrap());
        // Every standard signal (1..=31) but SIGKILL and SIGSTOP, which cannot be blocked.
        let standard = 0x7fff_ffffu64 & !(1 << (libc::SIGKILL - 1)) & !(1 << (libc::SIGSTOP - 1));
        assert_eq!(quiet & standard, standard, "{quiet:x}");
        let after = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        assert_eq!(blocked(&before), blocked(&after));
    }

    fn cloexec(fd: BorrowedFd<'_>) -> bool {
        FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD).unwrap())
            .contains(FdFlag::FD_CLOEXEC)
    }

    #[test]
    fn pairs_are_cloexec() {
        let (a, b) = seqpacket_pair().unwrap();
        assert!(cloexec(a.as_fd()) && cloexec(b.as_fd()));
        let (a, b) = stream_pair().unwrap();
        assert!(cloexec(a.as_fd()) && cloexec(b.as_fd()));
    }

    #[test]
    fn fds_travel_and_arrive_cloexec() {
        let (a, b) = seqpacket_pair().unwrap();
        let (x, _y) = stream_pair().unwrap();
        let (p, _q) = stream_pair().unwrap();
        set_cloexec(x.as_fd(), false).unwrap();
        send_with_fds(a.as_fd(), b"hello", &[x.as_fd(), p.as_fd()]).unwrap();
        let mut buf = [0u8; 64];
        let (n, fds) = recv_with_fds(b.as_fd(), &mut buf, 2).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 2);
        assert!(
            fds.iter().all(|f| cloexec(f.as_fd())),
            "received fds must be close-on-exec"
        );
    }

    /// Whether every copy of `y`'s peer is closed: a read on `y` then sees end of file instead
    /// of blocking. This holds whatever other tests open or close meanwhile, unlike an fd count.
    fn peer_closed(y: &OwnedFd) -> bool {
        let mut byte = [0u8; 1];
        match socket::recv(y.as_raw_fd(), &mut byte, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => true,
            Err(nix::errno::Errno::EAGAIN) => false,
            other => panic!("unexpected read on the peer: {other:?}"),
        }
    }

    #[test]
    fn at_eof_only_once_the_peer_closed_and_nothing_is_left() {
        let (a, b) = seqpacket_pair().unwrap();
        assert!(!at_eof(a.as_fd()), "an open, empty link");
        send_with_fds(b.as_fd(), b"why", &[]).unwrap();
        drop(b);
        assert!(!at_eof(a.as_fd()), "a message waits: not end-of-file yet");
        let mut buf = [0u8; 8];
        assert_eq!(
            recv_nowait(a.as_fd(), &mut buf).unwrap(),
            3,
            "peeking consumed nothing"
        );
        assert!(at_eof(a.as_fd()));
    }

    /// Regression: nix's iterator refused a message with MSG_CTRUNC, and the fds that did fit
    /// were left open in our table: 8 of every notify datagram that carried more.
    #[test]
    fn a_datagram_longer_than_the_buffer_is_consumed_and_refused() {
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        nix::sys::socket::setsockopt(&b, nix::sys::socket::sockopt::PassCred, &true).unwrap();
        let mut long = b"READY=1\n".to_vec();
        long.resize(100, b'x');
        a.send(&long).unwrap();
        a.send(b"STATUS=next").unwrap();
        let mut buf = [0u8; 64];
        let e = recv_with_creds(b.as_fd(), &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        let (n, _) = recv_with_creds(b.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"STATUS=next");
    }

    #[test]
    fn a_datagram_with_many_fds_leaks_none() {
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        nix::sys::socket::setsockopt(&b, nix::sys::socket::sockopt::PassCred, &true).unwrap();
        let (x, y) = stream_pair().unwrap();
        let raw = [x.as_raw_fd(); 40];
        let cmsg = [socket::ControlMessage::ScmRights(&raw)];
        let iov = [io::IoSlice::new(b"READY=1")];
        socket::sendmsg::<()>(a.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None).unwrap();
        drop(x);
        let mut buf = [0u8; 64];
        let (n, pid) = recv_with_creds(b.as_fd(), &mut buf).unwrap();
        assert_eq!(
            (&buf[..n], pid),
            (&b"READY=1"[..], Some(std::process::id()))
        );
        assert!(peer_closed(&y), "every fd of the datagram must be closed");
    }

    #[test]
    fn more_fds_than_a_batch_are_an_error_and_closed() {
        let (a, b) = seqpacket_pair().unwrap();
        let (x, y) = stream_pair().unwrap();
        send_with_fds(a.as_fd(), b"x", &[x.as_fd(); SCM_MAX_FD]).unwrap();
        drop(x);
        let mut buf = [0u8; 8];
        assert!(recv_with_fds(b.as_fd(), &mut buf, MAX_FDS_PER_MESSAGE).is_err());
        assert!(
            peer_closed(&y),
            "the fds of a rejected batch must be closed"
        );
    }

    #[test]
    fn too_many_fds_is_an_error_and_closes_them() {
        let (a, b) = seqpacket_pair().unwrap();
        let (x, y) = stream_pair().unwrap();
        send_with_fds(a.as_fd(), b"x", &[x.as_fd(), x.as_fd()]).unwrap();
        // Only the copies in flight are left; once they are closed, y sees end of file.
        drop(x);
        assert!(!peer_closed(&y), "the copies in flight keep x open");
        let mut buf = [0u8; 8];
        assert!(recv_with_fds(b.as_fd(), &mut buf, 1).is_err());
        assert!(
            peer_closed(&y),
            "the fds of a rejected batch must be closed"
        );
    }
}
