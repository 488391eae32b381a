//! Retrieval on demand: asks a configured PACS to send a study to this node (C-MOVE at study
//! level, Study Root, the node's own AE title as Move Destination). The instances then arrive
//! on the node's SCP like pushed ones and are analysed the same way; the PACS must know the
//! node's AE title, address and port.

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
use dicom_ul::pdu::{PDataValueType, Pdu};
use tracing::info;

use super::dimse::{self, C_MOVE_RSP, MoveRsp};
use super::fault::{DeliveryFault, FaultReason};
use super::files::IMPLICIT_VR_LE;
use super::scu::{Ctx, associate, finish, reason_of, send_pdvs};
use super::settings::{Destination, check_ae_title};
use crate::dicom_build::is_uid;
use crate::dimse::{MAX_COMMAND_SET, pdu_name};

/// Study Root Query/Retrieve Information Model – MOVE.
pub const STUDY_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.2.2";

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
    let ctx = Ctx {
        dest: source,
        peer: source.peer(),
    };
    if !is_uid(study_uid) {
        return Err(ctx.fault(
            None,
            FaultReason::InvalidDestination(format!(
                "Study Instance UID {:?} is not a UID (digits and dots, at most 64 characters)",
                study_uid.chars().take(80).collect::<String>()
            )),
        ));
    }
    let tls = source
        .prepare()
        .map_err(|e| ctx.fault(None, FaultReason::InvalidDestination(e.to_string())))?;
    let calling_ae = source.calling_ae(node_ae).to_owned();
    check_ae_title(&calling_ae)
        .map_err(|m| ctx.fault(None, FaultReason::InvalidDestination(format!("calling AE title: {m}"))))?;
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
        Ok(()) => final_response(&mut assoc, study_uid).await,
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

/// The identifier: Query/Retrieve Level STUDY and the Study Instance UID, in `ts`.
fn identifier(study_uid: &str, ts: &str) -> Result<Vec<u8>, FaultReason> {
    let syntax = TransferSyntaxRegistry.get(ts).ok_or_else(|| FaultReason::Protocol {
        during: "encoding the C-MOVE identifier".into(),
        detail: format!("accepted transfer syntax {ts} is unknown"),
    })?;
    let obj = InMemDicomObject::from_element_iter([
        DataElement::new(tags::QUERY_RETRIEVE_LEVEL, VR::CS, PrimitiveValue::from("STUDY")),
        DataElement::new(tags::STUDY_INSTANCE_UID, VR::UI, PrimitiveValue::from(study_uid)),
    ]);
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, syntax)
        .map_err(|e| FaultReason::Protocol {
            during: "encoding the C-MOVE identifier".into(),
            detail: e.to_string(),
        })?;
    Ok(out)
}

/// Reads C-MOVE-RSPs to message 1 until one is not pending; skips identifiers that follow.
async fn final_response(
    assoc: &mut dicom_ul::association::client::AsyncClientAssociation<tokio::net::TcpStream>,
    study_uid: &str,
) -> Result<MoveRsp, FaultReason> {
    let during = || format!("waiting for the C-MOVE-RSP of study {study_uid}");
    let mut command = Vec::new();
    loop {
        let pdu = assoc.receive().await.map_err(|e| reason_of(e, &during(), &[]))?;
        let data = match pdu {
            Pdu::PData { data } => data,
            Pdu::AbortRQ { .. } => return Err(FaultReason::Aborted { during: during() }),
            other => {
                return Err(FaultReason::Protocol {
                    during: during(),
                    detail: format!("unexpected {}", pdu_name(&other)),
                });
            }
        };
        for pdv in data {
            if pdv.value_type != PDataValueType::Command {
                continue;
            }
            if command.len() + pdv.data.len() > MAX_COMMAND_SET {
                return Err(FaultReason::Protocol {
                    during: during(),
                    detail: format!("command set larger than {MAX_COMMAND_SET} bytes"),
                });
            }
            command.extend_from_slice(&pdv.data);
            if !pdv.is_last {
                continue;
            }
            let rsp = dimse::parse_move_rsp(&command).map_err(|e| FaultReason::Protocol {
                during: during(),
                detail: e.0,
            })?;
            command.clear();
            if rsp.command_field != C_MOVE_RSP || rsp.responding_to != 1 {
                return Err(FaultReason::Protocol {
                    during: during(),
                    detail: format!(
                        "got command 0x{:04X} responding to message {}",
                        rsp.command_field, rsp.responding_to
                    ),
                });
            }
            if rsp.status != 0xFF00 {
                return Ok(rsp);
            }
        }
    }
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
