use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN;

use super::db::{DeliveryState, JobState};
use super::*;
use crate::package::manifest::Modality;
use crate::tracker::routing::ChannelSeries;

const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
const OURS: &str = "1.2.3.4.5";

fn dataset(sop: &str, contributing_device: Option<&str>) -> Vec<u8> {
    let mut obj = InMemDicomObject::new_empty();
    let mut put = |tag, vr, v: &str| obj.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
    put(tags::SOP_CLASS_UID, VR::UI, MR);
    put(tags::SOP_INSTANCE_UID, VR::UI, sop);
    put(tags::STUDY_INSTANCE_UID, VR::UI, "1.2.826.0.1.1");
    put(tags::SERIES_INSTANCE_UID, VR::UI, "1.2.826.0.1.1.2");
    put(tags::MODALITY, VR::CS, "MR");
    if let Some(uid) = contributing_device {
        let mut item = InMemDicomObject::new_empty();
        item.put(DataElement::new(tags::DEVICE_UID, VR::UI, PrimitiveValue::from(uid)));
        obj.put(DataElement::new(
            tags::CONTRIBUTING_EQUIPMENT_SEQUENCE,
            VR::SQ,
            dicom_core::value::DataSetSequence::from(vec![item]),
        ));
    }
    let mut bytes = Vec::new();
    obj.write_dataset_with_ts(&mut bytes, &EXPLICIT_VR_LITTLE_ENDIAN.erased())
        .unwrap();
    bytes
}

fn instance(sop: &str, dataset: Vec<u8>) -> ReceivedInstance {
    ReceivedInstance {
        calling_ae: "MRI".into(),
        peer: "127.0.0.1:4000".parse().unwrap(),
        sop_class_uid: MR.into(),
        sop_instance_uid: sop.into(),
        transfer_syntax: "1.2.840.10008.1.2.1".into(),
        dataset: dataset.into(),
    }
}

fn failed_status(outcome: StoreOutcome) -> u16 {
    match outcome {
        StoreOutcome::Failed { status, .. } => status,
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// A data set staged in a file (past the memory bound) is stored byte for byte, the copy made
/// from the staging file, and the staging directory is left empty.
#[test]
fn a_staged_data_set_is_stored_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), OURS).unwrap();
    let sop = "1.2.826.0.1.1.2.9";
    let bytes = dataset(sop, None);
    let mut staged = crate::ingest::DataSetBuffer::with_limit(&spool.staging_dir(), 16);
    staged.append(&bytes).unwrap();
    assert!(staged.is_spilled());
    let mut inst = instance(sop, Vec::new());
    inst.dataset = staged;
    assert_eq!(spool.store(inst), StoreOutcome::Stored);
    let path = dir
        .path()
        .join("spool/1.2.826.0.1.1/1.2.826.0.1.1.2")
        .join(format!("{sop}.dcm"));
    let file = std::fs::read(&path).unwrap();
    assert!(
        file.ends_with(&bytes),
        "the data set follows the file meta group unchanged"
    );
    assert_eq!(std::fs::read_dir(spool.staging_dir()).unwrap().count(), 0);
}

#[test]
fn stores_durably_once_and_refuses_what_it_cannot_keep() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), OURS).unwrap();
    let sop = "1.2.826.0.1.1.2.3";
    assert_eq!(spool.store(instance(sop, dataset(sop, None))), StoreOutcome::Stored);
    let path = dir
        .path()
        .join("spool/1.2.826.0.1.1/1.2.826.0.1.1.2")
        .join(format!("{sop}.dcm"));
    let stored = dicom_object::open_file(&path).unwrap();
    assert_eq!(stored.element(tags::SOP_INSTANCE_UID).unwrap().to_str().unwrap(), sop);
    assert_eq!(spool.store(instance(sop, dataset(sop, None))), StoreOutcome::Duplicate);
    assert_eq!(spool.db().instance_count().unwrap(), 1);

    // The data set names another instance than the command.
    let other = "1.2.826.0.1.1.2.4";
    assert_eq!(
        failed_status(spool.store(instance(other, dataset(sop, None)))),
        STATUS_DATASET_MISMATCH
    );
    // Garbage and UIDs that would escape the spool directory.
    assert_eq!(
        failed_status(spool.store(instance(other, vec![1, 2, 3]))),
        STATUS_CANNOT_UNDERSTAND
    );
    assert_eq!(
        failed_status(spool.store(instance("../../etc", dataset("../../etc", None)))),
        STATUS_CANNOT_UNDERSTAND
    );
    // Nothing half-written is left behind.
    assert_eq!(std::fs::read_dir(dir.path().join("spool/tmp")).unwrap().count(), 0);
    assert_eq!(spool.db().instance_count().unwrap(), 1);
}

fn segments(root: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(root.join("spool/journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    found.sort();
    found
}

/// One spool per data directory at a time: a second open is refused while the first lives.
#[test]
fn a_data_directory_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), OURS).unwrap();
    let second = Spool::open(dir.path(), OURS)
        .err()
        .expect("a second spool on the same directory");
    assert!(matches!(second, SpoolError::InUse { .. }), "{second}");
    assert!(second.to_string().contains("another fcdnode"), "{second}");
    drop(spool);
    Spool::open(dir.path(), OURS).unwrap();
}

/// What a power cut can take after the response (the unsynced file) comes back from the
/// journal at the next open; a retired segment is gone and replays nothing.
#[test]
fn the_journal_restores_a_lost_file_at_open_and_retired_segments_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), OURS).unwrap();
    let sop = "1.2.826.0.1.1.2.21";
    assert_eq!(spool.store(instance(sop, dataset(sop, None))), StoreOutcome::Stored);
    let path = dir
        .path()
        .join("spool/1.2.826.0.1.1/1.2.826.0.1.1.2")
        .join(format!("{sop}.dcm"));
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        segments(dir.path()).len(),
        1,
        "the instance is in a segment until retirement"
    );
    assert_eq!(spool.retire_journal(std::time::Duration::from_secs(3600)).unwrap(), 0);
    drop(spool);
    std::fs::remove_file(&path).unwrap();

    let spool = Spool::open(dir.path(), OURS).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "restored byte for byte");
    // A file of the right size holding something else (what a failed write can leave) is
    // written again too.
    let other = "1.2.826.0.1.1.2.23";
    assert_eq!(spool.store(instance(other, dataset(other, None))), StoreOutcome::Stored);
    let other_path = path.with_file_name(format!("{other}.dcm"));
    let good = std::fs::read(&other_path).unwrap();
    drop(spool);
    std::fs::write(&other_path, vec![0u8; good.len()]).unwrap();
    let spool = Spool::open(dir.path(), OURS).unwrap();
    assert_eq!(std::fs::read(&other_path).unwrap(), good);
    assert_eq!(spool.db().instance_count().unwrap(), 2);
    assert!(segments(dir.path()).is_empty(), "a replayed segment is deleted");

    let third = "1.2.826.0.1.1.2.22";
    assert_eq!(spool.store(instance(third, dataset(third, None))), StoreOutcome::Stored);
    assert_eq!(spool.retire_journal(std::time::Duration::ZERO).unwrap(), 1);
    assert!(segments(dir.path()).is_empty());
    assert_eq!(std::fs::read_dir(dir.path().join("spool/tmp")).unwrap().count(), 0);
}

/// A kill after the segment's sync but before the file and row were written (the instance
/// may have been acknowledged): the next open writes both, with the calling AE title.
#[test]
fn an_instance_only_in_the_journal_is_written_and_recorded_at_open() {
    let first = tempfile::tempdir().unwrap();
    let spool = Spool::open(first.path(), OURS).unwrap();
    let sop = "1.2.826.0.1.1.2.31";
    assert_eq!(spool.store(instance(sop, dataset(sop, None))), StoreOutcome::Stored);
    drop(spool);
    let segment = segments(first.path()).pop().unwrap();
    // Another data directory that saw nothing but the segment, with a torn record after it.
    let second = tempfile::tempdir().unwrap();
    drop(Spool::open(second.path(), OURS).unwrap());
    let mut copied = std::fs::read(&segment).unwrap();
    copied.extend_from_slice(b"FJR1\x10\x00");
    std::fs::write(second.path().join("spool/journal/1.seg"), copied).unwrap();

    let spool = Spool::open(second.path(), OURS).unwrap();
    assert!(spool.db().has_instance(sop).unwrap());
    let series = spool.db().series("1.2.826.0.1.1.2").unwrap().unwrap();
    assert_eq!(series.calling_ae, "MRI");
    assert_eq!(series.instances, 1);
    let path = second
        .path()
        .join("spool/1.2.826.0.1.1/1.2.826.0.1.1.2")
        .join(format!("{sop}.dcm"));
    let stored = dicom_object::open_file(&path).unwrap();
    assert_eq!(stored.element(tags::SOP_INSTANCE_UID).unwrap().to_str().unwrap(), sop);
    assert!(segments(second.path()).is_empty());
}

#[test]
fn our_own_output_coming_back_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), OURS).unwrap();
    let sop = "1.2.826.0.1.1.2.9";
    assert!(matches!(
        spool.store(instance(sop, dataset(sop, Some(OURS)))),
        StoreOutcome::Discarded { .. }
    ));
    // Another device's output is an ordinary instance.
    assert_eq!(
        spool.store(instance(sop, dataset(sop, Some("1.9.9")))),
        StoreOutcome::Stored
    );
}

#[test]
fn late_instances_reopen_a_handled_series_and_jobs_move_through_their_states() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), OURS).unwrap();
    let db = spool.db();
    let series = "1.2.826.0.1.1.2";
    for sop in ["1.5.1", "1.5.2"] {
        assert_eq!(spool.store(instance(sop, dataset(sop, None))), StoreOutcome::Stored);
    }
    let stable = db.stable_series(db::now() + 1.0).unwrap();
    assert_eq!((stable.len(), stable[0].instances, stable[0].generation), (1, 2, 0));
    assert!(
        db.stable_series(db::now() - 3600.0).unwrap().is_empty(),
        "not stable an hour ago"
    );
    // The header facts are read once, at ingest: these test instances have no geometry, so
    // they are stored with the reason the series cannot be planned.
    let stored = db.series_instances(series).unwrap();
    assert_eq!(stored.len(), 2);
    match &stored[0].header {
        Some(db::StoredHeader::Unusable { reason }) => assert!(reason.contains("Rows (0028,0010)"), "{reason}"),
        other => panic!("expected an unusable header, got {other:?}"),
    }
    db.mark_handled(series, 0, None, "not usable").unwrap();
    assert!(db.stable_series(db::now() + 1.0).unwrap().is_empty());
    assert_eq!(
        spool.store(instance("1.5.3", dataset("1.5.3", None))),
        StoreOutcome::Stored
    );
    let reopened = db.stable_series(db::now() + 1.0).unwrap();
    assert_eq!((reopened[0].instances, reopened[0].generation), (3, 1));

    let inputs = [ChannelSeries {
        channel: Modality::Flair,
        series_uid: series.to_string(),
        files: db.series_files(series).unwrap(),
        plan: None,
    }];
    assert_eq!(inputs[0].files.len(), 3, "every stored instance is listed");
    let first = db.create_job("1.2.826.0.1.1", &inputs, "MRI").unwrap();
    let claimed = db.claim_job().unwrap().unwrap();
    assert_eq!((claimed.id, claimed.attempts), (first, 1));
    assert_eq!(claimed.inputs, inputs, "the job keeps the tracker's choice");
    assert!(
        db.claim_job().unwrap().is_none(),
        "a claimed job is not handed out twice"
    );
    db.set_state(first, JobState::Assembled, None).unwrap();
    // A restart puts the interrupted job back in the queue.
    assert_eq!(db.requeue_unfinished().unwrap(), 1);
    assert_eq!(db.claim_job().unwrap().unwrap().attempts, 2);
    let files = [PathBuf::from("sc.dcm"), PathBuf::from("sr.dcm")];
    let deliveries: Vec<(String, PathBuf)> = ["a", "b"]
        .iter()
        .flat_map(|d| files.iter().map(move |f| (d.to_string(), f.clone())))
        .collect();
    db.report_job(first, dir.path(), &deliveries).unwrap();
    assert_eq!(db.job(first).unwrap().unwrap().state, JobState::Reported);
    let due = db.due_deliveries(db::now()).unwrap();
    assert_eq!(due.len(), 4);
    for d in &due[..3] {
        assert_eq!(
            db.settle_delivery(d.id, DeliveryState::Delivered, 0.0, None).unwrap(),
            None,
            "the job is not final while a delivery is pending"
        );
    }
    assert_eq!(
        db.job(first).unwrap().unwrap().state,
        JobState::Reported,
        "one delivery still pending"
    );
    db.settle_delivery(due[3].id, DeliveryState::Pending, db::now() + 60.0, Some("refused"))
        .unwrap();
    assert!(
        db.due_deliveries(db::now()).unwrap().is_empty(),
        "backoff defers the retry"
    );
    let settled = db
        .settle_delivery(due[3].id, DeliveryState::Dead, 0.0, Some("gave up"))
        .unwrap()
        .expect("the last delivery settles the job");
    assert_eq!((settled.job_id, settled.state), (first, JobState::Undeliverable));
    let turnaround = settled.turnaround_s.expect("the job's instances are known");
    assert!((0.0..60.0).contains(&turnaround), "{turnaround}");
    let job = db.job(first).unwrap().unwrap();
    assert_eq!(job.state, JobState::Undeliverable);
    assert_eq!(db.deliveries_in(DeliveryState::Dead).unwrap().len(), 1);

    // The next job on the same series supersedes the first.
    let second = db.create_job("1.2.826.0.1.1", &inputs, "MRI").unwrap();
    assert_eq!(db.job(second).unwrap().unwrap().supersedes, Some(first));
    let (key_1, key_2) = (
        db.job(first).unwrap().unwrap().uid_key,
        db.job(second).unwrap().unwrap().uid_key,
    );
    assert!(
        key_1.is_some() && key_1 != key_2,
        "each job draws its UIDs from a key of its own"
    );

    // An SR sent ahead: its delivery settles without settling the job, which is still being made.
    let sr = |job: i64| [("a".to_string(), PathBuf::from(format!("{job}/sr.dcm")))];
    let sc = |job: i64| ("a".to_string(), PathBuf::from(format!("{job}/sc.dcm")));
    for rest_to_come in [true, false] {
        let job = db.create_job("1.2.826.0.1.1", &inputs, "MRI").unwrap();
        let rest: Vec<(String, PathBuf)> = rest_to_come.then(|| sc(job)).into_iter().collect();
        db.set_state(job, JobState::Inferred, None).unwrap();
        db.queue_deliveries(job, dir.path(), &sr(job)).unwrap();
        db.queue_deliveries(job, dir.path(), &sr(job)).unwrap();
        let ahead = db.job_deliveries(job).unwrap();
        assert_eq!(ahead.len(), 1, "queued twice, sent once");
        assert_eq!(
            db.settle_delivery(ahead[0].id, DeliveryState::Delivered, 0.0, None)
                .unwrap(),
            None
        );
        assert_eq!(
            db.job(job).unwrap().unwrap().state,
            JobState::Inferred,
            "not settled before it is reported"
        );
        let all: Vec<(String, PathBuf)> = sr(job).into_iter().chain(rest).collect();
        let settled = db.report_job(job, dir.path(), &all).unwrap();
        let states: Vec<DeliveryState> = db.job_deliveries(job).unwrap().iter().map(|d| d.state).collect();
        if !rest_to_come {
            // Nothing left pending when it is reported: settled there and then.
            assert_eq!(settled.map(|s| s.state), Some(JobState::Delivered));
            assert_eq!(states, [DeliveryState::Delivered]);
        } else {
            assert_eq!(settled, None, "the SC is still to go");
            assert_eq!(
                states,
                [DeliveryState::Delivered, DeliveryState::Pending],
                "the SR is not sent again"
            );
            let last = db.job_deliveries(job).unwrap()[1].id;
            let settled = db.settle_delivery(last, DeliveryState::Delivered, 0.0, None).unwrap();
            assert_eq!(settled.map(|s| s.state), Some(JobState::Delivered));
        }
    }

    // A failure is stored with its stage and series, and read back as it was written.
    let failure = db::JobFailure {
        stage: "assemble".into(),
        series_uid: Some(series.into()),
        message: "series 1.2.826.0.1.1.2: uneven slice spacing".into(),
    };
    db.fail_job(second, &failure).unwrap();
    let failed = db.job(second).unwrap().unwrap();
    assert_eq!(failed.state, JobState::Failed);
    assert_eq!(failed.failure.as_ref(), Some(&failure));
    assert_eq!(failed.reason.as_deref(), Some(failure.message.as_str()));

    // A job failing after its SR was queued ahead withdraws what is not sent yet.
    let ahead = db.create_job("1.2.826.0.1.1", &inputs, "MRI").unwrap();
    db.queue_deliveries(ahead, dir.path(), &sr(ahead)).unwrap();
    let withdrawn = db.fail_job(ahead, &failure).unwrap();
    assert_eq!(
        withdrawn,
        db::FailedAhead {
            withdrawn: 1,
            delivered: 0
        }
    );
    let rows = db.job_deliveries(ahead).unwrap();
    assert_eq!(rows[0].state, DeliveryState::Dead);
    assert!(
        rows[0].last_error.as_deref().unwrap_or_default().contains("not sent"),
        "{rows:?}"
    );
    assert!(
        db.due_deliveries(db::now() + 1.0)
            .unwrap()
            .iter()
            .all(|d| d.job_id != ahead)
    );
}

#[test]
fn a_database_from_before_the_job_plan_gains_its_columns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.sqlite");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE series (
                series_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL, calling_ae TEXT NOT NULL, dir TEXT NOT NULL,
                instances INTEGER NOT NULL, last_received_at REAL NOT NULL, generation INTEGER NOT NULL,
                handled_generation INTEGER, channel TEXT);
             CREATE TABLE jobs (
                id INTEGER PRIMARY KEY, study_uid TEXT NOT NULL, series TEXT NOT NULL, calling_ae TEXT NOT NULL,
                state TEXT NOT NULL, reason TEXT, supersedes INTEGER, result_dir TEXT, attempts INTEGER NOT NULL,
                claimed INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, updated_at REAL NOT NULL);
             INSERT INTO jobs (study_uid, series, calling_ae, state, attempts, created_at, updated_at)
                VALUES ('1.2.3', '[\"1.2.3.4\"]', 'MRI', 'delivered', 1, 0, 0);",
        )
        .unwrap();
    }
    let db = db::JobDb::open(&path).unwrap();
    let old = db.job(1).unwrap().unwrap();
    assert!(old.uid_key.is_some(), "a job from before keys gets one");
    assert_eq!(old.series, vec!["1.2.3.4".to_string()]);
    assert!(old.inputs.is_empty() && old.failure.is_none());
    assert!(db.series("1.2.3.4").unwrap().is_none());
}

#[test]
fn partial_files_of_an_interrupted_write_are_removed_when_the_spool_opens() {
    let dir = tempfile::tempdir().unwrap();
    drop(Spool::open(dir.path(), OURS).unwrap());
    let tmp = dir.path().join("spool/tmp");
    let stale = tmp.join("4242-7.part");
    std::fs::write(&stale, b"half an instance").unwrap();
    let other = tmp.join("notes.txt");
    std::fs::write(&other, b"not ours").unwrap();
    let spool = Spool::open(dir.path(), OURS).unwrap();
    assert!(!stale.exists(), "stale .part kept");
    assert!(other.exists(), "only .part files are ours to remove");
    let sop = "1.2.826.0.1.1.2.9";
    assert_eq!(spool.store(instance(sop, dataset(sop, None))), StoreOutcome::Stored);
}

/// Study and series directories made before a kill -9, but perhaps never fsynced, are synced
/// when the spool opens (series, study, then spool/), and instances are stored in them after.
#[test]
fn directories_found_at_open_are_synced_and_used() {
    let dir = tempfile::tempdir().unwrap();
    drop(Spool::open(dir.path(), OURS).unwrap());
    let spool_dir = dir.path().join("spool");
    // As the node left them when killed between mkdir and fsync.
    let series = spool_dir.join("1.2.826.0.1.1/1.2.826.0.1.1.2");
    std::fs::create_dir_all(&series).unwrap();
    std::fs::create_dir_all(spool_dir.join("1.2.826.0.1.9/1.2.826.0.1.9.1")).unwrap();
    std::fs::write(spool_dir.join("1.2.826.0.1.9/stray.txt"), b"not a directory").unwrap();
    // Two studies, two series, spool/tmp, spool/journal and spool/ itself.
    assert_eq!(sync_existing_dirs(&spool_dir).unwrap(), 7);
    let spool = Spool::open(dir.path(), OURS).unwrap();
    let sop = "1.2.826.0.1.1.2.11";
    assert_eq!(spool.store(instance(sop, dataset(sop, None))), StoreOutcome::Stored);
    assert!(series.join(format!("{sop}.dcm")).is_file());
}

const STRACE_CHILD: &str = "FCDNODE_SPOOL_OPEN_STRACE_CHILD";

/// The same under strace: opening a spool fsyncs a study directory that exists already (the
/// test binary runs itself under strace, opening the spool only).
#[test]
fn open_fsyncs_an_existing_study_directory_under_strace() {
    if let Some(root) = std::env::var_os(STRACE_CHILD) {
        Spool::open(Path::new(&root), OURS).unwrap();
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    drop(Spool::open(&root, OURS).unwrap());
    let study = root.join("spool/1.2.826.0.1.1");
    let series = study.join("1.2.826.0.1.1.2");
    std::fs::create_dir_all(&series).unwrap();
    let log = dir.path().join("strace.log");
    let out = std::process::Command::new("strace")
        .args(["-f", "-qq", "-yy", "-e", "trace=fsync,fdatasync", "-o"])
        .arg(&log)
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "spool::tests::open_fsyncs_an_existing_study_directory_under_strace",
            "--test-threads",
            "1",
        ])
        .env(STRACE_CHILD, &root)
        .output()
        .expect("strace (scripts/setup.sh installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let trace = std::fs::read_to_string(&log).unwrap();
    let synced = |path: &Path| {
        let call = format!("<{}>) = 0", path.display());
        trace
            .lines()
            .position(|l| l.contains(&call))
            .unwrap_or_else(|| panic!("{} not fsynced:\n{trace}", path.display()))
    };
    let (series_at, study_at, spool_at) = (synced(&series), synced(&study), synced(&root.join("spool")));
    assert!(
        series_at < study_at && study_at < spool_at,
        "not series, then study, then spool/:\n{trace}"
    );
}
