//! What went wrong with a delivery, and whether trying again later can help.

use std::fmt;
use std::path::PathBuf;

/// Whether a fault is worth retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    /// The peer or the network may recover: retry with backoff.
    Transient,
    /// Retrying the same thing gives the same answer: dead letter.
    Permanent,
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultKind::Transient => "transient",
            FaultKind::Permanent => "permanent",
        })
    }
}

/// The cause of a [`DeliveryFault`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FaultReason {
    /// The destination's settings are unusable (see [`super::Destination::validate`]).
    #[error("invalid destination: {0}")]
    InvalidDestination(String),
    /// TCP connect failed (refused, unreachable, name not resolved).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// No answer within `timeout_s`.
    #[error("timed out {during}")]
    Timeout {
        /// What we were waiting for.
        during: String,
    },
    /// A-ASSOCIATE-RJ from the destination.
    #[error("association rejected ({}): {reason}", if *.permanent { "permanent" } else { "transient" })]
    Rejected {
        /// Result field: rejected-permanent (true) or rejected-transient (false).
        permanent: bool,
        /// Source and reason as the peer gave them.
        reason: String,
    },
    /// The association was accepted but no presentation context at all.
    #[error("the destination accepted none of the proposed presentation contexts ({proposed})")]
    NoContextAtAll {
        /// The proposed SOP classes.
        proposed: String,
    },
    /// The TLS handshake failed or the TLS session broke with an alert: a certificate the
    /// other side does not trust, a wrong server name, no common protocol version.
    #[error("TLS failed {during}: {detail}")]
    Tls {
        /// What we were doing.
        during: String,
        /// The TLS error or alert.
        detail: String,
    },
    /// A-ABORT from the peer.
    #[error("association aborted by the peer {during}")]
    Aborted {
        /// What we were doing.
        during: String,
    },
    /// Connection reset or closed, or an I/O error in the middle of the association.
    #[error("connection lost {during}: {detail}")]
    ConnectionLost {
        /// What we were doing.
        during: String,
        /// The I/O error.
        detail: String,
    },
    /// The peer answered something the protocol does not allow here.
    #[error("protocol error {during}: {detail}")]
    Protocol {
        /// What we were doing.
        during: String,
        /// What arrived.
        detail: String,
    },
    /// The association ended before this file was offered.
    #[error("not sent: the association ended early ({0})")]
    NotSent(String),
    /// The file cannot be read or has no usable file meta information.
    #[error("unreadable file: {0}")]
    Unreadable(String),
    /// The destination did not accept the file's SOP class in any transfer syntax.
    #[error("the destination accepted no presentation context for SOP class {sop_class}")]
    NoContext {
        /// SOP Class UID of the file.
        sop_class: String,
    },
    /// Only other transfer syntaxes were accepted and the file cannot be re-encoded into them.
    #[error("transfer syntax {file_ts} refused (accepted: {accepted}) and not transcodable: {detail}")]
    NotTranscodable {
        /// The file's transfer syntax.
        file_ts: String,
        /// What the destination accepted for the SOP class.
        accepted: String,
        /// Why re-encoding is impossible.
        detail: String,
    },
    /// An HTTP endpoint answered with a status other than 2xx (its body is not kept: it may
    /// echo patient data).
    #[error("HTTP status {status}")]
    HttpStatus {
        /// The status code.
        status: u16,
    },
    /// The final C-MOVE-RSP of a retrieval was a failure (or cancel).
    #[error("C-MOVE failed with status 0x{status:04X} ({meaning})")]
    Move {
        /// DIMSE status.
        status: u16,
        /// What it means for a retrieval.
        meaning: &'static str,
    },
    /// A C-STORE-RSP with a failure status.
    #[error("C-STORE failed with status 0x{status:04X} ({meaning}){}", comment_suffix(.comment))]
    Status {
        /// DIMSE status.
        status: u16,
        /// Standard meaning of the status.
        meaning: &'static str,
        /// Error Comment (0000,0902), when given.
        comment: Option<String>,
    },
}

fn comment_suffix(comment: &Option<String>) -> String {
    comment.as_deref().map(withheld_comment).unwrap_or_default()
}

/// A peer's Error Comment is free text that may name a patient: messages (log, dead letters,
/// API) say that there was one and how long, never what it says.
pub(crate) fn withheld_comment(comment: &str) -> String {
    format!(
        "; Error Comment withheld ({} characters of the peer's free text)",
        comment.chars().count()
    )
}

impl FaultReason {
    /// Transient or permanent (see the module documentation for the rules).
    pub fn kind(&self) -> FaultKind {
        use FaultKind::{Permanent, Transient};
        match self {
            FaultReason::InvalidDestination(_) => Permanent,
            FaultReason::Connect(_) => Transient,
            FaultReason::Timeout { .. } => Transient,
            FaultReason::Rejected { permanent, .. } => {
                if *permanent {
                    Permanent
                } else {
                    Transient
                }
            }
            FaultReason::NoContextAtAll { .. } => Permanent,
            // Certificates and names do not fix themselves between retries.
            FaultReason::Tls { .. } => Permanent,
            FaultReason::Aborted { .. } => Transient,
            FaultReason::ConnectionLost { .. } => Transient,
            FaultReason::Protocol { .. } => Transient,
            FaultReason::NotSent(_) => Transient,
            FaultReason::Unreadable(_) => Permanent,
            FaultReason::NoContext { .. } => Permanent,
            FaultReason::NotTranscodable { .. } => Permanent,
            // Timeout, too early, too many requests and server errors may pass; the others
            // are the request's own fault.
            FaultReason::HttpStatus { status } => match status {
                408 | 425 | 429 | 500..=599 => Transient,
                _ => Permanent,
            },
            FaultReason::Move { status, .. } => {
                if status >> 8 == 0xA7 {
                    Transient
                } else {
                    Permanent
                }
            }
            FaultReason::Status { status, .. } => match status_class(*status) {
                StatusClass::Success | StatusClass::Warning(_) => Transient,
                StatusClass::Failure { kind, .. } => kind,
            },
        }
    }
}

/// A delivery problem: which destination, which file (when it concerns one) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} fault delivering to {destination} ({peer}){}: {reason}", file_suffix(.file))]
pub struct DeliveryFault {
    /// Transient or permanent, always `reason.kind()`.
    kind: FaultKind,
    /// The destination's configured name.
    pub destination: String,
    /// `AE@host:port`.
    pub peer: String,
    /// The file concerned; `None` for association-level faults.
    pub file: Option<PathBuf>,
    /// The cause (boxed to keep `Result<_, DeliveryFault>` small).
    pub reason: Box<FaultReason>,
}

fn file_suffix(file: &Option<PathBuf>) -> String {
    file.as_ref()
        .map(|f| format!(", file {}", f.display()))
        .unwrap_or_default()
}

impl DeliveryFault {
    /// A fault with its kind derived from `reason`.
    pub fn new(destination: &str, peer: &str, file: Option<PathBuf>, reason: FaultReason) -> Self {
        Self {
            kind: reason.kind(),
            destination: destination.to_owned(),
            peer: peer.to_owned(),
            file,
            reason: Box::new(reason),
        }
    }

    /// Transient or permanent.
    pub fn kind(&self) -> FaultKind {
        self.kind
    }
}

/// How a DIMSE status is to be taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusClass {
    /// 0x0000.
    Success,
    /// Stored, with a warning (the meaning is given).
    Warning(&'static str),
    /// Not stored.
    Failure {
        /// Whether resending later may work.
        kind: FaultKind,
        /// Standard meaning.
        meaning: &'static str,
    },
}

/// Classifies a C-STORE-RSP status (PS3.4 B.2.3, PS3.7 C):
/// - success: 0x0000;
/// - stored with a warning: 0x0001, 0x0107 (attribute list error), 0x0116 (attribute value out
///   of range), 0xB000 (coercion of data elements), 0xB006 (elements discarded), 0xB007 (data
///   set does not match SOP class), and 0x0111 (duplicate SOP instance: the destination
///   already has it, so a resend after a lost response counts as delivered);
/// - transient failure: 0xA7xx (out of resources), 0xFE00 (cancel), 0x0213 (resource
///   limitation);
/// - permanent failure: 0xA9xx (data set does not match SOP class), 0xCxxx (cannot
///   understand), 0x0122 (SOP class not supported), 0x0124 (not authorized), and every other
///   status (unknown failures are not retried forever).
pub fn status_class(status: u16) -> StatusClass {
    use FaultKind::{Permanent, Transient};
    let fail = |kind, meaning| StatusClass::Failure { kind, meaning };
    match status {
        0x0000 => StatusClass::Success,
        0x0001 => StatusClass::Warning("warning"),
        0x0107 => StatusClass::Warning("attribute list error"),
        0x0111 => StatusClass::Warning("duplicate SOP instance: already stored"),
        0x0116 => StatusClass::Warning("attribute value out of range"),
        0xB000 => StatusClass::Warning("coercion of data elements"),
        0xB006 => StatusClass::Warning("elements discarded"),
        0xB007 => StatusClass::Warning("data set does not match SOP class"),
        0xA700..=0xA7FF => fail(Transient, "refused: out of resources"),
        0xFE00 => fail(Transient, "cancelled"),
        0x0213 => fail(Transient, "resource limitation"),
        0xA900..=0xA9FF => fail(Permanent, "data set does not match SOP class"),
        0xC000..=0xCFFF => fail(Permanent, "cannot understand"),
        0x0122 => fail(Permanent, "SOP class not supported"),
        0x0124 => fail(Permanent, "refused: not authorized"),
        0x0117 => fail(Permanent, "invalid object instance"),
        0x0210 => fail(Permanent, "duplicate invocation"),
        0x0211 => fail(Permanent, "unrecognized operation"),
        0x0212 => fail(Permanent, "mistyped argument"),
        _ => fail(Permanent, "unknown status"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        assert_eq!(status_class(0), StatusClass::Success);
        assert!(matches!(status_class(0xB000), StatusClass::Warning(_)));
        for (s, k) in [
            (0xA700, FaultKind::Transient),
            (0xA7FF, FaultKind::Transient),
            (0xA900, FaultKind::Permanent),
            (0xC123, FaultKind::Permanent),
            (0x0122, FaultKind::Permanent),
            (0x0124, FaultKind::Permanent),
            (0x1234, FaultKind::Permanent),
        ] {
            let reason = FaultReason::Status {
                status: s,
                meaning: "m",
                comment: None,
            };
            assert_eq!(reason.kind(), k, "0x{s:04X}");
        }
    }

    #[test]
    fn message_names_destination_peer_and_file() {
        let f = DeliveryFault::new(
            "pacs",
            "PACS@10.0.0.1:104",
            Some("/x/SR.dcm".into()),
            FaultReason::Status {
                status: 0xC000,
                meaning: "cannot understand",
                comment: Some("Patient DOE^JANE rejected".into()),
            },
        );
        let text = f.to_string();
        for needle in [
            "permanent",
            "pacs",
            "PACS@10.0.0.1:104",
            "/x/SR.dcm",
            "0xC000",
            "25 characters",
        ] {
            assert!(text.contains(needle), "{needle}: {text}");
        }
        assert!(
            !text.contains("DOE"),
            "the peer's Error Comment reached the message: {text}"
        );
    }
}
