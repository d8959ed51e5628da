//! One operator connection on the Control API: authenticate, then answer requests.

use crate::admission::{Slot, is_loopback};
use crate::authentication::{self, HandshakeFailure};
use crate::config::OperatorAuth;
use crate::runs::{RunEvent, runner};
use crate::state::Shared;
use crate::store::{AUTOMATIC_OWNER, StoreError};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use wire::RunId;
use wire::close;
use wire::control::Control;
use wire::control::{
    ControlError, ControlFrame, ControlRequest, ControlResponse, LogLine, NodeStatus,
    OperatorFrame, RunStatus,
};
use wire::handshake::Refusal;
use wire::io::handshake::{Expect, server_handshake};
use wire::io::{FrameIoError, read_value, write_value};
use wire::message::now_ms;

/// Largest request frame (a public key file is the biggest thing an operator sends here).
const REQUEST_FRAME_LIMIT: u32 = 256 * 1024;

/// Operator name used when the broker has no operator keys and trusts loopback.
pub const LOCAL_OPERATOR: &str = "local";

/// Serves one incoming Control connection to the end.
pub async fn handle(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    slot: Slot,
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
        drop(slot);
        let (connection, operator, mut send, mut recv) = match authenticated {
            Ok(Ok(session)) => session,
            Ok(Err(failure)) => {
                tracing::warn!(reason = %failure, label = failure.label(), "operator refused");
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
            let written = match request {
                ControlRequest::Log {
                    run_id,
                    after,
                    follow,
                } => send_log(&shared, &mut send, run_id, after, follow, &shutdown).await,
                ControlRequest::OfferBundle {
                    hash,
                    size,
                    signatures,
                } => {
                    match crate::bundles::receive(
                        &shared, &mut send, &mut recv, hash, size, signatures,
                    )
                    .await
                    {
                        Ok(()) => Ok(()),
                        Err(error) => {
                            tracing::warn!(%error, "bundle upload failed");
                            connection.close(close::PROTOCOL.into(), b"bundle upload failed");
                            return;
                        }
                    }
                }
                request => {
                    // Reading the store (a run's artifacts, a bundle checked again before its run
                    // starts) is kept off the runtime's threads, which carry every connection.
                    let (shared, operator) = (shared.clone(), operator.clone());
                    let response =
                        tokio::task::spawn_blocking(move || answer(&shared, &operator, request))
                            .await
                            .unwrap_or_else(|error| {
                                ControlResponse::Error(ControlError::Internal(error.to_string()))
                            });
                    write_value(&mut send, &ControlFrame::Response(response)).await
                }
            };
            if written.is_err() {
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
) -> Result<Session, HandshakeFailure> {
    let authentication::Opened {
        connection,
        exporter,
        mut send,
        mut recv,
    } = authentication::open(incoming, shared.config.tls_timeout).await?;
    let key = certs::quic::peer_public_key(&connection);
    let verify =
        |message: &[u8], signature: &[u8]| key.is_some_and(|k| k.verify(message, signature));
    // Who this may be, from the TLS session alone: a local operator, an operator key, or no one.
    let (expect, operator) = match &shared.config.operator_auth {
        OperatorAuth::LoopbackOnly if is_loopback(remote) => {
            (Expect::NoProof, Some(LOCAL_OPERATOR.to_string()))
        }
        OperatorAuth::LoopbackOnly => (Expect::Refuse(Refusal::KeyRequired), None),
        OperatorAuth::Keys(lines) => {
            match key.and_then(|key| lines.iter().find(|line| line.key == key)) {
                Some(line) => (Expect::Proof(&verify), Some(operator_name(line))),
                None => (Expect::Refuse(Refusal::NotOperator), None),
            }
        }
    };
    let handshake = async {
        let verified = server_handshake::<Control, _, _>(
            &mut send,
            &mut recv,
            exporter,
            REQUEST_FRAME_LIMIT,
            expect,
        )
        .await?;
        let Some(operator) = operator else {
            return Err(verified
                .refuse(&mut send, Refusal::NotOperator)
                .await
                .into());
        };
        verified.welcome(&mut send, operator.clone()).await?;
        Ok(operator)
    };
    let operator = authentication::close_if_refused(&connection, handshake.await)?;
    Ok((connection, operator, send, recv))
}

/// The name an operator key goes by: its line's comment, or its fingerprint when it has none.
/// Shown escaped, as every name from a file or a peer.
pub fn operator_name(line: &certs::openssh::PublicKeyLine) -> String {
    if line.comment.is_empty() {
        line.key.fingerprint()
    } else {
        wire::text::escape_controls(&line.comment).into_owned()
    }
}

fn store_error(error: StoreError) -> ControlError {
    match error {
        StoreError::KeyInUse => ControlError::KeyInUse,
        StoreError::UnknownNode(id) => ControlError::UnknownNode(id),
        StoreError::AlreadyUnregistered(id) => ControlError::AlreadyUnregistered(id),
        StoreError::UnknownRun(id) => ControlError::UnknownRun(id),
        other => ControlError::Internal(other.to_string()),
    }
}

/// Carries out one request for `operator`.
fn answer(shared: &Arc<Shared>, operator: &str, request: ControlRequest) -> ControlResponse {
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
        ControlRequest::StartSimulation { run, simulation } => {
            runner::start_simulation(shared, operator, run, simulation).map(|info| {
                ControlResponse::RunStarted {
                    run_id: info.run_id,
                }
            })
        }
        ControlRequest::StartRun {
            app_name,
            app_version,
            config,
        } => runner::start(shared, operator, app_name, app_version, config, None).map(|info| {
            ControlResponse::RunStarted {
                run_id: info.run_id,
            }
        }),
        ControlRequest::StartBundledRun { bundle, config } => {
            runner::start_bundled(shared, operator, bundle, config, None).map(|info| {
                ControlResponse::RunStarted {
                    run_id: info.run_id,
                }
            })
        }
        ControlRequest::ListRuns {
            run_id: Some(run_id),
        } => match shared.store.run(run_id) {
            Ok(Some(run)) => Ok(ControlResponse::Runs(vec![run])),
            Ok(None) => Err(ControlError::UnknownRun(run_id)),
            Err(error) => Err(store_error(error)),
        },
        ControlRequest::ListRuns { run_id: None } => shared
            .store
            .list_runs()
            .map(ControlResponse::Runs)
            .map_err(store_error),
        ControlRequest::StopRun { run_id } => {
            runner::stop(shared, run_id, operator).map(|()| ControlResponse::RunStopped { run_id })
        }
        ControlRequest::PullArtifacts { run_id } => artifacts(shared, run_id),
        ControlRequest::OnlineProtocols => Ok(ControlResponse::OnlineProtocols(
            shared
                .sessions
                .online()
                .into_iter()
                .filter_map(|node| Some((node, shared.sessions.protocol(node)?)))
                .collect(),
        )),
        ControlRequest::DashboardLink => Ok(match &shared.dashboard {
            Some(dashboard) => dashboard.link(operator),
            None => crate::dashboard::not_served(),
        }),
        // Served by send_log, which may answer with many frames.
        ControlRequest::Log { run_id, .. } => {
            Err(ControlError::Internal(format!("log of {run_id} misrouted")))
        }
        // Served by bundles::receive, which reads the bytes that follow.
        ControlRequest::OfferBundle { hash, .. } => {
            Err(ControlError::Internal(format!("bundle {hash} misrouted")))
        }
    };
    result.unwrap_or_else(ControlResponse::Error)
}

fn artifacts(shared: &Shared, run_id: RunId) -> Result<ControlResponse, ControlError> {
    shared
        .store
        .run(run_id)
        .map_err(store_error)?
        .ok_or(ControlError::UnknownRun(run_id))?;
    let mut artifacts = Vec::new();
    for name in shared.store.artifact_names(run_id).map_err(store_error)? {
        if let Some(bytes) = shared.store.artifact(run_id, &name).map_err(store_error)? {
            artifacts.push(wire::control::Artifact { name, bytes });
        }
    }
    Ok(ControlResponse::Artifacts(artifacts))
}

fn log_frame(lines: Vec<LogLine>, finished: Option<RunStatus>) -> ControlFrame {
    ControlFrame::Response(ControlResponse::Log { lines, finished })
}

/// Most bytes of log text in one frame: far below any client's frame limit, however long the log.
const LOG_PAGE_BYTES: usize = 1024 * 1024;

/// `lines` with any line longer than a page (stored before lines were bounded) cut.
fn clip(mut lines: Vec<LogLine>) -> Vec<LogLine> {
    for line in &mut lines {
        if line.text.len() > LOG_PAGE_BYTES {
            line.text = wire::text::sanitize(&line.text, crate::runs::MAX_LOG_LINE);
        }
    }
    lines
}

/// Sends the stored lines of `run_id` from `after` on, a page per frame, the last frame carrying
/// `finished`; returns the index after the last line sent. With `one_page`, stops after the first
/// page (and says `finished` only if nothing follows it): the client asks again from there.
async fn send_stored(
    shared: &Shared,
    send: &mut quinn::SendStream,
    run_id: RunId,
    mut after: u64,
    finished: Option<RunStatus>,
    one_page: bool,
) -> Result<u64, FrameIoError> {
    loop {
        let (page, more) = shared
            .store
            .logs_page(run_id, after, LOG_PAGE_BYTES)
            .unwrap_or_default();
        if let Some(last) = page.last() {
            after = last.index + 1;
        }
        let status = if more { None } else { finished };
        write_value(send, &log_frame(clip(page), status)).await?;
        if !more || one_page {
            return Ok(after);
        }
    }
}

/// Answers a log request: the stored lines from `after` on, then, when following, each new line as
/// it is written, until the run finishes (a last frame carries its status).
async fn send_log(
    shared: &Shared,
    send: &mut quinn::SendStream,
    run_id: RunId,
    after: u64,
    follow: bool,
    shutdown: &CancellationToken,
) -> Result<(), FrameIoError> {
    // Subscribe before reading the store, so no line falls between the two.
    let mut events = if follow {
        shared.runs.subscribe(run_id)
    } else {
        None
    };
    let run = match shared.store.run(run_id) {
        Ok(Some(run)) => run,
        Ok(None) => {
            return write_value(
                send,
                &ControlFrame::Response(ControlResponse::Error(ControlError::UnknownRun(run_id))),
            )
            .await;
        }
        Err(error) => {
            return write_value(
                send,
                &ControlFrame::Response(ControlResponse::Error(store_error(error))),
            )
            .await;
        }
    };
    let Some(events) = events.as_mut() else {
        // Not following, or the run is not executing: what is stored is all there is.
        let finished = run
            .status
            .is_finished()
            .then_some(run.status)
            .or(follow.then_some(run.status));
        send_stored(shared, send, run_id, after, finished, !follow).await?;
        return Ok(());
    };
    let mut next = send_stored(shared, send, run_id, after, None, false).await?;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            event = events.recv() => event,
        };
        match event {
            Ok(RunEvent::Line(line)) if line.index >= next => {
                next = line.index + 1;
                write_value(send, &log_frame(vec![line], None)).await?;
            }
            Ok(RunEvent::Line(_)) => {}
            Ok(RunEvent::Finished(status)) => {
                send_stored(shared, send, run_id, next, Some(status), false).await?;
                return Ok(());
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                next = send_stored(shared, send, run_id, next, None, false).await?;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                let status = shared
                    .store
                    .run(run_id)
                    .ok()
                    .flatten()
                    .map_or(RunStatus::Failed, |r| r.status);
                send_stored(shared, send, run_id, next, Some(status), false).await?;
                return Ok(());
            }
        }
    }
}

pub(crate) fn register(
    shared: &Shared,
    operator: &str,
    text: &str,
) -> Result<ControlResponse, ControlError> {
    let line = certs::load::parse_public_key(text).map_err(ControlError::InvalidKey)?;
    // Node keys and operator keys are disjoint: an operator key registered as a node would pass
    // TLS on both APIs.
    if shared.config.operator_auth.is_operator_key(&line.key) {
        return Err(ControlError::InvalidKey(
            "it is an operator key; a node needs a key of its own".into(),
        ));
    }
    let info = shared
        .store
        .register_node(&line.key, operator, now_ms())
        .map_err(store_error)?;
    tracing::info!(node_id = info.node_id.0, "node registered");
    Ok(ControlResponse::NodeRegistered {
        node_id: info.node_id,
    })
}

pub(crate) fn unregister(
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
    // Committed first, then revoked in memory under the sessions' lock: a handshake that read
    // the registry before the commit cannot attach after this.
    shared
        .sessions
        .revoke(node_id, close::UNREGISTERED, "unregistered by an operator");
    tracing::info!(node_id = node_id.0, "node unregistered");
    Ok(ControlResponse::NodeUnregistered { node_id })
}
