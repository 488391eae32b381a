//! DICOM TLS for outbound associations (PS3.15 Annex B, BCP 195 profiles): the
//! `[destinations.tls]` table, the rustls client configuration built from it, and the relay
//! that carries an association over the TLS session.
//!
//! Hospital PACS use private certificate authorities, so the trust anchors are always given
//! explicitly (`ca`); there is no fallback to a system store. DICOM TLS peers usually
//! require client authentication (DCMTK's default), hence `certificate` + `private_key`.
//!
//! Why a relay: dicom-ul dials its own sockets, and its `async-tls` feature (0.10.1) reports
//! every failed A-ASSOCIATE-AC read as "TLS not supported", plain associations included. So
//! the node makes the TLS connection itself (precise handshake errors, TCP_NODELAY), and
//! dicom-ul talks plain DICOM to a one-shot loopback listener whose bytes are pumped through
//! the TLS session. The listener accepts exactly one connection, and the caller checks that
//! it was dicom-ul's ([`Relay::verify`]).

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncWriteExt, copy};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::fault::FaultReason;

/// How long the relay waits for the far side once one side has closed, and how long a caller
/// waits for the relay's verdict.
const GRACE: Duration = Duration::from_secs(5);

/// `[destinations.tls]`: present means the destination is reached over TLS.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM file with the certificate authorities that may sign the destination's certificate.
    pub ca: PathBuf,
    /// PEM file with our certificate chain, for destinations that authenticate the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<PathBuf>,
    /// PEM file with the private key of `certificate` (PKCS#8, PKCS#1 or SEC1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<PathBuf>,
    /// Name the destination's certificate must carry (DNS name or IP address); default: `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// Why the TLS settings cannot be used; names the key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {message}")]
pub struct TlsSettingsError {
    /// The key at fault.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

/// What a TLS association needs, built from [`TlsSettings`] once per delivery.
#[derive(Clone, Debug)]
pub(crate) struct TlsClient {
    config: Arc<ClientConfig>,
    /// The name the destination's certificate must carry.
    server_name: ServerName<'static>,
}

impl TlsSettings {
    /// Reads the PEM files and builds the client configuration (ring provider, TLS 1.2 and
    /// 1.3, the provider's safe cipher suites) for a destination at `host`. Files are read on
    /// every call, so renewed certificates take effect at the next delivery.
    pub(crate) fn client(&self, host: &str) -> Result<TlsClient, TlsSettingsError> {
        let err = |field: &'static str, message: String| TlsSettingsError { field, message };
        match (&self.certificate, &self.private_key) {
            (Some(_), None) => return Err(err("private_key", "is required with `certificate`".into())),
            (None, Some(_)) => return Err(err("certificate", "is required with `private_key`".into())),
            _ => {}
        }
        let name = self.server_name.as_deref().unwrap_or(host);
        let server_name = ServerName::try_from(name.to_owned())
            .map_err(|e| err("server_name", format!("{name:?} is not a DNS name or IP address: {e}")))?;

        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certificates("ca", &self.ca)? {
            roots
                .add(cert)
                .map_err(|e| err("ca", format!("{}: unusable certificate: {e}", self.ca.display())))?;
        }

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| err("ca", format!("TLS provider: {e}")))?
            .with_root_certificates(roots);
        let config = match (&self.certificate, &self.private_key) {
            (Some(cert), Some(key)) => {
                let chain = read_certificates("certificate", cert)?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    err(
                        "private_key",
                        format!("{}: no usable PEM private key: {e}", key.display()),
                    )
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| err("private_key", format!("does not match `certificate`: {e}")))?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(TlsClient {
            config: Arc::new(config),
            server_name,
        })
    }
}

impl TlsSettings {
    /// A client configuration that trusts no certificate: for an HTTP client that must be
    /// given one but only ever speaks plain `http://`.
    pub(crate) fn trusting_nobody() -> Result<Arc<ClientConfig>, TlsSettingsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSettingsError {
                field: "ca",
                message: format!("TLS provider: {e}"),
            })?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

impl TlsClient {
    /// The rustls configuration and the name the peer's certificate must carry, for the node's
    /// other TLS clients (the audit trail's syslog connection).
    pub(crate) fn into_parts(self) -> (Arc<ClientConfig>, ServerName<'static>) {
        (self.config, self.server_name)
    }
}

/// Every certificate of the PEM file that key `field` names; an error when there is none.
fn read_certificates(field: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSettingsError> {
    let err = |message: String| TlsSettingsError { field, message };
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| err(format!("{}: cannot read PEM certificates: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(err(format!("{}: no PEM certificate in the file", path.display())));
    }
    Ok(certs)
}

/// A TLS session to a destination, offered to dicom-ul as a plain loopback address.
pub(super) struct Relay {
    addr: SocketAddr,
    accepted: oneshot::Receiver<SocketAddr>,
    task: JoinHandle<io::Result<()>>,
}

impl Relay {
    /// Connects to `host:port`, completes the TLS handshake (checking the peer's certificate
    /// against the client's server name) and starts listening on a loopback port for the
    /// association.
    pub(super) async fn connect(
        client: &TlsClient,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<Self, FaultReason> {
        let tcp = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
            .await
            .map_err(|_| FaultReason::Timeout {
                during: "connecting".into(),
            })?
            .map_err(|e| FaultReason::Connect(e.to_string()))?;
        tcp.set_nodelay(true)
            .map_err(|e| FaultReason::Connect(format!("cannot set TCP_NODELAY: {e}")))?;
        let during = || "during the handshake".to_owned();
        let tls = tokio::time::timeout(
            timeout,
            TlsConnector::from(client.config.clone()).connect(client.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| FaultReason::Timeout { during: during() })?
        .map_err(|e| FaultReason::Tls {
            during: during(),
            detail: match tls_error(&e) {
                Some(tls) => tls.to_string(),
                None => format!("{e} (is this a DICOM TLS port?)"),
            },
        })?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|e| FaultReason::Connect(format!("cannot open the loopback TLS relay: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| FaultReason::Connect(format!("loopback TLS relay: {e}")))?;
        let (tx, accepted) = oneshot::channel();
        let task = tokio::spawn(async move {
            let (local, peer) = tokio::time::timeout(timeout, listener.accept())
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "nobody connected to the TLS relay"))??;
            drop(listener);
            let _ = tx.send(peer);
            local.set_nodelay(true)?;
            pump(local, tls).await
        });
        Ok(Self { addr, accepted, task })
    }

    /// The loopback address dicom-ul connects to.
    pub(super) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Checks that the relay's one connection came from `ours` (the association's local
    /// address), not from another process on this machine.
    pub(super) async fn verify(&mut self, ours: io::Result<SocketAddr>) -> Result<(), FaultReason> {
        let protocol = |detail: String| FaultReason::Protocol {
            during: "checking the loopback TLS relay".into(),
            detail,
        };
        let ours = ours.map_err(|e| protocol(e.to_string()))?;
        let theirs = tokio::time::timeout(GRACE, &mut self.accepted)
            .await
            .map_err(|_| protocol("the relay accepted nothing".into()))?
            .map_err(|_| protocol("the relay stopped".into()))?;
        if theirs != ours {
            return Err(protocol(format!(
                "the relay was connected from {theirs}, the association runs from {ours}"
            )));
        }
        Ok(())
    }

    /// The TLS error that stopped the relay (an alert such as "certificate required", which
    /// TLS 1.3 delivers after the handshake), waiting briefly for the relay to stop.
    pub(super) async fn tls_failure(self) -> Option<String> {
        let result = tokio::time::timeout(GRACE, self.task).await.ok()?.ok()?;
        result.err().and_then(|e| tls_error(&e).map(ToString::to_string))
    }
}

/// Copies bytes both ways between dicom-ul's loopback socket and the TLS session until one
/// side closes, then gives the other [`GRACE`] to follow. The first error wins.
async fn pump(local: TcpStream, tls: TlsStream<TcpStream>) -> io::Result<()> {
    let (mut local_read, mut local_write) = local.into_split();
    let (mut tls_read, mut tls_write) = tokio::io::split(tls);
    let up = async {
        let copied = copy(&mut local_read, &mut tls_write).await;
        // close_notify: the association is over on our side.
        let _ = tls_write.shutdown().await;
        copied
    };
    let down = async {
        let copied = copy(&mut tls_read, &mut local_write).await;
        let _ = local_write.shutdown().await;
        copied
    };
    tokio::pin!(up, down);
    tokio::select! {
        up_result = &mut up => {
            // After our side closed, the peer's late close (or missing close_notify) is moot.
            let _ = tokio::time::timeout(GRACE, down).await;
            up_result.map(drop)
        }
        down_result = &mut down => {
            let _ = tokio::time::timeout(GRACE, up).await;
            down_result.map(drop)
        }
    }
}

/// The rustls error inside an I/O error from a TLS stream, if any.
fn tls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_mismatched_files_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem\n").unwrap();
        let tls = |ca: &Path| TlsSettings {
            ca: ca.to_path_buf(),
            certificate: None,
            private_key: None,
            server_name: None,
        };
        let e = tls(&dir.path().join("absent.pem")).client("pacs").unwrap_err();
        assert_eq!(e.field, "ca");
        assert!(e.message.contains("absent.pem"), "{}", e.message);
        let e = tls(&empty).client("pacs").unwrap_err();
        assert!(e.field == "ca" && e.message.contains("no PEM certificate"), "{e:?}");
        let e = TlsSettings {
            certificate: Some(empty.clone()),
            ..tls(&empty)
        }
        .client("pacs")
        .unwrap_err();
        assert_eq!(e.field, "private_key");
        let e = tls(&empty).client("not a host name").unwrap_err();
        assert_eq!(e.field, "server_name");
    }
}
