//! The async reader the broker and the nodes use (`wire::io::read_arrays`) on arbitrary bytes,
//! delivered a few at a time: the first input byte sets how many bytes each read returns, so chunk
//! bytes land in their arrays across many short reads. Whatever completes must be a valid message,
//! and memory must follow the bytes delivered: at most twice them plus `FIRST_READ`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, ReadBuf};
use wire::frame::{DEFAULT_MAX_FRAME, take_frame};
use wire::io::read_arrays;
use wire::stream::{FIRST_READ, Limits, MessageAssembler};

/// Bytes from a slice, at most `step` per read; never pending.
struct ShortReads<'a> {
    bytes: &'a [u8],
    step: usize,
    delivered: usize,
}

impl AsyncRead for ShortReads<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.step.min(self.bytes.len()).min(buf.remaining());
        buf.put_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        self.delivered += n;
        Poll::Ready(Ok(()))
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_frame: DEFAULT_MAX_FRAME,
        max_payload: 1 << 30,
        ..Limits::default()
    };
    let Ok(Some((head, rest))) = take_frame(data, limits.max_frame) else {
        return;
    };
    let mut assembler = MessageAssembler::new(limits);
    match assembler.feed(head) {
        Ok(Some(message)) => {
            assert!(message.validate().is_ok());
            return;
        }
        Ok(None) => {}
        Err(_) => return,
    }
    let mut reader = ShortReads {
        bytes: rest,
        step: usize::from(step).max(1),
        delivered: 0,
    };
    let outcome = {
        let mut reading = std::pin::pin!(read_arrays(&mut reader, &mut assembler));
        match reading.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(outcome) => outcome,
            Poll::Pending => panic!("a reader that is always ready left the message pending"),
        }
    };
    match outcome {
        Ok(message) => assert!(message.validate().is_ok()),
        Err(_) => assert!(
            assembler.reserved() <= 2 * reader.delivered + FIRST_READ,
            "{} bytes reserved after {} bytes delivered",
            assembler.reserved(),
            reader.delivered
        ),
    }
});
