//! `fcdtrain cv --init-from PACKAGE`: fold weights read back from the package's ONNX graphs,
//! a before/after table in the report, and a clear error for an incompatible network.

use std::path::Path;
use std::process::{Command, Output};

use fcdnode::package::manifest::ModelPackage;
use fcdnode::synth::{self, CohortOptions};
use fcdnode_trainer::finetune::read_graph_weights;
use fcdnode_trainer::train::load_weights;

fn cohort(dir: &Path, seed: u64) {
    let options = CohortOptions {
        subjects: 8,
        voxel_mm: 4.0,
        preview: false,
        seed,
        ..CohortOptions::default()
    };
    synth::generate(dir, &options).unwrap();
}

fn cv(data: &Path, out: &Path, width: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fcdtrain"))
        .args([
            "cv",
            "--arch",
            "resnet10",
            "--width-mult",
            width,
            "--folds",
            "2",
            "--epochs",
            "1",
        ])
        .args(["--voxel-mm", "4", "--fov-mm", "160,192,160", "--data"])
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn fine_tuning_starts_from_the_package_and_reports_before_and_after() {
    let tmp = tempfile::tempdir().unwrap();
    let (site_a, site_b) = (tmp.path().join("a"), tmp.path().join("b"));
    cohort(&site_a, 7);
    cohort(&site_b, 8);
    let run_a = tmp.path().join("run-a");
    let out = cv(&site_a, &run_a, "0.125", &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // One epoch does not make folds discriminate; fold health is export.rs's test.
    let package = tmp.path().join("models").join("site-a");
    let out = Command::new(env!("CARGO_BIN_EXE_fcdtrain"))
        .args(["export", "--keep-weak-folds", "--run"])
        .arg(&run_a)
        .arg("--out")
        .arg(&package)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The package's graphs hold exactly the trained weights.
    let loaded = ModelPackage::load(&package).unwrap();
    let from_graph = read_graph_weights(&loaded.graphs[1], &loaded.manifest.architecture).unwrap();
    let trained = load_weights(&run_a.join("resnet10_none_all_flair/fold-2/weights.bin")).unwrap();
    assert_eq!(
        from_graph.0.keys().collect::<Vec<_>>(),
        trained.0.keys().collect::<Vec<_>>()
    );
    assert!(from_graph.0.iter().all(|(name, t)| trained.0[name] == *t));

    // Fine-tune on site B.
    let run_b = tmp.path().join("run-b");
    let pkg = package.to_str().unwrap();
    let out = cv(&site_b, &run_b, "0.125", &["--init-from", pkg]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = std::fs::read_to_string(run_b.join("report.md")).unwrap();
    assert!(
        report.contains("| Experiment | Metric | Package as-is | After fine-tuning |"),
        "{report}"
    );
    assert!(
        report.contains("| resnet10_pkg-site-a_all_flair | accuracy |"),
        "{report}"
    );
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_b.join("metrics.json")).unwrap()).unwrap();
    let exp = &metrics["experiments"]["resnet10_pkg-site-a_all_flair"];
    let before = exp["before"]["mean"]["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&before), "{exp}");
    // Each fold kept its own before-metrics next to the after-metrics.
    let fold: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_b.join("resnet10_pkg-site-a_all_flair/fold-1/result.json")).unwrap())
            .unwrap();
    assert!(
        fold["before"]["roc_auc"].is_number() || fold["before"]["roc_auc"].is_null(),
        "{fold}"
    );
    assert!(fold["before"]["accuracy"].is_number(), "{fold}");

    // Another width than the package's is refused, naming both networks and the fix.
    let out = cv(&site_b, &tmp.path().join("run-c"), "0.25", &["--init-from", pkg]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("architecture") && stderr.contains("×0.125") && stderr.contains("×0.25"),
        "{stderr}"
    );
    assert!(stderr.contains("--width-mult"), "{stderr}");
}
