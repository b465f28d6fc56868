//! The console's TLS, shared by the shell worker (server) and `reloadsup console` (client):
//! the identity and server configuration, rustls with the ring provider, TLS 1.3
//! and 1.2 only, and a self-signed certificate kept in the state directory so that its
//! fingerprint stays the same across restarts.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::ring as provider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The console's certificate chain and key (PEM) and the leaf's SHA-256 fingerprint.
#[derive(Clone)]
pub(crate) struct Identity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// SHA-256 of the DER leaf certificate, uppercase hex pairs joined by colons, as
    /// `openssl x509 -fingerprint -sha256` prints it.
    pub fingerprint_hex: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.fingerprint_hex)
    }
}

pub(crate) const CERT_FILE: &str = "console-cert.pem";
pub(crate) const KEY_FILE: &str = "console-key.pem";

/// The identity given by `--admin-cert`/`--admin-key`, or the self-signed one of the state
/// directory, made on first use (`console-cert.pem`, `console-key.pem`, mode 0600).
pub(crate) fn load_or_create_identity(
    state_dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Identity, String> {
    let (cert_pem, key_pem) = match (cert, key) {
        (Some(c), Some(k)) => (read(c)?, read(k)?),
        (None, None) => {
            let c = state_dir.join(CERT_FILE);
            let k = state_dir.join(KEY_FILE);
            if c.exists() && k.exists() {
                (read(&c)?, read(&k)?)
            } else {
                let (cert_pem, key_pem) = generate()?;
                write_private(&k, &key_pem)?;
                write_private(&c, &cert_pem)?;
                (cert_pem, key_pem)
            }
        }
        _ => return Err("a certificate and a key go together".into()),
    };
    identity(cert_pem, key_pem)
}

/// Checks that the PEM pair makes a usable server configuration and computes the fingerprint.
pub(crate) fn identity(cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Result<Identity, String> {
    // `certs` refuses an empty chain, so there is a leaf.
    let certs = certs(&cert_pem)?;
    let fingerprint_hex = fingerprint(&certs[0]);
    server_config(&cert_pem, &key_pem)?;
    Ok(Identity {
        cert_pem,
        key_pem,
        fingerprint_hex,
    })
}

/// A certificate or key: read as the primary, so checked like every file it reads with its
/// own privilege (`trusted.rs`).
fn read(path: &Path) -> Result<Vec<u8>, String> {
    crate::trusted::read(path).map_err(|e| {
        format!(
            "unable to read {}: {}",
            path.display(),
            crate::error::lower(&e)
        )
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let fail = |e: std::io::Error| {
        format!(
            "unable to write {}: {}",
            path.display(),
            crate::error::lower(&e)
        )
    };
    let tmp = path.with_extension("pem.tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    f.write_all(bytes).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    fs::rename(&tmp, path).map_err(fail)
}

fn generate() -> Result<(Vec<u8>, Vec<u8>), String> {
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let ck = rcgen::generate_simple_self_signed(names)
        .map_err(|e| format!("unable to make a self-signed certificate: {e}"))?;
    Ok((
        ck.cert.pem().into_bytes(),
        ck.signing_key.serialize_pem().into_bytes(),
    ))
}

pub(crate) fn certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the certificate is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("the certificate file holds no certificate".into());
    }
    Ok(certs)
}

/// SHA-256 of a DER certificate, `AB:CD:...`.
pub(crate) fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A fingerprint as the user gave it (colons or not, any case) in the canonical form.
pub(crate) fn normalize_fingerprint(s: &str) -> Option<String> {
    let hex: String = s
        .trim()
        .trim_start_matches("sha256:")
        .trim_start_matches("SHA256:")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let upper = hex.to_ascii_uppercase();
    Some(
        upper
            .as_bytes()
            .chunks(2)
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect::<Vec<_>>()
            .join(":"),
    )
}

/// The ring provider with the protocol versions the console speaks.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(provider::default_provider())
}

pub(crate) const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

pub(crate) fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = certs(cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("the key is not a valid PEM private key: {e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| format!("unable to configure TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the certificate and key do not make a TLS identity: {e}"))?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_made_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("reloadsup-tls-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let a = load_or_create_identity(&dir, None, None).unwrap();
        let b = load_or_create_identity(&dir, None, None).unwrap();
        assert_eq!(a.fingerprint_hex, b.fingerprint_hex);
        assert_eq!(a.fingerprint_hex.len(), 32 * 3 - 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let c =
            load_or_create_identity(&dir, Some(&dir.join(CERT_FILE)), Some(&dir.join(KEY_FILE)))
                .unwrap();
        assert_eq!(a.fingerprint_hex, c.fingerprint_hex);
        assert!(load_or_create_identity(&dir, Some(&dir.join(CERT_FILE)), None).is_err());
        assert!(load_or_create_identity(
            &dir,
            Some(&dir.join(KEY_FILE)),
            Some(&dir.join(KEY_FILE))
        )
        .is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn fingerprints_normalize() {
        let plain = "ab".repeat(32);
        let colons = normalize_fingerprint(&plain).unwrap();
        assert_eq!(colons, vec!["AB"; 32].join(":"));
        assert_eq!(normalize_fingerprint(&colons).unwrap(), colons);
        assert!(normalize_fingerprint("abc").is_none());
    }
}
