//! `result.json`: the decision, where it points, what was written and how long each stage took;
//! written once per job and read back typed by the worker, the API and the demo.

use std::path::Path;

use super::{Algorithm, Finding, ReportError, codes};
use crate::assemble::Assembled;

/// Per-stage wall times in milliseconds (0 for a stage that did not run).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Timings {
    pub assemble: f64,
    pub preprocess: f64,
    /// From the model's input being ready until the model took it: the wait behind the job
    /// before (the node prepares the next job while the model runs).
    pub wait: f64,
    pub infer: f64,
    pub explain: f64,
    /// The overlay shared by the pictures and the SEG (display scale, head mask, window).
    pub overlay: f64,
    /// From the job's start until the SR and notifications were written and handed on.
    pub decided: f64,
    pub key_image: f64,
    pub sc: f64,
    pub pm: f64,
    pub seg: f64,
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
    /// SHA-256 of the model package (manifest and graphs): the exact model.
    #[serde(default)]
    pub sha256: String,
}

/// `result.json`: the decision, where it points and what was written.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ResultSummary {
    /// Ensemble probability of FCD type II, in [0, 1]: calibrated when the model package has a
    /// `[calibration]` (the threshold is on this scale).
    pub probability: f64,
    /// The fold softmaxes' mean before calibration; absent when the package has no calibration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability_uncalibrated: Option<f64>,
    /// `"FCD type II suspected"` or `"FCD type II not suspected"`.
    pub label: String,
    /// Whether the probability reached the threshold.
    pub suspected: bool,
    /// Decision threshold.
    pub threshold: f64,
    /// Per-fold softmax probabilities (uncalibrated).
    pub fold_probabilities: Vec<f64>,
    /// Hotspot in LPS mm: suspected studies with a non-flat map only.
    pub hotspot_lps: Option<[f64; 3]>,
    /// Hotspot slice index k in the source series (0-based), with `hotspot_lps`.
    pub hotspot_slice: Option<usize>,
    /// Why there is no hotspot, when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_hotspot: Option<String>,
    /// Source series and study.
    pub series_uid: String,
    pub study_uid: String,
    /// Model identity.
    pub model: ModelSummary,
    /// Key image file written (relative to the output directory), if any.
    #[serde(default)]
    pub key_image_file: Option<String>,
    /// Secondary Capture files written (relative to the output directory).
    pub sc_files: Vec<String>,
    /// Structured Report file written (relative to the output directory), if any.
    pub sr_file: Option<String>,
    /// Parametric Map file written (relative to the output directory), if any.
    #[serde(default)]
    pub pm_file: Option<String>,
    /// Segmentation file written (relative to the output directory): suspected studies whose
    /// hotspot the overlay colours only.
    #[serde(default)]
    pub seg_file: Option<String>,
    /// PNG preview written (relative to the output directory), if any.
    pub preview_png: Option<String>,
    /// FHIR R4 DiagnosticReport for `[notify]` endpoints of kind `fhir`, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fhir_file: Option<String>,
    /// JSON document for `[notify]` endpoints of kind `webhook`, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_file: Option<String>,
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

/// The files one run wrote, relative to its output directory.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OutputFiles {
    /// Key image.
    pub key_image: Option<String>,
    /// Secondary Capture files.
    pub sc: Vec<String>,
    /// Parametric Map file.
    pub pm: Option<String>,
    /// Segmentation file.
    pub seg: Option<String>,
    /// Structured Report file.
    pub sr: Option<String>,
    /// PNG preview.
    pub preview_png: Option<String>,
}

/// Builds the `result.json` summary.
pub fn result_json(
    source: &Assembled,
    finding: &Finding,
    algorithm: &Algorithm,
    files: OutputFiles,
    timings_ms: Timings,
) -> ResultSummary {
    ResultSummary {
        probability: finding.probability,
        probability_uncalibrated: finding.probability_uncalibrated,
        label: label(finding.suspected).into(),
        suspected: finding.suspected,
        threshold: finding.threshold,
        fold_probabilities: finding.fold_probabilities.clone(),
        hotspot_lps: finding.hotspot().map(|h| h.lps),
        hotspot_slice: finding.hotspot().map(|h| h.slice),
        no_hotspot: finding.no_hotspot_reason().map(str::to_owned),
        series_uid: source.meta.series_uid.clone(),
        study_uid: source.meta.study_uid.clone(),
        model: ModelSummary {
            name: algorithm.name.clone(),
            version: algorithm.version.clone(),
            sha256: algorithm.sha256.clone(),
        },
        key_image_file: files.key_image,
        sc_files: files.sc,
        sr_file: files.sr,
        pm_file: files.pm,
        seg_file: files.seg,
        preview_png: files.preview_png,
        fhir_file: None,
        webhook_file: None,
        timings_ms,
    }
}

impl ResultSummary {
    /// The DICOM files to send, relative to the output directory, in sending order: the SR
    /// (the decision, what a worklist waits for), then key image, SC, PM and SEG, which it
    /// references.
    pub fn dicom_files(&self) -> impl Iterator<Item = &str> {
        self.sr_file
            .iter()
            .chain(&self.key_image_file)
            .chain(&self.sc_files)
            .chain(&self.pm_file)
            .chain(&self.seg_file)
            .map(String::as_str)
    }

    /// Reads a `result.json` written by [`ResultSummary::write`].
    pub fn read(path: &Path) -> Result<Self, ReportError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReportError::Io {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ReportError::Json {
            path: path.to_owned(),
            source,
        })
    }

    /// Writes the summary as pretty JSON.
    pub fn write(&self, path: &Path) -> Result<(), ReportError> {
        let text = serde_json::to_string_pretty(self).map_err(|source| ReportError::Json {
            path: path.to_owned(),
            source,
        })?;
        super::replace_file(path, |part| {
            std::fs::write(part, &text).map_err(|source| ReportError::Io {
                path: part.to_owned(),
                source,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(label(true), "FCD type II suspected");
        assert_eq!(label(false), "FCD type II not suspected");
    }
}
