//! TLS handshakes between our server and client configurations, in memory.

use certs::generate::{CertificatePaths, generate_certificates};
use certs::tls::{ClientAuth, client_config, server_config};
use certs::{IdentityKey, load};
use rustls::{ClientConnection, ServerConnection};
use std::process::Command;
use std::sync::Arc;

const ALPN: &[u8] = b"test/1";

/// Drives a client and a server connection until both finish the handshake or one fails.
fn handshake(
    client: rustls::ClientConfig,
    server: rustls::ServerConfig,
) -> Result<(), rustls::Error> {
    let mut client = ClientConnection::new(Arc::new(client), "localhost".try_into().unwrap())?;
    let mut server = ServerConnection::new(Arc::new(server))?;
    for _ in 0..20 {
        let mut buffer = Vec::new();
        client.write_tls(&mut buffer).unwrap();
        server.read_tls(&mut buffer.as_slice()).unwrap();
        server.process_new_packets()?;
        let mut buffer = Vec::new();
        server.write_tls(&mut buffer).unwrap();
        client.read_tls(&mut buffer.as_slice()).unwrap();
        client.process_new_packets()?;
        if !client.is_handshaking() && !server.is_handshaking() {
            // TLS 1.3: the server judges the client certificate after the client thinks it is done.
            let mut buffer = Vec::new();
            client.write_tls(&mut buffer).unwrap();
            server.read_tls(&mut buffer.as_slice()).unwrap();
            server.process_new_packets()?;
            return Ok(());
        }
    }
    panic!("handshake did not finish");
}

fn server_for(paths: &CertificatePaths, auth: ClientAuth) -> rustls::ServerConfig {
    let chain = load::load_certificates(&paths.server_cert).unwrap();
    let key = load::load_tls_private_key(&paths.server_key).unwrap();
    server_config(chain, key, auth, ALPN).unwrap()
}

fn accept_only(allowed: certs::PublicKey, mandatory: bool) -> ClientAuth {
    ClientAuth {
        policy: Arc::new(move |key: &certs::PublicKey| *key == allowed),
        mandatory,
    }
}

#[test]
fn our_client_and_server_configs_complete_a_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let paths = generate_certificates(dir.path(), &[], false).unwrap();
    let node = IdentityKey::generate();
    let roots = load::load_certificates(&paths.ca_cert).unwrap();
    let client = client_config(&roots, Some(&node), ALPN).unwrap();
    handshake(
        client,
        server_for(&paths, accept_only(node.public_key(), true)),
    )
    .unwrap();
}

#[test]
fn a_server_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ours = generate_certificates(&dir.path().join("ours"), &[], false).unwrap();
    let theirs = generate_certificates(&dir.path().join("theirs"), &[], false).unwrap();
    let node = IdentityKey::generate();
    let roots = load::load_certificates(&ours.ca_cert).unwrap();
    let client = client_config(&roots, Some(&node), ALPN).unwrap();
    let error = handshake(
        client,
        server_for(&theirs, accept_only(node.public_key(), true)),
    )
    .unwrap_err();
    // Both CAs are called "Flower CA": the chain is refused on its signature, not its issuer name.
    assert!(
        error.to_string().contains("invalid peer certificate"),
        "{error}"
    );
}

#[test]
fn a_client_key_the_policy_refuses_fails_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let paths = generate_certificates(dir.path(), &[], false).unwrap();
    let (node, stranger) = (IdentityKey::generate(), IdentityKey::generate());
    let roots = load::load_certificates(&paths.ca_cert).unwrap();
    let client = client_config(&roots, Some(&stranger), ALPN).unwrap();
    assert!(
        handshake(
            client,
            server_for(&paths, accept_only(node.public_key(), true))
        )
        .is_err()
    );
}

#[test]
fn a_client_without_a_certificate_is_refused_when_one_is_mandatory() {
    let dir = tempfile::tempdir().unwrap();
    let paths = generate_certificates(dir.path(), &[], false).unwrap();
    let roots = load::load_certificates(&paths.ca_cert).unwrap();
    let node = IdentityKey::generate();
    let anonymous = client_config(&roots, None, ALPN).unwrap();
    assert!(
        handshake(
            anonymous,
            server_for(&paths, accept_only(node.public_key(), true))
        )
        .is_err()
    );
    let anonymous = client_config(&roots, None, ALPN).unwrap();
    handshake(
        anonymous,
        server_for(&paths, accept_only(node.public_key(), false)),
    )
    .unwrap();
}

#[test]
fn rsa_certificates_made_by_openssl_work_as_flowers_script_makes_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let openssl = |args: &[&str]| {
        let status = Command::new("openssl").args(args).output().unwrap();
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
    };
    openssl(&["genrsa", "-out", &d("ca.key"), "2048"]);
    openssl(&[
        "req",
        "-new",
        "-x509",
        "-key",
        &d("ca.key"),
        "-sha256",
        "-subj",
        "/O=Flower CA",
        "-days",
        "365",
        "-out",
        &d("ca.crt"),
    ]);
    openssl(&["genrsa", "-out", &d("server.key"), "2048"]);
    std::fs::write(
        d("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n",
    )
    .unwrap();
    openssl(&[
        "req",
        "-new",
        "-key",
        &d("server.key"),
        "-subj",
        "/O=Flower",
        "-out",
        &d("server.csr"),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &d("server.csr"),
        "-CA",
        &d("ca.crt"),
        "-CAkey",
        &d("ca.key"),
        "-CAcreateserial",
        "-out",
        &d("server.pem"),
        "-days",
        "365",
        "-sha256",
        "-extfile",
        &d("ext.cnf"),
    ]);
    let paths = CertificatePaths::in_dir(dir.path());
    let node = IdentityKey::generate();
    let roots = load::load_certificates(&paths.ca_cert).unwrap();
    let client = client_config(&roots, Some(&node), ALPN).unwrap();
    handshake(
        client,
        server_for(&paths, accept_only(node.public_key(), true)),
    )
    .unwrap();
}
