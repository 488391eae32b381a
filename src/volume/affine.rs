//! The voxel → patient (LPS mm) transform and the axis-code orientation built on it.

use nalgebra::{Matrix4, Vector4};
use std::fmt;

use super::VolumeError;

/// A 4×4 affine from voxel index (i, j, k) to patient coordinates in LPS millimetres.
///
/// LPS is DICOM's patient system: +x towards the patient's left, +y posterior, +z superior.
/// NIfTI's world is RAS; [`Affine::to_ras`] and [`Affine::from_ras`] convert.
///
/// Stored (serde) as its four rows; reading one back checks it again.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(into = "[[f64; 4]; 4]", try_from = "[[f64; 4]; 4]")]
pub struct Affine(Matrix4<f64>);

impl From<Affine> for [[f64; 4]; 4] {
    fn from(a: Affine) -> Self {
        std::array::from_fn(|r| std::array::from_fn(|c| a.0[(r, c)]))
    }
}

impl TryFrom<[[f64; 4]; 4]> for Affine {
    type Error = VolumeError;

    fn try_from(rows: [[f64; 4]; 4]) -> Result<Self, VolumeError> {
        Self::new(Matrix4::from_fn(|r, c| rows[r][c]))
    }
}

impl Affine {
    /// Checks that the matrix is finite, affine (last row 0 0 0 1) and invertible.
    pub fn new(m: Matrix4<f64>) -> Result<Self, VolumeError> {
        if m.iter().any(|v| !v.is_finite()) {
            return Err(VolumeError::BadAffine {
                rule: "every element must be finite".into(),
            });
        }
        let last = m.row(3);
        if last[0] != 0.0 || last[1] != 0.0 || last[2] != 0.0 || last[3] != 1.0 {
            return Err(VolumeError::BadAffine {
                rule: format!("last row must be 0 0 0 1, found {last}"),
            });
        }
        let det = m.fixed_view::<3, 3>(0, 0).determinant();
        if det.abs() < 1e-9 {
            return Err(VolumeError::BadAffine {
                rule: format!("the 3×3 part must be invertible (determinant {det})"),
            });
        }
        Ok(Self(m))
    }

    /// Voxel index → LPS mm from spacing, unit direction columns and the LPS position of voxel 0.
    pub fn from_parts(spacing: [f64; 3], directions: [[f64; 3]; 3], origin: [f64; 3]) -> Result<Self, VolumeError> {
        let mut m = Matrix4::identity();
        for (col, (dir, s)) in directions.iter().zip(spacing).enumerate() {
            for row in 0..3 {
                m[(row, col)] = dir[row] * s;
            }
        }
        for row in 0..3 {
            m[(row, 3)] = origin[row];
        }
        Self::new(m)
    }

    /// The raw matrix (voxel index → LPS mm).
    pub fn matrix(&self) -> &Matrix4<f64> {
        &self.0
    }

    /// The same transform expressed as voxel index → RAS mm (NIfTI's world).
    pub fn to_ras(&self) -> Matrix4<f64> {
        flip_xy() * self.0
    }

    /// Builds the voxel index → LPS mm transform from a voxel index → RAS mm matrix.
    pub fn from_ras(ras: Matrix4<f64>) -> Result<Self, VolumeError> {
        Self::new(flip_xy() * ras)
    }

    /// Voxel index (possibly fractional) → LPS mm.
    pub fn apply(&self, ijk: [f64; 3]) -> [f64; 3] {
        let v = self.0 * Vector4::new(ijk[0], ijk[1], ijk[2], 1.0);
        [v[0], v[1], v[2]]
    }

    /// The inverse matrix: LPS mm → voxel index.
    pub fn inverse(&self) -> Matrix4<f64> {
        // `new` checked the determinant, so the inverse exists.
        self.0.try_inverse().unwrap_or_else(Matrix4::identity)
    }

    /// LPS mm → fractional voxel index.
    pub fn world_to_voxel(&self, lps: [f64; 3]) -> [f64; 3] {
        let v = self.inverse() * Vector4::new(lps[0], lps[1], lps[2], 1.0);
        [v[0], v[1], v[2]]
    }

    /// Voxel size along each voxel axis, in mm (lengths of the first three columns).
    pub fn spacing(&self) -> [f64; 3] {
        let m = &self.0;
        std::array::from_fn(|c| (m[(0, c)].powi(2) + m[(1, c)].powi(2) + m[(2, c)].powi(2)).sqrt())
    }

    /// Unit LPS direction of each voxel axis: `directions()[axis] = [x, y, z]`.
    pub fn directions(&self) -> [[f64; 3]; 3] {
        let s = self.spacing();
        std::array::from_fn(|c| std::array::from_fn(|r| self.0[(r, c)] / s[c]))
    }

    /// LPS position of voxel (0, 0, 0) in mm.
    pub fn origin(&self) -> [f64; 3] {
        [self.0[(0, 3)], self.0[(1, 3)], self.0[(2, 3)]]
    }

    /// Composes with an index transform: the result maps index `n` to `self(t · n)`.
    pub(crate) fn then_index(&self, t: &Matrix4<f64>) -> Result<Self, VolumeError> {
        Self::new(self.0 * t)
    }

    /// Largest absolute difference between the two matrices.
    pub fn max_abs_diff(&self, other: &Affine) -> f64 {
        (self.0 - other.0).abs().max()
    }

    /// The closest axis-code orientation (which anatomical direction each voxel axis points to).
    pub fn orientation(&self) -> Orientation {
        // Greedy assignment on the largest absolute direction cosine, as nibabel's
        // `io_orientation` does, so that oblique axes still map to a permutation.
        let d = self.directions();
        let mut used_axis = [false; 3];
        let mut used_world = [false; 3];
        let mut codes = [AxisCode::L; 3];
        for _ in 0..3 {
            let mut best = (0, 0, -1.0);
            for (a, dir) in d.iter().enumerate() {
                for (w, c) in dir.iter().enumerate() {
                    if !used_axis[a] && !used_world[w] && c.abs() > best.2 {
                        best = (a, w, c.abs());
                    }
                }
            }
            let (a, w, _) = best;
            used_axis[a] = true;
            used_world[w] = true;
            codes[a] = AxisCode::from_world_axis(w, d[a][w] >= 0.0);
        }
        Orientation(codes)
    }
}

fn flip_xy() -> Matrix4<f64> {
    Matrix4::from_diagonal(&Vector4::new(-1.0, -1.0, 1.0, 1.0))
}

/// The anatomical direction a voxel axis points towards as its index increases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AxisCode {
    /// Left (+x in LPS).
    L,
    /// Right (−x in LPS).
    R,
    /// Posterior (+y in LPS).
    P,
    /// Anterior (−y in LPS).
    A,
    /// Superior (+z in LPS).
    S,
    /// Inferior (−z in LPS).
    I,
}

impl AxisCode {
    fn from_world_axis(world: usize, positive: bool) -> Self {
        match (world, positive) {
            (0, true) => Self::L,
            (0, false) => Self::R,
            (1, true) => Self::P,
            (1, false) => Self::A,
            (2, true) => Self::S,
            _ => Self::I,
        }
    }

    /// LPS world axis (0 = x, 1 = y, 2 = z) and whether the code points along its positive side.
    pub fn world_axis(self) -> (usize, bool) {
        match self {
            Self::L => (0, true),
            Self::R => (0, false),
            Self::P => (1, true),
            Self::A => (1, false),
            Self::S => (2, true),
            Self::I => (2, false),
        }
    }

    fn letter(self) -> char {
        match self {
            Self::L => 'L',
            Self::R => 'R',
            Self::P => 'P',
            Self::A => 'A',
            Self::S => 'S',
            Self::I => 'I',
        }
    }
}

/// Three axis codes, one per voxel axis, e.g. `RAS` (NIfTI's usual) or `LPS` (DICOM axial).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Orientation(pub [AxisCode; 3]);

impl Orientation {
    /// i → Right, j → Anterior, k → Superior: the canonical order of NIfTI tools.
    pub const RAS: Self = Self([AxisCode::R, AxisCode::A, AxisCode::S]);
    /// i → Left, j → Posterior, k → Superior: a DICOM axial stack in ascending order.
    pub const LPS: Self = Self([AxisCode::L, AxisCode::P, AxisCode::S]);
}

impl fmt::Display for Orientation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0 {
            write!(f, "{}", c.letter())?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Orientation {
    type Err = VolumeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || VolumeError::BadOrientation { code: s.to_string() };
        let letters: Vec<char> = s.trim().to_ascii_uppercase().chars().collect();
        if letters.len() != 3 {
            return Err(bad());
        }
        let mut codes = [AxisCode::L; 3];
        let mut seen = [false; 3];
        for (slot, c) in codes.iter_mut().zip(letters) {
            *slot = match c {
                'L' => AxisCode::L,
                'R' => AxisCode::R,
                'P' => AxisCode::P,
                'A' => AxisCode::A,
                'S' => AxisCode::S,
                'I' => AxisCode::I,
                _ => return Err(bad()),
            };
            let (w, _) = slot.world_axis();
            if seen[w] {
                return Err(bad());
            }
            seen[w] = true;
        }
        Ok(Self(codes))
    }
}
