//! Strategies robust to a minority of bad replies: the coordinate-wise median and trimmed mean,
//! Krum and MultiKrum (Blanchard et al., 2017), and Bulyan (El Mhamdi et al., 2018).

use super::weighted::FedAvg;
use super::{
    Layers, Strategy, StrategyError, TrainReply, aggregate_metrics, decode_replies, weighted_mean,
    weights,
};
use wire::{ArrayRecord, MetricRecord};

/// The metrics of `replies` (all, or those selected, in that order), weighted as FedAvg does.
fn metrics_of(
    fedavg: &FedAvg,
    replies: &[TrainReply<'_>],
    order: &[usize],
) -> Result<MetricRecord, StrategyError> {
    let metrics: Vec<&MetricRecord> = order.iter().map(|&i| replies[i].metrics).collect();
    let weights = weights(metrics.iter().copied(), &fedavg.weighted_by_key)?;
    aggregate_metrics(&metrics, &weights, &fedavg.weighted_by_key)
}

/// For each coordinate of each array, `reduce` over the replies' values at that coordinate.
fn per_coordinate(
    values: &[&Vec<Vec<f32>>],
    mut reduce: impl FnMut(&mut [f32]) -> f32,
) -> Vec<Vec<f32>> {
    let Some(first) = values.first() else {
        return Vec::new();
    };
    let mut column = vec![0f32; values.len()];
    (0..first.len())
        .map(|layer| {
            (0..first[layer].len())
                .map(|index| {
                    for (slot, reply) in column.iter_mut().zip(values) {
                        *slot = reply[layer][index];
                    }
                    reduce(&mut column)
                })
                .collect()
        })
        .collect()
}

/// numpy's median: the middle value, or the f32 mean of the two middle values; NaN if any
/// value is.
fn median(column: &mut [f32]) -> f32 {
    if column.iter().any(|v| v.is_nan()) {
        return f32::NAN;
    }
    column.sort_by(f32::total_cmp);
    let n = column.len();
    if n % 2 == 1 {
        column[n / 2]
    } else {
        (column[n / 2 - 1] + column[n / 2]) / 2.0
    }
}

/// The plain f32 mean.
fn mean(values: &[f32]) -> f32 {
    values.iter().fold(0f32, |sum, v| sum + v) / values.len() as f32
}

/// The coordinate-wise median of the replies (unweighted); metrics weighted as FedAvg's.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FedMedian {
    /// The metric averaging.
    pub fedavg: FedAvg,
}

impl Strategy for FedMedian {
    fn weighted_by_key(&self) -> &str {
        &self.fedavg.weighted_by_key
    }

    fn name(&self) -> &'static str {
        "FedMedian"
    }

    fn aggregate_train(
        &mut self,
        _round: u64,
        _current: &ArrayRecord,
        replies: &[TrainReply<'_>],
    ) -> Result<(ArrayRecord, MetricRecord), StrategyError> {
        let (layers, values) = decode_replies(replies)?;
        let all: Vec<usize> = (0..replies.len()).collect();
        let metrics = metrics_of(&self.fedavg, replies, &all)?;
        let refs: Vec<&Vec<Vec<f32>>> = values.iter().collect();
        Ok((layers.record(per_coordinate(&refs, median))?, metrics))
    }
}

/// The coordinate-wise trimmed mean: at each coordinate the `floor(beta * n)` smallest and
/// largest values are dropped and the rest averaged (unweighted).
#[derive(Debug, Clone, PartialEq)]
pub struct FedTrimmedAvg {
    /// The metric averaging.
    pub fedavg: FedAvg,
    /// The fraction cut at each end (Flower's `beta`, 0.2), in [0, 0.5).
    pub beta: f64,
}

impl Default for FedTrimmedAvg {
    fn default() -> Self {
        FedTrimmedAvg {
            fedavg: FedAvg::default(),
            beta: 0.2,
        }
    }
}

impl Strategy for FedTrimmedAvg {
    fn weighted_by_key(&self) -> &str {
        &self.fedavg.weighted_by_key
    }

    fn name(&self) -> &'static str {
        "FedTrimmedAvg"
    }

    fn aggregate_train(
        &mut self,
        _round: u64,
        _current: &ArrayRecord,
        replies: &[TrainReply<'_>],
    ) -> Result<(ArrayRecord, MetricRecord), StrategyError> {
        if !(0.0..0.5).contains(&self.beta) {
            return Err(StrategyError::Parameter(format!(
                "beta {} is not in [0, 0.5)",
                self.beta
            )));
        }
        let (layers, values) = decode_replies(replies)?;
        let all: Vec<usize> = (0..replies.len()).collect();
        let metrics = metrics_of(&self.fedavg, replies, &all)?;
        // As Flower computes it: the f64 product, truncated.
        let cut = (self.beta * values.len() as f64) as usize;
        let refs: Vec<&Vec<Vec<f32>>> = values.iter().collect();
        let trimmed = per_coordinate(&refs, |column| {
            column.sort_by(f32::total_cmp);
            mean(&column[cut..column.len() - cut])
        });
        Ok((layers.record(trimmed)?, metrics))
    }
}

/// The replies MultiKrum keeps: each scored by the sum of squared distances to its
/// `max(1, n - f - 2)` nearest others, the `keep` lowest scores first.
fn multikrum_selection(values: &[Vec<Vec<f32>>], malicious: usize, keep: usize) -> Vec<usize> {
    let n = values.len();
    let flat: Vec<Vec<f32>> = values.iter().map(|layers| layers.concat()).collect();
    // A NaN distance (a reply holding NaN, or infinities on both sides) counts as the farthest,
    // as numpy's sort puts NaN last: such a reply is never preferred.
    let distance = |a: &[f32], b: &[f32]| -> f64 {
        let d: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| {
                let d = f64::from(*x) - f64::from(*y);
                d * d
            })
            .sum();
        if d.is_nan() { f64::INFINITY } else { d }
    };
    let closest = n.saturating_sub(malicious.saturating_add(2)).max(1);
    let scores: Vec<f64> = (0..n)
        .map(|i| {
            let mut others: Vec<f64> = (0..n)
                .filter(|&j| j != i)
                .map(|j| distance(&flat[i], &flat[j]))
                .collect();
            others.sort_by(f64::total_cmp);
            others.iter().take(closest).sum()
        })
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    // Stable: equal scores keep reply order (Flower's order for exact ties is unspecified).
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    order.truncate(keep);
    order
}

/// MultiKrum: the weighted mean of the `num_nodes_to_select` replies closest to their
/// neighbours, tolerating `num_malicious_nodes` bad ones.
#[derive(Debug, Clone, PartialEq)]
pub struct MultiKrum {
    /// The weighting.
    pub fedavg: FedAvg,
    /// Bad replies to tolerate (Flower's `num_malicious_nodes`, 0).
    pub num_malicious_nodes: usize,
    /// Replies kept and averaged (Flower's `num_nodes_to_select`, 1).
    pub num_nodes_to_select: usize,
}

impl Default for MultiKrum {
    fn default() -> Self {
        MultiKrum {
            fedavg: FedAvg::default(),
            num_malicious_nodes: 0,
            num_nodes_to_select: 1,
        }
    }
}

impl Strategy for MultiKrum {
    fn weighted_by_key(&self) -> &str {
        &self.fedavg.weighted_by_key
    }

    fn name(&self) -> &'static str {
        "MultiKrum"
    }

    fn aggregate_train(
        &mut self,
        _round: u64,
        _current: &ArrayRecord,
        replies: &[TrainReply<'_>],
    ) -> Result<(ArrayRecord, MetricRecord), StrategyError> {
        if self.num_nodes_to_select == 0 {
            return Err(StrategyError::Parameter(
                "num_nodes_to_select must be at least 1".into(),
            ));
        }
        let (layers, values) = decode_replies(replies)?;
        let chosen =
            multikrum_selection(&values, self.num_malicious_nodes, self.num_nodes_to_select);
        selected_mean(&self.fedavg, &layers, &values, replies, &chosen)
    }
}

/// The weighted mean and metrics of the replies at `chosen`, in that order.
fn selected_mean(
    fedavg: &FedAvg,
    layers: &Layers,
    values: &[Vec<Vec<f32>>],
    replies: &[TrainReply<'_>],
    chosen: &[usize],
) -> Result<(ArrayRecord, MetricRecord), StrategyError> {
    let picked: Vec<Vec<Vec<f32>>> = chosen.iter().map(|&i| values[i].clone()).collect();
    let metrics: Vec<&MetricRecord> = chosen.iter().map(|&i| replies[i].metrics).collect();
    let weights = weights(metrics.iter().copied(), &fedavg.weighted_by_key)?;
    let mean = weighted_mean(&picked, &weights)?;
    let metrics = aggregate_metrics(&metrics, &weights, &fedavg.weighted_by_key)?;
    Ok((layers.record(mean)?, metrics))
}

/// Krum: MultiKrum keeping a single reply, whose arrays become the global model.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Krum {
    /// Bad replies to tolerate (Flower's `num_malicious_nodes`, 0).
    pub num_malicious_nodes: usize,
    /// The weighting of the metrics.
    pub fedavg: FedAvg,
}

impl Strategy for Krum {
    fn weighted_by_key(&self) -> &str {
        &self.fedavg.weighted_by_key
    }

    fn name(&self) -> &'static str {
        "Krum"
    }

    fn aggregate_train(
        &mut self,
        round: u64,
        current: &ArrayRecord,
        replies: &[TrainReply<'_>],
    ) -> Result<(ArrayRecord, MetricRecord), StrategyError> {
        MultiKrum {
            fedavg: self.fedavg.clone(),
            num_malicious_nodes: self.num_malicious_nodes,
            num_nodes_to_select: 1,
        }
        .aggregate_train(round, current, replies)
    }
}

/// Bulyan: MultiKrum keeps `theta = n - 2f` replies; at each coordinate, the `n - 4f` values
/// nearest their median are averaged (unweighted). Needs `n >= 4f + 3`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Bulyan {
    /// Bad replies to tolerate (Flower's `num_malicious_nodes`, 0).
    pub num_malicious_nodes: usize,
    /// The weighting of the metrics.
    pub fedavg: FedAvg,
}

impl Strategy for Bulyan {
    fn weighted_by_key(&self) -> &str {
        &self.fedavg.weighted_by_key
    }

    fn name(&self) -> &'static str {
        "Bulyan"
    }

    fn aggregate_train(
        &mut self,
        _round: u64,
        _current: &ArrayRecord,
        replies: &[TrainReply<'_>],
    ) -> Result<(ArrayRecord, MetricRecord), StrategyError> {
        let f = self.num_malicious_nodes;
        let n = replies.len();
        let needed = f
            .checked_mul(4)
            .and_then(|x| x.checked_add(3))
            .ok_or_else(|| {
                StrategyError::Parameter(format!("num_malicious_nodes {f} is too large"))
            })?;
        if n < needed {
            return Err(StrategyError::TooFewReplies {
                strategy: "Bulyan",
                needed,
                got: n,
            });
        }
        let (layers, values) = decode_replies(replies)?;
        let theta = n - 2 * f;
        let beta = theta - 2 * f;
        let chosen = multikrum_selection(&values, f, theta);
        let metrics = metrics_of(&self.fedavg, replies, &chosen)?;
        let picked: Vec<&Vec<Vec<f32>>> = chosen.iter().map(|&i| &values[i]).collect();
        let mut sorted = Vec::with_capacity(theta);
        let aggregated = per_coordinate(&picked, |column| {
            sorted.clear();
            sorted.extend_from_slice(column);
            let centre = median(&mut sorted);
            column.sort_by(|a, b| (a - centre).abs().total_cmp(&(b - centre).abs()));
            mean(&column[..beta])
        });
        Ok((layers.record(aggregated)?, metrics))
    }
}
