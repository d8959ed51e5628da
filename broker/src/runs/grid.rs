//! The federation as a run's server app sees it. The app runs on a blocking thread; this grid
//! bridges its calls onto the broker's async machinery.

use crate::server::Shared;
use model::app::{Grid, GridError, Instruction};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wire::message::{ErrorCode, MessageError, now_ms};
use wire::{Message, MessageBody, MessageId, Metadata, NodeId, RecordDict, RunId};

/// Where replies for in-flight instructions go: instruction id -> the waiting run.
#[derive(Default)]
pub struct ReplyRouter {
    /// Waiting runs by instruction id.
    routes: std::sync::Mutex<HashMap<MessageId, mpsc::UnboundedSender<Message>>>,
}

impl ReplyRouter {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<MessageId, mpsc::UnboundedSender<Message>>> {
        // Inserts and removes only: a poisoned map is still consistent.
        self.routes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hands a stored reply to the run waiting for it; a reply nobody waits for any more (a stale
    /// round, a finished run) is simply not aggregated.
    pub fn route(&self, reply: Message) {
        let Some(instruction) = reply.metadata.reply_to else {
            return;
        };
        if let Some(route) = self.lock().get(&instruction) {
            let _ = route.send(reply);
        }
    }
}

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

    fn check(&self) -> Result<(), GridError> {
        if self.cancel.is_cancelled() {
            Err(GridError::Stopped)
        } else {
            Ok(())
        }
    }

    /// An error reply made by the broker for an instruction that will get no real one, recorded
    /// like a real reply so that a late real one is recognised as a duplicate. `None` when a real
    /// reply won the race: it is recorded before it is routed, so it is already on its way to the
    /// round.
    fn stand_in(
        &self,
        metadata: &Metadata,
        code: ErrorCode,
        reason: String,
    ) -> Result<Option<Message>, GridError> {
        let instruction = Message {
            metadata: metadata.clone(),
            body: MessageBody::Error(MessageError {
                code,
                reason: String::new(),
            }),
        };
        let reply = instruction.reply(MessageBody::Error(MessageError { code, reason }), now_ms());
        match self.shared.store.store_reply(&reply) {
            Ok(crate::store::ReplyStored::New) => Ok(Some(reply)),
            Ok(crate::store::ReplyStored::Duplicate) => Ok(None),
            Err(error) => Err(GridError::Internal(error.to_string())),
        }
    }

    /// Answers each of `missing` with a stand-in made from `reason`, and stops waiting for it,
    /// unless its real reply has come in meanwhile.
    fn give_up_on(
        &self,
        missing: Vec<Metadata>,
        outstanding: &mut HashMap<MessageId, Metadata>,
        code: ErrorCode,
        reason: impl Fn(&Metadata) -> String,
        on_reply: &mut dyn FnMut(Message),
    ) -> Result<(), GridError> {
        for metadata in missing {
            if let Some(stand_in) = self.stand_in(&metadata, code, reason(&metadata))? {
                outstanding.remove(&metadata.message_id);
                on_reply(stand_in);
            }
        }
        Ok(())
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
        let mut changes = self.shared.sessions.watch();
        let deadline = tokio::time::Instant::now() + timeout;
        self.handle.block_on(async {
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
        })
    }

    fn send_and_fold(
        &self,
        instructions: Vec<Instruction>,
        timeout: Duration,
        on_reply: &mut dyn FnMut(Message),
    ) -> Result<(), GridError> {
        self.check()?;
        let internal = |e: crate::store::StoreError| GridError::Internal(e.to_string());
        let now = now_ms();
        let ttl_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        // One stored content per distinct shared content, however many nodes receive it.
        let mut batches: Vec<(u128, Arc<RecordDict>, Vec<Metadata>)> = Vec::new();
        for instruction in instructions {
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
            match batches
                .iter_mut()
                .find(|(_, content, _)| Arc::ptr_eq(content, &instruction.content))
            {
                Some((_, _, list)) => list.push(metadata),
                None => batches.push((MessageId::random().0, instruction.content, vec![metadata])),
            }
        }
        let (route, mut replies) = mpsc::unbounded_channel();
        let mut outstanding: HashMap<MessageId, Metadata> = HashMap::new();
        {
            let mut routes = self.shared.router.lock();
            for (_, _, list) in &batches {
                for metadata in list {
                    routes.insert(metadata.message_id, route.clone());
                    outstanding.insert(metadata.message_id, metadata.clone());
                }
            }
        }
        let ids: Vec<MessageId> = outstanding.keys().copied().collect();
        let round_started = std::time::Instant::now();
        let result = self.handle.block_on(async {
            let mut departures = self.shared.sessions.departures();
            for (content_id, content, list) in &batches {
                self.shared.contents.insert(*content_id, content.clone());
                self.shared.store.enqueue(*content_id, list).map_err(internal)?;
            }
            let mut absent = Vec::new();
            for (_, _, list) in &batches {
                for metadata in list {
                    if !self.shared.sessions.wake(metadata.dst_node_id) {
                        absent.push(metadata.clone());
                    }
                }
            }
            self.give_up_on(
                absent,
                &mut outstanding,
                ErrorCode::NodeUnavailable,
                |m| format!("node {} is not online", m.dst_node_id),
                on_reply,
            )?;
            let deadline = tokio::time::Instant::now() + timeout;
            while !outstanding.is_empty() {
                tokio::select! {
                    _ = self.cancel.cancelled() => return Err(GridError::Stopped),
                    Some(reply) = replies.recv() => {
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
                        self.give_up_on(
                            gone,
                            &mut outstanding,
                            ErrorCode::NodeUnavailable,
                            |m| format!("node {} went offline", m.dst_node_id),
                            on_reply,
                        )?;
                    }
                    _ = tokio::time::sleep_until(deadline) => {
                        // A reply recorded just before the deadline stays outstanding: it is
                        // already in the channel, and the next turn of the loop takes it.
                        let late = outstanding.values().cloned().collect();
                        self.give_up_on(
                            late,
                            &mut outstanding,
                            ErrorCode::MessageUnavailable,
                            |m| format!("no reply from node {} within {timeout:?}", m.dst_node_id),
                            on_reply,
                        )?;
                    }
                }
            }
            Ok(())
        });
        {
            let mut routes = self.shared.router.lock();
            for id in &ids {
                routes.remove(id);
            }
        }
        for (content_id, _, _) in &batches {
            self.shared.contents.remove(*content_id);
        }
        if result.is_ok() {
            self.shared.metrics.round_finished(round_started.elapsed());
        }
        result
    }

    fn log(&self, line: &str) {
        super::runner::log(&self.shared, self.run_id, line);
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

/// Contents of in-flight instructions, so delivery to many nodes reads the model once from memory
/// instead of once per node from the database.
#[derive(Default)]
pub struct LiveContents {
    /// By content id.
    contents: std::sync::Mutex<HashMap<u128, Arc<RecordDict>>>,
}

impl LiveContents {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u128, Arc<RecordDict>>> {
        // Inserts and removes only: a poisoned map is still consistent.
        self.contents
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps `content` at hand while its instructions are in flight.
    pub fn insert(&self, id: u128, content: Arc<RecordDict>) {
        self.lock().insert(id, content);
    }

    /// Drops it once they are answered.
    pub fn remove(&self, id: u128) {
        self.lock().remove(&id);
    }

    /// The content, if in flight.
    pub fn get(&self, id: u128) -> Option<Arc<RecordDict>> {
        self.lock().get(&id).cloned()
    }
}
