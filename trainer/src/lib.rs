//! fcdtrain: offline training of fcdnode model packages on BIDS NIfTI data.
//!
//! Experiment flow (built up issue by issue): read a BIDS dataset ([`data::bids`]) → preprocess
//! with the node's own library (`fcdnode`) → train and cross-validate → export a model package.
//!
//! - [`config`]: options → [`config::CvConfig`] (saved as `RUN/config.json`) → experiment grid.
//! - [`data::batcher`]: subjects → cached preprocessed samples → augmented batches.
//! - [`train`]: one fold (Adam, ReduceLROnPlateau, early stopping, balanced sampling).
//! - [`cv`]: folds (stratified, grouped, own split), the fold loop with resume, Heat-Scores.
//! - [`report`]: report.md, metrics.json/csv, ROC and Grad-CAM PNGs.
//! - [`export`]: a run → model package (ONNX per fold + manifest.toml).

pub mod bench;
pub mod config;
pub mod cv;
pub mod data;
pub mod export;
pub mod finetune;
pub mod metrics;
pub mod model;
pub mod report;
pub mod train;
