//! The accept loop and one task per association: AE checks, presentation contexts, DIMSE
//! reassembly, C-ECHO and C-STORE, release and abort.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dicom_ul::association::server::{AccessControl, AsyncServerAssociation, ServerAssociationOptions};
use dicom_ul::association::{Association, Error as UlError};
use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AbortRQSource, AssociationRJ, AssociationRJResult,
    AssociationRJServiceProviderPresentationReason, AssociationRJServiceUserReason, AssociationRJSource, PDataValue,
    PDataValueType, Pdu, PresentationContextResultReason, ReadError, UserIdentity,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use super::config::{AllowedCalling, OtherStorage, ScpConfig, ScpSettings};
use super::dimse::{
    C_CANCEL_RQ, C_ECHO_RQ, C_STORE_RQ, Command, MAX_COMMAND_SET, RESPONSE_BIT, Response, STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES, STATUS_PROCESSING_FAILURE, STATUS_SOP_CLASS_NOT_SUPPORTED, STATUS_SUCCESS,
    STATUS_UNRECOGNIZED_OPERATION, parse_command,
};
use super::limits::{MalformedDataSet, check_element_lengths_limited};
use super::syntax::{
    ACCEPTED_TRANSFER_SYNTAXES, MR_STORAGE_CLASSES, OTHER_STORAGE_CLASSES, VERIFICATION, is_mr_storage, trim_uid,
};
use super::{InstanceSink, ReceivedInstance, StoreOutcome};
use crate::dimse::pdu_name;

/// Largest A-ASSOCIATE-RQ read (and discarded) when answering "too many associations".
const MAX_REJECTED_RQ: u32 = 256 * 1024;

/// Why the SCP cannot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The listen address cannot be bound.
    #[error("scp.bind: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Counters of the SCP, readable at any time by the metrics layer (relaxed atomics).
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Associations accepted (A-ASSOCIATE-AC sent).
    pub associations_accepted: AtomicU64,
    /// Associations rejected (A-ASSOCIATE-RJ: AE titles, too many associations) or not
    /// established (no or unreadable A-ASSOCIATE-RQ).
    pub associations_rejected: AtomicU64,
    /// Accepted associations that ended without a release: aborted by us (protocol violation,
    /// oversized PDU, timeout, shutdown) or by the peer, or a dropped connection.
    pub associations_aborted: AtomicU64,
    /// Associations being served right now.
    pub associations_active: AtomicU64,
    /// C-ECHO requests answered.
    pub echo_requests: AtomicU64,
    /// C-STORE requests whose data set arrived completely.
    pub instances_received: AtomicU64,
    /// Instances the sink stored (including idempotent duplicates).
    pub instances_stored: AtomicU64,
    /// Instances accepted and not kept (other storage classes under `discard`, or the sink's
    /// decision).
    pub instances_discarded: AtomicU64,
    /// C-STORE requests answered with a failure status.
    pub instances_failed: AtomicU64,
    /// Data set bytes received in C-STORE requests.
    pub bytes_received: AtomicU64,
}

/// A copy of [`IngestStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct IngestStatsSnapshot {
    pub associations_accepted: u64,
    pub associations_rejected: u64,
    pub associations_aborted: u64,
    pub associations_active: u64,
    pub echo_requests: u64,
    pub instances_received: u64,
    pub instances_stored: u64,
    pub instances_discarded: u64,
    pub instances_failed: u64,
    pub bytes_received: u64,
}

impl IngestStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> IngestStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        IngestStatsSnapshot {
            associations_accepted: get(&self.associations_accepted),
            associations_rejected: get(&self.associations_rejected),
            associations_aborted: get(&self.associations_aborted),
            associations_active: get(&self.associations_active),
            echo_requests: get(&self.echo_requests),
            instances_received: get(&self.instances_received),
            instances_stored: get(&self.instances_stored),
            instances_discarded: get(&self.instances_discarded),
            instances_failed: get(&self.instances_failed),
            bytes_received: get(&self.bytes_received),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Binds the checked `bind` address.
pub async fn bind(settings: &ScpSettings) -> Result<TcpListener, IngestError> {
    let addr = settings.bind;
    TcpListener::bind(addr)
        .await
        .map_err(|source| IngestError::Bind { addr, source })
}

/// Serves DICOM associations on `listener` until `shutdown` turns true (or its sender is
/// dropped). Each association runs in its own task; instances go to `sink.store` on a blocking
/// thread and the C-STORE-RSP is sent only after it returns. On shutdown, idle associations are
/// aborted, busy ones finish their current message, and after `read_timeout_s` (+5 s) whatever
/// is left is cancelled. Needs a multi-thread tokio runtime.
pub async fn serve(
    listener: TcpListener,
    settings: Arc<ScpSettings>,
    sink: Arc<dyn InstanceSink>,
    stats: Arc<IngestStats>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), IngestError> {
    let config = Arc::new(settings.config.clone());
    let allowed = settings.allowed.clone();
    let mut abstract_syntaxes: Vec<&'static str> = vec![VERIFICATION];
    abstract_syntaxes.extend(MR_STORAGE_CLASSES);
    if config.other_storage != OtherStorage::Refuse {
        abstract_syntaxes.extend(OTHER_STORAGE_CLASSES);
    }
    let shared = Arc::new(Shared {
        config: config.clone(),
        allowed,
        sink,
        stats,
        abstract_syntaxes,
        shutdown: shutdown.clone(),
    });
    let slots = Arc::new(Semaphore::new(config.max_associations));
    let reject_slots = Arc::new(Semaphore::new(config.max_associations));
    let mut tasks = JoinSet::new();
    let local = listener.local_addr().ok();
    info!(addr = ?local, ae_title = %config.ae_title, max_pdu = config.max_pdu, "DICOM SCP listening");
    if *shutdown.borrow_and_update() {
        return Ok(());
    }
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow_and_update() {
                    break;
                }
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done
                    && e.is_panic()
                {
                    error!(error = %e, "association task panicked");
                }
            }
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if let Err(e) = socket.set_nodelay(true) {
                    warn!(%peer, error = %e, "cannot set TCP_NODELAY");
                }
                match slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        tasks.spawn(handle_association(shared.clone(), socket, peer, permit));
                    }
                    Err(_) => {
                        bump(&shared.stats.associations_rejected);
                        if let Ok(permit) = reject_slots.clone().try_acquire_owned() {
                            let limit = config.max_associations;
                            tasks.spawn(reject_busy(socket, peer, config.read_timeout(), limit, permit));
                        } else {
                            warn!(%peer, max_associations = config.max_associations,
                                "connection dropped: too many concurrent associations and rejections");
                        }
                    }
                }
            }
        }
    }
    drop(listener);
    info!(active = tasks.len(), "DICOM SCP shutting down");
    let grace = config.read_timeout() + Duration::from_secs(5);
    let drained = tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        warn!(
            left = tasks.len(),
            "associations still running after the grace period: cancelled"
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    Ok(())
}

struct Shared {
    config: Arc<ScpConfig>,
    allowed: Vec<AllowedCalling>,
    sink: Arc<dyn InstanceSink>,
    stats: Arc<IngestStats>,
    abstract_syntaxes: Vec<&'static str>,
    shutdown: watch::Receiver<bool>,
}

/// Called/calling AE checks, with the peer address for `AE@host` entries.
struct AeGate {
    shared: Arc<Shared>,
    peer: SocketAddr,
}

impl AccessControl for AeGate {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        let peer = self.peer;
        if self.shared.config.check_called_ae && called_ae_title != this_ae_title {
            warn!(%peer, calling_ae = calling_ae_title, called_ae = called_ae_title,
                "association rejected: called AE title is not ours");
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        let allowed = &self.shared.allowed;
        if !allowed.is_empty() && !allowed.iter().any(|a| a.matches(calling_ae_title, peer.ip())) {
            warn!(%peer, calling_ae = calling_ae_title, called_ae = called_ae_title,
                "association rejected: calling AE title not allowed from this address");
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        Ok(())
    }
}

/// Decrements the active gauge when the association task ends, however it ends.
struct ActiveGuard(Arc<IngestStats>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.associations_active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Reads the A-ASSOCIATE-RQ of a peer over the association limit (at most 256 KiB, allocated
/// as it arrives), logs who it was and answers A-ASSOCIATE-RJ (transient, service provider
/// presentation, local limit exceeded).
async fn reject_busy(
    mut socket: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
    limit: usize,
    _permit: OwnedSemaphorePermit,
) {
    let answer = async {
        let mut pdu = vec![0u8; 6];
        socket.read_exact(&mut pdu).await?;
        let length = u32::from_be_bytes([pdu[2], pdu[3], pdu[4], pdu[5]]);
        if pdu[0] != 0x01 || length > MAX_REJECTED_RQ {
            return Ok::<_, std::io::Error>(None);
        }
        (&mut socket).take(u64::from(length)).read_to_end(&mut pdu).await?;
        let calling = match dicom_ul::read_pdu(&pdu[..], MAX_REJECTED_RQ, false) {
            Ok(Some(Pdu::AssociationRQ(rq))) => rq.calling_ae_title,
            _ => return Ok(None),
        };
        let rj = Pdu::AssociationRJ(AssociationRJ {
            result: AssociationRJResult::Transient,
            source: AssociationRJSource::ServiceProviderPresentation(
                AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
            ),
        });
        let mut bytes = Vec::new();
        dicom_ul::pdu::write_pdu(&mut bytes, &rj).map_err(std::io::Error::other)?;
        socket.write_all(&bytes).await?;
        socket.shutdown().await?;
        Ok(Some(calling))
    };
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(Some(calling_ae))) => warn!(%peer, calling_ae = %calling_ae, max_associations = limit,
            "association rejected (transient): too many concurrent associations"),
        Ok(Ok(None)) => warn!(%peer, max_associations = limit,
            "over the association limit and no readable A-ASSOCIATE-RQ: dropped"),
        Ok(Err(e)) => warn!(%peer, max_associations = limit, error = %e,
            "over the association limit: connection failed"),
        Err(_) => warn!(%peer, max_associations = limit, "over the association limit and silent: dropped"),
    }
}

async fn handle_association(shared: Arc<Shared>, socket: TcpStream, peer: SocketAddr, _permit: OwnedSemaphorePermit) {
    let stats = shared.stats.clone();
    stats.associations_active.fetch_add(1, Ordering::Relaxed);
    let _active = ActiveGuard(stats.clone());
    let config = shared.config.clone();
    let timeout = config.read_timeout();
    let mut options = ServerAssociationOptions::new()
        .ae_access_control(AeGate {
            shared: shared.clone(),
            peer,
        })
        .ae_title(config.ae_title.clone())
        .max_pdu_length(config.max_pdu)
        .strict(true)
        .read_timeout(timeout)
        .write_timeout(timeout);
    for uid in &shared.abstract_syntaxes {
        options = options.with_abstract_syntax(*uid);
    }
    for uid in ACCEPTED_TRANSFER_SYNTAXES {
        options = options.with_transfer_syntax(*uid);
    }
    let association = match options.establish_async(socket).await {
        Ok(association) => association,
        Err(UlError::Rejected { .. }) => {
            // The AE gate logged the reason with the titles.
            bump(&stats.associations_rejected);
            return;
        }
        Err(UlError::Timeout { .. }) => {
            bump(&stats.associations_rejected);
            warn!(%peer, timeout_s = config.read_timeout_s, "no A-ASSOCIATE-RQ in time: connection dropped");
            return;
        }
        Err(e) => {
            bump(&stats.associations_rejected);
            warn!(%peer, error = %chain(&e), "association not established");
            return;
        }
    };
    let contexts: HashMap<u8, Context> = association
        .presentation_contexts()
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
        .collect();
    let refused = association.presentation_contexts().len() - contexts.len();
    let calling_ae = association.peer_ae_title().trim().to_owned();
    info!(%peer, calling_ae = %calling_ae, called_ae = association.called_ae_title(),
        accepted_contexts = contexts.len(), refused_contexts = refused, "association accepted");
    bump(&stats.associations_accepted);
    let mut session = Session {
        shared,
        peer,
        calling_ae,
        contexts,
        association,
    };
    session.run().await;
}

#[derive(Clone, Debug)]
struct Context {
    abstract_syntax: String,
    transfer_syntax: String,
}

/// Where the reassembly of the current DIMSE message stands.
enum State {
    Idle,
    Command {
        pc: u8,
        bytes: Vec<u8>,
    },
    Data {
        pc: u8,
        command: Command,
        bytes: Vec<u8>,
        /// Bytes received so far (also counted when over the cap and dropped).
        total: u64,
        /// The data set went over `max_instance_mb`: the rest is drained and dropped.
        over_cap: bool,
    },
}

/// A reason to abort the association.
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

struct Session {
    shared: Arc<Shared>,
    peer: SocketAddr,
    calling_ae: String,
    contexts: HashMap<u8, Context>,
    association: AsyncServerAssociation<TcpStream>,
}

impl Session {
    async fn run(&mut self) {
        let mut state = State::Idle;
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            let received = if matches!(state, State::Idle) {
                tokio::select! {
                    received = self.association.receive() => Some(received),
                    _ = wait_for_shutdown(&mut shutdown) => None,
                }
            } else {
                Some(self.association.receive().await)
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
                        if let Err(a) = self.on_pdv(&mut state, pdv).await {
                            self.abort(a).await;
                            return;
                        }
                    }
                }
                Pdu::ReleaseRQ => {
                    if !matches!(state, State::Idle) {
                        warn!(peer = %self.peer, calling_ae = %self.calling_ae, "release requested in the middle of a message");
                    }
                    if let Err(e) = self.association.send(&Pdu::ReleaseRP).await {
                        warn!(peer = %self.peer, error = %chain(&e), "cannot send A-RELEASE-RP");
                    }
                    let _ = self.association.inner_stream().shutdown().await;
                    info!(peer = %self.peer, calling_ae = %self.calling_ae, "association released");
                    return;
                }
                Pdu::AbortRQ { source } => {
                    bump(&self.shared.stats.associations_aborted);
                    info!(peer = %self.peer, calling_ae = %self.calling_ae, ?source, "association aborted by the peer");
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

    async fn receive_failed(&mut self, e: UlError) {
        let (reason, why) = match &e {
            UlError::ReceivePdu {
                source:
                    ReadError::PduTooLarge {
                        pdu_length,
                        max_pdu_length,
                        ..
                    },
                ..
            } => (
                AbortRQServiceProviderReason::InvalidPduParameter,
                format!("PDU of {pdu_length} bytes exceeds the negotiated maximum of {max_pdu_length}"),
            ),
            UlError::Timeout { .. } => (
                AbortRQServiceProviderReason::ReasonNotSpecified,
                format!("peer silent for {} s", self.shared.config.read_timeout_s),
            ),
            UlError::ConnectionClosed { .. } => {
                bump(&self.shared.stats.associations_aborted);
                warn!(peer = %self.peer, calling_ae = %self.calling_ae, "connection closed by the peer without release");
                return;
            }
            UlError::ReceivePdu { .. } => (
                AbortRQServiceProviderReason::InvalidPduParameter,
                format!("unreadable PDU: {}", chain(&e)),
            ),
            _ => (
                AbortRQServiceProviderReason::ReasonNotSpecified,
                format!("receive failed: {}", chain(&e)),
            ),
        };
        self.abort(abort(reason, why)).await;
    }

    /// Sends A-ABORT (best effort) and closes the connection.
    async fn abort(&mut self, a: Abort) {
        bump(&self.shared.stats.associations_aborted);
        warn!(peer = %self.peer, calling_ae = %self.calling_ae, reason = %a.reason, why = %a.why, "aborting association");
        let pdu = Pdu::AbortRQ {
            source: AbortRQSource::ServiceProvider(a.reason),
        };
        if let Err(e) = self.association.send(&pdu).await {
            debug!(peer = %self.peer, error = %chain(&e), "cannot send A-ABORT");
        }
        let _ = self.association.inner_stream().shutdown().await;
    }

    async fn on_pdv(&mut self, state: &mut State, pdv: PDataValue) -> Result<(), Abort> {
        let PDataValue {
            presentation_context_id: pc,
            value_type,
            is_last,
            data,
        } = pdv;
        let Some(context) = self.contexts.get(&pc).cloned() else {
            return Err(abort(
                AbortRQServiceProviderReason::UnexpectedPduParameter,
                format!("PDV on presentation context {pc}, which was not accepted"),
            ));
        };
        match (std::mem::replace(state, State::Idle), value_type) {
            (State::Idle, PDataValueType::Command) => self.command_fragment(state, pc, data, is_last, &context).await,
            (State::Command { pc: current, mut bytes }, PDataValueType::Command) if current == pc => {
                bytes.extend_from_slice(&data);
                self.command_fragment(state, pc, bytes, is_last, &context).await
            }
            (
                State::Data {
                    pc: current,
                    command,
                    mut bytes,
                    mut total,
                    mut over_cap,
                },
                PDataValueType::Data,
            ) if current == pc => {
                let stats = &self.shared.stats;
                stats.bytes_received.fetch_add(data.len() as u64, Ordering::Relaxed);
                total += data.len() as u64;
                let cap = self.shared.config.max_instance_bytes();
                if !over_cap && bytes.len().saturating_add(data.len()) <= cap {
                    bytes.extend_from_slice(&data);
                } else if !over_cap {
                    over_cap = true;
                    bytes = Vec::new();
                    warn!(peer = %self.peer, calling_ae = %self.calling_ae, sop_instance = %command.affected_sop_instance,
                        max_instance_mb = self.shared.config.max_instance_mb, "data set over the size limit: draining");
                }
                if !is_last {
                    *state = State::Data {
                        pc,
                        command,
                        bytes,
                        total,
                        over_cap,
                    };
                    return Ok(());
                }
                self.message_with_data(pc, &context, command, bytes, total, over_cap)
                    .await
            }
            (previous, value_type) => {
                let expected = match previous {
                    State::Idle => "a command".to_owned(),
                    State::Command { pc, .. } => format!("command fragments on context {pc}"),
                    State::Data { pc, .. } => format!("data fragments on context {pc}"),
                };
                Err(abort(
                    AbortRQServiceProviderReason::UnexpectedPduParameter,
                    format!("{value_type:?} fragment on context {pc} while expecting {expected}"),
                ))
            }
        }
    }

    async fn command_fragment(
        &mut self,
        state: &mut State,
        pc: u8,
        bytes: Vec<u8>,
        is_last: bool,
        context: &Context,
    ) -> Result<(), Abort> {
        if bytes.len() > MAX_COMMAND_SET {
            return Err(abort(
                AbortRQServiceProviderReason::InvalidPduParameter,
                format!("command set longer than {MAX_COMMAND_SET} bytes"),
            ));
        }
        if !is_last {
            *state = State::Command { pc, bytes };
            return Ok(());
        }
        let command = parse_command(&bytes)
            .map_err(|e| abort(AbortRQServiceProviderReason::InvalidPduParameter, e.to_string()))?;
        if command.field & RESPONSE_BIT != 0 {
            return Err(abort(
                AbortRQServiceProviderReason::UnexpectedPduParameter,
                format!("received a response command (0x{:04X})", command.field),
            ));
        }
        if command.has_data_set {
            *state = State::Data {
                pc,
                command,
                bytes: Vec::new(),
                total: 0,
                over_cap: false,
            };
            return Ok(());
        }
        match command.field {
            C_ECHO_RQ => {
                bump(&self.shared.stats.echo_requests);
                debug!(peer = %self.peer, calling_ae = %self.calling_ae, "C-ECHO");
                let sop_class = if command.affected_sop_class.is_empty() {
                    VERIFICATION
                } else {
                    command.affected_sop_class.as_str()
                };
                self.respond(pc, &command, sop_class, STATUS_SUCCESS, None).await
            }
            C_CANCEL_RQ => {
                debug!(peer = %self.peer, "C-CANCEL ignored (no operation pending)");
                Ok(())
            }
            C_STORE_RQ => {
                bump(&self.shared.stats.instances_failed);
                let why = "C-STORE-RQ without a data set";
                warn!(peer = %self.peer, calling_ae = %self.calling_ae, sop_instance = %command.affected_sop_instance, why);
                let sop_class = command.affected_sop_class.clone();
                self.respond(pc, &command, &sop_class, STATUS_CANNOT_UNDERSTAND, Some(why))
                    .await
            }
            other => self.unrecognized(pc, context, &command, other).await,
        }
    }

    async fn unrecognized(&mut self, pc: u8, context: &Context, command: &Command, field: u16) -> Result<(), Abort> {
        warn!(peer = %self.peer, calling_ae = %self.calling_ae, command_field = format!("0x{field:04X}"),
            abstract_syntax = %context.abstract_syntax, "unsupported DIMSE operation");
        let sop_class = command.affected_sop_class.clone();
        self.respond(
            pc,
            command,
            &sop_class,
            STATUS_UNRECOGNIZED_OPERATION,
            Some("unsupported DIMSE operation"),
        )
        .await
    }

    async fn message_with_data(
        &mut self,
        pc: u8,
        context: &Context,
        command: Command,
        bytes: Vec<u8>,
        total: u64,
        over_cap: bool,
    ) -> Result<(), Abort> {
        if command.field != C_STORE_RQ {
            return self.unrecognized(pc, context, &command, command.field).await;
        }
        bump(&self.shared.stats.instances_received);
        let (status, comment) = self.store(context, &command, bytes, total, over_cap).await;
        let sop_class = command.affected_sop_class.clone();
        self.respond(pc, &command, &sop_class, status, comment.as_deref()).await
    }

    /// Decides the C-STORE status: checks, then the sink on a blocking thread.
    async fn store(
        &mut self,
        context: &Context,
        command: &Command,
        dataset: Vec<u8>,
        total: u64,
        over_cap: bool,
    ) -> (u16, Option<String>) {
        let stats = self.shared.stats.clone();
        let (peer, calling_ae) = (self.peer, self.calling_ae.clone());
        let sop_class = command.affected_sop_class.clone();
        let sop_instance = command.affected_sop_instance.clone();
        let fail = |status: u16, why: String| {
            bump(&stats.instances_failed);
            warn!(%peer, calling_ae = %calling_ae, sop_class = %sop_class, sop_instance = %sop_instance,
                status = format!("0x{status:04X}"), why = %why, "C-STORE failed");
            (status, Some(why))
        };
        if sop_class != context.abstract_syntax {
            let why = format!(
                "SOP class {sop_class} does not match presentation context {}",
                context.abstract_syntax
            );
            return fail(STATUS_SOP_CLASS_NOT_SUPPORTED, why);
        }
        if over_cap {
            let why = format!(
                "data set of {total} bytes exceeds max_instance_mb = {}",
                self.shared.config.max_instance_mb
            );
            return fail(STATUS_OUT_OF_RESOURCES, why);
        }
        if !is_mr_storage(&sop_class) && self.shared.config.other_storage == OtherStorage::Discard {
            bump(&stats.instances_discarded);
            info!(%peer, calling_ae = %calling_ae, sop_class = %sop_class, sop_instance = %sop_instance,
                bytes = dataset.len(), "discarded: not an MR storage class (other_storage = discard)");
            return (STATUS_SUCCESS, None);
        }
        let instance = ReceivedInstance {
            calling_ae: calling_ae.clone(),
            peer,
            sop_class_uid: sop_class.clone(),
            sop_instance_uid: sop_instance.clone(),
            transfer_syntax: context.transfer_syntax.clone(),
            dataset,
        };
        let sink = self.shared.sink.clone();
        let cap = self.shared.config.max_instance_bytes();
        let outcome = tokio::task::spawn_blocking(move || -> Result<StoreOutcome, MalformedDataSet> {
            check_element_lengths_limited(&instance.dataset, &instance.transfer_syntax, cap)?;
            Ok(sink.store(instance))
        })
        .await;
        match outcome {
            Ok(Ok(StoreOutcome::Stored)) => {
                bump(&stats.instances_stored);
                debug!(%peer, calling_ae = %calling_ae, sop_instance = %sop_instance, "stored");
                (STATUS_SUCCESS, None)
            }
            Ok(Ok(StoreOutcome::Duplicate)) => {
                bump(&stats.instances_stored);
                info!(%peer, calling_ae = %calling_ae, sop_instance = %sop_instance, "duplicate (already stored)");
                (STATUS_SUCCESS, None)
            }
            Ok(Ok(StoreOutcome::Discarded { reason })) => {
                bump(&stats.instances_discarded);
                info!(%peer, calling_ae = %calling_ae, sop_instance = %sop_instance, reason = %reason, "discarded by the spool");
                (STATUS_SUCCESS, None)
            }
            Ok(Ok(StoreOutcome::Failed { status, reason })) => {
                let status = if status == STATUS_SUCCESS {
                    STATUS_PROCESSING_FAILURE
                } else {
                    status
                };
                fail(status, reason)
            }
            Ok(Err(malformed)) => fail(STATUS_CANNOT_UNDERSTAND, malformed.message),
            Err(e) => {
                error!(%peer, sop_instance = %sop_instance, error = %e, "instance sink panicked");
                fail(STATUS_PROCESSING_FAILURE, "internal error while storing".into())
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
        // PDU length = 4 (PDV length) + 2 (context id, header) + fragment.
        let chunk = (self.association.requestor_max_pdu_length() as usize)
            .saturating_sub(6)
            .max(1);
        let pieces: Vec<&[u8]> = bytes.chunks(chunk).collect();
        let n = pieces.len();
        for (i, piece) in pieces.into_iter().enumerate() {
            let pdu = Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: pc,
                    value_type: PDataValueType::Command,
                    is_last: i + 1 == n,
                    data: piece.to_vec(),
                }],
            };
            if let Err(e) = self.association.send(&pdu).await {
                // The connection is gone; nothing more can be said to the peer.
                return Err(abort(
                    AbortRQServiceProviderReason::ReasonNotSpecified,
                    format!("cannot send the response: {}", chain(&e)),
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

/// An error with its sources, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
