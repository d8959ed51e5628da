//! One `flwr-clientapp` task, served as Flower's SuperNode serves it: the app pulls its input
//! (context, run, FAB), the instruction message and its objects, confirms it, pushes its reply
//! and the reply's objects, then its output status. Heartbeats are answered; how long the task
//! may live is the daemon's (the instruction's time to live). The daemon's
//! [`Tasks`](crate::tasks::Tasks) host routes each call to the task holding its token; the daemon
//! waits for [`ClientAppTask::finished`] and reads the reply from there, outside any lock
//! ([`Reply::inflate`]).

use crate::exchange::Exchange;
pub use crate::exchange::Reply;
use crate::objects::Deflated;
use crate::proto;
use crate::server::{ApiError, Endpoint};
use crate::tasks::{Task, TaskInput, decode, encode};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// Each run's context state on each node: what a run's ClientApp left in its context is what the
/// run's next task on that node receives, as on Flower's SuperNode (and for each virtual node of
/// a simulation). Bounded: beyond [`KEPT_STATES`] states, the oldest is dropped.
#[derive(Debug, Default)]
pub struct ContextStates {
    /// Each (run, node)'s state, and the order they were first kept in.
    states: Mutex<(
        HashMap<RunNode, proto::RecordDict>,
        std::collections::VecDeque<RunNode>,
    )>,
}

/// A run's id and a node's.
type RunNode = (u64, u64);

/// Most (run, node) context states kept: each of a simulation's virtual nodes (50,000 at most)
/// keeps its own across its rounds.
pub const KEPT_STATES: usize = 65_536;

/// Locks `mutex`; the maps behind it change by single inserts and removals, so one a panicking
/// thread left behind is still consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ContextStates {
    /// The state run `run_id` left on node `node_id` (empty for its first task there).
    pub(crate) fn of(&self, run_id: u64, node_id: u64) -> proto::RecordDict {
        let states = lock(&self.states);
        states
            .0
            .get(&(run_id, node_id))
            .cloned()
            .unwrap_or_default()
    }

    /// Forgets every state run `run_id` left: the run ended.
    pub fn forget_run(&self, run_id: u64) {
        let mut states = lock(&self.states);
        let (map, order) = &mut *states;
        map.retain(|(run, _), _| *run != run_id);
        order.retain(|(run, _)| *run != run_id);
    }

    /// Keeps the state a completed task of run `run_id` on node `node_id` ended with; a failed
    /// task's is not kept.
    pub fn keep(&self, run_id: u64, node_id: u64, outcome: &TaskOutcome) {
        if outcome.sub_status.as_deref() != Some("completed") {
            return;
        }
        let Some(state) = outcome.context.as_ref().and_then(|c| c.state.clone()) else {
            return;
        };
        let mut states = lock(&self.states);
        let (map, order) = &mut *states;
        if map.insert((run_id, node_id), state).is_none() {
            order.push_back((run_id, node_id));
            if order.len() > KEPT_STATES
                && let Some(oldest) = order.pop_front()
            {
                map.remove(&oldest);
            }
        }
    }
}

/// How the task ended, as the app reported it (or did not).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskOutcome {
    /// The reply, when one arrived whole.
    pub reply: Option<Reply>,
    /// `completed` or `failed` from the app's output; `None` if it never sent one.
    pub sub_status: Option<String>,
    /// The app's failure text, if any.
    pub details: String,
    /// The context after the run (its state is what the run's next task receives).
    pub context: Option<proto::Context>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    Running,
    Finished,
}

struct State {
    phase: Phase,
    input: TaskInput,
    exchange: Exchange,
    outcome: Option<TaskOutcome>,
}

/// One instruction's `flwr-clientapp` task.
pub struct ClientAppTask {
    state: Mutex<State>,
    finished: watch::Sender<bool>,
}

impl ClientAppTask {
    /// A task that will hand the app `input` and the instruction `deflated` (with `metadata`,
    /// whose message id is the root's), and accept a reply of at most `max_reply_bytes`.
    pub fn new(
        input: TaskInput,
        metadata: proto::Metadata,
        deflated: Deflated,
        max_reply_bytes: u64,
    ) -> Arc<Self> {
        Arc::new(ClientAppTask {
            state: Mutex::new(State {
                phase: Phase::Starting,
                input,
                exchange: Exchange::new(metadata, deflated, max_reply_bytes),
                outcome: None,
            }),
            finished: watch::channel(false).0,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until the app has sent its output (or [`ClientAppTask::abandon`] was called); then
    /// takes how the task ended (a second call finds it taken: an empty outcome).
    pub async fn finished(&self) -> TaskOutcome {
        let mut finished = self.finished.subscribe();
        // An error means the sender is gone, which it is not while `self` lives.
        let _ = finished.wait_for(|done| *done).await;
        self.state().outcome.take().unwrap_or_default()
    }

    /// Whether the app has taken the task's input (after which its process is the one serving
    /// it, and the task cannot be handed to another).
    pub fn started(&self) -> bool {
        self.state().phase != Phase::Starting
    }

    /// Ends the task from the daemon's side (the process exited or ran past its time to live):
    /// its token stops working, and the outcome taken is whatever arrived.
    pub fn abandon(&self) -> TaskOutcome {
        let mut state = self.state();
        if state.phase != Phase::Finished {
            Self::finish(&mut state, TaskOutcome::default());
        }
        let outcome = state.outcome.take().unwrap_or_default();
        drop(state);
        self.finished.send_replace(true);
        outcome
    }

    /// Ends the task with `outcome` and the reply, if it arrived whole; lets the instruction go.
    fn finish(state: &mut State, mut outcome: TaskOutcome) {
        outcome.reply = state.exchange.take_reply();
        state.outcome = Some(outcome);
        state.phase = Phase::Finished;
        state.exchange.release_instruction();
    }

    fn call(&self, endpoint: Endpoint, body: &[u8]) -> Result<Vec<u8>, ApiError> {
        let mut state = self.state();
        if state.phase == Phase::Finished {
            return Err(ApiError::invalid_token());
        }
        if endpoint == Endpoint::PushTaskOutput {
            // Accepted in any phase, as Flower accepts it: an app that failed early says so.
            let request = decode::<proto::PushTaskOutputRequest>(body)?;
            Self::finish(
                &mut state,
                TaskOutcome {
                    reply: None,
                    sub_status: Some(request.sub_status),
                    details: request.details,
                    context: request.context,
                },
            );
            drop(state);
            self.finished.send_replace(true);
            return Ok(encode(&proto::PushTaskOutputResponse {}));
        }
        match endpoint {
            Endpoint::SendTaskHeartbeat => {
                Ok(encode(&proto::SendTaskHeartbeatResponse { success: true }))
            }
            Endpoint::PullTaskInput => {
                if state.phase != Phase::Starting {
                    return Err(ApiError::new(412, 3002, "The task has already started."));
                }
                state.phase = Phase::Running;
                let input = &state.input;
                Ok(encode(&proto::PullTaskInputResponse {
                    context: Some(input.context.clone()),
                    run: Some(input.run.clone()),
                    fab: Some(input.fab.clone()),
                    task_id: input.task_id,
                }))
            }
            _ if state.phase != Phase::Running => Err(ApiError::new(
                412,
                3002,
                "The task has not pulled its input yet.",
            )),
            Endpoint::PullMessages => {
                let _request = decode::<proto::PullAppMessagesRequest>(body)?;
                let response = match state.exchange.hand_out() {
                    Some((message, tree)) => proto::PullAppMessagesResponse {
                        messages_list: vec![message],
                        message_object_trees: vec![tree],
                    },
                    None => proto::PullAppMessagesResponse::default(),
                };
                Ok(encode(&response))
            }
            Endpoint::PullObject => {
                let request = decode::<proto::PullObjectRequest>(body)?;
                let found = state.exchange.object(&request.object_id);
                Ok(encode(&proto::PullObjectResponse {
                    object_found: found.is_some(),
                    object_available: found.is_some(),
                    object_content: found.map(<[u8]>::to_vec).unwrap_or_default(),
                }))
            }
            Endpoint::ConfirmMessageReceived => {
                let _request = decode::<proto::ConfirmMessageReceivedRequest>(body)?;
                Ok(encode(&proto::ConfirmMessageReceivedResponse {}))
            }
            Endpoint::PushMessages => {
                let request = decode::<proto::PushAppMessagesRequest>(body)?;
                Self::push_messages(&mut state, request)
            }
            Endpoint::PushObject => {
                let request = decode::<proto::PushObjectRequest>(body)?;
                let stored = state.exchange.accept_object(
                    &request.session_id,
                    request.object_id,
                    request.object_content,
                );
                Ok(encode(&proto::PushObjectResponse { stored }))
            }
            Endpoint::PushTaskOutput | Endpoint::GetNodes | Endpoint::PushLogs => Err(
                ApiError::new(403, 3005, "This call is not available to client apps."),
            ),
        }
    }

    fn push_messages(
        state: &mut State,
        request: proto::PushAppMessagesRequest,
    ) -> Result<Vec<u8>, ApiError> {
        let ([message], [tree]) = (
            request.messages_list.as_slice(),
            request.message_object_trees.as_slice(),
        ) else {
            return Err(ApiError::new(
                400,
                3013,
                "Exactly one message and one tree are expected.",
            ));
        };
        let accepted = state.exchange.accept_reply(message, tree)?;
        Ok(encode(&proto::PushAppMessagesResponse {
            message_ids: vec![tree.object_id.clone()],
            objects_to_push: accepted.objects_to_push,
            session_id: accepted.session_id,
        }))
    }
}

impl Task for ClientAppTask {
    fn is_live(&self) -> bool {
        self.state().phase != Phase::Finished
    }

    fn answer(&self, endpoint: Endpoint, body: &[u8]) -> Result<Vec<u8>, ApiError> {
        self.call(endpoint, body)
    }
}
