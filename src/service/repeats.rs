//! Repeats of one error, logged once and then as a count: a fault that lasts (a full disk, a
//! locked database) would otherwise write the same line at every poll, burying what else
//! happens and filling the disk it complains about.

use std::time::{Duration, Instant};

/// What to log for an error just seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Log {
    /// A new error (or another one than before): log it.
    First,
    /// The same error, `every` after the last line: log it with the count since that line.
    Again { times: u64, over: Duration },
    /// The same error, within `every` of the last line: count it only.
    Quiet,
}

#[derive(Debug)]
struct Current {
    message: String,
    logged_at: Instant,
    since_logged: u64,
    total: u64,
}

/// The error a loop keeps hitting, and how often since it was last logged.
#[derive(Debug)]
pub(super) struct Repeats {
    every: Duration,
    current: Option<Current>,
}

impl Repeats {
    /// Repeats are summarised at most once per `every`.
    pub(super) fn new(every: Duration) -> Self {
        Self { every, current: None }
    }

    /// Counts `message` seen at `now` and says what to log.
    pub(super) fn error(&mut self, message: &str, now: Instant) -> Log {
        match &mut self.current {
            Some(c) if c.message == message => {
                c.since_logged += 1;
                c.total += 1;
                let over = now.saturating_duration_since(c.logged_at);
                if over < self.every {
                    return Log::Quiet;
                }
                let times = c.since_logged;
                c.since_logged = 0;
                c.logged_at = now;
                Log::Again { times, over }
            }
            _ => {
                self.current = Some(Current {
                    message: message.to_owned(),
                    logged_at: now,
                    since_logged: 0,
                    total: 1,
                });
                Log::First
            }
        }
    }

    /// The loop succeeded: forgets the error and returns how many times it had been seen, if
    /// it had (for one "recovered" line).
    pub(super) fn recovered(&mut self) -> Option<u64> {
        self.current.take().map(|c| c.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_error_is_logged_once_then_counted_per_period() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut repeats = Repeats::new(Duration::from_secs(60));
        assert_eq!(repeats.recovered(), None);
        assert_eq!(repeats.error("database or disk is full", t0), Log::First);
        for i in 1..60 {
            assert_eq!(repeats.error("database or disk is full", t0 + s * i), Log::Quiet);
        }
        assert_eq!(
            repeats.error("database or disk is full", t0 + s * 60),
            Log::Again {
                times: 60,
                over: s * 60
            }
        );
        assert_eq!(repeats.error("database or disk is full", t0 + s * 61), Log::Quiet);
        assert_eq!(
            repeats.error("disk I/O error", t0 + s * 62),
            Log::First,
            "another error is logged at once"
        );
        assert_eq!(repeats.error("disk I/O error", t0 + s * 63), Log::Quiet);
        assert_eq!(repeats.recovered(), Some(2));
        assert_eq!(
            repeats.error("disk I/O error", t0 + s * 64),
            Log::First,
            "after a success it is new again"
        );
    }
}
