//! The trainer's single integration-test binary.

mod cluster;
mod cv;
mod dataset;
mod deploy;
mod evaluate;
mod export;
mod finetune;
mod learns;
mod model;
