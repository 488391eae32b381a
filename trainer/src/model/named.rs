//! Named tensors ↔ burn parameters: each module the 3D ResNets are made of reads and writes its
//! tensors under MedicalNet's PyTorch names (`layer1.0.bn1.running_mean`, `fc.weight`).

use burn::module::{Param, RunningState};
use burn::nn::conv::Conv3d;
use burn::nn::{BatchNorm, Linear};
use burn::tensor::{Tensor, TensorData};
use fcdnode::package::weights::{Weights, WeightsError};
use ndarray::{ArrayD, IxDyn};

use super::ModelError;

/// `prefix.name`, or `name` at the root.
pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Hands tensors of a weight set to the modules that ask for them by name.
pub(crate) struct Loader<'a> {
    weights: &'a Weights,
    /// Names set from the weight set.
    pub loaded: Vec<String>,
    /// Names the weight set lacks: those parameters keep their values.
    pub kept: Vec<String>,
}

impl<'a> Loader<'a> {
    pub(crate) fn new(weights: &'a Weights) -> Self {
        Self {
            weights,
            loaded: Vec::new(),
            kept: Vec::new(),
        }
    }

    /// The values of `name` (row-major), if the weight set has it with shape `expected`.
    fn take(&mut self, name: String, expected: &[usize]) -> Result<Option<Vec<f32>>, ModelError> {
        let Some(array) = self.weights.0.get(&name) else {
            self.kept.push(name);
            return Ok(None);
        };
        if array.shape() != expected {
            return Err(WeightsError::Shape {
                name,
                expected: expected.to_vec(),
                found: array.shape().to_vec(),
            }
            .into());
        }
        if array.iter().any(|v| !v.is_finite()) {
            return Err(WeightsError::NotFinite { name }.into());
        }
        self.loaded.push(name);
        Ok(Some(array.iter().copied().collect()))
    }

    /// A parameter replaced by the tensor `name`, keeping its id, device and gradient setting.
    fn param<const D: usize>(&mut self, param: Param<Tensor<D>>, name: String) -> Result<Param<Tensor<D>>, ModelError> {
        let dims = param.val().dims();
        let Some(values) = self.take(name, &dims)? else {
            return Ok(param);
        };
        let tensor = Tensor::from_data(TensorData::new(values, dims), &param.lazy_device());
        let id = param.id;
        Ok(param.transform_for_load(tensor, id))
    }

    /// A batch-norm running statistic replaced by the tensor `name`.
    fn running(&mut self, state: RunningState<Tensor<1>>, name: String) -> Result<RunningState<Tensor<1>>, ModelError> {
        let old = state.value_sync();
        let dims = old.dims();
        let Some(values) = self.take(name, &dims)? else {
            return Ok(state);
        };
        Ok(RunningState::new(Tensor::from_data(
            TensorData::new(values, dims),
            &old.device(),
        )))
    }
}

/// A module whose tensors have PyTorch names.
pub(crate) trait NamedParams: Sized {
    /// Writes every tensor under `prefix` into `out`.
    fn export(&self, prefix: &str, out: &mut Weights) -> Result<(), ModelError>;
    /// Replaces the tensors `from` has under `prefix`; the others are kept.
    fn import(self, prefix: &str, from: &mut Loader<'_>) -> Result<Self, ModelError>;
}

/// A tensor's values as an `ndarray` of the same shape.
pub(crate) fn to_array<const D: usize>(name: &str, tensor: Tensor<D>) -> Result<ArrayD<f32>, ModelError> {
    let dims = tensor.dims();
    let values = tensor
        .into_data()
        .try_into_vec_as::<f32>()
        .map_err(|source| ModelError::Read {
            name: name.to_string(),
            source,
        })?;
    ArrayD::from_shape_vec(IxDyn(&dims), values).map_err(|source| ModelError::Layout {
        name: name.to_string(),
        source,
    })
}

impl NamedParams for Conv3d {
    fn export(&self, prefix: &str, out: &mut Weights) -> Result<(), ModelError> {
        let name = join(prefix, "weight");
        out.0.insert(name.clone(), to_array(&name, self.weight.val())?);
        if let Some(bias) = &self.bias {
            let name = join(prefix, "bias");
            out.0.insert(name.clone(), to_array(&name, bias.val())?);
        }
        Ok(())
    }

    fn import(mut self, prefix: &str, from: &mut Loader<'_>) -> Result<Self, ModelError> {
        self.weight = from.param(self.weight, join(prefix, "weight"))?;
        if let Some(bias) = self.bias.take() {
            self.bias = Some(from.param(bias, join(prefix, "bias"))?);
        }
        Ok(self)
    }
}

impl NamedParams for BatchNorm {
    fn export(&self, prefix: &str, out: &mut Weights) -> Result<(), ModelError> {
        for (field, tensor) in [
            ("weight", self.gamma.val()),
            ("bias", self.beta.val()),
            ("running_mean", self.running_mean.value_sync()),
            ("running_var", self.running_var.value_sync()),
        ] {
            let name = join(prefix, field);
            out.0.insert(name.clone(), to_array(&name, tensor)?);
        }
        Ok(())
    }

    fn import(mut self, prefix: &str, from: &mut Loader<'_>) -> Result<Self, ModelError> {
        self.gamma = from.param(self.gamma, join(prefix, "weight"))?;
        self.beta = from.param(self.beta, join(prefix, "bias"))?;
        self.running_mean = from.running(self.running_mean, join(prefix, "running_mean"))?;
        self.running_var = from.running(self.running_var, join(prefix, "running_var"))?;
        Ok(self)
    }
}

/// burn stores a linear weight as `[in, out]`; PyTorch (and [`Weights`]) as `[out, in]`.
impl NamedParams for Linear {
    fn export(&self, prefix: &str, out: &mut Weights) -> Result<(), ModelError> {
        let name = join(prefix, "weight");
        out.0
            .insert(name.clone(), to_array(&name, self.weight.val().transpose())?);
        if let Some(bias) = &self.bias {
            let name = join(prefix, "bias");
            out.0.insert(name.clone(), to_array(&name, bias.val())?);
        }
        Ok(())
    }

    fn import(mut self, prefix: &str, from: &mut Loader<'_>) -> Result<Self, ModelError> {
        let name = join(prefix, "weight");
        let [d_in, d_out] = self.weight.val().dims();
        if let Some(values) = from.take(name, &[d_out, d_in])? {
            let device = self.weight.lazy_device();
            let tensor = Tensor::<2>::from_data(TensorData::new(values, [d_out, d_in]), &device).transpose();
            let id = self.weight.id;
            self.weight = self.weight.transform_for_load(tensor, id);
        }
        if let Some(bias) = self.bias.take() {
            self.bias = Some(from.param(bias, join(prefix, "bias"))?);
        }
        Ok(self)
    }
}
