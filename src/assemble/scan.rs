//! Files → parsed instances: listing files under paths, reading them (whole or headers only)
//! into [`Source`]s, and grouping instances by series.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_object::OpenFileOptions;
use rayon::prelude::*;

use super::{AssembleError, Source, text};

/// Every regular file under `paths`, sorted (DICOMDIR files excluded).
pub fn list_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, AssembleError> {
    let mut files = Vec::new();
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(path) = stack.pop() {
        let meta = std::fs::metadata(&path).map_err(|source| AssembleError::Io {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            let entries = std::fs::read_dir(&path).map_err(|source| AssembleError::Io {
                path: path.clone(),
                source,
            })?;
            for entry in entries {
                let entry = entry.map_err(|source| AssembleError::Io {
                    path: path.clone(),
                    source,
                })?;
                stack.push(entry.path());
            }
        } else if path.file_name().is_some_and(|n| n != "DICOMDIR") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Parses files in parallel; the first unreadable one is the error. With `headers_only`, reading
/// stops before Pixel Data (enough for [`plan_series`](super::plan_series)).
pub fn read_files(files: &[PathBuf], headers_only: bool) -> Result<Vec<Source>, AssembleError> {
    files
        .par_iter()
        .map(|path| {
            let options = OpenFileOptions::new();
            let options = if headers_only {
                options.read_until(tags::PIXEL_DATA)
            } else {
                options
            };
            options
                .open_file(path)
                .map(|object| Source {
                    label: path.display().to_string(),
                    object,
                })
                .map_err(|source| AssembleError::Read {
                    path: path.clone(),
                    source: Box::new(source),
                })
        })
        .collect()
}

/// DICOM headers found under some paths, grouped by series, and the files that were skipped.
pub struct Scan {
    /// Series Instance UID → its instances (headers only, no pixel data).
    pub series: BTreeMap<String, Vec<Source>>,
    /// Files left out, each with the reason (not DICOM, unreadable, no Series Instance UID).
    pub skipped: Vec<String>,
}

/// Reads the headers of every DICOM file under `paths`; a bad file is reported in
/// [`Scan::skipped`] and the scan goes on.
pub fn scan(paths: &[PathBuf]) -> Result<Scan, AssembleError> {
    let files = list_files(paths)?;
    let results: Vec<Result<Source, AssembleError>> = files
        .par_iter()
        .map(|path| {
            if !is_dicom_file(path) {
                return Err(AssembleError::NotDicom { path: path.clone() });
            }
            read_files(std::slice::from_ref(path), true).map(|mut v| v.remove(0))
        })
        .collect();
    let mut series: BTreeMap<String, Vec<Source>> = BTreeMap::new();
    let mut skipped = Vec::new();
    for r in results {
        match r {
            Ok(source) => match text(&source.object, tags::SERIES_INSTANCE_UID) {
                Some(uid) => series.entry(uid).or_default().push(source),
                None => skipped.push(format!("{}: no Series Instance UID (0020,000E)", source.label)),
            },
            Err(e) => skipped.push(e.to_string()),
        }
    }
    Ok(Scan { series, skipped })
}

/// Groups instances by Series Instance UID (in UID order).
pub fn group_by_series(sources: Vec<Source>) -> Result<BTreeMap<String, Vec<Source>>, AssembleError> {
    let mut series: BTreeMap<String, Vec<Source>> = BTreeMap::new();
    for s in sources {
        let uid = text(&s.object, tags::SERIES_INSTANCE_UID).ok_or_else(|| AssembleError::MissingAttribute {
            series_uid: "?".into(),
            source_label: s.label.clone(),
            attribute: "Series Instance UID (0020,000E)",
        })?;
        series.entry(uid).or_default().push(s);
    }
    Ok(series)
}

/// `true` when `path` looks like a DICOM Part 10 file (the `DICM` magic after the preamble).
pub fn is_dicom_file(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 132];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map(|_| &head[128..] == b"DICM")
        .unwrap_or(false)
}
