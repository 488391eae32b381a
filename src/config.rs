//! The node's TOML configuration: raw sections as written, validated once into runtime settings
//! with errors that name the key. `fcdnode check-config` runs only this step.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::api::ApiConfig;
use crate::audit::AuditConfig;
use crate::deliver::{Destination, NotifyConfig, RetryPolicy};
use crate::dicom_build::is_uid;
use crate::infer::runtime::Device;
use crate::ingest::{ScpConfig, ScpSettings};
use crate::pipeline::Explain;
use crate::report::{DEFAULT_DEVICE_UID, OutputSelection, OverlayOptions, ReportOptions};
use crate::tracker::TrackerConfig;
use crate::tracker::routing::{Router, RoutingConfig, RoutingError};

/// The whole file. Every section is optional and has documented defaults
/// (`config/fcdnode.toml` lists them).
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[node]`: identity, model and data directory of the service.
    pub node: NodeConfig,
    /// `[scp]`: the DICOM listener.
    pub scp: ScpConfig,
    /// `[tracker]`: when a series is complete.
    pub tracker: TrackerConfig,
    /// `[pipeline]`: how results are made.
    pub pipeline: PipelineConfig,
    /// `[overlay]`: how the heatmap overlay looks (colour map, threshold, negatives).
    pub overlay: OverlayOptions,
    /// `[outputs]`: which DICOM objects each job makes and sends.
    pub outputs: OutputSelection,
    /// `[outbox]`: where results go and how delivery is retried.
    pub outbox: OutboxConfig,
    /// `[[destinations]]`: DICOM peers results can be sent to.
    pub destinations: Vec<Destination>,
    /// `[notify]`: HTTP endpoints told about finished jobs (FHIR, webhooks).
    pub notify: NotifyConfig,
    /// `[retention]`: how long files are kept.
    pub retention: RetentionConfig,
    /// `[api]`: the HTTP API.
    pub api: ApiConfig,
    /// `[routing]`: which series feed which model channel.
    pub routing: RoutingConfig,
    /// `[runtime]`: where ONNX Runtime is and where it runs.
    pub runtime: RuntimeConfig,
    /// `[audit]`: the PS3.15 audit trail.
    pub audit: AuditConfig,
}

/// `[node]`: what the service runs and where it keeps its state.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Directory of spool, job database and results (relative paths: to the working directory).
    pub data_dir: PathBuf,
    /// Model package directory (manifest.toml + ONNX graphs).
    pub model: PathBuf,
    /// Device UID in the Contributing Equipment of our outputs: how the node recognises its own
    /// output coming back. Keep it stable across restarts and unique per installation.
    pub device_uid: String,
    /// UID root for new instances; unset: `2.25.<random>` UUID-derived UIDs.
    pub uid_root: Option<String>,
    /// Institution Name written into the Contributing Equipment Sequence.
    pub institution_name: Option<String>,
    /// Free space, in MiB, below which `/readyz` answers not ready (spool, database or results
    /// volume): a node that cannot store or write results should not be sent studies. While
    /// the spool volume is below it, C-STOREs are refused with 0xA700. 0: no check.
    pub min_free_mb: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("var/fcdnode"),
            model: PathBuf::from("models/demo"),
            device_uid: DEFAULT_DEVICE_UID.into(),
            uid_root: None,
            institution_name: None,
            min_free_mb: 1024,
        }
    }
}

/// `[pipeline]`: how each job's outputs are made.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Heatmap method: "gradcampp" (default), "gradcam" or "occlusion" (slow: one model run per
    /// patch).
    pub explain: Explain,
    /// One Multi-frame True Color SC instance (true) or one single-frame SC per slice (false,
    /// for PACS and viewers without multi-frame support).
    pub multiframe_sc: bool,
    /// Series Number of the heatmap SC series.
    pub sc_series_number: u32,
    /// Series Number of the SR series.
    pub sr_series_number: u32,
    /// Series Number of the heatmap Parametric Map series.
    pub pm_series_number: u32,
    /// Series Number of the hotspot Segmentation series.
    pub seg_series_number: u32,
    /// Series Number of the key image series.
    pub key_image_series_number: u32,
    /// Seconds between looks at the job queue when it is empty.
    pub poll_s: f64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            explain: Explain::default(),
            multiframe_sc: true,
            sc_series_number: 9901,
            sr_series_number: 9902,
            pm_series_number: 9903,
            seg_series_number: 9904,
            key_image_series_number: 9905,
            poll_s: 0.5,
        }
    }
}

/// `[outbox]`: which destinations get each result, and the retry policy.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Names of `[[destinations]]` that receive every result.
    pub send_to: Vec<String>,
    /// Also send results to the destination whose `ae_title` equals the calling AE that sent
    /// the series (answer the sender).
    pub reply_to_sender: bool,
    /// Seconds between looks for due deliveries.
    pub poll_s: f64,
    /// Retry policy for transient faults (`[outbox.retry]`).
    pub retry: RetryPolicy,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            send_to: Vec::new(),
            reply_to_sender: false,
            poll_s: 1.0,
            retry: RetryPolicy::default(),
        }
    }
}

impl OutboxConfig {
    /// Destination names for a result of a series sent by `calling_ae`.
    pub fn destinations_for(&self, calling_ae: &str, destinations: &[Destination]) -> Vec<String> {
        let mut names = self.send_to.clone();
        if self.reply_to_sender {
            for d in destinations {
                if d.ae_title.trim() == calling_ae.trim() && !names.contains(&d.name) {
                    names.push(d.name.clone());
                }
            }
        }
        names
    }
}

/// `[retention]`: what is deleted, and when. 0 keeps forever.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Days a received instance stays in the spool.
    pub spool_days: f64,
    /// Days a job's result directory (SC, SR, preview, result.json) is kept.
    pub results_days: f64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            spool_days: 7.0,
            results_days: 30.0,
        }
    }
}

/// `[runtime]`: the ONNX Runtime library and execution settings.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Path of `libonnxruntime.so`; when absent, `ORT_DYLIB_PATH`, then the project-local
    /// `.tools/libonnxruntime.so` from `scripts/setup.sh`.
    pub onnxruntime: Option<PathBuf>,
    /// `auto` (CUDA when its provider and a GPU are present, else CPU), `cpu` or `cuda`.
    pub device: Device,
    /// Intra-op threads per session; 0 lets ONNX Runtime choose.
    pub threads: usize,
}

/// The configuration checked once, cut by stage: each stage takes its part and never checks a
/// value again.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `[node]`.
    pub node: NodeConfig,
    /// `[scp]`, with its bind address and allow-list parsed.
    pub scp: Arc<ScpSettings>,
    /// `[tracker]`.
    pub tracker: TrackerConfig,
    /// Compiled `[routing]` rules.
    pub router: Router,
    /// `[pipeline]`.
    pub pipeline: PipelineConfig,
    /// `[overlay]`, ranges checked.
    pub overlay: OverlayOptions,
    /// `[outputs]`.
    pub outputs: OutputSelection,
    /// `[outbox]`.
    pub outbox: OutboxConfig,
    /// `[[destinations]]`, names unique, every `send_to` defined.
    pub destinations: Vec<Destination>,
    /// `[notify]`, endpoint names unique among endpoints and destinations.
    pub notify: NotifyConfig,
    /// `[retention]`.
    pub retention: RetentionConfig,
    /// `[api]`.
    pub api: ApiConfig,
    /// `[runtime]`.
    pub runtime: RuntimeConfig,
    /// `[audit]`.
    pub audit: AuditConfig,
}

impl Settings {
    /// How the report stage lays out and numbers the outputs (`[pipeline]`, `[overlay]`,
    /// `[outputs]`).
    pub fn report_options(&self) -> ReportOptions {
        ReportOptions {
            multiframe: self.pipeline.multiframe_sc,
            series_number_sc: self.pipeline.sc_series_number,
            series_number_sr: self.pipeline.sr_series_number,
            series_number_pm: self.pipeline.pm_series_number,
            series_number_seg: self.pipeline.seg_series_number,
            series_number_key: self.pipeline.key_image_series_number,
            outputs: self.outputs,
            overlay: self.overlay.clone(),
            notify_sr_url: (!self.notify.endpoints.is_empty()).then(|| self.notify.sr_url.clone()),
            ..ReportOptions::default()
        }
    }

    /// The destinations a job's results go to: `[outbox] send_to`, plus the sender's own
    /// destination when `reply_to_sender` is set.
    pub fn destinations_for(&self, calling_ae: &str) -> Vec<String> {
        self.outbox.destinations_for(calling_ae, &self.destinations)
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TOML does not parse or has unknown keys (the message names line and key).
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    /// `[routing]` is invalid.
    #[error("{path}: [routing]: {source}")]
    Routing {
        path: PathBuf,
        #[source]
        source: RoutingError,
    },
    /// A value breaks a rule; the message names section and key.
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// Reads and parses a TOML file (unknown keys are errors).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Checks every section; `origin` names the file in errors.
    pub fn validate(&self, origin: &Path) -> Result<Settings, ConfigError> {
        let router = Router::new(&self.routing).map_err(|source| ConfigError::Routing {
            path: origin.to_owned(),
            source,
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: origin.to_owned(),
            message,
        };
        let scp = self.scp.clone().check().map_err(|e| invalid(format!("[scp] {e}")))?;
        self.tracker.validate().map_err(|e| invalid(e.to_string()))?;
        self.outbox.retry.validate().map_err(|e| invalid(e.to_string()))?;
        let api = self.api.resolved().map_err(|e| invalid(format!("[api] {e}")))?;
        self.audit.validate().map_err(|e| invalid(e.to_string()))?;
        self.overlay.validate().map_err(|e| invalid(format!("[overlay] {e}")))?;
        for (i, d) in self.destinations.iter().enumerate() {
            d.validate()
                .map_err(|e| invalid(format!("[[destinations]] #{} ({:?}): {e}", i + 1, d.name)))?;
            if self.destinations[..i].iter().any(|o| o.name == d.name) {
                return Err(invalid(format!("[[destinations]] name {:?} is used twice", d.name)));
            }
        }
        self.notify.validate().map_err(|e| invalid(e.to_string()))?;
        if let Some(e) = self
            .notify
            .endpoints
            .iter()
            .find(|e| self.destinations.iter().any(|d| d.name == e.name))
        {
            return Err(invalid(format!(
                "[[notify.endpoints]] name {:?} is also a [[destinations]] name: the outbox needs them apart",
                e.name
            )));
        }
        for name in &self.outbox.send_to {
            if !self.destinations.iter().any(|d| &d.name == name) {
                return Err(invalid(format!(
                    "[outbox] send_to names {name:?}, which no [[destinations]] entry defines"
                )));
            }
        }
        for (key, value) in [
            ("[outbox] poll_s", self.outbox.poll_s),
            ("[pipeline] poll_s", self.pipeline.poll_s),
        ] {
            if !(value.is_finite() && value >= 0.05) {
                return Err(invalid(format!("{key} = {value}: must be at least 0.05 seconds")));
            }
        }
        for (key, value) in [
            ("[retention] spool_days", self.retention.spool_days),
            ("[retention] results_days", self.retention.results_days),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(invalid(format!(
                    "{key} = {value}: must be a number of days ≥ 0 (0 keeps)"
                )));
            }
        }
        if !is_uid(&self.node.device_uid) {
            return Err(invalid(format!(
                "[node] device_uid = {:?}: not a DICOM UID (digits and dots, at most 64 characters)",
                self.node.device_uid
            )));
        }
        if let Some(root) = &self.node.uid_root
            && !(is_uid(root) && root.len() <= 40)
        {
            return Err(invalid(format!(
                "[node] uid_root = {root:?}: not a UID root (digits and dots, at most 40 characters)"
            )));
        }
        Ok(Settings {
            node: self.node.clone(),
            scp: Arc::new(scp),
            tracker: self.tracker.clone(),
            router,
            pipeline: self.pipeline.clone(),
            overlay: self.overlay.clone(),
            outputs: self.outputs,
            outbox: self.outbox.clone(),
            destinations: self.destinations.clone(),
            notify: self.notify.clone(),
            retention: self.retention.clone(),
            api,
            runtime: self.runtime.clone(),
            audit: self.audit.clone(),
        })
    }
}

/// Loads and validates `path`, or the defaults when `None`.
pub fn settings(path: Option<&Path>) -> Result<Settings, ConfigError> {
    match path {
        Some(p) => Config::load(p)?.validate(p),
        None => Config::default().validate(Path::new("(defaults)")),
    }
}

/// Loads `path` unchecked, or the defaults when `None`: for callers that adjust a few values
/// (the demo, the benchmarks) and then validate.
pub fn load_or_default(path: Option<&Path>) -> Result<Config, ConfigError> {
    path.map_or_else(|| Ok(Config::default()), Config::load)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_is_valid_and_states_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/fcdnode.toml");
        let config = Config::load(&path).unwrap();
        config.validate(&path).unwrap();
        assert_eq!(config, Config::default(), "config/fcdnode.toml must list the defaults");
    }

    #[test]
    fn outputs_reach_the_report_options() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outputs.toml");
        std::fs::write(&path, "[outputs]\nkey_image = false\nparametric_map = false\n").unwrap();
        let report = Config::load(&path).unwrap().validate(&path).unwrap().report_options();
        assert!(!report.outputs.key_image && !report.outputs.parametric_map);
        assert!(report.outputs.overlay_series && report.outputs.segmentation && report.outputs.structured_report);
        std::fs::write(&path, "[outputs]\nkey_images = false\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("key_images") && err.contains("key_image"), "{err}");
    }

    #[test]
    fn errors_name_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[routing]\nrules = []\nsurprise = 1\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("bad.toml") && err.contains("surprise"), "{err}");
        std::fs::write(&path, "[[routing.rules]]\nname = \"r\"\nnames = \"[\"\n").unwrap();
        let err = Config::load(&path).unwrap().validate(&path).unwrap_err().to_string();
        assert!(err.contains("bad.toml") && err.contains("rule \"r\""), "{err}");
        std::fs::write(&path, "[overlay]\nthreshold = 1.5\n").unwrap();
        let err = Config::load(&path).unwrap().validate(&path).unwrap_err().to_string();
        assert!(err.contains("[overlay] threshold = 1.5"), "{err}");
        std::fs::write(&path, "[overlay]\ncolour_map = \"rainbow\"\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("rainbow") && err.contains("inferno"), "{err}");
        let err = Config::load(&dir.path().join("absent.toml")).unwrap_err().to_string();
        assert!(err.contains("absent.toml"), "{err}");
        std::fs::write(
            &path,
            "[[destinations]]\nname = \"pacs\"\nae_title = \"PACS\"\nhost = \"h\"\nport = 104\n\
             [destinations.tls]\nca = \"/nonexistent/ca.pem\"\n",
        )
        .unwrap();
        let err = Config::load(&path).unwrap().validate(&path).unwrap_err().to_string();
        assert!(
            err.contains("bad.toml") && err.contains("`ca`") && err.contains("/nonexistent/ca.pem"),
            "{err}"
        );
    }
}
