//! FedAvg over N replies of P parameters, beside a plain read of the same bytes (the memory
//! bandwidth ceiling) and the straightforward implementation (decode every reply into f32 vectors,
//! then average). Ours runs in both forms: one pass over replies in memory, and streaming (replies
//! folded in one at a time, as they arrive).

use bench::{SIZES, bytes, record};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use model::fedavg::{FedAvg, aggregate};
use std::hint::black_box;
use wire::ArrayRecord;

/// Reply counts measured.
const REPLIES: [usize; 3] = [2, 10, 100];

/// Inputs larger than this are skipped: with the straightforward implementation's decoded copy
/// they would need twice as much, and the machine has 24 GiB.
const MAX_INPUT_BYTES: u64 = 5 << 30;

/// Sums every 8-byte word: as little work per byte as reading can be.
fn plain_read(replies: &[ArrayRecord]) -> u64 {
    let mut sum = 0u64;
    for reply in replies {
        for (_, array) in reply.iter() {
            sum = array.data.chunks_exact(8).fold(sum, |acc, word| {
                let mut raw = [0u8; 8];
                raw.copy_from_slice(word);
                acc.wrapping_add(u64::from_le_bytes(raw))
            });
        }
    }
    sum
}

/// Decode everything, then average element by element.
fn straightforward(replies: &[ArrayRecord], weights: &[f64]) -> Vec<Vec<f32>> {
    let decoded: Vec<Vec<Vec<f32>>> = replies
        .iter()
        .map(|r| {
            r.iter()
                .map(|(_, a)| a.to_f32().unwrap_or_default())
                .collect()
        })
        .collect();
    let total: f64 = weights.iter().sum();
    let mut out: Vec<Vec<f32>> = decoded[0].iter().map(|a| vec![0.0; a.len()]).collect();
    for (reply, weight) in decoded.iter().zip(weights) {
        for (sum, values) in out.iter_mut().zip(reply) {
            for (s, v) in sum.iter_mut().zip(values) {
                *s += (*weight / total) as f32 * v;
            }
        }
    }
    out
}

fn aggregation(c: &mut Criterion) {
    for (parameters, label) in SIZES {
        let model = record(parameters, 0);
        for replies in REPLIES {
            let input_bytes = bytes(&model) * replies as u64;
            if input_bytes > MAX_INPUT_BYTES {
                eprintln!(
                    "aggregation/{label}x{replies}: skipped, {} GiB of replies would not fit beside their decoded copy",
                    input_bytes >> 30
                );
                continue;
            }
            let inputs: Vec<ArrayRecord> = (0..replies)
                .map(|i| record(parameters, i as u32 + 1))
                .collect();
            let weights: Vec<f64> = (0..replies).map(|i| 100.0 + i as f64).collect();
            let borrowed: Vec<(&ArrayRecord, f64)> =
                inputs.iter().zip(weights.iter().copied()).collect();
            let mut group = c.benchmark_group(format!("aggregation/{label}x{replies}"));
            group.sample_size(10);
            group.throughput(Throughput::Bytes(input_bytes));
            group.bench_function("plain read (ceiling)", |b| {
                b.iter(|| black_box(plain_read(&inputs)))
            });
            group.bench_function("straightforward", |b| {
                b.iter(|| black_box(straightforward(&inputs, &weights)))
            });
            group.bench_function("fedavg (one pass)", |b| {
                b.iter(|| black_box(aggregate(&model, &borrowed).ok()))
            });
            group.bench_function("fedavg (streaming)", |b| {
                b.iter(|| {
                    let mut fedavg = FedAvg::new(&model).ok()?;
                    for (reply, weight) in &borrowed {
                        fedavg.add(reply, *weight).ok()?;
                    }
                    black_box(fedavg.finish().ok())
                })
            });
            group.finish();
        }
    }
}

criterion_group!(benches, aggregation);
criterion_main!(benches);
