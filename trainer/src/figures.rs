//! The trainer's pictures as PNG files: ROC curves and the reliability diagram (labelled axes,
//! drawn with a 5×7 bitmap font), the side-by-side montage of panels (for the reports) and the
//! per-subject Grad-CAM panel (written by [`crate::cv`] during the fold loop). Drawing only: no
//! metrics, no run layout, no imports of `cv`, `report` or `evaluate`.

use std::path::{Path, PathBuf};

use fcdnode::explain::normalise;
use image::{Rgb, RgbImage};
use ndarray::{Array3, Axis};

use crate::data::batcher::Sample;
use crate::metrics::CalibrationBin;

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

/// One curve of a plot: legend text, points, colour.
pub struct Curve<'a> {
    pub label: String,
    pub points: &'a [(f64, f64)],
    pub colour: [u8; 3],
}

/// A ROC plot of one curve (blue), as [`write_roc_curves_png`].
pub fn write_roc_png(path: &Path, points: &[(f64, f64)]) -> Result<(), PngError> {
    write_roc_curves_png(
        path,
        &[Curve {
            label: String::new(),
            points,
            colour: [20, 60, 220],
        }],
    )
}

/// A unit-square plot frame: 440×440 pixels, axes with ticks at 0, 0.25 … 1 and their values,
/// axis titles, the chance/identity diagonal in grey. Returns the image and the data → pixel map.
fn unit_frame(title: &str, x_title: &str, y_title: &str) -> (RgbImage, impl Fn(f64, f64) -> (i64, i64)) {
    let (size, left, bottom, top, right) = (440i64, 64i64, 56i64, 34i64, 16i64);
    let mut img = RgbImage::from_pixel(size as u32, size as u32, Rgb([255, 255, 255]));
    let (w, h) = ((size - left - right) as f64, (size - top - bottom) as f64);
    let at = move |x: f64, y: f64| {
        (
            left + (x.clamp(0.0, 1.0) * w).round() as i64,
            size - bottom - (y.clamp(0.0, 1.0) * h).round() as i64,
        )
    };
    let black = Rgb([0, 0, 0]);
    line(&mut img, at(0.0, 0.0), at(1.0, 1.0), Rgb([190, 190, 190]));
    line(&mut img, at(0.0, 0.0), at(1.0, 0.0), black);
    line(&mut img, at(0.0, 0.0), at(0.0, 1.0), black);
    for t in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let (x, y) = at(t, 0.0);
        line(&mut img, (x, y), (x, y + 5), black);
        let label = format!("{t}");
        draw_text(&mut img, &label, x - 6 * label.len() as i64 / 2, y + 9, 1, black);
        let (x, y) = at(0.0, t);
        line(&mut img, (x - 5, y), (x, y), black);
        draw_text(&mut img, &label, x - 8 - 6 * label.len() as i64, y - 3, 1, black);
    }
    draw_text(&mut img, title, left, 10, 2, black);
    let (x0, _) = at(0.5, 0.0);
    draw_text(&mut img, x_title, x0 - 6 * x_title.len() as i64, size - 24, 2, black);
    draw_text_vertical(&mut img, y_title, 8, size / 2 - 6 * y_title.len() as i64, 2, black);
    (img, at)
}

/// ROC curves (false-positive rate right, true-positive rate up) with the chance diagonal in
/// grey, axis titles, ticks, and each curve's legend in its colour at the lower right.
pub fn write_roc_curves_png(path: &Path, curves: &[Curve<'_>]) -> Result<(), PngError> {
    let (mut img, at) = unit_frame("ROC", "FALSE POSITIVE RATE", "TRUE POSITIVE RATE");
    for (n, c) in curves.iter().enumerate() {
        for w in c.points.windows(2) {
            line(&mut img, at(w[0].0, w[0].1), at(w[1].0, w[1].1), Rgb(c.colour));
        }
        if !c.label.is_empty() {
            let (x, y) = at(0.35, 0.08 + 0.07 * (curves.len() - 1 - n) as f64);
            draw_text(&mut img, &c.label, x, y, 2, Rgb(c.colour));
        }
    }
    save_png(path, &img)
}

/// Reliability diagram: per non-empty bin, the observed fraction of positives (dot, with its
/// count) against the mean predicted probability; the identity diagonal (perfect calibration)
/// in grey and the decision threshold as a dashed vertical line.
pub fn write_reliability_png(path: &Path, bins: &[CalibrationBin], threshold: f64) -> Result<(), PngError> {
    let (mut img, at) = unit_frame("RELIABILITY", "MEAN PREDICTED PROBABILITY", "FRACTION FCD");
    let blue = Rgb([20, 60, 220]);
    for s in 0..40 {
        if s % 2 == 0 {
            let (a, b) = (s as f64 / 40.0, (s + 1) as f64 / 40.0);
            line(&mut img, at(threshold, a), at(threshold, b), Rgb([200, 40, 40]));
        }
    }
    let points: Vec<(f64, f64, usize)> = bins
        .iter()
        .filter(|b| b.n > 0 && b.mean_probability.is_finite())
        .map(|b| (b.mean_probability, b.fraction_positive, b.n))
        .collect();
    for w in points.windows(2) {
        line(&mut img, at(w[0].0, w[0].1), at(w[1].0, w[1].1), blue);
    }
    for (k, &(x, y, n)) in points.iter().enumerate() {
        let (px, py) = at(x, y);
        for dy in -4..=4i64 {
            for dx in -4..=4i64 {
                if dx * dx + dy * dy <= 16 {
                    put(&mut img, px + dx, py + dy, blue);
                }
            }
        }
        let label = format!("N={n}");
        // Alternate the label's place so neighbouring counts do not overprint, and keep it off the
        // frame: below the dot near the top, above it near the bottom (the tick labels), else
        // above and below in turn.
        let even = k % 2 == 0;
        let ty = if y > 0.9 {
            if even { py + 8 } else { py + 20 }
        } else if y < 0.1 {
            if even { py - 16 } else { py - 28 }
        } else if even {
            py - 16
        } else {
            py + 8
        };
        draw_text(&mut img, &label, px + 6, ty, 1, Rgb([0, 0, 0]));
    }
    let (x, y) = at(0.45, 0.06);
    draw_text(&mut img, &format!("THRESHOLD {threshold}"), x, y, 1, Rgb([200, 40, 40]));
    save_png(path, &img)
}

fn put(img: &mut RgbImage, x: i64, y: i64, colour: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, colour);
    }
}

/// Draws `text` with a 5×7 bitmap font at (x, y) (top-left), `scale` pixels per font pixel.
fn draw_text(img: &mut RgbImage, text: &str, x: i64, y: i64, scale: i64, colour: Rgb<u8>) {
    for (n, ch) in text.chars().enumerate() {
        let x0 = x + n as i64 * 6 * scale;
        for (row, bits) in fcdnode::report::glyph(ch).iter().enumerate() {
            for col in 0..5i64 {
                if bits & (0b10000 >> col) != 0 {
                    for d in 0..scale * scale {
                        put(
                            img,
                            x0 + col * scale + d % scale,
                            y + row as i64 * scale + d / scale,
                            colour,
                        );
                    }
                }
            }
        }
    }
}

/// `text` rotated a quarter turn (reading bottom to top), its first letter at the bottom.
fn draw_text_vertical(img: &mut RgbImage, text: &str, x: i64, y: i64, scale: i64, colour: Rgb<u8>) {
    let len = text.chars().count() as i64;
    for (n, ch) in text.chars().enumerate() {
        let y0 = y + (len - 1 - n as i64) * 6 * scale;
        for (row, bits) in fcdnode::report::glyph(ch).iter().enumerate() {
            for col in 0..5i64 {
                if bits & (0b10000 >> col) != 0 {
                    for d in 0..scale * scale {
                        // Glyph (col, row) → screen (row, 4 − col): rotated anticlockwise.
                        put(
                            img,
                            x + row as i64 * scale + d % scale,
                            y0 + (4 - col) * scale + d / scale,
                            colour,
                        );
                    }
                }
            }
        }
    }
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

/// Panels (PNG files) one below the other on white, 4 pixels apart, left-aligned (for panels
/// that are themselves wide strips, such as the node's previews).
pub fn write_stack(path: &Path, panels: &[&Path]) -> Result<(), PngError> {
    let images = panels
        .iter()
        .map(|p| {
            image::open(p).map(|i| i.to_rgb8()).map_err(|source| PngError {
                path: p.to_path_buf(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let width = images.iter().map(|i| i.width()).max().unwrap_or(1);
    let height = images.iter().map(|i| i.height()).sum::<u32>() + 4 * images.len() as u32;
    let mut out = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let mut y0 = 0;
    for i in &images {
        image::imageops::replace(&mut out, i, 0, i64::from(y0));
        y0 += i.height() + 4;
    }
    save_png(path, &out)
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
