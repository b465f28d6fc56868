//! A reload re-reads the configuration (issue 8, item 5): the `--config` file is read again,
//! merged under the original command line, validated, compared with the running config, and
//! applied before the new generation starts, or refused with nothing changed.
//!
//! What it owns is plain data, so an upgrade in place can carry it across an exec: the
//! [`Epoch`]s (the worker spec of a run of generations: command, environment, and which
//! listeners, by canonical bound address, they get at fd 3..) and, in the primary, the pool of
//! open listeners keyed by that same address. A generation keeps the listener set it was given
//! for its whole life; a listener no epoch of a live generation names is closed, never before
//! (promise 1: the primary never closes a socket a live generation uses).
//!
//! The comparison ([`plan_listeners`], [`changes`], [`merge`]) is pure and unit-tested; the
//! one place with effects is [`Primary::reconfigure`], which binds new listeners first, so a
//! bind error refuses the reload before anything else is touched.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::time::Instant;

use reloadsup_protocol::{Outcome, Progress, ReloadOutcome};

use super::listeners::{self, Listener};
use super::state::{Action, Event, Requester, Settings};
use super::{notify, Primary};
use crate::config::{Address, Config, ListenerSpec, ReadyMode};

/// The worker spec of generations `from` up to the next epoch's `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Epoch {
    pub from: u64,
    pub argv: Vec<OsString>,
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    pub einhorn_env: bool,
    /// `LISTEN_FDS` and the like are set (not with `--no-listen-env`).
    pub listen_env: bool,
    /// `(name, bound address)` in `--listen` order: fd 3.. and `LISTEN_FDNAMES` of these
    /// generations. The bound address names a socket of the primary's pool.
    pub listeners: Vec<(String, String)>,
}

impl Epoch {
    pub(crate) fn new(from: u64, config: &Config, bound: &[String]) -> Epoch {
        Epoch {
            from,
            argv: config.argv(),
            env: config
                .env
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
            einhorn_env: config.einhorn_env,
            listen_env: config.listen_env,
            listeners: config
                .listeners
                .iter()
                .zip(bound)
                .map(|(spec, bound)| (spec.name.clone(), bound.clone()))
                .collect(),
        }
    }
}

/// The epoch `generation` runs with: the newest that starts at or before it. Epochs are kept in
/// ascending `from` order and the first one covers every earlier generation.
pub(crate) fn epoch_of(epochs: &[Epoch], generation: u64) -> Option<&Epoch> {
    epochs
        .iter()
        .rev()
        .find(|e| e.from <= generation)
        .or(epochs.first())
}

/// Forgets the epochs no live generation runs with (the newest is always kept, since the next
/// generation will run with it).
pub(crate) fn retain_live(epochs: &mut Vec<Epoch>, live: &[u64]) {
    let ranges: Vec<(u64, u64)> = epochs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let until = epochs.get(i + 1).map_or(u64::MAX, |n| n.from);
            // The first epoch also covers generation 0 and anything before it.
            let from = if i == 0 { 0 } else { e.from };
            (from, until)
        })
        .collect();
    let last = epochs.len().saturating_sub(1);
    let mut i = 0;
    epochs.retain(|_| {
        let (from, until) = ranges[i];
        let keep = i == last || live.iter().any(|g| (from..until).contains(g));
        i += 1;
        keep
    });
}

/// Bound addresses in `pool` that no epoch names any more: closed now.
pub(crate) fn unused<'a>(pool: &'a [String], epochs: &[Epoch]) -> Vec<&'a str> {
    pool.iter()
        .filter(|b| {
            !epochs
                .iter()
                .any(|e| e.listeners.iter().any(|(_, l)| l == *b))
        })
        .map(String::as_str)
        .collect()
}

/// Listen options as written after `?`, or "none".
fn shown(o: &crate::config::ListenOptions) -> String {
    let s = o.to_string();
    if s.is_empty() {
        "none".into()
    } else {
        s
    }
}

/// How the new listener set maps onto the sockets of the current one.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ListenerPlan {
    /// For each new spec in order: the bound address of the socket it keeps, or `None` when it
    /// must be bound.
    pub sockets: Vec<Option<String>>,
    /// The bound addresses of current listeners the new config no longer has.
    pub removed: Vec<String>,
}

/// One listener of the running config: its name, its address as configured, as bound.
pub(crate) type Current<'a> = (&'a str, &'a Address, &'a str);

/// Matches the new specs to the running listeners by address: an unchanged address keeps its
/// socket (whatever its name now), so its accept queue survives. A `tcp://HOST:0` listener has
/// no address of its own until bound, so it is the same one only under the same name.
pub(crate) fn plan_listeners(current: &[Current<'_>], new: &[ListenerSpec]) -> ListenerPlan {
    let mut taken = vec![false; current.len()];
    let mut sockets = Vec::with_capacity(new.len());
    for spec in new {
        let any_port = spec.address.any_port();
        let found = current.iter().enumerate().position(|(i, (name, addr, _))| {
            !taken[i] && **addr == spec.address && (!any_port || *name == spec.name)
        });
        sockets.push(found.map(|i| {
            taken[i] = true;
            current[i].2.to_string()
        }));
    }
    let removed = current
        .iter()
        .zip(&taken)
        .filter(|(_, t)| !**t)
        .map(|((_, _, bound), _)| bound.to_string())
        .collect();
    ListenerPlan { sockets, removed }
}

/// What differs between the running config and the re-read one.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    /// Keys whose new value takes effect (listeners are planned separately).
    pub changed: Vec<&'static str>,
    /// Keys that changed but cannot change at run time: the running value is kept.
    pub fixed: Vec<&'static str>,
    /// The shell worker must be replaced (custom commands or the password hash changed).
    pub shell: bool,
}

/// Compares two validated configs key by key.
pub(crate) fn changes(old: &Config, new: &Config) -> Changes {
    let mut c = Changes::default();
    let mut check = |key: &'static str, differs: bool, live: bool| {
        if differs {
            if live {
                c.changed.push(key);
            } else {
                c.fixed.push(key);
            }
        }
    };
    check("command", old.command != new.command, true);
    check("env", old.env != new.env, true);
    check("einhorn-env", old.einhorn_env != new.einhorn_env, true);
    check("no-listen-env", old.listen_env != new.listen_env, true);
    check("workers", old.workers != new.workers, true);
    check("prespawn", old.prespawn != new.prespawn, true);
    check("ready", old.ready != new.ready, true);
    check(
        "ready-timeout",
        old.ready_timeout != new.ready_timeout,
        true,
    );
    check("stop-signal", old.stop_signal != new.stop_signal, true);
    check(
        "stop-signal-to",
        old.stop_signal_to != new.stop_signal_to,
        true,
    );
    check(
        "graceful-timeout",
        old.graceful_timeout != new.graceful_timeout,
        true,
    );
    check("stable-for", old.stable_for != new.stable_for, true);
    check("canary", old.canary != new.canary, true);
    check("restart", old.restart != new.restart, true);
    check("watch", old.watch != new.watch, true);
    check("watch-delay", old.watch_delay != new.watch_delay, true);
    // Only listeners bound from now on get it; a kept socket keeps its queue length.
    check("backlog", old.backlog != new.backlog, true);
    let (old_admin, new_admin) = (old.admin.as_ref(), new.admin.as_ref());
    let commands = old.commands != new.commands;
    let hash = match (old_admin, new_admin) {
        (Some(a), Some(b)) => a.password_hash != b.password_hash,
        _ => false,
    };
    // Without a console there is no shell worker to give new commands to.
    let console = old_admin.is_some();
    check("commands", commands, console);
    check("admin-password-hash", hash, console);
    c.shell = console && (commands || hash);
    check("name", old.name != new.name, false);
    check("state-dir", old.state_dir != new.state_dir, false);
    check("user", old.uid != new.uid, false);
    check("group", old.gid != new.gid, false);
    check("pidfile", old.pidfile != new.pidfile, false);
    // A process attribute set once at start (kept across an upgrade's exec).
    check("subreaper", old.subreaper != new.subreaper, false);
    check("metrics", old.metrics != new.metrics, false);
    // The logger worker and the pipes are set up at start: a restart of the supervisor
    // (not an upgrade in place, which keeps them) changes them.
    check("log-output", old.log.output != new.log.output, false);
    check("log-format", old.log.json != new.log.json, false);
    check(
        "log-rotate",
        (old.log.rotate_size, old.log.rotate_keep) != (new.log.rotate_size, new.log.rotate_keep),
        false,
    );
    check("log-ring", old.log.ring != new.log.ring, false);
    let admin_differs = match (old_admin, new_admin) {
        (None, None) => false,
        (Some(a), Some(b)) => a.address != b.address,
        _ => true,
    };
    check("admin", admin_differs, false);
    if let (Some(a), Some(b)) = (old_admin, new_admin) {
        check("admin-cert", a.cert != b.cert || a.key != b.key, false);
        check("admin-user", (a.uid, a.gid) != (b.uid, b.gid), false);
    }
    c
}

/// The config that runs after a reload: `new`, except what cannot change at run time, which
/// stays as it was.
pub(crate) fn merge(old: &Config, mut new: Config) -> Config {
    new.name = old.name.clone();
    new.state_dir = old.state_dir.clone();
    new.uid = old.uid;
    new.gid = old.gid;
    new.pidfile = old.pidfile.clone();
    new.subreaper = old.subreaper;
    new.metrics = old.metrics;
    new.log = old.log.clone();
    new.start_text = old.start_text.clone();
    new.admin = match (&old.admin, new.admin) {
        (Some(a), Some(b)) => Some(crate::config::Admin {
            password_hash: b.password_hash,
            ..a.clone()
        }),
        (old, _) => old.clone(),
    };
    if old.admin.is_none() {
        new.commands = old.commands.clone();
    }
    new
}

fn old_watch_differs(old: &Config, new: &Config) -> bool {
    old.watch != new.watch || old.watch_delay != new.watch_delay
}

/// `text` with its lines joined by "; ".
fn one_line(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines.join("; ")
}

/// The state machine's settings of a config.
pub(crate) fn settings(config: &Config) -> Settings {
    Settings {
        ready: config.ready,
        ready_timeout: config.ready_timeout,
        graceful_timeout: config.graceful_timeout,
        stable_for: config.stable_for,
        restart: config.restart,
        canary: config.canary,
        stop_signal: config.stop_signal as i32,
    }
}

impl Primary {
    /// Applies `new`, the config a load read off the loop (see [`super::loading`]; `None`:
    /// there is no config file), for a reload (or a restart, or an upgrade) whose progress goes
    /// to `waiters`; the reload then starts its generation. `Err` is the refused reload's
    /// outcome: nothing was changed.
    pub(super) fn reconfigure(
        &mut self,
        now: Instant,
        new: Option<Result<Config, String>>,
        waiters: &[Requester],
        actions: &mut Vec<Action>,
    ) -> Result<(), ReloadOutcome> {
        let result = self.reconfigure_with(now, new, waiters, actions);
        if let Err(refused) = &result {
            // Shown by `ctl status` as the last reload: after a SIGHUP nobody else hears why.
            self.state.last_reload = Some(refused.clone());
        }
        result
    }

    fn reconfigure_with(
        &mut self,
        now: Instant,
        new: Option<Result<Config, String>>,
        waiters: &[Requester],
        actions: &mut Vec<Action>,
    ) -> Result<(), ReloadOutcome> {
        let refuse = |reason: String| {
            log::warn!("reload refused: {reason}; nothing changed");
            ReloadOutcome {
                // The generation this reload would have started.
                generation: self.state.next_generation,
                outcome: Outcome::Refused,
                reason,
            }
        };
        let new = match new {
            None => return Ok(()),
            // toml's messages span lines; one line reads better in the log and in `status`.
            Some(Err(e)) => return Err(refuse(one_line(&e))),
            Some(Ok(new)) => new,
        };
        let changes = changes(&self.config, &new);
        let newest: &[(String, String)] = self.epochs.last().map_or(&[], |e| &e.listeners);
        // The running config's listeners first, under their current names; then the ones only
        // a draining generation still holds: re-adding one of those takes its socket back
        // (binding its address again would fail, or for port 0 give another port).
        let mut current: Vec<Current<'_>> = newest
            .iter()
            .filter_map(|(name, bound)| {
                let l = self.listeners.iter().find(|l| &l.bound == bound)?;
                Some((name.as_str(), &l.address, bound.as_str()))
            })
            .collect();
        current.extend(
            self.listeners
                .iter()
                .filter(|l| !newest.iter().any(|(_, b)| *b == l.bound))
                .map(|l| (l.name.as_str(), &l.address, l.bound.as_str())),
        );
        let plan = plan_listeners(&current, &new.listeners);
        // Bind every new listener before anything changes: one that cannot be bound refuses
        // the reload, and the ones bound before it are closed again (they were never used).
        let wanted: Vec<ListenerSpec> = new
            .listeners
            .iter()
            .zip(&plan.sockets)
            .filter(|(_, s)| s.is_none())
            .map(|(spec, _)| spec.clone())
            .collect();
        if let Some(spec) = wanted.iter().find(|s| {
            matches!(
                s.address,
                Address::Inet {
                    host: crate::address::Host::Name(_),
                    ..
                }
            )
        }) {
            return Err(refuse(format!(
                "config key 'listen': {spec}: a host name is resolved only when reloadsup starts, never by the running primary, which does not wait on DNS; write the IP address"
            )));
        }
        let mut fresh = listeners::bind_all(&wanted, new.backlog)
            .map_err(|e| {
                // "--listen NAME: unable to bind ..." at start; here the name is the file's.
                let e = e.to_string();
                refuse(format!(
                    "config key 'listen': {}",
                    e.strip_prefix("--listen ").unwrap_or(&e)
                ))
            })?
            .into_iter();
        let bound: Vec<String> = plan
            .sockets
            .iter()
            .map(|s| match s {
                Some(b) => Some(b.clone()),
                None => fresh.next().map(|l: Listener| {
                    log::info!("reload: listener {} bound to {}", l.name, l.bound);
                    let b = l.bound.clone();
                    self.listeners.push(l);
                    b
                }),
            })
            .collect::<Option<_>>()
            .ok_or_else(|| refuse("a new listener was not bound".into()))?;

        // From here on the reload goes ahead.
        for spec in &new.listeners {
            let kept = self.config.listeners.iter().find(|o| {
                o.address == spec.address && (!o.address.any_port() || o.name == spec.name)
            });
            if let Some(old) = kept.filter(|o| o.options != spec.options) {
                let text = format!(
                    "listener {} keeps its socket, so its options stay '{}' (a new socket would get '{}'): rebind it under another address, or restart reloadsup",
                    spec.name,
                    shown(&old.options),
                    shown(&spec.options)
                );
                log::warn!("reload: {text}");
                actions.push(Action::Progress {
                    waiters: waiters.to_vec(),
                    progress: Progress::Text(text),
                });
            }
        }
        for key in &changes.fixed {
            let text = format!(
                "config key '{key}' cannot change at run time; keeping the running value until reloadsup is restarted"
            );
            log::warn!("reload: {text}");
            actions.push(Action::Progress {
                waiters: waiters.to_vec(),
                progress: Progress::Text(text),
            });
        }
        let dropped = plan
            .removed
            .iter()
            .filter(|b| newest.iter().any(|(_, n)| n == *b));
        for bound in dropped {
            log::info!(
                "reload: listener {bound} is no longer configured; closed once no generation uses it"
            );
        }
        if !changes.changed.is_empty() {
            log::info!("reload: new {}", changes.changed.join(", "));
        }
        let old_workers = self.config.workers;
        let old_prespawn = self.config.prespawn;
        let config = merge(&self.config, new);
        // The generation the reload is about to start, or the one a reload already starting
        // will start next: coalesced requests share it, and the latest read wins.
        let from = self.state.next_generation;
        let epoch = Epoch::new(from, &config, &bound);
        match self.epochs.last_mut() {
            Some(last) if last.from == from => *last = epoch,
            _ => self.epochs.push(epoch),
        }
        self.state.settings = settings(&config);
        if config.ready == ReadyMode::Notify && self.notify.is_none() {
            let sockets = notify::NotifySockets::new(&config.state_dir, config.uid, config.gid);
            self.notify = Some(sockets);
        }
        if config.workers != old_workers {
            // A scale keeps the slots consistent even while a generation is starting; the new
            // generation then starts with every slot, and the old one drains them all.
            actions.extend(self.state.handle(now, Event::Scale(config.workers)));
        }
        if config.prespawn != old_prespawn {
            // Closing a spare's link retires it; missing ones are started a little later.
            self.spares.truncate(config.prespawn as usize);
            self.role(super::state::roles::RoleEvent::Prespawn(config.prespawn));
        }
        if changes.shell {
            if let (Some(shell), Some(admin)) = (self.shell.as_mut(), config.admin.as_ref()) {
                log::info!("reload: new console commands or password; replacing the shell worker");
                shell.reconfigure(config.commands.clone(), admin.password_hash.clone());
                self.role(super::state::roles::RoleEvent::Replace(
                    super::state::roles::Role::Shell,
                ));
            }
        }
        let rewatch = old_watch_differs(&self.config, &config);
        self.config = config;
        if rewatch {
            self.watch_files();
        }
        self.forget_unused();
        Ok(())
    }

    /// Forgets epochs no live generation runs with, and closes the listeners no epoch names.
    pub(super) fn forget_unused(&mut self) {
        let mut live: Vec<u64> = self.state.processes.iter().map(|p| p.generation).collect();
        live.push(self.state.serving);
        live.extend(self.state.starting.as_ref().map(|s| s.generation));
        if self.epochs.len() > 1 {
            retain_live(&mut self.epochs, &live);
        }
        let pool: Vec<String> = self.listeners.iter().map(|l| l.bound.clone()).collect();
        let gone: Vec<String> = unused(&pool, &self.epochs)
            .into_iter()
            .map(str::to_string)
            .collect();
        for bound in gone {
            if let Some(i) = self.listeners.iter().position(|l| l.bound == bound) {
                let l = self.listeners.remove(i);
                log::info!(
                    "listener {} ({bound}) closed: no generation uses it",
                    l.name
                );
                if let Some(path) = l.own_path() {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RunArgs;
    use clap::Parser;

    fn parse(args: &[&str]) -> Config {
        let mut argv = vec!["reloadsup"];
        argv.extend_from_slice(args);
        Config::from_args(RunArgs::try_parse_from(argv).unwrap()).unwrap()
    }

    fn spec(name: &str, addr: &str) -> ListenerSpec {
        ListenerSpec {
            name: name.into(),
            address: Address::parse(addr).unwrap(),
            options: Default::default(),
        }
    }

    #[test]
    fn an_unchanged_address_keeps_its_socket_added_ones_are_bound_removed_ones_listed() {
        let a = Address::parse("tcp://127.0.0.1:8001").unwrap();
        let b = Address::parse("tcp://127.0.0.1:8002").unwrap();
        let u = Address::parse("unix:/tmp/x.sock").unwrap();
        let current: Vec<Current<'_>> = vec![
            ("web", &a, "tcp://127.0.0.1:8001"),
            ("old", &b, "tcp://127.0.0.1:8002"),
            ("sock", &u, "unix:/tmp/x.sock"),
        ];
        let new = [
            spec("new", "tcp://127.0.0.1:8003"),
            // Renamed, same address: the same socket under its new name.
            spec("www", "tcp://127.0.0.1:8001"),
            spec("sock", "unix:/tmp/x.sock"),
        ];
        let plan = plan_listeners(&current, &new);
        assert_eq!(
            plan.sockets,
            vec![
                None,
                Some("tcp://127.0.0.1:8001".to_string()),
                Some("unix:/tmp/x.sock".to_string())
            ]
        );
        assert_eq!(plan.removed, vec!["tcp://127.0.0.1:8002".to_string()]);
    }

    #[test]
    fn an_any_port_listener_is_the_same_one_only_under_its_name() {
        let any = Address::parse("tcp://127.0.0.1:0").unwrap();
        let current: Vec<Current<'_>> = vec![
            ("web", &any, "tcp://127.0.0.1:40001"),
            ("api", &any, "tcp://127.0.0.1:40002"),
        ];
        let new = [
            spec("api", "tcp://127.0.0.1:0"),
            spec("other", "tcp://127.0.0.1:0"),
        ];
        let plan = plan_listeners(&current, &new);
        assert_eq!(
            plan.sockets,
            vec![Some("tcp://127.0.0.1:40002".to_string()), None]
        );
        assert_eq!(plan.removed, vec!["tcp://127.0.0.1:40001".to_string()]);
        // Nothing changed: everything kept, nothing removed.
        let same = [
            spec("web", "tcp://127.0.0.1:0"),
            spec("api", "tcp://127.0.0.1:0"),
        ];
        let plan = plan_listeners(&current, &same);
        assert!(plan.sockets.iter().all(Option::is_some) && plan.removed.is_empty());
    }

    #[test]
    fn changed_keys_take_effect_and_fixed_ones_are_reported() {
        let old = parse(&["-n", "2", "--env", "A=1", "--", "/bin/sh"]);
        let same = parse(&["-n", "2", "--env", "A=1", "--", "/bin/sh"]);
        assert_eq!(changes(&old, &same), Changes::default());
        let new = parse(&[
            "-n",
            "3",
            "--env",
            "A=2",
            "--ready",
            "immediate",
            "--graceful-timeout",
            "1s",
            "--name",
            "other",
            "--state-dir",
            "/tmp/elsewhere",
            "--",
            "/bin/true",
        ]);
        let c = changes(&old, &new);
        assert_eq!(
            c.changed,
            vec!["command", "env", "workers", "ready", "graceful-timeout"]
        );
        assert_eq!(c.fixed, vec!["name", "state-dir"]);
        assert!(!c.shell);
        let merged = merge(&old, new);
        assert_eq!(merged.name, old.name);
        assert_eq!(merged.state_dir, old.state_dir);
        assert_eq!(merged.workers, 3);
        assert_eq!(merged.env, vec![("A".into(), "2".into())]);
    }

    #[test]
    fn console_commands_and_password_replace_the_shell_but_its_address_is_fixed() {
        let h1 = crate::password::PasswordHash::create(b"one", 1)
            .unwrap()
            .encode();
        let h2 = crate::password::PasswordHash::create(b"two", 1)
            .unwrap()
            .encode();
        let with = |addr: &str, hash: &str| {
            parse(&[
                "--admin",
                addr,
                "--admin-password-hash",
                hash,
                "--",
                "/bin/sh",
            ])
        };
        let old = with("127.0.0.1:9443", &h1);
        let c = changes(&old, &with("127.0.0.1:9443", &h2));
        assert_eq!(c.changed, vec!["admin-password-hash"]);
        assert!(c.shell);
        let new = with("127.0.0.1:9444", &h2);
        let c = changes(&old, &new);
        assert_eq!(c.fixed, vec!["admin"]);
        let merged = merge(&old, new);
        let admin = merged.admin.unwrap();
        assert_eq!(admin.address.port(), 9443, "the address stays");
        assert_eq!(admin.password_hash, h2, "the hash changes");
        // No console before: one in the new config is reported, not started.
        let c = changes(&parse(&["--", "/bin/sh"]), &with("127.0.0.1:9443", &h1));
        assert_eq!(c.fixed, vec!["admin"]);
        assert!(!c.shell);
    }

    fn epoch(from: u64, listeners: &[&str]) -> Epoch {
        Epoch {
            from,
            argv: vec![],
            env: vec![],
            einhorn_env: false,
            listen_env: true,
            listeners: listeners
                .iter()
                .map(|l| (String::new(), l.to_string()))
                .collect(),
        }
    }

    #[test]
    fn a_generation_runs_with_its_epoch_and_a_listener_closes_after_its_last_generation() {
        let mut epochs = vec![epoch(1, &["a", "b"]), epoch(4, &["a", "c"])];
        assert_eq!(epoch_of(&epochs, 1).unwrap().from, 1);
        assert_eq!(epoch_of(&epochs, 3).unwrap().from, 1);
        assert_eq!(epoch_of(&epochs, 4).unwrap().from, 4);
        assert_eq!(epoch_of(&epochs, 9).unwrap().from, 4);
        let pool: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        // Generation 3 still drains: "b" stays open.
        retain_live(&mut epochs, &[3, 4]);
        assert_eq!(epochs.len(), 2);
        assert!(unused(&pool, &epochs).is_empty());
        // Generation 3 is gone: its epoch is forgotten and "b" closes.
        retain_live(&mut epochs, &[4]);
        assert_eq!(epochs.len(), 1);
        assert_eq!(unused(&pool, &epochs), vec!["b"]);
        // The newest epoch is kept even before its first generation runs.
        let mut epochs = vec![epoch(1, &["a"]), epoch(5, &["c"])];
        retain_live(&mut epochs, &[2]);
        assert_eq!(epochs.len(), 2);
        retain_live(&mut epochs, &[]);
        assert_eq!(epochs.len(), 1);
        assert_eq!(epochs[0].from, 5);
    }
}
