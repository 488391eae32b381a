//! An exported model package → starting weights for fine-tuning on a new site's data
//! (`fcdtrain cv --init-from models/NAME`); owns the compatibility check between the package and
//! the run, and reading trained tensors back out of the package's ONNX graphs.
//!
//! The ONNX writer stores every tensor as an initializer under its PyTorch name, so a graph's
//! initializers are exactly the [`Weights`] it was written from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fcdnode::package::arch::ArchSpec;
use fcdnode::package::manifest::{Modality, ModelPackage, PackageError};
use fcdnode::package::onnx::proto::{DataType, ModelProto};
use fcdnode::package::weights::{Weights, parameter_shapes};
use fcdnode::preprocess::Recipe;
use ndarray::{ArrayD, IxDyn};
use prost::Message;

/// Why a package cannot start a fine-tuning run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FinetuneError {
    /// The package itself is unreadable or invalid.
    #[error("--init-from {dir}")]
    Package {
        dir: PathBuf,
        #[source]
        source: Box<PackageError>,
    },
    /// The package was trained with another network or channels than this run asks for.
    #[error(
        "--init-from {dir}: the package's {what} is {package}, this run's is {run}; \
         {hint}"
    )]
    Incompatible {
        dir: PathBuf,
        what: &'static str,
        package: String,
        run: String,
        hint: &'static str,
    },
    /// A fold graph could not be read or decoded.
    #[error("{path}: {rule}")]
    Graph { path: PathBuf, rule: String },
}

/// A package opened for fine-tuning: its manifest and the trained weights of every fold graph.
#[derive(Debug)]
pub struct InitPackage {
    /// Package directory.
    pub dir: PathBuf,
    /// Architecture of every fold graph.
    pub arch: ArchSpec,
    /// Weights per fold graph, in manifest order.
    pub folds: Vec<Weights>,
    /// Input channels in tensor order.
    pub channels: Vec<Modality>,
    /// The package's preprocessing (the run's may differ only in field of view).
    pub recipe: Recipe,
}

impl InitPackage {
    /// Opens the package in `dir` and reads every fold's weights.
    pub fn open(dir: &Path) -> Result<Self, FinetuneError> {
        let package = ModelPackage::load(dir).map_err(|source| FinetuneError::Package {
            dir: dir.to_owned(),
            source: Box::new(source),
        })?;
        let arch = package.manifest.architecture.clone();
        let folds = package
            .graphs
            .iter()
            .map(|g| read_graph_weights(g, &arch))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            dir: dir.to_owned(),
            arch,
            folds,
            channels: package.manifest.channels,
            recipe: package.manifest.preprocess,
        })
    }

    /// The starting weights of outer fold `k`: the package's fold `k`, cycling when the package
    /// has fewer folds than the run.
    pub fn fold(&self, k: usize) -> &Weights {
        &self.folds[k % self.folds.len()]
    }

    /// Refuses a run whose network, channels, voxel size or normalisation differ from the
    /// package's: the weights would not mean the same thing. A different field of view is fine
    /// (the network is convolutional).
    pub fn check(&self, arch: &ArchSpec, channels: &[Modality], recipe: &Recipe) -> Result<(), FinetuneError> {
        let incompatible = |what, package: String, run: String, hint| FinetuneError::Incompatible {
            dir: self.dir.clone(),
            what,
            package,
            run,
            hint,
        };
        if *arch != self.arch {
            return Err(incompatible(
                "architecture",
                describe(&self.arch),
                describe(arch),
                "pass the package's --arch, --layout and --width-mult",
            ));
        }
        if channels != self.channels {
            return Err(incompatible(
                "channel list",
                crate::config::modality_label(&self.channels),
                crate::config::modality_label(channels),
                "pass the package's channels with --modality",
            ));
        }
        if recipe.voxel_mm != self.recipe.voxel_mm || recipe.normalisation != self.recipe.normalisation {
            return Err(incompatible(
                "preprocessing",
                format!("{:?} mm, {:?}", self.recipe.voxel_mm, self.recipe.normalisation),
                format!("{:?} mm, {:?}", recipe.voxel_mm, recipe.normalisation),
                "pass the package's --voxel-mm",
            ));
        }
        Ok(())
    }
}

fn describe(arch: &ArchSpec) -> String {
    format!(
        "{} ({:?} layout, width ×{}, {} input channel(s), stem stride {:?}, {} classes)",
        arch.name(),
        arch.layout,
        arch.width_mult,
        arch.in_channels,
        arch.stem_stride,
        arch.num_classes
    )
}

/// The network tensors of one ONNX graph written by the package writer (initializers named as
/// in [`parameter_shapes`]); other initializers are left out.
pub fn read_graph_weights(path: &Path, arch: &ArchSpec) -> Result<Weights, FinetuneError> {
    let bad = |rule: String| FinetuneError::Graph {
        path: path.to_owned(),
        rule,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let model = ModelProto::decode(bytes.as_slice()).map_err(|e| bad(format!("not an ONNX model: {e}")))?;
    let graph = model.graph.ok_or_else(|| bad("no graph".into()))?;
    let wanted = parameter_shapes(arch);
    let mut out = BTreeMap::new();
    for t in graph.initializer {
        if !wanted.contains_key(&t.name) {
            continue;
        }
        if t.data_type != DataType::Float as i32 {
            return Err(bad(format!("initializer {} is not float32", t.name)));
        }
        let values: Vec<f32> = if t.raw_data.is_empty() {
            t.float_data
        } else {
            t.raw_data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        };
        let dims: Vec<usize> = t.dims.iter().map(|&d| usize::try_from(d).unwrap_or(0)).collect();
        let array =
            ArrayD::from_shape_vec(IxDyn(&dims), values).map_err(|e| bad(format!("initializer {}: {e}", t.name)))?;
        out.insert(t.name, array);
    }
    Ok(Weights(out))
}
