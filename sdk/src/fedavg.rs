//! Federated averaging over [`ArrayRecord`]s, in two forms with the same result, bit for bit:
//!
//! - [`FedAvg`] folds replies in one at a time as they arrive, so memory stays at one model (plus
//!   the reply being read) whatever the number of nodes. Each reply is read twice: once to check
//!   it, once to fold it, because a rejected reply must leave the running sum exactly as it was.
//! - [`aggregate`] averages replies already in memory in one pass: block by block, every reply's
//!   block is checked and added into a cache-resident accumulator, and the mean is written once. A
//!   reply found bad part-way through is dropped and the pass restarts without it, so the result is
//!   still exact; rejections are rare, single passes the rule.
//!
//! Every reply must have the model's array names in the same order, the same dtypes and shapes,
//! only finite values, and a positive finite weight.

use thiserror::Error;
use wire::{Array, ArrayRecord, DType};

/// Elements per block of the streaming fold and the finiteness check.
const BLOCK: usize = 4096;

/// Elements per block of the one-pass mean: 1 MiB of f32 accumulator, which stays in the L2
/// cache, while each reply is read in runs long enough for the hardware prefetchers (shorter
/// runs measured 35% slower with ten replies of 10M parameters).
const PASS_BLOCK: usize = 1 << 18;

/// Replies the one-pass mean folds in per trip through the accumulator: each element is loaded
/// and stored once per group instead of once per reply, and the group's replies are read as
/// parallel streams.
const GROUP: usize = 4;

/// Why a reply was not aggregated, or why there is no aggregate.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum AggregationError {
    /// The reply's arrays do not match the model's names, order, dtypes or shapes.
    #[error("arrays do not match the model: {0}")]
    Mismatch(String),
    /// The reply holds NaN or infinity.
    #[error("array {0:?} holds NaN or infinite values")]
    NotFinite(String),
    /// The weight (number of examples) is below 1, not finite, or above [`MAX_WEIGHT`].
    #[error("weight {0} is not a number of examples between 1 and {MAX_WEIGHT}")]
    BadWeight(f64),
    /// Folding the reply in could take the sum beyond what f32 holds.
    #[error("array {0:?} would overflow the sum (values too large for their weight)")]
    Overflow(String),
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
    /// An upper bound of every accumulator's magnitude: the sum of each accepted reply's weight
    /// times a bound of its largest magnitude. A reply that would take it past [`SUM_CEILING`] is rejected
    /// before it touches the sums, so no accumulator can ever overflow.
    bound: f64,
    /// Memory the next mean is written into.
    spare: Spare,
}

/// Largest weight (number of examples) a reply may carry: 2^32. A "finite" 1e39 would become
/// infinity in f32, and a single node would outweigh any federation anyway.
pub const MAX_WEIGHT: f64 = 4_294_967_296.0;

/// Ceiling of [`FedAvg`]'s magnitude bound: half of f32's range, leaving room for rounding.
const SUM_CEILING: f64 = f32::MAX as f64 / 2.0;

/// Exponent bits of an f32: all set means infinity or NaN.
const F32_EXPONENT: u32 = 0x7f80_0000;

/// Little-endian f32 bytes seen as `f32`s in place: on a little-endian host, when the bytes are
/// 4-aligned (allocations are). Reading them as floats directly vectorises three times better
/// than assembling each value from its bytes; `None` sends callers to the byte-wise path.
fn as_f32s(bytes: &[u8]) -> Option<&[f32]> {
    if cfg!(target_endian = "little") {
        bytemuck::try_cast_slice(bytes).ok()
    } else {
        None
    }
}

/// Whether `value`'s exponent bits are all set (infinity or NaN), without a branch.
fn non_finite_bit(value: f32) -> u32 {
    u32::from(value.to_bits() & F32_EXPONENT == F32_EXPONENT)
}

/// An upper bound of the magnitudes of the f32s in `bytes` (little-endian), within a factor of two,
/// or `None` if one is NaN or infinite. It comes from the largest exponent: a byte-wide maximum per
/// value, which vectorises as well as a finiteness check alone (an all-ones exponent is NaN or
/// infinity). Every value is below 2^(e - 126).
fn f32_magnitude(bytes: &[u8]) -> Option<f64> {
    let exponent = |v: f32| (v.to_bits() >> 23) as u8;
    let largest = match as_f32s(bytes) {
        Some(values) => values.iter().fold(0u8, |m, &v| m.max(exponent(v))),
        None => bytes.chunks_exact(4).fold(0u8, |m, c| {
            m.max(exponent(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        }),
    };
    (largest != u8::MAX).then(|| 2f64.powi(i32::from(largest) - 126))
}

/// What an accumulator element holds before `weight * value` is added to it: itself, or, for
/// the first reply folded into recycled memory, zero (`0.0 + x` rather than `x`, so a negative
/// zero comes out as the zero-initialised sum would have it, bit for bit) without reading it.
fn base<const FIRST: bool>(a: f32) -> f32 {
    if FIRST { 0.0 } else { a }
}

/// `acc += weight * values` for the f32 values in `bytes` (`acc = 0 + weight * values` when
/// `FIRST`); returns whether all were finite.
fn fold_f32<const FIRST: bool>(acc: &mut [f32], bytes: &[u8], weight: f32) -> bool {
    if let Some(values) = as_f32s(bytes) {
        let mut bad = 0;
        for (a, &v) in acc.iter_mut().zip(values) {
            bad |= non_finite_bit(v);
            *a = base::<FIRST>(*a) + weight * v;
        }
        return bad == 0;
    }
    let mut finite = true;
    for (a, chunk) in acc.iter_mut().zip(bytes.chunks_exact(4)) {
        let value = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        finite &= value.is_finite();
        *a = base::<FIRST>(*a) + weight * value;
    }
    finite
}

/// `acc += w[0] * v[0]; acc += w[1] * v[1]; ...` element by element, in exactly that order (so
/// the sum is bit for bit the one of folding the replies one at a time), with each accumulator
/// element loaded and stored once. Returns, per reply, whether a value was not finite.
// Inlined into the one-pass loop, where it is vectorised with the group's slices in registers;
// left to itself, the compiler called it out of line and the pass ran four times slower.
#[inline(always)]
fn fold_group_f32<const K: usize>(
    acc: &mut [f32],
    values: [&[f32]; K],
    weights: [f32; K],
) -> [bool; K] {
    let values = values.map(|v| &v[..acc.len()]);
    let mut bad = [0u32; K];
    for (i, a) in acc.iter_mut().enumerate() {
        let mut sum = *a;
        for k in 0..K {
            let v = values[k][i];
            bad[k] |= non_finite_bit(v);
            sum += weights[k] * v;
        }
        *a = sum;
    }
    bad.map(|b| b != 0)
}

/// [`fold_f32`] for f64 values (summed in f32).
fn fold_f64<const FIRST: bool>(acc: &mut [f32], bytes: &[u8], weight: f32) -> bool {
    let mut finite = true;
    for (a, chunk) in acc.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(chunk);
        let value = f64::from_le_bytes(raw);
        finite &= value.is_finite();
        *a = base::<FIRST>(*a) + weight * value as f32;
    }
    finite
}

/// Folds `bytes` of `dtype` into `acc` (into zero when `FIRST`); returns whether all values were
/// finite.
fn fold<const FIRST: bool>(acc: &mut [f32], dtype: DType, bytes: &[u8], weight: f32) -> bool {
    match dtype {
        DType::F64 => fold_f64::<FIRST>(acc, bytes, weight),
        _ => fold_f32::<FIRST>(acc, bytes, weight),
    }
}

/// Checks that every array of `record` holds only finite values.
pub fn check_finite(record: &ArrayRecord) -> Result<(), AggregationError> {
    for (name, array) in record.iter() {
        if magnitude(array).is_none() {
            return Err(AggregationError::NotFinite(name.to_string()));
        }
    }
    Ok(())
}

/// An upper bound of the magnitudes in `array` (within a factor of two for f32), or `None` if a
/// value is NaN or infinite (f64 values beyond f32's range count as infinite: they are summed in
/// f32). One pass over the bytes.
fn magnitude(array: &Array) -> Option<f64> {
    match array.dtype {
        DType::F64 => {
            let mut largest = 0f64;
            for chunk in array.data.chunks_exact(8) {
                let mut raw = [0u8; 8];
                raw.copy_from_slice(chunk);
                let value = f64::from_le_bytes(raw);
                if !value.is_finite() {
                    return None;
                }
                largest = largest.max(value.abs());
            }
            (largest <= f64::from(f32::MAX)).then_some(largest)
        }
        _ => f32_magnitude(&array.data),
    }
}

/// Writes `sum * scale` into `out` (bytes of `dtype`, little-endian, exactly as many values as
/// `sum`), in one pass: straight into place when `out` can be seen as `f32`s. Returns whether
/// every value written is finite (checked in the same pass, so it costs no extra read).
fn write_scaled(out: &mut [u8], dtype: DType, sum: &[f32], scale: f32) -> bool {
    if dtype == DType::F32
        && cfg!(target_endian = "little")
        && let Ok(values) = bytemuck::try_cast_slice_mut::<u8, f32>(out)
    {
        let mut bad = 0;
        for (o, &s) in values.iter_mut().zip(sum) {
            *o = s * scale;
            bad |= non_finite_bit(*o);
        }
        return bad == 0;
    }
    let width = dtype.size() as usize;
    let mut bad = 0;
    for (o, &s) in out.chunks_exact_mut(width).zip(sum) {
        let value = s * scale;
        bad |= non_finite_bit(value);
        match dtype {
            DType::F64 => o.copy_from_slice(&f64::from(value).to_le_bytes()),
            _ => o.copy_from_slice(&value.to_le_bytes()),
        }
    }
    bad == 0
}

/// Memory for the next mean: the arrays of a record nobody needs any more (the model of the
/// round that just ended), already mapped into the process. Writing a mean into fresh memory
/// costs a page fault every 4 KiB, about as much as reading two replies; these cost nothing more.
#[derive(Debug, Default, Clone)]
pub struct Spare {
    /// The recycled arrays' bytes, in their record's order.
    buffers: Vec<Vec<u8>>,
}

impl Spare {
    /// Keeps `record`'s arrays' memory for the next mean.
    pub fn recycle(&mut self, mut record: ArrayRecord) {
        self.buffers = record
            .iter_mut()
            .map(|(_, array)| std::mem::take(&mut array.data))
            .collect();
    }

    /// `length` bytes for the mean's array at `position`: the recycled buffer of that position
    /// when it is large enough (the caller overwrites all of it), else new zeroed memory.
    fn take(&mut self, position: usize, length: usize) -> Vec<u8> {
        match self.buffers.get_mut(position).map(std::mem::take) {
            Some(mut buffer) if buffer.capacity() >= length => {
                buffer.resize(length, 0);
                buffer
            }
            _ => vec![0u8; length],
        }
    }
}

/// The names, dtypes and shapes every reply must match: the model's, floating point only.
fn layout_of(model: &ArrayRecord) -> Result<Vec<(String, DType, Vec<u64>)>, AggregationError> {
    model
        .iter()
        .map(|(name, array)| {
            if matches!(array.dtype, DType::F32 | DType::F64) {
                Ok((name.to_string(), array.dtype, array.shape.clone()))
            } else {
                Err(AggregationError::UnsupportedDType {
                    name: name.to_string(),
                    dtype: array.dtype.name(),
                })
            }
        })
        .collect()
}

/// Checks a reply's names, order, dtypes and shapes against `layout`.
fn check_layout(
    layout: &[(String, DType, Vec<u64>)],
    reply: &ArrayRecord,
) -> Result<(), AggregationError> {
    if reply.len() != layout.len() {
        return Err(AggregationError::Mismatch(format!(
            "{} arrays, expected {}",
            reply.len(),
            layout.len()
        )));
    }
    for ((name, array), (want_name, want_dtype, want_shape)) in reply.iter().zip(layout) {
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

/// Checks a reply's weight: a number of examples, at least 1 and at most [`MAX_WEIGHT`].
/// Evaluation weights its metrics the same way and uses the same check. A positive weight below 1
/// is refused too: one as small as 1e-300 becomes zero in f32, and a mean scaled by its inverse
/// would be NaN.
pub fn check_weight(weight: f64) -> Result<(), AggregationError> {
    if (1.0..=MAX_WEIGHT).contains(&weight) {
        Ok(())
    } else {
        Err(AggregationError::BadWeight(weight))
    }
}

impl FedAvg {
    /// An empty sum shaped like `model` (the arrays that were sent out).
    pub fn new(model: &ArrayRecord) -> Result<Self, AggregationError> {
        let layout = layout_of(model)?;
        let sums = model
            .iter()
            .map(|(_, array)| vec![0f32; array.numel() as usize])
            .collect();
        Ok(FedAvg {
            layout,
            sums,
            total_weight: 0.0,
            accepted: 0,
            bound: 0.0,
            spare: Spare::default(),
        })
    }

    /// Whether `model` has the names, dtypes and shapes this sum was made for.
    pub fn fits(&self, model: &ArrayRecord) -> bool {
        check_layout(&self.layout, model).is_ok()
    }

    /// Keeps `record`'s memory for the next mean (see [`FedAvg::take_mean`]): typically the model
    /// that the round now ending sent out.
    pub fn recycle(&mut self, record: ArrayRecord) {
        self.spare.recycle(record);
    }

    /// Number of replies folded in.
    pub fn accepted(&self) -> usize {
        self.accepted
    }

    /// Sum of the weights folded in.
    pub fn total_weight(&self) -> f64 {
        self.total_weight
    }

    /// Folds in one reply with `weight` (its number of examples). A rejected reply leaves the sum
    /// exactly as it was.
    pub fn add(&mut self, reply: &ArrayRecord, weight: f64) -> Result<(), AggregationError> {
        check_weight(weight)?;
        check_layout(&self.layout, reply)?;
        // Everything is checked before anything is folded: a NaN in the last array must not
        // reach the sum through the first, nor may a sum overflow halfway.
        let mut largest: Option<(&str, f64)> = None;
        for (name, array) in reply.iter() {
            let Some(m) = magnitude(array) else {
                return Err(AggregationError::NotFinite(name.to_string()));
            };
            if largest.is_none_or(|(_, l)| m > l) {
                largest = Some((name, m));
            }
        }
        let (name, largest) = largest.unwrap_or(("", 0.0));
        let bound = self.bound + weight * largest;
        if bound > SUM_CEILING {
            return Err(AggregationError::Overflow(name.to_string()));
        }
        self.bound = bound;
        let w = weight as f32;
        // The first reply is written rather than added: the sums may hold the last round's.
        let first = self.accepted == 0;
        for ((_, array), sum) in reply.iter().zip(&mut self.sums) {
            let width = array.dtype.size() as usize;
            for (acc, bytes) in sum.chunks_mut(BLOCK).zip(array.data.chunks(BLOCK * width)) {
                if first {
                    fold::<true>(acc, array.dtype, bytes, w);
                } else {
                    fold::<false>(acc, array.dtype, bytes, w);
                }
            }
        }
        self.total_weight += weight;
        self.accepted += 1;
        Ok(())
    }

    /// The weighted mean, in the model's dtypes.
    pub fn finish(mut self) -> Result<ArrayRecord, AggregationError> {
        self.take_mean()
    }

    /// The weighted mean, in the model's dtypes, written into the memory given to
    /// [`FedAvg::recycle`]; then the sum starts over, empty, for the next round over the same
    /// layout, keeping its own memory. A round that recycles the model it sent out touches no
    /// fresh memory. With nothing folded in, it is [`AggregationError::Empty`] and nothing changes.
    pub fn take_mean(&mut self) -> Result<ArrayRecord, AggregationError> {
        if self.accepted == 0 {
            return Err(AggregationError::Empty);
        }
        let scale = (1.0 / self.total_weight) as f32;
        let mut record = ArrayRecord::new();
        for (position, ((name, dtype, shape), sum)) in
            self.layout.iter().zip(&self.sums).enumerate()
        {
            let mut data = self.spare.take(position, sum.len() * dtype.size() as usize);
            // The magnitude bound keeps every sum, and so every mean, finite.
            write_scaled(&mut data, *dtype, sum, scale);
            record.insert(
                name.clone(),
                Array {
                    dtype: *dtype,
                    shape: shape.clone(),
                    data,
                    serialised: None,
                },
            );
        }
        self.total_weight = 0.0;
        self.accepted = 0;
        self.bound = 0.0;
        Ok(record)
    }
}

/// The outcome of [`aggregate`]: the mean of the accepted replies, and why the others were not.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    /// The weighted mean, in the model's dtypes.
    pub mean: ArrayRecord,
    /// Rejected replies: their index in the input, and the reason.
    pub rejected: Vec<(usize, AggregationError)>,
}

/// Weighted mean of `replies` (record, number of examples), all in memory, in one pass over their
/// bytes. Bad replies are left out and reported; with none left the result is
/// [`AggregationError::Empty`]. The mean equals [`FedAvg`] folding the accepted replies in order.
pub fn aggregate(
    model: &ArrayRecord,
    replies: &[(&ArrayRecord, f64)],
) -> Result<Aggregate, AggregationError> {
    aggregate_into(model, replies, &mut Spare::default())
}

/// [`aggregate`], writing the mean into `spare`'s memory where it fits (typically the model the
/// round sent out, given to [`Spare::recycle`]), so that no fresh memory is touched.
pub fn aggregate_into(
    model: &ArrayRecord,
    replies: &[(&ArrayRecord, f64)],
    spare: &mut Spare,
) -> Result<Aggregate, AggregationError> {
    let layout = layout_of(model)?;
    let mut rejected = Vec::new();
    for (index, (reply, weight)) in replies.iter().enumerate() {
        if let Err(error) = check_weight(*weight).and_then(|()| check_layout(&layout, reply)) {
            rejected.push((index, error));
        }
    }
    loop {
        let accepted: Vec<(usize, &ArrayRecord, f32)> = replies
            .iter()
            .enumerate()
            .filter(|(index, _)| !rejected.iter().any(|(r, _)| r == index))
            .map(|(index, (reply, weight))| (index, *reply, *weight as f32))
            .collect();
        if accepted.is_empty() {
            return Err(AggregationError::Empty);
        }
        let total: f64 = accepted.iter().map(|&(index, _, _)| replies[index].1).sum();
        match one_pass(&layout, &accepted, (1.0 / total) as f32, spare) {
            Ok(mean) => return Ok(Aggregate { mean, rejected }),
            Err((index, error)) => rejected.push((index, error)),
        }
    }
}

/// The mean of `accepted` (index, reply, weight), block by block; or the first reply holding a
/// non-finite value, or the one that takes a sum beyond f32's range, with why.
fn one_pass(
    layout: &[(String, DType, Vec<u64>)],
    accepted: &[(usize, &ArrayRecord, f32)],
    scale: f32,
    spare: &mut Spare,
) -> Result<ArrayRecord, (usize, AggregationError)> {
    // Each reply's arrays in model order (their layout was checked: same count, names, shapes).
    let arrays: Vec<Vec<&Array>> = accepted
        .iter()
        .map(|(_, reply, _)| reply.iter().map(|(_, array)| array).collect())
        .collect();
    let mut mean = ArrayRecord::new();
    let longest = layout
        .iter()
        .map(|(_, _, shape)| shape.iter().product::<u64>() as usize)
        .max()
        .unwrap_or(0);
    let mut acc = vec![0f32; longest.min(PASS_BLOCK)];
    for (position, (name, dtype, shape)) in layout.iter().enumerate() {
        let width = dtype.size() as usize;
        let length = arrays.first().map_or(0, |first| first[position].data.len());
        let mut data = spare.take(position, length);
        for start in (0..length).step_by(PASS_BLOCK * width) {
            let end = (start + PASS_BLOCK * width).min(length);
            let acc = &mut acc[..(end - start) / width];
            acc.fill(0.0);
            let mut folded = 0;
            while folded < accepted.len() {
                let group = (accepted.len() - folded).min(GROUP);
                let bytes = |k: usize| &arrays[folded + k][position].data[start..end];
                let floats: Option<Vec<&[f32]>> = match dtype {
                    DType::F32 => (0..group).map(|k| as_f32s(bytes(k))).collect(),
                    _ => None,
                };
                let weights = |k: usize| accepted[folded + k].2;
                let bad = match floats.as_deref() {
                    Some(&[a, b, c, d]) => {
                        fold_group_f32(acc, [a, b, c, d], [0, 1, 2, 3].map(weights)).to_vec()
                    }
                    Some(&[a, b, c]) => {
                        fold_group_f32(acc, [a, b, c], [0, 1, 2].map(weights)).to_vec()
                    }
                    Some(&[a, b]) => fold_group_f32(acc, [a, b], [0, 1].map(weights)).to_vec(),
                    _ => (0..group)
                        .map(|k| !fold::<false>(acc, *dtype, bytes(k), weights(k)))
                        .collect(),
                };
                if let Some(k) = bad.iter().position(|&b| b) {
                    return Err((
                        accepted[folded + k].0,
                        AggregationError::NotFinite(name.clone()),
                    ));
                }
                folded += group;
            }
            if !write_scaled(&mut data[start..end], *dtype, acc, scale) {
                // Finite values, an infinite sum or mean: blame the reply weighing most in this block.
                let culprit = (0..accepted.len())
                    .map(|k| {
                        let bytes = &arrays[k][position].data[start..end];
                        let block = Array {
                            dtype: *dtype,
                            shape: vec![],
                            data: bytes.to_vec(),
                            serialised: None,
                        };
                        let m = magnitude(&block).unwrap_or(f64::INFINITY);
                        (k, f64::from(accepted[k].2) * m)
                    })
                    .max_by(|a, b| a.1.total_cmp(&b.1))
                    .map_or(0, |(k, _)| k);
                return Err((
                    accepted[culprit].0,
                    AggregationError::Overflow(name.clone()),
                ));
            }
        }
        mean.insert(
            name.clone(),
            Array {
                dtype: *dtype,
                shape: shape.clone(),
                data,
                serialised: None,
            },
        );
    }
    Ok(mean)
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
        let mean = aggregate(&model, &[(&a, 1.0), (&b, 3.0)]).unwrap().mean;
        // (1*1 + 3*4)/4 = 3.25 ; (1*2 + 3*8)/4 = 6.5 ; (10 + 120)/4 = 32.5
        assert_eq!(values(&mean, "w"), [3.25, 6.5]);
        assert_eq!(values(&mean, "b"), [32.5]);
    }

    #[test]
    fn zero_negative_nan_and_fractional_weights_are_rejected() {
        let model = record(&[("w", &[0.0])]);
        let mut fedavg = FedAvg::new(&model).unwrap();
        for weight in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-300, 1e-40, 0.5] {
            assert!(matches!(
                fedavg.add(&model, weight),
                Err(AggregationError::BadWeight(_))
            ));
        }
        assert_eq!(fedavg.finish(), Err(AggregationError::Empty));
    }

    #[test]
    fn a_finite_weight_too_large_for_f32_is_rejected_and_the_sum_stays_finite() {
        let model = record(&[("w", &[0.0, 0.0])]);
        let honest = record(&[("w", &[1.0, 2.0])]);
        for weight in [1e39, f64::from(f32::MAX), MAX_WEIGHT * 2.0] {
            let mut fedavg = FedAvg::new(&model).unwrap();
            fedavg.add(&honest, 10.0).unwrap();
            assert_eq!(
                fedavg.add(&honest, weight),
                Err(AggregationError::BadWeight(weight))
            );
            assert_eq!(values(&fedavg.finish().unwrap(), "w"), [1.0, 2.0]);
            let both = aggregate(&model, &[(&honest, 10.0), (&honest, weight)]).unwrap();
            assert_eq!(values(&both.mean, "w"), [1.0, 2.0]);
            assert_eq!(both.rejected, [(1, AggregationError::BadWeight(weight))]);
        }
    }

    #[test]
    fn values_near_f32_max_that_would_overflow_the_sum_are_rejected_untouched() {
        let model = record(&[("w", &[0.0, 0.0])]);
        let honest = record(&[("w", &[1.0, 2.0])]);
        let huge = record(&[("w", &[f32::MAX, 1.0])]);
        let mut fedavg = FedAvg::new(&model).unwrap();
        fedavg.add(&honest, 10.0).unwrap();
        assert_eq!(
            fedavg.add(&huge, 3.0),
            Err(AggregationError::Overflow("w".into()))
        );
        assert_eq!(values(&fedavg.finish().unwrap(), "w"), [1.0, 2.0]);

        let both = aggregate(&model, &[(&honest, 10.0), (&huge, 3.0)]).unwrap();
        assert!(values(&both.mean, "w").iter().all(|v| v.is_finite()));
        assert_eq!(values(&both.mean, "w"), [1.0, 2.0]);
        assert_eq!(both.rejected, [(1, AggregationError::Overflow("w".into()))]);
    }

    #[test]
    fn f64_values_beyond_f32_range_are_rejected() {
        let one_f64 = |value: f64| {
            ArrayRecord::new().with(
                "w",
                Array {
                    dtype: DType::F64,
                    shape: vec![1],
                    data: value.to_le_bytes().to_vec(),
                    serialised: None,
                },
            )
        };
        let (wide, model64) = (one_f64(1e300), one_f64(0.0));
        let mut fedavg = FedAvg::new(&model64).unwrap();
        assert!(matches!(
            fedavg.add(&wide, 1.0),
            Err(AggregationError::NotFinite(_))
        ));
        let only = aggregate(&model64, &[(&wide, 1.0)]);
        assert_eq!(only, Err(AggregationError::Empty));
    }

    #[test]
    fn empty_input_has_no_aggregate() {
        let model = record(&[("w", &[0.0])]);
        assert_eq!(aggregate(&model, &[]), Err(AggregationError::Empty));
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
                serialised: None,
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
            &[
                (&record(&[("w", &ones)]), 1.0),
                (&record(&[("w", &threes)]), 1.0),
            ],
        )
        .unwrap()
        .mean;
        assert!(values(&mean, "w").iter().all(|&v| v == 2.0));
    }

    /// `count` replies of two arrays spanning several blocks, with varied values and weights.
    fn replies(count: usize) -> Vec<(ArrayRecord, f64)> {
        (0..count)
            .map(|i| {
                let w: Vec<f32> = (0..PASS_BLOCK * 2 + 5)
                    .map(|j| ((i * 7919 + j * 31) % 1000) as f32 * 0.0137 - 3.0)
                    .collect();
                let b: Vec<f32> = (0..9).map(|j| (i + j) as f32 * 0.5).collect();
                (record(&[("w", &w), ("b", &b)]), 1.0 + i as f64 * 2.5)
            })
            .collect()
    }

    #[test]
    fn unaligned_bytes_take_the_byte_wise_path_to_the_same_sums() {
        let values: Vec<f32> = (0..1000).map(|i| i as f32 * 0.37 - 50.0).collect();
        let mut shifted = vec![0u8];
        shifted.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        let unaligned = &shifted[1..];
        let aligned = bytemuck::cast_slice::<f32, u8>(&values);
        assert!(as_f32s(unaligned).is_none() && as_f32s(aligned).is_some());
        let (mut fast, mut slow) = (vec![1.5f32; 1000], vec![1.5f32; 1000]);
        assert!(fold_f32::<false>(&mut fast, aligned, 0.25));
        assert!(fold_f32::<false>(&mut slow, unaligned, 0.25));
        assert_eq!(fast, slow);
        let largest = f64::from(values.iter().fold(0f32, |m, v| m.max(v.abs())));
        let bound = f32_magnitude(aligned).unwrap();
        assert_eq!(f32_magnitude(unaligned), Some(bound));
        assert!(
            largest < bound && bound <= 2.0 * largest,
            "{largest} {bound}"
        );
        shifted[1 + 4 * 999..].copy_from_slice(&f32::NEG_INFINITY.to_le_bytes());
        assert_eq!(f32_magnitude(&shifted[1..]), None);
        assert!(!fold_f32::<false>(&mut slow, &shifted[1..], 1.0));
    }

    #[test]
    fn one_pass_and_streaming_agree_bit_for_bit() {
        // Every split of the replies into groups of up to GROUP folded together.
        for count in 1..=2 * GROUP + 1 {
            let inputs = replies(count);
            let model = inputs[0].0.clone();
            let borrowed: Vec<(&ArrayRecord, f64)> = inputs.iter().map(|(r, w)| (r, *w)).collect();
            let batch = aggregate(&model, &borrowed).unwrap();
            assert!(batch.rejected.is_empty());
            let mut streaming = FedAvg::new(&model).unwrap();
            for (reply, weight) in &borrowed {
                streaming.add(reply, *weight).unwrap();
            }
            assert_eq!(batch.mean, streaming.finish().unwrap(), "{count} replies");
        }
    }

    #[test]
    fn recycled_memory_gives_the_fresh_result_bit_for_bit_round_after_round() {
        let inputs = replies(5);
        let model = inputs[0].0.clone();
        let borrowed: Vec<(&ArrayRecord, f64)> = inputs.iter().map(|(r, w)| (r, *w)).collect();
        // Stale memory full of NaN, and a negative zero that the zeroed sum turns positive.
        let stale = record(&[
            ("w", &vec![f32::NAN; PASS_BLOCK * 2 + 5]),
            ("b", &[-0.0; 9]),
        ]);
        let zeros = record(&[("w", &vec![-0.0; PASS_BLOCK * 2 + 5]), ("b", &[-0.0; 9])]);
        let mut streaming = FedAvg::new(&model).unwrap();
        streaming.recycle(stale.clone());
        let mut spare = Spare::default();
        spare.recycle(stale);
        for round in 0..3 {
            let these: Vec<(&ArrayRecord, f64)> = match round {
                1 => vec![(&zeros, 1.0)],
                _ => borrowed[round..].to_vec(),
            };
            let fresh = aggregate(&model, &these).unwrap().mean;
            let mut folded = FedAvg::new(&model).unwrap();
            for (reply, weight) in &these {
                streaming.add(reply, *weight).unwrap();
                folded.add(reply, *weight).unwrap();
            }
            let recycled = streaming.take_mean().unwrap();
            assert_eq!(recycled, fresh, "round {round}");
            assert_eq!(folded.finish().unwrap(), fresh, "round {round}");
            let one_pass = aggregate_into(&model, &these, &mut spare).unwrap().mean;
            assert_eq!(one_pass, fresh, "round {round}");
            streaming.recycle(recycled);
            spare.recycle(one_pass);
        }
    }

    #[test]
    fn a_round_after_take_mean_starts_from_nothing_even_if_its_first_reply_is_rejected() {
        let model = record(&[("w", &[0.0, 0.0])]);
        let mut fedavg = FedAvg::new(&model).unwrap();
        fedavg.add(&record(&[("w", &[100.0, 100.0])]), 1.0).unwrap();
        let first = fedavg.take_mean().unwrap();
        fedavg.recycle(first);
        assert_eq!(fedavg.take_mean(), Err(AggregationError::Empty));
        assert_eq!(fedavg.accepted(), 0);
        let poisoned = record(&[("w", &[1.0, f32::NAN])]);
        assert!(fedavg.add(&poisoned, 1.0).is_err());
        fedavg.add(&record(&[("w", &[2.0, 4.0])]), 3.0).unwrap();
        assert_eq!(fedavg.total_weight(), 3.0);
        assert_eq!(values(&fedavg.take_mean().unwrap(), "w"), [2.0, 4.0]);
    }

    #[test]
    fn one_pass_drops_bad_replies_and_still_equals_folding_the_good_ones() {
        let mut inputs = replies(4);
        // A NaN in the last block of reply 2, and infinity in reply 3's second array: both found
        // part-way through the pass, after earlier blocks of them were already added.
        let mut poisoned = inputs[2].0.get("w").unwrap().to_f32().unwrap();
        let last = poisoned.len() - 1;
        poisoned[last] = f32::NAN;
        inputs[2].0 = record(&[("w", &poisoned), ("b", &[0.0; 9])]);
        inputs[3].0 = record(&[
            ("w", &inputs[3].0.get("w").unwrap().to_f32().unwrap()),
            ("b", &[f32::INFINITY; 9]),
        ]);
        let model = inputs[0].0.clone();
        let mut borrowed: Vec<(&ArrayRecord, f64)> = inputs.iter().map(|(r, w)| (r, *w)).collect();
        let reshaped = record(&[("w", &[1.0])]);
        borrowed.push((&reshaped, 1.0));
        borrowed.push((&model, 0.0));
        let batch = aggregate(&model, &borrowed).unwrap();
        let mut reasons: Vec<(usize, AggregationError)> = batch.rejected.clone();
        reasons.sort_by_key(|(index, _)| *index);
        assert_eq!(
            reasons,
            [
                (2, AggregationError::NotFinite("w".into())),
                (3, AggregationError::NotFinite("b".into())),
                (4, AggregationError::Mismatch("1 arrays, expected 2".into())),
                (5, AggregationError::BadWeight(0.0)),
            ]
        );
        let mut streaming = FedAvg::new(&model).unwrap();
        for (reply, weight) in &borrowed[..2] {
            streaming.add(reply, *weight).unwrap();
        }
        assert_eq!(batch.mean, streaming.finish().unwrap());
    }
}
