//! Source series + heatmap → Secondary Capture instances in a new series of the source study:
//! one Multi-frame True Color SC (a frame per source slice, in source slice order) or one
//! single-frame SC per slice.
//!
//! Frame n shows source slice k = n (voxel index), rows = j and columns = i exactly as the source
//! image, one frame pixel per voxel, inside black margins (orientation letters) and above a
//! legend band. The multi-frame instance carries the plane geometry (Pixel Measures, Plane
//! Orientation, Plane Position per frame, in LPS mm) in its functional groups; the position is
//! that of the frame's first pixel, in the margin, so the image region lands exactly on the
//! source slice. The single-frame SC IOD has no plane modules; those instances rely on their
//! Source Image Sequence.

use dicom_core::DataElement;
use dicom_core::VR;
use dicom_core::value::PrimitiveValue;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use image::RgbImage;

use super::dicom::{
    NewSeries, common_base, ds_multi, finish, frame_of_reference, put_seq, put_str, put_tag, put_u16,
    source_image_item, source_image_items, source_modality, truncate,
};
use super::enhanced::{Geometry, put_frame_of_reference, put_pixel_bytes};
use super::render::{Overlay, Window, frames};
use super::{DicomFile, ReportError, ReportInputs, ReportOptions, Timestamp, UidGenerator};
use crate::assemble::Assembled;
use crate::volume::Volume;

/// Multi-frame True Color Secondary Capture Image Storage.
pub const MULTIFRAME_TRUE_COLOR_SC: &str = "1.2.840.10008.5.1.4.1.1.7.4";
/// Secondary Capture Image Storage.
pub const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";

/// Renders the heatmap (values in [0, 1], same grid as `inputs.source.volume`) over the source
/// slices and returns the SC instances: one multi-frame instance, or one per slice in slice
/// order when `options.multiframe` is false.
pub fn secondary_capture(
    inputs: &ReportInputs<'_>,
    heatmap: &Volume,
    uids: &mut UidGenerator,
) -> Result<Vec<DicomFile>, ReportError> {
    super::check_all(inputs, heatmap)?;
    let overlay = Overlay::new(inputs.source, heatmap, inputs.finding, inputs.options);
    secondary_capture_over(inputs, &overlay, uids)
}

/// [`secondary_capture`] with the overlay already built (and the inputs checked), so that
/// `write_outputs` builds it once for the SC and the SEG.
pub(crate) fn secondary_capture_over(
    inputs: &ReportInputs<'_>,
    overlay: &Overlay,
    uids: &mut UidGenerator,
) -> Result<Vec<DicomFile>, ReportError> {
    let source = inputs.source;
    let options = inputs.options;
    let window = overlay.window();
    let legend = overlay.legend(inputs.finding, Some(inputs.algorithm));
    let (frames, layout) = frames(source, overlay, &legend);
    let timestamp = options.timestamp.clone().unwrap_or_else(Timestamp::now_utc);
    let ids = uids.new_series(instance_count(source, options));
    let series_uid = ids.series;
    // The source grid widened by the margins.
    let geometry = Geometry::new(
        &source.volume,
        [f64::from(layout.left), f64::from(layout.top)],
        layout.height as usize,
        layout.width as usize,
    );
    let ctx = Context {
        inputs,
        geometry: &geometry,
        timestamp: &timestamp,
        series_uid: &series_uid,
        window,
    };
    if options.multiframe {
        Ok(vec![ctx.multiframe(&ids.instances[0], &frames)?])
    } else {
        frames
            .iter()
            .zip(&ids.instances)
            .enumerate()
            .map(|(k, (frame, sop_uid))| ctx.single_frame(sop_uid, k, frame))
            .collect()
    }
}

/// The SC instances made for `source`: one multi-frame instance, or one per slice.
pub(crate) fn instance_count(source: &Assembled, options: &ReportOptions) -> usize {
    if options.multiframe {
        1
    } else {
        source.volume.shape()[2]
    }
}

struct Context<'a> {
    inputs: &'a ReportInputs<'a>,
    geometry: &'a Geometry,
    timestamp: &'a Timestamp,
    series_uid: &'a str,
    window: Window,
}

impl Context<'_> {
    /// Modules both SC flavours share (see [`sc_image_base`]).
    fn base(&self, sop_class: &str, sop_uid: &str, instance: usize) -> Result<InMemDicomObject, ReportError> {
        let inputs = self.inputs;
        let options = inputs.options;
        let g = self.geometry;
        let derivation = format!(
            "{} heatmap over source intensities windowed {}..{}; {}; colour ({:?}) only inside the \
             head and the model's field of view, above {:.2} of {}; overlay of negatives {:?}",
            inputs.algorithm.name,
            self.window.lo,
            self.window.hi,
            super::label(inputs.finding.suspected),
            options.overlay.colour_map,
            options.overlay.threshold,
            match options.heat_reference {
                Some(r) => format!("the model's reference level {r} (absolute scale)"),
                None => "the study's peak (relative scale: the model has no reference, uncalibrated)".into(),
            },
            options.overlay.negative,
        );
        sc_image_base(
            inputs,
            sop_class,
            sop_uid,
            &ScImage {
                series: NewSeries {
                    uid: self.series_uid,
                    modality: &source_modality(inputs),
                    number: options.series_number_sc,
                    description: &options.series_description_sc,
                },
                instance,
                size: [g.rows, g.columns],
                patient_orientation: &g.patient_orientation(),
                derivation: &derivation,
            },
            self.timestamp,
        )
    }

    /// One Multi-frame True Color SC instance; frame n = source slice n.
    fn multiframe(&self, sop_uid: &str, frames: &[RgbImage]) -> Result<DicomFile, ReportError> {
        let g = self.geometry;
        let depth = frames.len();
        let mut obj = self.base(MULTIFRAME_TRUE_COLOR_SC, sop_uid, 1)?;
        put_seq(
            &mut obj,
            tags::SOURCE_IMAGE_SEQUENCE,
            source_image_items(self.inputs, &(0..depth).collect::<Vec<_>>()),
        );
        // Multi-frame + SC Multi-frame Vector: frames step along the slice normal.
        put_str(&mut obj, tags::NUMBER_OF_FRAMES, VR::IS, &depth.to_string());
        put_tag(&mut obj, tags::FRAME_INCREMENT_POINTER, tags::SLICE_LOCATION_VECTOR);
        obj.put(DataElement::new(
            tags::SLICE_LOCATION_VECTOR,
            VR::DS,
            PrimitiveValue::from(ds_multi(&g.locations)),
        ));
        // Frame of Reference and plane geometry in functional groups.
        if let Some(for_uid) = frame_of_reference(self.inputs) {
            put_frame_of_reference(&mut obj, self.inputs, &for_uid);
            let mut shared = InMemDicomObject::new_empty();
            g.put_shared(&mut shared);
            put_seq(&mut obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, vec![shared]);
            let per_frame = (0..depth)
                .map(|k| {
                    let mut item = InMemDicomObject::new_empty();
                    g.put_position(&mut item, k);
                    item
                })
                .collect();
            put_seq(&mut obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame);
        }
        let mut pixels = Vec::with_capacity(depth * g.rows * g.columns * 3);
        for frame in frames {
            pixels.extend_from_slice(frame.as_raw());
        }
        put_pixel_bytes(&mut obj, pixels);
        finish(obj, sop_uid)
    }

    /// One single-frame SC instance for source slice `k` (Instance Number k + 1).
    fn single_frame(&self, sop_uid: &str, k: usize, frame: &RgbImage) -> Result<DicomFile, ReportError> {
        let g = self.geometry;
        let mut obj = self.base(SECONDARY_CAPTURE, sop_uid, k + 1)?;
        put_seq(
            &mut obj,
            tags::SOURCE_IMAGE_SEQUENCE,
            vec![source_image_item(self.inputs, k)],
        );
        // SC Image module.
        put_str(&mut obj, tags::DATE_OF_SECONDARY_CAPTURE, VR::DA, &self.timestamp.date);
        put_str(&mut obj, tags::TIME_OF_SECONDARY_CAPTURE, VR::TM, &self.timestamp.time);
        put_str(&mut obj, tags::PIXEL_SPACING, VR::DS, &ds_multi(&g.pixel_spacing));
        put_pixel_bytes(&mut obj, frame.as_raw().clone());
        finish(obj, sop_uid)
    }
}

/// What one Secondary Capture image instance says about itself beyond the shared modules.
pub(crate) struct ScImage<'a> {
    pub series: NewSeries<'a>,
    /// Instance Number.
    pub instance: usize,
    /// Rows, columns.
    pub size: [usize; 2],
    /// Patient Orientation (empty when the image has no single orientation).
    pub patient_orientation: &'a str,
    /// Derivation Description: how the pixels were made.
    pub derivation: &'a str,
}

/// Patient/study/series/equipment, SC Equipment, General Image and Image Pixel (less the data)
/// of an 8-bit RGB Secondary Capture instance: what the overlay frames and the key image share.
pub(crate) fn sc_image_base(
    inputs: &ReportInputs<'_>,
    sop_class: &str,
    sop_uid: &str,
    image: &ScImage<'_>,
    timestamp: &Timestamp,
) -> Result<InMemDicomObject, ReportError> {
    let mut obj = common_base(inputs, sop_class, sop_uid, &image.series, timestamp)?;
    // SC Equipment
    put_str(&mut obj, tags::CONVERSION_TYPE, VR::CS, "WSD");
    let device = inputs.device;
    for (tag, value) in [
        (tags::SECONDARY_CAPTURE_DEVICE_MANUFACTURER, &device.manufacturer),
        (
            tags::SECONDARY_CAPTURE_DEVICE_MANUFACTURER_MODEL_NAME,
            &device.model_name,
        ),
        (
            tags::SECONDARY_CAPTURE_DEVICE_SOFTWARE_VERSIONS,
            &device.software_versions,
        ),
    ] {
        put_str(&mut obj, tag, VR::LO, &truncate(value, 64));
    }
    // General Image
    put_str(&mut obj, tags::INSTANCE_NUMBER, VR::IS, &image.instance.to_string());
    put_str(&mut obj, tags::PATIENT_ORIENTATION, VR::CS, image.patient_orientation);
    put_str(&mut obj, tags::IMAGE_TYPE, VR::CS, "DERIVED\\SECONDARY");
    put_str(&mut obj, tags::DERIVATION_DESCRIPTION, VR::ST, image.derivation);
    put_str(
        &mut obj,
        tags::IMAGE_COMMENTS,
        VR::LT,
        &format!(
            "AI output, unverified: {} (probability {:.3}, threshold {:.2})",
            super::label(inputs.finding.suspected),
            inputs.finding.probability,
            inputs.finding.threshold
        ),
    );
    put_str(&mut obj, tags::BURNED_IN_ANNOTATION, VR::CS, "YES");
    put_str(&mut obj, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    // Image Pixel (the True Color SC Image module's values)
    put_u16(&mut obj, tags::SAMPLES_PER_PIXEL, 3);
    put_str(&mut obj, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "RGB");
    put_u16(&mut obj, tags::PLANAR_CONFIGURATION, 0);
    put_u16(&mut obj, tags::ROWS, image.size[0] as u16);
    put_u16(&mut obj, tags::COLUMNS, image.size[1] as u16);
    put_u16(&mut obj, tags::BITS_ALLOCATED, 8);
    put_u16(&mut obj, tags::BITS_STORED, 8);
    put_u16(&mut obj, tags::HIGH_BIT, 7);
    put_u16(&mut obj, tags::PIXEL_REPRESENTATION, 0);
    Ok(obj)
}
