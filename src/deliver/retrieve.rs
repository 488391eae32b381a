//! Retrieval on demand: asks a configured PACS to send a study to this node (C-MOVE at study
//! level, Study Root, the node's own AE title as Move Destination). The instances then arrive
//! on the node's SCP like pushed ones and are analysed the same way; the PACS must know the
//! node's AE title, address and port. A study can also be found first by patient ID and study
//! date (C-FIND at study level).

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
use dicom_ul::pdu::{PDataValueType, Pdu};
use tracing::info;

use super::dimse::{self, C_MOVE_RSP, Rsp};
use super::fault::{DeliveryFault, FaultReason};
use super::files::{EXPLICIT_VR_LE, IMPLICIT_VR_LE};
use super::scu::{Ctx, associate, finish, reason_of, send_pdvs};
use super::settings::Destination;
use crate::dicom_build::is_uid;
use crate::dimse::{MAX_COMMAND_SET, pdu_name};

/// Study Root Query/Retrieve Information Model – MOVE.
pub const STUDY_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.2.2";
/// Study Root Query/Retrieve Information Model – FIND.
pub const STUDY_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";
/// Most studies one query may name: a query matching more is too broad for a retrieval.
pub const MAX_MATCHES: usize = 20;
/// Largest identifier read from a C-FIND-RSP.
const MAX_IDENTIFIER: usize = 64 * 1024;

/// What the PACS reported when the move ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Retrieved {
    /// Final status: 0x0000, or 0xB000 when some sub-operations failed.
    pub status: u16,
    /// Instances the PACS sent and the node acknowledged.
    pub completed: u16,
    /// Instances that failed.
    pub failed: u16,
    /// Instances stored with a warning.
    pub warning: u16,
}

/// Asks `source` to C-MOVE study `study_uid` to `node_ae` (this node) and waits for the final
/// response. `Err` when the association or the move failed as a whole.
pub async fn retrieve(source: &Destination, node_ae: &str, study_uid: &str) -> Result<Retrieved, DeliveryFault> {
    let (ctx, tls, calling_ae) = Ctx::open(source, node_ae)?;
    if !is_uid(study_uid) {
        return Err(ctx.fault(
            None,
            FaultReason::InvalidDestination(format!(
                "Study Instance UID {:?} is not a UID (digits and dots, at most 64 characters)",
                study_uid.chars().take(80).collect::<String>()
            )),
        ));
    }
    let key = (STUDY_ROOT_MOVE.to_owned(), IMPLICIT_VR_LE.to_owned());
    let mut assoc = associate(&ctx, &calling_ae, &[&key], tls.as_ref()).await?;
    let Some((pc_id, ts)) = assoc
        .presentation_contexts()
        .first()
        .map(|pc| (pc.id, pc.transfer_syntax.trim_end_matches('\0').to_owned()))
    else {
        finish(&ctx, assoc, true).await;
        return Err(ctx.fault(
            None,
            FaultReason::NoContextAtAll {
                proposed: STUDY_ROOT_MOVE.into(),
            },
        ));
    };
    let identifier = match identifier(study_uid, &ts) {
        Ok(bytes) => bytes,
        Err(reason) => {
            finish(&ctx, assoc, true).await;
            return Err(ctx.fault(None, reason));
        }
    };
    let during = "sending the C-MOVE-RQ";
    let command = dimse::c_move_rq(1, STUDY_ROOT_MOVE, node_ae);
    let sent = async {
        send_pdvs(&mut assoc, source.max_pdu, pc_id, PDataValueType::Command, &command).await?;
        send_pdvs(&mut assoc, source.max_pdu, pc_id, PDataValueType::Data, &identifier).await
    }
    .await;
    let result = match sent {
        Err(e) => Err(reason_of(e, during, &[])),
        Ok(()) => {
            let during = format!("waiting for the C-MOVE-RSP of study {study_uid}");
            responses(&mut assoc, C_MOVE_RSP, &during, None).await
        }
    };
    finish(&ctx, assoc, result.is_err()).await;
    let rsp = result.map_err(|reason| ctx.fault(None, reason))?;
    let retrieved = Retrieved {
        status: rsp.status,
        completed: rsp.completed.unwrap_or(0),
        failed: rsp.failed.unwrap_or(0),
        warning: rsp.warning.unwrap_or(0),
    };
    match rsp.status {
        0x0000 | 0xB000 => {
            info!(source = %source.name, %study_uid, completed = retrieved.completed, failed = retrieved.failed, "study retrieved");
            Ok(retrieved)
        }
        status => Err(ctx.fault(
            None,
            FaultReason::Move {
                status,
                meaning: move_meaning(status),
            },
        )),
    }
}

/// Finds the studies of patient `patient_id` on `study_date` (`YYYYMMDD`, or a DICOM date range
/// `YYYYMMDD-YYYYMMDD`) on `source` by C-FIND (Study Root, study level); returns their Study
/// Instance UIDs. Proposes Implicit VR Little Endian only, so the answers are read by the
/// bounded command-set walker and never by a general parser.
pub async fn find_studies(
    source: &Destination,
    node_ae: &str,
    patient_id: &str,
    study_date: &str,
) -> Result<Vec<String>, DeliveryFault> {
    let (ctx, tls, calling_ae) = Ctx::open(source, node_ae)?;
    let bad = |message: String| ctx.fault(None, FaultReason::InvalidDestination(message));
    if patient_id.is_empty()
        || patient_id.len() > 64
        || patient_id.contains(['\\', '*', '?'])
        || patient_id.chars().any(char::is_control)
    {
        return Err(bad(
            "the patient ID must be 1–64 characters without wildcards or backslashes".into(),
        ));
    }
    let date_ok = |d: &str| d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit());
    let range_ok = match study_date.split_once('-') {
        Some((a, b)) => date_ok(a) && date_ok(b),
        None => date_ok(study_date),
    };
    if !range_ok {
        return Err(bad(format!(
            "study date {:?} is not YYYYMMDD or YYYYMMDD-YYYYMMDD",
            study_date.chars().take(40).collect::<String>()
        )));
    }
    let key = (STUDY_ROOT_FIND.to_owned(), IMPLICIT_VR_LE.to_owned());
    let mut assoc = associate(&ctx, &calling_ae, &[&key], tls.as_ref()).await?;
    let accepted = assoc
        .presentation_contexts()
        .first()
        .map(|pc| (pc.id, pc.transfer_syntax.trim_end_matches('\0') == EXPLICIT_VR_LE));
    let Some((pc_id, explicit)) = accepted else {
        finish(&ctx, assoc, true).await;
        return Err(ctx.fault(
            None,
            FaultReason::NoContextAtAll {
                proposed: STUDY_ROOT_FIND.into(),
            },
        ));
    };
    let query = InMemDicomObject::from_element_iter([
        DataElement::new(tags::STUDY_DATE, VR::DA, PrimitiveValue::from(study_date)),
        DataElement::new(tags::QUERY_RETRIEVE_LEVEL, VR::CS, PrimitiveValue::from("STUDY")),
        DataElement::new(tags::PATIENT_ID, VR::LO, PrimitiveValue::from(patient_id)),
        DataElement::new(tags::STUDY_INSTANCE_UID, VR::UI, PrimitiveValue::Empty),
    ]);
    let ts = if explicit { EXPLICIT_VR_LE } else { IMPLICIT_VR_LE };
    let result = match encode(&query, ts) {
        Err(reason) => Err(reason),
        Ok(identifier) => {
            let command = dimse::c_find_rq(1, STUDY_ROOT_FIND);
            let sent = async {
                send_pdvs(&mut assoc, source.max_pdu, pc_id, PDataValueType::Command, &command).await?;
                send_pdvs(&mut assoc, source.max_pdu, pc_id, PDataValueType::Data, &identifier).await
            }
            .await;
            match sent {
                Err(e) => Err(reason_of(e, "sending the C-FIND-RQ", &[])),
                Ok(()) => matches(&mut assoc, explicit).await,
            }
        }
    };
    finish(&ctx, assoc, result.is_err()).await;
    let studies = result.map_err(|reason| ctx.fault(None, reason))?;
    info!(source = %source.name, matches = studies.len(), "studies found");
    Ok(studies)
}

/// Reads C-FIND-RSPs to message 1: the Study Instance UID of each pending answer's identifier
/// (in Explicit or Implicit VR Little Endian), until the final status.
async fn matches(
    assoc: &mut dicom_ul::association::client::AsyncClientAssociation<tokio::net::TcpStream>,
    explicit: bool,
) -> Result<Vec<String>, FaultReason> {
    let during = "waiting for the C-FIND-RSPs";
    let protocol = |detail: String| FaultReason::Protocol {
        during: during.into(),
        detail,
    };
    let mut studies = Vec::new();
    let mut on_match = |identifier: &[u8]| {
        let uid = study_uid_of(identifier, explicit)
            .map_err(|e| protocol(format!("identifier: {e}")))?
            .filter(|uid| is_uid(uid))
            .ok_or_else(|| protocol("a match without a valid Study Instance UID".into()))?;
        if !studies.contains(&uid) {
            studies.push(uid);
        }
        if studies.len() > MAX_MATCHES {
            return Err(protocol(format!(
                "more than {MAX_MATCHES} studies match: narrow the query"
            )));
        }
        Ok(())
    };
    let last = responses(assoc, dimse::C_FIND_RSP, during, Some(&mut on_match)).await?;
    match last.status {
        0x0000 => Ok(studies),
        status => Err(FaultReason::Move {
            status,
            meaning: "the C-FIND failed",
        }),
    }
}

/// What takes each identifier that follows a response.
type IdentifierSink<'a> = dyn FnMut(&[u8]) -> Result<(), FaultReason> + Send + 'a;

/// Reads the responses (`command_field`) to message 1 until the first that is not pending
/// (0xFF00, 0xFF01) and returns it. Command sets are bounded; the data set that follows a
/// response goes, bounded too, to `on_data`, or is skipped unread when there is none.
async fn responses(
    assoc: &mut dicom_ul::association::client::AsyncClientAssociation<tokio::net::TcpStream>,
    command_field: u16,
    during: &str,
    mut on_data: Option<&mut IdentifierSink<'_>>,
) -> Result<Rsp, FaultReason> {
    let protocol = |detail: String| FaultReason::Protocol {
        during: during.into(),
        detail,
    };
    let (mut command, mut data) = (Vec::new(), Vec::new());
    loop {
        let pdu = assoc.receive().await.map_err(|e| reason_of(e, during, &[]))?;
        let pdvs = match pdu {
            Pdu::PData { data } => data,
            Pdu::AbortRQ { .. } => return Err(FaultReason::Aborted { during: during.into() }),
            other => return Err(protocol(format!("unexpected {}", pdu_name(&other)))),
        };
        for pdv in pdvs {
            if pdv.value_type == PDataValueType::Data {
                let Some(on_data) = on_data.as_mut() else { continue };
                if data.len() + pdv.data.len() > MAX_IDENTIFIER {
                    return Err(protocol(format!("an identifier larger than {MAX_IDENTIFIER} bytes")));
                }
                data.extend_from_slice(&pdv.data);
                if pdv.is_last {
                    on_data(&data)?;
                    data.clear();
                }
                continue;
            }
            if command.len() + pdv.data.len() > MAX_COMMAND_SET {
                return Err(protocol(format!("command set larger than {MAX_COMMAND_SET} bytes")));
            }
            command.extend_from_slice(&pdv.data);
            if !pdv.is_last {
                continue;
            }
            let rsp = dimse::parse_rsp(&command).map_err(|e| protocol(e.0))?;
            command.clear();
            if rsp.command_field != command_field || rsp.responding_to != 1 {
                return Err(protocol(format!(
                    "got command 0x{:04X} responding to message {}",
                    rsp.command_field, rsp.responding_to
                )));
            }
            if !matches!(rsp.status, 0xFF00 | 0xFF01) {
                return Ok(rsp);
            }
        }
    }
}

/// The Study Instance UID (0020,000D) of a little-endian identifier, walked element by element
/// with every declared length checked against the bytes left; top-level elements only (a
/// sequence of undefined length ends the walk, the UID comes before any in a study answer).
/// Hand-written: a general parser would allocate what a hostile peer declares.
fn study_uid_of(bytes: &[u8], explicit: bool) -> Result<Option<String>, String> {
    let mut pos = 0usize;
    let u16_at = |p: usize| u16::from_le_bytes([bytes[p], bytes[p + 1]]);
    let u32_at = |p: usize| u32::from_le_bytes([bytes[p], bytes[p + 1], bytes[p + 2], bytes[p + 3]]);
    while bytes.len() - pos >= 8 {
        let (group, element) = (u16_at(pos), u16_at(pos + 2));
        let (header, length) = if explicit {
            let vr = [bytes[pos + 4], bytes[pos + 5]];
            if matches!(
                &vr,
                b"OB" | b"OD" | b"OF" | b"OL" | b"OV" | b"OW" | b"SQ" | b"SV" | b"UC" | b"UN" | b"UR" | b"UT" | b"UV"
            ) {
                if bytes.len() - pos < 12 {
                    return Err(format!("truncated element header at offset {pos}"));
                }
                (12, u32_at(pos + 8))
            } else {
                (8, u32::from(u16_at(pos + 6)))
            }
        } else {
            (8, u32_at(pos + 4))
        };
        if length == u32::MAX {
            return Ok(None);
        }
        let start = pos + header;
        let length = length as usize;
        if length > bytes.len() - start {
            return Err(format!(
                "element ({group:04X},{element:04X}) declares {length} bytes, {} remain",
                bytes.len() - start
            ));
        }
        if (group, element) == (0x0020, 0x000D) {
            return Ok(Some(crate::dimse::text(&bytes[start..start + length])));
        }
        pos = start + length;
    }
    Ok(None)
}

/// `obj` as a data set in transfer syntax `ts`.
fn encode(obj: &InMemDicomObject, ts: &str) -> Result<Vec<u8>, FaultReason> {
    let syntax = TransferSyntaxRegistry.get(ts).ok_or_else(|| FaultReason::Protocol {
        during: "encoding a query/retrieve identifier".into(),
        detail: format!("transfer syntax {ts} is unknown"),
    })?;
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, syntax)
        .map_err(|e| FaultReason::Protocol {
            during: "encoding a query/retrieve identifier".into(),
            detail: e.to_string(),
        })?;
    Ok(out)
}

/// The identifier: Query/Retrieve Level STUDY and the Study Instance UID, in `ts`.
fn identifier(study_uid: &str, ts: &str) -> Result<Vec<u8>, FaultReason> {
    let obj = InMemDicomObject::from_element_iter([
        DataElement::new(tags::QUERY_RETRIEVE_LEVEL, VR::CS, PrimitiveValue::from("STUDY")),
        DataElement::new(tags::STUDY_INSTANCE_UID, VR::UI, PrimitiveValue::from(study_uid)),
    ]);
    encode(&obj, ts)
}

/// What a final C-MOVE status means (PS3.4 C.4.2.1.5).
fn move_meaning(status: u16) -> &'static str {
    match status {
        0xA701 => "out of resources: unable to calculate the number of matches",
        0xA702 => "out of resources: unable to perform sub-operations",
        0xA801 => "move destination unknown: the PACS does not know this node's AE title",
        0xA900 => "identifier does not match SOP class",
        0xFE00 => "cancelled",
        s if s >> 12 == 0xC => "unable to process",
        _ => "failure",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn study_uids_are_read_from_either_syntax_and_lies_are_refused() {
        let query = InMemDicomObject::from_element_iter([
            DataElement::new(tags::STUDY_DATE, VR::DA, PrimitiveValue::from("20240101")),
            DataElement::new(tags::PATIENT_ID, VR::LO, PrimitiveValue::from("P1")),
            DataElement::new(tags::STUDY_INSTANCE_UID, VR::UI, PrimitiveValue::from("1.2.3")),
        ]);
        for (ts, explicit) in [(IMPLICIT_VR_LE, false), (EXPLICIT_VR_LE, true)] {
            let bytes = encode(&query, ts).unwrap();
            assert_eq!(study_uid_of(&bytes, explicit), Ok(Some("1.2.3".into())), "{ts}");
            let mut lying = bytes.clone();
            // (0008,0020)'s length now claims far more than there is.
            if explicit {
                lying[6] = 0xFF;
                lying[7] = 0x7F;
            } else {
                lying[4..8].copy_from_slice(&0x7FFF_FFFFu32.to_le_bytes());
            }
            assert!(study_uid_of(&lying, explicit).is_err(), "{ts}");
            assert_eq!(study_uid_of(&bytes[..4], explicit), Ok(None));
        }
    }

    #[test]
    fn the_identifier_and_the_request_are_well_formed() {
        let bytes = identifier("1.2.3.4", IMPLICIT_VR_LE).unwrap();
        // (0008,0052) CS "STUDY " then (0020,000D) UI "1.2.3.4\0", implicit VR little endian.
        assert_eq!(&bytes[..8], &[0x08, 0x00, 0x52, 0x00, 6, 0, 0, 0]);
        assert_eq!(&bytes[8..14], b"STUDY ");
        assert_eq!(&bytes[14..22], &[0x20, 0x00, 0x0D, 0x00, 8, 0, 0, 0]);
        assert_eq!(&bytes[22..], b"1.2.3.4\0");
        let command = dimse::c_move_rq(1, STUDY_ROOT_MOVE, "FCDNODE");
        let text = String::from_utf8_lossy(&command);
        assert!(text.contains("FCDNODE") && text.contains(STUDY_ROOT_MOVE));
        assert_eq!(
            move_meaning(0xA801),
            "move destination unknown: the PACS does not know this node's AE title"
        );
        assert_eq!(
            FaultReason::Move {
                status: 0xA702,
                meaning: ""
            }
            .kind(),
            super::super::FaultKind::Transient
        );
        assert_eq!(
            FaultReason::Move {
                status: 0xA801,
                meaning: ""
            }
            .kind(),
            super::super::FaultKind::Permanent
        );
    }
}
