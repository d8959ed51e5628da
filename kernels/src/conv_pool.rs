//! One block of the seed's CNN as one pass: a 2-D convolution (stride 1, no padding) with its
//! bias, ReLU, and 2x2 max pooling with stride 2, forward and backward.
//!
//! The convolution is computed over whole input rows: position `y * width + x` of the output
//! takes the patch starting at the same position of the input, so each kernel tap `(c, i, j)`
//! reads the input in place, one contiguous run from offset `c * height * width + i * width + j`
//! ([`crate::lanes`]). No im2col copy is made; the `kernel_width - 1` positions at the end of each
//! row are computed and never read. The pooling picks each window's winner straight from that
//! output, so ReLU is applied to a quarter of the values. Max pooling commutes with ReLU and with
//! adding a per-channel bias, which is what lets the three fuse.
//!
//! The backward pass scatters the output gradient to each window's winner (where ReLU let it
//! through), takes the weight gradient as one dot product per (output channel, tap) against a
//! zero-padded copy of the image read in place (whole blocks of lanes, no partial last block), and
//! the input gradient as the same in-place convolution of the (padded) output gradient with the
//! kernel flipped. The batch is split into one contiguous chunk per thread
//! of rayon's pool; weight and bias gradients are summed chunk by chunk in order, so a result
//! depends on the thread count only through float rounding, and is the same from one run to the
//! next.

use crate::lanes::{LANES, Patches, correlate, dot_rows, sum_lanes};
use crate::scratch::{Scratch, sized, sized_lanes, with_scratch};
use rayon::prelude::*;
use std::fmt;

/// A pooling window's winner, by position: 0 top-left, 1 top-right, 2 bottom-left, 3
/// bottom-right; [`NO_WINNER`] where ReLU zeroed the window, so no gradient flows back.
pub type Winner = u8;

/// The winner of a window ReLU zeroed.
pub const NO_WINNER: Winner = 4;

/// Why a [`ConvPoolShape`] cannot be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeError(String);

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ShapeError {}

/// The dimensions of one block. Tensors are row-major: the input `[batch, in_channels, height,
/// width]`, the weight `[out_channels, in_channels, kernel_height, kernel_width]` (PyTorch's and
/// Burn's layout), the bias `[out_channels]`, the output `[batch, out_channels, height', width']`
/// with `height' = (height - kernel_height + 1) / 2` (rounded down, as max pooling does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvPoolShape {
    batch: usize,
    in_channels: usize,
    height: usize,
    width: usize,
    out_channels: usize,
    kernel_height: usize,
    kernel_width: usize,
}

impl ConvPoolShape {
    /// Checks the dimensions: every one positive, the kernel no larger than the image, at least one
    /// pooled output per image, and every tensor's length addressable.
    pub fn new(
        [batch, in_channels, height, width]: [usize; 4],
        [
            out_channels,
            weight_in_channels,
            kernel_height,
            kernel_width,
        ]: [usize; 4],
    ) -> Result<Self, ShapeError> {
        if weight_in_channels != in_channels {
            return Err(ShapeError(format!(
                "the weight takes {weight_in_channels} input channels, the input has {in_channels}"
            )));
        }
        let dims = [
            batch,
            in_channels,
            height,
            width,
            out_channels,
            kernel_height,
            kernel_width,
        ];
        if dims.contains(&0) {
            return Err(ShapeError(format!("a dimension is zero: {dims:?}")));
        }
        if kernel_height > height || kernel_width > width {
            return Err(ShapeError(format!(
                "a {kernel_height}x{kernel_width} kernel does not fit a {height}x{width} image"
            )));
        }
        let too_large = || ShapeError(format!("{dims:?} is too large to address"));
        let plane = height.checked_mul(width).ok_or_else(too_large)?;
        let taps = [in_channels, kernel_height, kernel_width]
            .into_iter()
            .try_fold(1usize, usize::checked_mul)
            .ok_or_else(too_large)?;
        // Every buffer the kernels make, in f32s: the input and the output gradient's padded
        // planes, the weight's lane-wide sums, and the padded image copy. The conv output and
        // the pooled output are smaller than these.
        let padded_plane = plane.checked_mul(3).and_then(|len| len.checked_add(LANES));
        let buffers = [
            plane
                .checked_mul(in_channels)
                .and_then(|image| image.checked_mul(batch)),
            plane
                .checked_mul(in_channels)
                .and_then(|image| image.checked_add(LANES)),
            padded_plane.and_then(|padded| padded.checked_mul(out_channels)),
            taps.checked_mul(out_channels)
                .and_then(|weight| weight.checked_mul(LANES)),
            plane
                .checked_mul(out_channels)
                .and_then(|output| output.checked_mul(batch)),
        ];
        let limit = isize::MAX as usize / std::mem::size_of::<f32>();
        if buffers.iter().any(|len| len.is_none_or(|len| len > limit)) {
            return Err(too_large());
        }
        let shape = ConvPoolShape {
            batch,
            in_channels,
            height,
            width,
            out_channels,
            kernel_height,
            kernel_width,
        };
        if shape.pooled_height() == 0 || shape.pooled_width() == 0 {
            return Err(ShapeError(format!(
                "a {}x{} convolution output is too small to pool 2x2",
                shape.conv_height(),
                shape.conv_width()
            )));
        }
        Ok(shape)
    }

    /// Images in the batch.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Height of the convolution's output.
    pub fn conv_height(&self) -> usize {
        self.height - self.kernel_height + 1
    }

    /// Width of the convolution's output.
    pub fn conv_width(&self) -> usize {
        self.width - self.kernel_width + 1
    }

    /// Height of the pooled output.
    pub fn pooled_height(&self) -> usize {
        self.conv_height() / 2
    }

    /// Width of the pooled output.
    pub fn pooled_width(&self) -> usize {
        self.conv_width() / 2
    }

    /// The output's dimensions.
    pub fn output_dims(&self) -> [usize; 4] {
        [
            self.batch,
            self.out_channels,
            self.pooled_height(),
            self.pooled_width(),
        ]
    }

    /// Values in the input.
    pub fn input_len(&self) -> usize {
        self.batch * self.image_len()
    }

    /// Values in the weight.
    pub fn weight_len(&self) -> usize {
        self.out_channels * self.patch_len()
    }

    /// Values in the output (and winners).
    pub fn output_len(&self) -> usize {
        self.batch * self.pooled_image_len()
    }

    fn image_len(&self) -> usize {
        self.in_channels * self.height * self.width
    }

    fn pooled_image_len(&self) -> usize {
        self.out_channels * self.pooled_height() * self.pooled_width()
    }

    /// Kernel taps per output channel: `in_channels * kernel_height * kernel_width`.
    fn patch_len(&self) -> usize {
        self.in_channels * self.kernel_height * self.kernel_width
    }

    /// Positions computed per output channel, counted in input rows: from the first output to the
    /// last, `y * width + x`.
    fn span(&self) -> usize {
        (self.conv_height() - 1) * self.width + self.conv_width()
    }

    /// How far a kernel reaches back from an output position in the input gradient's convolution:
    /// the zeros kept before (and after) each channel of the padded output gradient.
    fn reach(&self) -> usize {
        (self.kernel_height - 1) * self.width + self.kernel_width - 1
    }

    /// The zeros kept after each channel of the padded output gradient: enough for the input
    /// gradient's reach, and for the weight gradient to read whole blocks of lanes.
    fn trailing_zeros(&self) -> usize {
        self.reach().max(LANES)
    }

    /// One channel of the padded output gradient.
    fn padded_span(&self) -> usize {
        self.reach() + self.span() + self.trailing_zeros()
    }

    /// The weight gradient's dot products run over whole blocks of lanes: the positions past the
    /// span read zeros of the output gradient, so they add nothing.
    fn rounded_span(&self) -> usize {
        self.span().next_multiple_of(LANES)
    }

    /// Where each tap `(c, i, j)` starts reading an image, in the weight's order.
    fn tap_offsets(&self) -> Vec<usize> {
        let mut offsets = Vec::with_capacity(self.patch_len());
        for channel in 0..self.in_channels {
            for i in 0..self.kernel_height {
                for j in 0..self.kernel_width {
                    offsets.push(channel * self.height * self.width + i * self.width + j);
                }
            }
        }
        offsets
    }

    /// Where each flipped tap `(o, i, j)` starts reading the padded output gradient.
    fn flipped_tap_offsets(&self) -> Vec<usize> {
        let mut offsets =
            Vec::with_capacity(self.out_channels * self.kernel_height * self.kernel_width);
        for out_channel in 0..self.out_channels {
            for i in 0..self.kernel_height {
                for j in 0..self.kernel_width {
                    offsets
                        .push(out_channel * self.padded_span() + self.reach() - i * self.width - j);
                }
            }
        }
        offsets
    }

    /// The weight as `[tap][out_channel]`, the layout [`correlate`] reads.
    fn taps_by_output(&self, weight: &[f32]) -> Vec<f32> {
        let taps = self.patch_len();
        let mut transposed = vec![0.0; weight.len()];
        for (out_channel, row) in weight.chunks_exact(taps).enumerate() {
            for (tap, &value) in row.iter().enumerate() {
                transposed[tap * self.out_channels + out_channel] = value;
            }
        }
        transposed
    }

    /// The weight as `[(out_channel, i, j)][in_channel]`: the flipped kernel of the input
    /// gradient's convolution.
    fn flipped_taps_by_input(&self, weight: &[f32]) -> Vec<f32> {
        let kernel = self.kernel_height * self.kernel_width;
        let mut flipped = vec![0.0; weight.len()];
        for (at, &value) in weight.iter().enumerate() {
            let (out_channel, rest) = (at / self.patch_len(), at % self.patch_len());
            let (in_channel, position) = (rest / kernel, rest % kernel);
            flipped[(out_channel * kernel + position) * self.in_channels + in_channel] = value;
        }
        flipped
    }

    /// Images per chunk: the batch split evenly over rayon's threads.
    fn images_per_chunk(&self) -> usize {
        self.batch
            .div_ceil(rayon::current_num_threads().clamp(1, self.batch))
    }

    /// Offsets, in one channel of the convolution's output (rows of the input's width), of the
    /// window feeding pooled position `(y, x)`, in [`Winner`] order.
    fn window(&self, y: usize, x: usize) -> [usize; 4] {
        let width = self.width;
        let top_left = 2 * y * width + 2 * x;
        [
            top_left,
            top_left + 1,
            top_left + width,
            top_left + width + 1,
        ]
    }
}

/// The forward pass's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Pooled {
    /// `[batch, out_channels, height', width']`.
    pub output: Vec<f32>,
    /// Each output's winner, which the backward pass needs.
    pub winners: Vec<Winner>,
}

/// The backward pass's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Gradients {
    /// The input's gradient, when asked for.
    pub input: Option<Vec<f32>>,
    /// The weight's gradient.
    pub weight: Vec<f32>,
    /// The bias's gradient.
    pub bias: Vec<f32>,
}

/// `max_pool_2x2(relu(conv2d(input, weight) + bias))`, with each window's winner.
///
/// # Panics
/// When a slice's length does not match `shape`.
pub fn forward(shape: &ConvPoolShape, input: &[f32], weight: &[f32], bias: &[f32]) -> Pooled {
    assert_eq!(input.len(), shape.input_len(), "input length");
    assert_eq!(weight.len(), shape.weight_len(), "weight length");
    assert_eq!(bias.len(), shape.out_channels, "bias length");
    let mut output = vec![0.0; shape.output_len()];
    let mut winners = vec![NO_WINNER; shape.output_len()];
    let images = shape.images_per_chunk();
    let pooled = shape.pooled_image_len();
    let taps = Taps {
        offsets: shape.tap_offsets(),
        weights: shape.taps_by_output(weight),
    };
    output
        .par_chunks_mut(images * pooled)
        .zip(winners.par_chunks_mut(images * pooled))
        .enumerate()
        .for_each(|(chunk, (output, winners))| {
            with_scratch(|scratch| {
                for (index, (output, winners)) in output
                    .chunks_mut(pooled)
                    .zip(winners.chunks_mut(pooled))
                    .enumerate()
                {
                    let image = chunk * images + index;
                    let image = &input[image * shape.image_len()..][..shape.image_len()];
                    forward_image(shape, image, &taps, bias, output, winners, scratch);
                }
            })
        });
    Pooled { output, winners }
}

/// A convolution's taps: where each starts reading, and its weight for each output channel.
struct Taps {
    offsets: Vec<usize>,
    weights: Vec<f32>,
}

fn forward_image(
    shape: &ConvPoolShape,
    image: &[f32],
    taps: &Taps,
    bias: &[f32],
    output: &mut [f32],
    winners: &mut [Winner],
    scratch: &mut Scratch,
) {
    let span = shape.span();
    let conv = sized(&mut scratch.conv, shape.out_channels * span);
    let patches = Patches {
        src: image,
        offsets: &taps.offsets,
        len: span,
    };
    correlate(conv, span, shape.out_channels, patches, &taps.weights);
    let (pooled_height, pooled_width) = (shape.pooled_height(), shape.pooled_width());
    for channel in 0..shape.out_channels {
        let conv = &conv[channel * span..][..span];
        let plane = channel * pooled_height * pooled_width;
        for y in 0..pooled_height {
            for x in 0..pooled_width {
                let window = shape.window(y, x);
                // The first maximum wins, and NaN beats everything, as in Burn's max pooling
                // and ReLU: a diverged model's NaN reaches the loss, where training catches it.
                let (mut best, mut value) = (0, conv[window[0]]);
                for (position, &offset) in window.iter().enumerate().skip(1) {
                    let candidate = conv[offset];
                    if candidate > value || (candidate.is_nan() && !value.is_nan()) {
                        (best, value) = (position, candidate);
                    }
                }
                let value = value + bias[channel];
                let at = plane + y * pooled_width + x;
                if value > 0.0 || value.is_nan() {
                    output[at] = value;
                    winners[at] = best as Winner;
                } else {
                    output[at] = 0.0;
                    winners[at] = NO_WINNER;
                }
            }
        }
    }
}

/// The gradients of [`forward`] from the output's gradient, given the forward pass's input, weight
/// and winners. The input's gradient is computed only when `with_input` (the first block's input is
/// the images, which need none).
///
/// # Panics
/// When a slice's length does not match `shape`.
pub fn backward(
    shape: &ConvPoolShape,
    input: &[f32],
    weight: &[f32],
    winners: &[Winner],
    output_grad: &[f32],
    with_input: bool,
) -> Gradients {
    assert_eq!(input.len(), shape.input_len(), "input length");
    assert_eq!(weight.len(), shape.weight_len(), "weight length");
    assert_eq!(winners.len(), shape.output_len(), "winners length");
    assert_eq!(
        output_grad.len(),
        shape.output_len(),
        "output gradient length"
    );
    let images = shape.images_per_chunk();
    let chunks = shape.batch.div_ceil(images);
    let chunk_range = |chunk: usize| chunk * images..((chunk + 1) * images).min(shape.batch);
    let taps = shape.tap_offsets();
    let flipped = Taps {
        offsets: shape.flipped_tap_offsets(),
        weights: shape.flipped_taps_by_input(weight),
    };
    let run = |chunk: usize, input_grad: Option<&mut [f32]>| {
        with_scratch(|scratch| {
            backward_chunk(
                shape,
                chunk_range(chunk),
                (input, winners, output_grad),
                (&taps, &flipped),
                input_grad,
                scratch,
            )
        })
    };
    let mut input_grad = with_input.then(|| vec![0.0; shape.input_len()]);
    let partials: Vec<(Vec<f32>, Vec<f32>)> = match input_grad.as_mut() {
        Some(input_grad) => input_grad
            .par_chunks_mut(images * shape.image_len())
            .enumerate()
            .map(|(chunk, input_grad)| run(chunk, Some(input_grad)))
            .collect(),
        None => (0..chunks)
            .into_par_iter()
            .map(|chunk| run(chunk, None))
            .collect(),
    };
    let mut weight_grad = vec![0.0; shape.weight_len()];
    let mut bias_grad = vec![0.0; shape.out_channels];
    for (weight_part, bias_part) in partials {
        add(&mut weight_grad, &weight_part);
        add(&mut bias_grad, &bias_part);
    }
    Gradients {
        input: input_grad,
        weight: weight_grad,
        bias: bias_grad,
    }
}

/// One chunk of images: returns its partial weight and bias gradients, and writes its images'
/// input gradients into `input_grad` (the chunk's own part of the whole).
fn backward_chunk(
    shape: &ConvPoolShape,
    images: std::ops::Range<usize>,
    (input, winners, output_grad): (&[f32], &[Winner], &[f32]),
    (taps, flipped): (&[usize], &Taps),
    mut input_grad: Option<&mut [f32]>,
    scratch: &mut Scratch,
) -> (Vec<f32>, Vec<f32>) {
    let (span, reach, padded) = (shape.span(), shape.reach(), shape.padded_span());
    let (pooled_height, pooled_width) = (shape.pooled_height(), shape.pooled_width());
    let pooled = shape.pooled_image_len();
    let weight_lanes = sized_lanes(&mut scratch.weight_lanes, shape.weight_len());
    weight_lanes.fill([0.0; LANES]);
    let mut bias_grad = vec![0.0; shape.out_channels];
    let first = images.start;
    for image in images {
        let winners = &winners[image * pooled..][..pooled];
        let output_grad = &output_grad[image * pooled..][..pooled];
        let conv_grad = sized(&mut scratch.conv_grad, shape.out_channels * padded);
        conv_grad.fill(0.0);
        for channel in 0..shape.out_channels {
            let plane = channel * pooled_height * pooled_width;
            let conv_grad = &mut conv_grad[channel * padded + reach..][..span];
            for y in 0..pooled_height {
                for x in 0..pooled_width {
                    let at = plane + y * pooled_width + x;
                    if let Some(&offset) = shape.window(y, x).get(usize::from(winners[at])) {
                        conv_grad[offset] = output_grad[at];
                        bias_grad[channel] += output_grad[at];
                    }
                }
            }
        }
        // The image, followed by a block of zeros for the rounded span to read.
        let image_values = sized(&mut scratch.image, shape.image_len() + LANES);
        image_values[..shape.image_len()]
            .copy_from_slice(&input[image * shape.image_len()..][..shape.image_len()]);
        image_values[shape.image_len()..].fill(0.0);
        dot_rows(
            weight_lanes,
            shape.out_channels,
            &conv_grad[reach..],
            padded,
            Patches {
                src: image_values,
                offsets: taps,
                len: shape.rounded_span(),
            },
        );
        if let Some(input_grad) = input_grad.as_deref_mut() {
            let offset = (image - first) * shape.image_len();
            let plane = shape.height * shape.width;
            correlate(
                &mut input_grad[offset..][..shape.image_len()],
                plane,
                shape.in_channels,
                Patches {
                    src: conv_grad,
                    offsets: &flipped.offsets,
                    len: plane,
                },
                &flipped.weights,
            );
        }
    }
    let mut weight_grad = vec![0.0; shape.weight_len()];
    sum_lanes(weight_lanes, &mut weight_grad);
    (weight_grad, bias_grad)
}

fn add(into: &mut [f32], from: &[f32]) {
    for (into, from) in into.iter_mut().zip(from) {
        *into += from;
    }
}
