//! `probe`: a worker for tests that reports exactly what it was given, then idles.
//!
//! ```text
//! probe [--children N] [--setsid-children N] [--ignore-term] [ANY OTHER ARGS, recorded verbatim]
//! ```
//!
//! On start it writes one JSON object to `$PROBE_OUT` (to `$PROBE_OUT.tmp`, then renamed, so a
//! reader never sees half a file; to stdout when `PROBE_OUT` is unset) with: `pid`, `ppid`,
//! `pgid`, `sid`, `uid`, `gid`, `cwd`, `argv`, `env`, `fds` (each `{fd, target, cloexec,
//! nonblocking}`, and for fd >= 3 also `listening` and `local_addr`), `sigblk`/`sigign` (the
//! 16-hex-digit masks of /proc/self/status), `blocked_signals`/`ignored_signals` (the same as
//! signal numbers), `children` (pids from `--children N`, each `sleep 1000`, in the probe's
//! process group) and `setsid_children` (pids from `--setsid-children N`, each `sleep 1000` in a
//! session of its own, so out of the probe's process group). Every child inherits the
//! listeners, as a server's background helper would.
//! Then it sends `READY=1` to `$NOTIFY_SOCKET` if set, and waits: SIGTERM makes it exit 0, unless
//! `--ignore-term` (then only SIGKILL ends it).
//!
//! Unknown arguments are not errors: they are recorded in `argv`, which lets tests check what
//! the supervisor passed (for example `{fd}` substitution).

use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use reloadsup_examples as ex;
use serde_json::{json, Map, Value};

/// Signals ignored when the process was exec'ed, bit `n - 1` for signal `n` as in /proc.
///
/// The Rust runtime sets SIGPIPE to ignored before `main`, so /proc/self/status read from `main`
/// would always claim SIGPIPE was inherited as ignored. The mask is therefore taken by a
/// constructor that runs before the runtime initialises.
static IGNORED_AT_EXEC: AtomicU64 = AtomicU64::new(0);

extern "C" fn capture_ignored_signals() {
    let mut mask = 0u64;
    for signal in 1..=64 {
        // SAFETY: sigaction is plain data, so all-zero is a valid value to be overwritten.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a query only (no new action); invalid or reserved signal numbers fail with
        // EINVAL and are skipped.
        if unsafe { libc::sigaction(signal, std::ptr::null(), &mut old) } == 0
            && old.sa_sigaction == libc::SIG_IGN
        {
            mask |= 1 << (signal - 1);
        }
    }
    IGNORED_AT_EXEC.store(mask, Ordering::SeqCst);
}

// The dynamic loader runs `.init_array` entries before libc calls the Rust runtime's `main`.
#[used]
#[link_section = ".init_array"]
static CAPTURE_IGNORED_SIGNALS: extern "C" fn() = capture_ignored_signals;

extern "C" fn exit_on_term(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe, unlike std::process::exit.
    unsafe { libc::_exit(0) };
}

struct Options {
    children: usize,
    setsid_children: usize,
    ignore_term: bool,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        children: 0,
        setsid_children: 0,
        ignore_term: false,
    };
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--ignore-term" => options.ignore_term = true,
            flag @ ("--children" | "--setsid-children") => {
                i += 1;
                let n = args.get(i).ok_or(format!("{flag} needs a value"))?;
                let n = n
                    .parse()
                    .map_err(|_| format!("{flag} {n:?}: expected a count"))?;
                if flag == "--children" {
                    options.children = n;
                } else {
                    options.setsid_children = n;
                }
            }
            // Anything else is only recorded.
            _ => {}
        }
        i += 1;
    }
    Ok(options)
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let options = match parse_args(argv.get(1..).unwrap_or_default()) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("probe: {message}");
            return ExitCode::from(2);
        }
    };
    // Set before anything else so a stop signal that arrives during start-up already gets the
    // intended behaviour. With --ignore-term the `sleep` children inherit the ignored SIGTERM too
    // (ignored dispositions survive exec), which is what a "stubborn worker" test wants.
    let disposition = if options.ignore_term {
        libc::SIG_IGN
    } else {
        exit_on_term as extern "C" fn(libc::c_int) as libc::sighandler_t
    };
    // SAFETY: the handler only calls _exit, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGTERM, disposition) };

    match report(argv, &options) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("probe: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Err(e) = ex::notify("READY=1") {
        eprintln!("probe: unable to send READY=1 to NOTIFY_SOCKET: {e}");
        return ExitCode::FAILURE;
    }
    loop {
        // SAFETY: pause has no arguments; it returns after any handled signal, hence the loop.
        unsafe { libc::pause() };
    }
}

fn report(argv: Vec<String>, options: &Options) -> io::Result<()> {
    // Gathered before spawning children, so the fd list shows what the supervisor passed and
    // nothing the spawning opened.
    let mut report = snapshot(argv)?;
    report.insert(
        "children".to_owned(),
        json!(spawn_sleepers(options.children, false)?),
    );
    report.insert(
        "setsid_children".to_owned(),
        json!(spawn_sleepers(options.setsid_children, true)?),
    );

    let mut text = serde_json::to_string_pretty(&Value::Object(report))?;
    text.push('\n');
    match std::env::var_os("PROBE_OUT") {
        None => io::stdout().write_all(text.as_bytes()),
        Some(out) => {
            let out = PathBuf::from(out);
            let mut tmp = out.clone().into_os_string();
            tmp.push(".tmp");
            let tmp = PathBuf::from(tmp);
            std::fs::write(&tmp, text)
                .map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", tmp.display())))?;
            std::fs::rename(&tmp, &out).map_err(|e| {
                io::Error::new(e.kind(), format!("renaming to {}: {e}", out.display()))
            })
        }
    }
}

/// Starts `n` times `sleep 1000`, each in a new session if `setsid`, and returns their pids.
fn spawn_sleepers(n: usize, setsid: bool) -> io::Result<Vec<u32>> {
    use std::os::unix::process::CommandExt;
    let mut pids = Vec::with_capacity(n);
    for _ in 0..n {
        let mut command = Command::new("sleep");
        command.arg("1000").stdin(Stdio::null());
        if setsid {
            // SAFETY: setsid is async-signal-safe, and it is all the closure does between fork
            // and exec.
            unsafe {
                command.pre_exec(|| {
                    if libc::setsid() == -1 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("unable to spawn `sleep 1000`: {e}")))?;
        // Dropping the handle neither kills nor reaps: the child lives on (in our process group
        // unless `setsid`), which is the point of the tests.
        pids.push(child.id());
    }
    Ok(pids)
}

fn snapshot(argv: Vec<String>) -> io::Result<Map<String, Value>> {
    // SAFETY: these calls take no pointers and cannot fail for the calling process.
    let (pid, ppid, pgid, sid, uid, gid) = unsafe {
        (
            libc::getpid(),
            libc::getppid(),
            libc::getpgid(0),
            libc::getsid(0),
            libc::getuid(),
            libc::getgid(),
        )
    };
    let env: Map<String, Value> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                Value::String(v.to_string_lossy().into_owned()),
            )
        })
        .collect();
    let status = std::fs::read_to_string("/proc/self/status")?;
    let sigblk = status_field(&status, "SigBlk").unwrap_or_default();
    let blocked = u64::from_str_radix(&sigblk, 16).unwrap_or(0);
    let ignored = IGNORED_AT_EXEC.load(Ordering::SeqCst);

    let mut report = Map::new();
    report.insert("pid".to_owned(), json!(pid));
    report.insert("ppid".to_owned(), json!(ppid));
    report.insert("pgid".to_owned(), json!(pgid));
    report.insert("sid".to_owned(), json!(sid));
    report.insert("uid".to_owned(), json!(uid));
    report.insert("gid".to_owned(), json!(gid));
    report.insert(
        "cwd".to_owned(),
        json!(std::env::current_dir()
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_default()),
    );
    report.insert("argv".to_owned(), json!(argv));
    report.insert("env".to_owned(), Value::Object(env));
    report.insert("fds".to_owned(), Value::Array(fds()?));
    report.insert("sigblk".to_owned(), json!(format!("{blocked:016x}")));
    report.insert("sigign".to_owned(), json!(format!("{ignored:016x}")));
    report.insert("blocked_signals".to_owned(), json!(signal_numbers(blocked)));
    report.insert("ignored_signals".to_owned(), json!(signal_numbers(ignored)));
    Ok(report)
}

fn status_field(status: &str, name: &str) -> Option<String> {
    status.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim().to_owned())
    })
}

fn signal_numbers(mask: u64) -> Vec<u32> {
    (1..=64).filter(|n| mask & (1 << (n - 1)) != 0).collect()
}

/// Lists our open fds. The names are collected and the directory closed before any readlink:
/// the fd that read the directory is then gone, its readlink fails with ENOENT, and it drops out
/// of the list on its own.
fn fds() -> io::Result<Vec<Value>> {
    let mut numbers: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    numbers.sort_unstable();
    let mut list = Vec::new();
    for fd in numbers {
        let Ok(target) = std::fs::read_link(format!("/proc/self/fd/{fd}")) else {
            continue;
        };
        // SAFETY: fcntl queries on an fd number; a closed fd just fails with EBADF.
        let (fd_flags, status_flags) = unsafe {
            (
                libc::fcntl(fd, libc::F_GETFD),
                libc::fcntl(fd, libc::F_GETFL),
            )
        };
        let mut entry = Map::new();
        entry.insert("fd".to_owned(), json!(fd));
        entry.insert(
            "target".to_owned(),
            json!(String::from_utf8_lossy(target.as_os_str().as_bytes())),
        );
        entry.insert(
            "cloexec".to_owned(),
            json!(fd_flags >= 0 && fd_flags & libc::FD_CLOEXEC != 0),
        );
        entry.insert(
            "nonblocking".to_owned(),
            json!(status_flags >= 0 && status_flags & libc::O_NONBLOCK != 0),
        );
        if fd >= 3 {
            entry.insert(
                "listening".to_owned(),
                json!(ex::is_listening(fd).unwrap_or(false)),
            );
            entry.insert(
                "local_addr".to_owned(),
                ex::local_addr(fd).map_or(Value::Null, |a| json!(a.to_string())),
            );
        }
        list.push(Value::Object(entry));
    }
    Ok(list)
}
