//! Coded concepts written into the outputs, with their coding schemes.
//!
//! DCM codes are from PS3.16 Annex D; SCT and UCUM codes are the ones PS3.16 templates and
//! context groups name (checked against the CID tables pydicom 3.0.2 generates from PS3.16).
//! No SNOMED CT concept for "focal cortical dysplasia type II" could be verified while this was
//! written, so the finding and the decision use a private coding scheme (`99FCDNODE`), declared
//! in the SR's Coding Scheme Identification Sequence; the Segmentation, whose segment codes must
//! come from the standard's context groups, names the region with the nearest standard concepts.

/// A coded concept (Code Value, Coding Scheme Designator, Code Meaning).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Code {
    /// Code Value (at most 16 characters).
    pub value: &'static str,
    /// Coding Scheme Designator.
    pub scheme: &'static str,
    /// Code Meaning (at most 64 characters).
    pub meaning: &'static str,
}

const fn code(value: &'static str, scheme: &'static str, meaning: &'static str) -> Code {
    Code { value, scheme, meaning }
}

/// Designator of this node's private coding scheme.
pub const PRIVATE_SCHEME: &str = "99FCDNODE";
/// Name of the private coding scheme (Coding Scheme Identification Sequence).
pub const PRIVATE_SCHEME_NAME: &str = "fcdnode private codes";

/// Result label written when the decision is positive.
pub const LABEL_SUSPECTED: &str = "FCD type II suspected";
/// Result label written when the decision is negative.
pub const LABEL_NOT_SUSPECTED: &str = "FCD type II not suspected";

// TID 1500 Measurement Report.
pub const IMAGING_MEASUREMENT_REPORT: Code = code("126000", "DCM", "Imaging Measurement Report");
pub const LANGUAGE: Code = code("121049", "DCM", "Language of Content Item and Descendants");
pub const ENGLISH_US: Code = code("en-US", "RFC5646", "English (United States)");
pub const PROCEDURE_REPORTED: Code = code("121058", "DCM", "Procedure reported");
pub const IMAGING_PROCEDURE: Code = code("363679005", "SCT", "Imaging procedure");
pub const IMAGE_LIBRARY: Code = code("111028", "DCM", "Image Library");
pub const IMAGE_LIBRARY_GROUP: Code = code("126200", "DCM", "Image Library Group");
pub const IMAGING_MEASUREMENTS: Code = code("126010", "DCM", "Imaging Measurements");
pub const MEASUREMENT_GROUP: Code = code("125007", "DCM", "Measurement Group");
// TID 1002 Observer Context, TID 1004 Device Observer Identifying Attributes.
pub const OBSERVER_TYPE: Code = code("121005", "DCM", "Observer Type");
pub const DEVICE: Code = code("121007", "DCM", "Device");
pub const DEVICE_OBSERVER_UID: Code = code("121012", "DCM", "Device Observer UID");
pub const DEVICE_OBSERVER_NAME: Code = code("121013", "DCM", "Device Observer Name");
pub const DEVICE_OBSERVER_MANUFACTURER: Code = code("121014", "DCM", "Device Observer Manufacturer");
pub const DEVICE_OBSERVER_MODEL_NAME: Code = code("121015", "DCM", "Device Observer Model Name");
// TID 4019 Algorithm Identification.
pub const ALGORITHM_NAME: Code = code("111001", "DCM", "Algorithm Name");
pub const ALGORITHM_VERSION: Code = code("111003", "DCM", "Algorithm Version");
pub const ALGORITHM_PARAMETERS: Code = code("111002", "DCM", "Algorithm Parameters");
// TID 1410 Planar ROI Measurements and Qualitative Evaluations.
pub const TRACKING_IDENTIFIER: Code = code("112039", "DCM", "Tracking Identifier");
pub const TRACKING_UID: Code = code("112040", "DCM", "Tracking Unique Identifier");
pub const FINDING: Code = code("121071", "DCM", "Finding");
pub const FINDING_SITE: Code = code("363698007", "SCT", "Finding Site");
pub const BRAIN: Code = code("12738006", "SCT", "Brain");
pub const IMAGE_REGION: Code = code("111030", "DCM", "Image Region");
pub const SOURCE_OF_MEASUREMENT: Code = code("121112", "DCM", "Source of Measurement");
/// The probability, as CAD templates (TID 4104 row 12) write it: a NUM in percent.
pub const CERTAINTY_OF_FINDING: Code = code("111012", "DCM", "Certainty of Finding");
pub const PERCENT: Code = code("%", "UCUM", "Percent");
// Private codes (no verified standard concept).
pub const FCD_TYPE_II: Code = code("FCD2", PRIVATE_SCHEME, "Focal cortical dysplasia type II");
pub const FCD_ASSESSMENT: Code = code("FCD2-ASSESS", PRIVATE_SCHEME, "FCD type II assessment");
pub const SUSPECTED: Code = code("FCD2-SUSP", PRIVATE_SCHEME, LABEL_SUSPECTED);
pub const NOT_SUSPECTED: Code = code("FCD2-NOSUSP", PRIVATE_SCHEME, LABEL_NOT_SUSPECTED);
pub const DECISION_THRESHOLD: Code = code("FCD2-THRESH", PRIVATE_SCHEME, "Decision threshold");
pub const HEATMAP_OVERLAY: Code = code("FCD2-HEATMAP", PRIVATE_SCHEME, "Heatmap overlay");
pub const FCD_PROBABILITY: Code = code("FCD2-PROB", PRIVATE_SCHEME, "Model probability of FCD type II");
pub const NO_HOTSPOT: Code = code("FCD2-NOHOT", PRIVATE_SCHEME, "Hotspot not reported");
pub const KEY_IMAGE: Code = code(
    "FCD2-KEYIMG",
    PRIVATE_SCHEME,
    "Key image: orthogonal views of the hotspot",
);
pub const HEATMAP_VALUES: Code = code("FCD2-PMAP", PRIVATE_SCHEME, "Heatmap parametric map");
/// An IMAGE item pointing at a segment of a Segmentation instance, as TID 1411 writes it.
pub const REFERENCED_SEGMENT: Code = code("121191", "DCM", "Referenced Segment");
/// TID 1500's container for evaluations that are not measurements (a negative assessment).
pub const QUALITATIVE_EVALUATIONS: Code = code("C0034375", "UMLS", "Qualitative Evaluations");
// Contributing Equipment (CID 7005) and image derivation (CID 7202).
pub const PROCESSING_EQUIPMENT: Code = code("109102", "DCM", "Processing Equipment");
pub const SOURCE_IMAGE_FOR_PROCESSING: Code = code("121322", "DCM", "Source image for image processing operation");
/// Derivation of the Parametric Map's frames (CID 7203 has no entry for a model's attention).
pub const UNSPECIFIED_CALCULATION: Code = code("112187", "DCM", "Unspecified method of calculation");
/// Derivation of the Segmentation's frames (CID 7203).
pub const SEGMENTATION: Code = code("113076", "DCM", "Segmentation");
// Parametric Map: the values have no unit (CID 7181, UCUM "1").
pub const NO_UNITS: Code = code("1", "UCUM", "no units");
// Segmentation: the hotspot region's category (CID 7150) and type (CID 7194, "Morphologically
// Abnormal Structure Segmentation Property Type", which names the brain itself, so no Anatomic
// Region is needed), and the algorithm's family (CID 7162).
pub const MORPHOLOGICALLY_ABNORMAL_STRUCTURE: Code = code("49755003", "SCT", "Morphologically Abnormal Structure");
pub const LESION_OF_BRAIN: Code = code("301766008", "SCT", "Lesion of Brain");
pub const ARTIFICIAL_INTELLIGENCE: Code = code("123110", "DCM", "Artificial Intelligence");
