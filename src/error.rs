//! The error types of reloadsup's layers, and the one place that maps them to exit codes.
//!
//! Each layer has a concrete enum with a hand-written `Display`: one lowercase line with its
//! context, like "unable to bind tcp://127.0.0.1:80: permission denied", ready to be printed
//! as it is. Because the user sees only that line, `Display` includes the cause's message too;
//! `source()` still returns the cause for a program that wants to look at it. Nothing here
//! does I/O or decides what to do about an error: the primary's loop, the roles and the
//! clients do.

use std::fmt;
use std::io;

use reloadsup_protocol::{SetupFailure, SetupStage};

/// Exit status of a successful run (DESIGN.md section 3).
pub const EXIT_OK: u8 = 0;
/// Exit status for anything that went wrong but bad usage.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status for bad usage or a bad config: the message names the flag or key.
pub const EXIT_USAGE: u8 = 2;

/// An io error's message without the "(os error N)" tail, in lowercase.
pub fn lower(e: &io::Error) -> String {
    let s = e.to_string();
    let s = match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    };
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => s,
    }
}

// ---------------------------------------------------------------------------------------------
// The worker role's setup
// ---------------------------------------------------------------------------------------------

/// Why a worker role could not run the command. The role prints it, sends it to the primary as
/// a [`SetupFailure`], and the primary rebuilds it from there for the reload's reason.
#[derive(Debug)]
pub enum SetupError {
    /// The spec or the listener fds did not arrive intact.
    Handoff(io::Error),
    /// The primary speaks another protocol version (its binary was replaced by another one).
    Protocol { ours: u32, theirs: u32 },
    /// The parent-death signal could not be set, or the parent is already gone.
    ParentDeath(io::Error),
    /// `setgroups` refused the one supplementary group.
    Groups { gid: u32, source: io::Error },
    /// `setgid` refused.
    Group { gid: u32, source: io::Error },
    /// `setuid` refused.
    User { uid: u32, source: io::Error },
    /// The listeners could not be placed at fd 3...
    Fds(io::Error),
    /// The role could not leave the batch scheduling class a spare waits in.
    Scheduling(io::Error),
    /// `execvp` of the command failed.
    Exec { program: String, source: io::Error },
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupError::Handoff(e) => {
                write!(f, "unable to receive the hand-off from the primary: {}", lower(e))
            }
            SetupError::Protocol { ours, theirs } => write!(
                f,
                "protocol version mismatch: the worker role speaks version {ours}, the primary version {theirs}"
            ),
            SetupError::ParentDeath(e) => {
                write!(f, "unable to set the parent-death signal: {}", lower(e))
            }
            SetupError::Groups { gid, source } => write!(
                f,
                "unable to set the supplementary groups to gid {gid}: {}",
                lower(source)
            ),
            SetupError::Group { gid, source } => {
                write!(f, "unable to switch to gid {gid}: {}", lower(source))
            }
            SetupError::User { uid, source } => {
                write!(f, "unable to switch to uid {uid}: {}", lower(source))
            }
            SetupError::Fds(e) => write!(f, "unable to place the listeners at fd 3: {}", lower(e)),
            SetupError::Scheduling(e) => {
                write!(f, "unable to leave the batch scheduling class: {}", lower(e))
            }
            SetupError::Exec { program, source } => {
                write!(f, "unable to run {program}: {}", lower(source))
            }
        }
    }
}

impl std::error::Error for SetupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SetupError::Protocol { .. } => None,
            SetupError::Handoff(e)
            | SetupError::ParentDeath(e)
            | SetupError::Fds(e)
            | SetupError::Scheduling(e)
            | SetupError::Groups { source: e, .. }
            | SetupError::Group { source: e, .. }
            | SetupError::User { source: e, .. }
            | SetupError::Exec { source: e, .. } => Some(e),
        }
    }
}

impl SetupError {
    /// The wire form the role sends to the primary.
    pub fn to_wire(&self) -> SetupFailure {
        let (stage, cause) = match self {
            SetupError::Handoff(e) => (SetupStage::Handoff, Some(e)),
            SetupError::Protocol { ours, theirs } => (
                SetupStage::Protocol {
                    ours: *ours,
                    theirs: *theirs,
                },
                None,
            ),
            SetupError::ParentDeath(e) => (SetupStage::ParentDeath, Some(e)),
            SetupError::Groups { gid, source } => (SetupStage::Groups { gid: *gid }, Some(source)),
            SetupError::Group { gid, source } => (SetupStage::Group { gid: *gid }, Some(source)),
            SetupError::User { uid, source } => (SetupStage::User { uid: *uid }, Some(source)),
            SetupError::Fds(e) => (SetupStage::Fds, Some(e)),
            SetupError::Scheduling(e) => (SetupStage::Scheduling, Some(e)),
            SetupError::Exec { source, .. } => (SetupStage::Exec, Some(source)),
        };
        let errno = cause.and_then(io::Error::raw_os_error).unwrap_or(0);
        let detail = match cause {
            Some(e) if errno == 0 => lower(e),
            _ => String::new(),
        };
        SetupFailure {
            stage,
            errno,
            detail,
        }
    }

    /// Rebuilds the error from its wire form. `program` is the command's argv[0], which the
    /// primary knows and the message does not repeat.
    pub fn from_wire(failure: &SetupFailure, program: &str) -> SetupError {
        let cause = || {
            if failure.errno != 0 {
                io::Error::from_raw_os_error(failure.errno)
            } else {
                // Bounded: the text came from another process.
                io::Error::other(failure.detail.chars().take(256).collect::<String>())
            }
        };
        match failure.stage {
            SetupStage::Handoff => SetupError::Handoff(cause()),
            SetupStage::Protocol { ours, theirs } => SetupError::Protocol { ours, theirs },
            SetupStage::ParentDeath => SetupError::ParentDeath(cause()),
            SetupStage::Groups { gid } => SetupError::Groups {
                gid,
                source: cause(),
            },
            SetupStage::Group { gid } => SetupError::Group {
                gid,
                source: cause(),
            },
            SetupStage::User { uid } => SetupError::User {
                uid,
                source: cause(),
            },
            SetupStage::Fds => SetupError::Fds(cause()),
            SetupStage::Scheduling => SetupError::Scheduling(cause()),
            SetupStage::Exec => SetupError::Exec {
                program: program.to_string(),
                source: cause(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_errors_survive_the_wire_with_their_reason() {
        let sent = SetupError::User {
            uid: 65534,
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        assert_eq!(
            sent.to_wire().errno,
            libc::EPERM,
            "the errno travels as a number"
        );
        let got = SetupError::from_wire(&sent.to_wire(), "ignored");
        assert_eq!(
            got.to_string(),
            "unable to switch to uid 65534: operation not permitted"
        );
        let sent = SetupError::Exec {
            program: "./server".into(),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert_eq!(
            SetupError::from_wire(&sent.to_wire(), "./server").to_string(),
            "unable to run ./server: no such file or directory"
        );
        let sent = SetupError::Handoff(io::Error::other("message was truncated"));
        assert_eq!(
            SetupError::from_wire(&sent.to_wire(), "x").to_string(),
            "unable to receive the hand-off from the primary: message was truncated"
        );
        let sent = SetupError::Protocol { ours: 2, theirs: 1 };
        assert!(SetupError::from_wire(&sent.to_wire(), "x")
            .to_string()
            .contains("speaks version 2, the primary version 1"));
    }
}
