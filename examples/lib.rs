//! Shared bits of the example workers: reading the socket-activation environment that reloadsup
//! gives a worker, inspecting inherited sockets, and sending `sd_notify`-style readiness.
//!
//! This is example code for workers, not part of the supervisor: it must never change the state
//! of an inherited listening socket that other workers share (no `shutdown`, no `fcntl(F_SETFL)`,
//! no socket options), it only looks at it.

use std::ffi::OsStr;
use std::io;
use std::os::fd::RawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The first inherited listener, as in systemd's `SD_LISTEN_FDS_START`.
pub const LISTEN_FDS_START: RawFd = 3;

/// What the `LISTEN_*` variables say about this process.
#[derive(Debug, PartialEq, Eq)]
pub enum Activation {
    /// `LISTEN_FDS` is not set: nobody passed us sockets.
    None,
    /// The variables are set but `LISTEN_PID` names another process (they leaked through from a
    /// parent), so by the systemd convention the fds at 3.. are not ours to use.
    OtherPid { listen_pid: String },
    /// The sockets at `3..3+count` are ours; `names` comes from `LISTEN_FDNAMES` (may be empty).
    Ours { count: usize, names: Vec<String> },
}

/// Reads `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES` and checks them against our own pid.
///
/// An unparsable or zero `LISTEN_FDS` addressed to us is an error rather than `None`: the caller
/// was clearly meant to be socket-activated and silently binding elsewhere would hide the bug.
pub fn activation() -> Result<Activation, String> {
    let Some(fds) = std::env::var_os("LISTEN_FDS") else {
        return Ok(Activation::None);
    };
    let listen_pid = std::env::var("LISTEN_PID").unwrap_or_default();
    if listen_pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(Activation::OtherPid { listen_pid });
    }
    let count = fds
        .to_str()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .ok_or_else(|| format!("LISTEN_FDS={fds:?} is not a number"))?;
    if count == 0 {
        return Err("LISTEN_FDS=0: no listening socket was passed".to_owned());
    }
    let names = std::env::var("LISTEN_FDNAMES")
        .map(|v| v.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    Ok(Activation::Ours { count, names })
}

/// Reads a numeric variable such as `RELOADSUP_GENERATION`; absent or malformed reads as 0 so the
/// examples also run outside reloadsup.
pub fn env_u64(name: &str) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn getsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes and `len` holds the size of `value`; the
    // kernel rejects a bad fd with EBADF/ENOTSOCK instead of touching memory.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// Whether `fd` is a socket in the listening state (`SO_ACCEPTCONN`). `Err` with `ENOTSOCK` when
/// it is not a socket at all.
pub fn is_listening(fd: RawFd) -> io::Result<bool> {
    getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN).map(|v| v != 0)
}

/// The socket type (`SOCK_STREAM`, `SOCK_DGRAM`, ...) of `fd`.
pub fn socket_type(fd: RawFd) -> io::Result<libc::c_int> {
    getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)
}

/// The local address of a socket, in a family and its printable form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalAddr {
    Inet(std::net::SocketAddr),
    /// A Unix socket: a path, `@name` for the abstract namespace, or empty when unnamed.
    Unix(String),
    /// Any other family, by number.
    Other(libc::c_int),
}

impl std::fmt::Display for LocalAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LocalAddr::Inet(a) => write!(f, "{a}"),
            LocalAddr::Unix(p) => write!(f, "unix:{p}"),
            LocalAddr::Other(family) => write!(f, "family {family}"),
        }
    }
}

/// `getsockname` on `fd`, decoded.
pub fn local_addr(fd: RawFd) -> io::Result<LocalAddr> {
    // SAFETY: sockaddr_storage is plain data for which all-zero bytes are a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` is large enough for any address and `len` says so; the kernel writes at
    // most `len` bytes and reports the real length back.
    let rc = unsafe {
        libc::getsockname(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    let family = libc::c_int::from(storage.ss_family);
    match family {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large enough for.
            let a: libc::sockaddr_in =
                unsafe { *(&storage as *const libc::sockaddr_storage).cast() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Ok(LocalAddr::Inet((ip, u16::from_be(a.sin_port)).into()))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6, which it is large enough for.
            let a: libc::sockaddr_in6 =
                unsafe { *(&storage as *const libc::sockaddr_storage).cast() };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Ok(LocalAddr::Inet(std::net::SocketAddr::V6(
                std::net::SocketAddrV6::new(
                    ip,
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                ),
            )))
        }
        libc::AF_UNIX => {
            // SAFETY: the family says the storage holds a sockaddr_un, which it is large enough for.
            let a: libc::sockaddr_un =
                unsafe { *(&storage as *const libc::sockaddr_storage).cast() };
            let path_len = (len as usize)
                .saturating_sub(std::mem::size_of::<libc::sa_family_t>())
                .min(a.sun_path.len());
            let bytes: Vec<u8> = a.sun_path[..path_len].iter().map(|&c| c as u8).collect();
            Ok(LocalAddr::Unix(unix_path_text(&bytes)))
        }
        other => Ok(LocalAddr::Other(other)),
    }
}

/// Renders the raw `sun_path` bytes: a leading NUL means the abstract namespace, shown as `@`;
/// a path is cut at its terminating NUL.
fn unix_path_text(bytes: &[u8]) -> String {
    match bytes.split_first() {
        None => String::new(),
        Some((0, name)) => format!("@{}", String::from_utf8_lossy(name)),
        Some(_) => {
            let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
            String::from_utf8_lossy(&bytes[..end]).into_owned()
        }
    }
}

/// Sends `message` (e.g. `"READY=1\nSTATUS=serving"`) to `$NOTIFY_SOCKET`.
///
/// Returns `Ok(false)` when the variable is unset (readiness is not awaited by notify, nothing to
/// do). A leading `@` names an abstract-namespace socket, as with systemd.
pub fn notify(message: &str) -> io::Result<bool> {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let target = target.as_bytes();
    if target.is_empty() {
        return Ok(false);
    }
    let socket = UnixDatagram::unbound()?;
    let sent = if let Some(name) = target.strip_prefix(b"@") {
        let addr = SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(message.as_bytes(), &addr)?
    } else {
        socket.send_to(message.as_bytes(), OsStr::from_bytes(target))?
    };
    if sent != message.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short write of a notify datagram",
        ));
    }
    Ok(true)
}

/// Parses `250ms`, `2s`, `1m`, `1h` or a bare number of seconds, the forms reloadsup accepts.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?} (expected e.g. 250ms, 2s, 1m)"))?;
    let millis_per_unit = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(format!(
                "invalid duration {text:?} (expected e.g. 250ms, 2s, 1m)"
            ))
        }
    };
    n.checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_reloadsup_forms_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("2x").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn abstract_and_path_unix_names_render() {
        assert_eq!(unix_path_text(b"\0sock"), "@sock");
        assert_eq!(unix_path_text(b"/run/a.sock\0\0"), "/run/a.sock");
        assert_eq!(unix_path_text(b""), "");
    }
}
