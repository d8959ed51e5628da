//! `flwr`: the operator's command line.
//!
//! # Layout
//! - [`args`]: the clap command tree.
//! - [`app_config`]: the app and its federations, from `flwr.toml`, `pyproject.toml` and
//!   `$FLWR_HOME/config.toml`.
//! - [`run_config`]: the app's config with `--run-config` values fused in.
//! - [`control_client`]: an authenticated connection to a broker's Control API.
//! - [`local_superlink`]: the local simulation SuperLink `flwr` starts for a simulation
//!   federation; [`simulation`]: that federation's options, read.
//! - [`fab`]: Flower App Bundles, built as Flower's `flwr build` builds them.
//! - [`bundle`]: this project's app bundles, packed from an app directory for `flwr run`.
//! - [`download`]: fetching CIFAR-10 with progress, resume and checksum.
//! - [`output`]: tables for people, JSON for programs.
//! - [`commands`]: one module per subcommand.

#![forbid(unsafe_code)]

pub mod app_config;
pub mod args;
pub mod bundle;
pub mod commands;
pub mod control_client;
pub mod download;
pub mod error;
pub mod fab;
pub mod local_superlink;
pub mod output;
pub mod run_config;
pub mod simulation;

pub use error::CliError;
