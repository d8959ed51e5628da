//! Instructions in, replies out: the node's side of message delivery. Each instruction arrives on
//! its own stream and is acknowledged once fully read; the client app runs on a blocking thread;
//! the reply goes back on a stream of its own. A reply that cannot be delivered waits in an outbox
//! and is sent again after reconnecting (the broker ignores duplicates).

use crate::bundles::BundleCache;
use crate::isolation::{ChildCommand, ClientAppIo, Launch};
use crate::trust::TrustedApps;
use app_bundle::Component;
use flwr_sdk::app::ClientContext;
use model::apps::ClientApps;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wire::clientappio::AppJob;
use wire::fleet::{InstructionAck, InstructionHeader, NodeStream, ReplyOutcome};
use wire::io::{read_message, read_value, write_message, write_value};
use wire::message::now_ms;
use wire::message::{ErrorCode, MessageError};
use wire::stream::{DEFAULT_CHUNK, Limits};
use wire::{ConfigRecord, Message, MessageBody, NodeId, RunId};

/// Largest instruction header (app name, version, run config).
const HEADER_LIMIT: u32 = 1024 * 1024;

/// How long the broker has to answer a reply.
const OUTCOME_TIMEOUT: Duration = Duration::from_secs(60);

/// The node's work: its apps, its configuration, what is running, and what is waiting to be sent.
pub struct Worker {
    /// Client apps by name.
    apps: ClientApps,
    /// At most this many instructions are answered at once; the rest wait their turn, read and
    /// acknowledged (`--max-workers`). `None`: no bound.
    slots: Option<tokio::sync::Semaphore>,
    /// Limits on instructions received.
    limits: Limits,
    /// Cancellation flags of runs with work in progress.
    running: Mutex<HashMap<RunId, Arc<AtomicBool>>>,
    /// Runs the broker said ended: their instructions are refused.
    stopped: Mutex<crate::ended_runs::EndedRuns>,
    /// Replies not yet accepted by the broker.
    outbox: Mutex<Vec<Message>>,
    /// Set when apps run in child processes.
    isolated: Option<Isolated>,
    /// Where the programs of app bundles connect; `None` when the node runs built-in apps only.
    programs: Option<Programs>,
    /// The apps this node agreed to run (`--trusted-apps`); `None`: whatever the SuperLink sends.
    trusted: Option<TrustedApps>,
    /// Built-in client apps that answer Flower apps in place of their Python ClientApps, by FAB
    /// id (`--native-clientapp`).
    native: BTreeMap<String, String>,
}

/// What running app bundles' programs takes: the bundles, and the API their processes use.
pub struct Programs {
    /// Fetched bundles, unpacked.
    pub bundles: BundleCache,
    /// The ClientAppIo API the programs connect to.
    pub io: Arc<ClientAppIo>,
    /// Flower's ClientApps, for bundles that are FABs.
    pub flower: Arc<crate::flower::FlowerClientApps>,
}

/// Client apps in processes of their own: the API they connect to and how they start.
pub struct Isolated {
    /// The node's ClientAppIo API.
    pub io: Arc<ClientAppIo>,
    /// Started by the node per instruction, or by the operator.
    pub launch: Launch,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain inserts and removes: a poisoned value is still consistent.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Worker {
    /// A worker with `apps`.
    pub fn new(apps: ClientApps) -> Self {
        Worker {
            apps,
            slots: None,
            limits: Limits::default(),
            running: Mutex::default(),
            stopped: Mutex::default(),
            outbox: Mutex::default(),
            isolated: None,
            programs: None,
            trusted: None,
            native: BTreeMap::new(),
        }
    }

    /// Answers at most `workers` instructions at once.
    pub fn max_workers(mut self, workers: usize) -> Self {
        self.slots = Some(tokio::sync::Semaphore::new(workers.max(1)));
        self
    }

    /// Answers the Flower apps in `native` (by FAB id) with these built-in client apps.
    pub fn native_clientapps(mut self, native: BTreeMap<String, String>) -> Self {
        self.native = native;
        self
    }

    /// Runs the programs of app bundles.
    pub fn programs(mut self, programs: Programs) -> Self {
        self.programs = Some(programs);
        self
    }

    /// Runs only the apps in `trusted`.
    pub fn trusting(mut self, trusted: TrustedApps) -> Self {
        self.trusted = Some(trusted);
        self
    }

    /// Runs client apps in child processes instead of in the node.
    pub fn isolated(mut self, isolated: Isolated) -> Self {
        self.isolated = Some(isolated);
        self
    }

    /// The broker says `run_id` ended (stopped, completed or failed): abandon its work.
    pub fn stop_run(&self, run_id: RunId) {
        lock(&self.stopped).insert(run_id.0);
        if let Some(flag) = lock(&self.running).get(&run_id) {
            flag.store(true, Ordering::Relaxed);
        }
        if let Some(programs) = &self.programs {
            programs.flower.end_run(run_id.0);
        }
        tracing::info!(
            run_id = run_id.0,
            "run ended at the SuperLink; abandoning its work"
        );
    }

    /// Replies waiting to be sent.
    pub fn outbox_len(&self) -> usize {
        lock(&self.outbox).len()
    }

    /// Sends node `node_id`'s replies in the outbox over `connection`; those that fail stay.
    pub async fn flush_outbox(&self, node_id: NodeId, connection: &quinn::Connection) {
        let pending: Vec<Message> = {
            let mut outbox = lock(&self.outbox);
            // A reply past its time to live would be refused: it is dropped, whoever it is from
            // (a node id this process no longer has would keep it for ever otherwise).
            let now = now_ms();
            let (mine, others) = std::mem::take(&mut *outbox)
                .into_iter()
                .filter(|reply| !reply.metadata.is_expired(now))
                .partition(|reply| reply.metadata.src_node_id == node_id);
            *outbox = others;
            mine
        };
        for reply in pending {
            if let Err(reply) = self.send_reply(connection, reply).await {
                lock(&self.outbox).push(reply);
            }
        }
    }

    /// Serves one instruction stream opened by the broker to node `node_id`, whose apps are
    /// given `node_config`.
    pub async fn serve(
        self: Arc<Self>,
        node_id: NodeId,
        node_config: Arc<ConfigRecord>,
        connection: quinn::Connection,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let header: InstructionHeader = match read_value(&mut recv, HEADER_LIMIT).await {
            Ok(header) => header,
            Err(error) => {
                tracing::warn!(%error, "unreadable instruction header");
                return;
            }
        };
        // A worker's slot is taken before the instruction's arrays are read: instructions waiting
        // for one stay in the sender's flow control, so this process holds the arrays of the
        // instructions being answered only, however many of its nodes were sent one (held while
        // the app runs; the semaphore is never closed, so acquiring only waits).
        let slot = match &self.slots {
            Some(slots) => slots.acquire().await.ok(),
            None => None,
        };
        let instruction = match read_message(&mut recv, self.limits).await {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "unreadable instruction");
                return;
            }
        };
        let ack = InstructionAck {
            message_id: instruction.metadata.message_id,
        };
        if write_value(&mut send, &ack).await.is_err() {
            return;
        }
        let _ = send.finish();
        let run_id = instruction.metadata.run_id;
        if lock(&self.stopped).contains(run_id.0) {
            return;
        }
        tracing::info!(
            run_id = run_id.0,
            app = %header.app_name,
            message_type = instruction.metadata.message_type.as_str(),
            round = %instruction.metadata.group_id,
            "instruction received"
        );
        let cancelled = lock(&self.running)
            .entry(run_id)
            .or_insert_with(|| Arc::new(AtomicBool::new(false)))
            .clone();
        let body = self
            .execute(
                node_id,
                &node_config,
                &connection,
                &header,
                &instruction,
                cancelled.clone(),
            )
            .await;
        drop(slot);
        if cancelled.load(Ordering::Relaxed) {
            return;
        }
        let reply = instruction.reply(deliverable(body), now_ms());
        if let Err(reply) = self.send_reply(&connection, reply).await {
            lock(&self.outbox).push(reply);
        }
    }

    /// Runs the client app `header` names on `instruction`, if this node runs it: a built-in
    /// app, or what the run's bundle names (fetched over `connection` the first time).
    async fn execute(
        &self,
        node_id: NodeId,
        node_config: &ConfigRecord,
        connection: &quinn::Connection,
        header: &InstructionHeader,
        instruction: &Message,
        cancelled: Arc<AtomicBool>,
    ) -> MessageBody {
        let refuse = |code, reason: String| {
            tracing::warn!(?code, %reason, "instruction refused");
            MessageBody::Error(MessageError { code, reason })
        };
        let untrusted = || {
            let what = match header.bundle {
                Some(hash) => format!("the app bundle {hash}"),
                None => format!("the built-in app {:?}", header.app_name),
            };
            refuse(
                ErrorCode::UntrustedApp,
                format!(
                    "node {node_id} does not run {what}: it is not on its --trusted-apps list, \
                     by hash or by a trusted publisher's signature"
                ),
            )
        };
        // Decided before anything is fetched, unless a publisher's signature could decide it.
        if let Some(trusted) = &self.trusted
            && !trusted.allows(header.bundle, &header.app_name)
            && !(header.bundle.is_some() && trusted.has_publishers())
        {
            return untrusted();
        }
        let Some(hash) = header.bundle else {
            return self
                .execute_builtin(node_id, node_config, header, instruction, cancelled)
                .await;
        };
        let Some(programs) = &self.programs else {
            return refuse(
                ErrorCode::UnknownApp,
                format!("node {node_id} does not run app bundles"),
            );
        };
        if let Some(trusted) = &self.trusted
            && !trusted.allows(Some(hash), &header.app_name)
            && !programs.bundles.is_known(hash)
        {
            // Only a trusted publisher's signature can let it run: that is asked for first, and
            // the bundle's bytes are not downloaded (nor kept) without one.
            match programs.bundles.signatures(connection, hash).await {
                Ok(signatures) if trusted.signer(hash, &signatures).is_some() => {}
                Ok(_) => return untrusted(),
                Err(reason) => return refuse(ErrorCode::UnknownApp, reason),
            }
        }
        let mut fetched = match programs.bundles.get(connection, hash).await {
            Ok(fetched) => fetched,
            Err(reason) => return refuse(ErrorCode::UnknownApp, reason),
        };
        if let Some(trusted) = &self.trusted
            && !trusted.allows(Some(hash), &header.app_name)
        {
            // Kept without a trusted signature: the publisher may have signed it since.
            if trusted.signer(hash, &fetched.signatures).is_none() {
                fetched = match programs
                    .bundles
                    .refresh_signatures(connection, hash, fetched)
                    .await
                {
                    Ok(fetched) => fetched,
                    Err(reason) => return refuse(ErrorCode::UnknownApp, reason),
                };
            }
            match trusted.signer(hash, &fetched.signatures) {
                Some(publisher) => {
                    tracing::info!(%hash, %publisher, "app bundle trusted: signed by a trusted publisher");
                }
                None => return untrusted(),
            }
        }
        let program = match &fetched.bundle.manifest.clientapp {
            Component::Flower(_) => {
                let Some(fab) = &fetched.bundle.fab else {
                    return refuse(
                        ErrorCode::UnknownApp,
                        format!("the app bundle {hash} names a Flower ClientApp but is no FAB"),
                    );
                };
                if let Some(native) = self.native.get(&fab.fab_id) {
                    let header = InstructionHeader {
                        app_name: native.clone(),
                        ..header.clone()
                    };
                    return self
                        .execute_builtin(node_id, node_config, &header, instruction, cancelled)
                        .await;
                }
                let job = crate::flower::FlowerJob {
                    node_id,
                    node_config,
                    run_config: &header.run_config,
                    fab,
                    hash,
                };
                return programs.flower.answer(&job, instruction, cancelled).await;
            }
            Component::Builtin(name) => {
                let header = InstructionHeader {
                    app_name: name.clone(),
                    ..header.clone()
                };
                return self
                    .execute_builtin(node_id, node_config, &header, instruction, cancelled)
                    .await;
            }
            Component::Program(program) => program.clone(),
        };
        let app = fetched.bundle.manifest.name.clone();
        let workspace = match programs.bundles.workspace(fetched).await {
            Ok(workspace) => workspace,
            Err(reason) => return refuse(ErrorCode::ClientAppRaisedException, reason),
        };
        let command = ChildCommand {
            program: match program.bundle_path() {
                Some(path) => workspace.path().join(path),
                None => program.command.clone().into(),
            },
            args: program.args.clone(),
            dir: Some(workspace.path().to_path_buf()),
            address_flag: false,
            clean_environment: true,
        };
        let job = AppJob {
            node_id,
            node_config: node_config.clone(),
            header: header.clone(),
        };
        let started = std::time::Instant::now();
        let body = programs
            .io
            .run(&Launch::Child(command), job, instruction, cancelled)
            .await;
        if matches!(body, MessageBody::Content(_)) {
            tracing::info!(elapsed = ?started.elapsed(), %app, "client app program finished");
        }
        // Removed only now: the program (and its process group) is gone.
        drop(workspace);
        body
    }

    /// Runs the built-in client app named in `header` on `instruction`, in this process or in
    /// a `flwr-clientapp` process.
    async fn execute_builtin(
        &self,
        node_id: NodeId,
        node_config: &ConfigRecord,
        header: &InstructionHeader,
        instruction: &Message,
        cancelled: Arc<AtomicBool>,
    ) -> MessageBody {
        if let Some(isolated) = &self.isolated {
            let job = AppJob {
                node_id,
                node_config: node_config.clone(),
                header: header.clone(),
            };
            let started = std::time::Instant::now();
            let body = isolated
                .io
                .run(&isolated.launch, job, instruction, cancelled)
                .await;
            if matches!(body, MessageBody::Content(_)) {
                tracing::info!(elapsed = ?started.elapsed(), "client app process finished");
            }
            return body;
        }
        let context = ClientContext {
            node_id,
            node_config: node_config.clone(),
            run_config: header.run_config.clone(),
            cancelled,
        };
        let started = std::time::Instant::now();
        let body = crate::apps::answer(&self.apps, &header.app_name, instruction, context).await;
        match &body {
            MessageBody::Content(_) => {
                tracing::info!(elapsed = ?started.elapsed(), "client app finished");
            }
            MessageBody::Error(error) => {
                tracing::warn!(code = ?error.code, reason = %error.reason, "client app failed");
            }
        }
        body
    }

    /// Sends one reply; gives it back if it could not be delivered (to retry later). The reply
    /// is [`deliverable`]: a failure is the connection's, and worth retrying.
    async fn send_reply(
        &self,
        connection: &quinn::Connection,
        reply: Message,
    ) -> Result<(), Message> {
        let attempt = async {
            let (mut send, mut recv) = connection.open_bi().await.ok()?;
            write_value(&mut send, &NodeStream::Reply).await.ok()?;
            write_message(&mut send, &reply, DEFAULT_CHUNK).await.ok()?;
            send.finish().ok()?;
            tokio::time::timeout(
                OUTCOME_TIMEOUT,
                read_value::<ReplyOutcome, _>(&mut recv, 64 * 1024),
            )
            .await
            .ok()?
            .ok()
        };
        match attempt.await {
            Some(ReplyOutcome::Accepted) => {
                tracing::info!(instruction = ?reply.metadata.reply_to.map(|id| id.to_string()), "reply accepted");
                Ok(())
            }
            Some(ReplyOutcome::Rejected(reason)) => {
                // Retrying cannot change the verdict.
                tracing::warn!(%reason, "the SuperLink rejected a reply");
                Ok(())
            }
            None => Err(reply),
        }
    }
}

/// `body`, or an error in its place when it breaks the protocol's bounds (an app's records that
/// no broker would accept): such a reply would fail to encode on every attempt and wait in the
/// outbox for ever, while the round waited for it.
fn deliverable(body: MessageBody) -> MessageBody {
    match &body {
        MessageBody::Content(content) => match content.validate() {
            Ok(()) => body,
            Err(error) => {
                tracing::warn!(%error, "a client app's reply breaks the protocol's bounds");
                MessageBody::Error(MessageError {
                    code: ErrorCode::InvalidReply,
                    reason: format!("the client app's reply cannot be sent: {error}"),
                })
            }
        },
        MessageBody::Error(_) => body,
    }
}
