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
//! The hand-off in one place: [`clock`] (instants as absolute `CLOCK_MONOTONIC` nanoseconds),
//! [`image`] (the primary's state to and from the plain data of `reloadsup_protocol::upgrade`),
//! [`preflight`] (the new binary's dry run), [`resume`] (the new image's side), and here the
//! upgrade's steps and the exec.

mod clock;
pub(crate) mod image;
mod preflight;
mod resume;

pub(crate) use clock::Clock;
pub(crate) use image::raw;
pub(crate) use preflight::{preflight, start_binary};
pub(crate) use resume::{config_of, read_handoff};

use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use reloadsup_protocol::upgrade::Handoff;

use super::state::Requester;
use super::Primary;
use crate::error::lower;
use crate::sys;
use reloadsup_protocol::{self as proto, Reply};

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
        fds.extend(super::helpers::logger::Logs::image_fds(l));
    }
    if let Some(m) = &h.metrics {
        fds.extend(super::helpers::metrics::Metrics::image_fds(m));
    }
    fds
}

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
        // An exec waits for every other thread of the process to end: one stuck in a close
        // (an fd a worker sent, on a FUSE mount) or in reading the config (a hung mount) would
        // hold the primary in the exec for as long as it lasts.
        let busy = if self.loader.busy() {
            Some("the config file is still being read")
        } else if !sys::closer_idle() {
            Some("fds that workers sent are still being closed")
        } else {
            None
        };
        if let Some(why) = busy {
            let why = format!("{why}; try again later");
            return self.refuse_upgrade(up.waiters, up.restarters, why, actions);
        }
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
        // Not carried: the new image starts its own when it needs one; this one, reaped there
        // as nobody's child, is ignored.
        self.inspector.kill();
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
        self.load_config(super::loading::After::Restart { who }, actions);
    }
}
