//! `vector-add`: the smallest real federated app, needing no training library. The server keeps a
//! vector; each round every sampled node returns the vector plus its own node-config `value`; the
//! server averages the replies with [`FedAvg`]. After R rounds with values v_i the vector holds
//! R x mean(v_i) in every element, exactly, which makes it a precise end-to-end check of delivery,
//! replies and aggregation. The vector is checkpointed after every round, so a run interrupted by a
//! SuperLink restart resumes from its last completed round and still ends on the exact value.
//!
//! Run config: `num-server-rounds` (3), `vector-length` (4), `min-nodes` (1), `round-timeout`
//! seconds (30), `node-wait-timeout` seconds (30). Node config: `value` (1.0), `num-examples` (1, the
//! weight the node claims), `delay-ms` (0, to simulate slow work), and `fault` with `fault-round` to simulate a client app that crashes (see
//! `simulate_fault`).

use flwr_sdk::app::{
    AppError, ClientApp, ClientContext, Grid, Instruction, ServerApp, ServerContext, config_f64,
    config_i64, config_str,
};
use flwr_sdk::checkpoint;
use flwr_sdk::fedavg::FedAvg;
use std::sync::Arc;
use std::time::Duration;
use wire::{
    Array, ArrayRecord, ConfigRecord, ConfigValue, Message, MessageBody, MessageType, MetricRecord,
    MetricValue, Record, RecordDict,
};

/// The app's name in flwr.toml.
pub const NAME: &str = "vector-add";

/// Name of the array record in instructions and replies.
const ARRAYS: &str = "arrays";

/// Name of the array inside it.
const VECTOR: &str = "vector";

/// The server half.
pub struct Server;

/// The client half.
pub struct Client;

fn seconds(value: f64, key: &str) -> Result<Duration, AppError> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| AppError::new(format!("{key} must be a non-negative number of seconds")))
}

/// The example count a reply reports in its `metrics` record (`num-examples`).
pub fn num_examples(content: &RecordDict) -> Option<f64> {
    match content.metrics("metrics")?.get("num-examples")? {
        MetricValue::Int(n) => Some(*n as f64),
        MetricValue::Float(n) => Some(*n),
        _ => None,
    }
}

fn vector_of(arrays: &ArrayRecord) -> Vec<f32> {
    arrays
        .get(VECTOR)
        .and_then(Array::to_f32)
        .unwrap_or_default()
}

/// The vector for a log line: in full when short, its head and length otherwise.
fn describe(arrays: &ArrayRecord) -> String {
    let vector = vector_of(arrays);
    if vector.len() <= 8 {
        format!("{vector:?}")
    } else {
        format!("{:?} ... ({} values)", &vector[..8], vector.len())
    }
}

impl ServerApp for Server {
    fn run(&self, grid: &dyn Grid, context: &ServerContext) -> Result<(), AppError> {
        let config = &context.run_config;
        let rounds = config_i64(config, "num-server-rounds", 3)?.max(0) as u64;
        let length = config_i64(config, "vector-length", 4)?.clamp(0, 1 << 30) as usize;
        let min_nodes = config_i64(config, "min-nodes", 1)?.max(1) as usize;
        let round_timeout = seconds(config_f64(config, "round-timeout", 30.0)?, "round-timeout")?;
        let node_wait = seconds(
            config_f64(config, "node-wait-timeout", 30.0)?,
            "node-wait-timeout",
        )?;

        let (mut arrays, first_round) = match checkpoint::resume_point(context)? {
            Some(resumed) => {
                grid.log(&format!(
                    "Resuming after round {} of {rounds} from the run's checkpoint",
                    resumed.completed_rounds
                ));
                (resumed.arrays, resumed.completed_rounds + 1)
            }
            None => {
                let zeros = Array::from_f32(vec![length as u64], &vec![0.0; length])
                    .map_err(|e| AppError::new(e.to_string()))?;
                (ArrayRecord::new().with(VECTOR, zeros), 1)
            }
        };
        for round in first_round..=rounds {
            let nodes = grid.wait_for_nodes(min_nodes, node_wait)?;
            if nodes.len() < min_nodes {
                return Err(AppError::new(format!(
                    "round {round}: only {} of the {min_nodes} required nodes are online",
                    nodes.len()
                )));
            }
            grid.log(&format!("[ROUND {round}/{rounds}]"));
            grid.log(&format!(
                "configure_train: sampled {} nodes (out of {})",
                nodes.len(),
                nodes.len()
            ));
            let content = Arc::new(
                RecordDict::new()
                    .with(ARRAYS, Record::Arrays(arrays.clone()))
                    .with(
                        "config",
                        Record::Config(
                            ConfigRecord::new()
                                .with("server-round", ConfigValue::Int(round as i64)),
                        ),
                    ),
            );
            let instructions = nodes
                .iter()
                .map(|&dst| Instruction {
                    dst,
                    message_type: MessageType::TRAIN,
                    group_id: round.to_string(),
                    content: content.clone(),
                })
                .collect();
            let mut fedavg = FedAvg::new(&arrays).map_err(|e| AppError::new(e.to_string()))?;
            let mut failures = Vec::new();
            grid.send_and_fold(instructions, round_timeout, &mut |reply| {
                let node = reply.metadata.src_node_id;
                let outcome = match &reply.body {
                    MessageBody::Error(error) => Err(format!("{:?}: {}", error.code, error.reason)),
                    MessageBody::Content(content) => {
                        match (content.arrays(ARRAYS), num_examples(content)) {
                            (Some(update), Some(weight)) => {
                                fedavg.add(update, weight).map_err(|e| e.to_string())
                            }
                            _ => Err("reply lacks arrays or num-examples".into()),
                        }
                    }
                };
                if let Err(reason) = outcome {
                    failures.push(format!("node {node}: {reason}"));
                }
            })?;
            grid.log(&format!(
                "aggregate_train: received {} results and {} failures",
                fedavg.accepted(),
                failures.len()
            ));
            for failure in &failures {
                grid.log(&format!("  failure from {failure}"));
            }
            if fedavg.accepted() == 0 {
                return Err(AppError::new(format!(
                    "round {round}: no node returned a result"
                )));
            }
            arrays = fedavg.finish().map_err(|e| AppError::new(e.to_string()))?;
            grid.log(&format!("  vector = {}", describe(&arrays)));
            grid.save_checkpoint(&checkpoint::encode(round, &arrays, "")?)?;
        }
        let encoded = postcard::to_stdvec(&arrays).map_err(|e| AppError::new(e.to_string()))?;
        grid.save_artifact("final.arrays", &encoded)?;
        grid.log(&format!("final vector = {}", describe(&arrays)));
        Ok(())
    }
}

/// The crash a node's operator asked this app to simulate, through node config `fault`: `panic`,
/// `abort` (the process dies at once, as on a fatal error in native code) or `out-of-memory` (the
/// allocator's failure path, which aborts the process). With `fault-round = r` (r >= 1) only round
/// r's instruction crashes; without it, every one. Under subprocess isolation only the app's process
/// dies; in process, the whole node does, which is what isolation is for.
fn simulate_fault(message: &Message, context: &ClientContext) -> Result<(), AppError> {
    let Some(fault) = config_str(&context.node_config, "fault")? else {
        return Ok(());
    };
    let only_round = config_i64(&context.node_config, "fault-round", 0)?;
    if only_round != 0 && message.metadata.group_id != only_round.to_string() {
        return Ok(());
    }
    match fault {
        "panic" => panic!("vector-add: simulated panic (node config fault = \"panic\")"),
        "abort" => {
            eprintln!("vector-add: simulated abort (node config fault = \"abort\")");
            std::process::abort()
        }
        "out-of-memory" => {
            // What the global allocator's failure ends in: a message on stderr, then an abort.
            std::alloc::handle_alloc_error(std::alloc::Layout::new::<[u8; 1 << 30]>())
        }
        other => Err(AppError::new(format!(
            "unknown fault {other:?}: use panic, abort or out-of-memory"
        ))),
    }
}

impl ClientApp for Client {
    fn handle(&self, message: &Message, context: &ClientContext) -> Result<RecordDict, AppError> {
        let MessageBody::Content(content) = &message.body else {
            return Err(AppError::new("instruction without content"));
        };
        let arrays = content
            .arrays(ARRAYS)
            .ok_or_else(|| AppError::new("instruction lacks the arrays record"))?;
        simulate_fault(message, context)?;
        let value = config_f64(&context.node_config, "value", 1.0)? as f32;
        let delay = config_i64(&context.node_config, "delay-ms", 0)?.max(0) as u64;
        let num_examples = match context.node_config.get("num-examples") {
            Some(_) => MetricValue::Float(config_f64(&context.node_config, "num-examples", 1.0)?),
            None => MetricValue::Int(1),
        };
        let deadline = std::time::Instant::now() + Duration::from_millis(delay);
        while std::time::Instant::now() < deadline {
            if context.is_cancelled() {
                return Err(AppError::new("run stopped"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let vector: Vec<f32> = vector_of(arrays).iter().map(|v| v + value).collect();
        let updated = Array::from_f32(vec![vector.len() as u64], &vector)
            .map_err(|e| AppError::new(e.to_string()))?;
        Ok(RecordDict::new()
            .with(
                ARRAYS,
                Record::Arrays(ArrayRecord::new().with(VECTOR, updated)),
            )
            .with(
                "metrics",
                Record::Metrics(MetricRecord::new().with("num-examples", num_examples)),
            ))
    }
}
