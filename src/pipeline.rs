//! One study through the stages, offline: DICOM folder (or NIfTI files) → assemble → route →
//! preprocess → infer → explain → report. `fcdnode infer` calls it; the service runs the same
//! function per job.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use dicom_object::InMemDicomObject;

use crate::assemble::{
    self, AssembleError, Assembled, InstanceHeader, Plan, SeriesMeta, SliceSource, StackSummary, Tolerances,
};
use crate::explain;
use crate::infer::{CamMethod, Ensemble, InferError};
use crate::nifti::{self, NiftiError};
use crate::package::manifest::{Manifest, Modality};
use crate::preprocess::{ModelInput, PreprocessError};
use crate::report::{
    self, Algorithm, Finding, Hotspot, ReportError, ReportInputs, ReportOptions, ResultSummary, Timings, UidGenerator,
};
use crate::tracker::routing::{self, Candidate, ChannelSeries, Router, SeriesFacts};
use crate::volume::{Grid, Volume, VolumeError};

/// Why a study could not be processed; variants say which stage and what.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// Reading or assembling DICOM failed.
    #[error(transparent)]
    Assemble(#[from] AssembleError),
    /// Reading NIfTI failed.
    #[error(transparent)]
    Nifti(#[from] NiftiError),
    /// No series (or too many) for a channel the model needs.
    #[error("model channel {channel}: {reason}")]
    Channel { channel: Modality, reason: String },
    /// NIfTI inputs do not match the model's channels.
    #[error("{given} NIfTI file(s) given; the model takes {expected} channel(s) in this order: {channels}")]
    NiftiChannels {
        given: usize,
        expected: usize,
        channels: String,
    },
    /// Preprocessing failed.
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    /// Inference failed.
    #[error(transparent)]
    Infer(#[from] InferError),
    /// Mapping the heatmap to the source grid failed.
    #[error("mapping the heatmap onto the source grid: {0}")]
    Explain(#[from] VolumeError),
    /// Writing SC, SR, preview or JSON failed.
    #[error(transparent)]
    Report(#[from] ReportError),
}

impl PipelineError {
    /// The stage that failed, as the job database records it.
    pub fn stage(&self) -> &'static str {
        match self {
            Self::Assemble(_) | Self::Nifti(_) | Self::Channel { .. } | Self::NiftiChannels { .. } => "assemble",
            Self::Preprocess(_) => "preprocess",
            Self::Infer(_) => "infer",
            Self::Explain(_) => "explain",
            Self::Report(_) => "report",
        }
    }

    /// The series the error is about, when it names one.
    pub fn series_uid(&self) -> Option<&str> {
        match self {
            Self::Assemble(e) => e.series_uid(),
            _ => None,
        }
    }
}

/// How the heatmap is made.
///
/// Grad-CAM++ is the default because it points at the lesion: Grad-CAM sums every channel the
/// classifier weighs positively, and in small 3D ResNets many of those fire all over the head,
/// so its peak drifts one or two CAM cells off a focal lesion; Grad-CAM++ divides each channel
/// by 2 + w·mean(A), which quiets channels that are active everywhere (models/demo/README.md
/// has the figures).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Explain {
    /// Grad-CAM at the global-pooling input, exact from forward outputs.
    Gradcam,
    /// Grad-CAM++ in closed form (the default: best lesion localisation).
    #[default]
    Gradcampp,
    /// Occlusion sensitivity (one ensemble run per patch position; slower).
    Occlusion,
}

impl Explain {
    /// The package's reference level for this method's maps (`[heatmap]` in its manifest):
    /// 1.0 on the display scale. `None` for occlusion and for packages without one.
    pub fn reference_level(self, manifest: &Manifest) -> Option<f64> {
        let levels = manifest.heatmap.as_ref()?;
        match self {
            Explain::Gradcampp => levels.gradcampp,
            Explain::Gradcam => levels.gradcam,
            Explain::Occlusion => None,
        }
    }
}

/// Knobs of one run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Explanation method.
    pub explain: Explain,
    /// Occlusion cube size and step in model voxels.
    pub occlusion_patch: usize,
    /// Occlusion step in model voxels.
    pub occlusion_stride: usize,
    /// Series Instance UID to use for the model's first channel instead of routing.
    pub series: Option<String>,
    /// Layout and series of the outputs.
    pub report: ReportOptions,
    /// The node's identity in the outputs.
    pub device: report::Device,
    /// Key for new UIDs (a job's, so that its rerun draws the same UIDs; or a test's);
    /// `None` draws random UIDs.
    pub uid_key: Option<[u8; 32]>,
    /// Root for new UIDs; `None`: UUID-derived `2.25.` UIDs.
    pub uid_root: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            explain: Explain::default(),
            occlusion_patch: 16,
            occlusion_stride: 8,
            series: None,
            report: ReportOptions::new(),
            device: report::Device::default(),
            uid_key: None,
            uid_root: None,
        }
    }
}

/// A milestone inside [`prepare_series`] and [`finish_series`], for callers that persist progress.
#[derive(Clone, Copy, Debug)]
pub enum Stage<'a> {
    /// The series are read and assembled into volumes.
    Assembled,
    /// The model ran and the heatmap is on the source grid.
    Inferred,
    /// The SR and the notification documents are written (the summary names them); the other
    /// outputs are still to come.
    Decided(&'a ResultSummary),
}

/// Runs the model on the series under `paths` (picked by routing, or `options.series`) and
/// writes SC, SR, preview and `result.json` into `out`.
pub fn run_dicom(
    paths: &[PathBuf],
    ensemble: &mut Ensemble,
    router: &Router,
    out: &Path,
    options: &Options,
) -> Result<ResultSummary, PipelineError> {
    let start = Instant::now();
    let channels = ensemble.manifest().channels.clone();
    let chosen = choose_series(paths, &channels, router, options.series.as_deref())?;
    run_chosen(&chosen, ensemble, out, options, start)
}

/// A job's series read and assembled, and the model's input made from them: everything before
/// the model, which needs no session. The service prepares the next job while the model runs.
pub struct Prepared {
    /// Each channel's volume and its first instance's header, in the manifest's order.
    assembled: Vec<(Assembled, InMemDicomObject)>,
    input: ModelInput,
    timings: Timings,
    /// When the job started (its timings count from here).
    start: Instant,
    /// When the input was ready: the wait for the model counts from here.
    ready: Instant,
}

/// Reads and assembles the series chosen for the model's channels (one per channel, in the
/// manifest's order) and preprocesses them, telling `on_stage` when they are assembled.
/// `start` is when the job started.
pub fn prepare_series(
    chosen: &[ChannelSeries],
    manifest: &Manifest,
    start: Instant,
    on_stage: &mut dyn FnMut(Stage<'_>),
) -> Result<Prepared, PipelineError> {
    let mut timings = Timings::default();
    let channels = &manifest.channels;
    let given: Vec<Modality> = chosen.iter().map(|c| c.channel).collect();
    if &given != channels {
        return Err(PipelineError::Channel {
            channel: channels.get(chosen.len()).copied().unwrap_or(Modality::Flair),
            reason: format!(
                "series given for channel(s) {} but the model takes {}",
                join(&given),
                join(channels)
            ),
        });
    }
    let mut assembled: Vec<(Assembled, InMemDicomObject)> = Vec::new();
    for series in chosen {
        let sources = assemble::read_files(&series.files, false)?;
        let header = match sources.first() {
            Some(first) => first.object.clone().into_inner(),
            None => {
                return Err(PipelineError::Channel {
                    channel: series.channel,
                    reason: format!("series {} has no readable instance", series.series_uid),
                });
            }
        };
        let volume = match &series.plan {
            Some(plan) => assemble::assemble_planned(plan.clone(), &sources)?,
            None => assemble::assemble_series(&sources, &Tolerances::default())?,
        };
        assembled.push((volume, header));
    }
    timings.assemble = ms(start);
    on_stage(Stage::Assembled);
    let t = Instant::now();
    let volumes: Vec<_> = assembled.iter().map(|(a, _)| &a.volume).collect();
    let input = manifest.preprocess.apply(&volumes)?;
    timings.preprocess = ms(t);
    Ok(Prepared {
        assembled,
        input,
        timings,
        start,
        ready: Instant::now(),
    })
}

/// Runs the model on a prepared job and writes its outputs into `out`, telling `on_stage` each
/// milestone after assembly. `prepared` must come from [`prepare_series`] with `ensemble`'s
/// manifest.
pub fn finish_series(
    prepared: Prepared,
    ensemble: &mut Ensemble,
    out: &Path,
    options: &Options,
    on_stage: &mut dyn FnMut(Stage<'_>),
) -> Result<ResultSummary, PipelineError> {
    let Prepared {
        assembled,
        input,
        mut timings,
        start,
        ready,
    } = prepared;
    timings.wait = ms(ready);
    let (source, header) = assembled.first().ok_or_else(|| PipelineError::Channel {
        channel: Modality::Flair,
        reason: "the model lists no channel".into(),
    })?;
    let (finding, heatmap) = predict_input(ensemble, &input, &source.volume.grid(), options, &mut timings)?;
    on_stage(Stage::Inferred);
    let algorithm = algorithm(ensemble, options);
    let report_options = report_options(ensemble, options);
    let inputs = ReportInputs {
        source_header: header,
        source,
        finding: &finding,
        algorithm: &algorithm,
        device: &options.device,
        options: &report_options,
    };
    let mut uids = options.uid_key.map_or_else(UidGenerator::random, UidGenerator::keyed);
    if let Some(root) = &options.uid_root {
        uids = uids.with_root(root.clone());
    }
    timings.total = ms(start);
    let mut decided = |summary: &ResultSummary| on_stage(Stage::Decided(summary));
    Ok(report::write_outputs(&inputs, &heatmap, &mut uids, timings, out, &mut decided)?.summary)
}

fn run_chosen(
    chosen: &[ChannelSeries],
    ensemble: &mut Ensemble,
    out: &Path,
    options: &Options,
    start: Instant,
) -> Result<ResultSummary, PipelineError> {
    let prepared = prepare_series(chosen, ensemble.manifest(), start, &mut |_| {})?;
    finish_series(prepared, ensemble, out, options, &mut |_| {})
}

/// Runs the model on NIfTI volumes (one per channel, in the manifest's order) and writes the
/// preview and `result.json`; there is no DICOM to answer, so no SC or SR.
pub fn run_nifti(
    paths: &[PathBuf],
    ensemble: &mut Ensemble,
    out: &Path,
    options: &Options,
) -> Result<ResultSummary, PipelineError> {
    let start = Instant::now();
    let mut timings = Timings::default();
    let channels = &ensemble.manifest().channels;
    if paths.len() != channels.len() {
        return Err(PipelineError::NiftiChannels {
            given: paths.len(),
            expected: channels.len(),
            channels: join(channels),
        });
    }
    let volumes = paths.iter().map(|p| nifti::read(p)).collect::<Result<Vec<_>, _>>()?;
    timings.assemble = ms(start);
    let source = nifti_source(&volumes[0], &paths[0].display().to_string());
    let (finding, heatmap) = predict(ensemble, &volumes.iter().collect::<Vec<_>>(), options, &mut timings)?;
    let algorithm = algorithm(ensemble, options);
    std::fs::create_dir_all(out).map_err(|source| ReportError::Io {
        path: out.to_owned(),
        source,
    })?;
    let preview = report::preview_png(&source, &heatmap, &finding, &report_options(ensemble, options))?;
    report::write_png(&preview, &out.join("preview.png"))?;
    timings.total = ms(start);
    let summary = report::result_json(
        &source,
        &finding,
        &algorithm,
        report::OutputFiles {
            preview_png: Some("preview.png".into()),
            ..report::OutputFiles::default()
        },
        timings,
    );
    summary.write(&out.join("result.json"))?;
    Ok(summary)
}

/// A NIfTI volume as the report stage's source series: it has no DICOM provenance, so the
/// slice list only carries `label` (the file name).
pub fn nifti_source(volume: &Volume, label: &str) -> Assembled {
    let depth = volume.shape()[2];
    Assembled {
        volume: volume.clone(),
        meta: SeriesMeta {
            series_uid: label.to_owned(),
            ..SeriesMeta::default()
        },
        slices: (0..depth)
            .map(|k| SliceSource {
                sop_instance_uid: format!("{label}#{k}"),
                sop_class_uid: String::new(),
                frame: 0,
            })
            .collect(),
        stack: StackSummary {
            frames: depth,
            matrix: [volume.shape()[1] as u32, volume.shape()[0] as u32],
            orientation: [0.0; 6],
            echo: None,
            temporal: None,
        },
        other_stacks: Vec::new(),
    }
}

/// The report options of a run, with the package's heat reference level for its method.
fn report_options(ensemble: &Ensemble, options: &Options) -> ReportOptions {
    let level = options.explain.reference_level(ensemble.manifest());
    options.report.clone().with_heat_reference(level)
}

/// Preprocess → infer → explain, the node's path (the trainer's `evaluate` takes it too): the
/// decision, and the heatmap (map units, NaN outside the model's grid) on the first channel's
/// grid. `volumes` are the model's channels in its manifest's order.
pub fn predict(
    ensemble: &mut Ensemble,
    volumes: &[&Volume],
    options: &Options,
    timings: &mut Timings,
) -> Result<(Finding, Volume), PipelineError> {
    let first = volumes.first().ok_or_else(|| PipelineError::Channel {
        channel: Modality::Flair,
        reason: "no volume given".into(),
    })?;
    let source_grid = first.grid();
    let t = Instant::now();
    let input = ensemble.manifest().preprocess.apply(volumes)?;
    timings.preprocess = ms(t);
    predict_input(ensemble, &input, &source_grid, options, timings)
}

/// Infer → explain on a preprocessed `input`: the decision, and the heatmap on `source_grid`.
fn predict_input(
    ensemble: &mut Ensemble,
    input: &ModelInput,
    source_grid: &Grid,
    options: &Options,
    timings: &mut Timings,
) -> Result<(Finding, Volume), PipelineError> {
    let t = Instant::now();
    let prediction = ensemble.predict(input)?;
    timings.infer = ms(t);
    let t = Instant::now();
    let stride = ensemble.manifest().architecture.stride();
    let heatmap = match options.explain {
        Explain::Gradcam => explain::heatmap_on(
            &ensemble.cam(&prediction, CamMethod::Gradcam)?,
            &input.grid,
            stride,
            source_grid,
        )?,
        Explain::Gradcampp => explain::heatmap_on(
            &ensemble.cam(&prediction, CamMethod::Gradcampp)?,
            &input.grid,
            stride,
            source_grid,
        )?,
        Explain::Occlusion => {
            let map = ensemble.occlusion(input, options.occlusion_patch, options.occlusion_stride)?;
            explain::model_map_on(&map, &input.grid, source_grid)?
        }
    };
    let peak = explain::hotspot(&heatmap).map(|(index, lps)| Hotspot { lps, slice: index[2] });
    timings.explain = ms(t);
    let finding = Finding {
        probability: prediction.probability,
        probability_uncalibrated: ensemble
            .manifest()
            .calibration
            .is_some()
            .then_some(prediction.probability_uncalibrated),
        threshold: ensemble.manifest().threshold,
        suspected: prediction.suspected,
        fold_probabilities: prediction.fold_probabilities,
        peak,
    };
    Ok((finding, heatmap))
}

fn algorithm(ensemble: &Ensemble, options: &Options) -> Algorithm {
    let m = ensemble.manifest();
    Algorithm {
        name: m.name.clone(),
        version: m.version.clone(),
        sha256: ensemble.package_sha256().to_owned(),
        parameters: format!(
            "{} {} fold(s), threshold {}{}, explanation {:?}, channels {}",
            m.architecture.name(),
            m.folds.len(),
            m.threshold,
            m.calibration.as_ref().map_or_else(String::new, |c| format!(
                " on the calibrated probability ({:?}: a {}, b {})",
                c.method, c.a, c.b
            )),
            options.explain,
            m.channels.iter().map(ToString::to_string).collect::<Vec<_>>().join("+")
        ),
    }
}

/// For each model channel, the series that feeds it: routed (or `series` for the first
/// channel), several candidates settled by [`routing::pick`].
fn choose_series(
    paths: &[PathBuf],
    channels: &[Modality],
    router: &Router,
    series: Option<&str>,
) -> Result<Vec<ChannelSeries>, PipelineError> {
    let scan = assemble::scan(paths)?;
    for skipped in &scan.skipped {
        tracing::warn!("skipped {skipped}");
    }
    if let Some(uid) = series
        && !scan.series.contains_key(uid)
    {
        return Err(AssembleError::SeriesNotFound {
            series_uid: uid.to_string(),
            present: scan.series.keys().cloned().collect::<Vec<_>>().join(", "),
        }
        .into());
    }
    let mut candidates: BTreeMap<Modality, Vec<Candidate<Option<Plan>>>> = BTreeMap::new();
    let mut reasons = Vec::new();
    for (uid, sources) in &scan.series {
        let planned =
            InstanceHeader::of_sources(sources).and_then(|h| assemble::plan_series(&h, &Tolerances::default()));
        if series == Some(uid.as_str()) {
            // The user's choice: it feeds the first channel, whatever competes with it; a plan
            // error is reported when it is assembled.
            candidates.insert(
                channels[0],
                vec![Candidate {
                    series_uid: uid.clone(),
                    slices: usize::MAX,
                    received_at: 0.0,
                    item: planned.ok(),
                }],
            );
            continue;
        }
        match planned {
            Ok(plan) => {
                let decision = router.route(&SeriesFacts {
                    meta: &plan.meta,
                    slices: plan.shape()[2],
                    slice_step_mm: Some(plan.ordered.slice_step_mm),
                });
                tracing::info!(series_uid = %uid, channel = %decision.channel.map_or_else(|| "none".to_owned(), |c| c.to_string()), reason = %decision.reason, "routing");
                match decision.channel {
                    Some(c) if series.is_none() || c != channels[0] => {
                        candidates.entry(c).or_default().push(Candidate {
                            series_uid: uid.clone(),
                            slices: plan.shape()[2],
                            received_at: 0.0,
                            item: Some(plan),
                        })
                    }
                    Some(_) => {}
                    None => reasons.push(format!("{uid}: {}", decision.reason)),
                }
            }
            Err(e) => reasons.push(e.to_string()),
        }
    }
    channels
        .iter()
        .map(|&channel| {
            routing::pick(candidates.remove(&channel).unwrap_or_default())
                .map(|c| ChannelSeries {
                    channel,
                    files: match &c.item {
                        Some(plan) => plan.files(),
                        None => scan.series.get(&c.series_uid).map_or_else(Vec::new, |sources| {
                            sources.iter().map(|s| PathBuf::from(&s.label)).collect()
                        }),
                    },
                    series_uid: c.series_uid,
                    plan: c.item,
                })
                .ok_or_else(|| PipelineError::Channel {
                    channel,
                    reason: format!(
                        "no series routed to it under {paths:?}{}",
                        if reasons.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", reasons.join("; "))
                        }
                    ),
                })
        })
        .collect()
}

fn join(channels: &[Modality]) -> String {
    channels.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}
