//! Flower's message model: `Metadata` plus either content or an error.

use crate::{MessageId, NodeId, RecordDict, RunId, WireError};
use serde::{Deserialize, Serialize};

/// What a message asks the receiving app to do. Variants are only ever appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MessageType {
    /// Train locally and return updated arrays.
    Train,
    /// Evaluate the given arrays locally.
    Evaluate,
    /// Answer a question without training.
    Query,
}

impl MessageType {
    /// Flower's name for the type.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Train => "train",
            MessageType::Evaluate => "evaluate",
            MessageType::Query => "query",
        }
    }
}

/// Routing and bookkeeping for a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// The run this message belongs to.
    pub run_id: RunId,
    /// This message's own id.
    pub message_id: MessageId,
    /// Sender (a node id, or [`NodeId::SERVER`]).
    pub src_node_id: NodeId,
    /// Receiver (a node id, or [`NodeId::SERVER`]).
    pub dst_node_id: NodeId,
    /// For a reply: the id of the instruction it answers.
    pub reply_to: Option<MessageId>,
    /// Group of related messages; the server round, as in Flower's `group_id`.
    pub group_id: String,
    /// Milliseconds after `created_at_ms` when the message expires.
    pub ttl_ms: u64,
    /// What to do.
    pub message_type: MessageType,
    /// Creation time, milliseconds since the Unix epoch, on the sender's clock.
    pub created_at_ms: u64,
}

impl Metadata {
    /// Whether the message has expired at `now_ms` (saturating: a huge TTL never wraps around).
    pub fn is_expired(&self, now_ms: u64) -> bool {
        now_ms >= self.created_at_ms.saturating_add(self.ttl_ms)
    }
}

/// Error codes carried by an error reply, following Flower's `ErrorCode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The client app raised an error or crashed.
    ClientAppRaisedException,
    /// The node has no app of the requested name.
    UnknownApp,
    /// The destination node went away before replying.
    NodeUnavailable,
    /// The instruction expired before it was answered.
    MessageUnavailable,
    /// The reply did not make sense (wrong records, bad values).
    InvalidReply,
    /// The run was stopped.
    RunStopped,
    /// The node does not run this app: it is not on its `--trusted-apps` list.
    UntrustedApp,
}

/// An error in place of content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageError {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable reason.
    pub reason: String,
}

/// Content or error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MessageBody {
    /// The records the message carries.
    Content(RecordDict),
    /// Why there is no content.
    Error(MessageError),
}

/// A message between the server side and a client side of an app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Routing and bookkeeping.
    pub metadata: Metadata,
    /// Content or error.
    pub body: MessageBody,
}

impl Message {
    /// Checks every invariant a decoded message must hold.
    pub fn validate(&self) -> Result<(), WireError> {
        match &self.body {
            MessageBody::Content(content) => content.validate(),
            MessageBody::Error(_) => Ok(()),
        }
    }

    /// A reply to this message from `src` with `body`, created at `now_ms`.
    pub fn reply(&self, body: MessageBody, now_ms: u64) -> Message {
        Message {
            metadata: Metadata {
                run_id: self.metadata.run_id,
                message_id: MessageId::random(),
                src_node_id: self.metadata.dst_node_id,
                dst_node_id: self.metadata.src_node_id,
                reply_to: Some(self.metadata.message_id),
                group_id: self.metadata.group_id.clone(),
                ttl_ms: self.metadata.ttl_ms,
                message_type: self.metadata.message_type,
                created_at_ms: now_ms,
            },
            body,
        }
    }
}

/// Milliseconds since the Unix epoch on this machine's clock (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
