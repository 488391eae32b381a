//! Reassembly of P-DATA fragments into DIMSE messages, one message at a time: command
//! fragments up to [`MAX_COMMAND_SET`] bytes, then (when the command announces one) data
//! fragments on the same presentation context, kept up to `max_instance_mb` and drained past
//! it. No I/O: the session feeds it PDVs and answers the messages it completes; anything out of
//! turn is an [`Abort`].

use std::collections::HashMap;
use std::path::PathBuf;

use dicom_ul::pdu::{AbortRQServiceProviderReason, PDataValue, PDataValueType};

use super::{Abort, Context, abort};
use crate::ingest::dimse::{Command, MAX_COMMAND_SET, RESPONSE_BIT, parse_command};
use crate::ingest::spill::DataSetBuffer;

/// Where the reassembly of the current DIMSE message stands.
#[derive(Debug)]
enum State {
    Idle,
    Command { pc: u8, bytes: Vec<u8> },
    Data { pc: u8, command: Command, data: DataSet },
}

/// The data set of a message, as reassembled.
#[derive(Debug)]
pub(super) struct DataSet {
    /// The bytes; empty once `dropped`.
    pub(super) bytes: DataSetBuffer,
    /// Bytes received, including those dropped.
    pub(super) total: u64,
    /// Why the rest was drained and dropped, if it was.
    pub(super) dropped: Option<Dropped>,
}

/// Why a data set was not kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Dropped {
    /// It went over `max_instance_mb`.
    OverCap,
    /// Its staging file could not be written (disk full, permissions).
    Staging(String),
}

/// A complete DIMSE message: a request command set and, when it announced one, its data set.
#[derive(Debug)]
pub(super) struct Message {
    pub(super) pc: u8,
    pub(super) context: Context,
    pub(super) command: Command,
    pub(super) data: Option<DataSet>,
}

/// What one PDV did to the reassembly.
#[derive(Debug, Default)]
pub(super) struct Fed {
    /// Data set bytes the PDV carried (counted in `bytes_received`, kept or not).
    pub(super) data_bytes: usize,
    /// The SOP Instance UID of the data set, and why, when this PDV made it dropped (the rest is
    /// drained).
    pub(super) dropped: Option<(String, Dropped)>,
    /// The message this PDV completed.
    pub(super) message: Option<Message>,
}

/// Reassembles PDVs into DIMSE messages on the accepted contexts: one message at a time, its
/// command fragments (at most [`MAX_COMMAND_SET`] bytes) then, when the command announces one,
/// its data fragments on the same context (kept up to `max_instance_bytes`, then drained).
pub(super) struct Reassembly {
    contexts: HashMap<u8, Context>,
    max_instance_bytes: usize,
    /// Where data sets past the memory bound are staged (the sink's choice).
    staging: PathBuf,
    state: State,
}

impl Reassembly {
    pub(super) fn new(contexts: HashMap<u8, Context>, max_instance_bytes: usize, staging: PathBuf) -> Self {
        Self {
            contexts,
            max_instance_bytes,
            staging,
            state: State::Idle,
        }
    }

    /// Whether no message is in progress.
    pub(super) fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle)
    }

    /// Takes one PDV. An error is a protocol violation that aborts the association.
    pub(super) fn feed(&mut self, pdv: PDataValue) -> Result<Fed, Abort> {
        let PDataValue {
            presentation_context_id: pc,
            value_type,
            is_last,
            data: payload,
        } = pdv;
        if !self.contexts.contains_key(&pc) {
            return Err(abort(
                AbortRQServiceProviderReason::UnexpectedPduParameter,
                format!("PDV on presentation context {pc}, which was not accepted"),
            ));
        }
        match (std::mem::replace(&mut self.state, State::Idle), value_type) {
            (State::Idle, PDataValueType::Command) => self.command_fragment(pc, payload, is_last),
            (State::Command { pc: current, mut bytes }, PDataValueType::Command) if current == pc => {
                bytes.extend_from_slice(&payload);
                self.command_fragment(pc, bytes, is_last)
            }
            (
                State::Data {
                    pc: current,
                    command,
                    mut data,
                },
                PDataValueType::Data,
            ) if current == pc => {
                let mut fed = Fed {
                    data_bytes: payload.len(),
                    ..Fed::default()
                };
                data.total += payload.len() as u64;
                if data.dropped.is_none() {
                    if data.bytes.len().saturating_add(payload.len() as u64) > self.max_instance_bytes as u64 {
                        data.dropped = Some(Dropped::OverCap);
                    } else if let Err(e) = data.bytes.append(&payload) {
                        data.dropped = Some(Dropped::Staging(e.to_string()));
                    }
                    if let Some(why) = &data.dropped {
                        data.bytes = DataSetBuffer::new(&self.staging);
                        fed.dropped = Some((command.affected_sop_instance.clone(), why.clone()));
                    }
                }
                if is_last {
                    fed.message = Some(Message {
                        pc,
                        context: self.contexts[&pc].clone(),
                        command,
                        data: Some(data),
                    });
                } else {
                    self.state = State::Data { pc, command, data };
                }
                Ok(fed)
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

    fn command_fragment(&mut self, pc: u8, bytes: Vec<u8>, is_last: bool) -> Result<Fed, Abort> {
        if bytes.len() > MAX_COMMAND_SET {
            return Err(abort(
                AbortRQServiceProviderReason::InvalidPduParameter,
                format!("command set longer than {MAX_COMMAND_SET} bytes"),
            ));
        }
        if !is_last {
            self.state = State::Command { pc, bytes };
            return Ok(Fed::default());
        }
        let command = parse_command(&bytes).map_err(|e| {
            abort(
                AbortRQServiceProviderReason::InvalidPduParameter,
                format!("malformed command set: {e}"),
            )
        })?;
        if command.field & RESPONSE_BIT != 0 {
            return Err(abort(
                AbortRQServiceProviderReason::UnexpectedPduParameter,
                format!("received a response command (0x{:04X})", command.field),
            ));
        }
        if command.has_data_set {
            self.state = State::Data {
                pc,
                command,
                data: DataSet {
                    bytes: DataSetBuffer::new(&self.staging),
                    total: 0,
                    dropped: None,
                },
            };
            return Ok(Fed::default());
        }
        Ok(Fed {
            message: Some(Message {
                pc,
                context: self.contexts[&pc].clone(),
                command,
                data: None,
            }),
            ..Fed::default()
        })
    }
}
