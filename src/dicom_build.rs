//! Small builders and readers for DICOM data sets, shared by the synthetic series writer, the
//! report stage, the spool and the configuration: typed element setters, DS (decimal string)
//! formatting, trimmed text values and the UID syntax check.

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, Length, PrimitiveValue, Tag, VR, smallvec};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

/// Implementation Class UID written in every file meta group (a fixed UUID-derived UID).
pub(crate) const IMPLEMENTATION_CLASS_UID: &str = "2.25.81681724522988485194127351668779841824";
/// Implementation Version Name written in every file meta group (at most 16 characters).
pub(crate) const IMPLEMENTATION_VERSION_NAME: &str = "FCDNODE_0_1";

/// Whether `obj` was made by the device with `device_uid` (its Contributing Equipment Sequence
/// names it): the loop guard that keeps the node from analysing its own output.
pub fn is_own_output(obj: &InMemDicomObject, device_uid: &str) -> bool {
    obj.get(tags::CONTRIBUTING_EQUIPMENT_SEQUENCE)
        .and_then(|e| e.items())
        .is_some_and(|items| {
            items.iter().any(|item| {
                item.get(tags::DEVICE_UID)
                    .and_then(|e| e.to_str().ok())
                    .is_some_and(|uid| uid.trim_end_matches(['\0', ' ']) == device_uid)
            })
        })
}

/// A decimal string (DS) of at most 16 characters with as many significant digits as fit,
/// so positions and cosines survive the round trip to well under 1e-6.
pub(crate) fn ds(value: f64) -> String {
    if !value.is_finite() {
        return "0".into();
    }
    for decimals in (0..=15).rev() {
        let mut s = format!("{value:.decimals$}");
        if s.contains('.') {
            s = s.trim_end_matches('0').trim_end_matches('.').to_owned();
        }
        if s == "-0" {
            s = "0".into();
        }
        if s.len() <= 16 {
            return s;
        }
    }
    // Only magnitudes ≥ 1e16 get here; exponent form fits DS.
    format!("{value:.6e}")
}

/// Backslash-separated DS values.
pub(crate) fn ds_multi(values: &[f64]) -> String {
    values.iter().map(|&v| ds(v)).collect::<Vec<_>>().join("\\")
}

/// Truncates `s` to `max` characters (LO/SH limits).
pub(crate) fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

pub(crate) fn put_str(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
}

pub(crate) fn put_u16(obj: &mut InMemDicomObject, tag: Tag, value: u16) {
    obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(value)));
}

pub(crate) fn put_u16s(obj: &mut InMemDicomObject, tag: Tag, values: &[u16]) {
    obj.put(DataElement::new(tag, VR::US, PrimitiveValue::U16(values.into())));
}

pub(crate) fn put_u32s(obj: &mut InMemDicomObject, tag: Tag, values: &[u32]) {
    obj.put(DataElement::new(tag, VR::UL, PrimitiveValue::U32(values.into())));
}

pub(crate) fn put_fd(obj: &mut InMemDicomObject, tag: Tag, value: f64) {
    put_fds(obj, tag, &[value]);
}

pub(crate) fn put_fds(obj: &mut InMemDicomObject, tag: Tag, values: &[f64]) {
    obj.put(DataElement::new(tag, VR::FD, PrimitiveValue::F64(values.into())));
}

pub(crate) fn put_tag(obj: &mut InMemDicomObject, tag: Tag, value: Tag) {
    obj.put(DataElement::new(
        tag,
        VR::AT,
        PrimitiveValue::Tags(smallvec::smallvec![value]),
    ));
}

pub(crate) fn put_seq(obj: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
    obj.put(DataElement::new_with_len(
        tag,
        VR::SQ,
        Length::UNDEFINED,
        DataSetSequence::new(items, Length::UNDEFINED),
    ));
}

pub(crate) fn put_f32s(obj: &mut InMemDicomObject, tag: Tag, values: &[f32]) {
    obj.put(DataElement::new(tag, VR::FL, PrimitiveValue::F32(values.into())));
}

/// Text value of `tag` in `obj`, trimmed, if present and non-empty.
pub(crate) fn get_str(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Whether `uid` is a DICOM UID: dot-separated non-empty digit components, at most 64
/// characters (UIDs also become path components in the spool, so this is a safety check too).
#[cfg(feature = "node")]
pub(crate) fn is_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 64
        && uid
            .split('.')
            .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()))
}
