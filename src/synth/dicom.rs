//! `Volume` → one DICOM MR series on disk; owns slice geometry (LPS mm), instance order, the
//! Enhanced MR layout and transfer-syntax encoding.
//!
//! Single-frame output is MR Image Storage, one `IM_NNNN.dcm` per slice; enhanced output is one
//! Enhanced MR Image Storage instance with a frame per slice. Files are a pure function of the
//! volume, [`SeriesInfo`] and [`DicomOptions`] (no clock, seeded UIDs), so the same inputs give
//! byte-identical files and the tests can compare them with dcm2niix.

use std::path::{Path, PathBuf};

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{FileDicomObject, InMemDicomObject};
use dicom_pixeldata::Transcode;
use dicom_transfer_syntax_registry::entries::JPEG_LS_LOSSLESS_IMAGE_COMPRESSION;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::SliceOrder;
use crate::dicom_build::{
    IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, ds, ds_multi, put_fd, put_fds, put_seq, put_str, put_tag,
    put_u16, put_u16s, put_u32s, truncate,
};
use crate::volume::Volume;

const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const DEFLATED_LE: &str = "1.2.840.10008.1.2.1.99";
const JPEG_LS_LOSSLESS: &str = "1.2.840.10008.1.2.4.80";

/// Transfer syntaxes the writer encodes losslessly, as (UID, name). RLE and JPEG 2000 are
/// absent because dicom-rs 0.10 has no encoder for them.
const SUPPORTED: [(&str, &str); 4] = [
    (EXPLICIT_LE, "Explicit VR Little Endian"),
    (IMPLICIT_LE, "Implicit VR Little Endian"),
    (DEFLATED_LE, "Deflated Explicit VR Little Endian"),
    (JPEG_LS_LOSSLESS, "JPEG-LS Lossless Image Compression"),
];

/// Tolerance on direction cosines when checking that the affine describes image planes.
const ORTHO_TOL: f64 = 1e-6;

/// Why a series could not be written; every variant names the series and the rule or file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DicomWriteError {
    /// The requested transfer syntax is not one we can encode losslessly.
    #[error("series {series_uid}: cannot write transfer syntax {uid:?}; supported: {supported}")]
    UnsupportedTransferSyntax {
        series_uid: String,
        uid: String,
        supported: String,
    },
    /// The voxel axes cannot be DICOM image planes stacked along their normal.
    #[error("series {series_uid}: the volume cannot be written as image planes: {rule}")]
    NotImagePlanes { series_uid: String, rule: String },
    /// A voxel value does not fit 16-bit unsigned storage without rescaling.
    #[error(
        "series {series_uid}: voxel {index:?} = {value} is not an integer in 0..=65535 \
         (pixels are stored as 16-bit unsigned, slope 1, intercept 0)"
    )]
    VoxelValue {
        series_uid: String,
        index: [usize; 3],
        value: f32,
    },
    /// The grid is larger than DICOM Rows/Columns (16-bit) allow.
    #[error("series {series_uid}: shape {shape:?} exceeds 65535 rows or columns")]
    TooLarge { series_uid: String, shape: [usize; 3] },
    /// A `SeriesInfo` field breaks a DICOM value rule.
    #[error("series {series_uid}: SeriesInfo field `{field}` = {value:?} is invalid: {rule}")]
    BadInfo {
        series_uid: String,
        field: &'static str,
        value: String,
        rule: &'static str,
    },
    /// Creating the directory or writing a file failed.
    #[error("{path}: cannot write DICOM file: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file meta group could not be built.
    #[error("{path}: cannot build the DICOM file meta group: {source}")]
    Meta {
        path: PathBuf,
        #[source]
        source: Box<dicom_object::meta::Error>,
    },
    /// Pixel data could not be compressed to the requested transfer syntax.
    #[error("{path}: cannot encode pixel data as {uid}: {source}")]
    Transcode {
        path: PathBuf,
        uid: String,
        #[source]
        source: Box<dicom_pixeldata::TranscodeError>,
    },
    /// The data set could not be serialised.
    #[error("{path}: cannot encode the DICOM data set: {source}")]
    Encode {
        path: PathBuf,
        #[source]
        source: Box<dicom_object::WriteError>,
    },
}

/// Patient/study/series identity and MR parameters written into every instance, so a
/// synthetic series looks (and routes) like a scanner's 3D T1w or FLAIR.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesInfo {
    /// Patient ID (0010,0020).
    pub patient_id: String,
    /// Patient's Name (0010,0010), DICOM PN form `Family^Given`.
    pub patient_name: String,
    /// Patient's Birth Date (0010,0030), `YYYYMMDD` or empty.
    pub patient_birth_date: String,
    /// Patient's Sex (0010,0040): `M`, `F`, `O` or empty.
    pub patient_sex: String,
    /// Patient's Age (0010,1010), e.g. `034Y`, or empty.
    pub patient_age: String,
    /// Study Instance UID.
    pub study_instance_uid: String,
    /// Study Date `YYYYMMDD`; also used as series, acquisition and content date.
    pub study_date: String,
    /// Study Time `HHMMSS`; also used as series, acquisition and content time.
    pub study_time: String,
    /// Study ID (at most 16 characters).
    pub study_id: String,
    /// Accession Number (at most 16 characters).
    pub accession_number: String,
    /// Study Description.
    pub study_description: String,
    /// Series Instance UID.
    pub series_instance_uid: String,
    /// Series Number.
    pub series_number: u32,
    /// Series Description, e.g. `T1w MPRAGE` (routing rules read it).
    pub series_description: String,
    /// Protocol Name.
    pub protocol_name: String,
    /// Frame of Reference UID shared by all series of one session.
    pub frame_of_reference_uid: String,
    /// Manufacturer.
    pub manufacturer: String,
    /// Manufacturer's Model Name.
    pub model_name: String,
    /// Device Serial Number.
    pub device_serial_number: String,
    /// Software Versions.
    pub software_versions: String,
    /// Magnetic Field Strength in tesla.
    pub magnetic_field_strength: f64,
    /// Scanning Sequence, backslash-separated: `GR\IR` (MPRAGE) or `SE\IR` (FLAIR).
    pub scanning_sequence: String,
    /// Sequence Variant, e.g. `SK\SP\MP`.
    pub sequence_variant: String,
    /// Scan Options, e.g. `IR`.
    pub scan_options: String,
    /// MR Acquisition Type: `2D` or `3D`.
    pub mr_acquisition_type: String,
    /// Sequence Name, e.g. `*tfl3d1`.
    pub sequence_name: String,
    /// Repetition Time in ms.
    pub repetition_time: f64,
    /// Echo Time in ms.
    pub echo_time: f64,
    /// Inversion Time in ms, for inversion-recovery sequences.
    pub inversion_time: Option<f64>,
    /// Flip Angle in degrees.
    pub flip_angle: f64,
    /// Echo Train Length.
    pub echo_train_length: u32,
    /// Enhanced MR Acquisition Contrast: `T1`, `FLUID_ATTENUATED`, `T2`, …
    pub acquisition_contrast: String,
}

impl SeriesInfo {
    /// A 3D T1w MPRAGE series whose UIDs come from `seed` (same seed → same UIDs).
    pub fn new(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Self {
            patient_id: "SYNTH0001".into(),
            patient_name: "Synthetic^Phantom".into(),
            patient_birth_date: String::new(),
            patient_sex: "O".into(),
            patient_age: "030Y".into(),
            study_instance_uid: new_uid(&mut rng),
            study_date: "20240101".into(),
            study_time: "120000".into(),
            study_id: "1".into(),
            accession_number: "SYNTH0001".into(),
            study_description: "fcdnode synthetic study".into(),
            series_instance_uid: new_uid(&mut rng),
            series_number: 1,
            series_description: "T1w MPRAGE".into(),
            protocol_name: "t1_mprage_sag".into(),
            frame_of_reference_uid: new_uid(&mut rng),
            manufacturer: "fcdnode".into(),
            model_name: "synthetic".into(),
            device_serial_number: "0".into(),
            software_versions: env!("CARGO_PKG_VERSION").into(),
            magnetic_field_strength: 3.0,
            scanning_sequence: "GR\\IR".into(),
            sequence_variant: "SK\\SP\\MP".into(),
            scan_options: String::new(),
            mr_acquisition_type: "3D".into(),
            sequence_name: "*tfl3d1".into(),
            repetition_time: 2300.0,
            echo_time: 2.98,
            inversion_time: Some(900.0),
            flip_angle: 9.0,
            echo_train_length: 1,
            acquisition_contrast: "T1".into(),
        }
    }
}

impl Default for SeriesInfo {
    /// [`SeriesInfo::new`] with seed 0.
    fn default() -> Self {
        Self::new(0)
    }
}

/// How the series is laid out on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DicomOptions {
    /// Instance Number order (single-frame) or frame order (enhanced) relative to slice index.
    pub order: SliceOrder,
    /// One Enhanced MR multi-frame instance instead of one MR instance per slice.
    pub enhanced: bool,
    /// Transfer Syntax UID; one of [`supported_transfer_syntaxes`].
    pub transfer_syntax: String,
    /// Seed for the shuffled order and the SOP Instance UIDs.
    pub seed: u64,
}

impl Default for DicomOptions {
    /// Ascending single-frame explicit VR little endian, seed 0.
    fn default() -> Self {
        Self {
            order: SliceOrder::Asc,
            enhanced: false,
            transfer_syntax: EXPLICIT_LE.into(),
            seed: 0,
        }
    }
}

/// Transfer syntaxes [`write_series`] can encode losslessly, as (UID, name).
pub fn supported_transfer_syntaxes() -> &'static [(&'static str, &'static str)] {
    &SUPPORTED
}

/// A UUID-derived UID `2.25.<decimal u128>` drawn from `rng`, so a seeded rng gives
/// reproducible UIDs (and byte-identical files).
pub fn new_uid<R: Rng + ?Sized>(rng: &mut R) -> String {
    format!("2.25.{}", rng.random::<u128>())
}

/// Writes `volume` (voxel index → LPS mm affine) as one series in `dir` and returns the files in
/// Instance Number order. Slice k holds voxels `[.., .., k]`; pixel (row r, column c) is
/// voxel `[c, r, k]`, so i runs along a row and j down a column.
pub fn write_series(
    volume: &Volume,
    info: &SeriesInfo,
    options: &DicomOptions,
    dir: &Path,
) -> Result<Vec<PathBuf>, DicomWriteError> {
    let series_uid = info.series_instance_uid.clone();
    if !SUPPORTED.iter().any(|(uid, _)| *uid == options.transfer_syntax) {
        return Err(DicomWriteError::UnsupportedTransferSyntax {
            series_uid,
            uid: options.transfer_syntax.clone(),
            supported: SUPPORTED
                .iter()
                .map(|(uid, name)| format!("{uid} ({name})"))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    check_info(info)?;
    let geometry = Geometry::new(volume, &series_uid)?;
    let pixels = pixel_frames(volume, &series_uid)?;
    std::fs::create_dir_all(dir).map_err(|source| DicomWriteError::Io {
        path: dir.to_owned(),
        source,
    })?;

    let n_k = geometry.shape[2];
    // slice_at[p] = slice index shown at position p of the order (instance number p + 1).
    let mut slice_at: Vec<usize> = (0..n_k).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed ^ fnv1a(series_uid.as_bytes()));
    match options.order {
        SliceOrder::Asc => {}
        SliceOrder::Desc => slice_at.reverse(),
        SliceOrder::Shuffled => slice_at.shuffle(&mut rng),
    }
    let window = window(volume);
    let context = Context {
        info,
        geometry: &geometry,
        window,
    };

    let files = if options.enhanced {
        let path = dir.join("IM_0001.dcm");
        let sop_uid = new_uid(&mut rng);
        let obj = context.enhanced_instance(&sop_uid, &slice_at, &pixels);
        write_file(obj, uids::ENHANCED_MR_IMAGE_STORAGE, &sop_uid, options, &path)?;
        vec![path]
    } else {
        let base = context.single_frame_base();
        let mut files = Vec::with_capacity(n_k);
        for (position, &k) in slice_at.iter().enumerate() {
            let instance = position + 1;
            let path = dir.join(format!("IM_{instance:04}.dcm"));
            let sop_uid = new_uid(&mut rng);
            let obj = context.single_frame_instance(base.clone(), &sop_uid, instance, k, &pixels[k]);
            write_file(obj, uids::MR_IMAGE_STORAGE, &sop_uid, options, &path)?;
            files.push(path);
        }
        files
    };
    tracing::debug!(
        series_uid = %series_uid,
        files = files.len(),
        enhanced = options.enhanced,
        transfer_syntax = %options.transfer_syntax,
        "wrote DICOM series"
    );
    Ok(files)
}

/// Image-plane geometry read from the affine (LPS mm).
struct Geometry {
    shape: [usize; 3],
    /// Unit LPS directions of i (along a row) and j (down a column).
    row_dir: [f64; 3],
    col_dir: [f64; 3],
    /// Unit normal row × col.
    normal: [f64; 3],
    spacing: [f64; 3],
    /// LPS mm position of voxel (0, 0, k) for every k.
    positions: Vec<[f64; 3]>,
}

impl Geometry {
    fn new(volume: &Volume, series_uid: &str) -> Result<Self, DicomWriteError> {
        let shape = volume.shape();
        if shape[0] > usize::from(u16::MAX) || shape[1] > usize::from(u16::MAX) {
            return Err(DicomWriteError::TooLarge {
                series_uid: series_uid.to_owned(),
                shape,
            });
        }
        let affine = volume.affine();
        let [row_dir, col_dir, k_dir] = affine.directions();
        let not_planes = |rule: String| DicomWriteError::NotImagePlanes {
            series_uid: series_uid.to_owned(),
            rule,
        };
        let ij = dot(row_dir, col_dir);
        if ij.abs() > ORTHO_TOL {
            return Err(not_planes(format!(
                "axes i and j must be orthogonal (row and column directions), but their cosine is {ij:.6}"
            )));
        }
        let normal = cross(row_dir, col_dir);
        let along = dot(normal, k_dir);
        if (along.abs() - 1.0).abs() > ORTHO_TOL {
            return Err(not_planes(format!(
                "axis k must be along the slice normal (i × j), but the cosine between them is {along:.6} \
                 (a sheared or tilted stack)"
            )));
        }
        let positions = (0..shape[2]).map(|k| affine.apply([0.0, 0.0, k as f64])).collect();
        Ok(Self {
            shape,
            row_dir,
            col_dir,
            normal,
            spacing: affine.spacing(),
            positions,
        })
    }

    /// Slice Location: the position of slice k projected on the normal, in mm.
    fn slice_location(&self, k: usize) -> f64 {
        dot(self.positions[k], self.normal)
    }

    /// Image Orientation (Patient): row then column direction cosines.
    fn orientation_ds(&self) -> String {
        ds_multi(&[
            self.row_dir[0],
            self.row_dir[1],
            self.row_dir[2],
            self.col_dir[0],
            self.col_dir[1],
            self.col_dir[2],
        ])
    }

    /// Pixel Spacing: row spacing (between rows, along j) then column spacing (along i).
    fn pixel_spacing_ds(&self) -> String {
        ds_multi(&[self.spacing[1], self.spacing[0]])
    }
}

/// Checks the voxel values and returns each slice as row-major 16-bit pixels.
fn pixel_frames(volume: &Volume, series_uid: &str) -> Result<Vec<Vec<u16>>, DicomWriteError> {
    let data = volume.data();
    let [n_i, n_j, n_k] = volume.shape();
    let mut frames = Vec::with_capacity(n_k);
    for k in 0..n_k {
        let mut frame = Vec::with_capacity(n_i * n_j);
        for r in 0..n_j {
            for c in 0..n_i {
                let value = data[[c, r, k]];
                if !(value.fract() == 0.0 && (0.0..=65535.0).contains(&value)) {
                    return Err(DicomWriteError::VoxelValue {
                        series_uid: series_uid.to_owned(),
                        index: [c, r, k],
                        value,
                    });
                }
                frame.push(value as u16);
            }
        }
        frames.push(frame);
    }
    Ok(frames)
}

/// Window Center and Width covering the full intensity range.
fn window(volume: &Volume) -> (f64, f64) {
    let (lo, hi) = volume
        .data()
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let (lo, hi) = (f64::from(lo), f64::from(hi));
    ((lo + hi) / 2.0, (hi - lo).max(1.0))
}

fn check_info(info: &SeriesInfo) -> Result<(), DicomWriteError> {
    let bad = |field: &'static str, value: &str, rule: &'static str| DicomWriteError::BadInfo {
        series_uid: info.series_instance_uid.clone(),
        field,
        value: value.to_owned(),
        rule,
    };
    for (field, uid) in [
        ("study_instance_uid", &info.study_instance_uid),
        ("series_instance_uid", &info.series_instance_uid),
        ("frame_of_reference_uid", &info.frame_of_reference_uid),
    ] {
        let components_ok = uid
            .split('.')
            .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) && (c == "0" || !c.starts_with('0')));
        if uid.len() > 64 || !components_ok {
            return Err(bad(
                field,
                uid,
                "a UID is at most 64 characters of dot-separated decimal numbers without leading zeros",
            ));
        }
    }
    for (field, value, len) in [
        ("study_id", &info.study_id, 16),
        ("accession_number", &info.accession_number, 16),
        ("patient_id", &info.patient_id, 64),
        ("study_date", &info.study_date, 8),
    ] {
        if value.chars().count() > len {
            return Err(bad(field, value, "longer than its DICOM value representation allows"));
        }
    }
    let date_ok = info.study_date.len() == 8 && info.study_date.bytes().all(|b| b.is_ascii_digit());
    if !date_ok {
        return Err(bad("study_date", &info.study_date, "must be YYYYMMDD"));
    }
    let time_ok = info.study_time.len() >= 2
        && info.study_time.len() <= 14
        && info.study_time.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if !time_ok {
        return Err(bad("study_time", &info.study_time, "must be HHMMSS[.FFFFFF]"));
    }
    Ok(())
}

/// Everything one instance is built from.
struct Context<'a> {
    info: &'a SeriesInfo,
    geometry: &'a Geometry,
    window: (f64, f64),
}

impl Context<'_> {
    /// Modules shared by single-frame and enhanced instances: SOP Common (less the UIDs),
    /// Patient, General Study, Patient Study, General Series, Frame of Reference, General
    /// Equipment, Image Pixel (less the data).
    fn common(&self, obj: &mut InMemDicomObject) {
        let info = self.info;
        let g = self.geometry;
        put_str(obj, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
        put_str(obj, tags::INSTANCE_CREATION_DATE, VR::DA, &info.study_date);
        put_str(obj, tags::INSTANCE_CREATION_TIME, VR::TM, &info.study_time);
        put_str(obj, tags::STUDY_DATE, VR::DA, &info.study_date);
        put_str(obj, tags::SERIES_DATE, VR::DA, &info.study_date);
        put_str(obj, tags::CONTENT_DATE, VR::DA, &info.study_date);
        put_str(obj, tags::STUDY_TIME, VR::TM, &info.study_time);
        put_str(obj, tags::SERIES_TIME, VR::TM, &info.study_time);
        put_str(obj, tags::CONTENT_TIME, VR::TM, &info.study_time);
        put_str(obj, tags::ACCESSION_NUMBER, VR::SH, &info.accession_number);
        put_str(obj, tags::MODALITY, VR::CS, "MR");
        put_str(obj, tags::MANUFACTURER, VR::LO, &info.manufacturer);
        put_str(obj, tags::REFERRING_PHYSICIAN_NAME, VR::PN, "");
        put_str(obj, tags::STUDY_DESCRIPTION, VR::LO, &info.study_description);
        put_str(obj, tags::SERIES_DESCRIPTION, VR::LO, &info.series_description);
        put_str(obj, tags::MANUFACTURER_MODEL_NAME, VR::LO, &info.model_name);
        put_str(obj, tags::PATIENT_NAME, VR::PN, &info.patient_name);
        put_str(obj, tags::PATIENT_ID, VR::LO, &info.patient_id);
        put_str(obj, tags::PATIENT_BIRTH_DATE, VR::DA, &info.patient_birth_date);
        put_str(obj, tags::PATIENT_SEX, VR::CS, &info.patient_sex);
        if !info.patient_age.is_empty() {
            put_str(obj, tags::PATIENT_AGE, VR::AS, &info.patient_age);
        }
        put_str(obj, tags::BODY_PART_EXAMINED, VR::CS, "HEAD");
        put_str(obj, tags::DEVICE_SERIAL_NUMBER, VR::LO, &info.device_serial_number);
        put_str(obj, tags::SOFTWARE_VERSIONS, VR::LO, &info.software_versions);
        put_str(obj, tags::PROTOCOL_NAME, VR::LO, &info.protocol_name);
        put_str(obj, tags::PATIENT_POSITION, VR::CS, "HFS");
        put_str(obj, tags::STUDY_INSTANCE_UID, VR::UI, &info.study_instance_uid);
        put_str(obj, tags::SERIES_INSTANCE_UID, VR::UI, &info.series_instance_uid);
        put_str(obj, tags::STUDY_ID, VR::SH, &info.study_id);
        put_str(obj, tags::SERIES_NUMBER, VR::IS, &info.series_number.to_string());
        put_str(obj, tags::ACQUISITION_NUMBER, VR::IS, "1");
        put_str(obj, tags::FRAME_OF_REFERENCE_UID, VR::UI, &info.frame_of_reference_uid);
        put_str(obj, tags::POSITION_REFERENCE_INDICATOR, VR::LO, "");
        put_u16(obj, tags::SAMPLES_PER_PIXEL, 1);
        put_str(obj, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
        put_u16(obj, tags::ROWS, g.shape[1] as u16);
        put_u16(obj, tags::COLUMNS, g.shape[0] as u16);
        put_u16(obj, tags::BITS_ALLOCATED, 16);
        put_u16(obj, tags::BITS_STORED, 16);
        put_u16(obj, tags::HIGH_BIT, 15);
        put_u16(obj, tags::PIXEL_REPRESENTATION, 0);
        put_str(obj, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    }

    /// Attributes every single-frame slice shares (everything but identity, position, pixels).
    fn single_frame_base(&self) -> InMemDicomObject {
        let info = self.info;
        let g = self.geometry;
        let mut obj = InMemDicomObject::new_empty();
        self.common(&mut obj);
        put_str(&mut obj, tags::SOP_CLASS_UID, VR::UI, uids::MR_IMAGE_STORAGE);
        put_str(&mut obj, tags::ACQUISITION_DATE, VR::DA, &info.study_date);
        put_str(&mut obj, tags::ACQUISITION_TIME, VR::TM, &info.study_time);
        put_str(&mut obj, tags::IMAGE_TYPE, VR::CS, "ORIGINAL\\PRIMARY\\M\\ND");
        put_str(&mut obj, tags::SCANNING_SEQUENCE, VR::CS, &info.scanning_sequence);
        put_str(&mut obj, tags::SEQUENCE_VARIANT, VR::CS, &info.sequence_variant);
        put_str(&mut obj, tags::SCAN_OPTIONS, VR::CS, &info.scan_options);
        put_str(&mut obj, tags::MR_ACQUISITION_TYPE, VR::CS, &info.mr_acquisition_type);
        put_str(&mut obj, tags::SEQUENCE_NAME, VR::SH, &info.sequence_name);
        put_str(&mut obj, tags::ANGIO_FLAG, VR::CS, "N");
        put_str(&mut obj, tags::SLICE_THICKNESS, VR::DS, &ds(g.spacing[2]));
        put_str(&mut obj, tags::REPETITION_TIME, VR::DS, &ds(info.repetition_time));
        put_str(&mut obj, tags::ECHO_TIME, VR::DS, &ds(info.echo_time));
        if let Some(ti) = info.inversion_time {
            put_str(&mut obj, tags::INVERSION_TIME, VR::DS, &ds(ti));
        }
        put_str(&mut obj, tags::NUMBER_OF_AVERAGES, VR::DS, "1");
        put_str(&mut obj, tags::IMAGING_FREQUENCY, VR::DS, &ds(larmor_mhz(info)));
        put_str(&mut obj, tags::IMAGED_NUCLEUS, VR::SH, "1H");
        put_str(&mut obj, tags::ECHO_NUMBERS, VR::IS, "1");
        put_str(
            &mut obj,
            tags::MAGNETIC_FIELD_STRENGTH,
            VR::DS,
            &ds(info.magnetic_field_strength),
        );
        put_str(&mut obj, tags::SPACING_BETWEEN_SLICES, VR::DS, &ds(g.spacing[2]));
        put_str(
            &mut obj,
            tags::ECHO_TRAIN_LENGTH,
            VR::IS,
            &info.echo_train_length.to_string(),
        );
        put_str(&mut obj, tags::PIXEL_BANDWIDTH, VR::DS, "200");
        put_u16s(
            &mut obj,
            tags::ACQUISITION_MATRIX,
            &[g.shape[1] as u16, 0, 0, g.shape[0] as u16],
        );
        put_str(&mut obj, tags::IN_PLANE_PHASE_ENCODING_DIRECTION, VR::CS, "ROW");
        put_str(&mut obj, tags::FLIP_ANGLE, VR::DS, &ds(info.flip_angle));
        put_str(&mut obj, tags::IMAGE_ORIENTATION_PATIENT, VR::DS, &g.orientation_ds());
        put_str(&mut obj, tags::PIXEL_SPACING, VR::DS, &g.pixel_spacing_ds());
        put_str(&mut obj, tags::WINDOW_CENTER, VR::DS, &ds(self.window.0));
        put_str(&mut obj, tags::WINDOW_WIDTH, VR::DS, &ds(self.window.1));
        put_str(&mut obj, tags::RESCALE_INTERCEPT, VR::DS, "0");
        put_str(&mut obj, tags::RESCALE_SLOPE, VR::DS, "1");
        put_str(&mut obj, tags::RESCALE_TYPE, VR::LO, "US");
        obj
    }

    /// One MR Image Storage instance: slice `k` (of the volume) as instance `instance`.
    fn single_frame_instance(
        &self,
        mut obj: InMemDicomObject,
        sop_uid: &str,
        instance: usize,
        k: usize,
        pixels: &[u16],
    ) -> InMemDicomObject {
        let g = self.geometry;
        put_str(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, sop_uid);
        put_str(&mut obj, tags::INSTANCE_NUMBER, VR::IS, &instance.to_string());
        put_str(
            &mut obj,
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            &ds_multi(&g.positions[k]),
        );
        put_str(&mut obj, tags::SLICE_LOCATION, VR::DS, &ds(g.slice_location(k)));
        put_pixels(&mut obj, pixels.to_vec());
        obj
    }

    /// One Enhanced MR Image Storage instance; frame f holds slice `slice_at[f]`.
    fn enhanced_instance(&self, sop_uid: &str, slice_at: &[usize], pixels: &[Vec<u16>]) -> InMemDicomObject {
        let info = self.info;
        let g = self.geometry;
        let datetime = format!("{}{}", info.study_date, info.study_time);
        let mut obj = InMemDicomObject::new_empty();
        self.common(&mut obj);
        put_str(&mut obj, tags::SOP_CLASS_UID, VR::UI, uids::ENHANCED_MR_IMAGE_STORAGE);
        put_str(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, sop_uid);
        put_str(&mut obj, tags::INSTANCE_NUMBER, VR::IS, "1");
        put_str(&mut obj, tags::NUMBER_OF_FRAMES, VR::IS, &slice_at.len().to_string());
        // Enhanced MR Image, MR Image and Spectroscopy Instance, Common CT/MR description.
        put_str(&mut obj, tags::IMAGE_TYPE, VR::CS, "ORIGINAL\\PRIMARY\\VOLUME\\NONE");
        put_str(&mut obj, tags::PIXEL_PRESENTATION, VR::CS, "MONOCHROME");
        put_str(&mut obj, tags::VOLUMETRIC_PROPERTIES, VR::CS, "VOLUME");
        put_str(&mut obj, tags::VOLUME_BASED_CALCULATION_TECHNIQUE, VR::CS, "NONE");
        put_str(&mut obj, tags::COMPLEX_IMAGE_COMPONENT, VR::CS, "MAGNITUDE");
        put_str(&mut obj, tags::ACQUISITION_CONTRAST, VR::CS, &info.acquisition_contrast);
        put_str(&mut obj, tags::ACQUISITION_DATE_TIME, VR::DT, &datetime);
        put_fd(&mut obj, tags::ACQUISITION_DURATION, 300.0);
        put_str(&mut obj, tags::CONTENT_QUALIFICATION, VR::CS, "PRODUCT");
        put_str(&mut obj, tags::RESONANT_NUCLEUS, VR::CS, "1H");
        put_str(&mut obj, tags::K_SPACE_FILTERING, VR::CS, "NONE");
        put_str(
            &mut obj,
            tags::MAGNETIC_FIELD_STRENGTH,
            VR::DS,
            &ds(info.magnetic_field_strength),
        );
        put_str(&mut obj, tags::APPLICABLE_SAFETY_STANDARD_AGENCY, VR::CS, "IEC");
        put_str(&mut obj, tags::IMAGE_COMMENTS, VR::LT, "synthetic phantom");
        put_str(&mut obj, tags::BURNED_IN_ANNOTATION, VR::CS, "NO");
        put_str(&mut obj, tags::PRESENTATION_LUT_SHAPE, VR::CS, "IDENTITY");
        // MR Pulse Sequence module (required for ORIGINAL images).
        let gradient = info.scanning_sequence.contains("GR");
        let spin = info.scanning_sequence.contains("SE");
        let echo_pulse = match (gradient, spin) {
            (true, true) => "BOTH",
            (false, true) => "SPIN",
            _ => "GRADIENT",
        };
        put_str(
            &mut obj,
            tags::PULSE_SEQUENCE_NAME,
            VR::SH,
            &truncate(&info.sequence_name, 16),
        );
        put_str(&mut obj, tags::MR_ACQUISITION_TYPE, VR::CS, &info.mr_acquisition_type);
        put_str(&mut obj, tags::ECHO_PULSE_SEQUENCE, VR::CS, echo_pulse);
        if echo_pulse != "GRADIENT" {
            put_str(&mut obj, tags::MULTIPLE_SPIN_ECHO, VR::CS, "NO");
        }
        put_str(&mut obj, tags::MULTI_PLANAR_EXCITATION, VR::CS, "NO");
        put_str(&mut obj, tags::PHASE_CONTRAST, VR::CS, "NO");
        put_str(&mut obj, tags::TIME_OF_FLIGHT_CONTRAST, VR::CS, "NO");
        put_str(&mut obj, tags::STEADY_STATE_PULSE_SEQUENCE, VR::CS, "NONE");
        put_str(&mut obj, tags::ECHO_PLANAR_PULSE_SEQUENCE, VR::CS, "NO");
        put_str(&mut obj, tags::SATURATION_RECOVERY, VR::CS, "NO");
        put_str(&mut obj, tags::SPECTRALLY_SELECTED_SUPPRESSION, VR::CS, "NONE");
        put_str(&mut obj, tags::OVERSAMPLING_PHASE, VR::CS, "NONE");
        put_str(&mut obj, tags::GEOMETRY_OF_K_SPACE_TRAVERSAL, VR::CS, "RECTILINEAR");
        put_str(&mut obj, tags::RECTILINEAR_PHASE_ENCODE_REORDERING, VR::CS, "LINEAR");
        put_str(&mut obj, tags::SEGMENTED_K_SPACE_TRAVERSAL, VR::CS, "SINGLE");
        put_str(&mut obj, tags::COVERAGE_OF_K_SPACE, VR::CS, "FULL");
        put_u16(&mut obj, tags::NUMBER_OF_K_SPACE_TRAJECTORIES, 1);
        // Acquisition Context module: present, empty.
        put_seq(&mut obj, tags::ACQUISITION_CONTEXT_SEQUENCE, Vec::new());
        // Multi-frame Dimension module: stack, then position in the stack.
        let dim_org_uid = format!("{}.1", info.series_instance_uid);
        let dim_org_uid = if dim_org_uid.len() <= 64 {
            dim_org_uid
        } else {
            info.frame_of_reference_uid.clone()
        };
        let mut org = InMemDicomObject::new_empty();
        put_str(&mut org, tags::DIMENSION_ORGANIZATION_UID, VR::UI, &dim_org_uid);
        put_seq(&mut obj, tags::DIMENSION_ORGANIZATION_SEQUENCE, vec![org]);
        put_str(&mut obj, tags::DIMENSION_ORGANIZATION_TYPE, VR::CS, "3D");
        let dims = [
            (tags::STACK_ID, "Stack ID"),
            (tags::IN_STACK_POSITION_NUMBER, "In-Stack Position Number"),
        ]
        .into_iter()
        .map(|(pointer, label)| {
            let mut item = InMemDicomObject::new_empty();
            put_str(&mut item, tags::DIMENSION_ORGANIZATION_UID, VR::UI, &dim_org_uid);
            put_tag(&mut item, tags::DIMENSION_INDEX_POINTER, pointer);
            put_tag(&mut item, tags::FUNCTIONAL_GROUP_POINTER, tags::FRAME_CONTENT_SEQUENCE);
            put_str(&mut item, tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, label);
            item
        })
        .collect();
        put_seq(&mut obj, tags::DIMENSION_INDEX_SEQUENCE, dims);
        put_seq(
            &mut obj,
            tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
            vec![self.shared_groups()],
        );
        let per_frame = slice_at
            .iter()
            .map(|&k| {
                let mut item = InMemDicomObject::new_empty();
                let mut position = InMemDicomObject::new_empty();
                put_str(
                    &mut position,
                    tags::IMAGE_POSITION_PATIENT,
                    VR::DS,
                    &ds_multi(&g.positions[k]),
                );
                put_seq(&mut item, tags::PLANE_POSITION_SEQUENCE, vec![position]);
                let mut content = InMemDicomObject::new_empty();
                put_str(&mut content, tags::FRAME_ACQUISITION_DATE_TIME, VR::DT, &datetime);
                put_str(&mut content, tags::FRAME_REFERENCE_DATE_TIME, VR::DT, &datetime);
                put_fd(&mut content, tags::FRAME_ACQUISITION_DURATION, 300.0);
                put_str(&mut content, tags::STACK_ID, VR::SH, "1");
                put_u32s(&mut content, tags::IN_STACK_POSITION_NUMBER, &[k as u32 + 1]);
                put_u32s(&mut content, tags::DIMENSION_INDEX_VALUES, &[1, k as u32 + 1]);
                put_seq(&mut item, tags::FRAME_CONTENT_SEQUENCE, vec![content]);
                item
            })
            .collect();
        put_seq(&mut obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame);
        let all: Vec<u16> = slice_at.iter().flat_map(|&k| pixels[k].iter().copied()).collect();
        put_pixels(&mut obj, all);
        obj
    }

    /// The functional groups every frame shares: pixel measures, orientation, value
    /// transformation, window, frame type and the MR acquisition macros.
    fn shared_groups(&self) -> InMemDicomObject {
        let info = self.info;
        let g = self.geometry;
        let mut shared = InMemDicomObject::new_empty();
        let item = |f: &dyn Fn(&mut InMemDicomObject)| {
            let mut o = InMemDicomObject::new_empty();
            f(&mut o);
            vec![o]
        };
        put_seq(
            &mut shared,
            tags::PIXEL_MEASURES_SEQUENCE,
            item(&|o| {
                put_str(o, tags::PIXEL_SPACING, VR::DS, &g.pixel_spacing_ds());
                put_str(o, tags::SLICE_THICKNESS, VR::DS, &ds(g.spacing[2]));
                put_str(o, tags::SPACING_BETWEEN_SLICES, VR::DS, &ds(g.spacing[2]));
            }),
        );
        put_seq(
            &mut shared,
            tags::PLANE_ORIENTATION_SEQUENCE,
            item(&|o| put_str(o, tags::IMAGE_ORIENTATION_PATIENT, VR::DS, &g.orientation_ds())),
        );
        put_seq(
            &mut shared,
            tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
            item(&|o| {
                put_str(o, tags::RESCALE_INTERCEPT, VR::DS, "0");
                put_str(o, tags::RESCALE_SLOPE, VR::DS, "1");
                put_str(o, tags::RESCALE_TYPE, VR::LO, "US");
            }),
        );
        put_seq(
            &mut shared,
            tags::FRAME_VOILUT_SEQUENCE,
            item(&|o| {
                put_str(o, tags::WINDOW_CENTER, VR::DS, &ds(self.window.0));
                put_str(o, tags::WINDOW_WIDTH, VR::DS, &ds(self.window.1));
            }),
        );
        put_seq(
            &mut shared,
            tags::FRAME_ANATOMY_SEQUENCE,
            item(&|o| {
                let mut code = InMemDicomObject::new_empty();
                put_str(&mut code, tags::CODE_VALUE, VR::SH, "12738006");
                put_str(&mut code, tags::CODING_SCHEME_DESIGNATOR, VR::SH, "SCT");
                put_str(&mut code, tags::CODE_MEANING, VR::LO, "Brain");
                put_seq(o, tags::ANATOMIC_REGION_SEQUENCE, vec![code]);
                put_str(o, tags::FRAME_LATERALITY, VR::CS, "B");
            }),
        );
        put_seq(
            &mut shared,
            tags::MR_IMAGE_FRAME_TYPE_SEQUENCE,
            item(&|o| {
                put_str(o, tags::FRAME_TYPE, VR::CS, "ORIGINAL\\PRIMARY\\VOLUME\\NONE");
                put_str(o, tags::PIXEL_PRESENTATION, VR::CS, "MONOCHROME");
                put_str(o, tags::VOLUMETRIC_PROPERTIES, VR::CS, "VOLUME");
                put_str(o, tags::VOLUME_BASED_CALCULATION_TECHNIQUE, VR::CS, "NONE");
                put_str(o, tags::COMPLEX_IMAGE_COMPONENT, VR::CS, "MAGNITUDE");
                put_str(o, tags::ACQUISITION_CONTRAST, VR::CS, &info.acquisition_contrast);
            }),
        );
        put_seq(
            &mut shared,
            tags::MR_TIMING_AND_RELATED_PARAMETERS_SEQUENCE,
            item(&|o| {
                put_str(o, tags::REPETITION_TIME, VR::DS, &ds(info.repetition_time));
                put_str(o, tags::FLIP_ANGLE, VR::DS, &ds(info.flip_angle));
                put_str(o, tags::ECHO_TRAIN_LENGTH, VR::IS, &info.echo_train_length.to_string());
                put_u16(o, tags::RF_ECHO_TRAIN_LENGTH, 0);
                put_u16(
                    o,
                    tags::GRADIENT_ECHO_TRAIN_LENGTH,
                    info.echo_train_length.min(65535) as u16,
                );
                let mut sar = InMemDicomObject::new_empty();
                put_str(
                    &mut sar,
                    tags::SPECIFIC_ABSORPTION_RATE_DEFINITION,
                    VR::CS,
                    "IEC_WHOLE_BODY",
                );
                put_fd(&mut sar, tags::SPECIFIC_ABSORPTION_RATE_VALUE, 0.5);
                put_seq(o, tags::SPECIFIC_ABSORPTION_RATE_SEQUENCE, vec![sar]);
                put_str(o, tags::GRADIENT_OUTPUT_TYPE, VR::CS, "DB_DT");
                put_fd(o, tags::GRADIENT_OUTPUT, 20.0);
                let modes = ["STATIC FIELD", "RF", "GRADIENT"]
                    .into_iter()
                    .map(|kind| {
                        let mut mode = InMemDicomObject::new_empty();
                        put_str(&mut mode, tags::OPERATING_MODE_TYPE, VR::CS, kind);
                        put_str(&mut mode, tags::OPERATING_MODE, VR::CS, "IEC_NORMAL");
                        mode
                    })
                    .collect();
                put_seq(o, tags::OPERATING_MODE_SEQUENCE, modes);
            }),
        );
        put_seq(
            &mut shared,
            tags::MRFOV_GEOMETRY_SEQUENCE,
            item(&|o| {
                put_str(o, tags::IN_PLANE_PHASE_ENCODING_DIRECTION, VR::CS, "ROW");
                put_u16(o, tags::MR_ACQUISITION_FREQUENCY_ENCODING_STEPS, g.shape[1] as u16);
                put_u16(o, tags::MR_ACQUISITION_PHASE_ENCODING_STEPS_IN_PLANE, g.shape[0] as u16);
                put_u16(
                    o,
                    tags::MR_ACQUISITION_PHASE_ENCODING_STEPS_OUT_OF_PLANE,
                    g.shape[2].min(65535) as u16,
                );
                put_str(o, tags::PERCENT_SAMPLING, VR::DS, "100");
                put_str(o, tags::PERCENT_PHASE_FIELD_OF_VIEW, VR::DS, "100");
            }),
        );
        put_seq(
            &mut shared,
            tags::MR_ECHO_SEQUENCE,
            item(&|o| put_fd(o, tags::EFFECTIVE_ECHO_TIME, info.echo_time)),
        );
        put_seq(
            &mut shared,
            tags::MR_MODIFIER_SEQUENCE,
            item(&|o| {
                match info.inversion_time {
                    Some(ti) => {
                        put_str(o, tags::INVERSION_RECOVERY, VR::CS, "YES");
                        put_fds(o, tags::INVERSION_TIMES, &[ti]);
                    }
                    None => put_str(o, tags::INVERSION_RECOVERY, VR::CS, "NO"),
                }
                put_str(o, tags::FLOW_COMPENSATION, VR::CS, "NONE");
                put_str(o, tags::SPOILING, VR::CS, "RF_AND_GRADIENT");
                put_str(o, tags::T2_PREPARATION, VR::CS, "NO");
                put_str(o, tags::SPECTRALLY_SELECTED_EXCITATION, VR::CS, "NONE");
                put_str(o, tags::SPATIAL_PRESATURATION, VR::CS, "NONE");
                put_str(o, tags::PARTIAL_FOURIER, VR::CS, "NO");
                put_str(o, tags::PARALLEL_ACQUISITION, VR::CS, "NO");
            }),
        );
        put_seq(
            &mut shared,
            tags::MR_IMAGING_MODIFIER_SEQUENCE,
            item(&|o| {
                put_str(o, tags::MAGNETIZATION_TRANSFER, VR::CS, "NONE");
                put_str(o, tags::BLOOD_SIGNAL_NULLING, VR::CS, "NO");
                put_str(o, tags::TAGGING, VR::CS, "NONE");
                put_fd(o, tags::TRANSMITTER_FREQUENCY, larmor_mhz(info));
                put_str(o, tags::PIXEL_BANDWIDTH, VR::DS, "200");
            }),
        );
        put_seq(
            &mut shared,
            tags::MR_RECEIVE_COIL_SEQUENCE,
            item(&|o| {
                put_str(o, tags::RECEIVE_COIL_NAME, VR::SH, "HEAD");
                put_str(o, tags::RECEIVE_COIL_MANUFACTURER_NAME, VR::LO, &info.manufacturer);
                put_str(o, tags::RECEIVE_COIL_TYPE, VR::CS, "VOLUME");
                put_str(o, tags::QUADRATURE_RECEIVE_COIL, VR::CS, "YES");
            }),
        );
        put_seq(
            &mut shared,
            tags::MR_TRANSMIT_COIL_SEQUENCE,
            item(&|o| {
                put_str(o, tags::TRANSMIT_COIL_NAME, VR::SH, "BODY");
                put_str(o, tags::TRANSMIT_COIL_MANUFACTURER_NAME, VR::LO, &info.manufacturer);
                put_str(o, tags::TRANSMIT_COIL_TYPE, VR::CS, "BODY");
            }),
        );
        put_seq(
            &mut shared,
            tags::MR_AVERAGES_SEQUENCE,
            item(&|o| put_str(o, tags::NUMBER_OF_AVERAGES, VR::DS, "1")),
        );
        shared
    }
}

/// Wraps the data set in a file meta group, encodes it in the requested transfer syntax and
/// writes it to `path` in one piece.
fn write_file(
    obj: InMemDicomObject,
    sop_class: &str,
    sop_uid: &str,
    options: &DicomOptions,
    path: &Path,
) -> Result<(), DicomWriteError> {
    let compressed = options.transfer_syntax == JPEG_LS_LOSSLESS;
    // Compressed syntaxes start from native pixel data in explicit VR LE and are transcoded.
    let initial_ts = if compressed {
        EXPLICIT_LE
    } else {
        options.transfer_syntax.as_str()
    };
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_uid)
        .transfer_syntax(initial_ts)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION_NAME)
        .build()
        .map_err(|source| DicomWriteError::Meta {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
    let mut file: FileDicomObject<InMemDicomObject> = obj.with_exact_meta(meta);
    if compressed {
        let multi_frame = file.get(tags::NUMBER_OF_FRAMES).is_some();
        file.transcode(&JPEG_LS_LOSSLESS_IMAGE_COMPRESSION.erased())
            .map_err(|source| DicomWriteError::Transcode {
                path: path.to_owned(),
                uid: options.transfer_syntax.clone(),
                source: Box::new(source),
            })?;
        // The transcoder adds Number of Frames, which MR Image Storage does not define, and
        // Encapsulated Pixel Data Value Total Length (UV), optional below 4 GiB and unknown to
        // older readers such as dciodvfy.
        if !multi_frame {
            file.remove_element(tags::NUMBER_OF_FRAMES);
        }
        file.remove_element(tags::ENCAPSULATED_PIXEL_DATA_VALUE_TOTAL_LENGTH);
        file.put(DataElement::new(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00"));
    }
    let mut bytes = Vec::new();
    file.write_all(&mut bytes).map_err(|source| DicomWriteError::Encode {
        path: path.to_owned(),
        source: Box::new(source),
    })?;
    std::fs::write(path, bytes).map_err(|source| DicomWriteError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Larmor frequency of ¹H at the series' field strength, in MHz.
fn larmor_mhz(info: &SeriesInfo) -> f64 {
    42.577_478_5 * info.magnetic_field_strength
}

/// 64-bit FNV-1a, to mix the series UID into the per-series seed without platform-dependent
/// hashing.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn put_pixels(obj: &mut InMemDicomObject, pixels: Vec<u16>) {
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(pixels.into()),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::Affine;
    use crate::volume::{Plane, acquisition_grid};
    use dicom_core::Tag;
    use dicom_object::{DefaultDicomObject, open_file};
    use dicom_pixeldata::PixelDecoder;
    use nalgebra::Matrix4;

    const SHAPE: [usize; 3] = [24, 20, 12];

    /// A 24×20×12 integer volume (1.0 × 1.1 × 1.5 mm) whose every voxel differs from its
    /// mirror images, so row/column/slice mix-ups change pixels.
    fn volume(plane: Plane) -> Volume {
        let grid = acquisition_grid(plane, [1.0, 1.1, 1.5], [24.0, 22.0, 18.0], [2.5, -7.0, 11.0]).unwrap();
        assert_eq!(grid.shape, SHAPE);
        let mut v = Volume::filled(&grid, 0.0).unwrap();
        for ((i, j, k), x) in v.data_mut().indexed_iter_mut() {
            *x = (i + 24 * j + 480 * k) as f32 + if i < 4 && j < 3 { 60000.0 - 5760.0 } else { 0.0 };
        }
        v
    }

    fn opts(order: SliceOrder, enhanced: bool, ts: &str) -> DicomOptions {
        DicomOptions {
            order,
            enhanced,
            transfer_syntax: ts.into(),
            seed: 5,
        }
    }

    fn floats(obj: &InMemDicomObject, tag: Tag) -> Vec<f64> {
        obj.element(tag).unwrap().to_multi_float64().unwrap()
    }

    fn string(obj: &InMemDicomObject, tag: Tag) -> String {
        obj.element(tag).unwrap().to_str().unwrap().trim_end().to_owned()
    }

    fn int(obj: &InMemDicomObject, tag: Tag) -> i64 {
        obj.element(tag).unwrap().to_int::<i64>().unwrap()
    }

    fn item(obj: &InMemDicomObject, tag: Tag) -> &InMemDicomObject {
        &obj.element(tag).unwrap().items().unwrap()[0]
    }

    fn assert_close(found: &[f64], expected: &[f64], tol: f64, what: &str) {
        assert_eq!(found.len(), expected.len(), "{what}: {found:?} vs {expected:?}");
        for (f, e) in found.iter().zip(expected) {
            assert!((f - e).abs() <= tol, "{what}: {found:?} vs {expected:?}");
        }
    }

    /// The slice pixels the writer must have stored for slice k (row-major, i along a row).
    fn expected_frame(v: &Volume, k: usize) -> Vec<u16> {
        let mut out = Vec::new();
        for r in 0..SHAPE[1] {
            for c in 0..SHAPE[0] {
                out.push(v.data()[[c, r, k]] as u16);
            }
        }
        out
    }

    fn slice_of_position(v: &Volume, ipp: &[f64]) -> usize {
        (0..SHAPE[2])
            .find(|&k| {
                let p = v.voxel_to_world([0.0, 0.0, k as f64]);
                (0..3).all(|a| (p[a] - ipp[a]).abs() < 1e-6)
            })
            .unwrap_or_else(|| panic!("no slice at {ipp:?}"))
    }

    fn check_common(obj: &DefaultDicomObject, ts: &str) {
        assert_eq!(obj.meta().transfer_syntax().trim_end_matches('\0'), ts);
        assert_eq!(
            obj.meta().implementation_class_uid().trim_end_matches('\0'),
            IMPLEMENTATION_CLASS_UID
        );
        assert_eq!(int(obj, tags::ROWS), 20);
        assert_eq!(int(obj, tags::COLUMNS), 24);
        assert_eq!(int(obj, tags::BITS_ALLOCATED), 16);
        assert_eq!(int(obj, tags::BITS_STORED), 16);
        assert_eq!(int(obj, tags::HIGH_BIT), 15);
        assert_eq!(int(obj, tags::PIXEL_REPRESENTATION), 0);
        assert_eq!(int(obj, tags::SAMPLES_PER_PIXEL), 1);
        assert_eq!(string(obj, tags::PHOTOMETRIC_INTERPRETATION), "MONOCHROME2");
        assert_eq!(string(obj, tags::MODALITY), "MR");
        assert_eq!(string(obj, tags::MR_ACQUISITION_TYPE), "3D");
        assert_eq!(
            string(obj, tags::SERIES_INSTANCE_UID),
            SeriesInfo::new(1).series_instance_uid
        );
    }

    #[test]
    fn single_frame_round_trips_in_every_transfer_syntax() {
        let v = volume(Plane::Oblique);
        let d = v.directions();
        let info = SeriesInfo::new(1);
        for (ts, _) in supported_transfer_syntaxes() {
            let tmp = tempfile::tempdir().unwrap();
            let files = write_series(&v, &info, &opts(SliceOrder::Asc, false, ts), tmp.path()).unwrap();
            assert_eq!(files.len(), SHAPE[2]);
            for (n, path) in files.iter().enumerate() {
                assert_eq!(
                    path.file_name().unwrap().to_str().unwrap(),
                    format!("IM_{:04}.dcm", n + 1)
                );
                let obj = open_file(path).unwrap();
                check_common(&obj, ts);
                assert_eq!(
                    string(&obj, tags::SOP_CLASS_UID).trim_end_matches('\0'),
                    uids::MR_IMAGE_STORAGE
                );
                assert!(
                    obj.element(tags::NUMBER_OF_FRAMES).is_err(),
                    "{ts}: single-frame has NumberOfFrames"
                );
                assert_eq!(int(&obj, tags::INSTANCE_NUMBER), n as i64 + 1);
                assert_eq!(string(&obj, tags::IMAGE_TYPE), "ORIGINAL\\PRIMARY\\M\\ND");
                let iop = floats(&obj, tags::IMAGE_ORIENTATION_PATIENT);
                assert_close(&iop, &[d[0], d[1]].concat(), 1e-12, "IOP");
                assert_close(&floats(&obj, tags::PIXEL_SPACING), &[1.1, 1.0], 1e-12, "PixelSpacing");
                assert_close(&floats(&obj, tags::SLICE_THICKNESS), &[1.5], 1e-12, "SliceThickness");
                assert_close(
                    &floats(&obj, tags::SPACING_BETWEEN_SLICES),
                    &[1.5],
                    1e-12,
                    "SpacingBetweenSlices",
                );
                let ipp = floats(&obj, tags::IMAGE_POSITION_PATIENT);
                assert_close(&ipp, &v.voxel_to_world([0.0, 0.0, n as f64]), 1e-9, "IPP");
                assert_close(&floats(&obj, tags::RESCALE_SLOPE), &[1.0], 0.0, "slope");
                assert_close(&floats(&obj, tags::RESCALE_INTERCEPT), &[0.0], 0.0, "intercept");
                assert_close(&floats(&obj, tags::INVERSION_TIME), &[900.0], 0.0, "TI");
                let pixels = obj.decode_pixel_data().unwrap().frame_data_ow(0).unwrap();
                assert_eq!(pixels, expected_frame(&v, n), "{ts}: pixels of slice {n}");
            }
        }
    }

    #[test]
    fn enhanced_frames_follow_the_order_in_every_transfer_syntax() {
        let v = volume(Plane::Sagittal);
        let info = SeriesInfo::new(1);
        for order in [SliceOrder::Asc, SliceOrder::Desc, SliceOrder::Shuffled] {
            for (ts, _) in supported_transfer_syntaxes() {
                let tmp = tempfile::tempdir().unwrap();
                let files = write_series(&v, &info, &opts(order, true, ts), tmp.path()).unwrap();
                assert_eq!(files.len(), 1);
                let obj = open_file(&files[0]).unwrap();
                check_common(&obj, ts);
                assert_eq!(
                    string(&obj, tags::SOP_CLASS_UID).trim_end_matches('\0'),
                    uids::ENHANCED_MR_IMAGE_STORAGE
                );
                assert_eq!(int(&obj, tags::NUMBER_OF_FRAMES), 12);
                let shared = item(&obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
                let measures = item(shared, tags::PIXEL_MEASURES_SEQUENCE);
                assert_close(
                    &floats(measures, tags::PIXEL_SPACING),
                    &[1.1, 1.0],
                    1e-12,
                    "PixelSpacing",
                );
                let iop = floats(
                    item(shared, tags::PLANE_ORIENTATION_SEQUENCE),
                    tags::IMAGE_ORIENTATION_PATIENT,
                );
                let d = v.directions();
                assert_close(&iop, &[d[0], d[1]].concat(), 1e-12, "IOP");
                let frames = obj
                    .element(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
                    .unwrap()
                    .items()
                    .unwrap();
                assert_eq!(frames.len(), 12);
                let decoded = obj.decode_pixel_data().unwrap();
                let mut seen = Vec::new();
                for (f, frame) in frames.iter().enumerate() {
                    let ipp = floats(item(frame, tags::PLANE_POSITION_SEQUENCE), tags::IMAGE_POSITION_PATIENT);
                    let k = slice_of_position(&v, &ipp);
                    let content = item(frame, tags::FRAME_CONTENT_SEQUENCE);
                    assert_eq!(int(content, tags::IN_STACK_POSITION_NUMBER), k as i64 + 1);
                    assert_eq!(string(content, tags::STACK_ID), "1");
                    let dims = content
                        .element(tags::DIMENSION_INDEX_VALUES)
                        .unwrap()
                        .to_multi_int::<u32>()
                        .unwrap();
                    assert_eq!(dims, vec![1, k as u32 + 1]);
                    assert_eq!(
                        decoded.frame_data_ow(f as u32).unwrap(),
                        expected_frame(&v, k),
                        "{ts} frame {f}"
                    );
                    seen.push(k);
                }
                match order {
                    SliceOrder::Asc => assert_eq!(seen, (0..12).collect::<Vec<_>>()),
                    SliceOrder::Desc => assert_eq!(seen, (0..12).rev().collect::<Vec<_>>()),
                    SliceOrder::Shuffled => {
                        assert_ne!(seen, (0..12).collect::<Vec<_>>());
                        seen.sort_unstable();
                        assert_eq!(seen, (0..12).collect::<Vec<_>>(), "frames are a permutation");
                    }
                }
            }
        }
    }

    /// Slice index behind each instance, in instance-number order.
    fn slices_by_instance(v: &Volume, files: &[PathBuf]) -> Vec<usize> {
        files
            .iter()
            .enumerate()
            .map(|(n, path)| {
                let obj = open_file(path).unwrap();
                assert_eq!(int(&obj, tags::INSTANCE_NUMBER), n as i64 + 1);
                slice_of_position(v, &floats(&obj, tags::IMAGE_POSITION_PATIENT))
            })
            .collect()
    }

    #[test]
    fn orders_are_permutations_and_seeded_output_is_byte_identical() {
        let v = volume(Plane::Coronal);
        let info = SeriesInfo::new(1);
        let tmp = tempfile::tempdir().unwrap();
        let write = |name: &str, order, seed| {
            let mut o = opts(order, false, EXPLICIT_LE);
            o.seed = seed;
            write_series(&v, &info, &o, &tmp.path().join(name)).unwrap()
        };
        let desc = slices_by_instance(&v, &write("desc", SliceOrder::Desc, 5));
        assert_eq!(desc, (0..12).rev().collect::<Vec<_>>());
        let a = write("a", SliceOrder::Shuffled, 5);
        let b = write("b", SliceOrder::Shuffled, 5);
        let c = write("c", SliceOrder::Shuffled, 6);
        let mut shuffled = slices_by_instance(&v, &a);
        assert_ne!(
            shuffled,
            (0..12).collect::<Vec<_>>(),
            "shuffled order is not the identity"
        );
        assert_ne!(shuffled, slices_by_instance(&v, &c), "another seed gives another order");
        shuffled.sort_unstable();
        assert_eq!(shuffled, (0..12).collect::<Vec<_>>(), "shuffled order is a permutation");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(std::fs::read(x).unwrap(), std::fs::read(y).unwrap(), "{}", x.display());
        }
    }

    #[test]
    fn uids_and_decimal_strings_are_valid() {
        let mut r1 = ChaCha8Rng::seed_from_u64(9);
        let mut r2 = ChaCha8Rng::seed_from_u64(9);
        let uid = new_uid(&mut r1);
        assert_eq!(uid, new_uid(&mut r2));
        assert!(uid.starts_with("2.25.") && uid.len() <= 64, "{uid}");
        assert_ne!(uid, new_uid(&mut r1));
        for value in [
            0.0,
            -0.0,
            1e-17,
            -0.292371704722737,
            123.456_789_012_345_68,
            -98765.4321,
            1.2,
            65535.0,
        ] {
            let s = ds(value);
            assert!(s.len() <= 16, "{s}");
            let back: f64 = s.parse().unwrap();
            assert!((back - value).abs() <= 1e-10 * value.abs().max(1.0), "{value} → {s}");
        }
        assert_eq!(ds(1.2), "1.2");
        assert_eq!(ds(-0.0), "0");
        assert_eq!(ds(1e-17), "0");
    }

    fn write_err(v: &Volume, o: &DicomOptions) -> DicomWriteError {
        let tmp = tempfile::tempdir().unwrap();
        let err = write_series(v, &SeriesInfo::new(1), o, tmp.path()).unwrap_err();
        assert!(
            std::fs::read_dir(tmp.path()).unwrap().next().is_none(),
            "no file on error: {err}"
        );
        err
    }

    #[test]
    fn bad_input_gives_the_rule_and_the_series() {
        let series = SeriesInfo::new(1).series_instance_uid;
        let v = volume(Plane::Axial);

        let err = write_err(&v, &opts(SliceOrder::Asc, false, "1.2.840.10008.1.2.5"));
        assert!(
            matches!(err, DicomWriteError::UnsupportedTransferSyntax { .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&series) && msg.contains("1.2.840.10008.1.2.5") && msg.contains(JPEG_LS_LOSSLESS),
            "{msg}"
        );

        for (bad, index) in [
            (1.5f32, [3, 2, 1]),
            (70000.0, [0, 0, 11]),
            (-1.0, [23, 19, 0]),
            (f32::NAN, [5, 5, 5]),
        ] {
            let mut w = v.clone();
            w.data_mut()[index] = bad;
            let err = write_err(&w, &opts(SliceOrder::Asc, true, EXPLICIT_LE));
            match &err {
                DicomWriteError::VoxelValue { index: found, .. } => assert_eq!(*found, index, "{err}"),
                other => panic!("expected VoxelValue, got {other:?}"),
            }
            assert!(
                err.to_string().contains("0..=65535") && err.to_string().contains(&series),
                "{err}"
            );
        }

        // i and j not orthogonal: a sheared in-plane grid.
        let mut m: Matrix4<f64> = *v.affine().matrix();
        m[(0, 1)] += 0.3;
        let sheared = Volume::new(v.data().clone(), Affine::new(m).unwrap()).unwrap();
        let err = write_err(&sheared, &opts(SliceOrder::Asc, false, EXPLICIT_LE));
        assert!(matches!(err, DicomWriteError::NotImagePlanes { .. }), "{err:?}");
        assert!(err.to_string().contains("orthogonal"), "{err}");

        // k not along the normal: a tilted (gantry-tilt-like) stack.
        let mut m: Matrix4<f64> = *v.affine().matrix();
        m[(0, 2)] += 0.4;
        let tilted = Volume::new(v.data().clone(), Affine::new(m).unwrap()).unwrap();
        let err = write_err(&tilted, &opts(SliceOrder::Asc, false, EXPLICIT_LE));
        assert!(matches!(err, DicomWriteError::NotImagePlanes { .. }), "{err:?}");
        assert!(err.to_string().contains("normal"), "{err}");

        let mut info = SeriesInfo::new(1);
        info.study_instance_uid = "1.2.03".into();
        let tmp = tempfile::tempdir().unwrap();
        let err = write_series(&v, &info, &opts(SliceOrder::Asc, false, EXPLICIT_LE), tmp.path()).unwrap_err();
        assert!(
            matches!(
                err,
                DicomWriteError::BadInfo {
                    field: "study_instance_uid",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn unwritable_directory_names_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let blocker = tmp.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let dir = blocker.join("series");
        let err = write_series(
            &volume(Plane::Axial),
            &SeriesInfo::new(1),
            &DicomOptions::default(),
            &dir,
        )
        .unwrap_err();
        assert!(matches!(err, DicomWriteError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains(&dir.display().to_string()), "{err}");
    }
}
