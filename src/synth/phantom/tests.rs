use std::sync::OnceLock;

use ndarray::Array3;

use super::anatomy::Fractions;
use super::*;
use crate::volume::{Plane, acquisition_grid};

/// The templates, decoded once for every test in this binary.
fn anatomy() -> &'static Anatomy {
    static ANATOMY: OnceLock<Anatomy> = OnceLock::new();
    ANATOMY.get_or_init(|| Anatomy::load().expect("built-in templates decode"))
}

/// An axial grid like the cohort's: 170 × 210 × 180 mm centred on the MNI brain.
fn axial(voxel_mm: f64) -> Grid {
    acquisition_grid(Plane::Axial, [voxel_mm; 3], [170.0, 210.0, 180.0], [0.0, 18.0, 10.0]).expect("valid grid")
}

fn acq(voxel_mm: f64, noise: f64, bias: f64) -> AcquisitionSpec {
    AcquisitionSpec {
        grid: axial(voxel_mm),
        noise,
        bias,
    }
}

fn fcd(seed: u64, hemisphere: Hemisphere, lobe: Lobe, contrast: f64) -> SubjectSpec {
    SubjectSpec {
        seed,
        lesion: Some(LesionSpec {
            hemisphere,
            lobe,
            radius_mm: 8.0,
            contrast,
            flair_gain: 1.0,
        }),
        mimics: 0,
    }
}

fn subject(spec: &SubjectSpec) -> Subject {
    Subject::sample(anatomy(), spec).expect("subject samples")
}

/// Template tissue fractions (no lesion) at every voxel of `grid`, through the direct mapping.
fn template_fractions(s: &Subject, contrast: Contrast, grid: &Grid) -> Array3<Fractions> {
    let to_vox = anatomy().to_voxel();
    Array3::from_shape_fn(grid.shape, |(i, j, k)| {
        let x = s.template_point(contrast, grid.voxel_to_world([i as f64, j as f64, k as f64]));
        let v = to_vox.transform_point(&x.into());
        anatomy().sample([v.x, v.y, v.z])
    })
}

fn mean(values: impl IntoIterator<Item = f32>) -> f64 {
    let (n, sum) = values
        .into_iter()
        .fold((0usize, 0f64), |(n, s), v| (n + 1, s + f64::from(v)));
    assert!(n > 0, "mean over no voxels");
    sum / n as f64
}

#[test]
fn same_seed_gives_identical_voxels_and_other_seeds_differ() {
    let spec = fcd(7, Hemisphere::Left, Lobe::Frontal, 1.0);
    let a = acq(3.0, 0.03, 0.2);
    let first = subject(&spec).render(anatomy(), Contrast::Flair, &a, 11).unwrap();
    let again = subject(&spec).render(anatomy(), Contrast::Flair, &a, 11).unwrap();
    assert_eq!(first, again);
    assert!(
        first
            .image
            .data()
            .iter()
            .all(|v| v.fract() == 0.0 && (0.0..=4095.0).contains(v))
    );

    let other_render = subject(&spec).render(anatomy(), Contrast::Flair, &a, 12).unwrap();
    assert_ne!(first.image, other_render.image);
    assert_eq!(first.roi, other_render.roi, "the ROI depends on the subject only");
    let other_subject = subject(&SubjectSpec { seed: 8, ..spec })
        .render(anatomy(), Contrast::Flair, &a, 11)
        .unwrap();
    assert_ne!(first.image, other_subject.image);
    assert_ne!(first.roi, other_subject.roi);
}

#[test]
fn controls_have_no_roi() {
    let control = subject(&SubjectSpec {
        seed: 3,
        lesion: None,
        mimics: 0,
    });
    let r = control
        .render(anatomy(), Contrast::Flair, &acq(3.0, 0.02, 0.1), 1)
        .unwrap();
    assert!(r.roi.is_none());
    assert!(control.lesion_centre_lps(Contrast::Flair).is_none());
}

/// Every hemisphere and lobe: the ROI is non-empty, inside the brain, on the requested side
/// (LPS x > 0 is the patient's left), and straddles the grey/white boundary.
#[test]
fn lesions_sit_at_the_grey_white_boundary_of_the_requested_side() {
    let a = acq(2.5, 0.02, 0.1);
    for (n, (hemisphere, lobe)) in Hemisphere::ALL
        .into_iter()
        .flat_map(|h| Lobe::ALL.map(|l| (h, l)))
        .enumerate()
    {
        let s = subject(&fcd(100 + n as u64, hemisphere, lobe, 1.0));
        let roi = s.render(anatomy(), Contrast::Flair, &a, 5).unwrap().roi.unwrap();
        let points = roi.mask_points();
        assert!(
            points.len() >= 20,
            "{hemisphere:?} {lobe:?}: ROI has {} voxels",
            points.len()
        );
        let centroid_x = points.iter().map(|p| p[0]).sum::<f64>() / points.len() as f64;
        let centre = s.lesion_centre_lps(Contrast::Flair).unwrap();
        match hemisphere {
            Hemisphere::Left => assert!(centroid_x > 5.0 && centre[0] > 5.0, "{lobe:?}: x {centroid_x}"),
            Hemisphere::Right => assert!(centroid_x < -5.0 && centre[0] < -5.0, "{lobe:?}: x {centroid_x}"),
        }

        let tissue = template_fractions(&s, Contrast::Flair, &a.grid);
        let in_roi: Vec<Fractions> = roi
            .data()
            .iter()
            .zip(tissue.iter())
            .filter(|(m, _)| **m > 0.5)
            .map(|(_, f)| *f)
            .collect();
        let in_brain = in_roi.iter().filter(|f| f.gm + f.wm > 0.5).count();
        assert!(
            in_brain as f64 >= 0.97 * in_roi.len() as f64,
            "{hemisphere:?} {lobe:?}: {in_brain} of {} ROI voxels in brain tissue",
            in_roi.len()
        );
        let gm = mean(in_roi.iter().map(|f| f.gm));
        assert!((0.2..0.8).contains(&gm), "{hemisphere:?} {lobe:?}: mean GM {gm}");
        assert!(
            in_roi.iter().any(|f| f.gm > 0.6),
            "{hemisphere:?} {lobe:?}: no cortex in ROI"
        );
        assert!(
            in_roi.iter().any(|f| f.wm > 0.6),
            "{hemisphere:?} {lobe:?}: no white matter in ROI"
        );
    }
}

/// Mean FLAIR inside the ROI ÷ mean FLAIR of white matter 3–10 mm around it.
fn flair_lesion_ratio(contrast: f64, flair_gain: f64) -> f64 {
    let a = acq(2.0, 0.02, 0.1);
    let mut spec = fcd(21, Hemisphere::Right, Lobe::Frontal, contrast);
    if let Some(l) = &mut spec.lesion {
        l.flair_gain = flair_gain;
    }
    let s = subject(&spec);
    let r = s.render(anatomy(), Contrast::Flair, &a, 9).unwrap();
    let roi = r.roi.unwrap();
    let points = roi.mask_points();
    let tissue = template_fractions(&s, Contrast::Flair, &a.grid);
    let (mut lesion, mut shell) = (Vec::new(), Vec::new());
    for ((idx, &v), (m, f)) in r.image.data().indexed_iter().zip(roi.data().iter().zip(tissue.iter())) {
        if *m > 0.5 {
            lesion.push(v);
        } else if f.wm > 0.9 {
            let p = a.grid.voxel_to_world([idx.0 as f64, idx.1 as f64, idx.2 as f64]);
            let d2 = points
                .iter()
                .map(|q| (0..3).map(|c| (p[c] - q[c]).powi(2)).sum::<f64>())
                .fold(f64::INFINITY, f64::min);
            if (9.0..=100.0).contains(&d2) {
                shell.push(v);
            }
        }
    }
    assert!(shell.len() > 50, "white-matter shell has {} voxels", shell.len());
    mean(lesion) / mean(shell)
}

#[test]
fn flair_lesion_is_brighter_than_surrounding_white_matter() {
    let strong = flair_lesion_ratio(1.0, 1.0);
    let weak = flair_lesion_ratio(0.3, 1.0);
    let faint = flair_lesion_ratio(1.0, 0.3);
    println!("FLAIR ROI / WM shell: contrast 1.0 → {strong:.3}, contrast 0.3 → {weak:.3}, FLAIR gain 0.3 → {faint:.3}");
    assert!(strong > 1.15, "ratio {strong} at contrast 1.0");
    assert!(weak < strong, "ratio {weak} at contrast 0.3 is not below {strong}");
    assert!(faint < strong, "ratio {faint} at FLAIR gain 0.3 is not below {strong}");
}

/// Voxels where `b` exceeds `a` by more than `by`, and the largest absolute difference.
fn brighter(a: &Volume, b: &Volume, by: f32) -> (usize, f32) {
    a.data()
        .iter()
        .zip(b.data().iter())
        .fold((0, 0.0f32), |(n, max), (x, y)| {
            (n + usize::from(y - x > by), max.max((y - x).abs()))
        })
}

/// Mimics brighten FLAIR in controls too, carry no ROI, are the same for a patient and a control
/// of one seed, and leave T1w nearly alone (white-matter lesions are only slightly T1w dark).
#[test]
fn mimics_brighten_flair_without_an_roi() {
    let a = acq(2.0, 0.0, 0.0);
    let control = |mimics| {
        subject(&SubjectSpec {
            seed: 6,
            lesion: None,
            mimics,
        })
    };
    let render = |s: &Subject, c| s.render(anatomy(), c, &a, 3).unwrap();
    let (plain, hard) = (control(0), control(3));
    let (flair_plain, flair_hard) = (render(&plain, Contrast::Flair), render(&hard, Contrast::Flair));
    assert!(flair_hard.roi.is_none());
    // 0.2 × the white-matter signal (700).
    let (bright, flair_max) = brighter(&flair_plain.image, &flair_hard.image, 140.0);
    let (_, t1_max) = brighter(
        &render(&plain, Contrast::T1w).image,
        &render(&hard, Contrast::T1w).image,
        0.0,
    );
    println!("mimics level 3: {bright} FLAIR voxels brighter by > 140, max FLAIR change {flair_max}, max T1w {t1_max}");
    assert!(bright > 30, "only {bright} voxels brightened");
    assert!(
        t1_max < flair_max / 2.0,
        "T1w changed by {t1_max}, FLAIR by {flair_max}"
    );

    let patient = subject(&SubjectSpec {
        mimics: 3,
        ..fcd(6, Hemisphere::Left, Lobe::Temporal, 1.0)
    });
    assert_eq!(format!("{:?}", patient.mimics), format!("{:?}", hard.mimics));
    assert!(plain.mimics.is_empty());
    let mild = control(1);
    assert_ne!(format!("{:?}", mild.mimics), format!("{:?}", hard.mimics));
    let too_hard = Subject::sample(
        anatomy(),
        &SubjectSpec {
            seed: 6,
            lesion: None,
            mimics: 4,
        },
    );
    assert!(matches!(
        too_hard,
        Err(PhantomError::InvalidSpec { field: "mimics", .. })
    ));
}

#[test]
fn tissue_contrasts_are_ordered() {
    let a = acq(2.5, 0.02, 0.0);
    let s = subject(&SubjectSpec {
        seed: 4,
        lesion: None,
        mimics: 0,
    });
    for (contrast, order) in [
        (Contrast::T1w, ["WM", "GM", "CSF"]),
        (Contrast::Flair, ["GM", "WM", "CSF"]),
    ] {
        let image = s.render(anatomy(), contrast, &a, 2).unwrap().image;
        let tissue = template_fractions(&s, contrast, &a.grid);
        let mean_where = |pick: fn(&Fractions) -> f32| {
            mean(
                image
                    .data()
                    .iter()
                    .zip(tissue.iter())
                    .filter(|(_, f)| pick(f) > 0.9)
                    .map(|(v, _)| *v),
            )
        };
        let m = |name| match name {
            "GM" => mean_where(|f| f.gm),
            "WM" => mean_where(|f| f.wm),
            _ => mean_where(|f| f.csf),
        };
        let means = order.map(m);
        println!("{contrast:?}: {order:?} = {means:?}");
        assert!(
            means[0] > 1.1 * means[1] && means[1] > 1.5 * means[2],
            "{contrast:?}: {order:?} = {means:?}"
        );
    }
}

/// The renderer's incremental mapping (phase rotation along k) matches the direct one.
#[test]
fn incremental_mapping_matches_direct_mapping() {
    let a = acq(3.0, 0.0, 0.0);
    let s = subject(&SubjectSpec {
        seed: 5,
        lesion: None,
        mimics: 0,
    });
    let image = s.render(anatomy(), Contrast::T1w, &a, 0).unwrap().image;
    let tissue = template_fractions(&s, Contrast::T1w, &a.grid);
    let signals = Contrast::T1w.signals();
    let worst = image
        .data()
        .iter()
        .zip(tissue.iter())
        .map(|(v, f)| {
            let t = Tissue {
                fractions: *f,
                ..Tissue::default()
            };
            (v - signals.of(&t).round()).abs()
        })
        .fold(0f32, f32::max);
    assert!(worst <= 1.0, "largest difference {worst}");
}

#[test]
fn lesion_centre_maps_back_to_template_and_sessions_differ() {
    let s = subject(&fcd(33, Hemisphere::Left, Lobe::Temporal, 1.0));
    let centre = s.lesion.as_ref().unwrap().centre;
    let t1 = s.lesion_centre_lps(Contrast::T1w).unwrap();
    let flair = s.lesion_centre_lps(Contrast::Flair).unwrap();
    for (c, p) in [(Contrast::T1w, t1), (Contrast::Flair, flair)] {
        let back = s.template_point(c, p);
        assert!((back - centre).norm() < 1e-6, "{c:?}: {back} vs {centre}");
    }
    let moved = (0..3).map(|a| (t1[a] - flair[a]).powi(2)).sum::<f64>().sqrt();
    assert!(moved > 0.1 && moved < 15.0, "sessions differ by {moved} mm");
}

#[test]
fn bad_specs_are_refused() {
    let mut spec = fcd(1, Hemisphere::Left, Lobe::Occipital, 1.0);
    if let Some(l) = &mut spec.lesion {
        l.radius_mm = f64::NAN;
    }
    assert!(matches!(
        Subject::sample(anatomy(), &spec),
        Err(PhantomError::InvalidSpec {
            field: "lesion radius_mm",
            ..
        })
    ));
    let s = subject(&SubjectSpec {
        seed: 1,
        lesion: None,
        mimics: 0,
    });
    let err = s.render(anatomy(), Contrast::T1w, &acq(3.0, -0.1, 0.1), 0).unwrap_err();
    assert!(
        matches!(
            err,
            PhantomError::InvalidSpec {
                field: "acquisition noise",
                ..
            }
        ),
        "{err}"
    );
}
