//! A node's life in the registry: registered, online, offline, online again, unregistered.

use broker::config::NodeAuth;
use e2e::{Db, Federation, RunningNode};
use std::time::{Duration, Instant};
use wire::control::{ControlError, ControlRequest, ControlResponse, NodeStatus};

#[tokio::test]
async fn registered_node_goes_online_offline_and_online_again_with_the_same_id() {
    let federation = Federation::start(NodeAuth::Registered, false, Db::Memory).await;
    let id = federation.register("client_credentials_1").await;
    assert_eq!(federation.status_of(id).await, Some(NodeStatus::Registered));

    let mut node = RunningNode::start(federation.node_settings(Some("client_credentials_1")));
    assert_eq!(node.online().await, id);
    assert_eq!(federation.status_of(id).await, Some(NodeStatus::Online));

    node.stop().await.unwrap();
    // A clean stop says goodbye: offline at once, not after a heartbeat timeout.
    federation.wait_for_status(id, NodeStatus::Offline).await;

    let mut again = RunningNode::start(federation.node_settings(Some("client_credentials_1")));
    assert_eq!(again.online().await, id);
    let nodes = federation.nodes(true).await;
    assert_eq!(nodes.len(), 1, "no duplicate entry: {nodes:?}");
    assert_eq!(nodes[0].status, NodeStatus::Online);
    assert_eq!(nodes[0].owner, "local");
    assert!(nodes[0].offline_at_ms.is_some() && nodes[0].online_at_ms.is_some());
    again.stop().await.unwrap();
}

#[tokio::test]
async fn a_crashed_node_is_marked_offline_and_a_restarted_one_is_online_at_once() {
    let federation = Federation::start(NodeAuth::Registered, false, Db::Memory).await;
    let id = federation.register("client_credentials_1").await;
    let mut node = RunningNode::start(federation.node_settings(Some("client_credentials_1")));
    node.online().await;
    // Aborting the task drops its endpoint without a goodbye, like a crash.
    node.task.abort();
    federation.wait_for_status(id, NodeStatus::Offline).await;

    let mut restarted = RunningNode::start(federation.node_settings(Some("client_credentials_1")));
    assert_eq!(restarted.online().await, id);
    restarted.stop().await.unwrap();
}

#[tokio::test]
async fn unregistering_a_connected_node_closes_it_within_a_second_for_good() {
    let federation = Federation::start(NodeAuth::Registered, false, Db::Memory).await;
    let id = federation.register("client_credentials_1").await;
    let mut node = RunningNode::start(federation.node_settings(Some("client_credentials_1")));
    node.online().await;

    let started = Instant::now();
    let response = federation
        .request(ControlRequest::UnregisterNode { node_id: id })
        .await;
    assert_eq!(response, ControlResponse::NodeUnregistered { node_id: id });
    let error = node.finished().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    assert!(error.to_string().contains("unregistered"), "{error}");

    // The key can never connect again...
    let reconnect = RunningNode::start(federation.node_settings(Some("client_credentials_1")));
    let error = reconnect.finished().await.unwrap_err();
    assert!(error.to_string().contains("refused"), "{error}");
    // ...nor be registered again.
    let public_key =
        std::fs::read_to_string(federation.path("keys/client_credentials_1.pub")).unwrap();
    let response = federation
        .request(ControlRequest::RegisterNode { public_key })
        .await;
    assert_eq!(response, ControlResponse::Error(ControlError::KeyInUse));
    assert_eq!(
        federation.status_of(id).await,
        Some(NodeStatus::Unregistered)
    );
    assert!(
        federation.nodes(false).await.is_empty(),
        "unregistered nodes are hidden without -v"
    );
}

#[tokio::test]
async fn a_restarted_broker_keeps_its_registry_and_nodes_come_back_by_themselves() {
    let mut federation = Federation::start(NodeAuth::Registered, false, Db::File).await;
    let id = federation.register("client_credentials_1").await;
    let second = federation.register("client_credentials_2").await;
    let mut node = RunningNode::start(federation.node_settings(Some("client_credentials_1")));
    node.online().await;

    let (fleet, control) = (
        federation.broker().fleet_addr,
        federation.broker().control_addr,
    );
    federation.stop_broker().await;
    federation.start_broker(fleet, control);

    // The node notices, reconnects with backoff, and is online again under the same id.
    federation.wait_for_status(id, NodeStatus::Online).await;
    let nodes = federation.nodes(true).await;
    assert_eq!(nodes.len(), 2);
    assert_eq!(
        nodes.iter().find(|n| n.node_id == second).unwrap().status,
        NodeStatus::Registered
    );
    node.stop().await.unwrap();
}

#[tokio::test]
async fn without_supernode_auth_a_node_without_a_key_registers_itself() {
    let federation = Federation::start(NodeAuth::Automatic, false, Db::Memory).await;
    let mut node = RunningNode::start(federation.node_settings(None));
    let id = node.online().await;
    let nodes = federation.nodes(false).await;
    assert_eq!(nodes.len(), 1);
    assert_eq!(
        (nodes[0].node_id, nodes[0].owner.as_str(), nodes[0].status),
        (id, "automatic", NodeStatus::Online)
    );
    node.stop().await.unwrap();
}
