//! Who may connect and whose password is checked next: the console's defence against floods,
//! as plain data with no I/O, so that every rule is unit-tested as a table.
//!
//! Three rules keep one source from locking out an operator at another (DESIGN.md promise 7):
//! - [`AcceptRate`]: a token bucket per source; a connection over the rate is closed at once.
//! - [`admit`]: at most [`PER_SOURCE`] connections per source wait to log in; past the global
//!   cap the source holding the most loses its oldest one, only if it holds at least two more
//!   than the newcomer's (no trading places), and among equal sources the oldest connection
//!   goes, whatever its address. A session whose password is being checked is never evicted.
//! - [`Checks`]: password checks (PBKDF2, slow on purpose) are queued here, not on the
//!   verifier threads: at most one runs per source, the next one goes to the source with the
//!   fewest recent attempts, the queue is bounded, and a closed session's check is dropped
//!   before anything is hashed.
//!
//! A source is an IPv4 address or an IPv6 /64: one host usually owns a whole /64.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::commands::SessionId;

/// Connections of one source that may wait to log in at once.
pub(super) const PER_SOURCE: usize = 8;
/// Connections a source may open in a burst, and per second after it.
pub(super) const ACCEPT_BURST: f64 = 16.0;
pub(super) const ACCEPT_RATE: f64 = 4.0;
/// Password checks waiting for a verifier, over all sources.
pub(super) const MAX_QUEUED_CHECKS: usize = 64;
/// Sources remembered by the rate limiter; past it, full buckets are forgotten first.
const MAX_SOURCES: usize = 4096;

/// Where a connection comes from, as far as limits are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Source {
    V4(u32),
    /// The upper 64 bits of the address.
    V6(u64),
}

impl Source {
    pub(super) fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::V4(u32::from(v4)),
            IpAddr::V6(v6) => Source::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

/// Per-source token buckets for accepts.
#[derive(Debug, Default)]
pub(super) struct AcceptRate {
    buckets: HashMap<Source, (f64, Instant)>,
}

impl AcceptRate {
    /// Whether a connection from `source` may be served now; takes a token if so.
    pub(super) fn allow(&mut self, source: Source, now: Instant) -> bool {
        if self.buckets.len() >= MAX_SOURCES && !self.buckets.contains_key(&source) {
            // Forget the sources whose bucket has refilled: they lose nothing by it.
            self.buckets
                .retain(|_, (tokens, at)| refill(*tokens, *at, now) < ACCEPT_BURST);
            if self.buckets.len() >= MAX_SOURCES {
                if let Some(oldest) = self
                    .buckets
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(s, _)| *s)
                {
                    self.buckets.remove(&oldest);
                }
            }
        }
        let (tokens, at) = self.buckets.entry(source).or_insert((ACCEPT_BURST, now));
        let mut t = refill(*tokens, *at, now);
        *at = now;
        let ok = t >= 1.0;
        if ok {
            t -= 1.0;
        }
        *tokens = t;
        ok
    }
}

fn refill(tokens: f64, at: Instant, now: Instant) -> f64 {
    (tokens + now.saturating_duration_since(at).as_secs_f64() * ACCEPT_RATE).min(ACCEPT_BURST)
}

/// A connection that has not logged in yet, as [`admit`] sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Waiting {
    pub id: SessionId,
    pub source: Source,
    pub accepted: Instant,
    /// Its password is queued or being checked.
    pub verifying: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    Accept,
    /// Accept, after closing this session.
    Evict(SessionId),
    Refuse,
}

/// Decides on a new connection from `source`, given those that wait to log in.
pub(super) fn admit(waiting: &[Waiting], source: Source, max_total: usize) -> Admit {
    let oldest_evictable = |s: Source| {
        waiting
            .iter()
            .filter(|w| w.source == s && !w.verifying)
            .min_by_key(|w| (w.accepted, w.id))
            .map(|w| w.id)
    };
    let own = waiting.iter().filter(|w| w.source == source).count();
    if own >= PER_SOURCE {
        // The source competes only with itself.
        return oldest_evictable(source).map_or(Admit::Refuse, Admit::Evict);
    }
    if waiting.len() < max_total {
        return Admit::Accept;
    }
    let mut counts: HashMap<Source, usize> = HashMap::new();
    for w in waiting {
        *counts.entry(w.source).or_default() += 1;
    }
    let mut sizes: Vec<usize> = counts.values().copied().collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    sizes.dedup();
    for n in sizes {
        // Only a source that would still hold more than the newcomer's after the eviction
        // pays: anything less only trades places, and a flood of one connection from each of
        // many addresses would cycle every other single one out, an operator typing its
        // password among them.
        if n <= own + 1 {
            break;
        }
        // Among the sources of that size, the oldest connection goes: no address is favoured.
        let victim = waiting
            .iter()
            .filter(|w| !w.verifying && counts.get(&w.source) == Some(&n))
            .min_by_key(|w| (w.accepted, w.id));
        if let Some(w) = victim {
            return Admit::Evict(w.id);
        }
    }
    Admit::Refuse
}

/// The password checks waiting for a verifier and those running.
#[derive(Debug)]
pub(super) struct Checks {
    queue: VecDeque<(SessionId, Source, String)>,
    running: HashMap<SessionId, Source>,
    verifiers: usize,
    /// Checks handed to a verifier since the start: each is one PBKDF2 computation.
    pub computed: u64,
}

impl Checks {
    pub(super) fn new(verifiers: usize) -> Checks {
        Checks {
            queue: VecDeque::new(),
            running: HashMap::new(),
            verifiers,
            computed: 0,
        }
    }

    /// Queues a check; false when the queue is full.
    pub(super) fn submit(&mut self, id: SessionId, source: Source, password: String) -> bool {
        if self.queue.len() >= MAX_QUEUED_CHECKS {
            return false;
        }
        self.queue.push_back((id, source, password));
        true
    }

    /// The session is gone: its queued check is dropped unhashed. A running one still holds
    /// its source's turn until it finishes, so closing a session never buys another check.
    pub(super) fn cancel(&mut self, id: SessionId) {
        self.queue.retain(|(q, _, _)| *q != id);
    }

    /// The next check to hand to a verifier, if one is free: the queued check of a source
    /// with none running and the fewest `attempts`, the oldest among equals.
    pub(super) fn next(&mut self, attempts: impl Fn(Source) -> u32) -> Option<(SessionId, String)> {
        if self.running.len() >= self.verifiers {
            return None;
        }
        let busy: Vec<Source> = self.running.values().copied().collect();
        let (i, _) = self
            .queue
            .iter()
            .enumerate()
            .filter(|(_, (_, s, _))| !busy.contains(s))
            .min_by_key(|(i, (_, s, _))| (attempts(*s), *i))?;
        let (id, source, password) = self.queue.remove(i)?;
        self.running.insert(id, source);
        self.computed += 1;
        Some((id, password))
    }

    /// A verifier answered for `id`.
    pub(super) fn done(&mut self, id: SessionId) {
        self.running.remove(&id);
    }

    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.queue.len()
    }
}

/// Password attempts per source: past [`Attempts::LIMIT`] within [`Attempts::WINDOW`], a
/// source gets no more tries until the window has passed. An attempt counts when it is
/// submitted, so checks that are still queued or whose session went away count too; a
/// correct password gives its attempt back.
///
/// Bounded: past `Attempts::MAX_SOURCES` sources, expired entries are dropped, then the
/// oldest, so a spray of source addresses costs no more memory than a fixed table.
#[derive(Debug, Default)]
pub(super) struct Attempts {
    by_source: HashMap<Source, (u32, Instant)>,
}

impl Attempts {
    pub(super) const LIMIT: u32 = 20;
    pub(super) const WINDOW: Duration = Duration::from_secs(60);
    const MAX_SOURCES: usize = 4096;

    /// Whether `source` may try a password now.
    pub(super) fn allowed(&mut self, source: Source, now: Instant) -> bool {
        match self.by_source.get(&source) {
            Some(&(n, since)) if now.saturating_duration_since(since) < Self::WINDOW => {
                n < Self::LIMIT
            }
            Some(_) => {
                self.by_source.remove(&source);
                true
            }
            None => true,
        }
    }

    /// Attempts of `source` in the current window.
    pub(super) fn count(&self, source: Source) -> u32 {
        self.by_source.get(&source).map_or(0, |&(n, _)| n)
    }

    pub(super) fn attempt(&mut self, source: Source, now: Instant) {
        if self.by_source.len() >= Self::MAX_SOURCES && !self.by_source.contains_key(&source) {
            self.by_source
                .retain(|_, (_, since)| now.saturating_duration_since(*since) < Self::WINDOW);
            if self.by_source.len() >= Self::MAX_SOURCES {
                if let Some(oldest) = self
                    .by_source
                    .iter()
                    .min_by_key(|(_, (_, since))| *since)
                    .map(|(a, _)| *a)
                {
                    self.by_source.remove(&oldest);
                }
            }
        }
        let entry = self.by_source.entry(source).or_insert((0, now));
        if now.saturating_duration_since(entry.1) >= Self::WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
    }

    /// The password was right: the operator does not pay for logging in.
    pub(super) fn succeeded(&mut self, source: Source) {
        if let Some((n, _)) = self.by_source.get_mut(&source) {
            *n = n.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> Source {
        Source::of(s.parse().unwrap())
    }

    fn w(id: SessionId, source: Source, age_ms: u64, verifying: bool, t: Instant) -> Waiting {
        Waiting {
            id,
            source,
            accepted: t - Duration::from_millis(age_ms),
            verifying,
        }
    }

    #[test]
    fn sources_group_ipv6_by_64_and_unmap_ipv4() {
        assert_eq!(v4("2001:db8::1"), v4("2001:db8::ffff:1"));
        assert_ne!(v4("2001:db8::1"), v4("2001:db8:0:1::1"));
        assert_eq!(v4("::ffff:127.0.0.1"), v4("127.0.0.1"));
        assert_ne!(v4("127.0.0.1"), v4("127.0.0.2"));
    }

    #[test]
    fn accepts_are_rate_limited_per_source() {
        let mut r = AcceptRate::default();
        let t = Instant::now();
        let (a, b) = (v4("127.0.0.1"), v4("127.0.0.2"));
        let burst = ACCEPT_BURST as usize;
        assert_eq!((0..1000).filter(|_| r.allow(a, t)).count(), burst);
        assert!(r.allow(b, t), "another source is not affected");
        assert!(!r.allow(a, t + Duration::from_millis(100)));
        assert!(
            r.allow(a, t + Duration::from_millis(300)),
            "refills at the rate"
        );
        let later = t + Duration::from_secs(60);
        assert_eq!((0..1000).filter(|_| r.allow(a, later)).count(), burst);
    }

    #[test]
    fn a_source_at_its_cap_competes_only_with_itself() {
        let t = Instant::now();
        let (a, b) = (v4("127.0.0.1"), v4("127.0.0.2"));
        let mut ws: Vec<Waiting> = (0..PER_SOURCE)
            .map(|i| w(i, a, 100 - i as u64, false, t))
            .collect();
        ws.push(w(99, b, 500, false, t));
        assert_eq!(admit(&ws, a, 64), Admit::Evict(0), "its own oldest goes");
        assert_eq!(admit(&ws, b, 64), Admit::Accept);
        // Never a session whose password is being checked.
        ws[0].verifying = true;
        assert_eq!(admit(&ws, a, 64), Admit::Evict(1));
        for w in ws.iter_mut().filter(|w| w.source == a) {
            w.verifying = true;
        }
        assert_eq!(admit(&ws, a, 64), Admit::Refuse);
    }

    #[test]
    fn when_full_the_source_holding_the_most_loses_its_oldest() {
        let t = Instant::now();
        let (a, b, c) = (v4("10.0.0.1"), v4("10.0.0.2"), v4("10.0.0.3"));
        // The operator's (b) is the oldest of all, yet a holds the most.
        let ws = vec![
            w(1, b, 900, false, t),
            w(2, a, 800, false, t),
            w(3, a, 700, false, t),
            w(4, a, 600, false, t),
            w(5, c, 500, false, t),
        ];
        assert_eq!(admit(&ws, c, 5), Admit::Evict(2));
        assert_eq!(admit(&ws, b, 5), Admit::Evict(2));
        // A newcomer from the biggest source does not push out a smaller one.
        let ws2 = vec![w(1, a, 900, false, t), w(2, b, 800, false, t)];
        assert_eq!(admit(&ws2, a, 2), Admit::Refuse);
        // The biggest one is all verifying: the next biggest pays.
        let ws3 = vec![
            w(1, a, 900, true, t),
            w(2, a, 800, true, t),
            w(3, a, 700, true, t),
            w(4, c, 600, false, t),
            w(5, c, 500, false, t),
        ];
        assert_eq!(admit(&ws3, b, 5), Admit::Evict(4));
        assert_eq!(admit(&ws3[..3], b, 3), Admit::Refuse);
    }

    /// Issue 18, item 5: one connection from each of many addresses evicted an operator at
    /// 127.0.0.200 while it typed its password (ties went to the highest address). Sources
    /// that each hold one connection never evict another single one, and among equals the
    /// oldest connection goes, whatever its address.
    #[test]
    fn single_connections_from_many_sources_never_evict_an_operator() {
        let t = Instant::now();
        let operator = v4("127.0.0.200");
        let mut ws: Vec<Waiting> = (1..64)
            .map(|i| w(i, v4(&format!("127.0.0.{i}")), 10 + i as u64, false, t))
            .collect();
        ws.push(w(200, operator, 5, false, t));
        for newcomer in 201..=254 {
            let source = v4(&format!("127.0.0.{newcomer}"));
            assert_eq!(admit(&ws, source, 64), Admit::Refuse, "from .{newcomer}");
        }
        // Two sources of the same size: the oldest connection goes, from the lower address.
        let (low, high, c) = (v4("10.0.0.1"), v4("10.0.0.9"), v4("10.0.0.5"));
        let ws = vec![
            w(1, low, 900, false, t),
            w(2, high, 800, false, t),
            w(3, low, 700, false, t),
            w(4, high, 600, false, t),
        ];
        assert_eq!(admit(&ws, c, 4), Admit::Evict(1));
    }

    #[test]
    fn one_check_per_source_and_the_quiet_source_goes_first() {
        let (a, b) = (v4("127.0.0.1"), v4("127.0.0.2"));
        let mut c = Checks::new(2);
        for id in 0..10 {
            assert!(c.submit(id, a, format!("guess{id}")));
        }
        let attempts = |s: Source| if s == a { 10 } else { 0 };
        assert_eq!(c.next(attempts).map(|x| x.0), Some(0));
        assert_eq!(c.next(attempts), None, "a has one running already");
        assert!(c.submit(50, b, "right".into()));
        assert_eq!(
            c.next(attempts).map(|x| x.0),
            Some(50),
            "b is not queued behind a"
        );
        assert_eq!(c.next(attempts), None, "both verifiers busy");
        c.done(50);
        assert!(c.submit(51, b, "again".into()));
        assert_eq!(
            c.next(attempts).map(|x| x.0),
            Some(51),
            "fewest attempts first"
        );
        c.done(0);
        c.done(51);
        // Closed sessions are never hashed.
        for id in 1..9 {
            c.cancel(id);
        }
        assert_eq!(c.queued(), 1);
        assert_eq!(c.next(attempts).map(|x| x.0), Some(9));
        assert_eq!(c.computed, 4);
    }

    #[test]
    fn the_check_queue_is_bounded() {
        let mut c = Checks::new(2);
        let a = v4("127.0.0.1");
        for id in 0..MAX_QUEUED_CHECKS {
            assert!(c.submit(id, a, String::new()));
        }
        assert!(!c.submit(1000, a, String::new()));
    }

    #[test]
    fn attempts_count_at_submission_and_a_login_gives_one_back() {
        let mut a = Attempts::default();
        let t = Instant::now();
        let (x, y) = (v4("127.0.0.1"), Source::of("::1".parse().unwrap()));
        for _ in 0..Attempts::LIMIT {
            assert!(a.allowed(x, t));
            a.attempt(x, t);
        }
        assert!(!a.allowed(x, t));
        assert!(a.allowed(y, t));
        a.succeeded(x);
        assert!(a.allowed(x, t));
        assert!(a.allowed(x, t + Attempts::WINDOW));
    }
}
