//! One run's `flwr-serverapp` task, served as Flower's SuperLink serves it: the app pulls its
//! input (context with node id 1, the run, the FAB), lists the federation's nodes, pushes
//! instructions and their objects, pulls the replies by instruction id and their objects,
//! confirms them, pushes its log output, and finally its output status.
//!
//! The daemon's side is a [`Federation`]: the nodes online, sending instructions (each reply is
//! handed back with [`ServerAppTask::deliver`]) and the run's log. An instruction is sent once
//! every object of its tree has arrived and it has been read back, ids, metadata and sizes
//! checked; instructions pushed together that share their records (a strategy sends one model
//! to every node) share one copy of them.

use crate::messages::{body_to_objects, code};
use crate::objects::{Body, Deflated, ObjectError, deflate, inflate, is_object_id, object_id};
use crate::proto;
use crate::server::{ApiError, Endpoint};
use crate::tasks::{Task, TaskInput, collect_ids, decode, encode};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use wire::{Message, RecordDict};

mod mailbox;
mod push;

/// The server app's node id, which every instruction it sends carries as its source.
pub const SERVER_NODE: u64 = 1;

/// Longest log line kept; a longer one is cut.
const MAX_LOG_LINE: usize = 4096;

/// Most instructions in flight at once.
const MAX_OUTSTANDING: usize = 1 << 20;

/// Most instructions whose objects may be arriving at once.
pub const MAX_PUSHING: usize = 16_384;

/// Most push sessions open at once.
const MAX_SESSIONS: usize = 1024;

/// What holding one pushed object costs beyond its bytes (its id, its entries), counted against
/// the pushed-bytes budget so that many tiny objects are bounded too.
const OBJECT_OVERHEAD: u64 = 128;

/// Most log lines taken from one push of the app's output; the rest are counted, not kept.
const MAX_LOG_LINES_PER_PUSH: usize = 1000;

/// Shortest and longest a reply waits to be pulled before it is dropped (its instruction's time
/// to live, within these): an app that stopped waiting for it never will.
const MIN_REPLY_WAIT: Duration = Duration::from_secs(60);
const MAX_REPLY_WAIT: Duration = Duration::from_secs(12 * 60 * 60);

/// An instruction, read back whole and checked, for the federation to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Its id on Flower's side (its tree's root), which its reply is delivered under.
    pub flower_id: String,
    /// The destination node.
    pub dst_node_id: u64,
    /// Flower's message type (`train`, `evaluate`, `query`, ...).
    pub message_type: String,
    /// The round.
    pub group_id: String,
    /// Its time to live, in seconds.
    pub ttl: f64,
    /// The records; instructions pushed together with equal records share them.
    pub content: Arc<RecordDict>,
}

/// What the run's federation does for its server app.
pub trait Federation: Send + Sync + 'static {
    /// The ids of the nodes online now.
    fn node_ids(&self) -> Result<Vec<u64>, String>;

    /// Sends `instructions`; each reply (or the error in place of one) is handed to
    /// `task.deliver` under the instruction's Flower id.
    fn send(&self, task: Arc<ServerAppTask>, instructions: Vec<Outgoing>);

    /// Appends lines of the app's output to the run's log (called outside the task's lock).
    fn log(&self, lines: Vec<String>);
}

/// How the app ended, as it reported it (or did not).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServerOutcome {
    /// `completed` or `failed`; `None` if it never said.
    pub sub_status: Option<String>,
    /// Its failure text, if any.
    pub details: String,
}

/// An instruction whose objects are still arriving.
struct Pushing {
    metadata: proto::Metadata,
    /// When it is given up on if its objects have not all arrived (its time to live).
    expires: Instant,
    /// Its objects not here yet.
    missing: HashSet<String>,
    /// The id of its records' object (instructions with the same one share their records).
    content_id: Option<String>,
}

/// A reply handed to the app, until it confirms it.
struct HandedOut {
    objects: Vec<String>,
    /// When its objects are dropped unconfirmed (Flower's app skips the confirmation when an
    /// object is missing).
    expires: Instant,
}

/// An instruction sent and not yet answered.
struct Outstanding {
    message_type: String,
    /// How long its reply may wait to be pulled.
    reply_wait: Duration,
}

/// A reply waiting to be pulled.
struct Ready {
    message: proto::Message,
    tree: proto::ObjectTree,
    objects: Vec<String>,
    /// When it is dropped unpulled.
    expires: Instant,
}

#[derive(Default)]
struct State {
    started: bool,
    finished: bool,
    /// Instructions being pushed, by Flower id.
    pushing: HashMap<String, Pushing>,
    /// The objects each push session may still bring.
    sessions: HashMap<String, HashSet<String>>,
    /// Objects pushed, kept while an instruction still being pushed may need them.
    pushed: HashMap<String, Vec<u8>>,
    pushed_bytes: u64,
    /// Records already read back, by their object's id, for instructions that share them.
    contents: HashMap<String, Arc<RecordDict>>,
    /// Instructions sent and not yet answered.
    outstanding: HashMap<String, Outstanding>,
    /// Replies ready to be pulled, by instruction id.
    ready: HashMap<String, Ready>,
    /// Objects of replies, with how many unconfirmed replies hold each.
    reply_objects: HashMap<String, (Vec<u8>, usize)>,
    /// Replies pulled and not yet confirmed, by reply id.
    handed_out: HashMap<String, HandedOut>,
    /// Output after its last newline.
    partial_log: String,
    outcome: Option<ServerOutcome>,
}

/// One run's `flwr-serverapp` task.
pub struct ServerAppTask {
    me: Weak<ServerAppTask>,
    input: TaskInput,
    federation: Arc<dyn Federation>,
    /// Most bytes of objects held for instructions being pushed.
    max_pushed_bytes: u64,
    state: Mutex<State>,
    finished: watch::Sender<bool>,
    /// When the app last called (or the task was made).
    last_call: Mutex<Instant>,
    /// When the task was made.
    created: Instant,
}

/// Whether the app is still heard from, for a daemon's watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// It has called within the patience given.
    Alive,
    /// It never took its input within the patience given.
    NeverStarted,
    /// It took its input, then fell silent (no heartbeat, no call) for longer.
    Silent,
}

impl ServerAppTask {
    /// A task that hands the app `input`, sends its instructions through `federation`, and holds
    /// at most `max_pushed_bytes` of objects for instructions being pushed.
    pub fn new(
        input: TaskInput,
        federation: Arc<dyn Federation>,
        max_pushed_bytes: u64,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| ServerAppTask {
            me: me.clone(),
            input,
            federation,
            max_pushed_bytes,
            state: Mutex::default(),
            finished: watch::channel(false).0,
            last_call: Mutex::new(Instant::now()),
            created: Instant::now(),
        })
    }

    /// Whether the app has been heard from within `patience` (its heartbeats come every 20 s
    /// or so), and took its input within `patience` of the task being made.
    pub fn liveness(&self, patience: Duration) -> Liveness {
        let last = *self.last_call.lock().unwrap_or_else(|p| p.into_inner());
        // Heartbeats come before the input is taken: they do not count as starting.
        if !self.state().started {
            if self.created.elapsed() > patience {
                Liveness::NeverStarted
            } else {
                Liveness::Alive
            }
        } else if last.elapsed() > patience {
            Liveness::Silent
        } else {
            Liveness::Alive
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until the app has sent its output (or [`ServerAppTask::abandon`] was called), then
    /// takes how it ended.
    pub async fn finished(&self) -> ServerOutcome {
        let mut finished = self.finished.subscribe();
        let _ = finished.wait_for(|done| *done).await;
        self.state().outcome.take().unwrap_or_default()
    }

    /// Ends the task from the daemon's side: its token stops working.
    pub fn abandon(&self) -> ServerOutcome {
        let (outcome, rest) = {
            let mut state = self.state();
            let rest = Self::finish(&mut state, ServerOutcome::default());
            (state.outcome.take().unwrap_or_default(), rest)
        };
        self.log(rest);
        self.finished.send_replace(true);
        outcome
    }

    /// Ends the task with `outcome`, dropping everything it held; returns the app's last
    /// unfinished log line, to be logged once the lock is released.
    fn finish(state: &mut State, outcome: ServerOutcome) -> Vec<String> {
        if state.finished {
            return Vec::new();
        }
        let rest = std::mem::take(&mut state.partial_log);
        *state = State {
            finished: true,
            outcome: Some(outcome),
            ..State::default()
        };
        let rest = wire::text::sanitize(rest.trim_end(), MAX_LOG_LINE);
        if rest.trim().is_empty() {
            Vec::new()
        } else {
            vec![rest]
        }
    }

    fn log(&self, lines: Vec<String>) {
        if !lines.is_empty() {
            self.federation.log(lines);
        }
    }

    /// The complete lines of the app's output so far, without terminal colours, at most
    /// [`MAX_LOG_LINES_PER_PUSH`] of them (and a line counting the rest), for the run's log.
    fn push_logs(&self, state: &mut State, fragments: Vec<String>) -> Vec<String> {
        for fragment in fragments {
            state.partial_log.push_str(&without_colours(&fragment));
        }
        let mut lines = Vec::new();
        let mut dropped = 0usize;
        let mut keep = |line: &str, lines: &mut Vec<String>| {
            let line = line.trim_end();
            if line.trim().is_empty() {
                return;
            }
            if lines.len() < MAX_LOG_LINES_PER_PUSH {
                lines.push(wire::text::sanitize(line, MAX_LOG_LINE));
            } else {
                dropped += 1;
            }
        };
        let complete = match state.partial_log.rfind('\n') {
            Some(end) => state.partial_log.drain(..=end).collect::<String>(),
            None => String::new(),
        };
        complete.split('\n').for_each(|line| keep(line, &mut lines));
        if state.partial_log.len() > MAX_LOG_LINE {
            let line = std::mem::take(&mut state.partial_log);
            keep(&line, &mut lines);
        }
        if dropped > 0 {
            lines.push(format!(
                "({dropped} more lines of the ServerApp's output were not kept)"
            ));
        }
        lines
    }

    fn node_infos(&self) -> Result<Vec<u8>, ApiError> {
        let ids = self
            .federation
            .node_ids()
            .map_err(|e| ApiError::new(503, 3000, e))?;
        let nodes = ids
            .into_iter()
            .map(|node_id| proto::NodeInfo {
                node_id,
                status: "online".into(),
                ..proto::NodeInfo::default()
            })
            .collect();
        Ok(encode(&proto::GetNodesResponse { nodes }))
    }
}

impl Task for ServerAppTask {
    fn is_live(&self) -> bool {
        !self.state().finished
    }

    fn answer(&self, endpoint: Endpoint, body: &[u8]) -> Result<Vec<u8>, ApiError> {
        *self.last_call.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        let mut state = self.state();
        if state.finished {
            return Err(ApiError::invalid_token());
        }
        match endpoint {
            Endpoint::PushTaskOutput => {
                let request = decode::<proto::PushTaskOutputRequest>(body)?;
                let rest = Self::finish(
                    &mut state,
                    ServerOutcome {
                        sub_status: Some(request.sub_status),
                        details: request.details,
                    },
                );
                drop(state);
                self.log(rest);
                self.finished.send_replace(true);
                Ok(encode(&proto::PushTaskOutputResponse {}))
            }
            Endpoint::SendTaskHeartbeat => {
                Ok(encode(&proto::SendTaskHeartbeatResponse { success: true }))
            }
            Endpoint::PullTaskInput => {
                if state.started {
                    return Err(ApiError::new(412, 3002, "The task has already started."));
                }
                state.started = true;
                let input = &self.input;
                Ok(encode(&proto::PullTaskInputResponse {
                    context: Some(input.context.clone()),
                    run: Some(input.run.clone()),
                    fab: Some(input.fab.clone()),
                    task_id: input.task_id,
                }))
            }
            _ if !state.started => Err(ApiError::new(
                412,
                3002,
                "The task has not pulled its input yet.",
            )),
            Endpoint::GetNodes => {
                drop(state);
                self.node_infos()
            }
            Endpoint::PushLogs => {
                let request = decode::<proto::PushLogsRequest>(body)?;
                let lines = self.push_logs(&mut state, request.logs);
                drop(state);
                self.log(lines);
                Ok(encode(&proto::PushLogsResponse {}))
            }
            Endpoint::PushMessages => {
                let request = decode::<proto::PushAppMessagesRequest>(body)?;
                let (response, outgoing) = self.push_messages(&mut state, request)?;
                drop(state);
                self.send(outgoing);
                Ok(response)
            }
            Endpoint::PushObject => {
                let request = decode::<proto::PushObjectRequest>(body)?;
                let (stored, outgoing) = self.push_object(&mut state, request);
                drop(state);
                self.send(outgoing);
                Ok(encode(&proto::PushObjectResponse { stored }))
            }
            Endpoint::PullMessages => {
                let request = decode::<proto::PullAppMessagesRequest>(body)?;
                Ok(encode(&self.pull_messages(&mut state, &request)))
            }
            Endpoint::PullObject => {
                let request = decode::<proto::PullObjectRequest>(body)?;
                let found = state.reply_objects.get(&request.object_id);
                Ok(encode(&proto::PullObjectResponse {
                    object_found: found.is_some(),
                    object_available: found.is_some(),
                    object_content: found.map(|(bytes, _)| bytes.clone()).unwrap_or_default(),
                }))
            }
            Endpoint::ConfirmMessageReceived => {
                let request = decode::<proto::ConfirmMessageReceivedRequest>(body)?;
                self.confirm(&mut state, &request.message_object_id);
                Ok(encode(&proto::ConfirmMessageReceivedResponse {}))
            }
        }
    }
}

impl ServerAppTask {
    /// Hands instructions read back to the federation, outside the lock.
    fn send(&self, outgoing: Vec<Outgoing>) {
        if outgoing.is_empty() {
            return;
        }
        if let Some(me) = self.me.upgrade() {
            self.federation.send(me, outgoing);
        }
    }
}

/// `text` without terminal escape sequences (Flower colours its log levels): the run's log is
/// read with `flwr log`, in files and as JSON, where they are noise.
fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        // ESC [ parameters... final byte (0x40 to 0x7e); any other escape is dropped alone.
        let mut rest = chars.clone();
        if rest.next() == Some('[') {
            for c in rest.by_ref() {
                if ('\u{40}'..='\u{7e}').contains(&c) {
                    break;
                }
            }
            chars = rest;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::without_colours;

    #[test]
    fn colours_are_dropped_from_log_lines() {
        assert_eq!(
            without_colours("\u{1b}[92mINFO \u{1b}[0m:      [ROUND 1/1]"),
            "INFO :      [ROUND 1/1]"
        );
        assert_eq!(without_colours("plain \u{1b}x"), "plain x");
    }
}
