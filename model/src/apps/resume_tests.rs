//! Resuming the built-in server apps from a checkpoint: against a scripted federation whose nodes
//! answer deterministically, a run resumed after any completed round ends on the same final model
//! as an uninterrupted one.

use flwr_sdk::app::{Grid, GridError, Instruction, ServerApp, ServerContext};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use wire::{
    Array, ArrayRecord, ConfigRecord, ConfigValue, Message, MessageBody, MessageId, MessageType,
    Metadata, MetricRecord, MetricValue, NodeId, Record, RecordDict, RunId,
};

/// Two nodes that answer every instruction at once, the same way every time.
#[derive(Default)]
struct ScriptedGrid {
    artifacts: Mutex<HashMap<String, Vec<u8>>>,
    checkpoints: Mutex<Vec<Vec<u8>>>,
    log: Mutex<Vec<String>>,
}

const NODES: [NodeId; 2] = [NodeId(11), NodeId(12)];

/// A node's answer: query -> a 1x28x28 image shape in 10 classes; train -> every parameter moved
/// by a node-specific amount; evaluate -> metrics.
fn answer(node: NodeId, message_type: MessageType, content: &RecordDict) -> RecordDict {
    let metrics = |pairs: &[(&str, f64)]| {
        let mut record = MetricRecord::new();
        for (name, value) in pairs {
            record = record.with(*name, MetricValue::Float(*value));
        }
        record
    };
    let examples = (node.0 * 10) as f64;
    match message_type.as_str() {
        "query" => RecordDict::new().with(
            "metrics",
            Record::Metrics(metrics(&[
                ("channels", 1.0),
                ("height", 28.0),
                ("width", 28.0),
                ("classes", 10.0),
            ])),
        ),
        "train" => {
            let arrays: ArrayRecord = content
                .arrays("arrays")
                .unwrap()
                .iter()
                .map(|(name, array)| {
                    let moved: Vec<f32> = array
                        .to_f32()
                        .unwrap()
                        .iter()
                        .map(|v| v * 0.9 + node.0 as f32 * 0.001)
                        .collect();
                    (
                        name.to_string(),
                        Array::from_f32(array.shape.clone(), &moved).unwrap(),
                    )
                })
                .collect();
            RecordDict::new()
                .with("arrays", Record::Arrays(arrays))
                .with(
                    "metrics",
                    Record::Metrics(metrics(&[
                        ("num-examples", examples),
                        ("train_loss", 1.0 / examples),
                    ])),
                )
        }
        _ => RecordDict::new().with(
            "metrics",
            Record::Metrics(metrics(&[
                ("num-examples", examples),
                ("eval_loss", 0.5),
                ("eval_acc", 0.75),
            ])),
        ),
    }
}

impl Grid for ScriptedGrid {
    fn run_id(&self) -> RunId {
        RunId(1)
    }

    fn node_ids(&self) -> Result<Vec<NodeId>, GridError> {
        Ok(NODES.to_vec())
    }

    fn wait_for_nodes(&self, _count: usize, _timeout: Duration) -> Result<Vec<NodeId>, GridError> {
        Ok(NODES.to_vec())
    }

    fn send_and_fold(
        &self,
        instructions: Vec<Instruction>,
        timeout: Duration,
        on_reply: &mut dyn FnMut(Message),
    ) -> Result<(), GridError> {
        for instruction in instructions {
            let sent = Message {
                metadata: Metadata {
                    run_id: RunId(1),
                    message_id: MessageId::random(),
                    src_node_id: NodeId::SERVER,
                    dst_node_id: instruction.dst,
                    reply_to: None,
                    group_id: instruction.group_id,
                    ttl_ms: timeout.as_millis() as u64,
                    message_type: instruction.message_type.clone(),
                    created_at_ms: 0,
                },
                body: MessageBody::Content(RecordDict::new()),
            };
            let content = answer(
                instruction.dst,
                instruction.message_type,
                &instruction.content,
            );
            on_reply(sent.reply(MessageBody::Content(content), 0));
        }
        Ok(())
    }

    fn log(&self, line: &str) {
        self.log.lock().unwrap().push(line.to_string());
    }

    fn save_artifact(&self, name: &str, bytes: &[u8]) -> Result<(), GridError> {
        self.artifacts
            .lock()
            .unwrap()
            .insert(name.to_string(), bytes.to_vec());
        Ok(())
    }

    fn save_checkpoint(&self, state: &[u8]) -> Result<(), GridError> {
        self.checkpoints.lock().unwrap().push(state.to_vec());
        Ok(())
    }
}

fn context(config: ConfigRecord, checkpoint: Option<Vec<u8>>) -> ServerContext {
    ServerContext {
        run_id: RunId(1),
        run_config: config,
        checkpoint,
    }
}

/// Runs `app` once uninterrupted, then once resumed from each round's checkpoint; every resumed
/// run must save the same artifacts and skip the rounds already done.
fn resumes_to_the_same_result(app: &dyn ServerApp, config: ConfigRecord, artifacts: &[&str]) {
    let whole = ScriptedGrid::default();
    app.run(&whole, &context(config.clone(), None)).unwrap();
    let checkpoints = whole.checkpoints.lock().unwrap().clone();
    assert_eq!(checkpoints.len(), 3, "one checkpoint per round");
    for (done, checkpoint) in checkpoints.into_iter().enumerate() {
        let resumed = ScriptedGrid::default();
        app.run(&resumed, &context(config.clone(), Some(checkpoint)))
            .unwrap();
        let rounds_run = resumed
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("[ROUND"))
            .count();
        assert_eq!(rounds_run, 3 - (done + 1), "after round {}", done + 1);
        for name in artifacts {
            let expected = whole.artifacts.lock().unwrap()[*name].clone();
            let got = resumed.artifacts.lock().unwrap()[*name].clone();
            assert_eq!(
                got,
                expected,
                "{name} after resuming from round {}",
                done + 1
            );
        }
    }
}

#[test]
fn vector_add_resumed_from_any_round_ends_on_the_uninterrupted_result() {
    resumes_to_the_same_result(
        &super::vector_add::Server,
        ConfigRecord::new().with("num-server-rounds", ConfigValue::Int(3)),
        &["final.arrays"],
    );
}

#[test]
fn fedavg_cnn_resumed_from_any_round_ends_on_the_uninterrupted_model() {
    resumes_to_the_same_result(
        &super::fedavg_cnn::Server,
        ConfigRecord::new()
            .with("num-server-rounds", ConfigValue::Int(3))
            .with("fraction-evaluate", ConfigValue::Float(1.0)),
        &[super::fedavg_cnn::MODEL_ARTIFACT],
    );
}

#[test]
fn fedavg_cnn_resumed_keeps_the_metrics_of_the_rounds_before_the_restart() {
    let config = ConfigRecord::new().with("num-server-rounds", ConfigValue::Int(3));
    let whole = ScriptedGrid::default();
    super::fedavg_cnn::Server
        .run(&whole, &context(config.clone(), None))
        .unwrap();
    let after_round_two = whole.checkpoints.lock().unwrap()[1].clone();
    let resumed = ScriptedGrid::default();
    super::fedavg_cnn::Server
        .run(&resumed, &context(config, Some(after_round_two)))
        .unwrap();
    let metrics: serde_json::Value = serde_json::from_slice(
        &resumed.artifacts.lock().unwrap()[super::fedavg_cnn::METRICS_ARTIFACT],
    )
    .unwrap();
    let rounds = metrics["rounds"].as_array().unwrap();
    let numbers: Vec<u64> = rounds
        .iter()
        .map(|r| r["round"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2, 3], "{metrics}");
    for round in rounds {
        // The scripted nodes (110 and 120 examples) report a train loss of 1/examples:
        // weighted, 2/230 whatever the round.
        let loss = round["train_loss"].as_f64().unwrap();
        assert!((loss - 2.0 / 230.0).abs() < 1e-9, "{round}");
        assert_eq!(round["eval_acc"].as_f64(), Some(0.75), "{round}");
    }
}

#[test]
fn a_damaged_checkpoint_fails_the_run_instead_of_starting_over() {
    let grid = ScriptedGrid::default();
    let error = super::vector_add::Server
        .run(
            &grid,
            &context(ConfigRecord::new(), Some(b"garbage".to_vec())),
        )
        .unwrap_err();
    assert!(error.to_string().contains("checkpoint"), "{error}");
    assert!(grid.artifacts.lock().unwrap().is_empty());
}
