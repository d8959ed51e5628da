//! Decoding errors. Every malformed input a peer can send maps to one of these; none panics.

use thiserror::Error;

/// Why bytes from a peer could not be turned into a protocol value.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WireError {
    /// A frame declared a length above the configured limit; nothing was allocated for it.
    #[error("frame of {declared} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// Length the peer declared.
        declared: u64,
        /// Limit in force.
        limit: u64,
    },
    /// The input ended inside a frame or a value.
    #[error("input truncated: {0}")]
    Truncated(&'static str),
    /// A frame held bytes after the value it encodes.
    #[error("{0} trailing bytes after the encoded value")]
    TrailingBytes(usize),
    /// postcard could not decode the value.
    #[error("malformed value: {0}")]
    Malformed(String),
    /// A decoded value breaks an invariant (duplicate names, shape/length mismatch, ...).
    #[error("invalid value: {0}")]
    Invalid(String),
    /// A streamed message carried more or fewer payload bytes than its head announced.
    #[error("stream out of order: {0}")]
    Stream(String),
}

impl From<postcard::Error> for WireError {
    fn from(error: postcard::Error) -> Self {
        match error {
            postcard::Error::DeserializeUnexpectedEnd => WireError::Truncated("value"),
            other => WireError::Malformed(other.to_string()),
        }
    }
}

/// Failure to read or write a frame over a byte stream.
#[derive(Debug, Error)]
pub enum FrameIoError {
    /// The byte stream failed.
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes were not a valid frame or value.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The peer finished the stream where a frame was expected.
    #[error("the peer closed the stream")]
    Closed,
}
