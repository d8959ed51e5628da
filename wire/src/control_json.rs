//! The Control API's tables as JSON, in the shapes `flwr --format json` prints and the
//! dashboard serves: Flower's keys first, ids as strings (they exceed 2^53, where JSON numbers
//! lose digits in jq and JavaScript), then ours. One definition, so that a script written
//! against the CLI reads the dashboard's JSON unchanged.

use crate::control::{LogLine, NodeInfo, NodeStatus, RunInfo};
use crate::records::{ConfigRecord, ConfigValue};
use serde_json::{Value, json};
use std::time::{Duration, UNIX_EPOCH};

/// `YYYY-MM-DD HH:MM:SSZ` for a Unix time in milliseconds.
pub fn timestamp(ms: u64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(time)
        .to_string()
        .replace('T', " ")
}

/// `HH:MM:SS` (hours may exceed 24) between two Unix times in milliseconds.
pub fn elapsed(from_ms: u64, to_ms: u64) -> String {
    let secs = to_ms.saturating_sub(from_ms) / 1000;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// How long a run has been going (or went): from its start to its end or `now`.
pub fn run_elapsed(run: &RunInfo, now: u64) -> String {
    match run.starting_at_ms {
        Some(start) => elapsed(start, run.finished_at_ms.unwrap_or(now)),
        None => elapsed(0, 0),
    }
}

/// A run config as one JSON object.
pub fn config(config: &ConfigRecord) -> Value {
    let entries = config.iter().map(|(key, value)| {
        let value = match value {
            ConfigValue::Int(v) => json!(v),
            ConfigValue::Float(v) => json!(v),
            ConfigValue::Bool(v) => json!(v),
            ConfigValue::Str(v) => json!(v),
            ConfigValue::Bytes(v) => json!(v),
            ConfigValue::UInt(v) => json!(v),
            ConfigValue::IntList(v) => json!(v),
            ConfigValue::UIntList(v) => json!(v),
            ConfigValue::FloatList(v) => json!(v),
            ConfigValue::BoolList(v) => json!(v),
            ConfigValue::StrList(v) => json!(v),
            ConfigValue::BytesList(v) => json!(v),
        };
        (key.to_string(), value)
    });
    Value::Object(entries.collect())
}

/// One node (`flwr supernode list --format json`).
pub fn node(node: &NodeInfo, now: u64) -> Value {
    let time = |ms: Option<u64>| ms.map(timestamp);
    let online_elapsed = match (node.status, node.online_at_ms) {
        (NodeStatus::Online, Some(at)) => Some(elapsed(at, now)),
        _ => None,
    };
    json!({
        "node-id": node.node_id.to_string(),
        "owner-name": node.owner,
        "status": node.status.as_str(),
        "created-at": timestamp(node.registered_at_ms),
        "online-at": time(node.online_at_ms),
        "online-elapsed": online_elapsed,
        "offline-at": time(node.offline_at_ms),
        "deleted-at": time(node.unregistered_at_ms),
        "elapsed": elapsed(node.status_changed_at_ms, now),
        "elapsed-seconds": now.saturating_sub(node.status_changed_at_ms) / 1000,
        "status-changed-at": timestamp(node.status_changed_at_ms),
        "key-fingerprint": node.key_fingerprint,
    })
}

/// One run (`flwr ls --format json`).
pub fn run(run: &RunInfo, now: u64) -> Value {
    let time = |ms: Option<u64>| ms.map(timestamp);
    json!({
        "run-id": run.run_id.to_string(),
        "fab-id": run.app_name,
        "fab-name": run.app_name,
        "fab-version": run.app_version,
        "fab-hash": run.bundle.map(|hash| hash.to_string()).unwrap_or_default(),
        "status": run.status.as_str(),
        "status-details": run.details,
        "elapsed": run_elapsed(run, now),
        "pending-at": timestamp(run.pending_at_ms),
        "starting-at": time(run.starting_at_ms),
        "running-at": time(run.running_at_ms),
        "finished-at": time(run.finished_at_ms),
        "owner": run.owner,
        "status-changed-at": timestamp(run.status_changed_at_ms()),
        "run-config": config(&run.config),
    })
}

/// One log line (`flwr log --format json`).
pub fn log_line(line: &LogLine) -> Value {
    json!({"index": line.index, "at": timestamp(line.at_ms), "text": line.text})
}
