//! An authenticated connection to a broker's Control API, with one typed method per request.
//!
//! Every method maps the broker's error answer and any answer of the wrong kind once, here, so a
//! command only handles what it asked for.

use crate::CliError;
use crate::app_config::{AppConfig, Federation};
use crate::args::Target;
use std::time::Duration;
use wire::close;
use wire::control::{
    Artifact, Control, ControlFrame, ControlRequest, ControlResponse, LogLine, NodeInfo,
    OperatorFrame, RunInfo, RunStatus,
};
use wire::handshake::EXPORTER_LABEL;
use wire::io::handshake::{HandshakeError, client_handshake};
use wire::io::{FrameIoError, read_value, write_value};
use wire::{BundleHash, ConfigRecord, NodeId, RunId};

/// Largest response frame (a node table of thousands of rows fits easily).
const RESPONSE_FRAME_LIMIT: u32 = 64 * 1024 * 1024;

/// How long to wait for a broker to answer at all.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An open, authenticated Control API session.
pub struct ControlClient {
    /// The endpoint, held so the connection outlives no socket; never read.
    _endpoint: quinn::Endpoint,
    /// The connection.
    connection: quinn::Connection,
    /// Request stream.
    send: quinn::SendStream,
    /// Response stream.
    recv: quinn::RecvStream,
    /// The name the broker knows this operator by.
    pub operator: String,
}

fn connection_error(error: &quinn::ConnectionError, address: &str) -> CliError {
    use quinn::ConnectionError as E;
    match error {
        E::ApplicationClosed(closed) if u64::from(closed.error_code) == u64::from(close::REFUSED) => CliError::Refused(format!(
            "the SuperLink refused this operator: {}",
            String::from_utf8_lossy(&closed.reason)
        )),
        E::ConnectionClosed(_) => match certs::quic::tls_alert(error) {
            Some(rustls::AlertDescription::CertificateRequired) => CliError::Refused(
                "the SuperLink requires an operator key: set operator-key in the federation's table".into(),
            ),
            Some(rustls::AlertDescription::NoApplicationProtocol) => CliError::Connect(format!(
                "{address} does not serve this flwr's Control API ({}): check the federation's address, and that the SuperLink runs the same release",
                String::from_utf8_lossy(wire::alpn::CONTROL)
            )),
            Some(alert) => CliError::Refused(format!(
                "the SuperLink refused this operator key during TLS ({alert:?}): it is not one of its --control-auth-public-keys"
            )),
            None => CliError::Connect(format!("connection to {address} closed: {error}")),
        },
        E::TransportError(transport) if certs::quic::tls_alert(error).is_some() => CliError::Connect(format!(
            "TLS with the SuperLink at {address} failed: {} (check root-certificates and the address's name)",
            transport.reason
        )),
        E::TimedOut => CliError::Connect(format!(
            "no SuperLink answered at {address}: is it running, and is UDP open to it? (the Control \
             API is QUIC over UDP, port 9093 by default; a firewall opened for TCP blocks it)"
        )),
        other => CliError::Connect(format!("connection to {address} failed: {other}")),
    }
}

fn frame_error(error: FrameIoError, connection: &quinn::Connection, address: &str) -> CliError {
    if let Some(reason) = connection.close_reason() {
        return connection_error(&reason, address);
    }
    CliError::Connect(format!(
        "Control API session with {address} failed: {error}"
    ))
}

/// The dashboard's address and login token, as the SuperLink gave them.
#[derive(Debug, Clone)]
pub struct DashboardLink {
    /// Where it is bound.
    pub address: std::net::SocketAddr,
    /// Whether it serves HTTPS.
    pub tls: bool,
    /// The one-time login token, when operators sign in with keys.
    pub token: Option<String>,
    /// How long the token works.
    pub expires_in_seconds: u64,
}

impl ControlClient {
    /// Connects to `federation`, authenticating with its operator key if it names one.
    pub async fn connect(federation: &Federation) -> Result<Self, CliError> {
        if let Some(simulation) = &federation.simulation {
            let local =
                crate::local_superlink::ensure(simulation.in_memory, &federation.source).await?;
            return Box::pin(Self::connect(&local)).await;
        }
        let address = federation.address.as_str();
        let (host, _) = address.rsplit_once(':').ok_or_else(|| {
            CliError::Config(format!("federation address {address:?} is not HOST:PORT"))
        })?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let remote = tokio::net::lookup_host(address)
            .await
            .map_err(|e| CliError::Connect(format!("cannot resolve {address}: {e}")))?
            .next()
            .ok_or_else(|| CliError::Connect(format!("{address} resolves to no address")))?;
        let identity = match &federation.operator_key {
            Some(path) => Some(certs::load::load_identity_key(path)?),
            None => None,
        };
        let tls = if federation.insecure {
            certs::tls::insecure_client_config(identity.as_ref(), wire::alpn::CONTROL)?
        } else {
            let roots = federation.root_certificates.as_ref().ok_or_else(|| {
                CliError::Config(
                    "the federation needs root-certificates (or insecure = true for development)"
                        .into(),
                )
            })?;
            certs::tls::client_config(
                &certs::load::load_certificates(roots)?,
                identity.as_ref(),
                wire::alpn::CONTROL,
            )?
        };
        let transport =
            certs::quic::transport(Duration::from_secs(30), Some(Duration::from_secs(5)));
        let config = certs::quic::client_config(tls, transport)?;
        let endpoint = certs::quic::client_endpoint(remote)
            .map_err(|e| CliError::Connect(format!("cannot open a UDP socket: {e}")))?;
        let connecting = endpoint
            .connect_with(config, remote, host)
            .map_err(|e| CliError::Connect(format!("cannot connect to {address}: {e}")))?;
        let opened = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let connection = connecting
                .await
                .map_err(|e| connection_error(&e, address))?;
            let (send, recv) = connection
                .open_bi()
                .await
                .map_err(|e| connection_error(&e, address))?;
            Ok::<_, CliError>((connection, send, recv))
        })
        .await
        .map_err(|_| {
            CliError::Connect(format!(
                "no SuperLink answered at {address} within {CONNECT_TIMEOUT:?}"
            ))
        })??;
        let (connection, mut send, mut recv) = opened;
        let exporter = certs::quic::exporter(&connection, EXPORTER_LABEL)
            .ok_or_else(|| CliError::Connect("no TLS exporter".into()))?;
        let sign = identity
            .as_ref()
            .map(|identity| move |message: &[u8]| identity.sign(message));
        let handshake = client_handshake::<Control, _, _>(
            &mut send,
            &mut recv,
            exporter,
            RESPONSE_FRAME_LIMIT,
            sign.as_ref()
                .map(|sign| sign as &(dyn wire::handshake::Signer + Sync)),
        );
        let operator = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| {
                CliError::Connect(format!(
                    "the SuperLink at {address} did not answer the handshake"
                ))
            })?
            .map_err(|error| match error {
                HandshakeError::Frame(error) => frame_error(error, &connection, address),
                HandshakeError::Refused(refusal) => {
                    CliError::Refused(format!("the SuperLink refused this operator: {refusal}"))
                }
                HandshakeError::KeyRequired => CliError::Refused(format!(
                    "the SuperLink asks for an operator key: set operator-key in the federation's \
                     table in {}",
                    federation.source.display()
                )),
                HandshakeError::Unexpected(frame) => {
                    CliError::Connect(format!("unexpected answer from the SuperLink: {frame}"))
                }
            })?;
        Ok(ControlClient {
            _endpoint: endpoint,
            connection,
            send,
            recv,
            operator,
        })
    }

    /// Connects to the federation `target` names (its app directory's configuration).
    pub async fn for_target(target: &Target) -> Result<Self, CliError> {
        let config = AppConfig::load(&target.app)?;
        let (_, federation) = config.federation(target.federation.as_deref())?;
        Self::connect(&federation).await
    }

    /// Connects to the federation `target` names, makes the calls of `calls`, and closes.
    pub async fn once<T>(
        target: &Target,
        calls: impl AsyncFnOnce(&mut ControlClient) -> Result<T, CliError>,
    ) -> Result<T, CliError> {
        let mut client = Self::for_target(target).await?;
        let result = calls(&mut client).await;
        client.close().await;
        result
    }

    /// Registers a node's public key (an OpenSSH line or PEM); returns its new id.
    pub async fn register_node(&mut self, public_key: String) -> Result<NodeId, CliError> {
        match self
            .call(ControlRequest::RegisterNode { public_key })
            .await?
        {
            ControlResponse::NodeRegistered { node_id } => Ok(node_id),
            other => Err(unexpected(other)),
        }
    }

    /// Unregisters a node for good.
    pub async fn unregister_node(&mut self, node_id: NodeId) -> Result<NodeId, CliError> {
        match self
            .call(ControlRequest::UnregisterNode { node_id })
            .await?
        {
            ControlResponse::NodeUnregistered { node_id } => Ok(node_id),
            other => Err(unexpected(other)),
        }
    }

    /// The registered nodes (and the unregistered ones too, with `include_unregistered`).
    pub async fn list_nodes(
        &mut self,
        include_unregistered: bool,
    ) -> Result<Vec<NodeInfo>, CliError> {
        match self
            .call(ControlRequest::ListNodes {
                include_unregistered,
            })
            .await?
        {
            ControlResponse::Nodes(nodes) => Ok(nodes),
            other => Err(unexpected(other)),
        }
    }

    /// The protocol each online node is connected over; `None` from a SuperLink too old to say.
    pub async fn online_protocols(
        &mut self,
    ) -> Result<
        Option<std::collections::HashMap<wire::NodeId, wire::control::NodeProtocol>>,
        CliError,
    > {
        match self.call(ControlRequest::OnlineProtocols).await {
            Ok(ControlResponse::OnlineProtocols(protocols)) => {
                Ok(Some(protocols.into_iter().collect()))
            }
            Ok(other) => Err(unexpected(other)),
            Err(_) => Ok(None),
        }
    }

    /// Starts a run of an app with its run config; returns the run's id.
    pub async fn start_run(
        &mut self,
        app_name: String,
        app_version: String,
        config: ConfigRecord,
    ) -> Result<RunId, CliError> {
        let request = ControlRequest::StartRun {
            app_name,
            app_version,
            config,
        };
        match self.call(request).await? {
            ControlResponse::RunStarted { run_id } => Ok(run_id),
            other => Err(unexpected(other)),
        }
    }

    /// Makes sure the SuperLink stores the bundle `bytes` (hash `hash`) with `signatures`, sending
    /// the bytes only when it has no bundle of that hash yet; returns whether they were sent.
    pub async fn offer_bundle(
        &mut self,
        hash: BundleHash,
        bytes: &[u8],
        signatures: Vec<wire::bundle::BundleSignature>,
    ) -> Result<bool, CliError> {
        let request = ControlRequest::OfferBundle {
            hash,
            size: bytes.len() as u64,
            signatures,
        };
        match self.call(request).await? {
            ControlResponse::BundleWanted { wanted: false } => return Ok(false),
            ControlResponse::BundleWanted { wanted: true } => {}
            other => return Err(unexpected(other)),
        }
        let address = self.connection.remote_address().to_string();
        self.send.write_all(bytes).await.map_err(|e| {
            CliError::Connect(format!("sending the app bundle to {address} failed: {e}"))
        })?;
        match refused_request(self.receive().await?)? {
            ControlResponse::BundleStored { hash: stored } if stored == hash => Ok(true),
            other => Err(unexpected(other)),
        }
    }

    /// Starts a run of the stored bundle `bundle`.
    pub async fn start_bundled_run(
        &mut self,
        bundle: BundleHash,
        config: ConfigRecord,
    ) -> Result<RunId, CliError> {
        match self
            .call(ControlRequest::StartBundledRun { bundle, config })
            .await?
        {
            ControlResponse::RunStarted { run_id } => Ok(run_id),
            other => Err(unexpected(other)),
        }
    }

    /// Starts `run` on a virtual federation of `simulation`'s shape (a simulation SuperLink).
    pub async fn start_simulation(
        &mut self,
        run: wire::control::SimulatedRun,
        simulation: wire::control::Simulation,
    ) -> Result<RunId, CliError> {
        match self
            .call(ControlRequest::StartSimulation { run, simulation })
            .await?
        {
            ControlResponse::RunStarted { run_id } => Ok(run_id),
            other => Err(unexpected(other)),
        }
    }

    /// Every run, or only `run_id`.
    pub async fn list_runs(&mut self, run_id: Option<RunId>) -> Result<Vec<RunInfo>, CliError> {
        match self.call(ControlRequest::ListRuns { run_id }).await? {
            ControlResponse::Runs(runs) => Ok(runs),
            other => Err(unexpected(other)),
        }
    }

    /// Stops a run.
    pub async fn stop_run(&mut self, run_id: RunId) -> Result<RunId, CliError> {
        match self.call(ControlRequest::StopRun { run_id }).await? {
            ControlResponse::RunStopped { run_id } => Ok(run_id),
            other => Err(unexpected(other)),
        }
    }

    /// One page of a run's stored log from line `after` on.
    pub async fn log_page(&mut self, run_id: RunId, after: u64) -> Result<LogPage, CliError> {
        let request = ControlRequest::Log {
            run_id,
            after,
            follow: false,
        };
        let response = self.call(request).await?;
        log_page(response)
    }

    /// Follows a run's log from line `after` on: the stored lines, then each new one, until the
    /// run finishes. Read the pages with [`LogFollower::next_page`].
    pub async fn follow_log(
        &mut self,
        run_id: RunId,
        after: u64,
    ) -> Result<LogFollower<'_>, CliError> {
        self.send_request(ControlRequest::Log {
            run_id,
            after,
            follow: true,
        })
        .await?;
        Ok(LogFollower { client: self })
    }

    /// The artifacts a run stored.
    pub async fn pull(&mut self, run_id: RunId) -> Result<Vec<Artifact>, CliError> {
        match self.call(ControlRequest::PullArtifacts { run_id }).await? {
            ControlResponse::Artifacts(artifacts) => Ok(artifacts),
            other => Err(unexpected(other)),
        }
    }

    /// Where the dashboard is, with a one-time login token when it asks for one.
    pub async fn dashboard_link(&mut self) -> Result<DashboardLink, CliError> {
        match self.call(ControlRequest::DashboardLink).await? {
            ControlResponse::DashboardLink {
                address,
                tls,
                token,
                expires_in_seconds,
            } => Ok(DashboardLink {
                address,
                tls,
                token,
                expires_in_seconds,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Sends one request and returns its answer, the broker's error answer mapped to an error.
    async fn call(&mut self, request: ControlRequest) -> Result<ControlResponse, CliError> {
        refused_request(self.request(request).await?)
    }

    /// Sends one request and waits for its response, whatever it is (the typed methods are the
    /// interface; this is for tools and tests that speak the protocol itself).
    pub async fn request(&mut self, request: ControlRequest) -> Result<ControlResponse, CliError> {
        self.send_request(request).await?;
        self.receive().await
    }

    /// Sends a request without waiting (for requests answered by several frames).
    pub async fn send_request(&mut self, request: ControlRequest) -> Result<(), CliError> {
        let address = self.connection.remote_address().to_string();
        write_value(&mut self.send, &OperatorFrame::Request(request))
            .await
            .map_err(|e| frame_error(e, &self.connection, &address))
    }

    /// Reads the next response frame.
    pub async fn receive(&mut self) -> Result<ControlResponse, CliError> {
        let address = self.connection.remote_address().to_string();
        match read_value::<ControlFrame, _>(&mut self.recv, RESPONSE_FRAME_LIMIT)
            .await
            .map_err(|e| frame_error(e, &self.connection, &address))?
        {
            ControlFrame::Response(response) => Ok(response),
            other => Err(CliError::Connect(format!(
                "unexpected answer from the SuperLink: {other:?}"
            ))),
        }
    }

    /// Closes the session politely and returns as soon as the SuperLink has been told.
    ///
    /// `Endpoint::wait_idle` would also wait out the draining period after the close (three
    /// probe timeouts, some 80 ms on loopback, most of a short command's wall time). A process
    /// about to exit has nothing left to deliver: the peer learns of the close from the first
    /// CONNECTION_CLOSE packet, and only if that packet were lost would the SuperLink hold the
    /// connection until its idle timeout.
    pub async fn close(self) {
        // No FIN first: the close ends the stream as well, and a packet sent for anything else
        // after the count below would move it before the close has left.
        let sent_before = self.connection.stats().udp_tx.datagrams;
        self.connection.close(close::NORMAL.into(), b"done");
        // After a close, the connection's only datagrams are CONNECTION_CLOSE packets, and the
        // driver sends each one while it holds the lock that `stats` takes: once the count moves,
        // the packet has left the socket.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
        while self.connection.stats().udp_tx.datagrams == sent_before
            && tokio::time::Instant::now() < deadline
        {
            tokio::task::yield_now().await;
        }
    }
}

/// Lines of a run's log, and the run's final status when these are its last lines.
#[derive(Debug, Clone, PartialEq)]
pub struct LogPage {
    /// The lines, in order.
    pub lines: Vec<LogLine>,
    /// Set on the last page of a finished run.
    pub finished: Option<RunStatus>,
}

/// A run's log as it grows (see [`ControlClient::follow_log`]).
pub struct LogFollower<'c> {
    /// The client the log arrives on; nothing else may be asked until the run finishes.
    client: &'c mut ControlClient,
}

impl LogFollower<'_> {
    /// The next lines; the page that carries `finished` is the last.
    pub async fn next_page(&mut self) -> Result<LogPage, CliError> {
        let response = refused_request(self.client.receive().await?)?;
        log_page(response)
    }
}

fn log_page(response: ControlResponse) -> Result<LogPage, CliError> {
    match response {
        ControlResponse::Log { lines, finished } => Ok(LogPage { lines, finished }),
        other => Err(unexpected(other)),
    }
}

/// The broker's error answer as the command's error.
fn refused_request(response: ControlResponse) -> Result<ControlResponse, CliError> {
    match response {
        ControlResponse::Error(error) => Err(CliError::Request(error.to_string())),
        response => Ok(response),
    }
}

/// An answer of another kind than the request asked for.
fn unexpected(response: ControlResponse) -> CliError {
    CliError::Request(format!(
        "unexpected answer from the SuperLink: {response:?}"
    ))
}
