//! The web console: server-rendered pages over the job database (maud escapes every value at
//! compile time; no JavaScript). Jobs newest first with their preview thumbnails, a job page
//! with the result in words, dead letters with Resend, destinations with Echo, and Re-run.
//! Actions post a form and are redirected back (post/redirect/get), so a reload never repeats
//! them. URLs carry ids and destination names only, never patient data.

use axum::Extension;
use axum::Form;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::actions::{self, EchoResult, RetrieveResult};
use super::auth::{self, Viewer};
use super::study::StudyFacts;
use super::{ApiError, ApiState, blocking, job_id};
use crate::report::{ResultSummary, utc_text};
use crate::spool::db::{DeliveryRow, DeliveryState, JobRow, JobState};

const CSS: &str = "
body{font-family:'DejaVu Sans',Arial,sans-serif;margin:0;color:#1d232a;background:#f5f6f8;font-size:14px}
header{background:#1f3a5f;color:#fff;padding:10px 20px;display:flex;align-items:center;gap:24px}
header a{color:#fff;text-decoration:none;font-weight:bold}header .brand{font-size:18px;margin-right:12px}
header .who{margin-left:auto;display:flex;gap:10px;align-items:center}
.banner{background:#fff4d6;border-bottom:1px solid #e6c65c;padding:6px 20px;font-size:13px}
main{padding:16px 20px}h1{font-size:20px;margin:4px 0 14px}h2{font-size:16px;margin:22px 0 8px}
table{border-collapse:collapse;background:#fff;width:100%}
th,td{border-bottom:1px solid #dde1e6;padding:6px 8px;text-align:left;vertical-align:middle}
th{background:#e9edf2;font-size:12px;text-transform:uppercase;letter-spacing:.03em}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.state{display:inline-block;padding:2px 8px;border-radius:10px;font-size:12px;font-weight:bold;color:#fff;background:#5b7083}
.s-delivered{background:#2e7d32}.s-failed,.s-dead{background:#c62828}.s-undeliverable{background:#e65100}
.s-pending,.s-received,.s-assembled,.s-inferred,.s-reported{background:#1565c0}
.suspected{color:#b71c1c;font-weight:bold}.negative{color:#455a64}
img.thumb{height:72px;border:1px solid #ccd;background:#000}
img.preview{max-width:100%;border:1px solid #ccd;background:#000}
.facts{display:grid;grid-template-columns:max-content auto;gap:4px 16px;background:#fff;padding:10px 14px;border:1px solid #dde1e6}
.facts dt{color:#5b7083}.facts dd{margin:0}
.result{font-size:18px;padding:10px 14px;background:#fff;border:1px solid #dde1e6;border-left:6px solid #5b7083}
.result.suspected{border-left-color:#b71c1c}
.note{padding:8px 12px;margin:0 0 12px;border:1px solid}.ok{background:#e8f5e9;border-color:#81c784}
.bad{background:#ffebee;border-color:#e57373}
form.inline{display:inline;margin:0}button{cursor:pointer;padding:4px 12px;border:1px solid #1f3a5f;background:#fff;color:#1f3a5f;border-radius:3px}
button.primary{background:#1f3a5f;color:#fff}
.signin{max-width:320px;margin:60px auto;background:#fff;padding:20px 24px;border:1px solid #dde1e6}
.signin label{display:block;margin:10px 0 4px}.signin input{width:100%;padding:6px;box-sizing:border-box}
.muted{color:#5b7083;font-size:12px}p.patient{margin:-8px 0 12px;font-size:15px}code{font-size:12px}
";

/// A page in the console's frame.
fn page(title: &str, viewer: Option<&Viewer>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · fcdnode" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    span.brand { "fcdnode" }
                    @if viewer.is_some() {
                        a href="/" { "Jobs" }
                        a href="/console/dead" { "Dead letters" }
                        a href="/console/destinations" { "Destinations" }
                    }
                    @if let Some(user) = viewer.and_then(|v| v.user.as_deref()) {
                        span.who {
                            span { "Signed in as " (user) }
                            form.inline method="post" action="/sign-out" { button type="submit" { "Sign out" } }
                        }
                    }
                }
                div.banner {
                    "AI triage for focal cortical dysplasia type II: results are unverified; the reading radiologist decides."
                }
                main { (body) }
            }
        }
    }
}

fn html_response(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, Html(markup.into_string())).into_response();
    // Pages show patient data: no caching by the browser or a proxy.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// An action or page that failed, as a page.
fn error_page(viewer: &Viewer, e: ApiError) -> Response {
    let body = html! {
        h1 { "Not done" }
        p.note.bad { (e.message) }
        p { a href="/" { "Back to the jobs" } }
    };
    html_response(e.status, page("Error", Some(viewer), body))
}

fn state_badge(state: &str) -> Markup {
    html! { span class={ "state s-" (state) } { (state) } }
}

fn percent(p: f64) -> String {
    format!("{:.1} %", p * 100.0)
}

fn finished(job: &JobRow) -> bool {
    matches!(
        job.state,
        JobState::Delivered | JobState::Failed | JobState::Undeliverable
    )
}

fn decision(result: Option<&ResultSummary>) -> Markup {
    html! {
        @match result {
            Some(r) if r.suspected => span.suspected { (r.label) },
            Some(r) => span.negative { (r.label) },
            None => span.muted { "—" },
        }
    }
}

/// A job with what the list and page show about it.
struct JobFacts {
    job: JobRow,
    study: StudyFacts,
    result: Option<ResultSummary>,
    result_error: Option<String>,
    has_preview: bool,
}

fn job_facts(state: &ApiState, job: JobRow) -> JobFacts {
    let dir = job.result_dir.clone();
    let (mut result, mut result_error) = (None, None);
    if let Some(file) = dir.as_ref().map(|d| d.join("result.json")).filter(|f| f.is_file()) {
        match ResultSummary::read(&file) {
            Ok(r) => result = Some(r),
            Err(e) => result_error = Some(e.to_string()),
        }
    }
    let sr = dir
        .as_ref()
        .zip(result.as_ref().and_then(|r| r.sr_file.as_ref()))
        .map(|(d, f)| d.join(f));
    let has_preview = dir.as_ref().is_some_and(|d| d.join("preview.png").is_file());
    JobFacts {
        study: state.studies.facts(&job, sr),
        job,
        result,
        result_error,
        has_preview,
    }
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct ListQuery {
    limit: Option<usize>,
}

/// `GET /`: the latest jobs.
pub(super) async fn jobs_page(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let limit = query
        .ok()
        .and_then(|Query(q)| q.limit)
        .unwrap_or(super::DEFAULT_JOB_LIMIT)
        .min(super::MAX_JOB_LIMIT);
    let st = state.clone();
    let rows = blocking(move || {
        let jobs = st.db.jobs(limit).map_err(ApiError::internal)?;
        Ok(jobs.into_iter().map(|j| job_facts(&st, j)).collect::<Vec<_>>())
    })
    .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => return error_page(&viewer, e),
    };
    let body = html! {
        h1 { "Jobs" }
        @if rows.is_empty() {
            p.muted { "No jobs yet: the node makes one when a study's T1w or FLAIR series has arrived." }
        } @else {
            table #jobs {
                thead { tr {
                    th { "Preview" } th { "Job" } th { "State" } th { "Study date" } th { "Study" }
                    th { "Patient" } th { "Accession" } th { "Received" } th { "Finished" }
                    th { "Probability" } th { "Decision" }
                } }
                tbody {
                    @for f in &rows {
                        tr {
                            td { @if f.has_preview {
                                a href={ "/console/jobs/" (f.job.id) } {
                                    img.thumb src={ "/jobs/" (f.job.id) "/preview.png" } alt={ "preview of job " (f.job.id) };
                                }
                            } }
                            td { a href={ "/console/jobs/" (f.job.id) } { "#" (f.job.id) } }
                            td { (state_badge(f.job.state.as_str())) }
                            td { (f.study.study_date) }
                            td { (f.study.study_description) }
                            td { (f.study.patient_name) br; span.muted { (f.study.patient_id) } }
                            td { (f.study.accession_number) }
                            td { (utc_text(f.job.created_at)) }
                            td { @if finished(&f.job) { (utc_text(f.job.updated_at)) } @else { span.muted { "—" } } }
                            td.num { @if let Some(r) = &f.result { (percent(r.probability)) } }
                            td { (decision(f.result.as_ref())) }
                        }
                    }
                }
            }
        }
    };
    html_response(StatusCode::OK, page("Jobs", Some(&viewer), body))
}

/// `GET /console/jobs/{id}`: one job.
pub(super) async fn job_page(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
    path: Result<Path<i64>, PathRejection>,
) -> Response {
    let id = match job_id(path) {
        Ok(id) => id,
        Err(e) => return error_page(&viewer, e),
    };
    let st = state.clone();
    let loaded = blocking(move || {
        let job = st
            .db
            .job(id)
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::job_not_found(id))?;
        let deliveries = st.db.job_deliveries(id).map_err(ApiError::internal)?;
        Ok((job_facts(&st, job), deliveries))
    })
    .await;
    let (f, deliveries) = match loaded {
        Ok(x) => x,
        Err(e) => return error_page(&viewer, e),
    };
    let dead = deliveries.iter().filter(|d| d.state == DeliveryState::Dead).count();
    let body = html! {
        h1 { "Job #" (id) " " (state_badge(f.job.state.as_str())) }
        p.patient {
            b { (f.study.patient_name) } " · " (f.study.patient_id) " · accession " (f.study.accession_number)
            " · " (f.study.study_date) " · " (f.study.study_description)
        }
        @if let Some(r) = &f.result {
            div class={ "result" @if r.suspected { " suspected" } } {
                (decision(Some(r))) " — probability " (percent(r.probability))
                " (threshold " (percent(r.threshold)) ")"
                @if let (Some(slice), Some(p)) = (r.hotspot_slice, r.hotspot_lps) {
                    br; span.muted { "Hotspot on source slice " (slice + 1) " at "
                        (format!("({:.1}, {:.1}, {:.1})", p[0], p[1], p[2])) " mm (LPS)" }
                }
                @if let Some(why) = &r.no_hotspot { br; span.muted { "No hotspot: " (why) } }
            }
        }
        @if let Some(e) = &f.result_error { p.note.bad { "result.json cannot be read: " (e) } }
        @if let Some(failure) = &f.job.failure {
            p.note.bad {
                "Failed at " b { (failure.stage) }
                @if let Some(s) = &failure.series_uid { " (series " code { (s) } ")" }
                ": " (failure.message)
            }
        } @else if let Some(reason) = &f.job.reason {
            p.note.bad { (reason) }
        }
        p {
            @if finished(&f.job) {
                form.inline method="post" action={ "/console/jobs/" (id) "/rerun" } {
                    button.primary type="submit" { "Re-run" }
                }
                " "
            }
            @if dead > 0 {
                form.inline method="post" action={ "/console/jobs/" (id) "/resend" } {
                    button type="submit" { "Resend " (dead) " dead letter(s)" }
                }
            }
        }
        @if f.has_preview {
            img.preview src={ "/jobs/" (id) "/preview.png" } alt={ "preview of job " (id) };
        }
        h2 { "Outputs and their delivery" }
        (deliveries_table(&deliveries, false))
        h2 { "Study" }
        dl.facts {
            dt { "Patient" } dd { (f.study.patient_name) }
            dt { "Patient ID" } dd { (f.study.patient_id) }
            dt { "Accession" } dd { (f.study.accession_number) }
            dt { "Study date" } dd { (f.study.study_date) }
            dt { "Description" } dd { (f.study.study_description) }
            dt { "Study UID" } dd { code { (f.job.study_uid) } }
            @for (i, s) in f.job.series.iter().enumerate() {
                dt { @if let Some(c) = f.job.inputs.get(i) { (c.channel.to_string()) " series" } @else { "Series" } }
                dd { code { (s) } }
            }
            dt { "Sender" } dd { (f.job.calling_ae) }
            dt { "Received" } dd { (utc_text(f.job.created_at)) }
            dt { "Last change" } dd { (utc_text(f.job.updated_at)) }
            dt { "Attempts" } dd { (f.job.attempts) }
            @if let Some(s) = f.job.supersedes {
                dt { "Supersedes" } dd { a href={ "/console/jobs/" (s) } { "job #" (s) } }
            }
        }
        @if let Some(r) = &f.result {
            h2 { "Structured Report" }
            dl.facts {
                dt { "Finding" } dd { (r.label) }
                dt { "Probability" } dd { (percent(r.probability))
                    @if let Some(u) = r.probability_uncalibrated { span.muted { " (uncalibrated " (percent(u)) ")" } } }
                dt { "Threshold" } dd { (percent(r.threshold)) }
                dt { "Per fold" } dd { (r.fold_probabilities.iter().map(|p| percent(*p)).collect::<Vec<_>>().join(", ")) }
                dt { "Algorithm" } dd { (r.model.name) " " (r.model.version)
                    @if r.model.sha256.len() >= 12 { span.muted { " sha256 " (r.model.sha256[..12]) "…" } } }
                dt { "SR file" } dd { (r.sr_file.as_deref().unwrap_or("not made ([outputs] structured_report = false)")) }
            }
            h2 { "Timings" }
            @let t = &r.timings_ms;
            table #timings {
                thead { tr { th { "Assemble" } th { "Preprocess" } th { "Waited for model" } th { "Infer" } th { "Explain" } th { "Overlay" }
                    th { "SR" } th { "SR sent after" } th { "Key image" } th { "Overlay series" } th { "Parametric map" }
                    th { "Segmentation" } th { "Total" } } }
                tbody { tr {
                    @for ms in [t.assemble, t.preprocess, t.wait, t.infer, t.explain, t.overlay, t.sr, t.decided, t.key_image, t.sc, t.pm, t.seg, t.total] {
                        td.num { (format!("{ms:.0} ms")) }
                    }
                } }
            }
        }
    };
    html_response(StatusCode::OK, page(&format!("Job {id}"), Some(&viewer), body))
}

fn deliveries_table(rows: &[DeliveryRow], with_job: bool) -> Markup {
    html! {
        @if rows.is_empty() {
            p.muted { "None." }
        } @else {
            table.deliveries {
                thead { tr {
                    th { "#" } @if with_job { th { "Job" } } th { "File" } th { "Destination" } th { "State" }
                    th { "Attempts" } th { "Last error" } th {}
                } }
                tbody {
                    @for d in rows {
                        tr {
                            td { (d.id) }
                            @if with_job { td { a href={ "/console/jobs/" (d.job_id) } { "#" (d.job_id) } } }
                            td { code { (d.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()) } }
                            td { (d.destination) }
                            td { (state_badge(d.state.as_str())) }
                            td.num { (d.attempts) }
                            td { (d.last_error.as_deref().unwrap_or("")) }
                            td { @if d.state == DeliveryState::Dead {
                                form.inline method="post" action={ "/console/deliveries/" (d.id) "/resend" } {
                                    button type="submit" { "Resend" }
                                }
                            } }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /console/dead`: dead letters.
pub(super) async fn dead_page(State(state): State<ApiState>, Extension(viewer): Extension<Viewer>) -> Response {
    let db = state.db.clone();
    let rows = match blocking(move || db.deliveries_in(DeliveryState::Dead).map_err(ApiError::internal)).await {
        Ok(rows) => rows,
        Err(e) => return error_page(&viewer, e),
    };
    let body = html! {
        h1 { "Dead letters" }
        p.muted { "Results the outbox gave up on (a permanent fault, or retries used up). Resend queues one again with a fresh retry budget." }
        (deliveries_table(&rows, true))
    };
    html_response(StatusCode::OK, page("Dead letters", Some(&viewer), body))
}

/// What the destinations page reports after an action.
enum Outcome<'a> {
    None,
    Echo(&'a EchoResult),
    Retrieve(&'a RetrieveResult),
}

fn destinations_body(state: &ApiState, outcome: Outcome<'_>) -> Markup {
    let echo = match outcome {
        Outcome::Echo(e) => Some(e),
        _ => None,
    };
    let retrieved = match outcome {
        Outcome::Retrieve(r) => Some(r),
        _ => None,
    };
    html! {
        h1 { "Destinations" }
        @if let Some(r) = retrieved {
            @if r.success {
                p.note.ok #retrieve-result { b { (r.source) } " sent " (r.studies.len()) " study(ies) ("
                    @for (i, uid) in r.studies.iter().enumerate() { @if i > 0 { ", " } code { (uid) } }
                    "): " (r.completed) " instance(s), " (r.failed) " failed. The node analyses their T1w/FLAIR series once they are complete." }
            } @else {
                p.note.bad #retrieve-result { "Retrieving from " b { (r.source) } " failed: "
                    (r.error.as_deref().unwrap_or("")) }
            }
        }
        @if let Some(e) = echo {
            @if e.success {
                p.note.ok #echo-result { "C-ECHO to " b { (e.destination) } " succeeded in "
                    (format!("{:.0} ms", e.ms.unwrap_or_default())) "." }
            } @else {
                p.note.bad #echo-result { "C-ECHO to " b { (e.destination) } " failed: " (e.error.as_deref().unwrap_or("")) }
            }
        }
        @if state.destinations.is_empty() {
            p.muted { "No [[destinations]] configured: results stay on the node." }
        } @else {
            table #destinations {
                thead { tr { th { "Name" } th { "Called AE" } th { "Address" } th { "Calling AE" } th { "TLS" } th {} th { "Retrieve a study (C-MOVE to this node)" } } }
                tbody {
                    @for d in state.destinations.iter() {
                        tr {
                            td { (d.name) }
                            td { code { (d.ae_title) } }
                            td { (d.host) ":" (d.port) }
                            td { code { (d.calling_ae(&state.node_ae)) } }
                            td { @if d.tls.is_some() { "yes" } @else { "no" } }
                            td { form.inline method="post" action={ "/console/destinations/" (d.name) "/echo" } {
                                button type="submit" { "Echo" }
                            } }
                            td { form.inline method="post" action={ "/console/destinations/" (d.name) "/retrieve" } {
                                input name="study_uid" placeholder="Study Instance UID" size="34";
                                " or "
                                input name="patient_id" placeholder="Patient ID" size="12";
                                " "
                                input name="study_date" type="date" title="Study date";
                                " "
                                button type="submit" { "Retrieve" }
                            } }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /console/destinations`.
pub(super) async fn destinations_page(State(state): State<ApiState>, Extension(viewer): Extension<Viewer>) -> Response {
    html_response(
        StatusCode::OK,
        page("Destinations", Some(&viewer), destinations_body(&state, Outcome::None)),
    )
}

/// `POST /console/destinations/{name}/echo`: C-ECHO now, the result on the page.
pub(super) async fn echo(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
) -> Response {
    match actions::echo(&state.destinations, &state.node_ae, &name).await {
        Some(result) => html_response(
            StatusCode::OK,
            page(
                "Destinations",
                Some(&viewer),
                destinations_body(&state, Outcome::Echo(&result)),
            ),
        ),
        None => error_page(
            &viewer,
            ApiError::new(StatusCode::NOT_FOUND, format!("no destination {name:?}")),
        ),
    }
}

#[derive(serde::Deserialize)]
pub(super) struct RetrieveForm {
    #[serde(default)]
    study_uid: String,
    #[serde(default)]
    patient_id: String,
    #[serde(default)]
    study_date: String,
}

/// `POST /console/destinations/{name}/retrieve`: C-MOVE a study (given by its UID, or found by
/// patient ID and date) to the node, the result on the page (the form body carries the
/// identifiers, never the URL).
pub(super) async fn retrieve(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
    form: Result<Form<RetrieveForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let target = match form {
        Ok(Form(f)) if !f.study_uid.trim().is_empty() => actions::RetrieveTarget::Study(f.study_uid),
        Ok(Form(f)) if !f.patient_id.trim().is_empty() => actions::RetrieveTarget::Patient {
            patient_id: f.patient_id,
            study_date: f.study_date.replace('-', ""),
        },
        _ => {
            let e = ApiError::new(
                StatusCode::BAD_REQUEST,
                "give a Study Instance UID, or a patient ID and a date",
            );
            return error_page(&viewer, e);
        }
    };
    let answer = actions::retrieve(
        &state.destinations,
        &state.node_ae,
        &name,
        &target,
        viewer.user.as_deref(),
    )
    .await;
    match answer {
        Some(result) => html_response(
            StatusCode::OK,
            page(
                "Destinations",
                Some(&viewer),
                destinations_body(&state, Outcome::Retrieve(&result)),
            ),
        ),
        None => error_page(
            &viewer,
            ApiError::new(StatusCode::NOT_FOUND, format!("no destination {name:?}")),
        ),
    }
}

/// `POST /console/deliveries/{id}/resend`: to the job's page.
pub(super) async fn resend(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
    path: Result<Path<i64>, PathRejection>,
) -> Response {
    match actions::on_id(&state, &viewer, path, actions::resend).await {
        Ok((_, job)) => Redirect::to(&format!("/console/jobs/{job}")).into_response(),
        Err(e) => error_page(&viewer, e),
    }
}

/// `POST /console/jobs/{id}/resend`: every dead letter of the job.
pub(super) async fn resend_job(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
    path: Result<Path<i64>, PathRejection>,
) -> Response {
    match actions::on_id(&state, &viewer, path, actions::resend_job).await {
        Ok((id, _)) => Redirect::to(&format!("/console/jobs/{id}")).into_response(),
        Err(e) => error_page(&viewer, e),
    }
}

/// `POST /console/jobs/{id}/rerun`: to the new job's page.
pub(super) async fn rerun(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
    path: Result<Path<i64>, PathRejection>,
) -> Response {
    match actions::on_id(&state, &viewer, path, actions::rerun).await {
        Ok((_, new)) => Redirect::to(&format!("/console/jobs/{new}")).into_response(),
        Err(e) => error_page(&viewer, e),
    }
}

fn sign_in_form(failed: bool) -> Markup {
    html! {
        div.signin {
            h1 { "Sign in" }
            @if failed { p.note.bad #sign-in-failed { "Wrong user name or password." } }
            form method="post" action="/sign-in" {
                label for="user" { "User" }
                input #user name="user" autocomplete="username" autofocus;
                label for="password" { "Password" }
                input #password type="password" name="password" autocomplete="current-password";
                p { button.primary #sign-in type="submit" { "Sign in" } }
            }
        }
    }
}

/// `GET /sign-in`.
pub(super) async fn sign_in_page(State(state): State<ApiState>) -> Response {
    if !state.auth.required() {
        return Redirect::to("/").into_response();
    }
    html_response(StatusCode::OK, page("Sign in", None, sign_in_form(false)))
}

#[derive(serde::Deserialize)]
pub(super) struct SignIn {
    user: String,
    password: String,
}

/// `POST /sign-in`: a session cookie and the job list, or the form again with 401.
pub(super) async fn sign_in(State(state): State<ApiState>, request: Request) -> Response {
    let client = auth::client_address(&request);
    let form = <Form<SignIn> as axum::extract::FromRequest<()>>::from_request(request, &()).await;
    let Ok(Form(form)) = form else {
        return html_response(StatusCode::BAD_REQUEST, page("Sign in", None, sign_in_form(true)));
    };
    match state.auth.check_password(&form.user, &form.password).await {
        Some(user) => {
            state.auth.record(&state.audit, &user, &client, true, true);
            let token = state.auth.open_session(&user);
            let mut response = Redirect::to("/").into_response();
            if let Ok(cookie) = HeaderValue::from_str(&auth::session_cookie(Some(&token))) {
                response.headers_mut().insert(header::SET_COOKIE, cookie);
            }
            response
        }
        None => {
            state.auth.record(&state.audit, &form.user, &client, true, false);
            html_response(StatusCode::UNAUTHORIZED, page("Sign in", None, sign_in_form(true)))
        }
    }
}

/// `POST /sign-out`.
pub(super) async fn sign_out(State(state): State<ApiState>, request: Request) -> Response {
    let client = auth::client_address(&request);
    if let Some(user) = auth::session_token(request.headers()).and_then(|t| state.auth.close_session(&t)) {
        state.auth.record(&state.audit, &user, &client, false, true);
    }
    let mut response = Redirect::to("/sign-in").into_response();
    if let Ok(cookie) = HeaderValue::from_str(&auth::session_cookie(None)) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}
