//! Flower's runtime API over HTTP/1.1, as `flwr-clientapp` and `flwr-serverapp` call it: `POST
//! /v1/runtime/<call>` with a protobuf body, the task's token in `flwr-task-token`, and Flower's
//! version headers. This layer checks what Flower's own server checks (method, path, content
//! type, versions, exactly one live token, a body within [`MAX_BODY`] read no further than that)
//! and answers errors as Flower does (a JSON `{"code", "detail"}` with Flower's status and code);
//! what each call does is the [`Host`]'s. A body is read only for a live token, and within
//! [`BODY_TIMEOUT`]; a connection is closed (after its request in flight) once it is
//! [`MAX_CONNECTION_AGE`] old.
//!
//! Any local account can connect to the port, so connections are admitted as the daemon's other
//! local APIs admit them: at [`MAX_CONNECTIONS`], a new connection closes the oldest one that has
//! never shown a live token, and waits only while every open connection has shown one (only the
//! daemon's own apps hold tokens). Idle local sockets cannot shut the apps out.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The largest request body read: a pushed object is at most a 5 MiB chunk and its head.
pub const MAX_BODY: usize = 8 << 20;

/// Most connections open at once (an app keeps three or four: its calls, heartbeats and two
/// object workers).
pub const MAX_CONNECTIONS: usize = 256;

/// How long a client has to send a request's headers (Flower's clients time out after 30 s).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client has to send a request's body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a connection is kept; the app's client opens another when it needs one.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);

/// The Flower release whose apps this serves (major.minor).
pub const FLOWER_VERSION: &str = "1.42";

const PREFIX: &str = "/v1/runtime/";
const PROTOBUF: &str = "application/protobuf";

/// The calls Flower's app processes make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `send-task-heartbeat`.
    SendTaskHeartbeat,
    /// `pull-task-input`.
    PullTaskInput,
    /// `pull-messages`.
    PullMessages,
    /// `pull-object`.
    PullObject,
    /// `confirm-message-received`.
    ConfirmMessageReceived,
    /// `push-messages`.
    PushMessages,
    /// `push-object`.
    PushObject,
    /// `push-task-output`.
    PushTaskOutput,
    /// `get-nodes` (server apps).
    GetNodes,
    /// `push-logs` (server apps).
    PushLogs,
}

impl Endpoint {
    const ALL: [Endpoint; 10] = [
        Endpoint::SendTaskHeartbeat,
        Endpoint::PullTaskInput,
        Endpoint::PullMessages,
        Endpoint::PullObject,
        Endpoint::ConfirmMessageReceived,
        Endpoint::PushMessages,
        Endpoint::PushObject,
        Endpoint::PushTaskOutput,
        Endpoint::GetNodes,
        Endpoint::PushLogs,
    ];

    /// The last part of the call's path.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::SendTaskHeartbeat => "send-task-heartbeat",
            Endpoint::PullTaskInput => "pull-task-input",
            Endpoint::PullMessages => "pull-messages",
            Endpoint::PullObject => "pull-object",
            Endpoint::ConfirmMessageReceived => "confirm-message-received",
            Endpoint::PushMessages => "push-messages",
            Endpoint::PushObject => "push-object",
            Endpoint::PushTaskOutput => "push-task-output",
            Endpoint::GetNodes => "get-nodes",
            Endpoint::PushLogs => "push-logs",
        }
    }

    /// The call a path names.
    pub fn of_path(path: &str) -> Option<Endpoint> {
        let name = path.strip_prefix(PREFIX)?;
        Endpoint::ALL.into_iter().find(|e| e.name() == name)
    }
}

/// An error answer: the HTTP status, Flower's error code and the text the app logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Flower's code (`flwr/common/constant.py`, `ApiErrorCode`).
    pub code: u32,
    /// What the app is told.
    pub detail: String,
}

impl ApiError {
    /// An answer with `status`, `code` and `detail`.
    pub fn new(status: u16, code: u32, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
        }
    }

    /// 401, code 1008: no live task holds the token. The app stops on it.
    pub fn invalid_token() -> Self {
        ApiError::new(401, 1008, "Invalid token.")
    }

    /// 400, code 1003: the body is not the request's protobuf.
    pub fn bad_body(why: impl std::fmt::Display) -> Self {
        ApiError::new(400, 1003, format!("Invalid request body: {why}"))
    }
}

/// The future a call's answer comes from: the response's protobuf bytes, or an error.
pub type CallFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, ApiError>> + Send>>;

/// What answers the calls: the daemon's side of its apps' tasks.
pub trait Host: Send + Sync + 'static {
    /// Whether a live task holds `token` (checked before a body is read).
    fn admits(&self, token: &str) -> bool;

    /// Answers `endpoint` for the task holding `token`, given the request's protobuf `body`.
    fn call(&self, endpoint: Endpoint, token: String, body: Bytes) -> CallFuture;
}

/// Serves `host` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, host: Arc<dyn Host>, shutdown: CancellationToken) {
    let connections = Arc::new(Connections::default());
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "runtime API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let entry = tokio::select! {
            _ = shutdown.cancelled() => return,
            entry = connections.enter() => entry,
        };
        let host = host.clone();
        let shutdown = shutdown.clone();
        let connections = connections.clone();
        tokio::spawn(async move {
            // Leaves the table however the task ends, a panic included.
            let _leave = Leave {
                connections,
                id: entry.id,
            };
            let admitted = entry.admitted.clone();
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let host = host.clone();
                let admitted = admitted.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        answer(host.as_ref(), &admitted, request).await,
                    )
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = tokio::time::sleep(MAX_CONNECTION_AGE) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(BODY_TIMEOUT, connection).await;
                }
                // Closed for a newer connection before it ever showed a live token.
                _ = entry.evicted.cancelled() => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

/// Takes a connection out of the table when dropped.
struct Leave {
    connections: Arc<Connections>,
    id: u64,
}

impl Drop for Leave {
    fn drop(&mut self) {
        self.connections.leave(self.id);
    }
}

/// The open connections, oldest first, and whether each has shown a live token.
#[derive(Default)]
struct Connections {
    table: std::sync::Mutex<ConnectionTable>,
    /// Told when a connection leaves.
    left: tokio::sync::Notify,
}

#[derive(Default)]
struct ConnectionTable {
    next_id: u64,
    open: std::collections::BTreeMap<u64, OpenConnection>,
}

/// One open connection, as the table and the connection's task both see it.
#[derive(Clone)]
struct OpenConnection {
    id: u64,
    /// Set once a request on it showed a live token: then it is the daemon's own app's.
    admitted: Arc<AtomicBool>,
    /// Cancelled to close it for a newer connection.
    evicted: CancellationToken,
}

impl Connections {
    /// A place for a new connection: a free one, or the one of the oldest connection that never
    /// showed a live token (closed for it); waits only while every connection has shown one.
    async fn enter(&self) -> OpenConnection {
        loop {
            let left = self.left.notified();
            tokio::pin!(left);
            left.as_mut().enable();
            if let Some(entry) = self.try_enter() {
                return entry;
            }
            left.await;
        }
    }

    fn try_enter(&self) -> Option<OpenConnection> {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if table.open.len() >= MAX_CONNECTIONS {
            let oldest_unadmitted = table
                .open
                .values()
                .find(|open| !open.admitted.load(Ordering::Acquire))
                .map(|open| open.id)?;
            if let Some(evicted) = table.open.remove(&oldest_unadmitted) {
                evicted.evicted.cancel();
            }
        }
        let id = table.next_id;
        table.next_id += 1;
        let entry = OpenConnection {
            id,
            admitted: Arc::default(),
            evicted: CancellationToken::new(),
        };
        table.open.insert(id, entry.clone());
        Some(entry)
    }

    fn leave(&self, id: u64) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if table.open.remove(&id).is_some() {
            self.left.notify_one();
        }
    }
}

fn respond(status: u16, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn error_response(error: &ApiError) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"code": error.code, "detail": error.detail});
    respond(
        error.status,
        "application/json",
        body.to_string().into_bytes(),
    )
}

/// Whether the request's body is protobuf, as its `Content-Type` says (parameters and case
/// aside, as Flower's routers read it).
pub(crate) fn has_protobuf_body(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case(PROTOBUF))
}

/// The one value of header `name`, `Ok(None)` when absent, `Err` when repeated or not text.
fn single_header<'r>(request: &'r Request<Incoming>, name: &str) -> Result<Option<&'r str>, ()> {
    let mut values = request.headers().get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(());
    }
    first.map(|v| v.to_str().map_err(|_| ())).transpose()
}

/// Flower's version check: no version headers, or all three naming this Flower release.
fn check_versions(request: &Request<Incoming>) -> Result<(), ApiError> {
    let mismatch = || {
        ApiError::new(
            412,
            1001,
            format!("This runtime serves Flower {FLOWER_VERSION}."),
        )
    };
    let get = |name| single_header(request, name).map_err(|()| mismatch());
    let (package, version, component) = (
        get("flwr-package-name")?,
        get("flwr-package-version")?,
        get("flwr-component-name")?,
    );
    match (package, version, component) {
        (None, None, None) => Ok(()),
        (Some("flwr" | "flwr-nightly"), Some(version), Some(_))
            if version.split('.').take(2).collect::<Vec<_>>().join(".") == FLOWER_VERSION =>
        {
            Ok(())
        }
        _ => Err(mismatch()),
    }
}

async fn answer(
    host: &dyn Host,
    admitted: &AtomicBool,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if request.uri().path() == "/health" {
        return respond(200, "text/plain", b"OK".to_vec());
    }
    let Some(endpoint) = Endpoint::of_path(request.uri().path()) else {
        return error_response(&ApiError::new(404, 0, "Not Found"));
    };
    if request.method() != Method::POST {
        return error_response(&ApiError::new(405, 0, "Method Not Allowed"));
    }
    if !has_protobuf_body(&request) {
        return error_response(&ApiError::new(
            415,
            1002,
            format!("Content-Type must be {PROTOBUF}."),
        ));
    }
    if let Err(error) = check_versions(&request) {
        return error_response(&error);
    }
    let token = match single_header(&request, "flwr-task-token") {
        Ok(Some(token)) if host.admits(token.trim()) => token.trim().to_string(),
        _ => return error_response(&ApiError::invalid_token()),
    };
    admitted.store(true, Ordering::Release);
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        error_response(&ApiError::new(
            413,
            0,
            format!("Bodies are limited to {MAX_BODY} bytes."),
        ))
    };
    if declared.is_some_and(|length| length > MAX_BODY as u64) {
        return too_large();
    }
    // Read no further than the limit, whatever the headers said, and no longer than the timeout.
    let read = Limited::new(request.into_body(), MAX_BODY).collect();
    let body = match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(_)) => return too_large(),
        Err(_) => return error_response(&ApiError::new(408, 0, "The body took too long.")),
    };
    match host.call(endpoint, token, body).await {
        Ok(response) => respond(200, PROTOBUF, response),
        Err(error) => error_response(&error),
    }
}
