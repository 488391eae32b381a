//! `fcdnode infer` end to end on ONNX Runtime: a model whose CAM peaks where the input is
//! brightest (centre-tap convolutions, identity batch norms) must put the hotspot on a bright
//! blob placed at a known patient position, for axial, sagittal and oblique source series.

use std::path::Path;

use fcdnode::nifti::{self, DataType};
use fcdnode::package::arch::ArchSpec;
use fcdnode::package::manifest::{Calibration, CalibrationMethod, Manifest, Modality};
use fcdnode::package::onnx::write_onnx;
use fcdnode::package::weights::{Weights, parameter_shapes};
use fcdnode::preprocess::{Normalisation, Recipe};
use fcdnode::report::ResultSummary;
use fcdnode::synth::dicom::{DicomOptions, SeriesInfo, write_series};
use fcdnode::volume::{Grid, Volume};
use fcdnode::volume::{Plane, acquisition_grid};
use ndarray::ArrayD;

use crate::util::{dciodvfy, fcdnode, run_ok, tempdir};

const BALL_CENTRE: [f64; 3] = [3.0, -5.0, 8.0];

fn recipe() -> Recipe {
    Recipe {
        voxel_mm: [2.0; 3],
        shape: [48, 48, 48],
        normalisation: Normalisation::ZscoreForeground,
    }
}

fn arch() -> ArchSpec {
    let mut a = ArchSpec::from_name("resnet10").unwrap();
    a.width_mult = 0.125;
    a
}

/// Every convolution passes its input through at the kernel centre (output channel o reads
/// input channel o mod in), batch norms are identities and the head sums all channels into
/// class 1: the features are a downsampled copy of the (positive part of the) input.
fn centre_tap_weights(arch: &ArchSpec) -> Weights {
    let mut map = std::collections::BTreeMap::new();
    for (name, shape) in parameter_shapes(arch) {
        let mut t = ArrayD::<f32>::zeros(shape.clone());
        if shape.len() == 5 {
            let c = shape[2] / 2;
            for o in 0..shape[0] {
                t[[o, o % shape[1], c, c, c].as_slice()] = 1.0;
            }
        } else if name.ends_with("running_var") || (name.ends_with(".weight") && !name.starts_with("fc")) {
            t.fill(1.0);
        } else if name == "fc.weight" {
            for k in 0..shape[1] {
                t[[0, k].as_slice()] = -1.0 / shape[1] as f32;
                t[[1, k].as_slice()] = 1.0 / shape[1] as f32;
            }
        }
        map.insert(name, t);
    }
    Weights(map)
}

/// Writes the centre-tap model package into `dir` (the node tests use it too).
pub(crate) fn package(dir: &Path, channel: Modality) {
    package_with(dir, &[channel]);
}

/// The centre-tap model package taking `channels`.
pub(crate) fn package_with(dir: &Path, channels: &[Modality]) {
    let mut arch = arch();
    arch.in_channels = channels.len();
    let r = recipe();
    write_onnx(
        &arch,
        &centre_tap_weights(&arch),
        [r.shape[2], r.shape[1], r.shape[0]],
        &dir.join("fold0.onnx"),
    )
    .unwrap();
    Manifest::fcd_classifier(
        "centre-tap",
        "test",
        channels.to_vec(),
        r,
        arch,
        vec!["fold0.onnx".into()],
    )
    .save(dir)
    .unwrap();
}

/// A ball (35 mm, intensity 100) with a Gaussian blob (σ 4 mm, +300) at `blob` (LPS mm).
fn phantom(grid: &Grid, blob: Option<[f64; 3]>) -> Volume {
    let mut v = Volume::filled(grid, 0.0).unwrap();
    let affine = *v.affine();
    for ((i, j, k), x) in v.data_mut().indexed_iter_mut() {
        let p = affine.apply([i as f64, j as f64, k as f64]);
        let d2 = |c: [f64; 3]| (0..3).map(|a| (p[a] - c[a]).powi(2)).sum::<f64>();
        if d2(BALL_CENTRE) < 35f64.powi(2) {
            *x = 100.0 + blob.map_or(0.0, |b| (300.0 * (-d2(b) / (2.0 * 16.0)).exp()).round() as f32);
        }
    }
    v
}

/// Runs `fcdnode infer INPUT --model MODEL --out OUT EXTRA…` and reads its result.json.
fn infer(input: &Path, model: &Path, out: &Path, extra: &[&str]) -> ResultSummary {
    run_ok(
        fcdnode()
            .arg("infer")
            .arg(input)
            .arg("--model")
            .arg(model)
            .arg("--out")
            .arg(out)
            .args(extra),
    );
    serde_json::from_slice(&std::fs::read(out.join("result.json")).unwrap()).unwrap()
}

/// Euclidean distance in mm.
fn distance(a: [f64; 3], b: [f64; 3]) -> f64 {
    (0..3).map(|i| (a[i] - b[i]).powi(2)).sum::<f64>().sqrt()
}

#[test]
fn hotspot_lands_on_the_bright_blob_for_every_plane() {
    let tmp = tempdir();
    let model = tmp.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    package(&model, Modality::T1w);
    for plane in [Plane::Axial, Plane::Sagittal, Plane::Oblique] {
        let label = format!("{plane:?}");
        let grid = acquisition_grid(plane, [1.5; 3], [105.0, 105.0, 90.0], BALL_CENTRE).unwrap();
        // The model grid is centred on the head foreground, which the blob does not change:
        // put the blob exactly on feature voxel (d 2, h 3, w 4) = model voxel (32, 24, 16).
        let model_grid = recipe().apply(&[&phantom(&grid, None)]).unwrap().grid;
        let blob = model_grid.voxel_to_world([32.0, 24.0, 16.0]);
        let volume = phantom(&grid, Some(blob));
        let series = tmp.path().join(format!("dicom-{label}"));
        write_series(&volume, &SeriesInfo::new(3), &DicomOptions::default(), &series).unwrap();
        let out = tmp.path().join(format!("out-{label}"));
        let summary = infer(&series, &model, &out, &["--explain", "gradcam"]);
        let hotspot = summary.hotspot_lps.expect("a suspected study reports a hotspot");
        let error = distance(hotspot, blob);
        assert!(
            error <= 1.5 * 3f64.sqrt(),
            "{label}: hotspot {hotspot:?}, blob {blob:?}: {error:.2} mm"
        );
        let expected_slice = volume.world_to_voxel(blob)[2].round() as usize;
        let slice = summary.hotspot_slice.expect("hotspot slice");
        assert!(slice.abs_diff(expected_slice) <= 1, "{label}: slice {slice}");
        assert!(summary.suspected && summary.probability > 0.5, "{label}: {summary:?}");
        assert_eq!(summary.sc_files.len(), 1, "{label}: one multi-frame SC");
        assert!(out.join("preview.png").is_file());
        dciodvfy(&out.join(&summary.sc_files[0]));
        dciodvfy(&out.join("sr/SR.dcm"));
        for key in [
            "probability",
            "label",
            "fold_probabilities",
            "hotspot_lps",
            "hotspot_slice",
            "model",
            "sc_files",
            "sr_file",
            "timings_ms",
        ] {
            let json: serde_json::Value =
                serde_json::from_slice(&std::fs::read(out.join("result.json")).unwrap()).unwrap();
            assert!(json.get(key).is_some(), "{label}: result.json lacks {key}");
        }
    }
}

/// Grad-CAM++ and occlusion find the same blob (occlusion at its coarser resolution).
#[test]
fn other_explanations_find_the_blob() {
    let tmp = tempdir();
    let model = tmp.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    package(&model, Modality::T1w);
    let grid = acquisition_grid(Plane::Axial, [1.5; 3], [105.0, 105.0, 90.0], BALL_CENTRE).unwrap();
    let model_grid = recipe().apply(&[&phantom(&grid, None)]).unwrap().grid;
    let blob = model_grid.voxel_to_world([32.0, 24.0, 16.0]);
    let series = tmp.path().join("dicom");
    write_series(
        &phantom(&grid, Some(blob)),
        &SeriesInfo::new(3),
        &DicomOptions::default(),
        &series,
    )
    .unwrap();
    // Occlusion cubes of 8 model voxels (16 mm) every 4: the peak is within half a cube.
    for (method, tolerance_mm) in [("gradcampp", 1.5 * 3f64.sqrt()), ("occlusion", 8.0 * 3f64.sqrt())] {
        let out = tmp.path().join(method);
        let extra = ["--explain", method, "--occlusion-patch", "8", "--occlusion-stride", "4"];
        let summary = infer(&series, &model, &out, &extra);
        let hotspot = summary.hotspot_lps.expect("a suspected study reports a hotspot");
        let error = distance(hotspot, blob);
        assert!(
            error <= tolerance_mm,
            "{method}: hotspot {hotspot:?}, blob {blob:?}: {error:.2} mm"
        );
    }
}

#[test]
fn nifti_input_gives_json_and_preview_only() {
    let tmp = tempdir();
    let model = tmp.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    package(&model, Modality::Flair);
    let grid = acquisition_grid(Plane::Coronal, [1.5; 3], [105.0, 105.0, 90.0], BALL_CENTRE).unwrap();
    let model_grid = recipe().apply(&[&phantom(&grid, None)]).unwrap().grid;
    let blob = model_grid.voxel_to_world([16.0, 32.0, 24.0]);
    let path = tmp.path().join("flair.nii.gz");
    nifti::write(&path, &phantom(&grid, Some(blob)), DataType::I16).unwrap();
    let out = tmp.path().join("out");
    let summary = infer(&path, &model, &out, &[]);
    let hotspot = summary.hotspot_lps.expect("a suspected study reports a hotspot");
    let error = distance(hotspot, blob);
    assert!(error <= 1.5 * 3f64.sqrt(), "hotspot {hotspot:?}, blob {blob:?}");
    assert!(summary.sc_files.is_empty() && summary.sr_file.is_none());
    assert!(out.join("preview.png").is_file() && !out.join("sr").exists());
}

/// Every tensor zero (batch-norm variances 1) but `fc.bias` = [0, ln(p / (1 − p))]: each fold's
/// softmax of class fcd is `p` for any input.
fn constant_weights(arch: &ArchSpec, p: f64) -> Weights {
    let mut map = std::collections::BTreeMap::new();
    for (name, shape) in parameter_shapes(arch) {
        let mut t = ArrayD::<f32>::zeros(shape);
        if name.ends_with("running_var") {
            t.fill(1.0);
        } else if name == "fc.bias" {
            t[[1].as_slice()] = (p / (1.0 - p)).ln() as f32;
        }
        map.insert(name, t);
    }
    Weights(map)
}

/// A package of two constant folds (0.7 and 0.9: raw mean 0.8) with `calibration`.
fn constant_package(dir: &Path, calibration: Option<Calibration>) {
    std::fs::create_dir_all(dir).unwrap();
    let (arch, r) = (arch(), recipe());
    let mut names = Vec::new();
    for (k, p) in [0.7, 0.9].into_iter().enumerate() {
        let name = format!("fold{}.onnx", k + 1);
        write_onnx(
            &arch,
            &constant_weights(&arch, p),
            [r.shape[2], r.shape[1], r.shape[0]],
            &dir.join(&name),
        )
        .unwrap();
        names.push(name);
    }
    let mut m = Manifest::fcd_classifier("constant", "test", vec![Modality::Flair], r, arch, names);
    m.calibration = calibration;
    m.save(dir).unwrap();
}

/// The node thresholds the calibrated probability: raw mean 0.8 through Platt a = 0.5, b = −1
/// is σ(0.5·ln 4 − 1) = 0.4239, below the threshold 0.5 that the raw mean passes.
#[test]
fn a_calibrated_package_reports_and_thresholds_the_calibrated_probability() {
    let tmp = tempdir();
    let grid = acquisition_grid(Plane::Axial, [3.0; 3], [105.0, 105.0, 90.0], BALL_CENTRE).unwrap();
    let nii = tmp.path().join("flair.nii.gz");
    nifti::write(&nii, &phantom(&grid, None), DataType::I16).unwrap();

    let raw = tmp.path().join("raw");
    constant_package(&raw, None);
    let summary = infer(&nii, &raw, &tmp.path().join("out-raw"), &[]);
    assert!((summary.probability - 0.8).abs() < 1e-6, "{summary:?}");
    assert!(
        summary.suspected && summary.probability_uncalibrated.is_none(),
        "{summary:?}"
    );

    let calibrated = tmp.path().join("calibrated");
    constant_package(
        &calibrated,
        Some(Calibration {
            method: CalibrationMethod::Platt,
            a: 0.5,
            b: -1.0,
            fitted_on: "test".into(),
        }),
    );
    let out = tmp.path().join("out-calibrated");
    let summary = infer(&nii, &calibrated, &out, &[]);
    let expected = 1.0 / (1.0 + (1.0 - 0.5 * 4f64.ln()).exp());
    assert!(
        (summary.probability - expected).abs() < 1e-6,
        "{summary:?} vs {expected}"
    );
    let uncalibrated = summary.probability_uncalibrated.expect("raw mean kept beside it");
    assert!((uncalibrated - 0.8).abs() < 1e-6, "{summary:?}");
    assert!(
        !summary.suspected && summary.label.contains("not suspected"),
        "{summary:?}"
    );
    assert_eq!(summary.threshold, 0.5);
    assert_eq!(summary.fold_probabilities.len(), 2);
    assert!((summary.fold_probabilities[1] - 0.9).abs() < 1e-6, "folds stay raw");
    let json = std::fs::read_to_string(out.join("result.json")).unwrap();
    assert!(json.contains("\"probability_uncalibrated\""), "{json}");
}

#[test]
fn bad_input_fails_with_a_clear_message() {
    let tmp = tempdir();
    let model = tmp.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    package(&model, Modality::Flair);
    let grid = acquisition_grid(Plane::Axial, [1.5; 3], [105.0, 105.0, 90.0], BALL_CENTRE).unwrap();
    let nii = tmp.path().join("x.nii.gz");
    nifti::write(&nii, &phantom(&grid, None), DataType::I16).unwrap();
    let series = tmp.path().join("t1");
    write_series(
        &phantom(&grid, None),
        &SeriesInfo::new(3),
        &DicomOptions::default(),
        &series,
    )
    .unwrap();
    let bad_config = tmp.path().join("bad.toml");
    std::fs::write(
        &bad_config,
        "[runtime]\nonnxruntime = \"/nonexistent/libonnxruntime.so\"\n",
    )
    .unwrap();
    let out = tmp.path().join("out");
    let out = out.to_str().unwrap();
    let (model, nii, series) = (model.to_str().unwrap(), nii.to_str().unwrap(), series.to_str().unwrap());
    let cases: [(Vec<&str>, &str); 5] = [
        (
            vec![nii, "--model", "/nonexistent/model", "--out", out],
            "manifest.toml",
        ),
        // The T1w MPRAGE series does not feed the model's FLAIR channel.
        (vec![series, "--model", model, "--out", out], "model channel FLAIR"),
        (vec![nii, nii, "--model", model, "--out", out], "2 NIfTI file(s) given"),
        (
            vec![series, "--model", model, "--out", out, "--series", "1.2.3.4"],
            "series 1.2.3.4 not found",
        ),
        (
            vec![
                nii,
                "--model",
                model,
                "--out",
                out,
                "--config",
                bad_config.to_str().unwrap(),
            ],
            "scripts/setup.sh",
        ),
    ];
    for (args, needle) in cases {
        let result = fcdnode().arg("infer").args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(
            !result.status.success() && result.status.code() != Some(101),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains(needle), "{args:?}: expected {needle:?} in {stderr}");
    }
}
