//! Flower's Control API over HTTP (on [`crate::flower_http`]'s port): where Flower 1.42's own
//! `flwr run`, `ls`, `stop`, `log` and `supernode` reach this SuperLink. The
//! protocol is `flower_runtime::control`'s; this is its host: the store's runs and logs, and the
//! runner's stop. Flower's open-source SuperLink has no accounts, so whoever reaches the port is
//! an operator: it answers loopback clients only, acting as the local operator, and it is not
//! served when operators sign in with keys (their `flwr` is this project's).

use crate::runs::runner;
use crate::state::Shared;
use std::sync::Weak;
use wire::RunId;
use wire::control::{ControlError, LogLine, NodeInfo, RunInfo, RunStatus};

/// The operator name calls over this API act as.
const OPERATOR: &str = "local";

/// The runs and logs Flower's `flwr` sees. Weak: a connection that outlives the broker must not
/// keep its database open.
pub struct Host(pub Weak<Shared>);

fn gone() -> ControlError {
    ControlError::Internal("the SuperLink is shutting down".into())
}

fn store_error(error: crate::store::StoreError) -> ControlError {
    ControlError::Internal(error.to_string())
}

impl flower_runtime::control::ControlHost for Host {
    fn start_run(
        &self,
        archive: Vec<u8>,
        overrides: wire::ConfigRecord,
    ) -> Result<RunId, ControlError> {
        let shared = self.0.upgrade().ok_or_else(gone)?;
        if archive.len() as u64 > app_bundle::MAX_BUNDLE_BYTES {
            return Err(ControlError::InvalidBundle(format!(
                "the FAB is {} bytes, over the limit of {} bytes",
                archive.len(),
                app_bundle::MAX_BUNDLE_BYTES
            )));
        }
        if !app_bundle::fab::is_fab(&archive) {
            return Err(ControlError::InvalidBundle("the app is not a FAB".into()));
        }
        // Flower's SuperLink fuses the FAB's own config with the overrides; so does this one,
        // refusing a key the app does not have (a typo would leave the default in place).
        let bad = |e: app_bundle::BundleError| ControlError::InvalidBundle(e.to_string());
        let defaults = app_bundle::fab::app_config(&archive).map_err(bad)?;
        let mut config = flwr_sdk::config::from_table(&defaults)
            .map_err(|e| ControlError::InvalidRunConfig(format!("the app's config: {e}")))?;
        for (key, value) in overrides.iter() {
            let Some(slot) = config.get_mut(key) else {
                let known: Vec<&str> = config.names().collect();
                return Err(ControlError::InvalidRunConfig(format!(
                    "unknown key {key:?}; the app's config has: {}",
                    known.join(", ")
                )));
            };
            *slot = value.clone();
        }
        let hash = app_bundle::hash_of(&archive);
        if !shared.store.has_bundle(hash).map_err(store_error)? {
            app_bundle::Bundle::open(&archive, hash).map_err(bad)?;
            shared
                .store
                .put_bundle(hash, &archive)
                .map_err(store_error)?;
            tracing::info!(%hash, "FAB stored from Flower's flwr run");
        }
        runner::start_bundled(&shared, OPERATOR, hash, config, None).map(|info| info.run_id)
    }

    fn runs(&self, run_id: Option<RunId>) -> Result<Vec<RunInfo>, ControlError> {
        let shared = self.0.upgrade().ok_or_else(gone)?;
        match run_id {
            Some(run_id) => match shared.store.run(run_id).map_err(store_error)? {
                Some(run) => Ok(vec![run]),
                None => Err(ControlError::UnknownRun(run_id)),
            },
            None => shared.store.list_runs().map_err(store_error),
        }
    }

    fn stop(&self, run_id: RunId) -> Result<(), ControlError> {
        let shared = self.0.upgrade().ok_or_else(gone)?;
        runner::stop(&shared, run_id, OPERATOR)
    }

    fn register_node(&self, public_key: &str) -> Result<wire::NodeId, ControlError> {
        let shared = self.0.upgrade().ok_or_else(gone)?;
        match crate::control::register(&shared, OPERATOR, public_key)? {
            wire::control::ControlResponse::NodeRegistered { node_id } => Ok(node_id),
            other => Err(ControlError::Internal(format!("unexpected {other:?}"))),
        }
    }

    fn nodes(&self) -> Result<(Vec<NodeInfo>, std::time::Duration), ControlError> {
        let shared = self.0.upgrade().ok_or_else(gone)?;
        let nodes = shared.store.list_nodes().map_err(store_error)?;
        Ok((nodes, shared.config.heartbeat_interval))
    }

    fn unregister_node(&self, node_id: wire::NodeId) -> Result<(), ControlError> {
        let shared = self.0.upgrade().ok_or_else(gone)?;
        crate::control::unregister(&shared, OPERATOR, node_id).map(|_| ())
    }

    fn artifacts_archive(&self, run_id: RunId) -> Result<Vec<u8>, ControlError> {
        let shared = self.0.upgrade().ok_or_else(gone)?;
        let mut archive = app_bundle::fab::zip::ZipWriter::default();
        for name in shared.store.artifact_names(run_id).map_err(store_error)? {
            if let Some(bytes) = shared.store.artifact(run_id, &name).map_err(store_error)? {
                archive
                    .add(&name, &bytes)
                    .map_err(|e| ControlError::Internal(format!("{} is too large", e.0)))?;
            }
        }
        archive
            .finish()
            .map_err(|e| ControlError::Internal(format!("{} is too large", e.0)))
    }

    fn logs(
        &self,
        run_id: RunId,
        after: u64,
        max_bytes: usize,
    ) -> Result<(Vec<LogLine>, bool, RunStatus), ControlError> {
        let shared = self.0.upgrade().ok_or_else(gone)?;
        // The status first: a run that finished has all its lines stored by then.
        let status = shared
            .store
            .run(run_id)
            .map_err(store_error)?
            .ok_or(ControlError::UnknownRun(run_id))?
            .status;
        let (lines, more) = shared
            .store
            .logs_page(run_id, after, max_bytes)
            .map_err(store_error)?;
        Ok((lines, more, status))
    }
}
