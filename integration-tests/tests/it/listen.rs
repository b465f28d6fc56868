//! Listen addresses as operators write them (issue 9, item 5): every form binds what it says
//! and reaches the worker at fd 3.. under the names given, a UDP listener serves datagrams
//! through reloads with none lost, and a bad form exits 2 naming the flag.

use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use reloadsup_integration_tests::{bins, wait_json_file, Run, Sandbox, Supervisor, DEADLINE};

use crate::standard;

/// What listener `name` was bound to, from the log line `listener NAME bound to ADDRESS`.
fn bound(sup: &mut Supervisor, name: &str) -> String {
    let needle = format!("listener {name} bound to ");
    let line = sup.wait_for_log(&needle, DEADLINE);
    let rest = &line[line.find(&needle).map_or(0, |i| i + needle.len())..];
    rest.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn port_of(address: &str) -> u16 {
    address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {address}"))
}

#[test]
fn every_address_form_binds_what_it_says_and_reaches_the_worker() {
    let sb = Sandbox::new("every_address_form");
    let out = sb.join("probe.json");
    let sock = sb.join("web.sock");
    let abstract_name = format!("reloadsup-it-{}", std::process::id());
    let listeners = [
        "all=0".to_string(),
        "v4=tcp://127.0.0.1:0?backlog=7&reuseport&defer-accept=1s".to_string(),
        "dns=udp://127.0.0.1:0".to_string(),
        format!("abs=unix:@{abstract_name}"),
        format!("path=unix:{}?mode=600", sock.display()),
        "named=localhost:0".to_string(),
    ];
    let mut run = Run::probe(&[]).args(standard(1)).env("PROBE_OUT", &out);
    for l in &listeners {
        run = run.arg("-l").arg(l);
    }
    let mut sup = run.start(&sb);
    sup.wait_ready(1, 1);

    let all = bound(&mut sup, "all");
    assert!(
        all.starts_with("tcp://[::]:") || all.starts_with("tcp://0.0.0.0:"),
        "every interface: {all}"
    );
    // Dual-stack or IPv4: an IPv4 client reaches it either way.
    std::net::TcpStream::connect(("127.0.0.1", port_of(&all))).expect("connect to `all`");
    assert!(bound(&mut sup, "v4").starts_with("tcp://127.0.0.1:"));
    let dns = bound(&mut sup, "dns");
    assert!(dns.starts_with("udp://127.0.0.1:"), "{dns}");
    assert_eq!(bound(&mut sup, "abs"), format!("unix:@{abstract_name}"));
    assert_eq!(bound(&mut sup, "path"), format!("unix:{}", sock.display()));
    let mode = std::fs::metadata(&sock)
        .expect("socket file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode= is applied");
    let named = bound(&mut sup, "named");
    assert!(
        named.starts_with("tcp://127.0.0.1:") || named.starts_with("tcp://[::1]:"),
        "localhost resolved: {named}"
    );

    // The worker sees exactly stdin, stdout, stderr and the six listeners, named in order.
    let probe = wait_json_file(&out);
    let env = &probe["env"];
    assert_eq!(env["LISTEN_FDS"], "6", "{env}");
    assert_eq!(env["LISTEN_FDNAMES"], "all:v4:dns:abs:path:named", "{env}");
    let fds: Vec<i64> = probe["fds"]
        .as_array()
        .expect("fds")
        .iter()
        .map(|f| f["fd"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(fds, (0..9).collect::<Vec<_>>(), "{}", probe["fds"]);
    let listening: Vec<bool> = probe["fds"].as_array().unwrap()[3..]
        .iter()
        .map(|f| f["listening"].as_bool().unwrap_or(false))
        .collect();
    // Every stream socket listens; the UDP one (fd 5) is bound, not listening.
    assert_eq!(
        listening,
        [true, true, false, true, true, true],
        "{}",
        probe["fds"]
    );
    let fd5 = probe["fds"][5]["local_addr"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(format!("udp://{fd5}"), dns);

    sup.signal(libc::SIGTERM);
    assert!(sup.wait_exit(DEADLINE).success());
    assert!(!sock.exists(), "the socket file is removed at exit");
}

#[test]
fn a_udp_listener_serves_through_reloads_with_no_datagram_lost() {
    let sb = Sandbox::new("udp_through_reloads");
    let mut sup = Run::new([bins::example("udp_echo")])
        .args(standard(2))
        .args(["-l", "udp://127.0.0.1:0"])
        .start(&sb);
    sup.wait_ready(1, 2);
    let addr = bound(&mut sup, "listen0");
    let port = port_of(&addr);

    let client = UdpSocket::bind("127.0.0.1:0").expect("client socket");
    client.connect(("127.0.0.1", port)).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut lost = Vec::new();
    let mut generations = std::collections::BTreeSet::new();
    let mut sent = 0u32;
    let mut exchange = |sent: &mut u32| {
        *sent += 1;
        let msg = format!("datagram {sent}");
        client.send(msg.as_bytes()).expect("send");
        let mut buf = [0u8; 512];
        // Replies come back in order: the client waits for each before sending the next.
        match client.recv(&mut buf) {
            Ok(n) => {
                let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
                assert!(reply.ends_with(&msg), "reply {reply:?} to {msg:?}");
                let generation = reply
                    .split_whitespace()
                    .next()
                    .and_then(|g| g.strip_prefix("generation="))
                    .unwrap_or_default()
                    .to_string();
                generations.insert(generation);
            }
            Err(e) => lost.push(format!("{msg}: {e}")),
        }
    };
    for generation in 2..=4 {
        // Datagrams go on while the reload starts the new generation and stops the old one.
        sup.signal(libc::SIGHUP);
        let serving = format!("generation {generation} is serving");
        let until = Instant::now() + Duration::from_secs(30);
        while sup.count_in_log(&serving) == 0 && Instant::now() < until && sent < 50_000 {
            exchange(&mut sent);
        }
        assert!(sup.count_in_log(&serving) > 0, "{serving}: {}", sup.log());
        for _ in 0..200 {
            exchange(&mut sent);
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {sent} datagrams lost: {lost:?}",
        lost.len()
    );
    assert!(
        generations.contains("4"),
        "generation 4 answered: {generations:?}"
    );
    assert!(generations.len() >= 2, "{generations:?}");
    eprintln!("udp: {sent} datagrams through 3 reloads, none lost");
    sup.signal(libc::SIGTERM);
    assert!(sup.wait_exit(DEADLINE).success());
}

#[test]
fn a_bad_address_form_exits_2_naming_the_flag() {
    let sb = Sandbox::new("bad_address_form");
    let probe = bins::example("probe");
    let cases = [
        ("tcp://127.0.0.1:0?nodelay", "is unknown"),
        ("udp://127.0.0.1:0?backlog=3", "is for stream sockets"),
        ("unix:@x?mode=600", "unix socket paths only"),
        ("host_name:80", "is not an internet address"),
        ("70000", "is not an internet address"),
        (
            "nosuchhost.invalid:80",
            "unable to resolve nosuchhost.invalid",
        ),
    ];
    let mut problems = Vec::new();
    for (form, needle) in cases {
        let out = Run::new([&probe]).args(["-l", form]).output(&sb, DEADLINE);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.code() != Some(2) || !stderr.contains("--listen") || !stderr.contains(needle)
        {
            problems.push(format!("{form}: exit {}: {stderr}", out.status));
        }
        if stderr.contains("panicked") {
            problems.push(format!("{form}: panicked: {stderr}"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn a_reload_never_resolves_a_host_name_and_says_when_options_stay() {
    let sb = Sandbox::new("listen_reload");
    let config = |listen: &[&str]| {
        let listen: Vec<String> = listen.iter().map(|l| format!("{l:?}")).collect();
        format!(
            "listen = [{}]\nworkers = 1\nready = \"notify\"\nready-timeout = \"10s\"\ncommand = [{:?}]\n",
            listen.join(", "),
            bins::example("probe").to_string_lossy()
        )
    };
    let file = sb.write(
        "web.toml",
        &config(&["web=127.0.0.1:0", "named=localhost:0"]),
    );
    let mut sup = Run::new(Vec::<String>::new())
        .arg("-c")
        .arg(&file)
        .start(&sb);
    sup.wait_ready(1, 1);
    let web = bound(&mut sup, "web");
    let text = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };

    // An unchanged host name keeps its socket; a new one is refused, and nothing changes.
    sb.write(
        "web.toml",
        &config(&["web=127.0.0.1:0", "named=localhost:0", "more=localhost:0"]),
    );
    let out = sup.ctl(&["reload"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("more=tcp://localhost:0: a host name is resolved only when reloadsup starts"),
        "{said}"
    );
    assert_eq!(sup.status_json()["generation"], 1, "nothing changed");

    // New options on a kept socket: the reload goes ahead and says they do not apply.
    sb.write(
        "web.toml",
        &config(&["web=127.0.0.1:0?backlog=5", "named=localhost:0"]),
    );
    let out = sup.ctl(&["reload"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("listener web keeps its socket, so its options stay 'none' (a new socket would get '?backlog=5')"),
        "{said}"
    );
    let listeners = sup.status_json()["listeners"].to_string();
    assert!(listeners.contains(&web), "{listeners}");
    sup.signal(libc::SIGTERM);
    assert!(sup.wait_exit(DEADLINE).success());
}
