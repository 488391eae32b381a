//! The cohort: who is in it, which scanner each subject went to, and writing the BIDS tree
//! (ds004199 layout) plus optional DICOM series of the same images.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::dicom::{self, DicomOptions, SeriesInfo};
use super::phantom::{
    AcquisitionSpec, Anatomy, Contrast, Hemisphere, LesionSpec, Lobe, MAX_MIMIC_LEVEL, Rendered, Subject, SubjectSpec,
};
use super::{SliceOrder, SynthError, preview};
use crate::nifti::{self, DataType};
use crate::volume::Volume;
use crate::volume::{Plane, acquisition_grid};

/// Field of view of every synthetic acquisition, in mm along LPS x (left–right), y
/// (anterior–posterior) and z (inferior–superior): the MNI brain plus room for head motion.
const FOV_LPS_MM: [f64; 3] = [170.0, 210.0, 180.0];
/// LPS position the field of view is centred on (the MNI brain's centre, roughly).
const FOV_CENTRE_LPS: [f64; 3] = [0.0, 18.0, 10.0];

/// One scanner/protocol: its BIDS `acq-` labels and its image quality. Several groups with
/// different quality, and an uneven share of patients and controls, emulate scanner confounds.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AcquisitionGroup {
    /// Name in `participants.tsv` (`acquisition` column).
    pub name: String,
    /// BIDS `acq-` label of the T1w image.
    pub t1w_label: String,
    /// BIDS `acq-` label of the FLAIR image.
    pub flair_label: String,
    /// Voxel size of T1w relative to `--voxel-mm` (i, j, k of the plane).
    pub t1w_voxel_scale: [f64; 3],
    /// Voxel size of FLAIR relative to `--voxel-mm`.
    pub flair_voxel_scale: [f64; 3],
    /// Rician noise sigma as a fraction of the white-matter signal.
    pub noise: f64,
    /// Bias-field strength (0.2 = ±20 %).
    pub bias: f64,
    /// Scanner maker written to DICOM and the JSON sidecars.
    pub manufacturer: String,
    /// Scanner model.
    pub model: String,
}

impl AcquisitionGroup {
    /// Two scanners like the Bonn data: every control and some patients on the first, the other
    /// patients on a second one with coarser FLAIR, more noise and more bias.
    pub fn bonn_like() -> Vec<Self> {
        vec![
            Self {
                name: "scanner1".into(),
                t1w_label: "mprage".into(),
                flair_label: "tse3dvfl".into(),
                t1w_voxel_scale: [1.0; 3],
                flair_voxel_scale: [1.0; 3],
                noise: 0.02,
                bias: 0.10,
                manufacturer: "Siemens".into(),
                model: "Prisma".into(),
            },
            Self {
                name: "scanner2".into(),
                t1w_label: "iso08".into(),
                flair_label: "T2sel".into(),
                t1w_voxel_scale: [1.0; 3],
                flair_voxel_scale: [1.0, 1.0, 1.2],
                noise: 0.035,
                bias: 0.20,
                manufacturer: "Philips".into(),
                model: "Achieva".into(),
            },
        ]
    }
}

/// DICOM output beside the BIDS tree (`DIR/dicom/sub-XXXXX/<T1w|FLAIR>/`).
#[derive(Clone, Debug, PartialEq)]
pub struct DicomExport {
    /// Instance Number order relative to slice position.
    pub order: SliceOrder,
    /// One Enhanced MR multi-frame instance per series instead of one file per slice.
    pub enhanced: bool,
    /// Transfer syntax UID of the written files.
    pub transfer_syntax: String,
}

/// A lesion knob: one value, or a range each patient draws from uniformly (`8` or `8..12` on the
/// command line), so one cohort can mix easy and hard lesions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KnobRange {
    /// Smallest value.
    pub low: f64,
    /// Largest value (equal to `low` for a fixed knob).
    pub high: f64,
}

impl KnobRange {
    /// The same value for every patient.
    pub const fn fixed(value: f64) -> Self {
        Self {
            low: value,
            high: value,
        }
    }

    /// Whether every value of the range lies within `min..=max`, and the range is not reversed.
    fn within(&self, min: f64, max: f64) -> bool {
        self.low >= min && self.high <= max && self.low <= self.high
    }

    /// A value drawn uniformly and rounded to `decimals` (what `participants.tsv` records is what
    /// is rendered); no draw for a fixed knob, so fixed-knob cohorts keep their bytes.
    fn draw(&self, rng: &mut ChaCha8Rng, decimals: i32) -> f64 {
        if self.high > self.low {
            let scale = 10f64.powi(decimals);
            (rng.random_range(self.low..=self.high) * scale).round() / scale
        } else {
            self.low
        }
    }
}

impl std::fmt::Display for KnobRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.high > self.low {
            write!(f, "{}..{}", self.low, self.high)
        } else {
            write!(f, "{}", self.low)
        }
    }
}

/// A knob that is neither a number nor `LOW..HIGH`.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is neither a number nor LOW..HIGH")]
pub struct KnobRangeError(String);

impl std::str::FromStr for KnobRange {
    type Err = KnobRangeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let number = |t: &str| t.trim().parse::<f64>().map_err(|_| KnobRangeError(text.to_string()));
        match text.split_once("..") {
            Some((low, high)) => Ok(Self {
                low: number(low)?,
                high: number(high)?,
            }),
            None => number(text).map(Self::fixed),
        }
    }
}

/// Everything that defines a cohort; the same options and seed give byte-identical files.
#[derive(Clone, Debug, PartialEq)]
pub struct CohortOptions {
    /// Number of subjects.
    pub subjects: usize,
    /// Fraction of subjects in group `fcd` (the rest are `hc`).
    pub fcd_fraction: f64,
    /// Seed of every random choice.
    pub seed: u64,
    /// Base voxel size in mm (each acquisition group scales it).
    pub voxel_mm: f64,
    /// Acquisition plane of every image.
    pub plane: Plane,
    /// Lesion radius in mm (size knob), per patient.
    pub lesion_radius_mm: KnobRange,
    /// Lesion contrast, 1.0 = typical (difficulty knob: lower is harder), per patient.
    pub lesion_contrast: KnobRange,
    /// Probability that a patient is scanned on the controls' scanner (1.0 removes the
    /// scanner confound, 0.0 makes scanner and diagnosis identical).
    pub patients_on_control_scanner: f64,
    /// What makes real FCD-II hard (non-FCD FLAIR hyperintensities, bright choroid plexus and
    /// septum, flow ghosts, partial volume at the cortex, lesions with a faint FLAIR sign), for
    /// patients and controls alike: 0 (none) to 3.
    pub mimics: u8,
    /// Scanners; the first is the controls' scanner.
    pub acquisitions: Vec<AcquisitionGroup>,
    /// Also write DICOM series.
    pub dicom: Option<DicomExport>,
    /// Write a PNG preview of the first patient's FLAIR with the lesion outline.
    pub preview: bool,
}

impl Default for CohortOptions {
    fn default() -> Self {
        Self {
            subjects: 20,
            fcd_fraction: 0.5,
            seed: 42,
            voxel_mm: 1.0,
            plane: Plane::Axial,
            lesion_radius_mm: KnobRange::fixed(8.0),
            lesion_contrast: KnobRange::fixed(1.0),
            patients_on_control_scanner: 0.4,
            mimics: 0,
            acquisitions: AcquisitionGroup::bonn_like(),
            dicom: None,
            preview: true,
        }
    }
}

impl CohortOptions {
    /// Refuses option values that cannot make a cohort, naming the option.
    pub fn validate(&self) -> Result<(), SynthError> {
        let bad = |option: &'static str, rule: String| Err(SynthError::BadOption { option, rule });
        if self.subjects == 0 || self.subjects > 99_999 {
            return bad("subjects", format!("must be 1..=99999, found {}", self.subjects));
        }
        if !(0.0..=1.0).contains(&self.fcd_fraction) {
            return bad(
                "fcd-fraction",
                format!("must be within 0..=1, found {}", self.fcd_fraction),
            );
        }
        if !(self.voxel_mm >= 0.5 && self.voxel_mm <= 8.0) {
            return bad(
                "voxel-mm",
                format!("must be within 0.5..=8 mm, found {}", self.voxel_mm),
            );
        }
        if !self.lesion_radius_mm.within(2.0, 30.0) {
            return bad(
                "lesion-radius",
                format!("must be within 2..=30 mm, LOW ≤ HIGH, found {}", self.lesion_radius_mm),
            );
        }
        if !(self.lesion_contrast.within(0.0, 5.0) && self.lesion_contrast.low > 0.0) {
            return bad(
                "lesion-contrast",
                format!("must be within (0, 5], LOW ≤ HIGH, found {}", self.lesion_contrast),
            );
        }
        if self.mimics > MAX_MIMIC_LEVEL {
            return bad(
                "mimics",
                format!("must be 0..={MAX_MIMIC_LEVEL}, found {}", self.mimics),
            );
        }
        if !(0.0..=1.0).contains(&self.patients_on_control_scanner) {
            return bad(
                "confound",
                format!("must be within 0..=1, found {}", self.patients_on_control_scanner),
            );
        }
        if self.acquisitions.is_empty() {
            return bad("acquisitions", "at least one acquisition group is needed".into());
        }
        if let Some(d) = &self.dicom {
            let supported = dicom::supported_transfer_syntaxes();
            if !supported.iter().any(|(uid, _)| *uid == d.transfer_syntax) {
                let list: Vec<String> = supported.iter().map(|(uid, name)| format!("{uid} ({name})")).collect();
                return bad(
                    "transfer-syntax",
                    format!(
                        "{} is not one we can write; supported: {}",
                        d.transfer_syntax,
                        list.join(", ")
                    ),
                );
            }
        }
        Ok(())
    }
}

/// A subject as listed in `participants.tsv`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Participant {
    /// `sub-XXXXX`.
    pub id: String,
    /// `fcd` or `hc`.
    pub group: &'static str,
    /// `M` or `F`.
    pub sex: &'static str,
    /// Age at scan, binned in 5-year bins as in ds004199 (e.g. `25-30`).
    pub age_scan: String,
    /// Lesion side (`L`/`R`) for patients.
    pub hemisphere: Option<Hemisphere>,
    /// Lesion lobe for patients.
    pub lobe: Option<Lobe>,
    /// Lesion radius in mm for patients (drawn from the cohort's range).
    pub lesion_radius_mm: Option<f64>,
    /// Lesion contrast for patients (drawn from the cohort's range).
    pub lesion_contrast: Option<f64>,
    /// Strength of the lesion's FLAIR sign for patients (1 = typical; below 1 only with mimics).
    pub lesion_flair_gain: Option<f64>,
    /// `train` or `test`.
    pub split: &'static str,
    /// Index into [`CohortOptions::acquisitions`].
    pub acquisition: usize,
    /// Seed of this subject's anatomy.
    pub seed: u64,
}

/// What [`generate`] wrote and how long it took.
#[derive(Debug, Default)]
pub struct CohortReport {
    /// Participants, in order.
    pub participants: Vec<Participant>,
    /// The PNG preview, when one was written.
    pub preview: Option<PathBuf>,
    /// Wall time per stage, summed over subjects.
    pub timings: Timings,
}

/// Wall time per stage of [`generate`].
#[derive(Debug, Default, Clone, Copy)]
pub struct Timings {
    /// Loading the MNI templates.
    pub anatomy: Duration,
    /// Sampling subjects and rendering their images.
    pub render: Duration,
    /// Writing NIfTI files.
    pub nifti: Duration,
    /// Writing DICOM series.
    pub dicom: Duration,
    /// Everything.
    pub total: Duration,
}

/// Draws the participants: group, sex, age, lesion site, split and scanner, from the seed.
pub fn participants(options: &CohortOptions) -> Vec<Participant> {
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let n = options.subjects;
    let n_fcd = (n as f64 * options.fcd_fraction).round() as usize;
    let mut groups: Vec<bool> = (0..n).map(|i| i < n_fcd).collect();
    groups.shuffle(&mut rng);
    // A stratified 80/20 split: every fifth subject of each group is held out.
    let mut seen = [0usize; 2];
    groups
        .iter()
        .enumerate()
        .map(|(index, &fcd)| {
            let g = usize::from(fcd);
            seen[g] += 1;
            let split = if seen[g] % 5 == 0 { "test" } else { "train" };
            // Controls are older than patients, as in the Bonn data (another confound).
            let age: u32 = if fcd {
                rng.random_range(8..40)
            } else {
                rng.random_range(22..65)
            };
            let acquisition =
                if !fcd || options.acquisitions.len() == 1 || rng.random_bool(options.patients_on_control_scanner) {
                    0
                } else {
                    rng.random_range(1..options.acquisitions.len())
                };
            let (hemisphere, lobe) = if fcd {
                let h = if rng.random_bool(0.5) {
                    Hemisphere::Left
                } else {
                    Hemisphere::Right
                };
                let lobes = [
                    Lobe::Frontal,
                    Lobe::Frontal,
                    Lobe::Temporal,
                    Lobe::Parietal,
                    Lobe::Occipital,
                ];
                (Some(h), Some(lobes[rng.random_range(0..lobes.len())]))
            } else {
                (None, None)
            };
            let sex = if rng.random_bool(0.5) { "M" } else { "F" };
            let seed: u64 = rng.random();
            // Its own stream, so that cohorts with fixed knobs draw exactly what they always did.
            let mut knobs = ChaCha8Rng::seed_from_u64(seed ^ 0x1E51_0C0B);
            let (lesion_radius_mm, lesion_contrast, lesion_flair_gain) = if fcd {
                // With mimics, some lesions show faintly on FLAIR and lean on their T1w signs.
                let faintest = 1.0 - 0.25 * f64::from(options.mimics);
                (
                    Some(options.lesion_radius_mm.draw(&mut knobs, 1)),
                    Some(options.lesion_contrast.draw(&mut knobs, 2)),
                    Some(
                        KnobRange {
                            low: faintest,
                            high: 1.0,
                        }
                        .draw(&mut knobs, 2),
                    ),
                )
            } else {
                (None, None, None)
            };
            Participant {
                id: format!("sub-{:05}", index + 1),
                group: if fcd { "fcd" } else { "hc" },
                sex,
                age_scan: format!("{}-{}", age / 5 * 5, age / 5 * 5 + 5),
                hemisphere,
                lobe,
                lesion_radius_mm,
                lesion_contrast,
                lesion_flair_gain,
                split,
                acquisition,
                seed,
            }
        })
        .collect()
}

/// Generates the cohort under `out`: BIDS tree, optional DICOM series and preview.
pub fn generate(out: &Path, options: &CohortOptions) -> Result<CohortReport, SynthError> {
    options.validate()?;
    let start = Instant::now();
    create_dir(out)?;
    let mut report = CohortReport {
        participants: participants(options),
        ..CohortReport::default()
    };
    let t = Instant::now();
    let anatomy = Anatomy::load()?;
    report.timings.anatomy = t.elapsed();

    write_dataset_files(out, options, &report.participants)?;
    for participant in &report.participants {
        let _span = tracing::info_span!("subject", id = %participant.id).entered();
        let lesion_flair = write_subject(out, options, &anatomy, participant, &mut report.timings)?;
        if let (true, None, Some((flair, roi))) = (options.preview, &report.preview, lesion_flair) {
            let dir = out.join("derivatives").join("preview");
            create_dir(&dir)?;
            let path = dir.join(format!("{}_FLAIR_lesion.png", participant.id));
            preview::flair_with_outline(&flair, &roi)?
                .save(&path)
                .map_err(|source| SynthError::Png {
                    path: path.clone(),
                    source,
                })?;
            report.preview = Some(path);
        }
        tracing::info!(group = participant.group, "subject written");
    }
    report.timings.total = start.elapsed();
    Ok(report)
}

fn write_subject(
    out: &Path,
    options: &CohortOptions,
    anatomy: &Anatomy,
    p: &Participant,
    timings: &mut Timings,
) -> Result<Option<(Volume, Volume)>, SynthError> {
    let group = &options.acquisitions[p.acquisition];
    let anat = out.join(&p.id).join("anat");
    create_dir(&anat)?;
    let t = Instant::now();
    let lesion = match (
        p.hemisphere,
        p.lobe,
        p.lesion_radius_mm,
        p.lesion_contrast,
        p.lesion_flair_gain,
    ) {
        (Some(hemisphere), Some(lobe), Some(radius_mm), Some(contrast), Some(flair_gain)) => Some(LesionSpec {
            hemisphere,
            lobe,
            radius_mm,
            contrast,
            flair_gain,
        }),
        _ => None,
    };
    let subject = Subject::sample(
        anatomy,
        &SubjectSpec {
            seed: p.seed,
            lesion,
            mimics: options.mimics,
        },
    )?;
    timings.render += t.elapsed();

    let mut lesion_flair = None;
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed ^ 0x5EED_D1C0);
    let study_uid = dicom::new_uid(&mut rng);
    let frame_of_reference_uid = dicom::new_uid(&mut rng);
    for (series_number, contrast) in [(1u32, Contrast::T1w), (2, Contrast::Flair)] {
        let (label, scale, suffix) = match contrast {
            Contrast::T1w => (&group.t1w_label, group.t1w_voxel_scale, "T1w"),
            Contrast::Flair => (&group.flair_label, group.flair_voxel_scale, "FLAIR"),
        };
        let voxel = scale.map(|s| s * options.voxel_mm);
        let fov = plane_fov(options.plane);
        let grid = acquisition_grid(options.plane, voxel, fov, FOV_CENTRE_LPS)?;
        let t = Instant::now();
        let acq = AcquisitionSpec {
            grid,
            noise: group.noise,
            bias: group.bias,
        };
        let Rendered { image, roi } =
            subject.render(anatomy, contrast, &acq, p.seed.wrapping_add(series_number.into()))?;
        timings.render += t.elapsed();

        let t = Instant::now();
        let stem = format!("{}_acq-{}_{}", p.id, label, suffix);
        nifti::write(&anat.join(format!("{stem}.nii.gz")), &image, DataType::I16)?;
        let sidecar = sidecar_json(contrast, group, options.plane, &image);
        write_text(&anat.join(format!("{stem}.json")), &sidecar)?;
        if let (Contrast::Flair, Some(roi)) = (contrast, &roi) {
            nifti::write(&anat.join(format!("{stem}_roi.nii.gz")), roi, DataType::U8)?;
        }
        timings.nifti += t.elapsed();

        if let Some(export) = &options.dicom {
            let t = Instant::now();
            let dir = out.join("dicom").join(&p.id).join(suffix);
            create_dir(&dir)?;
            let info = series_info(
                p,
                contrast,
                group,
                &study_uid,
                &frame_of_reference_uid,
                series_number,
                dicom::new_uid(&mut rng),
            );
            let dicom_options = DicomOptions {
                order: export.order,
                enhanced: export.enhanced,
                transfer_syntax: export.transfer_syntax.clone(),
                seed: p.seed.wrapping_add(series_number.into()),
            };
            dicom::write_series(&image, &info, &dicom_options, &dir)?;
            timings.dicom += t.elapsed();
        }
        if let (Contrast::Flair, Some(roi)) = (contrast, roi) {
            lesion_flair = Some((image, roi));
        }
    }
    Ok(lesion_flair)
}

/// DICOM identity and MR parameters of one synthetic series, vendor-flavoured by its group.
fn series_info(
    p: &Participant,
    contrast: Contrast,
    group: &AcquisitionGroup,
    study_uid: &str,
    frame_of_reference_uid: &str,
    series_number: u32,
    series_uid: String,
) -> SeriesInfo {
    let (description, protocol, scanning, variant, sequence, tr, te, ti, flip, etl, label) = match contrast {
        Contrast::T1w => (
            "T1w 3D MPRAGE",
            "t1_mprage_sag_p2_iso",
            "GR\\IR",
            "SP\\MP",
            "*tfl3d1_16ns",
            2300.0,
            2.32,
            Some(900.0),
            8.0,
            1,
            &group.t1w_label,
        ),
        Contrast::Flair => (
            "3D FLAIR",
            "t2_spc_da-fl_sag_p2_iso",
            "SE\\IR",
            "SK\\SP\\MP",
            "*spcir_278ns",
            5000.0,
            388.0,
            Some(1800.0),
            120.0,
            278,
            &group.flair_label,
        ),
    };
    let number = p.id.trim_start_matches("sub-");
    SeriesInfo {
        patient_id: format!("SYNTH{number}"),
        patient_name: format!("Synthetic^{number}"),
        patient_sex: p.sex.into(),
        patient_age: format!(
            "{:03}Y",
            p.age_scan
                .split('-')
                .next()
                .and_then(|a| a.parse::<u32>().ok())
                .unwrap_or(0)
        ),
        study_instance_uid: study_uid.into(),
        accession_number: format!("SYNTH{number}"),
        study_description: "fcdnode synthetic epilepsy protocol".into(),
        series_instance_uid: series_uid,
        series_number,
        series_description: format!("{description} ({label})"),
        protocol_name: protocol.into(),
        frame_of_reference_uid: frame_of_reference_uid.into(),
        manufacturer: group.manufacturer.clone(),
        model_name: group.model.clone(),
        scanning_sequence: scanning.into(),
        sequence_variant: variant.into(),
        sequence_name: sequence.into(),
        repetition_time: tr,
        echo_time: te,
        inversion_time: ti,
        flip_angle: flip,
        echo_train_length: etl,
        acquisition_contrast: match contrast {
            Contrast::T1w => "T1".into(),
            Contrast::Flair => "FLUID_ATTENUATED".into(),
        },
        ..SeriesInfo::new(p.seed)
    }
}

/// The LPS field of view expressed along the plane's own axes (i, j, k).
fn plane_fov(plane: Plane) -> [f64; 3] {
    let [x, y, z] = FOV_LPS_MM;
    match plane {
        Plane::Axial | Plane::Oblique => [x, y, z],
        Plane::Sagittal => [y, z, x],
        Plane::Coronal => [x, z, y],
    }
}

fn sidecar_json(contrast: Contrast, group: &AcquisitionGroup, plane: Plane, image: &Volume) -> String {
    let (tr, te, ti, flip) = match contrast {
        Contrast::T1w => (2.3, 0.00232, Some(0.9), 8.0),
        Contrast::Flair => (5.0, 0.388, Some(1.8), 120.0),
    };
    let value = json!({
        "Manufacturer": group.manufacturer,
        "ManufacturersModelName": group.model,
        "MagneticFieldStrength": 3,
        "MRAcquisitionType": "3D",
        "RepetitionTime": tr,
        "EchoTime": te,
        "InversionTime": ti,
        "FlipAngle": flip,
        "AcquisitionPlane": plane,
        "VoxelSizeMm": image.spacing(),
        "GeneratedBy": "fcdnode synth (synthetic phantom, not patient data)",
    });
    serde_json::to_string_pretty(&value).unwrap_or_default() + "\n"
}

fn write_dataset_files(out: &Path, options: &CohortOptions, participants: &[Participant]) -> Result<(), SynthError> {
    let description = json!({
        "Name": "fcdnode synthetic FCD-II cohort",
        "BIDSVersion": "1.8.0",
        "DatasetType": "raw",
        "License": "CC0",
        "GeneratedBy": [{
            "Name": "fcdnode synth",
            "Version": env!("CARGO_PKG_VERSION"),
            "Description": format!(
                "seed {}, {} subjects, fcd fraction {}, voxel {} mm, plane {:?}, lesion radius {} mm, contrast {}, mimics {}",
                options.seed, options.subjects, options.fcd_fraction, options.voxel_mm, options.plane,
                options.lesion_radius_mm, options.lesion_contrast, options.mimics
            ),
        }],
        "SourceDatasets": [{"Name": "MNI ICBM152 2009a nonlinear symmetric templates (anatomy)"}],
    });
    write_text(
        &out.join("dataset_description.json"),
        &(serde_json::to_string_pretty(&description).unwrap_or_default() + "\n"),
    )?;
    let mut tsv = String::from(
        "participant_id\tgroup\tsex\tage_scan\themisphere\tlobe\tlesion_radius_mm\tlesion_contrast\tlesion_flair_gain\tsplit\tacquisition\n",
    );
    let knob = |value: Option<f64>| value.map_or_else(|| "n/a".to_string(), |v| format!("{v}"));
    for p in participants {
        tsv.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            p.id,
            p.group,
            p.sex,
            p.age_scan,
            p.hemisphere.map_or("n/a", hemisphere_label),
            p.lobe.map_or("n/a", lobe_label),
            knob(p.lesion_radius_mm),
            knob(p.lesion_contrast),
            knob(p.lesion_flair_gain),
            p.split,
            options.acquisitions[p.acquisition].name,
        ));
    }
    write_text(&out.join("participants.tsv"), &tsv)?;
    let columns = json!({
        "group": {"Description": "fcd: focal cortical dysplasia type II (synthetic lesion); hc: healthy control"},
        "sex": {"Description": "M or F"},
        "age_scan": {"Description": "age at scan in 5-year bins", "Units": "years"},
        "hemisphere": {"Description": "lesion hemisphere, L or R"},
        "lobe": {"Description": "lesion lobe"},
        "lesion_radius_mm": {"Description": "radius of the synthetic lesion", "Units": "mm"},
        "lesion_contrast": {"Description": "contrast of the synthetic lesion, 1.0 = typical"},
        "lesion_flair_gain": {"Description": "strength of the lesion's FLAIR sign on top of its contrast, 1.0 = typical (lower only with --mimics)"},
        "split": {"Description": "train or test (stratified 80/20)"},
        "acquisition": {"Description": "scanner/protocol group; the first holds every control"},
    });
    write_text(
        &out.join("participants.json"),
        &(serde_json::to_string_pretty(&columns).unwrap_or_default() + "\n"),
    )
}

fn create_dir(path: &Path) -> Result<(), SynthError> {
    std::fs::create_dir_all(path).map_err(|source| SynthError::Io {
        path: path.to_owned(),
        source,
    })
}

fn write_text(path: &Path, text: &str) -> Result<(), SynthError> {
    std::fs::write(path, text).map_err(|source| SynthError::Io {
        path: path.to_owned(),
        source,
    })
}

/// `L`/`R`, as in ds004199's `hemisphere` column.
fn hemisphere_label(h: Hemisphere) -> &'static str {
    match h {
        Hemisphere::Left => "L",
        Hemisphere::Right => "R",
    }
}

/// Lower-case lobe name for `participants.tsv`.
fn lobe_label(l: Lobe) -> &'static str {
    match l {
        Lobe::Frontal => "frontal",
        Lobe::Temporal => "temporal",
        Lobe::Parietal => "parietal",
        Lobe::Occipital => "occipital",
    }
}
