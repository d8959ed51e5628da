//! The Flower-compatibility corpus (`e2e/corpus`): apps on each part of Flower's API that a
//! Flower user's app may rest on, run unchanged in Flower's own `flwr-serverapp` and
//! `flwr-clientapp` on this project's daemons. Each app checks its own results in its ServerApp
//! and fails the run when they are wrong; the test reads the run's status and the app's verdict.

use crate::flower_apps::{flower_nodes, follow, start_flower_app, with_flower_serverapp};
use broker::config::NodeAuth;
use e2e::{Db, Federation};
use std::path::PathBuf;
use wire::control::RunStatus;

fn corpus_app(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name)
}

/// Runs corpus app `name` on `nodes` Flower-clientapp nodes to its end; the run's log lines.
async fn run_corpus_app(name: &str, nodes: usize) -> Vec<String> {
    let federation = Federation::start_tuned(
        NodeAuth::Automatic,
        false,
        Db::Memory,
        with_flower_serverapp,
    )
    .await;
    let _nodes = flower_nodes(&federation, nodes).await;
    let run_id = start_flower_app(&federation, &corpus_app(name), &[]).await;
    let (lines, status) = follow(&federation, run_id).await;
    assert_eq!(status, RunStatus::Completed, "{lines:#?}");
    lines
}

fn said(lines: &[String], verdict: &str) -> bool {
    lines.iter().any(|line| line.contains(verdict))
}

/// `NumPyClient` from a `client_fn`, `LegacyContext` and `DefaultWorkflow` with a
/// `flwr.server.strategy.FedAvg`: initial parameters from `get_parameters` (legacy `Parameters`,
/// dtype and shape left empty), per-node state counted across three rounds, `get_properties`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_api_app_keeps_each_nodes_state_across_rounds() {
    let lines = run_corpus_app("legacy-numpy", 2).await;
    assert!(
        said(
            &lines,
            "Requesting initial parameters from one random client"
        ),
        "{lines:#?}"
    );
    assert!(said(&lines, "legacy check passed: 3 rounds"), "{lines:#?}");
}

/// SecAgg+ (`SecAggPlusWorkflow` with `secaggplus_mod`) on five nodes: its stages carry lists of
/// bytes and of node ids (above `i64::MAX`) in config records. One node dies after sharing its
/// keys; the aggregate unmasked without it equals the survivors' plain weighted mean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secagg_plus_unmasks_the_survivors_mean_after_a_node_dies_mid_round() {
    let lines = run_corpus_app("secagg-plus", 5).await;
    assert!(
        said(
            &lines,
            "SecAgg+ check passed: the unmasked aggregate of 4 survivors"
        ),
        "{lines:#?}"
    );
}

/// Flower's Message API: `query` messages with a list in their config (federated analytics), a
/// `query.moments` and a `train.scale` action, and an action name beyond the SuperLink's bound,
/// answered with an error reply naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_analytics_and_message_actions_answer_as_on_flower() {
    let lines = run_corpus_app("analytics-actions", 2).await;
    assert!(
        said(&lines, "analytics check passed: 1000 samples on 2 nodes"),
        "{lines:#?}"
    );
    assert!(
        said(
            &lines,
            "refused a message type of 306 bytes: invalid value: a message type of 306 bytes (at most 256)"
        ),
        "{lines:#?}"
    );
}
