//! Replacing this process: a worker's command looked up in PATH, and the primary's own image
//! in an upgrade in place.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sys::signal::{self, SigSet, SigmaskHow};

use super::errno;

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
