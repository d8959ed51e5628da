//! The CLI's errors: each becomes one line on stderr and a non-zero exit.

use thiserror::Error;

/// Why a command failed.
#[derive(Debug, Error)]
pub enum CliError {
    /// `flwr.toml` is missing or wrong, or names no such federation.
    #[error("{0}")]
    Config(String),
    /// Key or certificate files.
    #[error(transparent)]
    Certs(#[from] certs::CertsError),
    /// The broker could not be reached or the TLS handshake failed.
    #[error("{0}")]
    Connect(String),
    /// The broker refused this operator.
    #[error("{0}")]
    Refused(String),
    /// The broker refused the request.
    #[error("{0}")]
    Request(String),
    /// Reading or writing a local file.
    #[error("{0}")]
    Io(String),
}
