//! Entry points for the fuzz targets under `fuzz/`: the SCP's handling of a connection's bytes
//! and its command-set parser, on the same functions a session calls, without a socket or a
//! sink. Not an API: hidden from the docs, shaped for the targets.

use std::net::{IpAddr, Ipv4Addr};
use std::task::{Poll, Waker};

use dicom_ul::pdu::Pdu;

use super::link::Link;
use super::negotiate::{Negotiated, Offer, negotiate};
use super::reassembly::{Message, Reassembly};
use super::{
    Action, Context, abstract_syntaxes, accepted_contexts, action, check_store, echo_sop_class, read_associate_rq,
    response_pdus, sink_end,
};
use crate::ingest::StoreOutcome;
use crate::ingest::config::ScpConfig;
use crate::ingest::dimse::{RESPONSE_BIT, Response, STATUS_CANNOT_UNDERSTAND, STATUS_SUCCESS, parse_command};
use crate::ingest::limits::check_data_set;

/// How a replayed connection went.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replay {
    /// The A-ASSOCIATE-RQ was read and accepted.
    pub associated: bool,
    /// DIMSE messages completed and answered.
    pub messages: usize,
    /// Why the connection ended.
    pub end: String,
}

/// Serves one connection whose peer sends `bytes` and closes, as `handle_connection` and
/// `Session::run` would: the A-ASSOCIATE-RQ within `config.max_associate_pdu_bytes`, the
/// negotiation (AE checks as configured), then P-DATA PDUs within `config.max_pdu` reassembled
/// with data sets capped at `max_instance_bytes`, each message decided and its response encoded.
/// A C-STORE's data set goes through the pre-parse (`check_data_set`) in place of the sink.
pub fn replay(bytes: &[u8], config: &ScpConfig, max_instance_bytes: usize) -> Replay {
    let mut replay = Replay::default();
    let mut link = Link::new(Box::new(std::io::Cursor::new(bytes.to_vec())));
    let rq = match ready(read_associate_rq(&mut link, config.max_associate_pdu_bytes)) {
        Ok(rq) => rq,
        Err(handshake) => {
            replay.end = format!("{handshake:?}");
            return replay;
        }
    };
    let abstract_syntaxes = abstract_syntaxes(config.other_storage);
    let offer = Offer {
        config,
        allowed: &[],
        abstract_syntaxes: &abstract_syntaxes,
    };
    let Negotiated {
        ac,
        contexts,
        peer_max_pdu,
    } = match negotiate(&rq, &offer, IpAddr::V4(Ipv4Addr::LOCALHOST)) {
        Ok(negotiated) => negotiated,
        Err(rejection) => {
            replay.end = format!("rejected: {}", rejection.why);
            encode(&Pdu::AssociationRJ(rejection.rj));
            return replay;
        }
    };
    encode(&Pdu::AssociationAC(ac));
    replay.associated = true;
    let mut reassembly = Reassembly::new(accepted_contexts(&contexts), max_instance_bytes, std::env::temp_dir());
    loop {
        let pdu = match ready(link.read_pdu(config.max_pdu)) {
            Ok(pdu) => pdu,
            Err(e) => {
                replay.end = e.to_string();
                return replay;
            }
        };
        let Pdu::PData { data } = pdu else {
            // Release, abort or anything else: the session ends here.
            replay.end = crate::dimse::pdu_name(&pdu).to_owned();
            return replay;
        };
        for pdv in data {
            let fed = match reassembly.feed(pdv) {
                Ok(fed) => fed,
                Err(abort) => {
                    replay.end = abort.why;
                    return replay;
                }
            };
            if let Some(message) = fed.message {
                answer(message, config, max_instance_bytes, peer_max_pdu);
                replay.messages += 1;
            }
        }
    }
}

/// Decides a complete message as `Session::on_message` does and encodes the response PDUs.
fn answer(message: Message, config: &ScpConfig, max_instance_bytes: usize, peer_max_pdu: u32) {
    let Message {
        pc,
        context,
        command,
        data,
    } = message;
    let (sop_class, status, comment) = match action(command.field, data) {
        Action::Echo => (echo_sop_class(&command).to_owned(), STATUS_SUCCESS, None),
        Action::Ignore => return,
        Action::Store(data) => {
            let end = check_store(&context, &command.affected_sop_class, &data, config)
                .unwrap_or_else(|| sink_end(pre_parse(&context, &data.bytes, max_instance_bytes)));
            let (status, comment) = end.response();
            (command.affected_sop_class.clone(), status, comment)
        }
        Action::Refuse(refusal) => (
            command.affected_sop_class.clone(),
            refusal.status(),
            Some(refusal.why().to_owned()),
        ),
    };
    let bytes = Response {
        field: command.field | RESPONSE_BIT,
        message_id_responded: command.message_id,
        sop_class: &sop_class,
        sop_instance: &command.affected_sop_instance,
        status,
        error_comment: comment.as_deref(),
    }
    .encode();
    for pdu in response_pdus(pc, &bytes, peer_max_pdu) {
        encode(&pdu);
    }
}

fn pre_parse(
    context: &Context,
    dataset: &crate::ingest::DataSetBuffer,
    max_instance_bytes: usize,
) -> Result<StoreOutcome, crate::ingest::MalformedDataSet> {
    check_data_set(dataset, &context.transfer_syntax, max_instance_bytes).map(|()| StoreOutcome::Stored)
}

/// Encodes a PDU the SCP would send (failures are the peer's values, not a crash).
fn encode(pdu: &Pdu) {
    let _ = dicom_ul::write_pdu(&mut Vec::new(), pdu);
}

/// Runs a link future to completion: over an in-memory stream it never waits, so one poll
/// settles it. A future that did wait would be a bug in the replay, hence the panic.
fn ready<F: Future>(future: F) -> F::Output {
    let mut cx = std::task::Context::from_waker(Waker::noop());
    match std::pin::pin!(future).poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a read over an in-memory stream waited"),
    }
}

/// What [`dimse_command`] read from a command set, and the response the SCP would encode to it.
#[derive(Debug)]
pub struct ParsedCommand {
    pub field: u16,
    pub message_id: u16,
    pub affected_sop_class: String,
    pub affected_sop_instance: String,
    pub has_data_set: bool,
    /// A failure response naming the same SOP class and instance, with an Error Comment.
    pub response: Vec<u8>,
}

/// Parses a command set as the SCP does and encodes a response to it.
pub fn dimse_command(bytes: &[u8]) -> Result<ParsedCommand, String> {
    let command = parse_command(bytes).map_err(|e| e.to_string())?;
    let comment = format!("cannot store {}", command.affected_sop_instance);
    let response = Response {
        field: command.field | RESPONSE_BIT,
        message_id_responded: command.message_id,
        sop_class: &command.affected_sop_class,
        sop_instance: &command.affected_sop_instance,
        status: STATUS_CANNOT_UNDERSTAND,
        error_comment: Some(&comment),
    }
    .encode();
    Ok(ParsedCommand {
        field: command.field,
        message_id: command.message_id,
        affected_sop_class: command.affected_sop_class,
        affected_sop_instance: command.affected_sop_instance,
        has_data_set: command.has_data_set,
        response,
    })
}

#[cfg(test)]
mod tests {
    use dicom_ul::pdu::{AssociationRQ, PDataValue, PDataValueType, PresentationContextProposed, UserVariableItem};

    use super::*;
    use crate::dimse::{CommandWriter, NO_DATA_SET};
    use crate::ingest::dimse::{C_ECHO_RQ, C_STORE_RQ};
    use crate::ingest::syntax::{EXPLICIT_VR_LE, IMPLICIT_VR_LE, VERIFICATION};

    const MR: &str = "1.2.840.10008.5.1.4.1.1.4";

    fn p_data(pc: u8, value_type: PDataValueType, data: Vec<u8>) -> Pdu {
        Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc,
                value_type,
                is_last: true,
                data,
            }],
        }
    }

    fn command(field: u16, sop_class: &str, with_data: bool) -> Vec<u8> {
        CommandWriter::new()
            .uid(0x0002, sop_class)
            .us(0x0100, field)
            .us(0x0110, 1)
            .us(0x0800, if with_data { 0 } else { NO_DATA_SET })
            .uid(0x1000, "1.2.3")
            .finish()
    }

    /// The replay reaches what a fuzz target needs it to: negotiation, C-ECHO, C-STORE with its
    /// pre-parse, release.
    #[test]
    fn a_replayed_echo_and_store_are_answered() {
        let rq = Pdu::AssociationRQ(AssociationRQ {
            protocol_version: 1,
            calling_ae_title: "SCU".into(),
            called_ae_title: "FCDNODE".into(),
            application_context_name: "1.2.840.10008.3.1.1.1".into(),
            presentation_contexts: vec![
                PresentationContextProposed {
                    id: 1,
                    abstract_syntax: VERIFICATION.into(),
                    transfer_syntaxes: vec![IMPLICIT_VR_LE.into()],
                },
                PresentationContextProposed {
                    id: 3,
                    abstract_syntax: MR.into(),
                    transfer_syntaxes: vec![EXPLICIT_VR_LE.into()],
                },
            ],
            user_variables: vec![UserVariableItem::MaxLength(16384)],
        });
        let dataset = b"\x08\x00\x18\x00UI\x04\x001.2\0".to_vec();
        let mut bytes = Vec::new();
        for pdu in [
            rq,
            p_data(1, PDataValueType::Command, command(C_ECHO_RQ, VERIFICATION, false)),
            p_data(3, PDataValueType::Command, command(C_STORE_RQ, MR, true)),
            p_data(3, PDataValueType::Data, dataset),
            Pdu::ReleaseRQ,
        ] {
            dicom_ul::write_pdu(&mut bytes, &pdu).unwrap();
        }
        let replay = replay(&bytes, &ScpConfig::default(), 1 << 20);
        assert!(replay.associated, "{replay:?}");
        assert_eq!(replay.messages, 2, "{replay:?}");
        assert!(!replay.end.contains("P-DATA"), "{replay:?}");
        // Cut short: the link reports the close, nothing panics.
        let cut = super::replay(&bytes[..bytes.len() - 20], &ScpConfig::default(), 1 << 20);
        assert_eq!(cut.messages, 1, "{cut:?}");
    }

    #[test]
    fn a_parsed_command_answers_in_kind() {
        let parsed = dimse_command(&command(C_STORE_RQ, MR, true)).unwrap();
        assert_eq!(
            (parsed.field, parsed.affected_sop_instance.as_str()),
            (C_STORE_RQ, "1.2.3")
        );
        let response = dimse_command(&parsed.response).unwrap();
        assert_eq!(response.field, C_STORE_RQ | RESPONSE_BIT);
        assert_eq!(response.affected_sop_class, MR);
    }
}
