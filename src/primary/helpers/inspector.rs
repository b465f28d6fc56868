//! The primary's side of the inspector (`roles/inspector`), with `--ready listening`: the
//! primary never reads another process's `/proc` files, fds or memory itself (issue 18, item
//! 2); it asks the inspector and goes on with its loop.
//!
//! Started at the first need (a worker of `--ready listening` is starting) and left to exit on
//! its own once idle; one request at a time. An answer is believed only for the workers its
//! request named. An inspector that has not answered within [`OVERRUN`] (a worker made a read
//! wait, or the inspector misbehaves) is killed and replaced after a back-off; while none can
//! look, a starting worker is rolled back at `--ready-timeout`, with the reason.

use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use mio::{Poll, Token};
use nix::sys::signal::Signal;
use reloadsup_protocol::{self as proto, Inspect, Inspected, Looked, PROTOCOL_VERSION};

use super::{as_workers, Helper, LinkKind};
use crate::error::lower;
use crate::sys;

/// The poll token of the inspector's link.
pub(crate) const INSPECTOR: Token = Token(6);

/// How long one look may take. A scan is bounded in work and takes milliseconds; one that
/// takes this long waits on a worker.
pub(crate) const OVERRUN: Duration = Duration::from_secs(2);

/// The first wait before another inspector starts after one failed; doubled up to
/// [`MAX_BACKOFF`], and forgotten after an answer.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// Killed inspectors not reaped yet (a read the kernel does not let a signal end) beyond which
/// none is started: a worker that freezes every look must not fill the process table.
const MAX_UNREAPED: usize = 2;

/// The largest answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// At most this many workers are named in one request, a window that moves on at each request
/// so that every starting worker is looked at in turn: a request, and its answer, stay small
/// whatever `--workers` is, and one worker that is slow to look at holds up only its window.
const WINDOW: usize = 64;

/// The largest request sent (a SOCK_SEQPACKET message must fit the socket's send buffer,
/// about 208 KiB): a window of workers with many listeners each is halved until it fits.
const MAX_REQUEST: usize = 128 * 1024;

/// A request on its way.
struct Asked {
    id: u64,
    at: Instant,
    workers: Vec<u32>,
}

pub(crate) struct Inspector {
    helper: Option<Helper>,
    asked: Option<Asked>,
    next_id: u64,
    /// Where the next window of starting workers begins.
    offset: usize,
    backoff: Duration,
    /// No inspector is started before this (after a failure).
    not_before: Option<Instant>,
    /// Killed inspectors that were not reaped yet.
    killed: Vec<u32>,
    /// Why no inspector can look now, when none can (for the rollback's reason).
    pub blind: Option<String>,
}

/// What the inspector's words are: as the workers' user `run_as` where the kernel lets that
/// user read the workers' syscalls and memory, else as the primary's.
fn words(run_as: (Option<u32>, Option<u32>)) -> Vec<String> {
    if yama_restricts() {
        // Yama's ptrace scope 1 or more lets only an ancestor (or CAP_SYS_PTRACE) read a
        // thread's syscall and memory: an inspector of the workers' uid would see nothing.
        return vec!["__inspector".to_string()];
    }
    as_workers("__inspector", run_as)
}

/// Whether Yama restricts ptrace to ancestors or more (its scope is 1, 2 or 3).
fn yama_restricts() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .is_some_and(|scope| scope >= 1)
}

impl Inspector {
    pub(crate) fn new() -> Inspector {
        Inspector {
            helper: None,
            asked: None,
            next_id: 1,
            offset: 0,
            backoff: FIRST_BACKOFF,
            not_before: None,
            killed: Vec::new(),
            blind: None,
        }
    }

    /// Asks for a look at `workers`, starting an inspector if none runs. Does nothing while a
    /// request is on its way, unless it overran: then the inspector is killed. Never waits.
    pub(crate) fn ask(
        &mut self,
        poll: &Poll,
        now: Instant,
        primary_pid: u32,
        run_as: (Option<u32>, Option<u32>),
        may_dump: bool,
        workers: Vec<Inspected>,
    ) {
        if let Some(asked) = &self.asked {
            if now.saturating_duration_since(asked.at) < OVERRUN {
                return;
            }
            let took = now.saturating_duration_since(asked.at);
            self.fail(
                now,
                format!(
                    "the inspector of --ready listening did not answer within {} s (a worker \
                     makes reading its /proc wait); it was killed",
                    took.as_secs()
                ),
            );
            return;
        }
        if self.helper.is_none() && !self.start(poll, now, run_as) {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let (workers, body) = self.window(workers, id, primary_pid, may_dump);
        let pids: Vec<u32> = workers.iter().map(|w| w.pid).collect();
        let sent = body.and_then(|body| match self.link() {
            Some(link) => sys::send_nonblocking(link.as_fd(), &body),
            None => Err(io::Error::other("no link")),
        });
        match sent {
            Ok(()) => {
                self.asked = Some(Asked {
                    id,
                    at: now,
                    workers: pids,
                })
            }
            Err(e) => self.fail(
                now,
                format!("the inspector could not be asked ({})", lower(&e)),
            ),
        }
    }

    /// The next window of `workers` (see [`WINDOW`]) and its request, encoded within
    /// [`MAX_REQUEST`].
    fn window(
        &mut self,
        mut workers: Vec<Inspected>,
        id: u64,
        primary_pid: u32,
        may_dump: bool,
    ) -> (Vec<Inspected>, io::Result<Vec<u8>>) {
        workers.sort_by_key(|w| w.pid);
        if !workers.is_empty() {
            let start = self.offset % workers.len();
            workers.rotate_left(start);
        }
        let mut take = WINDOW.min(workers.len());
        loop {
            let request = Inspect {
                version: PROTOCOL_VERSION,
                primary_pid,
                id,
                may_dump,
                workers: workers[..take].to_vec(),
            };
            let body = proto::encode(&request).map_err(io::Error::other);
            match body {
                Ok(b) if b.len() > MAX_REQUEST && take > 1 => take /= 2,
                Ok(b) if b.len() > MAX_REQUEST => {
                    return (
                        Vec::new(),
                        Err(io::Error::other(
                            "one worker's listeners do not fit a request",
                        )),
                    )
                }
                body => {
                    workers.truncate(take);
                    return (workers, body);
                }
            }
        }
    }

    fn link(&self) -> Option<&std::os::fd::OwnedFd> {
        self.helper.as_ref().and_then(|h| h.link.as_ref())
    }

    fn start(&mut self, poll: &Poll, now: Instant, run_as: (Option<u32>, Option<u32>)) -> bool {
        if self.not_before.is_some_and(|t| t > now) {
            return false;
        }
        if self.killed.len() >= MAX_UNREAPED {
            self.blind = Some(format!(
                "{} killed inspectors of --ready listening are not gone yet; none is started",
                self.killed.len()
            ));
            return false;
        }
        let mut helper = Helper::new(
            "inspector",
            "reloadsup-inspector",
            words(run_as),
            LinkKind::Packets,
            Some(INSPECTOR),
        );
        if helper.start(poll, |link| Ok(Some(link))) {
            self.helper = Some(helper);
            true
        } else {
            self.fail(
                now,
                "the inspector of --ready listening could not start".into(),
            );
            false
        }
    }

    /// The inspector failed (`why`): it is killed, and another starts after the back-off.
    fn fail(&mut self, now: Instant, why: String) {
        log::warn!("{why}");
        if let Some(helper) = self.helper.take() {
            if let Some(pid) = helper.pid {
                let _ = sys::kill_group(pid, Signal::SIGKILL);
                self.killed.push(pid);
            }
        }
        if self.asked.take().is_some() {
            // The window's first worker may be what made it overrun: the next starts after it.
            self.offset = self.offset.wrapping_add(1);
        }
        self.blind = Some(why);
        self.not_before = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// The link is readable: the answer, if it is one (only the workers it was asked about).
    /// Garbage, or an answer to nothing, gets the inspector replaced.
    pub(crate) fn on_link(&mut self, now: Instant) -> Option<Looked> {
        let link = self.link()?;
        let mut buf = vec![0u8; MAX_ANSWER];
        let looked = match sys::recv_nowait(link.as_fd(), &mut buf) {
            // It exited (idle, or killed); the reap forgets it.
            Ok(0) => {
                if let Some(h) = &mut self.helper {
                    h.close_link();
                }
                return None;
            }
            Ok(n) => proto::decode::<Looked>(&buf[..n]).map_err(io::Error::other),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return None
            }
            Err(e) => Err(e),
        };
        let asked = self.asked.take();
        match (looked, asked) {
            (Ok(mut looked), Some(asked)) if looked.id == asked.id => {
                looked.seen.retain(|s| asked.workers.contains(&s.worker));
                // The next window starts after what was looked at (at least one: a worker
                // that uses up the time is not first again).
                let moved = (looked.looked as usize).clamp(1, asked.workers.len().max(1));
                self.offset = self.offset.wrapping_add(moved);
                // It says how long its dumps took, which paces the next: never beyond reason.
                looked.dumped_ns = looked.dumped_ns.min(OVERRUN.as_nanos() as u64);
                self.blind = None;
                self.backoff = FIRST_BACKOFF;
                Some(looked)
            }
            (Ok(_), _) => {
                self.fail(now, "the inspector answered what it was not asked".into());
                None
            }
            (Err(e), _) => {
                self.fail(now, format!("the inspector misbehaves ({})", lower(&e)));
                None
            }
        }
    }

    /// Whether `pid` is an inspector, running or killed.
    pub(crate) fn is(&self, pid: u32) -> bool {
        self.killed.contains(&pid) || self.helper.as_ref().is_some_and(|h| h.is(pid))
    }

    /// An inspector was reaped. One that exited on its own (idle: a request sent as it left is
    /// sent again to the next) is simply gone; one that died otherwise is a failure.
    pub(crate) fn exited(&mut self, pid: u32, status: sys::ExitStatus, now: Instant) {
        if let Some(i) = self.killed.iter().position(|&k| k == pid) {
            self.killed.remove(i);
            return;
        }
        if !self.helper.as_ref().is_some_and(|h| h.is(pid)) {
            return;
        }
        self.helper = None;
        self.asked = None;
        if status != sys::ExitStatus::Exited(0) {
            self.fail(now, format!("the inspector of --ready listening {status}"));
        }
    }

    /// At exit, and before an upgrade's exec: nothing it says matters any more.
    pub(crate) fn kill(&mut self) {
        if let Some(helper) = self.helper.take() {
            if let Some(pid) = helper.pid {
                let _ = sys::kill_group(pid, Signal::SIGKILL);
                self.killed.push(pid);
            }
        }
        self.asked = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reloadsup_protocol::SeenListening;
    use std::os::fd::OwnedFd;

    /// An inspector on the far end of a socketpair, with no process.
    fn linked() -> (Inspector, OwnedFd) {
        let (ours, theirs) = sys::seqpacket_pair().unwrap();
        let mut h = Helper::new("t", "t", Vec::new(), LinkKind::Packets, None);
        h.link = Some(ours);
        let mut i = Inspector::new();
        i.helper = Some(h);
        (i, theirs)
    }

    fn worker(pid: u32) -> Inspected {
        Inspected {
            pid,
            cgroup: None,
            inodes: vec![1],
            tcp: Vec::new(),
        }
    }

    fn ask(i: &mut Inspector, now: Instant, pids: &[u32]) {
        let poll = Poll::new().unwrap();
        let workers = pids.iter().map(|&p| worker(p)).collect();
        i.ask(&poll, now, 1, (None, None), false, workers);
    }

    fn received(theirs: &OwnedFd) -> Inspect {
        let mut buf = vec![0u8; 4096];
        let n = sys::recv_nowait(theirs.as_fd(), &mut buf).unwrap();
        proto::decode(&buf[..n]).unwrap()
    }

    fn answer(theirs: &OwnedFd, id: u64, workers: &[u32]) {
        let looked = Looked {
            id,
            seen: workers
                .iter()
                .map(|&w| SeenListening {
                    worker: w,
                    pid: w,
                    how: "accept".into(),
                })
                .collect(),
            dumped_ns: 0,
            looked: u32::MAX,
        };
        sys::send_nonblocking(theirs.as_fd(), &proto::encode(&looked).unwrap()).unwrap();
    }

    /// The inspector runs as the workers' user: it may say anything, but only about the
    /// workers it was asked about, and only in answer to the request on its way.
    #[test]
    fn an_answer_counts_only_for_the_workers_asked_about() {
        let (mut i, theirs) = linked();
        let now = Instant::now();
        ask(&mut i, now, &[10, 11]);
        let request = received(&theirs);
        assert_eq!(request.workers.len(), 2);
        // A second look is not asked while one is on its way.
        ask(&mut i, now, &[10, 11]);
        assert!(sys::recv_nowait(theirs.as_fd(), &mut [0u8; 64]).is_err());
        answer(&theirs, request.id, &[11, 99]);
        let looked = i.on_link(now).expect("the answer");
        let seen: Vec<u32> = looked.seen.iter().map(|s| s.worker).collect();
        assert_eq!(seen, [11], "pid 99 was not asked about");
        // An answer to nothing asked replaces it.
        answer(&theirs, request.id, &[10]);
        assert!(i.on_link(now).is_none());
        assert!(i.helper.is_none() && i.blind.is_some(), "replaced");
    }

    #[test]
    fn an_inspector_that_overruns_is_killed_and_another_waits_for_its_back_off() {
        let (mut i, theirs) = linked();
        let now = Instant::now();
        ask(&mut i, now, &[10]);
        let _ = received(&theirs);
        ask(&mut i, now + OVERRUN - Duration::from_millis(1), &[10]);
        assert!(i.helper.is_some(), "killed before its deadline");
        ask(&mut i, now + OVERRUN, &[10]);
        assert!(i.helper.is_none(), "not killed at its deadline");
        let why = i.blind.clone().expect("a reason for the rollback");
        assert!(why.contains("did not answer"), "{why}");
        // Within the back-off no other starts (a start would spawn a process here).
        ask(&mut i, now + OVERRUN + Duration::from_millis(1), &[10]);
        assert!(i.helper.is_none() && i.asked.is_none());
    }

    /// The attacker's review: every starting worker went into one request, which past about
    /// 2 400 workers no longer fitted the link, so none was ever seen. A request names a
    /// window of at most [`WINDOW`] workers within [`MAX_REQUEST`], and the window moves on.
    #[test]
    fn a_request_names_a_window_of_workers_that_moves_on_and_fits_the_link() {
        let (mut i, theirs) = linked();
        let now = Instant::now();
        let many: Vec<u32> = (1000..1000 + 3 * WINDOW as u32 + 5).collect();
        let mut seen = std::collections::BTreeSet::new();
        for round in 0..4 {
            let t = now + Duration::from_secs(round);
            ask(&mut i, t, &many);
            let request = received(&theirs);
            assert!(request.workers.len() <= WINDOW);
            seen.extend(request.workers.iter().map(|w| w.pid));
            answer(&theirs, request.id, &[]);
            assert!(i.on_link(t).is_some());
        }
        assert_eq!(
            seen.len(),
            many.len(),
            "every worker is asked about in turn"
        );
        // Workers with many listeners each: the window shrinks until the request fits.
        let poll = Poll::new().unwrap();
        let heavy: Vec<Inspected> = (0..WINDOW as u32)
            .map(|pid| Inspected {
                pid,
                cgroup: Some("/sys/fs/cgroup/x".repeat(8)),
                inodes: ((1u64 << 60)..(1u64 << 60) + 1000).collect(),
                tcp: Vec::new(),
            })
            .collect();
        i.ask(&poll, now, 1, (None, None), false, heavy);
        let mut buf = vec![0u8; 256 * 1024];
        let n = sys::recv_nowait(theirs.as_fd(), &mut buf).unwrap();
        assert!(n <= MAX_REQUEST, "{n} bytes");
        let request: Inspect = proto::decode(&buf[..n]).unwrap();
        assert!(!request.workers.is_empty() && request.workers.len() < WINDOW);
    }

    /// The second attacker's review: with 64 workers or fewer the window never moved, so a
    /// worker slow to look at kept every worker after it from being seen. The next request
    /// starts after what the inspector could look at.
    #[test]
    fn the_next_request_starts_after_what_was_looked_at() {
        let (mut i, theirs) = linked();
        let now = Instant::now();
        ask(&mut i, now, &[10, 11, 12]);
        let first = received(&theirs);
        assert_eq!(first.workers[0].pid, 10);
        let looked = Looked {
            id: first.id,
            seen: Vec::new(),
            dumped_ns: 0,
            looked: 1,
        };
        sys::send_nonblocking(theirs.as_fd(), &proto::encode(&looked).unwrap()).unwrap();
        assert!(i.on_link(now).is_some());
        ask(&mut i, now, &[10, 11, 12]);
        let second = received(&theirs);
        assert_eq!(second.workers[0].pid, 11, "{:?}", second.workers);
    }

    #[test]
    fn an_inspector_that_sends_garbage_is_replaced() {
        let (mut i, theirs) = linked();
        let now = Instant::now();
        ask(&mut i, now, &[10]);
        sys::send_nonblocking(theirs.as_fd(), &[0xff; 40]).unwrap();
        assert!(i.on_link(now).is_none());
        assert!(i.helper.is_none(), "garbage replaces the inspector");
        assert!(i.blind.as_deref().is_some_and(|w| w.contains("misbehaves")));
    }
}
