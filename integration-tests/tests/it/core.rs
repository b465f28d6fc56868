//! The core promises (DESIGN.md section 1), driven through signals and the log only.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use reloadsup_integration_tests::{
    bins, proc, python3, wait_for, wait_json_file, wait_until, Limits, Load, Run, Sandbox,
    Supervisor, DEADLINE,
};
use serde_json::Value;

use crate::{standard, start};

/// `hello` in the reload-under-load test takes this long to start, as the issue asks. A
/// supervisor that stopped the old generation before the new one accepts would pause answers
/// for about this long after every reload; the real pause (a few ms) is measured by `make
/// bench`, and this bound on the median pause only has to tell the two apart on a busy machine.
const STARTUP: &str = "200ms";
const MAX_PAUSE_AFTER_RELOAD: Duration = Duration::from_millis(150);
/// Python and Node start slowly on a busy machine: a longer start-up and a looser bound.
const SLOW_STARTUP_SECS: &str = "0.5";
const SLOW_MAX_PAUSE: Duration = Duration::from_millis(400);
/// Pacing between reloads, so each generation serves a little.
const PACING: Duration = Duration::from_millis(20);

/// Reloads `reloads` times under a load of `clients` and checks nothing was lost.
fn reload_under_load(
    sup: &mut Supervisor,
    addr: SocketAddr,
    clients: usize,
    reloads: u32,
    max_pause: Duration,
) {
    let load = Load::start(addr, clients, Limits::default());
    load.wait_for_more_answers(20, DEADLINE);
    let mut reloaded_at = Vec::new();
    for generation in 2..=reloads + 1 {
        reloaded_at.push(Instant::now());
        if let Err(reason) = sup.reload(generation) {
            panic!("reload to generation {generation} failed: {reason}");
        }
        // Every generation must be seen answering before it is replaced.
        load.wait_for_generation(generation, DEADLINE);
        thread::sleep(PACING);
    }
    load.wait_for_more_answers(20, DEADLINE);
    let report = load.stop();
    let gaps = report.gaps_after(&reloaded_at, Duration::from_secs(1));
    eprintln!(
        "{}\nlongest pause after each reload: {gaps:?}\np50 {:?} p99 {:?}",
        report.summary(),
        report.latency(0.5),
        report.latency(0.99)
    );
    report.assert_no_failures();
    assert_eq!(
        sup.count_in_log(" is serving"),
        reloads as usize + 1,
        "one 'is serving' line for the first generation and one per reload"
    );
    let expected: BTreeSet<u32> = (1..=reloads + 1).collect();
    assert_eq!(report.generations(), expected, "generations that answered");
    // The median over the reloads, not the longest: a supervisor that drains the old
    // generation too early pauses answers for about the start-up time at every reload, while a
    // busy machine stalls a single one now and then (351 ms was seen at a load of 28).
    let mut sorted = gaps.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    assert!(
        median < max_pause,
        "answers paused for a median of {median:?} after a reload (limit {max_pause:?}); each: {gaps:?}"
    );
}

#[test]
fn reload_under_load_loses_nothing() {
    let sb = Sandbox::new("reload_under_load_loses_nothing");
    let run = Run::hello(&["--delay", STARTUP]).args(standard(4));
    let (mut sup, addr) = start(&sb, run, 4);
    reload_under_load(&mut sup, addr, 8, 20, MAX_PAUSE_AFTER_RELOAD);
}

#[test]
fn reload_under_load_python() {
    let python = python3();
    let server = bins::python_server();
    if !reloadsup_integration_tests::require("python3 on PATH", python.is_some())
        || !reloadsup_integration_tests::require(&server.display().to_string(), server.is_file())
    {
        return;
    }
    let python = python.expect("checked by require");
    let sb = Sandbox::new("reload_under_load_python");
    let command = [python.into_os_string(), server.into_os_string()]
        .into_iter()
        .chain(["--delay", SLOW_STARTUP_SECS].map(Into::into));
    // Python starts slowly on a busy machine: a longer ready timeout than the Rust tests.
    let run = Run::new(command)
        .args(["-n", "4", "--ready", "notify", "--ready-timeout", "15s"])
        .env("PYTHONUNBUFFERED", "1");
    let (mut sup, addr) = start(&sb, run, 4);
    reload_under_load(&mut sup, addr, 4, 5, SLOW_MAX_PAUSE);
}

#[test]
fn reload_under_load_node() {
    if !reloadsup_integration_tests::require(
        "node on PATH",
        reloadsup_integration_tests::have_command("node", &["--version"]),
    ) {
        return;
    }
    let sb = Sandbox::new("reload_under_load_node");
    let server = bins::workspace_root().join("examples/node/server.js");
    // Node cannot send READY=1 (no Unix datagrams): readiness is "alive for 1 s".
    let run = Run::new(["node".into(), server.into_os_string()]).args([
        "-n",
        "2",
        "--ready",
        "delay:1s",
        "--ready-timeout",
        "15s",
    ]);
    let mut sup = run.start(&sb);
    let addr = sup.addr();
    sup.wait_for_log("generation 1 is serving", DEADLINE);
    reload_under_load(&mut sup, addr, 4, 3, SLOW_MAX_PAUSE);
}

/// A script in the sandbox that runs hello with `args`; tests rewrite it to break a reload.
fn hello_script(sb: &Sandbox, args: &[&str]) -> PathBuf {
    sb.exec_script("server", &bins::example("hello"), args)
}

/// Breaks the command with `broken` (a script body), reloads under load and checks the old
/// generation is untouched and nothing of the failed one remains.
fn rollback(name: &str, broken: &str) {
    let sb = Sandbox::new(name);
    let script = hello_script(&sb, &["--delay", "200ms"]);
    let (mut sup, addr) = start(&sb, Run::new([&script]).args(standard(4)), 4);
    let old: Vec<u32> = sup.wait_workers(4);

    let load = Load::start(addr, 8, Limits::default());
    load.wait_for_more_answers(20, DEADLINE);
    sb.write_script("server", broken);
    let reason = match sup.reload(2) {
        Ok(()) => panic!("the reload to a broken command succeeded"),
        Err(reason) => reason,
    };
    eprintln!("rollback reason: {reason}");
    assert!(!reason.is_empty(), "a failed reload names its reason");

    // The failed generation is killed and reaped: only the old workers remain, none a zombie.
    wait_until(
        DEADLINE,
        "only the old workers as the primary's children",
        || sup.children() == old,
    );
    assert!(
        !old.iter().any(|&p| proc::is_zombie(p)),
        "an old worker is a zombie"
    );
    load.wait_for_more_answers(50, DEADLINE);
    let report = load.stop();
    eprintln!("{}", report.summary());
    report.assert_no_failures();
    assert_eq!(report.generations(), BTreeSet::from([1]));
    let answered: BTreeSet<u32> = report.pids();
    let old_set: BTreeSet<u32> = old.iter().copied().collect();
    assert!(
        answered.is_subset(&old_set),
        "answers from {answered:?}, old workers {old_set:?}"
    );
    assert_eq!(sup.workers(), old, "the old workers are untouched");

    // Fixing the command makes the next reload succeed.
    hello_script(&sb, &["--delay", "200ms"]);
    sup.signal(libc::SIGHUP);
    sup.wait_for_log("generation 3 is serving", DEADLINE);
    let new = sup.wait_workers(4);
    assert!(
        new.iter().all(|p| !old.contains(p)),
        "every worker replaced"
    );
}

#[test]
fn failed_generation_keeps_old_one_serving() {
    rollback(
        "failed_generation_keeps_old_one_serving",
        "#!/bin/sh\nexit 1\n",
    );
}

#[test]
fn unready_generation_is_rolled_back_after_ready_timeout() {
    // `--delay 60s` keeps the broken worker from accepting too: a worker that accepts
    // connections but never becomes ready loses them when it is killed, which is the worker's
    // fault, not the supervisor's.
    let hello = bins::example("hello");
    rollback(
        "unready_generation_is_rolled_back",
        &format!(
            "#!/bin/sh\nexec {} --no-ready --delay 60s \"$@\"\n",
            reloadsup_integration_tests::shell_quote(&hello.to_string_lossy())
        ),
    );
}

fn json_str<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {v}"))
}

#[test]
fn worker_sees_exactly_its_fds_and_env() {
    let sb = Sandbox::new("worker_sees_exactly_its_fds_and_env");
    let out = sb.join("probe.json");
    let mut sup = Run::probe(&["--flag", "{fd:a}", "{fd}"])
        .args(["-l", "a=tcp://127.0.0.1:0", "-l", "tcp://127.0.0.1:0"])
        .args(standard(1))
        .args(["--env", "IT_EXTRA=from-flag"])
        .env("PROBE_OUT", &out)
        .env("IT_INHERITED", "from-parent")
        .env("RELOADSUP_ADMIN_PASSWORD_HASH", "secret-hash-must-not-leak")
        .start(&sb);
    let a = sup.listener_addr("a");
    let listen1 = sup.listener_addr("listen1");
    sup.wait_ready(1, 1);
    let report = wait_json_file(&out);
    let pid = report["pid"].as_u64().expect("pid") as u32;

    let fds: Vec<i64> = report["fds"]
        .as_array()
        .expect("fds")
        .iter()
        .map(|f| f["fd"].as_i64().expect("fd"))
        .collect();
    assert_eq!(fds, [0, 1, 2, 3, 4], "the worker's fds: {}", report["fds"]);
    for (fd, addr) in [(3, a), (4, listen1)] {
        let entry = &report["fds"][fd];
        assert_eq!(entry["listening"], Value::Bool(true), "fd {fd}: {entry}");
        assert_eq!(
            entry["local_addr"].as_str(),
            Some(addr.to_string().as_str()),
            "fd {fd}: {entry}"
        );
    }
    // stdout and stderr are the primary's own.
    let primary_fds = proc::fds_of(sup.pid());
    for fd in [1, 2] {
        let theirs = &primary_fds
            .iter()
            .find(|f| f.0 == fd)
            .expect("primary fd")
            .1;
        assert_eq!(
            report["fds"][fd as usize]["target"].as_str(),
            Some(theirs.as_str()),
            "fd {fd}"
        );
    }

    let env = &report["env"];
    assert_eq!(json_str(env, "LISTEN_FDS"), "2");
    assert_eq!(json_str(env, "LISTEN_PID"), pid.to_string());
    assert_eq!(json_str(env, "LISTEN_FDNAMES"), "a:listen1");
    assert_eq!(json_str(env, "RELOADSUP_GENERATION"), "1");
    assert_eq!(json_str(env, "RELOADSUP_WORKER"), "0");
    assert!(
        !json_str(env, "NOTIFY_SOCKET").is_empty(),
        "NOTIFY_SOCKET in notify mode"
    );
    assert_eq!(json_str(env, "IT_INHERITED"), "from-parent");
    assert_eq!(json_str(env, "IT_EXTRA"), "from-flag");
    let leaked: Vec<&String> = env
        .as_object()
        .expect("env object")
        .keys()
        .filter(|k| k.starts_with("RELOADSUP_"))
        .filter(|k| *k != "RELOADSUP_GENERATION" && *k != "RELOADSUP_WORKER")
        .collect();
    assert!(leaked.is_empty(), "reloadsup variables leaked: {leaked:?}");

    let argv: Vec<&str> = report["argv"]
        .as_array()
        .expect("argv")
        .iter()
        .map(|a| a.as_str().expect("argv word"))
        .collect();
    assert_eq!(argv[1..], ["--flag", "3", "3"]);

    assert_eq!(json_str(&report, "sigblk"), "0000000000000000");
    let ignored = report["ignored_signals"]
        .as_array()
        .expect("ignored_signals");
    assert!(
        !ignored.contains(&Value::from(libc::SIGPIPE)),
        "SIGPIPE is ignored in the worker: {ignored:?}"
    );
    assert_eq!(
        report["pgid"].as_u64(),
        Some(u64::from(pid)),
        "own process group"
    );
    assert_eq!(report["ppid"].as_u64(), Some(u64::from(sup.pid())));
}

#[test]
fn primary_sigkill_takes_workers_down() {
    let sb = Sandbox::new("primary_sigkill_takes_workers_down");
    let (mut sup, _) = start(&sb, Run::hello(&[]).args(standard(4)), 4);
    let workers = sup.wait_workers(4);
    let killed = Instant::now();
    sup.signal(libc::SIGKILL);
    sup.wait_exit(DEADLINE);
    wait_until(
        Duration::from_secs(5),
        "every worker to die with the primary",
        || !workers.iter().any(|&p| proc::is_alive(p)),
    );
    eprintln!(
        "workers gone {:?} after SIGKILL to the primary",
        killed.elapsed()
    );
}

#[test]
fn fifty_reloads_leave_no_zombie_or_fd_leak() {
    let sb = Sandbox::new("fifty_reloads_leave_no_zombie_or_fd_leak");
    let run = Run::hello(&[]).args([
        "-n",
        "2",
        "--ready",
        "immediate",
        "--graceful-timeout",
        "5s",
    ]);
    let (mut sup, _) = start(&sb, run, 2);
    sup.reload(2).expect("reload 1");
    let workers = sup.wait_workers(2);
    // With `--ready immediate` a reload is done before its roles exec'd; until they have, the
    // primary still holds their hand-off links. Count from after.
    wait_until(DEADLINE, "the new workers to run hello", || {
        workers.iter().all(|p| {
            std::fs::read_link(format!("/proc/{p}/exe"))
                .is_ok_and(|e| e.file_name().is_some_and(|n| n == "hello"))
        })
    });
    let primary = sup.pid();
    let baseline = wait_for(DEADLINE, "the primary's fds to settle", || {
        let a = proc::fds_of(primary);
        thread::sleep(Duration::from_millis(50));
        (proc::fds_of(primary) == a).then_some(a)
    });
    for generation in 3..=51 {
        sup.reload(generation)
            .unwrap_or_else(|r| panic!("reload to {generation} failed: {r}"));
        // Pacing, not a wait: `reload` already waited for the outcome.
        thread::sleep(Duration::from_millis(5));
    }
    sup.wait_workers(2);
    let mut now = Vec::new();
    let settled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(
            Duration::from_secs(5),
            "the primary's fd count to settle",
            || {
                now = proc::fds_of(primary);
                now.len() == baseline.len()
            },
        )
    }));
    assert!(
        settled.is_ok(),
        "fd leak: after reload 1 {baseline:#?}\nafter reload 50 {now:#?}"
    );
    let children = sup.children();
    assert_eq!(children.len(), 2, "children: {children:?}");
    assert!(!children.iter().any(|&p| proc::is_zombie(p)));
}

#[test]
fn graceful_shutdown_exits_zero() {
    let sb = Sandbox::new("graceful_shutdown_exits_zero");
    let (mut sup, _) = start(&sb, Run::hello(&[]).args(standard(2)), 2);
    let workers = sup.wait_workers(2);
    sup.signal(libc::SIGTERM);
    let status = sup.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(!workers.iter().any(|&p| proc::is_alive(p)), "workers left");
}

#[test]
fn fast_shutdown() {
    let sb = Sandbox::new("fast_shutdown");
    let (mut sup, _) = start(&sb, Run::probe(&["--ignore-term"]).args(standard(2)), 2);
    let workers = sup.wait_workers(2);
    let started = Instant::now();
    sup.signal(libc::SIGQUIT);
    let status = sup.wait_exit(DEADLINE);
    eprintln!("fast shutdown took {:?}, {status}", started.elapsed());
    assert!(
        status.code().is_some(),
        "the primary died of a signal: {status}"
    );
    wait_until(DEADLINE, "every worker to be gone", || {
        !workers.iter().any(|&p| proc::is_alive(p))
    });
    // Stubborn workers are not waited for: SIGKILL goes out at once.
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[test]
fn graceful_timeout_kills_stubborn_worker() {
    let sb = Sandbox::new("graceful_timeout_kills_stubborn_worker");
    let run = Run::probe(&["--ignore-term"]).args([
        "-n",
        "1",
        "--ready",
        "notify",
        "--graceful-timeout",
        "1s",
    ]);
    let (mut sup, _) = start(&sb, run, 1);
    let old = sup.wait_workers(1)[0];
    let hup = Instant::now();
    sup.reload(2).expect("reload");
    wait_until(
        DEADLINE,
        "the stubborn worker to be killed and reaped",
        || !proc::exists(old),
    );
    let took = hup.elapsed();
    eprintln!("stubborn worker gone {took:?} after SIGHUP");
    assert!(
        took >= Duration::from_millis(950),
        "killed before the graceful timeout: {took:?}"
    );
    assert_eq!(sup.wait_workers(1).len(), 1);
}

#[test]
fn crashed_worker_is_restarted_in_its_slot() {
    let sb = Sandbox::new("crashed_worker_is_restarted_in_its_slot");
    let (sup, addr) = start(&sb, Run::hello(&[]).args(standard(2)), 2);
    let before = sup.wait_workers(2);
    proc::kill(before[0], libc::SIGKILL).expect("kill a worker");
    let after = reloadsup_integration_tests::wait_for(DEADLINE, "a replacement worker", || {
        let now = sup.workers();
        (now.len() == 2 && !now.contains(&before[0])).then_some(now)
    });
    assert!(after.contains(&before[1]), "the other worker is untouched");
    let load = Load::start(addr, 2, Limits::default());
    load.wait_for_more_answers(20, DEADLINE);
    load.stop().assert_no_failures();
}

#[test]
fn bad_input_exits_2() {
    let sb = Sandbox::new("bad_input_exits_2");
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("local addr");
    let config = sb.write("bad.toml", "bogus_key = 1\n");
    let not_executable = sb.write("not-executable", "#!/bin/sh\nexit 0\n");
    let hello = bins::example("hello");
    let hello = hello.to_string_lossy().into_owned();
    let l0 = ["-l", "tcp://127.0.0.1:0"];
    let in_use = format!("tcp://{taken_addr}");
    let cases: Vec<(&str, Run, Vec<String>)> = vec![
        (
            "no command",
            Run::new(Vec::<String>::new()),
            vec!["command".into()],
        ),
        (
            "unparsable address",
            Run::new([&hello]).args(["-l", "tcp://nonsense"]),
            vec!["--listen".into(), "nonsense".into()],
        ),
        (
            "address in use",
            Run::new([&hello]).args(["-l", &in_use]),
            vec![taken_addr.port().to_string(), "in use".into()],
        ),
        (
            "unknown stop signal",
            Run::new([&hello])
                .args(l0)
                .args(["--stop-signal", "SIGFOO"]),
            vec!["--stop-signal".into(), "SIGFOO".into()],
        ),
        (
            "bad duration",
            Run::new([&hello])
                .args(l0)
                .args(["--ready-timeout", "5parsecs"]),
            vec!["--ready-timeout".into(), "5parsecs".into()],
        ),
        (
            "unknown config key",
            Run::new([&hello]).args(l0).arg("-c").arg(&config),
            vec!["bogus_key".into()],
        ),
        (
            "missing command",
            Run::new(["no-such-command-xyz"]).args(l0),
            vec!["no-such-command-xyz".into()],
        ),
        (
            "command not executable",
            Run::new([&not_executable]).args(l0),
            vec![not_executable.to_string_lossy().into_owned()],
        ),
    ];
    let mut problems = Vec::new();
    for (what, run, needles) in cases {
        let out = run.output(&sb, DEADLINE);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let lower = stderr.to_lowercase();
        if out.status.code() != Some(2) {
            problems.push(format!(
                "{what}: exit {} (want 2); stderr: {stderr}",
                out.status
            ));
        }
        if stderr.contains("panicked") {
            problems.push(format!("{what}: panicked: {stderr}"));
        }
        for needle in needles {
            if !lower.contains(&needle.to_lowercase()) {
                problems.push(format!("{what}: stderr lacks {needle:?}: {stderr}"));
            }
        }
    }
    drop(taken);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn scaling_with_signals() {
    let sb = Sandbox::new("scaling_with_signals");
    let (sup, addr) = start(&sb, Run::hello(&[]).args(standard(2)), 2);
    sup.wait_workers(2);
    let load = Load::start(addr, 4, Limits::default());
    for (sig, expected) in [
        (libc::SIGTTIN, 3),
        (libc::SIGTTIN, 4),
        (libc::SIGTTOU, 3),
        (libc::SIGTTOU, 2),
        (libc::SIGTTOU, 1),
    ] {
        sup.signal(sig);
        sup.wait_workers(expected);
        load.wait_for_more_answers(10, DEADLINE);
    }
    let report = load.stop();
    report.assert_no_failures();
}

#[test]
fn closed_standard_fds_are_opened_on_dev_null() {
    let sb = Sandbox::new("closed_standard_fds");
    let out = sb.join("probe.json");
    let argv: Vec<String> = [
        bins::reloadsup().display().to_string(),
        "-l".into(),
        "tcp://127.0.0.1:0".into(),
        "--ready".into(),
        "notify".into(),
        "--state-dir".into(),
        sb.join("state").display().to_string(),
        "--".into(),
        bins::example("probe").display().to_string(),
    ]
    .iter()
    .map(|a| reloadsup_integration_tests::shell_quote(a))
    .collect();
    // Start the supervisor with stdin closed, the way some init scripts do; sh execs it, so the
    // child is the primary itself.
    let mut child = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("exec 0<&- {}", argv.join(" ")))
        .env("PROBE_OUT", &out)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(sb.join("stderr")).expect("stderr file"))
        .spawn()
        .expect("spawn sh");
    let report = wait_json_file(&out);
    // SAFETY: kill(2) on the primary this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    let fd0 = &report["fds"][0];
    assert_eq!(fd0["target"], "/dev/null", "fd 0 of the worker: {fd0}");
    assert_eq!(report["fds"][3]["listening"], Value::Bool(true), "{report}");
    assert_eq!(report["fds"].as_array().map(Vec::len), Some(4), "{report}");
    assert!(status.success(), "{status}");
}

/// Regression (issue 12, item 10): `READY=1` from a helper that the primary reads only after
/// the helper sent it was dropped, since its pid no longer led to a worker, and the reload
/// rolled back. A helper that waits until its message is read (`systemd-notify`'s way, with
/// `BARRIER=1` and a pipe whose other end the reader closes) counts, however late the primary
/// reads: the worker freezes the primary while its helper sends.
#[test]
fn ready_from_a_helper_that_waits_for_its_barrier_counts() {
    let test = "ready_from_a_helper_that_waits_for_its_barrier_counts";
    let Some(py) = python3().or_else(|| crate::tool(test, "python3")) else {
        return;
    };
    let sb = Sandbox::new(test);
    let helper = sb.write(
        "notify.py",
        "import os, select, socket\n\
         s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         s.connect(os.environ['NOTIFY_SOCKET'])\n\
         s.send(b'READY=1')\n\
         r, w = os.pipe()\n\
         socket.send_fds(s, [b'BARRIER=1'], [w])\n\
         os.close(w)\n\
         select.select([r], [], [], 20)\n",
    );
    // $PPID is the primary: the worker role it forked exec'd this script in place.
    let script = sb.write_script(
        "server",
        &format!(
            "#!/bin/sh\nkill -STOP $PPID\n{py} {helper} &\nsleep 0.3\nkill -CONT $PPID\nwait\nexec sleep 600\n",
            py = reloadsup_integration_tests::shell_quote(&py.to_string_lossy()),
            helper = reloadsup_integration_tests::shell_quote(&helper.to_string_lossy()),
        ),
    );
    let mut sup = Run::new([&script])
        .args(["--ready", "notify", "--ready-timeout", "10s"])
        .start(&sb);
    sup.wait_ready(1, 1);
    sup.reload(2)
        .expect("the reload is ready through the helper");
    // The old worker's socket went with it: one socket per live worker, none left over.
    let state = sup.state_dir().to_path_buf();
    reloadsup_integration_tests::wait_until(DEADLINE, "one notify socket in the state dir", || {
        notify_sockets(&state) == 1
    });
}

/// Issue 18, item 6: a datagram whose sender exited before the primary read it cannot be told
/// from one that another worker's child sent and exited (the path is in every worker's
/// environment, readable by their uid): it is not believed, and the reload is rolled back.
#[test]
fn ready_from_a_sender_that_already_exited_is_not_believed() {
    let test = "ready_from_a_sender_that_already_exited_is_not_believed";
    let Some(py) = python3().or_else(|| crate::tool(test, "python3")) else {
        return;
    };
    let sb = Sandbox::new(test);
    let helper = format!(
        "{} -c 'import os,socket; socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b\"READY=1\", os.environ[\"NOTIFY_SOCKET\"])'",
        reloadsup_integration_tests::shell_quote(&py.to_string_lossy())
    );
    let hello = bins::example("hello");
    let script = sb.write_script(
        "server",
        &format!(
            "#!/bin/sh\n[ \"$RELOADSUP_GENERATION\" = 1 ] && exec {hello} \"$@\"\n\
             kill -STOP $PPID\n{helper}\nkill -CONT $PPID\nexec sleep 600\n",
            hello = reloadsup_integration_tests::shell_quote(&hello.to_string_lossy()),
        ),
    );
    let mut sup = Run::new([&script])
        .args(["--ready", "notify", "--ready-timeout", "3s"])
        .start(&sb);
    sup.wait_ready(1, 1);
    let reason = sup
        .reload(2)
        .expect_err("READY=1 of a sender gone before the read made the worker ready");
    assert!(reason.contains("not ready within 3s"), "{reason}");
    assert!(
        sup.log()
            .contains("is not one of that worker's processes or has exited"),
        "the log says why the message was ignored"
    );
}

/// How many per-worker notify sockets the state directory holds.
fn notify_sockets(state: &std::path::Path) -> usize {
    std::fs::read_dir(state)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("n-"))
                .count()
        })
        .unwrap_or(0)
}

/// Regression (issue 12, item 10): any process in a worker's process group could make it
/// ready. Worker 0 of a new generation tries both ways to make worker 1 (which never says
/// READY=1) look ready: sending to worker 1's socket itself, and from a child that joined
/// worker 1's process group. Neither counts: the reload is rolled back on its ready timeout.
#[test]
fn a_worker_cannot_make_another_one_ready() {
    let test = "a_worker_cannot_make_another_one_ready";
    let Some(py) = python3().or_else(|| crate::tool(test, "python3")) else {
        return;
    };
    let sb = Sandbox::new(test);
    let attack = sb.write(
        "attack.py",
        r#"import os, socket, sys, time
def send(path, msg):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(msg, path)
    s.close()
own = os.environ["NOTIFY_SOCKET"]
send(own, b"READY=1")
deadline = time.time() + 20
while not os.path.exists("victim") and time.time() < deadline:
    time.sleep(0.01)
pid, path = open("victim").read().split()
# Straight to the victim's socket, from a live process of this worker's group.
send(path, b"READY=1\nSTATUS=forged")
# From a child in the victim's process group, on this worker's own socket. The child stays
# alive (it is killed with the victim's group), so a pid lookup would find it.
if os.fork() == 0:
    os.setpgid(0, int(pid))
    send(own, b"READY=1")
    open("sent.tmp", "w").write("sent")
    os.rename("sent.tmp", "sent")
    time.sleep(600)
    os._exit(0)
time.sleep(600)
"#,
    );
    let hello = bins::example("hello");
    let script = sb.write_script(
        "server",
        &format!(
            "#!/bin/sh\n\
             [ -e evil ] || exec {hello} \"$@\"\n\
             if [ \"$RELOADSUP_WORKER\" = 1 ]; then\n\
               echo \"$$ $NOTIFY_SOCKET\" > victim.tmp && mv victim.tmp victim\n\
               exec sleep 600\n\
             fi\n\
             exec {py} {attack}\n",
            hello = reloadsup_integration_tests::shell_quote(&hello.to_string_lossy()),
            py = reloadsup_integration_tests::shell_quote(&py.to_string_lossy()),
            attack = reloadsup_integration_tests::shell_quote(&attack.to_string_lossy()),
        ),
    );
    let (mut sup, _) = start(
        &sb,
        Run::new([&script]).args(["-n", "2", "--ready", "notify", "--ready-timeout", "4s"]),
        2,
    );
    sb.write("evil", "");
    let reason = match sup.reload(2) {
        Ok(()) => panic!("worker 1 was made ready by worker 0"),
        Err(reason) => reason,
    };
    assert!(sb.join("sent").exists(), "the attack did not run: {reason}");
    assert!(reason.contains("worker 1"), "{reason}");
    assert!(reason.contains("not ready within"), "{reason}");
}

/// Notify sockets are unreachable by other users: with `--user nobody`, another uid cannot send
/// to the worker's socket, and a process of nobody (the worker's user) that is not one of the
/// worker's processes can send but is not believed.
#[test]
fn notify_socket_refuses_other_users() {
    use std::os::unix::process::CommandExt;
    let test = "notify_socket_refuses_other_users";
    if !crate::running_as_root(test) {
        return;
    }
    // A python3 every user can run (a pyenv shim under /root is not one).
    let Some(py) = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| crate::tool(test, "python3"))
    else {
        return;
    };
    let sb = Sandbox::new(test);
    let mut sup = Run::new(["/bin/sleep", "600"])
        .args([
            "--ready",
            "notify",
            "--ready-timeout",
            "60s",
            "--user",
            "nobody",
        ])
        .start(&sb);
    let worker = sup.wait_workers(1)[0];
    let path = wait_for_env(worker, "NOTIFY_SOCKET");
    let send = |uid: u32| {
        std::process::Command::new(&py)
            .args([
                "-c",
                "import socket,sys; socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'READY=1', sys.argv[1])",
            ])
            .arg(&path)
            .uid(uid)
            .gid(uid)
            .current_dir("/")
            .output()
            .expect("run python3")
    };
    let other = send(1);
    assert!(!other.status.success(), "uid 1 could send to {path}");
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("PermissionError"),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    // The worker's user may send, but a process of that user that is not one of the worker's
    // (another instance's worker, say) cannot speak for it (issue 18, item 6).
    let own = send(65534);
    assert!(
        own.status.success(),
        "the worker's user could not send: {}",
        String::from_utf8_lossy(&own.stderr)
    );
    sup.wait_for_log("is not one of that worker's processes", DEADLINE);
    let status = sup.status_json();
    assert_eq!(
        status["workers"][0]["state"], "starting",
        "a stranger's READY=1 was believed: {status}"
    );
}

/// An environment variable of a process, once its exec has set it.
fn wait_for_env(pid: u32, key: &str) -> String {
    reloadsup_integration_tests::wait_for(DEADLINE, &format!("{key} in pid {pid}"), || {
        proc::environ_of(pid).get(key).cloned()
    })
}

/// Issue 21, defect 2: systemd 258+ sets `LISTEN_PIDFDID` beside `LISTEN_PID`; it reached the
/// workers, whose `sd_listen_fds()` then compared it with their own pidfd and found no socket.
/// A worker gets the socket-activation variables of its own and no `LISTEN_PIDFDID`.
#[test]
fn a_worker_never_sees_the_managers_listen_pidfdid() {
    let sb = Sandbox::new("listen_pidfdid");
    let run = Run::hello(&[])
        .args(standard(1))
        .env("LISTEN_PIDFDID", "4242");
    let (sup, _) = start(&sb, run, 1);
    let worker = sup.wait_workers(1)[0];
    wait_for_env(worker, "LISTEN_FDS");
    let env = proc::environ_of(worker);
    assert!(
        !env.contains_key("LISTEN_PIDFDID"),
        "the worker got LISTEN_PIDFDID={:?}",
        env.get("LISTEN_PIDFDID")
    );
    assert_eq!(
        env.get("LISTEN_PID").map(String::as_str),
        Some(worker.to_string().as_str())
    );
}
