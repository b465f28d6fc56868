//! The new image's side of an upgrade in place: read the hand-off, rebuild the configuration
//! from it, and the primary around a fresh poll.

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use reloadsup_protocol::upgrade::{self as image, Handoff};

use crate::error::lower;
use crate::primary::state::roles::Roles;
use crate::primary::{listeners::Listener, Primary, Spare};
use crate::primary::{CONTROL, FIRST_LINK, SIGNALS};
use crate::sys;
use mio::{Interest, Poll};
use signal_hook::consts::signal::*;
use signal_hook_mio::v1_0::Signals;

use super::image::{epochs_from, state_from};
use super::{Clock, MAX_HANDOFF, VERSION};

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
        crate::primary::reconfigure::merge(&start, build(&h.config_text)?)
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

impl Primary {
    /// The new image: rebuilds the primary from the hand-off around a fresh poll. Signals
    /// stay blocked (as the old image left them) until the handlers are installed.
    pub(in crate::primary) fn resume(
        h: Handoff,
    ) -> Result<(Primary, Vec<crate::primary::Action>), String> {
        let clock = Clock::now();
        sys::ensure_std_fds().map_err(|e| format!("open /dev/null: {}", lower(&e)))?;
        let (args, mut config) = config_of(&h)?;
        let epochs = epochs_from(&h, &config)?;
        let pid = std::process::id();
        let poll = Poll::new().map_err(|e| format!("create the poll: {}", lower(&e)))?;
        let loader = crate::primary::loading::Loader::new(&poll)
            .map_err(|e| format!("create a waker: {}", lower(&e)))?;
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
        let conns = crate::primary::Connections::resume(&poll, h.control, &mut take)?;
        // The state directory is where the running instance's control socket is: a new
        // default (root's moved from /tmp to /run) must not move an instance that runs.
        if let Some(dir) = kept_state_dir(&config.state_dir, conns.listener_path()) {
            log::info!(
                "upgrade: the state directory stays {} (the new default is {})",
                dir.display(),
                config.state_dir.display()
            );
            config.state_dir = dir;
        }
        let notify = match h.notify {
            Some(image) => {
                let mut n = crate::primary::notify::NotifySockets::new(
                    &config.state_dir,
                    config.uid,
                    config.gid,
                );
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
            crate::primary::helpers::keeper::Keeper::resume(pid, h.keeper, keeper_link, &clock);
        let (shell, shell_timer) = match h.shell {
            Some(image) => {
                let listener = take(image.listener_fd, "the console's listener")?;
                let (shell, timer) =
                    crate::primary::helpers::shell::Shell::resume(image, listener, &clock);
                (Some(shell), Some(timer))
            }
            None => (None, None),
        };
        let (logs, logger_timer) = match h.logger {
            Some(image) => {
                let (logs, timer) = crate::primary::helpers::logger::Logs::resume(
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
        let (metrics, metrics_timer, restarts_total) =
            crate::primary::helpers::metrics::Metrics::resume(
                h.metrics,
                &config.name,
                pid,
                (config.uid, config.gid),
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
                .and_then(|m| crate::primary::manager::Manager::resume(m, &clock)),
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
            inspector: crate::primary::helpers::inspector::Inspector::new(),
            loader,
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
            primary
                .pending
                .insert(crate::primary::helpers::logger::LOGGER.0);
        }
        if primary.metrics.enabled() {
            primary
                .pending
                .insert(crate::primary::helpers::metrics::METRICS.0);
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
        let done = format!(
            "upgraded in place to reloadsup {VERSION} (pid {pid}, upgrade {})",
            primary.upgrades
        );
        primary.load_config(
            crate::primary::loading::After::Upgraded {
                waiters: h.waiters,
                done,
            },
            &mut actions,
        );
        for who in h.restarters {
            log::info!("restart: the primary is upgraded; reloading every worker");
            primary.restart_after_upgrade(who, &mut actions);
        }
        Ok((primary, actions))
    }
}

/// The directory of the control socket the hand-off carried, when it is not `configured`:
/// where the running instance keeps its state.
fn kept_state_dir(configured: &Path, control: Option<PathBuf>) -> Option<PathBuf> {
    let dir = control?.parent()?.to_path_buf();
    (dir != configured).then_some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 18, item 10: root's default moved from /tmp/reloadsup-0 to /run/reloadsup; an
    /// instance upgraded in place keeps the directory its control socket is in.
    #[test]
    fn an_upgraded_instance_keeps_its_state_directory() {
        let now = Path::new("/run/reloadsup/web");
        let old = PathBuf::from("/tmp/reloadsup-0/web/control.sock");
        assert_eq!(
            kept_state_dir(now, Some(old)),
            Some(PathBuf::from("/tmp/reloadsup-0/web"))
        );
        assert_eq!(kept_state_dir(now, Some(now.join("control.sock"))), None);
        assert_eq!(kept_state_dir(now, None), None);
    }
}
