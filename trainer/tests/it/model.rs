//! The burn 3D ResNets against the architecture spec, the weight format, MedicalNet checkpoints
//! (written by `fixtures/make_medicalnet_checkpoint.py` in PyTorch's zip format, no PyTorch
//! needed), the freeze policy and Grad-CAM = CAM (DESIGN §4). CPU (`flex`) backend.

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use fcdnode::package::arch::{ArchSpec, Layout, Pooling};
use fcdnode::package::weights::{Weights, parameter_shapes};
use fcdnode_trainer::model::{
    MedicalNetError, ModelError, Part, ResNet3d, ResNet3dConfig, Tap, TrainLayers, grad_cam, import_medicalnet,
    read_medicalnet,
};

fn small(name: &str) -> ArchSpec {
    let mut arch = ArchSpec::from_name(name).unwrap();
    arch.width_mult = 0.125;
    arch
}

fn random_input(shape: [usize; 5], device: &Device) -> Tensor<5> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap()
}

#[test]
fn forward_shapes_match_the_arch_spec() {
    let device = Device::flex();
    device.seed(1);
    let input_shape = [24, 28, 20];
    let mut cases: Vec<ArchSpec> = ["resnet10", "resnet18", "resnet34", "resnet50"]
        .into_iter()
        .map(small)
        .collect();
    let mut strided = small("resnet18");
    strided.layout = Layout::Strided;
    strided.stem_stride = [1, 2, 2];
    strided.in_channels = 2;
    strided.num_classes = 3;
    cases.push(strided);
    for arch in cases {
        let model = ResNet3d::new(&arch, &device).unwrap();
        let input = random_input(
            [1, arch.in_channels, input_shape[0], input_shape[1], input_shape[2]],
            &device,
        );
        let (logits, features) = model.forward(input);
        let [fd, fh, fw] = arch.feature_shape(input_shape);
        assert_eq!(features.dims(), [1, arch.feature_channels(), fd, fh, fw], "{arch:?}");
        assert_eq!(logits.dims(), [1, arch.num_classes], "{arch:?}");
        // Every parameter the spec names is there with its shape.
        let weights = model.to_weights().unwrap();
        let shapes = parameter_shapes(&arch);
        assert_eq!(weights.0.keys().collect::<Vec<_>>(), shapes.keys().collect::<Vec<_>>());
        weights.check(&arch).unwrap();
    }
}

#[test]
fn logits_are_the_linear_head_pooled_over_the_features() {
    let device = Device::flex();
    device.seed(2);
    for pooling in [Pooling::Mean, Pooling::Lse { sharpness: 4.0 }] {
        let arch = ArchSpec {
            pooling,
            ..small("resnet10")
        };
        let model = ResNet3d::new(&arch, &device)
            .unwrap()
            .load_weights(&Weights::random(&arch, 2))
            .unwrap();
        let (logits, features) = model.forward(random_input([2, 1, 24, 28, 20], &device));
        let [b, c, d, h, w] = features.dims();
        let z = d * h * w;
        let feats = values(features);
        let weights = model.to_weights().unwrap();
        let (fc_w, fc_b) = (&weights.0["fc.weight"], &weights.0["fc.bias"]);
        let logits = values(logits);
        for s in 0..b {
            for class in 0..arch.num_classes {
                // The classifier at every voxel, in f64.
                let scores: Vec<f64> = (0..z)
                    .map(|v| {
                        let sum: f64 = (0..c)
                            .map(|k| f64::from(fc_w[[class, k]]) * f64::from(feats[(s * c + k) * z + v]))
                            .sum();
                        sum + f64::from(fc_b[[class]])
                    })
                    .collect();
                let expected = match pooling {
                    Pooling::Mean => scores.iter().sum::<f64>() / z as f64,
                    Pooling::Lse { sharpness: r } => {
                        (scores.iter().map(|m| (r * m).exp()).sum::<f64>() / z as f64).ln() / r
                    }
                };
                let got = f64::from(logits[s * arch.num_classes + class]);
                assert!(
                    (got - expected).abs() <= 1e-5 * expected.abs().max(1.0),
                    "{pooling}: {got} vs {expected}"
                );
            }
        }
    }
}

#[test]
fn weights_round_trip_exactly() {
    let device = Device::flex();
    for name in ["resnet18", "resnet50"] {
        let arch = small(name);
        let weights = Weights::random(&arch, 3);
        let model = ResNet3d::new(&arch, &device).unwrap().load_weights(&weights).unwrap();
        assert_eq!(model.to_weights().unwrap(), weights, "{name}");
        // Also on an autodiff device (training).
        let model = ResNet3d::new(&arch, &device.clone().autodiff())
            .unwrap()
            .load_weights(&weights)
            .unwrap();
        assert_eq!(model.to_weights().unwrap(), weights, "{name} (autodiff)");
    }
    // A wrong shape is refused, naming the tensor.
    let arch = small("resnet10");
    let mut weights = Weights::random(&arch, 4);
    weights
        .0
        .insert("layer2.0.bn1.running_var".into(), ndarray::ArrayD::zeros(vec![3]));
    let err = ResNet3d::new(&arch, &device)
        .unwrap()
        .load_weights(&weights)
        .unwrap_err();
    let text = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(
        text.contains("layer2.0.bn1.running_var") && text.contains("[3]"),
        "{text}"
    );
}

// ---- MedicalNet import ---------------------------------------------------------------------

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("FCDNODE_PYTHON") {
        return p.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/python");
    if venv.exists() { venv } else { "python3".into() }
}

/// Writes a MedicalNet-style checkpoint with the fixture script (stdlib Python only).
fn make_checkpoint(dir: &Path, file: &str, args: &[&str]) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make_medicalnet_checkpoint.py");
    let out = dir.join(file);
    let status = Command::new(python())
        .arg(&script)
        .arg(&out)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {} (set FCDNODE_PYTHON): {e}", python().display()));
    assert!(status.success(), "{} failed: {status}", script.display());
    out
}

/// The fixture's value formula (see the script's docstring).
fn fixture_value(name: &str, i: usize) -> f32 {
    let s: usize = name.bytes().map(usize::from).sum();
    if name.ends_with("running_var") {
        0.5 + ((13 * i + s) % 256) as f32 / 256.0
    } else {
        (((31 * i + 17 * name.len() + s) % 1024) as f32 - 512.0) / 1024.0
    }
}

#[test]
fn medicalnet_checkpoint_imports_with_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    for (name, depth) in [("resnet10", "10"), ("resnet50", "50")] {
        let path = make_checkpoint(dir.path(), &format!("{name}.pth"), &["--depth", depth]);
        let arch = small(name);
        let (weights, report) = read_medicalnet(&path, &arch).unwrap();
        // Values are the fixture's, tensor by tensor.
        for (key, array) in &weights.0 {
            let expected: Vec<f32> = (0..array.len()).map(|i| fixture_value(key, i)).collect();
            assert_eq!(array.iter().copied().collect::<Vec<_>>(), expected, "{key}");
        }
        assert_eq!(report.missing, ["fc.bias", "fc.weight"], "{report}");
        assert!(report.missing_backbone().is_empty());
        assert_eq!(report.loaded.len(), parameter_shapes(&arch).len() - 2);
        // conv_seg: transposed conv weight + bias, two batch norms (4 each), two convs.
        assert_eq!(report.unexpected.len(), 12, "{report}");
        assert!(report.unexpected.iter().all(|k| k.starts_with("conv_seg.")));
        let batch_norms = parameter_shapes(&arch)
            .keys()
            .filter(|k| k.ends_with("running_var"))
            .count();
        assert_eq!(report.ignored.len(), batch_norms + 2, "{report}");

        // Into a network: the backbone is the checkpoint's, the head stays as initialised.
        let model = ResNet3d::new(&arch, &device).unwrap();
        let fresh_fc = model.to_weights().unwrap().0["fc.weight"].clone();
        let (model, report2) = import_medicalnet(model, &path).unwrap();
        assert_eq!(report2, report);
        let loaded = model.to_weights().unwrap();
        for (key, array) in &weights.0 {
            assert_eq!(&loaded.0[key], array, "{key}");
        }
        assert_eq!(loaded.0["fc.weight"], fresh_fc);
        let (logits, _) = model.forward(random_input([1, 1, 16, 16, 16], &device));
        assert!(values(logits).iter().all(|v| v.is_finite()));
    }
}

/// Runs the numpy reference forward pass of MedicalNet's `resnet.py` (eval mode).
fn reference(args: &[String]) -> (Vec<f64>, Vec<usize>, Vec<f64>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/medicalnet_reference.py");
    let out = Command::new(python()).arg(&script).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{} failed (needs numpy): {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let floats = |key: &str| -> Vec<f64> {
        json[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let shape = json["features_shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    (floats("logits"), shape, floats("features"))
}

fn assert_close(name: &str, got: &[f32], expected: &[f64]) {
    assert_eq!(got.len(), expected.len(), "{name}");
    let scale = expected.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-6);
    let err = got
        .iter()
        .zip(expected)
        .fold(0f64, |m, (g, e)| m.max((f64::from(*g) - e).abs()));
    assert!(err <= 1e-4 * scale, "{name}: max error {err} vs scale {scale}");
}

#[test]
fn forward_matches_a_numpy_reference_of_medicalnet() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let input = [16, 20, 12];
    let cases = [
        ("resnet10", Layout::Medicalnet, [2, 2, 2]),
        ("resnet18", Layout::Medicalnet, [2, 2, 2]),
        ("resnet50", Layout::Medicalnet, [2, 2, 2]),
        ("resnet18", Layout::Strided, [1, 2, 2]),
    ];
    for (name, layout, stem_stride) in cases {
        let depth = name.trim_start_matches("resnet");
        let mut arch = small(name);
        arch.layout = layout;
        arch.stem_stride = stem_stride;
        let what = format!("{name} {layout:?} stem {stem_stride:?}");
        let checkpoint = make_checkpoint(dir.path(), &format!("{name}.pth"), &["--depth", depth]);
        let (model, _) = import_medicalnet(ResNet3d::new(&arch, &device).unwrap(), &checkpoint).unwrap();
        // The reference's head, from the same value formula.
        let mut head = Weights::default();
        for (key, shape) in parameter_shapes(&arch)
            .into_iter()
            .filter(|(k, _)| k.starts_with("fc."))
        {
            let n = shape.iter().product();
            let values = (0..n).map(|i| fixture_value(&key, i)).collect();
            head.0
                .insert(key, ndarray::ArrayD::from_shape_vec(shape, values).unwrap());
        }
        let (model, report) = model.load_weights_partial(&head).unwrap();
        assert_eq!(report.loaded.len(), 2);
        let n = input.iter().product();
        let x: Vec<f32> = (0..n).map(|i| fixture_value("input", i)).collect();
        let x = Tensor::<5>::from_data(TensorData::new(x, [1, 1, input[0], input[1], input[2]]), &device);
        let (logits, features) = model.forward(x);

        let mut args: Vec<String> = ["--depth", depth, "--layout"].map(String::from).to_vec();
        args.push(format!("{layout:?}").to_lowercase());
        args.push("--stem-stride".into());
        args.extend(stem_stride.map(|s| s.to_string()));
        args.push("--input".into());
        args.extend(input.map(|s| s.to_string()));
        let (ref_logits, ref_shape, ref_features) = reference(&args);
        assert_eq!(features.dims()[1..], ref_shape[..], "{what}");
        assert_close(&format!("{what} features"), &values(features), &ref_features);
        assert_close(&format!("{what} logits"), &values(logits), &ref_logits);
    }
}

#[test]
fn medicalnet_mismatches_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    // Another width: a shape mismatch naming the key and both shapes.
    let wide = make_checkpoint(dir.path(), "wide.pth", &["--width-mult", "0.25"]);
    let err = read_medicalnet(&wide, &small("resnet10")).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, MedicalNetError::Shape { .. }), "{text}");
    assert!(
        text.contains("module.") && text.contains("[16") && text.contains("[8"),
        "{text}"
    );

    // Another depth/shortcut: resnet10 (type B) into resnet18 (type A).
    let r10 = make_checkpoint(dir.path(), "r10.pth", &[]);
    let (_, report) = read_medicalnet(&r10, &small("resnet18")).unwrap();
    assert!(
        report.missing_backbone().contains(&"layer1.1.conv1.weight".to_string()),
        "{report}"
    );
    assert!(
        report.unexpected.contains(&"layer2.0.downsample.0.weight".to_string()),
        "{report}"
    );
    let model = ResNet3d::new(&small("resnet18"), &device).unwrap();
    let err = import_medicalnet(model, &r10).unwrap_err();
    assert!(matches!(err, MedicalNetError::MissingBackbone { .. }), "{err}");
    assert!(err.to_string().contains("layer1.1."), "{err}");

    // Not a checkpoint at all.
    let junk = dir.path().join("junk.pth");
    std::fs::write(&junk, b"not a checkpoint").unwrap();
    assert!(matches!(
        read_medicalnet(&junk, &small("resnet10")),
        Err(MedicalNetError::Open { .. })
    ));
}

// ---- freeze policy ---------------------------------------------------------------------------

#[test]
fn train_layers_parse() {
    assert_eq!("all".parse::<TrainLayers>().unwrap(), TrainLayers::All);
    assert_eq!("layer4,fc".parse::<TrainLayers>().unwrap(), TrainLayers::paper());
    assert_eq!(
        "layer3+".parse::<TrainLayers>().unwrap(),
        TrainLayers::From(Part::Layer3)
    );
    let t: TrainLayers = "layer2+".parse().unwrap();
    assert!(!t.trains(Part::Layer1) && t.trains(Part::Layer2) && t.trains(Part::Fc));
    assert_eq!(TrainLayers::paper().to_string(), "layer4,fc");
    assert!(matches!(
        "layer5".parse::<TrainLayers>(),
        Err(ModelError::UnknownLayer { .. })
    ));
}

#[test]
fn frozen_parameters_stay_put_through_an_adam_step() {
    let device = Device::flex().autodiff();
    device.seed(5);
    let arch = small("resnet10");
    let model = ResNet3dConfig::new(arch.clone())
        .init(&device)
        .unwrap()
        .load_weights(&Weights::random(&arch, 5))
        .unwrap()
        .freeze_except(&TrainLayers::paper());
    let before = model.to_weights().unwrap();
    let (logits, _) = model.forward(random_input([2, 1, 20, 20, 20], &device));
    let loss = logits.powi_scalar(2).mean();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let mut optim = AdamConfig::new().init();
    let model = optim.step(1e-2, model, grads);
    let after = model.to_weights().unwrap();
    for (name, value) in &before.0 {
        let changed = after.0[name] != *value;
        let trainable = name.starts_with("layer4.") || name.starts_with("fc.");
        // Trainable batch norms move their running statistics in the forward pass too.
        assert_eq!(changed, trainable, "{name}: changed = {changed}");
    }
}

// ---- Grad-CAM --------------------------------------------------------------------------------

#[test]
fn grad_cam_at_layer4_equals_the_closed_form_cam() {
    for pooling in [Pooling::Mean, Pooling::Lse { sharpness: 4.0 }] {
        grad_cam_equals_the_closed_form(pooling);
    }
}

/// Grad-CAM by autodiff at `layer4` against ReLU(Σ_k w_ck A_k) / Z, which holds for both
/// poolings (the gradient's voxel weights sum to one).
fn grad_cam_equals_the_closed_form(pooling: Pooling) {
    let device = Device::flex();
    device.seed(6);
    let arch = ArchSpec {
        pooling,
        ..small("resnet18")
    };
    let model = ResNet3d::new(&arch, &device)
        .unwrap()
        .load_weights(&Weights::random(&arch, 6))
        .unwrap();
    let input = random_input([2, 1, 24, 28, 20], &device);
    let (_, features) = model.valid().forward(input.clone());
    let [b, c, d, h, w] = features.dims();
    let z = d * h * w;
    let feats = values(features);
    let fc_w = model.to_weights().unwrap().0["fc.weight"].clone();
    let mut compared = Vec::new();
    for class in 0..arch.num_classes {
        let cam = grad_cam(&model, input.clone(), class, Tap::Layer4).unwrap();
        assert_eq!(cam.cam.dims(), [b, d, h, w]);
        let got = values(cam.cam);
        // Closed form: ReLU(Σ_k w_ck A_k) / Z.
        let mut expected = vec![0f64; b * z];
        for s in 0..b {
            for k in 0..c {
                let wk = f64::from(fc_w[[class, k]]);
                for v in 0..z {
                    expected[s * z + v] += wk * f64::from(feats[(s * c + k) * z + v]);
                }
            }
        }
        let expected: Vec<f64> = expected.into_iter().map(|v| v.max(0.0) / z as f64).collect();
        compared.push((got, expected));
    }
    // Relative to the largest CAM value over the classes (a class whose weighted sum is
    // negative everywhere has an all-zero map).
    let scale = compared
        .iter()
        .flat_map(|(_, e)| e.iter())
        .fold(0f64, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "degenerate CAMs");
    for (class, (got, expected)) in compared.iter().enumerate() {
        let err = got
            .iter()
            .zip(expected)
            .fold(0f64, |m, (g, e)| m.max((f64::from(*g) - e).abs()));
        assert!(
            err <= 1e-4 * scale,
            "{pooling} class {class}: max error {err} vs scale {scale}"
        );
    }
    // Another layer: a map on layer3's grid, never negative.
    let cam = grad_cam(&model, input, 1, Tap::Layer3).unwrap();
    assert_eq!(
        cam.cam.dims(),
        [b, d, h, w],
        "layer3 keeps layer4's grid in the MedicalNet layout"
    );
    assert!(values(cam.cam).iter().all(|v| *v >= 0.0));
    assert!(matches!(
        grad_cam(&model, random_input([1, 1, 8, 8, 8], &device), 2, Tap::Layer4),
        Err(ModelError::ClassOutOfRange { .. })
    ));
}
