//! One local epoch of the seed's CNN at batch 32 on CIFAR-10-shaped data (synthetic, 3x32x32), in
//! samples per second, on the CPU backend (Burn's Flex) at one thread and at two, and on a GPU
//! through wgpu when one exists. Beside each: inference alone (forward passes over the same
//! batches), the part of training no optimisation of the backward pass can remove, and on the CPU
//! the same epoch through Burn's own convolution, ReLU and pooling operations instead of the fused
//! kernels (`model::cnn::conv_block`), the path they replaced.

use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use model::cnn::backend::{BackendChoice, TrainingDevice, select};
use model::cnn::module::Net;
use model::cnn::train::{Forward, TrainConfig, evaluate, input_shape, train_with};
use model::data::Dataset;
use model::net::initial_parameters;
use std::hint::black_box;
use wire::ArrayRecord;

/// Samples per measured epoch.
const SAMPLES: usize = 1024;

const CONFIG: TrainConfig = TrainConfig {
    learning_rate: 0.01,
    momentum: 0.9,
    epochs: 1,
    batch_size: 32,
    seed: 1,
};

/// The model, the data, the device and the threads one group measures.
struct Setup<'a> {
    arrays: &'a ArrayRecord,
    data: &'a Dataset,
    device: &'a TrainingDevice,
    /// Burn's Flex backend and the fused kernels both run on rayon's current pool: this one when
    /// set, else rayon's global pool.
    pool: Option<rayon::ThreadPool>,
}

impl Setup<'_> {
    fn run<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) => pool.install(work),
            None => work(),
        }
    }
}

fn epoch(setup: &Setup<'_>, forward: Forward) {
    let trained = setup.run(|| {
        train_with(
            forward,
            setup.arrays,
            setup.data,
            &CONFIG,
            &setup.device.device,
            &mut |_| {},
            &|| false,
        )
        .ok()
    });
    black_box(trained);
}

fn measure(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    setup: &Setup<'_>,
    with_reference: bool,
) {
    group.sample_size(10);
    group.throughput(Throughput::Elements(SAMPLES as u64));
    group.bench_function("inference only (baseline)", |b| {
        b.iter(|| {
            black_box(
                setup.run(|| evaluate(setup.arrays, setup.data, 32, &setup.device.device).ok()),
            )
        })
    });
    group.bench_function("one epoch, batch 32", |b| {
        b.iter(|| epoch(setup, Net::forward))
    });
    if with_reference {
        group.bench_function("one epoch, batch 32, Burn's operations (before)", |b| {
            b.iter(|| epoch(setup, Net::forward_reference))
        });
    }
}

fn training(c: &mut Criterion) {
    let data = model::data::sources::synthetic(SAMPLES, 7);
    let Some(arrays) = initial_parameters(input_shape(&data), 42) else {
        return;
    };
    if let Ok(device) = select(BackendChoice::Cpu) {
        for threads in [1, 2] {
            let Ok(pool) = rayon::ThreadPoolBuilder::new().num_threads(threads).build() else {
                continue;
            };
            let setup = Setup {
                arrays: &arrays,
                data: &data,
                device: &device,
                pool: Some(pool),
            };
            let name = format!("training/{}, {threads} thread(s)", device.description);
            let mut group = c.benchmark_group(name);
            measure(&mut group, &setup, true);
            group.finish();
        }
    }
    // Auto picks a discrete or integrated GPU, never a software adapter.
    match select(BackendChoice::Auto) {
        Ok(device) if device.description.contains("GPU") => {
            let setup = Setup {
                arrays: &arrays,
                data: &data,
                device: &device,
                pool: None,
            };
            let mut group = c.benchmark_group(format!("training/{}", device.description));
            measure(&mut group, &setup, false);
            group.finish();
        }
        _ => eprintln!("training/wgpu: skipped, no GPU adapter"),
    }
}

criterion_group!(benches, training);
criterion_main!(benches);
