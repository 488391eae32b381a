//! Cross-validation past one machine, run locally: folds trained by separate
//! `fcdtrain cv … --fold K` processes started together into one run directory and merged by
//! `fcdtrain report` give what one `fcdtrain cv` process gives; a merge with folds missing names
//! them; a fold process whose options or data differ from the run's is refused before it trains.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use fcdnode::synth::{self, CohortOptions};

const FOLDS: usize = 3;
const EXPERIMENT: &str = "resnet10_none_all_flair";

fn cohort(dir: &Path) {
    let options = CohortOptions {
        subjects: 8,
        fcd_fraction: 0.5,
        voxel_mm: 4.0,
        preview: false,
        seed: 7,
        ..CohortOptions::default()
    };
    synth::generate(dir, &options).unwrap();
}

/// `fcdtrain cv` with the tiny quick recipe every test of this file uses.
fn cv(data: &Path, out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fcdtrain"));
    c.args([
        "cv",
        "--preset",
        "quick",
        "--folds",
        &FOLDS.to_string(),
        "--epochs",
        "2",
    ])
    .args(["--voxel-mm", "4", "--data"])
    .arg(data)
    .arg("--out")
    .arg(out);
    c
}

fn report(run: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fcdtrain"))
        .args(["report", "--run"])
        .arg(run)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// `value` without its `seconds` keys (wall times, the one thing two runs may not share),
/// and how many it removed.
fn without_seconds(value: &mut serde_json::Value) -> usize {
    match value {
        serde_json::Value::Object(map) => {
            let removed = usize::from(map.remove("seconds").is_some());
            removed + map.values_mut().map(without_seconds).sum::<usize>()
        }
        serde_json::Value::Array(items) => items.iter_mut().map(without_seconds).sum(),
        _ => 0,
    }
}

fn fold_dir(run: &Path, k: usize) -> PathBuf {
    run.join(EXPERIMENT).join(format!("fold-{}", k + 1))
}

#[test]
fn folds_trained_by_separate_processes_merge_into_the_one_process_report() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("bids");
    cohort(&data);
    let one = tmp.path().join("one");
    let out = cv(&data, &one).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // Every fold at once on a fresh directory: the processes race to write the options, the
    // plan and the preprocessing cache.
    let many = tmp.path().join("many");
    let children: Vec<_> = (0..FOLDS)
        .map(|k| {
            cv(&data, &many)
                .args(["--fold", &k.to_string()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (k, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "fold {k}: {}", stderr(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("fold-{} of {FOLDS}", k + 1)),
            "fold {k}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert!(!many.join("report.md").exists(), "a fold process writes no report");
    let out = report(&many);
    assert!(out.status.success(), "{}", stderr(&out));

    // metrics.json: the same but for wall times (one per fold).
    let (mut a, mut b) = (json(&one.join("metrics.json")), json(&many.join("metrics.json")));
    assert_eq!(without_seconds(&mut a), FOLDS);
    assert_eq!(without_seconds(&mut b), FOLDS);
    assert_eq!(
        a["experiments"][EXPERIMENT]["folds"].as_array().map(Vec::len),
        Some(FOLDS)
    );
    assert_eq!(a, b);
    // report.md holds no timings or run paths: identical, as are the table and the figures.
    let text = |run: &Path, file: &str| std::fs::read_to_string(run.join(file)).unwrap();
    assert_eq!(text(&one, "report.md"), text(&many, "report.md"));
    for file in [
        "metrics.csv",
        &format!("roc_{EXPERIMENT}.png"),
        &format!("gradcam_{EXPERIMENT}.png"),
    ] {
        assert_eq!(
            std::fs::read(one.join(file)).unwrap(),
            std::fs::read(many.join(file)).unwrap(),
            "{file}"
        );
    }
    // Training is deterministic given the seed: the same weights, bit for bit.
    for k in 0..FOLDS {
        let weights = |run: &Path| std::fs::read(fold_dir(run, k).join("weights.bin")).unwrap();
        assert!(weights(&one) == weights(&many), "fold-{} weights differ", k + 1);
    }
    assert_eq!(
        std::fs::read(one.join("plan.json")).unwrap(),
        std::fs::read(many.join("plan.json")).unwrap()
    );
}

#[test]
fn a_merge_names_missing_folds_and_a_fold_unlike_the_run_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("bids");
    cohort(&data);
    let run = tmp.path().join("run");

    let out = report(&run);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("holds no run (config.json missing)"),
        "{}",
        stderr(&out)
    );

    let out = cv(&data, &run).args(["--fold", "2"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = report(&run);
    assert!(!out.status.success());
    let msg = stderr(&out);
    assert!(
        msg.contains(&format!(
            "unfinished fold(s): {EXPERIMENT} fold-1 (--fold 0), {EXPERIMENT} fold-2 (--fold 1)"
        )),
        "{msg}"
    );
    assert!(!msg.contains("fold-3"), "{msg}");
    assert!(!run.join("report.md").exists());

    // Other options than the run's, the threshold rule included (only a one-machine rerun may
    // change it): refused before anything is trained.
    for (option, value, difference) in [
        ("--seed", "2", "seed: 2 here, 1 in the run"),
        (
            "--threshold-rule",
            "youden",
            "threshold_rule: {\"rule\":\"youden\"} here",
        ),
    ] {
        let out = cv(&data, &run).args(["--fold", "0", option, value]).output().unwrap();
        assert!(!out.status.success(), "{option}");
        let msg = stderr(&out);
        assert!(
            msg.contains("holds a run with different options") && msg.contains(difference),
            "{option}: {msg}"
        );
        assert!(!fold_dir(&run, 0).exists(), "{option}: a refused fold trained");
    }
    let out = cv(&data, &run).args(["--fold", &FOLDS.to_string()]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("--fold {FOLDS}: the run has {FOLDS} fold(s)")),
        "{}",
        stderr(&out)
    );

    // The data changed under the run (a subject lost its FLAIR, so the split moves): refused.
    let flair = std::fs::read_dir(data.join("sub-00001").join("anat"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("_FLAIR.nii.gz"))
        .unwrap();
    std::fs::remove_file(flair).unwrap();
    let out = cv(&data, &run).args(["--fold", "0"]).output().unwrap();
    assert!(!out.status.success());
    let msg = stderr(&out);
    assert!(
        msg.contains("plan.json: the run's plan and this process's disagree")
            && msg.contains("folds")
            && msg.contains("skipped subjects"),
        "{msg}"
    );
    assert!(!fold_dir(&run, 0).exists());
}
