//! Optional mutual TLS for sites with a PKI: when `[tls]` names a certificate, its key and a CA,
//! every peer connection first runs TLS 1.3 with certificates required on both sides and
//! verified against that CA, and the secure channel (`proto::channel`, still keyed with the
//! cookie) runs inside it. The client checks that the server's certificate is valid for the host
//! it dialled; the server checks that the client's certificate is valid for the host of the node
//! name the client authenticates as (a CLI, which names no node, only needs a CA-signed
//! certificate). Verification is never skipped.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use muster::{Host, NodeName};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A byte stream a channel can run on: plain TCP or TLS over it.
pub trait PeerIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> PeerIo for T {}

/// The stream under a peer channel.
pub type PeerStream = Box<dyn PeerIo>;

/// `[tls]`: PEM files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// This node's certificate chain (leaf first); valid for the host in its node name, for
    /// both server and client authentication.
    pub cert: PathBuf,
    /// The certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA certificate(s) that sign every node's certificate.
    pub ca: PathBuf,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM object.
    #[error("tls.{key} = {path}: {reason}")]
    File {
        /// The config key.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the combination (e.g. the key does not match the certificate).
    #[error("tls: {0}")]
    Config(String),
}

/// Loaded TLS settings, for both directions.
#[derive(Clone)]
pub struct PeerTls {
    connector: TlsConnector,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls(mutual, TLS 1.3)")
    }
}

fn file_err(key: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        key,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(key, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(key, path, e))?;
    if certs.is_empty() {
        return Err(file_err(key, path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

impl PeerTls {
    /// Loads the files; errors name the key and the file.
    pub fn load(s: &TlsSection) -> Result<PeerTls, TlsError> {
        let chain = certs("cert", &s.cert)?;
        match crate::cookie::shared_mode(&s.key) {
            Ok(Some(mode)) => {
                return Err(file_err(
                    "key",
                    &s.key,
                    format!(
                        "mode {mode:03o} lets group or others read the private key; run: chmod 600 {}",
                        s.key.display()
                    ),
                ));
            }
            Ok(None) => {}
            Err(e) => return Err(file_err("key", &s.key, e)),
        }
        let key = PrivateKeyDer::from_pem_file(&s.key).map_err(|e| file_err("key", &s.key, e))?;
        let mut roots = RootCertStore::empty();
        for ca in certs("ca", &s.ca)? {
            roots.add(ca).map_err(|e| file_err("ca", &s.ca, e))?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config_err = |e: rustls::Error| TlsError::Config(e.to_string());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(config_err)?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_err)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(config_err)?;
        Ok(PeerTls {
            connector: TlsConnector::from(Arc::new(client)),
            acceptor: TlsAcceptor::from(Arc::new(server)),
        })
    }

    /// Client side: TLS to `node` over `stream`, checking the server's certificate for its host.
    pub async fn connect(&self, stream: TcpStream, node: &NodeName) -> std::io::Result<PeerStream> {
        let name = server_name(node.host())?;
        Ok(Box::new(self.connector.connect(name, stream).await?))
    }

    /// Server side: TLS from `addr`; returns the stream and the client's certificate.
    pub async fn accept(&self, stream: TcpStream) -> std::io::Result<(PeerStream, CertificateDer<'static>)> {
        let tls = self.acceptor.accept(stream).await?;
        let cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned())
            .ok_or_else(|| std::io::Error::other("the client presented no certificate"))?;
        Ok((Box::new(tls), cert))
    }
}

fn server_name(host: &Host) -> std::io::Result<ServerName<'static>> {
    match host {
        Host::V4(ip) => Ok(ServerName::IpAddress((*ip).into())),
        Host::V6(ip) => Ok(ServerName::IpAddress((*ip).into())),
        Host::Dns(name) => ServerName::try_from(name.clone())
            .map_err(|e| std::io::Error::other(format!("{name:?} is not a valid TLS server name: {e}"))),
    }
}

/// Whether `cert` (already verified against the CA) is valid for `node`'s host, so that a node
/// can only authenticate as a name its certificate carries.
pub fn certifies(cert: &CertificateDer<'_>, node: &NodeName) -> Result<(), NotCertified> {
    let name = server_name(node.host()).map_err(|e| NotCertified(e.to_string()))?;
    let parsed = ParsedCertificate::try_from(cert)
        .map_err(|e| NotCertified(format!("unreadable certificate: {e}")))?;
    rustls::client::verify_server_name(&parsed, &name).map_err(|_| {
        NotCertified(format!(
            "its certificate is not valid for {}, the host of {node}",
            node.host()
        ))
    })
}

/// Why a peer's certificate does not let it authenticate as the name it claimed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotCertified(pub String);

/// Plain TCP under the channel.
pub fn plain(stream: TcpStream) -> PeerStream {
    Box::new(stream)
}
