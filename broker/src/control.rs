//! One operator connection on the Control API: authenticate, then answer requests.

use crate::config::OperatorAuth;
use crate::server::Shared;
use crate::store::{AUTOMATIC_OWNER, StoreError};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use wire::control::{
    ControlError, ControlFrame, ControlRequest, ControlResponse, NodeStatus, OperatorFrame,
};
use wire::fleet::{PROTOCOL_VERSION, close};
use wire::handshake::{Domain, Refusal, ServerHandshake};
use wire::io::{FrameIoError, read_value, write_value};
use wire::message::now_ms;

/// Largest request frame (a public key file is the biggest thing an operator sends here).
const REQUEST_FRAME_LIMIT: u32 = 256 * 1024;

/// Operator name used when the broker has no operator keys and trusts loopback.
pub const LOCAL_OPERATOR: &str = "local";

/// Whether `address` is on this host (IPv4-mapped IPv6 included).
fn is_loopback(address: SocketAddr) -> bool {
    match address.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("TLS handshake failed: {0}")]
    Tls(quinn::ConnectionError),
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("bad frame: {0}")]
    Frame(#[from] FrameIoError),
    #[error("refused: {0}")]
    Refused(Refusal),
    #[error("no channel binding available")]
    NoExporter,
}

/// Serves one incoming Control connection to the end.
pub async fn handle(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    permit: OwnedSemaphorePermit,
    shutdown: CancellationToken,
) {
    let remote = incoming.remote_address();
    let span = tracing::info_span!("control", %remote, operator = tracing::field::Empty);
    async move {
        let authenticated = tokio::time::timeout(
            shared.config.handshake_timeout,
            authenticate(&shared, incoming, remote),
        )
        .await;
        drop(permit);
        let (connection, operator, mut send, mut recv) = match authenticated {
            Ok(Ok(session)) => session,
            Ok(Err(failure)) => {
                tracing::warn!(reason = %failure, "operator refused");
                return;
            }
            Err(_) => {
                tracing::warn!(reason = "handshake timeout", "operator refused");
                return;
            }
        };
        tracing::Span::current().record("operator", operator.as_str());
        loop {
            let frame = tokio::select! {
                _ = shutdown.cancelled() => {
                    connection.close(close::SHUTDOWN.into(), b"broker shutting down");
                    return;
                }
                frame = read_value::<OperatorFrame, _>(&mut recv, REQUEST_FRAME_LIMIT) => frame,
            };
            let request = match frame {
                Ok(OperatorFrame::Request(request)) => request,
                Ok(_) | Err(FrameIoError::Wire(_)) => {
                    connection.close(close::PROTOCOL.into(), b"protocol violation");
                    return;
                }
                Err(_) => return,
            };
            let response = answer(&shared, &operator, request);
            if write_value(&mut send, &ControlFrame::Response(response))
                .await
                .is_err()
            {
                return;
            }
        }
    }
    .instrument(span)
    .await
}

type Session = (
    quinn::Connection,
    String,
    quinn::SendStream,
    quinn::RecvStream,
);

async fn authenticate(
    shared: &Shared,
    incoming: quinn::Incoming,
    remote: SocketAddr,
) -> Result<Session, Failure> {
    let connection = incoming.await.map_err(Failure::Tls)?;
    let (mut send, mut recv) = connection.accept_bi().await?;
    let refuse = |connection: &quinn::Connection, refusal: Refusal| {
        connection.close(close::REFUSED.into(), refusal.to_string().as_bytes());
        Failure::Refused(refusal)
    };
    match read_value::<OperatorFrame, _>(&mut recv, REQUEST_FRAME_LIMIT).await? {
        OperatorFrame::Hello { version } if version == PROTOCOL_VERSION => {}
        OperatorFrame::Hello { version } => {
            let refusal = Refusal::UnsupportedVersion(version);
            let _ = write_value(&mut send, &ControlFrame::Refused(refusal.clone())).await;
            return Err(refuse(&connection, refusal));
        }
        _ => return Err(refuse(&connection, Refusal::Unexpected)),
    }
    let operator = match &shared.config.operator_auth {
        OperatorAuth::LoopbackOnly => {
            if !is_loopback(remote) {
                let refusal = Refusal::KeyRequired;
                let _ = write_value(&mut send, &ControlFrame::Refused(refusal.clone())).await;
                return Err(refuse(&connection, refusal));
            }
            LOCAL_OPERATOR.to_string()
        }
        OperatorAuth::Keys(lines) => {
            let key = certs::quic::peer_public_key(&connection);
            let Some(line) = key.and_then(|key| lines.iter().find(|line| line.key == key)) else {
                let _ = write_value(&mut send, &ControlFrame::Refused(Refusal::NotOperator)).await;
                return Err(refuse(&connection, Refusal::NotOperator));
            };
            let exporter = certs::quic::exporter(&connection).ok_or(Failure::NoExporter)?;
            let (mut handshake, challenge) = ServerHandshake::new(Domain::Control, exporter);
            write_value(&mut send, &ControlFrame::Challenge(challenge)).await?;
            let OperatorFrame::Proof(proof) =
                read_value::<OperatorFrame, _>(&mut recv, REQUEST_FRAME_LIMIT).await?
            else {
                return Err(refuse(&connection, Refusal::Unexpected));
            };
            if let Err(refusal) = handshake.receive_proof(&proof, &line.key) {
                let _ = write_value(&mut send, &ControlFrame::Refused(refusal.clone())).await;
                return Err(refuse(&connection, refusal));
            }
            if line.comment.is_empty() {
                line.key.fingerprint()
            } else {
                line.comment.clone()
            }
        }
    };
    write_value(
        &mut send,
        &ControlFrame::Welcome {
            operator: operator.clone(),
        },
    )
    .await?;
    Ok((connection, operator, send, recv))
}

fn store_error(error: StoreError) -> ControlError {
    match error {
        StoreError::KeyInUse => ControlError::KeyInUse,
        StoreError::UnknownNode(id) => ControlError::UnknownNode(id),
        StoreError::AlreadyUnregistered(id) => ControlError::AlreadyUnregistered(id),
        other => ControlError::Internal(other.to_string()),
    }
}

/// Carries out one request for `operator`.
fn answer(shared: &Shared, operator: &str, request: ControlRequest) -> ControlResponse {
    let result = match request {
        ControlRequest::RegisterNode { public_key } => register(shared, operator, &public_key),
        ControlRequest::UnregisterNode { node_id } => unregister(shared, operator, node_id),
        ControlRequest::ListNodes {
            include_unregistered,
        } => shared
            .store
            .list_nodes()
            .map(|nodes| {
                ControlResponse::Nodes(
                    nodes
                        .into_iter()
                        .filter(|n| include_unregistered || n.status != NodeStatus::Unregistered)
                        .collect(),
                )
            })
            .map_err(store_error),
    };
    result.unwrap_or_else(ControlResponse::Error)
}

fn register(shared: &Shared, operator: &str, text: &str) -> Result<ControlResponse, ControlError> {
    let line = certs::load::parse_public_key(text).map_err(ControlError::InvalidKey)?;
    let info = shared
        .store
        .register_node(&line.key, operator, now_ms())
        .map_err(store_error)?;
    tracing::info!(node_id = info.node_id.0, "node registered");
    Ok(ControlResponse::NodeRegistered {
        node_id: info.node_id,
    })
}

fn unregister(
    shared: &Shared,
    operator: &str,
    node_id: wire::NodeId,
) -> Result<ControlResponse, ControlError> {
    let record = shared
        .store
        .node(node_id)
        .map_err(store_error)?
        .ok_or(ControlError::UnknownNode(node_id))?;
    // An operator may remove their own nodes and self-registered ones, not a colleague's.
    if record.info.owner != operator && record.info.owner != AUTOMATIC_OWNER {
        return Err(ControlError::NotOwner(node_id));
    }
    shared
        .store
        .unregister_node(node_id, now_ms())
        .map_err(store_error)?;
    shared
        .sessions
        .close(node_id, close::UNREGISTERED, "unregistered by an operator");
    tracing::info!(node_id = node_id.0, "node unregistered");
    Ok(ControlResponse::NodeUnregistered { node_id })
}
