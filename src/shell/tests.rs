//! The shell worker on a thread, with a fake primary on the other end of its link and real
//! TLS clients on real sockets: the console protocol end to end, without the rest of
//! reloadsup.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use reloadsup_protocol::{
    self as proto, CustomCommand, FrameReader, Message, Outcome, Progress, ReloadOutcome, Reply,
    Request, ShellSpec, Status, WorkerInfo, WorkerState, PROTOCOL_VERSION,
};

use super::{serve, Commands};
use crate::client::console::{connect, parse_target, Conn, Said, Trust};
use crate::password::{PasswordHash, MIN_ITERATIONS};
use crate::sys;

const PASSWORD: &str = "correct horse";

fn hash() -> String {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        PasswordHash::create(PASSWORD.as_bytes(), MIN_ITERATIONS)
            .unwrap()
            .encode()
    })
    .clone()
}

fn sandbox(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "reloadsup-shell-{}-{name}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Plays the primary: answers hello and requests with canned replies. `Restart` is answered
/// like a reload, then the link is closed (the real primary sends SIGTERM instead). `Stop` is
/// never answered: a request that stays in flight.
fn fake_primary(link: OwnedFd) {
    let mut s = UnixStream::from(link);
    let mut reader = FrameReader::new();
    let mut dead = 1u32;
    let mut target = 4u32;
    let mut generation = 1u64;
    let send = |s: &mut UnixStream, m: &Message| {
        let _ = s.write_all(&proto::encode_frame(m).unwrap());
    };
    send(&mut s, &Message::hello());
    let mut buf = [0u8; 4096];
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        reader.push(&buf[..n]);
        while let Ok(Some(msg)) = reader.next_frame::<Message>() {
            let Message::Request { id, request } = msg else {
                continue;
            };
            let reply = match request {
                Request::Status => Reply::Status(Status {
                    pid: 1,
                    name: "test".into(),
                    generation,
                    target_workers: target,
                    current_workers: target - dead,
                    dead_workers: dead,
                    listeners: vec![],
                    workers: (0..target)
                        .map(|slot| WorkerInfo {
                            slot,
                            pid: if slot < dead { 0 } else { 100 + slot },
                            generation,
                            state: if slot < dead {
                                WorkerState::Dead
                            } else {
                                WorkerState::Ready
                            },
                            restarts: 0,
                            uptime_ms: 1500,
                            status: String::new(),
                        })
                        .collect(),
                    last_reload: None,
                    version: "0.1.0".into(),
                    upgrades: 0,
                }),
                Request::Revive => {
                    let n = dead;
                    dead = 0;
                    Reply::Done(format!("revived {n} workers"))
                }
                Request::Scale { workers } => {
                    target = workers.max(dead);
                    Reply::Done(format!("target is now {target} workers"))
                }
                Request::Reload | Request::Restart => {
                    generation += 1;
                    send(
                        &mut s,
                        &Message::Progress {
                            id,
                            progress: Progress::GenerationStarted {
                                generation,
                                workers: target,
                            },
                        },
                    );
                    Reply::Reload(ReloadOutcome {
                        generation,
                        outcome: Outcome::Succeeded,
                        reason: String::new(),
                    })
                }
                Request::Stop => continue,
                _ => Reply::Error("not in this test".into()),
            };
            send(&mut s, &Message::Reply { id, reply });
            if request == Request::Restart {
                return;
            }
        }
    }
}

struct Harness {
    addr: SocketAddr,
    fingerprint: String,
    shell: Option<JoinHandle<Result<u8, String>>>,
    dir: PathBuf,
}

impl Harness {
    fn start(name: &str, commands: Commands, custom: Vec<CustomCommand>) -> Harness {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        Harness::start_on(name, commands, custom, listener)
    }

    /// Like [`Harness::start`], serving `listener`.
    fn start_on(
        name: &str,
        commands: Commands,
        custom: Vec<CustomCommand>,
        listener: TcpListener,
    ) -> Harness {
        Harness::start_full(name, commands, custom, listener, false)
    }

    /// Like [`Harness::start_on`]; with `proxied`, the shell serves its programs' control
    /// socket at `control.sock` in the sandbox.
    fn start_full(
        name: &str,
        commands: Commands,
        custom: Vec<CustomCommand>,
        listener: TcpListener,
        proxied: bool,
    ) -> Harness {
        let dir = sandbox(name);
        let identity = crate::tls::load_or_create_identity(&dir, None, None).unwrap();
        let addr = listener.local_addr().unwrap();
        let spec = ShellSpec {
            version: PROTOCOL_VERSION,
            primary_pid: std::process::id(),
            name: "test".into(),
            cert_pem: identity.cert_pem.clone(),
            key_pem: identity.key_pem.clone(),
            password_hash: hash(),
            control_path: dir
                .join("control.sock")
                .into_os_string()
                .into_encoded_bytes(),
            commands: custom,
            fd_count: 1,
        };
        let (ours, theirs) = sys::stream_pair().unwrap();
        let frame = proto::encode_frame(&spec).unwrap();
        let listener_fd = OwnedFd::from(listener);
        // The spec in two sends, the fd with the first bytes, as a stream may deliver it.
        sys::send_with_fds(ours.as_fd(), &frame[..7], &[listener_fd.as_fd()]).unwrap();
        drop(listener_fd);
        sys::send_with_fds(ours.as_fd(), &frame[7..], &[]).unwrap();
        std::thread::spawn(move || fake_primary(ours));
        let shell = std::thread::spawn(move || {
            if proxied {
                super::serve_proxied(theirs, commands)
            } else {
                serve(theirs, commands, false, None)
            }
        });
        Harness {
            addr,
            fingerprint: identity.fingerprint_hex,
            shell: Some(shell),
            dir,
        }
    }

    fn connect(&self) -> Conn {
        let target = parse_target(&self.addr.to_string()).unwrap();
        let trust = Trust::Fingerprint(self.fingerprint.clone());
        let (mut conn, fp) = match connect(&target, &trust) {
            Ok(c) => c,
            Err(_) => panic!("unable to connect to the console"),
        };
        assert_eq!(fp, self.fingerprint);
        conn.patience = Some(Duration::from_secs(15));
        conn
    }

    fn login(&self) -> Conn {
        let mut c = self.connect();
        assert_eq!(c.next(), Said::Prompt("Password: ".into()));
        c.send_line(PASSWORD).unwrap();
        assert_eq!(c.next(), Said::Prompt("> ".into()));
        c
    }

    /// Waits for the shell worker's thread to end (the link closed), at most `within`.
    fn ended_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.shell.as_ref().is_some_and(|h| h.is_finished()) {
                return self.shell.take().unwrap().join().unwrap().is_ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `line` and returns the output up to the next `> `.
fn run(c: &mut Conn, line: &str) -> Vec<String> {
    c.send_line(line).unwrap();
    let mut out = Vec::new();
    loop {
        match c.next() {
            Said::Line(l) => out.push(l),
            Said::Prompt(p) if p == "> " => return out,
            other => panic!("after {line:?}: {other:?} (output so far: {out:?})"),
        }
    }
}

fn sketch_commands() -> Commands {
    Commands::default()
        .command("foo", "prints its words", |ctx| {
            for a in ctx.args().to_vec() {
                ctx.println(&a);
            }
            Ok(())
        })
        .command("baz", "doubles a number", |ctx| {
            let Some(line) = ctx.read_line("Give me a number: ") else {
                return Ok(());
            };
            let n: i64 = line
                .trim()
                .parse()
                .map_err(|_| format!("'{}' is not a number", line.trim()))?;
            ctx.println(&format!("{n}*2 = {}", n * 2));
            Ok(())
        })
        .command("bar", "prints its words reversed, then restarts", |ctx| {
            for a in ctx.args().iter().rev().cloned().collect::<Vec<_>>() {
                ctx.println(&a);
            }
            match ctx.request(Request::Restart)? {
                Reply::Reload(o) if o.outcome == Outcome::Succeeded => Ok(()),
                other => Err(format!("restart failed: {other:?}")),
            }
        })
        .command("boom", "panics", |_| panic!("boom"))
}

#[test]
fn sketched_session_runs_end_to_end() {
    let h = Harness::start("sketch", sketch_commands(), vec![]);
    let mut c = h.login();
    assert_eq!(run(&mut c, "foo 1 2 3"), ["foo", "1", "2", "3"]);

    c.send_line("baz").unwrap();
    assert_eq!(c.next(), Said::Prompt("Give me a number: ".into()));
    c.send_line("21").unwrap();
    assert_eq!(c.next(), Said::Line("21*2 = 42".into()));
    assert_eq!(c.next(), Said::Prompt("> ".into()));

    c.send_line("baz").unwrap();
    assert_eq!(c.next(), Said::Prompt("Give me a number: ".into()));
    let out = run(&mut c, "many");
    assert_eq!(out, ["error: 'many' is not a number"]);

    let info = run(&mut c, "worker info");
    assert_eq!(
        info[..3],
        [
            "  Current Workers: 3",
            "   Target Workers: 4",
            "     Dead Workers: 1"
        ]
    );
    assert_eq!(
        run(&mut c, "worker revive  # revive the dead workers"),
        ["revived 1 workers"]
    );
    assert_eq!(run(&mut c, "worker info")[2], "     Dead Workers: 0");
    assert!(run(&mut c, "worker list")
        .iter()
        .any(|l| l.contains("ready")));
    assert_eq!(run(&mut c, "# nothing"), Vec::<String>::new());
    assert_eq!(run(&mut c, "foo 'a b' \"c\""), ["foo", "a b", "c"]);
    assert!(run(&mut c, "nope")[0].starts_with("error: unknown command 'nope'"));
    assert!(run(&mut c, "foo 'open")[0].starts_with("error: unbalanced quotes"));
    assert!(run(&mut c, "boom")[0].starts_with("error: the command 'boom' panicked"));
    let help = run(&mut c, "help");
    assert!(help.iter().any(|l| l.contains("worker info")));
    assert!(help
        .iter()
        .any(|l| l.contains("baz") && l.contains("doubles")));
    let reload = run(&mut c, "reload");
    assert_eq!(
        reload,
        [
            "starting generation 2 with 4 workers",
            "generation 2 is serving"
        ]
    );

    c.send_line(".exit").unwrap();
    assert_eq!(c.next(), Said::Closed);
    drop(h);
}

#[test]
fn bar_prints_reversed_and_restart_ends_the_session() {
    let mut h = Harness::start("bar", sketch_commands(), vec![]);
    let mut c = h.login();
    c.send_line("bar foo").unwrap();
    assert_eq!(c.next(), Said::Line("foo".into()));
    assert_eq!(c.next(), Said::Line("bar".into()));
    // The fake primary closes the link after answering; the worker exits and the session ends
    // without a new prompt.
    assert_eq!(c.next(), Said::Closed);
    assert!(h.ended_within(Duration::from_secs(5)));
}

#[test]
fn restart_reports_then_the_session_ends() {
    let mut h = Harness::start("restart", Commands::default(), vec![]);
    let mut c = h.login();
    c.send_line("restart").unwrap();
    let mut lines = Vec::new();
    loop {
        match c.next() {
            Said::Line(l) => lines.push(l),
            Said::Closed => break,
            other => panic!("{other:?} after {lines:?}"),
        }
    }
    assert!(
        lines.contains(&"generation 2 is serving".to_string()),
        "{lines:?}"
    );
    assert!(h.ended_within(Duration::from_secs(5)));
}

#[test]
fn three_wrong_passwords_close_the_connection() {
    let h = Harness::start("wrong", Commands::default(), vec![]);
    let mut c = h.connect();
    let start = Instant::now();
    for i in 0..3 {
        assert_eq!(c.next(), Said::Prompt("Password: ".into()), "attempt {i}");
        c.send_line("wrong").unwrap();
        assert_eq!(c.next(), Said::Line("Access denied".into()));
    }
    assert_eq!(c.next(), Said::Closed);
    assert!(start.elapsed() >= super::DENY_DELAY * 3);
    // A good client from the same address still gets in.
    let mut c = h.login();
    assert_eq!(
        run(&mut c, "foo"),
        ["error: unknown command 'foo'; 'help' lists the commands"]
    );
}

#[test]
fn commands_typed_ahead_of_a_wrong_password_are_not_guesses() {
    let h = Harness::start("typeahead", Commands::default(), vec![]);
    let mut c = h.connect();
    assert_eq!(c.next(), Said::Prompt("Password: ".into()));
    c.send_line("wrong\nworker info\nstatus").unwrap();
    assert_eq!(c.next(), Said::Line("Access denied".into()));
    assert_eq!(c.next(), Said::Prompt("Password: ".into()));
    c.send_line(PASSWORD).unwrap();
    assert_eq!(c.next(), Said::Prompt("> ".into()));
}

#[test]
fn typed_ahead_lines_run_in_order() {
    let h = Harness::start("order", sketch_commands(), vec![]);
    let mut c = h.connect();
    assert_eq!(c.next(), Said::Prompt("Password: ".into()));
    c.send_line(&format!("{PASSWORD}\nfoo a\nfoo b\n.exit"))
        .unwrap();
    let mut all = Vec::new();
    loop {
        match c.next() {
            Said::Closed => break,
            // Output after a prompt may arrive with it: the prompt opens the line.
            Said::Line(l) => all.push(l.trim_start_matches("> ").to_string()),
            Said::Prompt(p) => assert_eq!(p, "> "),
        }
    }
    assert_eq!(all, ["foo", "a", "foo", "b"]);
}

#[test]
fn a_long_line_closes_the_session() {
    let h = Harness::start("long", Commands::default(), vec![]);
    let mut c = h.login();
    c.send_line(&"x".repeat(super::MAX_LINE + 1)).unwrap();
    let mut saw_error = false;
    loop {
        match c.next() {
            Said::Line(l) if l.starts_with("error: line longer") => saw_error = true,
            Said::Line(_) => {}
            Said::Closed => break,
            other => panic!("{other:?}"),
        }
    }
    assert!(saw_error);
}

#[test]
fn external_commands_get_words_input_and_the_control_path() {
    let custom = vec![CustomCommand {
        name: "ext".into(),
        run: vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo \"args: $*\"; echo \"control: $RELOADSUP_CONTROL\"; read x; echo \"got $x\"; exit 3".into(),
            "sh".into(),
        ],
        help: "an external program".into(),
    }];
    let h = Harness::start("ext", Commands::default(), custom);
    let mut c = h.login();
    assert!(run(&mut c, "help")
        .iter()
        .any(|l| l.contains("an external program")));
    c.send_line("ext 'a b' c").unwrap();
    assert_eq!(c.next(), Said::Line("args: a b c".into()));
    // Its way to the supervisor is an inherited fd, never a path (issue 18, item 4).
    let Said::Line(control) = c.next() else {
        panic!("no control line")
    };
    let fd = control
        .strip_prefix("control: fd:")
        .and_then(|n| n.parse::<i32>().ok());
    assert!(fd.is_some_and(|n| n > 2), "{control}");
    let out = run(&mut c, "hello there");
    assert_eq!(out, ["got hello there", "error: ext exited with status 3"]);
}

#[test]
fn garbage_instead_of_tls_costs_nothing() {
    let h = Harness::start("garbage", Commands::default(), vec![]);
    let mut raw = TcpStream::connect(h.addr).unwrap();
    raw.write_all(b"GET / HTTP/1.0\r\n\r\n\x16\x03\x01\xff\xff")
        .unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 1024];
    // An alert, then the close.
    let mut total = 0;
    while let Ok(n) = raw.read(&mut buf) {
        if n == 0 {
            break;
        }
        total += n;
    }
    assert!(total < 1024);
    let mut c = h.login();
    assert_eq!(run(&mut c, "worker info").len(), 4);
}

/// 200 connections that never finish a handshake and one that sends a byte a second do not
/// keep an operator out: the console is reached within 1 s (asserted with a generous margin;
/// the figure is printed).
#[test]
fn silent_and_slow_clients_do_not_lock_out_an_operator() {
    let h = Harness::start("slowloris", Commands::default(), vec![]);
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(TcpStream::connect(h.addr).unwrap());
    }
    let addr = h.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let dribbler = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        // A TLS ClientHello header, a byte a second.
        for b in b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
            .iter()
            .cycle()
        {
            if stop2.load(std::sync::atomic::Ordering::SeqCst) || s.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let mut c = h.login();
    let took = start.elapsed();
    eprintln!("console reached in {took:?} with 200 silent and 1 slow connection");
    assert_eq!(run(&mut c, "worker info").len(), 4);
    assert!(took < Duration::from_secs(5), "took {took:?}");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = dribbler.join();
    drop(silent);
}

#[test]
fn the_seventeenth_session_is_refused() {
    let h = Harness::start("many", Commands::default(), vec![]);
    let mut sessions: Vec<Conn> = (0..super::MAX_SESSIONS).map(|_| h.login()).collect();
    let mut c = h.connect();
    assert_eq!(c.next(), Said::Prompt("Password: ".into()));
    c.send_line(PASSWORD).unwrap();
    match c.next() {
        Said::Line(l) => assert!(l.starts_with("error: too many console sessions"), "{l}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.next(), Said::Closed);
    let mut first = sessions.remove(0);
    first.send_line(".exit").unwrap();
    assert_eq!(first.next(), Said::Closed);
    let mut c = h.login();
    assert_eq!(run(&mut c, "worker info").len(), 4);
}

#[test]
fn garbage_lines_never_hurt_the_session() {
    let h = Harness::start("garbage-lines", sketch_commands(), vec![]);
    let mut c = h.login();
    // A cheap deterministic generator: bytes of every kind, invalid UTF-8, NULs, quotes.
    let mut x: u32 = 0x1234_5678;
    for i in 0..200 {
        let len = (i * 7) % 300;
        let mut line = Vec::with_capacity(len);
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let b = (x & 0xff) as u8;
            if b != b'\n' && b != b'\r' {
                line.push(b);
            }
        }
        // Not a command that would wait for input or leave.
        if line.starts_with(b"baz") || line.starts_with(b"bar") || line.starts_with(b".exit") {
            continue;
        }
        line.push(b'\n');
        let text = String::from_utf8_lossy(&line).into_owned();
        c.send_line(text.trim_end_matches('\n')).unwrap();
        loop {
            match c.next() {
                Said::Prompt(p) if p == "> " => break,
                Said::Prompt(p) => panic!("unexpected prompt {p:?} after {text:?}"),
                Said::Line(_) => {}
                Said::Closed => panic!("closed after {text:?}"),
            }
        }
    }
    assert_eq!(run(&mut c, "foo ok"), ["foo", "ok"]);
}

/// Regression (issue 12, item 3): a client that disconnects while its program runs used to
/// leave the session and the program (its stdin open) behind. Now the program's process group
/// is stopped and the slot freed: after 16 such sessions a 17th can still log in.
#[test]
fn a_disconnect_during_a_program_stops_its_group_and_frees_the_slot() {
    let dir = sandbox("leak-pids");
    let custom = vec![CustomCommand {
        name: "hang".into(),
        run: vec![
            "/bin/sh".into(),
            "-c".into(),
            "sleep 1000 & echo \"$$ $!\" > \"$1/$$\"; echo started; cat".into(),
            "sh".into(),
            dir.to_string_lossy().into_owned(),
        ],
        help: "waits".into(),
    }];
    let h = Harness::start("leak", Commands::default(), custom);
    for _ in 0..super::MAX_SESSIONS {
        let mut c = h.login();
        c.send_line("hang").unwrap();
        assert_eq!(c.next(), Said::Line("started".into()));
        drop(c);
    }
    let pids: Vec<u32> = std::fs::read_dir(&dir)
        .unwrap()
        .flat_map(|e| {
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
            text.split_whitespace()
                .map(|p| p.parse::<u32>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(pids.len(), 2 * super::MAX_SESSIONS);
    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit(')').next().map(|r| r.trim_start().to_string()))
            .is_some_and(|r| !r.starts_with('Z') && !r.starts_with('X'))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    assert!(
        left.is_empty(),
        "still running after their sessions ended: {left:?}"
    );
    let mut c = h.login();
    assert_eq!(run(&mut c, "worker info").len(), 4);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 12, item 4: a console program gets an allow-listed environment and no fd above 2,
/// even one the shell worker's process holds without close-on-exec.
#[test]
fn external_programs_get_a_clean_environment_and_only_fds_0_to_2() {
    // dup() makes a copy without close-on-exec: a leak the program must not see.
    let leaked = nix::unistd::dup(std::io::stdout()).unwrap();
    let custom = vec![CustomCommand {
        name: "env".into(),
        run: vec![
            "/bin/sh".into(),
            "-c".into(),
            "ls /proc/$$/fd | tr '\\n' ' '; echo; echo $RELOADSUP_CONTROL; echo vars:; env | cut -d= -f1 | sort | tr '\\n' ' '; echo".into(),
        ],
        help: "fds and environment".into(),
    }];
    let h = Harness::start("clean-env", Commands::default(), custom);
    let mut c = h.login();
    let out = run(&mut c, "env");
    drop(leaked);
    // ls lists the shell's fds from outside, so its own directory fd is not among them: 0 to
    // 2 and its control channel, which RELOADSUP_CONTROL names (issue 18, item 4).
    let door = out[1].strip_prefix("fd:").expect("RELOADSUP_CONTROL=fd:N");
    let mut fds: Vec<&str> = out[0].split_whitespace().collect();
    fds.sort();
    let mut want = vec!["0", "1", "2", door];
    want.sort();
    assert_eq!(fds, want, "{out:?}");
    assert_eq!(out[2], "vars:", "{out:?}");
    let vars: Vec<&str> = out[3].split_whitespace().collect();
    assert!(vars.contains(&"RELOADSUP_CONTROL"), "{vars:?}");
    assert!(vars.contains(&"PATH"), "{vars:?}");
    // cargo sets these for every test process; the program must not inherit them.
    assert!(!vars.iter().any(|v| v.starts_with("CARGO")), "{vars:?}");
}

/// Regression (the shell's edge-triggered accept): a burst larger than one accept batch was
/// left half in the kernel's queue, because mio reports only new edges, until another
/// connection came. 300 connections queued before the shell starts: every one past the first
/// batch is accepted too (and closed at once, over the per-source rate) without a new one.
#[test]
fn a_burst_larger_than_an_accept_batch_is_accepted_without_a_new_connection() {
    use nix::sys::socket::{self as so, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn};
    let fd = so::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    so::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::new(127, 0, 0, 1, 0),
    )
    .unwrap();
    so::listen(&fd, Backlog::new(1024).unwrap()).unwrap();
    let listener = TcpListener::from(fd);
    let addr = listener.local_addr().unwrap();
    const BURST: usize = super::ACCEPT_BATCH + 44;
    let clients: Vec<TcpStream> = (0..BURST)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    let _h = Harness::start_on("accept-burst", Commands::default(), vec![], listener);
    // The kernel accepts in arrival order: the last ones are past the first batch, and far
    // past the per-source burst, so the shell closes them as soon as it accepts them.
    for (i, mut c) in clients.into_iter().enumerate().skip(super::ACCEPT_BATCH) {
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 64];
        match c.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("connection {i} of {BURST} was not accepted: {other:?}"),
        }
    }
}

/// The programs' control socket forwards at most `MAX_FORWARDED` requests at once over the
/// link (the primary closes a link with 64 in flight, which would end every session): the
/// rest are answered with an error at once, and the console keeps working.
#[test]
fn the_programs_control_socket_bounds_what_it_forwards() {
    use super::proxy::{MAX_FORWARDED, MAX_IN_FLIGHT};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let h = Harness::start_full("proxy-bound", Commands::default(), door(), listener, true);
    let (_session, door) = program_door(&h);
    let mut clients: Vec<UnixStream> = Vec::new();
    let sent = MAX_FORWARDED + MAX_IN_FLIGHT;
    for _ in 0..sent / MAX_IN_FLIGHT {
        let mut c = UnixStream::from(
            sys::connect_through_door(
                std::os::fd::AsRawFd::as_raw_fd(&door),
                Duration::from_secs(30),
            )
            .unwrap(),
        );
        let mut bytes = proto::encode_frame(&Message::hello()).unwrap();
        for id in 1..=MAX_IN_FLIGHT as u32 {
            let stop = Message::Request {
                id,
                request: Request::Stop,
            };
            bytes.extend(proto::encode_frame(&stop).unwrap());
        }
        c.write_all(&bytes).unwrap();
        c.set_nonblocking(true).unwrap();
        clients.push(c);
    }
    let mut readers: Vec<FrameReader> = clients.iter().map(|_| FrameReader::new()).collect();
    let mut refused = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while refused.len() < sent - MAX_FORWARDED && Instant::now() < deadline {
        for (c, r) in clients.iter_mut().zip(readers.iter_mut()) {
            let mut buf = [0u8; 4096];
            if let Ok(n) = c.read(&mut buf) {
                r.push(&buf[..n]);
            }
            while let Ok(Some(msg)) = r.next_frame::<Message>() {
                match msg {
                    Message::Hello { .. } => {}
                    Message::Reply {
                        reply: Reply::Error(e),
                        ..
                    } => refused.push(e),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10)); // polling the clients' sockets
    }
    assert_eq!(refused.len(), sent - MAX_FORWARDED, "{refused:?}");
    assert!(refused[0].contains("at once"), "{refused:?}");
    // The link is still open: a session's request reaches the primary and is answered.
    let mut c = h.login();
    let out = run(&mut c, "worker info");
    assert_eq!(out[0], "  Current Workers: 3", "{out:?}");
}

/// A program's `reloadsup ctl` through the shell's own control socket: its request reaches
/// the primary under the shell's id and the progress and the reply come back under its own.
#[test]
fn the_programs_control_socket_relays_progress_and_replies() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let h = Harness::start_full("proxy-relay", Commands::default(), door(), listener, true);
    let (_session, door) = program_door(&h);
    let path = std::path::PathBuf::from(format!("fd:{}", std::os::fd::AsRawFd::as_raw_fd(&door)));
    let mut ctl = crate::client::ctl::Client::connect(&path, Duration::from_secs(30)).unwrap();
    let mut progress = Vec::new();
    let reply = ctl
        .request(Request::Reload, |p| progress.push(p.clone()))
        .unwrap();
    assert!(
        matches!(&reply, Reply::Reload(o) if o.generation == 2),
        "{reply:?}"
    );
    assert_eq!(
        progress,
        [Progress::GenerationStarted {
            generation: 2,
            workers: 4
        }]
    );
    let reply = ctl.request(Request::Status, |_| {}).unwrap();
    assert!(
        matches!(&reply, Reply::Status(s) if s.generation == 2),
        "{reply:?}"
    );
}

/// The third attacker's review: a console program sent, on its connection to the shell, a
/// byte carrying a TCP socket set to linger whose peer never reads. The shell read the byte
/// with a plain read, the kernel dropped the fd, and its last close (the linger) ran on the
/// shell's loop. Fds that come on a program's connection are closed off the loop.
#[test]
fn a_lingering_socket_sent_on_a_programs_connection_never_blocks_the_shell() {
    use std::io::Write as _;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let h = Harness::start_full("proxy-linger", Commands::default(), door(), listener, true);
    let (_session, door) = program_door(&h);
    let conn = sys::connect_through_door(
        std::os::fd::AsRawFd::as_raw_fd(&door),
        Duration::from_secs(30),
    )
    .unwrap();
    // A TCP connection whose peer never reads, its send buffer full, set to linger 30 s.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let _peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut lingering, _) = l.accept().unwrap();
    lingering.set_nonblocking(true).unwrap();
    let chunk = [0u8; 65536];
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(10) && lingering.write(&chunk).is_ok() {}
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 30,
    };
    nix::sys::socket::setsockopt(&lingering, nix::sys::socket::sockopt::Linger, &linger).unwrap();
    sys::send_with_fds(conn.as_fd(), b"x", &[lingering.as_fd()]).unwrap();
    // Ours is not the last while the copy is in flight, so the shell's close is (unless the
    // shell was quicker than this drop: then this thread lingers 30 s, and the test passes
    // slowly without having tried anything).
    drop(lingering);
    std::thread::sleep(Duration::from_millis(200));
    let asked = Instant::now();
    let mut c = h.login();
    let out = run(&mut c, "worker info");
    assert_eq!(out[0], "  Current Workers: 3", "{out:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "the shell answered after {:?}",
        asked.elapsed()
    );
}

/// A console command that shows its pid and control channel, then waits.
fn door() -> Vec<CustomCommand> {
    vec![CustomCommand {
        name: "door".into(),
        run: vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo \"$$ $RELOADSUP_CONTROL\"; exec sleep 60".into(),
        ],
        help: "a program's control channel".into(),
    }]
}

/// Runs [`door`] in a session and copies its control channel into this process, as a
/// program's `reloadsup ctl` would use it; the session (returned) keeps it open.
fn program_door(h: &Harness) -> (Conn, OwnedFd) {
    let mut c = h.login();
    c.send_line("door").unwrap();
    let Said::Line(line) = c.next() else {
        panic!("no line from the program")
    };
    let (pid, fd) = line.split_once(" fd:").expect("PID fd:N");
    let door = sys::copy_fd_of(pid.parse().unwrap(), fd.parse().unwrap()).unwrap();
    (c, door)
}
