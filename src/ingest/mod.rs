//! Ingest: the DICOM SCP. Accepts associations (C-ECHO, C-STORE), checks AE titles, contexts and
//! sizes, reassembles each C-STORE's data set and hands it to an [`InstanceSink`] (the spool),
//! answering the peer with the status the sink returns. The sink decides durability: the
//! success response is sent only after it returns.

use std::net::SocketAddr;

/// One C-STORE request as received: the data set bytes in the negotiated transfer syntax
/// (no file meta group).
#[derive(Clone, Debug)]
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
    /// The data set, encoded in `transfer_syntax`.
    pub dataset: Vec<u8>,
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

/// Where received instances go. Called from a blocking thread (it may fsync).
pub trait InstanceSink: Send + Sync + 'static {
    /// Stores one instance and says how it went.
    fn store(&self, instance: ReceivedInstance) -> StoreOutcome;
}
