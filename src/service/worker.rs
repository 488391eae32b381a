//! The pipeline worker: takes jobs from the database and runs assemble → preprocess → infer →
//! explain → report on a blocking thread, records each milestone, and queues the deliveries.
//! The model runs one job at a time; while it runs (and while that job's outputs are made), a
//! second thread claims the next waiting job and assembles and preprocesses it, so the model
//! starts on it as soon as it is free.
//!
//! A job that fails for the node's own disk or database rather than for its input (results
//! that cannot be written, a database that cannot record them: "database or disk is full")
//! runs again by itself after a backoff ([`RETRY_FIRST`] doubling to [`RETRY_MAX`]), so it
//! recovers once space returns, without a restart. Until then it keeps its state; a restart
//! requeues it as before.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dicom_dictionary_std::tags;
use dicom_object::OpenFileOptions;
use tokio::sync::watch;

use super::repeats::Repeats;
use crate::api::Metrics;
use crate::config::Settings;
use crate::deliver::EndpointKind;
use crate::infer::Ensemble;
use crate::package::manifest::Manifest;
use crate::pipeline::{self, Options, PipelineError, Prepared, Stage};
use crate::report::sr::InstanceRef;
use crate::report::{self, ResultSummary};
use crate::spool::db::{DeliveryState, FailedAhead, JobDb, JobFailure, JobRow, JobState};

/// First wait before a job that hit a fault of the node's own disk or database runs again.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between such runs (the wait doubles after each further fault).
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// What a job that hit such a fault still needs.
#[derive(Debug)]
enum Again {
    /// Run again (its outputs or their record are missing).
    Run,
    /// Record the failure it had: the job itself is done.
    RecordFailure(JobFailure),
}

/// A job waiting to try again.
#[derive(Debug)]
struct Retry {
    job_id: i64,
    again: Again,
    due: Instant,
    /// The wait that led here; the next one is twice as long.
    wait: Duration,
}

pub(super) struct Worker {
    ensemble: Ensemble,
    /// What claiming and preparing a job needs; the thread preparing the next job shares it.
    prep: Prep,
    metrics: Arc<Metrics>,
    /// Jobs waiting to try again, in no order.
    retries: Vec<Retry>,
}

/// Claims and prepares jobs: needs no model session, so it runs beside the model.
struct Prep {
    db: Arc<JobDb>,
    settings: Settings,
    /// Pipeline options from the configuration; each job adds its predecessor SR.
    options: Options,
    /// The loaded package's manifest (channels, preprocessing).
    manifest: Manifest,
}

/// A claimed job, made ready for the model or failed on the way.
struct Begun {
    job: JobRow,
    out: PathBuf,
    start: Instant,
    /// This job's options (its UID key, what an earlier attempt sent ahead; its predecessor SR
    /// is added when the model is free, once the job before is recorded).
    options: Options,
    /// The wait before the next try, should this one hit a fault of the node's own.
    retry_wait: Duration,
    prepared: Result<Prepared, JobError>,
}

impl Worker {
    pub(super) fn new(settings: &Settings, db: Arc<JobDb>, ensemble: Ensemble, metrics: Arc<Metrics>) -> Self {
        let manifest = ensemble.manifest().clone();
        Self {
            ensemble,
            prep: Prep {
                db,
                settings: settings.clone(),
                options: options(settings),
                manifest,
            },
            metrics,
            retries: Vec::new(),
        }
    }

    pub(super) fn run(mut self, rx: watch::Receiver<bool>) {
        let poll = Duration::from_secs_f64(self.prep.settings.pipeline.poll_s);
        let mut repeats = Repeats::new(super::REPEATS_EVERY);
        let db = self.prep.db.clone();
        let bell = &db.bells().jobs;
        // The job prepared while the model ran the one before; it goes next. A job left here
        // at shutdown is claimed but not run: the next start requeues it.
        let mut next: Option<Begun> = None;
        loop {
            let now = Instant::now();
            if let Some(i) = self.retries.iter().position(|r| r.due <= now) {
                let retry = self.retries.swap_remove(i);
                self.retry(retry);
            } else if let Some(begun) = next.take() {
                next = self.complete(begun, !*rx.borrow());
            } else {
                let seen = bell.generation();
                match db.claim_job() {
                    Ok(Some(job)) => {
                        let begun = self.prep.begin(job, RETRY_FIRST);
                        next = self.complete(begun, !*rx.borrow());
                    }
                    Ok(None) => {
                        // Until a job is queued (the bell), a retry is due, or `poll` passes.
                        let next_retry = self.retries.iter().map(|r| r.due.saturating_duration_since(now)).min();
                        let wait = next_retry.map_or(poll, |d| d.min(poll));
                        if super::wait_or_stop(&rx, wait, Some((bell, seen))) {
                            return;
                        }
                    }
                    Err(e) => {
                        super::log_repeated(&mut repeats, "pipeline", &e.to_string());
                        if super::wait_or_stop(&rx, poll, None) {
                            return;
                        }
                    }
                }
            }
            if *rx.borrow() {
                return;
            }
        }
    }

    /// Queues `job_id` to try again after `wait`.
    fn schedule(&mut self, job_id: i64, again: Again, wait: Duration) {
        tracing::warn!(
            job = job_id,
            retry_in_s = wait.as_secs(),
            ?again,
            "job tries again later"
        );
        self.retries.push(Retry {
            job_id,
            again,
            due: Instant::now() + wait,
            wait,
        });
    }

    /// Tries a job again; another fault doubles its wait.
    fn retry(&mut self, retry: Retry) {
        let Retry {
            job_id, again, wait, ..
        } = retry;
        let next = (wait * 2).min(RETRY_MAX);
        let db = self.prep.db.clone();
        match again {
            Again::Run => match db.job(job_id) {
                Ok(Some(job)) => {
                    if let Err(e) = db.count_attempt(job_id) {
                        tracing::debug!(job = job_id, "attempt not counted: {e}");
                    }
                    let begun = self.prep.begin(job, next);
                    self.complete(begun, false);
                }
                Ok(None) => tracing::warn!(job = job_id, "job to run again is gone"),
                Err(e) => {
                    tracing::warn!(job = job_id, "cannot read the job to run again: {e}");
                    self.schedule(job_id, Again::Run, next);
                }
            },
            Again::RecordFailure(failure) => match db.fail_job(job_id, &failure) {
                Ok(ahead) => {
                    tracing::info!(job = job_id, "job failure recorded");
                    warn_failed_ahead(job_id, ahead);
                }
                Err(e) => {
                    tracing::warn!(job = job_id, "cannot record the failure: {e}");
                    self.schedule(job_id, Again::RecordFailure(failure), next);
                }
            },
        }
    }

    /// Runs a begun job's model and outputs and records how it ended (scheduling another try
    /// when that is needed). With `prefetch`, the next waiting job is claimed and prepared on a
    /// second thread meanwhile, and returned.
    fn complete(&mut self, begun: Begun, prefetch: bool) -> Option<Begun> {
        let Begun {
            job,
            out,
            start,
            mut options,
            retry_wait,
            prepared,
        } = begun;
        let (again, next) = match prepared {
            Err(error) => (self.prep.settle(&self.metrics, &job, &out, start, Err(error)), None),
            Ok(prepared) => {
                // The job this one supersedes ran before it: its SR is known only now.
                options.report.predecessor = job.supersedes.and_then(|id| self.prep.predecessor_sr(id));
                let (prep, ensemble, metrics) = (&self.prep, &mut self.ensemble, &self.metrics);
                std::thread::scope(|scope| {
                    let next = prefetch.then(|| scope.spawn(|| prep.claim_next()));
                    let ran = prep.finish(&job, &out, &options, prepared, ensemble);
                    // Recorded at once, not after the next job's preparation.
                    let again = prep.settle(metrics, &job, &out, start, ran);
                    let next = next.and_then(|handle| match handle.join() {
                        Ok(next) => next,
                        Err(_) => {
                            tracing::error!("the thread preparing the next job panicked; its job waits for a restart");
                            None
                        }
                    });
                    (again, next)
                })
            }
        };
        if let Some(again) = again {
            self.schedule(job.id, again, retry_wait);
        }
        next
    }
}

impl Prep {
    /// Records how a job ended; `Some` when that needs another try.
    fn settle(
        &self,
        metrics: &Metrics,
        job: &JobRow,
        out: &Path,
        start: Instant,
        ran: Result<ResultSummary, JobError>,
    ) -> Option<Again> {
        let db = &self.db;
        match ran {
            Ok(summary) => {
                // The outputs on disk for good before their deliveries are recorded.
                if let Err(source) = File::open(out).and_then(|d| rustix::fs::syncfs(d).map_err(Into::into)) {
                    tracing::error!(job = job.id, "cannot sync the job's results: {source}");
                    return Some(Again::Run);
                }
                let deliveries = deliveries(&self.settings, job, &summary, out);
                match db.report_job(job.id, out, &deliveries) {
                    Ok(Some(settled)) => super::outbox::observe_settled(metrics, &settled),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(job = job.id, "cannot record the job's results: {e}");
                        return Some(Again::Run);
                    }
                }
                let t = &summary.timings_ms;
                for (stage, ms) in [
                    ("assemble", t.assemble),
                    ("preprocess", t.preprocess),
                    ("infer", t.infer),
                    ("explain", t.explain),
                    ("report", t.key_image + t.sc + t.pm + t.seg + t.sr),
                ] {
                    metrics.observe_stage(stage, ms / 1000.0);
                }
                tracing::info!(
                    job = job.id,
                    probability = summary.probability,
                    label = %summary.label,
                    deliveries = deliveries.len(),
                    "job reported in {:.1} s", start.elapsed().as_secs_f64()
                );
                None
            }
            Err(error) if error.is_transient() => {
                let failure = error.failure();
                tracing::error!(job = job.id, stage = %failure.stage, "cannot write the job's results: {}", failure.message);
                Some(Again::Run)
            }
            Err(error) => {
                let failure = error.failure();
                tracing::error!(
                    job = job.id,
                    stage = %failure.stage,
                    series_uid = failure.series_uid.as_deref().unwrap_or("-"),
                    "job failed: {}", failure.message
                );
                match db.fail_job(job.id, &failure) {
                    Ok(ahead) => {
                        warn_failed_ahead(job.id, ahead);
                        None
                    }
                    Err(e) => {
                        tracing::error!(job = job.id, "cannot record the failure: {e}");
                        Some(Again::RecordFailure(failure))
                    }
                }
            }
        }
    }

    /// Claims the oldest waiting job, if any, and prepares it.
    fn claim_next(&self) -> Option<Begun> {
        match self.db.claim_job() {
            Ok(job) => job.map(|job| self.begin(job, RETRY_FIRST)),
            Err(e) => {
                tracing::warn!("cannot claim the next job (it is taken after this one): {e}");
                None
            }
        }
    }

    /// Starts a claimed job: clears or reads back what an earlier attempt left, then assembles
    /// and preprocesses its series. A panic on the way fails the job instead of the thread.
    fn begin(&self, job: JobRow, retry_wait: Duration) -> Begun {
        let start = Instant::now();
        let out = super::results_dir(&self.settings.node.data_dir).join(format!("job-{}", job.id));
        tracing::info!(job = job.id, study_uid = %job.study_uid, attempt = job.attempts, "job started");
        let mut options = self.options.clone();
        let prepared = contain_panic(|| self.prepare(&job, &out, start, &mut options)).unwrap_or_else(|message| {
            Err(JobError {
                job_id: job.id,
                series_uid: job.series.first().cloned(),
                kind: JobErrorKind::Panicked {
                    stage: "prepare",
                    message,
                },
            })
        });
        Begun {
            job,
            out,
            start,
            options,
            retry_wait,
            prepared,
        }
    }

    fn prepare(&self, job: &JobRow, out: &Path, start: Instant, options: &mut Options) -> Result<Prepared, JobError> {
        let fail = |kind: JobErrorKind| JobError {
            job_id: job.id,
            series_uid: job.series.first().cloned(),
            kind,
        };
        // Outputs of an attempt cut short by a crash are discarded: they were never delivered.
        // Unless its SR went ahead: then this attempt must make what that SR names, for the
        // same decision (the job's key gives the same UIDs), and leaves what went ahead as it
        // was sent; the other files are replaced whole (the outbox may be reading one).
        let mut sent_ahead = None;
        if !self.db.job_deliveries(job.id).map_err(|e| fail(e.into()))?.is_empty() {
            let ahead = report::SentAhead::read(out).map_err(|e| fail(JobErrorKind::SentAhead(Box::new(e))))?;
            sent_ahead = Some(ahead);
        } else if out.exists() {
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
        options.uid_key = job.uid_key;
        options.report.sent_ahead = sent_ahead;
        // The stage running now, for a panic's failure record.
        let running = std::cell::Cell::new("assemble");
        let mut on_stage = |stage: Stage<'_>| {
            if let Stage::Assembled = stage {
                running.set("preprocess");
                self.record_state(job.id, JobState::Assembled);
            }
        };
        let prepared = contain_panic(|| pipeline::prepare_series(&job.inputs, &self.manifest, start, &mut on_stage))
            .map_err(|message| {
                fail(JobErrorKind::Panicked {
                    stage: running.get(),
                    message,
                })
            })?;
        prepared.map_err(|e| pipeline_failure(job, e))
    }

    /// Infer, explain and report on a prepared job.
    fn finish(
        &self,
        job: &JobRow,
        out: &Path,
        options: &Options,
        prepared: Prepared,
        ensemble: &mut Ensemble,
    ) -> Result<ResultSummary, JobError> {
        let (db, id) = (&self.db, job.id);
        let running = std::cell::Cell::new("infer");
        let mut on_stage = |stage: Stage<'_>| match stage {
            Stage::Assembled => {}
            Stage::Inferred => {
                running.set("report");
                self.record_state(id, JobState::Inferred);
            }
            Stage::Decided(summary) => {
                // The decision goes out while the other outputs are made; on disk for good
                // before the outbox is told.
                let ahead = deliveries(&self.settings, job, summary, out);
                let files = ahead.iter().map(|(_, f)| f.clone()).chain([out.join("result.json")]);
                let queued = sync_files(files, out)
                    .map_err(|e| e.to_string())
                    .and_then(|()| db.queue_deliveries(id, out, &ahead).map_err(|e| e.to_string()));
                if let Err(e) = queued {
                    tracing::warn!(job = id, "cannot queue the SR ahead (it goes with the rest): {e}");
                }
            }
        };
        let ran = contain_panic(|| pipeline::finish_series(prepared, ensemble, out, options, &mut on_stage)).map_err(
            |message| JobError {
                job_id: id,
                series_uid: job.series.first().cloned(),
                kind: JobErrorKind::Panicked {
                    stage: running.get(),
                    message,
                },
            },
        )?;
        ran.map_err(|e| pipeline_failure(job, e))
    }

    fn record_state(&self, id: i64, state: JobState) {
        match self.db.set_state(id, state, None) {
            Ok(()) => tracing::info!(job = id, state = %state.as_str(), "job state"),
            Err(e) => tracing::warn!(job = id, "cannot record state {state:?}: {e}"),
        }
    }

    /// The SR of the job this one supersedes, when it was made; a result that cannot be read is
    /// logged and the new SR goes out without the reference.
    fn predecessor_sr(&self, job_id: i64) -> Option<InstanceRef> {
        let job = match self.db.job(job_id) {
            Ok(job) => job?,
            Err(e) => {
                tracing::warn!(job = job_id, "predecessor job: {e}");
                return None;
            }
        };
        let dir = job.result_dir?;
        let summary = match ResultSummary::read(&dir.join("result.json")) {
            Ok(summary) => summary,
            Err(e) => {
                tracing::warn!(job = job_id, "predecessor SR not referenced: {e}");
                return None;
            }
        };
        let path = dir.join(summary.sr_file?);
        // A failed job's SR (sent ahead of its other outputs) is a predecessor only if it
        // reached a destination.
        if job.state == JobState::Failed {
            let delivered = self.db.job_deliveries(job_id).is_ok_and(|rows| {
                rows.iter()
                    .any(|r| r.path == path && r.state == DeliveryState::Delivered)
            });
            if !delivered {
                return None;
            }
        }
        match OpenFileOptions::new().read_until(tags::PIXEL_DATA).open_file(&path) {
            Ok(header) => Some(InstanceRef::of(&header)),
            Err(e) => {
                tracing::warn!(job = job_id, path = %path.display(), "predecessor SR not referenced: {e}");
                None
            }
        }
    }
}

/// A pipeline error as the job's failure, naming the series the stage was on when it says.
fn pipeline_failure(job: &JobRow, e: PipelineError) -> JobError {
    let series_uid = e
        .series_uid()
        .map(str::to_owned)
        .or_else(|| job.series.first().cloned());
    JobError {
        job_id: job.id,
        series_uid,
        kind: JobErrorKind::Pipeline(Box::new(e)),
    }
}

/// Makes `files` and the directories from theirs up to `root`'s parent durable (fsync each):
/// the few files sent ahead, without waiting for the rest of the volume.
fn sync_files(files: impl IntoIterator<Item = PathBuf>, root: &Path) -> std::io::Result<()> {
    let mut dirs = std::collections::BTreeSet::new();
    for file in files {
        File::open(&file)?.sync_all()?;
        let mut dir = file.parent();
        while let Some(d) = dir {
            dirs.insert(d.to_owned());
            if Some(d) == root.parent() {
                break;
            }
            dir = d.parent();
        }
    }
    for dir in dirs {
        File::open(&dir)?.sync_all()?;
    }
    Ok(())
}

/// Says what a failed job had sent ahead: an SR already delivered names outputs that will not
/// come (an operator reruns the job; its SR lists the delivered one as predecessor).
fn warn_failed_ahead(job_id: i64, ahead: FailedAhead) {
    if ahead.delivered > 0 {
        tracing::error!(
            job = job_id,
            delivered = ahead.delivered,
            withdrawn = ahead.withdrawn,
            "the job failed after its SR was delivered: that SR references outputs that were not made; rerun the job"
        );
    } else if ahead.withdrawn > 0 {
        tracing::warn!(
            job = job_id,
            withdrawn = ahead.withdrawn,
            "the job failed: its SR was not sent"
        );
    }
}

/// What the outbox sends for a job: every DICOM output in `summary` to each of its
/// destinations, then the notification documents to the endpoints that want this decision.
fn deliveries(settings: &Settings, job: &JobRow, summary: &ResultSummary, out: &Path) -> Vec<(String, PathBuf)> {
    let mut deliveries: Vec<(String, PathBuf)> = Vec::new();
    for destination in settings.destinations_for(&job.calling_ae) {
        deliveries.extend(summary.dicom_files().map(|f| (destination.clone(), out.join(f))));
    }
    for endpoint in settings.notify.endpoints.iter().filter(|e| e.wants(summary.suspected)) {
        let file = match endpoint.kind {
            EndpointKind::Fhir => &summary.fhir_file,
            EndpointKind::Webhook => &summary.webhook_file,
        };
        if let Some(file) = file {
            deliveries.push((endpoint.name.clone(), out.join(file)));
        }
    }
    deliveries
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
    /// The job database could not say what the job had sent ahead: tried again.
    #[error("prepare: {0}")]
    Database(#[from] crate::spool::db::DbError),
    /// What an earlier attempt sent ahead (its summary and SR) cannot be read back, so this
    /// attempt cannot make the outputs that SR names.
    #[error("report: what the interrupted attempt sent ahead cannot be read: {0}")]
    SentAhead(Box<report::ReportError>),
    /// The job row has no chosen series (made by an older version of the node).
    #[error("prepare: the job records no instance files for its series; send the study again")]
    NoInputs,
    /// A stage panicked: a bug of the node, whatever the input. The job fails with the message
    /// and the worker goes on with the next job.
    #[error("{stage}: internal error (please report it): {message}")]
    Panicked { stage: &'static str, message: String },
}

impl JobError {
    /// Whether the job failed for the node's own volume rather than its input: the outputs of
    /// an earlier attempt could not be removed, or the results could not be written (disk full,
    /// a results directory that is missing, read-only or not a directory). Such a job runs again.
    pub fn is_transient(&self) -> bool {
        match &self.kind {
            JobErrorKind::Io { .. } | JobErrorKind::Database(_) => true,
            JobErrorKind::Pipeline(e) => matches!(**e, PipelineError::Report(_)) && caused_by_io(&**e),
            JobErrorKind::NoInputs | JobErrorKind::Panicked { .. } | JobErrorKind::SentAhead(_) => false,
        }
    }

    /// The stage name stored with the job.
    pub fn stage(&self) -> &'static str {
        match &self.kind {
            JobErrorKind::Pipeline(e) => e.stage(),
            JobErrorKind::Io { .. } | JobErrorKind::Database(_) | JobErrorKind::NoInputs => "prepare",
            JobErrorKind::SentAhead(_) => "report",
            JobErrorKind::Panicked { stage, .. } => stage,
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

/// Runs `f`; a panic inside it comes back as its message instead of unwinding further, so that
/// one job's bug does not stop the worker thread (the panic hook has logged it already).
fn contain_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned())
    })
}

/// Whether an I/O error is somewhere in `e`'s chain.
fn caused_by_io(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.is::<std::io::Error>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// The pipeline options the configuration asks for.
fn options(config: &Settings) -> Options {
    Options {
        explain: config.pipeline.explain,
        report: config.report_options(),
        device: report::Device {
            device_uid: config.node.device_uid.clone(),
            institution_name: config.node.institution_name.clone(),
            ..report::Device::default()
        },
        uid_root: config.node.uid_root.clone(),
        ..Options::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::ReportError;

    fn job_error(kind: JobErrorKind) -> JobError {
        JobError {
            job_id: 1,
            series_uid: None,
            kind,
        }
    }

    fn report(e: ReportError) -> JobErrorKind {
        JobErrorKind::Pipeline(Box::new(PipelineError::Report(e)))
    }

    #[test]
    fn only_faults_of_writing_results_run_again() {
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert!(
            job_error(report(ReportError::Io {
                path: "results/job-1".into(),
                source: full,
            }))
            .is_transient()
        );
        let not_a_dir = std::io::Error::from(std::io::ErrorKind::NotADirectory);
        assert!(
            job_error(JobErrorKind::Io {
                path: "results/job-1".into(),
                source: not_a_dir,
            })
            .is_transient()
        );
        let bad = report(ReportError::BadValue {
            series_uid: "1.2.3".into(),
            field: "probability",
            value: "2".into(),
            rule: "must be in [0, 1]",
        });
        assert!(!job_error(bad).is_transient(), "a fault of the input runs only once");
        assert!(!job_error(JobErrorKind::NoInputs).is_transient());
    }

    /// A FLAIR series of a synthetic subject at 3 mm (small, so the test stays quick).
    fn flair_series(dir: &Path, seed: u64) -> (String, crate::tracker::routing::ChannelSeries) {
        use crate::synth::dicom::{DicomOptions, SeriesInfo, write_series};
        use crate::synth::phantom::{AcquisitionSpec, Anatomy, Contrast, Subject, SubjectSpec};
        use crate::volume::{Plane, acquisition_grid};
        let anatomy = Anatomy::load().unwrap();
        let spec = SubjectSpec {
            seed,
            lesion: None,
            mimics: 0,
        };
        let subject = Subject::sample(&anatomy, &spec).unwrap();
        let grid = acquisition_grid(Plane::Sagittal, [3.0; 3], [192.0, 225.0, 180.0], [0.0, 18.0, 10.0]).unwrap();
        let acquisition = AcquisitionSpec {
            grid,
            noise: 0.02,
            bias: 0.1,
        };
        let image = subject
            .render(&anatomy, Contrast::Flair, &acquisition, seed)
            .unwrap()
            .image;
        let info = SeriesInfo::new(seed);
        let files = write_series(&image, &info, &DicomOptions::default(), dir).unwrap();
        let series = crate::tracker::routing::ChannelSeries {
            channel: crate::package::manifest::Modality::Flair,
            series_uid: info.series_instance_uid.clone(),
            files,
            plan: None,
        };
        (info.study_instance_uid, series)
    }

    /// With jobs waiting, the next one is claimed, assembled and preprocessed while the model
    /// runs the current one, and handed back ready for the model; without prefetching, nothing
    /// more is claimed.
    #[test]
    fn the_next_waiting_job_is_prepared_while_the_model_runs() {
        let library = crate::infer::runtime::find_library(None).expect("ONNX Runtime missing: run scripts/setup.sh");
        crate::infer::runtime::init(&library).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let mut config = crate::config::Config::default();
        config.node.data_dir = tmp.path().join("data");
        config.node.model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo");
        let settings = config.validate(Path::new("(test)")).unwrap();
        std::fs::create_dir_all(&settings.node.data_dir).unwrap();
        let db = Arc::new(JobDb::open(&tmp.path().join("jobs.db")).unwrap());
        let package = crate::package::manifest::ModelPackage::load(&settings.node.model).unwrap();
        let ensemble = Ensemble::load(&package, crate::infer::Device::Cpu, 1).unwrap();
        let ids: Vec<i64> = (1..=3)
            .map(|n| {
                let (study, series) = flair_series(&tmp.path().join(format!("study-{n}")), n);
                db.create_job(&study, &[series], "MRI").unwrap()
            })
            .collect();
        let state = |id: i64| db.job(id).unwrap().unwrap().state;
        let mut worker = Worker::new(&settings, db.clone(), ensemble, Arc::new(Metrics::new()));

        let first = db.claim_job().unwrap().unwrap();
        assert_eq!(first.id, ids[0]);
        let begun = worker.prep.begin(first, RETRY_FIRST);
        let next = worker
            .complete(begun, true)
            .expect("the second job comes back prepared");
        assert_eq!(next.job.id, ids[1]);
        assert!(next.prepared.is_ok(), "{:?}", next.prepared.as_ref().err());
        assert_eq!(
            state(ids[0]),
            JobState::Delivered,
            "no destinations: done once reported"
        );
        assert_eq!(state(ids[1]), JobState::Assembled, "prepared, the model not run yet");
        assert_eq!(state(ids[2]), JobState::Received, "only one job is prepared ahead");

        assert!(worker.complete(next, false).is_none());
        assert_eq!(state(ids[1]), JobState::Delivered);
        let third = db.claim_job().unwrap().expect("the third job was never claimed");
        assert_eq!((third.id, third.attempts), (ids[2], 1));
        let result = super::super::results_dir(&settings.node.data_dir).join(format!("job-{}/result.json", ids[1]));
        let summary = ResultSummary::read(&result).unwrap();
        let t = &summary.timings_ms;
        assert!(t.assemble > 0.0 && t.preprocess > 0.0 && t.infer > 0.0, "{t:?}");
        assert!(t.total >= t.assemble + t.preprocess + t.wait + t.infer, "{t:?}");
    }

    #[test]
    fn a_panic_becomes_a_failure_with_its_stage_and_message() {
        assert_eq!(contain_panic(|| 7), Ok(7));
        let index = 9;
        let message = contain_panic(|| -> u8 { panic!("slice {index} out of range") }).unwrap_err();
        assert_eq!(message, "slice 9 out of range");
        assert_eq!(contain_panic(|| -> u8 { panic!("static") }).unwrap_err(), "static");
        let failed = job_error(JobErrorKind::Panicked {
            stage: "infer",
            message,
        });
        assert!(!failed.is_transient(), "a bug is not retried");
        let failure = failed.failure();
        assert_eq!(failure.stage, "infer");
        assert!(
            failure.message.contains("internal error") && failure.message.contains("slice 9"),
            "{failure:?}"
        );
    }
}
