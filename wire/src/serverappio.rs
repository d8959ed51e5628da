//! The ServerAppIo API: the SuperLink and the server app program it starts for one run of an
//! app bundle whose `serverapp` is a program, over TCP on the SuperLink's
//! `--serverappio-api-address` (loopback by default).
//!
//! The program connects to [`ADDRESS_ENV`] and sends a [`crate::clientappio::AppHello`] with
//! [`SERVERAPPIO_VERSION`] and the one-time token of [`TOKEN_ENV`]; a connection showing
//! anything else gets nothing. The SuperLink answers with [`ServerJob`], followed by the run's
//! checkpoint when it has one (`checkpoint_size` raw bytes). The program then sends
//! [`GridRequest`]s, one at a time, each answered as it says. The run ends when the program
//! exits: completed with status 0, failed otherwise (its last stderr lines go to the run's log).

use crate::{ConfigRecord, NodeId, RunId};
use serde::{Deserialize, Serialize};

/// Version of this API; a program of another version is refused. Version 2 carries records and
/// messages as Flower has them, as ClientAppIo version 3 does.
pub const SERVERAPPIO_VERSION: u16 = 2;

/// The environment variable carrying the token, hex-encoded.
pub const TOKEN_ENV: &str = "FLWR_SERVERAPP_TOKEN";

/// The environment variable carrying the address of the SuperLink's ServerAppIo API.
pub const ADDRESS_ENV: &str = "FLWR_SERVERAPPIO_ADDRESS";

/// Largest [`ServerJob`] or [`GridResponse`] frame, and largest [`GridRequest`] frame.
pub const CONTROL_FRAME_LIMIT: u32 = 1024 * 1024;

/// SuperLink to program, once its hello was accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerJob {
    /// The run.
    pub run_id: RunId,
    /// App name (`[app] name`).
    pub app_name: String,
    /// App version.
    pub app_version: String,
    /// The run config.
    pub run_config: ConfigRecord,
    /// Length of the checkpoint that follows as raw bytes, when the run is resumed after a
    /// SuperLink restart; `None` on a fresh start.
    pub checkpoint_size: Option<u64>,
}

/// Program to SuperLink: what the server app asks of the federation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GridRequest {
    /// The ids of the nodes online now: answered with [`GridResponse::Nodes`].
    NodeIds,
    /// Waits until `count` nodes are online or `timeout_ms` passes: answered with
    /// [`GridResponse::Nodes`] (the nodes online then, maybe fewer).
    WaitForNodes {
        /// Nodes wanted.
        count: u64,
        /// How long to wait, in milliseconds.
        timeout_ms: u64,
    },
    /// Sends one message to each of `destinations`. The message follows as a message stream
    /// (its content, and its metadata's `message_type` and `group_id`; the SuperLink fills in
    /// the rest). Each reply, as it arrives, is sent back as [`GridResponse::Reply`] followed by
    /// the reply's message stream; an instruction unanswered after `timeout_ms` or whose node
    /// went away is answered with an error message in its node's place. [`GridResponse::Done`]
    /// follows the last.
    SendAndReceive {
        /// The nodes.
        destinations: Vec<NodeId>,
        /// How long to wait for the replies, in milliseconds.
        timeout_ms: u64,
    },
    /// Appends a line to the run's log: answered with [`GridResponse::Ok`].
    Log {
        /// The line.
        line: String,
    },
    /// Stores a named artifact with the run (`flwr pull` fetches it), replacing any earlier one.
    /// `size` raw bytes follow; answered with [`GridResponse::Ok`].
    SaveArtifact {
        /// File name.
        name: String,
        /// Its length.
        size: u64,
    },
    /// Durably stores the app's state after a completed round; a run resumed after a SuperLink
    /// restart gets it in [`ServerJob`]. `size` raw bytes follow; answered with
    /// [`GridResponse::Ok`].
    SaveCheckpoint {
        /// Its length.
        size: u64,
    },
}

/// SuperLink to program.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GridResponse {
    /// Node ids.
    Nodes(Vec<NodeId>),
    /// One reply of a [`GridRequest::SendAndReceive`]; its message stream follows.
    Reply,
    /// Every message of the [`GridRequest::SendAndReceive`] was answered.
    Done,
    /// Done as asked.
    Ok,
    /// The request failed.
    Error(GridFailure),
}

/// Why the SuperLink could not do what the program asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GridFailure {
    /// The run was stopped by an operator: exit.
    Stopped,
    /// The SuperLink failed (storage).
    Internal(String),
    /// The request was invalid (an artifact name or size, a malformed message).
    Invalid(String),
}

impl std::fmt::Display for GridFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GridFailure::Stopped => write!(f, "the run was stopped"),
            GridFailure::Internal(why) => write!(f, "SuperLink error: {why}"),
            GridFailure::Invalid(why) => write!(f, "invalid request: {why}"),
        }
    }
}
