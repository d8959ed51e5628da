//! A tabular classification dataset generated from a seed: [`CLASSES`] Gaussian clusters in
//! [`FEATURES`] dimensions whose centres every node derives from the same seed, so that each
//! node's partition (its own samples, from its own seed) comes from one shared distribution.

use rand::{RngExt as _, SeedableRng as _, rngs::StdRng};

/// Features per sample.
pub const FEATURES: usize = 8;

/// Classes.
pub const CLASSES: usize = 3;

/// Seed of the cluster centres, shared by every node.
const CENTRES_SEED: u64 = 0x5EED;

/// Labelled samples, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Samples {
    /// `len * FEATURES` values.
    pub features: Vec<f32>,
    /// One class per sample.
    pub labels: Vec<i64>,
}

impl Samples {
    /// How many samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The samples at `indices`.
    pub fn select(&self, indices: &[usize]) -> Samples {
        Samples {
            features: indices
                .iter()
                .flat_map(|&i| {
                    self.features[i * FEATURES..(i + 1) * FEATURES]
                        .iter()
                        .copied()
                })
                .collect(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        }
    }
}

/// A standard normal value (Box-Muller).
fn normal(rng: &mut StdRng) -> f32 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// The cluster centres.
fn centres() -> Vec<[f32; FEATURES]> {
    let mut rng = StdRng::seed_from_u64(CENTRES_SEED);
    (0..CLASSES)
        .map(|_| std::array::from_fn(|_| 2.0 * normal(&mut rng)))
        .collect()
}

/// Node `partition`'s data: `train` and `test` samples of its own, with noise `spread` around
/// the shared centres.
pub fn partition(partition: u64, train: usize, test: usize, spread: f32) -> (Samples, Samples) {
    let centres = centres();
    let mut rng = StdRng::seed_from_u64(partition.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 1);
    let mut draw = |count: usize| {
        let mut samples = Samples {
            features: Vec::with_capacity(count * FEATURES),
            labels: Vec::with_capacity(count),
        };
        for _ in 0..count {
            let class = rng.random_range(0..CLASSES);
            samples
                .features
                .extend(centres[class].iter().map(|c| c + spread * normal(&mut rng)));
            samples.labels.push(class as i64);
        }
        samples
    };
    let train = draw(train);
    let test = draw(test);
    (train, test)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_the_same_everywhere_and_differs_from_the_others() {
        let (a, a_test) = partition(1, 50, 10, 1.0);
        assert_eq!(partition(1, 50, 10, 1.0).0, a);
        assert_eq!(
            (a.len(), a.features.len(), a_test.len()),
            (50, 50 * FEATURES, 10)
        );
        assert_ne!(partition(2, 50, 10, 1.0).0, a);
        assert!(a.labels.iter().all(|&l| (0..CLASSES as i64).contains(&l)));
    }
}
