//! Binding the listening sockets. The primary binds them at start (and a reload binds the ones
//! its re-read config adds) and holds each as long as a live generation was given it: it never
//! accepts on them, never re-binds or shuts them down, and closes one only once it is no
//! longer configured and no worker that received it is left (see `reconfigure`).
//! Workers get duplicates through SCM_RIGHTS.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use nix::sys::socket::{
    self, sockopt, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, SockaddrIn6,
    SockaddrStorage, UnixAddr,
};

use crate::address::{Host, Transport};
use crate::config::{Address, ListenOptions, ListenerSpec};
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

/// Binds every listener, in order. The error names the listener as `--listen NAME`. Host names
/// are resolved here, once: a name given once must have one address; a name given once per
/// address (under different listener names) binds each listener to one of them, in order.
pub(crate) fn bind_all(specs: &[ListenerSpec], backlog: i32) -> Result<Vec<Listener>, BindError> {
    let fail = |spec: &ListenerSpec, source| BindError {
        flag: format!("--listen {}", spec.name),
        address: format!("{}{}", spec.address, spec.options),
        source,
    };
    let resolved = resolve_names(specs).map_err(|(i, e)| fail(&specs[i], e))?;
    specs
        .iter()
        .zip(resolved)
        .map(|(spec, ip)| bind(spec, ip, backlog).map_err(|e| fail(spec, e)))
        .collect()
}

/// The address each spec with a host name binds; `Err((index, why))` names the first spec
/// whose name cannot be resolved or resolves to more addresses than it is given for.
fn resolve_names(specs: &[ListenerSpec]) -> Result<Vec<Option<SocketAddr>>, (usize, io::Error)> {
    let mut out = vec![None; specs.len()];
    for (i, spec) in specs.iter().enumerate() {
        let Address::Inet {
            host: Host::Name(name),
            port,
            ..
        } = &spec.address
        else {
            continue;
        };
        if out[i].is_some() {
            continue;
        }
        let group: Vec<usize> = (i..specs.len())
            .filter(|j| specs[*j].address == spec.address)
            .collect();
        let found = (name.as_str(), *port).to_socket_addrs().map_err(|e| {
            (
                i,
                io::Error::other(format!("unable to resolve {name}: {e}")),
            )
        })?;
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for a in found {
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        if addrs.is_empty() {
            return Err((i, io::Error::other(format!("{name} has no address"))));
        }
        if addrs.len() != group.len() && !(group.len() == 1 && addrs.len() == 1) {
            let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
            let why = format!(
                "{name} resolves to {} address{} ({}) but is given {} time{}: give one IP address, or name the listener once per address (-l a={addr} -l b={addr})",
                addrs.len(),
                if addrs.len() == 1 { "" } else { "es" },
                list.join(", "),
                group.len(),
                if group.len() == 1 { "" } else { "s" },
                addr = spec.address,
            );
            return Err((i, io::Error::other(why)));
        }
        for (j, a) in group.into_iter().zip(addrs) {
            out[j] = Some(a);
        }
    }
    Ok(out)
}

fn no_ipv6(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL | libc::EPROTONOSUPPORT)
    )
}

/// A bound internet socket of type `ty`, with the spec's options applied before `bind`.
fn inet_socket(
    ty: SockType,
    addr: SocketAddr,
    v6only: bool,
    o: &ListenOptions,
) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(family, ty, SockFlag::SOCK_CLOEXEC, None).map_err(nixerr)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(nixerr)?;
    if addr.is_ipv6() {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &v6only).map_err(nixerr)?;
    }
    if o.reuseport {
        socket::setsockopt(&fd, sockopt::ReusePort, &true).map_err(nixerr)?;
    }
    if o.freebind {
        socket::setsockopt(&fd, sockopt::IpFreebind, &true).map_err(nixerr)?;
    }
    match addr {
        SocketAddr::V4(a) => socket::bind(fd.as_raw_fd(), &SockaddrIn::from(a)),
        SocketAddr::V6(a) => socket::bind(fd.as_raw_fd(), &SockaddrIn6::from(a)),
    }
    .map_err(nixerr)?;
    Ok(fd)
}

fn unix_socket(addr: &UnixAddr) -> io::Result<OwnedFd> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(nixerr)?;
    socket::bind(fd.as_raw_fd(), addr).map_err(nixerr)?;
    Ok(fd)
}

fn bind(spec: &ListenerSpec, resolved: Option<SocketAddr>, backlog: i32) -> io::Result<Listener> {
    let o = &spec.options;
    let backlog = Backlog::new(o.backlog.unwrap_or(backlog)).unwrap_or(Backlog::MAXCONN);
    let fd = match &spec.address {
        Address::Inet {
            transport,
            host,
            port,
        } => {
            let ty = match transport {
                Transport::Tcp => SockType::Stream,
                Transport::Udp => SockType::Datagram,
            };
            let fd = match host {
                // `[::]` means IPv6 only unless `v6only=false`: bind 0.0.0.0 separately.
                Host::Ip(ip) => {
                    inet_socket(ty, SocketAddr::new(*ip, *port), o.v6only != Some(false), o)?
                }
                Host::Name(_) => {
                    let addr = resolved
                        .ok_or_else(|| io::Error::other("the host name was not resolved"))?;
                    inet_socket(ty, addr, o.v6only != Some(false), o)?
                }
                Host::All => {
                    let any6 = SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), *port);
                    match inet_socket(ty, any6, o.v6only == Some(true), o) {
                        Err(e) if no_ipv6(&e) && o.v6only != Some(true) => {
                            let any4 =
                                SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), *port);
                            inet_socket(ty, any4, false, o)?
                        }
                        other => other?,
                    }
                }
            };
            if *transport == Transport::Tcp {
                if let Some(secs) = o.defer_accept {
                    crate::sys::setsockopt_int(
                        fd.as_fd(),
                        libc::IPPROTO_TCP,
                        libc::TCP_DEFER_ACCEPT,
                        secs as i32,
                    )?;
                }
                if let Some(queue) = o.fastopen {
                    crate::sys::setsockopt_int(
                        fd.as_fd(),
                        libc::IPPROTO_TCP,
                        libc::TCP_FASTOPEN,
                        queue as i32,
                    )?;
                }
            }
            fd
        }
        Address::Unix(path) => {
            remove_stale_unix_socket(path)?;
            let fd = unix_socket(&UnixAddr::new(path.as_path()).map_err(nixerr)?)?;
            // Before `listen`: nobody can connect until the file has its owner and mode.
            let set = || set_owner_and_mode(path, o.owner, o.group, o.mode);
            if let Err(e) = set() {
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
            fd
        }
        Address::Abstract(name) => {
            unix_socket(&UnixAddr::new_abstract(name.as_bytes()).map_err(nixerr)?)?
        }
    };
    if spec.address.is_stream() {
        socket::listen(&fd, backlog).map_err(nixerr)?;
    }
    let bound = bound_address(&fd, &spec.address);
    Ok(Listener {
        name: spec.name.clone(),
        address: spec.address.clone(),
        bound,
        fd,
        adopted: false,
    })
}

/// Gives the socket file just bound at `path` its `owner`, `group` and `mode`, through the file
/// itself and never through the path again: whoever can write the directory could swap the
/// name for a symlink to a file of root's between the bind and a `chown(path)`, which follows
/// it (the eighth attacker's review of issue 18). The name is opened once with `O_PATH` and
/// `O_NOFOLLOW`; it must still be a socket; the owner is set on that open file, the mode
/// through `/proc/self/fd`, which names that very inode.
fn set_owner_and_mode(
    path: &std::path::Path,
    owner: Option<u32>,
    group: Option<u32>,
    mode: Option<u32>,
) -> io::Result<()> {
    use nix::fcntl::{open, OFlag};
    use nix::sys::stat::{fstat, Mode, SFlag};
    if owner.is_none() && group.is_none() && mode.is_none() {
        return Ok(());
    }
    let fd = open(
        path,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(nixerr)?;
    let st = fstat(&fd).map_err(nixerr)?;
    // The socket just bound is ours and has one name: another socket hard-linked in its place
    // (a service's control socket, where `fs.protected_hardlinks` is 0) is not (the ninth
    // review). The O_PATH fd pins the inode checked here.
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK
        || st.st_nlink != 1
        || st.st_uid != nix::unistd::geteuid().as_raw()
    {
        return Err(io::Error::other(format!(
            "{} is no longer the socket just bound (replaced meanwhile?)",
            path.display()
        )));
    }
    if owner.is_some() || group.is_some() {
        nix::unistd::fchownat(
            &fd,
            "",
            owner.map(nix::unistd::Uid::from_raw),
            group.map(nix::unistd::Gid::from_raw),
            nix::fcntl::AtFlags::AT_EMPTY_PATH,
        )
        .map_err(nixerr)?;
    }
    if let Some(mode) = mode {
        let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
        std::fs::set_permissions(proc_path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
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
    let transport = match ty {
        SockType::Stream => Transport::Tcp,
        SockType::Datagram => Transport::Udp,
        _ => return None,
    };
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(Address::inet(
            transport,
            std::net::SocketAddrV4::from(*v4).into(),
        ));
    }
    if let Some(v6) = addr.as_sockaddr_in6() {
        return Some(Address::inet(
            transport,
            std::net::SocketAddrV6::from(*v6).into(),
        ));
    }
    if transport == Transport::Udp {
        return None;
    }
    let unix = addr.as_unix_addr()?;
    if let Some(path) = unix.path() {
        return Some(Address::Unix(path.to_path_buf()));
    }
    let name = unix.as_abstract()?;
    Some(Address::Abstract(
        String::from_utf8_lossy(name).into_owned(),
    ))
}

/// What the socket is bound to, as the key the primary keeps it under: port 0 and every
/// interface resolved to what the kernel bound.
pub(crate) fn bound_address(fd: &OwnedFd, configured: &Address) -> String {
    if let Address::Inet { transport, .. } = configured {
        if let Ok(addr) = socket::getsockname::<SockaddrStorage>(fd.as_fd().as_raw_fd()) {
            let ty = match transport {
                Transport::Tcp => SockType::Stream,
                Transport::Udp => SockType::Datagram,
            };
            if let Some(a) = address_of(&addr, ty) {
                return a.to_string();
            }
        }
    }
    configured.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_listener;

    fn bound(text: &str) -> Listener {
        let spec = parse_listener(text, 0).unwrap();
        bind_all(&[spec], 16)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .pop()
            .unwrap()
    }

    fn int_opt(l: &Listener, level: i32, name: i32) -> i32 {
        crate::sys::getsockopt_int(l.fd.as_fd(), level, name).unwrap()
    }

    fn ipv6_here() -> bool {
        std::net::TcpListener::bind("[::1]:0").is_ok()
    }

    /// The eighth attacker's review of issue 18: between the bind and `chown(path)` the name
    /// could become a symlink to a file of root's, which the chown followed. A name that is
    /// not a socket is refused, and what it points to is left alone; a socket gets its mode.
    #[test]
    fn owner_and_mode_go_to_the_bound_socket_never_through_a_symlink() {
        use std::os::unix::fs::MetadataExt;
        let dir = std::env::temp_dir().join(format!("rs-sockmode-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("target");
        std::fs::write(&target, "root's").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.join("app.sock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        let e = set_owner_and_mode(&link, Some(uid), None, Some(0o666)).unwrap_err();
        assert!(
            e.to_string().contains("no longer the socket") || e.raw_os_error() == Some(libc::ELOOP),
            "{e}"
        );
        assert_eq!(
            std::fs::metadata(&target).unwrap().mode() & 0o777,
            0o600,
            "followed"
        );
        // Another socket hard-linked in its place (a second name): refused too.
        let other = dir.join("other.sock");
        let _o = std::os::unix::net::UnixListener::bind(&other).unwrap();
        let linked = dir.join("linked.sock");
        std::fs::hard_link(&other, &linked).unwrap();
        assert!(set_owner_and_mode(&linked, Some(uid), None, Some(0o666)).is_err());
        let sock = dir.join("real.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        set_owner_and_mode(&sock, Some(uid), None, Some(0o640)).unwrap();
        let meta = std::fs::symlink_metadata(&sock).unwrap();
        assert_eq!((meta.mode() & 0o777, meta.uid()), (0o640, uid));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn each_form_binds_what_it_says() {
        let l = bound("tcp://127.0.0.1:0?backlog=3&reuseport&defer-accept=2s&fastopen=8");
        assert!(l.bound.starts_with("tcp://127.0.0.1:"), "{}", l.bound);
        assert!(socket::getsockopt(&l.fd, sockopt::AcceptConn).unwrap());
        assert!(socket::getsockopt(&l.fd, sockopt::ReusePort).unwrap());
        // The kernel rounds TCP_DEFER_ACCEPT to whole retransmission steps, at least what was asked.
        assert!(int_opt(&l, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT) >= 2);
        assert_eq!(int_opt(&l, libc::IPPROTO_TCP, libc::TCP_FASTOPEN), 8);

        let l = bound("127.0.0.1:0?freebind");
        assert!(socket::getsockopt(&l.fd, sockopt::IpFreebind).unwrap());
        assert!(!socket::getsockopt(&l.fd, sockopt::ReusePort).unwrap());

        // Every interface: IPv6 dual-stack where the host has IPv6, else 0.0.0.0.
        let l = bound("0");
        if ipv6_here() {
            assert!(l.bound.starts_with("tcp://[::]:"), "{}", l.bound);
            assert!(!socket::getsockopt(&l.fd, sockopt::Ipv6V6Only).unwrap());
            let port = l.bound.rsplit(':').next().unwrap();
            // An IPv4 client reaches the dual-stack socket.
            std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
            let l = bound("tcp://[::]:0");
            assert!(socket::getsockopt(&l.fd, sockopt::Ipv6V6Only).unwrap());
            let l = bound("tcp://[::]:0?v6only=false");
            assert!(!socket::getsockopt(&l.fd, sockopt::Ipv6V6Only).unwrap());
        } else {
            assert!(l.bound.starts_with("tcp://0.0.0.0:"), "{}", l.bound);
        }
        let l = bound(":0");
        assert!(l.bound.starts_with("tcp://[::]:") || l.bound.starts_with("tcp://0.0.0.0:"));

        let l = bound("localhost:0");
        assert!(
            l.bound.starts_with("tcp://127.0.0.1:") || l.bound.starts_with("tcp://[::1]:"),
            "{}",
            l.bound
        );

        let l = bound("udp://127.0.0.1:0?reuseport");
        assert!(l.bound.starts_with("udp://127.0.0.1:"), "{}", l.bound);
        assert_eq!(
            socket::getsockopt(&l.fd, sockopt::SockType).unwrap(),
            SockType::Datagram
        );
        assert!(socket::getsockopt(&l.fd, sockopt::ReusePort).unwrap());

        let name = format!("reloadsup-test-{}", std::process::id());
        let l = bound(&format!("unix:@{name}"));
        assert_eq!(l.bound, format!("unix:@{name}"));
        assert!(l.own_path().is_none());
        assert!(socket::getsockopt(&l.fd, sockopt::AcceptConn).unwrap());
        // The same abstract name again is in use.
        let spec = parse_listener(&format!("unix:@{name}"), 0).unwrap();
        let err = bind_all(&[spec], 16).unwrap_err().to_string();
        assert!(err.contains("in use"), "{err}");
    }

    #[test]
    fn a_unix_path_gets_its_mode_and_a_live_one_is_in_use() {
        let dir = std::env::temp_dir().join(format!("reloadsup-listen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("web.sock");
        let _ = std::fs::remove_file(&path);
        let uid = nix::unistd::getuid().as_raw();
        let l = bound(&format!("unix:{}?mode=640&owner={uid}", path.display()));
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
        let spec = parse_listener(&format!("unix:{}", path.display()), 0).unwrap();
        let err = bind_all(std::slice::from_ref(&spec), 16)
            .unwrap_err()
            .to_string();
        assert!(err.contains("in use"), "{err}");
        // Once nothing listens, the stale file is removed and bound again.
        drop(l);
        let l = bind_all(&[spec], 16).unwrap();
        assert_eq!(l[0].bound, format!("unix:{}", path.display()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_name_with_several_addresses_must_be_named_once_per_address() {
        let one = |text: &str, i| parse_listener(text, i).unwrap();
        // `localhost` resolves to 127.0.0.1, and to ::1 where /etc/hosts says so.
        let n = ("localhost", 0)
            .to_socket_addrs()
            .unwrap()
            .map(|a| a.ip())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        let specs = vec![one("a=localhost:0", 0), one("b=localhost:0", 1)];
        let got = bind_all(&specs, 16);
        if n == 2 {
            let got = got.unwrap();
            assert_ne!(got[0].bound, got[1].bound);
        } else {
            let err = got.unwrap_err().to_string();
            assert!(
                err.contains("--listen a") && err.contains("given 2 times"),
                "{err}"
            );
        }
        let err = bind_all(&[one("nosuchhost.invalid:80", 0)], 16)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unable to resolve nosuchhost.invalid"),
            "{err}"
        );
    }
}
