//! `flwr run`, `flwr ls`, `flwr log`, `flwr stop`.

use crate::CliError;
use crate::app_config::AppConfig;
use crate::args::Target;
use crate::control_client::ControlClient;
use crate::output::{self, Format, colour};
use serde_json::json;
use std::io::Write as _;
use wire::RunId;
use wire::control::{LogLine, RunInfo, RunStatus, SimulatedRun};
use wire::message::now_ms;

/// What `flwr run` sends with a run: a FAB or a bundle.
struct Shipped {
    /// The archive's SHA-256.
    hash: wire::BundleHash,
    /// What it is, for the progress line.
    what: String,
    /// How many files a bundle packs.
    files: Option<usize>,
    /// The archive.
    bytes: Vec<u8>,
}

/// `flwr run`.
pub async fn start(target: &Target, overrides: &[String], stream: bool) -> Result<(), CliError> {
    let config = AppConfig::load(&target.app)?;
    let app = config.app()?;
    let run_config = crate::run_config::fuse(app, overrides)?;
    // Packed before connecting: an app that cannot run is refused without a word to the
    // SuperLink. A Flower app (Python components) travels as its FAB, built as `flwr build`
    // builds it; an app whose flwr.toml names programs, as a bundle of its directory.
    let shipped = if app.python_component.is_some() {
        let fab = crate::fab::build(&target.app)?.fab;
        let hash = app_bundle::hash_of(&fab.archive);
        let what = format!("Flower app {} {} (FAB, ", fab.fab_id, fab.version);
        Some(Shipped {
            hash,
            what,
            files: None,
            bytes: fab.archive,
        })
    } else if app.bundled {
        let packed = crate::bundle::pack(&target.app)?;
        let what = format!("App bundle {} {} (", packed.manifest.name, packed.hash);
        Some(Shipped {
            hash: packed.hash,
            what,
            files: Some(packed.paths.len()),
            bytes: packed.bytes,
        })
    } else {
        None
    };
    let (_, federation) = config.federation(target.federation.as_deref())?;
    // Read before connecting: options that cannot be simulated start no SuperLink.
    let simulation = match &federation.simulation {
        Some(local) => {
            let (simulation, warning) = crate::simulation::from_options(&local.options)?;
            if let Some(warning) = warning {
                eprintln!(
                    "{}",
                    output::paint(&format!("Warning: {warning}"), colour::YELLOW)
                );
            }
            Some(simulation)
        }
        None => None,
    };
    let mut client = ControlClient::connect(&federation).await?;
    let bundle = match &shipped {
        Some(shipped) => {
            let signatures = crate::bundle::signatures_for(&target.app, shipped.hash)?;
            let signed = signatures.len();
            let sent = client
                .offer_bundle(shipped.hash, &shipped.bytes, signatures)
                .await?;
            if target.format == Format::Default {
                let how = if sent {
                    "sent"
                } else {
                    "already on the SuperLink"
                };
                let files = shipped
                    .files
                    .map(|files| format!("{files} files, "))
                    .unwrap_or_default();
                eprintln!(
                    "{}{files}{} bytes, {signed} signatures): {how}",
                    shipped.what,
                    shipped.bytes.len()
                );
            }
            Some(shipped.hash)
        }
        None => None,
    };
    let run_id = match (simulation, bundle) {
        (Some(simulation), bundle) => {
            let run = match bundle {
                Some(bundle) => SimulatedRun::Bundle {
                    bundle,
                    config: run_config,
                },
                None => SimulatedRun::App {
                    app_name: app.name.clone(),
                    app_version: app.version.clone(),
                    config: run_config,
                },
            };
            if target.format == Format::Default {
                eprintln!(
                    "Simulating {} virtual SuperNodes, {} client apps at once",
                    simulation.num_supernodes, simulation.workers
                );
            }
            client.start_simulation(run, simulation).await?
        }
        (None, Some(bundle)) => client.start_bundled_run(bundle, run_config).await?,
        (None, None) => {
            client
                .start_run(app.name.clone(), app.version.clone(), run_config)
                .await?
        }
    };
    if target.format == Format::Json && !stream {
        let hash = shipped.as_ref().map(|shipped| shipped.hash.to_string());
        super::print_json(
            &json!({"success": true, "run-id": run_id.to_string(), "fab-hash": hash}),
        );
    } else if target.format == Format::Default {
        println!("Successfully started run {run_id}");
    }
    if !stream {
        client.close().await;
        return Ok(());
    }
    let outcome = follow(&mut client, run_id, target.format).await;
    // Why a run did not complete is its details: the last line says it.
    let details = match &outcome {
        Ok(status) if *status != RunStatus::Completed => client
            .list_runs(Some(run_id))
            .await
            .ok()
            .and_then(|runs| runs.into_iter().next())
            .map(|run| run.details),
        _ => None,
    };
    client.close().await;
    finish(run_id, outcome?, details.as_deref(), target.format)
}

/// Exits non-zero unless the run completed, saying why.
fn finish(
    run_id: RunId,
    status: RunStatus,
    details: Option<&str>,
    format: Format,
) -> Result<(), CliError> {
    if format == Format::Json {
        // The last line of a JSON Lines stream: compact, like the log lines before it.
        super::print_json_line(
            &json!({"success": status == RunStatus::Completed, "run-id": run_id.to_string(), "status": status.as_str(), "status-details": details.unwrap_or_default()}),
        );
    }
    if status == RunStatus::Completed {
        Ok(())
    } else {
        let why = details
            .filter(|d| !d.is_empty())
            .map(|d| format!(": {}", wire::text::escape_controls(d)))
            .unwrap_or_default();
        Err(CliError::Request(format!(
            "run {run_id} {}{why}",
            status.as_str()
        )))
    }
}

fn print_line(line: &LogLine, format: Format) {
    let text = match format {
        Format::Json => wire::control_json::log_line(line).to_string(),
        // Escaped again here: a broker older than the escaping may have stored raw text.
        Format::Default => wire::text::escape_controls(&line.text).to_string(),
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        // The reader went away (`flwr log RUN --show | head`): stop quietly, as Unix tools do,
        // where `println!` would panic.
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("flwr: cannot write the run's log: {error}");
        std::process::exit(1);
    }
}

/// Prints a run's log as it grows until the run finishes; returns its final status.
async fn follow(
    client: &mut ControlClient,
    run_id: RunId,
    format: Format,
) -> Result<RunStatus, CliError> {
    let mut log = client.follow_log(run_id, 0).await?;
    loop {
        let page = log.next_page().await?;
        for line in &page.lines {
            print_line(line, format);
        }
        if let Some(status) = page.finished {
            return Ok(status);
        }
    }
}

/// `flwr log`.
pub async fn log(target: &Target, run_id: u64, stream: bool) -> Result<(), CliError> {
    let run_id = RunId(run_id);
    let mut client = ControlClient::for_target(target).await?;
    if stream {
        let status = follow(&mut client, run_id, target.format).await;
        client.close().await;
        let status = status?;
        if target.format == Format::Default {
            println!("Run {run_id} {}", status.as_str());
        }
        return Ok(());
    }
    let printed = print_log_pages(&mut client, run_id, target.format).await;
    client.close().await;
    printed
}

/// Prints a run's stored log, one bounded page per request, until a page is empty or says the run
/// finished.
async fn print_log_pages(
    client: &mut ControlClient,
    run_id: RunId,
    format: Format,
) -> Result<(), CliError> {
    let mut after = 0;
    loop {
        let page = client.log_page(run_id, after).await?;
        for line in &page.lines {
            print_line(line, format);
        }
        match page.lines.last() {
            Some(last) if page.finished.is_none() => after = last.index + 1,
            _ => return Ok(()),
        }
    }
}

/// `flwr stop`.
pub async fn stop(target: &Target, run_id: u64) -> Result<(), CliError> {
    let run_id =
        ControlClient::once(target, async |client| client.stop_run(RunId(run_id)).await).await?;
    match target.format {
        Format::Json => super::print_json(&json!({"success": true, "run-id": run_id.to_string()})),
        Format::Default => println!("Run {run_id} stopped."),
    }
    Ok(())
}

fn status_cell(status: RunStatus) -> String {
    let colour = match status {
        RunStatus::Completed => colour::GREEN,
        RunStatus::Pending | RunStatus::Starting | RunStatus::Running => colour::YELLOW,
        RunStatus::Failed => colour::RED,
        RunStatus::Stopped => colour::GREY,
    };
    output::paint(status.as_str(), colour)
}

/// Elapsed time of a run: from starting to finished, or to now while it is active.
/// The app cell: name, version, and the bundle's short hash (`built-in` without a bundle).
fn app_cell(run: &RunInfo) -> String {
    let hash = run
        .bundle
        .map(|hash| hash.short())
        .unwrap_or_else(|| "built-in".to_string());
    format!("{}=={} ({hash})", run.app_name, run.app_version)
}

/// The run table: Run ID | App | Status | Elapsed | Status Changed @.
pub fn run_table(runs: &[RunInfo], now: u64) -> String {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|run| {
            vec![
                run.run_id.to_string(),
                app_cell(run),
                status_cell(run.status),
                wire::control_json::run_elapsed(run, now),
                output::timestamp(run.status_changed_at_ms()),
            ]
        })
        .collect();
    output::table(
        &["Run ID", "App", "Status", "Elapsed", "Status Changed @"],
        &rows,
    )
}

/// `flwr ls`.
pub async fn list(
    target: &Target,
    run_id: Option<u64>,
    limit: Option<u64>,
) -> Result<(), CliError> {
    let mut runs = ControlClient::once(target, async |client| {
        client.list_runs(run_id.map(RunId)).await
    })
    .await?;
    if let Some(limit) = limit {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        runs.sort_by_key(|run| std::cmp::Reverse(run.pending_at_ms));
        runs.truncate(limit);
    }
    let now = now_ms();
    match (target.format, run_id, runs.first()) {
        (Format::Json, _, _) => super::print_json(&json!({
            "success": true,
            "runs": runs.iter().map(|run| wire::control_json::run(run, now)).collect::<Vec<_>>(),
        })),
        (Format::Default, Some(_), Some(run)) => {
            let time = |ms: Option<u64>| ms.map(output::timestamp).unwrap_or_else(|| "-".into());
            let rows = vec![
                vec!["Run ID".into(), run.run_id.to_string()],
                vec![
                    "App".into(),
                    format!("{}=={}", run.app_name, run.app_version),
                ],
                vec!["Status".into(), status_cell(run.status)],
                vec![
                    "Details".into(),
                    if run.details.is_empty() {
                        "-".into()
                    } else {
                        wire::text::escape_controls(&run.details).into_owned()
                    },
                ],
                vec!["Owner".into(), run.owner.clone()],
                vec!["Elapsed".into(), wire::control_json::run_elapsed(run, now)],
                vec!["Pending @".into(), output::timestamp(run.pending_at_ms)],
                vec!["Starting @".into(), time(run.starting_at_ms)],
                vec!["Running @".into(), time(run.running_at_ms)],
                vec!["Finished @".into(), time(run.finished_at_ms)],
            ];
            print!("{}", output::table(&["Field", "Value"], &rows));
        }
        (Format::Default, _, _) => output::print_paged(&run_table(&runs, now)),
    }
    Ok(())
}

/// `flwr pull`.
pub async fn pull(
    target: &Target,
    run_id: u64,
    out: Option<std::path::PathBuf>,
) -> Result<(), CliError> {
    let run_id = RunId(run_id);
    let artifacts = ControlClient::once(target, async |client| client.pull(run_id).await).await?;
    if artifacts.is_empty() {
        return Err(CliError::Request(format!(
            "run {run_id} stored no artifacts (it has not finished, or its app saves none)"
        )));
    }
    let out = out.unwrap_or_else(|| std::path::PathBuf::from("runs").join(run_id.to_string()));
    std::fs::create_dir_all(&out).map_err(|e| CliError::Io(format!("{}: {e}", out.display())))?;
    let mut files = Vec::new();
    for artifact in &artifacts {
        // Names come from the broker: keep only the file name, never a path.
        let name = std::path::Path::new(&artifact.name)
            .file_name()
            .ok_or_else(|| {
                CliError::Request(format!("artifact with unusable name {:?}", artifact.name))
            })?;
        let path = out.join(name);
        std::fs::write(&path, &artifact.bytes)
            .map_err(|e| CliError::Io(format!("{}: {e}", path.display())))?;
        files.push((path, artifact.bytes.len()));
    }
    match target.format {
        Format::Json => super::print_json(&json!({
            "success": true,
            "run-id": run_id.0,
            "files": files.iter().map(|(p, n)| json!({"path": p, "bytes": n})).collect::<Vec<_>>(),
        })),
        Format::Default => {
            for (path, bytes) in &files {
                println!("{}  ({bytes} bytes)", path.display());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::ConfigRecord;

    #[test]
    fn a_run_in_json_has_flowers_keys_first_and_its_id_as_a_string() {
        // Above 2^53: a JSON number would lose its last digits in jq or JavaScript.
        let run_id = RunId(18_234_121_980_552_467_268);
        let run = RunInfo {
            run_id,
            app_name: "fedavg-cnn".into(),
            app_version: "1.0.0".into(),
            config: ConfigRecord::new(),
            status: RunStatus::Completed,
            details: String::new(),
            owner: "alice".into(),
            pending_at_ms: 1_700_000_000_000,
            starting_at_ms: Some(1_700_000_001_000),
            running_at_ms: Some(1_700_000_002_000),
            finished_at_ms: Some(1_700_000_003_000),
            bundle: Some(wire::BundleHash([0xab; 32])),
        };
        let value = wire::control_json::run(&run, 1_700_000_004_000);
        assert_eq!(value["fab-hash"], "ab".repeat(32));
        assert!(app_cell(&run).ends_with("(abababab)"));
        assert_eq!(value["run-id"], "18234121980552467268");
        assert_eq!(value["fab-name"], "fedavg-cnn");
        assert_eq!(value["fab-version"], "1.0.0");
        assert_eq!(value["status"], "finished:completed");
        let flowers = [
            "run-id",
            "fab-id",
            "fab-name",
            "fab-version",
            "fab-hash",
            "status",
            "status-details",
            "elapsed",
            "pending-at",
            "starting-at",
            "running-at",
            "finished-at",
        ];
        assert_eq!(
            crate::commands::leading_keys(&value, flowers.len()),
            flowers
        );
    }
}
