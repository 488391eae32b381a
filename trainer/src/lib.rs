//! fcdtrain: offline training of fcdnode model packages on BIDS NIfTI data.
//!
//! Experiment flow (built up issue by issue): read a BIDS dataset ([`data::bids`]) → preprocess
//! with the node's own library (`fcdnode`) → train and cross-validate → export a model package.
//!
//! - [`config`]: options → [`config::CvConfig`] (saved as `RUN/config.json`) → experiment grid.
//! - [`data::batcher`]: subjects → cached preprocessed samples → augmented batches.
//! - [`train`]: one fold (Adam, ReduceLROnPlateau, early stopping, balanced sampling).
//! - [`cv`]: folds (stratified, grouped, own split) written once as the run's plan, the fold
//!   loop with resume (all folds, or one per process sharing the run directory), Heat-Scores,
//!   the merge of the folds on disk → [`cv::RunOutcome`] (writes no report).
//! - [`report`]: a [`cv::RunOutcome`] → report.md, metrics.json/csv; the caller (`fcdtrain cv`,
//!   `fcdtrain report`) writes it after [`cv::run`] or [`cv::merge`]. Imports `cv`; `cv` does
//!   not import it.
//! - [`figures`]: PNG drawing (ROC curve, per-subject Grad-CAM panel, montage), used by both.
//! - [`finetune`]: `--init-from`: a model package's weights as each fold's start.
//! - [`calibrate`]: pooled out-of-fold predictions → Platt calibration and decision threshold
//!   (stated by `report`, written into the manifest by `export`).
//! - [`export`]: a run → model package (ONNX per fold + manifest.toml); refuses folds that do
//!   not discriminate on their held-out subjects unless told to keep or drop them.
//! - [`evaluate`] (feature `onnx`, on by default): a package on a BIDS dataset through the node's
//!   own ONNX Runtime path, beside the non-learned baseline → report, metrics, figures.
//!
//! The `fcdtrain` binary adds the command line and `fcdtrain bench step` (timing, not library).

mod atomic;
pub mod calibrate;
pub mod config;
pub mod cv;
pub mod data;
#[cfg(feature = "onnx")]
pub mod evaluate;
pub mod export;
pub mod figures;
pub mod finetune;
pub mod metrics;
pub mod model;
pub mod report;
pub mod train;
