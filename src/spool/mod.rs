//! Spool: the durable store behind the SCP. An instance is written to a temporary file, fsynced,
//! renamed into `spool/<study>/<series>/<sop>.dcm`, the directory fsynced (and every directory
//! created on the way, with its parent), and recorded in the job database — all before the SCP
//! answers success; directories found at open (perhaps made just before a kill -9) are fsynced
//! once before anything is stored in them. Our own outputs coming back (a PACS that forwards
//! whole studies) is recognised and discarded: the loop guard.

pub mod bell;
pub mod db;

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, OpenFileOptions};

use crate::assemble::InstanceHeader;
use crate::audit::InstanceIdentity;
use crate::dicom_build::{get_str, is_own_output, is_uid};
pub use crate::dimse::{STATUS_CANNOT_UNDERSTAND, STATUS_DATASET_MISMATCH, STATUS_OUT_OF_RESOURCES};
use crate::ingest::{InstanceSink, ReceivedInstance, StoreOutcome};
use db::{InstanceRecord, JobDb, Recorded, StoredHeader};

/// The spool directory and its job database.
pub struct Spool {
    root: PathBuf,
    db: Arc<JobDb>,
    device_uid: String,
    tmp_counter: AtomicU64,
    /// Held while creating study/series directories: a directory another association finds
    /// already there has then been fsynced (with its parent) by whoever created it.
    dir_lock: Mutex<()>,
}

/// Why the spool could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// A directory could not be created.
    #[error("spool directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The job database failed.
    #[error(transparent)]
    Db(#[from] db::DbError),
}

impl Spool {
    /// Opens the spool under `root` (created if missing) with its database `root/jobs.sqlite`.
    /// `device_uid` is this node's Device UID, for the loop guard. Partial files in
    /// `spool/tmp` are removed: nothing was acknowledged for them, and nothing else would.
    /// The directories already in the spool are fsynced once (see [`sync_existing_dirs`]).
    /// Only one node may use `root` at a time.
    pub fn open(root: &Path, device_uid: &str) -> Result<Self, SpoolError> {
        let dir_error = |(path, source)| SpoolError::Dir { path, source };
        create_dirs_durably(Path::new(""), root).map_err(dir_error)?;
        create_dirs_durably(root, Path::new("spool/tmp")).map_err(dir_error)?;
        let removed = remove_stale_parts(&root.join("spool/tmp")).map_err(dir_error)?;
        if removed > 0 {
            tracing::warn!("{removed} stale partial file(s) removed from spool/tmp (writes cut short by a crash)");
        }
        let synced = sync_existing_dirs(&root.join("spool")).map_err(dir_error)?;
        tracing::debug!(directories = synced, "spool directories synced");
        let db = Arc::new(JobDb::open(&root.join("jobs.sqlite"))?);
        Ok(Self {
            root: root.to_owned(),
            db,
            device_uid: device_uid.to_owned(),
            tmp_counter: AtomicU64::new(0),
            dir_lock: Mutex::new(()),
        })
    }

    /// The job database.
    pub fn db(&self) -> &Arc<JobDb> {
        &self.db
    }

    /// The spool root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn store_inner(&self, inst: &ReceivedInstance) -> Result<(StoreOutcome, Option<InstanceIdentity>), Refusal> {
        check_uid("Affected SOP Instance UID", &inst.sop_instance_uid)?;
        if self
            .db
            .has_instance(&inst.sop_instance_uid)
            .map_err(Refusal::resources)?
        {
            return Ok((StoreOutcome::Duplicate, None));
        }
        let tmp = self.staging_dir().join(format!(
            "{}-{}.part",
            std::process::id(),
            self.tmp_counter.fetch_add(1, Ordering::Relaxed)
        ));
        let result = self.write_and_record(inst, &tmp);
        if result.is_err()
            || matches!(
                result,
                Ok((StoreOutcome::Discarded { .. } | StoreOutcome::Duplicate, _))
            )
        {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn write_and_record(
        &self,
        inst: &ReceivedInstance,
        tmp: &Path,
    ) -> Result<(StoreOutcome, Option<InstanceIdentity>), Refusal> {
        write_part_file(inst, tmp)?;
        let header = OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .open_file(tmp)
            .map_err(|e| Refusal::understand(format!("data set does not parse: {e}")))?;
        let text = |tag, name: &str| -> Result<String, Refusal> {
            get_str(&header, tag).ok_or_else(|| Refusal::understand(format!("{name} is missing")))
        };
        let sop_uid = text(tags::SOP_INSTANCE_UID, "SOP Instance UID (0008,0018)")?;
        if sop_uid != inst.sop_instance_uid {
            return Err(Refusal {
                status: STATUS_DATASET_MISMATCH,
                reason: format!(
                    "SOP Instance UID {sop_uid} differs from the command's {}",
                    inst.sop_instance_uid
                ),
            });
        }
        if is_own_output(&header, &self.device_uid) {
            let reason = "our own output (Contributing Equipment Device UID): not analysed again".into();
            return Ok((StoreOutcome::Discarded { reason }, None));
        }
        let study = text(tags::STUDY_INSTANCE_UID, "Study Instance UID (0020,000D)")?;
        let series = text(tags::SERIES_INSTANCE_UID, "Series Instance UID (0020,000E)")?;
        check_uid("Study Instance UID", &study)?;
        check_uid("Series Instance UID", &series)?;
        let spool_dir = self.root.join("spool");
        let series_dir = spool_dir.join(&study).join(&series);
        {
            // A poisoned lock guards nothing inconsistent: the directories are on disk or not.
            let _held = self.dir_lock.lock().unwrap_or_else(|p| p.into_inner());
            create_dirs_durably(&spool_dir, &Path::new(&study).join(&series))
                .map_err(|(path, e)| Refusal::io(&path, e))?;
        }
        let path = series_dir.join(format!("{sop_uid}.dcm"));
        fs::rename(tmp, &path).map_err(|e| Refusal::io(&path, e))?;
        sync_dir(&series_dir)?;
        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        // Read once here, where the header is parsed anyway; a header that cannot be planned
        // from is still stored (acknowledged) and the tracker reports the series not usable.
        let planning = match InstanceHeader::read(&header, &path.display().to_string()) {
            Ok(h) => StoredHeader::Usable(Box::new(h)),
            Err(e) => StoredHeader::Unusable { reason: e.to_string() },
        };
        let recorded = self
            .db
            .record_instance(&InstanceRecord {
                sop_uid: &sop_uid,
                series_uid: &series,
                study_uid: &study,
                path: &path,
                series_dir: &series_dir,
                calling_ae: &inst.calling_ae,
                size,
                header: &planning,
            })
            .map_err(Refusal::resources)?;
        let outcome = match recorded {
            Recorded::New => StoreOutcome::Stored,
            Recorded::Duplicate => StoreOutcome::Duplicate,
        };
        Ok((outcome, InstanceIdentity::read(&header)))
    }

    /// Stores one instance like [`InstanceSink::store`], and says which study and patient it
    /// belongs to when it was stored (for the audit trail).
    pub fn store_identified(&self, instance: ReceivedInstance) -> (StoreOutcome, Option<InstanceIdentity>) {
        match self.store_inner(&instance) {
            Ok((outcome, identity)) => {
                if let StoreOutcome::Discarded { reason } = &outcome {
                    tracing::info!(sop_uid = %instance.sop_instance_uid, calling_ae = %instance.calling_ae, "discarded: {reason}");
                }
                (outcome, identity)
            }
            Err(refusal) => {
                tracing::error!(
                    sop_uid = %instance.sop_instance_uid,
                    calling_ae = %instance.calling_ae,
                    status = format!("{:#06X}", refusal.status),
                    "not stored: {}", refusal.reason
                );
                (refusal.into(), None)
            }
        }
    }

    /// Deletes spooled instances received more than `max_age_s` ago; returns how many.
    pub fn expire(&self, max_age_s: f64) -> Result<usize, SpoolError> {
        let paths = self.db.expire_instances(db::now() - max_age_s)?;
        for path in &paths {
            if let Err(e) = fs::remove_file(path) {
                tracing::warn!(path = %path.display(), "retention: cannot delete: {e}");
            }
        }
        Ok(paths.len())
    }
}

impl InstanceSink for Spool {
    /// `spool/tmp`: on the spool's volume, where the part files are written too.
    fn staging_dir(&self) -> PathBuf {
        self.root.join("spool/tmp")
    }

    fn store(&self, instance: ReceivedInstance) -> StoreOutcome {
        self.store_identified(instance).0
    }
}

/// A failure status and why.
struct Refusal {
    status: u16,
    reason: String,
}

impl From<Refusal> for StoreOutcome {
    fn from(refusal: Refusal) -> Self {
        StoreOutcome::Failed {
            status: refusal.status,
            reason: refusal.reason,
        }
    }
}

impl Refusal {
    fn understand(reason: String) -> Self {
        Self {
            status: STATUS_CANNOT_UNDERSTAND,
            reason,
        }
    }

    fn io(path: &Path, e: std::io::Error) -> Self {
        Self {
            status: STATUS_OUT_OF_RESOURCES,
            reason: format!("{}: {e}", path.display()),
        }
    }

    fn resources(e: db::DbError) -> Self {
        Self {
            status: STATUS_OUT_OF_RESOURCES,
            reason: e.to_string(),
        }
    }
}

/// UIDs become path components: only a valid UID may name a file or directory.
fn check_uid(name: &str, uid: &str) -> Result<(), Refusal> {
    if is_uid(uid) {
        Ok(())
    } else {
        // Its length only: a value that is not a UID may be anything the data set holds.
        Err(Refusal::understand(format!(
            "{name} is not a valid UID ({} characters; digits and dots, at most 64)",
            uid.len()
        )))
    }
}

/// A receiver that keeps each instance as `<dir>/<SOP Instance UID>.dcm` (fsynced), without
/// the job database: the PACS of `fcdnode demo` and of the benchmarks.
pub struct FolderSink {
    dir: PathBuf,
}

impl FolderSink {
    /// Stores into `dir`, which must exist.
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_owned() }
    }
}

impl InstanceSink for FolderSink {
    /// The folder itself (unnamed staging files leave no trace in it).
    fn staging_dir(&self) -> PathBuf {
        self.dir.clone()
    }

    fn store(&self, instance: ReceivedInstance) -> StoreOutcome {
        if let Err(refusal) = check_uid("Affected SOP Instance UID", &instance.sop_instance_uid) {
            return refusal.into();
        }
        let path = self.dir.join(format!("{}.dcm", instance.sop_instance_uid));
        match write_part_file(&instance, &path) {
            Ok(()) => StoreOutcome::Stored,
            Err(refusal) => refusal.into(),
        }
    }
}

/// Writes preamble, file meta group and the received data set bytes unchanged, then fsyncs.
fn write_part_file(inst: &ReceivedInstance, tmp: &Path) -> Result<(), Refusal> {
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(inst.transfer_syntax.as_str())
        .media_storage_sop_class_uid(inst.sop_class_uid.as_str())
        .media_storage_sop_instance_uid(inst.sop_instance_uid.as_str())
        .source_application_entity_title(inst.calling_ae.as_str())
        .build()
        .map_err(|e| Refusal::understand(format!("file meta group: {e}")))?;
    let file = File::create(tmp).map_err(|e| Refusal::io(tmp, e))?;
    let mut out = BufWriter::new(file);
    let head = |out: &mut BufWriter<File>| -> std::io::Result<()> {
        out.write_all(&[0u8; 128])?;
        out.write_all(b"DICM")?;
        meta.write(&mut *out).map_err(std::io::Error::other)?;
        out.flush()
    };
    head(&mut out).map_err(|e| Refusal::io(tmp, e))?;
    let mut file = out.into_inner().map_err(|e| Refusal::io(tmp, e.into_error()))?;
    inst.dataset.copy_to(&mut file).map_err(|e| Refusal::io(tmp, e))?;
    file.sync_all().map_err(|e| Refusal::io(tmp, e))
}

/// Makes a rename durable: fsync of the directory that holds the new name.
fn sync_dir(dir: &Path) -> Result<(), Refusal> {
    fsync_dir(dir).map_err(|e| Refusal::io(dir, e))
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all())
}

/// Removes the `*.part` files in `tmp`, left by a write that a kill or crash cut short (the
/// instance was never acknowledged, so the modality sends it again); returns how many.
fn remove_stale_parts(tmp: &Path) -> Result<usize, (PathBuf, std::io::Error)> {
    let mut removed = 0;
    for entry in fs::read_dir(tmp).map_err(|e| (tmp.to_owned(), e))? {
        let path = entry.map_err(|e| (tmp.to_owned(), e))?.path();
        if path.extension().is_some_and(|e| e == "part") {
            fs::remove_file(&path).map_err(|e| (path, e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Fsyncs every study and series directory under `spool` (each series before its study), then
/// `spool` itself; returns how many directories that was. A directory that a kill -9 caught
/// between its mkdir and its fsync is still there after the restart, but only in the page
/// cache, and `create_dirs_durably` takes an existing level as synced by its creator: without
/// this, instances acknowledged into it later could lose their directory, and with it their
/// names, to a power failure.
fn sync_existing_dirs(spool: &Path) -> Result<usize, (PathBuf, std::io::Error)> {
    let subdirs = |dir: &Path| -> Result<Vec<PathBuf>, (PathBuf, std::io::Error)> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| (dir.to_owned(), e))? {
            let entry = entry.map_err(|e| (dir.to_owned(), e))?;
            if entry.file_type().map_err(|e| (entry.path(), e))?.is_dir() {
                out.push(entry.path());
            }
        }
        Ok(out)
    };
    let mut synced = 0;
    for study in subdirs(spool)? {
        // spool/tmp holds files only.
        for series in subdirs(&study)? {
            fsync_dir(&series).map_err(|e| (series.clone(), e))?;
            synced += 1;
        }
        fsync_dir(&study).map_err(|e| (study.clone(), e))?;
        synced += 1;
    }
    fsync_dir(spool).map_err(|e| (spool.to_owned(), e))?;
    Ok(synced + 1)
}

/// Creates `base/rel` level by level. A file's name survives a crash only if every directory
/// above it is on disk too, so each level created here is fsynced, and then its parent, which
/// holds its name. Levels that exist already are left alone. Returns the failing path.
fn create_dirs_durably(base: &Path, rel: &Path) -> Result<(), (PathBuf, std::io::Error)> {
    let mut dir = base.to_path_buf();
    for part in rel.components() {
        let parent = dir.clone();
        dir.push(part);
        if dir.is_dir() {
            continue;
        }
        match fs::create_dir(&dir) {
            Ok(()) => {}
            // Made in the meantime by another process, which syncs what it made.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => continue,
            Err(e) => return Err((dir, e)),
        }
        fsync_dir(&dir).map_err(|e| (dir.clone(), e))?;
        // The first level of a relative path: its parent is the working directory.
        let parent = if parent.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            parent
        };
        fsync_dir(&parent).map_err(|e| (parent.clone(), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
