//! Flower's Control API over HTTP, as Flower 1.42's own `flwr ls`, `flwr stop` and `flwr log`
//! call it: `POST /v1/control/<call>` with a protobuf body, Flower's JSON errors, and for
//! `stream-logs` a stream of protobuf frames, each after its length in four big-endian bytes
//! (`application/flower-protobuf-stream`). What a call does is the [`ControlHost`]'s, in this
//! project's own types; this layer checks what Flower's router checks (method, path, content
//! type, a body within [`MAX_BODY`]) and translates.
//!
//! Flower's open-source SuperLink has no accounts, so neither has this API: whoever reaches it
//! is an operator. It therefore answers loopback clients only ([`crate::link`] sees to that),
//! and only requests that name a loopback host and, when a browser sends one, a loopback origin:
//! a web page elsewhere that rebinds its own name to 127.0.0.1 cannot drive it through its
//! visitor's browser. At most [`MAX_UPLOADS`] FABs being read and [`MAX_LOG_STREAMS`] log
//! streams, each request's body within [`BODY_TIMEOUT`]; a log stream polls the host every
//! [`LOG_POLL`] until its run has finished.

use crate::link::{Body, PROTOBUF, error_response, respond};
use crate::proto;
use crate::server::{ApiError, has_protobuf_body};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response};
use prost::Message as _;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wire::RunId;
use wire::control::{ControlError, LogLine, NodeInfo, RunInfo, RunStatus};

/// The largest request body read, but `start-run`'s (every other call's request is a few numbers).
pub const MAX_BODY: usize = 64 << 10;

/// The largest `start-run` body: a FAB at Flower's limit (10 MiB) and its run config.
pub const MAX_START_RUN_BODY: usize = 11 << 20;

/// How long a client has to send a request's body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Most `start-run` bodies (FABs) read at once.
pub const MAX_UPLOADS: usize = 4;

/// Most log streams at once: the other calls always have connections left.
pub const MAX_LOG_STREAMS: usize = 32;

/// How often a log stream looks for new lines.
pub const LOG_POLL: Duration = Duration::from_millis(500);

/// Most log text a stream's first frame carries: `flwr log --show` prints the first frame only,
/// which holds a whole finished log up to this size.
const FIRST_LOG_FRAME_BYTES: usize = 16 << 20;

/// Most log text each later frame carries.
const LOG_FRAME_BYTES: usize = 1 << 20;

/// Where the calls are.
pub const PREFIX: &str = "/v1/control/";
const PROTOBUF_STREAM: &str = "application/flower-protobuf-stream";

/// What answers the calls: the SuperLink's runs and logs. Its methods read the store, so they are
/// called off the async workers.
pub trait ControlHost: Send + Sync + 'static {
    /// Starts a run of the FAB `archive` with its config's defaults and `overrides`.
    fn start_run(
        &self,
        archive: Vec<u8>,
        overrides: wire::ConfigRecord,
    ) -> Result<RunId, ControlError>;

    /// Every run, or the one run `run_id`.
    fn runs(&self, run_id: Option<RunId>) -> Result<Vec<RunInfo>, ControlError>;

    /// Stops a run.
    fn stop(&self, run_id: RunId) -> Result<(), ControlError>;

    /// Registers a node's public key (PEM or an OpenSSH line); its new id.
    fn register_node(&self, public_key: &str) -> Result<wire::NodeId, ControlError>;

    /// Every node in the registry, and how often nodes send heartbeats.
    fn nodes(&self) -> Result<(Vec<NodeInfo>, Duration), ControlError>;

    /// Unregisters a node.
    fn unregister_node(&self, node_id: wire::NodeId) -> Result<(), ControlError>;

    /// A finished run's artifacts, as one ZIP archive.
    fn artifacts_archive(&self, run_id: RunId) -> Result<Vec<u8>, ControlError>;

    /// A run's log lines from index `after` on (within about `max_bytes`), whether more follow,
    /// and the run's status.
    fn logs(
        &self,
        run_id: RunId,
        after: u64,
        max_bytes: usize,
    ) -> Result<(Vec<LogLine>, bool, RunStatus), ControlError>;
}

/// Flower's code and status for this project's Control API errors.
fn api_error(error: ControlError) -> ApiError {
    match error {
        ControlError::UnknownRun(id) => ApiError::new(404, 16, format!("Run ID {id} not found.")),
        ControlError::RunFinished(id) => {
            ApiError::new(412, 18, format!("Run {id} is already finished."))
        }
        ControlError::InvalidKey(why) => ApiError::new(
            412,
            22,
            format!("The provided public key is not valid: {why}"),
        ),
        ControlError::KeyInUse => ApiError::new(412, 23, "Public key already in use."),
        ControlError::UnknownNode(id) | ControlError::AlreadyUnregistered(id) => {
            ApiError::new(404, 24, format!("Node ID {id} not found."))
        }
        ControlError::NotOwner(id) => ApiError::new(
            412,
            28,
            format!("Node {id} not found or you are not its owner."),
        ),
        ControlError::InvalidRunConfig(why) => {
            ApiError::new(412, 15, format!("Invalid run configuration: {why}"))
        }
        ControlError::InvalidBundle(why) | ControlError::UnknownApp(why) => ApiError::new(
            500,
            14,
            format!("Failed to create or initialize the run: {why}"),
        ),
        other => ApiError::new(500, 0, other.to_string()),
    }
}

/// A time as Flower writes it: ISO 8601, UTC, `+00:00`.
pub fn iso(ms: u64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(time)
        .to_string()
        .replace('Z', "+00:00")
}

/// A run as Flower's `Run` message.
pub fn run_to_proto(run: &RunInfo) -> proto::Run {
    let time = |ms: Option<u64>| ms.map(iso).unwrap_or_default();
    let (status, sub_status) = match run.status.as_str().split_once(':') {
        Some((status, sub)) => (status.to_string(), sub.to_string()),
        None => (run.status.as_str().to_string(), String::new()),
    };
    proto::Run {
        run_id: run.run_id.0,
        fab_id: run.app_name.clone(),
        fab_version: run.app_version.clone(),
        fab_hash: run.bundle.map(|hash| hash.to_string()).unwrap_or_default(),
        override_config: run
            .config
            .iter()
            .filter_map(|(name, value)| Some((name.to_string(), crate::records::scalar_of(value)?)))
            .collect(),
        pending_at: iso(run.pending_at_ms),
        starting_at: time(run.starting_at_ms),
        running_at: time(run.running_at_ms),
        finished_at: time(run.finished_at_ms),
        status: Some(proto::RunStatus {
            status,
            sub_status,
            details: run.details.clone(),
        }),
        account_name: run.owner.clone(),
        ..proto::Run::default()
    }
}

/// A node as Flower's `NodeInfo` message.
pub fn node_to_proto(node: &NodeInfo, heartbeat_interval: Duration) -> proto::NodeInfo {
    proto::NodeInfo {
        node_id: node.node_id.0,
        owner_aid: node.owner.clone(),
        owner_name: node.owner.clone(),
        status: node.status.as_str().to_string(),
        registered_at: iso(node.registered_at_ms),
        last_activated_at: node.online_at_ms.map(iso),
        last_deactivated_at: node.offline_at_ms.map(iso),
        unregistered_at: node.unregistered_at_ms.map(iso),
        heartbeat_interval: heartbeat_interval.as_secs_f64(),
        ..proto::NodeInfo::default()
    }
}

/// The Control API: its host and the allowances its calls share.
pub struct Control {
    host: Arc<dyn ControlHost>,
    uploads: Arc<tokio::sync::Semaphore>,
    log_streams: Arc<tokio::sync::Semaphore>,
    /// Whether the port speaks HTTPS (download links say so).
    https: bool,
    /// Download links handed out by `pull-artifacts`: token, run, until when.
    downloads: std::sync::Mutex<Vec<(String, RunId, std::time::Instant)>>,
}

/// Where `flwr pull`'s download links point.
pub const DOWNLOADS: &str = "/v1/artifacts/";

/// How long a download link works.
pub const DOWNLOAD_LIFETIME: Duration = Duration::from_secs(600);

/// Most download links alive at once (the oldest gives way).
pub const MAX_DOWNLOADS: usize = 64;

impl Control {
    /// The Control API over `host`, on a port that speaks HTTPS when `https`.
    pub fn new(host: Arc<dyn ControlHost>, https: bool) -> Arc<Self> {
        Arc::new(Control {
            host,
            uploads: Arc::new(tokio::sync::Semaphore::new(MAX_UPLOADS)),
            log_streams: Arc::new(tokio::sync::Semaphore::new(MAX_LOG_STREAMS)),
            https,
            downloads: std::sync::Mutex::default(),
        })
    }

    /// A download link for run `run_id`'s artifacts, under the `host` the client named.
    fn download_link(&self, host: &str, run_id: RunId) -> String {
        let token: [u8; 16] = rand::random();
        let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
        let now = std::time::Instant::now();
        let mut downloads = self.downloads.lock().unwrap_or_else(|p| p.into_inner());
        downloads.retain(|(_, _, until)| *until > now);
        if downloads.len() >= MAX_DOWNLOADS {
            downloads.remove(0);
        }
        downloads.push((token.clone(), run_id, now + DOWNLOAD_LIFETIME));
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{host}{DOWNLOADS}{token}/run-{run_id}-artifacts.zip")
    }

    /// Serves a download link (`GET` [`DOWNLOADS`]`<token>/<name>`) to a loopback peer: the run's
    /// artifacts as a ZIP archive.
    pub async fn download(&self, request: Request<Incoming>) -> Response<Body> {
        if !names_loopback(&request) {
            return error_response(&ApiError::new(403, 0, "Loopback hosts only."));
        }
        if request.method() != Method::GET {
            return error_response(&ApiError::new(405, 0, "Method Not Allowed"));
        }
        let token = request
            .uri()
            .path()
            .strip_prefix(DOWNLOADS)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default();
        let now = std::time::Instant::now();
        let run_id = {
            let downloads = self.downloads.lock().unwrap_or_else(|p| p.into_inner());
            downloads
                .iter()
                .find(|(known, _, until)| known == token && *until > now)
                .map(|(_, run_id, _)| *run_id)
        };
        let Some(run_id) = run_id else {
            return error_response(&ApiError::new(
                404,
                0,
                "No such download link, or it expired: run flwr pull again.",
            ));
        };
        let host = self.host.clone();
        match blocking(move || host.artifacts_archive(run_id)).await {
            Ok(archive) => {
                let mut response = respond(200, "application/zip", archive);
                if let Ok(disposition) = HeaderValue::from_str(&format!(
                    "attachment; filename=\"run-{run_id}-artifacts.zip\""
                )) {
                    response
                        .headers_mut()
                        .insert(hyper::header::CONTENT_DISPOSITION, disposition);
                }
                response
            }
            Err(error) => error_response(&error),
        }
    }

    /// Answers one request under [`PREFIX`] from a loopback peer; a log stream ends at
    /// `shutdown`.
    pub async fn answer(
        &self,
        request: Request<Incoming>,
        shutdown: CancellationToken,
    ) -> Response<Body> {
        answer(self, request, shutdown).await
    }
}

/// The calls served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    RegisterNode,
    ListNodes,
    UnregisterNode,
    StartRun,
    ListRuns,
    StopRun,
    PullArtifacts,
    GetLoginDetails,
    StreamLogs,
}

impl Call {
    fn of_path(path: &str) -> Option<Call> {
        match path.strip_prefix(PREFIX)? {
            "register-node" => Some(Call::RegisterNode),
            "list-nodes" => Some(Call::ListNodes),
            "unregister-node" => Some(Call::UnregisterNode),
            "start-run" => Some(Call::StartRun),
            "list-runs" => Some(Call::ListRuns),
            "stop-run" => Some(Call::StopRun),
            "pull-artifacts" => Some(Call::PullArtifacts),
            "get-login-details" => Some(Call::GetLoginDetails),
            "stream-logs" => Some(Call::StreamLogs),
            _ => None,
        }
    }
}

/// Runs a host call off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ControlError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(api_error),
        Err(_) => Err(ApiError::new(500, 0, "the SuperLink failed to answer")),
    }
}

/// Whether the request names a loopback host and, if a browser sent one, a loopback origin.
fn names_loopback(request: &Request<Incoming>) -> bool {
    let text = |name| {
        request
            .headers()
            .get(name)
            .map(|value: &HeaderValue| value.to_str().unwrap_or("\u{0}"))
    };
    let host_ok = text(hyper::header::HOST).is_some_and(ops::http::is_loopback_host);
    let origin_ok = text(hyper::header::ORIGIN).is_none_or(ops::http::is_loopback_origin);
    host_ok && origin_ok
}

async fn answer(
    control: &Control,
    request: Request<Incoming>,
    shutdown: CancellationToken,
) -> Response<Body> {
    let host = control.host.clone();
    let named_host = request
        .headers()
        .get(hyper::header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    if !names_loopback(&request) {
        return error_response(&ApiError::new(
            403,
            0,
            "This API answers requests for a loopback host only (localhost, 127.0.0.1, [::1]).",
        ));
    }
    let path = request.uri().path();
    let Some(call) = Call::of_path(path) else {
        let detail = if path.starts_with(PREFIX) {
            "flower-superlink serves `flwr run`, `ls`, `stop`, `log`, `pull` and `supernode \
             register`, `list` and `unregister` of Flower's CLI; use flower-rs's `flwr` for the rest"
        } else {
            "Not Found"
        };
        return error_response(&ApiError::new(404, 0, detail));
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
    // A FAB is read only with one of the few upload permits: a flood of them cannot hold
    // gigabytes at once.
    let (limit, _upload) = if call == Call::StartRun {
        match control.uploads.clone().acquire_owned().await {
            Ok(permit) => (MAX_START_RUN_BODY, Some(permit)),
            Err(_) => return error_response(&ApiError::new(503, 0, "Shutting down.")),
        }
    } else {
        (MAX_BODY, None)
    };
    let read = Limited::new(request.into_body(), limit).collect();
    let body = match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(_)) => {
            return error_response(&ApiError::new(
                413,
                0,
                format!("Bodies are limited to {limit} bytes."),
            ));
        }
        Err(_) => return error_response(&ApiError::new(408, 0, "The body took too long.")),
    };
    let bad_body = |why: prost::DecodeError| {
        error_response(&ApiError::new(
            400,
            1003,
            format!("Invalid request body: {why}"),
        ))
    };
    let result = match call {
        Call::RegisterNode => match proto::RegisterNodeRequest::decode(body) {
            Ok(request) => {
                let Ok(key) = String::from_utf8(request.public_key) else {
                    return error_response(&ApiError::new(
                        412,
                        22,
                        "The provided public key is not valid: not text",
                    ));
                };
                blocking(move || host.register_node(&key))
                    .await
                    .map(|node_id| {
                        proto::RegisterNodeResponse { node_id: node_id.0 }.encode_to_vec()
                    })
            }
            Err(why) => return bad_body(why),
        },
        Call::ListNodes => match proto::ListNodesRequest::decode(body) {
            Ok(_) => blocking(move || host.nodes())
                .await
                .map(|(nodes, interval)| {
                    proto::ListNodesResponse {
                        nodes_info: nodes.iter().map(|n| node_to_proto(n, interval)).collect(),
                        now: iso(wire::message::now_ms()),
                    }
                    .encode_to_vec()
                }),
            Err(why) => return bad_body(why),
        },
        Call::UnregisterNode => match proto::UnregisterNodeRequest::decode(body) {
            Ok(request) => {
                let node_id = wire::NodeId(request.node_id);
                blocking(move || host.unregister_node(node_id))
                    .await
                    .map(|()| proto::UnregisterNodeResponse {}.encode_to_vec())
            }
            Err(why) => return bad_body(why),
        },
        Call::StartRun => match proto::StartRunRequest::decode(body) {
            Ok(request) => start_run(host, request).await,
            Err(why) => return bad_body(why),
        },
        Call::ListRuns => match proto::ListRunsRequest::decode(body) {
            Ok(request) => list_runs(host, request).await,
            Err(why) => return bad_body(why),
        },
        Call::StopRun => match proto::StopRunRequest::decode(body) {
            Ok(request) => {
                let run_id = RunId(request.run_id);
                blocking(move || host.stop(run_id))
                    .await
                    .map(|()| proto::StopRunResponse { success: true }.encode_to_vec())
            }
            Err(why) => return bad_body(why),
        },
        // What `flwr login` asks first: Flower's open-source SuperLink has no accounts either.
        Call::GetLoginDetails => Err(ApiError::new(
            501,
            19,
            "ControlServicer initialized without account authentication.",
        )),
        Call::PullArtifacts => match proto::PullArtifactsRequest::decode(body) {
            Ok(request) => {
                let run_id = RunId(request.run_id);
                let finished = blocking(move || host.runs(Some(run_id)))
                    .await
                    .and_then(|runs| match runs.first() {
                        Some(run) if run.status.is_finished() => Ok(()),
                        Some(_) => Err(ApiError::new(
                            412,
                            21,
                            "Cannot pull artifacts for an unfinished run.",
                        )),
                        None => Err(api_error(ControlError::UnknownRun(run_id))),
                    });
                finished.map(|()| {
                    proto::PullArtifactsResponse {
                        url: Some(control.download_link(&named_host, run_id)),
                    }
                    .encode_to_vec()
                })
            }
            Err(why) => return bad_body(why),
        },
        Call::StreamLogs => match proto::StreamLogsRequest::decode(body) {
            Ok(request) => {
                let Ok(permit) = control.log_streams.clone().try_acquire_owned() else {
                    return error_response(&ApiError::new(
                        503,
                        0,
                        format!("At most {MAX_LOG_STREAMS} log streams at once."),
                    ));
                };
                return stream_logs(host, request, permit, shutdown).await;
            }
            Err(why) => return bad_body(why),
        },
    };
    match result {
        Ok(bytes) => respond(200, PROTOBUF, bytes),
        Err(error) => error_response(&error),
    }
}

async fn start_run(
    host: Arc<dyn ControlHost>,
    request: proto::StartRunRequest,
) -> Result<Vec<u8>, ApiError> {
    if !request.app_spec.is_empty() {
        return Err(ApiError::new(
            400,
            33,
            "flower-superlink runs apps sent along as FABs: give `flwr run` the app's directory",
        ));
    }
    let fab = request.fab.unwrap_or_default();
    let archive = fab.content;
    let hash = crate::objects::object_id(&archive);
    if !fab.hash_str.is_empty() && fab.hash_str != hash {
        return Err(ApiError::new(
            500,
            14,
            "Failed to create or initialize the run: the FAB does not hash to its hash_str",
        ));
    }
    let mut overrides = wire::ConfigRecord::new();
    let mut names: Vec<&String> = request.override_config.keys().collect();
    names.sort();
    for name in names {
        let value = crate::records::config_value_of(name, &request.override_config[name])
            .map_err(|e| ApiError::new(412, 15, format!("Invalid run configuration: {e}")))?;
        overrides.insert(name.clone(), value);
    }
    let run_id = blocking(move || host.start_run(archive, overrides)).await?;
    let response = proto::StartRunResponse {
        run_id: Some(run_id.0),
        ..proto::StartRunResponse::default()
    };
    Ok(response.encode_to_vec())
}

async fn list_runs(
    host: Arc<dyn ControlHost>,
    request: proto::ListRunsRequest,
) -> Result<Vec<u8>, ApiError> {
    let wanted = request.run_id.map(RunId);
    let mut runs = blocking(move || host.runs(wanted)).await?;
    if wanted.is_none() {
        // Flower's order and page: newest first, 20 unless asked otherwise.
        runs.sort_by_key(|run| std::cmp::Reverse(run.pending_at_ms));
        let skip = usize::try_from(request.skip.unwrap_or(0)).unwrap_or(usize::MAX);
        let limit = usize::try_from(request.limit.unwrap_or(20)).unwrap_or(usize::MAX);
        runs = runs.into_iter().skip(skip).take(limit).collect();
    }
    let response = proto::ListRunsResponse {
        run_dict: runs
            .iter()
            .map(|run| (run.run_id.0, run_to_proto(run)))
            .collect(),
        now: iso(wire::message::now_ms()),
    };
    Ok(response.encode_to_vec())
}

/// One stream frame: the message's length in four big-endian bytes, then the message.
fn frame(message: &impl prost::Message) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut out = Vec::with_capacity(encoded.len() + 4);
    out.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    out.extend_from_slice(&encoded);
    Bytes::from(out)
}

/// The index of the first line after `after_timestamp` (seconds): where a reconnecting `flwr
/// log` goes on.
fn first_after(lines: &[LogLine], after_timestamp: f64) -> Option<u64> {
    lines
        .iter()
        .find(|line| line.at_ms as f64 / 1000.0 > after_timestamp)
        .map(|line| line.index)
}

async fn stream_logs(
    host: Arc<dyn ControlHost>,
    request: proto::StreamLogsRequest,
    permit: tokio::sync::OwnedSemaphorePermit,
    shutdown: CancellationToken,
) -> Response<Body> {
    let run_id = RunId(request.run_id);
    // The run must exist before the stream's status line says 200.
    let probe = host.clone();
    if let Err(error) = blocking(move || probe.runs(Some(run_id))).await {
        return error_response(&error);
    }
    let (sender, receiver) = mpsc::channel(1);
    tokio::spawn(async move {
        let _permit = permit;
        let mut next = 0u64;
        // NaN and anything not after the epoch ask for the whole log.
        let mut positioned = request.after_timestamp.is_nan() || request.after_timestamp <= 0.0;
        let mut frame_bytes = FIRST_LOG_FRAME_BYTES;
        loop {
            let reader = host.clone();
            let after = next;
            let read = blocking(move || reader.logs(run_id, after, frame_bytes)).await;
            let Ok((lines, more, status)) = read else {
                return;
            };
            let lines = if positioned {
                lines
            } else {
                // Skip what the client has, by its timestamp, once.
                match first_after(&lines, request.after_timestamp) {
                    Some(first) => {
                        positioned = true;
                        lines.into_iter().filter(|l| l.index >= first).collect()
                    }
                    None if more => {
                        next = lines.last().map_or(next, |l| l.index + 1);
                        continue;
                    }
                    None => {
                        next = lines.last().map_or(next, |l| l.index + 1);
                        Vec::new()
                    }
                }
            };
            if let Some(last) = lines.last() {
                next = last.index + 1;
                let mut output = String::new();
                for line in &lines {
                    output.push_str(&line.text);
                    output.push('\n');
                }
                let message = proto::StreamLogsResponse {
                    log_output: output,
                    latest_timestamp: last.at_ms as f64 / 1000.0,
                };
                if sender.send(frame(&message)).await.is_err() {
                    return;
                }
                frame_bytes = LOG_FRAME_BYTES;
            }
            if more {
                continue;
            }
            if status.is_finished() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(LOG_POLL) => {}
                _ = sender.closed() => return,
                _ = shutdown.cancelled() => return,
            }
        }
    });
    let mut response = respond(200, PROTOBUF_STREAM, Vec::new());
    *response.body_mut() = ops::http::ChannelBody(receiver).boxed();
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_flowers_iso_8601_in_utc() {
        assert_eq!(iso(1_700_000_000_123), "2023-11-14T22:13:20.123+00:00");
    }

    #[test]
    fn a_run_carries_flowers_status_and_sub_status() {
        let run = RunInfo {
            run_id: RunId(7),
            app_name: "flwrlabs/echo".into(),
            app_version: "1.0.0".into(),
            config: wire::ConfigRecord::new().with("lr", wire::ConfigValue::Float(0.1)),
            status: RunStatus::Failed,
            details: "why".into(),
            owner: "local".into(),
            pending_at_ms: 1_700_000_000_000,
            starting_at_ms: Some(1_700_000_001_000),
            running_at_ms: None,
            finished_at_ms: Some(1_700_000_002_000),
            bundle: Some(wire::BundleHash([0xab; 32])),
        };
        let proto = run_to_proto(&run);
        let status = proto.status.unwrap();
        assert_eq!(
            (status.status.as_str(), status.sub_status.as_str()),
            ("finished", "failed")
        );
        assert_eq!(status.details, "why");
        assert_eq!(proto.running_at, "");
        assert_eq!(proto.fab_hash, "ab".repeat(32));
        assert!(proto.override_config.contains_key("lr"));
    }

    #[test]
    fn a_stream_frame_is_its_length_then_its_message() {
        let message = proto::StreamLogsResponse {
            log_output: "a\n".into(),
            latest_timestamp: 1.5,
        };
        let bytes = frame(&message);
        let length = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        assert_eq!(length, bytes.len() - 4);
        assert_eq!(
            proto::StreamLogsResponse::decode(&bytes[4..]).unwrap(),
            message
        );
    }
}
