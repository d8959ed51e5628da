//! The Control API, spoken between the `flwr` CLI and the broker.
//!
//! The CLI opens one stream, runs the authentication handshake (or, on a broker without operator
//! keys, receives a welcome when it connects from loopback), then sends requests and reads one
//! response each. Variants are only ever appended.

use crate::NodeId;
use crate::handshake::{Challenge, Proof, Refusal};
use serde::{Deserialize, Serialize};

/// CLI to broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OperatorFrame {
    /// First frame of a connection.
    Hello {
        /// [`crate::fleet::PROTOCOL_VERSION`] of the CLI.
        version: u32,
    },
    /// Answer to the broker's challenge.
    Proof(Proof),
    /// A request, once welcomed.
    Request(ControlRequest),
}

/// Broker to CLI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControlFrame {
    /// The challenge to sign.
    Challenge(Challenge),
    /// Authenticated as `operator`.
    Welcome {
        /// The operator's name (the comment of their public key line, or `local`).
        operator: String,
    },
    /// Authentication failed; the connection closes after this frame.
    Refused(Refusal),
    /// Answer to the last request.
    Response(ControlResponse),
}

/// What an operator asks of the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// Register a node's public key (an OpenSSH public key line, or PEM).
    RegisterNode {
        /// The key file's text.
        public_key: String,
    },
    /// Unregister a node; its connection closes and its key can never be used again.
    UnregisterNode {
        /// The node to remove.
        node_id: NodeId,
    },
    /// List nodes.
    ListNodes {
        /// Include unregistered nodes.
        include_unregistered: bool,
    },
}

/// Registry status of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeStatus {
    /// Registered, never connected or not connected since the registry was created.
    Registered,
    /// Connected and authenticated.
    Online,
    /// Was online, connection gone.
    Offline,
    /// Removed by an operator; terminal.
    Unregistered,
}

impl NodeStatus {
    /// The lower-case name shown in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Registered => "registered",
            NodeStatus::Online => "online",
            NodeStatus::Offline => "offline",
            NodeStatus::Unregistered => "unregistered",
        }
    }
}

/// A node as the registry knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node id.
    pub node_id: NodeId,
    /// The operator who registered it (`automatic` for self-registered nodes).
    pub owner: String,
    /// Current status.
    pub status: NodeStatus,
    /// SHA-256 fingerprint of the public key, as `ssh-keygen -l` prints it.
    pub key_fingerprint: String,
    /// When it was registered (ms since the Unix epoch, broker clock).
    pub registered_at_ms: u64,
    /// When it last came online.
    pub online_at_ms: Option<u64>,
    /// When it last went offline.
    pub offline_at_ms: Option<u64>,
    /// When it was unregistered.
    pub unregistered_at_ms: Option<u64>,
    /// When the current status began.
    pub status_changed_at_ms: u64,
}

/// Why the broker refused a control request (Flower's messages where Flower has one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlError {
    /// The key is already registered, or was once (unregistered keys are never reused).
    KeyInUse,
    /// The key text is not a valid ECDSA public key.
    InvalidKey(String),
    /// No such node.
    UnknownNode(NodeId),
    /// The node exists but is owned by another operator.
    NotOwner(NodeId),
    /// The node was already unregistered.
    AlreadyUnregistered(NodeId),
    /// The broker failed internally (storage); nothing was changed.
    Internal(String),
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::KeyInUse => write!(f, "Public key already in use"),
            ControlError::InvalidKey(why) => write!(f, "Public key is not valid: {why}"),
            ControlError::UnknownNode(id) => write!(f, "Node ID {id} not found"),
            ControlError::NotOwner(id) => write!(f, "Node ID {id} belongs to another operator"),
            ControlError::AlreadyUnregistered(id) => {
                write!(f, "Node ID {id} is already unregistered")
            }
            ControlError::Internal(why) => write!(f, "SuperLink internal error: {why}"),
        }
    }
}

impl std::error::Error for ControlError {}

/// The broker's answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControlResponse {
    /// A node was registered.
    NodeRegistered {
        /// Its new id.
        node_id: NodeId,
    },
    /// A node was unregistered.
    NodeUnregistered {
        /// Its id.
        node_id: NodeId,
    },
    /// The node table.
    Nodes(Vec<NodeInfo>),
    /// The request failed.
    Error(ControlError),
}
