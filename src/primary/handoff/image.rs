//! The primary's state as the plain data of `reloadsup_protocol::upgrade`, and back.

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::time::Duration;

use reloadsup_protocol::upgrade::{
    self as image, DownImage, Handoff, PhaseImage, ProcessImage, ReadyImage, RestartImage,
    SettingsImage, SlotImage, StartingImage, StateImage, HANDOFF_VERSION,
};

use crate::config::{ReadyMode, RestartPolicy};
use crate::primary::reconfigure::Epoch;
use crate::primary::state::roles::RoleTimer;
use crate::primary::state::{Down, Phase, Process, Requester, Settings, Slot, Starting, State};
use crate::primary::Primary;
use image::{LinkImage, ListenerImage};

use super::{Clock, VERSION};

fn dur_ns(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

pub(crate) fn state_image(s: &State, c: &Clock) -> StateImage {
    let st = &s.settings;
    StateImage {
        settings: SettingsImage {
            ready: match st.ready {
                ReadyMode::Notify => ReadyImage::Notify,
                ReadyMode::Delay(d) => ReadyImage::Delay { ns: dur_ns(d) },
                ReadyMode::Immediate => ReadyImage::Immediate,
                ReadyMode::Listening => ReadyImage::Listening,
            },
            ready_timeout: dur_ns(st.ready_timeout),
            graceful_timeout: dur_ns(st.graceful_timeout),
            restart: match st.restart {
                RestartPolicy::OnFailure => RestartImage::OnFailure,
                RestartPolicy::Always => RestartImage::Always,
                RestartPolicy::Never => RestartImage::Never,
            },
            stop_signal: st.stop_signal,
        },
        target: s.target,
        serving: s.serving,
        starting: s.starting.as_ref().map(|g| StartingImage {
            generation: g.generation,
            waiters: g.waiters.clone(),
        }),
        pending: s.pending.clone(),
        next_generation: s.next_generation,
        processes: s
            .processes
            .iter()
            .map(|p| ProcessImage {
                pid: p.pid,
                generation: p.generation,
                slot: p.slot,
                phase: match p.phase {
                    Phase::Starting => PhaseImage::Starting,
                    Phase::Ready => PhaseImage::Ready,
                    Phase::Draining => PhaseImage::Draining,
                },
                started: c.ns(p.started),
                ready_at: c.opt_ns(p.ready_at),
                deadline: c.opt_ns(p.deadline),
                status: p.status.clone(),
            })
            .collect(),
        slots: s
            .slots
            .iter()
            .map(|sl| SlotImage {
                restarts: sl.restarts,
                streak: sl.streak,
                backoff: dur_ns(sl.backoff),
                restart_at: c.opt_ns(sl.restart_at),
                down: sl.down.as_ref().map(|d| match d {
                    Down::Backoff => DownImage::Backoff,
                    Down::Dead(r) => DownImage::Dead(r.clone()),
                    Down::Stopped(r) => DownImage::Stopped(r.clone()),
                }),
                since: c.opt_ns(sl.since),
            })
            .collect(),
        last_reload: s.last_reload.clone(),
        shutdown: s.shutdown.clone(),
        first_ready: s.first_ready,
    }
}

/// The canary step of a starting generation, which the image does not carry: spawns run
/// synchronously, so slots `canary..target` without a live process of the generation mean the
/// canaries (slots `0..canary`) were still proving themselves. Zero: every slot was started.
fn canary_step(generation: u64, target: u32, processes: &[ProcessImage]) -> u32 {
    let started = |slot: u32| {
        processes.iter().any(|p| {
            p.generation == generation && p.slot == slot && p.phase != PhaseImage::Draining
        })
    };
    let canary = (0..target).take_while(|&slot| started(slot)).count() as u32;
    if canary > 0 && canary < target && (canary..target).all(|slot| !started(slot)) {
        canary
    } else {
        0
    }
}

pub(crate) fn state_from(i: StateImage, c: &Clock) -> State {
    let st = i.settings;
    State {
        settings: Settings {
            ready: match st.ready {
                ReadyImage::Notify => ReadyMode::Notify,
                ReadyImage::Delay { ns } => ReadyMode::Delay(Duration::from_nanos(ns)),
                ReadyImage::Immediate => ReadyMode::Immediate,
                ReadyImage::Listening => ReadyMode::Listening,
            },
            ready_timeout: Duration::from_nanos(st.ready_timeout),
            graceful_timeout: Duration::from_nanos(st.graceful_timeout),
            // Set from the config by `resume`.
            stable_for: Duration::ZERO,
            canary: 0,
            restart: match st.restart {
                RestartImage::OnFailure => RestartPolicy::OnFailure,
                RestartImage::Always => RestartPolicy::Always,
                RestartImage::Never => RestartPolicy::Never,
            },
            stop_signal: st.stop_signal,
        },
        target: i.target,
        serving: i.serving,
        starting: i.starting.map(|g| Starting {
            canary: canary_step(g.generation, i.target, &i.processes),
            generation: g.generation,
            waiters: g.waiters,
        }),
        // Not in the state image: `resume` sets it from the hand-off (version 6).
        pending_canary: None,
        pending: i.pending,
        next_generation: i.next_generation,
        processes: i
            .processes
            .into_iter()
            .map(|p| Process {
                pid: p.pid,
                generation: p.generation,
                slot: p.slot,
                phase: match p.phase {
                    PhaseImage::Starting => Phase::Starting,
                    PhaseImage::Ready => Phase::Ready,
                    PhaseImage::Draining => Phase::Draining,
                },
                started: c.instant(p.started),
                ready_at: c.opt_instant(p.ready_at),
                deadline: c.opt_instant(p.deadline),
                status: p.status,
            })
            .collect(),
        slots: i
            .slots
            .into_iter()
            .map(|sl| Slot {
                restarts: sl.restarts,
                streak: sl.streak,
                backoff: Duration::from_nanos(sl.backoff),
                restart_at: c.opt_instant(sl.restart_at),
                down: sl.down.map(|d| match d {
                    DownImage::Backoff => Down::Backoff,
                    DownImage::Dead(r) => Down::Dead(r),
                    DownImage::Stopped(r) => Down::Stopped(r),
                }),
                since: c.opt_instant(sl.since),
            })
            .collect(),
        last_reload: i.last_reload,
        shutdown: i.shutdown,
        first_ready: i.first_ready,
        // Carried in the metrics image (hand-off version 5), set by `resume`.
        restarts_total: 0,
        // The new image's inspector looks afresh.
        blind: None,
    }
}

pub(crate) fn epoch_images(epochs: &[Epoch]) -> Vec<image::EpochImage> {
    epochs
        .iter()
        .map(|e| image::EpochImage {
            from: e.from,
            argv: e.argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
            env: e.env.clone(),
            einhorn_env: e.einhorn_env,
            listeners: e.listeners.clone(),
        })
        .collect()
}

/// The epochs of a hand-off; each listener they name must be one the hand-off carries.
///
/// `listen_env` (`--no-listen-env`) is not in the hand-off's epochs: every epoch takes it from
/// `config`, the running config rebuilt from the hand-off.
pub(crate) fn epochs_from(
    h: &Handoff,
    config: &crate::config::Config,
) -> Result<Vec<Epoch>, String> {
    if h.epochs.is_empty() {
        return Err("the hand-off has no worker spec".into());
    }
    let mut epochs = Vec::new();
    for e in &h.epochs {
        if let Some((name, bound)) = e
            .listeners
            .iter()
            .find(|(_, b)| !h.listeners.iter().any(|l| &l.bound == b))
        {
            return Err(format!(
                "the hand-off's listener {name} ({bound}) has no socket"
            ));
        }
        epochs.push(Epoch {
            from: e.from,
            argv: e.argv.iter().cloned().map(OsString::from_vec).collect(),
            env: e.env.clone(),
            einhorn_env: e.einhorn_env,
            listen_env: config.listen_env,
            listeners: e.listeners.clone(),
        });
    }
    Ok(epochs)
}

/// A role's timer for its image; a role the primary runs always has one.
fn timer(t: &Option<RoleTimer>) -> &RoleTimer {
    static IDLE: std::sync::OnceLock<RoleTimer> = std::sync::OnceLock::new();
    t.as_ref()
        .unwrap_or_else(|| IDLE.get_or_init(RoleTimer::new))
}

pub(crate) fn raw(fd: &impl AsRawFd) -> i32 {
    fd.as_raw_fd()
}

impl Primary {
    /// Everything the new image needs, as plain data and fd numbers.
    pub(super) fn handoff(
        &self,
        waiters: Vec<Requester>,
        restarters: Vec<Requester>,
        c: &Clock,
    ) -> Handoff {
        Handoff {
            version: HANDOFF_VERSION,
            from_version: VERSION.to_string(),
            args: self
                .own_args
                .iter()
                .map(|a| a.as_bytes().to_vec())
                .collect(),
            binary: self.binary.as_os_str().as_bytes().to_vec(),
            upgrades: self.upgrades + 1,
            waiters,
            restarters,
            state: state_image(&self.state, c),
            listeners: self
                .listeners
                .iter()
                .map(|l| ListenerImage {
                    name: l.name.clone(),
                    bound: l.bound.clone(),
                    fd: raw(&l.fd),
                })
                .collect(),
            control: self.conns.image(),
            notify: self.notify.as_ref().map(|n| n.image()),
            spares: self
                .spares
                .iter()
                .map(|s| LinkImage {
                    pid: s.pid,
                    fd: raw(&s.link),
                })
                .collect(),
            links: self
                .links
                .iter()
                .map(|(pid, fd)| LinkImage {
                    pid: *pid,
                    fd: raw(fd),
                })
                .collect(),
            keeper: self.keeper.image(&self.roles.keeper, c),
            shell: self
                .shell
                .as_ref()
                .map(|s| s.image(timer(&self.roles.shell), c)),
            restarting: self.restarting.clone(),
            refill_at: c.opt_ns(self.roles.refill_at),
            config_text: self.config.file_text.clone(),
            start_text: self.config.start_text.clone(),
            epochs: epoch_images(&self.epochs),
            logger: self
                .logs
                .as_ref()
                .map(|l| l.image(timer(&self.roles.logger), c)),
            manager: self.manager.as_ref().map(|m| m.image(c)),
            metrics: Some(self.metrics.image(
                self.roles.metrics.as_ref(),
                self.state.restarts_total,
                c,
            )),
            pending_canary: self.state.pending_canary,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primary::state::{Action, Event};
    use reloadsup_protocol::{self as proto, Outcome, ReloadOutcome};
    use std::os::fd::OwnedFd;
    use std::time::Instant;

    fn busy_state(now: Instant) -> State {
        let settings = Settings {
            ready: ReadyMode::Delay(Duration::from_millis(250)),
            ready_timeout: Duration::from_secs(60),
            graceful_timeout: Duration::from_secs(30),
            stable_for: Duration::ZERO,
            canary: 0,
            restart: RestartPolicy::Always,
            stop_signal: 15,
        };
        let mut s = State::new(settings, 2);
        s.serving = 3;
        s.next_generation = 5;
        // Slot 1 of generation 4 has no process: only a canary step leaves that gap.
        s.starting = Some(Starting {
            canary: 1,
            generation: 4,
            waiters: vec![(16 << 32) | 1],
        });
        s.pending = Some(vec![0, 7]);
        s.processes = vec![
            Process {
                pid: 100,
                generation: 3,
                slot: 0,
                phase: Phase::Ready,
                started: now - Duration::from_secs(5),
                ready_at: None,
                deadline: None,
                status: "serving".into(),
            },
            Process {
                pid: 101,
                generation: 4,
                slot: 0,
                phase: Phase::Starting,
                started: now,
                ready_at: Some(now + Duration::from_millis(250)),
                deadline: Some(now + Duration::from_secs(60)),
                status: String::new(),
            },
        ];
        s.slots = vec![
            Slot::default(),
            Slot {
                restarts: 3,
                streak: 2,
                backoff: Duration::from_millis(400),
                restart_at: Some(now + Duration::from_millis(400)),
                down: Some(Down::Backoff),
                since: Some(now - Duration::from_secs(1)),
            },
        ];
        s.last_reload = Some(ReloadOutcome {
            generation: 3,
            outcome: Outcome::Succeeded,
            reason: String::new(),
        });
        s.first_ready = true;
        s
    }

    #[test]
    fn the_state_crosses_the_hand_off_unchanged() {
        let clock = Clock::now();
        let state = busy_state(clock.instant);
        let image = state_image(&state, &clock);
        let bytes = proto::encode(&image).expect("encode");
        let back: StateImage = proto::decode(&bytes).expect("decode");
        assert_eq!(state_from(back, &clock), state);
    }

    #[test]
    fn the_canary_step_is_inferred_across_the_hand_off() {
        let clock = Clock::now();
        let mut state = busy_state(clock.instant);
        // Every slot of the starting generation started: past the canary step, or none.
        let mut rest = state.processes[1].clone();
        rest.pid = 102;
        rest.slot = 1;
        state.processes.push(rest);
        state.starting.as_mut().unwrap().canary = 0;
        let back = state_from(state_image(&state, &clock), &clock);
        assert_eq!(back.starting.unwrap().canary, 0);
        // A draining process of the generation does not count as started.
        state.processes[2].phase = Phase::Draining;
        let back = state_from(state_image(&state, &clock), &clock);
        assert_eq!(back.starting.unwrap().canary, 1);
    }

    #[test]
    fn a_stability_window_crosses_the_hand_off() {
        let clock = Clock::now();
        let now = clock.instant;
        let mut state = busy_state(now);
        state.pending = None;
        state.settings.stable_for = Duration::from_secs(3);
        // Generation 4 is ready and 1 s into its window.
        let end = now + Duration::from_secs(2);
        state.processes[1].phase = Phase::Ready;
        state.processes[1].ready_at = None;
        state.processes[1].deadline = Some(end);
        state.slots = vec![Slot::default()];
        state.target = 1;
        state.starting.as_mut().unwrap().canary = 0;
        let bytes = proto::encode(&state_image(&state, &clock)).expect("encode");
        let mut back = state_from(proto::decode(&bytes).expect("decode"), &clock);
        // What `resume` sets from the config rebuilt from the hand-off.
        back.settings.stable_for = Duration::from_secs(3);
        assert_eq!(back, state);
        assert_eq!(back.next_deadline(), Some(end));
        // The window still ends then: before, nothing; at its end, the commit.
        let acts = back.handle(end - Duration::from_millis(1), Event::Tick);
        assert!(acts.is_empty(), "{acts:?}");
        let acts = back.handle(end, Event::Tick);
        assert!(acts.iter().any(|a| matches!(
            a,
            Action::ReloadDone { outcome, .. } if outcome.outcome == Outcome::Succeeded
        )));
        assert_eq!(back.serving, 4);
    }

    #[test]
    fn role_timers_cross_the_hand_off_unchanged() {
        use crate::primary::helpers::keeper::Keeper;
        use crate::primary::helpers::shell::Shell;
        use reloadsup_protocol::upgrade::{KeeperImage, ShellImage};
        let clock = Clock::now();
        let now = clock.instant;
        let shell_timer = RoleTimer {
            running: true,
            started: Some(now - Duration::from_secs(5)),
            backoff: Duration::from_millis(400),
            restart_at: None,
            replacing: true,
            stopping: false,
        };
        let spec = reloadsup_protocol::ShellSpec {
            version: reloadsup_protocol::PROTOCOL_VERSION,
            primary_pid: 1,
            name: "web".into(),
            cert_pem: b"cert".to_vec(),
            key_pem: b"key".to_vec(),
            password_hash: "h".into(),
            control_path: b"/run/control.sock".to_vec(),
            commands: Vec::new(),
            fd_count: 1,
        };
        let fd = || OwnedFd::from(std::fs::File::open("/dev/null").expect("/dev/null"));
        let mut shell = Shell::new(spec, fd(), None);
        shell.helper.pid = Some(4242);
        let bytes = proto::encode(&shell.image(&shell_timer, &clock)).expect("encode");
        let back: ShellImage = proto::decode(&bytes).expect("decode");
        let (shell, timer) = Shell::resume(back, fd(), &clock);
        assert_eq!(timer, shell_timer);
        assert_eq!(shell.helper.pid, Some(4242));

        let keeper_timer = RoleTimer {
            running: false,
            started: Some(now - Duration::from_secs(1)),
            backoff: Duration::from_millis(800),
            restart_at: Some(now + Duration::from_millis(400)),
            replacing: false,
            stopping: false,
        };
        let image = KeeperImage {
            link_fd: None,
            pid: None,
            tracked: vec![7, 9],
            cgroup: None,
            started: None,
            backoff: 0,
            restart_at: None,
        };
        let (keeper, _) = Keeper::resume(1, image, None, &clock);
        let bytes = proto::encode(&keeper.image(&keeper_timer, &clock)).expect("encode");
        let back: KeeperImage = proto::decode(&bytes).expect("decode");
        let (keeper, timer) = Keeper::resume(1, back, None, &clock);
        assert_eq!(timer, keeper_timer);
        assert_eq!(keeper.state.tracked.len(), 2);
    }
}
