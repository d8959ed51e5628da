//! The Fleet API, spoken between a node and the broker.
//!
//! A node opens one *session* stream right after the QUIC handshake and keeps it for the life of the
//! connection: the authentication handshake runs on it, then heartbeats. Each instruction travels on
//! its own stream opened by the broker (a streamed [`crate::Message`], answered by
//! [`InstructionAck`]); each reply travels on its own stream opened by the node (a streamed message,
//! answered by [`ReplyOutcome`]). Variants are only ever appended.

use crate::handshake::{Challenge, Proof, Refusal};
use crate::{ConfigRecord, NodeId, RunId};
use serde::{Deserialize, Serialize};

/// Protocol version a node announces in its hello.
pub const PROTOCOL_VERSION: u32 = 1;

/// Node to broker, on the session stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NodeFrame {
    /// First frame of a connection.
    Hello {
        /// [`PROTOCOL_VERSION`] of the node.
        version: u32,
    },
    /// Answer to the broker's challenge.
    Proof(Proof),
    /// Liveness signal; `seq` is echoed back.
    Heartbeat {
        /// Sequence number chosen by the node.
        seq: u64,
    },
    /// The node is shutting down cleanly: mark it offline now instead of waiting for a timeout.
    Goodbye,
}

/// Broker to node, on the session stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BrokerFrame {
    /// The challenge to sign.
    Challenge(Challenge),
    /// Authentication succeeded.
    Welcome {
        /// The node's id in the registry.
        node_id: NodeId,
        /// How often the broker expects a heartbeat.
        heartbeat_interval_ms: u64,
    },
    /// Authentication failed; the connection closes after this frame.
    Refused(Refusal),
    /// Answer to a heartbeat.
    HeartbeatAck {
        /// The heartbeat's sequence number.
        seq: u64,
    },
    /// The run was stopped: abandon its work.
    RunStopped {
        /// The run.
        run_id: RunId,
    },
}

/// Broker to node, first frame of an instruction stream; the streamed message follows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstructionHeader {
    /// Which client app handles it.
    pub app_name: String,
    /// The app's version.
    pub app_version: String,
    /// The run's config.
    pub run_config: ConfigRecord,
}

/// Node to broker, on an instruction stream, once the instruction was received and stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstructionAck {
    /// The instruction's message id.
    pub message_id: crate::MessageId,
}

/// Broker to node, on a reply stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplyOutcome {
    /// Stored (or already stored: duplicates are acknowledged and ignored).
    Accepted,
    /// Not stored, and why.
    Rejected(String),
}

/// QUIC application close codes the broker uses on Fleet connections.
pub mod close {
    /// The node ended the connection normally.
    pub const NORMAL: u32 = 0;
    /// Authentication failed.
    pub const REFUSED: u32 = 1;
    /// The node was unregistered by an operator.
    pub const UNREGISTERED: u32 = 2;
    /// The peer broke the protocol (malformed or unexpected frame).
    pub const PROTOCOL: u32 = 3;
    /// Heartbeats stopped arriving.
    pub const TIMEOUT: u32 = 4;
    /// The broker is shutting down.
    pub const SHUTDOWN: u32 = 5;
    /// Another connection authenticated with the same key and replaced this one.
    pub const REPLACED: u32 = 6;
}
