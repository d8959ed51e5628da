//! Errors that name the file and what is wrong with it.

use std::path::PathBuf;
use thiserror::Error;

/// A failure to read, parse, generate or write key material.
#[derive(Debug, Error)]
pub enum CertsError {
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file exists and `--force` was not given.
    #[error("{} already exists (use --force to overwrite)", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The file is not a key or certificate of a supported kind.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, in words a person can act on.
        reason: String,
    },
    /// Key material that did not come from a file was malformed.
    #[error("invalid key: {0}")]
    Key(String),
    /// Generating a certificate failed.
    #[error("certificate generation failed: {0}")]
    Generate(String),
    /// Building a TLS configuration failed.
    #[error("TLS configuration failed: {0}")]
    Tls(String),
}

impl CertsError {
    /// An [`CertsError::Invalid`] for `path`.
    pub fn invalid(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        CertsError::Invalid {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
