//! `--watch` (issue 11, item 4): a watched file replaced by a rename, written or touched starts
//! one reload once quiet for `--watch-delay`, under load with no failed request; a burst of
//! writes starts one; a watch on a directory that does not exist exits 2 naming the flag.

use std::time::Duration;

use reloadsup_integration_tests::{Limits, Load, Run, Sandbox, DEADLINE};

use crate::{standard, start};

#[test]
fn a_watched_file_replaced_written_or_touched_reloads_once_under_load() {
    let sb = Sandbox::new("watch_reloads");
    let file = sb.write("release", "v1\n");
    let run = Run::hello(&[])
        .args(standard(2))
        .arg("--watch")
        .arg(&file)
        .args(["--watch-delay", "1500ms"]);
    let (mut sup, addr) = start(&sb, run, 2);
    sup.wait_for_log("watching ", DEADLINE);
    let load = Load::start(addr, 4, Limits::default());
    load.wait_for_more_answers(50, DEADLINE);

    // Replaced by a rename, as a deploy does.
    let next = sb.write(".release.new", "v2\n");
    std::fs::rename(&next, &file).unwrap();
    sup.wait_reload(2).expect("the rename reloads");

    // A burst of writes longer than the quiet period, each within the quiet period of the
    // one before: one reload, after the last.
    // 20 writes 100 ms apart: 2 s in all, each gap far inside the 1.5 s quiet period even on a
    // loaded machine.
    for i in 0..20 {
        std::fs::write(&file, format!("v3.{i}\n")).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    sup.wait_reload(3).expect("the burst reloads");
    // Well past another quiet period: no second reload came of the burst.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        sup.count_in_log("starting generation 4"),
        0,
        "{}",
        sup.log()
    );
    assert_eq!(sup.count_in_log("changed: reloading"), 2, "{}", sup.log());

    // Touched: only its times change.
    let f = std::fs::File::options().write(true).open(&file).unwrap();
    f.set_modified(std::time::SystemTime::now()).unwrap();
    drop(f);
    sup.wait_reload(4).expect("the touch reloads");

    load.wait_for_more_answers(50, DEADLINE);
    load.stop().assert_no_failures();
    // Another file in the same directory changes nothing.
    sb.write("unrelated", "x\n");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        sup.count_in_log("starting generation 5"),
        0,
        "{}",
        sup.log()
    );
    sup.signal(libc::SIGTERM);
    assert!(sup.wait_exit(DEADLINE).success());
}

#[test]
fn a_watch_survives_an_upgrade_in_place() {
    let sb = Sandbox::new("watch_upgrade");
    let file = sb.write("release", "v1\n");
    let run = Run::hello(&[])
        .args(standard(1))
        .arg("--watch")
        .arg(&file)
        .args(["--watch-delay", "100ms"]);
    let (mut sup, _) = start(&sb, run, 1);
    let out = sup.ctl(&["upgrade"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sup.wait_for_nth_log("watching ", 2, DEADLINE);
    std::fs::write(&file, "v2\n").unwrap();
    sup.wait_reload(2)
        .expect("a change after the upgrade reloads");
}

#[test]
fn a_watch_in_a_directory_that_does_not_exist_exits_2() {
    let sb = Sandbox::new("watch_bad");
    let out = Run::hello(&[])
        .args(["--watch", "/nonexistent-reloadsup/dir/server"])
        .output(&sb, DEADLINE);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--watch") && stderr.contains("/nonexistent-reloadsup/dir/server"),
        "{stderr}"
    );
    let out = Run::hello(&[])
        .args(["--watch", "/tmp", "--watch-delay", "soon"])
        .output(&sb, DEADLINE);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--watch-delay"), "{stderr}");
}

/// Issue 18, item 11: a watched file that a user other than root, reloadsup's and the
/// workers' can write lets that user drive or hold off reloads: reloadsup says so at start and
/// at each change it reloads for, naming the file and who can write it.
#[test]
fn a_watched_file_others_can_write_is_named_in_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new("watch_writable");
    let file = sb.write("release", "v1\n");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let run = Run::hello(&[])
        .args(standard(1))
        .arg("--watch")
        .arg(&file)
        .args(["--watch-delay", "100ms"]);
    let (mut sup, _) = start(&sb, run, 1);
    let warning = format!(
        "--watch {} (watched): writable by every user",
        file.display()
    );
    sup.wait_for_log(&warning, DEADLINE);
    std::fs::write(&file, "v2\n").unwrap();
    sup.wait_reload(2).expect("the change reloads");
    let warning = format!(
        "--watch {} (changed): writable by every user",
        file.display()
    );
    sup.wait_for_log(&warning, DEADLINE);
    sup.signal(libc::SIGTERM);
    assert!(sup.wait_exit(DEADLINE).success());
}
