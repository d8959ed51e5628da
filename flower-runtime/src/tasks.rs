//! What both kinds of task share: the [`Task`] trait, the [`Tasks`] host that routes each call
//! of the runtime API to the task holding its token, a task's [`TaskInput`] (built from this
//! project's types), and the protobuf coding of requests and responses. The tasks themselves are
//! [`crate::clientapp`] (`flwr-clientapp`) and [`crate::serverapp`] (`flwr-serverapp`).

use crate::clientapp::ClientAppTask;
use crate::clientapp::ContextStates;
use crate::objects::is_object_id;
use crate::proto;
use crate::records::RecordError;
use crate::server::{ApiError, CallFuture, Endpoint, Host};
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

/// What the app's input holds: its context, its run and its FAB.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskInput {
    /// The task's id (the app stamps it on its reply).
    pub task_id: u64,
    /// The context: run and node ids, node config, run config, the run's state.
    pub context: proto::Context,
    /// The run.
    pub run: proto::Run,
    /// The app bundle.
    pub fab: proto::Fab,
}

/// A run's FAB as the daemons hold it.
#[derive(Debug, Clone, Copy)]
pub struct FabRef<'a> {
    /// `publisher/name`.
    pub fab_id: &'a str,
    /// Its version.
    pub version: &'a str,
    /// Its SHA-256, in hex.
    pub hash: &'a str,
    /// The FAB's bytes.
    pub archive: &'a [u8],
}

impl FabRef<'_> {
    fn run(&self, run_id: u64, override_config: HashMap<String, proto::Scalar>) -> proto::Run {
        proto::Run {
            run_id,
            fab_id: self.fab_id.to_string(),
            fab_version: self.version.to_string(),
            fab_hash: self.hash.to_string(),
            override_config,
            ..proto::Run::default()
        }
    }

    fn fab(&self) -> proto::Fab {
        proto::Fab {
            hash_str: self.hash.to_string(),
            content: self.archive.to_vec(),
            ..proto::Fab::default()
        }
    }
}

/// A config record as Flower's context and run carry it; a list, which Flower's run and node
/// configs cannot hold, is refused.
fn scalars(
    what: &str,
    config: &wire::ConfigRecord,
) -> Result<HashMap<String, proto::Scalar>, RecordError> {
    config
        .iter()
        .map(|(key, value)| {
            let scalar = crate::records::scalar_of(value).ok_or_else(|| {
                RecordError::Unsupported(format!(
                    "{what} entry {key:?}: a list (Flower's {what} holds single values)"
                ))
            })?;
            Ok((key.to_string(), scalar))
        })
        .collect()
}

impl TaskInput {
    /// A ServerApp's input: the context of the server's node ([`SERVER_NODE`](crate::serverapp::SERVER_NODE)) with a fresh state, and the run, whose overrides
    /// are its whole config (`flwr run` fused it from the same defaults the app reads from its
    /// FAB, so every key is one of them).
    pub fn server(
        run_id: u64,
        fab: FabRef<'_>,
        run_config: &wire::ConfigRecord,
    ) -> Result<Self, RecordError> {
        Ok(TaskInput {
            task_id: rand::random(),
            context: proto::Context {
                run_id,
                node_id: crate::serverapp::SERVER_NODE,
                state: Some(proto::RecordDict::default()),
                ..proto::Context::default()
            },
            run: fab.run(run_id, scalars("run config", run_config)?),
            fab: fab.fab(),
        })
    }

    /// A ClientApp's input on node `node_id`: its context with the configs and the state the
    /// run's last task on this node left.
    pub fn client(
        run_id: u64,
        node_id: u64,
        fab: FabRef<'_>,
        node_config: &wire::ConfigRecord,
        run_config: &wire::ConfigRecord,
        state: &ContextStates,
    ) -> Result<Self, RecordError> {
        Ok(TaskInput {
            task_id: rand::random(),
            context: proto::Context {
                run_id,
                node_id,
                node_config: scalars("node config", node_config)?,
                run_config: scalars("run config", run_config)?,
                state: Some(state.of(run_id, node_id)),
                ..proto::Context::default()
            },
            run: fab.run(run_id, HashMap::new()),
            fab: fab.fab(),
        })
    }
}

/// A task that answers its app's calls: a `flwr-clientapp` task here, a `flwr-serverapp` task in
/// [`crate::serverapp`].
pub trait Task: Send + Sync + 'static {
    /// Whether the task still takes calls (its token is live).
    fn is_live(&self) -> bool;

    /// Answers `endpoint` given the request's protobuf `body`.
    fn answer(&self, endpoint: Endpoint, body: &[u8]) -> Result<Vec<u8>, ApiError>;
}

/// The host of a daemon's tasks: each call goes to the task holding its token.
pub struct Tasks<T: Task = ClientAppTask> {
    tasks: Mutex<HashMap<String, Arc<T>>>,
}

impl<T: Task> Default for Tasks<T> {
    fn default() -> Self {
        Tasks {
            tasks: Mutex::default(),
        }
    }
}

impl<T: Task> Tasks<T> {
    /// A fresh token for `task`, which answers calls with it until it ends or is removed.
    pub fn admit(&self, task: Arc<T>) -> String {
        let token: [u8; 32] = rand::random();
        let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
        self.lock().insert(token.clone(), task);
        token
    }

    /// [`Tasks::admit`], with the token withdrawn when the returned admission is dropped, however
    /// the task ends.
    pub fn admit_scoped(&self, task: Arc<T>) -> Admission<'_, T> {
        Admission {
            token: self.admit(task),
            tasks: self,
        }
    }

    /// Forgets the task of `token`: later calls with it are refused.
    pub fn remove(&self, token: &str) {
        self.lock().remove(token);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<T>>> {
        self.tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<T: Task> Host for Tasks<T> {
    fn admits(&self, token: &str) -> bool {
        self.lock().get(token).is_some_and(|task| task.is_live())
    }

    fn call(&self, endpoint: Endpoint, token: String, body: Bytes) -> CallFuture {
        let task = self.lock().get(&token).cloned();
        Box::pin(async move {
            match task {
                Some(task) => task.answer(endpoint, &body),
                None => Err(ApiError::invalid_token()),
            }
        })
    }
}

/// A task's token, withdrawn from its [`Tasks`] when dropped.
pub struct Admission<'a, T: Task> {
    tasks: &'a Tasks<T>,
    token: String,
}

impl<T: Task> Admission<'_, T> {
    /// The token the task's app shows.
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl<T: Task> Drop for Admission<'_, T> {
    fn drop(&mut self) {
        self.tasks.remove(&self.token);
    }
}

/// Every id of `tree`, checked to be object ids; a tree deeper than a message's is refused.
pub(crate) fn collect_ids(
    tree: &proto::ObjectTree,
    ids: &mut HashSet<String>,
) -> Result<(), ApiError> {
    fn walk(
        tree: &proto::ObjectTree,
        ids: &mut HashSet<String>,
        depth: usize,
    ) -> Result<(), ApiError> {
        // Message, RecordDict, ArrayRecord, Array, ArrayChunk.
        if depth > 5 || !is_object_id(&tree.object_id) {
            return Err(ApiError::bad_body("the object tree is not a message's"));
        }
        ids.insert(tree.object_id.clone());
        tree.children
            .iter()
            .try_for_each(|child| walk(child, ids, depth + 1))
    }
    walk(tree, ids, 1)
}

/// A response's protobuf bytes.
pub(crate) fn encode(message: &impl prost::Message) -> Vec<u8> {
    message.encode_to_vec()
}

/// A request's protobuf body, or Flower's error for an unreadable one.
pub(crate) fn decode<M: prost::Message + Default>(body: &[u8]) -> Result<M, ApiError> {
    M::decode(body).map_err(ApiError::bad_body)
}
