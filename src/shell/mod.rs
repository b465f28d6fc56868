//! The shell worker: the TLS admin console of DESIGN.md section 7, a hidden role (`__shell`)
//! of the reloadsup executable that the primary starts when `--admin` is given.
//!
//! It owns the admin listener (bound by the primary and passed at fd hand-off), the TLS
//! sessions, password checks and console commands. It reaches the workers only through
//! requests to the primary over its link, a stream socketpair that carries control frames
//! exactly like the control socket. It must never block its loop on a client, a command or the
//! primary, and never panic on what a client sends: every session is a state machine fed by
//! readiness events, and anything slow (password hashing, custom commands) runs on a thread
//! that reports back through a channel and a [`mio::Waker`].
//!
//! Architecture invariant: a bad client costs at most one session slot until its deadline,
//! and one source (an IPv4 address, an IPv6 /64) can never lock out an operator at another:
//! accepts are rate-limited per source, at most `admission::PER_SOURCE` of its connections
//! wait to log in, the source holding the most pays when `MAX_PENDING` are waiting, and
//! password checks are scheduled one per source (`admission`).

mod admission;
pub(crate) mod auth;
mod commands;
pub(crate) mod console;
mod proxy;
mod session;
#[cfg(test)]
mod tests;

pub use commands::{Commands, Context, Handler};
/// The wire types a custom command needs for [`Context::request`], so that a supervisor built
/// on the library depends on reloadsup alone.
pub use reloadsup_protocol::{Outcome, Progress, ReloadOutcome, Reply, Request, Status};

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, UnixStream};
use mio::{Events, Interest, Poll, Token};
use reloadsup_protocol::{
    self as proto, CustomCommand, FrameReader, Message, ShellSpec, PROTOCOL_VERSION,
};

use crate::error::lower;
use crate::sys;
use crate::tls;
use admission::{AcceptRate, Admit, Attempts, Checks, Source, Waiting};
use auth::PasswordHash;
use commands::{Outbox, SessionId, ToJob, ToLoop};
use console::{Line, Show, ERROR_PREFIX};
use session::{Phase, Session};

/// At most this many logged-in sessions.
pub(crate) const MAX_SESSIONS: usize = 16;
/// At most this many connections that have not logged in yet; past it the source holding the
/// most loses its oldest one.
pub(crate) const MAX_PENDING: usize = 64;
/// Time from accept to a correct password.
pub(crate) const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// A logged-in session at its prompt is closed after this long without input.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// The longest line a client may send, in bytes.
pub(crate) const MAX_LINE: usize = 4096;
/// How long a wrong password waits for its answer.
pub(crate) const DENY_DELAY: Duration = Duration::from_secs(1);
/// Wrong passwords before the connection closes.
pub(crate) const MAX_FAILURES: u32 = 3;
/// After `restart`, how long a session waits to be replaced before it carries on.
const RESTART_GRACE: Duration = Duration::from_secs(10);
/// Threads that check passwords; PBKDF2 is slow on purpose and must not run on the loop.
const VERIFIERS: usize = 2;

const LISTENER: Token = Token(0);
const LINK: Token = Token(1);
const WAKER: Token = Token(2);
const SIGNALS: Token = Token(3);
const FIRST_SESSION: usize = 16;
/// Connections accepted per turn of the loop, so a connection storm cannot starve the sessions.
const ACCEPT_BATCH: usize = 256;

/// What woke the loop.
enum Event {
    Accept,
    Link,
    Wake,
    Signal,
    /// A session, a console program's door or a connection through one: they share the
    /// token space.
    Session(SessionId),
}

fn classify(token: Token) -> Event {
    match token {
        LISTENER => Event::Accept,
        LINK => Event::Link,
        WAKER => Event::Wake,
        SIGNALS => Event::Signal,
        Token(t) => Event::Session(t),
    }
}

/// The `__shell` role: receives the spec and the admin listener on fd 3, then serves until the
/// primary goes away or sends SIGTERM. `args` are `[--uid U --gid G]`, the credentials to drop
/// to once the fds are in hand. Returns the exit code.
pub(crate) fn run_role(args: &[OsString], commands: Commands) -> u8 {
    crate::init_logging();
    let drop_to = match crate::roles::credentials(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("reloadsup: shell worker: {e}");
            return 2;
        }
    };
    // The primary blocks the signals it handles through its loop, and a spawned process
    // inherits that mask: unblock them before any thread starts, or SIGTERM would never
    // arrive. Dispositions stay as Rust set them (SIGPIPE ignored, so a vanished client is an
    // EPIPE error, not our death).
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
    if let Err(e) = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None) {
        log::warn!("admin console: unable to unblock signals: {e}");
    }
    let link = match sys::take_role_link() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("reloadsup: shell worker: {}", lower(&e));
            return 2;
        }
    };
    match serve(link, commands, true, drop_to) {
        Ok(code) => code,
        Err(e) => {
            log::error!("admin console: {e}");
            1
        }
    }
}

/// Runs the shell worker on `link`. `as_role` is false in tests that run it on a thread: then
/// it neither watches signals nor ties itself to its parent. With `drop_to`, it switches to
/// that uid and gid once it holds the spec and the listener (TLS, login and console programs
/// then run unprivileged), and serves its programs a control socket of its own.
pub(crate) fn serve(
    link: OwnedFd,
    commands: Commands,
    as_role: bool,
    drop_to: Option<(u32, u32)>,
) -> Result<u8, String> {
    serve_on(link, commands, as_role, drop_to, drop_to.is_some())
}

/// [`serve`], in tests with the programs' control socket but no drop (a thread cannot drop).
#[cfg(test)]
pub(crate) fn serve_proxied(link: OwnedFd, commands: Commands) -> Result<u8, String> {
    serve_on(link, commands, false, None, true)
}

fn serve_on(
    link: OwnedFd,
    commands: Commands,
    as_role: bool,
    drop_to: Option<(u32, u32)>,
    proxy: bool,
) -> Result<u8, String> {
    let (spec, listener, reader) = receive_spec(&link)?;
    if let Some((uid, gid)) = drop_to {
        // Before any thread starts, so that every thread has the new credentials.
        sys::drop_privileges(Some(uid), Some(gid)).map_err(|e| e.to_string())?;
        // A process of the same uid (a worker, with --user) must not ptrace us and use the
        // link; the kernel usually does this on a change of credentials, but not always
        // (fs.suid_dumpable=1).
        sys::set_undumpable().map_err(|e| format!("unable to be undumpable: {}", lower(&e)))?;
    }
    if as_role {
        // After the drop: a change of credentials clears the parent-death signal.
        sys::die_with_parent(spec.primary_pid).map_err(|e| lower(&e))?;
    }
    let _ = proxy;
    let mut shell = Shell::new(spec, listener, link, reader, commands, as_role)?;
    shell.proxy = Some(Proxy::default());
    shell.run()
}

/// Reads the one [`ShellSpec`] frame and the listener fd that came with its first bytes. A
/// stream socket may deliver the frame in several reads; whatever follows it (the primary's
/// hello) stays in the returned reader.
fn receive_spec(link: &OwnedFd) -> Result<(ShellSpec, OwnedFd, FrameReader), String> {
    let mut reader = FrameReader::new();
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let spec = loop {
        let (n, got) = sys::recv_with_fds(link.as_fd(), &mut buf, 1)
            .map_err(|e| format!("unable to receive the spec: {}", lower(&e)))?;
        fds.extend(got);
        if n == 0 {
            return Err("the primary closed the link before sending the spec".into());
        }
        reader.push(&buf[..n]);
        if let Some(spec) = reader
            .next_frame::<ShellSpec>()
            .map_err(|e| format!("bad spec from the primary: {e}"))?
        {
            break spec;
        }
    };
    if spec.version != PROTOCOL_VERSION {
        return Err(proto::Error::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: spec.version,
        }
        .to_string());
    }
    if spec.fd_count != 1 || fds.len() != 1 {
        return Err(proto::Error::FdCount {
            expected: spec.fd_count as usize,
            received: fds.len(),
        }
        .to_string());
    }
    let listener = fds.remove(0);
    Ok((spec, listener, reader))
}

/// Who waits for a reply from the primary.
enum Waiter {
    Session(SessionId, Show),
    /// A custom command; `restart` names its session when the request was a restart.
    Job(Sender<Result<Reply, String>>, Option<SessionId>),
    /// A request of a connection to the proxy socket, under the id the client gave it.
    Client(usize, u32),
    /// Nobody waits for the reply (ending the log follow of a client that went away).
    Nobody,
}

/// How console programs reach the primary ([`proxy`]): never through a path, which any
/// process of the shell's uid could find and use (issue 18, item 4), but through a *door*, one
/// end of a socket pair the program inherits (`RELOADSUP_CONTROL=fd:N`). Through it the
/// program's `reloadsup ctl` asks for a connection, and the shell answers with one end of a
/// stream pair it made, serving the other as a client. A program's doors, and the clients
/// that came through them, end with its job, or its session.
#[derive(Default)]
struct Proxy {
    doors: BTreeMap<usize, Door>,
    clients: BTreeMap<usize, proxy::Client>,
}

/// Stops polling `door` and closes it on the closing thread: messages left in it may carry
/// fds whose close waits.
fn shut(poll: &Poll, door: Door) {
    let raw = std::os::fd::AsRawFd::as_raw_fd(&door.fd);
    let _ = poll.registry().deregister(&mut mio::unix::SourceFd(&raw));
    sys::close_own(door.fd);
}

/// The shell's end of a console program's door.
struct Door {
    session: SessionId,
    fd: OwnedFd,
}

struct Link {
    stream: UnixStream,
    reader: FrameReader,
    out: Vec<u8>,
    greeted: bool,
    writable: bool,
    next_id: u32,
    waiting: HashMap<u32, Waiter>,
}

struct Shell {
    poll: Poll,
    listener: TcpListener,
    link: Link,
    sessions: BTreeMap<SessionId, Session>,
    next_session: usize,
    tls: Arc<rustls::ServerConfig>,
    attempts: Attempts,
    rate: AcceptRate,
    checks: Checks,
    commands: Commands,
    external: BTreeMap<String, CustomCommand>,
    outbox: Outbox,
    inbox: Receiver<ToLoop>,
    verify: Sender<(SessionId, String)>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    stopping: Option<String>,
    proxy: Option<Proxy>,
    /// Requests of the proxy's clients on the link, waiting for the primary's reply.
    forwarded: usize,
    /// The link ids of the `logs -f` requests of each proxy client, ended when it goes away.
    follows: BTreeMap<usize, Vec<u32>>,
    /// The last accept batch stopped at its bound with connections possibly still queued:
    /// mio reports only new edges, so the loop polls without waiting and accepts again.
    accept_pending: bool,
}

impl Shell {
    fn new(
        spec: ShellSpec,
        listener: OwnedFd,
        link: OwnedFd,
        reader: FrameReader,
        commands: Commands,
        as_role: bool,
    ) -> Result<Shell, String> {
        let hash = PasswordHash::parse(&spec.password_hash).map_err(|e| e.to_string())?;
        let tls = tls::server_config(&spec.cert_pem, &spec.key_pem)?;
        let poll = Poll::new().map_err(|e| format!("unable to poll: {}", lower(&e)))?;
        let fail = |what: &str, e: io::Error| format!("{what}: {}", lower(&e));

        let listener = std::net::TcpListener::from(listener);
        listener
            .set_nonblocking(true)
            .map_err(|e| fail("unable to use the admin listener", e))?;
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(|e| fail("unable to watch the admin listener", e))?;

        let link = std::os::unix::net::UnixStream::from(link);
        link.set_nonblocking(true)
            .map_err(|e| fail("unable to use the link", e))?;
        let mut stream = UnixStream::from_std(link);
        poll.registry()
            .register(&mut stream, LINK, Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| fail("unable to watch the link", e))?;

        let waker = Arc::new(
            mio::Waker::new(poll.registry(), WAKER)
                .map_err(|e| fail("unable to make a waker", e))?,
        );
        // Bounded so that a command printing in a tight loop waits for the loop instead of
        // filling memory; the loop always drains it whole.
        let (tx, inbox) = mpsc::sync_channel(1024);
        let outbox = Outbox { tx, waker };

        let signals = if as_role {
            use signal_hook::consts::{SIGINT, SIGTERM};
            let mut s = signal_hook_mio::v1_0::Signals::new([SIGTERM, SIGINT])
                .map_err(|e| fail("unable to watch signals", e))?;
            poll.registry()
                .register(&mut s, SIGNALS, Interest::READABLE)
                .map_err(|e| fail("unable to watch signals", e))?;
            Some(s)
        } else {
            None
        };

        let hash = Arc::new(hash);
        let (verify, jobs) = mpsc::channel::<(SessionId, String)>();
        let jobs = Arc::new(Mutex::new(jobs));
        for i in 0..VERIFIERS {
            let jobs = jobs.clone();
            let hash = hash.clone();
            let outbox = outbox.clone();
            std::thread::Builder::new()
                .name(format!("verify-{i}"))
                .spawn(move || loop {
                    let next = match jobs.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok((sid, password)) = next else { return };
                    let ok = hash.verify(password.as_bytes());
                    drop(password);
                    if !outbox.send(ToLoop::Verified(sid, ok)) {
                        return;
                    }
                })
                .map_err(|e| fail("unable to start a thread", e))?;
        }

        let mut external = BTreeMap::new();
        for c in spec.commands {
            if builtin_name(&c.name) || commands.get(&c.name).is_some() {
                log::warn!(
                    "admin console: the command '{}' of the config is shadowed by a built-in one",
                    c.name
                );
                continue;
            }
            external.insert(c.name.clone(), c);
        }

        let mut link = Link {
            stream,
            reader,
            out: Vec::new(),
            greeted: false,
            writable: true,
            next_id: 1,
            waiting: HashMap::new(),
        };
        if let Ok(hello) = proto::encode_frame(&Message::hello()) {
            link.out.extend_from_slice(&hello);
        }
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        log::info!(
            "admin console of {}: shell worker listening on {addr}",
            spec.name
        );
        Ok(Shell {
            poll,
            listener,
            link,
            sessions: BTreeMap::new(),
            next_session: FIRST_SESSION,
            tls,
            attempts: Attempts::default(),
            rate: AcceptRate::default(),
            checks: Checks::new(VERIFIERS),
            commands,
            external,

            outbox,
            inbox,
            verify,
            signals,
            stopping: None,
            proxy: None,
            accept_pending: false,
            forwarded: 0,
            follows: BTreeMap::new(),
        })
    }

    /// Makes a door for a program of session `sid`: returns the program's end, to be
    /// inherited; the shell's end is polled under a token of the sessions' space.
    fn open_door(&mut self, sid: SessionId) -> Result<OwnedFd, String> {
        let Some(proxy) = self.proxy.as_mut() else {
            return Err("console programs cannot reach the supervisor here".into());
        };
        let (ours, theirs) = sys::seqpacket_pair()
            .map_err(|e| format!("unable to make a control channel: {}", lower(&e)))?;
        sys::set_nonblocking(ours.as_fd(), true)
            .map_err(|e| format!("unable to make a control channel: {}", lower(&e)))?;
        let id = self.next_session;
        self.next_session += 1;
        self.poll
            .registry()
            .register(
                &mut mio::unix::SourceFd(&std::os::fd::AsRawFd::as_raw_fd(&ours)),
                Token(id),
                Interest::READABLE,
            )
            .map_err(|e| format!("unable to watch a control channel: {}", lower(&e)))?;
        proxy.doors.insert(
            id,
            Door {
                session: sid,
                fd: ours,
            },
        );
        Ok(theirs)
    }

    fn is_door(&self, id: usize) -> bool {
        self.proxy
            .as_ref()
            .is_some_and(|p| p.doors.contains_key(&id))
    }

    /// A door is readable: each message asks for a connection, which the shell makes (a
    /// stream pair, never an fd of the program's, whose flags the program could change) and
    /// answers with its other end (to WouldBlock: readiness is edge-triggered; a request past
    /// [`proxy::MAX_CLIENTS`] in all or [`proxy::MAX_PER_SESSION`] for this session gets no
    /// answer). At its end (every copy of the program's end closed) the door is closed.
    fn on_door(&mut self, id: usize) {
        loop {
            if !sys::closer_keeps_up() {
                // Fds programs sent wait to be closed: read nothing that could add to them (a
                // program's ctl then times out and says so).
                return;
            }
            let Some(proxy) = self.proxy.as_mut() else {
                return;
            };
            let Some(door) = proxy.doors.get(&id) else {
                return;
            };
            let session = door.session;
            let mut byte = [0u8; 16];
            let (n, fds) = match sys::recv_all_fds(door.fd.as_fd(), &mut byte) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("admin console: a program's control channel: {}", lower(&e));
                    return;
                }
            };
            // Nothing is to be sent to us: an fd whose last close may wait is closed on the
            // closing thread, never on this loop.
            fds.into_iter().for_each(sys::close_soon);
            if n == 0 {
                // Every copy of the program's end is closed (or an empty message: the same).
                if let Some(door) = proxy.doors.remove(&id) {
                    shut(&self.poll, door);
                }
                return;
            }
            let held = proxy
                .clients
                .values()
                .filter(|c| c.session == session)
                .count();
            if proxy.clients.len() >= proxy::MAX_CLIENTS || held >= proxy::MAX_PER_SESSION {
                // Said, so that the program's ctl need not wait for its timeout.
                let _ = sys::send_nonblocking(door.fd.as_fd(), b"r");
                log::warn!(
                    "admin console: console programs: more than {} connections (or {} of one session); refused one",
                    proxy::MAX_CLIENTS,
                    proxy::MAX_PER_SESSION
                );
                continue;
            }
            let (ours, theirs) = match sys::stream_pair() {
                Ok(pair) => pair,
                Err(e) => {
                    log::warn!("admin console: a program's connection: {}", lower(&e));
                    continue;
                }
            };
            if let Err(e) = sys::send_with_fds_nonblocking(door.fd.as_fd(), b"c", &[theirs.as_fd()])
            {
                log::debug!("admin console: a program's connection: {}", lower(&e));
                continue;
            }
            drop(theirs);
            let std_stream = std::os::unix::net::UnixStream::from(ours);
            if let Err(e) = std_stream.set_nonblocking(true) {
                log::debug!("admin console: a program's connection: {}", lower(&e));
                continue;
            }
            let cid = self.next_session;
            self.next_session += 1;
            let mut client = proxy::Client::new(UnixStream::from_std(std_stream), session);
            if let Err(e) = self.poll.registry().register(
                &mut client.stream,
                Token(cid),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                log::warn!("admin console: a program's connection: {}", lower(&e));
                continue;
            }
            proxy.clients.insert(cid, client);
            self.flush_client(cid);
        }
    }

    /// Session `sid`'s program ended, or the session did: its doors close, and so do the
    /// connections that came through them, so that nothing a program left behind keeps the
    /// console's authority.
    fn close_doors(&mut self, sid: SessionId) {
        let Some(proxy) = self.proxy.as_mut() else {
            return;
        };
        let gone: Vec<usize> = proxy
            .doors
            .iter()
            .filter(|(_, d)| d.session == sid)
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            if let Some(door) = proxy.doors.remove(&id) {
                shut(&self.poll, door);
            }
        }
        let clients: Vec<usize> = proxy
            .clients
            .iter()
            .filter(|(_, c)| c.session == sid)
            .map(|(&id, _)| id)
            .collect();
        for id in clients {
            self.drop_client(id, Some("its console session ended".into()));
        }
    }

    fn is_client(&self, id: usize) -> bool {
        self.proxy
            .as_ref()
            .is_some_and(|p| p.clients.contains_key(&id))
    }

    fn read_client(&mut self, id: usize) {
        let Some(client) = self.proxy.as_mut().and_then(|p| p.clients.get_mut(&id)) else {
            return;
        };
        match client.read() {
            Ok((requests, eof)) => {
                client.in_flight += requests.len();
                for (cid, request) in requests {
                    if self.forwarded >= proxy::MAX_FORWARDED {
                        let busy = format!(
                            "more than {} requests of console programs at once; try again",
                            proxy::MAX_FORWARDED
                        );
                        self.forwarded += 1;
                        self.answer(Waiter::Client(id, cid), Reply::Error(busy));
                        continue;
                    }
                    self.forwarded += 1;
                    if matches!(request, Request::Login { .. }) {
                        // Only the shell itself reports logins: a program cannot count one.
                        let no = Reply::Error("login results come from the shell only".into());
                        self.answer(Waiter::Client(id, cid), no);
                        continue;
                    }
                    let follow = matches!(&request, Request::Logs(q) if q.follow);
                    let link_id = self.ask(Waiter::Client(id, cid), request);
                    if follow {
                        self.follows.entry(id).or_default().push(link_id);
                    }
                }
                if eof {
                    self.drop_client(id, None);
                }
            }
            Err(why) => self.drop_client(id, Some(why)),
        }
    }

    /// Queues `msg` for client `id` and writes it.
    fn tell_client(&mut self, id: usize, msg: &Message) {
        let Some(client) = self.proxy.as_mut().and_then(|p| p.clients.get_mut(&id)) else {
            return;
        };
        if let Err(why) = client.send(msg) {
            self.drop_client(id, Some(why));
            return;
        }
        self.flush_client(id);
    }

    fn flush_client(&mut self, id: usize) {
        let Some(proxy) = self.proxy.as_mut() else {
            return;
        };
        let Some(client) = proxy.clients.get_mut(&id) else {
            return;
        };
        if let Err(why) = client.flush(self.poll.registry(), Token(id)) {
            self.drop_client(id, Some(why));
        }
    }

    /// Closes a client; replies still due to it are dropped when they come.
    fn drop_client(&mut self, id: usize, why: Option<String>) {
        let Some(mut client) = self.proxy.as_mut().and_then(|p| p.clients.remove(&id)) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut client.stream);
        // Bytes left unread may carry fds whose close waits: closed with it, off the loop.
        sys::close_own(std::os::fd::OwnedFd::from(client.into_stream()));
        // Its follows would go on in the primary and the logger for nobody.
        for request in self.follows.remove(&id).unwrap_or_default() {
            if self.link.waiting.contains_key(&request) {
                self.ask(Waiter::Nobody, Request::StopLogs { request });
            }
        }
        if let Some(why) = why {
            log::debug!("admin console: control socket: closed a connection: {why}");
        }
    }

    fn run(&mut self) -> Result<u8, String> {
        let mut events = Events::with_capacity(256);
        // The hello may have come with the spec: handle what is already buffered.
        self.on_link(true, true);
        loop {
            if let Some(why) = self.stopping.take() {
                // The primary answers `restart` and then sends SIGTERM: deliver what it wrote
                // before the signal, so the session sees the outcome before it ends.
                let _ = self.link_io(true, false);
                self.drain_inbox();
                self.shutdown(&why);
                return Ok(0);
            }
            let now = Instant::now();
            let timeout = if self.accept_pending {
                Some(Duration::ZERO)
            } else {
                self.sessions
                    .values()
                    .filter_map(|s| s.deadline())
                    .min()
                    .map(|d| d.saturating_duration_since(now))
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("unable to poll: {}", lower(&e)));
            }
            // Accepted once per turn: on its edge, or because the last batch left some.
            let mut accept = std::mem::take(&mut self.accept_pending);
            for ev in events.iter() {
                match classify(ev.token()) {
                    Event::Accept => accept = true,
                    Event::Link => self.on_link(
                        ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                        ev.is_writable(),
                    ),
                    Event::Wake => {}
                    Event::Signal => self.on_signals(),
                    Event::Session(id) if self.is_door(id) => self.on_door(id),
                    Event::Session(id) if self.is_client(id) => {
                        if ev.is_writable() {
                            self.flush_client(id);
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.read_client(id);
                        }
                    }
                    Event::Session(sid) => {
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.read_session(sid);
                        }
                    }
                }
            }
            if accept {
                self.accept_pending = self.accept();
            }
            // Messages from jobs and verifiers may come without a wake-up of their own (one
            // wake-up covers many), so the inbox is drained on every turn.
            self.drain_inbox();
            self.expire(Instant::now());
            self.sweep();
        }
    }

    fn on_signals(&mut self) {
        let Some(signals) = self.signals.as_mut() else {
            return;
        };
        if let Some(sig) = signals.pending().next() {
            let name = nix::sys::signal::Signal::try_from(sig)
                .map(|s| s.as_str())
                .unwrap_or("a signal");
            self.stopping = Some(format!("got {name}"));
        }
    }

    /// Ends every session and job; called once before exit.
    fn shutdown(&mut self, why: &str) {
        log::info!("admin console: shell worker exiting: {why}");
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for sid in ids {
            self.close(sid, "the console is shutting down");
        }
        self.sweep();
        for w in self.link.waiting.drain().map(|(_, w)| w) {
            if let Waiter::Job(tx, _) = w {
                let _ = tx.send(Err("the console is shutting down".into()));
            }
        }
        self.proxy = None;
    }

    // -----------------------------------------------------------------------------------------
    // Accepting
    // -----------------------------------------------------------------------------------------

    /// Accepts a batch of at most [`ACCEPT_BATCH`] connections; true if it stopped at the
    /// bound, with more possibly waiting that mio will not report again.
    fn accept(&mut self) -> bool {
        for _ in 0..ACCEPT_BATCH {
            let (stream, peer) = match self.listener.accept() {
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
                    // it lasts; the next connection's edge retries.
                    log::warn!("admin console: accept failed: {}", lower(&e));
                    return false;
                }
            };
            let now = Instant::now();
            let source = Source::of(peer.ip());
            if !self.rate.allow(source, now) {
                // Closed at once: a connection left in the kernel's queue would wait ahead
                // of the operator's.
                log::debug!(
                    "admin console: too many connections from {}; closed one",
                    peer.ip()
                );
                continue;
            }
            let waiting: Vec<Waiting> = self
                .sessions
                .values()
                .filter(|s| !s.logged_in && s.closing.is_none())
                .map(|s| Waiting {
                    id: s.id,
                    source: Source::of(s.peer.ip()),
                    accepted: s.accepted,
                    verifying: matches!(s.phase, Phase::Verifying),
                })
                .collect();
            match admission::admit(&waiting, source, MAX_PENDING) {
                Admit::Accept => {}
                Admit::Evict(sid) => {
                    log::debug!(
                        "admin console: too many connections logging in; dropped the oldest of the busiest address"
                    );
                    self.close(sid, "too many connections logging in");
                    self.sweep_one(sid);
                }
                Admit::Refuse => {
                    log::debug!(
                        "admin console: too many connections from {} logging in; closed one",
                        peer.ip()
                    );
                    continue;
                }
            }
            let tls = match rustls::ServerConnection::new(self.tls.clone()) {
                Ok(t) => t,
                Err(e) => {
                    log::warn!("admin console: unable to start TLS: {e}");
                    continue;
                }
            };
            let sid = self.next_session;
            self.next_session += 1;
            let mut session = Session::new(sid, stream, peer, tls, now);
            if let Err(e) =
                self.poll
                    .registry()
                    .register(&mut session.stream, Token(sid), Interest::READABLE)
            {
                log::warn!("admin console: unable to watch a connection: {}", lower(&e));
                continue;
            }
            let _ = session.stream.set_nodelay(true);
            self.sessions.insert(sid, session);
        }
        true
    }

    // -----------------------------------------------------------------------------------------
    // Sessions
    // -----------------------------------------------------------------------------------------

    fn read_session(&mut self, sid: SessionId) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let was_handshaking = !s.handshaken;
        if let Err(why) = s.read(Instant::now()) {
            self.close(sid, &why);
            return;
        }
        if was_handshaking && s.handshaken {
            s.say(console::PASSWORD_PROMPT);
            s.phase = Phase::Password;
        }
        self.advance(sid);
    }

    /// Feeds queued lines to whatever the session waits for, as long as it waits for a line.
    fn advance(&mut self, sid: SessionId) {
        loop {
            let Some(s) = self.sessions.get_mut(&sid) else {
                return;
            };
            if s.closing.is_some() {
                return;
            }
            match &mut s.phase {
                Phase::Password => {
                    let Some(line) = s.lines.pop_front() else {
                        return;
                    };
                    self.password(sid, line);
                }
                Phase::Prompt => {
                    let Some(line) = s.lines.pop_front() else {
                        return;
                    };
                    s.last_input = Instant::now();
                    self.command(sid, &line);
                }
                Phase::Job {
                    input,
                    wants_line,
                    external,
                } => {
                    if !*wants_line && !*external {
                        return;
                    }
                    let Some(line) = s.lines.pop_front() else {
                        return;
                    };
                    if !*external {
                        *wants_line = false;
                        // The answer to a read_line prompt ends that prompt's line.
                    }
                    let _ = input.send(ToJob::Line(line));
                }
                Phase::Waiting => {
                    // Any line typed ends a follow (and is not taken as a command).
                    let follow = self.link.waiting.iter().find_map(|(&id, w)| {
                        matches!(w, Waiter::Session(x, Show::Follow) if *x == sid).then_some(id)
                    });
                    let Some(request) = follow else { return };
                    if s.lines.pop_front().is_none() {
                        return;
                    }
                    self.ask(
                        Waiter::Session(sid, Show::Silent),
                        Request::StopLogs { request },
                    );
                    return;
                }
                _ => return,
            }
        }
    }

    fn password(&mut self, sid: SessionId, password: String) {
        let now = Instant::now();
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let ip = s.peer.ip();
        let source = Source::of(ip);
        if !self.attempts.allowed(source, now) {
            log::warn!("admin console: too many failed logins from {ip}; refused another");
            s.say(&format!(
                "{ERROR_PREFIX}too many failed logins from {ip}; try again later\n"
            ));
            self.close(sid, "too many failed logins from its address");
            return;
        }
        // Counted now, not when the check ends: a check whose session is gone by then
        // still was a guess.
        self.attempts.attempt(source, now);
        if password.len() > auth::MAX_PASSWORD || password.is_empty() {
            // Not worth hashing; answered like any wrong password.
            self.denied(sid, now);
            return;
        }
        if !self.checks.submit(sid, source, password) {
            s.say(&format!(
                "{ERROR_PREFIX}too many logins under way; try again later\n"
            ));
            self.close(sid, "too many password checks queued");
            return;
        }
        s.phase = Phase::Verifying;
        self.dispatch_checks();
    }

    /// Hands queued password checks to free verifiers; the verifier threads never queue.
    fn dispatch_checks(&mut self) {
        loop {
            let attempts = &self.attempts;
            let Some((sid, password)) = self.checks.next(|s| attempts.count(s)) else {
                return;
            };
            if self.verify.send((sid, password)).is_err() {
                self.checks.done(sid);
                self.close(sid, "the password checker is gone");
            }
        }
    }

    fn verified(&mut self, sid: SessionId, ok: bool) {
        let now = Instant::now();
        self.checks.done(sid);
        self.dispatch_checks();
        self.report_login(ok);
        let logged_in = self.sessions.values().filter(|s| s.logged_in).count();
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if !matches!(s.phase, Phase::Verifying) {
            return;
        }
        if !ok {
            self.denied(sid, now);
            return;
        }
        if logged_in >= MAX_SESSIONS {
            s.say(&format!(
                "{ERROR_PREFIX}too many console sessions ({MAX_SESSIONS}); try again later\n"
            ));
            self.close(sid, "too many sessions");
            return;
        }
        self.attempts.succeeded(Source::of(s.peer.ip()));
        log::info!(
            "admin console: {} logged in ({} password checks computed so far)",
            s.peer,
            self.checks.computed
        );
        s.logged_in = true;
        s.failures = 0;
        s.last_input = now;
        s.prompt();
        self.advance(sid);
    }

    fn denied(&mut self, sid: SessionId, now: Instant) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        s.failures += 1;
        log::warn!(
            "admin console: wrong password from {} ({} of {MAX_FAILURES}; {} password checks computed so far)",
            s.peer,
            s.failures,
            self.checks.computed
        );
        // Lines typed ahead were meant for a session that did not open: never take them as
        // further password guesses.
        s.lines.clear();
        s.phase = Phase::Denied {
            until: now + DENY_DELAY,
        };
    }

    fn command(&mut self, sid: SessionId, line: &str) {
        let parsed = console::parse(line);
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        match parsed {
            Err(e) => {
                s.say(&format!("{ERROR_PREFIX}{e}\n"));
                s.prompt();
            }
            Ok(Line::Empty) => s.prompt(),
            Ok(Line::Help) => {
                let custom: Vec<(String, String)> = self
                    .commands
                    .help()
                    .map(|(n, h)| (n.to_string(), h.to_string()))
                    .chain(
                        self.external
                            .values()
                            .map(|c| (c.name.clone(), c.help.clone())),
                    )
                    .collect();
                s.say(&console::help(
                    custom.iter().map(|(n, h)| (n.as_str(), h.as_str())),
                ));
                s.prompt();
            }
            Ok(Line::Exit) => {
                self.close(sid, "left");
            }
            Ok(Line::Ask(request, show)) => {
                if show == Show::Restart {
                    s.restart_requested = true;
                }
                s.phase = Phase::Waiting;
                self.ask(Waiter::Session(sid, show), request);
            }
            Ok(Line::Other(words)) => self.custom(sid, words),
        }
    }

    fn custom(&mut self, sid: SessionId, words: Vec<String>) {
        if !self.sessions.contains_key(&sid) {
            return;
        }
        let name = words.first().cloned().unwrap_or_default();
        let external = self.external.get(&name).cloned();
        let started = if let Some(handler) = self.commands.get(&name) {
            Some(
                commands::spawn_closure(handler.clone(), words, sid, self.outbox.clone())
                    .map(|tx| (tx, false)),
            )
        } else {
            external.map(|c| {
                self.open_door(sid).and_then(|door| {
                    // The program's copy is the child's now: ours closes when this returns.
                    commands::spawn_program(&c, &words[1..], door.as_fd(), sid, self.outbox.clone())
                        .map(|tx| (tx, true))
                })
            })
        };
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        match started {
            None => {
                s.say(&format!(
                    "{ERROR_PREFIX}unknown command '{name}'; 'help' lists the commands\n"
                ));
                s.prompt();
            }
            Some(Ok((input, external))) => {
                log::info!("admin console: {} runs '{name}'", s.peer);
                s.phase = Phase::Job {
                    input,
                    wants_line: false,
                    external,
                };
            }
            Some(Err(e)) => {
                s.say(&format!("{ERROR_PREFIX}{e}\n"));
                s.prompt();
            }
        }
    }

    fn close(&mut self, sid: SessionId, why: &str) {
        if let Some(s) = self.sessions.get_mut(&sid) {
            if s.closing.is_none() {
                s.closing = Some(why.to_string());
            }
        }
    }

    /// Timers: login, wrong-password delay, restart grace, idle prompt, idle command.
    fn expire(&mut self, now: Instant) {
        let due: Vec<SessionId> = self
            .sessions
            .values()
            .filter(|s| s.deadline().is_some_and(|d| d <= now))
            .map(|s| s.id)
            .collect();
        for sid in due {
            let Some(s) = self.sessions.get_mut(&sid) else {
                continue;
            };
            if !s.logged_in && now >= s.accepted + LOGIN_TIMEOUT {
                if s.handshaken {
                    s.say(&format!("\n{ERROR_PREFIX}login timed out\n"));
                }
                self.close(sid, "login timed out");
                continue;
            }
            match s.phase {
                Phase::Denied { until } if until <= now => {
                    s.say(&format!("{}\n", console::ACCESS_DENIED));
                    if s.failures >= MAX_FAILURES {
                        self.close(sid, "too many wrong passwords");
                    } else {
                        s.say(console::PASSWORD_PROMPT);
                        s.phase = Phase::Password;
                        self.advance(sid);
                    }
                }
                Phase::Restarting { until } if until <= now => {
                    s.restart_requested = false;
                    s.say(&format!(
                        "{ERROR_PREFIX}the console was not replaced after the restart\n"
                    ));
                    s.prompt();
                    self.advance(sid);
                }
                Phase::Job { .. } if now >= s.last_input + IDLE_TIMEOUT => {
                    s.say(&format!(
                        "\n{ERROR_PREFIX}stopping the command after {} minutes without input or output\n",
                        IDLE_TIMEOUT.as_secs() / 60
                    ));
                    self.close(sid, "command idle");
                }
                Phase::Prompt if now >= s.last_input + IDLE_TIMEOUT => {
                    s.say(&format!(
                        "\n{ERROR_PREFIX}closing the session after {} minutes without input\n",
                        IDLE_TIMEOUT.as_secs() / 60
                    ));
                    self.close(sid, "idle");
                }
                _ => {}
            }
        }
    }

    /// Writes what sessions have to say, and drops the closed ones.
    fn sweep(&mut self) {
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for sid in ids {
            self.sweep_one(sid);
        }
    }

    fn sweep_one(&mut self, sid: SessionId) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if s.closing.is_none() {
            if let Err(why) = s.flush(self.poll.registry()) {
                s.closing = Some(why);
            } else if s.eof && (s.lines.is_empty() || matches!(s.phase, Phase::Job { .. })) {
                match &s.phase {
                    // A command's session ends with its client: `finish` stops the command
                    // (a program loses its stdin and its process group is stopped), so
                    // neither the slot nor the program outlive the connection.
                    Phase::Job { .. }
                    | Phase::Handshake
                    | Phase::Password
                    | Phase::Prompt
                    | Phase::Denied { .. }
                    | Phase::Restarting { .. } => {
                        s.closing = Some("closed by the client".into());
                    }
                    Phase::Verifying | Phase::Waiting => {}
                }
            }
        }
        let Some(why) = s.closing.clone() else {
            return;
        };
        self.close_doors(sid);
        if let Some(mut s) = self.sessions.remove(&sid) {
            // A queued check of a closed session is dropped before anything is hashed.
            self.checks.cancel(sid);
            s.finish(self.poll.registry());
            if s.logged_in {
                log::info!("admin console: session of {} ended: {why}", s.peer);
            } else {
                log::debug!("admin console: connection from {} closed: {why}", s.peer);
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Jobs and verifiers
    // -----------------------------------------------------------------------------------------

    fn drain_inbox(&mut self) {
        // Bounded per turn so a chatty command cannot starve the sessions.
        for _ in 0..4096 {
            let Ok(msg) = self.inbox.try_recv() else {
                return;
            };
            match msg {
                ToLoop::Verified(sid, ok) => self.verified(sid, ok),
                ToLoop::Output(sid, bytes) => {
                    if let Some(s) = self.sessions.get_mut(&sid) {
                        s.say_bytes(&bytes);
                        // Output is activity too: the command's deadline counts from it.
                        s.last_input = Instant::now();
                    }
                }
                ToLoop::ReadLine(sid, prompt) => {
                    if let Some(s) = self.sessions.get_mut(&sid) {
                        if let Phase::Job { wants_line, .. } = &mut s.phase {
                            *wants_line = true;
                            s.say(&prompt);
                        }
                        self.advance(sid);
                    }
                }
                ToLoop::Request(sid, request, reply) => {
                    let Some(s) = self.sessions.get_mut(&sid) else {
                        let _ = reply.send(Err("the session has ended".into()));
                        continue;
                    };
                    if matches!(request, Request::Login { .. }) {
                        let _ = reply.send(Err("login results come from the shell only".into()));
                        continue;
                    }
                    let restart = request == Request::Restart;
                    if restart {
                        s.restart_requested = true;
                    }
                    self.ask(Waiter::Job(reply, restart.then_some(sid)), request);
                }
                ToLoop::Done(sid, result) => {
                    // A program's authority ends with it: a process it left behind (out of
                    // its process group) keeps nothing.
                    self.close_doors(sid);
                    let Some(s) = self.sessions.get_mut(&sid) else {
                        continue;
                    };
                    if !matches!(s.phase, Phase::Job { .. }) {
                        continue;
                    }
                    if let Err(e) = result {
                        s.say(&format!("{ERROR_PREFIX}{e}\n"));
                    }
                    s.last_input = Instant::now();
                    s.done_or_restarting(Instant::now() + RESTART_GRACE);
                    self.advance(sid);
                }
            }
        }
        // More than a turn's worth: come back at once.
        let _ = self.outbox.waker.wake();
    }

    // -----------------------------------------------------------------------------------------
    // The link to the primary
    // -----------------------------------------------------------------------------------------

    /// Tells the primary a password check's result (`reloadsup_console_logins_total`); its
    /// answer has no waiter and is dropped.
    fn report_login(&mut self, ok: bool) {
        let mut id = self.link.next_id;
        while self.link.waiting.contains_key(&id) || id == 0 {
            id = id.wrapping_add(1);
        }
        self.link.next_id = id.wrapping_add(1);
        let request = Request::Login { ok };
        if let Ok(frame) = proto::encode_frame(&Message::Request { id, request }) {
            self.link.out.extend_from_slice(&frame);
            self.on_link(false, true);
        }
    }

    /// Sends `request` over the link; returns its id there.
    fn ask(&mut self, waiter: Waiter, request: Request) -> u32 {
        let mut id = self.link.next_id;
        while self.link.waiting.contains_key(&id) || id == 0 {
            id = id.wrapping_add(1);
        }
        self.link.next_id = id.wrapping_add(1);
        match proto::encode_frame(&Message::Request { id, request }) {
            Ok(frame) => {
                self.link.out.extend_from_slice(&frame);
                self.link.waiting.insert(id, waiter);
                self.on_link(false, true);
            }
            Err(e) => self.answer(waiter, Reply::Error(format!("unable to encode: {e}"))),
        }
        id
    }

    fn on_link(&mut self, readable: bool, writable: bool) {
        if let Err(why) = self.link_io(readable, writable) {
            self.stopping = Some(why);
        }
    }

    fn link_io(&mut self, readable: bool, writable: bool) -> Result<(), String> {
        // Frames that came before the end are still answers to deliver.
        let mut closed = None;
        if readable {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match self.link.stream.read(&mut buf) {
                    Ok(0) => {
                        closed = Some("the primary closed the link".to_string());
                        break;
                    }
                    Ok(n) => self.link.reader.push(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        closed = Some(format!("lost the link to the primary: {}", lower(&e)));
                        break;
                    }
                }
            }
        }
        loop {
            let msg = self
                .link
                .reader
                .next_frame::<Message>()
                .map_err(|e| format!("bad frame from the primary: {e}"))?;
            let Some(msg) = msg else { break };
            if !self.link.greeted {
                proto::check_hello(&msg).map_err(|e| e.to_string())?;
                self.link.greeted = true;
                continue;
            }
            match msg {
                Message::Progress { id, progress } => {
                    if let Some(&Waiter::Client(client, cid)) = self.link.waiting.get(&id) {
                        self.tell_client(client, &Message::Progress { id: cid, progress });
                    } else if let Some(Waiter::Session(sid, _)) = self.link.waiting.get(&id) {
                        let sid = *sid;
                        if let Some(s) = self.sessions.get_mut(&sid) {
                            match progress {
                                Progress::Log { skipped, lines } => s.say_log(skipped, &lines),
                                p => s.say(&format!("{}\n", crate::text::progress_line(&p))),
                            }
                        }
                    }
                }
                Message::Reply { id, reply } => {
                    if let Some(w) = self.link.waiting.remove(&id) {
                        self.answer(w, reply);
                    }
                }
                Message::Hello { .. } | Message::Request { .. } => {
                    return Err("unexpected message from the primary".into())
                }
            }
        }
        if let Some(why) = closed {
            return Err(why);
        }
        if writable || !self.link.out.is_empty() {
            while !self.link.out.is_empty() {
                match self.link.stream.write(&self.link.out) {
                    Ok(0) => return Err("the link to the primary is closed".into()),
                    Ok(n) => {
                        self.link.out.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(format!("lost the link to the primary: {}", lower(&e))),
                }
            }
            let want = !self.link.out.is_empty();
            if want != self.link.writable {
                let interest = if want {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                self.poll
                    .registry()
                    .reregister(&mut self.link.stream, LINK, interest)
                    .map_err(|e| format!("unable to watch the link: {}", lower(&e)))?;
                self.link.writable = want;
            }
        }
        Ok(())
    }

    fn answer(&mut self, waiter: Waiter, reply: Reply) {
        match waiter {
            Waiter::Nobody => {}
            Waiter::Client(client, cid) => {
                self.forwarded = self.forwarded.saturating_sub(1);
                if let Some(c) = self.proxy.as_mut().and_then(|p| p.clients.get_mut(&client)) {
                    c.in_flight = c.in_flight.saturating_sub(1);
                }
                self.tell_client(client, &Message::Reply { id: cid, reply });
            }
            Waiter::Job(tx, restart) => {
                // A refused restart replaces nothing: the session goes on after the command.
                if let (Some(sid), Reply::Error(_)) = (restart, &reply) {
                    if let Some(s) = self.sessions.get_mut(&sid) {
                        s.restart_requested = false;
                    }
                }
                let _ = tx.send(Ok(reply));
            }
            Waiter::Session(_, Show::Silent) => {}
            Waiter::Session(sid, show) => {
                let Some(s) = self.sessions.get_mut(&sid) else {
                    return;
                };
                s.say(&console::show(show, &reply));
                if show == Show::Restart {
                    if matches!(reply, Reply::Error(_)) {
                        s.restart_requested = false;
                    } else {
                        s.say("the console is being replaced; this session ends\n");
                    }
                }
                s.last_input = Instant::now();
                s.done_or_restarting(Instant::now() + RESTART_GRACE);
                self.advance(sid);
            }
        }
    }
}

fn builtin_name(name: &str) -> bool {
    matches!(
        name,
        "help" | ".exit" | "worker" | "reload" | "restart" | "status" | "upgrade" | "logs"
    )
}
