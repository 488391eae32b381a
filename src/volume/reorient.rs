//! Exact reorientation by permuting and flipping voxel axes: no interpolation, no value changes.

use nalgebra::Matrix4;
use ndarray::Axis;

use super::{Orientation, Volume};

impl Volume {
    /// Permutes and flips the voxel axes so that they point as `target` says; voxel values are
    /// moved, never interpolated, and the affine changes so every voxel keeps its LPS position.
    pub fn reorient(&self, target: Orientation) -> Volume {
        let current = self.orientation();
        let shape = self.shape();
        let mut source_axis = [0usize; 3];
        let mut flip = [false; 3];
        let mut index_map = Matrix4::<f64>::zeros();
        index_map[(3, 3)] = 1.0;
        for (new_axis, code) in target.0.iter().enumerate() {
            let (world, positive) = code.world_axis();
            let old_axis = current
                .0
                .iter()
                .position(|c| c.world_axis().0 == world)
                .unwrap_or(new_axis);
            source_axis[new_axis] = old_axis;
            flip[new_axis] = current.0[old_axis].world_axis().1 != positive;
            // old index along `old_axis` = n or (len − 1 − n)
            if flip[new_axis] {
                index_map[(old_axis, new_axis)] = -1.0;
                index_map[(old_axis, 3)] = (shape[old_axis] - 1) as f64;
            } else {
                index_map[(old_axis, new_axis)] = 1.0;
            }
        }
        let mut view = self.data.view().permuted_axes(source_axis);
        for (axis, &f) in flip.iter().enumerate() {
            if f {
                view.invert_axis(Axis(axis));
            }
        }
        let data = view.as_standard_layout().into_owned();
        // A permutation/flip of an invertible affine stays invertible.
        let affine = self.affine.then_index(&index_map).unwrap_or(self.affine);
        Volume { data, affine }
    }

    /// Reorientation to RAS, the canonical voxel order of NIfTI tools (`nibabel.as_closest_canonical`).
    pub fn to_canonical(&self) -> Volume {
        self.reorient(Orientation::RAS)
    }
}
