//! Upgrade in place: the primary re-execs itself under the same pid (DESIGN.md promise 6).
//!
//! An upgrade has two steps. The **pre-flight** runs the new binary as `__preflight` with the
//! hand-off the primary would give it on stdin (a memfd), without waiting for it: its pid and
//! deadline are kept in [`Upgrade`] and its answer is read from its stdout pipe when it is
//! reaped, like a worker role's setup failure. It must decode the hand-off, parse the
//! primary's command line and print `reloadsup VERSION ok`. Anything else refuses the
//! upgrade, and nothing changes. Then the **exec**: the hand-off is encoded again (the state
//! moved on meanwhile) into a memfd, every fd it names loses close-on-exec, every signal is
//! blocked, and `execve(binary, ["__upgrade", FD])`. If that fails, flags and mask are put back
//! and the old image carries on. The new image ([`resume`]) rebuilds the primary from the
//! hand-off around a fresh poll, installs its signal handlers, only then unblocks (signals of
//! the window are delivered then), and answers whoever waited for the upgrade.
//!
//! This module holds the conversions between the loop's types and the plain-data images of
//! `reloadsup_protocol::upgrade`. Instants travel as absolute `CLOCK_MONOTONIC` nanoseconds.

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reloadsup_protocol::upgrade::{
    self as image, DownImage, Handoff, PhaseImage, ProcessImage, ReadyImage, RestartImage,
    SettingsImage, SlotImage, StartingImage, StateImage, HANDOFF_VERSION,
};

use super::reconfigure::Epoch;
use super::state::{Down, Phase, Process, Requester, Settings, Slot, Starting, State};
use crate::config::{ReadyMode, RestartPolicy};

/// How long the pre-flight may take before the upgrade is refused.
pub(crate) const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest hand-off either side accepts (a state of many thousand workers fits).
const MAX_HANDOFF: u64 = 64 << 20;

/// The running image's version, as `ctl status` shows it.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");

/// An upgrade whose pre-flight runs. Plain data but for the pre-flight's stdout: an upgrade
/// never spans an exec (it ends in one).
pub(crate) struct Upgrade {
    pub binary: PathBuf,
    pub pid: u32,
    pub deadline: Instant,
    pub timed_out: bool,
    /// Who waits for the outcome (`ctl upgrade`, the console, USR2 as `FROM_SIGNAL`).
    pub waiters: Vec<Requester>,
    /// Who asked for `restart`: after the upgrade (or its refusal) a reload and a new shell.
    pub restarters: Vec<Requester>,
    pub output: OwnedFd,
    /// The pre-flight passed: exec at the end of this loop turn, once every action of the turn
    /// was carried out (an action left undone would be lost across the exec).
    pub passed: bool,
}

/// Maps instants to absolute monotonic nanoseconds and back, in one image.
pub(crate) struct Clock {
    instant: Instant,
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
    }
}

/// Takes the fds a hand-off names, each number once.
pub(crate) struct Inherited {
    taken: std::collections::BTreeSet<RawFd>,
}

impl Inherited {
    pub(crate) fn new() -> Inherited {
        Inherited {
            taken: std::collections::BTreeSet::new(),
        }
    }

    pub(crate) fn take(&mut self, fd: i32, what: &str) -> Result<OwnedFd, String> {
        if !self.taken.insert(fd) {
            return Err(format!("the hand-off names fd {fd} twice ({what})"));
        }
        crate::sys::take_inherited_fd(fd).map_err(|e| format!("{what}: {e}"))
    }
}

/// The absolute path this primary was started from: what `upgrade` execs by default.
/// argv[0] as given (made absolute against the working directory, symlinks kept, so that a
/// symlink switched to another version is followed), or found in PATH like the shell did.
pub(crate) fn start_binary(argv0: Option<&OsString>) -> PathBuf {
    let fallback = || std::fs::read_link("/proc/self/exe").unwrap_or_else(|_| "reloadsup".into());
    let Some(argv0) = argv0.filter(|a| !a.is_empty()) else {
        return fallback();
    };
    let p = Path::new(argv0);
    if argv0.as_bytes().contains(&b'/') {
        return std::path::absolute(p).unwrap_or_else(|_| fallback());
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(p))
        .find(|c| is_executable(c).is_ok())
        .and_then(|c| std::path::absolute(c).ok())
        .unwrap_or_else(fallback)
}

/// Checks what can be checked without running it; the reason names the path.
pub(crate) fn is_executable(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("{}: {}", path.display(), crate::error::lower(&e)))?;
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).map_err(|e| {
        format!(
            "{}: not executable ({})",
            path.display(),
            e.desc().to_lowercase()
        )
    })
}

/// The hidden `__preflight` role: reads a hand-off on stdin, proves it decodes it and the
/// command line in it, and says which version it is. Exit 0 only then.
pub(crate) fn preflight() -> u8 {
    match check_handoff() {
        Ok(()) => {
            println!("reloadsup {VERSION} ok (hand-off version {HANDOFF_VERSION})");
            0
        }
        Err(why) => {
            println!("error: {why}");
            1
        }
    }
}

fn check_handoff() -> Result<(), String> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .take(MAX_HANDOFF)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("unable to read the hand-off: {}", crate::error::lower(&e)))?;
    let handoff =
        image::decode_handoff(&bytes).map_err(|e| format!("unable to decode the hand-off: {e}"))?;
    let (_, config) = config_of(&handoff)?;
    epochs_from(&handoff, &config).map(|_| ())
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

/// The primary's command line and running configuration, rebuilt from the hand-off: the
/// command line it carries, merged over the config texts it carries (the file is not read: it
/// may have changed or broken since, and an image that cannot resume kills the service).
pub(crate) fn config_of(
    h: &Handoff,
) -> Result<(crate::config::RunArgs, crate::config::Config), String> {
    use clap::Parser;
    let args = std::iter::once(OsString::from("reloadsup"))
        .chain(h.args.iter().map(|a| OsString::from_vec(a.clone())));
    let parsed = crate::config::RunArgs::try_parse_from(args)
        .map_err(|e| format!("the command line does not parse: {}", e.kind()))?;
    // The console's password hash file may be gone since it was read (moved away, on a tmpfs
    // that was cleaned): the hash the console runs with travels in the hand-off, and the new
    // image keeps it rather than refusing the upgrade.
    let carried = h.shell.as_ref().map(|s| s.spec.password_hash.clone());
    let build = |text: &Option<String>| {
        let first = crate::config::Config::from_text(parsed.clone(), text.clone());
        let first = match (first, &carried) {
            (Err(crate::config::ConfigError::HashFile { what, reason }), Some(hash)) => {
                log::warn!(
                    "upgrade: {what}: unable to read ({reason}); the console keeps the password hash it runs with"
                );
                let mut args = parsed.clone();
                args.admin_password_hash_file = None;
                args.admin_password_hash = Some(hash.clone());
                crate::config::Config::from_text(args, text.clone()).map(|mut c| {
                    // That hash never was on the command line.
                    if let Some(a) = c.admin.as_mut() {
                        a.warnings.retain(|w| !w.contains("command line"));
                    }
                    c
                })
            }
            (other, _) => other,
        };
        first.map_err(|e| format!("the configuration: {e}"))
    };
    let start = build(&h.start_text)?;
    let config = if h.config_text == h.start_text {
        start
    } else {
        // As the reloads that got there did: the keys that cannot change stay the start's.
        super::reconfigure::merge(&start, build(&h.config_text)?)
    };
    Ok((parsed, config))
}

/// Reads the hand-off of the `__upgrade FD` role.
pub(crate) fn read_handoff(arg: Option<&OsString>) -> Result<Handoff, String> {
    let fd: RawFd = arg
        .and_then(|a| a.to_str())
        .and_then(|a| a.parse().ok())
        .ok_or("__upgrade needs the hand-off's fd")?;
    let owned = crate::sys::take_inherited_fd(fd).map_err(|e| format!("the hand-off: {e}"))?;
    let mut bytes = Vec::new();
    std::fs::File::from(owned)
        .take(MAX_HANDOFF)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("unable to read the hand-off: {}", crate::error::lower(&e)))?;
    image::decode_handoff(&bytes).map_err(|e| format!("unable to decode the hand-off: {e}"))
}

/// The fds a hand-off names, to keep open across the exec.
pub(crate) fn fds_of(h: &Handoff) -> Vec<RawFd> {
    let mut fds: Vec<RawFd> = h.listeners.iter().map(|l| l.fd).collect();
    fds.push(h.control.listener_fd);
    fds.extend(h.control.conns.iter().map(|c| c.fd));
    if let Some(n) = &h.notify {
        fds.extend(n.sockets.iter().map(|s| s.fd));
    }
    fds.extend(h.spares.iter().map(|s| s.fd));
    fds.extend(h.links.iter().map(|s| s.fd));
    fds.extend(h.keeper.link_fd);
    if let Some(s) = &h.shell {
        fds.push(s.listener_fd);
    }
    if let Some(l) = &h.logger {
        fds.extend(super::logs::Logs::image_fds(l));
    }
    if let Some(m) = &h.metrics {
        fds.extend(super::metrics::Metrics::image_fds(m));
    }
    fds
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

use super::state::roles::{RoleTimer, Roles};
use super::{listeners::Listener, Primary, Spare};
use super::{CONTROL, FIRST_LINK, SIGNALS};
use crate::error::lower;
use crate::sys;
use image::{LinkImage, ListenerImage};
use mio::{Interest, Poll};
use reloadsup_protocol::{self as proto, Reply};
use signal_hook::consts::signal::*;
use signal_hook_mio::v1_0::Signals;

impl Primary {
    /// Starts an upgrade (`ctl upgrade`, the console, SIGUSR2) or joins the one whose
    /// pre-flight runs; `restart` reloads and replaces the shell worker after it.
    pub(super) fn begin_upgrade(
        &mut self,
        who: Requester,
        binary: Option<PathBuf>,
        restart: bool,
        actions: &mut Vec<super::Action>,
    ) {
        let from_shell = self
            .shell
            .as_ref()
            .is_some_and(|s| s.is_link(super::control::conn_of(who)));
        if binary.is_some() && from_shell {
            // The shell worker may run as a less privileged user, and its programs reach the
            // primary through it: none of them may make the primary exec a file of their
            // choosing. The console's `upgrade` names no binary.
            let why = "upgrade refused: --binary is accepted on the control socket only".into();
            self.conns.send_reply(&self.poll, who, Reply::Error(why));
            return;
        }
        let binary = binary.unwrap_or_else(|| self.binary.clone());
        if let Some(up) = &mut self.upgrade {
            if restart {
                up.restarters.push(who);
                return;
            }
            if up.binary == binary {
                up.waiters.push(who);
                return;
            }
            let why = format!(
                "an upgrade from {} is in progress; try again when it is done",
                up.binary.display()
            );
            self.conns.send_reply(&self.poll, who, Reply::Error(why));
            return;
        }
        let (waiters, restarters) = if restart {
            (vec![], vec![who])
        } else {
            (vec![who], vec![])
        };
        match self.spawn_preflight(&binary) {
            Ok((pid, output)) => {
                log::info!(
                    "upgrade: pre-flight of {} runs as pid {pid}",
                    binary.display()
                );
                self.upgrade = Some(Upgrade {
                    binary,
                    pid,
                    deadline: Instant::now() + PREFLIGHT_TIMEOUT,
                    timed_out: false,
                    waiters,
                    restarters,
                    output,
                    passed: false,
                });
            }
            Err(why) => self.refuse_upgrade(waiters, restarters, why, actions),
        }
    }

    /// Runs `binary __preflight` with the hand-off on stdin, without waiting for it.
    fn spawn_preflight(&mut self, binary: &Path) -> Result<(u32, OwnedFd), String> {
        use std::os::unix::process::CommandExt;
        is_executable(binary)?;
        let clock = Clock::now();
        let bytes = proto::encode(&self.handoff(vec![], vec![], &clock))
            .map_err(|e| format!("unable to encode the hand-off: {e}"))?;
        let stdin = sys::memfd_with("reloadsup-preflight", &bytes)
            .map_err(|e| format!("unable to make the hand-off's memfd: {}", lower(&e)))?;
        let mut child = std::process::Command::new(binary)
            .arg("__preflight")
            .stdin(stdin)
            .stdout(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("{}: {}", binary.display(), lower(&e)))?;
        let pid = child.id();
        let output = child.stdout.take().map(OwnedFd::from);
        let output = match output {
            Some(fd) => fd,
            None => {
                let _ = sys::kill_group(pid, nix::sys::signal::Signal::SIGKILL);
                return Err("no pipe to the pre-flight".into());
            }
        };
        // Read once it was reaped; a process it left behind may hold the pipe open.
        let _ = nix::fcntl::fcntl(
            &output,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
        Ok((pid, output))
    }

    /// The pre-flight was reaped: exec the new image, or refuse the upgrade.
    pub(super) fn preflight_done(
        &mut self,
        status: sys::ExitStatus,
        actions: &mut Vec<super::Action>,
    ) {
        let Some(up) = self.upgrade.take() else {
            return;
        };
        let mut buf = [0u8; 4096];
        let n = nix::unistd::read(&up.output, &mut buf).unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]).trim().to_string();
        let bin = up.binary.display().to_string();
        let verdict = if self.state.is_shutting_down() {
            Err("the supervisor is shutting down".to_string())
        } else if up.timed_out {
            Err(format!(
                "{bin}: the pre-flight did not answer within {}",
                super::state::human(PREFLIGHT_TIMEOUT)
            ))
        } else {
            match status {
                sys::ExitStatus::Exited(0) if text.starts_with("reloadsup ") => Ok(text),
                sys::ExitStatus::Exited(0) => Err(format!(
                    "{bin}: the pre-flight did not report a reloadsup version (it printed {text:?})"
                )),
                _ if text.is_empty() => Err(format!("{bin}: the pre-flight {status}")),
                _ => Err(format!("{bin}: the pre-flight {status}: {text}")),
            }
        };
        match verdict {
            Ok(line) => {
                log::info!("upgrade: pre-flight of {bin}: {line}");
                // Reaped: the pid may be reused from now on.
                self.upgrade = Some(Upgrade {
                    pid: 0,
                    passed: true,
                    ..up
                });
            }
            Err(why) => self.refuse_upgrade(up.waiters, up.restarters, why, actions),
        }
    }

    /// At the end of a loop turn, when nothing is left to do: the upgrade whose pre-flight
    /// passed, if any, to hand over to the new image.
    pub(super) fn passed_upgrade(&mut self) -> Option<Upgrade> {
        self.upgrade.take_if(|u| u.passed)
    }

    /// Hands everything over to the new image. Returns only if `execve` failed.
    pub(super) fn exec_upgrade(&mut self, up: Upgrade, actions: &mut Vec<super::Action>) {
        if let Some(logs) = &mut self.logs {
            logs.end_tails(&self.poll, &mut self.conns);
        }
        let clock = Clock::now();
        let handoff = self.handoff(up.waiters.clone(), up.restarters.clone(), &clock);
        let made = proto::encode(&handoff)
            .map_err(|e| format!("unable to encode the hand-off: {e}"))
            .and_then(|bytes| {
                sys::memfd_with("reloadsup-handoff", &bytes)
                    .map_err(|e| format!("unable to make the hand-off's memfd: {}", lower(&e)))
            });
        let memfd = match made {
            Ok(m) => m,
            Err(why) => return self.refuse_upgrade(up.waiters, up.restarters, why, actions),
        };
        let mut keep = fds_of(&handoff);
        keep.push(raw(&memfd));
        let arg = raw(&memfd).to_string();
        log::info!(
            "upgrade: exec {} in place (pid {}, {} fds carried)",
            up.binary.display(),
            self.pid,
            keep.len()
        );
        // The original arguments follow, unused, so that `ps` still shows what runs.
        let mut args = vec!["__upgrade", &arg, "--"];
        let own: Vec<String> = self
            .own_args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        args.extend(own.iter().map(String::as_str));
        let e = sys::exec_in_place(&up.binary, &args, &keep);
        let why = format!("{}: execve failed: {}", up.binary.display(), lower(&e));
        self.refuse_upgrade(up.waiters, up.restarters, why, actions);
    }

    /// Nothing changed: say why; a `restart` still reloads and replaces the shell worker.
    fn refuse_upgrade(
        &mut self,
        waiters: Vec<Requester>,
        restarters: Vec<Requester>,
        why: String,
        actions: &mut Vec<super::Action>,
    ) {
        log::warn!("upgrade refused: {why}");
        for who in waiters {
            self.conns.send_reply(
                &self.poll,
                who,
                Reply::Error(format!("upgrade refused: {why}")),
            );
        }
        for who in restarters {
            log::info!("restart: reloading every worker without an upgrade");
            self.restart_after_upgrade(who, actions);
        }
    }

    /// The reload of a `restart`: it re-reads the config like any reload; a bad file refuses
    /// it (the upgrade, if it happened, stays done).
    fn restart_after_upgrade(&mut self, who: Requester, actions: &mut Vec<super::Action>) {
        let now = Instant::now();
        match self.reconfigure(now, who, actions) {
            Ok(()) => {
                self.restarting.push(who);
                actions.extend(self.state.handle(now, super::Event::Reload(who)));
            }
            Err(refused) => self
                .conns
                .send_reply(&self.poll, who, Reply::Reload(refused)),
        }
    }

    /// Everything the new image needs, as plain data and fd numbers.
    fn handoff(&self, waiters: Vec<Requester>, restarters: Vec<Requester>, c: &Clock) -> Handoff {
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

    /// The new image: rebuilds the primary from the hand-off around a fresh poll. Signals
    /// stay blocked (as the old image left them) until the handlers are installed.
    pub(super) fn resume(h: Handoff) -> Result<(Primary, Vec<super::Action>), String> {
        let clock = Clock::now();
        sys::ensure_std_fds().map_err(|e| format!("open /dev/null: {}", lower(&e)))?;
        let (args, config) = config_of(&h)?;
        let epochs = epochs_from(&h, &config)?;
        let pid = std::process::id();
        let poll = Poll::new().map_err(|e| format!("create the poll: {}", lower(&e)))?;
        let mut signals = Signals::new([
            SIGHUP, SIGTERM, SIGINT, SIGQUIT, SIGCHLD, SIGTTIN, SIGTTOU, SIGUSR2, SIGUSR1,
        ])
        .map_err(|e| format!("install signal handlers: {}", lower(&e)))?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(|e| format!("poll signals: {}", lower(&e)))?;
        // Handlers are in place: what arrived during the exec is delivered now.
        sys::unblock_signals();

        let mut fds = Inherited::new();
        let mut take = |fd: i32, what: &str| fds.take(fd, what);
        let mut listeners = Vec::new();
        for (i, l) in h.listeners.into_iter().enumerate() {
            let fd = take(l.fd, "a listener")?;
            let address = match config.listeners.iter().find(|c| c.name == l.name) {
                Some(c) => c.address.clone(),
                None => {
                    crate::config::parse_listener(&l.bound, i)
                        .map_err(|e| format!("listener {}: {e}", l.name))?
                        .address
                }
            };
            // The hand-off's command line names the adopted sockets (`--inherited-listener`).
            let adopted = config
                .activated
                .iter()
                .any(|a| a.address.to_string() == l.bound);
            listeners.push(Listener {
                name: l.name,
                address,
                bound: l.bound,
                fd,
                adopted,
            });
        }
        let conns = super::Connections::resume(&poll, h.control, &mut take)?;
        let notify = match h.notify {
            Some(image) => {
                let mut n =
                    super::notify::NotifySockets::new(&config.state_dir, config.uid, config.gid);
                n.resume(&poll, image, &mut take)?;
                Some(n)
            }
            None => None,
        };
        let mut spares = Vec::new();
        for s in h.spares {
            spares.push(Spare {
                pid: s.pid,
                link: take(s.fd, "a spare's link")?,
            });
        }
        let mut links = Vec::new();
        for l in h.links {
            links.push((l.pid, take(l.fd, "a worker role's link")?));
        }
        let keeper_link = match h.keeper.link_fd {
            Some(fd) => Some(take(fd, "the keeper's link")?),
            None => None,
        };
        let (keeper, keeper_timer) =
            super::keeper_link::Keeper::resume(pid, h.keeper, keeper_link, &clock);
        let (shell, shell_timer) = match h.shell {
            Some(image) => {
                let listener = take(image.listener_fd, "the console's listener")?;
                let (shell, timer) = super::shell_link::Shell::resume(image, listener, &clock);
                (Some(shell), Some(timer))
            }
            None => (None, None),
        };
        let (logs, logger_timer) = match h.logger {
            Some(image) => {
                let (logs, timer) = super::logs::Logs::resume(
                    image,
                    (config.uid, config.gid),
                    |fd| take(fd, "a log pipe or the logger's link").map_err(std::io::Error::other),
                    &poll,
                    &clock,
                )
                .map_err(|e| format!("the logger worker: {}", lower(&e)))?;
                (Some(logs), Some(timer))
            }
            None => (None, None),
        };
        let (metrics, metrics_timer, restarts_total) = super::metrics::Metrics::resume(
            h.metrics,
            &config.name,
            pid,
            |fd| take(fd, "the metrics listener or link").map_err(std::io::Error::other),
            &poll,
            &clock,
        )
        .map_err(|e| format!("the metrics worker: {}", lower(&e)))?;
        let mut state = state_from(h.state, &clock);
        state.restarts_total = restarts_total;
        // Not in the state image: the config rebuilt from the hand-off holds it. The window's
        // deadline itself is in the image, on the new generation's ready processes.
        state.settings.stable_for = config.stable_for;
        state.settings.canary = config.canary;
        // Hand-off version 6: a queued `reload --canary N` keeps its N (only with a queued one).
        state.pending_canary = h.pending_canary.filter(|_| state.pending.is_some());
        let roles = Roles {
            shell: shell_timer,
            keeper: keeper_timer,
            logger: logger_timer,
            metrics: metrics_timer,
            prespawn: config.prespawn,
            refill_at: clock.opt_instant(h.refill_at),
            // Not in the hand-off: a shutdown retired the spares, and the state says so.
            retired: state.is_shutting_down(),
        };
        let mut primary = Primary {
            manager: h
                .manager
                .and_then(|m| super::manager::Manager::resume(m, &clock)),
            roles,
            turn: Vec::new(),
            role_actions: Vec::new(),
            logs,
            control_path: config.state_dir.join("control.sock"),
            config,
            poll,
            signals,
            listeners,
            notify,
            pending: Default::default(),
            conns,
            state,
            epochs,
            args,
            pid,
            restarting: h.restarting,
            shell,
            spares,
            // Armed again by the loop while a worker is starting: not part of the hand-off.
            listening_at: None,
            listening_dump_at: None,
            keeper,
            links: Default::default(),
            watch: None,
            own_args: h.args.into_iter().map(OsString::from_vec).collect(),
            binary: PathBuf::from(OsString::from_vec(h.binary)),
            upgrades: h.upgrades,
            upgrade: None,
            metrics,
        };
        for (pid, link) in links {
            primary.keep_link(pid, link);
        }
        // A fresh poll reports what is ready at registration, but a source may be mid-batch:
        // serve every one once.
        primary.pending.insert(SIGNALS.0);
        primary.pending.insert(CONTROL.0);
        if primary.logs.is_some() {
            primary.pending.insert(super::logs::LOGGER.0);
        }
        if primary.metrics.enabled() {
            primary.pending.insert(super::metrics::METRICS.0);
        }
        primary.pending.extend(primary.conns.ids());
        if let Some(n) = &primary.notify {
            primary.pending.extend(n.tokens());
        }
        let link_tokens: Vec<usize> = primary
            .links
            .keys()
            .map(|p| FIRST_LINK + *p as usize)
            .collect();
        primary.pending.extend(link_tokens);
        log::info!(
            "upgraded in place: reloadsup {} -> {VERSION} (pid {pid}, upgrade {})",
            h.from_version,
            primary.upgrades
        );
        // Children that exited during the exec window.
        primary.reap();
        let mut actions = std::mem::take(&mut primary.turn);
        // Every upgrade re-reads the config (issue 8, item 5), now that the new image runs: as
        // a reload would, but without starting a generation, so no worker is restarted; what
        // only a new generation gets (command, env, listeners) waits for the next reload. A
        // bad file is logged, shown as the last reload and changes nothing.
        let mut done = format!(
            "upgraded in place to reloadsup {VERSION} (pid {pid}, upgrade {})",
            primary.upgrades
        );
        if let Err(refused) = primary.reconfigure(Instant::now(), super::FROM_SIGNAL, &mut actions)
        {
            done.push_str(&format!(
                "; the config file was not applied: {}",
                refused.reason
            ));
        }
        for who in h.waiters {
            primary
                .conns
                .send_reply(&primary.poll, who, Reply::Done(done.clone()));
        }
        for who in h.restarters {
            log::info!("restart: the primary is upgraded; reloading every worker");
            primary.restart_after_upgrade(who, &mut actions);
        }
        Ok((primary, actions))
    }
}

#[cfg(test)]
mod tests {
    use super::super::state::{Action, Event};
    use super::*;
    use reloadsup_protocol::{Outcome, ReloadOutcome};

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
    fn deadlines_keep_their_distance_across_clocks() {
        let old = Clock::now();
        let due = old.instant + Duration::from_millis(1500);
        let ns = old.ns(due);
        // The new image's clock is read later: the same absolute deadline is nearer.
        thread_sleep_a_little();
        let new = Clock::now();
        let there = new.instant(ns);
        let left = there.saturating_duration_since(Instant::now());
        assert!(left <= Duration::from_millis(1500) && left > Duration::from_millis(1000));
        // An instant in the past stays in the past.
        let past = new.instant(old.ns(old.instant - Duration::from_secs(3)));
        assert!(past < Instant::now() - Duration::from_secs(2));
    }

    #[test]
    fn role_timers_cross_the_hand_off_unchanged() {
        use super::super::keeper_link::Keeper;
        use super::super::shell_link::Shell;
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
        shell.pid = Some(4242);
        let bytes = proto::encode(&shell.image(&shell_timer, &clock)).expect("encode");
        let back: ShellImage = proto::decode(&bytes).expect("decode");
        let (shell, timer) = Shell::resume(back, fd(), &clock);
        assert_eq!(timer, shell_timer);
        assert_eq!(shell.pid, Some(4242));

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

    fn thread_sleep_a_little() {
        std::thread::sleep(Duration::from_millis(20));
    }
}
