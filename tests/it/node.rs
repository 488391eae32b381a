//! `fcdnode serve` as a process, with DCMTK as the modality (`storescu`, `echoscu`) and as the
//! PACS (`storescp`): results come back, survive kill -9 at any point, wait for a PACS that is
//! down, and a late instance supersedes an earlier result.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dicom_dictionary_std::tags;
use dicom_object::OpenFileOptions;
use fcdnode::package::manifest::Modality;
use fcdnode::report::ResultSummary;
use serde_json::Value;

use crate::api::sample;
use crate::util::{dciodvfy, fcdnode, repo, run_ok, tempdir, tool};

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// Polls `f` every 100 ms until it is true; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One synthetic FCD patient as DICOM (1 mm, T1w and FLAIR), made once per test run.
pub fn patient() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = repo().join("target/it-fixtures/node-patient");
        if !dir.join("dicom").exists() {
            let _ = std::fs::remove_dir_all(&dir);
            run_ok(
                fcdnode()
                    .args([
                        "synth",
                        "--subjects",
                        "1",
                        "--fcd-fraction",
                        "1",
                        "--seed",
                        "5",
                        "--dicom",
                        "--no-preview",
                        "--out",
                    ])
                    .arg(&dir),
            );
        }
        dir
    })
}

/// The patient's FLAIR files, sorted.
pub fn flair_files() -> Vec<PathBuf> {
    let dir = patient().join("dicom/sub-00001/FLAIR");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// A small model package whose graph is built by the root library (see `infer.rs`).
pub fn model(dir: &Path) -> PathBuf {
    let path = dir.join("model");
    std::fs::create_dir_all(&path).unwrap();
    crate::infer::package(&path, Modality::Flair);
    path
}

/// `storescp` playing the PACS on `port`, writing into `dir`.
pub struct Pacs {
    child: Child,
    pub dir: PathBuf,
}

impl Pacs {
    pub fn start(port: u16, dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let child = Command::new(tool("storescp"))
            .env("TCP_NODELAY", "1")
            .args(["-aet", "PACS", "--output-directory"])
            .arg(dir)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start storescp: {e}"));
        wait_until("storescp to listen", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Self {
            child,
            dir: dir.to_owned(),
        }
    }

    /// Files received so far.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        files
    }
}

impl Drop for Pacs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a test node sends its results: a destination on loopback.
pub struct Destination<'a> {
    pub name: &'a str,
    pub ae_title: &'a str,
    pub port: u16,
}

/// A running `fcdnode serve`.
pub struct NodeProc {
    child: Option<Child>,
    /// A command the node runs under (e.g. strace and its options), empty for none.
    wrapper: Vec<String>,
    /// `RUST_LOG` for the node.
    rust_log: String,
    /// More arguments after `serve --config FILE`.
    args: Vec<String>,
    config: PathBuf,
    pub dicom_port: u16,
    pub api_port: u16,
    log: PathBuf,
}

impl NodeProc {
    /// Writes a config into `dir` (spool and results there too) and starts the node.
    /// Starts a node that sends its results to `storescp` as PACS@`pacs_port`; `scp` and
    /// `pipeline` add keys to those tables.
    pub fn start(dir: &Path, model: &Path, pacs_port: u16, scp: &str, pipeline: &str) -> Self {
        let pacs = Destination {
            name: "pacs",
            ae_title: "PACS",
            port: pacs_port,
        };
        Self::start_with(dir, model, free_port(), &pacs, scp, pipeline)
    }

    /// Writes a config into `dir` (spool and results there too), listening for DICOM on
    /// `dicom_port` and sending results to `destination`, and starts the node.
    pub fn start_with(
        dir: &Path,
        model: &Path,
        dicom_port: u16,
        destination: &Destination<'_>,
        scp: &str,
        pipeline: &str,
    ) -> Self {
        let mut node = Self::configure(dir, model, dicom_port, destination, scp, pipeline);
        node.restart();
        node
    }

    /// Like [`NodeProc::start`], but the first start already runs under `wrapper`: a trace
    /// then covers the node's whole life and the model loads once.
    pub fn start_under(dir: &Path, model: &Path, pacs_port: u16, wrapper: &[&str]) -> Self {
        Self::launch(dir, model, pacs_port, wrapper, "info")
    }

    /// Like [`NodeProc::start`], logging at `rust_log` (a `RUST_LOG` value; empty: unset, the
    /// node's default).
    pub fn start_logging(dir: &Path, model: &Path, pacs_port: u16, rust_log: &str) -> Self {
        Self::launch(dir, model, pacs_port, &[], rust_log)
    }

    fn launch(dir: &Path, model: &Path, pacs_port: u16, wrapper: &[&str], rust_log: &str) -> Self {
        let pacs = Destination {
            name: "pacs",
            ae_title: "PACS",
            port: pacs_port,
        };
        let mut node = Self::configure(dir, model, free_port(), &pacs, "", "");
        node.wrapper = wrapper.iter().map(|s| s.to_string()).collect();
        node.rust_log = rust_log.to_owned();
        node.restart();
        node
    }

    /// Writes the config into `dir` (results to PACS@`pacs_port`, `scp` added to `[scp]`);
    /// starts nothing: edit the config, then [`NodeProc::restart`].
    pub fn configured(dir: &Path, model: &Path, pacs_port: u16, scp: &str) -> Self {
        let pacs = Destination {
            name: "pacs",
            ae_title: "PACS",
            port: pacs_port,
        };
        Self::configure(dir, model, free_port(), &pacs, scp, "")
    }

    /// Writes the config into `dir`; starts nothing.
    fn configure(
        dir: &Path,
        model: &Path,
        dicom_port: u16,
        destination: &Destination<'_>,
        scp: &str,
        pipeline: &str,
    ) -> Self {
        let api_port = free_port();
        let config = dir.join("fcdnode.toml");
        let text = format!(
            r#"[node]
data_dir = "{data}"
model = "{model}"

[scp]
ae_title = "FCDNODE"
bind = "127.0.0.1:{dicom_port}"
{scp}

[tracker]
stable_age_s = 1.0
poll_s = 0.2

[pipeline]
poll_s = 0.2
{pipeline}

[outbox]
send_to = ["{name}"]
poll_s = 0.2

[outbox.retry]
initial_backoff_s = 1
max_backoff_s = 2

[[destinations]]
name = "{name}"
ae_title = "{ae_title}"
host = "127.0.0.1"
port = {port}
timeout_s = 30

[api]
bind = "127.0.0.1:{api_port}"
"#,
            data = dir.join("data").display(),
            model = model.display(),
            name = destination.name,
            ae_title = destination.ae_title,
            port = destination.port,
        );
        std::fs::write(&config, text).unwrap();
        Self {
            child: None,
            wrapper: Vec::new(),
            rust_log: "info".into(),
            args: Vec::new(),
            config,
            dicom_port,
            api_port,
            log: dir.join("node.log"),
        }
    }

    /// Starts the process (again) and waits for `/readyz`.
    pub fn restart(&mut self) {
        self.spawn();
        self.wait_for("/readyz", "the node to be ready");
    }

    /// Starts the process (again) and waits only for `/healthz`: for a node that is not
    /// meant to become ready.
    pub fn restart_unready(&mut self) {
        self.spawn();
        self.wait_for("/healthz", "the node's API");
    }

    /// Adds arguments after `serve --config FILE` for the next start.
    pub fn add_args(&mut self, args: &[&str]) {
        self.args.extend(args.iter().map(|a| a.to_string()));
    }

    /// Rewrites the configuration file with `edit`; it takes effect at the next start.
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        std::fs::write(&self.config, edit(text)).unwrap();
    }

    /// The process id of the running node (or of its wrapper).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_fcdnode"));
                c
            }
            None => fcdnode(),
        };
        if self.rust_log.is_empty() {
            command.env_remove("RUST_LOG");
        } else {
            command.env("RUST_LOG", &self.rust_log);
        }
        let child = command
            .args(["serve", "--config"])
            .arg(&self.config)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start fcdnode serve: {e}"));
        self.child = Some(child);
    }

    fn wait_for(&mut self, path: &str, what: &str) {
        let url = format!("http://127.0.0.1:{}{path}", self.api_port);
        wait_until(what, Duration::from_secs(60), || {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("fcdnode serve exited with {status}:\n{}", self.log_text());
            }
            reqwest::blocking::get(&url).is_ok_and(|r| r.status().is_success())
        });
    }

    /// Restarts the node under `wrapper` (a program and its arguments before the node's).
    pub fn restart_under(&mut self, wrapper: &[&str]) {
        self.kill();
        self.wrapper = wrapper.iter().map(|s| s.to_string()).collect();
        self.restart();
    }

    /// kill -9 (of the node, also when it runs under a wrapper such as strace, which then
    /// exits by itself with its output written).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if !self.wrapper.is_empty() {
                for pid in descendants(child.id()) {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                }
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, as `systemctl stop` or `docker stop` sends, and waits for the node to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the node is running");
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the node did not stop within 60 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> Value {
        let url = format!("http://127.0.0.1:{}{path}", self.api_port);
        reqwest::blocking::get(&url)
            .and_then(|r| r.json())
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    pub fn jobs(&self) -> Vec<Value> {
        self.get("/jobs").as_array().cloned().unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.api_port);
        reqwest::blocking::get(&url)
            .and_then(|r| r.text())
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    /// Sends files with storescu as a modality would.
    pub fn storescu(&self, files: &[PathBuf]) -> std::process::Output {
        self.storescu_command(files)
            .output()
            .unwrap_or_else(|e| panic!("cannot run storescu: {e}"))
    }

    /// The storescu a modality runs (verbose: one "Received Store Response" line per
    /// acknowledged file, in the order given), for callers that start it in the background.
    pub fn storescu_command(&self, files: &[PathBuf]) -> Command {
        let mut command = Command::new(tool("storescu"));
        command
            .env("TCP_NODELAY", "1")
            // -R: propose exactly the SOP classes of the files.
            .args(["-v", "-R", "-aet", "MRI", "-aec", "FCDNODE", "127.0.0.1"])
            .arg(self.dicom_port.to_string())
            .args(files);
        command
    }
}

/// The processes below `pid` (children first, then theirs), from /proc.
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let tasks =
        std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>());
    for task in tasks.unwrap_or_default() {
        let children = std::fs::read_to_string(task.join("children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()) {
            out.push(child);
            out.extend(descendants(child));
        }
    }
    out
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(crate) fn state_of(job: &Value) -> &str {
    job["state"].as_str().unwrap_or("?")
}

/// Waits until the node has `count` jobs, all delivered: only then has the PACS answered every
/// C-STORE, so its files are whole (storescp writes in place while receiving).
pub(crate) fn wait_all_delivered(node: &NodeProc, count: usize, timeout: Duration) {
    wait_until(&format!("{count} delivered jobs"), timeout, || {
        let jobs = node.jobs();
        jobs.len() == count && jobs.iter().all(|j| state_of(j) == "delivered")
    });
}

pub(crate) fn sop_class(path: &Path) -> String {
    let obj = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    obj.meta()
        .media_storage_sop_class_uid()
        .trim_end_matches('\0')
        .to_string()
}

pub(crate) const SC_MULTIFRAME: &str = "1.2.840.10008.5.1.4.1.1.7.4";
/// The key image: one single-frame Secondary Capture.
pub(crate) const KEY_IMAGE: &str = "1.2.840.10008.5.1.4.1.1.7";
pub(crate) const SR_3D: &str = "1.2.840.10008.5.1.4.1.1.88.34";
pub(crate) const PARAMETRIC_MAP: &str = "1.2.840.10008.5.1.4.1.1.30";
pub(crate) const SEGMENTATION: &str = "1.2.840.10008.5.1.4.1.1.66.4";

/// The SOP classes of a study's outputs, sorted: key image, SC, PM and SR, and the Segmentation
/// when there is one.
fn output_classes(segmentation: bool) -> Vec<String> {
    let mut c: Vec<String> = [KEY_IMAGE, PARAMETRIC_MAP, SC_MULTIFRAME, SR_3D]
        .into_iter()
        .chain(segmentation.then_some(SEGMENTATION))
        .map(str::to_string)
        .collect();
    c.sort();
    c
}

/// The SOP classes `job` delivered, read from its result: key image, SC, PM and SR, and a
/// Segmentation when the result names one (suspected studies only; the centre-tap model's map
/// may be flat).
pub(crate) fn job_classes(node: &NodeProc, job: &serde_json::Value) -> Vec<String> {
    let detail = node.get(&format!("/jobs/{}", job["id"]));
    let result = &detail["result"];
    let segmentation = result["seg_file"].is_string();
    assert!(
        !segmentation || result["suspected"] == true,
        "a Segmentation for a study not suspected: {detail}"
    );
    output_classes(segmentation)
}

fn classes(files: &[PathBuf]) -> Vec<String> {
    let mut c: Vec<String> = files.iter().map(|f| sop_class(f)).collect();
    c.sort();
    c
}

#[test]
fn dcmtk_modality_to_node_to_dcmtk_pacs() {
    let dir = tempdir();
    let pacs_port = free_port();
    let pacs = Pacs::start(pacs_port, &dir.path().join("pacs"));
    // A PACS that forwards whole studies sends our SC/SR back: other classes are accepted and
    // reach the spool, whose loop guard recognises our Device UID.
    let node = NodeProc::start(
        dir.path(),
        &model(dir.path()),
        pacs_port,
        "other_storage = \"store\"",
        "",
    );
    run_ok(
        Command::new(tool("echoscu"))
            .args(["-aet", "MRI", "-aec", "FCDNODE", "127.0.0.1"])
            .arg(node.dicom_port.to_string()),
    );
    let files = flair_files();
    let sent = node.storescu(&files);
    assert!(
        sent.status.success(),
        "storescu: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    wait_all_delivered(&node, 1, Duration::from_secs(180));
    let received = pacs.files();
    let jobs = node.jobs();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let job = node.get(&format!("/jobs/{}", jobs[0]["id"]));
    assert_eq!(classes(&received), job_classes(&node, &jobs[0]));
    for f in &received {
        // dciodvfy fails the test on any error; warnings are shown.
        for warning in dciodvfy(f) {
            eprintln!("dciodvfy {}: {warning}", f.display());
        }
    }
    let dump = run_ok(Command::new(tool("dsrdump")).arg(received.iter().find(|f| sop_class(f) == SR_3D).unwrap()));
    assert!(String::from_utf8_lossy(&dump.stdout).contains("SCOORD3D"));

    wait_until("job delivered", Duration::from_secs(10), || {
        state_of(&node.jobs()[0]) == "delivered"
    });
    assert!(job["result"]["probability"].as_f64().is_some(), "{job}");
    let metrics = node.metrics();
    assert!(
        metrics.contains(&format!("fcdnode_instances_received_total {}", files.len())),
        "{metrics}"
    );
    assert!(metrics.contains("fcdnode_jobs{state=\"delivered\"} 1"), "{metrics}");
    // Turnaround (last C-STORE-RSP → SR acknowledged) is recorded as the job's last delivery
    // settles, just after the job reads delivered.
    let count = r#"fcdnode_stage_seconds_count{stage="turnaround"}"#;
    wait_until("a turnaround sample", Duration::from_secs(10), || {
        sample(&node.metrics(), count).is_some_and(|n| n >= 1.0)
    });
    let metrics = node.metrics();
    let sum = sample(&metrics, r#"fcdnode_stage_seconds_sum{stage="turnaround"}"#);
    // No job starts before its series has been quiet for the stable age (1 s here).
    assert!(sum.is_some_and(|s| s >= 1.0), "{metrics}");

    // Loop guard: the PACS forwards our own outputs back; they are acknowledged, not analysed.
    let back = node.storescu(&received);
    assert!(
        back.status.success(),
        "storescu: {}",
        String::from_utf8_lossy(&back.stderr)
    );
    // A second copy of the series is idempotent: acknowledged, nothing reopens.
    let again = node.storescu(&files[..3]);
    assert!(again.status.success());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        node.jobs().len(),
        1,
        "own output or duplicates made a job: {:?}",
        node.jobs()
    );
    assert_eq!(pacs.files().len(), received.len());
    assert_eq!(
        node.log_text().matches("discarded: our own output").count(),
        received.len(),
        "{}",
        node.log_text()
    );
}

#[test]
fn kill_9_while_receiving_and_while_inferring_loses_nothing_and_delivers_once() {
    let dir = tempdir();
    let pacs_port = free_port();
    let pacs = Pacs::start(pacs_port, &dir.path().join("pacs"));
    // Occlusion makes inference long enough to be killed in the middle of it.
    let mut node = NodeProc::start(dir.path(), &model(dir.path()), pacs_port, "", "explain = \"occlusion\"");

    let files = flair_files();
    let spool_count = || {
        walk(&dir.path().join("data/spool"))
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
            .count()
    };
    // Kill while receiving: storescu runs in the background; the node dies mid-series.
    let sender = node
        .storescu_command(&files)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("part of the series in the spool", Duration::from_secs(60), || {
        spool_count() >= files.len() / 3
    });
    node.kill();
    let out = sender.wait_with_output().unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let acknowledged = log.matches("Received Store Response (Success)").count();
    assert!(
        acknowledged > 0 && acknowledged < files.len(),
        "acknowledged {acknowledged}:\n{log}"
    );
    let spooled = spool_count();
    assert!(
        spooled >= acknowledged,
        "{acknowledged} acknowledged but only {spooled} in the spool"
    );

    // The modality sends the whole series again; duplicates are idempotent.
    node.restart();
    let sent = node.storescu(&files);
    assert!(
        sent.status.success(),
        "storescu: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    assert_eq!(spool_count(), files.len());

    // Kill while inferring.
    wait_until("the job to be assembled", Duration::from_secs(120), || {
        node.jobs()
            .first()
            .is_some_and(|j| matches!(state_of(j), "assembled" | "inferred"))
    });
    node.kill();
    assert!(pacs.files().is_empty(), "results went out before inference finished");
    node.restart();
    wait_until("SC, PM and SR at the PACS", Duration::from_secs(300), || {
        pacs.files().len() >= 3
    });
    wait_until("job delivered", Duration::from_secs(30), || {
        node.jobs().first().is_some_and(|j| state_of(j) == "delivered")
    });
    std::thread::sleep(Duration::from_secs(2));
    let jobs = node.jobs();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["attempts"].as_i64(), Some(2), "{jobs:?}");
    assert_eq!(classes(&pacs.files()), job_classes(&node, &jobs[0]));
}

#[test]
fn partial_files_left_by_a_kill_are_removed_at_start_and_the_next_series_is_delivered() {
    let dir = tempdir();
    let pacs_port = free_port();
    let pacs = Pacs::start(pacs_port, &dir.path().join("pacs"));
    let mut node = NodeProc::start(dir.path(), &model(dir.path()), pacs_port, "", "");
    node.kill();
    // What a kill -9 in the middle of writing an instance leaves behind.
    let stale = dir.path().join("data/spool/tmp/4242-0.part");
    std::fs::write(&stale, vec![0u8; 4096]).unwrap();
    node.restart();
    assert!(!stale.exists(), "{} survived the start", stale.display());
    assert!(
        node.log_text()
            .contains("1 stale partial file(s) removed from spool/tmp"),
        "{}",
        node.log_text()
    );
    assert!(node.storescu(&flair_files()).status.success());
    wait_all_delivered(&node, 1, Duration::from_secs(180));
    assert_eq!(
        classes(&pacs.files()),
        job_classes(&node, &node.jobs()[0]),
        "PACS files {:?}; job {}; node log:\n{}",
        pacs.files(),
        node.get(&format!("/jobs/{}", node.jobs()[0]["id"])),
        node.log_text()
    );
}

#[test]
fn results_wait_for_a_pacs_that_is_down_and_arrive_once() {
    let dir = tempdir();
    let pacs_port = free_port();
    let node = NodeProc::start(dir.path(), &model(dir.path()), pacs_port, "", "");
    let sent = node.storescu(&flair_files());
    assert!(sent.status.success());
    wait_until("a failed delivery attempt", Duration::from_secs(180), || {
        node.jobs().first().is_some_and(|j| {
            let detail = node.get(&format!("/jobs/{}", j["id"]));
            detail["deliveries"]
                .as_array()
                .is_some_and(|d| d.iter().any(|x| x["attempts"].as_i64().unwrap_or(0) >= 1))
        })
    });
    // The SR went ahead while the rest was made; the job waits, reported, with the rest.
    wait_until("the job reported", Duration::from_secs(60), || {
        state_of(&node.jobs()[0]) == "reported"
    });
    let job = node.jobs()[0].clone();
    let detail = node.get(&format!("/jobs/{}", job["id"]));
    let error = detail["deliveries"][0]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("transient"), "{detail}");

    let pacs = Pacs::start(pacs_port, &dir.path().join("pacs"));
    wait_until("SC, PM and SR at the PACS", Duration::from_secs(60), || {
        pacs.files().len() >= 3
    });
    wait_until("job delivered", Duration::from_secs(30), || {
        state_of(&node.jobs()[0]) == "delivered"
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        classes(&pacs.files()),
        job_classes(&node, &node.jobs()[0]),
        "duplicates: {:?}",
        pacs.files()
    );
    assert!(
        node.metrics()
            .contains("fcdnode_delivery_failures_total{destination=\"pacs\"}")
    );
}

#[test]
fn a_late_instance_reopens_the_series_and_the_new_sr_supersedes_the_old() {
    let dir = tempdir();
    let pacs_port = free_port();
    let pacs = Pacs::start(pacs_port, &dir.path().join("pacs"));
    let node = NodeProc::start(dir.path(), &model(dir.path()), pacs_port, "", "");
    let files = flair_files();
    let (first, late) = files.split_at(files.len() - 2);
    assert!(node.storescu(first).status.success());
    wait_all_delivered(&node, 1, Duration::from_secs(180));
    let first_sr = pacs.files().into_iter().find(|f| sop_class(f) == SR_3D).unwrap();
    let first_sr_uid = sop_instance(&first_sr);
    assert!(node.storescu(late).status.success());
    wait_all_delivered(&node, 2, Duration::from_secs(180));
    let jobs = node.jobs();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    let mut sent: Vec<String> = jobs.iter().flat_map(|j| job_classes(&node, j)).collect();
    sent.sort();
    assert_eq!(classes(&pacs.files()), sent, "{:?}", pacs.files());
    assert_eq!(jobs[0]["supersedes"], jobs[1]["id"], "{jobs:?}");
    let second_sr = pacs
        .files()
        .into_iter()
        .find(|f| sop_class(f) == SR_3D && sop_instance(f) != first_sr_uid)
        .unwrap();
    let dump = run_ok(Command::new(tool("dcmdump")).arg(&second_sr));
    let text = String::from_utf8_lossy(&dump.stdout);
    let at = text
        .find("PredecessorDocumentsSequence")
        .unwrap_or_else(|| panic!("no predecessor:\n{text}"));
    assert!(text[at..].contains(&first_sr_uid), "{text}");
    dciodvfy(&second_sr);
}

#[test]
fn a_two_channel_model_waits_for_both_series_or_says_which_is_missing() {
    let dir = tempdir();
    let pacs_port = free_port();
    let pacs = Pacs::start(pacs_port, &dir.path().join("pacs"));
    let model = dir.path().join("model2");
    std::fs::create_dir_all(&model).unwrap();
    crate::infer::package_with(&model, &[Modality::T1w, Modality::Flair]);
    let mut node = NodeProc::start(dir.path(), &model, pacs_port, "", "");
    // Only the FLAIR arrives: after the channel wait the job fails and says why.
    let config = dir.path().join("fcdnode.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("stable_age_s = 1.0", "stable_age_s = 1.0\nchannel_wait_s = 4.0"),
    )
    .unwrap();
    node.kill();
    node.restart();
    assert!(node.storescu(&flair_files()).status.success());
    // A restart while the study waits for its T1w: the wait starts again, it is not forgotten.
    std::thread::sleep(Duration::from_millis(2500));
    node.kill();
    node.restart();
    wait_until("the job to fail", Duration::from_secs(120), || {
        node.jobs().first().is_some_and(|j| state_of(j) == "failed")
    });
    let job = &node.jobs()[0];
    assert!(job["reason"].as_str().unwrap_or_default().contains("T1w"), "{job}");
    // The T1w arrives: the study now has both channels and runs.
    let t1w_dir = patient().join("dicom/sub-00001/T1w");
    let t1w: Vec<PathBuf> = std::fs::read_dir(&t1w_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(node.storescu(&t1w).status.success());
    wait_until("SC and SR at the PACS", Duration::from_secs(180), || {
        pacs.files().len() >= 2
    });
    let jobs = node.jobs();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert_eq!(jobs[0]["series"].as_array().map(Vec::len), Some(2), "{jobs:?}");
}

pub(crate) fn sop_instance(path: &Path) -> String {
    let obj = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .unwrap();
    obj.meta()
        .media_storage_sop_instance_uid()
        .trim_end_matches('\0')
        .to_string()
}

pub(crate) fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn demo_command_runs_the_whole_loop_on_one_machine() {
    let dir = tempdir();
    let model = model(dir.path());
    let out = dir.path().join("demo");
    let run = run_ok(
        fcdnode()
            .args(["demo", "--timeout-s", "300", "--out"])
            .arg(&out)
            .arg("--model")
            .arg(&model),
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(stdout.matches(" delivered ").count(), 2, "{stdout}");
    assert!(stdout.contains(" fcd ") && stdout.contains(" hc "), "{stdout}");
    // A patient's hotspot (three comma-separated coordinates) comes with its distance to the
    // synthetic lesion; a control's never does.
    for line in stdout.lines().filter(|l| l.contains(" delivered ")) {
        let has_hotspot = line.matches(", ").count() >= 2;
        let distance = line.contains("mm from the lesion");
        assert_eq!(distance, has_hotspot && line.contains(" fcd "), "{line}");
    }
    let received: Vec<PathBuf> = std::fs::read_dir(out.join("pacs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    // SC, PM and SR of each study, and a Segmentation for each suspected one, as the node's
    // result.json files say.
    let mut expected = Vec::new();
    for job in std::fs::read_dir(out.join("node/results")).unwrap() {
        let result = ResultSummary::read(&job.unwrap().path().join("result.json")).unwrap();
        assert!(result.seg_file.is_none() || result.suspected, "{result:?}");
        expected.extend(output_classes(result.seg_file.is_some()));
    }
    expected.sort();
    assert_eq!(classes(&received), expected, "{received:?}");
    for line in stdout.lines().filter(|l| l.contains("preview ")) {
        let path = line.rsplit(' ').next().unwrap();
        assert!(Path::new(path).is_file(), "{path}");
    }
}

/// Connections and datagrams a strace log shows going anywhere but loopback: the node may only
/// talk to its configured peers (all on 127.0.0.1 here), never to a resolver or a telemetry
/// endpoint.
fn outbound_beyond_loopback(trace: &str) -> Vec<String> {
    trace
        .lines()
        .filter(|l| {
            ["connect(", "sendto(", "sendmsg(", "sendmmsg("]
                .iter()
                .any(|c| l.contains(c))
        })
        .filter(|l| {
            let inet_elsewhere = (l.contains("AF_INET") && !l.contains("inet_addr(\"127.0.0.1\")"))
                && !l.contains("inet_pton(AF_INET6, \"::1\"");
            // A name lookup goes through nscd or systemd-resolved over a Unix socket, or UDP 53.
            let resolver = l.contains("AF_UNIX") && (l.contains("nscd") || l.contains("resolve"));
            inet_elsewhere || resolver || l.contains("htons(53)")
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn the_node_talks_to_nobody_but_its_configured_peers() {
    let dir = tempdir();
    let pacs_port = free_port();
    let pacs = Pacs::start(pacs_port, &dir.path().join("pacs"));
    let mut node = NodeProc::start(dir.path(), &model(dir.path()), pacs_port, "", "");
    let trace = dir.path().join("strace.log");
    let trace_arg = trace.display().to_string();
    let started = Instant::now();
    node.restart_under(&[
        // cargo sets the switch for tests (.cargo/config.toml); the binary must set it itself.
        "env",
        "-u",
        "ORT_DISABLE_TELEMETRY",
        "strace",
        "-f",
        "-qq",
        "-e",
        "trace=connect,sendto,sendmsg,sendmmsg",
        "-o",
        &trace_arg,
    ]);
    assert!(node.storescu(&flair_files()).status.success());
    wait_all_delivered(&node, 1, Duration::from_secs(240));
    assert_eq!(
        classes(&pacs.files()),
        job_classes(&node, &node.jobs()[0]),
        "PACS files {:?}; job {}; node log:\n{}",
        pacs.files(),
        node.get(&format!("/jobs/{}", node.jobs()[0]["id"])),
        node.log_text()
    );
    // ONNX Runtime's telemetry used to look up its endpoint about 9 s after start.
    if let Some(rest) = Duration::from_secs(20).checked_sub(started.elapsed()) {
        std::thread::sleep(rest);
    }
    node.kill();
    let text = std::fs::read_to_string(&trace).unwrap();
    assert!(
        text.contains(&format!("htons({pacs_port})")),
        "the trace must show the delivery to the PACS, or it proves nothing:\n{text}"
    );
    let dns = r#"1234 connect(7, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.0.0.2")}, 16) = 0"#;
    assert_eq!(
        outbound_beyond_loopback(dns).len(),
        1,
        "the filter must catch a DNS query"
    );
    let outbound = outbound_beyond_loopback(&text);
    assert!(
        outbound.is_empty(),
        "traffic beyond the configured peers:\n{}",
        outbound.join("\n")
    );
}

/// A `strace -f` log as whole calls in the order they returned: a call that another thread's
/// line interrupted (`<unfinished ...>`, then `<... name resumed>`) is joined and placed where
/// it returned, which is what ordering claims need.
fn strace_calls(trace: &str) -> Vec<String> {
    let mut pending: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    let mut calls = Vec::new();
    for line in trace.lines() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(start) = rest.strip_suffix(" <unfinished ...>") {
            pending.insert(pid, start);
        } else if let Some(resumed) = rest.strip_prefix("<... ") {
            let tail = resumed.split_once(" resumed>").map_or("", |(_, t)| t);
            calls.push(format!("{}{tail}", pending.remove(pid).unwrap_or("?(")));
        } else {
            calls.push(rest.to_string());
        }
    }
    calls
}

fn header_uid(path: &Path, tag: dicom_core::Tag) -> String {
    let obj = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    obj.element(tag)
        .ok()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches('\0').to_string())
        .unwrap_or_else(|| panic!("{}: no {tag}", path.display()))
}

#[test]
fn the_first_instance_of_a_new_study_is_acknowledged_after_every_new_directory_is_synced() {
    let dir = tempdir();
    let trace = dir.path().join("strace.log");
    let trace_arg = trace.display().to_string();
    let mut node = NodeProc::start_under(
        dir.path(),
        &model(dir.path()),
        free_port(),
        &[
            "strace",
            "-f",
            "-qq",
            // Stops only at the traced calls: the node runs at nearly full speed.
            "--seccomp-bpf",
            // File descriptors with their paths, sockets with their addresses.
            "-yy",
            // Binary buffers (the PDUs) in hex.
            "-x",
            "-e",
            "trace=mkdir,mkdirat,fsync,fdatasync,syncfs,rename,renameat,renameat2,unlink,unlinkat,sendto,write",
            "-o",
            &trace_arg,
        ],
    );
    let file = flair_files()[0].clone();
    let sent = node.storescu(std::slice::from_ref(&file));
    assert!(
        sent.status.success(),
        "storescu: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let journal = dir.path().join("data/spool/journal");
    wait_until("the journal segment retired", Duration::from_secs(30), || {
        walk(&journal).is_empty()
    });
    node.kill();
    let calls = strace_calls(&std::fs::read_to_string(&trace).unwrap());
    let show = || calls.join("\n");

    let spool = dir.path().join("data/spool");
    let study = spool.join(header_uid(&file, tags::STUDY_INSTANCE_UID));
    let series = study.join(header_uid(&file, tags::SERIES_INSTANCE_UID));
    let stored = series.join(format!("{}.dcm", header_uid(&file, tags::SOP_INSTANCE_UID)));
    assert!(stored.is_file(), "{} not in the spool", stored.display());

    let first = |what: &str, from: usize, f: &dyn Fn(&str) -> bool| -> usize {
        calls
            .iter()
            .skip(from)
            .position(|c| f(c))
            .map(|i| i + from)
            .unwrap_or_else(|| panic!("no {what} after call {from} in the trace:\n{}", show()))
    };
    let ok = |c: &str| c.ends_with(" = 0");
    let mkdir = |dir: &Path| {
        let quoted = format!("\"{}\"", dir.display());
        first(&format!("mkdir {}", dir.display()), 0, &|c| {
            (c.starts_with("mkdir(") || c.starts_with("mkdirat(")) && c.contains(&quoted) && ok(c)
        })
    };
    let is_fsync_of = |c: &str, path: &Path| {
        (c.starts_with("fsync(") || c.starts_with("fdatasync("))
            && c.contains(&format!("<{}>)", path.display()))
            && ok(c)
    };
    // The C-STORE-RSP: the first P-DATA-TF (PDU type 04) the node writes on the association.
    let socket = format!("127.0.0.1:{}->", node.dicom_port);
    let rsp = first("C-STORE-RSP (P-DATA-TF on the association)", 0, &|c| {
        (c.starts_with("sendto(") || c.starts_with("write("))
            && c.contains(&socket)
            && (c.contains(">, \"\\x04") || c.contains(">, \"\\4"))
    });
    let study_made = mkdir(&study);
    let series_made = mkdir(&series);
    assert!(study_made < series_made && series_made < rsp, "{}", show());
    let renamed = first("the rename into the series directory", series_made, &|c| {
        c.starts_with("rename") && c.contains(&format!("\"{}\"", stored.display())) && ok(c)
    });
    assert!(renamed < rsp, "acknowledged before the file had its name:\n{}", show());
    let synced_between = |path: &Path, from: usize| calls[from..rsp].iter().any(|c| is_fsync_of(c, path));
    for (path, after, why) in [
        (&spool, study_made, "the spool directory (holds the new study's name)"),
        (&study, study_made, "the new study directory"),
        (&study, series_made, "the study directory (holds the new series' name)"),
        (&series, series_made, "the new series directory"),
    ] {
        assert!(
            synced_between(path, after),
            "{why} not fsynced between call {after} and the C-STORE-RSP (call {rsp}):\n{}",
            show()
        );
    }
    // The instance itself: its journal record synced (the segment was created durably: file,
    // then the journal directory) before the answer, and that is the last sync before it.
    let segment = journal.join("1.seg");
    let record = first("the journal record's fdatasync", 0, &|c| {
        c.starts_with("fdatasync(") && c.contains(&format!("<{}>)", segment.display())) && ok(c)
    });
    assert!(
        record < rsp,
        "acknowledged before the journal record was synced:\n{}",
        show()
    );
    assert!(
        synced_between(&journal, study_made),
        "the journal directory:\n{}",
        show()
    );
    let last_sync = calls[..rsp]
        .iter()
        .rposition(|c| c.starts_with("fsync(") || c.starts_with("fdatasync("))
        .unwrap_or(0);
    assert_eq!(
        last_sync,
        record,
        "one sync of the instance, right before the answer:\n{}",
        show()
    );
    // After the answer: one sync of the whole volume (the file, its directory entry and its
    // database row), then the segment is deleted.
    let volume_synced = first("a syncfs after the answer", rsp, &|c| c.starts_with("syncfs(") && ok(c));
    let deleted = first("the segment deleted", rsp, &|c| {
        c.starts_with("unlink") && c.contains(&format!("\"{}\"", segment.display())) && ok(c)
    });
    assert!(
        volume_synced < deleted,
        "the segment was deleted before the volume was synced:\n{}",
        show()
    );
    // The order, for the record (`--nocapture`): PDUs cut to their start.
    for (i, call) in calls.iter().enumerate().take(deleted + 1).skip(study_made) {
        let shown: String = call.chars().take(150).collect();
        let mark = if i == rsp { "   <- C-STORE-RSP" } else { "" };
        println!("{shown}{mark}");
    }
}

/// A TCP connection to the node's DICOM port from `source` (any 127.0.0.0/8 address is this
/// host), as a client that then says nothing.
fn connect_from(source: [u8; 4], port: u16) -> std::net::TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let stream = runtime
        .block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind((std::net::Ipv4Addr::from(source), 0).into())?;
            let stream = socket.connect(([127, 0, 0, 1], port).into()).await?;
            stream.into_std()
        })
        .unwrap_or_else(|e| panic!("connect from {source:?}: {e}"));
    stream.set_nonblocking(false).unwrap();
    stream
}

/// Reads until the node closes the connection; how long that took, or None if it stayed open
/// for `within`.
fn closed_within(stream: &mut std::net::TcpStream, within: Duration) -> Option<Duration> {
    use std::io::Read;
    let start = Instant::now();
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return None,
            Err(_) => return Some(start.elapsed()),
        }
    }
}

/// More silent connections than `max_associations` (20 against 16, from five addresses within
/// the default pending caps) lock no modality out: they hold no association slot, so storescu
/// sends a series at once. Before admission was apart from associations, the first 16 held
/// every slot for the whole read timeout and storescu was rejected.
#[test]
fn silent_connections_beyond_max_associations_lock_no_modality_out() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &model(dir.path()), free_port(), "", "");
    let silent: Vec<std::net::TcpStream> = (2..=6u8)
        .flat_map(|host| (0..4).map(move |_| host))
        .map(|host| connect_from([127, 0, 0, host], node.dicom_port))
        .collect();
    assert_eq!(silent.len(), 20);
    // Every silent connection has been accepted by the node before storescu connects.
    std::thread::sleep(Duration::from_millis(500));
    let files = flair_files();
    let started = Instant::now();
    let sent = node.storescu(&files);
    assert!(
        sent.status.success(),
        "storescu was locked out by silent connections: {}\n{}",
        String::from_utf8_lossy(&sent.stderr),
        node.log_text()
    );
    println!(
        "{} instances sent in {:?} beside 20 silent connections",
        files.len(),
        started.elapsed()
    );
    wait_until("a job for the series", Duration::from_secs(60), || {
        !node.jobs().is_empty()
    });
    drop(silent);
}

/// Six silent connections from one address with `max_pending_per_address = 4`: the last two
/// are closed at once, the log naming the address and the cap; the four admitted are closed
/// at the 2 s handshake deadline, long before the 60 s read timeout, each with a log line.
#[test]
fn pending_connections_are_capped_per_address_and_closed_at_the_handshake_deadline() {
    let dir = tempdir();
    let scp = "handshake_timeout_s = 2\nread_timeout_s = 60\nmax_pending_per_address = 4";
    let node = NodeProc::start(dir.path(), &model(dir.path()), free_port(), scp, "");
    let mut silent: Vec<std::net::TcpStream> = (0..6).map(|_| connect_from([127, 0, 0, 2], node.dicom_port)).collect();
    let names: Vec<String> = silent.iter().map(|s| s.local_addr().unwrap().to_string()).collect();
    let closed: Vec<Duration> = silent
        .iter_mut()
        .zip(&names)
        .map(|(stream, name)| {
            closed_within(stream, Duration::from_secs(30))
                .unwrap_or_else(|| panic!("{name} still open after 30 s (read timeout 60 s, deadline 2 s)"))
        })
        .collect();
    println!("closed after {closed:?}");
    wait_until("six log lines", Duration::from_secs(10), || {
        let log = node.log_text();
        names.iter().all(|n| log.contains(n.as_str()))
    });
    let log = node.log_text();
    let line_of = |name: &str| -> String { log.lines().filter(|l| l.contains(name)).collect::<Vec<_>>().join("\n") };
    for name in &names[..4] {
        let line = line_of(name);
        assert!(
            line.contains("WARN") && line.contains("no A-ASSOCIATE-RQ in time") && line.contains("handshake_timeout_s"),
            "{name}: {line}"
        );
    }
    for name in &names[4..] {
        let line = line_of(name);
        assert!(
            line.contains("WARN")
                && line.contains("too many pending connections")
                && line.contains("max_pending_per_address"),
            "{name}: {line}"
        );
    }
    // The node serves on, from that address too.
    let echo = Command::new(tool("echoscu"))
        .args(["-aet", "MRI", "-aec", "FCDNODE", "127.0.0.1"])
        .arg(node.dicom_port.to_string())
        .output()
        .unwrap();
    assert!(echo.status.success(), "{}", String::from_utf8_lossy(&echo.stderr));
}

/// `/readyz` follows `[node] min_free_mb`: a floor above the free space of the data volume
/// makes it answer 503 with the volume and the key (the process lives: `/healthz` is 200); the
/// default floor leaves it ready.
#[test]
fn readiness_follows_the_free_space_floor_in_the_config() {
    let dir = tempdir();
    let mut node = NodeProc::start(dir.path(), &model(dir.path()), free_port(), "", "");
    node.kill();
    node.edit_config(|text| text.replacen("[node]\n", "[node]\nmin_free_mb = 1000000000000\n", 1));
    node.restart_unready();
    let url = format!("http://127.0.0.1:{}/readyz", node.api_port);
    let answer = reqwest::blocking::get(&url).unwrap();
    let status = answer.status();
    let body = answer.text().unwrap();
    assert_eq!(status.as_u16(), 503, "{body}");
    assert!(
        body.contains("spool volume") && body.contains("below [node] min_free_mb = 1000000000000"),
        "{body}"
    );
    // Below the floor the SCP refuses instances as out of resources: the modality keeps them.
    let refused = Command::new(tool("storescu"))
        .args(["-v", "-R", "-aet", "MRI", "-aec", "FCDNODE", "127.0.0.1"])
        .arg(node.dicom_port.to_string())
        .arg(&flair_files()[0])
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    )
    .to_lowercase();
    assert!(said.contains("refused: outofresources"), "{said}");
    assert!(
        node.log_text().contains("below [node] min_free_mb"),
        "{}",
        node.log_text()
    );
    assert_eq!(node.jobs().len(), 0, "nothing was stored");
    node.kill();
    node.edit_config(|text| text.replacen("min_free_mb = 1000000000000\n", "", 1));
    node.restart();
    let answer = reqwest::blocking::get(&url).unwrap();
    assert!(answer.status().is_success(), "{:?}", answer.text());
}

/// A job whose results cannot be written (here a file stands where the results directory
/// belongs, as real a fault as a full disk to the writer, and one root cannot bypass) is not
/// failed: it runs again with backoff, and once the file is gone it is delivered, without a
/// restart.
#[test]
fn a_job_that_cannot_write_its_results_runs_again_and_is_delivered_once_it_can() {
    let dir = tempdir();
    let pacs_port = free_port();
    let _pacs = Pacs::start(pacs_port, &dir.path().join("pacs"));
    let node = NodeProc::start(dir.path(), &model(dir.path()), pacs_port, "", "");
    let pid = node.pid();
    let results = dir.path().join("data/results");
    let _ = std::fs::remove_dir_all(&results);
    std::fs::write(&results, b"not a directory").unwrap();
    let sent = node.storescu(&flair_files());
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    // Two failed runs: the job is retried by itself, not failed.
    wait_until("two failed runs of the job", Duration::from_secs(180), || {
        node.log_text().matches("cannot write the job's results").count() >= 2
    });
    let jobs = node.jobs();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_ne!(state_of(&jobs[0]), "failed", "{:?}", jobs[0]);
    assert!(node.log_text().contains("job tries again later"));
    std::fs::remove_file(&results).unwrap();
    wait_all_delivered(&node, 1, Duration::from_secs(180));
    assert_eq!(node.pid(), pid, "the node was restarted");
    let job = &node.jobs()[0];
    assert!(job["attempts"].as_i64().unwrap_or(0) >= 3, "{job}");
}

#[test]
fn a_pdu_out_of_turn_is_logged_by_type_and_length_never_by_content() {
    use std::io::{Read, Write};

    use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};

    let dir = tempdir();
    // Everything the node and its libraries log, down to trace.
    let node = NodeProc::start_logging(dir.path(), &model(dir.path()), free_port(), "trace");
    const CANARY: &str = "CANARY^PATIENT";
    // Patient's Name (0010,0010), explicit VR LE, as a data set fragment carries it.
    let mut data = Vec::new();
    for _ in 0..16 {
        data.extend_from_slice(&[0x10, 0x00, 0x10, 0x00, b'P', b'N', 14, 0]);
        data.extend_from_slice(CANARY.as_bytes());
    }
    let pdu = Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: 1,
            value_type: PDataValueType::Data,
            is_last: true,
            data,
        }],
    };
    let mut bytes = Vec::new();
    dicom_ul::write_pdu(&mut bytes, &pdu).unwrap();
    let pdu_length = bytes.len() - 6;

    // A P-DATA-TF before any A-ASSOCIATE-RQ.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", node.dicom_port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let client = stream.local_addr().unwrap().to_string();
    stream.write_all(&bytes).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert_eq!(answer.first(), Some(&0x07), "expected an A-ABORT, got {answer:02X?}");

    // The node still serves.
    run_ok(
        Command::new(tool("echoscu"))
            .args(["-aet", "MRI", "-aec", "FCDNODE", "127.0.0.1"])
            .arg(node.dicom_port.to_string()),
    );

    let log = node.log_text();
    let about_client: Vec<&str> = log.lines().filter(|l| l.contains(&client)).collect();
    assert!(
        about_client
            .iter()
            .any(|l| l.contains("WARN") && l.contains("P-DATA-TF") && l.contains(&pdu_length.to_string())),
        "no WARN naming the PDU type and length {pdu_length} for {client}:\n{}",
        about_client.join("\n")
    );
    for line in &about_client {
        assert!(line.len() < 500, "{} bytes logged for one PDU:\n{line}", line.len());
    }
    // The canary as text, as Debug prints bytes (decimal) and as hex.
    let decimal = CANARY.bytes().map(|b| b.to_string()).collect::<Vec<_>>().join(", ");
    let hex: String = CANARY.bytes().map(|b| format!("{b:02x}")).collect();
    for needle in [CANARY, decimal.as_str(), hex.as_str()] {
        assert!(!log.contains(needle), "data set bytes in the log ({needle}):\n{log}");
    }
}

/// Patient data sent through every way the node refuses or drops an instance never reaches its
/// log, even at trace level: a data set whose element overruns it (0xC000), one naming another
/// instance than its command (0xA900), one whose Study Instance UID is not a UID, a C-STORE on
/// the wrong SOP class (0x0122), one over `max_instance_mb` (0xA700), our own output coming back
/// (discarded), a data set cut off by an A-ABORT, and one refused below the free-space floor.
#[test]
fn canary_patient_data_never_reaches_the_log_on_any_refusal() {
    use dicom_core::{DataElement, PrimitiveValue, VR, value::DataSetSequence};
    use dicom_dictionary_std::tags;
    use dicom_object::InMemDicomObject;
    use dicom_ul::pdu::{AbortRQSource, PDataValueType, Pdu};

    use crate::ingest::{Raw, command, echo, pdv};

    const CANARY: &str = "CANARY^PATIENT";
    const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
    const SC: &str = "1.2.840.10008.5.1.4.1.1.7";
    let dir = tempdir();
    let mut node = NodeProc::start_logging(dir.path(), &model(dir.path()), free_port(), "trace");
    node.kill();
    node.edit_config(|text| text.replacen("[scp]\n", "[scp]\nmax_instance_mb = 1\n", 1));
    node.restart();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", node.dicom_port).parse().unwrap();
    let uid = |n: u32| format!("1.2.826.0.1.3680043.10.1.99.{n}");
    // A data set with the canary in Patient Name, Patient ID and a private-looking comment.
    let data_set = |sop: &str, study: &str, extra: &dyn Fn(&mut InMemDicomObject)| -> Vec<u8> {
        let mut obj = InMemDicomObject::new_empty();
        let mut put = |tag, vr, value: &str| obj.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
        put(tags::SOP_CLASS_UID, VR::UI, MR);
        put(tags::SOP_INSTANCE_UID, VR::UI, sop);
        put(tags::PATIENT_NAME, VR::PN, CANARY);
        put(tags::PATIENT_ID, VR::LO, CANARY);
        put(tags::IMAGE_COMMENTS, VR::LT, CANARY);
        put(tags::STUDY_INSTANCE_UID, VR::UI, study);
        put(tags::SERIES_INSTANCE_UID, VR::UI, &uid(900));
        put(tags::MODALITY, VR::CS, "MR");
        extra(&mut obj);
        let mut bytes = Vec::new();
        obj.write_dataset_with_ts(
            &mut bytes,
            &dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased(),
        )
        .unwrap();
        bytes
    };
    let none = |_: &mut InMemDicomObject| {};
    let store = |raw: &mut Raw, id: u16, class: &str, sop: &str, data: &[u8]| -> (u16, String) {
        let rq = command(0x0001, id, class, Some(sop), true);
        let mut values = vec![pdv(3, PDataValueType::Command, true, &rq)];
        let chunks: Vec<&[u8]> = data.chunks(16000).collect();
        for (n, chunk) in chunks.iter().enumerate() {
            values.push(pdv(3, PDataValueType::Data, n + 1 == chunks.len(), chunk));
            raw.pdata(std::mem::take(&mut values));
        }
        raw.response()
    };

    let mut raw = Raw::associate(addr, 16384);
    // An element that claims more bytes than the data set has.
    let mut overrun = data_set(&uid(1), &uid(100), &none);
    overrun.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0]);
    overrun.extend_from_slice(&0x0100_0000u32.to_le_bytes());
    overrun.extend_from_slice(CANARY.as_bytes());
    assert_eq!(store(&mut raw, 1, MR, &uid(1), &overrun).0, 0xC000);
    // The data set names another instance than its command.
    assert_eq!(
        store(&mut raw, 2, MR, &uid(2), &data_set(&uid(3), &uid(100), &none)).0,
        0xA900
    );
    // Study Instance UID is not a UID.
    assert_eq!(
        store(&mut raw, 3, MR, &uid(4), &data_set(&uid(4), CANARY, &none)).0,
        0xC000
    );
    // The wrong SOP class for the context.
    assert_eq!(
        store(&mut raw, 4, SC, &uid(5), &data_set(&uid(5), &uid(100), &none)).0,
        0x0122
    );
    // Over max_instance_mb = 1.
    let big = data_set(&uid(6), &uid(100), &|obj| {
        let value = CANARY.repeat(100_000).into_bytes();
        obj.put(DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(value)));
    });
    assert_eq!(store(&mut raw, 5, MR, &uid(6), &big).0, 0xA700);
    // Our own output coming back: acknowledged, not kept.
    let ours = data_set(&uid(7), &uid(100), &|obj| {
        let mut item = InMemDicomObject::new_empty();
        item.put(DataElement::new(
            tags::DEVICE_UID,
            VR::UI,
            PrimitiveValue::from(fcdnode::report::DEFAULT_DEVICE_UID),
        ));
        obj.put(DataElement::new(
            tags::CONTRIBUTING_EQUIPMENT_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(vec![item]),
        ));
    });
    assert_eq!(store(&mut raw, 6, MR, &uid(7), &ours).0, 0x0000);
    assert_eq!(
        echo(&mut raw, 7),
        0x0000,
        "the association went on through every refusal"
    );
    // A data set cut off by an A-ABORT.
    let rq = command(0x0001, 8, MR, Some(&uid(8)), true);
    let half = data_set(&uid(8), &uid(100), &none);
    raw.pdata(vec![
        pdv(3, PDataValueType::Command, true, &rq),
        pdv(3, PDataValueType::Data, false, &half),
    ]);
    raw.send(&Pdu::AbortRQ {
        source: AbortRQSource::ServiceUser,
    });
    assert!(raw.closed_by_peer());

    // Below the free-space floor: refused as out of resources.
    node.kill();
    node.edit_config(|text| text.replacen("[node]\n", "[node]\nmin_free_mb = 1000000000000\n", 1));
    node.restart_unready();
    let mut raw = Raw::associate(addr, 16384);
    assert_eq!(
        store(&mut raw, 9, MR, &uid(9), &data_set(&uid(9), &uid(100), &none)).0,
        0xA700
    );
    raw.release();
    assert_eq!(node.jobs().len(), 0, "nothing was kept");

    let log = node.log_text();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "the log is at trace level"
    );
    for refusal in ["0xC000", "0xA900", "0x0122", "0xA700"] {
        assert!(log.contains(refusal), "no log line for {refusal}");
    }
    let decimal = CANARY.bytes().map(|b| b.to_string()).collect::<Vec<_>>().join(", ");
    let hex: String = CANARY.bytes().map(|b| format!("{b:02x}")).collect();
    for needle in [CANARY, "CANARY", decimal.as_str(), hex.as_str()] {
        let hits: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
        assert!(
            hits.is_empty(),
            "patient data in the log ({needle}):\n{}",
            hits.join("\n")
        );
    }
}

/// 10,000 malformed connections from a seeded generator (random bytes; A-ASSOCIATE-RQs cut,
/// bit-flipped or with lying lengths; associations followed by mutated P-DATA, unknown PDU
/// types and lengths up to 4 GiB), one after another; the node answers or closes each, keeps
/// running, and then stores a real series and delivers its results.
#[test]
fn ten_thousand_malformed_connections_then_a_real_series() {
    use std::io::{Read, Write};

    use dicom_ul::pdu::{
        AssociationRQ, PDataValue, PDataValueType, Pdu, PresentationContextProposed, UserVariableItem,
    };
    use rand::{Rng, SeedableRng};

    const CONNECTIONS: usize = 10_000;
    let dir = tempdir();
    let pacs_port = free_port();
    let pacs = Pacs::start(pacs_port, &dir.path().join("pacs"));
    let node = NodeProc::start(dir.path(), &model(dir.path()), pacs_port, "handshake_timeout_s = 2", "");
    let pid = node.pid();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(15);
    let pdu_bytes = |pdu: &Pdu| {
        let mut out = Vec::new();
        dicom_ul::write_pdu(&mut out, pdu).unwrap();
        out
    };
    let rq = pdu_bytes(&Pdu::AssociationRQ(AssociationRQ {
        protocol_version: 1,
        calling_ae_title: "FUZZ".into(),
        called_ae_title: "FCDNODE".into(),
        application_context_name: "1.2.840.10008.3.1.1.1".into(),
        presentation_contexts: vec![PresentationContextProposed {
            id: 1,
            abstract_syntax: "1.2.840.10008.5.1.4.1.1.4".into(),
            transfer_syntaxes: vec!["1.2.840.10008.1.2.1".into()],
        }],
        user_variables: vec![UserVariableItem::MaxLength(16384)],
    }));
    let store_rq = crate::ingest::command(0x0001, 1, "1.2.840.10008.5.1.4.1.1.4", Some("1.2.3.4"), true);
    let mut kinds = [0usize; 5];
    for _ in 0..CONNECTIONS {
        let kind = rng.random_range(0..5);
        kinds[kind] += 1;
        let mutate = |mut bytes: Vec<u8>, rng: &mut rand_chacha::ChaCha8Rng| {
            for _ in 0..rng.random_range(1..8) {
                let at = rng.random_range(0..bytes.len());
                bytes[at] ^= 1 << rng.random_range(0..8);
            }
            bytes
        };
        let (first, then): (Vec<u8>, Option<Vec<u8>>) = match kind {
            // Random bytes.
            0 => ((0..rng.random_range(1..2048)).map(|_| rng.random()).collect(), None),
            // An RQ with bits flipped.
            1 => (mutate(rq.clone(), &mut rng), None),
            // An RQ cut short, or whose PDU length lies (up to 4 GiB).
            2 => {
                let mut cut = rq[..rng.random_range(1..rq.len())].to_vec();
                if cut.len() >= 6 && rng.random_bool(0.5) {
                    cut[2..6].copy_from_slice(&rng.random::<u32>().to_be_bytes());
                }
                (cut, None)
            }
            // A good RQ, then a mutated P-DATA with a command.
            3 => {
                let pdata = pdu_bytes(&Pdu::PData {
                    data: vec![PDataValue {
                        presentation_context_id: 1,
                        value_type: PDataValueType::Command,
                        is_last: true,
                        data: store_rq.clone(),
                    }],
                });
                (rq.clone(), Some(mutate(pdata, &mut rng)))
            }
            // A good RQ, then an unknown PDU type or a lying length.
            _ => {
                let mut pdu = vec![rng.random_range(0..=0xFFu8), 0];
                pdu.extend_from_slice(&rng.random::<u32>().to_be_bytes());
                pdu.extend((0..rng.random_range(0..64)).map(|_| rng.random::<u8>()));
                (rq.clone(), Some(pdu))
            }
        };
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", node.dicom_port)) else {
            panic!("the node stopped accepting connections");
        };
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = stream.write_all(&first);
        if let Some(then) = then {
            // Wait for the answer to the RQ before sending what follows.
            let mut head = [0u8; 6];
            if stream.read_exact(&mut head).is_ok() && head[0] == 0x02 {
                let len = u32::from_be_bytes([head[2], head[3], head[4], head[5]]) as usize;
                let mut rest = vec![0u8; len.min(1 << 20)];
                let _ = stream.read_exact(&mut rest);
                let _ = stream.write_all(&then);
            }
        }
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
    }
    println!("{CONNECTIONS} malformed connections (random, flipped RQ, cut/lying RQ, bad P-DATA, bad PDU): {kinds:?}");
    assert_eq!(node.pid(), pid, "the node process survived");
    assert!(!node.log_text().contains("panicked"), "{}", node.log_text());
    let sent = node.storescu(&flair_files());
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    wait_until("the real series delivered", Duration::from_secs(240), || {
        node.jobs().first().is_some_and(|j| j["state"] == "delivered")
    });
    assert_eq!(node.jobs().len(), 1, "{:?}", node.jobs());
    assert!(!pacs.files().is_empty());
}

/// Without `RUST_LOG` the node logs what an administrator reads (associations, jobs, deliveries)
/// and none of ONNX Runtime's info chatter; a redirected log has no colour codes and no
/// `Some(...)` wrappers.
#[test]
fn the_default_log_is_info_for_the_node_plain_and_readable() {
    let dir = tempdir();
    let pacs_port = free_port();
    let _pacs = Pacs::start(pacs_port, &dir.path().join("pacs"));
    let mut node = NodeProc::start_logging(dir.path(), &model(dir.path()), pacs_port, "");
    let sent = node.storescu(&flair_files());
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    wait_all_delivered(&node, 1, Duration::from_secs(180));
    node.kill();
    let log = node.log_text();
    for expected in [
        "DICOM SCP listening",
        "node ready",
        "association ended",
        "result=released",
        "stored=180",
        "job created",
        "state=assembled",
        "state=inferred",
        "job reported",
        "job delivered",
    ] {
        assert!(log.contains(expected), "{expected:?} missing:\n{log}");
    }
    assert!(!log.contains('\u{1b}'), "ANSI escape codes in a redirected log");
    assert!(!log.contains("Some("), "Option wrappers in the log:\n{log}");
    let ort_info = log.lines().filter(|l| l.contains(" INFO ort")).count();
    assert_eq!(ort_info, 0, "ONNX Runtime info lines:\n{log}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[node]\nbogus = 1\n").unwrap();
    let out = fcdnode().args(["check-config", "--config"]).arg(&bad).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(said.matches("unknown field `bogus`").count(), 1, "{said}");
}

/// `deploy/fcdnode.service` passes `systemd-analyze verify` (pointed at the binary under test).
#[test]
fn the_systemd_unit_verifies() {
    let dir = tempdir();
    let unit = std::fs::read_to_string(repo().join("deploy/fcdnode.service"))
        .unwrap()
        .replace("/usr/local/bin/fcdnode", env!("CARGO_BIN_EXE_fcdnode"));
    assert!(unit.contains("DynamicUser=yes") && unit.contains("StateDirectory=fcdnode"));
    assert!(unit.contains("Restart=on-failure"));
    let path = dir.path().join("fcdnode.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze is required (Debian package systemd)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

/// `--log-format json --log-file F --log-level debug`: every line of the file is a JSON object
/// with a timestamp, a level and the event's fields, debug events included; nothing on stderr.
#[test]
fn the_node_logs_json_lines_to_a_file_when_asked() {
    let dir = tempdir();
    let mut node = NodeProc::configured(dir.path(), &model(dir.path()), free_port(), "");
    let file = dir.path().join("fcdnode.jsonl");
    node.add_args(&["--log-format", "json", "--log-level", "debug", "--log-file"]);
    node.add_args(&[file.to_str().unwrap()]);
    node.restart();
    let echo = Command::new(tool("echoscu"))
        .args(["-aet", "MRI", "-aec", "FCDNODE", "127.0.0.1"])
        .arg(node.dicom_port.to_string())
        .output()
        .unwrap();
    assert!(echo.status.success());
    assert!(node.terminate().success());
    let text = std::fs::read_to_string(&file).unwrap();
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        events
            .iter()
            .all(|e| e["timestamp"].is_string() && e["level"].is_string())
    );
    let message = |m: &str| {
        events
            .iter()
            .any(|e| e["fields"]["message"].as_str().is_some_and(|s| s.contains(m)))
    };
    assert!(message("node ready") && message("association accepted"), "{text}");
    assert!(
        events.iter().any(|e| e["level"] == "DEBUG"),
        "--log-level debug shows debug events"
    );
    // stderr keeps only the console lines of `serve` ("listening", "stopping").
    assert!(!node.log_text().contains("association accepted"), "{}", node.log_text());
}
