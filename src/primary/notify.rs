//! One notify socket per worker: the socket a datagram arrives on says which worker sent it.
//!
//! A shared socket identified the sender by the pid in its credentials, which fails for the
//! documented `systemd-notify` case (the helper has exited, and its pid with it, by the time the
//! primary reads the datagram) and let any process join a worker's process group to speak for
//! it. Here each worker gets a `SOCK_DGRAM` socket bound in the state directory under a random
//! name (the directory is 0700, or 0711 with `--user` so the worker can traverse but nobody can
//! list it), mode 0600 and owned by the worker's user. The credentials are still checked: a
//! datagram counts when its sender is the worker, or is one of the worker's processes (its
//! cgroup, else its process group) while the primary looks, which the pidfd the kernel attaches
//! (`SO_PASSPIDFD`, Linux 6.5) makes exact. A sender that already exited cannot be attributed
//! (another worker's child could have sent and exited) and is not believed: a helper waits
//! until its message is read, as `systemd-notify` does with its `BARRIER=1` unless told
//! `--no-block`.
//!
//! Sockets are plain data (fd, path, token, pid) so that they can later be carried across an
//! exec of the primary. This module never blocks: a bounded batch is read per call and the
//! caller is told to come back if more may be queued.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use mio::net::UnixDatagram;
use mio::{Interest, Poll, Token};
use reloadsup_protocol::notify::{self, Notice};

use crate::error::lower;
use crate::sys;

/// Notify sockets take tokens from here up; control connections stay far below (their ids
/// must fit in 32 bits, see `control::requester`).
pub(crate) const FIRST_NOTIFY: usize = 1 << 40;

/// Datagrams read per socket per wake-up before others get their turn.
const BATCH: usize = 64;

/// A worker's notify socket.
struct Socket {
    sock: UnixDatagram,
    path: PathBuf,
    /// The worker it belongs to, once spawned.
    pid: Option<u32>,
}

pub(crate) struct NotifySockets {
    dir: PathBuf,
    /// Who the worker runs as (`--user`/`--group`): the socket is made theirs.
    owner: (Option<u32>, Option<u32>),
    socks: BTreeMap<usize, Socket>,
    next: usize,
    /// Sockets left unread while the closing thread lagged, and when to read them again: an
    /// edge already reported does not come again.
    deferred: std::collections::BTreeSet<usize>,
    retry_at: Option<std::time::Instant>,
}

/// How soon a socket left unread while the closing thread lagged is read again.
const RETRY: std::time::Duration = std::time::Duration::from_millis(20);

/// What one read of a socket produced.
pub(crate) struct Batch {
    pub pid: Option<u32>,
    pub notices: Vec<Notice>,
    /// The batch was full: more datagrams may be queued, and no new edge will say so.
    pub more: bool,
}

impl NotifySockets {
    pub(crate) fn new(dir: &Path, uid: Option<u32>, gid: Option<u32>) -> NotifySockets {
        NotifySockets {
            dir: dir.to_path_buf(),
            owner: (uid, gid),
            socks: BTreeMap::new(),
            next: FIRST_NOTIFY,
            deferred: std::collections::BTreeSet::new(),
            retry_at: None,
        }
    }

    /// When sockets left unread are to be read again.
    pub(crate) fn next_deadline(&self) -> Option<std::time::Instant> {
        self.retry_at
    }

    /// The sockets to read again, once their time came.
    pub(crate) fn take_deferred(&mut self, now: std::time::Instant) -> Vec<usize> {
        if self.retry_at.is_none_or(|t| t > now) {
            return Vec::new();
        }
        self.retry_at = None;
        std::mem::take(&mut self.deferred).into_iter().collect()
    }

    /// Removes the sockets a previous primary of this state directory left behind when it was
    /// killed; called at start, once no other instance owns the directory.
    pub(crate) fn sweep(&self) {
        use std::os::unix::fs::FileTypeExt;
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let stale = entry.file_name().to_string_lossy().starts_with("n-")
                && entry.file_type().is_ok_and(|t| t.is_socket());
            if stale {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Makes a socket for a worker about to be spawned; returns its token and path.
    pub(crate) fn create(&mut self, poll: &Poll) -> io::Result<(usize, PathBuf)> {
        let path = self.dir.join(format!("n-{}", random_name()?));
        let mut sock = UnixDatagram::bind(&path)?;
        let made = (|| {
            // The directory (0700/0711, ours) and the random name keep everyone else away
            // between bind and these two calls.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            if self.owner.0.is_some() || self.owner.1.is_some() {
                std::os::unix::fs::chown(&path, self.owner.0, self.owner.1)?;
            }
            nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::PassCred, &true)
                .map_err(io::Error::from)?;
            // Before Linux 6.5 there is none: the sender's pid alone is looked at.
            let _ = sys::pass_pidfd(sock.as_fd());
            let token = self.next;
            poll.registry()
                .register(&mut sock, Token(token), Interest::READABLE)?;
            Ok(token)
        })();
        match made {
            Ok(token) => {
                self.next += 1;
                self.socks.insert(
                    token,
                    Socket {
                        sock,
                        path: path.clone(),
                        pid: None,
                    },
                );
                Ok((token, path))
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// The worker spawned with this socket.
    pub(crate) fn assign(&mut self, token: usize, pid: u32) {
        if let Some(s) = self.socks.get_mut(&token) {
            s.pid = Some(pid);
        }
    }

    /// Closes and unlinks a socket (its worker was reaped, or never started).
    pub(crate) fn remove(&mut self, poll: &Poll, token: usize) {
        if let Some(mut s) = self.socks.remove(&token) {
            let _ = poll.registry().deregister(&mut s.sock);
            let _ = std::fs::remove_file(&s.path);
            // Datagrams left in it may carry fds whose close waits: closed with the socket.
            sys::close_own(std::os::fd::OwnedFd::from(s.sock));
        }
    }

    /// Closes and unlinks the socket of a reaped worker, if it had one.
    pub(crate) fn remove_pid(&mut self, poll: &Poll, pid: u32) {
        let token = self
            .socks
            .iter()
            .find(|(_, s)| s.pid == Some(pid))
            .map(|(t, _)| *t);
        if let Some(t) = token {
            self.remove(poll, t);
        }
    }

    /// Unlinks every socket, before exit.
    pub(crate) fn remove_all(&mut self) {
        for s in self.socks.values() {
            let _ = std::fs::remove_file(&s.path);
        }
        self.socks.clear();
    }

    /// Reads a bounded batch from one socket. `foreign` says whether a live sender pid belongs
    /// to another worker than `pid`; such datagrams are dropped.
    pub(crate) fn read(&mut self, token: usize, belongs: impl Fn(u32, u32) -> bool) -> Batch {
        let mut batch = Batch {
            pid: None,
            notices: Vec::new(),
            more: false,
        };
        let Some(s) = self.socks.get(&token) else {
            return batch;
        };
        batch.pid = s.pid;
        let mut buf = [0u8; 4096];
        for i in 0..=BATCH {
            if i == BATCH {
                batch.more = true;
                break;
            }
            if !sys::closer_keeps_up() {
                // Fds that came with notify datagrams and may wait on their close are closed
                // on the closing thread, and it is behind (a worker sends such fds): nothing is
                // read, so that they cannot pile up here, until it catches up; the next
                // datagram wakes this socket.
                log::debug!(
                    "notify socket {}: fds sent to notify sockets are still being closed; read again in {RETRY:?}",
                    s.path.display()
                );
                self.deferred.insert(token);
                self.retry_at = Some(std::time::Instant::now() + RETRY);
                break;
            }
            let (n, sender, _) = match sys::recv_with_creds(s.sock.as_fd(), &mut buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Cut short and consumed: the next one is read (the batch is bounded).
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    log::debug!("notify socket {}: {}", s.path.display(), lower(&e));
                    continue;
                }
                Err(e) => {
                    log::warn!("notify socket {}: {}", s.path.display(), lower(&e));
                    break;
                }
            };
            let Some(pid) = s.pid else {
                // Not handed to a worker yet: nobody legitimate knows the path.
                continue;
            };
            let Some(sender) = sender.filter(|s| s.pid != 0) else {
                // No credentials, or a sender the kernel cannot name in our pid namespace.
                log::warn!(
                    "notify message for worker pid {pid} from a sender with no pid here; ignored"
                );
                continue;
            };
            // The worker itself is our child: nobody else has its pid until we reap it. Any
            // other sender must be one of its processes while we look (its pidfd, where the
            // kernel gives one, says the pid was not reused meanwhile); one that exited
            // cannot be told from another worker's child that sent and exited (issue 18,
            // item 6), so it is not believed.
            let attributed = sender.pid == pid
                || (!sender.gone
                    && belongs(sender.pid, pid)
                    && sender
                        .pidfd
                        .as_ref()
                        .is_none_or(|fd| sys::pidfd_alive(fd.as_fd())));
            if !attributed {
                log::warn!(
                    "notify message for worker pid {pid} from pid {}, which is not one of that worker's processes or has exited; ignored (a helper must wait until its message is read, as systemd-notify does unless --no-block)",
                    sender.pid
                );
                continue;
            }
            let notice = notify::parse(&buf[..n]);
            if !notice.is_empty() {
                batch.notices.push(notice);
            }
        }
        batch
    }
}

/// 96 random bits, URL-safe base64: the name cannot be guessed by someone who can traverse
/// the directory (with `--user`) but not list it, and stays short, since a socket path must fit
/// in 108 bytes.
fn random_name() -> io::Result<String> {
    use ring::rand::SecureRandom;
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = [0u8; 12];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| io::Error::other("no randomness for a notify socket name"))?;
    let mut name = String::with_capacity(16);
    for chunk in bytes.chunks(3) {
        let n = (chunk[0] as u32) << 16 | (chunk[1] as u32) << 8 | chunk[2] as u32;
        for shift in [18, 12, 6, 0] {
            name.push(ALPHABET[(n >> shift) as usize & 63] as char);
        }
    }
    Ok(name)
}

impl NotifySockets {
    /// The plain-data image of every socket, for an upgrade in place.
    pub(crate) fn image(&self) -> reloadsup_protocol::upgrade::NotifyImage {
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        reloadsup_protocol::upgrade::NotifyImage {
            next: self.next as u64,
            sockets: self
                .socks
                .iter()
                .map(|(t, s)| reloadsup_protocol::upgrade::NotifySocketImage {
                    token: *t as u64,
                    fd: s.sock.as_raw_fd(),
                    path: s.path.as_os_str().as_bytes().to_vec(),
                    pid: s.pid,
                })
                .collect(),
        }
    }

    /// Rebuilds the sockets from an upgrade's hand-off, registered in a fresh poll.
    pub(crate) fn resume(
        &mut self,
        poll: &Poll,
        image: reloadsup_protocol::upgrade::NotifyImage,
        take: &mut dyn FnMut(i32, &str) -> Result<std::os::fd::OwnedFd, String>,
    ) -> Result<(), String> {
        use std::os::unix::ffi::OsStringExt;
        self.next = image.next as usize;
        for s in image.sockets {
            let fd = take(s.fd, "a notify socket")?;
            let mut sock = UnixDatagram::from_std(std::os::unix::net::UnixDatagram::from(fd));
            poll.registry()
                .register(&mut sock, Token(s.token as usize), Interest::READABLE)
                .map_err(|e| format!("poll a notify socket: {}", lower(&e)))?;
            self.socks.insert(
                s.token as usize,
                Socket {
                    sock,
                    path: PathBuf::from(std::ffi::OsString::from_vec(s.path)),
                    pid: s.pid,
                },
            );
        }
        Ok(())
    }

    pub(crate) fn tokens(&self) -> Vec<usize> {
        self.socks.keys().copied().collect()
    }
}
