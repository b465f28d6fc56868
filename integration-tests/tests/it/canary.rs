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
    let live = |generation: u64| {
        status["workers"]
            .as_array()
            .map(|w| {
                w.iter()
                    .filter(|w| {
                        w["generation"] == generation
                            && w["pid"].as_u64().unwrap_or(0) != 0
                            && w["state"] != "draining"
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    (live(1), live(2))
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
    // Watch the status while the reload runs: a bounded loop that ends with the reload.
    let began = Instant::now();
    let mut seen = Vec::new();
    while !reload.is_finished() && began.elapsed() < DEADLINE {
        let c = counts(&sup);
        if seen.last() != Some(&c) {
            seen.push(c);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = reload.join().expect("the ctl thread");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "ctl reload --canary 1: {stdout}{}\nstatus seen: {seen:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}");
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
