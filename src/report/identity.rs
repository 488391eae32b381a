//! What makes each output unique and dated: new UIDs (UUID-derived or under a configured root)
//! and the content date and time.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Content date and time written into the outputs (`YYYYMMDD`, `HHMMSS`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timestamp {
    /// DICOM DA.
    pub date: String,
    /// DICOM TM.
    pub time: String,
}

impl Timestamp {
    /// The current UTC time.
    pub fn now_utc() -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let (y, m, d) = civil_from_days(days);
        Self {
            date: format!("{y:04}{m:02}{d:02}"),
            time: format!("{:02}{:02}{:02}", rem / 3600, (rem % 3600) / 60, rem % 60),
        }
    }
}

/// The current UTC time as an RFC 3339 / `xsd:dateTime` string with milliseconds
/// (`2026-12-03T19:20:00.123Z`), for audit messages and syslog headers.
pub fn rfc3339_utc_now() -> String {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (date, time) = utc_date_time(since.as_secs());
    format!("{date}T{time}.{:03}Z", since.subsec_millis())
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`, for people.
pub fn utc_text(unix_secs: f64) -> String {
    let (date, time) = utc_date_time(unix_secs.max(0.0) as u64);
    format!("{date} {time} UTC")
}

/// Unix seconds as (`YYYY-MM-DD`, `HH:MM:SS`) in UTC.
fn utc_date_time(secs: u64) -> (String, String) {
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    (
        format!("{y:04}-{m:02}-{d:02}"),
        format!("{:02}:{:02}:{:02}", rem / 3600, (rem % 3600) / 60, rem % 60),
    )
}

/// A DICOM person name (`Family^Given^Middle^Prefix^Suffix`, first component group) as people
/// write it: `Family, Given Middle`.
pub fn person_name_text(pn: &str) -> String {
    let alphabetic = pn.split('=').next().unwrap_or("");
    let parts: Vec<&str> = alphabetic.split('^').map(str::trim).collect();
    let family = parts.first().copied().unwrap_or("");
    let given: Vec<&str> = parts
        .iter()
        .skip(1)
        .take(2)
        .copied()
        .filter(|p| !p.is_empty())
        .collect();
    match (family.is_empty(), given.is_empty()) {
        (_, true) => family.to_owned(),
        (true, false) => given.join(" "),
        (false, false) => format!("{family}, {}", given.join(" ")),
    }
}

/// A DICOM date (`YYYYMMDD`) as `YYYY-MM-DD` (ISO 8601, also a FHIR date); other text as is.
pub fn date_text(da: &str) -> String {
    if da.len() == 8 && da.bytes().all(|b| b.is_ascii_digit()) {
        format!("{}-{}-{}", &da[..4], &da[4..6], &da[6..])
    } else {
        da.to_owned()
    }
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Source of new UIDs: `2.25.<u128>` (UUID-derived) by default, or `<root>.<decimal>` under a
/// configured root, drawn from a generator seeded by the OS, a test's seed or a job's key.
#[derive(Clone)]
pub struct UidGenerator {
    root: Option<String>,
    rng: ChaCha8Rng,
}

impl UidGenerator {
    /// UIDs `2.25.<u128>` from OS entropy.
    pub fn random() -> Self {
        Self {
            root: None,
            rng: ChaCha8Rng::from_os_rng(),
        }
    }
    /// UIDs `2.25.<u128>` from a seed: the same seed gives the same UIDs.
    pub fn seeded(seed: u64) -> Self {
        Self {
            root: None,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }
    /// UIDs `2.25.<u128>` from a 256-bit key (a job's, kept in the job database): a rerun of
    /// the job draws the same UIDs, so objects it remakes keep the UIDs an SR already sent named.
    pub fn keyed(key: [u8; 32]) -> Self {
        Self {
            root: None,
            rng: ChaCha8Rng::from_seed(key),
        }
    }
    /// A generator of its own for one output (same root), keyed from this one: however many
    /// UIDs one output draws, the next output's generator is the same.
    pub fn fork(&mut self) -> Self {
        Self {
            root: self.root.clone(),
            rng: ChaCha8Rng::from_seed(self.rng.random()),
        }
    }
    /// The UIDs of a new series of `instances` instances: a maker draws them first, so that a
    /// clone of its generator tells the SR what it will make before it is made.
    pub fn new_series(&mut self, instances: usize) -> NewSeriesUids {
        NewSeriesUids {
            series: self.next_uid(),
            instances: (0..instances).map(|_| self.next_uid()).collect(),
        }
    }
    /// Series and instance UID of a new one-instance series, drawn as `new_series(1)` draws them.
    pub fn new_single(&mut self) -> (String, String) {
        let series = self.next_uid();
        (series, self.next_uid())
    }
    /// UIDs under `root` (an organisation root, at most 40 characters so that a suffix fits).
    pub fn with_root(mut self, root: impl Into<String>) -> Self {
        let root = root.into();
        self.root = (!root.is_empty()).then_some(root);
        self
    }
    /// A new UID (at most 64 characters).
    pub fn next_uid(&mut self) -> String {
        match &self.root {
            None => format!("2.25.{}", self.rng.random::<u128>()),
            Some(root) => {
                let room = 64usize.saturating_sub(root.len() + 1).clamp(1, 38);
                let digits = self.rng.random::<u128>().to_string();
                let suffix = digits[..room.min(digits.len())].trim_start_matches('0');
                let suffix = if suffix.is_empty() { "1" } else { suffix };
                format!("{root}.{suffix}")
            }
        }
    }
}

/// A new series' UIDs, drawn before its instances are made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewSeriesUids {
    /// Series Instance UID.
    pub series: String,
    /// SOP Instance UIDs, in instance order.
    pub instances: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(utc_text(19_782.0 * 86_400.0 + 3_725.9), "2024-02-29 01:02:05 UTC");
    }

    #[test]
    fn names_and_dates_read_as_people_write_them() {
        assert_eq!(person_name_text("Doe^Jane^Q"), "Doe, Jane Q");
        assert_eq!(person_name_text("Doe"), "Doe");
        assert_eq!(person_name_text("^Jane"), "Jane");
        assert_eq!(person_name_text("Yamada^Tarou=山田^太郎"), "Yamada, Tarou");
        assert_eq!(person_name_text(""), "");
        assert_eq!(date_text("20261203"), "2026-12-03");
        assert_eq!(date_text("2026"), "2026");
        let now = Timestamp::now_utc();
        assert_eq!(now.date.len(), 8);
        assert_eq!(now.time.len(), 6);
    }

    #[test]
    fn uids_are_valid_and_reproducible() {
        let mut a = UidGenerator::seeded(5);
        let mut b = UidGenerator::seeded(5);
        let (x, y) = (a.next_uid(), b.next_uid());
        assert_eq!(x, y);
        assert_ne!(x, a.next_uid());
        let (mut c, mut d) = (UidGenerator::keyed([9; 32]), UidGenerator::keyed([9; 32]));
        let (mut fc, mut fd) = (c.fork(), d.fork());
        assert_eq!(fc.new_series(3), fd.new_series(3));
        let ids = fc.clone().new_series(1);
        assert_eq!(fc.new_single(), (ids.series, ids.instances[0].clone()));
        assert_eq!(c.next_uid(), d.next_uid());
        assert_ne!(fc.next_uid(), c.next_uid());
        let mut rooted = UidGenerator::seeded(1).with_root("1.2.826.0.1.3680043.10.1234");
        for _ in 0..100 {
            let uid = rooted.next_uid();
            assert!(uid.len() <= 64, "{uid}");
            assert!(
                uid.split('.')
                    .all(|c| !c.is_empty() && (c == "0" || !c.starts_with('0'))),
                "{uid}"
            );
        }
    }
}
