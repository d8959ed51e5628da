//! Messages read off a byte stream, each chunk's bytes moved straight into their array: the same
//! message whatever the chunk size and however the stream splits its reads, and every defect a
//! typed error, with memory that follows the bytes that arrived.

use crate::samples;
use tokio::io::AsyncWriteExt as _;
use wire::io::{FrameIoError, read_arrays, read_message};
use wire::stream::{self, Limits, MessageAssembler};
use wire::{WireError, frame};

/// `payload` with its length prefix.
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut bytes = frame::prefix(payload.len()).unwrap().to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

#[tokio::test]
async fn a_message_off_a_stream_equals_the_one_sent_whatever_the_chunk_and_read_sizes() {
    let message = samples::message();
    for chunk in [1, 3, 4, 7, 64, 1 << 20] {
        let bytes = stream::encode_message_bytes(&message, chunk).unwrap();
        // A one-byte pipe hands every read a single byte; chunks then span arrays and reads.
        for pipe in [1, 5, 4096] {
            let (mut writer, mut reader) = tokio::io::duplex(pipe);
            let sent = bytes.clone();
            let writing = tokio::spawn(async move { writer.write_all(&sent).await });
            let read = read_message(&mut reader, Limits::default()).await;
            writing.await.unwrap().unwrap();
            assert_eq!(read.unwrap(), message, "chunk {chunk}, pipe {pipe}");
        }
    }
}

#[tokio::test]
async fn every_truncation_of_a_message_stream_is_an_error_off_a_stream() {
    let bytes = stream::encode_message_bytes(&samples::message(), 4).unwrap();
    for cut in 0..bytes.len() {
        let mut truncated = &bytes[..cut];
        let result = read_message(&mut truncated, Limits::default()).await;
        assert!(result.is_err(), "a stream cut at {cut} bytes was accepted");
    }
}

#[tokio::test]
async fn bytes_beyond_the_announced_arrays_are_refused_off_a_stream() {
    let message = samples::message();
    let frames = stream::encode_message(&message, 1 << 20).unwrap();
    let announced: usize = frames[1..].iter().map(|f| f.payload().len()).sum();
    let mut bytes = framed(frames[0].payload());
    bytes.extend(framed(&vec![0u8; announced + 1]));
    assert!(matches!(
        read_message(&mut &bytes[..], Limits::default()).await,
        Err(FrameIoError::Wire(WireError::Stream(_)))
    ));
}

#[tokio::test]
async fn an_empty_chunk_frame_is_refused_off_a_stream() {
    let message = samples::message();
    let frames = stream::encode_message(&message, 1 << 20).unwrap();
    let mut bytes = framed(frames[0].payload());
    bytes.extend(framed(&[]));
    assert!(matches!(
        read_message(&mut &bytes[..], Limits::default()).await,
        Err(FrameIoError::Wire(WireError::Stream(_)))
    ));
}

#[tokio::test]
async fn a_chunk_frame_above_the_frame_limit_is_refused_before_its_bytes_are_read() {
    let message = samples::message();
    let frames = stream::encode_message(&message, 1 << 20).unwrap();
    let head = frames[0].payload();
    let limits = Limits {
        max_frame: head.len() as u32,
        ..Limits::default()
    };
    let mut bytes = framed(head);
    bytes.extend(frame::prefix(head.len() + 1).unwrap());
    assert!(matches!(
        read_message(&mut &bytes[..], limits).await,
        Err(FrameIoError::Wire(WireError::FrameTooLarge { .. }))
    ));
}

#[tokio::test]
async fn a_head_announcing_the_limit_reserves_only_what_arrives_off_a_stream() {
    // One F32 array of 2^32 elements (the default 16 GiB limit), then a chunk frame that
    // announces a mebibyte and delivers one byte before the stream ends.
    let message = samples::head_of_one_f32_array(1 << 32);
    let mut assembler = MessageAssembler::new(Limits::default());
    let head = postcard::to_stdvec(&message).unwrap();
    assert!(assembler.feed(&head).unwrap().is_none());
    let mut bytes = frame::prefix(1 << 20).unwrap().to_vec();
    bytes.push(7);
    let mut stream = &bytes[..];
    assert!(matches!(
        read_arrays(&mut stream, &mut assembler).await,
        Err(FrameIoError::Wire(WireError::Truncated(_)))
    ));
    assert!(
        assembler.reserved() <= stream::FIRST_READ + 2,
        "{} bytes reserved for one byte received",
        assembler.reserved()
    );
}
