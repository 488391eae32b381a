//! Pieces of the multi-frame outputs shared by the SC, the Parametric Map and the Segmentation:
//! plane geometry of the frames in their functional groups, the enhanced equipment, the frame
//! dimensions and the references back to the source series.

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::codes::Code;
use super::dicom::{
    NewSeries, code_item, common_base, ds, ds_multi, get_str, orientation_letters, put_seq, put_str, put_tag, put_u32s,
    source_image_item, truncate,
};
use super::{ReportError, ReportInputs, Timestamp};
use crate::volume::Volume;

/// Plane geometry of frames laid over the source slices (LPS mm), frame k on slice k.
pub(crate) struct Geometry {
    pub rows: usize,
    pub columns: usize,
    row_dir: [f64; 3],
    col_dir: [f64; 3],
    /// Pixel Spacing: between rows (along j), between columns (along i).
    pub pixel_spacing: [f64; 2],
    slice_spacing: f64,
    /// Position of the frame's first pixel on slice k, for every k.
    positions: Vec<[f64; 3]>,
    /// Position of slice k along the normal row × column.
    pub locations: Vec<f64>,
}

impl Geometry {
    /// Frames of `rows` × `columns` pixels, one pixel per voxel, whose first pixel lies
    /// `offset` = (columns, rows) before voxel (0, 0): the SC's margins.
    pub fn new(volume: &Volume, offset: [f64; 2], rows: usize, columns: usize) -> Self {
        let [_, _, n_k] = volume.shape();
        let [row_dir, col_dir, _] = volume.directions();
        let spacing = volume.spacing();
        let normal = [
            row_dir[1] * col_dir[2] - row_dir[2] * col_dir[1],
            row_dir[2] * col_dir[0] - row_dir[0] * col_dir[2],
            row_dir[0] * col_dir[1] - row_dir[1] * col_dir[0],
        ];
        let positions: Vec<[f64; 3]> = (0..n_k)
            .map(|k| volume.voxel_to_world([-offset[0], -offset[1], k as f64]))
            .collect();
        let locations = positions
            .iter()
            .map(|p| p.iter().zip(normal).map(|(a, b)| a * b).sum())
            .collect();
        Self {
            rows,
            columns,
            row_dir,
            col_dir,
            pixel_spacing: [spacing[1], spacing[0]],
            slice_spacing: spacing[2],
            positions,
            locations,
        }
    }

    /// The source grid itself: one frame per slice, no margins.
    pub fn of_grid(volume: &Volume) -> Self {
        let [n_i, n_j, _] = volume.shape();
        Self::new(volume, [0.0, 0.0], n_j, n_i)
    }

    /// Patient Orientation: direction of the rows, then of the columns.
    pub fn patient_orientation(&self) -> String {
        format!(
            "{}\\{}",
            orientation_letters(self.row_dir),
            orientation_letters(self.col_dir)
        )
    }

    /// Adds the Pixel Measures and Plane Orientation functional groups (the same for every
    /// frame) to a Shared Functional Groups item.
    pub fn put_shared(&self, shared: &mut InMemDicomObject) {
        let mut measures = InMemDicomObject::new_empty();
        put_str(
            &mut measures,
            tags::PIXEL_SPACING,
            VR::DS,
            &ds_multi(&self.pixel_spacing),
        );
        put_str(&mut measures, tags::SLICE_THICKNESS, VR::DS, &ds(self.slice_spacing));
        put_str(
            &mut measures,
            tags::SPACING_BETWEEN_SLICES,
            VR::DS,
            &ds(self.slice_spacing),
        );
        put_seq(shared, tags::PIXEL_MEASURES_SEQUENCE, vec![measures]);
        let mut orientation = InMemDicomObject::new_empty();
        let [a, b] = [self.row_dir, self.col_dir];
        put_str(
            &mut orientation,
            tags::IMAGE_ORIENTATION_PATIENT,
            VR::DS,
            &ds_multi(&[a[0], a[1], a[2], b[0], b[1], b[2]]),
        );
        put_seq(shared, tags::PLANE_ORIENTATION_SEQUENCE, vec![orientation]);
    }

    /// Adds the Plane Position functional group of slice `k` to a Per-frame item.
    pub fn put_position(&self, item: &mut InMemDicomObject, k: usize) {
        let mut position = InMemDicomObject::new_empty();
        put_str(
            &mut position,
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            &ds_multi(&self.positions[k]),
        );
        put_seq(item, tags::PLANE_POSITION_SEQUENCE, vec![position]);
    }
}

/// Frame of Reference module: the source's, so the frames land on the source in any viewer.
pub(crate) fn put_frame_of_reference(obj: &mut InMemDicomObject, inputs: &ReportInputs<'_>, for_uid: &str) {
    put_str(obj, tags::FRAME_OF_REFERENCE_UID, VR::UI, for_uid);
    put_str(
        obj,
        tags::POSITION_REFERENCE_INDICATOR,
        VR::LO,
        &get_str(inputs.source_header, tags::POSITION_REFERENCE_INDICATOR).unwrap_or_default(),
    );
}

/// The Frame of Reference UID an enhanced output needs (its geometry is in the source's frame).
pub(crate) fn required_frame_of_reference(inputs: &ReportInputs<'_>) -> Result<String, ReportError> {
    super::dicom::frame_of_reference(inputs).ok_or_else(|| ReportError::MissingAttribute {
        series_uid: inputs.source.meta.series_uid.clone(),
        attribute: "Frame of Reference UID (the Parametric Map and Segmentation lie on the source grid)",
    })
}

/// The modules every enhanced multi-frame output (Parametric Map, Segmentation) starts with:
/// the common base, Enhanced General Equipment, Frame of Reference, the source series
/// reference, and Instance Number 1 (one instance per series).
pub(crate) fn enhanced_base(
    inputs: &ReportInputs<'_>,
    sop_class_uid: &str,
    sop_instance_uid: &str,
    series: &NewSeries<'_>,
    timestamp: &Timestamp,
    for_uid: &str,
) -> Result<InMemDicomObject, ReportError> {
    let mut obj = common_base(inputs, sop_class_uid, sop_instance_uid, series, timestamp)?;
    put_enhanced_equipment(&mut obj, inputs);
    put_frame_of_reference(&mut obj, inputs, for_uid);
    put_source_series(&mut obj, inputs);
    put_str(&mut obj, tags::INSTANCE_NUMBER, VR::IS, "1");
    Ok(obj)
}

/// Enhanced General Equipment: General Equipment plus a Device Serial Number. The node has no
/// serial number; its Device UID identifies this installation, so it stands in for one.
fn put_enhanced_equipment(obj: &mut InMemDicomObject, inputs: &ReportInputs<'_>) {
    put_str(
        obj,
        tags::DEVICE_SERIAL_NUMBER,
        VR::LO,
        &truncate(&inputs.device.device_uid, 64),
    );
}

/// Content Identification: the label a viewer lists the object under and what it holds.
pub(crate) fn put_content_identification(obj: &mut InMemDicomObject, label: &str, description: &str) {
    put_str(obj, tags::CONTENT_LABEL, VR::CS, label);
    put_str(obj, tags::CONTENT_DESCRIPTION, VR::LO, &truncate(description, 64));
    put_str(obj, tags::CONTENT_CREATOR_NAME, VR::PN, "");
}

/// Multi-frame Dimension module: one organisation whose indices are `(Dimension Index Pointer,
/// Functional Group Pointer, label)`, in the order of each frame's Dimension Index Values.
pub(crate) fn put_dimensions(obj: &mut InMemDicomObject, organisation_uid: &str, indices: &[(Tag, Tag, &str)]) {
    let mut organisation = InMemDicomObject::new_empty();
    put_str(
        &mut organisation,
        tags::DIMENSION_ORGANIZATION_UID,
        VR::UI,
        organisation_uid,
    );
    put_seq(obj, tags::DIMENSION_ORGANIZATION_SEQUENCE, vec![organisation]);
    let items = indices
        .iter()
        .map(|&(pointer, group, label)| {
            let mut item = InMemDicomObject::new_empty();
            put_str(&mut item, tags::DIMENSION_ORGANIZATION_UID, VR::UI, organisation_uid);
            put_tag(&mut item, tags::DIMENSION_INDEX_POINTER, pointer);
            put_tag(&mut item, tags::FUNCTIONAL_GROUP_POINTER, group);
            put_str(&mut item, tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, label);
            item
        })
        .collect();
    put_seq(obj, tags::DIMENSION_INDEX_SEQUENCE, items);
    put_str(obj, tags::DIMENSION_ORGANIZATION_TYPE, VR::CS, "3D");
}

/// Frame Content functional group: the frame's Dimension Index Values.
pub(crate) fn put_frame_content(item: &mut InMemDicomObject, index_values: &[u32]) {
    let mut content = InMemDicomObject::new_empty();
    put_u32s(&mut content, tags::DIMENSION_INDEX_VALUES, index_values);
    put_seq(item, tags::FRAME_CONTENT_SEQUENCE, vec![content]);
}

/// Derivation Image functional group of a frame made from source slice `k`, on the same plane.
pub(crate) fn put_derivation(
    item: &mut InMemDicomObject,
    inputs: &ReportInputs<'_>,
    k: usize,
    code: &Code,
    description: &str,
) {
    let mut source = source_image_item(inputs, k);
    put_str(&mut source, tags::SPATIAL_LOCATIONS_PRESERVED, VR::CS, "YES");
    let mut derivation = InMemDicomObject::new_empty();
    put_str(
        &mut derivation,
        tags::DERIVATION_DESCRIPTION,
        VR::ST,
        &truncate(description, 1024),
    );
    put_seq(&mut derivation, tags::DERIVATION_CODE_SEQUENCE, vec![code_item(code)]);
    put_seq(&mut derivation, tags::SOURCE_IMAGE_SEQUENCE, vec![source]);
    put_seq(item, tags::DERIVATION_IMAGE_SEQUENCE, vec![derivation]);
}

/// Common Instance Reference: the source series and its instances, which the frames' Source
/// Image Sequences point into.
fn put_source_series(obj: &mut InMemDicomObject, inputs: &ReportInputs<'_>) {
    let instances = super::dicom::source_instances(inputs.source)
        .into_iter()
        .map(|s| {
            let mut item = InMemDicomObject::new_empty();
            put_str(&mut item, tags::REFERENCED_SOP_CLASS_UID, VR::UI, &s.sop_class_uid);
            put_str(
                &mut item,
                tags::REFERENCED_SOP_INSTANCE_UID,
                VR::UI,
                &s.sop_instance_uid,
            );
            item
        })
        .collect();
    let mut series = InMemDicomObject::new_empty();
    put_str(
        &mut series,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        &super::dicom::source_series_uid(inputs),
    );
    put_seq(&mut series, tags::REFERENCED_INSTANCE_SEQUENCE, instances);
    put_seq(obj, tags::REFERENCED_SERIES_SEQUENCE, vec![series]);
}

/// Native pixel data of 8 bits or fewer per sample (OB), padded to an even length.
pub(crate) fn put_pixel_bytes(obj: &mut InMemDicomObject, mut bytes: Vec<u8>) {
    if bytes.len() % 2 == 1 {
        bytes.push(0);
    }
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::U8(bytes.into()),
    ));
}
