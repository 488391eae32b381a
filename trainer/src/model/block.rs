//! Private building blocks of the 3D ResNets: basic and bottleneck bodies, shortcut A (subsample,
//! then zero channels) and B (1×1×1 convolution and batch norm), dilation, and the 3D max pool
//! burn 0.22 lacks. Tensors are `[batch, channel, depth, height, width]`.

use burn::module::Module;
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, PaddingConfig3d};
use burn::tensor::activation::relu;
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{Device, Tensor, s};
use fcdnode::package::arch::{Block, Shortcut};
use fcdnode::package::weights::{BN_EPS, Weights, needs_downsample};

use super::ModelError;
use super::named::{Loader, NamedParams, join};

/// A convolution without bias, as every MedicalNet convolution is: cubic `kernel`, `stride` per
/// axis, padding = dilation × (kernel − 1) / 2 (the output keeps ⌈n / stride⌉ voxels).
pub(crate) fn conv3d(
    channels: [usize; 2],
    kernel: usize,
    stride: [usize; 3],
    dilation: usize,
    device: &Device,
) -> Conv3d {
    let pad = dilation * (kernel - 1) / 2;
    Conv3dConfig::new(channels, [kernel; 3])
        .with_stride(stride)
        .with_dilation([dilation; 3])
        .with_padding(PaddingConfig3d::Explicit(pad, pad, pad))
        .with_bias(false)
        // MedicalNet: kaiming_normal_(mode="fan_out") for every convolution.
        .with_initializer(Initializer::KaimingNormal {
            gain: std::f64::consts::SQRT_2,
            fan_out_only: true,
        })
        .init(device)
}

/// Batch norm with PyTorch's epsilon and momentum (MedicalNet keeps both at their defaults).
pub(crate) fn batch_norm(channels: usize, device: &Device) -> BatchNorm {
    BatchNormConfig::new(channels)
        .with_epsilon(f64::from(BN_EPS))
        .init(device)
}

/// 3D max pooling with kernel 3, stride 2, padding 1 (MedicalNet's stem pool), done separably:
/// a 2D max pool over (height, width), then one over depth. A maximum over a box is the maximum
/// of the maxima over its rows, so the result equals PyTorch's `MaxPool3d(3, 2, 1)` exactly.
///
/// # Shapes
///
/// - input: `[batch, channel, depth, height, width]`
/// - output: `[batch, channel, (depth − 1) / 2 + 1, (height − 1) / 2 + 1, (width − 1) / 2 + 1]`
pub(crate) fn max_pool3d_k3s2p1(input: Tensor<5>) -> Tensor<5> {
    let [b, c, d, h, w] = input.dims();
    // (height, width): depth slices become channels of a 2D pool.
    let hw = max_pool2d(
        input.reshape([b, c * d, h, w]),
        MaxPoolOptions::new([3, 3]).with_stride([2, 2]).with_padding([1, 1]),
    );
    let [_, _, h2, w2] = hw.dims();
    // Depth: pool a [depth, height·width] plane with a 3 × 1 window.
    let dd = max_pool2d(
        hw.reshape([b, c, d, h2 * w2]),
        MaxPoolOptions::new([3, 1]).with_stride([2, 1]).with_padding([1, 0]),
    );
    let [_, _, d2, _] = dd.dims();
    dd.reshape([b, c, d2, h2, w2])
}

/// Two 3×3×3 convolutions (ResNet-10/18/34).
#[derive(Module, Debug)]
pub(crate) struct BasicBody {
    conv1: Conv3d,
    bn1: BatchNorm,
    conv2: Conv3d,
    bn2: BatchNorm,
}

/// 1×1×1 → 3×3×3 → 1×1×1 (planes × 4), as in ResNet-50.
#[derive(Module, Debug)]
pub(crate) struct BottleneckBody {
    conv1: Conv3d,
    bn1: BatchNorm,
    conv2: Conv3d,
    bn2: BatchNorm,
    conv3: Conv3d,
    bn3: BatchNorm,
}

/// The residual branch of a block. (A network holds at most 16 of them: boxing the larger
/// variant would buy nothing.)
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub(crate) enum Body {
    Basic(BasicBody),
    Bottleneck(BottleneckBody),
}

/// Shortcut B: `downsample.0` (1×1×1 convolution with the stride) and `downsample.1` (batch norm).
#[derive(Module, Debug)]
pub(crate) struct Projection {
    conv: Conv3d,
    bn: BatchNorm,
}

/// One residual block: body + shortcut, added, then ReLU.
#[derive(Module, Debug)]
pub(crate) struct ResBlock {
    body: Body,
    /// Shortcut B when the block changes shape or width.
    downsample: Option<Projection>,
    /// Shortcut A: subsampling stride (1 = none) …
    pad_stride: usize,
    /// … and zero channels appended after the input's (0 = none).
    pad_channels: usize,
}

/// What one block is made of.
pub(crate) struct BlockSpec {
    pub block: Block,
    pub shortcut: Shortcut,
    pub in_channels: usize,
    pub planes: usize,
    pub out_channels: usize,
    pub stride: usize,
    pub dilation: usize,
}

impl ResBlock {
    /// A block as MedicalNet's `_make_layer` builds it: the stride on the first 3×3×3 (basic) or
    /// on the 3×3×3 (bottleneck), the stage's dilation on every 3×3×3.
    pub(crate) fn new(spec: &BlockSpec, device: &Device) -> Self {
        let BlockSpec {
            block,
            shortcut,
            in_channels,
            planes,
            out_channels,
            stride,
            dilation,
        } = *spec;
        let s = [stride; 3];
        let body = match block {
            Block::Basic => Body::Basic(BasicBody {
                conv1: conv3d([in_channels, planes], 3, s, dilation, device),
                bn1: batch_norm(planes, device),
                conv2: conv3d([planes, planes], 3, [1; 3], dilation, device),
                bn2: batch_norm(planes, device),
            }),
            Block::Bottleneck => Body::Bottleneck(BottleneckBody {
                conv1: conv3d([in_channels, planes], 1, [1; 3], 1, device),
                bn1: batch_norm(planes, device),
                conv2: conv3d([planes, planes], 3, s, dilation, device),
                bn2: batch_norm(planes, device),
                conv3: conv3d([planes, out_channels], 1, [1; 3], 1, device),
                bn3: batch_norm(out_channels, device),
            }),
        };
        let mut block = Self {
            body,
            downsample: None,
            pad_stride: 1,
            pad_channels: 0,
        };
        if needs_downsample(in_channels, out_channels, stride) {
            match shortcut {
                Shortcut::B => {
                    block.downsample = Some(Projection {
                        conv: conv3d([in_channels, out_channels], 1, s, 1, device),
                        bn: batch_norm(out_channels, device),
                    })
                }
                Shortcut::A => {
                    block.pad_stride = stride;
                    block.pad_channels = out_channels.saturating_sub(in_channels);
                }
            }
        }
        block
    }

    /// Sets the running-statistics momentum of every batch norm of the block.
    pub(crate) fn set_bn_momentum(&mut self, momentum: f64) {
        match &mut self.body {
            Body::Basic(b) => {
                for bn in [&mut b.bn1, &mut b.bn2] {
                    bn.momentum = momentum;
                }
            }
            Body::Bottleneck(b) => {
                for bn in [&mut b.bn1, &mut b.bn2, &mut b.bn3] {
                    bn.momentum = momentum;
                }
            }
        }
        if let Some(p) = &mut self.downsample {
            p.bn.momentum = momentum;
        }
    }

    /// # Shapes
    ///
    /// - input: `[batch, in_channels, depth, height, width]`
    /// - output: `[batch, out_channels, depth / stride, height / stride, width / stride]`
    ///   (rounded up)
    pub(crate) fn forward(&self, input: Tensor<5>) -> Tensor<5> {
        let residual = match &self.body {
            Body::Basic(b) => {
                let x = relu(b.bn1.forward(b.conv1.forward(input.clone())));
                b.bn2.forward(b.conv2.forward(x))
            }
            Body::Bottleneck(b) => {
                let x = relu(b.bn1.forward(b.conv1.forward(input.clone())));
                let x = relu(b.bn2.forward(b.conv2.forward(x)));
                b.bn3.forward(b.conv3.forward(x))
            }
        };
        let identity = match &self.downsample {
            Some(p) => p.bn.forward(p.conv.forward(input)),
            None => self.shortcut_a(input),
        };
        relu(residual + identity)
    }

    /// Shortcut A (MedicalNet's `downsample_basic_block`): `avg_pool3d(kernel 1, stride)` is
    /// taking every `stride`-th voxel; then zero channels are appended. MedicalNet cuts the
    /// gradient here (`out.data`); we let it flow, the forward values are the same.
    fn shortcut_a(&self, input: Tensor<5>) -> Tensor<5> {
        let x = if self.pad_stride > 1 {
            let st = self.pad_stride as isize;
            input.slice(s![.., .., ..;st, ..;st, ..;st])
        } else {
            input
        };
        if self.pad_channels == 0 {
            return x;
        }
        let [b, _, d, h, w] = x.dims();
        let zeros = Tensor::zeros([b, self.pad_channels, d, h, w], &x.device());
        Tensor::cat(vec![x, zeros], 1)
    }
}

impl NamedParams for ResBlock {
    fn export(&self, prefix: &str, out: &mut Weights) -> Result<(), ModelError> {
        match &self.body {
            Body::Basic(b) => {
                b.conv1.export(&join(prefix, "conv1"), out)?;
                b.bn1.export(&join(prefix, "bn1"), out)?;
                b.conv2.export(&join(prefix, "conv2"), out)?;
                b.bn2.export(&join(prefix, "bn2"), out)?;
            }
            Body::Bottleneck(b) => {
                b.conv1.export(&join(prefix, "conv1"), out)?;
                b.bn1.export(&join(prefix, "bn1"), out)?;
                b.conv2.export(&join(prefix, "conv2"), out)?;
                b.bn2.export(&join(prefix, "bn2"), out)?;
                b.conv3.export(&join(prefix, "conv3"), out)?;
                b.bn3.export(&join(prefix, "bn3"), out)?;
            }
        }
        if let Some(p) = &self.downsample {
            p.conv.export(&join(prefix, "downsample.0"), out)?;
            p.bn.export(&join(prefix, "downsample.1"), out)?;
        }
        Ok(())
    }

    fn import(self, prefix: &str, from: &mut Loader<'_>) -> Result<Self, ModelError> {
        let body = match self.body {
            Body::Basic(b) => Body::Basic(BasicBody {
                conv1: b.conv1.import(&join(prefix, "conv1"), from)?,
                bn1: b.bn1.import(&join(prefix, "bn1"), from)?,
                conv2: b.conv2.import(&join(prefix, "conv2"), from)?,
                bn2: b.bn2.import(&join(prefix, "bn2"), from)?,
            }),
            Body::Bottleneck(b) => Body::Bottleneck(BottleneckBody {
                conv1: b.conv1.import(&join(prefix, "conv1"), from)?,
                bn1: b.bn1.import(&join(prefix, "bn1"), from)?,
                conv2: b.conv2.import(&join(prefix, "conv2"), from)?,
                bn2: b.bn2.import(&join(prefix, "bn2"), from)?,
                conv3: b.conv3.import(&join(prefix, "conv3"), from)?,
                bn3: b.bn3.import(&join(prefix, "bn3"), from)?,
            }),
        };
        let downsample = match self.downsample {
            Some(p) => Some(Projection {
                conv: p.conv.import(&join(prefix, "downsample.0"), from)?,
                bn: p.bn.import(&join(prefix, "downsample.1"), from)?,
            }),
            None => None,
        };
        Ok(Self {
            body,
            downsample,
            ..self
        })
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, TensorData};

    use super::*;

    /// Max over the 3×3×3 window (stride 2, padding 1) by brute force.
    fn naive_max_pool(values: &[f32], [b, c, d, h, w]: [usize; 5]) -> (Vec<f32>, [usize; 5]) {
        let out = |n: usize| (n - 1) / 2 + 1;
        let (od, oh, ow) = (out(d), out(h), out(w));
        let mut result = Vec::with_capacity(b * c * od * oh * ow);
        for bc in 0..b * c {
            for z in 0..od {
                for y in 0..oh {
                    for x in 0..ow {
                        let mut m = f32::NEG_INFINITY;
                        for kz in 0..3 {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let (iz, iy, ix) = (2 * z + kz, 2 * y + ky, 2 * x + kx);
                                    if iz == 0 || iy == 0 || ix == 0 || iz > d || iy > h || ix > w {
                                        continue; // padding
                                    }
                                    let i = (((bc * d) + iz - 1) * h + iy - 1) * w + ix - 1;
                                    m = m.max(values[i]);
                                }
                            }
                        }
                        result.push(m);
                    }
                }
            }
        }
        (result, [b, c, od, oh, ow])
    }

    #[test]
    fn separable_max_pool_equals_naive_3d_max_pool() {
        let device = Device::flex();
        device.seed(7);
        for shape in [[2, 3, 7, 8, 5], [1, 2, 4, 9, 6], [1, 1, 1, 2, 3]] {
            // Negative values everywhere check that padding never wins.
            let input = Tensor::<5>::random(shape, Distribution::Uniform(-3.0, -1.0), &device);
            let values = input.to_data().try_into_vec_as::<f32>().unwrap();
            let (expected, expected_shape) = naive_max_pool(&values, shape);
            let pooled = max_pool3d_k3s2p1(input);
            assert_eq!(pooled.dims(), expected_shape, "input {shape:?}");
            pooled
                .into_data()
                .assert_eq(&TensorData::new(expected, expected_shape), true);
        }
    }
}
