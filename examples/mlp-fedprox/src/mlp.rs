//! The model: `fc1` (FEATURES -> HIDDEN), ReLU, `fc2` (HIDDEN -> CLASSES), on Burn. Its
//! parameters travel as an ArrayRecord of four f32 arrays named as PyTorch would name them
//! (`fc1.weight` is `[out, in]`).

use crate::data::{CLASSES, FEATURES, Samples};
use burn::module::Param;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::{GradientsParams, SgdConfig};
use burn::prelude::*;
use burn::tensor::TensorData;
use flwr_sdk::{AppError, Array, ArrayRecord};
use rand::{RngExt as _, SeedableRng as _, rngs::StdRng, seq::SliceRandom as _};

/// Hidden units.
pub const HIDDEN: usize = 32;

/// The network.
#[derive(Module, Debug)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
    relu: Relu,
}

impl Mlp {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(self.relu.forward(self.fc1.forward(x)))
    }
}

/// Names and PyTorch shapes of the parameters, in order.
fn layout() -> [(&'static str, Vec<usize>); 4] {
    [
        ("fc1.weight", vec![HIDDEN, FEATURES]),
        ("fc1.bias", vec![HIDDEN]),
        ("fc2.weight", vec![CLASSES, HIDDEN]),
        ("fc2.bias", vec![CLASSES]),
    ]
}

/// Fresh parameters (uniform in ±1/sqrt(fan-in), as PyTorch initialises a Linear), from `seed`.
pub fn initial_arrays(seed: u64) -> Result<ArrayRecord, AppError> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut record = ArrayRecord::new();
    for (name, shape) in layout() {
        let fan_in = if shape.len() == 2 {
            shape[1]
        } else {
            HIDDEN.min(FEATURES)
        };
        let bound = 1.0 / (fan_in as f32).sqrt();
        let values: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        record.insert(name, array(&shape, &values)?);
    }
    Ok(record)
}

fn array(shape: &[usize], values: &[f32]) -> Result<Array, AppError> {
    Array::from_f32(shape.iter().map(|&d| d as u64).collect(), values)
        .map_err(|e| AppError::new(e.to_string()))
}

fn values(arrays: &ArrayRecord, name: &str, shape: &[usize]) -> Result<Vec<f32>, AppError> {
    let array = arrays
        .get(name)
        .ok_or_else(|| AppError::new(format!("the model lacks {name:?}")))?;
    let wanted: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    if array.shape != wanted {
        return Err(AppError::new(format!(
            "{name:?} has shape {:?}, the model needs {wanted:?}",
            array.shape
        )));
    }
    array
        .to_f32()
        .ok_or_else(|| AppError::new(format!("{name:?} is not f32")))
}

fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

/// A linear layer's Burn parameters (weight `[in, out]`) from PyTorch's `[out, in]`.
fn linear(weight: Vec<f32>, bias: Vec<f32>, out: usize, inp: usize, device: &Device) -> Linear {
    let mut layer = LinearConfig::new(inp, out).init(device);
    layer.weight = Param::from_tensor(Tensor::from_data(
        TensorData::new(transpose(&weight, out, inp), [inp, out]),
        device,
    ));
    layer.bias = Some(Param::from_tensor(Tensor::from_data(
        TensorData::new(bias, [out]),
        device,
    )));
    layer
}

/// The network with the parameters in `arrays`.
fn from_arrays(arrays: &ArrayRecord, device: &Device) -> Result<Mlp, AppError> {
    let [w1, b1, w2, b2] = layout();
    Ok(Mlp {
        fc1: linear(
            values(arrays, w1.0, &w1.1)?,
            values(arrays, b1.0, &b1.1)?,
            HIDDEN,
            FEATURES,
            device,
        ),
        fc2: linear(
            values(arrays, w2.0, &w2.1)?,
            values(arrays, b2.0, &b2.1)?,
            CLASSES,
            HIDDEN,
            device,
        ),
        relu: Relu::new(),
    })
}

fn read<const D: usize>(tensor: Tensor<D>) -> Result<Vec<f32>, AppError> {
    tensor
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| AppError::new(format!("cannot read parameters: {e:?}")))
}

fn to_arrays(mlp: &Mlp) -> Result<ArrayRecord, AppError> {
    let mut record = ArrayRecord::new();
    for (name, layer, out, inp) in [
        ("fc1", &mlp.fc1, HIDDEN, FEATURES),
        ("fc2", &mlp.fc2, CLASSES, HIDDEN),
    ] {
        let weight = transpose(&read(layer.weight.val())?, inp, out);
        record.insert(format!("{name}.weight"), array(&[out, inp], &weight)?);
        let bias = match &layer.bias {
            Some(bias) => read(bias.val())?,
            None => vec![0.0; out],
        };
        record.insert(format!("{name}.bias"), array(&[out], &bias)?);
    }
    Ok(record)
}

fn batch(samples: &Samples, device: &Device) -> (Tensor<2>, Tensor<1, Int>) {
    let x = Tensor::from_data(
        TensorData::new(samples.features.clone(), [samples.len(), FEATURES]),
        device,
    );
    let y = Tensor::from_data(
        TensorData::new(samples.labels.clone(), [samples.len()]),
        device,
    );
    (x, y)
}

/// Local training settings.
#[derive(Debug, Clone, Copy)]
pub struct Training {
    /// Passes over the data.
    pub epochs: usize,
    /// Step size.
    pub learning_rate: f64,
    /// Samples per step.
    pub batch_size: usize,
    /// FedProx's proximal weight: the loss gains `mu/2 * |w - w_global|^2`.
    pub proximal_mu: f64,
    /// Shuffle seed.
    pub seed: u64,
}

/// Trains `global` on `samples`; returns the new parameters and the last epoch's mean loss.
pub fn train(
    global: &ArrayRecord,
    samples: &Samples,
    training: &Training,
) -> Result<(ArrayRecord, f64), AppError> {
    if samples.is_empty() {
        return Err(AppError::new("no training data"));
    }
    let device = Device::flex().autodiff();
    let mut mlp = from_arrays(global, &device)?;
    // The global parameters, fixed: the proximal term pulls towards them.
    let anchors: Vec<Tensor<2>> = [&mlp.fc1.weight, &mlp.fc2.weight]
        .iter()
        .map(|w| w.val().detach())
        .collect();
    let mut optimizer = SgdConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut order: Vec<usize> = (0..samples.len()).collect();
    let mut rng = StdRng::seed_from_u64(training.seed);
    let mut last = 0.0;
    for _ in 0..training.epochs.max(1) {
        order.shuffle(&mut rng);
        let (mut total, mut steps) = (0.0, 0usize);
        for chunk in order.chunks(training.batch_size.max(1)) {
            let (x, y) = batch(&samples.select(chunk), &device);
            let mut loss = loss_fn.forward(mlp.forward(x), y);
            if training.proximal_mu > 0.0 {
                let weights = [mlp.fc1.weight.val(), mlp.fc2.weight.val()];
                for (weight, anchor) in weights.into_iter().zip(&anchors) {
                    let drift = (weight - anchor.clone()).powf_scalar(2.0).sum();
                    loss = loss + drift.mul_scalar(training.proximal_mu / 2.0);
                }
            }
            let value = f64::from(loss.clone().into_scalar::<f32>());
            if !value.is_finite() {
                return Err(AppError::new(format!(
                    "training diverged (loss {value}): lower learning-rate"
                )));
            }
            total += value;
            steps += 1;
            let grads = GradientsParams::from_grads(loss.backward(), &mlp);
            mlp = optimizer.step(training.learning_rate, mlp, grads);
        }
        last = total / steps.max(1) as f64;
    }
    Ok((to_arrays(&mlp)?, last))
}

/// Mean loss and accuracy of `arrays` on `samples`.
pub fn evaluate(arrays: &ArrayRecord, samples: &Samples) -> Result<(f64, f64), AppError> {
    if samples.is_empty() {
        return Err(AppError::new("no test data"));
    }
    let device = Device::flex();
    let mlp = from_arrays(arrays, &device)?;
    let (x, y) = batch(samples, &device);
    let logits = mlp.forward(x);
    let loss = CrossEntropyLossConfig::new()
        .init(&device)
        .forward(logits.clone(), y.clone());
    let correct = logits
        .argmax(1)
        .squeeze_dim::<1>(1)
        .equal(y)
        .int()
        .sum()
        .into_scalar::<i64>();
    Ok((
        f64::from(loss.into_scalar::<f32>()),
        correct as f64 / samples.len() as f64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::partition;

    #[test]
    fn parameters_round_trip_through_the_model_and_training_learns() {
        let initial = initial_arrays(1).unwrap();
        let device = Device::flex();
        assert_eq!(
            to_arrays(&from_arrays(&initial, &device).unwrap()).unwrap(),
            initial
        );
        let (train_set, test_set) = partition(0, 400, 200, 1.0);
        let (_, before) = evaluate(&initial, &test_set).unwrap();
        let training = Training {
            epochs: 5,
            learning_rate: 0.1,
            batch_size: 32,
            proximal_mu: 0.01,
            seed: 7,
        };
        let (trained, loss) = train(&initial, &train_set, &training).unwrap();
        let (_, after) = evaluate(&trained, &test_set).unwrap();
        assert!(loss.is_finite());
        assert!(
            after > 0.8 && after > before,
            "accuracy {before} -> {after}"
        );
    }
}
