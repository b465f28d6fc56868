//! Files the primary reads or runs with its own privilege (issue 18, item 3): the `--config`
//! file, the console's password hash file, certificate and key, and the binary of an upgrade
//! in place. Whoever can change one of them controls what reloadsup does as its user (root,
//! often): the config names the workers' user and command; the binary becomes the primary.
//!
//! So such a file must be a regular file (no FIFO, which froze the primary at a reload, and no
//! device: `/dev/zero` was read until memory ran out), owned by root or the primary's user,
//! writable by nobody else, and is read with a size bound. It is opened once with `O_NONBLOCK`
//! and everything is checked on the open file, so nothing can be swapped in between. A symlink
//! is followed: a Kubernetes ConfigMap is a chain of them; what counts is the file it leads to.
//!
//! A binary is run by path twice (the pre-flight, then the exec), so for it every directory
//! on the way must be one that nobody else can change either (the walk of `logfile.rs`).
//! Files that only the workers run or that are only watched are not checked here: they belong
//! to whoever deploys the service.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::AtFlags;
use nix::sys::stat::SFlag;

use crate::logfile::LogDir;

/// The most bytes read of such a file: far more than any config, hash or PEM needs.
pub(crate) const MAX_BYTES: u64 = 4 << 20;

/// Symlinks followed to a binary, as the kernel would.
const MAX_LINKS: usize = 40;

/// The users whose files the primary trusts: root and its own.
fn trusted(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// Why a file of status `m` (at `path`) is not one to trust, if it is not.
fn distrust(path: &Path, uid: u32, mode: u32) -> Option<String> {
    if !trusted(uid) {
        return Some(format!(
            "{} belongs to uid {uid}, neither root nor reloadsup's user: whoever owns it would \
             control what reloadsup does",
            path.display()
        ));
    }
    if mode & 0o022 != 0 {
        return Some(format!(
            "{} is writable by others (mode {:o}): chmod go-w it",
            path.display(),
            mode & 0o7777
        ));
    }
    None
}

/// Reads `path` (see the module's rules); the error says what is wrong with it.
///
/// The path is first opened with `O_PATH`, which runs no driver (an open of `/dev/watchdog`
/// alone arms a hardware watchdog), and checked; only a regular file of a disk's is then
/// opened for reading, through that very inode (`/proc/self/fd/N`).
pub(crate) fn read(path: &Path) -> io::Result<Vec<u8>> {
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(path)?;
    let meta = handle.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    if let Some(why) = distrust(path, meta.uid(), meta.mode()) {
        return Err(io::Error::other(why));
    }
    // A root-owned file of /proc or /sys can hold text another user chose (the command line
    // of a setuid program), and a FUSE file can block for ever: only a real file system's.
    let fs = nix::sys::statfs::fstatfs(&handle).map_err(io::Error::from)?;
    if PSEUDO.contains(&fs.filesystem_type()) {
        return Err(io::Error::other(format!(
            "{} is on a kernel or FUSE file system (type {:#x}), not a file of a disk's",
            path.display(),
            fs.filesystem_type().0
        )));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&handle)
        ))?;
    read_bounded(file, path)
}

/// File systems whose files are no configuration: the kernel's views (their owner says
/// nothing of who chose their content) and FUSE (whose reads may never end).
const PSEUDO: &[nix::sys::statfs::FsType] = &[
    nix::sys::statfs::PROC_SUPER_MAGIC,
    nix::sys::statfs::SYSFS_MAGIC,
    nix::sys::statfs::FUSE_SUPER_MAGIC,
    nix::sys::statfs::DEBUGFS_MAGIC,
    nix::sys::statfs::TRACEFS_MAGIC,
    nix::sys::statfs::SECURITYFS_MAGIC,
    nix::sys::statfs::CGROUP_SUPER_MAGIC,
    nix::sys::statfs::CGROUP2_SUPER_MAGIC,
    nix::sys::statfs::BPF_FS_MAGIC,
];

fn read_bounded(file: File, path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.take(MAX_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(io::Error::other(format!(
            "{} is larger than {} MiB",
            path.display(),
            MAX_BYTES >> 20
        )));
    }
    Ok(bytes)
}

/// [`read`] as text.
pub(crate) fn read_to_string(path: &Path) -> io::Result<String> {
    String::from_utf8(read(path)?).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not UTF-8 text", path.display()),
        )
    })
}

/// Checks a binary the primary would run with its own privilege: every directory on the way
/// to it, through every symlink, and the file itself must be root's or the primary's user's
/// and writable by nobody else. Returns the file the path leads to.
pub(crate) fn check_binary(path: &Path) -> Result<PathBuf, String> {
    if !path.is_absolute() {
        // Run by path twice, from the primary's working directory: no room for doubt.
        return Err(format!(
            "{}: the binary's path must be absolute",
            path.display()
        ));
    }
    let mut path = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        let dir = LogDir::find(&path)?;
        if !trusted(dir.owner) {
            return Err(format!(
                "{} is in a directory of uid {}, neither root nor reloadsup's user",
                path.display(),
                dir.owner
            ));
        }
        // The log walk lets a root-owned directory its group can write sit above a directory
        // of the workers' own; a binary that root runs by path twice may not: a member of that
        // group could swap what is below it between the pre-flight and the exec. Sticky, it
        // can only move its members' own entries.
        if let Some((shared, gid, mode)) = dir.shared_above() {
            if mode & 0o1000 == 0 {
                return Err(format!(
                    "{} is writable by group {gid} (mode {mode:o}), whose members could \
                     replace the binary below it",
                    shared.display()
                ));
            }
        }
        let here = dir.path();
        let st = dir
            .entry(AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| format!("{}: {e}", here.display()))?;
        match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFLNK => {
                let target = dir
                    .link_target()
                    .map_err(|e| format!("unable to read the symlink {}: {e}", here.display()))?;
                path = match here.parent() {
                    Some(parent) => parent.join(target),
                    None => target,
                };
            }
            SFlag::S_IFREG => {
                return match distrust(&here, st.st_uid, st.st_mode) {
                    Some(why) => Err(why),
                    None => Ok(here),
                }
            }
            _ => return Err(format!("{} is not a regular file", here.display())),
        }
    }
    Err(format!("{}: too many levels of symlinks", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, Instant};

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("reloadsup-trusted-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    /// Issue 18, item 3: a FIFO as the config froze the primary at a reload; `/dev/zero` was
    /// read until memory ran out. Both are refused at once.
    #[test]
    fn a_fifo_a_device_a_huge_file_and_others_files_are_refused() {
        let dir = scratch("read");
        let good = dir.join("good.toml");
        std::fs::write(&good, "workers = 2\n").unwrap();
        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(read_to_string(&good).unwrap(), "workers = 2\n");
        // A symlink to it is fine: what counts is the file.
        std::os::unix::fs::symlink(&good, dir.join("link.toml")).unwrap();
        assert!(read(&dir.join("link.toml")).is_ok());

        let fifo = dir.join("fifo.toml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let t = Instant::now();
        let e = read(&fifo).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5), "the FIFO blocked");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let e = read(Path::new("/dev/zero")).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");

        // A root-owned file of /proc may hold text another user chose.
        let e = read(Path::new("/proc/self/comm")).unwrap_err();
        assert!(e.to_string().contains("kernel or FUSE file system"), "{e}");

        let huge = dir.join("huge.toml");
        std::fs::write(&huge, vec![b'#'; MAX_BYTES as usize + 1]).unwrap();
        let e = read(&huge).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");

        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = read(&good).unwrap_err();
        assert!(e.to_string().contains("writable by others"), "{e}");
        if nix::unistd::geteuid().is_root() {
            std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o644)).unwrap();
            std::os::unix::fs::chown(&good, Some(65534), None).unwrap();
            let e = read(&good).unwrap_err();
            assert!(e.to_string().contains("belongs to uid 65534"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Issue 18, item 3: another user's binary given to `ctl upgrade --binary` ran as root.
    #[test]
    fn a_binary_is_checked_through_every_symlink_and_directory() {
        let dir = scratch("binary");
        let bin = dir.join("reloadsup-2");
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let link = dir.join("current");
        std::os::unix::fs::symlink("reloadsup-2", &link).unwrap();
        assert_eq!(check_binary(&link).unwrap(), bin);
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o775)).unwrap();
        let e = check_binary(&link).unwrap_err();
        assert!(e.contains("writable by others"), "{e}");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = check_binary(Path::new("reloadsup")).unwrap_err();
        assert!(e.contains("must be absolute"), "{e}");
        if nix::unistd::geteuid().is_root() {
            // A root-owned directory its group can write, above the binary's: a member could
            // swap what is below it between the pre-flight and the exec. Sticky, it could not.
            let opt = dir.join("opt");
            std::fs::create_dir_all(opt.join("rs")).unwrap();
            std::fs::copy(&bin, opt.join("rs/reloadsup")).unwrap();
            std::os::unix::fs::chown(&opt, None, Some(65533)).unwrap();
            std::fs::set_permissions(&opt, std::fs::Permissions::from_mode(0o775)).unwrap();
            let e = check_binary(&opt.join("rs/reloadsup")).unwrap_err();
            assert!(e.contains("writable by group 65533"), "{e}");
            std::fs::set_permissions(&opt, std::fs::Permissions::from_mode(0o1775)).unwrap();
            assert!(check_binary(&opt.join("rs/reloadsup")).is_ok());
            let theirs = dir.join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::fs::copy(&bin, theirs.join("reloadsup")).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
            let e = check_binary(&theirs.join("reloadsup")).unwrap_err();
            assert!(e.contains("uid 65534"), "{e}");
            std::os::unix::fs::chown(&bin, Some(65534), None).unwrap();
            let e = check_binary(&bin).unwrap_err();
            assert!(e.contains("belongs to uid 65534"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
