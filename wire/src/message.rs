//! Flower's message model: `Metadata` plus either content or an error.

use crate::{MessageId, NodeId, RecordDict, RunId, WireError};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// What a message asks the receiving app to do: Flower's message type, exactly as Flower accepts
/// it. That is a category (`train`, `evaluate`, `query` or `system`), optionally followed by a dot
/// and an action that is a Python identifier (`train.finetune`), or one of Flower's legacy types
/// (`get_parameters`, `get_properties`, `reconnect`), which its legacy API still sends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MessageType(Cow<'static, str>);

/// The part of a [`MessageType`] before its action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// Train locally and return updated arrays.
    Train,
    /// Evaluate the given arrays locally.
    Evaluate,
    /// Answer a question without training.
    Query,
    /// Flower's system messages.
    System,
    /// One of Flower's legacy types (`get_parameters`, `get_properties`, `reconnect`).
    Legacy,
}

/// Longest message type accepted, in bytes. Flower sets none; its own types are a few bytes, and
/// an action is a function's name.
pub const MAX_MESSAGE_TYPE_LEN: usize = 256;

const CATEGORIES: [(&str, Category); 4] = [
    ("train", Category::Train),
    ("evaluate", Category::Evaluate),
    ("query", Category::Query),
    ("system", Category::System),
];

const LEGACY: [&str; 3] = ["get_parameters", "get_properties", "reconnect"];

impl MessageType {
    /// Train locally and return updated arrays.
    pub const TRAIN: MessageType = MessageType(Cow::Borrowed("train"));
    /// Evaluate the given arrays locally.
    pub const EVALUATE: MessageType = MessageType(Cow::Borrowed("evaluate"));
    /// Answer a question without training.
    pub const QUERY: MessageType = MessageType(Cow::Borrowed("query"));
    /// Flower's system messages.
    pub const SYSTEM: MessageType = MessageType(Cow::Borrowed("system"));

    /// A message type from its name, refused unless Flower accepts it.
    pub fn new(name: impl Into<String>) -> Result<Self, WireError> {
        let name = name.into();
        if name.len() > MAX_MESSAGE_TYPE_LEN {
            return Err(WireError::Invalid(format!(
                "a message type of {} bytes (at most {MAX_MESSAGE_TYPE_LEN})",
                name.len()
            )));
        }
        if category_of(&name).is_none() {
            return Err(WireError::Invalid(format!(
                "message type {:?}: expected train, evaluate, query or system, optionally \
                 followed by \".\" and a Python identifier, or a legacy type \
                 (get_parameters, get_properties, reconnect)",
                crate::text::sanitize(&name, 80)
            )));
        }
        Ok(MessageType(Cow::Owned(name)))
    }

    /// Flower's name for the type.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its category.
    pub fn category(&self) -> Category {
        // Every MessageType was checked on construction.
        category_of(&self.0).unwrap_or(Category::Legacy)
    }

    /// The action after the dot, if any (`finetune` of `train.finetune`).
    pub fn action(&self) -> Option<&str> {
        self.0.split_once('.').map(|(_, action)| action)
    }
}

/// The category of a message type Flower accepts; `None` for any other string.
fn category_of(name: &str) -> Option<Category> {
    if LEGACY.contains(&name) {
        return Some(Category::Legacy);
    }
    let (category, action) = match name.split_once('.') {
        Some((category, action)) => (category, Some(action)),
        None => (name, None),
    };
    let category = CATEGORIES
        .iter()
        .find(|(known, _)| *known == category)
        .map(|(_, category)| *category)?;
    match action {
        None => Some(category),
        Some(action) if is_python_identifier(action) => Some(category),
        Some(_) => None,
    }
}

/// Python's `str.isidentifier`: a letter or underscore, then letters, digits or underscores, in
/// Unicode's sense (XID_Start and XID_Continue).
fn is_python_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) if first == '_' || unicode_ident::is_xid_start(first) => {
            chars.all(unicode_ident::is_xid_continue)
        }
        _ => false,
    }
}

impl std::fmt::Display for MessageType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for MessageType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// Decoding refuses what [`MessageType::new`] refuses, so a peer cannot smuggle in a type no app
/// would accept.
impl<'de> Deserialize<'de> for MessageType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        MessageType::new(name).map_err(serde::de::Error::custom)
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
    /// One of Flower's own codes (`flwr.common.constant.ErrorCode`) with no counterpart above,
    /// kept as Flower gave it so that it reaches a Flower server app unchanged.
    Flower(i64),
}

/// Upper-case names, as Flower writes its own codes, so a run log reads the same whichever side
/// an error came from.
impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            ErrorCode::ClientAppRaisedException => "CLIENT_APP_RAISED_EXCEPTION",
            ErrorCode::UnknownApp => "UNKNOWN_APP",
            ErrorCode::NodeUnavailable => "NODE_UNAVAILABLE",
            ErrorCode::MessageUnavailable => "MESSAGE_UNAVAILABLE",
            ErrorCode::InvalidReply => "INVALID_REPLY",
            ErrorCode::RunStopped => "RUN_STOPPED",
            ErrorCode::UntrustedApp => "UNTRUSTED_APP",
            ErrorCode::Flower(code) => {
                return write!(f, "Flower error {code} ({})", flower_code_name(*code));
            }
        };
        f.write_str(name)
    }
}

/// The name Flower 1.42 gives its error `code` (`flwr.common.constant.ErrorCode`).
pub fn flower_code_name(code: i64) -> &'static str {
    match code {
        1 => "LOAD_CLIENT_APP_EXCEPTION",
        2 => "CLIENT_APP_RAISED_EXCEPTION",
        3 => "MESSAGE_UNAVAILABLE",
        4 => "REPLY_MESSAGE_UNAVAILABLE",
        5 => "NODE_UNAVAILABLE",
        6 => "MOD_FAILED_PRECONDITION",
        7 => "INVALID_FAB",
        8 => "CLIENT_APP_CRASHED",
        _ => "UNKNOWN",
    }
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
                message_type: self.metadata.message_type.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_types_are_the_ones_flower_accepts() {
        for name in [
            "train",
            "evaluate",
            "query",
            "system",
            "train.finetune",
            "query._stats_2",
            "evaluate.entraîner",
            "system.ping",
            "get_parameters",
            "get_properties",
            "reconnect",
        ] {
            let message_type = MessageType::new(name).unwrap();
            assert_eq!(message_type.as_str(), name);
        }
        let long = format!("train.{}", "a".repeat(MAX_MESSAGE_TYPE_LEN));
        for name in [
            "",
            "Train",
            "fit",
            "train.",
            ".train",
            "train.1st",
            "train.a.b",
            "train.a-b",
            "get_parameters.x",
            long.as_str(),
        ] {
            assert!(MessageType::new(name).is_err(), "{name:?} was accepted");
        }
        assert_eq!(
            MessageType::new("train.finetune").unwrap().category(),
            Category::Train
        );
        assert_eq!(
            MessageType::new("train.finetune").unwrap().action(),
            Some("finetune")
        );
        assert_eq!(
            MessageType::new("get_parameters").unwrap().category(),
            Category::Legacy
        );
        assert_eq!(MessageType::QUERY.action(), None);
    }

    #[test]
    fn a_message_type_flower_refuses_is_refused_when_decoded() {
        let encoded = postcard::to_stdvec("train.finetune").unwrap();
        let decoded: MessageType = postcard::from_bytes(&encoded).unwrap();
        assert_eq!(decoded, MessageType::new("train.finetune").unwrap());
        assert_eq!(postcard::to_stdvec(&decoded).unwrap(), encoded);
        let encoded = postcard::to_stdvec("fit").unwrap();
        assert!(postcard::from_bytes::<MessageType>(&encoded).is_err());
    }

    #[test]
    fn error_codes_read_as_flowers() {
        assert_eq!(
            ErrorCode::ClientAppRaisedException.to_string(),
            "CLIENT_APP_RAISED_EXCEPTION"
        );
        assert_eq!(
            ErrorCode::Flower(8).to_string(),
            "Flower error 8 (CLIENT_APP_CRASHED)"
        );
        assert_eq!(
            ErrorCode::Flower(42).to_string(),
            "Flower error 42 (UNKNOWN)"
        );
    }
}
