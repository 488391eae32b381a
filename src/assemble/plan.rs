//! Instance headers → a checked plan: the frames of each instance with their geometry and
//! rescale ([`InstanceHeader`], read once where the instance is parsed), stacks, the choice of
//! the main stack ([`Plan`], [`plan_series`]), series attributes and stack summaries. No pixel
//! data is read here.

use std::path::PathBuf;

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, OpenFileOptions};

use super::decode::{PixelFormat, int, matrix};
use super::sort::{self, FrameGeometry, StackError, Tolerances};
use super::{AssembleError, Blame, SeriesMeta, Source, StackSummary};

/// What planning needs from one instance: its identity, the series attributes and each frame's
/// geometry and rescale. Ingest reads it from the header it has parsed anyway and stores it, so
/// the tracker plans without opening the file again.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InstanceHeader {
    /// File path or other label, for messages and for reading the pixels later.
    pub label: String,
    /// SOP Instance UID.
    pub sop_instance_uid: String,
    /// SOP Class UID.
    pub sop_class_uid: String,
    /// Series attributes as this instance states them.
    pub meta: SeriesMeta,
    /// Its frames (one for a single-frame instance).
    pub frames: Vec<FrameHeader>,
}

/// One frame of an instance: geometry, rescale, echo and temporal position.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FrameHeader {
    /// Frame number within the instance, 0-based.
    pub frame: u32,
    /// Where the frame lies.
    pub geometry: FrameGeometry,
    /// Rescale Slope.
    pub slope: f64,
    /// Rescale Intercept.
    pub intercept: f64,
    /// Echo number or effective echo time.
    pub echo: Option<String>,
    /// Temporal position.
    pub temporal: Option<String>,
}

impl InstanceHeader {
    /// Reads the planning facts from a parsed instance (header only is enough); the error names
    /// the attribute and the rule it breaks.
    pub fn read(obj: &InMemDicomObject, label: &str) -> Result<Self, AssembleError> {
        let meta = series_meta(obj);
        let frames = frames_of(obj, label, &meta.series_uid)?;
        Ok(Self {
            label: label.to_string(),
            sop_instance_uid: text(obj, tags::SOP_INSTANCE_UID).unwrap_or_default(),
            sop_class_uid: meta.sop_class_uid.clone(),
            meta,
            frames,
        })
    }

    /// Reads the header of a DICOM file (stops before Pixel Data).
    pub fn read_file(path: &std::path::Path) -> Result<Self, AssembleError> {
        let object = OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .open_file(path)
            .map_err(|source| AssembleError::Read {
                path: path.to_owned(),
                source: Box::new(source),
            })?;
        Self::read(&object, &path.display().to_string())
    }

    /// The headers of parsed sources, in order.
    pub fn of_sources(sources: &[Source]) -> Result<Vec<Self>, AssembleError> {
        sources.iter().map(|s| Self::read(&s.object, &s.label)).collect()
    }
}

/// One frame of the plan: which instance (index into [`Plan::instances`]) and its header.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) struct Frame {
    pub(super) source: usize,
    #[serde(flatten)]
    pub(super) header: FrameHeader,
}

/// An instance the plan reads pixels from.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PlannedInstance {
    /// File path or other label.
    pub label: String,
    /// SOP Instance UID: checked again when the pixels are read.
    pub sop_instance_uid: String,
    /// SOP Class UID.
    pub sop_class_uid: String,
}

/// A series whose geometry has been checked: everything but the pixel values. The tracker
/// stores it with the job and the pipeline decodes by it; `fcdnode inspect` stops here.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    /// Series attributes.
    pub meta: SeriesMeta,
    /// The chosen stack.
    pub stack: StackSummary,
    /// Other stacks, left out.
    pub other_stacks: Vec<StackSummary>,
    /// Slice order and affine of the chosen stack.
    pub ordered: sort::OrderedStack,
    /// The instances planned from, in the order given.
    pub instances: Vec<PlannedInstance>,
    pub(super) frames: Vec<Frame>,
}

impl Plan {
    /// Volume shape `[columns, rows, slices]` (i, j, k).
    pub fn shape(&self) -> [usize; 3] {
        let g = &self.frames[0].header.geometry;
        [g.columns as usize, g.rows as usize, self.frames.len()]
    }

    /// The instances as file paths (labels are paths for files), in plan order.
    pub fn files(&self) -> Vec<PathBuf> {
        self.instances.iter().map(|i| PathBuf::from(&i.label)).collect()
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
pub fn plan_series(headers: &[InstanceHeader], tol: &Tolerances) -> Result<Plan, AssembleError> {
    let first = headers.first().ok_or_else(|| AssembleError::Empty {
        what: "the series".into(),
    })?;
    let meta = first.meta.clone();
    let uid = meta.series_uid.clone();
    let frames = headers
        .iter()
        .enumerate()
        .flat_map(|(source, h)| {
            h.frames.iter().map(move |f| Frame {
                source,
                header: f.clone(),
            })
        })
        .collect();
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
    let head = &frames[0].header;
    for other in &stacks {
        let o = &other[0].header;
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
    let geometries: Vec<FrameGeometry> = frames.iter().map(|f| f.header.geometry).collect();
    let ordered = sort::order_stack(&geometries, tol).map_err(|source| AssembleError::Stack {
        series_uid: uid.clone(),
        source,
    })?;
    let instances = headers
        .iter()
        .map(|h| PlannedInstance {
            label: h.label.clone(),
            sop_instance_uid: h.sop_instance_uid.clone(),
            sop_class_uid: h.sop_class_uid.clone(),
        })
        .collect();
    Ok(Plan {
        meta,
        stack,
        other_stacks,
        ordered,
        instances,
        frames,
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
fn frames_of(obj: &InMemDicomObject, label: &str, uid: &str) -> Result<Vec<FrameHeader>, AssembleError> {
    let blame = Blame::new(uid, label);
    let missing = |attribute| blame.missing(attribute);
    let bad = |attribute, value, rule| blame.bad(attribute, value, rule);
    let (rows, columns) = matrix(obj, blame)?;
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
        let stated_step_mm = [tags::SPACING_BETWEEN_SLICES, tags::SLICE_THICKNESS]
            .into_iter()
            .filter_map(|tag| lookup(tags::PIXEL_MEASURES_SEQUENCE, tag)?.first().copied())
            .find(|s| s.is_finite() && *s > 0.0);
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
        frames.push(FrameHeader {
            frame: f,
            geometry: FrameGeometry {
                position: [position[0], position[1], position[2]],
                row_direction: [orientation[0], orientation[1], orientation[2]],
                column_direction: [orientation[3], orientation[4], orientation[5]],
                pixel_spacing: [spacing[0], spacing[1]],
                rows: rows as u32,
                columns: columns as u32,
                stated_step_mm,
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
pub(super) fn frame_rescale(obj: &InMemDicomObject, frame: u32) -> Result<(f64, f64), [f64; 2]> {
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

/// Splits frames into stacks of one orientation (within tolerance), matrix, pixel spacing, echo
/// and temporal position, in order of first appearance.
fn split_stacks(frames: Vec<Frame>, tol: &Tolerances) -> Vec<Vec<Frame>> {
    let mut stacks: Vec<Vec<Frame>> = Vec::new();
    for f in frames {
        let same = |s: &&mut Vec<Frame>| {
            let (a, b) = (&s[0].header, &f.header);
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
    let head = &stack[0].header;
    let g = &head.geometry;
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
        echo: head.echo.clone(),
        temporal: head.temporal.clone(),
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
