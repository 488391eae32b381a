//! DIMSE command sets (always Implicit VR Little Endian, group 0000): a bounded parser for the
//! few fields the SCP needs and an encoder for responses.

/// Largest command set accepted while reassembling command fragments.
pub(crate) const MAX_COMMAND_SET: usize = 64 * 1024;

pub(crate) const C_STORE_RQ: u16 = 0x0001;
pub(crate) const C_ECHO_RQ: u16 = 0x0030;
pub(crate) const C_CANCEL_RQ: u16 = 0x0FFF;
/// Command Field bit that marks a response.
pub(crate) const RESPONSE_BIT: u16 = 0x8000;
/// Command Data Set Type value meaning "no data set".
const NO_DATA_SET: u16 = 0x0101;

pub(crate) const STATUS_SUCCESS: u16 = 0x0000;
/// Refused: SOP Class not supported.
pub(crate) const STATUS_SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
/// Unrecognized operation.
pub(crate) const STATUS_UNRECOGNIZED_OPERATION: u16 = 0x0211;
/// Processing failure.
pub(crate) const STATUS_PROCESSING_FAILURE: u16 = 0x0110;
/// Refused: out of resources.
pub(crate) const STATUS_OUT_OF_RESOURCES: u16 = 0xA700;
/// Error: cannot understand.
pub(crate) const STATUS_CANNOT_UNDERSTAND: u16 = 0xC000;

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

/// A command set that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed command set: {0}")]
pub(crate) struct CommandError(pub String);

/// Parses an Implicit VR LE command set, checking each length against the bytes present.
pub(crate) fn parse_command(bytes: &[u8]) -> Result<Command, CommandError> {
    let mut command = Command::default();
    let (mut field, mut data_set_type) = (None, None);
    let mut pos = 0;
    while pos < bytes.len() {
        let remaining = bytes.len() - pos;
        if remaining < 8 {
            return Err(CommandError(format!(
                "truncated element header at offset {pos} ({remaining} bytes left)"
            )));
        }
        let group = u16::from_le_bytes([bytes[pos], bytes[pos + 1]]);
        let element = u16::from_le_bytes([bytes[pos + 2], bytes[pos + 3]]);
        let length = u32::from_le_bytes([bytes[pos + 4], bytes[pos + 5], bytes[pos + 6], bytes[pos + 7]]) as usize;
        let start = pos + 8;
        if length > bytes.len() - start {
            return Err(CommandError(format!(
                "element ({group:04X},{element:04X}) at offset {pos} declares {length} bytes but only {} remain",
                bytes.len() - start
            )));
        }
        let value = &bytes[start..start + length];
        if group == 0x0000 {
            match element {
                0x0002 => command.affected_sop_class = uid(value, element)?,
                0x0100 => field = Some(us(value, element)?),
                0x0110 => command.message_id = us(value, element)?,
                0x0800 => data_set_type = Some(us(value, element)?),
                0x1000 => command.affected_sop_instance = uid(value, element)?,
                _ => {}
            }
        }
        pos = start + length;
    }
    command.field = field.ok_or_else(|| CommandError("no Command Field (0000,0100)".into()))?;
    let data_set_type = data_set_type.ok_or_else(|| CommandError("no Command Data Set Type (0000,0800)".into()))?;
    command.has_data_set = data_set_type != NO_DATA_SET;
    Ok(command)
}

fn us(value: &[u8], element: u16) -> Result<u16, CommandError> {
    match value {
        [a, b] => Ok(u16::from_le_bytes([*a, *b])),
        _ => Err(CommandError(format!(
            "(0000,{element:04X}) has {} bytes, US needs 2",
            value.len()
        ))),
    }
}

fn uid(value: &[u8], element: u16) -> Result<String, CommandError> {
    let text = std::str::from_utf8(value)
        .map_err(|_| CommandError(format!("(0000,{element:04X}) is not a UID")))?
        .trim_end_matches(['\0', ' '])
        .trim_start_matches(' ');
    if text.len() > 64 || !text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(CommandError(format!("(0000,{element:04X}) {text:?} is not a UID")));
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
        let mut body = Vec::with_capacity(256);
        if !self.sop_class.is_empty() {
            put(&mut body, 0x0002, &padded(self.sop_class.as_bytes(), 0));
        }
        put(&mut body, 0x0100, &self.field.to_le_bytes());
        put(&mut body, 0x0120, &self.message_id_responded.to_le_bytes());
        put(&mut body, 0x0800, &NO_DATA_SET.to_le_bytes());
        put(&mut body, 0x0900, &self.status.to_le_bytes());
        if let Some(comment) = self.error_comment {
            put(&mut body, 0x0902, &padded(error_comment(comment).as_bytes(), b' '));
        }
        if !self.sop_instance.is_empty() {
            put(&mut body, 0x1000, &padded(self.sop_instance.as_bytes(), 0));
        }
        let mut out = Vec::with_capacity(body.len() + 12);
        put(&mut out, 0x0000, &(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
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
        let mut body = Vec::new();
        put(&mut body, 0x0002, &padded(b"1.2.840.10008.5.1.4.1.1.4", 0));
        put(&mut body, 0x0100, &field.to_le_bytes());
        put(&mut body, 0x0110, &message_id.to_le_bytes());
        put(&mut body, 0x0700, &0u16.to_le_bytes());
        put(
            &mut body,
            0x0800,
            &(if with_data { 0x0000u16 } else { NO_DATA_SET }).to_le_bytes(),
        );
        put(&mut body, 0x1000, &padded(b"1.2.3.4.5", 0));
        let mut out = Vec::new();
        put(&mut out, 0x0000, &(body.len() as u32).to_le_bytes());
        out.extend(body);
        out
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
