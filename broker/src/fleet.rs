//! One node connection on the Fleet API: authenticate, then keep the session alive.

use crate::admission::Slot;
use crate::config::NodeAuth;
use crate::server::Shared;
use crate::store::{AUTOMATIC_OWNER, StoreError};
use certs::PublicKey;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use wire::NodeId;
use wire::control::NodeStatus;
use wire::fleet::{BrokerFrame, NodeFrame, PROTOCOL_VERSION, close};
use wire::handshake::{Domain, Refusal, ServerHandshake};
use wire::io::{FrameIoError, read_value, write_value};
use wire::message::now_ms;

/// Largest session-stream frame: session frames are small; anything bigger is an attack.
const SESSION_FRAME_LIMIT: u32 = 64 * 1024;

/// Why a connection ended before or during authentication (logged, never sent in detail).
#[derive(Debug, thiserror::Error)]
enum HandshakeFailure {
    #[error("TLS handshake failed: {0}")]
    Tls(quinn::ConnectionError),
    #[error("TLS handshake took too long")]
    TlsTimeout,
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("bad frame: {0}")]
    Frame(#[from] FrameIoError),
    #[error("refused: {0}")]
    Refused(Refusal),
    #[error("registry error: {0}")]
    Store(#[from] StoreError),
    #[error("no channel binding available")]
    NoExporter,
}

impl HandshakeFailure {
    /// The reason's label on the metrics endpoint.
    fn label(&self) -> &'static str {
        match self {
            HandshakeFailure::Tls(_) => "tls",
            HandshakeFailure::TlsTimeout => "tls_timeout",
            HandshakeFailure::Connection(_) => "connection_lost",
            HandshakeFailure::Frame(_) => "protocol",
            HandshakeFailure::Refused(Refusal::BadProof) => "bad_proof",
            HandshakeFailure::Refused(Refusal::UnknownKey) => "unknown_key",
            HandshakeFailure::Refused(Refusal::Revoked) => "revoked",
            HandshakeFailure::Refused(Refusal::UnsupportedVersion(_)) => "version",
            HandshakeFailure::Refused(_) => "refused",
            HandshakeFailure::Store(_) => "storage",
            HandshakeFailure::NoExporter => "tls",
        }
    }
}

/// Serves one incoming Fleet connection to the end.
pub async fn handle(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    slot: Slot,
    shutdown: CancellationToken,
) {
    let remote = incoming.remote_address();
    let span = tracing::info_span!("fleet", %remote, node_id = tracing::field::Empty);
    async move {
        let authenticated = tokio::time::timeout(
            shared.config.handshake_timeout,
            authenticate(&shared, incoming),
        )
        .await;
        drop(slot);
        let (connection, node_id, mut send, recv) = match authenticated {
            Ok(Ok(session)) => session,
            Ok(Err(failure)) => {
                tracing::warn!(reason = %failure, "node refused");
                shared.metrics.handshake_failed(failure.label());
                return;
            }
            Err(_) => {
                tracing::warn!(reason = "handshake timeout", "node refused");
                shared.metrics.handshake_failed("timeout");
                return;
            }
        };
        tracing::Span::current().record("node_id", node_id.0);
        let Some(attached) = shared
            .sessions
            .attach(node_id, connection.clone(), close::REPLACED)
        else {
            // Unregistered while it authenticated.
            connection.close(close::UNREGISTERED.into(), b"unregistered by an operator");
            tracing::warn!(reason = "revoked during its handshake", "node refused");
            shared.metrics.handshake_failed("revoked");
            return;
        };
        let generation = attached.generation;
        let end = match welcome(&shared, node_id, &mut send).await {
            Ok(()) => {
                tracing::info!("node online");
                let delivery = tokio::spawn(
                    crate::delivery::deliver(
                        shared.clone(),
                        node_id,
                        connection.clone(),
                        attached.wake,
                    )
                    .instrument(tracing::Span::current()),
                );
                let end = run_session(
                    &shared,
                    node_id,
                    &connection,
                    send,
                    recv,
                    attached.pushes,
                    shutdown,
                )
                .await;
                delivery.abort();
                end
            }
            Err(error) => {
                tracing::warn!(%error, "could not welcome the node");
                connection.close(close::PROTOCOL.into(), b"welcome failed");
                "welcome failed"
            }
        };
        // Only the current session may mark the node offline: a newer one may already be live.
        if shared.sessions.detach(node_id, generation)
            && let Err(error) = shared
                .store
                .set_node_status(node_id, NodeStatus::Offline, now_ms())
        {
            tracing::error!(%error, "could not record the node as offline");
        }
        shared.metrics.connection_closed(&connection);
        tracing::info!(reason = end, "node offline");
    }
    .instrument(span)
    .await
}

type Session = (
    quinn::Connection,
    NodeId,
    quinn::SendStream,
    quinn::RecvStream,
);

/// TLS (the client key was already vetted by the verifier), then the challenge-response, then the
/// registry. Returns the session stream of a node that may join.
async fn authenticate(
    shared: &Shared,
    incoming: quinn::Incoming,
) -> Result<Session, HandshakeFailure> {
    // TLS gets a deadline of its own: a peer that stalls it holds a slot only briefly.
    let connection = tokio::time::timeout(shared.config.tls_timeout, incoming)
        .await
        .map_err(|_| HandshakeFailure::TlsTimeout)?
        .map_err(HandshakeFailure::Tls)?;
    let refuse = |connection: &quinn::Connection, refusal: Refusal| {
        connection.close(close::REFUSED.into(), refusal.to_string().as_bytes());
        HandshakeFailure::Refused(refusal)
    };
    let Some(key) = certs::quic::peer_public_key(&connection) else {
        return Err(refuse(&connection, Refusal::KeyRequired));
    };
    let exporter = certs::quic::exporter(&connection).ok_or(HandshakeFailure::NoExporter)?;
    let (mut send, mut recv) = connection.accept_bi().await?;

    match read_value::<NodeFrame, _>(&mut recv, SESSION_FRAME_LIMIT).await? {
        NodeFrame::Hello { version } if version == PROTOCOL_VERSION => {}
        NodeFrame::Hello { version } => {
            let refusal = Refusal::UnsupportedVersion(version);
            let _ = write_value(&mut send, &BrokerFrame::Refused(refusal.clone())).await;
            return Err(refuse(&connection, refusal));
        }
        _ => return Err(refuse(&connection, Refusal::Unexpected)),
    }
    let (mut handshake, challenge) = ServerHandshake::new(Domain::Fleet, exporter);
    write_value(&mut send, &BrokerFrame::Challenge(challenge)).await?;
    let NodeFrame::Proof(proof) =
        read_value::<NodeFrame, _>(&mut recv, SESSION_FRAME_LIMIT).await?
    else {
        return Err(refuse(&connection, Refusal::Unexpected));
    };
    if let Err(refusal) = handshake.receive_proof(&proof, &key) {
        let _ = write_value(&mut send, &BrokerFrame::Refused(refusal.clone())).await;
        return Err(refuse(&connection, refusal));
    }
    let node_id = match admit(shared, &key) {
        Ok(node_id) => node_id,
        Err(HandshakeFailure::Refused(refusal)) => {
            let _ = write_value(&mut send, &BrokerFrame::Refused(refusal.clone())).await;
            return Err(refuse(&connection, refusal));
        }
        Err(other) => return Err(other),
    };
    // The session stream plus a few concurrent replies; the full window for model uploads.
    certs::quic::open_up(&connection, 1 + shared.config.reply_streams_per_node);
    Ok((connection, node_id, send, recv))
}

/// Records the node online (committed first), then tells it so.
async fn welcome(
    shared: &Shared,
    node_id: NodeId,
    send: &mut quinn::SendStream,
) -> Result<(), HandshakeFailure> {
    shared
        .store
        .set_node_status(node_id, NodeStatus::Online, now_ms())?;
    let welcome = BrokerFrame::Welcome {
        node_id,
        heartbeat_interval_ms: shared.config.heartbeat_interval.as_millis() as u64,
    };
    write_value(send, &welcome).await?;
    Ok(())
}

/// The registry's verdict on a key that proved possession: its node id, or a refusal.
fn admit(shared: &Shared, key: &PublicKey) -> Result<NodeId, HandshakeFailure> {
    match shared.store.node_by_key(key)? {
        Some(record) if record.info.status == NodeStatus::Unregistered => {
            Err(HandshakeFailure::Refused(Refusal::Revoked))
        }
        Some(record) => Ok(record.info.node_id),
        None if shared.config.node_auth == NodeAuth::Automatic => {
            match shared.store.register_node(key, AUTOMATIC_OWNER, now_ms()) {
                Ok(info) => Ok(info.node_id),
                // A concurrent connection with the same key registered it first.
                Err(StoreError::KeyInUse) => admit(shared, key),
                Err(other) => Err(other.into()),
            }
        }
        None => Err(HandshakeFailure::Refused(Refusal::UnknownKey)),
    }
}

/// Writes `frame` on the session stream within the heartbeat timeout; `false` if it failed or the
/// node stopped reading (a node must not stay online by filling its own window).
async fn write_within(shared: &Shared, send: &mut quinn::SendStream, frame: &BrokerFrame) -> bool {
    matches!(
        tokio::time::timeout(shared.config.heartbeat_timeout, write_value(send, frame)).await,
        Ok(Ok(()))
    )
}

/// Answers heartbeats, pushes frames, and accepts reply streams until the node leaves, goes
/// silent, breaks the protocol, or the broker stops. Returns why the session ended.
async fn run_session(
    shared: &Arc<Shared>,
    node_id: NodeId,
    connection: &quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    mut pushes: tokio::sync::mpsc::UnboundedReceiver<BrokerFrame>,
    shutdown: CancellationToken,
) -> &'static str {
    // Session frames are read in their own task: a read cancelled halfway would lose part of a frame.
    let (frames_tx, mut frames) = tokio::sync::mpsc::channel(8);
    let reader = tokio::spawn(async move {
        loop {
            let frame = read_value::<NodeFrame, _>(&mut recv, SESSION_FRAME_LIMIT).await;
            let failed = frame.is_err();
            if frames_tx.send(frame).await.is_err() || failed {
                return;
            }
        }
    });
    let mut replies = tokio::task::JoinSet::new();
    let end = loop {
        let heartbeat = tokio::time::sleep(shared.config.heartbeat_timeout);
        tokio::select! {
            _ = shutdown.cancelled() => {
                connection.close(close::SHUTDOWN.into(), b"broker shutting down");
                break "broker shutting down";
            }
            _ = heartbeat => {
                connection.close(close::TIMEOUT.into(), b"heartbeat timeout");
                break "heartbeat timeout";
            }
            Some(frame) = pushes.recv() => {
                if !write_within(shared, &mut send, &frame).await {
                    break "connection lost or not reading";
                }
            }
            stream = connection.accept_bi() => match stream {
                Ok((reply_send, reply_recv)) => {
                    replies.spawn(crate::delivery::receive_reply(shared.clone(), node_id, reply_send, reply_recv));
                }
                Err(_) => break "connection lost",
            },
            Some(_) = replies.join_next(), if !replies.is_empty() => {}
            frame = frames.recv() => match frame {
                Some(Ok(NodeFrame::Heartbeat { seq })) => {
                    if !write_within(shared, &mut send, &BrokerFrame::HeartbeatAck { seq }).await {
                        break "connection lost or not reading";
                    }
                }
                Some(Ok(NodeFrame::Goodbye)) => {
                    connection.close(close::NORMAL.into(), b"goodbye");
                    break "node said goodbye";
                }
                Some(Ok(_)) | Some(Err(FrameIoError::Wire(_))) => {
                    connection.close(close::PROTOCOL.into(), b"protocol violation");
                    break "protocol violation";
                }
                Some(Err(_)) | None => break "connection lost",
            },
        }
    };
    reader.abort();
    replies.abort_all();
    end
}
