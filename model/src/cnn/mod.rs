//! The seed's CNN on Burn: the module, conversion to and from PyTorch-named `ArrayRecord`s, local
//! training and evaluation, and the choice of device. Behind the `burn` feature: only the node
//! builds it.

pub mod backend;
pub mod client;
pub mod conv_block;
pub mod convert;
pub mod module;
pub mod train;

#[cfg(test)]
mod tests {
    use super::backend::{BackendChoice, select};
    use super::convert::{from_arrays, to_arrays};
    use super::train::{TrainConfig, evaluate, input_shape, train};
    use crate::data::sources::synthetic;
    use crate::net::{InputShape, initial_parameters, parameter_count};

    #[test]
    fn arrays_round_trip_through_the_burn_module_exactly() {
        let device = select(BackendChoice::Cpu).unwrap().device;
        let arrays = initial_parameters(InputShape::CIFAR10, 3).unwrap();
        let net = from_arrays(&arrays, InputShape::CIFAR10, &device).unwrap();
        assert_eq!(to_arrays(&net, InputShape::CIFAR10).unwrap(), arrays);
        assert_eq!(parameter_count(InputShape::CIFAR10), Some(62_006));
    }

    #[test]
    fn wrong_shapes_are_refused_by_name() {
        let device = select(BackendChoice::Cpu).unwrap().device;
        let arrays = initial_parameters(InputShape::CIFAR10, 3).unwrap();
        let fmnist = InputShape {
            channels: 1,
            height: 28,
            width: 28,
            classes: 10,
        };
        let error = from_arrays(&arrays, fmnist, &device)
            .unwrap_err()
            .to_string();
        assert!(error.contains("conv1.weight"), "{error}");
    }

    #[test]
    fn training_on_learnable_data_lowers_the_loss() {
        let device = select(BackendChoice::Cpu).unwrap().device;
        let data = synthetic(256, 5);
        let arrays = initial_parameters(input_shape(&data), 1).unwrap();
        let (before, _) = evaluate(&arrays, &data, 64, &device).unwrap();
        let config = TrainConfig {
            learning_rate: 0.01,
            momentum: 0.9,
            epochs: 3,
            batch_size: 32,
            seed: 1,
        };
        let (trained, _) = train(&arrays, &data, &config, &device, &mut |_| {}, &|| false).unwrap();
        let (after, accuracy) = evaluate(&trained, &data, 64, &device).unwrap();
        assert!(after < before, "loss {before} -> {after}");
        assert!(
            accuracy > 0.2,
            "accuracy {accuracy} is no better than chance"
        );
    }
}

/// The fused CPU kernels against Burn's own convolution, ReLU and pooling, on the same seed and
/// data: the forward pass, every gradient, and a whole epoch of training.
#[cfg(test)]
mod fused_kernel_tests {
    use super::backend::{BackendChoice, select};
    use super::convert::from_arrays;
    use super::module::Net;
    use super::train::{TrainConfig, input_shape, train_with};
    use crate::data::sources::synthetic;
    use crate::net::{InputShape, initial_parameters};
    use burn::prelude::*;
    use burn::tensor::{Distribution, TensorData};

    const TOLERANCE: f32 = 1e-4;

    fn assert_close(what: &str, got: TensorData, want: TensorData) {
        let got = got.try_to_vec::<f32>().expect("f32 values");
        let want = want.try_to_vec::<f32>().expect("f32 values");
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (index, (got, want)) in got.iter().zip(&want).enumerate() {
            assert!(
                (got - want).abs() <= TOLERANCE * want.abs().max(1.0),
                "{what}[{index}]: fused {got}, Burn's operations {want}"
            );
        }
    }

    #[test]
    fn the_fused_blocks_match_burns_operations_forward_and_in_every_gradient() {
        let device = select(BackendChoice::Cpu).unwrap().device.autodiff();
        let fashion_mnist = InputShape {
            channels: 1,
            height: 28,
            width: 28,
            classes: 10,
        };
        for (input, seed) in [(InputShape::CIFAR10, 3), (fashion_mnist, 4)] {
            let arrays = initial_parameters(input, seed).unwrap();
            let net: Net = from_arrays(&arrays, input, &device).unwrap();
            let images = Tensor::<4>::random(
                [5, input.channels, input.height, input.width],
                Distribution::Uniform(-1.0, 1.0),
                &device,
            );
            assert!(
                super::conv_block::fusable(&images, &net.conv1, &net.pool),
                "the first block would not run the fused kernels"
            );
            let fused = net.forward(images.clone());
            let reference = net.forward_reference(images.clone());
            assert_close("logits", fused.to_data(), reference.to_data());
            // Without autodiff, as evaluation runs.
            let plain = device.clone().inner();
            let plain_net: Net = from_arrays(&arrays, input, &plain).unwrap();
            let plain_images = Tensor::<4>::from_data(images.to_data(), &plain);
            assert_close(
                "logits without autodiff",
                plain_net.forward(plain_images.clone()).to_data(),
                plain_net.forward_reference(plain_images).to_data(),
            );
            let fused_grads = (fused * 1.5).sum().backward();
            let reference_grads = (reference * 1.5).sum().backward();
            // Every parameter's gradient, through both paths.
            macro_rules! assert_gradients_close {
                ($($name:literal => $param:expr),+ $(,)?) => {$(
                    assert_close(
                        $name,
                        $param.grad(&fused_grads).unwrap().to_data(),
                        $param.grad(&reference_grads).unwrap().to_data(),
                    );
                )+};
            }
            assert_gradients_close!(
                "conv1.weight" => net.conv1.weight,
                "conv1.bias" => net.conv1.bias.as_ref().unwrap(),
                "conv2.weight" => net.conv2.weight,
                "conv2.bias" => net.conv2.bias.as_ref().unwrap(),
                "fc1.weight" => net.fc1.weight,
                "fc1.bias" => net.fc1.bias.as_ref().unwrap(),
                "fc2.weight" => net.fc2.weight,
                "fc2.bias" => net.fc2.bias.as_ref().unwrap(),
                "fc3.weight" => net.fc3.weight,
                "fc3.bias" => net.fc3.bias.as_ref().unwrap(),
            );
        }
    }

    #[test]
    fn an_epoch_on_the_fused_kernels_matches_burns_operations_step_by_step() {
        let device = select(BackendChoice::Cpu).unwrap().device;
        let data = synthetic(256, 11);
        let arrays = initial_parameters(input_shape(&data), 5).unwrap();
        let config = TrainConfig {
            learning_rate: 0.01,
            momentum: 0.9,
            epochs: 1,
            batch_size: 32,
            seed: 2,
        };
        let run = |forward: fn(&Net, Tensor<4>) -> Tensor<2>| {
            let mut losses = Vec::new();
            let (arrays, loss) = train_with(
                forward,
                &arrays,
                &data,
                &config,
                &device,
                &mut |progress| losses.push(progress.loss),
                &|| false,
            )
            .unwrap();
            (arrays, loss, losses)
        };
        let probe = Tensor::<4>::zeros([1, 3, 32, 32], &device);
        let net: Net = from_arrays(&arrays, input_shape(&data), &device).unwrap();
        assert!(
            super::conv_block::fusable(&probe, &net.conv1, &net.pool),
            "training would not run the fused kernels"
        );
        let (fused, fused_loss, fused_losses) = run(Net::forward);
        let (reference, reference_loss, reference_losses) = run(Net::forward_reference);
        assert_eq!(fused_losses.len(), 8);
        for (step, (fused, reference)) in fused_losses.iter().zip(&reference_losses).enumerate() {
            assert!(
                (fused - reference).abs() <= 1e-4,
                "step {}: mean loss {fused} fused, {reference} through Burn's operations",
                step + 1
            );
        }
        assert!((fused_loss - reference_loss).abs() <= 1e-4);
        assert_ne!(fused, arrays, "training changed nothing");
        for ((name, fused), (_, reference)) in fused.iter().zip(reference.iter()) {
            let (fused, reference) = (fused.to_f32().unwrap(), reference.to_f32().unwrap());
            for (index, (got, want)) in fused.iter().zip(&reference).enumerate() {
                assert!(
                    (got - want).abs() <= TOLERANCE,
                    "{name}[{index}] after an epoch: fused {got}, Burn's operations {want}"
                );
            }
        }
    }
}

/// The wgpu path, once: on a machine without a GPU this runs on Mesa's lavapipe (software Vulkan),
/// which `.ci/run` installs.
#[cfg(test)]
mod wgpu_tests {
    use super::backend::{BackendChoice, select};
    use super::train::{TrainConfig, evaluate, input_shape, train};
    use crate::data::sources::synthetic;
    use crate::net::initial_parameters;

    #[test]
    fn wgpu_trains_and_agrees_with_the_cpu_backend() {
        let gpu = select(BackendChoice::Wgpu)
            .expect("a wgpu adapter (install mesa-vulkan-drivers for lavapipe)");
        let cpu = select(BackendChoice::Cpu).unwrap();
        let data = synthetic(64, 9);
        let arrays = initial_parameters(input_shape(&data), 2).unwrap();
        let (gpu_loss, _) = evaluate(&arrays, &data, 32, &gpu.device).unwrap();
        let (cpu_loss, _) = evaluate(&arrays, &data, 32, &cpu.device).unwrap();
        assert!(
            (gpu_loss - cpu_loss).abs() < 1e-3,
            "wgpu {gpu_loss} vs cpu {cpu_loss}"
        );
        let config = TrainConfig {
            learning_rate: 0.01,
            momentum: 0.9,
            epochs: 1,
            batch_size: 32,
            seed: 1,
        };
        let (trained, loss) =
            train(&arrays, &data, &config, &gpu.device, &mut |_| {}, &|| false).unwrap();
        assert!(loss.is_finite());
        assert_ne!(trained, arrays);
    }
}
