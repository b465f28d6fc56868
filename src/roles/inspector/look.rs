//! What the inspector sees of a starting worker (`--ready listening`): whether it, or another
//! process of its own (see [`members`]), waits for connections on one of the listeners
//! reloadsup gave its generation.
//!
//! It reads only; it never signals, traces or stops a worker. Sockets are compared by their
//! inode (`socket:[N]`), so a `dup` or an fd moved by the server still counts and a socket the
//! server opened itself never does. What it can see, per thread of every process looked at:
//! - blocked in `accept`/`accept4` on the listener (`/proc/PID/task/TID/syscall`: number and
//!   first argument);
//! - the listener in an epoll interest list (the `tfd:` lines of `/proc/PID/fdinfo/EPFD`, which
//!   carry the target's inode), whether or not the thread waits in `epoll_wait` yet;
//! - blocked in `poll`/`ppoll`/`select`/`pselect6` with the listener among the read fds: the
//!   arguments point into the process's memory, read from `/proc/PID/mem` (allowed for the
//!   worker's own uid or root, and without a ptrace restriction such as Yama's scope 3);
//! - holding a TCP connection accepted from the listener: a worker busy with requests whenever
//!   it is looked at (gunicorn's sync workers under load, which never block: the listener
//!   always has a connection waiting). Each socket the process holds is copied for a moment
//!   (`pidfd_getfd`) and asked for its addresses; for a process with an epoll fd, or where
//!   copying is refused, a NETLINK_SOCK_DIAG dump of the connections on the listener's port
//!   (every state but LISTEN and TIME_WAIT), paced, is matched against the process's fds.
//!
//! What it cannot see: io_uring accepts, a busy loop of non-blocking `accept` calls, a listener
//! in a poll set while the thread is between two calls (unless it holds an accepted TCP
//! connection; accepted Unix connections are not looked for), without per-worker cgroups the
//! processes that left the worker's process group (`setsid`, `setpgid`) or its tree, accepted
//! connections of a worker in another network namespace, and anything `/proc` hides from the
//! inspector's uid. Such a worker is rolled back at `--ready-timeout`.
//!
//! What one scan reads is bounded whatever a worker does: a process's fd table once
//! ([`MAX_FDS`] entries), [`MAX_TASKS_PER_SCAN`] threads, [`MAX_ENTRIES_PER_SCAN`] poll or
//! select entries, smallest sets first, and [`MAX_MEMBERS`] processes per worker. What no
//! bound can cover (a read of an epoll's fdinfo or of the worker's memory that the kernel
//! makes wait on the worker, a userfaultfd or FUSE page) stalls this process, never the
//! primary, which kills it after a deadline.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use netlink_sys::Socket;

/// At most this many sockets are read from one sock_diag dump (about 1.4 MB): the TCP
/// connections on one listener's port other than TIME_WAIT ones, accept queue included.
const MAX_DIAG_SOCKETS: usize = 16384;

/// At most this many fds of one process are looked at per scan (listeners, epoll fds and
/// sockets come first in a server's table: they are its lowest fd numbers).
const MAX_FDS: usize = 4096;

/// At most this many threads' system calls are read per scan, over every process.
const MAX_TASKS_PER_SCAN: usize = 4096;

/// At most this many poll or select entries are read per scan, over every thread: a worker
/// with many threads polling huge sets must not hold up the loop.
const MAX_ENTRIES_PER_SCAN: u64 = 1 << 16;

/// At most this much of an epoll fd's fdinfo is read (a line per watched fd).
const MAX_FDINFO: u64 = 1 << 20;

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

/// The socket inode of an fd the primary holds.
pub(crate) fn socket_inode(fd: impl AsFd) -> Option<u64> {
    nix::sys::stat::fstat(fd).ok().map(|st| st.st_ino)
}

/// The local address of a TCP socket the primary holds; `None` for any other kind.
pub(crate) fn tcp_address(fd: impl AsFd) -> Option<SocketAddr> {
    use nix::sys::socket::{getsockname, getsockopt, sockopt, SockType, SockaddrStorage};
    let fd = fd.as_fd();
    if getsockopt(&fd, sockopt::SockType).ok()? != SockType::Stream {
        return None;
    }
    let addr = getsockname::<SockaddrStorage>(fd.as_raw_fd()).ok()?;
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(std::net::SocketAddrV4::from(*v4).into());
    }
    addr.as_sockaddr_in6()
        .map(|v6| std::net::SocketAddrV6::from(*v6).into())
}

/// The listeners a worker was given, as a scan compares them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Ours {
    /// Every listener's socket inode.
    pub inodes: Vec<u64>,
    /// The local addresses of the TCP ones.
    pub tcp: Vec<SocketAddr>,
}

/// What one scan has looked up, shared by every worker and process it looks at.
pub(crate) struct Scan {
    /// The sock_diag socket, opened at the first need (`None` inside: it could not be).
    diag: Option<Option<Socket>>,
    /// How many processes may still get a sock_diag look in this scan.
    dumps_left: u32,
    /// The time this scan spent in sock_diag dumps.
    pub(crate) dumped: Duration,
    /// Threads whose system call may still be read in this scan.
    tasks_left: usize,
    /// Entries of poll and select sets that may still be read in this scan.
    entries_left: u64,
}

impl Default for Scan {
    /// A scan with no bound on dumps (the primary bounds them, see [`super::serve`]).
    fn default() -> Scan {
        Scan::new(u32::MAX)
    }
}

impl Scan {
    pub(crate) fn new(dumps_left: u32) -> Scan {
        Scan {
            diag: None,
            dumps_left,
            dumped: Duration::ZERO,
            tasks_left: MAX_TASKS_PER_SCAN,
            entries_left: MAX_ENTRIES_PER_SCAN,
        }
    }

    /// The inodes of `listener`'s connections now (see [`tcp_connections`]); none when the
    /// kernel cannot be asked.
    fn connections(&mut self, listener: SocketAddr) -> Vec<u64> {
        let diag = self.diag.get_or_insert_with(|| match sock_diag() {
            Ok(s) => Some(s),
            Err(e) => {
                log::debug!("--ready listening: no sock_diag socket: {e}");
                None
            }
        });
        let Some(diag) = diag.as_ref() else {
            return Vec::new();
        };
        match tcp_connections(diag, listener) {
            Ok(found) => found,
            Err(e) => {
                log::debug!("--ready listening: sock_diag dump for {listener}: {e}");
                // A dump left half read would answer the next request: start afresh.
                self.diag = None;
                Vec::new()
            }
        }
    }
}

/// The fds of one process that matter to a look, from one pass over `/proc/PID/fd` (at most
/// [`MAX_FDS`] entries).
#[derive(Debug, Default)]
struct FdTable {
    /// The fd numbers that hold one of our listeners.
    listeners: Vec<u64>,
    /// The fd numbers of epoll instances.
    epolls: Vec<u64>,
    /// The fd numbers of every other socket.
    sockets: Vec<i32>,
}

fn fd_table(pid: u32, inodes: &[u64]) -> Option<FdTable> {
    let mut table = FdTable::default();
    for entry in fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .take(MAX_FDS)
    {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|f| f.parse::<u64>().ok())
        else {
            continue;
        };
        let Ok(link) = fs::read_link(entry.path()) else {
            continue;
        };
        if link.as_os_str() == "anon_inode:[eventpoll]" {
            table.epolls.push(fd);
        } else if let Some(ino) = link.to_str().and_then(socket_link_inode) {
            if inodes.contains(&ino) {
                table.listeners.push(fd);
            } else if let Ok(fd) = i32::try_from(fd) {
                table.sockets.push(fd);
            }
        }
    }
    Some(table)
}

/// Whether process `pid` waits for connections on one of `ours`, and how. Its fd table is
/// read once; the threads' waits are then compared with it in memory, within the scan's
/// budgets ([`MAX_TASKS_PER_SCAN`], [`MAX_ENTRIES_PER_SCAN`]).
pub(crate) fn process_waits(pid: u32, ours: &Ours, scan: &mut Scan) -> Option<String> {
    let inodes = &ours.inodes[..];
    if inodes.is_empty() {
        return None;
    }
    let table = fd_table(pid, inodes)?;
    if let Some(how) = epoll_holds(pid, &table.epolls, inodes) {
        return Some(how);
    }
    // A process that holds none of our listeners cannot wait on one; it may still hold a
    // connection accepted from one (a listener closed after the fork).
    if !table.listeners.is_empty() {
        if let Some(how) = thread_waits(pid, &table.listeners, scan) {
            return Some(how);
        }
    }
    // Last: the dump is the costliest look.
    holds_accepted_in(pid, &table, ours, scan)
}

/// Whether a thread of `pid` is blocked waiting on one of the fds `listeners`. Every thread's
/// system call is read first (an `accept` is told at once); then the poll and select sets,
/// smallest first, while the scan's budget of entries lasts: a few threads polling huge sets
/// cannot hide the one that polls the listener.
fn thread_waits(pid: u32, listeners: &[u64], scan: &mut Scan) -> Option<String> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    // (entries, tid, kind, name, set address).
    let mut sets: Vec<(u64, String, Wait, &'static str, u64)> = Vec::new();
    for task in tasks.flatten() {
        if scan.tasks_left == 0 {
            break;
        }
        scan.tasks_left -= 1;
        let tid = task.file_name();
        let Some(tid) = tid.to_str() else { continue };
        let Ok(line) = fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")) else {
            continue;
        };
        let Some((nr, args)) = parse_syscall(&line) else {
            continue;
        };
        match wait_kind(nr) {
            Some((Wait::Accept, name)) if listeners.contains(&args[0]) => {
                return Some(format!("thread {tid} waits in {name} on fd {}", args[0]));
            }
            Some((Wait::Poll, name)) => sets.push((
                args[1].min(MAX_POLL_FDS),
                tid.into(),
                Wait::Poll,
                name,
                args[0],
            )),
            Some((Wait::Select, name)) => sets.push((
                args[0].min(MAX_POLL_FDS),
                tid.into(),
                Wait::Select,
                name,
                args[1],
            )),
            _ => {}
        }
    }
    if sets.is_empty() {
        return None;
    }
    sets.sort_by_key(|set| set.0);
    let mem = fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    for (entries, tid, wait, name, addr) in sets {
        let n = entries.min(scan.entries_left);
        if n == 0 {
            return None;
        }
        scan.entries_left -= n;
        let fds = if wait == Wait::Poll {
            poll_fds(&mem, addr, n)
        } else {
            select_fds(&mem, addr, n)
        };
        if let Some(fd) = fds.into_iter().find(|fd| listeners.contains(fd)) {
            return Some(format!("thread {tid} waits in {name} on fd {fd}"));
        }
    }
    None
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

/// The TCP connections bound to `listener`'s port, and to its address unless it is a wildcard,
/// in every state but LISTEN and TIME_WAIT: their inodes (0 for a connection still in the
/// accept queue, which no process holds). One NETLINK_SOCK_DIAG dump of the primary's network namespace, which
/// the kernel serves inside `send` and `recv` (the socket is non-blocking: an empty queue ends
/// the dump early, it never waits), bounded to [`MAX_DIAG_SOCKETS`] answers.
fn tcp_connections(diag: &Socket, listener: SocketAddr) -> io::Result<Vec<u64>> {
    use netlink_packet_core::{
        NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
    };
    use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
    use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
    use netlink_packet_sock_diag::SockDiagMessage;

    let (family, mut socket_id) = match listener {
        SocketAddr::V4(_) => (AF_INET, SocketId::new_v4()),
        SocketAddr::V6(_) => (AF_INET6, SocketId::new_v6()),
    };
    // The kernel skips sockets of other source ports inside the dump when it is set (seen on
    // 6.18: one answer per dump with connections on other ports present); the answers are
    // filtered below all the same, for kernels that do not.
    socket_id.source_port = listener.port();
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all() - StateFlags::LISTEN - StateFlags::TIME_WAIT,
            socket_id,
        })
        .into(),
    );
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);
    diag.send(&bytes, 0)?;

    let wildcard = listener.ip().is_unspecified();
    let mut inodes = Vec::new();
    let mut answers = 0;
    // A dump part is at most 32 KiB.
    let mut buf = vec![0u8; 64 * 1024];
    while answers < MAX_DIAG_SOCKETS {
        let n = match diag.recv(&mut &mut buf[..], 0) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        };
        let mut part = &buf[..n.min(buf.len())];
        while !part.is_empty() {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(part)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    answers += 1;
                    let id = &r.header.socket_id;
                    if id.source_port == listener.port()
                        && (wildcard || id.source_address == listener.ip())
                    {
                        inodes.push(u64::from(r.header.inode));
                    }
                }
                NetlinkPayload::Done(_) => return Ok(inodes),
                // An error with no code is an acknowledgement.
                NetlinkPayload::Error(e) if e.code.is_none() => return Ok(inodes),
                NetlinkPayload::Error(e) => return Err(e.to_io()),
                _ => {}
            }
            if len == 0 || len > part.len() {
                break;
            }
            part = &part[len..];
        }
    }
    Ok(inodes)
}

/// The NETLINK_SOCK_DIAG socket of one scan (close-on-exec, non-blocking).
fn sock_diag() -> io::Result<Socket> {
    let socket = Socket::new(netlink_sys::protocols::NETLINK_SOCK_DIAG)?;
    socket.set_non_blocking(true)?;
    // Answers from the kernel (port 0) only.
    socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    Ok(socket)
}

/// `(fd, inode)` of each socket `pid` holds other than `ours`.
fn other_sockets(pid: u32, ours: &[u64]) -> Vec<(String, u64)> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.flatten()
        .take(MAX_FDS)
        .filter_map(|entry| {
            let link = fs::read_link(entry.path()).ok()?;
            let ino = socket_link_inode(link.to_str()?)?;
            (!ours.contains(&ino)).then(|| (entry.file_name().to_string_lossy().into_owned(), ino))
        })
        .collect()
}

/// Whether `pid` holds a TCP connection accepted from one of its TCP listeners: a busy worker
/// that is reading or writing whenever it is looked at has plainly been accepting. An accepted
/// socket has the listener's local port (and address); a connection the worker made to it has
/// an ephemeral one.
///
/// Looked at by copying the process's sockets ([`copied_in`]); where that is not
/// allowed or not safe, through a sock_diag dump ([`accepted_by_dump`]).
fn holds_accepted_in(pid: u32, table: &FdTable, ours: &Ours, scan: &mut Scan) -> Option<String> {
    if ours.tcp.is_empty() {
        return None;
    }
    match copied_in(pid, table, ours) {
        Copied::Found(how) => Some(how),
        Copied::Nothing => None,
        Copied::CannotLook => accepted_by_dump(pid, ours, scan),
    }
}

/// [`holds_accepted_in`] with the process's fd table read here.
#[cfg(test)]
fn holds_accepted(pid: u32, ours: &Ours, scan: &mut Scan) -> Option<String> {
    let table = fd_table(pid, &ours.inodes)?;
    holds_accepted_in(pid, &table, ours, scan)
}

/// [`copied_in`] with the process's fd table read here.
#[cfg(test)]
fn accepted_by_copy(pid: u32, ours: &Ours) -> Copied {
    fd_table(pid, &ours.inodes).map_or(Copied::Nothing, |table| copied_in(pid, &table, ours))
}

/// What [`copied_in`] found.
#[derive(Debug, PartialEq, Eq)]
enum Copied {
    Found(String),
    Nothing,
    /// Not allowed, not supported, or not safe for this process: the dump must tell.
    CannotLook,
}

/// At most this many sockets of one process are copied and looked at per scan.
const MAX_COPIED: usize = 256;

/// The cheap, race-free look for [`holds_accepted_in`]: each socket the process holds (but its
/// listeners) is copied into the primary for a moment (`pidfd_getfd`) and asked for its
/// addresses; a connected TCP socket with a listener's local address was accepted from it.
/// A few system calls per socket, no walk of the kernel's table, and the socket is looked at
/// while the process holds it. Never for a process with an epoll fd: while the copy is open,
/// closing the process's own fd would not take that socket out of its epoll set, and an
/// event for a closed fd could reach it (a dangling pointer in a C server's event data).
fn copied_in(pid: u32, table: &FdTable, ours: &Ours) -> Copied {
    if !table.epolls.is_empty() {
        return Copied::CannotLook;
    }
    let sockets = &table.sockets;
    if !sockets.is_empty() && !crate::sys::closer_keeps_up() {
        return Copied::CannotLook;
    }
    for &fd in sockets.iter().take(MAX_COPIED) {
        let copy = match crate::sys::copy_fd_of(pid, fd) {
            Ok(copy) => copy,
            // Closed since the listing (or the process is gone): the next socket.
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Copied::Nothing,
            Err(e) => {
                log::debug!("--ready listening: no copy of fd {fd} of pid {pid}: {e}");
                return Copied::CannotLook;
            }
        };
        let local = tcp_address(&copy);
        let connected =
            nix::sys::socket::getpeername::<nix::sys::socket::SockaddrStorage>(copy.as_raw_fd())
                .is_ok();
        // Closed on another thread: if the process closed its own fd meanwhile, ours is the
        // last, and with `SO_LINGER` set and unsent data its close waits.
        crate::sys::close_later(copy);
        if let Some(local) = local.filter(|_| connected) {
            if ours.tcp.iter().any(|&l| accepted_on(l, local)) {
                return Copied::Found(format!("holds fd {fd} accepted from the listener"));
            }
        }
    }
    Copied::Nothing
}

/// Whether a connection whose local address is `local` was accepted on `listener`: the same
/// port, and the same address unless the listener is bound to every address.
fn accepted_on(listener: SocketAddr, local: SocketAddr) -> bool {
    listener.port() == local.port()
        && (listener.ip().is_unspecified() || listener.ip() == local.ip())
}

/// [`holds_accepted_in`] through a sock_diag dump, when the process's sockets cannot be copied.
///
/// Under load a connection lives for a fraction of a millisecond while a dump takes one to
/// ten (the kernel walks its whole table), so the process's sockets are read just before the
/// dump and again just after it: a socket held at either moment that the dump found on the
/// port counts (socket inodes are not reused while the socket lives). No dump is made for a
/// process that holds no socket but its listeners.
fn accepted_by_dump(pid: u32, ours: &Ours, scan: &mut Scan) -> Option<String> {
    if scan.dumps_left == 0 {
        return None;
    }
    let before = other_sockets(pid, &ours.inodes);
    if before.is_empty() {
        return None;
    }
    scan.dumps_left -= 1;
    let began = Instant::now();
    let mut accepted: Vec<u64> = Vec::new();
    for &listener in &ours.tcp {
        accepted.extend(scan.connections(listener));
    }
    scan.dumped += began.elapsed();
    if accepted.is_empty() {
        return None;
    }
    let after = other_sockets(pid, &ours.inodes);
    before
        .iter()
        .chain(&after)
        .find(|(_, ino)| accepted.contains(ino))
        .map(|(fd, _)| format!("holds fd {fd} accepted from the listener"))
}

/// Whether one of the epoll fds `epolls` of `pid` has one of `inodes` in its interest list.
fn epoll_holds(pid: u32, epolls: &[u64], inodes: &[u64]) -> Option<String> {
    use std::io::Read;
    for fd in epolls {
        let Ok(file) = fs::File::open(format!("/proc/{pid}/fdinfo/{fd}")) else {
            continue;
        };
        let mut info = String::new();
        if file.take(MAX_FDINFO).read_to_string(&mut info).is_err() {
            continue;
        }
        if parse_epoll_inodes(&info).iter().any(|i| inodes.contains(i)) {
            return Some(format!("its epoll fd {fd} watches the listener"));
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

/// At most this many processes of one worker are looked at per scan.
const MAX_MEMBERS: usize = 1024;

/// At most this much of a worker's `cgroup.procs` is read.
const MAX_PROCS_FILE: u64 = 64 * 1024;

/// The processes of worker `pid` other than itself: every process of its own cgroup when it
/// has one (which a process cannot leave, even with `setsid()`), else its descendants that
/// are still in its process group. Never a walk of all of `/proc`: another user's thousands
/// of processes cost a scan nothing. At most [`MAX_MEMBERS`].
pub(crate) fn members(pid: u32, cgroup: Option<&std::path::Path>) -> Vec<u32> {
    use std::io::Read;
    if let Some(dir) = cgroup {
        let mut text = String::new();
        if fs::File::open(dir.join("cgroup.procs"))
            .and_then(|f| f.take(MAX_PROCS_FILE).read_to_string(&mut text))
            .is_ok()
        {
            return text
                .lines()
                .filter_map(|l| l.trim().parse::<u32>().ok())
                .filter(|&m| m != pid)
                .take(MAX_MEMBERS)
                .collect();
        }
    }
    // Breadth first through each thread's `children`, keeping those of the worker's group.
    let mut found = Vec::new();
    let mut queue = std::collections::VecDeque::from([pid]);
    let mut visited = 0;
    while let Some(parent) = queue.pop_front() {
        visited += 1;
        if visited > MAX_MEMBERS || found.len() >= MAX_MEMBERS {
            break;
        }
        let Ok(tasks) = fs::read_dir(format!("/proc/{parent}/task")) else {
            continue;
        };
        for task in tasks.flatten().take(MAX_TASKS_PER_SCAN) {
            let Ok(children) = fs::read_to_string(task.path().join("children")) else {
                continue;
            };
            for child in children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
            {
                if queue.len() + found.len() >= MAX_MEMBERS {
                    break;
                }
                let in_group = fs::read_to_string(format!("/proc/{child}/stat"))
                    .ok()
                    .and_then(|s| parse_stat_pgrp(&s))
                    == Some(pid);
                if in_group {
                    found.push(child);
                }
                // A child in another group may still have children in ours.
                queue.push_back(child);
            }
        }
    }
    found
}

/// Whether worker `pid` (a process group leader) or another of its processes (see
/// [`members`]) waits for connections on one of `ours`. The leader is looked at first.
pub(crate) fn group_waits(
    pid: u32,
    cgroup: Option<&std::path::Path>,
    ours: &Ours,
    scan: &mut Scan,
) -> Option<Seen> {
    if let Some(how) = process_waits(pid, ours, scan) {
        return Some(Seen { pid, how });
    }
    members(pid, cgroup)
        .into_iter()
        .find_map(|member| process_waits(member, ours, scan).map(|how| Seen { pid: member, how }))
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

    /// Polls `look` (bounded) until it says something.
    fn within_10s(mut look: impl FnMut() -> Option<String>) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(how) = look() {
                return Some(how);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    #[test]
    fn child_holding_a_connection_accepted_from_our_socket_is_seen() {
        let (l, ours) = listener();
        // Accepts one connection, then sleeps holding it (no thread waits on the listener).
        let code = format!("{GO}c, _ = s.accept()\ntime.sleep(60)");
        let Some(py) = Py::start(&l, &code) else {
            return;
        };
        let _client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        // The accept itself is seen first: wait until the child sleeps.
        let how = within_10s(|| accepted_by_dump(py.pid(), &ours, &mut Scan::default()))
            .expect("a child holding an accepted connection is seen");
        assert!(how.contains("accepted"), "{how}");
        // With no dump left in the scan the look gives up.
        assert_eq!(accepted_by_dump(py.pid(), &ours, &mut Scan::new(0)), None);
        // Copying its sockets sees it too, and so does the look that chooses.
        let copied = accepted_by_copy(py.pid(), &ours);
        assert!(
            matches!(&copied, Copied::Found(how) if how.contains("accepted")),
            "{copied:?}"
        );
        assert!(holds_accepted(py.pid(), &ours, &mut Scan::new(0)).is_some());
        // A connection of its own to our port is no accepted one.
        let (l2, ours2) = listener();
        let code = format!(
            "c = socket.create_connection({:?})\n{GO}time.sleep(60)",
            ("127.0.0.1", l.local_addr().unwrap().port())
        );
        let Some(py2) = Py::start(&l2, &code) else {
            return;
        };
        let both = Ours {
            inodes: [ours.inodes, ours2.inodes].concat(),
            tcp: [ours.tcp, ours2.tcp].concat(),
        };
        assert_eq!(
            accepted_by_dump(py2.pid(), &both, &mut Scan::default()),
            None
        );
        assert_eq!(accepted_by_copy(py2.pid(), &both), Copied::Nothing);
    }

    /// A process with an epoll fd is never copied from: the dump looks instead.
    #[test]
    fn a_child_with_an_epoll_fd_is_not_copied_from() {
        let (l, ours) = listener();
        let code = format!("e = select.epoll()\n{GO}c, _ = s.accept()\ntime.sleep(60)");
        let Some(py) = Py::start(&l, &code) else {
            return;
        };
        let _client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        within_10s(|| accepted_by_dump(py.pid(), &ours, &mut Scan::default()))
            .expect("the child holds its connection");
        assert_eq!(accepted_by_copy(py.pid(), &ours), Copied::CannotLook);
        assert!(holds_accepted(py.pid(), &ours, &mut Scan::default()).is_some());
    }

    /// The last close of a copied socket with `SO_LINGER` and unsent data waits for the linger
    /// time; it happens on the closing thread, so the loop goes on at once.
    #[test]
    fn a_lingering_close_of_a_copy_never_waits_on_the_caller() {
        use std::io::Write;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        // The client never reads: fill what the server may send, then linger 20 s on close.
        server.set_nonblocking(true).unwrap();
        let chunk = [0u8; 65536];
        let began = Instant::now();
        while began.elapsed() < Duration::from_secs(10) {
            if (&server).write(&chunk).is_err() {
                break;
            }
        }
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 20,
        };
        nix::sys::socket::setsockopt(&server, nix::sys::socket::sockopt::Linger, &linger).unwrap();
        server.set_nonblocking(false).unwrap();
        assert!(crate::sys::closer_keeps_up(), "the closing thread runs");
        let began = Instant::now();
        crate::sys::close_later(std::os::fd::OwnedFd::from(server));
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "the close waited {:?} on the caller",
            began.elapsed()
        );
        drop(client);
    }

    #[test]
    fn a_connection_accepted_on_a_wildcard_listener_has_a_specific_local_address() {
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert!(accepted_on(any, lo));
        assert!(accepted_on(lo, lo));
        assert!(!accepted_on(lo, "127.0.0.2:8080".parse().unwrap()));
        assert!(!accepted_on(any, "127.0.0.1:8081".parse().unwrap()));
    }

    /// Under sustained load the socket table is mostly TIME_WAIT connections on the listener's
    /// port (the server closes first), and the connections of the other workers: the one the
    /// child holds is still found among them.
    #[test]
    fn accepted_connection_is_seen_among_many_time_wait_and_others_on_the_port() {
        let (l, ours) = listener();
        let addr = l.local_addr().unwrap();
        let code = format!("{GO}c, _ = s.accept()\ntime.sleep(60)");
        let Some(py) = Py::start(&l, &code) else {
            return;
        };
        let _client = std::net::TcpStream::connect(addr).unwrap();
        within_10s(|| accepted_by_dump(py.pid(), &ours, &mut Scan::default()))
            .expect("the child holds its connection");
        // This process accepts the rest: 4000 closed by the server side first (TIME_WAIT on
        // our port, about 600 KB of /proc/net/tcp), and 200 kept open (ESTABLISHED, ours).
        let mut kept = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 0..4200 {
            if Instant::now() > deadline {
                break;
            }
            let client = std::net::TcpStream::connect(addr).unwrap();
            let (server, _) = l.accept().unwrap();
            if i < 200 {
                kept.push((client, server));
            } else {
                drop(server);
                drop(client);
            }
        }
        let port = format!(":{:04X} ", addr.port());
        let table = fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        let time_wait: Vec<&str> = table
            .lines()
            .filter(|row| row.split_whitespace().nth(3) == Some("06"))
            .collect();
        let ours_tw = time_wait.iter().filter(|row| row.contains(&port)).count();
        eprintln!(
            "{ours_tw} TIME_WAIT connections on port {} ({} on the host)",
            addr.port(),
            time_wait.len()
        );
        // The kernel makes no more once its table is full (other work on this host).
        let max: usize = fs::read_to_string("/proc/sys/net/ipv4/tcp_max_tw_buckets")
            .ok()
            .and_then(|m| m.trim().parse().ok())
            .unwrap_or(usize::MAX);
        assert!(
            ours_tw >= 1000 || time_wait.len() + 4000 >= max / 10 * 9,
            "only {ours_tw} TIME_WAIT rows were made"
        );
        // The kernel leaves the TIME_WAIT ones out: the dump is the held connections only.
        let listed = tcp_connections(&sock_diag().unwrap(), ours.tcp[0]).unwrap();
        assert!(
            listed.len() < 1000,
            "{} connections listed on the port: TIME_WAIT ones among them",
            listed.len()
        );
        for _ in 0..10 {
            let how = accepted_by_dump(py.pid(), &ours, &mut Scan::default())
                .expect("the child's connection is found among the others");
            assert!(how.contains("accepted"), "{how}");
        }
        // The connections this process holds are on the port too, and not the child's.
        assert!(accepted_by_dump(std::process::id(), &ours, &mut Scan::default()).is_some());
    }

    #[test]
    fn sock_diag_dump_lists_only_connections_on_the_port() {
        let (l, ours) = listener();
        let (other, other_ours) = listener();
        let _a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (a, _) = l.accept().unwrap();
        let _b = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();
        let (b, _) = other.accept().unwrap();
        let diag = sock_diag().expect("a sock_diag socket");
        let found = tcp_connections(&diag, ours.tcp[0]).unwrap();
        assert_eq!(found, vec![socket_inode(&a).unwrap()]);
        let found = tcp_connections(&diag, other_ours.tcp[0]).unwrap();
        assert_eq!(found, vec![socket_inode(&b).unwrap()]);
        // A wildcard listener's connections have the address they were made to.
        let wild = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = wild.local_addr().unwrap().port();
        let _c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (c, _) = wild.accept().unwrap();
        let found = tcp_connections(&diag, tcp_address(&wild).unwrap()).unwrap();
        assert_eq!(found, vec![socket_inode(&c).unwrap()]);
        assert_eq!(
            tcp_address(&c),
            Some(SocketAddr::from(([127, 0, 0, 1], port)))
        );
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

        /// Waits (bounded) until `process_waits` says yes, or gives up.
        fn seen(&self, ours: &Ours) -> Option<Seen> {
            within_10s(|| process_waits(self.pid(), ours, &mut Scan::default())).map(|how| Seen {
                pid: self.pid(),
                how,
            })
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

    fn listener() -> (TcpListener, Ours) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = Ours {
            inodes: vec![socket_inode(&l).unwrap()],
            tcp: vec![tcp_address(&l).unwrap()],
        };
        (l, ours)
    }

    /// Only these inodes, no TCP address.
    fn inodes(inodes: &[u64]) -> Ours {
        Ours {
            inodes: inodes.to_vec(),
            tcp: Vec::new(),
        }
    }

    const GO: &str = "print('go', flush=True)\n";

    #[test]
    fn child_blocked_in_accept_on_our_socket_is_seen() {
        let (l, ours) = listener();
        let Some(py) = Py::start(&l, &format!("{GO}s.accept()")) else {
            return;
        };
        let seen = py.seen(&ours).expect("a child in accept is seen");
        assert!(seen.how.contains("accept"), "{seen:?}");
        // It holds no socket but the listener: no dump is made for it.
        let mut scan = Scan::default();
        assert_eq!(holds_accepted(py.pid(), &ours, &mut scan), None);
        assert!(scan.dumped.is_zero(), "{:?}", scan.dumped);
        assert_eq!(
            group_waits(
                py.pid(),
                None,
                &inodes(&[ours.inodes[0] + 1]),
                &mut Scan::default()
            ),
            None
        );
    }

    #[test]
    fn child_with_our_socket_in_epoll_is_seen() {
        let (l, ours) = listener();
        let code = format!("e = select.epoll()\ne.register(s.fileno())\n{GO}time.sleep(60)");
        let Some(py) = Py::start(&l, &code) else {
            return;
        };
        let seen = py
            .seen(&ours)
            .expect("a child with the socket in epoll is seen");
        assert!(seen.how.contains("epoll"), "{seen:?}");
    }

    #[test]
    fn child_polling_our_socket_is_seen() {
        let (l, ours) = listener();
        let code =
            format!("p = select.poll()\np.register(s.fileno(), select.POLLIN)\n{GO}p.poll()");
        let Some(py) = Py::start(&l, &code) else {
            return;
        };
        let seen = py.seen(&ours).expect("a child polling the socket is seen");
        assert!(seen.how.contains("poll"), "{seen:?}");
    }

    /// Threads polling huge sets cost one scan a bounded amount of reading (the scan's budget
    /// of entries, used up), and cannot hide a thread that polls the listener.
    #[test]
    fn threads_polling_huge_sets_use_up_the_scan_budget_and_hide_no_listener() {
        // A child whose 16 threads each poll(2) 20 000 entries of one pipe (duplicates are
        // allowed), and, with `last`, one more thread that polls 999 of them and the listener.
        let child = |l: &TcpListener, last: bool| {
            let code = format!(
                "import ctypes, os, threading\n\
                 libc = ctypes.CDLL(None, use_errno=True)\n\
                 class P(ctypes.Structure):\n    _fields_ = [('fd', ctypes.c_int), ('ev', ctypes.c_short), ('rev', ctypes.c_short)]\n\
                 r, w = os.pipe()\n\
                 def wait(fds):\n    a = (P * len(fds))(*[P(f, 1, 0) for f in fds])\n    libc.poll(a, len(fds), -1)\n\
                 for _ in range(16):\n    threading.Thread(target=wait, args=([r] * 20000,), daemon=True).start()\n\
                 if {}:\n    threading.Thread(target=wait, args=([r] * 999 + [s.fileno()],), daemon=True).start()\n\
                 time.sleep(1.5)\n\
                 {GO}time.sleep(60)",
                if last { "True" } else { "False" }
            );
            Py::start(l, &code)
        };
        let (l, ours) = listener();
        let Some(huge) = child(&l, false) else {
            return;
        };
        let mut scan = Scan::default();
        assert_eq!(process_waits(huge.pid(), &ours, &mut scan), None);
        assert_eq!(scan.entries_left, 0, "16 x 20 000 entries pass the budget");
        drop(huge);
        let Some(py) = child(&l, true) else {
            return;
        };
        let seen = py
            .seen(&ours)
            .expect("the thread polling the listener is seen");
        assert!(seen.how.contains("poll"), "{seen:?}");
    }

    #[test]
    fn child_selecting_on_our_socket_is_seen() {
        let (l, ours) = listener();
        let code = format!("{GO}select.select([s], [], [])");
        let Some(py) = Py::start(&l, &code) else {
            return;
        };
        let seen = py
            .seen(&ours)
            .expect("a child selecting on the socket is seen");
        assert!(seen.how.contains("select"), "{seen:?}");
    }

    #[test]
    fn child_waiting_on_a_socket_not_ours_is_not_seen() {
        let (l, ours) = listener();
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
        assert_eq!(process_waits(py.pid(), &ours, &mut Scan::default()), None);
        // Its own socket would be seen: the check looks, it just does not count strangers.
        let other = fs::read_dir(format!("/proc/{}/fd", py.pid()))
            .unwrap()
            .flatten()
            .filter_map(|e| socket_link_inode(fs::read_link(e.path()).ok()?.to_str()?))
            .filter(|&i| i != ours.inodes[0])
            .collect::<Vec<_>>();
        assert!(py.seen(&inodes(&other)).is_some());
    }

    #[test]
    fn a_process_of_the_group_counts() {
        let (l, ours) = listener();
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
            seen = group_waits(py.pid(), None, &ours, &mut Scan::default());
            std::thread::sleep(Duration::from_millis(10));
        }
        let seen = seen.expect("the grandchild in accept is seen");
        assert_ne!(seen.pid, py.pid());
    }
}
