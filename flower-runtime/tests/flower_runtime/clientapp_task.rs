//! A `flwr-clientapp` task served over real HTTP, driven the way `flwr-clientapp` 1.42 drives
//! it: input, instruction, objects, confirmation, reply, reply objects, output. And what the
//! runtime refuses: another token, another content type or Flower version, an oversized body, a
//! second start, an object that is not the one asked for, a call after the end.

#![allow(clippy::unwrap_used)]

use flower_runtime::clientapp::ClientAppTask;
use flower_runtime::objects::{Body, Deflated, ObjectError, deflate, inflate};
use flower_runtime::proto;
use flower_runtime::server::{MAX_BODY, serve};
use flower_runtime::tasks::{TaskInput, Tasks};
use prost::Message as _;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;
use wire::records::{Array, ArrayRecord, ConfigRecord, ConfigValue, Record, RecordDict};

const RUN: u64 = (1 << 63) + 11;

/// One HTTP/1.1 exchange: the status and the body.
async fn post(
    address: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    // A server may answer before reading all of a body it refuses.
    let _ = stream.write_all(body).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {:?}", String::from_utf8_lossy(&response)));
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head[9..12].parse().unwrap();
    (status, response[split + 4..].to_vec())
}

/// What `flwr-clientapp` sends with every call.
fn app_headers(token: &str) -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "application/protobuf".into()),
        ("flwr-package-name", "flwr".into()),
        ("flwr-package-version", "1.42.0".into()),
        ("flwr-component-name", "flwr-clientapp".into()),
        ("flwr-task-token", token.into()),
    ]
}

struct App {
    address: SocketAddr,
    token: String,
}

impl App {
    async fn call<R: prost::Message + Default>(
        &self,
        name: &str,
        request: &impl prost::Message,
    ) -> R {
        let (status, body) = self.raw(name, &request.encode_to_vec()).await;
        assert_eq!(status, 200, "{name}: {}", String::from_utf8_lossy(&body));
        R::decode(body.as_slice()).unwrap()
    }

    async fn raw(&self, name: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let headers = app_headers(&self.token);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        post(self.address, &format!("/v1/runtime/{name}"), &headers, body).await
    }
}

fn instruction() -> (proto::Metadata, RecordDict) {
    let arrays: ArrayRecord = [(
        "w".to_string(),
        Array::from_f32(vec![2], &[1.0, 2.0]).unwrap(),
    )]
    .into_iter()
    .collect();
    let content = RecordDict::new()
        .with("arrays", Record::Arrays(arrays))
        .with(
            "config",
            Record::Config(ConfigRecord::new().with("server-round", ConfigValue::Int(1))),
        );
    let metadata = proto::Metadata {
        run_id: RUN,
        src_node_id: 1,
        dst_node_id: 42,
        group_id: "1".into(),
        ttl: 600.0,
        message_type: "train".into(),
        created_at: 1_767_225_600.0,
        ..proto::Metadata::default()
    };
    (metadata, content)
}

async fn start() -> (App, Arc<ClientAppTask>, Arc<Tasks>, CancellationToken) {
    start_with_limit(1 << 20).await
}

async fn start_with_limit(
    max_reply_bytes: u64,
) -> (App, Arc<ClientAppTask>, Arc<Tasks>, CancellationToken) {
    let (metadata, content) = instruction();
    let deflated = deflate(&metadata, &Body::Content(content)).unwrap();
    let input = TaskInput {
        task_id: 5,
        context: proto::Context {
            run_id: RUN,
            node_id: 42,
            ..proto::Context::default()
        },
        run: proto::Run {
            run_id: RUN,
            fab_hash: "ab".repeat(32),
            ..proto::Run::default()
        },
        fab: proto::Fab {
            hash_str: "ab".repeat(32),
            content: b"PK".to_vec(),
            ..proto::Fab::default()
        },
    };
    let task = ClientAppTask::new(input, metadata, deflated, max_reply_bytes);
    let tasks = Arc::new(Tasks::default());
    let token = tasks.admit(task.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(serve(listener, tasks.clone(), shutdown.clone()));
    (App { address, token }, task, tasks, shutdown)
}

fn ids(tree: &proto::ObjectTree, out: &mut Vec<String>) {
    for child in &tree.children {
        ids(child, out);
    }
    out.push(tree.object_id.clone());
}

/// The instruction as the app takes it: input, message, every object, confirmation. Returns the
/// instruction's id and what it carried.
async fn take_instruction(app: &App) -> (String, RecordDict) {
    let input: proto::PullTaskInputResponse = app
        .call("pull-task-input", &proto::PullTaskInputRequest {})
        .await;
    assert_eq!((input.task_id, input.context.unwrap().node_id), (5, 42));
    assert_eq!(input.fab.unwrap().content, b"PK");
    let pulled: proto::PullAppMessagesResponse = app
        .call("pull-messages", &proto::PullAppMessagesRequest::default())
        .await;
    let tree = pulled.message_object_trees[0].clone();
    let instruction_id = tree.object_id.clone();
    let metadata = pulled.messages_list[0].metadata.as_ref().unwrap();
    assert_eq!(metadata.message_id, instruction_id);
    let mut wanted = Vec::new();
    ids(&tree, &mut wanted);
    let mut objects = HashMap::new();
    for id in wanted {
        let object: proto::PullObjectResponse = app.call("pull-object", &pull(&id)).await;
        assert!(object.object_found && object.object_available);
        objects.insert(id, object.object_content);
    }
    let received = inflate(&instruction_id, &objects, u64::MAX).unwrap();
    let Body::Content(content) = received.body else {
        panic!("an error where records belong");
    };
    let confirm = proto::ConfirmMessageReceivedRequest {
        message_object_id: instruction_id.clone(),
        ..proto::ConfirmMessageReceivedRequest::default()
    };
    let _: proto::ConfirmMessageReceivedResponse =
        app.call("confirm-message-received", &confirm).await;
    (instruction_id, content)
}

fn pull(id: &str) -> proto::PullObjectRequest {
    proto::PullObjectRequest {
        object_id: id.to_string(),
        ..proto::PullObjectRequest::default()
    }
}

/// A reply to `instruction_id`, as the app builds it: its metadata (with its id) and objects.
fn reply_to(instruction_id: &str, content: &RecordDict) -> (proto::Metadata, Deflated) {
    let mut metadata = proto::Metadata {
        run_id: RUN,
        src_node_id: 42,
        dst_node_id: 1,
        reply_to_message_id: instruction_id.to_string(),
        group_id: "1".into(),
        ttl: 500.0,
        message_type: "train".into(),
        created_at: 1_767_225_601.0,
        ..proto::Metadata::default()
    };
    let deflated = deflate(&metadata, &Body::Content(content.clone())).unwrap();
    metadata.message_id = deflated.tree.object_id.clone();
    (metadata, deflated)
}

fn push_request(
    metadata: &proto::Metadata,
    tree: &proto::ObjectTree,
) -> proto::PushAppMessagesRequest {
    proto::PushAppMessagesRequest {
        messages_list: vec![proto::Message {
            metadata: Some(metadata.clone()),
            content: Some(proto::RecordDict::default()),
            error: None,
        }],
        message_object_trees: vec![tree.clone()],
    }
}

fn object_request(session: &str, id: &str, bytes: &[u8]) -> proto::PushObjectRequest {
    proto::PushObjectRequest {
        object_id: id.to_string(),
        object_content: bytes.to_vec(),
        session_id: session.to_string(),
        ..proto::PushObjectRequest::default()
    }
}

/// Pushes the reply and all its objects; returns the push's answer.
async fn push_reply(
    app: &App,
    metadata: &proto::Metadata,
    reply: &Deflated,
) -> proto::PushAppMessagesResponse {
    let pushed: proto::PushAppMessagesResponse = app
        .call("push-messages", &push_request(metadata, &reply.tree))
        .await;
    assert_eq!(
        pushed.message_ids,
        std::slice::from_ref(&reply.tree.object_id)
    );
    assert_eq!(pushed.objects_to_push.len(), reply.objects.len());
    for object in &reply.objects {
        let request = object_request(&pushed.session_id, &object.id, &object.bytes);
        let stored: proto::PushObjectResponse = app.call("push-object", &request).await;
        assert!(stored.stored, "{}", object.id);
    }
    pushed
}

fn reply_content() -> RecordDict {
    RecordDict::new().with(
        "metrics",
        Record::Config(ConfigRecord::new().with("done", ConfigValue::Bool(true))),
    )
}

#[tokio::test]
async fn a_client_app_task_runs_from_input_to_reply_as_flwr_clientapp_drives_it() {
    let (app, task, _tasks, _shutdown) = start().await;
    // Heartbeats come before the input, and throughout.
    let beat: proto::SendTaskHeartbeatResponse = app
        .call("send-task-heartbeat", &proto::SendTaskHeartbeatRequest {})
        .await;
    assert!(beat.success);
    let (instruction_id, content) = take_instruction(&app).await;
    assert_eq!(content, instruction().1);
    let (metadata, reply) = reply_to(&instruction_id, &reply_content());
    // Before the reply is announced, and in another session, objects are refused.
    let early = object_request("", &reply.objects[0].id, &reply.objects[0].bytes);
    let stored: proto::PushObjectResponse = app.call("push-object", &early).await;
    assert!(!stored.stored);
    let pushed = push_reply(&app, &metadata, &reply).await;
    // A retried push gets the same answer.
    let again: proto::PushAppMessagesResponse = app
        .call("push-messages", &push_request(&metadata, &reply.tree))
        .await;
    assert_eq!(again, pushed);
    let output = proto::PushTaskOutputRequest {
        sub_status: "completed".into(),
        ..proto::PushTaskOutputRequest::default()
    };
    let _: proto::PushTaskOutputResponse = app.call("push-task-output", &output).await;
    let outcome = task.finished().await;
    assert_eq!(outcome.sub_status.as_deref(), Some("completed"));
    let reply = outcome.reply.unwrap().inflate(u64::MAX).unwrap();
    assert_eq!(reply.body, Body::Content(reply_content()));
    assert_eq!(reply.metadata, metadata);
    // The token ends with the task.
    let (status, _) = app.raw("send-task-heartbeat", b"").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn objects_that_are_not_the_replys_own_are_refused() {
    let (app, task, _tasks, _shutdown) = start_with_limit(4096).await;
    let (instruction_id, _) = take_instruction(&app).await;
    // A reply to another message.
    let (metadata, reply) = reply_to(&"e".repeat(64), &reply_content());
    let (status, _) = app
        .raw(
            "push-messages",
            &push_request(&metadata, &reply.tree).encode_to_vec(),
        )
        .await;
    assert_eq!(status, 400);
    // A reply over the size limit.
    let big = RecordDict::new().with(
        "arrays",
        Record::Arrays(
            [(
                "w".to_string(),
                Array::from_f32(vec![4096], &[1.0; 4096]).unwrap(),
            )]
            .into_iter()
            .collect(),
        ),
    );
    let (metadata, reply) = reply_to(&instruction_id, &big);
    let pushed: proto::PushAppMessagesResponse = app
        .call("push-messages", &push_request(&metadata, &reply.tree))
        .await;
    let mut refused = 0;
    for object in &reply.objects {
        let request = object_request(&pushed.session_id, &object.id, &object.bytes);
        let forged = object_request(&pushed.session_id, &object.id, b"forged");
        let other_session = object_request("0", &object.id, &object.bytes);
        for bad in [forged, other_session] {
            let stored: proto::PushObjectResponse = app.call("push-object", &bad).await;
            assert!(!stored.stored);
        }
        let stored: proto::PushObjectResponse = app.call("push-object", &request).await;
        refused += usize::from(!stored.stored);
    }
    assert!(refused > 0, "a reply beyond 4096 bytes was taken whole");
    // A second, different reply is refused too.
    let (other, other_reply) = reply_to(&instruction_id, &reply_content());
    let (status, _) = app
        .raw(
            "push-messages",
            &push_request(&other, &other_reply.tree).encode_to_vec(),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(task.abandon().reply, None);
}

#[tokio::test]
async fn a_reply_whose_objects_hold_other_metadata_is_not_taken() {
    let (app, task, _tasks, _shutdown) = start().await;
    let (instruction_id, _) = take_instruction(&app).await;
    // The objects say the reply goes elsewhere; the pushed message says what was checked.
    let (checked, _) = reply_to(&instruction_id, &reply_content());
    let mut forged_metadata = checked.clone();
    forged_metadata.dst_node_id = 99;
    let forged = deflate(&forged_metadata, &Body::Content(reply_content())).unwrap();
    let mut claimed = checked.clone();
    claimed.message_id = forged.tree.object_id.clone();
    push_reply(&app, &claimed, &forged).await;
    let reply = task.abandon().reply.unwrap();
    assert!(matches!(
        reply.inflate(u64::MAX),
        Err(ObjectError::Malformed { .. })
    ));
}

#[tokio::test]
async fn one_tasks_token_reaches_nothing_of_another_task() {
    let (app, _task, tasks, _shutdown) = start().await;
    let (instruction_id, _) = take_instruction(&app).await;
    let (metadata, content) = instruction();
    let other = ClientAppTask::new(
        TaskInput {
            task_id: 6,
            context: proto::Context::default(),
            run: proto::Run::default(),
            fab: proto::Fab::default(),
        },
        metadata,
        deflate(&proto::Metadata::default(), &Body::Content(content)).unwrap(),
        1 << 20,
    );
    let other = App {
        address: app.address,
        token: tasks.admit(other),
    };
    let _: proto::PullTaskInputResponse = other
        .call("pull-task-input", &proto::PullTaskInputRequest {})
        .await;
    let object: proto::PullObjectResponse = other.call("pull-object", &pull(&instruction_id)).await;
    assert!(!object.object_found);
}

#[tokio::test]
async fn an_abandoned_task_stops_answering_and_keeps_a_reply_that_arrived_whole() {
    let (app, task, _tasks, _shutdown) = start().await;
    let (instruction_id, _) = take_instruction(&app).await;
    let (metadata, reply) = reply_to(&instruction_id, &reply_content());
    push_reply(&app, &metadata, &reply).await;
    let outcome = task.abandon();
    assert_eq!(outcome.sub_status, None);
    let reply = outcome.reply.unwrap().inflate(u64::MAX).unwrap();
    assert_eq!(reply.body, Body::Content(reply_content()));
    assert_eq!(app.raw("send-task-heartbeat", b"").await.0, 401);
}

#[tokio::test]
async fn a_chunked_body_is_read_no_further_than_the_limit() {
    let (app, _task, _tasks, _shutdown) = start().await;
    let mut stream = tokio::net::TcpStream::connect(app.address).await.unwrap();
    let head = format!(
        "POST /v1/runtime/push-object HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\
         content-type: application/protobuf\r\nflwr-task-token: {}\r\n\
         transfer-encoding: chunked\r\n\r\n",
        app.token
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..(MAX_BODY >> 20) + 1 {
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(&chunk);
        framed.extend_from_slice(b"\r\n");
        if stream.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    assert!(
        response.starts_with(b"HTTP/1.1 413"),
        "{:?}",
        String::from_utf8_lossy(&response[..response.len().min(200)])
    );
}

#[tokio::test]
async fn a_body_is_not_waited_for_without_a_live_token() {
    let (app, _task, _tasks, _shutdown) = start().await;
    let mut stream = tokio::net::TcpStream::connect(app.address).await.unwrap();
    // Headers announcing a body that never comes: refused at once, not after the body timeout.
    let head = format!(
        "POST /v1/runtime/push-object HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\
         content-type: application/protobuf\r\nflwr-task-token: {}\r\ncontent-length: 1000\r\n\r\n",
        "f".repeat(64)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut response),
    );
    assert!(
        read.await.is_ok(),
        "the runtime waited for the body of a stranger"
    );
    assert!(
        response.starts_with(b"HTTP/1.1 401"),
        "{:?}",
        String::from_utf8_lossy(&response)
    );
}

#[tokio::test]
async fn the_runtime_refuses_what_flowers_own_refuses() {
    let (app, _task, _tasks, _shutdown) = start().await;
    let path = "/v1/runtime/send-task-heartbeat";
    let json_code = |body: &[u8]| -> u64 {
        serde_json::from_slice::<serde_json::Value>(body).unwrap()["code"]
            .as_u64()
            .unwrap()
    };
    // Another token.
    let stranger = App {
        address: app.address,
        token: "f".repeat(64),
    };
    let (status, body) = stranger.raw("send-task-heartbeat", b"").await;
    assert_eq!((status, json_code(&body)), (401, 1008));
    // No token, two tokens.
    let (status, _) = post(
        app.address,
        path,
        &[("content-type", "application/protobuf")],
        b"",
    )
    .await;
    assert_eq!(status, 401);
    let twice = [
        ("content-type", "application/protobuf"),
        ("flwr-task-token", app.token.as_str()),
        ("flwr-task-token", app.token.as_str()),
    ];
    assert_eq!(post(app.address, path, &twice, b"").await.0, 401);
    // Another content type.
    let json = [
        ("content-type", "application/json"),
        ("flwr-task-token", app.token.as_str()),
    ];
    let (status, body) = post(app.address, path, &json, b"{}").await;
    assert_eq!((status, json_code(&body)), (415, 1002));
    // Another Flower release, or an incomplete set of version headers.
    let old = [
        ("content-type", "application/protobuf"),
        ("flwr-task-token", app.token.as_str()),
        ("flwr-package-name", "flwr"),
        ("flwr-package-version", "1.41.0"),
        ("flwr-component-name", "flwr-clientapp"),
    ];
    let (status, body) = post(app.address, path, &old, b"").await;
    assert_eq!((status, json_code(&body)), (412, 1001));
    assert_eq!(post(app.address, path, &old[..3], b"").await.0, 412);
    // A body over the limit, refused by its declared length before any of it is sent.
    let mut stream = tokio::net::TcpStream::connect(app.address).await.unwrap();
    let request = format!(
        "POST /v1/runtime/push-object HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\
         content-type: application/protobuf\r\nflwr-task-token: {}\r\ncontent-length: {}\r\n\r\n",
        app.token,
        MAX_BODY + 1
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    assert!(
        response.starts_with(b"HTTP/1.1 413"),
        "{:?}",
        String::from_utf8_lossy(&response)
    );
    // Garbage where a protobuf belongs.
    let _: proto::PullTaskInputResponse = app
        .call("pull-task-input", &proto::PullTaskInputRequest {})
        .await;
    let (status, body) = app.raw("pull-object", b"\xff\xff\xff").await;
    assert_eq!((status, json_code(&body)), (400, 1003));
    // A second start.
    let (status, body) = app.raw("pull-task-input", b"").await;
    assert_eq!((status, json_code(&body)), (412, 3002));
    // Server-app calls.
    assert_eq!(app.raw("get-nodes", b"").await.0, 403);
    // A reply for another run.
    let wrong_run = proto::PushAppMessagesRequest {
        messages_list: vec![proto::Message {
            metadata: Some(proto::Metadata {
                run_id: 3,
                ..proto::Metadata::default()
            }),
            ..proto::Message::default()
        }],
        message_object_trees: vec![proto::ObjectTree::default()],
    };
    let (status, body) = app.raw("push-messages", &wrong_run.encode_to_vec()).await;
    assert_eq!((status, json_code(&body)), (403, 3014));
    // An unknown path.
    assert_eq!(app.raw("no-such-call", b"").await.0, 404);
}

/// Reads one HTTP/1.1 response with a `content-length` from `stream`, leaving it open; its status.
async fn read_response(stream: &mut tokio::net::TcpStream) -> u16 {
    let mut response = Vec::new();
    let mut byte = [0u8; 1];
    while !response.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).await.unwrap(),
            1,
            "connection closed"
        );
        response.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&response).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map(|value| value.trim().parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    head[9..12].parse().unwrap()
}

/// A heartbeat on an open connection, kept open.
async fn heartbeat_on(stream: &mut tokio::net::TcpStream, token: &str) -> u16 {
    let body = proto::SendTaskHeartbeatRequest {}.encode_to_vec();
    let mut request = format!(
        "POST /v1/runtime/send-task-heartbeat HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in app_headers(token) {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    read_response(stream).await
}

#[tokio::test]
async fn idle_local_connections_cannot_shut_the_apps_out() {
    use flower_runtime::server::MAX_CONNECTIONS;
    use std::time::Duration;
    let (app, _task, _tasks, _shutdown) = start().await;
    // The app's own connection, which has shown its token, stays open through what follows.
    let mut kept = tokio::net::TcpStream::connect(app.address).await.unwrap();
    assert_eq!(heartbeat_on(&mut kept, &app.token).await, 200);
    // Another local account fills every slot with connections that never send a byte, and
    // queues as many again behind them.
    let mut idle = Vec::new();
    for _ in 0..MAX_CONNECTIONS + 700 {
        idle.push(tokio::net::TcpStream::connect(app.address).await.unwrap());
    }
    // A fresh connection of the app's is answered at once, not after the idle ones time out.
    let input = tokio::time::timeout(
        Duration::from_secs(10),
        app.raw(
            "pull-task-input",
            &proto::PullTaskInputRequest::default().encode_to_vec(),
        ),
    )
    .await
    .expect("the app was shut out by idle connections");
    assert_eq!(input.0, 200, "{}", String::from_utf8_lossy(&input.1));
    assert_eq!(heartbeat_on(&mut kept, &app.token).await, 200);
    drop(idle);
}
