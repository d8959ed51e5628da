//! One ArrayRecord broker -> node -> broker over real QUIC on loopback (the broker queues the
//! instruction in its round and checks the reply against it, the node decodes, echoes and
//! re-encodes),
//! beside a raw quinn stream echoing the same bytes over a connection with the same transport
//! settings, in the same process. 1 GiB runs only with `FLWR_BENCH_1GIB=1` (it needs about 8 GiB
//! of memory).

use bench::federation::{Federation, Round};
use bench::{content, record};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Runtime;

/// A quinn server that echoes every stream, and a client connected to it.
struct RawQuinn {
    connection: quinn::Connection,
    _server: quinn::Endpoint,
}

impl RawQuinn {
    async fn start() -> Result<RawQuinn, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let paths = certs::generate::generate_certificates(dir.path(), &[], false)?;
        let chain = certs::load::load_certificates(&paths.server_cert)?;
        let key = certs::load::load_tls_private_key(&paths.server_key)?;
        let roots = certs::load::load_certificates(&paths.ca_cert)?;
        let auth = certs::tls::ClientAuth {
            policy: Arc::new(|_: &certs::PublicKey| true),
            mandatory: false,
        };
        let tls = certs::tls::server_config(chain, key, auth, b"echo")?;
        let transport = certs::quic::transport(Duration::from_secs(30), None);
        let server = quinn::Endpoint::server(
            certs::quic::server_config(tls, transport)?,
            SocketAddr::from(([127, 0, 0, 1], 0)),
        )?;
        let address = server.local_addr()?;
        let accepting = server.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                let Ok(connection) = incoming.await else {
                    continue;
                };
                while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                    tokio::spawn(async move {
                        if let Ok(bytes) = recv.read_to_end(usize::MAX).await {
                            let _ = send.write_all(&bytes).await;
                            let _ = send.finish();
                        }
                    });
                }
            }
        });
        let tls = certs::tls::client_config(&roots, None, b"echo")?;
        let transport = certs::quic::transport(Duration::from_secs(30), None);
        let client = certs::quic::client_endpoint(address)?;
        let connection = client
            .connect_with(
                certs::quic::client_config(tls, transport)?,
                address,
                "localhost",
            )?
            .await?;
        Ok(RawQuinn {
            connection,
            _server: server,
        })
    }

    async fn echo(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let (mut send, mut recv) = self.connection.open_bi().await.ok()?;
        let (sent, received) = tokio::join!(
            async {
                send.write_all(bytes).await.ok()?;
                send.finish().ok()
            },
            recv.read_to_end(usize::MAX)
        );
        sent?;
        received.ok()
    }
}

fn transport(c: &mut Criterion) {
    let Ok(runtime) = bench::runtime() else {
        return;
    };
    let runtime: &Runtime = &runtime;
    let (raw, federation) = match runtime.block_on(async {
        let raw = RawQuinn::start().await.map_err(|e| e.to_string())?;
        let federation = Federation::start(1).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((raw, federation))
    }) {
        Ok(both) => both,
        Err(error) => {
            eprintln!("transport: cannot set up: {error}");
            return;
        }
    };
    let mut sizes = vec![(1usize << 20, "1MiB"), (100 << 20, "100MiB")];
    if std::env::var_os("FLWR_BENCH_1GIB").is_some() {
        sizes.push((1 << 30, "1GiB"));
    } else {
        eprintln!(
            "transport/1GiB: skipped (set FLWR_BENCH_1GIB=1; it needs about 8 GiB of memory)"
        );
    }
    for (bytes, label) in sizes {
        let payload = content(record(bytes / 4, 1));
        let flat = vec![7u8; bytes];
        let mut group = c.benchmark_group(format!("transport/{label}"));
        group.sample_size(10);
        // A round trip moves the bytes both ways.
        group.throughput(Throughput::Bytes(2 * bytes as u64));
        group.bench_function("raw quinn echo (baseline)", |b| {
            b.iter(|| runtime.block_on(raw.echo(&flat)).map(|echoed| echoed.len()))
        });
        group.bench_function("broker -> node -> broker", |b| {
            b.iter(|| {
                federation
                    .round(Round {
                        nodes: federation.node_ids.clone(),
                        content: payload.clone(),
                    })
                    .map(|result| result.replies)
            })
        });
        group.finish();
    }
    runtime.block_on(federation.stop());
}

criterion_group!(benches, transport);
criterion_main!(benches);
