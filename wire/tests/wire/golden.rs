//! Every protocol value round-trips, and encodes to exactly the bytes committed under
//! `tests/fixtures`. A failing golden test means the wire format changed: bump the ALPN version.
//! Regenerate the fixtures deliberately with `WIRE_BLESS=1 cargo test -p wire`.

use crate::samples;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::path::PathBuf;
use wire::frame;
use wire::stream::{self, Limits};

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}.bin"))
}

fn check_golden(name: &str, bytes: &[u8]) {
    let path = fixture_path(name);
    if std::env::var_os("WIRE_BLESS").is_some() {
        std::fs::write(&path, bytes).unwrap();
        return;
    }
    let expected =
        std::fs::read(&path).unwrap_or_else(|e| panic!("missing fixture {}: {e}", path.display()));
    assert_eq!(bytes, expected, "wire format of {name} changed");
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(name: &str, value: &T) {
    let framed = frame::encode(value).unwrap();
    let decoded: T = frame::decode(&framed[frame::PREFIX_LEN..]).unwrap();
    assert_eq!(&decoded, value, "{name} did not round-trip");
    check_golden(name, &framed);
}

#[test]
fn fleet_frames_round_trip_and_match_golden_bytes() {
    for (name, value) in samples::node_frames() {
        round_trip(name, &value);
    }
    for (name, value) in samples::broker_frames() {
        round_trip(name, &value);
    }
    round_trip("instruction_ack", &samples::instruction_ack());
    round_trip("instruction_header", &samples::instruction_header());
    round_trip("app_hello", &samples::app_hello());
    round_trip("app_job", &samples::app_job());
    for (name, value) in samples::reply_outcomes() {
        round_trip(name, &value);
    }
    for (name, value) in samples::node_streams() {
        round_trip(name, &value);
    }
    for (name, value) in samples::bundle_answers() {
        round_trip(name, &value);
    }
}

#[test]
fn control_frames_round_trip_and_match_golden_bytes() {
    for (name, value) in samples::operator_frames() {
        round_trip(name, &value);
    }
    for (name, value) in samples::control_frames() {
        round_trip(name, &value);
    }
}

#[test]
fn messages_round_trip_through_chunked_streams_and_match_golden_bytes() {
    for (name, message) in [
        ("message_content", samples::message()),
        ("message_error", samples::error_message()),
    ] {
        // A 5-byte chunk size splits arrays mid-element, which the receiver must not care about.
        let bytes = stream::encode_message_bytes(&message, 5).unwrap();
        let decoded = stream::decode_message_bytes(&bytes, Limits::default()).unwrap();
        assert_eq!(decoded, message);
        check_golden(name, &bytes);
    }
}

#[test]
fn chunk_size_does_not_change_the_decoded_message() {
    let message = samples::message();
    for chunk in [1, 3, 4, 7, 1 << 20] {
        let bytes = stream::encode_message_bytes(&message, chunk).unwrap();
        assert_eq!(
            stream::decode_message_bytes(&bytes, Limits::default()).unwrap(),
            message
        );
    }
}
