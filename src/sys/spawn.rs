//! Spawning a role process of this executable with its link at [`ROLE_LINK_FD`], and what a
//! child started through std's `Command` must not inherit.
//!
//! [`ROLE_LINK_FD`]: super::ROLE_LINK_FD

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sys::signal::{self, SigSet, SigmaskHow};
use nix::unistd::Pid;

use super::{errno, seqpacket_pair, set_cloexec, ROLE_LINK_FD};

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
    // SAFETY: the caller may have other threads (the primary has none of its own, but a binary
    // built on the library may), whose locks the child's copy of the address space may hold: so the child allocates nothing, takes no
    // lock and calls only async-signal-safe functions (setpgid, fcntl, dup2, execv, _exit) on
    // data prepared before the fork, which is sound in a child of a multi-threaded process.
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

/// Lets the program `cmd` starts inherit `fd`, under the same number: call after
/// [`no_inherited_fds`], which marked it close-on-exec with every other fd above 2.
pub(crate) fn inherit_fd(cmd: &mut std::process::Command, fd: std::os::fd::RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs between fork and exec in the child of a multi-threaded process, so
    // it makes one async-signal-safe call (fcntl) and allocates nothing (an OS error is not
    // allocated).
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
