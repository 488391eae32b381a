//! The assembler on DICOM files, through what `fcdnode inspect` (`assemble::scan`, then
//! `series_meta`, `InstanceHeader::of_sources` and `plan_series`) and `fcdnode volume`
//! (`assemble::assemble_paths`) call, on files the node could have stored: each passes
//! [`fcdnode_fuzz::passes_ingest_gate`], as every received data set passes ingest's pre-parse.
//! Errors are expected; panics and allocations past [`fcdnode_fuzz::MAX_ALLOCATION`] are not.
//!
//! Input: one DICOM Part 10 file, or up to eight separated by [`fcdnode_fuzz::FILE_SEPARATOR`]
//! (the instances of one series), written to a scratch directory of this process.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use fcdnode::assemble::{self, InstanceHeader, Tolerances};
use fcdnode_fuzz::{CappedAlloc, passes_ingest_gate, split_files};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc;

const MAX_FILES: usize = 8;

fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a scratch directory"))
        .path()
}

/// libfuzzer-sys makes every panic abort, caught or not; the assembler catches the pixel
/// codecs' panics on purpose (a malformed frame is an error of its series), so only panics that
/// escape to the harness (which aborts on them itself) count as crashes here.
fn quiet_caught_panics() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| std::panic::set_hook(Box::new(|_| {})));
}

fuzz_target!(|input: &[u8]| {
    quiet_caught_panics();
    let dir = scratch();
    let files = split_files(input, MAX_FILES);
    // Only what the node could store: dicom-object would otherwise allocate by declared lengths.
    if !files.iter().all(|file| passes_ingest_gate(file)) {
        return;
    }
    for i in 0..MAX_FILES {
        let path = dir.join(format!("{i}.dcm"));
        match files.get(i) {
            Some(bytes) => std::fs::write(&path, bytes).expect("writing the scratch file"),
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let paths = [PathBuf::from(dir)];

    // `fcdnode inspect`.
    if let Ok(scan) = assemble::scan(&paths) {
        for sources in scan.series.values() {
            if let Some(first) = sources.first() {
                let _ = assemble::series_meta(&first.object);
            }
            let _ = InstanceHeader::of_sources(sources)
                .and_then(|headers| assemble::plan_series(&headers, &Tolerances::default()));
        }
    }
    // `fcdnode volume`.
    let _ = assemble::assemble_paths(&paths, None);
});
