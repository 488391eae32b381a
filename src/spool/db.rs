//! The job database: SQLite in WAL mode with `synchronous=FULL`, so a row committed before a
//! C-STORE-RSP survives a crash. It records instances, series (with their completion state),
//! jobs (with their state machine) and deliveries (one row per result file and destination).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};

use super::bell::Bells;

/// A series with instances the tracker has not handled yet (new, or reopened by a late one).
const UNHANDLED: &str = "handled_generation IS NULL OR handled_generation < generation";
use crate::assemble::{InstanceHeader, Plan};
use crate::tracker::routing::ChannelSeries;

/// Why the job database failed.
#[derive(Debug, thiserror::Error)]
#[error("job database {path}: {source}")]
pub struct DbError {
    path: PathBuf,
    #[source]
    source: rusqlite::Error,
}

/// Seconds since the Unix epoch, as stored in the database.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Where a job is. Stored as the lowercase name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Created from complete series; waiting for a worker.
    Received,
    /// Series read and assembled into volumes.
    Assembled,
    /// Model run and heatmap computed; the outputs are being made, and once the SR is written
    /// its deliveries are queued ahead of the rest.
    Inferred,
    /// Every output and result.json written; every delivery queued.
    Reported,
    /// Every delivery acknowledged (or there was nowhere to deliver).
    Delivered,
    /// Stopped with a reason; other jobs go on.
    Failed,
    /// A delivery hit a permanent fault or ran out of retries.
    Undeliverable,
}

impl JobState {
    /// Every state, for metrics.
    pub const ALL: [JobState; 7] = [
        JobState::Received,
        JobState::Assembled,
        JobState::Inferred,
        JobState::Reported,
        JobState::Delivered,
        JobState::Failed,
        JobState::Undeliverable,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Received => "received",
            JobState::Assembled => "assembled",
            JobState::Inferred => "inferred",
            JobState::Reported => "reported",
            JobState::Delivered => "delivered",
            JobState::Failed => "failed",
            JobState::Undeliverable => "undeliverable",
        }
    }

    fn parse(s: &str) -> JobState {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .unwrap_or(JobState::Failed)
    }
}

/// A series the tracker follows.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SeriesRow {
    /// Series Instance UID.
    pub series_uid: String,
    /// Study Instance UID.
    pub study_uid: String,
    /// Calling AE of the association that sent the latest instance.
    pub calling_ae: String,
    /// Directory holding the series' files.
    pub dir: PathBuf,
    /// Instances stored.
    pub instances: i64,
    /// When the last instance arrived.
    pub last_received_at: f64,
    /// Bumped when an instance arrives after the series was handled: the series is reopened.
    pub generation: i64,
    /// The generation the tracker last handled; `None` while never handled.
    pub handled_generation: Option<i64>,
    /// Model channel the router chose at the last handling (`None`: ignored or not handled).
    pub channel: Option<String>,
    /// Slices of the main stack, measured when it was routed to a channel.
    pub slices: Option<usize>,
    /// Why routing chose that channel or ignored the series (or why it could not be read).
    pub routing: Option<String>,
}

/// One job: a study's series run through the pipeline.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct JobRow {
    /// Job id.
    pub id: i64,
    /// Study Instance UID.
    pub study_uid: String,
    /// Series per model channel, in the model's channel order.
    pub series: Vec<String>,
    /// What the tracker chose for each channel: series and instance files, in channel order.
    #[serde(skip)]
    pub inputs: Vec<ChannelSeries>,
    /// Calling AE of the sender.
    pub calling_ae: String,
    /// Where it is.
    pub state: JobState,
    /// Why it failed, or what the last step said.
    pub reason: Option<String>,
    /// For a failed job: the stage and series that failed, and the full error chain.
    pub failure: Option<JobFailure>,
    /// The job this one replaces (late instances reopened the series).
    pub supersedes: Option<i64>,
    /// Directory with SC, SR, preview and result.json.
    pub result_dir: Option<PathBuf>,
    /// Times the pipeline started on it (a restart in the middle counts).
    pub attempts: i64,
    /// Created at (Unix seconds).
    pub created_at: f64,
    /// Last state change (Unix seconds).
    pub updated_at: f64,
    /// The key its outputs' UIDs are drawn from, random and made with the job: a rerun after a
    /// crash draws the same UIDs (`None` only if the stored key is not 32 bytes).
    #[serde(skip)]
    pub uid_key: Option<[u8; 32]>,
}

/// Where and why a job failed, as stored with it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JobFailure {
    /// The stage that failed (`route`, `assemble`, `preprocess`, `infer`, `explain`, `report`, …).
    pub stage: String,
    /// The series being processed, when one is known.
    pub series_uid: Option<String>,
    /// The error and its causes, outermost first.
    pub message: String,
}

/// Delivery state of one result file to one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Waiting for its next attempt.
    Pending,
    /// Acknowledged by the destination.
    Delivered,
    /// Permanent fault or retries exhausted: kept for an operator, never resent on its own.
    Dead,
}

impl DeliveryState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
        }
    }

    fn parse(s: &str) -> DeliveryState {
        match s {
            "pending" => DeliveryState::Pending,
            "delivered" => DeliveryState::Delivered,
            _ => DeliveryState::Dead,
        }
    }
}

/// One result file bound for one destination.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DeliveryRow {
    /// Row id.
    pub id: i64,
    /// The job that produced the file.
    pub job_id: i64,
    /// Destination name from the configuration.
    pub destination: String,
    /// The file to send.
    pub path: PathBuf,
    /// Where it is.
    pub state: DeliveryState,
    /// Attempts made.
    pub attempts: i64,
    /// Earliest time of the next attempt (Unix seconds).
    pub next_attempt_at: f64,
    /// The last fault, if any.
    pub last_error: Option<String>,
}

/// What a failed job had sent ahead of its other outputs (its SR and notifications).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailedAhead {
    /// Deliveries withdrawn (marked dead) before they were sent.
    pub withdrawn: usize,
    /// Deliveries that had already reached their destination.
    pub delivered: usize,
}

/// A job whose last pending delivery was just settled: it is now final.
#[derive(Clone, Debug, PartialEq)]
pub struct JobSettled {
    /// The job.
    pub job_id: i64,
    /// `Delivered` or `Undeliverable`.
    pub state: JobState,
    /// Seconds from the last instance of the job's series stored (its C-STORE-RSP) to this
    /// settlement, as `fcdnode bench node` measures turnaround from outside; `None` when those
    /// instances are gone (retention).
    pub turnaround_s: Option<f64>,
}

/// What [`JobDb::resend_delivery`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requeue {
    /// Queued again; the job it belongs to.
    Requeued { job_id: i64 },
    /// Only dead letters are resent by hand; this one is in another state.
    NotDead(DeliveryState),
    /// No delivery with that id.
    NoSuchDelivery,
}

/// What [`JobDb::rerun_job`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rerun {
    /// The new job's id.
    Created(i64),
    /// The job is still on its way; it cannot be run twice at once.
    NotFinished(JobState),
    /// The job never had input series (it failed before it was routed).
    NoInputs,
    /// No job with that id.
    NoSuchJob,
}

/// Result of recording an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// New instance.
    New,
    /// The SOP Instance UID was already there.
    Duplicate,
}

/// Facts of a stored instance.
pub struct InstanceRecord<'a> {
    /// SOP Instance UID.
    pub sop_uid: &'a str,
    /// Series Instance UID.
    pub series_uid: &'a str,
    /// Study Instance UID.
    pub study_uid: &'a str,
    /// Stored file.
    pub path: &'a Path,
    /// Series directory.
    pub series_dir: &'a Path,
    /// Calling AE.
    pub calling_ae: &'a str,
    /// File size in bytes.
    pub size: u64,
    /// What its header says for planning, read once here.
    pub header: &'a StoredHeader,
    /// Whether the commit is synced before the call returns. `false` for an instance in the
    /// spool's journal: its replay restores the row should a power cut lose the commit, and
    /// the journal's retirement syncs it with the rest of the volume.
    pub synced: bool,
}

/// What ingest read from an instance's header for planning the series, or why it could not:
/// stored with the instance so the tracker never parses the file again.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredHeader {
    /// The planning facts.
    Usable(Box<InstanceHeader>),
    /// Why the header cannot be planned from (the series will be reported not usable).
    Unusable {
        /// The error, naming the attribute and the rule.
        reason: String,
    },
}

/// A stored instance of a series: its file and the header facts ingest recorded (`None` for
/// instances stored before the node recorded them).
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesInstance {
    /// The stored file.
    pub path: PathBuf,
    /// The header facts, when recorded.
    pub header: Option<StoredHeader>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY, series_uid TEXT NOT NULL, study_uid TEXT NOT NULL,
    path TEXT NOT NULL, calling_ae TEXT NOT NULL, size INTEGER NOT NULL, received_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL, calling_ae TEXT NOT NULL, dir TEXT NOT NULL,
    instances INTEGER NOT NULL, last_received_at REAL NOT NULL, generation INTEGER NOT NULL,
    handled_generation INTEGER, channel TEXT);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY, study_uid TEXT NOT NULL, series TEXT NOT NULL, calling_ae TEXT NOT NULL,
    state TEXT NOT NULL, reason TEXT, supersedes INTEGER, result_dir TEXT, attempts INTEGER NOT NULL,
    claimed INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL, destination TEXT NOT NULL, path TEXT NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL, next_attempt_at REAL NOT NULL, last_error TEXT,
    UNIQUE (job_id, destination, path));
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE INDEX IF NOT EXISTS instances_series ON instances (series_uid);
CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries (state, next_attempt_at);
";

/// Inserts a job's deliveries, pending now; one already queued stays as it is.
fn insert_deliveries(
    tx: &rusqlite::Transaction<'_>,
    job_id: i64,
    deliveries: &[(String, PathBuf)],
) -> rusqlite::Result<()> {
    let now = now();
    for (destination, file) in deliveries {
        tx.execute(
            "INSERT OR IGNORE INTO deliveries (job_id, destination, path, state, attempts, next_attempt_at)
             VALUES (?1, ?2, ?3, 'pending', 0, ?4)",
            params![job_id, destination, file.to_string_lossy(), now],
        )?;
    }
    Ok(())
}

/// Settles a reported job none of whose deliveries is pending: `delivered` (all acknowledged)
/// or `undeliverable` (some dead). A job still being made (its SR sent ahead) or failed is
/// left as it is.
fn settle_if_done(tx: &rusqlite::Transaction<'_>, job_id: i64) -> rusqlite::Result<Option<JobSettled>> {
    let state: String = tx.query_row("SELECT state FROM jobs WHERE id = ?1", [job_id], |r| r.get(0))?;
    if JobState::parse(&state) != JobState::Reported {
        return Ok(None);
    }
    let (pending, dead): (i64, i64) = tx.query_row(
        "SELECT COALESCE(SUM(state = 'pending'), 0), COALESCE(SUM(state = 'dead'), 0) FROM deliveries WHERE job_id = ?1",
        [job_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    if pending > 0 {
        return Ok(None);
    }
    let (job_state, reason) = if dead > 0 {
        (
            JobState::Undeliverable,
            Some(format!("{dead} result file(s) could not be delivered")),
        )
    } else {
        (JobState::Delivered, None)
    };
    let now = now();
    tx.execute(
        "UPDATE jobs SET state = ?2, reason = COALESCE(?3, reason), updated_at = ?4 WHERE id = ?1",
        params![job_id, job_state.as_str(), reason, now],
    )?;
    // The job's input: its series' instances stored before it was created (a late instance
    // belongs to the next job).
    let last_received: Option<f64> = tx.query_row(
        "SELECT MAX(i.received_at) FROM jobs j, json_each(j.series) s
         JOIN instances i ON i.series_uid = s.value
         WHERE j.id = ?1 AND i.received_at <= j.created_at",
        [job_id],
        |r| r.get(0),
    )?;
    Ok(Some(JobSettled {
        job_id,
        state: job_state,
        turnaround_s: last_received.map(|t| now - t),
    }))
}

/// A JSON text column (`NULL` → `None`); text that does not parse is a conversion error, not
/// a silent default.
fn json_column<T: serde::de::DeserializeOwned>(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<Option<T>> {
    row.get::<_, Option<String>>(index)?
        .map(|text| {
            serde_json::from_str(&text)
                .map_err(|e| rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(e)))
        })
        .transpose()
}

/// The job database; one connection behind a mutex (writes are short).
pub struct JobDb {
    path: PathBuf,
    conn: Mutex<Connection>,
    bells: Bells,
}

impl JobDb {
    /// Opens (or creates) the database at `path` in WAL mode with `synchronous=FULL`.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let err = |source| DbError {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        // Columns added after the first release; a database made before gains them empty.
        for (table, column, decl) in [
            ("series", "slices", "INTEGER"),
            ("series", "routing", "TEXT"),
            ("jobs", "inputs", "TEXT"),
            ("jobs", "failure", "TEXT"),
            ("instances", "header", "TEXT"),
            ("series", "plan", "TEXT"),
            ("jobs", "uid_key", "BLOB"),
        ] {
            let present: bool = conn
                .query_row(
                    &format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = ?1"),
                    [column],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(err)?
                > 0;
            if !present {
                conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))
                    .map_err(err)?;
            }
        }
        // Every job draws its outputs' UIDs from a key of its own (SQLite's randomness comes
        // from the OS); a job made before keys existed gets one now, before it can run again.
        conn.execute_batch("UPDATE jobs SET uid_key = randomblob(32) WHERE uid_key IS NULL")
            .map_err(err)?;
        Ok(Self {
            path: path.to_owned(),
            conn: Mutex::new(conn),
            bells: Bells::default(),
        })
    }

    /// The bells this database rings after each commit that queues work.
    pub fn bells(&self) -> &Bells {
        &self.bells
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (statements are atomic).
        self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn err(&self, source: rusqlite::Error) -> DbError {
        DbError {
            path: self.path.clone(),
            source,
        }
    }

    /// Whether an instance is already stored.
    pub fn has_instance(&self, sop_uid: &str) -> Result<bool, DbError> {
        self.conn()
            .query_row("SELECT 1 FROM instances WHERE sop_uid = ?1", [sop_uid], |_| Ok(()))
            .optional()
            .map(|r| r.is_some())
            .map_err(|e| self.err(e))
    }

    /// Records a stored instance and touches its series; an instance for a series the tracker
    /// already handled reopens it (new generation).
    pub fn record_instance(&self, rec: &InstanceRecord<'_>) -> Result<Recorded, DbError> {
        let now = now();
        let mut conn = self.conn();
        if !rec.synced {
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(|e| self.err(e))?;
        }
        let recorded = self.insert_instance(&mut conn, rec, now);
        if !rec.synced {
            // Every other commit stays synced. The insert's outcome stands either way: it is
            // committed or not already.
            if let Err(e) = conn.pragma_update(None, "synchronous", "FULL") {
                tracing::error!(path = %self.path.display(), "cannot set synchronous=FULL again: {e}");
            }
        }
        let recorded = recorded?;
        drop(conn);
        if recorded == Recorded::New {
            self.bells.instances.ring();
        }
        Ok(recorded)
    }

    fn insert_instance(&self, conn: &mut Connection, rec: &InstanceRecord<'_>, now: f64) -> Result<Recorded, DbError> {
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let inserted = tx
            .execute(
                "INSERT OR IGNORE INTO instances (sop_uid, series_uid, study_uid, path, calling_ae, size, received_at,
                                                  header)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    rec.sop_uid,
                    rec.series_uid,
                    rec.study_uid,
                    rec.path.to_string_lossy(),
                    rec.calling_ae,
                    rec.size as i64,
                    now,
                    serde_json::to_string(rec.header).unwrap_or_default()
                ],
            )
            .map_err(|e| self.err(e))?;
        if inserted == 0 {
            return Ok(Recorded::Duplicate);
        }
        tx.execute(
            "INSERT INTO series (series_uid, study_uid, calling_ae, dir, instances, last_received_at, generation)
             VALUES (?1, ?2, ?3, ?4, 1, ?5, 0)
             ON CONFLICT (series_uid) DO UPDATE SET
                instances = instances + 1, last_received_at = ?5, calling_ae = ?3,
                generation = CASE WHEN handled_generation = generation THEN generation + 1 ELSE generation END",
            params![
                rec.series_uid,
                rec.study_uid,
                rec.calling_ae,
                rec.series_dir.to_string_lossy(),
                now
            ],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(Recorded::New)
    }

    /// Series with unhandled instances whose last instance is older than `stable_before`.
    pub fn stable_series(&self, stable_before: f64) -> Result<Vec<SeriesRow>, DbError> {
        self.select_series(
            &format!("WHERE ({UNHANDLED}) AND last_received_at <= ?1"),
            params![stable_before],
        )
    }

    /// When the earliest series with unhandled instances got its last one: it becomes stable
    /// a stable age later. `None` when every series is handled.
    pub fn oldest_unhandled_at(&self) -> Result<Option<f64>, DbError> {
        self.conn()
            .query_row(
                &format!("SELECT MIN(last_received_at) FROM series WHERE {UNHANDLED}"),
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// Handled series of a study that feed a model channel.
    pub fn channel_series(&self, study_uid: &str) -> Result<Vec<SeriesRow>, DbError> {
        self.select_series(
            "WHERE study_uid = ?1 AND channel IS NOT NULL AND handled_generation = generation",
            params![study_uid],
        )
    }

    /// Studies with channel series but no job yet: after a restart the tracker waits for their
    /// missing channels again.
    pub fn studies_without_job(&self) -> Result<Vec<String>, DbError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT DISTINCT study_uid FROM series WHERE channel IS NOT NULL
                 AND study_uid NOT IN (SELECT study_uid FROM jobs)",
            )
            .map_err(|e| self.err(e))?;
        stmt.query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.err(e))
    }

    /// The stored instance files of a series, in path order.
    pub fn series_files(&self, series_uid: &str) -> Result<Vec<PathBuf>, DbError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT path FROM instances WHERE series_uid = ?1 ORDER BY path")
            .map_err(|e| self.err(e))?;
        stmt.query_map([series_uid], |r| Ok(PathBuf::from(r.get::<_, String>(0)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.err(e))
    }

    /// The stored instances of a series with their header facts, in path order.
    pub fn series_instances(&self, series_uid: &str) -> Result<Vec<SeriesInstance>, DbError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT path, header FROM instances WHERE series_uid = ?1 ORDER BY path")
            .map_err(|e| self.err(e))?;
        stmt.query_map([series_uid], |r| {
            Ok(SeriesInstance {
                path: PathBuf::from(r.get::<_, String>(0)?),
                header: json_column(r, 1)?,
            })
        })
        .and_then(|rows| rows.collect())
        .map_err(|e| self.err(e))
    }

    /// The plan the tracker stored when it routed the series to a channel (`None`: not routed,
    /// or routed before plans were stored).
    pub fn series_plan(&self, series_uid: &str) -> Result<Option<Plan>, DbError> {
        self.conn()
            .query_row("SELECT plan FROM series WHERE series_uid = ?1", [series_uid], |r| {
                json_column(r, 0)
            })
            .optional()
            .map(Option::flatten)
            .map_err(|e| self.err(e))
    }

    /// One series.
    pub fn series(&self, series_uid: &str) -> Result<Option<SeriesRow>, DbError> {
        Ok(self
            .select_series("WHERE series_uid = ?1", params![series_uid])?
            .into_iter()
            .next())
    }

    fn select_series(&self, filter: &str, args: impl rusqlite::Params) -> Result<Vec<SeriesRow>, DbError> {
        let conn = self.conn();
        let sql = format!(
            "SELECT series_uid, study_uid, calling_ae, dir, instances, last_received_at, generation, \
             handled_generation, channel, slices, routing FROM series {filter} ORDER BY last_received_at"
        );
        let mut stmt = conn.prepare(&sql).map_err(|e| self.err(e))?;
        stmt.query_map(args, |r| {
            Ok(SeriesRow {
                series_uid: r.get(0)?,
                study_uid: r.get(1)?,
                calling_ae: r.get(2)?,
                dir: PathBuf::from(r.get::<_, String>(3)?),
                instances: r.get(4)?,
                last_received_at: r.get(5)?,
                generation: r.get(6)?,
                handled_generation: r.get(7)?,
                channel: r.get(8)?,
                slices: r.get::<_, Option<i64>>(9)?.map(|n| n.max(0) as usize),
                routing: r.get(10)?,
            })
        })
        .and_then(|rows| rows.collect())
        .map_err(|e| self.err(e))
    }

    /// Marks a series generation handled with routing's verdict: the channel and the plan of
    /// its main stack (`None`: ignored), and why.
    pub fn mark_handled(
        &self,
        series_uid: &str,
        generation: i64,
        routed: Option<(String, &Plan)>,
        reason: &str,
    ) -> Result<(), DbError> {
        let (channel, slices, plan) = match routed {
            Some((c, plan)) => (
                Some(c),
                Some(plan.shape()[2] as i64),
                Some(serde_json::to_string(plan).unwrap_or_default()),
            ),
            None => (None, None, None),
        };
        self.conn()
            .execute(
                "UPDATE series SET handled_generation = ?2, channel = ?3, slices = ?4, routing = ?5, plan = ?6
                 WHERE series_uid = ?1",
                params![series_uid, generation, channel, slices, reason, plan],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Creates a job in state `received` for the series chosen per channel, superseding the
    /// latest job on the same primary series.
    pub fn create_job(&self, study_uid: &str, inputs: &[ChannelSeries], calling_ae: &str) -> Result<i64, DbError> {
        self.insert_job(study_uid, inputs, calling_ae, JobState::Received, None)
    }

    /// Records a job that could not be created from its study (a missing channel), as failed.
    pub fn create_failed_job(
        &self,
        study_uid: &str,
        inputs: &[ChannelSeries],
        calling_ae: &str,
        failure: &JobFailure,
    ) -> Result<i64, DbError> {
        self.insert_job(study_uid, inputs, calling_ae, JobState::Failed, Some(failure))
    }

    fn insert_job(
        &self,
        study_uid: &str,
        inputs: &[ChannelSeries],
        calling_ae: &str,
        state: JobState,
        failure: Option<&JobFailure>,
    ) -> Result<i64, DbError> {
        let now = now();
        let series: Vec<&str> = inputs.iter().map(|c| c.series_uid.as_str()).collect();
        let series_json = serde_json::to_string(&series).unwrap_or_default();
        let inputs_json = serde_json::to_string(inputs).unwrap_or_default();
        let failure_json = failure.map(|f| serde_json::to_string(f).unwrap_or_default());
        let reason = failure.map(|f| f.message.as_str());
        let conn = self.conn();
        let supersedes: Option<i64> = match series.first() {
            Some(primary) => conn
                .query_row(
                    "SELECT id FROM jobs WHERE study_uid = ?1 AND json_extract(series, '$[0]') = ?2
                     ORDER BY id DESC LIMIT 1",
                    params![study_uid, primary],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| self.err(e))?,
            None => None,
        };
        conn.execute(
            "INSERT INTO jobs (study_uid, series, calling_ae, state, reason, supersedes, attempts, created_at, updated_at,
                               inputs, failure, uid_key)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?7, ?8, ?9, randomblob(32))",
            params![
                study_uid,
                series_json,
                calling_ae,
                state.as_str(),
                reason,
                supersedes,
                now,
                inputs_json,
                failure_json
            ],
        )
        .map_err(|e| self.err(e))?;
        let id = conn.last_insert_rowid();
        drop(conn);
        if state == JobState::Received {
            self.bells.jobs.ring();
        }
        Ok(id)
    }

    /// Moves a job to `state`, with an optional reason.
    pub fn set_state(&self, id: i64, state: JobState, reason: Option<&str>) -> Result<(), DbError> {
        self.conn()
            .execute(
                "UPDATE jobs SET state = ?2, reason = COALESCE(?3, reason), updated_at = ?4 WHERE id = ?1",
                params![id, state.as_str(), reason, now()],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Marks a job failed with where and why; deliveries it queued ahead and not yet sent are
    /// withdrawn (dead, with the reason). Returns what it had sent ahead.
    pub fn fail_job(&self, id: i64, failure: &JobFailure) -> Result<FailedAhead, DbError> {
        let failure_json = serde_json::to_string(failure).unwrap_or_default();
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        tx.execute(
            "UPDATE jobs SET state = 'failed', reason = ?2, failure = ?3, updated_at = ?4 WHERE id = ?1",
            params![id, failure.message, failure_json, now()],
        )
        .map_err(|e| self.err(e))?;
        // What went ahead and is not sent yet stays unsent: it would name outputs never made.
        let withdrawn = tx
            .execute(
                "UPDATE deliveries SET state = 'dead', last_error = ?2 WHERE job_id = ?1 AND state = 'pending'",
                params![
                    id,
                    format!(
                        "not sent: the job failed before its other outputs were made ({})",
                        failure.message
                    )
                ],
            )
            .map_err(|e| self.err(e))?;
        let delivered: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM deliveries WHERE job_id = ?1 AND state = 'delivered'",
                [id],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(FailedAhead {
            withdrawn,
            delivered: usize::try_from(delivered).unwrap_or(0),
        })
    }

    /// Takes the oldest job waiting in `received`: marks its attempt and returns it.
    pub fn claim_job(&self) -> Result<Option<JobRow>, DbError> {
        let id: Option<i64> = {
            let conn = self.conn();
            let id = conn
                .query_row(
                    "SELECT id FROM jobs WHERE state = 'received' AND claimed = 0 ORDER BY id LIMIT 1",
                    [],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| self.err(e))?;
            if let Some(id) = id {
                conn.execute(
                    "UPDATE jobs SET claimed = 1, attempts = attempts + 1, updated_at = ?2 WHERE id = ?1",
                    params![id, now()],
                )
                .map_err(|e| self.err(e))?;
            }
            id
        };
        match id {
            Some(id) => self.job(id),
            None => Ok(None),
        }
    }

    /// Counts another attempt of a job the worker runs again without claiming it anew.
    pub fn count_attempt(&self, id: i64) -> Result<(), DbError> {
        self.conn()
            .execute(
                "UPDATE jobs SET attempts = attempts + 1, updated_at = ?2 WHERE id = ?1",
                params![id, now()],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// After a restart: jobs a worker had started but not reported go back to `received`
    /// (the worker discards their partial outputs, or remakes them under the same UIDs when
    /// the SR went ahead). Returns how many.
    pub fn requeue_unfinished(&self) -> Result<usize, DbError> {
        let n = self
            .conn()
            .execute(
                "UPDATE jobs SET state = 'received', claimed = 0, updated_at = ?1
                 WHERE state IN ('received', 'assembled', 'inferred')",
                params![now()],
            )
            .map_err(|e| self.err(e))?;
        if n > 0 {
            self.bells.jobs.ring();
        }
        Ok(n)
    }

    /// Queues deliveries of a job whose other outputs are still being made (its SR and
    /// notifications, sent before the rest) and records its result directory: the outbox takes
    /// them at once; the job stays in its state until [`JobDb::report_job`]. Queuing a delivery
    /// again changes nothing.
    pub fn queue_deliveries(
        &self,
        id: i64,
        result_dir: &Path,
        deliveries: &[(String, PathBuf)],
    ) -> Result<(), DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        tx.execute(
            "UPDATE jobs SET result_dir = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, result_dir.to_string_lossy(), now()],
        )
        .map_err(|e| self.err(e))?;
        insert_deliveries(&tx, id, deliveries).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        drop(conn);
        if !deliveries.is_empty() {
            self.bells.deliveries.ring();
        }
        Ok(())
    }

    /// Marks a job reported with its result directory and queues its deliveries (destination
    /// or notification endpoint, file; those queued before are kept as they are), in one
    /// transaction: a crash leaves either both or neither. A job with nothing left pending
    /// (nothing to deliver, or all of it already sent) is settled at once, and that is returned.
    pub fn report_job(
        &self,
        id: i64,
        result_dir: &Path,
        deliveries: &[(String, PathBuf)],
    ) -> Result<Option<JobSettled>, DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        tx.execute(
            "UPDATE jobs SET state = ?2, result_dir = ?3, updated_at = ?4 WHERE id = ?1",
            params![id, JobState::Reported.as_str(), result_dir.to_string_lossy(), now()],
        )
        .map_err(|e| self.err(e))?;
        insert_deliveries(&tx, id, deliveries).map_err(|e| self.err(e))?;
        let settled = settle_if_done(&tx, id).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        drop(conn);
        if settled.is_none() {
            self.bells.deliveries.ring();
        }
        Ok(settled)
    }

    /// One job.
    pub fn job(&self, id: i64) -> Result<Option<JobRow>, DbError> {
        Ok(self.select_jobs("WHERE id = ?1", params![id])?.into_iter().next())
    }

    /// The latest jobs, newest first.
    pub fn jobs(&self, limit: usize) -> Result<Vec<JobRow>, DbError> {
        self.select_jobs("ORDER BY id DESC LIMIT ?1", params![limit as i64])
    }

    fn select_jobs(&self, tail: &str, args: impl rusqlite::Params) -> Result<Vec<JobRow>, DbError> {
        let conn = self.conn();
        let sql = format!(
            "SELECT id, study_uid, series, calling_ae, state, reason, supersedes, result_dir, attempts, \
             created_at, updated_at, inputs, failure, uid_key FROM jobs {tail}"
        );
        let mut stmt = conn.prepare(&sql).map_err(|e| self.err(e))?;
        stmt.query_map(args, |r| {
            Ok(JobRow {
                id: r.get(0)?,
                study_uid: r.get(1)?,
                series: json_column(r, 2)?.unwrap_or_default(),
                calling_ae: r.get(3)?,
                state: JobState::parse(&r.get::<_, String>(4)?),
                reason: r.get(5)?,
                supersedes: r.get(6)?,
                result_dir: r.get::<_, Option<String>>(7)?.map(PathBuf::from),
                attempts: r.get(8)?,
                created_at: r.get(9)?,
                updated_at: r.get(10)?,
                inputs: json_column(r, 11)?.unwrap_or_default(),
                failure: json_column(r, 12)?,
                uid_key: r
                    .get::<_, Option<Vec<u8>>>(13)?
                    .and_then(|key| <[u8; 32]>::try_from(key).ok()),
            })
        })
        .and_then(|rows| rows.collect())
        .map_err(|e| self.err(e))
    }

    /// Jobs per state, for metrics.
    pub fn job_counts(&self) -> Result<Vec<(JobState, i64)>, DbError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT state, COUNT(*) FROM jobs GROUP BY state")
            .map_err(|e| self.err(e))?;
        stmt.query_map([], |r| Ok((JobState::parse(&r.get::<_, String>(0)?), r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.err(e))
    }

    /// Pending deliveries due by `now`.
    pub fn due_deliveries(&self, now: f64) -> Result<Vec<DeliveryRow>, DbError> {
        self.select_deliveries(
            "WHERE state = 'pending' AND next_attempt_at <= ?1 ORDER BY id",
            params![now],
        )
    }

    /// Deliveries of one job.
    pub fn job_deliveries(&self, job_id: i64) -> Result<Vec<DeliveryRow>, DbError> {
        self.select_deliveries("WHERE job_id = ?1 ORDER BY id", params![job_id])
    }

    /// Deliveries in one state (the dead letters, for the API).
    pub fn deliveries_in(&self, state: DeliveryState) -> Result<Vec<DeliveryRow>, DbError> {
        self.select_deliveries("WHERE state = ?1 ORDER BY id", params![state.as_str()])
    }

    fn select_deliveries(&self, tail: &str, args: impl rusqlite::Params) -> Result<Vec<DeliveryRow>, DbError> {
        let conn = self.conn();
        let sql = format!(
            "SELECT id, job_id, destination, path, state, attempts, next_attempt_at, last_error FROM deliveries {tail}"
        );
        let mut stmt = conn.prepare(&sql).map_err(|e| self.err(e))?;
        stmt.query_map(args, |r| {
            Ok(DeliveryRow {
                id: r.get(0)?,
                job_id: r.get(1)?,
                destination: r.get(2)?,
                path: PathBuf::from(r.get::<_, String>(3)?),
                state: DeliveryState::parse(&r.get::<_, String>(4)?),
                attempts: r.get(5)?,
                next_attempt_at: r.get(6)?,
                last_error: r.get(7)?,
            })
        })
        .and_then(|rows| rows.collect())
        .map_err(|e| self.err(e))
    }

    /// Records the outcome of one delivery attempt; when every delivery of a reported job is
    /// settled, the job becomes `delivered` (all acknowledged) or `undeliverable` (some dead),
    /// and that is returned.
    pub fn settle_delivery(
        &self,
        id: i64,
        state: DeliveryState,
        next_attempt_at: f64,
        error: Option<&str>,
    ) -> Result<Option<JobSettled>, DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        tx.execute(
            "UPDATE deliveries SET state = ?2, attempts = attempts + 1, next_attempt_at = ?3, last_error = ?4
             WHERE id = ?1",
            params![id, state.as_str(), next_attempt_at, error],
        )
        .map_err(|e| self.err(e))?;
        let job_id: i64 = tx
            .query_row("SELECT job_id FROM deliveries WHERE id = ?1", [id], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        let settled = settle_if_done(&tx, job_id).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(settled)
    }

    /// Puts a dead letter back in the queue at an operator's request: pending now, with a fresh
    /// retry budget (its last error stays for the record); an undeliverable job goes back to
    /// `reported` until the outbox settles it again. One transaction.
    pub fn resend_delivery(&self, id: i64) -> Result<Requeue, DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let row: Option<(i64, String)> = tx
            .query_row("SELECT job_id, state FROM deliveries WHERE id = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(|e| self.err(e))?;
        let Some((job_id, state)) = row else {
            return Ok(Requeue::NoSuchDelivery);
        };
        let state = DeliveryState::parse(&state);
        if state != DeliveryState::Dead {
            return Ok(Requeue::NotDead(state));
        }
        let now = now();
        tx.execute(
            "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?2 WHERE id = ?1",
            params![id, now],
        )
        .map_err(|e| self.err(e))?;
        tx.execute(
            "UPDATE jobs SET state = 'reported', reason = NULL, updated_at = ?2
             WHERE id = ?1 AND state = 'undeliverable'",
            params![job_id, now],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        drop(conn);
        self.bells.deliveries.ring();
        Ok(Requeue::Requeued { job_id })
    }

    /// A new job on the same inputs as job `id` (an operator's re-run, e.g. after a model
    /// update); it supersedes the latest job on those series. Only a job that has finished
    /// (delivered, undeliverable or failed) with inputs can be run again.
    pub fn rerun_job(&self, id: i64) -> Result<Rerun, DbError> {
        let Some(job) = self.job(id)? else {
            return Ok(Rerun::NoSuchJob);
        };
        if !matches!(
            job.state,
            JobState::Delivered | JobState::Undeliverable | JobState::Failed
        ) {
            return Ok(Rerun::NotFinished(job.state));
        }
        if job.inputs.is_empty() {
            return Ok(Rerun::NoInputs);
        }
        self.insert_job(&job.study_uid, &job.inputs, &job.calling_ae, JobState::Received, None)
            .map(Rerun::Created)
    }

    /// Instances received in total (for readiness and metrics after a restart).
    pub fn instance_count(&self) -> Result<i64, DbError> {
        self.conn()
            .query_row("SELECT COUNT(*) FROM instances", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// Removes instances received before `before` from the database and returns their files,
    /// so the caller deletes them (retention).
    pub fn expire_instances(&self, before: f64) -> Result<Vec<PathBuf>, DbError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("DELETE FROM instances WHERE received_at < ?1 RETURNING path")
            .map_err(|e| self.err(e))?;
        let paths = stmt
            .query_map([before], |r| Ok(PathBuf::from(r.get::<_, String>(0)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.err(e))?;
        Ok(paths)
    }
}
