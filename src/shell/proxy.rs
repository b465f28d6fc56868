//! The console programs' connections to the supervisor: a program's `reloadsup ctl` cannot use
//! the primary's `control.sock` (it serves only the primary's own uid and root, and the shell
//! runs as `nobody` or `--admin-user`), so it connects through the door its session gave it
//! (see `Proxy` in the shell), and the shell forwards each request over its link under an id
//! of its own and relays the progress and the reply back ([`super::Shell`] does the
//! forwarding).
//!
//! It owns the client connections' buffers and framing, nothing else. Like everything in the
//! shell's loop it never blocks: every client is non-blocking, its input and output are
//! bounded, and a client that breaks a bound or the protocol is closed. Only connections
//! passed through a door are served: there is no path to find.

use std::io::{self, Write};

use mio::net::UnixStream;
use mio::{Interest, Registry, Token};
use reloadsup_protocol::{self as proto, FrameReader, Message, Request};

use crate::error::lower;

/// At most this many programs' connections at once; more are refused.
pub(super) const MAX_CLIENTS: usize = 16;
/// At most this many of them for the programs of one session: one program cannot take every
/// connection from the others.
pub(super) const MAX_PER_SESSION: usize = 8;
/// Requests of one client waiting for the primary; `ctl` sends one at a time.
pub(super) const MAX_IN_FLIGHT: usize = 8;
/// Requests of all clients together on the shell's link, closed clients' included until the
/// primary answers them. The primary closes a link with 64 requests in flight, and the
/// sessions have at most one each (16): past this, a request is answered with an error at
/// once instead of costing every session its console.
pub(super) const MAX_FORWARDED: usize = 32;
/// Unsent output per client (progress of `logs -f` to a program that does not read): past it
/// the client is closed rather than buffered without end.
const MAX_OUT: usize = 4 * proto::MAX_FRAME;

pub(super) struct Client {
    pub stream: UnixStream,
    reader: FrameReader,
    out: Vec<u8>,
    greeted: bool,
    writable: bool,
    pub in_flight: usize,
    /// The console session whose program opened it: it ends with that session.
    pub session: super::SessionId,
}

impl Client {
    pub(super) fn new(stream: UnixStream, session: super::SessionId) -> Client {
        let mut c = Client {
            stream,
            reader: FrameReader::new(),
            out: Vec::new(),
            greeted: false,
            writable: false,
            in_flight: 0,
            session,
        };
        if let Ok(hello) = proto::encode_frame(&Message::hello()) {
            c.out.extend_from_slice(&hello);
        }
        c
    }

    /// The connection itself, to be closed.
    pub(super) fn into_stream(self) -> UnixStream {
        self.stream
    }

    /// Reads everything the client sent (to WouldBlock: readiness is edge-triggered) and
    /// returns its requests, or why it must be closed. `Ok((_, true))` is the end of its input.
    pub(super) fn read(&mut self) -> Result<(Vec<(u32, Request)>, bool), String> {
        let mut requests = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        let mut eof = false;
        loop {
            // Fds a program sends along are closed off this loop (`close_soon`).
            let got = crate::sys::recv_nowait(std::os::fd::AsFd::as_fd(&self.stream), &mut buf);
            match got {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => self.reader.push(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(lower(&e)),
            }
            // Frames are taken as they come, so the buffer never holds more than one frame
            // (the reader refuses one over MAX_FRAME).
            self.frames(&mut requests)?;
        }
        self.frames(&mut requests)?;
        Ok((requests, eof))
    }

    fn frames(&mut self, requests: &mut Vec<(u32, Request)>) -> Result<(), String> {
        while let Some(msg) = self
            .reader
            .next_frame::<Message>()
            .map_err(|e| format!("bad frame: {e}"))?
        {
            if !self.greeted {
                proto::check_hello(&msg).map_err(|e| e.to_string())?;
                self.greeted = true;
                continue;
            }
            match msg {
                Message::Request { id, request } => {
                    if self.in_flight + requests.len() >= MAX_IN_FLIGHT {
                        return Err(format!("more than {MAX_IN_FLIGHT} requests at once"));
                    }
                    requests.push((id, request));
                }
                _ => return Err("unexpected message".into()),
            }
        }
        Ok(())
    }

    /// Queues a message for the client; the caller flushes.
    pub(super) fn send(&mut self, msg: &Message) -> Result<(), String> {
        let frame = proto::encode_frame(msg).map_err(|e| e.to_string())?;
        if self.out.len() + frame.len() > MAX_OUT {
            return Err("the program does not read its replies".into());
        }
        self.out.extend_from_slice(&frame);
        Ok(())
    }

    /// Writes what it can, and watches for writability only while output waits.
    pub(super) fn flush(&mut self, registry: &Registry, token: Token) -> Result<(), String> {
        while !self.out.is_empty() {
            match self.stream.write(&self.out) {
                Ok(0) => return Err("closed".into()),
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(lower(&e)),
            }
        }
        let want = !self.out.is_empty();
        if want != self.writable {
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            registry
                .reregister(&mut self.stream, token, interest)
                .map_err(|e| lower(&e))?;
            self.writable = want;
        }
        Ok(())
    }
}
