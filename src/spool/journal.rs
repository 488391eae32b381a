//! The spool's journal: append-only segment files in `spool/journal`, where an instance is made
//! durable with one `fdatasync` before its C-STORE-RSP. The instance file, its directory entry
//! and its database row are written right after without syncs of their own; an idle or full
//! segment is retired by one `syncfs` of the volume (which makes those durable) and deleted.
//! A segment still there at open is replayed: whatever a crash or power cut lost of its
//! instances is written again. `fcdnode bench sync` measures why: on this project's machines
//! one fdatasync of an appended record costs a quarter of the three syncs it replaces.
//!
//! Record: `FJR1`, the payload's length (u32 LE), its CRC-32 (u32 LE), the payload (the
//! instance file from "DICM" on). A record cut short or torn by a crash fails its length or
//! checksum; reading a segment stops there (it was never acknowledged).

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const MAGIC: &[u8; 4] = b"FJR1";
const HEAD: usize = 12;
/// A segment this large takes no more records; it is retired at the next pass.
const SEGMENT_BYTES: u64 = 64 << 20;
/// The largest payload a record may hold: a data set kept in memory plus its file meta group.
pub(super) const MAX_PAYLOAD: usize = crate::ingest::IN_MEMORY_BYTES + (64 << 10);

/// The segments of this process.
pub(super) struct Journal {
    dir: PathBuf,
    /// A directory on another volume that a retirement syncs too: the job database's, when the
    /// spool is a volume of its own.
    also: Option<PathBuf>,
    counter: AtomicU64,
    /// Segments not being appended to now; every record in them has been written to the spool.
    resting: Mutex<Vec<Segment>>,
    /// Segments whose retirement sync failed. A later sync that succeeds may only mean that the
    /// kernel has reported (and forgotten) the write error, so they stay until the next start
    /// replays them.
    kept: Mutex<Vec<Segment>>,
}

/// One segment file, open for appending.
pub(super) struct Segment {
    path: PathBuf,
    file: File,
    len: u64,
    last_append: Instant,
}

impl Journal {
    /// The journal in `dir` (which exists and is durable). Segments found there are from an
    /// earlier process: [`Journal::leftovers`] lists them for replay. What is written from the
    /// segments goes to `dir`'s volume and to `database_dir`'s; a retirement syncs both.
    pub(super) fn new(dir: &Path, database_dir: &Path) -> Self {
        use std::os::unix::fs::MetadataExt;
        let device = |p: &Path| fs::metadata(p).map(|m| m.dev()).ok();
        let also = (device(dir) != device(database_dir)).then(|| database_dir.to_owned());
        Self {
            dir: dir.to_owned(),
            also,
            counter: AtomicU64::new(0),
            resting: Mutex::new(Vec::new()),
            kept: Mutex::new(Vec::new()),
        }
    }

    /// Segment files left by an earlier process, in the order they were created.
    pub(super) fn leftovers(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "seg") {
                found.push(path);
            }
        }
        // `N.seg`: by N, so that `10.seg` comes after `2.seg`.
        let number = |p: &PathBuf| p.file_stem().and_then(|s| s.to_str()?.parse::<u64>().ok());
        found.sort_by_key(|p| (number(p), p.clone()));
        Ok(found)
    }

    /// A segment to append to: a resting one with room, or a new one (created durably, so that
    /// its records can be found after a power cut). Give it back with [`Journal::rest`].
    pub(super) fn take(&self) -> std::io::Result<Segment> {
        {
            let mut resting = self.lock();
            if let Some(i) = resting.iter().rposition(|s| s.len < SEGMENT_BYTES) {
                return Ok(resting.swap_remove(i));
            }
        }
        // `1.seg`, `2.seg`, …: the names left by an earlier process were replayed and deleted
        // at open; a name taken all the same is skipped.
        let (path, file) = loop {
            let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
            let path = self.dir.join(format!("{n}.seg"));
            match OpenOptions::new().create_new(true).append(true).open(&path) {
                Ok(file) => break (path, file),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        };
        file.sync_all()?;
        File::open(&self.dir)?.sync_all()?;
        Ok(Segment {
            path,
            file,
            len: 0,
            last_append: Instant::now(),
        })
    }

    /// Returns a segment taken with [`Journal::take`], once its records are in the spool.
    pub(super) fn rest(&self, segment: Segment) {
        self.lock().push(segment);
    }

    /// Retires the resting segments idle for `idle` or full: one `syncfs` of the volume makes
    /// the instance files, directories and database rows written from them durable, then the
    /// segments are deleted. Returns how many were retired; after a failed sync they stay until the
    /// next start replays them.
    pub(super) fn retire(&self, idle: Duration) -> std::io::Result<usize> {
        let due: Vec<Segment> = {
            let mut resting = self.lock();
            let (due, keep) = resting
                .drain(..)
                .partition(|s| s.len >= SEGMENT_BYTES || s.last_append.elapsed() >= idle);
            *resting = keep;
            due
        };
        if due.is_empty() {
            return Ok(0);
        }
        if let Err(e) = self.sync_volume() {
            self.kept.lock().unwrap_or_else(|p| p.into_inner()).extend(due);
            return Err(e);
        }
        for segment in &due {
            fs::remove_file(&segment.path)?;
        }
        Ok(due.len())
    }

    /// Deletes segments replayed at open, after one sync of the volume.
    pub(super) fn forget(&self, replayed: &[PathBuf]) -> std::io::Result<()> {
        if replayed.is_empty() {
            return Ok(());
        }
        self.sync_volume()?;
        for path in replayed {
            fs::remove_file(path)?;
        }
        Ok(())
    }

    fn sync_volume(&self) -> std::io::Result<()> {
        rustix::fs::syncfs(File::open(&self.dir)?)?;
        if let Some(other) = &self.also {
            rustix::fs::syncfs(File::open(other)?)?;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Segment>> {
        // Segments are plain files; a panic elsewhere leaves the list usable.
        self.resting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Segment {
    /// Appends one record holding `payload` and waits until it is on disk.
    pub(super) fn append(&mut self, payload: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|&n| n as usize <= MAX_PAYLOAD)
            .ok_or_else(|| std::io::Error::other(format!("journal record of {} bytes", payload.len())))?;
        let mut record = Vec::with_capacity(HEAD + payload.len());
        record.extend_from_slice(MAGIC);
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        record.extend_from_slice(payload);
        let written = self.file.write_all(&record).and_then(|()| self.file.sync_data());
        if written.is_err() {
            // A torn record may end the file now, and the replay stops there: no record may
            // follow it. The segment takes no more and is retired at the next pass.
            self.len = u64::MAX;
            return written;
        }
        self.len += record.len() as u64;
        self.last_append = Instant::now();
        Ok(())
    }

    /// The segment file.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

/// Calls `each` with every whole record's payload in the segment at `path`, in order, until
/// the end or the first record that is cut short, torn or too long; returns how many records
/// were whole. Memory stays at one record.
pub(super) fn replay(path: &Path, mut each: impl FnMut(&[u8])) -> std::io::Result<usize> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut payload = Vec::new();
    let mut records = 0;
    loop {
        let mut head = [0u8; HEAD];
        if read_full(&mut reader, &mut head)? < HEAD || &head[..4] != MAGIC {
            return Ok(records);
        }
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        let crc = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        if len > MAX_PAYLOAD {
            return Ok(records);
        }
        payload.resize(len, 0);
        if read_full(&mut reader, &mut payload)? < len || crc32fast::hash(&payload) != crc {
            return Ok(records);
        }
        each(&payload);
        records += 1;
    }
}

/// Reads until `buf` is full or the end; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_records_come_back_in_order_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(dir.path(), dir.path());
        let mut segment = journal.take().unwrap();
        segment.append(b"first").unwrap();
        segment.append(&[7u8; 1000]).unwrap();
        segment.append(b"third").unwrap();
        let path = segment.path().to_owned();
        journal.rest(segment);
        let full = fs::read(&path).unwrap();
        let read = |bytes: &[u8]| {
            fs::write(&path, bytes).unwrap();
            let mut seen: Vec<Vec<u8>> = Vec::new();
            let n = replay(&path, |p| seen.push(p.to_vec())).unwrap();
            assert_eq!(n, seen.len());
            seen
        };
        let all = read(&full);
        assert_eq!(all, vec![b"first".to_vec(), vec![7u8; 1000], b"third".to_vec()]);
        // Cut inside the last record, or one byte of the second flipped: the records before
        // the damage only.
        assert_eq!(read(&full[..full.len() - 2]).len(), 2);
        let mut torn = full.clone();
        torn[HEAD + 5 + HEAD + 500] ^= 1;
        assert_eq!(read(&torn), vec![b"first".to_vec()]);
        // A length past the bound is not allocated.
        let mut huge = full[..HEAD].to_vec();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read(&huge).is_empty());
        assert_eq!(journal.leftovers().unwrap(), vec![path]);
    }

    #[test]
    fn a_segment_whose_append_failed_takes_no_more_records() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(dir.path(), dir.path());
        let good = journal.take().unwrap();
        // A write that fails (here: a file open read-only), as on a full volume.
        let path = good.path().to_owned();
        let mut failing = Segment {
            file: File::open(&path).unwrap(),
            ..good
        };
        assert!(failing.append(b"lost").is_err());
        journal.rest(failing);
        let next = journal.take().unwrap();
        assert_ne!(next.path(), path, "nothing may follow a torn record");
        journal.rest(next);
        assert_eq!(journal.retire(Duration::from_secs(3600)).unwrap(), 1, "retired at once");
        assert!(!path.exists());
    }

    #[test]
    fn segments_whose_sync_failed_are_never_deleted_by_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let journal_dir = dir.path().join("journal");
        fs::create_dir(&journal_dir).unwrap();
        let journal = Journal::new(&journal_dir, dir.path());
        let mut segment = journal.take().unwrap();
        segment.append(b"x").unwrap();
        let kept = segment.path().to_owned();
        journal.rest(segment);
        // The sync fails (here: the journal directory cannot be opened).
        let aside = dir.path().join("aside");
        fs::rename(&journal_dir, &aside).unwrap();
        assert!(journal.retire(Duration::ZERO).is_err());
        fs::rename(&aside, &journal_dir).unwrap();
        assert_eq!(journal.retire(Duration::ZERO).unwrap(), 0, "not retried");
        assert!(kept.exists(), "left for the next start's replay");
        assert_eq!(journal.leftovers().unwrap(), vec![kept]);
    }

    #[test]
    fn leftovers_come_in_creation_order() {
        let dir = tempfile::tempdir().unwrap();
        for n in [10, 2, 1] {
            fs::write(dir.path().join(format!("{n}.seg")), b"").unwrap();
        }
        let names: Vec<String> = Journal::new(dir.path(), dir.path())
            .leftovers()
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["1.seg", "2.seg", "10.seg"]);
    }

    #[test]
    fn idle_and_full_segments_are_retired_and_busy_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(dir.path(), dir.path());
        let mut a = journal.take().unwrap();
        let b = journal.take().unwrap();
        assert_ne!(a.path(), b.path(), "two appenders at once get two segments");
        a.append(b"x").unwrap();
        let (a_path, b_path) = (a.path().to_owned(), b.path().to_owned());
        journal.rest(a);
        // b is still being appended to: not resting, so never retired.
        assert_eq!(journal.retire(Duration::ZERO).unwrap(), 1);
        assert!(!a_path.exists() && b_path.exists());
        journal.rest(b);
        assert_eq!(journal.retire(Duration::from_secs(3600)).unwrap(), 0, "not idle yet");
        let again = journal.take().unwrap();
        assert_eq!(again.path(), b_path, "a resting segment with room is reused");
        journal.rest(again);
        assert_eq!(journal.retire(Duration::ZERO).unwrap(), 1);
        assert!(journal.leftovers().unwrap().is_empty());
    }
}
