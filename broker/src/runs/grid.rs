//! The federation as a run's server app sees it. A built-in app runs on a blocking thread and
//! calls the [`Grid`] trait, which this grid bridges onto the broker's async machinery; the
//! supervised apps (programs, Flower's ServerApps) call its async methods directly.

use crate::rounds::Round;
use crate::state::Shared;
use flwr_sdk::app::{Grid, GridError, Instruction};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use wire::fleet::InstructionHeader;
use wire::message::{ErrorCode, MessageError, now_ms};
use wire::{Message, MessageBody, MessageId, Metadata, NodeId, RecordDict, RunId};

/// A [`Grid`] for one run.
pub struct BrokerGrid {
    /// The broker.
    shared: Arc<Shared>,
    /// The run.
    run_id: RunId,
    /// Cancelled when the run is stopped.
    cancel: CancellationToken,
    /// The broker's runtime, to wait on its events from the app's thread.
    handle: Handle,
}

impl BrokerGrid {
    /// A grid for `run_id`.
    pub fn new(
        shared: Arc<Shared>,
        run_id: RunId,
        cancel: CancellationToken,
        handle: Handle,
    ) -> Self {
        BrokerGrid {
            shared,
            run_id,
            cancel,
            handle,
        }
    }

    /// A grid for the same run whose sends end when the returned guard is dropped (or the run
    /// is stopped), whichever comes first: for an app whose sends must not outlive it.
    pub fn scoped(&self) -> (BrokerGrid, tokio_util::sync::DropGuard) {
        let cancel = self.cancel.child_token();
        let guard = cancel.clone().drop_guard();
        let grid = BrokerGrid {
            shared: self.shared.clone(),
            run_id: self.run_id,
            cancel,
            handle: self.handle.clone(),
        };
        (grid, guard)
    }

    fn check(&self) -> Result<(), GridError> {
        if self.cancel.is_cancelled() {
            Err(GridError::Stopped)
        } else {
            Ok(())
        }
    }

    /// The header every instruction of this run carries: its app and config, read once per
    /// round.
    fn header(&self) -> Result<Arc<InstructionHeader>, GridError> {
        let run = self
            .shared
            .store
            .run(self.run_id)
            .map_err(|e| GridError::Internal(e.to_string()))?
            .ok_or_else(|| GridError::Internal(format!("run {} is not stored", self.run_id)))?;
        Ok(Arc::new(InstructionHeader {
            app_name: run.app_name,
            app_version: run.app_version,
            run_config: run.config,
            bundle: run.bundle,
        }))
    }

    /// Answers each of `missing` in place of its node with an error reply made from `reason`,
    /// and stops waiting for it, unless its real reply has come in meanwhile (that one is on its
    /// way to the round and is taken instead).
    fn give_up_on<F: FnMut(Message) + ?Sized>(
        round: &Round,
        missing: Vec<Metadata>,
        outstanding: &mut HashMap<MessageId, Metadata>,
        code: ErrorCode,
        reason: impl Fn(&Metadata) -> String,
        on_reply: &mut F,
    ) {
        for metadata in missing {
            if round.answer_in_place_of(metadata.message_id) {
                outstanding.remove(&metadata.message_id);
                let instruction = Message {
                    metadata: metadata.clone(),
                    body: MessageBody::Error(MessageError {
                        code,
                        reason: String::new(),
                    }),
                };
                let reason = reason(&metadata);
                on_reply(
                    instruction.reply(MessageBody::Error(MessageError { code, reason }), now_ms()),
                );
            }
        }
    }

    /// The instructions' metadata, paired with their contents.
    fn address(
        &self,
        instructions: Vec<Instruction>,
        timeout: Duration,
    ) -> Vec<(Metadata, Arc<RecordDict>)> {
        let now = now_ms();
        let ttl_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        instructions
            .into_iter()
            .map(|instruction| {
                let metadata = Metadata {
                    run_id: self.run_id,
                    message_id: MessageId::random(),
                    src_node_id: NodeId::SERVER,
                    dst_node_id: instruction.dst,
                    reply_to: None,
                    group_id: instruction.group_id,
                    ttl_ms,
                    message_type: instruction.message_type,
                    created_at_ms: now,
                };
                (metadata, instruction.content)
            })
            .collect()
    }

    /// Waits for every reply of `round`, answering in place of nodes that leave and of replies
    /// that miss the deadline.
    async fn wait<F: FnMut(Message) + ?Sized>(
        &self,
        mut round: Round,
        mut outstanding: HashMap<MessageId, Metadata>,
        timeout: Duration,
        on_reply: &mut F,
    ) -> Result<(), GridError> {
        let mut departures = self.shared.sessions.departures();
        // Wakes each destination's delivery task; a destination that is not online has none, and
        // its instruction is answered in its place at once.
        let absent = outstanding
            .values()
            .filter(|m| !self.shared.sessions.wake(m.dst_node_id))
            .cloned()
            .collect();
        // A shutting-down broker stops its runs before it closes their nodes' connections: a node
        // found absent here while the run is stopping is absent because of the stop, and the
        // round must end stopped, not answered with errors in the nodes' place.
        self.check()?;
        Self::give_up_on(
            &round,
            absent,
            &mut outstanding,
            ErrorCode::NodeUnavailable,
            |m| format!("node {} is not online", m.dst_node_id),
            on_reply,
        );
        let deadline = tokio::time::Instant::now() + timeout;
        while !outstanding.is_empty() {
            tokio::select! {
                // A stop wins over whatever else is ready: no reply reaches a stopped run's app.
                biased;
                _ = self.cancel.cancelled() => return Err(GridError::Stopped),
                Some(reply) = round.replies.recv() => {
                    let answered = reply.metadata.reply_to.and_then(|id| outstanding.remove(&id));
                    if answered.is_some() {
                        on_reply(reply);
                    }
                }
                departed = departures.recv() => {
                    let gone: Vec<Metadata> = match departed {
                        Ok(node) => outstanding.values().filter(|m| m.dst_node_id == node).cloned().collect(),
                        // Missed departures: check every destination.
                        Err(_) => outstanding
                            .values()
                            .filter(|m| !self.shared.sessions.is_online(m.dst_node_id))
                            .cloned()
                            .collect(),
                    };
                    Self::give_up_on(
                        &round,
                        gone,
                        &mut outstanding,
                        ErrorCode::NodeUnavailable,
                        |m| format!("node {} went offline", m.dst_node_id),
                        on_reply,
                    );
                }
                _ = tokio::time::sleep_until(deadline) => {
                    // A reply accepted just before the deadline stays outstanding: it is already
                    // in the channel, and the next turn of the loop takes it.
                    let late = outstanding.values().cloned().collect();
                    Self::give_up_on(
                        &round,
                        late,
                        &mut outstanding,
                        ErrorCode::MessageUnavailable,
                        |m| format!("no reply from node {} within {timeout:?}", m.dst_node_id),
                        on_reply,
                    );
                }
            }
        }
        Ok(())
    }
}

impl BrokerGrid {
    /// [`Grid::wait_for_nodes`] for async callers.
    pub async fn wait_for_nodes_async(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<NodeId>, GridError> {
        let mut changes = self.shared.sessions.watch();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.check()?;
            let online = self.shared.sessions.online();
            if online.len() >= count {
                return Ok(online);
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return Err(GridError::Stopped),
                _ = tokio::time::sleep_until(deadline) => return Ok(self.shared.sessions.online()),
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Ok(self.shared.sessions.online());
                    }
                }
            }
        }
    }

    /// [`Grid::send_and_fold`] for async callers.
    pub async fn send_and_fold_async<F: FnMut(Message) + ?Sized>(
        &self,
        instructions: Vec<Instruction>,
        timeout: Duration,
        on_reply: &mut F,
    ) -> Result<(), GridError> {
        self.check()?;
        let addressed = self.address(instructions, timeout);
        let outstanding = addressed
            .iter()
            .map(|(metadata, _)| (metadata.message_id, metadata.clone()))
            .collect();
        // Dropped however this ends (replies in, stopped, an app callback panicking): the round's
        // instructions, queue entries and contents go with it.
        let round = self.shared.rounds.open(self.header()?, addressed);
        let started = std::time::Instant::now();
        let result = self.wait(round, outstanding, timeout, on_reply).await;
        if result.is_ok() {
            self.shared.metrics.round_finished(started.elapsed());
        }
        result
    }

    /// [`Grid::send_and_fold`] for async callers: sends `instructions` and calls `on_reply` with
    /// the index of the instruction each reply answers. It waits on the broker's events without
    /// holding a thread, so a server app may have many rounds in flight.
    pub async fn send_indexed(
        &self,
        instructions: Vec<Instruction>,
        timeout: Duration,
        mut on_reply: impl FnMut(usize, Message) + Send,
    ) -> Result<(), GridError> {
        self.check()?;
        let addressed = self.address(instructions, timeout);
        let index: HashMap<MessageId, usize> = addressed
            .iter()
            .enumerate()
            .map(|(i, (metadata, _))| (metadata.message_id, i))
            .collect();
        let outstanding = addressed
            .iter()
            .map(|(metadata, _)| (metadata.message_id, metadata.clone()))
            .collect();
        let round = self.shared.rounds.open(self.header()?, addressed);
        let mut by_index = |reply: Message| {
            if let Some(&i) = reply
                .metadata
                .reply_to
                .as_ref()
                .and_then(|id| index.get(id))
            {
                on_reply(i, reply);
            }
        };
        self.wait(round, outstanding, timeout, &mut by_index).await
    }
}

impl Grid for BrokerGrid {
    fn run_id(&self) -> RunId {
        self.run_id
    }

    fn node_ids(&self) -> Result<Vec<NodeId>, GridError> {
        self.check()?;
        Ok(self.shared.sessions.online())
    }

    fn wait_for_nodes(&self, count: usize, timeout: Duration) -> Result<Vec<NodeId>, GridError> {
        self.handle
            .block_on(self.wait_for_nodes_async(count, timeout))
    }

    fn send_and_fold(
        &self,
        instructions: Vec<Instruction>,
        timeout: Duration,
        on_reply: &mut dyn FnMut(Message),
    ) -> Result<(), GridError> {
        self.handle
            .block_on(self.send_and_fold_async(instructions, timeout, on_reply))
    }

    fn log(&self, line: &str) {
        self.shared.runs.log(&self.shared.store, self.run_id, line);
    }

    fn save_artifact(&self, name: &str, bytes: &[u8]) -> Result<(), GridError> {
        self.shared
            .store
            .save_artifact(self.run_id, name, bytes)
            .map_err(|e| GridError::Internal(e.to_string()))
    }

    fn save_checkpoint(&self, state: &[u8]) -> Result<(), GridError> {
        self.shared
            .store
            .save_checkpoint(self.run_id, state)
            .map_err(|e| GridError::Internal(e.to_string()))
    }
}
