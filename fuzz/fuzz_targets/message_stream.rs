//! The streamed-message receiver on arbitrary bytes: whatever it accepts must be a valid message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::stream::{Limits, decode_message_bytes};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_frame: 1 << 16,
        max_payload: 1 << 20,
        ..Limits::default()
    };
    if let Ok(message) = decode_message_bytes(data, limits) {
        assert!(message.validate().is_ok());
    }
});
