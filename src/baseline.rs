//! A non-learned FCD detector, the yardstick every model is compared with (issue 13, DESIGN.md §7
//! "Baselines first"): bias-normalised FLAIR z-score, Gaussian smoothing (σ = 2 mm), maximum
//! inside the eroded head mask. Its score ranks subjects (a subject with a bright focal spot
//! scores high) and its argmax is a hotspot, so it gets the same ROC-AUC and hit-rate figures as a
//! model. It learns nothing: a model that does not beat it has not learned the lesion.
//!
//! Every step works on the subject's own FLAIR grid and uses the library's head mask
//! ([`Volume::foreground_mask`]). Smoothing is a normalised convolution inside the mask
//! (smooth(I·M) / smooth(M)): the dark background outside the head would otherwise pull every
//! voxel near the brain's edge down and push the maximum inwards.

use ndarray::{Array3, Axis, Zip};

use crate::volume::{Volume, VolumeError};

/// The method's name as reports print it.
pub const NAME: &str = "max-z FLAIR (bias-normalised z-score, Gaussian σ 2 mm, max in eroded head)";

/// Knobs of the detector; [`Options::default`] is the named method.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Options {
    /// Gaussian σ of the final smoothing in mm: about the size of a small FCD, so single noisy
    /// voxels do not win.
    pub sigma_mm: f64,
    /// σ in mm of the heavy smoothing that estimates the bias field (the image is divided by
    /// it): far larger than a lesion, so the lesion survives the division.
    pub bias_sigma_mm: f64,
    /// Erosion of the head mask in mm before the maximum is taken: keeps partial-volume edges
    /// of the brain outline out of the search.
    pub erode_mm: f64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            sigma_mm: 2.0,
            bias_sigma_mm: 20.0,
            erode_mm: 4.0,
        }
    }
}

/// Why the detector has no answer for a volume.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BaselineError {
    /// Otsu found no head (blank or constant image).
    #[error("no head foreground (blank or constant image)")]
    NoForeground,
    /// The head is thinner than twice the erosion.
    #[error("the head mask is empty after eroding it by {erode_mm} mm")]
    EmptyMask { erode_mm: f64 },
    /// The bias-normalised intensities inside the head are constant: no z-score.
    #[error("constant intensity inside the head: the z-score is undefined")]
    Flat,
    /// An option is out of range.
    #[error("baseline option {field} = {value}: {rule}")]
    BadOption {
        field: &'static str,
        value: f64,
        rule: &'static str,
    },
    /// The map could not be built on the volume's grid.
    #[error(transparent)]
    Volume(#[from] VolumeError),
}

/// What the detector found in one volume.
#[derive(Clone, Debug)]
pub struct Detection {
    /// Maximum of the smoothed z-map inside the eroded head: the subject's score.
    pub score: f64,
    /// Voxel index `[i, j, k]` of that maximum (first one on ties).
    pub peak: [usize; 3],
    /// LPS mm position of that maximum.
    pub peak_lps: [f64; 3],
    /// The smoothed z-map on the input grid, 0 outside the eroded head.
    pub map: Volume,
}

/// Runs the detector on a FLAIR volume.
pub fn detect(flair: &Volume, options: &Options) -> Result<Detection, BaselineError> {
    for (field, value) in [
        ("sigma_mm", options.sigma_mm),
        ("bias_sigma_mm", options.bias_sigma_mm),
        ("erode_mm", options.erode_mm),
    ] {
        if !(value.is_finite() && value >= 0.0) {
            return Err(BaselineError::BadOption {
                field,
                value,
                rule: "must be a finite number ≥ 0",
            });
        }
    }
    let mask = flair.foreground_mask();
    let inside = mask.iter().filter(|&&m| m).count();
    if inside == 0 || inside == mask.len() {
        return Err(BaselineError::NoForeground);
    }
    let spacing = flair.spacing();
    let sigma_vox = |mm: f64| spacing.map(|s| mm / s);
    let data = flair.data().mapv(|v| if v.is_finite() { v } else { 0.0 });

    // Bias field: the image smoothed far beyond a lesion's size, inside the head.
    let bias = masked_smooth(&data, &mask, sigma_vox(options.bias_sigma_mm), Kernel::TripleBox);
    let mut corrected = Array3::<f32>::zeros(data.raw_dim());
    Zip::from(&mut corrected)
        .and(&data)
        .and(&bias)
        .and(&mask)
        .for_each(|c, &v, &b, &m| {
            if m && b > f32::EPSILON {
                *c = v / b;
            }
        });

    // z-score over the head.
    let (mut n, mut sum, mut sum2) = (0usize, 0f64, 0f64);
    Zip::from(&corrected).and(&mask).for_each(|&v, &m| {
        if m {
            n += 1;
            sum += f64::from(v);
            sum2 += f64::from(v) * f64::from(v);
        }
    });
    let mean = sum / n as f64;
    let sd = (sum2 / n as f64 - mean * mean).max(0.0).sqrt();
    // f32 rounding leaves ~1e-7 relative wobble on a constant image: below 1e-5 is flat.
    if sd.is_nan() || sd <= 1e-5 * mean.abs() {
        return Err(BaselineError::Flat);
    }
    corrected.mapv_inplace(|v| ((f64::from(v) - mean) / sd) as f32);

    let smooth = masked_smooth(&corrected, &mask, sigma_vox(options.sigma_mm), Kernel::Gaussian);
    let eroded = erode(&mask, spacing.map(|s| (options.erode_mm / s).round() as usize));
    let mut best: Option<([usize; 3], f32)> = None;
    let mut map = Array3::<f32>::zeros(data.raw_dim());
    for ((i, j, k), &v) in smooth.indexed_iter() {
        if eroded[[i, j, k]] && v.is_finite() {
            map[[i, j, k]] = v;
            if best.is_none_or(|(_, b)| v > b) {
                best = Some(([i, j, k], v));
            }
        }
    }
    let (peak, score) = best.ok_or(BaselineError::EmptyMask {
        erode_mm: options.erode_mm,
    })?;
    Ok(Detection {
        score: f64::from(score),
        peak,
        peak_lps: flair.voxel_to_world(peak.map(|x| x as f64)),
        map: Volume::new(map, *flair.affine())?,
    })
}

#[derive(Clone, Copy)]
enum Kernel {
    /// Sampled Gaussian truncated at 3σ: exact for the small final σ.
    Gaussian,
    /// Three box passes (≈ Gaussian, cost independent of σ): for the large bias σ.
    TripleBox,
}

/// smooth(data · mask) / smooth(mask) inside the mask, 0 outside; σ in voxels per axis.
fn masked_smooth(data: &Array3<f32>, mask: &Array3<bool>, sigma: [f64; 3], kernel: Kernel) -> Array3<f32> {
    let mut num = Array3::<f32>::zeros(data.raw_dim());
    Zip::from(&mut num).and(data).and(mask).for_each(|o, &v, &m| {
        if m {
            *o = v;
        }
    });
    let mut den = mask.mapv(|m| if m { 1.0f32 } else { 0.0 });
    for (axis, &s) in sigma.iter().enumerate() {
        for a in [&mut num, &mut den] {
            match kernel {
                Kernel::Gaussian => gaussian_along(a, axis, s),
                Kernel::TripleBox => {
                    // Three boxes of width w have variance 3 (w² − 1) / 12 = σ².
                    let radius = (((4.0 * s * s + 1.0).sqrt() - 1.0) / 2.0).round() as usize;
                    for _ in 0..3 {
                        box_along(a, axis, radius);
                    }
                }
            }
        }
    }
    let mut out = Array3::<f32>::zeros(data.raw_dim());
    Zip::from(&mut out)
        .and(&num)
        .and(&den)
        .and(mask)
        .for_each(|o, &n, &d, &m| {
            if m && d > 1e-6 {
                *o = n / d;
            }
        });
    out
}

/// Gaussian along one axis, zero outside the array (the ratio in [`masked_smooth`] renormalises).
fn gaussian_along(a: &mut Array3<f32>, axis: usize, sigma: f64) {
    if sigma <= 0.0 || a.len_of(Axis(axis)) < 2 {
        return;
    }
    let half = (3.0 * sigma).ceil() as isize;
    let kernel: Vec<f32> = (-half..=half)
        .map(|t| (-0.5 * (t as f64 / sigma).powi(2)).exp() as f32)
        .collect();
    let mut line = Vec::new();
    for mut lane in a.lanes_mut(Axis(axis)) {
        line.clear();
        line.extend(lane.iter().copied());
        let n = line.len() as isize;
        for (x, out) in lane.iter_mut().enumerate() {
            let lo = (x as isize - half).max(0);
            let hi = (x as isize + half).min(n - 1);
            *out = (lo..=hi)
                .map(|y| kernel[(y - x as isize + half) as usize] * line[y as usize])
                .sum();
        }
    }
}

/// Box sum of half-width `radius` along one axis (running sum, zero outside the array).
fn box_along(a: &mut Array3<f32>, axis: usize, radius: usize) {
    if radius == 0 {
        return;
    }
    let mut prefix = Vec::new();
    for mut lane in a.lanes_mut(Axis(axis)) {
        prefix.clear();
        prefix.push(0.0f64);
        let mut acc = 0.0f64;
        for &v in lane.iter() {
            acc += f64::from(v);
            prefix.push(acc);
        }
        let n = lane.len();
        for (x, out) in lane.iter_mut().enumerate() {
            let lo = x.saturating_sub(radius);
            let hi = (x + radius + 1).min(n);
            *out = (prefix[hi] - prefix[lo]) as f32;
        }
    }
}

/// Erosion by `steps[a]` voxels along axis `a` (6-connected, one voxel per step and axis);
/// voxels on the array border count as outside.
fn erode(mask: &Array3<bool>, steps: [usize; 3]) -> Array3<bool> {
    let mut current = mask.clone();
    let (ni, nj, nk) = mask.dim();
    let n = [ni, nj, nk];
    for step in 1..=steps.iter().copied().max().unwrap_or(0) {
        let previous = current.clone();
        for ((i, j, k), m) in current.indexed_iter_mut() {
            if !*m {
                continue;
            }
            let idx = [i, j, k];
            for axis in 0..3 {
                if step > steps[axis] {
                    continue;
                }
                let (lo, hi) = (idx[axis] == 0, idx[axis] + 1 >= n[axis]);
                let neighbour = |d: isize| {
                    let mut p = idx;
                    p[axis] = (p[axis] as isize + d) as usize;
                    previous[p]
                };
                if lo || hi || !neighbour(-1) || !neighbour(1) {
                    *m = false;
                    break;
                }
            }
        }
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::{Plane, acquisition_grid};

    const HEAD_CENTRE: [f64; 3] = [0.0, -10.0, 15.0];

    /// A "head": ball of radius 60 mm, intensity 100 under a linear bias field (×0.7 to ×1.3
    /// across the head), with Gaussian blobs (σ `blob_mm`, +`contrast`·100) at `blobs` (LPS mm).
    /// Deterministic texture (no noise generator) keeps the z-score finite and the test exact.
    fn head(spacing: f64, blobs: &[([f64; 3], f64, f64)]) -> Volume {
        let grid = acquisition_grid(
            Plane::Axial,
            [spacing; 3],
            [150.0, 150.0, 150.0],
            [HEAD_CENTRE[0], HEAD_CENTRE[1], HEAD_CENTRE[2]],
        )
        .unwrap();
        let mut v = Volume::filled(&grid, 0.0).unwrap();
        let affine = *v.affine();
        for ((i, j, k), x) in v.data_mut().indexed_iter_mut() {
            let p = affine.apply([i as f64, j as f64, k as f64]);
            let d2 = |c: [f64; 3]| (0..3).map(|a| (p[a] - c[a]).powi(2)).sum::<f64>();
            if d2(HEAD_CENTRE) < 60f64.powi(2) {
                let bias = 1.0 + 0.3 * (p[0] - HEAD_CENTRE[0]) / 60.0;
                let texture = 5.0 * ((i * 7 + j * 13 + k * 5) % 11) as f64 / 10.0;
                let blob: f64 = blobs
                    .iter()
                    .map(|&(c, sigma, contrast)| contrast * 100.0 * (-d2(c) / (2.0 * sigma * sigma)).exp())
                    .sum();
                *x = ((100.0 + texture + blob) * bias) as f32;
            }
        }
        v
    }

    fn dist(a: [f64; 3], b: [f64; 3]) -> f64 {
        (0..3).map(|k| (a[k] - b[k]).powi(2)).sum::<f64>().sqrt()
    }

    #[test]
    fn finds_a_bright_blob_where_it_is() {
        let lesion = [25.0, -20.0, 30.0];
        let v = head(2.0, &[(lesion, 4.0, 0.3)]);
        let d = detect(&v, &Options::default()).unwrap();
        assert!(
            dist(d.peak_lps, lesion) <= 2.0 * 2f64.sqrt(),
            "peak {:?} vs blob {lesion:?}",
            d.peak_lps
        );
        assert_eq!(d.map.data()[d.peak], d.score as f32);
        // The blob sits on the bright side of the bias field, but a dimmer blob on the dark side
        // still wins over it once the bias is divided out: the bias correction matters.
        let dark = [-25.0, -20.0, 30.0];
        let v = head(2.0, &[(lesion, 4.0, 0.2), (dark, 4.0, 0.3)]);
        let d = detect(&v, &Options::default()).unwrap();
        assert!(
            dist(d.peak_lps, dark) <= 3.0,
            "peak {:?} vs dark-side blob {dark:?}",
            d.peak_lps
        );
    }

    #[test]
    fn a_lesion_scores_above_no_lesion() {
        let plain = detect(&head(2.0, &[]), &Options::default()).unwrap().score;
        let lesion = detect(&head(2.0, &[([10.0, 5.0, 0.0], 4.0, 0.3)]), &Options::default())
            .unwrap()
            .score;
        assert!(lesion > plain + 2.0, "lesion {lesion} vs none {plain}");
    }

    #[test]
    fn erosion_keeps_the_rim_out() {
        // A blob on the very edge of the head: eroding 8 mm excludes it.
        let rim = [0.0, -10.0 + 59.0, 15.0];
        let v = head(2.0, &[(rim, 2.0, 0.5)]);
        let loose = detect(
            &v,
            &Options {
                erode_mm: 0.0,
                ..Options::default()
            },
        )
        .unwrap();
        assert!(dist(loose.peak_lps, rim) < 6.0, "{:?}", loose.peak_lps);
        let strict = detect(
            &v,
            &Options {
                erode_mm: 8.0,
                ..Options::default()
            },
        )
        .unwrap();
        assert!(dist(strict.peak_lps, rim) > 8.0, "{:?}", strict.peak_lps);
        assert!(
            strict.map.data()[loose.peak] == 0.0,
            "outside the eroded head the map is 0"
        );
    }

    #[test]
    fn flat_and_blank_volumes_are_errors() {
        let v = head(4.0, &[]);
        let blank = Volume::filled(&v.grid(), 0.0).unwrap();
        assert!(matches!(
            detect(&blank, &Options::default()),
            Err(BaselineError::NoForeground)
        ));
        let constant = Volume::filled(&v.grid(), 7.0).unwrap();
        assert!(matches!(
            detect(&constant, &Options::default()),
            Err(BaselineError::NoForeground)
        ));
        // A ball of constant intensity: a head, but nothing varies inside it.
        let ball = v.data().mapv(|x| if x > 0.0 { 50.0 } else { 0.0 });
        let ball = Volume::new(ball, *v.affine()).unwrap();
        assert!(matches!(detect(&ball, &Options::default()), Err(BaselineError::Flat)));
        // Eroding more than the head's radius leaves nothing to search.
        assert!(matches!(
            detect(
                &v,
                &Options {
                    erode_mm: 80.0,
                    ..Options::default()
                }
            ),
            Err(BaselineError::EmptyMask { .. })
        ));
        assert!(matches!(
            detect(
                &v,
                &Options {
                    sigma_mm: f64::NAN,
                    ..Options::default()
                }
            ),
            Err(BaselineError::BadOption { field: "sigma_mm", .. })
        ));
    }

    #[test]
    fn smoothing_is_normalised_inside_the_mask() {
        // A constant inside a mask stays that constant, even at the mask's edge.
        let mut data = Array3::<f32>::zeros((9, 9, 9));
        let mut mask = Array3::from_elem((9, 9, 9), false);
        for i in 2..7 {
            for j in 2..7 {
                for k in 2..7 {
                    data[[i, j, k]] = 3.0;
                    mask[[i, j, k]] = true;
                }
            }
        }
        for kernel in [Kernel::Gaussian, Kernel::TripleBox] {
            let s = masked_smooth(&data, &mask, [1.5; 3], kernel);
            for ((idx, &v), &m) in s.indexed_iter().zip(mask.iter()) {
                let expected = if m { 3.0 } else { 0.0 };
                assert!((v - expected).abs() < 1e-5, "{idx:?}: {v}");
            }
        }
        // Erosion by one voxel per axis peels one layer.
        let e = erode(&mask, [1, 1, 1]);
        assert_eq!(e.iter().filter(|&&m| m).count(), 27);
        assert!(e[[3, 3, 3]] && !e[[2, 4, 4]]);
    }
}
