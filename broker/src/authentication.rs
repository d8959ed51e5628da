//! What the Fleet and Control APIs share before a peer is in: the TLS deadline, the handshake's
//! stream, and one account of why a connection was turned away. The handshake itself is
//! [`wire::io::handshake`]; each API keeps only its admission policy.

use crate::store::StoreError;
use std::time::Duration;
use wire::close;
use wire::handshake::{EXPORTER_LABEL, EXPORTER_LEN, Refusal};
use wire::io::FrameIoError;
use wire::io::handshake::HandshakeError;

/// Why a connection ended before or during authentication (logged and counted, never sent in
/// detail).
#[derive(Debug, thiserror::Error)]
pub enum HandshakeFailure {
    /// TLS failed (the client's key was refused by the verifier, or the bytes were not TLS).
    #[error("TLS handshake failed: {0}")]
    Tls(quinn::ConnectionError),
    /// TLS did not finish within its own deadline.
    #[error("TLS handshake took too long")]
    TlsTimeout,
    /// The connection broke during the handshake.
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The peer sent something that is not a handshake frame.
    #[error("bad frame: {0}")]
    Frame(#[from] FrameIoError),
    /// The peer was refused (the refusal was sent to it).
    #[error("refused: {0}")]
    Refused(Refusal),
    /// The registry could not be read or written.
    #[error("registry error: {0}")]
    Store(#[from] StoreError),
    /// The TLS session exported no keying material to bind the proof to.
    #[error("no channel binding available")]
    NoExporter,
}

impl From<HandshakeError> for HandshakeFailure {
    fn from(error: HandshakeError) -> Self {
        match error {
            HandshakeError::Frame(error) => HandshakeFailure::Frame(error),
            HandshakeError::Refused(refusal) => HandshakeFailure::Refused(refusal),
            // Only a client meets these; a server never waits for a challenge or a welcome.
            HandshakeError::KeyRequired | HandshakeError::Unexpected(_) => {
                HandshakeFailure::Refused(Refusal::Unexpected)
            }
        }
    }
}

impl HandshakeFailure {
    /// The reason's label on the metrics endpoint.
    pub fn label(&self) -> &'static str {
        match self {
            HandshakeFailure::Tls(_) | HandshakeFailure::NoExporter => "tls",
            HandshakeFailure::TlsTimeout => "tls_timeout",
            HandshakeFailure::Connection(_) => "connection_lost",
            HandshakeFailure::Frame(_) => "protocol",
            HandshakeFailure::Refused(Refusal::BadProof) => "bad_proof",
            HandshakeFailure::Refused(Refusal::UnknownKey) => "unknown_key",
            HandshakeFailure::Refused(Refusal::Revoked) => "revoked",
            HandshakeFailure::Refused(Refusal::UnsupportedVersion(_)) => "version",
            HandshakeFailure::Refused(_) => "refused",
            HandshakeFailure::Store(_) => "storage",
        }
    }
}

/// A connection whose TLS handshake finished, its channel binding, and the handshake's stream.
pub struct Opened {
    /// The connection.
    pub connection: quinn::Connection,
    /// This connection's TLS exporter output, which every proof must cover.
    pub exporter: [u8; EXPORTER_LEN],
    /// The stream the handshake (and then the session) runs on.
    pub send: quinn::SendStream,
    /// Its receiving side.
    pub recv: quinn::RecvStream,
}

/// Finishes TLS within `tls_timeout` (a peer that stalls it holds a slot only briefly) and accepts
/// the handshake's stream.
pub async fn open(
    incoming: quinn::Incoming,
    tls_timeout: Duration,
) -> Result<Opened, HandshakeFailure> {
    let connection = tokio::time::timeout(tls_timeout, incoming)
        .await
        .map_err(|_| HandshakeFailure::TlsTimeout)?
        .map_err(HandshakeFailure::Tls)?;
    let exporter =
        certs::quic::exporter(&connection, EXPORTER_LABEL).ok_or(HandshakeFailure::NoExporter)?;
    let (send, recv) = connection.accept_bi().await?;
    Ok(Opened {
        connection,
        exporter,
        send,
        recv,
    })
}

/// Closes `connection` as refused when `result` is a refusal (the frame saying why went first).
pub fn close_if_refused<T>(
    connection: &quinn::Connection,
    result: Result<T, HandshakeFailure>,
) -> Result<T, HandshakeFailure> {
    if let Err(HandshakeFailure::Refused(refusal)) = &result {
        connection.close(close::REFUSED.into(), refusal.to_string().as_bytes());
    }
    result
}
