//! Stable-age completion and job creation.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::assemble::{self, AssembleError, InstanceHeader, Plan, Tolerances};
use crate::package::manifest::Modality;
use crate::spool::db::{DbError, JobDb, JobFailure, SeriesRow, StoredHeader};
use crate::tracker::routing::{self, Candidate, ChannelSeries, Router, SeriesFacts};

/// `[tracker]`: when a series counts as complete.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackerConfig {
    /// Seconds without a new instance after which a series is complete (Orthanc's StableAge).
    pub stable_age_s: f64,
    /// For models with several channels: seconds to wait for the study's missing channels
    /// after its first channel is complete; then the job fails with the reason.
    pub channel_wait_s: f64,
    /// Seconds between checks.
    pub poll_s: f64,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            stable_age_s: 60.0,
            channel_wait_s: 600.0,
            poll_s: 1.0,
        }
    }
}

/// A bad `[tracker]` value; the message names the key.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("[tracker] {key} = {value}: {rule}")]
pub struct TrackerConfigError {
    /// The offending key.
    pub key: &'static str,
    /// Its value.
    pub value: f64,
    /// The rule it breaks.
    pub rule: &'static str,
}

impl TrackerConfig {
    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), TrackerConfigError> {
        for (key, value) in [
            ("stable_age_s", self.stable_age_s),
            ("channel_wait_s", self.channel_wait_s),
            ("poll_s", self.poll_s),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(TrackerConfigError {
                    key,
                    value,
                    rule: "must be a number of seconds ≥ 0",
                });
            }
        }
        if self.poll_s < 0.05 {
            return Err(TrackerConfigError {
                key: "poll_s",
                value: self.poll_s,
                rule: "must be at least 0.05",
            });
        }
        Ok(())
    }
}

/// Why a tracker pass failed (the series stay unhandled and are retried next pass).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct TrackerError(#[from] DbError);

/// What one [`Tracker::tick`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tick {
    /// Series found complete (stable) in this pass.
    pub completed: usize,
    /// Jobs created.
    pub jobs: Vec<i64>,
}

/// Turns stable series into jobs for a model with the given channels.
pub struct Tracker {
    db: Arc<JobDb>,
    router: Router,
    channels: Vec<Modality>,
    config: TrackerConfig,
    /// Studies with some channels complete, waiting for the others: deadline per study.
    waiting: BTreeMap<String, f64>,
    /// Studies found at start with routed series and no job: a kill between handling their
    /// last series and creating the job leaves them so; they get the job on their first pass.
    recovered: std::collections::BTreeSet<String>,
}

impl Tracker {
    /// A tracker over `db` for a model taking `channels` (in order). Studies that were waiting
    /// for a channel before a restart wait again, a full `channel_wait_s` from `now`.
    pub fn new(
        db: Arc<JobDb>,
        router: Router,
        channels: Vec<Modality>,
        config: TrackerConfig,
        now: f64,
    ) -> Result<Self, TrackerError> {
        let recovered: std::collections::BTreeSet<String> = db.studies_without_job()?.into_iter().collect();
        let waiting = recovered
            .iter()
            .map(|study| (study.clone(), now + config.channel_wait_s))
            .collect();
        Ok(Self {
            db,
            router,
            channels,
            config,
            waiting,
            recovered,
        })
    }

    /// One pass at time `now`: routes newly stable series, creates jobs for complete studies
    /// and fails studies whose channel wait ran out.
    pub fn tick(&mut self, now: f64) -> Result<Tick, TrackerError> {
        let mut studies = Vec::new();
        let stable = self.db.stable_series(now - self.config.stable_age_s)?;
        let completed = stable.len();
        for series in stable {
            let (routed, reason) = self.route(&series)?;
            self.db.mark_handled(
                &series.series_uid,
                series.generation,
                routed.as_ref().map(|(c, plan)| (c.to_string(), plan)),
                &reason,
            )?;
            if routed.is_some() {
                self.waiting
                    .entry(series.study_uid.clone())
                    .or_insert(now + self.config.channel_wait_s);
                studies.push(series.study_uid);
            }
        }
        let mut jobs = Vec::new();
        let waiting: Vec<(String, f64)> = self.waiting.iter().map(|(s, d)| (s.clone(), *d)).collect();
        for (study, deadline) in waiting {
            if let Some(id) = self.try_job(&study, now >= deadline, studies.contains(&study))? {
                jobs.push(id);
            }
        }
        Ok(Tick { completed, jobs })
    }

    /// When the next pass has something to do: the earliest moment an unhandled series becomes
    /// stable, or a study's channel wait runs out. `None`: nothing is pending (a new instance
    /// rings the database's instance bell).
    pub fn next_due(&self) -> Result<Option<f64>, TrackerError> {
        let stable = self.db.oldest_unhandled_at()?.map(|t| t + self.config.stable_age_s);
        let wait = self.waiting.values().copied().reduce(f64::min);
        Ok(match (stable, wait) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// The channel a series feeds and its plan, or `None`; and why (also logged). Plans from the
    /// header facts ingest stored; only instances stored before those were recorded are read.
    fn route(&self, series: &SeriesRow) -> Result<(Option<(Modality, Plan)>, String), TrackerError> {
        let instances = self.db.series_instances(&series.series_uid)?;
        let headers: Result<Vec<InstanceHeader>, String> = instances
            .into_iter()
            .map(|i| match i.header {
                Some(StoredHeader::Usable(h)) => Ok(*h),
                Some(StoredHeader::Unusable { reason }) => Err(reason),
                None => InstanceHeader::read_file(&i.path).map_err(|e| e.to_string()),
            })
            .collect();
        let decided = headers
            .and_then(|h| assemble::plan_series(&h, &Tolerances::default()).map_err(|e: AssembleError| e.to_string()));
        Ok(match decided {
            Ok(plan) => {
                let decision = self.router.route(&SeriesFacts {
                    meta: &plan.meta,
                    slices: plan.shape()[2],
                    slice_step_mm: Some(plan.ordered.slice_step_mm),
                });
                tracing::info!(
                    series_uid = %series.series_uid,
                    instances = series.instances,
                    channel = %decision.channel.map_or_else(|| "none".to_owned(), |c| c.to_string()),
                    "series complete: {}", decision.reason
                );
                match decision.channel {
                    Some(c) if self.channels.contains(&c) => (Some((c, plan)), decision.reason),
                    Some(c) => (None, format!("{}; the model does not take {c}", decision.reason)),
                    None => (None, decision.reason),
                }
            }
            Err(e) => {
                tracing::warn!(series_uid = %series.series_uid, "series complete but not usable: {e}");
                (None, format!("not usable: {e}"))
            }
        })
    }

    /// Creates the study's job when every channel is there (or fails it when `expired`).
    /// `touched`: a series of the study was handled in this pass.
    fn try_job(&mut self, study: &str, expired: bool, touched: bool) -> Result<Option<i64>, TrackerError> {
        let rows = self.db.channel_series(study)?;
        let mut chosen = Vec::new();
        let mut missing = Vec::new();
        let mut calling_ae = String::new();
        for &channel in &self.channels {
            let name = channel.to_string();
            let candidates = rows
                .iter()
                .filter(|r| r.channel.as_deref() == Some(name.as_str()))
                .map(|r| Candidate {
                    series_uid: r.series_uid.clone(),
                    slices: r.slices.unwrap_or(0),
                    received_at: r.last_received_at,
                    item: r.calling_ae.clone(),
                })
                .collect();
            match routing::pick(candidates) {
                Some(c) => {
                    // Series routed before plans were stored have none: the pipeline plans them.
                    let plan = self.db.series_plan(&c.series_uid)?;
                    let files = match &plan {
                        Some(plan) => plan.files(),
                        None => self.db.series_files(&c.series_uid)?,
                    };
                    chosen.push(ChannelSeries {
                        channel,
                        series_uid: c.series_uid,
                        files,
                        plan,
                    });
                    calling_ae = c.item;
                }
                None => missing.push(name),
            }
        }
        if missing.is_empty() {
            self.waiting.remove(study);
            let recovered = self.recovered.remove(study);
            if !touched && !recovered {
                return Ok(None);
            }
            let id = self.db.create_job(study, &chosen, &calling_ae)?;
            let series: Vec<&str> = chosen.iter().map(|c| c.series_uid.as_str()).collect();
            tracing::info!(job = id, study_uid = study, series = %series.join(","), "job created");
            return Ok(Some(id));
        }
        if expired {
            self.waiting.remove(study);
            self.recovered.remove(study);
            let reason = format!(
                "model channel(s) {} did not arrive within {} s of the study's other series",
                missing.join(", "),
                self.config.channel_wait_s
            );
            let failure = JobFailure {
                stage: "route".into(),
                series_uid: chosen.first().map(|c| c.series_uid.clone()),
                message: reason.clone(),
            };
            let id = self.db.create_failed_job(study, &chosen, &calling_ae, &failure)?;
            tracing::warn!(job = id, study_uid = study, "{reason}");
            return Ok(Some(id));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests;
