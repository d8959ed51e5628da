//! The two inner loops every convolution here reduces to, written over blocks of [`LANES`]
//! positions held in registers, and compiled once per instruction set the CPU may have:
//!
//! - [`correlate`]: `out[o][p] = Σ_k weight[k][o] · src[offset[k] + p]`, a convolution whose
//!   input patches are read in place at `offset[k]` (no im2col copy);
//! - [`dot_rows`]: `into[o][k] += Σ_p rows[o][p] · src[offset[k] + p]`, its weight gradient.
//!
//! Both are plain Rust over fixed-size arrays, which the compiler turns into vector code. Which
//! build runs is decided per call by asking the CPU ([`Build`]): AVX-512, else AVX2 with FMA,
//! else the portable build (SSE2 on x86-64, NEON on aarch64). The portable build on x86-64
//! multiplies and adds separately, since `mul_add` without an FMA unit is a slow library call;
//! aarch64 always has FMA. Fused and separate multiply-adds round differently, so results agree
//! across machines to float rounding, not bit for bit.

/// Positions per block: one AVX-512 register, two AVX2 ones.
pub(crate) const LANES: usize = 16;

/// Output rows [`correlate`] computes together: each source block loaded is used this many times,
/// and as many independent sums are in flight (an FMA's latency is four cycles, and two can start
/// every cycle).
const ROWS_TOGETHER: usize = 8;

/// Output rows [`dot_rows`] computes together.
const GROUP: usize = 4;

/// Multiply-add, fused or not.
trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

/// One rounding: the FMA instruction.
struct Fused;

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// Two roundings: for CPUs without FMA.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Separate;

impl MulAdd for Separate {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// The portable build's multiply-add: separate on x86-64, whose baseline has no FMA; fused on
/// aarch64, whose baseline has it.
#[cfg(target_arch = "x86_64")]
type Portable = Separate;
#[cfg(not(target_arch = "x86_64"))]
type Portable = Fused;

/// Which compiled build of a loop runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Build {
    /// AVX-512F and FMA (x86-64).
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX2 and FMA (x86-64).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// The target's baseline.
    Portable,
}

impl Build {
    /// Every build this CPU can run, fastest first: the tests run them all.
    #[cfg(test)]
    fn available() -> Vec<Build> {
        let mut builds = Vec::with_capacity(3);
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("fma") {
                builds.push(Build::Avx512);
            }
            if has!("avx2") && has!("fma") {
                builds.push(Build::Avx2);
            }
        }
        builds.push(Build::Portable);
        builds
    }

    /// The fastest build this CPU can run. The standard library caches what the CPU said, so
    /// asking on every call costs a load and a branch.
    fn detected() -> Build {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("fma") {
                return Build::Avx512;
            }
            if has!("avx2") && has!("fma") {
                return Build::Avx2;
            }
        }
        Build::Portable
    }
}

/// A source read at `offsets[k] + p` for `p < len`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Patches<'a> {
    pub src: &'a [f32],
    pub offsets: &'a [usize],
    pub len: usize,
}

impl Patches<'_> {
    /// Whether every read stays inside `src`.
    fn fits(&self) -> bool {
        self.len == 0
            || self.offsets.iter().all(|offset| {
                offset
                    .checked_add(self.len)
                    .is_some_and(|end| end <= self.src.len())
            })
    }
}

/// `out[o * out_stride + p] = Σ_k weights[k * outs + o] · src[offsets[k] + p]` for `o < outs` and
/// `p < patches.len`.
///
/// # Panics
/// When a read or write would leave its slice: a bug in the caller, since every shape comes from
/// a checked [`crate::ConvPoolShape`].
pub(crate) fn correlate(
    out: &mut [f32],
    out_stride: usize,
    outs: usize,
    patches: Patches<'_>,
    weights: &[f32],
) {
    assert!(patches.fits(), "correlate: a patch leaves its source");
    assert_eq!(
        weights.len(),
        patches.offsets.len() * outs,
        "correlate: weights"
    );
    assert!(
        outs == 0 || (outs - 1) * out_stride + patches.len <= out.len(),
        "correlate: output too short"
    );
    correlate_on(Build::detected(), out, out_stride, outs, patches, weights)
}

/// [`correlate`] on a given build.
fn correlate_on(
    build: Build,
    out: &mut [f32],
    out_stride: usize,
    outs: usize,
    patches: Patches<'_>,
    weights: &[f32],
) {
    match build {
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        // SAFETY: a `Build` other than `Portable` is only made by `Build::detected` and
        // `Build::available`, after the CPU has said it has every feature the function was
        // compiled for (AVX-512F and FMA here); that is the only requirement of calling it.
        Build::Avx512 => unsafe { correlate_avx512(out, out_stride, outs, patches, weights) },
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        // SAFETY: as above.
        Build::Avx2 => unsafe { correlate_avx2(out, out_stride, outs, patches, weights) },
        Build::Portable => correlate_in::<Portable>(out, out_stride, outs, patches, weights),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn correlate_avx512(
    out: &mut [f32],
    out_stride: usize,
    outs: usize,
    patches: Patches<'_>,
    weights: &[f32],
) {
    correlate_in::<Fused>(out, out_stride, outs, patches, weights)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn correlate_avx2(
    out: &mut [f32],
    out_stride: usize,
    outs: usize,
    patches: Patches<'_>,
    weights: &[f32],
) {
    correlate_in::<Fused>(out, out_stride, outs, patches, weights)
}

#[inline(always)]
fn correlate_in<M: MulAdd>(
    out: &mut [f32],
    out_stride: usize,
    outs: usize,
    patches: Patches<'_>,
    weights: &[f32],
) {
    let mut first = 0;
    while first < outs {
        let rows = (outs - first).min(ROWS_TOGETHER);
        if patches.len < LANES {
            correlate_narrow::<M>(out, out_stride, outs, first..first + rows, patches, weights);
        } else {
            // Full blocks, then the block that ends at the last position: its values are
            // assigned, not accumulated, so recomputing the overlap is harmless.
            let last = patches.len - LANES;
            let starts = (0..=last)
                .step_by(LANES)
                .chain((!last.is_multiple_of(LANES)).then_some(last));
            for start in starts {
                let block = Block {
                    out_stride,
                    outs,
                    first,
                    start,
                };
                // A closure here would be compiled without the caller's target features.
                match rows {
                    1 => correlate_1::<M>(out, block, patches, weights),
                    2 => correlate_2::<M>(out, block, patches, weights),
                    3 => correlate_3::<M>(out, block, patches, weights),
                    4 => correlate_4::<M>(out, block, patches, weights),
                    5 => correlate_5::<M>(out, block, patches, weights),
                    6 => correlate_6::<M>(out, block, patches, weights),
                    7 => correlate_7::<M>(out, block, patches, weights),
                    _ => correlate_8::<M>(out, block, patches, weights),
                }
            }
        }
        first += rows;
    }
}

/// Where one block of [`correlate`] goes.
#[derive(Clone, Copy)]
struct Block {
    out_stride: usize,
    outs: usize,
    first: usize,
    start: usize,
}

/// Defines `$name`: rows `first..first + $rows` of [`correlate`] at positions
/// `start..start + LANES`. Written out row by row, not as a loop over rows: given a loop, the
/// compiler vectorises across rows (gathering the source with a stride) instead of across lanes.
macro_rules! correlate_rows {
    ($name:ident, $rows:literal: $($row:literal)+) => {
        #[inline(always)]
        fn $name<M: MulAdd>(
            out: &mut [f32],
            Block {
                out_stride,
                outs,
                first,
                start,
            }: Block,
            patches: Patches<'_>,
            weights: &[f32],
        ) {
            let mut sums = [[0.0f32; LANES]; $rows];
            for (offset, weights) in patches.offsets.iter().zip(weights.chunks_exact(outs)) {
                let src = block(patches.src, offset + start);
                let weights = &weights[first..][..$rows];
                $(scale_add_lanes::<M>(&mut sums[$row], weights[$row], src);)+
            }
            $(out[(first + $row) * out_stride + start..][..LANES].copy_from_slice(&sums[$row]);)+
        }
    };
}

correlate_rows!(correlate_1, 1: 0);
correlate_rows!(correlate_2, 2: 0 1);
correlate_rows!(correlate_3, 3: 0 1 2);
correlate_rows!(correlate_4, 4: 0 1 2 3);
correlate_rows!(correlate_5, 5: 0 1 2 3 4);
correlate_rows!(correlate_6, 6: 0 1 2 3 4 5);
correlate_rows!(correlate_7, 7: 0 1 2 3 4 5 6);
correlate_rows!(correlate_8, 8: 0 1 2 3 4 5 6 7);

/// `sums += weight * values`, lane by lane.
#[inline(always)]
fn scale_add_lanes<M: MulAdd>(sums: &mut [f32; LANES], weight: f32, values: &[f32; LANES]) {
    for lane in 0..LANES {
        sums[lane] = M::mul_add(weight, values[lane], sums[lane]);
    }
}

/// [`correlate`] for rows `rows` when there are fewer positions than one block.
#[inline(always)]
fn correlate_narrow<M: MulAdd>(
    out: &mut [f32],
    out_stride: usize,
    outs: usize,
    rows: std::ops::Range<usize>,
    patches: Patches<'_>,
    weights: &[f32],
) {
    for row in rows {
        let out = &mut out[row * out_stride..][..patches.len];
        out.fill(0.0);
        for (offset, weights) in patches.offsets.iter().zip(weights.chunks_exact(outs)) {
            let src = &patches.src[*offset..][..patches.len];
            for (out, &value) in out.iter_mut().zip(src) {
                *out = M::mul_add(weights[row], value, *out);
            }
        }
    }
}

/// `into[o * k_count + k] += Σ_p rows[o * row_stride + p] · src[offsets[k] + p]` for `o < outs`,
/// `k < k_count` (the number of offsets) and `p < patches.len`, where each `into` entry is a
/// block of [`Lanes`]: position `p` adds to lane `p % LANES`. Keeping the sums lane-wide across
/// calls leaves one horizontal sum per entry ([`sum_lanes`]) instead of one per call.
///
/// # Panics
/// As [`correlate`].
pub(crate) fn dot_rows(
    into: &mut [Lanes],
    outs: usize,
    rows: &[f32],
    row_stride: usize,
    patches: Patches<'_>,
) {
    assert!(patches.fits(), "dot_rows: a patch leaves its source");
    assert_eq!(into.len(), outs * patches.offsets.len(), "dot_rows: output");
    assert!(
        outs == 0 || (outs - 1) * row_stride + patches.len <= rows.len(),
        "dot_rows: rows too short"
    );
    dot_rows_on(Build::detected(), into, outs, rows, row_stride, patches)
}

/// [`dot_rows`] on a given build.
fn dot_rows_on(
    build: Build,
    into: &mut [Lanes],
    outs: usize,
    rows: &[f32],
    row_stride: usize,
    patches: Patches<'_>,
) {
    match build {
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        // SAFETY: as in `correlate_on`.
        Build::Avx512 => unsafe { dot_rows_avx512(into, outs, rows, row_stride, patches) },
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        // SAFETY: as in `correlate_on`.
        Build::Avx2 => unsafe { dot_rows_avx2(into, outs, rows, row_stride, patches) },
        Build::Portable => dot_rows_in::<Portable>(into, outs, rows, row_stride, patches),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn dot_rows_avx512(
    into: &mut [Lanes],
    outs: usize,
    rows: &[f32],
    row_stride: usize,
    patches: Patches<'_>,
) {
    dot_rows_in::<Fused>(into, outs, rows, row_stride, patches)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_rows_avx2(
    into: &mut [Lanes],
    outs: usize,
    rows: &[f32],
    row_stride: usize,
    patches: Patches<'_>,
) {
    dot_rows_in::<Fused>(into, outs, rows, row_stride, patches)
}

#[inline(always)]
fn dot_rows_in<M: MulAdd>(
    into: &mut [Lanes],
    outs: usize,
    rows: &[f32],
    row_stride: usize,
    patches: Patches<'_>,
) {
    let k_count = patches.offsets.len();
    let mut first = 0;
    while first < outs {
        let group = (outs - first).min(GROUP);
        let mut tap = 0;
        while tap < k_count {
            let taps = (k_count - tap).min(TAPS);
            let block = DotBlock {
                rows,
                row_stride,
                first,
                patches,
                tap,
            };
            let into = DotInto {
                into: &mut *into,
                k_count,
            };
            match (group, taps) {
                (1, 1) => dot_block::<M, 1, 1>(into, block),
                (2, 1) => dot_block::<M, 2, 1>(into, block),
                (3, 1) => dot_block::<M, 3, 1>(into, block),
                (_, 1) => dot_block::<M, GROUP, 1>(into, block),
                (1, _) => dot_block::<M, 1, TAPS>(into, block),
                (2, _) => dot_block::<M, 2, TAPS>(into, block),
                (3, _) => dot_block::<M, 3, TAPS>(into, block),
                _ => dot_block::<M, GROUP, TAPS>(into, block),
            }
            tap += taps;
        }
        first += group;
    }
}

/// Taps taken together by [`dot_rows`]: each row block loaded is used this many times.
const TAPS: usize = 2;

/// Which rows and taps one block of [`dot_rows`] covers.
#[derive(Clone, Copy)]
struct DotBlock<'a> {
    rows: &'a [f32],
    row_stride: usize,
    first: usize,
    patches: Patches<'a>,
    tap: usize,
}

/// Where [`dot_rows`] adds its sums.
struct DotInto<'a> {
    into: &'a mut [Lanes],
    k_count: usize,
}

/// `into[first + r][tap + t] += rows[first + r][p] · src[offsets[tap + t] + p]`, lane-wide, for
/// `r < ROWS`, `t < T`.
#[inline(always)]
fn dot_block<M: MulAdd, const ROWS: usize, const T: usize>(
    DotInto { into, k_count }: DotInto<'_>,
    DotBlock {
        rows,
        row_stride,
        first,
        patches,
        tap,
    }: DotBlock<'_>,
) {
    let len = patches.len;
    let mut row_slices: [&[f32]; ROWS] = [&[]; ROWS];
    for (row, slice) in row_slices.iter_mut().enumerate() {
        *slice = &rows[(first + row) * row_stride..][..len];
    }
    let mut tap_slices: [&[f32]; T] = [&[]; T];
    for (t, slice) in tap_slices.iter_mut().enumerate() {
        *slice = &patches.src[patches.offsets[tap + t]..][..len];
    }
    let mut lanes = [[[0.0f32; LANES]; T]; ROWS];
    for (row, lanes) in lanes.iter_mut().enumerate() {
        for (t, lanes) in lanes.iter_mut().enumerate() {
            *lanes = into[(first + row) * k_count + tap + t];
        }
    }
    let blocks = len / LANES * LANES;
    for start in (0..blocks).step_by(LANES) {
        for t in 0..T {
            let values = block(tap_slices[t], start);
            for row in 0..ROWS {
                mul_add_lanes::<M>(&mut lanes[row][t], block(row_slices[row], start), values);
            }
        }
    }
    let tail = len - blocks;
    if tail > 0 {
        // The last, partial block, through zero-padded copies: a chain of scalar multiply-adds
        // here would cost more than all the full blocks of a short row.
        for t in 0..T {
            let mut values = [0.0f32; LANES];
            values[..tail].copy_from_slice(&tap_slices[t][blocks..]);
            for row in 0..ROWS {
                let mut padded = [0.0f32; LANES];
                padded[..tail].copy_from_slice(&row_slices[row][blocks..]);
                mul_add_lanes::<M>(&mut lanes[row][t], &padded, &values);
            }
        }
    }
    for (row, lanes) in lanes.iter().enumerate() {
        for (t, lanes) in lanes.iter().enumerate() {
            into[(first + row) * k_count + tap + t] = *lanes;
        }
    }
}

/// One entry of [`dot_rows`]'s sums, spread over lanes.
pub(crate) type Lanes = [f32; LANES];

/// Adds each entry's lanes onto `totals`.
pub(crate) fn sum_lanes(lanes: &[Lanes], totals: &mut [f32]) {
    for (total, lanes) in totals.iter_mut().zip(lanes) {
        *total += horizontal_sum(*lanes);
    }
}

/// `sums += a * b`, lane by lane: written as one loop over a fixed-size array, which the compiler
/// turns into one vector instruction (or two).
#[inline(always)]
fn mul_add_lanes<M: MulAdd>(sums: &mut [f32; LANES], a: &[f32; LANES], b: &[f32; LANES]) {
    for lane in 0..LANES {
        sums[lane] = M::mul_add(a[lane], b[lane], sums[lane]);
    }
}

/// The [`LANES`] values of `slice` from `start`.
#[inline(always)]
fn block(slice: &[f32], start: usize) -> &[f32; LANES] {
    slice[start..start + LANES]
        .try_into()
        .expect("a slice of LANES values is an array of LANES values")
}

/// The sum of one block's lanes, added pairwise: a tree the compiler keeps in vector registers,
/// where a running sum would be a chain of sixteen dependent additions.
#[inline(always)]
fn horizontal_sum(mut lanes: [f32; LANES]) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for lane in 0..width {
            lanes[lane] += lanes[lane + width];
        }
        width /= 2;
    }
    lanes[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|i| ((i as f32) * scale).sin()).collect()
    }

    #[test]
    fn both_loops_match_their_definitions_at_every_width_and_group() {
        for len in [1, 7, 16, 17, 40] {
            for outs in [1, 3, 4, 5, 6, 7, 8, 9] {
                let src = values(len + 30, 0.37);
                let offsets = [0, 3, 11, 30];
                let patches = Patches {
                    src: &src,
                    offsets: &offsets,
                    len,
                };
                let weights = values(offsets.len() * outs, 0.11);
                let stride = len + 2;
                for build in Build::available() {
                    let mut out = vec![f32::NAN; outs * stride];
                    correlate_on(build, &mut out, stride, outs, patches, &weights);
                    for o in 0..outs {
                        for p in 0..len {
                            let want: f32 = offsets
                                .iter()
                                .enumerate()
                                .map(|(k, off)| weights[k * outs + o] * src[off + p])
                                .sum();
                            let got = out[o * stride + p];
                            assert!(
                                (got - want).abs() < 1e-5,
                                "correlate {build:?} {len} {outs}: {got} {want}"
                            );
                        }
                    }
                    let rows = values(outs * stride, 0.23);
                    let mut lanes = vec![[0.0; LANES]; outs * offsets.len()];
                    dot_rows_on(build, &mut lanes, outs, &rows, stride, patches);
                    let mut into = vec![1.0; outs * offsets.len()];
                    sum_lanes(&lanes, &mut into);
                    for o in 0..outs {
                        for (k, off) in offsets.iter().enumerate() {
                            let want: f32 = 1.0
                                + (0..len)
                                    .map(|p| rows[o * stride + p] * src[off + p])
                                    .sum::<f32>();
                            let got = into[o * offsets.len() + k];
                            assert!(
                                (got - want).abs() < 1e-4,
                                "dot_rows {build:?} {len} {outs}: {got} {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "leaves its source")]
    fn a_patch_past_its_source_is_refused() {
        let src = [0.0; 8];
        let mut out = [0.0; 8];
        let patches = Patches {
            src: &src,
            offsets: &[4],
            len: 5,
        };
        correlate(&mut out, 8, 1, patches, &[1.0]);
    }
}
