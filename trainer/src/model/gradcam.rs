//! Grad-CAM by burn autodiff at a stage's output (default `layer4` = `features`): the gradient
//! of the class logit with respect to the activation, averaged over its voxels, weights the
//! activation's channels; CAM = ReLU(Σ_k w_k A_k).
//!
//! At `layer4` (the tensor fed to global average pooling, with a linear head) the gradient is
//! `fc.weight[c, k] / Z` at every voxel (Z = number of feature voxels), so Grad-CAM equals the
//! node's CAM `ReLU(Σ_k fc.weight[c, k] A_k) / Z` from forward outputs (DESIGN §4); the tests
//! hold the two equal.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::relu;

use super::{ModelError, ResNet3d, Tap};

/// A Grad-CAM result.
#[derive(Clone, Debug)]
pub struct GradCam {
    /// Class logits.
    ///
    /// Shape: `[batch, num_classes]`.
    pub logits: Tensor<2>,
    /// Maps on the tapped activation's voxel grid, not normalised (≥ 0).
    ///
    /// Shape: `[batch, depth, height, width]` of the activation.
    pub cam: Tensor<4>,
}

/// Grad-CAM of class `class` at the output of stage `tap`, the network in inference mode (batch
/// norms use their running statistics; parameters are constants).
///
/// # Shapes
///
/// - input: `[batch, in_channels, depth, height, width]`
/// - cam: `[batch, d, h, w]` of the activation after `tap`
pub fn grad_cam(model: &ResNet3d, input: Tensor<5>, class: usize, tap: Tap) -> Result<GradCam, ModelError> {
    let num_classes = model.arch().num_classes;
    if class >= num_classes {
        return Err(ModelError::ClassOutOfRange { class, num_classes });
    }
    // Inference snapshot: no autodiff on the parameters, batch norms in inference mode.
    let model = model.valid();
    let activation = model
        .forward_until(input.without_autodiff(), tap)
        .autodiff()
        .require_grad();
    let (logits, _) = model.forward_after(tap, activation.clone());
    // Samples are independent in inference mode, so one backward of the summed class logits
    // gives every sample's gradient.
    let score = logits.clone().narrow(1, class, 1).sum();
    let grads = score.backward();
    let gradient = activation.grad(&grads).ok_or(ModelError::NoGradient {
        tap: format!("{tap:?}"),
    })?;
    let activation = activation.without_autodiff();
    let [b, c, d, h, w] = activation.dims();
    // α_k = mean over voxels of ∂y_c / ∂A_k.
    let alpha = gradient.reshape([b, c, d * h * w]).mean_dim(2).reshape([b, c, 1, 1, 1]);
    let cam = relu((activation * alpha).sum_dim(1)).reshape([b, d, h, w]);
    Ok(GradCam {
        logits: logits.without_autodiff(),
        cam,
    })
}
