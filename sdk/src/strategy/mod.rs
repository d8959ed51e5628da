//! Flower's strategies (`flwr.serverapp.strategy`, 1.42) with Flower's names, parameters and
//! defaults: how each turns a round's replies into the next global model and into the round's
//! metrics. The arithmetic follows Flower's step by step (weights normalised in f64 and rounded to
//! f32 once, then summed reply by reply in f32), so that results agree with Flower's to 1e-6 on
//! the same inputs; `sdk/tests/sdk/strategies.rs` checks each against fixtures Flower produced
//! (`scripts/strategy-fixtures`).
//!
//! - [`FedAvg`] and [`FedProx`]: the weighted mean (FedProx adds `proximal-mu` to the train
//!   config; its server side is FedAvg's).
//! - [`FedAvgM`], [`FedAdagrad`], [`FedAdam`], [`FedYogi`]: a server optimiser applied to the
//!   weighted mean, with state kept from round to round.
//! - [`FedMedian`], [`FedTrimmedAvg`], [`Krum`], [`MultiKrum`], [`Bulyan`]: robust to a minority
//!   of bad replies; the median, trimmed mean and Bulyan's final mean are unweighted, as Flower's.
//!
//! [`start::start`] is the round loop around any of them, Flower's `Strategy.start`. It hands a
//! round's train replies to the strategy one at a time, as they arrive ([`Strategy::train_fold`]):
//! FedAvg and FedProx fold each into a running sum and drop it, so a round holds one model's
//! worth of memory whatever the number of nodes; the others keep the replies and aggregate them
//! at the end. Each reply is checked on its own against the arrays the round sent out (names and
//! shapes, finite values) and for a weight between 1 and 2^32; one that fails is left out of the
//! round rather than failing it, whatever order replies come in. Metrics are averaged over the
//! names every kept reply shares, so no reply's metrics decide which others count.
//!
//! Where Flower differs by accident rather than design, ours keeps the model's dtype: Flower's
//! FedAdam returns float64 arrays (a numpy promotion of its bias-corrected step), ours the f32
//! arrays it was given.

mod fold;
mod optimizers;
mod robust;
pub mod start;
mod weighted;

pub use fold::TrainFold;
pub use optimizers::{FedAdagrad, FedAdam, FedAvgM, FedYogi};
pub use robust::{Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum};
pub use weighted::{FedAvg, FedProx};

use crate::fedavg::AggregationError;
use thiserror::Error;
use wire::{Array, ArrayRecord, ConfigRecord, ConfigValue, MetricRecord, MetricValue};

/// The metric every strategy weights by unless told otherwise, as in Flower.
pub const NUM_EXAMPLES: &str = "num-examples";

/// One node's answer to a train instruction: its arrays and its metrics.
#[derive(Debug, Clone, Copy)]
pub struct TrainReply<'a> {
    /// The updated arrays.
    pub arrays: &'a ArrayRecord,
    /// Its metrics, with the weight (`num-examples`) among them.
    pub metrics: &'a MetricRecord,
}

/// Why a round's replies could not be aggregated.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum StrategyError {
    /// No reply to aggregate.
    #[error("no replies to aggregate")]
    NoReplies,
    /// Replies disagree with each other or with the model: array names, shapes or dtypes.
    #[error("replies are inconsistent: {0}")]
    Inconsistent(String),
    /// A reply lacks the weight metric, or holds one that is not a single number.
    #[error("a reply has no usable {0:?} metric")]
    MissingWeight(String),
    /// The weights add up to zero (or beyond what f64 holds).
    #[error("the replies' weights add up to zero or overflow")]
    ZeroWeight,
    /// Only f32 arrays are aggregated.
    #[error("array {0:?} is not f32")]
    NotF32(String),
    /// A robust strategy needs more replies than it got.
    #[error("{strategy} needs at least {needed} replies, got {got}")]
    TooFewReplies {
        /// The strategy.
        strategy: &'static str,
        /// Replies it needs for the number of malicious nodes it tolerates.
        needed: usize,
        /// Replies it got.
        got: usize,
    },
    /// A parameter outside its range.
    #[error("invalid parameter: {0}")]
    Parameter(String),
    /// A streaming fold refused a reply (FedAvg's and FedProx's).
    #[error(transparent)]
    Refused(#[from] AggregationError),
}

impl StrategyError {
    /// Whether the reply was refused for holding NaN or infinite values: training that diverged.
    pub fn is_not_finite(&self) -> bool {
        matches!(self, StrategyError::Refused(AggregationError::NotFinite(_)))
    }
}

/// A strategy: what a round does with its replies. Sampling and the round loop belong to the
/// app; this is the arithmetic Flower's `aggregate_train` and `aggregate_evaluate` do.
pub trait Strategy {
    /// Flower's class name.
    fn name(&self) -> &'static str;

    /// The metric each reply is weighted by (Flower's `weighted_by_key`).
    fn weighted_by_key(&self) -> &str {
        NUM_EXAMPLES
    }

    /// Entries to add to the train instructions' config (`server-round` is added by the loop).
    fn train_config(&self) -> ConfigRecord {
        ConfigRecord::new()
    }

    /// The next global arrays and the round's train metrics, from the `current` global arrays
    /// (those the round sent out) and the replies of round `round` (from 1).
    fn aggregate_train(
        &mut self,
        round: u64,
        current: &ArrayRecord,
        replies: &[TrainReply<'_>],
    ) -> Result<(ArrayRecord, MetricRecord), StrategyError>;

    /// Begins round `round`'s aggregation from the `current` global arrays: the replies are then
    /// [added](TrainFold::add) one at a time as they arrive, and [finished](TrainFold::finish)
    /// into what [`Strategy::aggregate_train`] returns. The default keeps each reply that passes
    /// the checks above and calls `aggregate_train` at the end, with each reply's metrics cut to
    /// the names all share; a strategy that can fold replies in as they come overrides it.
    fn train_fold<'a>(
        &'a mut self,
        round: u64,
        current: &'a ArrayRecord,
    ) -> Result<Box<dyn TrainFold + 'a>, StrategyError> {
        Ok(Box::new(fold::KeepAll::new(self, round, current)))
    }

    /// Hands back the global arrays a finished round sent out, whose memory a strategy may write
    /// the next round's result into (FedAvg does). The default drops them.
    fn recycle(&mut self, spent: ArrayRecord) {
        drop(spent);
    }

    /// The round's evaluation metrics: the weighted mean of every metric but the weight, as
    /// every Flower strategy does.
    fn aggregate_evaluate(&self, replies: &[&MetricRecord]) -> Result<MetricRecord, StrategyError> {
        let key = self.weighted_by_key();
        let weights = weights(replies.iter().copied(), key)?;
        aggregate_metrics(replies, &weights, key)
    }
}

/// One record's arrays' values, flattened, in its layout's order.
pub(crate) type Values = Vec<Vec<f32>>;

/// A record's arrays decoded to f32, in the record's order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Layers {
    /// Array names.
    pub names: Vec<String>,
    /// Array shapes.
    pub shapes: Vec<Vec<u64>>,
    /// Array values, flattened.
    pub values: Vec<Vec<f32>>,
}

impl Layers {
    /// Decodes `record`; every array must be f32.
    pub fn of(record: &ArrayRecord) -> Result<Self, StrategyError> {
        let mut layers = Layers {
            names: Vec::with_capacity(record.len()),
            shapes: Vec::with_capacity(record.len()),
            values: Vec::with_capacity(record.len()),
        };
        for (name, array) in record.iter() {
            let values = f32_values(name, array)?;
            layers.names.push(name.to_string());
            layers.shapes.push(array.shape.clone());
            layers.values.push(values);
        }
        Ok(layers)
    }

    /// Decodes `record` and checks it has `self`'s names (in any order, as Flower allows) and
    /// shapes; returns its values in `self`'s order.
    pub fn matching(&self, record: &ArrayRecord) -> Result<Vec<Vec<f32>>, StrategyError> {
        if record.len() != self.names.len() {
            return Err(StrategyError::Inconsistent(format!(
                "{} arrays where {} were expected",
                record.len(),
                self.names.len()
            )));
        }
        self.names
            .iter()
            .zip(&self.shapes)
            .map(|(name, shape)| {
                let array = record.get(name).ok_or_else(|| {
                    StrategyError::Inconsistent(format!("array {name:?} is missing"))
                })?;
                if &array.shape != shape {
                    return Err(StrategyError::Inconsistent(format!(
                        "array {name:?} has shape {:?}, expected {shape:?}",
                        array.shape
                    )));
                }
                f32_values(name, array)
            })
            .collect()
    }

    /// `values` as a record with these names and shapes.
    pub fn record(&self, values: Vec<Vec<f32>>) -> Result<ArrayRecord, StrategyError> {
        if values.len() != self.names.len() {
            return Err(StrategyError::Inconsistent(format!(
                "{} arrays computed for {} names",
                values.len(),
                self.names.len()
            )));
        }
        let mut record = ArrayRecord::new();
        for ((name, shape), values) in self.names.iter().zip(&self.shapes).zip(values) {
            let array = Array::from_f32(shape.clone(), &values)
                .map_err(|e| StrategyError::Inconsistent(format!("array {name:?}: {e}")))?;
            record.insert(name.clone(), array);
        }
        Ok(record)
    }

    /// The names and shapes, which a strategy's state from one round must match the next.
    pub fn layout(&self) -> Vec<(String, Vec<u64>)> {
        self.names
            .iter()
            .cloned()
            .zip(self.shapes.iter().cloned())
            .collect()
    }
}

/// An array's values, checked: f32, with as many values as its shape says.
fn f32_values(name: &str, array: &Array) -> Result<Vec<f32>, StrategyError> {
    array
        .validate()
        .map_err(|e| StrategyError::Inconsistent(format!("array {name:?}: {e}")))?;
    array
        .to_f32()
        .ok_or_else(|| StrategyError::NotF32(name.to_string()))
}

/// Every reply's arrays, in the first reply's layout: the layout and the values.
pub(crate) fn decode_replies(
    replies: &[TrainReply<'_>],
) -> Result<(Layers, Vec<Values>), StrategyError> {
    let first = replies.first().ok_or(StrategyError::NoReplies)?;
    let layers = Layers::of(first.arrays)?;
    let values = replies
        .iter()
        .map(|reply| layers.matching(reply.arrays))
        .collect::<Result<_, _>>()?;
    Ok((layers, values))
}

/// Each reply's weight: its `key` metric, an integer or a float.
pub(crate) fn weights<'a>(
    metrics: impl IntoIterator<Item = &'a MetricRecord>,
    key: &str,
) -> Result<Vec<f64>, StrategyError> {
    let weights: Vec<f64> = metrics
        .into_iter()
        .map(|metrics| weight_of(metrics, key))
        .collect::<Result<_, _>>()?;
    if weights.is_empty() {
        return Err(StrategyError::NoReplies);
    }
    let total: f64 = weights.iter().sum();
    if total == 0.0 || !total.is_finite() {
        return Err(StrategyError::ZeroWeight);
    }
    Ok(weights)
}

/// Flower's weight factors: each weight over their sum, in f64, rounded to f32 once.
fn factors(weights: &[f64]) -> Result<Vec<f32>, StrategyError> {
    // Summed in order, as Python's `sum` does.
    let total: f64 = weights.iter().fold(0.0, |sum, w| sum + w);
    if total == 0.0 || !total.is_finite() {
        return Err(StrategyError::ZeroWeight);
    }
    Ok(weights.iter().map(|w| (w / total) as f32).collect())
}

/// Flower's weighted mean (`aggregate_arrayrecords`): `x0*f0 + x1*f1 + ...`, each product and
/// sum rounded to f32, in reply order.
pub(crate) fn weighted_mean(
    values: &[Vec<Vec<f32>>],
    weights: &[f64],
) -> Result<Vec<Vec<f32>>, StrategyError> {
    let factors = factors(weights)?;
    let Some((first, rest)) = values.split_first() else {
        return Err(StrategyError::NoReplies);
    };
    let mut mean: Vec<Vec<f32>> = first
        .iter()
        .map(|layer| layer.iter().map(|x| x * factors[0]).collect())
        .collect();
    for (reply, &factor) in rest.iter().zip(&factors[1..]) {
        for (sum, layer) in mean.iter_mut().zip(reply) {
            for (s, x) in sum.iter_mut().zip(layer) {
                *s += x * factor;
            }
        }
    }
    Ok(mean)
}

/// Whether two metric values can be averaged together: both numbers, or lists of one length.
fn same_kind(a: &MetricValue, b: &MetricValue) -> bool {
    // Numbers average with numbers, lists with lists of the same length, whatever the types.
    a.list_len() == b.list_len()
}

/// Checks that `record` has `first`'s metric names, each of a kind that averages with it.
fn check_metrics_like(first: &MetricRecord, record: &MetricRecord) -> Result<(), StrategyError> {
    let consistent = record.len() == first.len()
        && first
            .iter()
            .all(|(key, value)| record.get(key).is_some_and(|other| same_kind(value, other)));
    if consistent {
        Ok(())
    } else {
        Err(StrategyError::Inconsistent(
            "replies' metrics differ in names or kinds".into(),
        ))
    }
}

/// A reply's weight as the round loop accepts it: its `key` metric, a count of examples between 1
/// and 2^32 (see [`crate::fedavg::check_weight`]).
pub(crate) fn usable_weight(metrics: &MetricRecord, key: &str) -> Result<f64, StrategyError> {
    let weight = weight_of(metrics, key)?;
    crate::fedavg::check_weight(weight)?;
    Ok(weight)
}

/// Each record cut to the metrics that every record has, of one kind (lists of one length): what
/// the replies agree on, so one reply's extra or odd metric cannot make the others unusable.
pub(crate) fn common_metrics(records: &[&MetricRecord]) -> Vec<MetricRecord> {
    let Some(first) = records.first() else {
        return Vec::new();
    };
    let shared: Vec<&str> = first
        .iter()
        .filter(|(name, value)| {
            records[1..].iter().all(|record| {
                record
                    .get(name)
                    .is_some_and(|other| same_kind(value, other))
            })
        })
        .map(|(name, _)| name)
        .collect();
    records
        .iter()
        .map(|record| {
            shared
                .iter()
                .filter_map(|name| Some((name.to_string(), record.get(name)?.clone())))
                .collect()
        })
        .collect()
}

/// A reply's weight: its `key` metric, a finite number.
fn weight_of(metrics: &MetricRecord, key: &str) -> Result<f64, StrategyError> {
    match metrics.get(key) {
        Some(MetricValue::Int(n)) => Ok(*n as f64),
        Some(MetricValue::UInt(n)) => Ok(*n as f64),
        Some(MetricValue::Float(x)) if x.is_finite() => Ok(*x),
        _ => Err(StrategyError::MissingWeight(key.to_string())),
    }
}

/// Flower's metric aggregation (`aggregate_metricrecords`): the weighted mean, in f64 and reply
/// order, of every metric but `weight_key`, lists element by element; integers become floats.
/// Like Flower's, it refuses replies whose metrics have different names, or lists of different
/// lengths.
pub(crate) fn aggregate_metrics(
    metrics: &[&MetricRecord],
    weights: &[f64],
    weight_key: &str,
) -> Result<MetricRecord, StrategyError> {
    let total: f64 = weights.iter().fold(0.0, |sum, w| sum + w);
    let mut out = MetricRecord::new();
    let Some(first) = metrics.first() else {
        return Ok(out);
    };
    for record in &metrics[1..] {
        check_metrics_like(first, record)?;
    }
    for (key, _) in first.iter() {
        if key == weight_key {
            continue;
        }
        let mut scalar: Option<f64> = None;
        let mut list: Option<Vec<f64>> = None;
        for (record, weight) in metrics.iter().zip(weights) {
            let factor = weight / total;
            match record.get(key) {
                Some(MetricValue::Int(n)) => {
                    let term = *n as f64 * factor;
                    scalar = Some(scalar.map_or(term, |acc| acc + term));
                }
                Some(MetricValue::UInt(n)) => {
                    let term = *n as f64 * factor;
                    scalar = Some(scalar.map_or(term, |acc| acc + term));
                }
                Some(MetricValue::Float(x)) => {
                    let term = x * factor;
                    scalar = Some(scalar.map_or(term, |acc| acc + term));
                }
                Some(MetricValue::IntList(values)) => {
                    let terms: Vec<f64> = values.iter().map(|&n| n as f64 * factor).collect();
                    list = Some(add_lists(list, terms));
                }
                Some(MetricValue::FloatList(values)) => {
                    let terms: Vec<f64> = values.iter().map(|x| x * factor).collect();
                    list = Some(add_lists(list, terms));
                }
                Some(MetricValue::UIntList(values)) => {
                    let terms: Vec<f64> = values.iter().map(|&n| n as f64 * factor).collect();
                    list = Some(add_lists(list, terms));
                }
                None => {}
            }
        }
        if let Some(value) = scalar {
            out.insert(key, MetricValue::Float(value));
        } else if let Some(values) = list {
            out.insert(key, MetricValue::FloatList(values));
        }
    }
    Ok(out)
}

fn add_lists(sum: Option<Vec<f64>>, terms: Vec<f64>) -> Vec<f64> {
    match sum {
        None => terms,
        Some(sum) => sum.iter().zip(&terms).map(|(s, t)| s + t).collect(),
    }
}

/// `Float(value)` as a config entry.
pub(crate) fn float(value: f64) -> ConfigValue {
    ConfigValue::Float(value)
}
