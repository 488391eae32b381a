//! The node's HTTP API (axum): liveness and readiness probes, Prometheus metrics, the job
//! database for operators as JSON, the actions they take, and the web console ([`console`]).
//!
//! | Route | Answer |
//! |---|---|
//! | `GET /healthz` | 200 `ok` while the process runs |
//! | `GET /readyz` | 200 `ready` once the node is started, the database answers and every volume keeps `[node] min_free_mb` free, else 503 with the reason |
//! | `GET /metrics` | OpenMetrics text exposition ([`Metrics`]) |
//! | `GET /jobs?limit=N` | the latest jobs, newest first (default 100, at most 1000) |
//! | `GET /jobs/{id}` | one job with its deliveries and its parsed `result.json` |
//! | `GET /jobs/{id}/preview.png` | the job's preview image |
//! | `POST /jobs/{id}/rerun` | 201 `{"job": new id}`: the job again on the same series |
//! | `POST /jobs/{id}/resend` | `{"resent": n}`: every dead letter of the job back in the outbox |
//! | `GET /deliveries/dead` | dead letters: deliveries that will not be retried on their own |
//! | `POST /deliveries/{id}/resend` | one dead letter back in the outbox, with a fresh retry budget |
//! | `GET /destinations` | the configured destinations |
//! | `POST /destinations/{name}/echo` | C-ECHO now: 200 on success, 502 with the fault |
//! | `POST /retrieve` | `{"source": destination, "study_uid": uid}` (or `"patient_id"` and `"study_date"`, found by C-FIND): C-MOVE the studies from that PACS to the node, which analyses them like pushed ones; 200 with the counts, 502 with the fault |
//! | `GET /`, `/console/…` | the web console (HTML) |
//! | `GET`/`POST /sign-in`, `POST /sign-out` | console sign-in ([`auth`]) |
//!
//! With `[[api.users]]` configured every route but the probes, the metrics and the sign-in
//! page needs a session cookie or HTTP Basic credentials; actions from another site are
//! refused. Errors are JSON `{ "error": "..." }` with the matching status (HTML on console
//! pages). Database work runs on the blocking pool, so a slow database never stalls the
//! reactor and a panic there becomes a 500.

mod actions;
pub mod auth;
mod console;
mod metrics;
mod space;
mod study;

pub use metrics::{CONTENT_TYPE as METRICS_CONTENT_TYPE, DeliveryOutcome, Metrics, STAGE_BUCKETS, STAGES};
pub use space::SpaceFloor;
pub use study::{StudyCache, StudyFacts};

use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::audit::AuditTrail;
use crate::deliver::Destination;
use crate::report::ResultSummary;
use crate::spool::db::{DeliveryRow, DeliveryState, JobDb, JobFailure, JobRow, JobState};
use auth::{ApiUser, Auth, Viewer};

/// Default number of jobs `/jobs` returns.
pub const DEFAULT_JOB_LIMIT: usize = 100;
/// Most jobs `/jobs` returns.
pub const MAX_JOB_LIMIT: usize = 1000;

/// `[api]`: the HTTP API and the web console.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// `IP:port` the HTTP API listens on; loopback by default. Any other address needs users.
    pub bind: String,
    /// Whether the HTTP API runs at all.
    pub enabled: bool,
    /// Hours a console sign-in lasts.
    pub session_hours: f64,
    /// `[[api.users]]`: with any, every page and API route but the probes and metrics needs a
    /// sign-in (the pages show patient names and IDs).
    pub users: Vec<ApiUser>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            enabled: true,
            session_hours: 8.0,
            users: Vec::new(),
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
    /// Checks every value; the first bad one is reported with its key. Users given by
    /// `password_hash_file` pass only through [`ApiConfig::resolved`].
    pub fn validate(&self) -> Result<(), ApiConfigError> {
        let bind = self.bind_addr()?;
        if !(self.session_hours > 0.0 && self.session_hours <= 24.0 * 30.0) {
            return Err(ApiConfigError {
                key: "session_hours",
                message: format!("{} is not within (0, 720]", self.session_hours),
            });
        }
        for (i, user) in self.users.iter().enumerate() {
            let bad = |message: String| ApiConfigError { key: "users", message };
            if user.name.trim().is_empty() || user.name.chars().any(char::is_control) {
                return Err(bad(format!("user {} has an empty or unprintable name", i + 1)));
            }
            if self.users[..i].iter().any(|u| u.name == user.name) {
                return Err(bad(format!("user {:?} is listed twice", user.name)));
            }
            match (&user.password_hash_file, user.password_hash.is_empty()) {
                (Some(_), false) => {
                    return Err(bad(format!(
                        "user {:?}: give password_hash or password_hash_file, not both",
                        user.name
                    )));
                }
                (Some(file), true) => {
                    return Err(bad(format!(
                        "user {:?}: password_hash_file {} is not read yet",
                        user.name,
                        file.display()
                    )));
                }
                (None, _) => auth::check_hash(&user.password_hash)
                    .map_err(|e| bad(format!("user {:?}: password_hash: {e}", user.name)))?,
            }
        }
        if self.enabled && !bind.ip().is_loopback() && self.users.is_empty() {
            return Err(ApiConfigError {
                key: "users",
                message: format!(
                    "the API listens on {bind}, beyond this machine, and its pages show patient data: \
                     add an [[api.users]] entry (password_hash from `fcdnode hash-password`) or bind to 127.0.0.1"
                ),
            });
        }
        Ok(())
    }

    /// This section with every `password_hash_file` read into `password_hash` (surrounding
    /// whitespace dropped), then checked.
    pub fn resolved(&self) -> Result<Self, ApiConfigError> {
        let mut resolved = self.clone();
        for user in &mut resolved.users {
            if let Some(file) = &user.password_hash_file
                && user.password_hash.is_empty()
            {
                let text = std::fs::read_to_string(file).map_err(|e| ApiConfigError {
                    key: "users",
                    message: format!("user {:?}: password_hash_file {}: {e}", user.name, file.display()),
                })?;
                let hash = text.trim().to_owned();
                auth::check_hash(&hash).map_err(|e| ApiConfigError {
                    key: "users",
                    message: format!("user {:?}: password_hash_file {}: {e}", user.name, file.display()),
                })?;
                user.password_hash = hash;
                user.password_hash_file = None;
            }
        }
        resolved.validate()?;
        Ok(resolved)
    }

    /// Sign-in lifetime.
    pub fn session_ttl(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.session_hours * 3600.0)
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
    /// `[[destinations]]`, for the destination views and Echo.
    pub destinations: Arc<[Destination]>,
    /// The node's AE title: the calling AE of Echo unless a destination sets its own.
    pub node_ae: String,
    /// Users and sessions.
    pub auth: Arc<Auth>,
    /// Where sign-ins are recorded.
    pub audit: AuditTrail,
    /// Patient and study facts per job, for the console.
    pub studies: Arc<StudyCache>,
}

impl ApiState {
    /// A state with no destinations, no users and no audit trail; set those fields as needed.
    pub fn new(db: Arc<JobDb>, metrics: Arc<Metrics>, ready: Arc<AtomicBool>, space: SpaceFloor) -> Self {
        Self {
            db,
            metrics,
            ready,
            space,
            destinations: Arc::from(Vec::new()),
            node_ae: "FCDNODE".into(),
            auth: Arc::new(Auth::open()),
            audit: AuditTrail::off(),
            studies: Arc::default(),
        }
    }
}

/// The API's routes over `state`.
pub fn router(state: ApiState) -> Router {
    let gated = Router::new()
        .route("/", get(console::jobs_page))
        .route("/console/jobs/{id}", get(console::job_page))
        .route("/console/jobs/{id}/rerun", post(console::rerun))
        .route("/console/jobs/{id}/resend", post(console::resend_job))
        .route("/console/dead", get(console::dead_page))
        .route("/console/deliveries/{id}/resend", post(console::resend))
        .route("/console/destinations", get(console::destinations_page))
        .route("/console/destinations/{name}/echo", post(console::echo))
        .route("/sign-out", post(console::sign_out))
        .route("/jobs", get(jobs))
        .route("/jobs/{id}", get(job))
        .route("/jobs/{id}/preview.png", get(preview))
        .route("/jobs/{id}/rerun", post(rerun))
        .route("/jobs/{id}/resend", post(resend_job))
        .route("/deliveries/dead", get(dead_letters))
        .route("/deliveries/{id}/resend", post(resend))
        .route("/destinations", get(destinations))
        .route("/destinations/{name}/echo", post(echo))
        .route("/retrieve", post(retrieve))
        .route("/console/destinations/{name}/retrieve", post(console::retrieve))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::gate));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/sign-in", get(console::sign_in_page).post(console::sign_in))
        .merge(gated)
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
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
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

async fn rerun(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
    path: Result<Path<i64>, PathRejection>,
) -> Response {
    match actions::on_id(&state, &viewer, path, actions::rerun).await {
        Ok((_, new)) => (StatusCode::CREATED, Json(serde_json::json!({ "job": new }))).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn resend_job(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
    path: Result<Path<i64>, PathRejection>,
) -> Response {
    match actions::on_id(&state, &viewer, path, actions::resend_job).await {
        Ok((id, n)) => Json(serde_json::json!({ "job": id, "resent": n })).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn resend(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
    path: Result<Path<i64>, PathRejection>,
) -> Response {
    match actions::on_id(&state, &viewer, path, actions::resend).await {
        Ok((id, job)) => Json(serde_json::json!({ "delivery": id, "job": job, "state": "pending" })).into_response(),
        Err(e) => e.into_response(),
    }
}

/// A destination as the API shows it (no key material).
#[derive(Debug, serde::Serialize)]
struct DestinationView<'a> {
    name: &'a str,
    ae_title: &'a str,
    host: &'a str,
    port: u16,
    calling_ae_title: &'a str,
    tls: bool,
}

async fn destinations(State(state): State<ApiState>) -> Response {
    let views: Vec<DestinationView<'_>> = state
        .destinations
        .iter()
        .map(|d| DestinationView {
            name: &d.name,
            ae_title: &d.ae_title,
            host: &d.host,
            port: d.port,
            calling_ae_title: d.calling_ae(&state.node_ae),
            tls: d.tls.is_some(),
        })
        .collect();
    Json(views).into_response()
}

async fn echo(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    match actions::echo(&state.destinations, &state.node_ae, &name).await {
        Some(result) if result.success => Json(result).into_response(),
        Some(result) => (StatusCode::BAD_GATEWAY, Json(result)).into_response(),
        None => ApiError::new(StatusCode::NOT_FOUND, format!("no destination {name:?}")).into_response(),
    }
}

/// `POST /retrieve` body: `source` and either `study_uid`, or `patient_id` with `study_date`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RetrieveRequest {
    source: String,
    study_uid: Option<String>,
    patient_id: Option<String>,
    study_date: Option<String>,
}

impl RetrieveRequest {
    fn target(self) -> Result<(String, actions::RetrieveTarget), ApiError> {
        let target = match (self.study_uid, self.patient_id, self.study_date) {
            (Some(uid), None, None) => actions::RetrieveTarget::Study(uid),
            (None, Some(patient_id), Some(study_date)) => actions::RetrieveTarget::Patient { patient_id, study_date },
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "give study_uid, or patient_id with study_date (YYYYMMDD or YYYYMMDD-YYYYMMDD)",
                ));
            }
        };
        Ok((self.source, target))
    }
}

async fn retrieve(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
    body: Result<Json<RetrieveRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let request = match body {
        Ok(Json(body)) => body.target(),
        Err(e) => Err(ApiError::new(StatusCode::BAD_REQUEST, e.body_text())),
    };
    let (source, target) = match request {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let answer = actions::retrieve(
        &state.destinations,
        &state.node_ae,
        &source,
        &target,
        viewer.user.as_deref(),
    )
    .await;
    match answer {
        Some(result) if result.success => Json(result).into_response(),
        Some(result) => (StatusCode::BAD_GATEWAY, Json(result)).into_response(),
        None => ApiError::new(StatusCode::NOT_FOUND, format!("no destination {source:?}")).into_response(),
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

    #[test]
    fn beyond_loopback_the_api_needs_users_with_argon2_hashes() {
        let open: ApiConfig = toml::from_str("bind = \"0.0.0.0:9000\"").unwrap();
        let err = open.validate().unwrap_err();
        assert_eq!(err.key, "users");
        assert!(err.to_string().contains("fcdnode hash-password"), "{err}");
        let off: ApiConfig = toml::from_str("bind = \"0.0.0.0:9000\"\nenabled = false").unwrap();
        assert_eq!(off.validate(), Ok(()), "a disabled API needs nobody");
        let hash = auth::hash_password("pw").unwrap();
        let with_user = format!("bind = \"10.0.0.5:8080\"\n[[users]]\nname = \"admin\"\npassword_hash = \"{hash}\"\n");
        let c: ApiConfig = toml::from_str(&with_user).unwrap();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.session_ttl(), std::time::Duration::from_secs(8 * 3600));
        let plain: ApiConfig = toml::from_str(&with_user.replace(&hash, "pw")).unwrap();
        let err = plain.validate().unwrap_err();
        assert!(err.to_string().contains("not a PHC password hash"), "{err}");
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), format!("{hash}\n")).unwrap();
        let from_file = format!(
            "bind = \"0.0.0.0:8080\"\n[[users]]\nname = \"admin\"\npassword_hash_file = \"{}\"\n",
            file.path().display()
        );
        let c: ApiConfig = toml::from_str(&from_file).unwrap();
        assert!(c.validate().is_err(), "unread, the file gives no hash");
        assert_eq!(c.resolved().unwrap().users[0].password_hash, hash, "read and trimmed");
        let missing = from_file.replace(&file.path().display().to_string(), "/nonexistent/hash");
        let err = toml::from_str::<ApiConfig>(&missing).unwrap().resolved().unwrap_err();
        assert!(err.to_string().contains("/nonexistent/hash"), "{err}");
        let both = format!("{from_file}password_hash = \"{hash}\"\n");
        let err = toml::from_str::<ApiConfig>(&both).unwrap().resolved().unwrap_err();
        assert!(err.to_string().contains("not both"), "{err}");
        let twice = format!("{with_user}[[users]]\nname = \"admin\"\npassword_hash = \"{hash}\"\n");
        let err = toml::from_str::<ApiConfig>(&twice).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");
        let c: ApiConfig = toml::from_str("session_hours = 0").unwrap();
        assert_eq!(c.validate().unwrap_err().key, "session_hours");
    }
}
