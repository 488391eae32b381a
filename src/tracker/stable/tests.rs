//! The tracker on a real job database and real DICOM files, with the clock passed in: stable
//! age, channel wait and the pick rule are checked at chosen instants, without sleeping.

use std::path::{Path, PathBuf};

use super::*;
use crate::spool::db::{InstanceRecord, JobState, now};
use crate::synth::dicom::{DicomOptions, SeriesInfo, write_series};
use crate::tracker::routing::{RoutingConfig, RuleConfig};
use crate::volume::{Plane, Volume, acquisition_grid};

const STUDY: &str = "1.2.826.0.1.3680043.10.99.1";

/// Routing that sends series named `FLAIR…` to FLAIR and `T1…` to T1w, nothing else.
fn router() -> Router {
    let rule = |name: &str, channel, names: &str| RuleConfig {
        name: name.into(),
        channel,
        names: Some(names.into()),
        exclude_names: None,
        scanning_sequence: None,
        sequence_variant: None,
        mr_acquisition_type: None,
        inversion_time_ms: None,
        echo_time_ms: None,
        repetition_time_ms: None,
        max_slice_thickness_mm: None,
        min_slices: None,
    };
    Router::new(&RoutingConfig {
        rules: vec![
            rule("flair", Some(Modality::Flair), "^flair"),
            rule("t1", Some(Modality::T1w), "^t1"),
        ],
    })
    .unwrap()
}

/// Writes a `slices`-slice series of the study under `dir` and records its files as received.
fn receive(db: &JobDb, dir: &Path, seed: u64, description: &str, slices: usize) -> (String, Vec<PathBuf>) {
    let grid = acquisition_grid(Plane::Axial, [4.0; 3], [32.0, 32.0, 4.0 * slices as f64], [0.0; 3]).unwrap();
    let volume = Volume::filled(&grid, 100.0).unwrap();
    let mut info = SeriesInfo::new(seed);
    info.study_instance_uid = STUDY.into();
    info.series_description = description.into();
    info.protocol_name = description.into();
    let series_dir = dir.join(format!("series-{seed}"));
    let mut files = write_series(&volume, &info, &DicomOptions::default(), &series_dir).unwrap();
    files.sort();
    for (n, path) in files.iter().enumerate() {
        let sop = format!("{}.{}", info.series_instance_uid, n + 1);
        db.record_instance(&InstanceRecord {
            sop_uid: &sop,
            series_uid: &info.series_instance_uid,
            study_uid: STUDY,
            path,
            series_dir: &series_dir,
            calling_ae: "MRI",
            size: 1,
        })
        .unwrap();
    }
    (info.series_instance_uid, files)
}

fn config() -> TrackerConfig {
    TrackerConfig {
        stable_age_s: 60.0,
        channel_wait_s: 600.0,
        poll_s: 1.0,
    }
}

#[test]
fn a_series_becomes_a_job_once_stable_with_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(JobDb::open(&dir.path().join("jobs.sqlite")).unwrap());
    let (series, files) = receive(&db, dir.path(), 1, "FLAIR 3D", 6);
    let t0 = now();
    let mut tracker = Tracker::new(db.clone(), router(), vec![Modality::Flair], config(), t0).unwrap();
    let early = tracker.tick(t0 + 30.0).unwrap();
    assert_eq!(early, Tick::default(), "not stable after 30 s of a 60 s stable age");
    let tick = tracker.tick(t0 + 61.0).unwrap();
    assert_eq!((tick.completed, tick.jobs.len()), (1, 1));
    let job = db.job(tick.jobs[0]).unwrap().unwrap();
    assert_eq!(job.state, JobState::Received);
    assert_eq!(job.series, vec![series.clone()]);
    assert_eq!(job.inputs.len(), 1);
    assert_eq!(job.inputs[0].files, files, "the job carries the series' instance files");
    let row = db.series(&series).unwrap().unwrap();
    assert_eq!(row.slices, Some(6));
    assert!(row.routing.unwrap().contains("flair"), "the routing reason is kept");
    assert_eq!(tracker.tick(t0 + 120.0).unwrap(), Tick::default(), "handled once");
}

#[test]
fn the_series_with_most_slices_feeds_the_channel() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(JobDb::open(&dir.path().join("jobs.sqlite")).unwrap());
    let (_partial, _) = receive(&db, dir.path(), 2, "FLAIR resend", 4);
    let (full, _) = receive(&db, dir.path(), 3, "FLAIR 3D", 7);
    let (ignored, _) = receive(&db, dir.path(), 4, "localizer", 3);
    let t0 = now();
    let mut tracker = Tracker::new(db.clone(), router(), vec![Modality::Flair], config(), t0).unwrap();
    let tick = tracker.tick(t0 + 61.0).unwrap();
    assert_eq!((tick.completed, tick.jobs.len()), (3, 1));
    assert_eq!(db.job(tick.jobs[0]).unwrap().unwrap().series, vec![full]);
    let row = db.series(&ignored).unwrap().unwrap();
    assert_eq!(row.channel, None);
    assert!(row.routing.unwrap().contains("no rule matched"));
}

#[test]
fn a_missing_channel_fails_the_study_after_the_channel_wait() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(JobDb::open(&dir.path().join("jobs.sqlite")).unwrap());
    let (flair, _) = receive(&db, dir.path(), 5, "FLAIR 3D", 5);
    let t0 = now();
    let channels = vec![Modality::T1w, Modality::Flair];
    let mut tracker = Tracker::new(db.clone(), router(), channels, config(), t0).unwrap();
    let tick = tracker.tick(t0 + 61.0).unwrap();
    assert_eq!((tick.completed, tick.jobs.len()), (1, 0), "waiting for T1w");
    assert!(tracker.tick(t0 + 61.0 + 599.0).unwrap().jobs.is_empty());
    let tick = tracker.tick(t0 + 61.0 + 601.0).unwrap();
    assert_eq!(tick.jobs.len(), 1);
    let job = db.job(tick.jobs[0]).unwrap().unwrap();
    assert_eq!(job.state, JobState::Failed);
    let failure = job.failure.unwrap();
    assert_eq!(failure.stage, "route");
    assert_eq!(failure.series_uid, Some(flair));
    assert!(failure.message.contains("T1w"), "{}", failure.message);
}
