//! `fcdnode synth` end to end: BIDS layout, determinism, DICOM that dcm2niix converts back to
//! exactly our NIfTI, and clear failures for bad options.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fcdnode::nifti;

use crate::util::{assert_same_volume, dcm2niix, fcdnode, run_ok, tempdir};

/// Runs `fcdnode synth --out DIR` with small, fast defaults plus `extra`.
fn synth(out: &Path, extra: &[&str]) {
    let mut cmd = fcdnode();
    cmd.args(["synth", "--out"])
        .arg(out)
        .args(["--voxel-mm", "4", "--seed", "11"])
        .args(extra);
    run_ok(&mut cmd);
}

/// Every file under `root`, by relative path, with its bytes.
fn tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_path_buf();
                files.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

#[test]
fn cohort_has_the_ds004199_layout() {
    let tmp = tempdir();
    let out = tmp.path().join("cohort");
    synth(&out, &["--subjects", "4", "--fcd-fraction", "0.5"]);
    let tsv = std::fs::read_to_string(out.join("participants.tsv")).unwrap();
    let mut lines = tsv.lines();
    assert_eq!(
        lines.next(),
        Some(
            "participant_id\tgroup\tsex\tage_scan\themisphere\tlobe\tlesion_radius_mm\tlesion_contrast\tlesion_flair_gain\tsplit\tacquisition"
        )
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows.iter().filter(|r| r[1] == "fcd").count(), 2);
    for row in &rows {
        let (id, group) = (row[0], row[1]);
        let anat = out.join(id).join("anat");
        let names: Vec<String> = std::fs::read_dir(&anat)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let has = |suffix: &str| {
            names
                .iter()
                .any(|n| n.starts_with(&format!("{id}_acq-")) && n.ends_with(suffix))
        };
        assert!(
            has("_T1w.nii.gz") && has("_T1w.json") && has("_FLAIR.nii.gz") && has("_FLAIR.json"),
            "{names:?}"
        );
        assert_eq!(has("_FLAIR_roi.nii.gz"), group == "fcd", "{id} {group}: {names:?}");
        if group == "fcd" {
            assert!(["L", "R"].contains(&row[4]) && row[5] != "n/a", "{row:?}");
            // The ROI lies on the FLAIR grid and is not empty.
            let flair = names.iter().find(|n| n.ends_with("_FLAIR.nii.gz")).unwrap();
            let roi = names.iter().find(|n| n.ends_with("_FLAIR_roi.nii.gz")).unwrap();
            let flair = nifti::read(&anat.join(flair)).unwrap();
            let roi = nifti::read(&anat.join(roi)).unwrap();
            assert_eq!(roi.grid(), flair.grid());
            assert!(roi.data().iter().any(|&v| v == 1.0));
        } else {
            assert_eq!((row[4], row[5]), ("n/a", "n/a"));
        }
    }
    let description: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("dataset_description.json")).unwrap()).unwrap();
    assert_eq!(description["BIDSVersion"], "1.8.0");
    let preview = std::fs::read_dir(out.join("derivatives/preview")).unwrap().count();
    assert_eq!(preview, 1, "one PNG preview of the first patient");
}

#[test]
fn same_seed_gives_byte_identical_files() {
    let tmp = tempdir();
    let args = [
        "--subjects",
        "2",
        "--fcd-fraction",
        "0.5",
        "--dicom",
        "--order",
        "shuffled",
    ];
    synth(&tmp.path().join("a"), &args);
    synth(&tmp.path().join("b"), &args);
    let (a, b) = (tree(&tmp.path().join("a")), tree(&tmp.path().join("b")));
    assert!(a.len() > 20, "{} files", a.len());
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (path, bytes) in &a {
        assert!(bytes == &b[path], "{} differs between runs", path.display());
    }
    let mut cmd = fcdnode();
    cmd.args(["synth", "--out"])
        .arg(tmp.path().join("c"))
        .args(["--voxel-mm", "4", "--seed", "12"])
        .args(args);
    run_ok(&mut cmd);
    let c = tree(&tmp.path().join("c"));
    assert_ne!(
        a.get(Path::new("participants.tsv")),
        c.get(Path::new("participants.tsv"))
    );
}

/// Phantom → our DICOM → dcm2niix agrees with our NIfTI of the same phantom, for every plane
/// and for reversed and shuffled instance order (T1w and FLAIR, with their different grids).
#[test]
fn dicom_through_dcm2niix_matches_our_nifti() {
    let cases = [
        ("axial", "desc", false),
        ("sagittal", "shuffled", false),
        ("coronal", "asc", false),
        ("oblique", "shuffled", false),
        ("oblique", "desc", true),
    ];
    for (plane, order, enhanced) in cases {
        let tmp = tempdir();
        let out = tmp.path().join("cohort");
        let mut args = vec!["--subjects", "1", "--fcd-fraction", "1", "--voxel-mm", "3", "--dicom"];
        args.extend(["--plane", plane, "--order", order, "--no-preview"]);
        if enhanced {
            args.push("--enhanced");
        }
        run_ok(fcdnode().args(["synth", "--out"]).arg(&out).args(&args));
        let anat = out.join("sub-00001/anat");
        for (modality, suffix) in [("T1w", "_T1w.nii.gz"), ("FLAIR", "_FLAIR.nii.gz")] {
            let label = format!("{plane} {order} enhanced={enhanced} {modality}");
            let ours = std::fs::read_dir(&anat)
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.to_string_lossy().ends_with(suffix))
                .unwrap_or_else(|| panic!("{label}: no {suffix}"));
            let theirs = dcm2niix(
                &out.join("dicom/sub-00001").join(modality),
                &tmp.path().join(format!("dcm2niix-{modality}")),
                &label,
            );
            let (ours, theirs) = (nifti::read(&ours).unwrap(), nifti::read(&theirs).unwrap());
            assert_same_volume(&label, &ours, &theirs, 1e-3);
        }
    }
}

/// `--lesion-radius LOW..HIGH`: each patient draws its own lesion, participants.tsv says which,
/// and the rendered ROI grows with the recorded radius.
#[test]
fn lesion_knob_ranges_draw_per_patient() {
    let tmp = tempdir();
    let out = tmp.path().join("cohort");
    synth(
        &out,
        &[
            "--subjects",
            "12",
            "--lesion-radius",
            "5..14",
            "--lesion-contrast",
            "0.8..1.5",
            "--no-preview",
        ],
    );
    let tsv = std::fs::read_to_string(out.join("participants.tsv")).unwrap();
    let mut lesions = Vec::new();
    for row in tsv.lines().skip(1).map(|l| l.split('\t').collect::<Vec<_>>()) {
        if row[1] == "hc" {
            assert_eq!((row[6], row[7], row[8]), ("n/a", "n/a", "n/a"), "{tsv}");
            continue;
        }
        let radius: f64 = row[6].parse().unwrap();
        let contrast: f64 = row[7].parse().unwrap();
        assert!(
            (5.0..=14.0).contains(&radius) && (0.8..=1.5).contains(&contrast),
            "{tsv}"
        );
        assert_eq!(row[8], "1", "no mimics, so every FLAIR sign is typical: {tsv}");
        let anat = out.join(row[0]).join("anat");
        let roi = std::fs::read_dir(&anat)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with("_FLAIR_roi.nii.gz"))
            .unwrap();
        let voxels = nifti::read(&roi).unwrap().data().iter().filter(|&&v| v > 0.5).count();
        lesions.push((radius, voxels));
    }
    lesions.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (smallest, largest) = (lesions[0], lesions[lesions.len() - 1]);
    assert!(largest.0 - smallest.0 > 2.0, "radii barely differ: {lesions:?}");
    assert!(largest.1 > smallest.1, "ROI does not grow with the radius: {lesions:?}");
}

/// `--mimics`: the same subjects (participants.tsv unchanged but for the FLAIR gain of the
/// lesions, drawn within 1 − 0.25 × level ..= 1), controls' FLAIR changed, no ROI for controls.
#[test]
fn mimics_change_every_subject_and_only_the_lesion_gets_a_roi() {
    let tmp = tempdir();
    let (plain, hard) = (tmp.path().join("plain"), tmp.path().join("hard"));
    synth(&plain, &["--subjects", "6", "--no-preview"]);
    synth(&hard, &["--subjects", "6", "--no-preview", "--mimics", "2"]);
    let rows = |dir: &Path| -> Vec<Vec<String>> {
        std::fs::read_to_string(dir.join("participants.tsv"))
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split('\t').map(str::to_owned).collect())
            .collect()
    };
    let (plain_rows, hard_rows) = (rows(&plain), rows(&hard));
    assert_eq!(plain_rows.len(), hard_rows.len());
    for (a, b) in plain_rows.iter().zip(&hard_rows) {
        let without_gain = |r: &[String]| [&r[..8], &r[9..]].concat();
        assert_eq!(without_gain(a), without_gain(b));
        let anat = |dir: &Path| dir.join(&a[0]).join("anat");
        let files = |dir: &Path| {
            let mut names: Vec<_> = std::fs::read_dir(anat(dir))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(files(&plain), files(&hard), "same files, a ROI for patients only");
        let flair = files(&plain)
            .into_iter()
            .find(|n| n.ends_with("_FLAIR.nii.gz"))
            .unwrap();
        assert_ne!(
            std::fs::read(anat(&plain).join(&flair)).unwrap(),
            std::fs::read(anat(&hard).join(&flair)).unwrap(),
            "{} FLAIR unchanged by --mimics 2",
            a[0]
        );
        if a[1] == "fcd" {
            let gain: f64 = b[8].parse().unwrap();
            assert!((0.5..=1.0).contains(&gain), "{b:?}");
            assert_eq!(a[8], "1");
        }
    }
}

/// Bad options and unwritable output: a clear message, a non-zero exit, no panic.
#[test]
fn bad_options_fail_cleanly() {
    let tmp = tempdir();
    let out = tmp.path().join("x");
    let out = out.to_str().unwrap();
    let cases: [(&[&str], &str); 13] = [
        (&["synth", "--out", out, "--enhanced"], "--dicom"),
        (&["synth", "--out", out, "--order", "desc"], "--dicom"),
        (&["synth", "--out", out, "--fcd-fraction", "2"], "--fcd-fraction"),
        (&["synth", "--out", out, "--subjects", "0"], "--subjects"),
        (&["synth", "--out", out, "--voxel-mm", "0"], "--voxel-mm"),
        (&["synth", "--out", out, "--lesion-radius", "100"], "--lesion-radius"),
        (&["synth", "--out", out, "--lesion-radius", "12..8"], "--lesion-radius"),
        (&["synth", "--out", out, "--lesion-radius", "8..big"], "LOW..HIGH"),
        (
            &["synth", "--out", out, "--lesion-contrast", "0..1"],
            "--lesion-contrast",
        ),
        (&["synth", "--out", out, "--mimics", "4"], "--mimics"),
        (
            &["synth", "--out", out, "--dicom", "--transfer-syntax", "1.2.3"],
            "1.2.840.10008.1.2.4.80",
        ),
        (&["synth", "--out", out, "--plane", "diagonal"], "diagonal"),
        (
            &["synth", "--out", "/proc/fcdnode-cannot-write-here", "--subjects", "1"],
            "/proc/fcdnode-cannot-write-here",
        ),
    ];
    for (args, needle) in cases {
        let result = fcdnode().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(!result.status.success(), "{args:?} succeeded");
        assert_ne!(result.status.code(), Some(101), "{args:?} panicked: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: expected {needle:?} in: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
