//! The SCP's counters ([`IngestStats`]): written by the accept loop (`listener`) and by each
//! association (`association`), read at any time by the metrics layer as an
//! [`IngestStatsSnapshot`].

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of the SCP, readable at any time by the metrics layer (relaxed atomics).
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Associations accepted (A-ASSOCIATE-AC sent).
    pub associations_accepted: AtomicU64,
    /// Associations rejected (A-ASSOCIATE-RJ: AE titles, too many associations) or not
    /// established (no A-ASSOCIATE-RQ within the handshake deadline, or an unreadable one).
    pub associations_rejected: AtomicU64,
    /// Accepted associations that ended without a release: aborted by us (protocol violation,
    /// oversized PDU, timeout, shutdown) or by the peer, or a dropped connection.
    pub associations_aborted: AtomicU64,
    /// Associations being served right now.
    pub associations_active: AtomicU64,
    /// Connections closed at once because `max_pending` (or `max_pending_per_address`)
    /// connections were already waiting for their A-ASSOCIATE-RQ.
    pub connections_refused: AtomicU64,
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
    pub connections_refused: u64,
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
            connections_refused: get(&self.connections_refused),
            echo_requests: get(&self.echo_requests),
            instances_received: get(&self.instances_received),
            instances_stored: get(&self.instances_stored),
            instances_discarded: get(&self.instances_discarded),
            instances_failed: get(&self.instances_failed),
            bytes_received: get(&self.bytes_received),
        }
    }
}

/// Adds one to a counter.
pub(super) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
