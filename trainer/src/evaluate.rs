//! `fcdtrain evaluate`: external validation of a model package on a BIDS dataset, run the way the
//! node runs it, beside the non-learned baseline ([`fcdnode::baseline`]).
//!
//! Per subject, the library path of `fcdnode infer` on NIfTI (`pipeline::run_nifti`): the
//! manifest's recipe ([`Recipe::apply`](fcdnode::preprocess::Recipe::apply)), the ONNX Runtime
//! fold ensemble ([`Ensemble::predict`]), the node's heatmap ([`Ensemble::cam`] →
//! [`explain::heatmap_on`] on the reference channel's own grid, on the display scale of
//! [`explain::scale_heat`] with the manifest's reference level) and its hotspot
//! ([`explain::hotspot`]); the preview PNG is the node's ([`report::preview_png`]). So the
//! Heat-Score and hit rate are those of the map a radiologist is shown, not of a training-time
//! Grad-CAM. (`pipeline::predict`, which strings these calls together for the node, is private;
//! the calls here are the same library functions in the same order.)
//!
//! Figures: accuracy, sensitivity, specificity at the manifest threshold; ROC-AUC with a
//! stratified bootstrap 95 % CI (fixed seed); Brier score, expected calibration error and a
//! reliability diagram; Heat-Score (background: head foreground outside the ROI) beside its null
//! (the same map scored against the ROI moved to random places inside the head); hotspot hit
//! rate within 2 and 10 mm of the ROI; the baseline's AUC, hit rate and sensitivity/specificity
//! at its Youden threshold (chosen on these data, so optimistic); overall and per acquisition.
//! A subject whose map is flat is noted and counted as a miss; the run goes on.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use fcdnode::baseline;
use fcdnode::explain::{self, Background, HeatScoreError, heat_score};
use fcdnode::infer::{Ensemble, InferError, runtime};
use fcdnode::package::manifest::{Modality, ModelPackage, PackageError};
use fcdnode::pipeline::{self, Explain};
use fcdnode::report::{self, ReportOptions, Timings};
use fcdnode::volume::{Interp, Volume, nearest_distance};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::json;

use crate::data::batcher::{Skip, choose_image, lesion_mask_of, read_checked};
use crate::data::bids::{BidsError, Dataset, Group};
use crate::data::lesion::moved_roi_scores;
use crate::figures::{Curve, PngError, write_reliability_png, write_roc_curves_png, write_stack};
use crate::metrics::{
    CalibrationBin, Confusion, auc_bootstrap_ci, brier_score, calibration, roc_auc, roc_curve, youden_threshold,
};

/// Hit radii of the hotspot hit rate, mm.
pub const HIT_RADII_MM: [f64; 2] = [2.0, 10.0];

/// Options of one evaluation.
#[derive(Clone, Debug)]
pub struct EvaluateOptions {
    /// Model package directory.
    pub model: PathBuf,
    /// BIDS dataset root.
    pub data: PathBuf,
    /// Output directory.
    pub out: PathBuf,
    /// Heatmap method; the node's default (Grad-CAM++) unless told otherwise.
    pub explain: Explain,
    /// ONNX Runtime device.
    pub device: runtime::Device,
    /// ONNX Runtime intra-op threads (0 = its default).
    pub threads: usize,
    /// ONNX Runtime library; `None`: the node's search ([`runtime::find_library`]).
    pub onnxruntime: Option<PathBuf>,
    /// Bootstrap replicates of the ROC-AUC confidence interval.
    pub bootstrap: usize,
    /// Moved-ROI draws per patient for the Heat-Score null.
    pub null_draws: usize,
    /// Seed of the bootstrap and of the moved ROIs.
    pub seed: u64,
    /// Reliability-diagram bins (equal width over [0, 1]).
    pub calibration_bins: usize,
}

impl EvaluateOptions {
    /// Defaults for everything but the three paths.
    pub fn new(model: PathBuf, data: PathBuf, out: PathBuf) -> Self {
        Self {
            model,
            data,
            out,
            explain: Explain::default(),
            device: runtime::Device::Auto,
            threads: 0,
            onnxruntime: None,
            bootstrap: 2000,
            null_draws: 10,
            seed: 20_260_101,
            calibration_bins: 10,
        }
    }
}

/// Why an evaluation could not run (a single subject's failure is a skip, not an error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvaluateError {
    /// The package could not be loaded.
    #[error("model package")]
    Package(#[from] PackageError),
    /// ONNX Runtime could not be loaded.
    #[error("ONNX Runtime")]
    Runtime(#[from] runtime::RuntimeError),
    /// The ensemble could not be built.
    #[error("loading the fold graphs")]
    Infer(#[from] InferError),
    /// The dataset could not be read.
    #[error("dataset")]
    Dataset(#[from] BidsError),
    /// No subject could be evaluated.
    #[error("no subject of {data} could be evaluated ({skipped} skipped; see the log)")]
    NoSubjects { data: PathBuf, skipped: usize },
    /// A file could not be written.
    #[error("{path}: cannot write")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A PNG could not be written.
    #[error("figure")]
    Png(#[from] PngError),
}

/// One subject's outcome (a row of `subjects.csv`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SubjectResult {
    pub subject: String,
    pub acquisition: String,
    /// True for `fcd`.
    pub label: bool,
    /// Ensemble probability of the positive class.
    pub probability: f64,
    /// `probability ≥ threshold` (the node's decision).
    pub suspected: bool,
    pub fold_probabilities: Vec<f64>,
    /// Peak of the displayed map (LPS mm); `None` for a flat map.
    pub hotspot_lps: Option<[f64; 3]>,
    /// A non-empty lesion ROI was found (the hit-rate denominator counts these patients).
    pub has_roi: bool,
    /// Distance from the hotspot to the nearest ROI voxel centre (0 inside), mm.
    pub hotspot_distance_mm: Option<f64>,
    /// Heat-Score of the displayed map against the lesion ROI.
    pub heat_score: Option<f64>,
    /// Mean Heat-Score of the same map against the ROI moved to random places in the head.
    pub heat_score_null: Option<f64>,
    /// Baseline score (max smoothed z in the eroded head).
    pub baseline_score: Option<f64>,
    /// Baseline argmax (LPS mm).
    pub baseline_lps: Option<[f64; 3]>,
    /// Distance from the baseline argmax to the ROI, mm.
    pub baseline_distance_mm: Option<f64>,
    /// What was odd (flat map, no ROI, baseline failure …).
    pub notes: Vec<String>,
}

/// Figures of a group of subjects (all, or one acquisition). NaN is written `null`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GroupMetrics {
    pub n: usize,
    pub fcd: usize,
    pub hc: usize,
    pub confusion: Confusion,
    pub accuracy: f64,
    pub sensitivity: f64,
    pub specificity: f64,
    pub roc_auc: f64,
    /// Stratified bootstrap percentile 95 % interval of the ROC-AUC.
    pub roc_auc_ci95: [f64; 2],
    pub brier: f64,
    /// Expected calibration error: Σ_b (n_b / n) · |mean probability_b − fraction fcd_b|.
    pub ece: f64,
    pub calibration: Vec<CalibrationBin>,
    /// Mean Heat-Score over patients with a defined score.
    pub heat_score: f64,
    /// Mean null Heat-Score over the same patients.
    pub heat_score_null: f64,
    /// Patients with a defined Heat-Score.
    pub heat_score_n: usize,
    /// Patients with a lesion ROI (the hit-rate denominator; a flat map counts as a miss).
    pub patients_with_roi: usize,
    /// Fraction of those whose hotspot is within 2 mm of the ROI.
    pub hit_2mm: f64,
    /// … within 10 mm.
    pub hit_10mm: f64,
    /// Fraction suspected *and* hotspot within 10 mm (what the node would show correctly).
    pub hit_10mm_suspected: f64,
    /// Subjects whose map was flat.
    pub flat_maps: usize,
    pub baseline: BaselineMetrics,
}

/// The baseline's figures on the same subjects.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BaselineMetrics {
    /// Subjects the baseline scored.
    pub n: usize,
    pub roc_auc: f64,
    pub roc_auc_ci95: [f64; 2],
    /// Youden-optimal threshold on these data (optimistic: chosen on the test data).
    pub youden_threshold: f64,
    pub sensitivity: f64,
    pub specificity: f64,
    pub hit_2mm: f64,
    pub hit_10mm: f64,
}

/// Everything an evaluation produced.
#[derive(Debug)]
pub struct Evaluation {
    pub subjects: Vec<SubjectResult>,
    pub overall: GroupMetrics,
    pub per_acquisition: BTreeMap<String, GroupMetrics>,
    pub skipped: Vec<Skip>,
    pub warnings: Vec<String>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EvaluateError + '_ {
    move |source| EvaluateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Runs the evaluation and writes `report.md`, `metrics.json`, `subjects.csv`, `roc.png`,
/// `reliability.png`, `montage.png` and `previews/` under `options.out`.
pub fn evaluate(options: &EvaluateOptions) -> Result<Evaluation, EvaluateError> {
    let library = runtime::find_library(options.onnxruntime.as_deref())?;
    runtime::init(&library)?;
    let package = ModelPackage::load(&options.model)?;
    let mut ensemble = Ensemble::load(&package, options.device, options.threads)?;
    let dataset = Dataset::open(&options.data)?;
    let previews = options.out.join("previews");
    std::fs::create_dir_all(&previews).map_err(io_err(&previews))?;
    let mut subjects = Vec::new();
    let mut skipped = Vec::new();
    let mut warnings = dataset.warnings.clone();
    let total = dataset.subjects.len();
    for (n, subject) in dataset.subjects.iter().enumerate() {
        let started = std::time::Instant::now();
        match evaluate_subject(&mut ensemble, subject, options, n as u64, &previews, &mut warnings) {
            Ok(r) => {
                eprintln!(
                    "[{}/{total}] {} ({}): p = {:.3}{}, hotspot {}, baseline {} [{:.1} s]",
                    n + 1,
                    r.subject,
                    if r.label { "fcd" } else { "hc" },
                    r.probability,
                    if r.suspected { " suspected" } else { "" },
                    match (r.hotspot_lps, r.hotspot_distance_mm) {
                        (None, _) => "none (flat map)".to_string(),
                        (Some(_), Some(d)) => format!("{d:.1} mm from ROI"),
                        (Some(p), None) => format!("at LPS ({:.0}, {:.0}, {:.0}) mm", p[0], p[1], p[2]),
                    },
                    r.baseline_score.map_or("–".into(), |s| format!("{s:.2}")),
                    started.elapsed().as_secs_f64()
                );
                subjects.push(r);
            }
            Err(SubjectSkipped(reason)) => {
                tracing::warn!(subject = %subject.id, "skipped: {reason}");
                eprintln!("[{}/{total}] {}: skipped: {reason}", n + 1, subject.id);
                skipped.push(Skip {
                    subject: subject.id.clone(),
                    reason,
                });
            }
        }
    }
    if subjects.is_empty() {
        return Err(EvaluateError::NoSubjects {
            data: options.data.clone(),
            skipped: skipped.len(),
        });
    }
    let threshold = package.manifest.threshold;
    let all: Vec<&SubjectResult> = subjects.iter().collect();
    let overall = group_metrics(&all, threshold, None, options);
    let mut by: BTreeMap<String, Vec<&SubjectResult>> = BTreeMap::new();
    for s in &subjects {
        by.entry(s.acquisition.clone()).or_default().push(s);
    }
    let per_acquisition = if by.len() > 1 {
        by.iter()
            .map(|(acq, rows)| {
                let g = group_metrics(rows, threshold, Some(overall.baseline.youden_threshold), options);
                (acq.clone(), g)
            })
            .collect()
    } else {
        BTreeMap::new()
    };
    let evaluation = Evaluation {
        subjects,
        overall,
        per_acquisition,
        skipped,
        warnings,
    };
    write_outputs(&evaluation, &package, &ensemble, options)?;
    Ok(evaluation)
}

/// Why one subject cannot be evaluated (the error chain, naming the file); the run goes on.
struct SubjectSkipped(String);

fn skip(e: &dyn std::error::Error) -> SubjectSkipped {
    SubjectSkipped(fcdnode::error_chain(e))
}

fn evaluate_subject(
    ensemble: &mut Ensemble,
    subject: &crate::data::bids::Subject,
    options: &EvaluateOptions,
    index: u64,
    previews: &Path,
    warnings: &mut Vec<String>,
) -> Result<SubjectResult, SubjectSkipped> {
    let manifest = ensemble.manifest().clone();
    let label = subject.group == Group::Fcd;
    let mut notes = Vec::new();
    // The images the model takes, as the trainer picks them.
    let images = manifest
        .channels
        .iter()
        .map(|&m| {
            choose_image(subject, m).ok_or_else(|| SubjectSkipped(format!("no {m} image for the model's channels")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let volumes = images
        .iter()
        .map(|i| read_checked(&i.path).map_err(|e| skip(&e)))
        .collect::<Result<Vec<_>, _>>()?;
    let acquisition = subject
        .columns
        .get("acquisition")
        .cloned()
        .or_else(|| images[0].acq.clone())
        .unwrap_or_else(|| "n/a".into());

    // The node's path: recipe → ensemble → heatmap on the reference grid → hotspot.
    let t = std::time::Instant::now();
    let refs: Vec<&Volume> = volumes.iter().collect();
    let node_options = pipeline::Options {
        explain: options.explain,
        ..pipeline::Options::default()
    };
    let (finding, heat) =
        pipeline::predict(ensemble, &refs, &node_options, &mut Timings::default()).map_err(|e| skip(&e))?;
    let reference = &volumes[0];
    let hotspot_lps = finding.peak.map(|p| p.lps);
    // The display scale the node's outputs use: the package's reference level for this method
    // when the manifest has one (absolute scale), else the study's own peak.
    let level = options.explain.reference_level(&manifest);
    let shown = explain::scale_heat(heat.data(), level);
    tracing::debug!(ms = t.elapsed().as_millis(), "predicted");
    if hotspot_lps.is_none() {
        notes.push("flat heatmap: no hotspot".to_string());
    }

    // Lesion ROI (patients): the mask of the FLAIR, as LPS points and on the heatmap's grid.
    let flair_image = choose_image(subject, Modality::Flair);
    let roi = match (label, flair_image) {
        (true, Some(flair)) => match lesion_mask_of(subject, flair) {
            (Some(mask), note) => {
                warnings.extend(note);
                match read_checked(&mask.path) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        notes.push(format!("lesion mask unreadable: {}", fcdnode::error_chain(&e)));
                        None
                    }
                }
            }
            (None, _) => {
                notes.push("fcd subject without a FLAIR lesion mask".into());
                None
            }
        },
        _ => None,
    };
    let roi_points: Vec<[f64; 3]> = roi.as_ref().map(Volume::mask_points).unwrap_or_default();
    if roi.is_some() && roi_points.is_empty() {
        notes.push("lesion mask is empty".into());
    }
    let distance = |p: [f64; 3]| nearest_distance(&roi_points, p);
    let hotspot_distance_mm = hotspot_lps.and_then(distance);

    let (mut hs, mut hs_null) = (None, None);
    if let Some(roi) = roi.as_ref().filter(|_| !roi_points.is_empty()) {
        let on_heat = roi
            .resample(&heat.grid(), Interp::Nearest, 0.0)
            .map_err(|e| skip(&e))?
            .data()
            .mapv(|v| v > 0.5);
        // Background: the head, where the model looked (the map is NaN outside its grid).
        let mut fg = reference.foreground_mask();
        ndarray::Zip::from(&mut fg)
            .and(heat.data())
            .for_each(|f, h| *f &= h.is_finite());
        match heat_score(&shown, &on_heat, Background::ForegroundOutsideRoi(&fg)) {
            Ok(v) => {
                hs = Some(v);
                let mut rng = ChaCha8Rng::seed_from_u64(options.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let nulls = moved_roi_scores(&shown, &on_heat, &fg, options.null_draws, &mut rng);
                if nulls.is_empty() {
                    notes.push("no place in the head for a moved ROI: no null Heat-Score".into());
                } else {
                    hs_null = Some(nulls.iter().sum::<f64>() / nulls.len() as f64);
                }
            }
            Err(HeatScoreError::FlatBackground) => notes.push("flat heatmap: Heat-Score undefined".into()),
            Err(e) => notes.push(format!("Heat-Score: {e}")),
        }
    }

    tracing::debug!(ms = t.elapsed().as_millis(), "heat-score");
    // The baseline on the FLAIR, whatever the model's channels.
    let flair_volume = match flair_image {
        Some(_) if manifest.channels.first() == Some(&Modality::Flair) => Some(reference.clone()),
        Some(f) => read_checked(&f.path).ok(),
        None => None,
    };
    let (mut baseline_score, mut baseline_lps) = (None, None);
    match flair_volume
        .as_ref()
        .map(|v| baseline::detect(v, &baseline::Options::default()))
    {
        Some(Ok(d)) => {
            baseline_score = Some(d.score);
            baseline_lps = Some(d.peak_lps);
        }
        Some(Err(e)) => notes.push(format!("baseline: {}", fcdnode::error_chain(&e))),
        None => notes.push("baseline: no FLAIR".into()),
    }
    let baseline_distance_mm = baseline_lps.and_then(distance);
    tracing::debug!(ms = t.elapsed().as_millis(), "baseline");

    // The node's preview of this subject.
    let source = pipeline::nifti_source(reference, &images[0].path.display().to_string());
    let path = previews.join(format!("{}.png", subject.id));
    let preview = report::preview_png(
        &source,
        &heat,
        &finding,
        &ReportOptions::new().with_heat_reference(level),
    )
    .and_then(|png| report::write_png(&png, &path));
    if let Err(e) = preview {
        // A picture that cannot be drawn does not change the figures: noted, the run goes on.
        notes.push(format!("preview: {}", fcdnode::error_chain(&e)));
    }

    tracing::debug!(ms = t.elapsed().as_millis(), "preview");
    Ok(SubjectResult {
        subject: subject.id.clone(),
        acquisition,
        label,
        probability: finding.probability,
        suspected: finding.suspected,
        fold_probabilities: finding.fold_probabilities.clone(),
        hotspot_lps,
        has_roi: !roi_points.is_empty(),
        hotspot_distance_mm,
        heat_score: hs,
        heat_score_null: hs_null,
        baseline_score,
        baseline_lps,
        baseline_distance_mm,
        notes,
    })
}

/// The figures of a group of subjects at the model's `threshold`; the baseline is called at
/// `baseline_threshold`, or at its Youden threshold on `rows` when `None` (the overall group:
/// per acquisition the overall threshold is reused, one threshold per method).
pub fn group_metrics(
    rows: &[&SubjectResult],
    threshold: f64,
    baseline_threshold: Option<f64>,
    options: &EvaluateOptions,
) -> GroupMetrics {
    let labels: Vec<bool> = rows.iter().map(|r| r.label).collect();
    let probs: Vec<f64> = rows.iter().map(|r| r.probability).collect();
    let confusion = Confusion::at(&labels, &probs, threshold);
    let (calibration, ece) = calibration(&labels, &probs, options.calibration_bins);
    let patients: Vec<&&SubjectResult> = rows.iter().filter(|r| r.label).collect();
    let with_roi: Vec<&&SubjectResult> = patients.iter().copied().filter(|r| r.has_roi).collect();
    let rate = |hit: &dyn Fn(&SubjectResult) -> bool| -> f64 {
        if with_roi.is_empty() {
            f64::NAN
        } else {
            with_roi.iter().filter(|r| hit(r)).count() as f64 / with_roi.len() as f64
        }
    };
    let within = |d: Option<f64>, r: f64| d.is_some_and(|d| d <= r);
    let scored: Vec<(f64, f64)> = patients
        .iter()
        .filter_map(|r| r.heat_score.map(|h| (h, r.heat_score_null.unwrap_or(f64::NAN))))
        .collect();
    let mean = |v: &[f64]| {
        let v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    // The baseline, on the subjects it scored.
    let (b_labels, b_scores): (Vec<bool>, Vec<f64>) = rows
        .iter()
        .filter_map(|r| r.baseline_score.map(|s| (r.label, s)))
        .unzip();
    let b_threshold = baseline_threshold.unwrap_or_else(|| youden_threshold(&b_labels, &b_scores));
    let b_confusion = Confusion::at(&b_labels, &b_scores, b_threshold);
    let baseline = BaselineMetrics {
        n: b_labels.len(),
        roc_auc: roc_auc(&b_labels, &b_scores),
        roc_auc_ci95: auc_bootstrap_ci(&b_labels, &b_scores, options.bootstrap, options.seed),
        youden_threshold: b_threshold,
        sensitivity: b_confusion.sensitivity(),
        specificity: b_confusion.specificity(),
        hit_2mm: rate(&|r| within(r.baseline_distance_mm, HIT_RADII_MM[0])),
        hit_10mm: rate(&|r| within(r.baseline_distance_mm, HIT_RADII_MM[1])),
    };
    GroupMetrics {
        n: rows.len(),
        fcd: patients.len(),
        hc: rows.len() - patients.len(),
        confusion,
        accuracy: confusion.accuracy(),
        sensitivity: confusion.sensitivity(),
        specificity: confusion.specificity(),
        roc_auc: roc_auc(&labels, &probs),
        roc_auc_ci95: auc_bootstrap_ci(&labels, &probs, options.bootstrap, options.seed),
        brier: brier_score(&labels, &probs),
        ece,
        calibration,
        heat_score: mean(&scored.iter().map(|s| s.0).collect::<Vec<_>>()),
        heat_score_null: mean(&scored.iter().map(|s| s.1).collect::<Vec<_>>()),
        heat_score_n: scored.len(),
        patients_with_roi: with_roi.len(),
        hit_2mm: rate(&|r| within(r.hotspot_distance_mm, HIT_RADII_MM[0])),
        hit_10mm: rate(&|r| within(r.hotspot_distance_mm, HIT_RADII_MM[1])),
        hit_10mm_suspected: rate(&|r| r.suspected && within(r.hotspot_distance_mm, HIT_RADII_MM[1])),
        flat_maps: rows.iter().filter(|r| r.hotspot_lps.is_none()).count(),
        baseline,
    }
}

fn num(v: f64) -> String {
    if v.is_finite() { format!("{v:.3}") } else { "n/a".into() }
}

fn opt(v: Option<f64>) -> String {
    v.map_or(String::new(), |x| format!("{x:.4}"))
}

fn ci(v: [f64; 2]) -> String {
    if v.iter().all(|x| x.is_finite()) {
        format!("[{:.3}, {:.3}]", v[0], v[1])
    } else {
        "n/a".into()
    }
}

/// As JSON; serde_json writes NaN and infinities as `null`.
fn finite_json<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

fn write_file(path: &Path, text: &str) -> Result<(), EvaluateError> {
    std::fs::write(path, text).map_err(io_err(path))
}

fn method_name(explain: Explain) -> &'static str {
    match explain {
        Explain::Gradcam => "Grad-CAM",
        Explain::Gradcampp => "Grad-CAM++",
        Explain::Occlusion => "occlusion",
    }
}

fn write_outputs(
    e: &Evaluation,
    package: &ModelPackage,
    ensemble: &Ensemble,
    options: &EvaluateOptions,
) -> Result<(), EvaluateError> {
    let out = &options.out;
    let m = &package.manifest;
    let o = &e.overall;

    // subjects.csv
    let mut csv = String::from(
        "subject,acquisition,group,probability,suspected,fold_probabilities,hotspot_x,hotspot_y,hotspot_z,hotspot_distance_mm,heat_score,heat_score_null,baseline_score,baseline_x,baseline_y,baseline_z,baseline_distance_mm,notes\n",
    );
    for s in &e.subjects {
        let xyz = |p: Option<[f64; 3]>| match p {
            Some(p) => format!("{:.4},{:.4},{:.4}", p[0], p[1], p[2]),
            None => ",,".into(),
        };
        let _ = writeln!(
            csv,
            "{},{},{},{:.6},{},{},{},{},{},{},{},{},{},\"{}\"",
            s.subject,
            s.acquisition,
            if s.label { "fcd" } else { "hc" },
            s.probability,
            s.suspected,
            s.fold_probabilities
                .iter()
                .map(|p| format!("{p:.6}"))
                .collect::<Vec<_>>()
                .join(";"),
            xyz(s.hotspot_lps),
            opt(s.hotspot_distance_mm),
            opt(s.heat_score),
            opt(s.heat_score_null),
            opt(s.baseline_score),
            xyz(s.baseline_lps),
            opt(s.baseline_distance_mm),
            s.notes.join("; ").replace('"', "'")
        );
    }
    write_file(&out.join("subjects.csv"), &csv)?;

    // Figures.
    let labels: Vec<bool> = e.subjects.iter().map(|s| s.label).collect();
    let probs: Vec<f64> = e.subjects.iter().map(|s| s.probability).collect();
    let (b_labels, b_scores): (Vec<bool>, Vec<f64>) = e
        .subjects
        .iter()
        .filter_map(|s| s.baseline_score.map(|b| (s.label, b)))
        .unzip();
    let model_curve = roc_curve(&labels, &probs);
    let baseline_curve = roc_curve(&b_labels, &b_scores);
    let mut curves = vec![Curve {
        label: format!("MODEL AUC {}", num(o.roc_auc)),
        points: &model_curve,
        colour: [20, 60, 220],
    }];
    if !b_labels.is_empty() {
        curves.push(Curve {
            label: format!("BASELINE AUC {}", num(o.baseline.roc_auc)),
            points: &baseline_curve,
            colour: [230, 120, 0],
        });
    }
    write_roc_curves_png(&out.join("roc.png"), &curves)?;
    write_reliability_png(&out.join("reliability.png"), &o.calibration, m.threshold)?;
    let montage = montage_cases(e);
    let montage_written = if montage.is_empty() {
        false
    } else {
        let paths: Vec<PathBuf> = montage
            .iter()
            .map(|(s, _)| out.join("previews").join(format!("{s}.png")))
            .collect();
        let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        write_stack(&out.join("montage.png"), &refs)?;
        true
    };

    // report.md
    let mut md = String::new();
    let _ = writeln!(md, "# fcdtrain evaluate: external validation\n");
    let _ = writeln!(
        md,
        "- Model: `{}` {} ({}), SHA-256 `{}`, {} fold(s), threshold {} (from the manifest), ONNX Runtime on {:?}",
        m.name,
        m.version,
        options.model.display(),
        package.sha256,
        m.folds.len(),
        m.threshold,
        ensemble.device()
    );
    let _ = writeln!(
        md,
        "- Probability: {}",
        m.calibration.as_ref().map_or_else(
            || "the folds' mean softmax (the package has no `[calibration]`)".to_string(),
            |c| format!(
                "the folds' mean softmax through the package's calibration ({:?}, a {:.4}, b {:.4}; fitted on {}), as the node reports it; Brier, ECE and the reliability diagram measure that calibration on these data",
                c.method, c.a, c.b, c.fitted_on
            )
        )
    );
    let _ = writeln!(
        md,
        "- Data: `{}`: {} subjects evaluated ({} fcd, {} hc), {} skipped",
        options.data.display(),
        o.n,
        o.fcd,
        o.hc,
        e.skipped.len()
    );
    let _ = writeln!(
        md,
        "- Path: the node's (`fcdnode infer` on NIfTI): the manifest's recipe ({:?} voxels of {:?} mm, {:?}), the fold ensemble in ONNX Runtime, the {} map at the global-pooling input upsampled by cubic B-spline onto the model grid, resampled (trilinear) onto the reference channel's own grid (NaN outside the model grid) and put on the node's display scale ({}): the map the node displays.",
        m.preprocess.shape,
        m.preprocess.voxel_mm,
        m.preprocess.normalisation,
        method_name(options.explain),
        match options.explain.reference_level(m) {
            Some(r) => format!("absolute, 1.0 = the package's reference level {r}"),
            None => "relative to each study's peak: the package has no reference level".into(),
        }
    );
    let _ = writeln!(
        md,
        "- Heat-Score: background = head foreground (Otsu + hole filling of the reference image) outside the lesion ROI; null = the same map scored against the ROI moved by whole voxels to {} random places in the head (≥ 90 % inside, not touching the real ROI), mean per patient.",
        options.null_draws
    );
    let _ = writeln!(
        md,
        "- Hit: the hotspot (the map's maximum) within 2 / 10 mm of the nearest ROI voxel centre (0 inside); a flat map has no hotspot and counts as a miss. Denominator: patients with a lesion ROI."
    );
    let _ = writeln!(
        md,
        "- ROC-AUC 95 % CI: stratified bootstrap, {} replicates, percentile interval, seed {}. Calibration: {} equal-width bins; ECE = Σ (n_b / n) |mean p_b − fraction fcd_b|.",
        options.bootstrap, options.seed, options.calibration_bins
    );
    let _ = writeln!(
        md,
        "- Baseline: {}; its threshold is Youden's J on these data (optimistic: chosen on the data it is scored on); its AUC and hit rate need no threshold.\n",
        baseline::NAME
    );
    let _ = writeln!(md, "## Overall\n");
    let _ = writeln!(
        md,
        "| Method | n | Accuracy | Sensitivity | Specificity | ROC-AUC [95 % CI] | Brier | ECE | Heat-Score (null) | Hit ≤ 2 mm | Hit ≤ 10 mm | Suspected and hit ≤ 10 mm |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    let row = |md: &mut String, name: &str, g: &GroupMetrics| {
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {} {} | {} | {} | {} ({}) | {} | {} | {} |",
            g.n,
            num(g.accuracy),
            num(g.sensitivity),
            num(g.specificity),
            num(g.roc_auc),
            ci(g.roc_auc_ci95),
            num(g.brier),
            num(g.ece),
            num(g.heat_score),
            num(g.heat_score_null),
            num(g.hit_2mm),
            num(g.hit_10mm),
            num(g.hit_10mm_suspected),
        );
        let b = &g.baseline;
        let _ = writeln!(
            md,
            "| {name}: baseline max-z FLAIR (z ≥ {}) | {} | – | {} | {} | {} {} | – | – | – | {} | {} | – |",
            num(b.youden_threshold),
            b.n,
            num(b.sensitivity),
            num(b.specificity),
            num(b.roc_auc),
            ci(b.roc_auc_ci95),
            num(b.hit_2mm),
            num(b.hit_10mm),
        );
    };
    row(&mut md, &format!("{} ({})", m.name, method_name(options.explain)), o);
    if !e.per_acquisition.is_empty() {
        let _ = writeln!(md, "\n## Per acquisition\n");
        let _ = writeln!(
            md,
            "| Method | n | Accuracy | Sensitivity | Specificity | ROC-AUC [95 % CI] | Brier | ECE | Heat-Score (null) | Hit ≤ 2 mm | Hit ≤ 10 mm | Suspected and hit ≤ 10 mm |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        for (acq, g) in &e.per_acquisition {
            row(&mut md, &format!("acq {acq} ({} fcd, {} hc)", g.fcd, g.hc), g);
        }
    }
    let _ = writeln!(
        md,
        "\nConfusion at threshold {}: {} TP, {} FP, {} TN, {} FN. Heat-Score defined for {} of {} patients; {} subject(s) with a flat map.",
        m.threshold,
        o.confusion.tp,
        o.confusion.fp,
        o.confusion.tn,
        o.confusion.fn_,
        o.heat_score_n,
        o.fcd,
        o.flat_maps
    );
    let _ = writeln!(md, "\n## Calibration\n");
    let _ = writeln!(md, "| Bin | n | Mean probability | Fraction fcd |");
    let _ = writeln!(md, "|---|---|---|---|");
    for b in o.calibration.iter().filter(|b| b.n > 0) {
        let _ = writeln!(
            md,
            "| {:.1}–{:.1} | {} | {:.3} | {:.3} |",
            b.lower, b.upper, b.n, b.mean_probability, b.fraction_positive
        );
    }
    let _ = writeln!(md, "\n## Pictures\n");
    let _ = writeln!(
        md,
        "- ROC curves of the model (blue) and the baseline (orange): ![roc](roc.png)"
    );
    let _ = writeln!(
        md,
        "- Reliability diagram (observed fraction of patients per probability bin; the diagonal is perfect calibration, the dashed line the threshold): ![reliability](reliability.png)"
    );
    if montage_written {
        let _ = writeln!(
            md,
            "- The node's previews of {}: ![montage](montage.png) (every subject's preview is in `previews/`)",
            montage
                .iter()
                .map(|(s, why)| format!("{s} ({why})"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let _ = writeln!(md, "\n## Notes per subject\n");
    let noted: Vec<&SubjectResult> = e.subjects.iter().filter(|s| !s.notes.is_empty()).collect();
    if noted.is_empty() {
        let _ = writeln!(md, "None.");
    }
    for s in noted {
        let _ = writeln!(md, "- {}: {}", s.subject, s.notes.join("; "));
    }
    let _ = writeln!(md, "\n## Skipped subjects\n");
    if e.skipped.is_empty() {
        let _ = writeln!(md, "None.");
    }
    for s in &e.skipped {
        let _ = writeln!(md, "- {}: {}", s.subject, s.reason);
    }
    let _ = writeln!(md, "\n## Dataset warnings\n");
    if e.warnings.is_empty() {
        let _ = writeln!(md, "None.");
    }
    for w in &e.warnings {
        let _ = writeln!(md, "- {w}");
    }
    write_file(&out.join("report.md"), &md)?;

    let metrics = json!({
        "model": {
            "name": m.name,
            "version": m.version,
            "path": options.model,
            "sha256": package.sha256,
            "threshold": m.threshold,
            "calibration": m.calibration,
            "folds": m.folds.len(),
            "heatmap": method_name(options.explain),
        },
        "data": options.data,
        "baseline": {"name": baseline::NAME, "options": baseline::Options::default()},
        "heat_score_background": "head foreground outside the lesion ROI",
        "heat_score_null": format!("same map, ROI moved to {} random places in the head (mean per patient)", options.null_draws),
        "hit_radii_mm": HIT_RADII_MM,
        "bootstrap": {"replicates": options.bootstrap, "seed": options.seed, "interval": "percentile, stratified"},
        "overall": finite_json(o),
        "per_acquisition": finite_json(&e.per_acquisition),
        "skipped": e.skipped,
        "warnings": e.warnings,
    });
    write_file(
        &out.join("metrics.json"),
        &serde_json::to_string_pretty(&metrics).unwrap_or_default(),
    )
}

/// Montage cases: the patient with the highest and the lowest probability and the control with
/// the highest (the likeliest false positive).
fn montage_cases(e: &Evaluation) -> Vec<(String, &'static str)> {
    let by = |label: bool| {
        let mut v: Vec<&SubjectResult> = e.subjects.iter().filter(|s| s.label == label).collect();
        v.sort_by(|a, b| b.probability.total_cmp(&a.probability));
        v
    };
    let (patients, controls) = (by(true), by(false));
    let mut cases = Vec::new();
    if let Some(p) = patients.first() {
        cases.push((p.subject.clone(), "patient, highest probability"));
    }
    if let Some(p) = patients.last().filter(|_| patients.len() > 1) {
        cases.push((p.subject.clone(), "patient, lowest probability"));
    }
    if let Some(c) = controls.first() {
        cases.push((c.subject.clone(), "control, highest probability"));
    }
    cases
}

#[cfg(test)]
mod tests {
    use ndarray::Array3;

    use super::*;

    #[test]
    fn moved_roi_never_touches_the_real_one_and_scores_below_it() {
        // A hot cube in a 20³ head; the moved ROI lands on cold voxels.
        let n = 20;
        let fg = Array3::from_elem((n, n, n), true);
        let mut heat = Array3::<f32>::from_shape_fn((n, n, n), |(i, j, k)| ((i + 2 * j + 3 * k) % 5) as f32 * 0.1);
        let mut roi = Array3::from_elem((n, n, n), false);
        for i in 8..11 {
            for j in 8..11 {
                for k in 8..11 {
                    roi[[i, j, k]] = true;
                    heat[[i, j, k]] = 1.0;
                }
            }
        }
        let real = heat_score(&heat, &roi, Background::ForegroundOutsideRoi(&fg)).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let nulls = moved_roi_scores(&heat, &roi, &fg, 8, &mut rng);
        assert_eq!(nulls.len(), 8);
        assert!(nulls.iter().all(|&s| s < real - 1.0), "{nulls:?} vs {real}");
        // No room: a head the size of the ROI.
        let tight = roi.clone();
        assert!(moved_roi_scores(&heat, &roi, &tight, 3, &mut rng).is_empty());
    }
}
