//! The apps every broker and node ship with, and the registries that find apps by name.

pub mod fedavg_cnn;
#[cfg(test)]
mod resume_tests;
pub mod vector_add;

use flwr_sdk::app::{ClientApp, ServerApp};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Server apps by name (the `[app] name` of flwr.toml).
#[derive(Clone, Default)]
pub struct ServerApps {
    /// The apps.
    apps: BTreeMap<String, Arc<dyn ServerApp>>,
}

impl std::fmt::Debug for ServerApps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.apps.keys()).finish()
    }
}

impl std::fmt::Debug for ClientApps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.apps.keys()).finish()
    }
}

impl ServerApps {
    /// The built-in server apps.
    pub fn builtin() -> Self {
        let mut apps = ServerApps::default();
        apps.add(vector_add::NAME, Arc::new(vector_add::Server));
        apps.add(fedavg_cnn::NAME, Arc::new(fedavg_cnn::Server));
        apps
    }

    /// Adds (or replaces) an app.
    pub fn add(&mut self, name: &str, app: Arc<dyn ServerApp>) {
        self.apps.insert(name.to_string(), app);
    }

    /// The app called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn ServerApp>> {
        self.apps.get(name).cloned()
    }

    /// Names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.apps.keys().map(String::as_str).collect()
    }
}

/// Client apps by name.
#[derive(Clone, Default)]
pub struct ClientApps {
    /// The apps.
    apps: BTreeMap<String, Arc<dyn ClientApp>>,
}

impl ClientApps {
    /// The built-in client apps.
    pub fn builtin() -> Self {
        let mut apps = ClientApps::default();
        apps.add(vector_add::NAME, Arc::new(vector_add::Client));
        apps
    }

    /// Adds (or replaces) an app.
    pub fn add(&mut self, name: &str, app: Arc<dyn ClientApp>) {
        self.apps.insert(name.to_string(), app);
    }

    /// The app called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn ClientApp>> {
        self.apps.get(name).cloned()
    }
}
