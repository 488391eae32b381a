//! Deliver: the outbound C-STORE SCU that pushes results (SC, SR) to a destination, and the
//! classification of its faults into transient (retry later) and permanent (dead letter).
//!
//! - [`Destination`] is one `[[destinations]]` entry of the node's config, [`RetryPolicy`] the
//!   `[outbox]` section (exponential backoff with a cap, attempt budget).
//! - [`send`] opens one association, C-STOREs every file and reports a [`FileOutcome`] per
//!   file. It re-encodes uncompressed data sets when the destination accepted only another
//!   uncompressed transfer syntax (e.g. Implicit VR Little Endian only).
//! - [`post`] sends a notification (FHIR DiagnosticReport or webhook JSON) to an HTTP
//!   [`Endpoint`] of `[notify]`; HTTP 408, 425, 429 and 5xx are transient, other statuses
//!   permanent.
//! - [`retrieve`] asks a destination that is also a PACS to C-MOVE a study to the node;
//!   [`find_studies`] finds a patient's studies of a date there first (C-FIND).
//! - [`echo`] tests a destination with C-ECHO over the same association settings.
//! - [`DeliveryFault::kind`] says whether a failure is [`FaultKind::Transient`] (connection
//!   refused or lost, timeouts, A-ABORT, association rejected-transient, status 0xA7xx) or
//!   [`FaultKind::Permanent`] (association rejected-permanent, SOP class or transfer syntax
//!   refused, status 0xA9xx, 0xCxxx, 0x0122, 0x0124 and other failures); warning statuses
//!   count as stored ([`status_class`] lists them).
//!
//! Sockets get `TCP_NODELAY`; every wait is bounded by the destination's `timeout_s`; nothing a
//! peer sends is trusted for allocation (command sets are parsed by hand and capped).
//! A destination with a `[destinations.tls]` table is reached over DICOM TLS ([`TlsSettings`]):
//! the destination's certificate is checked against the configured CA, the node presents its
//! own certificate when one is configured, and TLS failures are permanent faults.

mod dimse;
mod fault;
mod files;
mod notify;
mod retrieve;
mod scu;
mod settings;
mod tls;

pub use fault::{DeliveryFault, FaultKind, FaultReason, StatusClass, status_class};
pub use files::{EXPLICIT_VR_LE, IMPLICIT_VR_LE};
pub use notify::{Endpoint, EndpointKind, NotifyConfig, NotifyWhen, post};
pub use retrieve::{MAX_MATCHES, Retrieved, STUDY_ROOT_FIND, STUDY_ROOT_MOVE, find_studies, retrieve};
pub use scu::{Echoed, FileOutcome, Stored, echo, send};
pub use settings::{Destination, MAX_MAX_PDU, MAX_TIMEOUT_S, MIN_MAX_PDU, RetryPolicy, SettingsError, check_ae_title};
pub use tls::{TlsSettings, TlsSettingsError};
