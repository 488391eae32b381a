//! Series/study tracker: a series is complete once no instance has arrived for the stable age;
//! [`routing`] then decides which model channel, if any, it feeds, and complete studies become
//! jobs. Late instances reopen a handled series and lead to a new job that supersedes the old.

pub mod routing;
#[cfg(feature = "node")]
mod stable;

#[cfg(feature = "node")]
pub use stable::{Tick, Tracker, TrackerConfig, TrackerConfigError, TrackerError};
