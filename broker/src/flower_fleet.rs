//! Flower's Fleet API over HTTP: where Flower 1.42's own `flower-supernode` joins this
//! SuperLink. The protocol is `flower_runtime::fleet`'s; this is its host: the one registry of
//! node keys (a key registered with `flwr supernode register` comes in over QUIC or HTTP, and
//! unregistering it cuts both), the same sessions and liveness (a Flower SuperNode is online
//! while its heartbeats come, within twice the interval it announced, as on Flower's SuperLink),
//! and the same rounds: its instructions are taken from the node's queue when it polls, and its
//! replies are checked and handed to their round as a QUIC node's are.

use crate::config::NodeAuth;
use crate::delivery::{array_bytes, judge, reply_allowance};
use crate::state::Shared;
use crate::store::{AUTOMATIC_OWNER, StoreError};
use flower_runtime::fleet::{FlowerFab, Instruction};
use flower_runtime::server::ApiError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use wire::control::{NodeStatus, RunInfo, RunStatus};
use wire::message::{ErrorCode, MessageError, now_ms};
use wire::{BundleHash, Message, MessageBody, NodeId, RunId, close};

/// How many heartbeat intervals a Flower SuperNode may stay silent (Flower's
/// `HEARTBEAT_PATIENCE`).
const HEARTBEAT_PATIENCE: u32 = 2;

/// How often SuperNodes whose heartbeats stopped are marked offline.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The registry, sessions and rounds, as Flower's SuperNodes see them. Weak: a request that
/// outlives the broker must not keep its database open.
pub struct Host {
    shared: Weak<Shared>,
    /// Each bundle read: its FAB, or `None` for a bundle that is no FAB (only a FAB's
    /// instructions go to a Flower SuperNode). Read once, not at every SuperNode's call.
    fabs: Mutex<HashMap<BundleHash, Option<Arc<FlowerFab>>>>,
}

impl Host {
    /// The host of `shared`.
    pub fn new(shared: &Arc<Shared>) -> Self {
        Host {
            shared: Arc::downgrade(shared),
            fabs: Mutex::default(),
        }
    }

    fn shared(&self) -> Result<Arc<Shared>, ApiError> {
        self.shared
            .upgrade()
            .ok_or_else(|| ApiError::new(503, 0, "The SuperLink is shutting down."))
    }

    /// Bundle `hash` as a FAB, read and cached; `None` when it is not one (or is gone).
    fn fab(&self, shared: &Shared, hash: BundleHash) -> Result<Option<Arc<FlowerFab>>, ApiError> {
        if let Some(known) = self
            .fabs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&hash)
        {
            return Ok(known.clone());
        }
        let Some(archive) = shared.store.bundle(hash).map_err(internal)? else {
            return Ok(None);
        };
        let fab = app_bundle::fab::open(&archive).ok().map(|(_, fab)| {
            Arc::new(FlowerFab {
                fab_id: fab.fab_id,
                version: fab.version,
                hash: hash.to_string(),
                archive: Arc::new(fab.archive),
            })
        });
        let mut fabs = self.fabs.lock().unwrap_or_else(|p| p.into_inner());
        if fabs.len() >= KEPT_FABS {
            fabs.clear();
        }
        fabs.insert(hash, fab.clone());
        Ok(fab)
    }
}

/// Most bundles whose reading is kept.
const KEPT_FABS: usize = 16;

fn internal(error: StoreError) -> ApiError {
    tracing::error!(%error, "Flower Fleet API: the store failed");
    ApiError::new(500, 0, "The SuperLink failed to answer.")
}

/// How long a SuperNode that announced `interval` stays online without a heartbeat.
fn online_until(interval: Duration) -> tokio::time::Instant {
    tokio::time::Instant::now() + interval * HEARTBEAT_PATIENCE
}

impl flower_runtime::fleet::FleetHost for Host {
    fn self_registration(&self) -> bool {
        self.shared
            .upgrade()
            // A simulation's nodes are its virtual ones: nobody registers over HTTP there.
            .is_some_and(|shared| {
                shared.config.node_auth == NodeAuth::Automatic && shared.simulations.is_none()
            })
    }

    fn node_of_key(&self, key: &certs::PublicKey) -> Result<Option<NodeId>, ApiError> {
        let shared = self.shared()?;
        let record = shared.store.node_by_key(key).map_err(internal)?;
        Ok(record
            .filter(|record| record.info.status != NodeStatus::Unregistered)
            .map(|record| record.info.node_id)
            .filter(|node| !shared.sessions.is_revoked(*node)))
    }

    fn register(&self, key: &certs::PublicKey) -> Result<NodeId, ApiError> {
        let shared = self.shared()?;
        if shared.config.operator_auth.is_operator_key(key) {
            return Err(ApiError::new(
                412,
                22,
                "The provided public key is not valid: it is an operator key.",
            ));
        }
        match shared.store.register_node(key, AUTOMATIC_OWNER, now_ms()) {
            Ok(info) => {
                tracing::info!(
                    node_id = info.node_id.0,
                    "Flower SuperNode registered itself"
                );
                Ok(info.node_id)
            }
            Err(StoreError::KeyInUse) => Err(ApiError::new(412, 23, "Public key already in use.")),
            Err(other) => Err(internal(other)),
        }
    }

    fn unregister(&self, node: NodeId) -> Result<(), ApiError> {
        let shared = self.shared()?;
        shared
            .store
            .unregister_node(node, now_ms())
            .map_err(internal)?;
        shared
            .sessions
            .revoke(node, close::UNREGISTERED, "unregistered itself");
        tracing::info!(node_id = node.0, "Flower SuperNode unregistered itself");
        Ok(())
    }

    fn activate(&self, node: NodeId, interval: Duration) -> Result<(), ApiError> {
        let shared = self.shared()?;
        if shared
            .sessions
            .attach_http(node, online_until(interval), close::REPLACED)
            .is_none()
        {
            return Err(ApiError::new(
                412,
                2004,
                "Failed to activate SuperNode: it was unregistered.",
            ));
        }
        shared
            .store
            .set_node_status(node, NodeStatus::Online, now_ms())
            .map_err(internal)?;
        Ok(())
    }

    fn deactivate(&self, node: NodeId) {
        let Ok(shared) = self.shared() else {
            return;
        };
        if shared.sessions.detach_http(node) {
            mark_offline(&shared, node);
            tracing::info!(node_id = node.0, "Flower SuperNode deactivated");
        }
    }

    fn heartbeat(&self, node: NodeId, interval: Duration) -> bool {
        let Ok(shared) = self.shared() else {
            return false;
        };
        match shared
            .sessions
            .attach_http(node, online_until(interval), close::REPLACED)
        {
            None => false,
            Some(false) => true,
            // Back after its heartbeats lapsed, or after this SuperLink restarted.
            Some(true) => {
                tracing::info!(node_id = node.0, "Flower SuperNode online again");
                shared
                    .store
                    .set_node_status(node, NodeStatus::Online, now_ms())
                    .is_ok()
            }
        }
    }

    fn next_instruction(&self, node: NodeId) -> Option<Instruction> {
        let shared = self.shared().ok()?;
        // Unregistered since its request was checked: nothing more of any run.
        if shared.sessions.is_revoked(node) {
            return None;
        }
        for id in shared.rounds.queued_for(node) {
            let Some(pending) = shared.rounds.instruction(id) else {
                continue;
            };
            shared.rounds.mark_delivered(node, id);
            if pending.answered.is_some() || pending.metadata.is_expired(now_ms()) {
                continue;
            }
            let instruction = Message {
                metadata: pending.metadata,
                body: MessageBody::Content((*pending.content).clone()),
            };
            let is_fab = match pending.header.bundle {
                Some(hash) => matches!(self.fab(&shared, hash), Ok(Some(_))),
                None => false,
            };
            if !is_fab {
                // Flower's SuperNode runs Flower apps only: answered in its place, at once.
                let reason =
                    "this node is Flower's own SuperNode, which runs Flower apps (FABs) only";
                let reply = instruction.reply(
                    MessageBody::Error(MessageError {
                        code: ErrorCode::ClientAppRaisedException,
                        reason: reason.into(),
                    }),
                    now_ms(),
                );
                judge(&shared, reply);
                continue;
            }
            let max_reply_bytes = reply_allowance(
                array_bytes(&pending.content),
                shared.config.limits.max_payload,
            );
            tracing::debug!(instruction = %id, node_id = node.0, "handed to a Flower SuperNode");
            return Some(Instruction {
                message: instruction,
                max_reply_bytes,
            });
        }
        None
    }

    fn run(&self, run_id: RunId) -> Result<(RunInfo, Arc<FlowerFab>), ApiError> {
        let shared = self.shared()?;
        let refused = |why: &str| ApiError::new(403, 2008, format!("Failed to get run: {why}"));
        let info = shared
            .store
            .run(run_id)
            .map_err(internal)?
            .ok_or_else(|| refused("no such run"))?;
        let hash = info.bundle.ok_or_else(|| refused("the run has no FAB"))?;
        let fab = self
            .fab(&shared, hash)?
            .ok_or_else(|| refused("the run's app is no FAB"))?;
        Ok((info, fab))
    }

    fn is_running(&self, run_id: RunId) -> bool {
        self.shared().is_ok_and(|shared| {
            matches!(shared.store.run(run_id), Ok(Some(run)) if run.status == RunStatus::Running)
        })
    }

    fn reply(&self, node: NodeId, reply: Message) {
        let Ok(shared) = self.shared() else {
            return;
        };
        if shared.sessions.is_revoked(node) {
            tracing::warn!(
                node_id = node.0,
                "reply rejected: the node was unregistered"
            );
            return;
        }
        match judge(&shared, reply) {
            wire::fleet::ReplyOutcome::Accepted => {
                tracing::debug!(node_id = node.0, "reply from a Flower SuperNode accepted");
            }
            wire::fleet::ReplyOutcome::Rejected(reason) => {
                tracing::warn!(node_id = node.0, %reason, "reply from a Flower SuperNode rejected");
                shared.metrics.reply_received("rejected");
            }
        }
    }
}

/// Records `node` as offline.
fn mark_offline(shared: &Shared, node: NodeId) {
    if let Err(error) = shared
        .store
        .set_node_status(node, NodeStatus::Offline, now_ms())
    {
        tracing::error!(%error, node_id = node.0, "could not record the node as offline");
    }
}

/// Every [`SWEEP_EVERY`] until `shutdown`: Flower SuperNodes whose heartbeats stopped go
/// offline (and what they held is dropped), and instructions held past their time to live are
/// dropped; and at once, what a node that went away (unregistered, or replaced by a QUIC
/// session) held.
pub async fn sweep(
    shared: Weak<Shared>,
    fleet: Arc<flower_runtime::fleet::Fleet>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut ticks = tokio::time::interval(SWEEP_EVERY);
    let mut departures = match shared.upgrade() {
        Some(shared) => shared.sessions.departures(),
        None => return,
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
            // Unregistered, or on QUIC now: what it held over HTTP goes.
            departed = departures.recv() => {
                if let Ok(node) = departed {
                    fleet.forget_node(node);
                }
                continue;
            }
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let gone = shared.sessions.expire_http(tokio::time::Instant::now());
        if !gone.is_empty() {
            let shared = shared.clone();
            let fleet = fleet.clone();
            let _ = tokio::task::spawn_blocking(move || {
                for node in gone {
                    tracing::info!(
                        node_id = node.0,
                        "Flower SuperNode offline: its heartbeats stopped"
                    );
                    fleet.forget_node(node);
                    mark_offline(&shared, node);
                }
            })
            .await;
        }
        fleet.sweep();
    }
}
