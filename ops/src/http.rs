//! A small HTTP/1.1 server for unauthenticated, read-only endpoints (health, metrics): GET
//! only, at most [`MAX_CONNECTIONS`] at once and [`MAX_PER_SOURCE`] from one address, request
//! headers within [`HEADER_TIMEOUT`], one request per connection. It runs on hyper; what each
//! path answers is the caller's.

use bytes::Bytes;
use http_body_util::Full;
pub use hyper::StatusCode;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Most connections served at once; more are closed unanswered.
pub const MAX_CONNECTIONS: usize = 64;

/// Most of those from one IP address, so that a few idle sockets from one host cannot keep an
/// orchestrator's probe out.
pub const MAX_PER_SOURCE: usize = 4;

/// How long a client has to send its request's headers (a probe sends them at once).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// Connections open per source, each source held to a bound; an entry leaves with its last
/// connection. A source is an IPv4 address (an IPv4-mapped IPv6 address counts as its IPv4
/// address) or an IPv6 /64, the least one host is given: counting single IPv6 addresses would let
/// one host hold every slot.
pub struct Sources {
    per_source: usize,
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// The source an address belongs to.
fn source_of(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => std::net::IpAddr::V6(std::net::Ipv6Addr::from_bits(
                v6.to_bits() & !((1u128 << 64) - 1),
            )),
        },
        v4 => v4,
    }
}

/// One connection's share of its source's allowance, returned on drop.
pub struct SourceSlot {
    sources: Arc<Sources>,
    ip: std::net::IpAddr,
}

impl Sources {
    /// At most `per_source` at once from one address.
    pub fn new(per_source: usize) -> Arc<Self> {
        Arc::new(Sources {
            per_source,
            open: Default::default(),
        })
    }

    /// A slot for one more from `ip`, or `None` when it holds its bound already.
    pub fn claim(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<SourceSlot> {
        let ip = source_of(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= self.per_source {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            sources: self.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.sources.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Whether a `Host` header names this machine's loopback interface (any port).
pub fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // An IPv6 literal: `[::1]` or `[::1]:8080`.
        Some(rest) => match rest.split_once(']') {
            Some((inside, after))
                if after.is_empty()
                    || after
                        .strip_prefix(':')
                        .is_some_and(|port| port.bytes().all(|b| b.is_ascii_digit())) =>
            {
                inside
            }
            _ => return false,
        },
        None => match host.rsplit_once(':') {
            // A port is digits, or nothing else may follow the name (`localhost:1@evil.example`).
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            Some(_) => return false,
            None => host,
        },
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether an `Origin` header, when a browser sends one, is a page of this machine's loopback
/// (`http://localhost:8000`, say); programs like Flower's `flwr` send none.
pub fn is_loopback_origin(origin: &str) -> bool {
    origin
        .split_once("://")
        .is_some_and(|(_, host)| is_loopback_host(host.trim_end_matches('/')))
}

/// A response body fed by a channel: what a streaming response (server-sent events, a log
/// stream) sends as it comes. The body ends when the sender is dropped, and a client that leaves
/// drops the receiver, which the sender sees.
pub struct ChannelBody(pub tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(hyper::body::Frame::data(bytes))))
    }
}

/// The next connection on `listener`, or `None` at shutdown. A failed accept (out of file
/// descriptors, say) is logged and retried after a pause instead of spinning.
pub async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    api: &str,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => return Some(accepted),
                Err(error) => {
                    tracing::warn!(%error, api, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// What a path answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// HTTP status.
    pub status: StatusCode,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
}

impl Page {
    /// A `200 OK` page of plain text.
    pub fn text(body: impl Into<String>) -> Self {
        Page {
            status: StatusCode::OK,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    /// `404 Not Found`, naming the paths that exist.
    pub fn not_found(paths: &[&str]) -> Self {
        Page {
            status: StatusCode::NOT_FOUND,
            content_type: "text/plain; charset=utf-8",
            body: format!("not found; try {}\n", paths.join(" or ")),
        }
    }
}

/// The future a handler returns.
pub type PageFuture = Pin<Box<dyn Future<Output = Page> + Send>>;

/// Answers a request's path.
pub type Handler = Arc<dyn Fn(&str) -> PageFuture + Send + Sync>;

/// Serves `handler` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, handler: Handler, shutdown: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let sources = Sources::new(MAX_PER_SOURCE);
    loop {
        let Some((stream, peer)) = accept(&listener, &shutdown, "HTTP").await else {
            return;
        };
        let Some(source) = sources.claim(peer.ip()) else {
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _slots = (slot, source);
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let handler = handler.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&handler, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

async fn answer(handler: &Handler, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let page = if request.method() == Method::GET || request.method() == Method::HEAD {
        handler(request.uri().path()).await
    } else {
        Page {
            status: StatusCode::METHOD_NOT_ALLOWED,
            content_type: "text/plain; charset=utf-8",
            body: "GET only\n".into(),
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(page.body)));
    *response.status_mut() = page.status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(page.content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// The health endpoint (`--health-server-address`): `GET /health` answers `200 SERVING` while
/// the daemon runs, so a load balancer or an orchestrator's HTTP probe can watch it.
pub fn health_handler() -> Handler {
    Arc::new(|path: &str| {
        let page = match path {
            "/health" | "/healthz" | "/" => Page::text("SERVING\n"),
            _ => Page::not_found(&["/health"]),
        };
        Box::pin(async move { page })
    })
}

/// Binds `address` and serves the health endpoint there until `shutdown`; returns the bound
/// address.
pub async fn start_health(
    address: std::net::SocketAddr,
    shutdown: CancellationToken,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(serve(listener, health_handler(), shutdown));
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_pass_the_host_check() {
        for host in [
            "localhost",
            "localhost:8443",
            "127.0.0.1:80",
            "[::1]:9",
            "[::1]",
            "LOCALHOST",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:80",
            "10.0.0.1",
            "[::2]",
            "[::1]x",
            "localhost.evil.example",
            "localhost:1@evil.example",
            "[::1]:1@evil.example",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn only_loopback_origins_pass() {
        assert!(is_loopback_origin("http://localhost:8000"));
        assert!(is_loopback_origin("http://127.0.0.1"));
        assert!(!is_loopback_origin("http://evil.example"));
        assert!(!is_loopback_origin("null"));
    }

    #[test]
    fn an_ipv6_64_is_one_source_and_a_mapped_ipv4_address_its_ipv4_one() {
        let sources = Sources::new(2);
        let a: std::net::IpAddr = "2001:db8::1".parse().unwrap();
        let b: std::net::IpAddr = "2001:db8::ffff:2".parse().unwrap();
        let c: std::net::IpAddr = "2001:db8::3".parse().unwrap();
        let _held = (sources.claim(a).unwrap(), sources.claim(b).unwrap());
        assert!(sources.claim(c).is_none(), "a third from the same /64");
        assert!(sources.claim("2001:db8:0:1::1".parse().unwrap()).is_some());
        let v4: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: std::net::IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let _more = (sources.claim(v4).unwrap(), sources.claim(mapped).unwrap());
        assert!(sources.claim(v4).is_none());
    }
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn exchange(address: std::net::SocketAddr, request: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        let _ =
            tokio::time::timeout(HEADER_TIMEOUT * 2, stream.read_to_string(&mut response)).await;
        response
    }

    #[tokio::test]
    async fn health_answers_serving_and_refuses_other_paths_and_methods() {
        let shutdown = CancellationToken::new();
        let address = start_health("127.0.0.1:0".parse().unwrap(), shutdown.clone())
            .await
            .unwrap();
        let ok = exchange(address, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.ends_with("SERVING\n"), "{ok}");
        let missing = exchange(address, "GET /other HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let post = exchange(
            address,
            "POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        let garbage = exchange(address, "\x16\x03\x01 not http\r\n\r\n").await;
        assert!(
            garbage.is_empty() || garbage.starts_with("HTTP/1.1 400"),
            "{garbage}"
        );
        shutdown.cancel();
    }

    #[tokio::test]
    async fn idle_connections_from_one_host_cannot_keep_a_probe_out() {
        let shutdown = CancellationToken::new();
        let address = start_health("127.0.0.1:0".parse().unwrap(), shutdown.clone())
            .await
            .unwrap();
        // Enough idle sockets from 127.0.0.1 to fill every slot, were there no per-source share.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS + 1 {
            idle.push(tokio::net::TcpStream::connect(address).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // A probe from another loopback address is served at once.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut probe = socket.connect(address).await.unwrap();
        probe
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        tokio::time::timeout(Duration::from_secs(1), probe.read_to_string(&mut response))
            .await
            .expect("the probe was kept waiting")
            .unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        shutdown.cancel();
    }
}
