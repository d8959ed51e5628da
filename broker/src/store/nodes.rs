//! The node registry.

use super::{Store, StoreError, storage, tables};
use certs::PublicKey;
use redb::{ReadableDatabase as _, ReadableTable as _};
use serde::{Deserialize, Serialize};
use wire::NodeId;
use wire::control::{NodeInfo, NodeStatus};

/// A node as stored: its public view plus its key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// What operators see.
    pub info: NodeInfo,
    /// Canonical SPKI DER of the node's key.
    pub public_key: Vec<u8>,
}

impl NodeRecord {
    fn set_status(&mut self, status: NodeStatus, now_ms: u64) {
        self.info.status = status;
        self.info.status_changed_at_ms = now_ms;
        match status {
            NodeStatus::Online => self.info.online_at_ms = Some(now_ms),
            NodeStatus::Offline => self.info.offline_at_ms = Some(now_ms),
            NodeStatus::Unregistered => self.info.unregistered_at_ms = Some(now_ms),
            NodeStatus::Registered => {}
        }
    }
}

fn decode_record(bytes: &[u8]) -> Result<NodeRecord, StoreError> {
    postcard::from_bytes(bytes)
        .map_err(|e| StoreError::Storage(format!("corrupt node record: {e}")))
}

fn encode_record(record: &NodeRecord) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(record).map_err(|e| StoreError::Storage(e.to_string()))
}

impl Store {
    /// Registers a key under a fresh random node id. A key that is or ever was registered is refused.
    pub fn register_node(
        &self,
        key: &PublicKey,
        owner: &str,
        now_ms: u64,
    ) -> Result<NodeInfo, StoreError> {
        let spki = key.to_spki_der();
        let txn = self.db.begin_write().map_err(storage)?;
        let info = {
            let mut keys = txn.open_table(tables::NODE_KEYS).map_err(storage)?;
            if keys.get(spki.as_slice()).map_err(storage)?.is_some() {
                return Err(StoreError::KeyInUse);
            }
            let mut nodes = txn.open_table(tables::NODES).map_err(storage)?;
            let node_id = loop {
                let candidate = NodeId::random();
                if nodes.get(candidate.0).map_err(storage)?.is_none() {
                    break candidate;
                }
            };
            let info = NodeInfo {
                node_id,
                owner: owner.to_string(),
                status: NodeStatus::Registered,
                key_fingerprint: key.fingerprint(),
                registered_at_ms: now_ms,
                online_at_ms: None,
                offline_at_ms: None,
                unregistered_at_ms: None,
                status_changed_at_ms: now_ms,
            };
            let record = NodeRecord {
                info: info.clone(),
                public_key: spki.clone(),
            };
            nodes
                .insert(node_id.0, encode_record(&record)?.as_slice())
                .map_err(storage)?;
            keys.insert(spki.as_slice(), node_id.0).map_err(storage)?;
            info
        };
        let tally = self.tallies.nodes.hold();
        txn.commit().map_err(storage)?;
        tally.add(info.status);
        Ok(info)
    }

    /// The node registered with `key`, whatever its status.
    pub fn node_by_key(&self, key: &PublicKey) -> Result<Option<NodeRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let keys = txn.open_table(tables::NODE_KEYS).map_err(storage)?;
        let Some(id) = keys.get(key.to_spki_der().as_slice()).map_err(storage)? else {
            return Ok(None);
        };
        let nodes = txn.open_table(tables::NODES).map_err(storage)?;
        let record = nodes.get(id.value()).map_err(storage)?;
        record.map(|bytes| decode_record(bytes.value())).transpose()
    }

    /// The node with id `node_id`.
    pub fn node(&self, node_id: NodeId) -> Result<Option<NodeRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let nodes = txn.open_table(tables::NODES).map_err(storage)?;
        let record = nodes.get(node_id.0).map_err(storage)?;
        record.map(|bytes| decode_record(bytes.value())).transpose()
    }

    /// Applies `change` to a node's record in one transaction; `change` decides whether to write.
    fn update_node<T>(
        &self,
        node_id: NodeId,
        change: impl FnOnce(&mut NodeRecord) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let txn = self.db.begin_write().map_err(storage)?;
        let (result, before, after) = {
            let mut nodes = txn.open_table(tables::NODES).map_err(storage)?;
            let mut record = match nodes.get(node_id.0).map_err(storage)? {
                Some(bytes) => decode_record(bytes.value())?,
                None => return Err(StoreError::UnknownNode(node_id)),
            };
            let before = record.info.status;
            let result = change(&mut record)?;
            nodes
                .insert(node_id.0, encode_record(&record)?.as_slice())
                .map_err(storage)?;
            (result, before, record.info.status)
        };
        let tally = self.tallies.nodes.hold();
        txn.commit().map_err(storage)?;
        tally.moved(before, after);
        Ok(result)
    }

    /// Marks a node unregistered (terminal). Its key stays taken forever.
    pub fn unregister_node(&self, node_id: NodeId, now_ms: u64) -> Result<NodeInfo, StoreError> {
        self.update_node(node_id, |record| {
            if record.info.status == NodeStatus::Unregistered {
                return Err(StoreError::AlreadyUnregistered(node_id));
            }
            record.set_status(NodeStatus::Unregistered, now_ms);
            Ok(record.info.clone())
        })
    }

    /// Sets a node online or offline; an unregistered node stays unregistered. Returns the new record.
    pub fn set_node_status(
        &self,
        node_id: NodeId,
        status: NodeStatus,
        now_ms: u64,
    ) -> Result<NodeInfo, StoreError> {
        self.update_node(node_id, |record| {
            if record.info.status != NodeStatus::Unregistered && record.info.status != status {
                record.set_status(status, now_ms);
            }
            Ok(record.info.clone())
        })
    }

    /// Every node, ordered by registration time.
    pub fn list_nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let nodes = txn.open_table(tables::NODES).map_err(storage)?;
        let mut list = Vec::new();
        for entry in nodes.iter().map_err(storage)? {
            let (_, bytes) = entry.map_err(storage)?;
            list.push(decode_record(bytes.value())?.info);
        }
        list.sort_by_key(|info| (info.registered_at_ms, info.node_id));
        Ok(list)
    }

    /// At start-up no node is connected: whatever a previous process left online is offline now.
    pub fn mark_online_nodes_offline(&self, now_ms: u64) -> Result<usize, StoreError> {
        let online: Vec<NodeId> = self
            .list_nodes()?
            .into_iter()
            .filter(|n| n.status == NodeStatus::Online)
            .map(|n| n.node_id)
            .collect();
        for node_id in &online {
            self.set_node_status(*node_id, NodeStatus::Offline, now_ms)?;
        }
        Ok(online.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use certs::IdentityKey;

    #[cfg(unix)]
    #[test]
    fn a_new_database_and_its_directory_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join("state.redb");
        drop(Store::open(&path).unwrap());
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        // And it opens again as the same database.
        drop(Store::open(&path).unwrap());
    }

    #[test]
    fn a_key_can_be_registered_once_even_after_unregistering() {
        let store = Store::in_memory().unwrap();
        let key = IdentityKey::generate().public_key();
        let node = store.register_node(&key, "alice", 1).unwrap();
        assert!(matches!(
            store.register_node(&key, "bob", 2),
            Err(StoreError::KeyInUse)
        ));
        store.unregister_node(node.node_id, 3).unwrap();
        assert!(matches!(
            store.register_node(&key, "alice", 4),
            Err(StoreError::KeyInUse)
        ));
        assert!(matches!(
            store.unregister_node(node.node_id, 5),
            Err(StoreError::AlreadyUnregistered(_))
        ));
    }

    #[test]
    fn status_changes_are_timestamped_and_unregistered_is_terminal() {
        let store = Store::in_memory().unwrap();
        let key = IdentityKey::generate().public_key();
        let id = store.register_node(&key, "alice", 10).unwrap().node_id;
        let online = store.set_node_status(id, NodeStatus::Online, 20).unwrap();
        assert_eq!(
            (
                online.status,
                online.online_at_ms,
                online.status_changed_at_ms
            ),
            (NodeStatus::Online, Some(20), 20)
        );
        store.unregister_node(id, 30).unwrap();
        let after = store.set_node_status(id, NodeStatus::Online, 40).unwrap();
        assert_eq!(after.status, NodeStatus::Unregistered);
        assert_eq!(after.unregistered_at_ms, Some(30));
    }

    #[test]
    fn a_file_database_keeps_nodes_across_reopen_and_refuses_a_foreign_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let key = IdentityKey::generate().public_key();
        let id = {
            let store = Store::open(&path).unwrap();
            let id = store.register_node(&key, "alice", 1).unwrap().node_id;
            store.set_node_status(id, NodeStatus::Online, 2).unwrap();
            id
        };
        let store = Store::open(&path).unwrap();
        assert_eq!(store.node_by_key(&key).unwrap().unwrap().info.node_id, id);
        assert_eq!(store.mark_online_nodes_offline(3).unwrap(), 1);

        let foreign = dir.path().join("foreign.redb");
        std::fs::write(
            &foreign,
            b"this is not a database at all, but it is long enough",
        )
        .unwrap();
        let error = Store::open(&foreign).unwrap_err();
        assert!(matches!(error, StoreError::Unusable { .. }), "{error}");
        assert_eq!(
            std::fs::read(&foreign).unwrap(),
            b"this is not a database at all, but it is long enough"
        );
    }
}
