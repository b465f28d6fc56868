//! The primary's files: the state directory, checked before anything is put in it, and the
//! pidfile, written atomically.
//!
//! The default state directory lives under `/tmp` when there is no `XDG_RUNTIME_DIR`, where
//! any local user may have created `/tmp/reloadsup-UID` first and planted a `control.sock` in
//! it. So the path is walked one component at a time from `/` with `openat` and `O_NOFOLLOW`,
//! and every directory on it must be one that nobody else can change: owned by us or root and
//! writable by nobody else, or (like `/tmp` itself) owned by root and sticky, in which case the
//! next component must be ours. A symlink is followed only where nobody else could have put it.
//! The state directory itself must be ours and is made 0700 (0711 with `--user`). Once the walk
//! succeeds the path cannot be redirected by anyone but us or root, so it is used by name.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::Uid;

use crate::error::lower;

const GROUP_OR_OTHER_WRITE: u32 = 0o022;
const STICKY: u32 = 0o1000;

/// Creates the state directory or checks an existing one, checking every directory on the way.
/// `mode` is what the state directory (and any directory created for it) gets.
pub(super) fn prepare_state_dir(dir: &Path, mode: u32) -> Result<(), String> {
    let uid = Uid::effective().as_raw();
    let absolute = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| format!("unable to find the current directory: {}", lower(&e)))?
            .join(dir)
    };
    let components: Vec<Component<'_>> = absolute
        .components()
        .filter(|c| {
            !matches!(
                c,
                Component::RootDir | Component::CurDir | Component::Prefix(_)
            )
        })
        .collect();
    let mut at = PathBuf::from("/");
    let mut fd = open_dir(None, OsStr::new("/"), &at, false)?;
    let mut parent = fstat(&fd).map_err(|e| format!("{}: {e}", at.display()))?;
    check_ancestor(&parent, &at, uid)?;
    for (i, component) in components.iter().enumerate() {
        let name = component.as_os_str();
        at.push(name);
        let last = i + 1 == components.len();
        // A directory made on the way (`/run/reloadsup`, `/tmp/reloadsup-UID`) holds only
        // instances' directories, and the next instance may run its workers as another user,
        // who must traverse it to reach its notify socket: traversable, not listable. The
        // state directory itself gets `mode`.
        let want = if last { mode } else { 0o711 };
        let shared = parent.st_mode & GROUP_OR_OTHER_WRITE != 0;
        let mut created = false;
        let entry = match fstatat(&fd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Some(st),
            Err(nix::errno::Errno::ENOENT) => {
                match mkdirat(&fd, name, Mode::from_bits_truncate(want)) {
                    Ok(()) => created = true,
                    // Someone made it between the two calls: it is checked like any other.
                    Err(nix::errno::Errno::EEXIST) => {}
                    Err(e) => return Err(format!("unable to create {}: {e}", at.display())),
                }
                None
            }
            Err(e) => return Err(format!("{}: {e}", at.display())),
        };
        let symlink = entry.is_some_and(|st| kind(&st) == SFlag::S_IFLNK);
        if symlink && (shared || last) {
            return Err(format!(
                "{} is a symlink{}; refusing to follow it",
                at.display(),
                if shared {
                    " in a directory others can write to"
                } else {
                    ""
                }
            ));
        }
        let next = open_dir(Some(&fd), name, &at, symlink)?;
        let st = fstat(&next).map_err(|e| format!("{}: {e}", at.display()))?;
        if shared && st.st_uid != uid && st.st_uid != 0 {
            // In a sticky shared directory (checked with the parent) only our own entries and
            // root's are safe from others.
            return Err(format!(
                "{} is owned by uid {}, not by us (uid {uid}); another user may have created it",
                at.display(),
                st.st_uid
            ));
        }
        if last || created {
            if st.st_uid != uid {
                return Err(format!(
                    "{} is owned by uid {}, not by us (uid {uid})",
                    at.display(),
                    st.st_uid
                ));
            }
            if st.st_mode & 0o7777 != want {
                if !created && st.st_mode & GROUP_OR_OTHER_WRITE != 0 {
                    // Others may already have put something in it.
                    return Err(writable(&at, &st, "it must be 0700"));
                }
                // Also for a directory just made: the umask may have taken bits off.
                fchmod(&next, Mode::from_bits_truncate(want))
                    .map_err(|e| format!("unable to set the mode of {}: {e}", at.display()))?;
            }
        } else {
            check_ancestor(&st, &at, uid)?;
        }
        parent = st;
        fd = next;
    }
    Ok(())
}

/// Whether user `uid` (group `gid` and the user's other groups) may traverse every directory
/// from `/` down to `dir`: the workers' notify sockets live in the state directory (issue 22,
/// defect 7: a 0700 `XDG_RUNTIME_DIR` above it failed every `READY=1` with EACCES). `Err`
/// names the first directory it cannot.
pub(super) fn traversable_by(dir: &Path, uid: u32, gid: u32) -> Result<(), PathBuf> {
    if uid == 0 {
        return Ok(());
    }
    let mut groups = vec![gid];
    if let Ok(Some(user)) = nix::unistd::User::from_uid(Uid::from_raw(uid)) {
        if let Ok(name) = std::ffi::CString::new(user.name) {
            if let Ok(more) = nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(gid)) {
                groups.extend(more.into_iter().map(|g| g.as_raw()));
            }
        }
    }
    let mut at = PathBuf::from("/");
    let parts: Vec<PathBuf> = std::iter::once(at.clone())
        .chain(dir.components().filter_map(|c| match c {
            Component::Normal(name) => {
                at.push(name);
                Some(at.clone())
            }
            _ => None,
        }))
        .collect();
    for part in parts {
        let Ok(st) = nix::sys::stat::stat(&part) else {
            return Err(part);
        };
        let bit = if st.st_uid == uid {
            0o100
        } else if groups.contains(&st.st_gid) {
            0o010
        } else {
            0o001
        };
        if st.st_mode & bit == 0 {
            return Err(part);
        }
    }
    Ok(())
}

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

fn writable(at: &Path, st: &FileStat, hint: &str) -> String {
    format!(
        "{} is writable by others (mode {:o}); {hint}",
        at.display(),
        st.st_mode & 0o7777
    )
}

/// A directory on the way to the state directory: nobody but us or root may change it, unless
/// it is a root-owned sticky directory like `/tmp`.
fn check_ancestor(st: &FileStat, at: &Path, uid: u32) -> Result<(), String> {
    if st.st_uid != uid && st.st_uid != 0 {
        return Err(format!(
            "{} is owned by uid {}, neither us (uid {uid}) nor root",
            at.display(),
            st.st_uid
        ));
    }
    if st.st_mode & GROUP_OR_OTHER_WRITE != 0 && !(st.st_uid == 0 && st.st_mode & STICKY != 0) {
        return Err(writable(
            at,
            st,
            "only a root-owned sticky directory like /tmp may be",
        ));
    }
    Ok(())
}

fn open_dir(
    parent: Option<&OwnedFd>,
    name: &OsStr,
    at: &Path,
    follow: bool,
) -> Result<OwnedFd, String> {
    let mut flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    if !follow {
        flags |= OFlag::O_NOFOLLOW;
    }
    let opened = match parent {
        Some(p) => openat(p.as_fd(), name, flags, Mode::empty()),
        None => nix::fcntl::open(name, flags, Mode::empty()),
    };
    opened.map_err(|e| match e {
        nix::errno::Errno::ELOOP => format!("{} is a symlink; refusing to follow it", at.display()),
        nix::errno::Errno::ENOTDIR => format!("{} is not a directory", at.display()),
        e => format!("unable to open {}: {e}", at.display()),
    })
}

/// Writes `contents` to `path` atomically: a new file in the same directory, renamed over the
/// old one, so that a reader never sees half a pidfile. A symlink at `path` is refused rather
/// than followed or replaced.
pub(super) fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), String> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(format!(
                "{} is a symlink; refusing to write through it",
                path.display()
            ))
        }
        Ok(m) if !m.file_type().is_file() => {
            return Err(format!("{} is not a regular file", path.display()))
        }
        _ => {}
    }
    let name = path
        .file_name()
        .ok_or_else(|| format!("{} names no file", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    let mut suffix = String::new();
    let _ = write!(suffix, ".{}.tmp", std::process::id());
    tmp_name.push(&suffix);
    let tmp = path.with_file_name(&tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let write = || -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("unable to write {}: {}", path.display(), lower(&e))
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("reloadsup-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    #[test]
    fn state_dir_is_created_0700_and_accepted_again() {
        let base = scratch("create");
        let dir = base.join("a/b");
        prepare_state_dir(&dir, 0o700).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700);
        // The directory made on the way may be traversed by the workers of a later instance
        // that runs them as another user, not listed.
        let made = std::fs::metadata(base.join("a"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(made, 0o711);
        prepare_state_dir(&dir, 0o700).unwrap();
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn world_writable_or_symlinked_state_dir_is_refused() {
        let base = scratch("refuse");
        let open = base.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = prepare_state_dir(&open.join("name"), 0o700).unwrap_err();
        assert!(e.contains("writable by others"), "{e}");
        let e = prepare_state_dir(&open, 0o700).unwrap_err();
        assert!(e.contains("writable by others"), "{e}");

        let target = base.join("target");
        std::fs::create_dir(&target).unwrap();
        let link = base.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = prepare_state_dir(&link, 0o700).unwrap_err();
        assert!(e.contains("symlink"), "{e}");
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn pidfile_is_replaced_atomically_and_symlinks_are_refused() {
        let base = scratch("pidfile");
        let pidfile = base.join("x.pid");
        write_atomically(&pidfile, b"1\n").unwrap();
        write_atomically(&pidfile, b"42\n").unwrap();
        assert_eq!(std::fs::read(&pidfile).unwrap(), b"42\n");
        let victim = base.join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let link = base.join("link.pid");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let e = write_atomically(&link, b"42\n").unwrap_err();
        assert!(e.contains("symlink"), "{e}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        let leftovers: Vec<_> = std::fs::read_dir(&base)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
        let _ = std::fs::remove_dir_all(&base);
    }
}
