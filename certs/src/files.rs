//! Writing key material: private keys get mode 0600 from the moment they exist, and nothing is
//! overwritten unless asked.

use crate::CertsError;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Whether a file holds a secret (and so must not be readable by others).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrecy {
    /// Mode 0600.
    Private,
    /// Mode 0644.
    Public,
}

/// Fails with [`CertsError::Exists`] for the first of `paths` that exists, unless `force`.
pub fn refuse_overwrite(paths: &[PathBuf], force: bool) -> Result<(), CertsError> {
    if force {
        return Ok(());
    }
    match paths.iter().find(|p| p.exists()) {
        Some(path) => Err(CertsError::Exists { path: path.clone() }),
        None => Ok(()),
    }
}

/// Writes `contents` to `path` through a temporary file in the same directory, so a crash never
/// leaves half a key behind; the temporary file is created with the final mode.
pub fn write_file(path: &Path, contents: &[u8], secrecy: Secrecy) -> Result<(), CertsError> {
    let io = |source| CertsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    // A file or link already there (a crash's leftover, or one planted in a shared directory) is
    // removed, and the temporary file is created exclusively: O_EXCL never follows a link, so a
    // private key cannot be written through one.
    let _ = std::fs::remove_file(&temp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(match secrecy {
            Secrecy::Private => 0o600,
            Secrecy::Public => 0o644,
        });
    }
    let result = (|| {
        let mut file = options.open(&temp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.map_err(io)
}

/// `der` as one PEM block labelled `label`, in lines of 64 characters.
pub fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

/// Certificates as PEM `CERTIFICATE` blocks, one after another.
pub fn certificates_pem(certificates: &[rustls_pki_types::CertificateDer<'_>]) -> String {
    certificates
        .iter()
        .map(|certificate| pem_block("CERTIFICATE", certificate))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_link_planted_at_the_temporary_path_never_receives_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"untouched").unwrap();
        let path = dir.path().join("client_credentials_1");
        let temp = dir
            .path()
            .join(format!(".client_credentials_1.tmp{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &temp).unwrap();
        write_file(&path, b"secret", Secrecy::Private).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
        assert_eq!(std::fs::read(&path).unwrap(), b"secret");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
