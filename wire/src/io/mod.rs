//! Async helpers that move frames over any tokio byte stream. Only IO lives here: every check is the
//! sans-IO code of [`crate::frame`], [`crate::stream`] and [`crate::handshake`].

pub mod handshake;

use crate::message::MessageError;
use crate::stream::{Limits, MessageAssembler, OutFrame, encode_message, encode_parts};
use crate::{Message, Metadata, RecordDict, WireError, frame};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub use crate::error::FrameIoError;

/// Reads a frame's length prefix and checks it against `limit`; `Ok(None)` if the stream ended
/// cleanly before the first byte.
async fn read_prefix<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: u32,
) -> Result<Option<usize>, FrameIoError> {
    let mut prefix = [0u8; frame::PREFIX_LEN];
    let mut filled = 0;
    while filled < prefix.len() {
        let n = reader.read(&mut prefix[filled..]).await?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(WireError::Truncated("frame prefix").into())
            };
        }
        filled += n;
    }
    Ok(Some(frame::payload_len(prefix, limit)?))
}

/// Reads one frame payload; `Ok(None)` if the stream ended cleanly before the first byte.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: u32,
) -> Result<Option<Vec<u8>>, FrameIoError> {
    let Some(len) = read_prefix(reader, limit).await? else {
        return Ok(None);
    };
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameIoError::Wire(WireError::Truncated("frame payload"))
        } else {
            FrameIoError::Io(e)
        }
    })?;
    Ok(Some(payload))
}

/// Reads one postcard value; a stream that ends first is [`FrameIoError::Closed`].
pub async fn read_value<T: DeserializeOwned, R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: u32,
) -> Result<T, FrameIoError> {
    let payload = read_frame(reader, limit)
        .await?
        .ok_or(FrameIoError::Closed)?;
    Ok(frame::decode(&payload)?)
}

/// Writes one postcard value as a frame.
pub async fn write_value<T: Serialize, W: AsyncWrite + Unpin>(
    writer: &mut W,
    value: &T,
) -> Result<(), FrameIoError> {
    writer.write_all(&frame::encode(value)?).await?;
    Ok(())
}

/// Writes a message as a head frame and chunk frames, without copying its arrays.
pub async fn write_message<W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &Message,
    chunk: usize,
) -> Result<u64, FrameIoError> {
    write_frames(writer, encode_message(message, chunk)?).await
}

/// Writes a message given as parts (see [`crate::stream::encode_parts`]).
pub async fn write_message_parts<W: AsyncWrite + Unpin>(
    writer: &mut W,
    metadata: &Metadata,
    body: Result<&RecordDict, &MessageError>,
    chunk: usize,
) -> Result<u64, FrameIoError> {
    write_frames(writer, encode_parts(metadata, body, chunk)?).await
}

async fn write_frames<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frames: Vec<OutFrame<'_>>,
) -> Result<u64, FrameIoError> {
    let mut written = 0u64;
    for out in frames {
        let payload: &[u8] = match &out {
            OutFrame::Head(bytes) => bytes,
            OutFrame::Chunk(bytes) => bytes,
        };
        writer.write_all(&frame::prefix(payload.len())?).await?;
        writer.write_all(payload).await?;
        written += (frame::PREFIX_LEN + payload.len()) as u64;
    }
    Ok(written)
}

/// Reads one streamed message, enforcing `limits`.
pub async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut R,
    limits: Limits,
) -> Result<Message, FrameIoError> {
    let head = read_frame(reader, limits.max_frame)
        .await?
        .ok_or(FrameIoError::Closed)?;
    let mut assembler = MessageAssembler::new(limits);
    match assembler.feed(&head)? {
        Some(message) => Ok(message),
        None => read_arrays(reader, &mut assembler).await,
    }
}

/// Reads the chunk frames that follow a head `assembler` accepted, until the message is whole.
/// Each chunk's bytes go from the stream straight into their array: one copy per byte, and
/// memory that grows with what arrived, never with a frame's announced length.
pub async fn read_arrays<R: AsyncRead + Unpin>(
    reader: &mut R,
    assembler: &mut MessageAssembler,
) -> Result<Message, FrameIoError> {
    loop {
        if let Some(message) = assembler.complete() {
            return Ok(message);
        }
        let mut left = read_prefix(reader, assembler.limits().max_frame)
            .await?
            .ok_or(FrameIoError::Closed)?;
        assembler.begin_chunk(left)?;
        while left > 0 {
            let (data, take) = assembler.chunk_space(left)?;
            let appended = (&mut *reader).take(take as u64).read_buf(data).await?;
            if appended == 0 {
                return Err(WireError::Truncated("frame payload").into());
            }
            assembler.advance(appended);
            left -= appended;
        }
    }
}
