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
    send: std::sync::mpsc::Sender<std::os::fd::OwnedFd>,
    pending: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// Fds waiting to be closed beyond which [`closer_keeps_up`] says no: the closing thread is
/// stuck in closes that wait.
const MAX_PENDING_CLOSES: usize = 64;

/// The closing thread, started at the first need and again after a start that failed (a task
/// limit reached for a moment must not make every later close wait on the caller), and the
/// fds kept until it runs.
static CLOSER: std::sync::Mutex<(Option<Closer>, Vec<std::os::fd::OwnedFd>)> =
    std::sync::Mutex::new((None, Vec::new()));

fn start_closer() -> Option<Closer> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (send, receive) = std::sync::mpsc::channel::<std::os::fd::OwnedFd>();
    let pending = std::sync::Arc::new(AtomicUsize::new(0));
    let left = std::sync::Arc::clone(&pending);
    spawn_quiet_thread("close", move || {
        for fd in receive {
            drop(fd);
            left.fetch_sub(1, Ordering::SeqCst);
        }
    })
    .ok()?;
    Some(Closer { send, pending })
}

/// Whether fds handed to [`close_later`] are being closed: the closing thread runs and has
/// fewer than [`MAX_PENDING_CLOSES`] waiting, and none is kept for want of it.
pub(crate) fn closer_keeps_up() -> bool {
    let Ok(mut guard) = CLOSER.lock() else {
        return false;
    };
    let (closer, kept) = &mut *guard;
    if closer.is_none() {
        *closer = start_closer();
    }
    match closer {
        Some(c) => {
            for fd in kept.drain(..) {
                c.pending.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = c.send.send(fd);
            }
            c.pending.load(std::sync::atomic::Ordering::SeqCst) < MAX_PENDING_CLOSES
        }
        None => false,
    }
}

/// Whether nothing handed to [`close_later`] is still open (before an exec, which waits for
/// every other thread to end: one stuck in a close would hold it).
pub(crate) fn closer_idle() -> bool {
    CLOSER.lock().is_ok_and(|g| {
        g.1.is_empty()
            && g.0
                .as_ref()
                .is_none_or(|c| c.pending.load(std::sync::atomic::Ordering::SeqCst) == 0)
    })
}

/// Closes a socket of our own (a link, a connection, a notify socket) now when nothing waits
/// in its queue, else on the closing thread: a message left in it may carry fds whose close
/// waits. Closing now keeps our own closes out of the closing thread, which a worker may have
/// stuck for good (a TCP pair it never reads, set to linger): there they would stay open.
pub(crate) fn close_own(fd: std::os::fd::OwnedFd) {
    if super::queue_empty(std::os::fd::AsFd::as_fd(&fd)) {
        drop(fd);
    } else {
        close_later(fd);
    }
}

/// Closes `fd` now when its close cannot wait ([`super::may_wait_on_close`]), else on the
/// closing thread: for fds another process sent.
pub(crate) fn close_soon(fd: std::os::fd::OwnedFd) {
    if super::may_wait_on_close(std::os::fd::AsFd::as_fd(&fd)) {
        close_later(fd);
    }
}

/// Closes `fd` on the closing thread, never on the caller's. An fd another process chose may
/// be the last reference to something whose close waits: a TCP socket with `SO_LINGER` and
/// unsent data, a Unix socket with such fds queued in it, a file on a FUSE mount whose daemon
/// does not answer. Without the thread (it could not start), the fd is kept until it can.
pub(crate) fn close_later(fd: std::os::fd::OwnedFd) {
    let Ok(mut guard) = CLOSER.lock() else {
        // Poisoned: nothing here panics while holding it; keep the fd open rather than wait.
        std::mem::forget(fd);
        return;
    };
    let (closer, kept) = &mut *guard;
    if closer.is_none() {
        *closer = start_closer();
    }
    match closer {
        Some(c) => {
            c.pending.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if let Err(e) = c.send.send(fd) {
                // The thread is gone: start another next time.
                c.pending.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                kept.push(e.0);
                *closer = None;
            }
        }
        None => kept.push(fd),
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
