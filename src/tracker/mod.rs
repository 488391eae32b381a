//! Series/study tracker (in progress): [`routing`] decides which channel, if any, a series feeds.

pub mod routing;
