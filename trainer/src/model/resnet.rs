//! The public 3D ResNet: built from the root library's [`ArchSpec`] (no second copy of the
//! architecture rules), forward to logits and `features`, weights in and out as [`Weights`]
//! (MedicalNet's PyTorch names), and the freeze policy.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::Conv3d;
use burn::nn::{BatchNorm, Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use fcdnode::package::arch::{ArchSpec, Pooling};
use fcdnode::package::weights::Weights;

use super::ModelError;
use super::block::{BlockSpec, ResBlock, batch_norm, conv3d, max_pool3d_k3s2p1};
use super::named::{Loader, NamedParams};

/// Configuration of a [`ResNet3d`]: the architecture spec the node's manifest also carries.
/// Saved as JSON with the run (`config.json`).
#[derive(Config, Debug)]
pub struct ResNet3dConfig {
    /// Depth, layout, stem stride, input channels, width multiplier and classes.
    pub arch: ArchSpec,
}

impl ResNet3dConfig {
    /// A network by name (`resnet10|18|34|50`): MedicalNet layout, one input channel, two
    /// classes; change the spec's public fields for other variants.
    pub fn from_name(name: &str) -> Result<Self, ModelError> {
        Ok(Self::new(ArchSpec::from_name(name)?))
    }

    /// MedicalNet ResNet-10 (basic blocks [1, 1, 1, 1], shortcut B).
    pub fn resnet10() -> Self {
        Self::known(10)
    }

    /// MedicalNet ResNet-18 (basic blocks [2, 2, 2, 2], shortcut A).
    pub fn resnet18() -> Self {
        Self::known(18)
    }

    /// MedicalNet ResNet-34 (basic blocks [3, 4, 6, 3], shortcut A).
    pub fn resnet34() -> Self {
        Self::known(34)
    }

    /// MedicalNet ResNet-50 (bottleneck blocks [3, 4, 6, 3], shortcut B).
    pub fn resnet50() -> Self {
        Self::known(50)
    }

    fn known(depth: u32) -> Self {
        let arch = ArchSpec::from_name(&format!("resnet{depth}")).expect("a known ResNet depth");
        Self::new(arch)
    }

    /// Sets the width multiplier (1.0 = 64/128/256/512 channels).
    pub fn with_width_mult(mut self, width_mult: f64) -> Self {
        self.arch.width_mult = width_mult;
        self
    }

    /// Sets the number of input channels (modalities).
    pub fn with_in_channels(mut self, in_channels: usize) -> Self {
        self.arch.in_channels = in_channels;
        self
    }

    /// A freshly initialised network on `device` (MedicalNet's initialisation: Kaiming normal
    /// fan-out convolutions, unit batch norms). Fails on an invalid spec.
    pub fn init(&self, device: &Device) -> Result<ResNet3d, ModelError> {
        ResNet3d::new(&self.arch, device)
    }
}

/// Where a forward pass can be cut: after a stage (`layer1`…`layer4`). Grad-CAM's target layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tap {
    /// Output of `layer1`.
    Layer1,
    /// Output of `layer2`.
    Layer2,
    /// Output of `layer3`.
    Layer3,
    /// Output of `layer4` = `features`, the input of global average pooling (the default).
    Layer4,
}

impl Tap {
    fn stage(self) -> usize {
        self as usize
    }
}

/// A trainable part of the network, in forward order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    /// `conv1` + `bn1`.
    Stem,
    /// `layer1`.
    Layer1,
    /// `layer2`.
    Layer2,
    /// `layer3`.
    Layer3,
    /// `layer4`.
    Layer4,
    /// The classifier `fc`.
    Fc,
}

impl Part {
    const ALL: [Part; 6] = [
        Part::Stem,
        Part::Layer1,
        Part::Layer2,
        Part::Layer3,
        Part::Layer4,
        Part::Fc,
    ];

    /// The name used on the command line and in parameter names.
    pub fn name(self) -> &'static str {
        match self {
            Part::Stem => "stem",
            Part::Layer1 => "layer1",
            Part::Layer2 => "layer2",
            Part::Layer3 => "layer3",
            Part::Layer4 => "layer4",
            Part::Fc => "fc",
        }
    }
}

impl FromStr for Part {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim().to_ascii_lowercase();
        if matches!(name.as_str(), "conv1" | "bn1") {
            return Ok(Part::Stem);
        }
        Part::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| ModelError::UnknownLayer { name: s.to_string() })
    }
}

/// Which parts train; the others are frozen (no gradients, batch norms keep their running
/// statistics). Parsed from `all`, a list such as `layer4,fc` (the seed paper's choice), or
/// `layer3+` (from a layer on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrainLayers {
    /// Every part trains.
    All,
    /// The given part and every later one train.
    From(Part),
    /// Exactly these parts train.
    Only(BTreeSet<Part>),
}

impl TrainLayers {
    /// The seed paper's policy: `layer4` and `fc` train.
    pub fn paper() -> Self {
        TrainLayers::Only(BTreeSet::from([Part::Layer4, Part::Fc]))
    }

    /// Whether `part` trains.
    pub fn trains(&self, part: Part) -> bool {
        match self {
            TrainLayers::All => true,
            TrainLayers::From(first) => part >= *first,
            TrainLayers::Only(parts) => parts.contains(&part),
        }
    }
}

impl FromStr for TrainLayers {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        if text.eq_ignore_ascii_case("all") {
            return Ok(TrainLayers::All);
        }
        if let Some(first) = text.strip_suffix('+') {
            return Ok(TrainLayers::From(first.parse()?));
        }
        let parts = text.split(',').map(str::parse).collect::<Result<BTreeSet<Part>, _>>()?;
        Ok(TrainLayers::Only(parts))
    }
}

impl fmt::Display for TrainLayers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrainLayers::All => f.write_str("all"),
            TrainLayers::From(first) => write!(f, "{}+", first.name()),
            TrainLayers::Only(parts) => {
                let names: Vec<_> = parts.iter().map(|p| p.name()).collect();
                f.write_str(&names.join(","))
            }
        }
    }
}

/// A 3D ResNet (MedicalNet `resnet.py` semantics): stem conv 7×7×7 → BN → ReLU → max-pool 3/2/1,
/// `layer1`…`layer4`, global average pool, linear head. Field names are PyTorch's.
#[derive(Module, Debug)]
pub struct ResNet3d {
    conv1: Conv3d,
    bn1: BatchNorm,
    layer1: Vec<ResBlock>,
    layer2: Vec<ResBlock>,
    layer3: Vec<ResBlock>,
    layer4: Vec<ResBlock>,
    fc: Linear,
    #[module(skip)]
    arch: ArchSpec,
}

impl ResNet3d {
    /// A freshly initialised network for `arch` on `device`. Fails on an invalid spec.
    pub fn new(arch: &ArchSpec, device: &Device) -> Result<Self, ModelError> {
        arch.validate()?;
        let stem = arch.stem_channels();
        let mut inplanes = stem;
        let mut layers: [Vec<ResBlock>; 4] = Default::default();
        for (layer, stage) in layers.iter_mut().zip(arch.stages()) {
            for b in 0..stage.blocks {
                let spec = BlockSpec {
                    block: arch.block(),
                    shortcut: arch.shortcut(),
                    in_channels: inplanes,
                    planes: stage.planes,
                    out_channels: stage.out_channels,
                    stride: if b == 0 { stage.stride } else { 1 },
                    dilation: stage.dilation,
                };
                layer.push(ResBlock::new(&spec, device));
                inplanes = stage.out_channels;
            }
        }
        let [layer1, layer2, layer3, layer4] = layers;
        Ok(Self {
            conv1: conv3d([arch.in_channels, stem], 7, arch.stem_stride, 1, device),
            bn1: batch_norm(stem, device),
            layer1,
            layer2,
            layer3,
            layer4,
            fc: LinearConfig::new(arch.feature_channels(), arch.num_classes).init(device),
            arch: arch.clone(),
        })
    }

    /// The architecture this network was built from.
    pub fn arch(&self) -> &ArchSpec {
        &self.arch
    }

    /// Class logits and `features` (the output of `layer4`, fed to global average pooling).
    ///
    /// # Shapes
    ///
    /// - input: `[batch, in_channels, depth, height, width]`
    /// - logits: `[batch, num_classes]`
    /// - features: `[batch, feature_channels, fd, fh, fw]` with `[fd, fh, fw]` =
    ///   [`ArchSpec::feature_shape`] of the input's spatial size
    pub fn forward(&self, input: Tensor<5>) -> (Tensor<2>, Tensor<5>) {
        let features = self.forward_until(input, Tap::Layer4);
        (self.head(features.clone()), features)
    }

    /// The activation after stage `tap`.
    ///
    /// # Shapes
    ///
    /// - input: `[batch, in_channels, depth, height, width]`
    /// - output: `[batch, channels of the stage, d, h, w]`
    pub fn forward_until(&self, input: Tensor<5>, tap: Tap) -> Tensor<5> {
        // Stem: conv 7×7×7 → BN → ReLU → max-pool 3×3×3 stride 2.
        let x = relu(self.bn1.forward(self.conv1.forward(input)));
        let mut x = max_pool3d_k3s2p1(x);
        for layer in &self.layers()[..=tap.stage()] {
            x = layer.iter().fold(x, |x, block| block.forward(x));
        }
        x
    }

    /// The rest of the forward pass from the activation after stage `tap`: logits and
    /// `features`.
    ///
    /// # Shapes
    ///
    /// - activation: `[batch, channels of the stage, d, h, w]`
    /// - logits: `[batch, num_classes]`; features: `[batch, feature_channels, fd, fh, fw]`
    pub fn forward_after(&self, tap: Tap, activation: Tensor<5>) -> (Tensor<2>, Tensor<5>) {
        let mut x = activation;
        for layer in &self.layers()[tap.stage() + 1..] {
            x = layer.iter().fold(x, |x, block| block.forward(x));
        }
        (self.head(x.clone()), x)
    }

    /// The head: the linear classifier pooled over the feature voxels as the spec's
    /// [`Pooling`] says (the mean: global average pooling, then the classifier).
    ///
    /// # Shapes
    ///
    /// - features: `[batch, feature_channels, fd, fh, fw]`
    /// - output: `[batch, num_classes]`
    pub fn head(&self, features: Tensor<5>) -> Tensor<2> {
        let [b, c, d, h, w] = features.dims();
        match self.arch.pooling {
            // The classifier is linear, so pooling first is the same and cheaper.
            Pooling::Mean => self
                .fc
                .forward(features.reshape([b, c, d * h * w]).mean_dim(2).reshape([b, c])),
            Pooling::Lse { sharpness } => {
                let classes = self.arch.num_classes;
                let scores = self
                    .voxel_scores(features)
                    .reshape([b, classes, d * h * w])
                    .mul_scalar(sharpness);
                // A stable log-mean-exp over the voxels.
                let peak = scores.clone().max_dim(2).detach();
                let lse = (scores - peak.clone()).exp().mean_dim(2).log() + peak;
                lse.reshape([b, classes]).div_scalar(sharpness)
            }
        }
    }

    /// The classifier at every feature voxel: `M_c(v) = Σ_k w_ck A_k(v) + b_c`. With
    /// log-mean-exp pooling class 0 is the reference, pinned at 0 (its classifier row is zeroed
    /// here and in [`Self::to_weights`]), so `M_1` is the per-voxel log-odds of a two-class
    /// head and Grad-CAM of class 1 shows exactly it (less the bias).
    ///
    /// # Shapes
    ///
    /// - features: `[batch, feature_channels, fd, fh, fw]`
    /// - output: `[batch, num_classes, fd, fh, fw]`
    pub fn voxel_scores(&self, features: Tensor<5>) -> Tensor<5> {
        let [b, c, d, h, w] = features.dims();
        let classes = self.arch.num_classes;
        let scores = self.fc.forward(features.reshape([b, c, d * h * w]).swap_dims(1, 2));
        let scores = match self.arch.pooling {
            Pooling::Mean => scores,
            Pooling::Lse { .. } => {
                let mask = self.pinned_mask(&scores.device());
                scores * mask
            }
        };
        scores.swap_dims(1, 2).reshape([b, classes, d, h, w])
    }

    /// `[1, 1, classes]`: 0 for the reference class 0, 1 for the others.
    fn pinned_mask(&self, device: &Device) -> Tensor<3> {
        let classes = self.arch.num_classes;
        let mask: Vec<f32> = (0..classes).map(|c| if c == 0 { 0.0 } else { 1.0 }).collect();
        Tensor::<1>::from_data(TensorData::new(mask, [classes]), device).reshape([1, 1, classes])
    }

    fn layers(&self) -> [&Vec<ResBlock>; 4] {
        [&self.layer1, &self.layer2, &self.layer3, &self.layer4]
    }

    /// Every tensor under MedicalNet's PyTorch names (`fc.weight` as `[classes, features]`),
    /// exactly the names and shapes of [`fcdnode::package::weights::parameter_shapes`].
    pub fn to_weights(&self) -> Result<Weights, ModelError> {
        let mut out = Weights::default();
        self.conv1.export("conv1", &mut out)?;
        self.bn1.export("bn1", &mut out)?;
        for (i, layer) in self.layers().into_iter().enumerate() {
            for (b, block) in layer.iter().enumerate() {
                block.export(&format!("layer{}.{b}", i + 1), &mut out)?;
            }
        }
        self.fc.export("fc", &mut out)?;
        if matches!(self.arch.pooling, Pooling::Lse { .. }) {
            // The reference class as the forward pass sees it (see `voxel_scores`).
            for name in ["fc.weight", "fc.bias"] {
                if let Some(tensor) = out.0.get_mut(name) {
                    tensor.index_axis_mut(ndarray::Axis(0), 0).fill(0.0);
                }
            }
        }
        Ok(out)
    }

    /// Every tensor replaced from `weights`, which must fit the architecture
    /// ([`Weights::check`]: all present, right shapes, finite). Extra tensors are ignored.
    pub fn load_weights(self, weights: &Weights) -> Result<Self, ModelError> {
        weights.check(&self.arch)?;
        Ok(self.load_weights_partial(weights)?.0)
    }

    /// The tensors `weights` has replaced, the others kept (e.g. a fresh `fc` over a pretrained
    /// backbone). A tensor with the wrong shape is refused. Returns what was loaded and kept.
    pub fn load_weights_partial(self, weights: &Weights) -> Result<(Self, LoadReport), ModelError> {
        let mut from = Loader::new(weights);
        let model = self.import(&mut from)?;
        let report = LoadReport {
            loaded: from.loaded,
            kept: from.kept,
        };
        Ok((model, report))
    }

    /// Sum of the classifier weights: a cheap value to read back so a benchmark waits for an
    /// optimizer step to finish on asynchronous devices.
    pub fn fc_weight_sum(&self) -> Tensor<1> {
        self.fc.weight.val().sum()
    }

    /// Sets the running-statistics momentum of every batch norm: the weight of the current batch
    /// in the running mean and variance (1 = replace, 1/(n+1) = running average of n+1 batches).
    pub fn set_bn_momentum(&mut self, momentum: f64) {
        self.bn1.momentum = momentum;
        for layer in [&mut self.layer1, &mut self.layer2, &mut self.layer3, &mut self.layer4] {
            for block in layer {
                block.set_bn_momentum(momentum);
            }
        }
    }

    /// Freezes every part `train` does not name: no gradients, and its batch norms use (and keep)
    /// their running statistics; the named parts are made trainable. Frozen parameters are then
    /// left out of optimizer steps.
    pub fn freeze_except(mut self, train: &TrainLayers) -> Self {
        fn set<M: Module>(module: M, trains: bool) -> M {
            if trains { module.unfreeze() } else { module.freeze() }
        }
        let stem = train.trains(Part::Stem);
        self.conv1 = set(self.conv1, stem);
        self.bn1 = set(self.bn1, stem);
        self.layer1 = set(self.layer1, train.trains(Part::Layer1));
        self.layer2 = set(self.layer2, train.trains(Part::Layer2));
        self.layer3 = set(self.layer3, train.trains(Part::Layer3));
        self.layer4 = set(self.layer4, train.trains(Part::Layer4));
        self.fc = set(self.fc, train.trains(Part::Fc));
        self
    }
}

impl ResNet3d {
    /// Every tensor `from` has replaced, by PyTorch name.
    fn import(mut self, from: &mut Loader<'_>) -> Result<Self, ModelError> {
        self.conv1 = self.conv1.import("conv1", from)?;
        self.bn1 = self.bn1.import("bn1", from)?;
        let import_layer = |layer: Vec<ResBlock>, i: usize, from: &mut Loader<'_>| {
            layer
                .into_iter()
                .enumerate()
                .map(|(b, block)| block.import(&format!("layer{i}.{b}"), from))
                .collect::<Result<Vec<_>, _>>()
        };
        self.layer1 = import_layer(self.layer1, 1, from)?;
        self.layer2 = import_layer(self.layer2, 2, from)?;
        self.layer3 = import_layer(self.layer3, 3, from)?;
        self.layer4 = import_layer(self.layer4, 4, from)?;
        self.fc = self.fc.import("fc", from)?;
        Ok(self)
    }
}

/// What [`ResNet3d::load_weights_partial`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Tensors set from the weight set.
    pub loaded: Vec<String>,
    /// Tensors the weight set lacked, left as initialised.
    pub kept: Vec<String>,
}
