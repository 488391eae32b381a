//! A bounded pre-parse of received data sets: every element, item and fragment length is checked
//! against the bytes actually present before anything allocates by a declared length.
//!
//! dicom-object reserves whatever an element declares before reading it (a 2 KB data set
//! claiming a 4 GiB value made it allocate 4.2 GB), so the node runs this walker first. It only
//! reads headers and skips values; it allocates nothing except, for the deflated transfer
//! syntax, the inflated stream (capped).

use std::io::{Read, Write};

use super::spill::DataSetBuffer;

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

use super::syntax::{DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_BE, IMPLICIT_VR_LE, trim_uid};

/// Deepest sequence nesting accepted (real objects stay far below; it bounds recursion here and
/// in any later parser).
pub const MAX_NESTING: usize = 64;

/// Cap on the inflated size of a deflated data set for [`check_element_lengths`].
pub const DEFAULT_MAX_INFLATED: usize = 1024 * 1024 * 1024;

const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_DELIMITER: (u16, u16) = (0xFFFE, 0xE00D);
const SEQUENCE_DELIMITER: (u16, u16) = (0xFFFE, 0xE0DD);
const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);

/// Why a data set was refused before parsing. The message names the tag (when known), the
/// byte offset (in the inflated stream for the deflated syntax) and the rule broken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct MalformedDataSet {
    /// The element or item concerned, `(group, element)`.
    pub tag: Option<(u16, u16)>,
    /// Offset of its header in the (inflated) data set.
    pub offset: usize,
    /// The whole explanation, tag and offset included.
    pub message: String,
}

impl MalformedDataSet {
    fn at(tag: Option<(u16, u16)>, offset: usize, what: impl std::fmt::Display) -> Self {
        let message = match tag {
            Some((g, e)) => format!("element ({g:04X},{e:04X}) at offset {offset}: {what}"),
            None => format!("at offset {offset}: {what}"),
        };
        Self { tag, offset, message }
    }
}

/// Walks `dataset` (no file meta group) encoded in `transfer_syntax` and rejects any element,
/// item or fragment whose declared length exceeds the bytes remaining in its enclosing
/// sequence, item or data set; undefined lengths anywhere but sequences, UN sequences and
/// encapsulated pixel data; missing delimiters; unknown explicit VRs; nesting deeper than
/// [`MAX_NESTING`]. Deflated data sets are inflated first, up to [`DEFAULT_MAX_INFLATED`] bytes.
pub fn check_element_lengths(dataset: &[u8], transfer_syntax: &str) -> Result<(), MalformedDataSet> {
    check_element_lengths_limited(dataset, transfer_syntax, DEFAULT_MAX_INFLATED)
}

/// [`check_element_lengths`] with an explicit cap on the inflated size of a deflated data set.
pub fn check_element_lengths_limited(
    dataset: &[u8],
    transfer_syntax: &str,
    max_inflated: usize,
) -> Result<(), MalformedDataSet> {
    check_encoded(
        &dataset,
        transfer_syntax,
        |cap| {
            let mut out = Vec::new();
            inflate_capped(dataset, &mut out, cap)?;
            walk_top(&out.as_slice(), Encoding::Explicit)
        },
        max_inflated,
    )
}

/// [`check_element_lengths_limited`] on a received data set wherever it is held: headers are
/// read where they lie, and a deflated data set is inflated into a buffer of the same kind (in
/// memory while small, then in a file beside it), so memory stays bounded whatever the peer sent.
pub fn check_data_set(
    dataset: &DataSetBuffer,
    transfer_syntax: &str,
    max_inflated: usize,
) -> Result<(), MalformedDataSet> {
    let unreadable =
        |e: std::io::Error| MalformedDataSet::at(None, 0, format!("cannot read the received data set: {e}"));
    check_encoded(
        dataset,
        transfer_syntax,
        |cap| {
            let mut out = dataset.empty_like();
            inflate_capped(dataset.reader().map_err(unreadable)?, &mut out, cap)?;
            walk_top(&out, Encoding::Explicit)
        },
        max_inflated,
    )
}

/// The walk for `transfer_syntax`; `deflated` inflates (to at most its argument) and walks.
fn check_encoded<B: Bytes + ?Sized>(
    dataset: &B,
    transfer_syntax: &str,
    deflated: impl FnOnce(usize) -> Result<(), MalformedDataSet>,
    max_inflated: usize,
) -> Result<(), MalformedDataSet> {
    let ts = trim_uid(transfer_syntax);
    match ts {
        IMPLICIT_VR_LE => walk_top(dataset, Encoding::Implicit),
        DEFLATED_EXPLICIT_VR_LE => deflated(max_inflated).map_err(|mut e| {
            e.message.push_str(" (offset in the inflated data set)");
            e
        }),
        EXPLICIT_VR_BE => Err(MalformedDataSet::at(
            None,
            0,
            "Explicit VR Big Endian data sets are not supported",
        )),
        // Explicit VR LE and every encapsulated (compressed) syntax.
        _ if ts.starts_with("1.2.840.10008.1.2.") => walk_top(dataset, Encoding::Explicit),
        _ => Err(MalformedDataSet::at(None, 0, format!("unknown transfer syntax {ts:?}"))),
    }
}

/// Inflates `deflated` into `out`, refusing more than `cap` bytes.
fn inflate_capped(deflated: impl Read, out: &mut impl Write, cap: usize) -> Result<(), MalformedDataSet> {
    let limit = u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1);
    let written = std::io::copy(&mut flate2::read::DeflateDecoder::new(deflated).take(limit), out)
        .map_err(|e| MalformedDataSet::at(None, 0, format!("deflated data set does not inflate: {e}")))?;
    if written > limit - 1 {
        return Err(MalformedDataSet::at(
            None,
            0,
            format!("deflated data set inflates to more than {cap} bytes"),
        ));
    }
    Ok(())
}

/// Where the walker reads element headers from: a slice, or a received data set wherever it is
/// held. Reads stay within `len` (the walker checks every length first).
trait Bytes {
    fn len(&self) -> usize;
    /// `N` bytes at `pos`; `None` when they cannot be read.
    fn array<const N: usize>(&self, pos: usize) -> Option<[u8; N]>;
}

impl Bytes for &[u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
    fn array<const N: usize>(&self, pos: usize) -> Option<[u8; N]> {
        self.get(pos..pos + N).and_then(|b| b.try_into().ok())
    }
}

impl Bytes for DataSetBuffer {
    fn len(&self) -> usize {
        usize::try_from(DataSetBuffer::len(self)).unwrap_or(usize::MAX)
    }
    fn array<const N: usize>(&self, pos: usize) -> Option<[u8; N]> {
        let mut out = [0u8; N];
        self.read_at(pos as u64, &mut out).ok().map(|()| out)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    Implicit,
    Explicit,
}

/// What an element's value holds, for the walker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Value {
    /// Items holding data sets, in this encoding.
    Sequence(Encoding),
    /// Items holding data sets in this encoding when the length is undefined, opaque bytes
    /// otherwise (UN, and unknown elements in implicit VR).
    SequenceIfUndefined(Encoding),
    /// Items holding opaque fragments (encapsulated pixel data).
    Fragments,
    /// Opaque bytes.
    Bytes,
}

fn walk_top<B: Bytes + ?Sized>(buf: &B, encoding: Encoding) -> Result<(), MalformedDataSet> {
    let walker = Walker {
        buf,
        unreadable: std::cell::Cell::new(None),
    };
    let walked = walker.dataset(0, buf.len(), encoding, 0, false);
    // A header that could not be read was taken as zeros: report that instead.
    if let Some(pos) = walker.unreadable.get() {
        return Err(MalformedDataSet::at(
            None,
            pos,
            "cannot read the received data set here",
        ));
    }
    let end = walked?;
    debug_assert_eq!(end, buf.len());
    Ok(())
}

struct Walker<'a, B: ?Sized> {
    buf: &'a B,
    /// The first position whose bytes could not be read (an I/O error on a staged file).
    unreadable: std::cell::Cell<Option<usize>>,
}

impl<B: Bytes + ?Sized> Walker<'_, B> {
    fn bytes<const N: usize>(&self, pos: usize) -> [u8; N] {
        self.buf.array(pos).unwrap_or_else(|| {
            if self.unreadable.get().is_none() {
                self.unreadable.set(Some(pos));
            }
            [0; N]
        })
    }

    fn u16_at(&self, pos: usize) -> u16 {
        u16::from_le_bytes(self.bytes(pos))
    }

    fn u32_at(&self, pos: usize) -> u32 {
        u32::from_le_bytes(self.bytes(pos))
    }

    fn tag_at(&self, pos: usize) -> (u16, u16) {
        (self.u16_at(pos), self.u16_at(pos + 2))
    }

    /// An item or delimiter header (tag + 4-byte length) at `pos`, within `end`.
    fn item_header(&self, pos: usize, end: usize) -> Result<((u16, u16), u32), MalformedDataSet> {
        if end - pos < 8 {
            let tag = (end - pos >= 4).then(|| self.tag_at(pos));
            return Err(MalformedDataSet::at(
                tag,
                pos,
                format!("truncated item header: {} bytes left, 8 needed", end - pos),
            ));
        }
        Ok((self.tag_at(pos), self.u32_at(pos + 4)))
    }

    /// Walks data set elements from `pos` up to `end`. With `until_item_delimiter`, the data set
    /// is an undefined-length item and must end with an item delimiter before `end`; returns the
    /// position after the delimiter. Otherwise it must end exactly at `end`.
    fn dataset(
        &self,
        mut pos: usize,
        end: usize,
        encoding: Encoding,
        depth: usize,
        until_item_delimiter: bool,
    ) -> Result<usize, MalformedDataSet> {
        loop {
            if pos == end {
                if until_item_delimiter {
                    return Err(MalformedDataSet::at(
                        None,
                        pos,
                        "undefined-length item has no item delimiter",
                    ));
                }
                return Ok(pos);
            }
            if end - pos < 8 {
                let tag = (end - pos >= 4).then(|| self.tag_at(pos));
                return Err(MalformedDataSet::at(
                    tag,
                    pos,
                    format!("truncated element header: {} bytes left, at least 8 needed", end - pos),
                ));
            }
            let tag = self.tag_at(pos);
            if tag.0 == 0xFFFE {
                if tag == ITEM_DELIMITER && until_item_delimiter {
                    return Ok(pos + 8);
                }
                return Err(MalformedDataSet::at(
                    Some(tag),
                    pos,
                    "item or delimiter tag where a data element was expected",
                ));
            }
            let (header, length, value, vr) = match encoding {
                Encoding::Implicit => (8, self.u32_at(pos + 4), implicit_value(tag), implicit_vr(tag)),
                Encoding::Explicit => {
                    let vr_bytes: [u8; 2] = self.bytes(pos + 4);
                    let Some(vr) = VR::from_binary(vr_bytes) else {
                        return Err(MalformedDataSet::at(
                            Some(tag),
                            pos,
                            format!("unknown VR {:?}", String::from_utf8_lossy(&vr_bytes)),
                        ));
                    };
                    let value = match vr {
                        VR::SQ => Value::Sequence(Encoding::Explicit),
                        // An undefined-length UN holds an implicit VR LE sequence (PS3.5 6.2.2).
                        VR::UN => Value::SequenceIfUndefined(Encoding::Implicit),
                        VR::OB | VR::OW if tag == PIXEL_DATA => Value::Fragments,
                        _ => Value::Bytes,
                    };
                    if has_long_length(vr) {
                        if end - pos < 12 {
                            return Err(MalformedDataSet::at(
                                Some(tag),
                                pos,
                                format!("truncated element header: {} bytes left, 12 needed", end - pos),
                            ));
                        }
                        (12, self.u32_at(pos + 8), value, vr)
                    } else {
                        (8, u32::from(self.u16_at(pos + 6)), value, vr)
                    }
                }
            };
            let start = pos + header;
            pos = if length == UNDEFINED {
                match value {
                    Value::Sequence(items) | Value::SequenceIfUndefined(items) => {
                        self.sequence(start, end, items, depth + 1, true, tag, pos)?
                    }
                    Value::Fragments => self.fragments(start, end, tag)?,
                    Value::Bytes => {
                        return Err(MalformedDataSet::at(
                            Some(tag),
                            pos,
                            "undefined length on an element that is neither a sequence nor pixel data",
                        ));
                    }
                }
            } else {
                let value_end = value_end(tag, pos, start, length, end, "")?;
                check_unit(tag, pos, vr, length)?;
                if let Value::Sequence(items) = value {
                    self.sequence(start, value_end, items, depth + 1, false, tag, pos)?;
                }
                value_end
            };
        }
    }

    /// Walks the items of a sequence starting at `pos`. Defined length: the items fill exactly
    /// `pos..end`. Undefined: items up to a sequence delimiter before `end`.
    #[allow(clippy::too_many_arguments)]
    fn sequence(
        &self,
        mut pos: usize,
        end: usize,
        encoding: Encoding,
        depth: usize,
        undefined: bool,
        seq_tag: (u16, u16),
        seq_offset: usize,
    ) -> Result<usize, MalformedDataSet> {
        if depth > MAX_NESTING {
            return Err(MalformedDataSet::at(
                Some(seq_tag),
                seq_offset,
                format!("sequences nested deeper than {MAX_NESTING}"),
            ));
        }
        loop {
            if pos == end {
                if undefined {
                    return Err(MalformedDataSet::at(
                        Some(seq_tag),
                        seq_offset,
                        "undefined-length sequence has no sequence delimiter",
                    ));
                }
                return Ok(pos);
            }
            let (tag, length) = self.item_header(pos, end)?;
            match tag {
                SEQUENCE_DELIMITER if undefined => return Ok(pos + 8),
                ITEM if length == UNDEFINED => {
                    pos = self.dataset(pos + 8, end, encoding, depth, true)?;
                }
                ITEM => {
                    let what = format!("item of sequence ({:04X},{:04X}) ", seq_tag.0, seq_tag.1);
                    let item_end = value_end(tag, pos, pos + 8, length, end, &what)?;
                    self.dataset(pos + 8, item_end, encoding, depth, false)?;
                    pos = item_end;
                }
                _ => {
                    return Err(MalformedDataSet::at(
                        Some(tag),
                        pos,
                        format!("expected an item of sequence ({:04X},{:04X})", seq_tag.0, seq_tag.1),
                    ));
                }
            }
        }
    }

    /// Encapsulated pixel data: defined-length fragment items up to a sequence delimiter.
    fn fragments(&self, mut pos: usize, end: usize, pixel_tag: (u16, u16)) -> Result<usize, MalformedDataSet> {
        loop {
            if pos == end {
                return Err(MalformedDataSet::at(
                    Some(pixel_tag),
                    pos,
                    "encapsulated pixel data has no sequence delimiter",
                ));
            }
            let (tag, length) = self.item_header(pos, end)?;
            match tag {
                SEQUENCE_DELIMITER => return Ok(pos + 8),
                ITEM if length != UNDEFINED => {
                    pos = value_end(tag, pos, pos + 8, length, end, "pixel data fragment ")?;
                }
                _ => {
                    return Err(MalformedDataSet::at(
                        Some(tag),
                        pos,
                        "expected a defined-length pixel data fragment item",
                    ));
                }
            }
        }
    }
}

/// VRs with a 2-byte reserved field and a 4-byte length in explicit VR encoding.
fn has_long_length(vr: VR) -> bool {
    matches!(
        vr,
        VR::OB
            | VR::OD
            | VR::OF
            | VR::OL
            | VR::OV
            | VR::OW
            | VR::SQ
            | VR::SV
            | VR::UC
            | VR::UN
            | VR::UR
            | VR::UT
            | VR::UV
    )
}

/// In implicit VR the dictionary says whether an element is a sequence. Unknown (private)
/// elements are opaque when defined-length and sequences when undefined-length.
fn implicit_value(tag: (u16, u16)) -> Value {
    if tag == PIXEL_DATA {
        return Value::Fragments;
    }
    match StandardDataDictionary.by_tag(Tag(tag.0, tag.1)).map(|e| e.vr()) {
        Some(VirtualVr::Exact(VR::SQ)) => Value::Sequence(Encoding::Implicit),
        Some(_) => Value::Bytes,
        None => Value::SequenceIfUndefined(Encoding::Implicit),
    }
}

/// The VR dicom-parser reads an implicit VR element with: OW for pixel and overlay data, the
/// dictionary's (US for US-or-SS, OW for OB-or-OW), UN for unknown elements.
fn implicit_vr(tag: (u16, u16)) -> VR {
    if tag == PIXEL_DATA || (tag.0 >> 8 == 0x60 && tag.1 == 0x3000) {
        return VR::OW;
    }
    StandardDataDictionary
        .by_tag(Tag(tag.0, tag.1))
        .map_or(VR::UN, |e| e.vr().relaxed())
}

/// Refuses a value whose length is not a whole number of its VR's values (PS3.5 6.2). dicom-parser
/// reads `length / size` values but counts `length` bytes as read, so the rest of the data set
/// is parsed from the wrong offset and any length it then finds (4 GiB at most) is allocated
/// before reading: a data set this walker passed made it allocate 2.8 GB (found by `fuzz/`).
fn check_unit(tag: (u16, u16), pos: usize, vr: VR, length: u32) -> Result<(), MalformedDataSet> {
    let size = match vr {
        VR::US | VR::SS | VR::OW => 2,
        VR::UL | VR::SL | VR::FL | VR::OF | VR::OL | VR::AT => 4,
        VR::FD | VR::OD | VR::SV | VR::UV | VR::OV => 8,
        _ => 1,
    };
    // With signed pixel data dicom-parser reads a US-or-SS element as SS whatever its header says.
    let xs = StandardDataDictionary.by_tag(Tag(tag.0, tag.1)).map(|e| e.vr()) == Some(VirtualVr::Xs);
    let size = if xs { size.max(2) } else { size };
    if !length.is_multiple_of(size) {
        return Err(MalformedDataSet::at(
            Some(tag),
            pos,
            format!("{vr:?} value of {length} bytes is not a multiple of {size}"),
        ));
    }
    Ok(())
}

/// End of a defined-length value starting at `start`, or the error when it declares more bytes
/// than remain before `end` (`what` names the kind of value, ending in a space, or is empty).
fn value_end(
    tag: (u16, u16),
    pos: usize,
    start: usize,
    length: u32,
    end: usize,
    what: &str,
) -> Result<usize, MalformedDataSet> {
    let length = length as usize;
    let remaining = end - start;
    if length > remaining {
        return Err(MalformedDataSet::at(
            Some(tag),
            pos,
            format!("{what}declares {length} bytes but only {remaining} remain"),
        ));
    }
    Ok(start + length)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Explicit VR LE element with a short length.
    fn ex(tag: (u16, u16), vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut out = tag_bytes(tag);
        out.extend_from_slice(vr);
        if has_long_length(VR::from_binary(*vr).unwrap()) {
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        } else {
            out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        }
        out.extend_from_slice(value);
        out
    }

    /// Explicit VR LE long-form header with an arbitrary declared length (no value).
    fn ex_header(tag: (u16, u16), vr: &[u8; 2], length: u32) -> Vec<u8> {
        let mut out = tag_bytes(tag);
        out.extend_from_slice(vr);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&length.to_le_bytes());
        out
    }

    /// Implicit VR LE element.
    fn im(tag: (u16, u16), value: &[u8]) -> Vec<u8> {
        let mut out = tag_bytes(tag);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
        out
    }

    fn tag_bytes(tag: (u16, u16)) -> Vec<u8> {
        let mut out = tag.0.to_le_bytes().to_vec();
        out.extend_from_slice(&tag.1.to_le_bytes());
        out
    }

    fn item_header(tag: (u16, u16), length: u32) -> Vec<u8> {
        let mut out = tag_bytes(tag);
        out.extend_from_slice(&length.to_le_bytes());
        out
    }

    fn item(content: &[u8]) -> Vec<u8> {
        let mut out = item_header(ITEM, content.len() as u32);
        out.extend_from_slice(content);
        out
    }

    fn undefined_item(content: &[u8]) -> Vec<u8> {
        let mut out = item_header(ITEM, UNDEFINED);
        out.extend_from_slice(content);
        out.extend(item_header(ITEM_DELIMITER, 0));
        out
    }

    fn simple() -> Vec<u8> {
        let mut ds = ex((0x0008, 0x0016), b"UI", b"1.2.840.10008.5.1.4.1.1.4\0");
        ds.extend(ex((0x0010, 0x0010), b"PN", b"Doe^J "));
        ds.extend(ex((0x0028, 0x0010), b"US", &4u16.to_le_bytes()));
        ds.extend(ex((0x7FE0, 0x0010), b"OW", &[7u8; 32]));
        ds
    }

    const EX: &str = "1.2.840.10008.1.2.1";

    #[test]
    fn a_plain_data_set_passes() {
        check_element_lengths(&simple(), EX).unwrap();
        check_element_lengths(&[], EX).unwrap();
    }

    #[test]
    fn an_element_longer_than_the_data_names_its_tag() {
        let mut ds = simple();
        ds.extend(ex_header((0x7FE1, 0x0010), b"OB", 0xFFFF_FFF0));
        ds.extend(vec![0u8; 2048]);
        let err = check_element_lengths(&ds, EX).unwrap_err();
        assert_eq!(err.tag, Some((0x7FE1, 0x0010)));
        assert!(err.message.contains("(7FE1,0010)"), "{err}");
        assert!(err.message.contains("4294967280"), "{err}");
        // Truncated by one byte: the last element no longer fits.
        let ds = simple();
        let err = check_element_lengths(&ds[..ds.len() - 1], EX).unwrap_err();
        assert!(err.message.contains("(7FE0,0010)"), "{err}");
        // A header cut in the middle.
        let err = check_element_lengths(&ds[..5], EX).unwrap_err();
        assert!(err.message.contains("(0008,0016)"), "{err}");
        assert!(err.message.contains("truncated"), "{err}");
    }

    #[test]
    fn short_form_lengths_are_checked_too() {
        let mut ds = simple();
        let mut bad = tag_bytes((0x0010, 0x0020));
        bad.extend_from_slice(b"LO");
        bad.extend_from_slice(&200u16.to_le_bytes());
        bad.extend_from_slice(b"ABC");
        ds.extend(bad);
        let err = check_element_lengths(&ds, EX).unwrap_err();
        assert!(
            err.message.contains("(0010,0020)") && err.message.contains("200"),
            "{err}"
        );
    }

    /// Sequence (0040,0275) with a defined-length item holding an undefined-length sequence
    /// (0008,1140) with undefined-length items.
    fn nested(inner_element: &[u8]) -> Vec<u8> {
        let mut inner_items = undefined_item(&ex((0x0008, 0x1155), b"UI", b"1.2.3.4\0"));
        inner_items.extend(undefined_item(inner_element));
        let mut inner_seq = ex_header((0x0008, 0x1140), b"SQ", UNDEFINED);
        inner_seq.extend(inner_items);
        inner_seq.extend(item_header(SEQUENCE_DELIMITER, 0));
        let mut outer_item_content = ex((0x0040, 0x0009), b"SH", b"SPS1");
        outer_item_content.extend(inner_seq);
        let outer_items = item(&outer_item_content);
        let mut ds = ex((0x0008, 0x0016), b"UI", b"1.2.840.10008.5.1.4.1.1.4\0");
        ds.extend(ex((0x0040, 0x0275), b"SQ", &outer_items));
        ds.extend(ex((0x7FE0, 0x0010), b"OW", &[1u8; 8]));
        ds
    }

    #[test]
    fn nested_sequences_and_undefined_length_items() {
        check_element_lengths(&nested(&ex((0x0008, 0x1150), b"UI", b"1.2\0")), EX).unwrap();
        // The same structure with an over-long element deep inside: the outer item and sequence
        // lengths are consistent, only the inner element lies.
        let mut liar = ex_header((0x0009, 0x1010), b"OB", 1_000_000);
        liar.extend_from_slice(&[0u8; 16]);
        let err = check_element_lengths(&nested(&liar), EX).unwrap_err();
        assert_eq!(err.tag, Some((0x0009, 0x1010)), "{err}");
        assert!(err.message.contains("1000000"), "{err}");
    }

    #[test]
    fn missing_delimiters_and_bad_items_fail() {
        let mut ds = ex_header((0x0008, 0x1140), b"SQ", UNDEFINED);
        ds.extend(item_header(ITEM, UNDEFINED));
        ds.extend(ex((0x0008, 0x1155), b"UI", b"1.2\0"));
        let err = check_element_lengths(&ds, EX).unwrap_err();
        assert!(err.message.contains("item delimiter"), "{err}");

        let mut ds = ex_header((0x0008, 0x1140), b"SQ", UNDEFINED);
        ds.extend(item(&ex((0x0008, 0x1155), b"UI", b"1.2\0")));
        let err = check_element_lengths(&ds, EX).unwrap_err();
        assert!(
            err.message.contains("sequence delimiter") && err.message.contains("(0008,1140)"),
            "{err}"
        );

        let mut ds = ex_header((0x0008, 0x1140), b"SQ", 16);
        ds.extend(item_header(ITEM, 4000));
        ds.extend([0u8; 8]);
        let err = check_element_lengths(&ds, EX).unwrap_err();
        assert!(
            err.message.contains("(FFFE,E000)") && err.message.contains("4000"),
            "{err}"
        );

        let mut ds = tag_bytes((0x0010, 0x0010));
        ds.extend_from_slice(b"ZZ\x02\x00AB");
        let err = check_element_lengths(&ds, EX).unwrap_err();
        assert!(err.message.contains("unknown VR"), "{err}");

        let ds = ex_header((0x0010, 0x4000), b"LT", UNDEFINED);
        assert!(check_element_lengths(&ds, EX).is_err());
    }

    #[test]
    fn encapsulated_pixel_data_fragments_are_checked() {
        let mut ds = ex((0x0028, 0x0010), b"US", &4u16.to_le_bytes());
        ds.extend(ex_header(PIXEL_DATA, b"OB", UNDEFINED));
        ds.extend(item(&[])); // basic offset table
        ds.extend(item(&[0xFF, 0xD8, 0xFF, 0xD9]));
        let mut good = ds.clone();
        good.extend(item_header(SEQUENCE_DELIMITER, 0));
        check_element_lengths(&good, "1.2.840.10008.1.2.4.80").unwrap();

        let mut bad = ds.clone();
        bad.extend(item_header(ITEM, 0x8000_0000));
        bad.extend([0u8; 100]);
        let err = check_element_lengths(&bad, "1.2.840.10008.1.2.4.80").unwrap_err();
        assert!(
            err.message.contains("fragment") && err.message.contains("2147483648"),
            "{err}"
        );

        let err = check_element_lengths(&ds, "1.2.840.10008.1.2.4.80").unwrap_err();
        assert!(err.message.contains("(7FE0,0010)"), "{err}");
    }

    #[test]
    fn implicit_vr_uses_the_dictionary_for_sequences() {
        // (0008,1140) Referenced Image Sequence, defined length, one item with an over-long
        // element inside: only found by descending into the sequence.
        let mut content = im((0x0008, 0x1150), b"1.2\0");
        let mut liar = tag_bytes((0x0008, 0x1155));
        liar.extend_from_slice(&0x7FFF_0000u32.to_le_bytes());
        liar.extend_from_slice(b"1.2\0");
        content.extend(liar);
        let mut ds = im((0x0008, 0x0016), b"1.2.840.10008.5.1.4.1.1.4\0");
        ds.extend(im((0x0008, 0x1140), &item(&content)));
        let err = check_element_lengths(&ds, IMPLICIT_VR_LE).unwrap_err();
        assert_eq!(err.tag, Some((0x0008, 0x1155)), "{err}");

        let mut fine = im((0x0008, 0x0016), b"1.2.840.10008.5.1.4.1.1.4\0");
        fine.extend(im((0x0008, 0x1140), &item(&im((0x0008, 0x1150), b"1.2\0"))));
        fine.extend(im((0x7FE0, 0x0010), &[0u8; 16]));
        check_element_lengths(&fine, IMPLICIT_VR_LE).unwrap();
        // The same bytes read as explicit VR make no sense.
        assert!(check_element_lengths(&fine, EX).is_err());
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut inner = ex((0x0008, 0x1155), b"UI", b"1.2\0");
        for _ in 0..(MAX_NESTING + 1) {
            inner = ex((0x0008, 0x1140), b"SQ", &item(&inner));
        }
        let err = check_element_lengths(&inner, EX).unwrap_err();
        assert!(err.message.contains("nested deeper"), "{err}");
    }

    #[test]
    fn deflated_data_sets_are_inflated_with_a_cap() {
        use std::io::Write;
        let plain = simple();
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&plain).unwrap();
        let deflated = enc.finish().unwrap();
        check_element_lengths(&deflated, DEFLATED_EXPLICIT_VR_LE).unwrap();
        let err = check_element_lengths_limited(&deflated, DEFLATED_EXPLICIT_VR_LE, plain.len() - 1).unwrap_err();
        assert!(err.message.contains("inflates to more than"), "{err}");
        let err = check_element_lengths(&[0xFF; 64], DEFLATED_EXPLICIT_VR_LE).unwrap_err();
        assert!(err.message.contains("inflate"), "{err}");

        let mut lying = simple();
        lying.extend(ex_header((0x7FE1, 0x0010), b"OB", 0xFFFF_0000));
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&lying).unwrap();
        let err = check_element_lengths(&enc.finish().unwrap(), DEFLATED_EXPLICIT_VR_LE).unwrap_err();
        assert!(
            err.message.contains("(7FE1,0010)") && err.message.contains("inflated"),
            "{err}"
        );
    }

    /// dicom-parser reads whole values and counts the declared length: a remainder would shift
    /// everything after it (the fuzz target `data_set` found this with an implicit UL of 1 byte).
    #[test]
    fn binary_values_must_be_whole_values() {
        let mut ds = im((0x0000, 0x0000), &[0x40]);
        ds.extend(im((0x0008, 0x0018), b"1.2\0"));
        let err = check_element_lengths(&ds, IMPLICIT_VR_LE).unwrap_err();
        assert!(
            err.message.contains("(0000,0000)") && err.message.contains("multiple of 4"),
            "{err}"
        );
        let err = check_element_lengths(&im((0x0028, 0x0010), &[1, 0, 0]), IMPLICIT_VR_LE).unwrap_err();
        assert!(err.message.contains("multiple of 2"), "{err}");
        let err = check_element_lengths(&ex((0x0018, 0x9087), b"FD", &[0; 4]), EX).unwrap_err();
        assert!(err.message.contains("multiple of 8"), "{err}");
        // Pixel Padding Value is US-or-SS in the dictionary: even whatever the header says.
        assert!(check_element_lengths(&ex((0x0028, 0x0120), b"OB", &[1, 0, 0]), EX).is_err());
        check_element_lengths(&ex((0x0028, 0x0120), b"OB", &[1, 0]), EX).unwrap();
        check_element_lengths(&im((0x0028, 0x0010), &[1, 0]), IMPLICIT_VR_LE).unwrap();
        check_element_lengths(&ex((0x0018, 0x9087), b"FD", &[0; 16]), EX).unwrap();
    }

    #[test]
    fn big_endian_and_unknown_syntaxes_are_refused() {
        assert!(check_element_lengths(&simple(), EXPLICIT_VR_BE).is_err());
        assert!(check_element_lengths(&simple(), "1.2.3").is_err());
    }
}
