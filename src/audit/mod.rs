//! The audit trail (DICOM PS3.15 A.5, IHE ATNA): who sent or received which study, when the
//! node started and stopped, which connections were refused for security reasons.
//!
//! Unlike the log, the audit trail is meant to name patients (A.5.3.4 requires the patient of
//! every transferred study), so it goes to its own file, readable by the node's user only
//! (`<data_dir>/audit/audit.log`, mode 0600, one XML message per line), and optionally to an
//! audit repository as RFC 5424 syslog over TLS (RFC 5425, `[audit.syslog]`). Events are queued
//! to one writer thread so that the SCP and the outbox never wait on the disk or the network
//! for it; the queue is bounded (a full queue makes the reporter wait, it drops nothing).

mod message;
mod syslog;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

pub use message::{Alert, AuditEvent, Direction, Peer, Source, StudyTransfer};
pub use syslog::SyslogConfig;

use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, OpenFileOptions};

use crate::dicom_build::get_str;
use crate::report::rfc3339_utc_now;

/// Messages waiting for the writer before reporters wait.
const QUEUE: usize = 4096;

/// `[audit]`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Write the audit trail at all.
    pub enabled: bool,
    /// The file, relative to `[node] data_dir` unless absolute.
    pub file: PathBuf,
    /// AuditSourceID; empty means the AE title.
    pub source_id: String,
    /// AuditEnterpriseSiteID; empty leaves it out.
    pub site_id: String,
    /// `[audit.syslog]`: also send every message to an audit repository.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syslog: Option<SyslogConfig>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            file: PathBuf::from("audit/audit.log"),
            source_id: String::new(),
            site_id: String::new(),
            syslog: None,
        }
    }
}

impl AuditConfig {
    /// Checks the file name and, when configured, the syslog address and TLS files.
    pub fn validate(&self) -> Result<(), AuditError> {
        if self.enabled && self.file.as_os_str().is_empty() {
            return Err(AuditError::File {
                path: self.file.clone(),
                source: std::io::Error::other("must name a file when enabled = true"),
            });
        }
        match &self.syslog {
            Some(s) if self.enabled => s.sender().map(drop),
            _ => Ok(()),
        }
    }
}

/// Why the audit trail cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The audit file or its directory.
    #[error("[audit] file {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `[audit.syslog]` cannot be used.
    #[error("[audit.syslog] {0}")]
    Syslog(String),
    /// The writer thread.
    #[error("[audit] cannot start the writer thread: {0}")]
    Thread(std::io::Error),
}

/// Where events are reported: cheap to clone, callable from any thread.
#[derive(Clone)]
pub struct AuditTrail {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    source: Source,
    queue: SyncSender<String>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl AuditTrail {
    /// A trail that records nothing (`[audit] enabled = false`, tools, tests).
    pub fn off() -> Self {
        Self { inner: None }
    }

    /// Opens the file (creating its directory with mode 0700) and starts the writer.
    pub fn start(config: &AuditConfig, data_dir: &Path, ae_title: &str) -> Result<Self, AuditError> {
        if !config.enabled {
            return Ok(Self::off());
        }
        let path = data_dir.join(&config.file);
        let file = open_private(&path).map_err(|source| AuditError::File {
            path: path.clone(),
            source,
        })?;
        let syslog = match &config.syslog {
            Some(s) => Some(s.sender()?),
            None => None,
        };
        let source = Source {
            source_id: if config.source_id.is_empty() {
                ae_title.to_owned()
            } else {
                config.source_id.clone()
            },
            site_id: Some(config.site_id.clone()).filter(|s| !s.is_empty()),
            ae_title: ae_title.to_owned(),
        };
        let (queue, rx) = sync_channel(QUEUE);
        let writer = std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || write_loop(rx, file, path, syslog))
            .map_err(AuditError::Thread)?;
        Ok(Self {
            inner: Some(Arc::new(Inner {
                source,
                queue,
                writer: Mutex::new(Some(writer)),
            })),
        })
    }

    /// Queues one event, stamped now.
    pub fn record(&self, event: &AuditEvent) {
        let Some(inner) = &self.inner else { return };
        let xml = event.to_xml(&inner.source, &rfc3339_utc_now());
        if inner.queue.send(xml).is_err() {
            tracing::error!("audit writer has stopped: an audit message was not written");
        }
    }

    /// Records Application Stop and waits until every queued message is written (and sent,
    /// when syslog is configured and reachable).
    pub fn stop(&self) {
        let Some(inner) = &self.inner else { return };
        self.record(&AuditEvent::Application { started: false });
        // Closing the queue ends the writer once it has drained; only the last clone can, so
        // the writer is told by a sentinel instead.
        let _ = inner.queue.send(String::new());
        let handle = inner.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

/// The study, patient and SOP class one stored or sent instance belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceIdentity {
    /// Study Instance UID.
    pub study_uid: String,
    /// Patient ID, empty when absent.
    pub patient_id: String,
    /// Patient's Name, empty when absent.
    pub patient_name: String,
    /// SOP Class UID.
    pub sop_class: String,
}

impl InstanceIdentity {
    /// From a parsed header; `None` without a Study Instance UID or SOP Class UID.
    pub fn read(header: &InMemDicomObject) -> Option<Self> {
        let text = |tag| get_str(header, tag);
        Some(Self {
            study_uid: text(tags::STUDY_INSTANCE_UID)?,
            sop_class: text(tags::SOP_CLASS_UID)?,
            patient_id: text(tags::PATIENT_ID).unwrap_or_default(),
            patient_name: text(tags::PATIENT_NAME).unwrap_or_default(),
        })
    }

    /// From a DICOM file, reading the header only.
    pub fn read_file(path: &Path) -> Option<Self> {
        let header = OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .open_file(path)
            .ok()?;
        Self::read(&header)
    }
}

/// The instances of each study that went one way with one peer, gathered into one audit
/// message per study.
#[derive(Clone, Debug, Default)]
pub struct Transfers(BTreeMap<String, StudyTransfer>);

impl Transfers {
    fn study(&mut self, id: &InstanceIdentity) -> &mut StudyTransfer {
        self.0.entry(id.study_uid.clone()).or_insert_with(|| StudyTransfer {
            study_uid: id.study_uid.clone(),
            patient_id: id.patient_id.clone(),
            patient_name: id.patient_name.clone(),
            ..StudyTransfer::default()
        })
    }

    /// One instance transferred.
    pub fn add(&mut self, id: &InstanceIdentity) {
        *self.study(id).sop_classes.entry(id.sop_class.clone()).or_default() += 1;
    }

    /// One instance of a known study that was not transferred, and why.
    pub fn fail(&mut self, id: &InstanceIdentity, why: &str) {
        let study = self.study(id);
        match &mut study.failed {
            Some((count, _)) => *count += 1,
            None => study.failed = Some((1, why.to_owned())),
        }
    }

    /// Records one message per study.
    pub fn record(self, trail: &AuditTrail, direction: Direction, peer: &Peer) {
        for transfer in self.0.into_values() {
            trail.record(&AuditEvent::Instances {
                direction,
                peer: peer.clone(),
                transfer,
            });
        }
    }
}

/// Creates `path`'s directory (0700) and opens the file for appending (0600).
fn open_private(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

/// Writes messages in batches (one fdatasync per batch) until the empty sentinel arrives or
/// every sender is gone.
fn write_loop(rx: Receiver<String>, mut file: File, path: PathBuf, mut syslog: Option<syslog::Sender>) {
    let mut batch = Vec::new();
    loop {
        let Ok(first) = rx.recv() else { return };
        let mut stop = first.is_empty();
        if !stop {
            batch.push(first);
        }
        while !stop && let Ok(next) = rx.try_recv() {
            if next.is_empty() {
                stop = true;
            } else {
                batch.push(next);
            }
        }
        let mut text = String::new();
        for message in &batch {
            text.push_str(message);
            text.push('\n');
        }
        if let Err(e) = file.write_all(text.as_bytes()).and_then(|()| file.sync_data()) {
            tracing::error!(path = %path.display(), "cannot write the audit trail: {e}");
        }
        if let Some(s) = syslog.as_mut() {
            s.send(&batch);
        }
        batch.clear();
        if stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
