//! Moving messages between the queues and a node's connection: instructions out (one stream each,
//! acknowledged by the node), replies in (one stream each, checked, stored, then acknowledged).

use crate::server::Shared;
use crate::store::{ReplyStored, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use wire::control::RunStatus;
use wire::fleet::{InstructionAck, InstructionHeader, ReplyOutcome};
use wire::io::{read_message, read_value, write_message_parts, write_value};
use wire::message::now_ms;
use wire::stream::DEFAULT_CHUNK;
use wire::{MessageId, NodeId};

/// How long a node has to acknowledge an instruction it has fully received.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest acknowledgement or outcome frame.
const SMALL_FRAME: u32 = 4096;

/// Why one delivery failed.
#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream: {0}")]
    Frame(#[from] wire::io::FrameIoError),
    #[error("no acknowledgement within {ACK_TIMEOUT:?}")]
    Timeout,
    #[error("acknowledgement for another instruction")]
    WrongAck,
}

/// Sends `node` every instruction queued for it, now and whenever `wake` fires, until the
/// connection fails.
pub async fn deliver(
    shared: Arc<Shared>,
    node: NodeId,
    connection: quinn::Connection,
    wake: Arc<Notify>,
) {
    loop {
        let queued = match shared.store.queued_for(node) {
            Ok(queued) => queued,
            Err(error) => {
                tracing::error!(%error, "cannot read the node's queue");
                Vec::new()
            }
        };
        for id in queued {
            if let Err(error) = deliver_one(&shared, node, &connection, id).await {
                tracing::warn!(instruction = %id, %error, "delivery failed");
                if connection.close_reason().is_some() {
                    return;
                }
            }
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = connection.closed() => return,
        }
    }
}

async fn deliver_one(
    shared: &Shared,
    node: NodeId,
    connection: &quinn::Connection,
    id: MessageId,
) -> Result<(), DeliveryError> {
    let Some(record) = shared.store.instruction(id)? else {
        return Ok(());
    };
    let Some(run) = shared.store.run(record.metadata.run_id)? else {
        return Ok(());
    };
    if run.status.is_finished() || record.metadata.is_expired(now_ms()) {
        // The run's grid answers it (stopped, or MESSAGE_UNAVAILABLE at its deadline).
        shared.store.mark_delivered(node, id)?;
        return Ok(());
    }
    let Some(content) = shared.contents.get(record.content_id) else {
        // Contents live as long as their round: this instruction's round is over (it was answered
        // by a stand-in) or was interrupted by a restart (it is resent from a checkpoint).
        shared.store.mark_delivered(node, id)?;
        return Ok(());
    };
    let header = InstructionHeader {
        app_name: run.app_name,
        app_version: run.app_version,
        run_config: run.config,
    };
    let (mut send, mut recv) = connection.open_bi().await?;
    write_value(&mut send, &header).await?;
    write_message_parts(&mut send, &record.metadata, Ok(&content), DEFAULT_CHUNK).await?;
    let _ = send.finish();
    let ack: InstructionAck = tokio::time::timeout(ACK_TIMEOUT, read_value(&mut recv, SMALL_FRAME))
        .await
        .map_err(|_| DeliveryError::Timeout)??;
    if ack.message_id != id {
        return Err(DeliveryError::WrongAck);
    }
    shared.store.mark_delivered(node, id)?;
    tracing::debug!(instruction = %id, "delivered");
    Ok(())
}

/// Reads one reply from `node`, checks it, stores it (committed before the node hears "accepted"),
/// and hands it to the run waiting for it.
pub async fn receive_reply(
    shared: Arc<Shared>,
    node: NodeId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let outcome = match read_message(&mut recv, shared.config.limits).await {
        // Storing a reply is a durable write of a whole model: keep it off the async workers.
        Ok(reply) => {
            let shared = shared.clone();
            tokio::task::spawn_blocking(move || judge(&shared, node, reply))
                .await
                .unwrap_or_else(|e| ReplyOutcome::Rejected(format!("SuperLink error: {e}")))
        }
        Err(error) => {
            tracing::warn!(%error, "unreadable reply");
            ReplyOutcome::Rejected(format!("unreadable reply: {error}"))
        }
    };
    if let ReplyOutcome::Rejected(reason) = &outcome {
        tracing::warn!(%reason, "reply rejected");
        shared.metrics.reply_received("rejected");
    }
    let _ = write_value(&mut send, &outcome).await;
    let _ = send.finish();
}

fn judge(shared: &Shared, node: NodeId, reply: wire::Message) -> ReplyOutcome {
    if reply.metadata.src_node_id != node {
        return ReplyOutcome::Rejected(format!(
            "the reply names node {} as its sender, but came from node {node}",
            reply.metadata.src_node_id
        ));
    }
    match shared.store.run(reply.metadata.run_id) {
        Ok(Some(run)) if run.status == RunStatus::Running => {}
        Ok(Some(run)) => {
            return ReplyOutcome::Rejected(format!(
                "run {} is {}",
                run.run_id,
                run.status.as_str()
            ));
        }
        Ok(None) => return ReplyOutcome::Rejected(format!("no run {}", reply.metadata.run_id)),
        Err(error) => return ReplyOutcome::Rejected(format!("SuperLink storage error: {error}")),
    }
    match shared.store.store_reply(&reply) {
        Ok(ReplyStored::New) => {
            shared.metrics.reply_received("stored");
            shared.router.route(reply);
            ReplyOutcome::Accepted
        }
        // At-least-once delivery: a re-sent reply, or one that comes after the round gave up on
        // it (its stand-in answer is stored), is acknowledged and ignored.
        Ok(ReplyStored::Duplicate) => {
            shared.metrics.reply_received("duplicate");
            ReplyOutcome::Accepted
        }
        Err(error) => ReplyOutcome::Rejected(error.to_string()),
    }
}
