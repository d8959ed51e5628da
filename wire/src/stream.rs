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

/// Default limit on the arrays of one message (all records together). The seed's CNN has 10, a
/// large language model a few thousand.
pub const DEFAULT_MAX_ARRAYS: usize = 1 << 16;

/// Most bytes an array is given room for before any of its bytes arrived (see
/// [`MessageAssembler`]'s memory rule).
pub const FIRST_READ: usize = 64 * 1024;

pub use crate::records::MAX_DIMS;

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

/// A copy of `content` with every array's bytes left out (linear in the number of entries).
fn skeleton(content: &RecordDict) -> RecordDict {
    content.map_values(|record| match record {
        Record::Arrays(arrays) => Record::Arrays(arrays.map_values(|array| crate::Array {
            dtype: array.dtype,
            shape: array.shape.clone(),
            data: Vec::new(),
            serialised: array.serialised.clone(),
        })),
        other => other.clone(),
    })
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
    /// Most arrays in one message, all records together.
    pub max_arrays: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: frame::DEFAULT_MAX_FRAME,
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_arrays: DEFAULT_MAX_ARRAYS,
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
    /// Bytes of the array at `cursor` filled so far.
    filled: usize,
}

impl MessageAssembler {
    /// A receiver enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        MessageAssembler {
            limits,
            message: None,
            pending: Vec::new(),
            cursor: 0,
            filled: 0,
        }
    }

    /// Feeds one frame payload; returns the message once its last byte arrived.
    pub fn feed(&mut self, payload: &[u8]) -> Result<Option<Message>, WireError> {
        if self.message.is_none() {
            self.accept_head(payload)?;
        } else {
            self.accept_chunk(payload)?;
        }
        Ok(self.complete())
    }

    /// The message, once the head arrived and every announced array byte after it.
    pub(crate) fn complete(&mut self) -> Option<Message> {
        if self.cursor == self.pending.len() {
            return self.message.take();
        }
        None
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether a head arrived and array bytes are still missing.
    pub fn in_progress(&self) -> bool {
        self.message.is_some()
    }

    /// The metadata of the message being assembled, once its head arrived: a receiver can judge
    /// the message (who sent it, what it answers) before reading a single array byte.
    pub fn head(&self) -> Option<&Metadata> {
        self.message.as_ref().map(|message| &message.metadata)
    }

    /// The array bytes the head announced (0 before the head).
    pub fn announced_payload(&self) -> u64 {
        self.pending.iter().map(|&(_, _, len)| len as u64).sum()
    }

    /// Bytes reserved so far for arrays: memory grows with the bytes that arrived, never with
    /// what a head merely announced.
    pub fn reserved(&self) -> usize {
        match self.message.as_ref().map(|m| &m.body) {
            Some(MessageBody::Content(content)) => content
                .iter()
                .filter_map(|(_, record)| match record {
                    Record::Arrays(arrays) => {
                        Some(arrays.iter().map(|(_, a)| a.data.capacity()).sum::<usize>())
                    }
                    _ => None,
                })
                .sum(),
            _ => 0,
        }
    }

    fn accept_head(&mut self, payload: &[u8]) -> Result<(), WireError> {
        let head: Message = frame::decode(payload)?;
        let mut pending = Vec::new();
        let mut total: u64 = 0;
        let mut arrays_seen = 0usize;
        if let MessageBody::Content(content) = &head.body {
            content.check_unique("record")?;
            for (record_index, (_, record)) in content.iter().enumerate() {
                match record {
                    Record::Arrays(arrays) => {
                        arrays_seen += arrays.len();
                        if arrays_seen > self.limits.max_arrays {
                            return Err(WireError::Invalid(format!(
                                "more than {} arrays in one message",
                                self.limits.max_arrays
                            )));
                        }
                        arrays.check_unique("array")?;
                        for (array_index, (name, array)) in arrays.iter().enumerate() {
                            array
                                .check_description()
                                .map_err(|e| WireError::Invalid(format!("array {name:?}: {e}")))?;
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
                    Record::Metrics(_) | Record::Config(_) => record.check_values()?,
                }
            }
        }
        self.pending = pending;
        self.cursor = 0;
        self.filled = 0;
        self.message = Some(head);
        Ok(())
    }

    fn accept_chunk(&mut self, mut payload: &[u8]) -> Result<(), WireError> {
        self.begin_chunk(payload.len())?;
        while !payload.is_empty() {
            let (data, take) = self.chunk_space(payload.len())?;
            data.extend_from_slice(&payload[..take]);
            payload = &payload[take..];
            self.advance(take);
        }
        Ok(())
    }

    /// Checks that a chunk frame of `len` bytes may come now: after the head of a message with
    /// arrays, and not empty.
    pub(crate) fn begin_chunk(&self, len: usize) -> Result<(), WireError> {
        if !matches!(
            self.message.as_ref().map(|m| &m.body),
            Some(MessageBody::Content(_))
        ) {
            return Err(WireError::Stream(
                "chunk after a message without arrays".into(),
            ));
        }
        if len == 0 {
            return Err(WireError::Stream("empty chunk".into()));
        }
        Ok(())
    }

    /// The array being filled, with room reserved for the next bytes of a chunk, and how many of
    /// the chunk's `available` remaining bytes belong to it. The caller appends exactly that many
    /// or fewer, then reports them to [`MessageAssembler::advance`]. Readers use it to move bytes
    /// from their source straight into the array, with no frame buffer between.
    pub(crate) fn chunk_space(
        &mut self,
        available: usize,
    ) -> Result<(&mut Vec<u8>, usize), WireError> {
        let Some(MessageBody::Content(content)) = self.message.as_mut().map(|m| &mut m.body) else {
            return Err(WireError::Stream(
                "chunk after a message without arrays".into(),
            ));
        };
        let Some(&(record_index, array_index, len)) = self.pending.get(self.cursor) else {
            return Err(WireError::Stream(format!(
                "{available} bytes beyond the announced arrays"
            )));
        };
        // Direct indexing: the cost of a chunk is its bytes, whatever the number of arrays.
        let array = content
            .get_index_mut(record_index)
            .and_then(|record| match record {
                Record::Arrays(arrays) => arrays.get_index_mut(array_index),
                _ => None,
            })
            .ok_or_else(|| WireError::Stream("array index out of range".into()))?;
        // Room grows with what arrived: a reader that reserves before its bytes arrive is given
        // FIRST_READ, then at most the array's size so far, whatever its frame announced; and
        // only once the room already there is full, so that short reads never reallocate.
        let spare = array.data.capacity() - array.data.len();
        let room = if spare > 0 {
            spare
        } else {
            self.filled.max(FIRST_READ)
        };
        let take = (len - self.filled).min(available).min(room);
        reserve_for(&mut array.data, take, len);
        Ok((&mut array.data, take))
    }

    /// Records `appended` bytes added to the array [`MessageAssembler::chunk_space`] returned,
    /// moving to the next array once this one is full.
    pub(crate) fn advance(&mut self, appended: usize) {
        self.filled += appended;
        if let Some(&(_, _, len)) = self.pending.get(self.cursor)
            && self.filled >= len
        {
            self.cursor += 1;
            self.filled = 0;
        }
    }
}

/// Makes room in `data` for `incoming` more bytes of an array announced at `len` bytes. Capacity
/// at most doubles what actually arrived, plus the `incoming` bytes about to be written, so a head
/// that announces gigabytes and sends one byte costs one byte (or [`FIRST_READ`] for a reader
/// that reserves before it reads); an honest large array grows geometrically, which the allocator
/// does by remapping pages rather than copying them.
fn reserve_for(data: &mut Vec<u8>, incoming: usize, len: usize) {
    let needed = data.len() + incoming;
    if needed <= data.capacity() {
        return;
    }
    let target = needed.max(data.len().saturating_mul(2)).min(len);
    data.reserve_exact(target - data.len());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Array, ArrayRecord, DType, MessageId, MessageType, NodeId, RunId};

    /// A message head announcing one u8 array of `len` bytes.
    fn head(len: u64) -> Vec<u8> {
        let message = Message {
            metadata: Metadata {
                run_id: RunId(1),
                message_id: MessageId(2),
                src_node_id: NodeId::SERVER,
                dst_node_id: NodeId(3),
                reply_to: None,
                group_id: "1".into(),
                ttl_ms: 60_000,
                message_type: MessageType::TRAIN,
                created_at_ms: 0,
            },
            body: MessageBody::Content(RecordDict::new().with(
                "arrays",
                Record::Arrays(ArrayRecord::new().with(
                    "w",
                    Array {
                        dtype: DType::U8,
                        shape: vec![len],
                        data: Vec::new(),
                        serialised: None,
                    },
                )),
            )),
        };
        frame::encode(&message).unwrap()[frame::PREFIX_LEN..].to_vec()
    }

    #[test]
    fn short_reads_into_one_large_chunk_grow_the_array_geometrically() {
        // A reader that reserves before reading and gets 1,000 bytes per read, as a peer sending
        // small packets makes it: each growth at least doubles, so 8 MiB takes a handful.
        let len = 8 << 20;
        let mut assembler = MessageAssembler::new(Limits::default());
        assert!(assembler.feed(&head(len as u64)).unwrap().is_none());
        assembler.begin_chunk(len).unwrap();
        let (mut left, mut growths, mut capacity) = (len, 0, 0);
        while left > 0 {
            let (data, take) = assembler.chunk_space(left).unwrap();
            if data.capacity() != capacity {
                growths += 1;
                capacity = data.capacity();
            }
            let appended = take.min(1000);
            data.extend(std::iter::repeat_n(7u8, appended));
            assembler.advance(appended);
            left -= appended;
        }
        assert!(growths <= 10, "{growths} reallocations for 8 MiB");
        let message = assembler.complete().unwrap();
        let MessageBody::Content(content) = &message.body else {
            panic!("no content");
        };
        assert_eq!(
            content
                .arrays("arrays")
                .unwrap()
                .get("w")
                .unwrap()
                .data
                .len(),
            len
        );
    }
}
