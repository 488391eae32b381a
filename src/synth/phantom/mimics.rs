//! What makes real FCD-II hard to find on FLAIR, for patients and controls alike
//! (`fcdnode synth --mimics LEVEL`): without it the only bright thing in a phantom is the lesion,
//! and a detector that takes the brightest FLAIR spot wins.
//!
//! Every mimic is a smooth blob in template space (so it moves with the subject's anatomy):
//! - **periventricular caps** at the tips of the frontal and occipital horns (FLAIR bright white
//!   matter, common in healthy adults);
//! - **small white-matter lesions** (FLAIR bright, slightly T1w dark);
//! - **gliosis** at the grey/white boundary: the FCD-II lesion's FLAIR sign without its T1w signs;
//! - **cortical partial volume**: bright cortex where a sulcus's CSF meets grey matter;
//! - **bright choroid plexus and septum** in the ventricles;
//! - **flow ghosts**: a row of small bright spots along the anterior–posterior axis (the usual
//!   phase-encoding direction), as pulsating vessels leave on FLAIR.
//!
//! Faint-FLAIR lesions, the last hard case, are a lesion knob (`LesionSpec::flair_gain`).
//! Mimics are drawn from their own random stream, so level 0 leaves every phantom as it was.

use nalgebra::Vector3;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::anatomy::{Anatomy, Fractions};
use super::lesion::{Tissue, VENTRICLES_RAS, boundary_sites, ras_to_lps, smoothstep};
use super::{Hemisphere, Lobe};

/// Highest `--mimics` level.
pub const MAX_MIMIC_LEVEL: u8 = 3;

/// How a blob changes the tissue it covers.
#[derive(Clone, Copy, Debug)]
enum Effect {
    /// Raises the lesion-like hyperintensity of grey and white matter to at least this (the same
    /// scale as the lesion's: 0.6 is the FCD core at contrast 1).
    Hyper(f32),
    /// Adds this fraction of the white-matter signal on FLAIR, whatever the tissue (fluid,
    /// vessels, artefacts).
    Bright(f32),
}

/// One mimic: a ball with a smooth edge, in template voxel coordinates.
#[derive(Clone, Copy, Debug)]
struct Blob {
    /// Centre, fractional template voxel index.
    centre: [f64; 3],
    radius_mm: f64,
    effect: Effect,
}

/// The mimics of one subject.
#[derive(Clone, Debug, Default)]
pub(super) struct Mimics {
    blobs: Vec<Blob>,
    /// Template voxel size, mm.
    spacing: [f64; 3],
}

impl Mimics {
    /// Draws the mimics of `level` (0 = none … [`MAX_MIMIC_LEVEL`] = hard) from `rng`.
    pub fn sample(anatomy: &Anatomy, level: u8, rng: &mut ChaCha8Rng) -> Self {
        let mut mimics = Self {
            blobs: Vec::new(),
            spacing: anatomy.affine().spacing(),
        };
        if level == 0 {
            return mimics;
        }
        let l = f64::from(level.min(MAX_MIMIC_LEVEL));
        let to_voxel = anatomy.to_voxel();
        let voxel_of = |lps: Vector3<f64>| {
            let v = to_voxel.transform_point(&lps.into());
            [v.x, v.y, v.z]
        };
        let mut add = |centre: [f64; 3], radius_mm: f64, effect: Effect| {
            mimics.blobs.push(Blob {
                centre,
                radius_mm,
                effect,
            })
        };
        let hyper = |g: f64| Effect::Hyper(g as f32);
        let bright = |g: f64| Effect::Bright(g as f32);

        // Caps: just in front of the frontal horn and behind the atrium, both sides.
        let [frontal_horn, _, atrium, _] = VENTRICLES_RAS;
        for hemisphere in Hemisphere::ALL {
            for (landmark, offset) in [(frontal_horn, [4.0, 8.0, 0.0]), (atrium, [3.0, -8.0, 0.0])] {
                let ras = std::array::from_fn(|a| landmark[a] + offset[a]);
                let radius = rng.random_range(3.0..=5.0) + l;
                add(
                    voxel_of(ras_to_lps(hemisphere, ras)),
                    radius,
                    hyper(rng.random_range(0.15..=0.25) * l),
                );
            }
        }
        // Small white-matter lesions.
        let count = rng.random_range(level..=3 * level);
        for _ in 0..count {
            if let Some(site) = random_site(anatomy, rng, |f| f.wm > 0.9) {
                let radius = rng.random_range(1.5..=2.5 + l);
                add(site, radius, hyper(rng.random_range(0.4..=0.6 + 0.15 * l)));
            }
        }
        // Gliosis at the grey/white boundary of a random lobe.
        if rng.random_bool((0.3 * l).min(1.0)) {
            let hemisphere = Hemisphere::ALL[rng.random_range(0..2)];
            let lobe = Lobe::ALL[rng.random_range(0..Lobe::ALL.len())];
            let sites = boundary_sites(anatomy, hemisphere, lobe);
            if !sites.is_empty() {
                let site = sites[rng.random_range(0..sites.len())];
                let radius = rng.random_range(4.0..=4.0 + 2.0 * l);
                add(
                    site.map(|x| x as f64),
                    radius,
                    hyper(rng.random_range(0.3..=0.3 + 0.1 * l)),
                );
            }
        }
        // Cortical partial volume: grey matter next to sulcal CSF.
        for _ in 0..level {
            if let Some(site) = random_site(anatomy, rng, |f| f.gm >= 0.5 && f.csf >= 0.25) {
                add(site, rng.random_range(3.0..=5.0), hyper(rng.random_range(0.2..=0.4)));
            }
        }
        // Choroid plexus in both atria, and the septum on the midline.
        for hemisphere in Hemisphere::ALL {
            add(voxel_of(ras_to_lps(hemisphere, atrium)), 4.0, bright(0.25 * l));
        }
        add(
            voxel_of(ras_to_lps(Hemisphere::Left, [0.0, 8.0, 16.0])),
            3.0,
            bright(0.15 * l),
        );
        // Flow ghosts: evenly spaced along anterior–posterior at one left–right / up–down spot.
        let (x, z) = (rng.random_range(-40.0..=40.0), rng.random_range(-10.0..=40.0));
        let ghosts = 3 + usize::from(level);
        for n in 0..ghosts {
            let y = -90.0 + 150.0 * n as f64 / (ghosts - 1) as f64;
            let lps = Vector3::new(-x, -y, z);
            let radius = rng.random_range(2.0..=3.0);
            add(voxel_of(lps), radius, bright(rng.random_range(0.1..=0.2) * l));
        }
        mimics
    }

    /// Applies every blob that reaches the fractional template voxel `v`.
    #[inline]
    pub fn apply(&self, v: [f64; 3], tissue: &mut Tissue) {
        for blob in &self.blobs {
            let d2: f64 = (0..3)
                .map(|a| ((v[a] - blob.centre[a]) * self.spacing[a]).powi(2))
                .sum();
            if d2 >= blob.radius_mm * blob.radius_mm {
                continue;
            }
            let weight = (1.0 - smoothstep(0.6 * blob.radius_mm, blob.radius_mm, d2.sqrt())) as f32;
            match blob.effect {
                Effect::Hyper(gain) => {
                    let f = &tissue.fractions;
                    tissue.hyper = tissue.hyper.max(gain * weight * (f.gm + f.wm));
                }
                Effect::Bright(gain) => tissue.bright += gain * weight,
            }
        }
    }

    /// Whether there is nothing to apply (level 0).
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }
}

/// A template voxel (as a fractional index) whose tissue passes `accept`, by rejection sampling;
/// `None` after many misses (an anatomy without such tissue).
fn random_site(anatomy: &Anatomy, rng: &mut ChaCha8Rng, accept: impl Fn(&Fractions) -> bool) -> Option<[f64; 3]> {
    let shape = anatomy.shape();
    (0..20_000).find_map(|_| {
        let idx: [usize; 3] = std::array::from_fn(|a| rng.random_range(0..shape[a]));
        accept(&anatomy.at(idx)).then(|| idx.map(|x| x as f64))
    })
}
