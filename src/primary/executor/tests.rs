//! The loop's decisions, with a fake executor that records every call and a fake clock: what
//! is started, when, and what each result leads to. No process is spawned here; the
//! integration tests run the same decisions against the real binary.

use std::time::Duration;

use reloadsup_protocol::Outcome;

use super::*;
use crate::config::{ReadyMode, RestartPolicy};
use crate::primary::state::roles::{REFILL_DELAY, REFILL_RETRY};
use crate::primary::state::{Settings, BACKOFF_MIN, SHORT_LIFE};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Spawn { generation: u64, slot: u32 },
    Signal { pid: u32, signal: i32 },
    Progress,
    ReloadDone,
    Exit,
    StartRole(Role),
    Terminate(Role),
    Refill,
}

struct Fake {
    base: Instant,
    now: Duration,
    state: State,
    roles: Roles,
    calls: Vec<Call>,
    queued: Vec<RoleAction>,
    next_pid: u32,
    /// Spares ready to take a worker.
    spares: u32,
    /// Roles whose start fails.
    broken: Vec<Role>,
    /// Whether the requesters of a reload asked for `restart`.
    restart: bool,
    refill_fails: bool,
}

impl Fake {
    fn new(shell: bool, logger: bool, prespawn: u32, workers: u32) -> Fake {
        let settings = Settings {
            ready: ReadyMode::Immediate,
            ready_timeout: Duration::from_secs(2),
            graceful_timeout: Duration::from_secs(5),
            stable_for: Duration::ZERO,
            restart: RestartPolicy::OnFailure,
            stop_signal: 15,
            canary: 0,
        };
        Fake {
            base: Instant::now(),
            now: Duration::ZERO,
            state: State::new(settings, workers),
            roles: Roles::new(shell, logger, prespawn),
            calls: Vec::new(),
            queued: Vec::new(),
            next_pid: 100,
            spares: 0,
            broken: Vec::new(),
            restart: false,
            refill_fails: false,
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.base + Duration::from_millis(ms)
    }

    fn set_ms(&mut self, ms: u64) {
        self.now = Duration::from_millis(ms);
    }

    /// One role event at the fake clock's time, its actions carried out.
    fn role(&mut self, event: RoleEvent) -> Option<u8> {
        let now = self.now();
        let actions = self.roles.handle(now, event);
        carry_out(self, actions, Vec::new())
    }

    /// One generation event at the fake clock's time, its actions carried out.
    fn event(&mut self, event: Event) -> Option<u8> {
        let now = self.now();
        let actions = self.state.handle(now, event);
        carry_out(self, Vec::new(), actions)
    }

    /// What the loop does when the poll times out: every due deadline becomes a tick.
    fn tick(&mut self) {
        let now = self.now();
        if self.roles.next_deadline().is_some_and(|t| t <= now) {
            self.role(RoleEvent::Tick);
        }
        if self.state.next_deadline().is_some_and(|t| t <= now) {
            self.event(Event::Tick);
        }
    }

    fn take_calls(&mut self) -> Vec<Call> {
        std::mem::take(&mut self.calls)
    }
}

impl Executor for Fake {
    fn now(&self) -> Instant {
        self.base + self.now
    }

    fn machines(&mut self) -> (&mut State, &mut Roles) {
        (&mut self.state, &mut self.roles)
    }

    fn take_role_actions(&mut self) -> Vec<RoleAction> {
        std::mem::take(&mut self.queued)
    }

    fn spawn(&mut self, generation: u64, slot: u32) -> Result<u32, String> {
        self.calls.push(Call::Spawn { generation, slot });
        if self.spares > 0 {
            self.spares -= 1;
            let now = self.now();
            let more = self.roles.handle(now, RoleEvent::SpareTaken);
            self.queued.extend(more);
        }
        self.next_pid += 1;
        Ok(self.next_pid)
    }

    fn signal(&mut self, pid: u32, signal: i32) {
        self.calls.push(Call::Signal { pid, signal });
    }

    fn progress(&mut self, _: Vec<Requester>, _: Progress) {
        self.calls.push(Call::Progress);
    }

    fn reload_done(&mut self, _: Vec<Requester>, _: ReloadOutcome) -> bool {
        self.calls.push(Call::ReloadDone);
        self.restart
    }

    fn exit(&mut self, _: Vec<Requester>) -> u8 {
        self.calls.push(Call::Exit);
        0
    }

    fn start_role(&mut self, role: Role) -> bool {
        self.calls.push(Call::StartRole(role));
        !self.broken.contains(&role)
    }

    fn terminate_role(&mut self, role: Role) {
        self.calls.push(Call::Terminate(role));
    }

    fn refill_spares(&mut self) -> bool {
        self.calls.push(Call::Refill);
        if self.refill_fails {
            return false;
        }
        self.spares = self.roles.prespawn;
        true
    }
}

#[test]
fn begin_starts_every_configured_role_keeper_first_and_nothing_else_is_pending() {
    let mut f = Fake::new(true, true, 0, 1);
    f.role(RoleEvent::Begin);
    assert_eq!(
        f.take_calls(),
        [
            Call::StartRole(Role::Keeper),
            Call::StartRole(Role::Logger),
            Call::StartRole(Role::Shell)
        ]
    );
    // No wake-ups at rest.
    assert_eq!(f.roles.next_deadline(), None);

    let mut f = Fake::new(false, false, 0, 1);
    f.role(RoleEvent::Begin);
    assert_eq!(f.take_calls(), [Call::StartRole(Role::Keeper)]);
    assert_eq!(f.roles.next_deadline(), None);
}

#[test]
fn shell_crash_backs_off_then_restarts_at_the_deadline() {
    let mut f = Fake::new(true, false, 0, 1);
    f.role(RoleEvent::Begin);
    f.take_calls();

    // Dies young: back-off 100 ms, then 200 ms.
    f.set_ms(1_000);
    f.role(RoleEvent::Exited(Role::Shell));
    assert!(
        f.take_calls().is_empty(),
        "not restarted before its back-off"
    );
    assert_eq!(f.roles.next_deadline(), Some(f.at(1_100)));
    f.set_ms(1_099);
    f.tick();
    assert!(f.take_calls().is_empty(), "early tick starts nothing");
    f.set_ms(1_100);
    f.tick();
    assert_eq!(f.take_calls(), [Call::StartRole(Role::Shell)]);
    assert_eq!(f.roles.next_deadline(), None);

    f.set_ms(1_500);
    f.role(RoleEvent::Exited(Role::Shell));
    assert_eq!(f.roles.next_deadline(), Some(f.at(1_700)));
    f.set_ms(1_700);
    f.tick();
    assert_eq!(f.take_calls(), [Call::StartRole(Role::Shell)]);

    // Lived a while: back at its shortest back-off.
    let healthy = 1_700 + SHORT_LIFE.as_millis() as u64;
    f.set_ms(healthy);
    f.role(RoleEvent::Exited(Role::Shell));
    assert_eq!(
        f.roles.next_deadline(),
        Some(f.at(healthy) + BACKOFF_MIN),
        "back-off starts over after a healthy run"
    );
}

#[test]
fn a_role_that_cannot_start_is_tried_again_with_doubling_back_off() {
    let mut f = Fake::new(false, true, 0, 1);
    f.broken = vec![Role::Logger];
    f.role(RoleEvent::Begin);
    assert_eq!(
        f.take_calls(),
        [Call::StartRole(Role::Keeper), Call::StartRole(Role::Logger)]
    );
    assert_eq!(f.roles.next_deadline(), Some(f.at(100)));
    f.set_ms(100);
    f.tick();
    assert_eq!(f.take_calls(), [Call::StartRole(Role::Logger)]);
    assert_eq!(f.roles.next_deadline(), Some(f.at(300)));
    f.broken.clear();
    f.set_ms(300);
    f.tick();
    assert_eq!(f.take_calls(), [Call::StartRole(Role::Logger)]);
    assert_eq!(f.roles.next_deadline(), None);
}

#[test]
fn spare_taken_schedules_one_refill_never_two() {
    let mut f = Fake::new(false, false, 2, 2);
    f.role(RoleEvent::Begin);
    assert_eq!(f.take_calls(), [Call::StartRole(Role::Keeper)]);
    // The spares are started a little after the start, not with it.
    assert_eq!(f.roles.next_deadline(), Some(f.at(200)));
    f.set_ms(200);
    f.tick();
    assert_eq!(f.take_calls(), [Call::Refill]);
    assert_eq!(f.spares, 2);
    assert_eq!(f.roles.next_deadline(), None);

    // Both workers of the first generation take a spare: one refill, after the delay.
    f.set_ms(1_000);
    f.event(Event::Start);
    assert_eq!(
        f.take_calls(),
        [
            Call::Spawn {
                generation: 1,
                slot: 0
            },
            Call::Spawn {
                generation: 1,
                slot: 1
            }
        ]
    );
    assert_eq!(f.spares, 0);
    assert_eq!(f.roles.next_deadline(), Some(f.at(1_000) + REFILL_DELAY));
    // Another spare used meanwhile does not push the refill back (nor add one).
    f.set_ms(1_100);
    f.role(RoleEvent::SpareTaken);
    assert_eq!(f.roles.next_deadline(), Some(f.at(1_000) + REFILL_DELAY));
    f.set_ms(1_200);
    f.tick();
    assert_eq!(f.take_calls(), [Call::Refill]);
    f.set_ms(5_000);
    f.tick();
    assert!(f.take_calls().is_empty(), "a refill is never done twice");
    assert_eq!(f.roles.next_deadline(), None);
}

#[test]
fn a_failed_refill_or_a_dead_spare_retries_after_a_second_but_not_once_shut_down() {
    let mut f = Fake::new(false, false, 1, 1);
    f.refill_fails = true;
    f.role(RoleEvent::Begin);
    f.set_ms(200);
    f.tick();
    assert_eq!(
        f.take_calls(),
        [Call::StartRole(Role::Keeper), Call::Refill]
    );
    assert_eq!(f.roles.next_deadline(), Some(f.at(200) + REFILL_RETRY));
    f.refill_fails = false;
    f.set_ms(1_200);
    f.tick();
    assert_eq!(f.take_calls(), [Call::Refill]);

    f.set_ms(2_000);
    f.role(RoleEvent::SpareDied);
    assert_eq!(f.roles.next_deadline(), Some(f.at(3_000)));

    f.role(RoleEvent::Shutdown);
    assert_eq!(f.roles.next_deadline(), None);
    f.role(RoleEvent::SpareDied);
    f.role(RoleEvent::SpareTaken);
    f.role(RoleEvent::Prespawn(3));
    assert_eq!(f.roles.next_deadline(), None, "no spare after a shutdown");
    f.set_ms(10_000);
    f.tick();
    assert!(f.take_calls().is_empty());
}

#[test]
fn a_restart_replaces_the_running_shell_at_once_and_resets_its_back_off() {
    let mut f = Fake::new(true, false, 0, 1);
    f.restart = true;
    f.role(RoleEvent::Begin);
    f.take_calls();
    // A young crash raised the back-off first.
    f.set_ms(100);
    f.role(RoleEvent::Exited(Role::Shell));
    f.set_ms(200);
    f.tick();
    f.take_calls();

    let outcome = ReloadOutcome {
        generation: 2,
        outcome: Outcome::Succeeded,
        reason: String::new(),
    };
    carry_out(
        &mut f,
        Vec::new(),
        vec![Action::ReloadDone {
            waiters: vec![7],
            outcome,
        }],
    );
    assert_eq!(
        f.take_calls(),
        [Call::ReloadDone, Call::Terminate(Role::Shell)],
        "the reply first, then the shell is asked to go"
    );
    f.set_ms(300);
    f.role(RoleEvent::Exited(Role::Shell));
    assert_eq!(
        f.take_calls(),
        [Call::StartRole(Role::Shell)],
        "a replaced shell is back at once"
    );
    f.set_ms(400);
    f.role(RoleEvent::Exited(Role::Shell));
    assert_eq!(
        f.roles.next_deadline(),
        Some(f.at(400) + BACKOFF_MIN),
        "its back-off was reset"
    );
    // Waiting out a back-off: a replacement starts now instead of terminating anything.
    f.role(RoleEvent::Replace(Role::Shell));
    assert_eq!(f.take_calls(), [Call::StartRole(Role::Shell)]);
    assert_eq!(f.roles.next_deadline(), None);
}

#[test]
fn a_stopped_role_is_never_started_again() {
    let mut f = Fake::new(true, false, 0, 1);
    f.role(RoleEvent::Begin);
    f.take_calls();
    f.set_ms(100);
    f.role(RoleEvent::Exited(Role::Shell));
    assert!(f.roles.next_deadline().is_some());
    f.role(RoleEvent::Stop(Role::Shell));
    assert_eq!(
        f.roles.next_deadline(),
        None,
        "its pending restart is cancelled"
    );
    f.role(RoleEvent::Replace(Role::Shell));
    f.role(RoleEvent::Exited(Role::Shell));
    f.set_ms(60_000);
    f.tick();
    assert!(f.take_calls().is_empty());
}

#[test]
fn spawn_results_are_fed_back_and_exit_ends_the_turn() {
    let mut f = Fake::new(false, false, 0, 2);
    f.event(Event::Start);
    assert_eq!(
        f.take_calls(),
        [
            Call::Spawn {
                generation: 1,
                slot: 0
            },
            Call::Spawn {
                generation: 1,
                slot: 1
            }
        ]
    );
    assert!(f.state.process(101).is_some() && f.state.process(102).is_some());
    // Ready at once (`--ready immediate`): what the spawns led to was carried out too.
    assert_eq!(f.state.serving, 1);
    assert_eq!(f.state.current_workers(), 2);

    // A fast shutdown SIGKILLs both; once they are reaped the primary exits, and nothing of
    // the turn after `Exit` is carried out.
    f.event(Event::Shutdown {
        graceful: false,
        requester: None,
    });
    let calls = f.take_calls();
    assert!(calls.contains(&Call::Signal {
        pid: 101,
        signal: 9
    }));
    assert!(calls.contains(&Call::Signal {
        pid: 102,
        signal: 9
    }));
    let exit = |pid| Event::Exited {
        pid,
        exit: crate::primary::state::Exit::Signal(9),
    };
    assert_eq!(f.event(exit(101)), None);
    let now = f.now();
    let actions = f.state.handle(now, exit(102));
    let code = carry_out(&mut f, vec![RoleAction::Terminate(Role::Shell)], actions);
    assert_eq!(code, Some(0));
    assert_eq!(f.take_calls(), [Call::Terminate(Role::Shell), Call::Exit]);
}

#[test]
fn a_metrics_worker_starts_last_and_backs_off_when_it_dies_young() {
    let mut f = Fake::new(true, false, 0, 1);
    f.roles.metrics = Some(crate::primary::state::roles::RoleTimer::new());
    f.role(RoleEvent::Begin);
    assert_eq!(
        f.take_calls(),
        [
            Call::StartRole(Role::Keeper),
            Call::StartRole(Role::Shell),
            Call::StartRole(Role::Metrics)
        ]
    );
    assert_eq!(f.roles.next_deadline(), None);
    f.set_ms(1_000);
    f.role(RoleEvent::Exited(Role::Metrics));
    assert!(f.take_calls().is_empty(), "not before its back-off");
    assert_eq!(f.roles.next_deadline(), Some(f.at(1_100)));
    f.set_ms(1_100);
    f.tick();
    assert_eq!(f.take_calls(), [Call::StartRole(Role::Metrics)]);
    f.set_ms(1_200);
    f.role(RoleEvent::Stop(Role::Metrics));
    f.role(RoleEvent::Exited(Role::Metrics));
    assert_eq!(
        f.roles.next_deadline(),
        None,
        "a stopped worker stays stopped"
    );
}
