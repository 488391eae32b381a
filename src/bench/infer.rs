//! `fcdnode bench infer`: one 176×256×256 synthetic FLAIR series through the whole offline
//! pipeline (assemble, preprocess, infer, explain, SC, SR) with a full-width ResNet-18 of random
//! weights; prints per-stage times and peak memory, asserts nothing. Part of the binary: it
//! only composes library stages.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{median, peak_rss_bytes};
use fcdnode::infer::{Device, Ensemble, runtime};
use fcdnode::package::arch::ArchSpec;
use fcdnode::package::manifest::{Manifest, Modality, ModelPackage};
use fcdnode::package::onnx::{FEATURES, INPUT, LOGITS, write_onnx};
use fcdnode::package::weights::Weights;
use fcdnode::pipeline::{self, Options};
use fcdnode::preprocess::{Normalisation, Recipe};
use fcdnode::report::{ResultSummary, Timings};
use fcdnode::synth::dicom::{DicomOptions, SeriesInfo, write_series};
use fcdnode::synth::phantom::{AcquisitionSpec, Anatomy, Contrast, Hemisphere, LesionSpec, Lobe, Subject, SubjectSpec};
use fcdnode::tracker::routing::{Router, RoutingConfig};
use fcdnode::volume::{Plane, acquisition_grid};

/// Field of view of the model grid in mm (R, A, S): the head with margin.
const MODEL_FOV_MM: [f64; 3] = [192.0, 224.0, 192.0];

/// What to benchmark.
#[derive(Clone, Debug)]
pub struct InferBench {
    /// Architecture name (`resnet18`…).
    pub arch: String,
    /// Width multiplier (1.0 = full width).
    pub width_mult: f64,
    /// Model grid voxel size in mm.
    pub voxel_mm: f64,
    /// Timed runs after one warm-up run.
    pub runs: usize,
    /// Execution provider.
    pub device: Device,
    /// ONNX Runtime library (else the usual search).
    pub onnxruntime: Option<PathBuf>,
    /// Also time forward passes through an I/O binding (CUDA only; see [`io_binding_compare`]).
    pub io_binding: bool,
}

/// The figures.
#[derive(Debug)]
pub struct InferBenchReport {
    /// Model input `[channel, depth, height, width]`.
    pub input_shape: [usize; 4],
    /// Where the sessions ran.
    pub device: Device,
    /// Building the ONNX Runtime sessions.
    pub session_build: Duration,
    /// Per-stage milliseconds of each timed run.
    pub runs: Vec<Timings>,
    /// Peak resident set size in bytes.
    pub peak_rss_bytes: Option<u64>,
    /// The last run's result.
    pub summary: ResultSummary,
    /// Forward passes with and without an I/O binding, when asked for and on CUDA (an error
    /// there is reported, not fatal: the stage figures stand without it).
    pub io_binding: Option<Result<IoBindingReport>>,
}

/// Median forward pass (input in, `logits` and `features` back in host memory) two ways.
#[derive(Clone, Copy, Debug)]
pub struct IoBindingReport {
    /// `Session::run` from pageable host memory, as the node runs it.
    pub plain_ms: f64,
    /// `Session::run_binding` with the input and both outputs in host buffers made once: no
    /// output allocation or copy per run.
    pub bound_ms: f64,
    /// Passes timed each way.
    pub passes: usize,
}

/// Writes the series and the model into `dir`, then runs the pipeline `1 + runs` times.
pub fn infer_bench(dir: &Path, bench: &InferBench) -> Result<InferBenchReport> {
    let series = dir.join("flair");
    write_flair(&series)?;
    let model = dir.join("model");
    let manifest = write_model(&model, bench)?;
    let library = runtime::find_library(bench.onnxruntime.as_deref())?;
    runtime::init(&library)?;
    let package = ModelPackage::load(&model)?;
    let start = Instant::now();
    let mut ensemble = Ensemble::load(&package, bench.device, 0)?;
    let session_build = start.elapsed();
    let router = Router::new(&RoutingConfig::default())?;
    let options = Options {
        uid_key: Some([1; 32]),
        ..Options::default()
    };
    let mut runs = Vec::new();
    let mut summary = ResultSummary::default();
    for n in 0..=bench.runs {
        summary = pipeline::run_dicom(
            std::slice::from_ref(&series),
            &mut ensemble,
            &router,
            &dir.join("out"),
            &options,
        )?;
        if n > 0 {
            runs.push(summary.timings_ms.clone());
        }
    }
    let device = ensemble.device();
    drop(ensemble);
    let r = &manifest.preprocess;
    let input_shape = [1, r.shape[2], r.shape[1], r.shape[0]];
    let io_binding = match (bench.io_binding, package.graphs.first()) {
        (true, Some(graph)) if device == Device::Cuda => {
            Some(io_binding_compare(graph, input_shape, bench.runs.max(5)))
        }
        _ => None,
    };
    Ok(InferBenchReport {
        input_shape,
        device,
        session_build,
        runs,
        peak_rss_bytes: peak_rss_bytes(),
        summary,
        io_binding,
    })
}

/// Times `passes` forward passes of `graph` on CUDA after two warm-ups each way: plain
/// [`runtime::run`] against an I/O binding whose input and outputs live in host buffers bound once.
/// Tells whether binding would pay in the node, whose input changes every run and whose outputs
/// go back to the CPU for Grad-CAM.
pub fn io_binding_compare(graph: &Path, shape: [usize; 4], passes: usize) -> Result<IoBindingReport> {
    use ort::value::Tensor;

    let mut session = runtime::session(graph, Device::Cuda, 0)?;
    let [c, d, h, w] = shape;
    let input = ndarray::Array5::<f32>::from_shape_fn((1, c, d, h, w), |(_, _, z, y, x)| {
        ((z * 31 + y * 17 + x * 7) % 97) as f32 / 97.0
    });
    // The plain run, as the node makes it; its last outputs give the shapes to bind.
    let mut last = None;
    let plain = timed_passes(passes, || {
        last = Some(runtime::run(&mut session, &input)?);
        Ok(())
    })?;
    let last = last.context("no forward pass ran")?;

    // Host buffers made once: the input copied in each run, the outputs written in place.
    // (ort refuses to write or read CUDA-pinned buffers from the host: "not CPU accessible".)
    let mut tensor = Tensor::from_array(input.clone())?;
    let mut binding = session.create_binding()?;
    let host = ort::memory::Allocator::default();
    binding.bind_output(LOGITS, Tensor::<f32>::new(&host, last.logits.shape())?)?;
    binding.bind_output(FEATURES, Tensor::<f32>::new(&host, last.features.shape())?)?;
    let bound = timed_passes(passes, || {
        // The node's input changes each run: copy it in every time, as the plain run does.
        tensor.extract_array_mut().assign(&input.view().into_dyn());
        binding.bind_input(INPUT, &tensor)?;
        let outputs = session.run_binding(&binding)?;
        for name in [LOGITS, FEATURES] {
            std::hint::black_box(outputs[name].try_extract_array::<f32>()?.sum());
        }
        Ok(())
    })?;
    Ok(IoBindingReport {
        plain_ms: median(&plain),
        bound_ms: median(&bound),
        passes,
    })
}

/// Milliseconds of each of `passes` calls of `pass`, after two untimed warm-up calls.
fn timed_passes(passes: usize, mut pass: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    let mut times = Vec::with_capacity(passes);
    for n in 0..passes + 2 {
        let start = Instant::now();
        pass()?;
        if n >= 2 {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(times)
}

/// A 1 mm sagittal FLAIR, 256 × 256 × 176, of a synthetic patient.
pub(crate) fn write_flair(dir: &Path) -> Result<()> {
    write_series_of(dir, Contrast::Flair)
}

/// The same patient's 1 mm sagittal 3D T1w (MPRAGE), on the FLAIR's grid.
pub(crate) fn write_t1w(dir: &Path) -> Result<()> {
    write_series_of(dir, Contrast::T1w)
}

fn write_series_of(dir: &Path, contrast: Contrast) -> Result<()> {
    let anatomy = Anatomy::load()?;
    let subject = Subject::sample(
        &anatomy,
        &SubjectSpec {
            seed: 1,
            lesion: Some(LesionSpec {
                hemisphere: Hemisphere::Left,
                lobe: Lobe::Frontal,
                radius_mm: 8.0,
                contrast: 1.0,
                flair_gain: 1.0,
            }),
            mimics: 0,
        },
    )?;
    let grid = acquisition_grid(Plane::Sagittal, [1.0; 3], [256.0, 256.0, 176.0], [0.0, 18.0, 10.0])?;
    let image = subject
        .render(
            &anatomy,
            contrast,
            &AcquisitionSpec {
                grid,
                noise: 0.02,
                bias: 0.1,
            },
            1,
        )?
        .image;
    let info = match contrast {
        Contrast::Flair => SeriesInfo {
            series_description: "3D FLAIR".into(),
            protocol_name: "t2_spc_da-fl_sag_p2_iso".into(),
            scanning_sequence: "SE\\IR".into(),
            repetition_time: 5000.0,
            echo_time: 388.0,
            inversion_time: Some(1800.0),
            acquisition_contrast: "FLUID_ATTENUATED".into(),
            ..SeriesInfo::new(1)
        },
        // SeriesInfo's defaults are a 3D MPRAGE.
        Contrast::T1w => SeriesInfo {
            series_description: "3D T1w MPRAGE".into(),
            series_number: 2,
            acquisition_contrast: "T1".into(),
            ..SeriesInfo::new(2)
        },
    };
    write_series(&image, &info, &DicomOptions::default(), dir)?;
    Ok(())
}

/// One fold of random weights on a RAS grid covering [`MODEL_FOV_MM`].
pub(crate) fn write_model(dir: &Path, bench: &InferBench) -> Result<Manifest> {
    std::fs::create_dir_all(dir)?;
    let mut arch = ArchSpec::from_name(&bench.arch)?;
    arch.width_mult = bench.width_mult;
    arch.validate()?;
    let shape = MODEL_FOV_MM.map(|f| (f / bench.voxel_mm).round() as usize);
    let recipe = Recipe {
        voxel_mm: [bench.voxel_mm; 3],
        shape,
        normalisation: Normalisation::ZscoreForeground,
    };
    write_onnx(
        &arch,
        &Weights::random(&arch, 7),
        [shape[2], shape[1], shape[0]],
        &dir.join("fold0.onnx"),
    )?;
    let manifest = Manifest::fcd_classifier(
        "bench",
        "random",
        vec![Modality::Flair],
        recipe,
        arch,
        vec!["fold0.onnx".into()],
    );
    manifest.save(dir)?;
    Ok(manifest)
}
