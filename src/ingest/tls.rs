//! `[scp.tls]`: DICOM TLS on a port of its own (PS3.15 B.1, BCP 195): TLS 1.2 and 1.3 with the
//! ring provider's safe cipher suites (ECDHE with AEAD only), the node's certificate, and by
//! default a client certificate that the configured CA must have signed, as DCMTK's `+tls`
//! peers present.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

use super::config::ScpConfigError;

/// `[scp.tls]` as written.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScpTlsConfig {
    /// Listen address IP:port of the TLS port (beside the plain `bind`, which stays open).
    pub bind: String,
    /// PEM file with the node's certificate chain.
    pub certificate: PathBuf,
    /// PEM file with the key of `certificate` (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
    /// PEM file with the CA certificates that may sign client certificates.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Refuse peers without a client certificate signed by `ca` (default true).
    #[serde(default = "yes")]
    pub require_client_certificate: bool,
}

fn yes() -> bool {
    true
}

/// The TLS port, ready to accept.
#[derive(Clone)]
pub struct ScpTls {
    /// Where it listens.
    pub bind: SocketAddr,
    /// The handshake side of every connection to it.
    pub acceptor: TlsAcceptor,
}

impl std::fmt::Debug for ScpTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScpTls")
            .field("bind", &self.bind)
            .finish_non_exhaustive()
    }
}

impl ScpTlsConfig {
    /// Reads the PEM files and builds the server side; errors name the key and the file.
    pub fn build(&self) -> Result<ScpTls, ScpConfigError> {
        let err = |key: &'static str, message: String| ScpConfigError { key, message };
        let bind = self
            .bind
            .parse()
            .map_err(|e| err("tls.bind", format!("{:?} is not IP:port: {e}", self.bind)))?;
        if self.require_client_certificate && self.ca.is_none() {
            return Err(err(
                "tls.ca",
                "require_client_certificate = true needs the CA that signs client certificates".into(),
            ));
        }
        let chain = read_certificates("tls.certificate", &self.certificate)?;
        let key = PrivateKeyDer::from_pem_file(&self.private_key)
            .map_err(|e| err("tls.private_key", format!("{}: {e}", self.private_key.display())))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| err("tls", e.to_string()))?;
        let builder = match (&self.ca, self.require_client_certificate) {
            (Some(ca), require) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certificates("tls.ca", ca)? {
                    roots
                        .add(cert)
                        .map_err(|e| err("tls.ca", format!("{}: {e}", ca.display())))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if require {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                builder.with_client_cert_verifier(verifier.build().map_err(|e| err("tls.ca", e.to_string()))?)
            }
            (None, _) => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(chain, key)
            .map_err(|e| err("tls.private_key", format!("does not match tls.certificate: {e}")))?;
        Ok(ScpTls {
            bind,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

fn read_certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ScpConfigError> {
    let err = |message: String| ScpConfigError { key, message };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(format!("{}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(err(format!("{}: no certificate in the file", path.display())));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_key_and_the_file() {
        let config = |ca: Option<&str>, require: bool| ScpTlsConfig {
            bind: "127.0.0.1:2762".into(),
            certificate: "/nonexistent/node.pem".into(),
            private_key: "/nonexistent/node.key".into(),
            ca: ca.map(PathBuf::from),
            require_client_certificate: require,
        };
        let err = config(None, false).build().unwrap_err();
        assert_eq!(err.key, "tls.certificate");
        assert!(err.message.contains("/nonexistent/node.pem"), "{err}");
        let err = config(None, true).build().unwrap_err();
        assert_eq!(err.key, "tls.ca", "{err}");
        let bad_bind = ScpTlsConfig {
            bind: "port 2762".into(),
            ..config(Some("/nonexistent/ca.pem"), true)
        };
        assert_eq!(bad_bind.build().unwrap_err().key, "tls.bind");
        let toml = "bind = \"0.0.0.0:2762\"\ncertificate = \"a.pem\"\nprivate_key = \"a.key\"\nca = \"ca.pem\"\n";
        let parsed: ScpTlsConfig = toml::from_str(toml).unwrap();
        assert!(
            parsed.require_client_certificate,
            "client certificates are required by default"
        );
        assert!(toml::from_str::<ScpTlsConfig>(&format!("{toml}ciphers = \"all\"\n")).is_err());
    }
}
