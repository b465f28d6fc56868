//! Listen addresses as operators write them: `tcp://HOST:PORT`, `HOST:PORT`, `:PORT`, `PORT`,
//! `udp://HOST:PORT`, `unix:PATH`, `unix:@NAME`, each with options after `?`.
//!
//! Parsing is pure: a host name stays a name here and is resolved once, when the listener is
//! first bound (`primary::listeners`), never again at a reload or an upgrade, where the
//! listener keeps its socket.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::error::ValueError;

/// The transport of an internet listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// A stream socket that listens: the workers accept on it.
    Tcp,
    /// A datagram socket, bound but not listening: the workers receive on it.
    Udp,
}

impl Transport {
    fn scheme(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

/// The host part of an internet listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Host {
    Ip(IpAddr),
    /// Every interface (`PORT`, `:PORT`, `tcp://*:PORT`): IPv6 `[::]` dual-stack where the host
    /// has IPv6, else `0.0.0.0`, as systemd's `ListenStream=PORT`.
    All,
    /// A name, resolved when bound.
    Name(String),
}

/// Where a listener binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Address {
    Inet {
        transport: Transport,
        host: Host,
        port: u16,
    },
    Unix(PathBuf),
    /// A Linux abstract unix socket (`unix:@NAME`): no file, gone with its last fd.
    Abstract(String),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Inet {
                transport,
                host,
                port,
            } => {
                let scheme = transport.scheme();
                match host {
                    Host::Ip(IpAddr::V4(ip)) => write!(f, "{scheme}://{ip}:{port}"),
                    Host::Ip(IpAddr::V6(ip)) => write!(f, "{scheme}://[{ip}]:{port}"),
                    Host::All => write!(f, "{scheme}://*:{port}"),
                    Host::Name(name) => write!(f, "{scheme}://{name}:{port}"),
                }
            }
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
            Address::Abstract(name) => write!(f, "unix:@{name}"),
        }
    }
}

impl Address {
    /// A TCP listener on one socket address.
    pub(crate) fn tcp(addr: SocketAddr) -> Address {
        Address::inet(Transport::Tcp, addr)
    }

    pub(crate) fn inet(transport: Transport, addr: SocketAddr) -> Address {
        Address::Inet {
            transport,
            host: Host::Ip(addr.ip()),
            port: addr.port(),
        }
    }

    /// Port 0: any free port, so no address of its own until bound.
    pub(crate) fn any_port(&self) -> bool {
        matches!(self, Address::Inet { port: 0, .. })
    }

    /// The kind of socket, for messages and to match an inherited socket by name.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Address::Inet { transport, .. } => transport.scheme(),
            Address::Unix(_) | Address::Abstract(_) => "unix",
        }
    }

    /// A stream socket, which listens (every kind but UDP).
    pub(crate) fn is_stream(&self) -> bool {
        !matches!(
            self,
            Address::Inet {
                transport: Transport::Udp,
                ..
            }
        )
    }

    /// The address without options, in any form `--listen` takes.
    pub(crate) fn parse(s: &str) -> Result<Address, ValueError> {
        if let Some(rest) = s.strip_prefix("tcp://") {
            return inet(Transport::Tcp, rest.trim_end_matches('/'), s);
        }
        if let Some(rest) = s.strip_prefix("udp://") {
            return inet(Transport::Udp, rest.trim_end_matches('/'), s);
        }
        if let Some(path) = s.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if let Some(name) = path.strip_prefix('@') {
                if name.is_empty() {
                    return Err(ValueError::EmptyUnixPath(s.to_string()));
                }
                // sun_path holds 108 bytes; an abstract name takes all but the leading NUL.
                if name.len() > 107 {
                    return Err(ValueError::UnixPathTooLong {
                        path: path.to_string(),
                        len: name.len(),
                    });
                }
                return Ok(Address::Abstract(name.to_string()));
            }
            if path.is_empty() {
                return Err(ValueError::EmptyUnixPath(s.to_string()));
            }
            // sun_path holds 108 bytes including the terminating NUL.
            if path.len() > 107 {
                return Err(ValueError::UnixPathTooLong {
                    path: path.to_string(),
                    len: path.len(),
                });
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        if s.contains("://") {
            return Err(ValueError::NotAddress(s.to_string()));
        }
        // `PORT`, `:PORT`, `HOST:PORT`, `[V6]:PORT`: TCP.
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return inet(Transport::Tcp, &format!(":{s}"), s);
        }
        if s.contains(':') {
            return inet(Transport::Tcp, s, s);
        }
        Err(ValueError::NotAddress(s.to_string()))
    }
}

/// `HOST:PORT` after the scheme: an IP, `[V6]`, `*`, nothing (every interface) or a name.
fn inet(transport: Transport, rest: &str, whole: &str) -> Result<Address, ValueError> {
    let bad = || ValueError::NotInetAddress(whole.to_string());
    if let Ok(addr) = rest.parse::<SocketAddr>() {
        return Ok(Address::inet(transport, addr));
    }
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = match host {
        "" | "*" => Host::All,
        h if h.starts_with('[') => return Err(bad()),
        h if is_host_name(h) => Host::Name(h.to_ascii_lowercase()),
        _ => return Err(bad()),
    };
    Ok(Address::Inet {
        transport,
        host,
        port,
    })
}

/// RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens; not all
/// digits and dots (that would be a malformed IPv4 address).
fn is_host_name(h: &str) -> bool {
    let h = h.strip_suffix('.').unwrap_or(h);
    !h.is_empty()
        && h.len() <= 253
        && !h.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The options after `?`, `&` or `,` between them. `None` / `false`: the kernel's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ListenOptions {
    /// This listener's accept queue, instead of `--backlog`.
    pub backlog: Option<i32>,
    pub reuseport: bool,
    /// `IPV6_V6ONLY`; by default on for `[::]`, off for every interface (dual-stack).
    pub v6only: Option<bool>,
    /// `TCP_DEFER_ACCEPT`, in seconds.
    pub defer_accept: Option<u32>,
    /// `TCP_FASTOPEN`: the queue of pending fast-open connections.
    pub fastopen: Option<u32>,
    /// `IP_FREEBIND`: bind an address this host does not have (yet).
    pub freebind: bool,
    /// The unix socket file's permission bits.
    pub mode: Option<u32>,
    pub owner: Option<u32>,
    pub group: Option<u32>,
}

impl fmt::Display for ListenOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(b) = self.backlog {
            parts.push(format!("backlog={b}"));
        }
        if self.reuseport {
            parts.push("reuseport".into());
        }
        if let Some(v) = self.v6only {
            parts.push(format!("v6only={v}"));
        }
        if let Some(s) = self.defer_accept {
            parts.push(format!("defer-accept={s}s"));
        }
        if let Some(q) = self.fastopen {
            parts.push(format!("fastopen={q}"));
        }
        if self.freebind {
            parts.push("freebind".into());
        }
        if let Some(m) = self.mode {
            parts.push(format!("mode={m:o}"));
        }
        if let Some(u) = self.owner {
            parts.push(format!("owner={u}"));
        }
        if let Some(g) = self.group {
            parts.push(format!("group={g}"));
        }
        if !parts.is_empty() {
            write!(f, "?{}", parts.join("&"))?;
        }
        Ok(())
    }
}

/// Splits `ADDRESS?OPTIONS` and parses both; every option is checked against the kind of
/// address it is for. `user` and `group` resolve `owner=` and `group=` names.
pub(crate) fn parse_with_options(
    s: &str,
    user: impl Fn(&str) -> Result<u32, ValueError>,
    group: impl Fn(&str) -> Result<u32, ValueError>,
) -> Result<(Address, ListenOptions), ValueError> {
    let (addr, opts) = match s.split_once('?') {
        Some((a, o)) => (a, Some(o)),
        None => (s, None),
    };
    let address = Address::parse(addr)?;
    let mut options = ListenOptions::default();
    let Some(opts) = opts else {
        return Ok((address, options));
    };
    for item in opts.split(['&', ',']).filter(|i| !i.is_empty()) {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        };
        let bad = |problem: &str| ValueError::ListenOption {
            option: item.to_string(),
            problem: problem.to_string(),
        };
        let need = || value.ok_or_else(|| bad("needs a value"));
        let fits = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(bad(&format!("is for {what} only, not {address}")))
            }
        };
        let tcp = matches!(
            address,
            Address::Inet {
                transport: Transport::Tcp,
                ..
            }
        );
        let inet = matches!(address, Address::Inet { .. });
        match key {
            "backlog" => {
                fits(address.is_stream(), "stream sockets (tcp and unix)")?;
                let n: i32 = need()?
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| bad("expects a number of connections, at least 1"))?;
                options.backlog = Some(n);
            }
            "reuseport" => {
                fits(inet, "tcp and udp")?;
                options.reuseport = flag(value).ok_or_else(|| bad("expects true or false"))?;
            }
            "v6only" => {
                let v6 = matches!(
                    address,
                    Address::Inet {
                        host: Host::Ip(IpAddr::V6(_)) | Host::All | Host::Name(_),
                        ..
                    }
                );
                fits(v6, "IPv6 addresses")?;
                options.v6only = Some(flag(value).ok_or_else(|| bad("expects true or false"))?);
            }
            "defer-accept" => {
                fits(tcp, "tcp")?;
                let d = crate::config::parse_duration(need()?)
                    .map_err(|_| bad("expects a duration, like 5s"))?;
                options.defer_accept = Some(secs_up(d));
            }
            "fastopen" => {
                fits(tcp, "tcp")?;
                let n: u32 = need()?
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| bad("expects a queue length, at least 1"))?;
                options.fastopen = Some(n);
            }
            "freebind" => {
                fits(inet, "tcp and udp")?;
                options.freebind = flag(value).ok_or_else(|| bad("expects true or false"))?;
            }
            "mode" => {
                fits(matches!(address, Address::Unix(_)), "unix socket paths")?;
                let m = u32::from_str_radix(need()?, 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| bad("expects octal permission bits, like 660"))?;
                options.mode = Some(m);
            }
            "owner" => {
                fits(matches!(address, Address::Unix(_)), "unix socket paths")?;
                options.owner = Some(user(need()?)?);
            }
            "group" => {
                fits(matches!(address, Address::Unix(_)), "unix socket paths")?;
                options.group = Some(group(need()?)?);
            }
            _ => return Err(bad("is unknown: use backlog=, reuseport, v6only=, defer-accept=, fastopen=, freebind, mode=, owner= or group=")),
        }
    }
    Ok((address, options))
}

/// `reuseport`, `reuseport=true`: on; `=false`: off.
fn flag(value: Option<&str>) -> Option<bool> {
    match value {
        None | Some("true" | "yes" | "on" | "1") => Some(true),
        Some("false" | "no" | "off" | "0") => Some(false),
        _ => None,
    }
}

fn secs_up(d: Duration) -> u32 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    u32::try_from(s).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> Result<u32, ValueError> {
        match s {
            "www" => Ok(33),
            n => n.parse().map_err(|_| ValueError::NoUser(n.into())),
        }
    }

    fn group(s: &str) -> Result<u32, ValueError> {
        match s {
            "www" => Ok(34),
            n => n.parse().map_err(|_| ValueError::NoGroup(n.into())),
        }
    }

    fn parse(s: &str) -> Result<(Address, ListenOptions), String> {
        parse_with_options(s, user, group).map_err(|e| e.to_string())
    }

    fn ip(s: &str) -> Host {
        Host::Ip(s.parse().unwrap())
    }

    fn tcp(host: Host, port: u16) -> Address {
        Address::Inet {
            transport: Transport::Tcp,
            host,
            port,
        }
    }

    #[test]
    fn every_form_parses_to_what_it_says() {
        let udp = |host, port| Address::Inet {
            transport: Transport::Udp,
            host,
            port,
        };
        let table: &[(&str, Address, &str)] = &[
            (
                "tcp://127.0.0.1:8080",
                tcp(ip("127.0.0.1"), 8080),
                "tcp://127.0.0.1:8080",
            ),
            (
                "tcp://127.0.0.1:8080/",
                tcp(ip("127.0.0.1"), 8080),
                "tcp://127.0.0.1:8080",
            ),
            ("tcp://[::1]:8080", tcp(ip("::1"), 8080), "tcp://[::1]:8080"),
            (
                "127.0.0.1:8080",
                tcp(ip("127.0.0.1"), 8080),
                "tcp://127.0.0.1:8080",
            ),
            ("[::1]:80", tcp(ip("::1"), 80), "tcp://[::1]:80"),
            (":8080", tcp(Host::All, 8080), "tcp://*:8080"),
            ("8080", tcp(Host::All, 8080), "tcp://*:8080"),
            ("0", tcp(Host::All, 0), "tcp://*:0"),
            ("tcp://*:8080", tcp(Host::All, 8080), "tcp://*:8080"),
            ("tcp://:8080", tcp(Host::All, 8080), "tcp://*:8080"),
            (
                "localhost:8080",
                tcp(Host::Name("localhost".into()), 8080),
                "tcp://localhost:8080",
            ),
            (
                "tcp://Web-1.Example.com:80",
                tcp(Host::Name("web-1.example.com".into()), 80),
                "tcp://web-1.example.com:80",
            ),
            (
                "udp://127.0.0.1:53",
                udp(ip("127.0.0.1"), 53),
                "udp://127.0.0.1:53",
            ),
            ("udp://[::]:443", udp(ip("::"), 443), "udp://[::]:443"),
            ("udp://:514", udp(Host::All, 514), "udp://*:514"),
            (
                "udp://localhost:514",
                udp(Host::Name("localhost".into()), 514),
                "udp://localhost:514",
            ),
            (
                "unix:/run/web.sock",
                Address::Unix("/run/web.sock".into()),
                "unix:/run/web.sock",
            ),
            (
                "unix:///run/web.sock",
                Address::Unix("/run/web.sock".into()),
                "unix:/run/web.sock",
            ),
            (
                "unix:rel.sock",
                Address::Unix("rel.sock".into()),
                "unix:rel.sock",
            ),
            ("unix:@web", Address::Abstract("web".into()), "unix:@web"),
        ];
        for (text, want, shown) in table {
            let (got, options) = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(&got, want, "{text}");
            assert_eq!(got.to_string(), *shown, "{text}");
            assert_eq!(options, ListenOptions::default(), "{text}");
            // What is shown parses back to the same address.
            assert_eq!(&Address::parse(shown).unwrap(), want, "{shown}");
        }
    }

    #[test]
    fn bad_forms_say_what_is_expected() {
        let table: &[(&str, &str)] = &[
            ("", "is not an address"),
            ("web", "is not an address"),
            ("http://127.0.0.1:80", "is not an address"),
            ("tcp://127.0.0.1", "is not an internet address"),
            ("tcp://127.0.0.1:99999", "is not an internet address"),
            ("127.0.0.1:", "is not an internet address"),
            ("tcp://[::1:80", "is not an internet address"),
            ("tcp://300.1.2.3:80", "is not an internet address"),
            ("tcp://bad_name:80", "is not an internet address"),
            ("tcp://-x:80", "is not an internet address"),
            ("65536", "is not an internet address"),
            ("unix:", "empty unix socket path"),
            ("unix:@", "empty unix socket path"),
            (
                "udp://127.0.0.1:53?backlog=5",
                "'backlog=5' is for stream sockets",
            ),
            ("tcp://127.0.0.1:80?backlog=0", "at least 1"),
            ("tcp://127.0.0.1:80?backlog", "needs a value"),
            (
                "tcp://127.0.0.1:80?mode=660",
                "is for unix socket paths only",
            ),
            ("unix:@web?mode=660", "is for unix socket paths only"),
            ("unix:/a.sock?mode=999", "octal"),
            ("unix:/a.sock?reuseport", "is for tcp and udp only"),
            ("tcp://127.0.0.1:80?v6only", "is for IPv6 addresses only"),
            ("tcp://[::]:80?v6only=maybe", "true or false"),
            ("udp://127.0.0.1:53?defer-accept=5s", "is for tcp only"),
            ("tcp://127.0.0.1:80?defer-accept=soon", "a duration"),
            ("tcp://127.0.0.1:80?fastopen=-1", "a queue length"),
            ("tcp://127.0.0.1:80?nodelay", "is unknown"),
            ("unix:/a.sock?owner=nobody-such", "no such user"),
            ("unix:/a.sock?group=nobody-such", "no such group"),
        ];
        for (text, want) in table {
            let err = parse(text).expect_err(text);
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn options_parse_and_show() {
        let (a, o) = parse(
            "8080?backlog=64&reuseport&v6only=false&defer-accept=1500ms,fastopen=16&freebind",
        )
        .unwrap();
        assert_eq!(a, tcp(Host::All, 8080));
        assert_eq!(
            o,
            ListenOptions {
                backlog: Some(64),
                reuseport: true,
                v6only: Some(false),
                defer_accept: Some(2),
                fastopen: Some(16),
                freebind: true,
                ..ListenOptions::default()
            }
        );
        assert_eq!(
            o.to_string(),
            "?backlog=64&reuseport&v6only=false&defer-accept=2s&fastopen=16&freebind"
        );
        let (a, o) = parse("unix:/run/web.sock?mode=0660&owner=www&group=www").unwrap();
        assert_eq!(a, Address::Unix("/run/web.sock".into()));
        assert_eq!(
            (o.mode, o.owner, o.group),
            (Some(0o660), Some(33), Some(34))
        );
        assert_eq!(o.to_string(), "?mode=660&owner=33&group=34");
        let (_, o) = parse("udp://:53?reuseport=false&").unwrap();
        assert_eq!(o, ListenOptions::default());
    }
}
