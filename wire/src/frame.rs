//! Length-prefixed frames: a little-endian `u32` length, then that many bytes.
//!
//! The declared length is checked against a limit before a single byte is reserved for it, so a
//! peer that announces a 4 GiB frame costs us four bytes of reading and a refusal.

use crate::WireError;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bytes in the length prefix.
pub const PREFIX_LEN: usize = 4;

/// Default limit for one frame. Frames carry control values and array chunks; model weights never
/// need a larger frame because they are chunked (see [`crate::stream`]).
pub const DEFAULT_MAX_FRAME: u32 = 8 * 1024 * 1024;

/// Checks a received length prefix against `limit` and returns the payload length.
pub fn payload_len(prefix: [u8; PREFIX_LEN], limit: u32) -> Result<usize, WireError> {
    let declared = u32::from_le_bytes(prefix);
    if declared > limit {
        return Err(WireError::FrameTooLarge {
            declared: declared.into(),
            limit: limit.into(),
        });
    }
    Ok(declared as usize)
}

/// The length prefix for a payload of `len` bytes.
pub fn prefix(len: usize) -> Result<[u8; PREFIX_LEN], WireError> {
    u32::try_from(len)
        .map(u32::to_le_bytes)
        .map_err(|_| WireError::FrameTooLarge {
            declared: len as u64,
            limit: u32::MAX.into(),
        })
}

/// Serialises `value` with postcard into a complete frame (prefix included).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, WireError> {
    let mut frame = postcard::to_extend(value, vec![0u8; PREFIX_LEN])
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    let len = frame.len() - PREFIX_LEN;
    frame[..PREFIX_LEN].copy_from_slice(&prefix(len)?);
    Ok(frame)
}

/// Decodes one value from a frame payload (prefix already removed). Trailing bytes are an error:
/// two encodings of one value must not both be accepted.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, WireError> {
    let (value, rest) = postcard::take_from_bytes::<T>(payload)?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

/// A frame's payload, borrowed, and the bytes after the frame.
pub type FrameAndRest<'a> = (&'a [u8], &'a [u8]);

/// The first frame of `bytes`, in place: its payload and the bytes after it; `None` when `bytes`
/// does not hold a whole frame yet; an error when the declared length is over `limit`.
pub fn take_frame(bytes: &[u8], limit: u32) -> Result<Option<FrameAndRest<'_>>, WireError> {
    let Some(head) = bytes.first_chunk::<PREFIX_LEN>() else {
        return Ok(None);
    };
    let len = payload_len(*head, limit)?;
    Ok(bytes[PREFIX_LEN..].split_at_checked(len))
}

/// A sans-IO frame splitter: push received bytes, pull complete payloads.
#[derive(Debug)]
pub struct FrameDecoder {
    /// Bytes received; those before `start` were already returned as frames.
    buffer: Vec<u8>,
    /// Where the next frame begins in `buffer`.
    start: usize,
    /// Largest payload accepted.
    limit: u32,
}

impl FrameDecoder {
    /// A decoder refusing payloads above `limit` bytes.
    pub fn new(limit: u32) -> Self {
        FrameDecoder {
            buffer: Vec::new(),
            start: 0,
            limit,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        // Consumed bytes are dropped only once they are at least half the buffer, so every byte
        // is moved a bounded number of times however many frames a buffer holds.
        if self.start > 0 && self.start >= self.buffer.len() / 2 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete payload, `None` if more bytes are needed, or an error for an oversized frame.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        let Some((payload, _)) = take_frame(&self.buffer[self.start..], self.limit)? else {
            return Ok(None);
        };
        let payload = payload.to_vec();
        self.start += PREFIX_LEN + payload.len();
        if self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
        }
        Ok(Some(payload))
    }

    /// Whether bytes of an unfinished frame remain (a stream that ends now was truncated).
    pub fn has_partial(&self) -> bool {
        self.buffered_len() > 0
    }

    /// Number of buffered bytes not yet returned as frames.
    pub fn buffered_len(&self) -> usize {
        self.buffer.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_prefix_is_refused_before_allocation() {
        let mut decoder = FrameDecoder::new(1024);
        decoder.push(&u32::MAX.to_le_bytes());
        assert_eq!(
            decoder.next_frame(),
            Err(WireError::FrameTooLarge {
                declared: u32::MAX.into(),
                limit: 1024
            })
        );
    }

    #[test]
    fn frames_come_out_in_order_while_consumed_bytes_are_dropped() {
        let frames: Vec<Vec<u8>> = (0..40u32)
            .map(|i| encode(&vec![i as u8; (i as usize * 37) % 300]).unwrap())
            .collect();
        let mut decoder = FrameDecoder::new(1024);
        let mut seen = Vec::new();
        for pair in frames.chunks(2) {
            for frame in pair {
                decoder.push(frame);
            }
            // Take one frame per two pushed, so consumed and pending bytes interleave.
            if let Some(payload) = decoder.next_frame().unwrap() {
                seen.push(payload);
            }
        }
        while let Some(payload) = decoder.next_frame().unwrap() {
            seen.push(payload);
        }
        assert!(!decoder.has_partial());
        let expected: Vec<Vec<u8>> = frames.iter().map(|f| f[PREFIX_LEN..].to_vec()).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn frames_split_across_pushes_are_reassembled() {
        let frame = encode(&("hello".to_string(), 7u32)).unwrap();
        let mut decoder = FrameDecoder::new(1024);
        decoder.push(&frame[..3]);
        assert_eq!(decoder.next_frame(), Ok(None));
        decoder.push(&frame[3..]);
        let payload = decoder.next_frame().unwrap().unwrap();
        assert_eq!(
            decode::<(String, u32)>(&payload).unwrap(),
            ("hello".into(), 7)
        );
        assert!(!decoder.has_partial());
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut payload = postcard::to_stdvec(&5u32).unwrap();
        payload.push(0);
        assert_eq!(decode::<u32>(&payload), Err(WireError::TrailingBytes(1)));
    }
}
