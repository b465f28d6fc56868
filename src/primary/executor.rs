//! How the loop carries out what its state decided: the [`Executor`] trait, implemented by the
//! real primary (processes, signals, sockets) and in the unit tests by a fake that records the
//! calls, and [`carry_out`], which runs the actions of a turn in order and feeds each result
//! (a spawned pid, a failure) back to the state that asked for it.
//!
//! Nothing here makes a syscall itself; what it decides is what the unit tests below check.

use std::collections::VecDeque;
use std::time::Instant;

use reloadsup_protocol::{Progress, ReloadOutcome};

use super::state::roles::{Role, RoleAction, RoleEvent, Roles};
use super::state::{Action, Event, Requester, State};

/// What the loop's state asks the world to do.
pub(crate) trait Executor {
    fn now(&self) -> Instant;
    /// The two state machines the results are fed back to.
    fn machines(&mut self) -> (&mut State, &mut Roles);
    /// Role actions that came up while the executor was at work (a spare was taken during a
    /// spawn, a role was reaped): carried out in the same turn.
    fn take_role_actions(&mut self) -> Vec<RoleAction>;

    /// Starts worker `slot` of `generation` (in a spare or a new role process) and sends it
    /// its spec; its pid, or why not.
    fn spawn(&mut self, generation: u64, slot: u32) -> Result<u32, String>;
    /// Signals a worker's process group.
    fn signal(&mut self, pid: u32, signal: i32);
    fn progress(&mut self, waiters: Vec<Requester>, progress: Progress);
    /// Answers a reload's requesters; true if one of them asked for `restart`, whose shell
    /// worker is then replaced.
    fn reload_done(&mut self, waiters: Vec<Requester>, outcome: ReloadOutcome) -> bool;
    /// Every worker is gone after a shutdown: answers `waiters`, cleans up; the exit code.
    fn exit(&mut self, waiters: Vec<Requester>) -> u8;

    /// Spawns a role's process; false if it could not (logged).
    fn start_role(&mut self, role: Role) -> bool;
    /// SIGTERM to a role's process group.
    fn terminate_role(&mut self, role: Role);
    /// Starts spares up to `--prespawn`; false if one could not be started (logged).
    fn refill_spares(&mut self) -> bool;
}

enum Step {
    Role(RoleAction),
    State(Action),
}

/// Carries out a turn's actions, the roles' first (as the loop always did: a due role is
/// started before the turn's workers), feeding results back. `Some(code)` once the primary
/// is done.
pub(crate) fn carry_out<E: Executor>(
    exec: &mut E,
    roles: Vec<RoleAction>,
    actions: Vec<Action>,
) -> Option<u8> {
    let mut queue: VecDeque<Step> = roles
        .into_iter()
        .map(Step::Role)
        .chain(actions.into_iter().map(Step::State))
        .collect();
    queue.extend(exec.take_role_actions().into_iter().map(Step::Role));
    while let Some(step) = queue.pop_front() {
        match step {
            Step::State(Action::Spawn { generation, slot }) => {
                let event = match exec.spawn(generation, slot) {
                    Ok(pid) => Event::Spawned {
                        generation,
                        slot,
                        pid,
                    },
                    Err(reason) => Event::SpawnFailed {
                        generation,
                        slot,
                        reason,
                    },
                };
                let now = exec.now();
                let more = exec.machines().0.handle(now, event);
                queue.extend(more.into_iter().map(Step::State));
            }
            Step::State(Action::Signal { pid, signal }) => exec.signal(pid, signal),
            Step::State(Action::Progress { waiters, progress }) => exec.progress(waiters, progress),
            Step::State(Action::ReloadDone { waiters, outcome }) => {
                // A restart replaces the shell worker whatever became of the reload, and only
                // after its reply is queued, so the console can show the outcome.
                if exec.reload_done(waiters, outcome) {
                    log::info!("restart: replacing the shell worker");
                    role_event(exec, RoleEvent::Replace(Role::Shell), &mut queue);
                }
            }
            Step::State(Action::Exit { waiters }) => return Some(exec.exit(waiters)),
            Step::Role(RoleAction::Start(role)) => {
                let event = if exec.start_role(role) {
                    RoleEvent::Started(role)
                } else {
                    RoleEvent::StartFailed(role)
                };
                role_event(exec, event, &mut queue);
            }
            Step::Role(RoleAction::Terminate(role)) => exec.terminate_role(role),
            Step::Role(RoleAction::RefillSpares) => {
                if !exec.refill_spares() {
                    role_event(exec, RoleEvent::RefillFailed, &mut queue);
                }
            }
        }
        queue.extend(exec.take_role_actions().into_iter().map(Step::Role));
    }
    None
}

fn role_event<E: Executor>(exec: &mut E, event: RoleEvent, queue: &mut VecDeque<Step>) {
    let now = exec.now();
    let more = exec.machines().1.handle(now, event);
    queue.extend(more.into_iter().map(Step::Role));
}

#[cfg(test)]
mod tests;
