//! Heatmap maths shared by node and trainer: CAMs from forward outputs ([`cam`]), their cubic
//! B-spline upsampling ([`spline`]), the map on the source grid (NaN where the model did not
//! look), its display scale (absolute against the package's reference level, [`scale_heat`]),
//! min-max normalisation that never inverts a map, and the Heat-Score of Lasagni et al.

pub mod cam;
pub mod spline;

use nalgebra::Matrix4;
use ndarray::{Array3, Zip};

use crate::volume::{Grid, Interp, Volume, VolumeError};

/// A map on the feature grid (`[depth, height, width]`, the network's output resolution) as a
/// volume in patient space on the model's voxel spacing. `stride` is the network's total stride
/// `[depth, height, width]` ([`crate::package::arch::ArchSpec::stride`]): feature voxel f is
/// centred on model voxel f × stride, because every convolution and pooling is odd-sized with
/// symmetric padding.
///
/// The map is upsampled by cubic B-spline interpolation ([`spline`]), not trilinearly: the
/// spline passes through every feature value but its peak can fall between feature centres, so
/// the hotspot is not held to a lattice of stride-sized cells (16 mm for the demo model). The
/// volume reaches one feature cell beyond the feature grid on every side, repeating the edge
/// values, so resampling near the border clamps instead of fading to zero.
pub fn feature_map_volume(map: &Array3<f32>, model_grid: &Grid, stride: [usize; 3]) -> Result<Volume, VolumeError> {
    let (fd, fh, fw) = map.dim();
    let feature = [fw, fh, fd]; // i = R (width), j = A (height), k = S (depth)
    if feature.contains(&0) {
        return Err(VolumeError::EmptyGrid { shape: feature });
    }
    // Model voxels −stride ..= n × stride along each axis, i.e. feature positions −1 ..= n.
    let stride_ijk = [stride[2], stride[1], stride[0]];
    let positions = |a: usize| -> Vec<f64> {
        let s = stride_ijk[a].max(1);
        (0..=(feature[a] + 1) * s).map(|m| m as f64 / s as f64 - 1.0).collect()
    };
    let data = spline::upsample(map.view().reversed_axes(), [positions(0), positions(1), positions(2)]);
    // Array index p → model index p − stride.
    let mut index = Matrix4::identity();
    for a in 0..3 {
        index[(a, 3)] = -(stride_ijk[a].max(1) as f64);
    }
    let affine = crate::volume::Affine::new(model_grid.affine.matrix() * index)?;
    Volume::new(data, affine)
}

/// A heatmap on a source series grid, in the map's own units: the feature-grid map upsampled onto
/// the model spacing ([`feature_map_volume`]) and resampled (trilinear, through LPS mm) onto
/// `source`. Voxels outside the model grid are NaN: the model never saw them, so the map says
/// nothing there (the spline's clamped extension must not be shown as heat). Scale it for display
/// with [`scale_heat`].
pub fn heatmap_on(
    map: &Array3<f32>,
    model_grid: &Grid,
    stride: [usize; 3],
    source: &Grid,
) -> Result<Volume, VolumeError> {
    let feature = feature_map_volume(map, model_grid, stride)?;
    let mut on_source = feature.resample(source, Interp::Linear, f32::NAN)?;
    blank_outside(&mut on_source, model_grid);
    Ok(on_source)
}

/// A heatmap computed on the model grid (`[depth, height, width]`, e.g. occlusion) resampled
/// onto `source`, in its own units, NaN outside the model grid as in [`heatmap_on`].
pub fn model_map_on(map: &Array3<f32>, model_grid: &Grid, source: &Grid) -> Result<Volume, VolumeError> {
    let on_model = crate::preprocess::tensor_to_volume(map, model_grid)?;
    let mut on_source = on_model.resample(source, Interp::Linear, f32::NAN)?;
    blank_outside(&mut on_source, model_grid);
    Ok(on_source)
}

/// Sets every voxel of `volume` whose centre lies outside the model grid's voxels (more than
/// half a voxel beyond its first or last centre) to NaN.
fn blank_outside(volume: &mut Volume, model_grid: &Grid) {
    use rayon::prelude::*;
    // Source voxel → model voxel in one matrix, composed once (not an inverse per voxel), and
    // stepped along k.
    let to_model = model_grid.affine.inverse() * volume.affine().matrix();
    let step_k = to_model.column(2).xyz();
    let shape = model_grid.shape;
    let outside = |m: [f64; 3]| (0..3).any(|a| !(m[a] >= -0.5 && m[a] <= shape[a] as f64 - 0.5));
    volume
        .data_mut()
        .axis_iter_mut(ndarray::Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(i, mut slab)| {
            for (j, mut row) in slab.outer_iter_mut().enumerate() {
                let base = to_model * nalgebra::Vector4::new(i as f64, j as f64, 0.0, 1.0);
                for (k, v) in row.iter_mut().enumerate() {
                    let k = k as f64;
                    if outside([
                        base[0] + step_k[0] * k,
                        base[1] + step_k[1] * k,
                        base[2] + step_k[2] * k,
                    ]) {
                        *v = f32::NAN;
                    }
                }
            }
        });
}

/// A heatmap in its own units → the display scale, on which 1.0 is the reference level.
///
/// With the package's `reference` (`[heatmap]` in the manifest: the median peak of its
/// training positives' maps) the scale is absolute: the same map value gets the same number,
/// hence the same colour, in every study, and a quiet control stays low. Without one (older
/// packages) the study's own peak is used: a relative scale on which every study reaches 1.0,
/// which the outputs must say. NaN (not seen by the model) stays NaN; negative values become 0.
pub fn scale_heat(map: &Array3<f32>, reference: Option<f64>) -> Array3<f32> {
    let level = match reference {
        Some(r) if r.is_finite() && r > 0.0 => r as f32,
        _ => map.iter().filter(|v| v.is_finite()).fold(0.0f32, |m, &v| m.max(v)),
    };
    if !(level.is_finite() && level > 0.0) {
        return map.mapv(|v| if v.is_finite() { 0.0 } else { f32::NAN });
    }
    map.mapv(|v| if v.is_finite() { v.max(0.0) / level } else { f32::NAN })
}

/// The reference level of a package's maps, 1.0 on the display scale ([`scale_heat`]): the
/// median, over its training positives, of the peak of each one's ensemble map (map units, on
/// the feature grid). The median rather than the maximum so that one outlier does not wash out
/// every later study; a positive whose map is empty counts as 0. `None` when no map peaks above 0.
pub fn reference_level<'a>(maps: impl IntoIterator<Item = &'a Array3<f32>>) -> Option<f64> {
    let mut peaks: Vec<f64> = maps
        .into_iter()
        .map(|m| f64::from(m.iter().filter(|v| v.is_finite()).fold(0.0f32, |a, &v| a.max(v))))
        .collect();
    peaks.sort_unstable_by(f64::total_cmp);
    let n = peaks.len();
    let median = match n {
        0 => return None,
        _ if n % 2 == 1 => peaks[n / 2],
        _ => (peaks[n / 2 - 1] + peaks[n / 2]) / 2.0,
    };
    (median > 0.0).then_some(median)
}

/// The hottest voxel of a heatmap: its index `[i, j, k]` (k = slice of the source series) and
/// its LPS mm position; the first maximum wins on ties. `None` for a flat map.
pub fn hotspot(heatmap: &Volume) -> Option<([usize; 3], [f64; 3])> {
    let mut best = ([0usize; 3], f32::NEG_INFINITY);
    let mut lowest = f32::INFINITY;
    // By rows, in index order (the first maximum wins): indexed iteration over the 11 M voxels
    // of a 1 mm series cost more than the comparisons.
    for ((i, j), row) in heatmap
        .data()
        .lanes(ndarray::Axis(2))
        .into_iter()
        .enumerate()
        .map(|(n, row)| {
            let nj = heatmap.shape()[1].max(1);
            ((n / nj, n % nj), row)
        })
    {
        for (k, &v) in row.iter().enumerate() {
            if v.is_finite() {
                lowest = lowest.min(v);
                if v > best.1 {
                    best = ([i, j, k], v);
                }
            }
        }
    }
    // A flat (or empty, or all-zero) map points nowhere: its "maximum" would be voxel [0, 0, 0].
    if !(best.1 > 0.0 && best.1 > lowest) {
        return None;
    }
    let idx = best.0;
    Some((idx, heatmap.voxel_to_world(idx.map(|x| x as f64))))
}

/// Min-max normalisation to [0, 1]. A constant map becomes all zeros (no signal), never an
/// inverted or NaN map.
pub fn normalise(map: &Array3<f32>) -> Array3<f32> {
    let (lo, hi) = map
        .iter()
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let range = hi - lo;
    if range.is_finite() && range > 0.0 {
        map.mapv(|v| if v.is_finite() { (v - lo) / range } else { 0.0 })
    } else {
        Array3::zeros(map.raw_dim())
    }
}

/// Which voxels count as background for the Heat-Score.
#[derive(Clone, Copy, Debug)]
pub enum Background<'a> {
    /// The head (or brain) foreground outside the ROI: the default, so empty air around the
    /// head does not inflate the score.
    ForegroundOutsideRoi(&'a Array3<bool>),
    /// Every voxel outside the ROI.
    OutsideRoi,
}

impl Background<'_> {
    /// Short description for reports.
    pub fn describe(&self) -> &'static str {
        match self {
            Background::ForegroundOutsideRoi(_) => "head foreground outside the lesion ROI",
            Background::OutsideRoi => "every voxel outside the lesion ROI",
        }
    }
}

/// Why a Heat-Score cannot be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum HeatScoreError {
    /// Heatmap, ROI and foreground are not on one grid.
    #[error("heatmap {heatmap:?}, ROI {roi:?} and foreground must share one grid")]
    Shape { heatmap: Vec<usize>, roi: Vec<usize> },
    /// The ROI or the background is empty.
    #[error("the {what} holds no voxel")]
    Empty { what: &'static str },
    /// The background is flat, so the score is undefined.
    #[error("the background has zero standard deviation")]
    FlatBackground,
}

/// Heat-Score (Lasagni et al.): the heatmap min-max normalised to [0, 1], then
/// (mean inside the ROI − mean of the background) / standard deviation of the background.
pub fn heat_score(
    heatmap: &Array3<f32>,
    roi: &Array3<bool>,
    background: Background<'_>,
) -> Result<f64, HeatScoreError> {
    let shape_error = || HeatScoreError::Shape {
        heatmap: heatmap.shape().to_vec(),
        roi: roi.shape().to_vec(),
    };
    if heatmap.shape() != roi.shape() {
        return Err(shape_error());
    }
    if let Background::ForegroundOutsideRoi(fg) = background
        && fg.shape() != roi.shape()
    {
        return Err(shape_error());
    }
    let h = normalise(heatmap);
    let (mut inside, mut bg) = (Vec::new(), Vec::new());
    Zip::indexed(&h).and(roi).for_each(|idx, &v, &r| {
        let in_background = match background {
            Background::ForegroundOutsideRoi(fg) => fg[idx],
            Background::OutsideRoi => true,
        };
        if r {
            inside.push(f64::from(v));
        } else if in_background {
            bg.push(f64::from(v));
        }
    });
    if inside.is_empty() {
        return Err(HeatScoreError::Empty { what: "lesion ROI" });
    }
    if bg.is_empty() {
        return Err(HeatScoreError::Empty { what: "background" });
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (m_in, m_bg) = (mean(&inside), mean(&bg));
    let sd_bg = (bg.iter().map(|x| (x - m_bg).powi(2)).sum::<f64>() / bg.len() as f64).sqrt();
    if sd_bg == 0.0 {
        return Err(HeatScoreError::FlatBackground);
    }
    Ok((m_in - m_bg) / sd_bg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::{Normalisation, Recipe};
    use crate::volume::{Plane, acquisition_grid};

    /// A single hot feature voxel lands, on any source grid, within one feature voxel of the
    /// model position it stands for.
    #[test]
    fn feature_peak_maps_to_its_patient_position() {
        let recipe = Recipe {
            voxel_mm: [2.0; 3],
            shape: [40, 48, 32],
            normalisation: Normalisation::ZscoreForeground,
        };
        let model_grid = recipe.grid([5.0, -10.0, 20.0]).unwrap();
        // Feature grid 5×6×4 (stride 8); hot voxel at depth 1, height 4, width 2.
        let mut map = Array3::<f32>::zeros((4, 6, 5));
        map[[1, 4, 2]] = 1.0;
        // Its centre in model index: f × 8 → (16, 32, 8) for i = R, j = A, k = S.
        let expected = model_grid.voxel_to_world([16.0, 32.0, 8.0]);
        for plane in [Plane::Axial, Plane::Sagittal, Plane::Oblique] {
            let source = acquisition_grid(plane, [1.0, 1.0, 1.5], [90.0, 100.0, 70.0], [5.0, -10.0, 20.0]).unwrap();
            let heat = heatmap_on(&map, &model_grid, [8, 8, 8], &source).unwrap();
            let (idx, lps) = hotspot(&heat).expect("a map with one hot voxel has a hotspot");
            let dist = (0..3).map(|a| (lps[a] - expected[a]).powi(2)).sum::<f64>().sqrt();
            assert!(dist < 2.0, "{plane:?}: hotspot {lps:?} vs {expected:?} ({dist} mm)");
            let peak = heat.data()[idx];
            assert!(peak > 0.9 && peak < 1.2, "{plane:?}: raw units kept, peak {peak}");
        }
    }

    /// What lies outside the model grid is NaN (not seen), what lies inside is finite, and the
    /// display scale is absolute with a reference and relative to the peak without one.
    #[test]
    fn outside_the_field_of_view_is_not_seen_and_scales() {
        let recipe = Recipe {
            voxel_mm: [2.0; 3],
            shape: [16, 16, 16],
            normalisation: Normalisation::ZscoreForeground,
        };
        let model_grid = recipe.grid([0.0; 3]).unwrap();
        let map = Array3::from_elem((2, 2, 2), 0.5f32);
        // A source grid 60 mm wide around the 32 mm model box.
        let source = acquisition_grid(Plane::Axial, [2.0; 3], [60.0, 60.0, 60.0], [0.0; 3]).unwrap();
        let heat = heatmap_on(&map, &model_grid, [8, 8, 8], &source).unwrap();
        let centre = heat.world_to_voxel([0.0; 3]).map(|x| x.round() as usize);
        assert!((heat.data()[centre] - 0.5).abs() < 1e-4);
        assert!(heat.data()[[0, 0, 0]].is_nan(), "a corner 30 mm out was not seen");
        let seen = heat.data().iter().filter(|v| v.is_finite()).count();
        assert_eq!(seen, 16 * 16 * 16, "the model grid's voxels, no more");
        let absolute = scale_heat(heat.data(), Some(0.25));
        assert!((absolute[centre] - 2.0).abs() < 1e-3, "0.5 / 0.25");
        assert!(absolute[[0, 0, 0]].is_nan());
        let relative = scale_heat(heat.data(), None);
        assert!((relative[centre] - 1.0).abs() < 1e-3, "relative to the study peak");
        let zero = scale_heat(&Array3::zeros((2, 2, 2)), None);
        assert!(zero.iter().all(|&v| v == 0.0), "an empty map stays empty, not NaN");
    }

    #[test]
    fn reference_level_is_the_median_peak() {
        let map = |peak: f32| Array3::from_shape_vec((1, 1, 3), vec![0.0, peak, f32::NAN]).unwrap();
        let maps = [map(1.0), map(3.0), map(2.0)];
        assert_eq!(reference_level(&maps), Some(2.0));
        let maps = [map(1.0), map(3.0), map(2.0), map(10.0)];
        assert_eq!(
            reference_level(&maps),
            Some(2.5),
            "even count: the mean of the middle two"
        );
        assert_eq!(reference_level(&[map(0.0)]), None, "empty maps give no scale");
        assert_eq!(reference_level(&Vec::<Array3<f32>>::new()), None);
    }

    #[test]
    fn edges_clamp_instead_of_fading() {
        let recipe = Recipe {
            voxel_mm: [2.0; 3],
            shape: [16, 16, 16],
            normalisation: Normalisation::ZscoreForeground,
        };
        let grid = recipe.grid([0.0; 3]).unwrap();
        let map = Array3::from_elem((2, 2, 2), 3.0f32);
        let v = feature_map_volume(&map, &grid, [8, 8, 8])
            .unwrap()
            .resample(&grid, Interp::Linear, 0.0)
            .unwrap();
        assert!(
            v.data().iter().all(|&x| (x - 3.0).abs() < 1e-6),
            "corner voxels keep the edge value"
        );
    }

    #[test]
    fn normalise_is_min_max_and_never_inverts() {
        let m = Array3::from_shape_vec((1, 1, 4), vec![-2.0, 0.0, 2.0, 6.0]).unwrap();
        assert_eq!(normalise(&m).into_raw_vec_and_offset().0, vec![0.0, 0.25, 0.5, 1.0]);
        assert_eq!(
            normalise(&Array3::from_elem((2, 2, 2), 3.0)),
            Array3::<f32>::zeros((2, 2, 2))
        );
    }

    /// Analytic case: background alternates 0 and 0.5 (mean 0.25, sd 0.25), ROI is 1:
    /// HS = (1 − 0.25) / 0.25 = 3.
    #[test]
    fn heat_score_known_value() {
        let mut h = Array3::<f32>::zeros((4, 4, 4));
        let mut roi = Array3::from_elem((4, 4, 4), false);
        for ((i, j, k), v) in h.indexed_iter_mut() {
            *v = if (i + j + k) % 2 == 0 { 0.0 } else { 0.5 };
        }
        for k in 0..2 {
            h[[0, 0, k]] = 1.0;
            roi[[0, 0, k]] = true;
        }
        let hs = heat_score(&h, &roi, Background::OutsideRoi).unwrap();
        // Background: 62 voxels; remove the two ROI voxels (one 0.0, one 0.5 by parity) → 31 of each.
        assert!((hs - 3.0).abs() < 1e-9, "{hs}");
        // Restricting the background to a foreground of the 0.5-voxels only leaves it flat.
        let fg = h.mapv(|v| v == 0.5);
        assert_eq!(
            heat_score(&h, &roi, Background::ForegroundOutsideRoi(&fg)),
            Err(HeatScoreError::FlatBackground)
        );
        // Scaling and shifting the heatmap does not change the score (min-max first).
        let hs2 = heat_score(&h.mapv(|v| 10.0 * v - 3.0), &roi, Background::OutsideRoi).unwrap();
        assert!((hs2 - hs).abs() < 1e-5);
    }

    #[test]
    fn heat_score_errors() {
        let h = Array3::<f32>::zeros((2, 2, 2));
        let none = Array3::from_elem((2, 2, 2), false);
        assert_eq!(
            heat_score(&h, &none, Background::OutsideRoi),
            Err(HeatScoreError::Empty { what: "lesion ROI" })
        );
        let all = Array3::from_elem((2, 2, 2), true);
        assert_eq!(
            heat_score(&h, &all, Background::OutsideRoi),
            Err(HeatScoreError::Empty { what: "background" })
        );
        let small = Array3::from_elem((1, 2, 2), true);
        assert!(matches!(
            heat_score(&h, &small, Background::OutsideRoi),
            Err(HeatScoreError::Shape { .. })
        ));
    }
}
