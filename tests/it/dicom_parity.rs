//! Our DICOM writer against dcm2niix (the geometry oracle) and dciodvfy (the IOD checker):
//! phantom → our NIfTI, and phantom → our DICOM series → dcm2niix → NIfTI, must agree after
//! canonical reorientation (same shape, identical voxels, affine within 1e-3 mm).

use std::path::{Path, PathBuf};
use std::process::Command;

use fcdnode::nifti::{self, DataType};
use fcdnode::synth::SliceOrder;
use fcdnode::synth::dicom::{DicomOptions, SeriesInfo, supported_transfer_syntaxes, write_series};
use fcdnode::volume::Volume;
use fcdnode::volume::{Plane, acquisition_grid};

use crate::util::{assert_same_volume, dciodvfy, dcm2niix, run_ok, tempdir, tool};

const PLANES: [Plane; 4] = [Plane::Axial, Plane::Sagittal, Plane::Coronal, Plane::Oblique];
const ORDERS: [SliceOrder; 3] = [SliceOrder::Asc, SliceOrder::Desc, SliceOrder::Shuffled];
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
/// Deflated explicit VR LE: neither dcm2niix nor dciodvfy reads it, so DCMTK inflates it first.
const DEFLATED_LE: &str = "1.2.840.10008.1.2.1.99";
const JPEG_LS_LOSSLESS: &str = "1.2.840.10008.1.2.4.80";
/// Largest allowed affine difference, in mm.
const AFFINE_TOL_MM: f64 = 1e-3;

/// A 48×56×40 integer-valued volume, 1.0×1.0×1.2 mm, with a bright block in the low-i,
/// low-j, low-k corner so that any flip or axis swap changes voxels.
fn phantom(plane: Plane) -> Volume {
    let grid = acquisition_grid(plane, [1.0, 1.0, 1.2], [48.0, 56.0, 48.0], [3.5, -12.25, 20.0])
        .unwrap_or_else(|e| panic!("grid for {plane:?}: {e}"));
    assert_eq!(grid.shape, [48, 56, 40], "phantom grid shape for {plane:?}");
    let mut volume = Volume::filled(&grid, 0.0).unwrap_or_else(|e| panic!("volume: {e}"));
    for ((i, j, k), v) in volume.data_mut().indexed_iter_mut() {
        let ramp = (i + 3 * j + 7 * k) % 251;
        let block = if i < 10 && j < 14 && k < 8 { 2000 } else { 0 };
        *v = (100 + ramp + block) as f32;
    }
    volume
}

/// Writes the phantom as NIfTI and as a DICOM series, converts the series with dcm2niix and
/// compares both after canonical reorientation.
fn check_parity(plane: Plane, options: &DicomOptions) {
    let label = format!(
        "{plane:?} {:?} enhanced={} ts={}",
        options.order, options.enhanced, options.transfer_syntax
    );
    let tmp = tempdir();
    let volume = phantom(plane);
    let ours_path = tmp.path().join("ours.nii");
    nifti::write(&ours_path, &volume, DataType::I16).unwrap_or_else(|e| panic!("{label}: {e}"));
    let series = tmp.path().join("dicom");
    let info = SeriesInfo::new(7);
    let files = write_series(&volume, &info, options, &series).unwrap_or_else(|e| panic!("{label}: {e}"));
    assert_eq!(
        files.len(),
        if options.enhanced { 1 } else { 40 },
        "{label}: file count"
    );

    let native = tmp.path().join("native");
    let series = if options.transfer_syntax == DEFLATED_LE {
        dcmtk_to_native("dcmconv", &["+te"], &files, &native)
    } else if options.transfer_syntax == JPEG_LS_LOSSLESS && options.enhanced && options.order != SliceOrder::Asc {
        // dcm2niix v1.0.20260724 sorts the geometry of an encapsulated multi-frame image but
        // leaves its frames in stored order (uncompressed frames it reorders); DCMTK decodes
        // the JPEG-LS frames first, which also checks our codestreams with a second decoder.
        dcmtk_to_native("dcmdjpls", &[], &files, &native)
    } else {
        series
    };
    let theirs_path = dcm2niix(&series, &tmp.path().join("out"), &label);
    let ours = nifti::read(&ours_path).unwrap_or_else(|e| panic!("{label}: {e}"));
    let theirs = nifti::read(&theirs_path).unwrap_or_else(|e| panic!("{label}: {e}"));
    assert_same_volume(&label, &ours, &theirs, AFFINE_TOL_MM);
}

/// Rewrites `files` into `out` as explicit VR little endian with a DCMTK tool (`dcmconv +te`
/// inflates, `dcmdjpls` decodes JPEG-LS): an independent decoder, so a bad stream fails here
/// rather than in our own reader.
fn dcmtk_to_native(program: &str, args: &[&str], files: &[PathBuf], out: &Path) -> PathBuf {
    std::fs::create_dir_all(out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    for file in files {
        let name = file
            .file_name()
            .unwrap_or_else(|| panic!("{} has no file name", file.display()));
        run_ok(Command::new(tool(program)).args(args).arg(file).arg(out.join(name)));
    }
    out.to_owned()
}

fn options(order: SliceOrder, enhanced: bool, transfer_syntax: &str) -> DicomOptions {
    DicomOptions {
        order,
        enhanced,
        transfer_syntax: transfer_syntax.to_owned(),
        seed: 11,
    }
}

#[test]
fn single_frame_every_plane_and_order_matches_dcm2niix() {
    for plane in PLANES {
        for order in ORDERS {
            check_parity(plane, &options(order, false, EXPLICIT_LE));
        }
    }
}

#[test]
fn enhanced_every_plane_matches_dcm2niix() {
    for plane in PLANES {
        check_parity(plane, &options(SliceOrder::Asc, true, EXPLICIT_LE));
    }
    check_parity(Plane::Oblique, &options(SliceOrder::Shuffled, true, EXPLICIT_LE));
}

#[test]
fn every_transfer_syntax_matches_dcm2niix() {
    for (uid, _) in supported_transfer_syntaxes() {
        check_parity(Plane::Axial, &options(SliceOrder::Asc, false, uid));
        check_parity(Plane::Axial, &options(SliceOrder::Shuffled, false, uid));
        check_parity(Plane::Axial, &options(SliceOrder::Asc, true, uid));
        check_parity(Plane::Axial, &options(SliceOrder::Desc, true, uid));
    }
}

#[test]
fn dciodvfy_reports_no_errors() {
    let volume = phantom(Plane::Oblique);
    let info = SeriesInfo::new(3);
    for enhanced in [false, true] {
        for (uid, _) in supported_transfer_syntaxes() {
            let tmp = tempdir();
            let files = write_series(
                &volume,
                &info,
                &options(SliceOrder::Shuffled, enhanced, uid),
                tmp.path(),
            )
            .unwrap_or_else(|e| panic!("enhanced={enhanced} ts={uid}: {e}"));
            let file = if *uid == DEFLATED_LE {
                dcmtk_to_native("dcmconv", &["+te"], &files[..1], &tmp.path().join("native")).join("IM_0001.dcm")
            } else {
                files[0].clone()
            };
            for warning in dciodvfy(&file) {
                eprintln!("dciodvfy enhanced={enhanced} ts={uid}: {warning}");
            }
        }
    }
}
