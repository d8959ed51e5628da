//! rustls configurations shared by the broker, the node and the CLI.
//!
//! The server verifies client certificates itself: the certificate is only a carrier for the
//! client's identity key, TLS proves possession of that key, and a policy supplied by the
//! application (the broker's registry, or its list of operator keys) decides whether the key may
//! connect at all. A refused key never completes the TLS handshake.

use crate::CertsError;
use crate::generate::client_certificate;
use crate::keys::{IdentityKey, PublicKey};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::fmt;
use std::sync::Arc;

/// The one crypto provider of every configuration: two providers in one binary would make rustls'
/// default builders panic at run time.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Decides whether a client's public key may complete the TLS handshake.
pub trait KeyPolicy: Send + Sync {
    /// `true` to let the key in.
    fn accept(&self, key: &PublicKey) -> bool;
}

impl<F: Fn(&PublicKey) -> bool + Send + Sync> KeyPolicy for F {
    fn accept(&self, key: &PublicKey) -> bool {
        self(key)
    }
}

/// How the server treats client certificates.
#[derive(Clone)]
pub struct ClientAuth {
    /// Decides which keys may connect.
    pub policy: Arc<dyn KeyPolicy>,
    /// Whether a client without a certificate is refused during TLS.
    pub mandatory: bool,
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientAuth")
            .field("mandatory", &self.mandatory)
            .finish_non_exhaustive()
    }
}

/// The public key inside a DER certificate, if it is an ECDSA key we support.
pub fn certificate_public_key(cert: &CertificateDer<'_>) -> Option<PublicKey> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    PublicKey::from_spki_der(parsed.tbs_certificate.subject_pki.raw).ok()
}

struct KeyVerifier {
    /// Decides which keys may connect.
    auth: ClientAuth,
    /// Signature algorithms for the TLS CertificateVerify check.
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for KeyVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyVerifier({:?})", self.auth)
    }
}

impl ClientCertVerifier for KeyVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.auth.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Dates are deliberately ignored: the key is the identity, and nothing may depend on the
        // client's clock.
        let key = certificate_public_key(end_entity).ok_or(rustls::Error::InvalidCertificate(
            CertificateError::BadEncoding,
        ))?;
        if self.auth.policy.accept(&key) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ECDSA_NISTP384_SHA384,
        ]
    }
}

fn tls_err(error: rustls::Error) -> CertsError {
    CertsError::Tls(error.to_string())
}

/// A TLS 1.3 server configuration presenting `chain`, verifying client keys with `auth`, speaking `alpn`.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    auth: ClientAuth,
    alpn: &[u8],
) -> Result<rustls::ServerConfig, CertsError> {
    let provider = provider();
    let verifier = Arc::new(KeyVerifier {
        auth,
        provider: provider.clone(),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(tls_err)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    // No session resumption: a resumed session skips the client-certificate verifier, so a key
    // revoked since its last connection would still finish TLS. Every handshake is a full one.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(config)
}

/// An HTTPS server configuration presenting `chain`: TLS 1.2 and 1.3 (a browser or Python's
/// `ssl` may offer either), no client certificates, HTTP/1.1.
pub fn https_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, CertsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(tls_err)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A TLS 1.3 client configuration trusting `roots`, presenting a certificate made from `identity`
/// (if any), speaking `alpn`.
pub fn client_config(
    roots: &[CertificateDer<'static>],
    identity: Option<&IdentityKey>,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, CertsError> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).map_err(tls_err)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_root_certificates(store);
    let mut config = match identity {
        Some(identity) => {
            let (cert, key) = client_certificate(identity)?;
            builder
                .with_client_auth_cert(vec![cert], key)
                .map_err(tls_err)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// Accepts any server certificate (development `--insecure` mode only) while still checking that
/// the server holds the key of the certificate it presents.
#[derive(Debug)]
struct AcceptAnyServer {
    /// Signature algorithms for the handshake signature check.
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration that skips server verification (`--insecure`; development only).
pub fn insecure_client_config(
    identity: Option<&IdentityKey>,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, CertsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer { provider }));
    let mut config = match identity {
        Some(identity) => {
            let (cert, key) = client_certificate(identity)?;
            builder
                .with_client_auth_cert(vec![cert], key)
                .map_err(tls_err)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}
