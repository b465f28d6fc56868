//! `--ready listening`: a starting worker is ready once it, or another of its processes, waits
//! for connections on one of the listeners reloadsup gave its generation.
//!
//! The primary owns only the scan timer and the pacing; the look itself (into `/proc` and the
//! kernel's TCP socket table) runs in the inspector (`roles/inspector`), never on the loop
//! (issue 18, item 2). While a worker of `--ready listening` is starting, every [`SCAN_EVERY`]
//! the inspector is asked about every starting worker, unless it has not answered the last
//! request yet; at rest there is no timer and no inspector.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reloadsup_protocol::{Inspected, Looked};

use super::state::{Event, Phase};
use super::{reconfigure, Primary};
use crate::config::ReadyMode;
use crate::roles::inspector::{socket_inode, tcp_address};

/// How often a starting worker is looked at.
pub(crate) const SCAN_EVERY: Duration = Duration::from_millis(15);

/// A scan spends at most this share of the time in sock_diag dumps: after a scan whose dumps
/// took D, the next dump waits `PACE * D`. A dump walks the kernel's whole TCP table (about
/// 1 ms here, and 7.5 ms with 53 000 TIME_WAIT connections), so under load the look runs
/// every few scans rather than every scan.
const PACE: u32 = 4;

impl Primary {
    /// Arms the scan timer while a worker waits to be seen listening, and disarms it once none
    /// does: called at the top of every turn.
    pub(super) fn arm_listening(&mut self, now: Instant) {
        let waiting = self.state.settings.ready == ReadyMode::Listening
            && self
                .state
                .processes
                .iter()
                .any(|p| p.phase == Phase::Starting);
        self.listening_at = match (waiting, self.listening_at) {
            (false, _) => None,
            (true, Some(t)) => Some(t),
            (true, None) => Some(now + SCAN_EVERY),
        };
    }

    /// When due, asks the inspector about every starting worker (see [`Primary::on_looked`]
    /// for its answer).
    pub(super) fn scan_listening(&mut self, now: Instant, actions: &mut Vec<super::Action>) {
        if self.listening_at.is_none_or(|t| t > now) {
            return;
        }
        self.listening_at = None;
        if self.state.settings.ready != ReadyMode::Listening {
            return;
        }
        // Our own listeners' inodes and addresses: fstat and getsockname on fds we hold.
        let mut by_bound: HashMap<&str, (u64, Option<SocketAddr>)> = HashMap::new();
        for l in &self.listeners {
            if let Some(ino) = socket_inode(&l.fd) {
                by_bound.insert(l.bound.as_str(), (ino, tcp_address(&l.fd)));
            }
        }
        let mut workers = Vec::new();
        for p in self
            .state
            .processes
            .iter()
            .filter(|p| p.phase == Phase::Starting)
        {
            let Some(epoch) = reconfigure::epoch_of(&self.epochs, p.generation) else {
                continue;
            };
            let mut w = Inspected {
                pid: p.pid,
                cgroup: self.keeper.worker_cgroup(p.pid),
                inodes: Vec::new(),
                tcp: Vec::new(),
            };
            for (ino, tcp) in epoch
                .listeners
                .iter()
                .filter_map(|(_, bound)| by_bound.get(bound.as_str()))
            {
                w.inodes.push(*ino);
                w.tcp.extend(tcp);
            }
            workers.push(w);
        }
        // One process a scan gets the sock_diag look, and only once the pace allows it.
        let may_dump = self.listening_dump_at.is_none_or(|t| t <= now);
        let blind = self.inspector.blind.clone();
        self.inspector.ask(
            &self.poll,
            now,
            self.pid,
            (self.config.uid, self.config.gid),
            may_dump,
            workers,
        );
        if self.inspector.blind != blind {
            actions.extend(self.state.handle(
                now,
                Event::Blind {
                    why: self.inspector.blind.clone(),
                },
            ));
        }
    }

    /// The inspector's link is readable: the workers it saw listening are ready.
    pub(super) fn on_looked(&mut self, actions: &mut Vec<super::Action>) {
        let now = Instant::now();
        let blind = self.inspector.blind.clone();
        let looked = self.inspector.on_link(now);
        if self.inspector.blind != blind {
            actions.extend(self.state.handle(
                now,
                Event::Blind {
                    why: self.inspector.blind.clone(),
                },
            ));
        }
        let Some(Looked {
            seen, dumped_ns, ..
        }) = looked
        else {
            return;
        };
        if dumped_ns > 0 {
            self.listening_dump_at = Some(now + Duration::from_nanos(dumped_ns) * PACE);
        }
        for s in seen {
            let Some(p) = self.state.process(s.worker) else {
                continue;
            };
            if p.phase != Phase::Starting {
                continue;
            }
            log::debug!(
                "worker {} of generation {} (pid {}) is listening: pid {} {}",
                p.slot,
                p.generation,
                s.worker,
                s.pid,
                reloadsup_protocol::notify::sanitize_log_line(&s.how)
            );
            actions.extend(self.state.handle(now, Event::Listening { pid: s.worker }));
        }
    }
}
