//! `--watch PATH`: a reload when a watched file changes (written in place, replaced by a
//! rename, or touched), once it has been quiet for `--watch-delay`.
//!
//! Each file is watched through its directory (inotify, non-blocking, close-on-exec), so a
//! file replaced by a rename, or deleted and created again, is still seen: the watch is on the
//! name, not on an inode that a deploy throws away. The primary only reads a bounded batch of
//! events per turn and keeps one deadline, the end of the quiet period: nothing wakes it at
//! rest. Across an upgrade in place the new image watches again from its configuration; a
//! change still waiting for its quiet period is then counted from the new image's start.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use inotify::{Inotify, WatchDescriptor, WatchMask};
use mio::unix::SourceFd;
use mio::{Interest, Poll, Token};

pub(crate) const WATCH: Token = Token(4);

/// Events read per turn before the loop serves its other sources.
const BATCH: usize = 64;

pub(crate) struct Watch {
    inotify: Inotify,
    /// The directory watches and the names in each that are watched, with the path as given.
    dirs: HashMap<WatchDescriptor, Vec<(OsString, PathBuf)>>,
    delay: Duration,
    /// The end of the quiet period: a reload is due then, unless another change comes first.
    due: Option<Instant>,
    /// The paths that changed since the last reload it asked for.
    changed: Vec<PathBuf>,
}

/// Splits `path` into its directory (absolute, or `.`) and file name.
fn split(path: &Path) -> io::Result<(PathBuf, OsString)> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name.to_os_string()))
}

/// The users that may write a watched file: root, the primary's and the workers'. Anyone else
/// who can change it can drive reloads, or hold them off by touching it over and over.
#[derive(Debug, Clone, Default)]
pub(crate) struct Trusted {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
}

impl Trusted {
    /// Root, this process's user and group, and the workers' (`--user`, `--group`).
    pub(crate) fn new(workers: (Option<u32>, Option<u32>)) -> Trusted {
        let mut t = Trusted {
            uids: vec![0, nix::unistd::geteuid().as_raw()],
            gids: vec![0, nix::unistd::getegid().as_raw()],
        };
        t.uids.extend(workers.0);
        t.gids.extend(workers.1);
        t
    }

    /// Who else can change `path`, directly or by replacing it in its directory, as words for
    /// a warning: empty when nobody. A path that does not exist says nothing of itself (a
    /// deploy creates it); its directory still counts.
    pub(crate) fn others_who_can_write(&self, path: &Path) -> Vec<String> {
        use std::os::unix::fs::MetadataExt;
        let mut who = Vec::new();
        let file = std::fs::metadata(path).ok();
        if let Some(m) = &file {
            self.add(&mut who, m, None, false);
        }
        // In a sticky directory (/tmp) others may not replace a file they do not own, but they
        // may create one that is not there yet.
        let ours = file.is_some_and(|m| self.uids.contains(&m.uid()));
        if let Ok((dir, _)) = split(path) {
            if let Ok(m) = std::fs::metadata(&dir) {
                self.add(&mut who, &m, Some(&dir), ours);
            }
        }
        who
    }

    fn add(&self, who: &mut Vec<String>, m: &std::fs::Metadata, dir: Option<&Path>, ours: bool) {
        use std::os::unix::fs::MetadataExt;
        let through = dir.map_or(String::new(), |d| format!(" (through {})", d.display()));
        let mode = m.mode();
        if !self.uids.contains(&m.uid()) {
            who.push(format!("uid {}{through}", m.uid()));
        }
        if mode & 0o020 != 0 && !self.gids.contains(&m.gid()) {
            who.push(format!("group {}{through}", m.gid()));
        }
        let sticky_guard = dir.is_some() && mode & 0o1000 != 0 && ours;
        if mode & 0o002 != 0 && !sticky_guard {
            who.push(format!("every user{through}"));
        }
    }
}

/// Warns about every path of `paths` that a user other than the trusted ones can change:
/// `when` says at which moment (the start of the watch, a change seen).
pub(crate) fn warn_untrusted(paths: &[PathBuf], trusted: &Trusted, when: &str) {
    for p in paths {
        let who = trusted.others_who_can_write(p);
        if !who.is_empty() {
            log::warn!(
                "--watch {} ({when}): writable by {}, who can then start reloads or hold them off; \
                 let only root, reloadsup's user or the workers' write it",
                p.display(),
                who.join(", ")
            );
        }
    }
}

impl Watch {
    /// Watches every path's directory. A directory that does not exist is an error; the file
    /// itself may not exist yet (a deploy creates it).
    pub(crate) fn new(paths: &[PathBuf], delay: Duration, poll: &Poll) -> io::Result<Watch> {
        let inotify = Inotify::init()?;
        let mut dirs: HashMap<WatchDescriptor, Vec<(OsString, PathBuf)>> = HashMap::new();
        for path in paths {
            let (dir, name) = split(path)?;
            let mask = WatchMask::CLOSE_WRITE
                | WatchMask::MODIFY
                | WatchMask::ATTRIB
                | WatchMask::MOVED_TO
                | WatchMask::CREATE
                | WatchMask::DELETE;
            let wd = inotify.watches().add(&dir, mask).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "--watch {}: unable to watch {}: {}",
                        path.display(),
                        dir.display(),
                        crate::error::lower(&e)
                    ),
                )
            })?;
            dirs.entry(wd).or_default().push((name, path.clone()));
        }
        poll.registry().register(
            &mut SourceFd(&inotify.as_raw_fd()),
            WATCH,
            Interest::READABLE,
        )?;
        Ok(Watch {
            inotify,
            dirs,
            delay,
            due: None,
            changed: Vec::new(),
        })
    }

    /// Reads a bounded batch of events; each change to a watched name (re)starts the quiet
    /// period. True if more events may wait.
    pub(crate) fn on_readable(&mut self, now: Instant) -> bool {
        let mut buffer = [0u8; 4096];
        for _ in 0..BATCH {
            let events = match self.inotify.read_events(&mut buffer) {
                Ok(events) => events,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!(
                        "--watch: reading file events failed: {}",
                        crate::error::lower(&e)
                    );
                    return false;
                }
            };
            for event in events {
                if event.mask.contains(inotify::EventMask::Q_OVERFLOW) {
                    // Events were dropped: something may have changed.
                    let all: Vec<PathBuf> = self
                        .dirs
                        .values()
                        .flatten()
                        .map(|(_, p)| p.clone())
                        .collect();
                    self.touch(all, now);
                    continue;
                }
                let Some(name) = event.name else { continue };
                let Some(names) = self.dirs.get(&event.wd) else {
                    continue;
                };
                let hits: Vec<PathBuf> = names
                    .iter()
                    .filter(|(n, _)| n.as_os_str() == name)
                    .map(|(_, p)| p.clone())
                    .collect();
                // A deletion alone is half a deploy: the create or rename that follows counts.
                if !event.mask.contains(inotify::EventMask::DELETE) {
                    self.touch(hits, now);
                }
            }
        }
        true
    }

    fn touch(&mut self, paths: Vec<PathBuf>, now: Instant) {
        if paths.is_empty() {
            return;
        }
        for p in paths {
            if !self.changed.contains(&p) {
                self.changed.push(p);
            }
        }
        self.due = Some(now + self.delay);
    }

    /// When the quiet period ends, if a change waits for it.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.due
    }

    /// The paths that changed, once their quiet period is over: the reload is due.
    pub(crate) fn take_due(&mut self, now: Instant) -> Option<Vec<PathBuf>> {
        if self.due.is_some_and(|t| t <= now) {
            self.due = None;
            return Some(std::mem::take(&mut self.changed));
        }
        None
    }

    pub(crate) fn deregister(&self, poll: &Poll) {
        let _ = poll
            .registry()
            .deregister(&mut SourceFd(&self.inotify.as_raw_fd()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Issue 18, item 11: a watched file that another user can change is named with who.
    #[test]
    fn others_who_can_write_a_watched_file_are_named() {
        let dir = std::env::temp_dir().join(format!("reloadsup-watch-who-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = dir.join("server");
        std::fs::write(&file, "v1").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let trusted = Trusted::new((None, None));
        assert!(trusted.others_who_can_write(&file).is_empty());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(trusted.others_who_can_write(&file), vec!["every user"]);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&file, Some(65534), None).unwrap();
            assert_eq!(trusted.others_who_can_write(&file), vec!["uid 65534"]);
            // The workers' user may: it is theirs to deploy.
            assert!(Trusted::new((Some(65534), None))
                .others_who_can_write(&file)
                .is_empty());
            std::os::unix::fs::chown(&file, Some(0), None).unwrap();
            std::os::unix::fs::chown(&dir, None, Some(65533)).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o775)).unwrap();
            assert_eq!(
                trusted.others_who_can_write(&file),
                vec![format!("group 65533 (through {})", dir.display())]
            );
        }
        // A file that does not exist yet: its directory still counts.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(
            trusted
                .others_who_can_write(&dir.join("later"))
                .last()
                .unwrap(),
            &format!("every user (through {})", dir.display())
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        // Sticky: a file of ours cannot be replaced, but a missing one can be created.
        assert!(!trusted
            .others_who_can_write(&file)
            .iter()
            .any(|w| w.starts_with("every user")));
        assert!(trusted
            .others_who_can_write(&dir.join("later"))
            .iter()
            .any(|w| w.starts_with("every user")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn drain(w: &mut Watch, now: Instant) {
        // Events arrive at once on a local file system; poll briefly for them.
        for _ in 0..100 {
            w.on_readable(now);
            if w.due.is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_write_a_rename_and_a_touch_each_start_the_quiet_period_and_a_burst_is_one() {
        let dir = std::env::temp_dir().join(format!("reloadsup-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("server");
        std::fs::write(&file, "v1").unwrap();
        let other = dir.join("unrelated");
        let poll = Poll::new().unwrap();
        let delay = Duration::from_millis(500);
        let mut w = Watch::new(std::slice::from_ref(&file), delay, &poll).unwrap();
        let t0 = Instant::now();

        // Another file of the directory: nothing.
        std::fs::write(&other, "x").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        w.on_readable(t0);
        assert_eq!(w.next_deadline(), None);

        // Written in place.
        std::fs::write(&file, "v2").unwrap();
        drain(&mut w, t0);
        assert_eq!(w.next_deadline(), Some(t0 + delay));
        assert_eq!(w.take_due(t0 + delay / 2), None, "not quiet yet");
        // A burst of writes pushes the end of the quiet period; one reload at its end.
        let t1 = t0 + Duration::from_millis(300);
        for i in 0..10 {
            std::fs::write(&file, format!("v{i}")).unwrap();
        }
        drain(&mut w, t1);
        assert_eq!(w.next_deadline(), Some(t1 + delay));
        assert_eq!(w.take_due(t0 + delay), None);
        assert_eq!(w.take_due(t1 + delay), Some(vec![file.clone()]));
        assert_eq!(w.take_due(t1 + delay * 2), None, "once");

        // Replaced by a rename, as a deploy does.
        let new = dir.join(".server.new");
        std::fs::write(&new, "v3").unwrap();
        std::fs::rename(&new, &file).unwrap();
        let t2 = t1 + Duration::from_secs(5);
        drain(&mut w, t2);
        assert_eq!(w.take_due(t2 + delay), Some(vec![file.clone()]));

        // Touched: only the times change.
        let f = std::fs::File::options().write(true).open(&file).unwrap();
        f.set_modified(std::time::SystemTime::now()).unwrap();
        let t3 = t2 + Duration::from_secs(5);
        drain(&mut w, t3);
        assert_eq!(w.take_due(t3 + delay), Some(vec![file.clone()]));
        w.deregister(&poll);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_flag() {
        let poll = Poll::new().unwrap();
        let err = Watch::new(
            &[PathBuf::from("/nonexistent-reloadsup/dir/server")],
            Duration::from_millis(1),
            &poll,
        )
        .err()
        .expect("an error");
        assert!(
            err.to_string()
                .contains("--watch /nonexistent-reloadsup/dir/server"),
            "{err}"
        );
    }
}
