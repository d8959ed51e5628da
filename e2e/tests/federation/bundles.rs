//! App bundles end to end: packed by the CLI's packer, stored by the broker, fetched and
//! cached by nodes, and their client programs run under the ClientAppIo API; with the refusals
//! that keep a node's data safe (`--trusted-apps`) and the failures a program can cause.

use crate::runs::{final_vector, follow};
use broker::config::NodeAuth;
use cli::app_config::AppConfig;
use e2e::{Db, Federation, RunningNode};
use std::path::{Path, PathBuf};
use wire::control::{ControlRequest, ControlResponse, RunStatus};
use wire::{BundleHash, RunId};

/// The Python client of `examples/python-client`, written from `docs/app-protocol.md` alone.
fn python_example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python-client")
}

/// Packs `dir`, offers the bundle and starts a run with the app's config and `overrides`;
/// returns the run, its bundle, and whether the bundle was sent (not stored already).
async fn start_bundle(
    federation: &Federation,
    dir: &Path,
    overrides: &str,
) -> Result<(RunId, BundleHash, bool), cli::CliError> {
    let config = AppConfig::load(dir)?;
    let app = config.app.as_ref().expect("an [app] table");
    let run_config = cli::run_config::fuse(app, &[overrides.to_string()])?;
    let packed = cli::bundle::pack(dir)?;
    let mut client = federation.operator().await?;
    let signatures = cli::bundle::signatures_for(dir, packed.hash)?;
    let sent = client
        .offer_bundle(packed.hash, &packed.bytes, signatures)
        .await?;
    let run_id = client.start_bundled_run(packed.hash, run_config).await;
    client.close().await;
    Ok((run_id?, packed.hash, sent))
}

async fn nodes(federation: &Federation, configs: &[&str]) -> Vec<RunningNode> {
    let mut nodes = Vec::new();
    for config in configs {
        let mut node = RunningNode::start(federation.node_settings_with(None, config));
        node.online().await;
        nodes.push(node);
    }
    nodes
}

#[tokio::test]
async fn a_python_client_written_from_the_protocol_document_completes_a_run_on_two_nodes() {
    let federation = Federation::start(NodeAuth::Automatic, false, Db::Memory).await;
    let _nodes = nodes(&federation, &["value=1", "value=3"]).await;
    let (run_id, hash, sent) = start_bundle(&federation, &python_example(), "")
        .await
        .unwrap();
    assert!(sent);
    let (lines, status) = follow(&federation, run_id).await;
    assert_eq!(status, RunStatus::Completed, "{lines:#?}");
    // Three rounds, each adding the mean of 1 and 3.
    assert_eq!(final_vector(&federation, run_id), [6.0; 4]);
    assert!(
        lines[0].contains(&hash.to_string()),
        "the log names the bundle: {lines:#?}"
    );
    let runs = match federation
        .request(ControlRequest::ListRuns {
            run_id: Some(run_id),
        })
        .await
    {
        ControlResponse::Runs(runs) => runs,
        other => panic!("{other:?}"),
    };
    assert_eq!(runs[0].bundle, Some(hash));
    assert_eq!(runs[0].app_name, "vector-add-python");

    // The same app again: stored once, fetched once, run again.
    let (again, same, sent) = start_bundle(&federation, &python_example(), "num-server-rounds=1")
        .await
        .unwrap();
    assert_eq!((same, sent), (hash, false));
    let (lines, status) = follow(&federation, again).await;
    assert_eq!(status, RunStatus::Completed, "{lines:#?}");
    assert_eq!(final_vector(&federation, again), [2.0; 4]);
}

/// An app directory whose client is the shell script `script`, given `args`.
fn script_app(server: &str, script: &str, args: &[&str]) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let args: String = args.iter().map(|arg| format!(", {arg:?}")).collect();
    std::fs::write(
        dir.path().join("flwr.toml"),
        format!(
            "[app]\nname = \"script-app\"\nversion = \"1.0.0\"\n\n[app.components]\n\
             serverapp = \"{server}\"\nclientapp = [\"./client.sh\"{args}]\n\n[app.config]\n\
             num-server-rounds = 1\nmin-nodes = 1\nround-timeout = 30.0\n"
        ),
    )
    .unwrap();
    let client = dir.path().join("client.sh");
    std::fs::write(&client, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&client, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[tokio::test]
async fn an_app_the_superlink_cannot_run_is_refused_before_a_run_exists() {
    let federation = Federation::start(NodeAuth::Automatic, false, Db::Memory).await;
    let app = script_app("no-such-app", "exit 0", &[]);
    let error = start_bundle(&federation, app.path(), "")
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("no-such-app"), "{error}");
    let missing = script_app("./server.sh", "exit 0", &[]);
    let error = start_bundle(&federation, missing.path(), "")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("\"server.sh\" is not in the bundle"),
        "{error}"
    );
    match federation
        .request(ControlRequest::ListRuns { run_id: None })
        .await
    {
        ControlResponse::Runs(runs) => assert!(runs.is_empty(), "{runs:?}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn bytes_that_are_not_the_offered_bundle_are_refused_and_not_stored() {
    let federation = Federation::start(NodeAuth::Automatic, false, Db::Memory).await;
    let packed = cli::bundle::pack(&python_example()).unwrap();
    let mut client = federation.operator().await.unwrap();
    let mut tampered = packed.bytes.clone();
    let last = tampered.len() - 1100;
    tampered[last] ^= 1;
    let error = client
        .offer_bundle(packed.hash, &tampered, Vec::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("SHA-256"), "{error}");
    let garbage = b"not an archive".to_vec();
    let error = client
        .offer_bundle(app_bundle::hash_of(&garbage), &garbage, Vec::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("flwr.toml") || error.contains("archive"),
        "{error}"
    );
    client.close().await;
    let store = &federation.broker().shared.store;
    assert!(!store.has_bundle(packed.hash).unwrap());
    assert!(!store.has_bundle(app_bundle::hash_of(&garbage)).unwrap());
}

#[tokio::test]
async fn a_node_refuses_an_app_off_its_trusted_list_without_starting_its_program() {
    let federation = Federation::start(NodeAuth::Automatic, false, Db::Memory).await;
    let marker = tempfile::tempdir().unwrap();
    let started = marker.path().join("started");
    let app = script_app(
        "vector-add",
        "touch \"$1\"; exit 1",
        &[started.to_str().unwrap()],
    );
    let mut settings = federation.node_settings_with(None, "");
    settings.trusted_apps = Some(node::trust::TrustedApps::parse("vector-add\n").unwrap());
    let mut node = RunningNode::start(settings);
    node.online().await;
    let (run_id, hash, _) = start_bundle(&federation, app.path(), "").await.unwrap();
    let (lines, status) = follow(&federation, run_id).await;
    assert_eq!(status, RunStatus::Failed, "{lines:#?}");
    let refusal = lines
        .iter()
        .find(|line| line.contains("--trusted-apps"))
        .unwrap_or_else(|| panic!("no refusal in {lines:#?}"));
    assert!(refusal.contains(&hash.to_string()), "{refusal}");
    assert!(!started.exists(), "the untrusted program was started");

    // Trusted by hash, the same app starts its program (which then fails, as written).
    node.stop().await.unwrap();
    let mut settings = federation.node_settings_with(None, "");
    settings.trusted_apps = Some(node::trust::TrustedApps::parse(&hash.to_string()).unwrap());
    let mut node = RunningNode::start(settings);
    node.online().await;
    let (run_id, _, _) = start_bundle(&federation, app.path(), "").await.unwrap();
    let (lines, status) = follow(&federation, run_id).await;
    assert_eq!(status, RunStatus::Failed, "{lines:#?}");
    assert!(
        started.exists(),
        "the trusted program never started: {lines:#?}"
    );
}

/// Whether process `pid` exists.
fn alive(pid: &str) -> bool {
    std::process::Command::new("kill")
        .args(["-0", pid.trim()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

#[tokio::test]
async fn programs_that_crash_babble_or_hang_cost_one_error_reply_and_leave_nothing_running() {
    let federation = Federation::start(NodeAuth::Automatic, false, Db::Memory).await;
    let mut node = RunningNode::start(federation.node_settings_with(None, "value=2"));
    let node_id = node.online().await;
    let scratch = tempfile::tempdir().unwrap();
    let pid_file = scratch.path().join("grandchild.pid");
    let speak = |then: &str| {
        format!(
            "python3 - <<'PY'\nimport os, socket, struct, time\nh, p = os.environ['FLWR_CLIENTAPPIO_ADDRESS'].rsplit(':', 1)\ns = socket.create_connection((h, int(p)))\ntoken = bytes.fromhex(os.environ['FLWR_CLIENTAPP_TOKEN'])\nversion = bytes([{}])\n{then}\ns.close()\nPY",
            wire::clientappio::CLIENTAPPIO_VERSION
        )
    };
    let cases = [
        (
            "echo 'boom: the model is on fire' >&2; exit 3".to_string(),
            vec![],
            "",
            "boom: the model is on fire",
        ),
        (
            // Another token than its own: the node never hands it anything, and says why.
            speak(
                "s.sendall(struct.pack('<I', 33) + version + bytes(32 * [0xAB]))\ntime.sleep(0.5)",
            ),
            vec![],
            "",
            "exited with status 0 before replying; meanwhile ClientAppIo refused a connection: \
             it showed a token this daemon did not give or no longer waits for",
        ),
        (
            // Its own token in a hello of another version.
            speak("s.sendall(struct.pack('<I', 33) + bytes([2]) + token)\ntime.sleep(0.5)"),
            vec![],
            "",
            "meanwhile ClientAppIo refused a connection: its hello is of ClientAppIo version 2 \
             (this node speaks version 3)",
        ),
        (
            // Its own token, then garbage where the reply belongs.
            speak(
                "s.sendall(struct.pack('<I', 33) + version + token)\ns.sendall(struct.pack('<I', 5) + b'hello')",
            ),
            vec![],
            "",
            "broke the ClientAppIo exchange",
        ),
        (
            // Starts a grandchild that would outlive it, then hangs past the time to live.
            "sleep 600 & echo $! > \"$1\"; sleep 600".to_string(),
            vec![pid_file.to_str().unwrap()],
            "round-timeout=2",
            "no reply from node",
        ),
    ];
    for (script, args, overrides, expected) in cases {
        let app = script_app("vector-add", &script, &args);
        let (run_id, _, _) = start_bundle(&federation, app.path(), overrides)
            .await
            .unwrap();
        let (lines, status) = follow(&federation, run_id).await;
        assert_eq!(status, RunStatus::Failed, "{script}: {lines:#?}");
        assert!(
            lines.iter().any(|line| line.contains(expected)),
            "{script}: no {expected:?} in {lines:#?}"
        );
    }
    let grandchild = std::fs::read_to_string(&pid_file).unwrap();
    let deadline = std::time::Instant::now() + e2e::PATIENCE;
    while alive(&grandchild) {
        assert!(
            std::time::Instant::now() < deadline,
            "the hung program's own child {grandchild} outlived it"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The node stayed online throughout, and serves the next run.
    assert_eq!(
        federation.status_of(node_id).await,
        Some(wire::control::NodeStatus::Online)
    );
    let (run_id, _, _) = start_bundle(
        &federation,
        &python_example(),
        "num-server-rounds=1 min-nodes=1",
    )
    .await
    .unwrap();
    let (lines, status) = follow(&federation, run_id).await;
    assert_eq!(status, RunStatus::Completed, "{lines:#?}");
}

#[tokio::test]
async fn a_node_gets_a_bundle_only_for_an_instruction_it_was_sent() {
    use wire::fleet::{BundleAnswer, NodeStream};
    let federation = Federation::start(NodeAuth::Automatic, false, Db::Memory).await;
    let packed = cli::bundle::pack(&python_example()).unwrap();
    let mut client = federation.operator().await.unwrap();
    assert!(
        client
            .offer_bundle(packed.hash, &packed.bytes, Vec::new())
            .await
            .unwrap()
    );
    client.close().await;
    // An authenticated node with no work asks for the stored bundle by its hash.
    let settings = federation.node_settings_with(None, "");
    let endpoint = certs::quic::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let config = node::session::client_config(
        &settings,
        &settings.identity,
        std::time::Duration::from_secs(2),
    )
    .unwrap();
    let session = node::session::open(&endpoint, &settings, &settings.identity, config)
        .await
        .unwrap();
    let (mut send, mut recv) = session.connection.open_bi().await.unwrap();
    wire::io::write_value(&mut send, &NodeStream::FetchBundle { hash: packed.hash })
        .await
        .unwrap();
    send.finish().unwrap();
    let answer: BundleAnswer = wire::io::read_value(&mut recv, 64 * 1024).await.unwrap();
    match answer {
        BundleAnswer::Refused(reason) => assert!(reason.contains("no instruction"), "{reason}"),
        other => panic!("a node without work got an answer: {other:?}"),
    }
}

/// An app directory whose server half is the shell script `script`.
fn server_script_app(script: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("flwr.toml"),
        "[app]\nname = \"server-script\"\nversion = \"1.0.0\"\n\n[app.components]\n\
         serverapp = [\"./server.sh\"]\nclientapp = \"vector-add\"\n",
    )
    .unwrap();
    let server = dir.path().join("server.sh");
    std::fs::write(&server, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&server, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[tokio::test]
async fn a_server_program_that_fails_fails_its_run_with_its_status_and_last_words() {
    let federation = Federation::start(NodeAuth::Automatic, false, Db::Memory).await;
    let app = server_script_app("echo 'no strategy configured' >&2; exit 4");
    let (run_id, _, _) = start_bundle(&federation, app.path(), "").await.unwrap();
    let (lines, status) = follow(&federation, run_id).await;
    assert_eq!(status, RunStatus::Failed, "{lines:#?}");
    let error = lines
        .iter()
        .find(|line| line.starts_with("ERROR"))
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(
        error.contains("exited with status 4") && error.contains("no strategy configured"),
        "{error}"
    );
}

/// A server program written from `docs/app-protocol.md` section 11: it waits for a node, sends it
/// an instruction whose metadata is all zeros but its type and group, reads the reply and `Done`.
const SERVER_PROGRAM_WITH_ZERO_METADATA: &str = r#"
import os, socket, struct, sys
h, p = os.environ['FLWR_SERVERAPPIO_ADDRESS'].rsplit(':', 1)
s = socket.create_connection((h, int(p)))
def frame(payload):
    s.sendall(struct.pack('<I', len(payload)) + payload)
def read_frame():
    (n,) = struct.unpack('<I', s.recv(4, socket.MSG_WAITALL))
    return s.recv(n, socket.MSG_WAITALL) if n else b''
def varint(v):
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | 0x80 if v else b)
        if not v:
            return bytes(out)
frame(varint(int(sys.argv[1])) + bytes.fromhex(os.environ['FLWR_SERVERAPP_TOKEN']))
read_frame()
frame(b'\x01' + varint(1) + varint(30000))
nodes = read_frame()
assert nodes[:2] == b'\x00\x01', nodes
frame(b'\x02\x01' + nodes[2:] + varint(30000))
frame(bytes(5) + b'\x011' + b'\x00' + b'\x05train' + b'\x00' + b'\x00\x00')
def skip_varint(b, i):
    while b[i] & 0x80:
        i += 1
    return i + 1
def skip_string(b, i):
    n, j = 0, 0
    while True:
        n |= (b[i] & 0x7F) << (7 * j)
        j += 1
        i += 1
        if not b[i - 1] & 0x80:
            return i + n
assert read_frame() == b'\x01'
reply = read_frame()
i = skip_varint(reply, skip_varint(reply, skip_varint(reply, skip_varint(reply, 0))))
i = skip_varint(reply, i + 1) if reply[i] == 1 else i + 1
i = skip_varint(reply, skip_string(reply, i))
i = skip_varint(reply, skip_string(reply, i))
assert reply[i] == 1, 'the reply is an error'
assert read_frame() == b'\x02'
"#;

#[tokio::test]
async fn a_server_program_hears_of_a_node_error_and_the_run_log_says_it_too() {
    let federation = Federation::start(NodeAuth::Automatic, false, Db::Memory).await;
    let _nodes = nodes(&federation, &["value=1"]).await;
    let app = server_script_app(&format!(
        "exec python3 - {} <<'PY'{SERVER_PROGRAM_WITH_ZERO_METADATA}PY",
        wire::serverappio::SERVERAPPIO_VERSION
    ));
    let (run_id, _, _) = start_bundle(&federation, app.path(), "").await.unwrap();
    let (lines, status) = follow(&federation, run_id).await;
    // The built-in vector-add client app finds no arrays in the instruction.
    assert_eq!(status, RunStatus::Completed, "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|line| line.contains("answered with an error (CLIENT_APP_RAISED_EXCEPTION)")),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn stopping_a_run_kills_its_server_program() {
    let federation = Federation::start(NodeAuth::Automatic, false, Db::Memory).await;
    let scratch = tempfile::tempdir().unwrap();
    let pid_file = scratch.path().join("server.pid");
    // Connected, and busy: the SuperLink is waiting for its next request when the run stops.
    // It writes its pid once it has its job.
    let version = wire::serverappio::SERVERAPPIO_VERSION;
    let app = server_script_app(&format!(
        "exec python3 - {:?} <<'PY'\nimport os, socket, struct, sys, time\n\
         h, p = os.environ['FLWR_SERVERAPPIO_ADDRESS'].rsplit(':', 1)\n\
         s = socket.create_connection((h, int(p)))\n\
         s.sendall(struct.pack('<I', 33) + bytes([{version}]) + bytes.fromhex(os.environ['FLWR_SERVERAPP_TOKEN']))\n\
         (n,) = struct.unpack('<I', s.recv(4, socket.MSG_WAITALL))\n\
         s.recv(n, socket.MSG_WAITALL)\n\
         open(sys.argv[1], 'w').write(str(os.getpid()))\n\
         time.sleep(600)\nPY",
        pid_file
    ));
    let (run_id, _, _) = start_bundle(&federation, app.path(), "").await.unwrap();
    let deadline = std::time::Instant::now() + e2e::PATIENCE;
    while !pid_file.exists()
        || std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the server program never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    assert!(alive(&pid));
    match federation.request(ControlRequest::StopRun { run_id }).await {
        ControlResponse::RunStopped { .. } => {}
        other => panic!("{other:?}"),
    }
    while alive(&pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "the stopped run's server program {pid} is still running"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_node_trusting_a_publisher_runs_what_they_signed_and_nothing_else() {
    let federation = Federation::start(NodeAuth::Automatic, false, Db::Memory).await;
    let publisher = certs::IdentityKey::generate();
    let marker = tempfile::tempdir().unwrap();
    let started = marker.path().join("started");
    let app = script_app(
        "vector-add",
        "touch \"$1\"; exit 1",
        &[started.to_str().unwrap()],
    );
    let mut settings = federation.node_settings_with(None, "");
    let line = certs::openssh::format_public_line(&publisher.public_key(), "publisher");
    settings.trusted_apps = Some(node::trust::TrustedApps::parse(&line).unwrap());
    let apps_dir = settings.apps_dir.clone();
    let kept_bundles = || {
        std::fs::read_dir(&apps_dir).map_or(0, |entries| {
            entries
                .flatten()
                .filter(|entry| entry.path().extension().is_some_and(|e| e == "bundle"))
                .count()
        })
    };
    let mut node = RunningNode::start(settings);
    node.online().await;

    // Unsigned: refused, never started.
    let (run_id, _, _) = start_bundle(&federation, app.path(), "").await.unwrap();
    let (lines, status) = follow(&federation, run_id).await;
    assert_eq!(status, RunStatus::Failed, "{lines:#?}");
    assert!(
        lines.iter().any(|l| l.contains("--trusted-apps")),
        "{lines:#?}"
    );
    assert!(!started.exists(), "an unsigned program was started");

    // Signed by someone else: the same.
    cli::bundle::sign(app.path(), &certs::IdentityKey::generate(), "stranger").unwrap();
    let (run_id, _, _) = start_bundle(&federation, app.path(), "").await.unwrap();
    let (lines, _) = follow(&federation, run_id).await;
    assert!(
        lines.iter().any(|l| l.contains("--trusted-apps")),
        "{lines:#?}"
    );
    assert!(
        !started.exists(),
        "a program signed by a stranger was started"
    );
    // Neither was even downloaded: the signatures were asked for first.
    assert_eq!(
        kept_bundles(),
        0,
        "an untrusted bundle was downloaded and kept"
    );

    // Signed by the publisher: it runs (and fails, as written).
    cli::bundle::sign(app.path(), &publisher, "publisher").unwrap();
    let (run_id, _, _) = start_bundle(&federation, app.path(), "").await.unwrap();
    let (lines, status) = follow(&federation, run_id).await;
    assert_eq!(status, RunStatus::Failed, "{lines:#?}");
    assert!(
        started.exists(),
        "the signed program never started: {lines:#?}"
    );
}

#[tokio::test]
async fn a_signature_that_does_not_verify_is_refused_with_the_bundle() {
    let federation = Federation::start(NodeAuth::Automatic, false, Db::Memory).await;
    let packed = cli::bundle::pack(&python_example()).unwrap();
    let key = certs::IdentityKey::generate();
    let forged = wire::bundle::BundleSignature {
        public_key: key.public_key().to_spki_der(),
        signature: key.sign(&wire::bundle::signing_message(BundleHash([0; 32]))),
    };
    let mut client = federation.operator().await.unwrap();
    let error = client
        .offer_bundle(packed.hash, &packed.bytes, vec![forged])
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("not a signature of this bundle"), "{error}");
    client.close().await;
    assert!(
        !federation
            .broker()
            .shared
            .store
            .has_bundle(packed.hash)
            .unwrap()
    );
}

#[tokio::test]
async fn nobody_can_bury_a_bundle_under_signatures() {
    let federation = Federation::start(NodeAuth::Automatic, false, Db::Memory).await;
    let packed = cli::bundle::pack(&python_example()).unwrap();
    let sign = |key: &certs::IdentityKey| wire::bundle::BundleSignature {
        public_key: key.public_key().to_spki_der(),
        signature: key.sign(&wire::bundle::signing_message(packed.hash)),
    };
    let keys: Vec<certs::IdentityKey> = (0..=wire::bundle::MAX_SIGNATURES)
        .map(|_| certs::IdentityKey::generate())
        .collect();
    let mut client = federation.operator().await.unwrap();
    let first: Vec<_> = keys[..wire::bundle::MAX_SIGNATURES]
        .iter()
        .map(sign)
        .collect();
    assert!(
        client
            .offer_bundle(packed.hash, &packed.bytes, first)
            .await
            .unwrap()
    );
    // Anyone may sign any hash; one more publisher than a bundle may carry is refused, and what
    // nodes get stays within what they accept.
    let error = client
        .offer_bundle(
            packed.hash,
            &packed.bytes,
            vec![sign(&keys[wire::bundle::MAX_SIGNATURES])],
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("at most"), "{error}");
    client.close().await;
    let kept = federation
        .broker()
        .shared
        .store
        .bundle_signatures(packed.hash)
        .unwrap();
    assert_eq!(kept.len(), wire::bundle::MAX_SIGNATURES);
}
