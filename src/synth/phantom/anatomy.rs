//! The MNI ICBM152 2009a templates built into the binary, packed for fast trilinear sampling.

use nalgebra::Matrix4;

use super::PhantomError;
use crate::nifti;
use crate::volume::{Affine, Volume};

// The templates travel inside the binary so that `fcdnode synth` works from any directory.
static T1_GZ: &[u8] = include_bytes!("../../../data/mni152/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz");
static GM_GZ: &[u8] = include_bytes!("../../../data/mni152/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz");
static WM_GZ: &[u8] = include_bytes!("../../../data/mni152/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz");

/// Tissue fractions at one point: grey matter, white matter, CSF, each in `[0, 1]`, summing to
/// at most 1 (0 outside the brain).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Fractions {
    pub gm: f32,
    pub wm: f32,
    pub csf: f32,
}

/// Healthy template anatomy (MNI ICBM152 2009a, 1 mm), loaded once and shared by every subject.
///
/// The three templates are stored interleaved, one `[gm, wm, brain, 0]` byte quadruple per
/// voxel (they are 8-bit images, so nothing is lost), so that a trilinear lookup touches eight
/// small neighbouring records instead of three separate volumes. `brain` is 255 where the
/// skull-stripped T1 is non-zero; CSF is derived as brain − GM − WM.
pub struct Anatomy {
    /// `[gm, wm, brain, 0]` per voxel, index `(i · nj + j) · nk + k`.
    tissue: Vec<[u8; 4]>,
    /// Template voxels along i, j, k.
    shape: [usize; 3],
    /// Template voxel index → LPS mm (MNI coordinates with x and y negated).
    affine: Affine,
    /// LPS mm → template voxel index.
    to_voxel: Matrix4<f64>,
}

impl Anatomy {
    /// Decodes the built-in templates (about half a second; do it once per process).
    pub fn load() -> Result<Self, PhantomError> {
        let read = |name: &'static str, bytes: &[u8]| {
            nifti::read_gz_bytes(name, bytes).map_err(|source| PhantomError::Template { name, source })
        };
        let t1 = read("mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", T1_GZ)?;
        let gm = read("mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz", GM_GZ)?;
        let wm = read("mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz", WM_GZ)?;
        for (name, v) in [
            ("mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz", &gm),
            ("mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz", &wm),
        ] {
            if v.shape() != t1.shape() || v.affine().max_abs_diff(t1.affine()) > 1e-3 {
                return Err(PhantomError::TemplateMismatch {
                    name,
                    expected: t1.shape(),
                    found: v.shape(),
                });
            }
        }
        Ok(Self::from_volumes(&t1, &gm, &wm))
    }

    /// Packs the three templates; GM and WM are probabilities scaled to 0..=255.
    fn from_volumes(t1: &Volume, gm: &Volume, wm: &Volume) -> Self {
        let byte = |v: f32| v.round().clamp(0.0, 255.0) as u8;
        // `iter` walks in logical [i, j, k] order whatever the memory layout.
        let tissue = t1
            .data()
            .iter()
            .zip(gm.data().iter())
            .zip(wm.data().iter())
            .map(|((&t, &g), &w)| [byte(g), byte(w), if t > 0.0 { 255 } else { 0 }, 0])
            .collect();
        let affine = *t1.affine();
        Self {
            tissue,
            shape: t1.shape(),
            affine,
            to_voxel: affine.inverse(),
        }
    }

    /// Template voxels along i, j, k.
    pub(super) fn shape(&self) -> [usize; 3] {
        self.shape
    }

    /// Template voxel index → LPS mm.
    pub(super) fn affine(&self) -> &Affine {
        &self.affine
    }

    /// LPS mm → template voxel index.
    pub(super) fn to_voxel(&self) -> &Matrix4<f64> {
        &self.to_voxel
    }

    /// Tissue fractions at an integer template voxel index (must be inside the grid).
    pub(super) fn at(&self, [i, j, k]: [usize; 3]) -> Fractions {
        let [_, nj, nk] = self.shape;
        let [g, w, b, _] = self.tissue[(i * nj + j) * nk + k];
        fractions(f32::from(g), f32::from(w), f32::from(b))
    }

    /// Trilinear tissue fractions at a fractional template voxel index; zero outside the grid.
    #[inline]
    pub(super) fn sample(&self, v: [f64; 3]) -> Fractions {
        let [ni, nj, nk] = self.shape;
        // Also false for NaN.
        if !(v[0] >= 0.0 && v[1] >= 0.0 && v[2] >= 0.0) {
            return Fractions::default();
        }
        let (i0, j0, k0) = (v[0] as usize, v[1] as usize, v[2] as usize);
        if i0 + 1 >= ni || j0 + 1 >= nj || k0 + 1 >= nk {
            return Fractions::default();
        }
        let (fi, fj, fk) = (
            (v[0] - i0 as f64) as f32,
            (v[1] - j0 as f64) as f32,
            (v[2] - k0 as f64) as f32,
        );
        let base = (i0 * nj + j0) * nk + k0;
        let (si, sj) = (nj * nk, nk);
        let t = &self.tissue;
        let c = |o: usize| {
            let [g, w, b, _] = t[base + o];
            [f32::from(g), f32::from(w), f32::from(b)]
        };
        let lerp3 = |a: [f32; 3], b: [f32; 3], f: f32| std::array::from_fn(|n| a[n] + (b[n] - a[n]) * f);
        let c00 = lerp3(c(0), c(1), fk);
        let c01 = lerp3(c(sj), c(sj + 1), fk);
        let c10 = lerp3(c(si), c(si + 1), fk);
        let c11 = lerp3(c(si + sj), c(si + sj + 1), fk);
        let [g, w, b] = lerp3(lerp3(c00, c01, fj), lerp3(c10, c11, fj), fi);
        fractions(g, w, b)
    }
}

/// Byte-scaled GM, WM and brain mask → fractions, CSF = brain − GM − WM clamped to [0, 1].
#[inline]
fn fractions(g: f32, w: f32, b: f32) -> Fractions {
    const S: f32 = 1.0 / 255.0;
    Fractions {
        gm: g * S,
        wm: w * S,
        csf: ((b - g - w) * S).clamp(0.0, 1.0),
    }
}
