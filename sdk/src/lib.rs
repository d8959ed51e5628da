//! Write a federated app as a program, in Rust: the client half that every node runs on its own
//! data, and the server half (a strategy and its rounds) that the SuperLink runs.
//!
//! An app names its programs in its `flwr.toml`; `flwr run` ships them in the app's bundle, and
//! the daemons start them, once per instruction on a node and once per run on the SuperLink:
//!
//! ```toml
//! [app.components]
//! serverapp = "my-app-server"   # commands on the daemons' PATH, or "./bin/..." in the bundle
//! clientapp = "my-app-client"
//! ```
//!
//! A program's `main` hands its app to [`run_client_app`] or [`run_server_app`], which speak the
//! app protocol (`docs/app-protocol.md`) with the daemon that started it. The app sees the same
//! traits the built-in apps implement: a [`ClientApp`] answers one [`Message`]; a [`ServerApp`]
//! drives the federation through a [`Grid`], usually with one of Flower's [`strategy`]s and
//! its round loop, [`strategy::start::start`].
//!
//! ```no_run
//! use flwr_sdk::{AppError, ClientApp, ClientContext, Message, RecordDict, run_client_app};
//!
//! struct Echo;
//!
//! impl ClientApp for Echo {
//!     fn handle(&self, message: &Message, _: &ClientContext) -> Result<RecordDict, AppError> {
//!         match &message.body {
//!             flwr_sdk::MessageBody::Content(content) => Ok(content.clone()),
//!             flwr_sdk::MessageBody::Error(_) => Err(AppError::new("nothing to echo")),
//!         }
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     run_client_app(&Echo)
//! }
//! ```

//! # Layout
//! - [`app`]: the `ClientApp`, `ServerApp` and `Grid` traits and their contexts.
//! - [`strategy`]: Flower's strategies (FedAvg, FedProx, FedAvgM, FedAdagrad, FedAdam, FedYogi,
//!   FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan), checked against Flower's own results,
//!   and their round loop; [`fedavg`] is the aggregation kernel under them.
//! - [`checkpoint`]: the state saved after each round, from which a restarted run resumes.
//! - [`config`]: `k=v` override strings and TOML tables turned into a [`wire::ConfigRecord`].
//! - [`safetensors`]: arrays as safetensors files, as PyTorch loads them.
//! - [`run_client_app`], [`run_server_app`]: the app protocol's client side, for programs.
//!
//! It depends on `wire` alone: an app program compiles no plotting, archive or Burn code.

#![forbid(unsafe_code)]

pub mod app;
pub mod checkpoint;
pub mod config;
pub mod fedavg;
pub mod safetensors;
pub mod strategy;

mod client;
mod connect;
mod server;

pub use app::{
    AppError, ClientApp, ClientContext, Grid, GridError, Instruction, ServerApp, ServerContext,
    config_f64, config_i64, config_str,
};
pub use client::{run_client_app, serve_instruction};
pub use connect::SdkError;
pub use server::{Link, RemoteGrid, run_server_app, serve_run};
pub use wire::{
    Array, ArrayRecord, ConfigRecord, ConfigValue, DType, Message, MessageBody, MessageType,
    Metadata, MetricRecord, MetricValue, NodeId, Record, RecordDict, RunId,
};
