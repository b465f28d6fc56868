//! The worker role: receives its [`WorkerSpec`] and listener fds from the primary, sets up the
//! socket-activation environment, and execs the user's command in place, so that
//! `LISTEN_PID` is simply its own pid.
//!
//! It must leave the command exactly fds 0, 1, 2 and the listeners at 3.., default signal
//! dispositions, an empty signal mask, its own process group (set at spawn) and
//! `PR_SET_PDEATHSIG`, and nothing else of the supervisor.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

use reloadsup_protocol::{self as proto, FdBatch, WorkerSpec, PROTOCOL_VERSION};

use crate::error::{lower, SetupError};
use crate::sys;

/// Variables of reloadsup's own that a worker must not see; the socket-activation ones are
/// set afresh.
const OWN_VARS: &[&str] = &[
    "RELOADSUP_ADMIN_PASSWORD_HASH",
    "RELOADSUP_PASSWORD",
    "RELOADSUP_CONTROL",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    // systemd 258+: the pidfd id of the process systemd started; a worker gets none.
    "LISTEN_PIDFDID",
    "NOTIFY_SOCKET",
];

/// Exit status when the command cannot be run, like a shell's. The reason goes to the primary
/// on the link (see [`report`]), so the status itself need not tell the stages apart.
const EXEC_FAILED: u8 = 127;

/// The role argument that says the worker's output is captured (see [`run`]).
pub(crate) const CAPTURED: &str = "--captured";

/// Runs the worker role. `args` are the words after `__worker`: the primary's pid, so that a
/// spare role (exec'd ahead of a reload, see `--prespawn`) dies with the primary while it waits;
/// then, when the primary uses per-worker cgroups, their base directory.
pub(crate) fn run(args: &[OsString]) -> u8 {
    // `--captured` last: the primary sends the worker's stdout and stderr pipes after the
    // listeners (`--log-output stdout|file:PATH`).
    let (captured, args) = match args.split_last() {
        Some((last, rest)) if last == CAPTURED => (true, rest),
        _ => (false, args),
    };
    let parent = args.first().and_then(|a| a.to_str()?.parse::<u32>().ok());
    if let Some(base) = args.get(1) {
        join_cgroup(Path::new(base));
    }
    let mut link = match sys::take_role_link() {
        Ok(link) => link,
        Err(e) => {
            eprintln!("reloadsup: worker: {}", lower(&e));
            return EXEC_FAILED;
        }
    };
    let (spec, err) = match prepare(parent, captured, &mut link) {
        Ok(Some(spec)) => {
            let argv: Vec<OsString> = spec.argv.iter().cloned().map(OsString::from_vec).collect();
            let source = sys::execvp(&argv);
            let program = argv
                .first()
                .map(|a| a.to_string_lossy().into_owned())
                .unwrap_or_default();
            (
                Some((spec.slot, spec.generation)),
                SetupError::Exec { program, source },
            )
        }
        // A spare the primary no longer needs: it closed the link without a spec.
        Ok(None) => return 0,
        Err((which, e)) => (which, e),
    };
    match spec {
        Some((slot, generation)) => {
            eprintln!("reloadsup: worker {slot} of generation {generation}: {err}")
        }
        None => eprintln!("reloadsup: worker: {err}"),
    }
    report(&link, &err);
    EXEC_FAILED
}

/// Tells the primary why this role could not run the command. The link is kept open (and
/// close-on-exec) until the exec for this: a successful exec closes it, so the primary reads
/// either this message or end-of-file. Best effort: the exit status says "failed" anyway.
fn report(link: &OwnedFd, err: &SetupError) {
    if let Ok(bytes) = proto::encode(&err.to_wire()) {
        let _ = sys::send_with_fds(link.as_fd(), &bytes, &[]);
    }
}

/// Moves this process into its own cgroup, before the command can fork anything, so that every
/// process it starts is killed with it even after `setsid()`. A failure is not fatal: the
/// keeper still watches the process group.
fn join_cgroup(base: &Path) {
    if let Err(e) = sys::cgroup::join(base) {
        eprintln!(
            "reloadsup: worker: unable to join a cgroup under {}: {}; its children are tracked by process group only",
            base.display(),
            lower(&e)
        );
    }
}

/// A failed setup, with the slot and generation when the spec had arrived, for the message.
type Failed = (Option<(u32, u64)>, SetupError);

/// Everything up to the exec.
fn prepare(
    parent: Option<u32>,
    captured: bool,
    link: &mut OwnedFd,
) -> Result<Option<WorkerSpec>, Failed> {
    // Default dispositions first, then unblock: a stop signal that arrived while this process
    // was starting ends it, as it would end the worker.
    sys::reset_signals();
    // Until the command runs, this process must not steal the CPU from the primary, which may
    // be handing out a whole generation: a spare is woken by its spec while the primary is
    // still sending the others'.
    let deferred = sys::sched_defer();
    if let Some(parent) = parent {
        // Before waiting for the spec: a spare may wait a long time.
        sys::die_with_parent(parent).map_err(|e| (None, SetupError::ParentDeath(e)))?;
        // `--ready listening` under Yama's ptrace scope 1 and a primary that is not root: only
        // an ancestor may read this process's system calls and memory, and the inspector that
        // looks is the primary's child, not ours. Naming the primary lets its descendants look
        // (this process only, not what it forks; nothing is lost where Yama is off).
        if !nix::unistd::geteuid().is_root() {
            sys::allow_ptrace_by_descendants_of(parent);
        }
    }
    let Some((spec, fds)) = receive(link).map_err(|e| (None, e))? else {
        return Ok(None);
    };
    let which = Some((spec.slot, spec.generation));
    if captured {
        // From here on, what this role says (a failed exec) is labelled like the command's.
        let output = receive_output(link).map_err(|e| (which, e))?;
        for (fd, target) in output.iter().zip([1, 2]) {
            sys::dup_onto(fd.as_fd(), target).map_err(|e| (which, SetupError::Fds(e)))?;
        }
    }
    let steps = || -> Result<(), SetupError> {
        sys::drop_privileges(spec.uid, spec.gid)?;
        // After the credentials change: the kernel clears the parent-death signal on a change
        // of user or group, so it is set (again) only now.
        sys::die_with_parent(spec.primary_pid).map_err(SetupError::ParentDeath)?;
        set_env(&spec);
        sys::place_fds(fds, 3, link).map_err(SetupError::Fds)?;
        if deferred {
            sys::sched_normal().map_err(SetupError::Scheduling)?;
        }
        Ok(())
    };
    match steps() {
        Ok(()) => Ok(Some(spec)),
        Err(e) => Err((Some((spec.slot, spec.generation)), e)),
    }
}

/// The write ends of the worker's stdout and stderr pipes, sent after the listeners as an
/// [`FdBatch`] of 2.
fn receive_output(link: &OwnedFd) -> Result<Vec<OwnedFd>, SetupError> {
    let mut buf = [0u8; 64];
    let (n, fds) = sys::recv_with_fds(link.as_fd(), &mut buf, 2).map_err(SetupError::Handoff)?;
    let malformed = |e: proto::Error| SetupError::Handoff(io::Error::other(e));
    let batch: FdBatch = proto::decode(&buf[..n]).map_err(malformed)?;
    if batch.count != 2 || fds.len() != 2 {
        return Err(malformed(proto::Error::FdCount {
            expected: 2,
            received: fds.len(),
        }));
    }
    Ok(fds)
}

/// The spec and the listener fds; `None` when the primary closed the link without sending.
fn receive(link: &OwnedFd) -> Result<Option<(WorkerSpec, Vec<OwnedFd>)>, SetupError> {
    let mut buf = vec![0u8; proto::MAX_FRAME];
    let handoff = |e: io::Error| SetupError::Handoff(e);
    let malformed = |e: proto::Error| SetupError::Handoff(io::Error::other(e));
    let (n, mut fds) =
        sys::recv_with_fds(link.as_fd(), &mut buf, sys::MAX_FDS_PER_MESSAGE).map_err(handoff)?;
    if n == 0 {
        return Ok(None);
    }
    let body = &buf[..n];
    let spec: WorkerSpec = proto::decode(body).map_err(|e| {
        match proto::leading_version(body).filter(|&v| v != PROTOCOL_VERSION) {
            Some(theirs) => SetupError::Protocol {
                ours: PROTOCOL_VERSION,
                theirs,
            },
            None => malformed(e),
        }
    })?;
    if spec.version != PROTOCOL_VERSION {
        return Err(SetupError::Protocol {
            ours: PROTOCOL_VERSION,
            theirs: spec.version,
        });
    }
    let expected = spec.fd_count as usize;
    while fds.len() < expected {
        let (n, more) = sys::recv_with_fds(link.as_fd(), &mut buf, sys::MAX_FDS_PER_MESSAGE)
            .map_err(handoff)?;
        if n == 0 {
            break;
        }
        let batch: FdBatch = proto::decode(&buf[..n]).map_err(malformed)?;
        if batch.count as usize != more.len() {
            return Err(malformed(proto::Error::FdCount {
                expected: batch.count as usize,
                received: more.len(),
            }));
        }
        fds.extend(more);
    }
    if fds.len() != expected || spec.listener_names.len() != expected {
        return Err(malformed(proto::Error::FdCount {
            expected,
            received: fds.len(),
        }));
    }
    Ok(Some((spec, fds)))
}

fn set_env(spec: &WorkerSpec) {
    // This process is single-threaded, so changing the environment is sound.
    let internal: Vec<OsString> = std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| {
            k.to_str()
                .is_some_and(|k| k.starts_with("RELOADSUP_") || k.starts_with("EINHORN_"))
        })
        .collect();
    for k in internal {
        std::env::remove_var(k);
    }
    for k in OWN_VARS {
        std::env::remove_var(k);
    }
    for (k, v) in &spec.env {
        std::env::set_var(OsString::from_vec(k.clone()), OsString::from_vec(v.clone()));
    }
    let n = spec.fd_count;
    // Without them (`--no-listen-env`) a server that takes its socket by a flag (`{fd}`) does
    // not also adopt it from LISTEN_FDS: gunicorn would then close fd 3 twice.
    if spec.listen_env {
        std::env::set_var("LISTEN_FDS", n.to_string());
        std::env::set_var("LISTEN_PID", std::process::id().to_string());
        std::env::set_var("LISTEN_FDNAMES", spec.listener_names.join(":"));
    }
    if let Some(path) = &spec.notify_socket {
        std::env::set_var("NOTIFY_SOCKET", OsString::from_vec(path.clone()));
    }
    std::env::set_var("RELOADSUP_GENERATION", spec.generation.to_string());
    std::env::set_var("RELOADSUP_WORKER", spec.slot.to_string());
    if spec.einhorn_env {
        std::env::set_var("EINHORN_FD_COUNT", n.to_string());
        for i in 0..n {
            std::env::set_var(format!("EINHORN_FD_{i}"), (3 + i).to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(version: u32) -> WorkerSpec {
        WorkerSpec {
            version,
            primary_pid: 1,
            generation: 2,
            slot: 0,
            argv: vec![b"x".to_vec()],
            env: vec![],
            listener_names: vec![],
            fd_count: 0,
            notify_socket: None,
            uid: None,
            gid: None,
            einhorn_env: false,
            listen_env: true,
        }
    }

    #[test]
    fn a_spec_of_another_protocol_version_is_a_protocol_error() {
        let (primary, role) = sys::seqpacket_pair().unwrap();
        let body = proto::encode(&spec(PROTOCOL_VERSION + 1)).unwrap();
        sys::send_with_fds(primary.as_fd(), &body, &[]).unwrap();
        match receive(&role) {
            Err(SetupError::Protocol { ours, theirs }) => {
                assert_eq!((ours, theirs), (PROTOCOL_VERSION, PROTOCOL_VERSION + 1));
            }
            other => panic!("expected a protocol mismatch, got {other:?}"),
        }
        // The role's report reaches the primary's end as one decodable message.
        report(&role, &SetupError::Protocol { ours: 1, theirs: 2 });
        let mut buf = [0u8; 256];
        let n = sys::recv_nowait(primary.as_fd(), &mut buf).unwrap();
        let failure: proto::SetupFailure = proto::decode(&buf[..n]).unwrap();
        assert_eq!(
            failure.stage,
            proto::SetupStage::Protocol { ours: 1, theirs: 2 }
        );
    }

    #[test]
    fn a_spec_of_another_layout_is_still_a_protocol_error() {
        let (primary, role) = sys::seqpacket_pair().unwrap();
        // Version 2, then bytes that are no version-1 spec.
        sys::send_with_fds(primary.as_fd(), &[2, 0xff], &[]).unwrap();
        match receive(&role) {
            Err(SetupError::Protocol { theirs: 2, .. }) => {}
            other => panic!("expected a protocol mismatch, got {other:?}"),
        }
    }

    #[test]
    fn a_closed_link_without_a_spec_is_a_retired_spare() {
        let (primary, role) = sys::seqpacket_pair().unwrap();
        drop(primary);
        assert!(matches!(receive(&role), Ok(None)));
    }
}
