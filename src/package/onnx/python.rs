//! Test helper: runs Python scripts in the project's `.tools/venv` (made by `scripts/setup.sh`,
//! with the `onnx` package) and fails loudly when that interpreter or `onnx` is missing.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

/// The project's virtual-environment interpreter, checked to import `onnx` and `numpy`.
pub(crate) fn interpreter() -> PathBuf {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup.sh (it installs onnx into .tools/venv)",
        python.display()
    );
    let probe = Command::new(&python)
        .args(["-c", "import onnx, numpy; print(onnx.__version__)"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        probe.status.success(),
        "{} cannot import onnx/numpy: run scripts/setup.sh\n{}",
        python.display(),
        String::from_utf8_lossy(&probe.stderr)
    );
    python
}

/// Runs `script` with `args` (`sys.argv[1:]`) and returns its stdout; panics with stderr when
/// the script fails.
pub(crate) fn run<A: AsRef<OsStr>>(script: &str, args: &[A]) -> String {
    let python = interpreter();
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python script failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
