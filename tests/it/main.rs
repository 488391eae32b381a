//! The single integration-test binary: real peers (dcm2niix, DCMTK, …) on real files.
//! Peers come from `scripts/setup.sh`; a missing one fails the test loudly.

mod api;
mod assemble;
mod audit;
mod conformance;
mod console;
mod deliver;
mod demo_model;
mod dicom_parity;
mod faults;
mod infer;
mod ingest;
mod node;
mod notify;
mod orthanc;
mod report;
mod synth;
mod util;
