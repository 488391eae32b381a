//! Hotspot → one binary Segmentation instance in a new series of the source study: the region
//! the overlay colours around the hotspot, as a segment a viewer can outline, measure or hand to
//! surgical planning. Suspected studies only; a negative study, a flat map or a hotspot below
//! the overlay threshold gets none, so no region is ever named where no finding is reported.
//!
//! The region is the part of what the SC colours that belongs to the hotspot: voxels inside the
//! head and the model's field of view whose heat on the display scale
//! ([`crate::explain::scale_heat`], 1.0 = the package's reference level) is above `[overlay]
//! threshold` and at least half the hotspot's heat, face-connected to the hotspot voxel. Frames
//! are the source slices the region touches, in slice order, each on its source slice's plane.

use dicom_core::VR;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use ndarray::Array3;

use super::codes;
use super::dicom::{NewSeries, code_item, finish, put_seq, put_str, put_u16, truncate};
use super::enhanced::{
    Geometry, enhanced_base, put_content_identification, put_derivation, put_dimensions, put_frame_content,
    put_pixel_bytes, required_frame_of_reference,
};
use super::render::Overlay;
use super::{DicomFile, ReportError, ReportInputs, Timestamp, UidGenerator};
use crate::volume::Volume;

/// Segmentation Storage.
pub const SEGMENTATION: &str = "1.2.840.10008.5.1.4.1.1.66.4";

/// The one segment's number.
const SEGMENT: u16 = 1;

/// Makes the Segmentation of the hotspot region for `inputs`, or `None` when there is none to
/// make (not suspected, flat map, hotspot not coloured).
pub fn segmentation(
    inputs: &ReportInputs<'_>,
    heatmap: &Volume,
    uids: &mut UidGenerator,
) -> Result<Option<DicomFile>, ReportError> {
    super::check_all(inputs, heatmap)?;
    let overlay = Overlay::new(inputs.source, heatmap, inputs.finding, inputs.options);
    match segmented_region(inputs, &overlay) {
        Some(region) => segmentation_of(inputs, &region, &region_slices(&region), uids).map(Some),
        None => Ok(None),
    }
}

/// The region a Segmentation is made of: the coloured hotspot region of a suspected study.
pub(crate) fn segmented_region(inputs: &ReportInputs<'_>, overlay: &Overlay) -> Option<Array3<bool>> {
    if inputs.finding.suspected {
        overlay.hotspot_region()
    } else {
        None
    }
}

/// The source slices `region` touches: the Segmentation's frames.
pub(crate) fn region_slices(region: &Array3<bool>) -> Vec<usize> {
    let (n_i, n_j, n_k) = region.dim();
    (0..n_k)
        .filter(|&k| (0..n_j).any(|j| (0..n_i).any(|i| region[[i, j, k]])))
        .collect()
}

/// The Segmentation of `region` (from [`segmented_region`]), whose frames are the source
/// `slices` it touches ([`region_slices`]).
pub(crate) fn segmentation_of(
    inputs: &ReportInputs<'_>,
    region: &Array3<bool>,
    slices: &[usize],
    uids: &mut UidGenerator,
) -> Result<DicomFile, ReportError> {
    let source = inputs.source;
    let options = inputs.options;
    let for_uid = required_frame_of_reference(inputs)?;
    let timestamp = options.timestamp.clone().unwrap_or_else(Timestamp::now_utc);
    let (series_uid, sop_uid) = uids.new_single();
    let dimension_uid = uids.next_uid();
    let geometry = Geometry::of_grid(&source.volume);

    let mut obj = enhanced_base(
        inputs,
        SEGMENTATION,
        &sop_uid,
        &NewSeries {
            uid: &series_uid,
            modality: "SEG",
            number: options.series_number_seg,
            description: &options.series_description_seg,
        },
        &timestamp,
        &for_uid,
    )?;
    // Segmentation Image.
    put_str(&mut obj, tags::IMAGE_TYPE, VR::CS, "DERIVED\\PRIMARY");
    put_content_identification(&mut obj, "FCD_HOTSPOT", "FCD-II AI hotspot region, unverified");
    put_u16(&mut obj, tags::SAMPLES_PER_PIXEL, 1);
    put_str(&mut obj, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
    put_u16(&mut obj, tags::ROWS, geometry.rows as u16);
    put_u16(&mut obj, tags::COLUMNS, geometry.columns as u16);
    put_u16(&mut obj, tags::BITS_ALLOCATED, 1);
    put_u16(&mut obj, tags::BITS_STORED, 1);
    put_u16(&mut obj, tags::HIGH_BIT, 0);
    put_u16(&mut obj, tags::PIXEL_REPRESENTATION, 0);
    put_str(&mut obj, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    put_str(&mut obj, tags::SEGMENTATION_TYPE, VR::CS, "BINARY");
    put_seq(&mut obj, tags::SEGMENT_SEQUENCE, vec![segment(inputs)]);
    put_str(&mut obj, tags::NUMBER_OF_FRAMES, VR::IS, &slices.len().to_string());
    put_dimensions(
        &mut obj,
        &dimension_uid,
        &[
            (
                tags::REFERENCED_SEGMENT_NUMBER,
                tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                "Referenced Segment Number",
            ),
            (
                tags::IMAGE_POSITION_PATIENT,
                tags::PLANE_POSITION_SEQUENCE,
                "Image Position Patient",
            ),
        ],
    );

    let mut shared = InMemDicomObject::new_empty();
    geometry.put_shared(&mut shared);
    let mut identification = InMemDicomObject::new_empty();
    put_u16(&mut identification, tags::REFERENCED_SEGMENT_NUMBER, SEGMENT);
    put_seq(&mut shared, tags::SEGMENT_IDENTIFICATION_SEQUENCE, vec![identification]);
    put_seq(&mut obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, vec![shared]);
    let description = format!(
        "{} {}: overlay voxels above {:.2} on the display scale and at half the hotspot's heat or more, face-connected to the hotspot",
        inputs.algorithm.name, inputs.algorithm.version, options.overlay.threshold
    );
    let per_frame = slices
        .iter()
        .map(|&k| {
            let mut item = InMemDicomObject::new_empty();
            put_derivation(&mut item, inputs, k, &codes::SEGMENTATION, &description);
            put_frame_content(&mut item, &[u32::from(SEGMENT), k as u32 + 1]);
            geometry.put_position(&mut item, k);
            item
        })
        .collect();
    put_seq(&mut obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame);
    put_pixel_bytes(&mut obj, pack_bits(region, slices));
    finish(obj, &sop_uid)
}

/// The Segment Sequence item: what the region is (standard codes, see [`codes`]) and which
/// algorithm drew it.
fn segment(inputs: &ReportInputs<'_>) -> InMemDicomObject {
    let algorithm = inputs.algorithm;
    let options = inputs.options;
    let mut item = InMemDicomObject::new_empty();
    put_u16(&mut item, tags::SEGMENT_NUMBER, SEGMENT);
    put_str(&mut item, tags::SEGMENT_LABEL, VR::LO, "FCD type II hotspot");
    put_str(
        &mut item,
        tags::SEGMENT_DESCRIPTION,
        VR::ST,
        &format!(
            "{} (AI, unverified, probability {:.1} %): where the model looked hardest, the heatmap \
             overlay's region around its peak; not a lesion outline",
            codes::LABEL_SUSPECTED,
            inputs.finding.probability * 100.0
        ),
    );
    put_seq(
        &mut item,
        tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
        vec![code_item(&codes::MORPHOLOGICALLY_ABNORMAL_STRUCTURE)],
    );
    put_seq(
        &mut item,
        tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE,
        vec![code_item(&codes::LESION_OF_BRAIN)],
    );
    put_str(&mut item, tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC");
    put_str(
        &mut item,
        tags::SEGMENT_ALGORITHM_NAME,
        VR::LO,
        &truncate(&algorithm.name, 64),
    );
    let mut identification = InMemDicomObject::new_empty();
    put_seq(
        &mut identification,
        tags::ALGORITHM_FAMILY_CODE_SEQUENCE,
        vec![code_item(&codes::ARTIFICIAL_INTELLIGENCE)],
    );
    put_str(
        &mut identification,
        tags::ALGORITHM_NAME,
        VR::LO,
        &truncate(&algorithm.name, 64),
    );
    put_str(
        &mut identification,
        tags::ALGORITHM_VERSION,
        VR::LO,
        &truncate(&algorithm.version, 64),
    );
    let mut parameters = format!(
        "{}; overlay threshold {:.2}, region at half the hotspot's heat; {}",
        algorithm.parameters,
        options.overlay.threshold,
        match options.heat_reference {
            Some(_) => "absolute scale (1.0 = median peak of training lesions)",
            None => "relative scale (1.0 = peak of this study, uncalibrated)",
        }
    );
    if !algorithm.sha256.is_empty() {
        parameters.push_str(&format!("; model package SHA-256 {}", algorithm.sha256));
    }
    put_str(&mut identification, tags::ALGORITHM_PARAMETERS, VR::LT, &parameters);
    put_seq(
        &mut item,
        tags::SEGMENTATION_ALGORITHM_IDENTIFICATION_SEQUENCE,
        vec![identification],
    );
    item
}

/// The frames of `slices` as 1-bit pixels, row by row, packed across frame boundaries with the
/// first pixel in the lowest bit (PS3.5 8.1.1: frames of 1-bit data are not byte-aligned).
fn pack_bits(region: &Array3<bool>, slices: &[usize]) -> Vec<u8> {
    let (n_i, n_j, _) = region.dim();
    let mut bytes = vec![0u8; (slices.len() * n_i * n_j).div_ceil(8)];
    let mut n = 0;
    for &k in slices {
        for j in 0..n_j {
            for i in 0..n_i {
                if region[[i, j, k]] {
                    bytes[n / 8] |= 1 << (n % 8);
                }
                n += 1;
            }
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_run_on_across_frames_lowest_bit_first() {
        // Two 3 × 2 frames: 12 bits, the second frame starting at bit 6 of byte 0.
        let mut region = Array3::from_elem((3, 2, 3), false);
        region[[0, 0, 0]] = true; // bit 0
        region[[2, 1, 0]] = true; // bit 5
        region[[0, 0, 2]] = true; // frame 2 (slice 2), bit 6
        region[[1, 1, 2]] = true; // bit 6 + 4 = 10
        region[[1, 1, 1]] = true; // slice 1 is not a frame
        assert_eq!(pack_bits(&region, &[0, 2]), vec![0b0110_0001, 0b0000_0100]);
    }
}
