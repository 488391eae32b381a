use std::path::Path;

use nalgebra::{Matrix3, Rotation3, Vector3};
use ndarray::Array3;

use super::*;
use crate::volume::Orientation;

fn oblique_volume() -> Volume {
    let r: Matrix3<f64> = (Rotation3::from_axis_angle(&Vector3::y_axis(), 0.25)
        * Rotation3::from_axis_angle(&Vector3::x_axis(), 0.4))
    .into_inner();
    let dirs = [r.column(0).into(), r.column(1).into(), r.column(2).into()];
    let affine = Affine::from_parts([0.8, 1.0, 1.5], dirs, [10.0, -20.0, 30.0]).unwrap();
    let data = Array3::from_shape_fn((7, 6, 5), |(i, j, k)| (i * 100 + j * 10 + k) as f32);
    Volume::new(data, affine).unwrap()
}

/// Overwrites bytes of an uncompressed .nii header (little endian).
fn patch(path: &Path, offset: usize, bytes: &[u8]) {
    let mut file = std::fs::read(path).unwrap();
    file[offset..offset + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, file).unwrap();
}

// NIfTI-1 header offsets.
const DIM: usize = 40;
const PIXDIM: usize = 76;
const SCL_SLOPE: usize = 112;
const QFORM_CODE: usize = 252;
const SFORM_CODE: usize = 254;
const QUATERN_B: usize = 256;
const SROW_X: usize = 280;

#[test]
fn round_trip_every_datatype_and_compression() {
    let dir = tempfile::tempdir().unwrap();
    let v = oblique_volume();
    for (dt, name) in [
        (DataType::U8, "u8"),
        (DataType::I16, "i16"),
        (DataType::U16, "u16"),
        (DataType::F32, "f32"),
        (DataType::F64, "f64"),
    ] {
        for ext in ["nii", "nii.gz"] {
            let path = dir.path().join(format!("{name}.{ext}"));
            // u8 saturates at 255: scale the test values into range for it.
            let src = if dt == DataType::U8 {
                Volume::new(v.data().mapv(|x| (x / 4.0).round()), *v.affine()).unwrap()
            } else {
                v.clone()
            };
            write(&path, &src, dt).unwrap();
            let back = read(&path).unwrap();
            assert_eq!(back.data(), src.data(), "{name}.{ext}");
            assert!(back.affine().max_abs_diff(src.affine()) < 1e-4, "{name}.{ext}");
        }
    }
}

#[test]
fn sform_is_ras_and_left_stays_left() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lps.nii");
    let affine = Affine::from_parts(
        [1.0; 3],
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        [-5.0, -5.0, 0.0],
    )
    .unwrap();
    let data = Array3::from_shape_fn((11, 11, 3), |(i, _, _)| if i > 5 { 100.0 } else { 0.0 });
    write(&path, &Volume::new(data, affine).unwrap(), DataType::I16).unwrap();
    let raw = std::fs::read(&path).unwrap();
    let srow_x0 = f32::from_le_bytes(raw[SROW_X..SROW_X + 4].try_into().unwrap());
    // LPS +x (left) is RAS −x: the first sform element must be −1.
    assert_eq!(srow_x0, -1.0);
    let back = read(&path).unwrap();
    assert_eq!(back.orientation(), Orientation::LPS);
    let left = back.voxel_to_world([10.0, 5.0, 1.0]);
    assert!(left[0] > 0.0 && back.data()[[10, 5, 1]] == 100.0);
}

#[test]
fn qform_is_used_when_sform_code_is_zero() {
    let dir = tempfile::tempdir().unwrap();
    let v = oblique_volume();
    // A left-handed affine needs qfac = −1 in the qform.
    let flipped = v.reorient("RPS".parse().unwrap());
    for (name, vol) in [("right.nii", &v), ("left.nii", &flipped)] {
        let path = dir.path().join(name);
        write(&path, vol, DataType::F32).unwrap();
        patch(&path, SFORM_CODE, &0i16.to_le_bytes());
        // Scramble the sform so reading it by mistake would show.
        patch(&path, SROW_X, &7f32.to_le_bytes());
        let back = read(&path).unwrap();
        assert!(
            back.affine().max_abs_diff(vol.affine()) < 1e-4,
            "{name}: {:?}",
            back.affine()
        );
    }
}

#[test]
fn scl_slope_and_inter_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scaled.nii");
    let v = oblique_volume();
    write(&path, &v, DataType::I16).unwrap();
    patch(&path, SCL_SLOPE, &[2f32.to_le_bytes(), 10f32.to_le_bytes()].concat());
    let back = read(&path).unwrap();
    assert_eq!(back.data(), &v.data().mapv(|x| 2.0 * x + 10.0));
}

#[test]
fn a_4d_file_with_one_volume_reads_as_3d() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("4d.nii");
    let v = oblique_volume();
    write(&path, &v, DataType::F32).unwrap();
    patch(&path, DIM, &4i16.to_le_bytes());
    patch(&path, DIM + 8, &1i16.to_le_bytes());
    assert_eq!(read(&path).unwrap().data(), v.data());
}

#[test]
fn the_mni_template_reads_as_ras() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mni152/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz");
    let v = read(&path).unwrap();
    assert_eq!(v.shape(), [197, 233, 189]);
    assert_eq!(v.orientation(), Orientation::RAS);
    assert_eq!(v.spacing().map(|s| (s * 1000.0).round()), [1000.0; 3]);
    // MNI origin (anterior commissure) lies inside the grid, near its centre.
    let ac = v.world_to_voxel([0.0, 0.0, 0.0]);
    assert!(
        ac.iter()
            .zip(v.shape())
            .all(|(&x, n)| x > 0.2 * n as f64 && x < 0.8 * n as f64),
        "{ac:?}"
    );
}

/// Each broken header gives an error naming the file and the field.
#[test]
fn bad_headers_are_refused_with_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let v = oblique_volume();
    type Break = fn(&Path);
    let cases: [(&str, Break, &str); 7] = [
        ("zero_dim", |p| patch(p, DIM + 2, &0i16.to_le_bytes()), "dim"),
        ("ndim_9", |p| patch(p, DIM, &9i16.to_le_bytes()), "dim[0]"),
        ("nan_sform", |p| patch(p, SROW_X + 4, &f32::NAN.to_le_bytes()), "srow"),
        ("singular_sform", |p| patch(p, SROW_X, &[0u8; 48]), "geometry"),
        (
            "bad_quaternion",
            |p| {
                patch(p, SFORM_CODE, &0i16.to_le_bytes());
                patch(p, QUATERN_B, &[0.9f32.to_le_bytes(), 0.9f32.to_le_bytes()].concat());
            },
            "quatern",
        ),
        (
            "negative_pixdim",
            |p| {
                patch(p, SFORM_CODE, &0i16.to_le_bytes());
                patch(p, QFORM_CODE, &1i16.to_le_bytes());
                patch(p, PIXDIM + 4, &(-1f32).to_le_bytes());
            },
            "pixdim",
        ),
        (
            "huge_dims",
            |p| patch(p, DIM + 2, &[0xff, 0x7f, 0xff, 0x7f, 0xff, 0x7f]),
            "dim",
        ),
    ];
    for (name, break_it, field) in cases {
        let path = dir.path().join(format!("{name}.nii"));
        write(&path, &v, DataType::F32).unwrap();
        break_it(&path);
        let err = read(&path).expect_err(name);
        let message = format!("{err}");
        assert!(message.contains(&format!("{name}.nii")), "{name}: {message}");
        assert!(message.contains(field), "{name}: {message}");
    }
}

#[test]
fn truncated_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let v = oblique_volume();
    for ext in ["nii", "nii.gz"] {
        let path = dir.path().join(format!("cut.{ext}"));
        write(&path, &v, DataType::F32).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() * 2 / 3]).unwrap();
        let err = read(&path).expect_err(ext);
        assert!(matches!(err, NiftiError::Read { .. }), "{ext}: {err}");
        assert!(format!("{err}").contains("cut."), "{err}");
    }
    let missing = dir.path().join("absent.nii");
    assert!(format!("{}", read(&missing).unwrap_err()).contains("absent.nii"));
}

#[test]
fn unwritable_directory_is_reported() {
    let err = write(
        Path::new("/proc/nonexistent/x.nii.gz"),
        &oblique_volume(),
        DataType::I16,
    )
    .unwrap_err();
    assert!(matches!(err, NiftiError::Write { .. }));
    assert!(format!("{err}").contains("/proc/nonexistent/x.nii.gz"));
}
