//! Datasets the trainer reads.

pub mod batcher;
pub mod bids;
pub mod lesion;
