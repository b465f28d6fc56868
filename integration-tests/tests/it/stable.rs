//! `--stable-for`: the old generation keeps serving beside a ready new one for the stability
//! window; a new worker that exits inside it rolls the reload back, and only after it does the
//! old generation drain.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use reloadsup_integration_tests::{
    bins, proc, shell_quote, wait_until, Limits, Load, Run, Sandbox, Supervisor, DEADLINE,
};

use crate::{standard, start};

const WINDOW: &str = "3s";

/// `hello` started from a script, so a reload re-reads the script.
fn good_release(sb: &Sandbox) -> PathBuf {
    sb.exec_script("server", &bins::example("hello"), &["--delay", "200ms"])
}

/// A release that becomes ready (hello, a child of the script, sends READY=1 from the
/// worker's process group; `LISTEN_PID` is set to hello's own pid, which the fds are for now)
/// and dies about 1 s later with status 1. On the stop signal it stops hello and exits at once,
/// so a drained one leaves nothing behind.
fn dying_release(sb: &Sandbox) -> PathBuf {
    let hello = shell_quote(&bins::example("hello").to_string_lossy());
    sb.write_script(
        "server",
        &format!(
            "#!/bin/sh\n\
             sh -c 'export LISTEN_PID=$$; exec \"$0\" --delay 200ms \"$@\"' {hello} \"$@\" &\n\
             child=$!\n\
             trap 'kill -TERM $child; wait $child; exit 0' TERM\n\
             sleep 1.2 &\n\
             wait $!\n\
             kill -TERM $child\n\
             wait $child\n\
             exit 1\n"
        ),
    )
}

fn start_stable(sb: &Sandbox) -> (Supervisor, std::net::SocketAddr, Vec<u32>) {
    let script = good_release(sb);
    let run = Run::new([&script])
        .args(standard(2))
        .args(["--stable-for", WINDOW]);
    let (sup, addr) = start(sb, run, 2);
    let old = sup.wait_workers(2);
    (sup, addr, old)
}

#[test]
fn worker_exit_in_the_stability_window_rolls_back_and_old_keeps_serving() {
    let sb = Sandbox::new("worker_exit_in_the_stability_window_rolls_back");
    let (sup, addr, old) = start_stable(&sb);
    let load = Load::start(addr, 4, Limits::default());
    load.wait_for_more_answers(20, DEADLINE);

    dying_release(&sb);
    let began = Instant::now();
    let out = sup.ctl(&["reload"]);
    let took = began.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "ctl reload ({took:?}): {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "a rolled-back reload exits 1");
    assert!(
        stdout.contains("rolled back: ")
            && stdout.contains(" s into the stability window: worker ")
            && stdout.contains("exited with status 1"),
        "the outcome names the window and the worker: {stdout}"
    );
    // Rolled back at once: well before the window would have ended (ready ~0.2 s, died ~1.2 s).
    assert!(took < Duration::from_millis(3000), "took {took:?}");
    assert!(stdout
        .contains("generation 2 is ready; generation 1 keeps serving for the 3s stability window"));

    // The new generation is stopped and reaped; the old workers are the very same processes.
    wait_until(
        DEADLINE,
        "only the old workers as the primary's children",
        || sup.children() == old,
    );
    assert!(!old.iter().any(|&p| proc::is_zombie(p)));
    load.wait_for_more_answers(50, DEADLINE);
    let report = load.stop();
    eprintln!("{}", report.summary());
    report.assert_no_failures();
    // Both generations served side by side in the window, the old ones throughout.
    assert!(
        report.generations().contains(&2),
        "{:?}",
        report.generations()
    );
    let answered_by_old = report
        .pids_by_generation()
        .get(&1)
        .cloned()
        .unwrap_or_default();
    assert_eq!(answered_by_old, old.iter().copied().collect());
    assert_eq!(sup.workers(), old, "the old workers are untouched");
    let status = sup.status_json();
    assert_eq!(status["generation"], 1);
    assert_eq!(status["last_reload"]["outcome"], "rolled back");
}

#[test]
fn good_release_drains_the_old_generation_only_after_the_window() {
    drains_after_the_window("good_release_drains_only_after_the_window", false);
}

/// The window is in the state handed to the new image: it still ends on time, and the new
/// image answers the waiting `ctl reload` with the same window.
#[test]
fn stability_window_survives_an_upgrade_in_place() {
    drains_after_the_window("stability_window_survives_an_upgrade", true);
}

fn drains_after_the_window(name: &str, upgrade_in_window: bool) {
    let sb = Sandbox::new(name);
    let (mut sup, addr, old) = start_stable(&sb);
    let load = Load::start(addr, 4, Limits::default());
    load.wait_for_more_answers(20, DEADLINE);

    let control = sup.control_path();
    let reload = std::thread::spawn(move || {
        let began = Instant::now();
        let out = reloadsup_integration_tests::ctl(&control, &["reload"]);
        (out, began.elapsed())
    });
    let window_opened = sup.wait_for_log("keeps serving for the 3s stability window", DEADLINE);
    eprintln!("{window_opened}");
    let opened = Instant::now();
    if upgrade_in_window {
        let pid = sup.pid();
        let out = sup.ctl(&["upgrade"]);
        assert!(
            out.status.success(),
            "ctl upgrade: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(sup.pid(), pid);
        assert_eq!(sup.status_json()["upgrades"], 1);
        assert!(
            opened.elapsed() < Duration::from_secs(2),
            "the upgrade took too long to land inside the window"
        );
    }
    // For 2 s into the window every old worker is alive (checked all along, a bounded loop).
    while opened.elapsed() < Duration::from_secs(2) {
        for &pid in &old {
            assert!(
                proc::is_alive(pid) && !proc::is_zombie(pid),
                "old worker {pid} gone {:?} into the window",
                opened.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(sup.status_json()["generation"], 1, "still in the window");
    let (out, took) = reload.join().expect("the ctl thread");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("ctl reload ({took:?}): {stdout}");
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("generation 2 is serving (stable for 3s)"),
        "{stdout}"
    );
    assert!(took >= Duration::from_secs(3), "took {took:?}");
    // Then the old generation drains and is gone.
    wait_until(DEADLINE, "the old workers gone", || {
        old.iter()
            .all(|&p| !proc::is_alive(p) || proc::is_zombie(p))
            && sup.children().iter().all(|p| !old.contains(p))
    });
    let new = sup.wait_workers(2);
    assert!(new.iter().all(|p| !old.contains(p)));
    load.wait_for_generation(2, DEADLINE);
    let report = load.stop();
    eprintln!("{}", report.summary());
    report.assert_no_failures();
}
