//! Fixtures shared by the integration tests: peer tools, the fcdnode binary, temp dirs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
