//! A round's train replies, taken one at a time as they arrive: [`TrainFold`], and the fold every
//! strategy gets unless it has its own, [`KeepAll`].

use super::{Strategy, StrategyError, TrainReply, common_metrics, usable_weight};
use crate::fedavg::check_finite;
use wire::{ArrayRecord, DType, MetricRecord};

/// One round's aggregation in progress ([`Strategy::train_fold`]).
pub trait TrainFold {
    /// Takes one reply in. A reply refused here (an error) is left out of the round, and the fold
    /// is exactly as it was before.
    fn add(&mut self, reply: TrainReply<'_>) -> Result<(), StrategyError>;

    /// Replies taken in so far.
    fn accepted(&self) -> usize;

    /// The next global arrays and the round's train metrics, from the replies taken in.
    fn finish(self: Box<Self>) -> Result<(ArrayRecord, MetricRecord), StrategyError>;
}

/// Keeps a copy of every reply and hands them all to [`Strategy::aggregate_train`] at the end:
/// what a strategy that needs every reply at once (a median, Krum's distances) does. Each reply is
/// checked on its own as it comes (against the arrays the round sent out, never against another
/// reply), so a bad reply is left out instead of failing the round when the strategy sees them
/// all, and cannot push good ones out by arriving first.
pub(crate) struct KeepAll<'a, S: Strategy + ?Sized> {
    strategy: &'a mut S,
    round: u64,
    current: &'a ArrayRecord,
    replies: Vec<(ArrayRecord, MetricRecord)>,
}

impl<'a, S: Strategy + ?Sized> KeepAll<'a, S> {
    pub(crate) fn new(strategy: &'a mut S, round: u64, current: &'a ArrayRecord) -> Self {
        KeepAll {
            strategy,
            round,
            current,
            replies: Vec::new(),
        }
    }
}

impl<S: Strategy + ?Sized> TrainFold for KeepAll<'_, S> {
    fn add(&mut self, reply: TrainReply<'_>) -> Result<(), StrategyError> {
        usable_weight(reply.metrics, self.strategy.weighted_by_key())?;
        check_f32_arrays(reply.arrays)?;
        check_arrays_like(self.current, reply.arrays)?;
        check_finite(reply.arrays)?;
        self.replies
            .push((reply.arrays.clone(), reply.metrics.clone()));
        Ok(())
    }

    fn accepted(&self) -> usize {
        self.replies.len()
    }

    fn finish(self: Box<Self>) -> Result<(ArrayRecord, MetricRecord), StrategyError> {
        let metrics: Vec<&MetricRecord> = self.replies.iter().map(|(_, m)| m).collect();
        let metrics = common_metrics(&metrics);
        let replies: Vec<TrainReply<'_>> = self
            .replies
            .iter()
            .zip(&metrics)
            .map(|((arrays, _), metrics)| TrainReply { arrays, metrics })
            .collect();
        self.strategy
            .aggregate_train(self.round, self.current, &replies)
    }
}

/// Every array f32, with as many bytes as its shape says.
fn check_f32_arrays(record: &ArrayRecord) -> Result<(), StrategyError> {
    for (name, array) in record.iter() {
        if array.dtype != DType::F32 {
            return Err(StrategyError::NotF32(name.to_string()));
        }
        array
            .validate()
            .map_err(|e| StrategyError::Inconsistent(format!("array {name:?}: {e}")))?;
    }
    Ok(())
}

/// `record` has `model`'s array names (in any order, as Flower allows) and shapes.
fn check_arrays_like(model: &ArrayRecord, record: &ArrayRecord) -> Result<(), StrategyError> {
    if record.len() != model.len() {
        return Err(StrategyError::Inconsistent(format!(
            "{} arrays where {} were expected",
            record.len(),
            model.len()
        )));
    }
    for (name, expected) in model.iter() {
        let array = record
            .get(name)
            .ok_or_else(|| StrategyError::Inconsistent(format!("array {name:?} is missing")))?;
        if array.shape != expected.shape {
            return Err(StrategyError::Inconsistent(format!(
                "array {name:?} has shape {:?}, expected {:?}",
                array.shape, expected.shape
            )));
        }
    }
    Ok(())
}
