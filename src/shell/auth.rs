//! Console passwords: the stored hash string, its constant-time check, and
//! `reloadsup hash-password`. The per-source attempt limit is in [`super::admission`].
//!
//! The hash is PBKDF2-HMAC-SHA256 from ring, written as one string
//! `pbkdf2-sha256$ITERATIONS$SALT_HEX$HASH_HEX` so that salt and work factor travel with it.
//! Neither a password nor a hash ever goes into a log line or an error message.

use std::io::{BufRead, IsTerminal};

// The hash string itself lives in `crate::password`, which the config's validation shares
// without depending on the shell.
pub(crate) use crate::password::{PasswordHash, DEFAULT_ITERATIONS, MAX_PASSWORD, SCHEME};

/// `reloadsup hash-password`: reads a password (without echo on a terminal, else one line of
/// standard input) and prints its hash string.
/// The shortest password `hash-password` takes without a warning.
const ADVISED_PASSWORD: usize = 12;

pub(crate) fn main(args: Vec<std::ffi::OsString>) -> u8 {
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
                    crate::error::lower(&e)
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
                    crate::error::lower(&e)
                );
                return 1;
            }
        }
    } else {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
            eprintln!(
                "reloadsup hash-password: unable to read standard input: {}",
                crate::error::lower(&e)
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
    if password.chars().count() < ADVISED_PASSWORD {
        // A warning, not a refusal: the console also limits guesses per source and minute.
        eprintln!(
            "reloadsup hash-password: warning: the password is shorter than {ADVISED_PASSWORD} characters; the console is reachable over the network, a longer one is advised"
        );
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
    use crate::password::MIN_ITERATIONS;

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
}
