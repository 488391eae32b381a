//! Pixel data → values: the supported pixel formats, decoding one frame ([`decode_frame`]) or
//! a located frame straight into a slice buffer, and whole slices → `[i, j, k]` voxels.

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_pixeldata::{PixelDecoder, PixelRepresentation};
use ndarray::{Array2, Array3};
use rayon::prelude::*;

use super::plan::{Frame, frame_rescale, text};
use super::{AssembleError, Blame, Source};

/// Whole slices (slice-major, each row-major: `slices[(k * rows + r) * cols + c]`) → voxels
/// `[i = c, j = r, k]` in standard (C) layout, in parallel over blocks of columns.
///
/// A plain loop is slow here: slice and column strides are multiples of 4 KiB, so every line
/// it keeps open maps to the same cache set. Instead each (column block, row) gathers its
/// `TILE × slices` values into a small local buffer (one full cache line read per slice) and
/// writes them out as `TILE` contiguous runs.
pub(super) fn slices_to_ijk(
    slices: Vec<f32>,
    [cols, rows, n_slices]: [usize; 3],
) -> Result<Array3<f32>, ndarray::ShapeError> {
    const TILE: usize = 16;
    let mut out = vec![0f32; slices.len()];
    let per_column = rows * n_slices;
    out.par_chunks_mut(TILE * per_column)
        .enumerate()
        .for_each(|(tile, block)| {
            let c0 = tile * TILE;
            let width = block.len() / per_column;
            let mut local = vec![0f32; TILE * n_slices];
            for r in 0..rows {
                for k in 0..n_slices {
                    let start = (k * rows + r) * cols + c0;
                    for (dc, &v) in slices[start..start + width].iter().enumerate() {
                        local[dc * n_slices + k] = v;
                    }
                }
                for dc in 0..width {
                    let at = (dc * rows + r) * n_slices;
                    block[at..at + n_slices].copy_from_slice(&local[dc * n_slices..(dc + 1) * n_slices]);
                }
            }
        });
    drop(slices);
    Array3::from_shape_vec((cols, rows, n_slices), out)
}

/// How stored samples sit in their bits: the formats the assembler turns into one scalar per
/// voxel (greyscale, 8 or 16 bits allocated, any stored width, signed or unsigned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PixelFormat {
    allocated: u16,
    stored: u16,
    high_bit: u16,
    signed: bool,
}

impl PixelFormat {
    /// Reads and checks the Image Pixel attributes; the error is (attribute, value, rule).
    pub(super) fn of(obj: &InMemDicomObject) -> Result<Self, (&'static str, String, &'static str)> {
        let samples = int(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
        if samples != 1 {
            return Err((
                "Samples per Pixel (0028,0002)",
                samples.to_string(),
                "only greyscale (1 sample) images form volumes",
            ));
        }
        if let Some(pi) = text(obj, tags::PHOTOMETRIC_INTERPRETATION)
            && pi != "MONOCHROME1"
            && pi != "MONOCHROME2"
        {
            return Err((
                "Photometric Interpretation (0028,0004)",
                pi,
                "only MONOCHROME1 or MONOCHROME2 images form volumes",
            ));
        }
        let allocated = int(obj, tags::BITS_ALLOCATED).unwrap_or(0);
        let stored = int(obj, tags::BITS_STORED).unwrap_or(allocated);
        let high_bit = int(obj, tags::HIGH_BIT).unwrap_or(stored - 1);
        if !matches!(allocated, 8 | 16)
            || !(1..=allocated).contains(&stored)
            || !(stored - 1..allocated).contains(&high_bit)
        {
            return Err((
                "Bits Allocated/Bits Stored/High Bit (0028,0100-0102)",
                format!("{allocated}/{stored}/{high_bit}"),
                "unsupported bit depth: 8 or 16 bits allocated, 1..=allocated stored, stored - 1 <= high bit < allocated",
            ));
        }
        let signed = match int(obj, tags::PIXEL_REPRESENTATION).unwrap_or(0) {
            0 => false,
            1 => true,
            other => {
                return Err((
                    "Pixel Representation (0028,0103)",
                    other.to_string(),
                    "must be 0 (unsigned) or 1 (signed)",
                ));
            }
        };
        Ok(Self {
            allocated: allocated as u16,
            stored: stored as u16,
            high_bit: high_bit as u16,
            signed,
        })
    }

    /// Stored samples (little-endian words of `allocated` bits) → `slope * value + intercept`.
    /// Bits outside the stored ones (overlays, padding) are dropped; signed values are
    /// sign-extended from bit `high_bit`.
    fn convert(&self, bytes: &[u8], slope: f64, intercept: f64, out: &mut [f32]) {
        let shift = u32::from(self.high_bit + 1 - self.stored);
        let stored = u32::from(self.stored);
        let mask = if stored >= 32 { u32::MAX } else { (1u32 << stored) - 1 };
        let sign = 1u32 << (stored - 1);
        let signed = self.signed;
        let value = move |raw: u32| -> i32 {
            let v = (raw >> shift) & mask;
            if signed && v & sign != 0 {
                v as i32 - (1i32 << stored)
            } else {
                v as i32
            }
        };
        let identity = slope == 1.0 && intercept == 0.0;
        let scale = move |v: i32| -> f32 {
            if identity {
                v as f32
            } else {
                (f64::from(v) * slope + intercept) as f32
            }
        };
        if self.allocated == 8 {
            for (o, &b) in out.iter_mut().zip(bytes) {
                *o = scale(value(u32::from(b)));
            }
        } else {
            for (o, w) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = scale(value(u32::from(u16::from_le_bytes([w[0], w[1]]))));
            }
        }
    }

    fn bytes_per_sample(&self) -> usize {
        usize::from(self.allocated / 8)
    }
}

/// One frame of an instance, decoded (any transfer syntax dicom-pixeldata decodes, JPEG 2000
/// and JPEG-LS included) and rescaled with that frame's Rescale Slope and Intercept (Pixel
/// Value Transformation for Enhanced images), as `[row, column]` (voxel index space of one
/// slice: row r = j, column c = i).
///
/// This is the decode step of [`assemble_series`](super::assemble_series), usable on its own
/// (e.g. for single images, which cannot form a volume). `frame` is 0-based.
pub fn decode_frame(source: &Source, frame: u32) -> Result<Array2<f32>, AssembleError> {
    let obj = &source.object;
    let uid = text(obj, tags::SERIES_INSTANCE_UID).unwrap_or_else(|| "?".into());
    let blame = Blame::new(&uid, &source.label);
    let bad = |attribute, value, rule| blame.bad(attribute, value, rule);
    let (rows, cols) = matrix(obj, blame)?;
    let n_frames = int(obj, tags::NUMBER_OF_FRAMES).unwrap_or(1);
    if i64::from(frame) >= n_frames {
        return Err(bad(
            "Number of Frames (0028,0008)",
            n_frames.to_string(),
            "the requested frame does not exist",
        ));
    }
    let (slope, intercept) = frame_rescale(obj, frame).map_err(|v| {
        bad(
            "Rescale Slope/Intercept (0028,1053/0028,1052)",
            format!("{v:?}"),
            "slope must be finite and non-zero, intercept finite",
        )
    })?;
    let mut out = vec![0f32; rows * cols];
    decode_pixels(source, frame, &uid, [rows, cols], slope, intercept, &mut out)?;
    Array2::from_shape_vec((rows, cols), out).map_err(|_| bad("Rows/Columns", format!("{rows}×{cols}"), "shape"))
}

/// Decodes one located frame into `out` (row-major, `rows × columns` values).
pub(super) fn decode_into(
    s: &Source,
    f: &Frame,
    uid: &str,
    shape: [usize; 2],
    out: &mut [f32],
) -> Result<(), AssembleError> {
    let h = &f.header;
    decode_pixels(s, h.frame, uid, shape, h.slope, h.intercept, out)
}

fn decode_pixels(
    s: &Source,
    frame: u32,
    uid: &str,
    [rows, cols]: [usize; 2],
    slope: f64,
    intercept: f64,
    out: &mut [f32],
) -> Result<(), AssembleError> {
    let blame = Blame::new(uid, &s.label);
    let bad = |attribute, value, rule| blame.bad(attribute, value, rule);
    let format = PixelFormat::of(&s.object).map_err(|(attribute, value, rule)| bad(attribute, value, rule))?;
    if s.object.get(tags::PIXEL_DATA).is_none() {
        return Err(blame.missing("Pixel Data (7FE0,0010)"));
    }
    if s.object.meta().transfer_syntax().trim_end_matches('\0') == RLE_LOSSLESS {
        check_rle(s, frame, rows * cols, format.bytes_per_sample()).map_err(|why| {
            bad(
                "Pixel Data (7FE0,0010)",
                why,
                "an RLE Lossless frame needs one well-formed segment per byte of a sample (PS3.5 G)",
            )
        })?;
    }
    // The codecs behind dicom-pixeldata index by what a stream says and can panic on malformed
    // data (seen by fuzzing: JPEG and RLE); one bad file must fail its series, not the worker.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.object.decode_pixel_data_frame(frame)))
        .map_err(|_| {
            bad(
                "Pixel Data (7FE0,0010)",
                format!("frame {} stopped the decoder", frame + 1),
                "the encoded frame must be well formed for its transfer syntax",
            )
        })?
        .map_err(|source| AssembleError::Decode {
            series_uid: uid.to_string(),
            source_label: s.label.clone(),
            source: Box::new(source),
        })?;
    let bytes = decoded.data();
    let needed = rows * cols * format.bytes_per_sample();
    // A decoder may report its own layout: it must match the header the geometry came from.
    let layout = (
        decoded.rows() as usize,
        decoded.columns() as usize,
        decoded.bits_allocated(),
        decoded.samples_per_pixel(),
        decoded.pixel_representation() == PixelRepresentation::Signed,
    );
    if layout != (rows, cols, format.allocated, 1, format.signed) || bytes.len() < needed {
        return Err(bad(
            "Pixel Data (7FE0,0010)",
            format!(
                "{} bytes decoded as {}×{}, {} bits, {} sample(s)",
                bytes.len(),
                layout.0,
                layout.1,
                layout.2,
                layout.3
            ),
            "a frame must hold Rows × Columns samples of Bits Allocated bits",
        ));
    }
    format.convert(&bytes[..needed], slope, intercept, out);
    Ok(())
}

/// RLE Lossless.
const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";

/// Checks an RLE Lossless frame before dicom-pixeldata decodes it: its decoder trusts the
/// header (a segment count it allocates for, segments it indexes into) and panics on a segment
/// that decodes short. Hand-written because the fix belongs upstream; this walks the header and
/// each segment's PackBits runs (PS3.5 G.3.1) without decoding, until `pixels` bytes are
/// accounted for (later bytes, e.g. padding, are not read by the decoder either).
fn check_rle(s: &Source, frame: u32, pixels: usize, bytes_per_sample: usize) -> Result<(), String> {
    let fragments = s
        .object
        .get(tags::PIXEL_DATA)
        .and_then(|e| e.value().fragments())
        .ok_or_else(|| "not encapsulated".to_owned())?;
    let fragment = fragments
        .get(frame as usize)
        .ok_or_else(|| format!("no fragment for frame {}", frame + 1))?;
    check_rle_fragment(fragment, pixels, bytes_per_sample)
}

/// [`check_rle`] on one frame's fragment.
fn check_rle_fragment(fragment: &[u8], pixels: usize, bytes_per_sample: usize) -> Result<(), String> {
    let le32 = |at: usize| u32::from_le_bytes([fragment[at], fragment[at + 1], fragment[at + 2], fragment[at + 3]]);
    if fragment.len() < 64 {
        return Err(format!("a {}-byte fragment has no 64-byte RLE header", fragment.len()));
    }
    let segments = le32(0) as usize;
    if segments != bytes_per_sample {
        return Err(format!(
            "{segments} segment(s) for {bytes_per_sample} byte(s) per sample"
        ));
    }
    let mut bounds: Vec<usize> = (0..segments).map(|i| le32(4 + 4 * i) as usize).collect();
    bounds.push(fragment.len());
    for (i, w) in bounds.windows(2).enumerate() {
        if w[0] < 64 || w[0] > w[1] {
            return Err(format!(
                "segment {} starts at byte {}, outside 64..={}",
                i + 1,
                w[0],
                w[1]
            ));
        }
        // The next segment's offset may point past the fragment before its own window sees it.
        if w[1] > fragment.len() {
            return Err(format!(
                "segment {} ends at byte {}, past the {}-byte fragment",
                i + 1,
                w[1],
                fragment.len()
            ));
        }
        let decoded =
            packbits_length(&fragment[w[0]..w[1]], pixels).map_err(|why| format!("segment {}: {why}", i + 1))?;
        if decoded < pixels {
            return Err(format!("segment {} decodes to {decoded} bytes, {pixels} needed", i + 1));
        }
    }
    Ok(())
}

/// Bytes a PackBits segment decodes to, counted up to `enough`; an error for a run cut short.
fn packbits_length(segment: &[u8], enough: usize) -> Result<usize, String> {
    let (mut pos, mut out) = (0usize, 0usize);
    while pos < segment.len() && out < enough {
        let header = segment[pos] as i8;
        pos += 1;
        match header {
            0..=127 => {
                let run = header as usize + 1;
                if segment.len() - pos < run {
                    return Err(format!("a literal run of {run} bytes past the end at byte {pos}"));
                }
                pos += run;
                out += run;
            }
            -127..=-1 => {
                if pos >= segment.len() {
                    return Err("a repeat run without its byte".into());
                }
                pos += 1;
                out += (1 - isize::from(header)) as usize;
            }
            -128 => {}
        }
    }
    Ok(out)
}

/// Rows and Columns, present and within 1..=65535 (what a u16 can state; also bounds the
/// buffers a header can make us allocate per frame).
pub(super) fn matrix(obj: &InMemDicomObject, blame: Blame<'_>) -> Result<(usize, usize), AssembleError> {
    let rows = int(obj, tags::ROWS).ok_or_else(|| blame.missing("Rows (0028,0010)"))?;
    let cols = int(obj, tags::COLUMNS).ok_or_else(|| blame.missing("Columns (0028,0011)"))?;
    if !(1..=i64::from(u16::MAX)).contains(&rows) || !(1..=i64::from(u16::MAX)).contains(&cols) {
        return Err(blame.bad("Rows/Columns", format!("{rows}×{cols}"), "must be 1..=65535 each"));
    }
    Ok((rows as usize, cols as usize))
}

pub(super) fn int(obj: &InMemDicomObject, tag: Tag) -> Option<i64> {
    obj.get(tag).and_then(|e| e.to_int::<i64>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_to_ijk_matches_the_plain_loop() {
        // 37 columns: two full 16-column tiles and a partial one.
        let [cols, rows, n] = [37, 5, 3];
        let slices: Vec<f32> = (0..cols * rows * n).map(|v| v as f32).collect();
        let data = slices_to_ijk(slices.clone(), [cols, rows, n]).unwrap();
        assert!(data.is_standard_layout());
        for k in 0..n {
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(data[[c, r, k]], slices[(k * rows + r) * cols + c], "({c}, {r}, {k})");
                }
            }
        }
    }

    fn format(allocated: u16, stored: u16, high_bit: u16, signed: bool) -> PixelFormat {
        PixelFormat {
            allocated,
            stored,
            high_bit,
            signed,
        }
    }

    fn convert(f: PixelFormat, words: &[u16], slope: f64, intercept: f64) -> Vec<f32> {
        let bytes: Vec<u8> = if f.allocated == 8 {
            words.iter().map(|&w| w as u8).collect()
        } else {
            words.iter().flat_map(|w| w.to_le_bytes()).collect()
        };
        let mut out = vec![0.0; words.len()];
        f.convert(&bytes, slope, intercept, &mut out);
        out
    }

    #[test]
    fn samples_are_masked_sign_extended_and_rescaled() {
        // 12 bits stored: bits above are overlay/padding and must not leak into values.
        assert_eq!(
            convert(format(16, 12, 11, false), &[0xF00F, 0x0FFF], 1.0, 0.0),
            [15.0, 4095.0]
        );
        // Signed 12-bit, stored without sign extension (0x0FFF = −1) and with it (0xF800 = −2048).
        assert_eq!(
            convert(format(16, 12, 11, true), &[0x0FFF, 0xF800, 0x07FF], 1.0, 0.0),
            [-1.0, -2048.0, 2047.0]
        );
        // High bit 15 with 12 bits stored: the sample sits in the top bits.
        assert_eq!(
            convert(format(16, 12, 15, false), &[0x0010, 0xFFF0], 1.0, 0.0),
            [1.0, 4095.0]
        );
        assert_eq!(
            convert(format(8, 8, 7, true), &[0xFF, 0x80, 0x7F], 1.0, 0.0),
            [-1.0, -128.0, 127.0]
        );
        assert_eq!(convert(format(8, 8, 7, false), &[0xFF], 1.0, 0.0), [255.0]);
        assert_eq!(
            convert(format(16, 16, 15, true), &[0xFFFF, 10], 2.0, -1000.0),
            [-1002.0, -980.0]
        );
    }
}

#[cfg(test)]
mod rle_tests {
    use super::{check_rle_fragment, packbits_length};

    #[test]
    fn rle_headers_pointing_past_the_fragment_are_errors_not_panics() {
        // Two segments (16-bit samples), each a literal run of 4 bytes, after the 64-byte header.
        let mut fragment = vec![0u8; 64];
        fragment[0] = 2;
        fragment[4] = 64;
        fragment[8] = 69;
        fragment.extend_from_slice(&[3, 1, 2, 3, 4, 3, 5, 6, 7, 8]);
        assert_eq!(check_rle_fragment(&fragment, 4, 2), Ok(()));
        // The first segment's end (the second's offset) lies past the fragment (found by
        // fuzzing: the slice panicked before the next window saw the bad offset).
        let mut past = fragment.clone();
        past[8..12].copy_from_slice(&100_000u32.to_le_bytes());
        let why = check_rle_fragment(&past, 4, 2).unwrap_err();
        assert!(why.contains("100000"), "{why}");
        assert!(check_rle_fragment(&fragment[..60], 4, 2).is_err());
        assert!(
            check_rle_fragment(&fragment, 4, 1).is_err(),
            "segment count against the sample size"
        );
    }

    #[test]
    fn packbits_runs_are_counted_and_cut_runs_refused() {
        // literal 3, repeat 4, no-op, literal 1
        let ok = [2u8, 1, 2, 3, 0xFD, 9, 0x80, 0, 7];
        assert_eq!(packbits_length(&ok, 100), Ok(3 + 4 + 1));
        assert_eq!(packbits_length(&ok, 5), Ok(7), "stops once enough is counted");
        assert!(packbits_length(&[5, 1, 2], 100).is_err(), "literal run past the end");
        assert!(packbits_length(&[0xFE], 100).is_err(), "repeat run without its byte");
        assert_eq!(
            packbits_length(&[0, 1, 0], 1),
            Ok(1),
            "a trailing pad byte is never read"
        );
    }
}
