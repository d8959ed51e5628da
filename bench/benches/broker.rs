//! The broker under many nodes: instruction delivery latency (from handing a round to the grid to
//! the node's client app starting on it) with 1, 100 and 1,000 nodes connected, and a CNN-sized
//! round (62,006 parameters out to every node and back, then averaged) with 1,000 nodes. Nodes are
//! real node daemons in this process. Delivery p50 and p99 are printed after each group.
//!
//! The baseline beside delivery is a round trip of the same size through a tokio channel pair in
//! the same runtime: the cost of waking a task, which no network path can beat.

use bench::federation::{Federation, Round, quantile};
use bench::{content, record};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::time::{Duration, Instant};

/// Node counts measured.
const NODES: [usize; 3] = [1, 100, 1000];

/// Parameters of the seed's CNN.
const CNN_PARAMETERS: usize = 62_006;

/// One socket per node daemon: lift the soft open-file limit to the hard one.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn broker(c: &mut Criterion) {
    raise_open_file_limit();
    let Ok(runtime) = bench::runtime() else {
        return;
    };
    let tiny = content(record(4, 1));
    for nodes in NODES {
        let federation = match runtime.block_on(Federation::start(nodes)) {
            Ok(federation) => federation,
            Err(error) => {
                eprintln!("broker/{nodes} nodes: cannot set up: {error}");
                continue;
            }
        };
        let mut latencies = Vec::new();
        let mut group = c.benchmark_group(format!("broker/delivery/{nodes} nodes"));
        group.sample_size(20);
        group.bench_function("tokio channel round trip (baseline)", |b| {
            b.iter_custom(|iterations| {
                runtime.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iterations {
                        let (to_task, mut task_in) = tokio::sync::mpsc::channel::<u64>(1);
                        let (to_bench, mut bench_in) = tokio::sync::mpsc::channel::<u64>(1);
                        tokio::spawn(async move {
                            if let Some(v) = task_in.recv().await {
                                let _ = to_bench.send(v).await;
                            }
                        });
                        let _ = to_task.send(1).await;
                        let _ = bench_in.recv().await;
                    }
                    started.elapsed()
                })
            })
        });
        let mut next = 0;
        group.bench_function("instruction to one node (enqueue to receipt)", |b| {
            b.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let node = federation.node_ids[next % federation.node_ids.len()];
                    next += 1;
                    if let Ok(result) = federation.round(Round {
                        nodes: vec![node],
                        content: tiny.clone(),
                    }) && let Some(&latency) = result.delivery.first()
                    {
                        latencies.push(latency);
                        total += latency;
                    }
                }
                total
            })
        });
        group.finish();
        let p50 = quantile(&mut latencies, 0.5);
        let p99 = quantile(&mut latencies, 0.99);
        eprintln!(
            "broker/delivery/{nodes} nodes: p50 {p50:?}, p99 {p99:?} over {} instructions",
            latencies.len()
        );

        if nodes == 1000 {
            let cnn = content(record(CNN_PARAMETERS, 1));
            let mut group = c.benchmark_group(format!("broker/round/{nodes} nodes"));
            group.sample_size(10);
            group.throughput(Throughput::Elements(nodes as u64));
            let mut fan_out = Vec::new();
            group.bench_function("CNN round: out to every node and back", |b| {
                b.iter_custom(|iterations| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iterations {
                        if let Ok(result) = federation.round(Round {
                            nodes: federation.node_ids.clone(),
                            content: cnn.clone(),
                        }) {
                            total += result.elapsed;
                            fan_out.extend(result.delivery.iter().max().copied());
                        }
                    }
                    total
                })
            });
            group.finish();
            eprintln!(
                "broker/round/{nodes} nodes: the last node had its instruction after {:?} (median over rounds)",
                quantile(&mut fan_out, 0.5)
            );
        }
        runtime.block_on(federation.stop());
    }
}

criterion_group!(benches, broker);
criterion_main!(benches);
