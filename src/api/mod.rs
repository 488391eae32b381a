//! The node's HTTP API (axum): liveness and readiness probes, Prometheus metrics, and read-only
//! views of the job database for operators.
//!
//! | Route | Answer |
//! |---|---|
//! | `GET /healthz` | 200 `ok` while the process runs |
//! | `GET /readyz` | 200 `ready` once the node is started, the database answers and every volume keeps `[node] min_free_mb` free, else 503 with the reason |
//! | `GET /metrics` | OpenMetrics text exposition ([`Metrics`]) |
//! | `GET /jobs?limit=N` | the latest jobs, newest first (default 100, at most 1000) |
//! | `GET /jobs/{id}` | one job with its deliveries and its parsed `result.json` |
//! | `GET /jobs/{id}/preview.png` | the job's preview image |
//! | `GET /deliveries/dead` | dead letters: deliveries that will not be retried on their own |
//!
//! Errors are JSON `{ "error": "..." }` with the matching status. Database work runs on the
//! blocking pool, so a slow database never stalls the reactor and a panic there becomes a 500.

mod metrics;
mod space;

pub use metrics::{CONTENT_TYPE as METRICS_CONTENT_TYPE, DeliveryOutcome, Metrics, STAGE_BUCKETS, STAGES};
pub use space::SpaceFloor;

use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::report::ResultSummary;
use crate::spool::db::{DeliveryRow, DeliveryState, JobDb, JobFailure, JobRow, JobState};

/// Default number of jobs `/jobs` returns.
pub const DEFAULT_JOB_LIMIT: usize = 100;
/// Most jobs `/jobs` returns.
pub const MAX_JOB_LIMIT: usize = 1000;

/// `[api]`: the HTTP API.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// `IP:port` the HTTP API listens on; loopback by default (it has no authentication).
    pub bind: String,
    /// Whether the HTTP API runs at all.
    pub enabled: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            enabled: true,
        }
    }
}

/// A bad `[api]` value; the message names the key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("api.{key}: {message}")]
pub struct ApiConfigError {
    /// The offending key, e.g. `bind`.
    pub key: &'static str,
    /// What is wrong with its value.
    pub message: String,
}

impl ApiConfig {
    /// Checks every value; the first bad one is reported with its key.
    pub fn validate(&self) -> Result<(), ApiConfigError> {
        self.bind_addr().map(drop)
    }

    /// `bind` as a socket address.
    pub fn bind_addr(&self) -> Result<SocketAddr, ApiConfigError> {
        self.bind.trim().parse().map_err(|_| ApiConfigError {
            key: "bind",
            message: format!("{:?} is not an IP:port address", self.bind),
        })
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The job database.
    pub db: Arc<JobDb>,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// Set once the node has started its listeners and resumed its queues.
    pub ready: Arc<AtomicBool>,
    /// The free space readiness needs.
    pub space: SpaceFloor,
}

/// The API's routes over `state`.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/jobs", get(jobs))
        .route("/jobs/{id}", get(job))
        .route("/jobs/{id}/preview.png", get(preview))
        .route("/deliveries/dead", get(dead_letters))
        .fallback(not_found)
        .with_state(state)
}

/// Serves [`router`] on `listener` until `shutdown` turns true (or its sender is dropped), then
/// lets requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "HTTP API listening");
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            // Err: the sender is gone, nobody can ask any more; stop as well.
            let _ = shutdown.wait_for(|stop| *stop).await;
            tracing::info!("HTTP API shutting down");
        })
        .await
}

/// An error answer: status and a JSON `{ "error": message }` body.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn internal(message: impl std::fmt::Display) -> Self {
        let message = message.to_string();
        tracing::warn!(error = %message, "HTTP API request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    fn job_not_found(id: i64) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("no job {id}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(serde_json::json!({ "error": self.message }))).into_response()
    }
}

/// Runs blocking work (database, files) on the blocking pool; a panic there becomes a 500.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(ApiError::internal(format!("request handler failed: {e}"))))
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<ApiState>) -> Response {
    if !state.ready.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the node is starting or stopping",
        )
            .into_response();
    }
    let (db, space) = (state.db.clone(), state.space.clone());
    let checked = blocking(move || {
        db.instance_count().map_err(ApiError::internal)?;
        // Not logged: probes ask every few seconds; the reason is in the answer.
        space
            .check()
            .map_err(|reason| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, reason))
    })
    .await;
    match checked {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}", e.message)).into_response(),
    }
}

async fn metrics_text(State(state): State<ApiState>) -> Response {
    let ApiState { db, metrics, .. } = state;
    let text = blocking(move || {
        match db.job_counts() {
            Ok(counts) => metrics.set_job_counts(&counts),
            Err(e) => {
                tracing::warn!(error = %e, "job counts for metrics");
                metrics.set_database_down();
            }
        }
        Ok(metrics.encode())
    })
    .await;
    match text {
        Ok(text) => ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text).into_response(),
        Err(e) => e.into_response(),
    }
}

/// A job as the API shows it (the result directory stays internal).
#[derive(Debug, serde::Serialize)]
struct JobView {
    id: i64,
    study_uid: String,
    series: Vec<String>,
    calling_ae: String,
    state: JobState,
    reason: Option<String>,
    /// For a failed job: the stage and series that failed and the error chain.
    failure: Option<JobFailure>,
    supersedes: Option<i64>,
    attempts: i64,
    created_at: f64,
    updated_at: f64,
}

impl From<JobRow> for JobView {
    fn from(j: JobRow) -> Self {
        Self {
            id: j.id,
            study_uid: j.study_uid,
            series: j.series,
            calling_ae: j.calling_ae,
            state: j.state,
            reason: j.reason,
            failure: j.failure,
            supersedes: j.supersedes,
            attempts: j.attempts,
            created_at: j.created_at,
            updated_at: j.updated_at,
        }
    }
}

/// A delivery as the API shows it.
#[derive(Debug, serde::Serialize)]
struct DeliveryView {
    id: i64,
    job_id: i64,
    destination: String,
    /// File name of the result file.
    file: String,
    /// Full path of the result file on the node.
    path: PathBuf,
    state: DeliveryState,
    attempts: i64,
    last_error: Option<String>,
    /// Earliest next attempt (Unix seconds); only while pending.
    next_attempt_at: Option<f64>,
}

impl From<DeliveryRow> for DeliveryView {
    fn from(d: DeliveryRow) -> Self {
        Self {
            id: d.id,
            job_id: d.job_id,
            destination: d.destination,
            file: d
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            next_attempt_at: (d.state == DeliveryState::Pending).then_some(d.next_attempt_at),
            path: d.path,
            state: d.state,
            attempts: d.attempts,
            last_error: d.last_error,
        }
    }
}

#[derive(Debug, serde::Deserialize)]
struct JobsQuery {
    limit: Option<usize>,
}

async fn jobs(State(state): State<ApiState>, query: Result<Query<JobsQuery>, QueryRejection>) -> Response {
    let limit = match query {
        Ok(Query(q)) => q.limit.unwrap_or(DEFAULT_JOB_LIMIT).min(MAX_JOB_LIMIT),
        Err(e) => return ApiError::new(StatusCode::BAD_REQUEST, e.body_text()).into_response(),
    };
    let db = state.db.clone();
    match blocking(move || db.jobs(limit).map_err(ApiError::internal)).await {
        Ok(rows) => Json(rows.into_iter().map(JobView::from).collect::<Vec<_>>()).into_response(),
        Err(e) => e.into_response(),
    }
}

fn job_id(path: Result<Path<i64>, PathRejection>) -> Result<i64, ApiError> {
    path.map(|Path(id)| id)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))
}

/// One job with its deliveries and result.
#[derive(Debug, serde::Serialize)]
struct JobDetail {
    job: JobView,
    deliveries: Vec<DeliveryView>,
    /// Parsed `result.json`, when the job has one.
    result: Option<ResultSummary>,
    /// Why `result.json` exists but could not be read or parsed.
    #[serde(skip_serializing_if = "Option::is_none")]
    result_error: Option<String>,
    /// URL of the preview image, when the job has one.
    preview: Option<String>,
}

fn job_detail(db: &JobDb, id: i64) -> Result<JobDetail, ApiError> {
    let row = db
        .job(id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::job_not_found(id))?;
    let deliveries = db.job_deliveries(id).map_err(ApiError::internal)?;
    let (mut result, mut result_error, mut preview) = (None, None, None);
    if let Some(dir) = &row.result_dir {
        let file = dir.join("result.json");
        if file.exists() {
            match ResultSummary::read(&file) {
                Ok(summary) => result = Some(summary),
                Err(e) => result_error = Some(e.to_string()),
            }
        }
        if dir.join("preview.png").is_file() {
            preview = Some(format!("/jobs/{id}/preview.png"));
        }
    }
    Ok(JobDetail {
        job: row.into(),
        deliveries: deliveries.into_iter().map(DeliveryView::from).collect(),
        result,
        result_error,
        preview,
    })
}

async fn job(State(state): State<ApiState>, path: Result<Path<i64>, PathRejection>) -> Response {
    let id = match job_id(path) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let db = state.db.clone();
    match blocking(move || job_detail(&db, id)).await {
        Ok(detail) => Json(detail).into_response(),
        Err(e) => e.into_response(),
    }
}

fn read_preview(db: &JobDb, id: i64) -> Result<Vec<u8>, ApiError> {
    let row = db
        .job(id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::job_not_found(id))?;
    let no_preview = || ApiError::new(StatusCode::NOT_FOUND, format!("job {id} has no preview"));
    let dir: &FsPath = row.result_dir.as_deref().ok_or_else(no_preview)?;
    match std::fs::read(dir.join("preview.png")) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(no_preview()),
        Err(e) => Err(ApiError::internal(format!(
            "{}: {e}",
            dir.join("preview.png").display()
        ))),
    }
}

async fn preview(State(state): State<ApiState>, path: Result<Path<i64>, PathRejection>) -> Response {
    let id = match job_id(path) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let db = state.db.clone();
    match blocking(move || read_preview(&db, id)).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "image/png")], bytes).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn dead_letters(State(state): State<ApiState>) -> Response {
    let db = state.db.clone();
    match blocking(move || db.deliveries_in(DeliveryState::Dead).map_err(ApiError::internal)).await {
        Ok(rows) => Json(rows.into_iter().map(DeliveryView::from).collect::<Vec<_>>()).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_toml() {
        let c: ApiConfig = toml::from_str("").unwrap();
        assert_eq!(c, ApiConfig::default());
        assert_eq!(c.bind_addr().unwrap(), SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert!(c.enabled);
        let c: ApiConfig = toml::from_str("bind = \"0.0.0.0:9000\"\nenabled = false").unwrap();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.bind_addr().unwrap().port(), 9000);
        assert!(!c.enabled);
        assert!(toml::from_str::<ApiConfig>("bnd = \"x\"").is_err());
        let c: ApiConfig = toml::from_str("bind = \"localhost\"").unwrap();
        let err = c.validate().unwrap_err();
        assert_eq!(err.key, "bind");
        assert!(err.to_string().starts_with("api.bind: \"localhost\""), "{err}");
        let back: ApiConfig = toml::from_str(&toml::to_string(&ApiConfig::default()).unwrap()).unwrap();
        assert_eq!(back, ApiConfig::default());
    }
}
