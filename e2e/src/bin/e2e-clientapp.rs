//! The node's `flwr-clientapp`, built again in this package: cargo tells integration tests where
//! their own package's executables are, and no other package's.

fn main() -> std::process::ExitCode {
    node::clientapp::main()
}
