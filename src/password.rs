//! The console password's stored form: `pbkdf2-sha256$ITERATIONS$SALT_HEX$HASH_HEX`
//! (PBKDF2-HMAC-SHA256 from ring), parsed, created and verified in constant time.
//!
//! Shared by the config's validation of `--admin-password-hash` and the shell's login, so
//! neither depends on the other. Neither a password nor a hash ever goes into a log line or an
//! error message.

use std::fmt;
use std::num::NonZeroU32;

use ring::pbkdf2;
use ring::rand::{SecureRandom, SystemRandom};

/// The scheme tag at the front of every hash string.
pub(crate) const SCHEME: &str = "pbkdf2-sha256";
/// `hash-password` never writes fewer iterations than this.
pub(crate) const MIN_ITERATIONS: u32 = 200_000;
/// What `hash-password` uses.
pub(crate) const DEFAULT_ITERATIONS: u32 = 210_000;
/// A hash asking for more work than this is refused: every login would stall for minutes.
const MAX_ITERATIONS: u32 = 50_000_000;
const SALT_LEN: usize = 16;
const HASH_LEN: usize = 32;
/// Longest password accepted, in bytes; the line limit of the console is longer.
pub(crate) const MAX_PASSWORD: usize = 1024;

static ALGORITHM: pbkdf2::Algorithm = pbkdf2::PBKDF2_HMAC_SHA256;

/// Why a hash string was refused. Says what is wrong without repeating the string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HashError {
    Format,
    Scheme,
    Iterations,
    Hex(&'static str),
    Length(&'static str),
    /// The system's random number generator failed while making a salt.
    Random,
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
            HashError::Random => f.write_str("the system's random number generator failed"),
        }
    }
}

impl std::error::Error for HashError {}

/// A parsed `pbkdf2-sha256$...` string.
#[derive(Clone)]
pub(crate) struct PasswordHash {
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
    pub(crate) fn parse(s: &str) -> Result<PasswordHash, HashError> {
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
    pub(crate) fn create(password: &[u8], iterations: u32) -> Result<PasswordHash, HashError> {
        let iterations =
            NonZeroU32::new(iterations.max(MIN_ITERATIONS)).ok_or(HashError::Iterations)?;
        let mut salt = vec![0u8; SALT_LEN];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| HashError::Random)?;
        let mut hash = vec![0u8; HASH_LEN];
        pbkdf2::derive(ALGORITHM, iterations, &salt, password, &mut hash);
        Ok(PasswordHash {
            iterations,
            salt,
            hash,
        })
    }

    /// Checks `password` in constant time (ring compares the derived key, not us).
    pub(crate) fn verify(&self, password: &[u8]) -> bool {
        pbkdf2::verify(ALGORITHM, self.iterations, &self.salt, password, &self.hash).is_ok()
    }

    /// The string form that [`PasswordHash::parse`] reads.
    pub(crate) fn encode(&self) -> String {
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
