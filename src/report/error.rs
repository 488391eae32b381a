//! The report stage's error type.

use std::path::PathBuf;

/// Why an output could not be made or written; variants name the series, file or field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// A rerun of a job whose SR went ahead would not make what that SR names (the model,
    /// the configuration or the input changed in between), or an output's reference differs
    /// from the one planned for the SR.
    #[error("{dir}: {what}")]
    Diverged { dir: PathBuf, what: String },
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
    /// A reformatted view of the source could not be sampled.
    #[error("series {series_uid}: cannot reformat the source for the key image: {source}")]
    Reformat {
        series_uid: String,
        #[source]
        source: crate::volume::VolumeError,
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
    #[error("{path}: cannot read DICOM: {source}")]
    ReadDicom {
        path: PathBuf,
        source: Box<dicom_object::ReadError>,
    },
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
    /// `result.json` could not be written or read back.
    #[error("{path}: result JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}
