//! BIDS reader for the ds004199 layout: `participants.tsv` plus, per subject,
//! `anat/sub-X_acq-<label>_T1w.nii.gz`, `..._FLAIR.nii.gz` and the lesion mask
//! `..._FLAIR_roi.nii.gz`. Known glitches of the real dataset become warnings, not failures.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why a dataset could not be read; variants name the file and the rule.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BidsError {
    /// A file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `participants.tsv` lacks a required column.
    #[error("{path}: missing column `{column}` (found: {found})")]
    MissingColumn {
        path: PathBuf,
        column: &'static str,
        found: String,
    },
    /// A row of `participants.tsv` breaks a rule.
    #[error("{path}, line {line}: {rule}")]
    BadRow { path: PathBuf, line: usize, rule: String },
}

/// Diagnosis group from the `group` column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    /// Focal cortical dysplasia type II.
    Fcd,
    /// Healthy control.
    Hc,
}

/// Which image a file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum ImageKind {
    /// 3D T1-weighted.
    T1w,
    /// FLAIR.
    Flair,
    /// Lesion mask in FLAIR space.
    FlairRoi,
}

/// One NIfTI file of a subject.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Image {
    /// What it holds.
    pub kind: ImageKind,
    /// The `acq-` label, when the name has one.
    pub acq: Option<String>,
    /// Where it is.
    pub path: PathBuf,
}

/// One row of `participants.tsv` with the subject's images.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Subject {
    /// `sub-XXXXX`.
    pub id: String,
    /// Diagnosis group.
    pub group: Group,
    /// Every other column, by name (`n/a` kept as written).
    pub columns: BTreeMap<String, String>,
    /// Images found under `sub-X/anat/`.
    pub images: Vec<Image>,
}

impl Subject {
    /// Images of one kind.
    pub fn images_of(&self, kind: ImageKind) -> impl Iterator<Item = &Image> {
        self.images.iter().filter(move |i| i.kind == kind)
    }
}

/// A BIDS dataset as read: subjects in `participants.tsv` order, and warnings about glitches.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Dataset {
    /// Dataset root.
    pub root: PathBuf,
    /// Subjects.
    pub subjects: Vec<Subject>,
    /// Glitches tolerated while reading (each names the subject and file).
    pub warnings: Vec<String>,
}

impl Dataset {
    /// Reads `participants.tsv` and lists each subject's anatomical images.
    pub fn open(root: &Path) -> Result<Self, BidsError> {
        let tsv_path = root.join("participants.tsv");
        let text = std::fs::read_to_string(&tsv_path).map_err(|source| BidsError::Io {
            path: tsv_path.clone(),
            source,
        })?;
        let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
        let header: Vec<&str> = lines
            .next()
            .map(|(_, l)| l.split('\t').map(str::trim).collect())
            .unwrap_or_default();
        let column = |name: &'static str| {
            header
                .iter()
                .position(|h| *h == name)
                .ok_or_else(|| BidsError::MissingColumn {
                    path: tsv_path.clone(),
                    column: name,
                    found: header.join(", "),
                })
        };
        let (id_col, group_col) = (column("participant_id")?, column("group")?);
        let mut warnings = Vec::new();
        let mut subjects = Vec::new();
        for (index, line) in lines {
            let fields: Vec<&str> = line.split('\t').map(str::trim).collect();
            let bad_row = |rule: String| BidsError::BadRow {
                path: tsv_path.clone(),
                line: index + 1,
                rule,
            };
            if fields.len() != header.len() {
                return Err(bad_row(format!("{} fields, header has {}", fields.len(), header.len())));
            }
            let id = fields[id_col].to_string();
            if !id.starts_with("sub-") {
                return Err(bad_row(format!("participant_id `{id}` does not start with `sub-`")));
            }
            let group = match fields[group_col].to_ascii_lowercase().as_str() {
                "fcd" => Group::Fcd,
                "hc" => Group::Hc,
                other => return Err(bad_row(format!("group `{other}` is neither `fcd` nor `hc`"))),
            };
            let columns = header
                .iter()
                .zip(&fields)
                .enumerate()
                .filter(|(c, _)| *c != id_col && *c != group_col)
                .map(|(_, (h, f))| (h.to_string(), f.to_string()))
                .collect();
            let images = list_images(root, &id, &mut warnings)?;
            let subject = Subject {
                id,
                group,
                columns,
                images,
            };
            check_subject(&subject, &mut warnings);
            subjects.push(subject);
        }
        Ok(Self {
            root: root.to_owned(),
            subjects,
            warnings,
        })
    }
}

fn list_images(root: &Path, id: &str, warnings: &mut Vec<String>) -> Result<Vec<Image>, BidsError> {
    let anat = root.join(id).join("anat");
    if !anat.is_dir() {
        warnings.push(format!("{id}: no directory {}", anat.display()));
        return Ok(Vec::new());
    }
    let entries = std::fs::read_dir(&anat).map_err(|source| BidsError::Io {
        path: anat.clone(),
        source,
    })?;
    let mut images = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|source| BidsError::Io {
                path: anat.clone(),
                source,
            })?
            .path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(stem) = name.strip_suffix(".nii.gz").or_else(|| name.strip_suffix(".nii")) else {
            continue;
        };
        let kind = if stem.ends_with("_FLAIR_roi") {
            ImageKind::FlairRoi
        } else if stem.ends_with("_FLAIR") {
            ImageKind::Flair
        } else if stem.ends_with("_T1w") {
            ImageKind::T1w
        } else {
            continue;
        };
        let acq = stem
            .split('_')
            .find_map(|part| part.strip_prefix("acq-"))
            .map(str::to_string);
        images.push(Image { kind, acq, path });
    }
    images.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(images)
}

/// Glitches of the real dataset that the trainer tolerates, reported as warnings.
fn check_subject(s: &Subject, warnings: &mut Vec<String>) {
    let flair_acqs: Vec<_> = s.images_of(ImageKind::Flair).map(|i| &i.acq).collect();
    if s.group == Group::Fcd && s.images_of(ImageKind::FlairRoi).next().is_none() {
        warnings.push(format!("{}: fcd subject without a FLAIR lesion mask", s.id));
    }
    if s.group == Group::Hc && s.images_of(ImageKind::FlairRoi).next().is_some() {
        warnings.push(format!("{}: control with a lesion mask", s.id));
    }
    for roi in s.images_of(ImageKind::FlairRoi) {
        if !flair_acqs.contains(&&roi.acq) {
            warnings.push(format!(
                "{}: mask {} has acq label {:?}, but no FLAIR has it (FLAIR labels: {:?})",
                s.id,
                roi.path.display(),
                roi.acq,
                flair_acqs
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, rel: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"").unwrap();
    }

    #[test]
    fn reads_layout_and_reports_glitches() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(
            root.join("participants.tsv"),
            "participant_id\tgroup\tage_scan\nsub-00001\tfcd\t20-25\nsub-00002\thc\t30-35\nsub-00003\tfcd\tn/a\n",
        )
        .unwrap();
        touch(root, "sub-00001/anat/sub-00001_acq-mprage_T1w.nii.gz");
        touch(root, "sub-00001/anat/sub-00001_acq-tse3dvfl_FLAIR.nii.gz");
        // The real dataset's glitch: the mask's acq label differs from its FLAIR's.
        touch(root, "sub-00001/anat/sub-00001_acq-T2sel_FLAIR_roi.nii.gz");
        touch(root, "sub-00002/anat/sub-00002_acq-mprage_T1w.nii.gz");
        touch(root, "sub-00002/anat/sub-00002_acq-tse3dvfl_FLAIR.nii.gz");
        touch(root, "sub-00002/anat/sub-00002_acq-tse3dvfl_FLAIR.json");
        let d = Dataset::open(root).unwrap();
        assert_eq!(d.subjects.len(), 3);
        assert_eq!(d.subjects[0].group, Group::Fcd);
        assert_eq!(d.subjects[0].images.len(), 3);
        assert_eq!(d.subjects[1].images.len(), 2, "JSON sidecars are not images");
        assert_eq!(d.subjects[0].columns["age_scan"], "20-25");
        let w = d.warnings.join("\n");
        assert!(w.contains("sub-00001: mask") && w.contains("T2sel"), "{w}");
        assert!(w.contains("sub-00003: no directory"), "{w}");
        assert!(w.contains("sub-00003: fcd subject without"), "{w}");
    }

    #[test]
    fn bad_tables_name_file_line_and_rule() {
        let dir = tempfile::tempdir().unwrap();
        let tsv = dir.path().join("participants.tsv");
        for (text, needle) in [
            ("participant_id\tsex\nsub-1\tM\n", "missing column `group`"),
            ("participant_id\tgroup\nsub-1\tpatient\n", "line 2: group `patient`"),
            ("participant_id\tgroup\nsub-1\n", "line 2: 1 fields"),
            ("participant_id\tgroup\n01\thc\n", "does not start with `sub-`"),
        ] {
            std::fs::write(&tsv, text).unwrap();
            let err = Dataset::open(dir.path()).unwrap_err().to_string();
            assert!(err.contains("participants.tsv") && err.contains(needle), "{err}");
        }
        let missing = Dataset::open(&dir.path().join("nowhere")).unwrap_err().to_string();
        assert!(missing.contains("nowhere/participants.tsv"), "{missing}");
    }
}
