//! Apps are Rust traits: the server half ([`ServerApp`], Flower's ServerApp) runs inside the broker
//! and sees the federation only through a [`Grid`]; the client half ([`ClientApp`], Flower's
//! ClientApp) runs on each node. Both are synchronous and run off the async runtime: training and
//! aggregation are CPU work.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use thiserror::Error;
use wire::{ConfigRecord, ConfigValue, Message, MessageType, NodeId, RecordDict, RunId};

/// An app failed; the text goes to the run's log.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{0}")]
pub struct AppError(pub String);

impl AppError {
    /// An error with `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        AppError(reason.into())
    }
}

/// Why the grid could not do what the server app asked.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum GridError {
    /// The run was stopped by an operator: return at once.
    #[error("the run was stopped")]
    Stopped,
    /// The broker failed (storage).
    #[error("SuperLink error: {0}")]
    Internal(String),
}

impl From<GridError> for AppError {
    fn from(error: GridError) -> Self {
        AppError(error.to_string())
    }
}

/// One instruction for one node. The content is shared: sending the same model to a thousand nodes
/// holds it in memory once.
#[derive(Debug, Clone)]
pub struct Instruction {
    /// Destination node.
    pub dst: NodeId,
    /// What to do.
    pub message_type: MessageType,
    /// The round (Flower's group id).
    pub group_id: String,
    /// The records.
    pub content: Arc<RecordDict>,
}

/// The federation as a server app sees it.
pub trait Grid: Send + Sync {
    /// The run.
    fn run_id(&self) -> RunId;

    /// Ids of the nodes online now.
    fn node_ids(&self) -> Result<Vec<NodeId>, GridError>;

    /// Waits until at least `count` nodes are online or `timeout` passes; returns the online ids.
    fn wait_for_nodes(&self, count: usize, timeout: Duration) -> Result<Vec<NodeId>, GridError>;

    /// Sends `instructions` and calls `on_reply` with each reply as it arrives, until every
    /// instruction is answered or `timeout` passes. An instruction without a reply by then, or whose
    /// node went away, is answered with an error message (Flower's MESSAGE_UNAVAILABLE or
    /// NODE_UNAVAILABLE), so every instruction gets exactly one call.
    fn send_and_fold(
        &self,
        instructions: Vec<Instruction>,
        timeout: Duration,
        on_reply: &mut dyn FnMut(Message),
    ) -> Result<(), GridError>;

    /// Appends a line to the run's log (stored, and pushed to followers at once).
    fn log(&self, line: &str);

    /// Stores a named artifact with the run (for example the final model), replacing any earlier one.
    fn save_artifact(&self, name: &str, bytes: &[u8]) -> Result<(), GridError>;

    /// Durably stores the app's state after a completed round, replacing the previous one. If the
    /// SuperLink restarts mid-run, the run starts again with it in [`ServerContext::checkpoint`].
    fn save_checkpoint(&self, state: &[u8]) -> Result<(), GridError>;

    /// [`Grid::send_and_fold`], collecting the replies.
    fn send_and_receive(
        &self,
        instructions: Vec<Instruction>,
        timeout: Duration,
    ) -> Result<Vec<Message>, GridError> {
        let mut replies = Vec::new();
        self.send_and_fold(instructions, timeout, &mut |reply| replies.push(reply))?;
        Ok(replies)
    }
}

/// What a server app knows about its run.
#[derive(Debug, Clone)]
pub struct ServerContext {
    /// The run.
    pub run_id: RunId,
    /// The run config.
    pub run_config: ConfigRecord,
    /// The last state the app saved with [`Grid::save_checkpoint`], when the run is resumed after
    /// a SuperLink restart; `None` on a fresh start.
    pub checkpoint: Option<Vec<u8>>,
}

/// The server half of an app.
pub trait ServerApp: Send + Sync {
    /// Runs the whole strategy; returns when the run is complete. An error fails the run.
    fn run(&self, grid: &dyn Grid, context: &ServerContext) -> Result<(), AppError>;
}

/// What a client app knows when it handles a message.
#[derive(Debug, Clone)]
pub struct ClientContext {
    /// This node.
    pub node_id: NodeId,
    /// The node's configuration (`--node-config`).
    pub node_config: ConfigRecord,
    /// The run's configuration.
    pub run_config: ConfigRecord,
    /// Set when the run is stopped: long work should check it and give up.
    pub cancelled: Arc<AtomicBool>,
}

impl ClientContext {
    /// Whether the run was stopped.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }
}

/// The client half of an app.
pub trait ClientApp: Send + Sync {
    /// Handles one instruction; returns the reply's content.
    fn handle(&self, message: &Message, context: &ClientContext) -> Result<RecordDict, AppError>;
}

/// A typed config value with a default; a value of the wrong type is an error naming the key.
pub fn config_f64(config: &ConfigRecord, key: &str, default: f64) -> Result<f64, AppError> {
    match config.get(key) {
        None => Ok(default),
        Some(ConfigValue::Float(v)) => Ok(*v),
        Some(ConfigValue::Int(v)) => Ok(*v as f64),
        Some(other) => Err(AppError(format!(
            "config {key:?} must be a number, got {other:?}"
        ))),
    }
}

/// A typed integer config value with a default.
pub fn config_i64(config: &ConfigRecord, key: &str, default: i64) -> Result<i64, AppError> {
    match config.get(key) {
        None => Ok(default),
        Some(ConfigValue::Int(v)) => Ok(*v),
        Some(other) => Err(AppError(format!(
            "config {key:?} must be an integer, got {other:?}"
        ))),
    }
}

/// A typed string config value.
pub fn config_str<'a>(config: &'a ConfigRecord, key: &str) -> Result<Option<&'a str>, AppError> {
    match config.get(key) {
        None => Ok(None),
        Some(ConfigValue::Str(v)) => Ok(Some(v)),
        Some(other) => Err(AppError(format!(
            "config {key:?} must be a string, got {other:?}"
        ))),
    }
}
