//! Custom console commands: closures registered in Rust ([`Commands`]) and external programs
//! from the config (`[commands.NAME]`).
//!
//! Each running command is a job on its own thread. It talks to the shell worker's loop only
//! through a channel and a [`mio::Waker`], so a command that waits for input, for the primary or
//! for a slow program never stalls the loop or another session. The loop never blocks on a job:
//! what it sends a job goes through an unbounded channel.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use reloadsup_protocol::{CustomCommand, Reply, Request};

/// The signature of a Rust console command.
pub type Handler = Arc<dyn Fn(&mut Context) -> Result<(), String> + Send + Sync + 'static>;

/// Console commands of a supervisor binary built on reloadsup, registered by name.
///
/// ```no_run
/// use reloadsup::shell::Commands;
///
/// fn main() -> std::process::ExitCode {
///     let commands = Commands::default().command("hello", "says hello", |ctx| {
///         let who = ctx.args().get(1).cloned().unwrap_or_else(|| "world".into());
///         ctx.println(&format!("hello, {who}"));
///         Ok(())
///     });
///     reloadsup::main_with(commands)
/// }
/// ```
#[derive(Clone, Default)]
pub struct Commands {
    entries: BTreeMap<String, (String, Handler)>,
}

impl std::fmt::Debug for Commands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.entries.keys()).finish()
    }
}

impl Commands {
    pub fn new() -> Commands {
        Commands::default()
    }

    /// Registers `f` as the console command `name`. A later registration of the same name
    /// replaces an earlier one; a built-in command of the same name wins over both.
    pub fn command(
        mut self,
        name: impl Into<String>,
        help: impl Into<String>,
        f: impl Fn(&mut Context) -> Result<(), String> + Send + Sync + 'static,
    ) -> Commands {
        self.entries
            .insert(name.into(), (help.into(), Arc::new(f) as Handler));
        self
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Handler> {
        self.entries.get(name).map(|(_, h)| h)
    }

    pub(crate) fn help(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|(n, (h, _))| (n.as_str(), h.as_str()))
    }
}

/// Which session a job belongs to; never reused while the shell worker lives.
pub(crate) type SessionId = usize;

/// What a job tells the loop.
pub(crate) enum ToLoop {
    Output(SessionId, Vec<u8>),
    /// The job waits for the user's next line; show `prompt` first.
    ReadLine(SessionId, String),
    Request(SessionId, Request, Sender<Result<Reply, String>>),
    Done(SessionId, Result<(), String>),
    /// A password check finished (from the verifier threads, not a job).
    Verified(SessionId, bool),
}

/// What the loop tells a job.
pub(crate) enum ToJob {
    Line(String),
    /// The session is gone: stop.
    Closed,
}

/// The loop's side of the channel: sending wakes the loop.
#[derive(Clone)]
pub(crate) struct Outbox {
    pub tx: SyncSender<ToLoop>,
    pub waker: Arc<mio::Waker>,
}

impl Outbox {
    /// False when the loop is gone.
    pub(super) fn send(&self, msg: ToLoop) -> bool {
        if self.tx.send(msg).is_err() {
            return false;
        }
        let _ = self.waker.wake();
        true
    }
}

/// What a running Rust command sees: its argv, the session's output and input, and a handle
/// for requests to the primary.
pub struct Context {
    args: Vec<String>,
    session: SessionId,
    outbox: Outbox,
    input: Receiver<ToJob>,
    closed: bool,
}

impl Context {
    /// argv, the command's name first.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Sends `text` to the user as it is.
    pub fn print(&mut self, text: &str) {
        if !self.closed {
            self.closed = !self
                .outbox
                .send(ToLoop::Output(self.session, text.as_bytes().to_vec()));
        }
    }

    /// Sends `text` and a newline.
    pub fn println(&mut self, text: &str) {
        let mut line = String::with_capacity(text.len() + 1);
        line.push_str(text);
        line.push('\n');
        self.print(&line);
    }

    /// Shows `prompt` and waits for the user's next line (without its newline). `None` when
    /// the session ended.
    pub fn read_line(&mut self, prompt: &str) -> Option<String> {
        if self.closed
            || !self
                .outbox
                .send(ToLoop::ReadLine(self.session, prompt.to_string()))
        {
            self.closed = true;
            return None;
        }
        match self.input.recv() {
            Ok(ToJob::Line(l)) => Some(l),
            Ok(ToJob::Closed) | Err(_) => {
                self.closed = true;
                None
            }
        }
    }

    /// Sends `request` to the primary and waits for its final reply.
    pub fn request(&mut self, request: Request) -> Result<Reply, String> {
        let (tx, rx) = mpsc::channel();
        if self.closed || !self.outbox.send(ToLoop::Request(self.session, request, tx)) {
            return Err("the console is shutting down".into());
        }
        rx.recv()
            .unwrap_or_else(|_| Err("the link to the primary is gone".into()))
    }

    /// Whether the session has ended (the user left or the shell worker is stopping).
    pub fn is_closed(&self) -> bool {
        self.closed
    }
}

/// Starts a Rust command on its own thread. Returns the channel for the user's lines.
pub(crate) fn spawn_closure(
    handler: Handler,
    args: Vec<String>,
    session: SessionId,
    outbox: Outbox,
) -> Result<Sender<ToJob>, String> {
    let (tx, rx) = mpsc::channel();
    let name = args.first().cloned().unwrap_or_default();
    let done = outbox.clone();
    std::thread::Builder::new()
        .name(format!("cmd-{name}"))
        .spawn(move || {
            let mut ctx = Context {
                args,
                session,
                outbox,
                input: rx,
                closed: false,
            };
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(&mut ctx)))
                    .unwrap_or_else(|_| Err(format!("the command '{name}' panicked")));
            done.send(ToLoop::Done(session, result));
        })
        .map_err(|e| format!("unable to start a thread: {}", crate::error::lower(&e)))?;
    Ok(tx)
}

/// The variables a console program gets from the shell worker's environment, besides
/// `RELOADSUP_CONTROL`.
fn allowed_env(key: &str) -> bool {
    matches!(
        key,
        "PATH" | "HOME" | "USER" | "LOGNAME" | "SHELL" | "LANG" | "TZ" | "TMPDIR" | "TERM"
    ) || key.starts_with("LC_")
}

/// How long a program whose session ended has between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Starts an external command: `run` with the user's words appended, stdin and stdout (and
/// stderr) wired to the session, `RELOADSUP_CONTROL` set, in a process group of its own so
/// that whatever it starts is stopped with it when the session ends.
pub(crate) fn spawn_program(
    command: &CustomCommand,
    words: &[String],
    door: std::os::fd::BorrowedFd<'_>,
    session: SessionId,
    outbox: Outbox,
) -> Result<Sender<ToJob>, String> {
    let Some((program, fixed)) = command.run.split_first() else {
        return Err(format!("the command '{}' has nothing to run", command.name));
    };
    let mut cmd = Command::new(program);
    // A clean environment: only the allow-listed variables of the shell worker's own, so that
    // nothing of the supervisor's (the password hash variable, the primary's settings) reaches
    // a program that the console's users run.
    cmd.env_clear();
    for (k, v) in std::env::vars_os() {
        if k.to_str().is_some_and(allowed_env) {
            cmd.env(k, v);
        }
    }
    crate::sys::no_inherited_fds(&mut cmd);
    // Its way to the supervisor (see `Proxy` in the shell): under its own number, which the
    // program learns from RELOADSUP_CONTROL.
    let door = std::os::fd::AsRawFd::as_raw_fd(&door);
    crate::sys::inherit_fd(&mut cmd, door);
    let mut child = cmd
        .args(fixed)
        .args(words)
        .env("RELOADSUP_CONTROL", format!("fd:{door}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("unable to run {program}: {}", crate::error::lower(&e)))?;
    let pid = child.id();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let mut stdin = child.stdin.take();
    let (tx, rx) = mpsc::channel::<ToJob>();
    let finished = Arc::new(AtomicBool::new(false));

    let pipe = |r: Option<Box<dyn Read + Send>>, outbox: Outbox| {
        std::thread::Builder::new()
            .name("cmd-output".into())
            .spawn(move || {
                let Some(mut r) = r else { return };
                let mut buf = [0u8; 8192];
                loop {
                    match r.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => {
                            if !outbox.send(ToLoop::Output(session, buf[..n].to_vec())) {
                                return;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => return,
                    }
                }
            })
    };
    let spawn_err =
        |e: std::io::Error| format!("unable to start a thread: {}", crate::error::lower(&e));
    let out_thread = pipe(stdout.map(|s| Box::new(s) as _), outbox.clone()).map_err(spawn_err)?;
    let err_thread = pipe(stderr.map(|s| Box::new(s) as _), outbox.clone()).map_err(spawn_err)?;

    // The user's lines go to the program's stdin; when the session ends, the program is killed.
    let fin = finished.clone();
    std::thread::Builder::new()
        .name("cmd-input".into())
        .spawn(move || {
            while let Ok(msg) = rx.recv() {
                match msg {
                    ToJob::Line(line) => {
                        // A line of a lone Ctrl-D ends the program's input, as on a terminal.
                        if line == "\u{4}" {
                            stdin = None;
                            continue;
                        }
                        if let Some(w) = stdin.as_mut() {
                            let mut bytes = line.into_bytes();
                            bytes.push(b'\n');
                            if w.write_all(&bytes).is_err() {
                                stdin = None;
                            }
                        }
                    }
                    ToJob::Closed => {
                        // The session is gone: end the program's input, ask its group to
                        // stop, and make sure after a grace period. Until the waiter below
                        // has reaped the program its pid, and so its group id, cannot be
                        // reused: `fin` is set only after that.
                        drop(stdin.take());
                        let stop = |sig| {
                            if !fin.load(Ordering::SeqCst) {
                                let _ = crate::sys::kill_group(pid, sig);
                            }
                        };
                        stop(Signal::SIGTERM);
                        let until = Instant::now() + STOP_GRACE;
                        while !fin.load(Ordering::SeqCst) && Instant::now() < until {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        stop(Signal::SIGKILL);
                        return;
                    }
                }
            }
        })
        .map_err(spawn_err)?;

    let name = command.name.clone();
    std::thread::Builder::new()
        .name(format!("cmd-{name}"))
        .spawn(move || {
            let _ = out_thread.join();
            let _ = err_thread.join();
            let status = child.wait();
            finished.store(true, Ordering::SeqCst);
            let result = match status {
                Ok(s) if s.success() => Ok(()),
                Ok(s) => Err(
                    match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                        (Some(c), _) => format!("{name} exited with status {c}"),
                        (None, Some(sig)) => format!("{name} was killed by signal {sig}"),
                        _ => format!("{name} failed"),
                    },
                ),
                Err(e) => Err(format!(
                    "unable to wait for {name}: {}",
                    crate::error::lower(&e)
                )),
            };
            outbox.send(ToLoop::Done(session, result));
        })
        .map_err(spawn_err)?;
    Ok(tx)
}
