//! The SCP's side of DIMSE: the request fields it uses, its response encoding and statuses, on
//! the shared command-set codec ([`crate::dimse`]).

pub(crate) use crate::dimse::{
    C_CANCEL_RQ, C_ECHO_RQ, C_STORE_RQ, MAX_COMMAND_SET, RESPONSE_BIT, STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES, STATUS_PROCESSING_FAILURE, STATUS_SOP_CLASS_NOT_SUPPORTED, STATUS_SUCCESS,
    STATUS_UNRECOGNIZED_OPERATION,
};
use crate::dimse::{CommandWriter, DimseError, NO_DATA_SET, elements, us};

/// The fields of a request command set the SCP uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Command {
    /// (0000,0100) Command Field.
    pub field: u16,
    /// (0000,0110) Message ID.
    pub message_id: u16,
    /// (0000,0002) Affected SOP Class UID, trimmed.
    pub affected_sop_class: String,
    /// (0000,1000) Affected SOP Instance UID, trimmed.
    pub affected_sop_instance: String,
    /// (0000,0800) Command Data Set Type says a data set follows.
    pub has_data_set: bool,
}

/// Parses an Implicit VR LE command set, checking each length against the bytes present.
pub(crate) fn parse_command(bytes: &[u8]) -> Result<Command, DimseError> {
    let mut command = Command::default();
    let (mut field, mut data_set_type) = (None, None);
    for (group, element, value) in elements(bytes)? {
        if group == 0x0000 {
            match element {
                0x0002 => command.affected_sop_class = uid(value, element)?,
                0x0100 => field = Some(us(element, value)?),
                0x0110 => command.message_id = us(element, value)?,
                0x0800 => data_set_type = Some(us(element, value)?),
                0x1000 => command.affected_sop_instance = uid(value, element)?,
                _ => {}
            }
        }
    }
    command.field = field.ok_or_else(|| DimseError("no Command Field (0000,0100)".into()))?;
    let data_set_type = data_set_type.ok_or_else(|| DimseError("no Command Data Set Type (0000,0800)".into()))?;
    command.has_data_set = data_set_type != NO_DATA_SET;
    Ok(command)
}

fn uid(value: &[u8], element: u16) -> Result<String, DimseError> {
    let text = std::str::from_utf8(value)
        .map_err(|_| DimseError(format!("(0000,{element:04X}) is not a UID")))?
        .trim_end_matches(['\0', ' '])
        .trim_start_matches(' ');
    if text.len() > 64 || !text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        // Its length only: the text is whatever the peer sent.
        return Err(DimseError(format!(
            "(0000,{element:04X}) is not a UID ({} bytes, not only digits and dots, at most 64)",
            text.len()
        )));
    }
    Ok(text.to_owned())
}

/// A response command set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Response<'a> {
    /// Command Field of the response (request field | 0x8000).
    pub field: u16,
    /// The request's Message ID.
    pub message_id_responded: u16,
    /// Affected SOP Class UID (omitted when empty).
    pub sop_class: &'a str,
    /// Affected SOP Instance UID (omitted when empty).
    pub sop_instance: &'a str,
    /// DIMSE status.
    pub status: u16,
    /// Error Comment (0000,0902), sanitised to at most 64 characters.
    pub error_comment: Option<&'a str>,
}

impl Response<'_> {
    /// Encodes as Implicit VR LE, elements in tag order, with the group length first.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = CommandWriter::new();
        if !self.sop_class.is_empty() {
            w = w.uid(0x0002, self.sop_class);
        }
        w = w
            .us(0x0100, self.field)
            .us(0x0120, self.message_id_responded)
            .us(0x0800, NO_DATA_SET)
            .us(0x0900, self.status);
        if let Some(comment) = self.error_comment {
            w = w.text(0x0902, &error_comment(comment));
        }
        if !self.sop_instance.is_empty() {
            w = w.uid(0x1000, self.sop_instance);
        }
        w.finish()
    }
}

/// An LO value: printable ASCII without backslash, at most 64 characters.
pub(crate) fn error_comment(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '\\' || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(64)
        .collect::<String>()
        .trim_end()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(field: u16, message_id: u16, with_data: bool) -> Vec<u8> {
        CommandWriter::new()
            .uid(0x0002, "1.2.840.10008.5.1.4.1.1.4")
            .us(0x0100, field)
            .us(0x0110, message_id)
            .us(0x0700, 0)
            .us(0x0800, if with_data { 0x0000 } else { NO_DATA_SET })
            .uid(0x1000, "1.2.3.4.5")
            .finish()
    }

    #[test]
    fn parses_a_store_request() {
        let command = parse_command(&request(C_STORE_RQ, 7, true)).unwrap();
        assert_eq!(command.field, C_STORE_RQ);
        assert_eq!(command.message_id, 7);
        assert_eq!(command.affected_sop_class, "1.2.840.10008.5.1.4.1.1.4");
        assert_eq!(command.affected_sop_instance, "1.2.3.4.5");
        assert!(command.has_data_set);
        assert!(!parse_command(&request(C_ECHO_RQ, 1, false)).unwrap().has_data_set);
    }

    #[test]
    fn lying_lengths_and_missing_fields_fail() {
        let mut bytes = request(C_STORE_RQ, 7, true);
        bytes.extend_from_slice(&[0, 0, 0x00, 0x20, 0xF0, 0xFF, 0xFF, 0xFF, 1, 2]);
        let err = parse_command(&bytes).unwrap_err();
        assert!(err.0.contains("(0000,2000)"), "{err}");
        assert!(parse_command(&bytes[..bytes.len() - 14]).is_err());
        assert!(parse_command(&[]).is_err());
    }

    #[test]
    fn responses_round_trip() {
        let response = Response {
            field: C_STORE_RQ | RESPONSE_BIT,
            message_id_responded: 9,
            sop_class: "1.2.840.10008.5.1.4.1.1.4",
            sop_instance: "1.2.3",
            status: STATUS_CANNOT_UNDERSTAND,
            error_comment: Some("bad\\thing\n"),
        };
        let bytes = response.encode();
        let group_length = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
        assert_eq!(group_length, bytes.len() - 12);
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("bad?thing"), "{text}");
        assert_eq!(error_comment(&"x".repeat(100)).len(), 64);
    }
}
