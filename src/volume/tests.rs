use std::f64::consts::PI;

use nalgebra::{Matrix3, Rotation3, Vector3};
use ndarray::Array3;

use super::*;

/// An oblique, anisotropic affine: rotated about two axes, origin off-centre.
fn oblique_affine() -> Affine {
    let r: Matrix3<f64> = (Rotation3::from_axis_angle(&Vector3::z_axis(), 0.3)
        * Rotation3::from_axis_angle(&Vector3::x_axis(), -0.2))
    .into_inner();
    let dirs = [r.column(0).into(), r.column(1).into(), r.column(2).into()];
    Affine::from_parts([0.9, 1.1, 1.4], dirs, [-20.0, 15.0, -8.0]).unwrap()
}

fn axial_lps(shape: [usize; 3], spacing: [f64; 3]) -> Affine {
    let origin = std::array::from_fn(|a| -(shape[a] as f64 - 1.0) * spacing[a] / 2.0);
    Affine::from_parts(spacing, [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], origin).unwrap()
}

/// An oblique grid centred on the LPS origin.
fn centred_oblique_grid(shape: [usize; 3]) -> Grid {
    let a = oblique_affine();
    let (dirs, spacing) = (a.directions(), a.spacing());
    let origin = std::array::from_fn(|r| {
        -(0..3)
            .map(|c| dirs[c][r] * spacing[c] * (shape[c] as f64 - 1.0) / 2.0)
            .sum::<f64>()
    });
    Grid {
        shape,
        affine: Affine::from_parts(spacing, dirs, origin).unwrap(),
    }
}

/// Deterministic pseudo-random values with no structure (a hash of the index).
fn noise_volume(shape: [usize; 3], affine: Affine) -> Volume {
    let data = Array3::from_shape_fn(shape, |(i, j, k)| {
        let h = (i * 73_856_093) ^ (j * 19_349_663) ^ (k * 83_492_791);
        (h % 1000) as f32
    });
    Volume::new(data, affine).unwrap()
}

/// A smooth field of LPS position, to judge interpolation error.
fn smooth_value(p: [f64; 3]) -> f32 {
    (100.0 + 40.0 * (p[0] * 2.0 * PI / 40.0).sin() * (p[1] * 2.0 * PI / 50.0).cos() + 0.5 * p[2]) as f32
}

fn smooth_volume(shape: [usize; 3], affine: Affine) -> Volume {
    let data = Array3::from_shape_fn(shape, |(i, j, k)| {
        smooth_value(affine.apply([i as f64, j as f64, k as f64]))
    });
    Volume::new(data, affine).unwrap()
}

/// Mean LPS position of voxels above `t`.
fn centroid_above(v: &Volume, t: f32) -> [f64; 3] {
    let mut sum = [0.0; 3];
    let mut n = 0.0;
    for ((i, j, k), &x) in v.data().indexed_iter() {
        if x > t {
            let p = v.voxel_to_world([i as f64, j as f64, k as f64]);
            for a in 0..3 {
                sum[a] += p[a];
            }
            n += 1.0;
        }
    }
    sum.map(|s| s / n)
}

/// A volume bright only in the patient's left half (LPS x > 10 mm).
fn left_marked(affine: Affine, shape: [usize; 3]) -> Volume {
    let data = Array3::from_shape_fn(shape, |(i, j, k)| {
        let p = affine.apply([i as f64, j as f64, k as f64]);
        if p[0] > 10.0 { 1000.0 } else { 10.0 }
    });
    Volume::new(data, affine).unwrap()
}

#[test]
fn resample_onto_own_grid_is_identity() {
    let v = noise_volume([17, 13, 11], oblique_affine());
    for interp in [Interp::Linear, Interp::Nearest] {
        let r = v.resample(&v.grid(), interp, -1.0).unwrap();
        assert_eq!(r.data(), v.data(), "{interp:?}");
        assert_eq!(r.affine(), v.affine());
    }
}

#[test]
fn resample_there_and_back_stays_within_error() {
    // Grid A: 1 mm axial. Grid B: oblique, anisotropic, shifted. Smooth content.
    let a = smooth_volume([60, 60, 40], axial_lps([60, 60, 40], [1.0, 1.0, 1.0]));
    let b_grid = centred_oblique_grid([56, 50, 30]);
    let b = a.resample(&b_grid, Interp::Linear, f32::NAN).unwrap();
    let back = b.resample(&a.grid(), Interp::Linear, f32::NAN).unwrap();
    // Compare where both passes stayed inside their grids.
    let mut worst = 0f32;
    let mut compared = 0;
    for (x, y) in back.data().iter().zip(a.data().iter()) {
        if x.is_finite() {
            worst = worst.max((x - y).abs());
            compared += 1;
        }
    }
    assert!(compared > 10_000, "only {compared} voxels overlap");
    // Two trilinear passes over a field whose values span ~80: stated bound 1.5 (≈2 % of range).
    assert!(worst < 1.5, "A→B→A error {worst}");
}

#[test]
fn resample_matches_the_field_at_target_positions() {
    let a = smooth_volume([60, 60, 40], axial_lps([60, 60, 40], [1.0, 1.0, 1.0]));
    let grid = Grid {
        shape: [30, 30, 18],
        affine: Affine::from_parts(
            [1.7, 1.3, 1.9],
            [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            [-20.0, -15.0, -15.0],
        )
        .unwrap(),
    };
    let r = a.resample(&grid, Interp::Linear, f32::NAN).unwrap();
    for ((i, j, k), &x) in r.data().indexed_iter() {
        let expected = smooth_value(grid.affine.apply([i as f64, j as f64, k as f64]));
        assert!((x - expected).abs() < 0.6, "at {i},{j},{k}: {x} vs {expected}");
    }
}

#[test]
fn nearest_keeps_mask_labels() {
    let v = left_marked(axial_lps([30, 30, 20], [1.0, 1.0, 1.0]), [30, 30, 20]);
    let r = v
        .resample(
            &Grid {
                shape: [20, 25, 18],
                affine: oblique_affine(),
            },
            Interp::Nearest,
            0.0,
        )
        .unwrap();
    assert!(r.data().iter().all(|&x| x == 0.0 || x == 10.0 || x == 1000.0));
}

#[test]
fn reorientation_round_trips_bit_exactly() {
    let v = noise_volume([9, 7, 5], oblique_affine());
    let original = v.orientation();
    for code in ["RAS", "LPS", "LPI", "SAR", "PIL", "AIR", "IRP"] {
        let target: Orientation = code.parse().unwrap();
        let r = v.reorient(target);
        assert_eq!(r.orientation(), target, "{code}");
        let back = r.reorient(original);
        assert_eq!(back.data(), v.data(), "{code}");
        assert!(back.affine().max_abs_diff(v.affine()) < 1e-12, "{code}");
        // Each voxel keeps its world position.
        let p = v.voxel_to_world([2.0, 3.0, 4.0]);
        let q = r.world_to_voxel(p).map(|x| x.round() as usize);
        assert_eq!(r.data()[q], v.data()[[2, 3, 4]], "{code}");
    }
}

#[test]
fn left_stays_left_through_reorient_resample_and_crop() {
    let shape = [40, 30, 20];
    let v = left_marked(axial_lps(shape, [1.0, 1.0, 1.0]), shape);
    assert_eq!(v.orientation().to_string(), "LPS");
    assert!(centroid_above(&v, 500.0)[0] > 10.0);
    let ras = v.to_canonical();
    assert_eq!(ras.orientation().to_string(), "RAS");
    // RAS: i grows towards the patient's right, so i = 0 is the far left, inside the block.
    assert_eq!(ras.data()[[0, 15, 10]], 1000.0);
    assert_eq!(ras.data()[[39, 15, 10]], 10.0);
    assert!(centroid_above(&ras, 500.0)[0] > 10.0);
    let r = ras
        .resample(&centred_oblique_grid([30, 30, 20]), Interp::Linear, 0.0)
        .unwrap();
    assert!(centroid_above(&r, 500.0)[0] > 10.0);
    let c = ras.crop_or_pad([24, 40, 16], 0.0).unwrap();
    assert!(centroid_above(&c, 500.0)[0] > 10.0);
}

#[test]
fn crop_and_pad_keep_world_positions() {
    let v = noise_volume([10, 8, 6], oblique_affine());
    let c = v.window([-2, 3, 1], [6, 9, 4], -5.0).unwrap();
    for ((i, j, k), &x) in c.data().indexed_iter() {
        let src = v.world_to_voxel(c.voxel_to_world([i as f64, j as f64, k as f64]));
        let idx = src.map(|s| s.round() as i64);
        let inside = idx.iter().zip(v.shape()).all(|(&s, n)| s >= 0 && s < n as i64);
        if inside {
            assert_eq!(x, v.data()[[idx[0] as usize, idx[1] as usize, idx[2] as usize]]);
        } else {
            assert_eq!(x, -5.0);
        }
    }
    let centred = v.crop_or_pad([12, 4, 6], 0.0).unwrap();
    assert_eq!(centred.shape(), [12, 4, 6]);
    // Centre voxel keeps its world position (even sizes: origin shifts by half the difference).
    assert_eq!(centred.data()[[1, 0, 0]], v.data()[[0, 2, 0]]);
}

#[test]
fn foreground_mask_fills_internal_holes() {
    let shape = [40, 40, 40];
    let data = Array3::from_shape_fn(shape, |(i, j, k)| {
        let r = ((i as f64 - 20.0).powi(2) + (j as f64 - 20.0).powi(2) + (k as f64 - 20.0).powi(2)).sqrt();
        let jitter = ((i * 7 + j * 13 + k * 3) % 11) as f32;
        if r < 5.0 {
            2.0 + jitter // dark "ventricle" inside the head
        } else if r < 15.0 {
            500.0 + jitter
        } else {
            jitter
        }
    });
    let v = Volume::new(data, axial_lps(shape, [1.0, 1.0, 1.0])).unwrap();
    let m = v.foreground_mask();
    assert!(m[[20, 20, 20]], "hole inside the head must be filled");
    assert!(m[[20, 20, 30]]);
    assert!(!m[[0, 0, 0]] && !m[[20, 20, 37]]);
    let count = m.iter().filter(|&&x| x).count() as f64;
    let sphere = 4.0 / 3.0 * PI * 15f64.powi(3);
    assert!((count / sphere - 1.0).abs() < 0.1, "{count} vs {sphere}");
}

#[test]
fn connected_region_follows_faces_from_the_seed() {
    let mut mask = Array3::from_elem((6, 5, 4), false);
    // Two blobs: an L through faces around the seed, and one touching it only at a corner.
    for idx in [[1, 1, 1], [2, 1, 1], [2, 2, 1], [2, 2, 2]] {
        mask[idx] = true;
    }
    mask[[3, 3, 3]] = true;
    mask[[5, 4, 0]] = true;
    let region = connected_region(&mask, [[1, 1, 1]]);
    let got: Vec<[usize; 3]> = region
        .indexed_iter()
        .filter(|(_, r)| **r)
        .map(|((i, j, k), _)| [i, j, k])
        .collect();
    assert_eq!(got, vec![[1, 1, 1], [2, 1, 1], [2, 2, 1], [2, 2, 2]]);
    assert!(
        connected_region(&mask, [[0, 0, 0], [9, 9, 9]]).iter().all(|r| !r),
        "seeds outside the mask or the grid start nothing"
    );
}
/// fill_holes fills the background from a frame around the volume; on random masks (including thin grids where faces
/// meet) it equals the definition: every voxel not reachable through background from any
/// border voxel is foreground.
#[test]
fn fill_holes_matches_its_definition_on_random_masks() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    for shape in [[1, 1, 1], [1, 5, 7], [2, 2, 9], [9, 8, 7], [12, 3, 1]] {
        for density in [0.2, 0.5, 0.7] {
            let mask = Array3::from_shape_fn(shape, |_| rng.random_bool(density));
            let [ni, nj, nk] = shape;
            let border = ndarray::indices((ni, nj, nk))
                .into_iter()
                .filter(|&(i, j, k)| i == 0 || j == 0 || k == 0 || i == ni - 1 || j == nj - 1 || k == nk - 1)
                .map(|(i, j, k)| [i, j, k]);
            let expected = connected_region(&mask.mapv(|m| !m), border).mapv(|outside| !outside);
            assert_eq!(fill_holes_of(&mask), expected, "{shape:?} at {density}");
        }
    }
    // A closed shell keeps its cavity.
    let mut shell = Array3::from_elem((7, 7, 7), false);
    for ((i, j, k), v) in shell.indexed_iter_mut() {
        *v = (1..=5).contains(&i) && (1..=5).contains(&j) && (1..=5).contains(&k);
    }
    shell[[3, 3, 3]] = false;
    assert!(fill_holes_of(&shell)[[3, 3, 3]]);
    assert!(!fill_holes_of(&shell)[[0, 3, 3]], "outside the shell stays background");
}

fn fill_holes_of(mask: &Array3<bool>) -> Array3<bool> {
    let mask = mask.as_standard_layout();
    fill_holes(mask.as_slice().unwrap(), dim3(&mask.to_owned()), |m| m)
}

#[test]
fn zscore_inside_mask() {
    let shape = [10, 10, 10];
    let mut v = noise_volume(shape, axial_lps(shape, [1.0, 1.0, 1.0]));
    let mask = Array3::from_shape_fn(shape, |(i, _, _)| i < 5);
    v.zscore(Some(&mask)).unwrap();
    let inside: Vec<f64> = v
        .data()
        .iter()
        .zip(mask.iter())
        .filter(|(_, m)| **m)
        .map(|(x, _)| f64::from(*x))
        .collect();
    let mean = inside.iter().sum::<f64>() / inside.len() as f64;
    let var = inside.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / inside.len() as f64;
    assert!(
        mean.abs() < 1e-4 && (var.sqrt() - 1.0).abs() < 1e-4,
        "mean {mean} var {var}"
    );
    let empty = Array3::from_elem(shape, false);
    assert!(matches!(v.zscore(Some(&empty)), Err(VolumeError::Degenerate { .. })));
    let wrong = Array3::from_elem([3, 3, 3], true);
    assert!(matches!(v.zscore(Some(&wrong)), Err(VolumeError::ShapeMismatch { .. })));
}

#[test]
fn bad_geometry_is_refused() {
    assert!("RRS".parse::<Orientation>().is_err());
    assert!("XYZ".parse::<Orientation>().is_err());
    assert!("RA".parse::<Orientation>().is_err());
    let mut m = *oblique_affine().matrix();
    m[(0, 0)] = f64::NAN;
    assert!(matches!(Affine::new(m), Err(VolumeError::BadAffine { .. })));
    assert!(
        Affine::from_parts(
            [0.0, 1.0, 1.0],
            [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            [0.0; 3]
        )
        .is_err()
    );
    assert!(matches!(
        Volume::new(Array3::zeros([0, 3, 3]), oblique_affine()),
        Err(VolumeError::EmptyGrid { .. })
    ));
}

#[test]
fn mask_points_and_nearest_distance() {
    let mut data = Array3::zeros([3, 3, 3]);
    data[[2, 0, 0]] = 1.0;
    data[[0, 1, 0]] = 0.4;
    let mask = Volume::new(data, oblique_affine()).unwrap();
    let points = mask.mask_points();
    assert_eq!(points, vec![mask.voxel_to_world([2.0, 0.0, 0.0])], "only values > 0.5");
    assert_eq!(nearest_distance(&points, points[0]), Some(0.0));
    let pts = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]];
    assert_eq!(nearest_distance(&pts, [4.0, 4.0, 0.0]), Some(5.0));
    assert_eq!(nearest_distance(&[], [0.0; 3]), None);
}

/// The parallel Otsu threshold equals one pass in order, whatever the layout, NaNs included.
#[test]
fn otsu_threshold_is_the_same_as_one_pass_in_order() {
    fn in_order(data: &Array3<f32>) -> f32 {
        let finite: Vec<f32> = data.iter().copied().filter(|v| v.is_finite()).collect();
        let lo = finite.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = finite.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let width = (hi - lo) / 256.0;
        let mut hist = [0u64; 256];
        for v in &finite {
            hist[(((v - lo) / width) as usize).min(255)] += 1;
        }
        let total: u64 = hist.iter().sum();
        let sum_all: f64 = hist.iter().enumerate().map(|(b, &c)| b as f64 * c as f64).sum();
        let (mut w0, mut sum0, mut best, mut best_b) = (0u64, 0f64, -1.0f64, 0usize);
        for (b, &c) in hist.iter().enumerate() {
            w0 += c;
            sum0 += b as f64 * c as f64;
            let w1 = total - w0;
            if w0 == 0 || w1 == 0 {
                continue;
            }
            let between = w0 as f64 * w1 as f64 * (sum0 / w0 as f64 - (sum_all - sum0) / w1 as f64).powi(2);
            if between > best {
                (best, best_b) = (between, b);
            }
        }
        lo + width * (best_b as f32 + 1.0)
    }
    let data = Array3::from_shape_fn([90, 70, 50], |(i, j, k)| {
        let v = ((i * 31 + j * 17 + k * 7) % 997) as f32 * if i < 40 { 0.3 } else { 1.7 };
        if (i + j + k) % 101 == 0 { f32::NAN } else { v }
    });
    let expected = in_order(&data);
    assert_eq!(otsu_threshold(&data), expected);
    // Not in standard order: the same voxels, the same threshold.
    let permuted = data.clone().permuted_axes([2, 0, 1]);
    assert_eq!(otsu_threshold(&permuted), expected);
    let mut strided = data.clone();
    strided.slice_collapse(ndarray::s![..;2, .., ..]);
    assert!(strided.as_slice_memory_order().is_none(), "not contiguous");
    assert_eq!(otsu_threshold(&strided), in_order(&strided));
}
