//! `fcdnode bench sync`: what it costs to make one series durable before each C-STORE-RSP, on
//! the volume that would hold the spool, by strategy. Each strategy stores `files` instances of
//! `size` bytes one after the other (as a modality waiting for each response sends them) and
//! is timed up to the point where the instance would be acknowledged:
//!
//! - `three-syncs`: the node before its journal (and still for data sets over 1 MiB): part
//!   file + fsync, rename into the series directory + fsync of the directory, index row in
//!   SQLite (WAL, synchronous = FULL).
//! - `syncfs`: the same writes without their syncs (SQLite synchronous = NORMAL), then one
//!   `syncfs` of the volume: one sync, but it also waits for every other writer's dirty data.
//! - `journal`: the node now: the instance appended to a segment file and `fdatasync`ed, then
//!   part file, rename and index row without syncs (the segment's retirement syncs them later).
//! - `segment`: the journal's floor: only the append and its `fdatasync` before the response
//!   (file and row would be written after it).
//! - `no-sync`: part file and rename only, as DCMTK storescp does: not durable.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

/// What to measure.
pub struct SyncBench {
    /// Directory on the volume under test (a fresh subdirectory is used and removed).
    pub dir: PathBuf,
    /// Instances per series.
    pub files: usize,
    /// Bytes per instance.
    pub size: usize,
    /// Timed series per strategy.
    pub runs: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Strategy {
    ThreeSyncs,
    Syncfs,
    Journal,
    Segment,
    NoSync,
}

impl Strategy {
    const ALL: [Strategy; 5] = [
        Strategy::ThreeSyncs,
        Strategy::Syncfs,
        Strategy::Journal,
        Strategy::Segment,
        Strategy::NoSync,
    ];

    fn name(self) -> &'static str {
        match self {
            Strategy::ThreeSyncs => "three-syncs",
            Strategy::Syncfs => "syncfs",
            Strategy::Journal => "journal",
            Strategy::Segment => "segment",
            Strategy::NoSync => "no-sync",
        }
    }
}

/// Runs every strategy `runs` times (interleaved, so that a disk that slows down over the run
/// affects all of them alike) and prints the median per series.
pub fn command(bench: &SyncBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        bench.files > 0 && bench.size > 0 && bench.runs > 0,
        "--files, --size and --runs must be positive"
    );
    let root = bench.dir.join(format!("fcdnode-bench-sync-{}", std::process::id()));
    fs::create_dir_all(&root).with_context(|| root.display().to_string())?;
    let payload: Vec<u8> = (0..bench.size).map(|i| (i * 31 % 251) as u8).collect();
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); Strategy::ALL.len()];
    let result = (|| -> anyhow::Result<()> {
        for run in 0..bench.runs {
            for (k, strategy) in Strategy::ALL.into_iter().enumerate() {
                let dir = root.join(format!("{}-{run}", strategy.name()));
                times[k].push(store_series(strategy, &dir, bench.files, &payload)?);
            }
        }
        Ok(())
    })();
    let removed = fs::remove_dir_all(&root);
    result?;
    removed.with_context(|| format!("removing {}", root.display()))?;

    println!(
        "durable storage of {} instances of {} KiB in {} (median of {} runs; each instance complete on disk before the next)",
        bench.files,
        bench.size / 1024,
        bench.dir.display(),
        bench.runs
    );
    println!(
        "{:<12} {:>9} {:>12} {:>8}",
        "strategy", "series s", "ms/instance", "MB/s"
    );
    for (strategy, mut runs) in Strategy::ALL.into_iter().zip(times) {
        runs.sort();
        let median = runs[runs.len() / 2].as_secs_f64();
        println!(
            "{:<12} {:>9.3} {:>12.3} {:>8.1}",
            strategy.name(),
            median,
            median * 1000.0 / bench.files as f64,
            (bench.files * bench.size) as f64 / median / 1e6
        );
    }
    Ok(())
}

/// Stores one series with `strategy` under `dir` (created here); the time up to the last
/// acknowledgement.
fn store_series(strategy: Strategy, dir: &Path, files: usize, payload: &[u8]) -> anyhow::Result<Duration> {
    let series = dir.join("series");
    let tmp = dir.join("tmp");
    for d in [&series, &tmp] {
        fs::create_dir_all(d).with_context(|| d.display().to_string())?;
    }
    let index = rusqlite::Connection::open(dir.join("index.sqlite"))?;
    index.pragma_update(None, "journal_mode", "WAL")?;
    let synchronous = if strategy == Strategy::ThreeSyncs {
        "FULL"
    } else {
        "NORMAL"
    };
    index.pragma_update(None, "synchronous", synchronous)?;
    index.execute("CREATE TABLE instances (name TEXT PRIMARY KEY, path TEXT NOT NULL)", [])?;
    let mut segment = if matches!(strategy, Strategy::Journal | Strategy::Segment) {
        let path = dir.join("association.segment");
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        file.sync_all()?;
        File::open(dir)?.sync_all()?;
        Some(file)
    } else {
        None
    };
    let start = Instant::now();
    for k in 0..files {
        let name = format!("{k:04}.dcm");
        let part = tmp.join(format!("{k}.part"));
        let path = series.join(&name);
        if let Some(segment) = segment.as_mut() {
            // Length, then the bytes (a real segment adds a checksum, to drop a torn record).
            segment.write_all(&(payload.len() as u64).to_le_bytes())?;
            segment.write_all(payload)?;
            rustix::fs::fdatasync(&*segment)?;
            if strategy == Strategy::Segment {
                continue;
            }
        }
        let mut file = File::create(&part)?;
        file.write_all(payload)?;
        if strategy == Strategy::ThreeSyncs {
            file.sync_all()?;
        }
        drop(file);
        fs::rename(&part, &path)?;
        if strategy == Strategy::ThreeSyncs {
            File::open(&series)?.sync_all()?;
        }
        if strategy != Strategy::NoSync {
            index.execute(
                "INSERT INTO instances (name, path) VALUES (?1, ?2)",
                rusqlite::params![name, path.to_string_lossy()],
            )?;
        }
        if strategy == Strategy::Syncfs {
            rustix::fs::syncfs(File::open(&series)?)?;
        }
    }
    Ok(start.elapsed())
}
