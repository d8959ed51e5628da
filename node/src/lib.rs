//! `flower-supernode`: a long-running node daemon. It keeps one authenticated QUIC connection to the
//! broker's Fleet API, reconnecting with capped exponential backoff when the broker goes away, and
//! exits with a clear message when the broker refuses its key for good.
//!
//! # Layout
//! - [`settings`]: command-line flags resolved into [`settings::NodeSettings`].
//! - [`session`]: one connection: TLS, the challenge-response, heartbeats.
//! - [`work`]: instructions in, client app, replies out.
//! - [`apps`]: the client apps, one list for every isolation mode.
//! - [`isolation`]: client apps in a process of their own (`flwr-clientapp`, or a bundle's
//!   program).
//! - [`bundles`]: app bundles fetched from the SuperLink, cached by hash.
//! - [`flower`]: Flower's own ClientApps, run by Flower's `flwr-clientapp` for FAB runs.
//! - [`trust`]: which apps the node runs (`--trusted-apps`).
//! - [`clientapp`]: that process's side (the `flwr-clientapp` binary).
//! - [`logging`]: log output of both executables.
//! - [`daemon`]: the reconnect loop around sessions, and the node's observable state.
//! - [`simulation`]: a simulation's virtual nodes, hosted in one process (`--virtual-nodes`).

#![forbid(unsafe_code)]

pub mod apps;
pub mod bundles;
pub mod clientapp;
pub mod daemon;
pub mod ended_runs;
pub mod flower;
pub mod isolation;
pub mod logging;
pub mod session;
pub mod settings;
pub mod simulation;
pub mod trust;
pub mod work;
