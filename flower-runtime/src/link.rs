//! Flower's SuperLink port, as Flower 1.42 serves it: one listener (`--host`, `--port`;
//! 127.0.0.1:8000 by default) for the Control API Flower's `flwr` calls ([`crate::control`]) and
//! the Fleet API Flower's SuperNodes call ([`crate::fleet`]), over TLS when the SuperLink has
//! certificates and plain HTTP under `--insecure`.
//!
//! SuperNodes come from anywhere; operators of this API have no accounts, so the Control API
//! answers loopback peers only. Bounds hold before anything is read: at most
//! [`MAX_CONNECTIONS`] connections, [`MAX_PER_SOURCE`] from one source (an IPv4 address or an
//! IPv6 /64), a TLS handshake within [`TLS_TIMEOUT`] and a request's headers within
//! [`HEADER_TIMEOUT`].

use crate::control::Control;
use crate::fleet::Fleet;
use crate::server::ApiError;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The media type of a protobuf body.
pub const PROTOBUF: &str = "application/protobuf";

/// Most connections at once; more wait. A polling SuperNode keeps one or two open.
pub const MAX_CONNECTIONS: usize = 4096;

/// Most connections from one source at once: a site's SuperNodes behind one address, or one
/// operator's `flwr` calls.
pub const MAX_PER_SOURCE: usize = 64;

/// How long a client has to finish its TLS handshake.
pub const TLS_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client has to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A response body: whole, or streamed (a log stream).
pub type Body = BoxBody<Bytes, Infallible>;

/// A response with `status` and a body of `content_type`.
pub fn respond(status: u16, content_type: &'static str, body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Flower's JSON error answer.
pub fn error_response(error: &ApiError) -> Response<Body> {
    let body = serde_json::json!({"code": error.code, "detail": error.detail});
    respond(
        error.status,
        "application/json",
        body.to_string().into_bytes(),
    )
}

/// What the port serves.
#[derive(Clone)]
pub struct Link {
    /// Flower's Control API, for loopback peers; `None` where operators sign in with keys.
    pub control: Option<Arc<Control>>,
    /// Flower's Fleet API; `None` where Flower's SuperNodes are not served.
    pub fleet: Option<Arc<Fleet>>,
    /// TLS; `None` under `--insecure`.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Serves `link` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, link: Link, shutdown: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let sources = ops::http::Sources::new(MAX_PER_SOURCE);
    loop {
        let Some((stream, peer)) = ops::http::accept(&listener, &shutdown, "Flower HTTP").await
        else {
            return;
        };
        let loopback = peer.ip().to_canonical().is_loopback();
        if !loopback && link.fleet.is_none() {
            tracing::warn!(%peer, "Flower Control API: a client off loopback, closed");
            continue;
        }
        let Some(source) = sources.claim(peer.ip()) else {
            tracing::debug!(%peer, "Flower HTTP: too many connections from this source, closed");
            continue;
        };
        let slot = tokio::select! {
            _ = shutdown.cancelled() => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let link = link.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _held = (slot, source);
            match link.tls.clone() {
                None => serve_connection(stream, peer, link, shutdown).await,
                Some(tls) => match tokio::time::timeout(TLS_TIMEOUT, tls.accept(stream)).await {
                    Ok(Ok(stream)) => serve_connection(stream, peer, link, shutdown).await,
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "Flower HTTP: TLS failed"),
                    Err(_) => tracing::debug!(%peer, "Flower HTTP: TLS handshake timed out"),
                },
            }
        });
    }
}

async fn serve_connection<S>(stream: S, peer: SocketAddr, link: Link, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stream_shutdown = shutdown.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let link = link.clone();
        let shutdown = stream_shutdown.clone();
        async move { Ok::<_, Infallible>(route(link, peer, request, shutdown).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = connection => {}
        _ = shutdown.cancelled() => {}
    }
}

async fn route(
    link: Link,
    peer: SocketAddr,
    request: Request<Incoming>,
    shutdown: CancellationToken,
) -> Response<Body> {
    let path = request.uri().path();
    if path.starts_with(crate::fleet::PREFIX)
        && let Some(fleet) = link.fleet
    {
        return fleet.answer(request).await;
    }
    if path.starts_with(crate::control::PREFIX) || path.starts_with(crate::control::DOWNLOADS) {
        if !peer.ip().to_canonical().is_loopback() {
            return error_response(&ApiError::new(
                403,
                0,
                "Flower's Control API answers this machine's loopback only.",
            ));
        }
        return match link.control {
            Some(control) if path.starts_with(crate::control::DOWNLOADS) => {
                control.download(request).await
            }
            Some(control) => control.answer(request, shutdown).await,
            None => error_response(&ApiError::new(
                404,
                0,
                "This SuperLink's operators sign in with keys: use flower-rs's flwr.",
            )),
        };
    }
    error_response(&ApiError::new(404, 0, "Not Found"))
}
