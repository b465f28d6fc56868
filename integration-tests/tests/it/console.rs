//! The TLS admin console (DESIGN.md section 7), driven through `reloadsup console` and through
//! `openssl s_client`, a client nobody here wrote, against the `console_commands` example: a
//! supervisor built on the library with the sketch's `foo`, `bar` and `baz`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use reloadsup_integration_tests::{
    bins, output_with_timeout, proc, shell_quote, wait_for, wait_until, Limits, Load, Sandbox,
    DEADLINE,
};
use serde_json::Value;

const PASSWORD: &str = "s3cret horse";

/// What `reloadsup hash-password` printed, given the password on standard input.
fn hash_password_output(password: &str) -> std::process::Output {
    let mut child = Command::new(bins::reloadsup())
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run reloadsup hash-password");
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{password}").unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

/// `reloadsup hash-password` with the password on standard input.
fn hash_password(password: &str) -> String {
    let out = hash_password_output(password);
    assert!(
        out.status.success(),
        "hash-password failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(hash.starts_with("pbkdf2-sha256$"), "{hash}");
    assert!(!hash.contains(password));
    hash
}

/// A running `console_commands` supervisor with the admin console on.
pub(crate) struct Admin {
    child: Child,
    log: PathBuf,
    pub(crate) addr: String,
    pub(crate) fingerprint: String,
    state: PathBuf,
}

impl Admin {
    /// Three (or `workers`) `hello` workers; worker 2 crashes at start while the file `crash`
    /// exists in the sandbox.
    fn start(sandbox: &Sandbox, workers: usize) -> Admin {
        Admin::start_binary(sandbox, workers, bins::example("console_commands"))
    }

    /// Like [`Admin::start`], with `binary` as the supervisor.
    fn start_binary(sandbox: &Sandbox, workers: usize, binary: PathBuf) -> Admin {
        Admin::start_with(sandbox, workers, binary, &[])
    }

    /// Like [`Admin::start_binary`], with `extra` arguments before the command.
    pub(crate) fn start_with(
        sandbox: &Sandbox,
        workers: usize,
        binary: PathBuf,
        extra: &[&str],
    ) -> Admin {
        let crash = sandbox.join("crash");
        // Workers of another user need a copy they can reach (the build tree may be 0700).
        let hello = if extra.contains(&"--user") {
            sandbox.shared_copy(&bins::example("hello"))
        } else {
            bins::example("hello")
        };
        let script = sandbox.write_script(
            "worker.sh",
            &format!(
                "#!/bin/sh\nif [ \"$RELOADSUP_WORKER\" = 2 ] && [ -e {} ]; then sleep 0.2; exit 1; fi\nexec {} \"$@\"\n",
                shell_quote(&crash.to_string_lossy()),
                shell_quote(&hello.to_string_lossy())
            ),
        );
        let log = sandbox.join("supervisor.log");
        let state = sandbox.join("state");
        let child = Command::new(binary)
            .args(["-l", "tcp://127.0.0.1:0", "--name", "t", "--state-dir"])
            .arg(&state)
            .args(["--admin", "127.0.0.1:0", "--admin-password-hash"])
            .arg(hash_password(PASSWORD))
            .args(["-n", &workers.to_string(), "--ready", "notify"])
            .args(extra)
            .args(["--graceful-timeout", "5s", "--"])
            .arg(script)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .current_dir(sandbox.path())
            .spawn()
            .expect("run the console_commands example");
        let mut admin = Admin {
            child,
            log,
            addr: String::new(),
            fingerprint: String::new(),
            state,
        };
        let line = admin.wait_for_log("admin console on ");
        let rest = &line[line.find("admin console on ").unwrap() + "admin console on ".len()..];
        admin.addr = rest.split_whitespace().next().unwrap().to_string();
        let fp = &line[line.find("fingerprint ").expect("a fingerprint") + "fingerprint ".len()..];
        admin.fingerprint = fp
            .trim_end_matches(|c: char| c == ')' || c.is_whitespace())
            .to_string();
        admin.wait_for_log("shell worker listening on");
        wait_until(DEADLINE, "the first generation to be ready", || {
            admin.status()["current_workers"].as_u64() == Some(workers as u64)
        });
        admin
    }

    pub(crate) fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    fn wait_for_log(&mut self, needle: &str) -> String {
        wait_for(DEADLINE, needle, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the supervisor exited ({status}):\n{}", self.log_text());
            }
            self.log_text()
                .lines()
                .find(|l| l.contains(needle))
                .map(str::to_owned)
        })
    }

    fn status(&self) -> Value {
        let out = output_with_timeout(
            Command::new(bins::reloadsup())
                .arg("ctl")
                .arg("--control")
                .arg(self.state.join("control.sock"))
                .args(["status", "--json"]),
            DEADLINE,
        );
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// The address the workers serve on (the first listener, port 0 resolved).
    fn http_addr(&self) -> std::net::SocketAddr {
        self.status()["listeners"][0]["address"]
            .as_str()
            .expect("listener address")
            .trim_start_matches("tcp://")
            .parse()
            .expect("a socket address")
    }

    fn worker_pids(&self) -> Vec<u64> {
        let mut pids: Vec<u64> = self.status()["workers"]
            .as_array()
            .map(|w| w.iter().filter_map(|w| w["pid"].as_u64()).collect())
            .unwrap_or_default();
        pids.sort();
        pids
    }

    /// The shell worker's pid: the primary's child running the `__shell` role.
    fn shell_pid(&self) -> Option<u32> {
        proc::children_of(self.child.id()).into_iter().find(|&p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| c.split(|&b| b == 0).any(|a| a == b"__shell"))
                .unwrap_or(false)
                && !proc::is_zombie(p)
        })
    }

    /// `reloadsup console --fingerprint FP -c LINE... ADDR` with the password in the
    /// environment.
    pub(crate) fn console(&self, lines: &[&str]) -> Output {
        let mut cmd = Command::new(bins::reloadsup());
        cmd.args(["console", "--fingerprint", &self.fingerprint]);
        for l in lines {
            cmd.arg("-c").arg(l);
        }
        cmd.arg(&self.addr).env("RELOADSUP_PASSWORD", PASSWORD);
        output_with_timeout(&mut cmd, Duration::from_secs(60))
    }

    /// Like [`Admin::console`], connecting from the local address `source` (any of 127/8)
    /// with `password`.
    fn console_from(&self, source: &str, password: &str, lines: &[&str]) -> Output {
        let mut cmd = Command::new(bins::reloadsup());
        cmd.args([
            "console",
            "--source",
            source,
            "--fingerprint",
            &self.fingerprint,
        ]);
        for l in lines {
            cmd.arg("-c").arg(l);
        }
        cmd.arg(&self.addr).env("RELOADSUP_PASSWORD", password);
        output_with_timeout(&mut cmd, Duration::from_secs(60))
    }

    /// The shell worker's count of PBKDF2 checks, from its log lines (the count only grows).
    fn checks_computed(&self) -> u64 {
        self.log_text()
            .lines()
            .filter_map(|l| {
                let end = l.find(" password checks computed so far")?;
                l[..end]
                    .rsplit(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .max()
            .unwrap_or(0)
    }

    /// Kills worker 2 while the crash file exists, and waits until its slot is dead.
    fn make_worker_2_dead(&self, sandbox: &Sandbox) {
        std::fs::write(sandbox.join("crash"), "").unwrap();
        wait_until(Duration::from_secs(30), "worker 2 to be dead", || {
            let status = self.status();
            if status["dead_workers"].as_u64() == Some(1) {
                return true;
            }
            // Whatever runs in slot 2 now: a restart just before may have replaced the one
            // seen a moment ago (killing that one failed with ESRCH). With the crash file
            // its replacements exit at once; killing them only hurries the back-off along.
            let pid = status["workers"].as_array().and_then(|w| {
                w.iter()
                    .find(|w| w["slot"] == 2 && w["state"] != "draining")
                    .and_then(|w| w["pid"].as_u64())
            });
            // A slot waiting out its back-off has no process (pid 0).
            if let Some(pid) = pid.filter(|&p| p > 1) {
                let _ = proc::kill(pid as u32, libc::SIGKILL);
            }
            false
        });
        std::fs::remove_file(sandbox.join("crash")).unwrap();
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("---- supervisor log:\n{}", self.log_text());
        }
        let _ = proc::kill(self.child.id(), libc::SIGKILL);
        let _ = self.child.wait();
    }
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `openssl s_client -quiet` with its output collected by a thread.
struct Openssl {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<Vec<u8>>>,
    pos: usize,
}

impl Openssl {
    /// Whether the `openssl` command is on this machine; the tests that need it say so and
    /// skip where it is not (and fail under `CI=true`).
    fn available() -> bool {
        reloadsup_integration_tests::require(
            "the openssl command",
            reloadsup_integration_tests::have_command("openssl", &["version"]),
        )
    }

    fn connect(addr: &str) -> Openssl {
        let mut child = Command::new("openssl")
            .args(["s_client", "-quiet", "-connect", addr])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl is installed");
        let out = Arc::new(Mutex::new(Vec::new()));
        let mut stdout = child.stdout.take().unwrap();
        let sink = out.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Openssl {
            stdin: child.stdin.take(),
            child,
            out,
            pos: 0,
        }
    }

    /// Waits for `text` in what the server sent since the last expectation; returns what came
    /// before it.
    fn expect(&mut self, text: &str) -> String {
        let what = format!("{text:?} from openssl s_client");
        let found = wait_for(DEADLINE, &what, || {
            let out = self.out.lock().unwrap();
            let seen = String::from_utf8_lossy(&out[self.pos..]).into_owned();
            seen.find(text)
                .map(|i| (seen[..i].to_string(), i + text.len()))
        });
        self.pos += found.1;
        found.0
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Whether s_client ended (the server closed the connection) within `timeout`.
    fn ended_within(&mut self, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        false
    }

    fn rest(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()[self.pos..]).into_owned()
    }
}

impl Drop for Openssl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const INFO_HEAD: &str = "  Current Workers: 3\n   Target Workers: 3\n";

#[test]
fn sketched_session_through_reloadsup_console() {
    let sandbox = Sandbox::new("console-sketch");
    let mut admin = Admin::start(&sandbox, 3);
    let before = admin.worker_pids();

    let out = admin.console(&["foo 1 2 3", "baz", "21", "bar foo", "worker info"]);
    let stdout = text(&out);
    assert!(
        out.status.success(),
        "console failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected_start = "foo\n1\n2\n3\nGive me a number: 21\n21*2 = 42\nfoo\nbar\nConnection lost. Reconnecting... done!\n  Current Workers: 3\n";
    assert!(stdout.starts_with(expected_start), "{stdout}");
    admin.wait_for_log("generation 2 is serving");
    let after = admin.worker_pids();
    assert!(
        before.iter().all(|p| !after.contains(p)),
        "every worker replaced by the restart: {before:?} -> {after:?}"
    );

    admin.make_worker_2_dead(&sandbox);
    let out = admin.console(&[
        "worker info",
        "worker revive  # revive the dead workers",
        "worker info",
        ".exit",
    ]);
    let stdout = text(&out);
    assert!(out.status.success(), "{stdout}");
    let mut infos = stdout.split("  Current Workers: ").skip(1);
    let first = infos.next().expect("two worker infos");
    let second = infos.next().expect("two worker infos");
    assert!(
        first.starts_with("2\n   Target Workers: 3\n     Dead Workers: 1\n"),
        "{stdout}"
    );
    assert!(second.contains("     Dead Workers: 0\n"), "{stdout}");
}

#[test]
fn sketched_session_through_openssl_s_client() {
    if !Openssl::available() {
        return;
    }
    let sandbox = Sandbox::new("console-openssl");
    let mut admin = Admin::start(&sandbox, 3);

    let mut s = Openssl::connect(&admin.addr);
    s.expect("Password: ");
    s.send(PASSWORD);
    s.expect("> ");
    s.send("foo 1 2 3");
    assert_eq!(s.expect("> "), "foo\n1\n2\n3\n");
    s.send("baz");
    assert_eq!(s.expect("Give me a number: "), "");
    s.send("21");
    assert_eq!(s.expect("> "), "21*2 = 42\n");

    // Round trips of a built-in command, for the record (the bench has the real figures).
    let mut rtt = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        s.send("worker info");
        let info = s.expect("> ");
        rtt.push(t.elapsed());
        assert!(info.starts_with(INFO_HEAD), "{info}");
    }
    rtt.sort();
    eprintln!(
        "console round trip of 'worker info' through openssl s_client: p50 {:?} p99 {:?}",
        rtt[rtt.len() / 2],
        rtt[rtt.len() * 99 / 100]
    );
    if let Some(pid) = admin.shell_pid() {
        eprintln!(
            "shell worker RSS: {} KiB",
            proc::status_kb(pid, "VmRSS").unwrap_or(0)
        );
    }

    s.send("bar foo");
    assert!(s.expect("bar\n").starts_with("foo\n"));
    assert!(
        s.ended_within(DEADLINE),
        "the session ends when the shell worker is replaced; got {:?}",
        s.rest()
    );
    admin.wait_for_log("generation 2 is serving");

    admin.make_worker_2_dead(&sandbox);
    let mut s = wait_for(DEADLINE, "a new console session", || {
        let mut s = Openssl::connect(&admin.addr);
        let ok = wait_for(Duration::from_secs(5), "a prompt or an end", || {
            if s.out.lock().unwrap().starts_with(b"Password: ") {
                return Some(true);
            }
            matches!(s.child.try_wait(), Ok(Some(_))).then_some(false)
        });
        ok.then_some(s)
    });
    s.expect("Password: ");
    s.send(PASSWORD);
    s.expect("> ");
    s.send("worker info");
    let info = s.expect("> ");
    assert!(
        info.starts_with("  Current Workers: 2\n   Target Workers: 3\n     Dead Workers: 1\n"),
        "{info}"
    );
    s.send("worker revive  # revive the dead workers");
    s.expect("> ");
    s.send("worker info");
    assert!(s.expect("> ").contains("     Dead Workers: 0\n"));
    s.send(".exit");
    assert!(s.ended_within(DEADLINE));
}

#[test]
fn three_wrong_passwords_close_the_connection() {
    if !Openssl::available() {
        return;
    }
    let sandbox = Sandbox::new("console-wrong");
    let admin = Admin::start(&sandbox, 1);
    let mut s = Openssl::connect(&admin.addr);
    for _ in 0..3 {
        s.expect("Password: ");
        s.send("not the password");
        s.expect("Access denied\n");
    }
    assert!(
        s.ended_within(DEADLINE),
        "still open after 3 failures: {:?}",
        s.rest()
    );
    assert!(!admin.log_text().contains("not the password"));

    let mut cmd = Command::new(bins::reloadsup());
    cmd.args([
        "console",
        "--fingerprint",
        &admin.fingerprint,
        "-c",
        "worker info",
    ])
    .arg(&admin.addr)
    .env("RELOADSUP_PASSWORD", "wrong");
    let out = output_with_timeout(&mut cmd, DEADLINE);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("access denied"));
}

#[test]
fn console_trusts_on_first_use_and_refuses_a_changed_certificate() {
    let sandbox = Sandbox::new("console-tofu");
    let known = sandbox.join("known_hosts");
    let run = |admin: &Admin| {
        let mut cmd = Command::new(bins::reloadsup());
        cmd.args(["console", "--known-hosts"])
            .arg(&known)
            .args(["-c", "worker info", &admin.addr])
            .env("RELOADSUP_PASSWORD", PASSWORD);
        output_with_timeout(&mut cmd, DEADLINE)
    };
    let admin = Admin::start(&sandbox, 1);
    let out = run(&admin);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("trusting"));
    assert!(std::fs::read_to_string(&known)
        .unwrap()
        .contains(&admin.addr));
    let out = run(&admin);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("trusting"));

    // Another certificate at the same address.
    let kh = std::fs::read_to_string(&known).unwrap();
    std::fs::write(&known, kh.replace(&admin.addr, "elsewhere:1")).unwrap();
    std::fs::write(
        &known,
        format!(
            "{}{} {}\n",
            std::fs::read_to_string(&known).unwrap(),
            admin.addr,
            "00".repeat(32)
        ),
    )
    .unwrap();
    let out = run(&admin);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("REFUSED"), "{err}");
    assert!(text(&out).is_empty());
}

/// 200 connections that never finish a handshake and one that sends a byte a second: the
/// workers serve with 0 failures and a good client gets a console quickly (the contract says
/// within 1 s; the assertion is generous for a busy machine, the figure is printed).
#[test]
fn silent_and_slow_clients_do_not_lock_out_an_operator() {
    let sandbox = Sandbox::new("console-slowloris");
    let admin = Admin::start(&sandbox, 2);
    let addr = admin.http_addr();
    let load = Load::start(addr, 4, Limits::duration(Duration::from_secs(60)));
    load.wait_for_more_answers(20, DEADLINE);

    let silent: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(&admin.addr).unwrap())
        .collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let target = admin.addr.clone();
    let dribbler = thread::spawn(move || {
        let mut s = TcpStream::connect(target).unwrap();
        for b in b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
            .iter()
            .cycle()
        {
            if stop2.load(std::sync::atomic::Ordering::SeqCst) || s.write_all(&[*b]).is_err() {
                return;
            }
            // Pacing: this client is slow on purpose, one byte a second.
            thread::sleep(Duration::from_secs(1));
        }
    });
    // The console is tried only once the shell has taken every connection off the queue.
    let listener: std::net::SocketAddr = admin.addr.parse().expect("console address");
    wait_until(DEADLINE, "the shell to accept every connection", || {
        proc::accept_queue(listener) == Some(0)
    });

    let start = Instant::now();
    // From another source address: the silent ones all come from 127.0.0.1, whose accept rate
    // and waiting slots they use up by design; the promise is for an operator elsewhere.
    let out = admin.console_from("127.0.0.2", PASSWORD, &["worker info"]);
    let took = start.elapsed();
    eprintln!("console command (connect, TLS, login, worker info) took {took:?} under 200 silent + 1 slow connections");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).starts_with("  Current Workers: 2\n"));
    assert!(took < Duration::from_secs(5), "took {took:?}");

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = dribbler.join();
    drop(silent);
    load.wait_for_more_answers(20, DEADLINE);
    let report = load.stop();
    eprintln!("{}", report.summary());
    report.assert_no_failures();
}

#[test]
fn shell_worker_sigkilled_is_back_within_2s_and_workers_never_notice() {
    let sandbox = Sandbox::new("console-sigkill");
    let admin = Admin::start(&sandbox, 2);
    let workers = admin.worker_pids();
    let shell = admin.shell_pid().expect("a shell worker");
    proc::kill(shell, libc::SIGKILL).unwrap();
    let start = Instant::now();
    let back = wait_for(DEADLINE, "the console to answer again", || {
        let out = admin.console(&["worker info"]);
        out.status.success().then(|| start.elapsed())
    });
    eprintln!("shell worker back and answering {back:?} after SIGKILL");
    assert!(back < Duration::from_secs(2), "back after {back:?}");
    assert_ne!(admin.shell_pid(), Some(shell));
    assert_eq!(admin.worker_pids(), workers, "the workers were not touched");
}

/// Issue 18, item 4: a process of the shell worker's uid could SIGSTOP it, and the console
/// stayed down for as long as it liked. A stopped shell worker is replaced.
#[test]
fn a_stopped_shell_worker_is_replaced() {
    let sandbox = Sandbox::new("console-sigstop");
    let admin = Admin::start(&sandbox, 1);
    let shell = admin.shell_pid().expect("a shell worker");
    proc::kill(shell, libc::SIGSTOP).unwrap();
    wait_for(DEADLINE, "the console to answer again", || {
        admin
            .console(&["worker info"])
            .status
            .success()
            .then_some(())
    });
    assert_ne!(
        admin.shell_pid(),
        Some(shell),
        "the stopped one still serves"
    );
    assert!(
        !proc::is_alive(shell) || proc::is_zombie(shell),
        "the stopped shell worker was left running"
    );
}

/// Regression (found by the chaos run): the shell worker's back-off kept doubling across kills
/// 14 s apart, because it was reset only after 30 s of health, and the console was down for up
/// to 30 s. The console is the operator's way in: a shell worker that lived past the short-life
/// threshold (10 s) is back after the first step of the back-off, however often it is killed.
#[test]
fn shell_worker_killed_after_a_while_is_restarted_without_growing_back_off() {
    let sandbox = Sandbox::new("console-rekill");
    let admin = Admin::start(&sandbox, 1);
    for _ in 0..2 {
        let shell = wait_for(DEADLINE, "a shell worker", || admin.shell_pid());
        let seen = Instant::now();
        // Waiting for time itself: the shell must outlive the 10 s threshold.
        wait_until(
            Duration::from_secs(30),
            "10.5 s of the shell worker's life",
            || seen.elapsed() >= Duration::from_millis(10_500),
        );
        proc::kill(shell, libc::SIGKILL).unwrap();
        wait_until(DEADLINE, "a new shell worker", || {
            admin.shell_pid().is_some_and(|p| p != shell)
        });
    }
    let log = admin.log_text();
    assert_eq!(
        log.matches("restarting the shell worker in 100ms").count(),
        2,
        "{log}"
    );
}

#[test]
fn restart_from_the_console_under_load_replaces_every_worker_without_a_failure() {
    let sandbox = Sandbox::new("console-restart");
    let mut admin = Admin::start(&sandbox, 3);
    let before = admin.worker_pids();
    let shell = admin.shell_pid();
    let addr = admin.http_addr();
    let load = Load::start(addr, 4, Limits::duration(Duration::from_secs(60)));
    load.wait_for_more_answers(20, DEADLINE);
    let out = admin.console(&["restart", "worker info"]);
    let stdout = text(&out);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("generation 2 is serving\n"), "{stdout}");
    assert!(
        stdout.contains("Connection lost. Reconnecting... done!\n"),
        "{stdout}"
    );
    admin.wait_for_log("generation 2 is serving");
    load.wait_for_generation(2, DEADLINE);
    load.wait_for_more_answers(20, DEADLINE);
    let report = load.stop();
    eprintln!("{}", report.summary());
    report.assert_no_failures();
    let after = admin.worker_pids();
    assert!(
        before.iter().all(|p| !after.contains(p)),
        "{before:?} -> {after:?}"
    );
    assert_ne!(admin.shell_pid(), shell, "the shell worker was replaced");
    assert_eq!(
        admin.status()["upgrades"].as_u64(),
        Some(1),
        "restart upgrades the primary first"
    );
}

#[test]
fn upgrade_from_the_console_keeps_the_session_the_shell_and_the_workers() {
    let sandbox = Sandbox::new("console-upgrade");
    let admin = Admin::start(&sandbox, 3);
    let before = admin.worker_pids();
    let shell = admin.shell_pid();
    // One session: the upgrade's reply and the next command's both come over the shell link
    // the new image took over.
    let out = admin.console(&["upgrade", "worker info"]);
    let stdout = text(&out);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("upgraded in place to reloadsup"),
        "{stdout}"
    );
    assert!(stdout.contains("Current Workers: 3"), "{stdout}");
    assert!(!stdout.contains("Connection lost"), "{stdout}");
    assert_eq!(admin.status()["upgrades"].as_u64(), Some(1));
    assert_eq!(admin.worker_pids(), before, "the workers were not touched");
    assert_eq!(admin.shell_pid(), shell, "the shell worker was kept");
}

/// The shell worker's user + system CPU time, in clock ticks (utime and stime of
/// /proc/PID/stat, fields 14 and 15).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    n(11) + n(12)
}

/// Regression for the console lockouts of issue 12 (items 1 and 2): one address floods the
/// console with plain connections, then with many parallel wrong-password sessions; an
/// operator at another address (127.0.0.2) logs in during both, and the number of PBKDF2
/// checks the shell worker computed stays at the per-address limit instead of one per guess.
#[test]
fn a_flood_from_one_address_never_locks_out_an_operator_at_another() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let sandbox = Sandbox::new("console-flood");
    let admin = Admin::start(&sandbox, 1);
    let shell = wait_for(DEADLINE, "the shell worker", || admin.shell_pid());
    let cpu_before = cpu_ticks(shell);

    // Phase 1: connections from 127.0.0.1 as fast as 4 threads can open them, the newest
    // 1000 of each held open (a closed one would free its slot by itself). Bounded in count
    // and time.
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let floods: Vec<_> = (0..4)
        .map(|_| {
            let (stop, opened, addr) = (stop.clone(), opened.clone(), admin.addr.clone());
            thread::spawn(move || {
                let start = Instant::now();
                let mut held = std::collections::VecDeque::new();
                while !stop.load(Ordering::SeqCst)
                    && opened.load(Ordering::SeqCst) < 200_000
                    && start.elapsed() < Duration::from_secs(120)
                {
                    if let Ok(s) = TcpStream::connect(&addr) {
                        opened.fetch_add(1, Ordering::SeqCst);
                        held.push_back(s);
                        if held.len() > 1000 {
                            held.pop_front();
                        }
                    }
                }
            })
        })
        .collect();
    wait_until(DEADLINE, "the flood to start", || {
        opened.load(Ordering::SeqCst) > 500
    });
    for round in 0..2 {
        let out = admin.console_from("127.0.0.2", PASSWORD, &["worker info"]);
        assert!(
            out.status.success()
                && text(&out).starts_with(
                    "  Current Workers: 1
"
                ),
            "operator locked out during the connection flood (round {round}): {}
{}",
            text(&out),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stop.store(true, Ordering::SeqCst);
    for f in floods {
        f.join().unwrap();
    }
    eprintln!(
        "connection flood: {} connections from 127.0.0.1",
        opened.load(Ordering::SeqCst)
    );

    // Phase 2: 16 wrong-password clients at once from 127.0.0.3, 4 rounds: 64 guesses.
    let guessers: Vec<_> = (0..16)
        .map(|_| {
            let (fp, addr) = (admin.fingerprint.clone(), admin.addr.clone());
            thread::spawn(move || {
                for _ in 0..4 {
                    let mut cmd = Command::new(bins::reloadsup());
                    cmd.args(["console", "--source", "127.0.0.3", "--fingerprint", &fp])
                        .args(["-c", "status"])
                        .arg(&addr)
                        .env("RELOADSUP_PASSWORD", "wrong guess");
                    let out = output_with_timeout(&mut cmd, Duration::from_secs(60));
                    assert!(!out.status.success(), "a wrong password got in");
                }
            })
        })
        .collect();
    wait_until(DEADLINE, "the guesses to be checked", || {
        admin.log_text().contains("wrong password from 127.0.0.3")
    });
    let out = admin.console_from("127.0.0.2", PASSWORD, &["worker info"]);
    assert!(
        out.status.success()
            && text(&out).starts_with(
                "  Current Workers: 1
"
            ),
        "operator locked out during the guesses: {}
{}",
        text(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    for g in guessers {
        g.join().unwrap();
    }
    let computed = admin.checks_computed();
    let ticks = cpu_ticks(shell) - cpu_before;
    eprintln!(
        "64 wrong guesses from one address in 16 parallel sessions: {computed} PBKDF2 checks computed (3 of them the operator's), shell worker CPU {ticks} ticks"
    );
    // 20 guesses per address and minute, plus the operator's 3 logins.
    assert!(computed <= 20 + 3, "{computed} checks computed");
}

/// Issue 12, item 5: the release profile used `panic = "abort"`, which made the catch_unwind
/// around Rust commands dead code there: one panicking command killed the shell worker and
/// every session. This runs the release build of the `console_commands` example (built by
/// `make test`); without it the test is skipped, and fails under CI=true.
#[test]
fn release_build_a_panicking_command_costs_only_an_error_message() {
    let release = bins::profile_dir()
        .parent()
        .map(|t| t.join("release/examples/console_commands"))
        .filter(|p| p.is_file());
    let Some(binary) = release else {
        let msg = "the release build of the console_commands example is missing: cargo build --release -p reloadsup-examples --example console_commands (make test does)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        eprintln!("skipped: {msg}");
        return;
    };
    let sandbox = Sandbox::new("console-release-panic");
    let admin = Admin::start_binary(&sandbox, 1, binary);
    let shell = wait_for(DEADLINE, "the shell worker", || admin.shell_pid());
    // A scripted console stops at the first failed command, with exit code 1.
    let out = admin.console(&["panic", "worker info"]);
    let stdout = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert_eq!(stdout, "error: the command 'panic' panicked\n");
    assert_eq!(admin.shell_pid(), Some(shell), "the shell worker died");
    let out = admin.console(&["worker info"]);
    assert!(
        text(&out).starts_with("  Current Workers: 1\n"),
        "{}",
        text(&out)
    );
    assert_eq!(
        admin.shell_pid(),
        Some(shell),
        "the shell worker was replaced"
    );
}

/// Issue 12, item 6: `worker scale N` in the console reported "3 -> 3" going from 2 to 3. The
/// console and `ctl scale` must report the same old count.
#[test]
fn worker_scale_in_the_console_reports_the_old_count() {
    let sandbox = Sandbox::new("console-scale");
    let admin = Admin::start(&sandbox, 2);
    let out = admin.console(&["worker scale 3", "worker info"]);
    let stdout = text(&out);
    assert!(
        stdout.starts_with("workers: 2 -> 3\n  Current Workers: "),
        "{stdout}"
    );
    let out = output_with_timeout(
        Command::new(bins::reloadsup())
            .arg("ctl")
            .arg("--control")
            .arg(admin.state.join("control.sock"))
            .args(["scale", "2"]),
        DEADLINE,
    );
    assert_eq!(text(&out), "workers: 3 -> 2\n");
    let out = admin.console(&["worker add 2", "worker remove"]);
    assert_eq!(text(&out), "workers: 2 -> 4\nworkers: 4 -> 3\n");
}

/// Issue 18, item 4: a console program reaches the supervisor through a channel it inherits,
/// not a path that any process of the shell's uid could find in `/proc/net/unix`; and the
/// channel ends with the program's session, so a process it left behind (out of its process
/// group, with `setsid`) holds no authority afterwards.
#[test]
fn a_console_programs_channel_is_inherited_and_ends_with_its_session() {
    if !crate::running_as_root("a_console_programs_channel_is_inherited_and_ends_with_its_session")
    {
        return;
    }
    let sandbox = Sandbox::new("console-door");
    // The shell runs as nobody: a copy of ctl it can run, and a place it can write.
    let ctl = sandbox.shared_copy(&bins::reloadsup());
    let out = sandbox.join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let ctl = shell_quote(&ctl.to_string_lossy());
    let left = shell_quote(&out.to_string_lossy());
    let config = sandbox.write(
        "console.toml",
        &format!(
            "[commands.leave]\nrun = [\"/bin/sh\", \"-c\", {script:?}]\n",
            script = format!(
                "{ctl} ctl status; \
                 setsid sh -c 'sleep 1; {ctl} ctl --timeout 5s status > {left}/out 2>&1; \
                 echo $? > {left}/rc.tmp; mv {left}/rc.tmp {left}/rc' \
                 < /dev/null > /dev/null 2>&1 & \
                 echo control=$RELOADSUP_CONTROL"
            ),
        ),
    );
    let admin = Admin::start_with(
        &sandbox,
        1,
        bins::reloadsup(),
        &["-c", config.to_str().unwrap()],
    );
    let run = admin.console(&["leave"]);
    let said = text(&run);
    assert!(run.status.success(), "{said}");
    assert!(
        said.contains("generation: 1"),
        "the program reached the primary: {said}"
    );
    assert!(said.contains("control=fd:"), "{said}");
    // No socket of the console's in the state directory, nor anywhere else by name.
    let unix = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    let console_dir = format!("{}/console-", admin.state.display());
    assert!(
        !unix.contains(&console_dir),
        "a console socket is listed in /proc/net/unix"
    );
    let rc = sandbox.join("out/rc");
    wait_until(DEADLINE, "the leftover process to try", || rc.exists());
    let code = std::fs::read_to_string(&rc).unwrap();
    let tried = std::fs::read_to_string(sandbox.join("out/out")).unwrap_or_default();
    assert_ne!(
        code.trim(),
        "0",
        "a process left behind by a finished session still reached the primary: {tried}"
    );
    assert!(!tried.contains("generation:"), "{tried}");
}

/// Issue 12, item 4: with `--admin-user`, the shell worker (TLS, login, console programs) drops
/// to that user once it holds its fds, is not dumpable (a worker of the same uid cannot ptrace
/// it and use its link), and its programs still reach the primary with `reloadsup ctl` through
/// the channel they inherit (the primary's socket accepts only root).
#[test]
fn shell_worker_drops_to_the_user_and_its_programs_still_reach_the_primary() {
    // SAFETY: geteuid has no preconditions.
    if !reloadsup_integration_tests::require(
        "root, to switch users",
        unsafe { libc::geteuid() } == 0,
    ) {
        return;
    }
    let sandbox = Sandbox::new("console-drop");
    let ctl = sandbox.shared_copy(&bins::reloadsup());
    let ctl = ctl.to_str().unwrap();
    let config = sandbox.write(
        "console.toml",
        &format!(
            "[commands.st]\nrun = [{ctl:?}, \"ctl\", \"status\"]\n\
             [commands.rl]\nrun = [{ctl:?}, \"ctl\", \"reload\"]\n\
             [commands.who]\nrun = [\"/bin/sh\", \"-c\", \"echo uid=$(id -u) control=$RELOADSUP_CONTROL\"]\n"
        ),
    );
    let mut admin = Admin::start_with(
        &sandbox,
        1,
        bins::example("console_commands"),
        &[
            "--user",
            "65534",
            "--group",
            "65534",
            // The console shares the workers' user only when asked (issue 18, item 4).
            "--admin-user",
            "65534",
            "-c",
            config.to_str().unwrap(),
        ],
    );
    let shell = admin.shell_pid().expect("a shell worker");
    let status = std::fs::read_to_string(format!("/proc/{shell}/status")).unwrap();
    let uids = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("a Uid line");
    assert_eq!(
        uids.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["65534"; 4],
        "{uids}"
    );
    let gids = status.lines().find(|l| l.starts_with("Gid:")).unwrap();
    assert_eq!(
        gids.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["65534"; 4],
        "{gids}"
    );
    // The kernel gives a non-dumpable process's /proc entries to root.
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(format!("/proc/{shell}/status"))
        .unwrap()
        .uid();
    assert_eq!(owner, 0, "the shell worker is dumpable");

    // Login works, and the programs run as the user with the shell's own socket.
    let out = admin.console(&["who"]);
    let who = text(&out);
    assert!(out.status.success(), "{who}");
    assert!(who.starts_with("uid=65534 control="), "{who}");
    let control = who.trim().trim_start_matches("uid=65534 control=");
    assert_ne!(
        std::path::Path::new(control),
        admin.state.join("control.sock")
    );

    let out = admin.console(&["st"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("generation: 1"), "{}", text(&out));
    let out = admin.console(&["rl"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("generation 2 is serving"),
        "{}",
        text(&out)
    );

    // A replacement shell worker binds the socket again over the one its predecessor left.
    proc::kill(shell, libc::SIGKILL).unwrap();
    let again = wait_for(DEADLINE, "a new shell worker", || {
        admin.shell_pid().filter(|&p| p != shell)
    });
    admin.wait_for_log(&format!(
        "reloadsup[{again}] admin console of t: shell worker listening"
    ));
    let out = admin.console(&["st"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("generation: 2"), "{}", text(&out));
}

/// `--admin-user` gives the console a user of its own, apart from the workers'.
#[test]
fn admin_user_gives_the_shell_worker_a_user_apart_from_the_workers() {
    // SAFETY: geteuid has no preconditions.
    if !reloadsup_integration_tests::require(
        "root, to switch users",
        unsafe { libc::geteuid() } == 0,
    ) {
        return;
    }
    let sandbox = Sandbox::new("console-admin-user");
    let ctl = sandbox.shared_copy(&bins::reloadsup());
    let config = sandbox.write(
        "console.toml",
        &format!(
            "admin-user = \"65533:65532\"\n[commands.st]\nrun = [{:?}, \"ctl\", \"status\"]\n\
             [commands.who]\nrun = [\"/bin/sh\", \"-c\", \"echo $(id -u):$(id -g)\"]\n",
            ctl.to_str().unwrap()
        ),
    );
    let admin = Admin::start_with(
        &sandbox,
        1,
        bins::example("console_commands"),
        &["--user", "65534", "-c", config.to_str().unwrap()],
    );
    let uid_of = |pid: u64| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        line.split_whitespace().nth(1).unwrap().to_string()
    };
    let shell = admin.shell_pid().expect("a shell worker") as u64;
    assert_eq!(uid_of(shell), "65533");
    // The slot counts from its spawn: wait for the role to become the command.
    let worker = admin.worker_pids()[0];
    wait_until(DEADLINE, "the worker to run as uid 65534", || {
        uid_of(worker) == "65534"
    });
    let out = admin.console(&["who"]);
    assert_eq!(text(&out), "65533:65532\n");
    let out = admin.console(&["st"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("generation: 1"), "{}", text(&out));
}

/// Issue 10: `logs N` in the console prints the logger's last N lines, labelled.
#[test]
fn logs_in_the_console_prints_the_last_lines() {
    let sandbox = Sandbox::new("console-logs");
    let file = sandbox.join("app.log");
    let output = format!("file:{}", file.display());
    let admin = Admin::start_with(
        &sandbox,
        3,
        bins::example("console_commands"),
        &["--log-output", &output],
    );
    // Each worker says `serving on fd 3` on stderr when it starts.
    wait_until(DEADLINE, "three lines in the log", || {
        std::fs::read_to_string(&file).is_ok_and(|t| t.lines().count() >= 3)
    });
    let out = admin.console(&["logs 3", "worker info"]);
    let stdout = text(&out);
    assert!(out.status.success(), "{stdout}");
    let (logs, rest) = stdout
        .split_once("  Current Workers: ")
        .unwrap_or_else(|| panic!("no worker info after the logs: {stdout}"));
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains(" gen=1 worker=") && l.contains(" stderr: ")),
        "{stdout}"
    );
    assert!(rest.starts_with("3\n"), "{stdout}");
    let out = admin.console(&["logs x"]);
    assert!(text(&out).starts_with("error: "), "{}", text(&out));
}

/// Issue 10: `logs -f` follows across a reload, and any line typed ends it with a prompt.
#[test]
fn logs_follow_in_the_console_ends_at_any_line() {
    if !Openssl::available() {
        return;
    }
    let sandbox = Sandbox::new("console-logs-follow");
    let file = sandbox.join("app.log");
    let output = format!("file:{}", file.display());
    let mut admin = Admin::start_with(
        &sandbox,
        2,
        bins::example("console_commands"),
        &["--log-output", &output],
    );
    let mut s = Openssl::connect(&admin.addr);
    s.expect("Password: ");
    s.send(PASSWORD);
    s.expect("> ");
    s.send("logs -f 0");
    let out = output_with_timeout(
        Command::new(bins::reloadsup())
            .arg("ctl")
            .arg("--control")
            .arg(admin.state.join("control.sock"))
            .arg("reload"),
        DEADLINE,
    );
    assert!(out.status.success(), "{}", text(&out));
    admin.wait_for_log("generation 2 is serving");
    // Both new workers say they serve; the follow shows it.
    s.expect(" gen=2 worker=");
    s.expect(" gen=2 worker=");
    s.send("");
    s.expect("> ");
    s.send("worker info");
    let info = s.expect("> ");
    assert!(
        info.contains("  Current Workers: 2\n"),
        "after the follow: {info}"
    );
    s.send(".exit");
    assert!(s.ended_within(DEADLINE));
}

/// Issue 22, defect 15: `hash-password` took a one-character password without a word, and
/// `--help` named a `notify.sock` that no longer exists and left USR1 and USR2 out.
#[test]
fn hash_password_warns_about_a_short_password_and_help_names_every_signal() {
    let run = hash_password_output;
    let short = run("x");
    assert!(short.status.success());
    assert!(String::from_utf8_lossy(&short.stderr).contains("shorter than 12 characters"));
    let long = run("correct horse battery");
    assert!(long.status.success());
    assert!(
        long.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&long.stderr)
    );
    let help = Command::new(bins::reloadsup())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("USR1 reopen") && help.contains("USR2 upgrade"),
        "{help}"
    );
    assert!(!help.contains("notify.sock"), "{help}");
}
