//! The dispatcher's durable record: every job and its one outcome in SQLite,
//! and each job's output as a plain file under `logs/`.
//!
//! All state transitions live here, in transactions, so "exactly one
//! recorded outcome per job" is a property of this file: a terminal status
//! is never overwritten, and later results only count as duplicates.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use model::{Job, JobResult, RunnerInfo};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

pub const TERMINAL: [&str; 4] = ["passed", "failed", "error", "timeout"];

/// Every status a job can have.
pub const STATUSES: [&str; 6] = ["queued", "running", "passed", "failed", "error", "timeout"];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("SQLite: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the store's lock was poisoned by a panic")]
    Poisoned,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct JobRecord {
    pub seq: i64,
    pub id: String,
    pub repo: String,
    pub branch: String,
    pub commit: String,
    pub subject: Option<String>,
    pub author: Option<String>,
    pub status: String,
    pub attempts: i64,
    pub duplicates: i64,
    pub runner: Option<String>,
    #[serde(skip)]
    pub connection: Option<String>,
    pub enqueued_at_ms: Option<i64>,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub duration_ms: Option<i64>,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    pub truncated: bool,
    /// What makes a rerun's id differ from its commit's job (see
    /// `Job::salt`); empty for the job of a commit.
    #[serde(skip)]
    pub salt: String,
}

impl JobRecord {
    pub fn is_terminal(&self) -> bool {
        TERMINAL.contains(&self.status.as_str())
    }

    /// The job message this record came from (for republishing).
    pub fn to_job(&self) -> Result<Job, model::IdError> {
        Ok(Job {
            v: model::SCHEMA_VERSION,
            id: self.id.parse()?,
            repo: self.repo.parse()?,
            branch: self.branch.parse()?,
            commit: self.commit.parse()?,
            enqueued_at_ms: self.enqueued_at_ms.unwrap_or_default() as u64,
            subject: self.subject.clone(),
            author: self.author.clone(),
            salt: self.salt.clone(),
        })
    }
}

/// A runner as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RunnerRecord {
    pub id: String,
    pub host: String,
    pub current_job: Option<String>,
    pub last_seen_ms: i64,
    pub jobs_done: i64,
}

/// Aggregates for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub by_status: Vec<(String, i64)>,
    pub duration: crate::metrics::Histogram,
    pub wait: crate::metrics::Histogram,
    pub runners_online: i64,
    pub dead_lettered: i64,
    pub duplicates: i64,
}

/// What recording a `started` event found.
#[derive(Debug, Clone)]
pub struct Started {
    pub record: JobRecord,
    /// The event belongs to the execution whose result is already recorded.
    pub same_execution: bool,
}

impl Started {
    /// Someone is running a job that already has its outcome.
    pub fn is_duplicate_execution(&self) -> bool {
        self.record.is_terminal() && !self.same_execution
    }
}

/// What recording a result did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The job's one outcome.
    New,
    /// The job already had an outcome; this one was counted and dropped.
    Duplicate,
}

/// How many commits an ambiguous abbreviation lists (one more is fetched
/// to tell "exactly this many" from "more").
pub const AMBIGUOUS_LISTED: usize = 10;

/// What an abbreviated commit id matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitMatch {
    None,
    /// The newest job of the one commit it matches.
    One(Box<JobRecord>),
    /// Several commits (at most [`AMBIGUOUS_LISTED`] + 1 of them).
    Several(Vec<String>),
}

/// Which jobs to list.
#[derive(Debug, Clone, Default)]
pub struct JobQuery {
    pub status: Option<String>,
    pub branch: Option<String>,
    /// Only jobs with a smaller `seq` (the next page).
    pub before: Option<i64>,
    pub limit: u32,
}

#[derive(Clone)]
pub struct Store {
    db: Arc<Mutex<Connection>>,
    logs: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    repo TEXT NOT NULL,
    branch TEXT NOT NULL,
    commit_id TEXT NOT NULL,
    subject TEXT,
    author TEXT,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    duplicates INTEGER NOT NULL DEFAULT 0,
    runner TEXT,
    connection TEXT,
    enqueued_at_ms INTEGER,
    started_at_ms INTEGER,
    finished_at_ms INTEGER,
    duration_ms INTEGER,
    exit_code INTEGER,
    reason TEXT,
    truncated INTEGER NOT NULL DEFAULT 0,
    salt TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs(status, seq);
CREATE INDEX IF NOT EXISTS jobs_by_branch ON jobs(branch, seq);
CREATE INDEX IF NOT EXISTS jobs_by_commit ON jobs(commit_id);
CREATE TABLE IF NOT EXISTS runners (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    connection TEXT,
    current_job TEXT,
    last_seen_ms INTEGER NOT NULL,
    jobs_done INTEGER NOT NULL DEFAULT 0
);
";

const JOB_COLUMNS: &str = "seq, id, repo, branch, commit_id, subject, author, status, attempts, duplicates, runner, connection, enqueued_at_ms, started_at_ms, finished_at_ms, duration_ms, exit_code, reason, truncated, salt";

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<JobRecord> {
    Ok(JobRecord {
        seq: row.get(0)?,
        id: row.get(1)?,
        repo: row.get(2)?,
        branch: row.get(3)?,
        commit: row.get(4)?,
        subject: row.get(5)?,
        author: row.get(6)?,
        status: row.get(7)?,
        attempts: row.get(8)?,
        duplicates: row.get(9)?,
        runner: row.get(10)?,
        connection: row.get(11)?,
        enqueued_at_ms: row.get(12)?,
        started_at_ms: row.get(13)?,
        finished_at_ms: row.get(14)?,
        duration_ms: row.get(15)?,
        exit_code: row.get(16)?,
        reason: row.get(17)?,
        truncated: row.get::<_, i64>(18)? != 0,
        salt: row.get(19)?,
    })
}

fn insert_job(db: &Connection, job: &Job, status: &str) -> rusqlite::Result<()> {
    db.execute(
        "INSERT OR IGNORE INTO jobs (id, repo, branch, commit_id, subject, author, status, enqueued_at_ms, salt)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![job.id.as_str(), job.repo.as_str(), job.branch.as_str(), job.commit.as_str(), job.subject, job.author, status, job.enqueued_at_ms as i64, job.salt],
    )?;
    Ok(())
}

impl Store {
    /// Opens (or creates) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Store> {
        let io = |context: String| move |source| StoreError::Io { context, source };
        let logs = data_dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(io(format!("creating {}", logs.display())))?;
        let db = Connection::open(data_dir.join("warren.db"))?;
        db.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;",
        )?;
        db.execute_batch(SCHEMA)?;
        // Stores made before jobs had a salt (reruns then could not be
        // republished with the id they were recorded under).
        let has_salt: bool = db.query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info('jobs') WHERE name = 'salt'",
            [],
            |row| row.get(0),
        )?;
        if !has_salt {
            db.execute_batch("ALTER TABLE jobs ADD COLUMN salt TEXT NOT NULL DEFAULT ''")?;
        }
        Ok(Store {
            db: Arc::new(Mutex::new(db)),
            logs,
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut db = self.db.lock().map_err(|_| StoreError::Poisoned)?;
        f(&mut db)
    }

    /// Runs a store operation off the async threads.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .unwrap_or(Err(StoreError::Poisoned))
    }

    pub fn log_path(&self, job_id: &str) -> Option<PathBuf> {
        model::JobId::parse(job_id).ok()?;
        Some(self.logs.join(format!("{job_id}.log")))
    }

    /// A job was published: show it as queued (unless already known).
    pub fn record_queued(&self, job: &Job) -> Result<()> {
        self.with(|db| Ok(insert_job(db, job, "queued")?))
    }

    /// A runner started a job. Returns the job after the update; if it is
    /// already terminal (and not the very execution that produced the
    /// outcome), the runner is running a duplicate.
    pub fn record_started(&self, job: &Job, runner: &RunnerInfo, at_ms: u64) -> Result<Started> {
        self.with(|db| {
            let tx = db.transaction()?;
            insert_job(&tx, job, "queued")?;
            // The late `started` of the execution whose result is already
            // recorded (events and results travel on different queues) is
            // not another attempt.
            let same_execution: bool = tx.query_row(
                "SELECT runner = ?2 AND started_at_ms = ?3 FROM jobs WHERE id = ?1",
                params![job.id.as_str(), runner.id.as_str(), at_ms as i64],
                |row| Ok(row.get::<_, Option<bool>>(0)?.unwrap_or(false)),
            )?;
            tx.execute(
                "UPDATE jobs SET attempts = attempts + CASE WHEN ?5 THEN 0 ELSE 1 END,
                    status = CASE WHEN status IN ('queued', 'running') THEN 'running' ELSE status END,
                    runner = CASE WHEN status IN ('queued', 'running') THEN ?2 ELSE runner END,
                    connection = CASE WHEN status IN ('queued', 'running') THEN ?3 ELSE connection END,
                    started_at_ms = CASE WHEN status IN ('queued', 'running') THEN ?4 ELSE started_at_ms END
                 WHERE id = ?1",
                params![job.id.as_str(), runner.id.as_str(), runner.connection, at_ms as i64, same_execution],
            )?;
            tx.execute(
                "INSERT INTO runners (id, host, connection, current_job, last_seen_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(id) DO UPDATE SET host = ?2, connection = ?3, current_job = ?4, last_seen_ms = ?5",
                params![runner.id.as_str(), runner.host, runner.connection, job.id.as_str(), at_ms as i64],
            )?;
            let record = tx.query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                params![job.id.as_str()],
                job_from_row,
            )?;
            tx.commit()?;
            Ok(Started { record, same_execution })
        })
    }

    /// Records a result: the first one for a job is its outcome (log file
    /// written before the row commits); any later one is a duplicate.
    pub fn record_result(&self, result: &JobResult) -> Result<Recorded> {
        let log_path = self.log_path(&result.job.id);
        self.with(|db| {
            let tx = db.transaction()?;
            insert_job(&tx, &result.job, "queued")?;
            let status: String = tx.query_row(
                "SELECT status FROM jobs WHERE id = ?1",
                params![result.job.id.as_str()],
                |row| row.get(0),
            )?;
            if TERMINAL.contains(&status.as_str()) {
                tx.execute(
                    "UPDATE jobs SET duplicates = duplicates + 1 WHERE id = ?1",
                    params![result.job.id.as_str()],
                )?;
                tx.commit()?;
                return Ok(Recorded::Duplicate);
            }
            if let Some(path) = &log_path {
                write_atomically(path, result.output.as_bytes())?;
            }
            tx.execute(
                "UPDATE jobs SET status = ?2, runner = ?3, started_at_ms = ?4, finished_at_ms = ?5,
                    duration_ms = ?6, exit_code = ?7, reason = ?8, truncated = ?9,
                    attempts = MAX(attempts, 1)
                 WHERE id = ?1",
                params![
                    result.job.id.as_str(),
                    result.outcome.as_str(),
                    result.runner.id.as_str(),
                    result.started_at_ms as i64,
                    result.finished_at_ms as i64,
                    result.duration_ms as i64,
                    result.exit_code,
                    result.reason,
                    result.truncated as i64
                ],
            )?;
            tx.execute(
                "UPDATE runners SET jobs_done = jobs_done + 1,
                    current_job = CASE WHEN current_job = ?2 THEN NULL ELSE current_job END
                 WHERE id = ?1",
                params![result.runner.id.as_str(), result.job.id.as_str()],
            )?;
            tx.commit()?;
            Ok(Recorded::New)
        })
    }

    /// A job was dead-lettered (it kept killing its runners, or could not
    /// be used): its outcome is `error` with the reason, unless it already
    /// has one.
    pub fn record_dead(&self, job: &Job, reason: &str) -> Result<Recorded> {
        let log_path = self.log_path(&job.id);
        self.with(|db| {
            let tx = db.transaction()?;
            insert_job(&tx, job, "queued")?;
            let changed = tx.execute(
                "UPDATE jobs SET status = 'error', reason = ?2, finished_at_ms = ?3
                 WHERE id = ?1 AND status NOT IN ('passed', 'failed', 'error', 'timeout')",
                params![job.id.as_str(), reason, broker::now_ms() as i64],
            )?;
            if changed == 0 {
                tx.commit()?;
                return Ok(Recorded::Duplicate);
            }
            if let Some(path) = &log_path {
                write_atomically(path, format!("warren: {reason}\n").as_bytes())?;
            }
            tx.commit()?;
            Ok(Recorded::New)
        })
    }

    /// Output a running job's test printed, passed on by its runner with a
    /// heartbeat: appended to the job's log while the job has no outcome,
    /// so the log can be watched live. A piece that does not continue the
    /// log where it ends (a heartbeat lost or repeated) is skipped, except
    /// one from the start, which begins the log again (a new attempt); the
    /// whole output comes with the result and replaces all of this.
    pub fn append_live_output(&self, job_id: &str, offset: u64, text: &str) -> Result<()> {
        let Some(path) = self.log_path(job_id) else {
            return Ok(());
        };
        let io = |source| StoreError::Io {
            context: format!("appending to {}", path.display()),
            source,
        };
        // Under the store's lock, so a result cannot land in between.
        self.with(|db| {
            let status: Option<String> = db
                .query_row(
                    "SELECT status FROM jobs WHERE id = ?1",
                    params![job_id],
                    |row| row.get(0),
                )
                .optional()?;
            if status.is_none_or(|s| TERMINAL.contains(&s.as_str())) {
                return Ok(());
            }
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let mut options = std::fs::OpenOptions::new();
            if offset == 0 {
                options.write(true).create(true).truncate(true);
            } else if offset == size {
                options.append(true);
            } else {
                return Ok(());
            }
            let mut file = options.open(&path).map_err(io)?;
            std::io::Write::write_all(&mut file, text.as_bytes()).map_err(io)?;
            Ok(())
        })
    }

    /// A runner's heartbeat.
    pub fn record_heartbeat(
        &self,
        runner: &RunnerInfo,
        job_id: Option<&str>,
        at_ms: u64,
    ) -> Result<()> {
        self.with(|db| {
            db.execute(
                "INSERT INTO runners (id, host, connection, current_job, last_seen_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(id) DO UPDATE SET host = ?2, connection = ?3, current_job = ?4, last_seen_ms = ?5",
                params![runner.id.as_str(), runner.host, runner.connection, job_id, at_ms as i64],
            )?;
            Ok(())
        })
    }

    pub fn job(&self, id: &str) -> Result<Option<JobRecord>> {
        self.with(|db| {
            Ok(db
                .query_row(
                    &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                    params![id],
                    job_from_row,
                )
                .optional()?)
        })
    }

    /// The newest job for a full or abbreviated (at least 7 digits) commit,
    /// or the commits an abbreviation matches when it matches several.
    pub fn job_by_commit(&self, commit: &str) -> Result<CommitMatch> {
        let hex = commit.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex || commit.len() < 7 || commit.len() > 64 {
            return Ok(CommitMatch::None);
        }
        let pattern = format!("{}%", commit.to_ascii_lowercase());
        self.with(|db| {
            let mut statement = db.prepare_cached(&format!(
                "SELECT DISTINCT commit_id FROM jobs WHERE commit_id LIKE ?1 LIMIT {}",
                AMBIGUOUS_LISTED + 1
            ))?;
            let commits = statement
                .query_map(params![pattern], |row| row.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let [commit] = commits.as_slice() else {
                return Ok(if commits.is_empty() {
                    CommitMatch::None
                } else {
                    CommitMatch::Several(commits)
                });
            };
            let job = db.query_row(
                &format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE commit_id = ?1 ORDER BY seq DESC LIMIT 1"
                ),
                params![commit],
                job_from_row,
            )?;
            Ok(CommitMatch::One(Box::new(job)))
        })
    }

    /// Jobs newest first.
    pub fn jobs(&self, query: &JobQuery) -> Result<Vec<JobRecord>> {
        // Only the conditions in use, so SQLite can walk the matching
        // (status, seq) or (branch, seq) index instead of scanning.
        let mut conditions = Vec::new();
        let mut values: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(status) = &query.status {
            conditions.push("status = ?");
            values.push(status.clone().into());
        }
        if let Some(branch) = &query.branch {
            conditions.push("branch = ?");
            values.push(branch.clone().into());
        }
        if let Some(before) = query.before {
            conditions.push("seq < ?");
            values.push(before.into());
        }
        values.push(i64::from(query.limit.clamp(1, 1000)).into());
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        self.with(|db| {
            let sql = format!("SELECT {JOB_COLUMNS} FROM jobs {filter} ORDER BY seq DESC LIMIT ?");
            let mut statement = db.prepare_cached(&sql)?;
            let rows = statement.query_map(rusqlite::params_from_iter(values), job_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// Jobs shown as running (their leases are restored at start-up).
    pub fn running(&self) -> Result<Vec<JobRecord>> {
        self.jobs(&JobQuery {
            status: Some("running".into()),
            limit: 1000,
            ..Default::default()
        })
    }

    pub fn runners(&self) -> Result<Vec<RunnerRecord>> {
        self.with(|db| {
            let mut statement = db.prepare_cached(
                "SELECT id, host, current_job, last_seen_ms, jobs_done FROM runners ORDER BY id",
            )?;
            let rows = statement.query_map([], |row| {
                Ok(RunnerRecord {
                    id: row.get(0)?,
                    host: row.get(1)?,
                    current_job: row.get(2)?,
                    last_seen_ms: row.get(3)?,
                    jobs_done: row.get(4)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// Aggregates for `/metrics`.
    pub fn stats(&self, buckets: &[f64], online_within_ms: i64) -> Result<Stats> {
        self.with(|db| {
            let mut by_status = Vec::new();
            let mut statement = db.prepare_cached("SELECT status, COUNT(*) FROM jobs GROUP BY status ORDER BY status")?;
            let rows = statement.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)))?;
            for row in rows {
                by_status.push(row?);
            }
            let histogram = |expr: &str, filter: &str| -> Result<crate::metrics::Histogram> {
                let mut h = crate::metrics::Histogram::default();
                let (count, sum): (i64, Option<f64>) = db.query_row(
                    &format!("SELECT COUNT(*), SUM({expr}) / 1000.0 FROM jobs WHERE {filter}"),
                    [],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )?;
                h.count = count;
                h.sum = sum.unwrap_or(0.0);
                for bound in buckets {
                    let n: i64 = db.query_row(
                        &format!("SELECT COUNT(*) FROM jobs WHERE {filter} AND {expr} <= ?1"),
                        params![(bound * 1000.0) as i64],
                        |row| row.get(0),
                    )?;
                    h.buckets.push((*bound, n));
                }
                Ok(h)
            };
            let duration = histogram("duration_ms", "duration_ms IS NOT NULL")?;
            let wait = histogram(
                "(started_at_ms - enqueued_at_ms)",
                "started_at_ms IS NOT NULL AND enqueued_at_ms IS NOT NULL AND started_at_ms >= enqueued_at_ms",
            )?;
            let now = broker::now_ms() as i64;
            let runners_online: i64 = db.query_row(
                "SELECT COUNT(*) FROM runners WHERE last_seen_ms >= ?1",
                params![now - online_within_ms],
                |row| row.get(0),
            )?;
            let dead_lettered: i64 = db.query_row(
                "SELECT COUNT(*) FROM jobs WHERE status = 'error' AND reason LIKE 'dead-lettered%'",
                [],
                |row| row.get(0),
            )?;
            let duplicates: i64 = db.query_row("SELECT COALESCE(SUM(duplicates), 0) FROM jobs", [], |row| row.get(0))?;
            Ok(Stats { by_status, duration, wait, runners_online, dead_lettered, duplicates })
        })
    }

    /// Can the store still write? (for `/readyz`)
    pub fn writable(&self) -> bool {
        self.with(|db| Ok(db.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")?))
            .is_ok()
    }

    /// The job on the same repository and branch that got its outcome
    /// last before `job` did (by `finished_at_ms`, then `seq`), if any: what
    /// the notifier compares a new outcome with when it first sees a branch.
    pub fn finished_before(&self, job: &JobRecord) -> Result<Option<JobRecord>> {
        self.with(|db| {
            Ok(db
                .query_row(
                    &format!(
                        "SELECT {JOB_COLUMNS} FROM jobs
                         WHERE repo = ?1 AND branch = ?2 AND id != ?3
                           AND status IN ('passed', 'failed', 'error', 'timeout')
                           AND finished_at_ms IS NOT NULL
                           AND (finished_at_ms < ?4 OR (finished_at_ms = ?4 AND seq < ?5))
                         ORDER BY finished_at_ms DESC, seq DESC LIMIT 1"
                    ),
                    params![
                        job.repo.as_str(),
                        job.branch.as_str(),
                        job.id.as_str(),
                        job.finished_at_ms.unwrap_or(i64::MAX),
                        job.seq
                    ],
                    job_from_row,
                )
                .optional()?)
        })
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| StoreError::Io {
        context: format!("writing {}", path.display()),
        source,
    };
    let tmp = path.with_extension("log.tmp");
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::{Outcome, RunnerId, SCHEMA_VERSION};

    fn runner(id: &str) -> RunnerInfo {
        RunnerInfo {
            id: RunnerId::parse(id).expect("id"),
            host: "h".into(),
            connection: format!("conn-{id}"),
        }
    }

    fn result(job: &Job, outcome: Outcome, by: &str) -> JobResult {
        JobResult {
            v: SCHEMA_VERSION,
            job: job.clone(),
            outcome,
            exit_code: Some(0),
            started_at_ms: 1,
            finished_at_ms: 2,
            duration_ms: 1,
            output: format!("output of {by}"),
            truncated: false,
            runner: runner(by),
            reason: None,
        }
    }

    #[test]
    fn one_outcome_per_job_and_duplicates_are_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let job = Job::try_new("/r", "main", &"a".repeat(40)).expect("a valid job");
        store.record_queued(&job).expect("queued");
        store
            .record_started(&job, &runner("r1"), 10)
            .expect("started");
        let again = store
            .record_started(&job, &runner("r2"), 11)
            .expect("started again")
            .record;
        assert_eq!(again.attempts, 2);
        assert_eq!(again.status, "running");
        assert_eq!(
            store
                .record_result(&result(&job, Outcome::Passed, "r2"))
                .expect("r"),
            Recorded::New
        );
        assert_eq!(
            store
                .record_result(&result(&job, Outcome::Failed, "r1"))
                .expect("r"),
            Recorded::Duplicate
        );
        assert_eq!(
            store.record_dead(&job, "x").expect("dead"),
            Recorded::Duplicate
        );
        let record = store.job(&job.id).expect("job").expect("exists");
        assert_eq!(record.status, "passed");
        assert_eq!(record.duplicates, 1);
        let log = std::fs::read_to_string(store.log_path(&job.id).expect("path")).expect("log");
        assert_eq!(log, "output of r2");
        // A started event after the outcome does not reopen the job.
        let late = store.record_started(&job, &runner("r3"), 12).expect("late");
        assert!(late.is_duplicate_execution());
        assert_eq!(late.record.attempts, 3);
        store.record_queued(&job).expect("queued again");
        assert_eq!(
            store.job(&job.id).expect("job").expect("exists").status,
            "passed"
        );
    }

    #[test]
    fn live_output_grows_the_log_until_the_result_replaces_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let job = Job::try_new("/r", "main", &"e".repeat(40)).expect("a valid job");
        let log = || std::fs::read_to_string(store.log_path(&job.id).expect("path")).ok();
        // Unknown jobs get nothing.
        store
            .append_live_output(&job.id, 0, "early")
            .expect("append");
        assert_eq!(log(), None);
        store.record_queued(&job).expect("queued");
        store
            .record_started(&job, &runner("r1"), 10)
            .expect("started");
        store
            .append_live_output(&job.id, 0, "one\n")
            .expect("append");
        store
            .append_live_output(&job.id, 4, "two\n")
            .expect("append");
        assert_eq!(log().as_deref(), Some("one\ntwo\n"));
        // Repeated or out-of-place pieces are skipped.
        store
            .append_live_output(&job.id, 4, "two\n")
            .expect("append");
        store
            .append_live_output(&job.id, 99, "gap")
            .expect("append");
        assert_eq!(log().as_deref(), Some("one\ntwo\n"));
        // A new attempt starts the log again.
        store
            .append_live_output(&job.id, 0, "again\n")
            .expect("append");
        assert_eq!(log().as_deref(), Some("again\n"));
        store
            .record_result(&result(&job, Outcome::Passed, "r1"))
            .expect("result");
        store
            .append_live_output(&job.id, 0, "late")
            .expect("append");
        assert_eq!(log().as_deref(), Some("output of r1"));
    }

    #[test]
    fn a_started_event_that_arrives_after_its_own_result_is_not_another_attempt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let job = Job::try_new("/r", "main", &"d".repeat(40)).expect("a valid job");
        // result() says started_at_ms = 1.
        store
            .record_result(&result(&job, Outcome::Passed, "r1"))
            .expect("result");
        let late = store
            .record_started(&job, &runner("r1"), 1)
            .expect("started");
        assert!(!late.is_duplicate_execution());
        assert_eq!(late.record.attempts, 1);
    }

    #[test]
    fn results_before_the_queued_copy_and_dead_letters_are_recorded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let job = Job::try_new("/r", "main", &"b".repeat(40)).expect("a valid job");
        assert_eq!(
            store
                .record_result(&result(&job, Outcome::Failed, "r1"))
                .expect("r"),
            Recorded::New
        );
        store.record_queued(&job).expect("queued");
        assert_eq!(
            store.job(&job.id).expect("job").expect("exists").status,
            "failed"
        );
        let poison = Job::try_new("/r", "main", &"c".repeat(40)).expect("a valid job");
        assert_eq!(
            store.record_dead(&poison, "delivery limit").expect("dead"),
            Recorded::New
        );
        let record = store.job(&poison.id).expect("job").expect("exists");
        assert_eq!(
            (record.status.as_str(), record.reason.as_deref()),
            ("error", Some("delivery limit"))
        );
    }

    #[test]
    fn lists_newest_first_with_filters_and_pages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        for i in 0..5 {
            let branch = if i % 2 == 0 { "main" } else { "dev" };
            store
                .record_queued(
                    &Job::try_new("/r", branch, &format!("{i:040x}")).expect("a valid job"),
                )
                .expect("queued");
        }
        let all = store
            .jobs(&JobQuery {
                limit: 10,
                ..Default::default()
            })
            .expect("jobs");
        assert_eq!(all.len(), 5);
        assert!(all.windows(2).all(|w| w[0].seq > w[1].seq));
        let main = store
            .jobs(&JobQuery {
                branch: Some("main".into()),
                limit: 10,
                ..Default::default()
            })
            .expect("jobs");
        assert_eq!(main.len(), 3);
        let page = store
            .jobs(&JobQuery {
                before: Some(all[1].seq),
                limit: 2,
                ..Default::default()
            })
            .expect("jobs");
        assert_eq!(
            page.iter().map(|j| j.seq).collect::<Vec<_>>(),
            vec![all[2].seq, all[3].seq]
        );
        assert!(store.log_path("../etc/passwd").is_none());
    }

    #[test]
    fn finished_before_is_the_previous_outcome_on_the_same_branch_by_finish_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let finish = |job: &Job, outcome: Outcome, at: u64| {
            let mut r = result(job, outcome, "r1");
            r.finished_at_ms = at;
            store.record_result(&r).expect("result");
            store.job(&job.id).expect("job").expect("exists")
        };
        let a = Job::try_new("/r", "main", &"1".repeat(40)).expect("a valid job");
        let b = Job::try_new("/r", "main", &"2".repeat(40)).expect("a valid job");
        let c = Job::try_new("/r", "main", &"3".repeat(40)).expect("a valid job");
        let other_branch = Job::try_new("/r", "dev", &"4".repeat(40)).expect("a valid job");
        let other_repo = Job::try_new("/s", "main", &"5".repeat(40)).expect("a valid job");
        let queued = Job::try_new("/r", "main", &"6".repeat(40)).expect("a valid job");
        store.record_queued(&queued).expect("queued");
        let a = finish(&a, Outcome::Passed, 100);
        assert_eq!(store.finished_before(&a).expect("query"), None);
        // c is enqueued after b but finishes first.
        store.record_queued(&b).expect("queued");
        let c = finish(&c, Outcome::Failed, 200);
        let b = finish(&b, Outcome::Error, 300);
        finish(&other_branch, Outcome::Failed, 250);
        finish(&other_repo, Outcome::Failed, 250);
        let id = |r: Option<JobRecord>| r.map(|r| r.id);
        assert_eq!(
            id(store.finished_before(&c).expect("query")),
            Some(a.id.clone())
        );
        assert_eq!(
            id(store.finished_before(&b).expect("query")),
            Some(c.id.clone())
        );
        // The same finish time: the smaller seq is earlier.
        let d = finish(
            &Job::try_new("/r", "main", &"7".repeat(40)).expect("a valid job"),
            Outcome::Passed,
            300,
        );
        assert_eq!(id(store.finished_before(&d).expect("query")), Some(b.id));
    }
}
