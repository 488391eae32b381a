//! The single integration-test binary: real peers (dcm2niix, DCMTK, …) on real files.
//! Peers come from `scripts/setup.sh`; a missing one fails the test loudly.

mod assemble;
mod dicom_parity;
mod infer;
mod report;
mod synth;
mod util;
