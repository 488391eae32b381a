//! The trainer's single integration-test binary.

mod dataset;
mod model;
