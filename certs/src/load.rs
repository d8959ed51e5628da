//! Reading keys and certificates from files. Every error names the file and says what is wrong.

use crate::CertsError;
use crate::keys::{IdentityKey, PublicKey};
use crate::openssh::{self, PublicKeyLine};
use p256::pkcs8::DecodePublicKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;

fn read_text(path: &Path) -> Result<String, CertsError> {
    let bytes = std::fs::read(path).map_err(|source| CertsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    String::from_utf8(bytes)
        .map_err(|_| CertsError::invalid(path, "not a text key file (PEM or OpenSSH expected)"))
}

/// Parses private key text: OpenSSH, PKCS#8 PEM (`PRIVATE KEY`) or SEC1 PEM (`EC PRIVATE KEY`).
pub fn parse_identity_key(text: &str) -> Result<IdentityKey, String> {
    if openssh::is_private_key(text) {
        return openssh::parse_private_key(text).map(|(key, _)| key);
    }
    for label in ["PRIVATE KEY", "EC PRIVATE KEY"] {
        // openssl may put an `EC PARAMETERS` block before the key: decode the key block alone.
        if let Some(block) = pem_block(text, label) {
            if let Ok(key) = p256::SecretKey::from_pem(block) {
                return Ok(IdentityKey::P256(key.into()));
            }
            if let Ok(key) = p384::SecretKey::from_pem(block) {
                return Ok(IdentityKey::P384(key.into()));
            }
            return Err(format!("{label} is not an ECDSA key on P-256 or P-384"));
        }
    }
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err("the key is encrypted; decrypt it first (openssl pkcs8 -nocrypt)".into());
    }
    Err("not a private key (expected OpenSSH or PEM)".into())
}

/// The text of the first PEM block labelled `label`, armour included.
fn pem_block<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)?;
    let stop = text[start..].find(&end)? + start + end.len();
    Some(&text[start..stop])
}

/// Why a private key file is readable by others than its owner, if it is (Unix modes only).
pub fn exposure(path: &Path) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then(|| {
            format!(
                "{} is a private key readable by other users (mode {mode:o}); `chmod 600` it",
                path.display()
            )
        })
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Warns, as ssh does, about a private key others can read. Not an error: keys made by Flower's
/// own scripts (openssl under the default umask) are group- and world-readable.
fn warn_if_exposed(path: &Path) {
    if let Some(warning) = exposure(path) {
        tracing::warn!("{warning}");
    }
}

/// Loads a private identity key.
pub fn load_identity_key(path: &Path) -> Result<IdentityKey, CertsError> {
    warn_if_exposed(path);
    let text = read_text(path)?;
    parse_identity_key(&text).map_err(|reason| CertsError::invalid(path, reason))
}

/// Parses public key text: an OpenSSH public key line, or a PEM `PUBLIC KEY`.
pub fn parse_public_key(text: &str) -> Result<PublicKeyLine, String> {
    let trimmed = text.trim();
    if trimmed.starts_with("-----BEGIN PUBLIC KEY-----") {
        if let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_pem(trimmed) {
            return Ok(PublicKeyLine {
                key: PublicKey::P256(key),
                comment: String::new(),
            });
        }
        if let Ok(key) = p384::ecdsa::VerifyingKey::from_public_key_pem(trimmed) {
            return Ok(PublicKeyLine {
                key: PublicKey::P384(key),
                comment: String::new(),
            });
        }
        return Err("PEM public key is not an ECDSA key on P-256 or P-384".into());
    }
    let mut lines = trimmed.lines().filter(|l| !l.trim().is_empty());
    let line = lines.next().ok_or("empty public key")?;
    if lines.next().is_some() {
        return Err("expected exactly one public key line".into());
    }
    openssh::parse_public_line(line)
}

/// Loads a public key file (one key).
pub fn load_public_key(path: &Path) -> Result<PublicKeyLine, CertsError> {
    let text = read_text(path)?;
    parse_public_key(&text).map_err(|reason| CertsError::invalid(path, reason))
}

/// Loads a file of OpenSSH public key lines (like `authorized_keys`); blank lines and `#` comments
/// are skipped. The comment of each line names the key's owner.
pub fn load_public_key_list(path: &Path) -> Result<Vec<PublicKeyLine>, CertsError> {
    let text = read_text(path)?;
    let mut keys = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = openssh::parse_public_line(line).map_err(|reason| {
            CertsError::invalid(path, format!("line {}: {reason}", number + 1))
        })?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(CertsError::invalid(path, "no public keys in the file"));
    }
    Ok(keys)
}

/// Loads every PEM certificate in a file.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertsError> {
    let text = read_text(path)?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(text.as_bytes()).collect();
    let certs =
        certs.map_err(|e| CertsError::invalid(path, format!("malformed PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(CertsError::invalid(
            path,
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in the file",
        ));
    }
    for cert in &certs {
        x509_parser::parse_x509_certificate(cert)
            .map_err(|e| CertsError::invalid(path, format!("malformed certificate: {e}")))?;
    }
    Ok(certs)
}

/// Loads a TLS private key (RSA, EC or PKCS#8, as openssl writes them).
pub fn load_tls_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertsError> {
    warn_if_exposed(path);
    let text = read_text(path)?;
    PrivateKeyDer::from_pem_slice(text.as_bytes())
        .map_err(|e| CertsError::invalid(path, format!("no usable PEM private key: {e}")))
}
