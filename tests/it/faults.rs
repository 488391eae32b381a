//! The crash and fault suite (bounded, loopback only): kill -9 at seeded random points over 20
//! cycles with the acknowledged-versus-present check, a kill between an instance's last sync and
//! its response, and a spool volume that fills up (a small tmpfs) and is then enlarged. The idle-socket, large-instance and large-RQ cases live
//! in `ingest.rs` and `node.rs`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use dicom_dictionary_std::tags;
use serde_json::Value;

use crate::node::{NodeProc, Pacs, flair_files, free_port, model, sop_class, sop_instance, state_of, wait_until, walk};
use crate::util::{tempdir, tool};

const COMPREHENSIVE_3D_SR: &str = "1.2.840.10008.5.1.4.1.1.88.34";

/// Copies `files` into `dir` as a new study and series (new SOP Instance UIDs too), with
/// DCMTK's dcmodify.
fn new_study(files: &[PathBuf], dir: &Path, tag: u32) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let copies: Vec<PathBuf> = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let to = dir.join(format!("{i:04}.dcm"));
            std::fs::copy(f, &to).unwrap();
            to
        })
        .collect();
    let out = Command::new(tool("dcmodify"))
        .args(["-nb", "-gin"])
        .args(["-m", &format!("(0020,000D)=1.2.826.0.1.3680043.10.1.77.{tag}")])
        .args(["-m", &format!("(0020,000E)=1.2.826.0.1.3680043.10.1.77.{tag}.1")])
        .args(&copies)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dcmodify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    copies
}

/// SOP Instance UIDs of the complete, readable instances in the spool.
fn spooled(data: &Path) -> BTreeSet<String> {
    walk(&data.join("spool"))
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .filter(|p| dicom_object::open_file(p).is_ok())
        .map(|p| sop_instance(p))
        .collect()
}

/// Seed 7341 (used here only): where each kill lands is drawn from it and printed.
#[test]
fn twenty_kill_9_cycles_at_random_points_lose_no_acknowledged_instance() {
    let dir = tempdir();
    let pacs_port = free_port();
    let pacs = Pacs::start(pacs_port, &dir.path().join("pacs"));
    let mut node = NodeProc::start(dir.path(), &model(dir.path()), pacs_port, "", "");
    let data = dir.path().join("data");
    let source = flair_files();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7341);
    let mut studies = Vec::new();
    let mut acknowledged_total = 0;
    for cycle in 0..20 {
        let files = new_study(&source, &dir.path().join(format!("send/{cycle}")), cycle);
        let delay = Duration::from_millis(rng.random_range(0..2500));
        let sender = node
            .storescu_command(&files)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        node.kill();
        let out = sender.wait_with_output().unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        // storescu sends in argument order and waits for each response.
        let acknowledged = log.matches("Received Store Response (Success)").count();
        node.restart();
        let present = spooled(&data);
        let missing: Vec<&PathBuf> = files[..acknowledged]
            .iter()
            .filter(|f| !present.contains(&sop_instance(f)))
            .collect();
        println!(
            "cycle {cycle:2}: kill after {:4} ms, {acknowledged:3}/{} acknowledged, all present: {}",
            delay.as_millis(),
            files.len(),
            missing.is_empty()
        );
        assert!(
            missing.is_empty(),
            "cycle {cycle}: acknowledged but not in the spool: {missing:?}"
        );
        acknowledged_total += acknowledged;
        studies.push(files);
    }
    assert!(
        acknowledged_total > 0 && acknowledged_total < 20 * source.len(),
        "the kills should land both before and during the transfers: {acknowledged_total}"
    );
    // No stale part files after the last restart.
    let parts: Vec<PathBuf> = walk(&data.join("spool/tmp"));
    assert!(parts.is_empty(), "{parts:?}");

    // The modality sends every study again; each job runs and is delivered exactly once.
    for files in &studies {
        let out = node.storescu(files);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let all: BTreeSet<String> = studies.iter().flatten().map(|f| sop_instance(f)).collect();
    assert!(all.is_subset(&spooled(&data)));
    wait_until("20 jobs delivered", Duration::from_secs(600), || {
        let jobs = node.jobs();
        jobs.len() >= 20 && jobs.iter().all(|j| state_of(j) == "delivered")
    });
    std::thread::sleep(Duration::from_secs(2));
    let jobs = node.jobs();
    let studies_with_jobs: BTreeSet<&str> = jobs.iter().filter_map(|j| j["study_uid"].as_str()).collect();
    assert_eq!(studies_with_jobs.len(), 20, "{jobs:?}");
    // Each job's SR reached the PACS, and nothing else did: the PACS holds exactly the SRs
    // in the jobs' result directories.
    let at_pacs: BTreeSet<String> = pacs
        .files()
        .iter()
        .filter(|p| sop_class(p) == COMPREHENSIVE_3D_SR)
        .map(|p| sop_instance(p))
        .collect();
    let log = std::fs::read_to_string(dir.path().join("node.log")).unwrap_or_default();
    let mut made = BTreeSet::new();
    for job in &jobs {
        let id = job["id"].as_i64().unwrap();
        let srs: Vec<String> = walk(&data.join(format!("results/job-{id}")))
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "dcm") && sop_class(p) == COMPREHENSIVE_3D_SR)
            .map(|p| sop_instance(p))
            .collect();
        let missing = srs.len() != 1 || !at_pacs.contains(&srs[0]);
        if missing {
            let tag = format!("job={id} ");
            let lines: Vec<&str> = log.lines().filter(|l| l.contains(&tag)).collect();
            println!(
                "job {id}: SRs made {srs:?}, at the PACS: {}\n{job}\n{}",
                !missing,
                lines.join("\n")
            );
        }
        made.extend(srs);
    }
    assert_eq!(made, at_pacs, "the SRs the jobs made are the SRs at the PACS");
    assert_eq!(made.len(), jobs.len(), "one SR per job");
}

/// The SOP Instance UIDs an SR lists as other evidence (the objects made with it).
fn evidence_of(sr: &Path) -> BTreeSet<String> {
    let obj = dicom_object::open_file(sr).unwrap();
    let items = |e: Option<&dicom_object::mem::InMemElement>| e.and_then(|e| e.items()).unwrap_or_default().to_vec();
    let mut uids = BTreeSet::new();
    for study in items(obj.get(tags::PERTINENT_OTHER_EVIDENCE_SEQUENCE)) {
        for series in items(study.get(tags::REFERENCED_SERIES_SEQUENCE)) {
            for sop in items(series.get(tags::REFERENCED_SOP_SEQUENCE)) {
                let uid = sop.get(tags::REFERENCED_SOP_INSTANCE_UID).unwrap().to_str().unwrap();
                uids.insert(uid.trim_end_matches('\0').to_string());
            }
        }
    }
    uids
}

/// This study's objects at the PACS.
fn at_pacs(pacs: &Pacs, study: &str) -> Vec<PathBuf> {
    pacs.files()
        .into_iter()
        .filter(|p| {
            let obj = dicom_object::OpenFileOptions::new()
                .read_until(tags::PIXEL_DATA)
                .open_file(p)
                .unwrap();
            obj.get(tags::STUDY_INSTANCE_UID)
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches('\0')
                == study
        })
        .collect()
}

/// Killed after the SR went ahead, before the other outputs were made: under strace, the
/// creation of each job's key image directory (the first output after the SR) waits 10 s, and the
/// node is killed in that wait once the PACS has acknowledged the SR.
/// - Job 1: after the restart it runs again and makes the outputs under the UIDs the SR named
///   (the job's UID key); the SR is not sent again. The PACS ends up with one SR, every object
///   it references and nothing else.
/// - Job 2: before the restart the key image is switched off, so the rerun would not make what
///   the SR sent ahead names: the job fails saying so, and sends nothing more.
#[test]
fn a_kill_after_the_sr_went_ahead_remakes_what_it_names_or_fails_saying_why() {
    let dir = tempdir();
    let pacs_port = free_port();
    let pacs = Pacs::start(pacs_port, &dir.path().join("pacs"));
    let data = dir.path().join("data");
    let key_dir = |job: i64| data.join(format!("results/job-{job}/key")).display().to_string();
    let (key_1, key_2) = (key_dir(1), key_dir(2));
    let held_back = [
        "strace",
        "-f",
        "-qq",
        "-P",
        &key_1,
        "-P",
        &key_2,
        "-e",
        "trace=mkdir",
        "-e",
        "inject=mkdir:delay_enter=10000000",
        "-o",
        "/dev/null",
    ];
    let mut node = NodeProc::start_under(dir.path(), &model(dir.path()), pacs_port, &held_back);
    let source = flair_files();
    let studies: Vec<Vec<PathBuf>> = (1..=2u32)
        .map(|n| new_study(&source, &dir.path().join(format!("send/{n}")), 900 + n))
        .collect();
    for (n, files) in studies.iter().enumerate() {
        let job = n as i64 + 1;
        if job == 2 {
            node.restart_under(&held_back);
        }
        let out = node.storescu(files);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let path = format!("/jobs/{job}");
        let sr_delivered = |d: &Value| {
            d["deliveries"]
                .as_array()
                .is_some_and(|rows| rows.iter().any(|r| r["file"] == "SR.dcm" && r["state"] == "delivered"))
        };
        wait_until("the SR delivered", Duration::from_secs(300), || {
            sr_delivered(&node.get(&path))
        });
        let detail = node.get(&path);
        assert_eq!(
            detail["job"]["state"], "inferred",
            "the rest is still being made: {detail}"
        );
        assert_eq!(detail["deliveries"].as_array().map(Vec::len), Some(1), "{detail}");
        node.kill();
        if job == 2 {
            node.edit_config(|text| text.replace("[api]", "[outputs]\nkey_image = false\n\n[api]"));
        }
        node.restart_under(&[]);
        wait_until("the job settled", Duration::from_secs(300), || {
            matches!(state_of(&node.get(&path)["job"]), "delivered" | "failed")
        });
    }

    // Job 1: one SR at the PACS, and exactly the objects it references, made by the rerun.
    let detail = node.get("/jobs/1");
    assert_eq!(detail["job"]["state"], "delivered", "{detail}");
    assert_eq!(detail["job"]["attempts"], 2, "{detail}");
    let rows = detail["deliveries"].as_array().unwrap();
    let sr_row = rows.iter().find(|r| r["file"] == "SR.dcm").unwrap();
    assert_eq!(sr_row["attempts"], 1, "the SR is sent once: {detail}");
    assert!(rows.len() > 1, "{detail}");
    let ours = at_pacs(&pacs, "1.2.826.0.1.3680043.10.1.77.901");
    let (srs, others): (Vec<&PathBuf>, Vec<&PathBuf>) = ours.iter().partition(|p| sop_class(p) == COMPREHENSIVE_3D_SR);
    assert_eq!(srs.len(), 1, "{srs:?}");
    let others: BTreeSet<String> = others.iter().map(|p| sop_instance(p)).collect();
    assert!(others.len() >= 3, "key image, SC and PM: {others:?}");
    assert_eq!(
        evidence_of(srs[0]),
        others,
        "the SR names exactly the objects at the PACS"
    );
    let made: BTreeSet<String> = walk(&data.join("results/job-1"))
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm") && sop_class(p) != COMPREHENSIVE_3D_SR)
        .map(|p| sop_instance(p))
        .collect();
    assert_eq!(made, others, "the rerun's objects are the ones delivered");

    // Job 2: failed, saying why; only its SR reached the PACS.
    let detail = node.get("/jobs/2");
    assert_eq!(detail["job"]["state"], "failed", "{detail}");
    let reason = detail["job"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("sent ahead") && reason.contains("rerun the job"),
        "{reason}"
    );
    let ours = at_pacs(&pacs, "1.2.826.0.1.3680043.10.1.77.902");
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert_eq!(sop_class(&ours[0]), COMPREHENSIVE_3D_SR);
    assert!(
        node.log_text().contains("the job failed after its SR was delivered"),
        "the operator is told"
    );
}

/// Killed after an instance is durable but before its C-STORE-RSP: under strace, every sync of
/// the spool journal's first segment (an instance's only sync before its response) returns 10 s
/// late, and the node is killed in that wait, before the instance's file was in place. The
/// modality saw no response, so it sends the series again; the instance the node had made
/// durable is in the spool after the restart (replayed from the journal), the resend is
/// answered, and the series makes one job, delivered once.
#[test]
fn a_kill_between_the_sync_and_the_response_keeps_the_instance_and_the_resend_makes_one_job() {
    let dir = tempdir();
    let pacs_port = free_port();
    let pacs = Pacs::start(pacs_port, &dir.path().join("pacs"));
    let mut node = NodeProc::start(dir.path(), &model(dir.path()), pacs_port, "", "");
    let data = dir.path().join("data");
    let segment = data.join("spool/journal/1.seg").display().to_string();
    let trace = dir.path().join("strace.log");
    let trace_arg = trace.display().to_string();
    node.restart_under(&[
        "strace",
        "-f",
        "-qq",
        // Only calls on the segment are traced, so only its syncs are held back.
        "-P",
        &segment,
        "-e",
        "trace=fdatasync",
        "-e",
        "inject=fdatasync:delay_exit=10000000",
        "-o",
        &trace_arg,
    ]);
    let synced = || {
        std::fs::read_to_string(&trace)
            .unwrap_or_default()
            .matches("fdatasync(")
            .count()
    };
    let at_start = synced();
    let files = new_study(&flair_files(), &dir.path().join("send"), 1);
    let sender = node
        .storescu_command(&files)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(
        "the sync of the first instance's record",
        Duration::from_secs(60),
        || synced() > at_start,
    );
    // Inside the held-back return: the record is on disk, the answer not sent, the file not
    // written yet.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !spooled(&data).contains(&sop_instance(&files[0])),
        "the instance file is moved into the spool only after the journal's sync returns"
    );
    node.kill();
    let out = sender.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        log.matches("Received Store Response").count(),
        0,
        "nothing may be answered while the sync is held back:\n{log}"
    );
    node.restart_under(&[]);
    assert!(
        spooled(&data).contains(&sop_instance(&files[0])),
        "the instance whose record was synced is not in the spool after the restart"
    );
    let again = node.storescu(&files);
    let log = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{log}");
    assert_eq!(
        log.matches("Received Store Response (Success)").count(),
        files.len(),
        "every instance of the resend is answered with success:\n{log}"
    );
    wait_until("the job delivered", Duration::from_secs(300), || {
        node.jobs().first().is_some_and(|j| state_of(j) == "delivered")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(node.jobs().len(), 1, "one job for the series: {:?}", node.jobs());
    assert!(node.log_text().contains("duplicate (already stored)"));
    let srs = pacs
        .files()
        .iter()
        .filter(|p| sop_class(p) == COMPREHENSIVE_3D_SR)
        .count();
    assert_eq!(srs, 1, "one SR at the PACS");
}

/// A tmpfs of `size` mounted on `dir` for as long as it lives.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root (or CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir.to_owned())
    }

    fn resize(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A data volume that fills up: instances beyond the space are refused with 0xA700 (the
/// modality keeps them), nothing partial stays behind, nothing acknowledged is lost, the node
/// keeps serving; once the volume grows, the same node (no restart) stores the rest and delivers.
#[test]
fn a_full_data_volume_refuses_with_a700_and_recovers_without_a_restart() {
    let dir = tempdir();
    let pacs_port = free_port();
    let _pacs = Pacs::start(pacs_port, &dir.path().join("pacs"));
    let data = dir.path().join("data");
    // The FLAIR series (≈ 24 MB in the spool) does not fit in 12 MB.
    let volume = Tmpfs::mount(&data, "12m");
    let mut node = NodeProc::configured(dir.path(), &model(dir.path()), pacs_port, "");
    // No free-space floor: the writes themselves meet ENOSPC.
    node.edit_config(|text| text.replacen("[node]\n", "[node]\nmin_free_mb = 0\n", 1));
    node.restart();
    let pid = node.pid();
    let files = flair_files();
    let out = node.storescu(&files);
    let log = String::from_utf8_lossy(&out.stderr).to_lowercase();
    let acknowledged = log.matches("received store response (success)").count();
    let refused = log.matches("outofresources").count();
    println!("full volume: {acknowledged} stored, {refused} refused with 0xA700");
    // storescu stops at the first refusal: the modality keeps the rest for later.
    assert!(acknowledged > 0 && refused == 1, "{log}");
    assert!(acknowledged < files.len(), "{log}");
    let present = spooled(&data);
    for f in &files[..acknowledged] {
        assert!(
            present.contains(&sop_instance(f)),
            "{} acknowledged, not stored",
            f.display()
        );
    }
    let parts = walk(&data.join("spool/tmp"));
    assert!(parts.is_empty(), "partial files left behind: {parts:?}");
    let empty: Vec<PathBuf> = walk(&data.join("spool"))
        .into_iter()
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() == 0))
        .collect();
    assert!(empty.is_empty(), "empty files in the spool: {empty:?}");
    let echo = Command::new(tool("echoscu"))
        .args(["-aet", "MRI", "-aec", "FCDNODE", "127.0.0.1"])
        .arg(node.dicom_port.to_string())
        .output()
        .unwrap();
    assert!(echo.status.success(), "the node stopped answering while full");

    volume.resize("256m");
    let start = Instant::now();
    let out = node.storescu(&files);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("the job delivered", Duration::from_secs(300), || {
        node.jobs().first().is_some_and(|j| state_of(j) == "delivered")
    });
    println!(
        "after growing the volume: delivered {:.1} s later",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(node.pid(), pid, "the node was restarted");
    assert_eq!(node.jobs().len(), 1);
    node.kill();
}
