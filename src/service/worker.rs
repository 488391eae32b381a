//! The pipeline worker: takes jobs from the database one at a time (one inference at a time per
//! device), runs assemble → preprocess → infer → explain → report on a blocking thread, records
//! each milestone, and queues the deliveries.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dicom_dictionary_std::tags;
use dicom_object::OpenFileOptions;
use tokio::sync::watch;

use crate::api::Metrics;
use crate::config::Settings;
use crate::infer::Ensemble;
use crate::pipeline::{self, Options, Stage};
use crate::report::sr::InstanceRef;
use crate::report::{self, ReportOptions, ResultSummary};
use crate::spool::db::{JobDb, JobFailure, JobRow, JobState};

pub(super) struct Worker {
    db: Arc<JobDb>,
    ensemble: Ensemble,
    settings: Settings,
    /// Pipeline options from the configuration; each job adds its predecessor SR.
    options: Options,
    metrics: Arc<Metrics>,
}

impl Worker {
    pub(super) fn new(settings: &Settings, db: Arc<JobDb>, ensemble: Ensemble, metrics: Arc<Metrics>) -> Self {
        Self {
            db,
            ensemble,
            settings: settings.clone(),
            options: options(settings),
            metrics,
        }
    }

    pub(super) fn run(mut self, rx: watch::Receiver<bool>) {
        let poll = Duration::from_secs_f64(self.settings.pipeline.poll_s);
        loop {
            match self.db.claim_job() {
                Ok(Some(job)) => self.process(&job),
                Ok(None) => {
                    if super::wait_or_stop(&rx, poll) {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!("pipeline: {e}");
                    if super::wait_or_stop(&rx, poll) {
                        return;
                    }
                }
            }
            if *rx.borrow() {
                return;
            }
        }
    }

    fn process(&mut self, job: &JobRow) {
        let start = Instant::now();
        let out = super::results_dir(&self.settings.node.data_dir).join(format!("job-{}", job.id));
        tracing::info!(job = job.id, study_uid = %job.study_uid, attempt = job.attempts, "job started");
        match self.run_job(job, &out) {
            Ok(summary) => {
                let files: Vec<PathBuf> = summary.dicom_files().map(|f| out.join(f)).collect();
                let destinations = self.settings.destinations_for(&job.calling_ae);
                if let Err(e) = self.db.report_job(job.id, &out, &files, &destinations) {
                    tracing::error!(job = job.id, "cannot record the job's results: {e}");
                    return;
                }
                let t = &summary.timings_ms;
                for (stage, ms) in [
                    ("assemble", t.assemble),
                    ("preprocess", t.preprocess),
                    ("infer", t.infer),
                    ("explain", t.explain),
                    ("report", t.sc + t.pm + t.seg + t.sr),
                ] {
                    self.metrics.observe_stage(stage, ms / 1000.0);
                }
                tracing::info!(
                    job = job.id,
                    probability = summary.probability,
                    label = %summary.label,
                    destinations = ?destinations,
                    "job reported in {:.1} s", start.elapsed().as_secs_f64()
                );
            }
            Err(error) => {
                let failure = error.failure();
                tracing::error!(
                    job = job.id,
                    stage = %failure.stage,
                    series_uid = failure.series_uid.as_deref().unwrap_or("-"),
                    "job failed: {}", failure.message
                );
                if let Err(e) = self.db.fail_job(job.id, &failure) {
                    tracing::error!(job = job.id, "cannot record the failure: {e}");
                }
            }
        }
    }

    fn run_job(&mut self, job: &JobRow, out: &Path) -> Result<ResultSummary, JobError> {
        let fail = |kind: JobErrorKind| JobError {
            job_id: job.id,
            series_uid: job.series.first().cloned(),
            kind,
        };
        // Outputs of an attempt cut short by a crash are discarded: they were never delivered.
        if out.exists() {
            std::fs::remove_dir_all(out).map_err(|source| {
                fail(JobErrorKind::Io {
                    path: out.to_owned(),
                    source,
                })
            })?;
        }
        if job.inputs.len() != job.series.len() {
            return Err(fail(JobErrorKind::NoInputs));
        }
        let predecessor = match job.supersedes {
            Some(id) => self.predecessor_sr(id),
            None => None,
        };
        let mut options = self.options.clone();
        options.report.predecessor = predecessor;
        let db = self.db.clone();
        let id = job.id;
        let mut on_stage = |stage: Stage| {
            let state = match stage {
                Stage::Assembled => JobState::Assembled,
                Stage::Inferred => JobState::Inferred,
            };
            if let Err(e) = db.set_state(id, state, None) {
                tracing::warn!(job = id, "cannot record state {state:?}: {e}");
            }
        };
        pipeline::run_series_staged(&job.inputs, &mut self.ensemble, out, &options, &mut on_stage).map_err(|e| {
            let series_uid = e.series_uid().map(str::to_owned);
            let mut error = fail(JobErrorKind::Pipeline(Box::new(e)));
            if series_uid.is_some() {
                error.series_uid = series_uid;
            }
            error
        })
    }

    /// The SR of the job this one supersedes, when it was made; a result that cannot be read is
    /// logged and the new SR goes out without the reference.
    fn predecessor_sr(&self, job_id: i64) -> Option<InstanceRef> {
        let dir = match self.db.job(job_id) {
            Ok(job) => job?.result_dir?,
            Err(e) => {
                tracing::warn!(job = job_id, "predecessor job: {e}");
                return None;
            }
        };
        let summary = match ResultSummary::read(&dir.join("result.json")) {
            Ok(summary) => summary,
            Err(e) => {
                tracing::warn!(job = job_id, "predecessor SR not referenced: {e}");
                return None;
            }
        };
        let path = dir.join(summary.sr_file?);
        match OpenFileOptions::new().read_until(tags::PIXEL_DATA).open_file(&path) {
            Ok(header) => Some(InstanceRef::of(&header)),
            Err(e) => {
                tracing::warn!(job = job_id, path = %path.display(), "predecessor SR not referenced: {e}");
                None
            }
        }
    }
}

/// Why a job failed: which job, which series, which stage, and the cause.
#[derive(Debug, thiserror::Error)]
#[error("job {job_id}{}: {kind}", series_uid.as_ref().map(|s| format!(", series {s}")).unwrap_or_default())]
pub struct JobError {
    /// The job.
    pub job_id: i64,
    /// The series being processed (the primary series when the stage is not per series).
    pub series_uid: Option<String>,
    /// What failed.
    #[source]
    pub kind: JobErrorKind,
}

/// The failing step of a job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobErrorKind {
    /// A stage of the pipeline.
    #[error("{stage}: {0}", stage = .0.stage())]
    Pipeline(Box<crate::pipeline::PipelineError>),
    /// The results of an earlier, interrupted attempt could not be removed.
    #[error("prepare: {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The job row has no chosen series (made by an older version of the node).
    #[error("prepare: the job records no instance files for its series; send the study again")]
    NoInputs,
}

impl JobError {
    /// The stage name stored with the job.
    pub fn stage(&self) -> &'static str {
        match &self.kind {
            JobErrorKind::Pipeline(e) => e.stage(),
            JobErrorKind::Io { .. } | JobErrorKind::NoInputs => "prepare",
        }
    }

    /// What the job database stores: stage, series and the whole error chain.
    pub fn failure(&self) -> JobFailure {
        JobFailure {
            stage: self.stage().into(),
            series_uid: self.series_uid.clone(),
            message: crate::error_chain(&self.kind),
        }
    }
}

/// The pipeline options the configuration asks for.
fn options(config: &Settings) -> Options {
    Options {
        explain: config.pipeline.explain,
        report: ReportOptions {
            multiframe: config.pipeline.multiframe_sc,
            series_number_sc: config.pipeline.sc_series_number,
            series_number_sr: config.pipeline.sr_series_number,
            series_number_pm: config.pipeline.pm_series_number,
            series_number_seg: config.pipeline.seg_series_number,
            overlay: config.overlay.clone(),
            ..ReportOptions::default()
        },
        device: report::Device {
            device_uid: config.node.device_uid.clone(),
            institution_name: config.node.institution_name.clone(),
            ..report::Device::default()
        },
        uid_root: config.node.uid_root.clone(),
        ..Options::default()
    }
}
