//! Each node's recent status, sampled: the strip of online history the nodes page draws. The
//! registry keeps only a node's latest transitions, so the dashboard samples every node's
//! status every [`SAMPLE_EVERY`] and keeps the last [`SAMPLES`] (an hour), in memory and since
//! the SuperLink started.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;
use wire::NodeId;
use wire::control::{NodeInfo, NodeStatus};

/// How often statuses are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(30);

/// Samples kept per node.
pub const SAMPLES: usize = 120;

/// The samples, oldest first, per node.
#[derive(Default)]
pub struct OnlineHistory(Mutex<HashMap<NodeId, VecDeque<NodeStatus>>>);

impl OnlineHistory {
    /// Records one sample of `nodes`; nodes no longer listed are forgotten.
    pub fn sample(&self, nodes: &[NodeInfo]) {
        let mut history = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let listed: std::collections::HashSet<NodeId> = nodes.iter().map(|n| n.node_id).collect();
        history.retain(|id, _| listed.contains(id));
        for node in nodes {
            let samples = history.entry(node.node_id).or_default();
            if samples.len() == SAMPLES {
                samples.pop_front();
            }
            samples.push_back(node.status);
        }
    }

    /// A node's samples, oldest first.
    pub fn of(&self, node: NodeId) -> Vec<NodeStatus> {
        let history = self.0.lock().unwrap_or_else(|p| p.into_inner());
        history
            .get(&node)
            .map(|samples| samples.iter().copied().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, status: NodeStatus) -> NodeInfo {
        NodeInfo {
            node_id: NodeId(id),
            owner: "alice".into(),
            status,
            key_fingerprint: String::new(),
            registered_at_ms: 0,
            online_at_ms: None,
            offline_at_ms: None,
            unregistered_at_ms: None,
            status_changed_at_ms: 0,
        }
    }

    #[test]
    fn samples_are_bounded_and_forgotten_with_their_node() {
        let history = OnlineHistory::default();
        for i in 0..SAMPLES + 5 {
            let status = if i % 2 == 0 {
                NodeStatus::Online
            } else {
                NodeStatus::Offline
            };
            history.sample(&[node(1, status), node(2, NodeStatus::Registered)]);
        }
        assert_eq!(history.of(NodeId(1)).len(), SAMPLES);
        assert_eq!(history.of(NodeId(1)).last(), Some(&NodeStatus::Online));
        history.sample(&[node(2, NodeStatus::Online)]);
        assert!(history.of(NodeId(1)).is_empty());
        assert_eq!(history.of(NodeId(2)).len(), SAMPLES);
    }
}
