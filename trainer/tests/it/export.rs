//! `fcdtrain export` on a hand-made finished run (random fold weights, predictions written by
//! hand, no training): fold health (refuse / keep / drop a fold below --min-fold-auc) and the
//! decision written into the manifest (threshold chosen on Platt-calibrated out-of-fold
//! probabilities, `[calibration]`, `[[fold_metrics]]`), each with a known answer.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fcdnode::package::manifest::{FoldStatus, Manifest, ModelPackage};
use fcdnode::package::weights::Weights;
use fcdnode_trainer::config::{CvConfig, ThresholdRule};
use fcdnode_trainer::cv::{FoldResult, Metrics, Prediction, weights_path};
use fcdnode_trainer::export::{ExportError, ExportOptions, export};
use fcdnode_trainer::train::save_weights;

/// (label, probability) per held-out subject of each fold. ROC-AUC: fold-1 1.0, fold-2 0.25
/// (one patient pair of four ordered), fold-3 0.75.
const FOLDS: [[(bool, f64); 4]; 3] = [
    [(true, 0.9), (true, 0.8), (false, 0.3), (false, 0.2)],
    [(true, 0.6), (true, 0.4), (false, 0.7), (false, 0.5)],
    [(true, 0.7), (true, 0.45), (false, 0.5), (false, 0.1)],
];

/// Folds that rank every control above every patient (ROC-AUC 0).
const BACKWARDS: [[(bool, f64); 4]; 2] = [
    [(true, 0.2), (true, 0.1), (false, 0.9), (false, 0.8)],
    [(true, 0.3), (true, 0.15), (false, 0.7), (false, 0.6)],
];

/// Writes a finished run of `folds` into `dir` (its dataset does not exist: the export says so
/// and leaves out the heatmap reference) and returns the run directory.
fn run(dir: &Path, folds: &[[(bool, f64); 4]], rule: ThresholdRule) -> PathBuf {
    let config = CvConfig {
        data: dir.join("no-dataset"),
        archs: vec!["resnet10".into()],
        width_mult: 0.125,
        folds: folds.len(),
        voxel_mm: 8.0,
        fov_mm: [64.0; 3],
        threshold_rule: rule,
        ..CvConfig::default()
    };
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("config.json"), serde_json::to_string(&config).unwrap()).unwrap();
    let exp = config.experiments().unwrap().remove(0);
    for (k, fold) in folds.iter().enumerate() {
        let fold_dir = run.join(&exp.name).join(format!("fold-{}", k + 1));
        std::fs::create_dir_all(&fold_dir).unwrap();
        save_weights(&weights_path(&fold_dir), &Weights::random(&exp.arch, k as u64)).unwrap();
        let result = FoldResult {
            experiment: exp.name.clone(),
            fold: k,
            name: format!("fold-{}", k + 1),
            train: Vec::new(),
            val: Vec::new(),
            metrics: Metrics::default(),
            predictions: fold
                .iter()
                .enumerate()
                .map(|(i, &(label, probability))| Prediction {
                    subject: format!("sub-{k}{i}"),
                    acquisition: "a".into(),
                    label,
                    probability,
                    heat_score: None,
                    heat_score_null: None,
                    hotspot_distance_mm: None,
                    heat_score_gradcampp: None,
                    heat_score_gradcampp_null: None,
                    hotspot_distance_gradcampp_mm: None,
                    note: None,
                })
                .collect(),
            history: Vec::new(),
            seconds: 0.0,
            before: None,
        };
        std::fs::write(fold_dir.join("result.json"), serde_json::to_string(&result).unwrap()).unwrap();
    }
    run
}

fn fcdtrain_export(run: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fcdtrain"))
        .args(["export", "--run"])
        .arg(run)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn manifest_of(out: &Output, package: &Path) -> Manifest {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    ModelPackage::load(package).unwrap().manifest
}

#[test]
fn a_weak_fold_is_refused_by_name_unless_kept_or_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run(tmp.path(), &FOLDS, ThresholdRule::default());

    let refused = tmp.path().join("refused");
    let out = fcdtrain_export(&run, &refused, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("fold-2 (ROC-AUC 0.250)") && stderr.contains("--min-fold-auc 0.7"),
        "{stderr}"
    );
    assert!(
        stderr.contains("--keep-weak-folds") && stderr.contains("--drop-weak-folds"),
        "{stderr}"
    );
    assert!(!stderr.contains("fold-1") && !stderr.contains("fold-3"), "{stderr}");
    assert!(!refused.exists(), "nothing written for a refused export");

    // Kept: three graphs, fold-2 marked, the decision on all 12 predictions.
    let kept = tmp.path().join("kept");
    let out = fcdtrain_export(&run, &kept, &["--keep-weak-folds"]);
    let m = manifest_of(&out, &kept);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("weak fold kept (--keep-weak-folds): fold-2 (ROC-AUC 0.250)"),
        "{stdout}"
    );
    assert_eq!(m.folds, ["fold1.onnx", "fold2.onnx", "fold3.onnx"]);
    let status: Vec<FoldStatus> = m.fold_metrics.iter().map(|f| f.status).collect();
    assert_eq!(status, [FoldStatus::Healthy, FoldStatus::WeakKept, FoldStatus::Healthy]);
    let aucs: Vec<Option<f64>> = m.fold_metrics.iter().map(|f| f.roc_auc).collect();
    assert_eq!(aucs, [Some(1.0), Some(0.25), Some(0.75)]);
    assert_eq!((m.fold_metrics[0].n, m.fold_metrics[0].positives), (4, 2));
    let c = m.calibration.clone().expect("[calibration] written");
    assert!(stdout.contains("calibration: Platt a"), "{stdout}");
    assert!(c.a > 0.0 && c.a.is_finite() && c.b.is_finite(), "{c:?}");
    assert!(
        c.fitted_on.contains("fold-1, fold-2, fold-3: 12 subjects (6 fcd)"),
        "{c:?}"
    );
    // Sensitivity ≥ 0.9 of 6 patients needs all 6: below the lowest patient (raw 0.4),
    // calibrated, halfway to the next lower score (a control's, raw 0.3).
    let mid = (c.apply(0.4) + c.apply(0.3)) / 2.0;
    assert!((m.threshold - mid).abs() < 1e-12, "{} vs {mid}", m.threshold);
    // At it, fold-1 is all right; fold-2's controls (0.7, 0.5) are both above.
    assert_eq!(m.fold_metrics[0].accuracy, Some(1.0));
    assert_eq!(m.fold_metrics[1].accuracy, Some(0.5));
    assert_eq!(m.provenance.min_fold_auc, Some(0.7));
    assert!(
        m.provenance.threshold_rule.contains("sensitivity ≥ 0.9")
            && m.provenance.threshold_rule.contains("sensitivity 1.000"),
        "{}",
        m.provenance.threshold_rule
    );
    assert!(
        m.provenance.notes.contains("kept by --keep-weak-folds: fold-2"),
        "{}",
        m.provenance.notes
    );

    // Dropped: fold-2's graph is absent and the decision is refitted on the other 8 subjects.
    let dropped = tmp.path().join("dropped");
    let out = fcdtrain_export(&run, &dropped, &["--drop-weak-folds"]);
    let m = manifest_of(&out, &dropped);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("weak fold dropped (--drop-weak-folds): fold-2 (ROC-AUC 0.250)"),
        "{stdout}"
    );
    assert_eq!(m.folds, ["fold1.onnx", "fold3.onnx"]);
    assert!(!dropped.join("fold2.onnx").exists());
    assert_eq!(m.fold_metrics[1].status, FoldStatus::WeakDropped);
    assert_eq!(m.fold_metrics[1].graph, None);
    assert_eq!(m.fold_metrics[2].graph.as_deref(), Some("fold3.onnx"));
    let c = m.calibration.clone().unwrap();
    assert!(c.fitted_on.contains("fold-1, fold-3: 8 subjects (4 fcd)"), "{c:?}");
    // Below the lowest kept patient (raw 0.45), halfway to the next lower score (raw 0.3).
    let mid = (c.apply(0.45) + c.apply(0.3)) / 2.0;
    assert!((m.threshold - mid).abs() < 1e-12, "{} vs {mid}", m.threshold);
    assert!(
        m.provenance.validation.contains("dropped: fold-2 (ROC-AUC 0.250)"),
        "{}",
        m.provenance.validation
    );

    // A lower floor passes every fold.
    let lenient = tmp.path().join("lenient");
    let m = manifest_of(&fcdtrain_export(&run, &lenient, &["--min-fold-auc", "0.2"]), &lenient);
    assert!(m.fold_metrics.iter().all(|f| f.status == FoldStatus::Healthy));
    assert_eq!(m.provenance.min_fold_auc, Some(0.2));

    // A floor that is no ROC-AUC is refused before anything is read.
    let bad = ExportOptions {
        min_fold_auc: 1.5,
        ..ExportOptions::default()
    };
    let err = export(&run, None, &tmp.path().join("bad"), &bad).unwrap_err();
    assert!(matches!(err, ExportError::Floor { .. }), "{err}");
}

/// The rule comes from the run's config (`fcdtrain cv --threshold-rule youden`).
#[test]
fn youden_rule_from_the_run_config() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run(tmp.path(), &FOLDS, ThresholdRule::Youden);
    let package = tmp.path().join("youden");
    let m = manifest_of(&fcdtrain_export(&run, &package, &["--min-fold-auc", "0.2"]), &package);
    let c = m.calibration.clone().unwrap();
    // On the 12 probabilities J = 1/2 is the most, at raw 0.6 (4 of 6 patients, 5 of 6 controls)
    // and at 0.4 (6 of 6, 3 of 6); ties keep the higher, set halfway down to the next lower
    // score (raw 0.5). Calibration keeps the order.
    let mid = (c.apply(0.6) + c.apply(0.5)) / 2.0;
    assert!((m.threshold - mid).abs() < 1e-12, "{} vs {mid}", m.threshold);
    assert!(
        m.provenance.threshold_rule.contains("Youden"),
        "{}",
        m.provenance.threshold_rule
    );
}

/// Folds that rank backwards: dropping leaves nothing; kept, they ship without a calibration
/// (it would invert them) and the threshold is chosen on the raw probabilities.
#[test]
fn folds_that_rank_backwards_ship_uncalibrated_only_when_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run(tmp.path(), &BACKWARDS, ThresholdRule::default());
    let out = fcdtrain_export(&run, &tmp.path().join("dropped"), &["--drop-weak-folds"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("every fold is below --min-fold-auc 0.7")
            && stderr.contains("fold-1 (ROC-AUC 0.000), fold-2 (ROC-AUC 0.000)"),
        "{stderr}"
    );
    let package = tmp.path().join("kept");
    let out = fcdtrain_export(&run, &package, &["--keep-weak-folds"]);
    let m = manifest_of(&out, &package);
    assert_eq!(m.calibration, None);
    // All four patients (3 of 4 is below 0.9): the lowest, raw 0.1.
    assert_eq!(m.threshold, 0.1);
    assert!(
        m.provenance.threshold_rule.contains("uncalibrated"),
        "{}",
        m.provenance.threshold_rule
    );
    assert!(m.provenance.notes.contains("no calibration"), "{}", m.provenance.notes);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("calibration: none"), "{stdout}");
}

/// With `RUN/baseline.json` (written by `fcdtrain cv`) export compares the model with the
/// baseline on the exported folds' subjects and warns when the baseline is better.
#[test]
fn export_warns_when_the_baseline_does_better() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run(tmp.path(), &FOLDS, ThresholdRule::default());
    let write_baseline = |flip: bool| {
        let mut map = serde_json::Map::new();
        for (k, fold) in FOLDS.iter().enumerate() {
            for (i, &(label, _)) in fold.iter().enumerate() {
                let score = if label != flip { 1.0 } else { 0.0 };
                map.insert(
                    format!("sub-{k}{i}"),
                    serde_json::json!({"label": label, "score": score + i as f64 * 0.01}),
                );
            }
        }
        std::fs::write(run.join("baseline.json"), serde_json::Value::Object(map).to_string()).unwrap();
    };
    // A baseline that ranks every patient first: the model (pooled ROC-AUC < 1) loses to it.
    write_baseline(false);
    let out = fcdtrain_export(&run, &tmp.path().join("p1"), &["--min-fold-auc", "0.2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("WARNING: the model does not beat"),
        "{stdout}"
    );
    let a = export(
        &run,
        None,
        &tmp.path().join("p2"),
        &ExportOptions {
            min_fold_auc: 0.2,
            ..ExportOptions::default()
        },
    )
    .unwrap()
    .against_baseline
    .unwrap();
    assert_eq!((a.baseline.subjects, a.baseline.roc_auc), (12, 1.0));
    assert!(a.model_roc_auc < 1.0 && !a.beaten(), "{a:?}");
    // A baseline that ranks them last: no warning.
    write_baseline(true);
    let out = fcdtrain_export(&run, &tmp.path().join("p3"), &["--min-fold-auc", "0.2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("  baseline: model ROC-AUC"),
        "{stdout}"
    );
}
