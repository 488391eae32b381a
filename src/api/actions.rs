//! What an operator can do from the console or the JSON API: resend dead letters, re-run a
//! job, test a destination with C-ECHO. Both front ends call these, so they behave alike; each
//! is logged at info (ids and destination names only).

use std::sync::Arc;

use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::http::StatusCode;

use super::auth::Viewer;
use super::{ApiError, ApiState, blocking, job_id};
use crate::deliver::{self, Destination};
use crate::spool::db::{DeliveryState, JobDb, Requeue, Rerun};

/// An action on the database for the id in the request path, by the viewer, on the blocking
/// pool (the console and the JSON API differ only in how they answer); returns the id and what
/// the action returned.
pub(super) async fn on_id<T: Send + 'static>(
    state: &ApiState,
    viewer: &Viewer,
    path: Result<Path<i64>, PathRejection>,
    action: fn(&JobDb, i64, Option<&str>) -> Result<T, ApiError>,
) -> Result<(i64, T), ApiError> {
    let id = job_id(path)?;
    let (db, user) = (state.db.clone(), viewer.user.clone());
    blocking(move || action(&db, id, user.as_deref()).map(|t| (id, t))).await
}

/// Puts dead letter `id` back in the outbox; returns its job.
pub fn resend(db: &JobDb, id: i64, user: Option<&str>) -> Result<i64, ApiError> {
    match db.resend_delivery(id).map_err(ApiError::internal)? {
        Requeue::Requeued { job_id } => {
            tracing::info!(
                delivery = id,
                job = job_id,
                user = user.unwrap_or("-"),
                "dead letter resent"
            );
            Ok(job_id)
        }
        Requeue::NotDead(state) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "delivery {id} is {}, not dead: only dead letters are resent",
                state.as_str()
            ),
        )),
        Requeue::NoSuchDelivery => Err(ApiError::new(StatusCode::NOT_FOUND, format!("no delivery {id}"))),
    }
}

/// Puts every dead letter of job `job_id` back in the outbox; returns how many.
pub fn resend_job(db: &JobDb, job_id: i64, user: Option<&str>) -> Result<usize, ApiError> {
    db.job(job_id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::job_not_found(job_id))?;
    let dead: Vec<i64> = db
        .job_deliveries(job_id)
        .map_err(ApiError::internal)?
        .into_iter()
        .filter(|d| d.state == DeliveryState::Dead)
        .map(|d| d.id)
        .collect();
    if dead.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("job {job_id} has no dead letters"),
        ));
    }
    for id in &dead {
        resend(db, *id, user)?;
    }
    Ok(dead.len())
}

/// Runs job `id` again on the same stored series; returns the new job.
pub fn rerun(db: &JobDb, id: i64, user: Option<&str>) -> Result<i64, ApiError> {
    if let Some(job) = db.job(id).map_err(ApiError::internal)?
        && let Some(gone) = job.inputs.iter().flat_map(|c| &c.files).find(|f| !f.is_file())
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "job {id} cannot run again: its input {} is gone (retention removes received instances)",
                gone.display()
            ),
        ));
    }
    match db.rerun_job(id).map_err(ApiError::internal)? {
        Rerun::Created(new) => {
            tracing::info!(job = id, new_job = new, user = user.unwrap_or("-"), "job re-run");
            Ok(new)
        }
        Rerun::NotFinished(state) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("job {id} is {}: it can run again once it has finished", state.as_str()),
        )),
        Rerun::NoInputs => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("job {id} has no input series (it failed before routing)"),
        )),
        Rerun::NoSuchJob => Err(ApiError::job_not_found(id)),
    }
}

/// The outcome of a C-ECHO to a destination, as both front ends show it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EchoResult {
    /// The destination's name.
    pub destination: String,
    /// Whether it answered with success.
    pub success: bool,
    /// Milliseconds to the answer (success only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ms: Option<f64>,
    /// Why it failed, saying whether the outbox would retry such a fault (transient).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// C-ECHO to the destination called `name`; `None` when there is none by that name.
pub async fn echo(destinations: &Arc<[Destination]>, node_ae: &str, name: &str) -> Option<EchoResult> {
    let dest = destinations.iter().find(|d| d.name == name)?;
    let result = deliver::echo(dest, node_ae).await;
    let echo = match result {
        Ok(ok) => EchoResult {
            destination: name.to_owned(),
            success: true,
            ms: Some(ok.elapsed.as_secs_f64() * 1000.0),
            error: None,
        },
        Err(fault) => EchoResult {
            destination: name.to_owned(),
            success: false,
            ms: None,
            error: Some(fault.to_string()),
        },
    };
    tracing::info!(destination = %name, success = echo.success, "C-ECHO from the console or API");
    Some(echo)
}

/// Which studies to fetch from a PACS.
#[derive(Clone, Debug)]
pub enum RetrieveTarget {
    /// One study by its Study Instance UID.
    Study(String),
    /// Every study of a patient on a date (or a `YYYYMMDD-YYYYMMDD` range), found by C-FIND.
    Patient { patient_id: String, study_date: String },
}

/// The outcome of asking a destination (a PACS) to send studies to the node, as both front
/// ends show it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RetrieveResult {
    /// The PACS's name.
    pub source: String,
    /// The studies asked for (found by the query, or the one given).
    pub studies: Vec<String>,
    /// Whether every move was reported done (all or some instances sent).
    pub success: bool,
    /// Instances the PACS sent (and the node acknowledged), over all studies.
    pub completed: u32,
    /// Instances the PACS failed to send.
    pub failed: u32,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// C-MOVE of the target's studies from the destination called `source` to this node; `None`
/// when there is no destination by that name. The instances arrive through the node's own SCP
/// and become jobs like pushed ones.
pub async fn retrieve(
    destinations: &Arc<[Destination]>,
    node_ae: &str,
    source: &str,
    target: &RetrieveTarget,
    user: Option<&str>,
) -> Option<RetrieveResult> {
    let dest = destinations.iter().find(|d| d.name == source)?;
    let mut result = RetrieveResult {
        source: source.to_owned(),
        studies: Vec::new(),
        success: false,
        completed: 0,
        failed: 0,
        error: None,
    };
    let studies = match target {
        RetrieveTarget::Study(uid) => Ok(vec![uid.trim().to_owned()]),
        RetrieveTarget::Patient { patient_id, study_date } => {
            deliver::find_studies(dest, node_ae, patient_id.trim(), study_date.trim()).await
        }
    };
    match studies {
        Err(fault) => result.error = Some(fault.to_string()),
        Ok(studies) if studies.is_empty() => result.error = Some("no study matches".into()),
        Ok(studies) => {
            result.success = true;
            for uid in studies {
                match deliver::retrieve(dest, node_ae, &uid).await {
                    Ok(r) => {
                        result.completed += u32::from(r.completed);
                        result.failed += u32::from(r.failed);
                    }
                    Err(fault) => {
                        result.success = false;
                        result.error = Some(fault.to_string());
                    }
                }
                result.studies.push(uid.chars().take(64).collect());
                if !result.success {
                    break;
                }
            }
        }
    }
    tracing::info!(
        source = %source,
        studies = result.studies.len(),
        success = result.success,
        completed = result.completed,
        failed = result.failed,
        user = user.unwrap_or("-"),
        "study retrieval asked for"
    );
    Some(result)
}
