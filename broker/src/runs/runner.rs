//! The life of one run: pending -> starting -> running -> finished, with the server app executing
//! on a blocking thread and every step written to the run's log.

use super::RunEvent;
use super::apps::AppRun;
use super::grid::BrokerGrid;
use crate::state::Shared;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use wire::control::{ControlError, RunInfo, RunStatus, SimulatedRun, Simulation};
use wire::fleet::BrokerFrame;
use wire::message::now_ms;
use wire::{BundleHash, ConfigRecord, RunId};

/// Appends a line to a run's log (see [`super::ActiveRuns::log`]).
pub fn log(shared: &Shared, run_id: RunId, text: &str) {
    shared.runs.log(&shared.store, run_id, text);
}

/// Records the final status (unless an operator already stopped the run), tells followers, and
/// tells every node, so that none keeps anything of the run (a warm app process, an instruction
/// still running after its round gave up on it).
fn finish(shared: &Shared, run_id: RunId, status: RunStatus, details: &str) {
    let stored = shared
        .store
        .set_run_status(run_id, status, details, now_ms());
    let final_status = match stored {
        Ok(info) => info.status,
        Err(error) => {
            tracing::error!(run_id = run_id.0, %error, "could not record the run's end");
            status
        }
    };
    forget_checkpoint(shared, run_id);
    shared.sessions.push_all(BrokerFrame::RunStopped { run_id });
    shared
        .runs
        .publish(run_id, RunEvent::Finished(final_status));
    shared.runs.remove(run_id);
}

/// Drops a finished run's checkpoint; a leftover one only costs space, so a failure is logged.
fn forget_checkpoint(shared: &Shared, run_id: RunId) {
    if let Err(error) = shared.store.remove_checkpoint(run_id) {
        tracing::warn!(run_id = run_id.0, %error, "could not drop the run's checkpoint");
    }
}

/// Accepts a run of an app this broker has and starts its server app in the background.
pub fn start(
    shared: &Arc<Shared>,
    operator: &str,
    app_name: String,
    app_version: String,
    config: ConfigRecord,
    simulation: Option<&Simulation>,
) -> Result<RunInfo, ControlError> {
    // Refused before any run exists: a run that could only fail would be noise in `flwr ls`.
    check_kind(shared, simulation)?;
    if shared.apps.get(&app_name).is_none() {
        return Err(ControlError::UnknownApp(wire::text::sanitize(
            &app_name, 256,
        )));
    }
    create(
        shared,
        operator,
        app_name,
        app_version,
        config,
        None,
        simulation,
    )
}

/// Accepts a run of the stored bundle `bundle`, when this broker can run its server app, and
/// starts it in the background.
pub fn start_bundled(
    shared: &Arc<Shared>,
    operator: &str,
    bundle: BundleHash,
    config: ConfigRecord,
    simulation: Option<&Simulation>,
) -> Result<RunInfo, ControlError> {
    check_kind(shared, simulation)?;
    let manifest = super::apps::bundle(shared, bundle)?.manifest;
    super::apps::check_server_app(shared, &manifest)?;
    create(
        shared,
        operator,
        manifest.name,
        manifest.version,
        config,
        Some(bundle),
        simulation,
    )
}

/// Accepts a run on a virtual federation of `simulation`'s shape, when this SuperLink runs
/// simulations and can run the app, and starts it in the background.
pub fn start_simulation(
    shared: &Arc<Shared>,
    operator: &str,
    run: SimulatedRun,
    simulation: Simulation,
) -> Result<RunInfo, ControlError> {
    simulation
        .check()
        .map_err(|why| ControlError::Simulation(wire::text::sanitize(&why, 256)))?;
    match run {
        SimulatedRun::App {
            app_name,
            app_version,
            config,
        } => start(
            shared,
            operator,
            app_name,
            app_version,
            config,
            Some(&simulation),
        ),
        SimulatedRun::Bundle { bundle, config } => {
            start_bundled(shared, operator, bundle, config, Some(&simulation))
        }
    }
}

/// Refuses a run on the wrong kind of SuperLink: a simulation on one that runs deployments, a
/// deployment's run on one that simulates (its nodes are each simulation's own).
fn check_kind(shared: &Shared, simulation: Option<&Simulation>) -> Result<(), ControlError> {
    match (shared.simulations.is_some(), simulation.is_some()) {
        (false, true) => Err(ControlError::Simulation(
            "This SuperLink runs deployments, not simulations: run the app on a deployment \
             federation, or on a simulation federation (flwr starts a local simulation SuperLink \
             for those)"
                .into(),
        )),
        (true, false) => Err(ControlError::Simulation(
            "This SuperLink runs simulations (--simulation), each on virtual SuperNodes of its \
             own: start the run from a simulation federation (options.num-supernodes)"
                .into(),
        )),
        _ => Ok(()),
    }
}

/// Stores a new pending run and starts it.
/// Refuses a run config Flower's apps could not be given: a run's config holds single values
/// (TOML's, which is where `flwr run` takes them from), within the bounds of any record.
fn check_run_config(config: &ConfigRecord) -> Result<(), ControlError> {
    let invalid = |why: String| ControlError::InvalidRunConfig(wire::text::sanitize(&why, 256));
    config
        .check_bounds("run config")
        .map_err(|e| invalid(e.to_string()))?;
    match config.iter().find(|(_, value)| value.list_len().is_some()) {
        Some((name, _)) => Err(invalid(format!(
            "{name:?} is a list; a run's config holds single values"
        ))),
        None => Ok(()),
    }
}

fn create(
    shared: &Arc<Shared>,
    operator: &str,
    app_name: String,
    app_version: String,
    config: ConfigRecord,
    bundle: Option<BundleHash>,
    simulation: Option<&Simulation>,
) -> Result<RunInfo, ControlError> {
    check_run_config(&config)?;
    let info = RunInfo {
        run_id: RunId(0),
        app_name,
        app_version,
        config,
        status: RunStatus::Pending,
        details: String::new(),
        owner: operator.to_string(),
        pending_at_ms: now_ms(),
        starting_at_ms: None,
        running_at_ms: None,
        finished_at_ms: None,
        bundle,
    };
    let info = shared
        .store
        .create_run_on(info, simulation)
        .map_err(|e| ControlError::Internal(e.to_string()))?;
    launch(shared, info.clone());
    Ok(info)
}

/// Executes a stored run's server app in the background.
fn launch(shared: &Arc<Shared>, info: RunInfo) {
    shared.runs.insert(info.run_id);
    let span = tracing::info_span!("run", run_id = info.run_id.0, app = %info.app_name);
    shared
        .runs
        .spawn(execute(shared.clone(), info).instrument(span));
}

async fn execute(shared: Arc<Shared>, info: RunInfo) {
    let run_id = info.run_id;
    let Some(cancel) = shared.runs.token(run_id) else {
        return;
    };
    let bundle = info
        .bundle
        .map(|hash| format!(" (bundle {hash})"))
        .unwrap_or_default();
    log(
        &shared,
        run_id,
        &format!(
            "Starting run {run_id}: app {} {}{bundle}",
            info.app_name, info.app_version
        ),
    );
    if let Err(error) = shared
        .store
        .set_run_status(run_id, RunStatus::Starting, "", now_ms())
    {
        tracing::error!(%error, "could not record the run as starting");
    }
    let simulation = match shared.store.simulation(run_id) {
        Ok(simulation) => simulation,
        Err(error) => {
            let reason = format!("cannot read the run's simulation: {error}");
            log(&shared, run_id, &format!("ERROR: {reason}"));
            finish(&shared, run_id, RunStatus::Failed, &reason);
            return;
        }
    };
    let Some(simulation) = simulation else {
        if shared.simulations.is_some() {
            // Left by a database this SuperLink once ran deployments on.
            let reason = "the run is a deployment's, and this SuperLink runs simulations";
            log(&shared, run_id, &format!("ERROR: {reason}"));
            finish(&shared, run_id, RunStatus::Failed, reason);
            return;
        }
        return execute_app(shared, info, cancel).await;
    };
    let Some(simulations) = &shared.simulations else {
        let reason = "the run is a simulation, and this SuperLink was started without --simulation";
        log(&shared, run_id, &format!("ERROR: {reason}"));
        finish(&shared, run_id, RunStatus::Failed, reason);
        return;
    };
    match simulations
        .start(&shared, run_id, simulation, &cancel)
        .await
    {
        Ok(mut federation) => {
            let app = execute_app(shared.clone(), info, cancel.clone());
            tokio::pin!(app);
            tokio::select! {
                () = &mut app => {}
                reason = federation.exited() => {
                    // Its nodes are gone: the run cannot go on, and says why now rather than
                    // after its rounds' timeouts.
                    let line = format!("ERROR: {reason}");
                    let _ = end_now(&shared, run_id, RunStatus::Failed, &reason, &line);
                    app.await;
                }
            }
            federation.end(&shared).await;
        }
        // Stopped meanwhile: stop() recorded it, or the SuperLink is shutting down.
        Err(_) if cancel.is_cancelled() => {}
        Err(reason) => {
            log(&shared, run_id, &format!("ERROR: {reason}"));
            finish(&shared, run_id, RunStatus::Failed, &reason);
        }
    }
}

/// Runs a started run's server app to its end (on the simulation's virtual federation, when it
/// is one) and records how it ended.
async fn execute_app(shared: Arc<Shared>, info: RunInfo, cancel: CancellationToken) {
    let run_id = info.run_id;
    let app = match super::apps::server_app_of(&shared, &info, &cancel) {
        Ok(app) => app,
        Err(reason) => {
            log(&shared, run_id, &format!("ERROR: {reason}"));
            finish(&shared, run_id, RunStatus::Failed, &reason);
            return;
        }
    };
    if let Err(error) = shared
        .store
        .set_run_status(run_id, RunStatus::Running, "", now_ms())
    {
        tracing::error!(%error, "could not record the run as running");
    }
    tracing::info!("run started");
    let grid = BrokerGrid::new(
        shared.clone(),
        run_id,
        cancel.clone(),
        tokio::runtime::Handle::current(),
    );
    let checkpoint = match shared.store.checkpoint(run_id) {
        Ok(checkpoint) => checkpoint,
        Err(error) => {
            let reason = format!("cannot read the run's checkpoint: {error}");
            log(&shared, run_id, &format!("ERROR: {reason}"));
            finish(&shared, run_id, RunStatus::Failed, &reason);
            return;
        }
    };
    let context = flwr_sdk::app::ServerContext {
        run_id,
        run_config: info.config.clone(),
        checkpoint,
    };
    // Each kind in a task of its own, so that a panic in it fails the run instead of the runner.
    let outcome = match app {
        AppRun::InProcess(app) => {
            tokio::task::spawn_blocking(move || app.run(&grid, &context)).await
        }
        AppRun::Program(app) => tokio::spawn(app.run(Arc::new(grid), context)).await,
        AppRun::Flower(app) => tokio::spawn(app.run(Arc::new(grid), context)).await,
    };
    if cancel.is_cancelled() {
        // Either stop() already recorded finished:stopped and told everyone, or the broker is
        // shutting down and the run stays active, to resume at the next start.
        let stopped = matches!(shared.store.run(run_id), Ok(Some(run)) if run.status.is_finished());
        if stopped {
            tracing::info!("run stopped");
            forget_checkpoint(&shared, run_id);
        }
        return;
    }
    let (status, details) = match outcome {
        Ok(Ok(())) => (RunStatus::Completed, String::new()),
        Ok(Err(error)) => (RunStatus::Failed, error.to_string()),
        Err(join) => (RunStatus::Failed, format!("the server app crashed: {join}")),
    };
    if status == RunStatus::Failed {
        log(&shared, run_id, &format!("ERROR: {details}"));
    }
    log(
        &shared,
        run_id,
        &format!("Run {run_id} finished: {}", status.as_str()),
    );
    tracing::info!(status = status.as_str(), "run finished");
    finish(&shared, run_id, status, &details);
}

/// Stops a run: recorded as finished:stopped at once, its queued instructions dropped, its server
/// app cancelled, and every node told to abandon its work.
pub fn stop(shared: &Shared, run_id: RunId, operator: &str) -> Result<(), ControlError> {
    end_now(
        shared,
        run_id,
        RunStatus::Stopped,
        &format!("stopped by {operator}"),
        &format!("Run {run_id} stopped by {operator}"),
    )
}

/// Ends a run before its server app did: `status` with `details` recorded at once, `line` in its
/// log, its queued instructions dropped, its server app cancelled, every node told.
fn end_now(
    shared: &Shared,
    run_id: RunId,
    status: RunStatus,
    details: &str,
    line: &str,
) -> Result<(), ControlError> {
    let internal = |e: crate::store::StoreError| ControlError::Internal(e.to_string());
    let info = shared
        .store
        .run(run_id)
        .map_err(internal)?
        .ok_or(ControlError::UnknownRun(run_id))?;
    if info.status.is_finished() {
        return Err(ControlError::RunFinished(run_id));
    }
    shared
        .store
        .set_run_status(run_id, status, details, now_ms())
        .map_err(internal)?;
    shared.runs.cancel(run_id);
    shared.rounds.stop_run(run_id);
    forget_checkpoint(shared, run_id);
    shared.sessions.push_all(BrokerFrame::RunStopped { run_id });
    log(shared, run_id, line);
    shared.runs.publish(run_id, RunEvent::Finished(status));
    shared.runs.remove(run_id);
    Ok(())
}

/// At start-up: runs a previous process left active (a crash, a kill, a shutdown mid-run) start
/// again, from their last checkpoint when the app saved one. The interrupted round's instructions
/// lived in memory and are gone: the resumed app sends that round afresh, and a late reply to an
/// old instruction answers no open round, so it is never aggregated.
pub fn resume_interrupted_runs(shared: &Arc<Shared>) -> Result<usize, crate::store::StoreError> {
    let interrupted = shared.store.unfinished_runs()?;
    for run in &interrupted {
        let from = if shared.store.has_checkpoint(run.run_id)? {
            "resuming it from its last checkpoint"
        } else {
            "starting it again (no round had completed)"
        };
        log(
            shared,
            run.run_id,
            &format!("The SuperLink restarted while this run was active: {from}"),
        );
        launch(shared, run.clone());
    }
    Ok(interrupted.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::ConfigValue;

    #[test]
    fn a_run_config_holds_single_values_within_the_bounds() {
        let fine = ConfigRecord::new()
            .with("rounds", ConfigValue::Int(3))
            .with("seed", ConfigValue::UInt(u64::MAX));
        assert_eq!(check_run_config(&fine), Ok(()));
        let listed = fine.clone().with("lr", ConfigValue::FloatList(vec![0.1]));
        assert_eq!(
            check_run_config(&listed),
            Err(ControlError::InvalidRunConfig(
                "\"lr\" is a list; a run's config holds single values".into()
            ))
        );
        let long_name = fine.with(
            "x".repeat(wire::records::MAX_NAME_LEN + 1),
            ConfigValue::Int(1),
        );
        assert!(matches!(
            check_run_config(&long_name),
            Err(ControlError::InvalidRunConfig(why)) if why.contains("name of 1025 bytes")
        ));
    }
}
