//! The model package, the contract between trainer and node (in progress): [`arch`] is the
//! architecture spec both sides build from, [`weights`] the named tensors that fill it.

pub mod arch;
pub mod weights;
