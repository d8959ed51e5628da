//! Buffers each thread keeps from one call to the next, so that the convolutions' per-image
//! intermediate results (the largest ones) are not allocated, and page-faulted, on every step.
//! They grow to the largest block a thread has run and are kept for the thread's life.

use crate::lanes::Lanes;
use std::cell::RefCell;

/// One thread's buffers.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    /// One image's convolution output.
    pub conv: Vec<f32>,
    /// One image's convolution output gradient, padded for the input gradient's convolution.
    pub conv_grad: Vec<f32>,
    /// One image, padded with zeros.
    pub image: Vec<f32>,
    /// A chunk's weight gradient, lane-wide.
    pub weight_lanes: Vec<Lanes>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// Runs `work` with this thread's buffers. Not reentrant: `work` must not call back in.
pub(crate) fn with_scratch<R>(work: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|scratch| work(&mut scratch.borrow_mut()))
}

/// The first `len` values of `buffer`, growing it (never shrinking it) to fit. The values are
/// whatever the last use left there.
pub(crate) fn sized(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}

/// [`sized`] for lane-wide sums.
pub(crate) fn sized_lanes(buffer: &mut Vec<Lanes>, len: usize) -> &mut [Lanes] {
    if buffer.len() < len {
        buffer.resize(len, [0.0; crate::lanes::LANES]);
    }
    &mut buffer[..len]
}
