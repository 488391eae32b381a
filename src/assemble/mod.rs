//! Series → Volume: DICOM instances (files or in-memory objects) of one series become a
//! [`Volume`] with a voxel → LPS mm affine, or a typed error naming the series and the rule.
//!
//! Frames (single-frame instances or Enhanced MR frames) are grouped into stacks by orientation
//! (within tolerance), matrix, pixel spacing, echo and temporal position; the largest stack is
//! assembled and the others are reported ([`plan_series`] says what happens on ties and mixed
//! matrices). Order comes from Image Position (Patient) along the normal ([`sort`]); a single
//! slice becomes a one-slice volume stepped by Spacing Between Slices or Slice Thickness, as
//! dcm2niix converts it (whether a model can use it is routing's and preprocessing's call).
//!
//! Pixels: any transfer syntax dicom-pixeldata decodes (native, deflated, RLE, JPEG lossless,
//! JPEG-LS, JPEG 2000); 8 or 16 bits allocated, any stored width, signed or unsigned (bits
//! outside Bits Stored are dropped, signed samples sign-extended), then each frame's Rescale
//! Slope/Intercept. [`decode_frame`] exposes that step for single images. `fcdnode bench
//! assemble` ([`bench`]) times the whole stage.
//!
//! Layout: `scan` lists files, reads them into [`Source`]s and groups them by series
//! ([`list_files`], [`read_files`], [`scan`](fn@scan), [`group_by_series`]); `plan` locates each
//! instance's frames, splits them into stacks and checks the main one ([`plan_series`],
//! [`series_meta`]); `decode` turns pixel data into rescaled values ([`decode_frame`]) and slices
//! into `[i, j, k]` voxels; [`sort`] orders a stack along its normal and derives the affine. This
//! file holds the error, the public types and the entry points ([`assemble_paths`], [`assemble`],
//! [`assemble_series`]).

mod decode;
mod plan;
mod scan;
pub mod sort;

use std::path::PathBuf;

use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;
use rayon::prelude::*;

use crate::volume::Volume;
pub use decode::decode_frame;
use decode::{decode_into, slices_to_ijk};
pub(crate) use plan::text;
pub use plan::{FrameHeader, InstanceHeader, Plan, PlannedInstance, plan_series, series_meta};
pub use scan::{Scan, group_by_series, is_dicom_file, list_files, read_files, scan};
pub use sort::{FrameGeometry, StackError, Tolerances};

/// Why a series could not become a volume; every variant names the series or file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AssembleError {
    /// A file could not be parsed as DICOM (truncated, not DICOM, broken element).
    #[error("{path}: cannot read DICOM: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: Box<dicom_object::ReadError>,
    },
    /// A file is not DICOM Part 10 (no `DICM` prefix).
    #[error("{path}: not a DICOM Part 10 file (no DICM prefix)")]
    NotDicom { path: PathBuf },
    /// A directory could not be listed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No instance was given.
    #[error("no DICOM instance found in {what}")]
    Empty { what: String },
    /// Instances of several series were given where one was expected.
    #[error("{count} series found ({uids}); pick one with --series")]
    SeveralSeries { count: usize, uids: String },
    /// The requested series is not among the instances.
    #[error("series {series_uid} not found; present: {present}")]
    SeriesNotFound { series_uid: String, present: String },
    /// A required attribute is absent or unreadable.
    #[error("series {series_uid}, {source_label}: missing or unreadable {attribute}")]
    MissingAttribute {
        series_uid: String,
        source_label: String,
        attribute: &'static str,
    },
    /// An attribute holds a value the assembler cannot use.
    #[error("series {series_uid}, {source_label}: {attribute} = {value}: {rule}")]
    BadAttribute {
        series_uid: String,
        source_label: String,
        attribute: &'static str,
        value: String,
        rule: &'static str,
    },
    /// The stack's geometry breaks a rule (gap, duplicate, uneven spacing, tilt, a single slice
    /// with no stated step…).
    #[error("series {series_uid}: {source}")]
    Stack {
        series_uid: String,
        #[source]
        source: StackError,
    },
    /// Several stacks tie for the main one, so none can be picked without a guess.
    #[error(
        "series {series_uid}: {count} stacks of {frames} frames each ({stacks}): \
         no single main stack to assemble"
    )]
    AmbiguousStacks {
        series_uid: String,
        count: usize,
        frames: usize,
        stacks: String,
    },
    /// Pixel data could not be decoded.
    #[error("series {series_uid}, {source_label}: cannot decode pixel data: {source}")]
    Decode {
        series_uid: String,
        source_label: String,
        #[source]
        source: Box<dicom_pixeldata::Error>,
    },
}

impl AssembleError {
    /// The series the error is about, when it names one.
    pub fn series_uid(&self) -> Option<&str> {
        match self {
            Self::MissingAttribute { series_uid, .. }
            | Self::BadAttribute { series_uid, .. }
            | Self::Stack { series_uid, .. }
            | Self::AmbiguousStacks { series_uid, .. }
            | Self::Decode { series_uid, .. } => Some(series_uid),
            _ => None,
        }
    }
}

/// The series and instance an error is about: builds the errors every attribute check raises.
#[derive(Clone, Copy)]
pub(crate) struct Blame<'a> {
    series_uid: &'a str,
    label: &'a str,
}

impl<'a> Blame<'a> {
    pub(crate) fn new(series_uid: &'a str, label: &'a str) -> Self {
        Self { series_uid, label }
    }

    pub(crate) fn missing(self, attribute: &'static str) -> AssembleError {
        AssembleError::MissingAttribute {
            series_uid: self.series_uid.to_string(),
            source_label: self.label.to_string(),
            attribute,
        }
    }

    pub(crate) fn bad(self, attribute: &'static str, value: String, rule: &'static str) -> AssembleError {
        AssembleError::BadAttribute {
            series_uid: self.series_uid.to_string(),
            source_label: self.label.to_string(),
            attribute,
            value,
            rule,
        }
    }
}

/// One DICOM instance to assemble and the name errors should use for it (its path, or its SOP
/// Instance UID for objects received over the network).
pub struct Source {
    /// File path or other label.
    pub label: String,
    /// The parsed instance, pixel data included.
    pub object: DefaultDicomObject,
}

/// Where a voxel slice came from: instance and frame (0-based).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SliceSource {
    /// SOP Instance UID of the instance holding the frame.
    pub sop_instance_uid: String,
    /// SOP Class UID of that instance.
    pub sop_class_uid: String,
    /// Frame number within the instance, 0-based (always 0 for single-frame instances).
    pub frame: u32,
}

/// A stack found in the series, as reported by [`assemble`] and `fcdnode inspect`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StackSummary {
    /// Frames in the stack.
    pub frames: usize,
    /// Rows × Columns.
    pub matrix: [u32; 2],
    /// Image Orientation (Patient), rounded.
    pub orientation: [f64; 6],
    /// Echo number or effective echo time, when several exist.
    pub echo: Option<String>,
    /// Temporal position, when several exist.
    pub temporal: Option<String>,
}

/// Descriptive attributes of the series, taken from its first instance.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SeriesMeta {
    /// Series Instance UID.
    pub series_uid: String,
    /// Study Instance UID.
    pub study_uid: String,
    /// Frame of Reference UID.
    pub frame_of_reference_uid: String,
    /// Modality.
    pub modality: String,
    /// Series Description.
    pub series_description: String,
    /// Protocol Name.
    pub protocol_name: String,
    /// Sequence Name (or Pulse Sequence Name for Enhanced MR).
    pub sequence_name: String,
    /// Scanning Sequence (e.g. `GR\IR`).
    pub scanning_sequence: String,
    /// Sequence Variant.
    pub sequence_variant: String,
    /// MR Acquisition Type (`2D`/`3D`).
    pub mr_acquisition_type: String,
    /// Repetition Time in ms.
    pub repetition_time: Option<f64>,
    /// Echo Time in ms.
    pub echo_time: Option<f64>,
    /// Inversion Time in ms.
    pub inversion_time: Option<f64>,
    /// Slice Thickness in mm.
    pub slice_thickness: Option<f64>,
    /// SOP Class UID of the first instance.
    pub sop_class_uid: String,
}

/// The assembled volume with its provenance.
#[derive(Debug)]
pub struct Assembled {
    /// Voxels `[i, j, k]` (i along a row, j down a column, k across slices) and voxel → LPS mm.
    pub volume: Volume,
    /// Series attributes.
    pub meta: SeriesMeta,
    /// For each k, the instance and frame it came from.
    pub slices: Vec<SliceSource>,
    /// The assembled stack.
    pub stack: StackSummary,
    /// Other stacks of the series that were left out (localizers, other echoes, …).
    pub other_stacks: Vec<StackSummary>,
}

/// Reads every DICOM file under `paths` (directories are walked) and assembles the one series
/// they hold, or `series_uid` when given.
pub fn assemble_paths(paths: &[PathBuf], series_uid: Option<&str>) -> Result<Assembled, AssembleError> {
    let files = list_files(paths)?;
    let sources = read_files(&files, false)?;
    assemble(sources, series_uid, &Tolerances::default())
}

/// Assembles the single series among `sources` (or `series_uid`).
pub fn assemble(sources: Vec<Source>, series_uid: Option<&str>, tol: &Tolerances) -> Result<Assembled, AssembleError> {
    if sources.is_empty() {
        return Err(AssembleError::Empty {
            what: "the given paths".into(),
        });
    }
    let mut series = group_by_series(sources)?;
    let uids = series.keys().cloned().collect::<Vec<_>>().join(", ");
    let chosen = match series_uid {
        Some(uid) => series.remove(uid).ok_or_else(|| AssembleError::SeriesNotFound {
            series_uid: uid.to_string(),
            present: uids,
        })?,
        None if series.len() == 1 => series.into_values().next().unwrap_or_default(),
        None => {
            return Err(AssembleError::SeveralSeries {
                count: series.len(),
                uids,
            });
        }
    };
    assemble_series(&chosen, tol)
}

/// Assembles the instances of one series: plan, then decode every frame in slice order.
pub fn assemble_series(sources: &[Source], tol: &Tolerances) -> Result<Assembled, AssembleError> {
    let plan = plan_series(&InstanceHeader::of_sources(sources)?, tol)?;
    assemble_planned(plan, sources)
}

/// Decodes a series by a plan made earlier (by the tracker, from the headers ingest stored):
/// `sources` are the plan's instances, in its order, now read whole. An instance that is not
/// the one planned (a file replaced in between) is an error, not a silent mix.
pub fn assemble_planned(plan: Plan, sources: &[Source]) -> Result<Assembled, AssembleError> {
    let uid = plan.meta.series_uid.clone();
    if sources.len() != plan.instances.len() {
        return Err(AssembleError::BadAttribute {
            series_uid: uid,
            source_label: sources.first().map(|s| s.label.clone()).unwrap_or_default(),
            attribute: "instances",
            value: format!("{} read, {} planned", sources.len(), plan.instances.len()),
            rule: "the pixels must come from the instances the series was planned from",
        });
    }
    for (source, planned) in sources.iter().zip(&plan.instances) {
        let found = text(&source.object, tags::SOP_INSTANCE_UID).unwrap_or_default();
        if found != planned.sop_instance_uid {
            return Err(AssembleError::BadAttribute {
                series_uid: uid,
                source_label: source.label.clone(),
                attribute: "SOP Instance UID (0008,0018)",
                value: found,
                rule: "the file no longer holds the instance the series was planned from",
            });
        }
    }
    let [cols, rows, n_slices] = plan.shape();
    let frames = &plan.frames;
    let order = &plan.ordered.order;
    // Decode straight into one buffer of whole slices (slice k = row-major pixels), in parallel.
    let pixels = rows * cols;
    let mut slices = vec![0f32; pixels * n_slices];
    slices
        .par_chunks_mut(pixels)
        .zip(order.par_iter())
        .try_for_each(|(out, &f)| decode_into(&sources[frames[f].source], &frames[f], &uid, [rows, cols], out))?;
    let volume = slices_to_ijk(slices, [cols, rows, n_slices])
        .ok()
        .and_then(|data| Volume::new(data, plan.ordered.affine).ok())
        .ok_or_else(|| AssembleError::BadAttribute {
            series_uid: uid.clone(),
            source_label: sources[0].label.clone(),
            attribute: "Rows/Columns",
            value: format!("{rows}×{cols}"),
            rule: "a volume needs at least one row and column",
        })?;
    let slices = order
        .iter()
        .map(|&f| {
            let instance = &plan.instances[frames[f].source];
            SliceSource {
                sop_instance_uid: instance.sop_instance_uid.clone(),
                sop_class_uid: instance.sop_class_uid.clone(),
                frame: frames[f].header.frame,
            }
        })
        .collect();
    Ok(Assembled {
        volume,
        meta: plan.meta,
        slices,
        stack: plan.stack,
        other_stacks: plan.other_stacks,
    })
}
