//! Volume tensor → class logits + `features`; owns the burn 3D ResNets built from the root
//! library's [`ArchSpec`](fcdnode::package::arch::ArchSpec), their weights as
//! [`Weights`](fcdnode::package::weights::Weights), the freeze policy, MedicalNet import and
//! Grad-CAM by autodiff.
//!
//! - [`resnet`]: [`ResNet3dConfig`] → [`ResNet3d`]; `forward` gives `(logits, features)`;
//!   `to_weights` / `load_weights`; `freeze_except` with a [`TrainLayers`] policy.
//! - [`medicalnet`]: a MedicalNet `.pth` checkpoint → [`Weights`](fcdnode::package::weights::Weights)
//!   with an [`ImportReport`] of missing and unexpected keys.
//! - [`gradcam`]: Grad-CAM at a stage's output by burn autodiff.
//!
//! Tensors are `[batch, channel, depth, height, width]`. The CPU device is `Device::flex()`;
//! training runs on `device.autodiff()`; `Device::cuda(0)` needs the `cuda` feature.

mod block;
pub mod gradcam;
pub mod medicalnet;
mod named;
pub mod resnet;

pub use gradcam::{GradCam, grad_cam};
pub use medicalnet::{ImportReport, MedicalNetError, import_medicalnet, read_medicalnet};
pub use resnet::{LoadReport, Part, ResNet3d, ResNet3dConfig, Tap, TrainLayers};

use burn::tensor::Device;
use fcdnode::package::arch::ArchError;
use fcdnode::package::weights::WeightsError;

/// Why a network cannot be built, read or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The architecture spec is invalid.
    #[error("invalid architecture spec")]
    Arch(#[from] ArchError),
    /// A weight set does not fit the architecture (missing, wrong shape, non-finite).
    #[error("weights do not fit the network")]
    Weights(#[from] WeightsError),
    /// A parameter could not be read back from the device.
    #[error("cannot read tensor {name} back from the device")]
    Read {
        name: String,
        source: burn::tensor::DataError,
    },
    /// A parameter's values do not fill its shape.
    #[error("tensor {name} does not fill its shape")]
    Layout { name: String, source: ndarray::ShapeError },
    /// A train-layers entry that names no part of the network.
    #[error(
        "unknown layer {name:?} in the train-layers list: expected `all`, a comma list of stem, \
         layer1, layer2, layer3, layer4, fc, or LAYER+ (from that layer on)"
    )]
    UnknownLayer { name: String },
    /// Grad-CAM asked for a class the head does not have.
    #[error("class {class} out of range: the network has {num_classes} classes")]
    ClassOutOfRange { class: usize, num_classes: usize },
    /// A `--device` value this build cannot use.
    #[error("unknown device {name:?}: this build knows {known}")]
    UnknownDevice { name: String, known: &'static str },
    /// Autodiff produced no gradient at the Grad-CAM layer.
    #[error("autodiff gave no gradient at {tap}; is burn's `autodiff` feature enabled?")]
    NoGradient { tap: String },
}

/// The burn device named on the command line: `cpu` (the pure-Rust `flex` backend) or, when
/// built with the `cuda` feature, `cuda` / `cuda:N`, or with `vulkan`, `vulkan` / `vulkan:N`
/// (the N-th discrete GPU through wgpu's Vulkan backend; it builds without the LLVM bundle that
/// burn's CUDA backend downloads at build time). Training wraps it with `.autodiff()`.
pub fn device_from_name(name: &str) -> Result<Device, ModelError> {
    #[cfg(all(feature = "cuda", feature = "vulkan"))]
    const KNOWN: &str = "cpu, cuda, cuda:N, vulkan, vulkan:N";
    #[cfg(all(feature = "cuda", not(feature = "vulkan")))]
    const KNOWN: &str = "cpu, cuda, cuda:N";
    #[cfg(all(feature = "vulkan", not(feature = "cuda")))]
    const KNOWN: &str = "cpu, vulkan, vulkan:N";
    #[cfg(not(any(feature = "cuda", feature = "vulkan")))]
    const KNOWN: &str = "cpu (rebuild with `--features cuda` or `--features vulkan` for a GPU)";
    let unknown = || ModelError::UnknownDevice {
        name: name.to_string(),
        known: KNOWN,
    };
    let name = name.trim().to_ascii_lowercase();
    let (kind, index) = match name.split_once(':') {
        Some((kind, index)) => (kind, Some(index.parse::<usize>().map_err(|_| unknown())?)),
        None => (name.as_str(), None),
    };
    match (kind, index) {
        ("cpu" | "flex", None) => Ok(Device::flex()),
        #[cfg(feature = "cuda")]
        ("cuda", index) => Ok(Device::cuda(index.unwrap_or(0))),
        #[cfg(feature = "vulkan")]
        ("vulkan", index) => Ok(Device::vulkan(burn::tensor::DeviceKind::DiscreteGpu(
            index.unwrap_or(0),
        ))),
        _ => Err(unknown()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_by_name() {
        assert!(device_from_name("CPU").is_ok());
        let err = device_from_name("tpu").unwrap_err().to_string();
        assert!(err.contains("tpu") && err.contains("cpu"), "{err}");
        assert!(device_from_name("cpu:0").is_err());
        #[cfg(not(feature = "cuda"))]
        assert!(device_from_name("cuda").is_err());
        #[cfg(not(feature = "vulkan"))]
        assert!(device_from_name("vulkan:0").is_err());
    }
}
