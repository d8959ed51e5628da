//! Flower's Fleet API over HTTP, as Flower 1.42's own `flower-supernode` calls it:
//! `POST /v1/fleet/<call>` with a protobuf body, every request signed ([`auth`]). A SuperNode
//! registers (when the SuperLink lets keys register themselves), activates, sends heartbeats,
//! polls for instructions, fetches their run and FAB and objects, confirms them, and pushes its
//! reply and the reply's objects. What a call does is the [`FleetHost`]'s, in this project's own
//! types; this layer checks what Flower's router and middleware check, and more:
//!
//! - the signature before the body is read, and each signature once;
//! - the node a request names is the one its key is registered as;
//! - a body within its call's bound, read only then ([`MAX_BODY`], [`MAX_MESSAGE_BODY`],
//!   [`MAX_OBJECT_BODY`], at most [`MAX_OBJECT_UPLOADS`] objects read at once);
//! - a run and its FAB only for a node holding one of its instructions, objects only of
//!   instructions it holds, each reply object hashing to its id, within the reply's allowance.

pub mod auth;
pub mod mailboxes;

use crate::exchange::{Accepted, Exchange};
use crate::link::{Body, error_response, respond};
use crate::messages::{body_from_objects, metadata_to_proto};
use crate::objects::{Body as ObjectsBody, deflate};
use crate::proto;
use crate::server::ApiError;
use auth::{AuthError, SeenSignatures};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use mailboxes::{Held, Mailboxes};
use prost::Message as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use wire::control::{RunInfo, RunStatus};
use wire::message::now_ms;
use wire::{Message, MessageBody, NodeId, RunId};

/// Where the calls are.
pub const PREFIX: &str = "/v1/fleet/";

/// The largest body of a call that carries a few numbers or a key.
pub const MAX_BODY: usize = 64 << 10;

/// The largest push-messages body: one message's metadata and its object tree.
pub const MAX_MESSAGE_BODY: usize = 1 << 20;

/// The largest push-object body: one object, at most Flower's chunk size plus its header.
pub const MAX_OBJECT_BODY: usize = crate::objects::MAX_CHUNK + (64 << 10);

/// Most push-object bodies read at once.
pub const MAX_OBJECT_UPLOADS: usize = 32;

/// Most signatures checked at once (in the blocking pool).
pub const MAX_VERIFYING: usize = 8;

/// How long a body may take to arrive.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The heartbeat intervals Flower's SuperLink accepts.
pub const HEARTBEAT_INTERVALS: std::ops::RangeInclusive<f64> = 10.0..=1800.0;

/// An instruction for a SuperNode, from the rounds in flight.
pub struct Instruction {
    /// The message, with its records.
    pub message: Message,
    /// The most record bytes its reply may carry.
    pub max_reply_bytes: u64,
}

/// A run's FAB as a SuperNode fetches it.
pub struct FlowerFab {
    /// `publisher/name`.
    pub fab_id: String,
    /// Its version.
    pub version: String,
    /// Its SHA-256, in hex.
    pub hash: String,
    /// The archive.
    pub archive: Arc<Vec<u8>>,
}

/// What answers the calls: the SuperLink's registry, liveness and rounds. Its methods may read
/// the store, so they are called off the async workers.
pub trait FleetHost: Send + Sync + 'static {
    /// Whether a key not registered may register itself (no `--enable-supernode-auth`).
    fn self_registration(&self) -> bool;

    /// The node `key` is registered as, unless it was unregistered.
    fn node_of_key(&self, key: &certs::PublicKey) -> Result<Option<NodeId>, ApiError>;

    /// Registers `key` as a node of its own.
    fn register(&self, key: &certs::PublicKey) -> Result<NodeId, ApiError>;

    /// Unregisters `node` at its own request.
    fn unregister(&self, node: NodeId) -> Result<(), ApiError>;

    /// `node` is online, and sends a heartbeat every `interval`.
    fn activate(&self, node: NodeId, interval: Duration) -> Result<(), ApiError>;

    /// `node` leaves.
    fn deactivate(&self, node: NodeId);

    /// A heartbeat from `node`, which promises the next within `interval`; whether it is
    /// online (again).
    fn heartbeat(&self, node: NodeId, interval: Duration) -> bool;

    /// The next instruction for `node`, now its own to answer.
    fn next_instruction(&self, node: NodeId) -> Option<Instruction>;

    /// Run `run_id` and its FAB.
    fn run(&self, run_id: RunId) -> Result<(RunInfo, Arc<FlowerFab>), ApiError>;

    /// Whether run `run_id` takes messages and objects (it is running).
    fn is_running(&self, run_id: RunId) -> bool;

    /// `node`'s reply, whole and checked against its instruction.
    fn reply(&self, node: NodeId, reply: Message);
}

/// The calls served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    RegisterNode,
    ActivateNode,
    DeactivateNode,
    UnregisterNode,
    SendNodeHeartbeat,
    PullMessages,
    PushMessages,
    GetRun,
    GetFab,
    PushObject,
    PullObject,
    ConfirmMessageReceived,
}

impl Call {
    fn of_path(path: &str) -> Option<Call> {
        Some(match path.strip_prefix(PREFIX)? {
            "register-node" => Call::RegisterNode,
            "activate-node" => Call::ActivateNode,
            "deactivate-node" => Call::DeactivateNode,
            "unregister-node" => Call::UnregisterNode,
            "send-node-heartbeat" => Call::SendNodeHeartbeat,
            "pull-messages" => Call::PullMessages,
            "push-messages" => Call::PushMessages,
            "get-run" => Call::GetRun,
            "get-fab" => Call::GetFab,
            "push-object" => Call::PushObject,
            "pull-object" => Call::PullObject,
            "confirm-message-received" => Call::ConfirmMessageReceived,
            _ => return None,
        })
    }

    fn max_body(self) -> usize {
        match self {
            Call::PushObject => MAX_OBJECT_BODY,
            Call::PushMessages => MAX_MESSAGE_BODY,
            _ => MAX_BODY,
        }
    }

    /// Whether the body names the node by its key (before it has an id of its own).
    fn names_key(self) -> bool {
        matches!(self, Call::RegisterNode | Call::ActivateNode)
    }
}

/// Flower's error for a request whose signature or claimed identity is refused.
fn unauthenticated() -> ApiError {
    ApiError::new(401, 0, "Invalid SuperNode authentication")
}

fn run_not_running(run_id: u64) -> ApiError {
    ApiError::new(
        403,
        2007,
        format!("The current run status does not allow this Fleet API operation (run {run_id})."),
    )
}

/// The Fleet API: its host, what each node holds, and the signatures seen.
pub struct Fleet {
    host: Arc<dyn FleetHost>,
    mailboxes: Mailboxes,
    seen: SeenSignatures,
    object_uploads: Arc<tokio::sync::Semaphore>,
    /// Signatures being checked at once.
    verifying: tokio::sync::Semaphore,
}

/// Runs a host call off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|_| Err(ApiError::new(500, 0, "the SuperLink failed to answer")))
}

fn decode<M: prost::Message + Default>(body: &Bytes) -> Result<M, ApiError> {
    M::decode(body.as_ref()).map_err(ApiError::bad_body)
}

impl Fleet {
    /// The Fleet API over `host`.
    pub fn new(host: Arc<dyn FleetHost>) -> Arc<Self> {
        Arc::new(Fleet {
            host,
            mailboxes: Mailboxes::default(),
            seen: SeenSignatures::default(),
            object_uploads: Arc::new(tokio::sync::Semaphore::new(MAX_OBJECT_UPLOADS)),
            verifying: tokio::sync::Semaphore::new(MAX_VERIFYING),
        })
    }

    /// Drops what `node` holds: it went offline or was unregistered.
    pub fn forget_node(&self, node: NodeId) {
        self.mailboxes.forget(node);
    }

    /// Drops every held instruction whose time to live passed.
    pub fn sweep(&self) {
        self.mailboxes.sweep(now_ms());
    }

    /// Answers one request under [`PREFIX`].
    pub async fn answer(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        match self.answer_call(request).await {
            Ok(body) => respond(200, crate::link::PROTOBUF, body),
            Err(error) => error_response(&error),
        }
    }

    async fn answer_call(
        self: &Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Vec<u8>, ApiError> {
        let call = Call::of_path(request.uri().path())
            .ok_or_else(|| ApiError::new(404, 0, "Not Found"))?;
        if request.method() != Method::POST {
            return Err(ApiError::new(405, 0, "Method Not Allowed"));
        }
        if !crate::server::has_protobuf_body(&request) {
            return Err(ApiError::new(
                415,
                1002,
                format!("Content-Type must be {}.", crate::link::PROTOBUF),
            ));
        }
        // The signature first, off the async workers and a few at a time: nothing of an
        // unsigned request is read, and a flood of signatures to check holds no worker.
        let headers = request.headers().clone();
        let signed = {
            let _turn = self
                .verifying
                .acquire()
                .await
                .map_err(|_| ApiError::new(503, 0, "Shutting down."))?;
            blocking(move || Ok(auth::verify(&headers, SystemTime::now())))
                .await?
                .map_err(|why| refused(call, &why))?
        };
        // Then the registry: a key registered (and not revoked) may go on; an unknown key only
        // registers itself, where the SuperLink lets it. Only a registered key's signatures are
        // remembered, each key within a quota of its own, and only its bodies are read.
        let host = self.host.clone();
        let key = signed.key;
        let registered = blocking(move || host.node_of_key(&key)).await?;
        match (call, registered) {
            (Call::RegisterNode, _) if !self.host.self_registration() => {
                return Err(ApiError::new(
                    412,
                    2001,
                    "SuperNode authentication is enabled. All SuperNodes must be registered via the CLI.",
                ));
            }
            // A replayed registration finds its key in use: nothing to remember.
            (Call::RegisterNode, _) => {}
            (Call::ActivateNode, None) => {
                return Err(ApiError::new(
                    412,
                    2004,
                    "Failed to activate SuperNode: its key is not registered.",
                ));
            }
            (_, None) => {
                tracing::warn!(call = ?call, "Fleet request refused: its key is not a registered node's");
                return Err(unauthenticated());
            }
            (_, Some(_)) => self
                .seen
                .admit_once(&signed, SystemTime::now())
                .map_err(|why| refused(call, &why))?,
        }
        let _upload = if call == Call::PushObject {
            Some(
                self.object_uploads
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| ApiError::new(503, 0, "Shutting down."))?,
            )
        } else {
            None
        };
        let body = read_body(request, call.max_body()).await?;
        let node = identify(call, &signed, registered, &body)?;
        self.dispatch(call, node, signed.key, body).await
    }

    async fn dispatch(
        self: &Arc<Self>,
        call: Call,
        node: Option<NodeId>,
        key: certs::PublicKey,
        body: Bytes,
    ) -> Result<Vec<u8>, ApiError> {
        let host = self.host.clone();
        let node = node.unwrap_or(NodeId(0));
        match call {
            Call::RegisterNode => {
                let node_id = blocking(move || host.register(&key)).await?;
                Ok(proto::RegisterNodeFleetResponse { node_id: node_id.0 }.encode_to_vec())
            }
            Call::ActivateNode => {
                let request = decode::<proto::ActivateNodeRequest>(&body)?;
                let interval = heartbeat_interval(request.heartbeat_interval)?;
                blocking(move || host.activate(node, interval)).await?;
                tracing::info!(node_id = node.0, "Flower SuperNode activated");
                Ok(proto::ActivateNodeResponse { node_id: node.0 }.encode_to_vec())
            }
            Call::DeactivateNode => {
                self.mailboxes.forget(node);
                blocking(move || {
                    host.deactivate(node);
                    Ok(())
                })
                .await?;
                Ok(proto::DeactivateNodeResponse {}.encode_to_vec())
            }
            Call::UnregisterNode => {
                if !host.self_registration() {
                    return Err(ApiError::new(
                        412,
                        2002,
                        "SuperNode authentication is enabled. All SuperNodes must be unregistered via the CLI.",
                    ));
                }
                self.mailboxes.forget(node);
                blocking(move || host.unregister(node)).await?;
                Ok(proto::UnregisterNodeFleetResponse {}.encode_to_vec())
            }
            Call::SendNodeHeartbeat => {
                let request = decode::<proto::SendNodeHeartbeatRequest>(&body)?;
                let interval = heartbeat_interval(request.heartbeat_interval)?;
                let success = blocking(move || Ok(host.heartbeat(node, interval))).await?;
                Ok(proto::SendNodeHeartbeatResponse { success }.encode_to_vec())
            }
            Call::PullMessages => {
                decode::<proto::PullMessagesRequest>(&body)?;
                self.pull_messages(node).await
            }
            Call::PushMessages => {
                let request = decode::<proto::PushMessagesRequest>(&body)?;
                self.push_messages(node, request)
            }
            Call::GetRun | Call::GetFab => self.get_run_or_fab(call, node, &body).await,
            Call::PullObject => {
                let request = decode::<proto::PullObjectRequest>(&body)?;
                self.running(request.run_id).await?;
                let id = request.object_id;
                let found = self.mailboxes.with(
                    node,
                    now_ms(),
                    |held| {
                        held.exchange.run_id() == request.run_id
                            && held.exchange.object(&id).is_some()
                    },
                    |held| held.exchange.object(&id).map(<[u8]>::to_vec),
                );
                let content = found.flatten();
                Ok(proto::PullObjectResponse {
                    object_found: content.is_some(),
                    object_available: content.is_some(),
                    object_content: content.unwrap_or_default(),
                }
                .encode_to_vec())
            }
            Call::ConfirmMessageReceived => {
                let request = decode::<proto::ConfirmMessageReceivedRequest>(&body)?;
                self.mailboxes
                    .with_message(node, &request.message_object_id, now_ms(), |held| {
                        held.exchange.release_instruction()
                    });
                Ok(proto::ConfirmMessageReceivedResponse {}.encode_to_vec())
            }
            Call::PushObject => {
                let request = decode::<proto::PushObjectRequest>(&body)?;
                self.push_object(node, request).await
            }
        }
    }

    /// Refuses a call about a run that is not running, as Flower's SuperLink does.
    async fn running(&self, run_id: u64) -> Result<(), ApiError> {
        let host = self.host.clone();
        let running = blocking(move || Ok(host.is_running(RunId(run_id)))).await?;
        if running {
            Ok(())
        } else {
            Err(run_not_running(run_id))
        }
    }

    /// The node's next instruction, as Flower's message without content and its object tree;
    /// nothing when it has none, or holds as many unanswered as it may.
    async fn pull_messages(&self, node: NodeId) -> Result<Vec<u8>, ApiError> {
        let empty = || proto::PullMessagesResponse::default().encode_to_vec();
        // One pull of a node at a time, and only with room: what it holds stays bounded.
        let Some(_pulling) = self.mailboxes.begin_pull(node, now_ms()) else {
            return Ok(empty());
        };
        let host = self.host.clone();
        // The instruction is taken and turned into Flower's objects (hashing every array) off
        // the async workers.
        let held = blocking(move || {
            let Some(instruction) = host.next_instruction(node) else {
                return Ok(None);
            };
            let MessageBody::Content(content) = &instruction.message.body else {
                return Ok(None);
            };
            let metadata = metadata_to_proto(&instruction.message);
            match deflate(&metadata, &ObjectsBody::Content(content.clone())) {
                Ok(deflated) => Ok(Some(Held {
                    exchange: Exchange::new(metadata, deflated, instruction.max_reply_bytes),
                    instruction: instruction.message.metadata,
                })),
                Err(error) => {
                    // Answered in the node's place: its records have no form in Flower's.
                    let reason =
                        format!("the instruction cannot be given to a Flower SuperNode: {error}");
                    tracing::warn!(node_id = node.0, %reason, "instruction not handed out");
                    let reply = instruction.message.reply(
                        MessageBody::Error(wire::message::MessageError {
                            code: wire::message::ErrorCode::ClientAppRaisedException,
                            reason,
                        }),
                        now_ms(),
                    );
                    host.reply(node, reply);
                    Ok(None)
                }
            }
        })
        .await?;
        let Some(mut held) = held else {
            return Ok(empty());
        };
        let (message, tree) = held.exchange.hand_out().unwrap_or_default();
        self.mailboxes.hold(node, held);
        Ok(proto::PullMessagesResponse {
            reconnect: None,
            messages_list: vec![message],
            message_object_trees: vec![tree],
        }
        .encode_to_vec())
    }

    fn push_messages(
        &self,
        node: NodeId,
        request: proto::PushMessagesRequest,
    ) -> Result<Vec<u8>, ApiError> {
        let ([message], [tree]) = (
            request.messages_list.as_slice(),
            request.message_object_trees.as_slice(),
        ) else {
            return Err(ApiError::bad_body(
                "exactly one message and one tree are expected",
            ));
        };
        let metadata = message
            .metadata
            .as_ref()
            .ok_or_else(|| ApiError::bad_body("the message has no metadata"))?;
        let answers = metadata.reply_to_message_id.clone();
        let accepted: Accepted = self
            .mailboxes
            .with_message(node, &answers, now_ms(), |held| {
                held.exchange.accept_reply(message, tree)
            })
            .ok_or_else(|| run_not_running(metadata.run_id))??;
        let mut results = std::collections::HashMap::new();
        results.insert(tree.object_id.clone(), 0);
        Ok(proto::PushMessagesResponse {
            reconnect: Some(proto::Reconnect { reconnect: 5 }),
            results,
            objects_to_push: accepted.objects_to_push,
            session_id: accepted.session_id,
        }
        .encode_to_vec())
    }

    /// Stores one object of a reply; when it was the last, the reply goes to its round.
    async fn push_object(
        &self,
        node: NodeId,
        request: proto::PushObjectRequest,
    ) -> Result<Vec<u8>, ApiError> {
        self.running(request.run_id).await?;
        let session = request.session_id;
        let id = request.object_id;
        let run_id = request.run_id;
        // Hashed off the async workers and outside the mailboxes' lock: up to 5 MiB.
        let content = request.object_content;
        let (content, hashed) = blocking(move || {
            let hashed = crate::objects::object_id(&content);
            Ok((content, hashed))
        })
        .await?;
        // The reply this session belongs to: its instruction's id.
        let outcome = self.mailboxes.with(
            node,
            now_ms(),
            |held| held.exchange.run_id() == run_id && held.exchange.has_session(&session),
            |held| {
                let stored = held
                    .exchange
                    .accept_hashed_object(&session, id, content, &hashed);
                (
                    stored,
                    held.exchange.message_id().to_string(),
                    held.exchange.reply_is_whole(),
                )
            },
        );
        let Some((stored, instruction_id, whole)) = outcome else {
            return Ok(proto::PushObjectResponse { stored: false }.encode_to_vec());
        };
        if whole && let Some(held) = self.mailboxes.take(node, &instruction_id) {
            self.deliver_reply(node, held).await?;
        }
        Ok(proto::PushObjectResponse { stored }.encode_to_vec())
    }

    /// Reads a whole reply back into a message and hands it to the host.
    async fn deliver_reply(&self, node: NodeId, mut held: Held) -> Result<(), ApiError> {
        let host = self.host.clone();
        blocking(move || {
            let Some(reply) = held.exchange.take_reply() else {
                return Ok(());
            };
            let instruction = Message {
                metadata: held.instruction,
                body: MessageBody::Content(wire::RecordDict::default()),
            };
            let body = match reply.inflate(held.exchange.max_reply_bytes()) {
                Ok(inflated) => body_from_objects(inflated.body),
                Err(error) => MessageBody::Error(wire::message::MessageError {
                    code: wire::message::ErrorCode::ClientAppRaisedException,
                    reason: format!("the Flower SuperNode's reply is unusable: {error}"),
                }),
            };
            host.reply(node, instruction.reply(body, now_ms()));
            Ok(())
        })
        .await
    }

    async fn get_run_or_fab(
        &self,
        call: Call,
        node: NodeId,
        body: &Bytes,
    ) -> Result<Vec<u8>, ApiError> {
        let (run_id, hash) = if call == Call::GetRun {
            (decode::<proto::GetRunRequest>(body)?.run_id, None)
        } else {
            let request = decode::<proto::GetFabRequest>(body)?;
            (request.run_id, Some(request.hash_str))
        };
        let refused = |why: &str| {
            let (code, what) = if call == Call::GetRun {
                (2008, "Failed to get run")
            } else {
                (2009, "Failed to get FAB")
            };
            ApiError::new(403, code, format!("{what}: {why}"))
        };
        // A node reads only the runs it has an instruction of: nothing of another run leaks.
        if !self.mailboxes.holds_run(node, run_id, now_ms()) {
            return Err(refused("this SuperNode holds no instruction of that run"));
        }
        let host = self.host.clone();
        let (info, fab) = blocking(move || host.run(RunId(run_id))).await?;
        if info.status != RunStatus::Running {
            return Err(run_not_running(run_id));
        }
        match hash {
            None => {
                let mut run = crate::control::run_to_proto(&info);
                run.fab_id.clone_from(&fab.fab_id);
                run.fab_version.clone_from(&fab.version);
                run.fab_hash.clone_from(&fab.hash);
                // Flower's SuperNode keeps a context per series: one series per run here.
                run.series_id = run_id;
                Ok(proto::GetRunResponse { run: Some(run) }.encode_to_vec())
            }
            Some(hash) if hash != fab.hash => Err(refused("that is not the run's FAB")),
            Some(_) => Ok(proto::GetFabResponse {
                fab: Some(proto::Fab {
                    hash_str: fab.hash.clone(),
                    content: fab.archive.to_vec(),
                    ..proto::Fab::default()
                }),
            }
            .encode_to_vec()),
        }
    }
}

/// The node the request is from: for register and activate, the key in the body must be the key
/// that signed; for the rest, the node the body names must be the one the key is registered as.
fn identify(
    call: Call,
    signed: &auth::Signed,
    registered: Option<NodeId>,
    body: &Bytes,
) -> Result<Option<NodeId>, ApiError> {
    if call.names_key() {
        let key = match call {
            Call::RegisterNode => decode::<proto::RegisterNodeFleetRequest>(body)?.public_key,
            _ => decode::<proto::ActivateNodeRequest>(body)?.public_key,
        };
        if key != signed.pem {
            tracing::warn!(call = ?call, "Fleet request refused: the key in its body is not the key that signed it");
            return Err(unauthenticated());
        }
        // Activation names the node its key is; registration makes one.
        return Ok(registered.filter(|_| call == Call::ActivateNode));
    }
    let claimed = claimed_node(call, body)?;
    if registered != Some(claimed) {
        tracing::warn!(call = ?call, node_id = claimed.0, "Fleet request refused: it names a node its key is not");
        return Err(unauthenticated());
    }
    Ok(Some(claimed))
}

/// The answer to a request whose signature is refused, logged.
fn refused(call: Call, why: &AuthError) -> ApiError {
    tracing::warn!(call = ?call, reason = %why, "Fleet request refused");
    match why {
        AuthError::Full => {
            ApiError::new(429, 0, "Too many requests from this SuperNode; slow down.")
        }
        _ => unauthenticated(),
    }
}

/// A heartbeat interval Flower's SuperLink accepts, or its error.
fn heartbeat_interval(seconds: f64) -> Result<Duration, ApiError> {
    if !HEARTBEAT_INTERVALS.contains(&seconds) {
        return Err(ApiError::new(
            400,
            2003,
            format!(
                "Invalid heartbeat interval: {seconds} s is not within [{}, {}].",
                HEARTBEAT_INTERVALS.start(),
                HEARTBEAT_INTERVALS.end()
            ),
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// The node a request that is not register or activate names.
fn claimed_node(call: Call, body: &Bytes) -> Result<NodeId, ApiError> {
    let node_of = |node: Option<proto::Node>| node.map_or(0, |node| node.node_id);
    let id = match call {
        Call::DeactivateNode => decode::<proto::DeactivateNodeRequest>(body)?.node_id,
        Call::UnregisterNode => decode::<proto::UnregisterNodeFleetRequest>(body)?.node_id,
        Call::SendNodeHeartbeat => node_of(decode::<proto::SendNodeHeartbeatRequest>(body)?.node),
        Call::PullMessages => node_of(decode::<proto::PullMessagesRequest>(body)?.node),
        Call::PushMessages => node_of(decode::<proto::PushMessagesRequest>(body)?.node),
        Call::GetRun => node_of(decode::<proto::GetRunRequest>(body)?.node),
        Call::GetFab => node_of(decode::<proto::GetFabRequest>(body)?.node),
        Call::PushObject => node_of(decode::<proto::PushObjectRequest>(body)?.node),
        Call::PullObject => node_of(decode::<proto::PullObjectRequest>(body)?.node),
        Call::ConfirmMessageReceived => {
            node_of(decode::<proto::ConfirmMessageReceivedRequest>(body)?.node)
        }
        Call::RegisterNode | Call::ActivateNode => 0,
    };
    Ok(NodeId(id))
}

/// The request's body, refused unread when it says it is over `limit`, cut off at `limit`.
async fn read_body(request: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            413,
            0,
            format!("Bodies of this call are limited to {limit} bytes."),
        )
    };
    let announced = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if announced.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    let read = Limited::new(request.into_body(), limit).collect();
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(_)) => Err(too_large()),
        Err(_) => Err(ApiError::new(408, 0, "The body took too long.")),
    }
}
