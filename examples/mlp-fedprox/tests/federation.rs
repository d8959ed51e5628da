//! The example end to end through the real binaries: `flwr` makes certificates and keys and
//! registers two nodes, `flower-superlink` runs the example's server program, two
//! `flower-supernode`s (client apps in processes of their own) run its client program on their
//! partitions, and `flwr run` follows the run to its end; `flwr pull` fetches the model and the
//! metrics.
//!
//! The binaries are those `cargo test --workspace` builds beside this test's own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where the workspace's binaries are.
fn bin_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_flwr-example-mlp-server"))
        .parent()
        .unwrap()
        .to_path_buf();
    for daemon in [
        "flower-superlink",
        "flower-supernode",
        "flwr",
        "flwr-clientapp",
    ] {
        assert!(
            dir.join(daemon).is_file(),
            "{} is missing: build the workspace's binaries first (cargo build --workspace --bins; \
             cargo test --workspace builds them)",
            dir.join(daemon).display()
        );
    }
    dir
}

/// PATH with the binaries first: the app's components are commands on the daemons' PATH.
fn path_with(dir: &Path) -> std::ffi::OsString {
    let mut paths = vec![dir.to_path_buf()];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(paths).unwrap()
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A daemon, killed when the test ends however it ends.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn flwr(bin: &Path, dir: &Path, args: &[&str]) -> Output {
    let output = Command::new(bin.join("flwr"))
        .args(args)
        .current_dir(dir)
        .env("PATH", path_with(bin))
        .env("FLWR_PAGER", "cat")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "flwr {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn the_example_app_trains_with_fedprox_on_two_nodes_through_the_real_binaries() {
    let bin = bin_dir();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    flwr(&bin, dir, &["certs", "generate"]);
    flwr(&bin, dir, &["keys", "generate", "2"]);
    let (fleet, control) = (free_port(), free_port());
    let superlink = Daemon(
        Command::new(bin.join("flower-superlink"))
            .current_dir(dir)
            .env("PATH", path_with(&bin))
            .args(["--ssl-ca-certfile", "certificates/ca.crt"])
            .args(["--ssl-certfile", "certificates/server.pem"])
            .args(["--ssl-keyfile", "certificates/server.key"])
            .arg("--enable-supernode-auth")
            .args(["--fleet-api-address", &format!("127.0.0.1:{fleet}")])
            .args(["--control-api-address", &format!("127.0.0.1:{control}")])
            .args(["--serverappio-api-address", "127.0.0.1:0"])
            .args([
                "--database",
                "superlink.redb",
                "--apps-dir",
                "superlink-apps",
            ])
            .args(["--log-file", "superlink.log"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The app directory: the example's flwr.toml, pointed at this federation.
    let app = dir.join("app");
    std::fs::create_dir(&app).unwrap();
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/flwr.toml")).unwrap();
    let manifest = manifest
        .replace("127.0.0.1:9093", &format!("127.0.0.1:{control}"))
        .replace("../../certificates/ca.crt", "../certificates/ca.crt");
    std::fs::write(app.join("flwr.toml"), manifest).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    for key in 1..=2 {
        let public = format!("keys/client_credentials_{key}.pub");
        loop {
            let output = Command::new(bin.join("flwr"))
                .args(["supernode", "register", &format!("../{public}"), "."])
                .current_dir(&app)
                .output()
                .unwrap();
            if output.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the SuperLink never answered: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let _nodes: Vec<Daemon> = (1..=2)
        .map(|key| {
            Daemon(
                Command::new(bin.join("flower-supernode"))
                    .current_dir(dir)
                    .env("PATH", path_with(&bin))
                    .args(["--superlink", &format!("127.0.0.1:{fleet}")])
                    .args(["--root-certificates", "certificates/ca.crt"])
                    .args([
                        "--auth-supernode-private-key",
                        &format!("keys/client_credentials_{key}"),
                    ])
                    .args(["--node-config", &format!("partition-id={key}")])
                    .args(["--clientappio-api-address", "127.0.0.1:0"])
                    .args(["--apps-dir", &format!("node-{key}-apps")])
                    .args(["--backend", "cpu"])
                    .args(["--log-file", &format!("node-{key}.log")])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let output = flwr(&bin, &app, &["run", ".", "--stream", "--format", "json"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["status"], "finished:completed", "{stdout}");
    assert!(stdout.contains("Final accuracy"), "{stdout}");
    let run_id = last["run-id"].as_str().unwrap().to_string();
    flwr(&bin, &app, &["pull", &run_id, "."]);
    let pulled = app.join("runs").join(&run_id);
    assert!(pulled.join("model.safetensors").is_file());
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pulled.join("metrics.json")).unwrap()).unwrap();
    let rounds = metrics["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 3, "{metrics}");
    let accuracy = rounds[2]["eval-acc"].as_f64().unwrap();
    assert!(accuracy > 0.8, "final accuracy {accuracy}: {metrics}");
    drop(superlink);
}
