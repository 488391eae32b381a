//! The SCP's command-set parser (`ingest/dimse.rs` `parse_command`) on arbitrary bytes, and the
//! response it would send back: that response must parse again, with the same UIDs.
#![no_main]

use fcdnode::ingest::fuzzing::dimse_command;
use fcdnode_fuzz::CappedAlloc;
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc;

fuzz_target!(|bytes: &[u8]| {
    let Ok(request) = dimse_command(bytes) else {
        return;
    };
    let response = dimse_command(&request.response).expect("the SCP's own response parses");
    assert_eq!(response.field, request.field | 0x8000);
    assert_eq!(response.affected_sop_class, request.affected_sop_class);
    assert_eq!(response.affected_sop_instance, request.affected_sop_instance);
    assert!(!response.has_data_set);
});
