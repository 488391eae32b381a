//! Where a subject's lesion is (its ROI as LPS points) and how far a hotspot lies from it; the
//! non-learned baseline ([`fcdnode::baseline`]) on a subject, scored the same way. Used by `cv`
//! (the baseline beside every model on the same folds) and `evaluate`.

use std::collections::BTreeMap;

use fcdnode::baseline;
use fcdnode::explain::{Background, heat_score};
use fcdnode::package::manifest::Modality;
use fcdnode::volume::nearest_distance;
use ndarray::Array3;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::batcher::{PrepareError, choose_image, lesion_mask_of, read_checked};
use super::bids::{Group, Subject};
use crate::metrics::roc_auc;

/// The baseline on one subject's FLAIR.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BaselineOutcome {
    /// True for `fcd`.
    pub label: bool,
    /// The detector's score (maximum of the smoothed z-map).
    pub score: f64,
    /// Distance in mm from its hotspot to the lesion ROI (patients with a ROI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distance_mm: Option<f64>,
}

/// Why a subject has no baseline score.
#[derive(Debug, thiserror::Error)]
pub enum NoBaseline {
    /// The subject has no FLAIR image.
    #[error("no FLAIR")]
    NoFlair,
    /// Its FLAIR could not be read or breaks the recipe's rules.
    #[error(transparent)]
    Read(#[from] PrepareError),
    /// The detector refused the image (e.g. no head in it).
    #[error(transparent)]
    Detect(#[from] baseline::BaselineError),
}

/// The baseline on `subject`'s FLAIR, or why it has none (no FLAIR, unreadable, no head).
pub fn baseline_on(subject: &Subject) -> Result<BaselineOutcome, NoBaseline> {
    let flair = choose_image(subject, Modality::Flair).ok_or(NoBaseline::NoFlair)?;
    let volume = read_checked(&flair.path)?;
    let detection = baseline::detect(&volume, &baseline::Options::default())?;
    let label = subject.group == Group::Fcd;
    let distance_mm = if label {
        lesion_mask_of(subject, flair)
            .0
            .and_then(|mask| read_checked(&mask.path).ok())
            .and_then(|roi| nearest_distance(&roi.mask_points(), detection.peak_lps))
    } else {
        None
    };
    Ok(BaselineOutcome {
        label,
        score: detection.score,
        distance_mm,
    })
}

/// The baseline's figures on a set of subjects (those it scored).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct BaselineFigures {
    /// Subjects scored.
    pub subjects: usize,
    /// ROC-AUC of its scores (NaN with one class).
    pub roc_auc: f64,
    /// Share of the patients with a ROI whose baseline hotspot lies within 10 mm of it.
    pub hit_10mm: f64,
    /// The same within 2 mm.
    pub hit_2mm: f64,
}

/// [`BaselineFigures`] of `baseline` over `subjects`.
pub fn baseline_figures<'a>(
    subjects: impl IntoIterator<Item = &'a str>,
    baseline: &BTreeMap<String, BaselineOutcome>,
) -> BaselineFigures {
    let scored: Vec<&BaselineOutcome> = subjects.into_iter().filter_map(|s| baseline.get(s)).collect();
    let (labels, scores): (Vec<bool>, Vec<f64>) = scored.iter().map(|b| (b.label, b.score)).unzip();
    let distances: Vec<f64> = scored.iter().filter_map(|b| b.distance_mm).collect();
    let rate = |radius: f64| {
        if distances.is_empty() {
            f64::NAN
        } else {
            distances.iter().filter(|&&d| d <= radius).count() as f64 / distances.len() as f64
        }
    };
    BaselineFigures {
        subjects: scored.len(),
        roc_auc: roc_auc(&labels, &scores),
        hit_10mm: rate(10.0),
        hit_2mm: rate(2.0),
    }
}

/// Heat-Scores of `heat` against `roi` shifted by whole voxels to random places: every moved
/// voxel inside the grid, at least 90 % of them in the head foreground, none on the real ROI.
/// Up to `draws` scores (fewer when the head has no room); 50 tries per draw.
pub fn moved_roi_scores(
    heat: &Array3<f32>,
    roi: &Array3<bool>,
    foreground: &Array3<bool>,
    draws: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<f64> {
    let voxels: Vec<[usize; 3]> = roi
        .indexed_iter()
        .filter(|(_, r)| **r)
        .map(|((i, j, k), _)| [i, j, k])
        .collect();
    let inside: Vec<[usize; 3]> = foreground
        .indexed_iter()
        .filter(|(_, f)| **f)
        .map(|((i, j, k), _)| [i, j, k])
        .collect();
    if voxels.is_empty() || inside.is_empty() {
        return Vec::new();
    }
    let shape = heat.shape();
    let centre: [i64; 3] =
        std::array::from_fn(|a| (voxels.iter().map(|v| v[a] as f64).sum::<f64>() / voxels.len() as f64).round() as i64);
    let mut scores = Vec::new();
    for _ in 0..draws {
        for _ in 0..50 {
            let target = inside[rng.random_range(0..inside.len())];
            let shift: [i64; 3] = std::array::from_fn(|a| target[a] as i64 - centre[a]);
            let moved: Option<Vec<[usize; 3]>> = voxels
                .iter()
                .map(|v| {
                    let p: [i64; 3] = std::array::from_fn(|a| v[a] as i64 + shift[a]);
                    (0..3)
                        .all(|a| p[a] >= 0 && (p[a] as usize) < shape[a])
                        .then(|| p.map(|x| x as usize))
                })
                .collect();
            let Some(moved) = moved else { continue };
            let in_head = moved.iter().filter(|p| foreground[**p]).count();
            if moved.iter().any(|p| roi[*p]) || (in_head as f64) < 0.9 * moved.len() as f64 {
                continue;
            }
            let mut mask = Array3::from_elem(heat.raw_dim(), false);
            for p in &moved {
                mask[*p] = true;
            }
            if let Ok(s) = heat_score(heat, &mask, Background::ForegroundOutsideRoi(foreground)) {
                scores.push(s);
            }
            break;
        }
    }
    scores
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_figures_count_only_scored_subjects() {
        let outcome = |label, score, distance_mm| BaselineOutcome {
            label,
            score,
            distance_mm,
        };
        let baseline = BTreeMap::from([
            ("a".to_string(), outcome(true, 3.0, Some(0.0))),
            ("b".to_string(), outcome(true, 1.0, Some(6.0))),
            ("c".to_string(), outcome(false, 2.0, None)),
            ("d".to_string(), outcome(false, 0.5, None)),
        ]);
        let f = baseline_figures(["a", "b", "c", "d", "unscored"], &baseline);
        assert_eq!((f.subjects, f.roc_auc), (4, 0.75));
        assert_eq!((f.hit_10mm, f.hit_2mm), (1.0, 0.5));
        let controls = baseline_figures(["c", "d"], &baseline);
        assert!(controls.roc_auc.is_nan() && controls.hit_10mm.is_nan());
    }
}
