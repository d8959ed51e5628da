//! The seed app and what the daemons ship besides the SDK: the built-in apps (the CNN's FedAvg,
//! vector-add) on [`flwr_sdk`]'s traits and strategies, the CNN, datasets and plots.
//! Only the `cnn` module (feature `burn`) needs Burn.
//!
//! # Layout
//! - `cnn` (feature `burn`): the CNN on Burn, conversion, training, device choice.
//! - [`net`]: the CNN's layout and initialisation without Burn.
//! - [`apps`]: the built-in apps and the registries that find apps by name.
//! - [`data`]: the prepared-dataset format, sources and partitioning.
//! - [`plot`]: a run's metrics drawn as SVG and PNG.

#![forbid(unsafe_code)]

pub mod apps;
#[cfg(feature = "burn")]
pub mod cnn;
pub mod data;
pub mod net;
pub mod plot;
