//! The service manager above reloadsup (issue 9, items 2 and 4): reloadsup's own
//! `NOTIFY_SOCKET` points at a datagram socket the test reads, as systemd's would; and
//! reloadsup as a subreaper or as PID 1 of a PID namespace reaps what its workers orphan.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::process::Command;
use std::time::{Duration, Instant};

use reloadsup_integration_tests::{
    bins, proc, require, wait_for, wait_until, Run, Sandbox, Supervisor, DEADLINE,
};

use crate::{running_as_root, standard, tool};

/// The test's end of the manager's socket.
struct ManagerSocket {
    sock: UnixDatagram,
    seen: Vec<(Instant, String)>,
}

impl ManagerSocket {
    fn at(path: &std::path::Path) -> ManagerSocket {
        ManagerSocket::from(UnixDatagram::bind(path).expect("bind the manager socket"))
    }

    fn from(sock: UnixDatagram) -> ManagerSocket {
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        ManagerSocket {
            sock,
            seen: Vec::new(),
        }
    }

    /// Reads whatever arrives for `d`.
    fn collect(&mut self, d: Duration) {
        let end = Instant::now() + d;
        let mut buf = [0u8; 4096];
        while Instant::now() < end {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push((Instant::now(), text));
            }
        }
    }

    /// Reads until a message contains `needle` (the index of that message).
    fn wait(&mut self, needle: &str, from: usize) -> usize {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(i) = self.seen[from.min(self.seen.len())..]
                .iter()
                .position(|(_, m)| m.lines().any(|l| l == needle))
            {
                return from + i;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} from reloadsup; got {:?}",
                self.messages()
            );
            self.collect(Duration::from_millis(50));
        }
    }

    fn messages(&self) -> Vec<&str> {
        self.seen.iter().map(|(_, m)| m.as_str()).collect()
    }

    fn count(&self, line: &str, from: usize) -> usize {
        self.seen[from..]
            .iter()
            .filter(|(_, m)| m.lines().any(|l| l == line))
            .count()
    }
}

fn monotonic_usec() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1000
}

#[test]
fn manager_hears_ready_reloading_and_stopping_and_nothing_at_rest() {
    let sb = Sandbox::new("manager-notify");
    let path = sb.join("manager.sock");
    let mut m = ManagerSocket::at(&path);
    let mut sup = Run::hello(&[])
        .args(standard(2))
        .env("NOTIFY_SOCKET", &path)
        .start(&sb);
    sup.wait_ready(1, 2);
    let ready = m.wait("READY=1", 0);
    assert!(
        m.seen[ready].1.contains(&format!("MAINPID={}", sup.pid())),
        "READY=1 names the main pid: {:?}",
        m.seen[ready].1
    );
    // Workers get reloadsup's own per-worker socket, never the manager's.
    for w in sup.wait_workers(2) {
        let env = proc::environ_of(w);
        assert_ne!(
            env.get("NOTIFY_SOCKET").map(String::as_str),
            path.to_str(),
            "worker {w} inherited the manager's NOTIFY_SOCKET"
        );
    }
    for generation in 2..=3 {
        let before = monotonic_usec();
        let from = m.seen.len();
        sup.reload(generation).expect("reload");
        let reloading = m.wait("RELOADING=1", from);
        let msg = m.seen[reloading].1.clone();
        let usec: u64 = msg
            .lines()
            .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
            .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {msg:?}"))
            .parse()
            .expect("MONOTONIC_USEC is a number");
        assert!(
            usec >= before && usec <= monotonic_usec(),
            "MONOTONIC_USEC={usec} is not the time of the reload"
        );
        let done = m.wait("READY=1", reloading + 1);
        assert!(
            m.seen[done]
                .1
                .contains(&format!("generation {generation}: 2/2 workers ready")),
            "READY=1 of the reload carries the status line: {:?}",
            m.seen[done].1
        );
    }
    // At rest: no datagram, no wake-up, no watchdog.
    m.collect(Duration::from_millis(300));
    let from = m.seen.len();
    let switches = proc::context_switches(sup.pid());
    m.collect(Duration::from_secs(1));
    assert_eq!(
        m.messages()[from..].to_vec(),
        Vec::<&str>::new(),
        "messages at rest"
    );
    assert_eq!(
        proc::context_switches(sup.pid()),
        switches,
        "wake-ups at rest"
    );
    assert_eq!(m.count("WATCHDOG=1", 0), 0, "a watchdog nobody asked for");
    let from = m.seen.len();
    sup.signal(libc::SIGTERM);
    m.wait("STOPPING=1", from);
    assert!(sup.wait_exit(DEADLINE).success());
}

#[test]
fn manager_watchdog_runs_at_half_the_period_and_survives_an_upgrade() {
    let sb = Sandbox::new("manager-watchdog");
    let name = format!("reloadsup-it-manager-{}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
    let mut m = ManagerSocket::from(UnixDatagram::bind_addr(&addr).expect("bind abstract"));
    let mut sup = Run::hello(&[])
        .args(standard(1))
        .env("NOTIFY_SOCKET", format!("@{name}"))
        .env("WATCHDOG_USEC", "200000")
        .start(&sb);
    sup.wait_ready(1, 1);
    m.wait("READY=1", 0);
    let from = m.seen.len();
    m.collect(Duration::from_secs(2));
    // 20 expected at 100 ms; loosely.
    let n = m.count("WATCHDOG=1", from);
    assert!((12..=30).contains(&n), "{n} WATCHDOG=1 in 2 s");
    for w in sup.wait_workers(1) {
        assert!(!proc::environ_of(w).contains_key("WATCHDOG_USEC"));
    }
    // Upgrade in place: same pid, nothing re-sent, the watchdog goes on.
    let pid = sup.pid();
    let from = m.seen.len();
    let out = sup.ctl(&["upgrade"]);
    assert!(
        out.status.success(),
        "upgrade: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    m.collect(Duration::from_secs(1));
    assert_eq!(
        m.count("READY=1", from),
        0,
        "READY=1 re-sent after the upgrade"
    );
    let n = m.count("WATCHDOG=1", from);
    assert!(
        (5..=16).contains(&n),
        "{n} WATCHDOG=1 in the second around the upgrade"
    );
    assert_eq!(sup.status_json()["pid"], pid);
    assert_eq!(sup.status_json()["upgrades"], 1);
    let from = m.seen.len();
    sup.signal(libc::SIGTERM);
    m.wait("STOPPING=1", from);
    assert!(sup.wait_exit(DEADLINE).success());
}

/// A worker that double-forks a child which outlives the middle process by a moment: the
/// grandchild's pid goes to `pidfile-SLOT`, then the worker execs `hello`.
fn double_forking(sb: &Sandbox, pidfile: &str) -> Run {
    let script = sb.write_script(
        "daemonise",
        &format!(
            "#!/bin/sh\nf={pidfile}-$RELOADSUP_WORKER\n(sleep 1 & echo $! > $f.tmp; mv $f.tmp $f)\nexec {} \"$@\"\n",
            bins::example("hello").display()
        ),
    );
    Run::new([script])
}

fn no_zombie_below(pid: u32) {
    wait_until(DEADLINE, "no zombie left", || {
        proc::descendants_of(pid)
            .into_iter()
            .all(|p| !proc::is_zombie(p))
    });
}

#[test]
fn subreaper_reaps_what_workers_orphan() {
    let sb = Sandbox::new("manager-subreaper");
    let pidfile = sb.join("grandchild");
    let first = sb.join("grandchild-0");
    let mut sup = double_forking(&sb, &pidfile.display().to_string())
        .args(standard(2))
        .arg("--subreaper")
        .start(&sb);
    sup.wait_ready(1, 2);
    let grandchild: u32 = wait_for(DEADLINE, "the grandchild's pid", || {
        std::fs::read_to_string(&first).ok()?.trim().parse().ok()
    });
    // Orphaned when its parent subshell exited: re-parented to reloadsup, not to init.
    if proc::exists(grandchild) {
        assert_eq!(proc::ppid_of(grandchild), Some(sup.pid()));
    }
    wait_until(DEADLINE, "the grandchild reaped", || {
        !proc::exists(grandchild)
    });
    no_zombie_below(sup.pid());
    let status = sup.status_json();
    assert_eq!(status["current_workers"], 2, "{status}");
    assert_eq!(
        status["workers"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );
    let log = sup.log();
    assert!(
        !log.contains(&format!("pid {grandchild}")),
        "the orphan was taken for a worker: {log}"
    );
    sup.signal(libc::SIGTERM);
    assert!(sup.wait_exit(DEADLINE).success());
}

#[test]
fn as_pid_1_of_a_pid_namespace_it_reaps_orphans_and_stops_on_sigterm() {
    let test = "as_pid_1_of_a_pid_namespace";
    if !running_as_root(test) {
        return;
    }
    let Some(unshare) = tool(test, "unshare") else {
        return;
    };
    let usable = Command::new(&unshare)
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !require(
        "unshare --pid --fork --mount-proc (a PID namespace)",
        usable,
    ) {
        return;
    }
    let sb = Sandbox::new("manager-pid1");
    let pidfile = sb.join("grandchild");
    let mut sup: Supervisor = double_forking(&sb, &pidfile.display().to_string())
        .args(standard(2))
        .args(["-l", "tcp://127.0.0.1:0"])
        .activator([
            unshare.to_str().expect("path"),
            "--pid",
            "--fork",
            "--mount-proc",
        ])
        .start(&sb);
    sup.wait_ready(1, 2);
    assert!(sup.log().contains("(pid 1)"), "not PID 1: {}", sup.log());
    // The grandchild's pid is one of the namespace: wait for its sleep to end instead.
    wait_for(DEADLINE, "the grandchild's pid", || {
        std::fs::read_to_string(sb.join("grandchild-0"))
            .ok()?
            .trim()
            .parse::<u32>()
            .ok()
    });
    let pid1 = wait_for(DEADLINE, "reloadsup as PID 1", || {
        proc::children_of(sup.pid()).into_iter().next()
    });
    let sleeps = || {
        proc::descendants_of(pid1)
            .into_iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "sleep")
            })
            .count()
    };
    wait_until(DEADLINE, "the orphaned sleeps done and reaped", || {
        sleeps() == 0
    });
    no_zombie_below(pid1);
    let status = sup.status_json();
    assert_eq!(status["current_workers"], 2, "{status}");
    assert_eq!(status["pid"], 1, "{status}");
    proc::kill(pid1, libc::SIGTERM).expect("SIGTERM to PID 1");
    let exit = sup.wait_exit(DEADLINE);
    assert!(exit.success(), "{exit:?}: {}", sup.log());
    assert!(!proc::exists(pid1));
}

#[test]
fn ctl_status_ready_is_a_readiness_probe() {
    let sb = Sandbox::new("manager-ready-probe");
    let mut sup = Run::hello(&["--no-ready"])
        .args(["-n", "2", "--ready", "notify", "--ready-timeout", "60s"])
        .start(&sb);
    sup.wait_workers(2);
    let out = sup.ctl(&["status", "--ready"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("not ready"));
    sup.signal(libc::SIGTERM);
    assert!(sup.wait_exit(DEADLINE).success());

    let sb = Sandbox::new("manager-ready-probe-2");
    let mut sup = Run::hello(&[]).args(standard(2)).start(&sb);
    sup.wait_ready(1, 2);
    wait_until(DEADLINE, "ctl status --ready to pass", || {
        sup.ctl(&["status", "--ready"]).status.success()
    });
    let out = sup.ctl(&["status", "--ready"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ready: generation 1: 2/2 workers ready"
    );
    // Scaled to 0: nothing serves.
    assert!(sup.ctl(&["scale", "0"]).status.success());
    wait_until(DEADLINE, "ctl status --ready to fail at 0 workers", || {
        sup.ctl(&["status", "--ready"]).status.code() == Some(1)
    });
    sup.signal(libc::SIGTERM);
    assert!(sup.wait_exit(DEADLINE).success());
}

/// `examples/FILE` of the repository.
fn example_file(file: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `key=value` entries of a unit file, continuation lines joined.
fn unit_keys(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut line = String::new();
    for raw in text.lines() {
        let raw = raw.trim();
        if raw.starts_with('#') || raw.starts_with('[') || raw.is_empty() {
            continue;
        }
        line.push_str(raw.trim_end_matches('\\'));
        if raw.ends_with('\\') {
            line.push(' ');
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        line.clear();
    }
    out
}

fn seconds(v: &str) -> u64 {
    v.trim_end_matches('s').parse().expect("seconds")
}

/// The value after `flag` in `words`.
fn flag<'a>(words: &[&'a str], flag: &str) -> Option<&'a str> {
    words
        .iter()
        .position(|w| *w == flag)
        .and_then(|i| words.get(i + 1).copied())
}

#[test]
fn systemd_units_have_what_the_readme_promises() {
    for (file, socket) in [
        ("web.service", true),
        ("web-nosocket.service", false),
        ("web-notify.service", true),
    ] {
        let text = example_file(&format!("systemd/{file}"));
        // Issue 22, defect 13: a plain `systemctl kill -s USR2` signals every process of the
        // unit, and killed the keeper and every worker.
        for line in text.lines().filter(|l| l.contains("systemctl kill")) {
            assert!(line.contains("--kill-whom=main"), "{file}: {line}");
        }
        let keys = unit_keys(&example_file(&format!("systemd/{file}")));
        let get = |k: &str| {
            keys.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("{file}: no {k}="))
        };
        let exec: Vec<&str> = get("ExecStart").split_whitespace().collect();
        if file == "web-notify.service" {
            // For systemd before 253: the reload through ctl, which fails on a rollback.
            assert_eq!(get("Type"), "notify", "{file}");
            let reload: Vec<&str> = get("ExecReload").split_whitespace().collect();
            assert!(reload[0].ends_with("/reloadsup"), "{file}: {reload:?}");
            assert_eq!(reload[1..2], ["ctl"], "{file}: {reload:?}");
            assert_eq!(reload.last(), Some(&"reload"), "{file}: {reload:?}");
            assert_eq!(flag(&reload, "--name"), flag(&exec, "--name"), "{file}");
        } else {
            assert_eq!(get("Type"), "notify-reload", "{file}");
            assert_eq!(get("ReloadSignal"), "SIGHUP", "{file}");
        }
        assert_eq!(get("KillMode"), "mixed", "{file}");
        assert_eq!(get("NotifyAccess"), "main", "{file}");
        assert!(exec[0].ends_with("/reloadsup"), "{file}: {exec:?}");
        assert_eq!(flag(&exec, "--ready"), Some("notify"), "{file}");
        let graceful = seconds(flag(&exec, "--graceful-timeout").expect("--graceful-timeout"));
        let ready = seconds(flag(&exec, "--ready-timeout").expect("--ready-timeout"));
        assert!(seconds(get("TimeoutStopSec")) > graceful, "{file}");
        assert!(seconds(get("TimeoutStartSec")) > ready, "{file}");
        let listen = flag(&exec, "--listen").expect("--listen");
        if socket {
            assert_eq!(get("Requires"), "web.socket");
            let sock = unit_keys(&example_file("systemd/web.socket"));
            let name = sock
                .iter()
                .find(|(k, _)| k == "FileDescriptorName")
                .map(|(_, v)| v.clone())
                .expect("FileDescriptorName");
            assert!(sock.iter().any(|(k, _)| k == "ListenStream"));
            // The --listen name takes the inherited socket.
            assert!(
                listen.starts_with(&format!("{name}=")),
                "{listen} vs {name}"
            );
        } else {
            assert!(!keys
                .iter()
                .any(|(k, v)| k == "Requires" && v.contains("socket")));
        }
    }
}

#[test]
fn container_example_probes_readiness_and_outlasts_the_drain() {
    let docker = example_file("container/Dockerfile");
    assert!(docker.matches("\nFROM ").count() + usize::from(docker.starts_with("FROM ")) >= 2);
    assert!(docker.contains("ENTRYPOINT [\"/usr/local/bin/reloadsup\""));
    let graceful = docker
        .split("\"--graceful-timeout\", \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .map(seconds)
        .expect("--graceful-timeout in the entrypoint");
    let k8s = example_file("container/deployment.yaml");
    let grace: u64 = k8s
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds:"))
        .expect("terminationGracePeriodSeconds")
        .trim()
        .parse()
        .expect("a number");
    assert!(grace > graceful, "{grace} <= {graceful}");
    assert!(k8s.contains(r#"command: ["reloadsup", "ctl", "--name", "web", "status", "--ready"]"#));
}

#[test]
fn manager_hears_ready_after_a_rolled_back_reload_with_the_outcome() {
    let sb = Sandbox::new("manager-rollback");
    let path = sb.join("manager.sock");
    let mut m = ManagerSocket::at(&path);
    let flag = sb.join("broken");
    let script = sb.write_script(
        "app",
        &format!(
            "#!/bin/sh\nif [ -e {} ]; then exit 1; fi\nexec {}\n",
            flag.display(),
            bins::example("hello").display()
        ),
    );
    let mut sup = Run::new([script])
        .args(standard(1))
        .env("NOTIFY_SOCKET", &path)
        .start(&sb);
    sup.wait_ready(1, 1);
    m.wait("READY=1", 0);
    std::fs::write(&flag, "").expect("break the app");
    let from = m.seen.len();
    assert!(
        sup.reload(2).is_err(),
        "the broken release was not rolled back"
    );
    let reloading = m.wait("RELOADING=1", from);
    let done = m.wait("READY=1", reloading + 1);
    assert!(
        m.seen[done]
            .1
            .contains("generation 1: 1/1 workers ready; last reload: generation 2 rolled back"),
        "{:?}",
        m.seen[done].1
    );
    sup.signal(libc::SIGTERM);
    assert!(sup.wait_exit(DEADLINE).success());
}

#[test]
fn a_manager_that_never_reads_never_blocks_the_loop() {
    let sb = Sandbox::new("manager-full");
    let path = sb.join("manager.sock");
    // Bound, never read: its queue fills within a few hundred watchdog pings at 1 ms.
    let _unread = UnixDatagram::bind(&path).expect("bind the manager socket");
    let mut sup = Run::hello(&[])
        .args(standard(1))
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "2000")
        .start(&sb);
    sup.wait_ready(1, 1);
    std::thread::sleep(Duration::from_millis(1500));
    for generation in 2..=3 {
        let started = Instant::now();
        let status = sup.status_json();
        assert_eq!(status["generation"], generation - 1, "{status}");
        assert!(started.elapsed() < Duration::from_secs(10));
        sup.reload(generation)
            .expect("reload with a full manager socket");
    }
    sup.signal(libc::SIGTERM);
    assert!(sup.wait_exit(DEADLINE).success());
}
