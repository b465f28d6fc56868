//! Who gets a worker's signals: the stop signal goes to the worker alone or to its process
//! group (`--stop-signal-to`); SIGKILL always goes to the whole group.
//!
//! Like every signal of the primary, only to a worker whose pid it has not reaped yet, so
//! neither the pid nor the group id can name a stranger. It holds no state: the choice is the
//! running config's, so a reload that changes it applies to every drain from then on, and an
//! upgrade in place rebuilds it with the config.

use std::io;

use nix::sys::signal::Signal;

use crate::config::{Config, StopTarget};
use crate::sys;

/// Sends `sig` to worker `pid` (a process group leader) as `config` says.
///
/// A server that forwards the stop signal to its own children and waits for them (gunicorn's
/// arbiter, uWSGI's master, hypercorn's parent) drains best when only it gets the signal: a
/// child that gets it too from the group signal may stop before its parent asked it to, or
/// die at once when it has no handler. Whatever is left of the group when the worker exits is
/// SIGKILLed at its reap.
pub(crate) fn send(config: &Config, pid: u32, sig: Signal) -> io::Result<()> {
    match (sig, config.stop_signal_to) {
        (Signal::SIGKILL, _) | (_, StopTarget::Group) => sys::kill_group(pid, sig),
        (_, StopTarget::Worker) => sys::kill(pid, sig),
    }
}
