//! Moving messages between the rounds in flight and a node's connection: instructions out (one
//! stream each, acknowledged by the node), replies in (one stream each, checked, handed to their
//! round, then acknowledged).

use crate::rounds::{Answer, Claim};
use crate::state::Shared;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use wire::fleet::{InstructionAck, NodeStream, ReplyOutcome};
use wire::io::{
    FrameIoError, read_arrays, read_frame, read_value, write_message_parts, write_value,
};
use wire::message::now_ms;
use wire::stream::{DEFAULT_CHUNK, MessageAssembler};
use wire::{MessageId, NodeId};

/// How long a node has to acknowledge an instruction it has fully received.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest acknowledgement or outcome frame.
const SMALL_FRAME: u32 = 4096;

/// Why one delivery failed.
#[derive(Debug, thiserror::Error)]
enum DeliveryError {
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
        for id in shared.rounds.queued_for(node) {
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
    let Some(instruction) = shared.rounds.instruction(id) else {
        // Its round is over (answered, stopped, or given up on).
        return Ok(());
    };
    if instruction.answered.is_some() || instruction.metadata.is_expired(now_ms()) {
        // Answered in its node's place already, or its round answers it at its deadline.
        shared.rounds.mark_delivered(node, id);
        return Ok(());
    }
    let (mut send, mut recv) = connection.open_bi().await?;
    write_value(&mut send, instruction.header.as_ref()).await?;
    write_message_parts(
        &mut send,
        &instruction.metadata,
        Ok(&instruction.content),
        DEFAULT_CHUNK,
    )
    .await?;
    let _ = send.finish();
    let ack: InstructionAck = tokio::time::timeout(ACK_TIMEOUT, read_value(&mut recv, SMALL_FRAME))
        .await
        .map_err(|_| DeliveryError::Timeout)??;
    if ack.message_id != id {
        return Err(DeliveryError::WrongAck);
    }
    shared.rounds.mark_delivered(node, id);
    tracing::debug!(instruction = %id, "delivered");
    Ok(())
}

/// How long a node has from opening a reply stream to sending the reply's head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Room a reply gets beyond twice its instruction's array bytes: metrics, an evaluation's outputs,
/// the answer to a query that carried no arrays at all.
const REPLY_SLACK: u64 = 16 * 1024 * 1024;

/// The most array bytes a reply to an instruction that carried `sent` may announce, under `cap`.
pub(crate) fn reply_allowance(sent: u64, cap: u64) -> u64 {
    sent.saturating_mul(2).saturating_add(REPLY_SLACK).min(cap)
}

/// What the head of a reply earns it.
enum Verdict {
    /// Read the rest of the reply to instruction `id`, by `deadline`.
    Read {
        id: MessageId,
        deadline: tokio::time::Instant,
    },
    /// Its instruction already has a reply: acknowledge, read nothing, store nothing.
    AlreadyAnswered,
}

/// Serves a stream `node` opened: its first frame says whether it carries a reply or asks for
/// a bundle.
pub async fn serve_node_stream(
    shared: Arc<Shared>,
    node: NodeId,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let kind = tokio::time::timeout(
        HEAD_TIMEOUT,
        read_value::<NodeStream, _>(&mut recv, SMALL_FRAME),
    )
    .await;
    match kind {
        Ok(Ok(NodeStream::Reply)) => receive_reply(shared, node, send, recv).await,
        Ok(Ok(NodeStream::FetchBundle { hash })) => {
            crate::bundles::serve(shared, node, send, hash, true).await;
        }
        Ok(Ok(NodeStream::FetchSignatures { hash })) => {
            crate::bundles::serve(shared, node, send, hash, false).await;
        }
        // Any authenticated node can open streams as fast as it likes: not worth a warning each.
        Ok(Err(error)) => tracing::debug!(%node, %error, "unreadable stream from a node"),
        Err(_) => tracing::debug!(%node, "a node opened a stream and sent nothing"),
    }
}

/// Reads one reply from `node`: its head first, judged against the instruction it answers before
/// a single array byte is read; then the arrays, bounded by what that instruction carried and by
/// its deadline. Then checks and stores it (committed before the node hears "accepted"), and hands
/// it to the run waiting for it.
async fn receive_reply(
    shared: Arc<Shared>,
    node: NodeId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let outcome = match read_reply(&shared, node, &mut recv).await {
        // The claim is held until the reply is handed to its round.
        Ok(Some((reply, claim))) => {
            let outcome = judge(&shared, reply);
            drop(claim);
            outcome
        }
        Ok(None) => {
            shared.metrics.reply_received("duplicate");
            ReplyOutcome::Accepted
        }
        Err(reason) => ReplyOutcome::Rejected(reason),
    };
    if let ReplyOutcome::Rejected(reason) = &outcome {
        tracing::warn!(%reason, "reply rejected");
        shared.metrics.reply_received("rejected");
    }
    let _ = write_value(&mut send, &outcome).await;
    let _ = send.finish();
}

/// The reply on `recv` with its claim, `None` for a duplicate, or why it was refused.
async fn read_reply(
    shared: &Arc<Shared>,
    node: NodeId,
    recv: &mut quinn::RecvStream,
) -> Result<Option<(wire::Message, Claim)>, String> {
    let limits = shared.config.limits;
    let unreadable = |error: FrameIoError| format!("unreadable reply: {error}");
    let head = tokio::time::timeout(HEAD_TIMEOUT, read_frame(recv, limits.max_frame))
        .await
        .map_err(|_| format!("no reply within {HEAD_TIMEOUT:?} of opening its stream"))?
        .map_err(unreadable)?
        .ok_or_else(|| unreadable(FrameIoError::Closed))?;
    let mut assembler = MessageAssembler::new(limits);
    let complete = assembler
        .feed(&head)
        .map_err(|e| unreadable(FrameIoError::Wire(e)))?;
    let metadata = match (&complete, assembler.head()) {
        (Some(message), _) => message.metadata.clone(),
        (None, Some(metadata)) => metadata.clone(),
        (None, None) => return Err("unreadable reply: no head".into()),
    };
    let vetted = vet_head(shared, node, &metadata, assembler.announced_payload())?;
    let (id, deadline) = match vetted {
        Verdict::AlreadyAnswered => return Ok(None),
        Verdict::Read { id, deadline } => (id, deadline),
    };
    let claim = shared
        .rounds
        .claim(id)
        .ok_or("another reply to this instruction is arriving")?;
    if let Some(message) = complete {
        return Ok(Some((message, claim)));
    }
    match tokio::time::timeout_at(deadline, read_arrays(recv, &mut assembler)).await {
        Ok(Ok(message)) => Ok(Some((message, claim))),
        Ok(Err(error)) => Err(unreadable(error)),
        Err(_) => Err("the reply was still arriving when its instruction expired".into()),
    }
}

/// Judges a reply by its head: it must come from the node its instruction went to, answer an
/// instruction of a running run that is still in flight, and announce no more array bytes than
/// that instruction allows.
fn vet_head(
    shared: &Shared,
    node: NodeId,
    metadata: &wire::Metadata,
    announced: u64,
) -> Result<Verdict, String> {
    if metadata.src_node_id != node {
        return Err(format!(
            "the reply names node {} as its sender, but came from node {node}",
            metadata.src_node_id
        ));
    }
    if shared.sessions.is_revoked(node) {
        return Err(format!("node {node} was unregistered"));
    }
    let id = metadata
        .reply_to
        .ok_or_else(|| "invalid reply: not a reply (no reply-to)".to_string())?;
    let instruction = shared.rounds.instruction(id).ok_or_else(|| {
        "invalid reply: it answers no known instruction of a round in flight".to_string()
    })?;
    if instruction.metadata.dst_node_id != node {
        return Err("invalid reply: the instruction was sent to another node".into());
    }
    if instruction.metadata.run_id != metadata.run_id {
        return Err("invalid reply: the reply names another run".into());
    }
    if instruction.answered.is_some() {
        return Ok(Verdict::AlreadyAnswered);
    }
    let content = instruction.content;
    let allowed = reply_allowance(array_bytes(&content), shared.config.limits.max_payload);
    if announced > allowed {
        return Err(format!(
            "the reply announces {announced} bytes of arrays; its instruction allows {allowed}"
        ));
    }
    let now = now_ms();
    let expires = instruction
        .metadata
        .created_at_ms
        .saturating_add(instruction.metadata.ttl_ms);
    if now >= expires {
        return Err("its instruction expired".into());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(expires - now);
    Ok(Verdict::Read { id, deadline })
}

/// Bytes of every array in `content`.
pub(crate) fn array_bytes(content: &wire::RecordDict) -> u64 {
    content
        .iter()
        .filter_map(|(_, record)| match record {
            wire::Record::Arrays(arrays) => {
                Some(arrays.iter().map(|(_, a)| a.data.len() as u64).sum::<u64>())
            }
            _ => None,
        })
        .sum()
}

/// Longest error reason kept from a node, in characters.
pub const MAX_ERROR_REASON: usize = 512;

pub(crate) fn judge(shared: &Shared, mut reply: wire::Message) -> ReplyOutcome {
    // A node's words reach logs and terminals: escaped, and short.
    if let wire::MessageBody::Error(error) = &mut reply.body {
        error.reason = wire::text::sanitize(&error.reason, MAX_ERROR_REASON);
    }
    // The sender and the instruction were judged on the head (`vet_head`); the round may have
    // ended while the arrays arrived, and `answer` checks the instruction again atomically.
    match shared.rounds.answer(reply) {
        Answer::New => {
            shared.metrics.reply_received("stored");
            ReplyOutcome::Accepted
        }
        // At-least-once delivery: a re-sent reply, or one that comes after the round answered
        // in the node's place, is acknowledged and ignored.
        Answer::Duplicate => {
            shared.metrics.reply_received("duplicate");
            ReplyOutcome::Accepted
        }
        Answer::Unknown => ReplyOutcome::Rejected("the instruction's round is over".into()),
    }
}
