//! Every redb table of the broker, in one place. Names carry a version: a change of a value's
//! encoding gets a new table name instead of misreading old bytes.

use redb::TableDefinition;

/// Node id -> postcard-encoded [`super::NodeRecord`].
pub const NODES: TableDefinition<u64, &[u8]> = TableDefinition::new("nodes_v1");

/// Canonical SPKI DER of a node key -> node id. Never deleted: an unregistered key stays taken.
pub const NODE_KEYS: TableDefinition<&[u8], u64> = TableDefinition::new("node_keys_v1");

/// Store-wide facts such as the schema version.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta_v1");

/// Run id -> postcard-encoded `wire::control::RunInfo`. Version 2 added the run's bundle;
/// [`super::migrate`] carries `runs_v1` over when a database is opened.
pub const RUNS: TableDefinition<u64, &[u8]> = TableDefinition::new("runs_v2");

/// SHA-256 of an app bundle -> the bundle (an archive, checked before it was stored). Stored once
/// however many runs use it.
pub const BUNDLES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("bundles_v1");

/// (SHA-256 of a bundle, a publisher's SPKI DER) -> that publisher's signature of the bundle
/// (checked before it was stored).
pub const BUNDLE_SIGNATURES: TableDefinition<(&[u8], &[u8]), &[u8]> =
    TableDefinition::new("bundle_signatures_v1");

/// (run id, line index) -> postcard-encoded `wire::control::LogLine`.
pub const RUN_LOGS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("run_logs_v1");

/// (run id, artifact name) -> bytes (the final model, metrics ...).
pub const ARTIFACTS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("artifacts_v1");

/// Run id -> the server app's state after its last completed round (opaque to the broker), from
/// which the run resumes after a restart.
pub const CHECKPOINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("checkpoints_v1");

/// Run id -> postcard-encoded `wire::control::Simulation`: the virtual federation of a run
/// started on a simulation SuperLink (written with the run, in one transaction).
pub const SIMULATIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("simulations_v1");

/// Tables earlier versions wrote and this one no longer reads, deleted when a database is opened:
/// rounds in flight (instructions, their contents, queues, replies and reply receipts), which no
/// reader needs after a restart: an interrupted round is sent again from the run's checkpoint, and
/// rounds now live in memory ([`crate::rounds`]).
pub const RETIRED: [&str; 5] = [
    "contents_v1",
    "replies_v1",
    "instructions_v1",
    "queue_v1",
    "replies_v2",
];
