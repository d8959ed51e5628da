//! The worked examples of `docs/app-protocol.md` are the bytes this crate writes: each hex block
//! of the document is checked against the encoding of the value it describes, so the document
//! cannot drift from the protocol. The first line of a block names its example
//! (`# example: NAME`); on each further line the hex comes before a `|`, notes after it.

use wire::clientappio::{AppHello, AppJob, CLIENTAPPIO_VERSION};
use wire::fleet::InstructionHeader;
use wire::serverappio::{GridRequest, GridResponse, SERVERAPPIO_VERSION, ServerJob};
use wire::stream::encode_message_bytes;
use wire::*;

fn document() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/app-protocol.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every example block of the document, by name, as bytes.
fn examples(text: &str) -> Vec<(String, Vec<u8>)> {
    annotated_examples(text)
        .into_iter()
        .map(|(name, fields)| {
            let hex: String = fields.iter().map(|(hex, _)| hex.as_str()).collect();
            assert!(
                hex.len().is_multiple_of(2),
                "{name}: an odd number of hex digits"
            );
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| {
                    u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or_else(|_| {
                        panic!("{name}: {:?} is not a hex byte", &hex[i..i + 2])
                    })
                })
                .collect();
            (name, bytes)
        })
        .collect()
}

/// Every example block of the document with its lines, by name: each line's hex (spaces removed)
/// and its note (after the `|`, trimmed).
fn annotated_examples(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut examples = Vec::new();
    let mut current: Option<(String, Vec<(String, String)>)> = None;
    for line in text.lines() {
        if let Some(name) = line.trim().strip_prefix("# example: ") {
            examples.extend(current.take());
            current = Some((name.trim().to_string(), Vec::new()));
            continue;
        }
        if line.trim_start().starts_with("```") {
            examples.extend(current.take());
            continue;
        }
        let Some((_, fields)) = current.as_mut() else {
            continue;
        };
        let (hex, note) = line.split_once('|').unwrap_or((line, ""));
        for pair in hex.split_whitespace() {
            assert_eq!(pair.len(), 2, "{pair:?} in {line:?} is not one hex byte");
        }
        let hex: String = hex.split_whitespace().collect();
        fields.push((hex, note.trim().to_string()));
    }
    examples.extend(current);
    examples
}

/// `docs/app-protocol.vectors.json` as the document's examples make it.
fn vectors(text: &str) -> String {
    let vectors: Vec<serde_json::Value> = annotated_examples(text)
        .into_iter()
        .map(|(name, fields)| {
            let hex: String = fields.iter().map(|(hex, _)| hex.as_str()).collect();
            let fields: Vec<serde_json::Value> = fields
                .into_iter()
                .map(|(hex, note)| serde_json::json!({ "hex": hex, "note": note }))
                .collect();
            serde_json::json!({ "name": name, "hex": hex, "fields": fields })
        })
        .collect();
    let document = serde_json::json!({
        "about": "The worked examples of docs/app-protocol.md: each vector's bytes (hex) are \
                  the encoding of the value its fields describe, run by run, in order.",
        "clientappio_version": CLIENTAPPIO_VERSION,
        "serverappio_version": SERVERAPPIO_VERSION,
        "vectors": vectors,
    });
    serde_json::to_string_pretty(&document).unwrap() + "\n"
}

/// `docs/app-protocol.schema` as the document's `schema` blocks make it.
fn schema(text: &str) -> String {
    let mut schema = format!(
        "-- The types of the app protocol, verbatim from docs/app-protocol.md (sections 5 and 11):\n\
         -- ClientAppIo version {CLIENTAPPIO_VERSION}, ServerAppIo version {SERVERAPPIO_VERSION}. \
         Encoding: postcard (section 4).\n"
    );
    let mut inside = false;
    for line in text.lines() {
        match line.trim_end() {
            "```schema" => {
                inside = true;
                schema.push('\n');
            }
            "```" if inside => inside = false,
            line if inside => {
                schema.push_str(line);
                schema.push('\n');
            }
            _ => {}
        }
    }
    schema
}

/// Checks `file` under `docs/` against `made`, or writes it with `WIRE_BLESS=1`.
fn check_beside_the_document(file: &str, made: &str) {
    let path = format!("{}/../docs/{file}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("WIRE_BLESS").is_some() {
        std::fs::write(&path, made).unwrap();
        return;
    }
    let kept = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(
        kept == made,
        "docs/{file} differs from docs/app-protocol.md: regenerate it with \
         WIRE_BLESS=1 cargo test -p wire"
    );
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut bytes = frame::prefix(payload.len()).unwrap().to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

fn instruction() -> Message {
    let vector = Array::from_f32(vec![2], &[1.0, 2.0]).unwrap();
    Message {
        metadata: Metadata {
            run_id: RunId(7),
            message_id: MessageId(258),
            src_node_id: NodeId::SERVER,
            dst_node_id: NodeId(300),
            reply_to: None,
            group_id: "1".into(),
            ttl_ms: 30_000,
            message_type: MessageType::TRAIN,
            created_at_ms: 1_700_000_000_000,
        },
        body: MessageBody::Content(
            RecordDict::new()
                .with(
                    "arrays",
                    Record::Arrays(ArrayRecord::new().with("vector", vector)),
                )
                .with(
                    "config",
                    Record::Config(ConfigRecord::new().with("server-round", ConfigValue::Int(1))),
                ),
        ),
    }
}

fn reply() -> Message {
    let vector = Array::from_f32(vec![2], &[3.0, 4.0]).unwrap();
    let mut reply = instruction().reply(
        MessageBody::Content(
            RecordDict::new()
                .with(
                    "arrays",
                    Record::Arrays(ArrayRecord::new().with("vector", vector)),
                )
                .with(
                    "metrics",
                    Record::Metrics(MetricRecord::new().with("num-examples", MetricValue::Int(1))),
                ),
        ),
        1_700_000_000_500,
    );
    reply.metadata.message_id = MessageId(259);
    reply
}

/// What each example of the document must be.
fn expected() -> Vec<(&'static str, Vec<u8>)> {
    let hello = AppHello {
        version: CLIENTAPPIO_VERSION,
        token: [0x5A; 32],
    };
    let job = AppJob {
        node_id: NodeId(300),
        node_config: ConfigRecord::new().with("value", ConfigValue::Float(2.0)),
        header: InstructionHeader {
            app_name: "my-app".into(),
            app_version: "1.0.0".into(),
            run_config: ConfigRecord::new().with("num-server-rounds", ConfigValue::Int(3)),
            bundle: Some(BundleHash([0xAB; 32])),
        },
    };
    let mut error = reply();
    error.body = MessageBody::Error(message::MessageError {
        code: message::ErrorCode::ClientAppRaisedException,
        reason: "no data".into(),
    });
    vec![
        ("hello", frame::encode(&hello).unwrap()),
        ("job", frame::encode(&job).unwrap()),
        (
            "instruction",
            encode_message_bytes(&instruction(), 1 << 20).unwrap(),
        ),
        ("reply", encode_message_bytes(&reply(), 1 << 20).unwrap()),
        ("error-reply", framed(&postcard::to_stdvec(&error).unwrap())),
        (
            "server-job",
            frame::encode(&ServerJob {
                run_id: RunId(7),
                app_name: "my-app".into(),
                app_version: "1.0.0".into(),
                run_config: ConfigRecord::new().with("num-server-rounds", ConfigValue::Int(3)),
                checkpoint_size: None,
            })
            .unwrap(),
        ),
        (
            "send-and-receive",
            frame::encode(&GridRequest::SendAndReceive {
                destinations: vec![NodeId(300), NodeId(301)],
                timeout_ms: 60_000,
            })
            .unwrap(),
        ),
        (
            "log",
            frame::encode(&GridRequest::Log {
                line: "round 1 done".into(),
            })
            .unwrap(),
        ),
        ("ok", frame::encode(&GridResponse::Ok).unwrap()),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|row| {
            row.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_worked_examples_of_the_app_protocol_document_are_the_bytes_on_the_wire() {
    let found = examples(&document());
    for (name, bytes) in expected() {
        let Some((_, documented)) = found.iter().find(|(found, _)| found == name) else {
            panic!(
                "docs/app-protocol.md has no example {name:?}; its bytes are:\n{}",
                hex(&bytes)
            );
        };
        assert!(
            *documented == bytes,
            "example {name:?} of docs/app-protocol.md differs from the encoding:\n{}",
            hex(&bytes)
        );
    }
}

#[test]
fn the_machine_readable_vectors_and_schema_are_the_documents() {
    let text = document();
    check_beside_the_document("app-protocol.vectors.json", &vectors(&text));
    check_beside_the_document("app-protocol.schema", &schema(&text));
    // Each vector's bytes are its fields' bytes, and the encoder's (checked above against the
    // document's blocks, from which both files are made).
    let found = examples(&text);
    for (name, fields) in annotated_examples(&text) {
        let joined: String = fields.iter().map(|(hex, _)| hex.as_str()).collect();
        let bytes = &found.iter().find(|(n, _)| *n == name).unwrap().1;
        assert_eq!(
            joined,
            hex(bytes).split_whitespace().collect::<String>(),
            "{name}"
        );
    }
}
