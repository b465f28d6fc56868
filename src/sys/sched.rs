//! The scheduler (a deferred start at idle priority) and the monotonic clock.

use std::io;

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
