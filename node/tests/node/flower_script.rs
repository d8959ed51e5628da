//! `flower-supernode` started the way Flower's deployment scripts start it: the flags with no
//! effect here are each named in one warning, and the health endpoint answers while the node
//! waits for its SuperLink.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn a_flower_deployment_script_starts_the_supernode() {
    let dir = tempfile::tempdir().unwrap();
    let health_address = free_address();
    let node = Command::new(env!("CARGO_BIN_EXE_flower-supernode"))
        .args(["--insecure", "--superlink", "127.0.0.1:9"])
        .args([
            "--clientappio-api-address",
            "127.0.0.1:0",
            "--backend",
            "cpu",
        ])
        .args(["--trusted-entities", "trusted-entities.yaml"])
        .args([
            "--auth-supernode-public-key",
            "keys/client_credentials_1.pub",
        ])
        .arg("--health-server-address")
        .arg(health_address.to_string())
        .arg("--log-file")
        .arg(dir.path().join("supernode.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let response = loop {
        if let Ok(mut stream) = TcpStream::connect(health_address) {
            stream
                .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .unwrap();
            let mut response = String::new();
            let _ = stream.read_to_string(&mut response);
            break response;
        }
        assert!(Instant::now() < deadline, "no health endpoint");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    let terminated = Command::new("kill")
        .arg(node.id().to_string())
        .status()
        .unwrap();
    assert!(terminated.success());
    let output = node.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    for flag in ["--trusted-entities", "--auth-supernode-public-key"] {
        let warnings = stderr
            .lines()
            .filter(|l| l.contains("WARN") && l.contains(&format!("{flag} ")))
            .count();
        assert_eq!(warnings, 1, "{flag}:\n{stderr}");
    }
    let logged: String = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(logged.contains("starting SuperNode"), "{logged}");
}
