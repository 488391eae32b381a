//! DIMSE command sets, the one codec both ends of the node use: the SCP (`ingest`) parses
//! requests and encodes responses, the SCU (`deliver`) encodes requests and parses responses.
//! Command sets are always Implicit VR Little Endian in group 0000 (PS3.7 6.3.1); every length
//! a peer declares is checked against the bytes present before it is used.

use dicom_ul::association::Error as UlError;
use dicom_ul::pdu::Pdu;

/// Smallest max PDU length the node advertises or proposes (DCMTK's lower bound; dicom-ul
/// needs at least 1018).
pub const MIN_MAX_PDU: u32 = 4096;
/// Largest max PDU length (bounds the per-association buffers; larger PDUs only cost memory).
pub const MAX_MAX_PDU: u32 = 4 * 1024 * 1024;

/// A value that breaks the DIMSE encoding rules: a malformed command set or a bad AE title. The
/// message names the element or character and the rule; it goes into logs and Error Comments,
/// which is all either end does with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DimseError(pub String);

/// Checks a DICOM AE title (PS3.5 AE VR): 1–16 characters of printable ASCII without
/// backslash, not only spaces. Both ends of the node use it, for their own and their peers'.
pub fn check_ae_title(ae: &str) -> Result<(), DimseError> {
    if ae.trim().is_empty() {
        return Err(DimseError("must not be empty".into()));
    }
    if ae.len() > 16 {
        return Err(DimseError(format!(
            "{ae:?} has {} characters, at most 16 are allowed",
            ae.len()
        )));
    }
    if let Some(c) = ae.chars().find(|c| !(' '..='~').contains(c) || *c == '\\') {
        return Err(DimseError(format!(
            "{ae:?} contains {c:?}; use printable ASCII without backslash"
        )));
    }
    Ok(())
}

/// DIMSE status: success.
pub const STATUS_SUCCESS: u16 = 0x0000;
/// DIMSE status: refused, SOP Class not supported.
pub const STATUS_SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
/// DIMSE status: unrecognized operation.
pub const STATUS_UNRECOGNIZED_OPERATION: u16 = 0x0211;
/// DIMSE status: processing failure.
pub const STATUS_PROCESSING_FAILURE: u16 = 0x0110;
/// DIMSE status: refused, out of resources.
pub const STATUS_OUT_OF_RESOURCES: u16 = 0xA700;
/// DIMSE status: data set does not match SOP class.
pub const STATUS_DATASET_MISMATCH: u16 = 0xA900;
/// DIMSE status: cannot understand.
pub const STATUS_CANNOT_UNDERSTAND: u16 = 0xC000;

/// Largest command set accepted from a peer while reassembling command fragments.
pub(crate) const MAX_COMMAND_SET: usize = 64 * 1024;

/// Verification SOP Class (C-ECHO).
pub const VERIFICATION: &str = "1.2.840.10008.1.1";

/// Command Field of C-STORE-RQ.
pub(crate) const C_STORE_RQ: u16 = 0x0001;
/// Command Field of C-ECHO-RQ.
pub(crate) const C_ECHO_RQ: u16 = 0x0030;
/// Command Field of C-CANCEL-RQ.
pub(crate) const C_CANCEL_RQ: u16 = 0x0FFF;
/// Command Field bit that marks a response.
pub(crate) const RESPONSE_BIT: u16 = 0x8000;
/// Command Data Set Type value meaning "no data set".
pub(crate) const NO_DATA_SET: u16 = 0x0101;

/// Builds a command set: elements added in tag order, group length put first by `finish`.
pub(crate) struct CommandWriter {
    body: Vec<u8>,
}

impl CommandWriter {
    pub(crate) fn new() -> Self {
        Self {
            body: Vec::with_capacity(256),
        }
    }

    /// A US element.
    pub(crate) fn us(mut self, element: u16, value: u16) -> Self {
        put(&mut self.body, element, &value.to_le_bytes());
        self
    }

    /// A UI element, NUL-padded to even length.
    pub(crate) fn uid(mut self, element: u16, uid: &str) -> Self {
        put(&mut self.body, element, &padded(uid.as_bytes(), 0));
        self
    }

    /// A text element (LO), space-padded to even length.
    pub(crate) fn text(mut self, element: u16, text: &str) -> Self {
        put(&mut self.body, element, &padded(text.as_bytes(), b' '));
        self
    }

    /// The command set: Command Group Length, then the elements.
    pub(crate) fn finish(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 12);
        put(&mut out, 0x0000, &(self.body.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.body);
        out
    }
}

fn put(out: &mut Vec<u8>, element: u16, value: &[u8]) {
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

fn padded(value: &[u8], pad: u8) -> Vec<u8> {
    let mut v = value.to_vec();
    if v.len() % 2 == 1 {
        v.push(pad);
    }
    v
}

/// One element of a command set: group, element number, value.
pub(crate) type Element<'a> = (u16, u16, &'a [u8]);

/// The elements of an Implicit VR LE command set, each declared length checked against the
/// bytes that remain (nothing is allocated by what a peer declares).
pub(crate) fn elements(bytes: &[u8]) -> Result<Vec<Element<'_>>, DimseError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let remaining = bytes.len() - pos;
        if remaining < 8 {
            return Err(DimseError(format!(
                "truncated element header at offset {pos} ({remaining} bytes left)"
            )));
        }
        let group = u16::from_le_bytes([bytes[pos], bytes[pos + 1]]);
        let element = u16::from_le_bytes([bytes[pos + 2], bytes[pos + 3]]);
        let length = u32::from_le_bytes([bytes[pos + 4], bytes[pos + 5], bytes[pos + 6], bytes[pos + 7]]) as usize;
        let start = pos + 8;
        if length > bytes.len() - start {
            return Err(DimseError(format!(
                "element ({group:04X},{element:04X}) at offset {pos} declares {length} bytes but only {} remain",
                bytes.len() - start
            )));
        }
        out.push((group, element, &bytes[start..start + length]));
        pos = start + length;
    }
    Ok(out)
}

/// A US value of command element `(0000,element)`.
pub(crate) fn us(element: u16, value: &[u8]) -> Result<u16, DimseError> {
    match value {
        [a, b] => Ok(u16::from_le_bytes([*a, *b])),
        _ => Err(DimseError(format!(
            "(0000,{element:04X}) has {} bytes, US needs 2",
            value.len()
        ))),
    }
}

/// A text value without its padding.
pub(crate) fn text(value: &[u8]) -> String {
    String::from_utf8_lossy(value).trim_end_matches(['\0', ' ']).to_owned()
}

/// A PDU as logs may show it: name, type and length (the length field, after the 6-byte
/// header). Never its content: a P-DATA-TF carries data set bytes, and dicom-ul's `Debug`
/// prints them all.
pub(crate) fn pdu_summary(pdu: &Pdu) -> String {
    let pdu_type = pdu_type(pdu);
    let length = match pdu {
        // Each PDV item: 4-byte length, context ID, control header, then the fragment.
        Pdu::PData { data } => Some(data.iter().map(|pdv| 6 + pdv.data.len()).sum()),
        Pdu::Unknown { data, .. } => Some(data.len()),
        other => {
            let mut bytes = Vec::new();
            dicom_ul::write_pdu(&mut bytes, other)
                .ok()
                .map(|()| bytes.len().saturating_sub(6))
        }
    };
    match length {
        Some(n) => format!("{} (type 0x{pdu_type:02X}, {n} bytes)", pdu_name(pdu)),
        None => format!("{} (type 0x{pdu_type:02X})", pdu_name(pdu)),
    }
}

/// The PDU type byte of a PDU.
fn pdu_type(pdu: &Pdu) -> u8 {
    match pdu {
        Pdu::AssociationRQ(_) => 0x01,
        Pdu::AssociationAC(_) => 0x02,
        Pdu::AssociationRJ(_) => 0x03,
        Pdu::PData { .. } => 0x04,
        Pdu::ReleaseRQ => 0x05,
        Pdu::ReleaseRP => 0x06,
        Pdu::AbortRQ { .. } => 0x07,
        Pdu::Unknown { pdu_type, .. } => *pdu_type,
    }
}

/// A dicom-ul error as logs and stored faults may show it: [`crate::error_chain`], except that
/// a PDU the error carries is summarised by [`pdu_summary`] instead of `Debug`-printed.
pub(crate) fn ul_error_text(e: &UlError) -> String {
    match e {
        UlError::UnexpectedPdu { pdu, .. } => format!("unexpected {}", pdu_summary(pdu)),
        UlError::UnknownPdu { pdu, .. } => format!("unknown PDU: {}", pdu_summary(pdu)),
        other => crate::error_chain(other),
    }
}

/// The PDU's name, for messages about unexpected PDUs.
pub(crate) fn pdu_name(pdu: &Pdu) -> &'static str {
    pdu_type_name(pdu_type(pdu))
}

/// The name of a PDU type (PS3.8 9.3.1), for messages about a PDU known by its header only.
pub(crate) fn pdu_type_name(pdu_type: u8) -> &'static str {
    match pdu_type {
        0x01 => "A-ASSOCIATE-RQ",
        0x02 => "A-ASSOCIATE-AC",
        0x03 => "A-ASSOCIATE-RJ",
        0x04 => "P-DATA-TF",
        0x05 => "A-RELEASE-RQ",
        0x06 => "A-RELEASE-RP",
        0x07 => "A-ABORT",
        _ => "unknown PDU",
    }
}

#[cfg(test)]
mod tests {
    use dicom_ul::pdu::{PDataValue, PDataValueType};

    use super::*;

    #[test]
    fn a_pdu_summary_gives_type_and_length_and_no_content() {
        let data = b"CANARY^PATIENT".repeat(4);
        let pdu = Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: 1,
                value_type: PDataValueType::Data,
                is_last: true,
                data: data.clone(),
            }],
        };
        let mut bytes = Vec::new();
        dicom_ul::write_pdu(&mut bytes, &pdu).unwrap();
        let summary = pdu_summary(&pdu);
        assert_eq!(summary, format!("P-DATA-TF (type 0x04, {} bytes)", bytes.len() - 6));
        assert_eq!(pdu_summary(&Pdu::ReleaseRQ), "A-RELEASE-RQ (type 0x05, 4 bytes)");
        let unknown = Pdu::Unknown { pdu_type: 0x42, data };
        assert_eq!(pdu_summary(&unknown), "unknown PDU (type 0x42, 56 bytes)");
    }
}
