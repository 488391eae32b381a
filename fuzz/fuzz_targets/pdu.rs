//! A connection's bytes through the SCP (`ingest::fuzzing::replay`): the A-ASSOCIATE-RQ read
//! within `max_associate_pdu_bytes` (header checked, then dicom-ul's `read_pdu`), negotiation,
//! P-DATA within `max_pdu`, reassembly into DIMSE messages, their command sets, the pre-parse
//! of C-STORE data sets and the responses. Input: the bytes a peer sends before it closes.
#![no_main]

use fcdnode::ingest::fuzzing::replay;
use fcdnode::ingest::{OtherStorage, ScpConfig};
use fcdnode_fuzz::CappedAlloc;
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc;

/// Small, so that the over-the-cap drain is reached well within `-max_len` (64 KiB).
const MAX_INSTANCE_BYTES: usize = 16 * 1024;

fuzz_target!(|bytes: &[u8]| {
    // The shipped limits; any calling or called AE and every storage class get through, so
    // that the input reaches P-DATA and the pre-parse.
    let config = ScpConfig {
        check_called_ae: false,
        other_storage: OtherStorage::Store,
        ..ScpConfig::default()
    };
    let _ = replay(bytes, &config, MAX_INSTANCE_BYTES);
});
