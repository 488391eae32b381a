//! Named weight tensors of a 3D ResNet, keyed like MedicalNet's PyTorch `state_dict` (without
//! the `module.` prefix): `conv1.weight`, `layer3.1.bn2.running_var`, `fc.bias`. The trainer
//! fills it, the MedicalNet importer maps checkpoints into it, the ONNX writer reads it.

use std::collections::BTreeMap;

use ndarray::{Array2, ArrayD};

use super::arch::{ArchSpec, Block, Shortcut};

/// Why a weight set does not fit an architecture.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum WeightsError {
    /// A parameter the architecture needs is absent.
    #[error("missing weight tensor {name} (shape {expected:?})")]
    Missing { name: String, expected: Vec<usize> },
    /// A parameter has the wrong shape.
    #[error("weight tensor {name} has shape {found:?}, the architecture needs {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A parameter holds NaN or infinity.
    #[error("weight tensor {name} holds non-finite values")]
    NotFinite { name: String },
}

/// Batch-norm epsilon used everywhere (PyTorch's default, as in MedicalNet).
pub const BN_EPS: f32 = 1e-5;

/// The four tensors of a batch norm named `prefix`: weight (γ), bias (β), running mean, running
/// variance.
pub fn batch_norm_names(prefix: &str) -> [String; 4] {
    ["weight", "bias", "running_mean", "running_var"].map(|p| format!("{prefix}.{p}"))
}

/// Every parameter an architecture needs, with its shape, in a stable order. Convolution
/// weights are `[out, in, kd, kh, kw]`; `fc.weight` is `[classes, feature_channels]`.
pub fn parameter_shapes(arch: &ArchSpec) -> BTreeMap<String, Vec<usize>> {
    let mut shapes = BTreeMap::new();
    let mut conv = |name: String, out: usize, inp: usize, k: usize| {
        shapes.insert(name, vec![out, inp, k, k, k]);
    };
    let stem = arch.stem_channels();
    conv("conv1.weight".into(), stem, arch.in_channels, 7);
    let mut bn = vec![("bn1".to_string(), stem)];
    let mut inplanes = stem;
    for (s, stage) in arch.stages().iter().enumerate() {
        for b in 0..stage.blocks {
            let p = format!("layer{}.{b}", s + 1);
            let planes = stage.planes;
            match arch.block() {
                Block::Basic => {
                    conv(format!("{p}.conv1.weight"), planes, inplanes, 3);
                    conv(format!("{p}.conv2.weight"), planes, planes, 3);
                    bn.extend([(format!("{p}.bn1"), planes), (format!("{p}.bn2"), planes)]);
                }
                Block::Bottleneck => {
                    conv(format!("{p}.conv1.weight"), planes, inplanes, 1);
                    conv(format!("{p}.conv2.weight"), planes, planes, 3);
                    conv(format!("{p}.conv3.weight"), stage.out_channels, planes, 1);
                    bn.extend([
                        (format!("{p}.bn1"), planes),
                        (format!("{p}.bn2"), planes),
                        (format!("{p}.bn3"), stage.out_channels),
                    ]);
                }
            }
            let stride = if b == 0 { stage.stride } else { 1 };
            if needs_downsample(inplanes, stage.out_channels, stride) && arch.shortcut() == Shortcut::B {
                conv(format!("{p}.downsample.0.weight"), stage.out_channels, inplanes, 1);
                bn.push((format!("{p}.downsample.1"), stage.out_channels));
            }
            inplanes = stage.out_channels;
        }
    }
    for (prefix, channels) in bn {
        for name in batch_norm_names(&prefix) {
            shapes.insert(name, vec![channels]);
        }
    }
    shapes.insert("fc.weight".into(), vec![arch.num_classes, arch.feature_channels()]);
    shapes.insert("fc.bias".into(), vec![arch.num_classes]);
    shapes
}

/// Whether a block's shortcut must change shape or width (MedicalNet's `_make_layer` rule).
pub fn needs_downsample(in_channels: usize, out_channels: usize, stride: usize) -> bool {
    stride != 1 || in_channels != out_channels
}

/// Named tensors, checked against an architecture with [`Weights::check`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Weights(pub BTreeMap<String, ArrayD<f32>>);

impl Weights {
    /// The classifier `fc.weight` as a `[classes, feature_channels]` matrix (the CAMs' weights).
    pub fn classifier(&self) -> Result<Array2<f32>, WeightsError> {
        let name = "fc.weight";
        let tensor = self.0.get(name).ok_or_else(|| WeightsError::Missing {
            name: name.into(),
            expected: vec![],
        })?;
        tensor.clone().into_dimensionality().map_err(|_| WeightsError::Shape {
            name: name.into(),
            expected: vec![],
            found: tensor.shape().to_vec(),
        })
    }

    /// Every needed tensor is present with the right shape and finite values. Extra tensors
    /// are allowed (e.g. `num_batches_tracked`); see [`Weights::unexpected`].
    pub fn check(&self, arch: &ArchSpec) -> Result<(), WeightsError> {
        for (name, expected) in parameter_shapes(arch) {
            let tensor = self.0.get(&name).ok_or_else(|| WeightsError::Missing {
                name: name.clone(),
                expected: expected.clone(),
            })?;
            if tensor.shape() != expected.as_slice() {
                return Err(WeightsError::Shape {
                    name,
                    expected,
                    found: tensor.shape().to_vec(),
                });
            }
            if tensor.iter().any(|v| !v.is_finite()) {
                return Err(WeightsError::NotFinite { name });
            }
        }
        Ok(())
    }

    /// Tensor names present here that the architecture does not use.
    pub fn unexpected(&self, arch: &ArchSpec) -> Vec<String> {
        let needed = parameter_shapes(arch);
        self.0.keys().filter(|k| !needed.contains_key(*k)).cloned().collect()
    }

    /// Deterministic pseudo-random weights (He-like scale, unit batch norms with small random
    /// statistics): for tests and benchmarks that need a network, not a trained one.
    pub fn random(arch: &ArchSpec, seed: u64) -> Self {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut map = BTreeMap::new();
        for (name, shape) in parameter_shapes(arch) {
            let n: usize = shape.iter().product();
            let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
            let scale = (2.0 / fan_in as f32).sqrt();
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    let u: f32 = rng.random_range(-1.0..1.0);
                    if name.ends_with("running_var") {
                        0.5 + u.abs()
                    } else if name.ends_with("running_mean") || name.ends_with(".bias") {
                        0.1 * u
                    } else if name.contains(".bn") || name.starts_with("bn1") || name.contains("downsample.1") {
                        1.0 + 0.1 * u
                    } else {
                        scale * u
                    }
                })
                .collect();
            let array = ArrayD::from_shape_vec(shape, values).unwrap_or_else(|_| ArrayD::zeros(vec![0]));
            map.insert(name, array);
        }
        Self(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet18_medicalnet_keys() {
        let arch = ArchSpec::from_name("resnet18").unwrap();
        let shapes = parameter_shapes(&arch);
        assert_eq!(shapes["conv1.weight"], vec![64, 1, 7, 7, 7]);
        assert_eq!(shapes["layer2.0.conv1.weight"], vec![128, 64, 3, 3, 3]);
        assert_eq!(shapes["layer4.1.bn2.running_var"], vec![512]);
        assert_eq!(shapes["fc.weight"], vec![2, 512]);
        // Shortcut A has no weights.
        assert!(!shapes.keys().any(|k| k.contains("downsample")));
        // conv1 + 16 block convs + fc weight/bias = 19; bn: (1 + 16) × 4 = 68.
        assert_eq!(shapes.len(), 19 + 68);
    }

    #[test]
    fn resnet10_and_50_have_type_b_downsamples() {
        let r10 = parameter_shapes(&ArchSpec::from_name("resnet10").unwrap());
        assert_eq!(r10["layer2.0.downsample.0.weight"], vec![128, 64, 1, 1, 1]);
        assert!(
            !r10.contains_key("layer1.0.downsample.0.weight"),
            "layer1 keeps 64 channels"
        );
        let r50 = parameter_shapes(&ArchSpec::from_name("resnet50").unwrap());
        assert_eq!(r50["layer1.0.downsample.0.weight"], vec![256, 64, 1, 1, 1]);
        assert_eq!(r50["layer4.2.conv3.weight"], vec![2048, 512, 1, 1, 1]);
        assert_eq!(r50["fc.weight"], vec![2, 2048]);
    }

    #[test]
    fn check_reports_missing_shape_and_nan() {
        let arch = ArchSpec::from_name("resnet10").unwrap();
        let good = Weights::random(&arch, 1);
        good.check(&arch).unwrap();
        let mut w = good.clone();
        w.0.remove("layer3.0.bn1.weight");
        assert!(matches!(w.check(&arch), Err(WeightsError::Missing { .. })));
        let mut w = good.clone();
        w.0.insert("fc.bias".into(), ArrayD::zeros(vec![3]));
        assert!(matches!(w.check(&arch), Err(WeightsError::Shape { .. })));
        let mut w = good.clone();
        w.0.get_mut("conv1.weight").unwrap()[[0, 0, 0, 0, 0]] = f32::NAN;
        assert!(matches!(w.check(&arch), Err(WeightsError::NotFinite { .. })));
        let mut w = good;
        w.0.insert("bn1.num_batches_tracked".into(), ArrayD::zeros(vec![1]));
        assert_eq!(w.unexpected(&arch), vec!["bn1.num_batches_tracked".to_string()]);
    }
}
