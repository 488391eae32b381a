//! C-STORE-RQ command encoding and C-STORE-RSP decoding (command sets are always implicit VR
//! little endian, PS3.7 6.3.1). Written by hand so that nothing a peer declares is allocated
//! before it is checked against the bytes actually received.

/// Command Field of C-STORE-RQ.
pub const C_STORE_RQ: u16 = 0x0001;
/// Command Field of C-STORE-RSP.
pub const C_STORE_RSP: u16 = 0x8001;
/// Largest command set we accept from a peer (a C-STORE-RSP is a few hundred bytes).
pub const MAX_COMMAND_LEN: usize = 64 * 1024;

fn put_element(out: &mut Vec<u8>, element: u16, value: &[u8]) {
    out.extend_from_slice(&0x0000u16.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

fn uid_value(uid: &str) -> Vec<u8> {
    let mut v = uid.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(0);
    }
    v
}

/// The command set of a C-STORE-RQ (priority medium, a data set follows).
pub fn c_store_rq(message_id: u16, sop_class: &str, sop_instance: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(256);
    put_element(&mut body, 0x0002, &uid_value(sop_class));
    put_element(&mut body, 0x0100, &C_STORE_RQ.to_le_bytes());
    put_element(&mut body, 0x0110, &message_id.to_le_bytes());
    put_element(&mut body, 0x0700, &0x0000u16.to_le_bytes());
    put_element(&mut body, 0x0800, &0x0000u16.to_le_bytes());
    put_element(&mut body, 0x1000, &uid_value(sop_instance));
    let mut out = Vec::with_capacity(body.len() + 12);
    put_element(&mut out, 0x0000, &(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// The fields of a C-STORE-RSP the SCU needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreRsp {
    /// Command Field (0x8001 for C-STORE-RSP).
    pub command_field: u16,
    /// Message ID Being Responded To.
    pub responding_to: u16,
    /// Status.
    pub status: u16,
    /// Error Comment, when present.
    pub comment: Option<String>,
    /// Affected SOP Instance UID, when present.
    pub sop_instance: Option<String>,
}

fn text(value: &[u8]) -> String {
    String::from_utf8_lossy(value).trim_end_matches(['\0', ' ']).to_owned()
}

fn us(tag: u16, value: &[u8]) -> Result<u16, String> {
    match value {
        [a, b] => Ok(u16::from_le_bytes([*a, *b])),
        _ => Err(format!("(0000,{tag:04X}) has length {}, expected 2", value.len())),
    }
}

/// Parses a command set received from the peer.
pub fn parse_rsp(bytes: &[u8]) -> Result<StoreRsp, String> {
    let mut pos = 0usize;
    let (mut command_field, mut responding_to, mut status) = (None, None, None);
    let (mut comment, mut sop_instance) = (None, None);
    while pos < bytes.len() {
        let header = bytes
            .get(pos..pos + 8)
            .ok_or_else(|| format!("truncated element header at byte {pos}"))?;
        let group = u16::from_le_bytes([header[0], header[1]]);
        let element = u16::from_le_bytes([header[2], header[3]]);
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        pos += 8;
        if group != 0x0000 {
            return Err(format!("element ({group:04X},{element:04X}) outside the command group"));
        }
        let value = bytes
            .get(pos..pos.saturating_add(len))
            .ok_or_else(|| format!("(0000,{element:04X}) declares {len} bytes, {} left", bytes.len() - pos))?;
        pos += len;
        match element {
            0x0100 => command_field = Some(us(element, value)?),
            0x0120 => responding_to = Some(us(element, value)?),
            0x0900 => status = Some(us(element, value)?),
            0x0902 => comment = Some(text(value)).filter(|c| !c.is_empty()),
            0x1000 => sop_instance = Some(text(value)),
            _ => {}
        }
    }
    Ok(StoreRsp {
        command_field: command_field.ok_or("no Command Field (0000,0100)")?,
        responding_to: responding_to.ok_or("no Message ID Being Responded To (0000,0120)")?,
        status: status.ok_or("no Status (0000,0900)")?,
        comment,
        sop_instance,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rsp(message_id: u16, status: u16, comment: Option<&str>) -> Vec<u8> {
        let mut body = Vec::new();
        put_element(&mut body, 0x0002, &uid_value("1.2.3"));
        put_element(&mut body, 0x0100, &C_STORE_RSP.to_le_bytes());
        put_element(&mut body, 0x0120, &message_id.to_le_bytes());
        put_element(&mut body, 0x0800, &0x0101u16.to_le_bytes());
        put_element(&mut body, 0x0900, &status.to_le_bytes());
        if let Some(c) = comment {
            put_element(&mut body, 0x0902, c.as_bytes());
        }
        put_element(&mut body, 0x1000, &uid_value("1.2.3.4"));
        let mut out = Vec::new();
        put_element(&mut out, 0x0000, &(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn request_layout() {
        let rq = c_store_rq(7, "1.2.840.10008.5.1.4.1.1.4", "1.2.3");
        // Group length covers everything after itself.
        let gl = u32::from_le_bytes([rq[8], rq[9], rq[10], rq[11]]) as usize;
        assert_eq!(gl, rq.len() - 12);
        assert_eq!(rq.len() % 2, 0);
    }

    #[test]
    fn response_round_trip_and_hostile_lengths() {
        let r = parse_rsp(&rsp(7, 0xA700, Some("disk full "))).unwrap();
        assert_eq!(
            r,
            StoreRsp {
                command_field: C_STORE_RSP,
                responding_to: 7,
                status: 0xA700,
                comment: Some("disk full".into()),
                sop_instance: Some("1.2.3.4".into()),
            }
        );
        let mut bad = rsp(7, 0, None);
        // Declare 4 GiB for the first value.
        bad[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_rsp(&bad).unwrap_err().contains("declares"));
        assert!(parse_rsp(&rsp(1, 0, None)[..30]).is_err());
    }
}
