//! The outbox: sends due deliveries, one association per destination and pass (one POST per
//! notification), and records each file's outcome. Transient faults are retried with
//! exponential backoff, persisted in the job database (so retries survive restarts); permanent
//! faults and exhausted budgets go to the dead letters, visible in the API.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::api::{DeliveryOutcome, Metrics};
use crate::audit::{AuditTrail, Direction, InstanceIdentity, Peer, Transfers};
use crate::config::Settings;
use crate::deliver::{self, DeliveryFault, Destination, FaultKind};
use crate::spool::db::{self, DeliveryRow, DeliveryState, JobDb, JobSettled, JobState};

pub(super) async fn run(
    db: Arc<JobDb>,
    config: Settings,
    metrics: Arc<Metrics>,
    audit: AuditTrail,
    mut rx: watch::Receiver<bool>,
) {
    let poll = Duration::from_secs_f64(config.outbox.poll_s);
    let mut repeats = super::repeats::Repeats::new(super::REPEATS_EVERY);
    loop {
        let due = {
            let db = db.clone();
            tokio::task::spawn_blocking(move || db.due_deliveries(db::now())).await
        };
        match due {
            Ok(Ok(due)) => {
                if let Some(times) = repeats.recovered() {
                    tracing::info!(failed_polls = times, "outbox: recovered");
                }
                if !due.is_empty() {
                    pass(&db, &config, &metrics, &audit, due).await;
                }
            }
            Ok(Err(e)) => super::log_repeated(&mut repeats, "outbox", &e.to_string()),
            Err(e) => super::log_repeated(&mut repeats, "outbox", &e.to_string()),
        }
        // Deliveries queued by the worker or put back by an operator ring the bell; retries
        // that come due are found by the poll.
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = db.bells().deliveries.rung() => {}
            _ = rx.changed() => {}
        }
        if *rx.borrow() {
            return;
        }
    }
}

async fn pass(db: &Arc<JobDb>, config: &Settings, metrics: &Metrics, audit: &AuditTrail, due: Vec<DeliveryRow>) {
    let mut by_destination: BTreeMap<String, Vec<DeliveryRow>> = BTreeMap::new();
    for row in due {
        by_destination.entry(row.destination.clone()).or_default().push(row);
    }
    for (name, rows) in by_destination {
        if let Some(endpoint) = config.notify.endpoint(&name) {
            for row in &rows {
                let start = Instant::now();
                let result = deliver::post(endpoint, &row.path).await.map(drop);
                metrics.observe_stage("deliver", start.elapsed().as_secs_f64());
                record(db, config, metrics, &name, row, result).await;
            }
            continue;
        }
        let Some(dest) = config.destinations.iter().find(|d| d.name == name) else {
            for row in &rows {
                let reason = format!("destination {name:?} is no longer configured");
                settle(db, metrics, &name, row, DeliveryState::Dead, 0.0, Some(&reason)).await;
            }
            continue;
        };
        let files: Vec<PathBuf> = rows.iter().map(|r| r.path.clone()).collect();
        let start = Instant::now();
        let outcomes = deliver::send(dest, &config.scp.config.ae_title, &files).await;
        metrics.observe_stage("deliver", start.elapsed().as_secs_f64());
        audit_sent(audit, dest, &files, &outcomes).await;
        for (i, row) in rows.iter().enumerate() {
            let result = match &outcomes {
                Ok(per_file) => per_file
                    .get(i)
                    .map(|o| o.result.clone().map(drop))
                    .unwrap_or_else(|| Ok(())),
                Err(fault) => Err(fault.clone()),
            };
            record(db, config, metrics, &name, row, result).await;
        }
    }
}

/// Settles one delivery attempt: delivered, pending again after the retry policy's wait
/// (transient fault with attempts left), or dead.
async fn record(
    db: &Arc<JobDb>,
    config: &Settings,
    metrics: &Metrics,
    name: &str,
    row: &DeliveryRow,
    result: Result<(), DeliveryFault>,
) {
    match result {
        Ok(()) => {
            tracing::info!(destination = %name, file = %row.path.display(), "delivered");
            settle(db, metrics, name, row, DeliveryState::Delivered, 0.0, None).await;
        }
        Err(fault) => {
            let attempts = u32::try_from(row.attempts + 1).unwrap_or(u32::MAX);
            let retry = fault.kind() == FaultKind::Transient && !config.outbox.retry.exhausted(attempts);
            let message = fault.to_string();
            if retry {
                let next = db::now() + config.outbox.retry.delay(attempts).as_secs_f64();
                tracing::warn!(attempt = attempts, "{message}; retrying later");
                settle(db, metrics, name, row, DeliveryState::Pending, next, Some(&message)).await;
            } else {
                let why = if fault.kind() == FaultKind::Transient {
                    format!("{message} (gave up after {attempts} attempts)")
                } else {
                    message
                };
                tracing::error!("dead letter: {why}");
                settle(db, metrics, name, row, DeliveryState::Dead, 0.0, Some(&why)).await;
            }
        }
    }
}

/// One audit message per study offered to `dest` in this pass: the files it stored, and those
/// it did not with the first reason. Nothing when the association could not be used at all.
async fn audit_sent(
    audit: &AuditTrail,
    dest: &Destination,
    files: &[PathBuf],
    outcomes: &Result<Vec<deliver::FileOutcome>, deliver::DeliveryFault>,
) {
    let Ok(per_file) = outcomes else { return };
    let results: Vec<Option<String>> = per_file
        .iter()
        .map(|o| o.result.as_ref().err().map(|fault| fault.to_string()))
        .collect();
    let files = files.to_vec();
    let read = tokio::task::spawn_blocking(move || {
        let mut transfers = Transfers::default();
        for (path, failed) in files.iter().zip(results) {
            if let Some(id) = InstanceIdentity::read_file(path) {
                match failed {
                    None => transfers.add(&id),
                    Some(why) => transfers.fail(&id, &why),
                }
            }
        }
        transfers
    })
    .await;
    if let Ok(transfers) = read {
        let peer = Peer {
            ae_title: Some(dest.ae_title.clone()),
            address: dest.host.clone(),
        };
        transfers.record(audit, Direction::Sent, &peer);
    }
}

async fn settle(
    db: &Arc<JobDb>,
    metrics: &Metrics,
    destination: &str,
    row: &DeliveryRow,
    state: DeliveryState,
    next: f64,
    error: Option<&str>,
) {
    metrics.delivery(
        destination,
        match state {
            DeliveryState::Delivered => DeliveryOutcome::Delivered,
            DeliveryState::Pending => DeliveryOutcome::Retry,
            DeliveryState::Dead => DeliveryOutcome::Dead,
        },
    );
    let db = db.clone();
    let id = row.id;
    let error = error.map(str::to_owned);
    match tokio::task::spawn_blocking(move || db.settle_delivery(id, state, next, error.as_deref())).await {
        Ok(Ok(Some(settled))) => observe_settled(metrics, &settled),
        Ok(Ok(None)) => {}
        Ok(Err(e)) => tracing::error!("outbox: {e}"),
        Err(e) => tracing::error!("outbox: {e}"),
    }
}

/// Logs a settled job, and its turnaround when it was delivered whole.
pub(super) fn observe_settled(metrics: &Metrics, settled: &JobSettled) {
    match (settled.state, settled.turnaround_s) {
        (JobState::Delivered, Some(seconds)) => {
            metrics.observe_stage("turnaround", seconds);
            tracing::info!(job = settled.job_id, turnaround_s = seconds, "job delivered");
        }
        (JobState::Delivered, None) => tracing::info!(job = settled.job_id, "job delivered"),
        (state, _) => tracing::warn!(
            job = settled.job_id,
            state = %state.as_str(),
            "job settled with dead letters"
        ),
    }
}
