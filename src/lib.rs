//! fcdnode: DICOM triage node for focal cortical dysplasia type II, and the library its trainer
//! shares.
//!
//! Module map (pipeline stages are added as they are built):
//! - [`volume`]: `Volume` (f32 voxels + voxel → LPS mm affine), reorientation, resampling,
//!   crop/pad, foreground mask, z-score; the geometry every other part uses.
//! - [`nifti`]: NIfTI-1 read/write with NIfTI's RAS world mapped to LPS.
//! - [`synth`]: seeded synthetic FCD-II cohort (BIDS NIfTI tree and DICOM series).

pub mod assemble;
pub mod config;
pub mod nifti;
pub mod package;
pub mod synth;
pub mod tracker;
pub mod volume;

pub use volume::{Affine, Grid, Interp, Orientation, Volume, VolumeError};
