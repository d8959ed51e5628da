//! The broker's reply path on arbitrary bytes, with the frame size and payload limit a broker uses:
//! frames go into the assembler one by one, as they come off a stream. Memory must grow with the
//! bytes fed, never with what a head announces, and whatever completes must be a valid message.
//! `scripts/fuzz` runs it with a per-input timeout, so a super-linear path is a failure too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::frame::{DEFAULT_MAX_FRAME, take_frame};
use wire::stream::{Limits, MessageAssembler};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_frame: DEFAULT_MAX_FRAME,
        max_payload: 1 << 30,
        ..Limits::default()
    };
    let mut assembler = MessageAssembler::new(limits);
    let mut rest = data;
    let mut fed = 0usize;
    while let Ok(Some((payload, after))) = take_frame(rest, limits.max_frame) {
        rest = after;
        fed += payload.len();
        match assembler.feed(payload) {
            Ok(Some(message)) => {
                assert!(message.validate().is_ok());
                return;
            }
            Ok(None) => assert!(
                assembler.reserved() <= 2 * fed,
                "{} bytes reserved after {fed} bytes fed",
                assembler.reserved()
            ),
            Err(_) => return,
        }
    }
});
