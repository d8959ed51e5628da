//! Generating the federation's key material: a CA and a server certificate for the broker, and ECDSA
//! key pairs for nodes and operators.

use crate::CertsError;
use crate::files::{Secrecy, refuse_overwrite, write_file};
use crate::keys::IdentityKey;
use crate::openssh;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// Names every broker certificate carries, so the single-host walkthrough works unchanged.
pub const DEFAULT_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Validity of the CA certificate.
const CA_VALIDITY: Duration = Duration::days(3650);

/// Validity of the server certificate (the longest that clients such as browsers still accept).
const SERVER_VALIDITY: Duration = Duration::days(825);

fn gen_err(error: rcgen::Error) -> CertsError {
    CertsError::Generate(error.to_string())
}

fn san(name: &str) -> Result<SanType, CertsError> {
    match name.parse::<IpAddr>() {
        Ok(ip) => Ok(SanType::IpAddress(ip)),
        Err(_) => name
            .to_string()
            .try_into()
            .map(SanType::DnsName)
            .map_err(|_| {
                CertsError::Generate(format!("{name:?} is neither a DNS name nor an IP address"))
            }),
    }
}

/// The four files of `flwr certs generate`.
#[derive(Debug, Clone)]
pub struct CertificatePaths {
    /// `ca.crt`: the root every client trusts.
    pub ca_cert: PathBuf,
    /// `ca.key`: signs server certificates; keep it offline.
    pub ca_key: PathBuf,
    /// `server.pem`: the broker's certificate.
    pub server_cert: PathBuf,
    /// `server.key`: the broker's private key.
    pub server_key: PathBuf,
}

impl CertificatePaths {
    /// The file names under `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        CertificatePaths {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        }
    }

    fn all(&self) -> Vec<PathBuf> {
        vec![
            self.ca_cert.clone(),
            self.ca_key.clone(),
            self.server_cert.clone(),
            self.server_key.clone(),
        ]
    }
}

/// Generates a CA and a server certificate with SANs [`DEFAULT_SANS`] plus `extra_sans`, and writes
/// them under `dir`. Refuses to overwrite unless `force`.
pub fn generate_certificates(
    dir: &Path,
    extra_sans: &[String],
    force: bool,
) -> Result<CertificatePaths, CertsError> {
    let paths = CertificatePaths::in_dir(dir);
    refuse_overwrite(&paths.all(), force)?;
    let now = OffsetDateTime::now_utc();

    let ca_key = KeyPair::generate().map_err(gen_err)?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Flower CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = now - Duration::days(1);
    ca_params.not_after = now + CA_VALIDITY;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(gen_err)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let mut names: Vec<String> = DEFAULT_SANS.iter().map(|s| s.to_string()).collect();
    for extra in extra_sans {
        if !names.contains(extra) {
            names.push(extra.clone());
        }
    }
    let server_key = KeyPair::generate().map_err(gen_err)?;
    let mut server_params = CertificateParams::default();
    server_params.distinguished_name = DistinguishedName::new();
    server_params
        .distinguished_name
        .push(DnType::CommonName, "Flower SuperLink");
    server_params.subject_alt_names = names.iter().map(|n| san(n)).collect::<Result<_, _>>()?;
    server_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server_params.use_authority_key_identifier_extension = true;
    server_params.not_before = now - Duration::days(1);
    server_params.not_after = now + SERVER_VALIDITY;
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .map_err(gen_err)?;

    write_file(&paths.ca_cert, ca_cert.pem().as_bytes(), Secrecy::Public)?;
    write_file(
        &paths.ca_key,
        ca_key.serialize_pem().as_bytes(),
        Secrecy::Private,
    )?;
    write_file(
        &paths.server_cert,
        server_cert.pem().as_bytes(),
        Secrecy::Public,
    )?;
    write_file(
        &paths.server_key,
        server_key.serialize_pem().as_bytes(),
        Secrecy::Private,
    )?;
    Ok(paths)
}

/// A self-signed server certificate made in memory (the broker's `--insecure` mode).
pub fn ephemeral_server_certificate()
-> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), CertsError> {
    let key = KeyPair::generate().map_err(gen_err)?;
    let params = CertificateParams::new(
        DEFAULT_SANS
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    )
    .map_err(gen_err)?;
    let cert = params.self_signed(&key).map_err(gen_err)?;
    Ok((
        cert.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    ))
}

/// A self-signed client certificate carrying `identity`'s public key. Its only job is to let TLS
/// prove possession of the key; the broker decides identity from the key, not from the certificate,
/// and never looks at its dates (nothing depends on the node's clock).
pub fn client_certificate(
    identity: &IdentityKey,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), CertsError> {
    let pkcs8 = identity.to_pkcs8_der()?;
    let key = KeyPair::try_from(pkcs8.as_slice()).map_err(gen_err)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "flower-rs client");
    let cert = params.self_signed(&key).map_err(gen_err)?;
    Ok((
        cert.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8)),
    ))
}

/// One generated key pair on disk.
#[derive(Debug, Clone)]
pub struct KeyPairPaths {
    /// The OpenSSH private key (mode 0600).
    pub private: PathBuf,
    /// The OpenSSH public key line.
    pub public: PathBuf,
}

/// Writes a fresh P-256 key pair to `path` and `path.pub`, with `comment` on the public line.
pub fn write_key_pair(path: &Path, comment: &str, force: bool) -> Result<KeyPairPaths, CertsError> {
    let public = public_path(path);
    refuse_overwrite(&[path.to_path_buf(), public.clone()], force)?;
    let key = IdentityKey::generate();
    write_file(
        path,
        openssh::format_private_key(&key, comment).as_bytes(),
        Secrecy::Private,
    )?;
    let line = openssh::format_public_line(&key.public_key(), comment) + "\n";
    write_file(&public, line.as_bytes(), Secrecy::Public)?;
    Ok(KeyPairPaths {
        private: path.to_path_buf(),
        public,
    })
}

/// `path` with `.pub` appended.
pub fn public_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// `flwr keys generate`: `count` node key pairs `{prefix}_{1..=count}` and the operator key pair
/// `operator` (comment `operator_name`) under `dir`. All paths are checked before anything is written.
pub fn generate_federation_keys(
    dir: &Path,
    prefix: &str,
    count: usize,
    operator_name: Option<&str>,
    force: bool,
) -> Result<Vec<KeyPairPaths>, CertsError> {
    let mut targets: Vec<(PathBuf, String)> = (1..=count)
        .map(|i| (dir.join(format!("{prefix}_{i}")), format!("{prefix}_{i}")))
        .collect();
    if let Some(name) = operator_name {
        targets.push((dir.join("operator"), name.to_string()));
    }
    let every_file: Vec<PathBuf> = targets
        .iter()
        .flat_map(|(path, _)| [path.clone(), public_path(path)])
        .collect();
    refuse_overwrite(&every_file, force)?;
    targets
        .iter()
        .map(|(path, comment)| write_key_pair(path, comment, true))
        .collect()
}
