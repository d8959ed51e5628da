//! The network, shaped by its input (see [`crate::net`]).

use super::conv_block;
use crate::net::InputShape;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, Relu};
use burn::prelude::*;

/// The example's `Net`.
#[derive(Module, Debug)]
pub struct Net {
    /// Conv2d(C, 6, 5).
    pub conv1: Conv2d,
    /// Conv2d(6, 16, 5).
    pub conv2: Conv2d,
    /// MaxPool2d(2, 2), shared by both conv stages.
    pub pool: MaxPool2d,
    /// Linear(16*h*w, 120).
    pub fc1: Linear,
    /// Linear(120, 84).
    pub fc2: Linear,
    /// Linear(84, classes).
    pub fc3: Linear,
    /// ReLU.
    pub relu: Relu,
}

impl Net {
    /// A freshly initialised network for `input` on `device`; `None` if the images are too small.
    pub fn new(input: InputShape, device: &Device) -> Option<Net> {
        let flat = input.flat_features()?;
        Some(Net {
            conv1: Conv2dConfig::new([input.channels, 6], [5, 5]).init(device),
            conv2: Conv2dConfig::new([6, 16], [5, 5]).init(device),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            fc1: LinearConfig::new(flat, 120).init(device),
            fc2: LinearConfig::new(120, 84).init(device),
            fc3: LinearConfig::new(84, input.classes).init(device),
            relu: Relu::new(),
        })
    }

    /// Logits for a batch of normalised images `[batch, channels, height, width]`. On the CPU each
    /// convolution block runs as one fused operation ([`conv_block`]).
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.forward_with(images, conv_block::conv_relu_max_pool)
    }

    /// [`Net::forward`] through Burn's own convolution, ReLU and pooling operations: the path the
    /// fused kernels are tested against.
    pub fn forward_reference(&self, images: Tensor<4>) -> Tensor<2> {
        self.forward_with(images, conv_block::reference)
    }

    fn forward_with(
        &self,
        images: Tensor<4>,
        block: fn(Tensor<4>, &Conv2d, &MaxPool2d) -> Tensor<4>,
    ) -> Tensor<2> {
        let x = block(images, &self.conv1, &self.pool);
        let x = block(x, &self.conv2, &self.pool);
        let [batch, channels, height, width] = x.dims();
        let x = x.reshape([batch, channels * height * width]);
        let x = self.relu.forward(self.fc1.forward(x));
        let x = self.relu.forward(self.fc2.forward(x));
        self.fc3.forward(x)
    }
}
