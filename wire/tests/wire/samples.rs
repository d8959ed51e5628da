//! One deterministic value of every protocol type, shared by the round-trip and golden tests.

use wire::control::{
    Artifact, ControlError, ControlFrame, ControlRequest, ControlResponse, LogLine, NodeInfo,
    NodeStatus, OperatorFrame, RunInfo, RunStatus,
};
use wire::fleet::{
    BrokerFrame, BundleAnswer, InstructionAck, InstructionHeader, NodeFrame, NodeStream,
    ReplyOutcome,
};
use wire::handshake::{Challenge, Proof, Refusal};
use wire::message::{ErrorCode, MessageError};
use wire::*;

pub fn metadata() -> Metadata {
    Metadata {
        run_id: RunId(0x1122_3344_5566_7788),
        message_id: MessageId(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10),
        src_node_id: NodeId::SERVER,
        dst_node_id: NodeId(0xdead_beef),
        reply_to: None,
        group_id: "3".into(),
        ttl_ms: 43_200_000,
        message_type: MessageType::TRAIN,
        created_at_ms: 1_700_000_000_000,
    }
}

pub fn content() -> RecordDict {
    let arrays = ArrayRecord::new()
        .with(
            "conv1.weight",
            Array::from_f32(vec![2, 3], &[0.5, -1.0, 2.0, 3.5, -0.25, 8.0]).unwrap(),
        )
        .with("conv1.bias", Array::from_f32(vec![2], &[1.0, 2.0]).unwrap())
        .with(
            "steps",
            Array {
                dtype: DType::I64,
                shape: vec![],
                data: 7i64.to_le_bytes().to_vec(),
                serialised: None,
            },
        )
        .with(
            "legacy",
            Array::serialised(
                Serialised {
                    dtype: String::new(),
                    shape: vec![],
                    stype: "numpy.ndarray".into(),
                },
                vec![0x93, b'N', b'U', b'M'],
            ),
        );
    let metrics = MetricRecord::new()
        .with("num-examples", MetricValue::Int(128))
        .with("train_loss", MetricValue::Float(0.75))
        .with("per-class", MetricValue::FloatList(vec![0.1, 0.9]))
        .with("counts", MetricValue::IntList(vec![1, 2, 3]))
        .with("huge", MetricValue::UInt(u64::MAX))
        .with("huge counts", MetricValue::UIntList(vec![1, u64::MAX]));
    let config = ConfigRecord::new()
        .with("server-round", ConfigValue::Int(3))
        .with("learning-rate", ConfigValue::Float(0.01))
        .with("evaluate", ConfigValue::Bool(true))
        .with("dataset", ConfigValue::Str("cifar10".into()))
        .with("blob", ConfigValue::Bytes(vec![0, 255]))
        .with("huge", ConfigValue::UInt(u64::MAX))
        .with("ints", ConfigValue::IntList(vec![-1, 2]))
        .with("huge ints", ConfigValue::UIntList(vec![0, u64::MAX]))
        .with("floats", ConfigValue::FloatList(vec![0.5]))
        .with("flags", ConfigValue::BoolList(vec![]))
        .with("names", ConfigValue::StrList(vec!["a".into(), "ü".into()]))
        .with("blobs", ConfigValue::BytesList(vec![vec![], vec![1]]));
    RecordDict::new()
        .with("arrays", Record::Arrays(arrays))
        .with("metrics", Record::Metrics(metrics))
        .with("config", Record::Config(config))
}

pub fn message() -> Message {
    Message {
        metadata: metadata(),
        body: MessageBody::Content(content()),
    }
}

pub fn error_message() -> Message {
    let mut metadata = metadata();
    metadata.reply_to = Some(MessageId(42));
    metadata.message_type = MessageType::new("evaluate.holdout").unwrap();
    Message {
        metadata,
        body: MessageBody::Error(MessageError {
            code: ErrorCode::NodeUnavailable,
            reason: "node went offline".into(),
        }),
    }
}

pub fn node_info() -> NodeInfo {
    NodeInfo {
        node_id: NodeId(0xdead_beef),
        owner: "alice".into(),
        status: NodeStatus::Online,
        key_fingerprint: "SHA256:abc".into(),
        registered_at_ms: 1_700_000_000_000,
        online_at_ms: Some(1_700_000_001_000),
        offline_at_ms: None,
        unregistered_at_ms: None,
        status_changed_at_ms: 1_700_000_001_000,
    }
}

pub fn node_frames() -> Vec<(&'static str, NodeFrame)> {
    vec![
        ("node_hello", NodeFrame::Hello { version: 1 }),
        (
            "node_proof",
            NodeFrame::Proof(Proof {
                signature: vec![0x30, 0x44, 1, 2, 3],
            }),
        ),
        ("node_heartbeat", NodeFrame::Heartbeat { seq: 300 }),
        ("node_goodbye", NodeFrame::Goodbye),
    ]
}

pub fn broker_frames() -> Vec<(&'static str, BrokerFrame)> {
    vec![
        (
            "broker_challenge",
            BrokerFrame::Challenge(Challenge { nonce: [7; 32] }),
        ),
        (
            "broker_welcome",
            BrokerFrame::Welcome {
                node_id: NodeId(0xdead_beef),
                heartbeat_interval_ms: 5000,
            },
        ),
        ("broker_refused", BrokerFrame::Refused(Refusal::UnknownKey)),
        (
            "broker_heartbeat_ack",
            BrokerFrame::HeartbeatAck { seq: 300 },
        ),
        (
            "broker_run_stopped",
            BrokerFrame::RunStopped { run_id: RunId(5) },
        ),
    ]
}

pub fn instruction_ack() -> InstructionAck {
    InstructionAck {
        message_id: MessageId(99),
    }
}

pub fn reply_outcomes() -> Vec<(&'static str, ReplyOutcome)> {
    vec![
        ("reply_accepted", ReplyOutcome::Accepted),
        (
            "reply_rejected",
            ReplyOutcome::Rejected("wrong node".into()),
        ),
    ]
}

pub fn operator_frames() -> Vec<(&'static str, OperatorFrame)> {
    vec![
        ("operator_hello", OperatorFrame::Hello { version: 1 }),
        (
            "operator_proof",
            OperatorFrame::Proof(Proof {
                signature: vec![9; 4],
            }),
        ),
        (
            "operator_register",
            OperatorFrame::Request(ControlRequest::RegisterNode {
                public_key: "ecdsa-sha2-nistp256 AAAA node1".into(),
            }),
        ),
        (
            "operator_unregister",
            OperatorFrame::Request(ControlRequest::UnregisterNode {
                node_id: NodeId(77),
            }),
        ),
        (
            "operator_list",
            OperatorFrame::Request(ControlRequest::ListNodes {
                include_unregistered: true,
            }),
        ),
        (
            "operator_start_run",
            OperatorFrame::Request(ControlRequest::StartRun {
                app_name: "fedavg-cnn".into(),
                app_version: "1.0.0".into(),
                config: ConfigRecord::new().with("num-server-rounds", ConfigValue::Int(3)),
            }),
        ),
        (
            "operator_list_runs",
            OperatorFrame::Request(ControlRequest::ListRuns {
                run_id: Some(RunId(5)),
            }),
        ),
        (
            "operator_stop_run",
            OperatorFrame::Request(ControlRequest::StopRun { run_id: RunId(5) }),
        ),
        (
            "operator_log",
            OperatorFrame::Request(ControlRequest::Log {
                run_id: RunId(5),
                after: 3,
                follow: true,
            }),
        ),
        (
            "operator_pull",
            OperatorFrame::Request(ControlRequest::PullArtifacts { run_id: RunId(5) }),
        ),
        (
            "operator_offer_bundle",
            OperatorFrame::Request(ControlRequest::OfferBundle {
                hash: BundleHash([0xAB; 32]),
                size: 10_240,
                signatures: vec![signature()],
            }),
        ),
        (
            "operator_start_bundled_run",
            OperatorFrame::Request(ControlRequest::StartBundledRun {
                bundle: BundleHash([0xAB; 32]),
                config: ConfigRecord::new().with("num-server-rounds", ConfigValue::Int(3)),
            }),
        ),
    ]
}

pub fn run_info() -> RunInfo {
    RunInfo {
        run_id: RunId(5),
        app_name: "fedavg-cnn".into(),
        app_version: "1.0.0".into(),
        config: ConfigRecord::new().with("learning-rate", ConfigValue::Float(0.01)),
        status: RunStatus::Completed,
        details: String::new(),
        owner: "alice".into(),
        pending_at_ms: 1_700_000_000_000,
        starting_at_ms: Some(1_700_000_000_100),
        running_at_ms: Some(1_700_000_000_200),
        finished_at_ms: Some(1_700_000_060_000),
        bundle: Some(BundleHash([0xAB; 32])),
    }
}

pub fn control_frames() -> Vec<(&'static str, ControlFrame)> {
    vec![
        (
            "control_challenge",
            ControlFrame::Challenge(Challenge { nonce: [1; 32] }),
        ),
        (
            "control_welcome",
            ControlFrame::Welcome {
                operator: "alice".into(),
            },
        ),
        (
            "control_refused",
            ControlFrame::Refused(Refusal::NotOperator),
        ),
        (
            "control_registered",
            ControlFrame::Response(ControlResponse::NodeRegistered {
                node_id: NodeId(77),
            }),
        ),
        (
            "control_unregistered",
            ControlFrame::Response(ControlResponse::NodeUnregistered {
                node_id: NodeId(77),
            }),
        ),
        (
            "control_nodes",
            ControlFrame::Response(ControlResponse::Nodes(vec![node_info()])),
        ),
        (
            "control_error",
            ControlFrame::Response(ControlResponse::Error(ControlError::KeyInUse)),
        ),
        (
            "control_run_started",
            ControlFrame::Response(ControlResponse::RunStarted { run_id: RunId(5) }),
        ),
        (
            "control_runs",
            ControlFrame::Response(ControlResponse::Runs(vec![run_info()])),
        ),
        (
            "control_run_stopped",
            ControlFrame::Response(ControlResponse::RunStopped { run_id: RunId(5) }),
        ),
        (
            "control_log",
            ControlFrame::Response(ControlResponse::Log {
                lines: vec![LogLine {
                    index: 0,
                    at_ms: 1_700_000_000_000,
                    text: "[ROUND 1/3]".into(),
                }],
                finished: Some(RunStatus::Completed),
            }),
        ),
        (
            "control_artifacts",
            ControlFrame::Response(ControlResponse::Artifacts(vec![Artifact {
                name: "metrics.json".into(),
                bytes: b"{}".to_vec(),
            }])),
        ),
        (
            "control_bundle_wanted",
            ControlFrame::Response(ControlResponse::BundleWanted { wanted: true }),
        ),
        (
            "control_bundle_stored",
            ControlFrame::Response(ControlResponse::BundleStored {
                hash: BundleHash([0xAB; 32]),
            }),
        ),
        (
            "control_invalid_bundle",
            ControlFrame::Response(ControlResponse::Error(ControlError::InvalidBundle(
                "flwr.toml: the bundle has none at its root".into(),
            ))),
        ),
    ]
}

pub fn signature() -> wire::bundle::BundleSignature {
    wire::bundle::BundleSignature {
        public_key: vec![0x30; 91],
        signature: vec![0x30; 70],
    }
}

pub fn node_streams() -> Vec<(&'static str, NodeStream)> {
    vec![
        ("node_stream_reply", NodeStream::Reply),
        (
            "node_stream_fetch_bundle",
            NodeStream::FetchBundle {
                hash: BundleHash([0xCD; 32]),
            },
        ),
        (
            "node_stream_fetch_signatures",
            NodeStream::FetchSignatures {
                hash: BundleHash([0xCD; 32]),
            },
        ),
    ]
}

pub fn bundle_answers() -> Vec<(&'static str, BundleAnswer)> {
    vec![
        (
            "bundle_found",
            BundleAnswer::Found {
                size: 10_240,
                signatures: vec![signature()],
            },
        ),
        (
            "bundle_signatures",
            BundleAnswer::Signatures(vec![signature()]),
        ),
        (
            "bundle_refused",
            BundleAnswer::Refused("no unfinished run uses it".into()),
        ),
    ]
}

pub fn instruction_header() -> InstructionHeader {
    InstructionHeader {
        app_name: "fedavg-cnn".into(),
        app_version: "1.0.0".into(),
        run_config: ConfigRecord::new().with("batch-size", ConfigValue::Int(32)),
        bundle: Some(BundleHash([0xCD; 32])),
    }
}

pub fn app_hello() -> wire::clientappio::AppHello {
    wire::clientappio::AppHello {
        version: wire::clientappio::CLIENTAPPIO_VERSION,
        token: std::array::from_fn(|i| i as u8),
    }
}

pub fn app_job() -> wire::clientappio::AppJob {
    wire::clientappio::AppJob {
        node_id: wire::NodeId(0x0102_0304_0506_0708),
        node_config: ConfigRecord::new().with("partition-id", ConfigValue::Int(1)),
        header: instruction_header(),
    }
}

/// A message head announcing one f32 array `w` of `len` elements and carrying none of its bytes.
pub fn head_of_one_f32_array(len: u64) -> Message {
    Message {
        metadata: metadata(),
        body: wire::MessageBody::Content(RecordDict::new().with(
            "arrays",
            wire::Record::Arrays(wire::ArrayRecord::new().with(
                "w",
                wire::Array {
                    dtype: wire::DType::F32,
                    shape: vec![len],
                    data: Vec::new(),
                    serialised: None,
                },
            )),
        )),
    }
}
