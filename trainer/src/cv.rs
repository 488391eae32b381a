//! A [`CvConfig`] + a BIDS dataset → per-fold results on disk (`RUN/<experiment>/fold-K/`) → a
//! [`RunOutcome`] for the caller to report (`report::write`; this module never imports it);
//! owns fold assignment (stratified, grouped, the dataset's own split), the fold loop with
//! resume, test-fold evaluation and Grad-CAM Heat-Scores (with a panel PNG per lesion subject,
//! drawn by [`crate::figures`]).
//!
//! A run is [`train`] (all folds, or one: several processes, e.g. the tasks of a cluster job
//! array, may share the run directory) then [`merge`] of what is on disk; [`run`] is both in one
//! process, so a one-machine run and a cluster run report alike. Every process writes the
//! options (`config.json`) and the [`Plan`] once and checks them when they are already there.
//! A fold is finished when its `result.json` exists: a rerun of the same command skips it.
//! Heat-Score background: the head foreground outside the lesion ROI
//! ([`Background::ForegroundOutsideRoi`]), on the model grid.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use burn::tensor::Device;
use fcdnode::explain::{Background, HeatScoreError, feature_map_volume, heat_score};
use fcdnode::volume::Interp;
use ndarray::Array3;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::atomic;
use crate::config::{ConfigError, CvConfig, Experiment};
use crate::data::batcher::{PrepareError, Sample, Skip, batch, prepare};
use crate::data::bids::{BidsError, Dataset};
use crate::data::lesion::{BaselineOutcome, baseline_on, moved_roi_scores};
use crate::figures::{PngError, write_cam_panel};
use crate::finetune::{FinetuneError, InitPackage};
use crate::metrics::{Confusion, roc_auc};
use crate::model::{ModelError, ResNet3d, Tap, TrainLayers, device_from_name, grad_cam, import_medicalnet};
use crate::train::{EpochLog, TrainError, TrainOptions, evaluate, load_weights, save_weights, train_fold};

/// Why a cross-validation run stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CvError {
    /// Bad options.
    #[error("invalid options")]
    Config(#[from] Box<ConfigError>),
    /// The dataset could not be read.
    #[error("dataset")]
    Dataset(#[from] BidsError),
    /// Preprocessing or the cache failed for the whole run.
    #[error("preprocessing")]
    Prepare(#[from] PrepareError),
    /// The network could not be built or loaded.
    #[error("network")]
    Model(#[from] Box<ModelError>),
    /// A MedicalNet checkpoint could not be imported.
    #[error("pretrained weights {path}")]
    Pretrained {
        path: PathBuf,
        #[source]
        source: Box<crate::model::MedicalNetError>,
    },
    /// Training failed.
    #[error("experiment {experiment}, fold {fold}")]
    Train {
        experiment: String,
        fold: usize,
        #[source]
        source: Box<TrainError>,
    },
    /// Too few usable subjects for the folds asked for.
    #[error("experiment {experiment}: {rule}")]
    TooFew { experiment: String, rule: String },
    /// `--group-by` or `--split-column` names a column the dataset lacks.
    #[error("participants.tsv has no column `{column}` (needed by {option})")]
    NoColumn { column: String, option: &'static str },
    /// The output directory holds a run with other options.
    #[error("{path} holds a run with different options ({differences}); use another --out or delete it")]
    OtherRun { path: PathBuf, differences: String },
    /// The output directory's plan differs from the one this process derives from the same
    /// options: the dataset (or its preprocessing) changed since the run began.
    #[error("{path}: the run's plan and this process's disagree: {rule}; has the dataset changed since the run began?")]
    PlanChanged { path: PathBuf, rule: String },
    /// `--fold` beyond the run's folds.
    #[error("--fold {fold}: the run has {folds} fold(s), numbered from 0")]
    NoFold { fold: usize, folds: usize },
    /// A merge of a directory where no run was started.
    #[error("{path} holds no run ({file} missing): start it with `fcdtrain cv` (or a `--fold`) first")]
    NoRun { path: PathBuf, file: &'static str },
    /// A merge while folds are still missing.
    #[error("{path}: unfinished fold(s): {}; train them (`fcdtrain cv … --fold K`) and merge again", .missing.join(", "))]
    Unfinished { path: PathBuf, missing: Vec<String> },
    /// A JSON file of the run could not be parsed.
    #[error("{path}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A file of the run could not be written or read.
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A Heat-Score or heatmap resampling failed.
    #[error("{subject}: Grad-CAM / Heat-Score")]
    Heat { subject: String, rule: String },
    /// A Grad-CAM panel PNG could not be written.
    #[error("Grad-CAM panel")]
    CamPanel(#[from] PngError),
    /// The `--init-from` package cannot start this run.
    #[error("fine-tuning")]
    Finetune(#[from] Box<FinetuneError>),
}

impl From<ConfigError> for CvError {
    fn from(e: ConfigError) -> Self {
        Self::Config(Box::new(e))
    }
}

impl From<FinetuneError> for CvError {
    fn from(e: FinetuneError) -> Self {
        Self::Finetune(Box::new(e))
    }
}

impl From<ModelError> for CvError {
    fn from(e: ModelError) -> Self {
        Self::Model(Box::new(e))
    }
}

/// Metrics of one fold (or their mean / std over folds). NaN (written `null`) when undefined,
/// e.g. ROC-AUC on a test fold with one class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    #[serde(with = "nan_null")]
    pub accuracy: f64,
    #[serde(with = "nan_null")]
    pub roc_auc: f64,
    /// Mean Heat-Score over the fold's lesion subjects with a ROI.
    #[serde(with = "nan_null")]
    pub heat_score: f64,
    #[serde(with = "nan_null")]
    pub sensitivity: f64,
    #[serde(with = "nan_null")]
    pub specificity: f64,
    #[serde(with = "nan_null")]
    pub macro_f1: f64,
    /// Mean over the fold's lesion subjects of the Heat-Score null: the same map scored against
    /// the ROI moved to random places in the head (NaN in runs from before it was measured).
    #[serde(with = "nan_null", default = "nan")]
    pub heat_score_null: f64,
    /// Mean Heat-Score of the Grad-CAM++ map, the one the node shows by default (the node's
    /// closed form from the forward features; NaN in runs from before it was measured).
    #[serde(with = "nan_null", default = "nan")]
    pub heat_score_gradcampp: f64,
    /// Its null, as `heat_score_null` is Grad-CAM's.
    #[serde(with = "nan_null", default = "nan")]
    pub heat_score_gradcampp_null: f64,
    /// Hotspot-within-10-mm rate of the Grad-CAM++ map.
    #[serde(with = "nan_null", default = "nan")]
    pub hit_10mm_gradcampp: f64,
    /// Hotspot-within-2-mm rate of the Grad-CAM++ map.
    #[serde(with = "nan_null", default = "nan")]
    pub hit_2mm_gradcampp: f64,
    /// Fraction of the fold's lesion subjects with a ROI whose heatmap hotspot lies within
    /// 10 mm of the ROI (NaN in runs from before it was measured).
    #[serde(with = "nan_null", default = "nan")]
    pub hit_10mm: f64,
    /// The same within 2 mm (inside the lesion, up to resampling).
    #[serde(with = "nan_null", default = "nan")]
    pub hit_2mm: f64,
}

fn nan() -> f64 {
    f64::NAN
}

impl Metrics {
    /// Metric names in report order.
    pub const NAMES: [&'static str; 13] = [
        "accuracy",
        "roc_auc",
        "heat_score",
        "heat_score_null",
        "sensitivity",
        "specificity",
        "macro_f1",
        "hit_10mm",
        "hit_2mm",
        "heat_score_gradcampp",
        "hit_10mm_gradcampp",
        "hit_2mm_gradcampp",
        "heat_score_gradcampp_null",
    ];

    /// Values in [`Metrics::NAMES`] order.
    pub fn values(&self) -> [f64; 13] {
        [
            self.accuracy,
            self.roc_auc,
            self.heat_score,
            self.heat_score_null,
            self.sensitivity,
            self.specificity,
            self.macro_f1,
            self.hit_10mm,
            self.hit_2mm,
            self.heat_score_gradcampp,
            self.hit_10mm_gradcampp,
            self.hit_2mm_gradcampp,
            self.heat_score_gradcampp_null,
        ]
    }

    /// From values in [`Metrics::NAMES`] order.
    pub fn from_values(v: [f64; 13]) -> Self {
        Self {
            accuracy: v[0],
            roc_auc: v[1],
            heat_score: v[2],
            heat_score_null: v[3],
            sensitivity: v[4],
            specificity: v[5],
            macro_f1: v[6],
            hit_10mm: v[7],
            hit_2mm: v[8],
            heat_score_gradcampp: v[9],
            hit_10mm_gradcampp: v[10],
            hit_2mm_gradcampp: v[11],
            heat_score_gradcampp_null: v[12],
        }
    }
}

mod nan_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

/// One test subject's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub subject: String,
    pub acquisition: String,
    /// True for `fcd`.
    pub label: bool,
    /// Probability of `fcd`.
    pub probability: f64,
    /// Heat-Score of the Grad-CAM (lesion subjects with a ROI; `None` also when the map is flat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heat_score: Option<f64>,
    /// Its null: the mean Heat-Score of the same map against the ROI moved to random places in
    /// the head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heat_score_null: Option<f64>,
    /// Distance in mm from the Grad-CAM hotspot (its maximum on the model grid) to the nearest
    /// ROI voxel, 0 inside (lesion subjects with a ROI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotspot_distance_mm: Option<f64>,
    /// Heat-Score of the Grad-CAM++ map (the node's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heat_score_gradcampp: Option<f64>,
    /// Its null (the ROI moved, as for `heat_score_null`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heat_score_gradcampp_null: Option<f64>,
    /// Distance in mm from the Grad-CAM++ hotspot to the ROI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotspot_distance_gradcampp_mm: Option<f64>,
    /// What was odd about this subject (e.g. a flat map), for the report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// [`RESULT_FILE`] of a fold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FoldResult {
    pub experiment: String,
    /// 0-based.
    pub fold: usize,
    /// Fold name (`fold-1`, or the held-out group).
    pub name: String,
    pub train: Vec<String>,
    pub val: Vec<String>,
    pub metrics: Metrics,
    pub predictions: Vec<Prediction>,
    pub history: Vec<EpochLog>,
    /// Wall time of training and evaluation, seconds.
    pub seconds: f64,
    /// With `--init-from`: the package's weights as they were, on the same test fold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Metrics>,
}

/// One outer fold by subject id (ids, not sample positions, so a fold means the same subjects
/// to every process that reads the plan).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fold {
    /// `fold-1`, or the held-out group.
    pub name: String,
    pub train: Vec<String>,
    pub val: Vec<String>,
    pub test: Vec<String>,
}

/// `RUN/plan.json`: what every process of a run derives alike from the options and the dataset,
/// written once by whichever starts first. A fold process that derives another plan (the data
/// changed under the run) is refused; [`merge`] reads the scheme, skips and warnings from here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// How the folds were made (the report states one: the last experiment's).
    pub scheme: String,
    /// The folds of each experiment, in [`CvConfig::experiments`] order.
    pub experiments: Vec<PlannedExperiment>,
    pub skipped: Vec<Skip>,
    pub warnings: Vec<String>,
}

/// The folds of one experiment (experiments with other channels may skip other subjects).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlannedExperiment {
    pub name: String,
    pub folds: Vec<Fold>,
}

impl Plan {
    /// The parts in which `self` and `other` differ, for the refusal.
    fn differences(&self, other: &Plan) -> Vec<&'static str> {
        [
            ("scheme", self.scheme == other.scheme),
            ("folds", self.experiments == other.experiments),
            ("skipped subjects", self.skipped == other.skipped),
            ("dataset warnings", self.warnings == other.warnings),
        ]
        .into_iter()
        .filter_map(|(part, same)| (!same).then_some(part))
        .collect()
    }
}

/// Which folds a process trains: all (one machine) or one of every experiment (a task of a
/// Kubernetes Indexed Job or a Slurm job array).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FoldChoice {
    All,
    /// 0-based: `fold-(K+1)`.
    One(usize),
}

impl FoldChoice {
    fn includes(self, k: usize) -> bool {
        match self {
            Self::All => true,
            Self::One(j) => j == k,
        }
    }
}

/// What [`train`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrainedFolds {
    /// Folds of the run's largest experiment.
    pub folds: usize,
    /// Folds trained by this call.
    pub trained: usize,
    /// Folds found finished (by an earlier or another process) and left as they were.
    pub resumed: usize,
}

/// Everything a run produced: [`merge`] (and [`run`]) return it, `report::write` reports it.
#[derive(Debug)]
pub struct RunOutcome {
    pub config: CvConfig,
    pub experiments: Vec<(Experiment, Vec<FoldResult>)>,
    pub scheme: String,
    pub skipped: Vec<Skip>,
    pub warnings: Vec<String>,
    /// Folds [`run`] found finished instead of training them (0 from [`merge`]).
    pub resumed: usize,
    /// The non-learned baseline on every subject it could score (it learns nothing, so one
    /// value per subject serves every fold); also written to `RUN/baseline.json`.
    pub baseline: BTreeMap<String, BaselineOutcome>,
}

/// `RUN/baseline.json`: the baseline per subject, for `export`'s comparison.
pub const BASELINE_FILE: &str = "baseline.json";
/// `RUN/config.json`: the options, written once; a process with others is refused.
pub const CONFIG_FILE: &str = "config.json";
/// `RUN/plan.json`: the [`Plan`].
pub const PLAN_FILE: &str = "plan.json";
/// `RUN/<experiment>/fold-K/result.json`: written last, so its presence marks the fold done.
pub const RESULT_FILE: &str = "result.json";

/// The directory of fold `k` (0-based) of experiment `experiment`: `RUN/<experiment>/fold-(k+1)`.
pub fn fold_dir(out: &Path, experiment: &str, k: usize) -> PathBuf {
    out.join(experiment).join(format!("fold-{}", k + 1))
}

/// Stratified k-fold over `labels`: each class shuffled with `seed`, dealt round-robin.
pub fn stratified_folds(labels: &[bool], k: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut folds = vec![Vec::new(); k];
    let mut next = 0;
    for class in [true, false] {
        let mut idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        idx.shuffle(&mut rng);
        for i in idx {
            folds[next % k].push(i);
            next += 1;
        }
    }
    folds.iter_mut().for_each(|f| f.sort_unstable());
    folds
}

/// Folds by group value: leave-one-group-out when there are ≤ `k` groups, else groups dealt
/// (largest first) to the currently smallest fold. Returns (fold name, members).
pub fn grouped_folds(groups: &[String], k: usize) -> Vec<(String, Vec<usize>)> {
    let mut by: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, g) in groups.iter().enumerate() {
        by.entry(g).or_default().push(i);
    }
    if by.len() <= k {
        return by.into_iter().map(|(g, m)| (g.to_string(), m)).collect();
    }
    let mut sorted: Vec<(&str, Vec<usize>)> = by.into_iter().collect();
    sorted.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
    let mut folds: Vec<(Vec<&str>, Vec<usize>)> = vec![(Vec::new(), Vec::new()); k];
    for (g, members) in sorted {
        let smallest = folds.iter_mut().min_by_key(|f| f.1.len()).expect("k ≥ 1 folds");
        smallest.0.push(g);
        smallest.1.extend(members);
    }
    folds
        .into_iter()
        .filter(|f| !f.1.is_empty())
        .map(|(g, mut m)| {
            m.sort_unstable();
            (g.join("+"), m)
        })
        .collect()
}

/// Splits training indices into (train, validation), stratified: `fraction` of each class
/// (at least one of a class with ≥ 2 members when `fraction` > 0) goes to validation.
pub fn inner_split(indices: &[usize], labels: &[bool], fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for class in [true, false] {
        let mut idx: Vec<usize> = indices.iter().copied().filter(|&i| labels[i] == class).collect();
        idx.shuffle(&mut rng);
        let mut n = (idx.len() as f64 * fraction).round() as usize;
        if fraction > 0.0 && idx.len() >= 2 {
            n = n.max(1);
        }
        n = n.min(idx.len().saturating_sub(1));
        val.extend_from_slice(&idx[..n]);
        train.extend_from_slice(&idx[n..]);
    }
    train.sort_unstable();
    val.sort_unstable();
    (train, val)
}

/// The outer folds for `samples` under `config`, and a sentence describing the scheme.
pub fn make_folds(samples: &[Sample], config: &CvConfig) -> Result<(Vec<Fold>, String), CvError> {
    let labels: Vec<bool> = samples.iter().map(|s| s.label).collect();
    let column = |name: &str, option| {
        samples
            .iter()
            .map(|s| {
                s.columns.get(name).cloned().ok_or_else(|| CvError::NoColumn {
                    column: name.into(),
                    option,
                })
            })
            .collect::<Result<Vec<String>, CvError>>()
    };
    let (tests, scheme): (Vec<(String, Vec<usize>)>, String) = if let Some(col) = &config.split_column {
        let values = column(col, "--split-column")?;
        let test: Vec<usize> = (0..samples.len())
            .filter(|&i| values[i].eq_ignore_ascii_case("test"))
            .collect();
        (
            vec![("split".into(), test)],
            format!("the dataset's own split (column `{col}`: train → train/val, test → test)"),
        )
    } else if let Some(col) = &config.group_by {
        let values = column(col, "--group-by")?;
        let folds = grouped_folds(&values, config.folds);
        let distinct: BTreeSet<&String> = values.iter().collect();
        let scheme = if distinct.len() <= config.folds {
            format!("leave-one-group-out by `{col}` ({} groups)", distinct.len())
        } else {
            format!("{} folds grouped by `{col}`", folds.len())
        };
        (folds, scheme)
    } else {
        let folds = stratified_folds(&labels, config.folds, config.seed);
        (
            folds
                .into_iter()
                .enumerate()
                .map(|(i, f)| (format!("fold-{}", i + 1), f))
                .collect(),
            format!("{}-fold stratified", config.folds),
        )
    };
    let scheme = format!(
        "{scheme}; inner {:.0}/{:.0} train/validation split",
        (1.0 - config.val_fraction) * 100.0,
        config.val_fraction * 100.0
    );
    let ids = |idx: &[usize]| idx.iter().map(|&i| samples[i].id.clone()).collect();
    let folds = tests
        .into_iter()
        .enumerate()
        .map(|(k, (name, test))| {
            let rest: Vec<usize> = (0..samples.len()).filter(|i| !test.contains(i)).collect();
            let (train, val) = inner_split(&rest, &labels, config.val_fraction, config.seed.wrapping_add(k as u64));
            Fold {
                name,
                train: ids(&train),
                val: ids(&val),
                test: ids(&test),
            }
        })
        .collect();
    Ok((folds, scheme))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CvError + '_ {
    move |source| CvError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Every fold on this machine, then [`merge`]: the one-machine run is a cluster run in one
/// process, so both give the same report. Finished folds of an earlier run with the same options
/// are kept, not retrained; the report is the caller's (`report::write`, as `fcdtrain cv` does).
/// `stop` is Ctrl-C: checked between epochs.
pub fn run(config: &CvConfig, out: &Path, stop: &AtomicBool) -> Result<RunOutcome, CvError> {
    let trained = train(config, out, FoldChoice::All, stop)?;
    Ok(RunOutcome {
        resumed: trained.resumed,
        ..merge(out)?
    })
}

/// Trains the folds `choice` names, of every experiment, into `out`, keeping folds finished
/// earlier. Several processes may share `out` with no other coordination (one fold each,
/// started together by a cluster): each derives the same options and [`Plan`] and writes them
/// once, and a process whose options or plan differ from those in `out` is refused before it
/// trains. Only a one-machine run ([`FoldChoice::All`]) may change the threshold rule, which
/// is applied after training; a fold process must match the run exactly.
pub fn train(config: &CvConfig, out: &Path, choice: FoldChoice, stop: &AtomicBool) -> Result<TrainedFolds, CvError> {
    let joined = join(config, out, choice)?;
    let folds = joined.plan.experiments.iter().map(|e| e.folds.len()).max().unwrap_or(0);
    if let FoldChoice::One(fold) = choice
        && fold >= folds
    {
        return Err(CvError::NoFold { fold, folds });
    }
    let recipe = config.recipe();
    let mut done = TrainedFolds {
        folds,
        trained: 0,
        resumed: 0,
    };
    for (exp, planned) in joined.experiments.iter().zip(&joined.plan.experiments) {
        let mine: Vec<(usize, &Fold)> = planned
            .folds
            .iter()
            .enumerate()
            .filter(|(k, _)| choice.includes(*k))
            .collect();
        if mine.is_empty() {
            continue;
        }
        // Read back from the cache the plan filled; the plan held no tensors, so that a grid of
        // experiments keeps one experiment's samples in memory at a time.
        let samples = prepare(&joined.dataset, &exp.modalities, &recipe, &out.join("cache"))?.samples;
        for (k, fold) in mine {
            let dir = fold_dir(out, &exp.name, k);
            if read_result(&dir).is_some() {
                tracing::info!(experiment = %exp.name, fold = k + 1, "finished earlier; skipped");
                done.resumed += 1;
                continue;
            }
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            let parts = pick(&samples, fold, out)?;
            let result = run_fold(
                config,
                exp,
                joined.init.as_ref(),
                fold,
                &parts,
                k,
                &dir,
                &joined.device,
                stop,
            )?;
            let path = dir.join(RESULT_FILE);
            let text = serde_json::to_string_pretty(&result).unwrap_or_default();
            atomic::replace(&path, text.as_bytes()).map_err(io_err(&path))?;
            eprintln!(
                "{} {} ({}): accuracy {:.3}, ROC-AUC {:.3}, Heat-Score {:.2} [{:.0} s]",
                exp.name,
                result.name,
                k + 1,
                result.metrics.accuracy,
                result.metrics.roc_auc,
                result.metrics.heat_score,
                result.seconds
            );
            done.trained += 1;
        }
    }
    Ok(done)
}

/// The run in `out` as one [`RunOutcome`] for the report: its options, plan, baseline and every
/// fold's result, whichever processes wrote them. Refuses, naming them, while folds are missing.
pub fn merge(out: &Path) -> Result<RunOutcome, CvError> {
    let config: CvConfig = read_run_file(out, CONFIG_FILE)?;
    let plan: Plan = read_run_file(out, PLAN_FILE)?;
    let baseline: BTreeMap<String, BaselineOutcome> = read_run_file(out, BASELINE_FILE)?;
    let experiments = config.experiments()?;
    if experiments.len() != plan.experiments.len()
        || experiments.iter().zip(&plan.experiments).any(|(e, p)| e.name != p.name)
    {
        return Err(CvError::PlanChanged {
            path: out.join(PLAN_FILE),
            rule: format!("its experiments are not those of {CONFIG_FILE}"),
        });
    }
    let mut missing = Vec::new();
    let mut merged = Vec::new();
    for (exp, planned) in experiments.into_iter().zip(&plan.experiments) {
        let mut results = Vec::new();
        for k in 0..planned.folds.len() {
            match read_result(&fold_dir(out, &exp.name, k)) {
                Some(result) => results.push(result),
                None => missing.push(format!("{} fold-{} (--fold {k})", exp.name, k + 1)),
            }
        }
        merged.push((exp, results));
    }
    if !missing.is_empty() {
        return Err(CvError::Unfinished {
            path: out.to_owned(),
            missing,
        });
    }
    Ok(RunOutcome {
        config,
        experiments: merged,
        scheme: plan.scheme,
        skipped: plan.skipped,
        warnings: plan.warnings,
        resumed: 0,
        baseline,
    })
}

/// A run directory as this process joined it: options claimed, baseline written, plan written
/// or checked; with what training needs.
struct Joined {
    experiments: Vec<Experiment>,
    plan: Plan,
    dataset: Dataset,
    device: Device,
    init: Option<InitPackage>,
}

/// Checks everything it can before it writes a file of the run (a process with bad options must
/// not claim the directory for the others), then claims the options, scores the baseline,
/// preprocesses (filling the cache) and derives the plan.
fn join(config: &CvConfig, out: &Path, choice: FoldChoice) -> Result<Joined, CvError> {
    config.validate()?;
    let experiments = config.experiments()?;
    let dataset = Dataset::open(&config.data)?;
    let device = device_from_name(&config.device)?;
    let recipe = config.recipe();
    let init = config.init_from.as_deref().map(InitPackage::open).transpose()?;
    if let Some(init) = &init {
        for exp in &experiments {
            init.check(&exp.arch, &exp.modalities, &recipe)?;
        }
    }
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    claim_options(config, out, choice == FoldChoice::All)?;
    let mut plan = Plan {
        scheme: String::new(),
        experiments: Vec::new(),
        skipped: Vec::new(),
        warnings: dataset.warnings.clone(),
    };
    let mut baseline = BTreeMap::new();
    for subject in &dataset.subjects {
        match baseline_on(subject) {
            Ok(b) => {
                baseline.insert(subject.id.clone(), b);
            }
            Err(reason) => plan.warnings.push(format!(
                "{}: no baseline: {}",
                subject.id,
                fcdnode::error_chain(&reason)
            )),
        }
    }
    let baseline_path = out.join(BASELINE_FILE);
    let text = serde_json::to_string_pretty(&baseline).unwrap_or_default();
    atomic::replace(&baseline_path, text.as_bytes()).map_err(io_err(&baseline_path))?;
    for exp in &experiments {
        let prepared = prepare(&dataset, &exp.modalities, &recipe, &out.join("cache"))?;
        for s in prepared.skipped {
            if !plan.skipped.contains(&s) {
                plan.skipped.push(s);
            }
        }
        for n in prepared.notes {
            if !plan.warnings.contains(&n) {
                plan.warnings.push(n);
            }
        }
        let samples = prepared.samples;
        let (pos, neg) = (
            samples.iter().filter(|s| s.label).count(),
            samples.iter().filter(|s| !s.label).count(),
        );
        if pos < 1 || neg < 1 || samples.len() < 4 {
            return Err(CvError::TooFew {
                experiment: exp.name.clone(),
                rule: format!("{pos} fcd and {neg} hc usable subjects; need both groups and at least 4"),
            });
        }
        let (folds, scheme) = make_folds(&samples, config)?;
        plan.scheme = scheme;
        plan.experiments.push(PlannedExperiment {
            name: exp.name.clone(),
            folds,
        });
        let exp_dir = out.join(&exp.name);
        std::fs::create_dir_all(&exp_dir).map_err(io_err(&exp_dir))?;
        let exp_json = exp_dir.join(CONFIG_FILE);
        let text = serde_json::to_string_pretty(&exp).unwrap_or_default();
        atomic::replace(&exp_json, text.as_bytes()).map_err(io_err(&exp_json))?;
    }
    claim_plan(&plan, out)?;
    Ok(Joined {
        experiments,
        plan,
        dataset,
        device,
        init,
    })
}

/// Writes `config` as the run's options, or checks it against those already there. With
/// `rerule` (a one-machine run) a different threshold rule is recorded instead of refused.
fn claim_options(config: &CvConfig, out: &Path, rerule: bool) -> Result<(), CvError> {
    let path = out.join(CONFIG_FILE);
    let text = serde_json::to_string_pretty(config).unwrap_or_default();
    let Some(held) = atomic::create_once(&path, text.as_bytes()).map_err(io_err(&path))? else {
        return Ok(());
    };
    let differences = match serde_json::from_slice::<CvConfig>(&held) {
        Ok(held) => option_differences(config, &held),
        Err(e) => BTreeMap::from([(CONFIG_FILE.to_string(), format!("unreadable ({e})"))]),
    };
    if differences.is_empty() {
        return Ok(());
    }
    if rerule && differences.keys().eq(["threshold_rule"]) {
        return atomic::replace(&path, text.as_bytes()).map_err(io_err(&path));
    }
    Err(CvError::OtherRun {
        path: out.to_owned(),
        differences: differences
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("; "),
    })
}

/// The options in which `asked` differs from `held`: name → `ASKED here, HELD in the run`.
fn option_differences(asked: &CvConfig, held: &CvConfig) -> BTreeMap<String, String> {
    if asked == held {
        return BTreeMap::new();
    }
    let fields = |c: &CvConfig| match serde_json::to_value(c) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let (a, h) = (fields(asked), fields(held));
    let mut out: BTreeMap<String, String> = a
        .iter()
        .filter(|(k, v)| h.get(*k) != Some(*v))
        .map(|(k, v)| {
            let there = h.get(k).map_or_else(|| "nothing".to_string(), ToString::to_string);
            (k.clone(), format!("{v} here, {there} in the run"))
        })
        .collect();
    if out.is_empty() {
        out.insert("options".into(), "differ".into());
    }
    out
}

/// Writes `plan` as the run's plan, or checks it equals the one already there.
fn claim_plan(plan: &Plan, out: &Path) -> Result<(), CvError> {
    let path = out.join(PLAN_FILE);
    let text = serde_json::to_string_pretty(plan).unwrap_or_default();
    let Some(held) = atomic::create_once(&path, text.as_bytes()).map_err(io_err(&path))? else {
        return Ok(());
    };
    let rule = match serde_json::from_slice::<Plan>(&held) {
        Ok(held) if held == *plan => return Ok(()),
        Ok(held) => format!("{} differ", plan.differences(&held).join(", ")),
        Err(e) => format!("unreadable ({e})"),
    };
    Err(CvError::PlanChanged { path, rule })
}

/// A JSON file of the run in `out`; a missing one means the run was never started there.
fn read_run_file<T: serde::de::DeserializeOwned>(out: &Path, file: &'static str) -> Result<T, CvError> {
    let path = out.join(file);
    let bytes = std::fs::read(&path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => CvError::NoRun {
            path: out.to_owned(),
            file,
        },
        _ => CvError::Io {
            path: path.clone(),
            source,
        },
    })?;
    serde_json::from_slice(&bytes).map_err(|source| CvError::Json { path, source })
}

/// The result of the fold in `dir`, if it finished (an unreadable one counts as unfinished, so
/// the fold is trained again).
fn read_result(dir: &Path) -> Option<FoldResult> {
    let bytes = std::fs::read(dir.join(RESULT_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The train, validation and test samples of `fold`.
fn pick<'a>(samples: &'a [Sample], fold: &Fold, out: &Path) -> Result<[Vec<&'a Sample>; 3], CvError> {
    let by_id: BTreeMap<&str, &Sample> = samples.iter().map(|s| (s.id.as_str(), s)).collect();
    let part = |ids: &[String]| {
        ids.iter()
            .map(|id| {
                by_id.get(id.as_str()).copied().ok_or_else(|| CvError::PlanChanged {
                    path: out.join(PLAN_FILE),
                    rule: format!("{id} of {} is no longer a usable subject", fold.name),
                })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    Ok([part(&fold.train)?, part(&fold.val)?, part(&fold.test)?])
}

/// The weight file of a finished fold.
pub fn weights_path(fold_dir: &Path) -> PathBuf {
    fold_dir.join("weights.bin")
}

#[allow(clippy::too_many_arguments)]
fn run_fold(
    config: &CvConfig,
    exp: &Experiment,
    init: Option<&InitPackage>,
    fold: &Fold,
    [train, val, test]: &[Vec<&Sample>; 3],
    k: usize,
    dir: &Path,
    device: &Device,
    stop: &AtomicBool,
) -> Result<FoldResult, CvError> {
    let started = std::time::Instant::now();
    let autodiff = device.clone().autodiff();
    let seed = config.seed.wrapping_add(1000 * k as u64);
    autodiff.seed(seed);
    let mut model = ResNet3d::new(&exp.arch, &autodiff)?;
    if let Some(path) = &exp.pretrained {
        let (m, report) = import_medicalnet(model, path).map_err(|source| CvError::Pretrained {
            path: path.clone(),
            source: Box::new(source),
        })?;
        tracing::info!(%report, "MedicalNet weights imported");
        model = m;
    }
    let mut before = None;
    if let Some(init) = init {
        model = model.load_weights(init.fold(k))?;
        let as_is = ResNet3d::new(&exp.arch, device)?.load_weights(init.fold(k))?;
        before = Some(evaluate_test(&as_is, test, config.batch_size, device, None)?.1);
    }
    let layers: TrainLayers = exp.train_layers.parse()?;
    let model = model.freeze_except(&layers);
    let options = TrainOptions {
        epochs: config.epochs,
        patience: config.patience,
        plateau_patience: config.plateau_patience,
        plateau_factor: 0.1,
        batch_size: config.batch_size,
        lr: config.lr,
        augment: config.augment.clone(),
        roi_weight: config.roi_weight,
        seed,
        recalibrate_bn: config.recalibrate_bn,
        label: format!("{} {}", exp.name, fold.name),
    };
    let train_err = |source| CvError::Train {
        experiment: exp.name.clone(),
        fold: k + 1,
        source: Box::new(source),
    };
    let trained = train_fold(model, train, val, &options, device, stop).map_err(train_err)?;
    let weights = trained.model.to_weights()?;
    save_weights(&weights_path(dir), &weights).map_err(train_err)?;
    // Reload to evaluate exactly what was saved (and what export will read).
    let model =
        ResNet3d::new(&exp.arch, device)?.load_weights(&load_weights(&weights_path(dir)).map_err(train_err)?)?;
    let (predictions, metrics) = evaluate_test(&model, test, config.batch_size, device, Some(dir))?;
    Ok(FoldResult {
        experiment: exp.name.clone(),
        fold: k,
        name: fold.name.clone(),
        train: fold.train.clone(),
        val: fold.val.clone(),
        metrics,
        predictions,
        history: trained.history,
        seconds: started.elapsed().as_secs_f64(),
        before,
    })
}

/// Predictions, Heat-Scores and metrics of `model` on a test fold (threshold 0.5); with
/// `cam_dir`, a Grad-CAM panel per lesion subject is written there.
fn evaluate_test(
    model: &ResNet3d,
    test: &[&Sample],
    batch_size: usize,
    device: &Device,
    cam_dir: Option<&Path>,
) -> Result<(Vec<Prediction>, Metrics), CvError> {
    let (probs, _) = evaluate(model, test, batch_size, device);
    let labels: Vec<bool> = test.iter().map(|s| s.label).collect();
    let mut predictions = Vec::new();
    let (mut heat_scores, mut nulls, mut distances) = (Vec::new(), Vec::new(), Vec::new());
    let (mut pp_scores, mut pp_nulls, mut pp_distances) = (Vec::new(), Vec::new(), Vec::new());
    // The classifier the Grad-CAM++ closed form weighs the features with, once per fold.
    let fc = model.to_weights()?.classifier().map_err(ModelError::from)?;
    for (s, &p) in test.iter().zip(&probs) {
        let (mut note, mut hotspot_distance_mm, mut heat_score_null) = (None, None, None);
        let mut gradcampp = CamOutcome::default();
        let heat = match (&s.roi, s.label) {
            (Some(roi), true) => {
                gradcampp = gradcampp_of(model, &fc, s, roi, device)?;
                pp_scores.extend(gradcampp.heat_score);
                pp_nulls.extend(gradcampp.heat_score_null);
                pp_distances.push(gradcampp.hotspot_distance_mm);
                let (hs, heat) = heat_of(model, s, roi, device)?;
                let gradcam = CamOutcome::of(hs, &heat, roi, s);
                heat_score_null = gradcam.heat_score_null;
                nulls.extend(heat_score_null);
                hotspot_distance_mm = gradcam.hotspot_distance_mm;
                distances.push(hotspot_distance_mm);
                if let Some(dir) = cam_dir {
                    write_cam_panel(&dir.join(format!("cam_{}.png", s.id)), s, &heat)?;
                }
                // A flat map has no Heat-Score: noted for this subject, the run goes on.
                if hs.is_none() {
                    tracing::warn!(subject = %s.id, "flat Grad-CAM: Heat-Score undefined, left out of the mean");
                    note = Some("flat Grad-CAM (no spread over the background): no Heat-Score".to_string());
                }
                heat_scores.extend(hs);
                hs
            }
            _ => None,
        };
        predictions.push(Prediction {
            subject: s.id.clone(),
            acquisition: s.acquisition.clone(),
            label: s.label,
            probability: p,
            heat_score: heat,
            heat_score_null,
            hotspot_distance_mm,
            heat_score_gradcampp: gradcampp.heat_score,
            heat_score_gradcampp_null: gradcampp.heat_score_null,
            hotspot_distance_gradcampp_mm: gradcampp.hotspot_distance_mm,
            note,
        });
    }
    // A flat or missing map counts as a miss.
    let hit = |distances: &[Option<f64>], radius: f64| {
        let hits = distances.iter().filter(|d| d.is_some_and(|d| d <= radius)).count();
        if distances.is_empty() {
            f64::NAN
        } else {
            hits as f64 / distances.len() as f64
        }
    };
    let c = Confusion::at(&labels, &probs, 0.5);
    let metrics = Metrics {
        accuracy: c.accuracy(),
        roc_auc: roc_auc(&labels, &probs),
        heat_score: crate::metrics::mean_std(&heat_scores).0,
        heat_score_null: crate::metrics::mean_std(&nulls).0,
        sensitivity: c.sensitivity(),
        specificity: c.specificity(),
        macro_f1: c.macro_f1(),
        hit_10mm: hit(&distances, 10.0),
        hit_2mm: hit(&distances, 2.0),
        heat_score_gradcampp: crate::metrics::mean_std(&pp_scores).0,
        hit_10mm_gradcampp: hit(&pp_distances, 10.0),
        hit_2mm_gradcampp: hit(&pp_distances, 2.0),
        heat_score_gradcampp_null: crate::metrics::mean_std(&pp_nulls).0,
    };
    Ok((predictions, metrics))
}

/// Grad-CAM of class `fcd` at the last block, upsampled onto the model grid by cubic B-spline
/// interpolation ([`feature_map_volume`]: through every feature value, peaks may fall between
/// feature centres), and its Heat-Score against the head foreground outside the ROI. Returns
/// (score, heatmap `[depth, height, width]` on the model grid); the score is `None` when the map
/// is flat over the background ([`HeatScoreError::FlatBackground`]): undefined, not an error.
pub fn heat_of(
    model: &ResNet3d,
    s: &Sample,
    roi: &Array3<bool>,
    device: &Device,
) -> Result<(Option<f64>, Array3<f32>), CvError> {
    let heat_err = heat_error(s);
    let cam = grad_cam(model, batch(&[&s.tensor], device), 1, Tap::Layer4)?;
    let [_, d, h, w] = cam.cam.dims();
    let values: Vec<f32> = cam
        .cam
        .into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| heat_err(format!("{e:?}")))?;
    let map = Array3::from_shape_vec((d, h, w), values).map_err(|e| heat_err(e.to_string()))?;
    score_on_model_grid(&map, model, s, roi)
}

/// How one map scores on one lesion subject.
#[derive(Debug, Default)]
struct CamOutcome {
    heat_score: Option<f64>,
    heat_score_null: Option<f64>,
    hotspot_distance_mm: Option<f64>,
}

impl CamOutcome {
    /// The Heat-Score `heat_score` of `heat` (on `s`'s model grid), its null (only for a map
    /// that has a score) and its hotspot distance to `roi`.
    fn of(heat_score: Option<f64>, heat: &Array3<f32>, roi: &Array3<bool>, s: &Sample) -> Self {
        Self {
            heat_score,
            heat_score_null: heat_score.and_then(|_| heat_null(heat, roi, s)),
            hotspot_distance_mm: sample_hotspot_distance(heat, roi, s),
        }
    }
}

/// Grad-CAM++ of class `fcd` as the node computes it (the closed form of
/// [`fcdnode::explain::cam::grad_cam_pp`] from the forward features and the classifier), on
/// the model grid like [`heat_of`]: its Heat-Score, null and hotspot distance to the ROI.
fn gradcampp_of(
    model: &ResNet3d,
    fc: &ndarray::Array2<f32>,
    s: &Sample,
    roi: &Array3<bool>,
    device: &Device,
) -> Result<CamOutcome, CvError> {
    let heat_err = heat_error(s);
    let (_, features) = burn::module::Module::valid(model).forward(batch(&[&s.tensor], device));
    let [_, c, d, h, w] = features.dims();
    let values = features
        .into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| heat_err(format!("{e:?}")))?;
    let a = ndarray::Array4::from_shape_vec((c, d, h, w), values).map_err(|e| heat_err(e.to_string()))?;
    let map = fcdnode::explain::cam::grad_cam_pp(a.view(), fc, 1, model.arch().pooling)
        .map_err(|e| heat_err(e.to_string()))?;
    let (heat_score, heat) = score_on_model_grid(&map, model, s, roi)?;
    Ok(CamOutcome::of(heat_score, &heat, roi, s))
}

/// A feature-grid map upsampled onto the model grid by cubic B-spline ([`feature_map_volume`])
/// and its Heat-Score against the head foreground outside the ROI (`None` when flat there).
fn score_on_model_grid(
    map: &Array3<f32>,
    model: &ResNet3d,
    s: &Sample,
    roi: &Array3<bool>,
) -> Result<(Option<f64>, Array3<f32>), CvError> {
    let heat_err = heat_error(s);
    let on_model = feature_map_volume(map, &s.grid, model.arch().stride())
        .and_then(|v| v.resample(&s.grid, Interp::Linear, 0.0))
        .map_err(|e| heat_err(fcdnode::error_chain(&e)))?;
    let heat = on_model.data().view().reversed_axes().as_standard_layout().into_owned();
    let fg = s.foreground();
    let hs = match heat_score(&heat, roi, Background::ForegroundOutsideRoi(&fg)) {
        Ok(hs) => Some(hs),
        Err(HeatScoreError::FlatBackground) => None,
        Err(e) => return Err(heat_err(e.to_string())),
    };
    Ok((hs, heat))
}

/// Moved-ROI draws per subject for the Heat-Score null.
const NULL_DRAWS: usize = 10;

/// The mean Heat-Score of `heat` against the subject's ROI moved to [`NULL_DRAWS`] random places
/// in the head (seeded by the subject id, so reruns agree); `None` when the head has no room.
fn heat_null(heat: &Array3<f32>, roi: &Array3<bool>, s: &Sample) -> Option<f64> {
    let seed = s.id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let scores = moved_roi_scores(heat, roi, &s.foreground(), NULL_DRAWS, &mut rng);
    (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64)
}

/// A [`CvError::Heat`] about `s` from a rule.
fn heat_error(s: &Sample) -> impl Fn(String) -> CvError + '_ {
    |rule| CvError::Heat {
        subject: s.id.clone(),
        rule,
    }
}

/// [`hotspot_distance`] of a heatmap on `s`'s model grid, inside its head.
fn sample_hotspot_distance(heat: &Array3<f32>, roi: &Array3<bool>, s: &Sample) -> Option<f64> {
    // Tensor axes are the grid's k, j, i.
    let [si, sj, sk] = s.grid.affine.spacing();
    hotspot_distance(heat, roi, &s.foreground(), [sk, sj, si])
}

/// Distance in mm from the hottest foreground voxel of `heat` (model grid, voxels of
/// `voxel_mm`) to the nearest ROI voxel: 0 inside the ROI; `None` for a map without a positive
/// maximum or an empty ROI.
fn hotspot_distance(
    heat: &Array3<f32>,
    roi: &Array3<bool>,
    foreground: &Array3<bool>,
    voxel_mm: [f64; 3],
) -> Option<f64> {
    let (mut best, mut at) = (0.0f32, None);
    for ((index, &v), &fg) in heat.indexed_iter().zip(foreground) {
        if fg && v > best {
            (best, at) = (v, Some(index));
        }
    }
    let (i, j, k) = at?;
    roi.indexed_iter()
        .filter(|(_, r)| **r)
        .map(|((a, b, c), _)| {
            let d = [
                (a as f64 - i as f64) * voxel_mm[0],
                (b as f64 - j as f64) * voxel_mm[1],
                (c as f64 - k as f64) * voxel_mm[2],
            ];
            (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt()
        })
        .min_by(f64::total_cmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hotspot_distance_is_zero_inside_and_in_mm_outside() {
        let mut roi = Array3::from_elem((10, 10, 10), false);
        roi[[2, 2, 2]] = true;
        let foreground = Array3::from_elem((10, 10, 10), true);
        let mut heat = Array3::<f32>::zeros((10, 10, 10));
        heat[[2, 2, 2]] = 1.0;
        assert_eq!(hotspot_distance(&heat, &roi, &foreground, [2.0; 3]), Some(0.0));
        heat[[2, 2, 2]] = 0.0;
        heat[[2, 5, 6]] = 1.0;
        assert_eq!(hotspot_distance(&heat, &roi, &foreground, [2.0; 3]), Some(10.0));
        // Outside the head does not count; a map without a positive value has no hotspot.
        heat[[9, 9, 9]] = 5.0;
        let mut head = foreground.clone();
        head[[9, 9, 9]] = false;
        assert_eq!(hotspot_distance(&heat, &roi, &head, [2.0; 3]), Some(10.0));
        assert_eq!(
            hotspot_distance(&Array3::zeros((10, 10, 10)), &roi, &foreground, [2.0; 3]),
            None
        );
    }

    #[test]
    fn stratified_folds_partition_and_balance() {
        let labels: Vec<bool> = (0..20).map(|i| i % 2 == 0).collect();
        let folds = stratified_folds(&labels, 5, 3);
        let mut all: Vec<usize> = folds.concat();
        all.sort_unstable();
        assert_eq!(all, (0..20).collect::<Vec<_>>());
        for f in &folds {
            assert_eq!(f.iter().filter(|&&i| labels[i]).count(), 2);
        }
    }

    #[test]
    fn grouped_folds_leave_one_group_out() {
        let groups: Vec<String> = ["a", "b", "a", "c", "b"].iter().map(|s| s.to_string()).collect();
        let folds = grouped_folds(&groups, 5);
        assert_eq!(folds.len(), 3);
        assert_eq!(folds[0], ("a".into(), vec![0, 2]));
        let folds = grouped_folds(&groups, 2);
        assert_eq!(folds.len(), 2);
        for (_, members) in &folds {
            let names: BTreeSet<&String> = members.iter().map(|&i| &groups[i]).collect();
            for other in &folds {
                if other.1 != *members {
                    assert!(other.1.iter().all(|i| !names.contains(&groups[*i])));
                }
            }
        }
    }

    #[test]
    fn inner_split_is_stratified() {
        let labels: Vec<bool> = (0..10).map(|i| i < 5).collect();
        let (train, val) = inner_split(&(0..10).collect::<Vec<_>>(), &labels, 0.2, 1);
        assert_eq!(val.len(), 2);
        assert_eq!(val.iter().filter(|&&i| labels[i]).count(), 1);
        assert_eq!(train.len(), 8);
    }
}
