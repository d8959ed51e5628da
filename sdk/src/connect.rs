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

/// How long a program keeps trying to reach its daemon: a connection the daemon closed before
/// it answered (it was busy with others) is tried again.
const CONNECT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Pause between two attempts.
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Connects to the daemon (see [`connect`]) and reads its first frame, the job, with `limit`;
/// tries again, within [`CONNECT_PATIENCE`], when the daemon closes the connection first.
pub fn connect_for_job<T: serde::de::DeserializeOwned>(
    address_env: &'static str,
    token_env: &'static str,
    version: u16,
    limit: u32,
) -> Result<(TcpStream, T), SdkError> {
    let deadline = std::time::Instant::now() + CONNECT_PATIENCE;
    loop {
        let attempt = connect(address_env, token_env, version).and_then(|mut stream| {
            let job = wire::blocking::read_value(&mut stream, limit)?;
            Ok((stream, job))
        });
        match attempt {
            Err(
                SdkError::Connect { .. }
                | SdkError::Exchange(FrameIoError::Closed | FrameIoError::Io(_)),
            ) if std::time::Instant::now() < deadline => {
                std::thread::sleep(RETRY_PAUSE);
            }
            other => return other,
        }
    }
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
