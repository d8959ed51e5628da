//! The run's federation as a Flower ServerApp's task sees it: its instructions go to the nodes
//! through the run's grid, the replies back into the task, and its log lines into the run's log
//! through a bounded queue that a writer of its own drains.

use crate::runs::grid::BrokerGrid;
use crate::state::Shared;
use flower_runtime::serverapp::{Federation, Outgoing, ServerAppTask};
use flwr_sdk::app::{Grid as _, Instruction};
use std::sync::Arc;
use std::time::Duration;
use wire::message::{ErrorCode, MessageError, MessageType, now_ms};
use wire::{Message, MessageBody, MessageId, NodeId};

/// Longest an instruction waits for its reply (Flower's default time to live is 12 hours).
const MAX_TTL: Duration = Duration::from_secs(12 * 60 * 60);

/// Most batches of log lines waiting to be written.
const LOG_QUEUE: usize = 256;

/// What the log writer is handed.
enum LogWork {
    /// Lines to append.
    Lines(Vec<String>),
    /// Everything handed before is written: say so.
    Flush(std::sync::mpsc::Sender<()>),
}

/// The run's federation, as the Flower ServerApp's task uses it.
pub struct BrokerFederation {
    grid: Arc<BrokerGrid>,
    /// Batches of log lines, written in order by a blocking task of their own: a log write
    /// commits to the database, which no request of the app's should wait on. The queue is bounded; what
    /// does not fit is counted and said.
    logs: std::sync::mpsc::SyncSender<LogWork>,
    /// Lines dropped because the queue was full.
    dropped: Arc<std::sync::atomic::AtomicUsize>,
}

impl BrokerFederation {
    /// The federation of run `run_id`, sending with `grid`.
    pub fn new(shared: Arc<Shared>, grid: Arc<BrokerGrid>, run_id: wire::RunId) -> Self {
        let (logs, work) = std::sync::mpsc::sync_channel::<LogWork>(LOG_QUEUE);
        let dropped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = dropped.clone();
        // On the runtime's blocking pool, so that the broker's shutdown waits for it; it ends
        // when the federation, and with it every sender, is dropped.
        tokio::task::spawn_blocking(move || {
            for item in work {
                match item {
                    LogWork::Lines(mut lines) => {
                        let lost = counted.swap(0, std::sync::atomic::Ordering::Relaxed);
                        if lost > 0 {
                            lines.insert(
                                0,
                                format!(
                                    "({lost} lines of the ServerApp's output were dropped: it \
                                     wrote faster than the log could keep)"
                                ),
                            );
                        }
                        shared.runs.log_lines(&shared.store, run_id, &lines);
                    }
                    LogWork::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        BrokerFederation {
            grid,
            logs,
            dropped,
        }
    }

    /// Waits (at most `timeout`) until every line handed so far is written.
    pub fn flush(&self, timeout: Duration) {
        let (done, written) = std::sync::mpsc::channel();
        if self.logs.send(LogWork::Flush(done)).is_ok() {
            let _ = written.recv_timeout(timeout);
        }
    }

    fn queue(&self, lines: Vec<String>) {
        let count = lines.len();
        if self.logs.try_send(LogWork::Lines(lines)).is_err() {
            self.dropped
                .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl Federation for BrokerFederation {
    fn node_ids(&self) -> Result<Vec<u64>, String> {
        self.grid
            .node_ids()
            .map(|ids| ids.into_iter().map(|id| id.0).collect())
            .map_err(|e| e.to_string())
    }

    fn send(&self, task: Arc<ServerAppTask>, instructions: Vec<Outgoing>) {
        let mut ids = Vec::with_capacity(instructions.len());
        let mut sendable = Vec::with_capacity(instructions.len());
        let mut ttl = Duration::ZERO;
        for outgoing in instructions {
            let dst = NodeId(outgoing.dst_node_id);
            let message_type = match MessageType::new(outgoing.message_type.clone()) {
                Ok(message_type) => message_type,
                Err(error) => {
                    task.deliver(
                        &outgoing.flower_id,
                        &refusal(dst, &outgoing.group_id, error.to_string()),
                    );
                    continue;
                }
            };
            let instruction_ttl = Duration::try_from_secs_f64(outgoing.ttl)
                .unwrap_or(MAX_TTL)
                .min(MAX_TTL);
            ttl = ttl.max(instruction_ttl);
            ids.push(outgoing.flower_id);
            sendable.push(Instruction {
                dst,
                message_type,
                group_id: outgoing.group_id,
                content: outgoing.content,
            });
        }
        if sendable.is_empty() {
            return;
        }
        let grid = self.grid.clone();
        let logs = self.logs.clone();
        tokio::spawn(async move {
            let result = grid
                .send_indexed(sendable, ttl, |index, reply| {
                    if let Some(line) = crate::runs::output::node_error_line(&reply) {
                        let _ = logs.try_send(LogWork::Lines(vec![line]));
                    }
                    if let Some(id) = ids.get(index).cloned() {
                        // Made into Flower's objects (hashing a model's bytes) off the runtime.
                        let task = task.clone();
                        tokio::task::spawn_blocking(move || task.deliver(&id, &reply));
                    }
                })
                .await;
            if let Err(error) = result {
                tracing::debug!(%error, "a Flower ServerApp's send ended early");
            }
        });
    }

    fn log(&self, lines: Vec<String>) {
        self.queue(lines);
    }
}

/// An error reply from `node`, in place of one it was never sent.
fn refusal(node: NodeId, group_id: &str, reason: String) -> Message {
    Message {
        metadata: wire::message::Metadata {
            run_id: wire::RunId(0),
            message_id: MessageId::random(),
            src_node_id: node,
            dst_node_id: NodeId::SERVER,
            reply_to: None,
            group_id: group_id.to_string(),
            ttl_ms: 0,
            message_type: MessageType::QUERY,
            created_at_ms: now_ms(),
        },
        body: MessageBody::Error(MessageError {
            code: ErrorCode::InvalidReply,
            reason,
        }),
    }
}
