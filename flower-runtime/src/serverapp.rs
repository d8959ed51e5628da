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
use crate::task::{Task, TaskInput, collect_ids, decode, encode};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use wire::{Message, RecordDict};

/// The server app's node id, which every instruction it sends carries as its source.
pub const SERVER_NODE: u64 = 1;

/// Longest log line kept; a longer one is cut.
const MAX_LOG_LINE: usize = 4096;

/// Most instructions in flight at once.
const MAX_OUTSTANDING: usize = 1 << 20;

/// Most instructions whose objects may be arriving at once.
const MAX_PUSHING: usize = 16_384;

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

    /// Hands the app the reply to its instruction `flower_id`: a node's, or the error the
    /// federation answered in its place.
    pub fn deliver(&self, flower_id: &str, reply: &Message) {
        let Some(outstanding) = self.state().outstanding.remove(flower_id) else {
            return;
        };
        let metadata = proto::Metadata {
            run_id: self.input.run.run_id,
            src_node_id: reply.metadata.src_node_id.0,
            dst_node_id: SERVER_NODE,
            reply_to_message_id: flower_id.to_string(),
            group_id: reply.metadata.group_id.clone(),
            ttl: reply.metadata.ttl_ms as f64 / 1000.0,
            message_type: outstanding.message_type,
            created_at: reply.metadata.created_at_ms as f64 / 1000.0,
            ..proto::Metadata::default()
        };
        // Made into objects (a model's bytes hashed and copied) before the lock is taken.
        let prepared = Self::prepare(metadata, &body_to_objects(&reply.body));
        let mut state = self.state();
        if !state.finished {
            Self::make_ready(&mut state, flower_id, prepared, outstanding.reply_wait);
        }
    }

    /// Answers instruction `flower_id` in place of a node, as Flower's SuperLink answers one it
    /// cannot deliver: from node 1 to node 1, type `system`.
    fn answer_in_place(
        state: &mut State,
        run_id: u64,
        flower_id: &str,
        error: proto::Error,
        reply_wait: Duration,
    ) {
        let metadata = proto::Metadata {
            run_id,
            src_node_id: SERVER_NODE,
            dst_node_id: SERVER_NODE,
            reply_to_message_id: flower_id.to_string(),
            message_type: "system".into(),
            created_at: wire::message::now_ms() as f64 / 1000.0,
            ..proto::Metadata::default()
        };
        let prepared = Self::prepare(metadata, &Body::Error(error));
        Self::make_ready(state, flower_id, prepared, reply_wait);
    }

    /// Makes the reply `metadata` + `body` to `flower_id` ready to pull, its objects kept until
    /// it is confirmed.
    /// The reply `metadata` + `body` as Flower's objects, with its message; a body that cannot
    /// be one becomes an error saying so.
    fn prepare(metadata: proto::Metadata, body: &Body) -> Option<(proto::Metadata, Deflated)> {
        let deflated = deflate(&metadata, body).or_else(|error| {
            let reason = format!("the reply cannot be given to a Flower app: {error}");
            let error = proto::Error {
                code: code::UNKNOWN,
                reason,
            };
            deflate(&metadata, &Body::Error(error))
        });
        let deflated = deflated.ok()?;
        let mut metadata = metadata;
        metadata.message_id = deflated.tree.object_id.clone();
        Some((metadata, deflated))
    }

    /// Makes a prepared reply to `flower_id` ready to pull, its objects kept until it is
    /// confirmed or it expires.
    fn make_ready(
        state: &mut State,
        flower_id: &str,
        prepared: Option<(proto::Metadata, Deflated)>,
        reply_wait: Duration,
    ) {
        let Some((metadata, deflated)) = prepared else {
            return;
        };
        let mut objects = Vec::with_capacity(deflated.objects.len());
        for object in deflated.objects {
            objects.push(object.id.clone());
            state
                .reply_objects
                .entry(object.id)
                .or_insert_with(|| (object.bytes, 0))
                .1 += 1;
        }
        let message = proto::Message {
            metadata: Some(metadata),
            content: Some(proto::RecordDict::default()),
            error: None,
        };
        let ready = Ready {
            message,
            tree: deflated.tree,
            objects,
            expires: Instant::now() + reply_wait,
        };
        if let Some(replaced) = state.ready.insert(flower_id.to_string(), ready) {
            Self::release(state, replaced.objects);
        }
    }

    /// Lets go of one reply's hold on each of `objects`.
    fn release(state: &mut State, objects: Vec<String>) {
        for object in objects {
            if let Some((_, holders)) = state.reply_objects.get_mut(&object) {
                *holders -= 1;
                if *holders == 0 {
                    state.reply_objects.remove(&object);
                }
            }
        }
    }

    /// How long the reply to an instruction living `ttl` seconds may wait to be pulled.
    fn reply_wait(ttl: f64) -> Duration {
        Duration::try_from_secs_f64(ttl)
            .unwrap_or(MAX_REPLY_WAIT)
            .clamp(MIN_REPLY_WAIT, MAX_REPLY_WAIT)
    }

    fn push_messages(
        &self,
        state: &mut State,
        request: proto::PushAppMessagesRequest,
    ) -> Result<(Vec<u8>, Vec<Outgoing>), ApiError> {
        if request.messages_list.len() != request.message_object_trees.len() {
            return Err(ApiError::new(
                400,
                3013,
                "Messages and object trees do not pair up.",
            ));
        }
        Self::forget_expired_pushes(state);
        if state.outstanding.len() + state.pushing.len() + request.messages_list.len()
            > MAX_OUTSTANDING
            || state.pushing.len() + request.messages_list.len() > MAX_PUSHING
        {
            return Err(ApiError::new(503, 3013, "Too many instructions in flight."));
        }
        if state.sessions.len() >= MAX_SESSIONS {
            return Err(ApiError::new(503, 3013, "Too many pushes under way."));
        }
        // Every tree is read before anything changes: a request refused halfway leaves nothing
        // behind.
        let mut checked = Vec::with_capacity(request.messages_list.len());
        for (message, tree) in request
            .messages_list
            .iter()
            .zip(&request.message_object_trees)
        {
            let instruction = match self.valid_instruction(message, tree) {
                Some(metadata) => {
                    let mut ids = HashSet::new();
                    collect_ids(tree, &mut ids)?;
                    let content_id = tree.children.first().map(|child| child.object_id.clone());
                    Some((tree.object_id.clone(), metadata, ids, content_id))
                }
                None => None,
            };
            checked.push(instruction);
        }
        let session: [u8; 16] = rand::random();
        let session: String = session.iter().map(|b| format!("{b:02x}")).collect();
        let mut message_ids = Vec::with_capacity(checked.len());
        let mut to_push: Vec<String> = Vec::new();
        let mut asked: HashSet<String> = HashSet::new();
        let mut ask = |object: &String, to_push: &mut Vec<String>| {
            if asked.insert(object.clone()) {
                to_push.push(object.clone());
            }
        };
        let mut complete = Vec::new();
        let mut listed = HashSet::new();
        for instruction in checked {
            let Some((id, metadata, ids, content_id)) = instruction else {
                message_ids.push(String::new());
                continue;
            };
            if !listed.insert(id.clone()) {
                // Twice in one request: it goes once.
                message_ids.push(id);
                continue;
            }
            if let Some(pushing) = state.pushing.get(&id) {
                // The same instruction again (a retry after a lost answer): this session asks
                // for what it still lacks.
                pushing
                    .missing
                    .iter()
                    .for_each(|object| ask(object, &mut to_push));
                message_ids.push(id);
                continue;
            }
            if state.outstanding.contains_key(&id) || state.ready.contains_key(&id) {
                // Sent already, and not yet answered or not yet pulled.
                message_ids.push(id);
                continue;
            }
            let missing: HashSet<String> = ids
                .into_iter()
                .filter(|id| !state.pushed.contains_key(id))
                .collect();
            missing.iter().for_each(|object| ask(object, &mut to_push));
            let pushing = Pushing {
                expires: Instant::now() + Self::reply_wait(metadata.ttl),
                metadata,
                missing,
                content_id,
            };
            if pushing.missing.is_empty() {
                complete.push((id.clone(), pushing));
            } else {
                state.pushing.insert(id.clone(), pushing);
            }
            message_ids.push(id);
        }
        if !asked.is_empty() {
            state.sessions.insert(session.clone(), asked);
        }
        let outgoing = complete
            .into_iter()
            .filter_map(|(id, pushing)| self.read_back(state, id, pushing))
            .collect();
        let response = proto::PushAppMessagesResponse {
            message_ids,
            objects_to_push: to_push,
            session_id: session,
        };
        Ok((encode(&response), outgoing))
    }

    /// Gives up on instructions whose objects did not all arrive within their time to live.
    fn forget_expired_pushes(state: &mut State) {
        let now = Instant::now();
        state.pushing.retain(|_, pushing| pushing.expires > now);
        if state.pushing.is_empty() {
            Self::forget_pushed(state);
        }
    }

    /// Drops every pushed object and push session: no instruction being pushed needs them.
    fn forget_pushed(state: &mut State) {
        state.pushed = HashMap::new();
        state.pushed_bytes = 0;
        state.contents = HashMap::new();
        state.sessions = HashMap::new();
    }

    /// The instruction's metadata, if it is one this run's server app may send: its own run,
    /// from node 1 to another node, no reply, a type, a positive time to live, and its tree's
    /// root as its id.
    fn valid_instruction(
        &self,
        message: &proto::Message,
        tree: &proto::ObjectTree,
    ) -> Option<proto::Metadata> {
        let metadata = message.metadata.as_ref()?;
        let valid = metadata.run_id == self.input.run.run_id
            && metadata.src_node_id == SERVER_NODE
            && metadata.dst_node_id != 0
            && metadata.dst_node_id != SERVER_NODE
            && metadata.reply_to_message_id.is_empty()
            && !metadata.message_type.is_empty()
            && metadata.ttl.is_finite()
            && metadata.ttl > 0.0
            && is_object_id(&tree.object_id)
            && metadata.message_id == tree.object_id;
        valid.then(|| metadata.clone())
    }

    /// Reads instruction `id` back from the pushed objects; one that does not read back as
    /// pushed is answered with an error at once.
    fn read_back(&self, state: &mut State, id: String, pushing: Pushing) -> Option<Outgoing> {
        let reply_wait = Self::reply_wait(pushing.metadata.ttl);
        match Self::records_of(state, &id, &pushing, self.max_pushed_bytes) {
            Ok(content) => {
                let outstanding = Outstanding {
                    message_type: pushing.metadata.message_type.clone(),
                    reply_wait,
                };
                state.outstanding.insert(id.clone(), outstanding);
                Some(Outgoing {
                    flower_id: id,
                    dst_node_id: pushing.metadata.dst_node_id,
                    message_type: pushing.metadata.message_type,
                    group_id: pushing.metadata.group_id,
                    ttl: pushing.metadata.ttl,
                    content,
                })
            }
            Err(error) => {
                tracing::warn!(%error, "a Flower ServerApp pushed an unreadable instruction");
                let error = proto::Error {
                    code: code::MESSAGE_UNAVAILABLE,
                    reason: format!("the instruction could not be read: {error}"),
                };
                Self::answer_in_place(state, self.input.run.run_id, &id, error, reply_wait);
                None
            }
        }
    }

    /// The records of instruction `id`, checked: its metadata is the one pushed, it carries
    /// records, and they are within `max_bytes`.
    fn records_of(
        state: &mut State,
        id: &str,
        pushing: &Pushing,
        max_bytes: u64,
    ) -> Result<Arc<RecordDict>, ObjectError> {
        let malformed = |why: &str| ObjectError::Malformed {
            id: id.to_string(),
            why: why.into(),
        };
        let inflated = inflate(id, &state.pushed, max_bytes)?;
        let mut read = inflated.metadata;
        read.message_id = id.to_string();
        if read != pushing.metadata {
            return Err(malformed(
                "its metadata differs from that of the message pushed",
            ));
        }
        let Body::Content(records) = inflated.body else {
            return Err(malformed("an instruction carries an error, not records"));
        };
        Ok(match &pushing.content_id {
            Some(content_id) => state
                .contents
                .entry(content_id.clone())
                .or_insert_with(|| Arc::new(records))
                .clone(),
            None => Arc::new(records),
        })
    }

    /// Stores one pushed object; instructions it completes are read back and returned to send.
    fn push_object(
        &self,
        state: &mut State,
        request: proto::PushObjectRequest,
    ) -> (bool, Vec<Outgoing>) {
        let id = request.object_id;
        if state.pushed.contains_key(&id) {
            // A retry after a lost response: the same bytes, already kept.
            return (object_id(&request.object_content) == id, Vec::new());
        }
        let asked = state
            .sessions
            .get(&request.session_id)
            .is_some_and(|ids| ids.contains(&id));
        if !asked || object_id(&request.object_content) != id {
            return (false, Vec::new());
        }
        let bytes = state
            .pushed_bytes
            .saturating_add(request.object_content.len() as u64)
            .saturating_add(OBJECT_OVERHEAD);
        if bytes > self.max_pushed_bytes {
            return (false, Vec::new());
        }
        state.pushed_bytes = bytes;
        if let Some(ids) = state.sessions.get_mut(&request.session_id) {
            ids.remove(&id);
            if ids.is_empty() {
                state.sessions.remove(&request.session_id);
            }
        }
        state.pushed.insert(id.clone(), request.object_content);
        let done: Vec<String> = state
            .pushing
            .iter_mut()
            .filter_map(|(message, pushing)| {
                (pushing.missing.remove(&id) && pushing.missing.is_empty()).then(|| message.clone())
            })
            .collect();
        let mut outgoing = Vec::new();
        for message in done {
            if let Some(pushing) = state.pushing.remove(&message)
                && let Some(instruction) = self.read_back(state, message, pushing)
            {
                outgoing.push(instruction);
            }
        }
        if state.pushing.is_empty() {
            // Nothing left that could need them: sent instructions hold their own records, and
            // a session still asking for an object asks for nothing anyone waits on.
            Self::forget_pushed(state);
        }
        (true, outgoing)
    }

    fn pull_messages(
        &self,
        state: &mut State,
        request: &proto::PullAppMessagesRequest,
    ) -> proto::PullAppMessagesResponse {
        let now = Instant::now();
        // Replies never pulled, and replies pulled but never confirmed, are let go of alike.
        let expired: Vec<Vec<String>> = state
            .ready
            .extract_if(|_, ready| ready.expires <= now)
            .map(|(_, ready)| ready.objects)
            .chain(
                state
                    .handed_out
                    .extract_if(|_, handed_out| handed_out.expires <= now)
                    .map(|(_, handed_out)| handed_out.objects),
            )
            .collect();
        for objects in expired {
            Self::release(state, objects);
        }
        let mut response = proto::PullAppMessagesResponse::default();
        for id in &request.message_ids {
            let Some(ready) = state.ready.remove(id) else {
                continue;
            };
            let handed_out = HandedOut {
                objects: ready.objects,
                // Time to pull its objects, however late it was pulled.
                expires: ready.expires.max(now + MIN_REPLY_WAIT),
            };
            if let Some(replaced) = state
                .handed_out
                .insert(ready.tree.object_id.clone(), handed_out)
            {
                Self::release(state, replaced.objects);
            }
            response.messages_list.push(ready.message);
            response.message_object_trees.push(ready.tree);
        }
        response
    }

    fn confirm(&self, state: &mut State, reply_id: &str) {
        if let Some(handed_out) = state.handed_out.remove(reply_id) {
            Self::release(state, handed_out.objects);
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
