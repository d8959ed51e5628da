//! `flwr`: the operator's command line.
//!
//! # Layout
//! - [`args`]: the clap command tree.
//! - [`app_config`]: `flwr.toml` in the app directory: the app, its run config, the federations.
//! - [`control_client`]: an authenticated connection to a broker's Control API.
//! - [`download`]: fetching CIFAR-10 with progress, resume and checksum.
//! - [`output`]: tables for people, JSON for programs.
//! - [`commands`]: one module per subcommand.

#![forbid(unsafe_code)]

pub mod app_config;
pub mod args;
pub mod commands;
pub mod control_client;
pub mod download;
pub mod error;
pub mod output;

pub use error::CliError;
