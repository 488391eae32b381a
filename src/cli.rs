//! Command line: parse once, check the options, call one library function per command.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use fcdnode::assemble::{self, SeriesMeta, StackSummary, Tolerances};
use fcdnode::demo::{self, DemoOptions, DemoReport};
use fcdnode::infer::{Device, Ensemble, runtime};
use fcdnode::nifti::{self, DataType};
use fcdnode::package::manifest::ModelPackage;
use fcdnode::pipeline;
use fcdnode::service;
use fcdnode::synth::{self, CohortOptions, DicomExport, KnobRange, SliceOrder};
use fcdnode::tracker::routing::{Decision, SeriesFacts};
use fcdnode::volume::Plane;

/// fcdnode: a DICOM node that triages 3D T1w/FLAIR MRI for focal cortical dysplasia type II.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    pub log: fcdnode::LogOptions,
}

impl Cli {
    /// The log filter without `RUST_LOG`: the running node logs its associations and jobs
    /// (ONNX Runtime only from warn); the one-shot tools only warnings.
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Serve { .. } => "info,ort=warn",
            _ => "warn",
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a seeded synthetic FCD-II cohort: a BIDS tree (ds004199 layout) from the MNI152
    /// templates, optional DICOM series of the same images, and a PNG preview of one lesion.
    Synth(SynthArgs),
    /// List every DICOM series under the paths: UIDs, modality, description, dimensions,
    /// spacing, orientation, and the routing decision with its reason.
    Inspect {
        /// Files or directories (walked recursively).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Configuration file for the routing rules (defaults when absent).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Assemble one DICOM series into a volume and write it as NIfTI (RAS, as NIfTI tools expect).
    Volume {
        /// Files or directories holding the series.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Output file (.nii or .nii.gz).
        #[arg(long)]
        out: PathBuf,
        /// Series Instance UID to pick when the paths hold several series.
        #[arg(long)]
        series: Option<String>,
    },
    /// Measure a stage and print the figures (wall time, peak memory); asserts nothing.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Run a model package on a DICOM folder (series picked by routing, or --series) and write
    /// the heatmap Secondary Capture, the Structured Report, result.json and a PNG preview; on
    /// NIfTI files (one per model channel) write only result.json and the preview.
    Infer {
        /// DICOM files/folders, or NIfTI files (.nii/.nii.gz) in the model's channel order.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Model package directory (holds manifest.toml).
        #[arg(long)]
        model: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Explanation method.
        #[arg(long, value_enum, default_value_t = pipeline::Explain::default())]
        explain: pipeline::Explain,
        /// Occlusion cube edge in model voxels (with --explain occlusion).
        #[arg(long, default_value_t = 16)]
        occlusion_patch: usize,
        /// Occlusion step in model voxels (with --explain occlusion).
        #[arg(long, default_value_t = 8)]
        occlusion_stride: usize,
        /// Series Instance UID for the model's first channel, instead of routing.
        #[arg(long)]
        series: Option<String>,
        /// One single-frame Secondary Capture per slice instead of one multi-frame object.
        #[arg(long)]
        single_frame: bool,
        /// Configuration file (routing rules, ONNX Runtime location and device).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Execution provider; overrides the configuration.
        #[arg(long, value_enum)]
        device: Option<Device>,
    },
    /// Load and validate a configuration file, then exit (0 = valid).
    CheckConfig {
        /// The TOML file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Read a password from standard input (one line) and print its Argon2id hash for an
    /// `[[api.users]]` entry's `password_hash`.
    HashPassword,
    /// Run the node: DICOM listener, tracker, pipeline, outbox and HTTP API, until Ctrl-C or
    /// SIGTERM.
    Serve {
        /// The TOML file (`config/fcdnode.toml` documents every key).
        #[arg(long)]
        config: PathBuf,
    },
    /// The whole loop on this machine: synthesise an FCD patient and a control as DICOM, start
    /// the node, send the series by C-STORE, receive SC, PM, SEG and SR in a built-in PACS,
    /// print the triage.
    Demo {
        /// Working directory (emptied first).
        #[arg(long, default_value = "out/demo")]
        out: PathBuf,
        /// Model package.
        #[arg(long, default_value = "models/demo")]
        model: PathBuf,
        /// Seed of the synthetic patients.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Configuration for routing and ONNX Runtime (defaults when absent).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Seconds to wait for the results.
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Assemble a 256×256×176 16-bit series of 176 single-frame files (generated unless DIR
    /// already holds DICOM files): best wall time of several runs and peak RSS.
    Assemble {
        /// Series directory; a temporary one (removed afterwards) when absent. An empty or new
        /// directory receives the generated series and keeps it.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Number of timed runs.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// One 176×256×256 synthetic FLAIR series through assemble → preprocess → infer → explain
    /// → SC → SR with a random-weight network: per-stage times of each run and peak RSS.
    Infer {
        /// Architecture.
        #[arg(long, default_value = "resnet18")]
        arch: String,
        /// Width multiplier (1.0 = full width).
        #[arg(long, default_value_t = 1.0)]
        width_mult: f64,
        /// Model grid voxel size in mm (the grid covers 192×224×192 mm).
        #[arg(long, default_value_t = 2.0)]
        voxel_mm: f64,
        /// Timed runs after one warm-up run.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Execution provider.
        #[arg(long, value_enum, default_value_t = Device::Auto)]
        device: Device,
        /// On CUDA, also time forward passes through an ONNX Runtime I/O binding (input and
        /// output buffers bound once) against plain runs.
        #[arg(long)]
        io_binding: bool,
    },
    /// The running node from outside: series turnaround (last C-STORE-RSP → SR acknowledged by
    /// the destination, stable age 1 s) with a full-width ResNet-18, and ingest throughput of
    /// the node's SCP side by side with DCMTK storescp; prints figures, asserts nothing.
    Node {
        /// FLAIR series directory; a synthetic 1 mm sagittal 256×256×176 series when absent.
        #[arg(long)]
        flair_dir: Option<PathBuf>,
        /// Runs of each measurement.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Model grid voxel size in mm (the grid covers 192×224×192 mm).
        #[arg(long, default_value_t = 2.0)]
        voxel_mm: f64,
        /// Tracker, pipeline and outbox poll interval in seconds.
        #[arg(long, default_value_t = 0.1)]
        poll_s: f64,
        /// Series sent to the turnaround node (at least --runs): the process's resident memory
        /// is printed after the 1st, 10th, 100th and last, to show whether the node grows.
        #[arg(long, default_value_t = 0)]
        series: usize,
        /// Studies (T1w + FLAIR each) sent at once to a fresh node: per-study turnaround p50/p95
        /// and studies per hour; 0 skips it.
        #[arg(long, default_value_t = 0)]
        studies: usize,
        /// Modalities sending those studies side by side.
        #[arg(long, default_value_t = 4)]
        senders: usize,
        /// Modalities sending a copy of the series each at once, to the node and to storescp
        /// (forking): aggregate ingest MB/s side by side; 0 skips it.
        #[arg(long, default_value_t = 0)]
        ingest_senders: usize,
        /// Execution provider of the nodes (cuda: an error when it cannot be used).
        #[arg(long, value_enum, default_value_t = Device::Auto)]
        device: Device,
        /// Leave out the ingest comparison with DCMTK storescp (a machine without DCMTK).
        #[arg(long)]
        skip_ingest: bool,
    },
    /// The cost of making a series durable before each response, by strategy (three syncs per
    /// instance, one syncfs, the node's journal, its bare segment, no sync as storescp), on the
    /// volume holding DIR; prints figures, asserts nothing.
    Sync {
        /// A directory on the volume to measure (a subdirectory is written and removed).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Instances per series.
        #[arg(long, default_value_t = 176)]
        files: usize,
        /// KiB per instance.
        #[arg(long, default_value_t = 132)]
        size_kib: usize,
        /// Timed series per strategy.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
}

#[derive(Debug, Args)]
struct SynthArgs {
    /// Output directory (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Number of subjects.
    #[arg(long, default_value_t = 20)]
    subjects: usize,
    /// Fraction of subjects with an FCD-II lesion (group `fcd`); the rest are controls (`hc`).
    #[arg(long, default_value_t = 0.5)]
    fcd_fraction: f64,
    /// Seed: the same seed and options give byte-identical files.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Base isotropic voxel size in mm (each scanner group scales it).
    #[arg(long, default_value_t = 1.0)]
    voxel_mm: f64,
    /// Lesion radius in mm (size knob): one value, or LOW..HIGH for each patient to draw from
    /// (participants.tsv records what each got).
    #[arg(long, default_value = "8")]
    lesion_radius: KnobRange,
    /// Lesion contrast, 1.0 = typical; lower makes lesions harder to see. One value or LOW..HIGH.
    #[arg(long, default_value = "1")]
    lesion_contrast: KnobRange,
    /// Probability that a patient is scanned on the controls' scanner (1 removes the scanner
    /// confound, 0 makes scanner and diagnosis identical).
    #[arg(long, default_value_t = 0.4)]
    confound: f64,
    /// What makes real FCD-II hard, for patients and controls alike: non-FCD FLAIR
    /// hyperintensities (periventricular caps, white-matter lesions, gliosis, cortical partial
    /// volume), bright choroid plexus and septum, flow ghosts, lesions faint on FLAIR.
    /// 0 = none, 1 mild, 2 moderate, 3 hard.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=3))]
    mimics: u8,
    /// Acquisition plane of every image (NIfTI and DICOM share the grid).
    #[arg(long, value_enum, default_value_t = Plane::Axial)]
    plane: Plane,
    /// Also write DICOM series to DIR/dicom/sub-XXXXX/<T1w|FLAIR>/.
    #[arg(long)]
    dicom: bool,
    /// Instance Number order of the DICOM slices.
    #[arg(long, value_enum, default_value_t = SliceOrder::Asc, requires = "dicom")]
    order: SliceOrder,
    /// Write each series as one Enhanced MR multi-frame instance.
    #[arg(long, requires = "dicom")]
    enhanced: bool,
    /// Transfer syntax UID of the DICOM files (explicit LE, implicit LE, deflated, JPEG-LS lossless).
    #[arg(long, default_value = "1.2.840.10008.1.2.1", requires = "dicom")]
    transfer_syntax: String,
    /// Skip the PNG preview.
    #[arg(long)]
    no_preview: bool,
    /// Print how long each stage took.
    #[arg(long)]
    timings: bool,
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Synth(args) => synth_command(args),
        Command::Inspect { paths, config, json } => inspect_command(&paths, config.as_deref(), json),
        Command::Volume { paths, out, series } => volume_command(&paths, &out, series.as_deref()),
        Command::Bench {
            what: BenchCommand::Assemble { dir, runs },
        } => bench_assemble_command(dir, runs),
        Command::Bench {
            what:
                BenchCommand::Infer {
                    arch,
                    width_mult,
                    voxel_mm,
                    runs,
                    device,
                    io_binding,
                },
        } => bench_infer_command(crate::bench::infer::InferBench {
            arch,
            width_mult,
            voxel_mm,
            runs,
            device,
            onnxruntime: None,
            io_binding,
        }),
        Command::Bench {
            what:
                BenchCommand::Node {
                    flair_dir,
                    runs,
                    voxel_mm,
                    poll_s,
                    series,
                    studies,
                    senders,
                    ingest_senders,
                    device,
                    skip_ingest,
                },
        } => crate::bench::node::command(&crate::bench::node::NodeBench {
            flair_dir,
            runs,
            voxel_mm,
            poll_s,
            series,
            studies,
            senders,
            ingest_senders,
            device,
            skip_ingest,
        }),
        Command::Bench {
            what:
                BenchCommand::Sync {
                    dir,
                    files,
                    size_kib,
                    runs,
                },
        } => crate::bench::sync::command(&crate::bench::sync::SyncBench {
            dir,
            files,
            size: size_kib * 1024,
            runs,
        }),
        Command::Infer {
            paths,
            model,
            out,
            explain,
            occlusion_patch,
            occlusion_stride,
            series,
            single_frame,
            config,
            device,
        } => {
            let settings = fcdnode::config::settings(config.as_deref())?;
            let library = runtime::find_library(settings.runtime.onnxruntime.as_deref())?;
            runtime::init(&library)?;
            let package = ModelPackage::load(&model)?;
            let device = device.unwrap_or(settings.runtime.device);
            let mut ensemble = Ensemble::load(&package, device, settings.runtime.threads)?;
            eprintln!(
                "model {} ({} fold(s)) on {:?}",
                package.manifest.name,
                package.graphs.len(),
                ensemble.device()
            );
            let options = pipeline::Options {
                explain,
                occlusion_patch,
                occlusion_stride,
                series,
                report: {
                    let report = settings.report_options();
                    let multiframe = report.multiframe && !single_frame;
                    report.with_multiframe(multiframe)
                },
                ..pipeline::Options::default()
            };
            let is_nifti = |p: &PathBuf| {
                let name = p.to_string_lossy();
                name.ends_with(".nii") || name.ends_with(".nii.gz")
            };
            let summary = if paths.iter().all(is_nifti) {
                pipeline::run_nifti(&paths, &mut ensemble, &out, &options)?
            } else {
                pipeline::run_dicom(&paths, &mut ensemble, &settings.router, &out, &options)?
            };
            let hotspot = match (summary.hotspot_lps, summary.hotspot_slice) {
                (Some([x, y, z]), Some(k)) => format!("hotspot LPS [{x:.1}, {y:.1}, {z:.1}] mm in slice {}", k + 1),
                _ => format!("no hotspot ({})", summary.no_hotspot.as_deref().unwrap_or("none")),
            };
            println!(
                "{}: probability {:.3} (threshold {}), {hotspot} → {}",
                summary.label,
                summary.probability,
                summary.threshold,
                out.display()
            );
            Ok(())
        }
        Command::CheckConfig { config } => {
            fcdnode::config::settings(Some(&config))?;
            println!("{}: valid", config.display());
            Ok(())
        }
        Command::HashPassword => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            let password = line.trim_end_matches(['\r', '\n']);
            println!("{}", fcdnode::api::auth::hash_password(password)?);
            Ok(())
        }
        Command::Serve { config } => {
            let settings = fcdnode::config::settings(Some(&config))?;
            runtime()?.block_on(async {
                let node = service::start(settings).await?;
                eprintln!(
                    "fcdnode listening: DICOM {}, HTTP {}",
                    node.dicom_addr,
                    node.api_addr.map_or_else(|| "off".into(), |a| a.to_string())
                );
                stop_signal().await?;
                eprintln!("stopping");
                node.shutdown().await;
                anyhow::Ok(())
            })
        }
        Command::Demo {
            out,
            model,
            seed,
            config,
            timeout_s,
        } => {
            let base = fcdnode::config::load_or_default(config.as_deref())?;
            let options = DemoOptions {
                out,
                model,
                seed,
                timeout: std::time::Duration::from_secs(timeout_s),
            };
            let report = runtime()?.block_on(demo::run(&options, &base))?;
            print_demo(&report, &options);
            anyhow::ensure!(
                report.subjects.iter().all(|s| s.state == "delivered"),
                "not every subject's results were delivered"
            );
            Ok(())
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}

/// Ctrl-C or SIGTERM (what `docker stop` sends).
async fn stop_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

fn print_demo(report: &DemoReport, options: &DemoOptions) {
    println!("\nTriage (model {}):", options.model.display());
    println!(
        "{:<12} {:<6} {:<10} {:>11}  {:<26} hotspot (LPS mm)",
        "subject", "truth", "state", "probability", "decision"
    );
    for s in &report.subjects {
        let r = s.result.as_ref();
        let hotspot = r
            .and_then(|r| r.hotspot_lps)
            .map(|h| h.map(|v| format!("{v:.1}")).join(", "))
            .unwrap_or_default();
        let from_lesion = s
            .hotspot_to_lesion_mm
            .map(|d| format!(" ({d:.1} mm from the lesion)"))
            .unwrap_or_default();
        println!(
            "{:<12} {:<6} {:<10} {:>11}  {:<26} {}{}",
            s.subject,
            s.group,
            s.state,
            r.map_or_else(|| "-".into(), |r| format!("{:.3}", r.probability)),
            r.map_or("-", |r| r.label.as_str()),
            hotspot,
            from_lesion
        );
        if let Some(dir) = &s.result_dir {
            println!("{:<12} preview {}", "", dir.join("preview.png").display());
        }
    }
    println!(
        "\nThe demo PACS received {} file(s) in {} ({:.1} s from the first C-STORE):",
        report.received.len(),
        options.out.join("pacs").display(),
        report.seconds
    );
    for f in &report.received {
        println!("  {}", f.display());
    }
}

/// One series as `inspect` shows it.
#[derive(serde::Serialize)]
struct SeriesReport {
    series_uid: String,
    instances: usize,
    meta: SeriesMeta,
    /// Voxels along i, j, k of the main stack.
    dimensions: Option<[usize; 3]>,
    /// mm along i, j, k (k from slice positions).
    spacing_mm: Option<[f64; 3]>,
    /// Closest axis codes of i, j, k (e.g. LPS for an ascending axial stack).
    orientation: Option<String>,
    stack: Option<StackSummary>,
    other_stacks: Vec<StackSummary>,
    /// Why the series cannot be assembled, if it cannot.
    error: Option<String>,
    routing: Option<Decision>,
}

fn inspect_command(paths: &[PathBuf], config: Option<&std::path::Path>, json: bool) -> anyhow::Result<()> {
    let settings = fcdnode::config::settings(config)?;
    let scan = assemble::scan(paths)?;
    let mut reports = Vec::new();
    for (uid, sources) in &scan.series {
        let mut report = SeriesReport {
            series_uid: uid.clone(),
            instances: sources.len(),
            meta: assemble::series_meta(&sources[0].object),
            dimensions: None,
            spacing_mm: None,
            orientation: None,
            stack: None,
            other_stacks: Vec::new(),
            error: None,
            routing: None,
        };
        match assemble::InstanceHeader::of_sources(sources)
            .and_then(|headers| assemble::plan_series(&headers, &Tolerances::default()))
        {
            Ok(plan) => {
                let facts = SeriesFacts {
                    meta: &plan.meta,
                    slices: plan.shape()[2],
                    slice_step_mm: Some(plan.ordered.slice_step_mm),
                };
                report.routing = Some(settings.router.route(&facts));
                report.dimensions = Some(plan.shape());
                report.spacing_mm = Some(plan.ordered.affine.spacing().map(|s| (s * 1e4).round() / 1e4));
                report.orientation = Some(plan.ordered.affine.orientation().to_string());
                report.stack = Some(plan.stack);
                report.other_stacks = plan.other_stacks;
            }
            Err(e) => report.error = Some(e.to_string()),
        }
        reports.push(report);
    }
    if json {
        let value = serde_json::json!({ "series": reports, "skipped": scan.skipped });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    for r in &reports {
        let m = &r.meta;
        println!("series {}", r.series_uid);
        println!(
            "  {} instance(s), modality {}, description {:?}, protocol {:?}",
            r.instances, m.modality, m.series_description, m.protocol_name
        );
        println!("  study {}", m.study_uid);
        if let (Some(d), Some(s), Some(o)) = (r.dimensions, r.spacing_mm, &r.orientation) {
            println!(
                "  {}×{}×{} voxels, {:.3}×{:.3}×{:.3} mm, orientation {o}",
                d[0], d[1], d[2], s[0], s[1], s[2]
            );
        }
        if !r.other_stacks.is_empty() {
            println!(
                "  {} other stack(s) left out: {:?}",
                r.other_stacks.len(),
                r.other_stacks.iter().map(|s| s.frames).collect::<Vec<_>>()
            );
        }
        if let Some(e) = &r.error {
            println!("  cannot assemble: {e}");
        }
        if let Some(d) = &r.routing {
            let channel = d.channel.map_or("ignore".to_string(), |c| c.to_string());
            println!("  routing: {channel} — {}", d.reason);
        }
    }
    for s in &scan.skipped {
        println!("skipped {s}");
    }
    if reports.is_empty() {
        anyhow::bail!("no DICOM series found under {paths:?}");
    }
    Ok(())
}

fn volume_command(paths: &[PathBuf], out: &std::path::Path, series: Option<&str>) -> anyhow::Result<()> {
    let assembled = assemble::assemble_paths(paths, series)?;
    let v = &assembled.volume;
    // Integer values that fit int16 are stored as int16 (like dcm2niix); anything else as float.
    let integral = v
        .data()
        .iter()
        .all(|x| x.fract() == 0.0 && (-32768.0..=32767.0).contains(x));
    let datatype = if integral { DataType::I16 } else { DataType::F32 };
    nifti::write(out, v, datatype)?;
    let [ni, nj, nk] = v.shape();
    println!(
        "series {}: {ni}×{nj}×{nk} voxels, orientation {} → {}",
        assembled.meta.series_uid,
        v.orientation(),
        out.display()
    );
    Ok(())
}

fn bench_infer_command(bench: crate::bench::infer::InferBench) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("fcdnode-bench-infer-{}", std::process::id()));
    let result = crate::bench::infer::infer_bench(&dir, &bench);
    let _ = std::fs::remove_dir_all(&dir);
    let r = result?;
    println!(
        "infer: {} (width {}) on {:?}, input {:?}, {} rayon threads; sessions built in {:.2} s",
        bench.arch,
        bench.width_mult,
        r.device,
        r.input_shape,
        rayon::current_num_threads(),
        r.session_build.as_secs_f64()
    );
    println!("  run  {}  (ms)", crate::bench::STAGE_HEADS);
    for (n, t) in r.runs.iter().enumerate() {
        println!("  {:>3}  {}", n + 1, crate::bench::stage_cells(t));
    }
    if let Some(b) = r.peak_rss_bytes {
        println!(
            "  peak RSS: {:.0} MiB (whole process, series generation included)",
            b as f64 / 1048576.0
        );
    }
    println!("  last run: {} (p = {:.3})", r.summary.label, r.summary.probability);
    match &r.io_binding {
        Some(Ok(b)) => println!(
            "  forward pass, median of {}: plain run {:.1} ms, I/O binding (input and outputs bound once) {:.1} ms",
            b.passes, b.plain_ms, b.bound_ms
        ),
        Some(Err(e)) => println!("  I/O binding: failed: {e:#}"),
        None if bench.io_binding => println!(
            "  I/O binding: not timed (CUDA only; the sessions ran on {:?})",
            r.device
        ),
        None => {}
    }
    Ok(())
}

fn bench_assemble_command(dir: Option<PathBuf>, runs: usize) -> anyhow::Result<()> {
    let temporary = dir.is_none();
    let dir = dir.unwrap_or_else(|| std::env::temp_dir().join(format!("fcdnode-bench-{}", std::process::id())));
    let result = crate::bench::assemble::assemble_bench(&dir, runs);
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let r = result?;
    println!(
        "assemble: {} files ({:.1} MB) in {} → {}×{}×{} voxels, {} threads",
        r.files,
        r.bytes as f64 / 1e6,
        r.dir.display(),
        r.shape[0],
        r.shape[1],
        r.shape[2],
        r.threads
    );
    let runs: Vec<String> = r.runs.iter().map(|t| format!("{:.3}", t.as_secs_f64())).collect();
    println!("  runs (s): {}", runs.join(" "));
    println!("  best: {:.3} s", r.best.as_secs_f64());
    match r.peak_rss_bytes {
        Some(b) => println!(
            "  peak RSS: {:.1} MiB{}",
            b as f64 / (1024.0 * 1024.0),
            if r.peak_reset {
                " (reset before assembling)"
            } else {
                " (includes generating the series)"
            }
        ),
        None => println!("  peak RSS: unavailable (no /proc/self/status)"),
    }
    Ok(())
}

fn synth_command(a: SynthArgs) -> anyhow::Result<()> {
    let options = CohortOptions {
        subjects: a.subjects,
        fcd_fraction: a.fcd_fraction,
        seed: a.seed,
        voxel_mm: a.voxel_mm,
        plane: a.plane,
        lesion_radius_mm: a.lesion_radius,
        lesion_contrast: a.lesion_contrast,
        patients_on_control_scanner: a.confound,
        mimics: a.mimics,
        dicom: a.dicom.then(|| DicomExport {
            order: a.order,
            enhanced: a.enhanced,
            transfer_syntax: a.transfer_syntax.clone(),
        }),
        preview: !a.no_preview,
        ..CohortOptions::default()
    };
    let report = synth::generate(&a.out, &options).with_context(|| format!("synth into {}", a.out.display()))?;
    let fcd = report.participants.iter().filter(|p| p.group == "fcd").count();
    println!(
        "wrote {} subjects ({} fcd, {} hc) to {}",
        report.participants.len(),
        fcd,
        report.participants.len() - fcd,
        a.out.display()
    );
    if let Some(preview) = &report.preview {
        println!("preview: {}", preview.display());
    }
    if a.timings {
        let t = report.timings;
        println!(
            "timings: templates {:.2} s, render {:.2} s, NIfTI {:.2} s, DICOM {:.2} s, total {:.2} s",
            t.anatomy.as_secs_f64(),
            t.render.as_secs_f64(),
            t.nifti.as_secs_f64(),
            t.dicom.as_secs_f64(),
            t.total.as_secs_f64()
        );
    }
    Ok(())
}
