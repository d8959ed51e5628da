//! Reaching the daemon that started this program: its address and this program's one-time
//! token come in the environment.

use std::net::TcpStream;
use wire::clientappio::{AppHello, decode_token};
use wire::error::FrameIoError;

/// Why a program could not do its part.
#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    /// An environment variable the daemon sets is missing or malformed: the program was not
    /// started by a daemon.
    #[error(
        "{0} is not set or malformed: this program is started by flower-supernode or flower-superlink for an app bundle"
    )]
    Environment(&'static str),
    /// The daemon could not be reached.
    #[error("cannot reach the daemon at {address}: {source}")]
    Connect {
        /// Its address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The exchange with the daemon broke.
    #[error("the exchange with the daemon broke: {0}")]
    Exchange(#[from] FrameIoError),
    /// The daemon refused a request.
    #[error("{0}")]
    Refused(String),
}

/// Connects to the address in `address_env` and shows the token in `token_env` with `version`.
pub fn connect(
    address_env: &'static str,
    token_env: &'static str,
    version: u16,
) -> Result<TcpStream, SdkError> {
    let address = std::env::var(address_env).map_err(|_| SdkError::Environment(address_env))?;
    let token = std::env::var(token_env)
        .ok()
        .and_then(|text| decode_token(&text))
        .ok_or(SdkError::Environment(token_env))?;
    let mut stream = TcpStream::connect(&address).map_err(|source| SdkError::Connect {
        address: address.clone(),
        source,
    })?;
    // Requests and replies are small frames written whole: no batching delay.
    let _ = stream.set_nodelay(true);
    wire::blocking::write_value(&mut stream, &AppHello { version, token })?;
    Ok(stream)
}
