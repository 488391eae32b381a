//! Seeded synthetic FCD-II cohort: phantoms from the MNI152 templates, written as a BIDS tree
//! mirroring ds004199 and, optionally, as DICOM series.
//!
//! - [`phantom`]: anatomy, per-subject deformation, contrasts, bias, noise, FCD-II lesion + ROI.
//! - [`dicom`]: a `Volume` → one DICOM series (MR or Enhanced MR, any plane, order, syntax).

mod cohort;
pub mod dicom;
pub mod phantom;
pub mod preview;

pub use cohort::{
    AcquisitionGroup, CohortOptions, CohortReport, DicomExport, KnobRange, KnobRangeError, Participant, Timings,
    generate, participants,
};

use std::path::PathBuf;

use crate::nifti::NiftiError;
use crate::volume::VolumeError;

/// Why a cohort could not be generated; variants name the option, file or stage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SynthError {
    /// An option value that cannot make a cohort.
    #[error("invalid option --{option}: {rule}")]
    BadOption { option: &'static str, rule: String },
    /// A file or directory could not be written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The preview PNG could not be written.
    #[error("{path}: cannot write PNG: {source}")]
    Png {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    /// Phantom rendering failed.
    #[error(transparent)]
    Phantom(#[from] phantom::PhantomError),
    /// Writing a DICOM series failed.
    #[error(transparent)]
    Dicom(#[from] dicom::DicomWriteError),
    /// Writing a NIfTI file failed.
    #[error(transparent)]
    Nifti(#[from] NiftiError),
    /// Grid geometry was invalid.
    #[error("invalid acquisition geometry: {0}")]
    Geometry(#[from] VolumeError),
}

/// Order of Instance Numbers relative to the slice positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SliceOrder {
    /// Instance Number grows with slice index.
    #[default]
    Asc,
    /// Instance Number falls with slice index.
    Desc,
    /// Instance Numbers are a seeded random permutation of the slices.
    Shuffled,
}
