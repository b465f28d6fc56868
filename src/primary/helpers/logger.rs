//! The primary's side of the logger worker (see `roles/logger.rs`), with
//! `--log-output stdout|file:PATH`: it makes each worker's stdout and stderr pipes, keeps a
//! copy of every read end that is still open, sends each one to the logger over its link with
//! the pipe's labels, and starts a logger again (when `state::roles` says so) after one died,
//! sending the new one every open pipe again.
//!
//! It never reads a worker's output and never blocks the loop: each message is one small
//! non-blocking send, and a logger that cannot take one is killed and replaced, since a
//! replacement gets every pipe anyway. A pipe is closed here when the logger says it read it to
//! end-of-file ([`LoggerEvent::Drained`]): then no process can write to it any more (the
//! primary holds no write end), and everything in it was written. Closing it when the worker
//! is reaped instead would lose what a worker wrote just before it exited if the logger died
//! at that moment, and what a worker's child still writes.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use mio::{Poll, Token};
use nix::sys::signal::Signal;
use reloadsup_protocol::upgrade::{LoggerImage, PipeImage};
use reloadsup_protocol::{
    self as proto, LogFormat, LogQuery, LogSink, LogStream, LoggerEvent, LoggerMessage, LoggerSpec,
    Progress, Reply, PROTOCOL_VERSION,
};

use super::{as_workers, timer_from, timer_image, Helper, LinkKind};
use crate::config::{LogConfig, LogOutput};
use crate::error::lower;
use crate::primary::control::{conn_of, requester, Connections};
use crate::primary::state::roles::RoleTimer;
use crate::primary::state::Requester;
use crate::sys;

/// The poll token of the logger's link.
pub(crate) const LOGGER: Token = Token(3);

/// Tails (`ctl logs`, the console's `logs`) open at once.
const MAX_TAILS: usize = 64;

/// Bytes of replies waiting for a follower past which its new lines are skipped (and counted)
/// here, rather than queued: a reader that does not keep up costs lines, never memory.
const FOLLOWER_BACKLOG: usize = 256 * 1024;

/// The largest message the logger sends (a chunk of lines is at most 32 KiB and one line).
const LINK_MESSAGE: usize = 256 * 1024;

/// One `Request::Logs` in flight: who asked, what, and the lines skipped since the last sent.
struct Tail {
    who: Requester,
    query: LogQuery,
    skipped: u64,
}

/// One open worker output pipe: the primary's copy of its read end and its labels.
struct Pipe {
    generation: u64,
    slot: u32,
    pid: u32,
    stream: LogStream,
    fd: OwnedFd,
}

pub(crate) struct Logs {
    spec: LoggerSpec,
    /// Its process and link; it runs as the workers' user (`__logger --uid U --gid G`: it
    /// parses their bytes).
    helper: Helper,
    pipes: BTreeMap<u64, Pipe>,
    next_id: u64,
    /// Not part of the upgrade image: a tail in flight ends when the primary re-execs.
    tails: BTreeMap<u64, Tail>,
    next_tail: u64,
    buf: Vec<u8>,
}

impl Logs {
    /// `None` with `--log-output inherit`: workers write to the primary's stdout and stderr.
    /// `run_as` is the workers' user and group (`--user`, `--group`), which the logger
    /// switches to once it has set up its file's opener.
    pub(crate) fn new(
        config: &LogConfig,
        primary_pid: u32,
        run_as: (Option<u32>, Option<u32>),
    ) -> Option<Logs> {
        let sink = match &config.output {
            LogOutput::Inherit => return None,
            LogOutput::Stdout => LogSink::Stdout,
            LogOutput::File(p) => LogSink::File(p.as_os_str().as_bytes().to_vec()),
        };
        Some(Logs {
            spec: LoggerSpec {
                version: PROTOCOL_VERSION,
                primary_pid,
                sink,
                format: if config.json {
                    LogFormat::Json
                } else {
                    LogFormat::Text
                },
                rotate_size: config.rotate_size,
                rotate_keep: config.rotate_keep,
                ring_bytes: config.ring,
            },
            helper: helper(run_as),
            pipes: BTreeMap::new(),
            next_id: 1,
            tails: BTreeMap::new(),
            next_tail: 1,
            buf: Vec::new(),
        })
    }

    /// Spawns the logger and sends it every open pipe; false (logged) if it could not.
    pub(crate) fn start(&mut self, poll: &Poll) -> bool {
        log::debug!(
            "starting a logger worker for {} open pipes",
            self.pipes.len()
        );
        let (spec, pipes, tails) = (&self.spec, &self.pipes, &self.tails);
        self.helper.start(poll, |link| {
            let body = proto::encode(spec).map_err(io::Error::other)?;
            sys::send_nonblocking(link.as_fd(), &body)?;
            for (&id, pipe) in pipes {
                send_pipe(&link, id, pipe)?;
            }
            // Followers carry on with the new logger's lines (its ring starts empty).
            for (&tail, t) in tails {
                let query = LogQuery {
                    lines: 0,
                    ..t.query.clone()
                };
                let body = proto::encode(&LoggerMessage::Tail { tail, query })
                    .map_err(io::Error::other)?;
                sys::send_nonblocking(link.as_fd(), &body)?;
            }
            Ok(Some(link))
        })
    }

    /// Makes the stdout and stderr pipes of worker `pid` and hands their read ends to the
    /// logger; returns the write ends, for the worker role to put at fds 1 and 2. If the
    /// worker never gets them, the pipes reach end-of-file and are closed like any other.
    pub(crate) fn outputs(
        &mut self,
        generation: u64,
        slot: u32,
        pid: u32,
    ) -> io::Result<[OwnedFd; 2]> {
        let (out_r, out_w) = sys::pipe()?;
        let (err_r, err_w) = sys::pipe()?;
        for (fd, stream) in [(out_r, LogStream::Stdout), (err_r, LogStream::Stderr)] {
            let id = self.next_id;
            self.next_id += 1;
            let pipe = Pipe {
                generation,
                slot,
                pid,
                stream,
                fd,
            };
            if let Some(link) = &self.helper.link {
                if let Err(e) = send_pipe(link, id, &pipe) {
                    self.insert(id, pipe);
                    self.replace(&e);
                    continue;
                }
            }
            self.insert(id, pipe);
        }
        Ok([out_w, err_w])
    }

    fn insert(&mut self, id: u64, pipe: Pipe) {
        self.pipes.insert(id, pipe);
    }

    /// `Request::Logs`: asks the logger for the lines; they come back through
    /// [`Logs::on_link`] as progress of `who`'s request. `Some` is the reply at once (refused).
    pub(crate) fn tail(&mut self, who: Requester, query: LogQuery) -> Option<Reply> {
        if self.tails.len() >= MAX_TAILS {
            return Some(Reply::Error(format!(
                "{MAX_TAILS} log readers already; try again later"
            )));
        }
        let Some(link) = &self.helper.link else {
            return Some(Reply::Error(
                "the logger worker is restarting; try again in a moment".into(),
            ));
        };
        let tail = self.next_tail;
        self.next_tail += 1;
        let sent = proto::encode(&LoggerMessage::Tail {
            tail,
            query: query.clone(),
        })
        .map_err(io::Error::other)
        .and_then(|body| sys::send_nonblocking(link.as_fd(), &body));
        if let Err(e) = sent {
            self.replace(&e);
            return Some(Reply::Error(
                "the logger worker is restarting; try again in a moment".into(),
            ));
        }
        self.tails.insert(
            tail,
            Tail {
                who,
                query,
                skipped: 0,
            },
        );
        None
    }

    /// `Request::StopLogs`: the follow `request` of `who`'s connection ends with its reply.
    pub(crate) fn stop_tail(
        &mut self,
        poll: &Poll,
        conns: &mut Connections,
        who: Requester,
        request: u32,
    ) -> Reply {
        let follow = requester(conn_of(who), request);
        let found = self
            .tails
            .iter()
            .find(|(_, t)| t.who == follow)
            .map(|(&id, _)| id);
        let Some(id) = found else {
            return Reply::Done("not following".into());
        };
        self.tails.remove(&id);
        self.untail(id);
        conns.send_reply(poll, follow, Reply::Done(String::new()));
        Reply::Done("stopped following".into())
    }

    /// Before an upgrade in place: every log reader gets its reply (the tails are not in the
    /// hand-off), and the logger forgets them, so the new image's tail ids start afresh.
    pub(crate) fn end_tails(&mut self, poll: &Poll, conns: &mut Connections) {
        for (id, t) in std::mem::take(&mut self.tails) {
            self.untail(id);
            conns.send_reply(
                poll,
                t.who,
                Reply::Error("the supervisor was upgraded in place; ask for the logs again".into()),
            );
        }
    }

    /// Lines for `tail`: forwarded to its reader, or counted as skipped while its replies
    /// wait; a reader that went away is forgotten here and in the logger.
    fn forward(
        &mut self,
        poll: &Poll,
        conns: &mut Connections,
        tail: u64,
        skipped: u64,
        lines: Vec<String>,
    ) {
        let Some(t) = self.tails.get_mut(&tail) else {
            self.untail(tail);
            return;
        };
        match conns.queued(t.who) {
            None => {
                self.tails.remove(&tail);
                self.untail(tail);
            }
            Some(n) if n > FOLLOWER_BACKLOG => t.skipped += skipped + lines.len() as u64,
            Some(_) => {
                let skipped = std::mem::take(&mut t.skipped) + skipped;
                conns.send_progress(poll, t.who, Progress::Log { skipped, lines });
            }
        }
    }

    /// Tells the logger to stop following `tail` (best effort: a full link means it is stuck,
    /// and a replacement starts without the tail).
    fn untail(&self, tail: u64) {
        if let Some(link) = &self.helper.link {
            if let Ok(body) = proto::encode(&LoggerMessage::Untail { tail }) {
                let _ = sys::send_nonblocking(link.as_fd(), &body);
            }
        }
    }

    /// USR1: the log file is reopened (after logrotate moved it away).
    pub(crate) fn reopen(&mut self) {
        let Some(link) = &self.helper.link else {
            log::warn!(
                "SIGUSR1: the logger worker is not running; its next start opens the file anew"
            );
            return;
        };
        let sent = proto::encode(&LoggerMessage::Reopen)
            .map_err(io::Error::other)
            .and_then(|body| sys::send_nonblocking(link.as_fd(), &body));
        if let Err(e) = sent {
            self.replace(&e);
        }
    }

    /// The logger cannot take a message: kill it; `exited` starts another with every pipe.
    fn replace(&mut self, e: &io::Error) {
        let why = format!("does not keep up ({})", lower(e));
        self.helper.replace(&why);
    }

    /// The link is readable: the logger says which pipes it drained. Bounded per turn;
    /// returns whether more may wait.
    pub(crate) fn on_link(&mut self, poll: &Poll, conns: &mut Connections) -> bool {
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(LINK_MESSAGE, 0);
        let more = self.read_link(poll, conns, &mut buf);
        self.buf = buf;
        more
    }

    fn read_link(&mut self, poll: &Poll, conns: &mut Connections, buf: &mut [u8]) -> bool {
        for _ in 0..256 {
            let Some(link) = &self.helper.link else {
                return false;
            };
            match sys::recv_nowait(link.as_fd(), buf) {
                Ok(0) => {
                    // The logger is gone; it is reaped like any child.
                    self.helper.close_link();
                    return false;
                }
                Ok(n) => match proto::decode::<LoggerEvent>(&buf[..n]) {
                    Ok(LoggerEvent::Drained { id }) => {
                        self.pipes.remove(&id);
                    }
                    Ok(LoggerEvent::Lines {
                        tail,
                        skipped,
                        lines,
                    }) => self.forward(poll, conns, tail, skipped, lines),
                    Ok(LoggerEvent::TailEnd { tail }) => {
                        if let Some(t) = self.tails.remove(&tail) {
                            conns.send_reply(poll, t.who, Reply::Done(String::new()));
                        }
                    }
                    Err(e) => {
                        let e = io::Error::other(e);
                        self.replace(&e);
                        return false;
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.replace(&e);
                    return false;
                }
            }
        }
        true
    }

    /// See [`Helper::replace_if_stopped`].
    pub(crate) fn replace_if_stopped(&mut self) {
        self.helper.replace_if_stopped();
    }

    pub(crate) fn is(&self, pid: u32) -> bool {
        self.helper.is(pid)
    }

    /// The logger was reaped; the roles' timer starts another.
    pub(crate) fn exited(&mut self, poll: &Poll, conns: &mut Connections, status: sys::ExitStatus) {
        // Forgotten first: a replace while its last words are read must not signal a pid
        // that was reaped (and may be reused).
        self.helper.pid = None;
        // What it sent before it died is read first: those pipes need not be sent again.
        while self.helper.link.is_some() && self.on_link(poll, conns) {}
        self.helper.exited();
        // A reader of the ring has lost it; a follower gets the next logger's lines.
        let ended: Vec<u64> = self
            .tails
            .iter()
            .filter(|(_, t)| !t.query.follow)
            .map(|(&id, _)| id)
            .collect();
        for id in ended {
            if let Some(t) = self.tails.remove(&id) {
                conns.send_reply(
                    poll,
                    t.who,
                    Reply::Error("the logger worker exited; try again".into()),
                );
            }
        }
        log::warn!("the logger worker {status}");
    }

    /// At exit, every worker is gone: the logger reads what is left in the pipes and exits
    /// once its link closes. Waits for it (a bounded wait, the loop is over), so that every
    /// line is written before the primary's own exit is seen.
    pub(crate) fn finish(&mut self) {
        self.helper.close_link();
        self.pipes.clear();
        if let Some(pid) = self.helper.pid.take() {
            if !sys::wait_exit(pid, Duration::from_secs(3)) {
                let _ = sys::kill_group(pid, Signal::SIGKILL);
                let _ = sys::wait_exit(pid, Duration::from_secs(1));
            }
        }
    }

    /// The plain-data image, for an upgrade in place: the link and every pipe stay open
    /// across the exec, so the logger carries on as if nothing happened.
    pub(crate) fn image(
        &self,
        timer: &RoleTimer,
        clock: &crate::primary::handoff::Clock,
    ) -> LoggerImage {
        let (started, backoff, restart_at) = timer_image(timer, clock);
        LoggerImage {
            spec: self.spec.clone(),
            pipes: self
                .pipes
                .iter()
                .map(|(&id, p)| PipeImage {
                    id,
                    generation: p.generation,
                    slot: p.slot,
                    pid: p.pid,
                    stream: p.stream,
                    fd: p.fd.as_raw_fd(),
                })
                .collect(),
            next_id: self.next_id,
            pid: self.helper.pid,
            link_fd: self.helper.link_fd(),
            started,
            backoff,
            restart_at,
        }
    }

    /// The fds an image names, to keep open across the exec.
    pub(crate) fn image_fds(image: &LoggerImage) -> Vec<i32> {
        image
            .pipes
            .iter()
            .map(|p| p.fd)
            .chain(image.link_fd)
            .collect()
    }

    /// The new image's logger; `take` adopts an fd number of the hand-off (once each).
    pub(crate) fn resume(
        image: LoggerImage,
        run_as: (Option<u32>, Option<u32>),
        mut take: impl FnMut(i32) -> io::Result<OwnedFd>,
        poll: &Poll,
        clock: &crate::primary::handoff::Clock,
    ) -> io::Result<(Logs, RoleTimer)> {
        let timer = timer_from(
            image.pid.is_some(),
            (image.started, image.backoff, image.restart_at),
            clock,
        );
        let mut pipes = BTreeMap::new();
        for p in image.pipes {
            pipes.insert(
                p.id,
                Pipe {
                    generation: p.generation,
                    slot: p.slot,
                    pid: p.pid,
                    stream: p.stream,
                    fd: take(p.fd)?,
                },
            );
        }
        let link = image.link_fd.map(&mut take).transpose()?;
        let logs = Logs {
            spec: image.spec,
            helper: {
                let mut h = helper(run_as).resume(image.pid, link, poll)?;
                h.replace_if_stale();
                h
            },
            pipes,
            next_id: image.next_id,
            tails: BTreeMap::new(),
            next_tail: 1,
            buf: Vec::new(),
        };
        Ok((logs, timer))
    }
}

/// The logger's helper, running as `run_as` (the workers' user and group).
fn helper(run_as: (Option<u32>, Option<u32>)) -> Helper {
    Helper::new(
        "logger worker",
        "reloadsup-logger",
        as_workers("__logger", run_as),
        LinkKind::Packets,
        Some(LOGGER),
    )
}

fn send_pipe(link: &OwnedFd, id: u64, pipe: &Pipe) -> io::Result<()> {
    let body = proto::encode(&LoggerMessage::Pipe {
        id,
        generation: pipe.generation,
        slot: pipe.slot,
        pid: pipe.pid,
        stream: pipe.stream,
    })
    .map_err(io::Error::other)?;
    sys::send_with_fds_nonblocking(link.as_fd(), &body, &[pipe.fd.as_fd()])
}
