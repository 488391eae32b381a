//! The trainer's single integration-test binary.

mod cv;
mod dataset;
mod evaluate;
mod export;
mod finetune;
mod learns;
mod model;
