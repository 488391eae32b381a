//! One connection, from its first byte to release or abort: the A-ASSOCIATE-RQ read within the
//! handshake deadline and bound, the answer to it (`negotiate`: AE checks, presentation
//! contexts), the association slot taken only then, the answers to C-ECHO and C-STORE (the sink
//! runs on a blocking thread and its outcome decides the status), response fragmentation,
//! release, abort and the shutdown of an idle association. The accept loop (`listener`) spawns
//! [`handle_connection`] for each connection it admits. The PDUs on the wire are `link`'s;
//! turning P-DATA fragments into DIMSE messages (command sets capped at 64 KiB, data sets at
//! `max_instance_mb`, drained past the cap) is `reassembly`'s.
//!
//! The decisions are plain functions apart from the socket, so they are tested without one
//! (`association/tests.rs`, which also runs whole associations on a loopback socket):
//! `negotiate`, `check_ae_titles`, `abstract_syntaxes`, `accepted_contexts`, `Reassembly::feed`,
//! `action`, `check_store`, `sink_end` and `response_pdus`. `Session` does the I/O, the counting
//! and the logging around them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AbortRQSource, AssociationRJ, AssociationRJResult,
    AssociationRJServiceProviderPresentationReason, AssociationRJServiceUserReason, AssociationRJSource, AssociationRQ,
    PDataValue, PDataValueType, Pdu, PresentationContextNegotiated, PresentationContextResultReason,
};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tracing::{debug, error, info, warn};

use super::admission::PendingGuard;
use super::config::{AllowedCalling, OtherStorage, ScpConfig, ScpSettings};
use super::dimse::{
    C_CANCEL_RQ, C_ECHO_RQ, C_STORE_RQ, Command, RESPONSE_BIT, Response, STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES, STATUS_PROCESSING_FAILURE, STATUS_SOP_CLASS_NOT_SUPPORTED, STATUS_SUCCESS,
    STATUS_UNRECOGNIZED_OPERATION,
};
use super::limits::{MalformedDataSet, check_data_set};
use super::spill::DataSetBuffer;
use super::stats::{IngestStats, bump};
use super::syntax::{MR_STORAGE_CLASSES, OTHER_STORAGE_CLASSES, VERIFICATION, is_mr_storage, trim_uid};
use super::{ConnectionEvent, InstanceSink, ReceivedInstance, StoreOutcome};
use crate::dimse::{pdu_name, pdu_summary};

// Entry points for the fuzz targets (`fuzz/`), beside the private items they drive.
#[doc(hidden)]
pub mod fuzzing;
mod link;
mod negotiate;
mod reassembly;
#[cfg(test)]
mod tests;

use link::{Link, ReadError, Stream};
use negotiate::{Negotiated, Offer, Rejection, negotiate};
use reassembly::{DataSet, Dropped, Message, Reassembly};

/// What every connection of one `serve` shares: the checked settings, the sink, the counters,
/// the abstract syntaxes offered, the association slots and the shutdown flag.
pub(super) struct Shared {
    pub(super) config: Arc<ScpConfig>,
    allowed: Vec<AllowedCalling>,
    sink: Arc<dyn InstanceSink>,
    pub(super) stats: Arc<IngestStats>,
    abstract_syntaxes: Vec<&'static str>,
    /// `max_associations` permits, one per established association.
    slots: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
}

impl Shared {
    pub(super) fn new(
        settings: &ScpSettings,
        sink: Arc<dyn InstanceSink>,
        stats: Arc<IngestStats>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            config: Arc::new(settings.config.clone()),
            allowed: settings.allowed.clone(),
            sink,
            stats,
            abstract_syntaxes: abstract_syntaxes(settings.config.other_storage),
            slots: Arc::new(Semaphore::new(settings.config.max_associations)),
            shutdown,
        }
    }
}

/// The abstract syntaxes the SCP accepts: Verification, the MR storage classes and, unless
/// `other_storage = refuse`, the other storage classes.
fn abstract_syntaxes(other_storage: OtherStorage) -> Vec<&'static str> {
    let mut uids: Vec<&'static str> = vec![VERIFICATION];
    uids.extend(MR_STORAGE_CLASSES);
    if other_storage != OtherStorage::Refuse {
        uids.extend(OTHER_STORAGE_CLASSES);
    }
    uids
}

/// The AE checks of an A-ASSOCIATE-RQ: the called AE title must be ours (when
/// `check_called_ae`), and the calling AE title must match an `allowed_calling` entry from
/// `peer` (when the list is not empty). The called title is checked first.
fn check_ae_titles(
    check_called_ae: bool,
    allowed: &[AllowedCalling],
    this_ae_title: &str,
    calling_ae_title: &str,
    called_ae_title: &str,
    peer: IpAddr,
) -> Result<(), AssociationRJServiceUserReason> {
    if check_called_ae && called_ae_title != this_ae_title {
        return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
    }
    if !allowed.is_empty() && !allowed.iter().any(|a| a.matches(calling_ae_title, peer)) {
        return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
    }
    Ok(())
}

/// Decrements the active gauge when the association task ends, however it ends.
struct ActiveGuard(Arc<IngestStats>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.associations_active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why the first PDU is not an A-ASSOCIATE-RQ that can be answered.
#[derive(Debug)]
enum Handshake {
    /// Silent past `handshake_timeout_s` (PS3.8's ARTIM timer): closed without a word.
    TimedOut,
    /// The node is shutting down.
    ShuttingDown,
    /// The peer closed or the socket failed.
    Gone(ReadError),
    /// Not an A-ASSOCIATE-RQ, too large or malformed: answered with an A-ABORT (PS3.8 9.2.3,
    /// state Sta2: AA-1).
    Invalid {
        reason: AbortRQServiceProviderReason,
        why: String,
    },
}

/// Reads the first PDU, which must be an A-ASSOCIATE-RQ of at most `max` bytes. The header's
/// type and length are checked before any of the body is read; the body is buffered as it
/// arrives.
async fn read_associate_rq(link: &mut Link, max: u32) -> Result<AssociationRQ, Handshake> {
    let header = link.read_header().await.map_err(Handshake::Gone)?;
    if header.pdu_type != 0x01 {
        let reason = if (0x02..=0x07).contains(&header.pdu_type) {
            AbortRQServiceProviderReason::UnexpectedPdu
        } else {
            AbortRQServiceProviderReason::UnrecognizedPdu
        };
        let why = format!("first PDU is {}, not an A-ASSOCIATE-RQ", header.summary());
        return Err(Handshake::Invalid { reason, why });
    }
    let invalid = |e: ReadError| Handshake::Invalid {
        reason: AbortRQServiceProviderReason::InvalidPduParameter,
        why: e.to_string(),
    };
    match link.read_body(header, max, 64 * 1024).await {
        Ok(Pdu::AssociationRQ(rq)) => Ok(rq),
        Ok(other) => Err(Handshake::Invalid {
            reason: AbortRQServiceProviderReason::UnexpectedPdu,
            why: format!("first PDU is {}, not an A-ASSOCIATE-RQ", pdu_summary(&other)),
        }),
        Err(e @ (ReadError::TooLarge { .. } | ReadError::Malformed { .. })) => Err(invalid(e)),
        Err(e) => Err(Handshake::Gone(e)),
    }
}

/// Serves one admitted connection. Its A-ASSOCIATE-RQ must arrive whole within
/// `handshake_timeout_s`, while `pending` holds its place among the connections not yet
/// associated; then it is answered (AE checks, contexts), and only an acceptable request takes
/// one of the `max_associations` slots, which it holds until the association ends.
pub(super) async fn handle_connection(
    shared: Arc<Shared>,
    socket: TcpStream,
    peer: SocketAddr,
    pending: PendingGuard,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let stats = shared.stats.clone();
    let config = shared.config.clone();
    let mut shutdown = shared.shutdown.clone();
    // The TLS handshake and the A-ASSOCIATE-RQ share one deadline.
    let deadline = tokio::time::Instant::now() + config.handshake_timeout();
    let stream: Box<dyn Stream> = match tls {
        None => Box::new(socket),
        Some(acceptor) => {
            let accepted = tokio::select! {
                accepted = tokio::time::timeout_at(deadline, acceptor.accept(socket)) => accepted,
                _ = wait_for_shutdown(&mut shutdown) => return,
            };
            match accepted {
                Ok(Ok(tls)) => Box::new(tls),
                Ok(Err(e)) => {
                    bump(&stats.associations_rejected);
                    warn!(%peer, error = %e, "TLS handshake failed: connection closed");
                    let why = e.to_string();
                    shared.sink.connection_event(ConnectionEvent::TlsRefused { peer, why });
                    return;
                }
                Err(_) => {
                    bump(&stats.associations_rejected);
                    warn!(%peer, handshake_timeout_s = config.handshake_timeout_s, "no TLS handshake in time: connection closed");
                    return;
                }
            }
        }
    };
    let mut link = Link::new(stream);
    let read = tokio::select! {
        read = tokio::time::timeout_at(deadline, read_associate_rq(&mut link, config.max_associate_pdu_bytes)) => {
            read.unwrap_or(Err(Handshake::TimedOut))
        }
        _ = wait_for_shutdown(&mut shutdown) => Err(Handshake::ShuttingDown),
    };
    drop(pending);
    let rq = match read {
        Ok(rq) => rq,
        Err(failed) => {
            bump(&stats.associations_rejected);
            match failed {
                Handshake::TimedOut => {
                    warn!(%peer, handshake_timeout_s = config.handshake_timeout_s,
                        "no A-ASSOCIATE-RQ in time: connection closed");
                }
                Handshake::ShuttingDown => {
                    debug!(%peer, "node shutting down: connection closed before its A-ASSOCIATE-RQ")
                }
                Handshake::Gone(ReadError::Closed) => debug!(%peer, "connection closed before an A-ASSOCIATE-RQ"),
                Handshake::Gone(e) => warn!(%peer, error = %e, "connection failed before an A-ASSOCIATE-RQ"),
                Handshake::Invalid { reason, why } => {
                    warn!(%peer, reason = %reason, why = %why, "no readable A-ASSOCIATE-RQ: aborting");
                    let abort = Pdu::AbortRQ {
                        source: AbortRQSource::ServiceProvider(reason),
                    };
                    last_word(&mut link, &abort, &config, peer).await;
                }
            }
            return;
        }
    };
    let offer = Offer {
        config: &config,
        allowed: &shared.allowed,
        abstract_syntaxes: &shared.abstract_syntaxes,
    };
    let calling_ae = rq.calling_ae_title.trim().to_owned();
    let called_ae = rq.called_ae_title.trim().to_owned();
    let negotiated = negotiate(&rq, &offer, peer.ip());
    let (negotiated, permit) = match negotiated {
        Err(Rejection { rj, why }) => {
            warn!(%peer, calling_ae = %calling_ae, called_ae = %called_ae, why, "association rejected");
            bump(&stats.associations_rejected);
            shared.sink.connection_event(ConnectionEvent::AssociationRejected {
                peer,
                calling_ae: calling_ae.clone(),
                why: why.to_string(),
            });
            last_word(&mut link, &Pdu::AssociationRJ(rj), &config, peer).await;
            return;
        }
        Ok(negotiated) => match shared.slots.clone().try_acquire_owned() {
            Ok(permit) => (negotiated, permit),
            Err(_) => {
                warn!(%peer, calling_ae = %calling_ae, max_associations = config.max_associations,
                    "association rejected (transient): too many concurrent associations");
                bump(&stats.associations_rejected);
                let rj = AssociationRJ {
                    result: AssociationRJResult::Transient,
                    source: AssociationRJSource::ServiceProviderPresentation(
                        AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
                    ),
                };
                last_word(&mut link, &Pdu::AssociationRJ(rj), &config, peer).await;
                return;
            }
        },
    };
    let Negotiated {
        ac,
        contexts,
        peer_max_pdu,
    } = negotiated;
    if let Err(e) = link.send(&Pdu::AssociationAC(ac), config.read_timeout()).await {
        bump(&stats.associations_rejected);
        warn!(%peer, calling_ae = %calling_ae, error = %e, "cannot send A-ASSOCIATE-AC");
        return;
    }
    stats.associations_active.fetch_add(1, Ordering::Relaxed);
    let _active = ActiveGuard(stats.clone());
    let accepted = accepted_contexts(&contexts);
    let refused = contexts.len() - accepted.len();
    debug!(%peer, calling_ae = %calling_ae, called_ae = %called_ae,
        accepted_contexts = accepted.len(), refused_contexts = refused, "association accepted");
    bump(&stats.associations_accepted);
    let reassembly = Reassembly::new(accepted, config.max_instance_bytes(), shared.sink.staging_dir());
    let sink = shared.sink.clone();
    let mut session = Session {
        shared,
        peer,
        calling_ae: calling_ae.clone(),
        reassembly,
        link,
        peer_max_pdu,
        _slot: permit,
        tally: Tally::default(),
        ending: "ended",
    };
    session.run().await;
    // The association's one line at info: who, how it ended, what it carried.
    let t = &session.tally;
    info!(%peer, calling_ae = %session.calling_ae, called_ae = %called_ae, result = %session.ending,
        stored = t.stored.load(Ordering::Relaxed), duplicates = t.duplicates.load(Ordering::Relaxed),
        discarded = t.discarded.load(Ordering::Relaxed), refused = t.refused.load(Ordering::Relaxed),
        "association ended");
    sink.connection_event(ConnectionEvent::AssociationEnded { peer, calling_ae });
}

/// Sends a last PDU (A-ABORT, A-ASSOCIATE-RJ), best effort, and closes the connection so that
/// the peer can read it.
async fn last_word(link: &mut Link, pdu: &Pdu, config: &ScpConfig, peer: SocketAddr) {
    if let Err(e) = link.send(pdu, config.read_timeout()).await {
        debug!(%peer, error = %e, pdu = pdu_name(pdu), "cannot send the last PDU");
    }
    link.close().await;
}

/// An accepted presentation context.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Context {
    abstract_syntax: String,
    transfer_syntax: String,
}

/// The accepted presentation contexts by id, their UIDs without padding.
fn accepted_contexts(negotiated: &[PresentationContextNegotiated]) -> HashMap<u8, Context> {
    negotiated
        .iter()
        .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .map(|pc| {
            (
                pc.id,
                Context {
                    abstract_syntax: trim_uid(&pc.abstract_syntax).to_owned(),
                    transfer_syntax: trim_uid(&pc.transfer_syntax).to_owned(),
                },
            )
        })
        .collect()
}

/// A reason to abort the association.
#[derive(Debug)]
struct Abort {
    reason: AbortRQServiceProviderReason,
    why: String,
}

fn abort(reason: AbortRQServiceProviderReason, why: impl Into<String>) -> Abort {
    Abort {
        reason,
        why: why.into(),
    }
}

/// What the SCP does with a complete message.
#[derive(Debug)]
enum Action {
    /// C-ECHO-RQ: count it and answer success.
    Echo,
    /// C-CANCEL-RQ: nothing is pending (every request is answered before the next is read), so
    /// no answer.
    Ignore,
    /// C-STORE-RQ with its data set: check, hand to the sink, answer its status.
    Store(DataSet),
    /// Answer with a failure at once.
    Refuse(Refusal),
}

/// A request answered with a failure without doing anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// C-STORE-RQ without a data set (counted as a failed instance).
    StoreWithoutDataSet,
    /// Any operation other than C-ECHO, C-STORE and C-CANCEL, or one other than C-STORE with a
    /// data set.
    Unrecognized,
}

impl Refusal {
    /// The response status.
    fn status(self) -> u16 {
        match self {
            Refusal::StoreWithoutDataSet => STATUS_CANNOT_UNDERSTAND,
            Refusal::Unrecognized => STATUS_UNRECOGNIZED_OPERATION,
        }
    }

    /// The Error Comment (and log message).
    fn why(self) -> &'static str {
        match self {
            Refusal::StoreWithoutDataSet => "C-STORE-RQ without a data set",
            Refusal::Unrecognized => "unsupported DIMSE operation",
        }
    }
}

/// Decides what to do with a request of Command Field `field` and its data set, if any.
fn action(field: u16, data: Option<DataSet>) -> Action {
    match (field, data) {
        (C_STORE_RQ, Some(data)) => Action::Store(data),
        (C_STORE_RQ, None) => Action::Refuse(Refusal::StoreWithoutDataSet),
        (C_ECHO_RQ, None) => Action::Echo,
        (C_CANCEL_RQ, None) => Action::Ignore,
        _ => Action::Refuse(Refusal::Unrecognized),
    }
}

/// The Affected SOP Class UID of a C-ECHO-RSP: the request's, or Verification when it had none.
fn echo_sop_class(command: &Command) -> &str {
    if command.affected_sop_class.is_empty() {
        VERIFICATION
    } else {
        command.affected_sop_class.as_str()
    }
}

/// How a C-STORE ended: decides the counter, the log line and the response status.
#[derive(Clone, Debug, PartialEq, Eq)]
enum StoreEnd {
    /// The sink stored it.
    Stored,
    /// The sink had it already.
    Duplicate,
    /// Not an MR storage class under `other_storage = discard`: success, nothing kept.
    NotMr,
    /// The sink accepted it and kept nothing.
    DiscardedBySink { reason: String },
    /// Answered with a failure status; `why` goes to the log and the Error Comment.
    Failed { status: u16, why: String },
}

impl StoreEnd {
    /// The C-STORE-RSP status and Error Comment.
    fn response(self) -> (u16, Option<String>) {
        match self {
            StoreEnd::Failed { status, why } => (status, Some(why)),
            StoreEnd::Stored | StoreEnd::Duplicate | StoreEnd::NotMr | StoreEnd::DiscardedBySink { .. } => {
                (STATUS_SUCCESS, None)
            }
        }
    }
}

/// The checks of a C-STORE before the sink, in order: the SOP class must be the context's, the
/// data set within `max_instance_mb`, and a class other than MR under `other_storage = discard`
/// is answered success without the sink. `None`: hand it to the sink.
fn check_store(context: &Context, sop_class: &str, data: &DataSet, config: &ScpConfig) -> Option<StoreEnd> {
    if sop_class != context.abstract_syntax {
        let why = format!(
            "SOP class {sop_class} does not match presentation context {}",
            context.abstract_syntax
        );
        return Some(StoreEnd::Failed {
            status: STATUS_SOP_CLASS_NOT_SUPPORTED,
            why,
        });
    }
    if let Some(dropped) = &data.dropped {
        let why = match dropped {
            Dropped::OverCap => format!(
                "data set of {} bytes exceeds max_instance_mb = {}",
                data.total, config.max_instance_mb
            ),
            Dropped::Staging(e) => format!("cannot stage the data set of {} bytes: {e}", data.total),
        };
        return Some(StoreEnd::Failed {
            status: STATUS_OUT_OF_RESOURCES,
            why,
        });
    }
    if !is_mr_storage(sop_class) && config.other_storage == OtherStorage::Discard {
        return Some(StoreEnd::NotMr);
    }
    None
}

/// What the pre-parse and the sink said, as a C-STORE end. A sink "failure" with status
/// success becomes a processing failure; a malformed data set is "cannot understand".
fn sink_end(outcome: Result<StoreOutcome, MalformedDataSet>) -> StoreEnd {
    match outcome {
        Ok(StoreOutcome::Stored) => StoreEnd::Stored,
        Ok(StoreOutcome::Duplicate) => StoreEnd::Duplicate,
        Ok(StoreOutcome::Discarded { reason }) => StoreEnd::DiscardedBySink { reason },
        Ok(StoreOutcome::Failed { status, reason }) => StoreEnd::Failed {
            status: if status == STATUS_SUCCESS {
                STATUS_PROCESSING_FAILURE
            } else {
                status
            },
            why: reason,
        },
        Err(malformed) => StoreEnd::Failed {
            status: STATUS_CANNOT_UNDERSTAND,
            why: malformed.message,
        },
    }
}

/// A response command set as P-DATA-TF PDUs on `pc`, one fragment each, every PDU within the
/// peer's maximum PDU length `max_pdu` (PDU length = 4 (PDV length) + 2 (context id, header)
/// + fragment).
fn response_pdus(pc: u8, bytes: &[u8], max_pdu: u32) -> Vec<Pdu> {
    let chunk = (max_pdu as usize).saturating_sub(6).max(1);
    let pieces: Vec<&[u8]> = bytes.chunks(chunk).collect();
    let n = pieces.len();
    pieces
        .into_iter()
        .enumerate()
        .map(|(i, piece)| Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc,
                value_type: PDataValueType::Command,
                is_last: i + 1 == n,
                data: piece.to_vec(),
            }],
        })
        .collect()
}

/// An established association and the message being reassembled on it.
struct Session {
    shared: Arc<Shared>,
    peer: SocketAddr,
    calling_ae: String,
    reassembly: Reassembly,
    link: Link,
    /// The largest PDU the peer receives.
    peer_max_pdu: u32,
    /// The association slot, held until the session ends.
    _slot: OwnedSemaphorePermit,
    /// What its C-STOREs came to.
    tally: Tally,
    /// How it ended, for the association's log line.
    ending: &'static str,
}

/// C-STORE outcomes of one association.
#[derive(Default)]
struct Tally {
    stored: AtomicU32,
    duplicates: AtomicU32,
    discarded: AtomicU32,
    refused: AtomicU32,
}

fn count(counter: &AtomicU32) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Why no PDU came within an association.
#[derive(Debug)]
enum ReceiveError {
    /// Silent past `read_timeout_s`.
    Timeout,
    Read(ReadError),
}

impl Session {
    async fn run(&mut self) {
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            let received = if self.reassembly.is_idle() {
                tokio::select! {
                    received = self.receive() => Some(received),
                    _ = wait_for_shutdown(&mut shutdown) => None,
                }
            } else {
                Some(self.receive().await)
            };
            let Some(received) = received else {
                self.abort(abort(
                    AbortRQServiceProviderReason::ReasonNotSpecified,
                    "node shutting down",
                ))
                .await;
                return;
            };
            let pdu = match received {
                Ok(pdu) => pdu,
                Err(e) => return self.receive_failed(e).await,
            };
            match pdu {
                Pdu::PData { data } => {
                    for pdv in data {
                        if let Err(a) = self.on_pdv(pdv).await {
                            self.abort(a).await;
                            return;
                        }
                    }
                }
                Pdu::ReleaseRQ => {
                    if !self.reassembly.is_idle() {
                        warn!(peer = %self.peer, calling_ae = %self.calling_ae, "release requested in the middle of a message");
                    }
                    if let Err(e) = self.send(&Pdu::ReleaseRP).await {
                        warn!(peer = %self.peer, error = %e, "cannot send A-RELEASE-RP");
                    }
                    let _ = self.link.shutdown().await;
                    debug!(peer = %self.peer, calling_ae = %self.calling_ae, "association released");
                    self.ending = "released";
                    return;
                }
                Pdu::AbortRQ { source } => {
                    bump(&self.shared.stats.associations_aborted);
                    debug!(peer = %self.peer, calling_ae = %self.calling_ae, ?source, "association aborted by the peer");
                    self.ending = "aborted by the peer";
                    return;
                }
                Pdu::Unknown { pdu_type, .. } => {
                    let why = format!("unknown PDU type 0x{pdu_type:02X}");
                    self.abort(abort(AbortRQServiceProviderReason::UnrecognizedPdu, why))
                        .await;
                    return;
                }
                other => {
                    let why = format!("unexpected {} during the association", pdu_name(&other));
                    self.abort(abort(AbortRQServiceProviderReason::UnexpectedPdu, why))
                        .await;
                    return;
                }
            }
        }
    }

    /// The next PDU within `read_timeout_s`, of at most `max_pdu` bytes.
    async fn receive(&mut self) -> Result<Pdu, ReceiveError> {
        let config = &self.shared.config;
        match tokio::time::timeout(config.read_timeout(), self.link.read_pdu(config.max_pdu)).await {
            Ok(read) => read.map_err(ReceiveError::Read),
            Err(_) => Err(ReceiveError::Timeout),
        }
    }

    /// Sends one PDU within `read_timeout_s`.
    async fn send(&mut self, pdu: &Pdu) -> std::io::Result<()> {
        let timeout = self.shared.config.read_timeout();
        self.link.send(pdu, timeout).await
    }

    async fn receive_failed(&mut self, e: ReceiveError) {
        let (reason, why) = match e {
            ReceiveError::Read(ReadError::TooLarge { header, max }) => (
                AbortRQServiceProviderReason::InvalidPduParameter,
                format!("{} exceeds the negotiated maximum of {max}", header.summary()),
            ),
            ReceiveError::Timeout => (
                AbortRQServiceProviderReason::ReasonNotSpecified,
                format!("peer silent for {} s", self.shared.config.read_timeout_s),
            ),
            ReceiveError::Read(ReadError::Closed) => {
                bump(&self.shared.stats.associations_aborted);
                warn!(peer = %self.peer, calling_ae = %self.calling_ae, "connection closed by the peer without release");
                self.ending = "closed without release";
                return;
            }
            ReceiveError::Read(e @ ReadError::Malformed { .. }) => {
                (AbortRQServiceProviderReason::InvalidPduParameter, e.to_string())
            }
            ReceiveError::Read(e @ ReadError::Io(_)) => (
                AbortRQServiceProviderReason::ReasonNotSpecified,
                format!("receive failed: {e}"),
            ),
        };
        self.abort(abort(reason, why)).await;
    }

    /// Sends A-ABORT (best effort) and closes the connection.
    async fn abort(&mut self, a: Abort) {
        bump(&self.shared.stats.associations_aborted);
        self.ending = "aborted by the node";
        warn!(peer = %self.peer, calling_ae = %self.calling_ae, reason = %a.reason, why = %a.why, "aborting association");
        let pdu = Pdu::AbortRQ {
            source: AbortRQSource::ServiceProvider(a.reason),
        };
        if let Err(e) = self.send(&pdu).await {
            debug!(peer = %self.peer, error = %e, "cannot send A-ABORT");
        }
        self.link.close().await;
    }

    /// Feeds one PDV to the reassembly, counts its data bytes and answers the message it
    /// completes.
    async fn on_pdv(&mut self, pdv: PDataValue) -> Result<(), Abort> {
        let fed = self.reassembly.feed(pdv)?;
        if fed.data_bytes > 0 {
            let stats = &self.shared.stats;
            stats.bytes_received.fetch_add(fed.data_bytes as u64, Ordering::Relaxed);
        }
        match &fed.dropped {
            Some((sop_instance, Dropped::OverCap)) => {
                warn!(peer = %self.peer, calling_ae = %self.calling_ae, sop_instance = %sop_instance,
                    max_instance_mb = self.shared.config.max_instance_mb, "data set over the size limit: draining");
            }
            Some((sop_instance, Dropped::Staging(e))) => {
                warn!(peer = %self.peer, calling_ae = %self.calling_ae, sop_instance = %sop_instance,
                    error = %e, "cannot stage the data set: draining");
            }
            None => {}
        }
        match fed.message {
            Some(message) => self.on_message(message).await,
            None => Ok(()),
        }
    }

    async fn on_message(&mut self, message: Message) -> Result<(), Abort> {
        let Message {
            pc,
            context,
            command,
            data,
        } = message;
        match action(command.field, data) {
            Action::Echo => {
                bump(&self.shared.stats.echo_requests);
                debug!(peer = %self.peer, calling_ae = %self.calling_ae, "C-ECHO");
                self.respond(pc, &command, echo_sop_class(&command), STATUS_SUCCESS, None)
                    .await
            }
            Action::Ignore => {
                debug!(peer = %self.peer, "C-CANCEL ignored (no operation pending)");
                Ok(())
            }
            Action::Store(data) => {
                bump(&self.shared.stats.instances_received);
                let (status, comment) = self.store(&context, &command, data).await;
                self.respond(pc, &command, &command.affected_sop_class, status, comment.as_deref())
                    .await
            }
            Action::Refuse(refusal) => {
                let why = refusal.why();
                match refusal {
                    Refusal::StoreWithoutDataSet => {
                        bump(&self.shared.stats.instances_failed);
                        warn!(peer = %self.peer, calling_ae = %self.calling_ae, sop_instance = %command.affected_sop_instance, why);
                    }
                    Refusal::Unrecognized => {
                        let field = command.field;
                        warn!(peer = %self.peer, calling_ae = %self.calling_ae, command_field = format!("0x{field:04X}"),
                            abstract_syntax = %context.abstract_syntax, "unsupported DIMSE operation");
                    }
                }
                self.respond(pc, &command, &command.affected_sop_class, refusal.status(), Some(why))
                    .await
            }
        }
    }

    /// Decides the C-STORE status: checks, then the sink on a blocking thread; counts and logs
    /// the end.
    async fn store(&mut self, context: &Context, command: &Command, data: DataSet) -> (u16, Option<String>) {
        let bytes = data.total;
        let end = match check_store(context, &command.affected_sop_class, &data, &self.shared.config) {
            Some(end) => end,
            None => self.to_sink(context, command, data.bytes).await,
        };
        self.record(command, &end, bytes);
        end.response()
    }

    /// The pre-parse and the sink, on a blocking thread.
    async fn to_sink(&self, context: &Context, command: &Command, dataset: DataSetBuffer) -> StoreEnd {
        let instance = ReceivedInstance {
            calling_ae: self.calling_ae.clone(),
            peer: self.peer,
            sop_class_uid: command.affected_sop_class.clone(),
            sop_instance_uid: command.affected_sop_instance.clone(),
            transfer_syntax: context.transfer_syntax.clone(),
            dataset,
        };
        let sink = self.shared.sink.clone();
        let cap = self.shared.config.max_instance_bytes();
        let outcome = tokio::task::spawn_blocking(move || -> Result<StoreOutcome, MalformedDataSet> {
            check_data_set(&instance.dataset, &instance.transfer_syntax, cap)?;
            Ok(sink.store(instance))
        })
        .await;
        match outcome {
            Ok(outcome) => sink_end(outcome),
            Err(e) => {
                error!(peer = %self.peer, sop_instance = %command.affected_sop_instance, error = %e, "instance sink panicked");
                StoreEnd::Failed {
                    status: STATUS_PROCESSING_FAILURE,
                    why: "internal error while storing".into(),
                }
            }
        }
    }

    /// Counts and logs how a C-STORE of `bytes` data set bytes ended.
    fn record(&self, command: &Command, end: &StoreEnd, bytes: u64) {
        let stats = &self.shared.stats;
        let (peer, calling_ae) = (self.peer, &self.calling_ae);
        let (sop_class, sop_instance) = (&command.affected_sop_class, &command.affected_sop_instance);
        match end {
            StoreEnd::Stored => {
                count(&self.tally.stored);
                bump(&stats.instances_stored);
                debug!(%peer, calling_ae = %calling_ae, sop_instance = %sop_instance, "stored");
            }
            StoreEnd::Duplicate => {
                count(&self.tally.duplicates);
                bump(&stats.instances_stored);
                info!(%peer, calling_ae = %calling_ae, sop_instance = %sop_instance, "duplicate (already stored)");
            }
            StoreEnd::NotMr => {
                count(&self.tally.discarded);
                bump(&stats.instances_discarded);
                info!(%peer, calling_ae = %calling_ae, sop_class = %sop_class, sop_instance = %sop_instance,
                    bytes, "discarded: not an MR storage class (other_storage = discard)");
            }
            StoreEnd::DiscardedBySink { reason } => {
                count(&self.tally.discarded);
                bump(&stats.instances_discarded);
                info!(%peer, calling_ae = %calling_ae, sop_instance = %sop_instance, reason = %reason, "discarded by the spool");
            }
            StoreEnd::Failed { status, why } => {
                count(&self.tally.refused);
                bump(&stats.instances_failed);
                warn!(%peer, calling_ae = %calling_ae, sop_class = %sop_class, sop_instance = %sop_instance,
                    status = format!("0x{status:04X}"), why = %why, "C-STORE failed");
            }
        }
    }

    /// Sends a response command set on `pc`, split into fragments that fit the peer's maximum
    /// PDU length.
    async fn respond(
        &mut self,
        pc: u8,
        command: &Command,
        sop_class: &str,
        status: u16,
        error_comment: Option<&str>,
    ) -> Result<(), Abort> {
        let bytes = Response {
            field: command.field | RESPONSE_BIT,
            message_id_responded: command.message_id,
            sop_class,
            sop_instance: &command.affected_sop_instance,
            status,
            error_comment,
        }
        .encode();
        for pdu in response_pdus(pc, &bytes, self.peer_max_pdu) {
            if let Err(e) = self.send(&pdu).await {
                // The connection is gone; nothing more can be said to the peer.
                return Err(abort(
                    AbortRQServiceProviderReason::ReasonNotSpecified,
                    format!("cannot send the response: {e}"),
                ));
            }
        }
        Ok(())
    }
}

/// Resolves when the shutdown flag is true or its sender is gone.
async fn wait_for_shutdown(shutdown: &mut watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}
