//! `fcdnode bench node`: the running node measured from outside, as a scanner and a PACS see it.
//!
//! - **Series turnaround**: a modality (`fcdnode::deliver::send`) C-STOREs a FLAIR series to a
//!   node started in this process (`fcdnode::service::start`, stable age 1 s, a full-width
//!   ResNet-18 of random weights); a built-in receiver (`fcdnode::ingest::serve`) plays the
//!   PACS. Measured from the modality's last C-STORE-RSP (the return of `send`, after the
//!   A-RELEASE) to the moment the receiver has stored the SR and answers its C-STORE-RQ. Each
//!   run sends the series under new Study/Series/SOP Instance UIDs to the same running node, so
//!   run 1 is the node's first series and later runs see a warm ONNX Runtime session.
//! - **Ingest throughput**: DCMTK `storescu` sends the same files to the node's SCP + durable
//!   spool (a second node with a stable age that never expires) and to DCMTK `storescp`, in
//!   alternating order, `TCP_NODELAY=1` for both tools; file bytes / storescu wall time.
//!
//! Prints figures, asserts nothing. Part of the binary: it only composes library parts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};

use super::peak_rss_bytes;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::OpenFileOptions;
use fcdnode::config::{Config, Settings};
use fcdnode::deliver::{self, Destination};
use fcdnode::infer::Device;
use fcdnode::ingest::{self, IngestStats, InstanceSink, OtherStorage, ReceivedInstance, ScpConfig, StoreOutcome};
use fcdnode::report::{ResultSummary, Timings};
use fcdnode::service;
use fcdnode::spool::FolderSink;
use fcdnode::spool::db::{JobRow, JobState};

use super::infer::InferBench;
use super::median;

const SR_COMPREHENSIVE_3D: &str = "1.2.840.10008.5.1.4.1.1.88.34";
const NODE_AE: &str = "FCDNODE";
const PACS_AE: &str = "BENCH_PACS";
const MODALITY_AE: &str = "BENCH_MRI";

/// What to measure.
#[derive(Clone, Debug)]
pub struct NodeBench {
    /// A FLAIR series to send; a 1 mm sagittal 256×256×176 synthetic one when absent.
    pub flair_dir: Option<PathBuf>,
    /// Runs of each measurement.
    pub runs: usize,
    /// Model grid voxel size in mm (the grid covers 192×224×192 mm).
    pub voxel_mm: f64,
    /// Tracker, pipeline and outbox poll interval in seconds.
    pub poll_s: f64,
    /// Series sent for the turnaround (at least `runs`); the resident memory is noted after the
    /// 1st, 10th, 100th and last.
    pub series: usize,
    /// Studies (T1w + FLAIR each) sent at once for the many-studies figures; 0: none.
    pub studies: usize,
    /// Modalities sending those studies side by side.
    pub senders: usize,
    /// Modalities each sending a copy of the series at once, to the node and to storescp, for
    /// the aggregate ingest throughput; 0: none.
    pub ingest_senders: usize,
    /// Execution provider of the nodes' sessions (`cuda`: an error if it is unavailable).
    pub device: Device,
    /// Leave out the ingest comparison with storescp (for a machine without DCMTK).
    pub skip_ingest: bool,
}

/// One turnaround run.
#[derive(Clone, Debug)]
struct Turnaround {
    /// Last C-STORE-RSP → SR stored by the receiver.
    total: Duration,
    /// Last C-STORE-RSP → the job's last object stored by the receiver.
    all: Option<Duration>,
    /// The job's per-stage times from its result.json.
    stages: Option<Timings>,
}

/// One ingest run: storescu wall times.
#[derive(Clone, Copy, Debug)]
struct Ingest {
    node: Duration,
    storescp: Duration,
}

/// Runs the benchmark in a temporary directory and prints the figures.
pub fn command(bench: &NodeBench) -> Result<()> {
    ensure!(bench.runs > 0, "--runs must be at least 1");
    let work = std::env::temp_dir().join(format!("fcdnode-bench-node-{}", std::process::id()));
    let result = run(&work, bench);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn run(work: &Path, bench: &NodeBench) -> Result<()> {
    std::fs::create_dir_all(work).with_context(|| work.display().to_string())?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());

    let files = match &bench.flair_dir {
        Some(dir) => fcdnode::assemble::list_files(std::slice::from_ref(dir))?,
        None => {
            let dir = work.join("flair");
            eprintln!("writing a 1 mm sagittal synthetic FLAIR series into {}", dir.display());
            super::infer::write_flair(&dir)?;
            fcdnode::assemble::list_files(&[dir])?
        }
    };
    ensure!(!files.is_empty(), "no DICOM files in the FLAIR directory");
    let bytes = total_bytes(&files)?;
    let (rows, columns) = matrix(&files[0])?;

    let model = work.join("model");
    let manifest = super::infer::write_model(
        &model,
        &InferBench {
            arch: "resnet18".into(),
            width_mult: 1.0,
            voxel_mm: bench.voxel_mm,
            runs: 0,
            device: Device::Auto,
            onnxruntime: None,
            io_binding: false,
        },
    )?;
    let shape = manifest.preprocess.shape;
    println!(
        "series: {} files of {rows}×{columns} pixels ({} slices × {rows} × {columns}), {:.1} MB; \
         model: ResNet-18 full width, random weights, input 1×{}×{}×{} ({} mm); {cores} CPU core(s); \
         execution provider {:?}",
        files.len(),
        files.len(),
        bytes as f64 / 1e6,
        shape[2],
        shape[1],
        shape[0],
        bench.voxel_mm,
        bench.device
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;

    let mut base = Config::default();
    base.runtime.device = bench.device;
    if bench.skip_ingest {
        println!("ingest: not measured (--skip-ingest)");
    } else {
        let ingest = runtime.block_on(ingest_runs(work, &base, &model, &files, bench.runs, 1))?;
        print_ingest(&ingest, bytes);
    }
    if bench.ingest_senders > 0 && !bench.skip_ingest {
        let senders = bench.ingest_senders;
        let concurrent = runtime.block_on(ingest_runs(work, &base, &model, &files, bench.runs, senders))?;
        print_concurrent_ingest(&concurrent, bytes * senders as u64, senders);
    }

    let (turnaround, rss_after) = runtime.block_on(turnaround_runs(work, &base, &model, &files, bench))?;
    print_turnaround(&turnaround, bench);
    if !rss_after.is_empty() {
        let cells: Vec<String> = rss_after
            .iter()
            .map(|(n, b)| format!("after {n}: {:.0} MiB", *b as f64 / 1048576.0))
            .collect();
        println!(
            "resident memory of this process (node, receiver, generated series) {}",
            cells.join(", ")
        );
    }
    if bench.studies > 0 {
        runtime.block_on(many_studies(work, &base, &model, &files, bench))?;
    }

    match peak_rss_bytes() {
        Some(b) => println!(
            "peak RSS: {:.0} MiB (this process: both in-process nodes, the receiver, series and model generation)",
            b as f64 / 1048576.0
        ),
        None => println!("peak RSS: unavailable (no /proc/self/status)"),
    }
    Ok(())
}

/// Node settings for a bench node in `data_dir`.
fn node_settings(
    base: &Config,
    data_dir: &Path,
    model: &Path,
    stable_age_s: f64,
    poll_s: f64,
    destination: Option<Destination>,
) -> Result<Settings> {
    let mut c = base.clone();
    c.node.data_dir = data_dir.to_path_buf();
    c.node.model = model.to_path_buf();
    c.scp.ae_title = NODE_AE.into();
    c.scp.bind = "127.0.0.1:0".into();
    c.api.enabled = false;
    c.tracker.stable_age_s = stable_age_s;
    c.tracker.poll_s = poll_s;
    c.pipeline.poll_s = poll_s;
    c.outbox.poll_s = poll_s;
    c.outbox.send_to = destination.iter().map(|d| d.name.clone()).collect();
    c.destinations = destination.into_iter().collect();
    Ok(c.validate(Path::new("(bench node)"))?)
}

// ---------------------------------------------------------------------------------------------
// Series turnaround

/// The PACS: stores every instance as a file and notes when each SOP class arrived.
struct TimedSink {
    files: FolderSink,
    arrivals: Mutex<Vec<(String, Instant)>>,
    /// When each SOP Instance UID arrived (kept across [`TimedSink::clear`]).
    by_sop: Mutex<std::collections::HashMap<String, Instant>>,
}

impl TimedSink {
    fn clear(&self) {
        if let Ok(mut a) = self.arrivals.lock() {
            a.clear();
        }
    }

    fn arrived(&self, sop_class: &str) -> Option<Instant> {
        let a = self.arrivals.lock().ok()?;
        a.iter().find(|(c, _)| c == sop_class).map(|(_, t)| *t)
    }

    /// Deletes what the PACS stored in `dir`.
    fn remove_files(&self, dir: &Path) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "dcm") {
                std::fs::remove_file(path)?;
            }
        }
        Ok(())
    }

    fn last(&self) -> Option<Instant> {
        let a = self.arrivals.lock().ok()?;
        a.last().map(|(_, t)| *t)
    }
}

impl InstanceSink for TimedSink {
    fn staging_dir(&self) -> std::path::PathBuf {
        self.files.staging_dir()
    }

    fn store(&self, instance: ReceivedInstance) -> StoreOutcome {
        let class = instance.sop_class_uid.clone();
        let sop = instance.sop_instance_uid.clone();
        let outcome = self.files.store(instance);
        if matches!(outcome, StoreOutcome::Stored)
            && let Ok(mut a) = self.arrivals.lock()
        {
            a.push((class, Instant::now()));
            if let Ok(mut by_sop) = self.by_sop.lock() {
                by_sop.insert(sop, Instant::now());
            }
        }
        outcome
    }
}

async fn turnaround_runs(
    work: &Path,
    base: &Config,
    model: &Path,
    files: &[PathBuf],
    bench: &NodeBench,
) -> Result<(Vec<Turnaround>, Vec<(usize, u64)>)> {
    let pacs_dir = work.join("pacs");
    let pacs = Receiver::start(&pacs_dir).await?;
    let (sink, pacs_port) = (pacs.sink.clone(), pacs.port);

    const STABLE_AGE_S: f64 = 1.0;
    let settings = node_settings(
        base,
        &work.join("node-turnaround"),
        model,
        STABLE_AGE_S,
        bench.poll_s,
        Some(Destination::new("bench-pacs", PACS_AE, "127.0.0.1", pacs_port)),
    )?;
    eprintln!("turnaround: starting the node (loading the model)");
    let node = service::start(settings).await?;
    let node_dest = Destination::new("fcdnode", NODE_AE, "127.0.0.1", node.dicom_addr.port());
    let result = async {
        let mut runs = Vec::new();
        let mut rss_after = Vec::new();
        let total = bench.runs.max(bench.series);
        for n in 1..=total {
            let sent_dir = work.join(format!("turnaround-{n}"));
            let series = relabel(files, &sent_dir, n)?;
            sink.clear();
            let outcomes = deliver::send(&node_dest, MODALITY_AE, &series.files).await?;
            let last_rsp = Instant::now();
            if let Some(bad) = outcomes.iter().find(|o| o.result.is_err()) {
                bail!("C-STORE of {} to the node: {:?}", bad.path.display(), bad.result);
            }
            let deadline = last_rsp + Duration::from_secs(600);
            let mut polls = 0u64;
            let sr = loop {
                if let Some(t) = sink.arrived(SR_COMPREHENSIVE_3D) {
                    break t;
                }
                if Instant::now() > deadline {
                    bail!("run {n}: no SR at the receiver after 600 s");
                }
                // A job that failed never sends an SR; look now and then (the node shares the CPU).
                polls += 1;
                if polls.is_multiple_of(100) {
                    let jobs = node.db.jobs(1000)?;
                    let job = jobs.iter().find(|j| j.study_uid == series.study_uid);
                    if let Some(j) = job.filter(|j| matches!(j.state, JobState::Failed | JobState::Undeliverable)) {
                        bail!("run {n}: job {} {}: {:?}", j.id, j.state.as_str(), j.reason);
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            };
            // Settled: every object is at the receiver.
            let stages = job_timings(&node.db, &series.study_uid).await;
            let run = Turnaround {
                total: sr.saturating_duration_since(last_rsp),
                all: sink.last().map(|t| t.saturating_duration_since(last_rsp)),
                stages,
            };
            eprintln!(
                "turnaround run {n}: {:.3} s (minus stable age {:.3} s)",
                run.total.as_secs_f64(),
                run.total.as_secs_f64() - STABLE_AGE_S
            );
            runs.push(run);
            if [1, 10, 100, total].contains(&n)
                && let Some(rss) = super::rss_bytes()
            {
                rss_after.push((n, rss));
            }
            // Many series would fill the disk: what was sent and what the PACS got go.
            std::fs::remove_dir_all(&sent_dir)?;
            sink.remove_files(&pacs_dir)?;
        }
        Ok((runs, rss_after))
    }
    .await;
    node.shutdown().await;
    pacs.stop().await;
    result
}

/// The PACS of the benchmarks: a built-in receiver storing into a folder, timing arrivals.
struct Receiver {
    sink: Arc<TimedSink>,
    port: u16,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), ingest::IngestError>>,
}

impl Receiver {
    async fn start(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let sink = Arc::new(TimedSink {
            files: FolderSink::new(dir),
            arrivals: Mutex::new(Vec::new()),
            by_sop: Mutex::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(ingest::serve(
            listener,
            Arc::new(
                ScpConfig {
                    ae_title: PACS_AE.into(),
                    // The outputs are not MR: hand them to the sink instead of discarding them.
                    other_storage: OtherStorage::Store,
                    ..ScpConfig::default()
                }
                .check()?,
            ),
            sink.clone() as Arc<dyn InstanceSink>,
            Arc::new(IngestStats::default()),
            stop_rx,
        ));
        Ok(Self { sink, port, stop, task })
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

// ---------------------------------------------------------------------------------------------
// Many studies at once

/// One study of the many-studies run.
struct StudyRun {
    sender: usize,
    /// The study's last C-STORE-RSP (its FLAIR's association released), from the start.
    sent: Duration,
    /// Its SR stored by the receiver, from the start.
    sr: Duration,
    /// The job's pipeline time until its SR was handed on.
    pipeline: Duration,
    /// Assembling and preprocessing its series.
    prepare: Duration,
    /// Its prepared input waiting for the model (busy with the job before).
    model_wait: Duration,
}

/// Sends `bench.studies` studies (T1w then FLAIR) from `bench.senders` modalities at once to a
/// fresh node and times each study's SR.
async fn many_studies(work: &Path, base: &Config, model: &Path, flair: &[PathBuf], bench: &NodeBench) -> Result<()> {
    let t1w_dir = work.join("t1w");
    eprintln!(
        "many studies: writing a T1w series of the same patient into {}",
        t1w_dir.display()
    );
    super::infer::write_t1w(&t1w_dir)?;
    let t1w = fcdnode::assemble::list_files(std::slice::from_ref(&t1w_dir))?;
    let senders = bench.senders.clamp(1, bench.studies);
    let mut studies: Vec<Vec<Relabelled>> = (0..senders).map(|_| Vec::new()).collect();
    for s in 0..bench.studies {
        let dir = work.join(format!("study-{s}"));
        let t1 = relabel_into(&t1w, &dir.join("t1w"), 1000 + 2 * s, None)?;
        let fl = relabel_into(flair, &dir.join("flair"), 1001 + 2 * s, Some(&t1.study_uid))?;
        studies[s % senders].push(t1);
        studies[s % senders].push(fl);
    }
    let pacs = Receiver::start(&work.join("pacs-many")).await?;
    let settings = node_settings(
        base,
        &work.join("node-many"),
        model,
        1.0,
        bench.poll_s,
        Some(Destination::new("bench-pacs", PACS_AE, "127.0.0.1", pacs.port)),
    )?;
    eprintln!("many studies: starting the node (loading the model)");
    let node = service::start(settings).await?;
    let dest = Destination::new("fcdnode", NODE_AE, "127.0.0.1", node.dicom_addr.port());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (sender, series) in studies.into_iter().enumerate() {
        let dest = dest.clone();
        tasks.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            for s in series {
                let outcomes = deliver::send(&dest, &format!("BENCH_MRI{sender}"), &s.files).await?;
                if let Some(bad) = outcomes.iter().find(|o| o.result.is_err()) {
                    bail!("C-STORE of {} to the node: {:?}", bad.path.display(), bad.result);
                }
                sent.push((s.study_uid, start.elapsed()));
            }
            anyhow::Ok((sender, sent))
        }));
    }
    // The last series sent of a study is its FLAIR: its time stands.
    let mut sent_at: std::collections::BTreeMap<String, (usize, Duration)> = Default::default();
    for task in tasks {
        let (sender, sent) = task.await??;
        for (study, t) in sent {
            sent_at.insert(study, (sender, t));
        }
    }
    let result = async {
        let deadline = Instant::now() + Duration::from_secs(1800);
        let jobs = loop {
            let jobs: Vec<JobRow> = node.db.jobs(10_000)?;
            let settled = |j: &JobRow| {
                matches!(
                    j.state,
                    JobState::Delivered | JobState::Failed | JobState::Undeliverable
                )
            };
            if jobs.len() >= sent_at.len() && jobs.iter().all(settled) {
                break jobs;
            }
            ensure!(Instant::now() < deadline, "many studies: jobs not settled after 1800 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mut runs = Vec::new();
        for job in &jobs {
            ensure!(
                job.state == JobState::Delivered,
                "job {} {}: {:?}",
                job.id,
                job.state.as_str(),
                job.reason
            );
            let dir = job.result_dir.clone().context("a delivered job without results")?;
            let summary = ResultSummary::read(&dir.join("result.json"))?;
            let sr_path = dir.join(summary.sr_file.as_deref().context("no SR made")?);
            let header = OpenFileOptions::new()
                .read_until(tags::PIXEL_DATA)
                .open_file(&sr_path)?;
            let sop = header
                .element(tags::SOP_INSTANCE_UID)?
                .to_str()?
                .trim_end_matches('\0')
                .to_string();
            let arrived = pacs
                .sink
                .by_sop
                .lock()
                .ok()
                .and_then(|m| m.get(&sop).copied())
                .context("SR not at the receiver")?;
            let (sender, sent) = *sent_at.get(&job.study_uid).context("a job for a study not sent")?;
            runs.push(StudyRun {
                sender,
                sent,
                sr: arrived.saturating_duration_since(start),
                pipeline: Duration::from_secs_f64(summary.timings_ms.decided / 1000.0),
                prepare: Duration::from_secs_f64(
                    (summary.timings_ms.assemble + summary.timings_ms.preprocess) / 1000.0,
                ),
                model_wait: Duration::from_secs_f64(summary.timings_ms.wait / 1000.0),
            });
        }
        Ok(runs)
    }
    .await;
    node.shutdown().await;
    pacs.stop().await;
    print_many(&result?, bench, flair.len() + t1w.len());
    Ok(())
}

fn print_many(runs: &[StudyRun], bench: &NodeBench, files_per_study: usize) {
    println!(
        "\nmany studies: {} studies (T1w + FLAIR, {files_per_study} files each) from {} modalities at once; \
         stable age 1 s; one model, the next job prepared beside it",
        runs.len(),
        bench.senders.clamp(1, bench.studies)
    );
    println!(
        "  study  sender  sent at (s)  SR at (s)  turnaround (s)  −stable (s)  to SR (s)  waited (s)  prepared (s)  for model (s)"
    );
    let mut turnarounds = Vec::new();
    let mut ordered: Vec<&StudyRun> = runs.iter().collect();
    ordered.sort_by_key(|r| r.sr);
    for (n, r) in ordered.iter().enumerate() {
        let turnaround = r.sr.saturating_sub(r.sent).as_secs_f64();
        turnarounds.push(turnaround);
        println!(
            "  {:>5}  {:>6}  {:>11.2}  {:>9.2}  {:>14.2}  {:>11.2}  {:>9.2}  {:>10.2}  {:>12.2}  {:>13.2}",
            n + 1,
            r.sender + 1,
            r.sent.as_secs_f64(),
            r.sr.as_secs_f64(),
            turnaround,
            turnaround - 1.0,
            r.pipeline.as_secs_f64(),
            // Neither stable age nor its own pipeline up to the SR: queued behind other jobs.
            (turnaround - 1.0 - r.pipeline.as_secs_f64()).max(0.0),
            r.prepare.as_secs_f64(),
            r.model_wait.as_secs_f64()
        );
    }
    // An input that waited for the model was assembled and preprocessed while the model (or
    // the outputs after it) worked on the job before.
    let ahead: Vec<&StudyRun> = runs
        .iter()
        .filter(|r| r.model_wait > Duration::from_millis(1))
        .collect();
    println!(
        "  {} of {} jobs were assembled and preprocessed while the job before held the model ({:.2} s of \
         preparation overlapped); the model ran one job at a time (one session)",
        ahead.len(),
        runs.len(),
        ahead.iter().map(|r| r.prepare.as_secs_f64()).sum::<f64>()
    );
    turnarounds.sort_by(f64::total_cmp);
    // Nearest rank.
    let rank = |p: f64| turnarounds[((p * turnarounds.len() as f64).ceil() as usize).clamp(1, turnarounds.len()) - 1];
    let span = runs.iter().map(|r| r.sr).max().unwrap_or_default().as_secs_f64();
    if !turnarounds.is_empty() {
        println!(
            "  turnaround p50 {:.2} s, p95 {:.2} s; {:.0} studies/hour (first C-STORE → last SR, {span:.1} s)",
            rank(0.50),
            rank(0.95),
            runs.len() as f64 * 3600.0 / span.max(1e-9)
        );
    }
}

/// The per-stage times of the job of `study_uid`, once it is delivered.
async fn job_timings(db: &fcdnode::spool::db::JobDb, study_uid: &str) -> Option<Timings> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let jobs = db.jobs(1000).ok()?;
        let done = |j: &&JobRow| {
            j.study_uid == study_uid
                && matches!(
                    j.state,
                    JobState::Delivered | JobState::Failed | JobState::Undeliverable
                )
        };
        if let Some(job) = jobs.iter().find(done) {
            let summary = ResultSummary::read(&job.result_dir.as_ref()?.join("result.json")).ok()?;
            return Some(summary.timings_ms);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn print_turnaround(runs: &[Turnaround], bench: &NodeBench) {
    println!(
        "\nseries turnaround: last C-STORE-RSP → SR acknowledged by the destination; stable age 1 s, \
         tracker/pipeline/outbox poll {} s",
        bench.poll_s
    );
    println!(
        "  run  raw (s)  −stable (s)  all at (s)  rest (ms) | {}  (ms)",
        super::STAGE_HEADS
    );
    for (n, r) in runs.iter().enumerate() {
        let raw = r.total.as_secs_f64();
        let cells = r.stages.as_ref().map_or_else(|| "-".into(), super::stage_cells);
        // What is neither stable age nor the pipeline up to the decision: hand-offs, the job
        // database, the SR's association.
        let rest = r
            .stages
            .as_ref()
            .map_or_else(|| "-".into(), |t| format!("{:.0}", raw * 1000.0 - 1000.0 - t.decided));
        println!(
            "  {:>3}  {:>7.3}  {:>11.3}  {:>10}  {:>9} | {cells}",
            n + 1,
            raw,
            raw - 1.0,
            r.all.map_or_else(|| "-".into(), |d| format!("{:.3}", d.as_secs_f64())),
            rest,
        );
    }
    let raw: Vec<f64> = runs.iter().map(|r| r.total.as_secs_f64()).collect();
    let med = median(&raw);
    println!(
        "  median {:.3} s raw, {:.3} s without the stable age (targets: ≤ 1.2 s on 2 CPU cores, ≤ 0.3 s on an H100); \
         run 1 is the node's first series",
        med,
        med - 1.0
    );
}

// ---------------------------------------------------------------------------------------------
// Ingest throughput

/// `senders` storescu processes at once (one association each), each sending its own copy of
/// the series under new UIDs (the node stores duplicates idempotently, which is not ingest), to
/// a node whose stable age never expires (only its SCP and spool work) and to storescp
/// (forking a process per association when there are several senders): wall time until the
/// last storescu is done, per run.
async fn ingest_runs(
    work: &Path,
    base: &Config,
    model: &Path,
    files: &[PathBuf],
    runs: usize,
    senders: usize,
) -> Result<Vec<Ingest>> {
    let mut base = base.clone();
    base.scp.max_associations = base.scp.max_associations.max(senders);
    let settings = node_settings(
        &base,
        &work.join(format!("node-ingest-{senders}")),
        model,
        1e7,
        1.0,
        None,
    )?;
    eprintln!("ingest ({senders} sender(s)): starting the node (loading the model)");
    let node = service::start(settings).await?;
    let node_port = node.dicom_addr.port();
    let result = async {
        let mut times = Vec::new();
        for n in 1..=runs {
            let copies_dir = work.join(format!("ingest-{senders}-{n}"));
            let mut copies = Vec::with_capacity(senders);
            for k in 0..senders {
                let dir = copies_dir.join(k.to_string());
                copies.push(relabel(files, &dir, 1000 + n * 100 + k)?.files);
            }
            let scp_port = free_port()?;
            let out = work.join(format!("storescp-{senders}-{n}"));
            std::fs::create_dir_all(&out)?;
            let storescp = if senders > 1 {
                StoreScp::start_forking(scp_port, &out).await?
            } else {
                StoreScp::start(scp_port, &out).await?
            };
            let run = tokio::task::spawn_blocking(move || {
                side_by_side(
                    n,
                    || send_at_once(NODE_AE, node_port, &copies),
                    || send_at_once("STORESCP", scp_port, &copies),
                )
            })
            .await??;
            drop(storescp);
            let _ = std::fs::remove_dir_all(&out);
            let _ = std::fs::remove_dir_all(&copies_dir);
            eprintln!(
                "ingest run {n} ({senders} sender(s)): node {:.3} s, storescp {:.3} s",
                run.node.as_secs_f64(),
                run.storescp.as_secs_f64()
            );
            times.push(run);
        }
        Ok(times)
    }
    .await;
    node.shutdown().await;
    result
}

/// Run `n` of a send to the node and the same send to storescp, in alternating order so that
/// neither side always gets the warmer page cache.
fn side_by_side(
    n: usize,
    to_node: impl Fn() -> Result<Duration>,
    to_scp: impl Fn() -> Result<Duration>,
) -> Result<Ingest> {
    if n % 2 == 1 {
        let node = to_node()?;
        Ok(Ingest {
            node,
            storescp: to_scp()?,
        })
    } else {
        let storescp = to_scp()?;
        Ok(Ingest {
            node: to_node()?,
            storescp,
        })
    }
}

/// One storescu per file list, all started together; the wall time until the last is done.
fn send_at_once(called_ae: &str, port: u16, series: &[Vec<PathBuf>]) -> Result<Duration> {
    let start = Instant::now();
    std::thread::scope(|scope| {
        let sending: Vec<_> = series
            .iter()
            .map(|files| scope.spawn(move || storescu(called_ae, port, files)))
            .collect();
        for s in sending {
            s.join().map_err(|_| anyhow!("a storescu thread panicked"))??;
        }
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(start.elapsed())
}

fn print_concurrent_ingest(runs: &[Ingest], bytes: u64, senders: usize) {
    let title = format!(
        "concurrent ingest: {senders} DCMTK storescu at once (one association each, TCP_NODELAY=1) → receiver, \
         {:.1} MB in all; storescp forks a process per association",
        bytes as f64 / 1e6
    );
    print_ingest_table(&title, runs, bytes);
}

/// DCMTK `storescp` writing into a directory; killed when dropped.
struct StoreScp {
    child: Child,
}

impl StoreScp {
    async fn start(port: u16, dir: &Path) -> Result<Self> {
        Self::launch(port, dir, &[]).await
    }

    /// A storescp that forks a child per association, so that concurrent senders are served
    /// concurrently (as the node serves them).
    async fn start_forking(port: u16, dir: &Path) -> Result<Self> {
        Self::launch(port, dir, &["--fork"]).await
    }

    async fn launch(port: u16, dir: &Path, extra: &[&str]) -> Result<Self> {
        let child = Command::new("storescp")
            .env("TCP_NODELAY", "1")
            .args(extra)
            .args(["-aet", "STORESCP", "--output-directory"])
            .arg(dir)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start DCMTK storescp (install dcmtk: scripts/setup.sh)")?;
        let scp = Self { child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if Instant::now() > deadline {
                bail!("storescp is not listening on port {port} after 20 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(scp)
    }
}

impl Drop for StoreScp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `files` with DCMTK `storescu` (one association) and returns its wall time.
fn storescu(called_ae: &str, port: u16, files: &[PathBuf]) -> Result<Duration> {
    let start = Instant::now();
    let out = Command::new("storescu")
        .env("TCP_NODELAY", "1")
        .args(["-aet", MODALITY_AE, "-aec", called_ae, "127.0.0.1"])
        .arg(port.to_string())
        .args(files)
        .output()
        .context("cannot run DCMTK storescu (install dcmtk: scripts/setup.sh)")?;
    let elapsed = start.elapsed();
    if !out.status.success() {
        bail!(
            "storescu to {called_ae}@127.0.0.1:{port} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(elapsed)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn print_ingest(runs: &[Ingest], bytes: u64) {
    let title = format!(
        "ingest throughput: DCMTK storescu (TCP_NODELAY=1) → receiver, {:.1} MB of files, wall time of storescu; \
         the node syncs each instance in its spool journal and records it in SQLite before answering, storescp \
         does neither",
        bytes as f64 / 1e6
    );
    print_ingest_table(&title, runs, bytes);
}

/// The runs' wall times and MB/s side by side, and the medians with the node/storescp ratio
/// (above 1: the node is faster).
fn print_ingest_table(title: &str, runs: &[Ingest], bytes: u64) {
    println!("\n{title}");
    println!("  run  node SCP+spool (s)  MB/s   storescp (s)  MB/s");
    let mbps = |d: Duration| bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9);
    for (n, r) in runs.iter().enumerate() {
        println!(
            "  {:>3}  {:>17.3}  {:>5.1}   {:>12.3}  {:>5.1}",
            n + 1,
            r.node.as_secs_f64(),
            mbps(r.node),
            r.storescp.as_secs_f64(),
            mbps(r.storescp)
        );
    }
    let node = median(&runs.iter().map(|r| r.node.as_secs_f64()).collect::<Vec<_>>());
    let scp = median(&runs.iter().map(|r| r.storescp.as_secs_f64()).collect::<Vec<_>>());
    println!(
        "  median: node {:.1} MB/s ({node:.3} s), storescp {:.1} MB/s ({scp:.3} s): node/storescp {:.2}×",
        bytes as f64 / 1e6 / node.max(1e-9),
        bytes as f64 / 1e6 / scp.max(1e-9),
        scp / node.max(1e-9)
    );
}

// ---------------------------------------------------------------------------------------------
// Series files

/// A copy of the series under new UIDs.
struct Relabelled {
    files: Vec<PathBuf>,
    study_uid: String,
}

/// Writes `files` into `dir` with new Study, Series and SOP Instance UIDs (run `n`), so that the
/// node sees a new series instead of duplicates.
fn relabel(files: &[PathBuf], dir: &Path, n: usize) -> Result<Relabelled> {
    relabel_into(files, dir, n, None)
}

/// [`relabel`] into the study `study_uid` when given (a second series of the same study).
fn relabel_into(files: &[PathBuf], dir: &Path, n: usize, study_uid: Option<&str>) -> Result<Relabelled> {
    std::fs::create_dir_all(dir)?;
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
        .wrapping_mul(1_000_000);
    let uid = |i: u128| pad(format!("2.25.{}", base.wrapping_add(n as u128 * 100_000 + i)));
    let study_uid = study_uid.map_or_else(|| uid(1), |u| pad(u.to_owned()));
    let series_uid = uid(2);
    let mut out = Vec::with_capacity(files.len());
    for (i, path) in files.iter().enumerate() {
        let mut obj = OpenFileOptions::new()
            .open_file(path)
            .with_context(|| path.display().to_string())?;
        let sop = uid(10 + i as u128);
        for (tag, value) in [
            (tags::STUDY_INSTANCE_UID, &study_uid),
            (tags::SERIES_INSTANCE_UID, &series_uid),
            (tags::SOP_INSTANCE_UID, &sop),
        ] {
            obj.put(DataElement::new(tag, VR::UI, PrimitiveValue::from(value.as_str())));
        }
        obj.update_meta(|m| m.media_storage_sop_instance_uid = sop.clone());
        let target = dir.join(format!("{i:05}.dcm"));
        obj.write_to_file(&target)
            .with_context(|| target.display().to_string())?;
        out.push(target);
    }
    Ok(Relabelled {
        files: out,
        study_uid: study_uid.trim_end_matches('\0').to_string(),
    })
}

/// UIDs are padded to an even length with NUL.
fn pad(mut uid: String) -> String {
    if uid.len() % 2 == 1 {
        uid.push('\0');
    }
    uid
}

fn total_bytes(files: &[PathBuf]) -> Result<u64> {
    files.iter().try_fold(0u64, |sum, f| {
        Ok(sum + std::fs::metadata(f).with_context(|| f.display().to_string())?.len())
    })
}

/// Rows and Columns of one file.
fn matrix(path: &Path) -> Result<(u16, u16)> {
    let obj = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .with_context(|| path.display().to_string())?;
    let get = |tag| -> Result<u16> {
        obj.element(tag)
            .map_err(|e| anyhow!("{}: {e}", path.display()))?
            .to_int::<u16>()
            .map_err(|e| anyhow!("{}: {e}", path.display()))
    };
    Ok((get(tags::ROWS)?, get(tags::COLUMNS)?))
}
