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
        let mut out = Array3::from_elem(target.shape, fill);
        match parallel_axes(&to_source) {
            Some(axes) => resample_separable(src, shape, &axes, interp, &mut out),
            None => resample_general(src, shape, &to_source, interp, &mut out),
        }
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

/// Source axis `a` of an axis-parallel resampling: its coordinate is `scale × n + offset` for
/// target index `n` along target axis `target`.
#[derive(Clone, Copy, Debug)]
struct AxisMap {
    target: usize,
    scale: f64,
    offset: f64,
}

/// When target voxel → source voxel only permutes, scales and shifts the axes (a sagittal series
/// onto the RAS model grid and back, any grid onto itself), how each source axis follows one
/// target axis; `None` for oblique pairs.
fn parallel_axes(to_source: &Matrix4<f64>) -> Option<[AxisMap; 3]> {
    let mut maps = [AxisMap {
        target: 0,
        scale: 0.0,
        offset: 0.0,
    }; 3];
    let mut used = [false; 3];
    for (a, map) in maps.iter_mut().enumerate() {
        let row = [to_source[(a, 0)], to_source[(a, 1)], to_source[(a, 2)]];
        let largest = row.iter().map(|v| v.abs()).fold(0.0, f64::max);
        // Off-axis terms this small move a sample by under 1e-9 voxels over 1024 voxels.
        let along: Vec<usize> = (0..3).filter(|&t| row[t].abs() > largest * 1e-12).collect();
        let [t] = along.as_slice() else { return None };
        if used[*t] {
            return None;
        }
        used[*t] = true;
        *map = AxisMap {
            target: *t,
            scale: row[*t],
            offset: to_source[(a, 3)],
        };
    }
    Some(maps)
}

/// Axis-parallel resampling: each source axis's neighbours and weight are worked out once per
/// target index along the axis it follows, not once per voxel. Same samples as
/// [`resample_general`], at a fraction of its time on the 11 M voxels of a 1 mm series.
fn resample_separable(src: &[f32], shape: [usize; 3], axes: &[AxisMap; 3], interp: Interp, out: &mut Array3<f32>) {
    let tshape = out.dim();
    let tshape = [tshape.0, tshape.1, tshape.2];
    let weights: [Vec<Option<Weights>>; 3] = std::array::from_fn(|a| {
        let AxisMap { target, scale, offset } = axes[a];
        (0..tshape[target])
            .map(|n| {
                let x = scale * n as f64 + offset;
                match interp {
                    Interp::Linear => axis_weight(x, shape[a]),
                    Interp::Nearest => nearest_index(x, shape[a]).map(|i| (i, i, 0.0)),
                }
            })
            .collect()
    });
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(i, mut slab)| {
            for (j, mut row) in slab.outer_iter_mut().enumerate() {
                // The source axes that follow target i or j are fixed along the row.
                let fixed = |a: usize| match axes[a].target {
                    0 => Some(weights[a][i]),
                    1 => Some(weights[a][j]),
                    _ => None,
                };
                let fixed = [fixed(0), fixed(1), fixed(2)];
                if fixed.iter().any(|f| matches!(f, Some(None))) {
                    continue;
                }
                for (k, v) in row.iter_mut().enumerate() {
                    let w = |a: usize| fixed[a].unwrap_or_else(|| weights[a][k]);
                    if let (Some(wi), Some(wj), Some(wk)) = (w(0), w(1), w(2)) {
                        *v = trilinear_at(src, shape, wi, wj, wk);
                    }
                }
            }
        });
}

/// Any pair of grids: each target voxel centre mapped into the source.
fn resample_general(src: &[f32], shape: [usize; 3], to_source: &Matrix4<f64>, interp: Interp, out: &mut Array3<f32>) {
    let (_, tj, tk) = out.dim();
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
}

/// Lower and upper neighbour along one axis and the upper one's weight.
type Weights = (usize, usize, f32);

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
    Some(trilinear_at(
        src,
        shape,
        axis_weight(p[0], shape[0])?,
        axis_weight(p[1], shape[1])?,
        axis_weight(p[2], shape[2])?,
    ))
}

fn trilinear_at(
    src: &[f32],
    shape: [usize; 3],
    (i0, i1, fi): Weights,
    (j0, j1, fj): Weights,
    (k0, k1, fk): Weights,
) -> f32 {
    let at = |i: usize, j: usize, k: usize| src[(i * shape[1] + j) * shape[2] + k];
    let lerp = |a: f32, b: f32, f: f32| if f == 0.0 { a } else { a + (b - a) * f };
    let c00 = lerp(at(i0, j0, k0), at(i0, j0, k1), fk);
    let c01 = lerp(at(i0, j1, k0), at(i0, j1, k1), fk);
    let c10 = lerp(at(i1, j0, k0), at(i1, j0, k1), fk);
    let c11 = lerp(at(i1, j1, k0), at(i1, j1, k1), fk);
    lerp(lerp(c00, c01, fj), lerp(c10, c11, fj), fi)
}

/// The voxel whose centre is nearest to `x` along an axis of `n` voxels.
fn nearest_index(x: f64, n: usize) -> Option<usize> {
    let r = (x + SNAP).round();
    (r >= 0.0 && r < n as f64).then_some(r as usize)
}

fn nearest(src: &[f32], shape: [usize; 3], p: [f64; 3]) -> Option<f32> {
    let (i, j, k) = (
        nearest_index(p[0], shape[0])?,
        nearest_index(p[1], shape[1])?,
        nearest_index(p[2], shape[2])?,
    );
    Some(src[(i * shape[1] + j) * shape[2] + k])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::{Affine, Plane, acquisition_grid};

    fn random_volume(plane: Plane) -> Volume {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let grid = acquisition_grid(plane, [1.0, 1.2, 1.5], [40.0, 36.0, 30.0], [3.0, -2.0, 5.0]).unwrap();
        let data = Array3::from_shape_fn(grid.shape, |_| rng.random_range(0.0..100.0f32));
        Volume::new(data, grid.affine).unwrap()
    }

    /// A RAS grid of 2 mm voxels, off the source lattice by a fraction of a voxel and reaching
    /// past it on every side (so fill values are compared too).
    fn ras_grid() -> Grid {
        let dirs = [[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]];
        Grid {
            // Longest along k: each axis's table has its own length.
            shape: [20, 24, 31],
            affine: Affine::from_parts([2.0, 1.7, 1.3], dirs, [24.3, 19.9, -18.2]).unwrap(),
        }
    }

    #[test]
    fn the_axis_parallel_path_samples_what_the_general_one_does() {
        for plane in [Plane::Sagittal, Plane::Axial, Plane::Coronal] {
            let v = random_volume(plane);
            let target = ras_grid();
            let to_source = v.affine.inverse() * target.affine.matrix();
            assert!(parallel_axes(&to_source).is_some(), "{plane:?} is axis-parallel to RAS");
            let src = v.data.as_standard_layout();
            for interp in [Interp::Linear, Interp::Nearest] {
                let fast = v.resample(&target, interp, -1.0).unwrap();
                let mut general = Array3::from_elem(target.shape, -1.0);
                resample_general(src.as_slice().unwrap(), v.shape(), &to_source, interp, &mut general);
                let inside = general.iter().filter(|&&x| x != -1.0).count();
                assert!(inside > general.len() / 4, "{plane:?}: the grids overlap");
                let worst = ndarray::Zip::from(fast.data())
                    .and(&general)
                    .fold(0.0f32, |m, a, b| m.max((a - b).abs()));
                assert!(worst < 1e-3, "{plane:?} {interp:?}: differs by {worst}");
            }
        }
    }

    #[test]
    fn an_oblique_pair_takes_the_general_path() {
        let v = random_volume(Plane::Oblique);
        let to_source = v.affine.inverse() * ras_grid().affine.matrix();
        assert!(parallel_axes(&to_source).is_none());
    }
}
