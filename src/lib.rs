//! fcdnode: DICOM triage node for focal cortical dysplasia type II, and the library its trainer
//! shares.
//!
//! The node's path, one module per stage, each handing one type to the next:
//!
//! | stage | module | input → output |
//! |---|---|---|
//! | ingest | [`ingest`] | TCP association → `ReceivedInstance` (AE checks, bounded PDUs, C-ECHO, C-STORE) |
//! | spool | [`spool`] | `ReceivedInstance` → file fsynced + row in the job database |
//! | tracker | [`tracker`] | stable series → routed channels → a job with its chosen series |
//! | assemble | [`assemble`] | a series' instances → `Assembled` (`Volume` + provenance) |
//! | preprocess | [`preprocess`] | `Volume`s → `ModelInput` (the trainer's recipe) |
//! | infer | [`infer`] | `ModelInput` → `Prediction` (ONNX Runtime fold ensemble) |
//! | explain | [`explain`] | `Prediction` → heatmap on the source grid, hotspot |
//! | report | [`report`] | everything above → SC, SR, `result.json`, preview |
//! | deliver | [`deliver`] | result files → destinations (C-STORE SCU, TLS, fault classes) |
//! | api | [`api`] | HTTP health, readiness, jobs, Prometheus metrics |
//!
//! [`pipeline`] runs assemble → report for one study (`fcdnode infer` and the service's worker);
//! [`service`] wires the stages through the job database; [`demo`] runs the whole loop on one
//! machine; [`config`] turns the TOML file into checked settings once.
//!
//! Shared with the trainer (built without the `node` feature: no tokio, axum, SQLite, rustls):
//! [`volume`] (geometry), [`nifti`], [`preprocess`], [`package`] (manifest, architecture, ONNX
//! writer), [`explain`] (CAM maths, Heat-Score); with the `onnx` feature also [`infer`] and
//! [`pipeline`]. [`synth`] generates seeded synthetic cohorts for tests, benchmarks and the demo;
//! production stages never import it.

#[cfg(feature = "node")]
pub mod api;
pub mod assemble;
#[cfg(feature = "node")]
pub mod audit;
pub mod baseline;
#[cfg(feature = "node")]
pub mod config;
#[cfg(feature = "node")]
pub mod deliver;
#[cfg(feature = "node")]
pub mod demo;
mod dicom_build;
#[cfg(feature = "node")]
mod dimse;
pub mod explain;
#[cfg(feature = "onnx")]
pub mod infer;
#[cfg(feature = "node")]
pub mod ingest;
pub mod nifti;
pub mod package;
#[cfg(feature = "onnx")]
pub mod pipeline;
pub mod preprocess;
pub mod report;
#[cfg(feature = "node")]
pub mod service;
#[cfg(feature = "node")]
pub mod spool;
pub mod synth;
pub mod tracker;
pub mod volume;

pub use volume::{Affine, Grid, Interp, Orientation, Volume, VolumeError};

/// An error and its sources joined by `: ` for one log line or job record; a source whose
/// text the message already holds (thiserror messages often embed theirs) is not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let inner = s.to_string();
        if !text.contains(&inner) {
            text.push_str(": ");
            text.push_str(&inner);
        }
        source = s.source();
    }
    text
}

/// How log lines look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields), for log collectors.
    Json,
}

/// The logging options of both binaries (global: they go before or after the command).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct LogOptions {
    /// Level (error, warn, info, debug, trace) or a full `RUST_LOG`-style filter; overrides
    /// `RUST_LOG`. A bare level keeps ONNX Runtime's own messages at warn.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// Line format.
    #[arg(long, global = true, value_enum, default_value_t)]
    pub log_format: LogFormat,
    /// Append the log to this file (created with mode 0640) instead of writing it to stderr.
    #[arg(long, global = true)]
    pub log_file: Option<std::path::PathBuf>,
}

/// Logging for both binaries: the filter from `--log-level`, else `RUST_LOG`, else `default`
/// (e.g. `info,ort=warn` for the running node: its associations and jobs at info, ONNX
/// Runtime's own graph-optimiser chatter only from warn); text or JSON; stderr or a file.
/// Colour only on a terminal, so that redirected logs carry no ANSI codes.
pub fn init_logging(default: &str, options: &LogOptions) -> std::io::Result<()> {
    use std::io::IsTerminal;
    use std::os::unix::fs::OpenOptionsExt;
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::fmt::writer::BoxMakeWriter;

    let filter = match &options.log_level {
        Some(level) if level.contains('=') || level.contains(',') => EnvFilter::new(level),
        Some(level) => EnvFilter::new(format!("{level},ort=warn")),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
    };
    let (writer, ansi) = match &options.log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .open(path)
                .map_err(|e| std::io::Error::new(e.kind(), format!("--log-file {}: {e}", path.display())))?;
            (BoxMakeWriter::new(std::sync::Mutex::new(file)), false)
        }
        None => (BoxMakeWriter::new(std::io::stderr), std::io::stderr().is_terminal()),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match options.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}
