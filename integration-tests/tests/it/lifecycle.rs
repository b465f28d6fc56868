//! The bad day: crashes, crash loops, dead slots and revive, workers with children of their
//! own, hundreds of listeners, einhorn's variables, and workers run as another user.

use std::net::SocketAddr;
use std::time::Instant;

use reloadsup_integration_tests::load::FailureKind;
use reloadsup_integration_tests::{
    bins, proc, wait_for, wait_json_file, wait_until, Limits, Load, Run, Sandbox, Supervisor,
    DEADLINE,
};
use serde_json::Value;

use crate::{standard, start};

fn ctl_ok(sup: &Supervisor, args: &[&str]) -> String {
    let out = sup.ctl(args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ctl {args:?}: {}; {text}; {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn killed_worker_is_replaced_and_only_its_own_connections_fail() {
    let sb = Sandbox::new("killed_worker_is_replaced");
    let (sup, addr) = start(&sb, Run::hello(&[]).args(standard(4)), 4);
    let load = Load::start(addr, 8, Limits::default());
    load.wait_for_more_answers(200, DEADLINE);
    let before = sup.wait_workers(4);
    let victim = before[1];
    let killed_at = Instant::now();
    unsafe_kill(victim, libc::SIGKILL);
    // A replacement in the same slot, ready and answering.
    let replacement = wait_for(DEADLINE, "a replacement worker", || {
        let now = sup.workers();
        (now.len() == 4 && !now.contains(&victim))
            .then(|| now.into_iter().find(|p| !before.contains(p)))
            .flatten()
    });
    wait_until(DEADLINE, "an answer from the replacement", || {
        reloadsup_integration_tests::get(addr, "/").is_ok_and(|a| a.pid == replacement)
    });
    let replaced_in = killed_at.elapsed();
    load.wait_for_more_answers(200, DEADLINE);
    let report = load.stop();
    eprintln!(
        "{}\nreplacement answered {replaced_in:?} after the kill",
        report.summary()
    );
    // Only connections the killed worker had accepted can fail: at most one per client, and
    // never a refused connection (the listener never closed).
    assert_eq!(
        report.failures_of(FailureKind::Refused),
        0,
        "{}",
        report.summary()
    );
    assert!(
        report.failed() <= 8,
        "more failures than clients in flight: {}",
        report.summary()
    );
    assert!(
        sup.log()
            .contains(&format!("(pid {victim}) was killed by SIGKILL")),
        "the log says why it died"
    );
    assert!(
        sup.log().contains("restarting worker"),
        "the slot was restarted"
    );
}

#[test]
fn crash_loop_backs_off_dies_and_revives() {
    let sb = Sandbox::new("crash_loop_backs_off");
    let script = sb.write_script("server", "#!/bin/sh\nexit 3\n");
    let mut sup = Run::new([&script]).args(standard(1)).start(&sb);
    wait_until(DEADLINE, "the slot to be dead", || {
        sup.log().contains("worker 0 is dead")
    });
    let log = sup.log();
    let delays: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split("restarting worker 0 in ").nth(1))
        .map(str::trim)
        .collect();
    assert_eq!(
        delays,
        ["100ms", "200ms", "400ms", "800ms"],
        "the back-off doubles"
    );
    let deaths = log
        .lines()
        .filter(|l| l.contains("(pid ") && l.contains("exited with status 3"))
        .count();
    assert_eq!(deaths, 5, "the log says why each died");
    let status = sup.status_json();
    assert_eq!(status["dead_workers"], 1, "{status:#}");
    assert_eq!(status["current_workers"], 0, "{status:#}");
    assert_eq!(status["workers"][0]["state"], "dead", "{status:#}");

    // Fixed on disk, then revived.
    sb.exec_script("server", &bins::example("hello"), &[]);
    let text = ctl_ok(&sup, &["revive"]);
    assert!(text.contains("revived 1 worker"), "{text}");
    let addr = sup.addr();
    wait_for(DEADLINE, "the revived worker to answer", || {
        reloadsup_integration_tests::get(addr, "/").ok()
    });
    let status = sup.status_json();
    assert_eq!(status["dead_workers"], 0, "{status:#}");
    assert_eq!(status["current_workers"], 1, "{status:#}");
}

#[test]
fn three_hundred_listeners_arrive_in_order() {
    let sb = Sandbox::new("three_hundred_listeners");
    let out = sb.join("probe.json");
    let mut run = Run::probe(&[]).env("PROBE_OUT", &out).args(standard(1));
    for i in 0..300 {
        run = run.args(["-l".to_string(), format!("l{i}=tcp://127.0.0.1:0")]);
    }
    let mut sup = run.start(&sb);
    let addrs: Vec<SocketAddr> = (0..300)
        .map(|i| sup.listener_addr(&format!("l{i}")))
        .collect();
    sup.wait_ready(1, 1);
    let report = wait_json_file(&out);
    let fds = report["fds"].as_array().expect("fds");
    assert_eq!(fds.len(), 303, "0, 1, 2 and 300 listeners");
    for (i, addr) in addrs.iter().enumerate() {
        let entry = &fds[3 + i];
        assert_eq!(entry["fd"], 3 + i as i64);
        assert_eq!(
            entry["listening"],
            Value::Bool(true),
            "fd {}: {entry}",
            3 + i
        );
        assert_eq!(
            entry["local_addr"].as_str(),
            Some(addr.to_string().as_str()),
            "fd {}",
            3 + i
        );
    }
    let names: Vec<String> = (0..300).map(|i| format!("l{i}")).collect();
    assert_eq!(
        report["env"]["LISTEN_FDNAMES"].as_str(),
        Some(names.join(":").as_str())
    );
    assert_eq!(report["env"]["LISTEN_FDS"].as_str(), Some("300"));
}

fn children_of_report(path: &std::path::Path) -> Vec<u32> {
    let report = wait_json_file(path);
    report["children"]
        .as_array()
        .expect("children")
        .iter()
        .map(|c| c.as_u64().expect("pid") as u32)
        .collect()
}

#[test]
fn worker_children_do_not_survive_reload_or_stop() {
    let sb = Sandbox::new("worker_children_do_not_survive");
    let out = sb.join("probe.json");
    let (mut sup, _) = start(
        &sb,
        Run::probe(&["--children", "2"])
            .env("PROBE_OUT", &out)
            .args(standard(1)),
        1,
    );
    let first = children_of_report(&out);
    assert_eq!(first.len(), 2);
    let keeper = keeper_pid(&mut sup, 1);
    assert!(first.iter().all(|&p| proc::is_alive(p)));
    std::fs::remove_file(&out).expect("remove report");
    sup.reload(2).expect("reload");
    let second = children_of_report(&out);
    wait_until(DEADLINE, "the old worker's children to be gone", || {
        first
            .iter()
            .all(|&p| !proc::is_alive(p) || proc::is_zombie(p))
    });
    assert!(second.iter().all(|&p| proc::is_alive(p)));
    sup.signal(libc::SIGTERM);
    assert!(sup.wait_exit(DEADLINE).success());
    wait_until(
        DEADLINE,
        "the new worker's children to be gone after stop",
        || {
            second
                .iter()
                .all(|&p| !proc::is_alive(p) || proc::is_zombie(p))
        },
    );
    wait_until(DEADLINE, "the keeper to exit after the primary", || {
        all_gone(&[keeper])
    });
}

#[test]
fn einhorn_variables_on_request() {
    let sb = Sandbox::new("einhorn_variables");
    let out = sb.join("probe.json");
    let (_sup, _) = start(
        &sb,
        Run::probe(&[])
            .env("PROBE_OUT", &out)
            .args([
                "-l",
                "tcp://127.0.0.1:0",
                "-l",
                "tcp://127.0.0.1:0",
                "--einhorn-env",
            ])
            .args(standard(1)),
        1,
    );
    let env = &wait_json_file(&out)["env"];
    assert_eq!(env["EINHORN_FD_COUNT"], "2");
    assert_eq!(env["EINHORN_FD_0"], "3");
    assert_eq!(env["EINHORN_FD_1"], "4");
}

#[test]
fn workers_run_as_another_user() {
    if !reloadsup_integration_tests::require(
        "root to switch users",
        reloadsup_integration_tests::is_root(),
    ) {
        return;
    }
    let sb = Sandbox::new("workers_run_as_another_user");
    // The probe must be reachable by the other user: the sandbox is under /tmp. Sticky, like
    // /tmp, or the primary refuses a state dir inside it (anyone could replace it).
    let out = sb.join("probe.json");
    let _ = std::fs::set_permissions(
        sb.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    );
    // The build tree may be in a home directory of mode 0700: the other user runs a copy.
    let probe = sb.shared_copy(&bins::example("probe"));
    let (sup, _) = start(
        &sb,
        Run::new([probe])
            .env("PROBE_OUT", &out)
            .args(["--user", "65534", "--group", "65534"])
            .args(standard(1)),
        1,
    );
    let report = wait_json_file(&out);
    assert_eq!(report["uid"], 65534, "{report}");
    assert_eq!(report["gid"], 65534, "{report}");
    // Regression: switching users clears the parent-death signal, so a worker run as another
    // user outlived a SIGKILLed primary until the role set it again after the switch.
    let pid = report["pid"].as_u64().expect("pid") as u32;
    unsafe_kill(sup.pid(), libc::SIGKILL);
    wait_until(
        DEADLINE,
        "the other user's worker to die with the primary",
        || !proc::is_alive(pid) || proc::is_zombie(pid),
    );
}

fn unsafe_kill(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a pid this test started (a worker of its own supervisor).
    unsafe { libc::kill(pid as i32, sig) };
}

#[test]
fn prespawned_roles_take_over_reloads() {
    let sb = Sandbox::new("prespawned_roles");
    let (mut sup, addr) = start(
        &sb,
        Run::hello(&[]).args(standard(4)).args(["--prespawn", "4"]),
        4,
    );
    // Four workers and four spares, all children of the primary.
    let children = sup.wait_workers(8);
    let serving = |sup: &Supervisor| -> Vec<u32> {
        let status = sup.status_json();
        status["workers"]
            .as_array()
            .expect("workers")
            .iter()
            .filter(|w| w["state"] == "ready" || w["state"] == "starting")
            .map(|w| w["pid"].as_u64().expect("pid") as u32)
            .collect()
    };
    let workers = serving(&sup);
    let spares: Vec<u32> = children
        .iter()
        .copied()
        .filter(|p| !workers.contains(p))
        .collect();
    assert_eq!(
        spares.len(),
        4,
        "children {children:?}, workers {workers:?}"
    );

    let load = Load::start(addr, 8, Limits::default());
    load.wait_for_more_answers(50, DEADLINE);
    sup.reload(2).expect("reload");
    let new = serving(&sup);
    assert_eq!(new.len(), 4);
    assert!(
        new.iter().all(|p| spares.contains(p)),
        "generation 2 runs in the spares {spares:?}: {new:?}"
    );
    for generation in 3..=5 {
        sup.reload(generation).expect("reload");
    }
    load.wait_for_more_answers(50, DEADLINE);
    let report = load.stop();
    report.assert_no_failures();
    // Topped up again: four workers and four spares, none a zombie.
    let last = sup.wait_workers(8);
    sup.signal(libc::SIGTERM);
    assert!(sup.wait_exit(DEADLINE).success());
    wait_until(DEADLINE, "every worker and spare gone", || {
        last.iter()
            .all(|&p| !proc::is_alive(p) || proc::is_zombie(p))
    });
}

// ---------------------------------------------------------------------------------------------
// Promise 4 for a worker's children: the keeper and the per-worker cgroups.
// ---------------------------------------------------------------------------------------------

/// Whether this run must not skip what the machine cannot do (`CI=true`).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn pids_in_report(report: &Value, key: &str) -> Vec<u32> {
    report[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} in {report}"))
        .iter()
        .map(|c| c.as_u64().expect("pid") as u32)
        .collect()
}

fn all_gone(pids: &[u32]) -> bool {
    pids.iter()
        .all(|&p| !proc::is_alive(p) || proc::is_zombie(p))
}

/// The pid in the `n`th `keeper started as pid N` line of the log.
fn keeper_pid(sup: &mut Supervisor, n: usize) -> u32 {
    let line = sup.wait_for_nth_log("keeper started as pid ", n, DEADLINE);
    line.rsplit(' ')
        .next()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"))
}

/// Whether the supervisor put each worker in a cgroup of its own. Where it cannot (no cgroup2,
/// not allowed to create one), a test that needs it is skipped, except under `CI=true`, where
/// the machine is known to allow it.
fn uses_cgroups(sup: &Supervisor) -> bool {
    let log = sup.log();
    if log.contains("and a cgroup per worker under") {
        return true;
    }
    assert!(
        !in_ci(),
        "CI=true but the supervisor uses no per-worker cgroup:\n{log}"
    );
    eprintln!("no per-worker cgroup on this machine: the setsid() children are not checked");
    false
}

/// SIGKILLs, when the test ends, the `sleep` helpers a probe started that are still alive
/// (only those the guard under test failed to kill, or could not be asked to).
struct Sleepers(Vec<u32>);

impl Drop for Sleepers {
    fn drop(&mut self) {
        for &pid in &self.0 {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if proc::is_alive(pid) && cmdline.starts_with(b"sleep\0") {
                unsafe_kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// A new supervisor binds `addr` at once: nothing of the killed one still listens on it.
fn port_is_free_for_a_new_supervisor(sb: &Sandbox, addr: SocketAddr) {
    // The last holder's fds close as its exit completes, a moment after the test saw it die;
    // an orphan that kept the socket would hold the port for ever and fail this wait.
    wait_until(DEADLINE, "the port to be free", || {
        std::net::TcpListener::bind(addr).is_ok()
    });
    let mut sup = Run::probe(&[])
        .args(["-l".to_string(), format!("tcp://{addr}")])
        .args(standard(1))
        .start(sb);
    assert_eq!(sup.addr(), addr, "the new supervisor bound the same port");
    sup.wait_ready(1, 1);
}

#[test]
fn regression_killed_primary_left_worker_children_holding_the_port() {
    let sb = Sandbox::new("killed_primary_takes_children");
    let out = sb.join("probe.json");
    let (mut sup, addr) = start(
        &sb,
        Run::probe(&["--children", "2", "--setsid-children", "1"])
            .env("PROBE_OUT", &out)
            .args(standard(1)),
        1,
    );
    let report = wait_json_file(&out);
    let in_group = pids_in_report(&report, "children");
    let setsid = pids_in_report(&report, "setsid_children");
    let _sleepers = Sleepers([in_group.clone(), setsid.clone()].concat());
    let keeper = keeper_pid(&mut sup, 1);
    let mut doomed = vec![report["pid"].as_u64().expect("pid") as u32, keeper];
    doomed.extend(&in_group);
    let cgroups = uses_cgroups(&sup);
    if cgroups {
        doomed.extend(&setsid);
    }
    assert!(doomed.iter().all(|&p| proc::is_alive(p)), "{doomed:?}");
    sup.signal(libc::SIGKILL);
    sup.wait_exit(DEADLINE);
    wait_until(
        DEADLINE,
        "every process the worker started to die with the primary",
        || all_gone(&doomed),
    );
    if !cgroups {
        // Nothing can find a setsid() child without a cgroup; it would hold the port.
        drop(Sleepers(setsid));
    }
    port_is_free_for_a_new_supervisor(&sb, addr);
}

#[test]
fn killed_primary_takes_worker_children_without_cgroups() {
    let sb = Sandbox::new("killed_primary_no_cgroups");
    let out = sb.join("probe.json");
    let (mut sup, addr) = start(
        &sb,
        Run::probe(&["--children", "2"])
            .env("PROBE_OUT", &out)
            .env("RELOADSUP_NO_CGROUP", "1")
            .args(standard(1)),
        1,
    );
    assert!(sup
        .log()
        .contains("through process groups (RELOADSUP_NO_CGROUP is set)"));
    let report = wait_json_file(&out);
    let children = pids_in_report(&report, "children");
    let _sleepers = Sleepers(children.clone());
    sup.signal(libc::SIGKILL);
    sup.wait_exit(DEADLINE);
    wait_until(
        DEADLINE,
        "the worker's children to die with the primary",
        || all_gone(&children),
    );
    port_is_free_for_a_new_supervisor(&sb, addr);
}

#[test]
fn killed_keeper_is_restarted_and_still_guards_the_children() {
    let sb = Sandbox::new("killed_keeper_is_restarted");
    let out = sb.join("probe.json");
    // Without cgroups the new keeper knows the worker's group only because it was told again.
    let (mut sup, addr) = start(
        &sb,
        Run::probe(&["--children", "2"])
            .env("PROBE_OUT", &out)
            .env("RELOADSUP_NO_CGROUP", "1")
            .args(standard(1)),
        1,
    );
    let children = pids_in_report(&wait_json_file(&out), "children");
    let _sleepers = Sleepers(children.clone());
    let first = keeper_pid(&mut sup, 1);
    unsafe_kill(first, libc::SIGKILL);
    let second = keeper_pid(&mut sup, 2);
    assert_ne!(first, second);
    assert!(sup.log().contains("the keeper was killed by SIGKILL"));
    assert_ne!(
        proc::ppid_of(first),
        Some(sup.pid()),
        "the dead keeper was reaped"
    );
    assert!(
        children.iter().all(|&p| proc::is_alive(p)),
        "a keeper's death harms no worker"
    );
    sup.signal(libc::SIGKILL);
    sup.wait_exit(DEADLINE);
    wait_until(
        DEADLINE,
        "the worker's children to die with the primary after the keeper was replaced",
        || all_gone(&children),
    );
    // The keeper kills the groups first and exits after: wait for it, it is not instant.
    wait_until(DEADLINE, "the keeper to exit after the primary", || {
        all_gone(&[second])
    });
    port_is_free_for_a_new_supervisor(&sb, addr);
}

#[test]
fn setsid_children_do_not_survive_reload_or_stop() {
    let sb = Sandbox::new("setsid_children_do_not_survive");
    let out = sb.join("probe.json");
    let (mut sup, _) = start(
        &sb,
        Run::probe(&["--setsid-children", "1"])
            .env("PROBE_OUT", &out)
            .args(standard(1)),
        1,
    );
    let first = pids_in_report(&wait_json_file(&out), "setsid_children");
    let mut sleepers = Sleepers(first.clone());
    if !uses_cgroups(&sup) {
        return;
    }
    let base = format!("/reloadsup-{}", sup.pid());
    let base = sup
        .log()
        .lines()
        .find_map(|l| {
            let i = l.find("a cgroup per worker under ")?;
            Some(l[i..].split_whitespace().last()?.to_owned())
        })
        .filter(|b| b.ends_with(&base))
        .unwrap_or_else(|| panic!("no cgroup base ending in {base} in the log"));
    std::fs::remove_file(&out).expect("remove report");
    sup.reload(2).expect("reload");
    let second = pids_in_report(&wait_json_file(&out), "setsid_children");
    sleepers.0.extend(&second);
    wait_until(
        DEADLINE,
        "the old worker's setsid() child to be gone after the reload",
        || all_gone(&first),
    );
    assert!(second.iter().all(|&p| proc::is_alive(p)));
    sup.signal(libc::SIGTERM);
    assert!(sup.wait_exit(DEADLINE).success());
    wait_until(
        DEADLINE,
        "the new worker's setsid() child to be gone after stop",
        || all_gone(&second),
    );
    wait_until(DEADLINE, "the workers' cgroups to be removed", || {
        !std::path::Path::new(&base).exists()
    });
}

#[test]
fn stuck_keeper_is_replaced_without_blocking_the_primary() {
    let sb = Sandbox::new("stuck_keeper_is_replaced");
    let out = sb.join("probe.json");
    let mut sup = Run::probe(&["--children", "1"])
        .env("PROBE_OUT", &out)
        .env("RELOADSUP_NO_CGROUP", "1")
        .args([
            "-n",
            "4",
            "--ready",
            "immediate",
            "--graceful-timeout",
            "5s",
        ])
        .start(&sb);
    sup.wait_ready(1, 4);
    let stuck = keeper_pid(&mut sup, 1);
    // A stopped keeper reads nothing: the primary's sends fill the link's buffer (a few
    // hundred messages; each reload sends 8) and must fail rather than wait.
    unsafe_kill(stuck, libc::SIGSTOP);
    let mut generation = 1;
    while sup.count_in_log("the keeper does not keep up") == 0 {
        generation += 1;
        assert!(generation <= 200, "the stopped keeper was never replaced");
        sup.reload(generation)
            .expect("reload while the keeper is stopped");
    }
    let replacement = keeper_pid(&mut sup, 2);
    assert_ne!(stuck, replacement);
    assert!(sup.log().contains("the keeper was killed by SIGKILL"));
    // The new keeper was told the whole live set: the last generation's helpers die with the
    // primary.
    generation += 1;
    std::fs::remove_file(&out).ok();
    eprintln!("the keeper was replaced after {} reloads", generation - 2);
    sup.reload(generation)
        .expect("reload after the keeper was replaced");
    let children = children_of_report(&out);
    let _sleepers = Sleepers(children.clone());
    sup.signal(libc::SIGKILL);
    sup.wait_exit(DEADLINE);
    wait_until(
        DEADLINE,
        "the helpers to die with the primary after a stuck keeper was replaced",
        || all_gone(&children),
    );
}

/// Issue 22, defect 7: with `--user` and `--ready notify`, a state directory below a 0700
/// `XDG_RUNTIME_DIR` left every worker unable to send `READY=1` (EACCES), and every slot went
/// dead. The start is refused, naming the directory and `--state-dir`.
#[test]
fn a_state_dir_the_workers_user_cannot_reach_is_refused_at_start() {
    if !crate::running_as_root("a_state_dir_the_workers_user_cannot_reach_is_refused_at_start") {
        return;
    }
    let sb = Sandbox::new("state_dir_unreachable");
    let xdg = sb.join("xdg");
    std::fs::create_dir(&xdg).unwrap();
    std::fs::set_permissions(&xdg, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let out = Run::new(["/bin/sleep", "60"])
        .bare()
        .args(["-l", "tcp://127.0.0.1:0", "--name", "t"])
        .args(["--user", "65534", "--ready", "notify"])
        .env("XDG_RUNTIME_DIR", &xdg)
        .output(&sb, DEADLINE);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&xdg.display().to_string()) && err.contains("--state-dir"),
        "{err}"
    );
    // Reachable (0711, as reloadsup makes its own directories): it starts.
    std::fs::set_permissions(&xdg, std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
    let mut sup = Run::new(["/bin/sleep", "60"])
        .bare()
        .args(["-l", "tcp://127.0.0.1:0", "--name", "t"])
        .args(["--user", "65534", "--ready", "notify"])
        .env("XDG_RUNTIME_DIR", &xdg)
        .start(&sb);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!sup.has_exited(), "{}", sup.log());
}
