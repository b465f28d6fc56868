//! Another process through a pidfd: its fds, copied with `pidfd_getfd(2)`, and whether it
//! still runs.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

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

/// Whether the process of `pidfd` has not been reaped yet (a zombie counts: its pid is still
/// its own). `pidfd_send_signal(2)` with signal 0 checks without sending anything.
pub(crate) fn pidfd_alive(pidfd: std::os::fd::BorrowedFd<'_>) -> bool {
    // SAFETY: pidfd_send_signal takes a pidfd, signal 0 (no signal), a null siginfo and flags
    // 0; it reads no memory of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    // EPERM: it runs, as a user we may not signal.
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Whether process `pid` descends from `ancestor` (or is it), by the parent fields of
/// `/proc/PID/stat`, at most 64 generations up. Kernel data: a read never waits on the process.
pub(crate) fn descends_from(pid: u32, ancestor: u32) -> bool {
    let mut at = pid;
    for _ in 0..64 {
        if at == ancestor {
            return true;
        }
        let Some(parent) = std::fs::read_to_string(format!("/proc/{at}/stat"))
            .ok()
            .and_then(|s| {
                // pid (comm) state ppid: the command name may hold spaces and parentheses.
                let rest = &s[s.rfind(')')? + 1..];
                rest.split_whitespace().nth(1)?.parse::<u32>().ok()
            })
        else {
            return false;
        };
        if parent <= 1 {
            return false;
        }
        at = parent;
    }
    false
}
