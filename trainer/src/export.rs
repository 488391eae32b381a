//! A finished cross-validation run → a model package the node loads: one ONNX graph per fold
//! (the root library's writer, from the architecture spec and the fold's trained weights) and
//! `manifest.toml` with the run's exact preprocessing recipe, channels, classes, threshold,
//! provenance (dataset, code version, cross-validated metrics) and the heatmap reference level
//! that makes the node's colour scale absolute (`[heatmap]`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use fcdnode::explain::cam::{CamError, grad_cam, grad_cam_pp};
use fcdnode::explain::reference_level;
use fcdnode::package::manifest::{HeatmapReference, Manifest, PackageError};
use fcdnode::package::onnx::{OnnxError, write_onnx};
use fcdnode::package::weights::Weights;
use ndarray::{Array2, Array3, Array4, Ix2};

use crate::config::{CvConfig, Experiment};
use crate::cv::{FoldResult, weights_path};
use crate::data::batcher::{batch, prepare};
use crate::data::bids::Dataset;
use crate::model::{ModelError, ResNet3d, device_from_name};
use crate::report::summary;
use crate::train::{TrainError, load_weights};

/// Why a package could not be exported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// A run file is missing or unreadable.
    #[error("{path}: {rule}")]
    Run { path: PathBuf, rule: String },
    /// The run has several experiments and none was named.
    #[error("the run has several experiments; pick one with --experiment ({available})")]
    Ambiguous { available: String },
    /// The named experiment is not in the run.
    #[error("no experiment {name:?} in the run (available: {available})")]
    NoExperiment { name: String, available: String },
    /// A fold's weights could not be read.
    #[error("fold weights")]
    Weights(#[from] TrainError),
    /// Writing an ONNX graph failed.
    #[error("ONNX export")]
    Onnx(#[from] OnnxError),
    /// Writing the manifest failed.
    #[error("manifest")]
    Manifest(#[from] PackageError),
    /// A fold network could not be built for the heatmap reference.
    #[error("heatmap reference")]
    Model(#[from] ModelError),
    /// A heatmap for the reference could not be computed.
    #[error("heatmap reference")]
    Cam(#[from] CamError),
    /// A fold's outputs do not have the shape the heatmap reference needs.
    #[error("heatmap reference: {rule}")]
    Heatmap { rule: String },
    /// The output directory could not be made.
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What was exported.
#[derive(Debug)]
pub struct Exported {
    pub manifest: Manifest,
    /// ONNX files, one per fold.
    pub graphs: Vec<PathBuf>,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ExportError> {
    let bytes = std::fs::read(path).map_err(|e| ExportError::Run {
        path: path.to_owned(),
        rule: e.to_string(),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ExportError::Run {
        path: path.to_owned(),
        rule: e.to_string(),
    })
}

/// Exports experiment `name` (or the run's only one) of the run in `run` to the package
/// directory `out`. Every fold must be finished.
pub fn export(run: &Path, name: Option<&str>, out: &Path) -> Result<Exported, ExportError> {
    let config: CvConfig = read_json(&run.join("config.json"))?;
    let experiments = config.experiments().map_err(|e| ExportError::Run {
        path: run.join("config.json"),
        rule: e.to_string(),
    })?;
    let available = experiments
        .iter()
        .map(|e| e.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let exp: &Experiment = match name {
        Some(n) => experiments
            .iter()
            .find(|e| e.name == n)
            .ok_or_else(|| ExportError::NoExperiment {
                name: n.into(),
                available: available.clone(),
            })?,
        None if experiments.len() == 1 => &experiments[0],
        None => return Err(ExportError::Ambiguous { available }),
    };
    let exp_dir = run.join(&exp.name);
    let mut folds: Vec<(PathBuf, FoldResult)> = Vec::new();
    for k in 1.. {
        let dir = exp_dir.join(format!("fold-{k}"));
        if !dir.is_dir() {
            break;
        }
        let result: FoldResult = read_json(&dir.join("result.json"))?;
        folds.push((dir, result));
    }
    if folds.is_empty() {
        return Err(ExportError::Run {
            path: exp_dir,
            rule: "no finished fold (run `fcdtrain cv` first)".into(),
        });
    }
    std::fs::create_dir_all(out).map_err(|source| ExportError::Io {
        path: out.to_owned(),
        source,
    })?;
    let recipe = config.recipe();
    let [ni, nj, nk] = recipe.shape;
    let mut names = Vec::new();
    let mut graphs = Vec::new();
    for (k, (dir, _)) in folds.iter().enumerate() {
        let weights = load_weights(&weights_path(dir))?;
        let file = format!("fold{}.onnx", k + 1);
        let path = out.join(&file);
        write_onnx(&exp.arch, &weights, [nk, nj, ni], &path)?;
        names.push(file);
        graphs.push(path);
    }
    let package_name = out
        .file_name()
        .map_or_else(|| exp.name.clone(), |n| n.to_string_lossy().into_owned());
    let mut manifest = Manifest::fcd_classifier(
        &package_name,
        env!("CARGO_PKG_VERSION"),
        exp.modalities.clone(),
        recipe,
        exp.arch.clone(),
        names,
    );
    manifest.description = format!(
        "{} trained by fcdtrain {}: TL {}, train layers {}, {}",
        exp.arch.name(),
        env!("CARGO_PKG_VERSION"),
        exp.tl_label(),
        exp.train_layers,
        exp.modality_label()
    );
    let (folds_dirs, results): (Vec<PathBuf>, Vec<FoldResult>) = folds.into_iter().unzip();
    let (mean, _) = summary(&results);
    manifest.provenance.dataset = config.data.display().to_string();
    manifest.provenance.code_version = format!("fcdnode-trainer {}", env!("CARGO_PKG_VERSION"));
    manifest.provenance.validation = format!("{} folds ({})", results.len(), exp.name);
    for (key, value) in crate::cv::Metrics::NAMES.iter().zip(mean.values()) {
        if value.is_finite() {
            manifest.provenance.metrics.insert((*key).into(), value);
        }
    }
    manifest.provenance.notes = format!(
        "Heat-Score background: {}; seed {}",
        crate::report::background_description(),
        config.seed
    );
    match heatmap_reference(&config, exp, run, &folds_dirs, &results, manifest.positive_class)? {
        Ok(reference) => manifest.heatmap = Some(reference),
        Err(reason) => {
            // The package still works; the node then shows a relative scale and says so.
            tracing::warn!("no heatmap reference level: {reason}");
            manifest.provenance.notes += &format!("; no heatmap reference level: {reason}");
        }
    }
    manifest.validate(&out.join(fcdnode::package::manifest::MANIFEST_FILE))?;
    manifest.save(out)?;
    Ok(Exported { manifest, graphs })
}

/// Why a package is exported without a heatmap reference level (it still works; the node then
/// shows a relative scale and says so).
#[derive(Debug, thiserror::Error)]
enum NoReference {
    /// The run's training data cannot be read or prepared any more.
    #[error("training data unusable: {0}")]
    Data(String),
    /// No fold trained on a lesion subject.
    #[error("no lesion subject in the folds' training sets")]
    NoPositive,
}

/// The `[heatmap]` reference levels: over the training positives (every lesion subject in some
/// fold's training set), the median peak of each one's fold-ensemble map, for Grad-CAM++ and
/// Grad-CAM in the closed forms the node computes ([`fcdnode::explain::cam`]) from the same
/// forward features. The inner `Err` is why no level could be taken (the training data is
/// gone, no positive).
fn heatmap_reference(
    config: &CvConfig,
    exp: &Experiment,
    run: &Path,
    fold_dirs: &[PathBuf],
    results: &[FoldResult],
    class: usize,
) -> Result<Result<HeatmapReference, NoReference>, ExportError> {
    let dataset = match Dataset::open(&config.data) {
        Ok(d) => d,
        Err(e) => return Ok(Err(NoReference::Data(fcdnode::error_chain(&e)))),
    };
    let prepared = match prepare(&dataset, &exp.modalities, &config.recipe(), &run.join("cache")) {
        Ok(p) => p,
        Err(e) => return Ok(Err(NoReference::Data(fcdnode::error_chain(&e)))),
    };
    let trained: BTreeSet<&str> = results
        .iter()
        .flat_map(|r| r.train.iter().map(String::as_str))
        .collect();
    let positives: Vec<_> = prepared
        .samples
        .iter()
        .filter(|s| s.label && trained.contains(s.id.as_str()))
        .collect();
    if positives.is_empty() {
        return Ok(Err(NoReference::NoPositive));
    }
    let device = device_from_name(&config.device)?;
    let mut models = Vec::new();
    for dir in fold_dirs {
        let weights = load_weights(&weights_path(dir))?;
        let fc = fc_weight(&weights)?;
        models.push((ResNet3d::new(&exp.arch, &device)?.load_weights(&weights)?, fc));
    }
    let (mut pp, mut cam) = (Vec::new(), Vec::new());
    for sample in &positives {
        let (mut sum_pp, mut sum_cam): (Option<Array3<f32>>, Option<Array3<f32>>) = (None, None);
        for (model, fc) in &models {
            let (_, features) = model.forward(batch(&[&sample.tensor], &device));
            let [_, c, d, h, w] = features.dims();
            let values = features
                .into_data()
                .try_into_vec_as::<f32>()
                .map_err(|e| ExportError::Heatmap { rule: format!("{e:?}") })?;
            let a = Array4::from_shape_vec((c, d, h, w), values)
                .map_err(|e| ExportError::Heatmap { rule: e.to_string() })?;
            let add = |sum: Option<Array3<f32>>, map: Array3<f32>| {
                Some(match sum {
                    Some(s) => s + &map,
                    None => map,
                })
            };
            sum_pp = add(sum_pp, grad_cam_pp(a.view(), fc, class)?);
            sum_cam = add(sum_cam, grad_cam(a.view(), fc, class)?);
        }
        let n = models.len() as f32;
        pp.extend(sum_pp.map(|s| s / n));
        cam.extend(sum_cam.map(|s| s / n));
    }
    Ok(Ok(HeatmapReference {
        gradcampp: reference_level(&pp),
        gradcam: reference_level(&cam),
        positives: positives.len(),
        method: format!(
            "median over the {} training positives of the peak of each one's {}-fold ensemble map (feature grid)",
            positives.len(),
            models.len()
        ),
    }))
}

/// The classifier weight `[classes, features]` of a fold.
fn fc_weight(weights: &Weights) -> Result<Array2<f32>, ExportError> {
    weights
        .0
        .get("fc.weight")
        .ok_or_else(|| ExportError::Heatmap {
            rule: "the fold has no fc.weight".into(),
        })?
        .clone()
        .into_dimensionality::<Ix2>()
        .map_err(|e| ExportError::Heatmap {
            rule: format!("fc.weight: {e}"),
        })
}
