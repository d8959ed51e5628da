//! CPU kernels for the seed's CNN that Burn's Flex backend runs slower than PyTorch: each
//! convolution block (convolution, bias, ReLU, 2x2 max pooling) as one pass, forward and
//! backward, over rayon's threads. Plain slices in, plain vectors out: `model` registers them as a
//! Burn operation with its own backward pass.
//!
//! # Layout
//! - `conv_pool`: the fused block, forward and backward.
//! - `lanes`: the two vectorised inner loops the kernels reduce to, one build per instruction set.
//! - `scratch`: per-thread buffers reused from one call to the next.

pub mod conv_pool;
mod lanes;
mod scratch;

#[cfg(test)]
mod tests;

pub use conv_pool::{ConvPoolShape, Gradients, NO_WINNER, Pooled, ShapeError, Winner};
