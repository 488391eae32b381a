//! Class activation maps from forward outputs alone. When the target layer is the tensor fed to
//! global average pooling and the score is a logit of a linear head, ∂y_c/∂A_k = w_ck / Z at
//! every voxel (Z = number of voxels), so Grad-CAM = ReLU(Σ_k w_ck A_k) / Z exactly, and
//! Grad-CAM++ has a closed form too. The trainer's autodiff Grad-CAM is tested against this.

use ndarray::{Array2, Array3, ArrayView4, Axis};

/// Why a CAM cannot be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CamError {
    /// Feature channels and classifier width disagree.
    #[error("features have {features} channels but the classifier weight is {rows}×{cols}")]
    Shape { features: usize, rows: usize, cols: usize },
    /// The class index is out of range.
    #[error("class {class} out of range: the classifier has {classes} classes")]
    Class { class: usize, classes: usize },
}

fn check(features: &ArrayView4<f32>, fc_weight: &Array2<f32>, class: usize) -> Result<(), CamError> {
    let (rows, cols) = fc_weight.dim();
    if features.shape()[0] != cols {
        return Err(CamError::Shape {
            features: features.shape()[0],
            rows,
            cols,
        });
    }
    if class >= rows {
        return Err(CamError::Class { class, classes: rows });
    }
    Ok(())
}

/// Grad-CAM at the global-pooling input: ReLU(Σ_k w_ck A_k) / Z.
///
/// `features` is `[channel, depth, height, width]`, `fc_weight` `[classes, channel]`; the result
/// is `[depth, height, width]` on the feature grid.
pub fn grad_cam(features: ArrayView4<f32>, fc_weight: &Array2<f32>, class: usize) -> Result<Array3<f32>, CamError> {
    check(&features, fc_weight, class)?;
    let z = (features.len() / features.shape()[0].max(1)) as f32;
    let weights: Vec<f32> = fc_weight.row(class).iter().map(|w| w / z).collect();
    Ok(weighted_sum(features, &weights).mapv(|v| v.max(0.0)))
}

/// Grad-CAM++ in closed form for a linear head on global average pooling (score exp(y_c)):
/// α_k = 1 / (2 + w_ck · mean(A_k)), map = ReLU(Σ_k α_k · ReLU(w_ck) · A_k).
pub fn grad_cam_pp(features: ArrayView4<f32>, fc_weight: &Array2<f32>, class: usize) -> Result<Array3<f32>, CamError> {
    check(&features, fc_weight, class)?;
    let weights: Vec<f32> = features
        .axis_iter(Axis(0))
        .zip(fc_weight.row(class))
        .map(|(a, &w)| {
            let denominator = 2.0 + w * a.mean().unwrap_or(0.0);
            let alpha = if denominator.abs() > f32::EPSILON {
                1.0 / denominator
            } else {
                0.0
            };
            alpha * w.max(0.0)
        })
        .collect();
    Ok(weighted_sum(features, &weights).mapv(|v| v.max(0.0)))
}

fn weighted_sum(features: ArrayView4<f32>, weights: &[f32]) -> Array3<f32> {
    let (_, d, h, w) = features.dim();
    let mut out = Array3::<f32>::zeros((d, h, w));
    for (a, &wk) in features.axis_iter(Axis(0)).zip(weights) {
        if wk != 0.0 {
            out.scaled_add(wk, &a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;

    fn features() -> Array4<f32> {
        Array4::from_shape_fn((3, 2, 3, 4), |(c, d, h, w)| {
            ((c * 7 + d * 5 + h * 3 + w) % 5) as f32 - 1.0
        })
    }

    #[test]
    fn grad_cam_is_the_weighted_sum_over_z() {
        let a = features();
        let fc = Array2::from_shape_vec((2, 3), vec![1.0, -2.0, 0.5, 0.0, 1.0, 0.0]).unwrap();
        let cam = grad_cam(a.view(), &fc, 0).unwrap();
        let z = 24.0;
        for ((d, h, w), v) in cam.indexed_iter() {
            let s = a[[0, d, h, w]] - 2.0 * a[[1, d, h, w]] + 0.5 * a[[2, d, h, w]];
            assert!((v - (s / z).max(0.0)).abs() < 1e-6);
        }
        // Class 1 uses channel 1 only.
        let cam1 = grad_cam(a.view(), &fc, 1).unwrap();
        assert_eq!(cam1, a.index_axis(Axis(0), 1).mapv(|x| (x / z).max(0.0)));
    }

    #[test]
    fn grad_cam_pp_closed_form() {
        let a = features();
        let fc = Array2::from_shape_vec((1, 3), vec![1.0, -2.0, 0.5]).unwrap();
        let cam = grad_cam_pp(a.view(), &fc, 0).unwrap();
        let mean = |c: usize| a.index_axis(Axis(0), c).mean().unwrap();
        let (alpha0, alpha2) = (1.0 / (2.0 + mean(0)), 1.0 / (2.0 + 0.5 * mean(2)));
        // Negative weights contribute nothing.
        let expected =
            (&a.index_axis(Axis(0), 0) * alpha0 + &a.index_axis(Axis(0), 2) * (0.5 * alpha2)).mapv(|v| v.max(0.0));
        assert!((&cam - &expected).mapv(f32::abs).fold(0.0f32, |m, &x| m.max(x)) < 1e-6);
    }

    #[test]
    fn shape_errors() {
        let a = features();
        let fc = Array2::zeros((2, 4));
        assert!(matches!(grad_cam(a.view(), &fc, 0), Err(CamError::Shape { .. })));
        let fc = Array2::zeros((2, 3));
        assert!(matches!(grad_cam_pp(a.view(), &fc, 2), Err(CamError::Class { .. })));
    }
}
