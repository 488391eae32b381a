//! The answer to an A-ASSOCIATE-RQ (PS3.8 7.1.1, 9.3.2–9.3.4), as a plain function of the
//! request and the settings: the protocol version and application context, the AE checks, then
//! each presentation context (abstract syntax offered, first transfer syntax the peer proposes
//! that the node decodes), and the A-ASSOCIATE-AC with our maximum PDU length. The association
//! cap is the caller's: it is checked after these, so a refused peer never takes a slot.

use std::net::IpAddr;

use dicom_ul::pdu::{
    AssociationAC, AssociationRJ, AssociationRJResult, AssociationRJServiceProviderASCEReason,
    AssociationRJServiceUserReason, AssociationRJSource, AssociationRQ, DEFAULT_MAX_PDU, MAXIMUM_PDU_SIZE,
    PresentationContextNegotiated, PresentationContextResult, PresentationContextResultReason, UserVariableItem,
};

use super::check_ae_titles;
use crate::dicom_build::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};
use crate::ingest::config::{AllowedCalling, ScpConfig};
use crate::ingest::syntax::{ACCEPTED_TRANSFER_SYNTAXES, IMPLICIT_VR_LE, trim_uid};

/// The DICOM application context name (PS3.7 A.2.1).
pub(super) const DICOM_APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";

/// What the SCP offers: the checked `[scp]` values, the parsed allow-list and the abstract
/// syntaxes.
pub(super) struct Offer<'a> {
    pub(super) config: &'a ScpConfig,
    pub(super) allowed: &'a [AllowedCalling],
    pub(super) abstract_syntaxes: &'a [&'static str],
}

/// An acceptable request: the A-ASSOCIATE-AC to send and what the association needs.
#[derive(Debug)]
pub(super) struct Negotiated {
    pub(super) ac: AssociationAC,
    /// Every proposed context with its result.
    pub(super) contexts: Vec<PresentationContextNegotiated>,
    /// The largest PDU the peer receives (PS3.8 D.1: 0 means no limit).
    pub(super) peer_max_pdu: u32,
}

/// A request refused: the A-ASSOCIATE-RJ to send and why, for the log.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Rejection {
    pub(super) rj: AssociationRJ,
    pub(super) why: &'static str,
}

fn permanent(source: AssociationRJSource, why: &'static str) -> Rejection {
    Rejection {
        rj: AssociationRJ {
            result: AssociationRJResult::Permanent,
            source,
        },
        why,
    }
}

/// Answers `rq` from `peer`.
pub(super) fn negotiate(rq: &AssociationRQ, offer: &Offer<'_>, peer: IpAddr) -> Result<Negotiated, Rejection> {
    // PS3.8 9.3.2: a receiver of version 1 tests bit 0 only.
    if rq.protocol_version & 1 == 0 {
        return Err(permanent(
            AssociationRJSource::ServiceProviderASCE(
                AssociationRJServiceProviderASCEReason::ProtocolVersionNotSupported,
            ),
            "protocol version not supported",
        ));
    }
    if trim_uid(&rq.application_context_name) != DICOM_APPLICATION_CONTEXT {
        return Err(permanent(
            AssociationRJSource::ServiceUser(AssociationRJServiceUserReason::ApplicationContextNameNotSupported),
            "application context name not supported",
        ));
    }
    let config = offer.config;
    if let Err(reason) = check_ae_titles(
        config.check_called_ae,
        offer.allowed,
        &config.ae_title,
        &rq.calling_ae_title,
        &rq.called_ae_title,
        peer,
    ) {
        let why = match reason {
            AssociationRJServiceUserReason::CalledAETitleNotRecognized => "called AE title is not ours",
            _ => "calling AE title not allowed from this address",
        };
        return Err(permanent(AssociationRJSource::ServiceUser(reason), why));
    }
    let contexts: Vec<PresentationContextNegotiated> = rq
        .presentation_contexts
        .iter()
        .map(|pc| {
            let abstract_syntax = trim_uid(&pc.abstract_syntax);
            let (reason, transfer_syntax) = if !offer.abstract_syntaxes.contains(&abstract_syntax) {
                (
                    PresentationContextResultReason::AbstractSyntaxNotSupported,
                    IMPLICIT_VR_LE,
                )
            } else {
                match pc
                    .transfer_syntaxes
                    .iter()
                    .map(|ts| trim_uid(ts))
                    .find(|ts| ACCEPTED_TRANSFER_SYNTAXES.contains(ts))
                {
                    Some(ts) => (PresentationContextResultReason::Acceptance, ts),
                    None => (
                        PresentationContextResultReason::TransferSyntaxesNotSupported,
                        IMPLICIT_VR_LE,
                    ),
                }
            };
            PresentationContextNegotiated {
                id: pc.id,
                reason,
                abstract_syntax: abstract_syntax.to_owned(),
                transfer_syntax: transfer_syntax.to_owned(),
            }
        })
        .collect();
    let peer_max_pdu = rq
        .user_variables
        .iter()
        .find_map(|item| match item {
            UserVariableItem::MaxLength(0) => Some(MAXIMUM_PDU_SIZE),
            UserVariableItem::MaxLength(n) => Some(*n),
            _ => None,
        })
        .unwrap_or(DEFAULT_MAX_PDU);
    let ac = AssociationAC {
        protocol_version: 1,
        // PS3.8 9.3.3: the reserved AE fields repeat the request's.
        calling_ae_title: rq.calling_ae_title.clone(),
        called_ae_title: rq.called_ae_title.clone(),
        application_context_name: DICOM_APPLICATION_CONTEXT.to_owned(),
        presentation_contexts: contexts
            .iter()
            .map(|pc| PresentationContextResult {
                id: pc.id,
                reason: pc.reason.clone(),
                transfer_syntax: pc.transfer_syntax.clone(),
            })
            .collect(),
        // No role selection or extended negotiation items: the default roles, no options.
        user_variables: vec![
            UserVariableItem::MaxLength(config.max_pdu),
            UserVariableItem::ImplementationClassUID(IMPLEMENTATION_CLASS_UID.to_owned()),
            UserVariableItem::ImplementationVersionName(IMPLEMENTATION_VERSION_NAME.to_owned()),
        ],
    };
    Ok(Negotiated {
        ac,
        contexts,
        peer_max_pdu,
    })
}
