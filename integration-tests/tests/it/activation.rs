//! Socket activation of reloadsup itself (issue 9, item 1), through the real
//! `systemd-socket-activate`: the activator binds, execs reloadsup in place (same pid) with
//! `LISTEN_FDS`/`LISTEN_PID`, and reloadsup serves that very socket through reloads and
//! upgrades; a bad inherited fd is refused with a clear message.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use reloadsup_integration_tests::{
    bins, get, have_command, output_with_timeout, proc, require, wait_for, wait_json_file,
    wait_until, Limits, Load, Run, Sandbox, Supervisor, DEADLINE,
};

use crate::standard;

const ACTIVATOR: &str = "systemd-socket-activate";

fn have_activator() -> bool {
    require(ACTIVATOR, have_command(ACTIVATOR, &["--version"]))
}

/// A port that was free a moment ago: the activator must be told a number.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// `socket:[INODE]` of the socket listening on 127.0.0.1:`port`, from /proc/net/tcp.
fn listening_inode(port: u16) -> Option<String> {
    let table = fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.get(1) != Some(&local.as_str()) || cols.get(3) != Some(&"0A") {
            return None;
        }
        Some(format!("socket:[{}]", cols.get(9)?))
    })
}

/// What fd 3 of `pid` is.
fn fd3(pid: u32) -> Option<String> {
    proc::fds_of(pid)
        .into_iter()
        .find(|(fd, _)| *fd == 3)
        .map(|(_, t)| t)
}

/// Starts `run` under `systemd-socket-activate -l 127.0.0.1:PORT EXTRA...`, which execs
/// reloadsup at the first connection; returns the supervisor, its address and the inode of
/// the socket the activator bound.
fn activated(sb: &Sandbox, run: Run, extra: &[&str]) -> (Supervisor, SocketAddr, String) {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut activator = vec![ACTIVATOR.to_string(), "-l".into(), addr.to_string()];
    activator.extend(extra.iter().map(|s| s.to_string()));
    let mut sup = run.activator(&activator).start(sb);
    let inode = wait_for(DEADLINE, "the activator's listening socket", || {
        listening_inode(port)
    });
    // The activator execs its program only once a client knocks.
    TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("first connection");
    sup.wait_for_log("adopted: fd 3", DEADLINE);
    (sup, addr, inode)
}

#[test]
fn socket_activated_reloads_lose_nothing_and_workers_get_the_activators_socket() {
    if !have_activator() {
        return;
    }
    let sb = Sandbox::new("socket_activated_reloads");
    let run = Run::hello(&["--delay", "200ms"]).args(standard(4));
    let (mut sup, addr, inode) = activated(&sb, run, &[]);
    sup.wait_ready(1, 4);
    // The activator exec'd reloadsup in place: its fd 3 is the activator's socket.
    assert_eq!(fd3(sup.pid()).as_deref(), Some(inode.as_str()));
    for w in sup.wait_workers(4) {
        assert_eq!(
            fd3(w).as_deref(),
            Some(inode.as_str()),
            "fd 3 of worker {w}"
        );
        let env = proc::environ_of(w);
        assert_eq!(env.get("LISTEN_FDS").map(String::as_str), Some("1"));
        assert_eq!(
            env.get("LISTEN_FDNAMES").map(String::as_str),
            Some("listen0")
        );
    }
    // Nothing else reloadsup runs sees the activator's variables.
    let keeper = proc::children_of(sup.pid())
        .into_iter()
        .find(|&p| proc::is_keeper(p))
        .expect("a keeper");
    let env = proc::environ_of(keeper);
    assert!(
        !env.contains_key("LISTEN_PID") && !env.contains_key("LISTEN_FDS"),
        "the keeper inherited the activator's variables: {env:?}"
    );
    let status = sup.status_json();
    assert_eq!(status["listeners"][0]["name"], "listen0");
    assert_eq!(status["listeners"][0]["address"], format!("tcp://{addr}"));

    let load = Load::start(addr, 8, Limits::default());
    load.wait_for_more_answers(20, DEADLINE);
    for generation in 2..=6 {
        sup.reload(generation)
            .unwrap_or_else(|r| panic!("reload to {generation} failed: {r}"));
        load.wait_for_generation(generation, DEADLINE);
    }
    load.wait_for_more_answers(20, DEADLINE);
    let report = load.stop();
    eprintln!("{}", report.summary());
    report.assert_no_failures();
    for w in sup.wait_workers(4) {
        assert_eq!(
            fd3(w).as_deref(),
            Some(inode.as_str()),
            "fd 3 of worker {w}"
        );
    }
}

#[test]
fn an_upgrade_keeps_the_adopted_socket_and_its_name() {
    if !have_activator() {
        return;
    }
    let sb = Sandbox::new("socket_activated_upgrade");
    let out = sb.join("probe.json");
    let run = Run::probe(&["--fd", "{fd:web}"]).args(standard(1));
    // The activator passes on only the variables named with -E.
    let probe_out = format!("PROBE_OUT={}", out.display());
    let (mut sup, _addr, inode) = activated(&sb, run, &["--fdname=web", "-E", &probe_out]);
    sup.wait_ready(1, 1);
    let report = wait_json_file(&out);
    let pid = report["pid"].as_u64().expect("pid");
    assert_eq!(report["env"]["LISTEN_PID"], pid.to_string());
    assert_eq!(report["env"]["LISTEN_FDS"], "1");
    assert_eq!(report["env"]["LISTEN_FDNAMES"], "web");
    assert_eq!(report["argv"][2], "3", "{{fd:web}} is fd 3: {report}");
    let fds = report["fds"].as_array().expect("fds");
    assert_eq!(fds.len(), 4, "0, 1, 2 and the listener: {report}");
    assert_eq!(fds[3]["target"], inode.as_str());
    assert_eq!(fds[3]["listening"], true);

    let up = sup.ctl(&["upgrade"]);
    assert!(
        up.status.success(),
        "ctl upgrade: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(
        proc::fds_of(sup.pid()).iter().any(|(_, t)| *t == inode),
        "the upgraded primary lost the adopted socket"
    );
    // The next generation gets the same socket under the same name.
    fs::remove_file(&out).expect("rm probe.json");
    sup.reload(2).expect("reload after the upgrade");
    let report = wait_json_file(&out);
    assert_eq!(report["env"]["LISTEN_FDNAMES"], "web");
    assert_eq!(report["fds"][3]["target"], inode.as_str());
    assert_eq!(sup.status_json()["listeners"][0]["name"], "web");
}

#[test]
fn a_listen_flag_takes_the_inherited_socket_of_its_address() {
    if !have_activator() {
        return;
    }
    let sb = Sandbox::new("socket_activated_listen_flag");
    let port = free_port();
    let run = Run::hello(&[])
        .args(standard(1))
        .args(["-l", &format!("api=tcp://127.0.0.1:{port}")]);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut sup = run
        .activator([ACTIVATOR, "-l", &addr.to_string()])
        .start(&sb);
    wait_until(DEADLINE, "the activator listening", || {
        listening_inode(port).is_some()
    });
    TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("first connection");
    // Binding the address again would fail (the activator's socket holds it).
    sup.wait_for_log("listener api adopted: fd 3", DEADLINE);
    sup.wait_ready(1, 1);
    get(addr, "/").expect("served on the adopted socket");
}

#[test]
fn a_regular_file_at_fd_3_is_refused_with_exit_2() {
    let sb = Sandbox::new("socket_activation_regular_file");
    let file = sb.write("not-a-socket", "hello\n");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"export LISTEN_PID=$$ LISTEN_FDS=1; exec "$@" 3<"$0""#)
        .arg(&file)
        .arg(bins::reloadsup())
        .arg("--state-dir")
        .arg(sb.join("state"))
        .args(["--", "/bin/true"]);
    let out = output_with_timeout(&mut cmd, DEADLINE);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("inherited fd 3 (listen0) is unusable: not a socket but a regular file"),
        "{stderr}"
    );
    assert!(!Path::new(&sb.join("state").join("control.sock")).exists());
}

#[test]
fn a_connection_instead_of_a_listener_is_refused() {
    if !have_activator() {
        return;
    }
    let sb = Sandbox::new("socket_activation_accepted");
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let log = sb.join("activator.stderr");
    // Stopped however the test ends: a failed assertion left it listening for good once.
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    // `--accept` passes each accepted connection, as a unit with Accept=yes would.
    let mut activator = Stop(
        Command::new(ACTIVATOR)
            .args(["--accept", "-l", &addr.to_string()])
            .arg(bins::reloadsup())
            .arg("--state-dir")
            .arg(sb.join("state"))
            .args(["--", "/bin/true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn the activator"),
    );
    // The activator's own socket: another test may hold the same port for a moment.
    let activator_pid = activator.0.id();
    wait_until(DEADLINE, "the activator listening", || {
        assert!(
            activator.0.try_wait().ok().flatten().is_none(),
            "the activator exited (port {port} taken?): {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        listening_inode(port).is_some_and(|inode| {
            proc::fds_of(activator_pid)
                .iter()
                .any(|(_, target)| *target == inode)
        })
    });
    let _conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    let line = wait_for(DEADLINE, "reloadsup's refusal", || {
        let text = fs::read_to_string(&log).ok()?;
        // Whole lines only: the file may be read while the refusal is half written (it was,
        // once: the line ended after "inherited fd 3 (").
        let whole = &text[..text.rfind('\n')? + 1];
        whole
            .lines()
            .find(|l| l.contains("inherited fd 3"))
            .map(str::to_owned)
    });
    assert!(
        line.contains("stream socket that is not listening"),
        "{line}"
    );
}
