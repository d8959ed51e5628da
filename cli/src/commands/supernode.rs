//! `flwr supernode register | unregister | list`.

use crate::CliError;
use crate::args::SupernodeCommand;
use crate::control_client::ControlClient;
use crate::output::{self, Format, colour};
use serde_json::json;
use wire::NodeId;
use wire::control::{NodeInfo, NodeStatus};
use wire::message::now_ms;

/// Runs `flwr supernode ...`.
pub async fn run(command: SupernodeCommand) -> Result<(), CliError> {
    match command {
        SupernodeCommand::Register { public_key, target } => {
            let text = std::fs::read_to_string(&public_key)
                .map_err(|e| CliError::Io(format!("{}: {e}", public_key.display())))?;
            // Check locally first: a malformed file gets a precise reason without a round trip.
            certs::load::parse_public_key(&text).map_err(|reason| {
                CliError::Request(format!(
                    "Public key is not valid: {}: {reason}",
                    public_key.display()
                ))
            })?;
            let node_id =
                ControlClient::once(&target, async |client| client.register_node(text).await)
                    .await?;
            match target.format {
                Format::Json => {
                    super::print_json(&json!({"success": true, "node-id": node_id.to_string()}))
                }
                Format::Default => println!("SuperNode {node_id} registered successfully."),
            }
        }
        SupernodeCommand::Unregister { node_id, target } => {
            let node_id = ControlClient::once(&target, async |client| {
                client.unregister_node(NodeId(node_id)).await
            })
            .await?;
            match target.format {
                Format::Json => {
                    super::print_json(&json!({"success": true, "node-id": node_id.to_string()}))
                }
                Format::Default => println!("SuperNode {node_id} unregistered successfully."),
            }
        }
        SupernodeCommand::List { target, verbose } => {
            let (nodes, protocols) = ControlClient::once(&target, async |client| {
                let nodes = client.list_nodes(verbose).await?;
                Ok((nodes, client.online_protocols().await?.unwrap_or_default()))
            })
            .await?;
            let protocol = |node: &NodeInfo| protocols.get(&node.node_id).copied();
            let now = now_ms();
            match target.format {
                Format::Json => super::print_json(&json!({
                    "success": true,
                    "nodes": nodes.iter().map(|n| {
                        let mut value = wire::control_json::node(n, now);
                        value["protocol"] = protocol(n).map_or(serde_json::Value::Null, |p| p.as_str().into());
                        value
                    }).collect::<Vec<_>>(),
                })),
                Format::Default => crate::output::print_paged(&node_table(&nodes, &protocol, now)),
            }
        }
    }
    Ok(())
}

fn status_cell(status: NodeStatus) -> String {
    let colour = match status {
        NodeStatus::Online => colour::GREEN,
        NodeStatus::Registered => colour::YELLOW,
        NodeStatus::Offline => colour::RED,
        NodeStatus::Unregistered => colour::GREY,
    };
    output::paint(status.as_str(), colour)
}

/// The node table: Node ID | Owner | Status | Protocol | Elapsed | Status Changed @, the protocol
/// of an online node as `protocol` gives it.
pub fn node_table(
    nodes: &[NodeInfo],
    protocol: &dyn Fn(&NodeInfo) -> Option<wire::control::NodeProtocol>,
    now: u64,
) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.node_id.to_string(),
                n.owner.clone(),
                status_cell(n.status),
                protocol(n).map_or("-", |p| p.label()).to_string(),
                output::elapsed(n.status_changed_at_ms, now),
                output::timestamp(n.status_changed_at_ms),
            ]
        })
        .collect();
    output::table(
        &[
            "Node ID",
            "Owner",
            "Status",
            "Protocol",
            "Elapsed",
            "Status Changed @",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_an_online_nodes_protocol_and_a_dash_for_the_rest() {
        let node = |id, status| NodeInfo {
            node_id: NodeId(id),
            owner: "alice".into(),
            status,
            key_fingerprint: "SHA256:abc".into(),
            registered_at_ms: 1_700_000_000_000,
            online_at_ms: None,
            offline_at_ms: None,
            unregistered_at_ms: None,
            status_changed_at_ms: 1_700_000_001_000,
        };
        let nodes = [node(1, NodeStatus::Online), node(2, NodeStatus::Offline)];
        let protocol = |n: &NodeInfo| {
            (n.node_id == NodeId(1)).then_some(wire::control::NodeProtocol::FlowerHttp)
        };
        let table = node_table(&nodes, &protocol, 1_700_000_002_000);
        let rows: Vec<&str> = table.lines().filter(|l| l.contains("alice")).collect();
        assert!(rows[0].contains("Flower HTTP"), "{table}");
        assert!(rows[1].contains(" - "), "{table}");
    }

    #[test]
    fn a_node_in_json_has_flowers_keys_first_and_its_id_as_a_string() {
        let node = NodeInfo {
            node_id: NodeId(18_234_121_980_552_467_268),
            owner: "alice".into(),
            status: NodeStatus::Online,
            key_fingerprint: "SHA256:abc".into(),
            registered_at_ms: 1_700_000_000_000,
            online_at_ms: Some(1_700_000_001_000),
            offline_at_ms: None,
            unregistered_at_ms: None,
            status_changed_at_ms: 1_700_000_001_000,
        };
        let value = wire::control_json::node(&node, 1_700_000_002_000);
        assert_eq!(value["node-id"], "18234121980552467268");
        let text = value.to_string();
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["node-id"].as_str(), Some("18234121980552467268"));
        let flowers = [
            "node-id",
            "owner-name",
            "status",
            "created-at",
            "online-at",
            "online-elapsed",
            "offline-at",
            "deleted-at",
        ];
        assert_eq!(
            crate::commands::leading_keys(&value, flowers.len()),
            flowers
        );
    }
}
