//! Virtual SuperNodes: one process hosting a simulation's N nodes (`--virtual-nodes`). Each is a
//! node as the SuperLink sees any other, with its own key, its own authenticated session and
//! node id, so the SuperLink, its rounds and the run path are the deployment ones. What they
//! share is the process: one UDP socket, one worker whose pool (`--max-workers`) bounds how many
//! client apps run at once, and for Flower apps the warm `flwr-clientapp` processes that answer
//! many nodes' instructions in turn, each with that node's context.

use crate::daemon::{Node, NodeError, NodeState, serve_node};
use crate::settings::{NodeSettings, VirtualNodes};
use crate::work::Worker;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

/// Handshakes in flight at once: the SuperLink's default bound per source address, which every
/// virtual node shares.
const HANDSHAKES_AT_ONCE: usize = 8;

/// Keeps the virtual nodes connected until `shutdown` (`Ok`), or until one must stop (`Err`,
/// and the others are shut down with it). `state` follows the first node.
pub(crate) async fn host(
    settings: &NodeSettings,
    virtual_nodes: &VirtualNodes,
    worker: &Arc<Worker>,
    endpoint: &quinn::Endpoint,
    shutdown: &CancellationToken,
    state: &watch::Sender<NodeState>,
) -> Result<(), NodeError> {
    let settings = Arc::new(settings.clone());
    let connecting = Arc::new(Semaphore::new(HANDSHAKES_AT_ONCE));
    let online = Arc::new(AtomicU32::new(0));
    let stop = shutdown.child_token();
    tracing::info!(
        nodes = virtual_nodes.count,
        workers = settings.max_workers.unwrap_or(1),
        "hosting virtual SuperNodes"
    );
    let mut nodes = tokio::task::JoinSet::new();
    for index in 0..virtual_nodes.count {
        let settings = settings.clone();
        let identity = virtual_nodes.identity(index);
        let config = Arc::new(virtual_nodes.node_config(index, &settings.node_config));
        let worker = worker.clone();
        let endpoint = endpoint.clone();
        let connecting = connecting.clone();
        let stop = stop.clone();
        let online = online.clone();
        let count = virtual_nodes.count;
        // The first node reports to the caller; the others to a state nobody reads.
        let state = if index == 0 {
            state.clone()
        } else {
            watch::channel(NodeState::Connecting).0
        };
        nodes.spawn(async move {
            let mut changes = state.subscribe();
            let counting = async {
                let mut was_online = false;
                while changes.changed().await.is_ok() {
                    let is_online = matches!(*changes.borrow(), NodeState::Online(_));
                    if is_online && !was_online {
                        let now = online.fetch_add(1, Ordering::Relaxed) + 1;
                        if now == count {
                            tracing::info!(nodes = count, "every virtual SuperNode is online");
                        }
                    } else if was_online && !is_online {
                        online.fetch_sub(1, Ordering::Relaxed);
                    }
                    was_online = is_online;
                }
            };
            let node = Node {
                identity: &identity,
                config,
                connecting: Some(&connecting),
            };
            tokio::select! {
                result = serve_node(&settings, node, &worker, &endpoint, &stop, &state) => result,
                () = counting => Ok(()),
            }
        });
    }
    let mut result = Ok(());
    while let Some(ended) = nodes.join_next().await {
        let outcome = ended.unwrap_or_else(|panic| {
            Err(NodeError::Setup(format!(
                "a virtual node's task failed: {panic}"
            )))
        });
        if let Err(error) = outcome
            && result.is_ok()
        {
            tracing::error!(%error, "a virtual SuperNode stopped; stopping them all");
            result = Err(error);
            stop.cancel();
        }
    }
    result
}
