//! Finding + algorithm + references → one Comprehensive 3D SR (the SOP class that allows
//! SCOORD3D) in a new series of the source study, following TID 1500 Measurement Report as the
//! IHE AI Results profile uses it:
//!
//! ```text
//! CONTAINER (126000, DCM, "Imaging Measurement Report")                       TID 1500
//! ├ HAS CONCEPT MOD CODE Language = en-US                                      TID 1204
//! ├ HAS OBS CONTEXT CODE Observer Type = Device; UIDREF/TEXT device identity   TID 1002/1004
//! ├ HAS CONCEPT MOD CODE Procedure reported = (363679005, SCT, "Imaging procedure")
//! ├ CONTAINS CONTAINER Image Library → Image Library Group → IMAGE per source instance
//! └ CONTAINS CONTAINER Imaging Measurements
//!   └ CONTAINS CONTAINER Measurement Group                                     TID 1410
//!     ├ CONTAINS TEXT Tracking Identifier, UIDREF Tracking Unique Identifier
//!     ├ CONTAINS CODE Finding = FCD type II (99FCDNODE)
//!     ├ HAS CONCEPT MOD CODE Finding Site = Brain; TEXT Algorithm Name/Version/Parameters (TID 4019)
//!     ├ CONTAINS SCOORD3D Image Region = POINT hotspot (LPS mm, source Frame of Reference)
//!     ├ CONTAINS IMAGE Source of Measurement = source slice at the hotspot
//!     ├ CONTAINS NUM Certainty of Finding = probability in %
//!     ├ CONTAINS NUM Decision threshold in % (99FCDNODE)
//!     ├ CONTAINS CODE FCD type II assessment = suspected / not suspected (99FCDNODE)
//!     ├ CONTAINS IMAGE Heatmap overlay = the SC instance (frame) at the hotspot
//!     ├ CONTAINS IMAGE Heatmap parametric map = the Parametric Map (99FCDNODE)
//!     └ CONTAINS IMAGE Referenced Segment = segment 1 of the Segmentation (121191, DCM)
//! ```
//!
//! Completion Flag COMPLETE and Verification Flag UNVERIFIED: a finished document no person has
//! verified. Source instances go into the Current Requested Procedure Evidence Sequence, the SC,
//! Parametric Map and Segmentation instances into the Pertinent Other Evidence Sequence.

use std::collections::{BTreeMap, BTreeSet};

use dicom_core::VR;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::codes::{self, Code};
use super::dicom::{
    NewSeries, code_item, common_base, ds, finish, frame_of_reference, get_str, put_f32s, put_seq, put_str, put_u16,
    source_instances, source_series_uid,
};
use super::{DicomFile, ReportError, ReportInputs, Timestamp, UidGenerator};

/// Comprehensive 3D SR Storage.
pub const COMPREHENSIVE_3D_SR: &str = "1.2.840.10008.5.1.4.1.1.88.34";

/// A reference to an instance the SR points at (e.g. an SC made for the same study).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceRef {
    /// SOP Class UID.
    pub sop_class_uid: String,
    /// SOP Instance UID.
    pub sop_instance_uid: String,
    /// Series Instance UID.
    pub series_uid: String,
    /// Number of frames (1 for single-frame instances).
    pub frames: u32,
}

impl InstanceRef {
    /// The reference to a made object, read from its data set.
    pub fn of(obj: &InMemDicomObject) -> Self {
        let get = |tag| get_str(obj, tag).unwrap_or_default();
        Self {
            sop_class_uid: get(tags::SOP_CLASS_UID),
            sop_instance_uid: get(tags::SOP_INSTANCE_UID),
            series_uid: get(tags::SERIES_INSTANCE_UID),
            frames: get(tags::NUMBER_OF_FRAMES).parse().unwrap_or(1),
        }
    }
}

/// SOP Class, SOP Instance and Series Instance UID of each object the SR in `path` lists as
/// other evidence (the objects made with it).
pub(crate) fn read_evidence(path: &std::path::Path) -> Result<BTreeSet<[String; 3]>, ReportError> {
    let obj = dicom_object::open_file(path).map_err(|source| ReportError::ReadDicom {
        path: path.to_owned(),
        source: Box::new(source),
    })?;
    fn items(obj: &InMemDicomObject, tag: dicom_core::Tag) -> &[InMemDicomObject] {
        obj.get(tag).and_then(|e| e.items()).unwrap_or_default()
    }
    let mut evidence = BTreeSet::new();
    for study in items(&obj, tags::PERTINENT_OTHER_EVIDENCE_SEQUENCE) {
        for series in items(study, tags::REFERENCED_SERIES_SEQUENCE) {
            let series_uid = get_str(series, tags::SERIES_INSTANCE_UID).unwrap_or_default();
            for sop in items(series, tags::REFERENCED_SOP_SEQUENCE) {
                evidence.insert([
                    get_str(sop, tags::REFERENCED_SOP_CLASS_UID).unwrap_or_default(),
                    get_str(sop, tags::REFERENCED_SOP_INSTANCE_UID).unwrap_or_default(),
                    series_uid.clone(),
                ]);
            }
        }
    }
    Ok(evidence)
}

/// The objects made for the same study that the SR points at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Derived {
    /// The key image (orthogonal views through the hotspot).
    pub key_image: Option<InstanceRef>,
    /// The SC instances: one multi-frame instance, or one per source slice in slice order.
    pub sc: Vec<InstanceRef>,
    /// The heatmap's Parametric Map.
    pub pm: Option<InstanceRef>,
    /// The hotspot's Segmentation (suspected studies whose hotspot the overlay colours).
    pub seg: Option<InstanceRef>,
}

impl Derived {
    /// SOP Class, SOP Instance and Series Instance UID of every referenced object.
    pub(crate) fn evidence(&self) -> BTreeSet<[String; 3]> {
        self.all()
            .into_iter()
            .map(|r| [r.sop_class_uid, r.sop_instance_uid, r.series_uid])
            .collect()
    }

    /// Every referenced object: key image, SC, PM, SEG.
    fn all(&self) -> Vec<InstanceRef> {
        self.key_image
            .iter()
            .chain(&self.sc)
            .chain(&self.pm)
            .chain(&self.seg)
            .cloned()
            .collect()
    }
}

/// Builds the SR for `inputs`, referencing the objects in `derived` (empty when none were made).
pub fn structured_report(
    inputs: &ReportInputs<'_>,
    derived: &Derived,
    uids: &mut UidGenerator,
) -> Result<DicomFile, ReportError> {
    let source = inputs.source;
    super::check_inputs(source, inputs.finding)?;
    let series_uid = &source.meta.series_uid;
    let frame_of_reference = frame_of_reference(inputs).ok_or_else(|| ReportError::MissingAttribute {
        series_uid: series_uid.clone(),
        attribute: "Frame of Reference UID (needed for the SCOORD3D hotspot)",
    })?;
    let source_series_uid = source_series_uid(inputs);
    let options = inputs.options;
    let timestamp = options.timestamp.clone().unwrap_or_else(Timestamp::now_utc);
    let sr_series_uid = uids.next_uid();
    let sop_uid = uids.next_uid();
    let tracking_uid = uids.next_uid();
    let mut obj = common_base(
        inputs,
        COMPREHENSIVE_3D_SR,
        &sop_uid,
        &NewSeries {
            uid: &sr_series_uid,
            modality: "SR",
            number: options.series_number_sr,
            description: &options.series_description_sr,
        },
        &timestamp,
    )?;
    let study_uid = get_str(&obj, tags::STUDY_INSTANCE_UID).unwrap_or_default();

    // SOP Common: the private coding scheme.
    let mut scheme = InMemDicomObject::new_empty();
    put_str(
        &mut scheme,
        tags::CODING_SCHEME_DESIGNATOR,
        VR::SH,
        codes::PRIVATE_SCHEME,
    );
    put_str(
        &mut scheme,
        tags::CODING_SCHEME_NAME,
        VR::ST,
        codes::PRIVATE_SCHEME_NAME,
    );
    put_str(
        &mut scheme,
        tags::CODING_SCHEME_RESPONSIBLE_ORGANIZATION,
        VR::ST,
        &inputs.device.manufacturer,
    );
    put_seq(&mut obj, tags::CODING_SCHEME_IDENTIFICATION_SEQUENCE, vec![scheme]);
    // SR Document Series.
    put_seq(&mut obj, tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE, Vec::new());
    // SR Document General.
    put_str(&mut obj, tags::INSTANCE_NUMBER, VR::IS, "1");
    put_str(&mut obj, tags::COMPLETION_FLAG, VR::CS, "COMPLETE");
    put_str(&mut obj, tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED");
    put_seq(&mut obj, tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, Vec::new());
    let source_refs: Vec<InstanceRef> = source_instances(source)
        .into_iter()
        .map(|s| InstanceRef {
            sop_class_uid: s.sop_class_uid.clone(),
            sop_instance_uid: s.sop_instance_uid.clone(),
            series_uid: source_series_uid.clone(),
            frames: 1,
        })
        .collect();
    put_seq(
        &mut obj,
        tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
        evidence(&study_uid, &source_refs),
    );
    if let Some(predecessor) = &options.predecessor {
        put_seq(
            &mut obj,
            tags::PREDECESSOR_DOCUMENTS_SEQUENCE,
            evidence(&study_uid, std::slice::from_ref(predecessor)),
        );
    }
    let others = derived.all();
    if !others.is_empty() {
        put_seq(
            &mut obj,
            tags::PERTINENT_OTHER_EVIDENCE_SEQUENCE,
            evidence(&study_uid, &others),
        );
    }
    // SR Document Content: the root container.
    put_str(&mut obj, tags::VALUE_TYPE, VR::CS, "CONTAINER");
    put_seq(
        &mut obj,
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        vec![code_item(&codes::IMAGING_MEASUREMENT_REPORT)],
    );
    put_str(&mut obj, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    put_seq(&mut obj, tags::CONTENT_TEMPLATE_SEQUENCE, vec![template("1500")]);

    let device = inputs.device;
    let content = [
        code_content("HAS CONCEPT MOD", &codes::LANGUAGE, &codes::ENGLISH_US),
        code_content("HAS OBS CONTEXT", &codes::OBSERVER_TYPE, &codes::DEVICE),
        uidref("HAS OBS CONTEXT", &codes::DEVICE_OBSERVER_UID, &device.device_uid),
        text("HAS OBS CONTEXT", &codes::DEVICE_OBSERVER_NAME, &device.model_name),
        text(
            "HAS OBS CONTEXT",
            &codes::DEVICE_OBSERVER_MANUFACTURER,
            &device.manufacturer,
        ),
        text(
            "HAS OBS CONTEXT",
            &codes::DEVICE_OBSERVER_MODEL_NAME,
            &device.model_name,
        ),
        code_content("HAS CONCEPT MOD", &codes::PROCEDURE_REPORTED, &codes::IMAGING_PROCEDURE),
    ];
    let mut content: Vec<InMemDicomObject> = content.into_iter().flatten().collect();
    // Image Library.
    let library_entries = source_refs.iter().map(|r| image("CONTAINS", None, r, None)).collect();
    let group = container("CONTAINS", &codes::IMAGE_LIBRARY_GROUP, library_entries);
    content.push(container("CONTAINS", &codes::IMAGE_LIBRARY, vec![group]));
    if inputs.finding.suspected {
        // Imaging Measurements → one measurement group: the FCD finding and where it is.
        let group = measurement_group(inputs, &frame_of_reference, &tracking_uid, &source_series_uid, derived);
        let mut group = container("CONTAINS", &codes::MEASUREMENT_GROUP, group);
        put_seq(&mut group, tags::CONTENT_TEMPLATE_SEQUENCE, vec![template("1410")]);
        content.push(container("CONTAINS", &codes::IMAGING_MEASUREMENTS, vec![group]));
    } else {
        // Not suspected: the assessment alone, with no finding and no location.
        content.push(container(
            "CONTAINS",
            &codes::QUALITATIVE_EVALUATIONS,
            negative_assessment(inputs),
        ));
    }
    put_seq(&mut obj, tags::CONTENT_SEQUENCE, content);
    finish(obj, &sop_uid)
}

/// Algorithm Identification (TID 4019): name, version, parameters and the package's SHA-256.
fn algorithm_identification(inputs: &ReportInputs<'_>) -> Vec<Option<InMemDicomObject>> {
    let algorithm = inputs.algorithm;
    vec![
        text("HAS CONCEPT MOD", &codes::ALGORITHM_NAME, &algorithm.name),
        text("HAS CONCEPT MOD", &codes::ALGORITHM_VERSION, &algorithm.version),
        text("HAS CONCEPT MOD", &codes::ALGORITHM_PARAMETERS, &algorithm.parameters),
        text(
            "HAS CONCEPT MOD",
            &codes::ALGORITHM_PARAMETERS,
            &format!("model package SHA-256 {}", algorithm.sha256),
        )
        .filter(|_| !algorithm.sha256.is_empty()),
    ]
}

/// Probability and threshold in percent, rounded to 0.1 % (more digits would claim a precision
/// the model does not have).
fn percent(p: f64) -> f64 {
    (p * 1000.0).round() / 10.0
}

/// The TID 1410 group of a suspected study: finding, hotspot point, probability and decision.
fn measurement_group(
    inputs: &ReportInputs<'_>,
    frame_of_reference: &str,
    tracking_uid: &str,
    source_series_uid: &str,
    derived: &Derived,
) -> Vec<InMemDicomObject> {
    let finding = inputs.finding;
    let mut items: Vec<Option<InMemDicomObject>> = vec![
        text("CONTAINS", &codes::TRACKING_IDENTIFIER, "FCD type II hotspot"),
        uidref("CONTAINS", &codes::TRACKING_UID, tracking_uid),
        code_content("CONTAINS", &codes::FINDING, &codes::FCD_TYPE_II),
        code_content("HAS CONCEPT MOD", &codes::FINDING_SITE, &codes::BRAIN),
    ];
    items.extend(algorithm_identification(inputs));
    match finding.hotspot() {
        Some(hotspot) => {
            // The hotspot point, and the source slice it lies on.
            let mut point = content_item("CONTAINS", "SCOORD3D", &codes::IMAGE_REGION);
            put_str(&mut point, tags::GRAPHIC_TYPE, VR::CS, "POINT");
            let xyz = hotspot.lps.map(|v| v as f32);
            put_f32s(&mut point, tags::GRAPHIC_DATA, &xyz);
            put_str(
                &mut point,
                tags::REFERENCED_FRAME_OF_REFERENCE_UID,
                VR::UI,
                frame_of_reference,
            );
            items.push(Some(point));
            let slice = &inputs.source.slices[hotspot.slice];
            let multiframe_source = super::dicom::is_multiframe_source(inputs, &slice.sop_instance_uid);
            let slice_ref = InstanceRef {
                sop_class_uid: slice.sop_class_uid.clone(),
                sop_instance_uid: slice.sop_instance_uid.clone(),
                series_uid: source_series_uid.to_owned(),
                frames: 1,
            };
            items.push(Some(image(
                "CONTAINS",
                Some(&codes::SOURCE_OF_MEASUREMENT),
                &slice_ref,
                multiframe_source.then_some(slice.frame + 1),
            )));
        }
        None => items.push(text(
            "CONTAINS",
            &codes::NO_HOTSPOT,
            finding.no_hotspot_reason().unwrap_or_default(),
        )),
    }
    items.push(Some(num(
        &codes::CERTAINTY_OF_FINDING,
        percent(finding.probability),
        &codes::PERCENT,
    )));
    items.push(Some(num(
        &codes::DECISION_THRESHOLD,
        percent(finding.threshold),
        &codes::PERCENT,
    )));
    items.push(code_content("CONTAINS", &codes::FCD_ASSESSMENT, &codes::SUSPECTED));
    // The SC showing the hotspot: the frame of a multi-frame SC, or the single-frame instance.
    if let Some(hotspot) = finding.hotspot() {
        let overlay = match derived.sc.as_slice() {
            [one] if one.frames > 1 => Some((one, Some(hotspot.slice as u32 + 1))),
            many => many.get(hotspot.slice).map(|r| (r, None)),
        };
        if let Some((r, frame)) = overlay {
            items.push(Some(image("CONTAINS", Some(&codes::HEATMAP_OVERLAY), r, frame)));
        }
    }
    if let Some(key) = &derived.key_image {
        items.push(Some(image("CONTAINS", Some(&codes::KEY_IMAGE), key, None)));
    }
    if let Some(pm) = &derived.pm {
        items.push(Some(image("CONTAINS", Some(&codes::HEATMAP_VALUES), pm, None)));
    }
    if let Some(seg) = &derived.seg {
        // Its one segment (Image Reference Macro: Referenced Segment Number in the SOP item).
        let mut sop = sop_ref(seg, None);
        put_u16(&mut sop, tags::REFERENCED_SEGMENT_NUMBER, 1);
        items.push(Some(image_of("CONTAINS", Some(&codes::REFERENCED_SEGMENT), sop)));
    }
    items.into_iter().flatten().collect()
}

/// The evaluation of a study below the threshold: the assessment "not suspected" with the
/// algorithm that made it, the model probability and the threshold. No finding, no location.
fn negative_assessment(inputs: &ReportInputs<'_>) -> Vec<InMemDicomObject> {
    let finding = inputs.finding;
    let mut assessment = content_item("CONTAINS", "CODE", &codes::FCD_ASSESSMENT);
    put_seq(
        &mut assessment,
        tags::CONCEPT_CODE_SEQUENCE,
        vec![code_item(&codes::NOT_SUSPECTED)],
    );
    let mut children: Vec<InMemDicomObject> = algorithm_identification(inputs).into_iter().flatten().collect();
    children.push(num(
        &codes::FCD_PROBABILITY,
        percent(finding.probability),
        &codes::PERCENT,
    ));
    children.push(num(
        &codes::DECISION_THRESHOLD,
        percent(finding.threshold),
        &codes::PERCENT,
    ));
    // The measurements qualify the assessment: HAS PROPERTIES, as TID 1500's evaluations do.
    for child in children
        .iter_mut()
        .filter(|c| get_str(c, tags::VALUE_TYPE).as_deref() == Some("NUM"))
    {
        put_str(child, tags::RELATIONSHIP_TYPE, VR::CS, "HAS PROPERTIES");
    }
    put_seq(&mut assessment, tags::CONTENT_SEQUENCE, children);
    vec![assessment]
}

/// Hierarchical SOP Instance Reference items: one per study (here one), grouped by series.
fn evidence(study_uid: &str, refs: &[InstanceRef]) -> Vec<InMemDicomObject> {
    let mut by_series: BTreeMap<&str, Vec<&InstanceRef>> = BTreeMap::new();
    for r in refs {
        by_series.entry(r.series_uid.as_str()).or_default().push(r);
    }
    let series = by_series
        .into_iter()
        .map(|(series_uid, refs)| {
            let mut item = InMemDicomObject::new_empty();
            put_str(&mut item, tags::SERIES_INSTANCE_UID, VR::UI, series_uid);
            let sops = refs.iter().map(|r| sop_ref(r, None)).collect();
            put_seq(&mut item, tags::REFERENCED_SOP_SEQUENCE, sops);
            item
        })
        .collect();
    let mut study = InMemDicomObject::new_empty();
    put_str(&mut study, tags::STUDY_INSTANCE_UID, VR::UI, study_uid);
    put_seq(&mut study, tags::REFERENCED_SERIES_SEQUENCE, series);
    vec![study]
}

fn sop_ref(r: &InstanceRef, frame: Option<u32>) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_str(&mut item, tags::REFERENCED_SOP_CLASS_UID, VR::UI, &r.sop_class_uid);
    put_str(
        &mut item,
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        &r.sop_instance_uid,
    );
    if let Some(frame) = frame {
        put_str(&mut item, tags::REFERENCED_FRAME_NUMBER, VR::IS, &frame.to_string());
    }
    item
}

fn template(id: &str) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_str(&mut item, tags::MAPPING_RESOURCE, VR::CS, "DCMR");
    put_str(&mut item, tags::TEMPLATE_IDENTIFIER, VR::CS, id);
    item
}

fn content_item(relationship: &str, value_type: &str, concept: &Code) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_str(&mut item, tags::RELATIONSHIP_TYPE, VR::CS, relationship);
    put_str(&mut item, tags::VALUE_TYPE, VR::CS, value_type);
    put_seq(&mut item, tags::CONCEPT_NAME_CODE_SEQUENCE, vec![code_item(concept)]);
    item
}

fn container(relationship: &str, concept: &Code, children: Vec<InMemDicomObject>) -> InMemDicomObject {
    let mut item = content_item(relationship, "CONTAINER", concept);
    put_str(&mut item, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    put_seq(&mut item, tags::CONTENT_SEQUENCE, children);
    item
}

/// A TEXT item, or nothing for empty text (optional rows are left out rather than empty).
fn text(relationship: &str, concept: &Code, value: &str) -> Option<InMemDicomObject> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    let mut item = content_item(relationship, "TEXT", concept);
    put_str(&mut item, tags::TEXT_VALUE, VR::UT, value);
    Some(item)
}

fn uidref(relationship: &str, concept: &Code, uid: &str) -> Option<InMemDicomObject> {
    if uid.is_empty() {
        return None;
    }
    let mut item = content_item(relationship, "UIDREF", concept);
    put_str(&mut item, tags::UID, VR::UI, uid);
    Some(item)
}

fn code_content(relationship: &str, concept: &Code, value: &Code) -> Option<InMemDicomObject> {
    let mut item = content_item(relationship, "CODE", concept);
    put_seq(&mut item, tags::CONCEPT_CODE_SEQUENCE, vec![code_item(value)]);
    Some(item)
}

fn num(concept: &Code, value: f64, unit: &Code) -> InMemDicomObject {
    let mut item = content_item("CONTAINS", "NUM", concept);
    let mut measured = InMemDicomObject::new_empty();
    put_seq(
        &mut measured,
        tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
        vec![code_item(unit)],
    );
    put_str(&mut measured, tags::NUMERIC_VALUE, VR::DS, &ds(value));
    put_seq(&mut item, tags::MEASURED_VALUE_SEQUENCE, vec![measured]);
    item
}

/// An IMAGE item (no concept name in the image library).
fn image(relationship: &str, concept: Option<&Code>, r: &InstanceRef, frame: Option<u32>) -> InMemDicomObject {
    image_of(relationship, concept, sop_ref(r, frame))
}

/// An IMAGE item referencing the Referenced SOP Sequence item `sop`.
fn image_of(relationship: &str, concept: Option<&Code>, sop: InMemDicomObject) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_str(&mut item, tags::RELATIONSHIP_TYPE, VR::CS, relationship);
    put_str(&mut item, tags::VALUE_TYPE, VR::CS, "IMAGE");
    if let Some(concept) = concept {
        put_seq(&mut item, tags::CONCEPT_NAME_CODE_SEQUENCE, vec![code_item(concept)]);
    }
    put_seq(&mut item, tags::REFERENCED_SOP_SEQUENCE, vec![sop]);
    item
}
