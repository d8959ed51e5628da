//! The Fleet API, spoken between a node and the broker.
//!
//! A node opens one *session* stream right after the QUIC handshake and keeps it for the life of the
//! connection: the authentication handshake runs on it, then heartbeats. Each instruction travels on
//! its own stream opened by the broker (a streamed [`crate::Message`], answered by
//! [`InstructionAck`]); each reply travels on its own stream opened by the node (a streamed message,
//! answered by [`ReplyOutcome`]). Variants are only ever appended.

use crate::handshake::{Api, Challenge, ClientStep, Domain, Proof, Refusal, ServerStep};
use crate::{BundleHash, ConfigRecord, NodeId, RunId};
use serde::{Deserialize, Serialize};

/// Node to broker, on the session stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NodeFrame {
    /// First frame of a connection.
    Hello {
        /// [`crate::handshake::PROTOCOL_VERSION`] of the node.
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
    /// The run ended (an operator stopped it, or it completed or failed): abandon its work and
    /// free what it holds (a warm app process, say).
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
    /// The run's app bundle; `None` for a built-in app. The node fetches it with
    /// [`NodeStream::FetchBundle`] unless it has it already, and trusts only what the bundle
    /// itself says (its `flwr.toml`), checked against this hash.
    pub bundle: Option<BundleHash>,
}

/// Node to broker, first frame of every stream the node opens: what the stream is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeStream {
    /// A reply: the streamed message follows, answered by [`ReplyOutcome`].
    Reply,
    /// The bundle of a run the node has an instruction for, answered by [`BundleAnswer`].
    FetchBundle {
        /// The bundle's hash.
        hash: BundleHash,
    },
    /// Only the signatures of such a bundle (a publisher may have signed it since the node
    /// fetched it), answered by [`BundleAnswer::Signatures`] or [`BundleAnswer::Refused`].
    FetchSignatures {
        /// The bundle's hash.
        hash: BundleHash,
    },
}

/// Broker to node, on a bundle stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BundleAnswer {
    /// The bundle follows: exactly `size` raw bytes, then the stream ends.
    Found {
        /// Its length in bytes.
        size: u64,
        /// Its publishers' signatures, as the SuperLink has them (the node checks them).
        signatures: Vec<crate::bundle::BundleSignature>,
    },
    /// No bundle for this node, and why.
    Refused(String),
    /// The bundle's signatures, as the SuperLink has them now.
    Signatures(Vec<crate::bundle::BundleSignature>),
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

/// What the broker tells a node it admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeWelcome {
    /// The node's id in the registry.
    pub node_id: NodeId,
    /// How often the broker expects a heartbeat.
    pub heartbeat_interval_ms: u64,
}

/// The Fleet API's handshake frames.
#[derive(Debug)]
pub enum Fleet {}

impl Api for Fleet {
    const DOMAIN: Domain = Domain::Fleet;
    type ClientFrame = NodeFrame;
    type ServerFrame = BrokerFrame;
    type Welcome = NodeWelcome;

    fn hello(version: u32) -> NodeFrame {
        NodeFrame::Hello { version }
    }

    fn proof(proof: Proof) -> NodeFrame {
        NodeFrame::Proof(proof)
    }

    fn challenge(challenge: Challenge) -> BrokerFrame {
        BrokerFrame::Challenge(challenge)
    }

    fn welcome(welcome: NodeWelcome) -> BrokerFrame {
        BrokerFrame::Welcome {
            node_id: welcome.node_id,
            heartbeat_interval_ms: welcome.heartbeat_interval_ms,
        }
    }

    fn refused(refusal: Refusal) -> BrokerFrame {
        BrokerFrame::Refused(refusal)
    }

    fn client_step(frame: NodeFrame) -> ClientStep {
        match frame {
            NodeFrame::Hello { version } => ClientStep::Hello { version },
            NodeFrame::Proof(proof) => ClientStep::Proof(proof),
            _ => ClientStep::Other,
        }
    }

    fn server_step(frame: BrokerFrame) -> ServerStep<NodeWelcome> {
        match frame {
            BrokerFrame::Challenge(challenge) => ServerStep::Challenge(challenge),
            BrokerFrame::Welcome {
                node_id,
                heartbeat_interval_ms,
            } => ServerStep::Welcome(NodeWelcome {
                node_id,
                heartbeat_interval_ms,
            }),
            BrokerFrame::Refused(refusal) => ServerStep::Refused(refusal),
            other => ServerStep::Other(format!("{other:?}")),
        }
    }
}
