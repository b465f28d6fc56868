//! The primary's figures for `/metrics` and its side of the metrics worker (see
//! `roles/metrics.rs`), with `--metrics HOST:PORT`.
//!
//! The counters are plain data ([`Counters`]), kept whether or not `--metrics` is given, and
//! carried across an upgrade in place in the hand-off's [`MetricsImage`]. The primary binds the
//! metrics listener itself and keeps it for its whole life, so a worker that died is replaced
//! on the same port; the worker answers HTTP itself and only asks for [`Figures`] on its link.
//!
//! It must never block the loop: each answer is one small non-blocking send, at most
//! [`ASK_BATCH`] per turn; a worker that does not read its answers (or sends garbage) is killed
//! and replaced. When it is started again is decided in `state::roles`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::{Poll, Token};
use nix::sys::signal::Signal;
use reloadsup_protocol::upgrade::MetricsImage;
use reloadsup_protocol::{
    self as proto, Figures, MetricsMessage, MetricsSpec, Outcome, ReloadOutcome, WorkerState,
    PROTOCOL_VERSION, RELOAD_BUCKETS_MS,
};

use super::{as_workers, timer_from, timer_image, Helper, LinkKind};
use crate::error::lower;
use crate::primary::state::roles::RoleTimer;
use crate::primary::state::State;
use crate::sys;

/// The poll token of the metrics worker's link.
pub(crate) const METRICS: Token = Token(5);

/// The most asks answered in one turn. The worker sends one at a time (a second only once the
/// first went unanswered for 3 s), so a full batch is a worker that floods its link: it is
/// replaced, rather than answered turn after turn with the loop's time.
const ASK_BATCH: usize = 64;

/// What the primary counts for `/metrics`: plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Counters {
    pub reloads_succeeded: u64,
    pub reloads_rolled_back: u64,
    pub reloads_refused: u64,
    pub reloads_cancelled: u64,
    /// One count per bucket of [`RELOAD_BUCKETS_MS`] and one for `+Inf`.
    pub reload_buckets: Vec<u64>,
    pub reload_seconds_sum_ns: u64,
    /// When the generation in flight started.
    pub reload_began: Option<Instant>,
    pub logins_ok: u64,
    pub logins_failed: u64,
    pub start_time_ns: u64,
}

impl Counters {
    pub(crate) fn new() -> Counters {
        let start_time_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Counters {
            reloads_succeeded: 0,
            reloads_rolled_back: 0,
            reloads_refused: 0,
            reloads_cancelled: 0,
            reload_buckets: vec![0; RELOAD_BUCKETS_MS.len() + 1],
            reload_seconds_sum_ns: 0,
            reload_began: None,
            logins_ok: 0,
            logins_failed: 0,
            start_time_ns,
        }
    }

    /// A new generation started (a reload, or the first generation).
    pub(crate) fn generation_started(&mut self, now: Instant) {
        self.reload_began = Some(now);
    }

    /// A reload ended; its duration is counted when a generation was started for it.
    pub(crate) fn reload_done(&mut self, outcome: &ReloadOutcome, now: Instant) {
        let counter = match outcome.outcome {
            Outcome::Succeeded => &mut self.reloads_succeeded,
            Outcome::RolledBack => &mut self.reloads_rolled_back,
            Outcome::Refused => &mut self.reloads_refused,
            Outcome::Cancelled => &mut self.reloads_cancelled,
        };
        *counter += 1;
        if outcome.outcome == Outcome::Refused {
            // Refused before any generation started: nothing was timed.
            return;
        }
        if let Some(began) = self.reload_began.take() {
            let took = now.saturating_duration_since(began);
            self.observe(took);
        }
    }

    fn observe(&mut self, took: Duration) {
        let ms = took.as_millis();
        let bucket = RELOAD_BUCKETS_MS
            .iter()
            .position(|&b| ms <= u128::from(b))
            .unwrap_or(RELOAD_BUCKETS_MS.len());
        if self.reload_buckets.len() != RELOAD_BUCKETS_MS.len() + 1 {
            self.reload_buckets.resize(RELOAD_BUCKETS_MS.len() + 1, 0);
        }
        self.reload_buckets[bucket] += 1;
        self.reload_seconds_sum_ns = self
            .reload_seconds_sum_ns
            .saturating_add(took.as_nanos() as u64);
    }

    pub(crate) fn login(&mut self, ok: bool) {
        if ok {
            self.logins_ok += 1;
        } else {
            self.logins_failed += 1;
        }
    }
}

/// The figures of this moment, for the metrics worker.
pub(crate) fn figures(c: &Counters, state: &State, upgrades: u64, now: Instant) -> Figures {
    let mut f = Figures {
        reloads_succeeded: c.reloads_succeeded,
        reloads_rolled_back: c.reloads_rolled_back,
        reloads_refused: c.reloads_refused,
        reloads_cancelled: c.reloads_cancelled,
        reload_buckets: c.reload_buckets.clone(),
        reload_seconds_sum_ns: c.reload_seconds_sum_ns,
        generation: state.serving,
        target_workers: state.target,
        worker_restarts: state.restarts_total,
        upgrades,
        logins_ok: c.logins_ok,
        logins_failed: c.logins_failed,
        start_time_ns: c.start_time_ns,
        ..Figures::default()
    };
    for w in state.workers(now) {
        let n = match w.state {
            WorkerState::Starting => &mut f.starting,
            WorkerState::Ready => &mut f.ready,
            WorkerState::Draining => &mut f.draining,
            WorkerState::Backoff => &mut f.backoff,
            WorkerState::Dead => &mut f.dead,
            WorkerState::Stopped => &mut f.stopped,
        };
        *n += 1;
    }
    f
}

/// The counters and, with `--metrics`, the metrics worker.
pub(crate) struct Metrics {
    pub counters: Counters,
    worker: Option<Worker>,
}

struct Worker {
    spec: MetricsSpec,
    listener: OwnedFd,
    bound: String,
    helper: Helper,
}

/// The metrics worker's helper: it parses what any scraper sends, so it runs as the workers'
/// user and group `run_as` (issue 18, item 8), never as root.
fn helper(run_as: (Option<u32>, Option<u32>)) -> Helper {
    Helper::new(
        "metrics worker",
        "reloadsup-metrics",
        as_workers("__metrics", run_as),
        LinkKind::Packets,
        Some(METRICS),
    )
}

impl Metrics {
    /// `listener`: the metrics listener bound at start (`--metrics`), with its address.
    pub(crate) fn new(
        listener: Option<(OwnedFd, String)>,
        name: &str,
        primary_pid: u32,
        run_as: (Option<u32>, Option<u32>),
    ) -> Metrics {
        Metrics {
            counters: Counters::new(),
            worker: listener.map(|(listener, bound)| Worker {
                spec: MetricsSpec {
                    version: PROTOCOL_VERSION,
                    primary_pid,
                    name: name.to_string(),
                },
                listener,
                bound,
                helper: helper(run_as),
            }),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.worker.is_some()
    }

    /// Spawns the metrics worker with the listener; false (logged) if it could not.
    pub(crate) fn start(&mut self, poll: &Poll) -> bool {
        let Some(w) = &mut self.worker else {
            return false;
        };
        let (spec, listener) = (&w.spec, &w.listener);
        w.helper.start(poll, |link| {
            let body = proto::encode(spec).map_err(io::Error::other)?;
            sys::send_with_fds_nonblocking(link.as_fd(), &body, &[listener.as_fd()])?;
            Ok(Some(link))
        })
    }

    /// See [`Helper::replace_if_stopped`].
    pub(crate) fn replace_if_stopped(&mut self) {
        if let Some(w) = &mut self.worker {
            w.helper.replace_if_stopped();
        }
    }

    pub(crate) fn is(&self, pid: u32) -> bool {
        self.worker.as_ref().is_some_and(|w| w.helper.is(pid))
    }

    /// The worker was reaped; the roles' timer starts another.
    pub(crate) fn exited(&mut self, status: sys::ExitStatus, stopping: bool) {
        if let Some(w) = &mut self.worker {
            w.helper.exited();
            if !stopping {
                log::warn!("the metrics worker {status}");
            }
        }
    }

    /// At exit: nothing it does matters any more.
    pub(crate) fn kill(&mut self) {
        if let Some(w) = &mut self.worker {
            w.helper.close_link();
            w.helper.signal(Signal::SIGKILL);
        }
    }

    /// The link is readable: answer each ask with `figures`. Bounded per turn; returns
    /// whether more may wait (never: a worker that fills the batch is replaced).
    pub(crate) fn on_link(&mut self, figures: &Figures) -> bool {
        let Some(w) = &mut self.worker else {
            return false;
        };
        let mut buf = [0u8; 64];
        for _ in 0..ASK_BATCH {
            let Some(link) = &w.helper.link else {
                return false;
            };
            match sys::recv_nowait(link.as_fd(), &mut buf) {
                Ok(0) => {
                    // The worker is gone; it is reaped like any child.
                    w.helper.close_link();
                    return false;
                }
                Ok(n) => {
                    let answered = match proto::decode::<MetricsMessage>(&buf[..n]) {
                        Ok(MetricsMessage::Ask) => {
                            proto::encode(&MetricsMessage::Figures(figures.clone()))
                                .map_err(io::Error::other)
                                .and_then(|body| sys::send_nonblocking(link.as_fd(), &body))
                        }
                        Ok(MetricsMessage::Figures(_)) => {
                            Err(io::Error::other("unexpected figures from the worker"))
                        }
                        Err(e) => Err(io::Error::other(e)),
                    };
                    if let Err(e) = answered {
                        w.helper.replace(&misbehaves(&e));
                        return false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    w.helper.replace(&misbehaves(&e));
                    return false;
                }
            }
        }
        let flood = io::Error::other(format!("{ASK_BATCH} asks at once"));
        w.helper.replace(&misbehaves(&flood));
        false
    }

    /// The plain-data image, for an upgrade in place: the listener and the link stay open
    /// across the exec, so the worker carries on serving.
    pub(crate) fn image(
        &self,
        timer: Option<&RoleTimer>,
        restarts: u64,
        clock: &crate::primary::handoff::Clock,
    ) -> MetricsImage {
        let c = &self.counters;
        let mut image = MetricsImage {
            reloads_succeeded: c.reloads_succeeded,
            reloads_rolled_back: c.reloads_rolled_back,
            reloads_refused: c.reloads_refused,
            reloads_cancelled: c.reloads_cancelled,
            reload_buckets: c.reload_buckets.clone(),
            reload_seconds_sum_ns: c.reload_seconds_sum_ns,
            reload_began: clock.opt_ns(c.reload_began),
            worker_restarts: restarts,
            logins_ok: c.logins_ok,
            logins_failed: c.logins_failed,
            start_time_ns: c.start_time_ns,
            ..MetricsImage::default()
        };
        if let Some(w) = &self.worker {
            image.listener_fd = Some(w.listener.as_raw_fd());
            image.bound = w.bound.clone();
            image.pid = w.helper.pid;
            image.link_fd = w.helper.link_fd();
        }
        if let Some(t) = timer {
            (image.started, image.backoff, image.restart_at) = timer_image(t, clock);
        }
        image
    }

    /// The fds an image names, to keep open across the exec.
    pub(crate) fn image_fds(image: &MetricsImage) -> Vec<i32> {
        image.listener_fd.into_iter().chain(image.link_fd).collect()
    }

    /// The new image's metrics; `take` adopts an fd number of the hand-off (once each). An
    /// image from before version 5 (`None`) starts the counters from zero.
    pub(crate) fn resume(
        image: Option<MetricsImage>,
        name: &str,
        primary_pid: u32,
        run_as: (Option<u32>, Option<u32>),
        mut take: impl FnMut(i32) -> io::Result<OwnedFd>,
        poll: &Poll,
        clock: &crate::primary::handoff::Clock,
    ) -> io::Result<(Metrics, Option<RoleTimer>, u64)> {
        let Some(image) = image else {
            return Ok((Metrics::new(None, name, primary_pid, run_as), None, 0));
        };
        let mut counters = Counters::new();
        counters.reloads_succeeded = image.reloads_succeeded;
        counters.reloads_rolled_back = image.reloads_rolled_back;
        counters.reloads_refused = image.reloads_refused;
        counters.reloads_cancelled = image.reloads_cancelled;
        if image.reload_buckets.len() == RELOAD_BUCKETS_MS.len() + 1 {
            counters.reload_buckets = image.reload_buckets;
        }
        counters.reload_seconds_sum_ns = image.reload_seconds_sum_ns;
        counters.reload_began = clock.opt_instant(image.reload_began);
        counters.logins_ok = image.logins_ok;
        counters.logins_failed = image.logins_failed;
        counters.start_time_ns = image.start_time_ns;
        let mut metrics = Metrics {
            counters,
            worker: None,
        };
        let Some(fd) = image.listener_fd else {
            return Ok((metrics, None, image.worker_restarts));
        };
        let listener = take(fd)?;
        let link = image.link_fd.map(&mut take).transpose()?;
        metrics.worker = Some(Worker {
            spec: MetricsSpec {
                version: PROTOCOL_VERSION,
                primary_pid,
                name: name.to_string(),
            },
            listener,
            bound: image.bound,
            helper: {
                let mut h = helper(run_as).resume(image.pid, link, poll)?;
                h.replace_if_stale();
                h
            },
        });
        let timer = timer_from(
            image.pid.is_some(),
            (image.started, image.backoff, image.restart_at),
            clock,
        );
        Ok((metrics, Some(timer), image.worker_restarts))
    }
}

/// Why a metrics worker is replaced, as the log says it.
fn misbehaves(e: &io::Error) -> String {
    format!("misbehaves ({})", lower(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(outcome: Outcome) -> ReloadOutcome {
        ReloadOutcome {
            generation: 2,
            outcome,
            reason: String::new(),
        }
    }

    #[test]
    fn reloads_are_counted_by_outcome_and_timed_into_their_bucket() {
        let mut c = Counters::new();
        let t = Instant::now();
        c.generation_started(t);
        c.reload_done(&outcome(Outcome::Succeeded), t + Duration::from_millis(300));
        c.generation_started(t);
        c.reload_done(&outcome(Outcome::RolledBack), t + Duration::from_secs(200));
        c.reload_done(&outcome(Outcome::Refused), t + Duration::from_secs(1));
        assert_eq!(
            (
                c.reloads_succeeded,
                c.reloads_rolled_back,
                c.reloads_refused
            ),
            (1, 1, 1)
        );
        // 300 ms falls in the 500 ms bucket (index 2), 200 s in +Inf; the refusal is not timed.
        let mut want = vec![0; RELOAD_BUCKETS_MS.len() + 1];
        want[2] = 1;
        want[RELOAD_BUCKETS_MS.len()] = 1;
        assert_eq!(c.reload_buckets, want);
        assert_eq!(c.reload_seconds_sum_ns, 200_300_000_000);
    }

    #[test]
    fn counters_cross_the_hand_off_unchanged() {
        let mut m = Metrics::new(None, "web", 1, (None, None));
        let t = Instant::now();
        m.counters.generation_started(t);
        m.counters
            .reload_done(&outcome(Outcome::Succeeded), t + Duration::from_secs(3));
        m.counters.generation_started(t);
        m.counters.login(false);
        let clock = crate::primary::handoff::Clock::now();
        let image = m.image(None, 7, &clock);
        let poll = Poll::new().unwrap();
        let (back, timer, restarts) = Metrics::resume(
            Some(image),
            "web",
            1,
            (None, None),
            |_| panic!("no fd without --metrics"),
            &poll,
            &clock,
        )
        .unwrap();
        assert_eq!(back.counters, m.counters);
        assert_eq!(restarts, 7);
        assert!(timer.is_none() && !back.enabled());
        // A hand-off from before version 5: the counters start over, the start time is now.
        let (fresh, _, restarts) =
            Metrics::resume(None, "web", 1, (None, None), |_| panic!(), &poll, &clock).unwrap();
        assert_eq!((fresh.counters.reloads_succeeded, restarts), (0, 0));
    }

    /// A worker on the far end of a socketpair: the primary's side is `Metrics` with no pid.
    fn linked() -> (Metrics, OwnedFd) {
        let (ours, theirs) = sys::seqpacket_pair().unwrap();
        let listener = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let mut m = Metrics::new(
            Some((listener, "127.0.0.1:1".into())),
            "web",
            1,
            (None, None),
        );
        m.worker.as_mut().unwrap().helper.link = Some(ours);
        (m, theirs)
    }

    fn ask(theirs: &OwnedFd) {
        let body = proto::encode(&MetricsMessage::Ask).unwrap();
        sys::send_nonblocking(theirs.as_fd(), &body).unwrap();
    }

    fn has_link(m: &Metrics) -> bool {
        m.worker.as_ref().is_some_and(|w| w.helper.link.is_some())
    }

    #[test]
    fn an_ask_is_answered_and_the_worker_kept() {
        let (mut m, theirs) = linked();
        ask(&theirs);
        ask(&theirs);
        assert!(!m.on_link(&Figures::default()));
        assert!(
            has_link(&m),
            "two asks (one after a timeout) are a worker's right"
        );
        let mut buf = [0u8; 4096];
        let n = sys::recv_nowait(theirs.as_fd(), &mut buf).unwrap();
        assert!(matches!(
            proto::decode::<MetricsMessage>(&buf[..n]),
            Ok(MetricsMessage::Figures(_))
        ));
    }

    /// Regression: a worker that flooded asks (and read the answers) was answered 64 at a
    /// time, every turn, for as long as it went on: the loop's time was its.
    #[test]
    fn a_worker_that_floods_asks_is_replaced() {
        let (mut m, theirs) = linked();
        for _ in 0..ASK_BATCH + 1 {
            ask(&theirs);
        }
        let more = m.on_link(&Figures::default());
        assert!(
            !more && !has_link(&m),
            "a flood of asks replaces the worker"
        );
    }

    #[test]
    fn a_worker_that_sends_garbage_or_never_reads_is_replaced() {
        let (mut m, theirs) = linked();
        sys::send_nonblocking(theirs.as_fd(), &[0xff; 40]).unwrap();
        m.on_link(&Figures::default());
        assert!(!has_link(&m), "garbage replaces the worker");
        let (mut m, theirs) = linked();
        // Never read: answers fill the link until a send would block.
        for _ in 0..10_000 {
            if !has_link(&m) {
                break;
            }
            ask(&theirs);
            m.on_link(&Figures::default());
        }
        assert!(!has_link(&m), "a worker that never reads is replaced");
    }

    #[test]
    fn logins_are_counted_by_result() {
        let mut c = Counters::new();
        c.login(true);
        c.login(false);
        c.login(false);
        assert_eq!((c.logins_ok, c.logins_failed), (1, 2));
        assert!(c.start_time_ns > 1_600_000_000 * 1_000_000_000);
    }
}
