//! Truncated, oversized, trailing and random input: always a typed error, never a panic.

use crate::samples;
use proptest::prelude::*;
use wire::control::{ControlFrame, OperatorFrame};
use wire::fleet::{BrokerFrame, NodeFrame};
use wire::stream::{self, Limits, MessageAssembler};
use wire::{WireError, frame};

#[test]
fn every_truncation_of_a_message_stream_is_an_error() {
    let bytes = stream::encode_message_bytes(&samples::message(), 4).unwrap();
    for cut in 0..bytes.len() {
        let result = stream::decode_message_bytes(&bytes[..cut], Limits::default());
        assert!(result.is_err(), "a stream cut at {cut} bytes was accepted");
    }
}

#[test]
fn every_truncation_of_a_control_frame_is_an_error() {
    for (_, value) in samples::control_frames() {
        let framed = frame::encode(&value).unwrap();
        let payload = &framed[frame::PREFIX_LEN..];
        for cut in 0..payload.len() {
            assert!(frame::decode::<ControlFrame>(&payload[..cut]).is_err());
        }
    }
}

#[test]
fn trailing_bytes_after_a_message_are_refused() {
    let mut bytes = stream::encode_message_bytes(&samples::message(), 64).unwrap();
    bytes.extend_from_slice(&[1, 0, 0, 0, 0]);
    assert!(matches!(
        stream::decode_message_bytes(&bytes, Limits::default()),
        Err(WireError::TrailingBytes(5))
    ));
}

#[test]
fn payload_above_the_limit_is_refused_at_the_head() {
    let bytes = stream::encode_message_bytes(&samples::message(), 64).unwrap();
    let limits = Limits {
        max_frame: 1 << 20,
        max_payload: 8,
    };
    assert!(matches!(
        stream::decode_message_bytes(&bytes, limits),
        Err(WireError::FrameTooLarge { .. })
    ));
}

#[test]
fn a_head_announcing_a_huge_array_is_refused_before_allocation() {
    let mut message = samples::message();
    if let wire::MessageBody::Content(content) = &mut message.body
        && let Some(wire::Record::Arrays(arrays)) = content.get_mut("arrays")
    {
        let array = arrays.get_mut("conv1.bias").unwrap();
        array.shape = vec![1 << 40, 1 << 20];
        array.data.clear();
    }
    let head = postcard::to_stdvec(&message).unwrap();
    let mut assembler = MessageAssembler::new(Limits::default());
    assert!(assembler.feed(&head).is_err());
}

#[test]
fn bytes_beyond_the_announced_arrays_are_refused() {
    let message = samples::message();
    let frames = stream::encode_message(&message, 1 << 20).unwrap();
    let announced: usize = frames[1..].iter().map(|f| f.payload().len()).sum();
    let mut assembler = MessageAssembler::new(Limits::default());
    assert!(assembler.feed(frames[0].payload()).unwrap().is_none());
    // One chunk carrying every announced byte plus one more.
    let oversized = vec![0u8; announced + 1];
    assert!(matches!(
        assembler.feed(&oversized),
        Err(WireError::Stream(_))
    ));
}

#[test]
fn duplicate_array_names_are_refused() {
    let message = samples::message();
    let mut bytes = postcard::to_stdvec(&message.metadata).unwrap();
    // Body::Content, 1 record "r" of Arrays with two entries both named "a", empty shape F32.
    bytes.extend_from_slice(&[0, 1, 1, b'r', 0, 2, 1, b'a', 0, 0, 0, 1, b'a', 0, 0, 0]);
    let mut assembler = MessageAssembler::new(Limits::default());
    let error = assembler.feed(&bytes).unwrap_err();
    assert!(
        matches!(error, WireError::Invalid(ref why) if why.contains("duplicate")),
        "{error}"
    );
}

#[test]
fn an_oversized_frame_prefix_is_refused() {
    assert!(matches!(
        frame::payload_len(u32::MAX.to_le_bytes(), frame::DEFAULT_MAX_FRAME),
        Err(WireError::FrameTooLarge { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic_the_frame_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = frame::decode::<NodeFrame>(&bytes);
        let _ = frame::decode::<BrokerFrame>(&bytes);
        let _ = frame::decode::<OperatorFrame>(&bytes);
        let _ = frame::decode::<ControlFrame>(&bytes);
        let _ = stream::decode_message_bytes(&bytes, Limits::default());
    }

    #[test]
    fn bit_flips_in_a_message_stream_never_panic(index in 0usize..4096, bit in 0u8..8) {
        let mut bytes = stream::encode_message_bytes(&samples::message(), 8).unwrap();
        let index = index % bytes.len();
        bytes[index] ^= 1 << bit;
        if let Ok(message) = stream::decode_message_bytes(&bytes, Limits::default()) {
            // Whatever decodes must still satisfy every invariant.
            prop_assert!(message.validate().is_ok());
        }
    }

    #[test]
    fn random_chunks_after_a_valid_head_never_panic(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)
    ) {
        let message = samples::message();
        let frames = stream::encode_message(&message, 1 << 20).unwrap();
        let mut assembler = MessageAssembler::new(Limits::default());
        assembler.feed(frames[0].payload()).unwrap();
        for chunk in &chunks {
            if assembler.feed(chunk).is_err() {
                break;
            }
        }
    }
}
