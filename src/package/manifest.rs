//! The model package on disk: a directory with one ONNX graph per fold and `manifest.toml`,
//! holding everything the node needs to reproduce the trainer's input and read the outputs.
//! A manifest the node does not understand is refused with the reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::arch::{ArchError, ArchSpec};
use crate::preprocess::{PreprocessError, Recipe};

/// The manifest format this build reads and writes.
pub const FORMAT: &str = "fcdnode-model/1";
/// File name of the manifest inside a package directory.
pub const MANIFEST_FILE: &str = "manifest.toml";

/// An MR contrast a model takes as an input channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Modality {
    /// 3D T1-weighted.
    T1w,
    /// 3D FLAIR.
    #[serde(rename = "FLAIR")]
    Flair,
}

impl std::fmt::Display for Modality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Modality::T1w => "T1w",
            Modality::Flair => "FLAIR",
        })
    }
}

/// Names of the graph outputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outputs {
    /// `[batch, classes]` class scores before softmax.
    pub logits: String,
    /// `[batch, channels, d, h, w]`: the tensor fed to global average pooling (for CAM).
    pub features: String,
}

impl Default for Outputs {
    fn default() -> Self {
        Self {
            logits: "logits".into(),
            features: "features".into(),
        }
    }
}

/// Where the model came from and how well it did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Provenance {
    /// Training data (name, path or DOI).
    pub dataset: String,
    /// fcdnode version (and anything else identifying the code) that trained it.
    pub code_version: String,
    /// Cross-validation scheme, e.g. "5-fold stratified".
    pub validation: String,
    /// Mean cross-validated metrics (`accuracy`, `roc_auc`, `heat_score`, …).
    pub metrics: BTreeMap<String, f64>,
    /// Free text.
    pub notes: String,
}

/// `[heatmap]`: the map level the node's colour scale calls 1.0, so the same value gets the same
/// colour in every study (a per-study min-max scale makes every control look hot). Taken at
/// export from the package's own ensemble maps of its training positives; absent in packages
/// exported before it existed, which the node then shows on a relative, uncalibrated scale.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeatmapReference {
    /// Reference level of the Grad-CAM++ ensemble map (feature grid, raw units).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gradcampp: Option<f64>,
    /// Reference level of the Grad-CAM ensemble map (feature grid, raw units).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gradcam: Option<f64>,
    /// Number of training positives the levels were taken from.
    #[serde(default)]
    pub positives: usize,
    /// How the levels were computed (statistic, data), for people.
    #[serde(default)]
    pub method: String,
}

/// `manifest.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Must be [`FORMAT`].
    pub format: String,
    /// Short name (shown in reports and the SR's algorithm name).
    pub name: String,
    /// Model version (the SR's algorithm version).
    pub version: String,
    /// One line for people.
    #[serde(default)]
    pub description: String,
    /// Input channels in tensor order; the first is the reference grid.
    pub channels: Vec<Modality>,
    /// Resampling and normalisation, applied by [`crate::preprocess`].
    pub preprocess: Recipe,
    /// The network.
    pub architecture: ArchSpec,
    /// Class names in logit order, e.g. `["hc", "fcd"]`.
    pub classes: Vec<String>,
    /// Index of the class whose probability is reported (the lesion class).
    pub positive_class: usize,
    /// Decision threshold on the mean fold probability of `positive_class`.
    pub threshold: f64,
    /// Graph output names.
    #[serde(default)]
    pub outputs: Outputs,
    /// ONNX graphs, one per fold, relative to the package directory.
    pub folds: Vec<String>,
    /// Training data, code version, metrics.
    #[serde(default)]
    pub provenance: Provenance,
    /// Calibration of the heatmap colour scale; `None` in older packages (relative scale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heatmap: Option<HeatmapReference>,
}

/// Why a package cannot be used; every variant names the package path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackageError {
    /// The manifest could not be read.
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The manifest does not parse or has unknown fields.
    #[error("{path}: not a manifest this fcdnode understands: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    /// The manifest could not be written.
    #[error("{path}: cannot write manifest: {source}")]
    Serialise {
        path: PathBuf,
        #[source]
        source: toml::ser::Error,
    },
    /// A field breaks a rule.
    #[error("{path}: `{field}` = {value}: {rule}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        value: String,
        rule: String,
    },
    /// The architecture is invalid.
    #[error("{path}: [architecture]: {source}")]
    Architecture {
        path: PathBuf,
        #[source]
        source: ArchError,
    },
    /// The preprocessing recipe is invalid.
    #[error("{path}: [preprocess]: {source}")]
    Preprocess {
        path: PathBuf,
        #[source]
        source: PreprocessError,
    },
}

/// A loaded, checked package: its manifest and the absolute paths of its fold graphs.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelPackage {
    /// Package directory.
    pub dir: PathBuf,
    /// The manifest.
    pub manifest: Manifest,
    /// One ONNX file per fold, existing.
    pub graphs: Vec<PathBuf>,
    /// SHA-256 (lowercase hex) of `manifest.toml` followed by every fold graph in manifest
    /// order: names the exact model in every result it produces.
    pub sha256: String,
}

impl ModelPackage {
    /// Loads `dir/manifest.toml`, checks it and that every fold graph exists.
    pub fn load(dir: &Path) -> Result<Self, PackageError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| PackageError::Read {
            path: path.clone(),
            source,
        })?;
        let manifest: Manifest = toml::from_str(&text).map_err(|source| PackageError::Parse {
            path: path.clone(),
            source: Box::new(source),
        })?;
        manifest.validate(&path)?;
        let mut graphs = Vec::new();
        for fold in &manifest.folds {
            let graph = dir.join(fold);
            if !graph.is_file() {
                return Err(PackageError::Invalid {
                    path: path.clone(),
                    field: "folds",
                    value: fold.clone(),
                    rule: format!("file {} does not exist", graph.display()),
                });
            }
            graphs.push(graph);
        }
        let sha256 = package_digest(&path, &graphs)?;
        Ok(Self {
            dir: dir.to_owned(),
            manifest,
            graphs,
            sha256,
        })
    }
}

/// SHA-256 of the manifest and the graphs, read in 1 MiB blocks (graphs can be hundreds of MB).
fn package_digest(manifest: &Path, graphs: &[PathBuf]) -> Result<String, PackageError> {
    use sha2::Digest;
    use std::io::Read;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for path in std::iter::once(manifest).chain(graphs.iter().map(PathBuf::as_path)) {
        let read_err = |source| PackageError::Read {
            path: path.to_owned(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(read_err)?;
        loop {
            let n = file.read(&mut buf).map_err(read_err)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

impl Manifest {
    /// A two-class FCD classifier: classes `hc`, `fcd` (positive), threshold 0.5, the ONNX
    /// writer's output names, empty description and provenance.
    pub fn fcd_classifier(
        name: &str,
        version: &str,
        channels: Vec<Modality>,
        preprocess: Recipe,
        architecture: ArchSpec,
        folds: Vec<String>,
    ) -> Self {
        Self {
            format: FORMAT.into(),
            name: name.into(),
            version: version.into(),
            description: String::new(),
            channels,
            preprocess,
            architecture,
            classes: vec!["hc".into(), "fcd".into()],
            positive_class: 1,
            threshold: 0.5,
            outputs: Outputs::default(),
            folds,
            provenance: Provenance::default(),
            heatmap: None,
        }
    }

    /// Checks every field; `path` names the manifest in errors.
    pub fn validate(&self, path: &Path) -> Result<(), PackageError> {
        let invalid = |field, value: String, rule: String| PackageError::Invalid {
            path: path.to_owned(),
            field,
            value,
            rule,
        };
        if self.format != FORMAT {
            return Err(invalid(
                "format",
                self.format.clone(),
                format!("this fcdnode reads {FORMAT:?}"),
            ));
        }
        if self.channels.is_empty() || self.channels.len() != self.architecture.in_channels {
            return Err(invalid(
                "channels",
                format!("{:?}", self.channels),
                format!(
                    "must list architecture.in_channels = {} modalities",
                    self.architecture.in_channels
                ),
            ));
        }
        self.architecture
            .validate()
            .map_err(|source| PackageError::Architecture {
                path: path.to_owned(),
                source,
            })?;
        self.preprocess.validate().map_err(|source| PackageError::Preprocess {
            path: path.to_owned(),
            source,
        })?;
        if self.classes.len() != self.architecture.num_classes {
            return Err(invalid(
                "classes",
                format!("{:?}", self.classes),
                format!(
                    "must name architecture.num_classes = {} classes",
                    self.architecture.num_classes
                ),
            ));
        }
        if self.positive_class >= self.classes.len() {
            return Err(invalid(
                "positive_class",
                self.positive_class.to_string(),
                "must index `classes`".into(),
            ));
        }
        if !(self.threshold > 0.0 && self.threshold < 1.0) {
            return Err(invalid(
                "threshold",
                self.threshold.to_string(),
                "must be within (0, 1)".into(),
            ));
        }
        if let Some(h) = &self.heatmap {
            for (field, value) in [("heatmap.gradcampp", h.gradcampp), ("heatmap.gradcam", h.gradcam)] {
                if let Some(v) = value
                    && !(v.is_finite() && v > 0.0)
                {
                    return Err(invalid(field, v.to_string(), "must be a positive map level".into()));
                }
            }
        }
        if self.folds.is_empty() {
            return Err(invalid(
                "folds",
                "[]".into(),
                "at least one ONNX graph is needed".into(),
            ));
        }
        if self
            .folds
            .iter()
            .any(|f| Path::new(f).is_absolute() || f.contains(".."))
        {
            return Err(invalid(
                "folds",
                format!("{:?}", self.folds),
                "paths must stay inside the package".into(),
            ));
        }
        Ok(())
    }

    /// Writes the manifest to `dir/manifest.toml`.
    pub fn save(&self, dir: &Path) -> Result<(), PackageError> {
        let path = dir.join(MANIFEST_FILE);
        let text = toml::to_string_pretty(self).map_err(|source| PackageError::Serialise {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&path, text).map_err(|source| PackageError::Read { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::Normalisation;

    fn manifest() -> Manifest {
        let mut architecture = ArchSpec::from_name("resnet10").unwrap();
        architecture.width_mult = 0.25;
        Manifest {
            description: "test".into(),
            ..Manifest::fcd_classifier(
                "demo",
                "1",
                vec![Modality::Flair],
                Recipe {
                    voxel_mm: [2.0; 3],
                    shape: [80, 96, 80],
                    normalisation: Normalisation::ZscoreForeground,
                },
                architecture,
                vec!["fold0.onnx".into()],
            )
        }
    }

    #[test]
    fn round_trip_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let m = manifest();
        m.save(dir.path()).unwrap();
        std::fs::write(dir.path().join("fold0.onnx"), b"x").unwrap();
        let p = ModelPackage::load(dir.path()).unwrap();
        assert_eq!(p.manifest, m);
        assert_eq!(p.graphs, vec![dir.path().join("fold0.onnx")]);
        // A calibrated package round-trips its reference levels.
        let calibrated = Manifest {
            heatmap: Some(HeatmapReference {
                gradcampp: Some(0.25),
                gradcam: None,
                positives: 20,
                method: "median peak".into(),
            }),
            ..m
        };
        calibrated.save(dir.path()).unwrap();
        assert_eq!(ModelPackage::load(dir.path()).unwrap().manifest, calibrated);
    }

    /// Packages exported before `[heatmap]` existed still load, uncalibrated.
    #[test]
    fn old_manifests_without_a_heatmap_reference_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = manifest();
        m.save(dir.path()).unwrap();
        std::fs::write(dir.path().join("fold0.onnx"), b"x").unwrap();
        let text = std::fs::read_to_string(dir.path().join(MANIFEST_FILE)).unwrap();
        assert!(!text.contains("[heatmap]"), "{text}");
        let loaded = ModelPackage::load(dir.path()).unwrap().manifest;
        assert_eq!(loaded.heatmap, None);
        m.heatmap = None;
        assert_eq!(loaded, m);
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST_FILE);
        let check = |edit: &dyn Fn(&mut Manifest), needle: &str| {
            let mut m = manifest();
            edit(&mut m);
            m.save(dir.path()).unwrap();
            std::fs::write(dir.path().join("fold0.onnx"), b"x").unwrap();
            let err = ModelPackage::load(dir.path()).unwrap_err().to_string();
            assert!(err.contains("manifest.toml") && err.contains(needle), "{needle}: {err}");
        };
        check(&|m| m.format = "fcdnode-model/9".into(), "format");
        check(&|m| m.channels = vec![Modality::T1w, Modality::Flair], "channels");
        check(&|m| m.classes = vec!["only".into()], "classes");
        check(&|m| m.threshold = 1.5, "threshold");
        check(&|m| m.folds = vec!["../escape.onnx".into()], "folds");
        check(&|m| m.folds = vec!["absent.onnx".into()], "does not exist");
        check(&|m| m.architecture.depth = 11, "depth");
        check(&|m| m.preprocess.shape = [0, 1, 1], "shape");
        check(
            &|m| {
                m.heatmap = Some(HeatmapReference {
                    gradcampp: Some(0.0),
                    ..HeatmapReference::default()
                })
            },
            "heatmap.gradcampp",
        );
        manifest().save(dir.path()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("surprise = 1\n{text}")).unwrap();
        let err = ModelPackage::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("surprise"), "{err}");
        assert!(
            ModelPackage::load(&dir.path().join("none"))
                .unwrap_err()
                .to_string()
                .contains("none/manifest.toml")
        );
    }
}
