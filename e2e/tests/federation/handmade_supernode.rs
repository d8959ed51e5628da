//! A Flower SuperNode written by hand: the requests Flower's `flower-supernode` sends on the Fleet
//! API over HTTP, signed as it signs them, and the ones it never would; on a fresh connection
//! each, or on one kept open as Flower's keeps one.

use e2e::{Federation, PATIENCE};
use std::net::SocketAddr;
use wire::NodeId;

/// A SuperNode written by hand: every request Flower's would send, and the ones it never would.
pub(crate) struct HandmadeSuperNode {
    pub(crate) key: certs::IdentityKey,
    address: SocketAddr,
    /// The loopback address its kept connection comes from (many SuperNodes on one machine
    /// stand for many sites, each a source of its own).
    source: Option<std::net::Ipv4Addr>,
    /// A connection kept open between calls, as Flower's SuperNode keeps one.
    kept: tokio::sync::Mutex<Option<tokio::io::BufReader<tokio::net::TcpStream>>>,
}

/// An HTTP answer: its status and body.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

impl Answer {
    pub(crate) fn decode<M: prost::Message + Default>(&self) -> M {
        assert_eq!(self.status, 200, "{}", String::from_utf8_lossy(&self.body));
        M::decode(self.body.as_slice()).unwrap()
    }

    pub(crate) fn code(&self) -> i64 {
        let json: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        json["code"].as_i64().unwrap_or(-1)
    }
}

impl HandmadeSuperNode {
    /// The SuperNode of `keys/<key>` against the federation's SuperLink.
    pub(crate) fn new(federation: &Federation, key: &str) -> Self {
        Self::with_key(
            certs::load::load_identity_key(&federation.path(&format!("keys/{key}"))).unwrap(),
            federation.broker().flower_http_addr.expect("served"),
        )
    }

    /// A SuperNode with `key` against Flower's port at `address`.
    pub(crate) fn with_key(key: certs::IdentityKey, address: SocketAddr) -> Self {
        HandmadeSuperNode {
            key,
            address,
            source: None,
            kept: tokio::sync::Mutex::new(None),
        }
    }

    /// The same, its kept connection from `source` (a loopback address).
    pub(crate) fn with_source(mut self, source: std::net::Ipv4Addr) -> Self {
        self.source = Some(source);
        self
    }

    async fn connect(&self) -> Option<tokio::net::TcpStream> {
        let Some(source) = self.source else {
            return tokio::net::TcpStream::connect(self.address).await.ok();
        };
        let socket = tokio::net::TcpSocket::new_v4().ok()?;
        socket.bind(SocketAddr::from((source, 0))).ok()?;
        socket.connect(self.address).await.ok()
    }

    /// Its public key as Flower's SuperNode sends it (PEM).
    pub(crate) fn pem(&self) -> Vec<u8> {
        self.key.public_key().to_pem().into_bytes()
    }

    /// The signature headers of `signer` over the time `ms` (and a unique microsecond: the
    /// same time signed twice is the same signature, which is refused the second time),
    /// presenting this node's key.
    pub(crate) fn headers_at(&self, ms: u64, signer: &certs::IdentityKey) -> String {
        use base64::Engine as _;
        static MICROS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let micros = MICROS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1000;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let timestamp =
            flower_runtime::control::iso(ms).replace("+00:00", &format!("{micros:03}+00:00"));
        format!(
            "flwr-public-key: {}\r\nflwr-timestamp: {timestamp}\r\nflwr-signature: {}\r\n",
            b64(&self.pem()),
            b64(&signer.sign(timestamp.as_bytes()))
        )
    }

    /// The signature headers of now.
    pub(crate) fn headers(&self) -> String {
        self.headers_at(wire::message::now_ms(), &self.key)
    }

    /// One request on a fresh connection.
    pub(crate) async fn send(&self, call: &str, headers: &str, body: &[u8]) -> Answer {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(self.address).await.unwrap();
        // A length in `headers` is a claim the body does not keep.
        let length = if headers.contains("Content-Length") {
            String::new()
        } else {
            format!("Content-Length: {}\r\n", body.len())
        };
        let head = format!(
            "POST /v1/fleet/{call} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/protobuf\r\n\
             {headers}{length}Connection: close\r\n\r\n",
            self.address,
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let _ = stream.write_all(body).await;
        let mut response = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response)).await;
        let text = String::from_utf8_lossy(&response);
        let status = text
            .get(9..12)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(response.len(), |at| at + 4);
        Answer {
            status,
            body: response[split..].to_vec(),
        }
    }

    /// One call on a fresh connection, signed now.
    pub(crate) async fn call(&self, call: &str, request: &impl prost::Message) -> Answer {
        self.send(call, &self.headers(), &request.encode_to_vec())
            .await
    }

    /// One call on the connection kept open (opened again when the SuperLink closed it);
    /// `None` when it could not be made.
    pub(crate) async fn call_kept(
        &self,
        call: &str,
        request: &impl prost::Message,
    ) -> Option<Answer> {
        use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
        let body = request.encode_to_vec();
        let head = format!(
            "POST /v1/fleet/{call} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/protobuf\r\n\
             {}Content-Length: {}\r\n\r\n",
            self.address,
            self.headers(),
            body.len()
        );
        let mut kept = self.kept.lock().await;
        for _ in 0..2 {
            let stream = match kept.as_mut() {
                Some(stream) => stream,
                None => kept.insert(tokio::io::BufReader::new(self.connect().await?)),
            };
            let exchanged = async {
                stream.get_mut().write_all(head.as_bytes()).await.ok()?;
                stream.get_mut().write_all(&body).await.ok()?;
                let mut status = 0;
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if stream.read_line(&mut line).await.ok()? == 0 {
                        return None;
                    }
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some(code) = line.strip_prefix("HTTP/1.1 ") {
                        status = code.get(..3)?.parse().ok()?;
                    } else if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().ok()?;
                    }
                }
                let mut body = vec![0; length];
                stream.read_exact(&mut body).await.ok()?;
                Some(Answer { status, body })
            };
            match exchanged.await {
                Some(answer) => return Some(answer),
                // Closed between calls: once more on a fresh connection.
                None => *kept = None,
            }
        }
        None
    }
}

/// The node field of a request.
pub(crate) fn node(id: NodeId) -> Option<flower_runtime::proto::Node> {
    Some(flower_runtime::proto::Node { node_id: id.0 })
}
