//! A `flwr-serverapp` task driven call by call as Flower's `flwr-serverapp` drives it: pushing
//! instructions and their objects, pulling replies and their objects, confirming them, pushing
//! its output. The federation here records what the task hands it; the whole path with Flower's
//! own program and real nodes is in the e2e tests.

#![allow(clippy::unwrap_used)]

use flower_runtime::objects::{Body, Deflated, deflate, inflate};
use flower_runtime::proto;
use flower_runtime::server::Endpoint;
use flower_runtime::serverapp::{Federation, Liveness, Outgoing, ServerAppTask};
use flower_runtime::tasks::{Task, TaskInput};
use prost::Message as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use wire::message::{ErrorCode, MessageError, MessageType, Metadata, now_ms};
use wire::records::{Array, ConfigRecord, ConfigValue, Record, RecordDict};
use wire::{Message, MessageBody, MessageId, NodeId, RunId};

const RUN: u64 = 77;

#[derive(Default)]
struct Recorded {
    sent: Mutex<Vec<Outgoing>>,
    logs: Mutex<Vec<String>>,
}

impl Federation for Recorded {
    fn node_ids(&self) -> Result<Vec<u64>, String> {
        Ok(vec![10, 11])
    }

    fn send(&self, _task: Arc<ServerAppTask>, instructions: Vec<Outgoing>) {
        self.sent.lock().unwrap().extend(instructions);
    }

    fn log(&self, lines: Vec<String>) {
        self.logs.lock().unwrap().extend(lines);
    }
}

fn task() -> (Arc<ServerAppTask>, Arc<Recorded>) {
    let federation = Arc::new(Recorded::default());
    let input = TaskInput {
        task_id: 1,
        context: proto::Context::default(),
        run: proto::Run {
            run_id: RUN,
            ..proto::Run::default()
        },
        fab: proto::Fab::default(),
    };
    let task = ServerAppTask::new(input, federation.clone(), 1 << 30);
    call::<proto::PullTaskInputResponse>(
        &task,
        Endpoint::PullTaskInput,
        &proto::PullTaskInputRequest {},
    );
    (task, federation)
}

fn call<R: prost::Message + Default>(
    task: &ServerAppTask,
    endpoint: Endpoint,
    request: &impl prost::Message,
) -> R {
    let answer = task.answer(endpoint, &request.encode_to_vec()).unwrap();
    R::decode(answer.as_slice()).unwrap()
}

/// A reply from node 10 carrying `body`, as the federation hands one to the task.
fn reply_from_node_10(body: MessageBody) -> Message {
    Message {
        metadata: Metadata {
            run_id: RunId(RUN),
            message_id: MessageId::random(),
            src_node_id: NodeId(10),
            dst_node_id: NodeId::SERVER,
            reply_to: Some(MessageId::random()),
            group_id: "1".into(),
            ttl_ms: 60_000,
            message_type: MessageType::TRAIN,
            created_at_ms: now_ms(),
        },
        body,
    }
}

fn records(values: &[f32]) -> RecordDict {
    let arrays = [(
        "w".to_string(),
        Array::from_f32(vec![values.len() as u64], values).unwrap(),
    )];
    RecordDict::new()
        .with("arrays", Record::Arrays(arrays.into_iter().collect()))
        .with(
            "config",
            Record::Config(ConfigRecord::new().with("server-round", ConfigValue::Int(1))),
        )
}

fn instruction_metadata(dst: u64) -> proto::Metadata {
    proto::Metadata {
        run_id: RUN,
        src_node_id: 1,
        dst_node_id: dst,
        group_id: "1".into(),
        ttl: 600.0,
        message_type: "train".into(),
        created_at: now_ms() as f64 / 1000.0,
        ..proto::Metadata::default()
    }
}

/// An instruction as the app pushes it: the message (its id the tree's root) and its objects.
fn instruction(dst: u64, content: &RecordDict) -> (proto::Message, Deflated) {
    let mut metadata = instruction_metadata(dst);
    let deflated = deflate(&metadata, &Body::Content(content.clone())).unwrap();
    metadata.message_id = deflated.tree.object_id.clone();
    let message = proto::Message {
        metadata: Some(metadata),
        content: Some(proto::RecordDict::default()),
        error: None,
    };
    (message, deflated)
}

fn push(
    task: &ServerAppTask,
    messages: &[(proto::Message, Deflated)],
) -> proto::PushAppMessagesResponse {
    call(
        task,
        Endpoint::PushMessages,
        &proto::PushAppMessagesRequest {
            messages_list: messages.iter().map(|(m, _)| m.clone()).collect(),
            message_object_trees: messages.iter().map(|(_, d)| d.tree.clone()).collect(),
        },
    )
}

fn push_objects(
    task: &ServerAppTask,
    response: &proto::PushAppMessagesResponse,
    objects: &HashMap<String, Vec<u8>>,
) {
    for id in &response.objects_to_push {
        let stored: proto::PushObjectResponse = call(
            task,
            Endpoint::PushObject,
            &proto::PushObjectRequest {
                object_id: id.clone(),
                object_content: objects[id].clone(),
                session_id: response.session_id.clone(),
                run_id: RUN,
                ..proto::PushObjectRequest::default()
            },
        );
        assert!(stored.stored, "{id} stored");
    }
}

fn objects_of(messages: &[(proto::Message, Deflated)]) -> HashMap<String, Vec<u8>> {
    messages
        .iter()
        .flat_map(|(_, d)| d.objects.iter().map(|o| (o.id.clone(), o.bytes.clone())))
        .collect()
}

#[test]
fn instructions_go_out_once_whole_sharing_their_records_and_replies_come_back_as_objects() {
    let (task, federation) = task();
    let content = records(&[1.0, 2.0]);
    let messages = [instruction(10, &content), instruction(11, &content)];
    let response = push(&task, &messages);
    assert_eq!(response.message_ids.len(), 2);
    // The records are shared: their objects are asked for once.
    let objects = objects_of(&messages);
    assert_eq!(response.objects_to_push.len(), objects.len());
    assert!(
        federation.sent.lock().unwrap().is_empty(),
        "nothing goes before its objects"
    );
    push_objects(&task, &response, &objects);
    let sent = federation.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 2);
    assert!(
        Arc::ptr_eq(&sent[0].content, &sent[1].content),
        "one copy of the records"
    );
    assert_eq!(*sent[0].content, content);

    // Node 10 answers; the app pulls the reply and its objects, then confirms it.
    let reply = reply_from_node_10(MessageBody::Content(records(&[3.0, 4.0])));
    let first = &sent[0].flower_id;
    task.deliver(first, &reply);
    task.deliver(first, &reply);
    let pulled: proto::PullAppMessagesResponse = call(
        &task,
        Endpoint::PullMessages,
        &proto::PullAppMessagesRequest {
            message_ids: vec![first.clone(), sent[1].flower_id.clone()],
        },
    );
    assert_eq!(pulled.messages_list.len(), 1, "one reply, once");
    let tree = &pulled.message_object_trees[0];
    let mut ids = vec![tree.object_id.clone()];
    let mut stack = tree.children.clone();
    while let Some(child) = stack.pop() {
        ids.push(child.object_id.clone());
        stack.extend(child.children);
    }
    let mut reply_objects = HashMap::new();
    for id in &ids {
        let object: proto::PullObjectResponse = call(
            &task,
            Endpoint::PullObject,
            &proto::PullObjectRequest {
                object_id: id.clone(),
                ..proto::PullObjectRequest::default()
            },
        );
        assert!(object.object_found && object.object_available);
        reply_objects.insert(id.clone(), object.object_content);
    }
    let inflated = inflate(&tree.object_id, &reply_objects, u64::MAX).unwrap();
    assert_eq!(inflated.metadata.reply_to_message_id, *first);
    assert_eq!(inflated.metadata.src_node_id, 10);
    assert_eq!(inflated.body, Body::Content(records(&[3.0, 4.0])));
    let _: proto::ConfirmMessageReceivedResponse = call(
        &task,
        Endpoint::ConfirmMessageReceived,
        &proto::ConfirmMessageReceivedRequest {
            message_object_id: tree.object_id.clone(),
            ..proto::ConfirmMessageReceivedRequest::default()
        },
    );
    let gone: proto::PullObjectResponse = call(
        &task,
        Endpoint::PullObject,
        &proto::PullObjectRequest {
            object_id: tree.object_id.clone(),
            ..proto::PullObjectRequest::default()
        },
    );
    assert!(
        !gone.object_found,
        "a confirmed reply's objects are dropped"
    );
}

#[test]
fn an_instruction_whose_objects_say_other_than_its_message_is_answered_with_an_error() {
    let (task, federation) = task();
    let (mut message, deflated) = instruction(10, &records(&[1.0]));
    // The message says node 11; its objects (whose root id it carries) say node 10.
    message.metadata.as_mut().unwrap().dst_node_id = 11;
    let messages = [(message, deflated)];
    let response = push(&task, &messages);
    push_objects(&task, &response, &objects_of(&messages));
    assert!(federation.sent.lock().unwrap().is_empty(), "not sent");
    let id = response.message_ids[0].clone();
    let pulled: proto::PullAppMessagesResponse = call(
        &task,
        Endpoint::PullMessages,
        &proto::PullAppMessagesRequest {
            message_ids: vec![id],
        },
    );
    let metadata = pulled.messages_list[0].metadata.as_ref().unwrap();
    assert_eq!(metadata.message_type, "system");
}

#[test]
fn an_instruction_beyond_the_bounds_is_answered_with_an_error_naming_the_bound() {
    let (task, federation) = task();
    let long_list = wire::ConfigValue::BoolList(vec![true; wire::records::MAX_LIST_LEN + 1]);
    let content = RecordDict::new().with(
        "config",
        Record::Config(wire::ConfigRecord::new().with("flags", long_list)),
    );
    let messages = [instruction(10, &content)];
    let response = push(&task, &messages);
    push_objects(&task, &response, &objects_of(&messages));
    assert!(federation.sent.lock().unwrap().is_empty(), "not sent");
    let pulled: proto::PullAppMessagesResponse = call(
        &task,
        Endpoint::PullMessages,
        &proto::PullAppMessagesRequest {
            message_ids: response.message_ids.clone(),
        },
    );
    let error = pulled_error(&task, &pulled);
    assert!(
        error
            .reason
            .contains("a list of 1048577 elements (at most 1048576)"),
        "{}",
        error.reason
    );
}

/// The error of the first reply pulled, read back from its object.
fn pulled_error(task: &ServerAppTask, pulled: &proto::PullAppMessagesResponse) -> proto::Error {
    let tree = &pulled.message_object_trees[0];
    let object: proto::PullObjectResponse = call(
        task,
        Endpoint::PullObject,
        &proto::PullObjectRequest {
            object_id: tree.object_id.clone(),
            ..proto::PullObjectRequest::default()
        },
    );
    let objects = HashMap::from([(tree.object_id.clone(), object.object_content)]);
    let inflated = inflate(&tree.object_id, &objects, u64::MAX).unwrap();
    let Body::Error(error) = inflated.body else {
        panic!("not an error");
    };
    error
}

#[test]
fn a_serverapp_that_floods_instructions_is_refused_and_loses_nothing_else() {
    let (task, federation) = task();
    let (message, deflated) = instruction(10, &records(&[1.0]));
    let count = flower_runtime::serverapp::MAX_PUSHING + 1;
    let flood = proto::PushAppMessagesRequest {
        messages_list: vec![message; count],
        message_object_trees: vec![deflated.tree; count],
    };
    let error = task
        .answer(Endpoint::PushMessages, &flood.encode_to_vec())
        .unwrap_err();
    assert_eq!(
        (error.status, error.detail.as_str()),
        (503, "Too many instructions in flight.")
    );
    // Nothing of the flood is kept, and the app's next push goes out as usual.
    let messages = [instruction(11, &records(&[2.0]))];
    let response = push(&task, &messages);
    push_objects(&task, &response, &objects_of(&messages));
    let sent = federation.sent.lock().unwrap();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].dst_node_id, 11);
}

#[test]
fn instructions_the_app_may_not_send_are_refused_one_by_one() {
    let (task, federation) = task();
    let content = records(&[1.0]);
    let mut from_a_node = instruction(10, &content);
    from_a_node.0.metadata.as_mut().unwrap().src_node_id = 10;
    let mut other_run = instruction(10, &content);
    other_run.0.metadata.as_mut().unwrap().run_id = RUN + 1;
    let mut not_its_root = instruction(10, &content);
    not_its_root.0.metadata.as_mut().unwrap().message_id = "ab".repeat(32);
    let good = instruction(11, &content);
    let messages = [from_a_node, other_run, not_its_root, good];
    let response = push(&task, &messages);
    assert_eq!(response.message_ids[..3], ["", "", ""]);
    assert_eq!(response.message_ids[3], messages[3].1.tree.object_id);
    push_objects(&task, &response, &objects_of(&messages));
    let sent = federation.sent.lock().unwrap();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].dst_node_id, 11);
}

#[test]
fn objects_are_taken_only_as_asked_and_as_named() {
    let (task, federation) = task();
    let messages = [instruction(10, &records(&[1.0, 2.0]))];
    let response = push(&task, &messages);
    let objects = objects_of(&messages);
    let id = &response.objects_to_push[0];
    let attempt = |object_id: &str, content: &[u8], session: &str| -> bool {
        let stored: proto::PushObjectResponse = call(
            &task,
            Endpoint::PushObject,
            &proto::PushObjectRequest {
                object_id: object_id.to_string(),
                object_content: content.to_vec(),
                session_id: session.to_string(),
                ..proto::PushObjectRequest::default()
            },
        );
        stored.stored
    };
    assert!(
        !attempt(id, b"forged", &response.session_id),
        "bytes that are not the id's"
    );
    assert!(
        !attempt(id, &objects[id], "another-session"),
        "another session"
    );
    let unasked = flower_runtime::objects::object_id(b"unasked");
    assert!(
        !attempt(&unasked, b"unasked", &response.session_id),
        "an object not asked for"
    );
    assert!(federation.sent.lock().unwrap().is_empty());
    push_objects(&task, &response, &objects);
    assert_eq!(federation.sent.lock().unwrap().len(), 1);
}

#[test]
fn a_request_refused_halfway_leaves_nothing_behind() {
    let (task, federation) = task();
    let good = instruction(10, &records(&[1.0]));
    let mut bad = instruction(11, &records(&[2.0]));
    bad.1.tree.children[0].object_id = "not an id".into();
    let request = proto::PushAppMessagesRequest {
        messages_list: vec![good.0.clone(), bad.0.clone()],
        message_object_trees: vec![good.1.tree.clone(), bad.1.tree.clone()],
    };
    assert!(
        task.answer(Endpoint::PushMessages, &request.encode_to_vec())
            .is_err()
    );
    // The good one was not kept half-registered: pushed again, it goes out.
    let response = push(&task, std::slice::from_ref(&good));
    push_objects(&task, &response, &objects_of(std::slice::from_ref(&good)));
    assert_eq!(federation.sent.lock().unwrap().len(), 1);
}

#[test]
fn the_apps_output_reaches_the_log_as_lines_without_colours_and_bounded() {
    let (task, federation) = task();
    let push_logs = |fragments: Vec<String>| {
        let _: proto::PushLogsResponse = call(
            &task,
            Endpoint::PushLogs,
            &proto::PushLogsRequest {
                logs: fragments,
                ..proto::PushLogsRequest::default()
            },
        );
    };
    push_logs(vec![
        "\u{1b}[92mINFO \u{1b}[0m: [ROUND ".into(),
        "1/1]\npart".into(),
    ]);
    assert_eq!(*federation.logs.lock().unwrap(), ["INFO : [ROUND 1/1]"]);
    push_logs(vec!["ial\n\n".into(), "x\n".repeat(5000)]);
    let logs = federation.logs.lock().unwrap().clone();
    assert_eq!(logs[1], "partial", "a line split across pushes is one line");
    assert_eq!(logs.len(), 1 + 1000 + 1);
    assert!(
        logs.last().unwrap().contains("4001 more lines"),
        "{:?}",
        logs.last()
    );
    // The last words without a newline are logged when the app ends.
    push_logs(vec!["bye".into()]);
    let _: proto::PushTaskOutputResponse = call(
        &task,
        Endpoint::PushTaskOutput,
        &proto::PushTaskOutputRequest {
            sub_status: "completed".into(),
            ..proto::PushTaskOutputRequest::default()
        },
    );
    assert_eq!(federation.logs.lock().unwrap().last().unwrap(), "bye");
    assert!(
        task.answer(Endpoint::SendTaskHeartbeat, &[]).is_err(),
        "the token is done"
    );
}

#[test]
fn an_error_reply_reaches_the_app_with_flowers_code() {
    let (task, federation) = task();
    let messages = [instruction(10, &records(&[1.0]))];
    let response = push(&task, &messages);
    push_objects(&task, &response, &objects_of(&messages));
    let id = federation.sent.lock().unwrap()[0].flower_id.clone();
    let reply = reply_from_node_10(MessageBody::Error(MessageError {
        code: ErrorCode::NodeUnavailable,
        reason: "node 10 went offline".into(),
    }));
    task.deliver(&id, &reply);
    let pulled: proto::PullAppMessagesResponse = call(
        &task,
        Endpoint::PullMessages,
        &proto::PullAppMessagesRequest {
            message_ids: vec![id],
        },
    );
    let error = pulled_error(&task, &pulled);
    assert_eq!(error.code, flower_runtime::messages::code::NODE_UNAVAILABLE);
}

#[test]
fn an_instruction_listed_twice_in_one_push_goes_once() {
    let (task, federation) = task();
    let content = records(&[1.0]);
    let first = [instruction(10, &content)];
    let response = push(&task, &first);
    // Another instruction still being pushed keeps the pushed objects around.
    let other = [instruction(11, &records(&[2.0]))];
    push(&task, &other);
    push_objects(&task, &response, &objects_of(&first));
    assert_eq!(federation.sent.lock().unwrap().len(), 1);
    // The first one's reply is pulled: it is neither outstanding nor waiting.
    let id = federation.sent.lock().unwrap()[0].flower_id.clone();
    let reply = reply_from_node_10(MessageBody::Content(content.clone()));
    task.deliver(&id, &reply);
    let _: proto::PullAppMessagesResponse = call(
        &task,
        Endpoint::PullMessages,
        &proto::PullAppMessagesRequest {
            message_ids: vec![id],
        },
    );
    // The same instruction twice in one request, its objects all held: sent once.
    let twice = [first[0].clone(), first[0].clone()];
    push(&task, &twice);
    assert_eq!(federation.sent.lock().unwrap().len(), 2);
}

#[test]
fn heartbeats_alone_do_not_count_as_taking_the_input() {
    let federation = Arc::new(Recorded::default());
    let input = TaskInput {
        task_id: 1,
        context: proto::Context::default(),
        run: proto::Run::default(),
        fab: proto::Fab::default(),
    };
    let task = ServerAppTask::new(input, federation, 1 << 20);
    let patience = std::time::Duration::from_millis(200);
    assert_eq!(task.liveness(patience), Liveness::Alive);
    for _ in 0..5 {
        std::thread::sleep(std::time::Duration::from_millis(60));
        let _: proto::SendTaskHeartbeatResponse = call(
            &task,
            Endpoint::SendTaskHeartbeat,
            &proto::SendTaskHeartbeatRequest {},
        );
    }
    assert_eq!(task.liveness(patience), Liveness::NeverStarted);
}
