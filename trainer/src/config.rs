//! Command-line options → a validated [`CvConfig`] (written as `RUN/config.json`) → the grid of
//! [`Experiment`]s it spans; owns the preprocessing [`Recipe`] the run and the exported package
//! share.

use std::path::PathBuf;

use fcdnode::package::arch::{ArchSpec, Layout, Pooling};
use fcdnode::package::manifest::Modality;
use fcdnode::preprocess::{Normalisation, Recipe};
use serde::{Deserialize, Serialize};

use crate::model::{ModelError, TrainLayers};

/// Why options cannot make a run; each variant names the option.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// An option value breaks a rule.
    #[error("--{option} {value}: {rule}")]
    Bad {
        option: &'static str,
        value: String,
        rule: String,
    },
    /// An architecture name or spec that the model code refuses.
    #[error("--arch {value}")]
    Arch {
        value: String,
        #[source]
        source: Box<ModelError>,
    },
}

/// Augmentation applied to training samples (never to validation or test samples).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Augment {
    /// Random rotation about each axis, uniform in ±this many degrees (0 = off).
    pub rotation_deg: f64,
    /// Random left-right flip with probability 0.5.
    pub flip: bool,
    /// Random intensity scaling, uniform in 1 ± this (0 = off).
    pub intensity: f64,
}

impl Default for Augment {
    fn default() -> Self {
        Self {
            rotation_deg: 15.0,
            flip: false,
            intensity: 0.1,
        }
    }
}

/// How the package's decision threshold is chosen on the calibrated out-of-fold probabilities.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case", deny_unknown_fields)]
pub enum ThresholdRule {
    /// The highest threshold whose sensitivity is at least `target`: a triage tool must not miss
    /// patients, and the highest such threshold flags the fewest controls.
    Sensitivity { target: f64 },
    /// The threshold maximising Youden's J = sensitivity + specificity − 1.
    Youden,
}

impl Default for ThresholdRule {
    fn default() -> Self {
        Self::Sensitivity { target: 0.9 }
    }
}

impl std::fmt::Display for ThresholdRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sensitivity { target } => write!(f, "the highest threshold with sensitivity ≥ {target}"),
            Self::Youden => f.write_str("the threshold maximising Youden's J (sensitivity + specificity − 1)"),
        }
    }
}

/// Everything a cross-validation run is made of; saved as `RUN/config.json` so a rerun can
/// check it resumes the same run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CvConfig {
    /// BIDS dataset root.
    pub data: PathBuf,
    /// Architecture names (`resnet10`, `resnet18`, `resnet34`, `resnet50`).
    pub archs: Vec<String>,
    /// Network layout.
    pub layout: Layout,
    /// Width multiplier (1.0 = 64/128/256/512 channels).
    pub width_mult: f64,
    /// How the head pools the per-voxel class scores.
    #[serde(default)]
    pub pooling: Pooling,
    /// Weight of the lesion-map loss (patients' ROIs on the per-voxel scores) beside the
    /// cross-entropy; 0 = labels only.
    #[serde(default)]
    pub roi_weight: f64,
    /// Initialisations: `None` = random, `Some(file)` = a MedicalNet checkpoint.
    pub pretrained: Vec<Option<PathBuf>>,
    /// Which parts train (`all`, `layer4,fc`, `layer3+`).
    pub train_layers: String,
    /// Channel sets, e.g. `[[Flair], [T1w], [Flair, T1w]]`.
    pub modalities: Vec<Vec<Modality>>,
    /// Number of outer folds.
    pub folds: usize,
    /// Maximum epochs per fold.
    pub epochs: usize,
    /// Early stopping: epochs without a better validation loss before stopping.
    pub patience: usize,
    /// ReduceLROnPlateau: epochs without a better validation loss before the learning rate
    /// drops tenfold.
    #[serde(default = "plateau_default")]
    pub plateau_patience: usize,
    /// Samples per optimizer step.
    pub batch_size: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Fraction of the training subjects held out for validation (early stopping, LR schedule).
    pub val_fraction: f64,
    /// `participants.tsv` column to group folds by (leave-one-group-out when it has ≤ `folds`
    /// values).
    pub group_by: Option<String>,
    /// `participants.tsv` column holding the dataset's own `train`/`test` split.
    pub split_column: Option<String>,
    /// Intensity normalisation; `None` = automatic: MedicalNet's z-score over non-zero voxels
    /// when a MedicalNet checkpoint initialises any experiment (the statistics its weights were
    /// pretrained on), else z-score over the head foreground.
    #[serde(default)]
    pub normalisation: Option<Normalisation>,
    /// Model grid voxel size in mm (isotropic).
    pub voxel_mm: f64,
    /// Model grid field of view in mm along R, A, S; the grid shape is this / `voxel_mm`.
    pub fov_mm: [f64; 3],
    /// Seed of every random choice (folds, sampling, augmentation, initialisation).
    pub seed: u64,
    /// burn device (`cpu`; `cuda`, `cuda:N`; `vulkan`, `vulkan:N`).
    pub device: String,
    /// Training augmentation.
    pub augment: Augment,
    /// Re-estimate batch-norm running statistics over the training set after every epoch.
    #[serde(default = "yes")]
    pub recalibrate_bn: bool,
    /// A model package (`models/NAME`) whose fold weights start every fold (fine-tuning).
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    /// How the exported package's threshold is chosen. It does not change training: a rerun
    /// with another rule resumes the finished folds and reports (and exports) under the new one.
    #[serde(default)]
    pub threshold_rule: ThresholdRule,
}

fn plateau_default() -> usize {
    5
}

fn yes() -> bool {
    true
}

impl Default for CvConfig {
    fn default() -> Self {
        Self {
            data: PathBuf::new(),
            archs: vec!["resnet18".into()],
            layout: Layout::Medicalnet,
            width_mult: 1.0,
            pooling: Pooling::Mean,
            roi_weight: 0.0,
            pretrained: vec![None],
            train_layers: "all".into(),
            modalities: vec![vec![Modality::Flair]],
            folds: 5,
            epochs: 30,
            patience: 10,
            plateau_patience: plateau_default(),
            batch_size: 2,
            lr: 1e-3,
            val_fraction: 0.2,
            group_by: None,
            split_column: None,
            normalisation: None,
            voxel_mm: 2.0,
            fov_mm: [192.0, 224.0, 192.0],
            seed: 1,
            device: "cpu".into(),
            augment: Augment::default(),
            recalibrate_bn: true,
            init_from: None,
            threshold_rule: ThresholdRule::default(),
        }
    }
}

/// A documented training recipe (`fcdtrain cv --preset`): a [`CvConfig`] whose fields the
/// command line can still override.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// The CPU recipe: 5-fold CV of 40 subjects at 2 mm in about 25 minutes on two cores.
    /// ResNet-10 ×0.125 (MedicalNet layout, 16 mm feature cells) on a 2 mm grid of
    /// 168×200×168 mm, a log-mean-exp head (sharpness 8) so one small lesion can decide, the
    /// lesion-map loss (weight 5) so the per-voxel scores learn where the lesion is, Adam at
    /// 2·10⁻³, 18 epochs (25 minutes for 40 subjects on two cores).
    Quick,
}

impl Preset {
    /// The recipe's configuration (the data path left empty).
    pub fn config(self) -> CvConfig {
        match self {
            Preset::Quick => CvConfig {
                archs: vec!["resnet10".into()],
                width_mult: 0.125,
                pooling: Pooling::Lse { sharpness: 8.0 },
                roi_weight: 5.0,
                lr: 2e-3,
                voxel_mm: 2.0,
                fov_mm: [168.0, 200.0, 168.0],
                epochs: 18,
                patience: 20,
                plateau_patience: 20,
                ..CvConfig::default()
            },
        }
    }
}

/// One cell of the experiment grid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Experiment {
    /// Directory and table name, e.g. `resnet10_none_all_flair`.
    pub name: String,
    /// The network (input channels = number of modalities).
    pub arch: ArchSpec,
    /// MedicalNet checkpoint, or `None` for a random start.
    pub pretrained: Option<PathBuf>,
    /// Model package whose weights start every fold (fine-tuning), or `None`.
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    /// Which parts train.
    pub train_layers: String,
    /// Input channels in tensor order.
    pub modalities: Vec<Modality>,
}

impl Experiment {
    /// The transfer-learning column of the report: `none` or the checkpoint's file stem.
    pub fn tl_label(&self) -> String {
        let stem = |p: &PathBuf| {
            p.file_stem()
                .map_or_else(|| p.display().to_string(), |s| s.to_string_lossy().into())
        };
        match (&self.init_from, &self.pretrained) {
            (Some(package), _) => format!("pkg-{}", stem(package)),
            (None, None) => "none".into(),
            (None, Some(p)) => stem(p),
        }
    }

    /// The modality column: `FLAIR`, `T1w`, `FLAIR+T1w`.
    pub fn modality_label(&self) -> String {
        modality_label(&self.modalities)
    }
}

/// `FLAIR`, `T1w`, `FLAIR+T1w`.
pub fn modality_label(modalities: &[Modality]) -> String {
    modalities.iter().map(ToString::to_string).collect::<Vec<_>>().join("+")
}

/// Parses one channel set: `flair`, `t1w`, `flair+t1w` (the first is the reference grid).
pub fn parse_modalities(text: &str) -> Result<Vec<Modality>, ConfigError> {
    let mut out = Vec::new();
    for part in text.split('+') {
        let m = match part.trim().to_ascii_lowercase().as_str() {
            "flair" => Modality::Flair,
            "t1w" | "t1" => Modality::T1w,
            other => {
                return Err(ConfigError::Bad {
                    option: "modality",
                    value: text.into(),
                    rule: format!("unknown modality `{other}`: expected flair, t1w or flair+t1w"),
                });
            }
        };
        if out.contains(&m) {
            return Err(ConfigError::Bad {
                option: "modality",
                value: text.into(),
                rule: "a modality appears twice".into(),
            });
        }
        out.push(m);
    }
    Ok(out)
}

impl CvConfig {
    /// The preprocessing recipe: a RAS grid of `voxel_mm` covering `fov_mm`, normalised as
    /// [`Self::normalisation`] says (one recipe for every experiment of the run, so they share
    /// the cache and compare on the same input).
    pub fn recipe(&self) -> Recipe {
        Recipe {
            voxel_mm: [self.voxel_mm; 3],
            shape: self.fov_mm.map(|f| ((f / self.voxel_mm).round() as usize).max(1)),
            normalisation: self.normalisation(),
        }
    }

    /// The normalisation in use: the chosen one, else MedicalNet's z-score over non-zero voxels
    /// when a MedicalNet checkpoint is among the initialisations, else z-score over the head
    /// foreground (zero outside it).
    pub fn normalisation(&self) -> Normalisation {
        self.normalisation
            .unwrap_or(if self.pretrained.iter().any(Option::is_some) {
                Normalisation::ZscoreNonzero
            } else {
                Normalisation::ZscoreForeground
            })
    }

    /// Checks every option, naming the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |option, value: String, rule: &str| {
            Err(ConfigError::Bad {
                option,
                value,
                rule: rule.into(),
            })
        };
        if self.folds < 2 && self.split_column.is_none() {
            return bad("folds", self.folds.to_string(), "need at least 2 folds");
        }
        if !(self.roi_weight.is_finite() && self.roi_weight >= 0.0) {
            return bad("roi-weight", self.roi_weight.to_string(), "must be ≥ 0");
        }
        if self.epochs == 0 {
            return bad("epochs", "0".into(), "need at least one epoch");
        }
        if self.batch_size == 0 {
            return bad("batch-size", "0".into(), "need at least one sample per batch");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", self.lr.to_string(), "must be a positive number");
        }
        if !(0.0..0.9).contains(&self.val_fraction) {
            return bad("val-fraction", self.val_fraction.to_string(), "must be in [0, 0.9)");
        }
        if !(self.voxel_mm.is_finite() && self.voxel_mm > 0.0) {
            return bad("voxel-mm", self.voxel_mm.to_string(), "must be a positive number");
        }
        if !self.fov_mm.iter().all(|f| f.is_finite() && *f >= self.voxel_mm) {
            return bad(
                "fov-mm",
                format!("{:?}", self.fov_mm),
                "every axis must be at least one voxel",
            );
        }
        if let ThresholdRule::Sensitivity { target } = self.threshold_rule
            && !(target > 0.0 && target <= 1.0)
        {
            return bad("target-sensitivity", target.to_string(), "must be in (0, 1]");
        }
        if let Some(dir) = &self.init_from
            && self.pretrained.iter().any(Option::is_some)
        {
            return bad(
                "init-from",
                dir.display().to_string(),
                "cannot be combined with a --pretrained checkpoint",
            );
        }
        if self.archs.is_empty() || self.pretrained.is_empty() || self.modalities.is_empty() {
            return bad(
                "arch",
                String::new(),
                "need at least one architecture, init and modality",
            );
        }
        if let Some(p) = self.pretrained.iter().flatten().find(|p| !p.is_file()) {
            return bad("pretrained", p.display().to_string(), "no such checkpoint file");
        }
        self.train_layers
            .parse::<TrainLayers>()
            .map_err(|source| ConfigError::Arch {
                value: self.train_layers.clone(),
                source: Box::new(source),
            })?;
        self.recipe().validate().map_err(|e| ConfigError::Bad {
            option: "voxel-mm",
            value: self.voxel_mm.to_string(),
            rule: e.to_string(),
        })?;
        self.experiments().map(|_| ())
    }

    /// Every combination of architecture × initialisation × modality set.
    pub fn experiments(&self) -> Result<Vec<Experiment>, ConfigError> {
        let mut out = Vec::new();
        for name in &self.archs {
            let mut arch = ArchSpec::from_name(name).map_err(|e| ConfigError::Arch {
                value: name.clone(),
                source: Box::new(ModelError::Arch(e)),
            })?;
            arch.layout = self.layout;
            arch.width_mult = self.width_mult;
            arch.pooling = self.pooling;
            for pretrained in &self.pretrained {
                for modalities in &self.modalities {
                    let mut arch = arch.clone();
                    arch.in_channels = modalities.len();
                    arch.validate().map_err(|e| ConfigError::Arch {
                        value: name.clone(),
                        source: Box::new(ModelError::Arch(e)),
                    })?;
                    let mut exp = Experiment {
                        name: String::new(),
                        arch,
                        pretrained: pretrained.clone(),
                        init_from: self.init_from.clone(),
                        train_layers: self.train_layers.clone(),
                        modalities: modalities.clone(),
                    };
                    exp.name = sanitize(&format!(
                        "{}_{}_{}_{}",
                        name.trim().to_ascii_lowercase(),
                        exp.tl_label(),
                        self.train_layers.replace(',', "-"),
                        exp.modality_label().to_ascii_lowercase()
                    ));
                    out.push(exp);
                }
            }
        }
        Ok(out)
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.+".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_and_recipe() {
        let cfg = CvConfig {
            archs: vec!["resnet10".into(), "resnet18".into()],
            modalities: vec![vec![Modality::Flair], vec![Modality::Flair, Modality::T1w]],
            ..CvConfig::default()
        };
        let exps = cfg.experiments().unwrap();
        assert_eq!(exps.len(), 4);
        assert_eq!(exps[1].name, "resnet10_none_all_flair+t1w");
        assert_eq!(exps[1].arch.in_channels, 2);
        assert_eq!(cfg.recipe().shape, [96, 112, 96]);
        assert!(parse_modalities("flair+t1w").is_ok());
        assert!(parse_modalities("dwi").unwrap_err().to_string().contains("dwi"));
        let bad = CvConfig {
            archs: vec!["resnet11".into()],
            ..CvConfig::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("resnet11"));
        let bad = CvConfig {
            threshold_rule: ThresholdRule::Sensitivity { target: 1.5 },
            ..CvConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("--target-sensitivity 1.5")
        );
    }

    /// A run's config.json from before the threshold rule existed reads with the default rule.
    #[test]
    fn threshold_rule_defaults_and_round_trips() {
        let mut json = serde_json::to_value(CvConfig::default()).unwrap();
        assert_eq!(
            json["threshold_rule"],
            serde_json::json!({"rule": "sensitivity", "target": 0.9})
        );
        json.as_object_mut().unwrap().remove("threshold_rule");
        let old: CvConfig = serde_json::from_value(json).unwrap();
        assert_eq!(old.threshold_rule, ThresholdRule::Sensitivity { target: 0.9 });
        let youden = CvConfig {
            threshold_rule: ThresholdRule::Youden,
            ..CvConfig::default()
        };
        let back: CvConfig = serde_json::from_str(&serde_json::to_string(&youden).unwrap()).unwrap();
        assert_eq!(back, youden);
    }
}
