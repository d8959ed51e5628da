//! The seed's CNN described without Burn: its layers' names and shapes (PyTorch's `state_dict` of
//! the example's `Net`) and PyTorch's default initialisation. The broker needs both to start a run
//! and check replies, and must not build Burn.
//!
//! ```text
//! conv1  Conv2d(C, 6, 5)   -> ReLU -> MaxPool(2)
//! conv2  Conv2d(6, 16, 5)  -> ReLU -> MaxPool(2)
//! fc1    Linear(16*h*w, 120) -> ReLU
//! fc2    Linear(120, 84)     -> ReLU
//! fc3    Linear(84, classes)
//! ```

use rand::RngExt as _;
use wire::{Array, ArrayRecord};

/// The input a network is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputShape {
    /// Image channels (3 for CIFAR-10, 1 for Fashion-MNIST).
    pub channels: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Number of classes.
    pub classes: usize,
}

/// Most image channels a network is built for.
pub const MAX_CHANNELS: usize = 64;
/// Longest image side a network is built for.
pub const MAX_SIDE: usize = 4096;
/// Most classes a network is built for.
pub const MAX_CLASSES: usize = 100_000;
/// Most parameters a network may have: a shape a node reports must not make the SuperLink
/// allocate without bound (this CNN has 62,006 for CIFAR-10).
pub const MAX_PARAMETERS: usize = 100_000_000;

impl InputShape {
    /// Why this shape cannot be built, if it cannot: a dimension out of range, images too small
    /// for the network, or too many parameters. Checked arithmetic throughout.
    pub fn check(&self) -> Result<(), String> {
        let within = |what: &str, value: usize, max: usize| {
            if (1..=max).contains(&value) {
                Ok(())
            } else {
                Err(format!("{what} {value} is outside 1..={max}"))
            }
        };
        within("channels", self.channels, MAX_CHANNELS)?;
        within("height", self.height, MAX_SIDE)?;
        within("width", self.width, MAX_SIDE)?;
        within("classes", self.classes, MAX_CLASSES)?;
        let Some((h, w)) = self.feature_size() else {
            return Err(format!(
                "{}x{} images are too small for the network",
                self.height, self.width
            ));
        };
        let count = [
            (6, self.channels * 25 + 1),
            (16, 6 * 25 + 1),
            (120, 16 * h * w + 1),
            (84, 121),
            (self.classes, 85),
        ]
        .iter()
        .try_fold(0usize, |total, &(units, per_unit): &(usize, usize)| {
            units.checked_mul(per_unit)?.checked_add(total)
        });
        match count {
            Some(count) if count <= MAX_PARAMETERS => Ok(()),
            _ => Err(format!(
                "{self:?} needs more than {MAX_PARAMETERS} parameters"
            )),
        }
    }

    /// CIFAR-10's 3 x 32 x 32 images in 10 classes.
    pub const CIFAR10: InputShape = InputShape {
        channels: 3,
        height: 32,
        width: 32,
        classes: 10,
    };

    /// Side lengths after both conv (kernel 5, no padding) and pool (2) stages, or `None` when the
    /// image is too small for the network.
    pub fn feature_size(&self) -> Option<(usize, usize)> {
        let stage = |side: usize| side.checked_sub(4).map(|s| s / 2);
        let h = stage(self.height).and_then(stage)?;
        let w = stage(self.width).and_then(stage)?;
        (h > 0 && w > 0).then_some((h, w))
    }

    /// Inputs of `fc1`.
    pub fn flat_features(&self) -> Option<usize> {
        self.feature_size().map(|(h, w)| 16 * h * w)
    }
}

/// Names and shapes of the parameters, in `state_dict` order.
pub fn layout(input: InputShape) -> Option<Vec<(&'static str, Vec<usize>)>> {
    input.check().ok()?;
    let flat = input.flat_features()?;
    Some(vec![
        ("conv1.weight", vec![6, input.channels, 5, 5]),
        ("conv1.bias", vec![6]),
        ("conv2.weight", vec![16, 6, 5, 5]),
        ("conv2.bias", vec![16]),
        ("fc1.weight", vec![120, flat]),
        ("fc1.bias", vec![120]),
        ("fc2.weight", vec![84, 120]),
        ("fc2.bias", vec![84]),
        ("fc3.weight", vec![input.classes, 84]),
        ("fc3.bias", vec![input.classes]),
    ])
}

/// Number of parameters (62,006 for CIFAR-10).
pub fn parameter_count(input: InputShape) -> Option<usize> {
    Some(
        layout(input)?
            .iter()
            .map(|(_, shape)| shape.iter().product::<usize>())
            .sum(),
    )
}

/// Fresh parameters as PyTorch initialises them: every weight and bias uniform in
/// (-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in being the inputs of one output unit. Seeded.
pub fn initial_parameters(input: InputShape, seed: u64) -> Option<ArrayRecord> {
    let mut rng = crate::data::partition::rng(seed);
    let layout = layout(input)?;
    let mut record = ArrayRecord::new();
    let mut fan_in = 1;
    for (name, shape) in layout {
        if name.ends_with(".weight") {
            fan_in = shape[1..].iter().product::<usize>();
        }
        let bound = 1.0 / (fan_in as f32).sqrt();
        let count: usize = shape.iter().product();
        let values: Vec<f32> = (0..count)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        let dims = shape.iter().map(|&d| d as u64).collect();
        record.insert(name, Array::from_f32(dims, &values).ok()?);
    }
    Some(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cifar_network_has_62006_parameters() {
        assert_eq!(parameter_count(InputShape::CIFAR10), Some(62_006));
    }

    #[test]
    fn fashion_mnist_images_shrink_fc1() {
        let fmnist = InputShape {
            channels: 1,
            height: 28,
            width: 28,
            classes: 10,
        };
        assert_eq!(fmnist.flat_features(), Some(256));
        assert_eq!(
            InputShape {
                height: 8,
                ..fmnist
            }
            .flat_features(),
            None
        );
    }

    #[test]
    fn a_node_reported_shape_beyond_the_bounds_is_refused_before_allocation() {
        assert_eq!(InputShape::CIFAR10.check(), Ok(()));
        let huge_classes = InputShape {
            classes: 1 << 32,
            ..InputShape::CIFAR10
        };
        let huge_sides = InputShape {
            height: 4096,
            width: 4096,
            ..InputShape::CIFAR10
        };
        let no_channels = InputShape {
            channels: 0,
            ..InputShape::CIFAR10
        };
        for shape in [huge_classes, huge_sides, no_channels] {
            assert!(shape.check().is_err(), "{shape:?}");
            assert_eq!(layout(shape), None);
            assert_eq!(initial_parameters(shape, 1), None);
        }
        let error = huge_sides.check().unwrap_err();
        assert!(error.contains("parameters"), "{error}");
    }

    #[test]
    fn initialisation_is_seeded_and_bounded() {
        let a = initial_parameters(InputShape::CIFAR10, 1).unwrap();
        assert_eq!(a, initial_parameters(InputShape::CIFAR10, 1).unwrap());
        let fc1 = a.get("fc1.weight").unwrap().to_f32().unwrap();
        let bound = 1.0 / 400f32.sqrt();
        assert!(fc1.iter().all(|v| v.abs() <= bound));
        assert_eq!(a.names().collect::<Vec<_>>()[0], "conv1.weight");
    }
}
