//! Sandbox, process and load helpers for the integration tests, the benchmark and the demo.
//!
//! Everything here drives the real `reloadsup` binary and the real example servers as separate
//! processes: nothing links the supervisor's code. The binaries are found next to the running
//! executable in the cargo target directory (see [`bins`]), so `cargo build --workspace --bins
//! --examples` must have run first (`make test` and `make bench` do it).
//!
//! Every wait has a deadline and panics with a message that says what it was waiting for; the
//! deadlines are generous because the machines that run this are shared and noisy.

pub mod bins;
pub mod chaos;
pub mod load;
pub mod proc;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

pub use load::{FailureKind, Limits, Load, LoadReport};

/// The default deadline for an event that should take well under a second.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `cond` every few milliseconds until it holds; panics naming `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    wait_for(timeout, what, || cond().then_some(()))
}

/// Polls `probe` until it returns `Some`; panics naming `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// A fresh directory for one test, removed when the test passed and kept (with its path
/// printed) when it failed.
pub struct Sandbox {
    path: PathBuf,
}

impl Sandbox {
    pub fn new(name: &str) -> Sandbox {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        // Short enough that the sockets of a state dir inside it fit a unix socket address
        // (reloadsup refuses a longer --state-dir).
        let short: String = name.chars().take(24).collect();
        let path = std::env::temp_dir()
            .join("reloadsup-it")
            .join(format!("{short}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("unable to create sandbox {}: {e}", path.display()));
        Sandbox { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `text` to `name` atomically (temporary file, then rename), so a process that
    /// executes or reads it never sees half of it. Returns the path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.join(name);
        let tmp = self.join(format!(".{name}.tmp"));
        fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
        fs::rename(&tmp, &path).unwrap_or_else(|e| panic!("renaming {}: {e}", path.display()));
        path
    }

    /// Like [`Sandbox::write`], for an executable script (mode 0755, set before the rename).
    pub fn write_script(&self, name: &str, text: &str) -> PathBuf {
        let tmp = self.join(format!(".{name}.tmp"));
        fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", tmp.display()));
        let path = self.join(name);
        fs::rename(&tmp, &path).unwrap_or_else(|e| panic!("renaming {}: {e}", path.display()));
        path
    }

    /// A script that `exec`s `program` with `args` followed by its own arguments.
    pub fn exec_script(&self, name: &str, program: &Path, args: &[&str]) -> PathBuf {
        let mut line = format!("exec {}", shell_quote(&program.to_string_lossy()));
        for a in args {
            line.push(' ');
            line.push_str(&shell_quote(a));
        }
        self.write_script(name, &format!("#!/bin/sh\n{line} \"$@\"\n"))
    }
}

impl Sandbox {
    /// A copy of `program` that another user can run: `<sandbox>/shared/<name>`, directory and
    /// file mode 0755. The build tree may sit in a directory other users cannot enter (a home
    /// directory of mode 0700), so a test that runs a binary as another user runs this copy.
    /// Panics if the sandbox itself is not reachable by others (a `TMPDIR` inside such a home).
    pub fn shared_copy(&self, program: &Path) -> PathBuf {
        let dir = self.join("shared");
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", dir.display()));
        for ancestor in dir.ancestors().skip(1) {
            let mode = fs::metadata(ancestor)
                .unwrap_or_else(|e| panic!("stat {}: {e}", ancestor.display()))
                .permissions()
                .mode();
            assert!(
                mode & 0o001 != 0,
                "{} (mode {:o}) cannot be entered by other users, so a worker run as another \
                 user cannot reach {}: set TMPDIR to a directory everyone can enter",
                ancestor.display(),
                mode & 0o7777,
                dir.display()
            );
        }
        let name = program
            .file_name()
            .unwrap_or_else(|| panic!("{} has no file name", program.display()));
        let copy = dir.join(name);
        fs::copy(program, &copy)
            .unwrap_or_else(|e| panic!("copying {} to {}: {e}", program.display(), copy.display()));
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", copy.display()));
        copy
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("sandbox kept for inspection: {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Quotes `s` for /bin/sh with single quotes.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// How to start one supervisor: flags, the command, extra environment.
///
/// `start` adds `--state-dir <sandbox>/state --pidfile <sandbox>/pid --name t`, and
/// `-l tcp://127.0.0.1:0` when no listener was given, unless [`Run::bare`] was called.
pub struct Run {
    args: Vec<OsString>,
    command: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    bare: bool,
    program: Option<PathBuf>,
    activator: Vec<OsString>,
    stdout: Option<std::os::fd::OwnedFd>,
}

impl Run {
    pub fn new<I, S>(command: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Run {
            args: Vec::new(),
            command: command.into_iter().map(|s| s.as_ref().to_owned()).collect(),
            env: Vec::new(),
            bare: false,
            program: None,
            activator: Vec::new(),
            stdout: None,
        }
    }

    /// `hello` with `args`.
    pub fn hello(args: &[&str]) -> Run {
        let mut command = vec![bins::example("hello").into_os_string()];
        command.extend(args.iter().map(OsString::from));
        Run::new(command)
    }

    /// `probe` with `args`.
    pub fn probe(args: &[&str]) -> Run {
        let mut command = vec![bins::example("probe").into_os_string()];
        command.extend(args.iter().map(OsString::from));
        Run::new(command)
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Run {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|s| s.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Run {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Runs `program` (a copy of reloadsup, for the upgrade tests) instead of the built one.
    pub fn program(mut self, program: impl Into<PathBuf>) -> Run {
        self.program = Some(program.into());
        self
    }

    /// Starts reloadsup through a socket activator: `activator` (program and its arguments,
    /// e.g. `systemd-socket-activate -l 127.0.0.1:PORT`) runs reloadsup's path and flags, and
    /// no default listener is added.
    pub fn activator<I, S>(mut self, activator: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.activator = activator
            .into_iter()
            .map(|s| s.as_ref().to_owned())
            .collect();
        self
    }

    /// Gives the supervisor `fd` as its stdout (a pipe nobody reads, for the logger's tests)
    /// instead of a file of the sandbox; [`Supervisor::stdout`] is empty then.
    pub fn stdout(mut self, fd: std::os::fd::OwnedFd) -> Run {
        self.stdout = Some(fd);
        self
    }

    /// Passes the flags exactly as given: no state dir, pidfile, name or default listener.
    pub fn bare(mut self) -> Run {
        self.bare = true;
        self
    }

    /// The full argument list after the program name.
    fn argv(&self, sandbox: &Sandbox) -> Vec<OsString> {
        let mut argv = Vec::new();
        if !self.bare {
            let has_listener = self.args.iter().any(|a| {
                let a = a.to_string_lossy();
                a == "-l" || a.starts_with("--listen") || a == "-c" || a.starts_with("--config")
            });
            if !has_listener && self.activator.is_empty() {
                argv.extend(["-l", "tcp://127.0.0.1:0"].map(OsString::from));
            }
            argv.push("--state-dir".into());
            argv.push(sandbox.join("state").into_os_string());
            argv.push("--pidfile".into());
            argv.push(sandbox.join("pid").into_os_string());
            argv.push("--name".into());
            argv.push("t".into());
        }
        argv.extend(self.args.iter().cloned());
        if !self.command.is_empty() {
            argv.push("--".into());
            argv.extend(self.command.iter().cloned());
        }
        argv
    }

    fn command(&self, sandbox: &Sandbox) -> Command {
        let program = self.program.clone().unwrap_or_else(bins::reloadsup);
        let mut cmd = match self.activator.split_first() {
            Some((activator, args)) => {
                let mut cmd = Command::new(activator);
                cmd.args(args).arg(program);
                cmd
            }
            None => Command::new(program),
        };
        cmd.args(self.argv(sandbox)).current_dir(sandbox.path());
        // Debug for reloadsup itself gives per-worker "is ready" lines, which the waits use for
        // the first generation (it has no "is serving" line).
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info,reloadsup=debug");
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts the supervisor with stdout and stderr captured in files of the sandbox.
    pub fn start(mut self, sandbox: &Sandbox) -> Supervisor {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let stdout = sandbox.join(format!("reloadsup-{n}.stdout"));
        let stderr = sandbox.join(format!("reloadsup-{n}.stderr"));
        let open = |p: &Path| {
            fs::File::create(p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()))
        };
        let mut cmd = self.command(sandbox);
        cmd.stdin(Stdio::null())
            .stdout(match self.stdout.take() {
                Some(fd) => Stdio::from(fd),
                None => Stdio::from(open(&stdout)),
            })
            .stderr(open(&stderr));
        let program = self.program.clone().unwrap_or_else(bins::reloadsup);
        let child = spawn_retrying_busy(&mut cmd)
            .unwrap_or_else(|e| panic!("unable to start {}: {e}", program.display()));
        Supervisor {
            child,
            stdout,
            stderr,
            state_dir: sandbox.join("state"),
            status: None,
        }
    }

    /// Runs the supervisor to completion (for usage errors), with a deadline.
    pub fn output(self, sandbox: &Sandbox, timeout: Duration) -> Output {
        let mut cmd = self.command(sandbox);
        output_with_timeout(&mut cmd, timeout)
    }
}

/// Runs `cmd` with its output captured; `Err` when it could not run or did not finish within
/// `timeout` (then it is SIGKILLed and reaped). Never panics: for the chaos run, a hung client is
/// a finding of the run.
/// `cmd.spawn()`, tried again for a while on ETXTBSY: a program a test has just written (a
/// copy of reloadsup, a script) is "busy" while a child another test thread forked still holds
/// the writer's fd between its fork and its exec (close-on-exec closes it only then).
pub fn spawn_retrying_busy(cmd: &mut Command) -> std::io::Result<std::process::Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 200 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

pub fn try_output_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_retrying_busy(cmd).map_err(|e| format!("unable to run {cmd:?}: {e}"))?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{cmd:?} did not finish within {timeout:?}"));
            }
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("waiting for {cmd:?}: {e}")),
        }
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Runs `cmd` with captured stdout and stderr, SIGKILLing it and panicking after `timeout`.
pub fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    try_output_with_timeout(cmd, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// A running `reloadsup` primary started by this process.
///
/// Dropping it SIGKILLs and reaps the primary if it is still running (its workers follow by
/// their parent-death signal); during a panic it prints what the primary wrote.
pub struct Supervisor {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    state_dir: PathBuf,
    status: Option<ExitStatus>,
}

impl Supervisor {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn control_path(&self) -> PathBuf {
        self.state_dir.join("control.sock")
    }

    /// Sends `sig` to the primary (only while it has not been reaped, so never to a reused pid).
    pub fn signal(&self, sig: i32) {
        assert!(self.status.is_none(), "signal {sig} to an exited primary");
        proc::kill(self.pid(), sig).unwrap_or_else(|e| panic!("kill({}, {sig}): {e}", self.pid()));
    }

    /// The file the primary's stderr (its log) goes to.
    pub fn log_path(&self) -> &Path {
        &self.stderr
    }

    /// Everything the primary wrote to stderr so far (its log).
    pub fn log(&self) -> String {
        read_lossy(&self.stderr)
    }

    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout)
    }

    /// How many log lines contain `needle`.
    pub fn count_in_log(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits for a log line containing `needle` and returns it. Panics early if the primary
    /// exits first.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_for_nth_log(needle, 1, timeout)
    }

    /// Waits for the `n`th log line containing `needle` and returns it.
    pub fn wait_for_nth_log(&mut self, needle: &str, n: usize, timeout: Duration) -> String {
        let what = format!("log line #{n} containing {needle:?}");
        wait_for(timeout, &what, || {
            let log = self.log();
            if let Some(line) = log.lines().filter(|l| l.contains(needle)).nth(n - 1) {
                return Some(line.to_owned());
            }
            if let Some(status) = self.try_status() {
                panic!("the primary exited ({status}) while waiting for {what}");
            }
            None
        })
    }

    /// The address of listener `name`, from the log line `listener NAME bound to tcp://ADDR`.
    pub fn listener_addr(&mut self, name: &str) -> SocketAddr {
        let needle = format!("listener {name} bound to ");
        let line = self.wait_for_log(&needle, DEADLINE);
        let rest = &line[line.find(&needle).map_or(0, |i| i + needle.len())..];
        let addr = rest.split_whitespace().next().unwrap_or_default();
        let addr = addr.strip_prefix("tcp://").unwrap_or(addr);
        addr.parse()
            .unwrap_or_else(|e| panic!("unparsable address in {line:?}: {e}"))
    }

    /// The first listener's address (default name `listen0`).
    pub fn addr(&mut self) -> SocketAddr {
        self.listener_addr("listen0")
    }

    /// Waits until `workers` workers of `generation` have reported ready (debug log lines
    /// `worker S of generation G (pid P) is ready`) or the generation is logged as serving.
    pub fn wait_ready(&mut self, generation: u32, workers: usize) {
        let serving = format!("generation {generation} is serving");
        let ready = format!("of generation {generation} (pid ");
        let what = format!("{workers} ready workers of generation {generation}");
        wait_for(DEADLINE, &what, || {
            let log = self.log();
            let n = log
                .lines()
                .filter(|l| l.contains(&ready) && l.trim_end().ends_with("is ready"))
                .count();
            if n >= workers || log.contains(&serving) {
                return Some(());
            }
            if let Some(status) = self.try_status() {
                panic!("the primary exited ({status}) while waiting for {what}");
            }
            None
        });
    }

    /// Sends SIGHUP and waits for the outcome of the reload to `generation`: `Ok` when it is
    /// serving, `Err(reason)` when it was rolled back.
    pub fn reload(&mut self, generation: u32) -> Result<(), String> {
        self.signal(libc::SIGHUP);
        self.wait_reload(generation)
    }

    /// Waits for `generation <N> is serving` or `reload to generation <N> failed`.
    pub fn wait_reload(&mut self, generation: u32) -> Result<(), String> {
        let serving = format!("generation {generation} is serving");
        let failed = format!("reload to generation {generation} failed");
        let what = format!("the outcome of the reload to generation {generation}");
        wait_for(Duration::from_secs(30), &what, || {
            for line in self.log().lines() {
                if line.contains(&serving) {
                    return Some(Ok(()));
                }
                if let Some(i) = line.find(&failed) {
                    let reason = line[i + failed.len()..].trim_start_matches(':').trim();
                    return Some(Err(reason.to_owned()));
                }
            }
            if let Some(status) = self.try_status() {
                panic!("the primary exited ({status}) while waiting for {what}");
            }
            None
        })
    }

    /// The worker processes: the primary's live children (zombies excluded), but the keeper.
    pub fn workers(&self) -> Vec<u32> {
        self.children()
            .into_iter()
            .filter(|&p| !proc::is_zombie(p))
            .collect()
    }

    /// The primary's children (zombies included), but the keeper, which every primary has,
    /// the metrics worker (`--metrics`) and the inspector (`--ready listening`).
    pub fn children(&self) -> Vec<u32> {
        proc::children_of(self.pid())
            .into_iter()
            .filter(|&p| !proc::is_keeper(p) && !proc::is_metrics(p) && !proc::is_inspector(p))
            .collect()
    }

    /// Waits until the primary has exactly `n` children besides the keeper, none of them a
    /// zombie, and returns them.
    pub fn wait_workers(&self, n: usize) -> Vec<u32> {
        wait_for(
            DEADLINE,
            &format!("exactly {n} live children of the primary"),
            || {
                let children = self.children();
                (children.len() == n && !children.iter().any(|&p| proc::is_zombie(p)))
                    .then_some(children)
            },
        )
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Whether the primary has exited (and been reaped by us).
    pub fn has_exited(&mut self) -> bool {
        self.try_status().is_some()
    }

    /// Waits for the primary to exit and reaps it.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        wait_for(timeout, "the primary to exit", || self.try_status())
    }

    /// Runs `reloadsup ctl --control <state>/control.sock ARGS` with a deadline.
    pub fn ctl<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        ctl(&self.control_path(), args)
    }

    /// `ctl status --json`, parsed; panics if it fails.
    pub fn status_json(&self) -> serde_json::Value {
        let out = self.ctl(&["status", "--json"]);
        assert!(
            out.status.success(),
            "ctl status --json failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "ctl status --json printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    fn dump(&self) {
        eprintln!(
            "---- reloadsup (pid {}) stderr: {}\n{}",
            self.pid(),
            self.stderr.display(),
            self.log()
        );
        let out = self.stdout();
        if !out.is_empty() {
            eprintln!("---- reloadsup stdout:\n{out}");
        }
        eprintln!("---- end of reloadsup output");
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if thread::panicking() {
            self.dump();
        }
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `reloadsup ctl --control PATH ARGS` with a 30 s deadline.
pub fn ctl<S: AsRef<OsStr>>(control: &Path, args: &[S]) -> Output {
    let mut cmd = Command::new(bins::reloadsup());
    cmd.arg("ctl").arg("--control").arg(control).args(args);
    output_with_timeout(&mut cmd, Duration::from_secs(30))
}

fn read_lossy(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => panic!("reading {}: {e}", path.display()),
    }
}

/// Reads a JSON file written atomically by `probe`, waiting for it to appear.
pub fn wait_json_file(path: &Path) -> serde_json::Value {
    let text = wait_for(
        DEADLINE,
        &format!("{} to be written", path.display()),
        || fs::read_to_string(path).ok(),
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Whether a TCP connection to `addr` is accepted by the kernel.
pub fn tcp_connect_ok(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).is_ok()
}

/// One `GET path` over a fresh connection; the parsed answer or why it failed.
pub fn get(addr: SocketAddr, path: &str) -> Result<load::Answer, String> {
    load::request(addr, path, Duration::from_secs(10))
        .map_err(|(kind, msg)| format!("{kind:?}: {msg}"))
}

/// The real `python3` interpreter (`sys.executable`, so a pyenv-style shim is not paid for on
/// every worker start), if there is one on PATH.
pub fn python3() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    (out.status.success() && path.is_file()).then_some(path)
}

/// Whether a test may go on: `found` says whether `what` (a tool, root, a file) is there.
///
/// When it is missing the test says "skipped: needs WHAT" and returns early, except under
/// `CI=true` (or `CI=1`), where this panics: CI machines have every tool, so a skip there is a
/// test that silently never runs. Use it as `if !require("python3", ...) { return; }`.
pub fn require(what: &str, found: bool) -> bool {
    if found {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "CI=true and this test needs {what}, which this machine lacks: install it, or run \
         without CI=true to skip"
    );
    eprintln!("skipped: needs {what}");
    false
}

/// Whether `program args` runs and exits successfully (e.g. `node --version`).
pub fn have_command(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether this process runs as root (needed to run workers as another user).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
