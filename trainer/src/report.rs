//! A finished run ([`RunOutcome`], as [`crate::cv::run`] or [`crate::cv::merge`] returns it) → `RUN/report.md`,
//! `RUN/metrics.json`, `RUN/metrics.csv`, a ROC curve PNG per experiment and a Grad-CAM montage of
//! the best and worst Heat-Score cases; owns the tables (with the decision threshold and
//! calibration an export would write) and the paired t-tests, and picks what the pictures show
//! ([`crate::figures`] draws them). The caller writes the report after the run
//! (`fcdtrain cv` and `fcdtrain report` do); the cross-validation itself never imports this
//! module. The report describes the run, not which process trained which fold, so a merge of
//! folds trained on several machines reports exactly as a one-machine run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use fcdnode::explain::Background;
use ndarray::Array3;
use serde_json::{Value, json};

use crate::calibrate::Decision;
use crate::cv::{FoldResult, Metrics, RunOutcome, fold_dir};
use crate::data::lesion::{BaselineOutcome, baseline_figures};
use crate::figures::{PngError, write_montage, write_roc_png};
use crate::metrics::{Confusion, mean_std, paired_t_test, roc_auc, roc_curve};

/// Why the report could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// A file could not be written.
    #[error("{path}: cannot write")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A PNG could not be encoded or read.
    #[error("{path}: PNG")]
    Png {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
}

impl From<PngError> for ReportError {
    fn from(PngError { path, source }: PngError) -> Self {
        Self::Png { path, source }
    }
}

/// The sentence the report uses for the Heat-Score background.
pub fn background_description() -> &'static str {
    Background::ForegroundOutsideRoi(&Array3::from_elem((0, 0, 0), false)).describe()
}

fn write_file(path: &Path, text: &str) -> Result<(), ReportError> {
    std::fs::write(path, text).map_err(|source| ReportError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Mean and standard deviation over folds, per metric (NaN folds left out).
pub fn summary(folds: &[FoldResult]) -> (Metrics, Metrics) {
    let mut mean = [0.0; Metrics::NAMES.len()];
    let mut std = [0.0; Metrics::NAMES.len()];
    for m in 0..Metrics::NAMES.len() {
        let values: Vec<f64> = folds.iter().map(|f| f.metrics.values()[m]).collect();
        (mean[m], std[m]) = mean_std(&values);
    }
    (Metrics::from_values(mean), Metrics::from_values(std))
}

fn pm(mean: f64, std: f64) -> String {
    if mean.is_finite() {
        format!("{mean:.3} ± {std:.3}")
    } else {
        "n/a".into()
    }
}

fn num(v: f64) -> String {
    if v.is_finite() { format!("{v:.3}") } else { "n/a".into() }
}

/// The baseline's figures on the test subjects of `folds`, as JSON.
fn baseline_beside(folds: &[FoldResult], baseline: &BTreeMap<String, BaselineOutcome>) -> Value {
    let subjects = folds
        .iter()
        .flat_map(|f| f.predictions.iter().map(|p| p.subject.as_str()));
    let f = baseline_figures(subjects, baseline);
    let finite = |v: f64| if v.is_finite() { json!(v) } else { Value::Null };
    json!({
        "method": fcdnode::baseline::NAME,
        "subjects": f.subjects,
        "roc_auc": finite(f.roc_auc),
        "hit_10mm": finite(f.hit_10mm),
        "hit_2mm": finite(f.hit_2mm),
    })
}

/// Writes every report file under `out`.
pub fn write(out: &Path, run: &RunOutcome) -> Result<(), ReportError> {
    let cfg = &run.config;
    let recipe = cfg.recipe();
    let mut md = String::new();
    let _ = writeln!(md, "# fcdtrain cross-validation report\n");
    let _ = writeln!(md, "- Dataset: `{}`", cfg.data.display());
    let _ = writeln!(md, "- Folds: {}", run.scheme);
    let _ = writeln!(
        md,
        "- Preprocessing: RAS grid {:?} voxels of {} mm, {:?} normalisation; epochs ≤ {}, batch {}, Adam lr {}, plateau patience {}, early-stop patience {}, batch-norm statistics {}, seed {}",
        recipe.shape,
        cfg.voxel_mm,
        recipe.normalisation,
        cfg.epochs,
        cfg.batch_size,
        cfg.lr,
        cfg.plateau_patience,
        cfg.patience,
        if cfg.recalibrate_bn {
            "re-estimated over the training set after every epoch"
        } else {
            "running averages (momentum 0.1)"
        },
        cfg.seed
    );
    let _ = writeln!(
        md,
        "- Heat-Score: Grad-CAM (autodiff, output of the last block, class fcd) upsampled onto the model grid by cubic B-spline interpolation (the spline passes through every feature value; its peak may fall between feature centres); a flat map has no Heat-Score and is left out of the mean (the run goes on); background = **{}** (Lasagni et al.: min-max normalised map, (mean in ROI − mean in background) / std of background), mean over the lesion subjects of each test fold.",
        background_description()
    );
    let _ = writeln!(
        md,
        "- Heat-Score null: the same map scored against the ROI moved to ten random places in the head (whole-voxel shifts, ≥ 90 % in the head, off the real ROI), mean per subject: what a map that ignores the lesion scores. A map that knows the lesion scores well above it.\n- Hotspot ≤ 10 mm / ≤ 2 mm: the share of each test fold's lesion subjects whose Grad-CAM maximum (on the model grid, inside the head) lies within 10 mm / 2 mm of the ROI; a flat map counts as a miss."
    );
    let _ = writeln!(
        md,
        "\n| Model | TL | Modality | Accuracy ± std | ROC-AUC ± std | Heat-Score | Heat-Score null | Sensitivity | Specificity | Macro-F1 | Hotspot ≤ 10 mm | Hotspot ≤ 2 mm | Folds |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut experiments = serde_json::Map::new();
    let mut csv = format!("experiment,fold,{}\n", Metrics::NAMES.join(","));
    for (exp, folds) in &run.experiments {
        let (mean, std) = summary(folds);
        let _ = writeln!(
            md,
            "| {} (×{}, {:?}) | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            exp.arch.name(),
            exp.arch.width_mult,
            exp.arch.layout,
            exp.tl_label(),
            exp.modality_label(),
            pm(mean.accuracy, std.accuracy),
            pm(mean.roc_auc, std.roc_auc),
            pm(mean.heat_score, std.heat_score),
            pm(mean.heat_score_null, std.heat_score_null),
            pm(mean.sensitivity, std.sensitivity),
            pm(mean.specificity, std.specificity),
            pm(mean.macro_f1, std.macro_f1),
            pm(mean.hit_10mm, std.hit_10mm),
            pm(mean.hit_2mm, std.hit_2mm),
            folds.len()
        );
        for f in folds {
            let v = f.metrics.values().map(num).join(",");
            let _ = writeln!(csv, "{},{},{v}", exp.name, f.name);
        }
        let _ = writeln!(csv, "{},mean,{}", exp.name, mean.values().map(num).join(","));
        let _ = writeln!(csv, "{},std,{}", exp.name, std.values().map(num).join(","));
        let fold_values: Vec<Value> = folds
            .iter()
            .map(|f| {
                let mut v = serde_json::to_value(f.metrics).unwrap_or(Value::Null);
                if let Value::Object(m) = &mut v {
                    m.insert("fold".into(), json!(f.name));
                    m.insert("seconds".into(), json!(f.seconds));
                    m.insert("epochs".into(), json!(f.history.len()));
                }
                v
            })
            .collect();
        experiments.insert(
            exp.name.clone(),
            json!({
                "model": exp.arch.name(),
                "architecture": exp.arch,
                "tl": exp.tl_label(),
                "train_layers": exp.train_layers,
                "modality": exp.modality_label(),
                "folds": fold_values,
                "mean": mean,
                "std": std,
                "per_acquisition": per_acquisition(folds),
                "baseline": baseline_beside(folds, &run.baseline),
            }),
        );
    }

    // Fine-tuning: the package as it was vs after training, on the same test folds.
    if let Some(package) = &cfg.init_from {
        let _ = writeln!(
            md,
            "\n## Fine-tuning from `{}` (same test folds; mean ± std over folds)\n",
            package.display()
        );
        let _ = writeln!(md, "| Experiment | Metric | Package as-is | After fine-tuning |");
        let _ = writeln!(md, "|---|---|---|---|");
        for (exp, folds) in &run.experiments {
            let befores: Vec<FoldResult> = folds
                .iter()
                .filter_map(|f| {
                    f.before.map(|m| FoldResult {
                        metrics: m,
                        ..f.clone()
                    })
                })
                .collect();
            let (b_mean, b_std) = summary(&befores);
            let (a_mean, a_std) = summary(folds);
            for (m, name) in Metrics::NAMES.iter().enumerate() {
                let _ = writeln!(
                    md,
                    "| {} | {name} | {} | {} |",
                    exp.name,
                    pm(b_mean.values()[m], b_std.values()[m]),
                    pm(a_mean.values()[m], a_std.values()[m])
                );
            }
            if let Some(Value::Object(e)) = experiments.get_mut(&exp.name) {
                e.insert("before".into(), json!({"mean": b_mean, "std": b_std}));
            }
        }
    }

    // The non-learned baseline on the same test subjects.
    let _ = writeln!(
        md,
        "\n## Baseline beside the model (same test subjects)\n\nThe baseline ({}) learns nothing: a model that does not beat it has not learned the lesion. Pooled ROC-AUC over every test prediction; hotspot rates over the patients with a ROI (the model's: mean over folds, the maximum of its Grad-CAM, and of the Grad-CAM++ the node shows by default, computed in the node's closed form; its Heat-Score and that Heat-Score's null are `heat_score_gradcampp` and `heat_score_gradcampp_null` in metrics.json).\n",
        fcdnode::baseline::NAME
    );
    let _ = writeln!(
        md,
        "| Experiment | Method | Pooled ROC-AUC | Hotspot ≤ 10 mm | Hotspot ≤ 2 mm | Subjects |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for (exp, folds) in &run.experiments {
        let (mean, _) = summary(folds);
        let (labels, scores): (Vec<bool>, Vec<f64>) = folds
            .iter()
            .flat_map(|f| f.predictions.iter().map(|p| (p.label, p.probability)))
            .unzip();
        let b = baseline_beside(folds, &run.baseline);
        let field = |key: &str| b[key].as_f64().unwrap_or(f64::NAN);
        let auc = num(roc_auc(&labels, &scores));
        let _ = writeln!(
            md,
            "| {} | model, Grad-CAM | {auc} | {} | {} | {} |\n| {} | model, Grad-CAM++ (the node's default) | {auc} | {} | {} | {} |\n| {} | baseline | {} | {} | {} | {} |",
            exp.name,
            num(mean.hit_10mm),
            num(mean.hit_2mm),
            labels.len(),
            exp.name,
            num(mean.hit_10mm_gradcampp),
            num(mean.hit_2mm_gradcampp),
            labels.len(),
            exp.name,
            num(field("roc_auc")),
            num(field("hit_10mm")),
            num(field("hit_2mm")),
            b["subjects"]
        );
    }

    // Per-acquisition breakdown (pooled test predictions).
    let _ = writeln!(md, "\n## Per acquisition (pooled test predictions)\n");
    let _ = writeln!(md, "| Experiment | Acquisition | n | fcd | hc | Accuracy | ROC-AUC |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for (exp, folds) in &run.experiments {
        for (acq, v) in per_acquisition(folds) {
            let _ = writeln!(
                md,
                "| {} | {acq} | {} | {} | {} | {} | {} |",
                exp.name,
                v["n"],
                v["fcd"],
                v["hc"],
                num(v["accuracy"].as_f64().unwrap_or(f64::NAN)),
                num(v["roc_auc"].as_f64().unwrap_or(f64::NAN))
            );
        }
    }

    // Paired t-tests between experiments over the same folds.
    let _ = writeln!(md, "\n## Paired t-tests between experiments (per-fold values)\n");
    let mut tests = Vec::new();
    if run.experiments.len() < 2 {
        let _ = writeln!(md, "One experiment only: nothing to compare.");
    } else {
        let _ = writeln!(md, "| A | B | Metric | mean A − B | t | df | p |");
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        for (i, (a, fa)) in run.experiments.iter().enumerate() {
            for (b, fb) in &run.experiments[i + 1..] {
                for (m, name) in [(0usize, "accuracy"), (1, "roc_auc"), (2, "heat_score")] {
                    let va: Vec<f64> = fa.iter().map(|f| f.metrics.values()[m]).collect();
                    let vb: Vec<f64> = fb.iter().map(|f| f.metrics.values()[m]).collect();
                    if va.len() != vb.len() {
                        continue;
                    }
                    if let Some(t) = paired_t_test(&va, &vb) {
                        let _ = writeln!(
                            md,
                            "| {} | {} | {name} | {:.4} | {:.3} | {} | {:.4} |",
                            a.name, b.name, t.mean_difference, t.t, t.df, t.p
                        );
                        tests.push(json!({"a": a.name, "b": b.name, "metric": name, "test": t}));
                    }
                }
            }
        }
    }

    // The decision `fcdtrain export` writes into the package, from the pooled test predictions.
    let _ = writeln!(
        md,
        "\n## Decision threshold and calibration (pooled out-of-fold predictions)\n"
    );
    let _ = writeln!(
        md,
        "Rule: **{}**, chosen on the out-of-fold probabilities after Platt scaling (σ(a·logit(p) + b), fitted on the same predictions with Platt's smoothed targets). `fcdtrain export` writes threshold and calibration into the manifest (refitted on the exported folds when it drops weak ones); the node calibrates the folds' mean probability and compares it with the threshold. Sensitivity, specificity and the calibrated Brier/ECE are measured on the predictions they were chosen on, so they are optimistic; `fcdtrain evaluate` on fresh data gives honest ones.\n",
        cfg.threshold_rule
    );
    let _ = writeln!(
        md,
        "| Experiment | n (fcd) | Platt a | Platt b | Threshold | Sensitivity | Specificity | Brier raw → calibrated | ECE raw → calibrated |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for (exp, folds) in &run.experiments {
        let (labels, raw): (Vec<bool>, Vec<f64>) = folds
            .iter()
            .flat_map(|f| f.predictions.iter().map(|p| (p.label, p.probability)))
            .unzip();
        let decision = Decision::choose(
            &labels,
            &raw,
            cfg.threshold_rule,
            "out-of-fold predictions of every fold",
        );
        let value = match &decision {
            Ok(d) => {
                let (a, b) = d.calibration.as_ref().map_or((f64::NAN, f64::NAN), |c| (c.a, c.b));
                let _ = writeln!(
                    md,
                    "| {} | {} ({}) | {} | {} | {:.4} | {} | {} | {} → {} | {} → {} |",
                    exp.name,
                    d.n,
                    d.positives,
                    num(a),
                    num(b),
                    d.threshold,
                    num(d.sensitivity),
                    num(d.specificity),
                    num(d.brier[0]),
                    num(d.brier[1]),
                    num(d.ece[0]),
                    num(d.ece[1])
                );
                serde_json::to_value(d).unwrap_or(Value::Null)
            }
            Err(e) => {
                let _ = writeln!(md, "| {} | n/a: {e} | | | | | | | |", exp.name);
                json!({"error": e.to_string()})
            }
        };
        if let Some(Value::Object(e)) = experiments.get_mut(&exp.name) {
            e.insert("decision".into(), value);
        }
    }

    // Pictures.
    let _ = writeln!(md, "\n## Pictures\n");
    for (exp, folds) in &run.experiments {
        let (labels, scores): (Vec<bool>, Vec<f64>) = folds
            .iter()
            .flat_map(|f| f.predictions.iter().map(|p| (p.label, p.probability)))
            .unzip();
        let roc_path = out.join(format!("roc_{}.png", exp.name));
        write_roc_png(&roc_path, &roc_curve(&labels, &scores))?;
        let _ = writeln!(
            md,
            "- {}: ROC curve of the pooled test predictions (AUC {}): ![roc](roc_{}.png)",
            exp.name,
            num(roc_auc(&labels, &scores)),
            exp.name
        );
        let mut cases: Vec<(f64, PathBuf, String)> = folds
            .iter()
            .flat_map(|f| {
                let dir = fold_dir(out, &exp.name, f.fold);
                f.predictions.iter().filter_map(move |p| {
                    p.heat_score
                        .filter(|h| h.is_finite())
                        .map(|h| (h, dir.join(format!("cam_{}.png", p.subject)), p.subject.clone()))
                })
            })
            .filter(|c| c.1.is_file())
            .collect();
        cases.sort_by(|a, b| b.0.total_cmp(&a.0));
        if let (Some(best), Some(worst)) = (cases.first(), cases.last()) {
            let montage = out.join(format!("gradcam_{}.png", exp.name));
            write_montage(&montage, &[&best.1, &worst.1])?;
            let _ = writeln!(
                md,
                "- {}: Grad-CAM of the best ({}, Heat-Score {:.2}) and worst ({}, {:.2}) case (axial slice through the lesion; heat in red, ROI outline in green): ![cam](gradcam_{}.png)",
                exp.name, best.2, best.0, worst.2, worst.0, exp.name
            );
        }
    }

    let _ = writeln!(md, "\n## Notes per test subject\n");
    let notes: Vec<String> = run
        .experiments
        .iter()
        .flat_map(|(exp, folds)| {
            folds.iter().flat_map(move |f| {
                f.predictions.iter().filter_map(move |p| {
                    p.note
                        .as_ref()
                        .map(|n| format!("- {} {}: {}: {n}", exp.name, f.name, p.subject))
                })
            })
        })
        .collect();
    if notes.is_empty() {
        let _ = writeln!(md, "None.");
    }
    for n in notes {
        let _ = writeln!(md, "{n}");
    }
    let _ = writeln!(md, "\n## Skipped subjects\n");
    if run.skipped.is_empty() {
        let _ = writeln!(md, "None.");
    }
    for s in &run.skipped {
        let _ = writeln!(md, "- {}: {}", s.subject, s.reason);
    }
    let _ = writeln!(md, "\n## Dataset warnings\n");
    if run.warnings.is_empty() {
        let _ = writeln!(md, "None.");
    }
    for w in &run.warnings {
        let _ = writeln!(md, "- {w}");
    }
    write_file(&out.join("report.md"), &md)?;
    write_file(&out.join("metrics.csv"), &csv)?;
    let metrics = json!({
        "heat_score_background": background_description(),
        "folds": run.scheme,
        "recipe": recipe,
        "experiments": experiments,
        "paired_t_tests": tests,
        "skipped": run.skipped,
        "warnings": run.warnings,
    });
    write_file(
        &out.join("metrics.json"),
        &serde_json::to_string_pretty(&metrics).unwrap_or_default(),
    )
}

fn per_acquisition(folds: &[FoldResult]) -> BTreeMap<String, Value> {
    let mut by: BTreeMap<String, (Vec<bool>, Vec<f64>)> = BTreeMap::new();
    for p in folds.iter().flat_map(|f| &f.predictions) {
        let e = by.entry(p.acquisition.clone()).or_default();
        e.0.push(p.label);
        e.1.push(p.probability);
    }
    by.into_iter()
        .map(|(acq, (labels, probs))| {
            let c = Confusion::at(&labels, &probs, 0.5);
            let fcd = labels.iter().filter(|&&l| l).count();
            let v = json!({
                "n": labels.len(),
                "fcd": fcd,
                "hc": labels.len() - fcd,
                "accuracy": finite(c.accuracy()),
                "roc_auc": finite(roc_auc(&labels, &probs)),
            });
            (acq, v)
        })
        .collect()
}

fn finite(v: f64) -> Value {
    if v.is_finite() { json!(v) } else { Value::Null }
}
