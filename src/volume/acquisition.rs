//! Acquisition geometry: the voxel grid a scanner writes for a plane, field of view and centre.
//! The synthetic cohort, the benchmarks and geometry tests build their series on it.

use nalgebra::{Matrix3, Rotation3, Vector3};

use super::{Affine, Grid, VolumeError};

/// Acquisition plane of a series: which way the slices are cut.
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
