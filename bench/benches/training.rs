//! One local epoch of the seed's CNN at batch 32 on CIFAR-10-shaped data (synthetic, 3x32x32), in
//! samples per second, on the CPU backend (Burn's Flex) and on a GPU through wgpu when one exists.
//! The baseline beside each is inference alone (forward passes over the same batches), the part of
//! training no optimisation of the backward pass can remove.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use model::cnn::backend::{BackendChoice, TrainingDevice, select};
use model::cnn::train::{TrainConfig, evaluate, input_shape, train};
use model::net::initial_parameters;
use std::hint::black_box;

/// Samples per measured epoch.
const SAMPLES: usize = 1024;

fn training(c: &mut Criterion) {
    let data = model::data::sources::synthetic(SAMPLES, 7);
    let Some(arrays) = initial_parameters(input_shape(&data), 42) else {
        return;
    };
    let config = TrainConfig {
        learning_rate: 0.01,
        momentum: 0.9,
        epochs: 1,
        batch_size: 32,
        seed: 1,
    };
    let mut devices: Vec<TrainingDevice> = select(BackendChoice::Cpu).into_iter().collect();
    // Auto picks a discrete or integrated GPU, never a software adapter.
    match select(BackendChoice::Auto) {
        Ok(device) if device.description.contains("GPU") => devices.push(device),
        _ => eprintln!("training/wgpu: skipped, no GPU adapter"),
    }
    for device in devices {
        let mut group = c.benchmark_group(format!("training/{}", device.description));
        group.sample_size(10);
        group.throughput(Throughput::Elements(SAMPLES as u64));
        group.bench_function("inference only (baseline)", |b| {
            b.iter(|| black_box(evaluate(&arrays, &data, 32, &device.device).ok()))
        });
        group.bench_function("one epoch, batch 32", |b| {
            b.iter(|| {
                black_box(
                    train(
                        &arrays,
                        &data,
                        &config,
                        &device.device,
                        &mut |_| {},
                        &|| false,
                    )
                    .ok(),
                )
            })
        });
        group.finish();
    }
}

criterion_group!(benches, training);
criterion_main!(benches);
