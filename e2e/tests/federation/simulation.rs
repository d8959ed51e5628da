//! Simulation: a SuperLink started with `--simulation` runs each run on virtual SuperNodes it
//! hosts for that run in a real `flower-supernode --virtual-nodes` process: a native app, and a
//! Flower app in the shape of Flower's quickstarts at N = 50 with its own `flwr-clientapp`.

use crate::flower_apps::{follow, offer_flower_app};
use crate::runs::run_info;
use broker::config::{BrokerConfig, NodeAuth};
use cli::app_config::AppConfig;
use e2e::{APP, Db, Federation, flower_program, workspace_binary};
use std::path::{Path, PathBuf};
use wire::control::{
    ControlError, ControlRequest, ControlResponse, RunStatus, SimulatedRun, Simulation,
};
use wire::{ConfigRecord, ConfigValue, RunId};

/// The SuperLink simulates, hosting virtual nodes with this workspace's `flower-supernode`,
/// whose Flower apps run in the test environment's `flwr-clientapp`.
fn simulating(config: &mut BrokerConfig) {
    let dir = config.apps_dir.parent().unwrap().to_path_buf();
    config.simulation = Some(broker::simulation::SimulationConfig {
        supernode: workspace_binary("flower-supernode"),
        dir: config.apps_dir.join("simulation"),
        roots: certs::load::load_certificates(&dir.join("certificates/ca.crt")).unwrap(),
        node_args: vec![
            "--flwr-clientapp".into(),
            flower_program("flwr-clientapp").into(),
            "--backend".into(),
            "cpu".into(),
        ],
    });
    config.flwr_serverapp = Some(flower_program("flwr-serverapp"));
    config.max_pending_per_source = 64;
}

fn vector_add(rounds: i64) -> SimulatedRun {
    SimulatedRun::App {
        app_name: APP.into(),
        app_version: "1.0.0".into(),
        config: ConfigRecord::new()
            .with("num-server-rounds", ConfigValue::Int(rounds))
            .with("vector-length", ConfigValue::Int(4))
            .with("min-nodes", ConfigValue::Int(1))
            .with("round-timeout", ConfigValue::Float(60.0))
            .with("node-wait-timeout", ConfigValue::Float(10.0)),
    }
}

async fn simulate(
    federation: &Federation,
    run: SimulatedRun,
    nodes: u32,
) -> Result<RunId, ControlError> {
    let request = ControlRequest::StartSimulation {
        run,
        simulation: Simulation {
            num_supernodes: nodes,
            workers: 2,
        },
    };
    match federation.request(request).await {
        ControlResponse::RunStarted { run_id } => Ok(run_id),
        ControlResponse::Error(error) => Err(error),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_simulation_runs_on_virtual_supernodes_of_its_own_which_keep_their_ids() {
    let federation =
        Federation::start_tuned(NodeAuth::Automatic, false, Db::Memory, simulating).await;
    let run_id = simulate(&federation, vector_add(2), 20).await.unwrap();
    let (lines, status) = follow(&federation, run_id).await;
    assert_eq!(status, RunStatus::Completed, "{lines:#?}");
    assert!(
        lines.iter().any(|l| l == "20 virtual SuperNodes online"),
        "{lines:#?}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("received 20 results and 0 failures"))
            .count(),
        2,
        "{lines:#?}"
    );
    let registered = federation.nodes(false).await;
    assert_eq!(registered.len(), 20);
    // Gone with their run: the next simulation starts with none of them online.
    assert!(federation.broker().shared.sessions.online().is_empty());

    // A smaller one: the first five virtual nodes again, with the ids they had.
    let run_id = simulate(&federation, vector_add(1), 5).await.unwrap();
    let (lines, status) = follow(&federation, run_id).await;
    assert_eq!(status, RunStatus::Completed, "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("received 5 results and 0 failures")),
        "{lines:#?}"
    );
    assert_eq!(federation.nodes(false).await.len(), 20);
}

#[tokio::test]
async fn simulations_and_deployments_each_go_to_their_own_superlink() {
    let simulating =
        Federation::start_tuned(NodeAuth::Automatic, false, Db::Memory, simulating).await;
    let deployment = ControlRequest::StartRun {
        app_name: APP.into(),
        app_version: "1.0.0".into(),
        config: ConfigRecord::new(),
    };
    match simulating.request(deployment).await {
        ControlResponse::Error(ControlError::Simulation(why)) => {
            assert!(why.contains("simulation federation"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    for nodes in [0, Simulation::MAX_NODES + 1] {
        match simulate(&simulating, vector_add(1), nodes).await {
            Err(ControlError::Simulation(why)) => {
                assert!(why.contains("num-supernodes is"), "{why}")
            }
            other => panic!("{nodes} nodes: {other:?}"),
        }
    }
    let deploying = Federation::start(NodeAuth::Automatic, false, Db::Memory).await;
    match simulate(&deploying, vector_add(1), 2).await {
        Err(ControlError::Simulation(why)) => assert!(why.contains("runs deployments"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn virtual_supernodes_that_cannot_start_fail_the_run_with_the_reason() {
    fn crashing(config: &mut BrokerConfig) {
        simulating(config);
        use std::os::unix::fs::PermissionsExt as _;
        let script = config.apps_dir.parent().unwrap().join("crashing-supernode");
        std::fs::write(&script, "#!/bin/sh\necho 'no GPU here' >&2\nexit 3\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        if let Some(simulation) = &mut config.simulation {
            simulation.supernode = script;
        }
    }
    let federation =
        Federation::start_tuned(NodeAuth::Automatic, false, Db::Memory, crashing).await;
    let run_id = simulate(&federation, vector_add(1), 3).await.unwrap();
    let (lines, status) = follow(&federation, run_id).await;
    assert_eq!(status, RunStatus::Failed, "{lines:#?}");
    let details = run_info(&federation, run_id).await.details;
    assert!(
        details.contains("exited with status 3") && details.contains("no GPU here"),
        "{details}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulation_superlink_admits_its_virtual_supernodes_and_nobody_else() {
    use flower_runtime::proto;
    fn with_flower_http(config: &mut BrokerConfig) {
        simulating(config);
        config.flower_http = Some(broker::flower_http::FlowerHttp {
            address: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            required: true,
            tls: false,
        });
    }
    let federation =
        Federation::start_tuned(NodeAuth::Automatic, false, Db::Memory, with_flower_http).await;
    // A SuperNode with a key of its own, in automatic mode: refused during TLS, for good.
    let mut settings = federation.node_settings(None);
    settings.max_retries = Some(1);
    let stranger = e2e::RunningNode::start(settings);
    let outcome = tokio::time::timeout(e2e::PATIENCE, stranger.finished())
        .await
        .expect("the stranger gave up");
    assert!(
        matches!(&outcome, Err(node::daemon::NodeError::Refused(why)) if why.contains("TLS")),
        "{outcome:?}"
    );
    // Nor does a key register itself over Flower's HTTP (Flower's code 2001).
    let key = certs::IdentityKey::generate();
    let http = crate::handmade_supernode::HandmadeSuperNode::with_key(
        key,
        federation.broker().flower_http_addr.expect("served"),
    );
    let answer = http
        .call(
            "register-node",
            &proto::RegisterNodeFleetRequest {
                public_key: http.pem(),
            },
        )
        .await;
    assert_eq!((answer.status, answer.code()), (412, 2001));
    assert!(federation.nodes(true).await.is_empty());
    // While a simulation runs, its virtual nodes are the only ones online.
    let run_id = simulate(&federation, vector_add(1), 3).await.unwrap();
    let (lines, status) = follow(&federation, run_id).await;
    assert_eq!(status, RunStatus::Completed, "{lines:#?}");
    assert_eq!(federation.nodes(true).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_supernodes_that_die_mid_run_fail_it_at_once_with_the_reason() {
    fn dying(config: &mut BrokerConfig) {
        use std::os::unix::fs::PermissionsExt as _;
        simulating(config);
        let script = config.apps_dir.parent().unwrap().join("dying-supernode");
        let real = workspace_binary("flower-supernode");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n\"{}\" \"$@\" &\nsleep 4\nkill -9 $!\necho 'out of memory' >&2\nexit 9\n",
                real.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        if let Some(simulation) = &mut config.simulation {
            simulation.supernode = script;
        }
    }
    let federation = Federation::start_tuned(NodeAuth::Automatic, false, Db::Memory, dying).await;
    // Rounds enough to outlast the process; each waits long for nodes that are gone.
    let run = SimulatedRun::App {
        app_name: APP.into(),
        app_version: "1.0.0".into(),
        config: ConfigRecord::new()
            .with("num-server-rounds", ConfigValue::Int(100_000))
            .with("vector-length", ConfigValue::Int(4))
            .with("min-nodes", ConfigValue::Int(1))
            .with("round-timeout", ConfigValue::Float(600.0))
            .with("node-wait-timeout", ConfigValue::Float(600.0)),
    };
    let run_id = simulate(&federation, run, 3).await.unwrap();
    let (lines, status) = follow(&federation, run_id).await;
    assert_eq!(status, RunStatus::Failed, "{lines:#?}");
    let details = run_info(&federation, run_id).await.details;
    assert!(
        details.contains("before the run ended") && details.contains("out of memory"),
        "{details}"
    );
}

fn simulation_numpy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/simulation-numpy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flowers_quickstart_shaped_app_trains_on_fifty_virtual_supernodes_each_with_its_partition()
{
    let federation =
        Federation::start_tuned(NodeAuth::Automatic, false, Db::Memory, simulating).await;
    let dir = simulation_numpy();
    let config = AppConfig::load(&dir).unwrap();
    let (_, simulation_federation) = config.federation(None).unwrap();
    let options = simulation_federation.simulation.unwrap().options;
    let (simulation, _) = cli::simulation::from_options(&options).unwrap();
    assert_eq!(simulation.num_supernodes, 50);
    let (mut client, hash, run_config) = offer_flower_app(&federation, &dir, &[]).await;
    let run = SimulatedRun::Bundle {
        bundle: hash,
        config: run_config,
    };
    let run_id = client
        .start_simulation(
            run,
            Simulation {
                workers: 2,
                ..simulation
            },
        )
        .await
        .unwrap();
    client.close().await;
    let (lines, status) = follow(&federation, run_id).await;
    assert_eq!(status, RunStatus::Completed, "{lines:#?}");
    // Half the nodes each round, as the strategy asks.
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("Received 25 results and 0 failures"))
            .count(),
        3,
        "{lines:#?}"
    );
    // Each node trained on its own partition and kept its state across rounds: by the third
    // round, some nodes sampled before report their second or third round.
    let third = lines
        .iter()
        .filter(|l| l.contains("'rounds-on-this-node'"))
        .nth(2)
        .expect("three rounds' metrics");
    let mean: f64 = third
        .split("'rounds-on-this-node': ")
        .nth(1)
        .and_then(|rest| rest.split(['}', ',']).next())
        .and_then(|number| number.trim().parse().ok())
        .expect("a mean of rounds");
    assert!(mean > 1.0, "{third}");
    let distance: f64 = lines
        .iter()
        .find_map(|l| l.split("distance to the true weights ").nth(1))
        .and_then(|number| number.trim().parse().ok())
        .expect("the app's final line");
    assert!(distance < 0.5, "{lines:#?}");
}
