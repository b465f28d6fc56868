//! A plain `fork` for a role process that splits itself in two (the logger and its opener),
//! and the fd clean-up such a child needs.
//!
//! Unlike [`super::spawn_role`], the child here runs Rust code after the fork: that is sound
//! only in a process with one thread (no lock or allocator state of another thread is copied
//! half-way), which [`fork_with`] checks rather than assumes.

use std::io;
use std::os::fd::RawFd;

use nix::unistd::ForkResult;

use super::errno;

/// Forks this process, which must have exactly one thread, and runs `child` in the child; the
/// child exits with what `child` returns (70 if it panics) and never returns here. Returns the
/// child's pid to the parent.
pub(crate) fn fork_with(child: impl FnOnce() -> i32) -> io::Result<u32> {
    let threads = std::fs::read_dir("/proc/self/task")?.count();
    if threads != 1 {
        return Err(io::Error::other(format!(
            "refusing to fork a process of {threads} threads"
        )));
    }
    // SAFETY: the process has one thread (just counted, and only this thread could start
    // another), so the child's copy of the address space, the allocator's and std's locks
    // included, is consistent, and the child may run any code.
    match unsafe { nix::unistd::fork() }.map_err(errno)? {
        ForkResult::Parent { child } => Ok(child.as_raw() as u32),
        ForkResult::Child => {
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(70);
            std::process::exit(code)
        }
    }
}

/// Closes every fd above 2 but those in `keep`. For a freshly forked child that owns its whole
/// fd table and never returns to the code that held the others (see [`fork_with`]).
pub(crate) fn close_all_except(keep: &[RawFd]) -> io::Result<()> {
    // Collected first: the directory's own fd is open while it is read, and closed (then
    // EBADF below, harmlessly) once the listing is dropped.
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2 && !keep.contains(fd))
        .collect();
    for fd in fds {
        // SAFETY: the caller owns every fd of the process but `keep`'s and gives them up here;
        // nothing that runs after this uses them (an fd already gone yields EBADF).
        unsafe { libc::close(fd) };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The unit tests run on many threads: a fork there would copy another thread's locks.
    #[test]
    fn a_process_of_several_threads_is_not_forked() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            let _ = rx.recv();
        });
        let e = fork_with(|| 0).expect_err("forked with two threads");
        assert!(e.to_string().contains("threads"), "{e}");
        drop(tx);
        other.join().unwrap();
    }
}
