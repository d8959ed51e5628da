//! Encoding and decoding an ArrayRecord as a chunked message stream, beside memcpy of the same bytes.

use bench::{SIZES, bytes, record};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use wire::stream::{DEFAULT_CHUNK, Limits, decode_message_bytes, encode_message_bytes};
use wire::{
    Message, MessageBody, MessageId, MessageType, Metadata, NodeId, Record, RecordDict, RunId,
};

fn message(parameters: usize) -> Message {
    Message {
        metadata: Metadata {
            run_id: RunId(1),
            message_id: MessageId(2),
            src_node_id: NodeId::SERVER,
            dst_node_id: NodeId(7),
            reply_to: None,
            group_id: "1".into(),
            ttl_ms: 60_000,
            message_type: MessageType::TRAIN,
            created_at_ms: 0,
        },
        body: MessageBody::Content(
            RecordDict::new().with("arrays", Record::Arrays(record(parameters, 1))),
        ),
    }
}

fn codec(c: &mut Criterion) {
    for (parameters, label) in SIZES {
        let message = message(parameters);
        let MessageBody::Content(content) = &message.body else {
            return;
        };
        let size = content.arrays("arrays").map(bytes).unwrap_or(0);
        let encoded = encode_message_bytes(&message, DEFAULT_CHUNK).unwrap_or_default();
        let flat: Vec<u8> = vec![1u8; size as usize];
        let mut group = c.benchmark_group(format!("codec/{label}"));
        group.throughput(Throughput::Bytes(size));
        group.bench_function("memcpy (baseline)", |b| b.iter(|| black_box(flat.clone())));
        group.bench_function("encode", |b| {
            b.iter(|| black_box(encode_message_bytes(&message, DEFAULT_CHUNK)))
        });
        group.bench_function("decode", |b| {
            b.iter(|| black_box(decode_message_bytes(&encoded, Limits::default())))
        });
        group.finish();
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
