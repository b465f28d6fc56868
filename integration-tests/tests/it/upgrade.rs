//! Upgrade in place (issue 8): the primary re-execs itself under the same pid, keeping its
//! workers, sockets and clients; a binary that fails its pre-flight changes nothing.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use reloadsup_integration_tests::{
    bins, ctl, output_with_timeout, proc, wait_until, Limits, Load, Run, Sandbox, Supervisor,
    DEADLINE,
};

use crate::{standard, start};

/// A copy of the built reloadsup in the sandbox, so the test can replace it on disk.
fn copy_of_reloadsup(sb: &Sandbox, name: &str) -> PathBuf {
    let dir = sb.join("bin");
    std::fs::create_dir_all(&dir).expect("mkdir bin");
    let copy = dir.join(name);
    std::fs::copy(bins::reloadsup(), &copy).expect("copy reloadsup");
    copy
}

/// `ctl upgrade [ARGS]`: exit status and what it printed (stdout and stderr).
pub(crate) fn upgrade(sup: &Supervisor, args: &[&str]) -> (bool, String) {
    let mut all = vec!["upgrade"];
    all.extend(args);
    let out = sup.ctl(&all);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.code().is_some(),
        "ctl upgrade was killed: {text}"
    );
    (out.status.success(), text)
}

/// The primary's fd count once it is down to `expected`, or what it is after 2 s: a leak never
/// comes back down, while the connection of a `ctl` that just exited is closed a moment later,
/// when the primary reads its end-of-file.
fn settled_fds(pid: u32, expected: usize) -> usize {
    let mut n = proc::fds_of(pid).len();
    for _ in 0..100 {
        if n <= expected {
            break;
        }
        thread::sleep(Duration::from_millis(20));
        n = proc::fds_of(pid).len();
    }
    n
}

fn sorted_workers(sup: &Supervisor) -> Vec<u32> {
    let mut w = sup.workers();
    w.sort_unstable();
    w
}

fn upgrades(sup: &Supervisor) -> u64 {
    sup.status_json()["upgrades"]
        .as_u64()
        .expect("status --json has upgrades")
}

/// The inode of each of the primary's sockets, by fd: the same kernel sockets after an upgrade.
fn socket_inodes(pid: u32) -> Vec<(i32, String)> {
    proc::fds_of(pid)
        .into_iter()
        .filter(|(_, target)| target.starts_with("socket:"))
        .collect()
}

#[test]
fn upgrades_under_load_keep_the_pid_the_workers_and_every_request() {
    let sb = Sandbox::new("upgrades_under_load");
    let bin = copy_of_reloadsup(&sb, "reloadsup");
    let run = Run::hello(&["--delay", "200ms"])
        .args(standard(4))
        .program(&bin);
    let (mut sup, addr) = start(&sb, run, 4);
    let pid = sup.pid();
    let workers = sup.wait_workers(4);
    let load = Load::start(addr, 8, Limits::default());
    load.wait_for_more_answers(20, DEADLINE);
    for n in 1..=20u64 {
        let before = sorted_workers(&sup);
        let (ok, text) = upgrade(&sup, &[]);
        assert!(ok, "upgrade {n} failed: {text}");
        assert!(text.contains(&format!("pid {pid}")), "{text}");
        assert_eq!(sup.status_json()["pid"].as_u64(), Some(pid as u64));
        assert_eq!(sorted_workers(&sup), before, "workers after upgrade {n}");
        load.wait_for_more_answers(5, DEADLINE);
    }
    let report = load.stop();
    eprintln!("{}", report.summary());
    report.assert_no_failures();
    assert_eq!(upgrades(&sup), 20);
    let mut original = workers;
    original.sort_unstable();
    assert_eq!(sorted_workers(&sup), original, "no worker was restarted");
    assert!(!sup.has_exited());
    assert_eq!(report.generations().len(), 1, "no reload happened");
}

#[test]
fn a_hundred_upgrades_leak_no_fd_and_no_memory() {
    let sb = Sandbox::new("a_hundred_upgrades");
    let bin = copy_of_reloadsup(&sb, "reloadsup");
    let run = Run::hello(&[])
        .args(standard(2))
        .args(["--prespawn", "1"])
        .program(&bin);
    let (sup, _addr) = start(&sb, run, 2);
    let pid = sup.pid();
    let (ok, text) = upgrade(&sup, &[]);
    assert!(ok, "{text}");
    // The spare is topped up 200 ms after start, and the primary closes a `ctl` connection
    // when it reads its end-of-file, a moment after `ctl` exited: the settled count is the
    // lowest one seen over a while.
    thread::sleep(Duration::from_millis(400));
    let fds_after_1 = (0..10)
        .map(|_| {
            thread::sleep(Duration::from_millis(30));
            proc::fds_of(pid).len()
        })
        .min()
        .expect("samples");
    let rss_after_1 = proc::status_kb(pid, "VmRSS").expect("VmRSS");
    for n in 2..=100 {
        let (ok, text) = upgrade(&sup, &[]);
        assert!(ok, "upgrade {n}: {text}");
    }
    let fds_after_100 = settled_fds(pid, fds_after_1);
    let rss_after_100 = proc::status_kb(pid, "VmRSS").expect("VmRSS");
    eprintln!(
        "fds: {fds_after_1} after 1 upgrade, {fds_after_100} after 100; RSS {rss_after_1} KiB, {rss_after_100} KiB"
    );
    assert_eq!(fds_after_100, fds_after_1, "fds after 100 upgrades");
    // A fresh image maps the same binary and allocates the same state: a small tolerance
    // for the allocator's and the page cache's noise.
    assert!(
        rss_after_100 <= rss_after_1 + rss_after_1 / 10 + 512,
        "RSS grew from {rss_after_1} KiB to {rss_after_100} KiB"
    );
    assert_eq!(upgrades(&sup), 100);
}

#[test]
fn an_upgrade_runs_the_binary_that_replaced_the_file_on_disk() {
    let sb = Sandbox::new("upgrade_replaced_binary");
    let bin = copy_of_reloadsup(&sb, "reloadsup");
    let run = Run::hello(&[]).args(standard(1)).program(&bin);
    let (sup, _addr) = start(&sb, run, 1);
    let pid = sup.pid();
    let exe = || std::fs::read_link(format!("/proc/{pid}/exe")).expect("readlink exe");
    assert_eq!(exe(), bin);
    let status = sup.status_json();
    assert_eq!(status["upgrades"].as_u64(), Some(0));
    assert!(status["version"].as_str().is_some_and(|v| !v.is_empty()));
    // The new version arrives as a new file renamed over the old one, like a package manager.
    let new = copy_of_reloadsup(&sb, "reloadsup.new");
    let new_inode = std::fs::metadata(&new).expect("stat").ino();
    std::fs::rename(&new, &bin).expect("rename");
    let old_exe = exe();
    assert!(
        old_exe.to_string_lossy().ends_with(" (deleted)"),
        "the running image is the replaced file: {}",
        old_exe.display()
    );
    let (ok, text) = upgrade(&sup, &[]);
    assert!(ok, "{text}");
    assert_eq!(exe(), bin, "/proc/PID/exe names the new file");
    let running_inode = std::fs::metadata(format!("/proc/{pid}/exe"))
        .expect("stat exe")
        .ino();
    assert_eq!(running_inode, new_inode, "the new file runs");
    let status = sup.status_json();
    assert_eq!(status["pid"].as_u64(), Some(pid as u64));
    assert_eq!(status["upgrades"].as_u64(), Some(1));
    assert_eq!(
        status["version"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "the version of the image that answers"
    );
}

#[test]
fn a_broken_binary_is_refused_and_changes_nothing() {
    let sb = Sandbox::new("upgrade_broken_binary");
    let bin = copy_of_reloadsup(&sb, "reloadsup");
    let run = Run::hello(&[]).args(standard(2)).program(&bin);
    let (mut sup, addr) = start(&sb, run, 2);
    let pid = sup.pid();
    let workers = sorted_workers(&sup);
    let sockets = socket_inodes(pid);
    let fails = sb.write_script("fails.sh", "#!/bin/sh\necho broken >&2\nexit 1\n");
    let not_executable = sb.write("not-executable", "#!/bin/sh\nexit 0\n");
    let missing = sb.join("missing");
    let cases: [(&Path, &str); 3] = [
        (&fails, "the pre-flight exited with status 1"),
        (&not_executable, "not executable"),
        (&missing, "no such file or directory"),
    ];
    for (path, reason) in cases {
        let (ok, text) = upgrade(&sup, &["--binary", path.to_str().expect("utf-8 path")]);
        assert!(!ok, "upgrade to {} succeeded: {text}", path.display());
        assert!(
            text.contains("upgrade refused") && text.contains(reason),
            "upgrade to {}: {text}",
            path.display()
        );
        assert_eq!(sup.status_json()["pid"].as_u64(), Some(pid as u64));
        assert_eq!(sorted_workers(&sup), workers);
        assert_eq!(socket_inodes(pid), sockets, "the primary's sockets");
        assert_eq!(upgrades(&sup), 0);
        assert!(reloadsup_integration_tests::tcp_connect_ok(addr));
    }
    let (ok, text) = upgrade(&sup, &[]);
    assert!(ok, "a good upgrade after the refusals: {text}");
    assert_eq!(upgrades(&sup), 1);
    assert_eq!(sorted_workers(&sup), workers);
    assert!(sup.reload(2).is_ok(), "a reload after the upgrade");
}

/// SIGUSR2 and SIGHUPs at once, in both orders, and SIGHUPs all through the exec window: the
/// primary survives, every reload is served (the kernel merges a standard signal that is
/// already pending, so a burst of HUPs is at least one reload), and no request fails.
#[test]
fn signal_storms_around_an_upgrade_lose_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let sb = Sandbox::new("upgrade_signal_storms");
    let bin = copy_of_reloadsup(&sb, "reloadsup");
    let run = Run::hello(&["--delay", "100ms"])
        .args(standard(2))
        .program(&bin);
    let (mut sup, addr) = start(&sb, run, 2);
    let pid = sup.pid();
    let load = Load::start(addr, 4, Limits::default());
    load.wait_for_more_answers(20, DEADLINE);
    for round in 0..6u32 {
        let serving_before = sup.count_in_log(" is serving");
        // A HUP every 100 µs until the new image is up: some land in the exec window,
        // blocked in the old image and delivered in the new one. Bounded in count; the pid
        // is our unreaped child, so it cannot name another process.
        let stop = Arc::new(AtomicBool::new(false));
        let hammer = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut sent = 0u32;
                while !stop.load(Ordering::Relaxed) && sent < 50_000 {
                    let _ = proc::kill(pid, libc::SIGHUP);
                    sent += 1;
                    thread::sleep(Duration::from_micros(100));
                }
                sent
            })
        };
        if round % 2 == 0 {
            sup.signal(libc::SIGUSR2);
            for _ in 0..3 {
                sup.signal(libc::SIGHUP);
            }
        } else {
            for _ in 0..3 {
                sup.signal(libc::SIGHUP);
            }
            sup.signal(libc::SIGUSR2);
        }
        let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sup.wait_for_nth_log("upgraded in place", round as usize + 1, DEADLINE);
        }));
        stop.store(true, Ordering::Relaxed);
        let sent = hammer.join().expect("the signal thread");
        if let Err(e) = waited {
            std::panic::resume_unwind(e);
        }
        eprintln!("round {round}: {sent} SIGHUPs around the upgrade");
        sup.wait_for_nth_log(" is serving", serving_before + 1, DEADLINE);
        // Idle again: every reload of the storm is done.
        wait_until(DEADLINE, "the reloads of the storm to finish", || {
            let s = sup.status_json();
            s["workers"]
                .as_array()
                .is_some_and(|w| w.iter().all(|w| w["state"] == "ready"))
                && s["current_workers"] == 2
        });
        assert_eq!(sup.status_json()["pid"].as_u64(), Some(pid as u64));
    }
    load.wait_for_more_answers(20, DEADLINE);
    let report = load.stop();
    eprintln!("{}", report.summary());
    report.assert_no_failures();
    assert!(!sup.has_exited());
    assert_eq!(upgrades(&sup), 6);
    assert_eq!(
        sup.count_in_log("reload to generation"),
        0,
        "no reload failed"
    );
}

/// An upgrade while a reload is starting carries the reload across the exec: the client
/// waiting on `ctl reload` gets its answer from the new image, over the same connection.
#[test]
fn a_reload_in_flight_is_answered_by_the_new_image() {
    let sb = Sandbox::new("upgrade_during_reload");
    let bin = copy_of_reloadsup(&sb, "reloadsup");
    let run = Run::hello(&[])
        .args([
            "-n",
            "2",
            "--ready",
            "delay:1500ms",
            "--ready-timeout",
            "20s",
        ])
        .program(&bin);
    let (mut sup, _addr) = start(&sb, run, 2);
    sup.wait_for_log("generation 1 is serving", DEADLINE);
    let mut reload = Command::new(bins::reloadsup());
    reload
        .args(["ctl", "--control"])
        .arg(sup.control_path())
        .arg("reload")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let waiter = thread::spawn(move || output_with_timeout(&mut reload, DEADLINE));
    sup.wait_for_log("starting generation 2", DEADLINE);
    let (ok, text) = upgrade(&sup, &[]);
    assert!(ok, "{text}");
    assert!(
        !sup.log().contains("generation 2 is serving"),
        "the upgrade must happen while the reload is starting; make the ready delay longer"
    );
    let out = waiter.join().expect("the ctl reload thread");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && printed.contains("generation 2 is serving"),
        "ctl reload across an upgrade: {} {printed} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(upgrades(&sup), 1);
}

/// `restart`: upgrade, then reload every worker.
#[test]
fn restart_upgrades_then_reloads() {
    let sb = Sandbox::new("restart_upgrades");
    let bin = copy_of_reloadsup(&sb, "reloadsup");
    let run = Run::hello(&[]).args(standard(2)).program(&bin);
    let (sup, _addr) = start(&sb, run, 2);
    let before = sorted_workers(&sup);
    let out = ctl(&sup.control_path(), &["restart"]);
    assert!(
        out.status.success(),
        "ctl restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("generation 2 is serving"));
    assert_eq!(upgrades(&sup), 1);
    wait_until(DEADLINE, "every worker replaced", || {
        let after = sorted_workers(&sup);
        after.len() == 2 && after.iter().all(|p| !before.contains(p))
    });
}

/// The primary's fds above 2 that are not close-on-exec (from `/proc/PID/fdinfo`): those it
/// inherited from whoever started it, and none of its own.
fn inheritable_fds(pid: u32) -> Vec<i32> {
    proc::fds_of(pid)
        .into_iter()
        .map(|(fd, _)| fd)
        .filter(|&fd| fd > 2)
        .filter(|fd| {
            let info =
                std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok());
            // O_CLOEXEC is 0o2000000; an fd closed meanwhile has no fdinfo and is skipped.
            flags.is_some_and(|f| f & 0o2000000 == 0)
        })
        .collect()
}

/// `execve` failing after a good pre-flight (here: a script that passes it and removes
/// itself): the old image carries on with its fds close-on-exec again, and says why.
#[test]
fn a_failed_execve_leaves_the_old_image_running() {
    let sb = Sandbox::new("upgrade_failed_execve");
    let bin = copy_of_reloadsup(&sb, "reloadsup");
    let run = Run::hello(&[]).args(standard(2)).program(&bin);
    let (mut sup, addr) = start(&sb, run, 2);
    let pid = sup.pid();
    let workers = sorted_workers(&sup);
    let fds = proc::fds_of(pid).len();
    // Whatever the test's own parent let the primary inherit; the primary adds none.
    let inherited = inheritable_fds(pid);
    let vanishing = sb.write_script(
        "vanishing.sh",
        "#!/bin/sh\ncat >/dev/null\necho 'reloadsup 9.9.9 ok'\nrm -f -- \"$0\"\n",
    );
    let (ok, text) = upgrade(&sup, &["--binary", vanishing.to_str().expect("utf-8 path")]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("execve failed") && text.contains("no such file or directory"),
        "{text}"
    );
    assert_eq!(sup.status_json()["pid"].as_u64(), Some(pid as u64));
    assert_eq!(upgrades(&sup), 0);
    assert_eq!(sorted_workers(&sup), workers);
    assert_eq!(settled_fds(pid, fds), fds, "fds after the failed exec");
    assert_eq!(
        inheritable_fds(pid),
        inherited,
        "every fd of the primary's own is close-on-exec again"
    );
    assert!(reloadsup_integration_tests::tcp_connect_ok(addr));
    assert!(sup.reload(2).is_ok(), "a reload after the failed exec");
    let (ok, text) = upgrade(&sup, &[]);
    assert!(ok, "a good upgrade afterwards: {text}");
}

/// Issue 18, item 3: another user's binary given to `ctl upgrade --binary` ran as root at the
/// pre-flight, then became the primary. It is refused before anything runs.
#[test]
fn another_users_binary_is_refused_before_it_runs() {
    if !crate::running_as_root("another_users_binary_is_refused_before_it_runs") {
        return;
    }
    let sb = Sandbox::new("upgrade_foreign_binary");
    let (sup, _) = start(&sb, Run::hello(&[]).args(standard(1)), 1);
    let copy = copy_of_reloadsup(&sb, "reloadsup-theirs");
    std::os::unix::fs::chown(&copy, Some(65534), Some(65534)).unwrap();
    let (ok, text) = upgrade(&sup, &["--binary", copy.to_str().expect("utf-8 path")]);
    assert!(!ok, "the upgrade ran another user's binary: {text}");
    assert!(text.contains("belongs to uid 65534"), "{text}");
    assert_eq!(upgrades(&sup), 0);
    assert!(
        !sup.log().contains("pre-flight of"),
        "its pre-flight ran:\n{}",
        sup.log()
    );
}
