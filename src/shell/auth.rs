//! Console passwords: the stored hash string, its constant-time check, the per-address attempt
//! limit, and `reloadsup hash-password`.
//!
//! The hash is PBKDF2-HMAC-SHA256 from ring, written as one string
//! `pbkdf2-sha256$ITERATIONS$SALT_HEX$HASH_HEX` so that salt and work factor travel with it.
//! Neither a password nor a hash ever goes into a log line or an error message.

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal};
use std::net::IpAddr;
use std::time::{Duration, Instant};

// The hash string itself lives in `crate::password`, which the config's validation shares
// without depending on the shell.
pub use crate::password::{
    HashError, PasswordHash, DEFAULT_ITERATIONS, MAX_PASSWORD, MIN_ITERATIONS, SCHEME,
};

/// Failed logins per source address: past [`Attempts::LIMIT`] failures within
/// [`Attempts::WINDOW`], an address gets no more tries until the window has passed.
///
/// Bounded: past [`Attempts::MAX_ADDRESSES`] addresses, expired entries are dropped, then the
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
