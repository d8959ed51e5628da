//! FedAvg and FedProx: the weighted mean of the replies.
//!
//! Given every reply at once ([`Strategy::aggregate_train`]), the mean is Flower's to the bit:
//! each weight over the total, rounded to f32, times each reply, summed in reply order. Taken one
//! at a time ([`Strategy::train_fold`], as the round loop does), each reply is folded into a
//! running weighted sum and dropped, and the sum is divided by the total at the end
//! ([`crate::fedavg::FedAvg`]), in one model's memory whatever the number of replies, written
//! into the memory of the model the round sent out. Over the same replies the two agree to within
//! f32 rounding (a few units in the last place). The fold takes f64 arrays as well as f32 ones,
//! and checks more: finite values, and a weight between 1 and 2^32.

use super::{
    Layers, NUM_EXAMPLES, Strategy, StrategyError, TrainFold, TrainReply, Values,
    aggregate_metrics, common_metrics, decode_replies, float, usable_weight, weighted_mean,
    weights,
};
use crate::fedavg;
use wire::{ArrayRecord, ConfigRecord, MetricRecord};

/// Federated averaging: each reply weighted by its `num-examples`.
///
/// ```
/// use flwr_sdk::strategy::{FedAvg, Strategy, TrainReply};
/// use wire::{Array, ArrayRecord, MetricRecord, MetricValue};
///
/// let reply = |value: f32, examples: i64| {
///     let arrays = ArrayRecord::new().with("w", Array::from_f32(vec![1], &[value]).unwrap());
///     let metrics = MetricRecord::new().with("num-examples", MetricValue::Int(examples));
///     (arrays, metrics)
/// };
/// let (a, b) = (reply(1.0, 1), reply(4.0, 3));
/// let replies = [
///     TrainReply { arrays: &a.0, metrics: &a.1 },
///     TrainReply { arrays: &b.0, metrics: &b.1 },
/// ];
/// let (mean, _) = FedAvg::default().aggregate_train(1, &a.0, &replies).unwrap();
/// assert_eq!(mean.get("w").unwrap().to_f32().unwrap(), [3.25]);
/// ```
#[derive(Debug, Clone)]
pub struct FedAvg {
    /// The metric replies are weighted by (Flower's `weighted_by_key`).
    pub weighted_by_key: String,
    /// The running sum of the streaming fold, kept from round to round with its memory (and the
    /// spent model's, which the next mean is written into).
    sums: Option<fedavg::FedAvg>,
}

/// Two FedAvgs are equal when they weight alike: the running sum is scratch memory.
impl PartialEq for FedAvg {
    fn eq(&self, other: &Self) -> bool {
        self.weighted_by_key == other.weighted_by_key
    }
}

impl Default for FedAvg {
    fn default() -> Self {
        FedAvg::weighted_by(NUM_EXAMPLES)
    }
}

impl FedAvg {
    /// FedAvg weighting each reply by its `key` metric.
    pub fn weighted_by(key: &str) -> Self {
        FedAvg {
            weighted_by_key: key.to_string(),
            sums: None,
        }
    }

    /// The weighted mean of the replies and of their metrics: what every strategy built on
    /// FedAvg starts from. The layout is the first reply's.
    pub(crate) fn mean(
        &self,
        replies: &[TrainReply<'_>],
    ) -> Result<(Layers, Values, MetricRecord), StrategyError> {
        let (layers, values) = decode_replies(replies)?;
        let (mean, metrics) = self.mean_of(&values, replies)?;
        Ok((layers, mean, metrics))
    }

    /// [`FedAvg::mean`] in `layout`'s order (the current model's, for strategies that keep
    /// state per array): every reply must have its names and shapes.
    pub(crate) fn mean_in(
        &self,
        layout: &Layers,
        replies: &[TrainReply<'_>],
    ) -> Result<(Values, MetricRecord), StrategyError> {
        let values: Vec<Values> = replies
            .iter()
            .map(|reply| layout.matching(reply.arrays))
            .collect::<Result<_, _>>()?;
        self.mean_of(&values, replies)
    }

    fn mean_of(
        &self,
        values: &[Values],
        replies: &[TrainReply<'_>],
    ) -> Result<(Values, MetricRecord), StrategyError> {
        let weights = weights(replies.iter().map(|r| r.metrics), &self.weighted_by_key)?;
        let mean = weighted_mean(values, &weights)?;
        let metrics: Vec<&MetricRecord> = replies.iter().map(|r| r.metrics).collect();
        let metrics = aggregate_metrics(&metrics, &weights, &self.weighted_by_key)?;
        Ok((mean, metrics))
    }
}

impl Strategy for FedAvg {
    fn name(&self) -> &'static str {
        "FedAvg"
    }

    fn weighted_by_key(&self) -> &str {
        &self.weighted_by_key
    }

    fn train_fold<'a>(
        &'a mut self,
        _round: u64,
        current: &'a ArrayRecord,
    ) -> Result<Box<dyn TrainFold + 'a>, StrategyError> {
        // The last round's sum serves again while the model keeps its layout.
        let sums = match self.sums.take() {
            Some(sums) if sums.fits(current) => sums,
            _ => fedavg::FedAvg::new(current)?,
        };
        Ok(Box::new(Streaming {
            strategy: self,
            current,
            sums,
            metrics: Vec::new(),
            weights: Vec::new(),
        }))
    }

    fn recycle(&mut self, spent: ArrayRecord) {
        if let Some(sums) = &mut self.sums {
            sums.recycle(spent);
        }
    }

    fn aggregate_train(
        &mut self,
        _round: u64,
        _current: &ArrayRecord,
        replies: &[TrainReply<'_>],
    ) -> Result<(ArrayRecord, MetricRecord), StrategyError> {
        let (layers, mean, metrics) = self.mean(replies)?;
        Ok((layers.record(mean)?, metrics))
    }
}

/// FedAvg's fold: replies summed as they come, their metrics kept for the weighted means.
struct Streaming<'a> {
    strategy: &'a mut FedAvg,
    current: &'a ArrayRecord,
    sums: fedavg::FedAvg,
    metrics: Vec<MetricRecord>,
    weights: Vec<f64>,
}

impl TrainFold for Streaming<'_> {
    fn add(&mut self, reply: TrainReply<'_>) -> Result<(), StrategyError> {
        let weight = usable_weight(reply.metrics, &self.strategy.weighted_by_key)?;
        // The running sum takes arrays in the model's order; Flower allows any.
        match in_order_of(self.current, reply.arrays) {
            Some(reordered) => self.sums.add(&reordered, weight)?,
            None => self.sums.add(reply.arrays, weight)?,
        }
        self.metrics.push(reply.metrics.clone());
        self.weights.push(weight);
        Ok(())
    }

    fn accepted(&self) -> usize {
        self.sums.accepted()
    }

    fn finish(mut self: Box<Self>) -> Result<(ArrayRecord, MetricRecord), StrategyError> {
        let mean = self.sums.take_mean()?;
        let metrics: Vec<&MetricRecord> = self.metrics.iter().collect();
        let metrics = common_metrics(&metrics);
        let metrics: Vec<&MetricRecord> = metrics.iter().collect();
        let metrics = aggregate_metrics(&metrics, &self.weights, &self.strategy.weighted_by_key)?;
        self.strategy.sums = Some(self.sums);
        Ok((mean, metrics))
    }
}

/// `reply`'s arrays in `model`'s order, when it has the same names in another order; `None` when
/// it is in order already, or when the names differ (which the running sum then reports).
fn in_order_of(model: &ArrayRecord, reply: &ArrayRecord) -> Option<ArrayRecord> {
    let in_order = model
        .iter()
        .map(|(name, _)| name)
        .eq(reply.iter().map(|(name, _)| name));
    if in_order || model.len() != reply.len() {
        return None;
    }
    model
        .iter()
        .map(|(name, _)| Some((name.to_string(), reply.get(name)?.clone())))
        .collect()
}

/// FedProx: FedAvg on the server; the nodes add a proximal term `mu/2 * |w - w_global|^2` to
/// their loss, with `mu` sent as `proximal-mu` in every train instruction's config.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FedProx {
    /// The averaging.
    pub fedavg: FedAvg,
    /// The proximal term's weight (Flower's `proximal_mu`, default 0.0: plain FedAvg).
    pub proximal_mu: f64,
}

impl Strategy for FedProx {
    fn name(&self) -> &'static str {
        "FedProx"
    }

    fn weighted_by_key(&self) -> &str {
        &self.fedavg.weighted_by_key
    }

    fn train_config(&self) -> ConfigRecord {
        ConfigRecord::new().with("proximal-mu", float(self.proximal_mu))
    }

    fn train_fold<'a>(
        &'a mut self,
        round: u64,
        current: &'a ArrayRecord,
    ) -> Result<Box<dyn TrainFold + 'a>, StrategyError> {
        self.fedavg.train_fold(round, current)
    }

    fn recycle(&mut self, spent: ArrayRecord) {
        self.fedavg.recycle(spent);
    }

    fn aggregate_train(
        &mut self,
        round: u64,
        current: &ArrayRecord,
        replies: &[TrainReply<'_>],
    ) -> Result<(ArrayRecord, MetricRecord), StrategyError> {
        self.fedavg.aggregate_train(round, current, replies)
    }
}
