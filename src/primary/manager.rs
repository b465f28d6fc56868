//! Telling the service manager above reloadsup what happens inside (`sd_notify(3)`, the
//! `Type=notify-reload` protocol): `READY=1` once the first generation serves, `RELOADING=1`
//! with `MONOTONIC_USEC=` when a reload begins and `READY=1` again when it committed, rolled
//! back or was refused, a one-line `STATUS=`, `STOPPING=1` on shutdown, and `WATCHDOG=1` at half
//! of `WATCHDOG_USEC` when the manager asks for a watchdog (the one timer the primary has at
//! rest, and only then).
//!
//! The socket comes from reloadsup's OWN `NOTIFY_SOCKET`, read once at start and removed from
//! the environment (workers get a per-generation notify socket of the primary's, never this
//! one); with the watchdog variables, likewise. Datagrams are sent without blocking: a manager
//! that does not read loses messages, the loop never waits. What was sent crosses an upgrade in
//! place ([`ManagerImage`]), so the new image (same pid) re-sends nothing.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

use reloadsup_protocol::upgrade::ManagerImage;
use reloadsup_protocol::{Outcome, Progress, ReloadOutcome};

use super::handoff::Clock;
use super::state::{Phase, State};

pub(crate) struct Manager {
    sock: UnixDatagram,
    addr: SocketAddr,
    /// `NOTIFY_SOCKET` as given: `@` starts an abstract name.
    raw: Vec<u8>,
    /// The full `WATCHDOG_USEC` period.
    watchdog: Option<Duration>,
    /// When `WATCHDOG=1` is due next.
    pub(crate) watchdog_at: Option<Instant>,
    ready: bool,
    stopping: bool,
    status: String,
}

/// The variables this module consumes, removed from what workers inherit.
const VARS: &[&str] = &["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

impl Manager {
    /// Reads (and removes) the manager's variables. The primary is still single-threaded.
    pub(crate) fn from_env(pid: u32) -> Option<Manager> {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let wpid = std::env::var("WATCHDOG_PID").ok();
        for k in VARS {
            std::env::remove_var(k);
        }
        let raw = socket?.as_bytes().to_vec();
        let watchdog = watchdog_period(usec.as_deref(), wpid.as_deref(), pid);
        match Manager::new(raw.clone(), watchdog) {
            Ok(m) => Some(m),
            Err(e) => {
                log::warn!(
                    "NOTIFY_SOCKET={}: {}; the service manager will not be notified",
                    String::from_utf8_lossy(&raw),
                    crate::error::lower(&e)
                );
                None
            }
        }
    }

    fn new(raw: Vec<u8>, watchdog: Option<Duration>) -> io::Result<Manager> {
        let addr = match raw.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None if raw.first() == Some(&b'/') => {
                SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(&raw))?
            }
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not an absolute path or an @abstract name",
                ))
            }
        };
        // std makes it close-on-exec.
        let sock = UnixDatagram::unbound()?;
        sock.set_nonblocking(true)?;
        let now = Instant::now();
        Ok(Manager {
            sock,
            addr,
            raw,
            watchdog,
            watchdog_at: watchdog.map(|p| now + p / 2),
            ready: false,
            stopping: false,
            status: String::new(),
        })
    }

    fn send(&self, msg: &str) {
        match self.sock.send_to_addr(msg.as_bytes(), &self.addr) {
            Ok(_) => {}
            // A full buffer: the message is lost, the loop does not wait.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                log::debug!("the service manager's socket is full; dropped {msg:?}")
            }
            Err(e) => log::debug!(
                "unable to notify the service manager: {}",
                crate::error::lower(&e)
            ),
        }
    }

    /// The state machine reported progress: a generation that starts is a reload.
    pub(crate) fn on_progress(&mut self, progress: &Progress, state: &State) {
        if matches!(progress, Progress::GenerationStarted { .. }) && self.ready && !self.stopping {
            self.reloading(state);
        }
    }

    /// A reload committed or rolled back (a cancelled one ends in `STOPPING=1` instead).
    pub(crate) fn on_reload_done(&mut self, outcome: &ReloadOutcome, state: &State) {
        if outcome.outcome != Outcome::Cancelled && !self.stopping {
            self.reload_done(state);
        }
    }

    /// Every worker is gone after a shutdown.
    pub(crate) fn on_exit(&mut self) {
        self.stop();
    }

    /// A reload that was refused before any generation started (a bad config file): the
    /// manager that sent SIGHUP still sees it begin and end.
    pub(crate) fn refused(&mut self, state: &State) {
        if self.ready && !self.stopping {
            self.reloading(state);
            self.reload_done(state);
        }
    }

    fn reloading(&mut self, state: &State) {
        self.status = status_line(state);
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS={}",
            monotonic_usec(),
            self.status
        ));
    }

    fn reload_done(&mut self, state: &State) {
        self.ready = true;
        self.status = status_line(state);
        self.send(&format!("READY=1\nSTATUS={}", self.status));
    }

    fn stop(&mut self) {
        if !self.stopping {
            self.stopping = true;
            self.watchdog_at = None;
            self.send("STOPPING=1\nSTATUS=stopping");
        }
    }

    /// After every turn of the loop: the first `READY=1`, `STOPPING=1`, a changed status.
    pub(crate) fn sync(&mut self, state: &State, pid: u32) {
        if self.stopping {
            return;
        }
        if state.is_shutting_down() {
            return self.stop();
        }
        let status = status_line(state);
        if !self.ready && state.first_ready {
            self.ready = true;
            self.status = status;
            self.send(&format!("READY=1\nMAINPID={pid}\nSTATUS={}", self.status));
        } else if status != self.status {
            self.status = status;
            self.send(&format!("STATUS={}", self.status));
        }
    }

    /// Sends `WATCHDOG=1` when due.
    pub(crate) fn tick(&mut self, now: Instant) {
        if let (Some(at), Some(period)) = (self.watchdog_at, self.watchdog) {
            if at <= now {
                self.send("WATCHDOG=1");
                self.watchdog_at = Some(now + period / 2);
            }
        }
    }

    pub(crate) fn image(&self, c: &Clock) -> ManagerImage {
        ManagerImage {
            socket: self.raw.clone(),
            watchdog_usec: self.watchdog.map(|d| d.as_micros() as u64),
            watchdog_at: c.opt_ns(self.watchdog_at),
            ready: self.ready,
            status: self.status.clone(),
        }
    }

    pub(crate) fn resume(i: ManagerImage, c: &Clock) -> Option<Manager> {
        let watchdog = i.watchdog_usec.map(Duration::from_micros);
        match Manager::new(i.socket, watchdog) {
            Ok(mut m) => {
                m.watchdog_at = c.opt_instant(i.watchdog_at);
                m.ready = i.ready;
                m.status = i.status;
                Some(m)
            }
            Err(e) => {
                log::warn!(
                    "the service manager's socket: {}; no longer notified",
                    crate::error::lower(&e)
                );
                None
            }
        }
    }
}

/// `WATCHDOG_USEC`, when it is meant for this process (`WATCHDOG_PID` absent or ours).
fn watchdog_period(usec: Option<&str>, wpid: Option<&str>, pid: u32) -> Option<Duration> {
    if wpid.is_some_and(|p| p.trim().parse::<u32>().ok() != Some(pid)) {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

fn monotonic_usec() -> u64 {
    crate::sys::monotonic_ns() / 1000
}

/// One line: the generation, ready/target workers, the last reload's outcome.
pub(crate) fn status_line(state: &State) -> String {
    let ready = state
        .processes
        .iter()
        .filter(|p| p.generation == state.serving && p.phase == Phase::Ready)
        .count();
    let mut line = format!(
        "generation {}: {ready}/{} workers ready",
        state.serving, state.target
    );
    if let Some(g) = state.starting.as_ref().map(|s| s.generation) {
        line.push_str(&format!("; reloading to generation {g}"));
    }
    if let Some(r) = &state.last_reload {
        line.push_str(&format!(
            "; last reload: generation {} {}",
            r.generation,
            r.outcome.as_str()
        ));
        if !r.reason.is_empty() {
            line.push_str(&format!(" ({})", r.reason.replace('\n', " ")));
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_is_for_this_pid_only() {
        let us = Some(Duration::from_micros(200_000));
        assert_eq!(watchdog_period(Some("200000"), None, 7), us);
        assert_eq!(watchdog_period(Some("200000"), Some("7"), 7), us);
        assert_eq!(watchdog_period(Some("200000"), Some("8"), 7), None);
        assert_eq!(watchdog_period(Some("0"), None, 7), None);
        assert_eq!(watchdog_period(Some("x"), None, 7), None);
        assert_eq!(watchdog_period(None, None, 7), None);
    }

    #[test]
    fn abstract_and_path_addresses_are_accepted_others_refused() {
        assert!(Manager::new(b"@reloadsup-test".to_vec(), None).is_ok());
        assert!(Manager::new(b"/run/x.sock".to_vec(), None).is_ok());
        assert!(Manager::new(b"relative".to_vec(), None).is_err());
    }

    #[test]
    fn abstract_socket_receives_datagrams() {
        let name = format!("reloadsup-manager-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        let m = Manager::new(format!("@{name}").into_bytes(), None).unwrap();
        m.send("READY=1");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
