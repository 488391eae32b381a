//! The free-space floor of `/readyz`: a node whose spool, database or results volume is nearly
//! full cannot acknowledge instances or write results, so it says so before it fails them.

use std::path::{Path, PathBuf};

/// The volumes readiness depends on and the free space each must keep.
#[derive(Clone, Debug, Default)]
pub struct SpaceFloor {
    /// Free MiB below which the node is not ready; 0 checks nothing.
    pub min_free_mb: u64,
    /// What each volume holds (for the reason) and a path on it.
    pub volumes: Vec<(&'static str, PathBuf)>,
}

impl SpaceFloor {
    /// The spool, the job database and the results under `data_dir`, kept above `min_free_mb`.
    pub fn for_data_dir(data_dir: &Path, min_free_mb: u64) -> Self {
        Self {
            min_free_mb,
            volumes: vec![
                ("spool", data_dir.join("spool")),
                ("database", data_dir.to_owned()),
                ("results", data_dir.join("results")),
            ],
        }
    }

    /// The spool volume alone: what the SCP checks before it accepts an instance.
    pub fn for_spool(data_dir: &Path, min_free_mb: u64) -> Self {
        Self {
            min_free_mb,
            volumes: vec![("spool", data_dir.join("spool"))],
        }
    }

    /// `Err(reason)` for the first volume with less free space than the floor, or whose free
    /// space cannot be read.
    pub fn check(&self) -> Result<(), String> {
        if self.min_free_mb == 0 {
            return Ok(());
        }
        for (what, path) in &self.volumes {
            let free_mb = free_bytes(path).map_err(|e| format!("{what} volume ({}): {e}", path.display()))? / MIB;
            if free_mb < self.min_free_mb {
                return Err(format!(
                    "{what} volume ({}) has {free_mb} MiB free, below [node] min_free_mb = {}",
                    path.display(),
                    self.min_free_mb
                ));
            }
        }
        Ok(())
    }
}

const MIB: u64 = 1024 * 1024;

/// Bytes an unprivileged writer may still use on the volume of `path`, or of its nearest
/// existing ancestor (results/ appears with the first job).
fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let existing = path.ancestors().find(|p| p.exists()).unwrap_or(path);
    let stat = rustix::fs::statvfs(existing)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_floor_above_the_free_space_names_the_volume_and_zero_checks_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let free_mb = free_bytes(dir.path()).unwrap() / MIB;
        let ok = SpaceFloor::for_data_dir(dir.path(), 1);
        assert_eq!(
            ok.check(),
            Ok(()),
            "results/ does not exist yet: its parent is measured"
        );
        let huge = SpaceFloor::for_data_dir(dir.path(), free_mb + 1_000_000);
        let reason = huge.check().unwrap_err();
        assert!(
            reason.starts_with("spool volume") && reason.contains("below [node] min_free_mb"),
            "{reason}"
        );
        let off = SpaceFloor::for_data_dir(Path::new("/no/such/volume"), 0);
        assert_eq!(off.check(), Ok(()));
    }
}
