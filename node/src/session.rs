//! One connection to the broker: QUIC with TLS 1.3 and this node's client certificate, then the
//! challenge-response bound to this connection, then heartbeats until something ends it.

use crate::settings::{NodeSettings, ServerTrust};
use crate::work::Worker;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use wire::NodeId;
use wire::close;
use wire::fleet::{BrokerFrame, Fleet, NodeFrame};
use wire::handshake::EXPORTER_LABEL;
use wire::io::handshake::{HandshakeError, client_handshake};
use wire::io::{FrameIoError, read_value, write_value};

/// Largest frame accepted on the session stream.
const SESSION_FRAME_LIMIT: u32 = 64 * 1024;

/// Longest wait for the broker to finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a session attempt or a session ended badly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The broker refused this node for good; retrying cannot help.
    #[error("{0}")]
    Permanent(String),
    /// A network or broker hiccup; try again.
    #[error("{0}")]
    Transient(String),
}

/// Turns a QUIC connection error into a verdict and a sentence a person can act on.
pub fn classify(error: &quinn::ConnectionError) -> SessionError {
    use quinn::ConnectionError as E;
    match error {
        E::ApplicationClosed(closed) => {
            let reason = String::from_utf8_lossy(&closed.reason).into_owned();
            match u32::try_from(u64::from(closed.error_code)).unwrap_or(u32::MAX) {
                close::REFUSED => {
                    SessionError::Permanent(format!("the SuperLink refused this node: {reason}"))
                }
                close::UNREGISTERED => SessionError::Permanent(
                    "this node was unregistered by an operator; its key can no longer be used"
                        .into(),
                ),
                close::REPLACED => SessionError::Permanent(
                    "another SuperNode connected with the same key and replaced this one".into(),
                ),
                _ => SessionError::Transient(format!(
                    "the SuperLink closed the connection: {reason}"
                )),
            }
        }
        E::ConnectionClosed(_) => match certs::quic::tls_alert(error) {
            Some(rustls::AlertDescription::NoApplicationProtocol) => {
                SessionError::Permanent(format!(
                    "the SuperLink does not speak this node's Fleet API ({}) on this address: check \
                 --superlink, and that the SuperLink runs the same release",
                    String::from_utf8_lossy(wire::alpn::FLEET)
                ))
            }
            Some(alert) => SessionError::Permanent(format!(
                "the SuperLink refused this node's key during TLS ({alert:?}): register it with \
                 `flwr supernode register <key>.pub`, or it was unregistered"
            )),
            None => SessionError::Transient(format!("connection closed: {error}")),
        },
        E::TransportError(transport) if certs::quic::tls_alert(error).is_some() => {
            SessionError::Permanent(format!(
                "TLS with the SuperLink failed: {} (check --root-certificates and the address's name)",
                transport.reason
            ))
        }
        E::TimedOut => SessionError::Transient(
            "the SuperLink stopped answering: is UDP open to it? (the Fleet API is QUIC over UDP)"
                .into(),
        ),
        other => SessionError::Transient(other.to_string()),
    }
}

fn frame_error(error: FrameIoError) -> SessionError {
    match error {
        FrameIoError::Io(io) => match io.downcast::<quinn::ReadError>() {
            Ok(quinn::ReadError::ConnectionLost(lost)) => classify(&lost),
            Ok(other) => SessionError::Transient(other.to_string()),
            Err(io) => match io.downcast::<quinn::WriteError>() {
                Ok(quinn::WriteError::ConnectionLost(lost)) => classify(&lost),
                Ok(other) => SessionError::Transient(other.to_string()),
                Err(io) => SessionError::Transient(io.to_string()),
            },
        },
        FrameIoError::Closed => {
            SessionError::Transient("the SuperLink closed the session stream".into())
        }
        FrameIoError::Wire(wire) => {
            SessionError::Transient(format!("malformed frame from the SuperLink: {wire}"))
        }
    }
}

/// `host:port` into the host (for TLS name checks) and a socket address.
pub async fn resolve(superlink: &str) -> Result<(String, SocketAddr), SessionError> {
    let (host, _) = superlink.rsplit_once(':').ok_or_else(|| {
        SessionError::Permanent(format!("--superlink {superlink:?} is not HOST:PORT"))
    })?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let address = tokio::net::lookup_host(superlink)
        .await
        .map_err(|e| SessionError::Transient(format!("cannot resolve {superlink}: {e}")))?
        .next()
        .ok_or_else(|| SessionError::Transient(format!("{superlink} resolves to no address")))?;
    Ok((host, address))
}

/// The QUIC client configuration for the node whose key is `identity`.
pub fn client_config(
    settings: &NodeSettings,
    identity: &certs::IdentityKey,
    heartbeat: Duration,
) -> Result<quinn::ClientConfig, SessionError> {
    let tls = match &settings.trust {
        ServerTrust::Roots(roots) => {
            certs::tls::client_config(roots, Some(identity), wire::alpn::FLEET)
        }
        ServerTrust::Insecure => {
            certs::tls::insecure_client_config(Some(identity), wire::alpn::FLEET)
        }
    }
    .map_err(|e| SessionError::Permanent(e.to_string()))?;
    let transport = certs::quic::transport(heartbeat * 3, Some(heartbeat));
    certs::quic::client_config(tls, transport).map_err(|e| SessionError::Permanent(e.to_string()))
}

/// An authenticated session.
pub struct Session {
    /// The connection.
    pub connection: quinn::Connection,
    /// This node's id, as the broker knows it.
    pub node_id: NodeId,
    /// How often the broker wants heartbeats.
    pub heartbeat_interval: Duration,
    /// Session stream, node to broker.
    send: quinn::SendStream,
    /// Session stream, broker to node.
    recv: quinn::RecvStream,
}

/// Connects and authenticates with `identity`.
pub async fn open(
    endpoint: &quinn::Endpoint,
    settings: &NodeSettings,
    identity: &certs::IdentityKey,
    config: quinn::ClientConfig,
) -> Result<Session, SessionError> {
    let (host, address) = resolve(&settings.superlink).await?;
    let connecting = endpoint
        .connect_with(config, address, &host)
        .map_err(|e| SessionError::Permanent(format!("cannot connect to {address}: {e}")))?;
    let handshake = async {
        let connection = connecting.await.map_err(|e| classify(&e))?;
        let session = authenticate(&connection, identity).await;
        if session.is_err() {
            // TLS 1.3 lets the client finish before the server judged its certificate: a refusal
            // shows up as the connection closing. Prefer that reason when there is one.
            if let Some(reason) = connection.close_reason() {
                return Err(classify(&reason));
            }
        }
        session
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| {
            SessionError::Transient(format!(
                "no answer from {address} within {HANDSHAKE_TIMEOUT:?}: is the SuperLink running, \
                 and is UDP port {} open to it? (the Fleet API is QUIC over UDP)",
                address.port()
            ))
        })?
}

async fn authenticate(
    connection: &quinn::Connection,
    identity: &certs::IdentityKey,
) -> Result<Session, SessionError> {
    let exporter = certs::quic::exporter(connection, EXPORTER_LABEL)
        .ok_or_else(|| SessionError::Transient("no TLS exporter on this connection".into()))?;
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| classify(&e))?;
    let sign = |message: &[u8]| identity.sign(message);
    let welcome = client_handshake::<Fleet, _, _>(
        &mut send,
        &mut recv,
        exporter,
        SESSION_FRAME_LIMIT,
        Some(&sign),
    )
    .await
    .map_err(|error| match error {
        HandshakeError::Frame(error) => frame_error(error),
        HandshakeError::Refused(refusal) => {
            SessionError::Permanent(format!("the SuperLink refused this node: {refusal}"))
        }
        other => SessionError::Transient(format!("handshake with the SuperLink failed: {other}")),
    })?;
    Ok(Session {
        connection: connection.clone(),
        node_id: welcome.node_id,
        heartbeat_interval: Duration::from_millis(welcome.heartbeat_interval_ms.clamp(100, 60_000)),
        send,
        recv,
    })
}

/// How a session ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// Shutdown was requested; the broker was told goodbye.
    Shutdown,
}

impl Session {
    /// Sends heartbeats and serves instructions, whose apps get `node_config`, until shutdown
    /// (then says goodbye) or until the connection fails.
    pub async fn run(
        self,
        worker: Arc<Worker>,
        node_config: Arc<wire::ConfigRecord>,
        shutdown: CancellationToken,
    ) -> Result<SessionEnd, SessionError> {
        let Session {
            connection,
            node_id,
            heartbeat_interval,
            mut send,
            mut recv,
        } = self;
        let mut work = tokio::task::JoinSet::new();
        // Replies a lost connection left behind go out beside the heartbeats, not before them:
        // a SuperLink gives up on a node that is silent for its heartbeat timeout, and a large
        // reply on a slow link takes longer than that to send.
        {
            let worker = worker.clone();
            let connection = connection.clone();
            work.spawn(async move { worker.flush_outbox(node_id, &connection).await });
        }
        // Reads happen in their own task: a read cancelled halfway would lose part of a frame.
        let (acks, mut ack_rx) = tokio::sync::mpsc::channel::<Result<BrokerFrame, SessionError>>(8);
        let reader = tokio::spawn(async move {
            loop {
                let frame = read_value::<BrokerFrame, _>(&mut recv, SESSION_FRAME_LIMIT)
                    .await
                    .map_err(frame_error);
                let failed = frame.is_err();
                if acks.send(frame).await.is_err() || failed {
                    return;
                }
            }
        });
        let deadline = heartbeat_interval * 3;
        let mut ticker = tokio::time::interval(heartbeat_interval);
        let mut seq = 0u64;
        let mut last_ack = tokio::time::Instant::now();
        let result = loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = write_value(&mut send, &NodeFrame::Goodbye).await;
                    let _ = send.finish();
                    // Give the goodbye a moment to leave before closing.
                    let _ = tokio::time::timeout(Duration::from_millis(500), connection.closed()).await;
                    connection.close(close::NORMAL.into(), b"node shutting down");
                    break Ok(SessionEnd::Shutdown);
                }
                _ = ticker.tick() => {
                    if last_ack.elapsed() > deadline {
                        connection.close(close::TIMEOUT.into(), b"heartbeats unanswered");
                        break Err(SessionError::Transient("the SuperLink stopped answering heartbeats".into()));
                    }
                    seq += 1;
                    if let Err(error) = write_value(&mut send, &NodeFrame::Heartbeat { seq }).await {
                        break Err(frame_error(error));
                    }
                }
                stream = connection.accept_bi() => match stream {
                    Ok((stream_send, stream_recv)) => {
                        work.spawn(worker.clone().serve(node_id, node_config.clone(), connection.clone(), stream_send, stream_recv));
                    }
                    Err(error) => break Err(classify(&error)),
                },
                Some(_) = work.join_next(), if !work.is_empty() => {}
                frame = ack_rx.recv() => match frame {
                    Some(Ok(BrokerFrame::HeartbeatAck { .. })) => last_ack = tokio::time::Instant::now(),
                    Some(Ok(BrokerFrame::RunStopped { run_id })) => worker.stop_run(run_id),
                    Some(Ok(other)) => break Err(SessionError::Transient(format!("unexpected frame from the SuperLink: {other:?}"))),
                    Some(Err(error)) => break Err(connection.close_reason().map(|r| classify(&r)).unwrap_or(error)),
                    None => break Err(SessionError::Transient("session stream ended".into())),
                },
                reason = connection.closed() => break Err(classify(&reason)),
            }
        };
        reader.abort();
        // Work in progress keeps running: its replies go to the outbox if they cannot be sent now.
        work.detach_all();
        result
    }
}
