//! `flower-superlink`: the broker. It accepts nodes on the Fleet API and operators on the Control
//! API, both over QUIC with TLS 1.3, and keeps its state in a redb database.
//!
//! # Layout
//! - [`admission`]: who may start a handshake (Retry, per-source and loopback rules).
//! - [`settings`]: command-line flags resolved into a [`settings::Settings`].
//! - [`store`]: the durable state (node registry).
//! - [`metrics`]: the Prometheus endpoint.
//! - [`runs`]: runs, their server apps, and the grid they use.
//! - [`server`]: binds the endpoints and runs the accept loops until shutdown.

#![forbid(unsafe_code)]

pub mod admission;
pub mod authentication;
pub mod config;
pub mod control;
pub mod delivery;
pub mod fleet;
pub mod metrics;
pub mod runs;
pub mod server;
pub mod sessions;
pub mod settings;
pub mod store;
