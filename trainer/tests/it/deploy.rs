//! deploy/: the Kubernetes manifests against the Kubernetes API schemas (kubernetes-validate,
//! from PyPI with the schemas inside, so offline; installed by scripts/setup.sh), and the
//! Slurm array script run as a task of its array would run it.

use std::path::{Path, PathBuf};
use std::process::Command;

use fcdnode::synth::{self, CohortOptions};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The checker scripts/setup.sh installs, else one on PATH; a missing checker fails the test.
fn kubernetes_validate() -> PathBuf {
    let local = root().join(".tools/venv/bin/kubernetes-validate");
    if local.is_file() {
        return local;
    }
    let on_path = Command::new("kubernetes-validate").arg("--version").output();
    assert!(
        on_path.is_ok_and(|o| o.status.success()),
        "kubernetes-validate missing: run scripts/setup.sh (PyPI package kubernetes-validate)"
    );
    PathBuf::from("kubernetes-validate")
}

#[test]
fn kubernetes_manifests_match_the_api_schemas() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    assert_eq!(
        names,
        [
            "node.yaml",
            "train-cv-job.yaml",
            "train-cv-pvc.yaml",
            "train-cv-report-job.yaml"
        ]
    );
    let kinds: usize = files
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .filter(|l| l.starts_with("kind: "))
                .count()
        })
        .sum();
    assert_eq!(kinds, 8);
    // Strict: a misspelt or misplaced field fails too, not only a wrong type. The oldest
    // Kubernetes the Job's comments name (backoffLimitPerIndex) and the checker's newest.
    let checker = kubernetes_validate();
    for version in [&["-k", "1.29.0"][..], &[]] {
        let out = Command::new(&checker)
            .arg("--strict")
            .args(version)
            .args(&files)
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{version:?}: {said}");
        // Every resource was checked, none skipped: one `passed` line per `kind:`.
        assert_eq!(
            said.matches(" passed for resource ").count(),
            kinds,
            "{version:?}: {said}"
        );
    }

    // The fold Job: one completion per fold, each pod's index as its --fold.
    let job = std::fs::read_to_string(root().join("deploy/k8s/train-cv-job.yaml")).unwrap();
    let value = |prefix: &str| {
        job.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in train-cv-job.yaml"))
            .trim()
            .to_string()
    };
    assert_eq!(value("completions:"), value("- --folds="));
    assert_eq!(value("completionMode:"), "Indexed");
    assert_eq!(value("- --fold="), "$(JOB_COMPLETION_INDEX)");
    let merge = std::fs::read_to_string(root().join("deploy/k8s/train-cv-report-job.yaml")).unwrap();
    assert!(
        merge.contains(&format!("\"--run={}\"", value("- --out="))),
        "the merge reads the folds' run directory"
    );
}

#[test]
fn the_sbatch_script_parses_and_trains_the_fold_of_its_array_task() {
    let script = root().join("deploy/slurm/train-cv.sbatch");
    let out = Command::new("bash").arg("-n").arg(&script).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("bids");
    let options = CohortOptions {
        subjects: 8,
        voxel_mm: 4.0,
        preview: false,
        seed: 7,
        ..CohortOptions::default()
    };
    synth::generate(&data, &options).unwrap();
    let run = tmp.path().join("run");
    let task = |id: Option<&str>| {
        let mut c = Command::new("bash");
        c.arg(&script)
            .args([
                "--preset",
                "quick",
                "--folds",
                "2",
                "--epochs",
                "1",
                "--voxel-mm",
                "4",
                "--data",
            ])
            .arg(&data)
            .arg("--out")
            .arg(&run)
            .env("FCDTRAIN", env!("CARGO_BIN_EXE_fcdtrain"))
            .env_remove("SLURM_ARRAY_TASK_ID");
        if let Some(id) = id {
            c.env("SLURM_ARRAY_TASK_ID", id);
        }
        c.output().unwrap()
    };
    let out = task(None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not an array task"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = task(Some("1"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let exp = run.join("resnet10_none_all_flair");
    assert!(exp.join("fold-2/result.json").is_file());
    assert!(!exp.join("fold-1").exists(), "task 1 trains fold-2 only");
}
