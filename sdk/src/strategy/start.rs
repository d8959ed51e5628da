//! The round loop around a strategy, as Flower's `Strategy.start` runs it: each round samples
//! nodes, sends them the global arrays to train on, aggregates their replies with the strategy,
//! then has a sample evaluate the result and aggregates their metrics. Progress goes to the
//! run's log in Flower's words; the arrays and every round's metrics are checkpointed after each
//! round, so a run interrupted by a SuperLink restart resumes after its last completed round.
//!
//! Train replies reach the strategy one at a time, as they arrive ([`Strategy::train_fold`]); a
//! reply it refuses is logged and left out, and the round goes on with the others. Where Flower
//! would go on from a round without a single usable training result, keeping the global arrays,
//! this loop fails the run and says why (with the learning rate to try when every node's training
//! diverged): rounds that cannot train would only end in a "completed" run with an untrained model.
//!
//! Instructions carry the records Flower's apps use: `arrays` (an ArrayRecord) and `config`
//! (a ConfigRecord with `server-round` and the strategy's train config); replies carry `arrays`
//! and `metrics` (a MetricRecord with `num-examples`) for training, `metrics` for evaluation.

use super::{Strategy, TrainReply, common_metrics, usable_weight};
use crate::app::{AppError, Grid, GridError, Instruction, ServerContext};
use crate::checkpoint;
use rand::seq::SliceRandom as _;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wire::{
    ArrayRecord, ConfigRecord, ConfigValue, Message, MessageBody, MessageType, MetricRecord,
    MetricValue, NodeId, Record, RecordDict,
};

/// How a client app's error reason begins when its training diverged (the loss or the weights
/// became NaN or infinite). A round in which every node's training diverged fails the run.
pub const DIVERGED: &str = "training diverged";

/// How the rounds run: Flower's `Strategy.start` arguments and its sampling fields, with its
/// defaults.
#[derive(Debug, Clone)]
pub struct Rounds {
    /// Rounds to run (`num_rounds`, 3).
    pub num_rounds: u64,
    /// Share of the online nodes that train each round (`fraction_train`, 1.0).
    pub fraction_train: f64,
    /// Share that evaluates; 0 skips evaluation (`fraction_evaluate`, 1.0).
    pub fraction_evaluate: f64,
    /// Fewest nodes that train (`min_train_nodes`, 2).
    pub min_train_nodes: usize,
    /// Fewest nodes that evaluate (`min_evaluate_nodes`, 2).
    pub min_evaluate_nodes: usize,
    /// Nodes that must be online before a round starts (`min_available_nodes`, 2).
    pub min_available_nodes: usize,
    /// How long to wait for the replies of one step (`timeout`, 3600 s).
    pub round_timeout: Duration,
    /// How long to wait for `min_available_nodes` before giving up.
    pub node_wait: Duration,
    /// Added to every train instruction's config.
    pub train_config: ConfigRecord,
    /// Added to every evaluate instruction's config.
    pub evaluate_config: ConfigRecord,
    /// Makes the sampling reproducible: each round's sample then depends only on the seed, the
    /// round and the online nodes, so a resumed run samples as the uninterrupted one would have.
    /// `None` (the default) samples at random, as Flower does.
    pub seed: Option<u64>,
}

impl Default for Rounds {
    fn default() -> Self {
        Rounds {
            num_rounds: 3,
            fraction_train: 1.0,
            fraction_evaluate: 1.0,
            min_train_nodes: 2,
            min_evaluate_nodes: 2,
            min_available_nodes: 2,
            round_timeout: Duration::from_secs(3600),
            node_wait: Duration::from_secs(120),
            train_config: ConfigRecord::new(),
            evaluate_config: ConfigRecord::new(),
            seed: None,
        }
    }
}

/// One completed round: how long it took and its aggregated metrics (empty when the step had no
/// result or did not run).
#[derive(Debug, Clone, PartialEq)]
pub struct RoundMetrics {
    /// The round, from 1.
    pub round: u64,
    /// Its wall time, in seconds.
    pub seconds: f64,
    /// The aggregated train metrics.
    pub train: MetricRecord,
    /// The aggregated evaluation metrics.
    pub evaluate: MetricRecord,
}

impl RoundMetrics {
    /// The round as one flat JSON object, `{"round": 1, "seconds": 2.5, "train_loss": ...}`: the
    /// train metrics, then the evaluation metrics (which win where a name is in both). Floats that
    /// are not finite are `null`.
    pub fn to_flat_json(&self) -> Value {
        let mut entry = Map::new();
        entry.insert("round".into(), self.round.into());
        entry.insert("seconds".into(), json!(self.seconds));
        entry.extend(metrics_to_json(&self.train));
        entry.extend(metrics_to_json(&self.evaluate));
        Value::Object(entry)
    }

    /// The form kept in checkpoints, which [`RoundMetrics::from_json`] reads back.
    fn to_json(&self) -> Value {
        json!({
            "round": self.round,
            "seconds": self.seconds,
            "train": metrics_to_json(&self.train),
            "evaluate": metrics_to_json(&self.evaluate),
        })
    }

    /// Reads [`RoundMetrics::to_json`]'s form, or the flat form of the checkpoints `fedavg-cnn`
    /// wrote before it ran on this loop (its metrics then all count as train metrics, which
    /// [`RoundMetrics::to_flat_json`] writes back the same).
    fn from_json(value: &Value) -> Option<Self> {
        let entry = value.as_object()?;
        let round = entry.get("round")?.as_u64()?;
        let seconds = entry.get("seconds").and_then(Value::as_f64).unwrap_or(0.0);
        let (train, evaluate) = match (entry.get("train"), entry.get("evaluate")) {
            (Some(train), Some(evaluate)) => (
                metrics_from_json(train.as_object()?),
                metrics_from_json(evaluate.as_object()?),
            ),
            _ => {
                let mut flat = entry.clone();
                flat.remove("round");
                flat.remove("seconds");
                (metrics_from_json(&flat), MetricRecord::new())
            }
        };
        Some(RoundMetrics {
            round,
            seconds,
            train,
            evaluate,
        })
    }
}

fn metrics_to_json(metrics: &MetricRecord) -> Map<String, Value> {
    metrics
        .iter()
        .map(|(name, value)| {
            let value = match value {
                MetricValue::Int(v) => json!(v),
                MetricValue::Float(v) => json!(v),
                MetricValue::IntList(v) => json!(v),
                MetricValue::FloatList(v) => json!(v),
                MetricValue::UInt(v) => json!(v),
                MetricValue::UIntList(v) => json!(v),
            };
            (name.to_string(), value)
        })
        .collect()
}

/// The inverse of [`metrics_to_json`]; a non-finite float, written as `null`, comes back as NaN.
fn metrics_from_json(map: &Map<String, Value>) -> MetricRecord {
    let mut metrics = MetricRecord::new();
    for (name, value) in map {
        let value = match value {
            Value::Number(n) => match n.as_i64() {
                Some(v) if !n.is_f64() => MetricValue::Int(v),
                _ => MetricValue::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::Array(items) if items.iter().all(|v| v.is_i64()) && !items.is_empty() => {
                MetricValue::IntList(items.iter().filter_map(Value::as_i64).collect())
            }
            Value::Array(items) => MetricValue::FloatList(
                items
                    .iter()
                    .map(|v| v.as_f64().unwrap_or(f64::NAN))
                    .collect(),
            ),
            Value::Null => MetricValue::Float(f64::NAN),
            _ => continue,
        };
        metrics.insert(name.clone(), value);
    }
    metrics
}

/// The rounds of a checkpoint's history; empty for the checkpoints of this loop's first version,
/// which kept none.
fn history_from_checkpoint(text: &str) -> Result<Vec<RoundMetrics>, AppError> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let damaged = || AppError::new("the checkpoint's round history is damaged");
    let entries: Vec<Value> = serde_json::from_str(text).map_err(|_| damaged())?;
    entries
        .iter()
        .map(|entry| RoundMetrics::from_json(entry).ok_or_else(damaged))
        .collect()
}

/// What a run of rounds produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The final global arrays.
    pub arrays: ArrayRecord,
    /// Every round's metrics, those of rounds completed before a resume included.
    pub rounds: Vec<RoundMetrics>,
}

impl Outcome {
    /// Every round as [`RoundMetrics::to_flat_json`], in order.
    pub fn metrics_json(&self) -> Value {
        self.rounds.iter().map(RoundMetrics::to_flat_json).collect()
    }

    /// The last round that was evaluated, with its metrics.
    pub fn last_evaluation(&self) -> Option<(u64, &MetricRecord)> {
        self.rounds
            .iter()
            .rev()
            .find(|round| !round.evaluate.is_empty())
            .map(|round| (round.round, &round.evaluate))
    }
}

/// `fraction` of `nodes`, at least `min`, at most all of them; when seeded, the same nodes for the
/// same seed and online nodes, asked in node order.
fn sample(nodes: &[NodeId], fraction: f64, min: usize, seed: Option<u64>) -> Vec<NodeId> {
    let wanted = ((nodes.len() as f64 * fraction) as usize)
        .max(min)
        .min(nodes.len());
    let mut sampled = nodes.to_vec();
    match seed {
        Some(seed) => {
            sampled.sort();
            sampled.shuffle(&mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed));
            sampled.truncate(wanted);
            sampled.sort();
        }
        None => {
            sampled.shuffle(&mut rand::rng());
            sampled.truncate(wanted);
        }
    }
    sampled
}

fn describe(metrics: &MetricRecord) -> String {
    let entries: Vec<String> = metrics
        .iter()
        .map(|(name, value)| match value {
            MetricValue::Int(v) => format!("'{name}': {v}"),
            MetricValue::Float(v) => format!("'{name}': {v:.4e}"),
            other => format!("'{name}': {other:?}"),
        })
        .collect();
    format!("{{{}}}", entries.join(", "))
}

fn instructions(
    nodes: &[NodeId],
    message_type: MessageType,
    round: u64,
    arrays: &ArrayRecord,
    config: ConfigRecord,
) -> Vec<Instruction> {
    let content = Arc::new(
        RecordDict::new()
            .with("arrays", Record::Arrays(arrays.clone()))
            .with("config", Record::Config(config)),
    );
    nodes
        .iter()
        .map(|&dst| Instruction {
            dst,
            message_type: message_type.clone(),
            group_id: round.to_string(),
            content: content.clone(),
        })
        .collect()
}

/// The failure an error reply reports (`node N: Code: reason`), if it is one.
pub fn failure(reply: &Message) -> Option<String> {
    match &reply.body {
        MessageBody::Error(error) => Some(format!(
            "node {}: {:?}: {}",
            reply.metadata.src_node_id, error.code, error.reason
        )),
        MessageBody::Content(_) => None,
    }
}

fn log_step(grid: &dyn Grid, step: &str, results: usize, failures: &[String]) {
    grid.log(&format!(
        "aggregate_{step}: received {results} results and {} failures",
        failures.len()
    ));
    for failure in failures {
        grid.log(&format!("  failure from {failure}"));
    }
}

/// Why the run stops when every node's training diverged, with the learning rate to try when the
/// train config has one.
fn all_diverged(round: u64, train_config: &ConfigRecord) -> String {
    let what = format!(
        "round {round}: training diverged on every node (loss or weights became NaN or infinite)"
    );
    match train_config.get("learning-rate") {
        Some(ConfigValue::Float(rate)) => format!(
            "{what} at learning-rate {rate}; try a smaller one: flwr run --run-config \
             'learning-rate={}'",
            rate / 10.0
        ),
        _ => format!("{what}; try a smaller learning rate"),
    }
}

/// One train step: sends `arrays` to `nodes`, folds the replies into the strategy as they come;
/// the next global arrays and the metrics (`None` when no node was sampled).
fn train(
    grid: &dyn Grid,
    strategy: &mut dyn Strategy,
    round: u64,
    arrays: &ArrayRecord,
    nodes: &[NodeId],
    config: ConfigRecord,
    timeout: Duration,
) -> Result<Option<(ArrayRecord, MetricRecord)>, AppError> {
    if nodes.is_empty() {
        return Ok(None);
    }
    let in_round = |e: super::StrategyError| AppError::new(format!("round {round}: {e}"));
    let instructions = instructions(nodes, MessageType::TRAIN, round, arrays, config.clone());
    let mut fold = strategy.train_fold(round, arrays).map_err(in_round)?;
    let mut failures = Vec::new();
    // Failures that are training gone numerically wrong, rather than a node or the network.
    let mut diverged = 0;
    grid.send_and_fold(instructions, timeout, &mut |reply| {
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
        let (Some(arrays), Some(metrics)) = (content.arrays("arrays"), content.metrics("metrics"))
        else {
            failures.push(format!(
                "node {node}: the reply lacks the arrays or the metrics record"
            ));
            return;
        };
        if let Err(error) = fold.add(TrainReply { arrays, metrics }) {
            if error.is_not_finite() {
                diverged += 1;
            }
            failures.push(format!("node {node}: {error}"));
        }
    })?;
    log_step(grid, "train", fold.accepted(), &failures);
    if fold.accepted() == 0 {
        if !failures.is_empty() && diverged == failures.len() {
            return Err(AppError::new(all_diverged(round, &config)));
        }
        return Err(AppError::new(format!(
            "round {round}: no node returned a usable training result (see the failures above)"
        )));
    }
    let (next, metrics) = fold.finish().map_err(in_round)?;
    grid.log(&format!(
        "  └──> Aggregated MetricRecord: {}",
        describe(&metrics)
    ));
    Ok(Some((next, metrics)))
}

/// One evaluation step: the aggregated metrics of the replies that carry a usable weight and
/// the same metrics as the others (empty when there are none).
fn evaluate(
    grid: &dyn Grid,
    strategy: &dyn Strategy,
    round: u64,
    arrays: &ArrayRecord,
    nodes: &[NodeId],
    config: ConfigRecord,
    timeout: Duration,
) -> Result<MetricRecord, AppError> {
    let instructions = instructions(nodes, MessageType::EVALUATE, round, arrays, config);
    let key = strategy.weighted_by_key();
    let mut evaluated: Vec<MetricRecord> = Vec::new();
    let mut failures = Vec::new();
    grid.send_and_fold(instructions, timeout, &mut |reply| {
        if let Some(reason) = failure(&reply) {
            failures.push(reason);
            return;
        }
        let MessageBody::Content(content) = &reply.body else {
            return;
        };
        let node = reply.metadata.src_node_id;
        let Some(metrics) = content.metrics("metrics") else {
            failures.push(format!("node {node}: the reply lacks the metrics record"));
            return;
        };
        // The same bound on the weight as training's: one huge count would make the means
        // meaningless.
        match usable_weight(metrics, key) {
            Ok(_) => evaluated.push(metrics.clone()),
            Err(error) => failures.push(format!("node {node}: {error}")),
        }
    })?;
    log_step(grid, "evaluate", evaluated.len(), &failures);
    if evaluated.is_empty() {
        return Ok(MetricRecord::new());
    }
    let evaluated: Vec<&MetricRecord> = evaluated.iter().collect();
    let evaluated = common_metrics(&evaluated);
    let replies: Vec<&MetricRecord> = evaluated.iter().collect();
    let metrics = strategy
        .aggregate_evaluate(&replies)
        .map_err(|e| AppError::new(format!("round {round}: {e}")))?;
    grid.log(&format!(
        "  └──> Aggregated MetricRecord: {}",
        describe(&metrics)
    ));
    Ok(metrics)
}

fn merged(round: u64, extra: [&ConfigRecord; 2]) -> ConfigRecord {
    let mut config = ConfigRecord::new().with("server-round", ConfigValue::Int(round as i64));
    for record in extra {
        for (name, value) in record.iter() {
            config = config.with(name, value.clone());
        }
    }
    config
}

/// Saves the state after `round`; a checkpoint the SuperLink cannot keep (a model over its
/// limit) costs only the ability to resume from this round, while a stopped run stops.
fn save_checkpoint(
    grid: &dyn Grid,
    round: u64,
    arrays: &ArrayRecord,
    history: &[RoundMetrics],
) -> Result<(), AppError> {
    let history: Value = history.iter().map(RoundMetrics::to_json).collect();
    match checkpoint::encode(round, arrays, &history.to_string()) {
        Ok(state) => match grid.save_checkpoint(&state) {
            Ok(()) => {}
            Err(GridError::Stopped) => return Err(GridError::Stopped.into()),
            Err(error) => grid.log(&format!(
                "  checkpoint not saved ({error}): a restart would begin this run again"
            )),
        },
        Err(error) => grid.log(&format!("  checkpoint not saved ({error})")),
    }
    Ok(())
}

/// Runs `rounds` of `strategy` from `initial` (or from the run's checkpoint when resumed, when
/// `initial` is not used); returns the final arrays and the metrics of every round.
pub fn start(
    grid: &dyn Grid,
    context: &ServerContext,
    strategy: &mut dyn Strategy,
    initial: ArrayRecord,
    rounds: &Rounds,
) -> Result<Outcome, AppError> {
    let started = Instant::now();
    let (mut arrays, mut history, first_round) = match checkpoint::resume_point(context)? {
        Some(resumed) => {
            grid.log(&format!(
                "Resuming after round {} of {} from the run's checkpoint",
                resumed.completed_rounds, rounds.num_rounds
            ));
            let mut history = history_from_checkpoint(&resumed.history)?;
            history.retain(|entry| entry.round <= resumed.completed_rounds);
            (resumed.arrays, history, resumed.completed_rounds + 1)
        }
        None => (initial, Vec::new(), 1),
    };
    grid.log(&format!(
        "Starting {} strategy: {} rounds, {} arrays",
        strategy.name(),
        rounds.num_rounds,
        arrays.len()
    ));
    for round in first_round..=rounds.num_rounds {
        let round_started = Instant::now();
        grid.log("");
        grid.log(&format!("[ROUND {round}/{}]", rounds.num_rounds));
        let nodes = grid.wait_for_nodes(rounds.min_available_nodes, rounds.node_wait)?;
        if nodes.len() < rounds.min_available_nodes {
            return Err(AppError::new(format!(
                "round {round}: only {} of the {} required nodes are online",
                nodes.len(),
                rounds.min_available_nodes
            )));
        }
        let seed = |salt: u64| rounds.seed.map(|seed| seed ^ round.wrapping_mul(salt));
        let trainers = sample(
            &nodes,
            rounds.fraction_train,
            rounds.min_train_nodes,
            seed(0x9e37_79b9),
        );
        grid.log(&format!(
            "configure_train: sampled {} nodes (out of {})",
            trainers.len(),
            nodes.len()
        ));
        let config = merged(round, [&rounds.train_config, &strategy.train_config()]);
        let mut entry = RoundMetrics {
            round,
            seconds: 0.0,
            train: MetricRecord::new(),
            evaluate: MetricRecord::new(),
        };
        let trained = train(
            grid,
            strategy,
            round,
            &arrays,
            &trainers,
            config,
            rounds.round_timeout,
        )?;
        if let Some((next, metrics)) = trained {
            strategy.recycle(std::mem::replace(&mut arrays, next));
            entry.train = metrics;
        }
        if rounds.fraction_evaluate > 0.0 {
            let evaluators = sample(
                &nodes,
                rounds.fraction_evaluate,
                rounds.min_evaluate_nodes,
                seed(0x85eb_ca6b),
            );
            grid.log(&format!(
                "configure_evaluate: sampled {} nodes (out of {})",
                evaluators.len(),
                nodes.len()
            ));
            let config = merged(round, [&rounds.evaluate_config, &ConfigRecord::new()]);
            entry.evaluate = evaluate(
                grid,
                strategy,
                round,
                &arrays,
                &evaluators,
                config,
                rounds.round_timeout,
            )?;
        }
        entry.seconds = round_started.elapsed().as_secs_f64();
        history.push(entry);
        save_checkpoint(grid, round, &arrays, &history)?;
    }
    grid.log("");
    grid.log(&format!(
        "Strategy execution finished in {:.2}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(Outcome {
        arrays,
        rounds: history,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::FedAvg;
    use std::sync::Mutex;
    use wire::message::{ErrorCode, MessageError};
    use wire::{Array, MessageId, Metadata, RunId};

    /// Two nodes whose every answer is an error with one of `reasons`, in turn.
    struct FailingNodes {
        reasons: Vec<&'static str>,
        log: Mutex<Vec<String>>,
    }

    impl Grid for FailingNodes {
        fn run_id(&self) -> RunId {
            RunId(1)
        }

        fn node_ids(&self) -> Result<Vec<NodeId>, GridError> {
            Ok(vec![NodeId(2), NodeId(3)])
        }

        fn wait_for_nodes(&self, _: usize, _: Duration) -> Result<Vec<NodeId>, GridError> {
            self.node_ids()
        }

        fn send_and_fold(
            &self,
            instructions: Vec<Instruction>,
            _: Duration,
            on_reply: &mut dyn FnMut(Message),
        ) -> Result<(), GridError> {
            for (instruction, reason) in instructions.into_iter().zip(self.reasons.iter().cycle()) {
                let sent = Message {
                    metadata: Metadata {
                        run_id: RunId(1),
                        message_id: MessageId::random(),
                        src_node_id: NodeId::SERVER,
                        dst_node_id: instruction.dst,
                        reply_to: None,
                        group_id: instruction.group_id,
                        ttl_ms: 1000,
                        message_type: instruction.message_type,
                        created_at_ms: 0,
                    },
                    body: MessageBody::Content(RecordDict::new()),
                };
                let error = MessageError {
                    code: ErrorCode::ClientAppRaisedException,
                    reason: reason.to_string(),
                };
                on_reply(sent.reply(MessageBody::Error(error), 0));
            }
            Ok(())
        }

        fn log(&self, line: &str) {
            self.log.lock().unwrap().push(line.to_string());
        }

        fn save_artifact(&self, _: &str, _: &[u8]) -> Result<(), GridError> {
            Ok(())
        }

        fn save_checkpoint(&self, _: &[u8]) -> Result<(), GridError> {
            Ok(())
        }
    }

    fn run_against(reasons: Vec<&'static str>) -> (Result<Outcome, AppError>, ArrayRecord) {
        let grid = FailingNodes {
            reasons,
            log: Mutex::new(Vec::new()),
        };
        let context = ServerContext {
            run_id: RunId(1),
            run_config: ConfigRecord::new(),
            checkpoint: None,
        };
        let initial = ArrayRecord::new().with("w", Array::from_f32(vec![1], &[1.0]).unwrap());
        let rounds = Rounds {
            train_config: ConfigRecord::new().with("learning-rate", ConfigValue::Float(0.1)),
            ..Rounds::default()
        };
        let outcome = start(
            &grid,
            &context,
            &mut FedAvg::default(),
            initial.clone(),
            &rounds,
        );
        (outcome, initial)
    }

    #[test]
    fn a_round_where_every_node_diverged_fails_the_run_with_the_rate_to_try() {
        let (outcome, _) = run_against(vec!["training diverged (loss NaN)"]);
        let error = outcome.unwrap_err().to_string();
        assert!(error.contains("learning-rate=0.01"), "{error}");
    }

    #[test]
    fn a_round_without_a_usable_result_fails_the_run_and_says_why() {
        let (outcome, _) = run_against(vec!["training diverged (loss NaN)", "out of memory"]);
        let error = outcome.unwrap_err().to_string();
        assert!(
            error.contains("no node returned a usable training result")
                && !error.contains("learning-rate"),
            "{error}"
        );
    }

    #[test]
    fn sampling_takes_the_share_but_at_least_the_minimum_and_at_most_everyone() {
        let nodes: Vec<NodeId> = (2..12).map(NodeId).collect();
        assert_eq!(sample(&nodes, 1.0, 2, None).len(), 10);
        assert_eq!(sample(&nodes, 0.5, 2, None).len(), 5);
        assert_eq!(sample(&nodes, 0.0, 2, None).len(), 2);
        assert_eq!(sample(&nodes, 0.5, 20, None).len(), 10);
        let mut sampled = sample(&nodes, 1.0, 0, None);
        sampled.sort();
        assert_eq!(sampled, nodes);
    }

    #[test]
    fn a_seeded_sample_depends_on_the_seed_and_the_nodes_alone() {
        let nodes: Vec<NodeId> = (2..40).map(NodeId).collect();
        let mut shuffled = nodes.clone();
        shuffled.reverse();
        let once = sample(&nodes, 0.25, 2, Some(7));
        assert_eq!(once, sample(&shuffled, 0.25, 2, Some(7)));
        assert!(once.is_sorted());
        assert_ne!(once, sample(&nodes, 0.25, 2, Some(8)));
    }

    #[test]
    fn a_round_lost_to_divergence_names_the_learning_rate_to_try() {
        let config = ConfigRecord::new().with("learning-rate", ConfigValue::Float(0.1));
        let diverged = all_diverged(1, &config);
        assert!(
            diverged.contains("diverged") && diverged.contains("--run-config 'learning-rate=0.01'"),
            "{diverged}"
        );
        assert!(all_diverged(1, &ConfigRecord::new()).ends_with("try a smaller learning rate"));
    }

    #[test]
    fn round_metrics_survive_the_checkpoint_history() {
        let round = RoundMetrics {
            round: 2,
            seconds: 1.5,
            train: MetricRecord::new()
                .with("train_loss", MetricValue::Float(0.25))
                .with("steps", MetricValue::Int(3)),
            evaluate: MetricRecord::new()
                .with("losses", MetricValue::FloatList(vec![0.5, 2.0]))
                .with("counts", MetricValue::IntList(vec![1, 2])),
        };
        let text = Value::Array(vec![round.to_json()]).to_string();
        assert_eq!(
            history_from_checkpoint(&text).unwrap(),
            std::slice::from_ref(&round)
        );
        assert!(history_from_checkpoint("{\"round\": 1}").is_err());
        assert!(history_from_checkpoint("").unwrap().is_empty());
        // A NaN is written as null and comes back NaN; the flat form reads back as written.
        let diverged = RoundMetrics {
            evaluate: MetricRecord::new().with("eval_loss", MetricValue::Float(f64::NAN)),
            ..round
        };
        let text = Value::Array(vec![diverged.to_json()]).to_string();
        let back = history_from_checkpoint(&text).unwrap();
        assert_eq!(back[0].to_flat_json(), diverged.to_flat_json());
        let flat = Value::Array(vec![diverged.to_flat_json()]).to_string();
        let back = history_from_checkpoint(&flat).unwrap();
        assert_eq!(back[0].to_flat_json(), diverged.to_flat_json());
    }
}
