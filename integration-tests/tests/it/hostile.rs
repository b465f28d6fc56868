//! A hostile peer's view of the newest mechanisms (DESIGN.md promise 7): each test plays the
//! attacker against the real binary and checks the primary holds.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use reloadsup_integration_tests::{proc, python3, require, wait_for, Run, Sandbox, DEADLINE};

use crate::start;

/// A notify-ready worker that, once the file `go` appears in the sandbox, sends 200 datagrams to
/// its NOTIFY_SOCKET each carrying 20 fds (more than the primary's control buffer holds), then
/// says `STATUS=flooded`.
const FD_FLOOD: &str = r#"
import array, os, socket, sys, time
go = os.path.join(sys.argv[1], "go")
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect(os.environ["NOTIFY_SOCKET"])
s.send(b"READY=1")
for _ in range(2000):
    if os.path.exists(go):
        break
    time.sleep(0.01)
null = os.open("/dev/null", os.O_RDONLY)
fds = array.array("i", [null] * 20)
for i in range(200):
    s.sendmsg([b"STATUS=flooding"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
s.send(b"STATUS=flooded")
while True:
    time.sleep(1)
"#;

fn python_or_skip() -> Option<std::path::PathBuf> {
    let python = python3();
    require("python3 on PATH", python.is_some()).then(|| python.expect("checked by require"))
}

fn worker_status(sup: &reloadsup_integration_tests::Supervisor) -> String {
    sup.status_json()["workers"][0]["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Regression: a datagram with more fds than the receive buffer held came back as an error
/// (MSG_CTRUNC) before the fds that did arrive were owned, so each leaked 8 fds into the
/// primary; 200 of them were 1600 fds, a flood of them the primary's whole fd table.
#[test]
fn notify_datagrams_with_many_fds_leak_none_into_the_primary() {
    let Some(python) = python_or_skip() else {
        return;
    };
    let sb = Sandbox::new("notify_datagrams_with_many_fds_leak_none_into_the_primary");
    let script = sb.write("flood.py", FD_FLOOD);
    let run = Run::new([
        python.as_os_str(),
        script.as_os_str(),
        sb.path().as_os_str(),
    ])
    .args(["--ready", "notify", "--ready-timeout", "15s"]);
    let (sup, _) = start(&sb, run, 1);
    let before = proc::fds_of(sup.pid()).len();
    std::fs::write(sb.join("go"), "").unwrap();
    wait_for(DEADLINE, "the worker's STATUS=flooded", || {
        (worker_status(&sup) == "flooded").then_some(())
    });
    let after = proc::fds_of(sup.pid()).len();
    assert!(
        after <= before + 2,
        "the primary held {before} fds before the flood and {after} after it"
    );
    assert!(
        sup.ctl(&["status"]).status.success(),
        "ctl still answers after the flood"
    );
}

/// The attacker's review of issue 18: a worker sent, with its READY=1, a TCP socket whose
/// peer never reads, set to linger for an hour, and closed its own copy: the primary's close
/// of the one it received was the last, and waited. The second review: the same socket queued
/// inside a Unix socket that is sent instead (its close closes what it holds). Such fds are
/// closed on the closing thread: the worker is ready and `ctl status` answers at once.
fn lingering_socket_sent_to_a_notify_socket(nested: bool) {
    let Some(python) = python_or_skip() else {
        return;
    };
    let sb = Sandbox::new(if nested {
        "a_lingering_socket_in_a_unix_socket_sent_to_a_notify_socket"
    } else {
        "a_lingering_socket_sent_to_a_notify_socket"
    });
    let script = sb.write(
        "linger.py",
        &format!(
            r#"import array, os, signal, socket, struct, time
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen()
c = socket.socket()
c.connect(l.getsockname())
srv, _ = l.accept()
srv.setblocking(False)
try:
    while True:
        srv.send(b"x" * 65536)
except BlockingIOError:
    pass
srv.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 3600))
sent = srv
if {nested}:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [srv.fileno()]))])
    a.close()
    srv.close()
    sent = b
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect(os.environ["NOTIFY_SOCKET"])
# The primary reads only once this copy is closed: its close is then the last.
os.kill(os.getppid(), signal.SIGSTOP)
s.sendmsg([b"READY=1"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [sent.fileno()]))])
sent.close()
os.kill(os.getppid(), signal.SIGCONT)
while True:
    time.sleep(1)
"#,
            nested = if nested {
                {
                    "True"
                }
            } else {
                {
                    "False"
                }
            }
        ),
    );
    let run = Run::new([python.as_os_str(), script.as_os_str()]).args([
        "--ready",
        "notify",
        "--ready-timeout",
        "30s",
    ]);
    let (sup, _) = start(&sb, run, 1);
    for _ in 0..3 {
        let asked = std::time::Instant::now();
        assert!(sup.ctl(&["status"]).status.success(), "ctl status failed");
        assert!(
            asked.elapsed() < std::time::Duration::from_secs(5),
            "ctl status took {:?}",
            asked.elapsed()
        );
    }
}

#[test]
fn a_lingering_socket_sent_to_a_notify_socket_never_blocks_the_primary() {
    lingering_socket_sent_to_a_notify_socket(false);
}

#[test]
fn a_lingering_socket_inside_a_unix_socket_sent_to_a_notify_socket_never_blocks_the_primary() {
    lingering_socket_sent_to_a_notify_socket(true);
}

/// A TCP connection to `to` from the local address `from` (any address of 127/8 is the
/// loopback's), so that one test can play two hosts.
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(to) = to else {
        panic!("an IPv4 address expected, not {to}")
    };
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: socket(2) takes plain integers; the fd it returns is owned by the TcpStream at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket nobody else owns.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let (src, dst) = (sockaddr(from, 0), sockaddr(*to.ip(), to.port()));
    // SAFETY: both addresses are valid sockaddr_in values of `len` bytes that outlive the calls.
    let bound = unsafe { libc::bind(fd, (&src as *const libc::sockaddr_in).cast(), len) };
    // SAFETY: as above.
    if bound != 0
        || unsafe { libc::connect(fd, (&dst as *const libc::sockaddr_in).cast(), len) } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

/// A supervisor of one `hello` with `--metrics` on a free port, and that port's address.
fn with_metrics(sb: &Sandbox) -> (reloadsup_integration_tests::Supervisor, SocketAddr) {
    let run = Run::hello(&[])
        .args(crate::standard(1))
        .args(["--metrics", "127.0.0.1:0"]);
    let (mut sup, _) = start(sb, run, 1);
    let line = sup.wait_for_log("metrics on http://", DEADLINE);
    let rest = &line[line.find("http://").unwrap() + "http://".len()..];
    let addr: SocketAddr = rest.split('/').next().unwrap().parse().expect(&line);
    (sup, addr)
}

/// The status line of `GET /metrics` over `stream`.
fn metrics_status(mut stream: TcpStream) -> String {
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.lines().next().unwrap_or_default().to_string()
}

/// Regression: the metrics worker's 16 slots were first come, first served, so one host that
/// opened 16 connections and sent nothing (again every 5 s) made every scrape of every other
/// host a 503. One source now holds at most 4 of them.
#[test]
fn a_silent_host_cannot_refuse_every_other_scraper() {
    let sb = Sandbox::new("a_silent_host_cannot_refuse_every_other_scraper");
    let (_sup, addr) = with_metrics(&sb);
    let attacker = Ipv4Addr::new(127, 0, 0, 2);
    let held: Vec<TcpStream> = (0..16)
        .map(|_| connect_from(attacker, addr).expect("a connection from 127.0.0.2"))
        .collect();
    // The attacker's slots are taken once its own next scrape is refused.
    wait_for(
        DEADLINE,
        "a scrape of the silent host to be refused",
        || {
            let status = metrics_status(connect_from(attacker, addr).ok()?);
            status.starts_with("HTTP/1.1 503").then_some(())
        },
    );
    let other = connect_from(Ipv4Addr::LOCALHOST, addr).expect("a connection from 127.0.0.1");
    assert_eq!(metrics_status(other), "HTTP/1.1 200 OK");
    drop(held);
}

/// Two notify workers: worker 1 never says it is ready; worker 0 does, then finds worker 1's
/// NOTIFY_SOCKET in its environment (same uid) and has a child that left its process group
/// (`setsid`) send `READY=1` there, staying alive while the primary reads it.
const SPOOF: &str = r#"
import os, socket, sys, time
state = sys.argv[1]
def send(path, msg):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.connect(path)
    s.send(msg)
    s.close()
if os.environ["RELOADSUP_WORKER"] == "1":
    while True:
        time.sleep(1)
send(os.environ["NOTIFY_SOCKET"], b"READY=1")
victim = None
for _ in range(1500):
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = open("/proc/%s/environ" % p, "rb").read().split(b"\0")
        except OSError:
            continue
        d = dict(e.split(b"=", 1) for e in env if b"=" in e)
        path = d.get(b"NOTIFY_SOCKET", b"").decode()
        if d.get(b"RELOADSUP_WORKER") == b"1" and path.startswith(state):
            victim = path
    if victim:
        break
    time.sleep(0.01)
if os.fork() == 0:
    os.setsid()
    send(victim, b"READY=1\nSTATUS=spoofed")
    time.sleep(5)
    os._exit(0)
while True:
    time.sleep(1)
"#;

/// Regression: the notify check refused a live sender only when it was another worker or in
/// another worker's process group, so a worker's child that called `setsid()` could make
/// another worker look ready (promise 7). Its cgroup still names the worker that started it.
#[test]
fn a_worker_cannot_make_another_look_ready_from_a_setsid_child() {
    let Some(python) = python_or_skip() else {
        return;
    };
    let sb = Sandbox::new("a_worker_cannot_make_another_look_ready_from_a_setsid_child");
    let script = sb.write("spoof.py", SPOOF);
    let state = sb.join("state");
    let run = Run::new([python.as_os_str(), script.as_os_str(), state.as_os_str()]).args([
        "-n",
        "2",
        "--ready",
        "notify",
        "--ready-timeout",
        "60s",
    ]);
    let mut sup = run.start(&sb);
    let guard = sup.wait_for_log("worker children: guarded", DEADLINE);
    if !require("per-worker cgroups", guard.contains("a cgroup per worker")) {
        return;
    }
    // Either the primary refuses the spoofed datagram, or worker 1 shows the spoofed status.
    let spoofed = wait_for(DEADLINE, "the spoofed READY=1 to be read", || {
        if sup.log().contains("is not one of that worker's processes") {
            return Some(false);
        }
        let status = sup.status_json();
        let workers = status["workers"].as_array()?.clone();
        workers
            .iter()
            .any(|w| w["status"] == "spoofed")
            .then_some(true)
    });
    let status = sup.status_json();
    assert!(!spoofed, "worker 1 took the spoofed READY=1: {status}");
    let states: Vec<&str> = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["state"].as_str())
        .collect();
    assert!(
        states.contains(&"starting"),
        "worker 1 is still starting: {status}"
    );
}

/// The metrics worker of `sup`, once it runs.
fn metrics_worker(sup: &reloadsup_integration_tests::Supervisor, not: Option<u32>) -> u32 {
    wait_for(DEADLINE, "a metrics worker", || {
        proc::children_of(sup.pid())
            .into_iter()
            .find(|&p| proc::is_metrics(p) && Some(p) != not && !proc::is_zombie(p))
    })
}

/// A copy of fd `fd` of process `pid` (`pidfd_getfd`, Linux 5.6; needs ptrace rights on it).
fn steal_fd(pid: u32, fd: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if pidfd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pidfd is a fresh fd nobody else owns.
    let pidfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(pidfd as i32) };
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_getfd takes a pidfd, an fd number and flags, and returns a new fd or -1.
    let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if got < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above, a fresh fd of ours.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(got as i32) })
}

/// Regression: a metrics worker that flooded its link with asks (and read the answers) was
/// answered 64 at a time, every loop turn, for as long as it went on. Played here by the test
/// itself on a copy of the stopped worker's link (fd 3): the worker is replaced.
#[test]
fn a_metrics_worker_that_floods_asks_is_replaced() {
    use std::os::fd::AsRawFd;
    let sb = Sandbox::new("a_metrics_worker_that_floods_asks_is_replaced");
    let run = Run::hello(&[])
        .args(crate::standard(1))
        .args(["--metrics", "127.0.0.1:0"]);
    let (mut sup, _) = start(&sb, run, 1);
    sup.wait_for_log("metrics on http://", DEADLINE);
    let first = metrics_worker(&sup, None);
    let link = match steal_fd(first, 3) {
        Ok(fd) => fd,
        Err(e) => {
            require(&format!("pidfd_getfd on the metrics worker ({e})"), false);
            return;
        }
    };
    // The worker itself must not read the answers meant for the flood.
    proc::kill(first, libc::SIGSTOP).unwrap();
    let ask = reloadsup_protocol::encode(&reloadsup_protocol::MetricsMessage::Ask).unwrap();
    let fd = link.as_raw_fd();
    let mut buf = [0u8; 4096];
    let mut answered = 0;
    // Rounds of 96 asks queued while the primary is stopped (so that it finds them all at
    // once, more than a turn's batch), each round's answers read before the next.
    let replaced = (0..20).any(|_| {
        proc::kill(sup.pid(), libc::SIGSTOP).unwrap();
        let mut sent = 0;
        for _ in 0..96 {
            // SAFETY: a valid fd and buffer; MSG_DONTWAIT never waits.
            let n = unsafe {
                libc::send(
                    fd,
                    ask.as_ptr().cast(),
                    ask.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n > 0 {
                sent += 1;
            }
        }
        proc::kill(sup.pid(), libc::SIGCONT).unwrap();
        let until = std::time::Instant::now() + DEADLINE;
        let mut got = 0;
        while got < sent && std::time::Instant::now() < until {
            // SAFETY: as above.
            let n =
                unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            match n {
                0 => return true,
                n if n > 0 => got += 1,
                _ => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        answered += got;
        false
    });
    assert!(
        replaced,
        "the primary answered {answered} asks in floods and never replaced the worker"
    );
    let second = metrics_worker(&sup, Some(first));
    assert_ne!(first, second);
    assert!(
        sup.log().contains("asks at once"),
        "the log says why:\n{}",
        sup.log()
    );
    assert!(sup.ctl(&["status"]).status.success());
}

/// Issue 18, item 7: four hosts holding four silent connections each took all 16 slots of the
/// metrics worker, and every other scrape was a 503 until they let go. A scraper of a fifth
/// host now ends the slowest of them and is served within a second or so.
#[test]
fn four_silent_hosts_cannot_refuse_a_fifth_scraper() {
    let sb = Sandbox::new("four_silent_hosts");
    let (_sup, addr) = with_metrics(&sb);
    let mut held = Vec::new();
    for host in 2..6u8 {
        for _ in 0..4 {
            let from = Ipv4Addr::new(127, 0, 0, host);
            held.push(connect_from(from, addr).expect("a silent connection"));
        }
    }
    // Every slot is held once a 17th connection, of one of them, is refused.
    wait_for(DEADLINE, "every slot held", || {
        let status = metrics_status(connect_from(Ipv4Addr::new(127, 0, 0, 2), addr).ok()?);
        status.starts_with("HTTP/1.1 503").then_some(())
    });
    // Past the eviction delay, the fifth host is served, not refused.
    std::thread::sleep(Duration::from_millis(700));
    let t = std::time::Instant::now();
    let status = metrics_status(connect_from(Ipv4Addr::new(127, 0, 0, 9), addr).unwrap());
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "served after {:?}",
        t.elapsed()
    );
    drop(held);
}
