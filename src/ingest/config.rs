//! `[scp]`: the DICOM listener's settings, validated once with errors that name the key.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::tls::{ScpTls, ScpTlsConfig};

use crate::dimse::check_ae_title;
pub use crate::dimse::{MAX_MAX_PDU, MIN_MAX_PDU};
/// Largest `max_instance_mb` (a data set is reassembled in memory).
pub const MAX_INSTANCE_MB: u64 = 4096;
/// Bounds of `max_associate_pdu_bytes`: an A-ASSOCIATE-RQ with one context fits in 4 KiB, and
/// every pending connection may hold one of up to the upper bound in memory.
pub const MIN_ASSOCIATE_PDU: u32 = 4096;
pub const MAX_ASSOCIATE_PDU: u32 = 16 * 1024 * 1024;

/// `[scp]`: the DICOM listener (C-ECHO, C-STORE of MR series).
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScpConfig {
    /// Our AE title (1–16 characters, no backslash); peers must call it when `check_called_ae`.
    pub ae_title: String,
    /// Listen address `IP:port`.
    pub bind: String,
    /// Calling AE titles allowed to associate, as `AE` or `AE@host-ip`; empty = anyone.
    pub allowed_calling: Vec<String>,
    /// Reject associations whose called AE title is not `ae_title`.
    pub check_called_ae: bool,
    /// Most concurrent associations; more are rejected (transient, local limit exceeded). A
    /// connection takes a slot only once its A-ASSOCIATE-RQ is read and accepted.
    pub max_associations: usize,
    /// Most connections still waiting for their A-ASSOCIATE-RQ, in all; more are closed at once,
    /// so silent sockets cannot crowd out the association slots.
    pub max_pending: usize,
    /// Most such connections from one source address (room for a sender that opens several
    /// associations at the same instant).
    pub max_pending_per_address: usize,
    /// Seconds a new connection has to deliver its whole A-ASSOCIATE-RQ (PS3.8's ARTIM timer);
    /// then it is closed.
    pub handshake_timeout_s: u64,
    /// Largest A-ASSOCIATE-RQ PDU read, in bytes; apart from `max_pdu`, which bounds P-DATA:
    /// a modality proposing 120 contexts × 8 transfer syntaxes sends about 28 KB.
    pub max_associate_pdu_bytes: u32,
    /// Seconds a peer may stay silent within an association before it is aborted.
    pub read_timeout_s: u64,
    /// Maximum PDU length we receive (advertised in A-ASSOCIATE-AC; longer PDUs abort), 4096..=4194304.
    pub max_pdu: u32,
    /// Largest data set accepted, in MiB; larger C-STOREs get 0xA700 (out of resources).
    pub max_instance_mb: u64,
    /// Storage SOP classes other than (Enhanced) MR: `refuse` their contexts, `discard` (accept,
    /// answer success, keep nothing), or `store` (hand them to the sink like MR).
    pub other_storage: OtherStorage,
    /// `[scp.tls]`: a DICOM TLS port beside the plain one; absent: no TLS port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ScpTlsConfig>,
}

impl Default for ScpConfig {
    fn default() -> Self {
        Self {
            ae_title: "FCDNODE".into(),
            bind: "0.0.0.0:11112".into(),
            allowed_calling: Vec::new(),
            check_called_ae: true,
            max_associations: 16,
            max_pending: 32,
            max_pending_per_address: 8,
            handshake_timeout_s: 10,
            // DCMTK's bound for the A-ASSOCIATE PDUs it reads.
            max_associate_pdu_bytes: 1024 * 1024,
            read_timeout_s: 30,
            max_pdu: 16384,
            max_instance_mb: 1024,
            other_storage: OtherStorage::Refuse,
            tls: None,
        }
    }
}

/// What to do with storage SOP classes the node does not process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OtherStorage {
    /// Reject their presentation contexts (the peer sees "no presentation context").
    #[default]
    Refuse,
    /// Accept them, answer success and store nothing (one info log line per instance).
    Discard,
    /// Accept them and hand them to the sink like MR (receivers that keep everything, such as
    /// the demo's PACS; the node's spool would keep them without using them).
    Store,
}

/// One parsed `allowed_calling` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedCalling {
    /// The calling AE title (exact, case-sensitive match).
    pub ae_title: String,
    /// When set, the association must also come from this address.
    pub host: Option<IpAddr>,
}

impl AllowedCalling {
    /// Parses `AE` or `AE@host-ip`.
    pub fn parse(entry: &str) -> Result<Self, ScpConfigError> {
        let (ae, host) = match entry.rsplit_once('@') {
            Some((ae, host)) => {
                let ip = host
                    .trim()
                    .parse::<IpAddr>()
                    .map_err(|_| invalid("allowed_calling", format!("{entry:?}: {host:?} is not an IP address")))?;
                (ae, Some(ip))
            }
            None => (entry, None),
        };
        check_ae_title(ae).map_err(|why| invalid("allowed_calling", format!("{entry:?}: {why}")))?;
        Ok(Self {
            ae_title: ae.trim().to_owned(),
            host,
        })
    }

    /// Whether a peer calling as `calling_ae` from `peer` matches this entry.
    pub fn matches(&self, calling_ae: &str, peer: IpAddr) -> bool {
        self.ae_title == calling_ae && self.host.is_none_or(|h| h.to_canonical() == peer.to_canonical())
    }
}

/// A bad `[scp]` value; the message names the key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("scp.{key}: {message}")]
pub struct ScpConfigError {
    /// The offending key, e.g. `max_pdu`.
    pub key: &'static str,
    /// What is wrong with its value.
    pub message: String,
}

fn invalid(key: &'static str, message: impl Into<String>) -> ScpConfigError {
    ScpConfigError {
        key,
        message: message.into(),
    }
}

/// `[scp]` checked once: the values as configured plus the parsed bind address and allow-list.
/// The SCP takes only this, so it never checks a value again.
#[derive(Clone, Debug)]
pub struct ScpSettings {
    /// The checked values.
    pub config: ScpConfig,
    /// `bind`, parsed.
    pub bind: SocketAddr,
    /// `allowed_calling`, parsed.
    pub allowed: Vec<AllowedCalling>,
    /// `[scp.tls]`, its files read.
    pub tls: Option<ScpTls>,
}

impl ScpConfig {
    /// Checks every value (the first bad one is reported with its key) and parses what the SCP
    /// needs parsed.
    pub fn check(self) -> Result<ScpSettings, ScpConfigError> {
        self.validate()?;
        Ok(ScpSettings {
            bind: self.bind_addr()?,
            allowed: self.allowed()?,
            tls: self.tls.as_ref().map(ScpTlsConfig::build).transpose()?,
            config: self,
        })
    }

    fn validate(&self) -> Result<(), ScpConfigError> {
        check_ae_title(&self.ae_title).map_err(|m| invalid("ae_title", m.to_string()))?;
        if self.ae_title.trim() != self.ae_title {
            return Err(invalid(
                "ae_title",
                format!("{:?} has leading or trailing spaces", self.ae_title),
            ));
        }
        if !(1..=10_000).contains(&self.max_associations) {
            return Err(invalid(
                "max_associations",
                format!("must be 1..=10000, got {}", self.max_associations),
            ));
        }
        if !(1..=100_000).contains(&self.max_pending) {
            return Err(invalid(
                "max_pending",
                format!("must be 1..=100000, got {}", self.max_pending),
            ));
        }
        if !(1..=self.max_pending).contains(&self.max_pending_per_address) {
            return Err(invalid(
                "max_pending_per_address",
                format!(
                    "must be 1..=max_pending ({}), got {}",
                    self.max_pending, self.max_pending_per_address
                ),
            ));
        }
        if !(1..=3_600).contains(&self.handshake_timeout_s) {
            return Err(invalid(
                "handshake_timeout_s",
                format!("must be 1..=3600 seconds, got {}", self.handshake_timeout_s),
            ));
        }
        if !(MIN_ASSOCIATE_PDU..=MAX_ASSOCIATE_PDU).contains(&self.max_associate_pdu_bytes) {
            return Err(invalid(
                "max_associate_pdu_bytes",
                format!(
                    "must be {MIN_ASSOCIATE_PDU}..={MAX_ASSOCIATE_PDU} bytes, got {}",
                    self.max_associate_pdu_bytes
                ),
            ));
        }
        if !(1..=86_400).contains(&self.read_timeout_s) {
            return Err(invalid(
                "read_timeout_s",
                format!("must be 1..=86400 seconds, got {}", self.read_timeout_s),
            ));
        }
        if !(MIN_MAX_PDU..=MAX_MAX_PDU).contains(&self.max_pdu) {
            return Err(invalid(
                "max_pdu",
                format!("must be {MIN_MAX_PDU}..={MAX_MAX_PDU} bytes, got {}", self.max_pdu),
            ));
        }
        if !(1..=MAX_INSTANCE_MB).contains(&self.max_instance_mb) {
            return Err(invalid(
                "max_instance_mb",
                format!("must be 1..={MAX_INSTANCE_MB}, got {}", self.max_instance_mb),
            ));
        }
        Ok(())
    }

    fn bind_addr(&self) -> Result<SocketAddr, ScpConfigError> {
        self.bind
            .trim()
            .parse()
            .map_err(|_| invalid("bind", format!("{:?} is not an IP:port address", self.bind)))
    }

    fn allowed(&self) -> Result<Vec<AllowedCalling>, ScpConfigError> {
        self.allowed_calling.iter().map(|e| AllowedCalling::parse(e)).collect()
    }

    /// `read_timeout_s` as a duration.
    pub fn read_timeout(&self) -> Duration {
        Duration::from_secs(self.read_timeout_s)
    }

    /// `handshake_timeout_s` as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_s)
    }

    /// `max_instance_mb` in bytes.
    pub fn max_instance_bytes(&self) -> usize {
        usize::try_from(self.max_instance_mb.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip_through_toml() {
        let config = ScpConfig::default();
        config.clone().check().unwrap();
        let text = toml::to_string(&config).unwrap();
        let back: ScpConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, config);
        let partial: ScpConfig = toml::from_str("ae_title = \"NODE\"\nother_storage = \"discard\"\n").unwrap();
        assert_eq!(partial.ae_title, "NODE");
        assert_eq!(partial.other_storage, OtherStorage::Discard);
        assert_eq!(partial.max_pdu, 16384);
        assert!(
            toml::from_str::<ScpConfig>("max_pud = 5000\n").is_err(),
            "unknown keys are refused"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: Vec<(ScpConfig, &str)> = vec![
            (
                ScpConfig {
                    ae_title: String::new(),
                    ..ScpConfig::default()
                },
                "scp.ae_title",
            ),
            (
                ScpConfig {
                    ae_title: "A_VERY_LONG_AE_TITLE".into(),
                    ..ScpConfig::default()
                },
                "scp.ae_title",
            ),
            (
                ScpConfig {
                    bind: "localhost".into(),
                    ..ScpConfig::default()
                },
                "scp.bind",
            ),
            (
                ScpConfig {
                    allowed_calling: vec!["PACS@not-an-ip".into()],
                    ..ScpConfig::default()
                },
                "scp.allowed_calling",
            ),
            (
                ScpConfig {
                    max_associations: 0,
                    ..ScpConfig::default()
                },
                "scp.max_associations",
            ),
            (
                ScpConfig {
                    max_pending: 0,
                    ..ScpConfig::default()
                },
                "scp.max_pending",
            ),
            (
                ScpConfig {
                    max_pending: 8,
                    max_pending_per_address: 9,
                    ..ScpConfig::default()
                },
                "scp.max_pending_per_address",
            ),
            (
                ScpConfig {
                    handshake_timeout_s: 0,
                    ..ScpConfig::default()
                },
                "scp.handshake_timeout_s",
            ),
            (
                ScpConfig {
                    max_associate_pdu_bytes: 100,
                    ..ScpConfig::default()
                },
                "scp.max_associate_pdu_bytes",
            ),
            (
                ScpConfig {
                    read_timeout_s: 0,
                    ..ScpConfig::default()
                },
                "scp.read_timeout_s",
            ),
            (
                ScpConfig {
                    max_pdu: 4095,
                    ..ScpConfig::default()
                },
                "scp.max_pdu",
            ),
            (
                ScpConfig {
                    max_instance_mb: 0,
                    ..ScpConfig::default()
                },
                "scp.max_instance_mb",
            ),
        ];
        for (config, key) in cases {
            let err = config.check().unwrap_err().to_string();
            assert!(err.starts_with(key), "{key}: {err}");
        }
    }

    #[test]
    fn allowed_calling_entries_bind_hosts() {
        let any = AllowedCalling::parse("PACS").unwrap();
        let bound = AllowedCalling::parse("PACS@10.0.0.5").unwrap();
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let pacs: IpAddr = "10.0.0.5".parse().unwrap();
        assert!(any.matches("PACS", local));
        assert!(!any.matches("pacs", local));
        assert!(bound.matches("PACS", pacs));
        assert!(bound.matches("PACS", "::ffff:10.0.0.5".parse().unwrap()));
        assert!(!bound.matches("PACS", local));
        assert!(AllowedCalling::parse("@10.0.0.5").is_err());
    }
}
