//! The logger worker (`--log-output`): every answered request has its line, in order, with the
//! right labels, under reloads and across a killed logger; JSON lines parse; rotation keeps
//! the configured number of files; SIGUSR1 reopens a file that was moved away.
//!
//! The server is `hello --log-requests`, which prints `request N` (N counting from 1 in each
//! process) before it answers request N: so every answer the load saw from pid P means a line
//! `request N` from P, and P's numbers must run 1, 2, 3, ... with no gap.

use std::collections::BTreeMap;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use reloadsup_integration_tests::{
    bins, get, proc, wait_for, wait_until, Limits, Load, LoadReport, Run, Sandbox, Supervisor,
    DEADLINE,
};

use crate::{standard, start};

/// One labelled line of the log file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    generation: u32,
    worker: u32,
    pid: u32,
    stream: String,
    text: String,
}

/// `TS gen=G worker=W pid=P STREAM: TEXT`.
fn parse_text(line: &str) -> Option<Entry> {
    let mut parts = line.splitn(5, ' ');
    let ts = parts.next()?;
    if !(ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T') {
        return None;
    }
    let field = |part: Option<&str>, name: &str| -> Option<u32> {
        part?.strip_prefix(name)?.strip_prefix('=')?.parse().ok()
    };
    let generation = field(parts.next(), "gen")?;
    let worker = field(parts.next(), "worker")?;
    let pid = field(parts.next(), "pid")?;
    let (stream, text) = parts.next()?.split_once(": ")?;
    Some(Entry {
        generation,
        worker,
        pid,
        stream: stream.to_owned(),
        text: text.to_owned(),
    })
}

/// One JSON object per line, with every field.
fn parse_json(line: &str) -> Option<Entry> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let ts = v["ts"].as_str()?;
    if !(ts.len() == 24 && ts.ends_with('Z')) {
        return None;
    }
    Some(Entry {
        generation: u32::try_from(v["generation"].as_u64()?).ok()?,
        worker: u32::try_from(v["worker"].as_u64()?).ok()?,
        pid: u32::try_from(v["pid"].as_u64()?).ok()?,
        stream: v["stream"].as_str()?.to_owned(),
        text: v["line"].as_str()?.to_owned(),
    })
}

/// Every line of `files` (in that order), parsed; panics on a line that does not parse.
fn entries(files: &[&Path], parse: fn(&str) -> Option<Entry>) -> Vec<Entry> {
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        for line in text.lines() {
            out.push(
                parse(line).unwrap_or_else(|| {
                    panic!("unparsable log line in {}: {line:?}", file.display())
                }),
            );
        }
    }
    out
}

/// The numbers of the `request N` lines, by pid, in the order written; every line of one pid
/// carries the same generation and slot. Lines that are not `request N` are ignored.
fn requests_by_pid(entries: &[Entry]) -> BTreeMap<u32, (u32, u32, Vec<u64>)> {
    let mut by_pid: BTreeMap<u32, (u32, u32, Vec<u64>)> = BTreeMap::new();
    for e in entries {
        let Some(n) = e.text.strip_prefix("request ") else {
            continue;
        };
        let n: u64 = n
            .parse()
            .unwrap_or_else(|_| panic!("not a request number: {e:?}"));
        assert_eq!(e.stream, "stdout", "{e:?}");
        let slot = by_pid
            .entry(e.pid)
            .or_insert((e.generation, e.worker, Vec::new()));
        assert_eq!(
            (slot.0, slot.1),
            (e.generation, e.worker),
            "pid {} changed labels: {e:?}",
            e.pid
        );
        slot.2.push(n);
    }
    by_pid
}

/// Every pid's numbers are 1..=k in order, and every answer the load saw has its line with
/// the generation it answered with. With `repeats`, a run of lines may be written again (a
/// logger killed after it wrote them and before it took them out of the pipe); a gap never.
fn assert_every_answer_logged(entries: &[Entry], report: &LoadReport, repeats: bool) {
    let mut logged = requests_by_pid(entries);
    for (pid, (_, _, numbers)) in logged.iter_mut() {
        let mut next = 1;
        let mut again = 0;
        for &n in numbers.iter() {
            if n == next {
                next += 1;
            } else if n < next && repeats {
                again += 1;
            } else {
                panic!(
                    "pid {pid}: {} lines, not contiguous from 1 (expected {next}, found {n})",
                    numbers.len()
                );
            }
        }
        if again > 0 {
            eprintln!("pid {pid}: {again} lines written twice");
        }
        *numbers = (1..next).collect();
    }
    let mut answers = 0;
    for (pid, (generation, count)) in report.answers_by_pid() {
        answers += count;
        let Some((gen_logged, _, numbers)) = logged.get(&pid) else {
            panic!("pid {pid} (generation {generation}) answered {count} requests and logged none");
        };
        assert_eq!(*gen_logged, generation, "pid {pid}: generation label");
        assert!(
            numbers.len() as u64 >= count,
            "pid {pid} answered {count} requests but logged {} lines",
            numbers.len()
        );
    }
    eprintln!(
        "{answers} answers from {} pids; {} lines logged by {} pids",
        report.answers_by_pid().len(),
        logged.values().map(|l| l.2.len()).sum::<usize>(),
        logged.len()
    );
}

/// The flags of a captured run writing to `file`.
fn capture(workers: usize, file: &Path) -> Vec<String> {
    let mut flags = standard(workers);
    flags.push("--log-output".into());
    flags.push(format!("file:{}", file.display()));
    flags
}

/// The logger worker's pid: the primary's live child whose argv[0] is `reloadsup-logger`.
fn logger_pid(sup: &Supervisor) -> Option<u32> {
    sup.workers().into_iter().find(|&p| {
        std::fs::read(format!("/proc/{p}/cmdline"))
            .is_ok_and(|c| c.split(|&b| b == 0).next() == Some(b"reloadsup-logger"))
    })
}

/// Stops the primary gracefully and waits for it: the logger has written every line then.
fn stop(mut sup: Supervisor) {
    sup.signal(libc::SIGTERM);
    let status = sup.wait_exit(DEADLINE);
    assert!(status.success(), "the primary exited with {status}");
}

/// Reloads every second, `reloads` times, while `load` runs; `during` is called after each.
fn reload_every_second(
    sup: &mut Supervisor,
    load: &Load,
    reloads: u32,
    mut during: impl FnMut(&mut Supervisor, u32),
) {
    for generation in 2..=reloads + 1 {
        let next = Instant::now() + Duration::from_secs(1);
        if let Err(reason) = sup.reload(generation) {
            panic!("reload to generation {generation} failed: {reason}");
        }
        load.wait_for_generation(generation, DEADLINE);
        during(sup, generation);
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

#[test]
fn every_answered_request_has_its_line_across_reloads() {
    let sandbox = Sandbox::new("logs-reloads");
    let file = sandbox.join("app.log");
    let (mut sup, addr) = start(
        &sandbox,
        Run::hello(&["--log-requests"]).args(capture(4, &file)),
        4,
    );
    let load = Load::start(addr, 8, Limits::default());
    load.wait_for_more_answers(50, DEADLINE);
    reload_every_second(&mut sup, &load, 4, |_, _| {});
    load.wait_for_more_answers(50, DEADLINE);
    let report = load.stop();
    eprintln!("{}", report.summary());
    report.assert_no_failures();
    assert!(report.generations().len() >= 5, "{}", report.summary());
    stop(sup);
    assert_every_answer_logged(&entries(&[&file], parse_text), &report, false);
}

#[test]
fn a_killed_logger_is_back_soon_and_loses_no_line() {
    let sandbox = Sandbox::new("logs-kill");
    let file = sandbox.join("app.log");
    let (mut sup, addr) = start(
        &sandbox,
        Run::hello(&["--log-requests"]).args(capture(4, &file)),
        4,
    );
    let first = wait_for(DEADLINE, "the logger worker", || logger_pid(&sup));
    let load = Load::start(addr, 8, Limits::default());
    load.wait_for_more_answers(50, DEADLINE);
    let mut killed = vec![first];
    let mut back_after = Vec::new();
    reload_every_second(&mut sup, &load, 3, |sup, _| {
        let old = *killed.last().expect("one logger at least");
        proc::kill(old, libc::SIGKILL).expect("kill the logger");
        let t = Instant::now();
        let new = wait_for(DEADLINE, "a new logger worker", || {
            logger_pid(sup).filter(|&p| p != old && !killed.contains(&p))
        });
        back_after.push(t.elapsed());
        killed.push(new);
    });
    load.wait_for_more_answers(50, DEADLINE);
    let report = load.stop();
    eprintln!(
        "{}\nthe logger was back after {back_after:?}",
        report.summary()
    );
    report.assert_no_failures();
    // Restarts in a row back off (100 ms doubling); each is well within this.
    for (i, d) in back_after.iter().enumerate() {
        assert!(*d < Duration::from_secs(5), "logger restart {i} took {d:?}");
    }
    stop(sup);
    assert_every_answer_logged(&entries(&[&file], parse_text), &report, true);
}

#[test]
fn json_lines_parse_with_every_field() {
    let sandbox = Sandbox::new("logs-json");
    let file = sandbox.join("app.json");
    let (mut sup, addr) = start(
        &sandbox,
        Run::hello(&["--log-requests"])
            .args(capture(2, &file))
            .args(["--log-format", "json"]),
        2,
    );
    let load = Load::start(addr, 2, Limits::default());
    load.wait_for_more_answers(20, DEADLINE);
    if let Err(reason) = sup.reload(2) {
        panic!("reload failed: {reason}");
    }
    load.wait_for_generation(2, DEADLINE);
    load.wait_for_more_answers(20, DEADLINE);
    let report = load.stop();
    report.assert_no_failures();
    stop(sup);
    let all = entries(&[&file], parse_json);
    assert!(all.len() >= 40, "{} lines", all.len());
    assert_every_answer_logged(&all, &report, false);
}

#[test]
fn rotation_keeps_the_configured_number_of_files() {
    let sandbox = Sandbox::new("logs-rotate");
    let file = sandbox.join("app.log");
    let (sup, addr) = start(
        &sandbox,
        Run::hello(&["--log-requests"])
            .args(capture(1, &file))
            .args(["--log-rotate-size", "2k", "--log-rotate-keep", "2"]),
        1,
    );
    let numbered = |n: u32| sandbox.join(format!("app.log.{n}"));
    // About 60 bytes a line: 2 KiB is 35 lines, so 200 requests rotate five times or more.
    for i in 0..200 {
        get(addr, "/").unwrap_or_else(|e| panic!("request {i}: {e}"));
    }
    wait_until(DEADLINE, "two rotated files", || {
        numbered(1).exists() && numbered(2).exists()
    });
    stop(sup);
    assert!(!numbered(3).exists(), "a third rotated file was kept");
    let files: Vec<_> = [numbered(2), numbered(1), file.clone()]
        .into_iter()
        .filter(|p| p.exists())
        .collect();
    for f in &files {
        let len = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        assert!(len <= 2048 + 200, "{} is {len} bytes", f.display());
    }
    // The kept files are the newest lines, contiguous up to the last request.
    let paths: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let logged = requests_by_pid(&entries(&paths, parse_text));
    let (_, _, numbers) = logged.values().next().expect("one worker's lines");
    let first = numbers[0];
    let expected: Vec<u64> = (first..=200).collect();
    assert_eq!(numbers, &expected, "the kept lines");
    assert!(first > 1, "nothing was rotated away");
}

#[test]
fn usr1_reopens_the_file_after_it_was_moved_away() {
    let sandbox = Sandbox::new("logs-reopen");
    let file = sandbox.join("app.log");
    let moved = sandbox.join("app.log.old");
    let (sup, addr) = start(
        &sandbox,
        Run::hello(&["--log-requests"]).args(capture(1, &file)),
        1,
    );
    for _ in 0..10 {
        get(addr, "/").expect("a request before the move");
    }
    let has_lines = |p: &Path, n: usize| {
        std::fs::read_to_string(p)
            .is_ok_and(|t| t.lines().filter(|l| l.contains(": request ")).count() >= n)
    };
    wait_until(DEADLINE, "10 lines in the file", || has_lines(&file, 10));
    std::fs::rename(&file, &moved).expect("move the log away");
    sup.signal(libc::SIGUSR1);
    wait_until(DEADLINE, "the file reopened at its path", || file.exists());
    for _ in 0..10 {
        get(addr, "/").expect("a request after the move");
    }
    wait_until(DEADLINE, "10 lines in the new file", || {
        has_lines(&file, 10)
    });
    stop(sup);
    assert!(has_lines(&moved, 10), "the moved file lost its lines");
    let logged = requests_by_pid(&entries(&[&moved, &file], parse_text));
    let (_, _, numbers) = logged.values().next().expect("one worker's lines");
    assert_eq!(numbers, &(1..=20).collect::<Vec<u64>>());
    let in_new = requests_by_pid(&entries(&[&file], parse_text));
    assert_eq!(
        in_new.values().next().map(|l| l.2.clone()),
        Some((11..=20).collect::<Vec<u64>>()),
        "the lines after the reopen are in the new file"
    );
}

#[test]
fn ctl_logs_prints_the_last_lines_and_filters_by_worker() {
    let sandbox = Sandbox::new("logs-ctl");
    let file = sandbox.join("app.log");
    let (sup, addr) = start(
        &sandbox,
        Run::hello(&["--log-requests"]).args(capture(2, &file)),
        2,
    );
    for i in 0..20 {
        get(addr, "/").unwrap_or_else(|e| panic!("request {i}: {e}"));
    }
    let requests = |text: &str| text.lines().filter(|l| l.contains(": request ")).count();
    wait_until(DEADLINE, "20 lines in the file", || {
        std::fs::read_to_string(&file).is_ok_and(|t| requests(&t) >= 20)
    });
    let out = sup.ctl(&["logs", "-n", "5"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ctl logs failed: {out:?}");
    assert_eq!(text.lines().count(), 5, "{text}");
    let printed: Vec<Entry> = text.lines().map(|l| parse_text(l).expect(l)).collect();
    // The last five lines of the file, exactly.
    let all = std::fs::read_to_string(&file).expect("the log");
    let last: Vec<&str> = all
        .lines()
        .rev()
        .take(5)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    assert_eq!(text.lines().collect::<Vec<_>>(), last);
    assert!(printed.iter().all(|e| e.generation == 1));
    let out = sup.ctl(&["logs", "-n", "3", "--worker", "1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ctl logs --worker failed: {out:?}");
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        text.lines()
            .all(|l| parse_text(l).is_some_and(|e| e.worker == 1)),
        "{text}"
    );
    let out = sup.ctl(&["logs", "--generation", "7"]);
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
    stop(sup);
}

#[test]
fn ctl_logs_refuses_without_capture() {
    let sandbox = Sandbox::new("logs-ctl-inherit");
    let (sup, _) = start(&sandbox, Run::hello(&[]).args(standard(1)), 1);
    let out = sup.ctl(&["logs", "-n", "5"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--log-output"), "{err}");
    stop(sup);
}

#[test]
fn ctl_logs_follow_carries_on_across_a_reload() {
    let sandbox = Sandbox::new("logs-follow");
    let file = sandbox.join("app.log");
    let (mut sup, addr) = start(
        &sandbox,
        Run::hello(&["--log-requests"]).args(capture(1, &file)),
        1,
    );
    let followed = sandbox.join("followed");
    let mut follower = std::process::Command::new(reloadsup_integration_tests::bins::reloadsup())
        .arg("ctl")
        .arg("--control")
        .arg(sup.control_path())
        .args(["logs", "-f", "-n", "0"])
        .stdout(std::fs::File::create(&followed).expect("the follower's output"))
        .spawn()
        .expect("start ctl logs -f");
    let lines_of = |generation: u32| {
        let text = std::fs::read_to_string(&followed).unwrap_or_default();
        text.lines()
            .filter_map(parse_text)
            .filter(|e| e.generation == generation && e.text.starts_with("request "))
            .count()
    };
    // The follow may start after the first requests: ask until one is printed.
    wait_until(DEADLINE, "a followed line of generation 1", || {
        get(addr, "/").expect("a request");
        lines_of(1) > 0
    });
    if let Err(reason) = sup.reload(2) {
        panic!("reload failed: {reason}");
    }
    // The old worker may still take a queued connection while it drains: ask until generation
    // 2 has answered (and logged) five, at most 200 requests.
    let mut sent = 0;
    wait_until(DEADLINE, "5 followed lines of generation 2", || {
        if sent < 200 {
            get(addr, "/").expect("a request after the reload");
            sent += 1;
        }
        lines_of(2) >= 5
    });
    assert!(
        follower
            .try_wait()
            .expect("the follower's status")
            .is_none(),
        "ctl logs -f ended by itself"
    );
    let _ = follower.kill();
    let _ = follower.wait();
    // The follower's lines of generation 2 are the file's, in order.
    let text = std::fs::read_to_string(&followed).unwrap_or_default();
    let logged = requests_by_pid(&text.lines().filter_map(parse_text).collect::<Vec<_>>());
    let gen2: Vec<_> = logged.values().filter(|l| l.0 == 2).collect();
    assert_eq!(gen2.len(), 1, "{text}");
    let n = gen2[0].2.len() as u64;
    assert!(n >= 5, "{text}");
    assert_eq!(gen2[0].2, (1..=n).collect::<Vec<u64>>(), "{text}");
    stop(sup);
}

#[test]
fn a_stdout_nobody_reads_never_stops_the_logger() {
    let sandbox = Sandbox::new("logs-stdout-stuck");
    // The read end is held and never read: the pipe fills after 64 KiB.
    let (_unread, write) = std::io::pipe().expect("a pipe");
    let (sup, addr) = start(
        &sandbox,
        Run::hello(&["--log-requests"])
            .args(standard(2))
            .args(["--log-output", "stdout"])
            .stdout(write.into()),
        2,
    );
    // About 70 bytes a line: 3000 requests are three times what the pipe holds.
    let load = Load::start(
        addr,
        4,
        Limits {
            max_duration: Duration::from_secs(60),
            max_requests: 3000,
        },
    );
    let report = load.finish();
    report.assert_no_failures();
    // The logger still reads every pipe and keeps its ring: the last request is there.
    let last = wait_for(DEADLINE, "the last lines in ctl logs", || {
        let out = sup.ctl(&["logs", "-n", "1"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && text.contains(": request ")).then_some(text)
    });
    eprintln!("{}\nlast line: {last}", report.summary());
    let t = Instant::now();
    sup.status_json();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "ctl status took {:?}",
        t.elapsed()
    );
    stop(sup);
}

#[test]
fn an_unwritable_log_is_reported_once_and_the_service_goes_on() {
    let sandbox = Sandbox::new("logs-full");
    // Every write to /dev/full fails with ENOSPC: a full disk.
    let (sup, addr) = start(
        &sandbox,
        Run::hello(&["--log-requests"]).args(capture(2, Path::new("/dev/full"))),
        2,
    );
    let load = Load::start(
        addr,
        4,
        Limits {
            max_duration: Duration::from_secs(60),
            max_requests: 500,
        },
    );
    let report = load.finish();
    report.assert_no_failures();
    let out = sup.ctl(&["logs", "-n", "3"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    let reports = sup.count_in_log("unable to write /dev/full");
    assert_eq!(reports, 1, "reported {reports} times:\n{}", sup.log());
    stop(sup);
}

/// Regression (a logger that stalled on a worker writing lines in pieces, found by the bench):
/// a writer of 500 KB blocks, whose pipe writes cut lines, and every line still arrives.
#[test]
fn lines_written_in_pieces_all_arrive_a_logger_stalled_on_them() {
    let Some(python) = reloadsup_integration_tests::python3() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "needs python3, and CI=true"
        );
        eprintln!("skipped: needs python3");
        return;
    };
    let sandbox = Sandbox::new("logs-pieces");
    let file = sandbox.join("app.log");
    let writer = sandbox.write(
        "pieces.py",
        "import sys\nout = sys.stdout.buffer\nfor _ in range(40):\n    out.write((b'z' * 99 + b'\\n') * 5000)\n    out.flush()\n",
    );
    let script = sandbox.write_script(
        "pieces.sh",
        &format!(
            "#!/bin/sh\n{} {}\nexec sleep 600\n",
            python.display(),
            writer.display()
        ),
    );
    let mut flags = capture(1, &file);
    flags[3] = "immediate".into();
    let sup = Run::new([script]).args(flags).start(&sandbox);
    let count = || {
        std::fs::read(&file)
            .map(|t| t.iter().filter(|&&b| b == b'\n').count())
            .unwrap_or(0)
    };
    wait_until(Duration::from_secs(60), "200000 lines in the log", || {
        count() >= 200_000
    });
    stop(sup);
    let all = entries(&[&file], parse_text);
    let line = "z".repeat(99);
    assert_eq!(all.iter().filter(|e| e.text == line).count(), 200_000);
}

#[test]
fn ctl_logs_follow_ends_with_a_message_at_an_upgrade_in_place() {
    let sandbox = Sandbox::new("logs-follow-upgrade");
    let file = sandbox.join("app.log");
    let (sup, addr) = start(
        &sandbox,
        Run::hello(&["--log-requests"]).args(capture(1, &file)),
        1,
    );
    let followed = sandbox.join("followed");
    let mut follower = std::process::Command::new(reloadsup_integration_tests::bins::reloadsup())
        .arg("ctl")
        .arg("--control")
        .arg(sup.control_path())
        .args(["logs", "-f", "-n", "0"])
        .stdout(std::fs::File::create(&followed).expect("the follower's output"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start ctl logs -f");
    wait_until(DEADLINE, "a followed line", || {
        get(addr, "/").expect("a request");
        std::fs::read_to_string(&followed).is_ok_and(|t| t.contains(": request "))
    });
    let out = sup.ctl(&["upgrade"]);
    assert!(out.status.success(), "upgrade: {out:?}");
    let status = wait_for(DEADLINE, "ctl logs -f to end", || {
        follower.try_wait().expect("the follower's status")
    });
    let mut err = String::new();
    std::io::Read::read_to_string(&mut follower.stderr.take().expect("stderr"), &mut err)
        .expect("the follower's stderr");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("upgraded in place"), "{err}");
    // A new follow works with the new image.
    let out = sup.ctl(&["logs", "-n", "1"]);
    assert!(out.status.success(), "{out:?}");
    stop(sup);
}

/// `hello --log-requests` as uid and gid 65534, from a copy that user can reach.
fn hello_as_nobody(sandbox: &Sandbox) -> Run {
    let hello = sandbox.shared_copy(&bins::example("hello"));
    Run::new([hello.into_os_string(), "--log-requests".into()])
        .args(["--user", "65534", "--group", "65534"])
}

/// Runs `script` with `sh -c` as uid and gid 65534, the workers' user: what a compromised
/// worker could do.
fn as_nobody(script: &str) {
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new("sh")
        .args(["-c", script])
        .uid(65534)
        .gid(65534)
        .output()
        .expect("sh as uid 65534");
    assert!(out.status.success(), "as nobody: {script}: {out:?}");
}

/// The logger's pid, once it runs as uid 65534 (it drops to the workers' user after a start
/// as root).
fn logger_as_nobody(sup: &Supervisor) -> u32 {
    let logger = wait_for(DEADLINE, "the logger", || logger_pid(sup));
    wait_until(DEADLINE, "the logger to run as the workers' user", || {
        uids_of(logger) == "65534\t65534\t65534\t65534"
    });
    logger
}

/// The logger's opener: its one child.
fn opener_of(logger: u32) -> u32 {
    wait_for(DEADLINE, "the opener", || {
        proc::children_of(logger).into_iter().next()
    })
}

/// The uids (real, effective, saved, fs) of `pid`.
fn uids_of(pid: u32) -> String {
    proc::status_field(pid, "Uid").unwrap_or_default()
}

/// Lines `request N` in `file`.
fn request_lines(file: &Path) -> usize {
    std::fs::read_to_string(file)
        .map(|t| t.lines().filter(|l| l.contains(": request ")).count())
        .unwrap_or(0)
}

/// Issue 18, item 1 (the repro): with the log directory owned by the workers' user, that user
/// swapped `app.log` for a symlink to a root-owned file and waited for a reopen; the logger,
/// running as root, then appended lines that user chose to root's file. Now the logger runs as
/// the workers' user, and a symlink at the log path is refused at every reopen; once it is
/// gone, a reopen writes to a new file again.
#[test]
fn the_workers_user_cannot_point_the_log_at_a_file_of_roots() {
    if !crate::running_as_root("the_workers_user_cannot_point_the_log_at_a_file_of_roots") {
        return;
    }
    let sandbox = Sandbox::new("logs-symlink");
    let logs = sandbox.join("logs");
    std::fs::create_dir(&logs).unwrap();
    std::os::unix::fs::chown(&logs, Some(65534), Some(65534)).unwrap();
    let victim = sandbox.join("victim");
    std::fs::write(&victim, "root's own\n").unwrap();
    let file = logs.join("app.log");
    let (sup, addr) = start(
        &sandbox,
        hello_as_nobody(&sandbox).args(capture(1, &file)),
        1,
    );
    logger_as_nobody(&sup);
    for _ in 0..5 {
        get(addr, "/").expect("a request");
    }
    wait_until(DEADLINE, "5 lines in the file", || {
        request_lines(&file) >= 5
    });
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&file).unwrap());
    assert_eq!(owner, 65534, "the log file is the directory owner's");

    as_nobody(&format!(
        "cd {} && mv app.log app.log.old && ln -s {} app.log",
        logs.display(),
        victim.display()
    ));
    sup.signal(libc::SIGUSR1);
    for _ in 0..5 {
        get(addr, "/").expect("a request while the path is a symlink");
    }
    let mut sup = sup;
    sup.wait_for_log("refusing to write through it", DEADLINE);
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "root's own\n",
        "the logger wrote through the symlink"
    );

    as_nobody(&format!("rm {}", file.display()));
    sup.signal(libc::SIGUSR1);
    wait_until(DEADLINE, "a new file at the path", || file.is_file());
    for _ in 0..5 {
        get(addr, "/").expect("a request after the symlink went");
    }
    wait_until(DEADLINE, "lines in the new file", || {
        request_lines(&file) >= 5
    });
    stop(sup);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's own\n");
}

/// The usual root layout: a root-owned log directory, workers as another user. The logger
/// runs as the workers' user; a small opener of its own, root, opens and rotates the file and
/// keeps nothing but the directory and its socket. An opener that dies takes its logger with
/// it, and the next logger (a new opener with it) loses no line.
#[test]
fn a_root_log_directory_is_opened_by_a_root_opener_for_an_unprivileged_logger() {
    if !crate::running_as_root(
        "a_root_log_directory_is_opened_by_a_root_opener_for_an_unprivileged_logger",
    ) {
        return;
    }
    let sandbox = Sandbox::new("logs-opener");
    let logs = sandbox.join("logs");
    std::fs::create_dir(&logs).unwrap();
    let file = logs.join("app.log");
    let (sup, addr) = start(
        &sandbox,
        hello_as_nobody(&sandbox).args(capture(1, &file)).args([
            "--log-rotate-size",
            "2k",
            "--log-rotate-keep",
            "3",
        ]),
        1,
    );
    let logger = logger_as_nobody(&sup);
    let opener = opener_of(logger);
    assert_eq!(
        uids_of(opener),
        "0\t0\t0\t0",
        "the opener of a root directory"
    );
    let fds = proc::fds_of(opener);
    let targets: Vec<&str> = fds.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(fds.len(), 5, "the opener's fds: {fds:?}");
    assert!(
        targets.contains(&logs.to_str().unwrap())
            && targets.iter().filter(|t| t.starts_with("socket:")).count() == 1,
        "the opener keeps its directory and its socket only: {fds:?}"
    );
    // About 60 bytes a line: 2 KiB is 35 lines, so 100 requests rotate twice or more.
    for i in 0..100 {
        get(addr, "/").unwrap_or_else(|e| panic!("request {i}: {e}"));
    }
    wait_until(DEADLINE, "two rotated files", || {
        logs.join("app.log.2").exists()
    });
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&file).unwrap());
    assert_eq!(owner, 0, "the file in root's directory is root's");

    // The opener dies; the logger finds out at its next rotation and makes way for a new one.
    proc::kill(opener, libc::SIGKILL).unwrap();
    for i in 100..200 {
        get(addr, "/").unwrap_or_else(|e| panic!("request {i}: {e}"));
    }
    let next = wait_for(DEADLINE, "a new logger", || {
        logger_pid(&sup).filter(|&p| p != logger)
    });
    wait_until(DEADLINE, "a new opener", || {
        proc::children_of(next).len() == 1
    });
    for i in 200..210 {
        get(addr, "/").unwrap_or_else(|e| panic!("request {i}: {e}"));
    }
    stop(sup);
    // Every line since the oldest kept one is there, in order, across the dead opener.
    let files: Vec<_> = [3, 2, 1]
        .map(|n| logs.join(format!("app.log.{n}")))
        .into_iter()
        .chain([file.clone()])
        .filter(|p| p.exists())
        .collect();
    let paths: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let logged = requests_by_pid(&entries(&paths, parse_text));
    let (_, _, numbers) = logged.values().next().expect("one worker's lines");
    // The lines being written when the opener was found dead are written again by the next
    // logger: some may stand twice, none may be missing.
    let mut numbers = numbers.clone();
    numbers.sort_unstable();
    numbers.dedup();
    let first = numbers[0];
    assert_eq!(
        numbers,
        (first..=210).collect::<Vec<u64>>(),
        "the kept lines"
    );
}

/// A log file in a directory that others can write to, or reached through one, is refused
/// at start with the reason, before anything runs.
#[test]
fn a_log_directory_others_can_write_to_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = Sandbox::new("logs-shared-dir");
    let shared = sandbox.join("shared-logs");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::create_dir(shared.join("inner")).unwrap();
    std::os::unix::fs::symlink(shared.join("inner"), sandbox.join("via-link")).unwrap();
    for (path, reason) in [
        (shared.join("app.log"), "is writable by others (mode 777)"),
        (sandbox.join("via-link/app.log"), "on the way to the file"),
        (sandbox.join("missing/app.log"), "does not exist"),
    ] {
        let out = Run::hello(&[])
            .args(capture(1, &path))
            .output(&sandbox, DEADLINE);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", path.display());
        assert!(
            stderr.contains("--log-output file:") && stderr.contains(reason),
            "{}: {stderr}",
            path.display()
        );
    }
}

/// Regression (attacker's review of issue 18's fix): a signal that interrupted the logger's
/// wait for its root opener was taken for a time-out; the logger, already unprivileged, then
/// could not kill the opener and waited for it for ever, and every worker's pipe filled. A
/// worker of the same uid can send the logger SIGUSR1s at will; each asks the opener to reopen.
#[test]
fn a_logger_flooded_with_reopens_keeps_its_opener_and_every_line() {
    if !crate::running_as_root("a_logger_flooded_with_reopens_keeps_its_opener_and_every_line") {
        return;
    }
    let sandbox = Sandbox::new("logs-usr1-flood");
    let logs = sandbox.join("logs");
    std::fs::create_dir(&logs).unwrap();
    let file = logs.join("app.log");
    let (sup, addr) = start(
        &sandbox,
        hello_as_nobody(&sandbox).args(capture(1, &file)),
        1,
    );
    let logger = logger_as_nobody(&sup);
    let opener = opener_of(logger);
    // Spaced a little, so that each reopens on its own and some land inside the next
    // reopen's wait for the opener: about 2 s.
    for i in 0..20_000 {
        proc::kill(logger, libc::SIGUSR1).unwrap();
        thread::sleep(Duration::from_micros(50));
        if i % 1000 == 0 {
            get(addr, "/").expect("a request during the flood");
        }
    }
    for _ in 0..20 {
        get(addr, "/").expect("a request after the flood");
    }
    wait_until(DEADLINE, "every line in the file", || {
        request_lines(&file) >= 40
    });
    assert_eq!(logger_pid(&sup), Some(logger), "the logger was replaced");
    assert!(proc::is_alive(opener), "the opener was given up");
    stop(sup);
}

/// The logger holds its directory open, so a directory removed and made again (a clean-up
/// job, tmpfiles) would never be written again; a reopen that finds it removed makes way for
/// a new logger, which walks the path again.
#[test]
fn a_log_directory_made_again_is_written_after_a_reopen() {
    let sandbox = Sandbox::new("logs-dir-again");
    let logs = sandbox.join("logs");
    std::fs::create_dir(&logs).unwrap();
    let file = logs.join("app.log");
    let (sup, addr) = start(
        &sandbox,
        Run::hello(&["--log-requests"]).args(capture(1, &file)),
        1,
    );
    for _ in 0..5 {
        get(addr, "/").expect("a request");
    }
    wait_until(DEADLINE, "5 lines in the file", || {
        request_lines(&file) >= 5
    });
    std::fs::remove_dir_all(&logs).unwrap();
    std::fs::create_dir(&logs).unwrap();
    sup.signal(libc::SIGUSR1);
    // The new logger opens the file as it starts.
    wait_until(DEADLINE, "a file in the new directory", || file.exists());
    for _ in 0..5 {
        get(addr, "/").expect("a request after the directory was made again");
    }
    wait_until(DEADLINE, "the lines in the new directory", || {
        request_lines(&file) >= 5
    });
    stop(sup);
}

/// Issue 18, item 9: `ctl logs` showed a worker's escape sequences, carriage returns and C1
/// controls to the operator's terminal as they were. They are shown as `?` now (a tab and the
/// newline stay); the log file keeps the bytes.
#[test]
fn ctl_logs_shows_no_control_character_of_a_worker() {
    let sandbox = Sandbox::new("logs-escapes");
    let file = sandbox.join("app.log");
    let hello = bins::example("hello");
    let script = sandbox.write_script(
        "escapes.sh",
        &format!(
            "#!/bin/sh\nprintf '\\033[31mred\\033[0m\\rover\\302\\233x\\ttab\\n'\nexec {} \"$@\"\n",
            reloadsup_integration_tests::shell_quote(&hello.to_string_lossy())
        ),
    );
    let (sup, _) = start(&sandbox, Run::new([script]).args(capture(1, &file)), 1);
    wait_until(DEADLINE, "the line in the file", || {
        std::fs::read(&file).is_ok_and(|b| b.windows(4).any(|w| w == b"\x1b[31"))
    });
    let out = sup.ctl(&["logs", "-n", "20"]);
    assert!(out.status.success(), "{out:?}");
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(shown.contains("?[31mred?[0m?over?x\ttab"), "{shown}");
    assert!(
        !shown.contains(['\x1b', '\r', '\u{9b}']),
        "a control character reached the terminal: {shown:?}"
    );
    stop(sup);
}
