//! Notifications: a finished job's result POSTed to HTTP endpoints (a FHIR server's
//! DiagnosticReport endpoint, or a plain JSON webhook) so that a suspected FCD reaches the
//! worklist. They travel through the same outbox as DICOM results: one delivery per endpoint,
//! retried on transient faults, dead letters on permanent ones.

use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::fault::{DeliveryFault, FaultReason};
use super::settings::{MAX_TIMEOUT_S, SettingsError, check_name};
use super::tls::TlsSettings;

/// Longest response body read (and thrown away) from an endpoint.
const MAX_RESPONSE: usize = 64 * 1024;

/// What an endpoint receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointKind {
    /// A FHIR R4 server: the DiagnosticReport is POSTed to `{url}/DiagnosticReport`.
    Fhir,
    /// Any HTTP receiver: a small JSON document POSTed to `url`.
    Webhook,
}

/// Which jobs notify an endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyWhen {
    /// Only studies the model flags: the triage use.
    #[default]
    Suspected,
    /// Every finished job.
    All,
}

/// `[[notify.endpoints]]`: one HTTP receiver.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Name in logs, metrics, the outbox and the console (unique among endpoints and
    /// destinations).
    pub name: String,
    /// `fhir` or `webhook`.
    pub kind: EndpointKind,
    /// `http://` or `https://` URL: the FHIR base, or the webhook's full URL.
    pub url: String,
    /// `suspected` (default) or `all`.
    #[serde(default)]
    pub when: NotifyWhen,
    /// Sent as the `Authorization` header (e.g. `Bearer …`); never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<String>,
    /// Connect and request timeout in seconds (1–3600; default 30).
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
    /// `[notify.endpoints.tls]`: required for `https://`: the CA that signs the endpoint's
    /// certificate, and the node's certificate when the endpoint asks for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSettings>,
}

fn default_timeout_s() -> u64 {
    30
}

/// `[notify]`: endpoints, and how the DiagnosticReport links to the SR.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// URL of the SR in the DiagnosticReport (`presentedForm`); `{study}`, `{series}` and
    /// `{instance}` are replaced by its UIDs (e.g. a DICOMweb WADO-RS URL of the PACS).
    pub sr_url: String,
    /// The receivers.
    pub endpoints: Vec<Endpoint>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            sr_url: "urn:oid:{instance}".into(),
            endpoints: Vec::new(),
        }
    }
}

impl NotifyConfig {
    /// Checks every endpoint; the error names it and the key.
    pub fn validate(&self) -> Result<(), SettingsError> {
        for (i, e) in self.endpoints.iter().enumerate() {
            e.validate()?;
            if self.endpoints[..i].iter().any(|o| o.name == e.name) {
                return Err(e.error("name", "is used by another endpoint".into()));
            }
        }
        if self.sr_url.trim().is_empty() {
            return Err(SettingsError {
                section: "[notify]".into(),
                field: "sr_url",
                message: "must not be empty".into(),
            });
        }
        Ok(())
    }

    /// The endpoint called `name`.
    pub fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.name == name)
    }
}

impl Endpoint {
    fn error(&self, field: &'static str, message: String) -> SettingsError {
        SettingsError {
            section: format!("notification endpoint {:?}", self.name),
            field,
            message,
        }
    }

    /// Checks every field (the TLS files are read).
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.client().map(drop)
    }

    /// Whether a job with this decision notifies the endpoint.
    pub fn wants(&self, suspected: bool) -> bool {
        suspected || self.when == NotifyWhen::All
    }

    /// Where the POST goes.
    pub fn target(&self) -> String {
        match self.kind {
            EndpointKind::Fhir => format!("{}/DiagnosticReport", self.url.trim_end_matches('/')),
            EndpointKind::Webhook => self.url.clone(),
        }
    }

    /// `scheme://host:port` of the endpoint, for messages (no path or query: they may carry
    /// tokens).
    pub fn peer(&self) -> String {
        self.url
            .parse::<Uri>()
            .ok()
            .and_then(|u| {
                let scheme = u.scheme_str()?.to_owned();
                let port = u.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
                Some(format!("{scheme}://{}:{port}", u.host()?))
            })
            .unwrap_or_else(|| "unparsable URL".into())
    }

    /// The HTTP client for this endpoint, checking the settings on the way.
    fn client(&self) -> Result<HttpClient, SettingsError> {
        check_name(&self.name).map_err(|m| self.error("name", m))?;
        let url: Uri = self
            .url
            .parse()
            .map_err(|e| self.error("url", format!("not a URL: {e}")))?;
        let host = url
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| self.error("url", "has no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if !(1..=MAX_TIMEOUT_S).contains(&self.timeout_s) {
            return Err(self.error("timeout_s", format!("{} is outside 1–{MAX_TIMEOUT_S}", self.timeout_s)));
        }
        if self
            .authorization
            .as_deref()
            .is_some_and(|a| HeaderValue::from_str(a).is_err() || a.is_empty())
        {
            return Err(self.error("authorization", "must be a non-empty header value".into()));
        }
        let tls_error = |e: super::TlsSettingsError| SettingsError {
            section: format!("notification endpoint {:?}", self.name),
            field: e.field,
            message: format!("[notify.endpoints.tls]: {}", e.message),
        };
        // Only the configured CA is trusted (as for DICOM TLS): no system store.
        let config = match (url.scheme_str(), &self.tls) {
            (Some("https"), Some(tls)) => tls.client(&host).map_err(tls_error)?.into_parts().0,
            (Some("https"), None) => {
                return Err(self.error(
                    "tls",
                    "an https:// endpoint needs [notify.endpoints.tls] with its `ca`".into(),
                ));
            }
            (Some("http"), None) => TlsSettings::trusting_nobody().map_err(tls_error)?,
            (Some("http"), Some(_)) => return Err(self.error("tls", "is set but the URL is http://".into())),
            (other, _) => {
                return Err(self.error("url", format!("scheme {:?} is not http or https", other.unwrap_or(""))));
            }
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(self.timeout_s)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*config).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Client::builder(TokioExecutor::new()).build(connector))
    }
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// POSTs `file` (a JSON document the report stage wrote) to `endpoint`; 2xx is delivered.
pub async fn post(endpoint: &Endpoint, file: &Path) -> Result<u16, DeliveryFault> {
    let fault = |reason| DeliveryFault::new(&endpoint.name, &endpoint.peer(), Some(file.to_owned()), reason);
    let client = endpoint
        .client()
        .map_err(|e| fault(FaultReason::InvalidDestination(e.to_string())))?;
    // Notifications are a few kilobytes: read on the reactor thread.
    let body = std::fs::read(file).map_err(|e| fault(FaultReason::Unreadable(format!("{}: {e}", file.display()))))?;
    let content_type = match endpoint.kind {
        EndpointKind::Fhir => "application/fhir+json",
        EndpointKind::Webhook => "application/json",
    };
    let mut request = Request::post(endpoint.target())
        .header(header::CONTENT_TYPE, content_type)
        .header(header::ACCEPT, content_type);
    if let Some(authorization) = &endpoint.authorization {
        request = request.header(header::AUTHORIZATION, authorization);
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| fault(FaultReason::InvalidDestination(format!("url: {e}"))))?;
    let during = "posting the notification";
    let timeout = Duration::from_secs(endpoint.timeout_s);
    let response = match tokio::time::timeout(timeout, client.request(request)).await {
        Err(_) => return Err(fault(FaultReason::Timeout { during: during.into() })),
        Ok(Err(e)) if e.is_connect() => return Err(fault(FaultReason::Connect(error_chain(&e)))),
        Ok(Err(e)) => {
            return Err(fault(FaultReason::ConnectionLost {
                during: during.into(),
                detail: error_chain(&e),
            }));
        }
        Ok(Ok(response)) => response,
    };
    let status = response.status().as_u16();
    // The body is read (bounded) so the connection ends cleanly; it is never kept.
    let _ = tokio::time::timeout(timeout, Limited::new(response.into_body(), MAX_RESPONSE).collect()).await;
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(fault(FaultReason::HttpStatus { status }))
    }
}

/// An error and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(toml_text: &str) -> Endpoint {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn endpoints_validate_and_say_what_is_wrong() {
        let fhir = endpoint("name = \"ris\"\nkind = \"fhir\"\nurl = \"http://ris.local:8080/fhir/\"");
        assert_eq!(fhir.validate(), Ok(()));
        assert_eq!(fhir.target(), "http://ris.local:8080/fhir/DiagnosticReport");
        assert_eq!(fhir.peer(), "http://ris.local:8080");
        assert!(fhir.wants(true) && !fhir.wants(false), "suspected only by default");
        let hook = endpoint("name = \"chat\"\nkind = \"webhook\"\nurl = \"http://h/x?token=1\"\nwhen = \"all\"");
        assert!(hook.wants(false));
        assert_eq!(hook.target(), "http://h/x?token=1");
        assert_eq!(hook.peer(), "http://h:80", "no path or query in messages");
        for (text, field) in [
            ("name = \"a b\"\nkind = \"fhir\"\nurl = \"http://h\"", "name"),
            ("name = \"a\"\nkind = \"fhir\"\nurl = \"not a url\"", "url"),
            ("name = \"a\"\nkind = \"fhir\"\nurl = \"ftp://h/\"", "url"),
            ("name = \"a\"\nkind = \"fhir\"\nurl = \"https://h/\"", "tls"),
            (
                "name = \"a\"\nkind = \"fhir\"\nurl = \"http://h/\"\ntimeout_s = 0",
                "timeout_s",
            ),
            (
                "name = \"a\"\nkind = \"fhir\"\nurl = \"http://h/\"\nauthorization = \"\"",
                "authorization",
            ),
            (
                "name = \"a\"\nkind = \"fhir\"\nurl = \"https://h/\"\n[tls]\nca = \"/nonexistent.pem\"",
                "ca",
            ),
        ] {
            let err = endpoint(text).validate().unwrap_err();
            assert_eq!(err.field, field, "{text}: {err}");
        }
        assert!(toml::from_str::<Endpoint>("name = \"a\"\nkind = \"hl7\"\nurl = \"http://h\"").is_err());
        let twice = NotifyConfig {
            endpoints: vec![fhir.clone(), fhir],
            ..NotifyConfig::default()
        };
        assert!(twice.validate().unwrap_err().to_string().contains("another endpoint"));
    }

    #[test]
    fn http_statuses_are_transient_or_permanent() {
        use super::super::FaultKind::{Permanent, Transient};
        for (status, kind) in [
            (503, Transient),
            (429, Transient),
            (408, Transient),
            (400, Permanent),
            (401, Permanent),
            (422, Permanent),
            (404, Permanent),
        ] {
            assert_eq!(FaultReason::HttpStatus { status }.kind(), kind, "{status}");
        }
    }
}
