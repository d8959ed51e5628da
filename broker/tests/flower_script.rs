//! `flower-superlink` started the way Flower's deployment scripts start it: every flag they pass
//! is accepted, the ones with no effect here are each named in one warning, the log also goes to
//! the rotated `--log-file`, and the health endpoint answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback address with a port free at the time of asking.
fn free_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The health endpoint's answer, once it answers (within 30 s).
fn health(address: SocketAddr) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut stream) = TcpStream::connect(address) {
            stream
                .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .unwrap();
            let mut response = String::new();
            let _ = stream.read_to_string(&mut response);
            return response;
        }
        assert!(Instant::now() < deadline, "no health endpoint at {address}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_flower_deployment_script_starts_the_superlink() {
    let dir = tempfile::tempdir().unwrap();
    let health_address = free_address();
    let superlink = Command::new(env!("CARGO_BIN_EXE_flower-superlink"))
        .args(["--insecure", "--database", ":flwr-in-memory:"])
        .args(["--fleet-api-address", "127.0.0.1:0"])
        .args(["--control-api-address", "127.0.0.1:0"])
        .args(["--fleet-api-type", "grpc-rere"])
        .args(["--serverappio-api-address", "127.0.0.1:0"])
        .args(["--isolation", "subprocess"])
        .args(["--storage-dir", dir.path().to_str().unwrap()])
        .arg("--disable-runtime-dependency-installation")
        .arg("--health-server-address")
        .arg(health_address.to_string())
        .arg("--log-file")
        .arg(dir.path().join("superlink.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let response = health(health_address);
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.ends_with("SERVING\n"), "{response}");
    let terminated = Command::new("kill")
        .arg(superlink.id().to_string())
        .status()
        .unwrap();
    assert!(terminated.success());
    let output = superlink.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    for flag in [
        "--fleet-api-type",
        "--isolation",
        "--storage-dir",
        "--disable-runtime-dependency-installation",
    ] {
        let warnings = stderr
            .lines()
            .filter(|l| l.contains("WARN") && l.contains(&format!("{flag} ")))
            .count();
        assert_eq!(warnings, 1, "{flag}:\n{stderr}");
    }
    let log_files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    assert_eq!(log_files.len(), 1, "{log_files:?}");
    let logged = std::fs::read_to_string(&log_files[0]).unwrap();
    assert!(
        logged.contains("Fleet API listening") && logged.contains("--storage-dir"),
        "{logged}"
    );
}
