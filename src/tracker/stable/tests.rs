//! The tracker on a real job database and real DICOM files, with the clock passed in: stable
//! age, channel wait and the pick rule are checked at chosen instants, without sleeping.

use std::path::{Path, PathBuf};

use super::*;
use crate::assemble::InstanceHeader;
use crate::spool::db::{InstanceRecord, JobState, StoredHeader, now};
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
            header: &StoredHeader::Usable(Box::new(InstanceHeader::read_file(path).unwrap())),
            synced: true,
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
    // Routing plans from the header facts stored at ingest: it never opens the files.
    for f in &files {
        std::fs::rename(f, f.with_extension("away")).unwrap();
    }
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
    let plan = job.inputs[0].plan.as_ref().expect("the job carries the tracker's plan");
    assert_eq!(plan.shape(), [8, 8, 6]);
    assert_eq!(plan.files(), files);
    let row = db.series(&series).unwrap().unwrap();
    assert_eq!(row.slices, Some(6));
    assert!(row.routing.unwrap().contains("flair"), "the routing reason is kept");
    assert_eq!(tracker.tick(t0 + 120.0).unwrap(), Tick::default(), "handled once");
}

/// A kill between routing a study's last series and creating its job (two transactions) leaves
/// a handled series and no job; the tracker of the restarted node makes the job on its first pass.
#[test]
fn a_study_handled_but_without_a_job_before_a_restart_gets_its_job() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(JobDb::open(&dir.path().join("jobs.sqlite")).unwrap());
    let (series, _) = receive(&db, dir.path(), 6, "FLAIR 3D", 6);
    let t0 = now();
    let before = Tracker::new(db.clone(), router(), vec![Modality::Flair], config(), t0).unwrap();
    let stable = db.stable_series(t0 + 61.0 - 60.0).unwrap();
    let row = stable.iter().find(|r| r.series_uid == series).unwrap();
    let (routed, reason) = before.route(row).unwrap();
    let plan = routed.map(|(c, plan)| (c.to_string(), plan)).unwrap();
    db.mark_handled(&series, row.generation, Some((plan.0, &plan.1)), &reason)
        .unwrap();
    // Killed here: no job. The restarted node's tracker:
    let mut after = Tracker::new(db.clone(), router(), vec![Modality::Flair], config(), t0 + 70.0).unwrap();
    let tick = after.tick(t0 + 71.0).unwrap();
    assert_eq!((tick.completed, tick.jobs.len()), (0, 1), "the job the kill cut off");
    assert_eq!(db.job(tick.jobs[0]).unwrap().unwrap().series, vec![series]);
    assert!(after.tick(t0 + 72.0).unwrap().jobs.is_empty(), "made once");
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

#[test]
fn instances_stored_before_header_facts_were_kept_are_read_from_their_files() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("jobs.sqlite");
    let db = Arc::new(JobDb::open(&db_path).unwrap());
    let (series, _) = receive(&db, dir.path(), 6, "FLAIR 3D", 5);
    rusqlite::Connection::open(&db_path)
        .unwrap()
        .execute("UPDATE instances SET header = NULL", [])
        .unwrap();
    assert!(db.series_instances(&series).unwrap().iter().all(|i| i.header.is_none()));
    let t0 = now();
    let mut tracker = Tracker::new(db.clone(), router(), vec![Modality::Flair], config(), t0).unwrap();
    let tick = tracker.tick(t0 + 61.0).unwrap();
    assert_eq!(tick.jobs.len(), 1);
    let job = db.job(tick.jobs[0]).unwrap().unwrap();
    assert_eq!(job.inputs[0].plan.as_ref().map(|p| p.shape()[2]), Some(5));
}

#[test]
fn a_single_slice_series_is_not_routed_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(JobDb::open(&dir.path().join("jobs.sqlite")).unwrap());
    // The rules set no minimum slice count: the floor is the router's own.
    let (series, _) = receive(&db, dir.path(), 7, "FLAIR 3D", 1);
    let t0 = now();
    let mut tracker = Tracker::new(db.clone(), router(), vec![Modality::Flair], config(), t0).unwrap();
    let tick = tracker.tick(t0 + 61.0).unwrap();
    assert_eq!((tick.completed, tick.jobs.len()), (1, 0));
    let row = db.series(&series).unwrap().unwrap();
    assert_eq!(row.channel, None);
    let reason = row.routing.unwrap();
    assert!(reason.contains("too thin for the model: 1 slice(s)"), "{reason}");
}

#[test]
fn an_unusable_header_makes_the_series_not_usable_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(JobDb::open(&dir.path().join("jobs.sqlite")).unwrap());
    let path = dir.path().join("x.dcm");
    db.record_instance(&InstanceRecord {
        sop_uid: "1.2.3.1",
        series_uid: "1.2.3",
        study_uid: STUDY,
        path: &path,
        series_dir: dir.path(),
        calling_ae: "MRI",
        size: 1,
        header: &StoredHeader::Unusable {
            reason: "missing Rows (0028,0010)".into(),
        },
        synced: true,
    })
    .unwrap();
    let t0 = now();
    let mut tracker = Tracker::new(db.clone(), router(), vec![Modality::Flair], config(), t0).unwrap();
    assert_eq!(tracker.tick(t0 + 61.0).unwrap().jobs.len(), 0);
    let row = db.series("1.2.3").unwrap().unwrap();
    assert_eq!(row.channel, None);
    assert!(row.routing.unwrap().contains("not usable: missing Rows"));
}
