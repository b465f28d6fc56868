//! The primary: one synchronous mio event loop that holds the listening sockets for its whole
//! life and runs generations of workers.
//!
//! It owns the poll, the signal pipe, the workers' notify sockets, the control socket and its
//! connections, and the pure [`state::State`] and [`state::roles::Roles`]. Raw readiness,
//! signals, reaped children and due deadlines become [`input::Input`]s handled by
//! [`Primary::handle`]; the state machines answer with actions, which [`executor::carry_out`]
//! carries out through this module's [`Executor`]. It must never block and never panic on
//! input: every peer (worker, `ctl` client, shell worker) is treated as hostile, every error
//! from one is logged and contained. When idle it sleeps in `poll` with no timeout: the only
//! timers are the earliest deadlines of the state machines.

pub(crate) mod activation;
pub(crate) mod control;
pub(crate) mod executor;
mod files;
pub(crate) mod handoff;
pub(crate) mod helpers;
pub(crate) mod input;
pub(crate) mod listeners;
mod listening;
mod loading;
mod manager;
pub(crate) mod notify;
mod reconfigure;
pub(crate) mod state;
mod stop;
mod watch;

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::net::UnixListener;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::Signal;
use reloadsup_protocol::{self as proto, Reply, Request, WorkerSpec, PROTOCOL_VERSION};
use signal_hook::consts::signal::*;
use signal_hook_mio::v1_0::Signals;

use crate::config::{Config, ReadyMode, RunArgs};
use crate::error::lower;
use crate::error::{BindError, Fatal, SetupError};
use crate::sys;
use control::{ConnId, Connections};
use executor::Executor;
use input::{Input, Link, Timer};
use listeners::Listener;
use state::roles::{Role, RoleAction, RoleEvent, Roles};
use state::{Action, Event, Exit, Requester, State};

const SIGNALS: Token = Token(0);
const CONTROL: Token = Token(2);
/// Worker roles' links take tokens from here up, by pid (above the notify sockets' range).
const FIRST_LINK: usize = 1 << 41;
/// Control connections take tokens from here up.
pub(crate) const FIRST_CONN: usize = 16;

/// Requests that come from signals rather than a connection.
pub(crate) const FROM_SIGNAL: Requester = 0;

pub(crate) struct Primary {
    config: Config,
    /// The command line as given, merged again under the re-read `--config` file on a reload.
    args: RunArgs,
    poll: Poll,
    signals: Signals,
    /// Every open listener, the ones of the running config and the ones a generation that is
    /// still alive was given; identified by its bound address (see [`reconfigure`]).
    listeners: Vec<Listener>,
    /// One notify socket per worker (`--ready notify` only).
    notify: Option<notify::NotifySockets>,
    /// Sources that stopped at the end of a bounded batch with more to read. mio reports only
    /// new edges, so they are served again on the next turn (the poll then does not wait),
    /// after every other source has had its turn.
    pending: BTreeSet<usize>,
    control_path: PathBuf,
    conns: Connections,
    state: State,
    /// The worker specs of the live generations, oldest first; the last one is the running
    /// config's.
    epochs: Vec<reconfigure::Epoch>,
    pid: u32,
    /// Whoever asked for a restart gets its reply when the reload is done.
    restarting: Vec<Requester>,
    shell: Option<helpers::shell::Shell>,
    /// Worker roles exec'd ahead of time (`--prespawn`), waiting on their link for a spec.
    spares: Vec<Spare>,
    /// The restart timers of the shell worker, the keeper and the logger, and the spares'
    /// refill: plain data, decided in [`state::roles`].
    roles: Roles,
    /// The actions of the loop's turn so far, carried out at its end: always empty between
    /// turns, so never part of a hand-off.
    turn: Vec<Action>,
    /// The same for the roles' actions.
    role_actions: Vec<RoleAction>,
    /// The next look for starting workers that listen (`--ready listening`; see [`listening`]).
    listening_at: Option<Instant>,
    /// The earliest next sock_diag dump of that look (it is paced; see [`listening`]).
    listening_dump_at: Option<Instant>,
    /// Looks at starting workers for `--ready listening`, in a process of its own.
    inspector: helpers::inspector::Inspector,
    /// Reads the `--config` file off the loop for reloads, restarts and upgrades.
    loader: loading::Loader,
    /// Kills every worker's process group and cgroup if the primary dies (promise 4).
    keeper: helpers::keeper::Keeper,
    /// The hand-off link of each worker role that may not have exec'd yet, by pid: a role that
    /// cannot run the command says why on it before it exits; see [`Primary::setup_failure`].
    links: HashMap<u32, OwnedFd>,
    /// The primary's own command line without argv[0], carried across an upgrade in place
    /// and parsed again by the new image.
    own_args: Vec<OsString>,
    /// What an upgrade execs unless told otherwise: the path the primary was started from.
    binary: PathBuf,
    /// In-place upgrades this pid has been through.
    upgrades: u64,
    /// The upgrade whose pre-flight runs, if any.
    upgrade: Option<handoff::Upgrade>,
    /// The logger worker and the workers' output pipes (`--log-output stdout|file:PATH`).
    logs: Option<helpers::logger::Logs>,
    /// The service manager above, from reloadsup's own `NOTIFY_SOCKET`.
    manager: Option<manager::Manager>,
    /// The watched files (`--watch`), set up when the loop starts and again when a reload
    /// changes them; never carried across an upgrade (the new image watches again).
    watch: Option<watch::Watch>,
    /// The counters behind `/metrics` and the metrics worker (`--metrics`).
    metrics: helpers::metrics::Metrics,
}

/// A worker role that is running and waiting for its [`WorkerSpec`].
struct Spare {
    pid: u32,
    link: OwnedFd,
}

/// Runs the primary until it is asked to stop. Returns the exit code.
pub(crate) fn run(
    config: Config,
    args: RunArgs,
    own: Vec<OsString>,
    inherited: Vec<activation::Inherited>,
) -> Result<u8, Fatal> {
    let mut primary = Primary::start(config, args, own, inherited)?;
    primary.main_loop()
}

/// The new image of an upgrade in place: takes over the hand-off at fd `arg` and carries on.
pub(crate) fn resume(arg: Option<&OsString>) -> Result<u8, Fatal> {
    let handoff = handoff::read_handoff(arg).map_err(Fatal::Resume)?;
    let (mut primary, actions) = Primary::resume(handoff).map_err(Fatal::Resume)?;
    if let Some(code) = primary.apply(actions) {
        return Ok(code);
    }
    primary.serve()
}

impl Primary {
    fn start(
        config: Config,
        args: RunArgs,
        own: Vec<OsString>,
        inherited: Vec<activation::Inherited>,
    ) -> Result<Primary, Fatal> {
        sys::ensure_std_fds().map_err(Fatal::system("open /dev/null"))?;
        let pid = std::process::id();
        let manager = manager::Manager::from_env(pid);
        if config.subreaper {
            sys::set_subreaper().map_err(Fatal::system("become a child subreaper"))?;
        }
        // Workers or the shell worker of another user must be able to traverse it.
        let other_user = config.uid.is_some()
            || config
                .admin
                .as_ref()
                .is_some_and(|a| helpers::shell::drop_to(a).is_some());
        prepare_state_dir(&config.state_dir, &config.name, other_user)?;
        if let (Some(uid), crate::config::ReadyMode::Notify) = (config.uid, config.ready) {
            let gid = config.gid.unwrap_or(uid);
            if let Err(dir) = files::traversable_by(&config.state_dir, uid, gid) {
                return Err(Fatal::StateDir {
                    dir: config.state_dir.display().to_string(),
                    problem: format!(
                        "the workers' user (uid {uid}) cannot reach their notify sockets here: {} is closed to them; give --state-dir a directory they can reach",
                        dir.display()
                    ),
                });
            }
        }
        check_log_file(&config)?;

        let listeners = activation::adopt(&config.listeners, inherited, config.backlog)?;
        for l in &listeners {
            log::info!("listener {} bound to {}", l.name, l.bound);
        }

        let poll = Poll::new().map_err(Fatal::system("create the poll"))?;
        let loader = loading::Loader::new(&poll).map_err(Fatal::system("create a waker"))?;
        let mut signals = Signals::new([
            SIGHUP, SIGTERM, SIGINT, SIGQUIT, SIGCHLD, SIGTTIN, SIGTTOU, SIGUSR2, SIGUSR1,
        ])
        .map_err(Fatal::system("install signal handlers"))?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(Fatal::system("poll signals"))?;

        let notify = (config.ready == ReadyMode::Notify)
            .then(|| notify::NotifySockets::new(&config.state_dir, config.uid, config.gid));
        if let Some(n) = &notify {
            n.sweep();
        }

        let control_path = config.state_dir.join("control.sock");
        let _ = std::fs::remove_file(&control_path);
        let mut control = UnixListener::bind(&control_path).map_err(|source| Fatal::Socket {
            what: "control",
            path: control_path.display().to_string(),
            source,
        })?;
        poll.registry()
            .register(&mut control, CONTROL, Interest::READABLE)
            .map_err(Fatal::system("poll the control socket"))?;

        let shell = match &config.admin {
            Some(admin) => Some(admin_console(&config, admin, &control_path)?),
            None => None,
        };

        if let Some(pidfile) = &config.pidfile {
            files::write_atomically(pidfile, format!("{pid}\n").as_bytes())
                .map_err(|problem| Fatal::Pidfile { problem })?;
        }

        let state = State::new(reconfigure::settings(&config), config.workers);
        let bound: Vec<String> = listeners.iter().map(|l| l.bound.clone()).collect();
        let epoch = reconfigure::Epoch::new(state.next_generation, &config, &bound);
        let argv = &epoch.argv;
        log::info!(
            "reloadsup {} (pid {pid}) supervising '{}' as '{}'; control socket {}",
            env!("CARGO_PKG_VERSION"),
            argv.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            config.name,
            control_path.display()
        );
        let logs = helpers::logger::Logs::new(&config.log, pid, (config.uid, config.gid));
        let metrics = metrics_listener(&config, pid)?;
        let mut roles = Roles::new(shell.is_some(), logs.is_some(), config.prespawn);
        roles.metrics = metrics.enabled().then(state::roles::RoleTimer::new);
        Ok(Primary {
            manager,
            roles,
            metrics,
            turn: Vec::new(),
            role_actions: Vec::new(),
            logs,
            conns: Connections::new(control),
            config,
            poll,
            signals,
            listeners,
            notify,
            pending: BTreeSet::new(),
            control_path,
            state,
            epochs: vec![epoch],
            args,
            pid,
            restarting: Vec::new(),
            shell,
            spares: Vec::new(),
            listening_at: None,
            listening_dump_at: None,
            inspector: helpers::inspector::Inspector::new(),
            loader,
            keeper: helpers::keeper::Keeper::new(pid),
            links: HashMap::new(),
            binary: handoff::start_binary(own.first()),
            own_args: own.into_iter().skip(1).collect(),
            upgrades: 0,
            upgrade: None,
            watch: None,
        })
    }

    fn main_loop(&mut self) -> Result<u8, Fatal> {
        self.role(RoleEvent::Begin);
        let first = self.state.handle(Instant::now(), Event::Start);
        if let Some(code) = self.apply(first) {
            return Ok(code);
        }
        self.serve()
    }

    /// The loop itself, after a start or an upgrade in place.
    fn serve(&mut self) -> Result<u8, Fatal> {
        let mut events = Events::with_capacity(256);
        if self.watch.is_none() && !self.config.watch.is_empty() {
            self.watch_files();
        }
        // Start-up code (clap, the config's validation, TLS set-up) is not run again: let its
        // pages go, and the loop's come back one at a time (issue 19, item 10).
        sys::shed_code_pages();
        loop {
            self.arm_listening(Instant::now());
            // No wake-ups at rest: with nothing pending every deadline is None.
            let timeout = [
                self.state.next_deadline(),
                self.listening_at,
                self.roles.next_deadline(),
                self.preflight_deadline(),
                self.watch.as_ref().and_then(|w| w.next_deadline()),
                self.manager.as_ref().and_then(|m| m.watchdog_at),
                self.loader.deadline(),
                self.notify.as_ref().and_then(|n| n.next_deadline()),
            ]
            .into_iter()
            .flatten()
            .min()
            .map(|t| t.saturating_duration_since(Instant::now()) + Duration::from_micros(500));
            // A source with more to read is served again at once, after whatever the poll
            // reports: a flood on one source cannot starve signals or child exits.
            let timeout = if self.pending.is_empty() {
                timeout
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Fatal::System {
                    what: "poll",
                    source: e,
                });
            }
            // Each source once per turn: what the poll reported, then what was left pending.
            let mut ready: Vec<(usize, bool, bool)> = events
                .iter()
                .map(|e| (e.token().0, e.is_readable(), e.is_writable()))
                .collect();
            for t in std::mem::take(&mut self.pending) {
                // Pending means more to read, even if the poll only said "writable" this time.
                match ready.iter_mut().find(|r| r.0 == t) {
                    Some(r) => r.1 = true,
                    None => ready.push((t, true, false)),
                }
            }
            for (token, readable, writable) in ready {
                let more = match Token(token) {
                    SIGNALS => {
                        self.on_signals();
                        false
                    }
                    CONTROL => self.handle(Input::Accept),
                    helpers::logger::LOGGER => self.handle(Input::Link(Link::Logger)),
                    helpers::metrics::METRICS => self.handle(Input::Link(Link::Metrics)),
                    helpers::inspector::INSPECTOR => self.handle(Input::Link(Link::Inspector)),
                    loading::LOADED => self.handle(Input::ConfigLoaded),
                    watch::WATCH => self.handle(Input::FileChanged),
                    Token(t) if t >= FIRST_LINK => match u32::try_from(t - FIRST_LINK) {
                        Ok(pid) => self.handle(Input::Link(Link::Worker(pid))),
                        Err(_) => false,
                    },
                    Token(t) if t >= notify::FIRST_NOTIFY => self.handle(Input::Notify(t)),
                    Token(t) => self.handle(Input::Control {
                        conn: ConnId(t),
                        readable,
                        writable,
                    }),
                };
                if more {
                    self.pending.insert(token);
                }
            }
            let now = Instant::now();
            if self.state.next_deadline().is_some_and(|t| t <= now) {
                self.handle(Input::Deadline(Timer::Generations));
            }
            if self.listening_at.is_some_and(|t| t <= now) {
                self.handle(Input::Deadline(Timer::Listening));
            }
            if self.roles.next_deadline().is_some_and(|t| t <= now) {
                self.handle(Input::Deadline(Timer::Roles));
            }
            if self.preflight_deadline().is_some_and(|t| t <= now) {
                self.handle(Input::Deadline(Timer::Preflight));
            }
            if self
                .watch
                .as_ref()
                .and_then(|w| w.next_deadline())
                .is_some_and(|t| t <= now)
            {
                self.handle(Input::Deadline(Timer::Watch));
            }
            if self.loader.deadline().is_some_and(|t| t <= now) {
                self.handle(Input::ConfigLoaded);
            }
            let again = self.notify.as_mut().map(|n| n.take_deferred(now));
            for token in again.unwrap_or_default() {
                if self.handle(Input::Notify(token)) {
                    self.pending.insert(token);
                }
            }
            if let Some(m) = &mut self.manager {
                m.tick(now);
            }
            let actions = std::mem::take(&mut self.turn);
            if let Some(code) = self.apply(actions) {
                return Ok(code);
            }
            if let Some(m) = &mut self.manager {
                m.sync(&self.state, self.pid);
            }
            if self.epochs.len() > 1 {
                self.forget_unused();
            }
            // Only now, with every action of the turn carried out, is the state whole.
            if let Some(up) = self.passed_upgrade() {
                let mut refused = Vec::new();
                self.exec_upgrade(up, &mut refused);
                if let Some(code) = self.apply(refused) {
                    return Ok(code);
                }
            }
        }
    }

    /// Carries out the turn's actions through the [`Executor`], feeding the results of
    /// spawns back to the state machines. Returns an exit code once the primary is done.
    fn apply(&mut self, actions: Vec<Action>) -> Option<u8> {
        let roles = std::mem::take(&mut self.role_actions);
        executor::carry_out(self, roles, actions)
    }

    /// Feeds an event to the roles' timers; their actions are carried out with the turn's.
    fn role(&mut self, event: RoleEvent) {
        let actions = self.roles.handle(Instant::now(), event);
        self.role_actions.extend(actions);
    }

    /// Shutdown: the console is not restarted, the spares retire (they exit when their link
    /// closes) and none is started again.
    fn retire(&mut self) {
        self.role(RoleEvent::Stop(Role::Shell));
        if let Some(shell) = &mut self.shell {
            shell.terminate();
        }
        self.spares.clear();
        self.role(RoleEvent::Shutdown);
    }

    /// The running pre-flight's timeout, if it may still fire.
    fn preflight_deadline(&self) -> Option<Instant> {
        self.upgrade
            .as_ref()
            .filter(|u| !u.passed && !u.timed_out)
            .map(|u| u.deadline)
    }

    fn spawn(&mut self, generation: u64, slot: u32) -> io::Result<u32> {
        // Made at hand-off, also for a spare: the socket belongs to this worker only.
        let notify = match &mut self.notify {
            // The sockets stay after a reload to another mode, for the workers that have one.
            Some(n) if self.state.settings.ready == ReadyMode::Notify => {
                Some(n.create(&self.poll).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("unable to make a notify socket: {}", lower(&e)),
                    )
                })?)
            }
            _ => None,
        };
        let result = self.spawn_with(generation, slot, notify.as_ref().map(|n| n.1.as_path()));
        if let (Some(sockets), Some((token, _))) = (&mut self.notify, notify) {
            match &result {
                Ok(pid) => sockets.assign(token, *pid),
                Err(_) => sockets.remove(&self.poll, token),
            }
        }
        result
    }

    fn spawn_with(&mut self, generation: u64, slot: u32, notify: Option<&Path>) -> io::Result<u32> {
        // The spec of the generation's own epoch: a worker of an old generation restarted
        // during or after a config change runs like its siblings.
        let epoch = reconfigure::epoch_of(&self.epochs, generation)
            .ok_or_else(|| io::Error::other("no worker spec for this generation"))?;
        let handoff: Vec<usize> = epoch
            .listeners
            .iter()
            .filter_map(|(_, bound)| self.listeners.iter().position(|l| &l.bound == bound))
            .collect();
        if handoff.len() != epoch.listeners.len() {
            // Promise 1: a listener is closed only once no generation that got it is left.
            return Err(io::Error::other("a listener of this generation was closed"));
        }
        let spec = WorkerSpec {
            version: PROTOCOL_VERSION,
            primary_pid: self.pid,
            generation,
            slot,
            argv: epoch.argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
            env: epoch.env.clone(),
            listener_names: epoch.listeners.iter().map(|(n, _)| n.clone()).collect(),
            fd_count: handoff.len() as u32,
            notify_socket: notify.map(|p| p.as_os_str().as_bytes().to_vec()),
            uid: self.config.uid,
            gid: self.config.gid,
            einhorn_env: epoch.einhorn_env,
            listen_env: epoch.listen_env,
        };
        let body = proto::encode(&spec).map_err(io::Error::other)?;
        // A spare that died since it was started fails the send: try the next, then a new one.
        while let Some(spare) = self.spares.pop() {
            self.role(RoleEvent::SpareTaken);
            let sent = send_handoff(&spare.link, &body, &self.listeners, &handoff)
                .and_then(|()| self.send_outputs(&spare.link, generation, slot, spare.pid));
            match sent {
                Ok(()) => {
                    log::debug!(
                        "worker {slot} of generation {generation} runs in spare pid {}",
                        spare.pid
                    );
                    self.keep_link(spare.pid, spare.link);
                    return Ok(spare.pid);
                }
                Err(e) => {
                    log::debug!("spare pid {} is gone: {}", spare.pid, lower(&e));
                    let _ = sys::kill_group(spare.pid, Signal::SIGKILL);
                }
            }
        }
        let (pid, link) = self.spawn_role()?;
        let sent = send_handoff(&link, &body, &self.listeners, &handoff)
            .and_then(|()| self.send_outputs(&link, generation, slot, pid));
        if let Err(e) = sent {
            // The role process will find its link closed and exit; make sure of it.
            let _ = sys::kill_group(pid, Signal::SIGKILL);
            return Err(e);
        }
        log::debug!("spawned worker {slot} of generation {generation} as pid {pid}");
        self.keep_link(pid, link);
        Ok(pid)
    }

    /// With a logger: the worker's stdout and stderr pipes, after its listeners.
    fn send_outputs(
        &mut self,
        link: &OwnedFd,
        generation: u64,
        slot: u32,
        pid: u32,
    ) -> io::Result<()> {
        let Some(logs) = &mut self.logs else {
            return Ok(());
        };
        let [out, err] = logs.outputs(generation, slot, pid)?;
        let batch =
            proto::encode(&proto::FdBatch { index: 0, count: 2 }).map_err(io::Error::other)?;
        sys::send_with_fds(link.as_fd(), &batch, &[out.as_fd(), err.as_fd()])
    }

    /// Starts a worker role process; it waits on the returned link for its spec.
    fn spawn_role(&mut self) -> io::Result<(u32, OwnedFd)> {
        let parent = self.pid.to_string();
        let mut args = vec!["__worker", &parent];
        args.extend(self.keeper.worker_arg());
        if self.logs.is_some() {
            args.push(crate::roles::worker::CAPTURED);
        }
        let (pid, ours) = sys::spawn_linked_role("reloadsup-worker", &args)?;
        self.keeper.track(pid);
        Ok((pid, ours))
    }

    /// The signal pipe is readable: every pending signal becomes an input, SIGCHLD one
    /// [`Input::ChildExited`] per reaped child.
    fn on_signals(&mut self) {
        let pending: Vec<i32> = self.signals.pending().collect();
        for sig in pending {
            if sig == SIGCHLD {
                self.reap();
            } else {
                self.handle(Input::Signal(sig));
            }
        }
    }

    fn reap(&mut self) {
        // A SIGCHLD may also be a helper that was stopped.
        if let Some(shell) = &mut self.shell {
            shell.helper.replace_if_stopped();
        }
        if let Some(logs) = &mut self.logs {
            logs.replace_if_stopped();
        }
        self.metrics.replace_if_stopped();
        loop {
            let keeper = &mut self.keeper;
            match sys::reap_one(|pid| keeper.forget(pid)) {
                Ok(Some((pid, status))) => {
                    self.handle(Input::ChildExited { pid, status });
                }
                Ok(None) => break,
                Err(e) => {
                    log::error!("waitid failed: {}", lower(&e));
                    break;
                }
            }
        }
    }

    /// A child was reaped: whichever it was learns of it.
    fn on_exit(&mut self, pid: u32, status: sys::ExitStatus, actions: &mut Vec<Action>) {
        if self
            .upgrade
            .as_ref()
            .is_some_and(|u| !u.passed && u.pid == pid)
        {
            self.preflight_done(status, actions);
            return;
        }
        if self.inspector.is(pid) {
            self.inspector.exited(pid, status, Instant::now());
            return;
        }
        if self.keeper.is(pid) {
            self.keeper.exited(status);
            self.role(RoleEvent::Exited(Role::Keeper));
            return;
        }
        if self.metrics.is(pid) {
            let stopping = self.roles.metrics.as_ref().is_some_and(|t| t.stopping);
            self.metrics.exited(status, stopping);
            self.role(RoleEvent::Exited(Role::Metrics));
            return;
        }
        if let Some(logs) = self.logs.as_mut().filter(|l| l.is(pid)) {
            logs.exited(&self.poll, &mut self.conns, status);
            self.role(RoleEvent::Exited(Role::Logger));
            return;
        }
        if let Some(i) = self.spares.iter().position(|s| s.pid == pid) {
            let spare = self.spares.remove(i);
            if !self.roles.retired {
                let why = match self.failure_on(&spare.link) {
                    Some(reason) => format!("could not start: {reason}"),
                    None => status.to_string(),
                };
                log::warn!("spare worker pid {pid} {why}; starting another in 1s");
                self.role(RoleEvent::SpareDied);
            }
            return;
        }
        if let Some(shell) = self.shell.as_mut().filter(|s| s.helper.is(pid)) {
            shell.exited(&self.poll, &mut self.conns);
            if self
                .roles
                .shell
                .as_ref()
                .is_some_and(|t| !t.stopping && !t.replacing)
            {
                log::warn!("admin console: the shell worker {status}");
            }
            self.role(RoleEvent::Exited(Role::Shell));
            return;
        }
        if let Some(sockets) = &mut self.notify {
            sockets.remove_pid(&self.poll, pid);
        }
        let exit = match (self.setup_failure(pid), status) {
            (Some(reason), _) => Exit::Setup(reason),
            (None, sys::ExitStatus::Exited(c)) => Exit::Code(c),
            (None, sys::ExitStatus::Signaled(s)) => Exit::Signal(s),
        };
        actions.extend(
            self.state
                .handle(Instant::now(), Event::Exited { pid, exit }),
        );
    }

    /// What a reaped worker role said about its setup failure, if it said anything: the
    /// message waits in the link's buffer, so reading it never blocks. Forgets the link.
    fn setup_failure(&mut self, pid: u32) -> Option<String> {
        let link = self.links.remove(&pid)?;
        self.failure_on(&link)
    }

    /// The reason a worker role sent on `link` before it exited, if any.
    fn failure_on(&self, link: &OwnedFd) -> Option<String> {
        let mut buf = [0u8; 1024];
        let n = sys::recv_nowait(link.as_fd(), &mut buf).ok()?;
        let failure: proto::SetupFailure = proto::decode(&buf[..n]).ok()?;
        let program = self
            .epochs
            .last()
            .and_then(|e| e.argv.first())
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default();
        Some(SetupError::from_wire(&failure, &program).to_string())
    }

    /// Keeps a worker role's link until it exec'd: the poll reports the link when the exec
    /// closed it (or a failure report arrived), at no cost while nothing happens.
    fn keep_link(&mut self, pid: u32, link: OwnedFd) {
        let fd = link.as_raw_fd();
        if let Err(e) = self.poll.registry().register(
            &mut mio::unix::SourceFd(&fd),
            Token(FIRST_LINK + pid as usize),
            Interest::READABLE,
        ) {
            // Then the link is read only when the worker is reaped.
            log::debug!("unable to poll the link of pid {pid}: {}", lower(&e));
        }
        self.links.insert(pid, link);
    }

    /// A worker role's link became readable: closed once the role exec'd its command, so the
    /// primary holds a link only while a worker may still report a failure. A failure report
    /// stays in the link's buffer until the role is reaped.
    fn on_link(&mut self, pid: u32) {
        if self.links.get(&pid).is_some_and(|l| sys::at_eof(l.as_fd())) {
            // Closing the fd takes it out of the poll as well.
            self.links.remove(&pid);
        }
    }

    /// Reads a batch from one worker's notify socket; true if more may be queued.
    fn on_notify(&mut self, token: usize, actions: &mut Vec<Action>) -> bool {
        let Some(sockets) = &mut self.notify else {
            return false;
        };
        let (primary, cgroups) = (self.pid, self.keeper.worker_arg().is_some());
        // Whether `sender` is one of worker `pid`'s processes: in its cgroup, which a child
        // that called `setsid()` cannot leave and no other worker's child can join; without
        // per-worker cgroups, in its process group and below it.
        let belongs = |sender: u32, pid: u32| {
            if cgroups {
                sys::cgroup::worker_of(sender, primary) == Some(pid)
            } else {
                // A process of another worker may join this one's group (they share the
                // primary's session): it must also descend from this worker.
                sys::getpgid(sender) == Some(pid) && sys::descends_from(sender, pid)
            }
        };
        let batch = sockets.read(token, belongs);
        if let Some(pid) = batch.pid {
            for n in batch.notices {
                actions.extend(self.state.handle(
                    Instant::now(),
                    Event::Notify {
                        pid,
                        ready: n.ready,
                        status: n.status,
                    },
                ));
            }
        }
        batch.more
    }

    fn on_accept(&mut self) -> bool {
        self.conns.accept(&self.poll)
    }

    fn on_conn(
        &mut self,
        id: ConnId,
        readable: bool,
        writable: bool,
        actions: &mut Vec<Action>,
    ) -> bool {
        let (requests, more) = self.conns.on_ready(&self.poll, id, readable, writable);
        for (who, request) in requests {
            self.request(who, request, actions);
        }
        more
    }

    /// The one code path for every request, from a signal, `ctl` or the console.
    fn request(&mut self, who: Requester, request: Request, actions: &mut Vec<Action>) {
        let now = Instant::now();
        if self.state.is_shutting_down() && !matches!(request, Request::Status | Request::Stop) {
            self.conns.send_reply(
                &self.poll,
                who,
                Reply::Error("the supervisor is shutting down".into()),
            );
            return;
        }
        // A canary reload is a reload with one more word for the state machine.
        let (request, canary) = match request {
            Request::ReloadWith { canary } => (Request::Reload, Some(canary)),
            other => (other, None),
        };
        let reply = match request {
            Request::Status => Some(Reply::Status(self.status(now))),
            Request::Reload => {
                self.load_config(loading::After::Reload { who, canary }, actions);
                None
            }
            Request::Login { ok } => Some(self.login(who, ok)),
            // Made a `Reload` with its canary count above.
            Request::ReloadWith { .. } => Some(Reply::Error("a canary reload went astray".into())),
            Request::Restart => {
                log::info!("restart: upgrading the primary, then reloading every worker");
                self.begin_upgrade(who, None, true, actions);
                None
            }
            Request::Upgrade { binary } => {
                let binary = binary.map(|b| PathBuf::from(OsString::from_vec(b)));
                self.begin_upgrade(who, binary, false, actions);
                None
            }
            Request::StopLogs { request } => Some(match &mut self.logs {
                Some(logs) => logs.stop_tail(&self.poll, &mut self.conns, who, request),
                None => Reply::Done(String::new()),
            }),
            Request::Logs(query) => match &mut self.logs {
                Some(logs) => logs.tail(who, query),
                None => Some(Reply::Error(
                    "worker output is not captured: start with --log-output stdout or file:PATH"
                        .into(),
                )),
            },
            Request::Scale { workers } => Some(self.scale(now, workers, actions)),
            Request::Add { workers } => {
                let n = self.state.target.saturating_add(workers);
                Some(self.scale(now, n, actions))
            }
            Request::Remove { workers } => {
                let n = self.state.target.saturating_sub(workers);
                Some(self.scale(now, n, actions))
            }
            Request::Revive => {
                let dead = self.state.dead_slots();
                actions.extend(self.state.handle(now, Event::Revive));
                Some(Reply::Done(match dead {
                    0 => "no dead workers".to_string(),
                    1 => "revived 1 worker".to_string(),
                    n => format!("revived {n} workers"),
                }))
            }
            Request::Stop => {
                // Closing their links retires the spares: they exit on EOF.
                self.retire();
                actions.extend(self.state.handle(
                    now,
                    Event::Shutdown {
                        graceful: true,
                        requester: Some(who),
                    },
                ));
                None
            }
        };
        if let Some(reply) = reply {
            self.conns.send_reply(&self.poll, who, reply);
        }
    }

    /// A console login's result, from the shell worker's link only.
    fn login(&mut self, who: Requester, ok: bool) -> Reply {
        let from_shell = self
            .shell
            .as_ref()
            .is_some_and(|s| s.is_link(control::conn_of(who)));
        if !from_shell {
            return Reply::Error("login results come from the shell worker only".into());
        }
        self.metrics.counters.login(ok);
        Reply::Done(String::new())
    }

    fn scale(&mut self, now: Instant, workers: u32, actions: &mut Vec<Action>) -> Reply {
        const MAX: u32 = 4096;
        if workers > MAX {
            return Reply::Error(format!("{workers} workers is more than the limit of {MAX}"));
        }
        let old = self.state.target;
        actions.extend(self.state.handle(now, Event::Scale(workers)));
        Reply::Done(format!("workers: {old} -> {workers}"))
    }

    fn status(&self, now: Instant) -> proto::Status {
        proto::Status {
            pid: self.pid,
            name: self.config.name.clone(),
            generation: self.state.serving,
            target_workers: self.state.target,
            current_workers: self.state.current_workers(),
            dead_workers: self.state.dead_slots(),
            // The running config's listeners, under their current names.
            listeners: self
                .epochs
                .last()
                .map(|e| &e.listeners[..])
                .unwrap_or_default()
                .iter()
                .map(|(name, bound)| proto::ListenerInfo {
                    name: name.clone(),
                    address: bound.clone(),
                })
                .collect(),
            workers: self.state.workers(now),
            last_reload: self.state.last_reload.clone(),
            version: handoff::VERSION.to_string(),
            upgrades: self.upgrades,
        }
    }

    fn cleanup(&mut self) {
        let _ = std::fs::remove_file(&self.control_path);
        if let Some(dir) = self.shell.as_ref().and_then(|s| s.proxy_dir.as_ref()) {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some(sockets) = &mut self.notify {
            sockets.remove_all();
        }
        if let Some(p) = &self.config.pidfile {
            let _ = std::fs::remove_file(p);
        }
        for path in self.listeners.iter().filter_map(|l| l.own_path()) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The real world: processes, signals and sockets.
impl Executor for Primary {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn machines(&mut self) -> (&mut State, &mut Roles) {
        (&mut self.state, &mut self.roles)
    }

    fn take_role_actions(&mut self) -> Vec<RoleAction> {
        std::mem::take(&mut self.role_actions)
    }

    fn spawn(&mut self, generation: u64, slot: u32) -> Result<u32, String> {
        Primary::spawn(self, generation, slot).map_err(|e| lower(&e))
    }

    fn signal(&mut self, pid: u32, signal: i32) {
        let sig = Signal::try_from(signal).unwrap_or(Signal::SIGKILL);
        if let Err(e) = stop::send(&self.config, pid, sig) {
            log::warn!(
                "unable to send {} to worker pid {pid}: {}",
                sig.as_str(),
                lower(&e)
            );
        }
    }

    fn progress(&mut self, waiters: Vec<Requester>, progress: proto::Progress) {
        if let Some(m) = &mut self.manager {
            m.on_progress(&progress, &self.state);
        }
        if let proto::Progress::GenerationStarted { .. } = progress {
            self.metrics.counters.generation_started(Instant::now());
        }
        for who in waiters {
            self.conns.send_progress(&self.poll, who, progress.clone());
        }
    }

    fn reload_done(&mut self, waiters: Vec<Requester>, outcome: proto::ReloadOutcome) -> bool {
        if let Some(m) = &mut self.manager {
            m.on_reload_done(&outcome, &self.state);
        }
        self.metrics.counters.reload_done(&outcome, Instant::now());
        let mut replace_shell = false;
        for who in waiters {
            self.conns
                .send_reply(&self.poll, who, Reply::Reload(outcome.clone()));
            if self.restarting.contains(&who) {
                self.restarting.retain(|&r| r != who);
                replace_shell = true;
            }
        }
        replace_shell
    }

    fn exit(&mut self, waiters: Vec<Requester>) -> u8 {
        if let Some(m) = &mut self.manager {
            m.on_exit();
        }
        self.role(RoleEvent::Stop(Role::Shell));
        if let Some(shell) = &mut self.shell {
            // It got SIGTERM when the shutdown began; it has no work to finish.
            shell.kill();
        }
        for who in waiters {
            self.conns
                .send_reply(&self.poll, who, Reply::Done("stopped".into()));
        }
        self.conns.flush_all();
        self.cleanup();
        if let Some(logs) = &mut self.logs {
            self.roles
                .handle(Instant::now(), RoleEvent::Stop(Role::Logger));
            logs.finish();
        }
        self.roles
            .handle(Instant::now(), RoleEvent::Stop(Role::Metrics));
        self.metrics.kill();
        self.inspector.kill();
        self.roles
            .handle(Instant::now(), RoleEvent::Stop(Role::Keeper));
        self.keeper.close();
        log::info!("all workers are gone; exiting");
        0
    }

    fn start_role(&mut self, role: Role) -> bool {
        match role {
            Role::Shell => match &mut self.shell {
                Some(shell) => shell.start(&self.poll, &mut self.conns),
                None => false,
            },
            Role::Keeper => self.keeper.start(&self.poll),
            Role::Metrics => self.metrics.start(&self.poll),
            Role::Logger => match &mut self.logs {
                Some(logs) => logs.start(&self.poll),
                None => false,
            },
        }
    }

    fn terminate_role(&mut self, role: Role) {
        // Only the shell worker is ever replaced on purpose.
        if let (Role::Shell, Some(shell)) = (role, &mut self.shell) {
            shell.terminate();
        }
    }

    /// Tops the spares up to `--prespawn`.
    fn refill_spares(&mut self) -> bool {
        while self.spares.len() < self.config.prespawn as usize {
            match self.spawn_role() {
                Ok((pid, link)) => self.spares.push(Spare { pid, link }),
                Err(e) => {
                    log::warn!("unable to start a spare worker: {}", lower(&e));
                    return false;
                }
            }
        }
        true
    }
}

/// Sends the worker spec and the listener fds: the spec with the first batch of fds, then
/// further batches when there are more listeners than fit in one SCM_RIGHTS message.
fn send_handoff(
    sock: &OwnedFd,
    body: &[u8],
    listeners: &[Listener],
    which: &[usize],
) -> io::Result<()> {
    let fds: Vec<_> = which
        .iter()
        .filter_map(|&i| listeners.get(i))
        .map(|l| l.fd.as_fd())
        .collect();
    let mut chunks = fds.chunks(sys::MAX_FDS_PER_MESSAGE);
    sys::send_with_fds(sock.as_fd(), body, chunks.next().unwrap_or(&[]))?;
    for (index, chunk) in chunks.enumerate() {
        let batch = proto::encode(&proto::FdBatch {
            index: index as u32 + 1,
            count: chunk.len() as u32,
        })
        .map_err(io::Error::other)?;
        sys::send_with_fds(sock.as_fd(), &batch, chunk)?;
    }
    Ok(())
}

/// Creates the state directory (0700) or checks an existing one, and refuses to start a second
/// instance with the same name.
fn prepare_state_dir(dir: &Path, name: &str, other_user: bool) -> Result<(), Fatal> {
    // Workers run as another user (--user) must reach their notify socket: let them traverse,
    // not list.
    let mode = if other_user { 0o711 } else { 0o700 };
    files::prepare_state_dir(dir, mode).map_err(|problem| Fatal::StateDir {
        dir: dir.display().to_string(),
        problem,
    })?;
    let control = dir.join("control.sock");
    if std::os::unix::net::UnixStream::connect(&control).is_ok() {
        return Err(Fatal::AlreadyRunning {
            name: name.to_string(),
            control: control.display().to_string(),
        });
    }
    Ok(())
}

/// Binds the metrics listener (`--metrics`): a port that is taken is fatal at start, like
/// the console's.
fn metrics_listener(config: &Config, pid: u32) -> Result<helpers::metrics::Metrics, Fatal> {
    let Some(address) = config.metrics else {
        return Ok(helpers::metrics::Metrics::new(
            None,
            &config.name,
            pid,
            (config.uid, config.gid),
        ));
    };
    let spec = crate::config::ListenerSpec {
        name: "metrics".into(),
        address: crate::config::Address::tcp(address),
        options: Default::default(),
    };
    let mut bound = listeners::bind_all(std::slice::from_ref(&spec), 128).map_err(|e| {
        Fatal::Bind(BindError {
            flag: "--metrics".into(),
            ..e
        })
    })?;
    let listener = bound.remove(0);
    let shown = listener.bound.trim_start_matches("tcp://").to_string();
    log::info!("metrics on http://{shown}/metrics");
    Ok(helpers::metrics::Metrics::new(
        Some((listener.fd, shown)),
        &config.name,
        pid,
        (config.uid, config.gid),
    ))
}

/// `--log-output file:PATH`: the logger will find the same directory and opener, or the
/// start stops here with the reason (the logger would only drop every line).
fn check_log_file(config: &Config) -> Result<(), Fatal> {
    let crate::config::LogOutput::File(path) = &config.log.output else {
        return Ok(());
    };
    let logger = crate::roles::switch_to(config.uid, config.gid)
        .map_or_else(|| nix::unistd::geteuid().as_raw(), |(uid, _)| uid);
    let root = nix::unistd::geteuid().is_root();
    crate::logfile::LogDir::find(path)
        .and_then(|dir| {
            crate::logfile::who_opens(&dir, logger, root)?;
            dir.check_file()
        })
        .map_err(|problem| Fatal::LogFile {
            path: path.display().to_string(),
            problem,
        })
}

fn admin_console(
    config: &Config,
    admin: &crate::config::Admin,
    control_path: &Path,
) -> Result<helpers::shell::Shell, Fatal> {
    let spec = crate::config::ListenerSpec {
        name: "admin".into(),
        address: crate::config::Address::tcp(admin.address),
        options: Default::default(),
    };
    let mut bound = listeners::bind_all(std::slice::from_ref(&spec), 128).map_err(|e| {
        Fatal::Bind(BindError {
            flag: "--admin".into(),
            ..e
        })
    })?;
    let listener = bound.remove(0);
    let identity = crate::tls::load_or_create_identity(
        &config.state_dir,
        admin.cert.as_deref(),
        admin.key.as_deref(),
    )
    .map_err(|e| Fatal::AdminIdentity(e.to_string()))?;
    log::info!(
        "admin console on {} (TLS certificate SHA-256 fingerprint {})",
        listener.bound.trim_start_matches("tcp://"),
        identity.fingerprint_hex
    );
    // A shell worker of another uid cannot use control.sock (the primary accepts only its own
    // uid and root): its programs reach the primary through channels they inherit from it,
    // forwarded over its link (see `shell::proxy`); no path is made for them.
    let drop_to = helpers::shell::drop_to(admin);
    if let Some((uid, gid)) = drop_to {
        if !nix::unistd::geteuid().is_root() {
            return Err(Fatal::AdminUser { uid, gid });
        }
    }
    let spec = helpers::shell::spec(
        config,
        control_path,
        identity.cert_pem,
        identity.key_pem,
        admin.password_hash.clone(),
    );
    Ok(helpers::shell::Shell::new(spec, listener.fd, drop_to))
}

impl Primary {
    /// Watches the configured files again (`--watch`), replacing the watches there were.
    fn watch_files(&mut self) {
        if let Some(old) = self.watch.take() {
            old.deregister(&self.poll);
        }
        if self.config.watch.is_empty() {
            return;
        }
        let trusted = watch::Trusted::new((self.config.uid, self.config.gid));
        watch::warn_untrusted(&self.config.watch, &trusted, "watched");
        match watch::Watch::new(&self.config.watch, self.config.watch_delay, &self.poll) {
            Ok(w) => {
                let shown: Vec<String> = self
                    .config
                    .watch
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect();
                log::info!(
                    "watching {} (a reload once quiet for {:?})",
                    shown.join(", "),
                    self.config.watch_delay
                );
                self.watch = Some(w);
            }
            Err(e) => log::warn!("{}; no file is watched", crate::error::lower(&e)),
        }
    }
}
