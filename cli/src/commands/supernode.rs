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
            let nodes =
                ControlClient::once(&target, async |client| client.list_nodes(verbose).await)
                    .await?;
            let now = now_ms();
            match target.format {
                Format::Json => super::print_json(&json!({
                    "success": true,
                    "nodes": nodes.iter().map(|n| wire::control_json::node(n, now)).collect::<Vec<_>>(),
                })),
                Format::Default => crate::output::print_paged(&node_table(&nodes, now)),
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

/// The node table: Node ID | Owner | Status | Elapsed | Status Changed @.
pub fn node_table(nodes: &[NodeInfo], now: u64) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.node_id.to_string(),
                n.owner.clone(),
                status_cell(n.status),
                output::elapsed(n.status_changed_at_ms, now),
                output::timestamp(n.status_changed_at_ms),
            ]
        })
        .collect();
    output::table(
        &["Node ID", "Owner", "Status", "Elapsed", "Status Changed @"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
