//! `hello`: a small HTTP/1.1 server to run under reloadsup (or alone, for benchmarks).
//!
//! Every request, whatever its method and path, is answered `200 OK` with the body
//! `pid=<pid> generation=<RELOADSUP_GENERATION> worker=<RELOADSUP_WORKER>\n`, so a client can see
//! which worker of which generation served it. `/slow?ms=N` waits N ms first, to keep a request in
//! flight across a reload.
//!
//! ```text
//! hello [--listen HOST:PORT] [--delay DURATION] [--no-ready] [--exit-code N] [--log-requests]
//! ```
//!
//! With `--log-requests` it prints `request N` on stdout before it answers each request, N
//! counting from 1 in each process, for the logger tests: every answered request has its line.
//!
//! Under reloadsup the listener is fd 3 (`LISTEN_FDS`), shared with every other worker of every
//! generation: this program never shuts it down, never changes its flags, and treats `EAGAIN` from
//! `accept` as "another worker won this connection" because the shared `O_NONBLOCK` flag may be set
//! by someone else. It also never assumes non-blocking mode: a blocking `accept` is interrupted by
//! a signal when it is time to drain (see `main`).
//!
//! On SIGTERM or SIGINT it stops accepting at once, lets every accepted connection finish its
//! current request (answered with `Connection: close`), waits at most 30 s for them, and exits 0.
//!
//! Exit codes: 0 after a drain, 2 on bad usage or an unusable listener, 1 on other failures,
//! N with `--exit-code N`.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::thread::JoinHandleExt;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use reloadsup_examples::{self as ex, Activation, LISTEN_FDS_START};

const USAGE: &str =
    "usage: hello [--listen HOST:PORT] [--delay DURATION] [--no-ready] [--exit-code N]
  --listen HOST:PORT  bind this address instead of using the socket-activated fd 3
  --delay DURATION    wait this long (250ms, 2s, ...) before accepting and signalling readiness;
                      also read from $HELLO_DELAY
  --no-ready          never send READY=1 (to exercise a ready timeout)
  --exit-code N       exit with status N at once (to exercise a failed reload)
  --log-requests      print `request N` on stdout before answering each request";

/// At most this many connections are served at once; more wait in our queue (never refused).
const MAX_CONNECTION_THREADS: usize = 1024;
/// How long in-flight connections may take once draining starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// A keep-alive connection idle for this long is closed, so idle clients cannot pin threads.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A connection accepted just before the drain gets this long for its first request to arrive:
/// the client has already sent it (or is about to), and we owe it an answer.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);
/// Request heads larger than this are refused with 431.
const MAX_HEAD: usize = 64 * 1024;
/// `/slow?ms=N` is capped so a typo cannot hold a drain for hours.
const MAX_SLOW: Duration = Duration::from_secs(600);

/// Set once draining starts; connection threads read it to answer with `Connection: close`.
static STOP: AtomicBool = AtomicBool::new(false);
/// `--log-requests`.
static LOG_REQUESTS: AtomicBool = AtomicBool::new(false);
/// Requests answered (with `--log-requests`), numbered under stdout's lock so that the
/// numbers appear in order.
static REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

struct Config {
    listen: Option<String>,
    delay: Duration,
    ready: bool,
    exit_code: Option<u8>,
}

fn main() -> ExitCode {
    let config = match parse_args(std::env::args().skip(1)) {
        Ok(Some(config)) => config,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("hello: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Some(code) = config.exit_code {
        eprintln!(
            "hello: pid={} exiting with {code} as asked",
            std::process::id()
        );
        return ExitCode::from(code);
    }
    let listener = match Listener::open(config.listen.as_deref()) {
        Ok(listener) => listener,
        Err(message) => {
            eprintln!("hello: {message}");
            return ExitCode::from(2);
        }
    };
    match run(&config, listener) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hello: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Returns `Ok(None)` for `--help`.
fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<Config>, String> {
    let mut config = Config {
        listen: None,
        delay: Duration::ZERO,
        ready: true,
        exit_code: None,
    };
    let mut delay = None;
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--listen" => config.listen = Some(value("--listen")?),
            "--delay" => delay = Some(value("--delay")?),
            "--no-ready" => config.ready = false,
            "--log-requests" => LOG_REQUESTS.store(true, Ordering::SeqCst),
            "--exit-code" => {
                let v = value("--exit-code")?;
                let code = v
                    .parse::<u8>()
                    .map_err(|_| format!("--exit-code {v:?}: expected 0..=255"))?;
                config.exit_code = Some(code);
            }
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    let (source, delay) = match delay {
        Some(d) => ("--delay", Some(d)),
        None => ("HELLO_DELAY", std::env::var("HELLO_DELAY").ok()),
    };
    if let Some(d) = delay.filter(|d| !d.is_empty()) {
        config.delay = ex::parse_duration(&d).map_err(|e| format!("{source}: {e}"))?;
    }
    Ok(Some(config))
}

/// The listening socket: inherited fd 3, or one we bound for `--listen`.
struct Listener {
    fd: RawFd,
    unix: bool,
    description: String,
    /// Keeps a socket we bound ourselves open; `None` for the inherited fd 3, which we leave
    /// open until exit (closing our copy would be harmless, but there is no reason to).
    _bound: Option<TcpListener>,
}

impl Listener {
    fn open(listen: Option<&str>) -> Result<Listener, String> {
        match (ex::activation()?, listen) {
            (Activation::Ours { .. }, Some(addr)) => Err(format!(
                "--listen {addr} given but sockets were passed by LISTEN_FDS; use one or the other"
            )),
            (Activation::Ours { .. }, None) => Listener::inherited(LISTEN_FDS_START),
            (_, Some(addr)) => {
                let bound = TcpListener::bind(addr)
                    .map_err(|e| format!("unable to bind --listen {addr}: {e}"))?;
                let description = bound
                    .local_addr()
                    .map_or_else(|_| addr.to_owned(), |a| a.to_string());
                Ok(Listener {
                    fd: bound.as_raw_fd(),
                    unix: false,
                    description,
                    _bound: Some(bound),
                })
            }
            (Activation::OtherPid { listen_pid }, None) => Err(format!(
                "LISTEN_FDS is set but LISTEN_PID={listen_pid:?} is not our pid {}; \
                 the sockets are not ours (pass --listen HOST:PORT to bind one)",
                std::process::id()
            )),
            (Activation::None, None) => Err(
                "no listener: run under reloadsup (LISTEN_FDS) or pass --listen HOST:PORT"
                    .to_owned(),
            ),
        }
    }

    /// Validates an inherited fd the way listenfd does before adopting it: a stream socket, in
    /// the listening state, of a family we can serve.
    fn inherited(fd: RawFd) -> Result<Listener, String> {
        let kind = ex::socket_type(fd).map_err(|e| format!("fd {fd} is not a socket: {e}"))?;
        if kind != libc::SOCK_STREAM {
            return Err(format!("fd {fd} is not a stream socket (type {kind})"));
        }
        match ex::is_listening(fd) {
            Ok(true) => {}
            Ok(false) => return Err(format!("fd {fd} is a socket but not listening")),
            Err(e) => return Err(format!("fd {fd}: unable to read SO_ACCEPTCONN: {e}")),
        }
        let addr = ex::local_addr(fd).map_err(|e| format!("fd {fd}: getsockname: {e}"))?;
        let unix = match addr {
            ex::LocalAddr::Inet(_) => false,
            ex::LocalAddr::Unix(_) => true,
            ex::LocalAddr::Other(family) => {
                return Err(format!("fd {fd} has unsupported address family {family}"))
            }
        };
        // Close-on-exec is a per-fd flag, not shared with the other workers, so setting it is
        // safe; it keeps the listener out of anything this process might run.
        // SAFETY: plain fcntl on an fd we just validated; no memory is passed.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        Ok(Listener {
            fd,
            unix,
            description: format!("fd {fd}"),
            _bound: None,
        })
    }
}

fn run(config: &Config, listener: Listener) -> io::Result<ExitCode> {
    let pid = std::process::id();
    let generation = ex::env_u64("RELOADSUP_GENERATION");
    let worker = ex::env_u64("RELOADSUP_WORKER");
    eprintln!(
        "hello: pid={pid} generation={generation} worker={worker} serving on {}",
        listener.description
    );

    // SIGTERM and SIGINT are blocked in every thread and taken synchronously by this (main)
    // thread with sigwait. That is a self-pipe in spirit with no async-signal-safety concerns:
    // main then writes the drain pipe that the acceptor and idle connections poll on.
    let term = signal_set(&[libc::SIGTERM, libc::SIGINT]);
    sigmask(libc::SIG_BLOCK, &term)?;
    // The acceptor may sit in a blocking accept() (the shared listener may be in blocking mode),
    // where no pipe can reach it; SIGUSR1 sent to that thread interrupts it with EINTR, which is
    // why the handler is installed without SA_RESTART.
    install_nudge_handler()?;

    if !config.delay.is_zero() && wait_signal(&term, Some(config.delay))? {
        // Told to stop while still starting: nothing was accepted, nothing to drain.
        eprintln!("hello: pid={pid} stopped before serving");
        return Ok(ExitCode::SUCCESS);
    }

    let drain = DrainPipe::new()?;
    let responses = Arc::new(Responses::new(&format!(
        "pid={pid} generation={generation} worker={worker}\n"
    )));
    let pool = Arc::new(Pool::default());
    let acceptor = {
        let pool = Arc::clone(&pool);
        let drain_fd = drain.read_fd;
        let responses = Arc::clone(&responses);
        std::thread::Builder::new()
            .name("accept".to_owned())
            .spawn(move || accept_loop(&listener, drain_fd, &pool, &responses))?
    };

    let mut code = ExitCode::SUCCESS;
    if config.ready {
        if let Err(e) = ex::notify("READY=1\nSTATUS=serving") {
            // Without readiness the supervisor would only time us out; failing now says why.
            eprintln!("hello: unable to send READY=1 to NOTIFY_SOCKET: {e}");
            request_stop();
            code = ExitCode::FAILURE;
        }
    }

    wait_signal(&term, None)?;
    if ACCEPT_FAILED.load(Ordering::SeqCst) {
        code = ExitCode::FAILURE;
    }
    STOP.store(true, Ordering::SeqCst);
    drain.raise();
    // Nudge until the acceptor notices; each nudge either lands in a blocking call (EINTR) or
    // just before one, in which case the next nudge catches it.
    let thread = acceptor.as_pthread_t();
    while !acceptor.is_finished() {
        // SAFETY: the thread has not been joined, so its pthread_t is still valid.
        unsafe { libc::pthread_kill(thread, libc::SIGUSR1) };
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = acceptor.join();

    let left = pool.wait_idle(DRAIN_TIMEOUT);
    if left > 0 {
        eprintln!("hello: pid={pid} drain timed out with {left} connection(s) still open");
    }
    eprintln!("hello: pid={pid} drained, exiting");
    Ok(code)
}

/// Set by the acceptor when the listener itself is broken, so main exits 1 after draining.
static ACCEPT_FAILED: AtomicBool = AtomicBool::new(false);

/// Asks main to drain, from any thread: a process-directed SIGTERM is taken by main's sigwait
/// (every thread blocks it), while `raise` would target the calling thread only.
fn request_stop() {
    // SAFETY: kill on our own pid with a valid signal number; no memory is passed.
    unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
}

fn accept_loop(listener: &Listener, drain_fd: RawFd, pool: &Arc<Pool>, responses: &Arc<Responses>) {
    let mut last_resource_warning: Option<Instant> = None;
    while !STOP.load(Ordering::SeqCst) {
        // SAFETY: null address pointers are allowed by accept4; the fd is the listener.
        let fd = unsafe {
            libc::accept4(
                listener.fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: accept4 just returned this fd and nothing else owns it. Accepted sockets do
            // not inherit the listener's O_NONBLOCK on Linux, so the stream is blocking.
            let conn = unsafe { Conn::from_raw_fd(fd, listener.unix) };
            pool.submit(conn, drain_fd, responses);
            continue;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error().unwrap_or(0) {
            // A nudge from main, or any other signal: the loop condition decides.
            libc::EINTR => {}
            // The shared listener is non-blocking and its queue is empty: another worker won
            // the connection, or there was none. Wait for the next one or for the drain.
            libc::EAGAIN => {
                wait_readable(&[listener.fd, drain_fd], None);
            }
            // The connection died in the queue, or a pending network error surfaced (accept(2)
            // says to treat those like EAGAIN and retry).
            libc::ECONNABORTED
            | libc::EPROTO
            | libc::ENETDOWN
            | libc::ENOPROTOOPT
            | libc::EHOSTDOWN
            | libc::ENONET
            | libc::EHOSTUNREACH
            | libc::EOPNOTSUPP
            | libc::ENETUNREACH
            | libc::EPERM => {}
            // Out of fds or memory: the connection stays queued in the kernel; back off a little
            // and warn at most once a second.
            libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => {
                let recently = last_resource_warning
                    .is_some_and(|t: Instant| t.elapsed() < Duration::from_secs(1));
                if !recently {
                    eprintln!("hello: accept: {err} (backing off)");
                    last_resource_warning = Some(Instant::now());
                }
                wait_readable(&[drain_fd], Some(Duration::from_millis(50)));
            }
            // EBADF, ENOTSOCK, EINVAL (no longer listening): the listener is gone, which no retry
            // can fix. Drain what we have and exit 1.
            _ => {
                eprintln!("hello: accept on {}: {err}", listener.description);
                ACCEPT_FAILED.store(true, Ordering::SeqCst);
                request_stop();
                return;
            }
        }
    }
}

/// Polls `fds` for input; returns on input, error, timeout or a signal alike, because every
/// caller re-checks its own condition afterwards.
fn wait_readable(fds: &[RawFd], timeout: Option<Duration>) -> Vec<libc::c_short> {
    let mut pollfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let timeout_ms = timeout.map_or(-1, |t| {
        libc::c_int::try_from(t.as_millis().max(1)).unwrap_or(libc::c_int::MAX)
    });
    // SAFETY: `pollfds` is a valid array of `pollfds.len()` entries for the whole call.
    let rc = unsafe {
        libc::poll(
            pollfds.as_mut_ptr(),
            pollfds.len() as libc::nfds_t,
            timeout_ms,
        )
    };
    if rc <= 0 {
        return vec![0; fds.len()];
    }
    pollfds.iter().map(|p| p.revents).collect()
}

/// An accepted connection on either kind of listener.
enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    /// # Safety
    /// `fd` must be an open, connected stream socket owned by nobody else.
    unsafe fn from_raw_fd(fd: RawFd, unix: bool) -> Conn {
        if unix {
            // SAFETY: guaranteed by the caller.
            Conn::Unix(unsafe { UnixStream::from_raw_fd(fd) })
        } else {
            // SAFETY: guaranteed by the caller.
            let stream = unsafe { TcpStream::from_raw_fd(fd) };
            // Responses go out in one write; without this a keep-alive client's next request
            // can wait on a delayed ACK.
            let _ = stream.set_nodelay(true);
            Conn::Tcp(stream)
        }
    }

    fn shutdown_write(&self) {
        // This is the accepted connection, never the shared listener.
        let _ = match self {
            Conn::Tcp(s) => s.shutdown(Shutdown::Write),
            Conn::Unix(s) => s.shutdown(Shutdown::Write),
        };
    }
}

impl AsRawFd for Conn {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Conn::Tcp(s) => s.as_raw_fd(),
            Conn::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Threads that serve connections, reused across connections (spawning one per connection
/// would cap the accept rate at the cost of a thread spawn).
#[derive(Default)]
struct Pool {
    state: Mutex<PoolState>,
    /// Signalled when a connection is queued.
    work: Condvar,
    /// Signalled when the pool goes idle (nothing queued, nothing being served).
    idle: Condvar,
}

#[derive(Default)]
struct PoolState {
    queue: VecDeque<Conn>,
    threads: usize,
    waiting: usize,
    busy: usize,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // The state stays consistent even if a connection thread panicked while holding the
        // lock (every update is a single counter or queue step), so poisoning is ignored.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn submit(self: &Arc<Self>, conn: Conn, drain_fd: RawFd, responses: &Arc<Responses>) {
        let spawn = {
            let mut state = self.lock();
            state.queue.push_back(conn);
            // Waiting threads that were notified but have not woken yet still count as
            // waiting, so comparing with the queue length avoids both lost and extra wakeups.
            if state.waiting >= state.queue.len() {
                self.work.notify_one();
                false
            } else if state.threads < MAX_CONNECTION_THREADS {
                state.threads += 1;
                true
            } else {
                // At the cap: the connection waits in the queue for a free thread.
                false
            }
        };
        if spawn {
            let pool = Arc::clone(self);
            let responses = Arc::clone(responses);
            let spawned = std::thread::Builder::new()
                .name("conn".to_owned())
                .stack_size(256 * 1024)
                .spawn(move || pool.work_loop(drain_fd, &responses));
            if let Err(e) = spawned {
                // The connection stays queued for an existing thread.
                eprintln!("hello: unable to start a connection thread: {e}");
                self.lock().threads -= 1;
            }
        }
    }

    fn work_loop(&self, drain_fd: RawFd, responses: &Responses) {
        // Only the acceptor should be interrupted by main's nudges.
        let _ = sigmask(libc::SIG_BLOCK, &signal_set(&[libc::SIGUSR1]));
        loop {
            let conn = {
                let mut state = self.lock();
                loop {
                    if let Some(conn) = state.queue.pop_front() {
                        state.busy += 1;
                        break conn;
                    }
                    state.waiting += 1;
                    state = self
                        .work
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                    state.waiting -= 1;
                }
            };
            serve(conn, drain_fd, responses);
            let mut state = self.lock();
            state.busy -= 1;
            if state.busy == 0 && state.queue.is_empty() {
                self.idle.notify_all();
            }
        }
    }

    /// Waits until no connection is queued or being served, or `timeout` passes; returns how
    /// many are left.
    fn wait_idle(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            let left = state.busy + state.queue.len();
            let now = Instant::now();
            if left == 0 || now >= deadline {
                return left;
            }
            state = self
                .idle
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// The fixed responses: the body never changes during the life of the process.
struct Responses {
    keep_alive: Vec<u8>,
    close: Vec<u8>,
    head_keep_alive: Vec<u8>,
    head_close: Vec<u8>,
}

impl Responses {
    fn new(body: &str) -> Responses {
        let head = |connection: &str| {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                 Connection: {connection}\r\n\r\n",
                body.len()
            )
        };
        Responses {
            keep_alive: format!("{}{body}", head("keep-alive")).into_bytes(),
            close: format!("{}{body}", head("close")).into_bytes(),
            head_keep_alive: head("keep-alive").into_bytes(),
            head_close: head("close").into_bytes(),
        }
    }
}

/// What we need from a request head; everything else is ignored.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    head_only: bool,
    keep_alive: bool,
    content_length: u64,
    /// A body we cannot delimit without decoding (Transfer-Encoding): answer, then close.
    undelimited_body: bool,
    expect_continue: bool,
    slow: Duration,
}

/// Parses a request head (without the final blank line). The bytes come from the network, so
/// any malformation is an error, never a panic.
fn parse_request(head: &[u8]) -> Result<Request, &'static str> {
    let text = std::str::from_utf8(head).map_err(|_| "request head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().ok_or("empty request")?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed request line");
    };
    if method.is_empty() || target.is_empty() {
        return Err("malformed request line");
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err("unsupported HTTP version"),
    };
    let mut request = Request {
        head_only: method == "HEAD",
        keep_alive: !http10,
        content_length: 0,
        undelimited_body: false,
        expect_continue: false,
        slow: slow_delay(target),
    };
    let mut content_length = None;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or("malformed header line")?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    request.keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") && http10 {
                    request.keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            let n: u64 = value.parse().map_err(|_| "invalid Content-Length")?;
            if content_length.is_some_and(|m| m != n) {
                return Err("conflicting Content-Length headers");
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            request.undelimited_body = true;
        } else if name.eq_ignore_ascii_case("expect") {
            request.expect_continue = value.eq_ignore_ascii_case("100-continue");
        }
    }
    request.content_length = content_length.unwrap_or(0);
    Ok(request)
}

/// `/slow?ms=N` asks for an N ms pause; anything else, or a malformed N, means none.
fn slow_delay(target: &str) -> Duration {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/slow" {
        return Duration::ZERO;
    }
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("ms="))
        .and_then(|ms| ms.parse::<u64>().ok())
        .map_or(Duration::ZERO, |ms| Duration::from_millis(ms).min(MAX_SLOW))
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Outcome of waiting for more request bytes.
enum Wait {
    Readable,
    /// Nothing came (idle timeout, or the drain began between requests): close quietly.
    Close,
}

/// Waits for request bytes on `conn`. Between requests of a keep-alive connection the drain
/// closes it at once; a connection still owing its first request gets a short grace instead,
/// since its client already chose us.
fn wait_request(conn: &Conn, drain_fd: RawFd, first: bool, partial: bool) -> Wait {
    let fd = conn.as_raw_fd();
    let deadline = Instant::now() + IDLE_TIMEOUT;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Wait::Close;
        }
        if STOP.load(Ordering::SeqCst) && !partial {
            let grace = if first {
                FIRST_REQUEST_GRACE
            } else {
                Duration::ZERO
            };
            let revents = wait_readable(&[fd], Some(grace.max(Duration::from_millis(1))));
            return if revents[0] != 0 {
                Wait::Readable
            } else {
                Wait::Close
            };
        }
        let revents = wait_readable(&[fd, drain_fd], Some(deadline - now));
        if revents[0] != 0 {
            return Wait::Readable;
        }
        // Timeout, signal or drain: loop to re-check.
    }
}

fn serve(mut conn: Conn, drain_fd: RawFd, responses: &Responses) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let mut first = true;
    loop {
        let head_end = loop {
            if let Some(end) = find_head_end(&buf) {
                break end;
            }
            if buf.len() > MAX_HEAD {
                let _ = conn.write_all(
                    b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n\
                      Connection: close\r\n\r\n",
                );
                return linger_close(conn);
            }
            if let Wait::Close = wait_request(&conn, drain_fd, first, !buf.is_empty()) {
                return;
            }
            match conn.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        };
        let request = match parse_request(&buf[..head_end]) {
            Ok(request) => request,
            Err(reason) => {
                let body = format!("{reason}\n");
                let _ = write!(
                    conn,
                    "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                return linger_close(conn);
            }
        };
        buf.drain(..head_end + 4);

        if request.expect_continue
            && request.content_length > 0
            && conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err()
        {
            return;
        }
        // The body is not used, only skipped so the next request starts at the right byte.
        if !skip_body(&mut conn, &mut buf, request.content_length, &mut chunk) {
            return;
        }
        if !request.slow.is_zero() {
            std::thread::sleep(request.slow);
        }
        let close = !request.keep_alive || request.undelimited_body || STOP.load(Ordering::SeqCst);
        let response = match (request.head_only, close) {
            (false, false) => &responses.keep_alive,
            (false, true) => &responses.close,
            (true, false) => &responses.head_keep_alive,
            (true, true) => &responses.head_close,
        };
        if LOG_REQUESTS.load(Ordering::Relaxed) {
            let mut out = io::stdout().lock();
            let n = REQUESTS.fetch_add(1, Ordering::SeqCst) + 1;
            let _ = writeln!(out, "request {n}");
        }
        if conn.write_all(response).is_err() {
            return;
        }
        if close {
            // Closing with unread bytes would reset the connection and could destroy the
            // response in flight, so linger only when the client sent more than we read.
            if !buf.is_empty() || request.undelimited_body {
                linger_close(conn);
            }
            return;
        }
        first = false;
    }
}

/// Discards `length` body bytes, first from `buf`, then from the connection.
fn skip_body(conn: &mut Conn, buf: &mut Vec<u8>, length: u64, chunk: &mut [u8]) -> bool {
    let buffered = usize::try_from(length).unwrap_or(usize::MAX).min(buf.len());
    buf.drain(..buffered);
    let mut left = length - buffered as u64;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(chunk.len());
        match conn.read(&mut chunk[..want]) {
            Ok(0) => return false,
            Ok(n) => left -= n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

/// Half-closes, then reads and drops what the client still sends (bounded in time and bytes),
/// so the close does not turn into a reset that could discard our response.
fn linger_close(mut conn: Conn) {
    conn.shutdown_write();
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut chunk = [0u8; 4096];
    let mut total = 0usize;
    while total < 1 << 20 {
        let now = Instant::now();
        if now >= deadline || wait_readable(&[conn.as_raw_fd()], Some(deadline - now))[0] == 0 {
            return;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => total += n,
        }
    }
}

/// A pipe that becomes readable, for good, when the drain starts: every poller sees it at once
/// and nobody needs to consume it.
struct DrainPipe {
    read_fd: RawFd,
    write_fd: RawFd,
}

impl DrainPipe {
    fn new() -> io::Result<DrainPipe> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two fds pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(DrainPipe {
            read_fd: fds[0],
            write_fd: fds[1],
        })
    }

    fn raise(&self) {
        // SAFETY: writes one byte from a valid buffer; a full pipe (EAGAIN) is already raised.
        unsafe { libc::write(self.write_fd, b"x".as_ptr().cast(), 1) };
    }
}

fn signal_set(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t and the signal numbers are valid constants.
    unsafe {
        libc::sigemptyset(&mut set);
        for &signal in signals {
            libc::sigaddset(&mut set, signal);
        }
    }
    set
}

fn sigmask(how: libc::c_int, set: &libc::sigset_t) -> io::Result<()> {
    // SAFETY: `set` is an initialised sigset_t; the old mask is not requested.
    let rc = unsafe { libc::pthread_sigmask(how, set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

extern "C" fn nudge(_: libc::c_int) {
    // Does nothing: its only purpose is to make the acceptor's blocking call return EINTR.
}

fn install_nudge_handler() -> io::Result<()> {
    // SAFETY: sigaction is plain data; all-zero is a valid "no flags, empty mask" value.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = nudge as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // No SA_RESTART, on purpose: the interrupted accept() must return EINTR.
    action.sa_flags = 0;
    // SAFETY: `action` is fully initialised and the handler is async-signal-safe (empty).
    if unsafe { libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits for one of the (blocked) signals in `set`; `Ok(true)` if one came, `Ok(false)` when
/// `timeout` passed first.
fn wait_signal(set: &libc::sigset_t, timeout: Option<Duration>) -> io::Result<bool> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let rc = match deadline {
            None => {
                // SAFETY: `set` is initialised; the siginfo is not requested.
                unsafe { libc::sigwaitinfo(set, std::ptr::null_mut()) }
            }
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(false);
                }
                let ts = libc::timespec {
                    tv_sec: libc::time_t::try_from(left.as_secs()).unwrap_or(libc::time_t::MAX),
                    // subsec_nanos() is below 10^9, which fits every c_long.
                    tv_nsec: left.subsec_nanos() as libc::c_long,
                };
                // SAFETY: `set` and `ts` are initialised; the siginfo is not requested.
                unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) }
            }
        };
        if rc > 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EAGAIN) => return Ok(false),
            // Another signal (a stray SIGUSR1) interrupted the wait.
            Some(libc::EINTR) => continue,
            _ => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http11_keeps_alive_unless_told_to_close() {
        let r = parse_request(b"GET / HTTP/1.1\r\nHost: x").unwrap();
        assert!(r.keep_alive && !r.head_only);
        let r = parse_request(b"GET / HTTP/1.1\r\nConnection: Close").unwrap();
        assert!(!r.keep_alive);
        let r = parse_request(b"GET / HTTP/1.0").unwrap();
        assert!(!r.keep_alive);
        let r = parse_request(b"HEAD / HTTP/1.0\r\nconnection: keep-alive").unwrap();
        assert!(r.keep_alive && r.head_only);
    }

    #[test]
    fn slow_path_reads_its_milliseconds() {
        assert_eq!(slow_delay("/slow?ms=250"), Duration::from_millis(250));
        assert_eq!(slow_delay("/slow?x=1&ms=5"), Duration::from_millis(5));
        assert_eq!(slow_delay("/slow?ms=abc"), Duration::ZERO);
        assert_eq!(slow_delay("/slower?ms=5"), Duration::ZERO);
        assert_eq!(slow_delay("/"), Duration::ZERO);
    }

    #[test]
    fn garbage_heads_are_errors_not_panics() {
        for head in [
            &b""[..],
            b"GET",
            b"GET /",
            b"GET / HTTP/2.0",
            b"GET / HTTP/1.1 extra",
            b"GET / HTTP/1.1\r\nno colon",
            b"GET / HTTP/1.1\r\nContent-Length: x",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2",
            b"\xff\xfe / HTTP/1.1",
        ] {
            assert!(parse_request(head).is_err(), "{head:?}");
        }
    }

    #[test]
    fn body_length_and_expect_are_read() {
        let r = parse_request(b"POST / HTTP/1.1\r\nContent-Length: 12\r\nExpect: 100-continue")
            .unwrap();
        assert_eq!(r.content_length, 12);
        assert!(r.expect_continue && !r.undelimited_body);
        let r = parse_request(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked").unwrap();
        assert!(r.undelimited_body);
    }
}
