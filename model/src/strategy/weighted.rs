//! FedAvg and FedProx: the weighted mean of the replies.

use super::{
    Layers, NUM_EXAMPLES, Strategy, StrategyError, TrainReply, Values, aggregate_metrics,
    decode_replies, float, weighted_mean, weights,
};
use wire::{ArrayRecord, ConfigRecord, MetricRecord};

/// Federated averaging: each reply weighted by its `num-examples`.
///
/// ```
/// use model::strategy::{FedAvg, Strategy, TrainReply};
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
#[derive(Debug, Clone, PartialEq)]
pub struct FedAvg {
    /// The metric replies are weighted by (Flower's `weighted_by_key`).
    pub weighted_by_key: String,
}

impl Default for FedAvg {
    fn default() -> Self {
        FedAvg {
            weighted_by_key: NUM_EXAMPLES.to_string(),
        }
    }
}

impl FedAvg {
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

    fn train_config(&self) -> ConfigRecord {
        ConfigRecord::new().with("proximal-mu", float(self.proximal_mu))
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
