//! Log output of the node's executables: stderr, filtered by `RUST_LOG` (default `info`), and
//! a rotated file with `--log-file` (see [`ops::logging`]).

use crate::settings::LogFormat;

/// Installs the global subscriber for `flwr-clientapp`, which logs to stderr only (the node that
/// started it forwards those lines to its own log).
pub fn init(format: LogFormat) {
    if let Err(reason) = ops::logging::init(format, None) {
        eprintln!("{reason}");
    }
}
