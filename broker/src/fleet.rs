//! One node connection on the Fleet API: authenticate, then keep the session alive.

use crate::admission::Slot;
use crate::authentication::{self, HandshakeFailure};
use crate::config::NodeAuth;
use crate::state::Shared;
use crate::store::{AUTOMATIC_OWNER, StoreError};
use certs::PublicKey;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use wire::NodeId;
use wire::close;
use wire::control::NodeStatus;
use wire::fleet::{BrokerFrame, Fleet, NodeFrame, NodeWelcome};
use wire::handshake::Refusal;
use wire::io::handshake::{Expect, Verified, server_handshake};
use wire::io::{FrameIoError, read_value, write_value};
use wire::message::now_ms;

/// Largest session-stream frame: session frames are small; anything bigger is an attack.
const SESSION_FRAME_LIMIT: u32 = 64 * 1024;

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
        let (connection, node_id, verified, mut send, recv) = match authenticated {
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
            let _ = verified.refuse(&mut send, Refusal::Revoked).await;
            connection.close(close::UNREGISTERED.into(), b"unregistered by an operator");
            tracing::warn!(reason = "revoked during its handshake", "node refused");
            shared.metrics.handshake_failed("revoked");
            return;
        };
        let generation = attached.generation;
        let end = match welcome(&shared, node_id, verified, &mut send).await {
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
    Verified<Fleet>,
    quinn::SendStream,
    quinn::RecvStream,
);

/// TLS (the client key was already vetted by the verifier), then the challenge-response, then the
/// registry. Returns the session stream of a node that may join, to be welcomed.
async fn authenticate(
    shared: &Shared,
    incoming: quinn::Incoming,
) -> Result<Session, HandshakeFailure> {
    let opened = authentication::open(incoming, shared.config.tls_timeout).await?;
    let connection = opened.connection.clone();
    authentication::close_if_refused(&connection, prove_and_admit(shared, opened).await)
}

async fn prove_and_admit(
    shared: &Shared,
    opened: authentication::Opened,
) -> Result<Session, HandshakeFailure> {
    let authentication::Opened {
        connection,
        exporter,
        mut send,
        mut recv,
    } = opened;
    let key = certs::quic::peer_public_key(&connection);
    let verify =
        |message: &[u8], signature: &[u8]| key.is_some_and(|k| k.verify(message, signature));
    let expect = match key {
        Some(_) => Expect::Proof(&verify),
        None => Expect::Refuse(Refusal::KeyRequired),
    };
    let verified = server_handshake::<Fleet, _, _>(
        &mut send,
        &mut recv,
        exporter,
        SESSION_FRAME_LIMIT,
        expect,
    )
    .await?;
    let Some(key) = key else {
        return Err(verified
            .refuse(&mut send, Refusal::KeyRequired)
            .await
            .into());
    };
    let node_id = match admit(shared, &key)? {
        Ok(node_id) => node_id,
        Err(refusal) => return Err(verified.refuse(&mut send, refusal).await.into()),
    };
    // The session stream plus a few concurrent replies; the full window for model uploads.
    certs::quic::open_up(&connection, 1 + shared.config.reply_streams_per_node);
    Ok((connection, node_id, verified, send, recv))
}

/// Records the node online (committed first), then tells it so.
async fn welcome(
    shared: &Shared,
    node_id: NodeId,
    verified: Verified<Fleet>,
    send: &mut quinn::SendStream,
) -> Result<(), HandshakeFailure> {
    shared
        .store
        .set_node_status(node_id, NodeStatus::Online, now_ms())?;
    let welcome = NodeWelcome {
        node_id,
        heartbeat_interval_ms: shared.config.heartbeat_interval.as_millis() as u64,
    };
    verified.welcome(send, welcome).await?;
    Ok(())
}

/// The registry's verdict on a key that proved possession: its node id, or a refusal.
fn admit(shared: &Shared, key: &PublicKey) -> Result<Result<NodeId, Refusal>, StoreError> {
    match shared.store.node_by_key(key)? {
        Some(record) if record.info.status == NodeStatus::Unregistered => Ok(Err(Refusal::Revoked)),
        Some(record) => Ok(Ok(record.info.node_id)),
        None if shared.config.node_auth == NodeAuth::Automatic => {
            match shared.store.register_node(key, AUTOMATIC_OWNER, now_ms()) {
                Ok(info) => Ok(Ok(info.node_id)),
                // A concurrent connection with the same key registered it first.
                Err(StoreError::KeyInUse) => admit(shared, key),
                Err(other) => Err(other),
            }
        }
        None => Ok(Err(Refusal::UnknownKey)),
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
    let mut liveness = Liveness::new(shared.config.heartbeat_timeout);
    let end = loop {
        let heartbeat = tokio::time::sleep_until(liveness.deadline());
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
                Ok((stream_send, stream_recv)) => {
                    replies.spawn(crate::delivery::serve_node_stream(shared.clone(), node_id, stream_send, stream_recv));
                }
                Err(_) => break "connection lost",
            },
            Some(_) = replies.join_next(), if !replies.is_empty() => {}
            frame = frames.recv() => match frame {
                Some(Ok(NodeFrame::Heartbeat { seq })) => {
                    liveness.heartbeat();
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

/// When a silent node is given up on: a heartbeat timeout after its last heartbeat, however much
/// else happens on its connection meanwhile (pushes, replies), so that only heartbeats keep a node
/// online.
struct Liveness {
    /// When the last heartbeat came (or the session started).
    last_heartbeat: tokio::time::Instant,
    /// How long a node may stay silent.
    timeout: std::time::Duration,
}

impl Liveness {
    fn new(timeout: std::time::Duration) -> Self {
        Liveness {
            last_heartbeat: tokio::time::Instant::now(),
            timeout,
        }
    }

    /// A heartbeat arrived now.
    fn heartbeat(&mut self) {
        self.last_heartbeat = tokio::time::Instant::now();
    }

    /// When the node is given up on unless another heartbeat comes.
    fn deadline(&self) -> tokio::time::Instant {
        self.last_heartbeat + self.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::Liveness;
    use std::time::Duration;

    const TIMEOUT: Duration = Duration::from_secs(3);

    #[tokio::test(start_paused = true)]
    async fn without_a_heartbeat_the_deadline_stays_put() {
        let liveness = Liveness::new(TIMEOUT);
        let start = tokio::time::Instant::now();
        // The session loop makes a fresh sleep on every event: events every second, no heartbeat.
        for _ in 0..2 {
            tokio::time::advance(Duration::from_secs(1)).await;
            assert_eq!(liveness.deadline(), start + TIMEOUT);
        }
        tokio::time::sleep_until(liveness.deadline()).await;
        assert_eq!(start.elapsed(), TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_moves_the_deadline() {
        let mut liveness = Liveness::new(TIMEOUT);
        tokio::time::advance(Duration::from_secs(2)).await;
        liveness.heartbeat();
        let beat = tokio::time::Instant::now();
        tokio::time::sleep_until(liveness.deadline()).await;
        assert_eq!(beat.elapsed(), TIMEOUT);
    }
}
