//! What the fuzz targets share: an allocator that turns one oversized allocation into a crash
//! (libFuzzer's `-malloc_limit_mb` needs a sanitizer's malloc hooks, and these targets run
//! without one), the split of one input into several files, and the check the node's ingest
//! makes before anything parses a data set, for files.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

/// Largest single allocation, the `-rss_limit_mb` that `scripts/fuzz.sh` passes: an input of a
/// few KiB asking for more is allocating by a declared length, not by the bytes present.
pub const MAX_ALLOCATION: usize = 2048 << 20;

/// The system allocator, aborting (a crash libFuzzer records) on any allocation over
/// [`MAX_ALLOCATION`]. Reserved-but-untouched memory never shows in the RSS that libFuzzer
/// watches, so this is the only way such a request is noticed.
pub struct CappedAlloc;

static REPORTING: AtomicBool = AtomicBool::new(false);

#[cold]
fn too_large(size: usize) -> ! {
    if !REPORTING.swap(true, Ordering::SeqCst) {
        eprintln!("==fuzz== out-of-memory: one allocation of {size} bytes (cap {MAX_ALLOCATION})");
        // Small allocations pass through this allocator again, which is fine.
        eprintln!("{}", std::backtrace::Backtrace::force_capture());
    }
    std::process::abort()
}

// SAFETY: every call is forwarded unchanged to `System`; only the size is looked at first.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            too_large(layout.size());
        }
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            too_large(layout.size());
        }
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOCATION {
            too_large(new_size);
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Separates the files of one `assemble` input (a series of several instances); also in
/// `fuzz/assemble.dict`, so that libFuzzer inserts it.
pub const FILE_SEPARATOR: &[u8] = b"\n--FCDFUZZ-FILE--\n";

/// Splits `input` at [`FILE_SEPARATOR`] into at most `max` parts (the last keeps the rest).
pub fn split_files(input: &[u8], max: usize) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = input;
    while parts.len() + 1 < max {
        match rest.windows(FILE_SEPARATOR.len()).position(|w| w == FILE_SEPARATOR) {
            Some(at) => {
                parts.push(&rest[..at]);
                rest = &rest[at + FILE_SEPARATOR.len()..];
            }
            None => break,
        }
    }
    parts.push(rest);
    parts
}

/// Whether the node could hand this Part 10 file to the assembler: its meta group (read as
/// dicom-object reads it, (0002,0000) first, then elements up to that length) and its data set
/// (ingest's pre-parse, in a transfer syntax the SCP accepts) declare no length past the bytes
/// present. dicom-object allocates and zeroes whatever a length declares before reading it, so
/// the node checks every received data set first and writes the meta group itself; a file that
/// fails here is one the node never stores (`fcdnode volume` on such a local file is not
/// guarded: README, "Fuzzing").
pub fn passes_ingest_gate(file: &[u8]) -> bool {
    let mut pos = if file.get(128..132) == Some(b"DICM") {
        132
    } else if file.get(..4) == Some(b"DICM") {
        4
    } else {
        return false;
    };
    let u16_at = |at: usize| file.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |at: usize| {
        file.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    // (0002,0000) UL, 4 bytes: the group length.
    if (
        u16_at(pos),
        u16_at(pos + 2),
        file.get(pos + 4..pos + 6),
        u16_at(pos + 6),
    ) != (Some(2), Some(0), Some(&b"UL"[..]), Some(4))
    {
        return false;
    }
    let Some(group_length) = u32_at(pos + 8) else {
        return false;
    };
    pos += 12;
    let mut transfer_syntax = None;
    let mut read = 0u64;
    while read < u64::from(group_length) {
        let (Some(group), Some(element), Some(vr)) = (u16_at(pos), u16_at(pos + 2), file.get(pos + 4..pos + 6)) else {
            return false;
        };
        let long = matches!(
            vr,
            b"OB" | b"OD" | b"OF" | b"OL" | b"OV" | b"OW" | b"SQ" | b"SV" | b"UC" | b"UN" | b"UR" | b"UT" | b"UV"
        );
        let (header, length) = if long {
            (12, u32_at(pos + 8))
        } else {
            (8, u16_at(pos + 6).map(u32::from))
        };
        let Some(length) = length.and_then(|l| usize::try_from(l).ok()) else {
            return false;
        };
        let start = pos + header;
        if length > file.len().saturating_sub(start) {
            return false;
        }
        if (group, element) == (2, 0x10) {
            transfer_syntax = std::str::from_utf8(&file[start..start + length]).ok();
        }
        pos = start + length;
        read += (header + length) as u64;
    }
    let Some(ts) = transfer_syntax.map(|ts| ts.trim_end_matches(['\0', ' '])) else {
        return false;
    };
    fcdnode::ingest::ACCEPTED_TRANSFER_SYNTAXES.contains(&ts)
        && fcdnode::ingest::check_element_lengths_limited(&file[pos..], ts, 16 << 20).is_ok()
}
