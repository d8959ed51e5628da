//! `flower-superlink`: the broker. It accepts nodes on the Fleet API and operators on the Control
//! API, both over QUIC with TLS 1.3, and keeps what a restart needs in a redb database.
//!
//! # Layout
//! State at the bottom, IO handlers on top; no module imports one above it.
//! - [`store`]: the durable state (registry, runs, logs, artifacts, checkpoints), in redb.
//! - [`rounds`]: rounds in flight (instructions, queues, contents, reply routes), in memory.
//! - [`sessions`]: live node connections.
//! - [`runs`]: runs executing, their server apps ([`runs::runner`]) and the grid they use.
//! - [`metrics`]: the Prometheus endpoint.
//! - [`state`]: the above together, as every handler sees them.
//! - [`config`] and [`settings`]: the broker's configuration, and command-line flags resolved into
//!   it.
//! - [`admission`]: who may start a handshake (Retry, per-source and loopback rules).
//! - [`authentication`]: TLS deadline and handshake failures, shared by both APIs.
//! - [`fleet`], [`delivery`]: a node's connection; instructions out and replies in.
//! - [`control`]: an operator's connection.
//! - [`flower_http`]: Flower's HTTP port, with [`flower_control`] (Flower's own `flwr`:
//!   loopback, no accounts, the same store and runner) and [`flower_fleet`] (Flower's own
//!   SuperNodes: the same registry, sessions and rounds).
//! - [`dashboard`]: the operators' read-only dashboard in a browser.
//! - [`serverappio`]: where server app programs connect, each with its run's token;
//!   [`flower_api`]: where Flower's `flwr-serverapp` connects, each with its task's token.
//! - [`bundles`]: app bundles received from operators, served to nodes, read for a run's app;
//!   [`bundle_sender`]: the bounds on sending them (slots, one shared copy, progress).
//! - [`simulation`]: `--simulation`'s virtual federations, one per run, one at a time.
//! - [`server`]: binds the endpoints and runs the accept loops until shutdown.

#![forbid(unsafe_code)]

pub mod admission;
pub mod authentication;
pub mod bundle_sender;
pub mod bundles;
pub mod config;
pub mod control;
pub mod dashboard;
pub mod delivery;
pub mod fleet;
pub mod flower_api;
pub mod flower_control;
pub mod flower_fleet;
pub mod flower_http;
pub mod metrics;
pub mod rounds;
pub mod runs;
pub mod server;
pub mod serverappio;
pub mod sessions;
pub mod settings;
pub mod simulation;
pub mod state;
pub mod store;
