//! Messages whose array payloads travel as a sequence of bounded frames.
//!
//! A message goes out as one *head* frame (the whole message with every array's bytes left out)
//! followed by *chunk* frames carrying the array bytes, in record order, each at most the chunk
//! size. The receiver learns every array's length from its dtype and shape in the head, checks the
//! total against its limit, and fills the arrays as chunks arrive. A model of several GiB thus moves
//! without a frame of that size, and the sender never copies the weights into a buffer.

use crate::frame;
use crate::message::MessageError;
use crate::records::byte_len;
use crate::{Message, MessageBody, Metadata, Record, RecordDict, WireError};

/// Default chunk size: large enough to amortise per-frame costs, small enough to interleave streams.
pub const DEFAULT_CHUNK: usize = 1024 * 1024;

/// Default limit on the array bytes of one message (16 GiB).
pub const DEFAULT_MAX_PAYLOAD: u64 = 16 * 1024 * 1024 * 1024;

/// One outgoing frame payload, borrowed from the message where possible.
#[derive(Debug)]
pub enum OutFrame<'a> {
    /// The postcard-encoded head (no prefix).
    Head(Vec<u8>),
    /// A slice of array bytes.
    Chunk(&'a [u8]),
}

impl OutFrame<'_> {
    /// The payload bytes (without the length prefix).
    pub fn payload(&self) -> &[u8] {
        match self {
            OutFrame::Head(bytes) => bytes,
            OutFrame::Chunk(bytes) => bytes,
        }
    }
}

/// A copy of `content` with every array's bytes left out.
fn skeleton(content: &RecordDict) -> RecordDict {
    content
        .iter()
        .map(|(name, record)| {
            let record = match record {
                Record::Arrays(arrays) => Record::Arrays(
                    arrays
                        .iter()
                        .map(|(array_name, array)| {
                            (
                                array_name.to_string(),
                                crate::Array {
                                    dtype: array.dtype,
                                    shape: array.shape.clone(),
                                    data: Vec::new(),
                                },
                            )
                        })
                        .collect(),
                ),
                other => other.clone(),
            };
            (name.to_string(), record)
        })
        .collect()
}

/// The frames that carry `message`: the head, then its array bytes in chunks of at most `chunk` bytes.
pub fn encode_message(message: &Message, chunk: usize) -> Result<Vec<OutFrame<'_>>, WireError> {
    let body = match &message.body {
        MessageBody::Content(content) => Ok(content),
        MessageBody::Error(error) => Err(error),
    };
    encode_parts(&message.metadata, body, chunk)
}

/// Like [`encode_message`] for a message given as parts, so content shared by many messages (one
/// model sent to every node) is never copied to build each of them.
pub fn encode_parts<'a>(
    metadata: &Metadata,
    body: Result<&'a RecordDict, &MessageError>,
    chunk: usize,
) -> Result<Vec<OutFrame<'a>>, WireError> {
    if let Ok(content) = body {
        content.validate()?;
    }
    let chunk = chunk.max(1);
    let head = Message {
        metadata: metadata.clone(),
        body: match body {
            Ok(content) => MessageBody::Content(skeleton(content)),
            Err(error) => MessageBody::Error(error.clone()),
        },
    };
    let mut frames = vec![OutFrame::Head(
        postcard::to_stdvec(&head).map_err(|e| WireError::Malformed(e.to_string()))?,
    )];
    if let Ok(content) = body {
        for (_, record) in content.iter() {
            if let Record::Arrays(arrays) = record {
                for (_, array) in arrays.iter() {
                    frames.extend(array.data.chunks(chunk).map(OutFrame::Chunk));
                }
            }
        }
    }
    Ok(frames)
}

/// Encodes `message` into one contiguous byte buffer of prefixed frames (tests, fixtures, small messages).
pub fn encode_message_bytes(message: &Message, chunk: usize) -> Result<Vec<u8>, WireError> {
    let mut bytes = Vec::new();
    for out in encode_message(message, chunk)? {
        bytes.extend_from_slice(&frame::prefix(out.payload().len())?);
        bytes.extend_from_slice(out.payload());
    }
    Ok(bytes)
}

/// Limits a receiver enforces on a streamed message.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest frame payload.
    pub max_frame: u32,
    /// Largest total of array bytes in one message.
    pub max_payload: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: frame::DEFAULT_MAX_FRAME,
            max_payload: DEFAULT_MAX_PAYLOAD,
        }
    }
}

/// A sans-IO receiver: feed it frame payloads until it returns the message.
#[derive(Debug)]
pub struct MessageAssembler {
    /// Limits in force.
    limits: Limits,
    /// The decoded head, with arrays being filled; `None` until the head frame arrived.
    message: Option<Message>,
    /// Byte lengths of the arrays still to fill, in order (record index, array index, length).
    pending: Vec<(usize, usize, usize)>,
    /// Position in `pending` of the array being filled.
    cursor: usize,
}

impl MessageAssembler {
    /// A receiver enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        MessageAssembler {
            limits,
            message: None,
            pending: Vec::new(),
            cursor: 0,
        }
    }

    /// Feeds one frame payload; returns the message once its last byte arrived.
    pub fn feed(&mut self, payload: &[u8]) -> Result<Option<Message>, WireError> {
        if self.message.is_none() {
            self.accept_head(payload)?;
        } else {
            self.accept_chunk(payload)?;
        }
        if self.cursor == self.pending.len() {
            return Ok(self.message.take());
        }
        Ok(None)
    }

    /// Whether a head arrived and array bytes are still missing.
    pub fn in_progress(&self) -> bool {
        self.message.is_some()
    }

    fn accept_head(&mut self, payload: &[u8]) -> Result<(), WireError> {
        let head: Message = frame::decode(payload)?;
        let mut pending = Vec::new();
        let mut total: u64 = 0;
        if let MessageBody::Content(content) = &head.body {
            content.check_unique("record")?;
            for (record_index, (_, record)) in content.iter().enumerate() {
                match record {
                    Record::Arrays(arrays) => {
                        arrays.check_unique("array")?;
                        for (array_index, (name, array)) in arrays.iter().enumerate() {
                            if !array.data.is_empty() {
                                return Err(WireError::Invalid(format!(
                                    "array {name:?} carries bytes inside the head"
                                )));
                            }
                            let len = byte_len(array.dtype, &array.shape).ok_or_else(|| {
                                WireError::Invalid(format!("array {name:?} shape overflows"))
                            })?;
                            total = total.saturating_add(len);
                            if total > self.limits.max_payload {
                                return Err(WireError::FrameTooLarge {
                                    declared: total,
                                    limit: self.limits.max_payload,
                                });
                            }
                            if len > 0 {
                                let len = usize::try_from(len).map_err(|_| {
                                    WireError::Invalid("array larger than this machine".into())
                                })?;
                                pending.push((record_index, array_index, len));
                            }
                        }
                    }
                    Record::Metrics(metrics) => metrics.check_unique("metric")?,
                    Record::Config(config) => config.check_unique("config")?,
                }
            }
        }
        self.pending = pending;
        self.cursor = 0;
        self.message = Some(head);
        Ok(())
    }

    fn accept_chunk(&mut self, mut payload: &[u8]) -> Result<(), WireError> {
        let Some(MessageBody::Content(content)) = self.message.as_mut().map(|m| &mut m.body) else {
            return Err(WireError::Stream(
                "chunk after a message without arrays".into(),
            ));
        };
        if payload.is_empty() {
            return Err(WireError::Stream("empty chunk".into()));
        }
        while !payload.is_empty() {
            let Some(&(record_index, array_index, len)) = self.pending.get(self.cursor) else {
                return Err(WireError::Stream(format!(
                    "{} bytes beyond the announced arrays",
                    payload.len()
                )));
            };
            let array = content
                .iter_mut()
                .nth(record_index)
                .and_then(|(_, record)| match record {
                    Record::Arrays(arrays) => arrays.iter_mut().nth(array_index).map(|(_, a)| a),
                    _ => None,
                })
                .ok_or_else(|| WireError::Stream("array index out of range".into()))?;
            if array.data.capacity() == 0 {
                array.data.reserve_exact(len);
            }
            let take = (len - array.data.len()).min(payload.len());
            array.data.extend_from_slice(&payload[..take]);
            payload = &payload[take..];
            if array.data.len() == len {
                self.cursor += 1;
            }
        }
        Ok(())
    }
}

/// Decodes a message from a contiguous buffer of prefixed frames; the buffer must hold exactly one message.
pub fn decode_message_bytes(bytes: &[u8], limits: Limits) -> Result<Message, WireError> {
    // Frames are read in place: each chunk's bytes are copied once, into their array.
    let mut rest = bytes;
    let mut assembler = MessageAssembler::new(limits);
    loop {
        let Some((payload, after)) = frame::take_frame(rest, limits.max_frame)? else {
            return Err(WireError::Truncated("message stream"));
        };
        rest = after;
        if let Some(message) = assembler.feed(payload)? {
            if !rest.is_empty() {
                return Err(WireError::TrailingBytes(rest.len()));
            }
            return Ok(message);
        }
    }
}
