//! PNG preview: one axial FLAIR slice through the lesion with the ROI outlined, so a person can
//! see where the lesion sits.

use image::{Rgb, RgbImage};
use ndarray::Array3;

use super::SynthError;
use crate::volume::{Interp, Volume};

/// Outline colour (red).
const OUTLINE: Rgb<u8> = Rgb([255, 40, 40]);

/// Axial slice of `flair` through the ROI, in radiological display (patient's right on the image
/// left, anterior at the top), grey-windowed to the 1st–99th percentile: on the left as is, on
/// the right with the ROI boundary in red, so the lesion itself stays visible. Both volumes are
/// reoriented to RAS first, so any acquisition plane works.
pub fn flair_with_outline(flair: &Volume, roi: &Volume) -> Result<RgbImage, SynthError> {
    let flair = flair.to_canonical();
    let roi = roi.resample(&flair.grid(), Interp::Nearest, 0.0)?;
    let mask = roi.threshold(0.5);
    let [ni, nj, nk] = flair.shape();
    let k = centroid_slice(&mask).unwrap_or(nk / 2);
    let (lo, hi) = percentiles(flair.data(), 0.01, 0.99);
    // RAS: i grows to the right, so image column = ni − 1 − i shows the right on the left;
    // j grows anteriorly, so image row = nj − 1 − j puts anterior at the top.
    let mut img = RgbImage::new(2 * ni as u32, nj as u32);
    for i in 0..ni {
        for j in 0..nj {
            let v = flair.data()[[i, j, k]];
            let g = (((v - lo) / (hi - lo).max(1e-6)).clamp(0.0, 1.0) * 255.0) as u8;
            let edge = mask[[i, j, k]]
                && [(-1i64, 0i64), (1, 0), (0, -1), (0, 1)].iter().any(|(di, dj)| {
                    let (a, b) = (i as i64 + di, j as i64 + dj);
                    a < 0 || b < 0 || a >= ni as i64 || b >= nj as i64 || !mask[[a as usize, b as usize, k]]
                });
            let (x, y) = ((ni - 1 - i) as u32, (nj - 1 - j) as u32);
            img.put_pixel(x, y, Rgb([g, g, g]));
            img.put_pixel(x + ni as u32, y, if edge { OUTLINE } else { Rgb([g, g, g]) });
        }
    }
    Ok(image::imageops::resize(
        &img,
        4 * ni as u32,
        2 * nj as u32,
        image::imageops::FilterType::Nearest,
    ))
}

/// The k index holding the most ROI voxels.
fn centroid_slice(mask: &Array3<bool>) -> Option<usize> {
    let nk = mask.dim().2;
    (0..nk)
        .map(|k| (k, mask.index_axis(ndarray::Axis(2), k).iter().filter(|&&m| m).count()))
        .filter(|&(_, n)| n > 0)
        .max_by_key(|&(_, n)| n)
        .map(|(k, _)| k)
}

fn percentiles(data: &Array3<f32>, lo: f64, hi: f64) -> (f32, f32) {
    let mut v: Vec<f32> = data.iter().copied().filter(|x| x.is_finite() && *x > 0.0).collect();
    if v.is_empty() {
        return (0.0, 1.0);
    }
    v.sort_by(f32::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
    (at(lo), at(hi))
}
