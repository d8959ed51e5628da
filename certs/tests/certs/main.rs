//! Integration tests of key and certificate handling against the reference tools (openssl,
//! ssh-keygen) and of the TLS configurations in memory.

// Helpers outside #[test] functions unwrap too: a failure there is a failed test.
#![allow(clippy::unwrap_used)]

mod interop;
mod tls;
