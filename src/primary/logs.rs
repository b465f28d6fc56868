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
use std::path::Path;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Interest, Poll, Token};
use nix::sys::signal::Signal;
use reloadsup_protocol::upgrade::{LoggerImage, PipeImage};
use reloadsup_protocol::{
    self as proto, LogFormat, LogSink, LogStream, LoggerEvent, LoggerMessage, LoggerSpec,
    PROTOCOL_VERSION,
};

use super::state::roles::RoleTimer;
use crate::config::{LogConfig, LogOutput};
use crate::error::lower;
use crate::sys;

/// The poll token of the logger's link.
pub(crate) const LOGGER: Token = Token(3);

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
    pipes: BTreeMap<u64, Pipe>,
    next_id: u64,
    pub pid: Option<u32>,
    link: Option<OwnedFd>,
}

impl Logs {
    /// `None` with `--log-output inherit`: workers write to the primary's stdout and stderr.
    pub(crate) fn new(config: &LogConfig, primary_pid: u32) -> Option<Logs> {
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
            pipes: BTreeMap::new(),
            next_id: 1,
            pid: None,
            link: None,
        })
    }

    /// Spawns the logger and sends it every open pipe; false (logged) if it could not.
    pub(crate) fn start(&mut self, poll: &Poll) -> bool {
        match self.spawn(poll) {
            Ok(pid) => {
                log::info!(
                    "logger worker started as pid {pid} ({} open pipes)",
                    self.pipes.len()
                );
                self.pid = Some(pid);
                true
            }
            Err(e) => {
                log::error!("unable to start the logger worker: {}", lower(&e));
                false
            }
        }
    }

    fn spawn(&mut self, poll: &Poll) -> io::Result<u32> {
        let (ours, theirs) = sys::seqpacket_pair()?;
        let pid = sys::spawn_role(
            Path::new("/proc/self/exe"),
            "reloadsup-logger",
            &["__logger"],
            &theirs,
        )?
        .as_raw() as u32;
        drop(theirs);
        let sent = (|| {
            let body = proto::encode(&self.spec).map_err(io::Error::other)?;
            sys::send_nonblocking(ours.as_fd(), &body)?;
            for (&id, pipe) in &self.pipes {
                send_pipe(&ours, id, pipe)?;
            }
            poll.registry()
                .register(&mut SourceFd(&ours.as_raw_fd()), LOGGER, Interest::READABLE)
        })();
        if let Err(e) = sent {
            let _ = sys::kill_group(pid, Signal::SIGKILL);
            return Err(e);
        }
        self.link = Some(ours);
        Ok(pid)
    }

    /// Makes the stdout and stderr pipes of worker `pid` and hands their read ends to the
    /// logger; returns the write ends, for the worker role to put at fds 1 and 2. If the
    /// worker never gets them, the pipes reach end-of-file and are closed like any other.
    pub(crate) fn outputs(
        &mut self,
        poll: &Poll,
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
            if let Some(link) = &self.link {
                if let Err(e) = send_pipe(link, id, &pipe) {
                    self.insert(id, pipe);
                    self.replace(poll, &e);
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

    /// USR1: the log file is reopened (after logrotate moved it away).
    pub(crate) fn reopen(&mut self, poll: &Poll) {
        let Some(link) = &self.link else {
            log::warn!(
                "SIGUSR1: the logger worker is not running; its next start opens the file anew"
            );
            return;
        };
        let sent = proto::encode(&LoggerMessage::Reopen)
            .map_err(io::Error::other)
            .and_then(|body| sys::send_nonblocking(link.as_fd(), &body));
        if let Err(e) = sent {
            self.replace(poll, &e);
        }
    }

    /// The logger cannot take a message: kill it; `exited` starts another with every pipe.
    fn replace(&mut self, poll: &Poll, e: &io::Error) {
        log::warn!(
            "the logger worker does not keep up ({}); replacing it",
            lower(e)
        );
        self.close_link(poll);
        if let Some(pid) = self.pid {
            let _ = sys::kill_group(pid, Signal::SIGKILL);
        }
    }

    fn close_link(&mut self, poll: &Poll) {
        if let Some(link) = self.link.take() {
            let _ = poll.registry().deregister(&mut SourceFd(&link.as_raw_fd()));
        }
    }

    /// The link is readable: the logger says which pipes it drained. Bounded per turn;
    /// returns whether more may wait.
    pub(crate) fn on_link(&mut self, poll: &Poll) -> bool {
        let mut buf = [0u8; 256];
        for _ in 0..256 {
            let Some(link) = &self.link else { return false };
            match sys::recv_nowait(link.as_fd(), &mut buf) {
                Ok(0) => {
                    // The logger is gone; it is reaped like any child.
                    self.close_link(poll);
                    return false;
                }
                Ok(n) => match proto::decode::<LoggerEvent>(&buf[..n]) {
                    Ok(LoggerEvent::Drained { id }) => {
                        self.pipes.remove(&id);
                    }
                    Err(e) => {
                        let e = io::Error::other(e);
                        self.replace(poll, &e);
                        return false;
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.replace(poll, &e);
                    return false;
                }
            }
        }
        true
    }

    pub(crate) fn is(&self, pid: u32) -> bool {
        self.pid == Some(pid)
    }

    /// The logger was reaped; the roles' timer starts another.
    pub(crate) fn exited(&mut self, poll: &Poll, status: sys::ExitStatus) {
        self.pid = None;
        // What it sent before it died is read first: those pipes need not be sent again.
        while self.link.is_some() && self.on_link(poll) {}
        self.close_link(poll);
        log::warn!("the logger worker {status}");
    }

    /// At exit, every worker is gone: the logger reads what is left in the pipes and exits
    /// once its link closes. Waits for it (a bounded wait, the loop is over), so that every
    /// line is written before the primary's own exit is seen.
    pub(crate) fn finish(&mut self, poll: &Poll) {
        self.close_link(poll);
        self.pipes.clear();
        if let Some(pid) = self.pid.take() {
            if !sys::wait_exit(pid, Duration::from_secs(3)) {
                let _ = sys::kill_group(pid, Signal::SIGKILL);
                let _ = sys::wait_exit(pid, Duration::from_secs(1));
            }
        }
    }

    /// The plain-data image, for an upgrade in place: the link and every pipe stay open
    /// across the exec, so the logger carries on as if nothing happened.
    pub(crate) fn image(&self, timer: &RoleTimer, clock: &super::upgrade::Clock) -> LoggerImage {
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
            pid: self.pid,
            link_fd: self.link.as_ref().map(|l| l.as_raw_fd()),
            started: clock.opt_ns(timer.started),
            backoff: timer.backoff.as_nanos() as u64,
            restart_at: clock.opt_ns(timer.restart_at),
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
        mut take: impl FnMut(i32) -> io::Result<OwnedFd>,
        poll: &Poll,
        clock: &super::upgrade::Clock,
    ) -> io::Result<(Logs, RoleTimer)> {
        let timer = RoleTimer {
            running: image.pid.is_some(),
            started: clock.opt_instant(image.started),
            backoff: Duration::from_nanos(image.backoff),
            restart_at: clock.opt_instant(image.restart_at),
            replacing: false,
            stopping: false,
        };
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
        let link = match image.link_fd {
            Some(fd) => {
                let link = take(fd)?;
                poll.registry().register(
                    &mut SourceFd(&link.as_raw_fd()),
                    LOGGER,
                    Interest::READABLE,
                )?;
                Some(link)
            }
            None => None,
        };
        let logs = Logs {
            spec: image.spec,
            pipes,
            next_id: image.next_id,
            pid: image.pid,
            link,
        };
        Ok((logs, timer))
    }
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
