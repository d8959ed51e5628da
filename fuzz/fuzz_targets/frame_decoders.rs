//! Every control-value decoder on arbitrary bytes: errors are fine, panics are bugs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::clientappio::{AppHello, AppJob};
use wire::control::{ControlFrame, OperatorFrame};
use wire::fleet::{BrokerFrame, InstructionAck, InstructionHeader, NodeFrame, ReplyOutcome};
use wire::frame::{self, FrameDecoder};

fuzz_target!(|data: &[u8]| {
    let _ = frame::decode::<NodeFrame>(data);
    let _ = frame::decode::<BrokerFrame>(data);
    let _ = frame::decode::<OperatorFrame>(data);
    let _ = frame::decode::<ControlFrame>(data);
    let _ = frame::decode::<InstructionAck>(data);
    let _ = frame::decode::<ReplyOutcome>(data);
    let _ = frame::decode::<InstructionHeader>(data);
    let _ = frame::decode::<AppHello>(data);
    let _ = frame::decode::<AppJob>(data);
    let mut decoder = FrameDecoder::new(1 << 16);
    decoder.push(data);
    while let Ok(Some(_)) = decoder.next_frame() {}
});
