//! The Control API admits operators only: by key when the broker has operator keys, by loopback
//! address otherwise.

use broker::config::NodeAuth;
use e2e::{Db, Federation};
use wire::control::{ControlError, ControlRequest, ControlResponse};

#[tokio::test]
async fn the_operator_key_is_accepted_and_names_the_owner() {
    let federation = Federation::start(NodeAuth::Registered, true, Db::Memory).await;
    let client = federation.operator().await.unwrap();
    assert_eq!(client.operator, "alice");
    client.close().await;
    let id = federation.register("client_credentials_1").await;
    let nodes = federation.nodes(false).await;
    assert_eq!((nodes[0].node_id, nodes[0].owner.as_str()), (id, "alice"));
}

#[tokio::test]
async fn a_cli_without_an_operator_key_is_refused() {
    let federation = Federation::start(NodeAuth::Registered, true, Db::Memory).await;
    federation.write_flwr_toml(federation.broker().control_addr, None);
    let error = federation
        .operator()
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("requires an operator key"), "{error}");
}

#[tokio::test]
async fn an_unknown_key_or_a_node_key_is_refused_as_operator() {
    let federation = Federation::start(NodeAuth::Registered, true, Db::Memory).await;
    for key in ["keys/client_credentials_1", "keys/stranger"] {
        if key.ends_with("stranger") {
            certs::generate::write_key_pair(&federation.path(key), "mallory", false).unwrap();
        }
        federation.write_flwr_toml(federation.broker().control_addr, Some(key));
        let error = federation
            .operator()
            .await
            .err()
            .expect("refused")
            .to_string();
        assert!(
            error.contains("refused this operator key"),
            "{key}: {error}"
        );
    }
}

#[tokio::test]
async fn an_operator_key_cannot_authenticate_a_node() {
    // In automatic mode too, where any other key registers itself.
    for auth in [NodeAuth::Registered, NodeAuth::Automatic] {
        let federation = Federation::start(auth, true, Db::Memory).await;
        let node = e2e::RunningNode::start(federation.node_settings(Some("operator")));
        let error = node.finished().await.unwrap_err().to_string();
        assert!(error.contains("refused"), "{auth:?}: {error}");
        assert!(federation.nodes(true).await.is_empty(), "{auth:?}");
    }
}

#[tokio::test]
async fn an_operator_key_cannot_be_registered_as_a_node() {
    let federation = Federation::start(NodeAuth::Registered, true, Db::Memory).await;
    let public_key = std::fs::read_to_string(federation.path("keys/operator.pub")).unwrap();
    let refused = federation
        .request(ControlRequest::RegisterNode { public_key })
        .await;
    assert!(
        matches!(refused, ControlResponse::Error(ControlError::InvalidKey(ref why)) if why.contains("operator key")),
        "{refused:?}"
    );
    assert!(federation.nodes(true).await.is_empty());
}

#[tokio::test]
async fn duplicate_and_malformed_keys_get_flowers_messages() {
    let federation = Federation::start(NodeAuth::Registered, false, Db::Memory).await;
    federation.register("client_credentials_1").await;
    let public_key =
        std::fs::read_to_string(federation.path("keys/client_credentials_1.pub")).unwrap();
    let duplicate = federation
        .request(ControlRequest::RegisterNode { public_key })
        .await;
    assert_eq!(duplicate, ControlResponse::Error(ControlError::KeyInUse));
    assert_eq!(
        ControlError::KeyInUse.to_string(),
        "Public key already in use"
    );
    let malformed = federation
        .request(ControlRequest::RegisterNode {
            public_key: "ecdsa-sha2-nistp256 AAAAnotakey".into(),
        })
        .await;
    let ControlResponse::Error(error) = malformed else {
        panic!("{malformed:?}")
    };
    assert!(
        error.to_string().starts_with("Public key is not valid"),
        "{error}"
    );
    assert_eq!(
        federation.nodes(true).await.len(),
        1,
        "nothing written for refused keys"
    );
}
