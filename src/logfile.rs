//! The log file of `--log-output file:PATH`: which directory it may live in, who opens it, and
//! how it is opened and rotated. Used by the primary at start (a bad directory is a usage
//! error) and by the logger role, which opens, reopens and rotates the file.
//!
//! The logger parses bytes that workers chose, so it runs as the workers' user; the file is
//! opened as the owner of its directory, who can replace anything in that directory anyway
//! (issue 18: a logger running as root followed a symlink that the workers' user had put at
//! the log path, and appended lines that user chose to a file of root's). The rules:
//!
//! - The directory is found by walking PATH from `/` one component at a time with `openat` and
//!   `O_NOFOLLOW`. A symlink on the way is read and its target walked the same way, so the
//!   kernel never follows a link that was not checked.
//! - The directory belongs to root or to the user the logger runs as, and nobody else (no
//!   group but root's, no other user) can write to it.
//! - Every directory passed through belongs to root or to that same owner and is writable by
//!   nobody else, with two exceptions: a root-owned sticky directory like `/tmp`, whose entry on
//!   the path must then belong to root or the owner and be no symlink; and a root-owned
//!   directory writable by its group (Ubuntu's `/var/log`, `root:syslog` 0775), only above a
//!   directory of the logger's own unprivileged user, where a redirect gains nothing.
//! - The file is opened through the directory's fd, never by path, with `O_NOFOLLOW`: a symlink
//!   at the path is refused, and so is a regular file with more than one link (a hard link to
//!   another file). A character device (`/dev/null`) is written to but never rotated; a FIFO,
//!   a socket or a directory is refused.
//!
//! Who opens is [`who_opens`]: the logger itself when it runs as the directory's owner (or,
//! unprivileged, when the directory is root's), else a small process of the logger's that
//! stays root, forked before the logger dropped to the workers' user (see [`Access`]). Nothing
//! here blocks but the file system itself.

use std::collections::{BTreeSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;

use crate::sys;

const GROUP_WRITE: u32 = 0o020;
const OTHER_WRITE: u32 = 0o002;
const STICKY: u32 = 0o1000;

/// As Linux's own limit on symlinks in one path lookup.
const MAX_LINKS: usize = 40;

/// Directories deep (each holds an fd while the walk goes on) and components walked in all.
const MAX_DEPTH: usize = 256;
const MAX_STEPS: usize = 4096;

/// The checked directory of the log file, held open: the file is only ever opened through it.
#[derive(Debug)]
pub(crate) struct LogDir {
    dir: OwnedFd,
    /// The directory as walked (symlinks resolved), for messages.
    at: PathBuf,
    name: OsString,
    /// The directory's owner: the file is opened as them.
    pub owner: u32,
    /// The first root-owned directory on the way that its group can write to, with its group
    /// and mode: only a logger of the directory's own unprivileged user may open below it.
    shared_above: Option<(PathBuf, u32, u32)>,
}

/// The log file, just opened.
#[derive(Debug)]
pub(crate) struct Opened {
    pub file: File,
    /// A regular file (rotated at its size); false for a character device.
    pub rotatable: bool,
}

/// Who opens the file, as [`who_opens`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opener {
    /// The logger itself, as the user it runs as.
    Logger,
    /// A process of the logger's that stays root (a root-owned directory, a logger of
    /// another user).
    Root,
}

/// Who may open a file in `dir` for a logger that runs as `logger_uid`, with `root` telling
/// whether the logger starts as root (and so may leave a root opener behind).
pub(crate) fn who_opens(dir: &LogDir, logger_uid: u32, root: bool) -> Result<Opener, String> {
    if dir.owner != 0 && dir.owner != logger_uid {
        return Err(format!(
            "{} belongs to uid {}, neither root nor the user the logger runs as (uid \
             {logger_uid}, the workers' user): use a directory of one of them",
            dir.at.display(),
            dir.owner
        ));
    }
    if let Some((shared, gid, mode)) = &dir.shared_above {
        if dir.owner == 0 || logger_uid == 0 {
            return Err(format!(
                "{} is writable by group {gid} (mode {mode:o}), whose members could redirect \
                 the path: below it, only a directory of the workers' own user (not root) \
                 may hold the log file",
                shared.display()
            ));
        }
    }
    Ok(if dir.owner == logger_uid || !root {
        // Unprivileged and the directory is root's: nobody but root can change it, so the
        // logger may open an existing file there (or be refused, and say so).
        Opener::Logger
    } else {
        Opener::Root
    })
}

impl LogDir {
    /// Finds and checks the directory of `path` (see the module's rules); a relative path is
    /// taken from the current directory.
    pub(crate) fn find(path: &Path) -> Result<LogDir, String> {
        let name = match path.components().next_back() {
            Some(Component::Normal(name)) => name.to_os_string(),
            _ => return Err(format!("{} names no file", path.display())),
        };
        let parent = path.parent().unwrap_or(Path::new(""));
        let parent = if parent.is_absolute() {
            parent.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| format!("unable to find the current directory: {e}"))?
                .join(parent)
        };
        let walked = walk(&parent)?;
        Ok(LogDir {
            dir: walked.dir,
            at: walked.at,
            name,
            owner: walked.st.st_uid,
            shared_above: walked.shared_above,
        })
    }

    /// The file's path as walked, for messages.
    pub(crate) fn path(&self) -> PathBuf {
        self.at.join(&self.name)
    }

    /// What is at the file's name now, if anything, would be refused by [`LogDir::open`]:
    /// for a check at start, before any logger runs.
    pub(crate) fn check_file(&self) -> Result<(), String> {
        match fstatat(
            &self.dir,
            self.name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(format!("{}: {e}", self.path().display())),
            Ok(st) => self.check_kind(&st).map(|_| ()).map_err(|e| e.to_string()),
        }
    }

    /// Whether a file of status `st` is written to, and rotated (`Ok(true)`).
    fn check_kind(&self, st: &FileStat) -> io::Result<bool> {
        let refuse =
            |why: String| Err(io::Error::other(format!("{} {why}", self.path().display())));
        match kind(st) {
            SFlag::S_IFREG if st.st_nlink > 1 => refuse(format!(
                "has {} hard links; refusing to write to it",
                st.st_nlink
            )),
            SFlag::S_IFREG => Ok(true),
            SFlag::S_IFCHR => Ok(false),
            SFlag::S_IFLNK => refuse(
                "is a symlink; refusing to write through it (for the primary's stdout, use \
                 --log-output stdout)"
                    .to_string(),
            ),
            _ => refuse("is not a regular file".to_string()),
        }
    }

    /// Opens the file for appending, creating it if needed, as whoever runs this.
    pub(crate) fn open(&self) -> io::Result<Opened> {
        let flags = OFlag::O_WRONLY
            | OFlag::O_APPEND
            | OFlag::O_CREAT
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let mode = Mode::from_bits_truncate(0o666);
        let fd = match openat(&self.dir, self.name.as_os_str(), flags, mode) {
            Ok(fd) => fd,
            // O_NOFOLLOW's answer to a symlink at the name.
            Err(Errno::ELOOP) => {
                return Err(io::Error::other(format!(
                    "{} is a symlink; refusing to write through it",
                    self.path().display()
                )))
            }
            Err(e) => return Err(io::Error::from_raw_os_error(e as i32)),
        };
        let rotatable = self.check_kind(&fstat(&fd)?)?;
        Ok(Opened {
            file: File::from(fd),
            rotatable,
        })
    }

    /// The first root-owned directory on the way that its group can write, with its group and
    /// mode, if any.
    pub(crate) fn shared_above(&self) -> Option<&(PathBuf, u32, u32)> {
        self.shared_above.as_ref()
    }

    /// The status of what is at the file's name.
    pub(crate) fn entry(&self, flags: AtFlags) -> nix::Result<FileStat> {
        fstatat(&self.dir, self.name.as_os_str(), flags)
    }

    /// The target of the symlink at the file's name.
    pub(crate) fn link_target(&self) -> nix::Result<PathBuf> {
        nix::fcntl::readlinkat(&self.dir, self.name.as_os_str()).map(PathBuf::from)
    }

    /// Whether the directory was removed since it was walked (a reopen then needs a new walk).
    pub(crate) fn removed(&self) -> bool {
        fstat(&self.dir).is_ok_and(|st| st.st_nlink == 0)
    }

    /// If the file at the name is a regular file of at least `at_least` bytes: `NAME` becomes
    /// `NAME.1`, `NAME.1` becomes `NAME.2`, ... keeping `keep` of them (with `keep` 0 the file
    /// is removed). Renames within the directory never follow a symlink. The size check keeps
    /// an opener from rotating good lines away for a logger that asks too often.
    pub(crate) fn rotate(&self, keep: u32, at_least: u64) {
        let full = fstatat(
            &self.dir,
            self.name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .is_ok_and(|st| kind(&st) == SFlag::S_IFREG && st.st_size as u64 >= at_least);
        if !full {
            return;
        }
        let numbered = |n: u32| {
            let mut p = self.name.clone();
            p.push(format!(".{n}"));
            p
        };
        let dir = self.dir.as_fd();
        if keep == 0 {
            let _ = nix::unistd::unlinkat(dir, self.name.as_os_str(), UnlinkatFlags::NoRemoveDir);
            return;
        }
        let _ = nix::unistd::unlinkat(dir, numbered(keep).as_os_str(), UnlinkatFlags::NoRemoveDir);
        for n in (1..keep).rev() {
            let _ = nix::fcntl::renameat(
                dir,
                numbered(n).as_os_str(),
                dir,
                numbered(n + 1).as_os_str(),
            );
        }
        let _ = nix::fcntl::renameat(dir, self.name.as_os_str(), dir, numbered(1).as_os_str());
    }
}

/// How the logger reaches its file: through the directory itself, or through the opener
/// process when the file must be opened as root for a logger that is not.
#[derive(Debug)]
pub(crate) enum Access {
    Here {
        dir: LogDir,
        keep: u32,
        size: u64,
    },
    /// The opener: requests on `sock`, one at a time, each answered within
    /// [`ANSWER_WITHIN`].
    Opener {
        sock: OwnedFd,
        pid: u32,
    },
    /// The file cannot be reached: why, and whether only a new logger (which starts with the
    /// privilege to walk and start an opener again) can change that.
    Broken {
        why: String,
        restart: bool,
    },
}

/// Requests to the opener: one byte each.
const OPEN: u8 = b'o';
const ROTATE: u8 = b'r';

/// The opener's answers: the first byte of each.
const DONE: u8 = 0;
const REFUSED: u8 = 1;
const DIRECTORY_REMOVED: u8 = 2;

/// How long the logger waits for its opener; past it the opener is given up.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

impl Access {
    /// Finds the directory of `path` and sets up whoever opens in it, for a logger that is
    /// about to run as `logger_uid` (see [`who_opens`]). Runs in the logger before it drops
    /// its privileges: a root opener is forked off here. Rotations keep `keep` files and
    /// happen at `size` bytes.
    pub(crate) fn new(path: &Path, logger_uid: u32, keep: u32, size: u64) -> Access {
        let broken = |why: String| Access::Broken {
            why,
            restart: false,
        };
        let dir = match LogDir::find(path) {
            Ok(dir) => dir,
            Err(why) => return broken(why),
        };
        let root = nix::unistd::geteuid().is_root();
        match who_opens(&dir, logger_uid, root) {
            Err(why) => broken(why),
            Ok(Opener::Logger) => Access::Here { dir, keep, size },
            Ok(Opener::Root) => match spawn_opener(dir, keep, size) {
                Ok((sock, pid)) => Access::Opener { sock, pid },
                Err(e) => broken(format!("unable to start the log file's opener: {e}")),
            },
        }
    }

    /// Opens the file (see [`LogDir::open`]).
    pub(crate) fn open(&mut self) -> io::Result<Opened> {
        match self {
            Access::Here { dir, .. } => {
                let opened = dir.open();
                if opened.is_err() && dir.removed() {
                    let why = format!("the log directory {} was removed", dir.at.display());
                    return Err(self.broken_for_good(why));
                }
                opened
            }
            Access::Opener { .. } => match self.ask(OPEN)? {
                (rest, Some(fd)) if rest.len() == 1 => Ok(Opened {
                    file: File::from(fd),
                    rotatable: rest[0] == 1,
                }),
                _ => Err(self.lost("it answered an open without a file")),
            },
            Access::Broken { why, .. } => Err(io::Error::other(why.clone())),
        }
    }

    /// Rotates the files (see [`LogDir::rotate`]); the next [`Access::open`] makes a new one.
    pub(crate) fn rotate(&mut self) -> io::Result<()> {
        match self {
            Access::Here { dir, keep, size } => {
                dir.rotate(*keep, *size);
                Ok(())
            }
            Access::Opener { .. } => self.ask(ROTATE).map(|_| ()),
            Access::Broken { why, .. } => Err(io::Error::other(why.clone())),
        }
    }

    /// Why the file cannot be reached, when it cannot, and whether only a new logger can
    /// change that.
    pub(crate) fn broken(&self) -> Option<(&str, bool)> {
        match self {
            Access::Broken { why, restart } => Some((why, *restart)),
            _ => None,
        }
    }

    /// One request and its answer: the answer's bytes after the status, and its fd. An error
    /// the opener reports is returned as such; an opener that does not answer in time, or
    /// answers nonsense, is given up.
    fn ask(&mut self, request: u8) -> io::Result<(Vec<u8>, Option<OwnedFd>)> {
        let Access::Opener { sock, .. } = self else {
            return Err(io::Error::other("no opener"));
        };
        let asked = (|| {
            sys::send_with_fds_nonblocking(sock.as_fd(), &[request], &[])?;
            // A signal (a SIGUSR1 to reopen) ends the wait early: wait out the rest.
            let deadline = Instant::now() + ANSWER_WITHIN;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer within {} s", ANSWER_WITHIN.as_secs()),
                    ));
                }
                if sys::wait_readable(sock.as_fd(), Some(left))? {
                    break;
                }
            }
            let mut buf = [0u8; 1024];
            let (n, mut fds) = sys::recv_with_fds(sock.as_fd(), &mut buf, 1)?;
            Ok((buf[..n].to_vec(), fds.pop()))
        })();
        let (answer, fd) = match asked {
            Ok(got) => got,
            Err(e) => return Err(self.lost(&e.to_string())),
        };
        match answer.split_first() {
            Some((&DONE, rest)) => Ok((rest.to_vec(), fd)),
            Some((&REFUSED, why)) if fd.is_none() => {
                Err(io::Error::other(String::from_utf8_lossy(why).into_owned()))
            }
            Some((&DIRECTORY_REMOVED, why)) if fd.is_none() => {
                Err(self.broken_for_good(String::from_utf8_lossy(why).into_owned()))
            }
            None => Err(self.lost("it exited")),
            _ => Err(self.lost("it answered nonsense")),
        }
    }

    /// The opener failed: the access is broken for good. It is not waited for: a logger that
    /// dropped its privileges may not even signal it; closing its socket ends it, and so does
    /// this logger's exit (its parent-death signal).
    fn lost(&mut self, what: &str) -> io::Error {
        if let Access::Opener { pid, .. } = self {
            let _ = sys::kill(*pid, nix::sys::signal::Signal::SIGKILL);
        }
        self.broken_for_good(format!("the log file's opener failed: {what}"))
    }

    fn broken_for_good(&mut self, why: String) -> io::Error {
        // Closes the opener's socket, if any.
        *self = Access::Broken {
            why: why.clone(),
            restart: true,
        };
        io::Error::other(why)
    }
}

/// Forks the opener: a process that keeps only `dir` and its end of a socket pair, stays root,
/// and answers [`OPEN`] and [`ROTATE`] until the socket closes. It dies with the logger
/// (parent-death signal) and is undumpable.
fn spawn_opener(dir: LogDir, keep: u32, size: u64) -> io::Result<(OwnedFd, u32)> {
    use std::os::fd::AsRawFd;
    let (ours, theirs) = sys::seqpacket_pair()?;
    let logger = std::process::id();
    let keep_fds = [dir.dir.as_raw_fd(), theirs.as_raw_fd()];
    let pid = sys::fork_with(|| {
        let setup = || -> Result<(), String> {
            sys::close_all_except(&keep_fds).map_err(|e| format!("closing fds: {e}"))?;
            sys::set_undumpable().map_err(|e| format!("undumpable: {e}"))?;
            sys::die_with_parent(logger).map_err(|e| e.to_string())?;
            Ok(())
        };
        if let Err(e) = setup() {
            eprintln!("reloadsup: log file opener: {e}");
            return 1;
        }
        serve_opener(&dir, &theirs, keep, size)
    })?;
    Ok((ours, pid))
}

/// The opener's loop: one request, one answer.
fn serve_opener(dir: &LogDir, sock: &OwnedFd, keep: u32, size: u64) -> i32 {
    let mut buf = [0u8; 16];
    loop {
        let n = match sys::recv_with_fds(sock.as_fd(), &mut buf, 0) {
            Ok((0, _)) => return 0,
            Ok((n, _)) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return 1,
        };
        let sent = match &buf[..n] {
            [OPEN] => match dir.open() {
                Ok(o) => sys::send_with_fds_nonblocking(
                    sock.as_fd(),
                    &[DONE, u8::from(o.rotatable)],
                    &[o.file.as_fd()],
                ),
                Err(e) => {
                    let status = if dir.removed() {
                        DIRECTORY_REMOVED
                    } else {
                        REFUSED
                    };
                    let text = if status == DIRECTORY_REMOVED {
                        format!("the log directory {} was removed", dir.at.display())
                    } else {
                        e.to_string()
                    };
                    let mut answer = vec![status];
                    answer.extend_from_slice(&text.as_bytes()[..text.len().min(1000)]);
                    sys::send_with_fds_nonblocking(sock.as_fd(), &answer, &[])
                }
            },
            [ROTATE] => {
                dir.rotate(keep, size);
                sys::send_with_fds_nonblocking(sock.as_fd(), &[DONE], &[])
            }
            _ => return 1,
        };
        if sent.is_err() {
            return 1;
        }
    }
}

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

fn open_dir(parent: Option<&OwnedFd>, name: &OsStr, at: &Path) -> Result<OwnedFd, String> {
    // O_NONBLOCK: should the entry become a FIFO after it was checked, the open does not wait.
    let flags = OFlag::O_RDONLY
        | OFlag::O_DIRECTORY
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_CLOEXEC;
    let opened = match parent {
        Some(p) => openat(p, name, flags, Mode::empty()),
        None => nix::fcntl::open(name, flags, Mode::empty()),
    };
    opened.map_err(|e| match e {
        Errno::ENOTDIR => format!("{} is not a directory", at.display()),
        e => format!("unable to open {}: {e}", at.display()),
    })
}

/// What [`walk`] found.
struct Walked {
    dir: OwnedFd,
    st: FileStat,
    /// The path with every symlink resolved.
    at: PathBuf,
    shared_above: Option<(PathBuf, u32, u32)>,
}

/// Walks `dir` (absolute) from `/` (see the module's rules).
fn walk(dir: &Path) -> Result<Walked, String> {
    let mut at = PathBuf::from("/");
    let root = open_dir(None, OsStr::new("/"), &at)?;
    let root_st = fstat(&root).map_err(|e| format!("/: {e}"))?;
    // The directories the path now goes through, for `..`.
    let mut stack: Vec<(OwnedFd, FileStat)> = vec![(root, root_st)];
    // The owners other than root of every directory passed through, and of every entry taken
    // from a sticky shared one: each could redirect the walk, so each must be the final
    // directory's owner.
    let mut owners: BTreeSet<(u32, PathBuf)> = BTreeSet::new();
    let mut shared_above = None;
    check_passable(&root_st, &at, &mut shared_above)?;
    let mut queue: VecDeque<OsString> = components(dir);
    let (mut links, mut steps) = (0, 0);
    while let Some(name) = queue.pop_front() {
        steps += 1;
        if steps > MAX_STEPS || stack.len() > MAX_DEPTH {
            return Err(format!("{}: too deep a path", dir.display()));
        }
        if name == ".." {
            if stack.len() > 1 {
                stack.pop();
                at.pop();
            }
            continue;
        }
        let (top, top_st) = stack.last().expect("the root is never popped");
        let sticky = top_st.st_mode & OTHER_WRITE != 0;
        let here = at.join(&name);
        let st = match fstatat(top, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Err(format!("{} does not exist", here.display())),
            Err(e) => return Err(format!("{}: {e}", here.display())),
        };
        if sticky && st.st_uid != 0 {
            owners.insert((st.st_uid, here.clone()));
        }
        if kind(&st) == SFlag::S_IFLNK {
            if sticky {
                return Err(format!(
                    "{} is a symlink in a directory others can write to; refusing to follow it",
                    here.display()
                ));
            }
            links += 1;
            if links > MAX_LINKS {
                return Err(format!("{}: too many levels of symlinks", dir.display()));
            }
            let target = nix::fcntl::readlinkat(top, name.as_os_str())
                .map_err(|e| format!("unable to read the symlink {}: {e}", here.display()))?;
            let target = PathBuf::from(target);
            if target.is_absolute() {
                stack.truncate(1);
                at = PathBuf::from("/");
            }
            for c in components(&target).into_iter().rev() {
                queue.push_front(c);
            }
            continue;
        }
        if kind(&st) != SFlag::S_IFDIR {
            return Err(format!("{} is not a directory", here.display()));
        }
        let fd = open_dir(Some(top), &name, &here)?;
        let opened = fstat(&fd).map_err(|e| format!("{}: {e}", here.display()))?;
        if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino) {
            return Err(format!("{} changed while it was checked", here.display()));
        }
        check_passable(&opened, &here, &mut shared_above)?;
        if opened.st_uid != 0 {
            owners.insert((opened.st_uid, here.clone()));
        }
        stack.push((fd, opened));
        at = here;
    }
    let (fd, st) = stack.pop().expect("the root is never popped");
    if writable_by_others(&st) {
        return Err(format!(
            "{} is writable by others (mode {:o}, group {}): they could put a symlink at the \
             file's name; use a directory only its owner can write to",
            at.display(),
            st.st_mode & 0o7777,
            st.st_gid
        ));
    }
    if shared_above.as_ref().is_some_and(|(p, _, _)| *p == at) {
        // Found writable by its group on the way, then taken as the log directory itself.
        shared_above = None;
    }
    if let Some((uid, path)) = owners.iter().find(|(uid, _)| *uid != st.st_uid) {
        return Err(format!(
            "{} belongs to uid {uid}, who could redirect the path to another directory; every \
             directory on the way to the file must belong to root or to its directory's \
             owner (uid {} of {})",
            path.display(),
            st.st_uid,
            at.display()
        ));
    }
    Ok(Walked {
        dir: fd,
        st,
        at,
        shared_above,
    })
}

/// The components of `path` to walk: names and `..`, without the root and `.`.
fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Whether a user other than the owner (and root) can write to a directory of status `st`:
/// any other user, or a group other than root's.
fn writable_by_others(st: &FileStat) -> bool {
    st.st_mode & OTHER_WRITE != 0 || (st.st_mode & GROUP_WRITE != 0 && st.st_gid != 0)
}

/// A directory on the way: writable by its owner alone, unless it is a root-owned sticky
/// directory like `/tmp` (whose entry on the path is checked by the caller), or a root-owned
/// one that its group can write to (noted in `shared_above`; see [`who_opens`]).
fn check_passable(
    st: &FileStat,
    at: &Path,
    shared_above: &mut Option<(PathBuf, u32, u32)>,
) -> Result<(), String> {
    if !writable_by_others(st) {
        return Ok(());
    }
    let mode = st.st_mode & 0o7777;
    if st.st_uid == 0 && st.st_mode & OTHER_WRITE != 0 && st.st_mode & STICKY != 0 {
        return Ok(());
    }
    if st.st_uid == 0 && st.st_mode & OTHER_WRITE == 0 {
        shared_above.get_or_insert((at.to_path_buf(), st.st_gid, mode));
        return Ok(());
    }
    Err(format!(
        "{} is writable by others (mode {mode:o}); only a root-owned sticky directory like \
         /tmp may be on the way to the file",
        at.display(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::{chown, symlink, PermissionsExt};

    /// A private directory of this test's, 0755.
    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("reloadsup-logfile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Whether a test may make files of other users; under `CI=true` it must.
    fn root(test: &str) -> bool {
        let root = nix::unistd::geteuid().is_root();
        if !root {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true and {test} needs root"
            );
            eprintln!("{test}: skipped, needs root");
        }
        root
    }

    #[test]
    fn a_file_in_a_private_directory_is_opened_appended_and_rotated() {
        let dir = scratch("plain");
        let log = LogDir::find(&dir.join("app.log")).unwrap();
        assert_eq!(log.owner, nix::unistd::geteuid().as_raw());
        assert!(log.check_file().is_ok(), "nothing at the name yet");
        let path = dir.join("app.log");
        for i in 0..5 {
            let mut o = log.open().unwrap();
            assert!(o.rotatable);
            write!(o.file, "{i}").unwrap();
            // Not rotated below the size asked for: an opener's guard against a logger that
            // asks too often.
            log.rotate(2, 2);
            assert!(path.exists(), "rotated a file of 1 byte at 2");
            log.rotate(2, 1);
        }
        assert!(!path.exists());
        assert_eq!(std::fs::read_to_string(dir.join("app.log.1")).unwrap(), "4");
        assert_eq!(std::fs::read_to_string(dir.join("app.log.2")).unwrap(), "3");
        assert!(!dir.join("app.log.3").exists());
        log.open().unwrap();
        log.rotate(0, 0);
        assert!(!path.exists(), "keep 0 removes the file");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Issue 18, item 1: a symlink at the log path is never followed, at start or at a reopen.
    #[test]
    fn a_symlink_at_the_log_path_is_refused() {
        let dir = scratch("symlink");
        let target = dir.join("target");
        std::fs::write(&target, "precious\n").unwrap();
        symlink(&target, dir.join("app.log")).unwrap();
        let log = LogDir::find(&dir.join("app.log")).unwrap();
        let e = log.open().unwrap_err();
        assert!(e.to_string().contains("is a symlink"), "{e}");
        let e = log.check_file().unwrap_err();
        assert!(e.contains("is a symlink"), "{e}");
        // Nor is a symlink rotated through: the renames move the link itself.
        log.rotate(1, 0);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_hard_link_a_fifo_and_a_directory_are_refused_a_device_is_not_rotated() {
        let dir = scratch("kinds");
        std::fs::write(dir.join("other"), "x").unwrap();
        std::fs::hard_link(dir.join("other"), dir.join("linked.log")).unwrap();
        let linked = LogDir::find(&dir.join("linked.log")).unwrap();
        let e = linked.open().unwrap_err();
        assert!(e.to_string().contains("2 hard links"), "{e}");
        assert!(linked.check_file().is_err());
        nix::unistd::mkfifo(&dir.join("fifo.log"), Mode::from_bits_truncate(0o600)).unwrap();
        let fifo = LogDir::find(&dir.join("fifo.log")).unwrap();
        // Without a reader O_NONBLOCK refuses it (ENXIO) rather than waiting.
        assert!(fifo.open().is_err());
        assert!(fifo
            .check_file()
            .unwrap_err()
            .contains("not a regular file"));
        std::fs::create_dir(dir.join("sub.log")).unwrap();
        assert!(LogDir::find(&dir.join("sub.log")).unwrap().open().is_err());
        let null = LogDir::find(Path::new("/dev/null")).unwrap();
        assert!(null.check_file().is_ok());
        assert!(!null.open().unwrap().rotatable);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_directory_others_can_write_to_is_refused() {
        let dir = scratch("shared");
        chmod(&dir, 0o777);
        let e = LogDir::find(&dir.join("app.log")).unwrap_err();
        assert!(e.contains("writable by others (mode 777"), "{e}");
        // Sticky does not help the log file's own directory: anyone may create the name first.
        chmod(&dir, 0o1777);
        assert!(LogDir::find(&dir.join("app.log")).is_err());
        if nix::unistd::geteuid().is_root() {
            // Writable by a group other than root's (a non-root user's own group already is).
            chown(&dir, None, Some(65534)).unwrap();
        }
        chmod(&dir, 0o775);
        let e = LogDir::find(&dir.join("app.log")).unwrap_err();
        assert!(e.contains("mode 775"), "{e}");
        chmod(&dir, 0o755);
        std::fs::create_dir(dir.join("sub")).unwrap();
        chmod(&dir, 0o757);
        let e = LogDir::find(&dir.join("sub/app.log")).unwrap_err();
        assert!(e.contains("on the way"), "{e}");
        chmod(&dir, 0o755);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn symlinked_directories_are_walked_and_checked_not_followed_blindly() {
        let dir = scratch("links");
        std::fs::create_dir(dir.join("real")).unwrap();
        std::fs::create_dir(dir.join("open")).unwrap();
        chmod(&dir.join("open"), 0o777);
        std::fs::create_dir(dir.join("open/inner")).unwrap();
        symlink("real", dir.join("rel")).unwrap();
        symlink(dir.join("real"), dir.join("abs")).unwrap();
        symlink("../real/../real", dir.join("real/up")).unwrap();
        for via in ["rel", "abs", "real/up"] {
            let log = LogDir::find(&dir.join(via).join("app.log")).unwrap();
            assert_eq!(log.path(), dir.join("real/app.log"), "via {via}");
        }
        // A link whose target passes through a directory others can write to is refused, even
        // though the link itself sits in a private directory.
        symlink(dir.join("open/inner"), dir.join("sneaky")).unwrap();
        let e = LogDir::find(&dir.join("sneaky/app.log")).unwrap_err();
        assert!(
            e.contains("open") && e.contains("writable by others"),
            "{e}"
        );
        symlink("loop", dir.join("loop")).unwrap();
        let e = LogDir::find(&dir.join("loop/app.log")).unwrap_err();
        assert!(e.contains("too many levels"), "{e}");
        let e = LogDir::find(&dir.join("missing/app.log")).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
        std::fs::write(dir.join("file"), "").unwrap();
        let e = LogDir::find(&dir.join("file/app.log")).unwrap_err();
        assert!(e.contains("is not a directory"), "{e}");
        assert!(LogDir::find(&dir.join("real/./app.log")).is_ok());
        let deep = format!("{}/{}app.log", dir.display(), "real/../".repeat(5000));
        let e = LogDir::find(Path::new(&deep)).unwrap_err();
        assert!(e.contains("too deep"), "{e}");
        // The scratch directory's own parent is the temporary one, usually like /tmp.
        let tmp = std::fs::metadata(std::env::temp_dir())
            .unwrap()
            .permissions()
            .mode();
        if tmp & 0o022 != 0 {
            let e = LogDir::find(&dir).unwrap_err();
            assert!(e.contains("writable by others"), "{e}");
        }
        assert!(LogDir::find(Path::new("/")).is_err());
        chmod(&dir.join("open"), 0o755);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A directory removed after the walk is noticed, so that a reopen walks again.
    #[test]
    fn a_removed_directory_is_noticed() {
        let dir = scratch("removed");
        std::fs::create_dir(dir.join("logs")).unwrap();
        let log = LogDir::find(&dir.join("logs/app.log")).unwrap();
        assert!(!log.removed());
        std::fs::remove_dir(dir.join("logs")).unwrap();
        assert!(log.open().is_err());
        assert!(log.removed());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Owners: a directory of another user's above the log directory could be swapped for a
    /// link to anywhere; a directory of an unrelated user is not used at all.
    #[test]
    fn who_opens_follows_the_directory_owner() {
        if !root("who_opens_follows_the_directory_owner") {
            return;
        }
        let dir = scratch("owners");
        let other = dir.join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::create_dir(other.join("logs")).unwrap();
        chown(&other, Some(65534), Some(65534)).unwrap();
        // The final directory is root's, the one above it another user's: refused.
        let e = LogDir::find(&other.join("logs/app.log")).unwrap_err();
        assert!(e.contains("belongs to uid 65534"), "{e}");
        // The workers' user's directory inside its own: opened by a logger of that user.
        chown(other.join("logs"), Some(65534), Some(65534)).unwrap();
        let theirs = LogDir::find(&other.join("logs/app.log")).unwrap();
        assert_eq!(theirs.owner, 65534);
        assert_eq!(who_opens(&theirs, 65534, true), Ok(Opener::Logger));
        // Not by a root logger (workers without --user), nor by another unprivileged one.
        let e = who_opens(&theirs, 0, true).unwrap_err();
        assert!(e.contains("neither root nor"), "{e}");
        assert!(who_opens(&theirs, 1000, false).is_err());
        // Root's directory: a root opener for a logger of another user.
        let mine = LogDir::find(&dir.join("app.log")).unwrap();
        assert_eq!(who_opens(&mine, 65534, true), Ok(Opener::Root));
        assert_eq!(who_opens(&mine, 0, true), Ok(Opener::Logger));
        assert_eq!(who_opens(&mine, 1000, false), Ok(Opener::Logger));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Ubuntu's `/var/log` is `root:syslog` 0775: a member of that group could rename what
    /// lies below it. Only a directory of the workers' own unprivileged user may be there.
    #[test]
    fn below_a_root_directory_its_group_can_write_only_the_workers_own_directory_is_used() {
        if !root(
            "below_a_root_directory_its_group_can_write_only_the_workers_own_directory_is_used",
        ) {
            return;
        }
        let dir = scratch("varlog");
        let var_log = dir.join("log");
        std::fs::create_dir(&var_log).unwrap();
        std::fs::create_dir(var_log.join("web")).unwrap();
        std::fs::create_dir(var_log.join("rootweb")).unwrap();
        chown(var_log.join("web"), Some(65534), Some(65534)).unwrap();
        chown(&var_log, None, Some(65533)).unwrap();
        chmod(&var_log, 0o775);
        let web = LogDir::find(&var_log.join("web/app.log")).unwrap();
        assert_eq!(who_opens(&web, 65534, true), Ok(Opener::Logger));
        let rootweb = LogDir::find(&var_log.join("rootweb/app.log")).unwrap();
        let e = who_opens(&rootweb, 65534, true).unwrap_err();
        assert!(e.contains("writable by group 65533 (mode 775)"), "{e}");
        assert!(who_opens(&rootweb, 0, true).is_err());
        // The group-writable directory itself as the log directory: refused outright.
        let e = LogDir::find(&var_log.join("app.log")).unwrap_err();
        assert!(
            e.contains("writable by others (mode 775, group 65533)"),
            "{e}"
        );
        // Root's own group is root.
        chown(&var_log, None, Some(0)).unwrap();
        let rootweb = LogDir::find(&var_log.join("rootweb/app.log")).unwrap();
        assert_eq!(who_opens(&rootweb, 65534, true), Ok(Opener::Root));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
