//! The C-STORE SCU: one association per batch of files, one C-STORE per file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dicom_ul::association::client::AsyncClientAssociation;
use dicom_ul::association::{ClientAssociationOptions, Error as UlError};
use dicom_ul::pdu::{AssociationRJResult, PDV_HEADER_SIZE, PDataValue, PDataValueType, Pdu};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::dimse::{self, C_ECHO_RSP, C_STORE_RSP};
use super::fault::{DeliveryFault, FaultReason, StatusClass, status_class};
use super::files::{EXPLICIT_VR_LE, FileError, FileInfo, IMPLICIT_VR_LE, Loaded, scan, transcodable};
use super::settings::{Destination, check_ae_title};
use super::tls::{Relay, TlsClient};
use crate::dicom_build::is_uid;
use crate::dimse::{MAX_COMMAND_SET, VERIFICATION, pdu_name, ul_error_text};

/// Presentation contexts one association can carry (odd IDs 1..=255).
const MAX_CONTEXTS: usize = 128;

/// A file the destination stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// C-STORE-RSP status: 0x0000, or a warning status (see [`super::status_class`]).
    pub status: u16,
    /// The warning's meaning and Error Comment, for warning statuses.
    pub warning: Option<String>,
    /// Transfer syntax the data set was sent in.
    pub transfer_syntax: String,
    /// Whether the data set was re-encoded from the file's transfer syntax.
    pub transcoded: bool,
}

/// What happened to one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileOutcome {
    /// The file, as passed to [`send`].
    pub path: PathBuf,
    /// Its SOP Instance UID, when the file meta information could be read.
    pub sop_instance_uid: Option<String>,
    /// Stored, or why not (with [`DeliveryFault::kind`] telling whether to retry).
    pub result: Result<Stored, DeliveryFault>,
}

/// Who we talk to, for messages.
pub(super) struct Ctx<'a> {
    pub(super) dest: &'a Destination,
    pub(super) peer: String,
}

impl<'a> Ctx<'a> {
    /// What every association to `dest` starts from: the context for messages, the TLS client
    /// when `[destinations.tls]` is set, and the calling AE title (ours unless overridden),
    /// each checked.
    pub(super) fn open(
        dest: &'a Destination,
        node_ae: &str,
    ) -> Result<(Self, Option<TlsClient>, String), DeliveryFault> {
        let ctx = Ctx {
            dest,
            peer: dest.peer(),
        };
        let tls = dest
            .prepare()
            .map_err(|e| ctx.fault(None, FaultReason::InvalidDestination(e.to_string())))?;
        let calling_ae = dest.calling_ae(node_ae).to_owned();
        check_ae_title(&calling_ae)
            .map_err(|m| ctx.fault(None, FaultReason::InvalidDestination(format!("calling AE title: {m}"))))?;
        Ok((ctx, tls, calling_ae))
    }

    pub(super) fn fault(&self, file: Option<&Path>, reason: FaultReason) -> DeliveryFault {
        DeliveryFault::new(&self.dest.name, &self.peer, file.map(Path::to_path_buf), reason)
    }
}

/// Sends `files` to `dest` by C-STORE and reports every file's outcome, in the order given.
///
/// `node_ae` is the calling AE title unless the destination overrides it. One association
/// carries all files (more only when more than 128 (SOP class, transfer syntax) pairs are
/// needed). For each pair it proposes the file's own transfer syntax plus Explicit and
/// Implicit VR Little Endian (only the file's own for encapsulated pixel data); a file goes as
/// stored when its syntax was accepted, else re-encoded into the accepted uncompressed one.
///
/// `Err` means the (first) association could not be used at all, so no file was offered: the
/// fault applies to every file. Otherwise each file has its own outcome: one file refused
/// does not fail the others, and when the association breaks midway the files already
/// acknowledged stay stored while the rest get a transient fault.
///
/// Needs a multi-thread tokio runtime (file reading and re-encoding run on blocking threads).
pub async fn send(dest: &Destination, node_ae: &str, files: &[PathBuf]) -> Result<Vec<FileOutcome>, DeliveryFault> {
    let (ctx, tls, calling_ae) = Ctx::open(dest, node_ae)?;

    let paths = files.to_vec();
    let scanned = tokio::task::spawn_blocking(move || paths.iter().map(|p| scan(p)).collect::<Vec<_>>())
        .await
        .map_err(|e| ctx.fault(None, FaultReason::Unreadable(format!("file scan task failed: {e}"))))?;

    let mut outcomes: Vec<Option<FileOutcome>> = vec![None; files.len()];
    // (SOP class, transfer syntax) → indices of the files.
    let mut groups: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    let mut infos: Vec<Option<FileInfo>> = Vec::with_capacity(files.len());
    for (i, scanned) in scanned.into_iter().enumerate() {
        match scanned {
            Ok(info) => {
                groups
                    .entry((info.sop_class.clone(), info.transfer_syntax.clone()))
                    .or_default()
                    .push(i);
                infos.push(Some(info));
            }
            Err(e) => {
                let fault = ctx.fault(Some(&files[i]), FaultReason::Unreadable(e.to_string()));
                warn!(%fault, "outbox file skipped");
                outcomes[i] = Some(FileOutcome {
                    path: files[i].clone(),
                    sop_instance_uid: None,
                    result: Err(fault),
                });
                infos.push(None);
            }
        }
    }

    let groups: Vec<((String, String), Vec<usize>)> = groups.into_iter().collect();
    for (n, batch) in groups.chunks(MAX_CONTEXTS).enumerate() {
        let keys: Vec<&(String, String)> = batch.iter().map(|(k, _)| k).collect();
        let mut order: Vec<usize> = batch.iter().flat_map(|(_, idx)| idx.iter().copied()).collect();
        order.sort_unstable();
        let mut assoc = match associate(&ctx, &calling_ae, &keys, tls.as_ref()).await {
            Ok(a) => a,
            Err(fault) if n == 0 => return Err(fault),
            Err(fault) => {
                for &i in &order {
                    outcomes[i] = Some(FileOutcome {
                        path: files[i].clone(),
                        sop_instance_uid: infos[i].as_ref().map(|f| f.sop_instance.clone()),
                        result: Err(ctx.fault(Some(&files[i]), (*fault.reason).clone())),
                    });
                }
                continue;
            }
        };
        let mut message_id: u16 = 0;
        let mut broken: Option<FaultReason> = None;
        for &i in &order {
            let path = &files[i];
            let Some(info) = infos[i].as_ref() else { continue };
            let result = match &broken {
                Some(cause) => Err(ctx.fault(Some(path), FaultReason::NotSent(cause.to_string()))),
                None => {
                    message_id = message_id.wrapping_add(1).max(1);
                    match store_one(&ctx, &mut assoc, path, info, message_id).await {
                        Ok(stored) => Ok(stored),
                        Err(StoreError::File(reason)) => Err(ctx.fault(Some(path), reason)),
                        Err(StoreError::Association(reason)) => {
                            broken = Some(reason.clone());
                            Err(ctx.fault(Some(path), reason))
                        }
                    }
                }
            };
            match &result {
                Ok(stored) => debug!(file = %path.display(), status = stored.status, "stored"),
                Err(fault) => warn!(%fault, "C-STORE not done"),
            }
            outcomes[i] = Some(FileOutcome {
                path: path.clone(),
                sop_instance_uid: Some(info.sop_instance.clone()),
                result,
            });
        }
        finish(&ctx, assoc, broken.is_some()).await;
    }

    Ok(outcomes
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            o.unwrap_or_else(|| FileOutcome {
                path: files[i].clone(),
                sop_instance_uid: None,
                result: Err(ctx.fault(Some(&files[i]), FaultReason::NotSent("internal: no outcome".into()))),
            })
        })
        .collect())
}

/// A destination that answered C-ECHO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Echoed {
    /// From connecting to the C-ECHO-RSP.
    pub elapsed: Duration,
}

/// Tests `dest` the way the outbox reaches it (same AE titles, TLS, timeouts and fault
/// reasons): one association proposing Verification, one C-ECHO, release.
pub async fn echo(dest: &Destination, node_ae: &str) -> Result<Echoed, DeliveryFault> {
    let start = std::time::Instant::now();
    let (ctx, tls, calling_ae) = Ctx::open(dest, node_ae)?;
    let key = (VERIFICATION.to_owned(), IMPLICIT_VR_LE.to_owned());
    let mut assoc = associate(&ctx, &calling_ae, &[&key], tls.as_ref()).await?;
    let during = "sending the C-ECHO-RQ";
    let Some(pc_id) = assoc.presentation_contexts().first().map(|pc| pc.id) else {
        finish(&ctx, assoc, true).await;
        return Err(ctx.fault(
            None,
            FaultReason::NoContextAtAll {
                proposed: VERIFICATION.into(),
            },
        ));
    };
    let sent = send_pdvs(
        &mut assoc,
        dest.max_pdu,
        pc_id,
        PDataValueType::Command,
        &dimse::c_echo_rq(1),
    )
    .await;
    let answer = match sent {
        Ok(()) => receive_rsp(&mut assoc, 1, C_ECHO_RSP).await.map_err(|e| match e {
            StoreError::File(reason) | StoreError::Association(reason) => reason,
        }),
        Err(e) => Err(reason_of(e, during, &[])),
    };
    let answer = answer.and_then(|rsp| match rsp.status {
        0x0000 => Ok(()),
        status => Err(FaultReason::Protocol {
            during: "C-ECHO".into(),
            detail: format!("status 0x{status:04X}"),
        }),
    });
    finish(&ctx, assoc, answer.is_err()).await;
    answer.map_err(|reason| ctx.fault(None, reason))?;
    Ok(Echoed {
        elapsed: start.elapsed(),
    })
}

/// Transfer syntaxes proposed for a file in `ts`.
fn proposal(ts: &str) -> Vec<String> {
    let mut list = vec![ts.to_owned()];
    if transcodable(ts) {
        for other in [EXPLICIT_VR_LE, IMPLICIT_VR_LE] {
            if other != ts {
                list.push(other.to_owned());
            }
        }
    }
    list
}

pub(super) async fn associate(
    ctx: &Ctx<'_>,
    calling_ae: &str,
    keys: &[&(String, String)],
    tls: Option<&TlsClient>,
) -> Result<AsyncClientAssociation<TcpStream>, DeliveryFault> {
    let dest = ctx.dest;
    let timeout = dest.timeout();
    let mut options = ClientAssociationOptions::new()
        .calling_ae_title(calling_ae.to_owned())
        .called_ae_title(dest.ae_title.clone())
        .max_pdu_length(dest.max_pdu)
        .connection_timeout(timeout)
        .read_timeout(timeout)
        .write_timeout(timeout);
    for (sop_class, ts) in keys {
        options = options.with_presentation_context(sop_class.clone(), proposal(ts));
    }
    let during = "establishing the association";
    let (address, mut relay) = match tls {
        Some(client) => {
            let relay = Relay::connect(client, &dest.host, dest.port, timeout)
                .await
                .map_err(|reason| ctx.fault(None, reason))?;
            (relay.addr().to_string(), Some(relay))
        }
        None => (format!("{}:{}", dest.host, dest.port), None),
    };
    let mut assoc = match options.establish_async(address.as_str()).await {
        Ok(assoc) => assoc,
        Err(e) => {
            let tls_failure = match relay {
                Some(relay) => relay.tls_failure().await,
                None => None,
            };
            let reason = match tls_failure {
                Some(detail) => FaultReason::Tls {
                    during: during.into(),
                    detail,
                },
                None => reason_of(e, during, keys),
            };
            return Err(ctx.fault(None, reason));
        }
    };
    if let Some(relay) = relay.as_mut()
        && let Err(reason) = relay.verify(assoc.inner_stream().local_addr()).await
    {
        let _ = assoc.abort().await;
        return Err(ctx.fault(None, reason));
    }
    // The A-ASSOCIATE-RQ went out as one write followed by a read, which Nagle does not delay;
    // everything after it needs TCP_NODELAY (dicom-ul connects itself and offers no hook).
    if let Err(e) = assoc.inner_stream().set_nodelay(true) {
        warn!(peer = %ctx.peer, error = %e, "cannot set TCP_NODELAY");
    }
    info!(
        destination = %dest.name,
        peer = %ctx.peer,
        tls = relay.is_some(),
        accepted = assoc.presentation_contexts().len(),
        proposed = keys.len(),
        peer_max_pdu = assoc.acceptor_max_pdu_length(),
        "association established"
    );
    Ok(assoc)
}

/// Maps a dicom-ul error to a fault reason; `during` says what we were doing.
pub(super) fn reason_of(e: UlError, during: &str, keys: &[&(String, String)]) -> FaultReason {
    let during = during.to_owned();
    match e {
        UlError::Connect { source, .. } | UlError::ToAddress { source, .. } => FaultReason::Connect(source.to_string()),
        UlError::Timeout { .. } => FaultReason::Timeout { during },
        UlError::Rejected { association_rj, .. } => FaultReason::Rejected {
            permanent: matches!(association_rj.result, AssociationRJResult::Permanent),
            reason: association_rj.source.to_string(),
        },
        UlError::NoAcceptedPresentationContexts { .. } => {
            let mut classes: Vec<&str> = keys.iter().map(|(c, _)| c.as_str()).collect();
            classes.dedup();
            FaultReason::NoContextAtAll {
                proposed: classes.join(", "),
            }
        }
        UlError::Aborted { .. } => FaultReason::Aborted { during },
        UlError::UnexpectedPdu { pdu, .. } if matches!(*pdu, Pdu::AbortRQ { .. }) => FaultReason::Aborted { during },
        UlError::ConnectionClosed { .. } => FaultReason::ConnectionLost {
            during,
            detail: "connection closed by the peer".into(),
        },
        UlError::WireSend { source, .. } | UlError::WireRead { source, .. } | UlError::Close { source, .. } => {
            FaultReason::ConnectionLost {
                during,
                detail: source.to_string(),
            }
        }
        UlError::ReceivePdu { source, .. } => {
            let detail = source.to_string();
            if std::error::Error::source(&source).is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some()) {
                FaultReason::ConnectionLost { during, detail }
            } else {
                FaultReason::Protocol { during, detail }
            }
        }
        other => FaultReason::Protocol {
            during,
            detail: ul_error_text(&other),
        },
    }
}

enum StoreError {
    /// This file failed; the association is still usable.
    File(FaultReason),
    /// The association is unusable (and this file failed with it).
    Association(FaultReason),
}

/// Picks the accepted context for a file: its own transfer syntax first, else an
/// uncompressed one it can be re-encoded into.
fn choose_context(assoc: &AsyncClientAssociation<TcpStream>, info: &FileInfo) -> Result<(u8, String), FaultReason> {
    let accepted: Vec<(u8, &str)> = assoc
        .presentation_contexts()
        .iter()
        .filter(|pc| pc.abstract_syntax.trim_end_matches('\0') == info.sop_class)
        .map(|pc| (pc.id, pc.transfer_syntax.trim_end_matches('\0')))
        .collect();
    if accepted.is_empty() {
        return Err(FaultReason::NoContext {
            sop_class: info.sop_class.clone(),
        });
    }
    if let Some((id, ts)) = accepted.iter().find(|(_, ts)| *ts == info.transfer_syntax) {
        return Ok((*id, (*ts).to_owned()));
    }
    let list = || accepted.iter().map(|(_, ts)| *ts).collect::<Vec<_>>().join(", ");
    if !transcodable(&info.transfer_syntax) {
        return Err(FaultReason::NotTranscodable {
            file_ts: info.transfer_syntax.clone(),
            accepted: list(),
            detail: "encapsulated (compressed) or unknown transfer syntax".into(),
        });
    }
    for target in [EXPLICIT_VR_LE, IMPLICIT_VR_LE] {
        if let Some((id, _)) = accepted.iter().find(|(_, ts)| *ts == target) {
            return Ok((*id, target.to_owned()));
        }
    }
    Err(FaultReason::NotTranscodable {
        file_ts: info.transfer_syntax.clone(),
        accepted: list(),
        detail: "no uncompressed little endian syntax accepted".into(),
    })
}

/// Sends one PDV (command or data), fragmented to the PDU size both sides allow.
pub(super) async fn send_pdvs(
    assoc: &mut AsyncClientAssociation<TcpStream>,
    max_pdu: u32,
    pc_id: u8,
    value_type: PDataValueType,
    bytes: &[u8],
) -> Result<(), UlError> {
    // A PDU of length L (after its 6-byte header) holds one PDV item: 4-byte length, context
    // ID, control header, then the fragment.
    let pdu_len = assoc.acceptor_max_pdu_length().min(max_pdu);
    let chunk = pdu_len.saturating_sub(PDV_HEADER_SIZE).max(1) as usize;
    let count = bytes.len().div_ceil(chunk).max(1);
    for n in 0..count {
        let piece = &bytes[(n * chunk).min(bytes.len())..((n + 1) * chunk).min(bytes.len())];
        let pdu = Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc_id,
                value_type: value_type.clone(),
                is_last: n + 1 == count,
                data: piece.to_vec(),
            }],
        };
        assoc.send(&pdu).await?;
    }
    Ok(())
}

/// Waits for the response (`command_field`, e.g. C-STORE-RSP) to `message_id`.
async fn receive_rsp(
    assoc: &mut AsyncClientAssociation<TcpStream>,
    message_id: u16,
    command_field: u16,
) -> Result<dimse::Rsp, StoreError> {
    let name = if command_field == C_ECHO_RSP {
        "C-ECHO-RSP"
    } else {
        "C-STORE-RSP"
    };
    let during = || format!("waiting for the {name} to message {message_id}");
    let mut command = Vec::new();
    loop {
        let pdu = assoc
            .receive()
            .await
            .map_err(|e| StoreError::Association(reason_of(e, &during(), &[])))?;
        match pdu {
            Pdu::PData { data } => {
                for pdv in data {
                    if pdv.value_type != PDataValueType::Command {
                        // A C-STORE-RSP has no data set; ignore stray data.
                        continue;
                    }
                    if command.len() + pdv.data.len() > MAX_COMMAND_SET {
                        return Err(StoreError::Association(FaultReason::Protocol {
                            during: during(),
                            detail: format!("command set larger than {MAX_COMMAND_SET} bytes"),
                        }));
                    }
                    command.extend_from_slice(&pdv.data);
                    if pdv.is_last {
                        let rsp = dimse::parse_rsp(&command).map_err(|e| {
                            StoreError::Association(FaultReason::Protocol {
                                during: during(),
                                detail: e.0,
                            })
                        })?;
                        if rsp.command_field != command_field || rsp.responding_to != message_id {
                            return Err(StoreError::Association(FaultReason::Protocol {
                                during: during(),
                                detail: format!(
                                    "got command 0x{:04X} responding to message {}",
                                    rsp.command_field, rsp.responding_to
                                ),
                            }));
                        }
                        return Ok(rsp);
                    }
                }
            }
            Pdu::AbortRQ { .. } => return Err(StoreError::Association(FaultReason::Aborted { during: during() })),
            other => {
                return Err(StoreError::Association(FaultReason::Protocol {
                    during: during(),
                    detail: format!("unexpected {}", pdu_name(&other)),
                }));
            }
        }
    }
}

async fn store_one(
    ctx: &Ctx<'_>,
    assoc: &mut AsyncClientAssociation<TcpStream>,
    path: &Path,
    info: &FileInfo,
    message_id: u16,
) -> Result<Stored, StoreError> {
    let (pc_id, ts) = choose_context(assoc, info).map_err(StoreError::File)?;
    let transcode = ts != info.transfer_syntax;
    let owned = path.to_path_buf();
    let target = ts.clone();
    let (loaded_info, dataset) = tokio::task::spawn_blocking(move || -> Result<(FileInfo, Vec<u8>), FileError> {
        let loaded = Loaded::read(&owned)?;
        let dataset = if loaded.info.transfer_syntax == target {
            loaded.dataset().to_vec()
        } else {
            loaded.transcode(&target)?
        };
        Ok((loaded.info, dataset))
    })
    .await
    .map_err(|e| StoreError::File(FaultReason::Unreadable(format!("file task failed: {e}"))))?
    .map_err(|e| {
        StoreError::File(if transcode {
            FaultReason::NotTranscodable {
                file_ts: info.transfer_syntax.clone(),
                accepted: ts.clone(),
                detail: e.to_string(),
            }
        } else {
            FaultReason::Unreadable(e.to_string())
        })
    })?;
    if loaded_info != *info {
        return Err(StoreError::File(FaultReason::Unreadable(
            "the file changed between scanning and sending".into(),
        )));
    }
    if transcode {
        info!(file = %path.display(), from = %info.transfer_syntax, to = %ts, "re-encoded for the destination");
    }
    let during = format!("sending {}", path.display());
    let command = dimse::c_store_rq(message_id, &info.sop_class, &info.sop_instance);
    let max_pdu = ctx.dest.max_pdu;
    send_pdvs(assoc, max_pdu, pc_id, PDataValueType::Command, &command)
        .await
        .map_err(|e| StoreError::Association(reason_of(e, &during, &[])))?;
    send_pdvs(assoc, max_pdu, pc_id, PDataValueType::Data, &dataset)
        .await
        .map_err(|e| StoreError::Association(reason_of(e, &during, &[])))?;
    drop(dataset);
    let rsp = receive_rsp(assoc, message_id, C_STORE_RSP).await?;
    if let Some(uid) = &rsp.sop_instance
        && *uid != info.sop_instance
    {
        // The peer's text is shown only when it is a UID.
        let answered = if is_uid(uid) {
            uid.clone()
        } else {
            format!("{} bytes, not a UID", uid.len())
        };
        warn!(file = %path.display(), sent = %info.sop_instance, %answered, "C-STORE-RSP names another SOP instance");
    }
    match status_class(rsp.status) {
        StatusClass::Success => Ok(Stored {
            status: rsp.status,
            warning: None,
            transfer_syntax: ts,
            transcoded: transcode,
        }),
        StatusClass::Warning(meaning) => {
            let warning = match &rsp.comment {
                Some(c) => format!("{meaning}{}", super::fault::withheld_comment(c)),
                None => meaning.to_owned(),
            };
            warn!(
                destination = %ctx.dest.name,
                peer = %ctx.peer,
                file = %path.display(),
                status = format!("0x{:04X}", rsp.status),
                %warning,
                "stored with a warning"
            );
            Ok(Stored {
                status: rsp.status,
                warning: Some(warning),
                transfer_syntax: ts,
                transcoded: transcode,
            })
        }
        StatusClass::Failure { meaning, .. } => Err(StoreError::File(FaultReason::Status {
            status: rsp.status,
            meaning,
            comment: rsp.comment,
        })),
    }
}

/// Releases the association, or aborts it when it is in an unknown state.
pub(super) async fn finish(ctx: &Ctx<'_>, assoc: AsyncClientAssociation<TcpStream>, broken: bool) {
    let grace = ctx.dest.timeout().min(Duration::from_secs(5));
    if broken {
        let _ = tokio::time::timeout(grace, assoc.abort()).await;
        return;
    }
    match tokio::time::timeout(ctx.dest.timeout(), assoc.release()).await {
        Ok(Ok(())) => debug!(peer = %ctx.peer, "association released"),
        // Every file already has its C-STORE-RSP: a failed release loses nothing.
        Ok(Err(e)) => warn!(peer = %ctx.peer, error = %e, "association release failed"),
        Err(_) => warn!(peer = %ctx.peer, "association release timed out"),
    }
}
