//! The dashboard's HTTP server: bounded connections, the access check, the routes.
//!
//! Bounds: [`MAX_CONNECTIONS`] at once and [`MAX_PER_SOURCE`] from one source (an address, or an
//! IPv6 /64), a TLS handshake within [`TLS_TIMEOUT`], request headers within [`HEADER_TIMEOUT`]
//! and [`MAX_HEADER_BYTES`], one request per connection, GET and HEAD only, no request body read,
//! and no connection older than [`MAX_CONNECTION_TIME`]. Event streams have their
//! own bounds (see [`super::events`]). Every response forbids framing, sniffing, caching and
//! referrers (a login link's token stays out of other sites' logs), and its content security
//! policy lets only this origin's own script and style run.

use super::access::{self, Access};
use super::pages::{self, RunView, Section};
use super::{Dashboard, events};
use crate::state::Shared;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use http_body_util::Full;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wire::RunId;
use wire::control::{NodeInfo, NodeStatus, RunInfo};
use wire::message::now_ms;

/// Most connections at once; more are closed unanswered.
pub const MAX_CONNECTIONS: usize = 128;

/// Most connections from one address (a browser opens six, plus its event streams).
pub const MAX_PER_SOURCE: usize = 16;

/// How long a TLS handshake may take.
pub const TLS_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a client has to send its request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest a connection is kept, whatever it does: an event stream's age and a minute. A
/// client that stops reading a response cannot hold its slot longer.
pub const MAX_CONNECTION_TIME: Duration = Duration::from_secs(660);

/// The most header bytes read (hyper's smallest buffer).
pub const MAX_HEADER_BYTES: usize = 8192;

/// A response body: a whole page or an event stream.
pub type Body = BoxBody<Bytes, Infallible>;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const SCRIPT: &str = include_str!("assets/dashboard.js");
const STYLE: &str = include_str!("assets/dashboard.css");

/// Serves until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    dashboard: Arc<Dashboard>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let sources = ops::http::Sources::new(MAX_PER_SOURCE);
    let streams = events::Streams::default();
    loop {
        let Some((stream, peer)) = ops::http::accept(&listener, &shutdown, "dashboard").await
        else {
            return;
        };
        let Some(source) = sources.claim(peer.ip()) else {
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let context = Context {
            shared: shared.clone(),
            dashboard: dashboard.clone(),
            streams: streams.clone(),
            peer,
            shutdown: shutdown.clone(),
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            let _held = (slot, source);
            match tls {
                None => connection(stream, context).await,
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => connection(stream, context).await,
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "dashboard TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "dashboard TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// What a request is answered with: the SuperLink, the dashboard, the streams' allowances.
type Context = events::Source;

async fn connection<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: IO, context: Context) {
    let shutdown = context.shutdown.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let context = context.clone();
        async move { Ok::<_, Infallible>(secured(answer(&context, request).await)) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(false)
        .serve_connection(TokioIo::new(io), service);
    tokio::select! {
        _ = connection => {}
        _ = tokio::time::sleep(MAX_CONNECTION_TIME) => {}
        _ = shutdown.cancelled() => {}
    }
}

/// A whole response.
pub fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()).boxed());
    *response.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    respond(status, "text/plain; charset=utf-8", body.into())
}

fn html(body: String) -> Response<Body> {
    respond(StatusCode::OK, "text/html; charset=utf-8", body)
}

fn json_page(value: &Value) -> Response<Body> {
    respond(
        StatusCode::OK,
        "application/json",
        serde_json::to_string_pretty(value).unwrap_or_default() + "\n",
    )
}

/// A small page for a refusal, which names what to do.
fn refusal(status: StatusCode, title: &str, advice: &str) -> Response<Body> {
    respond(
        status,
        "text/html; charset=utf-8",
        format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
             <link rel=\"stylesheet\" href=\"/static/dashboard.css\"></head><body><main>\
             <h1>{title}</h1><p>{advice}</p></main></body></html>\n"
        ),
    )
}

fn secured(mut response: Response<Body>) -> Response<Body> {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn header_text(request: &Request<Incoming>, name: header::HeaderName) -> Option<&str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The value of `name` in a query string.
fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then_some(value)
    })
}

async fn answer(context: &Context, request: Request<Incoming>) -> Response<Body> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "the dashboard is read-only: GET only\n",
        );
    }
    let path = request.uri().path().to_string();
    match path.as_str() {
        "/static/dashboard.js" => return respond(StatusCode::OK, "text/javascript", SCRIPT),
        "/static/dashboard.css" => return respond(StatusCode::OK, "text/css", STYLE),
        _ => {}
    }
    match &context.dashboard.access {
        Access::Loopback => {
            if !context.peer.ip().is_loopback() {
                return refusal(
                    StatusCode::FORBIDDEN,
                    "Loopback only",
                    "Without operator keys the dashboard answers this machine only. Start the \
                     SuperLink with <code>--control-auth-public-keys</code> and sign in with \
                     <code>flwr dashboard</code> to look from elsewhere.",
                );
            }
            let host = header_text(&request, header::HOST).unwrap_or("");
            if !access::is_loopback_host(host) {
                return refusal(
                    StatusCode::FORBIDDEN,
                    "Unexpected host name",
                    "Without operator keys the dashboard answers only under a loopback name: \
                     open it as <code>localhost</code> or <code>127.0.0.1</code>.",
                );
            }
            if path == "/login" {
                return redirect_home(None);
            }
        }
        Access::Operators(logins) => {
            if path == "/login" {
                let token = query_value(request.uri().query(), "token").unwrap_or("");
                return match logins.redeem(token) {
                    Some((session, operator)) => {
                        tracing::info!(operator, peer = %context.peer, "dashboard sign-in");
                        redirect_home(Some(access::set_cookie(
                            &session,
                            logins.session_lifetime(),
                            context.dashboard.tls,
                        )))
                    }
                    None => {
                        tracing::warn!(peer = %context.peer, "dashboard sign-in refused: unknown, used or expired link");
                        refusal(
                            StatusCode::FORBIDDEN,
                            "This login link does not work",
                            "It is unknown, used already or expired. Ask for another with \
                             <code>flwr dashboard</code>.",
                        )
                    }
                };
            }
            let name = access::cookie_name(context.dashboard.tls);
            let signed_in = request
                .headers()
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|header| access::session_cookies(header, name))
                .any(|token| logins.session(token).is_some());
            if !signed_in {
                return refusal(
                    StatusCode::UNAUTHORIZED,
                    "Sign in",
                    "Run <code>flwr dashboard</code> with your operator key: it opens, or \
                     prints, a login link for this browser.",
                );
            }
        }
    }
    route(context, &request, &path).await
}

fn redirect_home(cookie: Option<String>) -> Response<Body> {
    let mut response = respond(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static("/"));
    if let Some(cookie) = cookie
        && let Ok(value) = HeaderValue::from_str(&cookie)
    {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// A dashboard page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum View {
    /// `/`.
    Overview,
    /// `/nodes`.
    Nodes,
    /// `/runs`.
    Runs,
    /// `/runs/{id}`.
    Run(RunId),
}

impl View {
    /// The view a path names (without `/events` or `.json`).
    fn parse(path: &str) -> Option<View> {
        match path {
            "/" | "/overview" => Some(View::Overview),
            "/nodes" => Some(View::Nodes),
            "/runs" => Some(View::Runs),
            _ => path
                .strip_prefix("/runs/")
                .and_then(|id| id.parse().ok())
                .map(|id| View::Run(RunId(id))),
        }
    }

    /// Its event stream's path.
    pub fn events(self) -> String {
        match self {
            View::Overview => "/events/overview".into(),
            View::Nodes => "/events/nodes".into(),
            View::Runs => "/events/runs".into(),
            View::Run(id) => format!("/events/runs/{id}"),
        }
    }

    fn json(self) -> String {
        match self {
            View::Overview => "/overview.json".into(),
            View::Nodes => "/nodes.json".into(),
            View::Runs => "/runs.json".into(),
            View::Run(id) => format!("/runs/{id}.json"),
        }
    }
}

/// Why a page could not be made.
pub enum Failure {
    /// No such run or artifact.
    NotFound(String),
    /// The store failed.
    Store(String),
}

impl From<crate::store::StoreError> for Failure {
    fn from(error: crate::store::StoreError) -> Self {
        Failure::Store(error.to_string())
    }
}

impl Failure {
    fn response(self) -> Response<Body> {
        match self {
            Failure::NotFound(what) => text(StatusCode::NOT_FOUND, format!("{what}\n")),
            Failure::Store(why) => {
                tracing::error!(why, "dashboard: the store failed");
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the SuperLink's store failed; see its log\n",
                )
            }
        }
    }
}

/// What the pages read, taken in one go off the async workers.
pub struct Snapshot {
    /// Registered nodes (not unregistered ones), by id.
    pub nodes: Vec<NodeInfo>,
    /// Runs, newest first.
    pub runs: Vec<RunInfo>,
    /// One run's view.
    pub run: Option<RunView>,
    /// The protocol each online node is on.
    pub protocols: std::collections::HashMap<wire::NodeId, crate::sessions::Protocol>,
    /// When it was read.
    pub now: u64,
}

/// Reads what `view` shows.
pub fn snapshot(shared: &Shared, dashboard: &Dashboard, view: View) -> Result<Snapshot, Failure> {
    let store = &shared.store;
    let nodes = match view {
        View::Overview | View::Nodes => store
            .list_nodes()?
            .into_iter()
            .filter(|n| n.status != NodeStatus::Unregistered)
            .collect(),
        _ => Vec::new(),
    };
    let mut runs = match view {
        View::Overview | View::Runs => store.list_runs()?,
        _ => Vec::new(),
    };
    pages::newest_first(&mut runs);
    let run = match view {
        View::Run(run_id) => {
            let run = store
                .run(run_id)?
                .ok_or_else(|| Failure::NotFound(format!("no run {run_id}")))?;
            Some(RunView {
                rounds: dashboard.round_entries(store, run_id)?,
                artifacts: store.artifact_sizes(run_id)?,
                run,
            })
        }
        _ => None,
    };
    let protocols = nodes
        .iter()
        .filter_map(|node| Some((node.node_id, shared.sessions.protocol(node.node_id)?)))
        .collect();
    Ok(Snapshot {
        nodes,
        runs,
        run,
        protocols,
        now: now_ms(),
    })
}

/// `view`'s `<main>` fragment.
pub fn main_fragment(dashboard: &Dashboard, view: View, snapshot: &Snapshot) -> String {
    // The samples, then the status now: a node seen once already has a cell.
    let strip = |node: &NodeInfo| {
        let mut samples = dashboard.history.of(node.node_id);
        samples.push(node.status);
        pages::strip(&samples)
    };
    let protocol = |node: &NodeInfo| {
        snapshot
            .protocols
            .get(&node.node_id)
            .map_or("-", |protocol| protocol.label())
    };
    let cells = pages::NodeCells {
        protocol: &protocol,
        history: &strip,
    };
    match (view, &snapshot.run) {
        (View::Overview, _) => {
            pages::overview(&snapshot.nodes, &snapshot.runs, &cells, snapshot.now)
        }
        (View::Nodes, _) => pages::nodes(&snapshot.nodes, &cells, snapshot.now),
        (View::Runs, _) => pages::runs(&snapshot.runs, snapshot.now),
        (View::Run(_), Some(run)) => pages::run(run, snapshot.now),
        (View::Run(id), None) => format!("<p>No run {id}.</p>"),
    }
}

/// `view` as JSON: the shapes `flwr --format json` prints, with what the page adds.
fn json_of(dashboard: &Dashboard, view: View, snapshot: &Snapshot) -> Value {
    let now = snapshot.now;
    let nodes = || -> Value {
        snapshot
            .nodes
            .iter()
            .map(|node| {
                let mut value = wire::control_json::node(node, now);
                if let Value::Object(entries) = &mut value {
                    let protocol = snapshot.protocols.get(&node.node_id);
                    entries.insert(
                        "protocol".into(),
                        protocol.map_or(Value::Null, |p| p.as_str().into()),
                    );
                    entries.insert(
                        "online-history".into(),
                        dashboard
                            .history
                            .of(node.node_id)
                            .iter()
                            .map(|s| s.as_str())
                            .collect(),
                    );
                }
                value
            })
            .collect()
    };
    let runs = |runs: &[RunInfo]| -> Value {
        runs.iter()
            .map(|run| wire::control_json::run(run, now))
            .collect()
    };
    match (view, &snapshot.run) {
        (View::Overview, _) => {
            json!({"success": true, "nodes": nodes(), "runs": runs(&snapshot.runs)})
        }
        (View::Nodes, _) => json!({"success": true, "nodes": nodes()}),
        (View::Runs, _) => json!({"success": true, "runs": runs(&snapshot.runs)}),
        (View::Run(_), Some(view)) => json!({
            "success": true,
            "runs": runs(std::slice::from_ref(&view.run)),
            "rounds": view.rounds,
            "artifacts": view.artifacts.iter().map(|(name, bytes)| json!({"name": name, "bytes": bytes})).collect::<Vec<_>>(),
        }),
        (View::Run(_), None) => json!({"success": false}),
    }
}

/// Runs `work` on the blocking pool (the store's reads block).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Failure> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|_| Err(Failure::Store("a dashboard read panicked".into())))
}

async fn route(context: &Context, request: &Request<Incoming>, path: &str) -> Response<Body> {
    if let Some(rest) = path.strip_prefix("/events") {
        let Some(view) = View::parse(rest) else {
            return text(StatusCode::NOT_FOUND, "no such event stream\n");
        };
        let resume = header_text(request, header::HeaderName::from_static("last-event-id"))
            .or_else(|| query_value(request.uri().query(), "from"))
            .and_then(|n| n.parse().ok());
        return events::open(context.clone(), view, resume);
    }
    if let Some(rest) = path.strip_prefix("/runs/")
        && let Some((id, tail)) = rest.split_once('/')
        && let Ok(id) = id.parse::<u64>()
    {
        return run_file(context, request, RunId(id), tail).await;
    }
    let (page, as_json) = match path.strip_suffix(".json") {
        Some(page) => (page, true),
        None => (path, false),
    };
    let Some(view) = View::parse(page) else {
        return text(
            StatusCode::NOT_FOUND,
            "not found; the pages are /, /nodes, /runs and /runs/<run id>\n",
        );
    };
    let (shared, dashboard) = (context.shared.clone(), context.dashboard.clone());
    let read = blocking(move || {
        let snapshot = snapshot(&shared, &dashboard, view)?;
        // A run's page starts with its newest log lines; its event stream goes on from there.
        let log = match (view, as_json) {
            (View::Run(id), false) => Some(shared.store.logs_tail(
                id,
                pages::MAX_LOG_LINES,
                pages::MAX_LOG_BYTES,
            )?),
            _ => None,
        };
        Ok((snapshot, log, dashboard))
    })
    .await;
    let (snapshot, log, dashboard) = match read {
        Ok(read) => read,
        Err(failure) => return failure.response(),
    };
    if as_json {
        return json_page(&json_of(&dashboard, view, &snapshot));
    }
    let main = main_fragment(&dashboard, view, &snapshot);
    let (title, section) = match view {
        View::Overview => ("Overview".to_string(), Section::Overview),
        View::Nodes => ("Nodes".to_string(), Section::Nodes),
        View::Runs => ("Runs".to_string(), Section::Runs),
        View::Run(id) => (format!("Run {id}"), Section::Runs),
    };
    let (after, events) = match (log, &snapshot.run) {
        (Some(lines), Some(run)) => {
            let next = lines.last().map_or(0, |line| line.index + 1);
            let skipped = lines.first().is_some_and(|line| line.index > 0);
            (
                pages::log(&lines, skipped, &run.run),
                format!("{}?from={next}", view.events()),
            )
        }
        _ => (String::new(), view.events()),
    };
    html(pages::shell(
        &title,
        section,
        &view.json(),
        &events,
        &main,
        &after,
    ))
}

/// Most log text one page of `/runs/{id}/log.json` carries, as the Control API pages it.
const LOG_PAGE_BYTES: usize = 1 << 20;

/// `/runs/{id}/log.json[?after=N]` and `/runs/{id}/artifacts/{name}`.
async fn run_file(
    context: &Context,
    request: &Request<Incoming>,
    run_id: RunId,
    tail: &str,
) -> Response<Body> {
    let shared = context.shared.clone();
    if tail == "log.json" {
        let after: u64 = query_value(request.uri().query(), "after")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let read = blocking(move || {
            shared
                .store
                .run(run_id)?
                .ok_or_else(|| Failure::NotFound(format!("no run {run_id}")))?;
            Ok(shared.store.logs_page(run_id, after, LOG_PAGE_BYTES)?)
        })
        .await;
        return match read {
            Ok((lines, more)) => json_page(&json!({
                "success": true,
                "run-id": run_id.to_string(),
                "lines": lines.iter().map(wire::control_json::log_line).collect::<Vec<_>>(),
                "next": lines.last().map_or(after, |line| line.index + 1),
                "more": more,
            })),
            Err(failure) => failure.response(),
        };
    }
    let Some(name) = tail.strip_prefix("artifacts/").and_then(percent_decode) else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    let wanted = name.clone();
    let read = blocking(move || {
        shared
            .store
            .artifact(run_id, &wanted)?
            .ok_or_else(|| Failure::NotFound(format!("run {run_id} has no artifact {wanted:?}")))
    })
    .await;
    match read {
        Ok(bytes) => {
            // Always a download, never rendered here: an app wrote these bytes, and an SVG or an
            // HTML file shown on this origin could run its script with the operator's session.
            let mut response = respond(StatusCode::OK, "application/octet-stream", bytes);
            let safe: String = name
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || "-._".contains(*c))
                .collect();
            if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")) {
                response
                    .headers_mut()
                    .insert(header::CONTENT_DISPOSITION, value);
            }
            response
        }
        Err(failure) => failure.response(),
    }
}

/// A percent-encoded path segment, decoded; `None` when it is not valid UTF-8 or holds a `/`.
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(out).ok()?;
    (!text.contains('/')).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_views() {
        assert_eq!(View::parse("/"), Some(View::Overview));
        assert_eq!(View::parse("/runs/42"), Some(View::Run(RunId(42))));
        assert_eq!(View::parse("/runs/x"), None);
        assert_eq!(View::parse("/etc/passwd"), None);
        assert_eq!(
            percent_decode("metrics%2Ejson").as_deref(),
            Some("metrics.json")
        );
        assert_eq!(percent_decode("a%2Fb"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(query_value(Some("a=1&token=abc"), "token"), Some("abc"));
    }
}
