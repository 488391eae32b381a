//! Command line of the trainer.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::{Parser, Subcommand};
use fcdnode::package::arch::{Layout, Pooling};
use fcdnode::preprocess::Normalisation;
use fcdnode_trainer::config::{CvConfig, Preset, ThresholdRule, parse_modalities};
use fcdnode_trainer::cv::{FoldChoice, RunOutcome};
use fcdnode_trainer::data::bids::{Dataset, Group, ImageKind};

/// Set by Ctrl-C; training checks it between epochs.
static STOP: AtomicBool = AtomicBool::new(false);

/// fcdtrain: retrain fcdnode models offline on BIDS NIfTI data (e.g. the Bonn FCD-II dataset).
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    pub log: fcdnode::LogOptions,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read a BIDS dataset (ds004199 layout) and summarise it: subjects per group and
    /// acquisition, images per modality, and every glitch found.
    Dataset {
        /// Dataset root (holds participants.tsv).
        #[arg(long)]
        data: PathBuf,
        /// Print the whole dataset as JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Cross-validate every combination of architecture × initialisation × modality and write
    /// RUN/report.md, metrics.json, metrics.csv, ROC and Grad-CAM PNGs. Ctrl-C stops between
    /// epochs; rerunning the same command resumes (finished folds are kept). With --fold K it
    /// trains one fold only (a cluster task) and writes no report: see `fcdtrain report`.
    Cv(Box<CvArgs>),
    /// Merge the folds of a run trained by separate `fcdtrain cv … --fold K` processes and write
    /// the report a one-machine `fcdtrain cv` writes (report.md, metrics.json, metrics.csv,
    /// PNGs); refuses, naming them, while folds are missing.
    Report {
        /// Run directory (the --out of the fold processes).
        #[arg(long)]
        run: PathBuf,
    },
    /// Export one experiment of a finished run as a model package (one ONNX graph per fold +
    /// manifest.toml) for the node. The threshold and the probability calibration are chosen on
    /// the exported folds' out-of-fold predictions by the run's threshold rule; a fold whose
    /// held-out ROC-AUC is below --min-fold-auc is refused unless kept or dropped.
    Export {
        /// Run directory written by `fcdtrain cv`.
        #[arg(long)]
        run: PathBuf,
        /// Experiment name (a directory of the run); needed when the run has several.
        #[arg(long)]
        experiment: Option<String>,
        /// Package directory to write, e.g. models/NAME.
        #[arg(long)]
        out: PathBuf,
        /// ROC-AUC a fold needs on its held-out subjects to be exported.
        #[arg(long, default_value_t = fcdnode_trainer::export::MIN_FOLD_AUC)]
        min_fold_auc: f64,
        /// Export folds below --min-fold-auc anyway (marked weak_kept in the manifest).
        #[arg(long, conflicts_with = "drop_weak_folds")]
        keep_weak_folds: bool,
        /// Export only the folds at or above --min-fold-auc (the others marked weak_dropped).
        #[arg(long)]
        drop_weak_folds: bool,
    },
    /// External validation: run a model package on a BIDS dataset exactly as the node does
    /// (recipe, ONNX Runtime fold ensemble, the node's heatmap) beside the non-learned max-z
    /// FLAIR baseline, and write DIR/report.md, metrics.json, subjects.csv, roc.png,
    /// reliability.png, montage.png and previews/.
    #[cfg(feature = "onnx")]
    Evaluate(Box<EvaluateArgs>),
    /// Benchmarks (print figures, no files).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[cfg(feature = "onnx")]
#[derive(Debug, clap::Args)]
struct EvaluateArgs {
    /// Model package directory (holds manifest.toml), e.g. models/demo.
    #[arg(long)]
    model: PathBuf,
    /// BIDS dataset root (holds participants.tsv); patients' FLAIR_roi masks give the lesion.
    #[arg(long)]
    data: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Heatmap method (the node's default: Grad-CAM++).
    #[arg(long, value_enum, default_value_t = fcdnode::pipeline::Explain::default())]
    explain: fcdnode::pipeline::Explain,
    /// ONNX Runtime device: auto (CUDA when present), cpu or cuda.
    #[arg(long, value_enum, default_value = "auto")]
    device: fcdnode::infer::runtime::Device,
    /// ONNX Runtime library (default: ORT_DYLIB_PATH, then .tools/libonnxruntime.so).
    #[arg(long)]
    onnxruntime: Option<PathBuf>,
    /// Bootstrap replicates of the ROC-AUC 95 % confidence interval.
    #[arg(long, default_value_t = 2000)]
    bootstrap: usize,
    /// Random moved-ROI placements per patient for the Heat-Score null.
    #[arg(long, default_value_t = 10)]
    null_draws: usize,
    /// Seed of the bootstrap and of the moved ROIs.
    #[arg(long, default_value_t = 20_260_101)]
    seed: u64,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Time one training step (forward, backward, Adam) on random input and print the peak
    /// memory; `trainer/bench/torch_step.py` does the same step in PyTorch.
    Step {
        #[command(flatten)]
        bench: crate::bench::StepBench,
        /// burn device: cpu, or cuda / cuda:N (`cuda` feature), vulkan / vulkan:N (`vulkan` feature).
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

#[derive(Debug, clap::Args)]
struct CvArgs {
    /// BIDS dataset root (holds participants.tsv).
    #[arg(long)]
    data: PathBuf,
    /// Run directory (results, cache, report).
    #[arg(long)]
    out: PathBuf,
    /// A documented recipe that sets the options below; options given on the command line
    /// override it. quick: the CPU recipe (ResNet-10 ×0.125 on a 2 mm grid of 168×200×168 mm,
    /// log-mean-exp head lse:8, lesion-map loss 5, Adam 2e-3, 18 epochs).
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// Architectures, comma-separated: resnet10, resnet18, resnet34, resnet50 [default: resnet18].
    #[arg(long, value_delimiter = ',')]
    arch: Option<Vec<String>>,
    /// Network layout: medicalnet (stride 8, dilated) or strided (stride 32) [default: medicalnet].
    #[arg(long, value_enum)]
    layout: Option<Layout>,
    /// Width multiplier (1.0 = 64/128/256/512 channels; 0.25 for a small fast network)
    /// [default: 1].
    #[arg(long)]
    width_mult: Option<f64>,
    /// Head pooling of the per-voxel class scores: mean (global average pooling) or lse:R, a
    /// smooth maximum of sharpness R that lets one small lesion decide [default: mean].
    #[arg(long)]
    pooling: Option<Pooling>,
    /// Weight of the lesion-map loss: patients' lesion ROIs teach the per-voxel scores where
    /// the lesion is (controls: nowhere), beside the per-subject cross-entropy; 0 = labels only
    /// [default: 0].
    #[arg(long)]
    roi_weight: Option<f64>,
    /// Initialisations, comma-separated: MedicalNet .pth files and/or `none`.
    #[arg(long, value_delimiter = ',', default_value = "none")]
    pretrained: Vec<String>,
    /// Parts that train: all, layer4,fc (the paper) or LAYER+ (from that layer on)
    /// [default: all].
    #[arg(long)]
    train_layers: Option<String>,
    /// Channel sets, comma-separated: flair, t1w, flair+t1w [default: flair].
    #[arg(long, value_delimiter = ',')]
    modality: Option<Vec<String>>,
    /// Outer folds [default: 5].
    #[arg(long)]
    folds: Option<usize>,
    /// Maximum epochs per fold [default: 30].
    #[arg(long)]
    epochs: Option<usize>,
    /// Early stopping patience (epochs without a better validation loss) [default: 10].
    #[arg(long)]
    patience: Option<usize>,
    /// ReduceLROnPlateau patience: epochs without a better validation loss before the learning
    /// rate drops tenfold [default: 5].
    #[arg(long)]
    plateau_patience: Option<usize>,
    /// Samples per optimizer step [default: 2].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Adam learning rate [default: 0.001].
    #[arg(long)]
    lr: Option<f64>,
    /// participants.tsv column to group folds by (e.g. acquisition); leave-one-group-out when it
    /// has no more values than --folds.
    #[arg(long)]
    group_by: Option<String>,
    /// participants.tsv column with the dataset's own train/test split (e.g. split).
    #[arg(long)]
    split_column: Option<String>,
    /// Intensity normalisation: zscore-foreground (head foreground, zero outside), zscore-nonzero
    /// (MedicalNet's: over voxels > 0) or zscore [default: zscore-nonzero with a MedicalNet
    /// --pretrained checkpoint, else zscore-foreground]. The manifest records it.
    #[arg(long, value_parser = parse_normalisation)]
    normalisation: Option<Normalisation>,
    /// Model grid voxel size in mm [default: 2].
    #[arg(long)]
    voxel_mm: Option<f64>,
    /// Model grid field of view in mm: one value for a cube or three (R,A,S); the grid shape is
    /// this / --voxel-mm. A smaller box around the head trains faster [default: 192,224,192].
    #[arg(long, value_delimiter = ',', num_args = 1..=3)]
    fov_mm: Option<Vec<f64>>,
    /// Start every fold from an exported model package (fine-tuning on new data); the report
    /// gets a before/after table. Architecture and channels must match the package's.
    #[arg(long)]
    init_from: Option<PathBuf>,
    /// Keep momentum batch-norm statistics instead of re-estimating them over the training set
    /// after every epoch.
    #[arg(long)]
    no_recalibrate_bn: bool,
    /// Seed of folds, sampling, augmentation and initialisation.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// burn device: cpu, or cuda / cuda:N (`cuda` feature), vulkan / vulkan:N (`vulkan` feature).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Random rotation range in degrees (0 = off) [default: 15].
    #[arg(long)]
    rotate_deg: Option<f64>,
    /// Random left-right flips.
    #[arg(long)]
    flip: bool,
    /// Random intensity scaling range (1 ± this; 0 = off) [default: 0.1].
    #[arg(long)]
    intensity: Option<f64>,
    /// How the exported package's decision threshold is chosen on the calibrated out-of-fold
    /// probabilities: the highest one keeping --target-sensitivity (triage), or Youden's J.
    /// Applied after training: another rule on a finished run re-reports without retraining.
    #[arg(long, value_enum, default_value = "sensitivity")]
    threshold_rule: RuleName,
    /// Out-of-fold sensitivity the threshold must keep (with --threshold-rule sensitivity).
    #[arg(long, default_value_t = 0.9)]
    target_sensitivity: f64,
    /// Train only fold K (0-based: K = 0 writes `RUN/<experiment>/fold-1`) of every experiment and
    /// write no report. For a Kubernetes Indexed Job (--fold $(JOB_COMPLETION_INDEX)) or a
    /// Slurm array (--array=0-(folds-1), --fold $SLURM_ARRAY_TASK_ID): every task runs the same
    /// command into the same shared --out; then `fcdtrain report --run OUT`. A task whose
    /// options differ from those the run directory holds is refused.
    #[arg(long, value_name = "K")]
    fold: Option<usize>,
}

fn parse_normalisation(text: &str) -> Result<Normalisation, String> {
    serde_json::from_value(serde_json::Value::String(text.trim().to_ascii_lowercase()))
        .map_err(|_| format!("{text:?}: expected zscore-foreground, zscore-nonzero or zscore"))
}

/// `--threshold-rule` values.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum RuleName {
    /// The highest threshold with sensitivity ≥ --target-sensitivity.
    Sensitivity,
    /// Maximum sensitivity + specificity − 1.
    Youden,
}

impl CvArgs {
    fn config(self) -> anyhow::Result<CvConfig> {
        // The preset's recipe (or the defaults), then every option given on the command line.
        let mut c = self.preset.map_or_else(CvConfig::default, Preset::config);
        c.data = self.data;
        c.pretrained = self
            .pretrained
            .iter()
            .map(|p| (!p.eq_ignore_ascii_case("none")).then(|| PathBuf::from(p)))
            .collect();
        if let Some(m) = self.modality {
            c.modalities = m.iter().map(|m| parse_modalities(m)).collect::<Result<Vec<_>, _>>()?;
        }
        if let Some(fov) = self.fov_mm {
            c.fov_mm = match fov[..] {
                [f] => [f; 3],
                [r, a, s] => [r, a, s],
                _ => anyhow::bail!("--fov-mm takes one value (a cube) or three (R,A,S), got {fov:?}"),
            };
        }
        fn set<T>(slot: &mut T, value: Option<T>) {
            if let Some(v) = value {
                *slot = v;
            }
        }
        set(&mut c.archs, self.arch);
        set(&mut c.layout, self.layout);
        set(&mut c.width_mult, self.width_mult);
        set(&mut c.pooling, self.pooling);
        set(&mut c.roi_weight, self.roi_weight);
        set(&mut c.train_layers, self.train_layers);
        set(&mut c.folds, self.folds);
        set(&mut c.epochs, self.epochs);
        set(&mut c.patience, self.patience);
        set(&mut c.plateau_patience, self.plateau_patience);
        set(&mut c.batch_size, self.batch_size);
        set(&mut c.lr, self.lr);
        set(&mut c.voxel_mm, self.voxel_mm);
        set(&mut c.augment.rotation_deg, self.rotate_deg);
        set(&mut c.augment.intensity, self.intensity);
        c.augment.flip |= self.flip;
        c.normalisation = self.normalisation.or(c.normalisation);
        c.group_by = self.group_by;
        c.split_column = self.split_column;
        c.recalibrate_bn = !self.no_recalibrate_bn;
        c.init_from = self.init_from;
        c.seed = self.seed;
        c.device = self.device;
        c.threshold_rule = match self.threshold_rule {
            RuleName::Sensitivity => ThresholdRule::Sensitivity {
                target: self.target_sensitivity,
            },
            RuleName::Youden => ThresholdRule::Youden,
        };
        Ok(c)
    }
}

/// Writes the report of a finished run and prints its summary: the end of `fcdtrain cv` and of
/// `fcdtrain report` alike.
fn write_report(out: &std::path::Path, run: &RunOutcome) -> anyhow::Result<()> {
    fcdnode_trainer::report::write(out, run).context("report")?;
    println!(
        "{}: {} experiment(s); report {}",
        out.display(),
        run.experiments.len(),
        out.join("report.md").display()
    );
    for (exp, folds) in &run.experiments {
        let (mean, std) = fcdnode_trainer::report::summary(folds);
        println!(
            "  {}: accuracy {:.3} ± {:.3}, ROC-AUC {:.3} ± {:.3}, Heat-Score {:.2} ± {:.2}",
            exp.name, mean.accuracy, std.accuracy, mean.roc_auc, std.roc_auc, mean.heat_score, std.heat_score
        );
    }
    Ok(())
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dataset { data, json } => {
            let d = Dataset::open(&data).with_context(|| format!("reading dataset {}", data.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
                return Ok(());
            }
            let count = |g: Group| d.subjects.iter().filter(|s| s.group == g).count();
            println!(
                "{}: {} subjects ({} fcd, {} hc)",
                data.display(),
                d.subjects.len(),
                count(Group::Fcd),
                count(Group::Hc)
            );
            for kind in [ImageKind::T1w, ImageKind::Flair, ImageKind::FlairRoi] {
                let n: usize = d.subjects.iter().map(|s| s.images_of(kind).count()).sum();
                println!("  {kind:?}: {n} images");
            }
            for w in &d.warnings {
                println!("warning: {w}");
            }
            Ok(())
        }
        Command::Cv(args) => {
            let (out, fold) = (args.out.clone(), args.fold);
            let config = args.config()?;
            // A second Ctrl-C kills the process as usual.
            ctrlc::set_handler(|| {
                if STOP.swap(true, Ordering::SeqCst) {
                    std::process::exit(130);
                }
                eprintln!("stopping after this epoch (Ctrl-C again to abort now)");
            })
            .context("installing the Ctrl-C handler")?;
            let Some(k) = fold else {
                let run = fcdnode_trainer::cv::run(&config, &out, &STOP)?;
                println!("{}: {} fold(s) resumed", out.display(), run.resumed);
                return write_report(&out, &run);
            };
            let done = fcdnode_trainer::cv::train(&config, &out, FoldChoice::One(k), &STOP)?;
            println!(
                "{}: fold-{} of {} ({} trained, {} finished earlier); once every fold is done: fcdtrain report --run {}",
                out.display(),
                k + 1,
                done.folds,
                done.trained,
                done.resumed,
                out.display()
            );
            Ok(())
        }
        Command::Report { run } => {
            let outcome = fcdnode_trainer::cv::merge(&run)?;
            write_report(&run, &outcome)
        }
        #[cfg(feature = "onnx")]
        Command::Evaluate(args) => {
            let EvaluateArgs {
                model,
                data,
                out,
                explain,
                device,
                onnxruntime,
                bootstrap,
                null_draws,
                seed,
            } = *args;
            let options = fcdnode_trainer::evaluate::EvaluateOptions {
                explain,
                device,
                onnxruntime,
                bootstrap,
                null_draws,
                seed,
                ..fcdnode_trainer::evaluate::EvaluateOptions::new(model, data, out.clone())
            };
            let e = fcdnode_trainer::evaluate::evaluate(&options)
                .with_context(|| format!("evaluating {}", options.model.display()))?;
            let o = &e.overall;
            let n = |v: f64| if v.is_finite() { format!("{v:.3}") } else { "n/a".into() };
            println!(
                "{}: {} subjects ({} fcd, {} hc), {} skipped; report {}",
                out.display(),
                o.n,
                o.fcd,
                o.hc,
                e.skipped.len(),
                out.join("report.md").display()
            );
            println!(
                "  model:    accuracy {}, sensitivity {}, specificity {}, ROC-AUC {} [{}, {}], Brier {}, ECE {}",
                n(o.accuracy),
                n(o.sensitivity),
                n(o.specificity),
                n(o.roc_auc),
                n(o.roc_auc_ci95[0]),
                n(o.roc_auc_ci95[1]),
                n(o.brier),
                n(o.ece)
            );
            println!(
                "            Heat-Score {} (null {}), hotspot within 2 mm {}, within 10 mm {}, flat maps {}",
                n(o.heat_score),
                n(o.heat_score_null),
                n(o.hit_2mm),
                n(o.hit_10mm),
                o.flat_maps
            );
            let b = &o.baseline;
            println!(
                "  baseline: ROC-AUC {} [{}, {}], sensitivity {} / specificity {} at Youden threshold {}, within 2 mm {}, within 10 mm {}",
                n(b.roc_auc),
                n(b.roc_auc_ci95[0]),
                n(b.roc_auc_ci95[1]),
                n(b.sensitivity),
                n(b.specificity),
                n(b.youden_threshold),
                n(b.hit_2mm),
                n(b.hit_10mm)
            );
            Ok(())
        }
        Command::Bench(BenchCommand::Step { bench, device }) => {
            let bench = crate::bench::StepBench {
                steps: bench.steps.max(1),
                ..bench
            };
            let dev = fcdnode_trainer::model::device_from_name(&device)?;
            let t = crate::bench::step(&bench, &dev)?;
            println!(
                "{} ({:?}, width ×{}, {} parameters), input {b}×1×{s}×{s}×{s}, device {device}, median of {} step(s):",
                bench.arch,
                bench.layout,
                bench.width_mult,
                t.parameters,
                bench.steps,
                b = bench.batch,
                s = bench.size
            );
            println!("  forward   {:8.3} s", t.forward_s);
            println!("  backward  {:8.3} s", t.backward_s);
            println!("  optimizer {:8.3} s", t.optimizer_s);
            println!("  step      {:8.3} s", t.forward_s + t.backward_s + t.optimizer_s);
            match t.peak_rss_mib {
                Some(m) => println!("  peak RSS  {m:8.0} MiB"),
                None => println!("  peak RSS  unknown (not Linux)"),
            }
            Ok(())
        }
        Command::Export {
            run,
            experiment,
            out,
            min_fold_auc,
            keep_weak_folds,
            drop_weak_folds,
        } => {
            use fcdnode_trainer::export::{ExportOptions, WeakFolds, export};
            let options = ExportOptions {
                min_fold_auc,
                weak_folds: match (keep_weak_folds, drop_weak_folds) {
                    (true, _) => WeakFolds::Keep,
                    (_, true) => WeakFolds::Drop,
                    _ => WeakFolds::Refuse,
                },
            };
            let exported = export(&run, experiment.as_deref(), &out, &options)?;
            println!(
                "{}: {} fold graph(s), manifest {}",
                out.display(),
                exported.graphs.len(),
                out.join("manifest.toml").display()
            );
            println!("  threshold: {}", exported.decision.describe());
            let d = &exported.decision;
            match &d.calibration {
                Some(c) => println!(
                    "  calibration: Platt a {:.4}, b {:.4}; Brier {:.3} → {:.3}, ECE {:.3} → {:.3} (on the predictions it was fitted on)",
                    c.a, c.b, d.brier[0], d.brier[1], d.ece[0], d.ece[1]
                ),
                None => {
                    println!("  calibration: none (the out-of-fold probabilities do not rank patients above controls)")
                }
            }
            for w in &exported.kept_weak {
                println!("  weak fold kept (--keep-weak-folds): {w}");
            }
            for w in &exported.dropped {
                println!("  weak fold dropped (--drop-weak-folds): {w}");
            }
            match &exported.against_baseline {
                Some(a) if a.beaten() => println!("  baseline: {}", a.describe()),
                Some(a) => println!(
                    "  WARNING: the model does not beat the non-learned baseline ({}): {}",
                    fcdnode::baseline::NAME,
                    a.describe()
                ),
                None => println!("  baseline: not in this run (run `fcdtrain cv` again to score it)"),
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cv_config(args: &[&str]) -> CvConfig {
        let cli = Cli::try_parse_from(["fcdtrain", "cv", "--data", "D", "--out", "R"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Cv(args) => args.config().unwrap(),
            other => panic!("not cv: {other:?}"),
        }
    }

    #[test]
    fn a_preset_sets_the_recipe_and_explicit_options_override_it() {
        assert_eq!(
            cv_config(&[]),
            CvConfig {
                data: "D".into(),
                ..CvConfig::default()
            }
        );
        let medicalnet = cv_config(&["--pretrained", "resnet_10.pth"]);
        assert_eq!(medicalnet.recipe().normalisation, Normalisation::ZscoreNonzero);
        assert_eq!(
            cv_config(&["--pretrained", "resnet_10.pth", "--normalisation", "zscore-foreground"]).normalisation(),
            Normalisation::ZscoreForeground
        );
        assert!(
            Cli::try_parse_from([
                "fcdtrain",
                "cv",
                "--data",
                "D",
                "--out",
                "R",
                "--normalisation",
                "minmax"
            ])
            .is_err()
        );
        let quick = cv_config(&["--preset", "quick"]);
        assert_eq!(
            quick,
            CvConfig {
                data: "D".into(),
                ..Preset::Quick.config()
            }
        );
        assert_eq!(quick.pooling, Pooling::Lse { sharpness: 8.0 });
        let tuned = cv_config(&[
            "--preset",
            "quick",
            "--epochs",
            "3",
            "--pooling",
            "mean",
            "--fov-mm",
            "150",
        ]);
        assert_eq!(
            (tuned.epochs, tuned.pooling, tuned.fov_mm),
            (3, Pooling::Mean, [150.0; 3])
        );
        assert_eq!(
            (tuned.width_mult, tuned.roi_weight),
            (0.125, 5.0),
            "the rest stays the preset's"
        );
    }
}
