//! Ingest: the DICOM SCP. Accepts associations (C-ECHO, C-STORE), checks AE titles, contexts and
//! sizes, reassembles each C-STORE's data set and hands it to an [`InstanceSink`] (the spool),
//! answering the peer with the status the sink returns. The sink decides durability: the
//! success response is sent only after it returns.
//!
//! Public surface: [`ScpConfig`] (the `[scp]` section), [`bind`] and [`serve`] (the accept loop
//! on a bound listener, until the shutdown flag turns true), [`IngestStats`] (counters for the
//! metrics layer) and [`check_element_lengths`] (the bounded pre-parse every data set passes
//! before anything in the node parses it).
//!
//! Modules, by concern:
//! - `config`: the `[scp]` section, checked once into [`ScpSettings`];
//! - `listener`: the accept loop: binding, admission, shutdown and its grace period;
//! - `admission`: the caps on connections still waiting for their A-ASSOCIATE-RQ, in all and
//!   per source address (they hold no association slot);
//! - `association`: one connection: the A-ASSOCIATE-RQ within the handshake deadline and its own
//!   size bound (`link` reads PDUs with a bound per phase), the answer (`negotiate`: AE checks,
//!   presentation contexts), the association cap and the transient rejection of peers over it,
//!   C-ECHO and C-STORE answers, release and abort; its `reassembly` turns P-DATA fragments into
//!   DIMSE messages within the caps;
//! - `stats`: the counters both of them keep;
//! - `dimse`: the request fields and responses of the SCP's side of DIMSE;
//! - `limits`: the length-checked pre-parse of data sets;
//! - `syntax`: the SOP classes and transfer syntaxes negotiated.
//!
//! Hostile input is bounded before anything is allocated: the A-ASSOCIATE-RQ is read within
//! `max_associate_pdu_bytes` and `handshake_timeout_s`, buffered as it arrives; later PDUs
//! longer than the negotiated maximum abort the association (the 6-byte header is checked
//! before the body is buffered; dicom-ul parses PDUs but does not read them), command
//! sets are capped at 64 KiB and parsed by a length-checked walker, data sets are capped at
//! `max_instance_mb` while being reassembled, and every element, item and fragment length is
//! checked against the bytes actually present before the sink (which may parse with
//! dicom-object) sees the data set.

use std::net::SocketAddr;
use std::path::PathBuf;

/// One C-STORE request as received: the data set bytes in the negotiated transfer syntax
/// (no file meta group).
#[derive(Debug)]
pub struct ReceivedInstance {
    /// Calling AE title of the association (trimmed).
    pub calling_ae: String,
    /// Peer socket address.
    pub peer: SocketAddr,
    /// Affected SOP Class UID from the command.
    pub sop_class_uid: String,
    /// Affected SOP Instance UID from the command.
    pub sop_instance_uid: String,
    /// Transfer syntax UID of the presentation context the data came on.
    pub transfer_syntax: String,
    /// The data set, encoded in `transfer_syntax`: in memory while small, else in a staging
    /// file in [`InstanceSink::staging_dir`].
    pub dataset: DataSetBuffer,
}

/// What the sink did with an instance; decides the C-STORE-RSP status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Durably stored (0x0000).
    Stored,
    /// Already stored earlier (idempotent success, 0x0000).
    Duplicate,
    /// Accepted and deliberately not kept (e.g. our own output coming back; 0x0000).
    Discarded { reason: String },
    /// Not stored: `status` is the DIMSE failure status (0xA700 out of resources,
    /// 0xC000 cannot understand, …) and `reason` goes to the log and the Error Comment.
    Failed { status: u16, reason: String },
}

/// What happened to a connection besides its instances, for the audit trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectionEvent {
    /// An association ended (released, aborted or broken) after every instance it carried was
    /// handed to the sink.
    AssociationEnded { peer: SocketAddr, calling_ae: String },
    /// The TLS handshake on the TLS port failed.
    TlsRefused { peer: SocketAddr, why: String },
    /// The A-ASSOCIATE-RQ was rejected for its AE titles.
    AssociationRejected {
        peer: SocketAddr,
        calling_ae: String,
        why: String,
    },
}

/// Where received instances go. Called from a blocking thread (it may fsync).
pub trait InstanceSink: Send + Sync + 'static {
    /// Hears about connections (default: nothing). Called from async tasks: must not block long.
    fn connection_event(&self, _event: ConnectionEvent) {}

    /// Stores one instance and says how it went.
    fn store(&self, instance: ReceivedInstance) -> StoreOutcome;

    /// Where data sets too large for memory are staged while they arrive: best on the volume
    /// the sink stores to, so that its copy stays in the kernel.
    fn staging_dir(&self) -> PathBuf {
        std::env::temp_dir()
    }
}

mod admission;
mod association;
mod config;
mod dimse;
mod limits;
mod listener;
mod spill;
mod stats;
mod syntax;
mod tls;

#[doc(hidden)]
pub use association::fuzzing;
pub use config::{AllowedCalling, OtherStorage, ScpConfig, ScpConfigError, ScpSettings};
pub use limits::check_data_set;
pub use limits::{MalformedDataSet, check_element_lengths, check_element_lengths_limited};
pub use listener::{IngestError, Listeners, bind, serve};
pub use spill::{DataSetBuffer, IN_MEMORY_BYTES};
pub use stats::{IngestStats, IngestStatsSnapshot};
pub use syntax::{ACCEPTED_TRANSFER_SYNTAXES, MR_STORAGE_CLASSES, OTHER_STORAGE_CLASSES, VERIFICATION, is_mr_storage};
pub use tls::{ScpTls, ScpTlsConfig};
