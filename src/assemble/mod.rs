//! Series → Volume: DICOM instances (files or in-memory objects) of one series become a
//! [`Volume`] with a voxel → LPS mm affine, or a typed error naming the series and the rule.
//!
//! Frames (single-frame instances or Enhanced MR frames) are grouped into stacks by orientation,
//! matrix, pixel spacing, echo and temporal position; the largest stack is assembled and the
//! others are reported. Order comes from Image Position (Patient) along the normal ([`sort`]).

pub mod sort;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder};
use ndarray::Array3;
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
    /// Pixel data could not be decoded.
    #[error("series {series_uid}, {source_label}: cannot decode pixel data: {source}")]
    Decode {
        series_uid: String,
        source_label: String,
        #[source]
        source: Box<dicom_pixeldata::Error>,
    },
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
    let results: Vec<Result<Source, String>> = files
        .par_iter()
        .map(|path| {
            if !is_dicom_file(path) {
                return Err(format!("{}: not a DICOM Part 10 file (no DICM prefix)", path.display()));
            }
            read_files(std::slice::from_ref(path), true)
                .map(|mut v| v.remove(0))
                .map_err(|e| e.to_string())
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
            Err(reason) => skipped.push(reason),
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
    let mut stacks = split_stacks(frames);
    let mut summaries: Vec<StackSummary> = stacks.iter().map(|s| summarise(s)).collect();
    // The main stack: most frames; ties go to the first in key order.
    let main = (0..stacks.len())
        .max_by_key(|&i| (stacks[i].len(), std::cmp::Reverse(i)))
        .unwrap_or(0);
    let stack = summaries.remove(main);
    let frames = stacks.swap_remove(main);
    let geometries: Vec<FrameGeometry> = frames.iter().map(|f| f.geometry).collect();
    let ordered = sort::order_stack(&geometries, tol).map_err(|source| AssembleError::Stack {
        series_uid: uid.clone(),
        source,
    })?;
    Ok(Plan {
        meta,
        stack,
        other_stacks: summaries,
        ordered,
        frames,
    })
}

/// Assembles the instances of one series: plan, then decode every frame in slice order.
pub fn assemble_series(sources: &[Source], tol: &Tolerances) -> Result<Assembled, AssembleError> {
    let plan = plan_series(sources, tol)?;
    let uid = plan.meta.series_uid.clone();
    let [cols, rows, _] = plan.shape();
    let frames = &plan.frames;
    let slices: Vec<Vec<f32>> = plan
        .ordered
        .order
        .par_iter()
        .map(|&f| decode_frame(&sources[frames[f].source], &frames[f], &uid, rows * cols))
        .collect::<Result<_, _>>()?;
    let mut data = Array3::<f32>::zeros((cols, rows, slices.len()));
    for (k, slice) in slices.iter().enumerate() {
        for r in 0..rows {
            for c in 0..cols {
                data[[c, r, k]] = slice[r * cols + c];
            }
        }
    }
    let volume = Volume::new(data, plan.ordered.affine).map_err(|_| AssembleError::BadAttribute {
        series_uid: uid.clone(),
        source_label: sources[0].label.clone(),
        attribute: "Rows/Columns",
        value: format!("{rows}×{cols}"),
        rule: "a volume needs at least one row and column",
    })?;
    let slices = plan
        .ordered
        .order
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
    let rows = int(obj, tags::ROWS).ok_or_else(|| missing("Rows (0028,0010)"))?;
    let columns = int(obj, tags::COLUMNS).ok_or_else(|| missing("Columns (0028,0011)"))?;
    check_pixel_format(obj, s, uid)?;
    let n_frames = int(obj, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1);
    let shared = first_item(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
    let per_frame = obj
        .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|e| e.items())
        .unwrap_or(&[]);
    let mut frames = Vec::with_capacity(n_frames as usize);
    for f in 0..n_frames {
        let pf = per_frame.get(f as usize);
        // Look an attribute up in the frame's functional group, then the shared one, then the
        // top-level data set (single-frame instances).
        let lookup = |seq: Tag, tag: Tag| -> Option<Vec<f64>> {
            pf.and_then(|g| first_item(g, seq))
                .and_then(|i| numbers(i, tag))
                .or_else(|| shared.and_then(|g| first_item(g, seq)).and_then(|i| numbers(i, tag)))
                .or_else(|| numbers(obj, tag))
        };
        let position = lookup(tags::PLANE_POSITION_SEQUENCE, tags::IMAGE_POSITION_PATIENT)
            .ok_or_else(|| missing("Image Position (Patient) (0020,0032)"))?;
        let orientation = lookup(tags::PLANE_ORIENTATION_SEQUENCE, tags::IMAGE_ORIENTATION_PATIENT)
            .ok_or_else(|| missing("Image Orientation (Patient) (0020,0037)"))?;
        let spacing = lookup(tags::PIXEL_MEASURES_SEQUENCE, tags::PIXEL_SPACING)
            .ok_or_else(|| missing("Pixel Spacing (0028,0030)"))?;
        let bad = |attribute: &'static str, value: &[f64], rule: &'static str| AssembleError::BadAttribute {
            series_uid: uid.to_string(),
            source_label: s.label.clone(),
            attribute,
            value: format!("{value:?}"),
            rule,
        };
        if position.len() != 3 || position.iter().any(|v| !v.is_finite()) {
            return Err(bad("Image Position (Patient)", &position, "must be 3 finite numbers"));
        }
        if orientation.len() != 6 || orientation.iter().any(|v| !v.is_finite()) {
            return Err(bad(
                "Image Orientation (Patient)",
                &orientation,
                "must be 6 finite numbers",
            ));
        }
        if spacing.len() != 2 {
            return Err(bad("Pixel Spacing", &spacing, "must be 2 numbers"));
        }
        let rescale = |tag| lookup(tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE, tag).and_then(|v| v.first().copied());
        let slope = rescale(tags::RESCALE_SLOPE).unwrap_or(1.0);
        let intercept = rescale(tags::RESCALE_INTERCEPT).unwrap_or(0.0);
        if !slope.is_finite() || !intercept.is_finite() || slope == 0.0 {
            return Err(bad(
                "Rescale Slope/Intercept",
                &[slope, intercept],
                "slope must be finite and non-zero",
            ));
        }
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
            frame: f as u32,
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

/// Refuses pixel formats the assembler cannot turn into one scalar per voxel.
fn check_pixel_format(obj: &InMemDicomObject, s: &Source, uid: &str) -> Result<(), AssembleError> {
    let bad = |attribute: &'static str, value: String, rule: &'static str| AssembleError::BadAttribute {
        series_uid: uid.to_string(),
        source_label: s.label.clone(),
        attribute,
        value,
        rule,
    };
    let samples = int(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    if samples != 1 {
        return Err(bad(
            "Samples per Pixel",
            samples.to_string(),
            "only greyscale (1 sample) images form volumes",
        ));
    }
    let allocated = int(obj, tags::BITS_ALLOCATED).unwrap_or(0);
    let stored = int(obj, tags::BITS_STORED).unwrap_or(allocated);
    if !matches!(allocated, 8 | 16) || stored == 0 || stored > allocated {
        return Err(bad(
            "Bits Allocated/Bits Stored",
            format!("{allocated}/{stored}"),
            "unsupported bit depth: 8 or 16 bits allocated, 1..=allocated stored",
        ));
    }
    Ok(())
}

/// Raw stored values of one frame, rescaled with that frame's slope and intercept.
fn decode_frame(s: &Source, f: &Frame, uid: &str, len: usize) -> Result<Vec<f32>, AssembleError> {
    let decode_err = |source| AssembleError::Decode {
        series_uid: uid.to_string(),
        source_label: s.label.clone(),
        source: Box::new(source),
    };
    if s.object.get(tags::PIXEL_DATA).is_none() {
        return Err(AssembleError::MissingAttribute {
            series_uid: uid.to_string(),
            source_label: s.label.clone(),
            attribute: "Pixel Data (7FE0,0010)",
        });
    }
    let decoded = s.object.decode_pixel_data_frame(f.frame).map_err(decode_err)?;
    let raw: Vec<f64> = decoded
        .to_vec_frame_with_options(0, &ConvertOptions::new().with_modality_lut(ModalityLutOption::None))
        .map_err(decode_err)?;
    if raw.len() != len {
        return Err(AssembleError::BadAttribute {
            series_uid: uid.to_string(),
            source_label: s.label.clone(),
            attribute: "Pixel Data",
            value: format!("{} samples", raw.len()),
            rule: "frame size must equal Rows × Columns",
        });
    }
    Ok(raw.iter().map(|&v| (v * f.slope + f.intercept) as f32).collect())
}

/// Splits frames into stacks of one orientation, matrix, spacing, echo and temporal position.
fn split_stacks(frames: Vec<Frame>) -> Vec<Vec<Frame>> {
    let mut stacks: BTreeMap<String, Vec<Frame>> = BTreeMap::new();
    for f in frames {
        let g = &f.geometry;
        let o: Vec<String> = g
            .row_direction
            .iter()
            .chain(&g.column_direction)
            .map(|v| format!("{:.3}", v + 0.0))
            .collect();
        let key = format!(
            "{}|{}x{}|{:.4},{:.4}|{:?}|{:?}",
            o.join(","),
            g.rows,
            g.columns,
            g.pixel_spacing[0],
            g.pixel_spacing[1],
            f.echo,
            f.temporal
        );
        stacks.entry(key).or_default().push(f);
    }
    stacks.into_values().collect()
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
