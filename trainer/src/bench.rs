//! `fcdtrain bench step`: one training step timed in parts (forward, backward, optimizer) on
//! random input, to compare devices and with PyTorch (`trainer/bench/torch_step.py` runs the same
//! step). Binary side: built on the library's public model and loss, not part of it.

use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor};
use fcdnode::package::arch::{ArchSpec, Layout};

use fcdnode_trainer::model::{ModelError, ResNet3d};
use fcdnode_trainer::train::cross_entropy;

/// What to time (also the options of `fcdtrain bench step`).
#[derive(Clone, Debug, clap::Args)]
pub struct StepBench {
    /// Architecture: resnet10, resnet18, resnet34, resnet50.
    #[arg(long, default_value = "resnet18")]
    pub arch: String,
    /// Network layout.
    #[arg(long, value_enum, default_value = "medicalnet")]
    pub layout: Layout,
    /// Width multiplier.
    #[arg(long, default_value_t = 1.0)]
    pub width_mult: f64,
    /// Cubic input size in voxels.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Samples per step.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Untimed warm-up steps before the timed ones.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed steps; the median of each part is printed.
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
}

/// Seconds per part of one step (median over the timed steps) and the peak resident memory.
#[derive(Clone, Debug)]
pub struct StepTimes {
    pub forward_s: f64,
    pub backward_s: f64,
    pub optimizer_s: f64,
    /// Peak resident set size of the process in MiB (Linux `VmHWM`), if known.
    pub peak_rss_mib: Option<f64>,
    /// Trainable parameters.
    pub parameters: usize,
}

/// Runs `bench.warmup + bench.steps` Adam steps on `device` (wrapped with autodiff) and times each part;
/// every part ends by reading a value back so asynchronous devices are measured in full.
pub fn step(bench: &StepBench, device: &Device) -> Result<StepTimes, ModelError> {
    let mut arch = ArchSpec::from_name(&bench.arch)?;
    arch.layout = bench.layout;
    arch.width_mult = bench.width_mult;
    arch.validate()?;
    let autodiff = device.clone().autodiff();
    autodiff.seed(1);
    let mut model = ResNet3d::new(&arch, &autodiff)?;
    let parameters = model.num_params();
    let mut optim = AdamConfig::new().init();
    let labels: Vec<bool> = (0..bench.batch).map(|i| i % 2 == 1).collect();
    let (mut fwd, mut bwd, mut opt) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..bench.warmup + bench.steps {
        let input = Tensor::<5>::random(
            [bench.batch, arch.in_channels, bench.size, bench.size, bench.size],
            Distribution::Normal(0.0, 1.0),
            &autodiff,
        );
        sync(input.clone().sum());
        let t = Instant::now();
        let (logits, _) = model.forward(input);
        let loss = cross_entropy(logits, &labels);
        sync(loss.clone());
        let t_fwd = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let grads = loss.backward();
        let grads = GradientsParams::from_grads(grads, &model);
        let t_bwd = t.elapsed().as_secs_f64();
        let t = Instant::now();
        model = optim.step(1e-3, model, grads);
        sync(model.fc_weight_sum());
        let t_opt = t.elapsed().as_secs_f64();
        if i >= bench.warmup {
            fwd.push(t_fwd);
            bwd.push(t_bwd);
            opt.push(t_opt);
        }
    }
    Ok(StepTimes {
        forward_s: median(&mut fwd),
        backward_s: median(&mut bwd),
        optimizer_s: median(&mut opt),
        peak_rss_mib: peak_rss_mib(),
        parameters,
    })
}

fn sync(t: Tensor<1>) {
    drop(t.into_data());
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `VmHWM` of `/proc/self/status` in MiB (Linux only).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
