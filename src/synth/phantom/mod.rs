//! Synthetic MR phantoms: MNI152 anatomy → per-subject deformation → T1w / FLAIR images with
//! bias field and Rician noise, plus an FCD-II-like lesion and its ROI mask.
//!
//! Spaces: *template* space is the MNI ICBM152 2009a template in LPS mm (MNI coordinates with x
//! and y negated); *patient* space is the scanner's LPS mm of one session (one contrast). A
//! subject's head sits roughly where the MNI brain sits in patient space (moved by at most
//! ~8 mm and ~8°, then by up to 3 mm and 3° more per session), so a field of view centred near
//! LPS (0, 18, 10) mm of about 170 × 210 × 180 mm covers the brain.
//!
//! - [`Anatomy`]: the templates, built into the binary and decoded once.
//! - [`Subject::sample`]: a seeded subject — rigid + scale + smooth elastic deformation, one
//!   small extra head motion per session (T1w and FLAIR are not co-registered, as in the Bonn
//!   data), and for `fcd` subjects a lesion placed at the grey/white boundary in template space.
//! - [`Subject::render`]: one image on any grid, with the lesion mask on that grid.
//!
//! Rendering maps each voxel centre to the template through the subject's transform and samples
//! the tissue fractions trilinearly; the cost is a few tens of nanoseconds per voxel, spread
//! over slabs with rayon. Noise comes from one random stream per slab, so the output does not
//! depend on thread scheduling: the same seeds give byte-identical images.

mod anatomy;
mod lesion;
mod mimics;
#[cfg(test)]
mod tests;

use nalgebra::{Matrix3, Matrix4, Rotation3, Unit, Vector3, Vector4};
use ndarray::{Array3, Axis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;

pub use anatomy::Anatomy;
use lesion::{Lesion, Tissue};
pub use mimics::MAX_MIMIC_LEVEL;
use mimics::Mimics;

use crate::nifti::NiftiError;
use crate::volume::{Grid, Volume, VolumeError};

/// MR contrast of a rendered image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Contrast {
    /// 3D T1-weighted (MPRAGE-like): white matter bright, grey matter darker, CSF dark.
    T1w,
    /// 3D FLAIR: grey matter brighter than white matter, CSF suppressed; FCD lesions bright.
    Flair,
}

impl Contrast {
    fn index(self) -> usize {
        match self {
            Contrast::T1w => 0,
            Contrast::Flair => 1,
        }
    }

    /// Pure-tissue signals and the lesion's effect on them.
    fn signals(self) -> Signals {
        match self {
            // Ratios close to a 3 T MPRAGE: GM/WM ≈ 0.6, CSF/WM ≈ 0.2. The lesion's white matter
            // is slightly hypointense on T1w; the visible T1w sign is the blurred junction.
            Contrast::T1w => Signals {
                gm: 800.0,
                wm: 1300.0,
                csf: 250.0,
                wm_lesion_gain: -0.15,
                gm_lesion_gain: 0.0,
                bright_gain: 0.0,
            },
            // GM/WM ≈ 1.35, CSF nulled by the inversion; lesion tissue is hyperintense.
            Contrast::Flair => Signals {
                gm: 950.0,
                wm: 700.0,
                csf: 120.0,
                wm_lesion_gain: 1.0,
                gm_lesion_gain: 0.5,
                bright_gain: 1.0,
            },
        }
    }
}

/// Signal of pure tissues (before bias and noise), and how the lesion hyperintensity `h` scales
/// them: white matter × (1 + `wm_lesion_gain` · h), grey matter × (1 + `gm_lesion_gain` · h);
/// a mimic's tissue-independent brightness b adds `bright_gain` · b · `wm`.
#[derive(Clone, Copy, Debug)]
struct Signals {
    gm: f32,
    wm: f32,
    csf: f32,
    wm_lesion_gain: f32,
    gm_lesion_gain: f32,
    bright_gain: f32,
}

impl Signals {
    #[inline]
    fn of(&self, t: &Tissue) -> f32 {
        let f = &t.fractions;
        f.gm * self.gm * (1.0 + self.gm_lesion_gain * t.hyper)
            + f.wm * self.wm * (1.0 + self.wm_lesion_gain * t.hyper)
            + f.csf * self.csf
            + t.bright * self.bright_gain * self.wm
    }
}

/// Side of the brain, from the patient's point of view (Left is +x in LPS).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Hemisphere {
    Left,
    Right,
}

impl Hemisphere {
    /// Both sides, for seeded choices.
    pub const ALL: [Hemisphere; 2] = [Hemisphere::Left, Hemisphere::Right];
}

/// Cerebral lobe that holds a lesion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Lobe {
    Frontal,
    Temporal,
    Parietal,
    Occipital,
}

impl Lobe {
    /// Every lobe, for seeded choices.
    pub const ALL: [Lobe; 4] = [Lobe::Frontal, Lobe::Temporal, Lobe::Parietal, Lobe::Occipital];
}

/// What kind of FCD-II lesion a subject gets; its exact place is chosen by the subject's seed.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LesionSpec {
    pub hemisphere: Hemisphere,
    pub lobe: Lobe,
    /// Radius of the lesion core in mm (the tail toward the ventricle comes on top); 2–30.
    pub radius_mm: f64,
    /// Relative strength of every lesion sign: 1.0 = typical, lower = harder to see; 0–3.
    pub contrast: f64,
    /// Strength of the FLAIR hyperintensity on top of `contrast` (1.0 = typical; lower leaves the
    /// T1w signs to carry the lesion); 0–1.
    pub flair_gain: f64,
}

/// One synthetic subject: its seed fixes the anatomy; `lesion: None` makes a control.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SubjectSpec {
    pub seed: u64,
    pub lesion: Option<LesionSpec>,
    /// Mimic level, 0 (none) to [`MAX_MIMIC_LEVEL`]; the same seed gives the same mimics with
    /// or without a lesion.
    pub mimics: u8,
}

/// How one image is acquired.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AcquisitionSpec {
    /// Voxel grid of the image (voxel index → patient LPS mm).
    pub grid: Grid,
    /// Rician noise sigma as a fraction of the white-matter signal (e.g. 0.02); 0–1.
    pub noise: f64,
    /// Bias-field strength: 0.2 = the signal varies by up to ±20 % across the head; 0–0.9.
    pub bias: f64,
}

/// A rendered image and, for a subject with a lesion, the lesion mask on the same grid.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    /// Integer-valued intensities in 0..=4095 (12-bit MR magnitude).
    pub image: Volume,
    /// 1 inside the lesion (core or transmantle tail), 0 elsewhere; `None` for controls.
    pub roi: Option<Volume>,
}

/// Why a phantom could not be built or rendered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PhantomError {
    /// A template built into the binary could not be decoded.
    #[error("built-in template {name} cannot be read")]
    Template {
        name: &'static str,
        #[source]
        source: NiftiError,
    },
    /// A template does not share the T1 template's grid.
    #[error("built-in template {name} has shape {found:?} or an affine unlike the T1 template (shape {expected:?})")]
    TemplateMismatch {
        name: &'static str,
        expected: [usize; 3],
        found: [usize; 3],
    },
    /// No grey/white boundary voxel lies in the requested lobe.
    #[error("no grey/white boundary voxel found in the {hemisphere:?} {lobe:?} lobe")]
    NoLesionSite { hemisphere: Hemisphere, lobe: Lobe },
    /// A spec field is out of range.
    #[error("invalid {field}: {rule}")]
    InvalidSpec { field: &'static str, rule: String },
    /// The output volume could not be built.
    #[error("cannot build the rendered volume")]
    Geometry {
        #[source]
        source: VolumeError,
    },
}

/// Largest rotation (degrees) and translation (mm) of a subject's head relative to the template.
const HEAD_ROTATION_DEG: f64 = 8.0;
const HEAD_TRANSLATION_MM: f64 = 8.0;
/// Per-axis head scale range relative to the template (a common factor times a small anisotropy).
const HEAD_SCALE: (f64, f64) = (0.94, 1.06);
const HEAD_ANISOTROPY: (f64, f64) = (0.98, 1.02);
/// Extra rigid motion of each session (contrast).
const SESSION_ROTATION_DEG: f64 = 3.0;
const SESSION_TRANSLATION_MM: f64 = 3.0;
/// Elastic deformation: sum of plane waves with these wavelengths (mm) and total amplitude (mm).
/// |∇d| ≤ 2π · 3 / 70 ≈ 0.27 < 1, so the deformation is invertible.
const ELASTIC_WAVES: usize = 6;
const ELASTIC_WAVELENGTH_MM: (f64, f64) = (70.0, 140.0);
const ELASTIC_AMPLITUDE_MM: (f64, f64) = (1.5, 3.0);
/// Centre of the MNI brain's bounding box, template LPS mm: heads rotate and scale about it.
const BRAIN_CENTRE_LPS: [f64; 3] = [0.0, 17.0, 5.0];
/// Intensity ceiling (12-bit).
const MAX_INTENSITY: f32 = 4095.0;

/// One component of the elastic displacement, in template LPS mm: `amp · sin(k · x + phase)`.
#[derive(Clone, Copy, Debug)]
struct Wave {
    /// Wave vector, rad/mm.
    k: Vector3<f64>,
    phase: f64,
    /// Displacement amplitude, mm.
    amp: Vector3<f64>,
}

/// A sampled subject: geometry (head pose, scale, elastic deformation, per-session motion) and,
/// for an `fcd` subject, the placed lesion.
#[derive(Clone, Debug)]
pub struct Subject {
    /// Per contrast (`Contrast::index`): patient LPS mm → template LPS mm, before the elastic
    /// displacement.
    to_template: [Matrix4<f64>; 2],
    /// Elastic displacement, evaluated at template LPS mm and added to it.
    waves: [Wave; ELASTIC_WAVES],
    lesion: Option<Lesion>,
    mimics: Mimics,
}

impl Subject {
    /// Samples a subject deterministically from `spec.seed`. The lesion is drawn after the
    /// anatomy, so a control and a patient with the same seed share the same head.
    pub fn sample(anatomy: &Anatomy, spec: &SubjectSpec) -> Result<Self, PhantomError> {
        if let Some(l) = &spec.lesion {
            check_range("lesion radius_mm", l.radius_mm, 2.0, 30.0)?;
            check_range("lesion contrast", l.contrast, 0.0, 3.0)?;
            check_range("lesion flair_gain", l.flair_gain, 0.0, 1.0)?;
        }
        if spec.mimics > MAX_MIMIC_LEVEL {
            return Err(PhantomError::InvalidSpec {
                field: "mimics",
                rule: format!("{} is not within 0..={MAX_MIMIC_LEVEL}", spec.mimics),
            });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
        let centre = Vector3::from(BRAIN_CENTRE_LPS);

        // Head → template: rotate and scale about the brain centre, then translate.
        let rotation = random_rotation(&mut rng, HEAD_ROTATION_DEG);
        let common = rng.random_range(HEAD_SCALE.0..=HEAD_SCALE.1);
        let scale = Vector3::from_fn(|_, _| common * rng.random_range(HEAD_ANISOTROPY.0..=HEAD_ANISOTROPY.1));
        let translation = random_vector(&mut rng, HEAD_TRANSLATION_MM);
        let head = about(centre, rotation * Matrix3::from_diagonal(&scale), translation);

        let mut waves = [Wave {
            k: Vector3::zeros(),
            phase: 0.0,
            amp: Vector3::zeros(),
        }; ELASTIC_WAVES];
        let mut amp_sum = 0.0;
        for w in &mut waves {
            let wavelength = rng.random_range(ELASTIC_WAVELENGTH_MM.0..=ELASTIC_WAVELENGTH_MM.1);
            w.k = random_unit(&mut rng) * (std::f64::consts::TAU / wavelength);
            w.phase = rng.random_range(0.0..std::f64::consts::TAU);
            w.amp = random_unit(&mut rng) * rng.random_range(0.3..=1.0);
            amp_sum += w.amp.norm();
        }
        let total = rng.random_range(ELASTIC_AMPLITUDE_MM.0..=ELASTIC_AMPLITUDE_MM.1);
        for w in &mut waves {
            w.amp *= total / amp_sum;
        }

        // Session motion: patient LPS of that session → head frame.
        let mut to_template = [Matrix4::identity(); 2];
        for m in &mut to_template {
            let r = random_rotation(&mut rng, SESSION_ROTATION_DEG);
            let t = random_vector(&mut rng, SESSION_TRANSLATION_MM);
            *m = head * about(centre, r, t);
        }

        let lesion = spec
            .lesion
            .as_ref()
            .map(|l| lesion::place(anatomy, l, &mut rng))
            .transpose()?;
        // Their own stream: level 0 draws nothing and leaves the subject as it always was.
        let mimics = Mimics::sample(
            anatomy,
            spec.mimics,
            &mut ChaCha8Rng::seed_from_u64(spec.seed ^ 0x3141_A1C5_0DD5_EED5),
        );
        Ok(Self {
            to_template,
            waves,
            lesion,
            mimics,
        })
    }

    /// Renders one image of this subject on `acq.grid` (voxel index → patient LPS mm of the
    /// `contrast`'s session), with bias field and Rician noise drawn from `seed`, and the lesion
    /// mask on the same grid.
    pub fn render(
        &self,
        anatomy: &Anatomy,
        contrast: Contrast,
        acq: &AcquisitionSpec,
        seed: u64,
    ) -> Result<Rendered, PhantomError> {
        check_range("acquisition noise", acq.noise, 0.0, 1.0)?;
        check_range("acquisition bias", acq.bias, 0.0, 0.9)?;
        let grid = acq.grid;
        if grid.is_empty() {
            return Err(PhantomError::Geometry {
                source: VolumeError::EmptyGrid { shape: grid.shape },
            });
        }
        let [ni, nj, nk] = grid.shape;
        // Acquisition voxel → template LPS mm (before the elastic part) and → template voxel.
        let to_mm = self.to_template[contrast.index()] * grid.affine.matrix();
        let mm_to_vox = *anatomy.to_voxel();
        let to_vox = mm_to_vox * to_mm;
        let mm_to_vox_lin = mm_to_vox.fixed_view::<3, 3>(0, 0).into_owned();
        let step_mm = to_mm.column(2).xyz();
        let step_vox = to_vox.column(2).xyz();
        // Along k, each wave's phase advances by a constant: rotate (sin, cos) instead of
        // calling sin per voxel.
        let waves = self.waves.map(|w| {
            let (s, c) = w.k.dot(&step_mm).sin_cos();
            StepWave {
                k: w.k,
                phase: w.phase,
                amp_vox: mm_to_vox_lin * w.amp,
                step: (s, c),
            }
        });

        let noise_seed = seed ^ 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(contrast.index() as u64 + 1);
        let bias = BiasField::sample(noise_seed, &grid, acq.bias);
        let signals = contrast.signals();
        let sigma = (acq.noise * f64::from(signals.wm)) as f32;
        let patch = self.lesion.as_ref().map(|l| &l.patch);

        let mut image = Array3::<f32>::zeros(grid.shape);
        // Controls get an empty mask per slab, so one parallel loop serves both cases.
        let mut roi = Array3::<f32>::zeros(if patch.is_some() { grid.shape } else { [ni, 0, 0] });
        let p_step = grid.affine.matrix().column(2).xyz();
        image
            .axis_iter_mut(Axis(0))
            .into_par_iter()
            .zip(roi.axis_iter_mut(Axis(0)).into_par_iter())
            .enumerate()
            .for_each(|(i, (mut img, mut mask))| {
                let mut rng = ChaCha8Rng::seed_from_u64(noise_seed);
                rng.set_stream(i as u64);
                for j in 0..nj {
                    let row = Vector4::new(i as f64, j as f64, 0.0, 1.0);
                    let x0 = (to_mm * row).xyz();
                    let v0 = (to_vox * row).xyz();
                    let p0 = (grid.affine.matrix() * row).xyz();
                    let mut rot = waves.map(|w| (w.k.dot(&x0) + w.phase).sin_cos());
                    for k in 0..nk {
                        let kf = k as f64;
                        let mut v = v0 + step_vox * kf;
                        for (w, (s, c)) in waves.iter().zip(rot.iter_mut()) {
                            v += w.amp_vox * *s;
                            let (ds, dc) = w.step;
                            (*s, *c) = (*s * dc + *c * ds, *c * dc - *s * ds);
                        }
                        let v = [v.x, v.y, v.z];
                        let mut tissue = patch.and_then(|p| p.sample(v)).unwrap_or_else(|| Tissue {
                            fractions: anatomy.sample(v),
                            hyper: 0.0,
                            roi: 0.0,
                            bright: 0.0,
                        });
                        if !self.mimics.is_empty() {
                            self.mimics.apply(v, &mut tissue);
                        }
                        let s = signals.of(&tissue) * bias.at(p0 + p_step * kf);
                        let value = if sigma > 0.0 {
                            let n1: f32 = rng.sample(StandardNormal);
                            let n2: f32 = rng.sample(StandardNormal);
                            ((s + sigma * n1).powi(2) + (sigma * n2).powi(2)).sqrt()
                        } else {
                            s
                        };
                        img[[j, k]] = value.round().clamp(0.0, MAX_INTENSITY);
                        if patch.is_some() {
                            mask[[j, k]] = if tissue.roi > 0.5 { 1.0 } else { 0.0 };
                        }
                    }
                }
            });
        let geometry = |source| PhantomError::Geometry { source };
        Ok(Rendered {
            image: Volume::new(image, grid.affine).map_err(geometry)?,
            roi: match patch {
                Some(_) => Some(Volume::new(roi, grid.affine).map_err(geometry)?),
                None => None,
            },
        })
    }

    /// Centre of the lesion core in the patient LPS mm of `contrast`'s session; `None` for a
    /// control.
    pub fn lesion_centre_lps(&self, contrast: Contrast) -> Option<[f64; 3]> {
        let lesion = self.lesion.as_ref()?;
        // Undo the elastic displacement by fixed-point iteration (a contraction, |∇d| < 0.3).
        let mut x = lesion.centre;
        for _ in 0..60 {
            x = lesion.centre - self.displacement(&x);
        }
        let inverse = self.to_template[contrast.index()].try_inverse()?;
        Some(inverse.transform_point(&x.into()).coords.into())
    }

    /// Elastic displacement at template LPS mm, in mm.
    fn displacement(&self, x: &Vector3<f64>) -> Vector3<f64> {
        self.waves.iter().map(|w| w.amp * (w.k.dot(x) + w.phase).sin()).sum()
    }

    /// Patient LPS mm of `contrast`'s session → template LPS mm (the full, direct mapping that
    /// `render` evaluates incrementally).
    #[cfg(test)]
    fn template_point(&self, contrast: Contrast, lps: [f64; 3]) -> Vector3<f64> {
        let x = self.to_template[contrast.index()].transform_point(&lps.into()).coords;
        x + self.displacement(&x)
    }
}

/// A wave prepared for one grid: `amp_vox` is the amplitude in template voxels and `step` the
/// (sin, cos) of its phase advance per voxel along k.
#[derive(Clone, Copy)]
struct StepWave {
    k: Vector3<f64>,
    phase: f64,
    amp_vox: Vector3<f64>,
    step: (f64, f64),
}

/// Smooth multiplicative bias field in patient LPS mm: 1 + strength · f(u), u = (p − centre) /
/// 100 mm, f a random linear + quadratic polynomial bounded by 1 on the unit ball (and clamped
/// to [−1, 1] beyond it), like a receive-coil sensitivity profile.
struct BiasField {
    centre: Vector3<f64>,
    linear: Vector3<f64>,
    quadratic: Matrix3<f64>,
    strength: f64,
}

impl BiasField {
    fn sample(seed: u64, grid: &Grid, strength: f64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // Stream apart from the per-slab noise streams (0..ni).
        rng.set_stream(u64::MAX);
        let linear = random_unit(&mut rng) * rng.random_range(0.3..=0.6);
        let q: Matrix3<f64> = Matrix3::from_fn(|_, _| rng.random_range(-1.0..=1.0));
        let q = q + q.transpose();
        // Frobenius norm bounds the spectral norm: |uᵀQu| ≤ 0.4 on the unit ball.
        let quadratic = q * (0.4 / q.norm().max(1e-9));
        let centre = Vector3::from(grid.voxel_to_world(grid.shape.map(|n| (n as f64 - 1.0) / 2.0)));
        Self {
            centre,
            linear,
            quadratic,
            strength,
        }
    }

    #[inline]
    fn at(&self, p: Vector3<f64>) -> f32 {
        let u = (p - self.centre) * 0.01;
        let f = (self.linear.dot(&u) + u.dot(&(self.quadratic * u))).clamp(-1.0, 1.0);
        (1.0 + self.strength * f) as f32
    }
}

/// The affine x ↦ centre + m · (x − centre) + t.
fn about(centre: Vector3<f64>, m: Matrix3<f64>, t: Vector3<f64>) -> Matrix4<f64> {
    let mut out = m.to_homogeneous();
    let offset = centre - m * centre + t;
    out.fixed_view_mut::<3, 1>(0, 3).copy_from(&offset);
    out
}

fn random_unit(rng: &mut ChaCha8Rng) -> Vector3<f64> {
    loop {
        let v = Vector3::from_fn(|_, _| rng.sample::<f64, _>(StandardNormal));
        if v.norm() > 1e-6 {
            return v.normalize();
        }
    }
}

/// A vector in a random direction with length uniform in [0, max].
fn random_vector(rng: &mut ChaCha8Rng, max: f64) -> Vector3<f64> {
    random_unit(rng) * rng.random_range(0.0..=max)
}

/// A rotation about a random axis by an angle uniform in [0, max_deg].
fn random_rotation(rng: &mut ChaCha8Rng, max_deg: f64) -> Matrix3<f64> {
    let axis = Unit::new_normalize(random_unit(rng));
    let angle = rng.random_range(0.0..=max_deg).to_radians();
    Rotation3::from_axis_angle(&axis, angle).into_inner()
}

fn check_range(field: &'static str, value: f64, min: f64, max: f64) -> Result<(), PhantomError> {
    if value.is_finite() && (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(PhantomError::InvalidSpec {
            field,
            rule: format!("{value} is not within {min}..={max}"),
        })
    }
}
