//! The restart timers of the primary's helper roles (the shell worker, the keeper, the logger
//! worker, the metrics worker) and of the spares (`--prespawn`): when each is started again after it died or
//! could not start, and when the spares are topped up.
//!
//! Pure, like the generation state machine: plain data, [`RoleEvent`]s in, [`RoleAction`]s out,
//! no syscalls. The loop carries the actions out through its [`Executor`] and feeds the
//! results back as events; its poll timeout includes [`Roles::next_deadline`], which is `None`
//! when nothing is pending (no wake-ups at rest). Everything here crosses an upgrade in place
//! in the images of its role (see `primary/handoff/`).
//!
//! [`Executor`]: crate::primary::executor::Executor

use std::time::{Duration, Instant};

use super::{BACKOFF_MAX, BACKOFF_MIN, HEALTHY_AFTER, SHORT_LIFE};

/// How long after spares were used they are topped up again: a little later, so that starting
/// them does not compete with the reload that used them.
pub(crate) const REFILL_DELAY: Duration = Duration::from_millis(200);

/// How long after a spare died, or could not be started, another is tried.
pub(crate) const REFILL_RETRY: Duration = Duration::from_secs(1);

/// A helper process the primary keeps running, restarted with back-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Shell,
    Keeper,
    Logger,
    Metrics,
}

impl Role {
    /// How long a role must have lived for its back-off to start over. The console is the
    /// operator's way in: a shell worker that lived a while (killed, or crashed by a client)
    /// is back at once; only one that dies young backs off.
    fn healthy_after(self) -> Duration {
        match self {
            Role::Shell | Role::Logger | Role::Metrics => SHORT_LIFE,
            Role::Keeper => HEALTHY_AFTER,
        }
    }

    fn scheduled(self, backoff: Duration) {
        match self {
            Role::Shell => {
                log::info!("admin console: restarting the shell worker in {backoff:?}")
            }
            Role::Keeper => log::info!("restarting the keeper in {backoff:?}"),
            Role::Logger => log::info!("restarting the logger worker in {backoff:?}"),
            Role::Metrics => log::info!("restarting the metrics worker in {backoff:?}"),
        }
    }
}

/// One role's restart timer and back-off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoleTimer {
    /// Its process runs (it was started and not reaped yet).
    pub running: bool,
    pub started: Option<Instant>,
    /// The next restart's delay: doubles up to [`BACKOFF_MAX`], starts over after a healthy run.
    pub backoff: Duration,
    pub restart_at: Option<Instant>,
    /// Replaced on purpose (`restart`, a new console config): started again at once when reaped.
    pub replacing: bool,
    /// Never started again (shutdown, exit).
    pub stopping: bool,
}

impl RoleTimer {
    pub(crate) fn new() -> RoleTimer {
        RoleTimer {
            running: false,
            started: None,
            backoff: BACKOFF_MIN,
            restart_at: None,
            replacing: false,
            stopping: false,
        }
    }

    fn schedule(&mut self, role: Role, now: Instant) {
        if self.stopping {
            return;
        }
        role.scheduled(self.backoff);
        self.restart_at = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }
}

/// The timers of every role and of the spares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Roles {
    /// With `--admin` only.
    pub shell: Option<RoleTimer>,
    pub keeper: RoleTimer,
    /// With `--log-output stdout|file:PATH` only.
    pub logger: Option<RoleTimer>,
    /// With `--metrics` only.
    pub metrics: Option<RoleTimer>,
    /// `--prespawn`: how many spares to keep.
    pub prespawn: u32,
    /// When to top the spares up again.
    pub refill_at: Option<Instant>,
    /// Shutting down: no spare is started or scheduled any more.
    pub retired: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RoleEvent {
    /// The loop begins: every configured role is started, the spares soon after.
    Begin,
    /// `role` was started as asked.
    Started(Role),
    /// `role` could not be started: try again after its back-off.
    StartFailed(Role),
    /// `role`'s process was reaped.
    Exited(Role),
    /// Replace `role` with a fresh process (its sessions end).
    Replace(Role),
    /// `role` is not started again (shutdown, exit).
    Stop(Role),
    /// `--prespawn` is now `n` (at start or by a reload).
    Prespawn(u32),
    /// A worker was started in a spare (or a spare was found dead when one was wanted).
    SpareTaken,
    /// A spare died before it was used.
    SpareDied,
    /// Topping the spares up failed part way.
    RefillFailed,
    /// Shutdown: spares are retired, none is started again.
    Shutdown,
    /// A deadline of [`Roles::next_deadline`] may be due.
    Tick,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RoleAction {
    /// Spawn `role`'s process; answer with `Started` or `StartFailed`.
    Start(Role),
    /// Ask `role`'s process to exit (SIGTERM to its group); it is reaped like any child.
    Terminate(Role),
    /// Start spares up to `--prespawn`; answer `RefillFailed` if one could not be started.
    RefillSpares,
}

impl Roles {
    pub(crate) fn new(shell: bool, logger: bool, prespawn: u32) -> Roles {
        Roles {
            shell: shell.then(RoleTimer::new),
            keeper: RoleTimer::new(),
            logger: logger.then(RoleTimer::new),
            metrics: None,
            prespawn,
            refill_at: None,
            retired: false,
        }
    }

    pub(crate) fn timer(&self, role: Role) -> Option<&RoleTimer> {
        match role {
            Role::Shell => self.shell.as_ref(),
            Role::Keeper => Some(&self.keeper),
            Role::Logger => self.logger.as_ref(),
            Role::Metrics => self.metrics.as_ref(),
        }
    }

    fn timer_mut(&mut self, role: Role) -> Option<&mut RoleTimer> {
        match role {
            Role::Shell => self.shell.as_mut(),
            Role::Keeper => Some(&mut self.keeper),
            Role::Logger => self.logger.as_mut(),
            Role::Metrics => self.metrics.as_mut(),
        }
    }

    /// The earliest deadline: a role's restart or the spares' refill. `None` when nothing is
    /// pending, so that the loop sleeps without a timeout.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        [
            self.shell.as_ref(),
            Some(&self.keeper),
            self.logger.as_ref(),
            self.metrics.as_ref(),
        ]
        .into_iter()
        .flatten()
        .filter_map(|t| t.restart_at)
        .chain(self.refill_at)
        .min()
    }

    pub(crate) fn handle(&mut self, now: Instant, event: RoleEvent) -> Vec<RoleAction> {
        let mut out = Vec::new();
        match event {
            RoleEvent::Begin => {
                // The keeper first: every worker is guarded from its first moment.
                for role in [Role::Keeper, Role::Logger, Role::Shell, Role::Metrics] {
                    if self.timer(role).is_some() {
                        out.push(RoleAction::Start(role));
                    }
                }
                out.extend(self.handle(now, RoleEvent::Prespawn(self.prespawn)));
            }
            RoleEvent::Started(role) => {
                if let Some(t) = self.timer_mut(role) {
                    t.restart_at = None;
                    t.running = true;
                    t.started = Some(now);
                }
            }
            RoleEvent::StartFailed(role) => {
                if let Some(t) = self.timer_mut(role) {
                    t.restart_at = None;
                    t.running = false;
                    t.schedule(role, now);
                }
            }
            RoleEvent::Exited(role) => {
                let Some(t) = self.timer_mut(role) else {
                    return out;
                };
                t.running = false;
                if t.stopping {
                    return out;
                }
                if t.replacing {
                    t.replacing = false;
                    t.backoff = BACKOFF_MIN;
                    out.push(RoleAction::Start(role));
                    return out;
                }
                if t.started
                    .is_some_and(|s| now.saturating_duration_since(s) >= role.healthy_after())
                {
                    t.backoff = BACKOFF_MIN;
                }
                t.schedule(role, now);
            }
            RoleEvent::Replace(role) => {
                if let Some(t) = self.timer_mut(role).filter(|t| !t.stopping) {
                    if t.running {
                        t.replacing = true;
                        out.push(RoleAction::Terminate(role));
                    } else {
                        // Waiting out a back-off: the replacement starts now instead.
                        out.push(RoleAction::Start(role));
                    }
                }
            }
            RoleEvent::Stop(role) => {
                if let Some(t) = self.timer_mut(role) {
                    t.stopping = true;
                    t.restart_at = None;
                }
            }
            RoleEvent::Prespawn(n) => {
                self.prespawn = n;
                self.want_spares(now, REFILL_DELAY);
            }
            RoleEvent::SpareTaken => self.want_spares(now, REFILL_DELAY),
            RoleEvent::SpareDied | RoleEvent::RefillFailed => {
                if !self.retired {
                    self.refill_at = Some(now + REFILL_RETRY);
                }
            }
            RoleEvent::Shutdown => {
                self.retired = true;
                self.refill_at = None;
            }
            RoleEvent::Tick => {
                // The order the loop always used: the console first, the keeper, the logger.
                for role in [Role::Shell, Role::Keeper, Role::Logger, Role::Metrics] {
                    if let Some(t) = self
                        .timer_mut(role)
                        .filter(|t| t.restart_at.is_some_and(|at| at <= now))
                    {
                        t.restart_at = None;
                        out.push(RoleAction::Start(role));
                    }
                }
                if self.refill_at.is_some_and(|at| at <= now) {
                    self.refill_at = None;
                    if !self.retired {
                        out.push(RoleAction::RefillSpares);
                    }
                }
            }
        }
        out
    }

    /// Spares are missing: top them up after `delay`, unless a refill is already due (a
    /// refill is never scheduled twice).
    fn want_spares(&mut self, now: Instant, delay: Duration) {
        if self.prespawn > 0 && !self.retired && self.refill_at.is_none() {
            self.refill_at = Some(now + delay);
        }
    }
}
