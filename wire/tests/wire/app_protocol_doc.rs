//! The worked examples of `docs/app-protocol.md` are the bytes this crate writes: each hex block
//! of the document is checked against the encoding of the value it describes, so the document
//! cannot drift from the protocol. The first line of a block names its example
//! (`# example: NAME`); on each further line the hex comes before a `|`, notes after it.

use wire::clientappio::{AppHello, AppJob, CLIENTAPPIO_VERSION};
use wire::fleet::InstructionHeader;
use wire::serverappio::{GridRequest, GridResponse, ServerJob};
use wire::stream::encode_message_bytes;
use wire::*;

fn document() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/app-protocol.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every example block of the document, by name, as bytes.
fn examples(text: &str) -> Vec<(String, Vec<u8>)> {
    let mut examples = Vec::new();
    let mut current: Option<(String, Vec<u8>)> = None;
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
        let Some((_, bytes)) = current.as_mut() else {
            continue;
        };
        let hex = line.split('|').next().unwrap_or_default();
        for pair in hex.split_whitespace() {
            let byte = u8::from_str_radix(pair, 16)
                .unwrap_or_else(|_| panic!("{pair:?} in {line:?} is not a hex byte"));
            assert_eq!(pair.len(), 2, "{pair:?} in {line:?}");
            bytes.push(byte);
        }
    }
    examples.extend(current);
    examples
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
