//! A convolution block (convolution, ReLU, 2x2 max pooling) as one Burn operation on the CPU: the
//! `cpu-kernels` crate's fused forward pass, registered with its own backward pass, so autodiff
//! records one step per block instead of three and never differentiates through Burn's direct
//! convolution loops.
//!
//! [`conv_relu_max_pool`] is the entry point, for the seed's CNN and for any app's network built
//! from Burn's `Conv2d` and `MaxPool2d`: on Burn's Flex (CPU) backend, with a stride-1 unpadded
//! f32 convolution with a bias and 2x2 stride-2 pooling, it runs the fused kernels; anywhere else (wgpu, other
//! shapes) it composes Burn's own operations, exactly as before.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients as AutodiffGradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, Backend, Dispatch, DispatchDevice, Flex, TensorMetadata, backend_extension,
};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use cpu_kernels::conv_pool::{self, ConvPoolShape, Winner};

/// Flex's tensor primitive.
type FlexTensor = FloatTensor<Flex>;

/// `max_pool2d(relu(conv(input)))`: the fused kernels where they apply (see the module's
/// documentation), Burn's operations elsewhere.
pub fn conv_relu_max_pool(input: Tensor<4>, conv: &Conv2d, pool: &MaxPool2d) -> Tensor<4> {
    match (fusable(&input, conv, pool), conv.bias.as_ref()) {
        (true, Some(bias)) => {
            let output = <Dispatch as ConvPoolOps>::conv_relu_pool(
                input.into_dispatch(),
                conv.weight.val().into_dispatch(),
                bias.val().into_dispatch(),
            );
            Tensor::from_dispatch(output)
        }
        _ => reference(input, conv, pool),
    }
}

/// The same block through Burn's own operations: what runs on wgpu, and what the fused kernels
/// are tested against.
pub fn reference(input: Tensor<4>, conv: &Conv2d, pool: &MaxPool2d) -> Tensor<4> {
    pool.forward(burn::tensor::activation::relu(conv.forward(input)))
}

/// Whether the fused kernels compute exactly this block: Flex, f32, a stride-1 unpadded
/// undilated ungrouped convolution, non-overlapping 2x2 pooling without padding, and shapes that
/// form a block.
pub fn fusable(input: &Tensor<4>, conv: &Conv2d, pool: &MaxPool2d) -> bool {
    let on_flex = matches!(
        input.device().inner().as_dispatch(),
        DispatchDevice::Flex(_)
    );
    on_flex
        && input.dtype() == DType::F32
        && conv.weight.val().dtype() == DType::F32
        && conv
            .bias
            .as_ref()
            .is_some_and(|bias| bias.val().dtype() == DType::F32)
        && conv.stride == [1, 1]
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && matches!(conv.padding, PaddingConfig2d::Valid)
        && pool.kernel_size == [2, 2]
        && pool.stride == [2, 2]
        && pool.dilation == [1, 1]
        && matches!(pool.padding, PaddingConfig2d::Valid)
        && !pool.ceil_mode
        && ConvPoolShape::new(input.dims(), conv.weight.dims()).is_ok()
}

/// The operation, as a Burn backend extension: Flex runs it, Flex under autodiff records its
/// backward pass.
#[backend_extension(Flex, Autodiff)]
pub trait ConvPoolOps: Backend {
    /// `max_pool_2x2(relu(conv2d(input, weight) + bias))`.
    fn conv_relu_pool(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

impl ConvPoolOps for Flex {
    fn conv_relu_pool(input: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        let (pooled, shape) = forward(&input, &weight, &bias);
        tensor(pooled.output, shape.output_dims())
    }
}

/// What the backward pass keeps from the forward pass: the tensors it read (shared, not copied)
/// and each pooling window's winner.
#[derive(Debug, Clone)]
struct Saved {
    input: FlexTensor,
    weight: FlexTensor,
    winners: Vec<Winner>,
    shape: ConvPoolShape,
}

#[derive(Debug)]
struct ConvReluPoolBackward;

impl Backward<Flex, 3> for ConvReluPoolBackward {
    type State = Saved;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut AutodiffGradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [input_node, weight_node, bias_node] = ops.parents;
        let output_grad = contiguous(grads.consume::<Flex>(&ops.node));
        let saved = ops.state;
        let input = contiguous(saved.input);
        let weight = contiguous(saved.weight);
        let gradients = conv_pool::backward(
            &saved.shape,
            values(&input),
            values(&weight),
            &saved.winners,
            values(&output_grad),
            input_node.is_some(),
        );
        if let (Some(node), Some(input_grad)) = (input_node, gradients.input) {
            grads.register::<Flex>(node.id, tensor(input_grad, input.shape().dims::<4>()));
        }
        if let Some(node) = weight_node {
            grads.register::<Flex>(
                node.id,
                tensor(gradients.weight, weight.shape().dims::<4>()),
            );
        }
        if let Some(node) = bias_node {
            let len = gradients.bias.len();
            grads.register::<Flex>(node.id, tensor(gradients.bias, [len]));
        }
    }
}

impl<C: CheckpointStrategy> ConvPoolOps for Autodiff<Flex, C> {
    fn conv_relu_pool(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        match ConvReluPoolBackward
            .prepare::<C>([input.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let input = contiguous(input.into_primitive());
                let weight = contiguous(weight.into_primitive());
                let (pooled, shape) = forward(&input, &weight, bias.primitive());
                let saved = Saved {
                    input,
                    weight,
                    winners: pooled.winners,
                    shape,
                };
                prep.finish(saved, tensor(pooled.output, shape.output_dims()))
            }
            OpsKind::UnTracked(prep) => prep.finish(<Flex as ConvPoolOps>::conv_relu_pool(
                input.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
            )),
        }
    }
}

/// Runs the forward kernel on three Flex tensors.
///
/// # Panics
/// When the shapes do not form a block: [`conv_relu_max_pool`] checks them first, from the
/// module's own configuration.
fn forward(
    input: &FlexTensor,
    weight: &FlexTensor,
    bias: &FlexTensor,
) -> (conv_pool::Pooled, ConvPoolShape) {
    let input = contiguous(input.clone());
    let weight = contiguous(weight.clone());
    let bias = contiguous(bias.clone());
    let shape = ConvPoolShape::new(input.shape().dims::<4>(), weight.shape().dims::<4>())
        .unwrap_or_else(|error| panic!("a convolution block checked before it ran: {error}"));
    let pooled = conv_pool::forward(&shape, values(&input), values(&weight), values(&bias));
    (pooled, shape)
}

/// `tensor` with its values in one run from the start of its buffer.
fn contiguous(tensor: FlexTensor) -> FlexTensor {
    if tensor.as_slice::<f32>().is_some() {
        tensor
    } else {
        tensor.to_contiguous()
    }
}

/// The f32 values of a tensor [`contiguous`] returned.
fn values(tensor: &FlexTensor) -> &[f32] {
    tensor
        .as_slice::<f32>()
        .unwrap_or_else(|| panic!("an f32 tensor made contiguous: {tensor:?}"))
}

/// A Flex tensor owning `values`.
fn tensor<const D: usize>(values: Vec<f32>, dims: [usize; D]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, dims))
}
