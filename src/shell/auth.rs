//! Console passwords: the stored hash string, its constant-time check, the per-address attempt
//! limit, and `reloadsup hash-password`.
//!
//! The hash is PBKDF2-HMAC-SHA256 from ring, written as one string
//! `pbkdf2-sha256$ITERATIONS$SALT_HEX$HASH_HEX` so that salt and work factor travel with it.
//! Neither a password nor a hash ever goes into a log line or an error message.

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, IsTerminal};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use ring::pbkdf2;
use ring::rand::{SecureRandom, SystemRandom};

/// The scheme tag at the front of every hash string.
pub const SCHEME: &str = "pbkdf2-sha256";
/// `hash-password` never writes fewer iterations than this.
pub const MIN_ITERATIONS: u32 = 200_000;
/// What `hash-password` uses.
pub const DEFAULT_ITERATIONS: u32 = 210_000;
/// A hash asking for more work than this is refused: every login would stall for minutes.
const MAX_ITERATIONS: u32 = 50_000_000;
const SALT_LEN: usize = 16;
const HASH_LEN: usize = 32;
/// Longest password accepted, in bytes; the line limit of the console is longer.
pub const MAX_PASSWORD: usize = 1024;

static ALGORITHM: pbkdf2::Algorithm = pbkdf2::PBKDF2_HMAC_SHA256;

/// Why a hash string was refused. Says what is wrong without repeating the string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashError {
    Format,
    Scheme,
    Iterations,
    Hex(&'static str),
    Length(&'static str),
}

impl fmt::Display for HashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashError::Format => write!(
                f,
                "the password hash is not of the form {SCHEME}$ITERATIONS$SALT_HEX$HASH_HEX (make one with 'reloadsup hash-password')"
            ),
            HashError::Scheme => write!(f, "the password hash does not start with '{SCHEME}$'"),
            HashError::Iterations => write!(
                f,
                "the password hash's iteration count is not a number between 1 and {MAX_ITERATIONS}"
            ),
            HashError::Hex(part) => write!(f, "the password hash's {part} is not hex"),
            HashError::Length(part) => write!(f, "the password hash's {part} has a bad length"),
        }
    }
}

impl std::error::Error for HashError {}

/// A parsed `pbkdf2-sha256$...` string.
#[derive(Clone)]
pub struct PasswordHash {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The hash is a secret too: an offline guesser needs exactly this.
        write!(f, "PasswordHash({SCHEME}, {} iterations)", self.iterations)
    }
}

impl PasswordHash {
    pub fn parse(s: &str) -> Result<PasswordHash, HashError> {
        let mut parts = s.trim().split('$');
        let (Some(scheme), Some(iter), Some(salt), Some(hash), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(HashError::Format);
        };
        if scheme != SCHEME {
            return Err(HashError::Scheme);
        }
        let iterations = iter
            .parse::<u32>()
            .ok()
            .filter(|&n| n <= MAX_ITERATIONS)
            .and_then(NonZeroU32::new)
            .ok_or(HashError::Iterations)?;
        let salt = from_hex(salt).ok_or(HashError::Hex("salt"))?;
        let hash = from_hex(hash).ok_or(HashError::Hex("hash"))?;
        if salt.len() < 8 || salt.len() > 64 {
            return Err(HashError::Length("salt"));
        }
        if hash.len() != HASH_LEN {
            return Err(HashError::Length("hash"));
        }
        Ok(PasswordHash {
            iterations,
            salt,
            hash,
        })
    }

    /// Hashes `password` with a fresh random salt.
    pub fn create(password: &[u8], iterations: u32) -> Result<PasswordHash, String> {
        let iterations = NonZeroU32::new(iterations.max(MIN_ITERATIONS))
            .ok_or_else(|| "zero iterations".to_string())?;
        let mut salt = vec![0u8; SALT_LEN];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| "the system's random number generator failed".to_string())?;
        let mut hash = vec![0u8; HASH_LEN];
        pbkdf2::derive(ALGORITHM, iterations, &salt, password, &mut hash);
        Ok(PasswordHash {
            iterations,
            salt,
            hash,
        })
    }

    /// Checks `password` in constant time (ring compares the derived key, not us).
    pub fn verify(&self, password: &[u8]) -> bool {
        pbkdf2::verify(ALGORITHM, self.iterations, &self.salt, password, &self.hash).is_ok()
    }

    pub fn iterations(&self) -> u32 {
        self.iterations.get()
    }

    /// The string form that [`PasswordHash::parse`] reads.
    pub fn encode(&self) -> String {
        format!(
            "{SCHEME}${}${}${}",
            self.iterations,
            to_hex(&self.salt),
            to_hex(&self.hash)
        )
    }
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    // Even length: every chunk has two bytes.
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// Failed logins per source address: past [`Attempts::LIMIT`] failures within
/// [`Attempts::WINDOW`], an address gets no more tries until the window has passed.
///
/// Bounded: past `MAX_ADDRESSES` (4096) addresses, expired entries are dropped, then the
/// oldest, so a spray of source addresses costs memory no more than a fixed table.
#[derive(Debug, Default)]
pub struct Attempts {
    by_address: HashMap<IpAddr, (u32, Instant)>,
}

impl Attempts {
    pub const LIMIT: u32 = 20;
    pub const WINDOW: Duration = Duration::from_secs(60);
    const MAX_ADDRESSES: usize = 4096;

    /// Whether `addr` may try a password now.
    pub fn allowed(&mut self, addr: IpAddr, now: Instant) -> bool {
        match self.by_address.get(&addr) {
            Some(&(n, since)) if now.saturating_duration_since(since) < Self::WINDOW => {
                n < Self::LIMIT
            }
            Some(_) => {
                self.by_address.remove(&addr);
                true
            }
            None => true,
        }
    }

    pub fn failed(&mut self, addr: IpAddr, now: Instant) {
        if self.by_address.len() >= Self::MAX_ADDRESSES && !self.by_address.contains_key(&addr) {
            self.by_address
                .retain(|_, (_, since)| now.saturating_duration_since(*since) < Self::WINDOW);
            if self.by_address.len() >= Self::MAX_ADDRESSES {
                if let Some(oldest) = self
                    .by_address
                    .iter()
                    .min_by_key(|(_, (_, since))| *since)
                    .map(|(a, _)| *a)
                {
                    self.by_address.remove(&oldest);
                }
            }
        }
        let entry = self.by_address.entry(addr).or_insert((0, now));
        if now.saturating_duration_since(entry.1) >= Self::WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
    }
}

/// `reloadsup hash-password`: reads a password (without echo on a terminal, else one line of
/// standard input) and prints its hash string.
pub fn main(args: Vec<std::ffi::OsString>) -> u8 {
    if args.iter().skip(1).any(|a| a == "-h" || a == "--help") {
        println!(
            "Usage: reloadsup hash-password\n\nReads a password (without echo on a terminal, else one line of standard input)\nand prints its {SCHEME} hash for --admin-password-hash."
        );
        return 0;
    }
    if args.len() > 1 {
        eprintln!("reloadsup hash-password: takes no arguments (the password is read from the terminal or standard input)");
        return 2;
    }
    let password = if std::io::stdin().is_terminal() {
        let first = match rpassword::prompt_password("Password: ") {
            Ok(p) => p,
            Err(e) => {
                eprintln!(
                    "reloadsup hash-password: unable to read the password: {}",
                    crate::config::lower(&e)
                );
                return 1;
            }
        };
        match rpassword::prompt_password("Again: ") {
            Ok(again) if again == first => first,
            Ok(_) => {
                eprintln!("reloadsup hash-password: the passwords differ");
                return 1;
            }
            Err(e) => {
                eprintln!(
                    "reloadsup hash-password: unable to read the password: {}",
                    crate::config::lower(&e)
                );
                return 1;
            }
        }
    } else {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
            eprintln!(
                "reloadsup hash-password: unable to read standard input: {}",
                crate::config::lower(&e)
            );
            return 1;
        }
        line.trim_end_matches(['\n', '\r']).to_string()
    };
    if password.is_empty() {
        eprintln!("reloadsup hash-password: the password is empty");
        return 1;
    }
    if password.len() > MAX_PASSWORD {
        eprintln!("reloadsup hash-password: the password is longer than {MAX_PASSWORD} bytes");
        return 1;
    }
    match PasswordHash::create(password.as_bytes(), DEFAULT_ITERATIONS) {
        Ok(h) => {
            println!("{}", h.encode());
            0
        }
        Err(e) => {
            eprintln!("reloadsup hash-password: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_round_trips_and_verifies() {
        let h = PasswordHash::create(b"secret", MIN_ITERATIONS).unwrap();
        let s = h.encode();
        assert!(s.starts_with("pbkdf2-sha256$200000$"));
        let p = PasswordHash::parse(&s).unwrap();
        assert!(p.verify(b"secret"));
        assert!(!p.verify(b"secret "));
        assert!(!p.verify(b""));
    }

    #[test]
    fn salts_differ() {
        let a = PasswordHash::create(b"x", MIN_ITERATIONS).unwrap().encode();
        let b = PasswordHash::create(b"x", MIN_ITERATIONS).unwrap().encode();
        assert_ne!(a, b);
    }

    #[test]
    fn bad_strings_are_refused_without_echo() {
        for bad in [
            "",
            "pbkdf2-sha256",
            "pbkdf2-sha256$1$00$00",
            "md5$1$0011223344556677$00",
            "pbkdf2-sha256$0$0011223344556677$0000000000000000000000000000000000000000000000000000000000000000",
            "pbkdf2-sha256$x$0011223344556677$0000000000000000000000000000000000000000000000000000000000000000",
            "pbkdf2-sha256$10$0011223344556677zz$0000000000000000000000000000000000000000000000000000000000000000",
            "pbkdf2-sha256$10$0011223344556677$00",
            "pbkdf2-sha256$10$0011223344556677$00$00",
            "pbkdf2-sha256$10$é0011223344556677$0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            let e = PasswordHash::parse(bad).unwrap_err();
            if bad.len() > 20 {
                assert!(!e.to_string().contains(&bad[20..]), "{e}");
            }
        }
    }

    #[test]
    fn attempts_are_limited_per_address() {
        let mut a = Attempts::default();
        let t = Instant::now();
        let x: IpAddr = "127.0.0.1".parse().unwrap();
        let y: IpAddr = "::1".parse().unwrap();
        for _ in 0..Attempts::LIMIT {
            assert!(a.allowed(x, t));
            a.failed(x, t);
        }
        assert!(!a.allowed(x, t));
        assert!(a.allowed(y, t));
        assert!(a.allowed(x, t + Attempts::WINDOW));
    }
}
