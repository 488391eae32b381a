//! Orthanc (Debian's `orthanc`, started here on loopback ports with its own configuration) as
//! the PACS: the series is uploaded to Orthanc over REST, Orthanc C-STOREs it to `fcdnode
//! serve` running the demo model, and the node's key image, Secondary Capture, Parametric Map,
//! Segmentation (the patient is suspected) and Structured Report come back into the same study. Then Orthanc forwards the whole study
//! (now with our outputs) to the node again, as an auto-routing PACS would: the node
//! acknowledges it and makes nothing new.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::node::{
    Destination, KEY_IMAGE, NodeProc, PARAMETRIC_MAP, SC_MULTIFRAME, SEGMENTATION, SR_3D, flair_files, free_port,
    job_classes, wait_until,
};
use crate::util::tempdir;

/// Debian's Orthanc server (package `orthanc`, installed by `scripts/setup.sh`).
const ORTHANC: &str = "/usr/sbin/Orthanc";
const MR_IMAGE: &str = "1.2.840.10008.5.1.4.1.1.4";

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

/// An Orthanc server with its index and storage in `dir`.
struct Orthanc {
    child: Child,
    http_port: u16,
    log: PathBuf,
    client: reqwest::blocking::Client,
}

impl Orthanc {
    /// Starts Orthanc with DICOM AE `ORTHANC` on `dicom_port`, knowing the node as modality
    /// `fcdnode` (`FCDNODE@127.0.0.1:node_port`).
    fn start(dir: &Path, dicom_port: u16, node_port: u16) -> Self {
        assert!(
            Path::new(ORTHANC).is_file(),
            "{ORTHANC} is missing: install Debian's `orthanc` (run `scripts/setup.sh` or `make test`)"
        );
        let http_port = free_port();
        let storage = dir.join("orthanc-db");
        std::fs::create_dir_all(&storage).unwrap();
        let config = json!({
            "Name": "fcdnode-it",
            "DicomAet": "ORTHANC",
            "DicomPort": dicom_port,
            "HttpPort": http_port,
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "TcpNoDelay": true,
            "DicomCheckCalledAet": false,
            "DicomAlwaysAllowEcho": true,
            "DicomAlwaysAllowStore": true,
            "DicomScuTimeout": 60,
            "DicomModalities": { "fcdnode": ["FCDNODE", "127.0.0.1", node_port] },
            "Plugins": [],
            "SaveJobs": false,
        });
        let config_path = dir.join("orthanc.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let log = dir.join("orthanc.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(ORTHANC)
            // Orthanc's DICOM side is DCMTK, which leaves Nagle's algorithm on unless told.
            .env("TCP_NODELAY", "1")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {ORTHANC}: {e}"));
        let mut orthanc = Self {
            child,
            http_port,
            log,
            client: http(),
        };
        let url = orthanc.url("/system");
        wait_until("Orthanc to answer over REST", Duration::from_secs(60), || {
            if let Ok(Some(status)) = orthanc.child.try_wait() {
                panic!("Orthanc exited with {status}:\n{}", orthanc.log_text());
            }
            reqwest::blocking::get(&url).is_ok_and(|r| r.status().is_success())
        });
        wait_until("Orthanc's DICOM port", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", dicom_port)).is_ok()
        });
        orthanc
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn get(&self, path: &str) -> Value {
        let response = self
            .client
            .get(self.url(path))
            .send()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status();
        let text = response.text().unwrap();
        assert!(status.is_success(), "GET {path}: {status}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: {e}: {text}"))
    }

    fn post(&self, path: &str, body: Vec<u8>) -> Value {
        let response = self
            .client
            .post(self.url(path))
            .body(body)
            .send()
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = response.status();
        let text = response.text().unwrap();
        assert!(
            status.is_success(),
            "POST {path}: {status}: {text}\nOrthanc log:\n{}",
            self.log_text()
        );
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {path}: {e}: {text}"))
    }

    /// Asks Orthanc to C-STORE `resource` (a series or study ID) to the node and waits for it.
    fn store_to_node(&self, resource: &str) -> Value {
        let body = json!({ "Resources": [resource], "Synchronous": true });
        let answer = self.post("/modalities/fcdnode/store", serde_json::to_vec(&body).unwrap());
        assert_eq!(answer["FailedInstancesCount"].as_u64(), Some(0), "{answer}");
        answer
    }

    /// The series of a study, with their main tags and instance IDs.
    fn study_series(&self, study: &str) -> Vec<Value> {
        self.get(&format!("/studies/{study}/series"))
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn instance_tags(&self, instance: &str) -> Value {
        self.get(&format!("/instances/{instance}/tags?simplify"))
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().trim_end_matches(['\0', ' ']).to_string()
}

/// Every `ReferencedSOPInstanceUID` anywhere under `v`.
fn referenced_instances(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                if k == "ReferencedSOPInstanceUID" {
                    out.insert(text(x));
                } else {
                    referenced_instances(x, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|x| referenced_instances(x, out)),
        _ => {}
    }
}

/// The SOP Class UID of a series' first instance.
fn series_class(orthanc: &Orthanc, series: &Value) -> String {
    let first = text(&series["Instances"][0]);
    text(&orthanc.instance_tags(&first)["SOPClassUID"])
}

/// Orthanc on its own ports and `fcdnode serve` with the demo model sending its results to it;
/// `scp` adds keys to the node's `[scp]`.
fn orthanc_and_node(dir: &Path, scp: &str) -> (Orthanc, NodeProc) {
    let orthanc_dicom = free_port();
    let node_dicom = free_port();
    let orthanc = Orthanc::start(dir, orthanc_dicom, node_dicom);
    let node = NodeProc::start_with(
        dir,
        &crate::util::repo().join("models/demo"),
        node_dicom,
        &Destination {
            name: "orthanc",
            ae_title: "ORTHANC",
            port: orthanc_dicom,
        },
        scp,
        "",
    );
    (orthanc, node)
}

#[test]
fn orthanc_sends_a_series_to_the_node_and_gets_every_output_back_in_the_same_study() {
    let dir = tempdir();
    // Orthanc forwards whole studies, our outputs included: accept other classes, keep none.
    let (orthanc, node) = orthanc_and_node(dir.path(), "other_storage = \"discard\"");

    // Upload the FLAIR series to Orthanc over REST, as a modality or a user would.
    let files = flair_files();
    let mut source_study = String::new();
    let mut source_series = String::new();
    for f in &files {
        let answer = orthanc.post("/instances", std::fs::read(f).unwrap());
        assert_eq!(text(&answer["Status"]), "Success", "{}: {answer}", f.display());
        source_study = text(&answer["ParentStudy"]);
        source_series = text(&answer["ParentSeries"]);
    }
    let series = orthanc.get(&format!("/series/{source_series}"));
    assert_eq!(
        series["Instances"].as_array().map(Vec::len),
        Some(files.len()),
        "{series}"
    );
    let source_series_uid = text(&series["MainDicomTags"]["SeriesInstanceUID"]);
    let source_instances: BTreeSet<String> = series["Instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| text(&orthanc.get(&format!("/instances/{}", text(id)))["MainDicomTags"]["SOPInstanceUID"]))
        .collect();
    assert_eq!(source_instances.len(), files.len());
    let source_study_uid = text(&orthanc.get(&format!("/studies/{source_study}"))["MainDicomTags"]["StudyInstanceUID"]);

    // Orthanc C-STOREs the series to the node.
    let sent = orthanc.store_to_node(&source_series);
    assert_eq!(sent["InstancesCount"].as_u64(), Some(files.len() as u64), "{sent}");

    // The node's outputs arrive as new series of the same study, one series each.
    wait_until("the job delivered", Duration::from_secs(240), || {
        node.jobs().first().is_some_and(|j| j["state"] == "delivered")
    });
    let outputs = job_classes(&node, &node.jobs()[0]);
    wait_until("the outputs' series in Orthanc", Duration::from_secs(30), || {
        let series = orthanc.study_series(&source_study);
        series.len() > outputs.len()
            && series
                .iter()
                .all(|s| s["Instances"].as_array().is_some_and(|i| !i.is_empty()))
    });
    let all = orthanc.study_series(&source_study);
    assert_eq!(all.len(), 1 + outputs.len(), "{all:#?}");
    let by_class = |class: &str| -> Vec<&Value> { all.iter().filter(|s| series_class(&orthanc, s) == class).collect() };
    assert_eq!(by_class(MR_IMAGE).len(), 1, "{all:#?}");
    for class in &outputs {
        assert_eq!(by_class(class).len(), 1, "one {class} series: {all:#?}");
    }
    let (sc, sr, pm) = (by_class(SC_MULTIFRAME), by_class(SR_3D), by_class(PARAMETRIC_MAP));
    assert_eq!(text(&sr[0]["MainDicomTags"]["Modality"]), "SR", "{:#}", sr[0]);
    // The demo model suspects the synthetic patient: its hotspot region comes back as a SEG.
    let (seg, key) = (by_class(SEGMENTATION), by_class(KEY_IMAGE));
    assert_eq!(seg.len(), 1, "a suspected study gets its Segmentation: {all:#?}");
    assert_eq!(text(&seg[0]["MainDicomTags"]["Modality"]), "SEG", "{:#}", seg[0]);
    assert_eq!(text(&key[0]["MainDicomTags"]["SeriesNumber"]), "9905", "{:#}", key[0]);
    for s in [key[0], sc[0], sr[0], pm[0], seg[0]] {
        assert_ne!(text(&s["MainDicomTags"]["SeriesInstanceUID"]), source_series_uid);
        let tags = orthanc.instance_tags(&text(&s["Instances"][0]));
        assert_eq!(text(&tags["StudyInstanceUID"]), source_study_uid, "{tags:#}");
    }

    // The SR's evidence is the source series: its instances, and nothing else but our own outputs.
    let sr_tags = orthanc.instance_tags(&text(&sr[0]["Instances"][0]));
    let evidence = &sr_tags["CurrentRequestedProcedureEvidenceSequence"];
    let evidence_series: Vec<String> = evidence[0]["ReferencedSeriesSequence"]
        .as_array()
        .unwrap_or_else(|| panic!("no evidence series in the SR: {sr_tags:#}"))
        .iter()
        .map(|s| text(&s["SeriesInstanceUID"]))
        .collect();
    assert_eq!(evidence_series, vec![source_series_uid.clone()], "{evidence:#}");
    assert_eq!(text(&evidence[0]["StudyInstanceUID"]), source_study_uid);
    let mut referenced = BTreeSet::new();
    referenced_instances(evidence, &mut referenced);
    assert!(!referenced.is_empty(), "{evidence:#}");
    assert!(
        referenced.is_subset(&source_instances),
        "the SR references instances outside the source series: {:?}",
        referenced.difference(&source_instances).collect::<Vec<_>>()
    );

    // The SR's other evidence lists every output Orthanc now holds.
    let mut pertinent = BTreeSet::new();
    referenced_instances(&sr_tags["PertinentOtherEvidenceSequence"], &mut pertinent);
    for s in [key[0], sc[0], pm[0], seg[0]] {
        let uid = text(&orthanc.instance_tags(&text(&s["Instances"][0]))["SOPInstanceUID"]);
        assert!(pertinent.contains(&uid), "the SR does not list {uid}: {pertinent:?}");
    }

    let jobs = node.jobs();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let job = node.get(&format!("/jobs/{}", jobs[0]["id"]));
    assert_eq!(job["result"]["suspected"], true, "{job}");

    // Loop guard: Orthanc forwards the whole study, our outputs included, to the node again.
    let instances_before = orthanc.get("/instances").as_array().map(Vec::len);
    let again = orthanc.store_to_node(&source_study);
    assert_eq!(
        again["InstancesCount"].as_u64(),
        Some((files.len() + outputs.len()) as u64),
        "{again}"
    );
    // Longer than the stable age and a few tracker/outbox polls.
    std::thread::sleep(Duration::from_secs(5));
    let jobs = node.jobs();
    assert_eq!(jobs.len(), 1, "the forwarded study made a job: {jobs:?}");
    assert_eq!(jobs[0]["state"], "delivered", "{jobs:?}");
    assert_eq!(
        orthanc.study_series(&source_study).len(),
        1 + outputs.len(),
        "new series in Orthanc"
    );
    assert_eq!(orthanc.get("/instances").as_array().map(Vec::len), instances_before);
    assert!(node.log_text().contains("discarded"), "{}", node.log_text());
}

/// On-demand analysis: a study uploaded to Orthanc and not routed anywhere is found by patient
/// ID and date (C-FIND) and retrieved (C-MOVE from Orthanc to the node) when a user asks the
/// node's API, analysed like a pushed study, and its SR lands back in Orthanc's study. Asking
/// for a study Orthanc does not have brings nothing.
#[test]
fn a_study_in_orthanc_is_retrieved_on_request_and_its_results_land_back_in_orthanc() {
    let dir = tempdir();
    let (orthanc, node) = orthanc_and_node(dir.path(), "");
    let files = flair_files();
    let mut study = String::new();
    for f in &files {
        let answer = orthanc.post("/instances", std::fs::read(f).unwrap());
        study = text(&answer["ParentStudy"]);
    }
    let study_uid = text(&orthanc.get(&format!("/studies/{study}"))["MainDicomTags"]["StudyInstanceUID"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(node.jobs().is_empty(), "nothing is routed to the node");

    let api = format!("http://127.0.0.1:{}/retrieve", node.api_port);
    let post = |body: Value| {
        let response = http().post(&api).json(&body).send().unwrap();
        (response.status(), response.json::<Value>().unwrap())
    };
    let ask = |uid: &str| post(json!({ "source": "orthanc", "study_uid": uid }));
    // By patient ID and study date: C-FIND finds the study, C-MOVE brings it.
    let (status, answer) = post(json!({ "source": "orthanc", "patient_id": "SYNTH00001", "study_date": "20240101" }));
    assert_eq!(status, reqwest::StatusCode::OK, "{answer}\n{}", orthanc.log_text());
    assert_eq!(answer["studies"], json!([study_uid]), "{answer}");
    assert_eq!(answer["completed"], files.len(), "{answer}");
    assert_eq!(answer["failed"], 0, "{answer}");

    wait_until("the retrieved study's job delivered", Duration::from_secs(240), || {
        node.jobs().first().is_some_and(|j| j["state"] == "delivered")
    });
    let job = &node.jobs()[0];
    assert_eq!(job["study_uid"], study_uid.as_str());
    assert_eq!(
        job["calling_ae"], "ORTHANC",
        "the C-STORE sub-operations came from Orthanc"
    );
    let outputs = job_classes(&node, job);
    wait_until("the outputs in Orthanc's study", Duration::from_secs(30), || {
        orthanc.study_series(&study).len() == 1 + outputs.len()
    });
    let series = orthanc.study_series(&study);
    let sr: Vec<&Value> = series.iter().filter(|s| series_class(&orthanc, s) == SR_3D).collect();
    assert_eq!(sr.len(), 1, "the SR is in Orthanc's study: {series:#?}");

    let (status, answer) = ask("1.2.826.0.1.3680043.8.498.999999");
    let nothing = status == reqwest::StatusCode::OK && answer["completed"] == 0;
    assert!(
        nothing || status == reqwest::StatusCode::BAD_GATEWAY,
        "{status}: {answer}"
    );
    let (status, answer) = post(json!({ "source": "orthanc", "patient_id": "SYNTH00001", "study_date": "20230101" }));
    assert_eq!(status, reqwest::StatusCode::BAD_GATEWAY, "{answer}");
    assert_eq!(answer["error"], "no study matches", "{answer}");
    let (status, answer) = post(json!({ "source": "orthanc", "patient_id": "SYNTH*", "study_date": "20240101" }));
    assert_eq!(status, reqwest::StatusCode::BAD_GATEWAY, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("without wildcards"),
        "{answer}"
    );
    let (status, _) = post(json!({ "source": "orthanc", "patient_id": "SYNTH00001" }));
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "a patient ID needs a date");
    let (status, answer) = ask("not a uid");
    assert_eq!(status, reqwest::StatusCode::BAD_GATEWAY, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("not a UID"), "{answer}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(node.jobs().len(), 1);
}
