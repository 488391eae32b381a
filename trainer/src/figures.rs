//! The trainer's pictures as PNG files: the ROC curve and the side-by-side montage of panels
//! (for the report) and the per-subject Grad-CAM panel (written by [`crate::cv`] during the fold
//! loop). Drawing only: no metrics, no run layout, no imports of `cv` or `report`.

use std::path::{Path, PathBuf};

use fcdnode::explain::normalise;
use image::{Rgb, RgbImage};
use ndarray::{Array3, Axis};

use crate::data::batcher::Sample;

/// A PNG could not be encoded, written or read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: PNG")]
pub struct PngError {
    pub path: PathBuf,
    #[source]
    pub source: image::ImageError,
}

fn save_png(path: &Path, img: &RgbImage) -> Result<(), PngError> {
    img.save(path).map_err(|source| PngError {
        path: path.to_owned(),
        source,
    })
}

fn line(img: &mut RgbImage, (x0, y0): (i64, i64), (x1, y1): (i64, i64), colour: Rgb<u8>) {
    let steps = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
    for s in 0..=steps {
        let x = x0 + (x1 - x0) * s / steps;
        let y = y0 + (y1 - y0) * s / steps;
        for (dx, dy) in [(0, 0), (1, 0), (0, 1)] {
            let (px, py) = (x + dx, y + dy);
            if px >= 0 && py >= 0 && (px as u32) < img.width() && (py as u32) < img.height() {
                img.put_pixel(px as u32, py as u32, colour);
            }
        }
    }
}

/// A 320×320 ROC plot: axes, chance diagonal (grey), the curve (blue). FPR right, TPR up.
pub fn write_roc_png(path: &Path, points: &[(f64, f64)]) -> Result<(), PngError> {
    let (size, margin) = (320i64, 20i64);
    let mut img = RgbImage::from_pixel(size as u32, size as u32, Rgb([255, 255, 255]));
    let span = (size - 2 * margin) as f64;
    let at = |fpr: f64, tpr: f64| {
        (
            margin + (fpr * span).round() as i64,
            size - margin - (tpr * span).round() as i64,
        )
    };
    let black = Rgb([0, 0, 0]);
    line(&mut img, at(0.0, 0.0), at(1.0, 0.0), black);
    line(&mut img, at(0.0, 0.0), at(0.0, 1.0), black);
    line(&mut img, at(0.0, 0.0), at(1.0, 1.0), Rgb([190, 190, 190]));
    for w in points.windows(2) {
        line(&mut img, at(w[0].0, w[0].1), at(w[1].0, w[1].1), Rgb([20, 60, 220]));
    }
    save_png(path, &img)
}

/// An axial slice of `sample` (reference channel, grey) through the lesion centroid with the
/// min-max normalised heatmap in red and the ROI outline in green, ×3 nearest upscaling;
/// anterior up. `heat` is `[depth, height, width]` on the model grid.
pub fn write_cam_panel(path: &Path, sample: &Sample, heat: &Array3<f32>) -> Result<(), PngError> {
    let image = sample.tensor.index_axis(Axis(0), 0);
    let (d, h, w) = image.dim();
    let roi = sample
        .roi
        .clone()
        .unwrap_or_else(|| Array3::from_elem((d, h, w), false));
    let (sum, n) = roi
        .indexed_iter()
        .filter(|(_, r)| **r)
        .fold((0usize, 0usize), |(s, n), ((z, _, _), _)| (s + z, n + 1));
    let z = sum.checked_div(n).unwrap_or(d / 2);
    let heat = normalise(heat);
    let scale = 3u32;
    let mut img = RgbImage::new(w as u32 * scale, h as u32 * scale);
    for y in 0..h {
        for x in 0..w {
            let g = ((image[[z, y, x]] + 2.0) / 5.0).clamp(0.0, 1.0);
            let a = 0.6 * heat[[z, y, x]].clamp(0.0, 1.0);
            let r = roi[[z, y, x]];
            let edge = r
                && [(0i64, 1i64), (0, -1), (1, 0), (-1, 0)].iter().any(|(dy, dx)| {
                    let (yy, xx) = (y as i64 + dy, x as i64 + dx);
                    yy < 0 || xx < 0 || yy >= h as i64 || xx >= w as i64 || !roi[[z, yy as usize, xx as usize]]
                });
            let px = if edge {
                Rgb([0, 255, 0])
            } else {
                let c = |base: f32, tint: f32| ((base * (1.0 - a) + tint * a) * 255.0).round() as u8;
                Rgb([c(g, 1.0), c(g, 0.0), c(g, 0.0)])
            };
            // Anterior (high y = A) at the top.
            let row = (h - 1 - y) as u32;
            for dy in 0..scale {
                for dx in 0..scale {
                    img.put_pixel(x as u32 * scale + dx, row * scale + dy, px);
                }
            }
        }
    }
    save_png(path, &img)
}

/// Panels (PNG files) side by side on white, 4 pixels apart, top-aligned.
pub fn write_montage(path: &Path, panels: &[&Path]) -> Result<(), PngError> {
    let images = panels
        .iter()
        .map(|p| {
            image::open(p).map(|i| i.to_rgb8()).map_err(|source| PngError {
                path: p.to_path_buf(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let width = images.iter().map(|i| i.width()).sum::<u32>() + 4 * images.len() as u32;
    let height = images.iter().map(|i| i.height()).max().unwrap_or(1);
    let mut out = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let mut x0 = 0;
    for i in &images {
        image::imageops::replace(&mut out, i, i64::from(x0), 0);
        x0 += i.width() + 4;
    }
    save_png(path, &out)
}
