//! The seed's CNN on Burn: the module, conversion to and from PyTorch-named `ArrayRecord`s, local
//! training and evaluation, and the choice of device. Behind the `burn` feature: only the node
//! builds it.

pub mod backend;
pub mod client;
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
