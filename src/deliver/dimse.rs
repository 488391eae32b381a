//! The SCU's side of DIMSE: C-STORE-RQ and C-ECHO-RQ encoding and response decoding, on the shared
//! command-set codec ([`crate::dimse`]).

use crate::dimse::{C_ECHO_RQ, C_STORE_RQ, CommandWriter, DimseError, NO_DATA_SET, VERIFICATION, elements, text, us};

/// Command Field of C-MOVE-RQ.
const C_MOVE_RQ: u16 = 0x0021;
/// Command Field of C-MOVE-RSP.
pub const C_MOVE_RSP: u16 = C_MOVE_RQ | crate::dimse::RESPONSE_BIT;
/// Command Field of C-FIND-RQ.
const C_FIND_RQ: u16 = 0x0020;
/// Command Field of C-FIND-RSP.
pub const C_FIND_RSP: u16 = C_FIND_RQ | crate::dimse::RESPONSE_BIT;

/// Command Field of C-STORE-RSP.
pub const C_STORE_RSP: u16 = C_STORE_RQ | crate::dimse::RESPONSE_BIT;
/// Command Field of C-ECHO-RSP.
pub const C_ECHO_RSP: u16 = C_ECHO_RQ | crate::dimse::RESPONSE_BIT;

/// The command set of a C-ECHO-RQ (no data set follows).
pub fn c_echo_rq(message_id: u16) -> Vec<u8> {
    CommandWriter::new()
        .uid(0x0002, VERIFICATION)
        .us(0x0100, C_ECHO_RQ)
        .us(0x0110, message_id)
        .us(0x0800, NO_DATA_SET)
        .finish()
}

/// The command set of a C-STORE-RQ (priority medium, a data set follows).
pub fn c_store_rq(message_id: u16, sop_class: &str, sop_instance: &str) -> Vec<u8> {
    CommandWriter::new()
        .uid(0x0002, sop_class)
        .us(0x0100, C_STORE_RQ)
        .us(0x0110, message_id)
        .us(0x0700, 0x0000)
        .us(0x0800, 0x0000)
        .uid(0x1000, sop_instance)
        .finish()
}

/// The fields of a response (C-STORE-RSP, C-ECHO-RSP, C-FIND-RSP, C-MOVE-RSP) the SCU needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rsp {
    /// Command Field (e.g. 0x8001 for C-STORE-RSP).
    pub command_field: u16,
    /// Message ID Being Responded To.
    pub responding_to: u16,
    /// Status.
    pub status: u16,
    /// Error Comment, when present.
    pub comment: Option<String>,
    /// Affected SOP Instance UID, when present.
    pub sop_instance: Option<String>,
    /// Whether a data set follows (a C-FIND match, a C-MOVE's Failed SOP Instance UID List).
    pub data_set: bool,
    /// Number of Completed, Failed and Warning Sub-operations (C-MOVE), when given.
    pub completed: Option<u16>,
    pub failed: Option<u16>,
    pub warning: Option<u16>,
}

/// Parses a response command set received from the peer.
pub fn parse_rsp(bytes: &[u8]) -> Result<Rsp, DimseError> {
    let mut rsp = Rsp::default();
    let (mut command_field, mut responding_to, mut status) = (None, None, None);
    for (group, element, value) in elements(bytes)? {
        if group != 0x0000 {
            return Err(DimseError(format!(
                "element ({group:04X},{element:04X}) outside the command group"
            )));
        }
        match element {
            0x0100 => command_field = Some(us(element, value)?),
            0x0120 => responding_to = Some(us(element, value)?),
            0x0800 => rsp.data_set = us(element, value)? != NO_DATA_SET,
            0x0900 => status = Some(us(element, value)?),
            0x0902 => rsp.comment = Some(text(value)).filter(|c| !c.is_empty()),
            0x1000 => rsp.sop_instance = Some(text(value)),
            0x1021 => rsp.completed = Some(us(element, value)?),
            0x1022 => rsp.failed = Some(us(element, value)?),
            0x1023 => rsp.warning = Some(us(element, value)?),
            _ => {}
        }
    }
    rsp.command_field = command_field.ok_or_else(|| DimseError("no Command Field (0000,0100)".into()))?;
    rsp.responding_to =
        responding_to.ok_or_else(|| DimseError("no Message ID Being Responded To (0000,0120)".into()))?;
    rsp.status = status.ok_or_else(|| DimseError("no Status (0000,0900)".into()))?;
    Ok(rsp)
}

/// The command set of a C-MOVE-RQ: move what the identifier that follows selects to
/// `destination_ae` (priority medium).
pub fn c_move_rq(message_id: u16, sop_class: &str, destination_ae: &str) -> Vec<u8> {
    CommandWriter::new()
        .uid(0x0002, sop_class)
        .us(0x0100, C_MOVE_RQ)
        .us(0x0110, message_id)
        .text(0x0600, destination_ae)
        .us(0x0700, 0x0000)
        .us(0x0800, 0x0000)
        .finish()
}

/// The command set of a C-FIND-RQ (priority medium, an identifier follows).
pub fn c_find_rq(message_id: u16, sop_class: &str) -> Vec<u8> {
    CommandWriter::new()
        .uid(0x0002, sop_class)
        .us(0x0100, C_FIND_RQ)
        .us(0x0110, message_id)
        .us(0x0700, 0x0000)
        .us(0x0800, 0x0000)
        .finish()
}
