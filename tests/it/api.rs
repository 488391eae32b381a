//! HTTP API over a real job database and a real socket: probes, job views with deliveries,
//! `result.json` and the preview PNG, dead letters, and the metrics exposition.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fcdnode::api::{self, ApiState, DeliveryOutcome, Metrics, SpaceFloor};
use fcdnode::package::manifest::Modality;
use fcdnode::report::{ModelSummary, ResultSummary};
use fcdnode::spool::db::{DeliveryState, InstanceRecord, JobDb, JobFailure, JobState, Recorded, StoredHeader};
use fcdnode::tracker::routing::ChannelSeries;
use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use serde_json::Value;

use crate::util::tempdir;

const PNG_MAGIC: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// Job ids of the fixture, by what was done to them.
struct Jobs {
    /// Two destinations: one delivered, one dead → undeliverable; result.json, no preview.
    undeliverable: i64,
    /// Delivered, with result.json and preview.png.
    delivered: i64,
    /// Failed at creation (a channel missing).
    failed: i64,
    /// Just created.
    received: i64,
}

/// A served API over a filled database; dropping it stops the server and the runtime.
struct Served {
    _tmp: tempfile::TempDir,
    base: String,
    state: ApiState,
    jobs: Jobs,
    client: Client,
    shutdown: tokio::sync::watch::Sender<bool>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let (Some(rt), Some(server)) = (self.runtime.take(), self.server.take()) {
            let _ = rt.block_on(server);
            rt.shutdown_background();
        }
    }
}

impl Served {
    fn get(&self, path: &str) -> Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    fn json(&self, path: &str, status: StatusCode) -> Value {
        let resp = self.get(path);
        assert_eq!(resp.status(), status, "GET {path}");
        let ct = content_type(&resp);
        assert!(ct.starts_with("application/json"), "GET {path}: content type {ct}");
        resp.json().unwrap_or_else(|e| panic!("GET {path}: not JSON: {e}"))
    }

    fn text(&self, path: &str) -> (StatusCode, String, String) {
        let resp = self.get(path);
        let status = resp.status();
        let ct = content_type(&resp);
        (status, ct, resp.text().unwrap_or_else(|e| panic!("GET {path}: {e}")))
    }
}

fn content_type(resp: &Response) -> String {
    resp.headers()
        .get(reqwest::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

fn record(db: &JobDb, root: &Path, sop: &str, series: &str, study: &str) {
    let path = root.join(format!("{sop}.dcm"));
    let rec = InstanceRecord {
        sop_uid: sop,
        series_uid: series,
        study_uid: study,
        path: &path,
        series_dir: root,
        calling_ae: "SCANNER",
        size: 1234,
        header: &StoredHeader::Unusable {
            reason: "not read in this test".into(),
        },
        synced: true,
    };
    assert_eq!(db.record_instance(&rec).unwrap(), Recorded::New);
}

fn write_result(dir: &Path, study: &str, series: &str, preview: bool) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir.join("sr")).unwrap();
    let summary = ResultSummary {
        probability: 0.87,
        label: "FCD type II suspected".into(),
        suspected: true,
        threshold: 0.5,
        fold_probabilities: vec![0.8, 0.9, 0.91],
        hotspot_lps: Some([12.5, -30.0, 41.0]),
        hotspot_slice: Some(17),
        no_hotspot: None,
        series_uid: series.into(),
        study_uid: study.into(),
        model: ModelSummary {
            name: "fcd-demo".into(),
            version: "1.0".into(),
            sha256: "ab".repeat(32),
        },
        sc_files: vec![],
        sr_file: Some("sr/SR.dcm".into()),
        preview_png: preview.then(|| "preview.png".into()),
        ..Default::default()
    };
    summary.write(&dir.join("result.json")).unwrap();
    if preview {
        let img = image::RgbImage::from_fn(8, 6, |x, y| image::Rgb([(x * 30) as u8, (y * 40) as u8, 200]));
        img.save_with_format(dir.join("preview.png"), image::ImageFormat::Png)
            .unwrap();
    }
    let sr = dir.join("sr/SR.dcm");
    std::fs::write(&sr, b"not really DICOM; never sent in this test").unwrap();
    vec![sr]
}

/// The series feeding the FLAIR channel (files are not read in these tests).
fn flair(series_uid: &str) -> Vec<ChannelSeries> {
    vec![ChannelSeries {
        channel: Modality::Flair,
        series_uid: series_uid.into(),
        files: Vec::new(),
        plan: None,
    }]
}

fn fill(db: &JobDb, root: &Path) -> Jobs {
    record(db, root, "1.2.826.0.1.1", "1.2.826.0.2.1", "1.2.826.0.3.1");
    record(db, root, "1.2.826.0.1.2", "1.2.826.0.2.1", "1.2.826.0.3.1");

    let undeliverable = db
        .create_job("1.2.826.0.3.1", &flair("1.2.826.0.2.1"), "SCANNER")
        .unwrap();
    db.set_state(undeliverable, JobState::Assembled, None).unwrap();
    db.set_state(undeliverable, JobState::Inferred, None).unwrap();
    let dir = root.join("results/1");
    let files = write_result(&dir, "1.2.826.0.3.1", "1.2.826.0.2.1", false);
    let deliveries: Vec<(String, PathBuf)> = ["pacs", "archive"]
        .iter()
        .flat_map(|d| files.iter().map(move |f| (d.to_string(), f.clone())))
        .collect();
    db.report_job(undeliverable, &dir, &deliveries).unwrap();
    for d in db.job_deliveries(undeliverable).unwrap() {
        if d.destination == "pacs" {
            db.settle_delivery(d.id, DeliveryState::Delivered, 0.0, None).unwrap();
        } else {
            db.settle_delivery(d.id, DeliveryState::Dead, 0.0, Some("association rejected permanently"))
                .unwrap();
        }
    }

    let delivered = db
        .create_job("1.2.826.0.3.2", &flair("1.2.826.0.2.2"), "SCANNER")
        .unwrap();
    let dir = root.join("results/2");
    let files = write_result(&dir, "1.2.826.0.3.2", "1.2.826.0.2.2", true);
    let deliveries: Vec<(String, PathBuf)> = files.iter().map(|f| ("pacs".to_owned(), f.clone())).collect();
    db.report_job(delivered, &dir, &deliveries).unwrap();
    for d in db.job_deliveries(delivered).unwrap() {
        db.settle_delivery(d.id, DeliveryState::Delivered, 0.0, None).unwrap();
    }

    let failed = db
        .create_failed_job(
            "1.2.826.0.3.3",
            &flair("1.2.826.0.2.3"),
            "SCANNER",
            &JobFailure {
                stage: "route".into(),
                series_uid: None,
                message: "FLAIR channel missing".into(),
            },
        )
        .unwrap();
    let received = db
        .create_job("1.2.826.0.3.4", &flair("1.2.826.0.2.4"), "OTHER_AE")
        .unwrap();
    Jobs {
        undeliverable,
        delivered,
        failed,
        received,
    }
}

fn serve() -> Served {
    serve_with(|_| SpaceFloor::default())
}

/// Serves with the free-space floor `space` makes for the data directory.
fn serve_with(space: impl FnOnce(&Path) -> SpaceFloor) -> Served {
    serve_state(space, |_| {})
}

/// Serves with the free-space floor `space` makes for the data directory and the state as
/// `adjust` leaves it (destinations, users).
fn serve_state(space: impl FnOnce(&Path) -> SpaceFloor, adjust: impl FnOnce(&mut ApiState)) -> Served {
    let tmp = tempdir();
    let db = Arc::new(JobDb::open(&tmp.path().join("jobs.sqlite")).unwrap());
    let jobs = fill(&db, tmp.path());
    let mut state = ApiState::new(
        db,
        Arc::new(Metrics::new()),
        Arc::new(AtomicBool::new(false)),
        space(tmp.path()),
    );
    adjust(&mut state);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (shutdown, rx) = tokio::sync::watch::channel(false);
    let server = runtime.spawn(api::serve(listener, state.clone(), rx));
    Served {
        _tmp: tmp,
        base,
        state,
        jobs,
        client: Client::new(),
        shutdown,
        server: Some(server),
        runtime: Some(runtime),
    }
}

#[test]
fn probes_follow_liveness_and_readiness() {
    let s = serve();
    let (status, _, body) = s.text("/healthz");
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));

    let (status, _, body) = s.text("/readyz");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("not ready"), "{body}");

    s.state.ready.store(true, Ordering::SeqCst);
    let (status, _, body) = s.text("/readyz");
    assert_eq!(status, StatusCode::OK, "{body}");

    let err = s.json("/no/such/route", StatusCode::NOT_FOUND);
    assert!(err["error"].is_string(), "{err}");
}

/// A free-space floor above what the volume has makes `/readyz` answer 503 naming the volume
/// and the key; a floor below it, or none, leaves the node ready (statvfs of the real volume).
#[test]
fn readiness_needs_the_free_space_floor() {
    let huge = u64::MAX / (1 << 21);
    for (floor, ready) in [(1, true), (huge, false), (0, true)] {
        let s = serve_with(|data| SpaceFloor::for_data_dir(data, floor));
        s.state.ready.store(true, Ordering::SeqCst);
        let (status, _, body) = s.text("/readyz");
        if ready {
            assert_eq!(status, StatusCode::OK, "min_free_mb = {floor}: {body}");
        } else {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "min_free_mb = {floor}: {body}");
            assert!(
                body.starts_with("not ready: spool volume") && body.contains("below [node] min_free_mb"),
                "{body}"
            );
        }
    }
}

#[test]
fn jobs_are_listed_newest_first_with_limit() {
    let s = serve();
    let list = s.json("/jobs", StatusCode::OK);
    let ids: Vec<i64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect();
    let j = &s.jobs;
    assert_eq!(ids, [j.received, j.failed, j.delivered, j.undeliverable]);

    let first = &list[0];
    assert_eq!(first["state"], "received");
    assert_eq!(first["calling_ae"], "OTHER_AE");
    assert_eq!(first["study_uid"], "1.2.826.0.3.4");
    assert_eq!(first["series"], serde_json::json!(["1.2.826.0.2.4"]));
    assert_eq!(first["attempts"], 0);
    for key in ["reason", "supersedes", "created_at", "updated_at"] {
        assert!(first.get(key).is_some(), "job lacks {key}: {first}");
    }
    assert_eq!(list[1]["state"], "failed");
    assert_eq!(list[1]["reason"], "FLAIR channel missing");
    assert_eq!(list[3]["state"], "undeliverable");

    let two = s.json("/jobs?limit=2", StatusCode::OK);
    let ids: Vec<i64> = two
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [j.received, j.failed]);

    let big = s.json("/jobs?limit=1000000", StatusCode::OK);
    assert_eq!(big.as_array().unwrap().len(), 4);

    let bad = s.json("/jobs?limit=many", StatusCode::BAD_REQUEST);
    assert!(bad["error"].is_string(), "{bad}");
}

#[test]
fn job_detail_has_deliveries_and_result() {
    let s = serve();
    let detail = s.json(&format!("/jobs/{}", s.jobs.undeliverable), StatusCode::OK);
    assert_eq!(detail["job"]["id"], s.jobs.undeliverable);
    assert_eq!(detail["job"]["state"], "undeliverable");
    let deliveries = detail["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 2, "{detail}");
    let by_dest = |name: &str| deliveries.iter().find(|d| d["destination"] == name).unwrap().clone();
    let pacs = by_dest("pacs");
    assert_eq!(pacs["state"], "delivered");
    assert_eq!(pacs["attempts"], 1);
    assert_eq!(pacs["file"], "SR.dcm");
    assert!(pacs["last_error"].is_null());
    let archive = by_dest("archive");
    assert_eq!(archive["state"], "dead");
    assert_eq!(archive["last_error"], "association rejected permanently");
    assert_eq!(detail["result"]["probability"], 0.87);
    assert_eq!(detail["result"]["study_uid"], "1.2.826.0.3.1");
    assert!(detail["preview"].is_null(), "{detail}");

    let detail = s.json(&format!("/jobs/{}", s.jobs.delivered), StatusCode::OK);
    assert_eq!(detail["job"]["state"], "delivered");
    assert_eq!(detail["result"]["sr_file"], "sr/SR.dcm");
    assert_eq!(detail["result"]["model"]["name"], "fcd-demo");
    assert_eq!(detail["preview"], format!("/jobs/{}/preview.png", s.jobs.delivered));

    let detail = s.json(&format!("/jobs/{}", s.jobs.received), StatusCode::OK);
    assert!(detail["result"].is_null());
    assert_eq!(detail["deliveries"], serde_json::json!([]));

    let missing = s.json("/jobs/999999", StatusCode::NOT_FOUND);
    assert!(missing["error"].as_str().unwrap().contains("999999"), "{missing}");
    let bad = s.json("/jobs/abc", StatusCode::BAD_REQUEST);
    assert!(bad["error"].is_string(), "{bad}");
}

#[test]
fn preview_is_served_as_png() {
    let s = serve();
    let resp = s.get(&format!("/jobs/{}/preview.png", s.jobs.delivered));
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(content_type(&resp), "image/png");
    let bytes = resp.bytes().unwrap();
    assert_eq!(bytes[..8], PNG_MAGIC);
    let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png).unwrap();
    assert_eq!((img.width(), img.height()), (8, 6));

    for id in [s.jobs.undeliverable, s.jobs.received, 424242] {
        let err = s.json(&format!("/jobs/{id}/preview.png"), StatusCode::NOT_FOUND);
        assert!(err["error"].is_string(), "{err}");
    }
}

#[test]
fn dead_letters_are_listed() {
    let s = serve();
    let dead = s.json("/deliveries/dead", StatusCode::OK);
    let dead = dead.as_array().unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["job_id"], s.jobs.undeliverable);
    assert_eq!(dead[0]["destination"], "archive");
    assert_eq!(dead[0]["state"], "dead");
    assert_eq!(dead[0]["attempts"], 1);
    assert_eq!(dead[0]["last_error"], "association rejected permanently");
    assert!(dead[0]["next_attempt_at"].is_null());
}

/// The sample value of the exposition line `name{labels}` (exact match on the series).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.parse().unwrap_or_else(|e| panic!("{series}: value {v:?}: {e}")))
}

#[test]
fn metrics_match_database_and_counters() {
    let s = serve();
    let m = &s.state.metrics;
    m.instance_received(1000);
    m.instance_received(500);
    m.instance_refused(0xC000);
    m.instance_refused(0xC000);
    m.instance_refused(0xA700);
    m.series_completed();
    m.observe_stage("infer", 0.004);
    m.observe_stage("infer", 2.0);
    m.observe_stage("turnaround", 200.0);
    m.delivery("pacs", DeliveryOutcome::Delivered);
    m.delivery("archive", DeliveryOutcome::Retry);
    m.delivery("archive", DeliveryOutcome::Dead);

    let (status, ct, text) = s.text("/metrics");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ct, "application/openmetrics-text; version=1.0.0; charset=utf-8");
    assert_eq!(text.lines().last(), Some("# EOF"), "{text}");
    assert_eq!(text.matches("# EOF").count(), 1);

    // Every line is a comment or `series value`, and every series belongs to a declared family.
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line:?}"));
        value
            .parse::<f64>()
            .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}"));
        let name = series.split('{').next().unwrap();
        assert!(
            families.iter().any(|f| name.starts_with(f)),
            "{name} has no # TYPE line"
        );
    }

    // Jobs by state, from the database, with every state present.
    let counts = s.state.db.job_counts().unwrap();
    for state in JobState::ALL {
        let expected = counts.iter().find(|(s, _)| *s == state).map_or(0, |(_, n)| *n);
        let line = format!("fcdnode_jobs{{state=\"{}\"}}", state.as_str());
        assert_eq!(sample(&text, &line), Some(expected as f64), "{line}\n{text}");
    }
    for (state, n) in [
        ("received", 1.0),
        ("failed", 1.0),
        ("delivered", 1.0),
        ("undeliverable", 1.0),
        ("reported", 0.0),
    ] {
        assert_eq!(
            sample(&text, &format!("fcdnode_jobs{{state=\"{state}\"}}")),
            Some(n),
            "{state}"
        );
    }

    let expect = |series: &str, value: f64| assert_eq!(sample(&text, series), Some(value), "{series}\n{text}");
    expect("fcdnode_instances_received_total", 2.0);
    expect("fcdnode_bytes_received_total", 1500.0);
    expect("fcdnode_instances_refused_total{status=\"0xC000\"}", 2.0);
    expect("fcdnode_instances_refused_total{status=\"0xA700\"}", 1.0);
    expect("fcdnode_series_completed_total", 1.0);
    expect(
        "fcdnode_deliveries_total{destination=\"pacs\",outcome=\"delivered\"}",
        1.0,
    );
    expect(
        "fcdnode_deliveries_total{destination=\"archive\",outcome=\"retry\"}",
        1.0,
    );
    expect(
        "fcdnode_deliveries_total{destination=\"archive\",outcome=\"dead\"}",
        1.0,
    );
    expect("fcdnode_delivery_failures_total{destination=\"archive\"}", 2.0);
    assert_eq!(
        sample(&text, "fcdnode_delivery_failures_total{destination=\"pacs\"}"),
        None
    );

    // Histogram: cumulative buckets from 1 ms to 120 s, count and sum for the observed stage.
    expect("fcdnode_stage_seconds_count{stage=\"infer\"}", 2.0);
    let sum = sample(&text, "fcdnode_stage_seconds_sum{stage=\"infer\"}").unwrap();
    assert!((sum - 2.004).abs() < 1e-9, "sum {sum}");
    expect("fcdnode_stage_seconds_bucket{le=\"0.001\",stage=\"infer\"}", 0.0);
    expect("fcdnode_stage_seconds_bucket{le=\"0.005\",stage=\"infer\"}", 1.0);
    expect("fcdnode_stage_seconds_bucket{le=\"1.0\",stage=\"infer\"}", 1.0);
    expect("fcdnode_stage_seconds_bucket{le=\"2.5\",stage=\"infer\"}", 2.0);
    expect("fcdnode_stage_seconds_bucket{le=\"120.0\",stage=\"infer\"}", 2.0);
    expect("fcdnode_stage_seconds_bucket{le=\"+Inf\",stage=\"infer\"}", 2.0);
    expect("fcdnode_stage_seconds_bucket{le=\"120.0\",stage=\"turnaround\"}", 0.0);
    expect("fcdnode_stage_seconds_bucket{le=\"+Inf\",stage=\"turnaround\"}", 1.0);
    for stage in api::STAGES {
        assert!(
            sample(&text, &format!("fcdnode_stage_seconds_count{{stage=\"{stage}\"}}")).is_some(),
            "stage {stage} not exposed"
        );
    }

    // The job gauge follows the database between scrapes.
    let id = s
        .state
        .db
        .create_job("1.2.826.0.3.9", &flair("1.2.826.0.2.9"), "SCANNER")
        .unwrap();
    s.state.db.set_state(id, JobState::Delivered, None).unwrap();
    let (_, _, text) = s.text("/metrics");
    assert_eq!(sample(&text, "fcdnode_jobs{state=\"delivered\"}"), Some(2.0), "{text}");
}

#[test]
fn serve_stops_on_shutdown() {
    let mut s = serve();
    assert_eq!(s.get("/healthz").status(), StatusCode::OK);
    s.shutdown.send(true).unwrap();
    let rt = s.runtime.as_ref().unwrap();
    let result = rt.block_on(s.server.take().unwrap()).unwrap();
    assert!(result.is_ok(), "{result:?}");
    let after = Client::new().get(format!("{}/healthz", s.base)).send();
    assert!(after.is_err(), "still serving after shutdown");
}

impl Served {
    fn post(&self, path: &str) -> Response {
        self.client
            .post(format!("{}{path}", self.base))
            .send()
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    fn post_json(&self, path: &str, status: StatusCode) -> Value {
        let resp = self.post(path);
        assert_eq!(resp.status(), status, "POST {path}");
        resp.json().unwrap_or_else(|e| panic!("POST {path}: not JSON: {e}"))
    }
}

/// A job whose input instance file is gone (retention), failed so it may be re-run.
fn job_with_a_missing_input(s: &Served) -> i64 {
    let db = &s.state.db;
    let inputs = vec![ChannelSeries {
        channel: Modality::Flair,
        series_uid: "1.2.826.0.2.9".into(),
        files: vec![s._tmp.path().join("expired.dcm")],
        plan: None,
    }];
    let id = db.create_job("1.2.826.0.3.9", &inputs, "SCANNER").unwrap();
    let failure = JobFailure {
        stage: "assemble".into(),
        series_uid: None,
        message: "gone".into(),
    };
    db.fail_job(id, &failure).unwrap();
    id
}

#[test]
fn dead_letters_are_resent_and_finished_jobs_run_again() {
    let s = serve();
    let dead = s.json("/deliveries/dead", StatusCode::OK)[0]["id"].as_i64().unwrap();
    let answer = s.post_json(&format!("/deliveries/{dead}/resend"), StatusCode::OK);
    assert_eq!(answer["job"], s.jobs.undeliverable, "{answer}");
    let detail = s.json(&format!("/jobs/{}", s.jobs.undeliverable), StatusCode::OK);
    assert_eq!(detail["job"]["state"], "reported", "back in the outbox: {detail}");
    assert!(detail["job"]["reason"].is_null(), "{detail}");
    let resent = detail["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == dead)
        .unwrap();
    assert_eq!(resent["state"], "pending");
    assert_eq!(resent["attempts"], 0, "a fresh retry budget");
    assert_eq!(
        resent["last_error"], "association rejected permanently",
        "the history stays"
    );
    assert!(
        s.json("/deliveries/dead", StatusCode::OK)
            .as_array()
            .unwrap()
            .is_empty()
    );
    let err = s.post_json(&format!("/deliveries/{dead}/resend"), StatusCode::CONFLICT);
    assert!(err["error"].as_str().unwrap().contains("pending, not dead"), "{err}");
    s.post_json("/deliveries/424242/resend", StatusCode::NOT_FOUND);
    let err = s.post_json(&format!("/jobs/{}/resend", s.jobs.delivered), StatusCode::CONFLICT);
    assert!(err["error"].as_str().unwrap().contains("no dead letters"), "{err}");

    let answer = s.post_json(&format!("/jobs/{}/rerun", s.jobs.delivered), StatusCode::CREATED);
    let new = answer["job"].as_i64().unwrap();
    let job = s.json(&format!("/jobs/{new}"), StatusCode::OK)["job"].clone();
    assert_eq!(job["state"], "received");
    assert_eq!(job["supersedes"], s.jobs.delivered);
    assert_eq!(job["study_uid"], "1.2.826.0.3.2");
    assert_eq!(job["series"], serde_json::json!(["1.2.826.0.2.2"]));
    let err = s.post_json(&format!("/jobs/{new}/rerun"), StatusCode::CONFLICT);
    assert!(err["error"].as_str().unwrap().contains("is received"), "{err}");
    let gone = job_with_a_missing_input(&s);
    let err = s.post_json(&format!("/jobs/{gone}/rerun"), StatusCode::CONFLICT);
    assert!(err["error"].as_str().unwrap().contains("expired.dcm is gone"), "{err}");
    s.post_json("/jobs/424242/rerun", StatusCode::NOT_FOUND);
    s.post_json("/jobs/x/rerun", StatusCode::BAD_REQUEST);
}

#[test]
fn echo_tests_destinations_against_dcmtk() {
    let (up, down) = (crate::node::free_port(), crate::node::free_port());
    let work = tempdir();
    let _pacs = crate::node::Pacs::start(up, &work.path().join("pacs"));
    let s = serve_state(
        |_| SpaceFloor::default(),
        |state| {
            state.destinations = vec![
                fcdnode::deliver::Destination::new("pacs", "PACS", "127.0.0.1", up),
                fcdnode::deliver::Destination::new("down", "NOBODY", "127.0.0.1", down),
            ]
            .into();
        },
    );
    let listed = s.json("/destinations", StatusCode::OK);
    assert_eq!(listed[0]["name"], "pacs");
    assert_eq!(listed[0]["port"], up);
    assert_eq!(listed[0]["calling_ae_title"], "FCDNODE");
    assert_eq!(listed[1]["tls"], false);
    let ok = s.post_json("/destinations/pacs/echo", StatusCode::OK);
    assert_eq!(ok["success"], true, "{ok}");
    assert!(ok["ms"].as_f64().unwrap() > 0.0, "{ok}");
    let failed = s.post_json("/destinations/down/echo", StatusCode::BAD_GATEWAY);
    assert_eq!(failed["success"], false);
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("cannot connect") && error.starts_with("transient fault"),
        "{error}"
    );
    s.post_json("/destinations/nowhere/echo", StatusCode::NOT_FOUND);
}

#[test]
fn with_users_everything_but_probes_needs_a_sign_in() {
    let hash = fcdnode::api::auth::hash_password("s3cret pass").unwrap();
    let s = serve_state(
        |_| SpaceFloor::default(),
        |state| {
            let user = fcdnode::api::auth::ApiUser {
                name: "admin".into(),
                password_hash: hash,
                password_hash_file: None,
            };
            state.auth = Arc::new(fcdnode::api::auth::Auth::new(
                vec![user],
                std::time::Duration::from_secs(60),
            ));
        },
    );
    let plain = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = |path: &str| format!("{}{path}", s.base);
    for open in ["/healthz", "/metrics", "/sign-in"] {
        assert_eq!(plain.get(url(open)).send().unwrap().status(), StatusCode::OK, "{open}");
    }
    for closed in ["/jobs", "/deliveries/dead", "/destinations", "/jobs/1/preview.png"] {
        let resp = plain.get(url(closed)).send().unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{closed}");
    }
    let resp = plain
        .post(url(&format!("/jobs/{}/rerun", s.jobs.delivered)))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    for page in ["/", "/console/dead", "/console/jobs/1"] {
        let resp = plain.get(url(page)).send().unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{page}");
        assert_eq!(resp.headers()["location"], "/sign-in");
    }

    // Scripts: HTTP Basic.
    let resp = plain
        .get(url("/jobs"))
        .basic_auth("admin", Some("wrong"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = plain
        .get(url("/jobs"))
        .basic_auth("admin", Some("s3cret pass"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // Browsers: the form, then the cookie.
    let form = |password: &str| [("user", "admin".to_owned()), ("password", password.to_owned())];
    let resp = plain.post(url("/sign-in")).form(&form("guess")).send().unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().get("set-cookie").is_none());
    assert!(resp.text().unwrap().contains("Wrong user name or password"));
    let resp = plain.post(url("/sign-in")).form(&form("s3cret pass")).send().unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_owned();
    let page = plain.get(url("/")).header("cookie", &session).send().unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["cache-control"], "no-store");
    let html = page.text().unwrap();
    assert!(
        html.contains("Signed in as admin") && html.contains("FCD type II suspected"),
        "{html}"
    );

    // Another site cannot act with the cookie.
    let resp = plain
        .post(url(&format!("/console/jobs/{}/rerun", s.jobs.delivered)))
        .header("cookie", &session)
        .header("origin", "https://elsewhere.example")
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = plain
        .post(url(&format!("/console/jobs/{}/rerun", s.jobs.delivered)))
        .header("cookie", &session)
        .header("origin", &s.base)
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER, "same-site form post");

    let resp = plain.post(url("/sign-out")).header("cookie", &session).send().unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert!(resp.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    let resp = plain.get(url("/jobs")).header("cookie", &session).send().unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "the session ended");
}

#[test]
fn console_pages_show_jobs_results_and_dead_letters() {
    let s = serve();
    let (status, ct, html) = s.text("/");
    assert_eq!(status, StatusCode::OK);
    assert!(ct.starts_with("text/html"), "{ct}");
    for id in [s.jobs.undeliverable, s.jobs.delivered, s.jobs.failed, s.jobs.received] {
        assert!(html.contains(&format!("href=\"/console/jobs/{id}\"")), "job {id}");
    }
    assert!(html.contains(&format!("src=\"/jobs/{}/preview.png\"", s.jobs.delivered)));
    assert!(html.contains("87.0 %"), "probability");
    let (status, _, html) = s.text(&format!("/console/jobs/{}", s.jobs.undeliverable));
    assert_eq!(status, StatusCode::OK);
    for expected in [
        "FCD type II suspected",
        "probability 87.0 %",
        "threshold 50.0 %",
        "Hotspot on source slice 18",
        "fcd-demo 1.0",
        "association rejected permanently",
        "/console/jobs/1/rerun",
        "Resend 1 dead letter(s)",
    ] {
        assert!(html.contains(expected), "{expected:?} missing");
    }
    let (_, _, html) = s.text("/console/dead");
    assert!(html.contains("/console/deliveries/") && html.contains("archive"));
    let (status, _, html) = s.text("/console/jobs/424242");
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(html.contains("no job 424242"));
    // Values are escaped: a job's reason with markup stays text.
    s.state
        .db
        .set_state(s.jobs.received, JobState::Failed, Some("<script>x</script>"))
        .unwrap();
    let (_, _, html) = s.text(&format!("/console/jobs/{}", s.jobs.received));
    assert!(html.contains("&lt;script&gt;x&lt;/script&gt;") && !html.contains("<script>x"));
}
