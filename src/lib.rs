//! fcdnode: DICOM triage node for focal cortical dysplasia type II, and the library its trainer
//! shares.
//!
//! Data path of the node (stages still missing are built issue by issue):
//! DICOM instances → [`assemble`] (`Volume`) → [`tracker::routing`] (T1w / FLAIR / ignore) →
//! [`preprocess`] (`ModelInput`) → [`infer`] (ONNX Runtime) → [`explain`] (CAM, Heat-Score).
//!
//! Shared with the trainer:
//! - [`volume`]: `Volume` (f32 voxels + voxel → LPS mm affine), reorientation, resampling,
//!   crop/pad, foreground mask, z-score; the geometry every other part uses.
//! - [`nifti`]: NIfTI-1 read/write with NIfTI's RAS world mapped to LPS.
//! - [`preprocess`]: the model's input recipe, identical for training and inference.
//! - [`package`]: model package (manifest, architecture spec, named weights, ONNX writer).
//! - [`explain`]: CAM maths and Heat-Score.
//! - [`synth`]: seeded synthetic FCD-II cohort (BIDS NIfTI tree and DICOM series).
//! - [`config`]: the node's TOML configuration, validated once.

pub mod api;
pub mod assemble;
pub mod config;
pub mod deliver;
mod dicom_build;
mod dimse;
pub mod explain;
pub mod infer;
pub mod ingest;
pub mod nifti;
pub mod package;
pub mod pipeline;
pub mod preprocess;
pub mod report;
pub mod service;
pub mod spool;
pub mod synth;
pub mod tracker;
pub mod volume;

pub use volume::{Affine, Grid, Interp, Orientation, Volume, VolumeError};

/// Logging for both binaries: `tracing` to stderr, level from `RUST_LOG` (default `warn`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
}
