//! The key image: one Secondary Capture instance a radiologist opens first: axial, coronal and
//! sagittal views through the hotspot (through the middle of the volume when no hotspot is
//! reported), reformatted to square pixels in the patient's axes, drawn as the overlay frames
//! are (radiological convention: the patient's right on the viewer's left), with the result in
//! words in the band below.

use dicom_core::VR;
use dicom_dictionary_std::tags;
use image::RgbImage;

use super::dicom::{NewSeries, finish, put_seq, put_str, source_image_item, source_modality};
use super::enhanced::put_pixel_bytes;
use super::render::{Layout, Letters, Overlay, compose, montage, render_slice};
use super::sc::{SECONDARY_CAPTURE, ScImage, sc_image_base};
use super::{DicomFile, ReportError, ReportInputs, Timestamp, UidGenerator};
use crate::volume::{Affine, Grid, Interp, Volume};

/// Font scale of the key image: it is read on its own, full screen.
const SCALE: u32 = 2;
/// Each view is sampled so that its longer side has at least this many pixels…
const MIN_PIXELS: f64 = 256.0;
/// …and at most this many.
const MAX_PIXELS: f64 = 1024.0;

/// The key image of `inputs` with `heatmap` (map units on the source grid).
pub fn key_image(
    inputs: &ReportInputs<'_>,
    heatmap: &Volume,
    uids: &mut UidGenerator,
) -> Result<DicomFile, ReportError> {
    super::check_all(inputs, heatmap)?;
    let overlay = Overlay::new(inputs.source, heatmap, inputs.finding, inputs.options);
    key_image_over(inputs, &overlay, uids)
}

/// [`key_image`] with the overlay already built (and the inputs checked).
pub(crate) fn key_image_over(
    inputs: &ReportInputs<'_>,
    overlay: &Overlay,
    uids: &mut UidGenerator,
) -> Result<DicomFile, ReportError> {
    let (series_uid, sop_uid) = uids.new_single();
    let picture = orthogonal_views(inputs, overlay)?;
    let options = inputs.options;
    let timestamp = options.timestamp.clone().unwrap_or_else(Timestamp::now_utc);
    let finding = inputs.finding;
    let through = match finding.hotspot() {
        Some(h) => format!("through the hotspot (source slice {})", h.slice + 1),
        None => "through the middle of the volume (no hotspot reported)".into(),
    };
    let derivation = format!(
        "{} heatmap over axial, coronal and sagittal reformats of the source series {through}; \
         colour only inside the head and the model's field of view, above {:.2} of {}",
        inputs.algorithm.name,
        options.overlay.threshold,
        match options.heat_reference {
            Some(r) => format!("the model's reference level {r}"),
            None => "the study's peak (uncalibrated)".into(),
        },
    );
    let mut obj = sc_image_base(
        inputs,
        SECONDARY_CAPTURE,
        &sop_uid,
        &ScImage {
            series: NewSeries {
                uid: &series_uid,
                modality: &source_modality(inputs),
                number: options.series_number_key,
                description: &options.series_description_key,
            },
            instance: 1,
            size: [picture.height() as usize, picture.width() as usize],
            // Three planes in one picture: no single orientation.
            patient_orientation: "",
            derivation: &derivation,
        },
        &timestamp,
    )?;
    let slice = finding.hotspot().map_or(inputs.source.slices.len() / 2, |h| h.slice);
    put_seq(
        &mut obj,
        tags::SOURCE_IMAGE_SEQUENCE,
        vec![source_image_item(inputs, slice)],
    );
    // SC Image module.
    put_str(&mut obj, tags::DATE_OF_SECONDARY_CAPTURE, VR::DA, &timestamp.date);
    put_str(&mut obj, tags::TIME_OF_SECONDARY_CAPTURE, VR::TM, &timestamp.time);
    put_pixel_bytes(&mut obj, picture.into_raw());
    finish(obj, &sop_uid)
}

/// The three views side by side above the legend band.
pub(crate) fn orthogonal_views(inputs: &ReportInputs<'_>, overlay: &Overlay) -> Result<RgbImage, ReportError> {
    let source = &inputs.source.volume;
    let finding = inputs.finding;
    let shape = source.shape();
    let hotspot = finding.hotspot().map(|h| h.lps);
    let centre = hotspot.unwrap_or_else(|| source.voxel_to_world(shape.map(|n| (n as f64 - 1.0) / 2.0)));
    // The source's extent along the patient's axes (voxel centres of its eight corners).
    let (mut lo, mut hi) = ([f64::INFINITY; 3], [f64::NEG_INFINITY; 3]);
    for corner in 0..8 {
        let ijk: [f64; 3] = std::array::from_fn(|a| {
            if corner >> a & 1 == 1 {
                shape[a] as f64 - 1.0
            } else {
                0.0
            }
        });
        let p = source.voxel_to_world(ijk);
        for a in 0..3 {
            lo[a] = lo[a].min(p[a]);
            hi[a] = hi[a].max(p[a]);
        }
    }
    let extent = (0..3).map(|a| hi[a] - lo[a]).fold(0.0, f64::max).max(1.0);
    let finest = source.spacing().into_iter().fold(f64::INFINITY, f64::min);
    let pixel = finest.min(extent / MIN_PIXELS).max(extent / MAX_PIXELS);
    let reformat_error = |source| ReportError::Reformat {
        series_uid: inputs.source.meta.series_uid.clone(),
        source,
    };
    let panels = View::ALL
        .iter()
        .map(|plane| {
            let grid = plane.grid(lo, hi, centre, pixel).map_err(reformat_error)?;
            let grey = source
                .resample(&grid, Interp::Linear, f32::NAN)
                .map_err(reformat_error)?;
            let view = overlay.reformat(source.affine(), &grid, hotspot);
            let image = render_slice(grey.data(), &view, 0);
            Ok(compose(
                &image,
                &Layout::panel((image.width(), image.height()), SCALE),
                &Letters::of(&grey),
                None,
                Some(plane.name()),
            ))
        })
        .collect::<Result<Vec<_>, ReportError>>()?;
    let location = match finding.hotspot() {
        Some(h) => format!(
            "VIEWS THROUGH THE HOTSPOT: SOURCE SLICE {} OF {}",
            h.slice + 1,
            shape[2]
        ),
        None => "VIEWS THROUGH THE MIDDLE OF THE VOLUME".into(),
    };
    let legend = overlay.legend(finding, Some(inputs.algorithm)).with_line(location);
    Ok(montage(&panels, &legend, SCALE))
}

/// A view plane in the patient's axes (LPS), drawn in the radiological convention.
#[derive(Clone, Copy)]
enum View {
    Axial,
    Coronal,
    Sagittal,
}

impl View {
    const ALL: [View; 3] = [View::Axial, View::Coronal, View::Sagittal];

    fn name(self) -> &'static str {
        match self {
            View::Axial => "AXIAL",
            View::Coronal => "CORONAL",
            View::Sagittal => "SAGITTAL",
        }
    }

    /// The one-voxel-thick grid of this plane through `centre`, covering `lo..hi` (LPS mm) at
    /// `pixel` mm. Columns run to the patient's left (axial, coronal) or posterior (sagittal);
    /// rows run posterior (axial) or inferior (coronal, sagittal).
    fn grid(
        self,
        lo: [f64; 3],
        hi: [f64; 3],
        centre: [f64; 3],
        pixel: f64,
    ) -> Result<Grid, crate::volume::VolumeError> {
        const L: [f64; 3] = [1.0, 0.0, 0.0];
        const P: [f64; 3] = [0.0, 1.0, 0.0];
        const S: [f64; 3] = [0.0, 0.0, 1.0];
        const I: [f64; 3] = [0.0, 0.0, -1.0];
        let n = |a: usize| ((hi[a] - lo[a]) / pixel).ceil() as usize + 1;
        let (directions, origin, shape) = match self {
            View::Axial => ([L, P, S], [lo[0], lo[1], centre[2]], [n(0), n(1), 1]),
            View::Coronal => ([L, I, P], [lo[0], centre[1], hi[2]], [n(0), n(2), 1]),
            View::Sagittal => ([P, I, L], [centre[0], lo[1], hi[2]], [n(1), n(2), 1]),
        };
        Ok(Grid {
            shape,
            affine: Affine::from_parts([pixel; 3], directions, origin)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each view is drawn the way radiologists read it: the patient's right on the viewer's
    /// left (axial, coronal), anterior on the left (sagittal), superior up.
    #[test]
    fn views_follow_the_radiological_convention() {
        let (lo, hi) = ([-90.0, -120.0, -70.0], [90.0, 100.0, 90.0]);
        let centre = [10.0, -20.0, 30.0];
        for (view, letters, size) in [
            (View::Axial, ('R', 'L', 'A', 'P'), [181, 221]),
            (View::Coronal, ('R', 'L', 'S', 'I'), [181, 161]),
            (View::Sagittal, ('A', 'P', 'S', 'I'), [221, 161]),
        ] {
            let grid = view.grid(lo, hi, centre, 1.0).unwrap();
            assert_eq!(
                [grid.shape[0], grid.shape[1], grid.shape[2]],
                [size[0], size[1], 1],
                "{}",
                view.name()
            );
            let l = Letters::of(&Volume::filled(&grid, 0.0).unwrap());
            assert_eq!(l.as_tuple(), letters, "{}", view.name());
            // The plane passes through the centre.
            let c = grid.affine.world_to_voxel(centre);
            assert!(
                c[2].abs() < 1e-9 && c[0] >= 0.0 && c[1] >= 0.0,
                "{}: {c:?}",
                view.name()
            );
        }
    }
}
