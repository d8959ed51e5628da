//! Integration tests of the protocol contract: round trips, golden bytes, hostile input, handshake.

// Helpers outside #[test] functions unwrap too: a failure there is a failed test.
#![allow(clippy::unwrap_used)]

mod app_protocol_doc;
mod golden;
mod handshake;
// The driver needs the `io` feature, which the workspace's other members turn on.
#[cfg(feature = "io")]
mod handshake_io;
mod hostile;
mod samples;
#[cfg(feature = "io")]
mod stream_io;
