//! Process facts read from procfs: fds, environment, children, process groups, status fields.
//!
//! A pid that vanished between listing and reading simply drops out of the answers.

use std::collections::HashMap;
use std::fs;
use std::io;

/// Sends `sig` to `pid`.
pub fn kill(pid: u32, sig: i32) -> io::Result<()> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // 0 would signal the test's own process group (cargo and all), 1 init: a pid read from a
    // status report where no process runs yet must never get that far.
    if pid <= 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal pid {pid}"),
        ));
    }
    // SAFETY: kill takes plain integers; the callers only signal processes they started.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The fields of /proc/PID/stat after the command name: state, ppid, pgrp, session, ...
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces and parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The one-letter state (R, S, D, Z, ...), or `None` if the process is gone.
pub fn state_of(pid: u32) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

pub fn ppid_of(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

pub fn pgid_of(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(2)?.parse().ok()
}

/// Whether `pid` exists at all (a zombie counts).
pub fn exists(pid: u32) -> bool {
    state_of(pid).is_some()
}

/// Whether `pid` exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    matches!(state_of(pid), Some(s) if s != 'Z' && s != 'X')
}

pub fn is_zombie(pid: u32) -> bool {
    state_of(pid) == Some('Z')
}

/// Every pid in /proc.
pub fn all_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The direct children of `pid` (zombies included), sorted.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut children: Vec<u32> = all_pids()
        .into_iter()
        .filter(|&p| ppid_of(p) == Some(pid))
        .collect();
    children.sort_unstable();
    children
}

/// The direct children of `pid` (zombies included), sorted, read cheaply from
/// `/proc/PID/task/*/children`; falls back to [`children_of`] (a scan of every process) on a
/// kernel without that file.
pub fn task_children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut children = Vec::new();
    for task in tasks.filter_map(Result::ok) {
        match fs::read_to_string(task.path().join("children")) {
            Ok(text) => children.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return children_of(pid),
            Err(_) => {}
        }
    }
    children.sort_unstable();
    children.dedup();
    children
}

/// Whether `pid` runs reloadsup's keeper role (`__keeper`): a child of the primary that is
/// no worker.
pub fn is_keeper(pid: u32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == b"__keeper"))
}

/// Whether `pid` runs reloadsup's metrics worker role (`__metrics`, with `--metrics`).
pub fn is_metrics(pid: u32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == b"__metrics"))
}

/// Whether `pid` runs reloadsup's inspector role (`__inspector`, with `--ready listening`).
pub fn is_inspector(pid: u32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == b"__inspector"))
}

/// Every descendant of `pid` (zombies included), sorted.
pub fn descendants_of(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = all_pids()
        .into_iter()
        .filter_map(|p| Some((p, ppid_of(p)?)))
        .collect();
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, pp) in &parents {
            if pp == parent && !found.contains(&p) {
                found.push(p);
                frontier.push(p);
            }
        }
    }
    found.sort_unstable();
    found
}

/// The members of process group `pgid`, sorted.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let mut members: Vec<u32> = all_pids()
        .into_iter()
        .filter(|&p| pgid_of(p) == Some(pgid))
        .collect();
    members.sort_unstable();
    members
}

/// The open fds of `pid` with their link targets, sorted by fd.
pub fn fds_of(pid: u32) -> Vec<(i32, String)> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut fds: Vec<(i32, String)> = dir
        .filter_map(|e| {
            let e = e.ok()?;
            let fd: i32 = e.file_name().to_str()?.parse().ok()?;
            let target = fs::read_link(e.path()).ok()?;
            Some((fd, target.to_string_lossy().into_owned()))
        })
        .collect();
    fds.sort_unstable();
    fds
}

/// The environment `pid` was exec'd with.
pub fn environ_of(pid: u32) -> HashMap<String, String> {
    let Ok(bytes) = fs::read(format!("/proc/{pid}/environ")) else {
        return HashMap::new();
    };
    bytes
        .split(|&b| b == 0)
        .filter_map(|entry| {
            let entry = String::from_utf8_lossy(entry);
            let (k, v) = entry.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// A field of /proc/PID/status, like `VmRSS` ("1234 kB") or `SigBlk`.
pub fn status_field(pid: u32, name: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim().to_owned())
    })
}

/// A `kB` field of /proc/PID/status as a number of kB.
pub fn status_kb(pid: u32, name: &str) -> Option<u64> {
    status_field(pid, name)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Voluntary plus involuntary context switches so far, summed over every thread of `pid`:
/// each wake-up counts once.
pub fn context_switches(pid: u32) -> Option<u64> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0;
    for task in tasks.filter_map(Result::ok) {
        let Ok(text) = fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        for line in text.lines() {
            if let Some((key, value)) = line.split_once(':') {
                if key == "voluntary_ctxt_switches" || key == "nonvoluntary_ctxt_switches" {
                    total += value.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    Some(total)
}

/// CPU time `pid` has used so far in nanoseconds, summed over its threads, from
/// `/proc/PID/task/*/schedstat` (far finer than the clock ticks of `/proc/PID/stat`).
pub fn cpu_time_ns(pid: u32) -> Option<u64> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0;
    for task in tasks.filter_map(Result::ok) {
        let Ok(text) = fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        total += text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(total)
}

/// How many connections wait in the accept queue of the TCP listener on `addr` (from
/// /proc/net/tcp or tcp6: a listening socket's `rx_queue` is its accept backlog), or `None` if
/// no socket listens there. `Some(0)` after connecting means the server has accepted them all.
pub fn accept_queue(addr: std::net::SocketAddr) -> Option<u32> {
    let table = if addr.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let text = fs::read_to_string(table).ok()?;
    let port = format!(":{:04X}", addr.port());
    text.lines().skip(1).find_map(|line| {
        // sl local_address rem_address st tx_queue:rx_queue ...; 0A is LISTEN.
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 || !f[1].ends_with(&port) || f[3] != "0A" {
            return None;
        }
        let rx = f[4].split(':').nth(1)?;
        u32::from_str_radix(rx, 16).ok()
    })
}
