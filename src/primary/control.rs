//! The control socket's connections, served by the primary's loop without ever blocking it.
//!
//! Each connection reads postcard frames into a bounded buffer and writes replies from a
//! bounded queue. A peer of another uid (not root) is refused at accept; a malformed frame, a
//! wrong protocol version or a peer that lets its replies pile up closes only that connection.
//! A slow or silent client costs one slot and nothing else: nothing here waits on a peer.
//!
//! Memory is bounded twice: per connection (a frame, `MAX_QUEUED` of replies) and across all
//! of them (`MAX_BUFFERED`, input and output together), so that a same-uid client opening
//! hundreds of connections cannot make the primary hold gigabytes. The connection whose bytes
//! would cross the global budget is the one closed; the shell link is exempt (it must never
//! lose the operator's console to a flood of `ctl` clients).
//!
//! mio is edge-triggered: a source that is not drained to `WouldBlock` reports nothing more
//! until new bytes arrive. The accept and read loops are bounded per wake-up (fairness), and
//! tell the caller when they stopped at the bound so that it serves them again on its next
//! turn rather than waiting for an edge that may never come.

use std::collections::BTreeMap;
use std::io::{self, Write};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Poll, Token};
use reloadsup_protocol::{self as proto, FrameReader, Message, Progress, Reply, Request};

use super::state::Requester;
use super::FIRST_CONN;
use crate::error::lower;

/// At most this many control connections; the oldest idle one gives way to a new one.
const MAX_CONNS: usize = 512;
/// A peer that does not read its replies is dropped past this much queued output.
const MAX_QUEUED: usize = 8 << 20;
/// Requests a connection may have in flight at once.
const MAX_INFLIGHT: usize = 64;
/// Bytes held for all control connections together (read but not yet a whole frame, plus
/// replies not yet written), the shell link aside.
pub(crate) const MAX_BUFFERED: usize = 32 << 20;
/// Connections accepted per wake-up before other sources get their turn.
const ACCEPT_BATCH: usize = 64;
/// Reads per connection per wake-up.
const READ_BATCH: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ConnId(pub usize);

/// Who is waiting, as the state machine sees it: the connection in the high bits, the
/// request id in the low 32.
pub(crate) fn requester(conn: ConnId, id: u32) -> Requester {
    ((conn.0 as u64) << 32) | id as u64
}

/// The connection a requester's request came on.
pub(crate) fn conn_of(who: Requester) -> ConnId {
    split(who).0
}

fn split(who: Requester) -> (ConnId, u32) {
    (ConnId((who >> 32) as usize), who as u32)
}

struct Conn {
    stream: UnixStream,
    reader: FrameReader,
    out: Vec<u8>,
    greeted: bool,
    inflight: usize,
    writable: bool,
    /// Accept order, to find the oldest idle connection.
    serial: u64,
    /// The shell link: never dropped to make room for a control client.
    pinned: bool,
    /// Bytes counted against [`MAX_BUFFERED`] for this connection.
    held: usize,
}

impl Conn {
    fn buffered(&self) -> usize {
        self.reader.pending() + self.out.len()
    }
}

pub(crate) struct Connections {
    listener: UnixListener,
    conns: BTreeMap<ConnId, Conn>,
    next: usize,
    serial: u64,
    uid: u32,
    /// Sum of `held` over the connections.
    buffered: usize,
}

impl Connections {
    pub(crate) fn new(listener: UnixListener) -> Connections {
        Connections {
            listener,
            conns: BTreeMap::new(),
            next: FIRST_CONN,
            serial: 0,
            uid: nix::unistd::geteuid().as_raw(),
            buffered: 0,
        }
    }

    /// Registers a connection that did not come through the control socket (the shell link).
    /// The path the control socket is bound to, if it has one.
    pub(crate) fn listener_path(&self) -> Option<std::path::PathBuf> {
        let addr = self.listener.local_addr().ok()?;
        addr.as_pathname().map(|p| p.to_path_buf())
    }

    pub(crate) fn adopt(&mut self, poll: &Poll, stream: UnixStream) -> io::Result<ConnId> {
        self.insert(poll, stream, true)
    }

    fn insert(&mut self, poll: &Poll, mut stream: UnixStream, pinned: bool) -> io::Result<ConnId> {
        // Tokens are never reused while the process lives, so a late reply to a connection
        // that closed can never reach a new one.
        let id = ConnId(self.next);
        self.next += 1;
        poll.registry()
            .register(&mut stream, Token(id.0), Interest::READABLE)?;
        self.serial += 1;
        let mut conn = Conn {
            stream,
            reader: FrameReader::new(),
            out: Vec::new(),
            greeted: false,
            inflight: 0,
            writable: false,
            serial: self.serial,
            pinned,
            held: 0,
        };
        if let Ok(hello) = proto::encode_frame(&Message::hello()) {
            conn.out.extend_from_slice(&hello);
        }
        self.conns.insert(id, conn);
        self.flush(poll, id);
        Ok(id)
    }

    /// Accepts a bounded batch of connections; true if it stopped at the bound, with more
    /// possibly waiting (mio will not report them again).
    pub(crate) fn accept(&mut self, poll: &Poll) -> bool {
        for _ in 0..ACCEPT_BATCH {
            let (stream, _) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    // EMFILE and the like: not marked pending, which would spin the loop while
                    // it lasts; the next client's edge retries.
                    log::warn!("control socket: accept failed: {}", lower(&e));
                    return false;
                }
            };
            // A peer's out-of-band byte, fds attached, would be skipped by our reads and its
            // fds closed on the loop: taken inline instead.
            if let Err(e) = crate::sys::oob_inline(std::os::fd::AsFd::as_fd(&stream)) {
                log::warn!("control socket: {}", lower(&e));
                continue;
            }
            match nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
            {
                Ok(cred) if cred.uid() == self.uid || cred.uid() == 0 => {}
                Ok(cred) => {
                    log::warn!(
                        "control socket: refused a peer of uid {} (pid {})",
                        cred.uid(),
                        cred.pid()
                    );
                    continue;
                }
                Err(e) => {
                    log::warn!("control socket: unable to read peer credentials: {e}");
                    continue;
                }
            }
            if self.conns.len() >= MAX_CONNS {
                let oldest_idle = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.inflight == 0 && !c.pinned)
                    .min_by_key(|(_, c)| c.serial)
                    .map(|(id, _)| *id);
                match oldest_idle {
                    Some(id) => self.close(
                        poll,
                        id,
                        "too many control connections; dropped the oldest idle one",
                    ),
                    None => {
                        log::warn!("control socket: too many busy connections; refused one");
                        continue;
                    }
                }
            }
            if let Err(e) = self.insert(poll, stream, false) {
                log::warn!(
                    "control socket: unable to register a connection: {}",
                    lower(&e)
                );
            }
        }
        true
    }

    /// Brings the global count up to date with what `id` holds now; closes it (and returns
    /// false) if that crosses [`MAX_BUFFERED`].
    fn account(&mut self, poll: &Poll, id: ConnId) -> bool {
        let Some(conn) = self.conns.get_mut(&id) else {
            return false;
        };
        let now = conn.buffered();
        let others = self.buffered - conn.held;
        if !conn.pinned && now > conn.held && others + now > MAX_BUFFERED {
            self.close(
                poll,
                id,
                "the control connections together hold too much; closed this one",
            );
            return false;
        }
        let held = if conn.pinned { 0 } else { now };
        self.buffered = others + held;
        conn.held = held;
        true
    }

    /// Handles readiness of one connection; returns the requests it completed.
    pub(crate) fn on_ready(
        &mut self,
        poll: &Poll,
        id: ConnId,
        readable: bool,
        writable: bool,
    ) -> (Vec<(Requester, Request)>, bool) {
        let mut requests = Vec::new();
        if writable {
            self.flush(poll, id);
        }
        if !readable {
            return (requests, false);
        }
        let mut closed = None;
        let mut more = false;
        let mut buf = [0u8; 16 * 1024];
        // Read until WouldBlock, but bounded per wake-up; the caller comes back if `more`.
        for i in 0..=READ_BATCH {
            let Some(conn) = self.conns.get_mut(&id) else {
                return (requests, false);
            };
            if i == READ_BATCH
                || conn.reader.pending() > proto::MAX_FRAME + proto::HEADER_LEN + buf.len()
            {
                more = true;
                break;
            }
            // Fds a peer (the shell worker, on its link) sends along are closed off the loop.
            let got = crate::sys::recv_nowait(std::os::fd::AsFd::as_fd(&conn.stream), &mut buf);
            match got {
                Ok(0) => {
                    closed = Some("closed by peer".to_string());
                    break;
                }
                Ok(n) => conn.reader.push(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    closed = Some(lower(&e));
                    break;
                }
            }
            if !self.account(poll, id) {
                return (requests, false);
            }
        }
        if let Some(conn) = self.conns.get_mut(&id) {
            loop {
                match conn.reader.next_frame::<Message>() {
                    Ok(None) => break,
                    Ok(Some(msg)) if !conn.greeted => match proto::check_hello(&msg) {
                        Ok(()) => conn.greeted = true,
                        Err(e) => {
                            closed = Some(e.to_string());
                            break;
                        }
                    },
                    Ok(Some(Message::Request { id: rid, request })) => {
                        if conn.inflight >= MAX_INFLIGHT {
                            closed = Some("too many requests in flight".into());
                            break;
                        }
                        conn.inflight += 1;
                        requests.push((requester(id, rid), request));
                    }
                    Ok(Some(_)) => {
                        closed = Some("unexpected message: expected a request".into());
                        break;
                    }
                    Err(e) => {
                        closed = Some(e.to_string());
                        break;
                    }
                }
            }
        }
        if let Some(why) = closed {
            // Requests completed before the bad frame still run; their replies go nowhere.
            self.close(poll, id, &why);
            return (requests, false);
        }
        self.account(poll, id);
        (requests, more)
    }

    /// Bytes of replies waiting to be written to `who`'s connection; `None` once it closed.
    pub(crate) fn queued(&self, who: Requester) -> Option<usize> {
        self.conns.get(&split(who).0).map(|c| c.out.len())
    }

    pub(crate) fn send_progress(&mut self, poll: &Poll, who: Requester, progress: Progress) {
        let (conn, id) = split(who);
        self.send(poll, conn, &Message::Progress { id, progress }, false);
    }

    pub(crate) fn send_reply(&mut self, poll: &Poll, who: Requester, reply: Reply) {
        let (conn, id) = split(who);
        self.send(poll, conn, &Message::Reply { id, reply }, true);
    }

    fn send(&mut self, poll: &Poll, id: ConnId, msg: &Message, last: bool) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if last {
            conn.inflight = conn.inflight.saturating_sub(1);
        }
        match proto::encode_frame(msg) {
            Ok(frame) => conn.out.extend_from_slice(&frame),
            Err(e) => {
                log::error!("unable to encode a reply: {e}");
                return;
            }
        }
        if conn.out.len() > MAX_QUEUED {
            self.close(poll, id, "the peer does not read its replies");
            return;
        }
        self.flush(poll, id);
    }

    fn flush(&mut self, poll: &Poll, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let mut error = None;
        while !conn.out.is_empty() {
            match conn.stream.write(&conn.out) {
                Ok(0) => {
                    error = Some("write returned 0".to_string());
                    break;
                }
                Ok(n) => {
                    conn.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    error = Some(lower(&e));
                    break;
                }
            }
        }
        if let Some(why) = error {
            self.close(poll, id, &why);
            return;
        }
        let want_write = !conn.out.is_empty();
        if want_write != conn.writable {
            let interest = if want_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if poll
                .registry()
                .reregister(&mut conn.stream, Token(id.0), interest)
                .is_ok()
            {
                conn.writable = want_write;
            }
        }
        self.account(poll, id);
    }

    /// Best effort before exit: whatever fits in the socket buffers goes out.
    pub(crate) fn flush_all(&mut self) {
        for conn in self.conns.values_mut() {
            let _ = conn.stream.write(&conn.out);
        }
    }

    pub(crate) fn close(&mut self, poll: &Poll, id: ConnId, why: &str) {
        if let Some(mut conn) = self.conns.remove(&id) {
            self.buffered -= conn.held;
            if why != "closed by peer" {
                log::debug!("control connection {} closed: {why}", id.0);
            }
            let _ = poll.registry().deregister(&mut conn.stream);
            // Bytes left unread may carry fds whose close waits: closed with it, off the loop.
            crate::sys::close_own(std::os::fd::OwnedFd::from(conn.stream));
        }
    }
}

impl Connections {
    /// The plain-data image of the control socket and every connection, with what each has
    /// buffered, for an upgrade in place. The fds stay ours until the exec.
    pub(crate) fn image(&self) -> reloadsup_protocol::upgrade::ControlImage {
        use std::os::fd::AsRawFd;
        reloadsup_protocol::upgrade::ControlImage {
            listener_fd: self.listener.as_raw_fd(),
            conns: self
                .conns
                .iter()
                .map(|(id, c)| reloadsup_protocol::upgrade::ConnImage {
                    id: id.0 as u64,
                    fd: c.stream.as_raw_fd(),
                    input: c.reader.buffered().to_vec(),
                    output: c.out.clone(),
                    greeted: c.greeted,
                    inflight: c.inflight as u32,
                    serial: c.serial,
                    pinned: c.pinned,
                })
                .collect(),
            next: self.next as u64,
            serial: self.serial,
        }
    }

    /// Rebuilds the connections from an upgrade's hand-off, registered in a fresh poll.
    pub(crate) fn resume(
        poll: &Poll,
        image: reloadsup_protocol::upgrade::ControlImage,
        take: &mut dyn FnMut(i32, &str) -> Result<std::os::fd::OwnedFd, String>,
    ) -> Result<Connections, String> {
        let listener =
            std::os::unix::net::UnixListener::from(take(image.listener_fd, "the control socket")?);
        let mut listener = UnixListener::from_std(listener);
        poll.registry()
            .register(&mut listener, Token(super::CONTROL.0), Interest::READABLE)
            .map_err(|e| format!("poll the control socket: {}", lower(&e)))?;
        let mut conns = Connections {
            listener,
            conns: BTreeMap::new(),
            next: image.next as usize,
            serial: image.serial,
            uid: nix::unistd::geteuid().as_raw(),
            buffered: 0,
        };
        for c in image.conns {
            let fd = take(c.fd, "a control connection")?;
            // An older release accepted it (or made the shell's link) without taking
            // out-of-band data inline.
            crate::sys::oob_inline(std::os::fd::AsFd::as_fd(&fd))
                .map_err(|e| format!("a control connection: {}", lower(&e)))?;
            let mut stream = UnixStream::from_std(std::os::unix::net::UnixStream::from(fd));
            let id = ConnId(c.id as usize);
            poll.registry()
                .register(&mut stream, Token(id.0), Interest::READABLE)
                .map_err(|e| format!("poll a control connection: {}", lower(&e)))?;
            let mut reader = FrameReader::new();
            reader.push(&c.input);
            conns.conns.insert(
                id,
                Conn {
                    stream,
                    reader,
                    out: c.output,
                    greeted: c.greeted,
                    inflight: c.inflight as usize,
                    writable: false,
                    serial: c.serial,
                    pinned: c.pinned,
                    held: 0,
                },
            );
            conns.flush(poll, id);
        }
        Ok(conns)
    }

    /// Every connection's id, to serve each once after an upgrade (mio reports only edges).
    pub(crate) fn ids(&self) -> Vec<usize> {
        self.conns.keys().map(|id| id.0).collect()
    }
}
