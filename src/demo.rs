//! `fcdnode demo`: the whole loop on one machine. Synthesises an FCD patient and a control as
//! DICOM, starts the node with a model package, sends the series by C-STORE as a scanner would,
//! receives the SC, Parametric Map, Segmentation (suspected studies) and SR in a built-in receiver
//! playing the PACS, and reports the triage.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dicom_dictionary_std::tags;
use dicom_object::OpenFileOptions;

use crate::config::Config;
use crate::deliver::{self, Destination, EXPLICIT_VR_LE};
use crate::dicom_build::get_str;
use crate::ingest::{self, IngestStats, InstanceSink, ScpConfig};
use crate::nifti;
use crate::report::ResultSummary;
use crate::spool::FolderSink;
use crate::spool::db::JobState;
use crate::synth::{self, CohortOptions, DicomExport};
use crate::volume::nearest_distance;

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
#[error("demo, {step}: {message}")]
pub struct DemoError {
    step: &'static str,
    message: String,
}

fn fail(step: &'static str) -> impl Fn(String) -> DemoError {
    move |message| DemoError { step, message }
}

/// Knobs of the demo.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Working directory (patients, node state, received results); emptied first.
    pub out: PathBuf,
    /// Model package.
    pub model: PathBuf,
    /// Seed of the synthetic patients.
    pub seed: u64,
    /// Give up waiting for results after this long.
    pub timeout: Duration,
}

/// One synthetic subject's outcome.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SubjectResult {
    /// `sub-XXXXX`.
    pub subject: String,
    /// `fcd` or `hc`: the truth.
    pub group: String,
    /// Job state at the end.
    pub state: String,
    /// The node's result.json, when made.
    pub result: Option<ResultSummary>,
    /// The job's result directory (preview.png is there).
    pub result_dir: Option<PathBuf>,
    /// Distance in mm from the reported hotspot to the nearest voxel of the synthetic lesion's
    /// ROI (0 inside it): patients with a hotspot only.
    pub hotspot_to_lesion_mm: Option<f64>,
}

/// What the demo did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DemoReport {
    /// Per subject.
    pub subjects: Vec<SubjectResult>,
    /// Files the built-in PACS received.
    pub received: Vec<PathBuf>,
    /// Seconds from the first C-STORE to the last result received.
    pub seconds: f64,
}

/// Runs the demo; `base` supplies routing and runtime settings (checked after the demo's own
/// values are put in).
pub async fn run(options: &DemoOptions, base: &Config) -> Result<DemoReport, DemoError> {
    let out = &options.out;
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| fail("clean")(format!("{}: {e}", out.display())))?;
    }
    let patients = out.join("patients");
    let pacs = out.join("pacs");
    std::fs::create_dir_all(&pacs).map_err(|e| fail("clean")(format!("{}: {e}", pacs.display())))?;

    eprintln!(
        "1/4 synthesising an FCD patient and a control as DICOM under {}",
        patients.display()
    );
    let cohort = {
        let patients = patients.clone();
        let seed = options.seed;
        tokio::task::spawn_blocking(move || {
            synth::generate(
                &patients,
                &CohortOptions {
                    subjects: 2,
                    fcd_fraction: 0.5,
                    seed,
                    // The default lesion (8 mm, contrast 1.0): models/demo was trained on lesions
                    // down to it.
                    dicom: Some(DicomExport {
                        order: synth::SliceOrder::Asc,
                        enhanced: false,
                        transfer_syntax: EXPLICIT_VR_LE.into(),
                    }),
                    preview: false,
                    ..CohortOptions::default()
                },
            )
        })
        .await
        .map_err(|e| fail("synth")(e.to_string()))?
        .map_err(|e| fail("synth")(e.to_string()))?
    };

    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| fail("receiver")(e.to_string()))?;
    let receiver_port = receiver
        .local_addr()
        .map_err(|e| fail("receiver")(e.to_string()))?
        .port();
    let receiver_config = ScpConfig {
        ae_title: "DEMO_PACS".into(),
        other_storage: ingest::OtherStorage::Store,
        ..ScpConfig::default()
    }
    .check()
    .map_err(|e| fail("receiver")(e.to_string()))?;
    let sink: Arc<dyn InstanceSink> = Arc::new(FolderSink::new(&pacs));
    let receiver_task = tokio::spawn(ingest::serve(
        receiver,
        Arc::new(receiver_config),
        sink,
        Arc::new(IngestStats::default()),
        stop_rx,
    ));

    let mut config = base.clone();
    config.node.data_dir = out.join("node");
    config.node.model = options.model.clone();
    config.scp.bind = "127.0.0.1:0".into();
    config.api.bind = "127.0.0.1:0".into();
    config.tracker.stable_age_s = 2.0;
    config.destinations = vec![Destination::new("demo-pacs", "DEMO_PACS", "127.0.0.1", receiver_port)];
    config.outbox.send_to = vec!["demo-pacs".into()];
    let settings = config
        .validate(Path::new("(demo)"))
        .map_err(|e| fail("settings")(e.to_string()))?;
    eprintln!("2/4 starting the node with model {}", options.model.display());
    let node = crate::service::start(settings.clone())
        .await
        .map_err(|e| fail("start")(e.to_string()))?;
    let node_dest = Destination::new(
        "fcdnode",
        &settings.scp.config.ae_title,
        "127.0.0.1",
        node.dicom_addr.port(),
    );

    eprintln!(
        "3/4 sending both subjects' T1w and FLAIR series by C-STORE to {}@{}",
        settings.scp.config.ae_title, node.dicom_addr
    );
    let start = Instant::now();
    let mut studies = Vec::new();
    for p in &cohort.participants {
        let subject_dir = patients.join("dicom").join(&p.id);
        let files =
            crate::assemble::list_files(std::slice::from_ref(&subject_dir)).map_err(|e| fail("send")(e.to_string()))?;
        studies.push((p.id.clone(), p.group.to_string(), study_uid(&files)));
        let outcomes = deliver::send(&node_dest, "DEMO_MRI", &files)
            .await
            .map_err(|e| fail("send")(e.to_string()))?;
        if let Some(bad) = outcomes.iter().find(|o| o.result.is_err()) {
            return Err(fail("send")(format!("{}: {:?}", bad.path.display(), bad.result)));
        }
    }

    eprintln!("4/4 waiting for the SC, PM, SEG and SR to come back (stable age 2 s, then inference)");
    let db = node.db.clone();
    let deadline = Instant::now() + options.timeout;
    let jobs = loop {
        let jobs = db.jobs(100).map_err(|e| fail("wait")(e.to_string()))?;
        let done = jobs
            .iter()
            .filter(|j| {
                matches!(
                    j.state,
                    JobState::Delivered | JobState::Failed | JobState::Undeliverable
                )
            })
            .count();
        if done >= studies.len() || Instant::now() > deadline {
            break jobs;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let seconds = start.elapsed().as_secs_f64();
    node.shutdown().await;
    let _ = stop.send(true);
    let _ = receiver_task.await;

    let subjects = studies
        .into_iter()
        .map(|(subject, group, study)| {
            let job = jobs.iter().find(|j| Some(&j.study_uid) == study.as_ref());
            let result_dir = job.and_then(|j| j.result_dir.clone());
            let result = match &result_dir {
                Some(dir) => {
                    Some(ResultSummary::read(&dir.join("result.json")).map_err(|e| fail("collect")(e.to_string()))?)
                }
                None => None,
            };
            let hotspot = result.as_ref().and_then(|r| r.hotspot_lps);
            let hotspot_to_lesion_mm = match (hotspot, group.as_str()) {
                (Some(lps), "fcd") => Some(distance_to_lesion(&patients.join(&subject), lps)?),
                _ => None,
            };
            Ok(SubjectResult {
                subject,
                group,
                state: job.map_or_else(|| "no job".into(), |j| j.state.as_str().to_string()),
                result,
                result_dir,
                hotspot_to_lesion_mm,
            })
        })
        .collect::<Result<Vec<_>, DemoError>>()?;
    let mut received: Vec<PathBuf> = std::fs::read_dir(&pacs)
        .map_err(|e| fail("collect")(e.to_string()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    received.sort();
    Ok(DemoReport {
        subjects,
        received,
        seconds,
    })
}

fn study_uid(files: &[PathBuf]) -> Option<String> {
    let first: &Path = files.first()?;
    let obj = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(first)
        .ok()?;
    get_str(&obj, tags::STUDY_INSTANCE_UID)
}

/// Distance in mm from `lps` to the nearest voxel centre of the subject's FLAIR lesion ROI
/// (`SUBJECT/anat/*_FLAIR_roi.nii.gz`, written by synth beside the DICOM).
fn distance_to_lesion(subject_dir: &Path, lps: [f64; 3]) -> Result<f64, DemoError> {
    let anat = subject_dir.join("anat");
    let roi_path = std::fs::read_dir(&anat)
        .map_err(|e| fail("lesion")(format!("{}: {e}", anat.display())))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("_FLAIR_roi.nii.gz"))
        .ok_or_else(|| fail("lesion")(format!("no FLAIR ROI under {}", anat.display())))?;
    let roi = nifti::read(&roi_path).map_err(|e| fail("lesion")(e.to_string()))?;
    nearest_distance(&roi.mask_points(), lps)
        .ok_or_else(|| fail("lesion")(format!("{}: empty ROI", roi_path.display())))
}
