//! Report stage against real peers: SC, SR, Parametric Map and Segmentation from a synthetic
//! series and heatmap must pass dciodvfy, dsrdump must read the SR tree, dcm2pnm must render an
//! SC frame with colour at the heat peak and grey elsewhere, highdicom must read the map's peak
//! and the segment's centroid back at the hotspot; the geometry and references must point back
//! at the source.
//! The overlay a reader sees: colour only inside the head and above the threshold, on an
//! absolute scale, none on a negative study by default, no text over the anatomy — on the
//! fixture and on the demo model's synthetic patient and control rendered by dcmj2pnm.

use std::path::{Path, PathBuf};
use std::process::Command;

use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, open_file};
use fcdnode::assemble::{Assembled, assemble_paths};
use fcdnode::report::{
    Algorithm, Derived, Device, DicomFile, Finding, Hotspot, InstanceRef, ReportError, ReportInputs, ReportOptions,
    Timestamp, Timings, UidGenerator, is_own_output, key_image, parametric_map, preview_png, secondary_capture,
    segmentation, structured_report, write_dicom, write_outputs,
};
use fcdnode::synth::dicom::{DicomOptions, SeriesInfo, write_series};
use fcdnode::volume::Volume;
use fcdnode::volume::{Plane, acquisition_grid};

use crate::util::{dciodvfy, repo, run_ok, tempdir, tool};

/// Heat peak in voxel index `[i, j, k]`, inside the head.
const PEAK: [usize; 3] = [28, 32, 15];
/// A second heat peak nearly as hot (0.95 of the peak, so the map's maximum stays the hotspot),
/// in the air outside the head: must never be coloured.
const AIR_PEAK: [usize; 3] = [2, 3, 15];
/// A pixel inside the head far from the peak: (column i, row j).
const FAR: [usize; 2] = [12, 20];

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    source: Assembled,
    header: DicomFile,
    heatmap: Volume,
    finding: Finding,
}

/// Whether voxel `[i, j, k]` of the fixture lies in its ellipsoidal "head".
fn in_head(i: usize, j: usize, k: usize) -> bool {
    let d = |x: usize, c: f64, r: f64| ((x as f64 - c) / r).powi(2);
    d(i, 19.5, 17.0) + d(j, 23.5, 21.0) + d(k, 11.5, 13.0) <= 1.0
}

/// A 40×48×24 integer series (1.0 × 1.0 × 1.5 mm) on `plane`, assembled: a textured ellipsoid
/// "head" in air, with a Gaussian heatmap peaking at [`PEAK`] and as hot at [`AIR_PEAK`].
fn fixture(plane: Plane, enhanced: bool) -> Fixture {
    let tmp = tempdir();
    let grid = acquisition_grid(plane, [1.0, 1.0, 1.5], [40.0, 48.0, 36.0], [2.0, -10.0, 15.0])
        .unwrap_or_else(|e| panic!("grid: {e}"));
    assert_eq!(grid.shape, [40, 48, 24]);
    let mut volume = Volume::filled(&grid, 0.0).unwrap();
    for ((i, j, k), v) in volume.data_mut().indexed_iter_mut() {
        *v = if in_head(i, j, k) {
            (200 + (i * 7 + j * 3 + k * 11) % 400) as f32
        } else {
            ((i + j + k) % 3) as f32
        };
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
        let blob = |peak: [usize; 3]| {
            let d2 = [i, j, k]
                .iter()
                .zip(peak)
                .map(|(a, b)| (*a as f64 - b as f64).powi(2))
                .sum::<f64>();
            (-d2 / (2.0 * 2.5f64.powi(2))).exp() as f32
        };
        *v = blob(PEAK).max(0.95 * blob(AIR_PEAK));
    }
    let finding = Finding {
        probability: 0.8734,
        probability_uncalibrated: None,
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

/// The frames of an RGB SC instance as images.
fn frames_of(obj: &InMemDicomObject) -> Vec<image::RgbImage> {
    let rows = u32::from(obj.get(tags::ROWS).unwrap().to_int::<u16>().unwrap());
    let cols = u32::from(obj.get(tags::COLUMNS).unwrap().to_int::<u16>().unwrap());
    let bytes = obj.get(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    let frame_len = (rows * cols * 3) as usize;
    bytes
        .chunks(frame_len)
        .filter(|c| c.len() == frame_len)
        .map(|frame| image::RgbImage::from_raw(cols, rows, frame.to_vec()).unwrap())
        .collect()
}

fn is_coloured(p: &image::Rgb<u8>) -> bool {
    p.0[0] != p.0[1] || p.0[1] != p.0[2]
}

/// Coloured pixels per frame inside the source image region of the axial fixture's frames
/// (the band's colour bar left out).
fn image_colour_per_frame(obj: &InMemDicomObject, offset: (u32, u32)) -> Vec<usize> {
    frames_of(obj)
        .iter()
        .map(|f| {
            f.enumerate_pixels()
                .filter(|(x, y, p)| {
                    (offset.0..offset.0 + 40).contains(x) && (offset.1..offset.1 + 48).contains(y) && is_coloured(p)
                })
                .count()
        })
        .collect()
}

/// Coloured pixels (R≠G or G≠B) per frame of an RGB SC instance.
fn coloured_per_frame(obj: &InMemDicomObject) -> Vec<usize> {
    frames_of(obj)
        .iter()
        .map(|f| f.pixels().filter(|p| is_coloured(p)).count())
        .collect()
}

/// Where the source image sits in the frames of a multi-frame SC: (columns, rows) from the
/// frame's first pixel to voxel (0, 0), read from frame 1's Plane Position and the source.
fn image_offset(sc: &InMemDicomObject, source: &Volume) -> (u32, u32) {
    let item = &sc
        .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()[0];
    let position = &item.get(tags::PLANE_POSITION_SEQUENCE).unwrap().items().unwrap()[0];
    let ipp: Vec<f64> = str_of(position, tags::IMAGE_POSITION_PATIENT)
        .split('\\')
        .map(|v| v.trim().parse().unwrap())
        .collect();
    let v = source.world_to_voxel([ipp[0], ipp[1], ipp[2]]);
    assert!(v[2].abs() < 1e-3, "frame 1 lies on slice 0: {v:?}");
    let (c, r) = (-v[0], -v[1]);
    assert!(
        (c - c.round()).abs() < 1e-3 && (r - r.round()).abs() < 1e-3 && c >= 0.0 && r >= 0.0,
        "whole-pixel margins: {c}, {r}"
    );
    (c.round() as u32, r.round() as u32)
}

/// What the frames of one SC are checked against.
#[derive(Clone, Copy)]
struct Study<'a> {
    /// The source series' volume.
    source: &'a Volume,
    /// Its head mask (the recipe's foreground).
    head: &'a ndarray::Array3<bool>,
    /// Where the image starts in the frame (columns, rows).
    offset: (u32, u32),
    /// The grey window the SC states.
    window: (f32, f32),
}

/// Checks one SC frame against slice `k` of `source` whose image starts at `offset`: no colour
/// outside the head mask (the source's foreground) nor outside the image, and inside the head
/// every grey pixel is the source's windowed grey (no text, no legend over the anatomy) except
/// on the crosshair's lines through `crosshair` (i, j). Returns the coloured pixels inside.
fn check_frame(
    label: &str,
    frame: &image::RgbImage,
    study: &Study<'_>,
    k: usize,
    crosshair: Option<(u32, u32)>,
) -> usize {
    let Study {
        source,
        head,
        offset,
        window,
    } = *study;
    let [n_i, n_j, _] = source.shape();
    let mut inside = 0;
    for (x, y, p) in frame.enumerate_pixels() {
        let (i, j) = (i64::from(x) - i64::from(offset.0), i64::from(y) - i64::from(offset.1));
        let in_image = i >= 0 && j >= 0 && (i as usize) < n_i && (j as usize) < n_j;
        let in_head = in_image && head[[i as usize, j as usize, k]];
        if !in_head {
            // The band below the image holds the colour bar; the image and its margins hold no
            // colour outside the head.
            let above_band = y < offset.1 + n_j as u32;
            assert!(
                !(above_band && is_coloured(p)),
                "{label}: slice {k} pixel ({x}, {y}) {p:?} coloured outside the head"
            );
            continue;
        }
        if is_coloured(p) {
            inside += 1;
            continue;
        }
        let on_cross = crosshair.is_some_and(|(ci, cj)| i as u32 == ci || j as u32 == cj);
        let v = source.data()[[i as usize, j as usize, k]];
        let grey = ((v - window.0) / (window.1 - window.0)).clamp(0.0, 1.0) * 255.0;
        assert!(
            on_cross || (f32::from(p.0[0]) - grey).abs() <= 1.0,
            "{label}: slice {k} pixel ({x}, {y}) = {p:?} in the head is not the source grey {grey}: text or \
             legend over the anatomy"
        );
    }
    inside
}

/// The grey window the SC states in its Derivation Description ("windowed LO..HI").
fn window_of(sc: &InMemDicomObject) -> (f32, f32) {
    let text = str_of(sc, tags::DERIVATION_DESCRIPTION);
    let after = text.split("windowed ").nth(1).unwrap_or_else(|| panic!("{text}"));
    let range = after.split(';').next().unwrap();
    let (lo, hi) = range.split_once("..").unwrap();
    (lo.trim().parse().unwrap(), hi.trim().parse().unwrap())
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
    let written = write_outputs(&inputs, &f.heatmap, &mut uids, Timings::default(), &f.dir, &mut |_| {})
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    assert_eq!(written.sc_paths.len(), if multiframe { 1 } else { 24 }, "{label}");
    // FCDNODE_KEEP_OUTPUTS=DIR keeps the outputs for inspection.
    if let Some(keep) = std::env::var_os("FCDNODE_KEEP_OUTPUTS") {
        let keep = Path::new(&keep).join(format!("{plane:?}-{enhanced}-{multiframe}"));
        let outputs = written.sc_paths.iter().chain([
            written.sr_path.as_ref().unwrap(),
            &written.preview_path,
            written.pm_path.as_ref().unwrap(),
        ]);
        for path in outputs.chain(&written.seg_path).chain(&written.key_image_path) {
            let rel = path.strip_prefix(&f.dir).unwrap();
            std::fs::create_dir_all(keep.join(rel).parent().unwrap()).unwrap();
            std::fs::copy(path, keep.join(rel)).unwrap();
        }
    }

    // dciodvfy on every output.
    let seg_path = written
        .seg_path
        .as_ref()
        .expect("a suspected study with a coloured hotspot has a SEG");
    for path in written
        .sc_paths
        .iter()
        .chain([
            written.sr_path.as_ref().unwrap(),
            written.pm_path.as_ref().unwrap(),
            seg_path,
        ])
        .chain(&written.key_image_path)
    {
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

    // The frame with the most overlay is the hotspot slice (its white crosshair covers at most
    // 4 × 7 coloured pixels).
    let counts: Vec<usize> = sc.iter().flat_map(|obj| coloured_per_frame(obj)).collect();
    assert_eq!(counts.len(), 24, "{label}");
    let most = counts[argmax(&counts)];
    assert!(
        counts[PEAK[2]] + 28 >= most && counts[PEAK[2]] > counts[0],
        "{label}: coloured pixels per frame {counts:?}"
    );

    // dcm2pnm renders the hotspot frame: colour at the peak, grey far away.
    let (path, frame) = if multiframe {
        (&written.sc_paths[0], PEAK[2] + 1)
    } else {
        (&written.sc_paths[PEAK[2]], 1)
    };
    let png = dcm2pnm(path, frame, &f.dir.join("frame.png"));
    let (off_x, off_y) = if multiframe {
        image_offset(&sc[0], &f.source.volume)
    } else {
        // Single-frame SC has no plane geometry: the margins are those of the multi-frame layout.
        let mf = secondary_capture(
            &ReportInputs {
                options: &options.clone().with_multiframe(true),
                ..inputs
            },
            &f.heatmap,
            &mut UidGenerator::seeded(9),
        )
        .unwrap();
        image_offset(&mf[0], &f.source.volume)
    };
    assert!(
        png.width() >= 40 + 2 * off_x && png.height() > 48 + off_y + 20,
        "{label}: {:?}",
        png.dimensions()
    );
    let peak = png.get_pixel(PEAK[0] as u32 + off_x, PEAK[1] as u32 + off_y).0;
    assert!(
        peak[0] != peak[1] || peak[1] != peak[2],
        "{label}: peak pixel {peak:?} is grey"
    );
    let far = png.get_pixel(FAR[0] as u32 + off_x, FAR[1] as u32 + off_y).0;
    assert!(
        far[0] == far[1] && far[1] == far[2],
        "{label}: far pixel {far:?} is coloured"
    );
    let air = png.get_pixel(AIR_PEAK[0] as u32 + off_x, AIR_PEAK[1] as u32 + off_y).0;
    assert!(
        air[0] == air[1] && air[1] == air[2],
        "{label}: as hot as the peak but in the air: {air:?} must stay grey"
    );
    // Every frame: colour only inside the head, no text over it.
    let head = f.source.volume.foreground_mask();
    assert!(!head[AIR_PEAK] && head[PEAK], "{label}: the mask is the fixture's head");
    let study = Study {
        source: &f.source.volume,
        head: &head,
        offset: (off_x, off_y),
        window: window_of(&sc[0]),
    };
    let all: Vec<image::RgbImage> = sc.iter().flat_map(|o| frames_of(o)).collect();
    for (k, frame) in all.iter().enumerate() {
        let cross = (k == PEAK[2]).then_some((PEAK[0] as u32, PEAK[1] as u32));
        check_frame(&label, frame, &study, k, cross);
    }
    let rendered = check_frame(&label, &png, &study, PEAK[2], Some((PEAK[0] as u32, PEAK[1] as u32)));
    assert!(rendered > 10, "{label}: only {rendered} coloured pixels at the hotspot");

    // dsrdump reads the SR tree.
    let out = run_ok(Command::new(tool("dsrdump")).arg(written.sr_path.as_ref().unwrap()));
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
    let sr = open_file(written.sr_path.as_ref().unwrap()).unwrap();
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

    // The Parametric Map and the Segmentation, as highdicom reads them.
    check_pm_and_seg(&label, &f, &written, &json);
}

/// Reads the PM, SR and SEG (if any) with highdicom and pydicom (tests/it/pm_seg.py in the
/// project's virtual environment) and returns what they found.
fn read_with_highdicom(pm: &Path, sr: &Path, seg: Option<&Path>) -> serde_json::Value {
    let python = repo().join(".tools/venv/bin/python");
    assert!(
        python.is_file(),
        "peer `{}` is missing: run `scripts/setup.sh` (it installs pydicom and highdicom)",
        python.display()
    );
    let out = run_ok(
        Command::new(python)
            .arg(repo().join("tests/it/pm_seg.py"))
            .arg(pm)
            .arg(sr)
            .args(seg),
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("pm_seg.py: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn lps_of(value: &serde_json::Value) -> [f64; 3] {
    let v: Vec<f64> = serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{value}: {e}"));
    [v[0], v[1], v[2]]
}

fn distance(a: [f64; 3], b: [f64; 3]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt()
}

/// The PM's maximum and the SEG's centroid, in patient coordinates computed by highdicom from
/// the files, lie within 4 mm of the hotspot the SR and result.json report; the SR references
/// both; values are the display scale, finite, with what they mean said in the mapping.
fn check_pm_and_seg(label: &str, f: &Fixture, written: &fcdnode::report::WrittenOutputs, json: &serde_json::Value) {
    let seg_path = written.seg_path.as_deref().expect("suspected: a SEG");
    let read = read_with_highdicom(
        written.pm_path.as_ref().unwrap(),
        written.sr_path.as_ref().unwrap(),
        Some(seg_path),
    );
    let hotspot = lps_of(&json["hotspot_lps"]);
    let sr_point = lps_of(&read["sr"]["point"]);
    assert!(
        distance(sr_point, hotspot) < 1e-3,
        "{label}: SR {sr_point:?} vs result.json {hotspot:?}"
    );
    let (pm, seg) = (&read["pm"], &read["seg"]);
    let pm_max = lps_of(&pm["max_lps"]);
    let centroid = lps_of(&seg["centroid_lps"]);
    eprintln!(
        "{label}: hotspot {hotspot:?}; PM max {pm_max:?} ({:.2} mm), SEG centroid {centroid:?} ({:.2} mm, {} voxels on {} frames)",
        distance(pm_max, hotspot),
        distance(centroid, hotspot),
        seg["voxels"],
        seg["frames"]
    );
    assert!(distance(pm_max, hotspot) <= 4.0, "{label}: PM max {pm_max:?}");
    assert!(distance(centroid, hotspot) <= 4.0, "{label}: SEG centroid {centroid:?}");
    assert_eq!(
        seg["contains_sr_point"], true,
        "{label}: the segment holds the hotspot: {seg}"
    );
    // Relative scale (no reference in these options): the study's peak is 1.0; no NaN, 0 floor.
    assert!((pm["max_value"].as_f64().unwrap() - 1.0).abs() < 1e-6, "{label}: {pm}");
    assert_eq!(pm["min_value"].as_f64(), Some(0.0), "{label}: {pm}");
    assert_eq!(pm["frames"], 24, "{label}: one frame per source slice");
    assert_eq!(pm["units"], "1", "{label}: {pm}");
    assert!(
        pm["lut_explanation"].as_str().unwrap().contains("uncalibrated"),
        "{label}: {pm}"
    );
    // The segment: standard codes, the algorithm, frames only where it is present.
    assert_eq!(seg["category"], "49755003", "{label}: {seg}");
    assert_eq!(seg["type"], "301766008", "{label}: {seg}");
    assert_eq!(seg["algorithm_type"], "AUTOMATIC", "{label}: {seg}");
    assert_eq!(seg["algorithm_name"], "fcd-resnet18-demo", "{label}: {seg}");
    let frames = seg["frames"].as_u64().unwrap();
    assert!((2..24).contains(&frames), "{label}: {seg}");
    // Same study and frame of reference as the source; the SR points at both.
    let study_uid = str_of(&f.header, tags::STUDY_INSTANCE_UID);
    let for_uid = str_of(&f.header, tags::FRAME_OF_REFERENCE_UID);
    for object in [pm, seg] {
        assert_eq!(object["study"], study_uid.as_str(), "{label}");
        assert_eq!(object["frame_of_reference"], for_uid.as_str(), "{label}");
    }
    let images = &read["sr"]["images"];
    assert_eq!(
        images["Referenced Segment"], seg["sop_instance_uid"],
        "{label}: {images}"
    );
    assert_eq!(
        images["Heatmap parametric map"], read["pm_sop_instance_uid"],
        "{label}: {images}"
    );
    let evidence = read["sr"]["evidence"].as_array().unwrap();
    assert!(
        evidence.contains(&seg["sop_instance_uid"]) && evidence.contains(&read["pm_sop_instance_uid"]),
        "{label}: {evidence:?}"
    );
    // The node's loop guard knows both as its own.
    for path in [written.pm_path.as_ref().unwrap(), &written.seg_path.clone().unwrap()] {
        assert!(
            is_own_output(&open_file(path).unwrap(), &Device::default().device_uid),
            "{label}: loop guard"
        );
    }
    let json_files = [&json["pm_file"], &json["seg_file"]];
    assert_eq!(
        json_files,
        [&serde_json::json!("pm/PM.dcm"), &serde_json::json!("seg/SEG.dcm")],
        "{label}"
    );
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
        &mut |_| {},
    )
    .unwrap_or_else(|e| panic!("{label}: {e}"));
    let written_dicom = written
        .sc_paths
        .iter()
        .chain([written.sr_path.as_ref().unwrap(), written.pm_path.as_ref().unwrap()]);
    for path in written_dicom.chain(&written.seg_path).chain(&written.key_image_path) {
        for warning in dciodvfy(path) {
            eprintln!("{label}: dciodvfy {}: {warning}", path.display());
        }
    }
    let out = run_ok(Command::new(tool("dsrdump")).arg(written.sr_path.as_ref().unwrap()));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.dir.join("result.json")).unwrap()).unwrap();
    assert_eq!(json["pm_file"], "pm/PM.dcm", "{label}: every study has its map");
    assert_eq!(
        f.dir.join("seg").exists(),
        json["seg_file"].is_string(),
        "{label}: {json}"
    );
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
    assert!(json["seg_file"].is_null(), "negative: no region is named: {json}");
    assert!(!dump.contains("Referenced Segment"), "negative: {dump}");
    assert!(json["no_hotspot"].as_str().unwrap().contains("not suspected"), "{json}");
    assert_eq!(json["model"]["sha256"], "0f".repeat(32));
}

/// `[outputs]` decides what is made: an object switched off is neither written nor referenced
/// by the SR, and `result.json` lists exactly what was written.
#[test]
fn outputs_selection_decides_what_is_made_and_referenced() {
    use fcdnode::report::OutputSelection;
    let f = fixture(Plane::Axial, false);
    let algorithm = algorithm();
    let device = Device::default();
    for (selection, expected) in [
        (
            OutputSelection {
                overlay_series: false,
                parametric_map: false,
                ..OutputSelection::default()
            },
            ["sr/SR.dcm", "key/KEY.dcm", "seg/SEG.dcm"].as_slice(),
        ),
        (
            OutputSelection {
                key_image: false,
                segmentation: false,
                structured_report: false,
                ..OutputSelection::default()
            },
            ["sc/SC_0001.dcm", "pm/PM.dcm"].as_slice(),
        ),
    ] {
        let options = ReportOptions {
            outputs: selection,
            ..options(true)
        };
        let inputs = ReportInputs {
            source_header: &f.header,
            source: &f.source,
            finding: &f.finding,
            algorithm: &algorithm,
            device: &device,
            options: &options,
        };
        let out = f
            .dir
            .join(format!("{selection:?}").replace([' ', ':', ',', '{', '}'], ""));
        // What exists when the decision is handed on: the SR alone, the others still to come.
        let mut decided: Vec<(Vec<String>, Vec<bool>)> = Vec::new();
        let written = write_outputs(
            &inputs,
            &f.heatmap,
            &mut UidGenerator::seeded(5),
            Timings::default(),
            &out,
            &mut |summary| {
                let files = summary.dicom_files().map(str::to_owned).collect();
                let present = ["sr/SR.dcm", "result.json", "key", "sc", "pm", "seg"]
                    .map(|f| out.join(f).exists())
                    .to_vec();
                decided.push((files, present));
            },
        )
        .unwrap();
        let with_sr = selection.structured_report;
        let sr_only: Vec<String> = expected
            .iter()
            .filter(|f| f.starts_with("sr/"))
            .map(|f| f.to_string())
            .collect();
        assert_eq!(
            decided,
            vec![(sr_only, vec![with_sr, true, false, false, false, false])],
            "{selection:?}: the decision is handed on once, the SR and the summary written and nothing else yet"
        );
        let files: Vec<&str> = written.summary.dicom_files().collect();
        assert_eq!(files, expected, "{selection:?}");
        assert_eq!(written.objects.len(), expected.len());
        for dir in ["key", "sc", "pm", "seg", "sr"] {
            let made = expected.iter().any(|f| f.starts_with(dir));
            assert_eq!(out.join(dir).exists(), made, "{selection:?}: {dir}/");
        }
        assert!(out.join("result.json").is_file() && out.join("preview.png").is_file());
        if let Some(sr_path) = &written.sr_path {
            // The SR's other evidence is exactly the other objects made.
            let sr = open_file(sr_path).unwrap();
            let mut listed: Vec<String> = Vec::new();
            for study in sr
                .get(tags::PERTINENT_OTHER_EVIDENCE_SEQUENCE)
                .and_then(|e| e.items())
                .unwrap()
            {
                for series in study
                    .get(tags::REFERENCED_SERIES_SEQUENCE)
                    .and_then(|e| e.items())
                    .unwrap()
                {
                    for sop in series
                        .get(tags::REFERENCED_SOP_SEQUENCE)
                        .and_then(|e| e.items())
                        .unwrap()
                    {
                        listed.push(str_of(sop, tags::REFERENCED_SOP_INSTANCE_UID));
                    }
                }
            }
            // The SR is sent first; the rest are what it references.
            let mut made: Vec<String> = written.objects[1..]
                .iter()
                .map(|o| str_of(o, tags::SOP_INSTANCE_UID))
                .collect();
            listed.sort();
            made.sort();
            assert_eq!(listed, made, "{selection:?}");
        }
    }
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
    assert!(json["seg_file"].is_null(), "flat map: no region: {json}");
    assert!(json["no_hotspot"].as_str().unwrap().contains("flat"), "{json}");
}

/// A Segmentation only where the overlay colours the hotspot: a suspected study's; none for a
/// negative study, nor when the hotspot lies below the threshold on the absolute scale. Its
/// voxels are exactly the overlay's coloured region around the hotspot (the air peak, as hot but
/// outside the head, is not in it), and the map's values are that scale.
#[test]
fn segmentation_only_where_the_overlay_colours_the_hotspot() {
    let f = fixture(Plane::Axial, false);
    let algorithm = algorithm();
    let device = Device::default();
    let made = |finding: &Finding, options: &ReportOptions| {
        let inputs = ReportInputs {
            source_header: &f.header,
            source: &f.source,
            finding,
            algorithm: &algorithm,
            device: &device,
            options,
        };
        let mut uids = UidGenerator::seeded(6);
        let pm = parametric_map(&inputs, &f.heatmap, &mut uids).unwrap();
        (pm, segmentation(&inputs, &f.heatmap, &mut uids).unwrap())
    };
    let negative = Finding {
        probability: 0.2163,
        suspected: false,
        ..f.finding.clone()
    };
    assert!(made(&negative, &options(true)).1.is_none(), "negative: no SEG");
    // Peak 1.0 / reference 2.5 = 0.4 < threshold 0.6: nothing coloured, no SEG; the map is there.
    let low = options(true).with_heat_reference(Some(2.5));
    let (pm, seg) = made(&f.finding, &low);
    assert!(seg.is_none(), "hotspot below the threshold: no SEG");
    let floats: Vec<f32> = pm.get(tags::FLOAT_PIXEL_DATA).unwrap().to_multi_float32().unwrap();
    let peak = floats.iter().fold(0.0f32, |m, &v| m.max(v));
    assert!((peak - 0.4).abs() < 1e-6, "absolute scale: 1.0 / 2.5, got {peak}");
    assert!(floats.iter().all(|v| v.is_finite() && *v >= 0.0));
    let path = f.dir.join("pm-absolute.dcm");
    write_dicom(&pm, &path).unwrap();
    for warning in dciodvfy(&path) {
        eprintln!("PM, absolute scale: dciodvfy: {warning}");
    }
    // Suspected on the relative scale: the region around PEAK, nothing in the air.
    let (_, seg) = made(&f.finding, &options(true));
    let seg = seg.expect("suspected with a coloured hotspot: a SEG");
    let frames: usize = str_of(&seg, tags::NUMBER_OF_FRAMES).parse().unwrap();
    let (rows, cols) = (48, 40);
    let bits = seg.get(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    let set: Vec<(usize, usize, usize)> = (0..frames * rows * cols)
        .filter(|n| bits[n / 8] & (1 << (n % 8)) != 0)
        .map(|n| (n / (rows * cols), (n % (rows * cols)) / cols, n % cols))
        .collect();
    assert!(!set.is_empty());
    // Each frame's source slice, from its Dimension Index Values (segment, slice k + 1).
    let slice_of: Vec<usize> = seg
        .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|e| e.items())
        .unwrap()
        .iter()
        .map(|item| {
            let content = &item.get(tags::FRAME_CONTENT_SEQUENCE).unwrap().items().unwrap()[0];
            let index: Vec<u32> = content
                .get(tags::DIMENSION_INDEX_VALUES)
                .unwrap()
                .to_multi_int()
                .unwrap();
            index[1] as usize - 1
        })
        .collect();
    assert_eq!(slice_of.len(), frames);
    assert!(
        set.iter()
            .any(|&(fr, r, c)| slice_of[fr] == PEAK[2] && r == PEAK[1] && c == PEAK[0]),
        "the hotspot voxel is in the segment"
    );
    assert!(
        set.iter()
            .all(|&(_, r, c)| (r as f64 - PEAK[1] as f64).abs() < 6.0 && (c as f64 - PEAK[0] as f64).abs() < 6.0),
        "only the hotspot's region, not the air peak"
    );
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
    let err = parametric_map(&inputs, &wrong, &mut uids).unwrap_err();
    assert!(matches!(err, ReportError::GridMismatch { .. }), "{err}");
    let err = segmentation(&inputs, &wrong, &mut uids).unwrap_err();
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
    let err = structured_report(&empty_inputs, &Derived::default(), &mut uids).unwrap_err();
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
        let err = structured_report(&bad, &Derived::default(), &mut uids).unwrap_err();
        assert!(matches!(err, ReportError::BadValue { .. }), "{err}");
        let err = secondary_capture(&bad, &f.heatmap, &mut uids).unwrap_err();
        assert!(matches!(err, ReportError::BadValue { .. }), "{err}");
        let err = parametric_map(&bad, &f.heatmap, &mut uids).unwrap_err();
        assert!(matches!(err, ReportError::BadValue { .. }), "{err}");
        let err = segmentation(&bad, &f.heatmap, &mut uids).unwrap_err();
        assert!(matches!(err, ReportError::BadValue { .. }), "{err}");
    }

    // Bad overlay options.
    let bad_options = options.clone().with_overlay(fcdnode::report::OverlayOptions {
        threshold: 1.0,
        ..Default::default()
    });
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
    let err = structured_report(&no_for_inputs, &Derived::default(), &mut uids).unwrap_err();
    assert!(matches!(err, ReportError::MissingAttribute { .. }), "{err}");
    // The PM and SEG lie on the source grid: without a frame of reference they cannot.
    let err = parametric_map(&no_for_inputs, &f.heatmap, &mut uids).unwrap_err();
    assert!(matches!(err, ReportError::MissingAttribute { .. }), "{err}");
    let err = segmentation(&no_for_inputs, &f.heatmap, &mut uids).unwrap_err();
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
        let sc = secondary_capture(&inputs, &f.heatmap, &mut uids).unwrap().remove(0);
        let pm = parametric_map(&inputs, &f.heatmap, &mut uids).unwrap();
        let seg = segmentation(&inputs, &f.heatmap, &mut uids)
            .unwrap()
            .expect("suspected: a SEG");
        let key = key_image(&inputs, &f.heatmap, &mut uids).unwrap();
        let derived = Derived {
            key_image: Some(InstanceRef::of(&key)),
            sc: vec![InstanceRef::of(&sc)],
            pm: Some(InstanceRef::of(&pm)),
            seg: Some(InstanceRef::of(&seg)),
        };
        let sr = structured_report(&inputs, &derived, &mut uids).unwrap();
        [key, sc, pm, seg, sr]
    };
    let (a, b) = (make(), make());
    let dir = tempdir();
    for (n, (a, b)) in a.iter().zip(&b).enumerate() {
        let (pa, pb) = (
            dir.path().join(format!("a{n}.dcm")),
            dir.path().join(format!("b{n}.dcm")),
        );
        write_dicom(a, &pa).unwrap();
        write_dicom(b, &pb).unwrap();
        assert_eq!(std::fs::read(&pa).unwrap(), std::fs::read(&pb).unwrap(), "object {n}");
    }
}

/// The SC of the axial fixture for `finding` with `options` (multi-frame).
fn sc_for(f: &Fixture, finding: &Finding, heatmap: &Volume, options: &ReportOptions) -> DicomFile {
    let algorithm = algorithm();
    let device = Device::default();
    let inputs = ReportInputs {
        source_header: &f.header,
        source: &f.source,
        finding,
        algorithm: &algorithm,
        device: &device,
        options,
    };
    secondary_capture(&inputs, heatmap, &mut UidGenerator::seeded(5))
        .unwrap()
        .remove(0)
}

/// A study below the threshold shows no colour by default (nothing looks like a finding), a
/// faint overlay when asked, the full one with "same"; a flat map shows none even when suspected.
#[test]
fn negatives_show_no_colour_by_default() {
    use fcdnode::report::{NegativeOverlay, OverlayOptions};
    let f = fixture(Plane::Axial, false);
    let negative = Finding {
        probability: 0.2163,
        suspected: false,
        ..f.finding.clone()
    };
    let coloured = |finding: &Finding, negative: NegativeOverlay| {
        let options = options(true).with_overlay(OverlayOptions {
            negative,
            ..OverlayOptions::default()
        });
        let sc = sc_for(&f, finding, &f.heatmap, &options);
        let path = f.dir.join(format!("neg-{negative:?}.dcm"));
        write_dicom(&sc, &path).unwrap();
        for warning in dciodvfy(&path) {
            eprintln!("negative overlay {negative:?}: dciodvfy: {warning}");
        }
        coloured_per_frame(&sc)
    };
    let off = coloured(&negative, NegativeOverlay::default());
    assert!(
        off.iter().all(|&n| n == 0),
        "default: no colour on a negative study: {off:?}"
    );
    let faint = coloured(&negative, NegativeOverlay::Faint);
    let same = coloured(&negative, NegativeOverlay::Same);
    let positive = coloured(&f.finding, NegativeOverlay::Off);
    assert!(
        faint[PEAK[2]] > 0 && same[PEAK[2]] > 0,
        "faint {faint:?}, same {same:?}"
    );
    // "same" colours the negative exactly like a positive; its colour bar is there too.
    assert_eq!(same, positive);
    let flat = Finding {
        peak: None,
        ..f.finding.clone()
    };
    let none = coloured(&flat, NegativeOverlay::Same);
    assert!(none.iter().all(|&n| n == 0), "a flat map points nowhere: {none:?}");
}

/// The colour scale is absolute when the model has a reference level: a voxel with the same map
/// value gets the same colour in two studies whose peaks differ; on the relative fallback it
/// does not. Colour only above the threshold, and the legend says which scale it is.
#[test]
fn same_map_value_same_colour_in_every_study() {
    let f = fixture(Plane::Axial, false);
    // Study B: the same map, plus a hotter spot elsewhere in the head (its peak is 2, not 1).
    let mut hotter = f.heatmap.clone();
    hotter.data_mut()[[12, 20, 15]] = 2.0;
    let (off_x, off_y) = image_offset(&sc_for(&f, &f.finding, &f.heatmap, &options(true)), &f.source.volume);
    let pixel_at_peak = |heatmap: &Volume, options: &ReportOptions| {
        let sc = sc_for(&f, &f.finding, heatmap, options);
        frames_of(&sc)
            .swap_remove(PEAK[2])
            .get_pixel(PEAK[0] as u32 + off_x, PEAK[1] as u32 + off_y)
            .0
    };
    let absolute = options(true).with_heat_reference(Some(1.0));
    let (a, b) = (pixel_at_peak(&f.heatmap, &absolute), pixel_at_peak(&hotter, &absolute));
    assert!(a[0] != a[1] || a[1] != a[2], "{a:?}");
    assert_eq!(a, b, "absolute scale: the same value, the same colour");
    let relative = options(true);
    let (a, b) = (pixel_at_peak(&f.heatmap, &relative), pixel_at_peak(&hotter, &relative));
    assert_ne!(a, b, "relative scale: a hotter spot elsewhere changes the colour");
    // Below the threshold on the absolute scale: a map at 0.4 of the reference shows no colour.
    let low = options(true).with_heat_reference(Some(2.5));
    let sc = sc_for(&f, &f.finding, &f.heatmap, &low);
    let image_colour = image_colour_per_frame(&sc, (off_x, off_y));
    assert!(
        image_colour.iter().all(|&n| n == 0),
        "peak 1.0 / reference 2.5 = 0.4 < threshold 0.6: {image_colour:?}"
    );
    // What the scale means is said in the SC's description.
    assert!(str_of(&sc, tags::DERIVATION_DESCRIPTION).contains("absolute scale"));
    let relative_sc = sc_for(&f, &f.finding, &f.heatmap, &relative);
    assert!(str_of(&relative_sc, tags::DERIVATION_DESCRIPTION).contains("uncalibrated"));
}

/// ONNX Runtime loaded once in this process (the project-local library from setup).
fn ort() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let library = fcdnode::infer::runtime::find_library(None).unwrap_or_else(|e| panic!("{e}"));
        fcdnode::infer::runtime::init(&library).unwrap_or_else(|e| panic!("{e}"));
    });
}

fn demo_package() -> fcdnode::package::manifest::ModelPackage {
    fcdnode::package::manifest::ModelPackage::load(&crate::util::repo().join("models/demo"))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `fcdnode synth` (default lesion unless `extra` says otherwise); returns (subject, group).
fn synth_cohort(out: &Path, subjects: usize, seed: u64, extra: &[&str]) -> Vec<(String, String)> {
    run_ok(
        crate::util::fcdnode()
            .args([
                "synth",
                "--subjects",
                &subjects.to_string(),
                "--seed",
                &seed.to_string(),
                "--no-preview",
            ])
            .args(extra)
            .arg("--out")
            .arg(out),
    );
    std::fs::read_to_string(out.join("participants.tsv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            (cols[0].to_owned(), cols[1].to_owned())
        })
        .collect()
}

/// `models/demo`'s `[heatmap]` reference levels are what `fcdtrain export` computes
/// ([`fcdnode::explain::reference_level`]): the median peak of the ensemble maps of the
/// training positives, here regenerated byte for byte from the training recipe's seed.
#[test]
fn demo_reference_level_is_the_median_peak_of_its_training_positives() {
    use fcdnode::infer::{CamMethod, Device, Ensemble};
    ort();
    let dir = tempdir();
    let cohort = dir.path().join("bids");
    // The training cohort of models/demo/README.md.
    let subjects = synth_cohort(
        &cohort,
        40,
        42,
        &[
            "--voxel-mm",
            "2",
            "--lesion-radius",
            "8..12",
            "--lesion-contrast",
            "1..1.5",
        ],
    );
    let package = demo_package();
    let mut ensemble = Ensemble::load(&package, Device::Cpu, 0).unwrap();
    let (mut pp, mut cam, mut controls) = (Vec::new(), Vec::new(), Vec::new());
    for (subject, group) in &subjects {
        let anat = cohort.join(subject).join("anat");
        let flair = std::fs::read_dir(&anat)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with("_FLAIR.nii.gz"))
            .unwrap();
        let volume = fcdnode::nifti::read(&flair).unwrap();
        let input = package.manifest.preprocess.apply(&[&volume]).unwrap();
        let prediction = ensemble.predict(&input).unwrap();
        let map = ensemble.cam(&prediction, CamMethod::Gradcampp).unwrap();
        if group == "fcd" {
            pp.push(map);
            cam.push(ensemble.cam(&prediction, CamMethod::Gradcam).unwrap());
        } else {
            controls.push(map);
        }
    }
    let (level_pp, level_cam) = (
        fcdnode::explain::reference_level(&pp).unwrap(),
        fcdnode::explain::reference_level(&cam).unwrap(),
    );
    eprintln!("{} positives: gradcampp {level_pp}, gradcam {level_cam}", pp.len());
    let peaks = |maps: &[ndarray::Array3<f32>]| {
        let mut p: Vec<f64> = maps
            .iter()
            .map(|m| f64::from(m.iter().fold(0.0f32, |a, &v| a.max(v))) / level_pp)
            .collect();
        p.sort_by(f64::total_cmp);
        p.iter().map(|v| format!("{v:.2}")).collect::<Vec<_>>().join(" ")
    };
    eprintln!(
        "peaks / reference: positives {}; controls {}",
        peaks(&pp),
        peaks(&controls)
    );
    let reference = package
        .manifest
        .heatmap
        .clone()
        .expect("models/demo has a [heatmap] reference");
    assert_eq!(reference.positives, pp.len());
    for (name, stored, level) in [
        ("gradcampp", reference.gradcampp, level_pp),
        ("gradcam", reference.gradcam, level_cam),
    ] {
        let stored = stored.unwrap_or_else(|| panic!("no {name} level"));
        assert!(
            (stored - level).abs() <= 1e-3 * level,
            "{name}: manifest {stored} vs recomputed {level}"
        );
    }
}

/// The acceptance check on real model output: the demo model on a synthetic FCD patient and a
/// control (1 mm DICOM, seed 2027), through the pipeline with the package's reference level,
/// the SC frames rendered by dcmj2pnm. Patient: colour at the hotspot, only inside the head;
/// control: no colour at all with the default settings; in both, the pixels inside the head
/// are the source's grey wherever they are not coloured (no text or legend over the anatomy).
/// `FCDNODE_KEEP_OUTPUTS=DIR` keeps the rendered frames and previews.
#[test]
fn demo_patient_and_control_overlays() {
    use fcdnode::infer::{Device, Ensemble};
    use fcdnode::pipeline::{Options, run_dicom};
    use fcdnode::tracker::routing::{Router, RoutingConfig};
    ort();
    let dir = tempdir();
    let cohort = dir.path().join("cohort");
    let subjects = synth_cohort(&cohort, 2, 2027, &["--dicom"]);
    let package = demo_package();
    let reference = package.manifest.heatmap.as_ref().and_then(|h| h.gradcampp);
    assert!(reference.is_some(), "models/demo is calibrated");
    let mut ensemble = Ensemble::load(&package, Device::Cpu, 0).unwrap();
    let router = Router::new(&RoutingConfig::default()).unwrap();
    let keep = std::env::var_os("FCDNODE_KEEP_OUTPUTS").map(PathBuf::from);
    let mut seen = Vec::new();
    for (subject, group) in &subjects {
        let out = dir.path().join("out").join(subject);
        let options = Options {
            report: ReportOptions::new().with_heat_reference(reference),
            uid_key: Some([7; 32]),
            ..Options::default()
        };
        let study = cohort.join("dicom").join(subject);
        let summary = run_dicom(std::slice::from_ref(&study), &mut ensemble, &router, &out, &options)
            .unwrap_or_else(|e| panic!("{subject}: {e}"));
        let label = format!("{subject} ({group}, p = {:.3})", summary.probability);
        let suspected = summary.probability >= package.manifest.threshold;
        assert_eq!(
            suspected,
            group == "fcd",
            "{label}: the demo model gets this pair right"
        );
        let source = assemble_paths(&[study.join("FLAIR")], None).unwrap();
        let head = source.volume.foreground_mask();
        // The map's peak on the absolute scale, for the record.
        let input = package.manifest.preprocess.apply(&[&source.volume]).unwrap();
        let prediction = ensemble.predict(&input).unwrap();
        let map = ensemble.cam(&prediction, fcdnode::infer::CamMethod::Gradcampp).unwrap();
        let peak = map.iter().fold(0.0f32, |m, &v| m.max(v));
        eprintln!(
            "{subject} ({group}): map peak {peak} = {:.2} of the reference",
            f64::from(peak) / reference.unwrap_or(1.0)
        );
        let sc_path = out.join("sc/SC_0001.dcm");
        for warning in dciodvfy(&sc_path) {
            eprintln!("{label}: dciodvfy: {warning}");
        }
        let sc = open_file(&sc_path).unwrap();
        let study = Study {
            source: &source.volume,
            head: &head,
            offset: image_offset(&sc, &source.volume),
            window: window_of(&sc),
        };
        let hotspot = summary.hotspot_slice;
        let cross = summary.hotspot_lps.map(|lps| {
            let v = source.volume.world_to_voxel(lps);
            (v[0].round() as u32, v[1].round() as u32)
        });
        let frames = frames_of(&sc);
        let mut coloured = 0;
        for (k, frame) in frames.iter().enumerate() {
            let c = if Some(k) == hotspot { cross } else { None };
            coloured += check_frame(&label, frame, &study, k, c);
        }
        // The viewer's rendering of the slice a reader opens first.
        let k = hotspot.unwrap_or(frames.len() / 2);
        let png_path = out.join(format!("{subject}-frame{}.png", k + 1));
        run_ok(
            Command::new(tool("dcmj2pnm"))
                .args(["+on", "-il", "+F", &(k + 1).to_string()])
                .arg(&sc_path)
                .arg(&png_path),
        );
        let png = image::open(&png_path).unwrap().to_rgb8();
        let rendered = check_frame(&label, &png, &study, k, cross);
        // The map and the hotspot region, as highdicom reads them: the map peaks at the hotspot,
        // the region holds it and is centred on it (within 4 mm); a control has no region.
        let dicom = |rel: &Option<String>| rel.as_ref().map(|f| out.join(f));
        let (pm_path, seg_path) = (dicom(&summary.pm_file), dicom(&summary.seg_file));
        let pm_path = pm_path.unwrap_or_else(|| panic!("{label}: no PM"));
        for path in std::iter::once(&pm_path).chain(&seg_path) {
            for warning in dciodvfy(path) {
                eprintln!("{label}: dciodvfy {}: {warning}", path.display());
            }
        }
        let sr_path = out.join(summary.sr_file.as_deref().unwrap_or_else(|| panic!("{label}: no SR")));
        let read = read_with_highdicom(&pm_path, &sr_path, seg_path.as_deref());
        assert_eq!(
            seg_path.is_some(),
            suspected,
            "{label}: a SEG for suspected studies only"
        );
        if let Some(lps) = summary.hotspot_lps {
            let pm_max = lps_of(&read["pm"]["max_lps"]);
            let centroid = lps_of(&read["seg"]["centroid_lps"]);
            eprintln!(
                "{label}: PM max {:.2} mm, SEG centroid {:.2} mm ({} voxels) from the hotspot",
                distance(pm_max, lps),
                distance(centroid, lps),
                read["seg"]["voxels"]
            );
            assert!(distance(lps_of(&read["sr"]["point"]), lps) < 1e-3, "{label}: {read}");
            assert!(distance(pm_max, lps) <= 4.0, "{label}: PM max {pm_max:?} vs {lps:?}");
            assert!(
                distance(centroid, lps) <= 4.0,
                "{label}: SEG centroid {centroid:?} vs {lps:?}"
            );
            assert_eq!(read["seg"]["contains_sr_point"], true, "{label}: {}", read["seg"]);
            assert!(
                read["pm"]["lut_explanation"]
                    .as_str()
                    .unwrap()
                    .contains("training lesions"),
                "{label}: calibrated: {read}"
            );
        }
        if suspected {
            assert!(
                rendered > 20,
                "{label}: the hotspot slice shows {rendered} coloured pixels"
            );
            assert!(hotspot.is_some(), "{label}: a suspected study with a map has a hotspot");
        } else {
            let all: usize = coloured_per_frame(&sc).iter().sum();
            assert_eq!(all, 0, "{label}: a control shows no colour, not even a colour bar");
            assert_eq!(coloured, 0);
        }
        eprintln!(
            "{label}: {coloured} coloured pixels over {} frames, {rendered} on frame {}",
            frames.len(),
            k + 1
        );
        // The key image, as a viewer renders it: colour for the suspected study only (the
        // control's shows none, not even a colour bar), the result in words; the SR points at it.
        let key_path = out.join(
            summary
                .key_image_file
                .as_deref()
                .unwrap_or_else(|| panic!("{label}: no key image")),
        );
        for warning in dciodvfy(&key_path) {
            eprintln!("{label}: dciodvfy key image: {warning}");
        }
        let key = open_file(&key_path).unwrap();
        assert_eq!(str_of(&key, tags::SERIES_NUMBER), "9905", "{label}");
        assert!(
            is_own_output(&key, fcdnode::report::DEFAULT_DEVICE_UID),
            "{label}: loop guard"
        );
        let key_png_path = out.join(format!("{subject}-key.png"));
        run_ok(
            Command::new(tool("dcmj2pnm"))
                .args(["+on", "-il"])
                .arg(&key_path)
                .arg(&key_png_path),
        );
        let key_png = image::open(&key_png_path).unwrap().to_rgb8();
        let key_coloured = key_png.pixels().filter(|p| is_coloured(p)).count();
        // The views lie above the colour bar (the first row with a long run of colour; text is
        // white): the overlay's columns there fall into one group per view.
        let (w, h) = key_png.dimensions();
        let row_colour: Vec<u32> = (0..h)
            .map(|y| (0..w).filter(|&x| is_coloured(key_png.get_pixel(x, y))).count() as u32)
            .collect();
        let bar_top = row_colour.iter().position(|&n| n >= 200).unwrap_or(h as usize);
        let columns: Vec<u32> = (0..w)
            .filter(|&x| (0..bar_top as u32).any(|y| is_coloured(key_png.get_pixel(x, y))))
            .collect();
        let groups = columns.windows(2).filter(|c| c[1] - c[0] > 20).count() + usize::from(!columns.is_empty());
        let in_views: u32 = row_colour[..bar_top].iter().sum();
        eprintln!(
            "{label}: key image {w}x{h}, {key_coloured} coloured pixels, {in_views} in {groups} group(s) over the views"
        );
        if suspected {
            assert_eq!(
                groups, 3,
                "{label}: the hotspot shows in the axial, coronal and sagittal view"
            );
        } else {
            assert_eq!(key_coloured, 0, "{label}: a control's key image shows no colour");
        }
        let tree = String::from_utf8_lossy(&run_ok(Command::new(tool("dsrdump")).arg(&sr_path)).stdout).into_owned();
        if suspected {
            assert!(
                tree.contains("Key image"),
                "{label}: the SR's finding points at the key image"
            );
        }
        let sr_dump = String::from_utf8_lossy(&run_ok(Command::new(tool("dcmdump")).arg(&sr_path)).stdout).into_owned();
        assert!(
            sr_dump.contains(&str_of(&key, tags::SOP_INSTANCE_UID)),
            "{label}: the SR's evidence lists the key image"
        );
        if let Some(keep) = &keep {
            std::fs::create_dir_all(keep).unwrap();
            std::fs::copy(&key_png_path, keep.join(format!("{subject}-{group}-key.png"))).unwrap();
            std::fs::copy(&png_path, keep.join(format!("{subject}-{group}-frame{}.png", k + 1))).unwrap();
            std::fs::copy(
                out.join("preview.png"),
                keep.join(format!("{subject}-{group}-preview.png")),
            )
            .unwrap();
        }
        seen.push(group.clone());
    }
    seen.sort();
    assert_eq!(seen, ["fcd", "hc"]);
}
