//! Every input of the primary's loop, as one closed enum, and [`Primary::handle`], the one
//! entry point that answers each with one `match`.
//!
//! The mio loop (`Primary::serve`) only turns readiness, signals, reaped children and due
//! deadlines into [`Input`]s; what each means is decided here. Handling an input never blocks:
//! it reads a bounded batch and says whether more may wait, and the state machines' actions it
//! produces are carried out at the end of the loop's turn.

use std::time::Instant;

use nix::sys::signal::Signal;
use reloadsup_protocol::Request;
use signal_hook::consts::signal::*;

use super::control::ConnId;
use super::state::roles::RoleEvent;
use super::state::Event;
use super::{Primary, FROM_SIGNAL};
use crate::sys;

#[derive(Debug)]
pub(crate) enum Input {
    /// A signal other than SIGCHLD (which the loop turns into [`Input::ChildExited`]s).
    Signal(i32),
    /// A child was reaped: a worker, a spare, a role, the pre-flight.
    ChildExited {
        pid: u32,
        status: sys::ExitStatus,
    },
    /// The control socket has connections to accept.
    Accept,
    /// A control connection (or the shell worker's link) is ready.
    Control {
        conn: ConnId,
        readable: bool,
        writable: bool,
    },
    Link(Link),
    /// A worker's notify socket (by its poll token) has datagrams.
    Notify(usize),
    /// A watched file's directory has events (`--watch`).
    FileChanged,
    /// A deadline of one of the timers is due.
    Deadline(Timer),
    /// A config file load finished, or its deadline passed (see `loading`).
    ConfigLoaded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    /// A worker role's hand-off link, by pid: it closed (exec'd) or holds a failure report.
    Worker(u32),
    /// The logger worker's link: drained pipes.
    Logger,
    /// The metrics worker's link: asks for figures.
    Metrics,
    /// The inspector's link: an answer (`--ready listening`).
    Inspector,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// The generation state machine's (ready and graceful timeouts, slot back-off).
    Generations,
    /// The roles' restarts and the spares' refill.
    Roles,
    /// The running pre-flight's timeout.
    Preflight,
    /// The end of a watched file's quiet period: a reload.
    Watch,
    /// A look at the starting workers (`--ready listening`).
    Listening,
}

impl Primary {
    /// Handles one input; true if its source may have more to read (served again next turn).
    pub(crate) fn handle(&mut self, input: Input) -> bool {
        let mut actions = std::mem::take(&mut self.turn);
        let more = match input {
            Input::Signal(sig) => {
                self.on_signal(sig, &mut actions);
                false
            }
            Input::ChildExited { pid, status } => {
                self.on_exit(pid, status, &mut actions);
                false
            }
            Input::Accept => self.on_accept(),
            Input::Control {
                conn,
                readable,
                writable,
            } => self.on_conn(conn, readable, writable, &mut actions),
            Input::Link(Link::Worker(pid)) => {
                self.on_link(pid);
                false
            }
            Input::Link(Link::Logger) => self
                .logs
                .as_mut()
                .is_some_and(|l| l.on_link(&self.poll, &mut self.conns)),
            Input::Link(Link::Metrics) => {
                let now = Instant::now();
                let figures = super::helpers::metrics::figures(
                    &self.metrics.counters,
                    &self.state,
                    self.upgrades,
                    now,
                );
                self.metrics.on_link(&figures)
            }
            Input::Link(Link::Inspector) => {
                self.on_looked(&mut actions);
                false
            }
            Input::Notify(token) => self.on_notify(token, &mut actions),
            Input::ConfigLoaded => {
                self.on_loaded(&mut actions);
                false
            }
            Input::Deadline(Timer::Generations) => {
                actions.extend(self.state.handle(Instant::now(), Event::Tick));
                false
            }
            Input::Deadline(Timer::Listening) => {
                self.scan_listening(Instant::now(), &mut actions);
                false
            }
            Input::Deadline(Timer::Roles) => {
                self.role(RoleEvent::Tick);
                false
            }
            Input::FileChanged => self
                .watch
                .as_mut()
                .is_some_and(|w| w.on_readable(Instant::now())),
            Input::Deadline(Timer::Watch) => {
                let due = self.watch.as_mut().and_then(|w| w.take_due(Instant::now()));
                if let Some(paths) = due {
                    let shown: Vec<String> =
                        paths.iter().map(|p| p.display().to_string()).collect();
                    log::info!("{} changed: reloading", shown.join(", "));
                    let trusted = super::watch::Trusted::new((self.config.uid, self.config.gid));
                    super::watch::warn_untrusted(&paths, &trusted, "changed");
                    self.request(FROM_SIGNAL, Request::Reload, &mut actions);
                }
                false
            }
            Input::Deadline(Timer::Preflight) => {
                if let Some(up) = self.upgrade.as_mut().filter(|u| !u.passed && !u.timed_out) {
                    // Reaped like any child; the reap refuses the upgrade.
                    up.timed_out = true;
                    let _ = sys::kill_group(up.pid, Signal::SIGKILL);
                }
                false
            }
        };
        self.turn = actions;
        more
    }

    fn on_signal(&mut self, sig: i32, actions: &mut Vec<super::Action>) {
        match sig {
            SIGHUP => {
                log::info!("SIGHUP: reloading");
                self.request(FROM_SIGNAL, Request::Reload, actions);
            }
            SIGTTIN => self.request(FROM_SIGNAL, Request::Add { workers: 1 }, actions),
            SIGTTOU => self.request(FROM_SIGNAL, Request::Remove { workers: 1 }, actions),
            SIGTERM | SIGINT => {
                log::info!(
                    "{}: graceful shutdown",
                    if sig == SIGTERM { "SIGTERM" } else { "SIGINT" }
                );
                self.request(FROM_SIGNAL, Request::Stop, actions);
            }
            SIGQUIT => {
                log::info!("SIGQUIT: fast shutdown");
                self.retire();
                actions.extend(self.state.handle(
                    Instant::now(),
                    Event::Shutdown {
                        graceful: false,
                        requester: None,
                    },
                ));
            }
            SIGUSR1 => match &mut self.logs {
                Some(logs) => {
                    log::info!("SIGUSR1: reopening the log file");
                    logs.reopen();
                }
                None => log::info!("SIGUSR1: no log file to reopen (--log-output inherit)"),
            },
            SIGUSR2 => {
                log::info!("SIGUSR2: upgrade in place");
                self.request(FROM_SIGNAL, Request::Upgrade { binary: None }, actions);
            }
            _ => {}
        }
    }
}
