//! Processes: signals to a process or a group, reaping, the parent-death signal, dumpability,
//! credentials, and the child subreaper.

use std::io;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use super::errno;

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

/// Sends `sig` to the process `pid` alone (not its group); a process already gone is no error.
pub(crate) fn kill(pid: u32, sig: Signal) -> io::Result<()> {
    match signal::kill(Pid::from_raw(pid as i32), sig) {
        Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
        Err(e) => Err(errno(e)),
    }
}

/// Sends `sig` to the process group `pgid`. A group that is gone is not an error.
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

/// Under Yama's ptrace scope 1, lets `pid` and its descendants read this process's system
/// calls and memory, as its ancestors may (`PR_SET_PTRACER`, kept across exec). Does nothing
/// where Yama is off or stricter.
pub(crate) fn allow_ptrace_by_descendants_of(pid: u32) {
    let scope = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    if scope == Some(1) {
        // SAFETY: prctl(PR_SET_PTRACER, pid) takes plain integers and changes only our own
        // Yama exception.
        unsafe {
            libc::prctl(libc::PR_SET_PTRACER, pid as libc::c_ulong, 0, 0, 0);
        }
    }
}

/// Whether child `pid` was stopped (SIGSTOP, SIGTSTP) since the last look: consumes that
/// report, never waits, never reaps.
pub(crate) fn was_stopped(pid: u32) -> bool {
    // SAFETY: siginfo_t is plain data; waitid fills it in, and zeroed si_pid means "nothing".
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a siginfo_t we own; WNOHANG never blocks, and WSTOPPED without
    // WEXITED reaps nothing.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WSTOPPED | libc::WNOHANG,
        )
    };
    // SAFETY: after a successful waitid the pid field is initialised.
    r == 0 && unsafe { info.si_pid() } != 0 && info.si_code == libc::CLD_STOPPED
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

/// The process group of `pid`, if it still exists.
pub(crate) fn getpgid(pid: u32) -> Option<u32> {
    nix::unistd::getpgid(Some(Pid::from_raw(pid as i32)))
        .ok()
        .map(|p| p.as_raw() as u32)
}

/// `PR_SET_CHILD_SUBREAPER`: orphaned descendants are re-parented to this process (kept across
/// an exec, so an upgrade in place keeps it).
pub(crate) fn set_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
}

/// Drops the executable pages of this process's files (its own binary, libc) from its resident
/// set, and marks them random-access, so that the kernel maps back only the pages the process
/// then runs, one at a time, instead of 16 around each (fault-around). For a small role of a
/// large binary (the keeper) most of its resident set was code it ran once at start. Only
/// private, read-and-execute mappings of files are touched: their pages are never written, so
/// dropping them loses nothing; they come back from the page cache when run.
pub(crate) fn shed_code_pages() {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        // [vdso] and [vsyscall] are r-xp too, and no file's.
        let file = fields.nth(3);
        if perms != "r-xp" || file.is_none_or(|f| !f.starts_with('/')) {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // SAFETY: madvise on a whole mapping of ours that is private, read-only and executable:
        // MADV_RANDOM only changes read-ahead; MADV_DONTNEED drops clean pages that the next
        // access maps again from the file, so no content is lost and no pointer is invalidated.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_RANDOM);
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}
