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
        ..Limits::default()
    };
    assert!(matches!(
        stream::decode_message_bytes(&bytes, limits),
        Err(WireError::FrameTooLarge { .. })
    ));
}

/// A message whose array record holds `count` one-byte arrays.
fn many_tiny_arrays(count: usize) -> wire::Message {
    let arrays: wire::ArrayRecord = (0..count)
        .map(|i| {
            let array = wire::Array {
                dtype: wire::DType::U8,
                shape: vec![1],
                data: vec![i as u8],
                serialised: None,
            };
            (format!("a{i}"), array)
        })
        .collect();
    wire::Message {
        metadata: samples::metadata(),
        body: wire::MessageBody::Content(
            wire::RecordDict::new().with("arrays", wire::Record::Arrays(arrays)),
        ),
    }
}

/// Decodes `bytes` on another thread and returns what it gave within `deadline`, or `None`: a
/// super-linear decoder fails the test at the deadline instead of running it for minutes.
fn decode_within(
    bytes: Vec<u8>,
    limits: Limits,
    deadline: std::time::Duration,
) -> Option<Result<wire::Message, WireError>> {
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(stream::decode_message_bytes(&bytes, limits));
    });
    result.recv_timeout(deadline).ok()
}

#[test]
fn two_hundred_thousand_one_byte_arrays_are_refused_at_the_head_within_100_ms() {
    // About 1.8 MB of head: well inside the 8 MiB frame limit. Written as a peer would, past
    // the encoder, which refuses to write what no decoder takes.
    let mut head = many_tiny_arrays(200_000);
    if let wire::MessageBody::Content(content) = &mut head.body
        && let Some(wire::Record::Arrays(arrays)) = content.get_mut("arrays")
    {
        arrays.iter_mut().for_each(|(_, array)| array.data.clear());
    }
    let bytes = wire::frame::encode(&head).unwrap();
    let started = std::time::Instant::now();
    let result = decode_within(
        bytes,
        Limits::default(),
        std::time::Duration::from_millis(100),
    )
    .unwrap_or_else(|| panic!("still decoding after {:?}", started.elapsed()));
    // postcard keeps no text for a decoder's own refusal: it is a malformed value.
    let error = result.unwrap_err();
    assert!(matches!(error, WireError::Malformed(_)), "{error}");
}

#[test]
fn assembly_is_linear_in_the_number_of_arrays() {
    // Below every cap, so the whole message is assembled: tens of thousands of arrays filled from
    // one chunk. Walking to each array from the start made this take minutes.
    let count = 60_000;
    let message = many_tiny_arrays(count);
    let bytes = stream::encode_message_bytes(&message, 1 << 20).unwrap();
    let decoded = decode_within(bytes, Limits::default(), std::time::Duration::from_secs(5))
        .expect("assembly did not finish within 5 s")
        .unwrap();
    assert_eq!(decoded, message);
}

#[test]
fn more_arrays_than_the_receiver_allows_are_refused_at_the_head() {
    let bytes = stream::encode_message_bytes(&many_tiny_arrays(11), 1 << 20).unwrap();
    let limits = Limits {
        max_arrays: 10,
        ..Limits::default()
    };
    let error = stream::decode_message_bytes(&bytes, limits).unwrap_err();
    assert!(
        matches!(error, WireError::Invalid(ref why) if why.contains("more than 10 arrays")),
        "{error}"
    );
}

#[test]
fn a_head_announcing_a_huge_array_is_refused_before_allocation() {
    let mut message = samples::message();
    if let wire::MessageBody::Content(content) = &mut message.body
        && let Some(wire::Record::Arrays(arrays)) = content.get_mut("arrays")
    {
        // A head carries no array bytes: every array is announced, this one hugely.
        for (_, array) in arrays.iter_mut() {
            array.data.clear();
        }
        arrays.get_mut("conv1.bias").unwrap().shape = vec![1 << 40, 1 << 20];
    }
    let head = postcard::to_stdvec(&message).unwrap();
    let mut assembler = MessageAssembler::new(Limits::default());
    assert!(matches!(
        assembler.feed(&head),
        Err(WireError::FrameTooLarge { .. })
    ));
}

#[test]
fn a_head_announcing_exactly_the_limit_reserves_only_what_arrives() {
    // One F32 array of 2^32 elements: exactly the default 16 GiB limit, so the head is accepted.
    let message = samples::head_of_one_f32_array(1 << 32);
    let limits = Limits::default();
    assert_eq!(limits.max_payload, 1 << 34);
    let mut assembler = MessageAssembler::new(limits);
    assert!(
        assembler
            .feed(&postcard::to_stdvec(&message).unwrap())
            .unwrap()
            .is_none()
    );
    assert_eq!(assembler.announced_payload(), 1 << 34);
    assert!(assembler.feed(&[7]).unwrap().is_none());
    assert!(
        assembler.reserved() <= 2,
        "{} bytes reserved for one byte received",
        assembler.reserved()
    );
    // Honest bytes keep coming: capacity stays within twice what arrived.
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..8 {
        assert!(assembler.feed(&chunk).unwrap().is_none());
    }
    assert!(assembler.reserved() <= 2 * (8 << 20) + 2);
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
    // Body::Content, 1 record "r" of Arrays with two entries both named "a": F32, empty shape,
    // no bytes, not serialised.
    bytes.extend_from_slice(&[
        0, 1, 1, b'r', 0, 2, 1, b'a', 0, 0, 0, 0, 1, b'a', 0, 0, 0, 0,
    ]);
    let mut assembler = MessageAssembler::new(Limits::default());
    let error = assembler.feed(&bytes).unwrap_err();
    assert!(
        matches!(error, WireError::Invalid(ref why) if why.contains("duplicate")),
        "{error}"
    );
}

#[test]
fn a_serialised_array_not_described_as_its_bytes_is_refused_on_the_head() {
    let message = samples::message();
    let head = |array: &[u8]| {
        let mut bytes = postcard::to_stdvec(&message.metadata).unwrap();
        // Body::Content, 1 record "r" of Arrays with one entry "a", then the array.
        bytes.extend_from_slice(&[0, 1, 1, b'r', 0, 1, 1, b'a']);
        bytes.extend_from_slice(array);
        bytes
    };
    // F32 of shape [1], no bytes in the head, serialised as ("", [], ""): not U8 [length].
    let as_floats = head(&[0, 1, 1, 0, 1, 0, 0, 0]);
    // U8 of shape [1], serialised with a dtype name of 2,000 bytes.
    let mut long_name = vec![7, 1, 1, 0, 1];
    long_name.extend_from_slice(&[0xd0, 0x0f]);
    long_name.extend(std::iter::repeat_n(b'x', 2000));
    long_name.extend_from_slice(&[0, 0]);
    for bytes in [as_floats, head(&long_name)] {
        let mut assembler = MessageAssembler::new(Limits::default());
        let error = assembler.feed(&bytes).unwrap_err();
        assert!(
            matches!(error, WireError::Invalid(ref why) if why.contains("serialised array")),
            "{error}"
        );
    }
}

#[test]
fn a_value_of_an_unknown_kind_is_refused() {
    let message = samples::message();
    for (record, value) in [(2u8, 12u8), (1, 6)] {
        let mut bytes = postcard::to_stdvec(&message.metadata).unwrap();
        // Body::Content, 1 record "r" (config or metrics) of one entry "v" whose value is of a
        // kind past the last one this version knows (ConfigValue 12, MetricValue 6).
        bytes.extend_from_slice(&[0, 1, 1, b'r', record, 1, 1, b'v', value, 0]);
        let mut assembler = MessageAssembler::new(Limits::default());
        let error = assembler.feed(&bytes).unwrap_err();
        assert!(matches!(error, WireError::Malformed(_)), "{error}");
    }
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
