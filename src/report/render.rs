//! Source slice + heatmap → RGB frames a reader can trust: a robust grey window; colour only
//! inside the head, where the model looked, and above a threshold on the absolute scale
//! ([`crate::explain::scale_heat`]); a crosshair on the hotspot; and, outside the image, margins
//! with orientation letters and a band below with the result, the colour bar, its ticks and
//! what the scale means (built-in 5×7 bitmap font). Nothing is ever drawn over the anatomy
//! except the overlay and the crosshair.
//!
//! Slice k is drawn as the source image: row r, column c is voxel `[c, r, k]` (voxel index).

use image::{Rgb, RgbImage};
use nalgebra::Vector4;
use ndarray::Array3;

use super::{Algorithm, Finding, NegativeOverlay, ReportError, ReportOptions, label};
use crate::assemble::Assembled;
use crate::volume::{Affine, Grid, Volume};

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
        // Two order statistics by selection, not a sort of a million values.
        let last = values.len() - 1;
        let mut at = |p: f64| {
            let idx = (((p / 100.0) * last as f64).round() as usize).min(last);
            *values.select_nth_unstable_by(idx, f32::total_cmp).1
        };
        let (mut lo, mut hi) = (at(percentiles[0]), at(percentiles[1]));
        if hi <= lo {
            lo = values.iter().copied().fold(f32::INFINITY, f32::min);
            hi = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
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

/// The overlay's colour map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ColourMap {
    /// Perceptually ordered, black → purple → orange → yellow (the default: brighter means more).
    #[default]
    Inferno,
    /// Black → red → yellow, perceptually ordered too (its white end is left out: white is text).
    Hot,
    /// Rainbow-like, high contrast but not perceptually ordered.
    Turbo,
}

impl ColourMap {
    /// Colour of t in [0, 1] over the part of the map used: the darkest end is skipped so that
    /// heat just above the threshold still reads as colour over grey anatomy.
    pub(crate) fn colour(self, t: f32) -> [f32; 3] {
        let t = t.clamp(0.0, 1.0);
        match self {
            ColourMap::Inferno => inferno(0.3 + 0.7 * t),
            ColourMap::Hot => hot(0.3 + 0.55 * t),
            ColourMap::Turbo => turbo(0.12 + 0.88 * t),
        }
    }
}

/// Matplotlib's "inferno" (polynomial fit), t in [0, 1] → RGB in [0, 1].
fn inferno(t: f32) -> [f32; 3] {
    const C: [[f64; 3]; 7] = [
        [
            0.000_218_940_369_119_226_5,
            0.001_651_004_631_001_012,
            -0.019_480_898_437_091_84,
        ],
        [0.106_513_419_485_611_6, 0.563_956_436_788_409_1, 3.932_712_388_889_277],
        [11.602_493_082_471_87, -3.972_853_965_665_698, -15.942_394_106_291_4],
        [-41.703_996_131_394_59, 17.436_398_882_053_13, 44.354_145_198_728_13],
        [77.162_935_699_427, -33.402_358_942_100_92, -81.807_309_257_389_93],
        [-71.319_428_244_992_14, 32.626_064_263_977_23, 73.209_519_858_032_02],
        [25.131_126_224_773_41, -12.242_668_952_385_67, -23.070_325_002_871_72],
    ];
    let t = f64::from(t.clamp(0.0, 1.0));
    std::array::from_fn(|c| C.iter().rev().fold(0.0, |acc, k| acc * t + k[c]).clamp(0.0, 1.0) as f32)
}

/// The classic "hot" map: red rises first, then green, then blue.
fn hot(t: f32) -> [f32; 3] {
    let t = t.clamp(0.0, 1.0);
    [
        (t / 0.375).min(1.0),
        ((t - 0.375) / 0.375).clamp(0.0, 1.0),
        ((t - 0.75) / 0.25).clamp(0.0, 1.0),
    ]
}

/// The "turbo" colour map (polynomial approximation), t in [0, 1] → RGB in [0, 1].
fn turbo(t: f32) -> [f32; 3] {
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

/// The heatmap of one study as it is drawn: on the display scale, limited to the head, with the
/// opacity its decision allows.
pub(crate) struct Overlay {
    /// Heat on the display scale (1.0 = reference level), NaN where the model did not look.
    heat: Array3<f32>,
    /// Head foreground of the source (the recipe's Otsu + hole-filling mask): colour stays inside.
    head: Array3<bool>,
    /// Opacity; `None` when nothing is coloured (flat map, or a negative study with the
    /// overlay off).
    alpha: Option<f32>,
    colour_map: ColourMap,
    threshold: f32,
    /// Whether the scale comes from the model's reference level (absolute) or the study's peak.
    calibrated: bool,
    /// The reported hotspot as a voxel index `[i, j, k]`.
    hotspot: Option<[usize; 3]>,
    /// Why nothing is coloured, when nothing is.
    off_reason: Option<&'static str>,
    /// Grey window of the source (every picture of the study uses the same).
    window: Window,
}

impl Overlay {
    /// The overlay of `heatmap` (map units, same grid as the source) for `finding`.
    pub fn new(source: &Assembled, heatmap: &Volume, finding: &Finding, options: &ReportOptions) -> Self {
        let o = &options.overlay;
        let (alpha, off_reason) = match (finding.peak, finding.suspected, o.negative) {
            (None, _, _) => (None, Some("NO OVERLAY: HEATMAP FLAT")),
            (Some(_), true, _) | (Some(_), false, NegativeOverlay::Same) => (Some(o.alpha), None),
            (Some(_), false, NegativeOverlay::Faint) => (Some(o.alpha / 3.0), None),
            (Some(_), false, NegativeOverlay::Off) => (None, Some("NO OVERLAY: NOT SUSPECTED")),
        };
        let shape = source.volume.shape();
        let hotspot = finding.hotspot().and_then(|h| {
            let v = source.volume.world_to_voxel(h.lps);
            let idx: [usize; 3] = std::array::from_fn(|a| v[a].round().max(0.0) as usize);
            (0..3).all(|a| idx[a] < shape[a]).then_some([idx[0], idx[1], h.slice])
        });
        Self {
            heat: crate::explain::scale_heat(heatmap.data(), options.heat_reference),
            head: source.volume.foreground_mask(),
            alpha,
            colour_map: o.colour_map,
            threshold: o.threshold,
            calibrated: options.heat_reference.is_some(),
            hotspot,
            off_reason,
            window: Window::robust(source.volume.data(), options.window_percentiles),
        }
    }

    /// The source's grey window.
    pub fn window(&self) -> Window {
        self.window
    }

    /// Whether voxel `[i, j, k]` is coloured: the overlay is on, and the voxel lies inside the
    /// head, where the model looked, above the threshold.
    fn coloured(&self, idx: [usize; 3]) -> bool {
        let h = self.heat[idx];
        self.alpha.is_some() && self.head[idx] && h.is_finite() && h > self.threshold
    }

    /// This overlay on another grid (nearest voxel through LPS mm), e.g. a reformatted plane of
    /// the key image; `from` is the grid it lies on. Outside that grid nothing is coloured. The
    /// hotspot is placed from its exact position `hotspot_lps` when it lies on the new grid.
    pub fn reformat(&self, from: &Affine, grid: &Grid, hotspot_lps: Option<[f64; 3]>) -> Self {
        let to_source = from.inverse() * grid.affine.matrix();
        let shape = self.heat.shape();
        let source_voxel = |i: usize, j: usize, k: usize| -> Option<[usize; 3]> {
            let p = to_source * Vector4::new(i as f64, j as f64, k as f64, 1.0);
            let idx: [f64; 3] = std::array::from_fn(|a| p[a].round());
            (0..3)
                .all(|a| idx[a] >= 0.0 && (idx[a] as usize) < shape[a])
                .then(|| idx.map(|v| v as usize))
        };
        let mut heat = Array3::from_elem(grid.shape, f32::NAN);
        let mut head = Array3::from_elem(grid.shape, false);
        for ((i, j, k), h) in heat.indexed_iter_mut() {
            if let Some(s) = source_voxel(i, j, k) {
                *h = self.heat[s];
                head[[i, j, k]] = self.head[s];
            }
        }
        let hotspot = self.hotspot.and(hotspot_lps).and_then(|lps| {
            let v = grid.affine.world_to_voxel(lps);
            let idx: [f64; 3] = std::array::from_fn(|a| v[a].round());
            (0..3)
                .all(|a| idx[a] >= 0.0 && (idx[a] as usize) < grid.shape[a])
                .then(|| idx.map(|v| v as usize))
        });
        Self {
            heat,
            head,
            hotspot,
            ..*self
        }
    }

    /// The hotspot's region: coloured voxels at or above half the hotspot's own heat,
    /// face-connected to it. Half maximum, not the colour threshold alone, because a coarse map
    /// (16 mm feature cells) colours one blob across a lobe, whose extent and centroid say
    /// nothing about where the peak is; the half-maximum region stays centred on it. `None` when
    /// there is no hotspot or it is not coloured (below the threshold).
    pub fn hotspot_region(&self) -> Option<Array3<bool>> {
        let hotspot = self.hotspot.filter(|&h| self.coloured(h))?;
        let level = self.heat[hotspot] / 2.0;
        let inside = Array3::from_shape_fn(self.heat.raw_dim(), |(i, j, k)| {
            self.coloured([i, j, k]) && self.heat[[i, j, k]] >= level
        });
        Some(crate::volume::connected_region(&inside, [hotspot]))
    }

    /// Colour of a display-scale heat value at or above the threshold.
    fn colour(&self, heat: f32) -> [f32; 3] {
        self.colour_map
            .colour((heat - self.threshold) / (1.0 - self.threshold).max(f32::EPSILON))
    }

    /// The legend band's content for this study.
    pub fn legend(&self, finding: &Finding, algorithm: Option<&Algorithm>) -> Legend {
        let mut lines = vec![format!(
            "{} P={:.1}% T={:.0}%",
            label(finding.suspected).to_uppercase(),
            finding.probability * 100.0,
            finding.threshold * 100.0
        )];
        let bar = self.alpha.map(|_| Bar {
            colour_map: self.colour_map,
            threshold: self.threshold,
        });
        let mut after = Vec::new();
        match self.off_reason {
            Some(reason) => lines.push(reason.into()),
            None => {
                lines.push(format!(
                    "MODEL ATTENTION, {} SCALE:",
                    if self.calibrated { "ABSOLUTE" } else { "RELATIVE" }
                ));
                after.push(if self.calibrated {
                    "1.0 = MEDIAN PEAK OF TRAINING LESIONS".to_owned()
                } else {
                    "UNCALIBRATED: 1.0 = PEAK OF THIS STUDY".to_owned()
                });
                after.push(format!(
                    "{}NO COLOUR BELOW {:.2}",
                    if self.hotspot.is_some() { "+ = HOTSPOT, " } else { "" },
                    self.threshold,
                ));
            }
        }
        if let Some(a) = algorithm {
            after.push(truncate_chars(&format!("{} {}", a.name, a.version), LEGEND_CHARS));
        }
        after.push("AI RESULT - UNVERIFIED".into());
        Legend { lines, bar, after }
    }
}

/// Renders slice `k`: grey source in the overlay's window; colour where the model looked,
/// inside the head, above the threshold; a crosshair on the hotspot when it lies on this slice.
/// Pixels are RGB, row-major.
pub(crate) fn render_slice(source: &Array3<f32>, overlay: &Overlay, k: usize) -> RgbImage {
    let mut img = paint_slice(source, overlay, k);
    if let Some([i, j, hk]) = overlay.hotspot
        && hk == k
    {
        draw_crosshair(&mut img, i as f64 + 0.5, j as f64 + 0.5, 1.0);
    }
    img
}

/// [`render_slice`] without the crosshair (for pictures that draw it after resizing).
fn paint_slice(source: &Array3<f32>, overlay: &Overlay, k: usize) -> RgbImage {
    let window = overlay.window;
    let [n_i, n_j] = [source.shape()[0], source.shape()[1]];
    let mut img = RgbImage::new(n_i as u32, n_j as u32);
    for r in 0..n_j {
        for c in 0..n_i {
            let g = f32::from(window.grey(source[[c, r, k]]));
            let px = match overlay.alpha {
                Some(a) if overlay.coloured([c, r, k]) => {
                    let col = overlay.colour(overlay.heat[[c, r, k]]);
                    col.map(|x| ((1.0 - a) * g + a * x * 255.0).round().clamp(0.0, 255.0) as u8)
                }
                _ => [g as u8; 3],
            };
            img.put_pixel(c as u32, r as u32, Rgb(px));
        }
    }
    img
}

/// A white crosshair centred on (x, y) pixels (fractional, image coordinates): four arms with
/// a gap in the middle so the hotspot itself stays visible. `unit` = pixels per source voxel.
fn draw_crosshair(img: &mut RgbImage, x: f64, y: f64, unit: f64) {
    let (gap, arm) = ((3.0 * unit).max(3.0), (9.0 * unit).max(8.0));
    let (cx, cy) = (x.floor() as i64, y.floor() as i64);
    let mut put = |px: i64, py: i64| {
        if px >= 0 && py >= 0 && (px as u32) < img.width() && (py as u32) < img.height() {
            img.put_pixel(px as u32, py as u32, Rgb([255, 255, 255]));
        }
    };
    for d in gap.round() as i64..=arm.round() as i64 {
        put(cx - d, cy);
        put(cx + d, cy);
        put(cx, cy - d);
        put(cx, cy + d);
    }
}

/// Characters per legend line at most: the band is at least this wide.
const LEGEND_CHARS: usize = 40;

fn truncate_chars(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// The colour bar: threshold → 1.0 of the display scale.
pub(crate) struct Bar {
    colour_map: ColourMap,
    threshold: f32,
}

/// What the band below the image says: text lines, the colour bar (when colour is shown) with
/// its ticks, then more lines.
pub(crate) struct Legend {
    lines: Vec<String>,
    bar: Option<Bar>,
    after: Vec<String>,
}

impl Legend {
    /// The legend with `line` added after its first (the result) line.
    pub fn with_line(mut self, line: String) -> Self {
        self.lines.insert(self.lines.len().min(1), line);
        self
    }

    /// Height of the band in pixels at font `scale`.
    fn height(&self, scale: u32) -> u32 {
        let text = (self.lines.len() + self.after.len()) as u32 * 9 * scale;
        let bar = if self.bar.is_some() { 20 * scale } else { 0 };
        text + bar + 4 * scale
    }

    /// Draws the band into `img` from row `y0`, `x0` pixels from the left, `width` wide.
    fn draw(&self, img: &mut RgbImage, x0: u32, y0: u32, width: u32, scale: u32) {
        let pad = 2 * scale;
        let mut y = y0 + pad;
        for line in &self.lines {
            draw_text(img, line, x0 + pad, y, scale, [255, 255, 255]);
            y += 9 * scale;
        }
        if let Some(bar) = &self.bar {
            let bar_w = (width.saturating_sub(2 * pad + 12 * scale)).min(LEGEND_CHARS as u32 * 6 * scale);
            let bar_x = x0 + pad + 6 * scale;
            let bar_h = 6 * scale;
            for x in 0..bar_w {
                let t = x as f32 / (bar_w.max(2) - 1) as f32;
                let px = bar.colour_map.colour(t).map(|v| (v * 255.0).round() as u8);
                for dy in 0..bar_h {
                    put(img, bar_x + x, y + dy, px);
                }
            }
            // Ticks at the threshold, half-way and 1.0, with their values below.
            let ticks = [bar.threshold, (bar.threshold + 1.0) / 2.0, 1.0];
            for (n, value) in ticks.iter().enumerate() {
                let x = bar_x + (n as u32 * (bar_w.max(2) - 1)) / 2;
                for dy in 0..2 * scale {
                    put(img, x, y + bar_h + dy, [255, 255, 255]);
                }
                let text = if n == 2 {
                    "1.0+".to_owned()
                } else {
                    format!("{value:.2}")
                };
                let text_w = text.chars().count() as u32 * 6 * scale;
                let tx = x
                    .saturating_sub(text_w / 2)
                    .min((x0 + width).saturating_sub(text_w + pad))
                    .max(x0);
                draw_text(img, &text, tx, y + bar_h + 3 * scale, scale, [255, 255, 255]);
            }
            y += 20 * scale;
        }
        for line in &self.after {
            draw_text(img, line, x0 + pad, y, scale, [255, 255, 255]);
            y += 9 * scale;
        }
    }
}

fn put(img: &mut RgbImage, x: u32, y: u32, px: [u8; 3]) {
    if x < img.width() && y < img.height() {
        img.put_pixel(x, y, Rgb(px));
    }
}

/// Orientation letters at the four edges of an image: the patient direction each edge faces.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Letters {
    left: char,
    right: char,
    top: char,
    bottom: char,
}

impl Letters {
    /// (left, right, top, bottom).
    #[cfg(test)]
    pub fn as_tuple(&self) -> (char, char, char, char) {
        (self.left, self.right, self.top, self.bottom)
    }

    /// From the volume's row (i) and column (j) directions in LPS; the dominant axis of each.
    pub fn of(volume: &Volume) -> Self {
        let [row, col, _] = volume.directions();
        let letter = |d: [f64; 3]| {
            let a = (0..3).max_by(|&a, &b| d[a].abs().total_cmp(&d[b].abs())).unwrap_or(0);
            let positive = d[a] >= 0.0;
            match (a, positive) {
                (0, true) => 'L',
                (0, false) => 'R',
                (1, true) => 'P',
                (1, false) => 'A',
                (_, true) => 'S',
                (_, false) => 'I',
            }
        };
        let neg = |d: [f64; 3]| d.map(|x| -x);
        Self {
            left: letter(neg(row)),
            right: letter(row),
            top: letter(neg(col)),
            bottom: letter(col),
        }
    }
}

/// Where the image sits in a frame: margins for the orientation letters on every side, the
/// legend band below, the frame at least as wide as a legend line.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Layout {
    /// Font scale (pixels per font dot).
    pub scale: u32,
    /// Image offset in the frame (columns, rows).
    pub left: u32,
    pub top: u32,
    /// Image size.
    pub image: (u32, u32),
    /// Frame size.
    pub width: u32,
    pub height: u32,
}

impl Layout {
    /// The layout of an `image`-sized picture with `legend` below.
    pub fn new(image: (u32, u32), legend: &Legend) -> Self {
        let scale = if image.0 >= 384 { 2 } else { 1 };
        let margin = 10 * scale;
        let min_w = LEGEND_CHARS as u32 * 6 * scale + 4 * scale;
        let width = (image.0 + 2 * margin).max(min_w);
        let left = (width - image.0) / 2;
        let height = margin + image.1 + margin + legend.height(scale);
        Self {
            scale,
            left,
            top: margin,
            image,
            width,
            height,
        }
    }
}

impl Layout {
    /// A montage panel: `image` inside margins only wide enough for its letters and caption.
    pub fn panel(image: (u32, u32), scale: u32) -> Self {
        let margin = 10 * scale;
        Self {
            scale,
            left: margin,
            top: margin,
            image,
            width: image.0 + 2 * margin,
            height: image.1 + 2 * margin,
        }
    }
}

/// Panels side by side (tops aligned, 4 pixels apart) above one legend band across them all.
pub(crate) fn montage(panels: &[RgbImage], legend: &Legend, scale: u32) -> RgbImage {
    let gap = 4;
    let width = panels.iter().map(RgbImage::width).sum::<u32>() + gap * panels.len().saturating_sub(1) as u32;
    let width = width.max(LEGEND_CHARS as u32 * 6 * scale + 4 * scale);
    let height = panels.iter().map(RgbImage::height).max().unwrap_or(0);
    let mut out = RgbImage::new(width, height + legend.height(scale));
    let mut x = 0;
    for panel in panels {
        image::imageops::replace(&mut out, panel, i64::from(x), 0);
        x += panel.width() + gap;
    }
    legend.draw(&mut out, 0, height, width, scale);
    out
}

/// The frame: black margins with the orientation letters, `image` at its place, the legend
/// band below. `caption` (e.g. the slice number) goes in the top-left margin.
pub(crate) fn compose(
    image: &RgbImage,
    layout: &Layout,
    letters: &Letters,
    legend: Option<&Legend>,
    caption: Option<&str>,
) -> RgbImage {
    let s = layout.scale;
    let mut frame = RgbImage::new(layout.width, layout.height);
    image::imageops::replace(&mut frame, image, i64::from(layout.left), i64::from(layout.top));
    let (iw, ih) = layout.image;
    let white = [255, 255, 255];
    let half_glyph = (3 * s, 4 * s);
    let mid_x = layout.left + iw / 2;
    let mid_y = layout.top + ih / 2;
    let margin = 10 * s;
    draw_text(
        &mut frame,
        &letters.top.to_string(),
        mid_x.saturating_sub(half_glyph.0),
        (margin - 7 * s) / 2,
        s,
        white,
    );
    draw_text(
        &mut frame,
        &letters.bottom.to_string(),
        mid_x.saturating_sub(half_glyph.0),
        layout.top + ih + (margin - 7 * s) / 2,
        s,
        white,
    );
    draw_text(
        &mut frame,
        &letters.left.to_string(),
        layout.left.saturating_sub(margin / 2 + half_glyph.0),
        mid_y.saturating_sub(half_glyph.1),
        s,
        white,
    );
    draw_text(
        &mut frame,
        &letters.right.to_string(),
        layout.left + iw + margin / 2 - half_glyph.0 + s,
        mid_y.saturating_sub(half_glyph.1),
        s,
        white,
    );
    if let Some(caption) = caption {
        draw_text(&mut frame, caption, 2 * s, (margin - 7 * s) / 2, s, white);
    }
    if let Some(legend) = legend {
        legend.draw(&mut frame, 0, layout.top + ih + margin, layout.width, s);
    }
    frame
}

/// Renders every slice of the study as an SC frame (image + margins + band), and the layout.
pub(crate) fn frames(source: &Assembled, overlay: &Overlay, legend: &Legend) -> (Vec<RgbImage>, Layout) {
    use rayon::prelude::*;
    let data = source.volume.data();
    let [n_i, n_j, depth] = source.volume.shape();
    let layout = Layout::new((n_i as u32, n_j as u32), legend);
    let letters = Letters::of(&source.volume);
    let frames = (0..depth)
        .into_par_iter()
        .map(|k| compose(&render_slice(data, overlay, k), &layout, &letters, Some(legend), None))
        .collect();
    (frames, layout)
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
/// characters as `?`. Hand-written so that labels burnt into DICOM frames need no font file;
/// the trainer's figures use it too.
pub fn glyph(ch: char) -> [u8; 7] {
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
/// when no hotspot is reported), drawn as the SC frames are, each panel resampled to square
/// millimetres and at least 192 pixels high with its orientation letters and slice number in
/// margins, and one legend band below the whole montage.
pub fn preview_png(
    source: &Assembled,
    heatmap: &Volume,
    finding: &Finding,
    options: &ReportOptions,
) -> Result<RgbImage, ReportError> {
    super::check_inputs(source, finding)?;
    super::check_options(&source.meta.series_uid, options)?;
    super::check_heatmap(source, heatmap)?;
    Ok(preview_over(
        source,
        &Overlay::new(source, heatmap, finding, options),
        finding,
    ))
}

/// [`preview_png`] with the overlay already built (and the inputs checked), so that
/// `write_outputs` builds it once for every picture.
pub(crate) fn preview_over(source: &Assembled, overlay: &Overlay, finding: &Finding) -> RgbImage {
    let data = source.volume.data();
    let depth = data.shape()[2];
    let legend = overlay.legend(finding, None);
    // The crosshair is drawn after resampling, at the panel's resolution.
    let hotspot = overlay.hotspot;
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
    let letters = Letters::of(&source.volume);
    let panel_layout = Layout::panel((pw, ph), if pw >= 384 { 2 } else { 1 });
    let panels: Vec<RgbImage> = ks
        .iter()
        .map(|&k| {
            let slice = paint_slice(data, overlay, k);
            let mut panel = image::imageops::resize(&slice, pw, ph, image::imageops::FilterType::Triangle);
            if let Some([i, j, hk]) = hotspot
                && hk == k
            {
                let (ux, uy) = (
                    f64::from(pw) / data.shape()[0] as f64,
                    f64::from(ph) / data.shape()[1] as f64,
                );
                draw_crosshair(&mut panel, (i as f64 + 0.5) * ux, (j as f64 + 0.5) * uy, ux.min(uy));
            }
            compose(&panel, &panel_layout, &letters, None, Some(&format!("SLICE {}", k + 1)))
        })
        .collect();
    montage(&panels, &legend, panel_layout.scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative luminance (Rec. 709 weights) of a colour.
    fn luminance(c: [f32; 3]) -> f32 {
        0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]
    }

    #[test]
    fn colour_maps_are_coloured_and_bounded_and_the_default_is_ordered() {
        for map in [ColourMap::Inferno, ColourMap::Hot, ColourMap::Turbo] {
            for n in 0..=100 {
                let c = map.colour(n as f32 / 100.0);
                assert!(c.iter().all(|v| (0.0..=1.0).contains(v)));
                let spread = c.iter().fold(0f32, |m, v| m.max(*v)) - c.iter().fold(1f32, |m, v| m.min(*v));
                assert!(spread > 0.05, "{map:?} t={n}%: {c:?} is nearly grey");
            }
        }
        // Perceptually ordered: brightness rises with the value (turbo's does not).
        for map in [ColourMap::Inferno, ColourMap::Hot] {
            let l: Vec<f32> = (0..=50).map(|n| luminance(map.colour(n as f32 / 50.0))).collect();
            assert!(l.windows(2).all(|w| w[1] > w[0]), "{map:?}: {l:?}");
        }
        let l: Vec<f32> = (0..=50)
            .map(|n| luminance(ColourMap::Turbo.colour(n as f32 / 50.0)))
            .collect();
        assert!(l.windows(2).any(|w| w[1] < w[0]), "turbo is the non-monotone option");
        assert_eq!(ColourMap::default(), ColourMap::Inferno);
        // Inferno's published end points.
        let end = inferno(1.0);
        assert!((end[0] - 0.988).abs() < 0.02 && (end[1] - 0.998).abs() < 0.02 && (end[2] - 0.645).abs() < 0.03);
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

    fn overlay(heat: Array3<f32>, head: Array3<bool>, alpha: Option<f32>) -> Overlay {
        Overlay {
            heat,
            head,
            alpha,
            colour_map: ColourMap::Inferno,
            threshold: 0.5,
            calibrated: true,
            hotspot: None,
            off_reason: None,
            window: Window { lo: 0.0, hi: 100.0 },
        }
    }

    #[test]
    fn colour_only_above_threshold_inside_the_head_where_seen() {
        let source = Array3::<f32>::from_elem((5, 3, 1), 50.0);
        let mut heat = Array3::<f32>::zeros((5, 3, 1));
        heat[[2, 1, 0]] = 1.0; // hot, inside the head
        heat[[1, 1, 0]] = 0.4; // below the threshold
        heat[[3, 1, 0]] = 1.0; // hot, but outside the head
        heat[[4, 1, 0]] = f32::NAN; // not seen
        let mut head = Array3::from_elem((5, 3, 1), true);
        head[[3, 1, 0]] = false;
        let grey = |p: [u8; 3]| p[0] == p[1] && p[1] == p[2];
        let img = render_slice(&source, &overlay(heat.clone(), head.clone(), Some(0.6)), 0);
        assert!(!grey(img.get_pixel(2, 1).0), "hot inside the head is coloured");
        for x in [1, 3, 4] {
            assert!(grey(img.get_pixel(x, 1).0), "pixel {x} must stay grey");
        }
        assert_eq!(img.dimensions(), (5, 3));
        let off = render_slice(&source, &overlay(heat, head, None), 0);
        assert!(off.pixels().all(|p| grey(p.0)), "overlay off: no colour at all");
    }

    /// The frame's image region is the rendered slice, pixel for pixel: letters and legend are
    /// only ever drawn in the margins and the band.
    #[test]
    fn letters_and_legend_never_touch_the_image() {
        let mut slice = RgbImage::new(60, 50);
        for (x, y, p) in slice.enumerate_pixels_mut() {
            *p = Rgb([(x * 3) as u8, (y * 5) as u8, 77]);
        }
        let legend = Legend {
            lines: vec!["FCD TYPE II SUSPECTED P=84.6% T=50%".into()],
            bar: Some(Bar {
                colour_map: ColourMap::Inferno,
                threshold: 0.5,
            }),
            after: vec!["A VERY LONG LEGEND LINE THAT DOES NOT FIT IN SIXTY PIXELS".into()],
        };
        let layout = Layout::new((60, 50), &legend);
        let letters = Letters {
            left: 'R',
            right: 'L',
            top: 'A',
            bottom: 'P',
        };
        let frame = compose(&slice, &layout, &letters, Some(&legend), Some("SLICE 1"));
        assert_eq!((frame.width(), frame.height()), (layout.width, layout.height));
        for (x, y, p) in slice.enumerate_pixels() {
            assert_eq!(frame.get_pixel(x + layout.left, y + layout.top), p, "({x}, {y})");
        }
        // Something was written outside: the letters and the legend.
        let outside = frame
            .enumerate_pixels()
            .filter(|(x, y, p)| {
                let inside = (layout.left..layout.left + 60).contains(x) && (layout.top..layout.top + 50).contains(y);
                !inside && p.0 != [0, 0, 0]
            })
            .count();
        assert!(outside > 200, "{outside} legend pixels");
        // The left margin holds the R, the right margin the L (white pixels on either side).
        let white_in = |x0: u32, x1: u32| {
            (x0..x1).any(|x| (layout.top..layout.top + 50).any(|y| frame.get_pixel(x, y).0 == [255, 255, 255]))
        };
        assert!(white_in(0, layout.left) && white_in(layout.left + 60, layout.width));
    }

    #[test]
    fn letters_follow_the_patient_directions() {
        use crate::volume::{Plane, acquisition_grid};
        let axial = Volume::filled(
            &acquisition_grid(Plane::Axial, [1.0; 3], [10.0; 3], [0.0; 3]).unwrap(),
            0.0,
        )
        .unwrap();
        let l = Letters::of(&axial);
        // DICOM axial: rows run to the patient's left, columns to posterior.
        assert_eq!((l.left, l.right, l.top, l.bottom), ('R', 'L', 'A', 'P'));
        let sagittal = Volume::filled(
            &acquisition_grid(Plane::Sagittal, [1.0; 3], [10.0; 3], [0.0; 3]).unwrap(),
            0.0,
        )
        .unwrap();
        let l = Letters::of(&sagittal);
        assert_eq!((l.top, l.bottom), ('S', 'I'));
        assert!(matches!((l.left, l.right), ('A', 'P') | ('P', 'A')));
    }

    /// A reformatted overlay keeps heat and hotspot at their patient position, and nothing is
    /// coloured where the source does not reach.
    #[test]
    fn reformat_keeps_heat_and_hotspot_at_their_position() {
        use crate::volume::{Plane, acquisition_grid};
        let source = acquisition_grid(Plane::Oblique, [1.0, 1.0, 1.5], [40.0; 3], [5.0, -3.0, 10.0]).unwrap();
        let blob = [12usize, 25, 9];
        let mut heat = Array3::<f32>::zeros(source.shape);
        heat[blob] = 1.0;
        let mut o = overlay(heat, Array3::from_elem(source.shape, true), Some(0.6));
        o.hotspot = Some(blob);
        let lps = source.voxel_to_world(blob.map(|v| v as f64));
        // An axial plane through the blob at 0.5 mm, reaching 25 mm out: past the source's edge.
        let identity = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        let plane = Grid {
            shape: [101, 101, 1],
            affine: Affine::from_parts([0.5; 3], identity, [lps[0] - 25.0, lps[1] - 25.0, lps[2]]).unwrap(),
        };
        let r = o.reformat(&source.affine, &plane, Some(lps));
        assert_eq!(r.hotspot, Some([50, 50, 0]));
        let hot: Vec<[f64; 3]> = r
            .heat
            .indexed_iter()
            .filter(|(_, h)| **h == 1.0)
            .map(|((i, j, k), _)| plane.voxel_to_world([i as f64, j as f64, k as f64]))
            .collect();
        assert!(!hot.is_empty(), "the blob shows on the plane through it");
        // Nearest voxel: each hot pixel lies in the blob's voxel (half its diagonal away at most).
        let reach = 0.5 * (1.0f64 + 1.0 + 1.5 * 1.5).sqrt() + 1e-9;
        for p in &hot {
            let d = (0..3).map(|a| (p[a] - lps[a]).powi(2)).sum::<f64>().sqrt();
            assert!(d <= reach, "hot pixel {d:.2} mm from the blob");
        }
        let outside = r
            .heat
            .iter()
            .zip(&r.head)
            .filter(|(h, inside)| h.is_nan() && !**inside)
            .count();
        assert!(outside > 100, "beyond the source: no heat, no head ({outside} pixels)");
        assert!(r.heat.iter().zip(&r.head).all(|(h, inside)| h.is_finite() || !*inside));
    }

    #[test]
    fn the_legend_says_what_the_scale_means() {
        let finding = Finding {
            probability: 0.8461,
            probability_uncalibrated: None,
            threshold: 0.5,
            suspected: true,
            fold_probabilities: vec![0.8461],
            peak: Some(super::super::Hotspot {
                lps: [0.0; 3],
                slice: 0,
            }),
        };
        let text = |l: &Legend| l.lines.iter().chain(&l.after).cloned().collect::<Vec<_>>().join("\n");
        let zeros = || Array3::<f32>::zeros((2, 2, 1));
        let mut o = overlay(zeros(), Array3::from_elem((2, 2, 1), true), Some(0.6));
        let legend = o.legend(&finding, None);
        let t = text(&legend);
        assert!(legend.bar.is_some());
        for needle in [
            "P=84.6% T=50%",
            "ABSOLUTE SCALE",
            "1.0 = MEDIAN PEAK OF TRAINING LESIONS",
            "BELOW 0.50",
        ] {
            assert!(t.contains(needle), "{needle}: {t}");
        }
        assert!(!t.contains("UNCALIBRATED"));
        o.calibrated = false;
        let t = text(&o.legend(&finding, None));
        assert!(t.contains("RELATIVE SCALE") && t.contains("UNCALIBRATED"), "{t}");
        o.alpha = None;
        o.off_reason = Some("NO OVERLAY: NOT SUSPECTED");
        let legend = o.legend(&finding, None);
        assert!(legend.bar.is_none(), "no colour, no colour bar");
        assert!(text(&legend).contains("NO OVERLAY: NOT SUSPECTED"));
        assert!(text(&legend).lines().all(|l| l.chars().count() <= LEGEND_CHARS));
    }

    #[test]
    fn text_is_drawn_and_clipped() {
        let mut img = RgbImage::new(20, 5);
        draw_text(&mut img, "P=0.9", 0, 0, 1, [255, 255, 255]);
        assert!(img.pixels().any(|p| p.0 == [255, 255, 255]));
    }
}
