//! The model package, the contract between trainer and node: [`manifest`] (what the node must
//! reproduce), [`arch`] (the architecture spec both sides build from), [`weights`] (the named
//! tensors that fill it).

pub mod arch;
pub mod manifest;
pub mod onnx;
pub mod weights;
