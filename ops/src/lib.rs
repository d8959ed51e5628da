//! What both daemons (`flower-superlink`, `flower-supernode`) offer an operations team:
//!
//! - [`logging`]: logs on stderr, and with `--log-file` also in a file rotated daily;
//! - [`http`]: a small, bounded HTTP/1.1 server for the health and metrics endpoints;
//! - [`flower_flags`]: flags Flower's deployment scripts pass that have no effect in this
//!   design, accepted with one warning each so that those scripts start;
//! - [`shutdown`]: the signals that stop a daemon gracefully;
//! - [`process`]: child processes whose whole process group goes with them;
//! - [`app_process`]: the one supervisor of app processes (spawn, output, outcome or exit or
//!   interruption, grace, kill);
//! - [`private_dir`]: directories only the daemon's user can change, up to the root;
//! - [`token_gate`]: the one-time-token front door of the local app APIs (ServerAppIo,
//!   ClientAppIo).

#![forbid(unsafe_code)]

pub mod app_process;
pub mod flower_flags;
pub mod http;
pub mod logging;
pub mod private_dir;
pub mod process;
pub mod shutdown;
pub mod token_gate;
