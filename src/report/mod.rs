//! Everything above → DICOM objects and a summary; owns the Secondary Capture overlay, the
//! Structured Report, `result.json` and the PNG preview.
//!
//! - [`secondary_capture`]: the heatmap (in the map's own units on the source grid, NaN where the
//!   model did not look) on an absolute colour scale ([`crate::explain::scale_heat`]), coloured
//!   only inside the head and above a threshold, blended over the windowed source slices, as one
//!   Multi-frame True Color Secondary Capture instance (default) or one Secondary Capture instance
//!   per slice; orientation letters, result, colour bar and legend sit in margins and a band
//!   outside the image, never over the anatomy.
//! - [`structured_report`]: a Comprehensive 3D SR following TID 1500 (the IHE AI Results
//!   pattern): device observer, algorithm identification (TID 4019), the finding, the
//!   probability as a numeric measurement and the hotspot as an SCOORD3D point (LPS mm).
//! - [`key_image`]: one SC instance with axial, coronal and sagittal views through the hotspot
//!   and the result in words: what a radiologist opens first.
//! - [`parametric_map`]: the heatmap itself as a Parametric Map (32-bit float frames on the
//!   source grid, values on the display scale, 0 where the model did not look).
//! - [`segmentation`]: for a suspected study, the region the overlay colours around the hotspot
//!   as a binary Segmentation.
//! - [`ResultSummary`]: the `result.json` written next to the objects; [`preview_png`]: a
//!   montage of slices around the hotspot.
//!
//! Every DICOM output joins the source study in a new series, copies the patient and study
//! modules from the source header and carries a Contributing Equipment Sequence naming this node,
//! so a PACS, a viewer and the node itself can tell them from acquired images
//! ([`is_own_output`]).

mod codes;
mod dicom;
mod enhanced;
mod error;
mod identity;
pub mod key_image;
pub mod notify;
pub mod pm;
mod render;
pub mod sc;
pub mod seg;
pub mod sr;
mod summary;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use dicom_object::{FileDicomObject, InMemDicomObject};

use crate::assemble::Assembled;
use crate::volume::Volume;

pub use crate::dicom_build::is_own_output;
pub use codes::Code;
pub use error::ReportError;
pub use identity::{Timestamp, UidGenerator, date_text, person_name_text, rfc3339_utc_now, utc_text};
pub use key_image::key_image;
pub use pm::parametric_map;
pub use render::{ColourMap, glyph, preview_png};
pub use sc::secondary_capture;
pub use seg::segmentation;
pub use sr::{Derived, InstanceRef, structured_report};
pub use summary::{ModelSummary, OutputFiles, ResultSummary, Timings, label, result_json};

/// The decision for one study, in the source series' frame of reference.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Finding {
    /// Ensemble probability of FCD type II, in [0, 1] (calibrated when the package calibrates).
    pub probability: f64,
    /// The ensemble's raw mean before the package's calibration; `None` when it has none.
    pub probability_uncalibrated: Option<f64>,
    /// Decision threshold on `probability`, in [0, 1].
    pub threshold: f64,
    /// `probability >= threshold`.
    pub suspected: bool,
    /// Per-fold softmax probabilities (uncalibrated), each in [0, 1].
    pub fold_probabilities: Vec<f64>,
    /// Where the heatmap peaks; `None` when the map is flat or empty (nothing to point at).
    pub peak: Option<Hotspot>,
}

/// A point of the heatmap on the source grid.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Hotspot {
    /// Position in LPS mm.
    pub lps: [f64; 3],
    /// Source slice index k (0-based) holding it.
    pub slice: usize,
}

impl Finding {
    /// The hotspot the outputs report: the map's peak, for a suspected study only. A study below
    /// the threshold names no FCD location anywhere.
    pub fn hotspot(&self) -> Option<Hotspot> {
        self.peak.filter(|_| self.suspected)
    }

    /// Why no hotspot is reported, when none is.
    pub fn no_hotspot_reason(&self) -> Option<&'static str> {
        match (self.suspected, self.peak) {
            (true, Some(_)) => None,
            (false, _) => Some("not suspected: no location is reported"),
            (true, None) => Some("the heatmap is flat: the model points at no region"),
        }
    }
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
    /// SHA-256 of the model package (a second Algorithm Parameters item in the SR).
    pub sha256: String,
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
    /// Series Number of the Parametric Map series.
    pub series_number_pm: u32,
    /// Series Description of the Parametric Map series.
    pub series_description_pm: String,
    /// Series Number of the Segmentation series.
    pub series_number_seg: u32,
    /// Series Description of the Segmentation series.
    pub series_description_seg: String,
    /// Series Number of the key image series.
    pub series_number_key: u32,
    /// Series Description of the key image series.
    pub series_description_key: String,
    /// Which outputs are made (and so sent and referenced by the SR).
    pub outputs: OutputSelection,
    /// Colour scale, threshold and visibility of the heatmap overlay (`[overlay]` in the config).
    pub overlay: OverlayOptions,
    /// The model package's reference level for the explanation method in use (`[heatmap]` in its
    /// manifest): 1.0 on the colour scale. `None`: the scale is relative to the study's peak and
    /// the outputs say it is uncalibrated.
    pub heat_reference: Option<f64>,
    /// Lower and upper percentile (0–100) of the source intensities mapped to black and white.
    pub window_percentiles: [f64; 2],
    /// Content date/time; `None` uses the current UTC time.
    pub timestamp: Option<Timestamp>,
    /// The SR this one supersedes (late instances reopened the series): listed in the
    /// Predecessor Documents Sequence.
    pub predecessor: Option<sr::InstanceRef>,
    /// `Some([notify] sr_url)` when notification endpoints are configured: the FHIR
    /// DiagnosticReport and the webhook document are written too.
    pub notify_sr_url: Option<String>,
    /// What an earlier attempt of this job sent ahead before it was cut short: this attempt
    /// makes the same (or fails saying what differs) and leaves those files as they are.
    pub sent_ahead: Option<SentAhead>,
}

/// The decision an attempt of a job sent ahead (its preliminary `result.json`) and the objects
/// its SR references, read back from the job's result directory.
#[derive(Clone, Debug, PartialEq)]
pub struct SentAhead {
    /// The summary written with the SR, before the other outputs.
    pub summary: ResultSummary,
    /// SOP Class, SOP Instance and Series Instance UID of each object the SR references.
    pub evidence: BTreeSet<[String; 3]>,
}

impl SentAhead {
    /// Reads `dir/result.json` and the SR it names.
    pub fn read(dir: &Path) -> Result<Self, ReportError> {
        let summary = ResultSummary::read(&dir.join("result.json"))?;
        let evidence = match &summary.sr_file {
            Some(file) => sr::read_evidence(&dir.join(file))?,
            None => BTreeSet::new(),
        };
        Ok(Self { summary, evidence })
    }
}

impl Default for ReportOptions {
    fn default() -> Self {
        Self {
            multiframe: true,
            series_number_sc: 9901,
            series_description_sc: "FCD-II heatmap (AI, unverified)".into(),
            series_number_sr: 9902,
            series_description_sr: "FCD-II AI report (unverified)".into(),
            series_number_pm: 9903,
            series_description_pm: "FCD-II heatmap values (AI, unverified)".into(),
            series_number_seg: 9904,
            series_description_seg: "FCD-II hotspot region (AI, unverified)".into(),
            series_number_key: 9905,
            series_description_key: "FCD-II key image (AI, unverified)".into(),
            outputs: OutputSelection::default(),
            overlay: OverlayOptions::default(),
            heat_reference: None,
            window_percentiles: [0.5, 99.5],
            timestamp: None,
            predecessor: None,
            notify_sr_url: None,
            sent_ahead: None,
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
    /// Overlay colour scale, threshold and visibility.
    pub fn with_overlay(mut self, overlay: OverlayOptions) -> Self {
        self.overlay = overlay;
        self
    }
    /// The model's reference heat level (absolute colour scale); `None`: relative, uncalibrated.
    pub fn with_heat_reference(mut self, reference: Option<f64>) -> Self {
        self.heat_reference = reference;
        self
    }
    /// Fixed content date and time (reproducible files).
    pub fn with_timestamp(mut self, timestamp: Timestamp) -> Self {
        self.timestamp = Some(timestamp);
        self
    }
}

/// Which outputs each job makes, and so sends (`[outputs]` in the node's configuration). The
/// SR references exactly the objects made; `result.json` and the PNG preview are always written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputSelection {
    /// The heatmap overlay series (Secondary Capture, a frame per source slice).
    pub overlay_series: bool,
    /// The key image: axial, coronal and sagittal views through the hotspot with the result in
    /// words (one Secondary Capture instance).
    pub key_image: bool,
    /// The heatmap values as a Parametric Map (for fusion and windowing in a viewer).
    pub parametric_map: bool,
    /// The hotspot region as a Segmentation (suspected studies only).
    pub segmentation: bool,
    /// The Structured Report (decision, probability, algorithm, hotspot).
    pub structured_report: bool,
}

impl Default for OutputSelection {
    fn default() -> Self {
        Self {
            overlay_series: true,
            key_image: true,
            parametric_map: true,
            segmentation: true,
            structured_report: true,
        }
    }
}

/// How the heatmap overlay looks (`[overlay]` in the node's configuration).
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OverlayOptions {
    /// Colour map: "inferno" (default, perceptually ordered), "hot" or "turbo".
    pub colour_map: ColourMap,
    /// Heat below this value on the display scale (1.0 = the model's reference level) is not
    /// coloured, so only the top region shows; in [0, 1). The default 0.6 lies between the demo
    /// model's training controls (peaks 0.28–0.36) and positives (0.70–1.20).
    pub threshold: f32,
    /// Opacity of the colour, in (0, 1].
    pub alpha: f32,
    /// The overlay of a study below the decision threshold: "off" (default: a negative study
    /// shows no colour), "faint" (a third of `alpha`) or "same" (as a suspected study).
    pub negative: NegativeOverlay,
}

impl Default for OverlayOptions {
    fn default() -> Self {
        Self {
            colour_map: ColourMap::default(),
            threshold: 0.6,
            alpha: 0.6,
            negative: NegativeOverlay::default(),
        }
    }
}

impl OverlayOptions {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), OverlayError> {
        if !(self.threshold.is_finite() && (0.0..1.0).contains(&self.threshold)) {
            return Err(OverlayError::Threshold(self.threshold));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0 && self.alpha <= 1.0) {
            return Err(OverlayError::Alpha(self.alpha));
        }
        Ok(())
    }
}

/// An overlay option out of range; the message names the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum OverlayError {
    /// `threshold` outside [0, 1).
    #[error("threshold = {0}: must be in [0, 1)")]
    Threshold(f32),
    /// `alpha` outside (0, 1].
    #[error("alpha = {0}: must be in (0, 1]")]
    Alpha(f32),
}

/// What a study below the decision threshold shows of its heatmap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NegativeOverlay {
    /// No colour: nothing on a negative study looks like a finding.
    #[default]
    Off,
    /// Colour at a third of the opacity.
    Faint,
    /// Colour as for a suspected study.
    Same,
}

/// Everything the outputs are made from, shared by all.
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

/// Writes `obj` to `path` (parent directories created), replacing a file there whole.
pub fn write_dicom(obj: &DicomFile, path: &Path) -> Result<(), ReportError> {
    replace_file(path, |part| {
        obj.write_to_file(part).map_err(|source| ReportError::WriteDicom {
            path: path.to_owned(),
            source: Box::new(source),
        })
    })
}

/// Writes a JSON document to `dir/rel` (parent directories created, an earlier file replaced
/// whole); returns `rel`.
fn write_json(dir: &Path, rel: &str, value: &serde_json::Value) -> Result<String, ReportError> {
    let path = dir.join(rel);
    let text = serde_json::to_vec_pretty(value).map_err(|source| ReportError::Json {
        path: path.clone(),
        source,
    })?;
    replace_file(&path, |part| {
        std::fs::write(part, &text).map_err(|source| ReportError::Io {
            path: part.to_owned(),
            source,
        })
    })?;
    Ok(rel.to_owned())
}

/// Writes `path` through `write` into a new file beside it (its directory made), then renames
/// that over `path`: a reader (the outbox, the API) sees the earlier file or the new one, whole.
/// A failed write leaves nothing behind (tempfile removes its file when dropped).
pub(crate) fn replace_file(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), ReportError>,
) -> Result<(), ReportError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ReportError::Io { path, source }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let staged = tempfile::Builder::new()
        .prefix(".")
        .suffix(".part")
        .tempfile_in(dir)
        .map_err(io(dir))?;
    write(staged.path())?;
    staged.persist(path).map(drop).map_err(|e| io(path)(e.error))
}

/// Writes a preview image as PNG.
pub fn write_png(image: &image::RgbImage, path: &Path) -> Result<(), ReportError> {
    replace_file(path, |part| {
        image
            .save_with_format(part, image::ImageFormat::Png)
            .map_err(|source| ReportError::Png {
                path: path.to_owned(),
                source,
            })
    })
}

/// What [`write_outputs`] wrote.
#[derive(Clone, Debug)]
pub struct WrittenOutputs {
    /// The summary (also written as `result.json`).
    pub summary: ResultSummary,
    /// Absolute paths of the DICOM files, each when made.
    pub key_image_path: Option<PathBuf>,
    pub sc_paths: Vec<PathBuf>,
    pub pm_path: Option<PathBuf>,
    pub seg_path: Option<PathBuf>,
    pub sr_path: Option<PathBuf>,
    /// Absolute path of the PNG preview.
    pub preview_path: PathBuf,
    /// The DICOM objects made, in sending order (as `summary.dicom_files()`).
    pub objects: Vec<DicomFile>,
}

/// Makes the DICOM outputs `options.outputs` selects (key image, SC, Parametric Map,
/// Segmentation for suspected studies, SR), the preview and `result.json`, and writes them into
/// `dir` (`key/KEY.dcm`, `sc/SC_NNNN.dcm`, `pm/PM.dcm`, `seg/SEG.dcm`, `sr/SR.dcm`,
/// `preview.png`, `result.json`).
///
/// The decision goes out first: each other output's UIDs are drawn before it is made (from a
/// generator of its own, forked from `uids`), so the SR that references them is made and
/// written, with the notification documents, before them; `decided` then gets the summary of
/// what is written so far (SR and notifications), for a caller that sends it at once. With a
/// keyed `uids` a rerun draws the same UIDs, so what it remakes matches an SR already sent.
/// `timings_ms.key_image`/`sc`/`pm`/`seg`/`sr` are filled here and the time spent here is added
/// to `timings.total` (the caller's time so far), so `result.json` is written once, complete;
/// the other stages' times are taken from `timings`.
pub fn write_outputs(
    inputs: &ReportInputs<'_>,
    heatmap: &Volume,
    uids: &mut UidGenerator,
    mut timings: Timings,
    dir: &Path,
    decided: &mut dyn FnMut(&ResultSummary),
) -> Result<WrittenOutputs, ReportError> {
    let t0 = std::time::Instant::now();
    let write = |obj: &DicomFile, rel: String| -> Result<String, ReportError> {
        write_dicom(obj, &dir.join(&rel))?;
        Ok(rel)
    };
    check_all(inputs, heatmap)?;
    let selected = inputs.options.outputs;
    // One overlay (display scale, head mask, grey window) for every picture and the SEG. A
    // suspected study's is made before the SR, whose SEG reference depends on the hotspot
    // region it colours; any other study's after the SR, so that the decision goes out sooner.
    let overlay_for = |timings: &mut Timings| {
        let t = std::time::Instant::now();
        let overlay = render::Overlay::new(inputs.source, heatmap, inputs.finding, inputs.options);
        timings.overlay = ms(t);
        overlay
    };
    let early = (selected.segmentation && inputs.finding.suspected).then(|| overlay_for(&mut timings));
    let seg_region = early
        .as_ref()
        .and_then(|overlay| seg::segmented_region(inputs, overlay));
    let planned = Planned::draw(inputs, seg_region, uids);
    let ahead = inputs.options.sent_ahead.as_ref();
    if let Some(ahead) = ahead {
        check_same_as_ahead(dir, inputs, &planned.derived, ahead)?;
    }
    // Files that went ahead stay as they were sent.
    let went_ahead = |rel: &str| ahead.is_some() && dir.join(rel).is_file();
    let mut files = OutputFiles::default();
    let mut sr_object = None;
    let mut sr_ref = None;
    if selected.structured_report {
        let t = std::time::Instant::now();
        let sr = structured_report(inputs, &planned.derived, uids)?;
        let rel = "sr/SR.dcm";
        files.sr = Some(if went_ahead(rel) {
            rel.into()
        } else {
            write(&sr, rel.into())?
        });
        sr_ref = Some(InstanceRef::of(&sr));
        sr_object = Some(sr);
        timings.sr = ms(t);
    }
    let mut summary = result_json(inputs.source, inputs.finding, inputs.algorithm, files, timings);
    if let Some(sr_url) = &inputs.options.notify_sr_url {
        let issued = rfc3339_utc_now();
        let notice = notify::NoticeInputs {
            summary: &summary,
            header: inputs.source_header,
            sr: sr_ref.as_ref(),
            sr_url,
            issued: &issued,
        };
        let (fhir, hook) = (notify::diagnostic_report(&notice), notify::webhook(&notice));
        for (rel, document, file) in [
            ("notify/DiagnosticReport.json", &fhir, &mut summary.fhir_file),
            ("notify/webhook.json", &hook, &mut summary.webhook_file),
        ] {
            *file = Some(if went_ahead(rel) {
                rel.into()
            } else {
                write_json(dir, rel, document)?
            });
        }
    }
    summary.timings_ms.decided = summary.timings_ms.total + ms(t0);
    // The decision on record before it is handed on (the console, a later job's predecessor,
    // a rerun's check read it); replaced by the whole summary at the end.
    summary.write(&dir.join("result.json"))?;
    decided(&summary);
    let overlay = match early {
        Some(overlay) => overlay,
        None => overlay_for(&mut summary.timings_ms),
    };
    // Sent in this order: SR first (the decision is what a worklist waits for), then the rest.
    let mut objects: Vec<DicomFile> = sr_object.into_iter().collect();
    let Planned {
        mut key,
        mut sc,
        mut seg,
        mut pm,
        derived,
    } = planned;
    let made_as_planned = |planned: Option<&InstanceRef>, obj: &DicomFile| {
        let made = InstanceRef::of(obj);
        match planned {
            Some(planned) if *planned == made => Ok(()),
            _ => Err(ReportError::Diverged {
                dir: dir.to_owned(),
                what: format!("made {made:?}, but the SR references {planned:?}"),
            }),
        }
    };
    if let Some(uids) = &mut key {
        let t = std::time::Instant::now();
        let key = key_image::key_image_over(inputs, &overlay, uids)?;
        made_as_planned(derived.key_image.as_ref(), &key)?;
        summary.key_image_file = Some(write(&key, "key/KEY.dcm".into())?);
        objects.push(key);
        summary.timings_ms.key_image = ms(t);
    }
    if let Some(uids) = &mut sc {
        let t = std::time::Instant::now();
        let sc = sc::secondary_capture_over(inputs, &overlay, uids)?;
        for (n, obj) in sc.iter().enumerate() {
            made_as_planned(derived.sc.get(n), obj)?;
            summary.sc_files.push(write(obj, format!("sc/SC_{:04}.dcm", n + 1))?);
        }
        objects.extend(sc);
        summary.timings_ms.sc = ms(t);
    }
    if let Some(uids) = &mut pm {
        let t = std::time::Instant::now();
        let pm = parametric_map(inputs, heatmap, uids)?;
        made_as_planned(derived.pm.as_ref(), &pm)?;
        summary.pm_file = Some(write(&pm, "pm/PM.dcm".into())?);
        objects.push(pm);
        summary.timings_ms.pm = ms(t);
    }
    if let Some((region, slices, uids)) = &mut seg {
        let t = std::time::Instant::now();
        let seg = seg::segmentation_of(inputs, region, slices, uids)?;
        made_as_planned(derived.seg.as_ref(), &seg)?;
        summary.seg_file = Some(write(&seg, "seg/SEG.dcm".into())?);
        objects.push(seg);
        summary.timings_ms.seg = ms(t);
    }
    let preview = render::preview_over(inputs.source, &overlay, inputs.finding);
    let preview_path = dir.join("preview.png");
    write_png(&preview, &preview_path)?;
    summary.preview_png = Some("preview.png".into());
    summary.timings_ms.total += ms(t0);
    summary.write(&dir.join("result.json"))?;
    let path = |rel: &Option<String>| rel.as_ref().map(|f| dir.join(f));
    Ok(WrittenOutputs {
        key_image_path: path(&summary.key_image_file),
        sc_paths: summary.sc_files.iter().map(|f| dir.join(f)).collect(),
        pm_path: path(&summary.pm_file),
        seg_path: path(&summary.seg_file),
        sr_path: path(&summary.sr_file),
        summary,
        preview_path,
        objects,
    })
}

/// The outputs other than the SR, each with the generator it will draw its UIDs from, and
/// the references the SR makes to them (drawn from clones of those generators: a maker draws
/// its series' UIDs first).
struct Planned {
    key: Option<UidGenerator>,
    sc: Option<UidGenerator>,
    pm: Option<UidGenerator>,
    /// The SEG's region, the source slices it touches (its frames) and its generator (a
    /// suspected study whose hotspot is coloured).
    seg: Option<(ndarray::Array3<bool>, Vec<usize>, UidGenerator)>,
    derived: Derived,
}

impl Planned {
    /// `seg_region`: the region of the SEG to make, if any. Four generators are forked
    /// whatever is made, so the UIDs of each output (and the SR's) depend on the job's key
    /// alone, not on the selection.
    fn draw(inputs: &ReportInputs<'_>, seg_region: Option<ndarray::Array3<bool>>, uids: &mut UidGenerator) -> Self {
        let selected = inputs.options.outputs;
        let source = inputs.source;
        let forks: [UidGenerator; 4] = std::array::from_fn(|_| uids.fork());
        let [key, sc, pm, seg] = forks;
        let key = selected.key_image.then_some(key);
        let sc = selected.overlay_series.then_some(sc);
        let pm = selected.parametric_map.then_some(pm);
        let seg = seg_region.map(|region| {
            let slices = seg::region_slices(&region);
            (region, slices, seg)
        });
        let depth = u32::try_from(source.volume.shape()[2]).unwrap_or(u32::MAX);
        let (sc_class, sc_frames) = if inputs.options.multiframe {
            (sc::MULTIFRAME_TRUE_COLOR_SC, depth)
        } else {
            (sc::SECONDARY_CAPTURE, 1)
        };
        let seg_frames = seg.as_ref().map_or(0, |(_, slices, _)| slices.len() as u32);
        let derived = Derived {
            key_image: refs(key.as_ref(), 1, sc::SECONDARY_CAPTURE, 1).pop(),
            sc: refs(
                sc.as_ref(),
                sc::instance_count(source, inputs.options),
                sc_class,
                sc_frames,
            ),
            pm: refs(pm.as_ref(), 1, pm::PARAMETRIC_MAP, depth).pop(),
            seg: refs(seg.as_ref().map(|(_, _, uids)| uids), 1, seg::SEGMENTATION, seg_frames).pop(),
        };
        Self {
            key,
            sc,
            pm,
            seg,
            derived,
        }
    }
}

/// A rerun of a job whose SR went ahead must make what that SR references, for the same
/// decision; anything else (a new model, changed outputs or UID root, another input) is an
/// error naming what differs, not a silent second version.
fn check_same_as_ahead(
    dir: &Path,
    inputs: &ReportInputs<'_>,
    derived: &Derived,
    ahead: &SentAhead,
) -> Result<(), ReportError> {
    let diverged = |what: String| ReportError::Diverged {
        dir: dir.to_owned(),
        what: format!("the SR sent ahead before a restart {what}; rerun the job to replace it"),
    };
    let (was, now) = (&ahead.summary, inputs.finding);
    if was.suspected != now.suspected || was.probability != now.probability {
        return Err(diverged(format!(
            "said {} ({:.4}), this run finds {} ({:.4})",
            was.label,
            was.probability,
            label(now.suspected),
            now.probability
        )));
    }
    let planned = derived.evidence();
    if ahead.summary.sr_file.is_some() && planned != ahead.evidence {
        let same = planned.intersection(&ahead.evidence).count();
        return Err(diverged(format!(
            "references {} object(s); this run would make {same} of them and {} other(s)",
            ahead.evidence.len(),
            planned.len() - same
        )));
    }
    Ok(())
}

/// The references to the `count` instances a maker drawing from `uids` will make.
fn refs(uids: Option<&UidGenerator>, count: usize, class: &str, frames: u32) -> Vec<InstanceRef> {
    let Some(uids) = uids else { return Vec::new() };
    let ids = uids.clone().new_series(count);
    ids.instances
        .into_iter()
        .map(|sop| InstanceRef {
            sop_class_uid: class.into(),
            sop_instance_uid: sop,
            series_uid: ids.series.clone(),
            frames,
        })
        .collect()
}

/// Milliseconds since `t`.
fn ms(t: std::time::Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Checks shared by every output: non-empty source, consistent provenance, sane finding.
/// The checks every output makes before it touches its inputs.
fn check_all(inputs: &ReportInputs<'_>, heatmap: &Volume) -> Result<(), ReportError> {
    check_inputs(inputs.source, inputs.finding)?;
    check_options(&inputs.source.meta.series_uid, inputs.options)?;
    check_heatmap(inputs.source, heatmap)
}

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
    if let Some(p) = finding.probability_uncalibrated.filter(|p| !unit(*p)) {
        return Err(bad("probability_uncalibrated", p.to_string(), "must be in [0, 1]"));
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
    if let Some(peak) = finding.peak {
        if peak.lps.iter().any(|v| !v.is_finite()) {
            return Err(bad("peak", format!("{:?}", peak.lps), "must be finite LPS mm"));
        }
        if peak.slice >= shape[2] {
            return Err(bad(
                "peak",
                peak.slice.to_string(),
                "must be a slice index of the source series",
            ));
        }
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
    if let Err(e) = options.overlay.validate() {
        return Err(bad("overlay", e.to_string(), "overlay options out of range"));
    }
    if let Some(r) = options.heat_reference
        && !(r.is_finite() && r > 0.0)
    {
        return Err(bad("heat_reference", r.to_string(), "must be a positive map level"));
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
    fn a_file_is_replaced_whole_and_a_failed_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sr/SR.dcm");
        let write = |text: &'static str| {
            move |part: &Path| {
                std::fs::write(part, text).map_err(|source| ReportError::Io {
                    path: part.to_owned(),
                    source,
                })
            }
        };
        replace_file(&path, write("first")).unwrap();
        replace_file(&path, write("second")).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second");
        let failed = replace_file(&path, |part: &Path| {
            std::fs::write(part, "half").unwrap();
            Err(ReportError::Io {
                path: part.to_owned(),
                source: std::io::Error::other("disk full"),
            })
        });
        assert!(failed.is_err());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "second",
            "the earlier file stays"
        );
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, ["SR.dcm"], "no .part left behind");
    }
}
