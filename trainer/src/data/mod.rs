//! Datasets the trainer reads.

pub mod bids;
