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
    /// How `threshold` was chosen and what it gave on the data it was chosen on, for people.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub threshold_rule: String,
    /// The held-out ROC-AUC a fold needed to be exported (`fcdtrain export --min-fold-auc`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_fold_auc: Option<f64>,
    /// Free text.
    pub notes: String,
}

/// `[calibration]`: maps the ensemble's raw probability (mean of the folds' softmax) to a
/// calibrated one before the threshold. A network's softmax is rarely a frequency (small
/// cohorts, early stopping), and a triage threshold means something only on a calibrated
/// scale. Absent in packages exported before it existed: their probability is the raw mean.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// The mapping.
    pub method: CalibrationMethod,
    /// Slope on logit(p).
    pub a: f64,
    /// Intercept.
    pub b: f64,
    /// The data it was fitted on (e.g. "out-of-fold predictions, 40 subjects"), for people.
    #[serde(default)]
    pub fitted_on: String,
}

/// How [`Calibration`] maps a probability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CalibrationMethod {
    /// Platt scaling on the logit: σ(a·logit(p) + b).
    Platt,
}

/// Probabilities are clamped this far from 0 and 1 before the logit: a softmax in f32 saturates
/// at 1 − 6e-8, so the trainer (f32) and the node (f64) see the same logit for a sure fold.
pub const LOGIT_CLAMP: f64 = 1e-7;

/// logit(p) of `p` kept [`LOGIT_CLAMP`] away from 0 and 1: finite for any p in [0, 1].
pub fn logit(p: f64) -> f64 {
    let p = p.clamp(LOGIT_CLAMP, 1.0 - LOGIT_CLAMP);
    (p / (1.0 - p)).ln()
}

/// The logistic function 1 / (1 + e^−z).
pub fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl Calibration {
    /// The calibrated probability of a raw probability `p`.
    pub fn apply(&self, p: f64) -> f64 {
        match self.method {
            CalibrationMethod::Platt => sigmoid(self.a * logit(p) + self.b),
        }
    }
}

/// How a fold's held-out ROC-AUC compared with the export floor, and what export did about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FoldStatus {
    /// At or above the floor: exported.
    Healthy,
    /// Below the floor (or undefined), exported anyway (`--keep-weak-folds`).
    WeakKept,
    /// Below the floor (or undefined), left out of the package (`--drop-weak-folds`).
    WeakDropped,
}

/// `[[fold_metrics]]`: one fold of the training run on its own held-out subjects, so a reader
/// sees whether every graph of the ensemble discriminates, and which folds were left out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FoldMetrics {
    /// Fold name in the run (`fold-1`, or the held-out group).
    pub fold: String,
    /// Its graph in `folds`; absent when the fold was dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph: Option<String>,
    /// Held-out subjects.
    pub n: usize,
    /// Of which positives.
    pub positives: usize,
    /// ROC-AUC on them; absent when undefined (one class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roc_auc: Option<f64>,
    /// Accuracy on them at `threshold`, on the probabilities the package reports (calibrated by
    /// `[calibration]` when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Healthy, or weak and kept / dropped.
    pub status: FoldStatus,
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
    /// Decision threshold on the probability of `positive_class`: the mean of the folds' softmax,
    /// mapped by `[calibration]` when present.
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
    /// Calibration of the probability; `None` in older packages (the raw mean is used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    /// Each training fold on its held-out subjects; empty in older packages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fold_metrics: Vec<FoldMetrics>,
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
            calibration: None,
            fold_metrics: Vec::new(),
        }
    }

    /// The probability the node reports and thresholds: `raw` (mean of the folds' softmax)
    /// through `[calibration]`, or `raw` itself without one.
    pub fn calibrate(&self, raw: f64) -> f64 {
        self.calibration.as_ref().map_or(raw, |c| c.apply(raw))
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
        if let Some(c) = &self.calibration {
            for (field, v) in [("calibration.a", c.a), ("calibration.b", c.b)] {
                if !v.is_finite() {
                    return Err(invalid(field, v.to_string(), "must be a finite number".into()));
                }
            }
            if c.a <= 0.0 {
                return Err(invalid(
                    "calibration.a",
                    c.a.to_string(),
                    "must be positive: a calibration may not reverse or flatten the model's ranking".into(),
                ));
            }
        }
        for m in &self.fold_metrics {
            for (field, v) in [
                ("fold_metrics.roc_auc", m.roc_auc),
                ("fold_metrics.accuracy", m.accuracy),
            ] {
                if let Some(v) = v
                    && !(0.0..=1.0).contains(&v)
                {
                    return Err(invalid(field, format!("{v} ({})", m.fold), "must be in [0, 1]".into()));
                }
            }
            if let Some(g) = &m.graph
                && !self.folds.contains(g)
            {
                return Err(invalid(
                    "fold_metrics.graph",
                    format!("{g} ({})", m.fold),
                    "must be one of `folds`".into(),
                ));
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
        // So does a package with a probability calibration and fold metrics.
        let with_decision = Manifest {
            calibration: Some(platt(1.5, -0.25)),
            fold_metrics: vec![FoldMetrics {
                fold: "fold-1".into(),
                graph: Some("fold0.onnx".into()),
                n: 8,
                positives: 4,
                roc_auc: Some(0.9375),
                accuracy: Some(0.875),
                status: FoldStatus::Healthy,
            }],
            ..calibrated
        };
        with_decision.save(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(MANIFEST_FILE)).unwrap();
        assert!(
            text.contains("[calibration]") && text.contains("method = \"platt\"") && text.contains("[[fold_metrics]]"),
            "{text}"
        );
        assert_eq!(ModelPackage::load(dir.path()).unwrap().manifest, with_decision);
    }

    fn platt(a: f64, b: f64) -> Calibration {
        Calibration {
            method: CalibrationMethod::Platt,
            a,
            b,
            fitted_on: "test".into(),
        }
    }

    #[test]
    fn platt_calibration_maps_the_logit() {
        let c = platt(2.0, -1.0);
        // logit(0.5) = 0 → σ(−1).
        assert!((c.apply(0.5) - 1.0 / (1.0 + 1f64.exp())).abs() < 1e-12);
        // logit(σ(1.5)) = 1.5 → σ(2·1.5 − 1) = σ(2).
        assert!((c.apply(sigmoid(1.5)) - sigmoid(2.0)).abs() < 1e-12);
        // A saturated softmax stays finite and inside (0, 1).
        let sure = c.apply(1.0);
        assert!(sure.is_finite() && sure < 1.0 && (sure - sigmoid(2.0 * logit(1.0 - LOGIT_CLAMP) - 1.0)).abs() < 1e-12);
        assert!(c.apply(0.0) > 0.0);
        let mut m = manifest();
        assert_eq!(m.calibrate(0.3), 0.3, "no [calibration]: identity");
        m.calibration = Some(c);
        assert_eq!(m.calibrate(0.5), sigmoid(-1.0));
    }

    /// Packages exported before `[heatmap]`, `[calibration]` and `[[fold_metrics]]` existed still
    /// load: relative heatmap scale, raw probability.
    #[test]
    fn old_manifests_without_heatmap_or_calibration_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = manifest();
        m.save(dir.path()).unwrap();
        std::fs::write(dir.path().join("fold0.onnx"), b"x").unwrap();
        let text = std::fs::read_to_string(dir.path().join(MANIFEST_FILE)).unwrap();
        assert!(!text.contains("[heatmap]"), "{text}");
        let loaded = ModelPackage::load(dir.path()).unwrap().manifest;
        assert_eq!(loaded.heatmap, None);
        assert!(
            !text.contains("[calibration]") && !text.contains("fold_metrics"),
            "{text}"
        );
        assert_eq!(loaded.calibration, None);
        assert!(loaded.fold_metrics.is_empty());
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
        check(&|m| m.calibration = Some(platt(f64::NAN, 0.0)), "`calibration.a` = NaN");
        check(
            &|m| m.calibration = Some(platt(1.0, f64::INFINITY)),
            "`calibration.b` = inf",
        );
        check(&|m| m.calibration = Some(platt(-1.0, 0.0)), "`calibration.a` = -1");
        check(
            &|m| {
                m.fold_metrics = vec![FoldMetrics {
                    fold: "fold-2".into(),
                    graph: Some("fold9.onnx".into()),
                    n: 4,
                    positives: 2,
                    roc_auc: Some(0.5),
                    accuracy: None,
                    status: FoldStatus::WeakKept,
                }]
            },
            "fold9.onnx (fold-2)",
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
