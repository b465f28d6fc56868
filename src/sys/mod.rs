//! The only place in reloadsup that talks to the kernel below nix's safe API, one file per
//! kernel object (as mio's `sys/`): `fd` (the standard fds, placing, pipes, waiting), `fdpass`
//! (socket pairs, SCM_RIGHTS, credentials), `spawn` (role processes), `exec`, `fork` (a
//! one-threaded role splitting itself), `process` (signals, reaping, credentials), `signal`
//! (masks, quiet threads), `sched`, `procfs` (another process's fds) and `cgroup`.
//!
//! Every fd created here is close-on-exec in the same call that creates it. Between fork and
//! exec (in [`spawn_role`]) only async-signal-safe calls run: no allocation, no locks.
//! Nothing here knows about generations or workers; it works on pids and fds.
#![allow(unsafe_code)]

pub(crate) mod cgroup;
mod exec;
mod fd;
mod fdpass;
mod fork;
mod process;
mod procfs;
mod sched;
mod signal;
mod spawn;

pub(crate) use exec::{exec_in_place, execvp};
pub(crate) use fd::{
    dup_onto, ensure_std_fds, may_wait_on_close, memfd_with, pipe, place_fds, set_cloexec,
    set_nonblocking, take_inherited_fd, tee, wait_readable, writable_now,
};
#[cfg(test)]
pub(crate) use fdpass::getsockopt_int;
pub(crate) use fdpass::{
    at_eof, connect_through_door, oob_inline, pass_pidfd, queue_empty, recv_all_fds, recv_nowait,
    recv_with_creds, recv_with_fds, send_nonblocking, send_with_fds, send_with_fds_nonblocking,
    seqpacket_pair, setsockopt_int, stream_pair,
};
pub(crate) use fork::{close_all_except, fork_with};
pub(crate) use process::{
    allow_ptrace_by_descendants_of, die_with_parent, drop_privileges, getpgid, kill, kill_group,
    reap_one, set_subreaper, set_undumpable, shed_code_pages, wait_exit, was_stopped, ExitStatus,
};
pub(crate) use procfs::{copy_fd_of, descends_from, pidfd_alive};
pub(crate) use sched::{monotonic_ns, sched_defer, sched_normal};
pub(crate) use signal::{
    close_later, close_own, close_soon, closer_idle, closer_keeps_up, ignore_signals,
    reset_signals, spawn_quiet_thread, unblock_signals,
};
pub(crate) use spawn::{
    inherit_fd, no_inherited_fds, spawn_linked_role, spawn_role, take_role_link,
};

use std::io;
use std::os::fd::RawFd;

/// The fd at which a role process finds its link to the primary.
pub(crate) const ROLE_LINK_FD: RawFd = 3;

/// The most fds sent in one SCM_RIGHTS message (the kernel's SCM_MAX_FD is 253).
pub(crate) const MAX_FDS_PER_MESSAGE: usize = 250;

fn errno(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}
