//! Reassembly of P-DATA fragments into DIMSE messages, one message at a time: command
//! fragments up to [`MAX_COMMAND_SET`] bytes, then (when the command announces one) data
//! fragments on the same presentation context, kept up to `max_instance_mb` and drained past
//! it. No I/O: the session feeds it PDVs and answers the messages it completes; anything out of
//! turn is an [`Abort`].

use std::collections::HashMap;

use dicom_ul::pdu::{AbortRQServiceProviderReason, PDataValue, PDataValueType};

use super::{Abort, Context, abort};
use crate::ingest::dimse::{Command, MAX_COMMAND_SET, RESPONSE_BIT, parse_command};

/// Where the reassembly of the current DIMSE message stands.
#[derive(Debug)]
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

/// The data set of a message, as reassembled.
#[derive(Debug)]
pub(super) struct DataSet {
    /// The bytes; empty when `over_cap`.
    pub(super) bytes: Vec<u8>,
    /// Bytes received, including those dropped over the cap.
    pub(super) total: u64,
    /// The data set went over `max_instance_mb` and was dropped.
    pub(super) over_cap: bool,
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
    /// The SOP Instance UID of the data set when this PDV took it over the cap (the rest is
    /// drained).
    pub(super) went_over_cap: Option<String>,
    /// The message this PDV completed.
    pub(super) message: Option<Message>,
}

/// Reassembles PDVs into DIMSE messages on the accepted contexts: one message at a time, its
/// command fragments (at most [`MAX_COMMAND_SET`] bytes) then, when the command announces one,
/// its data fragments on the same context (kept up to `max_instance_bytes`, then drained).
pub(super) struct Reassembly {
    contexts: HashMap<u8, Context>,
    max_instance_bytes: usize,
    state: State,
}

impl Reassembly {
    pub(super) fn new(contexts: HashMap<u8, Context>, max_instance_bytes: usize) -> Self {
        Self {
            contexts,
            max_instance_bytes,
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
            data,
        } = pdv;
        if !self.contexts.contains_key(&pc) {
            return Err(abort(
                AbortRQServiceProviderReason::UnexpectedPduParameter,
                format!("PDV on presentation context {pc}, which was not accepted"),
            ));
        }
        match (std::mem::replace(&mut self.state, State::Idle), value_type) {
            (State::Idle, PDataValueType::Command) => self.command_fragment(pc, data, is_last),
            (State::Command { pc: current, mut bytes }, PDataValueType::Command) if current == pc => {
                bytes.extend_from_slice(&data);
                self.command_fragment(pc, bytes, is_last)
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
                let mut fed = Fed {
                    data_bytes: data.len(),
                    ..Fed::default()
                };
                total += data.len() as u64;
                if !over_cap && bytes.len().saturating_add(data.len()) <= self.max_instance_bytes {
                    bytes.extend_from_slice(&data);
                } else if !over_cap {
                    over_cap = true;
                    bytes = Vec::new();
                    fed.went_over_cap = Some(command.affected_sop_instance.clone());
                }
                if is_last {
                    fed.message = Some(Message {
                        pc,
                        context: self.contexts[&pc].clone(),
                        command,
                        data: Some(DataSet { bytes, total, over_cap }),
                    });
                } else {
                    self.state = State::Data {
                        pc,
                        command,
                        bytes,
                        total,
                        over_cap,
                    };
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
                bytes: Vec::new(),
                total: 0,
                over_cap: false,
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
