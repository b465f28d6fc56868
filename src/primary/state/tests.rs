use super::*;

const T0: Duration = Duration::ZERO;

fn settings(ready: ReadyMode) -> Settings {
    Settings {
        ready,
        ready_timeout: Duration::from_secs(2),
        graceful_timeout: Duration::from_secs(5),
        stable_for: Duration::ZERO,
        restart: RestartPolicy::OnFailure,
        stop_signal: 15,
        canary: 0,
    }
}

/// A state machine plus a fake clock and a fake pid allocator that "spawns" every Spawn
/// action at once, the way the event loop does.
struct Harness {
    state: State,
    base: Instant,
    now: Duration,
    next_pid: u32,
    log: Vec<Action>,
}

impl Harness {
    fn new(ready: ReadyMode, workers: u32) -> Harness {
        let mut h = Harness {
            state: State::new(settings(ready), workers),
            base: Instant::now(),
            now: T0,
            next_pid: 100,
            log: Vec::new(),
        };
        h.feed(Event::Start);
        h
    }

    fn at(&self) -> Instant {
        self.base + self.now
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.feed(Event::Tick);
    }

    fn feed(&mut self, event: Event) -> Vec<Action> {
        let mut queue: std::collections::VecDeque<Action> =
            self.state.handle(self.at(), event).into();
        let mut done = Vec::new();
        while let Some(a) = queue.pop_front() {
            if let Action::Spawn { generation, slot } = a {
                let pid = self.next_pid;
                self.next_pid += 1;
                queue.extend(self.state.handle(
                    self.at(),
                    Event::Spawned {
                        generation,
                        slot,
                        pid,
                    },
                ));
            }
            done.push(a);
        }
        self.log.extend(done.clone());
        done
    }

    fn pids(&self, generation: u64) -> Vec<u32> {
        self.state
            .processes
            .iter()
            .filter(|p| p.generation == generation && p.phase != Phase::Draining)
            .map(|p| p.pid)
            .collect()
    }

    fn ready(&mut self, pid: u32) -> Vec<Action> {
        self.feed(Event::Notify {
            pid,
            ready: true,
            status: None,
        })
    }

    fn ready_all(&mut self, generation: u64) {
        for pid in self.pids(generation) {
            self.ready(pid);
        }
    }

    fn outcome(actions: &[Action]) -> Option<ReloadOutcome> {
        actions.iter().find_map(|a| match a {
            Action::ReloadDone { outcome, .. } => Some(outcome.clone()),
            _ => None,
        })
    }
}

#[test]
fn reload_commits_only_when_every_new_worker_is_ready() {
    let mut h = Harness::new(ReadyMode::Notify, 3);
    h.ready_all(1);
    let old = h.pids(1);
    h.feed(Event::Reload(7));
    let new = h.pids(2);
    assert_eq!(new.len(), 3);
    // Two of three ready: the old generation is untouched.
    for &pid in &new[..2] {
        let acts = h.feed(Event::Notify {
            pid,
            ready: true,
            status: None,
        });
        assert!(!acts.iter().any(|a| matches!(a, Action::Signal { .. })));
    }
    let acts = h.ready(new[2]);
    let signalled: Vec<u32> = acts
        .iter()
        .filter_map(|a| match a {
            Action::Signal { pid, signal: 15 } => Some(*pid),
            _ => None,
        })
        .collect();
    assert_eq!(signalled, old, "the old generation gets the stop signal");
    let outcome = Harness::outcome(&acts).unwrap();
    assert_eq!(
        (outcome.generation, outcome.outcome),
        (2, Outcome::Succeeded)
    );
    assert_eq!(h.state.serving, 2);
}

#[test]
fn worker_exit_during_start_rolls_back_and_old_keeps_serving() {
    let mut h = Harness::new(ReadyMode::Notify, 2);
    h.ready_all(1);
    let old = h.pids(1);
    h.feed(Event::Reload(1));
    let new = h.pids(2);
    let acts = h.feed(Event::Exited {
        pid: new[0],
        exit: Exit::Code(1),
    });
    let outcome = Harness::outcome(&acts).unwrap();
    assert_eq!(outcome.outcome, Outcome::RolledBack);
    assert!(
        outcome.reason.contains("exited with status 1"),
        "{}",
        outcome.reason
    );
    assert!(acts.contains(&Action::Signal {
        pid: new[1],
        signal: SIGKILL
    }));
    assert!(!acts
        .iter()
        .any(|a| matches!(a, Action::Signal { pid, .. } if old.contains(pid))));
    assert_eq!(h.state.serving, 1);
    assert_eq!(h.pids(1), old);
    // The killed worker is reaped without effect.
    let acts = h.feed(Event::Exited {
        pid: new[1],
        exit: Exit::Signal(9),
    });
    assert!(acts.is_empty());
}

#[test]
fn setup_failure_during_start_rolls_back_with_its_reason() {
    let mut h = Harness::new(ReadyMode::Notify, 1);
    h.ready_all(1);
    h.feed(Event::Reload(1));
    let new = h.pids(2);
    let acts = h.feed(Event::Exited {
        pid: new[0],
        exit: Exit::Setup("unable to switch to uid 65534: operation not permitted".into()),
    });
    let outcome = Harness::outcome(&acts).unwrap();
    assert_eq!(outcome.outcome, Outcome::RolledBack);
    assert_eq!(
        outcome.reason,
        format!(
            "worker 0 (pid {}) could not start: unable to switch to uid 65534: operation not permitted",
            new[0]
        )
    );
    assert_eq!(h.state.serving, 1);
}

#[test]
fn ready_timeout_rolls_back() {
    let mut h = Harness::new(ReadyMode::Notify, 1);
    h.ready_all(1);
    h.feed(Event::Reload(1));
    h.advance(Duration::from_millis(1999));
    assert!(Harness::outcome(&h.log).is_none());
    h.advance(Duration::from_millis(2));
    let outcome = Harness::outcome(&h.log).unwrap();
    assert_eq!(outcome.outcome, Outcome::RolledBack);
    assert!(
        outcome.reason.contains("not ready within 2s"),
        "{}",
        outcome.reason
    );
}

#[test]
fn reloads_during_start_are_coalesced_into_one() {
    let mut h = Harness::new(ReadyMode::Notify, 1);
    h.ready_all(1);
    h.feed(Event::Reload(1));
    h.feed(Event::Reload(2));
    h.feed(Event::Reload(3));
    assert_eq!(
        h.state.next_generation, 3,
        "only generation 2 started so far"
    );
    h.ready_all(2);
    assert_eq!(h.state.serving, 2);
    assert_eq!(
        h.state.starting.as_ref().map(|s| s.waiters.clone()),
        Some(vec![2, 3])
    );
    h.ready_all(3);
    assert_eq!(h.state.serving, 3);
    assert_eq!(
        h.state.next_generation, 4,
        "three requests, two generations"
    );
}

#[test]
fn delay_mode_and_immediate_mode() {
    let mut h = Harness::new(ReadyMode::Delay(Duration::from_millis(300)), 2);
    h.feed(Event::Reload(1));
    h.advance(Duration::from_millis(299));
    assert_eq!(h.state.serving, 1);
    h.advance(Duration::from_millis(1));
    assert_eq!(h.state.serving, 2);

    let mut h = Harness::new(ReadyMode::Immediate, 2);
    h.feed(Event::Reload(1));
    assert_eq!(h.state.serving, 2);
}

#[test]
fn draining_worker_is_killed_after_graceful_timeout() {
    let mut h = Harness::new(ReadyMode::Immediate, 1);
    let old = h.pids(1)[0];
    h.feed(Event::Reload(1));
    assert_eq!(
        h.state.next_deadline(),
        Some(h.at() + Duration::from_secs(5)),
        "the poll timeout is the graceful deadline"
    );
    h.log.clear();
    // A deadline of "now" (or anything short of --graceful-timeout) would kill it here.
    h.advance(Duration::from_millis(4999));
    assert!(!h.log.iter().any(is_sigkill), "killed early: {:?}", h.log);
    h.advance(Duration::from_millis(1));
    assert!(h.log.contains(&Action::Signal {
        pid: old,
        signal: SIGKILL
    }));
    assert_eq!(h.state.next_deadline(), None, "no timer left once killed");
}

fn is_sigkill(a: &Action) -> bool {
    matches!(
        a,
        Action::Signal {
            signal: SIGKILL,
            ..
        }
    )
}

#[test]
fn crash_backoff_doubles_and_slot_dies_after_five() {
    let mut h = Harness::new(ReadyMode::Immediate, 1);
    let mut gaps = Vec::new();
    for _ in 0..5 {
        let pid = h.pids(1)[0];
        h.now += Duration::from_millis(10);
        h.feed(Event::Exited {
            pid,
            exit: Exit::Code(1),
        });
        if let Some(t) = h.state.slots[0].restart_at {
            gaps.push(t - h.at());
            h.now += t - h.at();
            h.feed(Event::Tick);
        }
    }
    assert_eq!(
        gaps,
        vec![
            Duration::from_millis(100),
            Duration::from_millis(200),
            Duration::from_millis(400),
            Duration::from_millis(800)
        ]
    );
    assert!(matches!(h.state.slots[0].down, Some(Down::Dead(_))));
    assert_eq!(h.state.dead_slots(), 1);
    assert!(h.pids(1).is_empty());
    assert_eq!(h.state.next_deadline(), None, "a dead slot has no timer");
    h.feed(Event::Revive);
    assert_eq!(h.pids(1).len(), 1);
    assert_eq!(h.state.dead_slots(), 0);
}

impl Harness {
    /// Lets the slot-0 worker of generation 1 live for `lived`, crash, and be restarted when its
    /// back-off is due; returns the back-off, or `None` when the slot was not restarted.
    fn crash_after(&mut self, lived: Duration) -> Option<Duration> {
        let pid = self.pids(1)[0];
        self.now += lived;
        self.feed(Event::Exited {
            pid,
            exit: Exit::Code(1),
        });
        let t = self.state.slots[0].restart_at?;
        let gap = t - self.at();
        self.now += gap;
        self.feed(Event::Tick);
        Some(gap)
    }
}

#[test]
fn backoff_resets_after_thirty_seconds_of_health() {
    let ms = Duration::from_millis;
    let mut h = Harness::new(ReadyMode::Immediate, 1);
    assert_eq!(h.crash_after(ms(10)), Some(ms(100)));
    assert_eq!(h.crash_after(ms(10)), Some(ms(200)));
    assert_eq!(h.crash_after(ms(10)), Some(ms(400)));
    // Just short of 30 s of health: the back-off keeps growing.
    assert_eq!(h.crash_after(ms(29_999)), Some(ms(800)));
    // 30 s of health: back to the minimum, and doubling again from there.
    assert_eq!(h.crash_after(Duration::from_secs(30)), Some(ms(100)));
    assert_eq!(h.crash_after(ms(10)), Some(ms(200)));
}

#[test]
fn backoff_is_capped_at_thirty_seconds() {
    let mut h = Harness::new(ReadyMode::Immediate, 1);
    // Each crash after 20 s: long enough not to count towards a dead slot, too short to reset.
    let gaps: Vec<_> = (0..12)
        .map(|_| h.crash_after(Duration::from_secs(20)))
        .collect();
    assert_eq!(gaps[8], Some(Duration::from_millis(25_600)));
    assert_eq!(gaps[9..], [Some(BACKOFF_MAX); 3]);
}

#[test]
fn a_long_life_starts_the_crash_streak_over() {
    let ms = Duration::from_millis;
    let mut h = Harness::new(ReadyMode::Immediate, 1);
    for _ in 0..4 {
        assert!(h.crash_after(ms(10)).is_some());
    }
    // Lived 10 s: not a short crash, so five more short ones are needed for a dead slot.
    assert!(h.crash_after(Duration::from_secs(10)).is_some());
    for i in 0..4 {
        assert!(
            h.crash_after(ms(10)).is_some(),
            "dead after {} short crashes",
            i + 1
        );
    }
    assert_eq!(h.crash_after(ms(10)), None);
    assert!(matches!(h.state.slots[0].down, Some(Down::Dead(_))));
}

#[test]
fn clean_exit_is_not_restarted_under_on_failure() {
    let mut h = Harness::new(ReadyMode::Immediate, 1);
    let pid = h.pids(1)[0];
    h.feed(Event::Exited {
        pid,
        exit: Exit::Code(0),
    });
    assert!(matches!(h.state.slots[0].down, Some(Down::Stopped(_))));
}

#[test]
fn scale_up_and_down() {
    let mut h = Harness::new(ReadyMode::Immediate, 1);
    h.feed(Event::Scale(4));
    assert_eq!(h.pids(1).len(), 4);
    let acts = h.feed(Event::Scale(2));
    let stopped = acts
        .iter()
        .filter(|a| matches!(a, Action::Signal { signal: 15, .. }))
        .count();
    assert_eq!(stopped, 2);
    assert_eq!(h.state.current_workers(), 2);
    assert!(h
        .pids(1)
        .iter()
        .all(|&pid| h.state.process(pid).is_some_and(|p| p.slot < 2)));
}

#[test]
fn scale_down_during_start_can_complete_the_reload() {
    let mut h = Harness::new(ReadyMode::Notify, 2);
    h.ready_all(1);
    h.feed(Event::Reload(1));
    let new = h.pids(2);
    h.ready(new[0]);
    let acts = h.feed(Event::Scale(1));
    assert_eq!(
        Harness::outcome(&acts).map(|o| o.outcome),
        Some(Outcome::Succeeded)
    );
}

#[test]
fn graceful_shutdown_exits_when_every_worker_is_reaped() {
    let mut h = Harness::new(ReadyMode::Immediate, 2);
    let pids = h.pids(1);
    let acts = h.feed(Event::Shutdown {
        graceful: true,
        requester: Some(9),
    });
    assert_eq!(
        acts.iter()
            .filter(|a| matches!(a, Action::Signal { signal: 15, .. }))
            .count(),
        2
    );
    h.feed(Event::Exited {
        pid: pids[0],
        exit: Exit::Code(0),
    });
    let acts = h.feed(Event::Exited {
        pid: pids[1],
        exit: Exit::Code(0),
    });
    assert_eq!(acts, vec![Action::Exit { waiters: vec![9] }]);
}

#[test]
fn worker_crash_during_shutdown_is_not_restarted() {
    let mut h = Harness::new(ReadyMode::Immediate, 2);
    let pids = h.pids(1);
    h.feed(Event::Shutdown {
        graceful: true,
        requester: None,
    });
    h.feed(Event::Exited {
        pid: pids[0],
        exit: Exit::Code(1),
    });
    assert_eq!(h.state.slots[0].restart_at, None, "no back-off restart");
    assert_eq!(h.state.slots[0].down, None, "the slot is not marked down");
    h.log.clear();
    h.advance(Duration::from_secs(1));
    assert!(
        !h.log.iter().any(|a| matches!(a, Action::Spawn { .. })),
        "{:?}",
        h.log
    );
    let acts = h.feed(Event::Exited {
        pid: pids[1],
        exit: Exit::Code(0),
    });
    assert_eq!(acts, vec![Action::Exit { waiters: vec![] }]);
}

#[test]
fn shutdown_cancels_a_starting_generation() {
    let mut h = Harness::new(ReadyMode::Notify, 1);
    h.feed(Event::Reload(4));
    let acts = h.feed(Event::Shutdown {
        graceful: false,
        requester: None,
    });
    assert_eq!(
        Harness::outcome(&acts).map(|o| o.outcome),
        Some(Outcome::Cancelled)
    );
    assert!(
        acts.iter()
            .filter(|a| matches!(
                a,
                Action::Signal {
                    signal: SIGKILL,
                    ..
                }
            ))
            .count()
            == 2
    );
}

#[test]
fn spawn_for_a_rolled_back_generation_is_killed() {
    let mut h = Harness::new(ReadyMode::Notify, 2);
    h.ready_all(1);
    h.state.handle(h.at(), Event::Reload(1));
    h.state.handle(
        h.at(),
        Event::SpawnFailed {
            generation: 2,
            slot: 0,
            reason: "no".into(),
        },
    );
    let acts = h.state.handle(
        h.at(),
        Event::Spawned {
            generation: 2,
            slot: 1,
            pid: 999,
        },
    );
    assert_eq!(
        acts,
        vec![Action::Signal {
            pid: 999,
            signal: SIGKILL
        }]
    );
}

#[test]
fn first_generation_failures_back_off_instead_of_rolling_back() {
    let mut h = Harness::new(ReadyMode::Notify, 1);
    let pid = h.pids(1)[0];
    let acts = h.feed(Event::Exited {
        pid,
        exit: Exit::Code(1),
    });
    assert!(Harness::outcome(&acts).is_none());
    assert!(matches!(h.state.slots[0].down, Some(Down::Backoff)));
}

#[test]
fn first_generation_worker_not_ready_in_time_is_killed_and_restarted() {
    let mut h = Harness::new(ReadyMode::Notify, 1);
    let pid = h.pids(1)[0];
    h.advance(Duration::from_millis(1999));
    assert!(!h.log.iter().any(is_sigkill), "killed early: {:?}", h.log);
    h.advance(Duration::from_millis(1));
    assert!(h.log.contains(&Action::Signal {
        pid,
        signal: SIGKILL
    }));
    h.feed(Event::Exited {
        pid,
        exit: Exit::Signal(9),
    });
    assert!(matches!(h.state.slots[0].down, Some(Down::Backoff)));
}

#[test]
fn status_rows_show_dead_slots() {
    let mut h = Harness::new(ReadyMode::Immediate, 2);
    h.state.slots[1].down = Some(Down::Dead("5 crashes".into()));
    let pid = h.pids(1)[1];
    h.state.processes.retain(|p| p.pid != pid);
    let rows = h.state.workers(h.at());
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].state, Shown::Dead);
    assert_eq!(rows[1].pid, 0);
}

#[test]
fn rollback_drains_ready_new_workers_and_kills_the_rest() {
    let mut h = Harness::new(ReadyMode::Notify, 3);
    h.ready_all(1);
    h.feed(Event::Reload(1));
    let new = h.pids(2);
    h.ready(new[0]);
    let acts = h.feed(Event::Exited {
        pid: new[1],
        exit: Exit::Code(2),
    });
    assert!(
        acts.contains(&Action::Signal {
            pid: new[0],
            signal: 15
        }),
        "a ready one drains: {acts:?}"
    );
    assert!(
        acts.contains(&Action::Signal {
            pid: new[2],
            signal: SIGKILL
        }),
        "a starting one is killed: {acts:?}"
    );
    // The drained one gets SIGKILL only after the graceful timeout.
    h.log.clear();
    h.advance(Duration::from_millis(4999));
    assert!(!h.log.iter().any(is_sigkill), "killed early: {:?}", h.log);
    h.advance(Duration::from_millis(1));
    assert!(h.log.contains(&Action::Signal {
        pid: new[0],
        signal: SIGKILL
    }));
}

#[test]
fn listening_mode_commits_when_every_new_worker_is_seen_listening() {
    let mut h = Harness::new(ReadyMode::Listening, 2);
    for pid in h.pids(1) {
        h.feed(Event::Listening { pid });
    }
    assert!(h.state.first_ready);
    h.feed(Event::Reload(1));
    let new = h.pids(2);
    // Time alone makes nobody ready in this mode.
    h.advance(Duration::from_millis(1500));
    assert_eq!(h.state.serving, 1);
    h.feed(Event::Listening { pid: new[0] });
    assert_eq!(h.state.serving, 1, "one of two listening is not enough");
    // Seen again (the scan runs until every worker is ready): no double count.
    h.feed(Event::Listening { pid: new[0] });
    assert_eq!(h.state.serving, 1);
    let acts = h.feed(Event::Listening { pid: new[1] });
    assert_eq!(
        Harness::outcome(&acts).map(|o| o.outcome),
        Some(Outcome::Succeeded)
    );
    assert_eq!(h.state.serving, 2);
}

#[test]
fn listening_mode_worker_never_listening_is_rolled_back_at_the_ready_timeout() {
    let mut h = Harness::new(ReadyMode::Listening, 1);
    for pid in h.pids(1) {
        h.feed(Event::Listening { pid });
    }
    h.feed(Event::Reload(1));
    h.advance(Duration::from_millis(2001));
    let outcome = Harness::outcome(&h.log).unwrap();
    assert_eq!(outcome.outcome, Outcome::RolledBack);
    assert!(
        outcome.reason.contains("not ready within 2s"),
        "{}",
        outcome.reason
    );
    assert_eq!(h.state.serving, 1);
}

#[test]
fn listening_event_in_another_mode_is_ignored() {
    let mut h = Harness::new(ReadyMode::Notify, 1);
    h.ready_all(1);
    h.feed(Event::Reload(1));
    let new = h.pids(2);
    h.feed(Event::Listening { pid: new[0] });
    assert_eq!(h.state.serving, 1);
    // And an unknown pid changes nothing.
    h.feed(Event::Listening { pid: 1 });
    assert_eq!(h.state.serving, 1);
}

fn stable(workers: u32, window: Duration) -> Harness {
    let mut h = Harness::new(ReadyMode::Notify, workers);
    h.state.settings.stable_for = window;
    h.ready_all(1);
    h
}

fn stop_signals(actions: &[Action]) -> Vec<u32> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Signal { pid, .. } => Some(*pid),
            _ => None,
        })
        .collect()
}

#[test]
fn stability_window_keeps_the_old_generation_serving_until_it_ends() {
    let mut h = stable(2, Duration::from_secs(3));
    let old = h.pids(1);
    h.feed(Event::Reload(7));
    h.ready_all(2);
    assert!(stop_signals(&h.log).is_empty(), "{:?}", h.log);
    assert!(Harness::outcome(&h.log).is_none());
    assert_eq!(h.state.serving, 1);
    // The window's end is the only deadline: one wake-up, none before.
    assert_eq!(
        h.state.next_deadline(),
        Some(h.at() + Duration::from_secs(3))
    );
    h.advance(Duration::from_millis(2999));
    assert!(stop_signals(&h.log).is_empty());
    assert_eq!(h.pids(1), old);
    h.advance(Duration::from_millis(1));
    assert_eq!(
        stop_signals(&h.log),
        old,
        "the old generation drains after the window"
    );
    let outcome = Harness::outcome(&h.log).unwrap();
    assert_eq!(
        (outcome.generation, outcome.outcome, outcome.reason.as_str()),
        (2, Outcome::Succeeded, "stable for 3s")
    );
    assert_eq!(h.state.serving, 2);
    // Only the graceful timeouts of the draining workers remain.
    assert_eq!(
        h.state.next_deadline(),
        Some(h.at() + Duration::from_secs(5))
    );
    assert!(h
        .state
        .processes
        .iter()
        .all(|p| p.phase != Phase::Ready || p.deadline.is_none()));
}

#[test]
fn worker_exit_in_the_stability_window_rolls_back_at_once() {
    let mut h = stable(2, Duration::from_secs(3));
    let old = h.pids(1);
    h.feed(Event::Reload(7));
    let new = h.pids(2);
    h.ready_all(2);
    h.advance(Duration::from_millis(1000));
    let acts = h.feed(Event::Exited {
        pid: new[1],
        exit: Exit::Code(1),
    });
    let outcome = Harness::outcome(&acts).unwrap();
    assert_eq!(outcome.outcome, Outcome::RolledBack);
    assert_eq!(
        outcome.reason,
        format!(
            "1.0 s into the stability window: worker 1 (pid {}) exited with status 1",
            new[1]
        )
    );
    // The surviving new worker drains; the old generation is never signalled.
    assert_eq!(stop_signals(&acts), vec![new[0]]);
    assert!(acts.contains(&Action::Signal {
        pid: new[0],
        signal: 15
    }));
    assert_eq!(h.state.serving, 1);
    assert_eq!(h.pids(1), old);
    assert!(h.state.starting.is_none());
    // The window is gone: the next deadline is the drain's graceful timeout, not its end.
    assert_eq!(
        h.state.next_deadline(),
        Some(h.at() + Duration::from_secs(5))
    );
    h.advance(Duration::from_secs(3));
    assert!(!stop_signals(&h.log).iter().any(|p| old.contains(p)));
}

#[test]
fn zero_stability_window_commits_when_ready() {
    let mut h = stable(1, Duration::ZERO);
    h.feed(Event::Reload(7));
    h.ready_all(2);
    let outcome = Harness::outcome(&h.log).unwrap();
    assert_eq!(
        (outcome.outcome, outcome.reason.as_str()),
        (Outcome::Succeeded, "")
    );
}

#[test]
fn scale_up_in_the_stability_window_restarts_it_once_every_worker_is_ready() {
    let mut h = stable(1, Duration::from_secs(3));
    h.feed(Event::Reload(7));
    h.ready_all(2);
    h.advance(Duration::from_millis(1500));
    h.feed(Event::Scale(2));
    h.ready_all(1);
    // Not every new worker is ready any more: the window's end does not commit it, and
    // leaves no overdue deadline behind (the new worker's ready timeout is 2s away).
    h.advance(Duration::from_millis(1500));
    assert!(Harness::outcome(&h.log).is_none());
    assert!(h.state.next_deadline().is_none_or(|t| t > h.at()));
    h.ready_all(2);
    h.advance(Duration::from_millis(2999));
    assert!(Harness::outcome(&h.log).is_none());
    h.advance(Duration::from_millis(1));
    assert_eq!(
        Harness::outcome(&h.log).unwrap().outcome,
        Outcome::Succeeded
    );
    assert_eq!(h.state.serving, 2);
}

#[test]
fn reload_in_the_stability_window_is_queued_behind_it() {
    let mut h = stable(1, Duration::from_secs(3));
    h.feed(Event::Reload(7));
    h.ready_all(2);
    let acts = h.feed(Event::Reload(8));
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::Progress {
            progress: Progress::Queued,
            ..
        }
    )));
    h.advance(Duration::from_secs(3));
    assert_eq!(h.state.serving, 2);
    assert_eq!(h.state.starting_generation(), Some(3));
}

fn texts(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Progress {
                progress: Progress::Text(t),
                ..
            } => Some(t.clone()),
            _ => None,
        })
        .collect()
}

fn spawns(actions: &[Action], generation: u64) -> Vec<u32> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Spawn {
                generation: g,
                slot,
            } if *g == generation => Some(*slot),
            _ => None,
        })
        .collect()
}

#[test]
fn canary_starts_alone_then_the_rest_once_ready_and_stable() {
    let mut h = stable(4, Duration::from_secs(1));
    let old = h.pids(1);
    let acts = h.feed(Event::ReloadWith {
        requester: 7,
        canary: 1,
    });
    assert_eq!(spawns(&acts, 2), vec![0], "only the canary starts");
    assert_eq!(h.pids(2).len(), 1);
    h.ready_all(2);
    // Ready, but inside its stability window: the rest waits, the old one keeps every slot.
    h.advance(Duration::from_millis(999));
    assert_eq!(h.pids(2).len(), 1);
    assert_eq!(h.pids(1), old);
    let acts = {
        h.now += Duration::from_millis(1);
        h.feed(Event::Tick)
    };
    assert_eq!(spawns(&acts, 2), vec![1, 2, 3]);
    assert!(texts(&acts).contains(
        &"canary: 1 of 4 workers of generation 2 ready and stable for 1s; starting the other 3"
            .to_string()
    ));
    assert!(stop_signals(&acts).is_empty(), "nothing drains yet");
    assert_eq!(h.state.starting.as_ref().unwrap().canary, 0);
    // The whole generation ready: its own stability window, then the old one drains.
    h.ready_all(2);
    h.advance(Duration::from_millis(999));
    assert!(Harness::outcome(&h.log).is_none());
    assert!(!stop_signals(&h.log).iter().any(|p| old.contains(p)));
    h.advance(Duration::from_millis(1));
    assert_eq!(
        Harness::outcome(&h.log).unwrap().outcome,
        Outcome::Succeeded
    );
    assert_eq!(h.state.serving, 2);
    let mut drained = stop_signals(&h.log);
    drained.sort();
    assert_eq!(drained, old);
}

#[test]
fn canary_without_a_window_starts_the_rest_when_ready() {
    let mut h = Harness::new(ReadyMode::Notify, 3);
    h.ready_all(1);
    h.feed(Event::ReloadWith {
        requester: 7,
        canary: 2,
    });
    let canaries = h.pids(2);
    assert_eq!(canaries.len(), 2);
    h.ready(canaries[0]);
    assert_eq!(h.pids(2).len(), 2, "both canaries must be ready");
    let acts = h.ready(canaries[1]);
    assert_eq!(spawns(&acts, 2), vec![2]);
    assert!(texts(&acts)
        .contains(&"canary: 2 of 3 workers of generation 2 ready; starting the other 1".into()));
    h.ready_all(2);
    assert_eq!(h.state.serving, 2);
}

#[test]
fn canary_from_the_config_applies_to_every_reload_and_the_request_wins() {
    let mut h = Harness::new(ReadyMode::Notify, 4);
    h.state.settings.canary = 1;
    h.ready_all(1);
    let acts = h.feed(Event::Reload(7));
    assert_eq!(spawns(&acts, 2), vec![0]);
    h.ready_all(2);
    h.ready_all(2);
    assert_eq!(h.state.serving, 2);
    // An explicit 0 (or as many as the workers) is an ordinary reload.
    let acts = h.feed(Event::ReloadWith {
        requester: 8,
        canary: 0,
    });
    assert_eq!(spawns(&acts, 3), vec![0, 1, 2, 3]);
    h.ready_all(3);
    let acts = h.feed(Event::ReloadWith {
        requester: 9,
        canary: 4,
    });
    assert_eq!(spawns(&acts, 4), vec![0, 1, 2, 3]);
}

#[test]
fn failing_canary_rolls_back_only_the_canaries() {
    // (how it fails, expected reason)
    for exits in [true, false] {
        let mut h = stable(4, Duration::from_secs(1));
        let old = h.pids(1);
        h.feed(Event::ReloadWith {
            requester: 7,
            canary: 1,
        });
        let canary = h.pids(2)[0];
        let acts = if exits {
            h.feed(Event::Exited {
                pid: canary,
                exit: Exit::Code(1),
            })
        } else {
            h.now += Duration::from_secs(2);
            h.feed(Event::Tick)
        };
        let outcome = Harness::outcome(&acts).unwrap();
        assert_eq!(outcome.outcome, Outcome::RolledBack);
        let want = if exits {
            format!("canary: worker 0 (pid {canary}) exited with status 1 before it was ready")
        } else {
            format!("canary: worker 0 (pid {canary}) was not ready within 2s")
        };
        assert_eq!(outcome.reason, want);
        assert_eq!(h.state.serving, 1);
        assert_eq!(h.pids(1), old);
        assert!(h.pids(2).is_empty());
        assert!(h.state.starting.is_none());
        assert!(!stop_signals(&h.log).iter().any(|p| old.contains(p)));
        assert!(spawns(&h.log, 2) == vec![0], "the rest never started");
    }
}

#[test]
fn canary_exit_in_its_stability_window_rolls_back_at_once() {
    let mut h = stable(4, Duration::from_secs(1));
    let old = h.pids(1);
    h.feed(Event::ReloadWith {
        requester: 7,
        canary: 1,
    });
    h.ready_all(2);
    h.advance(Duration::from_millis(500));
    let canary = h.pids(2)[0];
    let acts = h.feed(Event::Exited {
        pid: canary,
        exit: Exit::Code(3),
    });
    let outcome = Harness::outcome(&acts).unwrap();
    assert_eq!(outcome.outcome, Outcome::RolledBack);
    assert_eq!(
        outcome.reason,
        format!(
            "canary: 0.5 s into the stability window: worker 0 (pid {canary}) exited with status 3"
        )
    );
    assert_eq!(h.pids(1), old);
    assert!(stop_signals(&acts).is_empty());
}

#[test]
fn scale_up_in_the_canary_step_starts_the_new_slot_with_the_rest() {
    let mut h = Harness::new(ReadyMode::Notify, 3);
    h.ready_all(1);
    h.feed(Event::ReloadWith {
        requester: 7,
        canary: 1,
    });
    let acts = h.feed(Event::Scale(4));
    assert_eq!(spawns(&acts, 2), Vec::<u32>::new());
    let acts = h.ready(h.pids(2)[0]);
    assert_eq!(spawns(&acts, 2), vec![1, 2, 3]);
    h.ready_all(2);
    assert_eq!(h.state.serving, 2);
}

#[test]
fn scale_down_to_the_canaries_makes_an_ordinary_reload() {
    let mut h = Harness::new(ReadyMode::Notify, 3);
    h.ready_all(1);
    h.feed(Event::ReloadWith {
        requester: 7,
        canary: 1,
    });
    h.ready_all(2);
    // Already past the canary step; a second canary reload is queued and keeps its count.
    h.feed(Event::ReloadWith {
        requester: 8,
        canary: 2,
    });
    h.ready_all(2);
    assert_eq!(h.state.serving, 2);
    assert_eq!(h.state.starting.as_ref().unwrap().canary, 2);
    h.feed(Event::Scale(1));
    assert_eq!(h.state.starting.as_ref().unwrap().canary, 0);
    h.ready_all(3);
    assert_eq!(h.state.serving, 3);
}
