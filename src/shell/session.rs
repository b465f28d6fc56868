//! One console connection: its TLS state, its buffers, its phase and its deadlines.
//!
//! Reading turns TLS records into lines (at most [`MAX_LINE`] bytes each, a bounded queue of
//! them); writing moves queued text into rustls as fast as the socket takes it. Nothing here
//! blocks: the socket is non-blocking and every buffer has a limit past which the session is
//! closed rather than grown.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::mpsc::Sender;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::commands::{SessionId, ToJob};
use super::{console, IDLE_TIMEOUT, LOGIN_TIMEOUT, MAX_LINE};
use crate::error::lower;

/// Lines typed ahead of the session that may wait for it.
const MAX_QUEUED_LINES: usize = 64;
/// Output waiting for a client that does not read it; past this the session is closed.
const MAX_OUTPUT: usize = 1 << 20;

pub(super) enum Phase {
    /// The TLS handshake is under way.
    Handshake,
    /// `Password: ` was shown.
    Password,
    /// A password is being checked on a verifier thread.
    Verifying,
    /// A wrong password; the answer comes at `until`.
    Denied { until: Instant },
    /// `> ` was shown.
    Prompt,
    /// A built-in command waits for the primary.
    Waiting,
    /// A custom command runs. `wants_line`: a Rust command waits in `read_line`. External
    /// programs take every line typed while they run.
    Job {
        input: Sender<ToJob>,
        wants_line: bool,
        external: bool,
    },
    /// `restart` was answered; the shell worker is about to be replaced. If it is not by
    /// `until`, the session carries on.
    Restarting { until: Instant },
}

pub(super) struct Session {
    pub id: SessionId,
    pub stream: TcpStream,
    pub peer: SocketAddr,
    tls: rustls::ServerConnection,
    pub phase: Phase,
    pub accepted: Instant,
    pub last_input: Instant,
    pub handshaken: bool,
    pub logged_in: bool,
    pub failures: u32,
    pub restart_requested: bool,
    /// The client sent close_notify or closed its side.
    pub eof: bool,
    pub closing: Option<String>,
    pub lines: VecDeque<String>,
    partial: Vec<u8>,
    out: Vec<u8>,
    at_line_start: bool,
    /// Log lines not shown because the client did not read its output.
    log_skipped: u64,
    writable: bool,
}

impl Session {
    pub(super) fn new(
        id: SessionId,
        stream: TcpStream,
        peer: SocketAddr,
        tls: rustls::ServerConnection,
        now: Instant,
    ) -> Session {
        Session {
            id,
            stream,
            peer,
            tls,
            phase: Phase::Handshake,
            accepted: now,
            last_input: now,
            handshaken: false,
            logged_in: false,
            failures: 0,
            restart_requested: false,
            eof: false,
            closing: None,
            lines: VecDeque::new(),
            partial: Vec::new(),
            out: Vec::new(),
            at_line_start: true,
            log_skipped: 0,
            writable: false,
        }
    }

    /// The next time this session needs the loop without any I/O.
    pub(super) fn deadline(&self) -> Option<Instant> {
        if self.closing.is_some() {
            return None;
        }
        let login = (!self.logged_in).then_some(self.accepted + LOGIN_TIMEOUT);
        let phase = match self.phase {
            Phase::Denied { until } | Phase::Restarting { until } => Some(until),
            Phase::Prompt if self.logged_in => Some(self.last_input + IDLE_TIMEOUT),
            // A command that neither reads nor writes for as long is ended with its session.
            Phase::Job { .. } => Some(self.last_input + IDLE_TIMEOUT),
            _ => None,
        };
        match (login, phase) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(super) fn say(&mut self, text: &str) {
        self.say_bytes(text.as_bytes());
    }

    pub(super) fn say_bytes(&mut self, bytes: &[u8]) {
        if bytes.is_empty() || self.closing.is_some() {
            return;
        }
        if self.out.len() + bytes.len() > MAX_OUTPUT {
            self.closing = Some("the client does not read its output".into());
            self.out.clear();
            return;
        }
        self.out.extend_from_slice(bytes);
        self.at_line_start = bytes.ends_with(b"\n");
    }

    /// Log lines of `logs` / `logs -f`: while half the output limit waits unread, lines are
    /// counted as skipped instead (and said before the next ones), so a slow client loses
    /// lines, not its session.
    pub(super) fn say_log(&mut self, skipped: u64, lines: &[String]) {
        self.log_skipped += skipped;
        if self.out.len() > MAX_OUTPUT / 2 {
            self.log_skipped += lines.len() as u64;
            return;
        }
        let mut text = crate::text::skipped_marker(std::mem::take(&mut self.log_skipped));
        for l in lines {
            text.push_str(&reloadsup_protocol::notify::sanitize_log_line(l));
        }
        self.say(&text);
    }

    /// Shows `> ` on a line of its own.
    pub(super) fn prompt(&mut self) {
        if !self.at_line_start {
            self.say("\n");
        }
        self.say(console::PROMPT);
        self.phase = Phase::Prompt;
    }

    /// A command finished: back to the prompt, or wait for the replacement after `restart`.
    pub(super) fn done_or_restarting(&mut self, until: Instant) {
        if self.restart_requested {
            if !self.at_line_start {
                self.say("\n");
            }
            self.phase = Phase::Restarting { until };
        } else {
            self.prompt();
        }
    }

    /// Reads what the client sent, until the socket would block. Errors close the session.
    pub(super) fn read(&mut self, now: Instant) -> Result<(), String> {
        let mut got_input = false;
        loop {
            match self.tls.read_tls(&mut self.stream) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(lower(&e)),
            }
            let state = match self.tls.process_new_packets() {
                Ok(s) => s,
                Err(e) => {
                    // Best effort: tell the client why (the alert is queued by rustls).
                    let _ = self.tls.write_tls(&mut self.stream);
                    return Err(format!("TLS error: {e}"));
                }
            };
            if state.peer_has_closed() {
                self.eof = true;
            }
            if !self.tls.is_handshaking() {
                self.handshaken = true;
            }
            if state.plaintext_bytes_to_read() > 0 {
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match self.tls.reader().read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            got_input = true;
                            self.take_input(&buf[..n])?;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                            self.eof = true;
                            break;
                        }
                        Err(e) => return Err(lower(&e)),
                    }
                }
            }
            if self.eof {
                break;
            }
        }
        if self.eof && !self.partial.is_empty() {
            // A last line without its newline still counts.
            let line = std::mem::take(&mut self.partial);
            self.push_line(line)?;
        }
        if got_input {
            self.last_input = now;
        }
        Ok(())
    }

    fn take_input(&mut self, bytes: &[u8]) -> Result<(), String> {
        for chunk in bytes.split_inclusive(|&b| b == b'\n') {
            self.partial.extend_from_slice(chunk);
            if self.partial.ends_with(b"\n") {
                let mut line = std::mem::take(&mut self.partial);
                line.pop();
                if line.ends_with(b"\r") {
                    line.pop();
                }
                self.push_line(line)?;
            } else if self.partial.len() > MAX_LINE {
                return Err(self.too_long());
            }
        }
        Ok(())
    }

    fn push_line(&mut self, line: Vec<u8>) -> Result<(), String> {
        if line.len() > MAX_LINE {
            return Err(self.too_long());
        }
        if self.lines.len() >= MAX_QUEUED_LINES {
            self.say(&format!(
                "\n{}too many lines typed ahead\n",
                console::ERROR_PREFIX
            ));
            let _ = self.flush_now();
            return Err("too many lines typed ahead".into());
        }
        self.lines
            .push_back(String::from_utf8_lossy(&line).into_owned());
        // The user's Enter put their cursor at the start of a line (their terminal echoes).
        self.at_line_start = true;
        Ok(())
    }

    fn too_long(&mut self) -> String {
        self.say(&format!(
            "\n{}line longer than {MAX_LINE} bytes\n",
            console::ERROR_PREFIX
        ));
        let _ = self.flush_now();
        "line too long".into()
    }

    /// Moves queued output through TLS to the socket as far as it goes without blocking.
    fn flush_now(&mut self) -> Result<(), String> {
        loop {
            while self.tls.wants_write() {
                match self.tls.write_tls(&mut self.stream) {
                    Ok(0) => return Err("the client closed the connection".into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(lower(&e)),
                }
            }
            if self.out.is_empty() || !self.handshaken {
                return Ok(());
            }
            let n = self.out.len().min(16 * 1024);
            match self.tls.writer().write(&self.out[..n]) {
                Ok(0) => return Ok(()),
                Ok(w) => {
                    self.out.drain(..w);
                }
                Err(e) => return Err(lower(&e)),
            }
        }
    }

    /// Flushes and keeps the WRITABLE interest only while something waits for the socket.
    pub(super) fn flush(&mut self, registry: &Registry) -> Result<(), String> {
        self.flush_now()?;
        let want = self.tls.wants_write();
        if want != self.writable {
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            registry
                .reregister(&mut self.stream, Token(self.id), interest)
                .map_err(|e| lower(&e))?;
            self.writable = want;
        }
        Ok(())
    }

    /// The end: a running job is told, what fits is sent with close_notify, and the socket is
    /// dropped.
    pub(super) fn finish(&mut self, registry: &Registry) {
        if let Phase::Job { input, .. } = &self.phase {
            let _ = input.send(ToJob::Closed);
        }
        if self.handshaken {
            let _ = self.flush_now();
            self.tls.send_close_notify();
            let _ = self.flush_now();
        }
        // Unread input makes close(2) send a reset, which can destroy the last words (an
        // `Access denied`) before the client reads them: drain what is there first.
        let mut scratch = [0u8; 16 * 1024];
        for _ in 0..4 {
            match self.stream.read(&mut scratch) {
                Ok(n) if n > 0 => continue,
                _ => break,
            }
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        let _ = registry.deregister(&mut self.stream);
    }
}
