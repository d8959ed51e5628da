//! QUIC application close codes, shared by the Fleet and Control APIs.

/// The peer ended the connection normally.
pub const NORMAL: u32 = 0;
/// Authentication failed.
pub const REFUSED: u32 = 1;
/// The node was unregistered by an operator.
pub const UNREGISTERED: u32 = 2;
/// The peer broke the protocol (malformed or unexpected frame).
pub const PROTOCOL: u32 = 3;
/// Heartbeats stopped arriving.
pub const TIMEOUT: u32 = 4;
/// The broker is shutting down.
pub const SHUTDOWN: u32 = 5;
/// Another connection authenticated with the same key and replaced this one.
pub const REPLACED: u32 = 6;
