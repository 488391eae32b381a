//! Report stage against real peers: SC and SR from a synthetic series and heatmap must pass
//! dciodvfy, dsrdump must read the SR tree, dcm2pnm must render an SC frame with colour at the
//! heat peak and grey elsewhere; the geometry and references must point back at the source.

use std::path::{Path, PathBuf};
use std::process::Command;

use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, open_file};
use fcdnode::assemble::{Assembled, assemble_paths};
use fcdnode::report::{
    Algorithm, Device, DicomFile, Finding, Hotspot, InstanceRef, ReportError, ReportInputs, ReportOptions, Timestamp,
    Timings, UidGenerator, is_own_output, preview_png, secondary_capture, structured_report, write_dicom,
    write_outputs,
};
use fcdnode::synth::dicom::{DicomOptions, SeriesInfo, write_series};
use fcdnode::volume::Volume;
use fcdnode::volume::{Plane, acquisition_grid};

use crate::util::{dciodvfy, run_ok, tempdir, tool};

/// Heat peak in voxel index `[i, j, k]`: away from the legend in the top-left corner.
const PEAK: [usize; 3] = [28, 32, 15];
/// A pixel far from the peak and outside the legend: (column i, row j).
const FAR: [usize; 2] = [4, 44];

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    source: Assembled,
    header: DicomFile,
    heatmap: Volume,
    finding: Finding,
}

/// A 40×48×24 integer series (1.0 × 1.0 × 1.5 mm) on `plane`, assembled, with a Gaussian
/// heatmap peaking at [`PEAK`].
fn fixture(plane: Plane, enhanced: bool) -> Fixture {
    let tmp = tempdir();
    let grid = acquisition_grid(plane, [1.0, 1.0, 1.5], [40.0, 48.0, 36.0], [2.0, -10.0, 15.0])
        .unwrap_or_else(|e| panic!("grid: {e}"));
    assert_eq!(grid.shape, [40, 48, 24]);
    let mut volume = Volume::filled(&grid, 0.0).unwrap();
    for ((i, j, k), v) in volume.data_mut().indexed_iter_mut() {
        *v = (200 + (i * 7 + j * 3 + k * 11) % 400) as f32;
    }
    let series_dir = tmp.path().join("source");
    let options = DicomOptions {
        enhanced,
        ..DicomOptions::default()
    };
    let files = write_series(&volume, &SeriesInfo::new(11), &options, &series_dir).unwrap();
    let source = assemble_paths(std::slice::from_ref(&series_dir), None).unwrap();
    assert_eq!(source.volume.shape(), [40, 48, 24]);
    let header = open_file(&files[0]).unwrap();
    let mut heatmap = Volume::filled(&source.volume.grid(), 0.0).unwrap();
    for ((i, j, k), v) in heatmap.data_mut().indexed_iter_mut() {
        let d2 = [i, j, k]
            .iter()
            .zip(PEAK)
            .map(|(a, b)| (*a as f64 - b as f64).powi(2))
            .sum::<f64>();
        *v = (-d2 / (2.0 * 2.5f64.powi(2))).exp() as f32;
    }
    let finding = Finding {
        probability: 0.8734,
        threshold: 0.5,
        suspected: true,
        fold_probabilities: vec![0.8, 0.9, 0.92],
        peak: Some(Hotspot {
            lps: source.volume.voxel_to_world(PEAK.map(|v| v as f64)),
            slice: PEAK[2],
        }),
    };
    let dir = tmp.path().join("out");
    Fixture {
        _tmp: tmp,
        dir,
        source,
        header,
        heatmap,
        finding,
    }
}

fn algorithm() -> Algorithm {
    Algorithm {
        name: "fcd-resnet18-demo".into(),
        version: "1.2.0".into(),
        parameters: "explain=gradcam; folds=3; threshold=0.50".into(),
        sha256: "0f".repeat(32),
    }
}

fn options(multiframe: bool) -> ReportOptions {
    ReportOptions::new()
        .with_multiframe(multiframe)
        .with_timestamp(Timestamp {
            date: "20240102".into(),
            time: "030405".into(),
        })
}

fn str_of(obj: &InMemDicomObject, tag: dicom_core::Tag) -> String {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_owned())
        .unwrap_or_default()
}

/// Coloured pixels (R≠G or G≠B) per frame of an RGB SC instance.
fn coloured_per_frame(obj: &InMemDicomObject) -> Vec<usize> {
    let rows = usize::from(obj.get(tags::ROWS).unwrap().to_int::<u16>().unwrap());
    let cols = usize::from(obj.get(tags::COLUMNS).unwrap().to_int::<u16>().unwrap());
    let bytes = obj.get(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    let frame_len = rows * cols * 3;
    bytes
        .chunks(frame_len)
        .filter(|c| c.len() == frame_len)
        .map(|frame| frame.chunks(3).filter(|p| p[0] != p[1] || p[1] != p[2]).count())
        .collect()
}

fn argmax(v: &[usize]) -> usize {
    v.iter().enumerate().max_by_key(|(_, c)| **c).map(|(i, _)| i).unwrap()
}

/// Renders frame `frame` (1-based) of `path` with dcm2pnm as PNG and returns it.
fn dcm2pnm(path: &Path, frame: usize, out: &Path) -> image::RgbImage {
    run_ok(
        Command::new(tool("dcm2pnm"))
            .args(["+on", "+F", &frame.to_string()])
            .arg(path)
            .arg(out),
    );
    image::open(out).unwrap().to_rgb8()
}

fn check_case(plane: Plane, enhanced: bool, multiframe: bool) {
    let label = format!("{plane:?} enhanced={enhanced} multiframe={multiframe}");
    let f = fixture(plane, enhanced);
    let algorithm = algorithm();
    let device = Device::default();
    let options = options(multiframe);
    let inputs = ReportInputs {
        source_header: &f.header,
        source: &f.source,
        finding: &f.finding,
        algorithm: &algorithm,
        device: &device,
        options: &options,
    };
    let mut uids = UidGenerator::seeded(3);
    let written = write_outputs(&inputs, &f.heatmap, &mut uids, Timings::default(), &f.dir)
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    assert_eq!(written.sc_paths.len(), if multiframe { 1 } else { 24 }, "{label}");
    // FCDNODE_KEEP_OUTPUTS=DIR keeps the outputs for inspection.
    if let Some(keep) = std::env::var_os("FCDNODE_KEEP_OUTPUTS") {
        let keep = Path::new(&keep).join(format!("{plane:?}-{enhanced}-{multiframe}"));
        for path in written.sc_paths.iter().chain([&written.sr_path, &written.preview_path]) {
            let rel = path.strip_prefix(&f.dir).unwrap();
            std::fs::create_dir_all(keep.join(rel).parent().unwrap()).unwrap();
            std::fs::copy(path, keep.join(rel)).unwrap();
        }
    }

    // dciodvfy on every output.
    for path in written.sc_paths.iter().chain([&written.sr_path]) {
        let warnings = dciodvfy(path);
        if !warnings.is_empty() {
            eprintln!("{label}: dciodvfy {}:\n{}", path.display(), warnings.join("\n"));
        }
    }

    // Study, frame of reference, source references, loop guard.
    let study_uid = str_of(&f.header, tags::STUDY_INSTANCE_UID);
    let for_uid = str_of(&f.header, tags::FRAME_OF_REFERENCE_UID);
    let source_uids: Vec<String> = f.source.slices.iter().map(|s| s.sop_instance_uid.clone()).collect();
    let sc: Vec<DicomFile> = written.sc_paths.iter().map(|p| open_file(p).unwrap()).collect();
    for (n, obj) in sc.iter().enumerate() {
        assert_eq!(str_of(obj, tags::STUDY_INSTANCE_UID), study_uid, "{label}");
        assert_eq!(
            str_of(obj, tags::PATIENT_ID),
            str_of(&f.header, tags::PATIENT_ID),
            "{label}"
        );
        assert_ne!(
            str_of(obj, tags::SERIES_INSTANCE_UID),
            str_of(&f.header, tags::SERIES_INSTANCE_UID),
            "{label}: new series"
        );
        assert_eq!(str_of(obj, tags::BURNED_IN_ANNOTATION), "YES");
        assert!(is_own_output(obj, &device.device_uid), "{label}: loop guard");
        assert!(
            !is_own_output(&f.header, &device.device_uid),
            "{label}: source is not ours"
        );
        let referenced: Vec<String> = obj
            .get(tags::SOURCE_IMAGE_SEQUENCE)
            .and_then(|e| e.items())
            .unwrap()
            .iter()
            .map(|item| str_of(item, tags::REFERENCED_SOP_INSTANCE_UID))
            .collect();
        if multiframe {
            assert_eq!(str_of(obj, tags::FRAME_OF_REFERENCE_UID), for_uid, "{label}");
            assert_eq!(referenced, source_uids, "{label}: Source Image Sequence");
        } else {
            assert_eq!(
                referenced,
                vec![source_uids[n].clone()],
                "{label}: Source Image Sequence"
            );
        }
    }

    // The frame with the most overlay is the hotspot slice.
    let counts: Vec<usize> = sc.iter().flat_map(|obj| coloured_per_frame(obj)).collect();
    assert_eq!(counts.len(), 24, "{label}");
    assert_eq!(
        argmax(&counts),
        PEAK[2],
        "{label}: coloured pixels per frame {counts:?}"
    );

    // dcm2pnm renders the hotspot frame: colour at the peak, grey far away.
    let (path, frame) = if multiframe {
        (&written.sc_paths[0], PEAK[2] + 1)
    } else {
        (&written.sc_paths[PEAK[2]], 1)
    };
    let png = dcm2pnm(path, frame, &f.dir.join("frame.png"));
    assert_eq!(png.dimensions(), (40, 48), "{label}");
    let peak = png.get_pixel(PEAK[0] as u32, PEAK[1] as u32).0;
    assert!(
        peak[0] != peak[1] || peak[1] != peak[2],
        "{label}: peak pixel {peak:?} is grey"
    );
    let far = png.get_pixel(FAR[0] as u32, FAR[1] as u32).0;
    assert!(
        far[0] == far[1] && far[1] == far[2],
        "{label}: far pixel {far:?} is coloured"
    );

    // dsrdump reads the SR tree.
    let out = run_ok(Command::new(tool("dsrdump")).arg(&written.sr_path));
    let dump = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "fcd-resnet18-demo",
        // 0.8734 rounded to 0.1 %: more digits would claim a precision the model lacks.
        "\"87.3\"",
        "model package SHA-256 0f0f",
        "FCD type II suspected",
        "SCOORD3D",
        "POINT",
        "Certainty of Finding",
        "UNVERIFIED",
    ] {
        assert!(dump.contains(needle), "{label}: dsrdump lacks {needle:?}:\n{dump}");
    }
    let lps = f.finding.hotspot().expect("the fixture is suspected with a peak").lps;
    let x = format!("{}", lps[0] as f32);
    assert!(
        dump.contains(&x[..x.len().min(5)]),
        "{label}: dsrdump lacks hotspot x {x}:\n{dump}"
    );
    let sr = open_file(&written.sr_path).unwrap();
    assert_eq!(str_of(&sr, tags::STUDY_INSTANCE_UID), study_uid);
    assert!(is_own_output(&sr, &device.device_uid));

    // result.json and the preview.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.dir.join("result.json")).unwrap()).unwrap();
    for key in [
        "probability",
        "label",
        "fold_probabilities",
        "hotspot_lps",
        "hotspot_slice",
        "model",
        "sc_files",
        "sr_file",
        "timings_ms",
    ] {
        assert!(json.get(key).is_some(), "{label}: result.json lacks {key}");
    }
    assert_eq!(json["hotspot_slice"], PEAK[2]);
    let preview = image::open(&written.preview_path).unwrap().to_rgb8();
    assert!(preview.width() > preview.height(), "{label}: montage of several panels");
}

/// Writes the outputs for `finding` on the axial fixture; returns the dsrdump text and result.json.
fn outputs_for(finding: Finding, label: &str) -> (String, serde_json::Value) {
    let f = fixture(Plane::Axial, false);
    let algorithm = algorithm();
    let device = Device::default();
    let options = options(true);
    let inputs = ReportInputs {
        source_header: &f.header,
        source: &f.source,
        finding: &finding,
        algorithm: &algorithm,
        device: &device,
        options: &options,
    };
    let written = write_outputs(
        &inputs,
        &f.heatmap,
        &mut UidGenerator::seeded(4),
        Timings::default(),
        &f.dir,
    )
    .unwrap_or_else(|e| panic!("{label}: {e}"));
    for path in written.sc_paths.iter().chain([&written.sr_path]) {
        for warning in dciodvfy(path) {
            eprintln!("{label}: dciodvfy {}: {warning}", path.display());
        }
    }
    let out = run_ok(Command::new(tool("dsrdump")).arg(&written.sr_path));
    let json = serde_json::from_str(&std::fs::read_to_string(f.dir.join("result.json")).unwrap()).unwrap();
    (String::from_utf8_lossy(&out.stdout).into_owned(), json)
}

#[test]
fn a_negative_study_names_no_fcd_finding_and_no_location() {
    let f = fixture(Plane::Axial, false);
    let negative = Finding {
        probability: 0.2163,
        suspected: false,
        ..f.finding.clone()
    };
    let (dump, json) = outputs_for(negative, "negative");
    for needle in [
        "FCD type II not suspected",
        "\"21.6\"",
        "\"50\"",
        "Qualitative Evaluations",
    ] {
        assert!(dump.contains(needle), "negative: dsrdump lacks {needle:?}:\n{dump}");
    }
    for absent in [
        "Focal cortical dysplasia type II",
        "FCD type II hotspot",
        "SCOORD3D",
        "Certainty of Finding",
        "Finding",
    ] {
        assert!(!dump.contains(absent), "negative: dsrdump has {absent:?}:\n{dump}");
    }
    assert!(
        json["hotspot_lps"].is_null() && json["hotspot_slice"].is_null(),
        "{json}"
    );
    assert!(json["no_hotspot"].as_str().unwrap().contains("not suspected"), "{json}");
    assert_eq!(json["model"]["sha256"], "0f".repeat(32));
}

#[test]
fn a_flat_map_points_nowhere() {
    let f = fixture(Plane::Axial, false);
    let mut flat = f.heatmap.clone();
    flat.data_mut().fill(0.0);
    assert_eq!(fcdnode::explain::hotspot(&flat), None, "an all-zero map has no hotspot");
    flat.data_mut().fill(0.7);
    assert_eq!(fcdnode::explain::hotspot(&flat), None, "a constant map has no hotspot");
    assert!(fcdnode::explain::hotspot(&f.heatmap).is_some());
    let suspected_without_peak = Finding {
        peak: None,
        ..f.finding.clone()
    };
    let (dump, json) = outputs_for(suspected_without_peak, "flat map");
    assert!(
        dump.contains("Hotspot not reported") && dump.contains("heatmap is flat"),
        "{dump}"
    );
    assert!(
        !dump.contains("SCOORD3D"),
        "a flat map must not put a point anywhere:\n{dump}"
    );
    assert!(json["hotspot_lps"].is_null(), "{json}");
    assert!(json["no_hotspot"].as_str().unwrap().contains("flat"), "{json}");
}

#[test]
fn axial_multiframe() {
    check_case(Plane::Axial, false, true);
}

#[test]
fn oblique_multiframe() {
    check_case(Plane::Oblique, false, true);
}

#[test]
fn axial_single_frame() {
    check_case(Plane::Axial, false, false);
}

#[test]
fn enhanced_source_multiframe() {
    check_case(Plane::Sagittal, true, true);
}

#[test]
fn bad_input_is_an_error() {
    let f = fixture(Plane::Axial, false);
    let algorithm = algorithm();
    let device = Device::default();
    let options = options(true);
    let inputs = ReportInputs {
        source_header: &f.header,
        source: &f.source,
        finding: &f.finding,
        algorithm: &algorithm,
        device: &device,
        options: &options,
    };
    let mut uids = UidGenerator::seeded(1);

    // Heatmap on another grid: other shape, then same shape but shifted.
    let other = acquisition_grid(Plane::Axial, [1.0, 1.0, 1.5], [40.0, 48.0, 30.0], [0.0; 3]).unwrap();
    let wrong = Volume::filled(&other, 0.0).unwrap();
    let err = secondary_capture(&inputs, &wrong, &mut uids).unwrap_err();
    assert!(matches!(err, ReportError::GridMismatch { .. }), "{err}");
    let shifted = acquisition_grid(Plane::Axial, [1.0, 1.0, 1.5], [40.0, 48.0, 36.0], [9.0, 0.0, 0.0]).unwrap();
    let wrong = Volume::filled(&shifted, 0.0).unwrap();
    let err = secondary_capture(&inputs, &wrong, &mut uids).unwrap_err();
    assert!(matches!(err, ReportError::GridMismatch { .. }), "{err}");
    let err = preview_png(&f.source, &wrong, &f.finding, &options).unwrap_err();
    assert!(matches!(err, ReportError::GridMismatch { .. }), "{err}");

    // Empty source.
    let empty = Assembled {
        volume: f.source.volume.clone(),
        meta: f.source.meta.clone(),
        slices: Vec::new(),
        stack: f.source.stack.clone(),
        other_stacks: Vec::new(),
    };
    let empty_inputs = ReportInputs {
        source: &empty,
        ..inputs
    };
    let err = secondary_capture(&empty_inputs, &f.heatmap, &mut uids).unwrap_err();
    assert!(matches!(err, ReportError::EmptySource { .. }), "{err}");
    let err = structured_report(&empty_inputs, &[], &mut uids).unwrap_err();
    assert!(matches!(err, ReportError::EmptySource { .. }), "{err}");

    // Bad finding values.
    for finding in [
        Finding {
            probability: f64::NAN,
            ..f.finding.clone()
        },
        Finding {
            probability: 1.5,
            ..f.finding.clone()
        },
        Finding {
            peak: Some(Hotspot {
                lps: [0.0; 3],
                slice: 24,
            }),
            ..f.finding.clone()
        },
        Finding {
            peak: Some(Hotspot {
                lps: [f64::INFINITY, 0.0, 0.0],
                slice: 3,
            }),
            ..f.finding.clone()
        },
    ] {
        let bad = ReportInputs {
            finding: &finding,
            ..inputs
        };
        let err = structured_report(&bad, &[], &mut uids).unwrap_err();
        assert!(matches!(err, ReportError::BadValue { .. }), "{err}");
        let err = secondary_capture(&bad, &f.heatmap, &mut uids).unwrap_err();
        assert!(matches!(err, ReportError::BadValue { .. }), "{err}");
    }

    // Bad overlay options.
    let bad_options = options.clone().with_overlay(1.0, 0.5);
    let bad = ReportInputs {
        options: &bad_options,
        ..inputs
    };
    let err = secondary_capture(&bad, &f.heatmap, &mut uids).unwrap_err();
    assert!(matches!(err, ReportError::BadValue { .. }), "{err}");

    // No frame of reference anywhere: no SR (the SCOORD3D needs one), SC still made.
    let mut header: InMemDicomObject = (*f.header).clone();
    header.take_element(tags::FRAME_OF_REFERENCE_UID).unwrap();
    let mut meta = f.source.meta.clone();
    meta.frame_of_reference_uid.clear();
    let no_for = Assembled {
        volume: f.source.volume.clone(),
        meta,
        slices: f.source.slices.clone(),
        stack: f.source.stack.clone(),
        other_stacks: Vec::new(),
    };
    let no_for_inputs = ReportInputs {
        source_header: &header,
        source: &no_for,
        ..inputs
    };
    let err = structured_report(&no_for_inputs, &[], &mut uids).unwrap_err();
    assert!(matches!(err, ReportError::MissingAttribute { .. }), "{err}");
    let sc = secondary_capture(&no_for_inputs, &f.heatmap, &mut uids).unwrap();
    let path = f.dir.join("no_for.dcm");
    write_dicom(&sc[0], &path).unwrap();
    dciodvfy(&path);
}

#[test]
fn same_seed_same_objects() {
    let f = fixture(Plane::Axial, false);
    let algorithm = algorithm();
    let device = Device::default();
    let options = options(true);
    let inputs = ReportInputs {
        source_header: &f.header,
        source: &f.source,
        finding: &f.finding,
        algorithm: &algorithm,
        device: &device,
        options: &options,
    };
    let make = || {
        let mut uids = UidGenerator::seeded(42);
        let sc = secondary_capture(&inputs, &f.heatmap, &mut uids).unwrap();
        let refs: Vec<InstanceRef> = sc.iter().map(|o| InstanceRef::of(o)).collect();
        let sr = structured_report(&inputs, &refs, &mut uids).unwrap();
        (sc, sr)
    };
    let (a_sc, a_sr) = make();
    let (b_sc, b_sr) = make();
    let dir = tempdir();
    for (n, (a, b)) in [(&a_sc[0], &b_sc[0]), (&a_sr, &b_sr)].into_iter().enumerate() {
        let (pa, pb) = (
            dir.path().join(format!("a{n}.dcm")),
            dir.path().join(format!("b{n}.dcm")),
        );
        write_dicom(a, &pa).unwrap();
        write_dicom(b, &pb).unwrap();
        assert_eq!(std::fs::read(&pa).unwrap(), std::fs::read(&pb).unwrap(), "object {n}");
    }
}
