//! `fcdtrain cv` end to end on a tiny synthetic cohort: report files and keys, resume, export to
//! a model package that ONNX Runtime runs with burn's logits and Grad-CAM, and bad input.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;

use burn::tensor::Device;
use fcdnode::infer::{CamMethod, Ensemble, runtime};
use fcdnode::package::arch::Pooling;
use fcdnode::package::manifest::{Modality, ModelPackage};
use fcdnode::preprocess::ModelInput;
use fcdnode::synth::{self, CohortOptions};
use fcdnode_trainer::config::{CvConfig, ThresholdRule};
use fcdnode_trainer::cv::{self, CvError};
use fcdnode_trainer::data::batcher::{batch, prepare};
use fcdnode_trainer::data::bids::Dataset;
use fcdnode_trainer::model::{ResNet3d, Tap, grad_cam};
use fcdnode_trainer::train::load_weights;

fn cohort(dir: &Path, subjects: usize) {
    let options = CohortOptions {
        subjects,
        fcd_fraction: 0.5,
        voxel_mm: 4.0,
        preview: false,
        seed: 7,
        ..CohortOptions::default()
    };
    synth::generate(dir, &options).unwrap();
}

fn tiny(data: &Path) -> CvConfig {
    CvConfig {
        data: data.to_owned(),
        archs: vec!["resnet10".into()],
        width_mult: 0.125,
        folds: 2,
        epochs: 2,
        voxel_mm: 4.0,
        fov_mm: [160.0, 192.0, 160.0],
        // The quick recipe's head and loss, so the end-to-end path (training, export, ORT
        // agreement) runs through them.
        pooling: Pooling::Lse { sharpness: 8.0 },
        roi_weight: 5.0,
        ..CvConfig::default()
    }
}

fn values<const D: usize>(t: burn::tensor::Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap()
}

#[test]
fn tiny_cv_reports_resumes_and_exports_a_package_ort_agrees_with() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("bids");
    cohort(&data, 8);
    let run_dir = tmp.path().join("run");
    let out = Command::new(env!("CARGO_BIN_EXE_fcdtrain"))
        // The quick recipe (log-mean-exp head, lesion-map loss), cut down by explicit options.
        .args(["cv", "--preset", "quick", "--folds", "2", "--epochs", "2"])
        .args(["--voxel-mm", "4", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&run_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report = std::fs::read_to_string(run_dir.join("report.md")).unwrap();
    assert!(
        report.contains("| Model | TL | Modality | Accuracy ± std | ROC-AUC ± std | Heat-Score"),
        "{report}"
    );
    assert!(report.contains("head foreground outside the lesion ROI"), "{report}");
    // The baseline beside the model, scored once per subject.
    assert!(
        report.contains("## Baseline beside the model (same test subjects)")
            && report.contains("| resnet10_none_all_flair | baseline |")
            && report.contains("| resnet10_none_all_flair | model, Grad-CAM++ (the node's default) |"),
        "{report}"
    );
    let baseline: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("baseline.json")).unwrap()).unwrap();
    assert_eq!(baseline.as_object().unwrap().len(), 8, "{baseline}");
    assert!(
        report.contains("## Decision threshold and calibration (pooled out-of-fold predictions)")
            && report.contains("Rule: **the highest threshold with sensitivity ≥ 0.9**"),
        "{report}"
    );
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("metrics.json")).unwrap()).unwrap();
    let exp_name = "resnet10_none_all_flair";
    let exp = &metrics["experiments"][exp_name];
    for key in [
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
    ] {
        assert!(exp["mean"].get(key).is_some(), "mean.{key} missing: {exp}");
        assert_eq!(exp["folds"].as_array().unwrap().len(), 2);
        assert!(exp["folds"][0].get(key).is_some(), "folds[0].{key} missing");
    }
    assert!(exp["mean"]["accuracy"].as_f64().is_some());
    // The decision export would write, or why there is none.
    let decision = &exp["decision"];
    assert!(
        decision["threshold"].is_number() || decision["error"].is_string(),
        "{decision}"
    );
    assert!(run_dir.join("metrics.csv").is_file());
    assert!(run_dir.join(format!("roc_{exp_name}.png")).is_file());
    assert!(run_dir.join("config.json").is_file());

    // Resume: the same options find both folds finished.
    let config: CvConfig = serde_json::from_slice(&std::fs::read(run_dir.join("config.json")).unwrap()).unwrap();
    let again = cv::run(&config, &run_dir, &AtomicBool::new(false)).unwrap();
    assert_eq!(again.resumed, 2);
    // Another threshold rule needs no retraining: the folds resume and the run records the rule.
    let youden = CvConfig {
        threshold_rule: ThresholdRule::Youden,
        ..config.clone()
    };
    assert_eq!(cv::run(&youden, &run_dir, &AtomicBool::new(false)).unwrap().resumed, 2);
    let recorded: CvConfig = serde_json::from_slice(&std::fs::read(run_dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(recorded.threshold_rule, ThresholdRule::Youden);
    // Other options are refused instead of mixing runs.
    let other = CvConfig {
        seed: 99,
        ..config.clone()
    };
    assert!(matches!(
        cv::run(&other, &run_dir, &AtomicBool::new(false)),
        Err(CvError::OtherRun { .. })
    ));

    // Export, then ONNX Runtime vs burn on a preprocessed subject. Two epochs on four subjects
    // a fold discriminate by chance only: fold health is export.rs's test, not this one's.
    let package_dir = tmp.path().join("models").join("tiny");
    let out = Command::new(env!("CARGO_BIN_EXE_fcdtrain"))
        .args(["export", "--keep-weak-folds", "--run"])
        .arg(&run_dir)
        .arg("--out")
        .arg(&package_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let package = ModelPackage::load(&package_dir).unwrap();
    assert_eq!(package.graphs.len(), 2);
    assert_eq!(package.manifest.channels, vec![Modality::Flair]);
    assert_eq!(package.manifest.preprocess, config.recipe());
    assert_eq!(package.manifest.classes, vec!["hc".to_string(), "fcd".to_string()]);
    assert!(package.manifest.provenance.metrics.contains_key("accuracy"));

    runtime::init(&runtime::find_library(None).expect("ONNX Runtime missing: run scripts/setup.sh")).unwrap();
    let mut ensemble = Ensemble::load(&package, runtime::Device::Cpu, 1).unwrap();
    let dataset = Dataset::open(&data).unwrap();
    let prepared = prepare(&dataset, &[Modality::Flair], &config.recipe(), &run_dir.join("cache")).unwrap();
    let sample = prepared.samples.iter().find(|s| s.label).unwrap();
    let input = ModelInput {
        tensor: sample.tensor.clone(),
        grid: sample.grid,
    };
    let prediction = ensemble.predict(&input).unwrap();
    let device = Device::flex();
    let mut burn_cam: Option<Vec<f32>> = None;
    for (k, fold_probability) in prediction.fold_probabilities.iter().enumerate() {
        let weights = load_weights(
            &run_dir
                .join(exp_name)
                .join(format!("fold-{}", k + 1))
                .join("weights.bin"),
        )
        .unwrap();
        let model = ResNet3d::new(&package.manifest.architecture, &device)
            .unwrap()
            .load_weights(&weights)
            .unwrap();
        let x = batch(&[&sample.tensor], &device);
        let (logits, features) = model.forward(x.clone());
        let logits = values(logits);
        // ORT logits are not exposed by Prediction; compare the probability and the features.
        let p = 1.0 / (1.0 + f64::from(logits[0] - logits[1]).exp());
        assert!(
            (p - fold_probability).abs() < 1e-4,
            "fold {k}: burn {p} vs ORT {fold_probability}"
        );
        let ort_features = prediction.features[k].iter().copied().collect::<Vec<f32>>();
        let burn_features = values(features);
        assert_eq!(ort_features.len(), burn_features.len());
        let max_diff = ort_features
            .iter()
            .zip(&burn_features)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(max_diff <= 1e-4, "fold {k}: features differ by {max_diff}");
        let cam = values(grad_cam(&model, x, 1, Tap::Layer4).unwrap().cam);
        burn_cam = Some(match burn_cam {
            None => cam,
            Some(sum) => sum.iter().zip(&cam).map(|(a, b)| a + b).collect(),
        });
    }
    let folds = prediction.fold_probabilities.len() as f32;
    let burn_cam: Vec<f32> = burn_cam.unwrap().into_iter().map(|v| v / folds).collect();
    let ort_cam: Vec<f32> = ensemble
        .cam(&prediction, CamMethod::Gradcam)
        .unwrap()
        .iter()
        .copied()
        .collect();
    let scale = burn_cam.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    let rel = ort_cam
        .iter()
        .zip(&burn_cam)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs() / scale));
    assert!(rel <= 1e-4, "CAM relative difference {rel}");
}

#[test]
fn logits_of_the_exported_graph_equal_burn() {
    // Issue 5 parity on logits directly: the ONNX writer's graph under ORT vs burn forward.
    for pooling in [Pooling::Mean, Pooling::Lse { sharpness: 8.0 }] {
        exported_logits_equal_burn(pooling);
    }
}

fn exported_logits_equal_burn(pooling: Pooling) {
    use fcdnode::package::onnx::write_onnx;
    use fcdnode::package::weights::Weights;
    let tmp = tempfile::tempdir().unwrap();
    let mut arch = fcdnode::package::arch::ArchSpec::from_name("resnet10").unwrap();
    arch.width_mult = 0.125;
    arch.pooling = pooling;
    let device = Device::flex();
    let model = ResNet3d::new(&arch, &device)
        .unwrap()
        .load_weights(&Weights::random(&arch, 3))
        .unwrap();
    // As export does: the weights the network computes with.
    let weights = model.to_weights().unwrap();
    let path = tmp.path().join("m.onnx");
    write_onnx(&arch, &weights, [20, 24, 16], &path).unwrap();
    runtime::init(&runtime::find_library(None).expect("ONNX Runtime missing: run scripts/setup.sh")).unwrap();
    let mut session = runtime::session(&path, runtime::Device::Cpu, 1).unwrap();
    let input = ndarray::Array5::from_shape_fn((2, 1, 20, 24, 16), |(b, _, d, h, w)| {
        ((b * 7 + d * 3 + h * 5 + w) % 11) as f32 / 5.0 - 1.0
    });
    let ort = runtime::run(&mut session, &input).unwrap();
    let x = batch(
        &[
            &input.index_axis(ndarray::Axis(0), 0).to_owned(),
            &input.index_axis(ndarray::Axis(0), 1).to_owned(),
        ],
        &device,
    );
    let (logits, _) = model.forward(x);
    let burn = values(logits);
    let max = ort
        .logits
        .iter()
        .zip(&burn)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(max <= 1e-4, "{pooling}: logits differ by {max}");
}

fn run_err(config: &CvConfig, out: &Path) -> String {
    let err = cv::run(config, out, &AtomicBool::new(false)).unwrap_err();
    fcdnode::error_chain(&err)
}

#[test]
fn bad_input_gets_clear_errors_or_listed_skips() {
    let tmp = tempfile::tempdir().unwrap();
    // Missing participants.tsv.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let msg = run_err(&tiny(&empty), &tmp.path().join("r0"));
    assert!(msg.contains("participants.tsv"), "{msg}");
    // Unknown architecture.
    let msg = run_err(
        &CvConfig {
            archs: vec!["resnet11".into()],
            ..tiny(&empty)
        },
        &tmp.path().join("r1"),
    );
    assert!(msg.contains("resnet11"), "{msg}");

    // A subject without FLAIR → skipped; a subject with NaN voxels → skipped naming the file.
    let data = tmp.path().join("bids");
    cohort(&data, 6);
    let dataset = Dataset::open(&data).unwrap();
    let flair = |i: usize| -> PathBuf {
        dataset.subjects[i]
            .images_of(fcdnode_trainer::data::bids::ImageKind::Flair)
            .next()
            .unwrap()
            .path
            .clone()
    };
    std::fs::remove_file(flair(0)).unwrap();
    let nan_path = flair(1);
    let mut v = fcdnode::nifti::read(&nan_path).unwrap();
    v.data_mut()[[1, 1, 1]] = f32::NAN;
    fcdnode::nifti::write(&nan_path, &v, fcdnode::nifti::DataType::F32).unwrap();
    let dataset = Dataset::open(&data).unwrap();
    let config = tiny(&data);
    let prepared = prepare(
        &dataset,
        &[Modality::Flair],
        &config.recipe(),
        &tmp.path().join("cache"),
    )
    .unwrap();
    assert_eq!(prepared.skipped.len(), 2, "{:?}", prepared.skipped);
    let s0 = &prepared.skipped[0];
    assert_eq!(s0.subject, dataset.subjects[0].id);
    assert!(s0.reason.contains("no FLAIR image"), "{}", s0.reason);
    let s1 = &prepared.skipped[1];
    assert!(
        s1.reason.contains(&nan_path.display().to_string()) && s1.reason.contains("finite"),
        "{}",
        s1.reason
    );
    assert_eq!(prepared.samples.len(), 4);
    // The cache makes a second pass read no NIfTI (same tensors).
    let again = prepare(
        &dataset,
        &[Modality::Flair],
        &config.recipe(),
        &tmp.path().join("cache"),
    )
    .unwrap();
    assert_eq!(again.samples[0].tensor, prepared.samples[0].tensor);
    assert_eq!(again.samples[0].roi, prepared.samples[0].roi);
}

#[test]
fn a_mask_off_its_flair_grid_is_skipped_with_both_files_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("bids");
    cohort(&data, 2);
    let dataset = Dataset::open(&data).unwrap();
    let subject = dataset
        .subjects
        .iter()
        .find(|s| s.group == fcdnode_trainer::data::bids::Group::Fcd)
        .unwrap();
    let mask = &subject
        .images_of(fcdnode_trainer::data::bids::ImageKind::FlairRoi)
        .next()
        .unwrap()
        .path;
    let v = fcdnode::nifti::read(mask).unwrap();
    let cropped = v.crop_or_pad([10, 10, 10], 0.0).unwrap();
    fcdnode::nifti::write(mask, &cropped, fcdnode::nifti::DataType::U8).unwrap();
    let prepared = prepare(
        &dataset,
        &[Modality::Flair],
        &tiny(&data).recipe(),
        &tmp.path().join("cache"),
    )
    .unwrap();
    let skip = prepared.skipped.iter().find(|s| s.subject == subject.id).unwrap();
    assert!(
        skip.reason.contains(&mask.display().to_string()) && skip.reason.contains("grid"),
        "{}",
        skip.reason
    );
}
