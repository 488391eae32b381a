//! A finished cross-validation run → a model package the node loads: one ONNX graph per fold
//! (the root library's writer, from the architecture spec and the fold's trained weights) and
//! `manifest.toml` with the run's exact preprocessing recipe, channels, classes, the decision
//! ([`Decision`]: Platt calibration and threshold chosen on the exported folds' out-of-fold
//! predictions), each fold's held-out metrics (`[[fold_metrics]]`), provenance (dataset, code
//! version, cross-validated metrics) and the heatmap reference level that makes the node's colour
//! scale absolute (`[heatmap]`).
//!
//! Fold health: a fold whose held-out ROC-AUC is below a floor (or undefined) does not
//! discriminate and is refused, unless the caller keeps it ([`WeakFolds::Keep`]) or exports
//! the other folds ([`WeakFolds::Drop`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use fcdnode::explain::cam::{CamError, grad_cam, grad_cam_pp};
use fcdnode::explain::reference_level;
use fcdnode::package::manifest::{FoldMetrics, FoldStatus, HeatmapReference, Manifest, PackageError};
use fcdnode::package::onnx::{OnnxError, write_onnx};
use fcdnode::package::weights::Weights;
use ndarray::{Array2, Array3, Array4};

use crate::calibrate::{Decision, DecisionError};
use crate::config::{CvConfig, Experiment};
use crate::cv::{BASELINE_FILE, FoldResult, weights_path};
use crate::data::batcher::{batch, prepare};
use crate::data::bids::Dataset;
use crate::data::lesion::{BaselineFigures, BaselineOutcome, baseline_figures};
use crate::metrics::{Confusion, roc_auc};
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
    /// Folds below the ROC-AUC floor, neither kept nor dropped.
    #[error(
        "{folds}: held-out ROC-AUC below --min-fold-auc {floor}; a fold that does not discriminate on its held-out subjects does not ship: retrain, or export it anyway with --keep-weak-folds, or only the other folds with --drop-weak-folds"
    )]
    WeakFolds { folds: String, floor: f64 },
    /// `--drop-weak-folds` left no fold.
    #[error("every fold is below --min-fold-auc {floor} ({folds}): nothing to export")]
    AllWeak { folds: String, floor: f64 },
    /// The ROC-AUC floor is not a ROC-AUC.
    #[error("--min-fold-auc {value}: must be in [0, 1]")]
    Floor { value: f64 },
    /// No threshold or calibration could be chosen on the exported folds' predictions.
    #[error("decision threshold and calibration")]
    Decision(#[from] DecisionError),
}

/// The held-out ROC-AUC a fold needs by default (`--min-fold-auc`).
pub const MIN_FOLD_AUC: f64 = 0.7;

/// What [`export`] does with a fold below the ROC-AUC floor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeakFolds {
    /// Stop with [`ExportError::WeakFolds`] naming each.
    #[default]
    Refuse,
    /// Export it anyway, marked `weak_kept` in `[[fold_metrics]]`.
    Keep,
    /// Export the other folds, marked `weak_dropped`.
    Drop,
}

/// How [`export`] judges fold health.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ExportOptions {
    /// Held-out ROC-AUC a fold needs.
    pub min_fold_auc: f64,
    /// What to do with a fold below it.
    pub weak_folds: WeakFolds,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            min_fold_auc: MIN_FOLD_AUC,
            weak_folds: WeakFolds::Refuse,
        }
    }
}

/// What was exported.
#[derive(Debug)]
pub struct Exported {
    pub manifest: Manifest,
    /// ONNX files, one per exported fold.
    pub graphs: Vec<PathBuf>,
    /// The threshold rule, calibration and what they give on the exported folds' predictions.
    pub decision: Decision,
    /// Weak folds exported anyway, and weak folds left out (`fold-2 (ROC-AUC 0.550)`).
    pub kept_weak: Vec<String>,
    pub dropped: Vec<String>,
    /// The model against the non-learned baseline on the exported folds' test subjects; `None`
    /// for runs from before `RUN/baseline.json` existed.
    pub against_baseline: Option<AgainstBaseline>,
}

/// The exported folds' out-of-fold figures beside the baseline's on the same subjects.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AgainstBaseline {
    /// Pooled out-of-fold ROC-AUC of the model.
    pub model_roc_auc: f64,
    /// Mean over the exported folds of the model's hotspot-within-10-mm rate.
    pub model_hit_10mm: f64,
    /// The baseline on the same subjects.
    pub baseline: BaselineFigures,
}

impl AgainstBaseline {
    /// Whether the model is at least as good as the baseline in ranking and in pointing at the
    /// lesion (a figure the run lacks is not held against it).
    pub fn beaten(&self) -> bool {
        let at_least = |model: f64, baseline: f64| model.is_nan() || baseline.is_nan() || model >= baseline;
        at_least(self.model_roc_auc, self.baseline.roc_auc) && at_least(self.model_hit_10mm, self.baseline.hit_10mm)
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        format!(
            "model ROC-AUC {:.3}, hotspot ≤ 10 mm {:.3}; baseline ROC-AUC {:.3}, hotspot ≤ 10 mm {:.3} ({} subjects, out-of-fold)",
            self.model_roc_auc,
            self.model_hit_10mm,
            self.baseline.roc_auc,
            self.baseline.hit_10mm,
            self.baseline.subjects
        )
    }
}

/// One fold's held-out figures, from its predictions.
struct Health {
    labels: Vec<bool>,
    probabilities: Vec<f64>,
    roc_auc: f64,
}

impl Health {
    fn of(result: &FoldResult) -> Self {
        let (labels, probabilities): (Vec<bool>, Vec<f64>) =
            result.predictions.iter().map(|p| (p.label, p.probability)).unzip();
        let roc_auc = roc_auc(&labels, &probabilities);
        Self {
            labels,
            probabilities,
            roc_auc,
        }
    }

    /// Below the floor; an undefined AUC (one class held out) shows no discrimination either.
    fn weak(&self, floor: f64) -> bool {
        self.roc_auc.is_nan() || self.roc_auc < floor
    }

    /// `fold-2 (ROC-AUC 0.550)`, for messages.
    fn describe(&self, name: &str) -> String {
        if self.roc_auc.is_finite() {
            format!("{name} (ROC-AUC {:.3})", self.roc_auc)
        } else {
            format!("{name} (ROC-AUC undefined: its held-out subjects are of one class)")
        }
    }
}

/// Which folds a package holds.
struct Selection {
    /// Per fold of the run.
    health: Vec<Health>,
    /// Per fold of the run: whether its graph is exported.
    exported: Vec<bool>,
    /// Weak folds exported anyway, and weak folds left out, described.
    kept_weak: Vec<String>,
    dropped: Vec<String>,
}

/// Judges every fold against `options.min_fold_auc` and applies `options.weak_folds`.
fn select(folds: &[&FoldResult], options: &ExportOptions) -> Result<Selection, ExportError> {
    let floor = options.min_fold_auc;
    let health: Vec<Health> = folds.iter().map(|r| Health::of(r)).collect();
    let weak: Vec<String> = folds
        .iter()
        .zip(&health)
        .filter(|(_, h)| h.weak(floor))
        .map(|(r, h)| h.describe(&r.name))
        .collect();
    let export_weak = match options.weak_folds {
        WeakFolds::Refuse if !weak.is_empty() => {
            return Err(ExportError::WeakFolds {
                folds: weak.join(", "),
                floor,
            });
        }
        WeakFolds::Drop if weak.len() == folds.len() => {
            return Err(ExportError::AllWeak {
                folds: weak.join(", "),
                floor,
            });
        }
        WeakFolds::Drop => false,
        WeakFolds::Refuse | WeakFolds::Keep => true,
    };
    let exported = health.iter().map(|h| export_weak || !h.weak(floor)).collect();
    let (kept_weak, dropped) = if export_weak {
        (weak, Vec::new())
    } else {
        (Vec::new(), weak)
    };
    for w in &kept_weak {
        tracing::warn!("exporting weak fold {w} (--keep-weak-folds)");
    }
    for d in &dropped {
        tracing::warn!("leaving out weak fold {d} (--drop-weak-folds)");
    }
    Ok(Selection {
        health,
        exported,
        kept_weak,
        dropped,
    })
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
/// directory `out`, judging fold health by `options`. Every fold must be finished.
pub fn export(run: &Path, name: Option<&str>, out: &Path, options: &ExportOptions) -> Result<Exported, ExportError> {
    if !(0.0..=1.0).contains(&options.min_fold_auc) {
        return Err(ExportError::Floor {
            value: options.min_fold_auc,
        });
    }
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
    let floor = options.min_fold_auc;
    let results: Vec<&FoldResult> = folds.iter().map(|(_, r)| r).collect();
    let Selection {
        health,
        exported,
        kept_weak,
        dropped,
    } = select(&results, options)?;

    // The decision: fitted on the out-of-fold predictions of the folds the package holds.
    let (labels, raw): (Vec<bool>, Vec<f64>) = health
        .iter()
        .zip(&exported)
        .filter(|(_, e)| **e)
        .flat_map(|(h, _)| h.labels.iter().copied().zip(h.probabilities.iter().copied()))
        .unzip();
    let exported_names: Vec<&str> = folds
        .iter()
        .zip(&exported)
        .filter(|(_, e)| **e)
        .map(|((_, r), _)| r.name.as_str())
        .collect();
    let source = format!("out-of-fold predictions of {}", exported_names.join(", "));
    let decision = match Decision::choose(&labels, &raw, config.threshold_rule, &source) {
        // Weak folds shipped on request may not rank at all: a calibration would then invert
        // or flatten them, so the package goes without one.
        Err(e @ DecisionError::NoRanking { .. }) if options.weak_folds == WeakFolds::Keep => {
            tracing::warn!("{e}; exported without calibration (--keep-weak-folds)");
            Decision::uncalibrated(&labels, &raw, config.threshold_rule)?
        }
        other => other?,
    };

    std::fs::create_dir_all(out).map_err(|source| ExportError::Io {
        path: out.to_owned(),
        source,
    })?;
    let recipe = config.recipe();
    let [ni, nj, nk] = recipe.shape;
    let mut names = Vec::new();
    let mut graphs = Vec::new();
    let mut fold_metrics = Vec::new();
    for (k, ((dir, result), h)) in folds.iter().zip(&health).enumerate() {
        // Named by the run's fold number, so a dropped fold leaves a visible gap.
        let file = format!("fold{}.onnx", k + 1);
        if exported[k] {
            let weights = load_weights(&weights_path(dir))?;
            let path = out.join(&file);
            write_onnx(&exp.arch, &weights, [nk, nj, ni], &path)?;
            names.push(file.clone());
            graphs.push(path);
        }
        let calibrated: Vec<f64> = h.probabilities.iter().map(|&p| decision.apply(p)).collect();
        let finite = |v: f64| v.is_finite().then_some(v);
        fold_metrics.push(FoldMetrics {
            fold: result.name.clone(),
            graph: exported[k].then_some(file),
            n: h.labels.len(),
            positives: h.labels.iter().filter(|&&y| y).count(),
            roc_auc: finite(h.roc_auc),
            accuracy: finite(Confusion::at(&h.labels, &calibrated, decision.threshold).accuracy()),
            status: match (h.weak(floor), exported[k]) {
                (false, _) => FoldStatus::Healthy,
                (true, true) => FoldStatus::WeakKept,
                (true, false) => FoldStatus::WeakDropped,
            },
        });
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
    manifest.threshold = decision.threshold;
    manifest.calibration = decision.calibration.clone();
    manifest.fold_metrics = fold_metrics;
    // The cross-validated means cover every fold, dropped ones too: choosing folds by their
    // scores and then averaging only those would flatter the estimate.
    let all_results: Vec<FoldResult> = folds.iter().map(|(_, r)| r.clone()).collect();
    let (mean, _) = summary(&all_results);
    let (folds_dirs, results): (Vec<PathBuf>, Vec<FoldResult>) = folds
        .into_iter()
        .zip(&exported)
        .filter(|(_, e)| **e)
        .map(|(f, _)| f)
        .unzip();
    manifest.provenance.dataset = config.data.display().to_string();
    manifest.provenance.code_version = format!("fcdnode-trainer {}", env!("CARGO_PKG_VERSION"));
    manifest.provenance.validation = format!("{} folds ({})", all_results.len(), exp.name);
    if !dropped.is_empty() {
        manifest.provenance.validation += &format!(
            "; {} exported, weak fold(s) dropped: {}",
            results.len(),
            dropped.join(", ")
        );
    }
    manifest.provenance.threshold_rule = decision.describe();
    manifest.provenance.min_fold_auc = Some(floor);
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
    if !kept_weak.is_empty() {
        manifest.provenance.notes += &format!("; weak fold(s) kept by --keep-weak-folds: {}", kept_weak.join(", "));
    }
    if decision.calibration.is_none() {
        manifest.provenance.notes +=
            "; no calibration: the out-of-fold probabilities do not rank patients above controls";
    }
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
    let against_baseline = read_json::<BTreeMap<String, BaselineOutcome>>(&run.join(BASELINE_FILE))
        .ok()
        .map(|baseline| {
            // `results`: the exported folds.
            let subjects = results
                .iter()
                .flat_map(|r| r.predictions.iter().map(|p| p.subject.as_str()));
            let hits: Vec<f64> = results
                .iter()
                .map(|r| r.metrics.hit_10mm)
                .filter(|h| h.is_finite())
                .collect();
            AgainstBaseline {
                model_roc_auc: roc_auc(&labels, &raw),
                model_hit_10mm: crate::metrics::mean_std(&hits).0,
                baseline: baseline_figures(subjects, &baseline),
            }
        });
    if let Some(a) = against_baseline.filter(|a| !a.beaten()) {
        tracing::warn!("the model does not beat the non-learned baseline: {}", a.describe());
    }
    Ok(Exported {
        manifest,
        graphs,
        decision,
        kept_weak,
        dropped,
        against_baseline,
    })
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
            sum_pp = add(sum_pp, grad_cam_pp(a.view(), fc, class, exp.arch.pooling)?);
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
        .classifier()
        .map_err(|e| ExportError::Heatmap { rule: e.to_string() })
}
