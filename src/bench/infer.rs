//! `fcdnode bench infer`: one 176×256×256 synthetic FLAIR series through the whole offline
//! pipeline (assemble, preprocess, infer, explain, SC, SR) with a full-width ResNet-18 of random
//! weights; prints per-stage times and peak memory, asserts nothing. Part of the binary: it
//! only composes library stages.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;

use super::peak_rss_bytes;
use fcdnode::infer::{Device, Ensemble, runtime};
use fcdnode::package::arch::ArchSpec;
use fcdnode::package::manifest::{Manifest, Modality, ModelPackage};
use fcdnode::package::onnx::write_onnx;
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
}

/// The figures.
#[derive(Clone, Debug)]
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
    let r = &manifest.preprocess;
    Ok(InferBenchReport {
        input_shape: [1, r.shape[2], r.shape[1], r.shape[0]],
        device: ensemble.device(),
        session_build,
        runs,
        peak_rss_bytes: peak_rss_bytes(),
        summary,
    })
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
