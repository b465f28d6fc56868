//! The hidden roles of the reloadsup executable, run by the primary through `/proc/self/exe`.
//!
//! A role process is fresh and single-threaded: it may allocate and call anything before its
//! final exec, which is why the primary never runs user-facing setup between fork and exec.

pub(crate) mod inspector;
pub(crate) mod keeper;
pub(crate) mod logger;
pub(crate) mod metrics;
pub(crate) mod worker;

use std::ffi::OsString;

/// The uid and gid a role drops to, given the user and group asked for (`None`: ours), or
/// `None` when they are ours already.
pub(crate) fn switch_to(uid: Option<u32>, gid: Option<u32>) -> Option<(u32, u32)> {
    let ours = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    let wanted = (uid.unwrap_or(ours.0), gid.unwrap_or(ours.1));
    (wanted != ours).then_some(wanted)
}

/// The words `--uid U --gid G` after a role's name, for [`switch_to`]'s answer.
pub(crate) fn credential_args(to: Option<(u32, u32)>) -> Vec<String> {
    match to {
        Some((uid, gid)) => vec![
            "--uid".to_string(),
            uid.to_string(),
            "--gid".to_string(),
            gid.to_string(),
        ],
        None => Vec::new(),
    }
}

/// Runs a role that switches to the workers' user: resets signals, reads `--uid U --gid G`
/// from `args` (exit 2 on bad words), then `serve` with them (exit 1, said on stderr as
/// `reloadsup: NAME: ...`, when it fails).
pub(crate) fn run_as_workers(
    name: &str,
    args: &[OsString],
    serve: impl FnOnce(Option<(u32, u32)>) -> std::io::Result<()>,
) -> u8 {
    crate::sys::reset_signals();
    let drop_to = match credentials(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("reloadsup: {name}: {e}");
            return 2;
        }
    };
    match serve(drop_to) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("reloadsup: {name}: {}", crate::error::lower(&e));
            1
        }
    }
}

/// The words `--uid U --gid G` (both or neither) after a role's name: the credentials a role
/// that starts as root switches to once it holds what needs root.
pub(crate) fn credentials(args: &[OsString]) -> Result<Option<(u32, u32)>, String> {
    let words: Vec<&str> = args.iter().filter_map(|a| a.to_str()).collect();
    match words.as_slice() {
        [] => Ok(None),
        ["--uid", uid, "--gid", gid] => match (uid.parse(), gid.parse()) {
            (Ok(u), Ok(g)) => Ok(Some((u, g))),
            _ => Err(format!("bad --uid/--gid: {uid} {gid}")),
        },
        _ => Err(format!("unexpected arguments: {words:?}")),
    }
}
