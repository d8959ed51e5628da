//! The round loop around a strategy, as Flower's `Strategy.start` runs it: each round samples
//! nodes, sends them the global arrays to train on, aggregates their replies with the strategy,
//! then has a sample evaluate the result and aggregates their metrics. Progress goes to the
//! run's log in Flower's words; the arrays are checkpointed after every round, so a run
//! interrupted by a SuperLink restart resumes after its last completed round.
//!
//! Instructions carry the records Flower's apps use: `arrays` (an ArrayRecord) and `config`
//! (a ConfigRecord with `server-round` and the strategy's train config); replies carry `arrays`
//! and `metrics` (a MetricRecord with `num-examples`) for training, `metrics` for evaluation.

use super::{Strategy, TrainReply};
use crate::app::{AppError, Grid, GridError, Instruction, ServerContext};
use crate::checkpoint;
use rand::seq::SliceRandom as _;
use std::sync::Arc;
use std::time::Duration;
use wire::{
    ArrayRecord, ConfigRecord, ConfigValue, Message, MessageBody, MessageType, MetricRecord,
    MetricValue, NodeId, Record, RecordDict,
};

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
        }
    }
}

/// What a run of rounds produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The final global arrays.
    pub arrays: ArrayRecord,
    /// Aggregated train metrics, by round.
    pub train_metrics: Vec<(u64, MetricRecord)>,
    /// Aggregated evaluation metrics, by round.
    pub evaluate_metrics: Vec<(u64, MetricRecord)>,
}

/// `count` of `nodes` at random: the share `fraction`, at least `min`, at most all of them.
fn sample(nodes: &[NodeId], fraction: f64, min: usize) -> Vec<NodeId> {
    let wanted = ((nodes.len() as f64 * fraction) as usize)
        .max(min)
        .min(nodes.len());
    let mut sampled = nodes.to_vec();
    sampled.shuffle(&mut rand::rng());
    sampled.truncate(wanted);
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

/// Sends `content` to `nodes` as `message_type` and collects the replies; error replies are
/// logged and left out.
fn step(
    grid: &dyn Grid,
    nodes: &[NodeId],
    message_type: MessageType,
    round: u64,
    content: Arc<RecordDict>,
    timeout: Duration,
) -> Result<Vec<Message>, AppError> {
    let instructions = nodes
        .iter()
        .map(|&dst| Instruction {
            dst,
            message_type,
            group_id: round.to_string(),
            content: content.clone(),
        })
        .collect();
    let replies = grid.send_and_receive(instructions, timeout)?;
    let (good, failed): (Vec<Message>, Vec<Message>) = replies
        .into_iter()
        .partition(|reply| matches!(reply.body, MessageBody::Content(_)));
    let step = message_type.as_str();
    grid.log(&format!(
        "aggregate_{step}: received {} results and {} failures",
        good.len(),
        failed.len()
    ));
    for reply in &failed {
        if let MessageBody::Error(error) = &reply.body {
            grid.log(&format!(
                "  failure from node {}: {:?}: {}",
                reply.metadata.src_node_id, error.code, error.reason
            ));
        }
    }
    Ok(good)
}

fn content(arrays: Option<&ArrayRecord>, config: ConfigRecord) -> Arc<RecordDict> {
    let mut content = RecordDict::new();
    if let Some(arrays) = arrays {
        content = content.with("arrays", Record::Arrays(arrays.clone()));
    }
    Arc::new(content.with("config", Record::Config(config)))
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

/// Runs `rounds` of `strategy` from `initial` (or from the run's checkpoint when resumed);
/// returns the final arrays and the metrics of every round.
pub fn start(
    grid: &dyn Grid,
    context: &ServerContext,
    strategy: &mut dyn Strategy,
    initial: ArrayRecord,
    rounds: &Rounds,
) -> Result<Outcome, AppError> {
    let (mut arrays, first_round) = match checkpoint::resume_point(context)? {
        Some(resumed) => {
            grid.log(&format!(
                "Resuming after round {} of {} from the run's checkpoint",
                resumed.completed_rounds, rounds.num_rounds
            ));
            (resumed.arrays, resumed.completed_rounds + 1)
        }
        None => (initial, 1),
    };
    grid.log(&format!(
        "Starting {} strategy: {} rounds, {} arrays",
        strategy.name(),
        rounds.num_rounds,
        arrays.len()
    ));
    let mut outcome = Outcome {
        arrays: ArrayRecord::new(),
        train_metrics: Vec::new(),
        evaluate_metrics: Vec::new(),
    };
    for round in first_round..=rounds.num_rounds {
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
        let trainers = sample(&nodes, rounds.fraction_train, rounds.min_train_nodes);
        grid.log(&format!(
            "configure_train: sampled {} nodes (out of {})",
            trainers.len(),
            nodes.len()
        ));
        let config = merged(round, [&rounds.train_config, &strategy.train_config()]);
        let replies = step(
            grid,
            &trainers,
            MessageType::Train,
            round,
            content(Some(&arrays), config),
            rounds.round_timeout,
        )?;
        let mut trained: Vec<TrainReply<'_>> = Vec::with_capacity(replies.len());
        for reply in &replies {
            let MessageBody::Content(content) = &reply.body else {
                continue;
            };
            match (content.arrays("arrays"), content.metrics("metrics")) {
                (Some(arrays), Some(metrics)) => trained.push(TrainReply { arrays, metrics }),
                _ => grid.log(&format!(
                    "  reply from node {} left out: it lacks the arrays or the metrics record",
                    reply.metadata.src_node_id
                )),
            }
        }
        if trained.is_empty() {
            // As Flower does: the global arrays stay as they are, and the rounds go on.
            grid.log("  no results to aggregate: the global arrays stay as they were");
        } else {
            let (next, metrics) = strategy
                .aggregate_train(round, &arrays, &trained)
                .map_err(|e| AppError::new(format!("round {round}: {e}")))?;
            grid.log(&format!(
                "  └──> Aggregated MetricRecord: {}",
                describe(&metrics)
            ));
            arrays = next;
            outcome.train_metrics.push((round, metrics));
        }
        if rounds.fraction_evaluate > 0.0 {
            let evaluators = sample(&nodes, rounds.fraction_evaluate, rounds.min_evaluate_nodes);
            grid.log(&format!(
                "configure_evaluate: sampled {} nodes (out of {})",
                evaluators.len(),
                nodes.len()
            ));
            let config = merged(round, [&rounds.evaluate_config, &ConfigRecord::new()]);
            let replies = step(
                grid,
                &evaluators,
                MessageType::Evaluate,
                round,
                content(Some(&arrays), config),
                rounds.round_timeout,
            )?;
            let evaluated: Vec<&MetricRecord> = replies
                .iter()
                .filter_map(|reply| match &reply.body {
                    MessageBody::Content(content) => content.metrics("metrics"),
                    MessageBody::Error(_) => None,
                })
                .collect();
            if !evaluated.is_empty() {
                let metrics = strategy
                    .aggregate_evaluate(&evaluated)
                    .map_err(|e| AppError::new(format!("round {round}: {e}")))?;
                grid.log(&format!(
                    "  └──> Aggregated MetricRecord: {}",
                    describe(&metrics)
                ));
                outcome.evaluate_metrics.push((round, metrics));
            }
        }
        // A checkpoint the SuperLink cannot keep (a model over its limit) costs only the
        // ability to resume from this round; a stopped run stops.
        match checkpoint::encode(round, &arrays, "") {
            Ok(state) => match grid.save_checkpoint(&state) {
                Ok(()) => {}
                Err(GridError::Stopped) => return Err(GridError::Stopped.into()),
                Err(error) => grid.log(&format!(
                    "  checkpoint not saved ({error}): a restart would begin this run again"
                )),
            },
            Err(error) => grid.log(&format!("  checkpoint not saved ({error})")),
        }
    }
    grid.log("");
    grid.log(&format!(
        "Strategy execution finished after {} rounds",
        rounds.num_rounds
    ));
    outcome.arrays = arrays;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_takes_the_share_but_at_least_the_minimum_and_at_most_everyone() {
        let nodes: Vec<NodeId> = (2..12).map(NodeId).collect();
        assert_eq!(sample(&nodes, 1.0, 2).len(), 10);
        assert_eq!(sample(&nodes, 0.5, 2).len(), 5);
        assert_eq!(sample(&nodes, 0.0, 2).len(), 2);
        assert_eq!(sample(&nodes, 0.5, 20).len(), 10);
        let mut sampled = sample(&nodes, 1.0, 0);
        sampled.sort();
        assert_eq!(sampled, nodes);
    }
}
