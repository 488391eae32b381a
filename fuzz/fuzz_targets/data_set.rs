//! The bounded pre-parse of received data sets (`ingest::check_element_lengths_limited` and
//! `ingest::check_data_set`) on arbitrary bytes, then dicom-object on what it lets through, as
//! the spool would parse it.
//!
//! Input: one selector byte, then the data set (no file meta group). The selector's low four
//! bits pick the transfer syntax (the SCP's accepted ones, then refused or unknown ones); bit 4
//! holds the data set in a buffer that spills to a file after 256 bytes, so the file-backed
//! reads are walked too. Both walkers must agree; a data set they pass must not make
//! dicom-object panic or ask for more than [`fcdnode_fuzz::MAX_ALLOCATION`] at once.
#![no_main]

use std::sync::OnceLock;

use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
use fcdnode::ingest::{ACCEPTED_TRANSFER_SYNTAXES, DataSetBuffer, check_data_set, check_element_lengths_limited};
use fcdnode_fuzz::CappedAlloc;
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc;

/// Inflated bytes allowed for the deflated syntax: small, so that a deflate bomb costs little.
const MAX_INFLATED: usize = 4 * 1024 * 1024;

/// Syntaxes the SCP refuses or never negotiates, after the accepted ones.
const OTHER_SYNTAXES: &[&str] = &["1.2.840.10008.1.2.2", "1.2.840.10008.1.2\0", "1.2.3"];

fn syntax(selector: u8) -> &'static str {
    let n = ACCEPTED_TRANSFER_SYNTAXES.len() + OTHER_SYNTAXES.len();
    let i = usize::from(selector & 0x0F) % n;
    ACCEPTED_TRANSFER_SYNTAXES
        .get(i)
        .copied()
        .unwrap_or_else(|| OTHER_SYNTAXES[i - ACCEPTED_TRANSFER_SYNTAXES.len()])
}

/// One staging directory per process (spilled buffers are unnamed files in it).
fn staging() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a staging directory"))
        .path()
}

fuzz_target!(|input: &[u8]| {
    let Some((&selector, dataset)) = input.split_first() else {
        return;
    };
    let ts = syntax(selector);
    let from_slice = check_element_lengths_limited(dataset, ts, MAX_INFLATED);

    let limit = if selector & 0x10 != 0 { 256 } else { dataset.len() + 1 };
    let mut buffer = DataSetBuffer::with_limit(staging(), limit);
    buffer.append(dataset).expect("staging a data set");
    let from_buffer = check_data_set(&buffer, ts, MAX_INFLATED);
    assert_eq!(from_slice, from_buffer, "the slice and buffer walkers disagree on {ts}");

    if from_slice.is_ok()
        && let Some(syntax) = TransferSyntaxRegistry.get(registry_uid(ts))
    {
        let _ = InMemDicomObject::read_dataset_with_ts(dataset, syntax);
    }
});

/// The UID as the registry knows it (the SCP trims the padding a peer may send).
fn registry_uid(ts: &str) -> &str {
    ts.trim_end_matches(['\0', ' '])
}
