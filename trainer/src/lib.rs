//! fcdtrain: offline training of fcdnode model packages on BIDS NIfTI data.
//!
//! Experiment flow (built up issue by issue): read a BIDS dataset ([`data::bids`]) → preprocess
//! with the node's own library (`fcdnode`) → train and cross-validate → export a model package.

pub mod data;
pub mod metrics;
pub mod model;
