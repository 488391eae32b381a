//! Architecture spec of the 3D ResNets (MedicalNet layout or classic strided layout): one truth
//! for the trainer's burn network, the ONNX writer and the node's manifest checks.

use serde::{Deserialize, Serialize};

/// Why an architecture spec cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ArchError {
    /// An architecture name that is not `resnet10|18|34|50`.
    #[error("unknown architecture {name:?}: expected resnet10, resnet18, resnet34 or resnet50")]
    UnknownName { name: String },
    /// A field value out of range.
    #[error("architecture field `{field}` = {value}: {rule}")]
    BadField {
        field: &'static str,
        value: String,
        rule: &'static str,
    },
}

/// Residual block kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Block {
    /// Two 3×3×3 convolutions (ResNet-10/18/34).
    Basic,
    /// 1×1×1 → 3×3×3 → 1×1×1 with 4× expansion (ResNet-50).
    Bottleneck,
}

/// How a block's input is matched to its output when shape or width changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shortcut {
    /// Type A: subsample by the stride (avg-pool with kernel 1) and zero-pad the channels; no
    /// weights. MedicalNet uses it for ResNet-18/34.
    A,
    /// Type B: 1×1×1 convolution with the stride, then batch norm. MedicalNet: ResNet-10/50.
    B,
}

/// Where the network downsamples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// MedicalNet (Chen et al. 2019): layer2 stride 2, layer3 stride 1 dilation 2, layer4
    /// stride 1 dilation 4; total stride 8 with the default stem.
    Medicalnet,
    /// Classic 3D ResNet: layers 2–4 stride 2, no dilation; total stride 32.
    Strided,
}

/// One stage (`layer1`…`layer4`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage {
    /// Blocks in the stage.
    pub blocks: usize,
    /// Width of the block's inner convolutions ("planes").
    pub planes: usize,
    /// Output channels (planes × expansion).
    pub out_channels: usize,
    /// Stride of the stage's first block (applied on all three axes).
    pub stride: usize,
    /// Dilation of the 3×3×3 convolutions in the stage.
    pub dilation: usize,
}

/// How the head turns the per-voxel class scores `M_c(v) = Σ_k w_ck A_k(v) + b_c` (the linear
/// classifier applied at every feature voxel) into logits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Pooling {
    /// Mean over the feature voxels (global average pooling, then the classifier): a lesion
    /// filling one feature voxel of ~1,500 moves the logit by 1/1,500 of its score.
    #[default]
    Mean,
    /// Log-mean-exp with sharpness `r`: `(1/r) · ln((1/Z) Σ_v exp(r · M_c(v)))`, a smooth
    /// maximum between the mean (r → 0) and the maximum (r → ∞), so one hot voxel can decide.
    /// Its gradient weights sum to one over the voxels, so Grad-CAM is still
    /// `ReLU(Σ_k w_ck A_k) / Z` from forward outputs. `fcdtrain` pins class 0's classifier
    /// row at zero for this head, so class 1's per-voxel score is the log-odds map.
    Lse {
        /// r > 0.
        sharpness: f64,
    },
}

impl Pooling {
    /// Whether this is the mean (the serialised default, left out of manifests).
    pub fn is_mean(&self) -> bool {
        matches!(self, Pooling::Mean)
    }
}

impl std::fmt::Display for Pooling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pooling::Mean => f.write_str("mean"),
            Pooling::Lse { sharpness } => write!(f, "lse:{sharpness}"),
        }
    }
}

impl std::str::FromStr for Pooling {
    type Err = ArchError;

    /// `mean` or `lse:R` (e.g. `lse:4`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim().to_ascii_lowercase();
        let bad = || ArchError::BadField {
            field: "pooling",
            value: s.to_string(),
            rule: "must be `mean` or `lse:R` with R > 0 (e.g. lse:4)",
        };
        if text == "mean" {
            return Ok(Pooling::Mean);
        }
        let sharpness: f64 = text.strip_prefix("lse:").ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let pooling = Pooling::Lse { sharpness };
        pooling.validate().map_err(|_| bad())?;
        Ok(pooling)
    }
}

impl Pooling {
    fn validate(&self) -> Result<(), ArchError> {
        match *self {
            Pooling::Lse { sharpness } if !(sharpness.is_finite() && sharpness > 0.0 && sharpness <= 1e3) => {
                Err(ArchError::BadField {
                    field: "pooling.sharpness",
                    value: sharpness.to_string(),
                    rule: "must be in (0, 1000]",
                })
            }
            _ => Ok(()),
        }
    }
}

/// A 3D ResNet: depth, layout, stem stride, input channels, width multiplier, classes, head
/// pooling. Head = a linear classifier pooled over the feature voxels. Serialised into the model
/// manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchSpec {
    /// 10, 18, 34 or 50.
    pub depth: u32,
    /// Downsampling layout.
    pub layout: Layout,
    /// Stride of the 7×7×7 stem convolution along [depth, height, width]: [2, 2, 2]
    /// (MedicalNet) or [1, 2, 2] (keeps through-plane resolution).
    pub stem_stride: [usize; 3],
    /// Input channels (one per modality, e.g. FLAIR, or T1w + FLAIR).
    pub in_channels: usize,
    /// Width multiplier of every convolution (1.0 = 64/128/256/512).
    pub width_mult: f64,
    /// Output classes.
    pub num_classes: usize,
    /// Shortcut type; MedicalNet's choice for the depth when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shortcut: Option<Shortcut>,
    /// Head pooling; the mean (global average pooling) when absent.
    #[serde(default, skip_serializing_if = "Pooling::is_mean")]
    pub pooling: Pooling,
}

impl ArchSpec {
    /// A spec by name (`resnet18`), MedicalNet layout, one input channel, two classes.
    pub fn from_name(name: &str) -> Result<Self, ArchError> {
        let depth = match name.trim().to_ascii_lowercase().as_str() {
            "resnet10" => 10,
            "resnet18" => 18,
            "resnet34" => 34,
            "resnet50" => 50,
            _ => return Err(ArchError::UnknownName { name: name.to_string() }),
        };
        Ok(Self {
            depth,
            layout: Layout::Medicalnet,
            stem_stride: [2, 2, 2],
            in_channels: 1,
            width_mult: 1.0,
            num_classes: 2,
            shortcut: None,
            pooling: Pooling::Mean,
        })
    }

    /// `resnet18` etc.
    pub fn name(&self) -> String {
        format!("resnet{}", self.depth)
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ArchError> {
        let bad = |field, value: String, rule| Err(ArchError::BadField { field, value, rule });
        if ![10, 18, 34, 50].contains(&self.depth) {
            return bad("depth", self.depth.to_string(), "must be 10, 18, 34 or 50");
        }
        if self.stem_stride.iter().any(|s| !(1..=2).contains(s)) {
            return bad(
                "stem_stride",
                format!("{:?}", self.stem_stride),
                "each stride must be 1 or 2",
            );
        }
        if self.in_channels == 0 || self.in_channels > 16 {
            return bad("in_channels", self.in_channels.to_string(), "must be 1..=16");
        }
        if !(self.width_mult > 0.0 && self.width_mult <= 4.0) || (64.0 * self.width_mult).round() < 1.0 {
            return bad(
                "width_mult",
                self.width_mult.to_string(),
                "must be in (0, 4] and leave ≥ 1 stem channel",
            );
        }
        if self.num_classes < 2 {
            return bad("num_classes", self.num_classes.to_string(), "must be ≥ 2");
        }
        self.pooling.validate()
    }

    /// Basic for 10/18/34, bottleneck for 50.
    pub fn block(&self) -> Block {
        if self.depth == 50 {
            Block::Bottleneck
        } else {
            Block::Basic
        }
    }

    /// Output channels per block plane: 1 (basic) or 4 (bottleneck).
    pub fn expansion(&self) -> usize {
        match self.block() {
            Block::Basic => 1,
            Block::Bottleneck => 4,
        }
    }

    /// The shortcut in use: the explicit one, else MedicalNet's (A for 18/34, B for 10/50).
    pub fn shortcut(&self) -> Shortcut {
        self.shortcut.unwrap_or(if matches!(self.depth, 18 | 34) {
            Shortcut::A
        } else {
            Shortcut::B
        })
    }

    /// Channels out of the stem convolution.
    pub fn stem_channels(&self) -> usize {
        self.scaled(64)
    }

    fn scaled(&self, width: usize) -> usize {
        ((width as f64 * self.width_mult).round() as usize).max(1)
    }

    /// The four stages with their blocks, widths, strides and dilations.
    pub fn stages(&self) -> [Stage; 4] {
        let blocks = match self.depth {
            10 => [1, 1, 1, 1],
            18 => [2, 2, 2, 2],
            _ => [3, 4, 6, 3],
        };
        let (strides, dilations) = match self.layout {
            Layout::Medicalnet => ([1, 2, 1, 1], [1, 1, 2, 4]),
            Layout::Strided => ([1, 2, 2, 2], [1, 1, 1, 1]),
        };
        std::array::from_fn(|s| {
            let planes = self.scaled(64 << s);
            Stage {
                blocks: blocks[s],
                planes,
                out_channels: planes * self.expansion(),
                stride: strides[s],
                dilation: dilations[s],
            }
        })
    }

    /// Channels of `features`, the tensor fed to global average pooling (= the classifier's
    /// input width).
    pub fn feature_channels(&self) -> usize {
        self.stages()[3].out_channels
    }

    /// Total stride `[depth, height, width]` from input to `features`. Every convolution and
    /// pooling is odd-sized with symmetric padding, so feature voxel f is centred on input
    /// voxel f × stride along each axis.
    pub fn stride(&self) -> [usize; 3] {
        let stages: usize = self.stages().iter().map(|s| s.stride).product();
        self.stem_stride.map(|s| s * 2 * stages)
    }

    /// Spatial size `[depth, height, width]` of `features` for an input of `input` voxels.
    pub fn feature_shape(&self, input: [usize; 3]) -> [usize; 3] {
        // conv k7 p3 stride s: floor((n − 1) / s) + 1; the same rule holds for the max-pool
        // (k3 p1 s2) and the 3×3×3 convolutions with padding = dilation.
        let down = |n: usize, s: usize| (n.max(1) - 1) / s + 1;
        std::array::from_fn(|a| {
            let mut n = down(input[a], self.stem_stride[a]);
            n = down(n, 2);
            for stage in self.stages() {
                n = down(n, stage.stride);
            }
            n
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medicalnet_resnet18() {
        let a = ArchSpec::from_name("ResNet18").unwrap();
        a.validate().unwrap();
        assert_eq!(a.shortcut(), Shortcut::A);
        let s = a.stages();
        assert_eq!(s.map(|s| s.blocks), [2, 2, 2, 2]);
        assert_eq!(s.map(|s| s.out_channels), [64, 128, 256, 512]);
        assert_eq!(s.map(|s| (s.stride, s.dilation)), [(1, 1), (2, 1), (1, 2), (1, 4)]);
        // Total stride 8: 2 (stem) × 2 (pool) × 2 (layer2).
        assert_eq!(a.feature_shape([128, 128, 128]), [16, 16, 16]);
        assert_eq!(a.feature_shape([56, 448, 448]), [7, 56, 56]);
        assert_eq!(a.stride(), [8, 8, 8]);
    }

    #[test]
    fn other_depths_layouts_and_widths() {
        let mut a = ArchSpec::from_name("resnet50").unwrap();
        assert_eq!(
            (a.block(), a.shortcut(), a.feature_channels()),
            (Block::Bottleneck, Shortcut::B, 2048)
        );
        a.layout = Layout::Strided;
        assert_eq!(a.feature_shape([128, 128, 128]), [4, 4, 4]);
        a.stem_stride = [1, 2, 2];
        assert_eq!(a.feature_shape([64, 128, 128]), [4, 4, 4]);
        assert_eq!(a.stride(), [16, 32, 32]);
        let mut small = ArchSpec::from_name("resnet10").unwrap();
        small.width_mult = 0.25;
        assert_eq!((small.stem_channels(), small.feature_channels()), (16, 128));
        assert_eq!(small.stages().map(|s| s.blocks), [1, 1, 1, 1]);
        assert_eq!(
            ArchSpec::from_name("resnet34").unwrap().stages().map(|s| s.blocks),
            [3, 4, 6, 3]
        );
    }

    #[test]
    fn pooling_parses_validates_and_stays_out_of_mean_manifests() {
        assert_eq!("mean".parse::<Pooling>().unwrap(), Pooling::Mean);
        assert_eq!(" LSE:4 ".parse::<Pooling>().unwrap(), Pooling::Lse { sharpness: 4.0 });
        for bad in ["max", "lse", "lse:0", "lse:-1", "lse:nan", "lse:1e9"] {
            let err = bad.parse::<Pooling>().unwrap_err().to_string();
            assert!(err.contains("pooling") && err.contains("lse:R"), "{bad}: {err}");
        }
        let mean = ArchSpec::from_name("resnet10").unwrap();
        let text = toml::to_string(&mean).unwrap();
        assert!(!text.contains("pooling"), "{text}");
        let lse = ArchSpec {
            pooling: Pooling::Lse { sharpness: 2.5 },
            ..mean.clone()
        };
        let text = toml::to_string(&lse).unwrap();
        assert_eq!(toml::from_str::<ArchSpec>(&text).unwrap(), lse, "{text}");
        let bad = ArchSpec {
            pooling: Pooling::Lse { sharpness: 0.0 },
            ..mean
        };
        assert!(bad.validate().unwrap_err().to_string().contains("pooling.sharpness"));
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(matches!(
            ArchSpec::from_name("vgg16"),
            Err(ArchError::UnknownName { .. })
        ));
        let good = ArchSpec::from_name("resnet18").unwrap();
        for (field, spec) in [
            (
                "depth",
                ArchSpec {
                    depth: 20,
                    ..good.clone()
                },
            ),
            (
                "stem_stride",
                ArchSpec {
                    stem_stride: [3, 2, 2],
                    ..good.clone()
                },
            ),
            (
                "in_channels",
                ArchSpec {
                    in_channels: 0,
                    ..good.clone()
                },
            ),
            (
                "width_mult",
                ArchSpec {
                    width_mult: 0.001,
                    ..good.clone()
                },
            ),
            (
                "num_classes",
                ArchSpec {
                    num_classes: 1,
                    ..good.clone()
                },
            ),
        ] {
            let err = spec.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
        let toml_text = "depth = 18\nlayout = \"medicalnet\"\nstem_stride = [2, 2, 2]\nin_channels = 1\nwidth_mult = 1.0\nnum_classes = 2\n";
        assert_eq!(toml::from_str::<ArchSpec>(toml_text).unwrap(), good);
        assert!(toml::from_str::<ArchSpec>(&format!("{toml_text}extra = 1\n")).is_err());
    }
}
