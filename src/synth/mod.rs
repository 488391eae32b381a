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
    AcquisitionGroup, CohortOptions, CohortReport, DicomExport, Participant, Timings, generate, participants,
};

use nalgebra::{Matrix3, Rotation3, Vector3};

use std::path::PathBuf;

use crate::nifti::NiftiError;
use crate::volume::{Affine, Grid, VolumeError};

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

/// Acquisition plane of a synthetic series: which way the slices are cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Plane {
    /// Slices stacked inferior → superior; rows run to the patient's left, columns posterior.
    #[default]
    Axial,
    /// Slices stacked right → left; rows run posterior, columns inferior.
    Sagittal,
    /// Slices stacked anterior → posterior; rows run to the left, columns inferior.
    Coronal,
    /// Axial tilted by 17° about the left–right axis and 11° about the anterior–posterior axis.
    Oblique,
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

impl Plane {
    /// Unit LPS directions of the voxel axes (i along a row, j down a column, k across slices).
    pub fn directions(self) -> [[f64; 3]; 3] {
        let (row, col) = match self {
            Plane::Axial => (Vector3::new(1.0, 0.0, 0.0), Vector3::new(0.0, 1.0, 0.0)),
            Plane::Sagittal => (Vector3::new(0.0, 1.0, 0.0), Vector3::new(0.0, 0.0, -1.0)),
            Plane::Coronal => (Vector3::new(1.0, 0.0, 0.0), Vector3::new(0.0, 0.0, -1.0)),
            Plane::Oblique => {
                let tilt: Matrix3<f64> = (Rotation3::from_axis_angle(&Vector3::y_axis(), 11f64.to_radians())
                    * Rotation3::from_axis_angle(&Vector3::x_axis(), 17f64.to_radians()))
                .into_inner();
                (tilt * Vector3::new(1.0, 0.0, 0.0), tilt * Vector3::new(0.0, 1.0, 0.0))
            }
        };
        let normal = row.cross(&col);
        [row.into(), col.into(), normal.into()]
    }
}

/// The grid of one acquisition: voxel size `voxel_mm` (along i, j, k), covering at least
/// `fov_mm` (a box along the plane's own axes) centred on `centre_lps`.
pub fn acquisition_grid(
    plane: Plane,
    voxel_mm: [f64; 3],
    fov_mm: [f64; 3],
    centre_lps: [f64; 3],
) -> Result<Grid, VolumeError> {
    let dirs = plane.directions();
    let shape: [usize; 3] = std::array::from_fn(|a| ((fov_mm[a] / voxel_mm[a]).ceil() as usize).max(1));
    // Voxel 0 sits half the extent back from the centre along every axis.
    let origin = std::array::from_fn(|r| {
        centre_lps[r]
            - (0..3)
                .map(|a| dirs[a][r] * voxel_mm[a] * (shape[a] - 1) as f64 / 2.0)
                .sum::<f64>()
    });
    let affine = Affine::from_parts(voxel_mm, dirs, origin)?;
    Ok(Grid { shape, affine })
}
