//! Volume(s) → ModelInput: the exact preprocessing a model package prescribes, shared by the
//! trainer and the node so both feed the network the same tensor. The model grid is axis-aligned
//! in RAS, so mapping results back to any source series is a resampling through LPS mm.

use ndarray::{Array3, Array4, Axis};

use crate::volume::{Affine, Grid, Interp, Volume, VolumeError};

/// How intensities are normalised after resampling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Normalisation {
    /// Z-score over the head foreground (Otsu + hole filling); voxels outside set to 0.
    ZscoreForeground,
    /// Z-score over voxels > 0, as MedicalNet's pretraining; zeros stay 0.
    ZscoreNonzero,
    /// Z-score over the whole grid.
    Zscore,
}

/// The preprocessing recipe, as stored in a model manifest.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Voxel size of the model grid in mm along R, A, S.
    pub voxel_mm: [f64; 3],
    /// Model grid size along R, A, S (tensor width, height, depth).
    pub shape: [usize; 3],
    /// Intensity normalisation.
    pub normalisation: Normalisation,
}

/// Fewest voxels a channel volume needs along each of its axes. Trilinear resampling onto the
/// model grid needs two samples per axis: a single slice (which `fcdnode volume` converts, as
/// dcm2niix does) would become a sheet one model voxel thick, or nothing between model voxels.
pub const MIN_VOXELS_PER_AXIS: usize = 2;

/// Why preprocessing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PreprocessError {
    /// The recipe is unusable.
    #[error("preprocessing recipe: {field} = {value}: {rule}")]
    BadRecipe {
        field: &'static str,
        value: String,
        rule: &'static str,
    },
    /// No channel was given.
    #[error("no input volume given")]
    NoChannels,
    /// A channel is too thin for the model (a single slice).
    #[error(
        "channel {channel}: a volume of {shape:?} voxels is too thin for the model: it needs at least \
         {MIN_VOXELS_PER_AXIS} voxels along each axis"
    )]
    TooThin { channel: usize, shape: [usize; 3] },
    /// A channel has no foreground (blank image).
    #[error("channel {channel}: no head foreground found (blank or constant image)")]
    NoForeground { channel: usize },
    /// Geometry or statistics failure, naming the channel.
    #[error("channel {channel}: {source}")]
    Volume {
        channel: usize,
        #[source]
        source: VolumeError,
    },
}

/// The network input and the grid it lives on.
#[derive(Clone, Debug)]
pub struct ModelInput {
    /// `[channel, depth, height, width]`: depth runs S, height A, width R (MedicalNet's
    /// transposed NIfTI order).
    pub tensor: Array4<f32>,
    /// The model grid (voxel index [i=R, j=A, k=S] → LPS mm): where heatmaps computed on the
    /// tensor sit in patient space.
    pub grid: Grid,
}

impl Recipe {
    /// Checks sizes and voxel spacing.
    pub fn validate(&self) -> Result<(), PreprocessError> {
        if self.voxel_mm.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(PreprocessError::BadRecipe {
                field: "voxel_mm",
                value: format!("{:?}", self.voxel_mm),
                rule: "must be three positive numbers",
            });
        }
        if self.shape.iter().any(|&n| n == 0 || n > 1024) {
            return Err(PreprocessError::BadRecipe {
                field: "shape",
                value: format!("{:?}", self.shape),
                rule: "each size must be 1..=1024",
            });
        }
        Ok(())
    }

    /// The RAS-aligned model grid centred on `centre_lps`.
    pub fn grid(&self, centre_lps: [f64; 3]) -> Result<Grid, VolumeError> {
        // RAS directions expressed in LPS: R = −x, A = −y, S = +z.
        let dirs = [[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]];
        let origin = std::array::from_fn(|r| {
            centre_lps[r]
                - (0..3)
                    .map(|a| dirs[a][r] * self.voxel_mm[a] * (self.shape[a] as f64 - 1.0) / 2.0)
                    .sum::<f64>()
        });
        Ok(Grid {
            shape: self.shape,
            affine: Affine::from_parts(self.voxel_mm, dirs, origin)?,
        })
    }

    /// Resamples every channel onto one model grid centred on the reference channel's head
    /// foreground (channel 0), normalises each, and stacks them.
    pub fn apply(&self, channels: &[&Volume]) -> Result<ModelInput, PreprocessError> {
        self.validate()?;
        let reference = channels.first().ok_or(PreprocessError::NoChannels)?;
        for (channel, volume) in channels.iter().enumerate() {
            let shape = volume.shape();
            if shape.iter().any(|&n| n < MIN_VOXELS_PER_AXIS) {
                return Err(PreprocessError::TooThin { channel, shape });
            }
        }
        let centre = self
            .foreground_centre(reference)
            .map_err(|source| PreprocessError::Volume { channel: 0, source })?
            .ok_or(PreprocessError::NoForeground { channel: 0 })?;
        let grid = self
            .grid(centre)
            .map_err(|source| PreprocessError::Volume { channel: 0, source })?;
        let [ni, nj, nk] = self.shape;
        let mut tensor = Array4::<f32>::zeros((channels.len(), nk, nj, ni));
        for (c, volume) in channels.iter().enumerate() {
            let err = |source| PreprocessError::Volume { channel: c, source };
            let mut v = volume.resample(&grid, Interp::Linear, 0.0).map_err(err)?;
            self.normalise(&mut v).map_err(err)?;
            // [i, j, k] → [k, j, i] (depth, height, width).
            tensor
                .index_axis_mut(Axis(0), c)
                .assign(&v.data().view().reversed_axes());
        }
        Ok(ModelInput { tensor, grid })
    }

    /// [`foreground_centre`] at the model's resolution: the source sampled every `step` voxels
    /// along each axis, `step` = the model's finest voxel size over the source spacing, rounded
    /// down. A 1 mm series for a 2 mm model is looked at on every second voxel, an eighth of the
    /// work (the head mask of 256×256×176 voxels took a quarter of a second), and the centre
    /// moves by less than a source voxel.
    pub fn foreground_centre(&self, v: &Volume) -> Result<Option<[f64; 3]>, VolumeError> {
        let finest = self.voxel_mm.iter().copied().fold(f64::INFINITY, f64::min);
        let spacing = v.spacing();
        let step: [usize; 3] = std::array::from_fn(|a| ((finest / spacing[a]) + 1e-6).floor().max(1.0) as usize);
        if step == [1, 1, 1] {
            return Ok(foreground_centre(v));
        }
        let sampled = v
            .data()
            .slice(ndarray::s![..;step[0], ..;step[1], ..;step[2]])
            .to_owned();
        let mut scale = nalgebra::Matrix4::identity();
        for (a, s) in step.iter().enumerate() {
            scale[(a, a)] = *s as f64;
        }
        Ok(foreground_centre(&Volume::new(
            sampled,
            v.affine().then_index(&scale)?,
        )?))
    }

    fn normalise(&self, v: &mut Volume) -> Result<(), VolumeError> {
        match self.normalisation {
            Normalisation::Zscore => v.zscore(None),
            Normalisation::ZscoreNonzero => {
                let mask = v.data().mapv(|x| x != 0.0);
                v.zscore(Some(&mask))?;
                zero_outside(v, &mask);
                Ok(())
            }
            Normalisation::ZscoreForeground => {
                let mask = v.foreground_mask();
                v.zscore(Some(&mask))?;
                zero_outside(v, &mask);
                Ok(())
            }
        }
    }
}

/// A heatmap `[depth, height, width]` on the model grid, as a volume in patient space.
pub fn tensor_to_volume(map: &Array3<f32>, grid: &Grid) -> Result<Volume, VolumeError> {
    Volume::new(
        map.view().reversed_axes().as_standard_layout().into_owned(),
        grid.affine,
    )
}

fn zero_outside(v: &mut Volume, mask: &Array3<bool>) {
    ndarray::Zip::from(v.data_mut()).and(mask).for_each(|x, &m| {
        if !m {
            *x = 0.0;
        }
    });
}

/// LPS mm centroid of the head foreground, `None` for a blank image.
pub fn foreground_centre(v: &Volume) -> Option<[f64; 3]> {
    let mask = v.foreground_mask();
    let [_, nj, nk] = v.shape();
    let (mut sum, mut n) = ([0.0f64; 3], 0usize);
    // By rows: the mask is in standard layout, and indexed iteration costs more than the sums.
    for (row, values) in mask.as_slice().unwrap_or(&[]).chunks_exact(nk.max(1)).enumerate() {
        let count = values.iter().filter(|&&m| m).count();
        if count > 0 {
            sum[0] += (row / nj) as f64 * count as f64;
            sum[1] += (row % nj) as f64 * count as f64;
            sum[2] += values
                .iter()
                .enumerate()
                .filter(|(_, m)| **m)
                .map(|(k, _)| k)
                .sum::<usize>() as f64;
            n += count;
        }
    }
    // A mask covering the whole grid means no background was found: Otsu failed.
    (n > 0 && n < mask.len()).then(|| v.voxel_to_world(sum.map(|s| s / n as f64)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::{Plane, acquisition_grid};

    /// A bright ball (radius 20 mm) centred at LPS (10, −5, 3) with a brighter left cap.
    fn head(plane: Plane) -> Volume {
        let grid = acquisition_grid(plane, [1.5, 1.5, 2.0], [90.0, 90.0, 80.0], [0.0, 0.0, 0.0]).unwrap();
        let mut v = Volume::filled(&grid, 0.0).unwrap();
        let affine = *v.affine();
        for ((i, j, k), x) in v.data_mut().indexed_iter_mut() {
            let p = affine.apply([i as f64, j as f64, k as f64]);
            let d = ((p[0] - 10.0).powi(2) + (p[1] + 5.0).powi(2) + (p[2] - 3.0).powi(2)).sqrt();
            if d < 20.0 {
                *x = if p[0] > 20.0 { 300.0 } else { 100.0 };
            }
        }
        v
    }

    fn recipe() -> Recipe {
        Recipe {
            voxel_mm: [2.0, 2.0, 2.0],
            shape: [32, 30, 28],
            normalisation: Normalisation::ZscoreForeground,
        }
    }

    #[test]
    fn model_grid_is_ras_and_centred_on_the_head() {
        let input = recipe().apply(&[&head(Plane::Oblique)]).unwrap();
        assert_eq!(input.tensor.shape(), &[1, 28, 30, 32]);
        assert_eq!(input.grid.affine.orientation().to_string(), "RAS");
        let centre = input.grid.voxel_to_world([15.5, 14.5, 13.5]);
        // The bright cap pulls the centroid to the left only slightly; within a voxel or two.
        assert!(
            (centre[0] - 10.0).abs() < 3.0 && (centre[1] + 5.0).abs() < 2.0 && (centre[2] - 3.0).abs() < 2.0,
            "{centre:?}"
        );
    }

    #[test]
    fn every_plane_gives_the_same_tensor_and_left_stays_left() {
        let tensors = [Plane::Axial, Plane::Sagittal, Plane::Coronal].map(|p| recipe().apply(&[&head(p)]).unwrap());
        // The ball's edge falls between voxels differently on each acquisition grid, so compare
        // on average: the grids, not the content, may differ.
        for t in &tensors[1..] {
            let diff = (&t.tensor - &tensors[0].tensor)
                .mapv(f32::abs)
                .mean()
                .unwrap_or(f32::MAX);
            assert!(diff < 0.05, "planes disagree by {diff} on average");
            assert!(
                t.grid.affine.max_abs_diff(&tensors[0].grid.affine) < 1.0,
                "model grids differ"
            );
        }
        // Width runs R (towards the patient's right): the bright left cap sits at low width.
        let t = &tensors[0].tensor;
        let (d, h) = (14, 15);
        let right = t
            .slice(ndarray::s![0, d, h, 22..30])
            .iter()
            .copied()
            .fold(f32::MIN, f32::max);
        let low_w = t
            .slice(ndarray::s![0, d, h, 0..12])
            .iter()
            .copied()
            .fold(f32::MIN, f32::max);
        assert!(low_w > right, "left cap must be at low width: {low_w} vs {right}");
    }

    #[test]
    fn normalisations() {
        let v = head(Plane::Axial);
        for n in [
            Normalisation::ZscoreForeground,
            Normalisation::ZscoreNonzero,
            Normalisation::Zscore,
        ] {
            let r = Recipe {
                normalisation: n,
                ..recipe()
            };
            let t = r.apply(&[&v]).unwrap().tensor;
            let inside: Vec<f32> = t.iter().copied().filter(|&x| x != 0.0).collect();
            let mean = inside.iter().sum::<f32>() / inside.len() as f32;
            if n == Normalisation::Zscore {
                let all = t.iter().sum::<f32>() / t.len() as f32;
                assert!(all.abs() < 1e-3, "{n:?}: {all}");
            } else {
                assert!(mean.abs() < 0.1, "{n:?}: mean {mean}");
                assert_eq!(t[[0, 0, 0, 0]], 0.0, "{n:?}: background stays 0");
            }
        }
    }

    #[test]
    fn tensor_maps_back_to_patient_space() {
        let input = recipe().apply(&[&head(Plane::Axial)]).unwrap();
        let map = input.tensor.index_axis(Axis(0), 0).to_owned();
        let back = tensor_to_volume(&map, &input.grid).unwrap();
        assert_eq!(back.shape(), [32, 30, 28]);
        assert_eq!(back.data()[[3, 4, 5]], input.tensor[[0, 5, 4, 3]]);
    }

    #[test]
    fn bad_input() {
        let bad = Recipe {
            voxel_mm: [0.0, 1.0, 1.0],
            ..recipe()
        };
        assert!(
            bad.apply(&[&head(Plane::Axial)])
                .unwrap_err()
                .to_string()
                .contains("voxel_mm")
        );
        assert!(matches!(recipe().apply(&[]), Err(PreprocessError::NoChannels)));
        let one_slice = head(Plane::Axial).window([0, 0, 20], [60, 60, 1], 0.0).unwrap();
        let err = recipe().apply(&[&head(Plane::Axial), &one_slice]).unwrap_err();
        assert!(
            matches!(
                err,
                PreprocessError::TooThin {
                    channel: 1,
                    shape: [60, 60, 1]
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("too thin for the model"), "{err}");
        let blank = Volume::filled(&head(Plane::Axial).grid(), 0.0).unwrap();
        assert!(matches!(
            recipe().apply(&[&blank]),
            Err(PreprocessError::NoForeground { channel: 0 })
        ));
    }
}
