//! `Volume`: f32 voxels on a grid with a voxel → LPS mm affine; the geometry shared by node and trainer.
//!
//! Voxel arrays are indexed `[i, j, k]`, with `i` the fastest axis on disk (NIfTI's order; for a
//! DICOM stack, `i` runs along a row, `j` down the columns and `k` across slices).

mod acquisition;
mod affine;
mod reorient;
mod resample;

pub use acquisition::{Plane, acquisition_grid};
pub use affine::{Affine, AxisCode, Orientation};
pub use resample::Interp;

use ndarray::{Array3, Zip};

/// A geometry failure: the error names the rule that was broken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VolumeError {
    /// The affine is not a usable voxel → world transform.
    #[error("invalid affine: {rule}")]
    BadAffine { rule: String },
    /// An orientation code is not three distinct letters from L/R, P/A, S/I.
    #[error("invalid orientation code {code:?}: expected three letters such as RAS or LPS, one per axis pair")]
    BadOrientation { code: String },
    /// Two arrays that must share a grid do not.
    #[error("shape mismatch: {what} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        what: &'static str,
        expected: [usize; 3],
        found: [usize; 3],
    },
    /// A grid with no voxels.
    #[error("empty grid: shape {shape:?} has a zero dimension")]
    EmptyGrid { shape: [usize; 3] },
    /// Statistics over a region that holds no voxels or no variation.
    #[error("cannot z-score normalise: {reason}")]
    Degenerate { reason: String },
}

/// A sampling grid: shape and voxel → LPS mm affine, without voxel values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Grid {
    /// Number of voxels along i, j, k.
    pub shape: [usize; 3],
    /// Voxel index → LPS mm.
    pub affine: Affine,
}

impl Grid {
    /// LPS mm position of a voxel centre.
    pub fn voxel_to_world(&self, ijk: [f64; 3]) -> [f64; 3] {
        self.affine.apply(ijk)
    }

    /// Total number of voxels.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the grid has no voxels.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An image volume: f32 voxels `[i, j, k]` and a voxel → LPS mm affine.
#[derive(Clone, Debug, PartialEq)]
pub struct Volume {
    data: Array3<f32>,
    affine: Affine,
}

impl Volume {
    /// Wraps voxels and their affine; refuses an empty grid.
    pub fn new(data: Array3<f32>, affine: Affine) -> Result<Self, VolumeError> {
        let shape = dim3(&data);
        if shape.contains(&0) {
            return Err(VolumeError::EmptyGrid { shape });
        }
        Ok(Self { data, affine })
    }

    /// A volume of `fill` on the given grid.
    pub fn filled(grid: &Grid, fill: f32) -> Result<Self, VolumeError> {
        Self::new(Array3::from_elem(grid.shape, fill), grid.affine)
    }

    /// A 0/1 volume from a boolean mask on `affine`.
    pub fn from_mask(mask: &Array3<bool>, affine: Affine) -> Result<Self, VolumeError> {
        Self::new(mask.mapv(|m| if m { 1.0 } else { 0.0 }), affine)
    }

    /// Voxel values, indexed `[i, j, k]`.
    pub fn data(&self) -> &Array3<f32> {
        &self.data
    }

    /// Mutable voxel values (the grid cannot change through this).
    pub fn data_mut(&mut self) -> &mut Array3<f32> {
        &mut self.data
    }

    /// Consumes the volume, returning its voxels.
    pub fn into_data(self) -> Array3<f32> {
        self.data
    }

    /// Voxel index → LPS mm.
    pub fn affine(&self) -> &Affine {
        &self.affine
    }

    /// Shape and affine.
    pub fn grid(&self) -> Grid {
        Grid {
            shape: self.shape(),
            affine: self.affine,
        }
    }

    /// Number of voxels along i, j, k.
    pub fn shape(&self) -> [usize; 3] {
        dim3(&self.data)
    }

    /// Voxel size in mm along i, j, k.
    pub fn spacing(&self) -> [f64; 3] {
        self.affine.spacing()
    }

    /// Unit LPS direction of each voxel axis.
    pub fn directions(&self) -> [[f64; 3]; 3] {
        self.affine.directions()
    }

    /// LPS mm position of a (fractional) voxel index.
    pub fn voxel_to_world(&self, ijk: [f64; 3]) -> [f64; 3] {
        self.affine.apply(ijk)
    }

    /// Fractional voxel index of an LPS mm position.
    pub fn world_to_voxel(&self, lps: [f64; 3]) -> [f64; 3] {
        self.affine.world_to_voxel(lps)
    }

    /// Closest axis-code orientation of the voxel axes.
    pub fn orientation(&self) -> Orientation {
        self.affine.orientation()
    }

    /// Voxels above `threshold`.
    pub fn threshold(&self, threshold: f32) -> Array3<bool> {
        self.data.mapv(|v| v > threshold)
    }

    /// World (LPS mm) centres of the voxels of a mask volume (value > 0.5), e.g. a lesion ROI.
    pub fn mask_points(&self) -> Vec<[f64; 3]> {
        self.data
            .indexed_iter()
            .filter(|(_, v)| **v > 0.5)
            .map(|((i, j, k), _)| self.voxel_to_world([i as f64, j as f64, k as f64]))
            .collect()
    }

    /// Head foreground: Otsu threshold on the intensity histogram, then every background
    /// region not connected to the volume border is filled (ventricles, dark CSF in FLAIR).
    pub fn foreground_mask(&self) -> Array3<bool> {
        let t = otsu_threshold(&self.data);
        let data = self.data.as_standard_layout();
        fill_holes(data.as_slice().unwrap_or(&[]), self.shape(), |v| v > t)
    }

    /// Z-score normalisation in place: mean and standard deviation are taken over `within`
    /// (every voxel when `None`), then applied to every voxel.
    pub fn zscore(&mut self, within: Option<&Array3<bool>>) -> Result<(), VolumeError> {
        if let Some(mask) = within {
            check_same_shape("mask", self.shape(), dim3(mask))?;
        }
        let (mut n, mut sum, mut sum2) = (0usize, 0f64, 0f64);
        let mut add = |v: f32| {
            n += 1;
            sum += f64::from(v);
            sum2 += f64::from(v) * f64::from(v);
        };
        match within {
            Some(mask) => Zip::from(&self.data).and(mask).for_each(|&v, &m| {
                if m {
                    add(v)
                }
            }),
            None => self.data.iter().for_each(|&v| add(v)),
        }
        if n == 0 {
            return Err(VolumeError::Degenerate {
                reason: "the mask selects no voxel".into(),
            });
        }
        let mean = sum / n as f64;
        let std = (sum2 / n as f64 - mean * mean).max(0.0).sqrt();
        if std < 1e-12 {
            return Err(VolumeError::Degenerate {
                reason: format!("constant intensity {mean} over {n} voxels"),
            });
        }
        self.data.mapv_inplace(|v| ((f64::from(v) - mean) / std) as f32);
        Ok(())
    }
}

pub(crate) fn dim3<T>(a: &Array3<T>) -> [usize; 3] {
    let d = a.dim();
    [d.0, d.1, d.2]
}

fn check_same_shape(what: &'static str, expected: [usize; 3], found: [usize; 3]) -> Result<(), VolumeError> {
    if expected == found {
        Ok(())
    } else {
        Err(VolumeError::ShapeMismatch { what, expected, found })
    }
}

/// Otsu's threshold over a 256-bin histogram of the finite voxel values.
fn otsu_threshold(data: &Array3<f32>) -> f32 {
    use rayon::prelude::*;
    // Both passes over the voxels in parallel chunks (a full-resolution head is ~11 M voxels);
    // the counts, and so the threshold, are the same as one pass in order.
    let owned;
    let voxels: &[f32] = match data.as_slice_memory_order() {
        Some(voxels) => voxels,
        None => {
            owned = data.iter().copied().collect::<Vec<f32>>();
            &owned
        }
    };
    const CHUNK: usize = 1 << 16;
    let (lo, hi) = voxels
        .par_chunks(CHUNK)
        .map(|chunk| {
            chunk
                .iter()
                .filter(|v| v.is_finite())
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                    (lo.min(v), hi.max(v))
                })
        })
        .reduce(
            || (f32::INFINITY, f32::NEG_INFINITY),
            |a, b| (a.0.min(b.0), a.1.max(b.1)),
        );
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return lo;
    }
    const BINS: usize = 256;
    let width = (hi - lo) / BINS as f32;
    let hist = voxels
        .par_chunks(CHUNK)
        .map(|chunk| {
            let mut hist = [0u64; BINS];
            for &v in chunk.iter().filter(|v| v.is_finite()) {
                hist[(((v - lo) / width) as usize).min(BINS - 1)] += 1;
            }
            hist
        })
        .reduce(
            || [0u64; BINS],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                a
            },
        );
    let total: u64 = hist.iter().sum();
    let sum_all: f64 = hist.iter().enumerate().map(|(b, &c)| b as f64 * c as f64).sum();
    let (mut w0, mut sum0, mut best, mut best_b) = (0u64, 0f64, -1.0f64, 0usize);
    for (b, &c) in hist.iter().enumerate() {
        w0 += c;
        sum0 += b as f64 * c as f64;
        let w1 = total - w0;
        if w0 == 0 || w1 == 0 {
            continue;
        }
        let m0 = sum0 / w0 as f64;
        let m1 = (sum_all - sum0) / w1 as f64;
        let between = w0 as f64 * w1 as f64 * (m0 - m1).powi(2);
        if between > best {
            best = between;
            best_b = b;
        }
    }
    lo + width * (best_b as f32 + 1.0)
}

/// Marks as foreground every voxel not reachable from the border through background voxels
/// (6-connectivity).
///
/// Hand-written flood fill over the volume set in a frame two voxels wide: the inner layer is
/// background that joins every border voxel (one seed reaches them all), the outer layer a wall,
/// so no visited voxel lies on the array's edge and its six neighbours need neither bounds checks
/// nor index arithmetic. The fill visits millions of voxels in a head-sized volume, and the
/// checked walk of [`connected_region`] took most of preprocessing's time.
///
/// `data` is a standard-layout `shape` array; `inside(value)` says which voxels the mask holds
/// before filling.
fn fill_holes<T: Copy>(data: &[T], shape: [usize; 3], inside: impl Fn(T) -> bool) -> Array3<bool> {
    const WALL: u8 = 0;
    const OPEN: u8 = 1;
    const REACHED: u8 = 2;
    let [ni, nj, nk] = shape;
    if data.len() != ni * nj * nk {
        return Array3::from_elem((ni, nj, nk), false);
    }
    let (pi, pj, pk) = (ni + 4, nj + 4, nk + 4);
    let (si, sj) = (pj * pk, pk);
    let at = |i: usize, j: usize, k: usize| i * si + j * sj + k;
    let mut cells = vec![OPEN; pi * pj * pk];
    for i in 0..pi {
        for j in 0..pj {
            if i == 0 || j == 0 || i + 1 == pi || j + 1 == pj {
                cells[at(i, j, 0)..at(i, j, 0) + pk].fill(WALL);
            } else {
                cells[at(i, j, 0)] = WALL;
                cells[at(i, j, pk - 1)] = WALL;
            }
        }
    }
    for (row, values) in data.chunks_exact(nk.max(1)).enumerate() {
        let start = at(row / nj + 2, row % nj + 2, 2);
        for (cell, &v) in cells[start..start + nk].iter_mut().zip(values) {
            if inside(v) {
                *cell = WALL;
            }
        }
    }
    let seed = at(1, 1, 1);
    cells[seed] = REACHED;
    let mut stack = vec![seed];
    while let Some(n) = stack.pop() {
        for next in [n - si, n + si, n - sj, n + sj, n - 1, n + 1] {
            if cells[next] == OPEN {
                cells[next] = REACHED;
                stack.push(next);
            }
        }
    }
    let mut filled = Vec::with_capacity(ni * nj * nk);
    for i in 0..ni {
        for j in 0..nj {
            let start = at(i + 2, j + 2, 2);
            filled.extend(cells[start..start + nk].iter().map(|&c| c != REACHED));
        }
    }
    Array3::from_shape_vec((ni, nj, nk), filled).unwrap_or_else(|_| Array3::from_elem((ni, nj, nk), false))
}

/// Distance in mm from `p` to the nearest of `points`; `None` without points.
pub fn nearest_distance(points: &[[f64; 3]], p: [f64; 3]) -> Option<f64> {
    points
        .iter()
        .map(|q| (0..3).map(|a| (q[a] - p[a]).powi(2)).sum::<f64>().sqrt())
        .min_by(f64::total_cmp)
}

/// The voxels of `mask` 6-connected (through faces) to any of `seeds` inside it; seeds outside
/// the mask or the grid start nothing. Face connectivity is the strictest: a region never leaks
/// through a corner.
pub fn connected_region(mask: &Array3<bool>, seeds: impl IntoIterator<Item = [usize; 3]>) -> Array3<bool> {
    let [ni, nj, nk] = dim3(mask);
    // Flat indices over a standard-layout copy: the flood fill visits millions of voxels in a
    // head-sized volume, and ndarray's per-access index arithmetic and bounds checks dominated.
    let mask = mask.as_standard_layout();
    let inside = mask.as_slice().unwrap_or(&[]);
    let mut region = vec![false; inside.len()];
    let (stride_i, stride_j) = (nj * nk, nk);
    let mut stack: Vec<usize> = Vec::new();
    for [i, j, k] in seeds {
        if i < ni && j < nj && k < nk {
            let at = i * stride_i + j * stride_j + k;
            if inside[at] && !region[at] {
                region[at] = true;
                stack.push(at);
            }
        }
    }
    while let Some(at) = stack.pop() {
        let (i, j, k) = (at / stride_i, (at / stride_j) % nj, at % nk);
        let mut visit = |n: usize| {
            if inside[n] && !region[n] {
                region[n] = true;
                stack.push(n);
            }
        };
        if i > 0 {
            visit(at - stride_i);
        }
        if i + 1 < ni {
            visit(at + stride_i);
        }
        if j > 0 {
            visit(at - stride_j);
        }
        if j + 1 < nj {
            visit(at + stride_j);
        }
        if k > 0 {
            visit(at - 1);
        }
        if k + 1 < nk {
            visit(at + 1);
        }
    }
    Array3::from_shape_vec((ni, nj, nk), region).unwrap_or_else(|_| Array3::from_elem((ni, nj, nk), false))
}

#[cfg(test)]
mod tests;
