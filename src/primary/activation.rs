//! Socket activation of reloadsup itself: the sockets a service manager (a systemd `.socket`
//! unit, `systemd-socket-activate`, any activator speaking the protocol) bound and passed at
//! fd 3.. with `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES`.
//!
//! [`take`] runs first thing in the run mode, before the config is parsed and before any fd is
//! opened or process started: it makes every inherited fd close-on-exec at once, then
//! validates each one (a socket, of a family and type reloadsup serves, a stream one
//! listening), and removes the `LISTEN_*` variables from the primary's environment, so that
//! nothing it starts (a worker role, the shell, the keeper, the next image of an upgrade)
//! ever sees them. [`adopt`] then gives each configured listener its inherited socket (by
//! address, else by name) or binds it. An adopted socket is a [`Listener`] like a bound one:
//! held for the primary's life and carried across an upgrade in place.
//!
//! This module never binds, never closes an adopted socket it gave out, and touches no state
//! of the running primary.

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use nix::sys::socket::{self, sockopt, SockType, SockaddrLike, SockaddrStorage};

use crate::config::{Address, ListenerSpec};
use crate::sys;

use super::listeners::{self, Listener};
pub(crate) use crate::error::ActivationError;

/// The first fd of the socket-activation protocol.
const FIRST_FD: RawFd = 3;

/// The most fds an activator may pass: far above any real unit, low enough that a corrupt
/// `LISTEN_FDS` cannot make reloadsup walk the fd table for long.
const MAX_FDS: usize = 4096;

/// An inherited socket, validated.
#[derive(Debug)]
pub(crate) struct Inherited {
    /// Its `LISTEN_FDNAMES` entry, or `listen{i}` when the activator named none.
    pub name: String,
    /// What it is bound to, from `getsockname`.
    pub address: Address,
    /// The fd number it arrived at, for messages.
    pub number: RawFd,
    pub fd: OwnedFd,
}

/// What the environment says, before any fd is looked at.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Announced {
    pub count: usize,
    /// One name per fd: the activator's, else `listen{i}`.
    pub names: Vec<String>,
}

/// Reads the protocol's variables (pure: the values are passed in). `Ok(None)`: nothing is
/// meant for process `pid` (no `LISTEN_PID`, or another process's).
pub(crate) fn announced(
    pid: u32,
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    listen_fdnames: Option<&str>,
) -> Result<Option<Announced>, ActivationError> {
    let Some(listen_pid) = listen_pid else {
        return Ok(None);
    };
    if listen_pid.trim().parse::<u32>().ok() != Some(pid) {
        return Ok(None);
    }
    let count = match listen_fds {
        None => return Err(ActivationError::NoCount),
        Some(s) => match s.trim().parse::<usize>() {
            Ok(n) if n <= MAX_FDS => n,
            _ => return Err(ActivationError::BadCount(s.to_string())),
        },
    };
    let names: Vec<String> = match listen_fdnames {
        // systemd gives every fd a name; an activator that gives none leaves it unset (or
        // empty for zero fds).
        None => (0..count).map(|i| format!("listen{i}")).collect(),
        Some("") if count == 0 => Vec::new(),
        Some(s) => {
            let names: Vec<&str> = s.split(':').collect();
            if names.len() != count {
                return Err(ActivationError::NameCount {
                    names: s.to_string(),
                    count,
                });
            }
            unique_names(&names)
        }
    };
    Ok(Some(Announced { count, names }))
}

/// systemd names every fd of one `.socket` unit after the unit unless told otherwise, so
/// names repeat; a listener name must be unique (`{fd:NAME}`, `LISTEN_FDNAMES` of the
/// workers), so a repeated one gets `-2`, `-3`... in order. A name a listener cannot have
/// (empty, not printable ASCII, `=`) becomes `listen{i}`.
fn unique_names(names: &[&str]) -> Vec<String> {
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_graphic())
            && !name.contains('=')
            && !name.contains('/');
        let base = if valid {
            (*name).to_string()
        } else {
            format!("listen{i}")
        };
        let mut candidate = base.clone();
        let mut n = 2;
        while seen.contains(&candidate) {
            candidate = format!("{base}-{n}");
            n += 1;
        }
        seen.insert(candidate.clone());
        out.push(candidate);
    }
    out
}

/// Takes the sockets the environment announces for this process: each fd made close-on-exec
/// before anything else, then validated. The `LISTEN_*` variables are removed from the
/// environment whatever they said (they are for this process alone, never for what it runs).
pub(crate) fn take() -> Result<Vec<Inherited>, ActivationError> {
    let var = |k: &str| std::env::var(k).ok();
    let said = announced(
        std::process::id(),
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
    );
    // Single-threaded here: the run mode has started no thread yet. LISTEN_PIDFDID (systemd
    // 258+) names this process's pidfd: in a worker, sd_listen_fds() would compare it with its
    // own and find no sockets.
    for k in [
        "LISTEN_PID",
        "LISTEN_FDS",
        "LISTEN_FDNAMES",
        "LISTEN_PIDFDID",
    ] {
        std::env::remove_var(k);
    }
    let Some(said) = said? else {
        return Ok(Vec::new());
    };
    // Every number first, so none leaks into a child even if a later one is bad.
    let mut fds = Vec::with_capacity(said.count);
    for i in 0..said.count {
        let number = FIRST_FD + i as RawFd;
        let fd = sys::take_inherited_fd(number).map_err(|e| ActivationError::Fd {
            fd: number,
            name: said.names[i].clone(),
            problem: crate::error::lower(&e),
        })?;
        fds.push((number, fd));
    }
    fds.into_iter()
        .zip(said.names)
        .map(|((number, fd), name)| {
            let address = inspect(&fd).map_err(|problem| ActivationError::Fd {
                fd: number,
                name: name.clone(),
                problem,
            })?;
            Ok(Inherited {
                name,
                address,
                number,
                fd,
            })
        })
        .collect()
}

/// What an inherited fd is bound to, if reloadsup can serve it.
fn inspect(fd: &OwnedFd) -> Result<Address, String> {
    let stat = nix::sys::stat::fstat(fd).map_err(|e| format!("fstat: {}", lower_errno(e)))?;
    let kind =
        nix::sys::stat::SFlag::from_bits_truncate(stat.st_mode) & nix::sys::stat::SFlag::S_IFMT;
    if kind != nix::sys::stat::SFlag::S_IFSOCK {
        return Err(format!("not a socket but {}", file_kind(kind)));
    }
    let ty = socket::getsockopt(fd, sockopt::SockType)
        .map_err(|e| format!("SO_TYPE: {}", lower_errno(e)))?;
    let addr = socket::getsockname::<SockaddrStorage>(fd.as_fd().as_raw_fd())
        .map_err(|e| format!("getsockname: {}", lower_errno(e)))?;
    let address = listeners::address_of(&addr, ty).ok_or_else(|| {
        format!(
            "a {} socket of family {}, which reloadsup does not serve (tcp, udp and unix stream sockets only)",
            type_name(ty),
            addr.family().map_or_else(|| "unknown".into(), |f| format!("{f:?}"))
        )
    })?;
    if ty == SockType::Stream {
        let listening = socket::getsockopt(fd, sockopt::AcceptConn)
            .map_err(|e| format!("SO_ACCEPTCONN: {}", lower_errno(e)))?;
        if !listening {
            return Err(format!(
                "a {address} stream socket that is not listening (an activator with Accept=yes passes connections, not listeners)"
            ));
        }
    }
    Ok(address)
}

fn lower_errno(e: nix::Error) -> String {
    crate::error::lower(&io::Error::from_raw_os_error(e as i32))
}

fn type_name(ty: SockType) -> &'static str {
    match ty {
        SockType::Stream => "stream",
        SockType::Datagram => "datagram",
        SockType::SeqPacket => "seqpacket",
        SockType::Raw => "raw",
        _ => "other",
    }
}

fn file_kind(kind: nix::sys::stat::SFlag) -> &'static str {
    use nix::sys::stat::SFlag;
    match kind {
        SFlag::S_IFREG => "a regular file",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        SFlag::S_IFIFO => "a pipe",
        SFlag::S_IFLNK => "a symbolic link",
        _ => "another kind of file",
    }
}

/// Which inherited socket each spec takes: the one bound to the spec's address, else the one
/// of the spec's name. Pure; `Err` when a name matches a socket of another kind.
pub(crate) fn assign(
    specs: &[ListenerSpec],
    inherited: &[(String, Address)],
) -> Result<Vec<Option<usize>>, ActivationError> {
    let mut taken = vec![false; inherited.len()];
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let by_address = inherited
            .iter()
            .enumerate()
            .position(|(i, (_, a))| !taken[i] && *a == spec.address && !spec.address.any_port());
        let found = match by_address {
            Some(i) => Some(i),
            None => match inherited
                .iter()
                .enumerate()
                .position(|(i, (n, _))| !taken[i] && *n == spec.name)
            {
                Some(i) if inherited[i].1.kind() != spec.address.kind() => {
                    return Err(ActivationError::Kind {
                        name: spec.name.clone(),
                        wanted: spec.address.to_string(),
                        inherited: inherited[i].1.to_string(),
                    })
                }
                other => other,
            },
        };
        if let Some(i) = found {
            taken[i] = true;
        }
        out.push(found);
    }
    Ok(out)
}

/// The listeners of `specs`, in order: an inherited socket where one matches (see [`assign`]),
/// else bound now. Inherited sockets that no spec takes are closed, with a warning.
pub(crate) fn adopt(
    specs: &[ListenerSpec],
    inherited: Vec<Inherited>,
    backlog: i32,
) -> Result<Vec<Listener>, crate::error::Fatal> {
    let keys: Vec<(String, Address)> = inherited
        .iter()
        .map(|s| (s.name.clone(), s.address.clone()))
        .collect();
    let plan = assign(specs, &keys).map_err(crate::error::Fatal::Activation)?;
    let mut pool: Vec<Option<Inherited>> = inherited.into_iter().map(Some).collect();
    let mut out = Vec::with_capacity(specs.len());
    for (spec, found) in specs.iter().zip(plan) {
        match found.and_then(|i| pool[i].take()) {
            Some(s) => {
                let bound = listeners::bound_address(&s.fd, &s.address);
                if s.address != spec.address && !spec.address.any_port() {
                    log::warn!(
                        "listener {} takes the inherited socket {} ({}), not {}",
                        spec.name,
                        s.name,
                        bound,
                        spec.address
                    );
                }
                log::info!(
                    "listener {} adopted: fd {} ({}) from the socket activator",
                    spec.name,
                    s.number,
                    s.name
                );
                out.push(Listener {
                    name: spec.name.clone(),
                    address: spec.address.clone(),
                    bound,
                    fd: s.fd,
                    adopted: true,
                });
            }
            None => {
                let mut l = listeners::bind_all(std::slice::from_ref(spec), backlog)
                    .map_err(crate::error::Fatal::Bind)?;
                out.append(&mut l);
            }
        }
    }
    for s in pool.into_iter().flatten() {
        log::warn!(
            "inherited socket {} (fd {}, {}) matches no --listen: closed",
            s.name,
            s.number,
            s.address
        );
    }
    Ok(out)
}

impl fmt::Display for Inherited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_for_another_pid_or_without_listen_pid() {
        assert_eq!(announced(7, None, Some("2"), None).unwrap(), None);
        assert_eq!(announced(7, Some("8"), Some("2"), None).unwrap(), None);
        assert_eq!(announced(7, Some("x"), Some("2"), None).unwrap(), None);
    }

    #[test]
    fn names_default_and_are_made_unique() {
        let a = announced(7, Some("7"), Some("2"), None).unwrap().unwrap();
        assert_eq!(a.names, ["listen0", "listen1"]);
        let a = announced(7, Some("7"), Some("4"), Some("web.socket:web.socket:api:"))
            .unwrap()
            .unwrap();
        assert_eq!(a.names, ["web.socket", "web.socket-2", "api", "listen3"]);
        let a = announced(7, Some("7"), Some("0"), Some(""))
            .unwrap()
            .unwrap();
        assert_eq!(
            a,
            Announced {
                count: 0,
                names: vec![]
            }
        );
    }

    #[test]
    fn bad_counts_are_errors() {
        assert!(matches!(
            announced(7, Some("7"), None, None),
            Err(ActivationError::NoCount)
        ));
        assert!(matches!(
            announced(7, Some("7"), Some("-1"), None),
            Err(ActivationError::BadCount(_))
        ));
        assert!(matches!(
            announced(7, Some("7"), Some("99999"), None),
            Err(ActivationError::BadCount(_))
        ));
        assert!(matches!(
            announced(7, Some("7"), Some("2"), Some("a")),
            Err(ActivationError::NameCount { count: 2, .. })
        ));
    }

    fn spec(s: &str, i: usize) -> ListenerSpec {
        crate::config::parse_listener(s, i).unwrap()
    }

    fn key(name: &str, addr: &str) -> (String, Address) {
        (name.to_string(), Address::parse(addr).unwrap())
    }

    #[test]
    fn specs_take_by_address_then_by_name() {
        let inherited = [
            key("web", "tcp://127.0.0.1:8080"),
            key("api", "tcp://127.0.0.1:9090"),
            key("sock", "unix:/run/x.sock"),
        ];
        let specs = [
            spec("tcp://127.0.0.1:9090", 0),
            spec("web=tcp://0.0.0.0:0", 1),
            spec("other=tcp://127.0.0.1:7070", 2),
        ];
        assert_eq!(
            assign(&specs, &inherited).unwrap(),
            [Some(1), Some(0), None]
        );
        // A port-0 address never matches by address, only by name.
        let specs = [spec("x=tcp://127.0.0.1:0", 0)];
        assert_eq!(assign(&specs, &inherited).unwrap(), [None]);
        // A socket is taken once.
        let specs = [
            spec("a=tcp://127.0.0.1:8080", 0),
            spec("web=tcp://127.0.0.1:1", 1),
        ];
        assert_eq!(assign(&specs, &inherited).unwrap(), [Some(0), None]);
    }

    #[test]
    fn a_name_of_another_kind_is_an_error() {
        let inherited = [key("sock", "unix:/run/x.sock")];
        let specs = [spec("sock=tcp://127.0.0.1:80", 0)];
        assert!(matches!(
            assign(&specs, &inherited),
            Err(ActivationError::Kind { .. })
        ));
    }
}
