//! Signal masks and dispositions, and threads that take no signal.

use std::io;

use nix::sys::signal::{self, SigSet, SigmaskHow, Signal};

use super::errno;

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

/// Unblocks every signal: role processes start with all of them blocked (see [`spawn_role`]).
pub(crate) fn unblock_signals() {
    let _ = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
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

/// Ignores `signals` and unblocks every other one (role processes start with all blocked).
/// Ignored dispositions survive exec; only the keeper uses this, and it execs nothing.
pub(crate) fn ignore_signals(signals: &[Signal]) {
    for &sig in signals {
        // SAFETY: installing SIG_IGN runs no code of ours.
        let _ = unsafe { signal::signal(sig, signal::SigHandler::SigIgn) };
    }
    unblock_signals();
}

/// The thread that closes fds whose last close may wait (see [`close_later`]), and how many
/// it has still to close.
struct Closer {
    send: std::sync::Mutex<std::sync::mpsc::Sender<std::os::fd::OwnedFd>>,
    pending: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// Fds waiting to be closed beyond which [`closer_keeps_up`] says no: the closing thread is
/// stuck in closes that wait.
const MAX_PENDING_CLOSES: usize = 256;

/// The closing thread, started at the first need; `None` if it cannot be.
fn closer() -> Option<&'static Closer> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex, OnceLock};
    static CLOSER: OnceLock<Option<Closer>> = OnceLock::new();
    CLOSER
        .get_or_init(|| {
            let (send, receive) = std::sync::mpsc::channel::<std::os::fd::OwnedFd>();
            let pending = Arc::new(AtomicUsize::new(0));
            let left = Arc::clone(&pending);
            spawn_quiet_thread("close", move || {
                for fd in receive {
                    drop(fd);
                    left.fetch_sub(1, Ordering::SeqCst);
                }
            })
            .ok()?;
            Some(Closer {
                send: Mutex::new(send),
                pending,
            })
        })
        .as_ref()
}

/// Whether the closing thread runs and keeps up (fewer than [`MAX_PENDING_CLOSES`] waiting).
pub(crate) fn closer_keeps_up() -> bool {
    closer()
        .is_some_and(|c| c.pending.load(std::sync::atomic::Ordering::SeqCst) < MAX_PENDING_CLOSES)
}

/// Closes `fd` on the closing thread, never on the caller's. An fd another process chose may
/// be the last reference to something whose close waits: a TCP socket with `SO_LINGER` and
/// unsent data, a file on a FUSE mount whose daemon does not answer. Without the thread (it
/// could not start), it is closed here, the only way left.
pub(crate) fn close_later(fd: std::os::fd::OwnedFd) {
    let Some(c) = closer() else { return };
    c.pending.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    if let Ok(send) = c.send.lock() {
        let _ = send.send(fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
