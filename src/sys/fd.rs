//! File descriptors: the standard three, close-on-exec, placing fds at 3.., pipes, waiting
//! on one, and `tee(2)`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::errno;

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

/// Whether the last close of `fd` may wait on something another process controls: anything
/// but a pipe or a character device (a socket may linger or hold more fds in its queue, an
/// io_uring waits for its requests, a file of a FUSE or NFS mount waits on its server). The
/// type is asked with `AT_STATX_DONT_SYNC`, so that not even this question reaches a file
/// system's server (a FUSE daemon may never answer a `fstat`).
pub(crate) fn may_wait_on_close(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: statx is plain data, which the call fills in.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open for the call; the empty path with AT_EMPTY_PATH names it; `st` is
    // ours to write.
    let rc = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_STATX_DONT_SYNC,
            libc::STATX_TYPE,
            &mut st,
        )
    };
    if rc != 0 || st.stx_mask & libc::STATX_TYPE == 0 {
        return true;
    }
    let kind = u32::from(st.stx_mode) & libc::S_IFMT;
    !(kind == libc::S_IFIFO || kind == libc::S_IFCHR)
}

#[cfg(test)]
mod close_tests {
    use super::*;

    /// The attacker's review: a notify datagram's fds were closed on the loop, and a TCP
    /// socket set to linger made that close wait. Such fds are told apart from the ones that
    /// close at once.
    #[test]
    fn fds_whose_close_may_wait_are_told_apart() {
        let null = std::fs::File::open("/dev/null").unwrap();
        assert!(!may_wait_on_close(null.as_fd()), "a device");
        let (r, _w) = super::pipe().unwrap();
        assert!(!may_wait_on_close(r.as_fd()), "a pipe");
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(
            may_wait_on_close(a.as_fd()),
            "a Unix socket, which may hold such fds"
        );
        let exe = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
        assert!(
            may_wait_on_close(exe.as_fd()),
            "a file: its file system may have a server"
        );
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(may_wait_on_close(tcp.as_fd()), "a TCP socket");
    }
}
