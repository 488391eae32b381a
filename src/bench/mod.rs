//! Benchmarks behind `fcdnode bench`: they print figures and assert nothing. They live on the
//! binary side so the library never depends on them.
//!
//! - [`assemble`]: a 176-file 256×256 series → `Volume` (wall time, peak RSS).
//! - [`infer`]: one study through the pipeline, stage by stage.
//! - [`node`]: the running node: series turnaround and ingest MB/s beside DCMTK storescp.
//! - [`sync`]: the durability strategies a spool could use, on the volume that would hold it.

pub mod assemble;
pub mod infer;
pub mod node;
pub mod sync;

/// Peak resident set size of this process (VmHWM in `/proc/self/status`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    status_bytes("VmHWM:")
}

/// Resident set size of this process now (VmRSS), in bytes.
pub fn rss_bytes() -> Option<u64> {
    status_bytes("VmRSS:")
}

fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Column heads of a job's stage times, as [`stage_cells`] prints them (ms): the stages up to
/// the decision (the SR handed on to the outbox at `decided`), then the outputs made after it.
pub const STAGE_HEADS: &str =
    "assemble  preprocess  wait  infer  explain  overlay    SR  decided |  key    SC    PM   SEG  other  pipeline";

/// A job's stage times under [`STAGE_HEADS`]; `other` is the rest of the pipeline's time
/// (reading the package's options, the preview, result.json, notification documents).
pub fn stage_cells(t: &fcdnode::report::Timings) -> String {
    let listed =
        t.assemble + t.preprocess + t.wait + t.infer + t.explain + t.overlay + t.sr + t.key_image + t.sc + t.pm + t.seg;
    format!(
        "{:>8.0}  {:>10.0}  {:>4.0}  {:>5.0}  {:>7.0}  {:>7.0}  {:>4.0}  {:>7.0} | {:>4.0}  {:>4.0}  {:>4.0}  {:>4.0}  {:>5.0}  {:>8.0}",
        t.assemble,
        t.preprocess,
        t.wait,
        t.infer,
        t.explain,
        t.overlay,
        t.sr,
        t.decided,
        t.key_image,
        t.sc,
        t.pm,
        t.seg,
        t.total - listed,
        t.total
    )
}

/// The median (mean of the middle two for an even count; NaN when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
