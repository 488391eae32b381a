//! ONNX writer: architecture spec + weights → an ONNX graph with the outputs `logits`
//! `[batch, classes]` and `features` `[batch, channel, depth, height, width]` (the tensor fed to
//! global average pooling); owns the graph layout and the protobuf encoding ([`proto`]).
//!
//! The graph follows MedicalNet's `resnet.py` operator for operator, so a checkpoint's
//! `state_dict` names become the initializer names (`layer2.0.conv1.weight`, `bn1.running_var`):
//!
//! - stem: `Conv` 7×7×7 (stride = `stem_stride`, pad 3) → `BatchNormalization` → `Relu` →
//!   `MaxPool` 3 stride 2 pad 1;
//! - basic block: `Conv` 3×3×3 (stride, dilation, pad = dilation) → BN → `Relu` → `Conv` 3×3×3 →
//!   BN, plus the shortcut, `Add`, `Relu`; bottleneck: 1×1×1 → BN → ReLU → 3×3×3 → BN → ReLU →
//!   1×1×1 → BN, plus the shortcut, `Add`, `Relu`;
//! - shortcut A: `AveragePool` kernel 1 with the stride (only when the stride is not 1), then
//!   `Pad` zeros after the existing channels; shortcut B: `Conv` 1×1×1 with the stride → BN;
//! - head with mean pooling: `features` → `GlobalAveragePool` → `Flatten` → `Gemm`
//!   (`fc.weight` transposed, `fc.bias`) → `logits`; with log-mean-exp pooling: `features` →
//!   `Conv` 1×1×1 (`fc.weight` as `[classes, channels, 1, 1, 1]`, `fc.bias`) → `Mul` r →
//!   `ReduceLogSumExp` over the voxels → `Add` −ln Z → `Mul` 1/r → `logits`.
//!
//! Batch norms stay separate inference-mode `BatchNormalization` nodes (ONNX Runtime folds them
//! into the convolutions when it optimises the graph). The file is IR version 8, opset 17, so
//! ONNX Runtime ≥ 1.10 loads it. The batch axis is symbolic (`batch`); the spatial size is
//! fixed to the shape the model was trained on.

pub mod proto;
#[cfg(test)]
pub(crate) mod python;

use std::path::{Path, PathBuf};

use prost::Message;

use self::proto::{
    AttributeProto, AttributeType, DataType, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
    tensor_shape_proto::{Dimension, dimension},
    type_proto,
};
use super::arch::{ArchError, ArchSpec, Block, Pooling, Shortcut, Stage};
use super::weights::{BN_EPS, Weights, WeightsError, batch_norm_names, needs_downsample};

/// IR version written (ONNX 1.10; the lowest that allows opset 17).
pub const IR_VERSION: i64 = 8;
/// Default-domain operator set written.
pub const OPSET: i64 = 17;
/// Name of the graph input `[batch, in_channels, depth, height, width]`.
pub const INPUT: &str = "input";
/// Name of the classifier output `[batch, classes]` (pre-softmax).
pub const LOGITS: &str = "logits";
/// Name of the feature-map output `[batch, channel, depth, height, width]`.
pub const FEATURES: &str = "features";
/// Symbolic name of the batch axis.
pub const BATCH_DIM: &str = "batch";
/// Metadata key holding the architecture spec as JSON.
pub const META_ARCHITECTURE: &str = "fcdnode.architecture";
/// Metadata key holding the input spatial shape `[depth, height, width]` as JSON.
pub const META_INPUT_SHAPE: &str = "fcdnode.input_shape";

/// Why an ONNX graph could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OnnxError {
    /// The architecture spec itself is invalid.
    #[error("invalid architecture spec for the ONNX graph")]
    Arch {
        #[source]
        source: ArchError,
    },
    /// The weight set does not fit the architecture.
    #[error("weights do not fit architecture {arch}")]
    Weights {
        arch: String,
        #[source]
        source: WeightsError,
    },
    /// The input spatial shape has an empty axis.
    #[error("input shape {shape:?} (depth, height, width) has an empty axis")]
    EmptyInput { shape: [usize; 3] },
    /// Shortcut A can only add zero channels, not drop channels.
    #[error("shortcut A of block {block} would shrink {from} channels to {to}")]
    ShrinkingShortcut { block: String, from: usize, to: usize },
    /// Writing the file failed.
    #[error("cannot write ONNX model {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The ONNX model for `arch` filled with `weights`, for inputs of `input_shape`
/// `[depth, height, width]` voxels (any batch size).
pub fn build_model(arch: &ArchSpec, weights: &Weights, input_shape: [usize; 3]) -> Result<ModelProto, OnnxError> {
    arch.validate().map_err(|source| OnnxError::Arch { source })?;
    weights.check(arch).map_err(|source| OnnxError::Weights {
        arch: arch.name(),
        source,
    })?;
    if input_shape.contains(&0) {
        return Err(OnnxError::EmptyInput { shape: input_shape });
    }
    let graph = GraphWriter::new(arch, weights).write(input_shape)?;
    let arch_json = serde_json::to_string(arch).unwrap_or_default();
    let meta = |key: &str, value: String| StringStringEntryProto {
        key: key.to_string(),
        value,
    };
    Ok(ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "fcdnode".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        domain: "org.fcdnode".into(),
        model_version: 1,
        doc_string: format!(
            "3D {} ({:?} layout, shortcut {:?}): outputs `{LOGITS}` [batch, classes] and `{FEATURES}` \
             [batch, channel, depth, height, width], the input of global average pooling",
            arch.name(),
            arch.layout,
            arch.shortcut()
        ),
        graph: Some(graph),
        metadata_props: vec![
            meta("producer", "fcdnode".into()),
            meta(META_ARCHITECTURE, arch_json),
            meta(
                META_INPUT_SHAPE,
                format!("[{}, {}, {}]", input_shape[0], input_shape[1], input_shape[2]),
            ),
            meta("fcdnode.outputs", format!("{LOGITS},{FEATURES}")),
        ],
    })
}

/// The serialised ONNX file for `arch` and `weights` (see [`build_model`]).
pub fn to_bytes(arch: &ArchSpec, weights: &Weights, input_shape: [usize; 3]) -> Result<Vec<u8>, OnnxError> {
    Ok(build_model(arch, weights, input_shape)?.encode_to_vec())
}

/// Writes the ONNX file for `arch` and `weights` to `path` (through a temporary file renamed
/// into place, so a reader never sees half a model).
pub fn write_onnx(arch: &ArchSpec, weights: &Weights, input_shape: [usize; 3], path: &Path) -> Result<(), OnnxError> {
    let bytes = to_bytes(arch, weights, input_shape)?;
    let write_err = |source| OnnxError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, &bytes).map_err(write_err)?;
    std::fs::rename(&tmp, path).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        write_err(source)
    })
}

/// Builds the node list and initializers of one graph.
struct GraphWriter<'a> {
    arch: &'a ArchSpec,
    weights: &'a Weights,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

impl<'a> GraphWriter<'a> {
    fn new(arch: &'a ArchSpec, weights: &'a Weights) -> Self {
        Self {
            arch,
            weights,
            nodes: Vec::new(),
            initializers: Vec::new(),
        }
    }

    fn write(mut self, input_shape: [usize; 3]) -> Result<GraphProto, OnnxError> {
        let arch = self.arch;
        // Stem.
        let x = self.conv(INPUT, "conv1", 7, arch.stem_stride, 1, "conv1")?;
        let x = self.batch_norm(&x, "bn1", "bn1")?;
        let x = self.relu(&x, "relu");
        let mut x = self.node(
            "MaxPool",
            "maxpool",
            &[&x],
            vec![
                ints("kernel_shape", [3; 3]),
                ints("strides", [2; 3]),
                ints("pads", [1; 6]),
            ],
        );
        // Stages.
        let mut inplanes = arch.stem_channels();
        let stages = arch.stages();
        for (s, stage) in stages.iter().enumerate() {
            for b in 0..stage.blocks {
                let prefix = format!("layer{}.{b}", s + 1);
                let stride = if b == 0 { stage.stride } else { 1 };
                let last = s == stages.len() - 1 && b == stage.blocks - 1;
                let out_name = if last { FEATURES.to_string() } else { prefix.clone() };
                x = self.block(&x, &prefix, inplanes, stage, stride, &out_name)?;
                inplanes = stage.out_channels;
            }
        }
        let [d, h, w] = input_shape;
        let [fd, fh, fw] = arch.feature_shape(input_shape);
        self.head(fd * fh * fw)?;
        Ok(GraphProto {
            node: self.nodes,
            name: format!("fcdnode_{}", arch.name()),
            initializer: self.initializers,
            doc_string: String::new(),
            input: vec![value_info(
                INPUT,
                &[None, Some(arch.in_channels), Some(d), Some(h), Some(w)],
            )],
            output: vec![
                value_info(LOGITS, &[None, Some(arch.num_classes)]),
                value_info(
                    FEATURES,
                    &[None, Some(arch.feature_channels()), Some(fd), Some(fh), Some(fw)],
                ),
            ],
            value_info: vec![],
        })
    }

    /// The head from `features` (`voxels` feature voxels) to `logits`, as the spec's pooling
    /// says.
    fn head(&mut self, voxels: usize) -> Result<(), OnnxError> {
        let fc_b = self.weight("fc.bias")?;
        match self.arch.pooling {
            Pooling::Mean => {
                let pooled = self.node("GlobalAveragePool", "avgpool", &[FEATURES], vec![]);
                let flat = self.node("Flatten", "flatten", &[&pooled], vec![int("axis", 1)]);
                let fc_w = self.weight("fc.weight")?;
                self.node_named("Gemm", "fc", &[&flat, &fc_w, &fc_b], LOGITS, vec![int("transB", 1)]);
            }
            Pooling::Lse { sharpness } => {
                // The classifier as a 1×1×1 convolution: per-voxel class scores; then
                // (1/r)·(ReduceLogSumExp(r·scores) − ln Z).
                let fc_w = self.weight_as(
                    "fc.weight",
                    &[self.arch.num_classes, self.arch.feature_channels(), 1, 1, 1],
                )?;
                let scores = self.node(
                    "Conv",
                    "fc",
                    &[FEATURES, &fc_w, &fc_b],
                    vec![ints("kernel_shape", [1; 3])],
                );
                let r = self.constant("pool.sharpness", sharpness as f32);
                let scaled = self.node("Mul", "pool.scale", &[&scores, &r], vec![]);
                let lse = self.node(
                    "ReduceLogSumExp",
                    "pool.lse",
                    &[&scaled],
                    vec![ints("axes", [2, 3, 4]), int("keepdims", 0)],
                );
                let log_z = self.constant("pool.log_voxels", -(voxels as f32).ln());
                let centred = self.node("Add", "pool.mean", &[&lse, &log_z], vec![]);
                let inverse = self.constant("pool.inverse_sharpness", (1.0 / sharpness) as f32);
                self.node_named("Mul", "pool.unscale", &[&centred, &inverse], LOGITS, vec![]);
            }
        }
        Ok(())
    }

    /// One residual block (MedicalNet `BasicBlock` or `Bottleneck`) of `stage` with `stride`
    /// (the stage's stride in its first block, else 1), ending in a ReLU whose output is named
    /// `out`.
    fn block(
        &mut self,
        x: &str,
        prefix: &str,
        inplanes: usize,
        stage: &Stage,
        stride: usize,
        out: &str,
    ) -> Result<String, OnnxError> {
        let (out_channels, dilation) = (stage.out_channels, stage.dilation);
        let p = |s: &str| format!("{prefix}.{s}");
        let s3 = [stride; 3];
        let main = match self.arch.block() {
            Block::Basic => {
                let y = self.conv(x, &p("conv1"), 3, s3, dilation, &p("conv1"))?;
                let y = self.batch_norm(&y, &p("bn1"), &p("bn1"))?;
                let y = self.relu(&y, &p("relu1"));
                let y = self.conv(&y, &p("conv2"), 3, [1; 3], dilation, &p("conv2"))?;
                self.batch_norm(&y, &p("bn2"), &p("bn2"))?
            }
            Block::Bottleneck => {
                let y = self.conv(x, &p("conv1"), 1, [1; 3], 1, &p("conv1"))?;
                let y = self.batch_norm(&y, &p("bn1"), &p("bn1"))?;
                let y = self.relu(&y, &p("relu1"));
                let y = self.conv(&y, &p("conv2"), 3, s3, dilation, &p("conv2"))?;
                let y = self.batch_norm(&y, &p("bn2"), &p("bn2"))?;
                let y = self.relu(&y, &p("relu2"));
                let y = self.conv(&y, &p("conv3"), 1, [1; 3], 1, &p("conv3"))?;
                self.batch_norm(&y, &p("bn3"), &p("bn3"))?
            }
        };
        let residual = if needs_downsample(inplanes, out_channels, stride) {
            match self.arch.shortcut() {
                Shortcut::B => {
                    let y = self.conv(x, &p("downsample.0"), 1, s3, 1, &p("downsample.0"))?;
                    self.batch_norm(&y, &p("downsample.1"), &p("downsample.1"))?
                }
                Shortcut::A => {
                    if out_channels < inplanes {
                        return Err(OnnxError::ShrinkingShortcut {
                            block: prefix.to_string(),
                            from: inplanes,
                            to: out_channels,
                        });
                    }
                    let mut y = x.to_string();
                    if stride != 1 {
                        y = self.node(
                            "AveragePool",
                            &p("downsample.pool"),
                            &[&y],
                            vec![ints("kernel_shape", [1; 3]), ints("strides", s3)],
                        );
                    }
                    if out_channels > inplanes {
                        // Pads are [begin per axis…, end per axis…] over [N, C, D, H, W]: zero
                        // channels appended after the existing ones, as MedicalNet's torch.cat.
                        let pads_name = p("downsample.pads");
                        let extra = (out_channels - inplanes) as i64;
                        self.initializers
                            .push(int64_tensor(&pads_name, &[0, 0, 0, 0, 0, 0, extra, 0, 0, 0]));
                        y = self.node("Pad", &p("downsample.pad"), &[&y, &pads_name], vec![]);
                    }
                    y
                }
            }
        } else {
            x.to_string()
        };
        let sum = self.node("Add", &p("add"), &[&main, &residual], vec![]);
        Ok(self.node_named("Relu", &p("relu"), &[&sum], out, vec![]))
    }

    /// A bias-free convolution with weight `{weight}.weight`, cubic kernel `k`, padding
    /// `dilation × (k − 1) / 2` (3 for the 7×7×7 stem).
    fn conv(
        &mut self,
        x: &str,
        weight: &str,
        k: usize,
        strides: [usize; 3],
        dilation: usize,
        name: &str,
    ) -> Result<String, OnnxError> {
        let w = self.weight(&format!("{weight}.weight"))?;
        let pad = dilation * (k - 1) / 2;
        Ok(self.node(
            "Conv",
            name,
            &[x, &w],
            vec![
                ints("kernel_shape", [k; 3]),
                ints("strides", strides),
                ints("pads", [pad; 6]),
                ints("dilations", [dilation; 3]),
            ],
        ))
    }

    /// Inference-mode batch norm with the four tensors under `prefix`.
    fn batch_norm(&mut self, x: &str, prefix: &str, name: &str) -> Result<String, OnnxError> {
        let [scale, bias, mean, var] = batch_norm_names(prefix);
        let inputs = [
            x.to_string(),
            self.weight(&scale)?,
            self.weight(&bias)?,
            self.weight(&mean)?,
            self.weight(&var)?,
        ];
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        Ok(self.node("BatchNormalization", name, &inputs, vec![float("epsilon", BN_EPS)]))
    }

    fn relu(&mut self, x: &str, name: &str) -> String {
        self.node("Relu", name, &[x], vec![])
    }

    /// Adds the named weight tensor as an f32 initializer and returns its name.
    fn weight(&mut self, name: &str) -> Result<String, OnnxError> {
        let shape = self.tensor(name)?.shape().to_vec();
        self.weight_as(name, &shape)
    }

    /// Adds the named weight tensor as an f32 initializer of shape `dims` (the same elements in
    /// the same order, e.g. a matrix as a 1×1×1 kernel) and returns its name.
    fn weight_as(&mut self, name: &str, dims: &[usize]) -> Result<String, OnnxError> {
        let tensor = self.tensor(name)?;
        if dims.iter().product::<usize>() != tensor.len() {
            return Err(OnnxError::Weights {
                arch: self.arch.name(),
                source: WeightsError::Shape {
                    name: name.to_string(),
                    expected: dims.to_vec(),
                    found: tensor.shape().to_vec(),
                },
            });
        }
        let raw_data: Vec<u8> = tensor.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Float as i32,
            name: name.to_string(),
            raw_data,
            ..Default::default()
        });
        Ok(name.to_string())
    }

    fn tensor(&self, name: &str) -> Result<&'a ndarray::ArrayD<f32>, OnnxError> {
        self.weights.0.get(name).ok_or_else(|| OnnxError::Weights {
            arch: self.arch.name(),
            source: WeightsError::Missing {
                name: name.to_string(),
                expected: vec![],
            },
        })
    }

    /// Adds a scalar f32 initializer and returns its name.
    fn constant(&mut self, name: &str, value: f32) -> String {
        self.initializers.push(TensorProto {
            dims: vec![],
            data_type: DataType::Float as i32,
            name: name.to_string(),
            raw_data: value.to_le_bytes().to_vec(),
            ..Default::default()
        });
        name.to_string()
    }

    /// Adds a node whose single output has the node's name; returns that name.
    fn node(&mut self, op: &str, name: &str, inputs: &[&str], attribute: Vec<AttributeProto>) -> String {
        self.node_named(op, name, inputs, name, attribute)
    }

    fn node_named(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        output: &str,
        attribute: Vec<AttributeProto>,
    ) -> String {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            name: name.to_string(),
            op_type: op.to_string(),
            attribute,
            ..Default::default()
        });
        output.to_string()
    }
}

fn ints<const N: usize>(name: &str, values: [usize; N]) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        r#type: Some(AttributeType::Ints as i32),
        ints: values.iter().map(|&v| v as i64).collect(),
        ..Default::default()
    }
}

fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        r#type: Some(AttributeType::Int as i32),
        i: Some(value),
        ..Default::default()
    }
}

fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        r#type: Some(AttributeType::Float as i32),
        f: Some(value),
        ..Default::default()
    }
}

fn int64_tensor(name: &str, values: &[i64]) -> TensorProto {
    TensorProto {
        dims: vec![values.len() as i64],
        data_type: DataType::Int64 as i32,
        name: name.to_string(),
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// A float tensor value info; `None` dims are the symbolic batch axis.
fn value_info(name: &str, dims: &[Option<usize>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(n) => dimension::Value::DimValue(*n as i64),
                None => dimension::Value::DimParam(BATCH_DIM.to_string()),
            }),
            denotation: String::new(),
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: String::new(),
        }),
        doc_string: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::package::arch::Layout;

    fn small(name: &str, width_mult: f64) -> ArchSpec {
        ArchSpec {
            width_mult,
            ..ArchSpec::from_name(name).unwrap()
        }
    }

    fn op_counts(model: &ModelProto) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for node in &model.graph.as_ref().unwrap().node {
            *counts.entry(node.op_type.clone()).or_default() += 1;
        }
        counts
    }

    fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn resnet10_shortcut_b_graph() {
        let arch = small("resnet10", 0.25);
        let model = build_model(&arch, &Weights::random(&arch, 1), [24, 28, 20]).unwrap();
        // Stem 4; 4 basic blocks × 7; type-B downsample (conv + BN) in layers 2–4; head 3.
        assert_eq!(model.graph.as_ref().unwrap().node.len(), 4 + 4 * 7 + 3 * 2 + 3);
        assert_eq!(
            op_counts(&model),
            counts(&[
                ("Add", 4),
                ("BatchNormalization", 1 + 8 + 3),
                ("Conv", 1 + 8 + 3),
                ("Flatten", 1),
                ("Gemm", 1),
                ("GlobalAveragePool", 1),
                ("MaxPool", 1),
                ("Relu", 1 + 8),
            ])
        );
        let graph = model.graph.unwrap();
        // Every weight tensor becomes one initializer under its state_dict name.
        let names: Vec<_> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names.len(), crate::package::weights::parameter_shapes(&arch).len());
        assert!(names.contains(&"layer2.0.downsample.0.weight"));
        let fc = graph.initializer.iter().find(|t| t.name == "fc.weight").unwrap();
        assert_eq!(fc.dims, vec![2, 128]);
        assert_eq!(fc.raw_data.len(), 2 * 128 * 4);
        let outputs: Vec<_> = graph.output.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(outputs, [LOGITS, FEATURES]);
        assert_eq!(model.ir_version, 8);
        assert_eq!(model.opset_import[0].version, 17);
        // Layer 3 runs with dilation 2 and padding 2 (MedicalNet layout).
        let l3 = graph.node.iter().find(|n| n.name == "layer3.0.conv2").unwrap();
        let dil = l3.attribute.iter().find(|a| a.name == "dilations").unwrap();
        let pads = l3.attribute.iter().find(|a| a.name == "pads").unwrap();
        assert_eq!((dil.ints.clone(), pads.ints.clone()), (vec![2; 3], vec![2; 6]));
    }

    #[test]
    fn lse_head_is_a_one_voxel_convolution_then_log_mean_exp() {
        let arch = ArchSpec {
            pooling: Pooling::Lse { sharpness: 4.0 },
            ..small("resnet10", 0.25)
        };
        let model = build_model(&arch, &Weights::random(&arch, 1), [24, 28, 20]).unwrap();
        let c = op_counts(&model);
        assert_eq!((c["Conv"], c["ReduceLogSumExp"], c["Mul"]), (1 + 8 + 3 + 1, 1, 2));
        assert!(!c.contains_key("GlobalAveragePool") && !c.contains_key("Gemm"));
        let graph = model.graph.unwrap();
        let fc = graph.initializer.iter().find(|t| t.name == "fc.weight").unwrap();
        assert_eq!(fc.dims, vec![2, 128, 1, 1, 1]);
        // ln Z of the 3 × 4 × 3 feature grid.
        let log_z = graph.initializer.iter().find(|t| t.name == "pool.log_voxels").unwrap();
        let value = f32::from_le_bytes(log_z.raw_data[..4].try_into().unwrap());
        assert!((value + (36f32).ln()).abs() < 1e-6, "{value}");
        assert_eq!(graph.node.last().unwrap().output, [LOGITS]);
    }

    #[test]
    fn resnet18_shortcut_a_graph() {
        let arch = small("resnet18", 0.125);
        let model = build_model(&arch, &Weights::random(&arch, 2), [24, 28, 20]).unwrap();
        // Stem 4; 8 blocks × 7; shortcut A: layer2 avg-pool + pad, layer3 pad, layer4 pad; head 3.
        assert_eq!(model.graph.as_ref().unwrap().node.len(), 4 + 8 * 7 + 4 + 3);
        let c = op_counts(&model);
        assert_eq!((c["AveragePool"], c["Pad"], c["Conv"], c["Add"]), (1, 3, 17, 8));
        let graph = model.graph.unwrap();
        let pads = graph
            .initializer
            .iter()
            .find(|t| t.name == "layer3.0.downsample.pads")
            .unwrap();
        let values: Vec<i64> = pads
            .raw_data
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        // 16 → 32 channels: 16 zero channels after the existing ones.
        assert_eq!(values, [0, 0, 0, 0, 0, 0, 16, 0, 0, 0]);
        assert!(!graph.initializer.iter().any(|t| t.name.contains("downsample.0")));
    }

    #[test]
    fn resnet50_bottleneck_graph() {
        let arch = small("resnet50", 0.125);
        let model = build_model(&arch, &Weights::random(&arch, 3), [16, 16, 16]).unwrap();
        // Stem 4; 16 bottlenecks × 10; type-B downsample in the first block of each stage; head 3.
        assert_eq!(model.graph.as_ref().unwrap().node.len(), 4 + 16 * 10 + 4 * 2 + 3);
        let c = op_counts(&model);
        assert_eq!(
            (c["Conv"], c["BatchNormalization"], c["Relu"]),
            (1 + 48 + 4, 1 + 48 + 4, 1 + 48)
        );
        let graph = model.graph.unwrap();
        let features = &graph.output[1];
        let Some(type_proto::Value::TensorType(t)) = features.r#type.as_ref().unwrap().value.clone() else {
            panic!("features is not a tensor");
        };
        let dims: Vec<_> = t.shape.unwrap().dim.into_iter().map(|d| d.value.unwrap()).collect();
        assert_eq!(
            dims,
            [
                dimension::Value::DimParam("batch".into()),
                dimension::Value::DimValue(256),
                dimension::Value::DimValue(2),
                dimension::Value::DimValue(2),
                dimension::Value::DimValue(2),
            ]
        );
    }

    #[test]
    fn bytes_round_trip_and_metadata() {
        let arch = small("resnet10", 0.25);
        let bytes = to_bytes(&arch, &Weights::random(&arch, 1), [16, 16, 16]).unwrap();
        let model = ModelProto::decode(bytes.as_slice()).unwrap();
        assert_eq!(model.producer_name, "fcdnode");
        let meta: BTreeMap<_, _> = model
            .metadata_props
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        let spec: ArchSpec = serde_json::from_str(meta[META_ARCHITECTURE]).unwrap();
        assert_eq!(spec, arch);
        assert_eq!(meta[META_INPUT_SHAPE], "[16, 16, 16]");
    }

    #[test]
    fn bad_inputs_are_refused() {
        let arch = small("resnet10", 0.25);
        let mut weights = Weights::random(&arch, 1);
        assert!(matches!(
            to_bytes(&arch, &weights, [16, 0, 16]),
            Err(OnnxError::EmptyInput { .. })
        ));
        weights.0.remove("layer4.0.bn2.running_mean");
        let err = to_bytes(&arch, &weights, [16, 16, 16]).unwrap_err();
        assert!(matches!(err, OnnxError::Weights { .. }), "{err}");
        let bad_arch = ArchSpec {
            num_classes: 1,
            ..arch.clone()
        };
        assert!(matches!(
            to_bytes(&bad_arch, &weights, [16, 16, 16]),
            Err(OnnxError::Arch { .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        let weights = Weights::random(&arch, 1);
        let path = dir.path().join("no/such/dir/model.onnx");
        let err = write_onnx(&arch, &weights, [16, 16, 16], &path).unwrap_err();
        assert!(matches!(err, OnnxError::Write { .. }));
        assert!(err.to_string().contains("model.onnx"), "{err}");
    }

    #[test]
    fn onnx_checker_accepts_every_variant() {
        let dir = tempfile::tempdir().unwrap();
        let mut strided = small("resnet18", 0.125);
        strided.layout = Layout::Strided;
        strided.stem_stride = [1, 2, 2];
        strided.in_channels = 2;
        strided.num_classes = 3;
        let mut r34_b = small("resnet34", 0.125);
        r34_b.shortcut = Some(Shortcut::B);
        let mut r50_a = small("resnet50", 0.0625);
        r50_a.shortcut = Some(Shortcut::A);
        let mut r10_lse = small("resnet10", 0.25);
        r10_lse.pooling = Pooling::Lse { sharpness: 4.0 };
        let variants = [
            ("r10", small("resnet10", 0.25)),
            ("r10_lse", r10_lse),
            ("r18", small("resnet18", 0.125)),
            ("r18_strided", strided),
            ("r34_b", r34_b),
            ("r50", small("resnet50", 0.125)),
            ("r50_a", r50_a),
        ];
        let mut paths = Vec::new();
        for (i, (name, arch)) in variants.iter().enumerate() {
            let path = dir.path().join(format!("{name}.onnx"));
            write_onnx(arch, &Weights::random(arch, i as u64), [20, 24, 16], &path).unwrap();
            paths.push(path);
        }
        let script = "import sys, onnx\n\
                      for p in sys.argv[1:]:\n    \
                          onnx.checker.check_model(p, full_check=True)\n    \
                          print('ok', p)\n";
        let out = python::run(script, &paths);
        assert_eq!(
            out.lines().filter(|l| l.starts_with("ok ")).count(),
            paths.len(),
            "{out}"
        );
    }
}
