//! The frame and message-stream IO of [`crate::io`] over blocking `std::io` streams, for
//! programs without an async runtime (the SDK's app processes). Every check is the sans-IO
//! code of [`crate::frame`] and [`crate::stream`].

use crate::error::FrameIoError;
use crate::stream::{Limits, MessageAssembler, encode_message};
use crate::{Message, WireError, frame};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::{Read, Write};

/// Reads one frame payload; `Ok(None)` if the stream ended cleanly before its first byte.
pub fn read_frame<R: Read>(reader: &mut R, limit: u32) -> Result<Option<Vec<u8>>, FrameIoError> {
    let mut prefix = [0u8; frame::PREFIX_LEN];
    let mut filled = 0;
    while filled < prefix.len() {
        let n = reader.read(&mut prefix[filled..])?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(WireError::Truncated("frame prefix").into())
            };
        }
        filled += n;
    }
    let len = frame::payload_len(prefix, limit)?;
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameIoError::Wire(WireError::Truncated("frame payload"))
        } else {
            FrameIoError::Io(e)
        }
    })?;
    Ok(Some(payload))
}

/// Reads one postcard value; a stream that ends first is [`FrameIoError::Closed`].
pub fn read_value<T: DeserializeOwned, R: Read>(
    reader: &mut R,
    limit: u32,
) -> Result<T, FrameIoError> {
    let payload = read_frame(reader, limit)?.ok_or(FrameIoError::Closed)?;
    Ok(frame::decode(&payload)?)
}

/// Writes one postcard value as a frame.
pub fn write_value<T: Serialize, W: Write>(writer: &mut W, value: &T) -> Result<(), FrameIoError> {
    writer.write_all(&frame::encode(value)?)?;
    Ok(())
}

/// Writes a message as a head frame and chunk frames of at most `chunk` bytes.
pub fn write_message<W: Write>(
    writer: &mut W,
    message: &Message,
    chunk: usize,
) -> Result<(), FrameIoError> {
    for out in encode_message(message, chunk)? {
        writer.write_all(&frame::prefix(out.payload().len())?)?;
        writer.write_all(out.payload())?;
    }
    Ok(())
}

/// Reads one streamed message, enforcing `limits`; memory grows with the bytes that arrive,
/// never with what a head announces.
pub fn read_message<R: Read>(reader: &mut R, limits: Limits) -> Result<Message, FrameIoError> {
    let mut assembler = MessageAssembler::new(limits);
    loop {
        let payload = read_frame(reader, limits.max_frame)?.ok_or(FrameIoError::Closed)?;
        if let Some(message) = assembler.feed(&payload)? {
            return Ok(message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        Array, ArrayRecord, MessageBody, MessageId, MessageType, Metadata, NodeId, Record,
        RecordDict, RunId,
    };

    #[test]
    fn a_message_round_trips_through_blocking_streams_in_small_chunks() {
        let values: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let message = Message {
            metadata: Metadata {
                run_id: RunId(1),
                message_id: MessageId(2),
                src_node_id: NodeId::SERVER,
                dst_node_id: NodeId(3),
                reply_to: None,
                group_id: "1".into(),
                ttl_ms: 1000,
                message_type: MessageType::TRAIN,
                created_at_ms: 0,
            },
            body: MessageBody::Content(RecordDict::new().with(
                "arrays",
                Record::Arrays(
                    ArrayRecord::new().with("w", Array::from_f32(vec![1000], &values).unwrap()),
                ),
            )),
        };
        let mut bytes = Vec::new();
        write_message(&mut bytes, &message, 333).unwrap();
        write_value(&mut bytes, &7u32).unwrap();
        let mut reader = bytes.as_slice();
        assert_eq!(
            read_message(&mut reader, Limits::default()).unwrap(),
            message
        );
        assert_eq!(read_value::<u32, _>(&mut reader, 16).unwrap(), 7);
        assert!(matches!(
            read_value::<u32, _>(&mut reader, 16),
            Err(FrameIoError::Closed)
        ));
        let cut = &bytes[..bytes.len() / 2];
        assert!(read_message(&mut &cut[..], Limits::default()).is_err());
    }
}
