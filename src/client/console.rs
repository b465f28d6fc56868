//! `reloadsup console`: the TLS admin console client.
//!
//! It speaks the plain line protocol of DESIGN.md section 7: the server's output is printed as
//! it comes, and a partial line is a prompt — `> ` (a command finished, the next one may go),
//! `Password: `, or a command's own question (recognised when the server then falls quiet).
//! An output line starting with `error:` marks a failed command: with `-c` (or commands on
//! standard input) the client stops there and exits 1.
//!
//! Trust: `--ca` (a CA or the server's own certificate, checked as usual), `--fingerprint`
//! (SHA-256 of the server's certificate, as the primary logs it at start), or trust on first
//! use, remembered in a known-hosts file; a changed certificate is refused loudly.
//!
//! When the connection drops after a command (`restart` replaces the console), the client
//! reconnects for up to [`RECONNECT_FOR`] and logs in again.

use std::collections::VecDeque;
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::error::lower;
use crate::text::{ACCESS_DENIED, PASSWORD_PROMPT, PROMPT};
use crate::tls::{fingerprint, normalize_fingerprint};

/// How long to keep trying after the connection was lost.
pub(crate) const RECONNECT_FOR: Duration = Duration::from_secs(10);
/// A partial line followed by this much silence is a prompt.
const QUIET: Duration = Duration::from_millis(200);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Parser)]
#[command(
    name = "reloadsup console",
    about = "Open the TLS admin console of a running reloadsup",
    after_help = "The password comes from RELOADSUP_PASSWORD, else the terminal (without echo), else the first line of standard input.\nWith -c, or with commands on standard input, the client exits 1 at the first command that fails (an output line starting with 'error:')."
)]
pub(crate) struct ConsoleArgs {
    /// Trust the server whose certificate has this SHA-256 fingerprint (hex, colons optional).
    #[arg(long, value_name = "SHA256", conflicts_with = "ca")]
    pub fingerprint: Option<String>,
    /// Trust servers whose certificate this PEM file (a CA, or the certificate itself) vouches for.
    #[arg(long, value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// Where first-use trust is remembered [default: $XDG_CONFIG_HOME/reloadsup/known_hosts].
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// Connect from this local IP address (on a host with several, or to test per-address
    /// limits).
    #[arg(long, value_name = "IP")]
    pub source: Option<std::net::IpAddr>,
    /// Run this line (repeatable, in order), then exit; exit 1 if a command failed.
    #[arg(short = 'c', value_name = "LINE")]
    pub command: Vec<String>,
    /// The console's address, HOST:PORT.
    #[arg(value_name = "HOST:PORT")]
    pub address: String,
}

pub(crate) fn main(args: Vec<std::ffi::OsString>) -> u8 {
    let args = match crate::parse_args::<ConsoleArgs>(args) {
        Ok(a) => a,
        Err(code) => return code,
    };
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            let _ = io::stdout().flush();
            eprintln!("reloadsup console: {e}");
            1
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Trust
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub(crate) enum Trust {
    Ca(Arc<dyn ServerCertVerifier>),
    Fingerprint(String),
    /// Trust on first use: the fingerprint remembered for this address, if any.
    KnownHosts {
        file: PathBuf,
        key: String,
        known: Option<String>,
    },
}

#[derive(Debug)]
struct Verifier {
    trust: Trust,
    provider: Arc<CryptoProvider>,
    seen: Mutex<Option<String>>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fp = fingerprint(end_entity);
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(fp.clone());
        }
        let expected = match &self.trust {
            Trust::Ca(v) => {
                return v.verify_server_cert(
                    end_entity,
                    intermediates,
                    server_name,
                    ocsp_response,
                    now,
                )
            }
            Trust::Fingerprint(want) => Some(want),
            Trust::KnownHosts { known, .. } => known.as_ref(),
        };
        match expected {
            Some(want) if *want != fp => Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `$XDG_CONFIG_HOME/reloadsup/known_hosts`, else `~/.config/reloadsup/known_hosts`.
pub(crate) fn default_known_hosts() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })?;
    Some(base.join("reloadsup").join("known_hosts"))
}

fn read_known(file: &Path, key: &str) -> Result<Option<String>, String> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("unable to read {}: {}", file.display(), lower(&e))),
    };
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        if let (Some(k), Some(fp)) = (parts.next(), parts.next()) {
            if k == key {
                return Ok(normalize_fingerprint(fp));
            }
        }
    }
    Ok(None)
}

fn remember(file: &Path, key: &str, fp: &str) -> Result<(), String> {
    let fail = |e: io::Error| format!("unable to write {}: {}", file.display(), lower(&e));
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .map_err(fail)?;
    writeln!(f, "{key} {fp}").map_err(fail)
}

fn load_ca(
    path: &Path,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("unable to read {}: {}", path.display(), lower(&e)))?;
    let certs = crate::tls::certs(&pem).map_err(|e| format!("--ca: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in certs {
        roots
            .add(c)
            .map_err(|e| format!("--ca {}: {e}", path.display()))?;
    }
    let v = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| format!("--ca {}: {e}", path.display()))?;
    Ok(v)
}

// ---------------------------------------------------------------------------------------------
// The connection
// ---------------------------------------------------------------------------------------------

/// What the server said next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Said {
    Line(String),
    Prompt(String),
    Closed,
}

pub(crate) struct Conn {
    tcp: TcpStream,
    tls: rustls::ClientConnection,
    buf: Vec<u8>,
    eof: bool,
    /// How long to wait for the server when nothing is pending (None: for ever). A wait that
    /// runs out comes back as an empty prompt.
    pub(crate) patience: Option<Duration>,
}

impl Conn {
    pub(crate) fn send_line(&mut self, line: &str) -> io::Result<()> {
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        self.tls.writer().write_all(&bytes)?;
        self.write_out()
    }

    fn write_out(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            self.tls.write_tls(&mut self.tcp)?;
        }
        Ok(())
    }

    /// Reads more; `Ok(false)` when `wait` passed without news.
    fn fill(&mut self, wait: Option<Duration>) -> io::Result<bool> {
        self.tcp.set_read_timeout(wait)?;
        loop {
            match self.tls.read_tls(&mut self.tcp) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(true);
                }
                Ok(_) => {}
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    return Ok(false)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let state = self.tls.process_new_packets().map_err(io::Error::other)?;
            self.write_out()?;
            let n = state.plaintext_bytes_to_read();
            if n > 0 {
                let start = self.buf.len();
                self.buf.resize(start + n, 0);
                self.tls.reader().read_exact(&mut self.buf[start..])?;
            }
            if state.peer_has_closed() {
                self.eof = true;
            }
            if n > 0 || self.eof {
                return Ok(true);
            }
        }
    }

    pub(crate) fn next(&mut self) -> Said {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.ends_with(b"\r") {
                    line.pop();
                }
                return Said::Line(String::from_utf8_lossy(&line).into_owned());
            }
            if self.buf == PROMPT.as_bytes() || self.buf == PASSWORD_PROMPT.as_bytes() {
                let p = String::from_utf8_lossy(&self.buf).into_owned();
                self.buf.clear();
                return Said::Prompt(p);
            }
            if self.eof {
                if self.buf.is_empty() {
                    return Said::Closed;
                }
                let rest = std::mem::take(&mut self.buf);
                return Said::Line(String::from_utf8_lossy(&rest).into_owned());
            }
            let wait = if self.buf.is_empty() {
                self.patience
            } else {
                Some(QUIET)
            };
            match self.fill(wait) {
                Ok(true) => {}
                Ok(false) => {
                    let p = String::from_utf8_lossy(&self.buf).into_owned();
                    self.buf.clear();
                    return Said::Prompt(p);
                }
                Err(_) => self.eof = true,
            }
        }
    }
}

pub(crate) struct Target {
    host: String,
    port: u16,
    key: String,
    /// `--source`: the local address to connect from.
    pub source: Option<std::net::IpAddr>,
}

pub(crate) fn parse_target(address: &str) -> Result<Target, String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("'{address}' is not HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("'{address}': '{port}' is not a port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("'{address}' has no host"));
    }
    Ok(Target {
        host: host.to_string(),
        port,
        key: address.to_string(),
        source: None,
    })
}

/// Why a connection attempt failed; a changed certificate is never retried.
pub(crate) enum ConnectError {
    Changed {
        remembered: String,
        presented: String,
    },
    Other(String),
}

pub(crate) fn connect(target: &Target, trust: &Trust) -> Result<(Conn, String), ConnectError> {
    let provider = crate::tls::provider();
    let verifier = Arc::new(Verifier {
        trust: trust.clone(),
        provider: provider.clone(),
        seen: Mutex::new(None),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(crate::tls::VERSIONS)
        .map_err(|e| ConnectError::Other(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let name = ServerName::try_from(target.host.clone())
        .map_err(|_| ConnectError::Other(format!("'{}' is not a host name", target.host)))?;
    let tls = rustls::ClientConnection::new(Arc::new(config), name)
        .map_err(|e| ConnectError::Other(e.to_string()))?;
    let addrs: Vec<_> = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| {
            ConnectError::Other(format!("unable to resolve {}: {}", target.host, lower(&e)))
        })?
        .collect();
    let mut last = None;
    let mut tcp = None;
    for a in addrs {
        match connect_tcp(a, target.source) {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let tcp = tcp.ok_or_else(|| {
        ConnectError::Other(format!(
            "unable to connect to {}: {}",
            target.key,
            last.map(|e| lower(&e))
                .unwrap_or_else(|| "no address".into())
        ))
    })?;
    let _ = tcp.set_nodelay(true);
    let mut conn = Conn {
        tcp,
        tls,
        buf: Vec::new(),
        eof: false,
        patience: None,
    };
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let handshake = (|| -> io::Result<()> {
        conn.tcp.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        while conn.tls.is_handshaking() {
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the TLS handshake timed out",
                ));
            }
            conn.tls
                .complete_io(&mut conn.tcp)
                .map_err(|e| match e.kind() {
                    // The read timeout: a silent server, not a failed read.
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                        "no TLS handshake within {CONNECT_TIMEOUT:?} (is the console restarting?)"
                    ),
                    ),
                    _ => e,
                })?;
        }
        conn.write_out()
    })();
    let seen = verifier.seen.lock().ok().and_then(|s| s.clone());
    if let Err(e) = handshake {
        if let (Some(presented), Some(remembered)) = (
            seen.clone(),
            match trust {
                Trust::Fingerprint(f) => Some(f.clone()),
                Trust::KnownHosts { known, .. } => known.clone(),
                Trust::Ca(_) => None,
            },
        ) {
            if presented != remembered {
                return Err(ConnectError::Changed {
                    remembered,
                    presented,
                });
            }
        }
        return Err(ConnectError::Other(format!(
            "TLS with {} failed: {}",
            target.key,
            lower(&e)
        )));
    }
    Ok((conn, seen.unwrap_or_default()))
}

fn changed_message(trust: &Trust, target: &Target, remembered: &str, presented: &str) -> String {
    let mut s = format!(
        "REFUSED: THE CERTIFICATE OF {} IS NOT THE TRUSTED ONE\n  trusted:   {remembered}\n  presented: {presented}\n",
        target.key
    );
    match trust {
        Trust::KnownHosts { file, .. } => s.push_str(&format!(
            "Someone may be intercepting the connection, or the server got a new certificate.\nIf the change is expected, remove the line for {} from {} and connect again.",
            target.key,
            file.display()
        )),
        _ => s.push_str(
            "Someone may be intercepting the connection, or the server got a new certificate.",
        ),
    }
    s
}

// ---------------------------------------------------------------------------------------------
// The session
// ---------------------------------------------------------------------------------------------

enum Input {
    Terminal(Box<rustyline::DefaultEditor>),
    Script(VecDeque<String>),
}

/// A TCP connection to `to`, from `source` when given (bound before connecting).
fn connect_tcp(
    to: std::net::SocketAddr,
    source: Option<std::net::IpAddr>,
) -> io::Result<TcpStream> {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage};
    let Some(source) = source else {
        return TcpStream::connect_timeout(&to, CONNECT_TIMEOUT);
    };
    let family = if to.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(std::net::SocketAddr::new(source, 0)),
    )?;
    // A blocking connect: the kernel's own timeout applies with --source.
    socket::connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(to),
    )?;
    Ok(TcpStream::from(fd))
}

fn run(args: ConsoleArgs) -> Result<u8, String> {
    let mut target = parse_target(&args.address)?;
    target.source = args.source;
    let provider = crate::tls::provider();
    let mut trust = if let Some(ca) = &args.ca {
        Trust::Ca(load_ca(ca, provider)?)
    } else if let Some(fp) = &args.fingerprint {
        Trust::Fingerprint(normalize_fingerprint(fp).ok_or_else(|| {
            format!("--fingerprint '{fp}' is not a SHA-256 fingerprint (64 hex digits, colons optional)")
        })?)
    } else {
        let file = args
            .known_hosts
            .clone()
            .or_else(default_known_hosts)
            .ok_or(
                "no known-hosts file: set HOME or XDG_CONFIG_HOME, or give --known-hosts FILE",
            )?;
        let known = read_known(&file, &target.key)?;
        Trust::KnownHosts {
            file,
            key: target.key.clone(),
            known,
        }
    };

    let stdin_tty = io::stdin().is_terminal();
    let mut password = std::env::var("RELOADSUP_PASSWORD").ok();
    let mut input = if !args.command.is_empty() {
        Input::Script(args.command.iter().cloned().collect())
    } else if stdin_tty {
        let editor = rustyline::DefaultEditor::new()
            .map_err(|e| format!("unable to use the terminal: {e}"))?;
        Input::Terminal(Box::new(editor))
    } else {
        let mut lines: VecDeque<String> =
            io::stdin().lock().lines().map_while(Result::ok).collect();
        if password.is_none() && !has_tty() {
            password = lines.pop_front();
        }
        Input::Script(lines)
    };
    let scripted = matches!(input, Input::Script(_));
    // In script mode the password is asked once and reused after a reconnect.
    let reuse_password = scripted || password.is_some();

    let mut conn = open(&target, &mut trust)?;
    let mut logged_in = false;
    let mut leaving = false;
    let mut failed = false;
    let mut stdout = io::stdout();
    loop {
        match conn.next() {
            Said::Line(line) => {
                let _ = writeln!(stdout, "{line}");
                let _ = stdout.flush();
                if line.starts_with("error:") && logged_in {
                    failed = true;
                }
                if line == ACCESS_DENIED && scripted {
                    return Err("access denied (wrong password)".into());
                }
            }
            Said::Prompt(p) if p == PASSWORD_PROMPT => {
                let pw = match &password {
                    Some(pw) => pw.clone(),
                    None => {
                        let pw = rpassword::prompt_password(PASSWORD_PROMPT)
                            .map_err(|e| format!("unable to read the password: {}", lower(&e)))?;
                        if reuse_password {
                            password = Some(pw.clone());
                        }
                        pw
                    }
                };
                if conn.send_line(&pw).is_err() {
                    conn.eof = true;
                }
            }
            Said::Prompt(p) if p == PROMPT => {
                logged_in = true;
                if failed && scripted {
                    leave(&mut conn);
                    return Ok(1);
                }
                let next = match &mut input {
                    Input::Script(lines) => lines.pop_front(),
                    Input::Terminal(editor) => loop {
                        match editor.readline(PROMPT) {
                            Ok(l) => {
                                if !l.trim().is_empty() {
                                    let _ = editor.add_history_entry(l.as_str());
                                }
                                break Some(l);
                            }
                            Err(rustyline::error::ReadlineError::Interrupted) => continue,
                            Err(_) => break None,
                        }
                    },
                };
                match next {
                    Some(line) => {
                        if line.trim() == ".exit" {
                            leaving = true;
                        }
                        if conn.send_line(&line).is_err() {
                            conn.eof = true;
                        }
                    }
                    None => {
                        leave(&mut conn);
                        return Ok(u8::from(failed));
                    }
                }
            }
            Said::Prompt(p) => {
                // A command's own question.
                let answer = match &mut input {
                    Input::Script(lines) => {
                        let a = lines.pop_front();
                        let _ = writeln!(stdout, "{p}{}", a.as_deref().unwrap_or(""));
                        let _ = stdout.flush();
                        a
                    }
                    Input::Terminal(editor) => match editor.readline(&p) {
                        Ok(l) => Some(l),
                        Err(rustyline::error::ReadlineError::Interrupted) => Some(String::new()),
                        Err(_) => None,
                    },
                };
                match answer {
                    Some(a) => {
                        if conn.send_line(&a).is_err() {
                            conn.eof = true;
                        }
                    }
                    None => {
                        leave(&mut conn);
                        return Ok(u8::from(failed));
                    }
                }
            }
            Said::Closed => {
                if leaving {
                    return Ok(u8::from(failed));
                }
                if !logged_in {
                    return Err("the server closed the connection".into());
                }
                conn = reconnect(&target, &mut trust)?;
                logged_in = false;
                if !reuse_password {
                    password = None;
                }
            }
        }
    }
}

fn has_tty() -> bool {
    std::fs::File::open("/dev/tty").is_ok()
}

fn leave(conn: &mut Conn) {
    let _ = conn.send_line(".exit");
    conn.tls.send_close_notify();
    let _ = conn.write_out();
}

fn open(target: &Target, trust: &mut Trust) -> Result<Conn, String> {
    match connect(target, trust) {
        Ok((conn, fp)) => {
            if let Trust::KnownHosts { file, key, known } = trust {
                if known.is_none() {
                    remember(file, key, &fp)?;
                    eprintln!(
                        "reloadsup console: trusting {key} on first use: certificate SHA-256 {fp} (remembered in {})",
                        file.display()
                    );
                    *known = Some(fp);
                }
            }
            Ok(conn)
        }
        Err(ConnectError::Changed {
            remembered,
            presented,
        }) => Err(changed_message(trust, target, &remembered, &presented)),
        Err(ConnectError::Other(e)) => Err(e),
    }
}

fn reconnect(target: &Target, trust: &mut Trust) -> Result<Conn, String> {
    let mut out = io::stdout();
    let _ = write!(out, "Connection lost. Reconnecting...");
    let _ = out.flush();
    let until = Instant::now() + RECONNECT_FOR;
    loop {
        match connect(target, trust) {
            Ok((conn, _)) => {
                let _ = writeln!(out, " done!");
                let _ = out.flush();
                return Ok(conn);
            }
            Err(ConnectError::Changed {
                remembered,
                presented,
            }) => {
                let _ = writeln!(out, " refused!");
                return Err(changed_message(trust, target, &remembered, &presented));
            }
            Err(ConnectError::Other(e)) => {
                if Instant::now() >= until {
                    let _ = writeln!(out, " failed.");
                    return Err(e);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let t = parse_target("127.0.0.1:9443").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 9443));
        let t = parse_target("[::1]:9443").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9443));
        assert!(parse_target("localhost").is_err());
        assert!(parse_target(":1").is_err());
        assert!(parse_target("h:x").is_err());
    }

    #[test]
    fn known_hosts_round_trip() {
        let dir = std::env::temp_dir().join(format!("reloadsup-kh-{}", std::process::id()));
        let file = dir.join("sub").join("known_hosts");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(read_known(&file, "a:1").unwrap(), None);
        let fp = normalize_fingerprint(&"0f".repeat(32)).unwrap();
        remember(&file, "a:1", &fp).unwrap();
        assert_eq!(read_known(&file, "a:1").unwrap(), Some(fp));
        assert_eq!(read_known(&file, "a:2").unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
