//! Everything above → DICOM objects and a summary; owns the Secondary Capture overlay, the
//! Structured Report, `result.json` and the PNG preview.
//!
//! - [`secondary_capture`]: the heatmap (values in [0, 1] on the source grid) blended over the
//!   windowed source slices, as one Multi-frame True Color Secondary Capture instance (default) or
//!   one Secondary Capture instance per slice, with a burnt-in legend.
//! - [`structured_report`]: a Comprehensive 3D SR following TID 1500 (the IHE AI Results
//!   pattern): device observer, algorithm identification (TID 4019), the finding, the
//!   probability as a numeric measurement and the hotspot as an SCOORD3D point (LPS mm).
//! - [`ResultSummary`]: the `result.json` written next to the objects; [`preview_png`]: a
//!   montage of slices around the hotspot.
//!
//! Both DICOM outputs join the source study in new series, copy the patient and study modules
//! from the source header and carry a Contributing Equipment Sequence naming this node, so a
//! PACS, a viewer and the node itself can tell them from acquired images ([`is_own_output`]).

mod codes;
mod dicom;
mod render;
pub mod sc;
pub mod sr;

use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::assemble::Assembled;
use crate::volume::Volume;

pub use codes::Code;
pub use render::preview_png;
pub use sc::secondary_capture;
pub use sr::{InstanceRef, structured_report};

/// Why an output could not be made or written; variants name the series, file or field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// The source volume has no voxels or no slice provenance.
    #[error("series {series_uid}: empty source ({what})")]
    EmptySource { series_uid: String, what: String },
    /// The heatmap is not on the source grid.
    #[error(
        "series {series_uid}: heatmap grid {heatmap_shape:?} does not match the source grid \
         {source_shape:?} (affines differ by {affine_diff_mm:.3e} mm)"
    )]
    GridMismatch {
        series_uid: String,
        heatmap_shape: [usize; 3],
        source_shape: [usize; 3],
        affine_diff_mm: f64,
    },
    /// The volume depth and the slice provenance list disagree.
    #[error("series {series_uid}: volume has {depth} slices but {slices} slice sources")]
    SliceCount {
        series_uid: String,
        depth: usize,
        slices: usize,
    },
    /// A slice is too large for a DICOM image (rows or columns above 65535).
    #[error("series {series_uid}: slice of {rows}×{columns} pixels does not fit a DICOM image")]
    TooLarge {
        series_uid: String,
        rows: usize,
        columns: usize,
    },
    /// An input value breaks a rule (probability outside [0, 1], hotspot slice out of range…).
    #[error("series {series_uid}: {field} = {value}: {rule}")]
    BadValue {
        series_uid: String,
        field: &'static str,
        value: String,
        rule: &'static str,
    },
    /// The source header and the assembled series both lack an attribute the output needs.
    #[error("series {series_uid}: source has no {attribute}")]
    MissingAttribute {
        series_uid: String,
        attribute: &'static str,
    },
    /// The file meta group could not be built.
    #[error("instance {sop_instance_uid}: cannot build the file meta group: {source}")]
    Meta {
        sop_instance_uid: String,
        #[source]
        source: Box<dicom_object::WithMetaError>,
    },
    /// A DICOM file could not be written.
    #[error("{path}: cannot write DICOM: {source}")]
    WriteDicom {
        path: PathBuf,
        #[source]
        source: Box<dicom_object::WriteError>,
    },
    /// A file or directory could not be created.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The PNG preview could not be written.
    #[error("{path}: cannot write PNG: {source}")]
    Png {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    /// `result.json` could not be serialised.
    #[error("{path}: cannot write JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The decision for one study, in the source series' frame of reference.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Finding {
    /// Ensemble probability of FCD type II, in [0, 1].
    pub probability: f64,
    /// Decision threshold on `probability`, in [0, 1].
    pub threshold: f64,
    /// `probability >= threshold`.
    pub suspected: bool,
    /// Per-fold probabilities, each in [0, 1].
    pub fold_probabilities: Vec<f64>,
    /// Heatmap maximum in LPS mm.
    pub hotspot_lps: [f64; 3],
    /// Source slice index k (0-based) holding the hotspot.
    pub hotspot_slice: usize,
}

/// The algorithm's identity (TID 4019 Algorithm Identification).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Algorithm {
    /// Algorithm Name (111001, DCM), e.g. the model package name.
    pub name: String,
    /// Algorithm Version (111003, DCM).
    pub version: String,
    /// Algorithm Parameters (111002, DCM): free text (explanation method, folds, threshold…).
    pub parameters: String,
}

/// The equipment that made the outputs: General Equipment, SC Equipment, Contributing
/// Equipment and the SR device observer.
#[derive(Clone, Debug, PartialEq)]
pub struct Device {
    /// Manufacturer.
    pub manufacturer: String,
    /// Manufacturer's Model Name.
    pub model_name: String,
    /// Software Versions.
    pub software_versions: String,
    /// Device UID: the node's own UID, stable across runs (the SR device observer UID).
    pub device_uid: String,
    /// Institution Name, when configured.
    pub institution_name: Option<String>,
}

impl Default for Device {
    /// This crate, as built.
    fn default() -> Self {
        Self {
            manufacturer: "fcdnode".into(),
            model_name: "fcdnode".into(),
            software_versions: env!("CARGO_PKG_VERSION").into(),
            device_uid: DEFAULT_DEVICE_UID.into(),
            institution_name: None,
        }
    }
}

/// Device UID used when none is configured (a fixed UUID-derived UID).
pub const DEFAULT_DEVICE_UID: &str = "2.25.190284305613478927004569542715629817953";

/// Content date and time written into the outputs (`YYYYMMDD`, `HHMMSS`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timestamp {
    /// DICOM DA.
    pub date: String,
    /// DICOM TM.
    pub time: String,
}

impl Timestamp {
    /// The current UTC time.
    pub fn now_utc() -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let (y, m, d) = civil_from_days(days);
        Self {
            date: format!("{y:04}{m:02}{d:02}"),
            time: format!("{:02}{:02}{:02}", rem / 3600, (rem % 3600) / 60, rem % 60),
        }
    }
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// How the outputs look and where they go in the study.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportOptions {
    /// One Multi-frame True Color SC instance (true) or one single-frame SC per slice (false).
    pub multiframe: bool,
    /// Series Number of the SC series.
    pub series_number_sc: u32,
    /// Series Description of the SC series.
    pub series_description_sc: String,
    /// Series Number of the SR series.
    pub series_number_sr: u32,
    /// Series Description of the SR series.
    pub series_description_sr: String,
    /// Heat at or below this value is not drawn, in [0, 1).
    pub overlay_floor: f32,
    /// Opacity of the colour overlay, in (0, 1].
    pub alpha: f32,
    /// Lower and upper percentile (0–100) of the source intensities mapped to black and white.
    pub window_percentiles: [f64; 2],
    /// Content date/time; `None` uses the current UTC time.
    pub timestamp: Option<Timestamp>,
    /// The SR this one supersedes (late instances reopened the series): listed in the
    /// Predecessor Documents Sequence.
    pub predecessor: Option<sr::InstanceRef>,
}

impl Default for ReportOptions {
    fn default() -> Self {
        Self {
            multiframe: true,
            series_number_sc: 9901,
            series_description_sc: "FCD-II heatmap (AI, unverified)".into(),
            series_number_sr: 9902,
            series_description_sr: "FCD-II AI report (unverified)".into(),
            overlay_floor: 0.2,
            alpha: 0.5,
            window_percentiles: [0.5, 99.5],
            timestamp: None,
            predecessor: None,
        }
    }
}

impl ReportOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }
    /// Multi-frame (true, default) or single-frame SC.
    pub fn with_multiframe(mut self, multiframe: bool) -> Self {
        self.multiframe = multiframe;
        self
    }
    /// SC series number and description.
    pub fn with_sc_series(mut self, number: u32, description: impl Into<String>) -> Self {
        self.series_number_sc = number;
        self.series_description_sc = description.into();
        self
    }
    /// SR series number and description.
    pub fn with_sr_series(mut self, number: u32, description: impl Into<String>) -> Self {
        self.series_number_sr = number;
        self.series_description_sr = description.into();
        self
    }
    /// Overlay floor and opacity.
    pub fn with_overlay(mut self, floor: f32, alpha: f32) -> Self {
        self.overlay_floor = floor;
        self.alpha = alpha;
        self
    }
    /// Fixed content date and time (reproducible files).
    pub fn with_timestamp(mut self, timestamp: Timestamp) -> Self {
        self.timestamp = Some(timestamp);
        self
    }
}

/// Source of new UIDs: `2.25.<u128>` (UUID-derived) by default, or `<root>.<decimal>` under a
/// configured root, drawn from a seeded or OS-seeded generator.
pub struct UidGenerator {
    root: Option<String>,
    rng: ChaCha8Rng,
}

impl UidGenerator {
    /// UIDs `2.25.<u128>` from OS entropy.
    pub fn random() -> Self {
        Self {
            root: None,
            rng: ChaCha8Rng::from_os_rng(),
        }
    }
    /// UIDs `2.25.<u128>` from a seed: the same seed gives the same UIDs.
    pub fn seeded(seed: u64) -> Self {
        Self {
            root: None,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }
    /// UIDs under `root` (an organisation root, at most 40 characters so that a suffix fits).
    pub fn with_root(mut self, root: impl Into<String>) -> Self {
        let root = root.into();
        self.root = (!root.is_empty()).then_some(root);
        self
    }
    /// A new UID (at most 64 characters).
    pub fn next_uid(&mut self) -> String {
        match &self.root {
            None => format!("2.25.{}", self.rng.random::<u128>()),
            Some(root) => {
                let room = 64usize.saturating_sub(root.len() + 1).clamp(1, 38);
                let digits = self.rng.random::<u128>().to_string();
                let suffix = digits[..room.min(digits.len())].trim_start_matches('0');
                let suffix = if suffix.is_empty() { "1" } else { suffix };
                format!("{root}.{suffix}")
            }
        }
    }
}

/// Everything the SC and SR are made from, shared by both.
#[derive(Clone, Copy)]
pub struct ReportInputs<'a> {
    /// The first source instance's data set (pixel data not needed): patient and study modules
    /// are copied from it.
    pub source_header: &'a InMemDicomObject,
    /// The assembled source series.
    pub source: &'a Assembled,
    /// The decision and the hotspot.
    pub finding: &'a Finding,
    /// The algorithm identity.
    pub algorithm: &'a Algorithm,
    /// This node's identity.
    pub device: &'a Device,
    /// Layout and series options.
    pub options: &'a ReportOptions,
}

/// A DICOM object with the file meta group, ready to write or send.
pub type DicomFile = FileDicomObject<InMemDicomObject>;

/// Whether `obj` was made by the device with `device_uid` (its Contributing Equipment Sequence
/// names it): the loop guard that keeps the node from analysing its own output.
pub fn is_own_output(obj: &InMemDicomObject, device_uid: &str) -> bool {
    obj.get(tags::CONTRIBUTING_EQUIPMENT_SEQUENCE)
        .and_then(|e| e.items())
        .is_some_and(|items| {
            items.iter().any(|item| {
                item.get(tags::DEVICE_UID)
                    .and_then(|e| e.to_str().ok())
                    .is_some_and(|uid| uid.trim_end_matches(['\0', ' ']) == device_uid)
            })
        })
}

/// Writes `obj` to `path` (parent directories created).
pub fn write_dicom(obj: &DicomFile, path: &Path) -> Result<(), ReportError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| ReportError::Io {
            path: parent.to_owned(),
            source,
        })?;
    }
    obj.write_to_file(path).map_err(|source| ReportError::WriteDicom {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

/// Per-stage wall times in milliseconds (0 for a stage that did not run).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Timings {
    pub assemble: f64,
    pub preprocess: f64,
    pub infer: f64,
    pub explain: f64,
    pub sc: f64,
    pub sr: f64,
    pub total: f64,
}

/// The model that produced the result.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelSummary {
    /// Model (algorithm) name.
    pub name: String,
    /// Model version.
    pub version: String,
}

/// `result.json`: the decision, where it points and what was written.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ResultSummary {
    /// Ensemble probability of FCD type II, in [0, 1].
    pub probability: f64,
    /// `"FCD type II suspected"` or `"FCD type II not suspected"`.
    pub label: String,
    /// Whether the probability reached the threshold.
    pub suspected: bool,
    /// Decision threshold.
    pub threshold: f64,
    /// Per-fold probabilities.
    pub fold_probabilities: Vec<f64>,
    /// Hotspot in LPS mm.
    pub hotspot_lps: [f64; 3],
    /// Hotspot slice index k in the source series (0-based).
    pub hotspot_slice: usize,
    /// Source series and study.
    pub series_uid: String,
    pub study_uid: String,
    /// Model identity.
    pub model: ModelSummary,
    /// Secondary Capture files written (relative to the output directory).
    pub sc_files: Vec<String>,
    /// Structured Report file written (relative to the output directory), if any.
    pub sr_file: Option<String>,
    /// PNG preview written (relative to the output directory), if any.
    pub preview_png: Option<String>,
    /// Stage timings.
    pub timings_ms: Timings,
}

/// The label text for a decision.
pub fn label(suspected: bool) -> &'static str {
    if suspected {
        codes::LABEL_SUSPECTED
    } else {
        codes::LABEL_NOT_SUSPECTED
    }
}

/// Builds the `result.json` summary (file lists relative to the output directory).
pub fn result_json(
    source: &Assembled,
    finding: &Finding,
    algorithm: &Algorithm,
    sc_files: Vec<String>,
    sr_file: Option<String>,
    preview_png: Option<String>,
    timings_ms: Timings,
) -> ResultSummary {
    ResultSummary {
        probability: finding.probability,
        label: label(finding.suspected).into(),
        suspected: finding.suspected,
        threshold: finding.threshold,
        fold_probabilities: finding.fold_probabilities.clone(),
        hotspot_lps: finding.hotspot_lps,
        hotspot_slice: finding.hotspot_slice,
        series_uid: source.meta.series_uid.clone(),
        study_uid: source.meta.study_uid.clone(),
        model: ModelSummary {
            name: algorithm.name.clone(),
            version: algorithm.version.clone(),
        },
        sc_files,
        sr_file,
        preview_png,
        timings_ms,
    }
}

impl ResultSummary {
    /// Writes the summary as pretty JSON.
    pub fn write(&self, path: &Path) -> Result<(), ReportError> {
        let text = serde_json::to_string_pretty(self).map_err(|source| ReportError::Json {
            path: path.to_owned(),
            source,
        })?;
        std::fs::write(path, text).map_err(|source| ReportError::Io {
            path: path.to_owned(),
            source,
        })
    }
}

/// Writes a preview image as PNG.
pub fn write_png(image: &image::RgbImage, path: &Path) -> Result<(), ReportError> {
    image
        .save_with_format(path, image::ImageFormat::Png)
        .map_err(|source| ReportError::Png {
            path: path.to_owned(),
            source,
        })
}

/// What [`write_outputs`] wrote.
#[derive(Clone, Debug)]
pub struct WrittenOutputs {
    /// The summary (also written as `result.json`).
    pub summary: ResultSummary,
    /// Absolute paths of the SC files.
    pub sc_paths: Vec<PathBuf>,
    /// Absolute path of the SR file.
    pub sr_path: PathBuf,
    /// Absolute path of the PNG preview.
    pub preview_path: PathBuf,
    /// The objects, for sending.
    pub objects: Vec<DicomFile>,
}

/// Makes SC, SR, preview and `result.json` and writes them into `dir`:
/// `sc/SC_NNNN.dcm`, `sr/SR.dcm`, `preview.png`, `result.json`. `timings_ms.sc`/`sr` are filled
/// here; the other stages' times are taken from `timings`.
pub fn write_outputs(
    inputs: &ReportInputs<'_>,
    heatmap: &Volume,
    uids: &mut UidGenerator,
    mut timings: Timings,
    dir: &Path,
) -> Result<WrittenOutputs, ReportError> {
    let t0 = std::time::Instant::now();
    let sc = secondary_capture(inputs, heatmap, uids)?;
    let mut sc_files = Vec::with_capacity(sc.len());
    let mut sc_paths = Vec::with_capacity(sc.len());
    for (n, obj) in sc.iter().enumerate() {
        let rel = format!("sc/SC_{:04}.dcm", n + 1);
        let path = dir.join(&rel);
        write_dicom(obj, &path)?;
        sc_files.push(rel);
        sc_paths.push(path);
    }
    timings.sc = t0.elapsed().as_secs_f64() * 1e3;
    let t1 = std::time::Instant::now();
    let refs: Vec<InstanceRef> = sc.iter().map(|obj| InstanceRef::of(obj)).collect();
    let sr = structured_report(inputs, &refs, uids)?;
    let sr_rel = "sr/SR.dcm".to_owned();
    let sr_path = dir.join(&sr_rel);
    write_dicom(&sr, &sr_path)?;
    timings.sr = t1.elapsed().as_secs_f64() * 1e3;
    let preview = preview_png(inputs.source, heatmap, inputs.finding, inputs.options)?;
    let preview_path = dir.join("preview.png");
    write_png(&preview, &preview_path)?;
    let summary = result_json(
        inputs.source,
        inputs.finding,
        inputs.algorithm,
        sc_files,
        Some(sr_rel),
        Some("preview.png".into()),
        timings,
    );
    summary.write(&dir.join("result.json"))?;
    let mut objects = sc;
    objects.push(sr);
    Ok(WrittenOutputs {
        summary,
        sc_paths,
        sr_path,
        preview_path,
        objects,
    })
}

/// Checks shared by SC, SR and preview: non-empty source, consistent provenance, sane finding.
fn check_inputs(source: &Assembled, finding: &Finding) -> Result<(), ReportError> {
    let series_uid = &source.meta.series_uid;
    let shape = source.volume.shape();
    if shape.contains(&0) {
        return Err(ReportError::EmptySource {
            series_uid: series_uid.clone(),
            what: format!("volume shape {shape:?}"),
        });
    }
    if source.slices.is_empty() {
        return Err(ReportError::EmptySource {
            series_uid: series_uid.clone(),
            what: "no slice sources".into(),
        });
    }
    if source.slices.len() != shape[2] {
        return Err(ReportError::SliceCount {
            series_uid: series_uid.clone(),
            depth: shape[2],
            slices: source.slices.len(),
        });
    }
    if shape[0] > usize::from(u16::MAX) || shape[1] > usize::from(u16::MAX) {
        return Err(ReportError::TooLarge {
            series_uid: series_uid.clone(),
            rows: shape[1],
            columns: shape[0],
        });
    }
    let bad = |field: &'static str, value: String, rule: &'static str| ReportError::BadValue {
        series_uid: series_uid.clone(),
        field,
        value,
        rule,
    };
    let unit = |p: f64| p.is_finite() && (0.0..=1.0).contains(&p);
    if !unit(finding.probability) {
        return Err(bad("probability", finding.probability.to_string(), "must be in [0, 1]"));
    }
    if !unit(finding.threshold) {
        return Err(bad("threshold", finding.threshold.to_string(), "must be in [0, 1]"));
    }
    if let Some(p) = finding.fold_probabilities.iter().find(|p| !unit(**p)) {
        return Err(bad(
            "fold_probabilities",
            p.to_string(),
            "every fold probability must be in [0, 1]",
        ));
    }
    if finding.hotspot_lps.iter().any(|v| !v.is_finite()) {
        return Err(bad(
            "hotspot_lps",
            format!("{:?}", finding.hotspot_lps),
            "must be finite LPS mm",
        ));
    }
    if finding.hotspot_slice >= shape[2] {
        return Err(bad(
            "hotspot_slice",
            finding.hotspot_slice.to_string(),
            "must be a slice index of the source series",
        ));
    }
    Ok(())
}

/// Checks the overlay options.
fn check_options(series_uid: &str, options: &ReportOptions) -> Result<(), ReportError> {
    let bad = |field: &'static str, value: String, rule: &'static str| ReportError::BadValue {
        series_uid: series_uid.to_owned(),
        field,
        value,
        rule,
    };
    if !(options.overlay_floor.is_finite() && (0.0..1.0).contains(&options.overlay_floor)) {
        return Err(bad(
            "overlay_floor",
            options.overlay_floor.to_string(),
            "must be in [0, 1)",
        ));
    }
    if !(options.alpha.is_finite() && options.alpha > 0.0 && options.alpha <= 1.0) {
        return Err(bad("alpha", options.alpha.to_string(), "must be in (0, 1]"));
    }
    let [lo, hi] = options.window_percentiles;
    if !(lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo < hi && hi <= 100.0) {
        return Err(bad(
            "window_percentiles",
            format!("[{lo}, {hi}]"),
            "must satisfy 0 <= low < high <= 100",
        ));
    }
    Ok(())
}

/// Checks that the heatmap lies on the source grid (same shape, affines within 1e-3 mm).
fn check_heatmap(source: &Assembled, heatmap: &Volume) -> Result<(), ReportError> {
    let (a, b) = (source.volume.shape(), heatmap.shape());
    let diff = source.volume.affine().max_abs_diff(heatmap.affine());
    if a != b || diff.is_nan() || diff > 1e-3 {
        return Err(ReportError::GridMismatch {
            series_uid: source.meta.series_uid.clone(),
            heatmap_shape: b,
            source_shape: a,
            affine_diff_mm: diff,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        let now = Timestamp::now_utc();
        assert_eq!(now.date.len(), 8);
        assert_eq!(now.time.len(), 6);
    }

    #[test]
    fn uids_are_valid_and_reproducible() {
        let mut a = UidGenerator::seeded(5);
        let mut b = UidGenerator::seeded(5);
        let (x, y) = (a.next_uid(), b.next_uid());
        assert_eq!(x, y);
        assert_ne!(x, a.next_uid());
        let mut rooted = UidGenerator::seeded(1).with_root("1.2.826.0.1.3680043.10.1234");
        for _ in 0..100 {
            let uid = rooted.next_uid();
            assert!(uid.len() <= 64, "{uid}");
            assert!(
                uid.split('.')
                    .all(|c| !c.is_empty() && (c == "0" || !c.starts_with('0'))),
                "{uid}"
            );
        }
    }

    #[test]
    fn labels() {
        assert_eq!(label(true), "FCD type II suspected");
        assert_eq!(label(false), "FCD type II not suspected");
    }
}
