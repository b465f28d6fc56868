//! `--ready listening`: a starting worker is ready once it, or any process of its process group,
//! waits for connections on one of the listeners reloadsup gave its generation.
//!
//! This module owns the look into `/proc` and the short scan timer. It reads only; it never
//! signals, traces or stops a worker. Sockets are compared by their inode (`socket:[N]`), so a
//! `dup` or an fd moved by the server still counts and a socket the server opened itself never
//! does. What it can see, per thread of every process of the group:
//! - blocked in `accept`/`accept4` on the listener (`/proc/PID/task/TID/syscall`: number and
//!   first argument);
//! - the listener in an epoll interest list (the `tfd:` lines of `/proc/PID/fdinfo/EPFD`, which
//!   carry the target's inode), whether or not the thread waits in `epoll_wait` yet;
//! - blocked in `poll`/`ppoll`/`select`/`pselect6` with the listener among the read fds: the
//!   arguments point into the process's memory, read from `/proc/PID/mem` (allowed for the
//!   primary's own uid or root, and without a ptrace restriction such as Yama's scope 3);
//! - holding a TCP connection accepted from the listener (its local address in
//!   `/proc/PID/net/tcp{,6}`): a worker busy with requests whenever it is looked at.
//!
//! What it cannot see: io_uring accepts, a busy loop of non-blocking `accept` calls, a listener
//! in a poll set while the thread is between two calls (unless it holds an accepted TCP
//! connection; accepted Unix connections are not looked for), processes that left the process group
//! (`setsid`, `setpgid`), and anything `/proc` hides from the primary's uid. Such a worker is
//! rolled back at `--ready-timeout`.
//!
//! The scan runs only while a worker of `--ready listening` is starting, every [`SCAN_EVERY`];
//! at rest there is no timer.

use std::collections::HashMap;
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use super::state::{Event, Phase};
use super::{reconfigure, Primary};
use crate::config::ReadyMode;

/// How often a starting worker is looked at.
pub(crate) const SCAN_EVERY: Duration = Duration::from_millis(15);

/// At most this many bytes of a process's TCP table are read per scan (about 1700 rows).
const MAX_TCP_TABLE: u64 = 256 * 1024;

/// At most this many entries of a poll set or fds of a select set are read from a worker.
const MAX_POLL_FDS: u64 = 65536;

/// How a process was found waiting on one of its listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    pub pid: u32,
    pub how: String,
}

/// Syscall numbers of this architecture that wait for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// First argument: the fd.
    Accept,
    /// `(struct pollfd *fds, nfds_t nfds, ...)`.
    Poll,
    /// `(int nfds, fd_set *readfds, ...)`.
    Select,
}

#[cfg(target_arch = "x86_64")]
fn wait_kind(nr: i64) -> Option<(Wait, &'static str)> {
    match nr {
        43 => Some((Wait::Accept, "accept")),
        288 => Some((Wait::Accept, "accept4")),
        7 => Some((Wait::Poll, "poll")),
        271 => Some((Wait::Poll, "ppoll")),
        23 => Some((Wait::Select, "select")),
        270 => Some((Wait::Select, "pselect6")),
        _ => None,
    }
}

#[cfg(target_arch = "aarch64")]
fn wait_kind(nr: i64) -> Option<(Wait, &'static str)> {
    match nr {
        202 => Some((Wait::Accept, "accept")),
        242 => Some((Wait::Accept, "accept4")),
        73 => Some((Wait::Poll, "ppoll")),
        72 => Some((Wait::Select, "pselect6")),
        _ => None,
    }
}

/// Elsewhere only epoll interest lists are seen.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn wait_kind(_nr: i64) -> Option<(Wait, &'static str)> {
    None
}

/// A thread's `/proc/.../syscall` line: the syscall number and its arguments while it is
/// blocked in one; `None` when it runs or waits outside a syscall.
fn parse_syscall(line: &str) -> Option<(i64, Vec<u64>)> {
    let mut words = line.split_whitespace();
    let nr: i64 = words.next()?.parse().ok()?;
    if nr < 0 {
        return None;
    }
    let args = words
        .take(6)
        .map(|w| u64::from_str_radix(w.trim_start_matches("0x"), 16).ok())
        .collect::<Option<Vec<u64>>>()?;
    (args.len() == 6).then_some((nr, args))
}

/// The target inodes of an epoll fd's `fdinfo` (`tfd: N events: .. data: .. pos:0 ino:HEX ..`).
fn parse_epoll_inodes(fdinfo: &str) -> Vec<u64> {
    fdinfo
        .lines()
        .filter(|l| l.starts_with("tfd:"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("ino:"))
                .and_then(|h| u64::from_str_radix(h, 16).ok())
        })
        .collect()
}

/// The inode of a `socket:[N]` link.
fn socket_link_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The socket inode of a task's fd, if it is a socket.
fn fd_inode(pid: u32, tid: &str, fd: u64) -> Option<u64> {
    let link = fs::read_link(format!("/proc/{pid}/task/{tid}/fd/{fd}")).ok()?;
    socket_link_inode(link.to_str()?)
}

/// The socket inode of an fd the primary holds.
pub(crate) fn socket_inode(fd: impl AsFd) -> Option<u64> {
    nix::sys::stat::fstat(fd).ok().map(|st| st.st_ino)
}

/// Whether process `pid` waits for connections on a socket of `inodes`, and how.
pub(crate) fn process_waits(pid: u32, inodes: &[u64]) -> Option<String> {
    if inodes.is_empty() {
        return None;
    }
    if let Some(how) = epoll_holds(pid, inodes) {
        return Some(how);
    }
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut mem: Option<Option<fs::File>> = None;
    for task in tasks.flatten() {
        let tid = task.file_name();
        let Some(tid) = tid.to_str() else { continue };
        let Ok(line) = fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")) else {
            continue;
        };
        let Some((nr, args)) = parse_syscall(&line) else {
            continue;
        };
        let Some((wait, name)) = wait_kind(nr) else {
            continue;
        };
        let fds: Vec<u64> = match wait {
            Wait::Accept => vec![args[0]],
            Wait::Poll | Wait::Select => {
                let file = mem
                    .get_or_insert_with(|| fs::File::open(format!("/proc/{pid}/mem")).ok())
                    .as_ref();
                let Some(file) = file else { continue };
                if wait == Wait::Poll {
                    poll_fds(file, args[0], args[1])
                } else {
                    select_fds(file, args[1], args[0])
                }
            }
        };
        for fd in fds {
            if fd_inode(pid, tid, fd).is_some_and(|ino| inodes.contains(&ino)) {
                return Some(format!("thread {tid} waits in {name} on fd {fd}"));
            }
        }
    }
    // Last: the TCP table is the costliest look.
    holds_accepted(pid, inodes)
}

/// The read fds of a `poll` set in another process's memory.
fn poll_fds(mem: &fs::File, addr: u64, nfds: u64) -> Vec<u64> {
    const POLLIN: i16 = 0x1;
    let n = nfds.min(MAX_POLL_FDS) as usize;
    let mut buf = vec![0u8; n * 8];
    if n == 0 || mem.read_exact_at(&mut buf, addr).is_err() {
        return Vec::new();
    }
    // struct pollfd { int fd; short events; short revents; } in native byte order.
    buf.chunks_exact(8)
        .filter_map(|e| {
            let fd = i32::from_ne_bytes([e[0], e[1], e[2], e[3]]);
            let events = i16::from_ne_bytes([e[4], e[5]]);
            (fd >= 0 && events & POLLIN != 0).then_some(fd as u64)
        })
        .collect()
}

/// The fds of a `select` read set in another process's memory.
fn select_fds(mem: &fs::File, addr: u64, nfds: u64) -> Vec<u64> {
    let n = nfds.min(MAX_POLL_FDS);
    if addr == 0 || n == 0 {
        return Vec::new();
    }
    // fd_set is an array of longs; bit fd % bits of long fd / bits.
    let word = std::mem::size_of::<libc::c_ulong>() as u64;
    let words = n.div_ceil(word * 8);
    let mut buf = vec![0u8; (words * word) as usize];
    if mem.read_exact_at(&mut buf, addr).is_err() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, chunk) in buf.chunks_exact(word as usize).enumerate() {
        let mut bytes = [0u8; 8];
        bytes[..chunk.len()].copy_from_slice(chunk);
        let bits = if cfg!(target_endian = "little") {
            u64::from_le_bytes(bytes)
        } else {
            u64::from_be_bytes(bytes) >> (64 - word * 8)
        };
        for b in 0..word * 8 {
            let fd = i as u64 * word * 8 + b;
            if fd < n && bits & (1 << b) != 0 {
                out.push(fd);
            }
        }
    }
    out
}

/// `(local address, state, inode)` of each row of `/proc/PID/net/tcp` or `tcp6`.
fn parse_net_tcp(text: &str) -> Vec<(&str, &str, u64)> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            Some((*w.get(1)?, *w.get(3)?, w.get(9)?.parse().ok()?))
        })
        .collect()
}

/// Whether `pid` holds a TCP connection accepted from one of `inodes`: a busy worker that is
/// reading or writing whenever it is looked at has plainly been accepting. An accepted socket
/// has the listener's local address; a connection the worker made to it has an ephemeral one.
fn holds_accepted(pid: u32, inodes: &[u64]) -> Option<String> {
    use std::io::Read;
    let mut rows_text = String::new();
    for table in ["tcp", "tcp6"] {
        // Bounded: under load the table holds a row per TIME_WAIT connection (hundreds of
        // thousands), and the loop must not spend long here. Listeners come first in it; an
        // accepted connection past the bound is missed this time.
        if let Ok(f) = fs::File::open(format!("/proc/{pid}/net/{table}")) {
            let mut t = String::new();
            let _ = f.take(MAX_TCP_TABLE).read_to_string(&mut t);
            rows_text.push_str(&t);
            rows_text.push('\n');
        }
    }
    accepted_in(pid, &rows_text, inodes)
}

/// [`holds_accepted`] over the text of `pid`'s TCP tables, read already.
fn accepted_in(pid: u32, rows_text: &str, inodes: &[u64]) -> Option<String> {
    const LISTEN: &str = "0A";
    let rows = parse_net_tcp(rows_text);
    let ours: Vec<&str> = rows
        .iter()
        .filter(|(_, st, ino)| *st == LISTEN && inodes.contains(ino))
        .map(|(local, _, _)| *local)
        .collect();
    if ours.is_empty() {
        return None;
    }
    let accepted: Vec<u64> = rows
        .iter()
        .filter(|(local, st, ino)| *st != LISTEN && *ino != 0 && ours.contains(local))
        .map(|(_, _, ino)| *ino)
        .collect();
    if accepted.is_empty() {
        return None;
    }
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        let Ok(link) = fs::read_link(entry.path()) else {
            continue;
        };
        if link
            .to_str()
            .and_then(socket_link_inode)
            .is_some_and(|ino| accepted.contains(&ino))
        {
            return Some(format!(
                "holds fd {} accepted from the listener",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    None
}

/// Whether an epoll fd of `pid` has one of `inodes` in its interest list.
fn epoll_holds(pid: u32, inodes: &[u64]) -> Option<String> {
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        let Ok(link) = fs::read_link(entry.path()) else {
            continue;
        };
        if link.as_os_str() != "anon_inode:[eventpoll]" {
            continue;
        }
        let fd = entry.file_name();
        let Ok(info) = fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.to_string_lossy()))
        else {
            continue;
        };
        if parse_epoll_inodes(&info).iter().any(|i| inodes.contains(i)) {
            return Some(format!(
                "its epoll fd {} watches the listener",
                fd.to_string_lossy()
            ));
        }
    }
    None
}

/// The process group field of `/proc/PID/stat` (after the command name, which may hold
/// spaces and parentheses).
fn parse_stat_pgrp(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // state ppid pgrp
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// Every process by process group, from one walk of `/proc`.
pub(crate) fn process_groups() -> HashMap<u32, Vec<u32>> {
    let mut groups: HashMap<u32, Vec<u32>> = HashMap::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return groups;
    };
    for pid in dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
    {
        if let Some(pgrp) = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| parse_stat_pgrp(&s))
        {
            groups.entry(pgrp).or_default().push(pid);
        }
    }
    groups
}

/// Whether worker `pid` (a process group leader) or a process of its group waits for
/// connections on one of `inodes`. The leader is looked at first; `groups` (see
/// [`process_groups`]) is walked only when needed, and once for every worker of a scan.
pub(crate) fn group_waits(
    pid: u32,
    inodes: &[u64],
    groups: &mut Option<HashMap<u32, Vec<u32>>>,
) -> Option<Seen> {
    if let Some(how) = process_waits(pid, inodes) {
        return Some(Seen { pid, how });
    }
    let groups = groups.get_or_insert_with(process_groups);
    let members = groups.get(&pid).map_or(&[][..], |m| &m[..]);
    members
        .iter()
        .filter(|&&m| m != pid)
        .find_map(|&member| process_waits(member, inodes).map(|how| Seen { pid: member, how }))
}

impl Primary {
    /// Arms the scan timer while a worker waits to be seen listening, and disarms it once none
    /// does: called at the top of every turn.
    pub(super) fn arm_listening(&mut self, now: Instant) {
        let waiting = self.state.settings.ready == ReadyMode::Listening
            && self
                .state
                .processes
                .iter()
                .any(|p| p.phase == Phase::Starting);
        self.listening_at = match (waiting, self.listening_at) {
            (false, _) => None,
            (true, Some(t)) => Some(t),
            (true, None) => Some(now + SCAN_EVERY),
        };
    }

    /// When due, looks at every starting worker and reports the ones seen listening.
    pub(super) fn scan_listening(&mut self, now: Instant, actions: &mut Vec<super::Action>) {
        if self.listening_at.is_none_or(|t| t > now) {
            return;
        }
        self.listening_at = None;
        if self.state.settings.ready != ReadyMode::Listening {
            return;
        }
        let mut by_bound: HashMap<&str, u64> = HashMap::new();
        for l in &self.listeners {
            if let Some(ino) = socket_inode(&l.fd) {
                by_bound.insert(l.bound.as_str(), ino);
            }
        }
        let starting: Vec<(u32, u64, u32)> = self
            .state
            .processes
            .iter()
            .filter(|p| p.phase == Phase::Starting)
            .map(|p| (p.pid, p.generation, p.slot))
            .collect();
        let mut groups = None;
        for (pid, generation, slot) in starting {
            let Some(epoch) = reconfigure::epoch_of(&self.epochs, generation) else {
                continue;
            };
            let inodes: Vec<u64> = epoch
                .listeners
                .iter()
                .filter_map(|(_, bound)| by_bound.get(bound.as_str()).copied())
                .collect();
            if let Some(seen) = group_waits(pid, &inodes, &mut groups) {
                log::debug!(
                    "worker {slot} of generation {generation} (pid {pid}) is listening: pid {} {}",
                    seen.pid,
                    seen.how
                );
                actions.extend(self.state.handle(now, Event::Listening { pid }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::os::fd::AsRawFd;
    use std::process::{Child, Command, Stdio};

    #[test]
    fn syscall_lines_parse() {
        let line = "43 0x3 0x7ffd 0x7ffe 0x0 0x0 0x0 0x7ffc1 0x7f11\n";
        assert_eq!(
            parse_syscall(line),
            Some((43, vec![3, 0x7ffd, 0x7ffe, 0, 0, 0]))
        );
        assert_eq!(parse_syscall("running\n"), None);
        assert_eq!(parse_syscall("-1 0x7ffc 0x7f11\n"), None);
        assert_eq!(parse_syscall("7 0x1 zz\n"), None);
        assert_eq!(parse_syscall(""), None);
    }

    #[test]
    fn epoll_fdinfo_yields_target_inodes() {
        let info = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\n\
                    tfd:        3 events:       19 data:                3  pos:0 ino:2a5b sdev:8\n\
                    tfd:        7 events:       19 data:                7  pos:0 ino:10 sdev:8\n";
        assert_eq!(parse_epoll_inodes(info), vec![0x2a5b, 0x10]);
        assert_eq!(parse_epoll_inodes("garbage\ntfd: x"), Vec::<u64>::new());
    }

    #[test]
    fn net_tcp_rows_parse() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 33 1 0 100 0 0 10 0\n\
            1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 34 1 0 20 4 30 10 -1\n\
            bad\n";
        assert_eq!(
            parse_net_tcp(text),
            vec![("0100007F:1F90", "0A", 33), ("0100007F:1F90", "01", 34)]
        );
    }

    #[test]
    fn child_holding_a_connection_accepted_from_our_socket_is_seen() {
        // The loop reads a bounded part of the TCP table; on a machine with a bigger one
        // (TIME_WAIT rows of other runs) the connection may lie past it, so the test reads the
        // whole table and checks the matching on it.
        let whole = |pid: u32| {
            ["tcp", "tcp6"]
                .iter()
                .map(|t| fs::read_to_string(format!("/proc/{pid}/net/{t}")).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n")
        };
        let holds_accepted = |pid: u32, inodes: &[u64]| accepted_in(pid, &whole(pid), inodes);
        let (l, ino) = listener();
        // Accepts one connection, then sleeps holding it (no thread waits on the listener).
        let code = format!("{GO}c, _ = s.accept()\ntime.sleep(60)");
        let Some(py) = Py::start(&l, &code) else {
            return;
        };
        let _client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        // The accept itself is seen first: wait until the child sleeps.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut how = None;
        while Instant::now() < deadline {
            how = holds_accepted(py.pid(), &[ino]);
            if how.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let how = how.expect("a child holding an accepted connection is seen");
        assert!(how.contains("accepted"), "{how}");
        // A connection of its own to our port is no accepted one.
        let (l2, ino2) = listener();
        let code = format!(
            "c = socket.create_connection({:?})\n{GO}time.sleep(60)",
            ("127.0.0.1", l.local_addr().unwrap().port())
        );
        let Some(py2) = Py::start(&l2, &code) else {
            return;
        };
        assert_eq!(holds_accepted(py2.pid(), &[ino, ino2]), None);
    }

    #[test]
    fn stat_lines_yield_the_process_group() {
        assert_eq!(parse_stat_pgrp("42 (a b) c) S 1 40 40 0"), Some(40));
        assert_eq!(parse_stat_pgrp("42 (x"), None);
        assert_eq!(socket_link_inode("socket:[123]"), Some(123));
        assert_eq!(socket_link_inode("pipe:[123]"), None);
    }

    /// A python3 child that inherits `listener` at fd 3 and runs `code` on it (as `s`), then
    /// prints "go" just before it waits.
    struct Py {
        child: Child,
    }

    impl Py {
        fn start(listener: &TcpListener, code: &str) -> Option<Py> {
            if Command::new("python3").arg("-c").arg("1").status().is_err() {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "python3 is needed for this test"
                );
                eprintln!("skipped: no python3");
                return None;
            }
            // The child gets the listener by inheritance: clear close-on-exec for the spawn only.
            let fd = listener.as_raw_fd();
            use nix::fcntl::{fcntl, FcntlArg, FdFlag};
            fcntl(listener, FcntlArg::F_SETFD(FdFlag::empty())).unwrap();
            let script = format!(
                "import socket, select, sys, time\n\
                 s = socket.socket(fileno={fd})\n\
                 {code}"
            );
            let child = Command::new("python3")
                .arg("-c")
                .arg(script)
                .stdout(Stdio::piped())
                .spawn();
            fcntl(listener, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).unwrap();
            let mut child = child.unwrap();
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert_eq!(line.trim(), "go");
            Some(Py { child })
        }

        fn pid(&self) -> u32 {
            self.child.id()
        }

        /// Waits (bounded) until `group_waits` says yes, or gives up.
        fn seen(&self, inodes: &[u64]) -> Option<Seen> {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Some(seen) = process_waits(self.pid(), inodes) {
                    return Some(Seen {
                        pid: self.pid(),
                        how: seen,
                    });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            None
        }
    }

    impl Drop for Py {
        fn drop(&mut self) {
            let pid = self.pid();
            let leads = fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| parse_stat_pgrp(&s))
                == Some(pid);
            if leads {
                // Its own group (and only that): the grandchild of `a_process_of_the_group_counts`.
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn listener() -> (TcpListener, u64) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let ino = socket_inode(&l).unwrap();
        (l, ino)
    }

    const GO: &str = "print('go', flush=True)\n";

    #[test]
    fn child_blocked_in_accept_on_our_socket_is_seen() {
        let (l, ino) = listener();
        let Some(py) = Py::start(&l, &format!("{GO}s.accept()")) else {
            return;
        };
        let seen = py.seen(&[ino]).expect("a child in accept is seen");
        assert!(seen.how.contains("accept"), "{seen:?}");
        assert_eq!(group_waits(py.pid(), &[ino + 1], &mut None), None);
    }

    #[test]
    fn child_with_our_socket_in_epoll_is_seen() {
        let (l, ino) = listener();
        let code = format!("e = select.epoll()\ne.register(s.fileno())\n{GO}time.sleep(60)");
        let Some(py) = Py::start(&l, &code) else {
            return;
        };
        let seen = py
            .seen(&[ino])
            .expect("a child with the socket in epoll is seen");
        assert!(seen.how.contains("epoll"), "{seen:?}");
    }

    #[test]
    fn child_polling_our_socket_is_seen() {
        let (l, ino) = listener();
        let code =
            format!("p = select.poll()\np.register(s.fileno(), select.POLLIN)\n{GO}p.poll()");
        let Some(py) = Py::start(&l, &code) else {
            return;
        };
        let seen = py.seen(&[ino]).expect("a child polling the socket is seen");
        assert!(seen.how.contains("poll"), "{seen:?}");
    }

    #[test]
    fn child_selecting_on_our_socket_is_seen() {
        let (l, ino) = listener();
        let code = format!("{GO}select.select([s], [], [])");
        let Some(py) = Py::start(&l, &code) else {
            return;
        };
        let seen = py
            .seen(&[ino])
            .expect("a child selecting on the socket is seen");
        assert!(seen.how.contains("select"), "{seen:?}");
    }

    #[test]
    fn child_waiting_on_a_socket_not_ours_is_not_seen() {
        let (l, ino) = listener();
        // It accepts on a socket of its own, polls it and holds it in epoll, and only sleeps
        // with ours.
        let code = format!(
            "o = socket.socket()\no.bind(('127.0.0.1', 0))\no.listen()\n\
             e = select.epoll()\ne.register(o.fileno())\n\
             import threading\n\
             threading.Thread(target=lambda: select.select([o], [], []), daemon=True).start()\n\
             threading.Thread(target=lambda: select.poll().poll(), daemon=True).start()\n\
             {GO}o.accept()"
        );
        let Some(py) = Py::start(&l, &code) else {
            return;
        };
        // Give it time to be blocked everywhere, then it must still not count.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(process_waits(py.pid(), &[ino]), None);
        // Its own socket would be seen: the check looks, it just does not count strangers.
        let other = fs::read_dir(format!("/proc/{}/fd", py.pid()))
            .unwrap()
            .flatten()
            .filter_map(|e| socket_link_inode(fs::read_link(e.path()).ok()?.to_str()?))
            .filter(|&i| i != ino)
            .collect::<Vec<_>>();
        assert!(py.seen(&other).is_some());
    }

    #[test]
    fn a_process_of_the_group_counts() {
        let (l, ino) = listener();
        // The child makes its own group and a grandchild in it waits in accept.
        let code = format!(
            "import os\nos.setpgid(0, 0)\n\
             if os.fork() == 0:\n    {GO}    s.accept()\n    os._exit(0)\n\
             time.sleep(60)"
        );
        let Some(py) = Py::start(&l, &code) else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = None;
        while seen.is_none() && Instant::now() < deadline {
            seen = group_waits(py.pid(), &[ino], &mut None);
            std::thread::sleep(Duration::from_millis(10));
        }
        let seen = seen.expect("the grandchild in accept is seen");
        assert_ne!(seen.pid, py.pid());
    }
}
