//! The patient and study a job is about, for the console's pages. The job database keeps UIDs
//! only, so these come from the header of one of the job's files (an input instance, or its SR
//! once retention has removed the inputs), read once per job and kept in memory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use dicom_dictionary_std::tags;
use dicom_object::OpenFileOptions;

use crate::dicom_build::get_str;
use crate::report::{date_text, person_name_text};
use crate::spool::db::JobRow;

/// Jobs whose facts are kept; the cache starts over beyond this.
const CACHED_JOBS: usize = 4096;

/// What a reader recognises a study by. Empty strings where the header has nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StudyFacts {
    /// Patient's Name, `Family, Given` (from `Family^Given`).
    pub patient_name: String,
    /// Patient ID.
    pub patient_id: String,
    /// Accession Number.
    pub accession_number: String,
    /// Study Date as `YYYY-MM-DD` (as stored when it is not 8 digits).
    pub study_date: String,
    /// Study Description.
    pub study_description: String,
}

impl StudyFacts {
    fn read(path: &std::path::Path) -> Option<Self> {
        let header = OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .open_file(path)
            .ok()?;
        let text = |tag| get_str(&header, tag).unwrap_or_default();
        Some(Self {
            patient_name: person_name_text(&text(tags::PATIENT_NAME)),
            patient_id: text(tags::PATIENT_ID),
            accession_number: text(tags::ACCESSION_NUMBER),
            study_date: date_text(&text(tags::STUDY_DATE)),
            study_description: text(tags::STUDY_DESCRIPTION),
        })
    }
}

/// Facts per job id.
#[derive(Default)]
pub struct StudyCache(Mutex<HashMap<i64, StudyFacts>>);

impl StudyCache {
    /// The facts of `job` (blocking: may read a file header). Unknown facts are empty and not
    /// cached, so a job whose files appear later is read again.
    pub fn facts(&self, job: &JobRow, sr_file: Option<PathBuf>) -> StudyFacts {
        if let Some(facts) = self.0.lock().unwrap_or_else(|p| p.into_inner()).get(&job.id) {
            return facts.clone();
        }
        let candidates = job
            .inputs
            .iter()
            .filter_map(|c| c.files.first().cloned())
            .chain(sr_file);
        let Some(facts) = candidates.filter(|p| p.is_file()).find_map(|p| StudyFacts::read(&p)) else {
            return StudyFacts::default();
        };
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHED_JOBS {
            cache.clear();
        }
        cache.insert(job.id, facts.clone());
        facts
    }
}
