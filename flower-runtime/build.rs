//! Compiles `proto/flwr/proto/*.proto` (Flower 1.42's wire format, written down in this
//! repository) into Rust types, without `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from("proto");
    let files = [
        "control",
        "error",
        "fab",
        "fleet",
        "log",
        "message",
        "node",
        "recorddict",
        "run",
        "runtime",
        "transport",
    ]
    .map(|name| root.join("flwr/proto").join(format!("{name}.proto")));
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let descriptors = protox::compile(&files, [&root])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
