//! Fixtures shared by the integration tests: peer tools, the fcdnode binary, temp dirs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fcdnode::Volume;

/// Repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A peer tool: `.tools/<name>` from the setup step first, then `PATH`. Panics with the fix
/// when it is missing (no silent skips).
pub fn tool(name: &str) -> PathBuf {
    let local = repo().join(".tools").join(name);
    if local.exists() {
        return local;
    }
    let on_path =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|c| c.is_file()));
    match on_path.flatten() {
        Some(p) => p,
        None => panic!("peer tool `{name}` is missing: run `scripts/setup.sh` (or `make test`) first"),
    }
}

/// Runs a command and panics with its output when it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The `fcdnode` binary built for this test run.
pub fn fcdnode() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fcdnode"))
}

/// A fresh temporary directory, removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("fcdnode-it-")
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create temp dir: {e}"))
}

/// Runs dcm2niix (the geometry reference) on one series directory and returns the single
/// uncompressed NIfTI it wrote into `out`.
pub fn dcm2niix(series: &Path, out: &Path, label: &str) -> PathBuf {
    std::fs::create_dir_all(out).unwrap_or_else(|e| panic!("{label}: {e}"));
    run_ok(
        Command::new(tool("dcm2niix"))
            .args(["-z", "n", "-b", "n", "-x", "n", "-i", "n", "-f", "out", "-o"])
            .arg(out)
            .arg(series),
    );
    let mut written: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap_or_else(|e| panic!("{label}: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "nii"))
        .collect();
    assert_eq!(written.len(), 1, "{label}: dcm2niix wrote {written:?}");
    written.remove(0)
}

/// Both volumes, reoriented to RAS, have the same shape, identical voxels and affines within
/// `tol_mm`.
pub fn assert_same_volume(label: &str, ours: &Volume, theirs: &Volume, tol_mm: f64) {
    let (ours, theirs) = (ours.to_canonical(), theirs.to_canonical());
    assert_eq!(ours.shape(), theirs.shape(), "{label}: canonical shape");
    let diff = ours.affine().max_abs_diff(theirs.affine());
    assert!(
        diff < tol_mm,
        "{label}: affine differs by {diff} mm\nours:   {:?}\ntheirs: {:?}",
        ours.affine(),
        theirs.affine()
    );
    let mismatches = ours
        .data()
        .iter()
        .zip(theirs.data().iter())
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(mismatches, 0, "{label}: {mismatches} voxels differ");
}

/// Runs dciodvfy (dicom3tools) on one file, fails the test on any line reporting an error, and
/// returns its warnings.
pub fn dciodvfy(path: &Path) -> Vec<String> {
    let out = Command::new(tool("dciodvfy"))
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("cannot start dciodvfy: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("Error")).collect();
    assert!(errors.is_empty(), "dciodvfy {}:\n{text}", path.display());
    text.lines()
        .filter(|l| l.contains("Warning"))
        .map(str::to_owned)
        .collect()
}
