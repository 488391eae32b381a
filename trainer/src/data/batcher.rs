//! BIDS subjects → preprocessed samples on the model grid (cached on disk) → augmented burn
//! batches; owns image choice per modality, the per-subject skip list and the tensor cache.
//!
//! Preprocessing is the root library's [`Recipe::apply`] (the node runs the same code): channel 0
//! is the reference grid, every channel is resampled through world coordinates and normalised.
//! The FLAIR lesion ROI is resampled (nearest) onto the same model grid for the Heat-Score.
//! Tensors are `[channel, depth(S), height(A), width(R)]`; batches `[batch, channel, depth,
//! height, width]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use fcdnode::package::manifest::Modality;
use fcdnode::preprocess::{Recipe, tensor_to_volume};
use fcdnode::volume::{Affine, Grid, Interp, Volume};
use ndarray::{Array3, Array4, Axis};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::bids::{Dataset, Group, Image, ImageKind, Subject};
use crate::config::Augment;

/// Why a subject cannot be used or the cache cannot be written; variants name the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrepareError {
    /// The subject has no image of a modality the experiment needs.
    #[error("{subject}: no {modality} image")]
    MissingModality { subject: String, modality: Modality },
    /// A NIfTI file could not be read.
    #[error("{path}: cannot read NIfTI")]
    Read {
        path: PathBuf,
        #[source]
        source: fcdnode::nifti::NiftiError,
    },
    /// An image holds NaN or infinite voxels.
    #[error("{path}: {count} non-finite (NaN or infinite) voxels")]
    NotFinite { path: PathBuf, count: usize },
    /// The lesion mask is not on its FLAIR's voxel grid.
    #[error(
        "{mask}: mask grid {mask_shape:?} does not match its image {image} grid {image_shape:?} (or the affines differ)"
    )]
    MaskGrid {
        mask: PathBuf,
        image: PathBuf,
        mask_shape: [usize; 3],
        image_shape: [usize; 3],
    },
    /// Preprocessing failed (blank image, bad geometry).
    #[error("{path}: preprocessing failed")]
    Preprocess {
        path: PathBuf,
        #[source]
        source: fcdnode::preprocess::PreprocessError,
    },
    /// Resampling (ROI, augmentation) failed.
    #[error("{what}: resampling failed")]
    Resample {
        what: String,
        #[source]
        source: fcdnode::volume::VolumeError,
    },
    /// The cache directory or a cache file could not be written or read.
    #[error("{path}: cache I/O")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One subject ready for the network.
#[derive(Clone, Debug)]
pub struct Sample {
    /// `sub-XXXXX`.
    pub id: String,
    /// True for `fcd`.
    pub label: bool,
    /// Acquisition for the per-acquisition breakdown: the `acquisition` column when present,
    /// else the reference image's `acq-` label.
    pub acquisition: String,
    /// `participants.tsv` columns (for `--group-by` and `--split-column`).
    pub columns: BTreeMap<String, String>,
    /// `[channel, depth, height, width]`, normalised.
    pub tensor: Array4<f32>,
    /// The model grid the tensor lives on.
    pub grid: Grid,
    /// Lesion ROI on the model grid `[depth, height, width]` (FCD subjects with a mask).
    pub roi: Option<Array3<bool>>,
}

impl Sample {
    /// Head foreground on the model grid `[depth, height, width]`: the voxels the
    /// foreground z-score kept (non-zero in the reference channel).
    pub fn foreground(&self) -> Array3<bool> {
        self.tensor.index_axis(Axis(0), 0).mapv(|v| v != 0.0)
    }
}

/// A subject left out, and why (listed in the report).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Skip {
    /// `sub-XXXXX`.
    pub subject: String,
    /// The error chain, naming the file.
    pub reason: String,
}

/// Samples of a dataset for one channel set, plus the subjects skipped and notes (e.g. a mask
/// whose `acq-` label differs from the FLAIR's).
#[derive(Debug, Default)]
pub struct Prepared {
    /// Usable subjects in `participants.tsv` order.
    pub samples: Vec<Sample>,
    /// Subjects left out.
    pub skipped: Vec<Skip>,
    /// Tolerated glitches.
    pub notes: Vec<String>,
}

/// Preprocesses every subject of `dataset` for `modalities` with `recipe`, reading and writing
/// the cache under `cache_dir`. A subject that cannot be used is skipped with its reason;
/// only cache I/O failures stop the run.
pub fn prepare(
    dataset: &Dataset,
    modalities: &[Modality],
    recipe: &Recipe,
    cache_dir: &Path,
) -> Result<Prepared, PrepareError> {
    std::fs::create_dir_all(cache_dir).map_err(|source| PrepareError::Cache {
        path: cache_dir.to_owned(),
        source,
    })?;
    let mut out = Prepared::default();
    for subject in &dataset.subjects {
        match prepare_subject(subject, modalities, recipe, cache_dir, &mut out.notes) {
            Ok(sample) => out.samples.push(sample),
            Err(e @ PrepareError::Cache { .. }) => return Err(e),
            Err(e) => {
                tracing::warn!(subject = %subject.id, "skipped: {}", fcdnode::error_chain(&e));
                out.skipped.push(Skip {
                    subject: subject.id.clone(),
                    reason: fcdnode::error_chain(&e),
                });
            }
        }
    }
    Ok(out)
}

fn kind_of(m: Modality) -> ImageKind {
    match m {
        Modality::Flair => ImageKind::Flair,
        Modality::T1w => ImageKind::T1w,
    }
}

/// The image a model channel reads for `subject` (see [`choose`]); `fcdtrain evaluate` picks
/// images the same way as training did.
pub fn choose_image(subject: &Subject, modality: Modality) -> Option<&Image> {
    choose(subject, kind_of(modality))
}

/// The lesion mask of `flair`: the one with the same `acq-` label, else any mask of the subject
/// (a known glitch of the real dataset), with a note saying so.
pub fn lesion_mask_of<'a>(subject: &'a Subject, flair: &Image) -> (Option<&'a Image>, Option<String>) {
    let masks: Vec<&Image> = subject.images_of(ImageKind::FlairRoi).collect();
    let same = masks.iter().find(|m| m.acq == flair.acq).copied();
    let note = match (same, masks.first()) {
        (None, Some(m)) => Some(format!(
            "{}: mask {} has acq {:?}, its FLAIR {} has {:?}; used anyway",
            subject.id,
            m.path.display(),
            m.acq,
            flair.path.display(),
            flair.acq
        )),
        _ => None,
    };
    (same.or(masks.first().copied()), note)
}

/// The image of a kind: a 3D acquisition when there are several (label containing `3d`), else
/// the first by path.
fn choose(subject: &Subject, kind: ImageKind) -> Option<&Image> {
    let mut images: Vec<&Image> = subject.images_of(kind).collect();
    images.sort_by(|a, b| a.path.cmp(&b.path));
    images
        .iter()
        .find(|i| i.acq.as_deref().is_some_and(|a| a.to_ascii_lowercase().contains("3d")))
        .or(images.first())
        .copied()
}

#[derive(Serialize, Deserialize)]
struct CacheMeta {
    key: String,
    shape: [usize; 4],
    centre_lps: [f64; 3],
    has_roi: bool,
}

/// Reads a NIfTI file and refuses NaN or infinite voxels.
pub fn read_checked(path: &Path) -> Result<Volume, PrepareError> {
    let v = fcdnode::nifti::read(path).map_err(|source| PrepareError::Read {
        path: path.to_owned(),
        source,
    })?;
    let count = v.data().iter().filter(|x| !x.is_finite()).count();
    if count > 0 {
        return Err(PrepareError::NotFinite {
            path: path.to_owned(),
            count,
        });
    }
    Ok(v)
}

/// FNV-1a, stable across builds (the cache key must not change with the compiler).
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn prepare_subject(
    subject: &Subject,
    modalities: &[Modality],
    recipe: &Recipe,
    cache_dir: &Path,
    notes: &mut Vec<String>,
) -> Result<Sample, PrepareError> {
    let images = modalities
        .iter()
        .map(|&m| {
            choose(subject, kind_of(m)).ok_or_else(|| PrepareError::MissingModality {
                subject: subject.id.clone(),
                modality: m,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let label = subject.group == Group::Fcd;
    let flair = modalities.iter().position(|m| *m == Modality::Flair).map(|i| images[i]);
    // The mask of the chosen FLAIR (same acq label), else any mask (a known glitch).
    let roi_image = match (label, flair) {
        (true, Some(flair)) => {
            let (mask, note) = lesion_mask_of(subject, flair);
            notes.extend(note);
            mask
        }
        _ => None,
    };
    let acquisition = subject
        .columns
        .get("acquisition")
        .cloned()
        .or_else(|| images[0].acq.clone())
        .unwrap_or_else(|| "n/a".into());

    // Cache key: recipe, channels, files (path + size).
    let mut key = serde_json::to_string(recipe).unwrap_or_default();
    for image in images.iter().copied().chain(roi_image) {
        let len = std::fs::metadata(&image.path).map(|m| m.len()).unwrap_or(0);
        key.push_str(&format!("|{}:{len}", image.path.display()));
    }
    let stem = cache_dir.join(format!("{}_{:016x}", subject.id, fnv(&key)));
    let (bin, json) = (stem.with_extension("bin"), stem.with_extension("json"));
    let grid_at = |centre: [f64; 3]| {
        recipe.grid(centre).map_err(|source| PrepareError::Resample {
            what: format!("{}: model grid", subject.id),
            source,
        })
    };
    if let Some((tensor, centre, roi)) = read_cache(&bin, &json, &key) {
        return Ok(Sample {
            id: subject.id.clone(),
            label,
            acquisition,
            columns: subject.columns.clone(),
            tensor,
            grid: grid_at(centre)?,
            roi,
        });
    }

    let volumes = images
        .iter()
        .map(|i| read_checked(&i.path))
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&Volume> = volumes.iter().collect();
    let input = recipe.apply(&refs).map_err(|source| PrepareError::Preprocess {
        path: images[0].path.clone(),
        source,
    })?;
    let roi = match roi_image {
        Some(mask_image) => {
            let flair_image = flair.expect("a mask is only looked for with a FLAIR");
            let flair_volume = &volumes[modalities.iter().position(|m| *m == Modality::Flair).unwrap_or(0)];
            let mask = read_checked(&mask_image.path)?;
            if mask.shape() != flair_volume.shape() || mask.affine().max_abs_diff(flair_volume.affine()) > 1e-3 {
                return Err(PrepareError::MaskGrid {
                    mask: mask_image.path.clone(),
                    image: flair_image.path.clone(),
                    mask_shape: mask.shape(),
                    image_shape: flair_volume.shape(),
                });
            }
            let on_model =
                mask.resample(&input.grid, Interp::Nearest, 0.0)
                    .map_err(|source| PrepareError::Resample {
                        what: mask_image.path.display().to_string(),
                        source,
                    })?;
            let roi = on_model.data().view().reversed_axes().mapv(|v| v > 0.5);
            if !roi.iter().any(|&r| r) {
                notes.push(format!(
                    "{}: mask {} is empty on the model grid; no Heat-Score for this subject",
                    subject.id,
                    mask_image.path.display()
                ));
                None
            } else {
                Some(roi.as_standard_layout().into_owned())
            }
        }
        None => {
            if label && flair.is_some() {
                notes.push(format!("{}: fcd subject without a FLAIR lesion mask", subject.id));
            }
            None
        }
    };
    let [ni, nj, nk] = recipe.shape;
    let centre = input.grid.voxel_to_world([
        (ni as f64 - 1.0) / 2.0,
        (nj as f64 - 1.0) / 2.0,
        (nk as f64 - 1.0) / 2.0,
    ]);
    write_cache(&bin, &json, &key, &input.tensor, centre, roi.as_ref())?;
    Ok(Sample {
        id: subject.id.clone(),
        label,
        acquisition,
        columns: subject.columns.clone(),
        tensor: input.tensor,
        grid: input.grid,
        roi,
    })
}

type Cached = (Array4<f32>, [f64; 3], Option<Array3<bool>>);

fn read_cache(bin: &Path, json: &Path, key: &str) -> Option<Cached> {
    let meta: CacheMeta = serde_json::from_slice(&std::fs::read(json).ok()?).ok()?;
    if meta.key != key {
        return None;
    }
    let bytes = std::fs::read(bin).ok()?;
    let [c, d, h, w] = meta.shape;
    let n = c * d * h * w;
    let roi_len = if meta.has_roi { d * h * w } else { 0 };
    if bytes.len() != n * 4 + roi_len {
        return None;
    }
    let values: Vec<f32> = bytes[..n * 4]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let tensor = Array4::from_shape_vec((c, d, h, w), values).ok()?;
    let roi = if meta.has_roi {
        Some(Array3::from_shape_vec((d, h, w), bytes[n * 4..].iter().map(|&b| b != 0).collect()).ok()?)
    } else {
        None
    };
    Some((tensor, meta.centre_lps, roi))
}

fn write_cache(
    bin: &Path,
    json: &Path,
    key: &str,
    tensor: &Array4<f32>,
    centre: [f64; 3],
    roi: Option<&Array3<bool>>,
) -> Result<(), PrepareError> {
    let (c, d, h, w) = tensor.dim();
    let mut bytes = Vec::with_capacity(tensor.len() * 4 + roi.map_or(0, |r| r.len()));
    for v in tensor.iter() {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    if let Some(roi) = roi {
        bytes.extend(roi.iter().map(|&r| u8::from(r)));
    }
    let meta = CacheMeta {
        key: key.into(),
        shape: [c, d, h, w],
        centre_lps: centre,
        has_roi: roi.is_some(),
    };
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| PrepareError::Cache { path, source }
    };
    // Whole files only: fold processes of one run may fill the shared cache at the same time.
    crate::atomic::replace(bin, &bytes).map_err(io(bin))?;
    // The JSON is written last: a cache entry without it is ignored.
    crate::atomic::replace(json, &serde_json::to_vec(&meta).unwrap_or_default()).map_err(io(json))?;
    Ok(())
}

/// A training copy of `sample`'s tensor: rotated about the grid centre by random angles in
/// ±`rotation_deg` (resampling each channel on a rotated grid through LPS mm, trilinear, 0
/// outside), optionally flipped left-right and scaled in intensity; with it the lesion ROI
/// (when the sample has one) moved the same way, as a fraction in [0, 1] per voxel.
pub fn augment(
    sample: &Sample,
    options: &Augment,
    rng: &mut impl Rng,
) -> Result<(Array4<f32>, Option<Array3<f32>>), PrepareError> {
    let mut roi = sample.roi.as_ref().map(|r| r.mapv(f32::from));
    let mut tensor = if options.rotation_deg > 0.0 {
        let max = options.rotation_deg.to_radians();
        let angles: [f64; 3] = std::array::from_fn(|_| rng.random_range(-max..=max));
        let rotated = rotated_grid(&sample.grid, angles).map_err(|source| PrepareError::Resample {
            what: format!("{}: rotated grid", sample.id),
            source,
        })?;
        // The rotated grid's voxel (i, j, k) takes the image at its LPS position; put it back at
        // model voxel (i, j, k): a rotation of the content about the centre.
        let rotate = |map: &Array3<f32>, what: &str| {
            let err = |source| PrepareError::Resample {
                what: format!("{}: {what} rotation", sample.id),
                source,
            };
            let volume = tensor_to_volume(map, &sample.grid).map_err(err)?;
            let resampled = volume.resample(&rotated, Interp::Linear, 0.0).map_err(err)?;
            Ok::<_, PrepareError>(resampled.data().view().reversed_axes().to_owned())
        };
        let mut out = Array4::zeros(sample.tensor.raw_dim());
        for (c, channel) in sample.tensor.axis_iter(Axis(0)).enumerate() {
            out.index_axis_mut(Axis(0), c)
                .assign(&rotate(&channel.to_owned(), &format!("channel {c}"))?);
        }
        roi = roi.map(|r| rotate(&r, "ROI")).transpose()?;
        out
    } else {
        sample.tensor.clone()
    };
    if options.flip && rng.random_bool(0.5) {
        tensor.invert_axis(Axis(3));
        if let Some(r) = roi.as_mut() {
            r.invert_axis(Axis(2));
        }
    }
    if options.intensity > 0.0 {
        let s = 1.0 + rng.random_range(-options.intensity..=options.intensity) as f32;
        tensor.mapv_inplace(|v| v * s);
    }
    Ok((tensor, roi))
}

/// `grid` rotated about its centre by `angles` (radians, about the x, y and z axes of LPS).
pub fn rotated_grid(grid: &Grid, angles: [f64; 3]) -> Result<Grid, fcdnode::volume::VolumeError> {
    let (sx, cx) = angles[0].sin_cos();
    let (sy, cy) = angles[1].sin_cos();
    let (sz, cz) = angles[2].sin_cos();
    let rx = [[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]];
    let ry = [[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]];
    let rz = [[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]];
    let mul = |a: [[f64; 3]; 3], b: [[f64; 3]; 3]| -> [[f64; 3]; 3] {
        std::array::from_fn(|r| std::array::from_fn(|c| (0..3).map(|k| a[r][k] * b[k][c]).sum()))
    };
    let rot = mul(rz, mul(ry, rx));
    let spacing = grid.affine.spacing();
    let dirs = grid
        .affine
        .directions()
        .map(|d| std::array::from_fn(|r| (0..3).map(|k| rot[r][k] * d[k]).sum()));
    let mid = grid.shape.map(|n| (n as f64 - 1.0) / 2.0);
    let centre = grid.voxel_to_world(mid);
    let origin: [f64; 3] =
        std::array::from_fn(|r| centre[r] - (0..3).map(|a| dirs[a][r] * spacing[a] * mid[a]).sum::<f64>());
    Ok(Grid {
        shape: grid.shape,
        affine: Affine::from_parts(spacing, dirs, origin)?,
    })
}

/// Stacks `[channel, depth, height, width]` tensors into a `[batch, channel, depth, height,
/// width]` burn tensor on `device`.
pub fn batch(tensors: &[&Array4<f32>], device: &Device) -> Tensor<5> {
    let (c, d, h, w) = tensors[0].dim();
    let mut values = Vec::with_capacity(tensors.len() * c * d * h * w);
    for t in tensors {
        values.extend(t.iter().copied());
    }
    Tensor::from_data(TensorData::new(values, [tensors.len(), c, d, h, w]), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_by_zero_is_identity_and_keeps_the_centre() {
        let recipe = Recipe {
            voxel_mm: [2.0; 3],
            shape: [10, 12, 8],
            normalisation: fcdnode::preprocess::Normalisation::Zscore,
        };
        let grid = recipe.grid([1.0, 2.0, 3.0]).unwrap();
        let same = rotated_grid(&grid, [0.0; 3]).unwrap();
        assert!(same.affine.max_abs_diff(&grid.affine) < 1e-9);
        let turned = rotated_grid(&grid, [0.1, -0.2, 0.25]).unwrap();
        let mid = [4.5, 5.5, 3.5];
        let (a, b) = (grid.voxel_to_world(mid), turned.voxel_to_world(mid));
        assert!((0..3).all(|r| (a[r] - b[r]).abs() < 1e-9));
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv(""), 0xcbf2_9ce4_8422_2325);
        assert_ne!(fnv("a"), fnv("b"));
    }
}
