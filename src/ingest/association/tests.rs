//! The association's decisions without a network (AE checks, contexts, reassembly, what a
//! message leads to, C-STORE statuses, response fragments), then whole associations on a
//! loopback socket against dicom-ul's client.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use dicom_ul::association::Error as UlError;
use dicom_ul::association::client::{AsyncClientAssociation, ClientAssociationOptions};
use dicom_ul::pdu::{AssociationRJServiceProviderASCEReason, PresentationContextProposed, UserVariableItem};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::reassembly::Fed;
use super::*;
use crate::dimse::{CommandWriter, NO_DATA_SET, elements, us};
use crate::ingest::IngestStatsSnapshot;
use crate::ingest::admission::Pending;
use crate::ingest::dimse::MAX_COMMAND_SET;

const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
const IMPLICIT: &str = "1.2.840.10008.1.2";
/// C-FIND-RQ: an operation the SCP does not offer.
const C_FIND_RQ: u16 = 0x0020;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn request(field: u16, sop_class: &str, sop_instance: &str, with_data: bool) -> Vec<u8> {
    let mut w = CommandWriter::new();
    if !sop_class.is_empty() {
        w = w.uid(0x0002, sop_class);
    }
    w = w
        .us(0x0100, field)
        .us(0x0110, 7)
        .us(0x0800, if with_data { 0x0000 } else { NO_DATA_SET });
    if !sop_instance.is_empty() {
        w = w.uid(0x1000, sop_instance);
    }
    w.finish()
}

fn pdv(pc: u8, value_type: PDataValueType, is_last: bool, data: &[u8]) -> PDataValue {
    PDataValue {
        presentation_context_id: pc,
        value_type,
        is_last,
        data: data.to_vec(),
    }
}

fn command_pdv(pc: u8, is_last: bool, data: &[u8]) -> PDataValue {
    pdv(pc, PDataValueType::Command, is_last, data)
}

fn data_pdv(pc: u8, is_last: bool, data: &[u8]) -> PDataValue {
    pdv(pc, PDataValueType::Data, is_last, data)
}

fn context(abstract_syntax: &str) -> Context {
    Context {
        abstract_syntax: abstract_syntax.into(),
        transfer_syntax: IMPLICIT.into(),
    }
}

/// Contexts 1 (Verification) and 3 (MR), data sets capped at `cap` bytes.
fn reassembly(cap: usize) -> Reassembly {
    let contexts = HashMap::from([(1, context(VERIFICATION)), (3, context(MR))]);
    Reassembly::new(contexts, cap, std::env::temp_dir())
}

fn data_set(bytes: &[u8], over_cap: bool) -> DataSet {
    DataSet {
        bytes: if over_cap { Vec::new() } else { bytes.to_vec() }.into(),
        total: bytes.len() as u64,
        dropped: over_cap.then_some(Dropped::OverCap),
    }
}

fn aborted(result: Result<Fed, Abort>) -> Abort {
    match result {
        Ok(fed) => panic!("expected an abort, got {fed:?}"),
        Err(a) => a,
    }
}

// ---------------------------------------------------------------------------------------------
// Negotiation

fn proposed(id: u8, abstract_syntax: &str, transfer_syntaxes: &[&str]) -> PresentationContextProposed {
    PresentationContextProposed {
        id,
        abstract_syntax: abstract_syntax.into(),
        transfer_syntaxes: transfer_syntaxes.iter().map(|t| t.to_string()).collect(),
    }
}

fn associate_rq(presentation_contexts: Vec<PresentationContextProposed>, max_length: Option<u32>) -> AssociationRQ {
    AssociationRQ {
        protocol_version: 1,
        calling_ae_title: "SCU".into(),
        called_ae_title: "FCDNODE".into(),
        application_context_name: "1.2.840.10008.3.1.1.1\0".into(),
        presentation_contexts,
        user_variables: max_length.map(UserVariableItem::MaxLength).into_iter().collect(),
    }
}

#[test]
fn negotiation_picks_the_peers_first_decodable_syntax_per_offered_context() {
    let config = ScpConfig::default();
    let syntaxes = abstract_syntaxes(OtherStorage::Refuse);
    let offer = Offer {
        config: &config,
        allowed: &[],
        abstract_syntaxes: &syntaxes,
    };
    let rq = associate_rq(
        vec![
            // Big endian (refused) first, then JPEG-LS: the peer's order decides among ours.
            proposed(1, MR, &["1.2.840.10008.1.2.2", "1.2.840.10008.1.2.4.80\0", IMPLICIT]),
            proposed(3, CT, &[IMPLICIT]),
            proposed(5, "1.2.840.10008.5.1.4.1.1.4.1\0", &["1.2.840.10008.1.2.4.51"]),
            proposed(7, VERIFICATION, &[IMPLICIT]),
        ],
        Some(0),
    );
    let n = negotiate(&rq, &offer, ip("127.0.0.1")).unwrap();
    let results: Vec<(u8, PresentationContextResultReason, &str)> = n
        .contexts
        .iter()
        .map(|pc| (pc.id, pc.reason.clone(), pc.transfer_syntax.as_str()))
        .collect();
    assert_eq!(
        results,
        vec![
            (1, PresentationContextResultReason::Acceptance, "1.2.840.10008.1.2.4.80"),
            (3, PresentationContextResultReason::AbstractSyntaxNotSupported, IMPLICIT),
            (
                5,
                PresentationContextResultReason::TransferSyntaxesNotSupported,
                IMPLICIT
            ),
            (7, PresentationContextResultReason::Acceptance, IMPLICIT),
        ]
    );
    assert_eq!(
        n.contexts[2].abstract_syntax, "1.2.840.10008.5.1.4.1.1.4.1",
        "UIDs are trimmed"
    );
    assert_eq!(n.peer_max_pdu, dicom_ul::pdu::MAXIMUM_PDU_SIZE, "0 means no limit");
    assert_eq!(n.ac.presentation_contexts.len(), 4);
    assert_eq!(
        (n.ac.calling_ae_title.as_str(), n.ac.called_ae_title.as_str()),
        ("SCU", "FCDNODE")
    );
    assert!(
        n.ac.user_variables
            .contains(&UserVariableItem::MaxLength(config.max_pdu))
    );
    let without = negotiate(&associate_rq(vec![], None), &offer, ip("127.0.0.1")).unwrap();
    assert_eq!(without.peer_max_pdu, dicom_ul::pdu::DEFAULT_MAX_PDU);
}

#[test]
fn negotiation_rejects_version_context_name_and_titles_permanently() {
    let config = ScpConfig::default();
    let allowed = vec![AllowedCalling::parse("SCU@10.0.0.5").unwrap()];
    let syntaxes = abstract_syntaxes(OtherStorage::Refuse);
    let offer = Offer {
        config: &config,
        allowed: &allowed,
        abstract_syntaxes: &syntaxes,
    };
    let from = ip("10.0.0.5");
    let good = associate_rq(vec![proposed(1, VERIFICATION, &[IMPLICIT])], Some(16384));
    assert!(negotiate(&good, &offer, from).is_ok());
    let source = |rq: &AssociationRQ, peer| {
        let rejection = negotiate(rq, &offer, peer).unwrap_err();
        assert_eq!(rejection.rj.result, AssociationRJResult::Permanent);
        rejection.rj.source
    };
    let version = AssociationRQ {
        protocol_version: 2,
        ..good.clone()
    };
    assert_eq!(
        source(&version, from),
        AssociationRJSource::ServiceProviderASCE(AssociationRJServiceProviderASCEReason::ProtocolVersionNotSupported)
    );
    assert!(
        negotiate(
            &AssociationRQ {
                protocol_version: 3,
                ..good.clone()
            },
            &offer,
            from
        )
        .is_ok(),
        "only bit 0 is tested"
    );
    let context = AssociationRQ {
        application_context_name: "1.2.3".into(),
        ..good.clone()
    };
    assert_eq!(
        source(&context, from),
        AssociationRJSource::ServiceUser(AssociationRJServiceUserReason::ApplicationContextNameNotSupported)
    );
    let called = AssociationRQ {
        called_ae_title: "OTHER".into(),
        ..good.clone()
    };
    assert_eq!(
        source(&called, from),
        AssociationRJSource::ServiceUser(AssociationRJServiceUserReason::CalledAETitleNotRecognized)
    );
    assert_eq!(
        source(&good, ip("10.0.0.6")),
        AssociationRJSource::ServiceUser(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
    );
}

#[test]
fn the_called_ae_title_is_checked_first_and_only_when_asked() {
    let allowed = vec![AllowedCalling::parse("PACS").unwrap()];
    let local = ip("127.0.0.1");
    assert_eq!(
        check_ae_titles(true, &allowed, "FCDNODE", "STRANGER", "OTHER", local),
        Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized)
    );
    assert_eq!(
        check_ae_titles(true, &allowed, "FCDNODE", "PACS", "OTHER", local),
        Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized)
    );
    assert_eq!(
        check_ae_titles(false, &allowed, "FCDNODE", "PACS", "OTHER", local),
        Ok(())
    );
    assert_eq!(
        check_ae_titles(true, &allowed, "FCDNODE", "PACS", "FCDNODE", local),
        Ok(())
    );
    assert_eq!(
        check_ae_titles(false, &allowed, "FCDNODE", "STRANGER", "OTHER", local),
        Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
    );
}

#[test]
fn the_allow_list_binds_calling_titles_to_hosts_and_empty_means_anyone() {
    let allowed = vec![
        AllowedCalling::parse("PACS@10.0.0.5").unwrap(),
        AllowedCalling::parse("MODALITY").unwrap(),
    ];
    let check = |calling: &str, peer: &str| check_ae_titles(true, &allowed, "FCDNODE", calling, "FCDNODE", ip(peer));
    assert_eq!(check("PACS", "10.0.0.5"), Ok(()));
    assert_eq!(check("PACS", "::ffff:10.0.0.5"), Ok(()));
    assert_eq!(
        check("PACS", "10.0.0.6"),
        Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
    );
    assert_eq!(check("MODALITY", "192.168.1.1"), Ok(()));
    assert_eq!(
        check("modality", "192.168.1.1"),
        Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
    );
    assert_eq!(
        check_ae_titles(true, &[], "FCDNODE", "ANYONE", "FCDNODE", ip("203.0.113.9")),
        Ok(())
    );
}

#[test]
fn other_storage_classes_are_offered_unless_refused() {
    let refuse = abstract_syntaxes(OtherStorage::Refuse);
    assert_eq!(refuse[0], VERIFICATION);
    assert_eq!(refuse.len(), 1 + MR_STORAGE_CLASSES.len());
    assert!(MR_STORAGE_CLASSES.iter().all(|uid| refuse.contains(uid)));
    assert!(!refuse.contains(&CT));
    for policy in [OtherStorage::Discard, OtherStorage::Store] {
        let offered = abstract_syntaxes(policy);
        assert_eq!(
            offered.len(),
            1 + MR_STORAGE_CLASSES.len() + OTHER_STORAGE_CLASSES.len(),
            "{policy:?}"
        );
        assert!(
            OTHER_STORAGE_CLASSES.iter().all(|uid| offered.contains(uid)),
            "{policy:?}"
        );
    }
}

#[test]
fn only_accepted_contexts_are_kept_with_their_uids_trimmed() {
    let negotiated = |id: u8, reason, abstract_syntax: &str, transfer_syntax: &str| PresentationContextNegotiated {
        id,
        reason,
        abstract_syntax: abstract_syntax.into(),
        transfer_syntax: transfer_syntax.into(),
    };
    let contexts = accepted_contexts(&[
        negotiated(
            1,
            PresentationContextResultReason::Acceptance,
            "1.2.840.10008.1.1\0",
            "1.2.840.10008.1.2\0",
        ),
        negotiated(
            3,
            PresentationContextResultReason::AbstractSyntaxNotSupported,
            CT,
            IMPLICIT,
        ),
        negotiated(
            5,
            PresentationContextResultReason::Acceptance,
            MR,
            "1.2.840.10008.1.2.1 ",
        ),
        negotiated(
            7,
            PresentationContextResultReason::TransferSyntaxesNotSupported,
            MR,
            IMPLICIT,
        ),
    ]);
    assert_eq!(contexts.len(), 2);
    assert_eq!(contexts[&1], context(VERIFICATION));
    assert_eq!(contexts[&5].abstract_syntax, MR);
    assert_eq!(contexts[&5].transfer_syntax, "1.2.840.10008.1.2.1");
    assert!(!contexts.contains_key(&3) && !contexts.contains_key(&7));
}

// ---------------------------------------------------------------------------------------------
// Reassembly

#[test]
fn a_command_in_fragments_completes_on_the_last_one() {
    let mut r = reassembly(1024);
    let bytes = request(C_ECHO_RQ, VERIFICATION, "", false);
    let (head, tail) = bytes.split_at(10);
    let first = r.feed(command_pdv(1, false, head)).unwrap();
    assert!(first.message.is_none());
    assert!(!r.is_idle());
    let second = r.feed(command_pdv(1, true, tail)).unwrap();
    assert_eq!(second.data_bytes, 0);
    let message = second.message.expect("complete");
    assert_eq!((message.pc, message.command.field), (1, C_ECHO_RQ));
    assert_eq!(message.context, context(VERIFICATION));
    assert!(message.data.is_none());
    assert!(r.is_idle());
    // The next message starts afresh.
    let again = r.feed(command_pdv(1, true, &bytes)).unwrap();
    assert_eq!(again.message.unwrap().command.field, C_ECHO_RQ);
}

#[test]
fn command_sets_are_capped_at_64_kib_across_fragments() {
    let mut r = reassembly(1024);
    let half = vec![0u8; MAX_COMMAND_SET / 2];
    r.feed(command_pdv(1, false, &half)).unwrap();
    r.feed(command_pdv(1, false, &half))
        .expect("exactly the cap is still taken");
    let a = aborted(r.feed(command_pdv(1, false, &[0])));
    assert_eq!(a.reason, AbortRQServiceProviderReason::InvalidPduParameter);
    assert!(a.why.contains("command set longer than 65536 bytes"), "{}", a.why);

    let mut r = reassembly(1024);
    let a = aborted(r.feed(command_pdv(1, true, &vec![0u8; MAX_COMMAND_SET + 1])));
    assert_eq!(a.reason, AbortRQServiceProviderReason::InvalidPduParameter);
}

#[test]
fn malformed_and_response_commands_abort() {
    let mut r = reassembly(1024);
    let a = aborted(r.feed(command_pdv(1, true, &[1, 2, 3])));
    assert_eq!(a.reason, AbortRQServiceProviderReason::InvalidPduParameter);
    assert!(a.why.contains("malformed command set"), "{}", a.why);

    let mut r = reassembly(1024);
    let response = request(C_ECHO_RQ | RESPONSE_BIT, VERIFICATION, "", false);
    let a = aborted(r.feed(command_pdv(1, true, &response)));
    assert_eq!(a.reason, AbortRQServiceProviderReason::UnexpectedPduParameter);
    assert!(a.why.contains("0x8030"), "{}", a.why);
}

#[test]
fn fragments_out_of_turn_or_off_context_abort() {
    let store = request(C_STORE_RQ, MR, "1.2.3", true);
    let cases: Vec<(Vec<PDataValue>, &str)> = vec![
        (vec![command_pdv(9, true, &store)], "context 9, which was not accepted"),
        (
            vec![data_pdv(3, true, &[0; 4])],
            "Data fragment on context 3 while expecting a command",
        ),
        (
            vec![command_pdv(3, false, &store[..8]), command_pdv(1, true, &store[8..])],
            "Command fragment on context 1 while expecting command fragments on context 3",
        ),
        (
            vec![command_pdv(3, false, &store[..8]), data_pdv(3, true, &[0; 4])],
            "Data fragment on context 3 while expecting command fragments on context 3",
        ),
        (
            vec![command_pdv(3, true, &store), data_pdv(1, true, &[0; 4])],
            "Data fragment on context 1 while expecting data fragments on context 3",
        ),
        (
            vec![command_pdv(3, true, &store), command_pdv(3, true, &store)],
            "Command fragment on context 3 while expecting data fragments on context 3",
        ),
    ];
    for (pdvs, expected) in cases {
        let mut r = reassembly(1024);
        let n = pdvs.len();
        let mut result = None;
        for (i, pdv) in pdvs.into_iter().enumerate() {
            let fed = r.feed(pdv);
            if i + 1 < n {
                assert!(fed.is_ok(), "{expected}: fragment {i} refused");
            } else {
                result = Some(fed);
            }
        }
        let a = aborted(result.unwrap());
        assert_eq!(
            a.reason,
            AbortRQServiceProviderReason::UnexpectedPduParameter,
            "{expected}"
        );
        assert!(a.why.contains(expected), "{expected:?} not in {:?}", a.why);
    }
}

#[test]
fn a_data_set_is_reassembled_on_its_command_context_and_counted() {
    let mut r = reassembly(1024);
    let fed = r
        .feed(command_pdv(3, true, &request(C_STORE_RQ, MR, "1.2.3", true)))
        .unwrap();
    assert!(fed.message.is_none(), "the data set is still to come");
    let first = r.feed(data_pdv(3, false, b"abcd")).unwrap();
    assert_eq!(first.data_bytes, 4);
    assert!(first.message.is_none() && first.dropped.is_none());
    let last = r.feed(data_pdv(3, true, b"efg")).unwrap();
    assert_eq!(last.data_bytes, 3);
    let message = last.message.expect("complete");
    assert_eq!(message.pc, 3);
    assert_eq!(message.context, context(MR));
    assert_eq!(message.command.affected_sop_instance, "1.2.3");
    let data = message.data.expect("a data set");
    assert_eq!(data.bytes.in_memory(), Some(b"abcdefg".as_slice()));
    assert_eq!(data.total, 7);
    assert!(data.dropped.is_none());
    assert!(r.is_idle());
}

#[test]
fn a_data_set_at_the_cap_is_kept_and_one_past_it_is_drained() {
    let mut r = reassembly(10);
    r.feed(command_pdv(3, true, &request(C_STORE_RQ, MR, "1.2.3", true)))
        .unwrap();
    r.feed(data_pdv(3, false, &[1; 6])).unwrap();
    let data = r
        .feed(data_pdv(3, true, &[2; 4]))
        .unwrap()
        .message
        .unwrap()
        .data
        .unwrap();
    assert_eq!((data.bytes.len(), data.total, data.dropped), (10, 10, None));

    let mut r = reassembly(10);
    r.feed(command_pdv(3, true, &request(C_STORE_RQ, MR, "1.2.3", true)))
        .unwrap();
    let first = r.feed(data_pdv(3, false, &[1; 6])).unwrap();
    assert!(first.dropped.is_none());
    let crossing = r.feed(data_pdv(3, false, &[2; 6])).unwrap();
    assert_eq!(crossing.dropped, Some(("1.2.3".to_owned(), Dropped::OverCap)));
    assert_eq!(crossing.data_bytes, 6, "dropped bytes still count as received");
    let last = r.feed(data_pdv(3, true, &[3; 5])).unwrap();
    assert!(last.dropped.is_none(), "reported once");
    assert_eq!(last.data_bytes, 5);
    let data = last.message.unwrap().data.unwrap();
    assert_eq!(data.dropped, Some(Dropped::OverCap));
    assert!(data.bytes.is_empty(), "nothing past the cap is kept");
    assert_eq!(data.total, 17);
}

/// A data set past the memory bound streams into an unnamed file in the sink's staging
/// directory, every byte kept in order, and nothing is left there once it is dropped.
#[test]
fn a_large_data_set_streams_to_the_staging_directory() {
    let staging = tempfile::tempdir().unwrap();
    let contexts = HashMap::from([(3, context(MR))]);
    let mut r = Reassembly::new(contexts, 64 * 1024 * 1024, staging.path().to_owned());
    r.feed(command_pdv(3, true, &request(C_STORE_RQ, MR, "1.2.3", true)))
        .unwrap();
    let fragment = 16 * 1024;
    let total = 3 * crate::ingest::IN_MEMORY_BYTES + 123;
    let byte = |n: usize| (n % 251) as u8;
    let mut sent = 0;
    let mut message = None;
    while sent < total {
        let n = fragment.min(total - sent);
        let chunk: Vec<u8> = (sent..sent + n).map(byte).collect();
        sent += n;
        message = r.feed(data_pdv(3, sent == total, &chunk)).unwrap().message;
    }
    let data = message.expect("complete").data.expect("a data set");
    assert!(data.bytes.is_spilled() && data.dropped.is_none());
    assert_eq!(data.bytes.len(), total as u64);
    let mut all = Vec::new();
    std::io::Read::read_to_end(&mut data.bytes.reader().unwrap(), &mut all).unwrap();
    assert!(all.iter().enumerate().all(|(n, b)| *b == byte(n)), "bytes in order");
    assert_eq!(
        std::fs::read_dir(staging.path()).unwrap().count(),
        0,
        "the staging file has no name"
    );
}

// ---------------------------------------------------------------------------------------------
// What a complete message leads to

#[test]
fn each_command_field_leads_to_its_action() {
    assert!(matches!(action(C_ECHO_RQ, None), Action::Echo));
    assert!(matches!(action(C_CANCEL_RQ, None), Action::Ignore));
    assert!(
        matches!(action(C_STORE_RQ, Some(data_set(b"xy", false))), Action::Store(d) if d.bytes.in_memory() == Some(b"xy".as_slice()))
    );
    assert!(matches!(
        action(C_STORE_RQ, None),
        Action::Refuse(Refusal::StoreWithoutDataSet)
    ));
    for (field, data) in [
        (C_FIND_RQ, None),
        (0x0021, Some(data_set(b"x", false))),
        (C_ECHO_RQ, Some(data_set(b"x", false))),
        (C_CANCEL_RQ, Some(data_set(b"x", false))),
        (0x7FFF, None),
    ] {
        assert!(
            matches!(action(field, data), Action::Refuse(Refusal::Unrecognized)),
            "0x{field:04X}"
        );
    }
    assert_eq!(Refusal::Unrecognized.status(), 0x0211);
    assert_eq!(Refusal::StoreWithoutDataSet.status(), 0xC000);
    assert_eq!(Refusal::StoreWithoutDataSet.why(), "C-STORE-RQ without a data set");
}

#[test]
fn echo_answers_with_the_requests_sop_class_or_verification() {
    let mut command = Command {
        field: C_ECHO_RQ,
        ..Command::default()
    };
    assert_eq!(echo_sop_class(&command), VERIFICATION);
    command.affected_sop_class = "1.2.3.4".into();
    assert_eq!(echo_sop_class(&command), "1.2.3.4");
}

// ---------------------------------------------------------------------------------------------
// C-STORE statuses

fn scp(other_storage: OtherStorage) -> ScpConfig {
    ScpConfig {
        other_storage,
        max_instance_mb: 2,
        ..ScpConfig::default()
    }
}

#[test]
fn store_checks_run_in_order_class_size_policy() {
    let discard = scp(OtherStorage::Discard);
    let end = check_store(&context(MR), CT, &data_set(b"x", true), &discard).unwrap();
    assert!(
        matches!(&end, StoreEnd::Failed { status: 0x0122, why } if why.contains(CT) && why.contains(MR)),
        "{end:?}"
    );
    let big = DataSet {
        bytes: Vec::new().into(),
        total: 3 * 1024 * 1024,
        dropped: Some(Dropped::OverCap),
    };
    let end = check_store(&context(CT), CT, &big, &discard).unwrap();
    assert_eq!(
        end,
        StoreEnd::Failed {
            status: 0xA700,
            why: "data set of 3145728 bytes exceeds max_instance_mb = 2".into(),
        }
    );
    assert_eq!(
        check_store(&context(CT), CT, &data_set(b"x", false), &discard),
        Some(StoreEnd::NotMr)
    );
    assert_eq!(check_store(&context(MR), MR, &data_set(b"x", false), &discard), None);
    let store = scp(OtherStorage::Store);
    assert_eq!(check_store(&context(CT), CT, &data_set(b"x", false), &store), None);
    assert_eq!(
        check_store(&context(CT), CT, &data_set(b"x", false), &scp(OtherStorage::Refuse)),
        None
    );
}

#[test]
fn sink_outcomes_map_to_statuses() {
    assert_eq!(sink_end(Ok(StoreOutcome::Stored)).response(), (0x0000, None));
    assert_eq!(sink_end(Ok(StoreOutcome::Duplicate)), StoreEnd::Duplicate);
    assert_eq!(sink_end(Ok(StoreOutcome::Duplicate)).response(), (0x0000, None));
    let discarded = sink_end(Ok(StoreOutcome::Discarded {
        reason: "our own output".into(),
    }));
    assert_eq!(
        discarded,
        StoreEnd::DiscardedBySink {
            reason: "our own output".into()
        }
    );
    assert_eq!(discarded.response(), (0x0000, None));
    assert_eq!(StoreEnd::NotMr.response(), (0x0000, None));
    let full = sink_end(Ok(StoreOutcome::Failed {
        status: 0xA700,
        reason: "disk full".into(),
    }));
    assert_eq!(full.response(), (0xA700, Some("disk full".into())));
    let lying = sink_end(Ok(StoreOutcome::Failed {
        status: 0x0000,
        reason: "said failed, gave success".into(),
    }));
    assert_eq!(lying.response().0, 0x0110, "a failure never answers success");
    let malformed = sink_end(Err(MalformedDataSet {
        tag: Some((0x7FE0, 0x0010)),
        offset: 12,
        message: "element (7FE0,0010) at offset 12: too long".into(),
    }));
    assert_eq!(
        malformed.response(),
        (0xC000, Some("element (7FE0,0010) at offset 12: too long".into()))
    );
}

// ---------------------------------------------------------------------------------------------
// Responses

fn fragments(pdus: &[Pdu]) -> Vec<(u8, bool, Vec<u8>)> {
    pdus.iter()
        .map(|pdu| match pdu {
            Pdu::PData { data } if data.len() == 1 && data[0].value_type == PDataValueType::Command => {
                (data[0].presentation_context_id, data[0].is_last, data[0].data.clone())
            }
            other => panic!("not one command PDV: {other:?}"),
        })
        .collect()
}

#[test]
fn responses_are_split_to_fit_the_peers_max_pdu() {
    let bytes: Vec<u8> = (0..100u8).collect();
    let split = fragments(&response_pdus(5, &bytes, 40));
    assert_eq!(split.len(), 3);
    assert!(split.iter().all(|(pc, _, data)| *pc == 5 && data.len() <= 34));
    assert_eq!(
        split.iter().map(|(_, last, _)| *last).collect::<Vec<_>>(),
        [false, false, true]
    );
    let joined: Vec<u8> = split.iter().flat_map(|(_, _, data)| data.iter().copied()).collect();
    assert_eq!(joined, bytes);

    let whole = fragments(&response_pdus(1, &bytes, 16384));
    assert_eq!(whole.len(), 1);
    assert!(whole[0].1);
    assert_eq!(whole[0].2, bytes);

    assert_eq!(
        fragments(&response_pdus(1, &bytes, 0)).len(),
        100,
        "never fragments of 0 bytes"
    );
}

// ---------------------------------------------------------------------------------------------
// Whole associations on a loopback socket

/// Keeps what it is given and answers `outcome`.
struct RecordingSink {
    outcome: StoreOutcome,
    received: Mutex<Vec<ReceivedInstance>>,
}

impl InstanceSink for RecordingSink {
    fn store(&self, instance: ReceivedInstance) -> StoreOutcome {
        self.received.lock().unwrap().push(instance);
        self.outcome.clone()
    }
}

/// One association served by [`handle_association`] on 127.0.0.1:<ephemeral>.
struct Server {
    addr: SocketAddr,
    stats: Arc<IngestStats>,
    sink: Arc<RecordingSink>,
    task: tokio::task::JoinHandle<()>,
    _shutdown: watch::Sender<bool>,
}

async fn serve_one(config: ScpConfig) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let settings = config.check().unwrap();
    let sink = Arc::new(RecordingSink {
        outcome: StoreOutcome::Stored,
        received: Mutex::new(Vec::new()),
    });
    let stats = Arc::new(IngestStats::default());
    let (shutdown, rx) = watch::channel(false);
    let shared = Arc::new(Shared::new(&settings, sink.clone(), stats.clone(), rx));
    let task = tokio::spawn(async move {
        let (socket, peer) = listener.accept().await.unwrap();
        let pending = Pending::new(1, 1).admit(peer.ip()).unwrap();
        handle_connection(shared, socket, peer, pending, None).await;
    });
    Server {
        addr,
        stats,
        sink,
        task,
        _shutdown: shutdown,
    }
}

type Client = AsyncClientAssociation<TcpStream>;

fn client_pc(client: &Client, abstract_syntax: &str) -> u8 {
    client
        .presentation_contexts()
        .iter()
        .find(|pc| trim_uid(&pc.abstract_syntax) == abstract_syntax)
        .unwrap_or_else(|| panic!("{abstract_syntax} not accepted"))
        .id
}

/// Sends a request (the data set in fragments of at most `fragment` bytes) and returns the
/// response's Command Field and Status.
async fn exchange(client: &mut Client, pc: u8, command: Vec<u8>, data: Option<&[u8]>, fragment: usize) -> (u16, u16) {
    client
        .send(&Pdu::PData {
            data: vec![command_pdv(pc, true, &command)],
        })
        .await
        .unwrap();
    if let Some(data) = data {
        let pieces: Vec<&[u8]> = data.chunks(fragment).collect();
        let n = pieces.len();
        for (i, piece) in pieces.into_iter().enumerate() {
            client
                .send(&Pdu::PData {
                    data: vec![data_pdv(pc, i + 1 == n, piece)],
                })
                .await
                .unwrap();
        }
    }
    let mut response = Vec::new();
    loop {
        match client.receive().await.unwrap() {
            Pdu::PData { data } => {
                let mut last = false;
                for v in data {
                    assert_eq!(v.value_type, PDataValueType::Command);
                    assert_eq!(v.presentation_context_id, pc);
                    response.extend_from_slice(&v.data);
                    last |= v.is_last;
                }
                if last {
                    break;
                }
            }
            other => panic!("expected the response, got {other:?}"),
        }
    }
    let (mut field, mut status) = (None, None);
    for (group, element, value) in elements(&response).unwrap() {
        match (group, element) {
            (0x0000, 0x0100) => field = Some(us(element, value).unwrap()),
            (0x0000, 0x0900) => status = Some(us(element, value).unwrap()),
            _ => {}
        }
    }
    (field.unwrap(), status.unwrap())
}

/// (0010,0010) PN "DOE^JOHN", Implicit VR LE.
const PATIENT_NAME: &[u8] = b"\x10\x00\x10\x00\x08\x00\x00\x00DOE^JOHN";

async fn within_seconds<F: std::future::Future<Output = ()>>(seconds: u64, test: F) {
    tokio::time::timeout(Duration::from_secs(seconds), test)
        .await
        .expect("test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_association_answers_echo_store_and_unknown_operations_then_releases() {
    within_seconds(10, async {
        let server = serve_one(ScpConfig {
            max_instance_mb: 1,
            ..ScpConfig::default()
        })
        .await;
        let mut client = ClientAssociationOptions::new()
            .calling_ae_title("SCU")
            .called_ae_title("FCDNODE")
            .with_presentation_context(VERIFICATION, vec![IMPLICIT])
            .with_presentation_context(MR, vec![IMPLICIT])
            .with_presentation_context(CT, vec![IMPLICIT])
            .establish_async(server.addr)
            .await
            .expect("association accepted");
        assert_eq!(client.presentation_contexts().len(), 2, "CT is refused by default");
        let (echo, mr) = (client_pc(&client, VERIFICATION), client_pc(&client, MR));

        let echo_rq = request(C_ECHO_RQ, VERIFICATION, "", false);
        assert_eq!(exchange(&mut client, echo, echo_rq, None, 0).await, (0x8030, 0x0000));

        let find_rq = request(C_FIND_RQ, VERIFICATION, "", false);
        assert_eq!(exchange(&mut client, echo, find_rq, None, 0).await, (0x8020, 0x0211));

        let store_rq = request(C_STORE_RQ, MR, "1.2.3.4", true);
        let answer = exchange(&mut client, mr, store_rq, Some(PATIENT_NAME), 10).await;
        assert_eq!(answer, (0x8001, 0x0000));

        // Over the 1 MiB cap: drained, refused, and the association goes on.
        let big = vec![0u8; 1024 * 1024 + 2];
        let store_rq = request(C_STORE_RQ, MR, "1.2.3.5", true);
        let answer = exchange(&mut client, mr, store_rq, Some(&big), 8192).await;
        assert_eq!(answer, (0x8001, 0xA700));

        let store_rq = request(C_STORE_RQ, VERIFICATION, "1.2.3.6", false);
        assert_eq!(exchange(&mut client, echo, store_rq, None, 0).await, (0x8001, 0xC000));

        let echo_rq = request(C_ECHO_RQ, "", "", false);
        assert_eq!(exchange(&mut client, echo, echo_rq, None, 0).await, (0x8030, 0x0000));
        client.release().await.expect("released");
        server.task.await.unwrap();

        let received = server.sink.received.lock().unwrap();
        assert_eq!(received.len(), 1, "the oversized instance never reaches the sink");
        assert_eq!(received[0].sop_instance_uid, "1.2.3.4");
        assert_eq!(received[0].sop_class_uid, MR);
        assert_eq!(received[0].calling_ae, "SCU");
        assert_eq!(received[0].transfer_syntax, IMPLICIT);
        assert_eq!(received[0].dataset.in_memory(), Some(PATIENT_NAME));
        let stats = server.stats.snapshot();
        assert_eq!(
            stats,
            IngestStatsSnapshot {
                associations_accepted: 1,
                associations_active: 0,
                echo_requests: 2,
                instances_received: 2,
                instances_stored: 1,
                instances_failed: 2,
                bytes_received: (PATIENT_NAME.len() + big.len()) as u64,
                ..IngestStatsSnapshot::default()
            }
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_called_ae_title_is_rejected() {
    within_seconds(10, async {
        let server = serve_one(ScpConfig::default()).await;
        let refused = ClientAssociationOptions::new()
            .calling_ae_title("SCU")
            .called_ae_title("SOMEONE")
            .with_presentation_context(VERIFICATION, vec![IMPLICIT])
            .establish_async(server.addr)
            .await;
        match refused {
            Err(UlError::Rejected { association_rj, .. }) => assert_eq!(
                association_rj.source,
                AssociationRJSource::ServiceUser(AssociationRJServiceUserReason::CalledAETitleNotRecognized)
            ),
            Err(e) => panic!("expected a rejection, got {e}"),
            Ok(_) => panic!("expected a rejection, got an association"),
        }
        server.task.await.unwrap();
        let stats = server.stats.snapshot();
        assert_eq!((stats.associations_rejected, stats.associations_accepted), (1, 0));
        assert_eq!(stats.associations_active, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pdv_on_a_context_never_accepted_aborts() {
    within_seconds(10, async {
        let server = serve_one(ScpConfig::default()).await;
        let mut client = ClientAssociationOptions::new()
            .calling_ae_title("SCU")
            .called_ae_title("FCDNODE")
            .with_presentation_context(VERIFICATION, vec![IMPLICIT])
            .establish_async(server.addr)
            .await
            .expect("association accepted");
        let echo_rq = request(C_ECHO_RQ, VERIFICATION, "", false);
        client
            .send(&Pdu::PData {
                data: vec![command_pdv(99, true, &echo_rq)],
            })
            .await
            .unwrap();
        match client.receive().await {
            Ok(Pdu::AbortRQ { source }) => assert_eq!(
                source,
                AbortRQSource::ServiceProvider(AbortRQServiceProviderReason::UnexpectedPduParameter)
            ),
            other => panic!("expected A-ABORT, got {other:?}"),
        }
        server.task.await.unwrap();
        let stats = server.stats.snapshot();
        assert_eq!((stats.associations_accepted, stats.associations_aborted), (1, 1));
        assert_eq!(stats.echo_requests, 0);
    })
    .await;
}

/// 120 presentation contexts × 8 transfer syntaxes, as a modality with a long storage list
/// proposes them: an A-ASSOCIATE-RQ of about 30 KB, over `max_pdu`.
fn many_contexts() -> Vec<(String, Vec<&'static str>)> {
    let syntaxes = vec![
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.203",
        "1.2.840.10008.1.2.4.100",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.1",
        IMPLICIT,
    ];
    (0..120)
        .map(|i| {
            let uid = match i {
                0 => VERIFICATION.to_owned(),
                1 => MR.to_owned(),
                _ => format!("1.2.826.0.1.3680043.10.1.99.{i}"),
            };
            (uid, syntaxes.clone())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30_kb_associate_rq_is_accepted_while_p_data_stays_bounded_by_max_pdu() {
    within_seconds(10, async {
        let server = serve_one(ScpConfig::default()).await;
        let contexts = many_contexts();
        let rq = associate_rq(
            contexts
                .iter()
                .enumerate()
                .map(|(i, (uid, ts))| proposed((2 * i + 1) as u8, uid, ts))
                .collect(),
            Some(16384),
        );
        let mut encoded = Vec::new();
        dicom_ul::write_pdu(&mut encoded, &Pdu::AssociationRQ(rq)).unwrap();
        assert!(encoded.len() > 28_000, "{} bytes", encoded.len());
        let mut options = ClientAssociationOptions::new()
            .calling_ae_title("SCU")
            .called_ae_title("FCDNODE");
        for (uid, ts) in &contexts {
            options = options.with_presentation_context(uid.as_str(), ts.clone());
        }
        let mut client = options
            .establish_async(server.addr)
            .await
            .expect("association accepted");
        let accepted = client.presentation_contexts();
        assert_eq!(accepted.len(), 2, "Verification and MR only");
        assert!(
            accepted
                .iter()
                .all(|pc| trim_uid(&pc.transfer_syntax) == "1.2.840.10008.1.2.4.91")
        );
        let echo = client_pc(&client, VERIFICATION);
        let echo_rq = request(C_ECHO_RQ, VERIFICATION, "", false);
        assert_eq!(exchange(&mut client, echo, echo_rq, None, 0).await, (0x8030, 0x0000));

        // P-DATA is still bounded by max_pdu (16384), not by the handshake's bound.
        let mut oversized = vec![0x04, 0x00];
        oversized.extend_from_slice(&20_000u32.to_be_bytes());
        oversized.extend_from_slice(&[0u8; 20_000]);
        client.inner_stream().write_all(&oversized).await.unwrap();
        match client.receive().await {
            Ok(Pdu::AbortRQ { source }) => assert_eq!(
                source,
                AbortRQSource::ServiceProvider(AbortRQServiceProviderReason::InvalidPduParameter)
            ),
            other => panic!("expected A-ABORT, got {other:?}"),
        }
        server.task.await.unwrap();
        let stats = server.stats.snapshot();
        assert_eq!((stats.associations_accepted, stats.associations_aborted), (1, 1));
    })
    .await;
}

/// What a first PDU other than a readable A-ASSOCIATE-RQ gets: an A-ABORT (PS3.8 state Sta2,
/// AA-1; source: service provider) that the peer can read before the close, never a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_pdu_that_is_no_readable_associate_rq_gets_an_a_abort_not_a_reset() {
    within_seconds(20, async {
        let mut oversized = vec![0x01, 0x00];
        oversized.extend_from_slice(&(2 * 1024 * 1024u32).to_be_bytes());
        oversized.extend_from_slice(&[0x20; 4096]);
        let mut garbage_rq = vec![0x01, 0x00, 0x00, 0x00, 0x00, 0x64];
        garbage_rq.extend_from_slice(&[0xFF; 100]);
        let mut release_first = Vec::new();
        dicom_ul::write_pdu(&mut release_first, &Pdu::ReleaseRQ).unwrap();
        let cases: Vec<(&str, Vec<u8>, u8)> = vec![
            ("HTTP", b"GET / HTTP/1.1\r\nHost: fcdnode\r\n\r\n".to_vec(), 1),
            ("A-RELEASE-RQ first", release_first, 2),
            ("A-ASSOCIATE-RQ over max_associate_pdu_bytes", oversized, 6),
            ("unparseable A-ASSOCIATE-RQ", garbage_rq, 6),
        ];
        for (label, bytes, reason) in cases {
            let server = serve_one(ScpConfig::default()).await;
            let mut socket = TcpStream::connect(server.addr).await.unwrap();
            socket.write_all(&bytes).await.unwrap();
            let mut answer = Vec::new();
            socket
                .read_to_end(&mut answer)
                .await
                .unwrap_or_else(|e| panic!("{label}: the connection was reset ({e}), got {answer:02X?}"));
            assert_eq!(answer, [0x07, 0, 0, 0, 0, 4, 0, 0, 2, reason], "{label}");
            server.task.await.unwrap();
            let stats = server.stats.snapshot();
            assert_eq!(
                (stats.associations_rejected, stats.associations_accepted),
                (1, 0),
                "{label}"
            );
        }
    })
    .await;
}
