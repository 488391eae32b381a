//! Wake-ups between the stages. The job database stays the record of what is queued; a bell only
//! says "look now", so a stage hands work on as soon as it is committed instead of the next one
//! finding it at its next poll. A ring is never lost: each ring counts up a generation, and a
//! waiter waits for a generation past the one it saw before it last looked at the database.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// One queue's bell: rung after a commit that adds work to the queue.
#[derive(Debug, Default)]
pub struct Bell {
    generation: Mutex<u64>,
    rung: Condvar,
    /// For the outbox, which waits on the async runtime: a ring while it works leaves a permit,
    /// so its next wait returns at once.
    notify: tokio::sync::Notify,
}

impl Bell {
    /// Wakes every waiter.
    pub fn ring(&self) {
        // A poisoned counter is still a counter.
        let mut g = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        *g = g.wrapping_add(1);
        drop(g);
        self.rung.notify_all();
        self.notify.notify_one();
    }

    /// The generation now: take it before looking at the database, then [`Bell::wait_past`] it.
    pub fn generation(&self) -> u64 {
        *self.generation.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks until the bell rang after generation `seen`, or `timeout` passed; true when it rang.
    pub fn wait_past(&self, seen: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        while *g == seen {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            g = match self.rung.wait_timeout(g, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }

    /// Returns when the bell rings (or rang since the last call returned).
    pub async fn rung(&self) {
        self.notify.notified().await;
    }
}

/// The bells of the node's queues.
#[derive(Debug, Default)]
pub struct Bells {
    /// An instance was stored: the tracker's stable-age clock of its series restarted.
    pub instances: Bell,
    /// A job was queued (by the tracker, a re-run or a retry): the pipeline worker.
    pub jobs: Bell,
    /// Deliveries were queued or put back: the outbox.
    pub deliveries: Bell,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_ring_before_the_wait_is_not_lost_and_a_quiet_bell_times_out() {
        let bell = Bell::default();
        let seen = bell.generation();
        assert!(!bell.wait_past(seen, Duration::from_millis(20)), "nothing rang");
        bell.ring();
        assert!(bell.wait_past(seen, Duration::ZERO), "rang after `seen`");
        assert!(!bell.wait_past(bell.generation(), Duration::from_millis(10)));
    }

    #[test]
    fn a_ring_wakes_a_waiter_at_once() {
        let bell = Arc::new(Bell::default());
        let seen = bell.generation();
        let waiter = {
            let bell = bell.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                (bell.wait_past(seen, Duration::from_secs(30)), t.elapsed())
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        bell.ring();
        let (rang, waited) = waiter.join().unwrap();
        assert!(rang);
        assert!(waited < Duration::from_secs(10), "woke after {waited:?}");
    }

    #[tokio::test]
    async fn an_async_waiter_gets_a_ring_made_while_it_was_busy() {
        let bell = Bell::default();
        bell.ring();
        tokio::time::timeout(Duration::from_secs(5), bell.rung())
            .await
            .expect("the permit of the earlier ring");
    }
}
