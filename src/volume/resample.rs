//! Resampling onto another grid (trilinear for images, nearest for masks) and crop/pad.

use nalgebra::{Matrix4, Vector4};
use ndarray::{Array3, Axis};
use rayon::prelude::*;

use super::{Grid, Volume, VolumeError};

/// How values between voxel centres are obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interp {
    /// Nearest voxel: for label masks, keeps values from the source set.
    Nearest,
    /// Trilinear: for images.
    Linear,
}

/// Sample positions this close to a voxel centre (in voxels) snap onto it, so that resampling
/// onto the same grid, or onto a shifted-by-whole-voxels grid, is exact.
const SNAP: f64 = 1e-6;

impl Volume {
    /// Samples this volume at every voxel centre of `target` (through LPS mm); points outside
    /// the source grid get `fill`.
    pub fn resample(&self, target: &Grid, interp: Interp, fill: f32) -> Result<Volume, VolumeError> {
        if target.is_empty() {
            return Err(VolumeError::EmptyGrid { shape: target.shape });
        }
        let to_source: Matrix4<f64> = self.affine.inverse() * target.affine.matrix();
        let src = self.data.as_standard_layout();
        let src = src.as_slice().unwrap_or(&[]);
        let shape = self.shape();
        let [_, tj, tk] = target.shape;
        let mut out = Array3::from_elem(target.shape, fill);
        let step_k = to_source.column(2).xyz();
        out.axis_iter_mut(Axis(0))
            .into_par_iter()
            .enumerate()
            .for_each(|(i, mut slab)| {
                for j in 0..tj {
                    let base = to_source * Vector4::new(i as f64, j as f64, 0.0, 1.0);
                    for k in 0..tk {
                        let p = [
                            base[0] + step_k[0] * k as f64,
                            base[1] + step_k[1] * k as f64,
                            base[2] + step_k[2] * k as f64,
                        ];
                        let value = match interp {
                            Interp::Nearest => nearest(src, shape, p),
                            Interp::Linear => trilinear(src, shape, p),
                        };
                        if let Some(v) = value {
                            slab[[j, k]] = v;
                        }
                    }
                }
            });
        Volume::new(out, target.affine)
    }

    /// Extracts the box of `shape` voxels whose first voxel is source index `start` (which may be
    /// negative or run past the end: those voxels get `fill`). The affine follows, so every voxel
    /// keeps its LPS position.
    pub fn window(&self, start: [i64; 3], shape: [usize; 3], fill: f32) -> Result<Volume, VolumeError> {
        if shape.contains(&0) {
            return Err(VolumeError::EmptyGrid { shape });
        }
        let src_shape = self.shape();
        let mut out = Array3::from_elem(shape, fill);
        // Overlap along each axis, in output indices.
        let range = |a: usize| {
            let lo = (-start[a]).max(0) as usize;
            let hi = (src_shape[a] as i64 - start[a]).clamp(0, shape[a] as i64) as usize;
            (lo, hi.max(lo))
        };
        let (ri, rj, rk) = (range(0), range(1), range(2));
        if ri.0 < ri.1 && rj.0 < rj.1 && rk.0 < rk.1 {
            let src = |lo: usize, hi: usize, a: usize| {
                let s = (lo as i64 + start[a]) as usize;
                s..s + (hi - lo)
            };
            out.slice_mut(ndarray::s![ri.0..ri.1, rj.0..rj.1, rk.0..rk.1])
                .assign(
                    &self
                        .data
                        .slice(ndarray::s![src(ri.0, ri.1, 0), src(rj.0, rj.1, 1), src(rk.0, rk.1, 2)]),
                );
        }
        let mut shift = Matrix4::identity();
        for (a, s) in start.iter().enumerate() {
            shift[(a, 3)] = *s as f64;
        }
        Volume::new(out, self.affine.then_index(&shift)?)
    }

    /// Centred crop and/or pad to `shape` (padding with `fill`), keeping LPS positions.
    pub fn crop_or_pad(&self, shape: [usize; 3], fill: f32) -> Result<Volume, VolumeError> {
        let src = self.shape();
        let start = std::array::from_fn(|a| (src[a] as i64 - shape[a] as i64).div_euclid(2));
        self.window(start, shape, fill)
    }
}

/// Index and weight of the upper neighbour along one axis, or `None` outside `[0, n−1]`.
fn axis_weight(x: f64, n: usize) -> Option<(usize, usize, f32)> {
    let last = (n - 1) as f64;
    if !(x >= -SNAP && x <= last + SNAP) {
        return None;
    }
    let x = x.clamp(0.0, last);
    let i0 = x.floor() as usize;
    let f = x - i0 as f64;
    Some(if f < SNAP || i0 + 1 >= n {
        (i0, i0, 0.0)
    } else if f > 1.0 - SNAP {
        (i0 + 1, i0 + 1, 0.0)
    } else {
        (i0, i0 + 1, f as f32)
    })
}

fn trilinear(src: &[f32], shape: [usize; 3], p: [f64; 3]) -> Option<f32> {
    let (i0, i1, fi) = axis_weight(p[0], shape[0])?;
    let (j0, j1, fj) = axis_weight(p[1], shape[1])?;
    let (k0, k1, fk) = axis_weight(p[2], shape[2])?;
    let at = |i: usize, j: usize, k: usize| src[(i * shape[1] + j) * shape[2] + k];
    let lerp = |a: f32, b: f32, f: f32| if f == 0.0 { a } else { a + (b - a) * f };
    let c00 = lerp(at(i0, j0, k0), at(i0, j0, k1), fk);
    let c01 = lerp(at(i0, j1, k0), at(i0, j1, k1), fk);
    let c10 = lerp(at(i1, j0, k0), at(i1, j0, k1), fk);
    let c11 = lerp(at(i1, j1, k0), at(i1, j1, k1), fk);
    Some(lerp(lerp(c00, c01, fj), lerp(c10, c11, fj), fi))
}

fn nearest(src: &[f32], shape: [usize; 3], p: [f64; 3]) -> Option<f32> {
    let idx = |x: f64, n: usize| {
        let r = (x + SNAP).round();
        (r >= 0.0 && r < n as f64).then_some(r as usize)
    };
    let (i, j, k) = (idx(p[0], shape[0])?, idx(p[1], shape[1])?, idx(p[2], shape[2])?);
    Some(src[(i * shape[1] + j) * shape[2] + k])
}
