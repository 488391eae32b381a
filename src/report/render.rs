//! Source slice + heatmap → RGB pixels: robust grey window, colour map, alpha blend above a
//! floor, a burnt-in legend drawn with a built-in 5×7 bitmap font, and the PNG montage.
//!
//! Slice k is drawn as the source image: row r, column c is voxel `[c, r, k]` (voxel index).

use image::{Rgb, RgbImage};
use ndarray::Array3;

use super::{Algorithm, Finding, ReportError, ReportOptions, label};
use crate::assemble::Assembled;
use crate::volume::Volume;

/// Grey window: intensity `lo` → 0, `hi` → 255.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Window {
    pub lo: f32,
    pub hi: f32,
}

impl Window {
    /// The `[low, high]` percentiles (0–100) of the finite voxels (at most ~1 M sampled).
    pub fn robust(data: &Array3<f32>, percentiles: [f64; 2]) -> Self {
        let step = (data.len() / 1_000_000).max(1);
        let mut values: Vec<f32> = data.iter().step_by(step).copied().filter(|v| v.is_finite()).collect();
        if values.is_empty() {
            return Self { lo: 0.0, hi: 1.0 };
        }
        values.sort_unstable_by(f32::total_cmp);
        let at = |p: f64| {
            let idx = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
            values[idx.min(values.len() - 1)]
        };
        let (mut lo, mut hi) = (at(percentiles[0]), at(percentiles[1]));
        if hi <= lo {
            lo = values[0];
            hi = values[values.len() - 1];
        }
        if hi <= lo {
            hi = lo + 1.0;
        }
        Self { lo, hi }
    }

    fn grey(&self, v: f32) -> u8 {
        if !v.is_finite() {
            return 0;
        }
        let t = ((v - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0);
        (t * 255.0).round() as u8
    }
}

/// The "turbo" colour map (polynomial approximation), t in [0, 1] → RGB in [0, 1].
pub(crate) fn turbo(t: f32) -> [f32; 3] {
    let t = f64::from(t.clamp(0.0, 1.0));
    let poly = |c: [f64; 6]| c[0] + t * (c[1] + t * (c[2] + t * (c[3] + t * (c[4] + t * c[5]))));
    let r = poly([
        0.13572138,
        4.61539260,
        -42.66032258,
        132.13108234,
        -152.94239396,
        59.28637943,
    ]);
    let g = poly([0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604]);
    let b = poly([
        0.10667330,
        12.64194608,
        -60.58204836,
        110.36276771,
        -89.90310912,
        27.34824973,
    ]);
    [r, g, b].map(|x| x.clamp(0.0, 1.0) as f32)
}

/// Start of the used part of turbo: its darkest, nearly grey blues are skipped so that heat just
/// above the floor still reads as colour over grey.
const TURBO_START: f32 = 0.12;

/// Overlay colour of a heat value above the floor (the map spans floor → 1).
fn heat_colour(heat: f32, floor: f32) -> [f32; 3] {
    let t = ((heat - floor) / (1.0 - floor)).clamp(0.0, 1.0);
    turbo(TURBO_START + (1.0 - TURBO_START) * t)
}

/// Renders slice `k`: grey source, colour where heat > floor. Pixels are RGB, row-major.
pub(crate) fn render_slice(
    source: &Array3<f32>,
    heat: &Array3<f32>,
    k: usize,
    window: Window,
    options: &ReportOptions,
) -> RgbImage {
    let [n_i, n_j, _] = [source.shape()[0], source.shape()[1], source.shape()[2]];
    let mut img = RgbImage::new(n_i as u32, n_j as u32);
    for r in 0..n_j {
        for c in 0..n_i {
            let g = f32::from(window.grey(source[[c, r, k]]));
            let h = heat[[c, r, k]];
            let px = if h.is_finite() && h > options.overlay_floor {
                let col = heat_colour(h.min(1.0), options.overlay_floor);
                let a = options.alpha;
                col.map(|x| ((1.0 - a) * g + a * x * 255.0).round().clamp(0.0, 255.0) as u8)
            } else {
                [g as u8; 3]
            };
            img.put_pixel(c as u32, r as u32, Rgb(px));
        }
    }
    img
}

/// Legend lines burnt into every frame of a slice `width` pixels wide: the decision,
/// probability, model and a warning; only the probability on slices narrower than 160 pixels.
pub(crate) fn legend_lines(finding: &Finding, algorithm: &Algorithm, width: usize) -> Vec<String> {
    if width < 160 {
        return vec![format!("P={:.2}", finding.probability)];
    }
    vec![
        label(finding.suspected).to_uppercase(),
        format!("P={:.3} T={:.2}", finding.probability, finding.threshold),
        format!("{} {}", algorithm.name, algorithm.version),
        "AI RESULT - UNVERIFIED".into(),
    ]
}

/// Draws the legend (text on a dark box, then a colour bar floor → 1) in the top-left corner,
/// clipped to the image. Scale 2 for slices at least 384 pixels wide.
pub(crate) fn draw_legend(img: &mut RgbImage, lines: &[String], options: &ReportOptions) {
    let scale = if img.width() >= 384 { 2 } else { 1 };
    let line_h = 9 * scale;
    let text_w = lines.iter().map(|l| l.chars().count() as u32).max().unwrap_or(0) * 6 * scale;
    let bar_h = 4 * scale;
    let box_w = (text_w + 2 * scale).min(img.width());
    let box_h = (lines.len() as u32 * line_h + bar_h + 3 * scale).min(img.height());
    for y in 0..box_h {
        for x in 0..box_w {
            let p = img.get_pixel_mut(x, y);
            p.0 = p.0.map(|v| v / 4);
        }
    }
    for (n, line) in lines.iter().enumerate() {
        draw_text(img, line, scale, 1 + n as u32 * line_h, scale, [255, 255, 255]);
    }
    let bar_y = lines.len() as u32 * line_h + scale;
    let bar_w = text_w.saturating_sub(2 * scale).max(1);
    for x in 0..bar_w {
        let t = x as f32 / (bar_w.max(2) - 1) as f32;
        let col = heat_colour(
            options.overlay_floor + t * (1.0 - options.overlay_floor),
            options.overlay_floor,
        );
        let px = col.map(|v| (v * 255.0).round() as u8);
        for y in 0..bar_h {
            let (xx, yy) = (scale + x, bar_y + y);
            if xx < img.width() && yy < img.height() {
                img.put_pixel(xx, yy, Rgb(px));
            }
        }
    }
}

/// Draws `text` with the 5×7 font at (x, y) (top-left), clipped to the image.
fn draw_text(img: &mut RgbImage, text: &str, x: u32, y: u32, scale: u32, colour: [u8; 3]) {
    for (n, ch) in text.chars().enumerate() {
        let glyph = glyph(ch);
        let x0 = x + n as u32 * 6 * scale;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..5u32 {
                if bits & (0b10000 >> col) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (px, py) = (x0 + col * scale + dx, y + row as u32 * scale + dy);
                        if px < img.width() && py < img.height() {
                            img.put_pixel(px, py, Rgb(colour));
                        }
                    }
                }
            }
        }
    }
}

/// 5×7 glyph rows (bit 4 = leftmost column); lower case is drawn as upper case, unknown
/// characters as `?`.
fn glyph(ch: char) -> [u8; 7] {
    match ch.to_ascii_uppercase() {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        ' ' => [0; 7],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        ',' => [0, 0, 0, 0, 0x0C, 0x04, 0x08],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        '+' => [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
        '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '/' => [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '_' => [0, 0, 0, 0, 0, 0, 0x1F],
        '<' => [0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02],
        '>' => [0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08],
        _ => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04],
    }
}

/// Montage of up to five slices around the hotspot (hotspot in the middle; the middle slice
/// when no hotspot is reported), heatmap blended as in the SC, each panel resampled to square
/// millimetres and at least 192 pixels high, with the legend on the centre panel.
pub fn preview_png(
    source: &Assembled,
    heatmap: &Volume,
    finding: &Finding,
    options: &ReportOptions,
) -> Result<RgbImage, ReportError> {
    super::check_inputs(source, finding)?;
    super::check_options(&source.meta.series_uid, options)?;
    super::check_heatmap(source, heatmap)?;
    let data = source.volume.data();
    let heat = heatmap.data();
    let depth = data.shape()[2];
    let window = Window::robust(data, options.window_percentiles);
    let step = (depth / 12).max(1) as isize;
    // Around the reported hotspot; a study without one is shown around its middle slice.
    let centre = finding.hotspot().map_or(depth / 2, |h| h.slice);
    let mut ks: Vec<usize> = (-2..=2)
        .map(|d| centre as isize + d * step)
        .filter(|&k| k >= 0 && (k as usize) < depth)
        .map(|k| k as usize)
        .collect();
    ks.dedup();
    let [sx, sy, _] = source.volume.spacing();
    let (w_mm, h_mm) = (data.shape()[0] as f64 * sx, data.shape()[1] as f64 * sy);
    let scale = (192.0 / h_mm)
        .max(1.0 / sx.min(sy).max(1e-6))
        .min(4096.0 / w_mm.max(h_mm));
    let pw = ((w_mm * scale).round() as u32).max(1);
    let ph = ((h_mm * scale).round() as u32).max(1);
    let gap = 4;
    let mut montage = RgbImage::new(ks.len() as u32 * (pw + gap) - gap, ph);
    for (n, &k) in ks.iter().enumerate() {
        let panel = render_slice(data, heat, k, window, options);
        let mut panel = image::imageops::resize(&panel, pw, ph, image::imageops::FilterType::Triangle);
        if k == centre {
            draw_legend(
                &mut panel,
                &[
                    label(finding.suspected).to_uppercase(),
                    format!("P={:.3}", finding.probability),
                    format!("SLICE {}", k + 1),
                ],
                options,
            );
        } else {
            draw_text(&mut panel, &format!("SLICE {}", k + 1), 2, 2, 1, [255, 255, 255]);
        }
        image::imageops::overlay(&mut montage, &panel, i64::from(n as u32 * (pw + gap)), 0);
    }
    Ok(montage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turbo_is_coloured_and_bounded() {
        for n in 0..=100 {
            let c = heat_colour(0.2 + 0.8 * n as f32 / 100.0, 0.2);
            assert!(c.iter().all(|v| (0.0..=1.0).contains(v)));
            let spread = c.iter().fold(0f32, |m, v| m.max(*v)) - c.iter().fold(1f32, |m, v| m.min(*v));
            assert!(spread > 0.05, "t={n}%: {c:?} is nearly grey");
        }
    }

    #[test]
    fn window_ignores_outliers() {
        let mut data = Array3::<f32>::from_shape_fn((10, 10, 10), |(i, _, _)| i as f32);
        data[[0, 0, 0]] = 1e6;
        let w = Window::robust(&data, [0.5, 99.5]);
        assert_eq!(w.lo, 0.0);
        assert_eq!(w.hi, 9.0);
        let flat = Array3::<f32>::zeros((2, 2, 2));
        let w = Window::robust(&flat, [0.5, 99.5]);
        assert!(w.hi > w.lo);
    }

    #[test]
    fn overlay_only_above_floor() {
        let source = Array3::<f32>::from_elem((4, 3, 1), 50.0);
        let mut heat = Array3::<f32>::zeros((4, 3, 1));
        heat[[2, 1, 0]] = 1.0;
        heat[[1, 1, 0]] = 0.1;
        let options = ReportOptions::default();
        let img = render_slice(&source, &heat, 0, Window { lo: 0.0, hi: 100.0 }, &options);
        let grey = img.get_pixel(1, 1).0;
        assert!(grey[0] == grey[1] && grey[1] == grey[2]);
        let hot = img.get_pixel(2, 1).0;
        assert!(hot[0] != hot[1] || hot[1] != hot[2]);
        assert_eq!(img.dimensions(), (4, 3));
    }

    #[test]
    fn text_is_drawn_and_clipped() {
        let mut img = RgbImage::new(20, 5);
        draw_text(&mut img, "P=0.9", 0, 0, 1, [255, 255, 255]);
        assert!(img.pixels().any(|p| p.0 == [255, 255, 255]));
        let lines = vec!["A VERY LONG LEGEND LINE".to_owned()];
        draw_legend(&mut img, &lines, &ReportOptions::default());
    }
}
