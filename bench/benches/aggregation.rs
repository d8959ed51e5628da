//! FedAvg over N replies of P parameters, beside a plain read of the same bytes (the memory
//! bandwidth ceiling) and the straightforward implementation (decode every reply into f32 vectors,
//! then average). Ours runs in both forms: one pass over replies in memory, and streaming (replies
//! folded in one at a time, as they arrive), whose peak memory is printed first. Each form runs
//! on fresh memory and recycled, as a round does: the mean is written into the memory of the
//! model sent out, and the streaming sum keeps its own from the round before.

use bench::{SIZES, bytes, record};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flwr_sdk::fedavg::{FedAvg, Spare, aggregate, aggregate_into};
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

/// Reads every reply and writes one model's worth of output, word by word, into `out` (memory
/// already mapped, as a recycled mean's is): the least traffic any mean of two replies can make,
/// since the mean must be written somewhere, and that write is a third of the traffic. Measured
/// with two replies only: with more, its pass per reply over the output block is no ceiling.
fn read_and_write(replies: &[ArrayRecord], out: &mut [Vec<u64>]) {
    // Block by block, so that the output block stays in cache while every reply's block is
    // added to it: each byte is read once and each output word written once.
    const BLOCK: usize = 1 << 15;
    let word = |raw: &[u8]| {
        let mut value = [0u8; 8];
        value.copy_from_slice(raw);
        u64::from_le_bytes(value)
    };
    for (position, words) in out.iter_mut().enumerate() {
        let arrays: Vec<&[u8]> = replies
            .iter()
            .filter_map(|reply| reply.iter().nth(position).map(|(_, a)| a.data.as_slice()))
            .collect();
        let Some((first, rest)) = arrays.split_first() else {
            continue;
        };
        for (index, block) in words.chunks_mut(BLOCK).enumerate() {
            let range = index * BLOCK * 8..(index * BLOCK + block.len()) * 8;
            for (out, raw) in block.iter_mut().zip(first[range.clone()].chunks_exact(8)) {
                *out = word(raw);
            }
            for bytes in rest {
                for (out, raw) in block.iter_mut().zip(bytes[range.clone()].chunks_exact(8)) {
                    *out = out.wrapping_add(word(raw));
                }
            }
        }
    }
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

/// Resident memory's high-water mark, from /proc/self/status (Linux).
fn resident_high_water() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Peak resident memory, above what was resident at the start, while `replies` replies of
/// `parameters` values stream through FedAvg: each is made just before it is folded in and
/// dropped just after, as replies arriving off the network are. The model is made beforehand.
/// `None` where the high-water mark cannot be reset (through /proc/self/clear_refs, Linux).
fn streaming_peak(parameters: usize, replies: usize) -> Option<u64> {
    let model = record(parameters, 0);
    std::fs::write("/proc/self/clear_refs", "5").ok()?;
    let start = resident_high_water()?;
    let mut fedavg = FedAvg::new(&model).ok()?;
    for i in 0..replies {
        let reply = record(parameters, i as u32 + 1);
        fedavg.add(&reply, 100.0 + i as f64).ok()?;
    }
    black_box(fedavg.finish().ok()?);
    Some(resident_high_water()?.saturating_sub(start))
}

/// Prints streaming FedAvg's peak memory in models' worth, for several reply counts: it should be
/// about one model (the running sum) plus one reply, then the mean, whatever N.
fn report_streaming_peaks() {
    for (parameters, label, replies) in [
        (10_000_000, "10M", 2),
        (10_000_000, "10M", 10),
        (10_000_000, "10M", 100),
        (100_000_000, "100M", 10),
    ] {
        let model_bytes = parameters as f64 * 4.0;
        match streaming_peak(parameters, replies) {
            Some(peak) => eprintln!(
                "aggregation/{label}x{replies}/fedavg (streaming): peak memory {:.0} MiB, {:.2} models",
                peak as f64 / f64::from(1 << 20),
                peak as f64 / model_bytes
            ),
            None => eprintln!("aggregation/{label}x{replies}: peak memory not measured here"),
        }
    }
}

fn aggregation(c: &mut Criterion) {
    report_streaming_peaks();
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
            if replies == 2 {
                let mut out: Vec<Vec<u64>> = model
                    .iter()
                    .map(|(_, array)| vec![1u64; array.data.len() / 8])
                    .collect();
                group.bench_function("read and write one model", |b| {
                    b.iter(|| read_and_write(black_box(&inputs), black_box(&mut out)))
                });
            }
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
            let mut spare = Spare::default();
            group.bench_function("fedavg (one pass, recycled)", |b| {
                b.iter(|| {
                    let mean = aggregate_into(&model, &borrowed, &mut spare).ok()?.mean;
                    spare.recycle(black_box(mean));
                    Some(())
                })
            });
            let mut fedavg = FedAvg::new(&model).expect("the model is f32");
            group.bench_function("fedavg (streaming, recycled)", |b| {
                b.iter(|| {
                    for (reply, weight) in &borrowed {
                        fedavg.add(reply, *weight).ok()?;
                    }
                    let mean = fedavg.take_mean().ok()?;
                    fedavg.recycle(black_box(mean));
                    Some(())
                })
            });
            group.finish();
        }
    }
}

criterion_group!(benches, aggregation);
criterion_main!(benches);
