//! The generation and slot logic as a pure state machine: `(state, event, now) -> actions`.
//!
//! No syscalls and no clock here: the event loop feeds [`Event`]s with the current instant and
//! carries out the [`Action`]s. This is what makes the reload transaction, rollback, crash
//! back-off and shutdown testable as tables, and what a later step serialises to re-exec the
//! primary in place.
//!
//! Words: a *generation* is one start of the command for every slot; a *slot* is a worker's
//! index (`RELOADSUP_WORKER`) in the serving generation; a *process* is one running worker.

use std::time::{Duration, Instant};

use reloadsup_protocol::{Outcome, Progress, ReloadOutcome, WorkerInfo, WorkerState as Shown};

use crate::config::{ReadyMode, RestartPolicy};

/// First restart delay after a crash; doubles up to [`BACKOFF_MAX`].
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A worker up this long has its back-off reset.
pub(crate) const HEALTHY_AFTER: Duration = Duration::from_secs(30);
/// A crash after less than this counts towards the dead-slot streak.
pub(crate) const SHORT_LIFE: Duration = Duration::from_secs(10);
/// Crashes in a row, each short-lived, after which a slot is dead.
pub(crate) const DEAD_AFTER: u32 = 5;

/// Signal numbers as plain data, so the state stays serialisable.
pub(crate) const SIGKILL: i32 = 9;

/// Whoever waits for a request's outcome: opaque to the state machine.
pub(crate) type Requester = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settings {
    pub ready: ReadyMode,
    pub ready_timeout: Duration,
    pub graceful_timeout: Duration,
    /// The stability window (`--stable-for`): zero commits a generation once it is ready.
    pub stable_for: Duration,
    pub restart: RestartPolicy,
    pub stop_signal: i32,
    /// Canary workers for every reload (`canary = N`): zero starts the whole generation at once.
    pub canary: u32,
}

/// How a process ended, as plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Exit {
    Code(i32),
    Signal(i32),
    /// The worker role could not run the command, and said why (its own exit status adds
    /// nothing to that).
    Setup(String),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The worker role's own status when exec fails, when its reason was lost.
            Exit::Code(127) => write!(f, "exited with status 127 (the command could not be run)"),
            Exit::Code(c) => write!(f, "exited with status {c}"),
            Exit::Setup(reason) => write!(f, "could not start: {reason}"),
            Exit::Signal(s) => match nix::sys::signal::Signal::try_from(*s) {
                Ok(sig) => write!(f, "was killed by {}", sig.as_str()),
                Err(_) => write!(f, "was killed by signal {s}"),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// Start the first generation.
    Start,
    Reload(Requester),
    /// A reload with this many canary workers (`ctl reload --canary N`), whatever the config says.
    ReloadWith {
        requester: Requester,
        canary: u32,
    },
    Spawned {
        generation: u64,
        slot: u32,
        pid: u32,
    },
    SpawnFailed {
        generation: u64,
        slot: u32,
        reason: String,
    },
    /// A worker (already resolved from the sender's pid) sent notify data.
    Notify {
        pid: u32,
        ready: bool,
        status: Option<String>,
    },
    Exited {
        pid: u32,
        exit: Exit,
    },
    /// A worker (or a process of its group) was seen waiting for connections on one of its
    /// listeners (`--ready listening`).
    Listening {
        pid: u32,
    },
    /// `--ready listening` can no longer look at starting workers (`Some`, why), or can again.
    Blind {
        why: Option<String>,
    },
    /// Time passed; deadlines up to `now` are due.
    Tick,
    Scale(u32),
    Revive,
    Shutdown {
        graceful: bool,
        requester: Option<Requester>,
    },
}

impl Event {
    /// A reload, with the canary count of the request when it named one.
    pub(crate) fn reload(requester: Requester, canary: Option<u32>) -> Event {
        match canary {
            Some(canary) => Event::ReloadWith { requester, canary },
            None => Event::Reload(requester),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    Spawn {
        generation: u64,
        slot: u32,
    },
    /// Signal a worker's whole process group.
    Signal {
        pid: u32,
        signal: i32,
    },
    Progress {
        waiters: Vec<Requester>,
        progress: Progress,
    },
    ReloadDone {
        waiters: Vec<Requester>,
        outcome: ReloadOutcome,
    },
    /// Every worker is gone after a shutdown: answer these and exit.
    Exit {
        waiters: Vec<Requester>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Starting,
    Ready,
    /// Sent the stop signal (or SIGKILL); waiting to be reaped.
    Draining,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Process {
    pub pid: u32,
    pub generation: u64,
    pub slot: u32,
    pub phase: Phase,
    pub started: Instant,
    /// Starting: when it counts as ready (delay mode). Unused otherwise.
    pub ready_at: Option<Instant>,
    /// Starting: the ready deadline. Draining: when SIGKILL follows. None once killed.
    /// Ready, in the starting generation: the end of its stability window (`--stable-for`),
    /// the same instant on each of them, so the window survives an upgrade in the state image
    /// without a field of its own.
    pub deadline: Option<Instant>,
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Down {
    /// Waiting until `restart_at`.
    Backoff,
    Dead(String),
    Stopped(String),
}

/// A slot of the serving generation: what survives its processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Slot {
    pub restarts: u32,
    pub streak: u32,
    pub backoff: Duration,
    pub restart_at: Option<Instant>,
    pub down: Option<Down>,
    pub since: Option<Instant>,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            restarts: 0,
            streak: 0,
            backoff: BACKOFF_MIN,
            restart_at: None,
            down: None,
            since: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Starting {
    pub generation: u64,
    pub waiters: Vec<Requester>,
    /// While non-zero, only slots `0..canary` of the generation were started: the rest start
    /// once those are ready (and stable). Not in the hand-off: a restore infers it from the
    /// slots that have no process (spawns are synchronous, so nothing else leaves a gap).
    pub canary: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct State {
    pub settings: Settings,
    pub target: u32,
    /// The generation serving now; 0 before [`Event::Start`].
    pub serving: u64,
    pub starting: Option<Starting>,
    /// Reload requests that arrived while one was starting, coalesced into one more.
    pub pending: Option<Vec<Requester>>,
    /// The largest canary count asked for by the pending requests (`None`: the config's).
    pub pending_canary: Option<u32>,
    pub next_generation: u64,
    pub processes: Vec<Process>,
    pub slots: Vec<Slot>,
    pub last_reload: Option<ReloadOutcome>,
    /// Set once a shutdown began: who waits for it.
    pub shutdown: Option<Vec<Requester>>,
    /// The first generation had every worker ready once (it is logged as serving then).
    pub first_ready: bool,
    /// Workers restarted after they died (back-off restarts), for `/metrics`: never reset,
    /// carried across an upgrade in the metrics image.
    pub restarts_total: u64,
    /// Why `--ready listening` cannot look at starting workers now, when it cannot (its
    /// inspector overran or failed): told in the reason of a rollback at `--ready-timeout`.
    /// Not carried across an upgrade in place (the new image's inspector looks afresh).
    pub blind: Option<String>,
}

impl State {
    pub(crate) fn new(settings: Settings, workers: u32) -> State {
        State {
            settings,
            target: workers,
            serving: 0,
            starting: None,
            pending: None,
            pending_canary: None,
            next_generation: 1,
            processes: Vec::new(),
            slots: Vec::new(),
            last_reload: None,
            shutdown: None,
            first_ready: false,
            restarts_total: 0,
            blind: None,
        }
    }

    /// The earliest instant at which a [`Event::Tick`] has something to do.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let procs = self
            .processes
            .iter()
            .flat_map(|p| [p.ready_at, p.deadline])
            .flatten();
        let slots = self.slots.iter().filter_map(|s| s.restart_at);
        procs.chain(slots).min()
    }

    pub(crate) fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Start => self.start(now, &mut out),
            Event::Reload(who) => self.reload(now, who, None, &mut out),
            Event::ReloadWith { requester, canary } => {
                self.reload(now, requester, Some(canary), &mut out)
            }
            Event::Spawned {
                generation,
                slot,
                pid,
            } => self.spawned(now, generation, slot, pid, &mut out),
            Event::SpawnFailed {
                generation,
                slot,
                reason,
            } => self.spawn_failed(now, generation, slot, reason, &mut out),
            Event::Notify { pid, ready, status } => self.notify(now, pid, ready, status, &mut out),
            Event::Exited { pid, exit } => self.exited(now, pid, exit, &mut out),
            Event::Listening { pid } => {
                // Only in that mode: a scan that raced a reload to another mode is ignored.
                if self.settings.ready == ReadyMode::Listening {
                    self.mark_ready(now, pid, &mut out);
                }
            }
            Event::Blind { why } => self.blind = why,
            Event::Tick => self.tick(now, &mut out),
            Event::Scale(n) => self.scale(now, n, &mut out),
            Event::Revive => {
                self.revive(&mut out);
            }
            Event::Shutdown {
                graceful,
                requester,
            } => self.begin_shutdown(now, graceful, requester, &mut out),
        }
        if let Some(waiters) = &self.shutdown {
            if self.processes.is_empty() {
                out.push(Action::Exit {
                    waiters: waiters.clone(),
                });
            }
        }
        out
    }

    /// How many dead slots a [`Event::Revive`] will bring back.
    pub(crate) fn dead_slots(&self) -> u32 {
        self.slots
            .iter()
            .filter(|s| matches!(s.down, Some(Down::Dead(_)) | Some(Down::Stopped(_))))
            .count() as u32
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutdown.is_some()
    }

    fn start(&mut self, _now: Instant, out: &mut Vec<Action>) {
        if self.serving != 0 {
            return;
        }
        // The first generation serves from the start: there is nothing to roll back to, so its
        // failures are crashes with back-off rather than a rolled-back reload.
        self.serving = self.next_generation;
        self.next_generation += 1;
        self.slots = vec![Slot::default(); self.target as usize];
        log::info!(
            "starting generation {} with {} workers",
            self.serving,
            self.target
        );
        for slot in 0..self.target {
            out.push(Action::Spawn {
                generation: self.serving,
                slot,
            });
        }
    }

    fn reload(&mut self, now: Instant, who: Requester, canary: Option<u32>, out: &mut Vec<Action>) {
        if self.starting.is_some() {
            self.pending.get_or_insert_with(Vec::new).push(who);
            if let Some(n) = canary {
                self.pending_canary = Some(self.pending_canary.map_or(n, |m| m.max(n)));
            }
            out.push(Action::Progress {
                waiters: vec![who],
                progress: Progress::Queued,
            });
            return;
        }
        let canary = canary.unwrap_or(self.settings.canary);
        self.begin_generation(now, vec![who], canary, out);
    }

    fn begin_generation(
        &mut self,
        now: Instant,
        waiters: Vec<Requester>,
        canary: u32,
        out: &mut Vec<Action>,
    ) {
        let generation = self.next_generation;
        self.next_generation += 1;
        log::info!(
            "starting generation {generation} with {} workers",
            self.target
        );
        out.push(Action::Progress {
            waiters: waiters.clone(),
            progress: Progress::GenerationStarted {
                generation,
                workers: self.target,
            },
        });
        // As many canaries as workers, or more, is an ordinary reload.
        let canary = if canary < self.target { canary } else { 0 };
        if canary > 0 {
            let text = format!(
                "canary: starting {canary} of {} workers of generation {generation}; generation {} keeps serving",
                self.target, self.serving
            );
            log::info!("{text}");
            out.push(Action::Progress {
                waiters: waiters.clone(),
                progress: Progress::Text(text),
            });
        }
        self.starting = Some(Starting {
            generation,
            waiters,
            canary,
        });
        let first = if canary > 0 { canary } else { self.target };
        for slot in 0..first {
            out.push(Action::Spawn { generation, slot });
        }
        self.check_complete(now, out);
    }

    /// While the starting generation is in its canary step: how many canaries.
    fn canary(&self) -> u32 {
        self.starting.as_ref().map_or(0, |s| s.canary)
    }

    fn waiters(&self) -> Vec<Requester> {
        self.starting
            .as_ref()
            .map(|s| s.waiters.clone())
            .unwrap_or_default()
    }

    fn starting_generation(&self) -> Option<u64> {
        self.starting.as_ref().map(|s| s.generation)
    }

    fn spawned(
        &mut self,
        now: Instant,
        generation: u64,
        slot: u32,
        pid: u32,
        out: &mut Vec<Action>,
    ) {
        let wanted = (Some(generation) == self.starting_generation() || generation == self.serving)
            && slot < self.target
            && self.shutdown.is_none()
            && !self.processes.iter().any(|p| {
                p.generation == generation && p.slot == slot && p.phase != Phase::Draining
            });
        let mut process = Process {
            pid,
            generation,
            slot,
            phase: Phase::Starting,
            started: now,
            ready_at: None,
            deadline: Some(now + self.settings.ready_timeout),
            status: String::new(),
        };
        if !wanted {
            // Its generation was rolled back or the slot went away while the spawn was queued.
            process.phase = Phase::Draining;
            process.deadline = None;
            self.processes.push(process);
            out.push(Action::Signal {
                pid,
                signal: SIGKILL,
            });
            return;
        }
        if let ReadyMode::Delay(d) = self.settings.ready {
            process.ready_at = Some(now + d);
        }
        self.processes.push(process);
        if generation == self.serving {
            if let Some(s) = self.slots.get_mut(slot as usize) {
                s.since = Some(now);
                s.down = None;
            }
        } else {
            out.push(Action::Progress {
                waiters: self.waiters(),
                progress: Progress::WorkerSpawned {
                    generation,
                    slot,
                    pid,
                },
            });
        }
        if self.settings.ready == ReadyMode::Immediate {
            self.mark_ready(now, pid, out);
        }
    }

    fn spawn_failed(
        &mut self,
        now: Instant,
        generation: u64,
        slot: u32,
        reason: String,
        out: &mut Vec<Action>,
    ) {
        if Some(generation) == self.starting_generation() {
            self.rollback(
                now,
                format!("worker {slot} could not be spawned: {reason}"),
                out,
            );
        } else if generation == self.serving {
            log::error!("worker {slot} of generation {generation} could not be spawned: {reason}");
            self.slot_down(now, slot, Exit::Code(127), Duration::ZERO);
        }
    }

    fn notify(
        &mut self,
        now: Instant,
        pid: u32,
        ready: bool,
        status: Option<String>,
        out: &mut Vec<Action>,
    ) {
        let Some(p) = self.processes.iter_mut().find(|p| p.pid == pid) else {
            return;
        };
        if let Some(status) = status {
            p.status = status;
        }
        if ready && p.phase == Phase::Starting {
            self.mark_ready(now, pid, out);
        }
    }

    fn mark_ready(&mut self, now: Instant, pid: u32, out: &mut Vec<Action>) {
        let Some(p) = self.processes.iter_mut().find(|p| p.pid == pid) else {
            return;
        };
        if p.phase != Phase::Starting {
            return;
        }
        p.phase = Phase::Ready;
        p.ready_at = None;
        p.deadline = None;
        let (generation, slot) = (p.generation, p.slot);
        log::debug!("worker {slot} of generation {generation} (pid {pid}) is ready");
        if Some(generation) == self.starting_generation() {
            out.push(Action::Progress {
                waiters: self.waiters(),
                progress: Progress::WorkerReady {
                    generation,
                    slot,
                    pid,
                },
            });
            self.check_complete(now, out);
        } else if generation == self.serving && !self.first_ready && self.last_reload.is_none() {
            let all_ready = (0..self.target).all(|slot| {
                self.processes.iter().any(|p| {
                    p.generation == generation && p.slot == slot && p.phase == Phase::Ready
                })
            });
            if all_ready {
                self.first_ready = true;
                log::info!("generation {generation} is serving");
            }
        }
    }

    /// Commits the starting generation once every slot has a ready process.
    fn check_complete(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(generation) = self.starting_generation() else {
            return;
        };
        let canary = self.canary();
        if canary > 0 {
            self.check_canaries(now, generation, canary, out);
            return;
        }
        let all_ready = (0..self.target).all(|slot| {
            self.processes
                .iter()
                .any(|p| p.generation == generation && p.slot == slot && p.phase == Phase::Ready)
        });
        if !all_ready {
            // A slot added meanwhile (a scale up) has to be ready too: the window starts again
            // once it is, and no overdue deadline is left to wake the loop until then.
            self.clear_window(generation);
            return;
        }
        let text = format!(
            "generation {generation} is ready; generation {} keeps serving for the {} stability window",
            self.serving,
            human(self.settings.stable_for)
        );
        if !self.window_over(now, generation, text, out) {
            return;
        }
        let reason = match self.window_end(generation) {
            Some(_) => format!("stable for {}", human(self.settings.stable_for)),
            None => String::new(),
        };
        self.clear_window(generation);
        let Some(starting) = self.starting.take() else {
            return;
        };
        let old = self.serving;
        self.serving = generation;
        self.slots = vec![Slot::default(); self.target as usize];
        for s in &mut self.slots {
            s.since = Some(now);
        }
        let mut drained = 0;
        for i in 0..self.processes.len() {
            if self.processes[i].generation != generation
                && self.processes[i].phase != Phase::Draining
            {
                self.drain(now, i, out);
                drained += 1;
            }
        }
        log::info!(
            "generation {generation} is serving; {drained} workers of generation {old} draining"
        );
        if drained > 0 {
            out.push(Action::Progress {
                waiters: starting.waiters.clone(),
                progress: Progress::Draining {
                    generation: old,
                    workers: drained,
                },
            });
        }
        let outcome = ReloadOutcome {
            generation,
            outcome: Outcome::Succeeded,
            reason,
        };
        self.last_reload = Some(outcome.clone());
        out.push(Action::ReloadDone {
            waiters: starting.waiters,
            outcome,
        });
        self.run_pending(now, out);
    }

    /// The canary step: once slots `0..canary` are ready and (with `--stable-for`) stable,
    /// starts the rest of the generation; the old one is not touched either way.
    fn check_canaries(
        &mut self,
        now: Instant,
        generation: u64,
        canary: u32,
        out: &mut Vec<Action>,
    ) {
        if canary >= self.target {
            // Scaled down to the canaries or below: what is left is an ordinary reload.
            if let Some(s) = &mut self.starting {
                s.canary = 0;
            }
            self.check_complete(now, out);
            return;
        }
        let ready = (0..canary).all(|slot| {
            self.processes
                .iter()
                .any(|p| p.generation == generation && p.slot == slot && p.phase == Phase::Ready)
        });
        if !ready {
            return;
        }
        let of = format!(
            "{canary} of {} workers of generation {generation}",
            self.target
        );
        let text = format!(
            "canary: {of} ready; generation {} keeps serving for the {} stability window",
            self.serving,
            human(self.settings.stable_for)
        );
        let stable = self.window_end(generation).is_some() || !self.settings.stable_for.is_zero();
        if !self.window_over(now, generation, text, out) {
            return;
        }
        self.clear_window(generation);
        let rest = self.target - canary;
        let text = if stable {
            format!(
                "canary: {of} ready and stable for {}; starting the other {rest}",
                human(self.settings.stable_for)
            )
        } else {
            format!("canary: {of} ready; starting the other {rest}")
        };
        log::info!("{text}");
        out.push(Action::Progress {
            waiters: self.waiters(),
            progress: Progress::Text(text),
        });
        if let Some(s) = &mut self.starting {
            s.canary = 0;
        }
        for slot in canary..self.target {
            out.push(Action::Spawn { generation, slot });
        }
        self.check_complete(now, out);
    }

    /// The end of the starting generation's stability window, if it is open.
    fn window_end(&self, generation: u64) -> Option<Instant> {
        self.processes
            .iter()
            .filter(|p| p.generation == generation && p.phase == Phase::Ready)
            .find_map(|p| p.deadline)
    }

    /// With every worker of `generation` ready: whether its stability window is over (or there
    /// is none); opens the window when it is not open yet.
    fn window_over(
        &mut self,
        now: Instant,
        generation: u64,
        text: String,
        out: &mut Vec<Action>,
    ) -> bool {
        let stable_for = self.settings.stable_for;
        let end = match self.window_end(generation) {
            Some(end) => end,
            None if stable_for.is_zero() => return true,
            None => {
                let end = now + stable_for;
                for p in &mut self.processes {
                    if p.generation == generation && p.phase == Phase::Ready {
                        p.deadline = Some(end);
                    }
                }
                log::info!("{text}");
                out.push(Action::Progress {
                    waiters: self.waiters(),
                    progress: Progress::Text(text),
                });
                end
            }
        };
        end <= now
    }

    fn clear_window(&mut self, generation: u64) {
        for p in &mut self.processes {
            if p.generation == generation && p.phase == Phase::Ready {
                p.deadline = None;
            }
        }
    }

    fn run_pending(&mut self, now: Instant, out: &mut Vec<Action>) {
        if let Some(waiters) = self.pending.take() {
            let canary = self.pending_canary.take().unwrap_or(self.settings.canary);
            self.begin_generation(now, waiters, canary, out);
        }
    }

    fn drain(&mut self, now: Instant, index: usize, out: &mut Vec<Action>) {
        let p = &mut self.processes[index];
        p.phase = Phase::Draining;
        p.ready_at = None;
        p.deadline = Some(now + self.settings.graceful_timeout);
        out.push(Action::Signal {
            pid: p.pid,
            signal: self.settings.stop_signal,
        });
    }

    fn kill(&mut self, index: usize, out: &mut Vec<Action>) {
        let p = &mut self.processes[index];
        p.phase = Phase::Draining;
        p.ready_at = None;
        p.deadline = None;
        out.push(Action::Signal {
            pid: p.pid,
            signal: SIGKILL,
        });
    }

    fn rollback(&mut self, now: Instant, reason: String, out: &mut Vec<Action>) {
        let Some(starting) = self.starting.take() else {
            return;
        };
        let generation = starting.generation;
        // Only the canaries ran: say so, since the rest was never started.
        let reason = if starting.canary > 0 {
            format!("canary: {reason}")
        } else {
            reason
        };
        for i in 0..self.processes.len() {
            let p = &self.processes[i];
            if p.generation != generation {
                continue;
            }
            match p.phase {
                // Ready workers of the failed generation are healthy and may hold accepted
                // connections: they drain like an old generation, so none of those is reset.
                Phase::Ready => self.drain(now, i, out),
                // Not ready: broken or still starting. Killed at once, as a process group.
                Phase::Starting => self.kill(i, out),
                Phase::Draining => {}
            }
        }
        log::warn!(
            "reload to generation {generation} failed: {reason}; generation {} keeps serving",
            self.serving
        );
        let outcome = ReloadOutcome {
            generation,
            outcome: Outcome::RolledBack,
            reason,
        };
        self.last_reload = Some(outcome.clone());
        out.push(Action::ReloadDone {
            waiters: starting.waiters,
            outcome,
        });
    }

    fn exited(&mut self, now: Instant, pid: u32, exit: Exit, out: &mut Vec<Action>) {
        let Some(index) = self.processes.iter().position(|p| p.pid == pid) else {
            return;
        };
        let p = self.processes.remove(index);
        let lived = now.saturating_duration_since(p.started);
        if p.phase == Phase::Draining {
            log::debug!(
                "worker {} of generation {} (pid {pid}) {exit}",
                p.slot,
                p.generation
            );
            return;
        }
        if Some(p.generation) == self.starting_generation() {
            let window = match (p.phase, p.deadline) {
                (Phase::Ready, Some(end)) => Some(end),
                _ => None,
            };
            let reason = match (window, &exit) {
                (Some(end), exit) => {
                    let opened = end.checked_sub(self.settings.stable_for).unwrap_or(end);
                    format!(
                        "{:.1} s into the stability window: worker {} (pid {pid}) {exit}",
                        now.saturating_duration_since(opened).as_secs_f64(),
                        p.slot
                    )
                }
                (None, Exit::Setup(_)) => format!("worker {} (pid {pid}) {exit}", p.slot),
                (None, _) => format!("worker {} (pid {pid}) {exit} before it was ready", p.slot),
            };
            self.rollback(now, reason, out);
            self.run_pending(now, out);
            return;
        }
        if p.generation != self.serving || self.shutdown.is_some() {
            return;
        }
        log::warn!(
            "worker {} of generation {} (pid {pid}) {exit}",
            p.slot,
            p.generation
        );
        self.slot_down(now, p.slot, exit, lived);
    }

    /// A process of the serving generation is gone unexpectedly: restart it, with back-off,
    /// or mark its slot dead or stopped.
    fn slot_down(&mut self, now: Instant, slot: u32, exit: Exit, lived: Duration) {
        let policy = self.settings.restart;
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return;
        };
        let failed = exit != Exit::Code(0);
        let restart = match policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => failed,
            RestartPolicy::Never => false,
        };
        s.since = None;
        if !restart {
            s.down = Some(Down::Stopped(format!(
                "{exit}; not restarted (--restart {})",
                policy_name(policy)
            )));
            return;
        }
        if lived >= HEALTHY_AFTER {
            s.backoff = BACKOFF_MIN;
        }
        if lived < SHORT_LIFE {
            s.streak += 1;
        } else {
            // A crash after a long life is not a short one: the next five short ones make a
            // dead slot, not four.
            s.streak = 0;
        }
        if s.streak >= DEAD_AFTER {
            log::error!(
                "worker {slot} is dead: {} crashes in a row, each within {}s (last: {exit}); 'reloadsup ctl revive' restarts it",
                s.streak,
                SHORT_LIFE.as_secs()
            );
            s.down = Some(Down::Dead(format!(
                "{} crashes in a row; last {exit}",
                s.streak
            )));
            s.restart_at = None;
            return;
        }
        log::info!("restarting worker {slot} in {:?}", s.backoff);
        s.restart_at = Some(now + s.backoff);
        s.backoff = (s.backoff * 2).min(BACKOFF_MAX);
        s.down = Some(Down::Backoff);
    }

    fn tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        // Delay-mode readiness.
        let due: Vec<u32> = self
            .processes
            .iter()
            .filter(|p| p.phase == Phase::Starting && p.ready_at.is_some_and(|t| t <= now))
            .map(|p| p.pid)
            .collect();
        for pid in due {
            self.mark_ready(now, pid, out);
        }
        // Ready deadlines and graceful timeouts.
        let mut i = 0;
        while i < self.processes.len() {
            let p = &self.processes[i];
            let overdue = p.deadline.is_some_and(|t| t <= now);
            if overdue && p.phase == Phase::Starting {
                let (generation, slot, pid) = (p.generation, p.slot, p.pid);
                let timeout = self.settings.ready_timeout;
                if Some(generation) == self.starting_generation() {
                    let blind = match (&self.blind, self.settings.ready) {
                        (Some(why), ReadyMode::Listening) => format!(" ({why})"),
                        _ => String::new(),
                    };
                    self.rollback(
                        now,
                        format!(
                            "worker {slot} (pid {pid}) was not ready within {}{blind}",
                            human(timeout)
                        ),
                        out,
                    );
                    self.run_pending(now, out);
                    // The rollback changed phases; look at every process again.
                    i = 0;
                    continue;
                }
                log::warn!(
                    "worker {slot} of generation {generation} (pid {pid}) was not ready within {}; killing it",
                    human(timeout)
                );
                // Killed, it is reaped as a crash of its slot and restarted with back-off.
                let p = &mut self.processes[i];
                p.deadline = None;
                p.ready_at = None;
                out.push(Action::Signal {
                    pid,
                    signal: SIGKILL,
                });
            } else if overdue && p.phase == Phase::Draining {
                log::warn!(
                    "worker {} of generation {} (pid {}) did not stop within {}; killing it",
                    p.slot,
                    p.generation,
                    p.pid,
                    human(self.settings.graceful_timeout)
                );
                self.kill(i, out);
            }
            i += 1;
        }
        // The end of the stability window: the generation is committed (or, if a slot was
        // added meanwhile, the window waits for it).
        if let Some(generation) = self.starting_generation() {
            if self.window_end(generation).is_some_and(|t| t <= now) {
                self.check_complete(now, out);
            }
        }
        // Back-off restarts.
        if self.shutdown.is_none() {
            for slot in 0..self.slots.len() {
                if self.slots[slot].restart_at.is_some_and(|t| t <= now) {
                    self.slots[slot].restart_at = None;
                    self.slots[slot].restarts += 1;
                    self.restarts_total += 1;
                    out.push(Action::Spawn {
                        generation: self.serving,
                        slot: slot as u32,
                    });
                }
            }
        }
    }

    fn scale(&mut self, now: Instant, n: u32, out: &mut Vec<Action>) {
        if self.shutdown.is_some() {
            return;
        }
        let old = self.target;
        self.target = n;
        if n > old {
            log::info!("scaling up from {old} to {n} workers");
            for slot in old..n {
                self.slots.push(Slot::default());
                out.push(Action::Spawn {
                    generation: self.serving,
                    slot,
                });
                // In the canary step the new slot starts with the rest of the generation.
                if let Some(generation) = self.starting_generation().filter(|_| self.canary() == 0)
                {
                    out.push(Action::Spawn { generation, slot });
                }
            }
        } else if n < old {
            log::info!("scaling down from {old} to {n} workers");
            self.slots.truncate(n as usize);
            for i in 0..self.processes.len() {
                if self.processes[i].slot >= n && self.processes[i].phase != Phase::Draining {
                    self.drain(now, i, out);
                }
            }
            self.check_complete(now, out);
        }
    }

    fn revive(&mut self, out: &mut Vec<Action>) -> u32 {
        if self.shutdown.is_some() {
            return 0;
        }
        let mut revived = 0;
        for (slot, s) in self.slots.iter_mut().enumerate() {
            if matches!(s.down, Some(Down::Dead(_)) | Some(Down::Stopped(_))) {
                s.down = None;
                s.streak = 0;
                s.backoff = BACKOFF_MIN;
                s.restart_at = None;
                s.restarts += 1;
                revived += 1;
                log::info!("reviving worker {slot}");
                out.push(Action::Spawn {
                    generation: self.serving,
                    slot: slot as u32,
                });
            }
        }
        revived
    }

    fn begin_shutdown(
        &mut self,
        now: Instant,
        graceful: bool,
        requester: Option<Requester>,
        out: &mut Vec<Action>,
    ) {
        let first = self.shutdown.is_none();
        let waiters = self.shutdown.get_or_insert_with(Vec::new);
        waiters.extend(requester);
        if first {
            log::info!(
                "{} shutdown: stopping {} workers",
                if graceful { "graceful" } else { "fast" },
                self.processes.len()
            );
        }
        for s in &mut self.slots {
            s.restart_at = None;
        }
        self.pending_canary = None;
        let cancelled: Vec<Requester> = self
            .starting
            .take()
            .map(|s| s.waiters)
            .into_iter()
            .chain(self.pending.take())
            .flatten()
            .collect();
        if !cancelled.is_empty() {
            out.push(Action::ReloadDone {
                waiters: cancelled,
                outcome: ReloadOutcome {
                    generation: self.next_generation - 1,
                    outcome: Outcome::Cancelled,
                    reason: "the supervisor is shutting down".into(),
                },
            });
        }
        for i in 0..self.processes.len() {
            let p = &self.processes[i];
            if !graceful {
                if p.phase != Phase::Draining || p.deadline.is_some() {
                    self.kill(i, out);
                }
            } else if p.phase != Phase::Draining {
                self.drain(now, i, out);
            }
        }
    }

    /// The rows of `status`, one per process and one per slot without a process.
    pub(crate) fn workers(&self, now: Instant) -> Vec<WorkerInfo> {
        let mut rows: Vec<WorkerInfo> = self
            .processes
            .iter()
            .map(|p| WorkerInfo {
                slot: p.slot,
                pid: p.pid,
                generation: p.generation,
                state: match p.phase {
                    Phase::Starting => Shown::Starting,
                    Phase::Ready => Shown::Ready,
                    Phase::Draining => Shown::Draining,
                },
                restarts: if p.generation == self.serving {
                    self.slots.get(p.slot as usize).map_or(0, |s| s.restarts)
                } else {
                    0
                },
                uptime_ms: now.saturating_duration_since(p.started).as_millis() as u64,
                status: p.status.clone(),
            })
            .collect();
        for (slot, s) in self.slots.iter().enumerate() {
            let (state, status) = match &s.down {
                None => continue,
                Some(Down::Backoff) => (
                    Shown::Backoff,
                    format!(
                        "restarting in {}",
                        human(
                            s.restart_at
                                .map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
                        )
                    ),
                ),
                Some(Down::Dead(why)) => (Shown::Dead, why.clone()),
                Some(Down::Stopped(why)) => (Shown::Stopped, why.clone()),
            };
            let running = self.processes.iter().any(|p| {
                p.generation == self.serving && p.slot == slot as u32 && p.phase != Phase::Draining
            });
            if running {
                continue;
            }
            rows.push(WorkerInfo {
                slot: slot as u32,
                pid: 0,
                generation: self.serving,
                state,
                restarts: s.restarts,
                uptime_ms: 0,
                status,
            });
        }
        rows.sort_by_key(|r| (r.generation, r.slot, r.pid));
        rows
    }

    /// Processes of the serving generation that are starting or ready.
    pub(crate) fn current_workers(&self) -> u32 {
        self.processes
            .iter()
            .filter(|p| p.generation == self.serving && p.phase != Phase::Draining)
            .count() as u32
    }

    /// The generation and slot of a running process.
    pub(crate) fn process(&self, pid: u32) -> Option<&Process> {
        self.processes.iter().find(|p| p.pid == pid)
    }
}

fn policy_name(p: RestartPolicy) -> &'static str {
    match p {
        RestartPolicy::OnFailure => "on-failure",
        RestartPolicy::Always => "always",
        RestartPolicy::Never => "never",
    }
}

/// `250ms`, `2s`, `1.5s`: the way durations are written on the command line.
pub(crate) fn human(d: Duration) -> String {
    if d.as_millis() < 1000 {
        format!("{}ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

pub(crate) mod roles;

#[cfg(test)]
mod tests;
