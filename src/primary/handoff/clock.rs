//! Instants across an exec: one image's `Instant`s as absolute `CLOCK_MONOTONIC` nanoseconds
//! and back. A leaf: every part of the primary that puts a deadline in the hand-off uses it.

use std::time::{Duration, Instant};

/// Maps instants to absolute monotonic nanoseconds and back, in one image.
pub(crate) struct Clock {
    /// The instant `mono` was read at (tests of the hand-off start their states there).
    pub(super) instant: Instant,
    mono: u64,
}

impl Clock {
    pub(crate) fn now() -> Clock {
        Clock {
            instant: Instant::now(),
            mono: crate::sys::monotonic_ns(),
        }
    }

    pub(crate) fn ns(&self, t: Instant) -> u64 {
        if t >= self.instant {
            self.mono
                .saturating_add(t.duration_since(self.instant).as_nanos() as u64)
        } else {
            self.mono
                .saturating_sub(self.instant.duration_since(t).as_nanos() as u64)
        }
    }

    pub(crate) fn instant(&self, ns: u64) -> Instant {
        if ns >= self.mono {
            self.instant + Duration::from_nanos(ns - self.mono)
        } else {
            // An instant before this process's clock can express is clamped to now: it is in
            // the past either way (a start time or a due deadline).
            self.instant
                .checked_sub(Duration::from_nanos(self.mono - ns))
                .unwrap_or(self.instant)
        }
    }

    pub(crate) fn opt_ns(&self, t: Option<Instant>) -> Option<u64> {
        t.map(|t| self.ns(t))
    }

    pub(crate) fn opt_instant(&self, ns: Option<u64>) -> Option<Instant> {
        ns.map(|ns| self.instant(ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_keep_their_distance_across_clocks() {
        let old = Clock::now();
        let due = old.instant + Duration::from_millis(1500);
        let ns = old.ns(due);
        // The new image's clock is read later: the same absolute deadline is nearer.
        std::thread::sleep(Duration::from_millis(20));
        let new = Clock::now();
        let there = new.instant(ns);
        let left = there.saturating_duration_since(Instant::now());
        assert!(left <= Duration::from_millis(1500) && left > Duration::from_millis(1000));
        // An instant in the past stays in the past.
        let past = new.instant(old.ns(old.instant - Duration::from_secs(3)));
        assert!(past < Instant::now() - Duration::from_secs(2));
    }
}
