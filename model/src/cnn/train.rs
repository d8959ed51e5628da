//! Local training and evaluation: SGD with momentum, cross-entropy, inputs normalised to mean 0.5
//! and standard deviation 0.5 per channel, as the seed does.

use super::convert::{from_arrays, to_arrays};
use super::module::Net;
use crate::data::Dataset;
use crate::net::InputShape;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::prelude::*;
use burn::tensor::TensorData;
use flwr_sdk::app::AppError;
use rand::seq::SliceRandom as _;
use wire::ArrayRecord;

/// Hyper-parameters of one local training call.
#[derive(Debug, Clone, Copy)]
pub struct TrainConfig {
    /// Learning rate.
    pub learning_rate: f64,
    /// Momentum.
    pub momentum: f64,
    /// Passes over the local data.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Seed of the shuffle.
    pub seed: u64,
}

/// Progress of training, reported every few steps.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Current epoch (from 1).
    pub epoch: usize,
    /// Steps done in this epoch.
    pub step: usize,
    /// Steps per epoch.
    pub steps: usize,
    /// Mean loss over the steps done in this epoch.
    pub loss: f64,
}

/// The shape the network needs for `data`.
pub fn input_shape(data: &Dataset) -> InputShape {
    InputShape {
        channels: data.channels,
        height: data.height,
        width: data.width,
        classes: data.classes,
    }
}

/// A batch of images, normalised, and their labels.
fn batch(data: &Dataset, indices: &[usize], device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
    let image_len = data.image_len();
    let mut pixels = Vec::with_capacity(indices.len() * image_len);
    let mut labels = Vec::with_capacity(indices.len());
    for &i in indices {
        // (x / 255 - 0.5) / 0.5
        pixels.extend(data.image(i).iter().map(|&p| f32::from(p) / 127.5 - 1.0));
        labels.push(i64::from(data.labels[i]));
    }
    let images = Tensor::from_data(
        TensorData::new(
            pixels,
            [indices.len(), data.channels, data.height, data.width],
        ),
        device,
    );
    let targets = Tensor::from_data(TensorData::new(labels, [indices.len()]), device);
    (images, targets)
}

/// Trains `arrays` on `data`; returns the new arrays and the mean training loss of the last epoch.
/// `report` is called after every step; `cancelled` is polled between steps.
pub fn train(
    arrays: &ArrayRecord,
    data: &Dataset,
    config: &TrainConfig,
    device: &Device,
    report: &mut dyn FnMut(Progress),
    cancelled: &dyn Fn() -> bool,
) -> Result<(ArrayRecord, f64), AppError> {
    train_with(
        Net::forward,
        arrays,
        data,
        config,
        device,
        report,
        cancelled,
    )
}

/// How a network turns images into logits: [`Net::forward`], or [`Net::forward_reference`]
/// (Burn's own operations), which the tests and the training bench hold the fused kernels to.
pub type Forward = fn(&Net, Tensor<4>) -> Tensor<2>;

/// [`train`] through `forward`.
pub fn train_with(
    forward: Forward,
    arrays: &ArrayRecord,
    data: &Dataset,
    config: &TrainConfig,
    device: &Device,
    report: &mut dyn FnMut(Progress),
    cancelled: &dyn Fn() -> bool,
) -> Result<(ArrayRecord, f64), AppError> {
    if data.is_empty() {
        return Err(AppError::new("no training data"));
    }
    let input = input_shape(data);
    let device = device.clone().autodiff();
    let mut net: Net = from_arrays(arrays, input, &device)?;
    let momentum = MomentumConfig {
        momentum: config.momentum,
        dampening: 0.0,
        nesterov: false,
    };
    let mut optimizer = SgdConfig::new()
        .with_momentum((config.momentum > 0.0).then_some(momentum))
        .init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let batch_size = config.batch_size.max(1);
    let mut rng = crate::data::partition::rng(config.seed);
    let mut order: Vec<usize> = (0..data.len()).collect();
    let mut last_epoch_loss = 0.0;
    for epoch in 1..=config.epochs.max(1) {
        order.shuffle(&mut rng);
        let steps = order.len().div_ceil(batch_size);
        let mut total = 0.0;
        for (step, chunk) in order.chunks(batch_size).enumerate() {
            if cancelled() {
                return Err(AppError::new("training cancelled"));
            }
            let (images, targets) = batch(data, chunk, &device);
            let logits = forward(&net, images);
            let loss = loss_fn.forward(logits, targets);
            let value = f64::from(loss.clone().into_scalar::<f32>());
            if !value.is_finite() {
                return Err(AppError::new(format!(
                    "{} (loss {value}) at epoch {epoch}, step {}: lower the learning-rate",
                    crate::apps::fedavg_cnn::DIVERGED,
                    step + 1
                )));
            }
            total += value;
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = optimizer.step(config.learning_rate, net, grads);
            report(Progress {
                epoch,
                step: step + 1,
                steps,
                loss: total / (step + 1) as f64,
            });
        }
        last_epoch_loss = total / steps as f64;
    }
    Ok((to_arrays(&net, input)?, last_epoch_loss))
}

/// Mean loss and accuracy of `arrays` on `data`.
pub fn evaluate(
    arrays: &ArrayRecord,
    data: &Dataset,
    batch_size: usize,
    device: &Device,
) -> Result<(f64, f64), AppError> {
    if data.is_empty() {
        return Err(AppError::new("no test data"));
    }
    let net = from_arrays(arrays, input_shape(data), device)?;
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let indices: Vec<usize> = (0..data.len()).collect();
    let (mut loss_sum, mut correct) = (0.0, 0i64);
    for chunk in indices.chunks(batch_size.max(1)) {
        let (images, targets) = batch(data, chunk, device);
        let logits = net.forward(images);
        let loss = loss_fn.forward(logits.clone(), targets.clone());
        loss_sum += f64::from(loss.into_scalar::<f32>()) * chunk.len() as f64;
        let predictions = logits.argmax(1).squeeze_dim::<1>(1);
        correct += predictions.equal(targets).int().sum().into_scalar::<i64>();
    }
    let n = data.len() as f64;
    Ok((loss_sum / n, correct as f64 / n))
}
