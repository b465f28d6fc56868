//! `udp_echo`: a datagram server for reloadsup's `udp://` listeners.
//!
//! It takes the datagram socket reloadsup passes at fd 3 (`LISTEN_FDS`), answers every datagram
//! with `generation=G pid=P <the datagram>` to its sender, and sends `READY=1`. On SIGTERM it
//! stops receiving (after answering the datagram in hand) and exits 0: datagrams still queued
//! stay in the shared socket for the next generation, so a reload loses none.

use std::io;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use reloadsup_examples as ex;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("udp_echo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> io::Result<()> {
    let fd = ex::LISTEN_FDS_START;
    match ex::activation().map_err(io::Error::other)? {
        ex::Activation::Ours { .. } => {}
        other => return Err(io::Error::other(format!("no socket passed: {other:?}"))),
    }
    if ex::socket_type(fd)? != libc::SOCK_DGRAM {
        return Err(io::Error::other("fd 3 is not a datagram socket"));
    }
    let handler: extern "C" fn(libc::c_int) = on_term;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGTERM, handler as libc::sighandler_t) };
    let prefix = format!(
        "generation={} pid={} ",
        ex::env_u64("RELOADSUP_GENERATION"),
        std::process::id()
    );
    ex::notify("READY=1")?;
    let mut buf = vec![0u8; 65536];
    while !STOP.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, 50) };
        // SAFETY: sockaddr_storage is plain data, for which all zeroes is a valid value.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: `storage` and `len` describe a live sockaddr_storage; `buf` is live for its
        // length. MSG_DONTWAIT: another worker may have taken the datagram poll saw.
        let n = unsafe {
            libc::recvfrom(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
                (&mut storage as *mut libc::sockaddr_storage).cast(),
                &mut len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => continue,
                _ => return Err(e),
            }
        }
        let mut reply = prefix.clone().into_bytes();
        reply.extend_from_slice(&buf[..n as usize]);
        // SAFETY: `reply` is live for its length; the address is the one recvfrom filled in.
        unsafe {
            libc::sendto(
                fd,
                reply.as_ptr().cast(),
                reply.len(),
                libc::MSG_DONTWAIT,
                (&storage as *const libc::sockaddr_storage).cast(),
                len,
            )
        };
    }
    Ok(())
}
