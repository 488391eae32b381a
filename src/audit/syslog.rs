//! `[audit.syslog]`: audit messages to an audit record repository as RFC 5424 syslog over TLS
//! with octet-counting framing (RFC 5425), the transport IHE ATNA names. Mutual TLS is the
//! ATNA rule, so the node presents its certificate when one is configured.
//!
//! The file is the record; the repository gets a copy. Messages the repository could not take
//! wait (up to [`BACKLOG`]) and go with the next batch; beyond that the oldest are dropped with
//! an error in the log.

use std::collections::VecDeque;
use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use super::AuditError;
use crate::deliver::TlsSettings;
use crate::report::rfc3339_utc_now;

/// Messages kept for the repository while it is unreachable.
const BACKLOG: usize = 10_000;
/// Connect and write timeout.
const TIMEOUT: Duration = Duration::from_secs(5);
/// PRI: facility 10 (security/authorization) × 8 + severity 5 (notice).
const PRI: u32 = 85;

/// `[audit.syslog]`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// `host:port` of the repository (6514 is the registered port for syslog over TLS).
    pub address: String,
    /// `[audit.syslog.tls]`: CA, and the node's certificate and key for mutual TLS.
    pub tls: TlsSettings,
}

impl SyslogConfig {
    /// Checks the address and the TLS files; the connection is made when the first message
    /// goes out.
    pub(super) fn sender(&self) -> Result<Sender, AuditError> {
        let host = self
            .address
            .rsplit_once(':')
            .filter(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            .map(|(h, _)| h.trim_matches(['[', ']']).to_owned())
            .ok_or_else(|| AuditError::Syslog(format!("address {:?}: expected host:port", self.address)))?;
        let (config, server_name) = self
            .tls
            .client(&host)
            .map_err(|e| AuditError::Syslog(format!("tls: {e}")))?
            .into_parts();
        Ok(Sender {
            address: self.address.clone(),
            config,
            server_name,
            hostname: hostname(),
            stream: None,
            backlog: VecDeque::new(),
        })
    }
}

/// The connection to the repository, made and remade as needed.
pub(super) struct Sender {
    address: String,
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    hostname: String,
    stream: Option<StreamOwned<ClientConnection, TcpStream>>,
    backlog: VecDeque<String>,
}

impl Sender {
    /// Frames and sends the backlog and `messages`; what cannot be sent waits for the next call.
    pub(super) fn send(&mut self, messages: &[String]) {
        for m in messages {
            if self.backlog.len() == BACKLOG {
                self.backlog.pop_front();
                tracing::error!("[audit.syslog] backlog full: the oldest audit message was not sent");
            }
            self.backlog.push_back(self.frame(m));
        }
        while let Some(next) = self.backlog.front() {
            let written = match self.stream.as_mut() {
                Some(stream) => stream.write_all(next.as_bytes()).and_then(|()| stream.flush()),
                None => match self.connect() {
                    Ok(()) => continue,
                    Err(e) => {
                        tracing::warn!(waiting = self.backlog.len(), "[audit.syslog] cannot connect: {e}");
                        return;
                    }
                },
            };
            match written {
                Ok(()) => {
                    self.backlog.pop_front();
                }
                Err(e) => {
                    // Sent again on a new connection: a repository may see it twice, never zero times.
                    tracing::warn!("[audit.syslog] connection lost: {e}");
                    self.stream = None;
                    if let Err(e) = self.connect() {
                        tracing::warn!(waiting = self.backlog.len(), "[audit.syslog] cannot connect: {e}");
                        return;
                    }
                }
            }
        }
    }

    /// RFC 5424 header, the XML as MSG, octet-counting frame (RFC 5425).
    fn frame(&self, xml: &str) -> String {
        let message = format!(
            "<{PRI}>1 {} {} fcdnode {} IHE+RFC-3881 - {xml}",
            rfc3339_utc_now(),
            self.hostname,
            std::process::id()
        );
        format!("{} {message}", message.len())
    }

    fn connect(&mut self) -> std::io::Result<()> {
        let addr = self
            .address
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("{} resolves to no address", self.address)))?;
        let tcp = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        tcp.set_nodelay(true)?;
        tcp.set_write_timeout(Some(TIMEOUT))?;
        tcp.set_read_timeout(Some(TIMEOUT))?;
        let connection =
            ClientConnection::new(self.config.clone(), self.server_name.clone()).map_err(std::io::Error::other)?;
        let mut stream = StreamOwned::new(connection, tcp);
        // Complete the handshake now, so that certificate errors surface here.
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        self.stream = Some(stream);
        Ok(())
    }
}

/// The kernel's host name (RFC 5424 HOSTNAME), without any lookup; `-` when unknown.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_graphic()))
        .unwrap_or_else(|| "-".into())
}
