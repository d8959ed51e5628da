//! `fedavg-cnn`: the seed's app. The server half (here, without Burn) runs FedAvg over the CNN;
//! the client half (`crate::cnn::client`, with Burn) trains and evaluates on the node's partition.
//!
//! Each run: a query round asks the nodes for their data's shape (so the network fits CIFAR-10 or
//! Fashion-MNIST alike), then `num-server-rounds` rounds of train (a `fraction-train` sample) and
//! evaluate (a `fraction-evaluate` sample), both aggregated weighted by `num-examples`. The final
//! model is stored as safetensors with PyTorch's names, the per-round metrics as JSON. The model
//! and the metrics so far are checkpointed after every round, so a run interrupted by a SuperLink
//! restart resumes from its last completed round.
//!
//! Run config (flwr.toml `[app.config]`): `num-server-rounds` (3), `fraction-train` (1.0),
//! `fraction-evaluate` (0.5), `min-nodes` (2), `local-epochs` (1), `learning-rate` (0.1),
//! `momentum` (0.9), `batch-size` (32), `round-timeout` seconds (3600), `node-wait-timeout`
//! seconds (120), `seed` (42).

use crate::app::{AppError, Grid, Instruction, ServerApp, ServerContext, config_f64, config_i64};
use crate::checkpoint;
use crate::fedavg::{AggregationError, FedAvg, check_weight};
use crate::net::{InputShape, initial_parameters};
use rand::seq::SliceRandom as _;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wire::{
    ArrayRecord, ConfigRecord, ConfigValue, Message, MessageBody, MessageType, MetricRecord,
    MetricValue, NodeId, Record, RecordDict,
};

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

/// How a client's error reason begins when its training diverged (the loss became NaN or
/// infinite).
pub const DIVERGED: &str = "training diverged";

/// The server half.
pub struct Server;

/// Settings read from the run config.
struct Settings {
    rounds: u64,
    fraction_train: f64,
    fraction_evaluate: f64,
    min_nodes: usize,
    round_timeout: Duration,
    node_wait: Duration,
    seed: u64,
    train_config: ConfigRecord,
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
            .with(
                "batch-size",
                ConfigValue::Int(config_i64(config, "batch-size", 32)?.max(1)),
            );
        Ok(Settings {
            rounds: config_i64(config, "num-server-rounds", 3)?.max(0) as u64,
            fraction_train: fraction("fraction-train", 1.0)?,
            fraction_evaluate: fraction("fraction-evaluate", 0.5)?,
            min_nodes: config_i64(config, "min-nodes", 2)?.max(1) as usize,
            round_timeout: seconds("round-timeout", 3600.0)?,
            node_wait: seconds("node-wait-timeout", 120.0)?,
            seed: config_i64(config, "seed", 42)? as u64,
            train_config,
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

/// Weighted means of named metrics.
#[derive(Default)]
struct MetricMeans {
    sums: Vec<(String, f64)>,
    weight: f64,
}

impl MetricMeans {
    fn add(&mut self, metrics: &MetricRecord, names: &[&str], weight: f64) {
        for name in names {
            // A value that would take the weighted sum to infinity is left out like a non-finite
            // one.
            let Some(weighted) = metric(metrics, name).map(|v| v * weight) else {
                continue;
            };
            match self.sums.iter_mut().find(|(n, _)| n == name) {
                Some((_, sum)) if (*sum + weighted).is_finite() => *sum += weighted,
                Some(_) => {}
                None if weighted.is_finite() => self.sums.push((name.to_string(), weighted)),
                None => {}
            }
        }
        self.weight += weight;
    }

    fn means(&self) -> Vec<(String, f64)> {
        if self.weight <= 0.0 {
            return Vec::new();
        }
        self.sums
            .iter()
            .map(|(n, s)| (n.clone(), s / self.weight))
            .collect()
    }
}

fn format_means(means: &[(String, f64)]) -> String {
    let parts: Vec<String> = means
        .iter()
        .map(|(n, v)| format!("'{n}': {v:.4}"))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

/// How many of `available` nodes a fraction samples: at least `min` (when there are that many),
/// at least one.
fn sample_size(available: usize, fraction: f64, min: usize) -> usize {
    let wanted = (available as f64 * fraction).floor() as usize;
    wanted.max(min.min(available)).max(1).min(available)
}

fn sample(nodes: &[NodeId], count: usize, seed: u64) -> Vec<NodeId> {
    let mut shuffled = nodes.to_vec();
    shuffled.shuffle(&mut crate::data::partition::rng(seed));
    shuffled.truncate(count);
    shuffled.sort();
    shuffled
}

fn failure(reply: &Message) -> Option<String> {
    match &reply.body {
        MessageBody::Error(error) => Some(format!(
            "node {}: {:?}: {}",
            reply.metadata.src_node_id, error.code, error.reason
        )),
        MessageBody::Content(_) => None,
    }
}

/// Why a round has no training result. When every node's training diverged (its loss or its
/// weights became NaN or infinite), the learning rate is the likely cause: say so, and give the
/// exact run config to try.
fn no_training_result(
    round: u64,
    failures: usize,
    diverged: usize,
    train_config: &ConfigRecord,
) -> String {
    if failures == 0 || diverged < failures {
        return format!("round {round}: no node returned a training result");
    }
    let rate = match train_config.get("learning-rate") {
        Some(ConfigValue::Float(rate)) => *rate,
        _ => 0.1,
    };
    format!(
        "round {round}: training diverged on every node (loss or weights became NaN or infinite) \
         at learning-rate {rate}; try a smaller one: flwr run --run-config 'learning-rate={}'",
        rate / 10.0
    )
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
                message_type: MessageType::Query,
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
        let started = Instant::now();
        let (mut arrays, mut history, first_round) = match checkpoint::resume_point(context)? {
            Some(resumed) => {
                grid.log(&format!(
                    "Resuming FedAvg after round {} of {} from the run's checkpoint",
                    resumed.completed_rounds, settings.rounds
                ));
                let history: Vec<serde_json::Value> = serde_json::from_str(&resumed.history)
                    .map_err(|e| {
                        AppError::new(format!("the checkpoint's history is damaged: {e}"))
                    })?;
                (resumed.arrays, history, resumed.completed_rounds + 1)
            }
            None => (self.initial_model(grid, &settings)?, Vec::new(), 1),
        };
        // One running sum for every round; each round's mean is written into the memory of the
        // model the round before sent out.
        let mut fedavg = FedAvg::new(&arrays).map_err(|e| AppError::new(e.to_string()))?;
        for round in first_round..=settings.rounds {
            let round_started = Instant::now();
            grid.log("");
            grid.log(&format!("[ROUND {round}/{}]", settings.rounds));
            let nodes = grid.wait_for_nodes(settings.min_nodes, settings.node_wait)?;
            if nodes.len() < settings.min_nodes {
                return Err(AppError::new(format!(
                    "round {round}: only {} of the {} required nodes are online (min-nodes)",
                    nodes.len(),
                    settings.min_nodes
                )));
            }
            let (new_arrays, train_means) =
                self.train_round(grid, &settings, &nodes, round, &arrays, &mut fedavg)?;
            fedavg.recycle(std::mem::replace(&mut arrays, new_arrays));
            let eval_means = self.evaluate_round(grid, &settings, &nodes, round, &arrays)?;
            let mut entry =
                json!({"round": round, "seconds": round_started.elapsed().as_secs_f64()});
            for (name, value) in train_means.iter().chain(&eval_means) {
                entry[name] = json!(value);
            }
            history.push(entry);
            let history_text = serde_json::to_string(&history)
                .map_err(|e| AppError::new(format!("cannot encode the history: {e}")))?;
            grid.save_checkpoint(&checkpoint::encode(round, &arrays, &history_text)?)?;
        }
        grid.log("");
        grid.log(&format!(
            "Strategy execution finished in {:.2}s",
            started.elapsed().as_secs_f64()
        ));
        let model = crate::safetensors::encode(&arrays, &[("format", "pt".into())]);
        grid.save_artifact(MODEL_ARTIFACT, &model)?;
        let metrics = json!({"app": NAME, "run-id": context.run_id.0, "rounds": history});
        grid.save_artifact(METRICS_ARTIFACT, metrics.to_string().as_bytes())?;
        grid.save_artifact(PLOT_ARTIFACT, crate::plot::svg(&history).as_bytes())?;
        grid.save_artifact(PLOT_PNG_ARTIFACT, &crate::plot::png(&history))?;
        grid.log(&format!("Saved final model ({MODEL_ARTIFACT}), {METRICS_ARTIFACT}, {PLOT_ARTIFACT} and {PLOT_PNG_ARTIFACT}: fetch them with `flwr pull {}`", context.run_id));
        Ok(())
    }
}

impl Server {
    /// Waits for the nodes, learns their data's shape, and initialises the network for it.
    fn initial_model(&self, grid: &dyn Grid, settings: &Settings) -> Result<ArrayRecord, AppError> {
        let nodes = grid.wait_for_nodes(settings.min_nodes, settings.node_wait)?;
        if nodes.len() < settings.min_nodes {
            return Err(AppError::new(format!(
                "only {} of the {} required nodes are online (min-nodes)",
                nodes.len(),
                settings.min_nodes
            )));
        }
        let input = self.discover_input(grid, &nodes, settings.round_timeout)?;
        // Checked before anything is allocated for it: the shape is what nodes said.
        input
            .check()
            .map_err(|why| AppError::new(format!("cannot build the network: {why}")))?;
        let arrays = initial_parameters(input, settings.seed).ok_or_else(|| {
            AppError::new(format!("images of {input:?} are too small for the network"))
        })?;
        let parameters: u64 = arrays.iter().map(|(_, a)| a.numel()).sum();
        grid.log(&format!(
            "Starting FedAvg: {} rounds, CNN with {parameters} parameters for {}x{}x{} images in {} classes",
            settings.rounds, input.channels, input.height, input.width, input.classes
        ));
        Ok(arrays)
    }

    fn train_round(
        &self,
        grid: &dyn Grid,
        settings: &Settings,
        nodes: &[NodeId],
        round: u64,
        arrays: &ArrayRecord,
        fedavg: &mut FedAvg,
    ) -> Result<(ArrayRecord, Vec<(String, f64)>), AppError> {
        let count = sample_size(nodes.len(), settings.fraction_train, settings.min_nodes);
        let sampled = sample(nodes, count, settings.seed.wrapping_add(round));
        grid.log(&format!(
            "configure_train: Sampled {} nodes (out of {})",
            sampled.len(),
            nodes.len()
        ));
        let config = settings
            .train_config
            .clone()
            .with("server-round", ConfigValue::Int(round as i64));
        let content = Arc::new(
            RecordDict::new()
                .with(ARRAYS, Record::Arrays(arrays.clone()))
                .with(CONFIG, Record::Config(config)),
        );
        let instructions = sampled
            .iter()
            .map(|&dst| Instruction {
                dst,
                message_type: MessageType::Train,
                group_id: round.to_string(),
                content: content.clone(),
            })
            .collect();
        let mut means = MetricMeans::default();
        let mut failures = Vec::new();
        // Failures that are training gone numerically wrong, rather than a node or the network.
        let mut diverged = 0;
        grid.send_and_fold(instructions, settings.round_timeout, &mut |reply| {
            if let Some(reason) = failure(&reply) {
                if matches!(&reply.body, MessageBody::Error(e) if e.reason.starts_with(DIVERGED)) {
                    diverged += 1;
                }
                failures.push(reason);
                return;
            }
            let MessageBody::Content(content) = &reply.body else {
                return;
            };
            let node = reply.metadata.src_node_id;
            let (Some(update), Some(metrics)) = (content.arrays(ARRAYS), content.metrics(METRICS))
            else {
                failures.push(format!("node {node}: reply lacks arrays or metrics"));
                return;
            };
            let Some(weight) = num_examples(metrics) else {
                failures.push(format!("node {node}: reply lacks num-examples"));
                return;
            };
            match fedavg.add(update, weight) {
                Ok(()) => means.add(metrics, &["train_loss"], weight),
                Err(error) => {
                    if matches!(error, AggregationError::NotFinite(_)) {
                        diverged += 1;
                    }
                    failures.push(format!("node {node}: {error}"));
                }
            }
        })?;
        grid.log(&format!(
            "aggregate_train: Received {} results and {} failures",
            fedavg.accepted(),
            failures.len()
        ));
        for failure in &failures {
            grid.log(&format!("  failure from {failure}"));
        }
        if fedavg.accepted() == 0 {
            return Err(AppError::new(no_training_result(
                round,
                failures.len(),
                diverged,
                &settings.train_config,
            )));
        }
        let means = means.means();
        grid.log(&format!(
            "  └──> Aggregated MetricRecord: {}",
            format_means(&means)
        ));
        let arrays = fedavg
            .take_mean()
            .map_err(|e| AppError::new(e.to_string()))?;
        Ok((arrays, means))
    }

    fn evaluate_round(
        &self,
        grid: &dyn Grid,
        settings: &Settings,
        nodes: &[NodeId],
        round: u64,
        arrays: &ArrayRecord,
    ) -> Result<Vec<(String, f64)>, AppError> {
        if settings.fraction_evaluate == 0.0 {
            return Ok(Vec::new());
        }
        let count = sample_size(nodes.len(), settings.fraction_evaluate, 1);
        let sampled = sample(
            nodes,
            count,
            settings.seed.wrapping_add(round).wrapping_mul(31),
        );
        grid.log(&format!(
            "configure_evaluate: Sampled {} nodes (out of {})",
            sampled.len(),
            nodes.len()
        ));
        let config = ConfigRecord::new()
            .with("server-round", ConfigValue::Int(round as i64))
            .with(
                "batch-size",
                settings
                    .train_config
                    .get("batch-size")
                    .cloned()
                    .unwrap_or(ConfigValue::Int(32)),
            );
        let content = Arc::new(
            RecordDict::new()
                .with(ARRAYS, Record::Arrays(arrays.clone()))
                .with(CONFIG, Record::Config(config)),
        );
        let instructions = sampled
            .iter()
            .map(|&dst| Instruction {
                dst,
                message_type: MessageType::Evaluate,
                group_id: round.to_string(),
                content: content.clone(),
            })
            .collect();
        let mut means = MetricMeans::default();
        let mut received = 0;
        let mut failures = Vec::new();
        grid.send_and_fold(instructions, settings.round_timeout, &mut |reply| {
            if let Some(reason) = failure(&reply) {
                failures.push(reason);
                return;
            }
            let MessageBody::Content(content) = &reply.body else {
                return;
            };
            match content
                .metrics(METRICS)
                .and_then(|m| num_examples(m).map(|w| (m, w)))
            {
                // The same bound as training's: a huge count would make the means meaningless.
                Some((metrics, weight)) if check_weight(weight).is_ok() => {
                    received += 1;
                    means.add(metrics, &["eval_loss", "eval_acc"], weight);
                }
                _ => failures.push(format!(
                    "node {}: evaluation reply lacks metrics or a valid num-examples",
                    reply.metadata.src_node_id
                )),
            }
        })?;
        grid.log(&format!(
            "aggregate_evaluate: Received {received} results and {} failures",
            failures.len()
        ));
        for failure in &failures {
            grid.log(&format!("  failure from {failure}"));
        }
        let means = means.means();
        grid.log(&format!(
            "  └──> Aggregated MetricRecord: {}",
            format_means(&means)
        ));
        Ok(means)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_lost_to_divergence_names_the_learning_rate_to_try() {
        let config = ConfigRecord::new().with("learning-rate", ConfigValue::Float(0.1));
        let diverged = no_training_result(1, 2, 2, &config);
        assert!(
            diverged.contains("diverged") && diverged.contains("--run-config 'learning-rate=0.01'"),
            "{diverged}"
        );
        // One node down for another reason: no guess about the learning rate.
        let mixed = no_training_result(1, 2, 1, &config);
        assert_eq!(mixed, "round 1: no node returned a training result");
        assert_eq!(no_training_result(1, 0, 0, &config), mixed);
    }

    #[test]
    fn evaluation_means_stay_finite_whatever_nodes_report() {
        let mut means = MetricMeans::default();
        let report = |loss: f64| MetricRecord::new().with("eval_loss", MetricValue::Float(loss));
        means.add(&report(0.5), &["eval_loss"], 10.0);
        // Each finite, together infinite; and non-finite outright.
        means.add(&report(1e308), &["eval_loss"], 2.0);
        means.add(&report(1e308), &["eval_loss"], 2.0);
        means.add(&report(f64::NAN), &["eval_loss"], 1.0);
        let mean = means.means();
        assert!(mean.iter().all(|(_, v)| v.is_finite()), "{mean:?}");
    }

    #[test]
    fn sample_sizes_follow_fraction_and_minimum() {
        assert_eq!(sample_size(10, 0.5, 2), 5);
        assert_eq!(sample_size(10, 0.1, 2), 2);
        assert_eq!(sample_size(2, 0.5, 1), 1);
        assert_eq!(sample_size(1, 0.0, 3), 1);
    }

    #[test]
    fn metric_means_weight_by_examples() {
        let mut means = MetricMeans::default();
        means.add(
            &MetricRecord::new().with("eval_acc", MetricValue::Float(1.0)),
            &["eval_acc"],
            1.0,
        );
        means.add(
            &MetricRecord::new().with("eval_acc", MetricValue::Float(0.0)),
            &["eval_acc"],
            3.0,
        );
        assert_eq!(means.means(), [("eval_acc".to_string(), 0.25)]);
    }
}
