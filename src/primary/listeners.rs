//! Binding the listening sockets. The primary binds them at start (and a reload binds the ones
//! its re-read config adds) and holds each as long as a live generation was given it: it never
//! accepts on them, never re-binds or shuts them down, and closes one only once it is no
//! longer configured and no worker that received it is left (see `reconfigure`).
//! Workers get duplicates through SCM_RIGHTS.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use nix::sys::socket::{
    self, sockopt, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, SockaddrIn6,
    SockaddrStorage, UnixAddr,
};

use crate::config::{Address, ListenerSpec};
pub(crate) use crate::error::BindError;

/// A bound, listening socket and what it is bound to.
#[derive(Debug)]
pub(crate) struct Listener {
    pub name: String,
    /// As configured.
    pub address: Address,
    /// As bound: port 0 resolved to the real port.
    pub bound: String,
    pub fd: OwnedFd,
    /// Passed by a socket activator, which owns its path: never unlinked.
    pub adopted: bool,
}

impl Listener {
    /// The unix socket file this primary made, removed when the listener is closed or the
    /// primary exits; never one an activator made.
    pub(crate) fn own_path(&self) -> Option<&Path> {
        match &self.address {
            Address::Unix(path) if !self.adopted => Some(path),
            _ => None,
        }
    }
}

fn nixerr(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Binds every listener, in order. The error names the listener as `--listen NAME`.
pub(crate) fn bind_all(specs: &[ListenerSpec], backlog: i32) -> Result<Vec<Listener>, BindError> {
    specs
        .iter()
        .map(|spec| {
            bind(spec, backlog).map_err(|source| BindError {
                flag: format!("--listen {}", spec.name),
                address: spec.address.to_string(),
                source,
            })
        })
        .collect()
}

fn bind(spec: &ListenerSpec, backlog: i32) -> io::Result<Listener> {
    let backlog = Backlog::new(backlog).unwrap_or(Backlog::MAXCONN);
    let fd = match &spec.address {
        Address::Tcp(addr) => {
            let family = if addr.is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            };
            let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
                .map_err(nixerr)?;
            socket::setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(nixerr)?;
            if addr.is_ipv6() {
                // `[::]` means IPv6 only; bind 0.0.0.0 separately for IPv4.
                socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true).map_err(nixerr)?;
            }
            match addr {
                std::net::SocketAddr::V4(a) => socket::bind(fd.as_raw_fd(), &SockaddrIn::from(*a)),
                std::net::SocketAddr::V6(a) => socket::bind(fd.as_raw_fd(), &SockaddrIn6::from(*a)),
            }
            .map_err(nixerr)?;
            fd
        }
        Address::Unix(path) => {
            remove_stale_unix_socket(path)?;
            let fd = socket::socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .map_err(nixerr)?;
            let addr = UnixAddr::new(path.as_path()).map_err(nixerr)?;
            socket::bind(fd.as_raw_fd(), &addr).map_err(nixerr)?;
            fd
        }
    };
    socket::listen(&fd, backlog).map_err(nixerr)?;
    let bound = bound_address(&fd, &spec.address);
    Ok(Listener {
        name: spec.name.clone(),
        address: spec.address.clone(),
        bound,
        fd,
        adopted: false,
    })
}

/// A socket file left behind by a previous run is removed; a live one is "address in use".
fn remove_stale_unix_socket(path: &Path) -> io::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket",
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(io::Error::from(io::ErrorKind::AddrInUse)),
        Err(_) => std::fs::remove_file(path),
    }
}

/// The address a socket of type `ty` is bound to, if it is a kind reloadsup serves.
pub(crate) fn address_of(addr: &SockaddrStorage, ty: SockType) -> Option<Address> {
    match ty {
        SockType::Stream => {
            if let Some(v4) = addr.as_sockaddr_in() {
                return Some(Address::Tcp(std::net::SocketAddrV4::from(*v4).into()));
            }
            if let Some(v6) = addr.as_sockaddr_in6() {
                return Some(Address::Tcp(std::net::SocketAddrV6::from(*v6).into()));
            }
            let path = addr.as_unix_addr()?.path()?;
            Some(Address::Unix(path.to_path_buf()))
        }
        _ => None,
    }
}

pub(crate) fn bound_address(fd: &OwnedFd, configured: &Address) -> String {
    if let Address::Tcp(_) = configured {
        if let Ok(addr) = socket::getsockname::<SockaddrStorage>(fd.as_fd().as_raw_fd()) {
            if let Some(v4) = addr.as_sockaddr_in() {
                return format!("tcp://{}", std::net::SocketAddrV4::from(*v4));
            }
            if let Some(v6) = addr.as_sockaddr_in6() {
                return format!("tcp://{}", std::net::SocketAddrV6::from(*v6));
            }
        }
    }
    configured.to_string()
}
