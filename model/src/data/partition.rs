//! Splitting a dataset among nodes, as Flower Datasets does: IID (seeded shuffle, equal shards,
//! like `IidPartitioner`) or Dirichlet label skew (like `DirichletPartitioner`), then each
//! partition into 80% train and 20% test with a fixed seed.

use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{RngExt as _, SeedableRng as _};

/// Share of each partition held out for evaluation.
pub const TEST_FRACTION: f64 = 0.2;

/// A seeded generator: the same seed always gives the same partitions.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Splits `0..n` after a seeded shuffle into `partitions` shards whose sizes differ by at most one.
pub fn iid(n: usize, partitions: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut indices: Vec<usize> = (0..n).collect();
    indices.shuffle(&mut rng(seed));
    let partitions = partitions.max(1);
    let (base, extra) = (n / partitions, n % partitions);
    let mut shards = Vec::with_capacity(partitions);
    let mut start = 0;
    for p in 0..partitions {
        let len = base + usize::from(p < extra);
        shards.push(indices[start..start + len].to_vec());
        start += len;
    }
    shards
}

/// A standard normal sample (Box-Muller).
fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A Gamma(shape, 1) sample (Marsaglia and Tsang; boosted for shape < 1).
fn gamma(shape: f64, rng: &mut StdRng) -> f64 {
    if shape < 1.0 {
        let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        return gamma(shape + 1.0, rng) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u: f64 = rng.random();
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// A Dirichlet(alpha, ..., alpha) sample over `k` categories.
fn dirichlet_sample(alpha: f64, k: usize, rng: &mut StdRng) -> Vec<f64> {
    let draws: Vec<f64> = (0..k).map(|_| gamma(alpha, rng)).collect();
    let total: f64 = draws.iter().sum();
    if total > 0.0 {
        draws.iter().map(|d| d / total).collect()
    } else {
        vec![1.0 / k as f64; k]
    }
}

/// Label-skewed partitions: each class is divided among partitions by proportions drawn from
/// Dirichlet(`alpha`); small alpha gives strong skew. Resamples (up to 10 times) until every
/// partition holds at least `min_size` examples, like Flower's `DirichletPartitioner`.
pub fn dirichlet(
    labels: &[u8],
    classes: usize,
    partitions: usize,
    alpha: f64,
    min_size: usize,
    seed: u64,
) -> Result<Vec<Vec<usize>>, String> {
    if !(alpha.is_finite() && alpha > 0.0) {
        return Err(format!("--alpha must be a positive number, got {alpha}"));
    }
    let partitions = partitions.max(1);
    let mut rng = rng(seed);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (index, &label) in labels.iter().enumerate() {
        if let Some(list) = by_class.get_mut(usize::from(label)) {
            list.push(index);
        }
    }
    for _ in 0..10 {
        let mut shards: Vec<Vec<usize>> = vec![Vec::new(); partitions];
        for class_indices in &by_class {
            let mut indices = class_indices.clone();
            indices.shuffle(&mut rng);
            let proportions = dirichlet_sample(alpha, partitions, &mut rng);
            let mut start = 0;
            let mut cumulative = 0.0;
            for (p, share) in proportions.iter().enumerate() {
                cumulative += share;
                let end = if p + 1 == partitions {
                    indices.len()
                } else {
                    ((cumulative * indices.len() as f64).round() as usize)
                        .clamp(start, indices.len())
                };
                shards[p].extend_from_slice(&indices[start..end]);
                start = end;
            }
        }
        if shards.iter().all(|s| s.len() >= min_size) {
            for shard in &mut shards {
                shard.shuffle(&mut rng);
            }
            return Ok(shards);
        }
    }
    Err(format!(
        "could not give every one of {partitions} partitions {min_size} examples with alpha {alpha}; \
         use a larger --alpha or fewer partitions"
    ))
}

/// Splits a partition's indices into (train, test) after a seeded shuffle.
pub fn train_test(indices: &[usize], seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut shuffled = indices.to_vec();
    shuffled.shuffle(&mut rng(seed));
    let test_len = (shuffled.len() as f64 * TEST_FRACTION).round() as usize;
    let train = shuffled.split_off(test_len);
    (train, shuffled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn iid_shards_are_disjoint_complete_and_balanced() {
        let shards = iid(1003, 4, 42);
        let sizes: Vec<usize> = shards.iter().map(Vec::len).collect();
        assert_eq!(sizes, [251, 251, 251, 250]);
        let all: HashSet<usize> = shards.iter().flatten().copied().collect();
        assert_eq!(all.len(), 1003);
    }

    #[test]
    fn the_same_seed_gives_the_same_partitions() {
        assert_eq!(iid(100, 3, 7), iid(100, 3, 7));
        assert_ne!(iid(100, 3, 7), iid(100, 3, 8));
        let labels: Vec<u8> = (0..1000).map(|i| (i % 10) as u8).collect();
        assert_eq!(
            dirichlet(&labels, 10, 4, 0.5, 10, 1),
            dirichlet(&labels, 10, 4, 0.5, 10, 1)
        );
    }

    #[test]
    fn dirichlet_with_small_alpha_skews_labels_and_covers_everything() {
        let labels: Vec<u8> = (0..5000).map(|i| (i % 10) as u8).collect();
        let shards = dirichlet(&labels, 10, 5, 0.1, 10, 3).unwrap();
        let all: HashSet<usize> = shards.iter().flatten().copied().collect();
        assert_eq!(all.len(), 5000);
        assert_eq!(shards.iter().map(Vec::len).sum::<usize>(), 5000);
        // With alpha 0.1 some partition is dominated by few classes.
        let max_share = shards
            .iter()
            .map(|s| {
                let mut counts = [0usize; 10];
                for &i in s {
                    counts[usize::from(labels[i])] += 1;
                }
                *counts.iter().max().unwrap() as f64 / s.len() as f64
            })
            .fold(0.0, f64::max);
        assert!(max_share > 0.3, "no skew: {max_share}");
        assert!(dirichlet(&labels, 10, 5, -1.0, 10, 3).is_err());
    }

    #[test]
    fn train_test_split_is_eighty_twenty_and_disjoint() {
        let indices: Vec<usize> = (0..100).collect();
        let (train, test) = train_test(&indices, 1);
        assert_eq!((train.len(), test.len()), (80, 20));
        let train: HashSet<_> = train.into_iter().collect();
        assert!(test.iter().all(|i| !train.contains(i)));
    }
}
