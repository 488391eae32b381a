//! The pipeline worker: takes jobs from the database one at a time (one inference at a time per
//! device), runs assemble → preprocess → infer → explain → report on a blocking thread, records
//! each milestone, and queues the deliveries.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dicom_dictionary_std::tags;
use dicom_object::OpenFileOptions;
use tokio::sync::watch;

use crate::api::Metrics;
use crate::assemble;
use crate::config::{Config, Settings};
use crate::infer::Ensemble;
use crate::pipeline::{self, Options, Stage};
use crate::report::sr::InstanceRef;
use crate::report::{self, ReportOptions, ResultSummary};
use crate::spool::db::{JobDb, JobRow, JobState};

pub(super) struct Worker {
    db: Arc<JobDb>,
    ensemble: Ensemble,
    config: Config,
    /// Pipeline options from the configuration; each job adds its predecessor SR.
    options: Options,
    metrics: Arc<Metrics>,
}

impl Worker {
    pub(super) fn new(settings: &Settings, db: Arc<JobDb>, ensemble: Ensemble, metrics: Arc<Metrics>) -> Self {
        Self {
            db,
            ensemble,
            config: settings.config.clone(),
            options: options(&settings.config),
            metrics,
        }
    }

    pub(super) fn run(mut self, rx: watch::Receiver<bool>) {
        let poll = Duration::from_secs_f64(self.config.pipeline.poll_s);
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
        let out = super::results_dir(&self.config.node.data_dir).join(format!("job-{}", job.id));
        tracing::info!(job = job.id, study_uid = %job.study_uid, attempt = job.attempts, "job started");
        match self.run_job(job, &out) {
            Ok(summary) => {
                let mut files: Vec<PathBuf> = summary.sc_files.iter().map(|f| out.join(f)).collect();
                files.extend(summary.sr_file.iter().map(|f| out.join(f)));
                let destinations = self
                    .config
                    .outbox
                    .destinations_for(&job.calling_ae, &self.config.destinations);
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
                    ("report", t.sc + t.sr),
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
            Err(reason) => {
                tracing::error!(job = job.id, "job failed: {reason}");
                if let Err(e) = self.db.set_state(job.id, JobState::Failed, Some(&reason)) {
                    tracing::error!(job = job.id, "cannot record the failure: {e}");
                }
            }
        }
    }

    fn run_job(&mut self, job: &JobRow, out: &std::path::Path) -> Result<ResultSummary, String> {
        // Outputs of an attempt cut short by a crash are discarded: they were never delivered.
        if out.exists() {
            std::fs::remove_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
        }
        // The tracker routed these series to the model's channels, in order.
        let mut chosen = Vec::new();
        for uid in &job.series {
            let series = self
                .db
                .series(uid)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("series {uid} is not in the spool"))?;
            chosen.push(assemble::list_files(std::slice::from_ref(&series.dir)).map_err(|e| e.to_string())?);
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
        pipeline::run_series_staged(&chosen, &mut self.ensemble, out, &options, &mut on_stage)
            .map_err(|e| e.to_string())
    }

    /// The SR of the job this one supersedes, when it was made.
    fn predecessor_sr(&self, job_id: i64) -> Option<InstanceRef> {
        let dir = self.db.job(job_id).ok().flatten()?.result_dir?;
        let text = std::fs::read_to_string(dir.join("result.json")).ok()?;
        let summary: serde_json::Value = serde_json::from_str(&text).ok()?;
        let sr = dir.join(summary.get("sr_file")?.as_str()?);
        let header = OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .open_file(&sr)
            .ok()?;
        Some(InstanceRef::of(&header))
    }
}

/// The pipeline options the configuration asks for.
fn options(config: &Config) -> Options {
    Options {
        explain: config.pipeline.explain,
        report: ReportOptions {
            multiframe: config.pipeline.multiframe_sc,
            series_number_sc: config.pipeline.sc_series_number,
            series_number_sr: config.pipeline.sr_series_number,
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
