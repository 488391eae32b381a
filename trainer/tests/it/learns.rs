//! Issue 13 "learns", CI-sized: the quick recipe (`fcdtrain cv --preset quick`) finds the
//! **default** lesion of `fcdnode synth` (8 mm, contrast 1.0, the default scanner confound) on a
//! seed no tuning saw, and a negative control with the same recipe stays at chance.
//!
//! The full bar (40 subjects, 5 folds, 18 epochs, about 24 minutes: mean sensitivity and
//! specificity ≥ 0.8, hotspot within 10 mm for ≥ 60 % of patients, no worse than the baseline)
//! is `make recipe`. CI affords 30 subjects, 3 folds and 12 epochs (about 5 minutes each on two
//! cores), and at that size the recipe does not always reach the full bar: on seed 5101 it did
//! (pooled ROC-AUC 1.000; at the run's threshold sensitivity 0.933, specificity 1.000; every
//! hotspot within 10 mm), on seed 7315 it did not (ROC-AUC 0.916 against the baseline's 1.000,
//! sensitivity 0.933, specificity 0.667, hotspot within 10 mm 0.667, Heat-Score 10.7 vs null
//! −0.05). So this test asserts what both reached: ROC-AUC ≥ 0.85, sensitivity at the run's
//! threshold ≥ 0.8 (a triage tool), hotspot within 10 mm ≥ 0.6 for both maps, Heat-Score well
//! above its null; it prints specificity and the baseline. The bar was set on 5101 and 7315;
//! 7317 judges it and was used for nothing else. The per-fold sensitivity at a fixed 0.5 is not
//! asserted: the node decides at the threshold the run chooses on its out-of-fold predictions.

use std::path::Path;
use std::process::Command;

use fcdnode::synth::{self, CohortOptions, KnobRange};
use fcdnode_trainer::metrics::roc_auc;
use serde_json::Value;

/// Synthesises a 30-subject 2 mm cohort and runs the CI-sized quick recipe on it; returns the
/// experiment's metrics and the pooled out-of-fold ROC-AUC.
fn quick_recipe(dir: &Path, options: CohortOptions) -> (Value, f64) {
    let data = dir.join("bids");
    synth::generate(
        &data,
        &CohortOptions {
            subjects: 30,
            voxel_mm: 2.0,
            preview: false,
            ..options
        },
    )
    .unwrap();
    let run = dir.join("run");
    let out = Command::new(env!("CARGO_BIN_EXE_fcdtrain"))
        .args([
            "cv", "--preset", "quick", "--folds", "3", "--epochs", "12", "--seed", "1", "--data",
        ])
        .arg(&data)
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metrics: Value = serde_json::from_slice(&std::fs::read(run.join("metrics.json")).unwrap()).unwrap();
    let experiment = metrics["experiments"]["resnet10_none_all_flair"].clone();
    assert!(experiment.is_object(), "{metrics}");
    let (mut labels, mut scores) = (Vec::new(), Vec::new());
    for fold in 1..=3 {
        let path = run.join(format!("resnet10_none_all_flair/fold-{fold}/result.json"));
        let result: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for p in result["predictions"].as_array().unwrap() {
            labels.push(p["label"].as_bool().unwrap());
            scores.push(p["probability"].as_f64().unwrap());
        }
    }
    assert_eq!(labels.len(), 30, "every subject predicted once out of fold");
    (experiment, roc_auc(&labels, &scores))
}

fn number(value: &Value, path: &[&str]) -> f64 {
    path.iter()
        .fold(value, |v, key| &v[*key])
        .as_f64()
        .unwrap_or_else(|| panic!("no number at {path:?} in {value}"))
}

#[test]
fn quick_recipe_finds_the_default_lesion_on_a_fresh_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let (experiment, pooled_auc) = quick_recipe(
        tmp.path(),
        CohortOptions {
            seed: 7317,
            ..CohortOptions::default()
        },
    );
    let sensitivity = number(&experiment, &["decision", "sensitivity"]);
    let specificity = number(&experiment, &["decision", "specificity"]);
    let hit_10mm = number(&experiment, &["mean", "hit_10mm"]);
    let hit_10mm_node = number(&experiment, &["mean", "hit_10mm_gradcampp"]);
    let (heat, null) = (
        number(&experiment, &["mean", "heat_score"]),
        number(&experiment, &["mean", "heat_score_null"]),
    );
    let baseline_auc = number(&experiment, &["baseline", "roc_auc"]);
    eprintln!(
        "seed 7317: pooled ROC-AUC {pooled_auc:.3} (baseline {baseline_auc:.3}), at the run's threshold sensitivity \
         {sensitivity:.3} specificity {specificity:.3}, hotspot ≤ 10 mm {hit_10mm:.3} (Grad-CAM++ {hit_10mm_node:.3}), \
         Heat-Score {heat:.2} (null {null:.2})"
    );
    assert!(pooled_auc >= 0.85, "{pooled_auc}: {experiment}");
    assert!(sensitivity >= 0.8, "{experiment}");
    assert!(hit_10mm >= 0.6 && hit_10mm_node >= 0.6, "{experiment}");
    assert!(heat > null + 2.0, "the map does not know the lesion: {experiment}");
}

/// "Patients" whose lesion is invisible (contrast 0.001, ROI kept) and no scanner confound: the
/// only thing that tells the groups apart is the label, so the same recipe must stay at chance
/// and its map must not score above its null. (With the default confound the scanner is a real
/// signal: `make recipe`'s negative control keeps it and reports what it gives.)
#[test]
fn negative_control_stays_at_chance() {
    let tmp = tempfile::tempdir().unwrap();
    let (experiment, pooled_auc) = quick_recipe(
        tmp.path(),
        CohortOptions {
            seed: 7316,
            lesion_contrast: KnobRange::fixed(0.001),
            patients_on_control_scanner: 1.0,
            ..CohortOptions::default()
        },
    );
    // A flat map has no Heat-Score (null in metrics.json): it knows nothing, which passes.
    let heat = experiment["mean"]["heat_score"].as_f64();
    let null = experiment["mean"]["heat_score_null"].as_f64();
    let hit_10mm = number(&experiment, &["mean", "hit_10mm"]);
    eprintln!(
        "negative control seed 7316: pooled ROC-AUC {pooled_auc:.3}, Heat-Score {heat:?} (null {null:?}), hotspot ≤ 10 mm {hit_10mm:.3}"
    );
    assert!(pooled_auc < 0.75, "{pooled_auc}: {experiment}");
    if let (Some(heat), Some(null)) = (heat, null) {
        assert!(heat < null + 1.0, "{experiment}");
    }
    assert!(hit_10mm < 0.4, "{experiment}");
}
