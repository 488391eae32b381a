//! Class activation maps from forward outputs alone. The target layer is the tensor the head
//! pools (`features`) and the score a logit of the linear classifier pooled over the voxels
//! ([`Pooling`]). With the mean, ∂y_c/∂A_k(v) = w_ck / Z at every voxel (Z = number of voxels);
//! with log-mean-exp it is w_ck · s_c(v), s_c = softmax over the voxels of r · Σ_k w_ck A_k(v).
//! Either way the voxel mean of the gradient is w_ck / Z, so Grad-CAM = ReLU(Σ_k w_ck A_k) / Z
//! exactly, and Grad-CAM++ has a closed form in s_c. The trainer's autodiff Grad-CAM is tested
//! against this.

use ndarray::{Array2, Array3, ArrayView4, Axis};

use crate::package::arch::Pooling;

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

/// Grad-CAM at the pooled layer: ReLU(Σ_k w_ck A_k) / Z, for either pooling.
///
/// `features` is `[channel, depth, height, width]`, `fc_weight` `[classes, channel]`; the result
/// is `[depth, height, width]` on the feature grid.
pub fn grad_cam(features: ArrayView4<f32>, fc_weight: &Array2<f32>, class: usize) -> Result<Array3<f32>, CamError> {
    check(&features, fc_weight, class)?;
    let z = (features.len() / features.shape()[0].max(1)) as f32;
    let weights: Vec<f32> = fc_weight.row(class).iter().map(|w| w / z).collect();
    Ok(weighted_sum(features, &weights).mapv(|v| v.max(0.0)))
}

/// Grad-CAM++ in closed form for a linear classifier pooled over the voxels (score exp(y_c),
/// gradient g_k(v) = w_ck · s(v)): α_k(v) = 1 / (2 + S_k · g_k(v)) with S_k = Σ_v A_k(v),
/// channel weight Σ_v α_k(v) · ReLU(g_k(v)), map = ReLU(Σ_k weight_k · A_k). With the mean
/// (s = 1/Z) the weight is ReLU(w_ck) / (2 + w_ck · mean(A_k)).
pub fn grad_cam_pp(
    features: ArrayView4<f32>,
    fc_weight: &Array2<f32>,
    class: usize,
    pooling: Pooling,
) -> Result<Array3<f32>, CamError> {
    check(&features, fc_weight, class)?;
    let row = fc_weight.row(class).to_vec();
    let share = gradient_share(features, &row, pooling);
    let weights: Vec<f32> = features
        .axis_iter(Axis(0))
        .zip(&row)
        .map(|(a, &w)| {
            if w <= 0.0 {
                return 0.0;
            }
            let total = a.sum();
            let sum: f32 = share
                .iter()
                .map(|&s| {
                    let denominator = 2.0 + total * w * s;
                    if denominator.abs() > f32::EPSILON {
                        s / denominator
                    } else {
                        0.0
                    }
                })
                .sum();
            w * sum
        })
        .collect();
    Ok(weighted_sum(features, &weights).mapv(|v| v.max(0.0)))
}

/// s(v), each voxel's share of the pooled score's gradient (summing to one), in the order of
/// the voxels of one channel: 1/Z for the mean, the softmax of r · Σ_k w_k A_k(v) for
/// log-mean-exp (the classifier bias is the same at every voxel and cancels).
fn gradient_share(features: ArrayView4<f32>, class_weights: &[f32], pooling: Pooling) -> Vec<f32> {
    let voxels = features.len() / features.shape()[0].max(1);
    match pooling {
        Pooling::Mean => vec![1.0 / voxels.max(1) as f32; voxels],
        Pooling::Lse { sharpness } => {
            let scores = weighted_sum(features, class_weights).mapv(|v| v * sharpness as f32);
            let peak = scores.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let exp: Vec<f32> = scores.iter().map(|&v| (v - peak).exp()).collect();
            let total: f32 = exp.iter().sum();
            exp.into_iter().map(|e| e / total).collect()
        }
    }
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
        let cam = grad_cam_pp(a.view(), &fc, 0, Pooling::Mean).unwrap();
        let mean = |c: usize| a.index_axis(Axis(0), c).mean().unwrap();
        let (alpha0, alpha2) = (1.0 / (2.0 + mean(0)), 1.0 / (2.0 + 0.5 * mean(2)));
        // Negative weights contribute nothing.
        let expected =
            (&a.index_axis(Axis(0), 0) * alpha0 + &a.index_axis(Axis(0), 2) * (0.5 * alpha2)).mapv(|v| v.max(0.0));
        assert!((&cam - &expected).mapv(f32::abs).fold(0.0f32, |m, &x| m.max(x)) < 1e-6);
    }

    /// Grad-CAM++ as its authors define it (Chattopadhyay et al. 2018, exp score), from a
    /// gradient taken by central differences of the log-mean-exp head: the closed form must
    /// match it.
    #[test]
    fn grad_cam_pp_of_the_lse_head_matches_numerical_gradients() {
        let a = features().mapv(|v| v.max(0.0));
        let fc = Array2::from_shape_vec((2, 3), vec![0.7, -0.4, 1.3, 0.2, 0.5, -0.1]).unwrap();
        let (r, class) = (3.0, 0);
        let logit = |a: &Array4<f64>| {
            let scores: Vec<f64> = a
                .index_axis(Axis(0), 0)
                .indexed_iter()
                .map(|((d, h, w), _)| (0..3).map(|k| f64::from(fc[[class, k]]) * a[[k, d, h, w]]).sum::<f64>() + 0.25)
                .collect();
            let mean = scores.iter().map(|s| (r * s).exp()).sum::<f64>() / scores.len() as f64;
            mean.ln() / r
        };
        let a64 = a.mapv(f64::from);
        let step = 1e-5;
        let gradient = Array4::from_shape_fn(a.dim(), |i| {
            let (mut up, mut down) = (a64.clone(), a64.clone());
            up[i] += step;
            down[i] -= step;
            (logit(&up) - logit(&down)) / (2.0 * step)
        });
        let mut expected = Array3::<f64>::zeros((2, 3, 4));
        for k in 0..3 {
            let g = gradient.index_axis(Axis(0), k);
            let total = a64.index_axis(Axis(0), k).sum();
            let weight: f64 = g
                .iter()
                .map(|&g| {
                    let alpha = if g != 0.0 {
                        g * g / (2.0 * g * g + total * g * g * g)
                    } else {
                        0.0
                    };
                    alpha * g.max(0.0)
                })
                .sum();
            expected.scaled_add(weight, &a64.index_axis(Axis(0), k));
        }
        let expected = expected.mapv(|v| v.max(0.0));
        let got = grad_cam_pp(a.view(), &fc, class, Pooling::Lse { sharpness: r }).unwrap();
        let scale = expected.fold(0.0f64, |m, &v| m.max(v));
        assert!(scale > 0.0);
        for (g, e) in got.iter().zip(&expected) {
            assert!((f64::from(*g) - e).abs() <= 1e-3 * scale, "{g} vs {e}");
        }
        // Sharper pooling moves weight to the hottest voxels: a different map than the mean's.
        let mean = grad_cam_pp(a.view(), &fc, class, Pooling::Mean).unwrap();
        assert!(
            mean.iter()
                .zip(&got)
                .any(|(m, g)| f64::from((m - g).abs()) > 1e-3 * scale)
        );
    }

    #[test]
    fn shape_errors() {
        let a = features();
        let fc = Array2::zeros((2, 4));
        assert!(matches!(grad_cam(a.view(), &fc, 0), Err(CamError::Shape { .. })));
        let fc = Array2::zeros((2, 3));
        assert!(matches!(
            grad_cam_pp(a.view(), &fc, 2, Pooling::Mean),
            Err(CamError::Class { .. })
        ));
    }
}
