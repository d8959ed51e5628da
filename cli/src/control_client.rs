//! An authenticated connection to a broker's Control API.

use crate::CliError;
use crate::app_config::Federation;
use std::time::Duration;
use wire::close;
use wire::control::{Control, ControlFrame, ControlRequest, ControlResponse, OperatorFrame};
use wire::handshake::EXPORTER_LABEL;
use wire::io::handshake::{HandshakeError, client_handshake};
use wire::io::{FrameIoError, read_value, write_value};

/// Largest response frame (a node table of thousands of rows fits easily).
const RESPONSE_FRAME_LIMIT: u32 = 64 * 1024 * 1024;

/// How long to wait for a broker to answer at all.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An open, authenticated Control API session.
pub struct ControlClient {
    /// The endpoint; kept so the connection outlives no socket.
    endpoint: quinn::Endpoint,
    /// The connection.
    connection: quinn::Connection,
    /// Request stream.
    send: quinn::SendStream,
    /// Response stream.
    recv: quinn::RecvStream,
    /// The name the broker knows this operator by.
    pub operator: String,
}

fn connection_error(error: &quinn::ConnectionError, address: &str) -> CliError {
    use quinn::ConnectionError as E;
    match error {
        E::ApplicationClosed(closed) if u64::from(closed.error_code) == u64::from(close::REFUSED) => CliError::Refused(format!(
            "the SuperLink refused this operator: {}",
            String::from_utf8_lossy(&closed.reason)
        )),
        E::ConnectionClosed(_) => match certs::quic::tls_alert(error) {
            Some(rustls::AlertDescription::CertificateRequired) => CliError::Refused(
                "the SuperLink requires an operator key: set operator-key in the federation's table".into(),
            ),
            Some(rustls::AlertDescription::NoApplicationProtocol) => CliError::Connect(format!(
                "{address} does not serve the Control API (ALPN mismatch): check the federation's address"
            )),
            Some(alert) => CliError::Refused(format!(
                "the SuperLink refused this operator key during TLS ({alert:?}): it is not one of its --control-auth-public-keys"
            )),
            None => CliError::Connect(format!("connection to {address} closed: {error}")),
        },
        E::TransportError(transport) if certs::quic::tls_alert(error).is_some() => CliError::Connect(format!(
            "TLS with the SuperLink at {address} failed: {} (check root-certificates and the address's name)",
            transport.reason
        )),
        E::TimedOut => CliError::Connect(format!(
            "no SuperLink answered at {address}: is it running, and is UDP open to it? (the Control \
             API is QUIC over UDP, port 9093 by default; a firewall opened for TCP blocks it)"
        )),
        other => CliError::Connect(format!("connection to {address} failed: {other}")),
    }
}

fn frame_error(error: FrameIoError, connection: &quinn::Connection, address: &str) -> CliError {
    if let Some(reason) = connection.close_reason() {
        return connection_error(&reason, address);
    }
    CliError::Connect(format!(
        "Control API session with {address} failed: {error}"
    ))
}

impl ControlClient {
    /// Connects to `federation`, authenticating with its operator key if it names one.
    pub async fn connect(federation: &Federation) -> Result<Self, CliError> {
        let address = federation.address.as_str();
        let (host, _) = address.rsplit_once(':').ok_or_else(|| {
            CliError::Config(format!("federation address {address:?} is not HOST:PORT"))
        })?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let remote = tokio::net::lookup_host(address)
            .await
            .map_err(|e| CliError::Connect(format!("cannot resolve {address}: {e}")))?
            .next()
            .ok_or_else(|| CliError::Connect(format!("{address} resolves to no address")))?;
        let identity = match &federation.operator_key {
            Some(path) => Some(certs::load::load_identity_key(path)?),
            None => None,
        };
        let tls = if federation.insecure {
            certs::tls::insecure_client_config(identity.as_ref(), wire::alpn::CONTROL)?
        } else {
            let roots = federation.root_certificates.as_ref().ok_or_else(|| {
                CliError::Config(
                    "the federation needs root-certificates (or insecure = true for development)"
                        .into(),
                )
            })?;
            certs::tls::client_config(
                &certs::load::load_certificates(roots)?,
                identity.as_ref(),
                wire::alpn::CONTROL,
            )?
        };
        let transport =
            certs::quic::transport(Duration::from_secs(30), Some(Duration::from_secs(5)));
        let config = certs::quic::client_config(tls, transport)?;
        let endpoint = certs::quic::client_endpoint(remote)
            .map_err(|e| CliError::Connect(format!("cannot open a UDP socket: {e}")))?;
        let connecting = endpoint
            .connect_with(config, remote, host)
            .map_err(|e| CliError::Connect(format!("cannot connect to {address}: {e}")))?;
        let opened = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let connection = connecting
                .await
                .map_err(|e| connection_error(&e, address))?;
            let (send, recv) = connection
                .open_bi()
                .await
                .map_err(|e| connection_error(&e, address))?;
            Ok::<_, CliError>((connection, send, recv))
        })
        .await
        .map_err(|_| {
            CliError::Connect(format!(
                "no SuperLink answered at {address} within {CONNECT_TIMEOUT:?}"
            ))
        })??;
        let (connection, mut send, mut recv) = opened;
        let exporter = certs::quic::exporter(&connection, EXPORTER_LABEL)
            .ok_or_else(|| CliError::Connect("no TLS exporter".into()))?;
        let sign = identity
            .as_ref()
            .map(|identity| move |message: &[u8]| identity.sign(message));
        let handshake = client_handshake::<Control, _, _>(
            &mut send,
            &mut recv,
            exporter,
            RESPONSE_FRAME_LIMIT,
            sign.as_ref()
                .map(|sign| sign as &(dyn wire::handshake::Signer + Sync)),
        );
        let operator = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| {
                CliError::Connect(format!(
                    "the SuperLink at {address} did not answer the handshake"
                ))
            })?
            .map_err(|error| match error {
                HandshakeError::Frame(error) => frame_error(error, &connection, address),
                HandshakeError::Refused(refusal) => {
                    CliError::Refused(format!("the SuperLink refused this operator: {refusal}"))
                }
                HandshakeError::KeyRequired => CliError::Refused(format!(
                    "the SuperLink asks for an operator key: set operator-key in the federation's \
                     table in {}",
                    federation.source.display()
                )),
                HandshakeError::Unexpected(frame) => {
                    CliError::Connect(format!("unexpected answer from the SuperLink: {frame}"))
                }
            })?;
        Ok(ControlClient {
            endpoint,
            connection,
            send,
            recv,
            operator,
        })
    }

    /// Sends one request and waits for its response.
    pub async fn request(&mut self, request: ControlRequest) -> Result<ControlResponse, CliError> {
        self.send_request(request).await?;
        self.receive().await
    }

    /// Sends a request without waiting (for requests answered by several frames).
    pub async fn send_request(&mut self, request: ControlRequest) -> Result<(), CliError> {
        let address = self.connection.remote_address().to_string();
        write_value(&mut self.send, &OperatorFrame::Request(request))
            .await
            .map_err(|e| frame_error(e, &self.connection, &address))
    }

    /// Reads the next response frame.
    pub async fn receive(&mut self) -> Result<ControlResponse, CliError> {
        let address = self.connection.remote_address().to_string();
        match read_value::<ControlFrame, _>(&mut self.recv, RESPONSE_FRAME_LIMIT)
            .await
            .map_err(|e| frame_error(e, &self.connection, &address))?
        {
            ControlFrame::Response(response) => Ok(response),
            other => Err(CliError::Connect(format!(
                "unexpected answer from the SuperLink: {other:?}"
            ))),
        }
    }

    /// Closes the session politely.
    pub async fn close(mut self) {
        let _ = self.send.finish();
        self.connection.close(close::NORMAL.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_millis(200), self.endpoint.wait_idle()).await;
    }
}
