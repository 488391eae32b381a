//! FCD-II-like lesion in template space: site choice at the grey/white boundary, and the
//! lesion-modified tissue on a small box of template voxels.
//!
//! The lesion lives in template space, so each subject's deformation carries it along with the
//! anatomy. It has three parts, all with smooth falloff:
//! - a **core**, a sphere of `radius_mm` whose radius is modulated by low-frequency noise: the
//!   grey/white junction is blurred (GM share blended toward a Gaussian-blurred one, σ = 2 mm)
//!   and the cortex is thickened (white matter next to the cortex is turned into grey matter);
//! - **subcortical hyperintensity** in the core's white matter (FLAIR bright, T1w slightly dark);
//! - a **transmantle tail**, hyperintense, from the core toward the nearest lateral ventricle,
//!   narrowing and fading along the way.

use nalgebra::Vector3;
use ndarray::{Array3, Axis};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::anatomy::{Anatomy, Fractions};
use super::{Hemisphere, LesionSpec, Lobe, PhantomError};

/// Gaussian width of the blurred grey/white junction, mm.
const JUNCTION_BLUR_MM: f64 = 2.0;
/// Relative amplitude of the noise that makes the core irregular.
const SHAPE_IRREGULARITY: f64 = 0.3;
/// Core weight falls from 1 to 0 between these multiples of the local radius.
const CORE_FALLOFF: (f64, f64) = (0.75, 1.25);
/// Tail half-width at the core, as a fraction of the core radius; it narrows to `TAIL_MIN_MM`.
const TAIL_WIDTH: f64 = 0.45;
const TAIL_MIN_MM: f64 = 1.0;
/// Tail weight falls from 1 to 0 between these multiples of the local half-width.
const TAIL_FALLOFF: (f64, f64) = (0.6, 1.4);
/// FLAIR hyperintensity (relative signal increase of white matter) at contrast 1.0.
const CORE_HYPER: f64 = 0.6;
const TAIL_HYPER: f64 = 0.5;

/// Approximate lobe boxes in MNI RAS mm for the right hemisphere, `[min, max]` with x as |x|
/// (the left hemisphere mirrors x). Hand-placed from the MNI152 template, not an atlas: they
/// keep a lesion well inside its lobe, not trace the lobe's borders.
fn lobe_box_ras(lobe: Lobe) -> ([f64; 3], [f64; 3]) {
    match lobe {
        Lobe::Frontal => ([10.0, 10.0, 0.0], [55.0, 60.0, 60.0]),
        Lobe::Temporal => ([42.0, -55.0, -35.0], [65.0, 5.0, -5.0]),
        Lobe::Parietal => ([15.0, -70.0, 30.0], [55.0, -30.0, 65.0]),
        Lobe::Occipital => ([8.0, -100.0, -10.0], [40.0, -75.0, 25.0]),
    }
}

/// Lateral-ventricle landmarks in MNI RAS mm for the right hemisphere (x as |x|), checked on the
/// template: frontal horn, body, atrium (CSF ≥ 0.85 there), temporal horn (too thin to show as
/// CSF in the template, so only approximate).
pub(super) const VENTRICLES_RAS: [[f64; 3]; 4] = [
    [9.0, 14.0, 15.0],
    [9.0, -10.0, 22.0],
    [22.0, -36.0, 14.0],
    [28.0, -20.0, -14.0],
];

/// MNI RAS mm with |x| → template LPS mm in the given hemisphere (the patient's left is +x in LPS).
pub(super) fn ras_to_lps(hemisphere: Hemisphere, [x, y, z]: [f64; 3]) -> Vector3<f64> {
    let side = match hemisphere {
        Hemisphere::Left => 1.0,
        Hemisphere::Right => -1.0,
    };
    Vector3::new(side * x.abs(), -y, z)
}

/// Lesion-modified tissue at one point.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Tissue {
    pub fractions: Fractions,
    /// Relative FLAIR signal increase of white matter (0 = none).
    pub hyper: f32,
    /// Lesion weight in `[0, 1]` (core or tail, times the tissue fraction); the ROI is > 0.5.
    pub roi: f32,
    /// FLAIR signal added whatever the tissue, as a fraction of white matter's (mimics only).
    pub bright: f32,
}

/// A placed lesion: where it is and how it changes the tissue nearby.
#[derive(Clone, Debug)]
pub(super) struct Lesion {
    /// Centre of the core, template LPS mm.
    pub centre: Vector3<f64>,
    /// The lesion-modified tissue.
    pub patch: Patch,
}

/// Lesion-modified tissue on a box of template voxels; outside the box the lesion has no effect.
#[derive(Clone, Debug)]
pub(super) struct Patch {
    /// Template voxel index of the box's first voxel.
    start: [usize; 3],
    /// Voxels along i, j, k.
    shape: [usize; 3],
    /// `[gm, wm, csf, hyper, roi]` per voxel, index `(i · nj + j) · nk + k`.
    values: Vec<[f32; 5]>,
}

impl Patch {
    /// Trilinear lesion tissue at a fractional template voxel index, or `None` when the point is
    /// not strictly inside the box (then the plain anatomy applies: the box edge is unmodified).
    #[inline]
    pub fn sample(&self, v: [f64; 3]) -> Option<Tissue> {
        let l = [
            v[0] - self.start[0] as f64,
            v[1] - self.start[1] as f64,
            v[2] - self.start[2] as f64,
        ];
        if !(l[0] >= 0.0 && l[1] >= 0.0 && l[2] >= 0.0) {
            return None;
        }
        let [ni, nj, nk] = self.shape;
        let (i0, j0, k0) = (l[0] as usize, l[1] as usize, l[2] as usize);
        if i0 + 1 >= ni || j0 + 1 >= nj || k0 + 1 >= nk {
            return None;
        }
        let (fi, fj, fk) = (
            (l[0] - i0 as f64) as f32,
            (l[1] - j0 as f64) as f32,
            (l[2] - k0 as f64) as f32,
        );
        let base = (i0 * nj + j0) * nk + k0;
        let (si, sj) = (nj * nk, nk);
        let c = |o: usize| self.values[base + o];
        let lerp = |a: [f32; 5], b: [f32; 5], f: f32| -> [f32; 5] { std::array::from_fn(|n| a[n] + (b[n] - a[n]) * f) };
        let c00 = lerp(c(0), c(1), fk);
        let c01 = lerp(c(sj), c(sj + 1), fk);
        let c10 = lerp(c(si), c(si + 1), fk);
        let c11 = lerp(c(si + sj), c(si + sj + 1), fk);
        let [gm, wm, csf, hyper, roi] = lerp(lerp(c00, c01, fj), lerp(c10, c11, fj), fi);
        Some(Tissue {
            fractions: Fractions { gm, wm, csf },
            hyper,
            roi,
            bright: 0.0,
        })
    }
}

/// One low-frequency component of the shape noise: `sin(k · (x − centre) + phase)`.
struct ShapeWave {
    k: Vector3<f64>,
    phase: f64,
}

/// Chooses a site for `spec` with `rng` and builds the lesion there.
pub(super) fn place(anatomy: &Anatomy, spec: &LesionSpec, rng: &mut ChaCha8Rng) -> Result<Lesion, PhantomError> {
    let sites = boundary_sites(anatomy, spec.hemisphere, spec.lobe);
    if sites.is_empty() {
        return Err(PhantomError::NoLesionSite {
            hemisphere: spec.hemisphere,
            lobe: spec.lobe,
        });
    }
    let site = sites[rng.random_range(0..sites.len())];
    // Sub-voxel jitter so that centres are not locked to the template lattice.
    let jitter: [f64; 3] = std::array::from_fn(|_| rng.random_range(-0.5..0.5));
    let centre = Vector3::from(
        anatomy
            .affine()
            .apply(std::array::from_fn(|a| site[a] as f64 + jitter[a])),
    );
    let target = VENTRICLES_RAS
        .iter()
        .map(|&p| ras_to_lps(spec.hemisphere, p))
        .min_by(|a, b| (a - centre).norm().total_cmp(&(b - centre).norm()))
        .unwrap_or(centre);
    let r = spec.radius_mm;
    let waves = (0..4)
        .map(|_| {
            let dir = super::random_unit(rng);
            let wavelength = rng.random_range(1.5..3.0) * r.max(4.0);
            ShapeWave {
                k: dir * (std::f64::consts::TAU / wavelength),
                phase: rng.random_range(0.0..std::f64::consts::TAU),
            }
        })
        .collect::<Vec<_>>();
    let patch = build_patch(anatomy, spec, centre, target, &waves);
    Ok(Lesion { centre, patch })
}

/// Template voxels in the lobe box at the grey/white boundary (GM share 0.4–0.6, little CSF), in
/// a fixed scan order so that a seeded pick is reproducible.
pub(super) fn boundary_sites(anatomy: &Anatomy, hemisphere: Hemisphere, lobe: Lobe) -> Vec<[usize; 3]> {
    let (lo, hi) = lobe_box_ras(lobe);
    let (lo, hi) = (ras_to_lps(hemisphere, lo), ras_to_lps(hemisphere, hi));
    let [start, end] = voxel_box(anatomy, lo.inf(&hi), lo.sup(&hi), 0);
    let mut sites = Vec::new();
    for i in start[0]..=end[0] {
        for j in start[1]..=end[1] {
            for k in start[2]..=end[2] {
                let f = anatomy.at([i, j, k]);
                if f.gm + f.wm >= 0.9 && (0.4..=0.6).contains(&f.gm) {
                    sites.push([i, j, k]);
                }
            }
        }
    }
    sites
}

/// Inclusive template voxel box covering an LPS mm box, grown by `margin` voxels and clamped.
fn voxel_box(anatomy: &Anatomy, lo: Vector3<f64>, hi: Vector3<f64>, margin: usize) -> [[usize; 3]; 2] {
    let to_voxel = anatomy.to_voxel();
    let (mut vlo, mut vhi) = ([f64::INFINITY; 3], [f64::NEG_INFINITY; 3]);
    for corner in 0..8 {
        let p = [
            if corner & 1 == 0 { lo.x } else { hi.x },
            if corner & 2 == 0 { lo.y } else { hi.y },
            if corner & 4 == 0 { lo.z } else { hi.z },
        ];
        let v = to_voxel.transform_point(&p.into());
        for a in 0..3 {
            vlo[a] = vlo[a].min(v[a]);
            vhi[a] = vhi[a].max(v[a]);
        }
    }
    let shape = anatomy.shape();
    let clamp = |x: f64, a: usize| (x.max(0.0) as usize).min(shape[a] - 1);
    [
        std::array::from_fn(|a| clamp(vlo[a].floor(), a).saturating_sub(margin)),
        std::array::from_fn(|a| (clamp(vhi[a].ceil(), a) + margin).min(shape[a] - 1)),
    ]
}

pub(super) fn smoothstep(e0: f64, e1: f64, x: f64) -> f64 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Computes the lesion-modified tissue on the box of template voxels the lesion can reach.
/// Positions are template LPS mm.
fn build_patch(
    anatomy: &Anatomy,
    spec: &LesionSpec,
    centre: Vector3<f64>,
    target: Vector3<f64>,
    waves: &[ShapeWave],
) -> Patch {
    let r = spec.radius_mm;
    let contrast = spec.contrast;
    let to_target = target - centre;
    let tail_len = to_target.norm().max(1e-6);
    let tail_dir = to_target / tail_len;

    // Box in LPS mm that holds every voxel with a non-zero core or tail weight, plus 1 mm.
    let core_reach = CORE_FALLOFF.1 * (1.0 + SHAPE_IRREGULARITY) * r + 1.0;
    let tail_reach = TAIL_FALLOFF.1 * (TAIL_WIDTH * r).max(TAIL_MIN_MM) + 1.0;
    let lo = (centre.add_scalar(-core_reach)).inf(&centre.inf(&target).add_scalar(-tail_reach));
    let hi = (centre.add_scalar(core_reach)).sup(&centre.sup(&target).add_scalar(tail_reach));
    let [start, end] = voxel_box(anatomy, lo, hi, 1);
    let shape: [usize; 3] = std::array::from_fn(|a| end[a] - start[a] + 1);

    // GM and WM on the box grown by 3σ, blurred, for the junction.
    let spacing = anatomy.affine().spacing();
    let sigma_vox: [f64; 3] = std::array::from_fn(|a| JUNCTION_BLUR_MM / spacing[a]);
    let margin = sigma_vox.iter().map(|s| (3.0 * s).ceil() as usize).max().unwrap_or(0);
    let n = anatomy.shape();
    let ext_start = start.map(|x| x.saturating_sub(margin));
    let ext_end: [usize; 3] = std::array::from_fn(|a| (end[a] + margin).min(n[a] - 1));
    let ext_shape: [usize; 3] = std::array::from_fn(|a| ext_end[a] - ext_start[a] + 1);
    let mut gm_blur = Array3::from_shape_fn(ext_shape, |(i, j, k)| {
        anatomy.at([ext_start[0] + i, ext_start[1] + j, ext_start[2] + k]).gm
    });
    let mut wm_blur = Array3::from_shape_fn(ext_shape, |(i, j, k)| {
        anatomy.at([ext_start[0] + i, ext_start[1] + j, ext_start[2] + k]).wm
    });
    for (axis, &sigma) in sigma_vox.iter().enumerate() {
        gaussian_along(&mut gm_blur, axis, sigma);
        gaussian_along(&mut wm_blur, axis, sigma);
    }

    let blur_mix = (0.7 * contrast).clamp(0.0, 1.0);
    let thickening = (0.45 * contrast).clamp(0.0, 0.9);
    let mut values = Vec::with_capacity(shape.iter().product());
    for i in 0..shape[0] {
        for j in 0..shape[1] {
            for k in 0..shape[2] {
                let idx = [start[0] + i, start[1] + j, start[2] + k];
                let e = [idx[0] - ext_start[0], idx[1] - ext_start[1], idx[2] - ext_start[2]];
                let f = anatomy.at(idx);
                let (gb, wb) = (f64::from(gm_blur[e]), f64::from(wm_blur[e]));
                let x = Vector3::from(anatomy.affine().apply(idx.map(|v| v as f64)));
                let rel = x - centre;

                // Core: a sphere whose radius wobbles with low-frequency noise.
                let noise = (waves.iter().map(|w| (w.k.dot(&rel) + w.phase).sin()).sum::<f64>() / 2.0).clamp(-1.0, 1.0);
                let r_local = r * (1.0 + SHAPE_IRREGULARITY * noise);
                let core = 1.0 - smoothstep(CORE_FALLOFF.0 * r_local, CORE_FALLOFF.1 * r_local, rel.norm());
                // Tail: a tapering tube along the segment centre → ventricle.
                let s = (rel.dot(&tail_dir) / tail_len).clamp(0.0, 1.0);
                let off_axis = (rel - tail_dir * (s * tail_len)).norm();
                let width = (TAIL_WIDTH * r * (1.0 - s)).max(TAIL_MIN_MM);
                let tail = 1.0 - smoothstep(TAIL_FALLOFF.0 * width, TAIL_FALLOFF.1 * width, off_axis);

                // Junction blur and thickening change the GM share of the tissue, not the amount
                // of tissue, so CSF and the brain outline stay as they were.
                let (g, w) = (f64::from(f.gm), f64::from(f.wm));
                let tissue = g + w;
                let share = if tissue > 1e-4 { g / tissue } else { 0.5 };
                let share_blur = if gb + wb > 1e-4 { gb / (gb + wb) } else { share };
                let near_cortex = (2.0 * gb).clamp(0.0, 1.0);
                let share = share + core * blur_mix * (share_blur - share);
                let share = share + core * thickening * near_cortex * (1.0 - share);
                let hyper =
                    contrast * spec.flair_gain * (CORE_HYPER * core).max(TAIL_HYPER * tail * (1.0 - 0.6 * s)) * tissue;
                let roi = core.max(tail) * tissue;
                values.push([
                    (tissue * share) as f32,
                    (tissue * (1.0 - share)) as f32,
                    f.csf,
                    hyper as f32,
                    roi as f32,
                ]);
            }
        }
    }
    Patch { start, shape, values }
}

/// In-place Gaussian smoothing along one axis (σ in voxels, truncated at 3σ); weights are
/// renormalised at the array edges.
fn gaussian_along(a: &mut Array3<f32>, axis: usize, sigma: f64) {
    if sigma <= 0.0 {
        return;
    }
    let half = (3.0 * sigma).ceil() as isize;
    let kernel: Vec<f64> = (-half..=half)
        .map(|t| (-0.5 * (t as f64 / sigma).powi(2)).exp())
        .collect();
    let mut line = Vec::new();
    for mut lane in a.lanes_mut(Axis(axis)) {
        line.clear();
        line.extend(lane.iter().copied());
        let n = line.len() as isize;
        for (x, out) in lane.iter_mut().enumerate() {
            let (mut sum, mut norm) = (0.0, 0.0);
            for (t, w) in (-half..=half).zip(&kernel) {
                let y = x as isize + t;
                if (0..n).contains(&y) {
                    sum += w * f64::from(line[y as usize]);
                    norm += w;
                }
            }
            *out = (sum / norm) as f32;
        }
    }
}
