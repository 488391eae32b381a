//! NIfTI-1 read/write (`.nii`, `.nii.gz`) for [`Volume`]: sform before qform as NIfTI-1
//! prescribes, RAS world ↔ LPS patient, `scl_slope`/`scl_inter` applied on read.

use std::path::{Path, PathBuf};

use ::nifti::writer::WriterOptions;
use ::nifti::{InMemNiftiObject, IntoNdArray, NiftiHeader, NiftiObject, NiftiType, ReaderOptions, XForm};
use nalgebra::{Matrix3, Matrix4, Quaternion, UnitQuaternion};
use ndarray::{Array3, Axis, Ix3};

use crate::volume::{Affine, Volume, VolumeError};

/// Voxel count above which a header is refused before any allocation (2^31 voxels).
const MAX_VOXELS: u64 = 1 << 31;

/// Why a NIfTI file could not be read or written; every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NiftiError {
    /// The file could not be opened or decoded (I/O error, truncated data, unknown datatype).
    #[error("{path}: cannot read NIfTI: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: ::nifti::NiftiError,
    },
    /// A header field breaks a NIfTI-1 rule.
    #[error("{path}: header field `{field}` is invalid: {rule}")]
    BadHeader {
        path: PathBuf,
        field: &'static str,
        rule: String,
    },
    /// The geometry in the header does not form a usable affine.
    #[error("{path}: header geometry (sform/qform/pixdim) gives no usable affine: {source}")]
    Geometry {
        path: PathBuf,
        #[source]
        source: VolumeError,
    },
    /// The file could not be written.
    #[error("{path}: cannot write NIfTI: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: ::nifti::NiftiError,
    },
}

/// On-disk voxel type for [`write`]; integer types round and saturate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataType {
    /// Unsigned 8-bit: masks and labels.
    U8,
    /// Signed 16-bit: MR magnitude images.
    I16,
    /// Unsigned 16-bit.
    U16,
    /// 32-bit float: heatmaps, normalised images.
    F32,
    /// 64-bit float.
    F64,
}

/// Reads a 3D NIfTI-1 file (a 4D file with one volume is accepted) into LPS geometry.
pub fn read(path: &Path) -> Result<Volume, NiftiError> {
    let header = NiftiHeader::from_file(path).map_err(|source| read_error(path, source))?;
    let shape = check_header(path, &header)?;
    let object = ReaderOptions::new()
        .read_file(path)
        .map_err(|source| read_error(path, source))?;
    to_volume(path, object, shape)
}

/// Reads a gzip-compressed NIfTI-1 image held in memory (e.g. a template built into the
/// binary); `label` names it in errors.
pub fn read_gz_bytes(label: &str, bytes: &[u8]) -> Result<Volume, NiftiError> {
    let path = Path::new(label);
    let header =
        NiftiHeader::from_reader(flate2::read::GzDecoder::new(bytes)).map_err(|source| read_error(path, source))?;
    let shape = check_header(path, &header)?;
    let object = InMemNiftiObject::from_reader(flate2::read::GzDecoder::new(bytes))
        .map_err(|source| read_error(path, source))?;
    to_volume(path, object, shape)
}

fn read_error(path: &Path, source: ::nifti::NiftiError) -> NiftiError {
    NiftiError::Read {
        path: path.to_owned(),
        source,
    }
}

fn to_volume(path: &Path, object: InMemNiftiObject, shape: [usize; 3]) -> Result<Volume, NiftiError> {
    let affine = header_affine(path, object.header())?;
    let array = object
        .into_volume()
        .into_ndarray::<f32>()
        .map_err(|source| read_error(path, source))?;
    // Drop trailing singleton axes (4D with one volume) or add missing ones (1D/2D images).
    let mut array = array;
    while array.ndim() > 3 {
        let last = Axis(array.ndim() - 1);
        array = array.index_axis_move(last, 0);
    }
    while array.ndim() < 3 {
        let next = Axis(array.ndim());
        array = array.insert_axis(next);
    }
    let data: Array3<f32> = array
        .into_dimensionality::<Ix3>()
        .ok()
        .filter(|a| a.shape() == shape)
        .ok_or_else(|| bad(path, "dim", format!("voxel data does not fit shape {shape:?}")))?;
    if data.iter().any(|v| !v.is_finite()) {
        return Err(bad(path, "scl_slope", "scaled voxel values are not all finite".into()));
    }
    Volume::new(data, affine).map_err(|source| NiftiError::Geometry {
        path: path.to_owned(),
        source,
    })
}

/// Writes a volume as NIfTI-1 (gzip when the name ends in `.gz`) with sform and qform both
/// set to the RAS affine (code 1, scanner), as dcm2niix does.
pub fn write(path: &Path, volume: &Volume, datatype: DataType) -> Result<(), NiftiError> {
    let mut header = NiftiHeader::default();
    let ras = volume.affine().to_ras();
    let spacing = volume.spacing();
    for (a, s) in spacing.iter().enumerate() {
        header.pixdim[a + 1] = *s as f32;
    }
    header.xyzt_units = 2; // millimetres
    header.set_sform(&ras, XForm::ScannerAnat);
    header.set_qform(&ras, XForm::ScannerAnat);
    header.descrip = b"fcdnode".to_vec();
    let options = WriterOptions::new(path).reference_header(&header);
    let data = volume.data();
    let result = match datatype {
        DataType::U8 => options.write_nifti(&data.mapv(|v| v.round().clamp(0.0, 255.0) as u8)),
        DataType::I16 => options.write_nifti(&data.mapv(|v| v.round().clamp(-32768.0, 32767.0) as i16)),
        DataType::U16 => options.write_nifti(&data.mapv(|v| v.round().clamp(0.0, 65535.0) as u16)),
        DataType::F32 => options.write_nifti(data),
        DataType::F64 => options.write_nifti(&data.mapv(f64::from)),
    };
    result.map_err(|source| NiftiError::Write {
        path: path.to_owned(),
        source,
    })
}

fn bad(path: &Path, field: &'static str, rule: String) -> NiftiError {
    NiftiError::BadHeader {
        path: path.to_owned(),
        field,
        rule,
    }
}

/// Checks dimensions and datatype before anything is allocated; returns the 3D shape.
fn check_header(path: &Path, h: &NiftiHeader) -> Result<[usize; 3], NiftiError> {
    let ndim = h.dim[0];
    if !(1..=7).contains(&ndim) {
        return Err(bad(path, "dim[0]", format!("must be 1..7, found {ndim}")));
    }
    for axis in 1..=ndim as usize {
        if h.dim[axis] == 0 {
            return Err(bad(
                path,
                "dim",
                format!("dim[{axis}] is 0: every used dimension must be ≥ 1"),
            ));
        }
    }
    for axis in 4..=ndim as usize {
        if h.dim[axis] != 1 {
            return Err(bad(
                path,
                "dim",
                format!(
                    "dim[{axis}] = {}: only 3D volumes (or 4D with one volume) are supported",
                    h.dim[axis]
                ),
            ));
        }
    }
    let shape = std::array::from_fn(|a| if a < ndim as usize { h.dim[a + 1] as usize } else { 1 });
    let voxels: u64 = shape.iter().map(|&d| d as u64).product();
    if voxels > MAX_VOXELS {
        return Err(bad(
            path,
            "dim",
            format!("{voxels} voxels exceed the limit of {MAX_VOXELS}"),
        ));
    }
    match h.data_type() {
        Ok(
            NiftiType::Uint8
            | NiftiType::Int8
            | NiftiType::Uint16
            | NiftiType::Int16
            | NiftiType::Uint32
            | NiftiType::Int32
            | NiftiType::Float32
            | NiftiType::Float64,
        ) => {}
        _ => {
            return Err(bad(
                path,
                "datatype",
                format!("code {} is not a supported scalar type", h.datatype),
            ));
        }
    }
    if !h.scl_slope.is_finite() || !h.scl_inter.is_finite() {
        return Err(bad(path, "scl_slope", "scl_slope and scl_inter must be finite".into()));
    }
    Ok(shape)
}

/// Voxel → LPS affine from the header: sform when `sform_code > 0`, else qform when
/// `qform_code > 0`, else pixdim scaling (NIfTI-1 "method 1").
fn header_affine(path: &Path, h: &NiftiHeader) -> Result<Affine, NiftiError> {
    let geometry = |source| NiftiError::Geometry {
        path: path.to_owned(),
        source,
    };
    let ras: Matrix4<f64> = if h.sform_code > 0 {
        let rows = [h.srow_x, h.srow_y, h.srow_z];
        if rows.iter().flatten().any(|v| !v.is_finite()) {
            return Err(bad(path, "srow_x/srow_y/srow_z", "sform rows must be finite".into()));
        }
        let mut m = Matrix4::identity();
        for (r, row) in rows.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                m[(r, c)] = f64::from(*v);
            }
        }
        m
    } else if h.qform_code > 0 {
        qform_affine(path, h)?
    } else {
        let s = pixdims(path, h)?;
        Matrix4::from_diagonal(&nalgebra::Vector4::new(s[0], s[1], s[2], 1.0))
    };
    Affine::from_ras(ras).map_err(geometry)
}

fn pixdims(path: &Path, h: &NiftiHeader) -> Result<[f64; 3], NiftiError> {
    let s: [f64; 3] = std::array::from_fn(|a| f64::from(h.pixdim[a + 1]));
    if s.iter().any(|v| !v.is_finite() || *v <= 0.0) {
        return Err(bad(
            path,
            "pixdim",
            format!("voxel sizes pixdim[1..3] must be finite and > 0, found {s:?}"),
        ));
    }
    Ok(s)
}

/// NIfTI-1 "method 2": rotation from the quaternion (b, c, d), qfac from pixdim[0].
fn qform_affine(path: &Path, h: &NiftiHeader) -> Result<Matrix4<f64>, NiftiError> {
    let s = pixdims(path, h)?;
    let (b, c, d) = (f64::from(h.quatern_b), f64::from(h.quatern_c), f64::from(h.quatern_d));
    let offsets = [h.quatern_x, h.quatern_y, h.quatern_z];
    if ![b, c, d].iter().all(|v| v.is_finite()) || offsets.iter().any(|v| !v.is_finite()) {
        return Err(bad(
            path,
            "quatern_b/c/d/x/y/z",
            "quaternion parameters must be finite".into(),
        ));
    }
    let norm2 = b * b + c * c + d * d;
    if norm2 > 1.0 + 1e-6 {
        return Err(bad(path, "quatern_b/c/d", format!("b² + c² + d² = {norm2} exceeds 1")));
    }
    let a = (1.0 - norm2).max(0.0).sqrt();
    let rotation: Matrix3<f64> = UnitQuaternion::from_quaternion(Quaternion::new(a, b, c, d))
        .to_rotation_matrix()
        .into_inner();
    // qfac: −1 flips the third axis; any other value is treated as 1 (NIfTI-1 rule).
    let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
    let scale = Matrix3::from_diagonal(&nalgebra::Vector3::new(s[0], s[1], s[2] * qfac));
    let m3 = rotation * scale;
    let mut m = Matrix4::identity();
    m.fixed_view_mut::<3, 3>(0, 0).copy_from(&m3);
    for (r, o) in offsets.iter().enumerate() {
        m[(r, 3)] = f64::from(*o);
    }
    Ok(m)
}

#[cfg(test)]
mod tests;
