//! Heatmap → one Parametric Map instance (32-bit float frames) in a new series of the source
//! study: the map itself rather than a picture of it, for viewers and tools that threshold,
//! fuse or measure it.
//!
//! Frame k is source slice k, rows = j and columns = i, one pixel per voxel, with the source's
//! Frame of Reference and plane geometry, so the map lands exactly on the source in any viewer.
//! Values are the overlay's display scale ([`crate::explain::scale_heat`]): 1.0 is the model
//! package's reference level (the median peak of its training lesions' maps), the same number
//! for the same map value in every study; without a reference, the study's own peak (the Real
//! World Value Mapping says which).

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use rayon::prelude::*;

use super::codes;
use super::dicom::{NewSeries, code_item, ds, finish, put_fds, put_seq, put_str, put_u16, source_modality, truncate};
use super::enhanced::{
    Geometry, enhanced_base, put_content_identification, put_derivation, put_dimensions, put_frame_content,
    required_frame_of_reference,
};
use super::{DicomFile, ReportError, ReportInputs, Timestamp, UidGenerator};
use crate::volume::Volume;

/// Parametric Map Storage.
pub const PARAMETRIC_MAP: &str = "1.2.840.10008.5.1.4.1.1.30";

/// Image Type and Frame Type: a derived volume whose pixels are a quantity (value 4 as the
/// current standard and highdicom write it; dicom3tools of 2022 does not know it yet and warns).
const IMAGE_TYPE: &str = "DERIVED\\PRIMARY\\VOLUME\\QUANTITY";

/// What the model did not see is written as 0, not NaN: NaN in Float Pixel Data breaks
/// windowing, statistics and resampling in most viewers, and 0 is the bottom of the display
/// scale (negative heat is already clipped to it), so an outside voxel reads as "no attention",
/// which is also how the overlay treats it. The Content Description and each frame's Derivation
/// Description say so.
const NOT_SEEN: f32 = 0.0;

/// Makes the Parametric Map of `heatmap` (map units, NaN outside the model's field of view, on
/// the source grid) for `inputs`.
pub fn parametric_map(
    inputs: &ReportInputs<'_>,
    heatmap: &Volume,
    uids: &mut UidGenerator,
) -> Result<DicomFile, ReportError> {
    let source = inputs.source;
    super::check_all(inputs, heatmap)?;
    let for_uid = required_frame_of_reference(inputs)?;
    let options = inputs.options;
    let timestamp = options.timestamp.clone().unwrap_or_else(Timestamp::now_utc);
    let (series_uid, sop_uid) = uids.new_single();
    let dimension_uid = uids.next_uid();
    let geometry = Geometry::of_grid(&source.volume);
    let [n_i, n_j, n_k] = source.volume.shape();

    let mut obj = enhanced_base(
        inputs,
        PARAMETRIC_MAP,
        &sop_uid,
        &NewSeries {
            uid: &series_uid,
            modality: &source_modality(inputs),
            number: options.series_number_pm,
            description: &options.series_description_pm,
        },
        &timestamp,
        &for_uid,
    )?;
    // Parametric Map Image.
    put_str(&mut obj, tags::IMAGE_TYPE, VR::CS, IMAGE_TYPE);
    put_content_identification(
        &mut obj,
        "FCD_HEATMAP",
        "FCD-II AI heatmap, unverified; 0 outside the model's view",
    );
    // An unverified AI output, not a cleared product's.
    put_str(&mut obj, tags::CONTENT_QUALIFICATION, VR::CS, "RESEARCH");
    put_str(&mut obj, tags::PIXEL_PRESENTATION, VR::CS, "MONOCHROME");
    put_str(&mut obj, tags::RECOGNIZABLE_VISUAL_FEATURES, VR::CS, "NO");
    put_str(&mut obj, tags::BURNED_IN_ANNOTATION, VR::CS, "NO");
    put_str(&mut obj, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    put_str(&mut obj, tags::PRESENTATION_LUT_SHAPE, VR::CS, "IDENTITY");
    put_seq(&mut obj, tags::ACQUISITION_CONTEXT_SEQUENCE, Vec::new());
    put_u16(&mut obj, tags::SAMPLES_PER_PIXEL, 1);
    put_str(&mut obj, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
    put_u16(&mut obj, tags::ROWS, geometry.rows as u16);
    put_u16(&mut obj, tags::COLUMNS, geometry.columns as u16);
    put_u16(&mut obj, tags::BITS_ALLOCATED, 32);
    put_str(&mut obj, tags::NUMBER_OF_FRAMES, VR::IS, &n_k.to_string());
    put_dimensions(
        &mut obj,
        &dimension_uid,
        &[(
            tags::IMAGE_POSITION_PATIENT,
            tags::PLANE_POSITION_SEQUENCE,
            "Image Position Patient",
        )],
    );

    // Pixels: frame k, row j, column i; NaN (not seen) → NOT_SEEN.
    // Frames in parallel: the transposition reads the map across its memory order.
    let scaled = crate::explain::scale_heat(heatmap.data(), options.heat_reference);
    let mut values = vec![NOT_SEEN; n_i * n_j * n_k];
    values
        .par_chunks_mut((n_i * n_j).max(1))
        .enumerate()
        .for_each(|(k, frame)| {
            for (n, out) in frame.iter_mut().enumerate() {
                let v = scaled[[n % n_i, n / n_i, k]];
                if v.is_finite() {
                    *out = v;
                }
            }
        });
    let peak = values.iter().fold(0.0f32, |m, &v| m.max(v));

    let mut shared = InMemDicomObject::new_empty();
    geometry.put_shared(&mut shared);
    put_seq(
        &mut shared,
        tags::REAL_WORLD_VALUE_MAPPING_SEQUENCE,
        vec![value_mapping(inputs, peak)],
    );
    put_seq(&mut shared, tags::FRAME_ANATOMY_SEQUENCE, vec![frame_anatomy()]);
    // Stored values are the values: identity rescale.
    let mut rescale = InMemDicomObject::new_empty();
    put_str(&mut rescale, tags::RESCALE_INTERCEPT, VR::DS, "0");
    put_str(&mut rescale, tags::RESCALE_SLOPE, VR::DS, "1");
    put_str(&mut rescale, tags::RESCALE_TYPE, VR::LO, "US");
    put_seq(&mut shared, tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE, vec![rescale]);
    // Window 0 … 1: black where the model saw nothing, white at the reference level, as on
    // every study (the scale is absolute when calibrated).
    let mut window = InMemDicomObject::new_empty();
    put_str(&mut window, tags::WINDOW_CENTER, VR::DS, "0.5");
    put_str(&mut window, tags::WINDOW_WIDTH, VR::DS, "1");
    put_seq(&mut shared, tags::FRAME_VOILUT_SEQUENCE, vec![window]);
    let mut frame_type = InMemDicomObject::new_empty();
    put_str(&mut frame_type, tags::FRAME_TYPE, VR::CS, IMAGE_TYPE);
    put_seq(&mut shared, tags::PARAMETRIC_MAP_FRAME_TYPE_SEQUENCE, vec![frame_type]);
    put_seq(&mut obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, vec![shared]);

    let description = derivation_description(inputs);
    let per_frame = (0..n_k)
        .map(|k| {
            let mut item = InMemDicomObject::new_empty();
            put_derivation(&mut item, inputs, k, &codes::UNSPECIFIED_CALCULATION, &description);
            put_frame_content(&mut item, &[k as u32 + 1]);
            geometry.put_position(&mut item, k);
            item
        })
        .collect();
    put_seq(&mut obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame);
    obj.put(DataElement::new(
        tags::FLOAT_PIXEL_DATA,
        VR::OF,
        PrimitiveValue::F32(values.into()),
    ));
    finish(obj, &sop_uid)
}

/// What the values mean (Real World Value Mapping): identity, no unit, on the display scale
/// whose 1.0 the LUT Explanation names; the stored values run from 0 to `peak`.
fn value_mapping(inputs: &ReportInputs<'_>, peak: f32) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_str(&mut item, tags::LUT_LABEL, VR::SH, "FCD_ATTENTION");
    let explanation = match inputs.options.heat_reference {
        Some(_) => "model attention, 1.0 = median peak of training lesions",
        None => "model attention, 1.0 = peak of this study (uncalibrated)",
    };
    put_str(&mut item, tags::LUT_EXPLANATION, VR::LO, explanation);
    put_seq(
        &mut item,
        tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
        vec![code_item(&codes::NO_UNITS)],
    );
    put_fds(
        &mut item,
        tags::DOUBLE_FLOAT_REAL_WORLD_VALUE_FIRST_VALUE_MAPPED,
        &[0.0],
    );
    put_fds(
        &mut item,
        tags::DOUBLE_FLOAT_REAL_WORLD_VALUE_LAST_VALUE_MAPPED,
        &[f64::from(peak)],
    );
    put_fds(&mut item, tags::REAL_WORLD_VALUE_INTERCEPT, &[0.0]);
    put_fds(&mut item, tags::REAL_WORLD_VALUE_SLOPE, &[1.0]);
    item
}

/// Frame Anatomy: the brain, an unpaired structure.
fn frame_anatomy() -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_seq(
        &mut item,
        tags::ANATOMIC_REGION_SEQUENCE,
        vec![code_item(&codes::BRAIN)],
    );
    put_str(&mut item, tags::FRAME_LATERALITY, VR::CS, "U");
    item
}

/// Each frame's Derivation Description: the algorithm, the scale, and the value outside the
/// model's view.
fn derivation_description(inputs: &ReportInputs<'_>) -> String {
    let algorithm = inputs.algorithm;
    let scale = match inputs.options.heat_reference {
        Some(r) => format!(
            "1.0 = the model's reference level {} (median peak of its training lesions' maps; absolute scale)",
            ds(r)
        ),
        None => "1.0 = the peak of this study (relative scale: the model has no reference, uncalibrated)".into(),
    };
    truncate(
        &format!(
            "{} {} heatmap ({}) resampled onto the source grid, negative heat clipped to 0, {scale}; voxels \
             outside the model's field of view are 0 (the model did not see them). AI output, unverified.",
            algorithm.name, algorithm.version, algorithm.parameters
        ),
        1024,
    )
}
