//! Spool: the durable store behind the SCP. Before the SCP answers success, an instance is
//! appended to a journal segment and that is synced (one `fdatasync`, see [`journal`]); then it
//! is written to `spool/<study>/<series>/<sop>.dcm` (through a part file and a rename) and
//! recorded in the job database, both without syncs of their own: a segment is deleted only
//! after a sync of the whole volume, and one found at open is replayed. A data set too large
//! to hold in memory skips the journal: its file is fsynced, renamed, the directory fsynced and
//! the row committed with a sync. Every directory created on the way is fsynced with its parent;
//! directories found at open (perhaps made just before a kill -9) are fsynced once before
//! anything is stored in them. Our own outputs coming back (a PACS that forwards whole studies)
//! are recognised and discarded: the loop guard.

pub mod bell;
pub mod db;
mod journal;

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, FileMetaTableBuilder, OpenFileOptions};

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
    journal: journal::Journal,
    /// `data_dir/lock`, held exclusively while the spool is open: a second node on the same
    /// data directory would replay (and delete) this one's live journal segments.
    _lock: File,
}

/// The journal's directory under the data directory.
const JOURNAL_DIR: &str = "spool/journal";

/// How long a journal segment rests unused before [`Spool::retire_journal`] retires it.
pub const JOURNAL_IDLE: std::time::Duration = std::time::Duration::from_millis(500);

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
    /// Another process holds this data directory.
    #[error("{path} is locked: another fcdnode is running on this data directory")]
    InUse { path: PathBuf },
    /// An instance in a journal segment left by an earlier process could not be written again;
    /// the segment is kept for the next start.
    #[error("spool journal {segment}: an instance cannot be restored: {reason}")]
    Replay { segment: PathBuf, reason: String },
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
        let lock = lock_data_dir(root)?;
        create_dirs_durably(root, Path::new("spool/tmp")).map_err(dir_error)?;
        let removed = remove_stale_parts(&root.join("spool/tmp")).map_err(dir_error)?;
        if removed > 0 {
            tracing::warn!("{removed} stale partial file(s) removed from spool/tmp (writes cut short by a crash)");
        }
        let synced = sync_existing_dirs(&root.join("spool")).map_err(dir_error)?;
        tracing::debug!(directories = synced, "spool directories synced");
        create_dirs_durably(root, Path::new(JOURNAL_DIR)).map_err(dir_error)?;
        let db = Arc::new(JobDb::open(&root.join("jobs.sqlite"))?);
        let spool = Self {
            root: root.to_owned(),
            db,
            device_uid: device_uid.to_owned(),
            tmp_counter: AtomicU64::new(0),
            dir_lock: Mutex::new(()),
            journal: journal::Journal::new(&root.join(JOURNAL_DIR), root),
            _lock: lock,
        };
        let replayed = spool.replay_journal()?;
        if replayed > 0 {
            tracing::info!(instances = replayed, "spool journal replayed");
        }
        Ok(spool)
    }

    /// Retires the journal segments unused for `idle` (or full): one sync of the volume, then
    /// they are deleted. Returns how many; after a failed sync they stay until the next start
    /// replays them.
    pub fn retire_journal(&self, idle: std::time::Duration) -> Result<usize, SpoolError> {
        self.journal.retire(idle).map_err(|source| SpoolError::Dir {
            path: self.journal_dir(),
            source,
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
        let tmp = self.part_path();
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

    /// A data set held in memory goes through the journal (one sync); one staged in a file
    /// (large) is written and synced in place (three syncs).
    fn write_and_record(
        &self,
        inst: &ReceivedInstance,
        tmp: &Path,
    ) -> Result<(StoreOutcome, Option<InstanceIdentity>), Refusal> {
        match inst.dataset.in_memory() {
            Some(dataset) if dataset.len() < journal::MAX_PAYLOAD => self.store_journaled(inst, dataset, tmp),
            _ => self.store_synced(inst, tmp),
        }
    }

    /// Appends the instance to a journal segment and syncs that, then writes its file and
    /// database row unsynced (the journal's retirement or replay makes them durable).
    fn store_journaled(
        &self,
        inst: &ReceivedInstance,
        dataset: &[u8],
        tmp: &Path,
    ) -> Result<(StoreOutcome, Option<InstanceIdentity>), Refusal> {
        let mut payload = file_head(inst)?;
        payload.extend_from_slice(dataset);
        let header = parse_head(&payload)?;
        let names = match examine(&header, Some(&inst.sop_instance_uid), &self.device_uid)? {
            Examined::Keep(names) => names,
            Examined::Discard(reason) => return Ok((StoreOutcome::Discarded { reason }, None)),
        };
        // The directories first (durably, once per series): a volume that cannot hold them
        // refuses the instance before anything is journaled. The part file too: created
        // before the record's sync, it does not wait behind that sync's journal commit.
        let (series_dir, path) = self.place(&names)?;
        write_part(tmp, &payload)?;
        let mut segment = self.journal.take().map_err(|e| Refusal::io(&self.journal_dir(), e))?;
        let appended = segment.append(&payload).map_err(|e| Refusal::io(segment.path(), e));
        let stored = appended.and_then(|()| {
            self.move_in(
                &header,
                &names,
                (&series_dir, &path),
                &inst.calling_ae,
                tmp,
                payload.len(),
            )
        });
        self.journal.rest(segment);
        stored
    }

    /// Renames a journaled instance's part file `tmp` (holding `len` bytes after the preamble)
    /// to `path` in `series_dir` and records it, unsynced.
    fn move_in(
        &self,
        header: &DefaultDicomObject,
        names: &Names,
        (series_dir, path): (&Path, &Path),
        calling_ae: &str,
        tmp: &Path,
        len: usize,
    ) -> Result<(StoreOutcome, Option<InstanceIdentity>), Refusal> {
        fs::rename(tmp, path).map_err(|e| Refusal::io(path, e))?;
        self.index(header, names, series_dir, path, calling_ae, 128 + len as u64, false)
    }

    /// The instance file written and synced, renamed into place, the directory synced, the
    /// database row synced: for data sets too large for the journal.
    fn store_synced(
        &self,
        inst: &ReceivedInstance,
        tmp: &Path,
    ) -> Result<(StoreOutcome, Option<InstanceIdentity>), Refusal> {
        write_part_file(inst, tmp)?;
        let header = OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .open_file(tmp)
            .map_err(|e| Refusal::understand(format!("data set does not parse: {e}")))?;
        let names = match examine(&header, Some(&inst.sop_instance_uid), &self.device_uid)? {
            Examined::Keep(names) => names,
            Examined::Discard(reason) => return Ok((StoreOutcome::Discarded { reason }, None)),
        };
        let (series_dir, path) = self.place(&names)?;
        fs::rename(tmp, &path).map_err(|e| Refusal::io(&path, e))?;
        sync_dir(&series_dir)?;
        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        self.index(&header, &names, &series_dir, &path, &inst.calling_ae, size, true)
    }

    /// The series directory (created durably) and the instance's path in it.
    fn place(&self, names: &Names) -> Result<(PathBuf, PathBuf), Refusal> {
        let spool_dir = self.root.join("spool");
        let series_dir = spool_dir.join(&names.study).join(&names.series);
        {
            // A poisoned lock guards nothing inconsistent: the directories are on disk or not.
            let _held = self.dir_lock.lock().unwrap_or_else(|p| p.into_inner());
            create_dirs_durably(&spool_dir, &Path::new(&names.study).join(&names.series))
                .map_err(|(path, e)| Refusal::io(&path, e))?;
        }
        let path = series_dir.join(format!("{}.dcm", names.sop));
        Ok((series_dir, path))
    }

    /// Records the stored instance in the job database, with what its header says for planning.
    #[allow(clippy::too_many_arguments)]
    fn index(
        &self,
        header: &DefaultDicomObject,
        names: &Names,
        series_dir: &Path,
        path: &Path,
        calling_ae: &str,
        size: u64,
        synced: bool,
    ) -> Result<(StoreOutcome, Option<InstanceIdentity>), Refusal> {
        // Read once here, where the header is parsed anyway; a header that cannot be planned
        // from is still stored (acknowledged) and the tracker reports the series not usable.
        let planning = match InstanceHeader::read(header, &path.display().to_string()) {
            Ok(h) => StoredHeader::Usable(Box::new(h)),
            Err(e) => StoredHeader::Unusable { reason: e.to_string() },
        };
        let recorded = self
            .db
            .record_instance(&InstanceRecord {
                sop_uid: &names.sop,
                series_uid: &names.series,
                study_uid: &names.study,
                path,
                series_dir,
                calling_ae,
                size,
                header: &planning,
                synced,
            })
            .map_err(Refusal::resources)?;
        let outcome = match recorded {
            Recorded::New => StoreOutcome::Stored,
            Recorded::Duplicate => StoreOutcome::Duplicate,
        };
        Ok((outcome, InstanceIdentity::read(header)))
    }

    fn journal_dir(&self) -> PathBuf {
        self.root.join(JOURNAL_DIR)
    }

    /// Writes again every instance in the segments left by an earlier process (file, and row
    /// when missing), syncs the volume once and deletes the segments. Returns how many
    /// instances the segments held.
    fn replay_journal(&self) -> Result<usize, SpoolError> {
        let dir_error = |path: &Path| {
            let path = path.to_owned();
            move |source| SpoolError::Dir { path, source }
        };
        let segments = self.journal.leftovers().map_err(dir_error(&self.journal_dir()))?;
        let mut held = 0;
        for segment in &segments {
            let mut failed = None;
            journal::replay(segment, |payload| {
                held += 1;
                if failed.is_none() {
                    failed = self.restore(payload).err();
                }
            })
            .map_err(dir_error(segment))?;
            if let Some(refusal) = failed {
                return Err(SpoolError::Replay {
                    segment: segment.clone(),
                    reason: refusal.reason,
                });
            }
        }
        self.journal.forget(&segments).map_err(dir_error(&self.journal_dir()))?;
        Ok(held)
    }

    /// One journaled instance at replay: its file written again from the record whatever is
    /// there (a file of the right size may still hold what a failed write left), its row
    /// inserted unless it is there.
    fn restore(&self, payload: &[u8]) -> Result<(), Refusal> {
        let header = parse_head(payload)?;
        let Examined::Keep(names) = examine(&header, None, &self.device_uid)? else {
            return Ok(());
        };
        let (series_dir, path) = self.place(&names)?;
        // The calling AE title, as written into the file meta group at receipt.
        let calling_ae = header
            .meta()
            .source_application_entity_title
            .clone()
            .unwrap_or_default();
        let tmp = self.part_path();
        let restored = write_part(&tmp, payload)
            .and_then(|()| {
                self.move_in(
                    &header,
                    &names,
                    (&series_dir, &path),
                    calling_ae.trim(),
                    &tmp,
                    payload.len(),
                )
            })
            .map(drop);
        if restored.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        restored
    }

    /// A new part file's name in `spool/tmp`.
    fn part_path(&self) -> PathBuf {
        self.staging_dir().join(format!(
            "{}-{}.part",
            std::process::id(),
            self.tmp_counter.fetch_add(1, Ordering::Relaxed)
        ))
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

/// "DICM" and the file meta group of a received instance: the instance file without its
/// preamble and data set.
fn file_head(inst: &ReceivedInstance) -> Result<Vec<u8>, Refusal> {
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(inst.transfer_syntax.as_str())
        .media_storage_sop_class_uid(inst.sop_class_uid.as_str())
        .media_storage_sop_instance_uid(inst.sop_instance_uid.as_str())
        .source_application_entity_title(inst.calling_ae.as_str())
        .build()
        .map_err(|e| Refusal::understand(format!("file meta group: {e}")))?;
    let mut head = b"DICM".to_vec();
    meta.write(&mut head)
        .map_err(|e| Refusal::understand(format!("file meta group: {e}")))?;
    Ok(head)
}

/// The header (up to the pixel data) of an instance file held in memory from "DICM" on.
fn parse_head(payload: &[u8]) -> Result<DefaultDicomObject, Refusal> {
    OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .from_reader(payload)
        .map_err(|e| Refusal::understand(format!("data set does not parse: {e}")))
}

/// Where an instance goes in the spool: its UIDs, each checked.
struct Names {
    sop: String,
    study: String,
    series: String,
}

/// What ingest does with a parsed instance.
enum Examined {
    Keep(Names),
    /// Accepted and not kept, with the reason.
    Discard(String),
}

/// The checks every instance passes before it is kept: its SOP Instance UID (equal to the
/// command's, when there is one), our own outputs discarded, Study and Series Instance UIDs
/// present and valid.
fn examine(header: &DefaultDicomObject, command_sop: Option<&str>, device_uid: &str) -> Result<Examined, Refusal> {
    let text = |tag, name: &str| -> Result<String, Refusal> {
        get_str(header, tag).ok_or_else(|| Refusal::understand(format!("{name} is missing")))
    };
    let sop = text(tags::SOP_INSTANCE_UID, "SOP Instance UID (0008,0018)")?;
    match command_sop {
        Some(command) if command != sop => {
            return Err(Refusal {
                status: STATUS_DATASET_MISMATCH,
                reason: format!("SOP Instance UID {sop} differs from the command's {command}"),
            });
        }
        Some(_) => {}
        None => check_uid("SOP Instance UID", &sop)?,
    }
    if is_own_output(header, device_uid) {
        let reason = "our own output (Contributing Equipment Device UID): not analysed again".into();
        return Ok(Examined::Discard(reason));
    }
    let study = text(tags::STUDY_INSTANCE_UID, "Study Instance UID (0020,000D)")?;
    let series = text(tags::SERIES_INSTANCE_UID, "Series Instance UID (0020,000E)")?;
    check_uid("Study Instance UID", &study)?;
    check_uid("Series Instance UID", &series)?;
    Ok(Examined::Keep(Names { sop, study, series }))
}

/// Writes a journaled instance's file, preamble then `payload`, without a sync (the journal
/// holds the instance).
fn write_part(tmp: &Path, payload: &[u8]) -> Result<(), Refusal> {
    create_part(tmp, payload).map(drop).map_err(|e| Refusal::io(tmp, e))
}

/// Writes preamble, file meta group and the received data set bytes unchanged, then fsyncs.
fn write_part_file(inst: &ReceivedInstance, tmp: &Path) -> Result<(), Refusal> {
    let head = file_head(inst)?;
    let write = || -> std::io::Result<()> {
        let mut file = create_part(tmp, &head)?;
        inst.dataset.copy_to(&mut file)?;
        file.sync_all()
    };
    write().map_err(|e| Refusal::io(tmp, e))
}

/// Creates the part file `tmp` holding the 128-byte preamble and `head` (an instance file from
/// "DICM" on, or its beginning).
fn create_part(tmp: &Path, head: &[u8]) -> std::io::Result<File> {
    let mut file = File::create(tmp)?;
    file.write_all(&[0u8; 128])?;
    file.write_all(head)?;
    Ok(file)
}

/// Makes a rename durable: fsync of the directory that holds the new name.
fn sync_dir(dir: &Path) -> Result<(), Refusal> {
    fsync_dir(dir).map_err(|e| Refusal::io(dir, e))
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all())
}

/// Takes `root/lock` exclusively (released when the file is closed, also by a kill).
fn lock_data_dir(root: &Path) -> Result<File, SpoolError> {
    let path = root.join("lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| SpoolError::Dir {
            path: path.clone(),
            source,
        })?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(SpoolError::InUse { path }),
        Err(e) => Err(SpoolError::Dir { path, source: e.into() }),
    }
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
