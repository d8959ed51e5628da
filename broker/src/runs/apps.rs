//! Which server app a run executes: a built-in app by name, or what its bundle's manifest names.

use crate::state::Shared;
use model::app::ServerApp;
use model::bundle::{Bundle, Component, Manifest};
use std::sync::Arc;
use wire::BundleHash;
use wire::control::{ControlError, RunInfo};

/// The manifest of the stored bundle `hash`, checked again as it is read.
pub fn manifest(shared: &Shared, hash: BundleHash) -> Result<Manifest, ControlError> {
    let bytes = shared
        .store
        .bundle(hash)
        .map_err(|e| ControlError::Internal(e.to_string()))?
        .ok_or(ControlError::UnknownBundle(hash))?;
    Bundle::open(&bytes, hash)
        .map(|bundle| bundle.manifest)
        .map_err(|e| ControlError::InvalidBundle(e.to_string()))
}

/// The server app a bundle names, if this broker can run it.
pub fn server_app(
    shared: &Shared,
    manifest: &Manifest,
) -> Result<Arc<dyn ServerApp>, ControlError> {
    match &manifest.serverapp {
        Component::Builtin(name) => shared.apps.get(name).ok_or_else(|| {
            ControlError::InvalidBundle(format!(
                "serverapp {name:?} is not a built-in app of this SuperLink ({})",
                shared.apps.names().join(", ")
            ))
        }),
        Component::Program(program) => Err(ControlError::InvalidBundle(format!(
            "serverapp {:?} is a program; this SuperLink runs built-in server apps only ({})",
            program.command,
            shared.apps.names().join(", ")
        ))),
    }
}

/// The server app of a stored run: named by its bundle's manifest, or by its name for a
/// built-in app started without a bundle.
pub fn server_app_of(shared: &Shared, run: &RunInfo) -> Result<Arc<dyn ServerApp>, String> {
    match run.bundle {
        Some(hash) => manifest(shared, hash)
            .and_then(|manifest| server_app(shared, &manifest))
            .map_err(|e| e.to_string()),
        None => shared.apps.get(&run.app_name).ok_or_else(|| {
            format!(
                "unknown app {:?}: this SuperLink has {}",
                run.app_name,
                shared.apps.names().join(", ")
            )
        }),
    }
}
