//! Canary reloads (`ctl reload --canary N`): N workers of the new generation start beside the
//! whole old one; only once they are ready (and stable for `--stable-for`) does the rest start;
//! a canary that fails rolls back the canaries alone, the old workers never signalled.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Instant;

use reloadsup_integration_tests::{bins, Limits, Load, Run, Sandbox, Supervisor, DEADLINE};

use crate::{standard, start};

/// `hello` started from a script, so a reload re-reads the script.
fn good_release(sb: &Sandbox) -> PathBuf {
    sb.exec_script("server", &bins::example("hello"), &["--delay", "200ms"])
}

fn start_four(sb: &Sandbox) -> (Supervisor, std::net::SocketAddr, Vec<u32>) {
    let script = good_release(sb);
    let run = Run::new([&script])
        .args(standard(4))
        .args(["--stable-for", "1s"]);
    let (sup, addr) = start(sb, run, 4);
    let old = sup.wait_workers(4);
    (sup, addr, old)
}

/// (workers of generation 1 not draining, workers of generation 2 not draining).
fn counts(sup: &Supervisor) -> (usize, usize) {
    let status = sup.status_json();
    (live_pids(&status, 1).len(), live_pids(&status, 2).len())
}

#[test]
fn canary_starts_one_new_worker_beside_four_old_then_the_rest() {
    let sb = Sandbox::new("canary_starts_one_new_worker_beside_four_old");
    let (sup, addr, old) = start_four(&sb);
    let load = Load::start(addr, 4, Limits::default());
    load.wait_for_more_answers(20, DEADLINE);

    let control = sup.control_path();
    let reload = std::thread::spawn(move || {
        reloadsup_integration_tests::ctl(&control, &["reload", "--canary", "1"])
    });
    let old_set: BTreeSet<u32> = old.iter().copied().collect();
    let (seen, stdout) = reload_succeeds(&sup, reload, &old_set);
    assert!(
        stdout.contains(
            "canary: starting 1 of 4 workers of generation 2; generation 1 keeps serving"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "canary: 1 of 4 workers of generation 2 ready and stable for 1s; starting the other 3"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("generation 2 is serving"), "{stdout}");
    // One new worker beside all four old ones, then the rest, the old ones still serving.
    let canary = seen.iter().position(|&c| c == (4, 1));
    let rest = seen.iter().position(|&c| c == (4, 4));
    assert!(
        canary.is_some() && rest.is_some() && canary < rest,
        "status during the reload: {seen:?}"
    );
    assert!(
        seen.iter()
            .all(|&(o, n)| n == 0 || n == 1 || n == 4 || o == 0 || o == 4),
        "the rest starts at once, after the canary: {seen:?}"
    );
    assert!(
        !seen.iter().any(|&(o, n)| o < 4 && n < 4),
        "the old generation keeps every slot until the whole new one is ready: {seen:?}"
    );
    let new: BTreeSet<u32> = sup.wait_workers(4).into_iter().collect();
    assert!(new.iter().all(|p| !old.contains(p)));
    load.wait_for_generation(2, DEADLINE);
    let report = load.stop();
    eprintln!("{}", report.summary());
    report.assert_no_failures();
}

#[test]
fn failing_canary_leaves_the_old_workers_and_no_new_one() {
    let sb = Sandbox::new("failing_canary_leaves_the_old_workers");
    let (sup, addr, old) = start_four(&sb);
    let load = Load::start(addr, 4, Limits::default());
    load.wait_for_more_answers(20, DEADLINE);
    let releases = [
        (
            "exits at start",
            "#!/bin/sh\nexit 1\n",
            "exited with status 1 before it was ready",
        ),
        (
            "never ready",
            "#!/bin/sh\nexec sleep 30\n",
            "was not ready within 2s",
        ),
    ];
    for (how, script, reason) in releases {
        sb.write_script("server", script);
        let out = sup.ctl(&["reload", "--canary", "1"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!(
            "{how}: ctl reload --canary 1: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            out.status.code(),
            Some(1),
            "{how}: a rolled-back reload exits 1"
        );
        assert!(
            stdout.contains("rolled back: canary: worker 0 (pid ") && stdout.contains(reason),
            "{how}: {stdout}"
        );
        assert!(!stdout.contains("starting the other"), "{how}: {stdout}");
        // The canary is gone, the four old workers are the very same processes.
        let mut now = sup.wait_workers(4);
        now.sort();
        let mut want = old.clone();
        want.sort();
        assert_eq!(now, want, "{how}: the old workers are untouched");
        let status = sup.status_json();
        assert_eq!(status["generation"], 1, "{how}");
        assert_eq!(status["last_reload"]["outcome"], "rolled back", "{how}");
        assert_eq!(counts(&sup), (4, 0), "{how}");
    }
    load.wait_for_more_answers(50, DEADLINE);
    let report = load.stop();
    eprintln!("{}", report.summary());
    report.assert_no_failures();
    let answered_by_old = report
        .pids_by_generation()
        .get(&1)
        .cloned()
        .unwrap_or_default();
    assert!(answered_by_old.iter().all(|p| old.contains(p)));
}

/// The console's `reload --canary N` is the same canary reload, with its steps shown.
#[test]
fn canary_reload_from_the_console_shows_each_step() {
    let sb = Sandbox::new("canary_reload_from_the_console");
    let admin = crate::console::Admin::start_with(&sb, 2, bins::example("console_commands"), &[]);
    let out = admin.console(&["reload --canary 1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("canary: starting 1 of 2 workers of generation 2")
            && stdout
                .contains("canary: 1 of 2 workers of generation 2 ready; starting the other 1"),
        "{stdout}"
    );
    let out = admin.console(&["reload --canary x"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("error: "),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `--canary N` applies to every reload; `ctl reload --canary 0` asks for none this once.
#[test]
fn canary_flag_applies_to_every_reload_unless_ctl_says_otherwise() {
    let sb = Sandbox::new("canary_flag_applies_to_every_reload");
    let script = good_release(&sb);
    let run = Run::new([&script])
        .args(standard(2))
        .args(["--canary", "1"]);
    let (sup, _addr) = start(&sb, run, 2);
    for (args, canary) in [
        (&["reload"][..], true),
        (&["reload", "--canary", "0"][..], false),
        (&["reload"][..], true),
    ] {
        let out = sup.ctl(args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!("ctl {args:?}: {stdout}");
        assert_eq!(out.status.code(), Some(0), "{stdout}");
        assert_eq!(
            stdout.contains("canary: starting 1 of 2 workers"),
            canary,
            "{args:?}: {stdout}"
        );
    }
    assert_eq!(sup.status_json()["generation"], 4);
}

/// A copy of the built reloadsup in the sandbox, for the primary to run and upgrade from.
fn copy_of_reloadsup(sb: &Sandbox) -> PathBuf {
    let dir = sb.join("bin");
    std::fs::create_dir_all(&dir).expect("mkdir bin");
    let copy = dir.join("reloadsup");
    std::fs::copy(bins::reloadsup(), &copy).expect("copy reloadsup");
    copy
}

/// The live pids of `generation` that are not draining.
fn live_pids(status: &serde_json::Value, generation: u64) -> BTreeSet<u32> {
    status["workers"]
        .as_array()
        .map(|w| {
            w.iter()
                .filter(|w| w["generation"] == generation && w["state"] != "draining")
                .filter_map(|w| w["pid"].as_u64().filter(|&p| p != 0))
                .map(|p| p as u32)
                .collect()
        })
        .unwrap_or_default()
}

/// `ctl upgrade [ARGS]` must succeed; returns what it printed.
fn upgrade_ok(sup: &Supervisor, args: &[&str]) -> String {
    let (ok, text) = crate::upgrade::upgrade(sup, args);
    assert!(ok, "ctl upgrade: {text}");
    assert!(text.contains("upgraded in place"), "ctl upgrade: {text}");
    text
}

/// Watches a `ctl reload` thread to its end ([`watch_reload`]), which must exit 0: the
/// status counts seen and what it printed.
fn reload_succeeds(
    sup: &Supervisor,
    reload: std::thread::JoinHandle<std::process::Output>,
    old: &BTreeSet<u32>,
) -> (Vec<(usize, usize)>, String) {
    let seen = watch_reload(sup, &reload, old);
    let out = reload.join().expect("the ctl thread");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "ctl reload: {stdout}{}\nstatus seen: {seen:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    (seen, stdout)
}

/// Watches the status until `reload` (a `ctl reload` thread) has its answer: the
/// (generation-1, generation-2) live counts seen, in order, and the old generation's pids in
/// every sample taken while generation 2 was not whole yet.
fn watch_reload(
    sup: &Supervisor,
    reload: &std::thread::JoinHandle<std::process::Output>,
    old: &BTreeSet<u32>,
) -> Vec<(usize, usize)> {
    let began = Instant::now();
    let mut seen = Vec::new();
    while !reload.is_finished() && began.elapsed() < DEADLINE {
        let status = sup.status_json();
        let (o, n) = (live_pids(&status, 1), live_pids(&status, 2));
        if n.len() < 4 {
            assert_eq!(
                &o, old,
                "the old workers serve, the very same processes, until the whole new generation is ready: {seen:?}"
            );
        }
        let c = (o.len(), n.len());
        if seen.last() != Some(&c) {
            seen.push(c);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    seen
}

/// Issue 11 item 3 across issue 8's upgrade in place: an upgrade while the canary proves
/// itself (ready, inside `--stable-for`, the other three not started) carries the canary step
/// across, as a reload in flight is (ARCHITECTURE.md "an upgrade during a reload"): the new
/// image starts the other three once the canary's window ends, the old workers serve until the
/// whole new generation is, `ctl reload` gets its answer from the new image, no request fails.
#[test]
fn an_upgrade_during_the_canary_step_carries_it_across() {
    let sb = Sandbox::new("upgrade_during_the_canary_step");
    let bin = copy_of_reloadsup(&sb);
    let script = good_release(&sb);
    let run = Run::new([&script])
        .args(standard(4))
        .args(["--stable-for", "3s", "--canary", "1"])
        .program(&bin);
    let (mut sup, addr) = start(&sb, run, 4);
    let old: BTreeSet<u32> = sup.wait_workers(4).into_iter().collect();
    let load = Load::start(addr, 4, Limits::default());
    load.wait_for_more_answers(20, DEADLINE);

    let control = sup.control_path();
    let reload =
        std::thread::spawn(move || reloadsup_integration_tests::ctl(&control, &["reload"]));
    sup.wait_for_log(
        "canary: 1 of 4 workers of generation 2 ready; generation 1 keeps serving for the 3s stability window",
        DEADLINE,
    );
    upgrade_ok(&sup, &[]);
    assert!(
        !sup.log().contains("starting the other 3"),
        "the upgrade must land inside the canary's window; make --stable-for longer"
    );
    // Still the canary step in the new image: one new worker beside the four old ones.
    let status = sup.status_json();
    assert_eq!(status["upgrades"], 1);
    assert_eq!(live_pids(&status, 1), old);
    assert_eq!(live_pids(&status, 2).len(), 1, "{status}");

    let (seen, stdout) = reload_succeeds(&sup, reload, &old);
    assert!(
        stdout.contains(
            "canary: 1 of 4 workers of generation 2 ready and stable for 3s; starting the other 3"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("generation 2 is serving"), "{stdout}");
    let rest = seen.iter().position(|&c| c == (4, 4));
    assert!(
        seen.first() == Some(&(4, 1)) && rest.is_some(),
        "after the upgrade the canary alone, then the rest: {seen:?}"
    );
    let new: BTreeSet<u32> = sup.wait_workers(4).into_iter().collect();
    assert!(
        new.is_disjoint(&old),
        "the old generation drained once it was done"
    );
    assert_eq!(sup.status_json()["generation"], 2);
    load.wait_for_generation(2, DEADLINE);
    let report = load.stop();
    eprintln!("{}", report.summary());
    report.assert_no_failures();
}

/// A `ctl reload --canary 2` that arrives while an upgrade's pre-flight runs, and is queued
/// behind a canary reload in its canary step, keeps its canary count across the exec: the new
/// image runs it with two canaries, not the config's one.
#[test]
fn a_reload_queued_during_an_upgrade_keeps_its_canary_count() {
    let sb = Sandbox::new("reload_queued_during_an_upgrade");
    let bin = copy_of_reloadsup(&sb);
    // The binary to upgrade to: the same reloadsup, whose pre-flight waits for the test's go
    // (at most 5 s, inside the 10 s pre-flight timeout), so the reload surely lands in it.
    let gate = sb.join("go");
    let wrapper = sb.write_script(
        "upgrade-to",
        &format!(
            "#!/bin/sh\nif [ \"$1\" = __preflight ]; then\n  i=0\n  while [ ! -e {gate} ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done\nfi\nexec {bin} \"$@\"\n",
            gate = reloadsup_integration_tests::shell_quote(&gate.to_string_lossy()),
            bin = reloadsup_integration_tests::shell_quote(&bin.to_string_lossy()),
        ),
    );
    let script = good_release(&sb);
    let run = Run::new([&script])
        .args(standard(4))
        .args(["--stable-for", "2s", "--canary", "1"])
        .program(&bin);
    let (mut sup, addr) = start(&sb, run, 4);
    let old: BTreeSet<u32> = sup.wait_workers(4).into_iter().collect();
    let load = Load::start(addr, 4, Limits::default());
    load.wait_for_more_answers(20, DEADLINE);

    let control = sup.control_path();
    let first = std::thread::spawn(move || reloadsup_integration_tests::ctl(&control, &["reload"]));
    sup.wait_for_log("canary: starting 1 of 4 workers of generation 2", DEADLINE);
    let control = sup.control_path();
    let to = wrapper.to_string_lossy().into_owned();
    let upgrade = std::thread::spawn(move || {
        reloadsup_integration_tests::ctl(&control, &["upgrade", "--binary", &to])
    });
    sup.wait_for_log("upgrade: pre-flight of ", DEADLINE);
    // Its progress goes to a file, read while it waits: queued behind generation 2.
    let printed = sb.join("second.out");
    let mut second = std::process::Command::new(bins::reloadsup())
        .args(["ctl", "--control"])
        .arg(sup.control_path())
        .args(["reload", "--canary", "2"])
        .stdout(std::fs::File::create(&printed).expect("create second.out"))
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn ctl reload --canary 2");
    reloadsup_integration_tests::wait_until(DEADLINE, "the second reload to be queued", || {
        std::fs::read_to_string(&printed).is_ok_and(|t| t.contains("this one follows it"))
    });
    assert!(
        !sup.log().contains("upgrade: exec"),
        "the second reload must arrive while the pre-flight runs"
    );
    std::fs::write(&gate, "").expect("open the gate");
    let out = upgrade.join().expect("the upgrade thread");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("upgraded in place"),
        "ctl upgrade: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let first = first.join().expect("the first ctl reload thread");
    let began = Instant::now();
    let status = loop {
        if let Some(status) = second.try_wait().expect("wait for ctl reload --canary 2") {
            break Some(status);
        }
        if began.elapsed() > DEADLINE {
            let _ = second.kill();
            let _ = second.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let second_stdout = std::fs::read_to_string(&printed).unwrap_or_default();
    for (what, code, stdout, canary) in [
        (
            "first",
            first.status.code(),
            String::from_utf8_lossy(&first.stdout).into_owned(),
            "1 of 4 workers of generation 2",
        ),
        (
            "second",
            status.and_then(|s| s.code()),
            second_stdout,
            "2 of 4 workers of generation 3",
        ),
    ] {
        eprintln!("{what} ctl reload: {stdout}");
        assert_eq!(code, Some(0), "{what}: {stdout}");
        assert!(
            stdout.contains(&format!("canary: starting {canary}")),
            "{what}: {stdout}"
        );
        assert!(
            stdout.contains(&format!(
                "canary: {canary} ready and stable for 2s; starting the other"
            )),
            "{what}: {stdout}"
        );
    }
    let status = sup.status_json();
    assert_eq!(status["generation"], 3);
    assert_eq!(status["upgrades"], 1);
    let new: BTreeSet<u32> = sup.wait_workers(4).into_iter().collect();
    assert!(new.is_disjoint(&old));
    load.wait_for_generation(3, DEADLINE);
    let report = load.stop();
    eprintln!("{}", report.summary());
    report.assert_no_failures();
}
