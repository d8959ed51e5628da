//! QUIC glue shared by the broker, the node and the CLI: endpoint configurations built from the TLS
//! configurations of [`crate::tls`], the channel binding, the peer's key, and readable errors.

use crate::CertsError;
use crate::keys::PublicKey;
use crate::tls::certificate_public_key;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls_pki_types::CertificateDer;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Transport settings: an idle timeout (how soon a silent peer is considered gone) and, on
/// clients, keep-alives well inside it.
pub fn transport(idle_timeout: Duration, keep_alive: Option<Duration>) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    // A timeout above 2^62 ms is refused by quinn; anything this code passes is far below.
    if let Ok(timeout) = quinn::IdleTimeout::try_from(idle_timeout) {
        transport.max_idle_timeout(Some(timeout));
    }
    transport.keep_alive_interval(keep_alive);
    // Large windows let one model upload use the link instead of waiting on flow control.
    transport.stream_receive_window(quinn::VarInt::from_u32(16 * 1024 * 1024));
    transport.receive_window(quinn::VarInt::from_u32(64 * 1024 * 1024));
    transport.send_window(64 * 1024 * 1024);
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    transport
}

/// Connection-level receive window of a peer that has not authenticated yet: enough for the
/// handshake's frames, far too little to park data in the broker's memory.
pub const UNAUTHENTICATED_WINDOW: u32 = 64 * 1024;

/// Connection-level receive window once a peer authenticated (see [`transport`]).
pub const AUTHENTICATED_WINDOW: u32 = 64 * 1024 * 1024;

/// Server-side transport settings for peers that have not authenticated: one bidirectional
/// stream (the handshake's), no unidirectional ones, and a small receive window (a connection
/// window is a sliding credit: larger frames still pass, as the server reads them). The server
/// widens them per connection once the peer has proved who it is ([`open_up`]).
pub fn unauthenticated_transport(idle_timeout: Duration) -> quinn::TransportConfig {
    let mut transport = transport(idle_timeout, None);
    transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(1));
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    transport.receive_window(quinn::VarInt::from_u32(UNAUTHENTICATED_WINDOW));
    // The per-stream window keeps its full size (quinn fixes it per connection): the
    // connection-level window above caps every stream until the peer is opened up.
    transport
}

/// Gives an authenticated peer `streams` bidirectional streams and the full receive window.
pub fn open_up(connection: &quinn::Connection, streams: u32) {
    connection.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(streams));
    connection.set_receive_window(quinn::VarInt::from_u32(AUTHENTICATED_WINDOW));
}

/// A QUIC server configuration from a TLS 1.3 server configuration.
pub fn server_config(
    tls: rustls::ServerConfig,
    transport: quinn::TransportConfig,
) -> Result<quinn::ServerConfig, CertsError> {
    let crypto =
        QuicServerConfig::try_from(Arc::new(tls)).map_err(|e| CertsError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    // Address validation is decided per connection by the server's admission policy (Retry).
    Ok(config)
}

/// A QUIC client configuration from a TLS 1.3 client configuration.
pub fn client_config(
    tls: rustls::ClientConfig,
    transport: quinn::TransportConfig,
) -> Result<quinn::ClientConfig, CertsError> {
    let crypto =
        QuicClientConfig::try_from(Arc::new(tls)).map_err(|e| CertsError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// A client endpoint on an ephemeral port of the address family of `remote`.
pub fn client_endpoint(remote: SocketAddr) -> std::io::Result<quinn::Endpoint> {
    let local: SocketAddr = match remote {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    quinn::Endpoint::client(local)
}

/// This connection's channel binding: `N` bytes of keying material exported from its TLS session
/// under `label` (RFC 8446 s.7.5). Both peers derive the same bytes; no other connection has them.
pub fn exporter<const N: usize>(connection: &quinn::Connection, label: &[u8]) -> Option<[u8; N]> {
    let mut output = [0u8; N];
    connection
        .export_keying_material(&mut output, label, b"")
        .ok()
        .map(|()| output)
}

/// The public key of the certificate the peer presented, if it presented one we support.
pub fn peer_public_key(connection: &quinn::Connection) -> Option<PublicKey> {
    let identity = connection.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().and_then(certificate_public_key)
}

/// The TLS alert inside a connection error, if the peer (or our side) closed with one.
pub fn tls_alert(error: &quinn::ConnectionError) -> Option<rustls::AlertDescription> {
    let code = match error {
        quinn::ConnectionError::TransportError(e) => u64::from(e.code),
        quinn::ConnectionError::ConnectionClosed(close) => u64::from(close.error_code),
        _ => return None,
    };
    // QUIC carries TLS alerts as transport error codes 0x100 + alert (RFC 9001 s.4.8).
    (0x100..0x200)
        .contains(&code)
        .then(|| rustls::AlertDescription::from((code - 0x100) as u8))
}
