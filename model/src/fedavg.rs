//! Federated averaging as a pure function over [`ArrayRecord`]s, folded one reply at a time so memory
//! stays at one model (plus the reply being read) whatever the number of nodes.
//!
//! Each reply is checked before it touches the running sum: same array names in the same order,
//! same dtypes and shapes, only finite values, and a positive finite weight. The check and the
//! accumulation walk the data together in cache-sized blocks, so each reply is read from memory once.

use thiserror::Error;
use wire::{Array, ArrayRecord, DType};

/// Elements per block: checked for finiteness, then accumulated, while still in cache.
const BLOCK: usize = 4096;

/// Why a reply was not aggregated, or why there is no aggregate.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum AggregationError {
    /// The reply's arrays do not match the model's names, order, dtypes or shapes.
    #[error("arrays do not match the model: {0}")]
    Mismatch(String),
    /// The reply holds NaN or infinity.
    #[error("array {0:?} holds NaN or infinite values")]
    NotFinite(String),
    /// The weight (number of examples) is zero, negative or not finite.
    #[error("weight {0} is not a positive number of examples")]
    BadWeight(f64),
    /// Only floating-point arrays can be averaged.
    #[error("array {name:?} has dtype {dtype}, which cannot be averaged")]
    UnsupportedDType {
        /// The array.
        name: String,
        /// Its dtype name.
        dtype: &'static str,
    },
    /// Nothing was aggregated.
    #[error("no valid replies to aggregate")]
    Empty,
}

/// The running weighted sum of replies.
#[derive(Debug, Clone)]
pub struct FedAvg {
    /// Array names, dtypes and shapes every reply must have, in order.
    layout: Vec<(String, DType, Vec<u64>)>,
    /// Weighted sums, one per array, in f32 (f64 arrays are summed in f32 too: 7 significant
    /// digits are far beyond what averaging model updates needs).
    sums: Vec<Vec<f32>>,
    /// Sum of accepted weights.
    total_weight: f64,
    /// Number of accepted replies.
    accepted: usize,
}

fn read_f32(bytes: &[u8], out: &mut [f32]) {
    for (value, chunk) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *value = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
}

fn read_f64(bytes: &[u8], out: &mut [f32]) {
    for (value, chunk) in out.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(chunk);
        *value = f64::from_le_bytes(raw) as f32;
    }
}

impl FedAvg {
    /// An empty sum shaped like `model` (the arrays that were sent out).
    pub fn new(model: &ArrayRecord) -> Result<Self, AggregationError> {
        let mut layout = Vec::with_capacity(model.len());
        let mut sums = Vec::with_capacity(model.len());
        for (name, array) in model.iter() {
            if !matches!(array.dtype, DType::F32 | DType::F64) {
                return Err(AggregationError::UnsupportedDType {
                    name: name.to_string(),
                    dtype: array.dtype.name(),
                });
            }
            layout.push((name.to_string(), array.dtype, array.shape.clone()));
            sums.push(vec![0f32; array.numel() as usize]);
        }
        Ok(FedAvg {
            layout,
            sums,
            total_weight: 0.0,
            accepted: 0,
        })
    }

    /// Number of replies folded in.
    pub fn accepted(&self) -> usize {
        self.accepted
    }

    /// Sum of the weights folded in.
    pub fn total_weight(&self) -> f64 {
        self.total_weight
    }

    fn check_layout(&self, reply: &ArrayRecord) -> Result<(), AggregationError> {
        if reply.len() != self.layout.len() {
            return Err(AggregationError::Mismatch(format!(
                "{} arrays, expected {}",
                reply.len(),
                self.layout.len()
            )));
        }
        for ((name, array), (want_name, want_dtype, want_shape)) in reply.iter().zip(&self.layout) {
            if name != want_name {
                return Err(AggregationError::Mismatch(format!(
                    "array {name:?} where {want_name:?} belongs"
                )));
            }
            if array.dtype != *want_dtype || array.shape != *want_shape {
                return Err(AggregationError::Mismatch(format!(
                    "{name:?} is {} {:?}, expected {} {:?}",
                    array.dtype.name(),
                    array.shape,
                    want_dtype.name(),
                    want_shape
                )));
            }
            array
                .validate()
                .map_err(|e| AggregationError::Mismatch(e.to_string()))?;
        }
        Ok(())
    }

    /// Folds in one reply with `weight` (its number of examples). A rejected reply leaves the sum
    /// exactly as it was.
    pub fn add(&mut self, reply: &ArrayRecord, weight: f64) -> Result<(), AggregationError> {
        if !(weight.is_finite() && weight > 0.0) {
            return Err(AggregationError::BadWeight(weight));
        }
        self.check_layout(reply)?;
        // First make sure every value is finite, block by block, keeping nothing; then fold.
        // Checking everything first means a NaN in the last array cannot corrupt the sum.
        let mut block = vec![0f32; BLOCK];
        for (name, array) in reply.iter() {
            for_each_block(array, &mut block, |values| {
                if values.iter().all(|v| v.is_finite()) {
                    Ok(())
                } else {
                    Err(AggregationError::NotFinite(name.to_string()))
                }
            })?;
        }
        let w = weight as f32;
        for ((_, array), sum) in reply.iter().zip(&mut self.sums) {
            let mut offset = 0;
            for_each_block(array, &mut block, |values| {
                for (s, v) in sum[offset..offset + values.len()].iter_mut().zip(values) {
                    *s += w * v;
                }
                offset += values.len();
                Ok(())
            })?;
        }
        self.total_weight += weight;
        self.accepted += 1;
        Ok(())
    }

    /// The weighted mean, in the model's dtypes.
    pub fn finish(self) -> Result<ArrayRecord, AggregationError> {
        if self.accepted == 0 {
            return Err(AggregationError::Empty);
        }
        let scale = (1.0 / self.total_weight) as f32;
        let mut record = ArrayRecord::new();
        for ((name, dtype, shape), sum) in self.layout.into_iter().zip(self.sums) {
            let data: Vec<u8> = match dtype {
                DType::F64 => sum
                    .iter()
                    .flat_map(|s| f64::from(s * scale).to_le_bytes())
                    .collect(),
                _ => sum.iter().flat_map(|s| (s * scale).to_le_bytes()).collect(),
            };
            record.insert(name, Array { dtype, shape, data });
        }
        Ok(record)
    }
}

/// Decodes `array` block by block into `block` and hands each block to `visit`.
fn for_each_block(
    array: &Array,
    block: &mut [f32],
    mut visit: impl FnMut(&[f32]) -> Result<(), AggregationError>,
) -> Result<(), AggregationError> {
    let width = array.dtype.size() as usize;
    for bytes in array.data.chunks(BLOCK * width) {
        let values = &mut block[..bytes.len() / width];
        match array.dtype {
            DType::F64 => read_f64(bytes, values),
            _ => read_f32(bytes, values),
        }
        visit(values)?;
    }
    Ok(())
}

/// Weighted mean of `(record, weight)` pairs in one call.
pub fn aggregate<'a>(
    model: &ArrayRecord,
    replies: impl IntoIterator<Item = (&'a ArrayRecord, f64)>,
) -> Result<ArrayRecord, AggregationError> {
    let mut fedavg = FedAvg::new(model)?;
    for (reply, weight) in replies {
        fedavg.add(reply, weight)?;
    }
    fedavg.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(values: &[(&str, &[f32])]) -> ArrayRecord {
        values
            .iter()
            .map(|(name, v)| {
                (
                    name.to_string(),
                    Array::from_f32(vec![v.len() as u64], v).unwrap(),
                )
            })
            .collect()
    }

    fn values(record: &ArrayRecord, name: &str) -> Vec<f32> {
        record.get(name).unwrap().to_f32().unwrap()
    }

    #[test]
    fn fedavg_weights_by_num_examples() {
        let model = record(&[("w", &[0.0, 0.0]), ("b", &[0.0])]);
        let a = record(&[("w", &[1.0, 2.0]), ("b", &[10.0])]);
        let b = record(&[("w", &[4.0, 8.0]), ("b", &[40.0])]);
        let mean = aggregate(&model, [(&a, 1.0), (&b, 3.0)]).unwrap();
        // (1*1 + 3*4)/4 = 3.25 ; (1*2 + 3*8)/4 = 6.5 ; (10 + 120)/4 = 32.5
        assert_eq!(values(&mean, "w"), [3.25, 6.5]);
        assert_eq!(values(&mean, "b"), [32.5]);
    }

    #[test]
    fn zero_negative_and_nan_weights_are_rejected() {
        let model = record(&[("w", &[0.0])]);
        let mut fedavg = FedAvg::new(&model).unwrap();
        for weight in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                fedavg.add(&model, weight),
                Err(AggregationError::BadWeight(_))
            ));
        }
        assert_eq!(fedavg.finish(), Err(AggregationError::Empty));
    }

    #[test]
    fn empty_input_has_no_aggregate() {
        let model = record(&[("w", &[0.0])]);
        assert_eq!(aggregate(&model, []), Err(AggregationError::Empty));
    }

    #[test]
    fn mismatched_names_shapes_and_order_are_rejected() {
        let model = record(&[("w", &[0.0, 0.0]), ("b", &[0.0])]);
        let mut fedavg = FedAvg::new(&model).unwrap();
        let renamed = record(&[("x", &[1.0, 1.0]), ("b", &[1.0])]);
        let reshaped = record(&[("w", &[1.0]), ("b", &[1.0])]);
        let reordered = record(&[("b", &[1.0]), ("w", &[1.0, 1.0])]);
        let missing = record(&[("w", &[1.0, 1.0])]);
        for bad in [renamed, reshaped, reordered, missing] {
            assert!(matches!(
                fedavg.add(&bad, 1.0),
                Err(AggregationError::Mismatch(_))
            ));
        }
        assert_eq!(fedavg.accepted(), 0);
    }

    #[test]
    fn a_reply_with_nan_leaves_the_sum_untouched() {
        let model = record(&[("w", &[0.0, 0.0]), ("b", &[0.0])]);
        let good = record(&[("w", &[2.0, 2.0]), ("b", &[2.0])]);
        let poisoned = record(&[("w", &[1.0, 1.0]), ("b", &[f32::NAN])]);
        let mut fedavg = FedAvg::new(&model).unwrap();
        fedavg.add(&good, 1.0).unwrap();
        assert_eq!(
            fedavg.add(&poisoned, 1.0),
            Err(AggregationError::NotFinite("b".into()))
        );
        let mean = fedavg.finish().unwrap();
        assert_eq!(values(&mean, "w"), [2.0, 2.0]);
    }

    #[test]
    fn integer_arrays_cannot_be_averaged() {
        let model: ArrayRecord = [(
            "steps".to_string(),
            Array {
                dtype: DType::I64,
                shape: vec![],
                data: 0i64.to_le_bytes().to_vec(),
            },
        )]
        .into_iter()
        .collect();
        assert!(matches!(
            FedAvg::new(&model),
            Err(AggregationError::UnsupportedDType { .. })
        ));
    }

    #[test]
    fn large_arrays_cross_block_boundaries_correctly() {
        let n = BLOCK * 2 + 17;
        let ones = vec![1.0f32; n];
        let threes = vec![3.0f32; n];
        let model = record(&[("w", &ones)]);
        let mean = aggregate(
            &model,
            [
                (&record(&[("w", &ones)]), 1.0),
                (&record(&[("w", &threes)]), 1.0),
            ],
        )
        .unwrap();
        assert!(values(&mean, "w").iter().all(|&v| v == 2.0));
    }
}
