//! The `--config` file is read and checked off the loop (issue 18, item 3; issue 19, item 3).
//!
//! Reading it and building a [`Config`] from it may wait: on the file system (a network mount
//! that hangs), on the user and group databases (`--user` through NSS, LDAP), on the `PATH`
//! search for the command. The primary's loop must never wait, so a reload, a restart and the
//! re-read after an upgrade in place ask for a *load*: a thread of its own does the work and
//! wakes the loop when the config is ready, and the loop applies it ([`Primary::reconfigure`])
//! as before. Requests that arrive while a load runs join it and share its result. A load that
//! has not finished after [`LOAD_DEADLINE`] refuses what waited for it; its thread is left to
//! finish on its own, and until it does every new load is refused at once, with the reason.
//!
//! Without `--config` nothing is read: the request goes ahead in the same turn.

use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Poll, Token, Waker};
use reloadsup_protocol::Reply;

use super::state::{Action, Event, Requester};
use super::Primary;
use crate::config::{Config, RunArgs};
use crate::error::lower;

/// The poll token of the loader's waker.
pub(crate) const LOADED: Token = Token(7);

/// How long a load may take before what waits for it is refused.
pub(crate) const LOAD_DEADLINE: Duration = Duration::from_secs(10);

/// What waits for a load, and what to do once the config is in.
#[derive(Debug)]
pub(crate) enum After {
    /// `reload` (`canary`: `reload --canary N`), SIGHUP or a watched file: a new generation.
    Reload { who: Requester, canary: Option<u32> },
    /// The reload of a `restart`, once the primary is upgraded.
    Restart { who: Requester },
    /// An upgrade in place applies the file without a generation; `done` is its answer.
    Upgraded {
        waiters: Vec<Requester>,
        done: String,
    },
}

/// A load on its way.
struct Load {
    started: Instant,
    done: Receiver<Result<Config, String>>,
    waiting: Vec<After>,
}

pub(crate) struct Loader {
    waker: Arc<Waker>,
    current: Option<Load>,
    /// A load that overran its deadline: when it started, and its result still to come.
    stuck: Option<(Instant, Receiver<Result<Config, String>>)>,
}

impl Loader {
    pub(crate) fn new(poll: &Poll) -> std::io::Result<Loader> {
        Ok(Loader {
            waker: Arc::new(Waker::new(poll.registry(), LOADED)?),
            current: None,
            stuck: None,
        })
    }

    /// Whether a load runs, or one that overran has not ended: its thread would hold an exec
    /// (which waits for every other thread to end).
    pub(crate) fn busy(&mut self) -> bool {
        if let Some((_, rx)) = &self.stuck {
            if !matches!(rx.try_recv(), Err(TryRecvError::Empty)) {
                self.stuck = None;
            }
        }
        self.current.is_some() || self.stuck.is_some()
    }

    /// When the load on its way overruns.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.current.as_ref().map(|l| l.started + LOAD_DEADLINE)
    }

    /// Starts reading `args`' config file for `after`, or adds `after` to the load on its way.
    /// `Err` (why) when no load can start now: `after` is handed back to be refused.
    fn begin(&mut self, args: &RunArgs, after: After) -> Result<(), (After, String)> {
        if let Some(load) = &mut self.current {
            load.waiting.push(after);
            return Ok(());
        }
        if let Some((since, rx)) = &self.stuck {
            match rx.try_recv() {
                Err(TryRecvError::Empty) => {
                    let why = format!(
                        "a read of the config file started {} s ago has not finished (a hung file system or user database?)",
                        since.elapsed().as_secs()
                    );
                    return Err((after, why));
                }
                // It finished, too late: its result is not used.
                _ => self.stuck = None,
            }
        }
        let (tx, rx) = mpsc::channel();
        let waker = Arc::clone(&self.waker);
        let args = args.clone();
        let spawned = crate::sys::spawn_quiet_thread("config", move || {
            let result = Config::from_args(args).map_err(|e| e.to_string());
            let _ = tx.send(result);
            let _ = waker.wake();
        });
        if let Err(e) = spawned {
            return Err((
                after,
                format!("unable to start reading the config file: {}", lower(&e)),
            ));
        }
        self.current = Some(Load {
            started: Instant::now(),
            done: rx,
            waiting: vec![after],
        });
        Ok(())
    }

    /// The result of the load on its way, if it is in (or overran at `now`), with what waited.
    fn take(&mut self, now: Instant) -> Option<(Result<Config, String>, Vec<After>)> {
        let load = self.current.as_ref()?;
        let result = match load.done.try_recv() {
            Ok(result) => result,
            Err(TryRecvError::Empty) if now < load.started + LOAD_DEADLINE => return None,
            Err(TryRecvError::Empty) => {
                let load = self.current.take()?;
                let why = format!(
                    "the config file could not be read and checked within {} s (a hung file system or user database?)",
                    LOAD_DEADLINE.as_secs()
                );
                self.stuck = Some((load.started, load.done));
                return Some((Err(why), load.waiting));
            }
            Err(TryRecvError::Disconnected) => Err("the config file's reader stopped".into()),
        };
        let load = self.current.take()?;
        Some((result, load.waiting))
    }
}

impl Primary {
    /// A reload, a restart's reload or an upgrade's re-read: with `--config`, the file is read
    /// off the loop first (see the module); without, it goes ahead now.
    pub(super) fn load_config(&mut self, after: After, actions: &mut Vec<Action>) {
        if self.args.config.is_none() {
            self.after_load(None, vec![after], actions);
            return;
        }
        if let Err((after, why)) = self.loader.begin(&self.args, after) {
            self.after_load(Some(Err(why)), vec![after], actions);
        }
    }

    /// The loader's waker fired, or its deadline passed: applies what came in.
    pub(super) fn on_loaded(&mut self, actions: &mut Vec<Action>) {
        if let Some((result, waiting)) = self.loader.take(Instant::now()) {
            self.after_load(Some(result), waiting, actions);
        }
    }

    /// Applies a load's `result` (`None`: no config file) once, then answers each of `waiting`.
    fn after_load(
        &mut self,
        result: Option<Result<Config, String>>,
        waiting: Vec<After>,
        actions: &mut Vec<Action>,
    ) {
        let now = Instant::now();
        if self.state.is_shutting_down() {
            // A load that finished after a stop began: nothing is applied, nothing starts.
            for after in waiting {
                let whom = match after {
                    After::Reload { who, .. } | After::Restart { who } => vec![who],
                    After::Upgraded { waiters, .. } => waiters,
                };
                for who in whom {
                    self.conns.send_reply(
                        &self.poll,
                        who,
                        Reply::Error("the supervisor is shutting down".into()),
                    );
                }
            }
            return;
        }
        let progress_to: Vec<Requester> = waiting
            .iter()
            .flat_map(|a| match a {
                After::Reload { who, .. } | After::Restart { who } => vec![*who],
                After::Upgraded { waiters, .. } => waiters.clone(),
            })
            .collect();
        let outcome = self.reconfigure(now, result, &progress_to, actions);
        for after in waiting {
            match (after, &outcome) {
                (After::Reload { who, canary }, Ok(())) => {
                    actions.extend(self.state.handle(now, Event::reload(who, canary)));
                }
                (After::Reload { who, .. }, Err(refused)) => {
                    if let Some(m) = &mut self.manager {
                        m.refused(&self.state);
                    }
                    self.metrics.counters.reload_done(refused, now);
                    self.conns
                        .send_reply(&self.poll, who, Reply::Reload(refused.clone()));
                }
                (After::Restart { who }, Ok(())) => {
                    self.restarting.push(who);
                    actions.extend(self.state.handle(now, Event::Reload(who)));
                }
                (After::Restart { who }, Err(refused)) => {
                    self.conns
                        .send_reply(&self.poll, who, Reply::Reload(refused.clone()));
                }
                (After::Upgraded { waiters, mut done }, outcome) => {
                    if let Err(refused) = outcome {
                        done.push_str(&format!(
                            "; the config file was not applied: {}",
                            refused.reason
                        ));
                    }
                    for who in waiters {
                        self.conns
                            .send_reply(&self.poll, who, Reply::Done(done.clone()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn loader() -> (Poll, Loader) {
        let poll = Poll::new().unwrap();
        let loader = Loader::new(&poll).unwrap();
        (poll, loader)
    }

    fn args(config: &std::path::Path) -> RunArgs {
        RunArgs::try_parse_from(["reloadsup", "-c", config.to_str().unwrap(), "--", "/bin/sh"])
            .unwrap()
    }

    fn reload(who: Requester) -> After {
        After::Reload { who, canary: None }
    }

    /// A load is read on its thread and requests made meanwhile share it. One that does not
    /// come back (its thread stands for one stuck on a hung mount: its sender is held) never
    /// holds up the caller: `take` answers at once, refuses at the deadline, and then every
    /// new load is refused at once until that thread ends.
    #[test]
    fn a_load_never_waits_and_one_that_overruns_is_refused() {
        let dir = std::env::temp_dir().join(format!("rs-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "workers = 2\n").unwrap();
        let (_poll, mut l) = loader();
        let began = Instant::now();
        l.begin(&args(&file), reload(1)).unwrap();
        l.begin(&args(&file), reload(2)).unwrap();
        // A joined request shares the load.
        let mut got = None;
        while got.is_none() && began.elapsed() < Duration::from_secs(30) {
            got = l.take(Instant::now());
            std::thread::sleep(Duration::from_millis(5));
        }
        let (result, waiting) = got.expect("the load came in");
        assert_eq!(result.unwrap().workers, 2);
        assert_eq!(waiting.len(), 2);

        // Pretend the next load is past its deadline before its thread could answer: what
        // waited is refused, and a new load is refused at once while the thread is out.
        let (tx, rx) = mpsc::channel();
        l.current = Some(Load {
            started: Instant::now(),
            done: rx,
            waiting: vec![reload(3)],
        });
        assert!(
            l.take(Instant::now()).is_none(),
            "answered before the deadline"
        );
        let (result, waiting) = l
            .take(Instant::now() + LOAD_DEADLINE)
            .expect("refused at the deadline");
        assert!(result.unwrap_err().contains("within"), "the reason");
        assert_eq!(waiting.len(), 1);
        let Err((_, why)) = l.begin(&args(&file), reload(4)) else {
            panic!("a load started while one is stuck")
        };
        assert!(why.contains("has not finished"), "{why}");
        // Once the stuck one ends, loads start again.
        drop(tx);
        assert!(l.begin(&args(&file), reload(5)).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
