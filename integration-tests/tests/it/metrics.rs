//! `--metrics` (issue 11, item 5): `/metrics` parses with a real Prometheus text parser
//! (`prometheus-parse`) and its counters match what happened (a reload, a rolled-back one, a
//! worker crash, an upgrade in place, console logins); they survive the upgrade; a scraper
//! that sends nothing, or 10 MB, neither stops another scrape nor `ctl status`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use prometheus_parse::{Scrape, Value};
use reloadsup_integration_tests::{bins, proc, wait_for, Run, Sandbox, Supervisor, DEADLINE};

use crate::{standard, start};

/// The address the primary logged for `/metrics` (`--metrics 127.0.0.1:0`).
fn metrics_addr(sup: &mut Supervisor) -> SocketAddr {
    let line = sup.wait_for_log("metrics on http://", DEADLINE);
    let rest = &line[line.find("http://").unwrap() + "http://".len()..];
    rest.split('/').next().unwrap().parse().expect(&line)
}

/// `GET /metrics`: the status line and the body.
fn get(addr: SocketAddr) -> Result<(String, String), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or(text.clone())?;
    Ok((
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    ))
}

/// A scrape that must succeed, parsed.
fn scrape(addr: SocketAddr) -> (Scrape, String) {
    let (status, body) = get(addr).expect("a scrape");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let parsed = Scrape::parse(lines).expect("the Prometheus text parser reads it");
    // The parser skips lines it cannot read: every sample line must have become a sample.
    let samples = body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| !l.starts_with("reloadsup_reload_duration_seconds_bucket"))
        .count()
        + 1;
    assert_eq!(parsed.samples.len(), samples, "unparsed lines in:\n{body}");
    (parsed, body)
}

/// The value of `metric` with `label` (if given), as the parser read it.
fn value(s: &Scrape, metric: &str, label: Option<(&str, &str)>) -> f64 {
    let sample = s
        .samples
        .iter()
        .find(|x| x.metric == metric && label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no {metric} {label:?} in {:?}", s.samples));
    match &sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{metric} is {other:?}"),
    }
}

fn reloads(s: &Scrape, outcome: &str) -> f64 {
    value(s, "reloadsup_reloads_total", Some(("outcome", outcome)))
}

/// The histogram's buckets: `(le, cumulative count)`.
fn durations(s: &Scrape) -> Vec<(f64, f64)> {
    let sample = s
        .samples
        .iter()
        .find(|x| x.metric == "reloadsup_reload_duration_seconds")
        .expect("the reload duration histogram");
    match &sample.value {
        Value::Histogram(h) => h.iter().map(|b| (b.less_than, b.count)).collect(),
        other => panic!("reloadsup_reload_duration_seconds is {other:?}"),
    }
}

#[test]
fn metrics_count_reloads_rollbacks_crashes_and_upgrades_and_survive_the_upgrade() {
    let sb = Sandbox::new("metrics_counts");
    let hello = bins::example("hello");
    let script = sb.exec_script("server", &hello, &[]);
    let run = Run::new([&script])
        .args(standard(2))
        .args(["--metrics", "127.0.0.1:0"]);
    let (mut sup, _) = start(&sb, run, 2);
    let addr = metrics_addr(&mut sup);

    let (s, _) = scrape(addr);
    assert_eq!(value(&s, "reloadsup_generation", None), 1.0);
    assert_eq!(
        value(&s, "reloadsup_workers", Some(("state", "ready"))),
        2.0
    );
    // The metrics worker is a child of the primary, but no worker.
    assert_eq!(sup.wait_workers(2).len(), 2);
    let started = value(&s, "reloadsup_start_time_seconds", None);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - 60.0..=now + 1.0).contains(&started),
        "{started} vs {now}"
    );

    // One reload that takes, one that is rolled back.
    let out = sup.ctl(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sb.write_script("server", "#!/bin/sh\nexit 1\n");
    let out = sup.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "the failing reload");
    sb.exec_script("server", &hello, &[]);

    // A worker crash: killed, restarted in its slot.
    let status = sup.status_json();
    let victim = status["workers"][0]["pid"].as_u64().unwrap() as i32;
    // SAFETY: a plain kill(2) of a worker this test's supervisor started.
    assert_eq!(unsafe { libc::kill(victim, libc::SIGKILL) }, 0);
    wait_for(DEADLINE, "the crashed worker to be restarted", || {
        let (s, _) = scrape(addr);
        (value(&s, "reloadsup_worker_restarts_total", None) == 1.0
            && value(&s, "reloadsup_workers", Some(("state", "ready"))) == 2.0)
            .then_some(())
    });

    let (s, _) = scrape(addr);
    assert_eq!(reloads(&s, "succeeded"), 1.0);
    assert_eq!(reloads(&s, "rolled_back"), 1.0);
    assert_eq!(reloads(&s, "refused"), 0.0);
    assert_eq!(value(&s, "reloadsup_generation", None), 2.0);
    assert_eq!(value(&s, "reloadsup_upgrades_total", None), 0.0);
    let buckets = durations(&s);
    assert_eq!(buckets.len(), 11, "{buckets:?}");
    assert_eq!(buckets.last().map(|b| b.1), Some(2.0), "{buckets:?}");
    assert!(buckets.last().unwrap().0.is_infinite());
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    assert_eq!(
        value(&s, "reloadsup_reload_duration_seconds_count", None),
        2.0
    );

    // An upgrade in place: the counters and the start time carry over, the port stays.
    let out = sup.ctl(&["upgrade"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (s, _) = scrape(addr);
    assert_eq!(value(&s, "reloadsup_upgrades_total", None), 1.0);
    assert_eq!(reloads(&s, "succeeded"), 1.0);
    assert_eq!(reloads(&s, "rolled_back"), 1.0);
    assert_eq!(value(&s, "reloadsup_worker_restarts_total", None), 1.0);
    assert_eq!(value(&s, "reloadsup_start_time_seconds", None), started);
    assert_eq!(durations(&s).last().map(|b| b.1), Some(2.0));

    // The metrics worker itself crashes: another serves on the same port.
    let log = sup.log();
    let worker: i32 = log
        .lines()
        .filter_map(|l| l.split("metrics worker started as pid ").nth(1))
        .next_back()
        .and_then(|p| p.trim().parse().ok())
        .expect(&log);
    // SAFETY: a plain kill(2) of the metrics worker this test's supervisor started.
    assert_eq!(unsafe { libc::kill(worker, libc::SIGKILL) }, 0);
    sup.wait_for_nth_log("metrics worker started as pid ", 2, DEADLINE);
    wait_for(DEADLINE, "a scrape from the new metrics worker", || {
        get(addr).ok().filter(|(st, _)| st.ends_with("200 OK"))
    });
    let (s, _) = scrape(addr);
    assert_eq!(reloads(&s, "succeeded"), 1.0);

    sup.signal(libc::SIGTERM);
    assert!(sup.wait_exit(DEADLINE).success());
}

#[test]
fn a_silent_or_flooding_scraper_stops_neither_another_scrape_nor_ctl_status() {
    let sb = Sandbox::new("metrics_hostile");
    let run = Run::hello(&[])
        .args(standard(1))
        .args(["--metrics", "127.0.0.1:0"]);
    let (mut sup, _) = start(&sb, run, 1);
    let addr = metrics_addr(&mut sup);

    // Connects and sends nothing, holding its connection open.
    let silent = TcpStream::connect(addr).unwrap();
    // Sends 10 MB without ever ending its headers.
    let flood = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let chunk = vec![b'a'; 64 * 1024];
        let mut sent = 0usize;
        while sent < 10 * 1024 * 1024 {
            match s.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
    });
    let t = Instant::now();
    let (s, _) = scrape(addr);
    assert_eq!(value(&s, "reloadsup_generation", None), 1.0);
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "a scrape waited {:?} behind the silent client",
        t.elapsed()
    );
    let out = sup.ctl(&["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer = flood.join().unwrap();
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    // Anything but GET /metrics is refused, and the worker goes on.
    let mut other = TcpStream::connect(addr).unwrap();
    other.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut text = String::new();
    other.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    scrape(addr);
    drop(silent);

    // The connection limit: 16 silent clients hold every slot; one more is told at once.
    let held: Vec<TcpStream> = (0..16).map(|_| TcpStream::connect(addr).unwrap()).collect();
    wait_for(DEADLINE, "a scrape over the limit to be refused", || {
        get(addr)
            .ok()
            .filter(|(st, _)| st.starts_with("HTTP/1.1 503"))
    });
    drop(held);
    wait_for(DEADLINE, "a scrape once the silent clients left", || {
        get(addr).ok().filter(|(st, _)| st.ends_with("200 OK"))
    });
    let out = sup.ctl(&["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    sup.signal(libc::SIGTERM);
    assert!(sup.wait_exit(DEADLINE).success());
}

#[test]
fn console_logins_are_counted_by_result() {
    let sb = Sandbox::new("metrics_logins");
    let admin = crate::console::Admin::start_with(
        &sb,
        1,
        bins::example("console_commands"),
        &["--metrics", "127.0.0.1:0"],
    );
    let log = admin.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("metrics on http://"))
        .expect(&log);
    let rest = &line[line.find("http://").unwrap() + "http://".len()..];
    let addr: SocketAddr = rest.split('/').next().unwrap().parse().unwrap();

    let out = admin.console(&["worker info"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cmd = std::process::Command::new(bins::reloadsup());
    cmd.args([
        "console",
        "--fingerprint",
        &admin.fingerprint,
        "-c",
        "worker info",
    ])
    .arg(&admin.addr)
    .env("RELOADSUP_PASSWORD", "wrong");
    let out = reloadsup_integration_tests::output_with_timeout(&mut cmd, DEADLINE);
    assert_eq!(out.status.code(), Some(1));

    wait_for(DEADLINE, "both logins counted", || {
        let (s, _) = scrape(addr);
        let failed_in_log = admin.log_text().matches("wrong password from").count() as f64;
        let ok = value(&s, "reloadsup_console_logins_total", Some(("result", "ok")));
        let failed = value(
            &s,
            "reloadsup_console_logins_total",
            Some(("result", "failed")),
        );
        (ok == 1.0 && failed >= 1.0 && failed == failed_in_log).then_some(())
    });
}

#[test]
fn a_bad_metrics_address_exits_2_naming_the_flag() {
    let sb = Sandbox::new("metrics_bad");
    let out = Run::hello(&[])
        .args(["--metrics", "localhost"])
        .output(&sb, DEADLINE);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--metrics"), "{err}");
}

/// Issue 18, item 8: the metrics worker parses what any scraper sends; with `--user` it runs
/// as the workers' user, switched to before its first thread, and still serves.
#[test]
fn the_metrics_worker_runs_as_the_workers_user() {
    if !crate::running_as_root("the_metrics_worker_runs_as_the_workers_user") {
        return;
    }
    let sb = Sandbox::new("metrics_user");
    let hello = sb.shared_copy(&bins::example("hello"));
    let run = Run::new([hello])
        .args(standard(1))
        .args(["--user", "65534", "--group", "65534"])
        .args(["--metrics", "127.0.0.1:0"]);
    let (mut sup, _) = start(&sb, run, 1);
    let addr = metrics_addr(&mut sup);
    let (s, _) = scrape(addr);
    assert_eq!(reloads(&s, "succeeded"), 0.0);
    let worker = wait_for(DEADLINE, "the metrics worker", || {
        proc::children_of(sup.pid())
            .into_iter()
            .find(|&p| proc::is_metrics(p))
    });
    for (field, want) in [("Uid", "65534"), ("Gid", "65534"), ("Groups", "65534")] {
        let got = proc::status_field(worker, field).unwrap_or_default();
        assert!(
            got.split_whitespace().all(|id| id == want) && !got.is_empty(),
            "{field} of the metrics worker: {got}"
        );
    }
    sup.signal(libc::SIGTERM);
    assert!(sup.wait_exit(DEADLINE).success());
}
