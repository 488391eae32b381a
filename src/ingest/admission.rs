//! Admission of connections before they are associations: a cap on connections still waiting
//! for their A-ASSOCIATE-RQ, in all and per source address. Pending connections hold no
//! association slot, so sockets that never speak (port scanners, half-open load balancer
//! probes, a misbehaving peer) cannot lock scanners out of `max_associations`; the caps bound
//! what they can hold instead (each may buffer up to `max_associate_pdu_bytes`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// `max_pending` connections are already waiting for their A-ASSOCIATE-RQ.
    Total,
    /// `max_pending_per_address` connections from this address are already waiting.
    Address,
}

impl Refusal {
    /// For the log line.
    pub(super) fn reason(self) -> &'static str {
        match self {
            Refusal::Total => "max_pending connections awaiting A-ASSOCIATE-RQ",
            Refusal::Address => "max_pending_per_address connections awaiting A-ASSOCIATE-RQ from this address",
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// The pending connections, counted in all and by source address.
#[derive(Debug)]
pub(super) struct Pending {
    counts: Mutex<Counts>,
    max_total: usize,
    max_per_address: usize,
}

impl Pending {
    pub(super) fn new(max_total: usize, max_per_address: usize) -> Arc<Self> {
        Arc::new(Self {
            counts: Mutex::new(Counts::default()),
            max_total,
            max_per_address,
        })
    }

    /// Counts a new connection from `ip` unless a cap is reached; the guard uncounts it.
    /// IPv4-mapped IPv6 addresses count as their IPv4 address.
    pub(super) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<PendingGuard, Refusal> {
        let ip = ip.to_canonical();
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.total >= self.max_total {
            return Err(Refusal::Total);
        }
        let from_ip = counts.by_address.entry(ip).or_insert(0);
        if *from_ip >= self.max_per_address {
            return Err(Refusal::Address);
        }
        *from_ip += 1;
        counts.total += 1;
        Ok(PendingGuard {
            pending: self.clone(),
            ip,
        })
    }

    /// Connections pending now, in all.
    #[cfg(test)]
    pub(super) fn total(&self) -> usize {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner).total
    }
}

/// One admitted pending connection; dropping it (the A-ASSOCIATE-RQ was read, or the connection
/// ended) frees its place.
#[derive(Debug)]
pub(super) struct PendingGuard {
    pending: Arc<Pending>,
    ip: IpAddr,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let mut counts = self.pending.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_address.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.by_address.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn caps_hold_per_address_and_in_all_and_free_on_drop() {
        let pending = Pending::new(3, 2);
        let a1 = pending.admit(ip("10.0.0.1")).unwrap();
        let _a2 = pending.admit(ip("::ffff:10.0.0.1")).unwrap();
        assert_eq!(
            pending.admit(ip("10.0.0.1")).unwrap_err(),
            Refusal::Address,
            "the mapped address counts as the same host"
        );
        let _b1 = pending.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(pending.admit(ip("10.0.0.3")).unwrap_err(), Refusal::Total);
        assert_eq!(pending.total(), 3);
        drop(a1);
        assert_eq!(pending.total(), 2);
        let _a3 = pending.admit(ip("10.0.0.1")).expect("a freed place is reused");
        assert_eq!(pending.admit(ip("10.0.0.3")).unwrap_err(), Refusal::Total);
    }

    #[test]
    fn an_address_whose_connections_all_ended_is_forgotten() {
        let pending = Pending::new(10, 1);
        for _ in 0..3 {
            let guard = pending.admit(ip("192.0.2.7")).unwrap();
            assert_eq!(pending.admit(ip("192.0.2.7")).unwrap_err(), Refusal::Address);
            drop(guard);
        }
        let counts = pending.counts.lock().unwrap();
        assert_eq!((counts.total, counts.by_address.len()), (0, 0));
    }
}
