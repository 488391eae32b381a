//! The assemble stage (DICOM series → Volume) on real files:
//! - synthetic series from `fcdnode synth --dicom` in every plane, instance order, single-frame
//!   and Enhanced MR, in every lossless transfer syntax (ours, and DCMTK/GDCM-transcoded):
//!   `fcdnode volume` equals dcm2niix and the BIDS NIfTI synth wrote (identical voxels after
//!   canonical reorientation, affines within 1e-3 mm);
//! - real files shipped by pydicom (MR_small in six encodings, MR_truncated);
//! - a single slice (MR_small, and one slice of a series in every plane) equals dcm2niix;
//! - a table of broken series, each refused with the right error naming series/file and rule;
//! - 8/12/16-bit signed and unsigned samples and rescale slope/intercept;
//! - `fcdnode inspect` on a cohort, text and JSON.

use std::path::{Path, PathBuf};
use std::process::Command;

use dicom_core::value::{PixelFragmentSequence, Value};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};
use fcdnode::Volume;
use fcdnode::assemble::{self, AssembleError, StackError};
use fcdnode::nifti;
use fcdnode::synth::dicom::{DicomOptions, SeriesInfo, write_series};
use fcdnode::volume::{Plane, acquisition_grid};

use crate::util::{assert_same_volume, dcm2niix, fcdnode, repo, run_ok, tempdir, tool};

const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const DEFLATED_LE: &str = "1.2.840.10008.1.2.1.99";
const JPEG_LS_LOSSLESS: &str = "1.2.840.10008.1.2.4.80";
const JPEG_LOSSLESS_SV1: &str = "1.2.840.10008.1.2.4.70";
const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";
const JPEG_2000_LOSSLESS: &str = "1.2.840.10008.1.2.4.90";
/// Largest allowed affine difference, in mm.
const AFFINE_TOL_MM: f64 = 1e-3;

// ---------------------------------------------------------------------------------------------
// dcm2niix and BIDS parity on `fcdnode synth --dicom` series

/// One subject from `fcdnode synth --dicom`: its FLAIR series and the BIDS NIfTI of the same
/// voxels.
struct Synth {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    label: String,
    order: &'static str,
    enhanced: bool,
    transfer_syntax: &'static str,
    /// `DIR/dicom/sub-00001/FLAIR`.
    series: PathBuf,
    /// `DIR/sub-00001/anat/sub-00001_acq-*_FLAIR.nii.gz`.
    bids: PathBuf,
}

fn synth(plane: &str, order: &'static str, enhanced: bool, transfer_syntax: &'static str) -> Synth {
    let label = format!("{plane} {order} enhanced={enhanced} ts={transfer_syntax}");
    let tmp = tempdir();
    let root = tmp.path().to_owned();
    let mut cmd = fcdnode();
    cmd.args(["synth", "--out"])
        .arg(&root)
        .args([
            "--subjects",
            "1",
            "--voxel-mm",
            "3",
            "--seed",
            "5",
            "--no-preview",
            "--dicom",
        ])
        .args(["--plane", plane, "--order", order, "--transfer-syntax", transfer_syntax]);
    if enhanced {
        cmd.arg("--enhanced");
    }
    run_ok(&mut cmd);
    let series = root.join("dicom/sub-00001/FLAIR");
    let anat = root.join("sub-00001/anat");
    let bids = std::fs::read_dir(&anat)
        .unwrap_or_else(|e| panic!("{label}: {}: {e}", anat.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with("_FLAIR.nii.gz"))
        .unwrap_or_else(|| panic!("{label}: no *_FLAIR.nii.gz in {}", anat.display()));
    Synth {
        _tmp: tmp,
        root,
        label,
        order,
        enhanced,
        transfer_syntax,
        series,
        bids,
    }
}

/// Files of a series directory, sorted.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `program args IN OUT` on every file of `series` into `out` (a DCMTK or GDCM converter).
fn convert_each(program: &str, args: &[&str], series: &Path, out: &Path) -> PathBuf {
    std::fs::create_dir_all(out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    for file in files_in(series) {
        let name = file.file_name().unwrap_or_else(|| panic!("{}", file.display()));
        run_ok(Command::new(tool(program)).args(args).arg(&file).arg(out.join(name)));
    }
    out.to_owned()
}

fn transfer_syntax_of(file: &Path) -> String {
    let obj = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    obj.meta().transfer_syntax().trim_end_matches('\0').to_owned()
}

/// `fcdnode volume SERIES --out …` read back.
fn fcdnode_volume(series: &Path, out: &Path, label: &str) -> Volume {
    run_ok(fcdnode().arg("volume").arg(series).arg("--out").arg(out));
    nifti::read(out).unwrap_or_else(|e| panic!("{label}: {e}"))
}

/// A series dcm2niix can read holding the same image as `s.series`: itself, or a DCMTK
/// rewrite where dcm2niix has a known limitation (no deflate; encapsulated Enhanced frames
/// left in stored order when that order is not ascending).
fn dcm2niix_input(s: &Synth, work: &Path) -> PathBuf {
    if s.transfer_syntax == DEFLATED_LE {
        convert_each("dcmconv", &["+te"], &s.series, &work.join("inflated"))
    } else if s.transfer_syntax == JPEG_LS_LOSSLESS && s.enhanced && s.order != "asc" {
        convert_each("dcmdjpls", &[], &s.series, &work.join("decoded"))
    } else {
        s.series.clone()
    }
}

/// `fcdnode volume` on `series` equals dcm2niix on `reference` and the BIDS NIfTI.
fn check_series(label: &str, series: &Path, reference: &Path, bids: &Path, work: &Path) {
    std::fs::create_dir_all(work).unwrap_or_else(|e| panic!("{label}: {e}"));
    let ours = fcdnode_volume(series, &work.join("ours.nii.gz"), label);
    let theirs = dcm2niix(reference, &work.join("dcm2niix"), label);
    let theirs = nifti::read(&theirs).unwrap_or_else(|e| panic!("{label}: {e}"));
    assert_same_volume(&format!("{label}: fcdnode vs dcm2niix"), &ours, &theirs, AFFINE_TOL_MM);
    let bids = nifti::read(bids).unwrap_or_else(|e| panic!("{label}: {e}"));
    assert_same_volume(&format!("{label}: fcdnode vs BIDS NIfTI"), &ours, &bids, AFFINE_TOL_MM);
}

fn check_synth(s: &Synth) {
    let work = s.root.join("check");
    let reference = dcm2niix_input(s, &work);
    check_series(&s.label, &s.series, &reference, &s.bids, &work);
}

/// Transcodes `s` (explicit VR LE) with every real encoder and checks each result; `reference`
/// is what dcm2niix reads (the uncompressed original where dcm2niix mis-orders encapsulated
/// multi-frame images).
fn check_transcoded(s: &Synth, dcm2niix_reads_transcoded: bool) {
    assert_eq!(
        s.transfer_syntax, EXPLICIT_LE,
        "{}: transcode from explicit VR LE",
        s.label
    );
    let encoders: [(&str, &[&str], &str); 5] = [
        ("dcmcjpeg", &["+e1"], JPEG_LOSSLESS_SV1),
        ("dcmcjpeg", &["+el", "+sv", "3"], "1.2.840.10008.1.2.4.57"),
        ("dcmcrle", &[], RLE_LOSSLESS),
        ("dcmcjpls", &["+el"], JPEG_LS_LOSSLESS),
        ("gdcmconv", &["--j2k"], JPEG_2000_LOSSLESS),
    ];
    for (program, args, expected_ts) in encoders {
        let label = format!("{} → {program} {}", s.label, args.join(" "));
        let work = s
            .root
            .join(format!("{program}{}", args.join("").replace(['+', ' '], "")));
        let series = convert_each(program, args, &s.series, &work.join("series"));
        for file in files_in(&series) {
            assert_eq!(transfer_syntax_of(&file), expected_ts, "{label}: {}", file.display());
        }
        let reference = if dcm2niix_reads_transcoded { &series } else { &s.series };
        check_series(&label, &series, reference, &s.bids, &work);
    }
}

#[test]
fn single_frame_every_plane_order_and_syntax_matches_dcm2niix_and_bids() {
    let cases = [
        ("axial", "asc", EXPLICIT_LE),
        ("sagittal", "shuffled", IMPLICIT_LE),
        ("coronal", "desc", DEFLATED_LE),
        ("oblique", "shuffled", JPEG_LS_LOSSLESS),
    ];
    for (plane, order, ts) in cases {
        check_synth(&synth(plane, order, false, ts));
    }
}

#[test]
fn enhanced_every_plane_matches_dcm2niix_and_bids() {
    let cases = [
        ("axial", "desc", EXPLICIT_LE),
        ("sagittal", "asc", JPEG_LS_LOSSLESS),
        ("coronal", "shuffled", IMPLICIT_LE),
        ("oblique", "desc", DEFLATED_LE),
    ];
    for (plane, order, ts) in cases {
        check_synth(&synth(plane, order, true, ts));
    }
}

#[test]
fn dcmtk_and_gdcm_transcoded_series_match_dcm2niix_and_bids() {
    // Single-frame, shuffled instance order: dcm2niix reads every transcoded series itself.
    let single = synth("oblique", "shuffled", false, EXPLICIT_LE);
    check_synth(&single);
    check_transcoded(&single, true);
    // Enhanced MR, descending frames: each frame is encoded separately; dcm2niix would keep
    // encapsulated frames in stored order, so its reference is the uncompressed original.
    let enhanced = synth("coronal", "desc", true, EXPLICIT_LE);
    check_transcoded(&enhanced, false);
}

// ---------------------------------------------------------------------------------------------
// Real files shipped by pydicom

/// pydicom's test files, installed into `.tools/venv` by `scripts/setup.sh`.
fn pydicom_test_files() -> PathBuf {
    let lib = repo().join(".tools/venv/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|entries| {
        entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .map(|p| p.join("site-packages/pydicom/data/test_files"))
            .find(|p| p.is_dir())
    });
    found.unwrap_or_else(|| {
        panic!(
            "pydicom test files are missing under {}/python3*/site-packages: run `scripts/setup.sh` \
             (it installs pydicom into .tools/venv)",
            lib.display()
        )
    })
}

fn read_one(path: &Path) -> assemble::Source {
    assemble::read_files(&[path.to_owned()], false)
        .unwrap_or_else(|e| panic!("{e}"))
        .remove(0)
}

#[test]
fn pydicom_mr_small_variants_decode_identically() {
    let dir = pydicom_test_files();
    let reference = assemble::decode_frame(&read_one(&dir.join("MR_small.dcm")), 0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reference.dim(), (64, 64), "MR_small is 64×64");
    // Signed 16-bit samples; the first two (dcmdump: 0389\03fb) and the range.
    assert_eq!((reference[[0, 0]], reference[[0, 1]]), (905.0, 1019.0));
    let variants = [
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_expb.dcm",
        "MR_small_padded.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
    ];
    for name in variants {
        let source = read_one(&dir.join(name));
        let pixels = assemble::decode_frame(&source, 0).unwrap_or_else(|e| panic!("{name}: {e}"));
        let differ = pixels.iter().zip(reference.iter()).filter(|(a, b)| a != b).count();
        assert_eq!(pixels.dim(), reference.dim(), "{name}: shape");
        assert_eq!(differ, 0, "{name}: {differ} pixels differ from MR_small.dcm");
    }
    // A frame that does not exist is an error, not a panic.
    let err = assemble::decode_frame(&read_one(&dir.join("MR_small.dcm")), 1).unwrap_err();
    assert!(err.to_string().contains("MR_small.dcm"), "{err}");
}

#[test]
fn a_single_slice_matches_dcm2niix() {
    let work = tempdir();
    let check = |label: &str, file: &Path, step_mm: f64| {
        // dcm2niix reads a directory; `fcdnode volume` is given the file itself.
        let series = work.path().join(label).join("series");
        std::fs::create_dir_all(&series).unwrap_or_else(|e| panic!("{label}: {e}"));
        let copy = series.join("slice.dcm");
        std::fs::copy(file, &copy).unwrap_or_else(|e| panic!("{label}: {e}"));
        let ours = fcdnode_volume(&copy, &work.path().join(label).join("ours.nii.gz"), label);
        let theirs = dcm2niix(&series, &work.path().join(label).join("dcm2niix"), label);
        let theirs = nifti::read(&theirs).unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_same_volume(&format!("{label}: fcdnode vs dcm2niix"), &ours, &theirs, AFFINE_TOL_MM);
        // NIfTI stores single precision.
        let spacing = ours.spacing();
        assert!((spacing[2] - step_mm).abs() < 1e-6, "{label}: spacing {spacing:?}");
        ours
    };
    // pydicom's MR_small: one axial 64×64 slice, Slice Thickness 0.8 mm, no Spacing Between
    // Slices.
    let mr_small = pydicom_test_files().join("MR_small.dcm");
    assert_eq!(check("MR_small", &mr_small, 0.8).shape(), [64, 64, 1]);
    // Spacing Between Slices comes first, as in dcm2niix.
    let mut obj = open(&mr_small);
    set_ds(&mut obj, tags::SPACING_BETWEEN_SLICES, &[1.5]);
    let spaced = work.path().join("MR_small_spaced.dcm");
    save(&obj, &spaced);
    check("MR_small with Spacing Between Slices", &spaced, 1.5);
    // One slice of a series in every plane: the step runs along row × column, as in dcm2niix.
    for plane in [Plane::Axial, Plane::Sagittal, Plane::Coronal, Plane::Oblique] {
        let label = format!("{plane:?} slice");
        let dir = work.path().join(format!("{plane:?}-series"));
        let volume = small_volume(plane, [12, 10, 3]);
        let files = write_series(&volume, &SeriesInfo::new(31), &DicomOptions::default(), &dir)
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(check(&label, &files[1], 2.0).shape(), [12, 10, 1]);
    }
}

#[test]
fn pydicom_truncated_file_is_a_clear_error() {
    let path = pydicom_test_files().join("MR_truncated.dcm");
    let err = match assemble::read_files(std::slice::from_ref(&path), false) {
        Ok(_) => panic!("MR_truncated.dcm was read without error"),
        Err(e) => e,
    };
    assert!(matches!(err, AssembleError::Read { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("MR_truncated.dcm") && message.contains("cannot read DICOM"),
        "{message}"
    );
    let err = assemble::assemble_paths(&[path], None).unwrap_err();
    assert!(err.to_string().contains("MR_truncated.dcm"), "{err}");
    // The CLI says the same and exits non-zero.
    let out = fcdnode()
        .arg("volume")
        .arg(pydicom_test_files().join("MR_truncated.dcm"))
        .args(["--out", "/nonexistent/never-written.nii.gz"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("MR_truncated.dcm"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// Broken series

/// A small axial series: 12 columns × 10 rows × 8 slices, 1 × 1 × 2 mm, one file per slice in
/// ascending order (`IM_000{k+1}.dcm` holds slice k).
struct Base {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    files: Vec<PathBuf>,
    volume: Volume,
    info: SeriesInfo,
}

fn small_volume(plane: Plane, shape: [usize; 3]) -> Volume {
    let fov = [shape[0] as f64, shape[1] as f64, 2.0 * shape[2] as f64];
    let grid = acquisition_grid(plane, [1.0, 1.0, 2.0], fov, [10.0, -20.0, 30.0]).unwrap_or_else(|e| panic!("{e}"));
    let mut volume = Volume::filled(&grid, 0.0).unwrap_or_else(|e| panic!("{e}"));
    for ((i, j, k), v) in volume.data_mut().indexed_iter_mut() {
        *v = (100 + (i + 3 * j + 7 * k) % 251) as f32;
    }
    volume
}

fn base_series(transfer_syntax: &str) -> Base {
    let tmp = tempdir();
    let dir = tmp.path().join("base");
    let volume = small_volume(Plane::Axial, [12, 10, 8]);
    assert_eq!(volume.shape(), [12, 10, 8]);
    let info = SeriesInfo::new(21);
    let options = DicomOptions {
        transfer_syntax: transfer_syntax.to_owned(),
        ..DicomOptions::default()
    };
    let files = write_series(&volume, &info, &options, &dir).unwrap_or_else(|e| panic!("{e}"));
    Base {
        _tmp: tmp,
        dir,
        files,
        volume,
        info,
    }
}

fn open(path: &Path) -> DefaultDicomObject {
    OpenFileOptions::new()
        .open_file(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn save(obj: &DefaultDicomObject, path: &Path) {
    obj.write_to_file(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn set_ds(obj: &mut DefaultDicomObject, tag: dicom_core::Tag, values: &[f64]) {
    let text = values.iter().map(|v| format!("{v}")).collect::<Vec<_>>().join("\\");
    obj.put(DataElement::new(tag, VR::DS, PrimitiveValue::from(text)));
}

fn set_us(obj: &mut DefaultDicomObject, tag: dicom_core::Tag, value: u16) {
    obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(value)));
}

fn position(obj: &DefaultDicomObject) -> [f64; 3] {
    let v = obj
        .element(tags::IMAGE_POSITION_PATIENT)
        .unwrap_or_else(|e| panic!("{e}"))
        .to_multi_float64()
        .unwrap_or_else(|e| panic!("{e}"));
    [v[0], v[1], v[2]]
}

/// A copy of the base series in a new directory, with `edit` applied to it.
fn edited(base: &Base, name: &str, edit: impl FnOnce(&Base, &Path)) -> PathBuf {
    let dir = base.dir.with_file_name(name);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    for f in &base.files {
        std::fs::copy(f, dir.join(f.file_name().unwrap_or_default())).unwrap_or_else(|e| panic!("{e}"));
    }
    edit(base, &dir);
    dir
}

/// Opens `dir/name`, lets `f` change it, writes it back.
fn modify(dir: &Path, name: &str, f: impl FnOnce(&mut DefaultDicomObject)) {
    let path = dir.join(name);
    let mut obj = open(&path);
    f(&mut obj);
    save(&obj, &path);
}

type Check = fn(&AssembleError) -> bool;

#[test]
fn broken_series_are_refused_with_the_rule_and_the_series() {
    let base = base_series(EXPLICIT_LE);
    let jpeg_ls = base_series(JPEG_LS_LOSSLESS);
    let uid = base.info.series_instance_uid.clone();
    let step = 2.0;
    let mut cases: Vec<(&str, PathBuf, Check, Vec<&str>)> = Vec::new();

    let dir = edited(&base, "gap", |_, d| {
        std::fs::remove_file(d.join("IM_0005.dcm")).unwrap_or_default()
    });
    cases.push((
        "gap",
        dir,
        |e| {
            matches!(
                e,
                AssembleError::Stack {
                    source: StackError::Gap { missing: 1, .. },
                    ..
                }
            )
        },
        vec!["gap", "1 slice(s) missing"],
    ));

    let dir = edited(&base, "duplicate", |_, d| {
        let mut obj = open(&d.join("IM_0004.dcm"));
        let sop = "2.25.1234567890";
        obj.put(DataElement::new(
            tags::SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(sop),
        ));
        obj.update_meta(|m| m.media_storage_sop_instance_uid = sop.into());
        save(&obj, &d.join("IM_0099.dcm"));
    });
    cases.push((
        "duplicate position",
        dir,
        |e| {
            matches!(
                e,
                AssembleError::Stack {
                    source: StackError::DuplicatePosition { count: 2, .. },
                    ..
                }
            )
        },
        vec!["2 slices share the position"],
    ));

    let dir = edited(&base, "uneven", |_, d| {
        modify(d, "IM_0005.dcm", |obj| {
            let p = position(obj);
            set_ds(obj, tags::IMAGE_POSITION_PATIENT, &[p[0], p[1], p[2] + 0.4 * step]);
        })
    });
    cases.push((
        "non-uniform spacing",
        dir,
        |e| {
            matches!(
                e,
                AssembleError::Stack {
                    source: StackError::UnevenSpacing { .. },
                    ..
                }
            )
        },
        vec!["non-uniform slice spacing"],
    ));

    let dir = edited(&base, "tilt", |b, d| {
        for (k, f) in b.files.iter().enumerate() {
            let name = f.file_name().unwrap_or_default().to_string_lossy().into_owned();
            modify(d, &name, |obj| {
                let p = position(obj);
                // 0.3 mm in-plane per 2 mm slice step: an 8.5° gantry tilt.
                set_ds(obj, tags::IMAGE_POSITION_PATIENT, &[p[0], p[1] + 0.3 * k as f64, p[2]]);
            });
        }
    });
    cases.push((
        "gantry tilt",
        dir,
        |e| {
            matches!(
                e,
                AssembleError::Stack {
                    source: StackError::Tilted { .. },
                    ..
                }
            )
        },
        vec!["gantry tilt"],
    ));

    let dir = edited(&base, "mixed-matrix", |b, d| {
        // Slices 5..8 replaced by the same positions written with 9 instead of 10 rows: one
        // acquisition plane, two matrices.
        let other = small_volume(Plane::Axial, [12, 9, 8]);
        let tmp = d.with_file_name("mixed-matrix-src");
        let options = DicomOptions {
            seed: 99,
            ..DicomOptions::default()
        };
        let files = write_series(&other, &b.info, &options, &tmp).unwrap_or_else(|e| panic!("{e}"));
        for f in &files[5..] {
            let name = f.file_name().unwrap_or_default();
            std::fs::copy(f, d.join(name)).unwrap_or_else(|e| panic!("{e}"));
        }
    });
    cases.push((
        "mixed rows/columns",
        dir,
        |e| {
            matches!(
                e,
                AssembleError::Stack {
                    source: StackError::Mixed {
                        what: "Rows/Columns",
                        ..
                    },
                    ..
                }
            )
        },
        vec!["Rows/Columns", "10×12", "9×12"],
    ));

    let dir = edited(&base, "two-planes", |b, d| {
        // Four axial and four coronal slices in one series: no main stack.
        let other = small_volume(Plane::Coronal, [12, 10, 8]);
        let tmp = d.with_file_name("two-planes-src");
        let options = DicomOptions {
            seed: 98,
            ..DicomOptions::default()
        };
        let files = write_series(&other, &b.info, &options, &tmp).unwrap_or_else(|e| panic!("{e}"));
        for f in &files[4..] {
            std::fs::copy(f, d.join(f.file_name().unwrap_or_default())).unwrap_or_else(|e| panic!("{e}"));
        }
    });
    cases.push((
        "two stacks tie",
        dir,
        |e| {
            matches!(
                e,
                AssembleError::AmbiguousStacks {
                    count: 2,
                    frames: 4,
                    ..
                }
            )
        },
        vec!["no single main stack"],
    ));

    let dir = edited(&base, "single-no-step", |b, d| {
        for f in &b.files[1..] {
            std::fs::remove_file(d.join(f.file_name().unwrap_or_default())).unwrap_or_default();
        }
        modify(d, "IM_0001.dcm", |obj| {
            obj.remove_element(tags::SLICE_THICKNESS);
            obj.remove_element(tags::SPACING_BETWEEN_SLICES);
        });
    });
    cases.push((
        "single slice without a stated step",
        dir,
        |e| {
            matches!(
                e,
                AssembleError::Stack {
                    source: StackError::NoSliceStep,
                    ..
                }
            )
        },
        vec!["single slice", "Slice Thickness (0018,0050)"],
    ));

    for (name, tag, attribute) in [
        ("no-ipp", tags::IMAGE_POSITION_PATIENT, "Image Position (Patient)"),
        ("no-iop", tags::IMAGE_ORIENTATION_PATIENT, "Image Orientation (Patient)"),
        ("no-spacing", tags::PIXEL_SPACING, "Pixel Spacing"),
    ] {
        let dir = edited(&base, name, |_, d| {
            modify(d, "IM_0003.dcm", |obj| {
                obj.remove_element(tag);
            })
        });
        cases.push((
            attribute,
            dir,
            |e| matches!(e, AssembleError::MissingAttribute { .. }),
            vec!["IM_0003.dcm", "missing", attribute],
        ));
    }

    let dir = edited(&jpeg_ls, "corrupt-jpeg-ls", |_, d| {
        modify(d, "IM_0003.dcm", |obj| {
            let pixel_data = obj.element(tags::PIXEL_DATA).unwrap_or_else(|e| panic!("{e}"));
            let fragments = pixel_data
                .value()
                .fragments()
                .unwrap_or_else(|| panic!("not encapsulated"));
            // Keep the JPEG-LS header, drop most of the scan: the decoder runs out of data.
            let broken: Vec<u8> = fragments[0][..fragments[0].len() / 3].to_vec();
            let value: Value<InMemDicomObject> =
                Value::PixelSequence(PixelFragmentSequence::new_fragments(vec![broken]));
            obj.put(DataElement::new(tags::PIXEL_DATA, VR::OB, value));
        })
    });
    cases.push((
        "undecodable pixel data",
        dir,
        |e| matches!(e, AssembleError::Decode { .. }),
        vec!["IM_0003.dcm", "cannot decode pixel data"],
    ));

    let dir = edited(&base, "truncated", |_, d| {
        let path = d.join("IM_0003.dcm");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap_or_else(|e| panic!("{e}"));
    });
    cases.push((
        "truncated file",
        dir,
        |e| matches!(e, AssembleError::Read { .. }),
        vec!["IM_0003.dcm", "cannot read DICOM"],
    ));

    for (name, allocated, stored) in [("bits-32", 32u16, 32u16), ("bits-1", 1, 1)] {
        let dir = edited(&base, name, |_, d| {
            modify(d, "IM_0002.dcm", |obj| {
                set_us(obj, tags::BITS_ALLOCATED, allocated);
                set_us(obj, tags::BITS_STORED, stored);
                set_us(obj, tags::HIGH_BIT, stored - 1);
            })
        });
        cases.push((
            "unsupported bit depth",
            dir,
            |e| matches!(e, AssembleError::BadAttribute { .. }),
            vec!["IM_0002.dcm", "unsupported bit depth", "Bits Allocated"],
        ));
    }

    for (name, dir, check, fragments) in &cases {
        let result = std::panic::catch_unwind(|| assemble::assemble_paths(std::slice::from_ref(dir), None));
        let err = match result {
            Err(_) => panic!("{name}: assembling panicked"),
            Ok(Ok(a)) => panic!("{name}: assembled {:?} instead of failing", a.volume.shape()),
            Ok(Err(e)) => e,
        };
        assert!(check(&err), "{name}: wrong error: {err:?}");
        let message = err.to_string();
        let names_where = message.contains(&uid) || matches!(err, AssembleError::Read { .. });
        assert!(names_where, "{name}: message does not name the series {uid}: {message}");
        for f in fragments {
            assert!(message.contains(f), "{name}: message lacks {f:?}: {message}");
        }
        // The CLI reports the same and fails.
        let out = fcdnode()
            .arg("volume")
            .arg(dir)
            .arg("--out")
            .arg(dir.join("never.nii.gz"))
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: fcdnode volume succeeded");
        assert!(
            stderr.contains(fragments[0]),
            "{name}: CLI stderr lacks {:?}: {stderr}",
            fragments[0]
        );
    }
    // The untouched series still assembles.
    let ok = assemble::assemble_paths(std::slice::from_ref(&base.dir), None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ok.volume.data(), base.volume.data());
}

#[test]
fn extra_stacks_in_other_planes_are_left_out_and_reported() {
    // A localizer-like stack (two coronal frames) next to the eight axial slices.
    let base = base_series(EXPLICIT_LE);
    let localizer = small_volume(Plane::Coronal, [12, 10, 2]);
    let tmp = base.dir.with_file_name("localizer");
    let options = DicomOptions {
        seed: 97,
        ..DicomOptions::default()
    };
    let files = write_series(&localizer, &base.info, &options, &tmp).unwrap_or_else(|e| panic!("{e}"));
    for (n, f) in files.iter().enumerate() {
        std::fs::copy(f, base.dir.join(format!("LOC_{n}.dcm"))).unwrap_or_else(|e| panic!("{e}"));
    }
    let a = assemble::assemble_paths(std::slice::from_ref(&base.dir), None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.volume.data(), base.volume.data());
    assert!(a.volume.affine().max_abs_diff(base.volume.affine()) < 1e-9);
    assert_eq!(a.stack.frames, 8);
    assert_eq!(a.other_stacks.len(), 1);
    assert_eq!(a.other_stacks[0].frames, 2);
}

// ---------------------------------------------------------------------------------------------
// Bit depths and rescale

/// How one variant stores a value computed from (row, column, slice).
struct Encoding {
    name: &'static str,
    allocated: u16,
    stored: u16,
    signed: bool,
    /// Rescale slope and intercept written into every instance.
    rescale: Option<(f64, f64)>,
    /// Stored sample for (r, c, k), as the word written into Pixel Data.
    word: fn(usize, usize, usize) -> u16,
    /// The voxel value the assembler must produce for (r, c, k).
    expected: fn(usize, usize, usize) -> f32,
}

fn pattern(r: usize, c: usize, k: usize) -> usize {
    r * 37 + c * 11 + k * 101
}

#[test]
fn eight_twelve_sixteen_bit_signed_unsigned_and_rescale_decode_exactly() {
    let encodings = [
        Encoding {
            name: "8-bit unsigned",
            allocated: 8,
            stored: 8,
            signed: false,
            rescale: None,
            word: |r, c, k| (pattern(r, c, k) % 256) as u16,
            expected: |r, c, k| (pattern(r, c, k) % 256) as f32,
        },
        Encoding {
            name: "8-bit signed",
            allocated: 8,
            stored: 8,
            signed: true,
            rescale: None,
            word: |r, c, k| (pattern(r, c, k) % 256) as u16,
            expected: |r, c, k| f32::from((pattern(r, c, k) % 256) as u8 as i8),
        },
        Encoding {
            name: "12-bit unsigned, overlay bits set above bit 11",
            allocated: 16,
            stored: 12,
            signed: false,
            rescale: None,
            word: |r, c, k| (pattern(r, c, k) % 4096) as u16 | 0xA000,
            expected: |r, c, k| (pattern(r, c, k) % 4096) as f32,
        },
        Encoding {
            name: "12-bit signed, not sign-extended",
            allocated: 16,
            stored: 12,
            signed: true,
            rescale: None,
            word: |r, c, k| ((pattern(r, c, k) % 4096) as i32 - 2048) as u16 & 0x0FFF,
            expected: |r, c, k| ((pattern(r, c, k) % 4096) as i32 - 2048) as f32,
        },
        Encoding {
            name: "16-bit signed, slope 2, intercept -1000",
            allocated: 16,
            stored: 16,
            signed: true,
            rescale: Some((2.0, -1000.0)),
            word: |r, c, k| (pattern(r, c, k) as i32 - 3000) as i16 as u16,
            expected: |r, c, k| 2.0 * (pattern(r, c, k) as i32 - 3000) as f32 - 1000.0,
        },
        Encoding {
            name: "16-bit unsigned, slope 0.5, intercept 0.25",
            allocated: 16,
            stored: 16,
            signed: false,
            rescale: Some((0.5, 0.25)),
            word: |r, c, k| (pattern(r, c, k) * 40) as u16,
            expected: |r, c, k| (pattern(r, c, k) * 40) as u16 as f32 * 0.5 + 0.25,
        },
    ];
    let base = base_series(EXPLICIT_LE);
    let [cols, rows, slices] = base.volume.shape();
    for e in &encodings {
        let dir = edited(&base, &e.name.replace([' ', ',', '-'], "_"), |b, d| {
            for (k, f) in b.files.iter().enumerate() {
                let name = f.file_name().unwrap_or_default().to_string_lossy().into_owned();
                modify(d, &name, |obj| {
                    set_us(obj, tags::BITS_ALLOCATED, e.allocated);
                    set_us(obj, tags::BITS_STORED, e.stored);
                    set_us(obj, tags::HIGH_BIT, e.stored - 1);
                    set_us(obj, tags::PIXEL_REPRESENTATION, u16::from(e.signed));
                    let words = (0..rows).flat_map(|r| (0..cols).map(move |c| (e.word)(r, c, k)));
                    let element = if e.allocated == 8 {
                        let bytes: Vec<u8> = words.map(|w| w as u8).collect();
                        DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(bytes))
                    } else {
                        let words: Vec<u16> = words.collect();
                        DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(words.into()))
                    };
                    obj.put(element);
                    obj.remove_element(tags::WINDOW_CENTER);
                    obj.remove_element(tags::WINDOW_WIDTH);
                    if let Some((slope, intercept)) = e.rescale {
                        set_ds(obj, tags::RESCALE_SLOPE, &[slope]);
                        set_ds(obj, tags::RESCALE_INTERCEPT, &[intercept]);
                    }
                });
            }
        });
        let a = assemble::assemble_paths(&[dir], None).unwrap_or_else(|err| panic!("{}: {err}", e.name));
        assert!(
            a.volume.affine().max_abs_diff(base.volume.affine()) < 1e-9,
            "{}: affine",
            e.name
        );
        let data = a.volume.data();
        assert_eq!(data.shape(), &[cols, rows, slices], "{}: shape", e.name);
        for k in 0..slices {
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        data[[c, r, k]],
                        (e.expected)(r, c, k),
                        "{}: voxel (i {c}, j {r}, k {k})",
                        e.name
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// fcdnode inspect

#[test]
fn inspect_lists_both_series_per_subject_with_routing() {
    let tmp = tempdir();
    let root = tmp.path().join("cohort");
    run_ok(fcdnode().args(["synth", "--out"]).arg(&root).args([
        "--subjects",
        "2",
        "--voxel-mm",
        "3",
        "--seed",
        "8",
        "--no-preview",
        "--dicom",
    ]));
    // The default rules want ≤ 1.5 mm slices; this cohort has 3 mm voxels, so the config raises
    // the limit (and shows that routing comes from the config file).
    let config = tmp.path().join("fcdnode.toml");
    let names_flair = "flair|t2sel|tse3dvfl";
    let names_t1 = "mprage|t1w";
    std::fs::write(
        &config,
        format!(
            "[[routing.rules]]\nname = \"3D FLAIR, 3 mm test cohort\"\nchannel = \"FLAIR\"\nnames = \
             \"{names_flair}\"\nmr_acquisition_type = \"3D\"\nmax_slice_thickness_mm = 3.5\nmin_slices = 20\n\n\
             [[routing.rules]]\nname = \"3D T1w, 3 mm test cohort\"\nchannel = \"T1w\"\nnames = \
             \"{names_t1}\"\nmr_acquisition_type = \"3D\"\nmax_slice_thickness_mm = 3.5\nmin_slices = 20\n"
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let dicom = root.join("dicom");

    let out = run_ok(fcdnode().arg("inspect").arg(&dicom).arg("--config").arg(&config));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.matches("\nseries ").count() + usize::from(text.starts_with("series ")),
        4,
        "{text}"
    );
    let lower = text.to_lowercase();
    assert_eq!(lower.matches("routing: t1w").count(), 2, "{text}");
    assert_eq!(lower.matches("routing: flair").count(), 2, "{text}");
    assert!(
        text.contains("3D FLAIR, 3 mm test cohort") && text.contains("voxels"),
        "{text}"
    );

    let out = run_ok(
        fcdnode()
            .arg("inspect")
            .arg(&dicom)
            .arg("--config")
            .arg(&config)
            .arg("--json"),
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"));
    let series = json["series"]
        .as_array()
        .unwrap_or_else(|| panic!("no series array: {json}"));
    assert_eq!(series.len(), 4, "{json}");
    let channel = |s: &serde_json::Value| s["routing"]["channel"].as_str().map(str::to_owned);
    let mut channels: Vec<String> = series.iter().filter_map(channel).collect();
    channels.sort();
    assert_eq!(channels, ["FLAIR", "FLAIR", "T1w", "T1w"], "{json}");
    for s in series {
        assert!(
            s["routing"]["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "no reason: {s}"
        );
        assert!(s["dimensions"].is_array() && s["error"].is_null(), "{s}");
    }
    assert_eq!(json["skipped"].as_array().map(Vec::len), Some(0), "{json}");
    // Two subjects, so two studies.
    let mut studies: Vec<&str> = series.iter().filter_map(|s| s["meta"]["study_uid"].as_str()).collect();
    studies.sort();
    studies.dedup();
    assert_eq!(studies.len(), 2, "{json}");
}
