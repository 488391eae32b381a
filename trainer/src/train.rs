//! Training samples + validation samples → one trained fold; owns the loss, the optimizer
//! (Adam), the learning-rate schedule (ReduceLROnPlateau on validation loss), early stopping,
//! class-balanced sampling, augmentation per step, the per-epoch progress bar and the fold's
//! weight file.
//!
//! Batches are `[batch, channel, depth, height, width]`; the network trains on
//! `device.autodiff()` and is evaluated with `valid()` (batch norms on running statistics).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::{log_sigmoid, log_softmax, softmax};
use burn::tensor::{Device, Tensor, TensorData};
use fcdnode::package::weights::Weights;
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::ArrayD;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::Augment;
use crate::data::batcher::{PrepareError, Sample, augment, batch};
use crate::model::{ModelError, ResNet3d};

/// Why a fold could not be trained.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// The training set is empty.
    #[error("no training samples")]
    Empty,
    /// The network failed (weights, export).
    #[error("network")]
    Model(#[from] ModelError),
    /// Augmentation failed.
    #[error("augmentation")]
    Augment(#[from] PrepareError),
    /// The loss became NaN or infinite.
    #[error("epoch {epoch}: training loss is not finite; lower --lr")]
    Diverged { epoch: usize },
    /// Ctrl-C: stopped between epochs.
    #[error("interrupted (Ctrl-C) during epoch {epoch}; rerun the same command to resume")]
    Interrupted { epoch: usize },
    /// A weight file could not be written or read.
    #[error("{path}: weight file")]
    WeightFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Knobs of one fold's training.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Maximum epochs.
    pub epochs: usize,
    /// Early stopping after this many epochs without a better validation loss.
    pub patience: usize,
    /// ReduceLROnPlateau patience (epochs).
    pub plateau_patience: usize,
    /// ReduceLROnPlateau factor.
    pub plateau_factor: f64,
    /// Samples per step.
    pub batch_size: usize,
    /// Initial learning rate.
    pub lr: f64,
    /// Augmentation of training samples.
    pub augment: Augment,
    /// Weight of the lesion-map loss ([`lesion_map_loss`]) beside the cross-entropy; 0 = off.
    pub roi_weight: f64,
    /// Seed of sampling and augmentation.
    pub seed: u64,
    /// Re-estimate batch-norm running statistics over the training set after every epoch
    /// ([`recalibrate_batch_norms`]).
    pub recalibrate_bn: bool,
    /// Label on the progress bar.
    pub label: String,
}

/// One epoch's figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    /// 1-based.
    pub epoch: usize,
    /// Mean training loss over the epoch's steps.
    pub train_loss: f64,
    /// Validation loss (NaN without a validation set).
    pub val_loss: f64,
    /// Learning rate used.
    pub lr: f64,
}

/// A trained fold.
#[derive(Debug)]
pub struct Trained {
    /// The network at the best validation loss (the last epoch without validation), on the
    /// inference device.
    pub model: ResNet3d,
    /// Per-epoch figures.
    pub history: Vec<EpochLog>,
}

/// Mean cross-entropy of `logits` against `labels` (true = class 1).
///
/// # Shapes
///
/// - logits: `[batch, 2]`
pub fn cross_entropy(logits: Tensor<2>, labels: &[bool]) -> Tensor<1> {
    let device = logits.device();
    let one_hot: Vec<f32> = labels
        .iter()
        .flat_map(|&l| if l { [0.0, 1.0] } else { [1.0, 0.0] })
        .collect();
    let target = Tensor::<2>::from_data(TensorData::new(one_hot, [labels.len(), 2]), &device);
    (log_softmax(logits, 1) * target).sum_dim(1).mean().neg()
}

/// Extra weight of a feature voxel inside the lesion in [`lesion_map_loss`]: a lesion fills a
/// few of ~1,500 feature voxels, and unweighted the map would learn to stay cold everywhere.
const LESION_VOXEL_WEIGHT: f32 = 20.0;

/// Weighted binary cross-entropy of the positive class's per-voxel score
/// ([`ResNet3d::voxel_scores`], the log-odds map of a log-mean-exp head) against where the lesion
/// is: for a patient the fraction of each feature voxel's receptive cell (stride³ model voxels
/// centred on it) inside the ROI, ×4 and capped at 1, so a cell a quarter filled counts as
/// lesion; for a control 0 everywhere. A patient without a ROI is left out. `None` when no
/// sample takes part.
///
/// This is the dense supervision the data already holds (Bonn ships a ROI per patient): one
/// label per head teaches "somewhere" from ~30 subjects slowly; the ROI teaches "here".
pub fn lesion_map_loss(
    model: &ResNet3d,
    features: Tensor<5>,
    labels: &[bool],
    rois: &[Option<&ndarray::Array3<f32>>],
) -> Option<Tensor<1>> {
    let [b, _, d, h, w] = features.dims();
    let stride = model.arch().stride();
    let (mut targets, mut weights) = (Vec::with_capacity(b * d * h * w), Vec::with_capacity(b * d * h * w));
    for (&label, roi) in labels.iter().zip(rois) {
        match (label, roi) {
            (false, _) => {
                targets.extend(std::iter::repeat_n(0.0, d * h * w));
                weights.extend(std::iter::repeat_n(1.0, d * h * w));
            }
            (true, Some(roi)) => {
                let cells = cell_fractions(roi, [d, h, w], stride);
                for f in cells {
                    let t = (4.0 * f).min(1.0);
                    targets.push(t);
                    weights.push(1.0 + LESION_VOXEL_WEIGHT * t);
                }
            }
            (true, None) => {
                targets.extend(std::iter::repeat_n(0.0, d * h * w));
                weights.extend(std::iter::repeat_n(0.0, d * h * w));
            }
        }
    }
    let total: f32 = weights.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let device = features.device();
    let scores = model.voxel_scores(features).narrow(1, 1, 1).reshape([b, d * h * w]);
    let target = Tensor::<2>::from_data(TensorData::new(targets, [b, d * h * w]), &device);
    let weight = Tensor::<2>::from_data(TensorData::new(weights, [b, d * h * w]), &device);
    let bce =
        (log_sigmoid(scores.clone()) * target.clone() + log_sigmoid(scores.neg()) * target.neg().add_scalar(1.0)).neg();
    Some((bce * weight).sum().div_scalar(total))
}

/// The fraction of each feature voxel's cell inside `roi` (`[depth, height, width]` on the model
/// grid), feature voxel f covering model voxels f·s − s/2 .. f·s + s/2 along each axis (it is
/// centred on f·s, see [`fcdnode::package::arch::ArchSpec::stride`]), in standard order.
fn cell_fractions(roi: &ndarray::Array3<f32>, shape: [usize; 3], stride: [usize; 3]) -> Vec<f32> {
    let dims = roi.dim();
    let dims = [dims.0, dims.1, dims.2];
    let range = |f: usize, a: usize| {
        let (s, n) = (stride[a], dims[a]);
        let start = (f * s).saturating_sub(s / 2).min(n);
        let end = (f * s + s.div_ceil(2)).min(n);
        start..end
    };
    let mut out = Vec::with_capacity(shape.iter().product());
    for i in 0..shape[0] {
        for j in 0..shape[1] {
            for k in 0..shape[2] {
                let cell = roi.slice(ndarray::s![range(i, 0), range(j, 1), range(k, 2)]);
                let full = stride.iter().product::<usize>() as f32;
                out.push(cell.sum() / full);
            }
        }
    }
    out
}

/// Positive-class probabilities and the mean cross-entropy of `samples` under `model` in
/// inference mode, in batches of `batch_size`.
pub fn evaluate(model: &ResNet3d, samples: &[&Sample], batch_size: usize, device: &Device) -> (Vec<f64>, f64) {
    let model = model.valid();
    let (mut probs, mut loss_sum) = (Vec::new(), 0.0);
    for chunk in samples.chunks(batch_size.max(1)) {
        let tensors: Vec<_> = chunk.iter().map(|s| &s.tensor).collect();
        let labels: Vec<bool> = chunk.iter().map(|s| s.label).collect();
        let (logits, _) = model.forward(batch(&tensors, device));
        let loss = cross_entropy(logits.clone(), &labels).into_scalar_f64();
        loss_sum += loss * chunk.len() as f64;
        let p = softmax(logits, 1).narrow(1, 1, 1);
        probs.extend(values(p).into_iter().map(f64::from));
    }
    (probs, loss_sum / samples.len().max(1) as f64)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap_or_default()
}

trait Scalar {
    fn into_scalar_f64(self) -> f64;
}

impl Scalar for Tensor<1> {
    fn into_scalar_f64(self) -> f64 {
        values(self).first().copied().map_or(f64::NAN, f64::from)
    }
}

/// Momentum of the running batch-norm statistics during training (PyTorch's default).
pub const BN_MOMENTUM: f64 = 0.1;

/// Re-estimates the running statistics of every trainable batch norm as the average over
/// `samples` (not augmented, in batches of `batch_size`) under the current weights ("precise
/// BN"). With a few small batches per epoch and fast-moving weights, momentum running statistics
/// lag behind the weights and shift every inference-mode output; the validation loss then jumps
/// (seen: 2–11 where training mode gave 0.7) and misleads model selection and the LR schedule.
/// Frozen batch norms keep theirs.
pub fn recalibrate_batch_norms(
    mut model: ResNet3d,
    samples: &[&Sample],
    batch_size: usize,
    autodiff: &Device,
) -> ResNet3d {
    for (i, chunk) in samples.chunks(batch_size.max(1)).enumerate() {
        // Momentum 1/(i+1) makes the running value the plain mean of the batches so far.
        model.set_bn_momentum(1.0 / (i + 1) as f64);
        let tensors: Vec<_> = chunk.iter().map(|s| &s.tensor).collect();
        drop(model.forward(batch(&tensors, autodiff)));
    }
    model.set_bn_momentum(BN_MOMENTUM);
    model
}

/// An epoch's sample order: as many draws as training samples, each picking a class with equal
/// probability, then a subject of that class (class-balanced sampling with replacement).
pub fn balanced_order(labels: &[bool], rng: &mut ChaCha8Rng) -> Vec<usize> {
    use rand::Rng;
    let pos: Vec<usize> = (0..labels.len()).filter(|&i| labels[i]).collect();
    let neg: Vec<usize> = (0..labels.len()).filter(|&i| !labels[i]).collect();
    if pos.is_empty() || neg.is_empty() {
        let mut order: Vec<usize> = (0..labels.len()).collect();
        order.shuffle(rng);
        return order;
    }
    (0..labels.len())
        .map(|_| {
            let class = if rng.random_bool(0.5) { &pos } else { &neg };
            class[rng.random_range(0..class.len())]
        })
        .collect()
}

/// Trains `model` (built on `device.autodiff()`, freeze policy applied) on `train`, choosing
/// the epoch with the lowest loss on `val`. `stop` (Ctrl-C) is checked between epochs.
pub fn train_fold(
    model: ResNet3d,
    train: &[&Sample],
    val: &[&Sample],
    options: &TrainOptions,
    device: &Device,
    stop: &AtomicBool,
) -> Result<Trained, TrainError> {
    if train.is_empty() {
        return Err(TrainError::Empty);
    }
    let autodiff = device.clone().autodiff();
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let mut model = model;
    let mut optim = AdamConfig::new().init();
    let labels: Vec<bool> = train.iter().map(|s| s.label).collect();
    let (mut lr, mut best_loss, mut best) = (options.lr, f64::INFINITY, None);
    let (mut since_best, mut since_plateau, mut plateau_best) = (0usize, 0usize, f64::INFINITY);
    let mut history = Vec::new();
    for epoch in 1..=options.epochs {
        if stop.load(Ordering::SeqCst) {
            return Err(TrainError::Interrupted { epoch });
        }
        let order = balanced_order(&labels, &mut rng);
        let steps = order.len().div_ceil(options.batch_size);
        let bar = ProgressBar::new(steps as u64).with_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(format!("{} epoch {epoch}/{}", options.label, options.epochs));
        let mut loss_sum = 0.0;
        for chunk in order.chunks(options.batch_size) {
            let augmented = chunk
                .iter()
                .map(|&i| augment(train[i], &options.augment, &mut rng))
                .collect::<Result<Vec<_>, _>>()?;
            let refs: Vec<_> = augmented.iter().map(|(tensor, _)| tensor).collect();
            let chunk_labels: Vec<bool> = chunk.iter().map(|&i| labels[i]).collect();
            let (logits, features) = model.forward(batch(&refs, &autodiff));
            let mut loss = cross_entropy(logits, &chunk_labels);
            if options.roi_weight > 0.0 {
                let rois: Vec<_> = augmented.iter().map(|(_, roi)| roi.as_ref()).collect();
                if let Some(map_loss) = lesion_map_loss(&model, features, &chunk_labels, &rois) {
                    loss = loss + map_loss.mul_scalar(options.roi_weight);
                }
            }
            let value = loss.clone().into_scalar_f64();
            if !value.is_finite() {
                bar.finish_and_clear();
                return Err(TrainError::Diverged { epoch });
            }
            loss_sum += value;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
            bar.inc(1);
            bar.set_message(format!("loss {value:.4}"));
        }
        bar.finish_and_clear();
        if options.recalibrate_bn {
            model = recalibrate_batch_norms(model, train, options.batch_size, &autodiff);
        }
        let train_loss = loss_sum / steps as f64;
        let val_loss = if val.is_empty() {
            f64::NAN
        } else {
            evaluate(&model, val, options.batch_size, device).1
        };
        history.push(EpochLog {
            epoch,
            train_loss,
            val_loss,
            lr,
        });
        tracing::info!(fold = %options.label, epoch, train_loss, val_loss, lr, "epoch done");
        // Without a validation set the training loss drives selection and the schedule.
        let monitored = if val_loss.is_finite() { val_loss } else { train_loss };
        if monitored < best_loss {
            best_loss = monitored;
            best = Some(model.valid());
            since_best = 0;
        } else {
            since_best += 1;
        }
        // ReduceLROnPlateau (relative threshold 1e-4, as PyTorch's default).
        if monitored < plateau_best * (1.0 - 1e-4) {
            plateau_best = monitored;
            since_plateau = 0;
        } else {
            since_plateau += 1;
            if since_plateau > options.plateau_patience {
                lr *= options.plateau_factor;
                since_plateau = 0;
                tracing::info!(fold = %options.label, epoch, lr, "learning rate reduced");
            }
        }
        if since_best >= options.patience.max(1) {
            tracing::info!(fold = %options.label, epoch, "early stop");
            break;
        }
    }
    Ok(Trained {
        model: best.unwrap_or_else(|| model.valid()),
        history,
    })
}

#[derive(Serialize, Deserialize)]
struct WeightIndex {
    tensors: Vec<(String, Vec<usize>)>,
}

/// Writes `weights` as `PATH` (little-endian f32, tensors in name order) + `PATH.json` (names and
/// shapes).
pub fn save_weights(path: &Path, weights: &Weights) -> Result<(), TrainError> {
    let mut bytes = Vec::new();
    let mut index = WeightIndex { tensors: Vec::new() };
    for (name, tensor) in &weights.0 {
        index.tensors.push((name.clone(), tensor.shape().to_vec()));
        for v in tensor.iter() {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    let io = |source| TrainError::WeightFile {
        path: path.to_owned(),
        source,
    };
    std::fs::write(path, bytes).map_err(io)?;
    std::fs::write(index_path(path), serde_json::to_vec(&index).unwrap_or_default()).map_err(io)?;
    Ok(())
}

/// Reads a weight file written by [`save_weights`].
pub fn load_weights(path: &Path) -> Result<Weights, TrainError> {
    let bad = |what: &str| TrainError::WeightFile {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string()),
    };
    let io = |source| TrainError::WeightFile {
        path: path.to_owned(),
        source,
    };
    let index: WeightIndex =
        serde_json::from_slice(&std::fs::read(index_path(path)).map_err(io)?).map_err(|_| bad("unreadable index"))?;
    let bytes = std::fs::read(path).map_err(io)?;
    let mut offset = 0;
    let mut map = BTreeMap::new();
    for (name, shape) in index.tensors {
        let n: usize = shape.iter().product();
        let end = offset + n * 4;
        let slice = bytes
            .get(offset..end)
            .ok_or_else(|| bad("file shorter than its index"))?;
        let values = slice
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let array = ArrayD::from_shape_vec(shape, values).map_err(|_| bad("bad shape"))?;
        map.insert(name, array);
        offset = end;
    }
    Ok(Weights(map))
}

fn index_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".json");
    PathBuf::from(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_fractions_follow_the_feature_voxel_centres() {
        // Feature voxel f is centred on model voxel 8f and covers 8f − 4 .. 8f + 4.
        let mut roi = ndarray::Array3::<f32>::zeros((24, 24, 16));
        roi.slice_mut(ndarray::s![4..12, 4..12, 4..12]).fill(1.0);
        let cells = cell_fractions(&roi, [3, 3, 2], [8, 8, 8]);
        assert_eq!(cells.len(), 18);
        let at = |i: usize, j: usize, k: usize| cells[(i * 3 + j) * 2 + k];
        assert_eq!(at(1, 1, 1), 1.0);
        assert_eq!(cells.iter().sum::<f32>(), 1.0, "the block lies in one cell");
        // One voxel in the corner cell, which the grid edge cuts to 4³ of its 8³.
        let mut corner = ndarray::Array3::<f32>::zeros((24, 24, 16));
        corner[[0, 0, 0]] = 1.0;
        let cells = cell_fractions(&corner, [3, 3, 2], [8, 8, 8]);
        assert_eq!(cells[0], 1.0 / 512.0);
        assert_eq!(cells.iter().filter(|&&c| c > 0.0).count(), 1);
    }

    #[test]
    fn lesion_map_loss_rewards_a_map_hot_at_the_lesion_only() {
        use fcdnode::package::arch::{ArchSpec, Pooling};
        let arch = ArchSpec {
            width_mult: 0.125,
            pooling: Pooling::Lse { sharpness: 8.0 },
            ..ArchSpec::from_name("resnet10").unwrap()
        };
        let device = Device::flex();
        let model = ResNet3d::new(&arch, &device).unwrap();
        // Features: channel 0 is 1 at feature voxel (1, 1, 1) only; the classifier reads it.
        let (c, grid) = (arch.feature_channels(), [3usize, 3, 2]);
        let mut a = ndarray::Array5::<f32>::zeros((1, c, grid[0], grid[1], grid[2]));
        a[[0, 0, 1, 1, 1]] = 1.0;
        let features = |scale: f32| {
            let values: Vec<f32> = a.iter().map(|v| v * scale).collect();
            Tensor::<5>::from_data(TensorData::new(values, [1, c, grid[0], grid[1], grid[2]]), &device)
        };
        let mut weights = model.to_weights().unwrap();
        weights.0.get_mut("fc.weight").unwrap().fill(0.0);
        weights.0.get_mut("fc.weight").unwrap()[[1, 0]] = 1.0;
        weights.0.get_mut("fc.bias").unwrap().fill(0.0);
        weights.0.get_mut("fc.bias").unwrap()[1] = -4.0;
        let model = model.load_weights(&weights).unwrap();
        let mut roi = ndarray::Array3::<f32>::zeros((24, 24, 16));
        roi.slice_mut(ndarray::s![4..12, 4..12, 4..12]).fill(1.0);
        let loss = |scale: f32, label: bool, roi: Option<&ndarray::Array3<f32>>| {
            lesion_map_loss(&model, features(scale), &[label], &[roi]).map(|l| l.into_scalar_f64())
        };
        // A patient: the hotter the lesion's voxel, the lower the loss.
        let (cold, hot) = (
            loss(0.0, true, Some(&roi)).unwrap(),
            loss(12.0, true, Some(&roi)).unwrap(),
        );
        assert!(hot < cold, "{hot} vs {cold}");
        // A control: heat anywhere costs.
        assert!(loss(12.0, false, None).unwrap() > loss(0.0, false, None).unwrap());
        // A patient without a ROI takes no part.
        assert!(loss(12.0, true, None).is_none());
    }

    #[test]
    fn balanced_order_draws_both_classes_evenly() {
        let labels: Vec<bool> = (0..100).map(|i| i < 10).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut pos = 0;
        for _ in 0..20 {
            pos += balanced_order(&labels, &mut rng).iter().filter(|&&i| labels[i]).count();
        }
        let frac = pos as f64 / 2000.0;
        assert!((0.45..0.55).contains(&frac), "{frac}");
    }

    #[test]
    fn recalibrated_batch_norms_make_inference_match_training_mode() {
        let mut arch = fcdnode::package::arch::ArchSpec::from_name("resnet10").unwrap();
        arch.width_mult = 0.125;
        let device = Device::flex();
        let autodiff = device.clone().autodiff();
        autodiff.seed(5);
        let tensor = ndarray::Array4::from_shape_fn((1, 12, 16, 12), |(_, d, h, w)| {
            ((d * 7 + h * 3 + w * 5) % 13) as f32 / 4.0 - 1.5
        });
        let shifted = tensor.mapv(|v| 0.5 * v + 0.8);
        let samples: Vec<Sample> = [tensor, shifted]
            .into_iter()
            .enumerate()
            .map(|(i, t)| Sample {
                id: format!("s{i}"),
                label: i == 1,
                acquisition: "a".into(),
                columns: BTreeMap::new(),
                tensor: t,
                grid: fcdnode::preprocess::Recipe {
                    voxel_mm: [2.0; 3],
                    shape: [12, 16, 12],
                    normalisation: fcdnode::preprocess::Normalisation::Zscore,
                }
                .grid([0.0; 3])
                .unwrap(),
                roi: None,
            })
            .collect();
        let refs: Vec<&Sample> = samples.iter().collect();
        let logits = |m: &ResNet3d, d: &Device| {
            let tensors: Vec<_> = refs.iter().map(|s| &s.tensor).collect();
            values(m.forward(batch(&tensors, d)).0)
        };
        let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        let model = ResNet3d::new(&arch, &autodiff).unwrap();
        let train_mode = logits(&model, &autodiff);
        // Fresh running statistics (mean 0, variance 1) are far from the batch's.
        let stale = max_diff(&logits(&model.valid(), &device), &train_mode);
        let model = recalibrate_batch_norms(model, &refs, 2, &autodiff);
        let fresh = max_diff(&logits(&model.valid(), &device), &train_mode);
        let scale = train_mode.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(stale > 0.1 * scale, "stale {stale}, scale {scale}");
        assert!(
            fresh < 0.02 * scale.max(1e-3),
            "fresh {fresh}, stale {stale}, scale {scale}"
        );
    }

    #[test]
    fn cross_entropy_of_confident_right_answers_is_small() {
        let device = Device::flex();
        let logits = Tensor::<2>::from_data(TensorData::new(vec![10.0f32, -10.0, -10.0, 10.0], [2, 2]), &device);
        let l = cross_entropy(logits.clone(), &[false, true]).into_scalar_f64();
        assert!(l < 1e-6, "{l}");
        let l = cross_entropy(logits, &[true, false]).into_scalar_f64();
        assert!((l - 20.0).abs() < 1e-3, "{l}");
    }
}
