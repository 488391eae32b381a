//! Series → Volume: DICOM instances (files or in-memory objects) of one series become a
//! [`Volume`] with a voxel → LPS mm affine, or a typed error naming the series and the rule.
//!
//! Frames (single-frame instances or Enhanced MR frames) are grouped into stacks by orientation
//! (within tolerance), matrix, pixel spacing, echo and temporal position; the largest stack is
//! assembled and the others are reported ([`plan_series`] says what happens on ties and mixed
//! matrices). Order comes from Image Position (Patient) along the normal ([`sort`]).
//!
//! Pixels: any transfer syntax dicom-pixeldata decodes (native, deflated, RLE, JPEG lossless,
//! JPEG-LS, JPEG 2000); 8 or 16 bits allocated, any stored width, signed or unsigned (bits
//! outside Bits Stored are dropped, signed samples sign-extended), then each frame's Rescale
//! Slope/Intercept. [`decode_frame`] exposes that step for single images. `fcdnode bench
//! assemble` ([`bench`]) times the whole stage.

pub mod sort;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};
use dicom_pixeldata::{PixelDecoder, PixelRepresentation};
use ndarray::{Array2, Array3};
use rayon::prelude::*;

use crate::volume::Volume;
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
    /// The stack's geometry breaks a rule (gap, duplicate, uneven spacing, tilt, single slice…).
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
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
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
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
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

/// Every regular file under `paths`, sorted (DICOMDIR files excluded).
pub fn list_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, AssembleError> {
    let mut files = Vec::new();
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(path) = stack.pop() {
        let meta = std::fs::metadata(&path).map_err(|source| AssembleError::Io {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            let entries = std::fs::read_dir(&path).map_err(|source| AssembleError::Io {
                path: path.clone(),
                source,
            })?;
            for entry in entries {
                let entry = entry.map_err(|source| AssembleError::Io {
                    path: path.clone(),
                    source,
                })?;
                stack.push(entry.path());
            }
        } else if path.file_name().is_some_and(|n| n != "DICOMDIR") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Parses files in parallel; the first unreadable one is the error. With `headers_only`, reading
/// stops before Pixel Data (enough for [`plan_series`]).
pub fn read_files(files: &[PathBuf], headers_only: bool) -> Result<Vec<Source>, AssembleError> {
    files
        .par_iter()
        .map(|path| {
            let options = OpenFileOptions::new();
            let options = if headers_only {
                options.read_until(tags::PIXEL_DATA)
            } else {
                options
            };
            options
                .open_file(path)
                .map(|object| Source {
                    label: path.display().to_string(),
                    object,
                })
                .map_err(|source| AssembleError::Read {
                    path: path.clone(),
                    source: Box::new(source),
                })
        })
        .collect()
}

/// DICOM headers found under some paths, grouped by series, and the files that were skipped.
pub struct Scan {
    /// Series Instance UID → its instances (headers only, no pixel data).
    pub series: BTreeMap<String, Vec<Source>>,
    /// Files left out, each with the reason (not DICOM, unreadable, no Series Instance UID).
    pub skipped: Vec<String>,
}

/// Reads the headers of every DICOM file under `paths`; a bad file is reported in
/// [`Scan::skipped`] and the scan goes on.
pub fn scan(paths: &[PathBuf]) -> Result<Scan, AssembleError> {
    let files = list_files(paths)?;
    let results: Vec<Result<Source, AssembleError>> = files
        .par_iter()
        .map(|path| {
            if !is_dicom_file(path) {
                return Err(AssembleError::NotDicom { path: path.clone() });
            }
            read_files(std::slice::from_ref(path), true).map(|mut v| v.remove(0))
        })
        .collect();
    let mut series: BTreeMap<String, Vec<Source>> = BTreeMap::new();
    let mut skipped = Vec::new();
    for r in results {
        match r {
            Ok(source) => match text(&source.object, tags::SERIES_INSTANCE_UID) {
                Some(uid) => series.entry(uid).or_default().push(source),
                None => skipped.push(format!("{}: no Series Instance UID (0020,000E)", source.label)),
            },
            Err(e) => skipped.push(e.to_string()),
        }
    }
    Ok(Scan { series, skipped })
}

/// Groups instances by Series Instance UID (in UID order).
pub fn group_by_series(sources: Vec<Source>) -> Result<BTreeMap<String, Vec<Source>>, AssembleError> {
    let mut series: BTreeMap<String, Vec<Source>> = BTreeMap::new();
    for s in sources {
        let uid = text(&s.object, tags::SERIES_INSTANCE_UID).ok_or_else(|| AssembleError::MissingAttribute {
            series_uid: "?".into(),
            source_label: s.label.clone(),
            attribute: "Series Instance UID (0020,000E)",
        })?;
        series.entry(uid).or_default().push(s);
    }
    Ok(series)
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

/// One frame, located: which source, which frame, its geometry and its rescale.
struct Frame {
    source: usize,
    frame: u32,
    geometry: FrameGeometry,
    slope: f64,
    intercept: f64,
    echo: Option<String>,
    temporal: Option<String>,
}

/// A series whose geometry has been checked: everything but the pixel values. `fcdnode
/// inspect` stops here, so it can read headers only.
pub struct Plan {
    /// Series attributes.
    pub meta: SeriesMeta,
    /// The chosen stack.
    pub stack: StackSummary,
    /// Other stacks, left out.
    pub other_stacks: Vec<StackSummary>,
    /// Slice order and affine of the chosen stack.
    pub ordered: sort::OrderedStack,
    frames: Vec<Frame>,
}

impl Plan {
    /// Volume shape `[columns, rows, slices]` (i, j, k).
    pub fn shape(&self) -> [usize; 3] {
        let g = &self.frames[0].geometry;
        [g.columns as usize, g.rows as usize, self.frames.len()]
    }
}

/// Checks the geometry of one series' instances and picks the main stack (no pixel decoding).
///
/// Frames are grouped into stacks of one orientation, matrix, pixel spacing, echo and temporal
/// position. The stack with the most frames is the main one; the rules around that choice:
/// - a tie between the largest stacks is [`AssembleError::AmbiguousStacks`] (no guessing);
/// - another stack in the main stack's plane, echo and temporal position but with a different
///   matrix or pixel spacing means the acquisition itself mixes matrices:
///   [`StackError::Mixed`] (dropping those frames would leave holes or silently shorten the
///   volume);
/// - stacks in other planes, echoes or temporal positions (localizers, second echoes, dynamics)
///   are left out and reported in [`Plan::other_stacks`].
pub fn plan_series(sources: &[Source], tol: &Tolerances) -> Result<Plan, AssembleError> {
    let first = sources.first().ok_or_else(|| AssembleError::Empty {
        what: "the series".into(),
    })?;
    let meta = series_meta(&first.object);
    let uid = meta.series_uid.clone();
    let mut frames = Vec::new();
    for (index, s) in sources.iter().enumerate() {
        frames.extend(frames_of(index, s, &uid)?);
    }
    let mut stacks = split_stacks(frames, tol);
    let largest = stacks.iter().map(Vec::len).max().unwrap_or(0);
    let tied: Vec<usize> = (0..stacks.len()).filter(|&i| stacks[i].len() == largest).collect();
    if tied.len() > 1 {
        return Err(AssembleError::AmbiguousStacks {
            series_uid: uid,
            count: tied.len(),
            frames: largest,
            stacks: tied
                .iter()
                .map(|&i| describe_stack(&summarise(&stacks[i])))
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    let Some(&main) = tied.first() else {
        return Err(AssembleError::Empty {
            what: format!("series {uid}"),
        });
    };
    let frames = stacks.swap_remove(main);
    let head = &frames[0];
    for other in &stacks {
        let o = &other[0];
        let same_plane = sort::same_orientation(&head.geometry, &o.geometry, tol);
        if same_plane && head.echo == o.echo && head.temporal == o.temporal {
            let (a, b) = (&head.geometry, &o.geometry);
            let (what, first, other) = if (a.rows, a.columns) != (b.rows, b.columns) {
                (
                    "Rows/Columns",
                    format!("{}×{} ({} frames)", a.rows, a.columns, frames.len()),
                    format!("{}×{} ({} frames)", b.rows, b.columns, other.len()),
                )
            } else {
                (
                    "Pixel Spacing",
                    format!("{:?} ({} frames)", a.pixel_spacing, frames.len()),
                    format!("{:?} ({} frames)", b.pixel_spacing, other.len()),
                )
            };
            return Err(AssembleError::Stack {
                series_uid: uid,
                source: StackError::Mixed { what, first, other },
            });
        }
    }
    let stack = summarise(&frames);
    let other_stacks = stacks.iter().map(|s| summarise(s)).collect();
    let geometries: Vec<FrameGeometry> = frames.iter().map(|f| f.geometry).collect();
    let ordered = sort::order_stack(&geometries, tol).map_err(|source| AssembleError::Stack {
        series_uid: uid.clone(),
        source,
    })?;
    Ok(Plan {
        meta,
        stack,
        other_stacks,
        ordered,
        frames,
    })
}

/// Assembles the instances of one series: plan, then decode every frame in slice order.
pub fn assemble_series(sources: &[Source], tol: &Tolerances) -> Result<Assembled, AssembleError> {
    let plan = plan_series(sources, tol)?;
    let uid = plan.meta.series_uid.clone();
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
            let obj = &sources[frames[f].source].object;
            SliceSource {
                sop_instance_uid: text(obj, tags::SOP_INSTANCE_UID).unwrap_or_default(),
                sop_class_uid: text(obj, tags::SOP_CLASS_UID).unwrap_or_default(),
                frame: frames[f].frame,
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

/// Whole slices (slice-major, each row-major: `slices[(k * rows + r) * cols + c]`) → voxels
/// `[i = c, j = r, k]` in standard (C) layout, in parallel over blocks of columns.
///
/// A plain loop is slow here: slice and column strides are multiples of 4 KiB, so every line
/// it keeps open maps to the same cache set. Instead each (column block, row) gathers its
/// `TILE × slices` values into a small local buffer (one full cache line read per slice) and
/// writes them out as `TILE` contiguous runs.
fn slices_to_ijk(slices: Vec<f32>, [cols, rows, n_slices]: [usize; 3]) -> Result<Array3<f32>, ndarray::ShapeError> {
    const TILE: usize = 16;
    let mut out = vec![0f32; slices.len()];
    let per_column = rows * n_slices;
    out.par_chunks_mut(TILE * per_column)
        .enumerate()
        .for_each(|(tile, block)| {
            let c0 = tile * TILE;
            let width = block.len() / per_column;
            let mut local = vec![0f32; TILE * n_slices];
            for r in 0..rows {
                for k in 0..n_slices {
                    let start = (k * rows + r) * cols + c0;
                    for (dc, &v) in slices[start..start + width].iter().enumerate() {
                        local[dc * n_slices + k] = v;
                    }
                }
                for dc in 0..width {
                    let at = (dc * rows + r) * n_slices;
                    block[at..at + n_slices].copy_from_slice(&local[dc * n_slices..(dc + 1) * n_slices]);
                }
            }
        });
    drop(slices);
    Array3::from_shape_vec((cols, rows, n_slices), out)
}

/// Series attributes from one instance (missing ones stay empty).
pub fn series_meta(obj: &InMemDicomObject) -> SeriesMeta {
    let shared_mr = |seq: Tag, tag: Tag| {
        first_item(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE)
            .and_then(|g| first_item(g, seq))
            .and_then(|i| number(i, tag))
    };
    SeriesMeta {
        series_uid: text(obj, tags::SERIES_INSTANCE_UID).unwrap_or_default(),
        study_uid: text(obj, tags::STUDY_INSTANCE_UID).unwrap_or_default(),
        frame_of_reference_uid: text(obj, tags::FRAME_OF_REFERENCE_UID).unwrap_or_default(),
        modality: text(obj, tags::MODALITY).unwrap_or_default(),
        series_description: text(obj, tags::SERIES_DESCRIPTION).unwrap_or_default(),
        protocol_name: text(obj, tags::PROTOCOL_NAME).unwrap_or_default(),
        sequence_name: text(obj, tags::SEQUENCE_NAME)
            .or_else(|| text(obj, tags::PULSE_SEQUENCE_NAME))
            .unwrap_or_default(),
        scanning_sequence: text(obj, tags::SCANNING_SEQUENCE).unwrap_or_default(),
        sequence_variant: text(obj, tags::SEQUENCE_VARIANT).unwrap_or_default(),
        mr_acquisition_type: text(obj, tags::MR_ACQUISITION_TYPE).unwrap_or_default(),
        repetition_time: number(obj, tags::REPETITION_TIME)
            .or_else(|| shared_mr(tags::MR_TIMING_AND_RELATED_PARAMETERS_SEQUENCE, tags::REPETITION_TIME)),
        echo_time: number(obj, tags::ECHO_TIME)
            .or_else(|| shared_mr(tags::MR_ECHO_SEQUENCE, tags::EFFECTIVE_ECHO_TIME)),
        inversion_time: number(obj, tags::INVERSION_TIME)
            .or_else(|| shared_mr(tags::MR_MODIFIER_SEQUENCE, tags::INVERSION_TIMES)),
        slice_thickness: number(obj, tags::SLICE_THICKNESS)
            .or_else(|| shared_mr(tags::PIXEL_MEASURES_SEQUENCE, tags::SLICE_THICKNESS)),
        sop_class_uid: text(obj, tags::SOP_CLASS_UID).unwrap_or_default(),
    }
}

/// The frames of one instance with their geometry; Enhanced (multi-frame) instances take
/// geometry from per-frame, then shared functional groups.
fn frames_of(index: usize, s: &Source, uid: &str) -> Result<Vec<Frame>, AssembleError> {
    let obj = &s.object;
    let missing = |attribute: &'static str| AssembleError::MissingAttribute {
        series_uid: uid.to_string(),
        source_label: s.label.clone(),
        attribute,
    };
    let bad = |attribute: &'static str, value: String, rule: &'static str| AssembleError::BadAttribute {
        series_uid: uid.to_string(),
        source_label: s.label.clone(),
        attribute,
        value,
        rule,
    };
    let rows = int(obj, tags::ROWS).ok_or_else(|| missing("Rows (0028,0010)"))?;
    let columns = int(obj, tags::COLUMNS).ok_or_else(|| missing("Columns (0028,0011)"))?;
    if !(1..=i64::from(u16::MAX)).contains(&rows) || !(1..=i64::from(u16::MAX)).contains(&columns) {
        return Err(bad(
            "Rows/Columns",
            format!("{rows}×{columns}"),
            "must be 1..=65535 each",
        ));
    }
    PixelFormat::of(obj).map_err(|(attribute, value, rule)| bad(attribute, value, rule))?;
    let per_frame = obj
        .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|e| e.items())
        .unwrap_or(&[]);
    let n_frames = int(obj, tags::NUMBER_OF_FRAMES).unwrap_or(1);
    // Each frame of a multi-frame image needs its own position: its Per-frame Functional Groups
    // item. Checking the count also bounds what a hostile Number of Frames can make us allocate.
    if n_frames < 1 || (n_frames > 1 && per_frame.len() as i64 != n_frames) {
        return Err(bad(
            "Number of Frames (0028,0008)",
            format!("{n_frames} with {} Per-frame Functional Groups items", per_frame.len()),
            "a multi-frame image needs one Per-frame Functional Groups item (with its plane position) per frame",
        ));
    }
    let mut frames = Vec::with_capacity(n_frames as usize);
    for f in 0..n_frames as u32 {
        let lookup = |seq: Tag, tag: Tag| frame_numbers(obj, f, seq, tag);
        let position = lookup(tags::PLANE_POSITION_SEQUENCE, tags::IMAGE_POSITION_PATIENT)
            .ok_or_else(|| missing("Image Position (Patient) (0020,0032)"))?;
        let orientation = lookup(tags::PLANE_ORIENTATION_SEQUENCE, tags::IMAGE_ORIENTATION_PATIENT)
            .ok_or_else(|| missing("Image Orientation (Patient) (0020,0037)"))?;
        let spacing = lookup(tags::PIXEL_MEASURES_SEQUENCE, tags::PIXEL_SPACING)
            .ok_or_else(|| missing("Pixel Spacing (0028,0030)"))?;
        if position.len() != 3 || position.iter().any(|v| !v.is_finite()) {
            return Err(bad(
                "Image Position (Patient) (0020,0032)",
                format!("{position:?}"),
                "must be 3 finite numbers",
            ));
        }
        if orientation.len() != 6 || orientation.iter().any(|v| !v.is_finite()) {
            return Err(bad(
                "Image Orientation (Patient) (0020,0037)",
                format!("{orientation:?}"),
                "must be 6 finite numbers",
            ));
        }
        if spacing.len() != 2 {
            return Err(bad(
                "Pixel Spacing (0028,0030)",
                format!("{spacing:?}"),
                "must be 2 numbers",
            ));
        }
        let (slope, intercept) = frame_rescale(obj, f).map_err(|v| {
            bad(
                "Rescale Slope/Intercept (0028,1053/0028,1052)",
                format!("{v:?}"),
                "slope must be finite and non-zero, intercept finite",
            )
        })?;
        let pf = per_frame.get(f as usize);
        let echo = pf
            .and_then(|g| first_item(g, tags::MR_ECHO_SEQUENCE))
            .and_then(|i| text(i, tags::EFFECTIVE_ECHO_TIME))
            .or_else(|| text(obj, tags::ECHO_NUMBERS));
        let temporal = pf
            .and_then(|g| first_item(g, tags::FRAME_CONTENT_SEQUENCE))
            .and_then(|i| text(i, tags::TEMPORAL_POSITION_INDEX))
            .or_else(|| text(obj, tags::TEMPORAL_POSITION_IDENTIFIER));
        frames.push(Frame {
            source: index,
            frame: f,
            geometry: FrameGeometry {
                position: [position[0], position[1], position[2]],
                row_direction: [orientation[0], orientation[1], orientation[2]],
                column_direction: [orientation[3], orientation[4], orientation[5]],
                pixel_spacing: [spacing[0], spacing[1]],
                rows: rows as u32,
                columns: columns as u32,
            },
            slope,
            intercept,
            echo,
            temporal,
        });
    }
    Ok(frames)
}

/// An attribute of frame `frame` (0-based): from its Per-frame Functional Groups item (inside
/// the `seq` macro), then the Shared Functional Groups, then the top-level data set (where
/// single-frame instances keep it).
fn frame_numbers(obj: &InMemDicomObject, frame: u32, seq: Tag, tag: Tag) -> Option<Vec<f64>> {
    let in_group = |group: Tag, index: usize| {
        obj.get(group)
            .and_then(|e| e.items())
            .and_then(|items| items.get(index))
            .and_then(|g| first_item(g, seq))
            .and_then(|i| numbers(i, tag))
    };
    in_group(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, frame as usize)
        .or_else(|| in_group(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, 0))
        .or_else(|| numbers(obj, tag))
}

/// Rescale slope and intercept of one frame (Pixel Value Transformation for Enhanced images,
/// top-level Rescale Slope/Intercept otherwise; 1 and 0 when absent). The error holds the
/// unusable pair.
fn frame_rescale(obj: &InMemDicomObject, frame: u32) -> Result<(f64, f64), [f64; 2]> {
    let value = |tag| {
        frame_numbers(obj, frame, tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE, tag).and_then(|v| v.first().copied())
    };
    let slope = value(tags::RESCALE_SLOPE).unwrap_or(1.0);
    let intercept = value(tags::RESCALE_INTERCEPT).unwrap_or(0.0);
    if !slope.is_finite() || !intercept.is_finite() || slope == 0.0 {
        return Err([slope, intercept]);
    }
    Ok((slope, intercept))
}

/// How stored samples sit in their bits: the formats the assembler turns into one scalar per
/// voxel (greyscale, 8 or 16 bits allocated, any stored width, signed or unsigned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PixelFormat {
    allocated: u16,
    stored: u16,
    high_bit: u16,
    signed: bool,
}

impl PixelFormat {
    /// Reads and checks the Image Pixel attributes; the error is (attribute, value, rule).
    fn of(obj: &InMemDicomObject) -> Result<Self, (&'static str, String, &'static str)> {
        let samples = int(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
        if samples != 1 {
            return Err((
                "Samples per Pixel (0028,0002)",
                samples.to_string(),
                "only greyscale (1 sample) images form volumes",
            ));
        }
        if let Some(pi) = text(obj, tags::PHOTOMETRIC_INTERPRETATION)
            && pi != "MONOCHROME1"
            && pi != "MONOCHROME2"
        {
            return Err((
                "Photometric Interpretation (0028,0004)",
                pi,
                "only MONOCHROME1 or MONOCHROME2 images form volumes",
            ));
        }
        let allocated = int(obj, tags::BITS_ALLOCATED).unwrap_or(0);
        let stored = int(obj, tags::BITS_STORED).unwrap_or(allocated);
        let high_bit = int(obj, tags::HIGH_BIT).unwrap_or(stored - 1);
        if !matches!(allocated, 8 | 16)
            || !(1..=allocated).contains(&stored)
            || !(stored - 1..allocated).contains(&high_bit)
        {
            return Err((
                "Bits Allocated/Bits Stored/High Bit (0028,0100-0102)",
                format!("{allocated}/{stored}/{high_bit}"),
                "unsupported bit depth: 8 or 16 bits allocated, 1..=allocated stored, stored - 1 <= high bit < allocated",
            ));
        }
        let signed = match int(obj, tags::PIXEL_REPRESENTATION).unwrap_or(0) {
            0 => false,
            1 => true,
            other => {
                return Err((
                    "Pixel Representation (0028,0103)",
                    other.to_string(),
                    "must be 0 (unsigned) or 1 (signed)",
                ));
            }
        };
        Ok(Self {
            allocated: allocated as u16,
            stored: stored as u16,
            high_bit: high_bit as u16,
            signed,
        })
    }

    /// Stored samples (little-endian words of `allocated` bits) → `slope * value + intercept`.
    /// Bits outside the stored ones (overlays, padding) are dropped; signed values are
    /// sign-extended from bit `high_bit`.
    fn convert(&self, bytes: &[u8], slope: f64, intercept: f64, out: &mut [f32]) {
        let shift = u32::from(self.high_bit + 1 - self.stored);
        let stored = u32::from(self.stored);
        let mask = if stored >= 32 { u32::MAX } else { (1u32 << stored) - 1 };
        let sign = 1u32 << (stored - 1);
        let signed = self.signed;
        let value = move |raw: u32| -> i32 {
            let v = (raw >> shift) & mask;
            if signed && v & sign != 0 {
                v as i32 - (1i32 << stored)
            } else {
                v as i32
            }
        };
        let identity = slope == 1.0 && intercept == 0.0;
        let scale = move |v: i32| -> f32 {
            if identity {
                v as f32
            } else {
                (f64::from(v) * slope + intercept) as f32
            }
        };
        if self.allocated == 8 {
            for (o, &b) in out.iter_mut().zip(bytes) {
                *o = scale(value(u32::from(b)));
            }
        } else {
            for (o, w) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = scale(value(u32::from(u16::from_le_bytes([w[0], w[1]]))));
            }
        }
    }

    fn bytes_per_sample(&self) -> usize {
        usize::from(self.allocated / 8)
    }
}

/// One frame of an instance, decoded (any transfer syntax dicom-pixeldata decodes, JPEG 2000
/// and JPEG-LS included) and rescaled with that frame's Rescale Slope and Intercept (Pixel
/// Value Transformation for Enhanced images), as `[row, column]` (voxel index space of one
/// slice: row r = j, column c = i).
///
/// This is the decode step of [`assemble_series`], usable on its own (e.g. for single images,
/// which cannot form a volume). `frame` is 0-based.
pub fn decode_frame(source: &Source, frame: u32) -> Result<Array2<f32>, AssembleError> {
    let obj = &source.object;
    let uid = text(obj, tags::SERIES_INSTANCE_UID).unwrap_or_else(|| "?".into());
    let bad = |attribute: &'static str, value: String, rule: &'static str| AssembleError::BadAttribute {
        series_uid: uid.clone(),
        source_label: source.label.clone(),
        attribute,
        value,
        rule,
    };
    let missing = |attribute: &'static str| AssembleError::MissingAttribute {
        series_uid: uid.clone(),
        source_label: source.label.clone(),
        attribute,
    };
    let rows = int(obj, tags::ROWS).ok_or_else(|| missing("Rows (0028,0010)"))?;
    let cols = int(obj, tags::COLUMNS).ok_or_else(|| missing("Columns (0028,0011)"))?;
    if !(1..=i64::from(u16::MAX)).contains(&rows) || !(1..=i64::from(u16::MAX)).contains(&cols) {
        return Err(bad("Rows/Columns", format!("{rows}×{cols}"), "must be 1..=65535 each"));
    }
    let n_frames = int(obj, tags::NUMBER_OF_FRAMES).unwrap_or(1);
    if i64::from(frame) >= n_frames {
        return Err(bad(
            "Number of Frames (0028,0008)",
            n_frames.to_string(),
            "the requested frame does not exist",
        ));
    }
    let (slope, intercept) = frame_rescale(obj, frame).map_err(|v| {
        bad(
            "Rescale Slope/Intercept (0028,1053/0028,1052)",
            format!("{v:?}"),
            "slope must be finite and non-zero, intercept finite",
        )
    })?;
    let (rows, cols) = (rows as usize, cols as usize);
    let mut out = vec![0f32; rows * cols];
    decode_pixels(source, frame, &uid, [rows, cols], slope, intercept, &mut out)?;
    Array2::from_shape_vec((rows, cols), out).map_err(|_| bad("Rows/Columns", format!("{rows}×{cols}"), "shape"))
}

/// Decodes one located frame into `out` (row-major, `rows × columns` values).
fn decode_into(s: &Source, f: &Frame, uid: &str, shape: [usize; 2], out: &mut [f32]) -> Result<(), AssembleError> {
    decode_pixels(s, f.frame, uid, shape, f.slope, f.intercept, out)
}

fn decode_pixels(
    s: &Source,
    frame: u32,
    uid: &str,
    [rows, cols]: [usize; 2],
    slope: f64,
    intercept: f64,
    out: &mut [f32],
) -> Result<(), AssembleError> {
    let bad = |attribute: &'static str, value: String, rule: &'static str| AssembleError::BadAttribute {
        series_uid: uid.to_string(),
        source_label: s.label.clone(),
        attribute,
        value,
        rule,
    };
    let format = PixelFormat::of(&s.object).map_err(|(attribute, value, rule)| bad(attribute, value, rule))?;
    if s.object.get(tags::PIXEL_DATA).is_none() {
        return Err(AssembleError::MissingAttribute {
            series_uid: uid.to_string(),
            source_label: s.label.clone(),
            attribute: "Pixel Data (7FE0,0010)",
        });
    }
    let decoded = s
        .object
        .decode_pixel_data_frame(frame)
        .map_err(|source| AssembleError::Decode {
            series_uid: uid.to_string(),
            source_label: s.label.clone(),
            source: Box::new(source),
        })?;
    let bytes = decoded.data();
    let needed = rows * cols * format.bytes_per_sample();
    // A decoder may report its own layout: it must match the header the geometry came from.
    let layout = (
        decoded.rows() as usize,
        decoded.columns() as usize,
        decoded.bits_allocated(),
        decoded.samples_per_pixel(),
        decoded.pixel_representation() == PixelRepresentation::Signed,
    );
    if layout != (rows, cols, format.allocated, 1, format.signed) || bytes.len() < needed {
        return Err(bad(
            "Pixel Data (7FE0,0010)",
            format!(
                "{} bytes decoded as {}×{}, {} bits, {} sample(s)",
                bytes.len(),
                layout.0,
                layout.1,
                layout.2,
                layout.3
            ),
            "a frame must hold Rows × Columns samples of Bits Allocated bits",
        ));
    }
    format.convert(&bytes[..needed], slope, intercept, out);
    Ok(())
}

/// Splits frames into stacks of one orientation (within tolerance), matrix, pixel spacing, echo
/// and temporal position, in order of first appearance.
fn split_stacks(frames: Vec<Frame>, tol: &Tolerances) -> Vec<Vec<Frame>> {
    let mut stacks: Vec<Vec<Frame>> = Vec::new();
    for f in frames {
        let same = |s: &&mut Vec<Frame>| {
            let (a, b) = (&s[0], &f);
            sort::same_orientation(&a.geometry, &b.geometry, tol)
                && (a.geometry.rows, a.geometry.columns) == (b.geometry.rows, b.geometry.columns)
                && sort::same_pixel_spacing(&a.geometry, &b.geometry)
                && a.echo == b.echo
                && a.temporal == b.temporal
        };
        match stacks.iter_mut().find(same) {
            Some(stack) => stack.push(f),
            None => stacks.push(vec![f]),
        }
    }
    stacks
}

/// One line about a stack, for messages.
fn describe_stack(s: &StackSummary) -> String {
    let mut text = format!("{}×{} orientation {:?}", s.matrix[0], s.matrix[1], s.orientation);
    if let Some(e) = &s.echo {
        text.push_str(&format!(" echo {e}"));
    }
    if let Some(t) = &s.temporal {
        text.push_str(&format!(" temporal position {t}"));
    }
    text
}

fn summarise(stack: &[Frame]) -> StackSummary {
    let g = &stack[0].geometry;
    let round = |v: f64| (v * 1e4).round() / 1e4 + 0.0;
    StackSummary {
        frames: stack.len(),
        matrix: [g.rows, g.columns],
        orientation: [
            round(g.row_direction[0]),
            round(g.row_direction[1]),
            round(g.row_direction[2]),
            round(g.column_direction[0]),
            round(g.column_direction[1]),
            round(g.column_direction[2]),
        ],
        echo: stack[0].echo.clone(),
        temporal: stack[0].temporal.clone(),
    }
}

fn first_item(obj: &InMemDicomObject, tag: Tag) -> Option<&InMemDicomObject> {
    obj.get(tag).and_then(|e| e.items()).and_then(|items| items.first())
}

/// Trimmed string value, `None` when absent or empty.
pub(crate) fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_matches(|c: char| c.is_whitespace() || c == '\0').to_string())
        .filter(|s| !s.is_empty())
}

fn numbers(obj: &InMemDicomObject, tag: Tag) -> Option<Vec<f64>> {
    obj.get(tag)
        .and_then(|e| e.to_multi_float64().ok())
        .filter(|v| !v.is_empty())
}

fn number(obj: &InMemDicomObject, tag: Tag) -> Option<f64> {
    numbers(obj, tag).and_then(|v| v.first().copied())
}

fn int(obj: &InMemDicomObject, tag: Tag) -> Option<i64> {
    obj.get(tag).and_then(|e| e.to_int::<i64>().ok())
}

/// `true` when `path` looks like a DICOM Part 10 file (the `DICM` magic after the preamble).
pub fn is_dicom_file(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 132];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map(|_| &head[128..] == b"DICM")
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_to_ijk_matches_the_plain_loop() {
        // 37 columns: two full 16-column tiles and a partial one.
        let [cols, rows, n] = [37, 5, 3];
        let slices: Vec<f32> = (0..cols * rows * n).map(|v| v as f32).collect();
        let data = slices_to_ijk(slices.clone(), [cols, rows, n]).unwrap();
        assert!(data.is_standard_layout());
        for k in 0..n {
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(data[[c, r, k]], slices[(k * rows + r) * cols + c], "({c}, {r}, {k})");
                }
            }
        }
    }

    fn format(allocated: u16, stored: u16, high_bit: u16, signed: bool) -> PixelFormat {
        PixelFormat {
            allocated,
            stored,
            high_bit,
            signed,
        }
    }

    fn convert(f: PixelFormat, words: &[u16], slope: f64, intercept: f64) -> Vec<f32> {
        let bytes: Vec<u8> = if f.allocated == 8 {
            words.iter().map(|&w| w as u8).collect()
        } else {
            words.iter().flat_map(|w| w.to_le_bytes()).collect()
        };
        let mut out = vec![0.0; words.len()];
        f.convert(&bytes, slope, intercept, &mut out);
        out
    }

    #[test]
    fn samples_are_masked_sign_extended_and_rescaled() {
        // 12 bits stored: bits above are overlay/padding and must not leak into values.
        assert_eq!(
            convert(format(16, 12, 11, false), &[0xF00F, 0x0FFF], 1.0, 0.0),
            [15.0, 4095.0]
        );
        // Signed 12-bit, stored without sign extension (0x0FFF = −1) and with it (0xF800 = −2048).
        assert_eq!(
            convert(format(16, 12, 11, true), &[0x0FFF, 0xF800, 0x07FF], 1.0, 0.0),
            [-1.0, -2048.0, 2047.0]
        );
        // High bit 15 with 12 bits stored: the sample sits in the top bits.
        assert_eq!(
            convert(format(16, 12, 15, false), &[0x0010, 0xFFF0], 1.0, 0.0),
            [1.0, 4095.0]
        );
        assert_eq!(
            convert(format(8, 8, 7, true), &[0xFF, 0x80, 0x7F], 1.0, 0.0),
            [-1.0, -128.0, 127.0]
        );
        assert_eq!(convert(format(8, 8, 7, false), &[0xFF], 1.0, 0.0), [255.0]);
        assert_eq!(
            convert(format(16, 16, 15, true), &[0xFFFF, 10], 2.0, -1000.0),
            [-1002.0, -980.0]
        );
    }
}
