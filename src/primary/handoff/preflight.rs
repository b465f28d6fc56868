//! The pre-flight: the new binary runs as `__preflight` with the hand-off on stdin and must
//! decode it and the command line in it before the primary execs it.

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use reloadsup_protocol::upgrade::{self as image, HANDOFF_VERSION};

use crate::error::lower;
use crate::primary::Primary;
use crate::sys;
use reloadsup_protocol::{self as proto};

use super::image::epochs_from;
use super::{config_of, Clock, MAX_HANDOFF, VERSION};

/// The absolute path this primary was started from: what `upgrade` execs by default.
/// argv[0] as given (made absolute against the working directory, symlinks kept, so that a
/// symlink switched to another version is followed), or found in PATH like the shell did.
pub(crate) fn start_binary(argv0: Option<&OsString>) -> PathBuf {
    let fallback = || std::fs::read_link("/proc/self/exe").unwrap_or_else(|_| "reloadsup".into());
    let Some(argv0) = argv0.filter(|a| !a.is_empty()) else {
        return fallback();
    };
    let p = Path::new(argv0);
    if argv0.as_bytes().contains(&b'/') {
        return std::path::absolute(p).unwrap_or_else(|_| fallback());
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(p))
        .find(|c| is_executable(c).is_ok())
        .and_then(|c| std::path::absolute(c).ok())
        .unwrap_or_else(fallback)
}

/// Checks what can be checked without running it; the reason names the path.
pub(crate) fn is_executable(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("{}: {}", path.display(), crate::error::lower(&e)))?;
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).map_err(|e| {
        format!(
            "{}: not executable ({})",
            path.display(),
            e.desc().to_lowercase()
        )
    })
}

/// The hidden `__preflight` role: reads a hand-off on stdin, proves it decodes it and the
/// command line in it, and says which version it is. Exit 0 only then.
pub(crate) fn preflight() -> u8 {
    match check_handoff() {
        Ok(()) => {
            println!("reloadsup {VERSION} ok (hand-off version {HANDOFF_VERSION})");
            0
        }
        Err(why) => {
            println!("error: {why}");
            1
        }
    }
}

fn check_handoff() -> Result<(), String> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .take(MAX_HANDOFF)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("unable to read the hand-off: {}", crate::error::lower(&e)))?;
    let handoff =
        image::decode_handoff(&bytes).map_err(|e| format!("unable to decode the hand-off: {e}"))?;
    let (_, config) = config_of(&handoff)?;
    epochs_from(&handoff, &config).map(|_| ())
}

impl Primary {
    /// Runs `binary __preflight` with the hand-off on stdin, without waiting for it.
    pub(super) fn spawn_preflight(&mut self, binary: &Path) -> Result<(u32, OwnedFd), String> {
        use std::os::unix::process::CommandExt;
        is_executable(binary)?;
        // It runs with the primary's privilege, then becomes the primary (issue 18, item 3).
        crate::trusted::check_binary(binary)?;
        let clock = Clock::now();
        let bytes = proto::encode(&self.handoff(vec![], vec![], &clock))
            .map_err(|e| format!("unable to encode the hand-off: {e}"))?;
        let stdin = sys::memfd_with("reloadsup-preflight", &bytes)
            .map_err(|e| format!("unable to make the hand-off's memfd: {}", lower(&e)))?;
        let mut child = std::process::Command::new(binary)
            .arg("__preflight")
            .stdin(stdin)
            .stdout(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("{}: {}", binary.display(), lower(&e)))?;
        let pid = child.id();
        let output = child.stdout.take().map(OwnedFd::from);
        let output = match output {
            Some(fd) => fd,
            None => {
                let _ = sys::kill_group(pid, nix::sys::signal::Signal::SIGKILL);
                return Err("no pipe to the pre-flight".into());
            }
        };
        // Read once it was reaped; a process it left behind may hold the pipe open.
        let _ = nix::fcntl::fcntl(
            &output,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
        Ok((pid, output))
    }
}
