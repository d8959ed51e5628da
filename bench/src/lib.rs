//! Inputs shared by the benchmarks in `benches/`: model-shaped `ArrayRecord`s of a given size, and
//! (in [`federation`]) a broker with nodes in this process.
//!
//! Run them with `cargo bench -p bench`; each group measures our code beside a baseline in the same
//! run (memcpy for the codec, a plain read of the same bytes and the straightforward implementation
//! for aggregation), so results read as ratios.

pub mod federation;

use wire::{Array, ArrayRecord, DType, Record, RecordDict};

/// Parameter counts measured: the seed's CNN, and models of 10M and 100M parameters.
pub const SIZES: [(usize, &str); 3] = [(62_006, "62k"), (10_000_000, "10M"), (100_000_000, "100M")];

/// An `ArrayRecord` of `parameters` f32 values split like a small network (four arrays), filled
/// with `seed`-dependent values.
pub fn record(parameters: usize, seed: u32) -> ArrayRecord {
    let shares = [parameters / 2, parameters / 4, parameters / 8];
    let last = parameters - shares.iter().sum::<usize>();
    let mut record = ArrayRecord::new();
    for (i, len) in shares.into_iter().chain([last]).enumerate() {
        // Straight into the array's bytes, as a decoder fills them: making a reply never holds
        // two copies of it (the streaming bench measures peak memory).
        let mut data = Vec::with_capacity(len * 4);
        for j in 0..len {
            let value = ((j as u32 ^ seed) % 1000) as f32 * 1e-3;
            data.extend_from_slice(&value.to_le_bytes());
        }
        let array = Array {
            dtype: DType::F32,
            shape: vec![len as u64],
            data,
            serialised: None,
        };
        record.insert(format!("layer{i}.weight"), array);
    }
    record
}

/// Total bytes of a record's arrays.
pub fn bytes(record: &ArrayRecord) -> u64 {
    record.iter().map(|(_, a)| a.data.len() as u64).sum()
}

/// A message content holding `record` as its `arrays` record.
pub fn content(record: ArrayRecord) -> std::sync::Arc<RecordDict> {
    std::sync::Arc::new(RecordDict::new().with("arrays", Record::Arrays(record)))
}

/// The runtime the benches drive the broker and nodes on: two workers, as the machine has cores.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}
