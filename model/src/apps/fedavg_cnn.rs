//! `fedavg-cnn`: the seed's app. The server half (here, without Burn) is Flower's FedAvg
//! ([`flwr_sdk::strategy::FedAvg`]) in Flower's round loop ([`flwr_sdk::strategy::start::start`]); the
//! client half (`crate::cnn::client`, with Burn) trains and evaluates on the node's partition.
//!
//! Each run: a query round asks the nodes for their data's shape (so the network fits CIFAR-10 or
//! Fashion-MNIST alike), then `num-server-rounds` rounds of train (a `fraction-train` sample) and
//! evaluate (a `fraction-evaluate` sample), both aggregated weighted by `num-examples`. The final
//! model is stored as safetensors with PyTorch's names, the per-round metrics as JSON and as a
//! plot. The round loop checkpoints the model and the metrics so far after every round, so a run
//! interrupted by a SuperLink restart resumes from its last completed round.
//!
//! Run config (flwr.toml `[app.config]`): `num-server-rounds` (3), `fraction-train` (1.0),
//! `fraction-evaluate` (0.5), `min-nodes` (2), `local-epochs` (1), `learning-rate` (0.1),
//! `momentum` (0.9), `batch-size` (32), `round-timeout` seconds (3600), `node-wait-timeout`
//! seconds (120), `seed` (42: the initial model and each round's sample).

use crate::net::{InputShape, initial_parameters};
use flwr_sdk::app::{
    AppError, Grid, Instruction, ServerApp, ServerContext, config_f64, config_i64,
};
use flwr_sdk::strategy::FedAvg;
use flwr_sdk::strategy::start::{Rounds, failure, start};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use wire::{
    ArrayRecord, ConfigRecord, ConfigValue, MessageBody, MessageType, MetricRecord, MetricValue,
    NodeId, RecordDict,
};

pub use flwr_sdk::strategy::start::DIVERGED;

/// The app's name in flwr.toml.
pub const NAME: &str = "fedavg-cnn";

/// Record holding the model's arrays.
pub const ARRAYS: &str = "arrays";
/// Record holding the instruction's settings.
pub const CONFIG: &str = "config";
/// Record holding the reply's metrics.
pub const METRICS: &str = "metrics";

/// Artifact name of the final model.
pub const MODEL_ARTIFACT: &str = "model.safetensors";
/// Artifact name of the per-round metrics.
pub const METRICS_ARTIFACT: &str = "metrics.json";
/// Artifact name of the metrics plot.
pub const PLOT_ARTIFACT: &str = "metrics.svg";
/// Artifact name of the same plot as an image.
pub const PLOT_PNG_ARTIFACT: &str = "metrics.png";

/// The server half.
pub struct Server;

/// Settings read from the run config.
struct Settings {
    rounds: Rounds,
    seed: u64,
}

impl Settings {
    fn read(config: &ConfigRecord) -> Result<Settings, AppError> {
        let seconds = |key: &str, default: f64| -> Result<Duration, AppError> {
            Duration::try_from_secs_f64(config_f64(config, key, default)?).map_err(|_| {
                AppError::new(format!("{key} must be a non-negative number of seconds"))
            })
        };
        let fraction = |key: &str, default: f64| -> Result<f64, AppError> {
            let value = config_f64(config, key, default)?;
            if (0.0..=1.0).contains(&value) {
                Ok(value)
            } else {
                Err(AppError::new(format!(
                    "{key} must be between 0 and 1, got {value}"
                )))
            }
        };
        let batch_size = ConfigValue::Int(config_i64(config, "batch-size", 32)?.max(1));
        let train_config = ConfigRecord::new()
            .with(
                "local-epochs",
                ConfigValue::Int(config_i64(config, "local-epochs", 1)?.max(1)),
            )
            .with(
                "learning-rate",
                ConfigValue::Float(config_f64(config, "learning-rate", 0.1)?),
            )
            .with(
                "momentum",
                ConfigValue::Float(config_f64(config, "momentum", 0.9)?),
            )
            .with("batch-size", batch_size.clone());
        let min_nodes = config_i64(config, "min-nodes", 2)?.max(1) as usize;
        let seed = config_i64(config, "seed", 42)? as u64;
        Ok(Settings {
            rounds: Rounds {
                num_rounds: config_i64(config, "num-server-rounds", 3)?.max(0) as u64,
                fraction_train: fraction("fraction-train", 1.0)?,
                fraction_evaluate: fraction("fraction-evaluate", 0.5)?,
                min_train_nodes: min_nodes,
                // At least one node evaluates whatever the fraction, as the seed's app does.
                min_evaluate_nodes: 1,
                min_available_nodes: min_nodes,
                round_timeout: seconds("round-timeout", 3600.0)?,
                node_wait: seconds("node-wait-timeout", 120.0)?,
                train_config,
                evaluate_config: ConfigRecord::new().with("batch-size", batch_size),
                seed: Some(seed),
            },
            seed,
        })
    }
}

/// The example count a reply reports.
pub fn num_examples(metrics: &MetricRecord) -> Option<f64> {
    match metrics.get("num-examples")? {
        MetricValue::Int(n) => Some(*n as f64),
        MetricValue::Float(n) => Some(*n),
        _ => None,
    }
}

fn metric(metrics: &MetricRecord, name: &str) -> Option<f64> {
    match metrics.get(name)? {
        MetricValue::Float(v) => Some(*v),
        MetricValue::Int(v) => Some(*v as f64),
        _ => None,
    }
}

impl Server {
    /// Asks the nodes what their data looks like; they must agree.
    fn discover_input(
        &self,
        grid: &dyn Grid,
        nodes: &[NodeId],
        timeout: Duration,
    ) -> Result<InputShape, AppError> {
        let content = Arc::new(RecordDict::new());
        let instructions = nodes
            .iter()
            .map(|&dst| Instruction {
                dst,
                message_type: MessageType::QUERY,
                group_id: "0".into(),
                content: content.clone(),
            })
            .collect();
        let mut shapes = Vec::new();
        let mut failures = Vec::new();
        grid.send_and_fold(instructions, timeout, &mut |reply| {
            if let Some(reason) = failure(&reply) {
                failures.push(reason);
                return;
            }
            let MessageBody::Content(content) = &reply.body else {
                return;
            };
            let shape = content.metrics(METRICS).and_then(|m| {
                // Whole, positive, and small enough to convert exactly; ranges are checked below.
                let get = |name| {
                    metric(m, name)
                        .filter(|v| v.fract() == 0.0 && (1.0..=1e9).contains(v))
                        .map(|v| v as usize)
                };
                Some(InputShape {
                    channels: get("channels")?,
                    height: get("height")?,
                    width: get("width")?,
                    classes: get("classes")?,
                })
            });
            match shape {
                Some(shape) => shapes.push((reply.metadata.src_node_id, shape)),
                None => failures.push(format!(
                    "node {}: no data shape in its answer",
                    reply.metadata.src_node_id
                )),
            }
        })?;
        for failure in &failures {
            grid.log(&format!("  query failure from {failure}"));
        }
        let Some(&(_, first)) = shapes.first() else {
            return Err(AppError::new(
                "no node described its data (see the failures above)",
            ));
        };
        if let Some((node, other)) = shapes.iter().find(|(_, s)| *s != first) {
            return Err(AppError::new(format!(
                "nodes disagree on the data: {first:?} versus {other:?} at node {node}"
            )));
        }
        Ok(first)
    }
}

impl ServerApp for Server {
    fn run(&self, grid: &dyn Grid, context: &ServerContext) -> Result<(), AppError> {
        let settings = Settings::read(&context.run_config)?;
        // A resumed run takes its model from the checkpoint: no query round.
        let initial = match context.checkpoint {
            Some(_) => ArrayRecord::new(),
            None => self.initial_model(grid, &settings)?,
        };
        let outcome = start(
            grid,
            context,
            &mut FedAvg::default(),
            initial,
            &settings.rounds,
        )?;
        let model = flwr_sdk::safetensors::encode(&outcome.arrays, &[("format", "pt".into())]);
        grid.save_artifact(MODEL_ARTIFACT, &model)?;
        let history: Vec<serde_json::Value> = outcome
            .rounds
            .iter()
            .map(|round| round.to_flat_json())
            .collect();
        grid.save_artifact(PLOT_ARTIFACT, crate::plot::svg(&history).as_bytes())?;
        grid.save_artifact(PLOT_PNG_ARTIFACT, &crate::plot::png(&history))?;
        let metrics = json!({"app": NAME, "run-id": context.run_id.0, "rounds": history});
        grid.save_artifact(METRICS_ARTIFACT, metrics.to_string().as_bytes())?;
        grid.log(&format!("Saved final model ({MODEL_ARTIFACT}), {METRICS_ARTIFACT}, {PLOT_ARTIFACT} and {PLOT_PNG_ARTIFACT}: fetch them with `flwr pull {}`", context.run_id));
        Ok(())
    }
}

impl Server {
    /// Waits for the nodes, learns their data's shape, and initialises the network for it.
    fn initial_model(&self, grid: &dyn Grid, settings: &Settings) -> Result<ArrayRecord, AppError> {
        let nodes = grid.wait_for_nodes(
            settings.rounds.min_available_nodes,
            settings.rounds.node_wait,
        )?;
        if nodes.len() < settings.rounds.min_available_nodes {
            return Err(AppError::new(format!(
                "only {} of the {} required nodes are online (min-nodes)",
                nodes.len(),
                settings.rounds.min_available_nodes
            )));
        }
        let input = self.discover_input(grid, &nodes, settings.rounds.round_timeout)?;
        // Checked before anything is allocated for it: the shape is what nodes said.
        input
            .check()
            .map_err(|why| AppError::new(format!("cannot build the network: {why}")))?;
        let arrays = initial_parameters(input, settings.seed).ok_or_else(|| {
            AppError::new(format!("images of {input:?} are too small for the network"))
        })?;
        let parameters: u64 = arrays.iter().map(|(_, a)| a.numel()).sum();
        grid.log(&format!(
            "CNN with {parameters} parameters for {}x{}x{} images in {} classes",
            input.channels, input.height, input.width, input.classes
        ));
        Ok(arrays)
    }
}
