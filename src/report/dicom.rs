//! Data-set building blocks shared by the SC, PM, SEG and SR writers: element helpers, the modules
//! copied from the source, equipment, file meta.

use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;

use super::codes::{self, Code};
use super::{DicomFile, ReportError, ReportInputs, Timestamp};
use crate::assemble::{Assembled, SliceSource};
use crate::dicom_build::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};

pub(crate) use crate::dicom_build::{
    ds, ds_multi, get_str, put_f32s, put_fds, put_seq, put_str, put_tag, put_u16, put_u32s, truncate,
};

pub(crate) const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

/// A code sequence item (Code Value or Long Code Value, scheme, meaning).
pub(crate) fn code_item(code: &Code) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    if code.value.len() <= 16 {
        put_str(&mut item, tags::CODE_VALUE, VR::SH, code.value);
    } else {
        put_str(&mut item, tags::LONG_CODE_VALUE, VR::UC, code.value);
    }
    put_str(&mut item, tags::CODING_SCHEME_DESIGNATOR, VR::SH, code.scheme);
    put_str(&mut item, tags::CODE_MEANING, VR::LO, code.meaning);
    item
}

/// Attributes copied verbatim from the source header when present: Patient, Clinical Trial
/// Subject, General Study, Patient Study and Clinical Trial Study modules.
const COPIED: &[Tag] = &[
    tags::SPECIFIC_CHARACTER_SET,
    tags::TIMEZONE_OFFSET_FROM_UTC,
    // Patient
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::ISSUER_OF_PATIENT_ID,
    tags::ISSUER_OF_PATIENT_ID_QUALIFIERS_SEQUENCE,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_BIRTH_TIME,
    tags::PATIENT_SEX,
    tags::OTHER_PATIENT_I_DS_SEQUENCE,
    tags::OTHER_PATIENT_NAMES,
    tags::PATIENT_COMMENTS,
    tags::PATIENT_IDENTITY_REMOVED,
    tags::DEIDENTIFICATION_METHOD,
    tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE,
    tags::QUALITY_CONTROL_SUBJECT,
    // Clinical Trial Subject
    tags::CLINICAL_TRIAL_SPONSOR_NAME,
    tags::CLINICAL_TRIAL_PROTOCOL_ID,
    tags::CLINICAL_TRIAL_PROTOCOL_NAME,
    tags::CLINICAL_TRIAL_SITE_ID,
    tags::CLINICAL_TRIAL_SITE_NAME,
    tags::CLINICAL_TRIAL_SUBJECT_ID,
    tags::CLINICAL_TRIAL_SUBJECT_READING_ID,
    // General Study
    tags::STUDY_INSTANCE_UID,
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::REFERRING_PHYSICIAN_IDENTIFICATION_SEQUENCE,
    tags::STUDY_ID,
    tags::ACCESSION_NUMBER,
    tags::ISSUER_OF_ACCESSION_NUMBER_SEQUENCE,
    tags::STUDY_DESCRIPTION,
    tags::PHYSICIANS_OF_RECORD,
    tags::NAME_OF_PHYSICIANS_READING_STUDY,
    tags::PROCEDURE_CODE_SEQUENCE,
    tags::REASON_FOR_PERFORMED_PROCEDURE_CODE_SEQUENCE,
    // Patient Study
    tags::ADMITTING_DIAGNOSES_DESCRIPTION,
    tags::PATIENT_AGE,
    tags::PATIENT_SIZE,
    tags::PATIENT_WEIGHT,
    // Clinical Trial Study
    tags::CLINICAL_TRIAL_TIME_POINT_ID,
    tags::CLINICAL_TRIAL_TIME_POINT_DESCRIPTION,
];

/// Type 2 attributes of the copied modules, written empty when the source lacks them.
const TYPE2: &[(Tag, VR)] = &[
    (tags::PATIENT_NAME, VR::PN),
    (tags::PATIENT_ID, VR::LO),
    (tags::PATIENT_BIRTH_DATE, VR::DA),
    (tags::PATIENT_SEX, VR::CS),
    (tags::STUDY_DATE, VR::DA),
    (tags::STUDY_TIME, VR::TM),
    (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
    (tags::STUDY_ID, VR::SH),
    (tags::ACCESSION_NUMBER, VR::SH),
];

/// Patient and study modules from the source, SOP Common, the new series and the equipment:
/// everything an SC or SR instance shares. Returns the object with SOP Class/Instance set.
/// The new series an output instance belongs to.
pub(crate) struct NewSeries<'a> {
    pub uid: &'a str,
    pub modality: &'a str,
    pub number: u32,
    pub description: &'a str,
}

pub(crate) fn common_base(
    inputs: &ReportInputs<'_>,
    sop_class_uid: &str,
    sop_instance_uid: &str,
    series: &NewSeries<'_>,
    timestamp: &Timestamp,
) -> Result<InMemDicomObject, ReportError> {
    let header = inputs.source_header;
    let mut obj = InMemDicomObject::new_empty();
    for tag in COPIED {
        if let Some(elem) = header.get(*tag) {
            obj.put(elem.clone());
        }
    }
    for (tag, vr) in TYPE2 {
        if obj.get(*tag).is_none() {
            put_str(&mut obj, *tag, *vr, "");
        }
    }
    if get_str(&obj, tags::STUDY_INSTANCE_UID).is_none() {
        let study_uid = &inputs.source.meta.study_uid;
        if study_uid.is_empty() {
            return Err(ReportError::MissingAttribute {
                series_uid: inputs.source.meta.series_uid.clone(),
                attribute: "Study Instance UID",
            });
        }
        put_str(&mut obj, tags::STUDY_INSTANCE_UID, VR::UI, study_uid);
    }
    // Our own text may need more than the source's repertoire.
    let device = inputs.device;
    let ours = [
        &device.manufacturer,
        &device.model_name,
        &device.software_versions,
        &inputs.algorithm.name,
        &inputs.algorithm.version,
        &inputs.algorithm.parameters,
    ];
    if obj.get(tags::SPECIFIC_CHARACTER_SET).is_none() && ours.iter().any(|s| !s.is_ascii()) {
        put_str(&mut obj, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
    }
    // SOP Common
    put_str(&mut obj, tags::SOP_CLASS_UID, VR::UI, sop_class_uid);
    put_str(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, sop_instance_uid);
    put_str(&mut obj, tags::INSTANCE_CREATION_DATE, VR::DA, &timestamp.date);
    put_str(&mut obj, tags::INSTANCE_CREATION_TIME, VR::TM, &timestamp.time);
    put_str(&mut obj, tags::INSTANCE_CREATOR_UID, VR::UI, &device.device_uid);
    put_seq(
        &mut obj,
        tags::CONTRIBUTING_EQUIPMENT_SEQUENCE,
        vec![contributing_equipment(inputs, timestamp)],
    );
    // General / SR Document Series
    put_str(&mut obj, tags::MODALITY, VR::CS, series.modality);
    put_str(&mut obj, tags::SERIES_INSTANCE_UID, VR::UI, series.uid);
    put_str(&mut obj, tags::SERIES_NUMBER, VR::IS, &series.number.to_string());
    put_str(&mut obj, tags::SERIES_DATE, VR::DA, &timestamp.date);
    put_str(&mut obj, tags::SERIES_TIME, VR::TM, &timestamp.time);
    put_str(
        &mut obj,
        tags::SERIES_DESCRIPTION,
        VR::LO,
        &truncate(series.description, 64),
    );
    if series.modality != "SR" {
        // Laterality is conditional on a paired body part: copy both; the node only reads head
        // MR, so an unset Body Part Examined becomes HEAD (unpaired, no Laterality needed).
        if let Some(elem) = header.get(tags::LATERALITY) {
            obj.put(elem.clone());
        }
        match header.get(tags::BODY_PART_EXAMINED) {
            Some(elem) if get_str(header, tags::BODY_PART_EXAMINED).is_some() => {
                obj.put(elem.clone());
            }
            _ => put_str(&mut obj, tags::BODY_PART_EXAMINED, VR::CS, "HEAD"),
        }
    }
    // General Equipment
    put_str(
        &mut obj,
        tags::MANUFACTURER,
        VR::LO,
        &truncate(&device.manufacturer, 64),
    );
    if let Some(name) = &device.institution_name {
        put_str(&mut obj, tags::INSTITUTION_NAME, VR::LO, &truncate(name, 64));
    }
    put_str(
        &mut obj,
        tags::MANUFACTURER_MODEL_NAME,
        VR::LO,
        &truncate(&device.model_name, 64),
    );
    put_str(
        &mut obj,
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        &truncate(&device.software_versions, 64),
    );
    put_str(&mut obj, tags::CONTENT_DATE, VR::DA, &timestamp.date);
    put_str(&mut obj, tags::CONTENT_TIME, VR::TM, &timestamp.time);
    Ok(obj)
}

/// The Contributing Equipment item naming this node (IHE AIR; the loop guard reads Device UID).
fn contributing_equipment(inputs: &ReportInputs<'_>, timestamp: &Timestamp) -> InMemDicomObject {
    let device = inputs.device;
    let mut item = InMemDicomObject::new_empty();
    put_seq(
        &mut item,
        tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
        vec![code_item(&codes::PROCESSING_EQUIPMENT)],
    );
    put_str(
        &mut item,
        tags::MANUFACTURER,
        VR::LO,
        &truncate(&device.manufacturer, 64),
    );
    if let Some(name) = &device.institution_name {
        put_str(&mut item, tags::INSTITUTION_NAME, VR::LO, &truncate(name, 64));
    }
    put_str(
        &mut item,
        tags::MANUFACTURER_MODEL_NAME,
        VR::LO,
        &truncate(&device.model_name, 64),
    );
    put_str(
        &mut item,
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        &truncate(&device.software_versions, 64),
    );
    put_str(&mut item, tags::DEVICE_UID, VR::UI, &device.device_uid);
    put_str(
        &mut item,
        tags::CONTRIBUTION_DATE_TIME,
        VR::DT,
        &format!("{}{}", timestamp.date, timestamp.time),
    );
    put_str(
        &mut item,
        tags::CONTRIBUTION_DESCRIPTION,
        VR::ST,
        &format!("AI analysis by {} {}", inputs.algorithm.name, inputs.algorithm.version),
    );
    item
}

/// Source Image Sequence items for every source slice (instance, frame for multi-frame
/// sources, purpose "source image for image processing operation").
pub(crate) fn source_image_items(inputs: &ReportInputs<'_>, slices: &[usize]) -> Vec<InMemDicomObject> {
    slices.iter().map(|&k| source_image_item(inputs, k)).collect()
}

/// One Source Image Sequence item for source slice `k`.
pub(crate) fn source_image_item(inputs: &ReportInputs<'_>, k: usize) -> InMemDicomObject {
    let s = &inputs.source.slices[k];
    let mut item = InMemDicomObject::new_empty();
    put_str(&mut item, tags::REFERENCED_SOP_CLASS_UID, VR::UI, &s.sop_class_uid);
    put_str(
        &mut item,
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        &s.sop_instance_uid,
    );
    if is_multiframe_source(inputs, &s.sop_instance_uid) {
        put_str(
            &mut item,
            tags::REFERENCED_FRAME_NUMBER,
            VR::IS,
            &(s.frame + 1).to_string(),
        );
    }
    put_seq(
        &mut item,
        tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
        vec![code_item(&codes::SOURCE_IMAGE_FOR_PROCESSING)],
    );
    item
}

/// Whether several slices come from this instance (an enhanced multi-frame source).
pub(crate) fn is_multiframe_source(inputs: &ReportInputs<'_>, sop_instance_uid: &str) -> bool {
    inputs
        .source
        .slices
        .iter()
        .filter(|s| s.sop_instance_uid == sop_instance_uid)
        .take(2)
        .count()
        > 1
}

/// Patient Orientation letters (L/R, P/A, H/F by decreasing weight) of an LPS direction.
pub(crate) fn orientation_letters(dir: [f64; 3]) -> String {
    let mut parts: Vec<(f64, char)> = dir
        .iter()
        .zip([('L', 'R'), ('P', 'A'), ('H', 'F')])
        .filter(|(v, _)| v.abs() > 1e-3)
        .map(|(v, (pos, neg))| (v.abs(), if *v > 0.0 { pos } else { neg }))
        .collect();
    parts.sort_by(|a, b| b.0.total_cmp(&a.0));
    parts.into_iter().map(|(_, c)| c).collect()
}

/// Wraps a data set in a file meta group (explicit VR little endian).
pub(crate) fn finish(obj: InMemDicomObject, sop_instance_uid: &str) -> Result<DicomFile, ReportError> {
    obj.with_meta(
        FileMetaTableBuilder::new()
            .transfer_syntax(EXPLICIT_VR_LE)
            .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
            .implementation_version_name(IMPLEMENTATION_VERSION_NAME),
    )
    .map_err(|source| ReportError::Meta {
        sop_instance_uid: sop_instance_uid.to_owned(),
        source: Box::new(source),
    })
}

/// The source instances in slice order, each once (an enhanced source is one instance).
pub(crate) fn source_instances(source: &Assembled) -> Vec<&SliceSource> {
    let mut seen = std::collections::HashSet::new();
    source
        .slices
        .iter()
        .filter(|s| seen.insert(s.sop_instance_uid.as_str()))
        .collect()
}

/// Series Instance UID of the source series: from the header, else from the assembled series.
pub(crate) fn source_series_uid(inputs: &ReportInputs<'_>) -> String {
    get_str(inputs.source_header, tags::SERIES_INSTANCE_UID).unwrap_or_else(|| inputs.source.meta.series_uid.clone())
}

/// Modality of the source series (the image outputs' series take it), OT when unknown.
pub(crate) fn source_modality(inputs: &ReportInputs<'_>) -> String {
    get_str(inputs.source_header, tags::MODALITY)
        .or_else(|| (!inputs.source.meta.modality.is_empty()).then(|| inputs.source.meta.modality.clone()))
        .unwrap_or_else(|| "OT".into())
}

/// Frame of Reference UID from the header, else from the assembled series.
pub(crate) fn frame_of_reference(inputs: &ReportInputs<'_>) -> Option<String> {
    get_str(inputs.source_header, tags::FRAME_OF_REFERENCE_UID).or_else(|| {
        let uid = &inputs.source.meta.frame_of_reference_uid;
        (!uid.is_empty()).then(|| uid.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ds_fits_sixteen_characters() {
        for v in [0.0, -0.0, 1.0, -123.456789012345, 1e-9, 12345678.125, 0.1 + 0.2] {
            let s = ds(v);
            assert!(s.len() <= 16, "{v} → {s}");
            let back: f64 = s.parse().unwrap();
            assert!((back - v).abs() <= 1e-6 * v.abs().max(1.0), "{v} → {s}");
        }
        assert_eq!(ds(2.5), "2.5");
        assert_eq!(ds(-0.0), "0");
    }

    #[test]
    fn orientation_letters_follow_lps() {
        assert_eq!(orientation_letters([1.0, 0.0, 0.0]), "L");
        assert_eq!(orientation_letters([0.0, -1.0, 0.0]), "A");
        assert_eq!(orientation_letters([0.0, 0.6, -0.8]), "FP");
    }
}
