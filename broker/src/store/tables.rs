//! Every redb table of the broker, in one place. Names carry a version: a change of a value's
//! encoding gets a new table name instead of misreading old bytes.

use redb::TableDefinition;

/// Node id -> postcard-encoded [`super::NodeRecord`].
pub const NODES: TableDefinition<u64, &[u8]> = TableDefinition::new("nodes_v1");

/// Canonical SPKI DER of a node key -> node id. Never deleted: an unregistered key stays taken.
pub const NODE_KEYS: TableDefinition<&[u8], u64> = TableDefinition::new("node_keys_v1");

/// Store-wide facts such as the schema version.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta_v1");
