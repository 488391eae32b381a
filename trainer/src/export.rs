//! A finished cross-validation run → a model package the node loads: one ONNX graph per fold
//! (the root library's writer, from the architecture spec and the fold's trained weights) and
//! `manifest.toml` with the run's exact preprocessing recipe, channels, classes, threshold and
//! provenance (dataset, code version, cross-validated metrics).

use std::path::{Path, PathBuf};

use fcdnode::package::manifest::{Manifest, PackageError};
use fcdnode::package::onnx::{OnnxError, write_onnx};

use crate::config::{CvConfig, Experiment};
use crate::cv::{FoldResult, weights_path};
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
    let results: Vec<FoldResult> = folds.into_iter().map(|(_, r)| r).collect();
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
    manifest.validate(&out.join(fcdnode::package::manifest::MANIFEST_FILE))?;
    manifest.save(out)?;
    Ok(Exported { manifest, graphs })
}
