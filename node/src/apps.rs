//! The client apps a node serves, built in one place for `flower-supernode` (in-process isolation)
//! and `flwr-clientapp` (every other mode), so an app added here runs under every isolation.

use flwr_sdk::app::{AppError, ClientApp, ClientContext};
use model::apps::ClientApps;
use model::cnn::backend::{BackendChoice, TrainingDevice};
use std::sync::{Arc, OnceLock};
use wire::message::{ErrorCode, MessageError};
use wire::{Message, MessageBody, RecordDict};

/// Runs the app called `app_name` on `message` off the async runtime. An unknown app, an error and
/// a panic each become an error reply, with Flower's error code.
pub async fn answer(
    apps: &ClientApps,
    app_name: &str,
    message: &Message,
    context: ClientContext,
) -> MessageBody {
    let Some(app) = apps.get(app_name) else {
        return MessageBody::Error(MessageError {
            code: ErrorCode::UnknownApp,
            reason: format!("node {} has no app named {app_name:?}", context.node_id),
        });
    };
    let message = message.clone();
    let outcome = tokio::task::spawn_blocking(move || app.handle(&message, &context))
        .await
        .unwrap_or_else(|panic| Err(AppError::new(format!("the client app crashed: {panic}"))));
    match outcome {
        Ok(content) => MessageBody::Content(content),
        Err(error) => MessageBody::Error(MessageError {
            code: ErrorCode::ClientAppRaisedException,
            reason: error.to_string(),
        }),
    }
}

/// The built-in apps and the CNN, which trains on a device of `backend`.
pub fn client_apps(cnn: Arc<CnnClient>) -> ClientApps {
    let mut apps = ClientApps::builtin();
    apps.add(model::apps::fedavg_cnn::NAME, cnn);
    apps
}

/// The CNN client, which picks its training device on first use: only the process that trains
/// sets one up (a node whose apps run in `flwr-clientapp` processes never does).
pub struct CnnClient {
    /// The device wanted.
    backend: BackendChoice,
    /// The client on its device, or why no device could be had.
    client: OnceLock<Result<model::cnn::client::Client, String>>,
}

impl CnnClient {
    /// A CNN client that will train on a device of `backend`.
    pub fn new(backend: BackendChoice) -> Self {
        CnnClient {
            backend,
            client: OnceLock::new(),
        }
    }

    /// Sets up the device now; returns what it is, or why there is none.
    pub fn prepare(&self) -> Result<String, String> {
        self.client()
            .map(|client| client.device_description().to_string())
    }

    fn client(&self) -> Result<&model::cnn::client::Client, String> {
        self.client
            .get_or_init(|| {
                model::cnn::backend::select(self.backend)
                    .map(|device: TrainingDevice| model::cnn::client::Client::new(device))
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl ClientApp for CnnClient {
    fn handle(&self, message: &Message, context: &ClientContext) -> Result<RecordDict, AppError> {
        self.client()
            .map_err(AppError::new)?
            .handle(message, context)
    }
}
