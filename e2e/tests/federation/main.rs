//! End-to-end tests of the authenticated federation: a real broker, real nodes and the real CLI
//! client, in process, over QUIC on loopback.

// Helpers outside #[test] functions unwrap too: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bundles;
mod crash;
mod dashboard;
mod flower_apps;
mod flower_cli;
mod flower_corpus;
mod flower_supernodes;
mod handmade_supernode;
mod hostile;
mod isolation;
mod learning;
mod lifecycle;
mod load;
mod metrics;
mod operators;
mod refusals;
mod runs;
mod simulation;
