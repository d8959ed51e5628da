//! What we write, openssl and ssh-keygen read; what they write, we read.

use certs::generate::{generate_certificates, generate_federation_keys, public_path};
use certs::load;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} must be installed (.ci/run installs it): {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn openssl_verifies_the_generated_server_certificate_and_its_names() {
    let dir = tempfile::tempdir().unwrap();
    let paths = generate_certificates(
        dir.path(),
        &["fl.example.org".into(), "10.1.2.3".into()],
        false,
    )
    .unwrap();
    let ca = paths.ca_cert.to_str().unwrap();
    let server = paths.server_cert.to_str().unwrap();
    let verdict = run("openssl", &["verify", "-CAfile", ca, server]);
    assert!(verdict.contains(": OK"), "{verdict}");
    let text = run(
        "openssl",
        &["x509", "-in", server, "-noout", "-ext", "subjectAltName"],
    );
    for name in [
        "DNS:localhost",
        "IP Address:127.0.0.1",
        "IP Address:0:0:0:0:0:0:0:1",
        "DNS:fl.example.org",
        "IP Address:10.1.2.3",
    ] {
        assert!(text.contains(name), "{name} missing from {text}");
    }
    assert_eq!(mode(&paths.ca_key), 0o600);
    assert_eq!(mode(&paths.server_key), 0o600);
}

#[test]
fn certificates_are_not_overwritten_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let first = generate_certificates(dir.path(), &[], false).unwrap();
    let before = std::fs::read(&first.ca_cert).unwrap();
    let error = generate_certificates(dir.path(), &[], false).unwrap_err();
    assert!(error.to_string().contains("already exists"), "{error}");
    assert_eq!(std::fs::read(&first.ca_cert).unwrap(), before);
    generate_certificates(dir.path(), &[], true).unwrap();
    assert_ne!(std::fs::read(&first.ca_cert).unwrap(), before);
}

#[test]
fn ssh_keygen_reads_our_keys_with_the_same_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = generate_federation_keys(dir.path(), "client_credentials", 3, Some("alice"), false)
        .unwrap();
    assert_eq!(pairs.len(), 4);
    for pair in &pairs {
        assert_eq!(mode(&pair.private), 0o600);
        let ours = load::load_public_key(&pair.public)
            .unwrap()
            .key
            .fingerprint();
        let listed = run("ssh-keygen", &["-l", "-f", pair.public.to_str().unwrap()]);
        assert!(
            listed.starts_with("256 ") && listed.contains(&ours),
            "{listed} vs {ours}"
        );
        // ssh-keygen derives the public key from our private key file: it must parse it.
        let derived = run("ssh-keygen", &["-y", "-f", pair.private.to_str().unwrap()]);
        let derived = certs::openssh::parse_public_line(derived.trim()).unwrap();
        assert_eq!(derived.key.fingerprint(), ours);
    }
    let operator = load::load_public_key(&dir.path().join("operator.pub")).unwrap();
    assert_eq!(operator.comment, "alice");
}

#[test]
fn keys_made_by_ssh_keygen_load_on_p256_and_p384() {
    let dir = tempfile::tempdir().unwrap();
    for bits in ["256", "384"] {
        let path = dir.path().join(format!("key{bits}"));
        run(
            "ssh-keygen",
            &[
                "-q",
                "-t",
                "ecdsa",
                "-b",
                bits,
                "-N",
                "",
                "-C",
                "n",
                "-f",
                path.to_str().unwrap(),
            ],
        );
        let private = load::load_identity_key(&path).unwrap();
        let public = load::load_public_key(&public_path(&path)).unwrap();
        assert_eq!(private.public_key(), public.key);
        assert_eq!(private.public_key().curve().bits().to_string(), bits);
    }
}

#[test]
fn keys_made_by_openssl_load_as_pkcs8_and_sec1() {
    let dir = tempfile::tempdir().unwrap();
    let pkcs8 = dir.path().join("pkcs8.pem");
    run(
        "openssl",
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            pkcs8.to_str().unwrap(),
        ],
    );
    let sec1 = dir.path().join("sec1.pem");
    run(
        "openssl",
        &[
            "ecparam",
            "-genkey",
            "-name",
            "secp384r1",
            "-out",
            sec1.to_str().unwrap(),
        ],
    );
    let spki = dir.path().join("pub.pem");
    run(
        "openssl",
        &[
            "pkey",
            "-in",
            pkcs8.to_str().unwrap(),
            "-pubout",
            "-out",
            spki.to_str().unwrap(),
        ],
    );
    let key = load::load_identity_key(&pkcs8).unwrap();
    assert_eq!(load::load_public_key(&spki).unwrap().key, key.public_key());
    assert_eq!(
        load::load_identity_key(&sec1)
            .unwrap()
            .public_key()
            .curve()
            .bits(),
        384
    );
}

#[test]
fn wrong_truncated_and_unsupported_files_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = generate_federation_keys(dir.path(), "k", 1, None, false).unwrap();
    let text = std::fs::read_to_string(&pairs[0].private).unwrap();
    let truncated = dir.path().join("truncated");
    std::fs::write(&truncated, &text[..text.len() / 2]).unwrap();
    let error = load::load_identity_key(&truncated).unwrap_err().to_string();
    assert!(error.contains("truncated"), "{error}");

    let ed25519 = dir.path().join("ed25519");
    run(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            ed25519.to_str().unwrap(),
        ],
    );
    let error = load::load_public_key(&public_path(&ed25519))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("ed25519.pub") && error.contains("not supported"),
        "{error}"
    );

    let missing = load::load_identity_key(&dir.path().join("nope"))
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("nope") && missing.contains("No such file"),
        "{missing}"
    );

    let garbage = dir.path().join("garbage.crt");
    std::fs::write(&garbage, "hello").unwrap();
    let error = load::load_certificates(&garbage).unwrap_err().to_string();
    assert!(
        error.contains("garbage.crt") && error.contains("no PEM certificate"),
        "{error}"
    );
}
