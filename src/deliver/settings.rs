//! The deliver stage's configuration: `[[destinations]]` entries and the `[outbox]` retry policy.

use std::time::Duration;

use super::tls::{TlsClient, TlsSettings};
pub use crate::dimse::{MAX_MAX_PDU, MIN_MAX_PDU, check_ae_title};

/// Largest `timeout_s` accepted (one hour).
pub const MAX_TIMEOUT_S: u64 = 3600;

/// One `[[destinations]]` entry: a DICOM node the results are C-STOREd to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// Name used in logs, metrics and the outbox (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// Called AE title of the destination (1–16 characters, no backslash).
    pub ae_title: String,
    /// Host name or IP address of the destination.
    pub host: String,
    /// TCP port of the destination's DICOM service.
    pub port: u16,
    /// Calling AE title we present; default: the node's own AE title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calling_ae_title: Option<String>,
    /// Largest PDU we receive and send, in bytes (4096–4194304; default 16384).
    #[serde(default = "default_max_pdu")]
    pub max_pdu: u32,
    /// Connect, read and write timeout in seconds (1–3600; default 30).
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
    /// DICOM TLS (`[destinations.tls]`); absent: plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSettings>,
}

fn default_max_pdu() -> u32 {
    16384
}

fn default_timeout_s() -> u64 {
    30
}

/// Why a destination or retry policy cannot be used; names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{section}: `{field}`: {message}")]
pub struct SettingsError {
    /// `destination "NAME"` or `[outbox]`.
    pub section: String,
    /// The offending key.
    pub field: &'static str,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl Destination {
    /// A destination with the defaults for everything optional.
    pub fn new(name: impl Into<String>, ae_title: impl Into<String>, host: impl Into<String>, port: u16) -> Self {
        Self {
            name: name.into(),
            ae_title: ae_title.into(),
            host: host.into(),
            port,
            calling_ae_title: None,
            max_pdu: default_max_pdu(),
            timeout_s: default_timeout_s(),
            tls: None,
        }
    }

    /// Checks every field; the error names the destination and the field.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.prepare().map(drop)
    }

    /// Checks every field and builds the TLS client when `[destinations.tls]` is present
    /// (reading its PEM files once, so renewed certificates apply to the next send).
    pub(super) fn prepare(&self) -> Result<Option<TlsClient>, SettingsError> {
        let err = |field: &'static str, message: String| SettingsError {
            section: format!("destination {:?}", self.name),
            field,
            message,
        };
        check_name(&self.name).map_err(|m| err("name", m))?;
        check_ae_title(&self.ae_title).map_err(|m| err("ae_title", m.to_string()))?;
        if let Some(calling) = &self.calling_ae_title {
            check_ae_title(calling).map_err(|m| err("calling_ae_title", m.to_string()))?;
        }
        if self.host.trim().is_empty() {
            return Err(err("host", "must not be empty".into()));
        }
        if self.host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err("host", format!("{:?} contains whitespace", self.host)));
        }
        if self.port == 0 {
            return Err(err("port", "must be 1–65535".into()));
        }
        if !(MIN_MAX_PDU..=MAX_MAX_PDU).contains(&self.max_pdu) {
            return Err(err(
                "max_pdu",
                format!("{} is outside {MIN_MAX_PDU}–{MAX_MAX_PDU}", self.max_pdu),
            ));
        }
        if !(1..=MAX_TIMEOUT_S).contains(&self.timeout_s) {
            return Err(err(
                "timeout_s",
                format!("{} is outside 1–{MAX_TIMEOUT_S}", self.timeout_s),
            ));
        }
        let Some(tls) = &self.tls else { return Ok(None) };
        let client = tls.client(&self.host).map_err(|e| SettingsError {
            section: format!("destination {:?}", self.name),
            field: e.field,
            message: format!("[destinations.tls]: {}", e.message),
        })?;
        Ok(Some(client))
    }

    /// The calling AE title to present: this destination's override or `node_ae`.
    pub fn calling_ae<'a>(&'a self, node_ae: &'a str) -> &'a str {
        self.calling_ae_title.as_deref().unwrap_or(node_ae)
    }

    /// Connect, read and write timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_s)
    }

    /// `AE@host:port`, for messages.
    pub fn peer(&self) -> String {
        format!("{}@{}:{}", self.ae_title, self.host, self.port)
    }
}

/// Checks an outbox name (a destination's or a notification endpoint's): it appears in logs,
/// metrics labels and console URLs.
pub(super) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        Some(c) => Err(format!("contains {c:?}; use letters, digits, '-', '_' or '.'")),
        None => Ok(()),
    }
}

/// The `[outbox]` section: how often and how patiently a failed delivery is retried.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts per item (the first one included) before it goes to the dead letters; default 10.
    pub max_attempts: u32,
    /// Wait after the first failed attempt, in seconds; doubled after each further one; default 5.
    pub initial_backoff_s: u64,
    /// Upper bound of the wait between attempts, in seconds; default 600.
    pub max_backoff_s: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            initial_backoff_s: 5,
            max_backoff_s: 600,
        }
    }
}

impl RetryPolicy {
    /// Checks the section; the error names the field.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let err = |field: &'static str, message: String| SettingsError {
            section: "[outbox]".into(),
            field,
            message,
        };
        if self.max_attempts == 0 {
            return Err(err("max_attempts", "must be at least 1".into()));
        }
        if self.initial_backoff_s == 0 {
            return Err(err("initial_backoff_s", "must be at least 1".into()));
        }
        if self.max_backoff_s < self.initial_backoff_s {
            return Err(err(
                "max_backoff_s",
                format!(
                    "{} is below initial_backoff_s = {}",
                    self.max_backoff_s, self.initial_backoff_s
                ),
            ));
        }
        Ok(())
    }

    /// The wait before the next attempt once `attempt` attempts have failed:
    /// 0 for `attempt == 0`, then `initial_backoff_s · 2^(attempt − 1)`, capped at
    /// `max_backoff_s`. Deterministic (no jitter).
    pub fn delay(&self, attempt: u32) -> Duration {
        if attempt == 0 {
            return Duration::ZERO;
        }
        let factor = 1u64.checked_shl(attempt - 1).unwrap_or(u64::MAX);
        let secs = self.initial_backoff_s.saturating_mul(factor).min(self.max_backoff_s);
        Duration::from_secs(secs)
    }

    /// Whether `attempts` made attempts use up the budget (no further attempt).
    pub fn exhausted(&self, attempts: u32) -> bool {
        attempts >= self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_defaults_and_unknown_keys() {
        let d: Destination =
            toml::from_str("name = \"pacs\"\nae_title = \"PACS\"\nhost = \"h\"\nport = 104\n").unwrap();
        assert_eq!(d, Destination::new("pacs", "PACS", "h", 104));
        d.validate().unwrap();
        let bad = toml::from_str::<Destination>("name = \"p\"\nae_title = \"P\"\nhost = \"h\"\nport = 1\nportt = 2\n");
        assert!(bad.unwrap_err().to_string().contains("portt"));
        let r: RetryPolicy = toml::from_str("max_attempts = 3\n").unwrap();
        assert_eq!((r.max_attempts, r.initial_backoff_s, r.max_backoff_s), (3, 5, 600));
    }

    #[test]
    fn validation_names_the_field() {
        let base = Destination::new("pacs", "PACS", "127.0.0.1", 104);
        let cases: Vec<(Destination, &str)> = vec![
            (
                Destination {
                    name: "a b".into(),
                    ..base.clone()
                },
                "`name`",
            ),
            (
                Destination {
                    ae_title: "X".repeat(17),
                    ..base.clone()
                },
                "`ae_title`",
            ),
            (
                Destination {
                    ae_title: "A\\B".into(),
                    ..base.clone()
                },
                "`ae_title`",
            ),
            (
                Destination {
                    calling_ae_title: Some(" ".into()),
                    ..base.clone()
                },
                "`calling_ae_title`",
            ),
            (
                Destination {
                    host: "".into(),
                    ..base.clone()
                },
                "`host`",
            ),
            (
                Destination {
                    port: 0,
                    ..base.clone()
                },
                "`port`",
            ),
            (
                Destination {
                    max_pdu: 100,
                    ..base.clone()
                },
                "`max_pdu`",
            ),
            (
                Destination {
                    timeout_s: 0,
                    ..base.clone()
                },
                "`timeout_s`",
            ),
            (
                Destination {
                    tls: Some(TlsSettings {
                        ca: "/nonexistent/ca.pem".into(),
                        certificate: None,
                        private_key: None,
                        server_name: None,
                    }),
                    ..base.clone()
                },
                "`ca`: [destinations.tls]: /nonexistent/ca.pem",
            ),
        ];
        for (d, needle) in cases {
            let e = d.validate().unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains("destination \""), "{needle}: {e}");
        }
        let r = RetryPolicy {
            max_backoff_s: 1,
            ..RetryPolicy::default()
        };
        assert!(r.validate().unwrap_err().to_string().contains("`max_backoff_s`"));
    }
}
