//! Files that several processes of one run may write at the same time (fold processes sharing a
//! run directory on a cluster volume): each is written whole under a name of its own beside its
//! place, then renamed or linked into it, so no reader ever sees half a file.

use std::io::{ErrorKind, Write};
use std::path::Path;

/// `bytes` in a uniquely named file beside `path` (tempfile's random names: a process id is not
/// unique across the machines that share a volume).
fn staged(path: &Path, bytes: &[u8]) -> std::io::Result<tempfile::NamedTempFile> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    Ok(tmp)
}

/// Writes `bytes` to `path`, replacing what is there in one step.
pub(crate) fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    staged(path, bytes)?.persist(path).map(drop).map_err(|e| e.error)
}

/// Writes `bytes` to `path` unless a file is already there: `None` when this call created it,
/// else what the file holds. `persist_noclobber` never replaces an existing name (a no-replace
/// rename, or a hard link where that is missing), so of processes starting together exactly one
/// creates the file.
pub(crate) fn create_once(path: &Path, bytes: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
    match staged(path, bytes)?.persist_noclobber(path) {
        Ok(_) => Ok(None),
        Err(e) if e.error.kind() == ErrorKind::AlreadyExists => std::fs::read(path).map(Some),
        Err(e) => Err(e.error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_writer_wins_and_the_others_read_its_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("plan.json");
        let bytes: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 100_000]).collect();
        let outcomes: Vec<Option<Vec<u8>>> = std::thread::scope(|s| {
            let handles: Vec<_> = bytes
                .iter()
                .map(|b| s.spawn(|| create_once(&path, b).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let created: Vec<usize> = (0..8).filter(|&i| outcomes[i].is_none()).collect();
        assert_eq!(created.len(), 1, "exactly one creator");
        let winner = &bytes[created[0]];
        assert_eq!(&std::fs::read(&path).unwrap(), winner);
        assert!(outcomes.iter().flatten().all(|seen| seen == winner));
        replace(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        // No scratch file is left behind.
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    }
}
