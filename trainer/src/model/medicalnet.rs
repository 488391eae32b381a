//! MedicalNet checkpoint (`.pth`) → [`Weights`] for an architecture: keys without DataParallel's
//! `module.` prefix, an [`ImportReport`] of missing and unexpected keys, shape mismatches
//! refused. Read with burn-store's PyTorch reader (`pytorch_reader`), which handles the zip
//! format of PyTorch ≥ 1.6 and the legacy pickle stream, without PyTorch.
//!
//! MedicalNet checkpoints are segmentation networks: a dict whose `state_dict` holds the backbone
//! and a `conv_seg` head but no classifier, so `fc.*` is missing by design and stays freshly
//! initialised, and `conv_seg.*` is unexpected.

use std::fmt;
use std::path::{Path, PathBuf};

use burn::store::pytorch_reader::{DType, PytorchError, PytorchReader};
use fcdnode::package::arch::ArchSpec;
use fcdnode::package::weights::{Weights, parameter_shapes};
use ndarray::{ArrayD, IxDyn};

use super::{ModelError, ResNet3d};

/// Why a MedicalNet checkpoint cannot be imported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MedicalNetError {
    /// The file is not a PyTorch checkpoint the reader understands.
    #[error("cannot read PyTorch checkpoint {path}")]
    Open { path: PathBuf, source: Box<PytorchError> },
    /// A tensor's bytes cannot be read.
    #[error("cannot read tensor {key} from {path}")]
    Read {
        path: PathBuf,
        key: String,
        source: std::io::Error,
    },
    /// A tensor the architecture uses is not floating point.
    #[error("tensor {key} in {path} is {dtype}, expected float32")]
    DType { path: PathBuf, key: String, dtype: String },
    /// A tensor has another shape than the architecture needs (another width, depth or
    /// input channel count).
    #[error("tensor {key} in {path} has shape {found:?}, but {arch} needs {expected:?}")]
    Shape {
        path: PathBuf,
        key: String,
        arch: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// Backbone tensors are missing: a checkpoint of another architecture.
    #[error(
        "{path} lacks {} backbone tensors of {arch} (first: {}); is it a checkpoint of another \
         depth or shortcut type?",
        keys.len(),
        keys.first().map(String::as_str).unwrap_or("")
    )]
    MissingBackbone {
        path: PathBuf,
        arch: String,
        keys: Vec<String>,
    },
    /// The weights cannot be loaded into the network.
    #[error("cannot load the weights of {path} into the network")]
    Load { path: PathBuf, source: Box<ModelError> },
}

/// What an import found, by architecture name (without `module.`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// The checkpoint.
    pub path: PathBuf,
    /// Tensors taken from the checkpoint.
    pub loaded: Vec<String>,
    /// Tensors the architecture needs that the checkpoint lacks; they keep their fresh
    /// initialisation (`fc.weight` and `fc.bias` for every MedicalNet checkpoint).
    pub missing: Vec<String>,
    /// Checkpoint tensors the architecture does not use (MedicalNet's `conv_seg.*` head).
    pub unexpected: Vec<String>,
    /// Batch-norm step counters (`num_batches_tracked`), which burn does not keep.
    pub ignored: Vec<String>,
}

impl ImportReport {
    /// Missing tensors other than the classifier's (`fc.*`).
    pub fn missing_backbone(&self) -> Vec<String> {
        self.missing.iter().filter(|k| !k.starts_with("fc.")).cloned().collect()
    }
}

impl fmt::Display for ImportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} tensors loaded, {} missing [{}], {} unexpected [{}], {} batch counters ignored",
            self.path.display(),
            self.loaded.len(),
            self.missing.len(),
            self.missing.join(", "),
            self.unexpected.len(),
            abbreviate(&self.unexpected),
            self.ignored.len()
        )
    }
}

fn abbreviate(keys: &[String]) -> String {
    const SHOWN: usize = 6;
    let mut text = keys.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if keys.len() > SHOWN {
        text.push_str(&format!(", … {} more", keys.len() - SHOWN));
    }
    text
}

/// Reads the tensors `arch` uses from a MedicalNet checkpoint at `path`: the `state_dict` of a
/// dict (or a bare state dict), `module.` stripped. A tensor of the wrong shape or type is
/// refused; missing and unexpected keys are reported, not refused.
pub fn read_medicalnet(path: &Path, arch: &ArchSpec) -> Result<(Weights, ImportReport), MedicalNetError> {
    let open_error = |source| MedicalNetError::Open {
        path: path.to_path_buf(),
        source: Box::new(source),
    };
    let reader = match PytorchReader::with_top_level_key(path, "state_dict") {
        Ok(reader) => reader,
        Err(PytorchError::KeyNotFound(_)) => PytorchReader::new(path).map_err(open_error)?,
        Err(source) => return Err(open_error(source)),
    };
    let needed = parameter_shapes(arch);
    let mut report = ImportReport {
        path: path.to_path_buf(),
        ..ImportReport::default()
    };
    let mut weights = Weights::default();
    let mut tensors: Vec<_> = reader.tensors().iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(b.0));
    for (key, tensor) in tensors {
        let name = key.strip_prefix("module.").unwrap_or(key).to_string();
        if name.ends_with(".num_batches_tracked") {
            report.ignored.push(name);
            continue;
        }
        let Some(expected) = needed.get(&name) else {
            report.unexpected.push(name);
            continue;
        };
        if tensor.shape() != expected.as_slice() {
            return Err(MedicalNetError::Shape {
                path: path.to_path_buf(),
                key: key.clone(),
                arch: arch.name(),
                expected: expected.clone(),
                found: tensor.shape().to_vec(),
            });
        }
        let bytes = tensor.read().map_err(|source| MedicalNetError::Read {
            path: path.to_path_buf(),
            key: key.clone(),
            source,
        })?;
        // The reader hands out contiguous row-major native-endian bytes.
        let values: Vec<f32> = match tensor.dtype() {
            DType::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            DType::F64 => bytes
                .chunks_exact(8)
                .map(|b| f64::from_ne_bytes(std::array::from_fn(|i| b[i])) as f32)
                .collect(),
            other => {
                return Err(MedicalNetError::DType {
                    path: path.to_path_buf(),
                    key: key.clone(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        let array = ArrayD::from_shape_vec(IxDyn(expected), values).map_err(|source| MedicalNetError::Load {
            path: path.to_path_buf(),
            source: Box::new(ModelError::Layout {
                name: name.clone(),
                source,
            }),
        })?;
        weights.0.insert(name.clone(), array);
        report.loaded.push(name);
    }
    report.missing = needed.keys().filter(|k| !weights.0.contains_key(*k)).cloned().collect();
    Ok((weights, report))
}

/// `model` with the backbone of the MedicalNet checkpoint at `path`; the classifier (absent from
/// MedicalNet checkpoints) keeps its fresh initialisation. Refuses a checkpoint that lacks
/// backbone tensors or has one of another shape.
pub fn import_medicalnet(model: ResNet3d, path: &Path) -> Result<(ResNet3d, ImportReport), MedicalNetError> {
    let (weights, report) = read_medicalnet(path, model.arch())?;
    let missing = report.missing_backbone();
    if !missing.is_empty() {
        return Err(MedicalNetError::MissingBackbone {
            path: path.to_path_buf(),
            arch: model.arch().name(),
            keys: missing,
        });
    }
    let (model, _) = model
        .load_weights_partial(&weights)
        .map_err(|source| MedicalNetError::Load {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
    Ok((model, report))
}
