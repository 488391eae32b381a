//! ModelInput → Prediction: every fold graph of a model package runs in ONNX Runtime (sessions
//! built once, CUDA when present); the probability is the mean of the fold softmaxes, through
//! the package's `[calibration]` when it has one. The classifier weights are read from each
//! graph so the CAM can be computed from `features`. [`runtime`] finds and loads ONNX Runtime.

pub mod runtime;

use std::path::{Path, PathBuf};

use ndarray::{Array2, Array3, Array4, Axis, Ix5};
use prost::Message;

use crate::explain::cam::{self, CamError};
use crate::package::arch::Pooling;
use crate::package::manifest::{Manifest, ModelPackage};
use crate::package::onnx::proto::{GraphProto, ModelProto, NodeProto, TensorProto};
use crate::preprocess::ModelInput;
pub use runtime::{Device, RuntimeError};

/// Why inference failed; variants name the graph or the mismatch.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InferError {
    /// ONNX Runtime could not load, build a session or run.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A fold graph could not be read or decoded.
    #[error("{path}: cannot read ONNX graph: {reason}")]
    Graph { path: PathBuf, reason: String },
    /// The input tensor does not match what the manifest prescribes.
    #[error("input tensor has shape {found:?}; the model expects {expected:?} ([channel, depth, height, width])")]
    InputShape { expected: Vec<usize>, found: Vec<usize> },
    /// The graph's outputs contradict the manifest.
    #[error("{path}: {rule}")]
    Output { path: PathBuf, rule: String },
    /// CAM computation failed.
    #[error(transparent)]
    Cam(#[from] CamError),
}

/// Which explanation map to compute from forward outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CamMethod {
    /// Grad-CAM at the global-pooling input (exact from forward outputs).
    #[default]
    Gradcam,
    /// Grad-CAM++ in closed form.
    Gradcampp,
}

struct Fold {
    path: PathBuf,
    session: ort::session::Session,
    /// `[classes, channels]` weight of the linear head.
    fc_weight: Array2<f32>,
}

/// A loaded model package: manifest and one ONNX Runtime session per fold.
pub struct Ensemble {
    manifest: Manifest,
    package_sha256: String,
    folds: Vec<Fold>,
    device: Device,
}

/// What the ensemble says about one input.
#[derive(Clone, Debug)]
pub struct Prediction {
    /// Probability of the positive class: the mean over folds of its softmax, through the
    /// manifest's `[calibration]` when it has one (the threshold was chosen on that scale).
    pub probability: f64,
    /// The mean over folds of the softmax before calibration (equal to `probability` for a
    /// package without `[calibration]`).
    pub probability_uncalibrated: f64,
    /// Each fold's softmax probability, uncalibrated.
    pub fold_probabilities: Vec<f64>,
    /// `probability ≥ threshold`.
    pub suspected: bool,
    /// Folds whose own probability, calibrated like the ensemble's, reached the threshold.
    pub votes: usize,
    /// Per fold, `features` of the single input `[channel, depth, height, width]`.
    pub features: Vec<Array4<f32>>,
}

impl Ensemble {
    /// Builds one session per fold graph (ONNX Runtime must be [`runtime::init`]ialised) and
    /// reads each graph's classifier weights.
    pub fn load(package: &ModelPackage, device: Device, threads: usize) -> Result<Self, InferError> {
        let mut folds = Vec::new();
        let mut used = Device::Cpu;
        for path in &package.graphs {
            let fc_weight = classifier_weight(path, &package.manifest)?;
            let (session, on) = runtime::session_on(path, device, threads)?;
            used = on;
            folds.push(Fold {
                path: path.clone(),
                session,
                fc_weight,
            });
        }
        Ok(Self {
            manifest: package.manifest.clone(),
            package_sha256: package.sha256.clone(),
            folds,
            device: used,
        })
    }

    /// SHA-256 of the loaded package (see [`ModelPackage::sha256`]).
    pub fn package_sha256(&self) -> &str {
        &self.package_sha256
    }

    /// The manifest of the loaded package.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Where the sessions run.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Runs every fold on one preprocessed input.
    pub fn predict(&mut self, input: &ModelInput) -> Result<Prediction, InferError> {
        let r = &self.manifest.preprocess;
        let expected = vec![self.manifest.channels.len(), r.shape[2], r.shape[1], r.shape[0]];
        if input.tensor.shape() != expected.as_slice() {
            return Err(InferError::InputShape {
                expected,
                found: input.tensor.shape().to_vec(),
            });
        }
        let batch = input
            .tensor
            .clone()
            .insert_axis(Axis(0))
            .into_dimensionality::<Ix5>()
            .map_err(|_| InferError::InputShape {
                expected: vec![],
                found: input.tensor.shape().to_vec(),
            })?;
        let positive = self.manifest.positive_class;
        let names = &self.manifest.outputs;
        let mut fold_probabilities = Vec::new();
        let mut features = Vec::new();
        for fold in &mut self.folds {
            let out = runtime::run_named(&mut fold.session, &batch, &names.logits, &names.features)?;
            let logits = out.logits.row(0).to_owned();
            if logits.len() != self.manifest.classes.len() {
                return Err(InferError::Output {
                    path: fold.path.clone(),
                    rule: format!("{} logits for {} classes", logits.len(), self.manifest.classes.len()),
                });
            }
            fold_probabilities.push(softmax(logits.as_slice().unwrap_or(&[]))[positive]);
            features.push(out.features.index_axis_move(Axis(0), 0));
        }
        let raw = fold_probabilities.iter().sum::<f64>() / fold_probabilities.len().max(1) as f64;
        let probability = self.manifest.calibrate(raw);
        let threshold = self.manifest.threshold;
        Ok(Prediction {
            probability,
            probability_uncalibrated: raw,
            suspected: probability >= threshold,
            votes: fold_probabilities
                .iter()
                .filter(|&&p| self.manifest.calibrate(p) >= threshold)
                .count(),
            fold_probabilities,
            features,
        })
    }

    /// The explanation map for the positive class on the feature grid `[depth, height, width]`:
    /// the mean of the folds' maps (each computed with its own classifier weights).
    pub fn cam(&self, prediction: &Prediction, method: CamMethod) -> Result<Array3<f32>, InferError> {
        let class = self.manifest.positive_class;
        let mut sum: Option<Array3<f32>> = None;
        for (fold, features) in self.folds.iter().zip(&prediction.features) {
            let map = match method {
                CamMethod::Gradcam => cam::grad_cam(features.view(), &fold.fc_weight, class)?,
                CamMethod::Gradcampp => cam::grad_cam_pp(
                    features.view(),
                    &fold.fc_weight,
                    class,
                    self.manifest.architecture.pooling,
                )?,
            };
            sum = Some(match sum {
                Some(s) => s + map,
                None => map,
            });
        }
        let n = self.folds.len().max(1) as f32;
        Ok(sum.map(|s| s / n).unwrap_or_else(|| Array3::zeros((0, 0, 0))))
    }
}

impl Ensemble {
    /// Occlusion sensitivity on the model grid `[depth, height, width]`: a cube of `patch`
    /// voxels slides with `stride`; inside it the input is set to 0 (the normalised background
    /// value) and the drop of the ensemble probability is credited to every voxel the cube
    /// covered, averaged over the cubes that covered it. Slower than a CAM (one ensemble run
    /// per position) but independent of the architecture.
    pub fn occlusion(&mut self, input: &ModelInput, patch: usize, stride: usize) -> Result<Array3<f32>, InferError> {
        let (_, d, h, w) = input.tensor.dim();
        let (patch, stride) = (patch.max(1), stride.max(1));
        let base = self.predict(input)?.probability;
        let mut sum = Array3::<f32>::zeros((d, h, w));
        let mut count = Array3::<f32>::zeros((d, h, w));
        let starts = |n: usize| {
            let last = n.saturating_sub(patch);
            let mut v: Vec<usize> = (0..=last).step_by(stride).collect();
            if v.last() != Some(&last) {
                v.push(last);
            }
            v
        };
        for z in starts(d) {
            for y in starts(h) {
                for x in starts(w) {
                    let region = ndarray::s![z..(z + patch).min(d), y..(y + patch).min(h), x..(x + patch).min(w)];
                    let mut occluded = input.clone();
                    for mut channel in occluded.tensor.axis_iter_mut(Axis(0)) {
                        channel.slice_mut(region).fill(0.0);
                    }
                    let drop = (base - self.predict(&occluded)?.probability) as f32;
                    sum.slice_mut(region).map_inplace(|v| *v += drop);
                    count.slice_mut(region).map_inplace(|v| *v += 1.0);
                }
            }
        }
        Ok(ndarray::Zip::from(&sum)
            .and(&count)
            .map_collect(|s, c| if *c > 0.0 { s / c } else { 0.0 }))
    }
}

/// Softmax in f64 (stable: the maximum is subtracted first).
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = logits.iter().map(|&l| f64::from(l - max).exp()).collect();
    let total: f64 = exps.iter().sum();
    exps.iter().map(|e| e / total).collect()
}

/// The `[classes, channels]` weight of the Gemm that produces the logits output.
fn classifier_weight(path: &Path, manifest: &Manifest) -> Result<Array2<f32>, InferError> {
    let graph_err = |reason: String| InferError::Graph {
        path: path.to_owned(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| graph_err(e.to_string()))?;
    let model = ModelProto::decode(bytes.as_slice()).map_err(|e| graph_err(format!("not an ONNX model: {e}")))?;
    let graph = model.graph.ok_or_else(|| graph_err("no graph".into()))?;
    let output = |rule: String| InferError::Output {
        path: path.to_owned(),
        rule,
    };
    let w = match manifest.architecture.pooling {
        Pooling::Mean => {
            let gemm = graph
                .node
                .iter()
                .find(|n| n.output.contains(&manifest.outputs.logits))
                .filter(|n| n.op_type == "Gemm")
                .ok_or_else(|| {
                    output(format!(
                        "output `{}` is not produced by a Gemm (linear head)",
                        manifest.outputs.logits
                    ))
                })?;
            let trans_b = gemm
                .attribute
                .iter()
                .find(|a| a.name == "transB")
                .and_then(|a| a.i)
                .unwrap_or(0);
            let w = head_weight(&graph, gemm, &output)?;
            if trans_b == 1 { w } else { w.reversed_axes() }
        }
        // The classifier as a 1×1×1 convolution over `features`.
        Pooling::Lse { .. } => {
            let conv = graph
                .node
                .iter()
                .find(|n| n.op_type == "Conv" && n.input.first() == Some(&manifest.outputs.features))
                .ok_or_else(|| {
                    output(format!(
                        "no Conv reads `{}` (the log-mean-exp head's classifier)",
                        manifest.outputs.features
                    ))
                })?;
            head_weight(&graph, conv, &output)?
        }
    };
    let (classes, channels) = w.dim();
    if classes != manifest.classes.len() || channels != manifest.architecture.feature_channels() {
        return Err(output(format!(
            "head weight is {classes}×{channels}; the manifest needs {}×{}",
            manifest.classes.len(),
            manifest.architecture.feature_channels()
        )));
    }
    Ok(w.as_standard_layout().into_owned())
}

/// The classifier weight of the head node `node` (its second input, an initializer) as a matrix.
fn head_weight(
    graph: &GraphProto,
    node: &NodeProto,
    output: &dyn Fn(String) -> InferError,
) -> Result<Array2<f32>, InferError> {
    let weight_name = node
        .input
        .get(1)
        .ok_or_else(|| output(format!("the head {} has no weight input", node.op_type)))?;
    let tensor = graph
        .initializer
        .iter()
        .find(|t| &t.name == weight_name)
        .ok_or_else(|| output(format!("head weight `{weight_name}` is not an initializer")))?;
    tensor_f32(tensor).ok_or_else(|| output(format!("head weight `{weight_name}` is not a 2D float tensor")))
}

/// A 2D float initializer (raw little-endian bytes or `float_data`); a `[rows, cols, 1, 1, 1]`
/// convolution kernel counts as the matrix it holds.
fn tensor_f32(t: &TensorProto) -> Option<Array2<f32>> {
    const FLOAT: i32 = 1;
    let matrix = t.dims.len() == 2 || (t.dims.len() == 5 && t.dims[2..] == [1, 1, 1]);
    if t.data_type != FLOAT || !matrix {
        return None;
    }
    let values: Vec<f32> = if t.raw_data.is_empty() {
        t.float_data.clone()
    } else {
        t.raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let shape = (usize::try_from(t.dims[0]).ok()?, usize::try_from(t.dims[1]).ok()?);
    Array2::from_shape_vec(shape, values).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::arch::ArchSpec;
    use crate::package::manifest::Modality;
    use crate::package::onnx::write_onnx;
    use crate::package::weights::Weights;
    use crate::preprocess::{Normalisation, Recipe};

    fn package(dir: &Path, folds: usize) -> ModelPackage {
        package_with(dir, folds, Pooling::Mean)
    }

    fn package_with(dir: &Path, folds: usize, pooling: Pooling) -> ModelPackage {
        let mut arch = ArchSpec::from_name("resnet10").unwrap();
        arch.width_mult = 0.125;
        arch.pooling = pooling;
        let recipe = Recipe {
            voxel_mm: [4.0; 3],
            shape: [20, 24, 16],
            normalisation: Normalisation::ZscoreForeground,
        };
        let mut names = Vec::new();
        for f in 0..folds {
            let name = format!("fold{f}.onnx");
            write_onnx(
                &arch,
                &Weights::random(&arch, f as u64 + 1),
                [16, 24, 20],
                &dir.join(&name),
            )
            .unwrap();
            names.push(name);
        }
        let manifest = Manifest::fcd_classifier("test", "0", vec![Modality::Flair], recipe, arch, names);
        manifest.save(dir).unwrap();
        ModelPackage::load(dir).unwrap()
    }

    fn ready() {
        let lib = runtime::find_library(None).expect("ONNX Runtime missing: run scripts/setup.sh");
        runtime::init(&lib).unwrap();
    }

    #[test]
    fn ensemble_probability_is_the_mean_of_folds_and_cam_matches_each_fold() {
        for pooling in [Pooling::Mean, Pooling::Lse { sharpness: 8.0 }] {
            ensemble_matches_its_folds(pooling);
        }
    }

    fn ensemble_matches_its_folds(pooling: Pooling) {
        ready();
        let dir = tempfile::tempdir().unwrap();
        let p = package_with(dir.path(), 3, pooling);
        let mut e = Ensemble::load(&p, Device::Cpu, 1).unwrap();
        let tensor = Array4::from_shape_fn((1, 16, 24, 20), |(_, d, h, w)| {
            ((d * 7 + h * 3 + w) % 11) as f32 / 5.0 - 1.0
        });
        let input = ModelInput {
            tensor,
            grid: p.manifest.preprocess.grid([0.0; 3]).unwrap(),
        };
        let pred = e.predict(&input).unwrap();
        assert_eq!(pred.fold_probabilities.len(), 3);
        let mean = pred.fold_probabilities.iter().sum::<f64>() / 3.0;
        assert!((pred.probability - mean).abs() < 1e-12);
        assert_eq!(pred.suspected, pred.probability >= 0.5);
        let map = e.cam(&pred, CamMethod::Gradcam).unwrap();
        assert_eq!(map.dim(), (2, 3, 3), "feature grid of 16×24×20 at stride 8");
        // Averaging fold CAMs: each fold's own head weights.
        let map_pp = e.cam(&pred, CamMethod::Gradcampp).unwrap();
        let (mut expected, mut expected_pp) = (Array3::<f32>::zeros((2, 3, 3)), Array3::<f32>::zeros((2, 3, 3)));
        for (fold, f) in e.folds.iter().zip(&pred.features) {
            expected = expected + cam::grad_cam(f.view(), &fold.fc_weight, 1).unwrap();
            expected_pp = expected_pp + cam::grad_cam_pp(f.view(), &fold.fc_weight, 1, pooling).unwrap();
        }
        let max_diff = |a: &Array3<f32>, b: Array3<f32>| (a - &b).mapv(f32::abs).fold(0.0f32, |m, &x| m.max(x));
        assert!(max_diff(&map, expected / 3.0) < 1e-6, "{pooling}");
        assert!(max_diff(&map_pp, expected_pp / 3.0) < 1e-6, "{pooling}");
    }

    #[test]
    fn head_weight_comes_from_the_graph() {
        for pooling in [Pooling::Mean, Pooling::Lse { sharpness: 8.0 }] {
            let dir = tempfile::tempdir().unwrap();
            let p = package_with(dir.path(), 1, pooling);
            let w = classifier_weight(&p.graphs[0], &p.manifest).unwrap();
            let weights = Weights::random(&p.manifest.architecture, 1);
            assert_eq!(w.into_dyn(), weights.0["fc.weight"], "{pooling}");
        }
    }

    #[test]
    fn mismatches_are_reported() {
        ready();
        let dir = tempfile::tempdir().unwrap();
        let p = package(dir.path(), 1);
        let mut e = Ensemble::load(&p, Device::Cpu, 1).unwrap();
        let input = ModelInput {
            tensor: Array4::zeros((1, 8, 8, 8)),
            grid: p.manifest.preprocess.grid([0.0; 3]).unwrap(),
        };
        assert!(matches!(e.predict(&input), Err(InferError::InputShape { .. })));
        let mut wrong = p.manifest.clone();
        wrong.classes = vec!["a".into(), "b".into(), "c".into()];
        wrong.architecture.num_classes = 3;
        let err = classifier_weight(&p.graphs[0], &wrong).unwrap_err().to_string();
        assert!(err.contains("fold0.onnx") && err.contains("head weight is 2×"), "{err}");
        std::fs::write(&p.graphs[0], b"garbage").unwrap();
        assert!(
            classifier_weight(&p.graphs[0], &p.manifest)
                .unwrap_err()
                .to_string()
                .contains("not an ONNX model")
        );
    }

    #[test]
    fn occlusion_finds_what_the_model_looks_at() {
        ready();
        let dir = tempfile::tempdir().unwrap();
        let p = package(dir.path(), 1);
        let mut e = Ensemble::load(&p, Device::Cpu, 1).unwrap();
        let tensor = Array4::from_shape_fn((1, 16, 24, 20), |(_, d, h, w)| {
            ((d * 7 + h * 3 + w) % 11) as f32 / 5.0 - 1.0
        });
        let input = ModelInput {
            tensor,
            grid: p.manifest.preprocess.grid([0.0; 3]).unwrap(),
        };
        let map = e.occlusion(&input, 8, 8).unwrap();
        assert_eq!(map.dim(), (16, 24, 20));
        // Each voxel holds the probability drop of the cube(s) covering it; recompute one.
        let base = e.predict(&input).unwrap().probability;
        let mut occluded = input.clone();
        occluded.tensor.slice_mut(ndarray::s![.., 0..8, 0..8, 0..8]).fill(0.0);
        let drop = (base - e.predict(&occluded).unwrap().probability) as f32;
        assert!((map[[0, 0, 0]] - drop).abs() < 1e-5, "{} vs {drop}", map[[0, 0, 0]]);
    }

    #[test]
    fn softmax_is_stable() {
        let p = softmax(&[1000.0, 1001.0]);
        assert!((p[1] - 1.0 / (1.0 + (-1.0f64).exp())).abs() < 1e-12);
    }
}
