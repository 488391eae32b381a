//! Assembly benchmark: a 176-slice 256×256 16-bit single-frame series → [`assemble_paths`],
//! timed (best of several runs) with the process's peak resident memory. Prints figures; asserts
//! nothing (`fcdnode bench assemble`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fcdnode::assemble::{AssembleError, assemble_paths, list_files};
use fcdnode::synth::SliceOrder;
use fcdnode::synth::dicom::{DicomOptions, SeriesInfo, write_series};
use fcdnode::volume::{Plane, Volume, acquisition_grid};

use super::peak_rss_bytes;

/// Shape of the benchmark series: 256 columns × 256 rows × 176 slices (a 1 mm sagittal MPRAGE).
pub const BENCH_SHAPE: [usize; 3] = [256, 256, 176];

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// The benchmark series could not be generated.
    #[error("cannot write the benchmark series into {dir}: {reason}")]
    Generate { dir: PathBuf, reason: String },
    /// Assembly failed.
    #[error(transparent)]
    Assemble(#[from] AssembleError),
}

/// What one benchmark run measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchReport {
    /// Directory holding the series.
    pub dir: PathBuf,
    /// Number of files assembled.
    pub files: usize,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Volume shape `[i, j, k]`.
    pub shape: [usize; 3],
    /// Wall time of every run, in run order.
    pub runs: Vec<Duration>,
    /// Fastest run.
    pub best: Duration,
    /// Peak resident set size (VmHWM) while assembling, in bytes; `None` off Linux. The peak is
    /// reset before the first run when the kernel allows it (`/proc/self/clear_refs`), so series
    /// generation does not count.
    pub peak_rss_bytes: Option<u64>,
    /// Whether the peak could be reset before assembling.
    pub peak_reset: bool,
    /// Worker threads of the rayon pool.
    pub threads: usize,
}

/// Generates the benchmark series into `dir` unless it already holds DICOM files, then
/// assembles it `runs` times (at least once).
pub fn assemble_bench(dir: &Path, runs: usize) -> Result<BenchReport, BenchError> {
    let existing = list_files(&[dir.to_owned()]).unwrap_or_default();
    if existing.is_empty() {
        write_bench_series(dir)?;
    }
    let files = list_files(&[dir.to_owned()])?;
    let bytes = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let peak_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let mut times = Vec::new();
    let mut shape = [0; 3];
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        let assembled = assemble_paths(&[dir.to_owned()], None)?;
        times.push(start.elapsed());
        shape = assembled.volume.shape();
    }
    let best = times.iter().min().copied().unwrap_or_default();
    Ok(BenchReport {
        dir: dir.to_owned(),
        files: files.len(),
        bytes,
        shape,
        runs: times,
        best,
        peak_rss_bytes: peak_rss_bytes(),
        peak_reset,
        threads: rayon::current_num_threads(),
    })
}

/// Writes the 176 single-frame explicit VR little endian files of the benchmark series.
pub fn write_bench_series(dir: &Path) -> Result<Vec<PathBuf>, BenchError> {
    let generate = |reason: String| BenchError::Generate {
        dir: dir.to_owned(),
        reason,
    };
    let [ni, nj, nk] = BENCH_SHAPE;
    let grid = acquisition_grid(
        Plane::Sagittal,
        [1.0, 1.0, 1.0],
        [ni as f64, nj as f64, nk as f64],
        [0.0, -20.0, 10.0],
    )
    .map_err(|e| generate(e.to_string()))?;
    let mut volume = Volume::filled(&grid, 0.0).map_err(|e| generate(e.to_string()))?;
    // A 12-bit pattern that changes along every axis (no constant runs for codecs to exploit).
    for ((i, j, k), v) in volume.data_mut().indexed_iter_mut() {
        *v = ((i * 7 + j * 13 + k * 29 + (i * j) % 97) % 4096) as f32;
    }
    let options = DicomOptions {
        order: SliceOrder::Shuffled,
        ..DicomOptions::default()
    };
    write_series(&volume, &SeriesInfo::new(1), &options, dir).map_err(|e| generate(e.to_string()))
}
