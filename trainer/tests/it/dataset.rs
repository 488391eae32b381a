//! The trainer reads what `fcdnode synth` writes: the same BIDS layout as ds004199.

use std::process::Command;

use fcdnode::synth::{self, CohortOptions};
use fcdnode_trainer::data::bids::{Dataset, Group, ImageKind};

#[test]
fn reads_a_synthetic_cohort() {
    let dir = tempfile::tempdir().unwrap();
    let options = CohortOptions {
        subjects: 3,
        fcd_fraction: 0.67,
        voxel_mm: 4.0,
        preview: false,
        ..CohortOptions::default()
    };
    let report = synth::generate(dir.path(), &options).unwrap();
    let d = Dataset::open(dir.path()).unwrap();
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    assert_eq!(d.subjects.len(), 3);
    for (s, p) in d.subjects.iter().zip(&report.participants) {
        assert_eq!(s.id, p.id);
        assert_eq!(s.group == Group::Fcd, p.group == "fcd");
        assert_eq!(s.images_of(ImageKind::T1w).count(), 1);
        assert_eq!(s.images_of(ImageKind::Flair).count(), 1);
        assert_eq!(
            s.images_of(ImageKind::FlairRoi).count(),
            usize::from(s.group == Group::Fcd)
        );
        assert_eq!(s.columns["acquisition"], options.acquisitions[p.acquisition].name);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_fcdtrain"))
        .args(["dataset", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("3 subjects (2 fcd, 1 hc)"), "{text}");
    assert!(text.contains("FlairRoi: 2 images"), "{text}");
}
