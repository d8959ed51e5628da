//! Which server app a run executes: a built-in app by name, or what its bundle's manifest names
//! (a built-in app, a program, or a Flower app's ServerApp).

use super::flower::FlowerServerApp;
use super::program::ProgramServerApp;
use crate::state::Shared;
use app_bundle::{Bundle, Component, Manifest};
use flwr_sdk::app::ServerApp;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use wire::BundleHash;
use wire::control::{ControlError, RunInfo};

/// The stored bundle `hash`, checked again as it is read.
pub fn bundle(shared: &Shared, hash: BundleHash) -> Result<Bundle, ControlError> {
    let bytes = shared
        .store
        .bundle(hash)
        .map_err(|e| ControlError::Internal(e.to_string()))?
        .ok_or(ControlError::UnknownBundle(hash))?;
    Bundle::open(&bytes, hash).map_err(|e| ControlError::InvalidBundle(e.to_string()))
}

/// Checks that this broker can run the server app `manifest` names: a built-in app it has, or a
/// program (checked with the bundle: there, and executable, when it is one of its files).
pub fn check_server_app(shared: &Shared, manifest: &Manifest) -> Result<(), ControlError> {
    match &manifest.serverapp {
        Component::Builtin(name) if shared.apps.get(name).is_none() => {
            Err(ControlError::InvalidBundle(format!(
                "serverapp {name:?} is not a built-in app of this SuperLink ({})",
                shared.apps.names().join(", ")
            )))
        }
        // Refused before a run exists: without Flower's runtime here it could only fail.
        Component::Flower(_) => {
            super::flower::find_program(shared.config.flwr_serverapp.as_deref())
                .map(|_| ())
                .map_err(|reason| ControlError::InvalidBundle(wire::text::sanitize(&reason, 512)))
        }
        _ => Ok(()),
    }
}

/// How a run's server app executes.
pub enum AppRun {
    /// A built-in app, in the SuperLink's process on a blocking thread of its own.
    InProcess(Arc<dyn ServerApp>),
    /// A bundle's program, in a process the SuperLink supervises.
    Program(ProgramServerApp),
    /// A FAB's ServerApp, in Flower's `flwr-serverapp`, which the SuperLink supervises.
    Flower(FlowerServerApp),
}

/// The server app of a stored run: a built-in app by name, or what its bundle names, which for
/// a supervised app runs until `cancel`.
pub fn server_app_of(
    shared: &Arc<Shared>,
    run: &RunInfo,
    cancel: &CancellationToken,
) -> Result<AppRun, String> {
    let Some(hash) = run.bundle else {
        return shared
            .apps
            .get(&run.app_name)
            .map(AppRun::InProcess)
            .ok_or_else(|| {
                format!(
                    "unknown app {:?}: this SuperLink has {}",
                    run.app_name,
                    shared.apps.names().join(", ")
                )
            });
    };
    let bundle = bundle(shared, hash).map_err(|e| e.to_string())?;
    check_server_app(shared, &bundle.manifest).map_err(|e| e.to_string())?;
    match bundle.manifest.serverapp.clone() {
        Component::Builtin(name) => shared
            .apps
            .get(&name)
            .map(AppRun::InProcess)
            .ok_or_else(|| format!("unknown app {name:?}")),
        Component::Flower(_) => Ok(AppRun::Flower(FlowerServerApp {
            shared: shared.clone(),
            bundle: Arc::new(bundle),
            cancel: cancel.clone(),
        })),
        Component::Program(program) => Ok(AppRun::Program(ProgramServerApp {
            shared: shared.clone(),
            bundle: Arc::new(bundle),
            program,
            cancel: cancel.clone(),
        })),
    }
}
