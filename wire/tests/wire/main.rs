//! Integration tests of the protocol contract: round trips, golden bytes, hostile input, handshake.

// Helpers outside #[test] functions unwrap too: a failure there is a failed test.
#![allow(clippy::unwrap_used)]

mod golden;
mod handshake;
mod hostile;
mod samples;
