//! Notifications end to end: `fcdnode serve` with the demo model, a FHIR endpoint that is down
//! when the suspected job finishes (it gets the DiagnosticReport once it is up, through the
//! outbox's retries) and a webhook for every job; the DiagnosticReport is validated by
//! fhir.resources (an independent implementation of the FHIR R4 models) and points at the SR
//! the PACS received. A control study notifies only the endpoint that wants every result.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::blocking::Client;
use serde_json::Value;

use crate::node::{NodeProc, Pacs, flair_files, free_port, state_of, wait_until};
use crate::util::{fcdnode, repo, run_ok, tempdir};

/// `tests/it/receiver.py`: records every POST it gets.
struct Receiver {
    child: Child,
    dir: PathBuf,
}

impl Receiver {
    fn start(port: u16, dir: &Path) -> Self {
        let child = Command::new(python())
            .arg(repo().join("tests/it/receiver.py"))
            .arg(port.to_string())
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the receiver: {e}"));
        wait_until("the receiver to listen", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Self {
            child,
            dir: dir.to_owned(),
        }
    }

    /// The requests received so far, in order.
    fn requests(&self) -> Vec<Value> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|f| f.extension().is_some_and(|e| e == "json"));
        files.sort();
        files
            .iter()
            .map(|f| serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> PathBuf {
    let python = repo().join(".tools/venv/bin/python");
    assert!(
        python.is_file(),
        "peer `{}` is missing: run `scripts/setup.sh` (it installs fhir.resources)",
        python.display()
    );
    python
}

/// fhir.resources' reading of DiagnosticReport bodies (tests/it/fhir_validate.py).
fn validate_fhir(bodies: &[String], dir: &Path) -> Vec<Value> {
    let files: Vec<PathBuf> = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| {
            let path = dir.join(format!("report-{i}.json"));
            std::fs::write(&path, body).unwrap();
            path
        })
        .collect();
    let out = run_ok(
        Command::new(python())
            .arg(repo().join("tests/it/fhir_validate.py"))
            .args(&files),
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn jobs(node: &NodeProc) -> Vec<Value> {
    let url = format!("http://127.0.0.1:{}/jobs", node.api_port);
    Client::new()
        .get(url)
        .send()
        .and_then(|r| r.json::<Value>())
        .map(|v| v.as_array().cloned().unwrap_or_default())
        .unwrap_or_default()
}

/// The SOP Instance UID of the SR the PACS received.
fn sr_at(pacs: &Pacs) -> String {
    pacs.files()
        .iter()
        .find_map(|f| {
            let obj = dicom_object::OpenFileOptions::new()
                .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
                .open_file(f)
                .ok()?;
            (obj.meta().media_storage_sop_class_uid().trim_end_matches('\0')
                == fcdnode::report::sr::COMPREHENSIVE_3D_SR)
                .then(|| {
                    obj.meta()
                        .media_storage_sop_instance_uid()
                        .trim_end_matches('\0')
                        .to_owned()
                })
        })
        .expect("an SR at the PACS")
}

fn control_flair(dir: &Path) -> Vec<PathBuf> {
    run_ok(
        fcdnode()
            .args([
                "synth",
                "--subjects",
                "1",
                "--fcd-fraction",
                "0",
                "--seed",
                "6",
                "--dicom",
                "--no-preview",
                "--out",
            ])
            .arg(dir),
    );
    let flair = dir.join("dicom/sub-00001/FLAIR");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&flair).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

#[test]
fn a_suspected_job_reaches_a_fhir_server_that_comes_back_and_every_job_the_webhook() {
    let dir = tempdir();
    let (pacs_port, fhir_port, hook_port) = (free_port(), free_port(), free_port());
    let pacs = Pacs::start(pacs_port, &dir.path().join("pacs"));
    let hook = Receiver::start(hook_port, &dir.path().join("hook"));
    let mut node = NodeProc::configured(dir.path(), &repo().join("models/demo"), pacs_port, "");
    node.edit_config(|text| {
        format!(
            "{text}
[notify]
sr_url = \"https://pacs.example/dicom-web/studies/{{study}}/series/{{series}}/instances/{{instance}}\"

[[notify.endpoints]]
name = \"ris\"
kind = \"fhir\"
url = \"http://127.0.0.1:{fhir_port}/fhir/\"
authorization = \"Bearer test-token\"

[[notify.endpoints]]
name = \"chat\"
kind = \"webhook\"
url = \"http://127.0.0.1:{hook_port}/hooks/fcd?channel=neuro\"
when = \"all\"
"
        )
    });
    node.restart();

    let sent = node.storescu(&flair_files());
    assert!(sent.status.success());
    wait_until("a failed FHIR attempt", Duration::from_secs(300), || {
        let Some(job) = jobs(&node).first().cloned() else {
            return false;
        };
        let detail: Value = Client::new()
            .get(format!("http://127.0.0.1:{}/jobs/{}", node.api_port, job["id"]))
            .send()
            .and_then(|r| r.json())
            .unwrap_or_default();
        detail["deliveries"].as_array().is_some_and(|d| {
            d.iter()
                .any(|x| x["destination"] == "ris" && x["attempts"].as_i64().unwrap_or(0) >= 1)
        })
    });
    // The notifications went ahead with the SR; the job is reported once the rest is made, and
    // waits for the FHIR server.
    wait_until("the job reported", Duration::from_secs(60), || {
        state_of(&jobs(&node)[0]) == "reported"
    });
    let job = jobs(&node)[0].clone();
    assert_eq!(hook.requests().len(), 1, "the webhook got it already");

    let fhir = Receiver::start(fhir_port, &dir.path().join("fhir"));
    wait_until("the job to be delivered", Duration::from_secs(60), || {
        jobs(&node).first().is_some_and(|j| state_of(j) == "delivered")
    });
    let posts = fhir.requests();
    assert_eq!(posts.len(), 1, "exactly one DiagnosticReport: {posts:?}");
    let post = &posts[0];
    assert_eq!(post["path"], "/fhir/DiagnosticReport");
    assert_eq!(post["headers"]["content-type"], "application/fhir+json");
    assert_eq!(post["headers"]["authorization"], "Bearer test-token");
    let body = post["body"].as_str().unwrap().to_owned();
    let report = &validate_fhir(&[body], dir.path())[0];
    let sr_uid = sr_at(&pacs);
    assert_eq!(report["status"], "preliminary");
    assert_eq!(report["code"], "18748-4");
    assert_eq!(report["subject_id"], "SYNTH00001");
    assert_eq!(report["accession"], "SYNTH00001");
    assert_eq!(
        report["study"],
        format!("urn:oid:{}", job["study_uid"].as_str().unwrap())
    );
    let url = report["sr_url"].as_str().unwrap();
    assert!(url.ends_with(&format!("/instances/{sr_uid}")), "{url} → {sr_uid}");
    assert!(url.contains(job["study_uid"].as_str().unwrap()));
    let conclusion = report["conclusion"].as_str().unwrap();
    assert!(
        conclusion.starts_with("FCD type II suspected (AI triage, unverified)"),
        "{conclusion}"
    );
    assert_eq!(report["interpretation"], "POS");
    let p = report["probability_percent"].as_f64().unwrap();
    assert!((30.0..=100.0).contains(&p), "{p}");

    let webhook: Value = serde_json::from_str(hook.requests()[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(webhook["suspected"], true);
    assert_eq!(webhook["sr_sop_instance_uid"], sr_uid);
    assert_eq!(hook.requests()[0]["path"], "/hooks/fcd?channel=neuro");
    assert!(
        !webhook.to_string().contains("Synthetic"),
        "no patient name in webhooks"
    );

    // A control: the webhook (every result) hears of it, the FHIR endpoint (suspected) does not.
    let control = control_flair(&dir.path().join("control"));
    assert!(node.storescu(&control).status.success());
    wait_until("the control job to be delivered", Duration::from_secs(300), || {
        let jobs = jobs(&node);
        jobs.len() == 2 && state_of(&jobs[0]) == "delivered"
    });
    let requests = hook.requests();
    assert_eq!(requests.len(), 2);
    let webhook: Value = serde_json::from_str(requests[1]["body"].as_str().unwrap()).unwrap();
    assert_eq!(webhook["suspected"], false, "{webhook}");
    assert!(webhook["hotspot"].is_null());
    assert_eq!(fhir.requests().len(), 1, "no DiagnosticReport for a negative study");
    let log = node.log_text();
    assert!(
        !log.contains("test-token"),
        "the Authorization value never reaches the log"
    );
}
