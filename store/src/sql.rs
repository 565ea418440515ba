//! The one implementation of [`Store`], for both databases.
//!
//! Each query is written once, with `$N` placeholders (SQLite reads them
//! as numbered parameters too), in SQL both databases speak, and run on
//! whichever backend the URL chose through [`on!`], which compiles the
//! same body for a SQLite and a PostgreSQL connection. Typed pools rather
//! than sqlx's `Any` driver keep each backend's connect options (WAL and
//! `busy_timeout`, `statement_timeout`).
//!
//! Every change of a job is one transaction that begins by recording the
//! job if unknown and locking its row (a no-op update that returns it:
//! PostgreSQL holds the row lock to the end of the transaction; SQLite's
//! `BEGIN IMMEDIATE` holds the write lock from the start), and whose
//! writes are conditional on the job's status, so concurrent dispatchers
//! cannot both record an outcome.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::{Display, Write as _};
use std::path::Path;
use std::str::FromStr;

use async_trait::async_trait;
use model::split::{SplitPart, TestId, TestRecord, TestStatus, TestsReport};
use model::JobSpec;
use model::{
    CommitId, Job, JobId, JobQuery, JobRecord, JobResult, JobStatus, Outcome, Repo, RepoName,
    RunnerInfo, RunnerRecord, StatusTarget,
};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgSslMode, Postgres};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ColumnIndex, Connection, Decode, Row, Sqlite, Transaction, Type};

use crate::url::{Kind, PostgresTarget, SslMode};
use crate::Retention;
use crate::{
    CommitMatch, Histogram, JobChange, Outgoing, Queued, Recorded, Started, Store, StoreError,
    StoreSettings, StoreUrl, TestsRun, Totals, AMBIGUOUS_LISTED,
};

/// A connection of either backend, borrowed for one statement.
pub(crate) enum Conn<'c> {
    Sqlite(&'c mut SqliteConnection),
    Postgres(&'c mut PgConnection),
}

/// Runs `$body` with `$c` bound to the `&mut` connection of whichever
/// backend `$conn` (a [`Conn`]) is: the body is written once and compiled
/// for each. Both arms must give one type, so a bare statement ends in
/// `.rows_affected()` rather than each backend's own query result.
macro_rules! on {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::sql::Conn::Sqlite($c) => $body,
            $crate::sql::Conn::Postgres($c) => $body,
        }
    };
}
pub(crate) use on;

/// One connection of its own (migrations, checks), outside any pool.
pub(crate) enum Single {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

impl Single {
    pub(crate) fn conn(&mut self) -> Conn<'_> {
        match self {
            Single::Sqlite(c) => Conn::Sqlite(c),
            Single::Postgres(c) => Conn::Postgres(c),
        }
    }

    pub(crate) async fn begin(&mut self) -> Result<Tx<'_>, sqlx::Error> {
        Ok(match self {
            Single::Sqlite(c) => Tx::Sqlite(c.begin_with(SQLITE_BEGIN).await?),
            Single::Postgres(c) => Tx::Postgres(c.begin().await?),
        })
    }

    pub(crate) async fn close(self) {
        // Closing politely is best effort: the server ends the session
        // when the socket closes anyway.
        let _ = match self {
            Single::Sqlite(c) => c.close().await,
            Single::Postgres(c) => c.close().await,
        };
    }
}

/// SQLite transactions that write take the write lock at once (waiting
/// up to `busy_timeout`), rather than failing when a read turns into a
/// write while another connection writes.
const SQLITE_BEGIN: &str = "BEGIN IMMEDIATE";

/// A transaction of either backend; rolled back if dropped uncommitted.
pub(crate) enum Tx<'c> {
    Sqlite(Transaction<'c, Sqlite>),
    Postgres(Transaction<'c, Postgres>),
}

impl Tx<'_> {
    pub(crate) fn conn(&mut self) -> Conn<'_> {
        match self {
            Tx::Sqlite(tx) => Conn::Sqlite(tx),
            Tx::Postgres(tx) => Conn::Postgres(tx),
        }
    }

    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(tx) => tx.commit().await,
            Tx::Postgres(tx) => tx.commit().await,
        }
    }

    async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(tx) => tx.rollback().await,
            Tx::Postgres(tx) => tx.rollback().await,
        }
    }
}

enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A pooled connection of either backend (reads).
enum Held {
    Sqlite(PoolConnection<Sqlite>),
    Postgres(PoolConnection<Postgres>),
}

impl Held {
    fn conn(&mut self) -> Conn<'_> {
        match self {
            Held::Sqlite(c) => Conn::Sqlite(c),
            Held::Postgres(c) => Conn::Postgres(c),
        }
    }

    /// After a write on this connection failed: it is closed rather than
    /// pooled, so nothing it may still hold (SQLite's implicit transaction
    /// of a statement cut short by a full disk, with the write lock) can
    /// outlive the failure and lock every later write out.
    fn discard_if<T, E>(&mut self, outcome: &Result<T, E>) {
        if outcome.is_err() {
            match self {
                Held::Sqlite(c) => c.close_on_drop(),
                Held::Postgres(c) => c.close_on_drop(),
            }
        }
    }
}

impl Pool {
    async fn begin(&self) -> Result<Tx<'static>, sqlx::Error> {
        Ok(match self {
            Pool::Sqlite(pool) => Tx::Sqlite(pool.begin_with(SQLITE_BEGIN).await?),
            Pool::Postgres(pool) => Tx::Postgres(pool.begin().await?),
        })
    }

    async fn acquire(&self) -> Result<Held, sqlx::Error> {
        Ok(match self {
            Pool::Sqlite(pool) => Held::Sqlite(pool.acquire().await?),
            Pool::Postgres(pool) => Held::Postgres(pool.acquire().await?),
        })
    }
}

/// Why an operation failed, before it is put in words with the store's
/// (password-free) name.
pub(crate) enum Fail {
    Sql(sqlx::Error),
    Store(StoreError),
    /// A row this build cannot read (an unknown status, an invalid id).
    Corrupt(String),
}

impl From<sqlx::Error> for Fail {
    fn from(err: sqlx::Error) -> Self {
        Fail::Sql(err)
    }
}

impl From<StoreError> for Fail {
    fn from(err: StoreError) -> Self {
        Fail::Store(err)
    }
}

impl Fail {
    /// The error in words: the store named without its password, and the
    /// driver's text with the password hidden too.
    pub(crate) fn describe(
        self,
        url: &StoreUrl,
        settings: &StoreSettings,
        doing: &'static str,
    ) -> StoreError {
        let store = url.to_string();
        match self {
            Fail::Store(err) => err,
            Fail::Corrupt(reason) => StoreError::Corrupt {
                store,
                reason: url.hide_password_in(&reason),
            },
            Fail::Sql(sqlx::Error::PoolTimedOut) => StoreError::TimedOut {
                store,
                doing,
                after: settings.acquire_timeout,
            },
            Fail::Sql(err) => StoreError::Database {
                store,
                doing,
                reason: url.hide_password_in(&err.to_string()),
            },
        }
    }
}

/// How long to wait before opening an SQLite file again that another
/// connection had locked.
const SQLITE_BUSY_RETRY: std::time::Duration = std::time::Duration::from_millis(20);

/// SQLITE_BUSY (5): another connection holds the lock.
fn is_sqlite_busy(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("5"))
}

fn sqlite_options(path: &Path, settings: &StoreSettings, read_only: bool) -> SqliteConnectOptions {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .busy_timeout(settings.busy_timeout);
    if read_only {
        options.read_only(true)
    } else {
        options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
    }
}

fn postgres_options(target: &PostgresTarget, settings: &StoreSettings) -> PgConnectOptions {
    let timeout_ms = settings.statement_timeout.as_millis().to_string();
    let options = PgConnectOptions::new_without_pgpass()
        .host(&target.host)
        .port(target.port)
        .username(&target.user)
        .database(&target.database)
        .application_name("warren")
        .ssl_mode(match target.ssl_mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        })
        .options([
            ("statement_timeout", timeout_ms.as_str()),
            // A session stuck inside a transaction would hold job rows
            // locked for every other dispatcher.
            ("idle_in_transaction_session_timeout", timeout_ms.as_str()),
        ]);
    match &target.password {
        Some(password) => options.password(password),
        None => options,
    }
}

/// One connection to `url`, within `connect_timeout` (a server that
/// accepts and never answers fails rather than hangs). `read_only` opens
/// an SQLite file without creating or changing it.
pub(crate) async fn connect(
    url: &StoreUrl,
    settings: &StoreSettings,
    read_only: bool,
) -> Result<Single, StoreError> {
    let connecting = async {
        match url.kind() {
            Kind::Sqlite(path) => {
                let options = sqlite_options(path, settings, read_only);
                loop {
                    match SqliteConnection::connect_with(&options).await {
                        // Switching a new file to WAL while another
                        // connection opens it fails at once with "database
                        // is locked" (the busy handler is not asked): try
                        // again, within the connect timeout.
                        Err(err) if is_sqlite_busy(&err) => {
                            tokio::time::sleep(SQLITE_BUSY_RETRY).await;
                        }
                        other => break other.map(Single::Sqlite),
                    }
                }
            }
            Kind::Postgres(target) => {
                PgConnection::connect_with(&postgres_options(target, settings))
                    .await
                    .map(Single::Postgres)
            }
        }
    };
    if let (Kind::Sqlite(path), false) = (url.kind(), read_only) {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                context: format!("creating {}", dir.display()),
                source,
            })?;
        }
    }
    match tokio::time::timeout(settings.connect_timeout, connecting).await {
        Ok(Ok(single)) => Ok(single),
        Ok(Err(err)) => Err(StoreError::Connect {
            store: url.to_string(),
            reason: url.hide_password_in(&err.to_string()),
        }),
        Err(_) => Err(StoreError::TimedOut {
            store: url.to_string(),
            doing: "connecting",
            after: settings.connect_timeout,
        }),
    }
}

/// The columns of a [`JobRecord`], in [`job_from_row`]'s order.
macro_rules! job_columns {
    () => {
        "seq, id, repo, branch, commit_id, subject, author, status, attempts, duplicates, runner, connection, enqueued_at_ms, started_at_ms, finished_at_ms, duration_ms, exit_code, reason, truncated, salt, sandbox, name, pipeline, queue, needs, allow_failure, spec"
    };
}

/// Locks a job's row and returns it: the no-op update takes the lock
/// (PostgreSQL holds it to the end of the transaction).
const LOCK_JOB: &str = concat!(
    "UPDATE jobs SET repo = repo WHERE id = $1 RETURNING ",
    job_columns!()
);

const QUEUE_JOB: &str = concat!(
    "INSERT INTO jobs (id, repo, branch, commit_id, subject, author, status, enqueued_at_ms, salt, ",
    "name, pipeline, queue, needs, allow_failure, spec) ",
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) ",
    "ON CONFLICT (id) DO NOTHING"
);

/// Every job of a pipeline, in the order they were recorded.
const PIPELINE_JOBS: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM jobs WHERE pipeline = $1 OR (id = $1 AND pipeline IS NULL) ORDER BY seq"
);

/// Locks a pipeline (its planning job's row) while its jobs are advanced,
/// so two dispatchers finishing two of its jobs at once see each other's
/// outcome: the second waits for the first to commit, then reads.
const LOCK_PIPELINE: &str = "UPDATE jobs SET repo = repo WHERE id = $1";

/// A waiting job whose needs ended well: queued ($2) now ($3).
const RELEASE_JOB: &str = concat!(
    "UPDATE jobs SET status = $2, enqueued_at_ms = $3 WHERE id = $1 AND status = $4 RETURNING ",
    job_columns!()
);

/// A waiting job that will not run ($2: skipped).
const SKIP_JOB: &str = concat!(
    "UPDATE jobs SET status = $2, reason = $3, finished_at_ms = $4, log_bytes = $5 ",
    "WHERE id = $1 AND status = $6 RETURNING ",
    job_columns!()
);

/// A job that has not ended ($6, $7, $8: waiting, queued, running) is
/// canceled ($2) with a reason ($3) now ($4); $5 bytes of note are
/// appended to its log.
const CANCEL_JOB: &str = concat!(
    "UPDATE jobs SET status = $2, reason = $3, finished_at_ms = $4, log_bytes = log_bytes + $5 ",
    "WHERE id = $1 AND status IN ($6, $7, $8) RETURNING ",
    job_columns!()
);

/// A canceled job's row that was never published is not published.
const OUTBOX_DROP: &str = "DELETE FROM outbox WHERE job_id = $1 AND sent_ms IS NULL";

/// The jobs that have not ended ($4, $5, $6) of the pipelines of a
/// repository ($1) and branch ($2) whose planning job was recorded before
/// the one numbered $3 (pipelines a newer plan supersedes).
const SUPERSEDED_JOBS: &str = "SELECT id FROM jobs WHERE repo = $1 AND branch = $2 \
     AND status IN ($4, $5, $6) AND pipeline IN (SELECT p.id FROM jobs p \
     WHERE p.repo = $1 AND p.branch = $2 AND p.seq < $3 AND p.id = p.pipeline) ORDER BY seq";

/// A commit's first job that returned a plan is its pipeline's `plan`.
const NAME_PLAN: &str = concat!(
    "UPDATE jobs SET name = $2 WHERE id = $1 RETURNING ",
    job_columns!()
);

const OUTBOX_ADD: &str = "INSERT INTO outbox (job_id, queue, body, created_ms) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (job_id) DO NOTHING";

/// Oldest first, and among the rows of one transaction in the order their
/// jobs were recorded (a split's batches, longest first).
const OUTBOX_PENDING: &str = "SELECT o.job_id, o.queue, o.body FROM outbox o \
     JOIN jobs j ON j.id = o.job_id \
     WHERE o.sent_ms IS NULL ORDER BY o.created_ms, j.seq LIMIT $1";

const OUTBOX_SENT: &str = "UPDATE outbox SET sent_ms = $2 WHERE job_id = $1 AND sent_ms IS NULL";

const CHANGES_PENDING: &str = "SELECT seq, job_id, status FROM job_changes ORDER BY seq LIMIT $1";

const TEST_TIMINGS: &str = "SELECT test, ms FROM test_timings WHERE repo = $1";
const TEST_TIMING: &str = "SELECT ms FROM test_timings WHERE repo = $1 AND test = $2";
const PUT_TEST_TIMING: &str = "INSERT INTO test_timings (repo, test, ms, runs, updated_ms) \
     VALUES ($1, $2, $3, 1, $4) ON CONFLICT (repo, test) \
     DO UPDATE SET ms = $3, runs = test_timings.runs + 1, updated_ms = $4";
const TEST_RESULT: &str = "SELECT status FROM test_results WHERE job_id = $1 AND test = $2";
const PUT_TEST_RESULT: &str = "INSERT INTO test_results \
     (job_id, test, status, duration_ms, runner, batch, attempts) \
     VALUES ($1, $2, $3, $4, $5, $6, 1) ON CONFLICT (job_id, test) \
     DO UPDATE SET status = $3, duration_ms = $4, runner = $5, batch = $6, \
     attempts = test_results.attempts + 1";
const TESTS_OF: &str = "SELECT test, status, duration_ms, runner, batch, attempts \
     FROM test_results WHERE job_id = $1 ORDER BY test";

const SET_NEEDS: &str = "UPDATE jobs SET needs = $2, spec = $3 WHERE id = $1";
const RUNNERS_SEEN_SINCE: &str = "SELECT COUNT(*) FROM runners WHERE last_seen_ms >= $1";
/// A split is cut for the runners seen this recently, when it names no
/// `parallel`.
const SPLIT_RUNNERS_SEEN_WITHIN_MS: i64 = 30_000;
/// The smallest batch worth its checkout and process start.
const SPLIT_MIN_BATCH_MS: u64 = 500;

/// The `seq` of the newest job beyond the `$1` newest (those at or below
/// it are not kept by `--keep-jobs`).
const KEEP_JOBS_LINE: &str = "SELECT seq FROM jobs ORDER BY seq DESC LIMIT 1 OFFSET $1";
/// Finished jobs ($1–$6: the terminal statuses) at or below the seq line
/// $7, or finished before $8, whose pipeline has no job that has not
/// ended ($9–$11: waiting, queued, running); oldest first, at most $12.
const PRUNABLE: &str = "SELECT j.id FROM jobs j \
     WHERE j.status IN ($1, $2, $3, $4, $5, $6) \
     AND (j.seq <= $7 OR j.finished_at_ms < $8) \
     AND NOT EXISTS (SELECT 1 FROM jobs p WHERE p.pipeline = j.pipeline \
     AND p.status IN ($9, $10, $11)) \
     ORDER BY j.seq LIMIT $12";

/// Queued jobs of one queue recorded before a given one.
const QUEUED_AHEAD: &str =
    "SELECT COUNT(*) FROM jobs WHERE queue = $1 AND status = $2 AND seq < $3";

const JOB_BY_ID: &str = concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = $1");

/// $6, $7: queued, running. The SET expressions all see the old status.
const START_JOB: &str = concat!(
    "UPDATE jobs SET attempts = attempts + $2, ",
    "status = CASE WHEN status IN ($6, $7) THEN $7 ELSE status END, ",
    "runner = CASE WHEN status IN ($6, $7) THEN $3 ELSE runner END, ",
    "connection = CASE WHEN status IN ($6, $7) THEN $4 ELSE connection END, ",
    "started_at_ms = CASE WHEN status IN ($6, $7) THEN $5 ELSE started_at_ms END, ",
    "sandbox = CASE WHEN status IN ($6, $7) THEN $8 ELSE sandbox END ",
    "WHERE id = $1 RETURNING ",
    job_columns!()
);

const COUNT_DUPLICATE: &str = concat!(
    "UPDATE jobs SET duplicates = duplicates + 1 WHERE id = $1 RETURNING ",
    job_columns!()
);

/// `error` for a dead letter, only if the job has no outcome ($7, $8:
/// queued, running).
const DEAD_JOB: &str = concat!(
    "UPDATE jobs SET status = $2, reason = $3, finished_at_ms = $4, dead_lettered = $5, ",
    "log_bytes = $6 WHERE id = $1 AND status IN ($7, $8) RETURNING ",
    job_columns!()
);

const REPLACE_LOG: &str = "INSERT INTO job_logs (job_id, text) VALUES ($1, $2) \
     ON CONFLICT (job_id) DO UPDATE SET text = excluded.text";

const APPEND_LOG: &str = "INSERT INTO job_logs (job_id, text) VALUES ($1, $2) \
     ON CONFLICT (job_id) DO UPDATE SET text = job_logs.text || excluded.text";

/// Live output from the start: the log's new length, while the job has
/// no outcome ($3, $4: queued, running).
const RESTART_LOG_BYTES: &str =
    "UPDATE jobs SET log_bytes = $2 WHERE id = $1 AND status IN ($3, $4)";

/// Live output that continues the log where it ends ($5).
const GROW_LOG_BYTES: &str = "UPDATE jobs SET log_bytes = log_bytes + $2 \
     WHERE id = $1 AND status IN ($3, $4) AND log_bytes = $5";

const RUNNER_SEEN: &str = "INSERT INTO runners (id, host, connection, current_job, last_seen_ms, \
     sandbox, queues) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO UPDATE SET \
     host = excluded.host, connection = excluded.connection, current_job = excluded.current_job, \
     last_seen_ms = excluded.last_seen_ms, sandbox = excluded.sandbox, queues = excluded.queues";

/// Commits in `[$1, $2)`: those starting with the hex prefix $1 ($2 is
/// $1 followed by `g`, past every hex digit), so the index is used.
const COMMITS_WITH_PREFIX: &str = "SELECT DISTINCT commit_id FROM jobs \
     WHERE commit_id >= $1 AND commit_id < $2 ORDER BY commit_id LIMIT $3";

const NEWEST_OF_COMMIT: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM jobs WHERE commit_id = $1 ORDER BY seq DESC LIMIT 1"
);

const RUNNING: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM jobs WHERE status = $1 ORDER BY seq DESC"
);

const RUNNERS: &str = "SELECT id, host, current_job, last_seen_ms, jobs_done, sandbox, queues \
     FROM runners ORDER BY id";

const LOG: &str = "SELECT text FROM job_logs WHERE job_id = $1";

/// The registry's columns, in [`repo_from_row`]'s order.
macro_rules! repo_columns {
    () => {
        "name, url, branches, poll_secs, webhook_secret_env, status_kind, status_api, status_repo, status_token_env"
    };
}

const REPOS: &str = concat!("SELECT ", repo_columns!(), " FROM repos ORDER BY name");

const REPO: &str = concat!("SELECT ", repo_columns!(), " FROM repos WHERE name = $1");

/// Adds or replaces an entry; `xmax = 0`-style tricks differ by backend,
/// so whether it was new is asked first, in the same transaction.
const PUT_REPO: &str = "INSERT INTO repos (name, url, branches, poll_secs, webhook_secret_env, \
     status_kind, status_api, status_repo, status_token_env, updated_at_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
     ON CONFLICT (name) DO UPDATE SET url = excluded.url, branches = excluded.branches, \
     poll_secs = excluded.poll_secs, webhook_secret_env = excluded.webhook_secret_env, \
     status_kind = excluded.status_kind, status_api = excluded.status_api, \
     status_repo = excluded.status_repo, status_token_env = excluded.status_token_env, \
     updated_at_ms = excluded.updated_at_ms";

const REPO_EXISTS: &str = "SELECT COUNT(*) FROM repos WHERE name = $1";

const REMOVE_REPO: &str = "DELETE FROM repos WHERE name = $1";

/// $6 to $9: the four outcomes; $10: the job's name in its pipeline.
const FINISHED_BEFORE: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM jobs WHERE repo = $1 AND branch = $2 AND name = $10 AND id <> $3 ",
    "AND status IN ($6, $7, $8, $9) AND finished_at_ms IS NOT NULL ",
    "AND (finished_at_ms < $4 OR (finished_at_ms = $4 AND seq < $5)) ",
    "ORDER BY finished_at_ms DESC, seq DESC LIMIT 1"
);

const COUNT_BY_STATUS: &str = "SELECT status, COUNT(*) FROM jobs GROUP BY status";

/// One status's jobs: a range of the (status, seq) index, as long as the
/// number of such jobs (queued and running ones are few).
const COUNT_OF_STATUS: &str = "SELECT COUNT(*) FROM jobs WHERE status = $1";

const SUMS: &str = "SELECT CAST(COALESCE(SUM(duplicates), 0) AS BIGINT), \
     CAST(COALESCE(SUM(CASE WHEN dead_lettered THEN 1 ELSE 0 END), 0) AS BIGINT) FROM jobs";

/// A write that changes nothing, to learn whether writes are possible.
const PROBE_WRITE: &str = "UPDATE warren_migrations SET name = name \
     WHERE version = (SELECT MAX(version) FROM warren_migrations)";

/// Binds a job's columns as [`QUEUE_JOB`] lists them.
macro_rules! bind_job {
    ($query:expr, $job:expr) => {
        $query
            .bind($job.id)
            .bind($job.repo)
            .bind($job.branch)
            .bind($job.commit)
            .bind($job.subject.as_deref())
            .bind($job.author.as_deref())
            .bind($job.status.as_str())
            .bind($job.enqueued_at_ms)
            .bind($job.salt)
            .bind($job.name)
            .bind($job.pipeline)
            .bind($job.queue)
            .bind($job.needs.as_str())
            .bind($job.allow_failure)
            .bind($job.spec.as_deref())
    };
}

/// A job's columns as stored.
struct JobValues<'a> {
    id: &'a str,
    repo: &'a str,
    branch: &'a str,
    commit: &'a str,
    subject: Option<Cow<'a, str>>,
    author: Option<Cow<'a, str>>,
    enqueued_at_ms: i64,
    salt: &'a str,
    status: JobStatus,
    name: &'a str,
    pipeline: &'a str,
    queue: &'a str,
    needs: String,
    allow_failure: bool,
    spec: Option<String>,
}

impl<'a> JobValues<'a> {
    /// A job as published: queued.
    fn of(job: &'a Job) -> Self {
        let spec = job.spec.as_ref();
        JobValues {
            status: JobStatus::Queued,
            name: job.name(),
            pipeline: job.pipeline.as_ref().unwrap_or(&job.id).as_str(),
            queue: spec.map_or(model::QueueName::DEFAULT, |s| s.queue.as_str()),
            needs: serde_json::to_string(spec.map_or(&[][..], |s| s.needs.as_slice()))
                .unwrap_or_else(|_| "[]".into()),
            allow_failure: spec.is_some_and(|s| s.allow_failure),
            spec: spec.and_then(|s| serde_json::to_string(s).ok()),
            id: job.id.as_str(),
            repo: job.repo.as_str(),
            branch: job.branch.as_str(),
            commit: job.commit.as_str(),
            subject: job.subject.as_deref().map(storable),
            author: job.author.as_deref().map(storable),
            enqueued_at_ms: ms(job.enqueued_at_ms),
            salt: &job.salt,
        }
    }
}

/// Text as the store keeps it: NUL, which PostgreSQL's text refuses,
/// becomes SUB (0x1A, ASCII's substitute character) on both backends, one
/// byte for one, so a log's byte offsets keep their meaning.
pub(crate) fn storable(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{1a}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// The longest start of `text` of at most `max` bytes that ends on a
/// character boundary.
pub(crate) fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Milliseconds as the store keeps them.
fn ms(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn parse<T>(value: &str) -> Result<T, Fail>
where
    T: FromStr,
    T::Err: Display,
{
    value
        .parse()
        .map_err(|err: T::Err| Fail::Corrupt(err.to_string()))
}

fn repo_from_row<'r, R>(row: &'r R) -> Result<Repo, Fail>
where
    R: Row,
    usize: ColumnIndex<R>,
    f64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    let branches: String = row.try_get(2)?;
    let branches: Vec<String> = serde_json::from_str(&branches)
        .map_err(|e| Fail::Corrupt(format!("branches {branches:?}: {e}")))?;
    let status_kind: Option<String> = row.try_get(5)?;
    let status = match status_kind {
        None => None,
        Some(kind) => Some(StatusTarget {
            kind: parse(&kind)?,
            api: row.try_get::<Option<String>, _>(6)?.unwrap_or_default(),
            repo: row.try_get::<Option<String>, _>(7)?.unwrap_or_default(),
            token_env: row.try_get::<Option<String>, _>(8)?.unwrap_or_default(),
        }),
    };
    Ok(Repo {
        name: parse(&row.try_get::<String, _>(0)?)?,
        url: parse(&row.try_get::<String, _>(1)?)?,
        branches,
        poll_secs: row.try_get(3)?,
        webhook_secret_env: row.try_get(4)?,
        status,
    })
}

fn job_from_row<'r, R>(row: &'r R) -> Result<JobRecord, Fail>
where
    R: Row,
    usize: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    bool: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    let runner: Option<String> = row.try_get(10)?;
    Ok(JobRecord {
        seq: row.try_get(0)?,
        id: parse(&row.try_get::<String, _>(1)?)?,
        repo: parse(&row.try_get::<String, _>(2)?)?,
        branch: parse(&row.try_get::<String, _>(3)?)?,
        commit: parse(&row.try_get::<String, _>(4)?)?,
        subject: row.try_get(5)?,
        author: row.try_get(6)?,
        status: parse(&row.try_get::<String, _>(7)?)?,
        attempts: row.try_get(8)?,
        duplicates: row.try_get(9)?,
        runner: runner.as_deref().map(parse).transpose()?,
        connection: row.try_get(11)?,
        enqueued_at_ms: row.try_get(12)?,
        started_at_ms: row.try_get(13)?,
        finished_at_ms: row.try_get(14)?,
        duration_ms: row.try_get(15)?,
        exit_code: row.try_get(16)?,
        reason: row.try_get(17)?,
        truncated: row.try_get(18)?,
        salt: row.try_get(19)?,
        sandbox: row
            .try_get::<Option<String>, _>(20)?
            .as_deref()
            .map(parse)
            .transpose()?,
        name: row.try_get(21)?,
        // NULL from a writer that predates pipelines (a dispatcher of an
        // older version on the same PostgreSQL): the job is its own.
        pipeline: match row.try_get::<Option<String>, _>(22)? {
            Some(pipeline) => parse(&pipeline)?,
            None => parse(&row.try_get::<String, _>(1)?)?,
        },
        queue: parse(&row.try_get::<String, _>(23)?)?,
        needs: json_column(&row.try_get::<String, _>(24)?, "needs")?,
        allow_failure: row.try_get(25)?,
        spec: row
            .try_get::<Option<String>, _>(26)?
            .as_deref()
            .map(|text| json_column(text, "spec"))
            .transpose()?,
    })
}

fn json_column<T: serde::de::DeserializeOwned>(text: &str, column: &str) -> Result<T, Fail> {
    serde_json::from_str(text).map_err(|e| Fail::Corrupt(format!("{column} {text:?}: {e}")))
}

fn runner_from_row<'r, R>(row: &'r R) -> Result<RunnerRecord, Fail>
where
    R: Row,
    usize: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    let current_job: Option<String> = row.try_get(2)?;
    Ok(RunnerRecord {
        id: parse(&row.try_get::<String, _>(0)?)?,
        host: row.try_get(1)?,
        current_job: current_job.as_deref().map(parse).transpose()?,
        last_seen_ms: row.try_get(3)?,
        jobs_done: row.try_get(4)?,
        sandbox: parse(&row.try_get::<String, _>(5)?)?,
        queues: json_column(&row.try_get::<String, _>(6)?, "queues")?,
    })
}

/// A job's identity as an error shows it.
fn identity(repo: &str, branch: &str, commit: &str, salt: &str) -> String {
    if salt.is_empty() {
        format!("{repo} {branch} {commit}")
    } else {
        format!("{repo} {branch} {commit} (salt {salt:?})")
    }
}

/// A known id must name the same job: the same repository, branch,
/// commit and salt.
fn same_job(record: &JobRecord, job: &Job) -> Result<(), Fail> {
    if record.repo == job.repo
        && record.branch == job.branch
        && record.commit == job.commit
        && record.salt == job.salt
    {
        return Ok(());
    }
    Err(Fail::Store(StoreError::Collision {
        id: job.id.clone(),
        stored: identity(
            record.repo.as_str(),
            record.branch.as_str(),
            record.commit.as_str(),
            &record.salt,
        ),
        given: identity(
            job.repo.as_str(),
            job.branch.as_str(),
            job.commit.as_str(),
            &job.salt,
        ),
    }))
}

/// Records `job` unless known and returns it as it was, its row locked
/// for the rest of the transaction, and whether it was unknown: the
/// first statements of every transition.
async fn lock_job(tx: &mut Tx<'_>, job: &Job) -> Result<(JobRecord, bool), Fail> {
    // Usually known (its queued copy came first): locked in one round
    // trip; recorded first otherwise.
    let (record, inserted) = match lock_row(tx, job).await? {
        Some(record) => (record, false),
        None => {
            let values = JobValues::of(job);
            let inserted = on!(tx.conn(), |c| bind_job!(sqlx::query(QUEUE_JOB), values)
                .execute(c)
                .await?
                .rows_affected())
                == 1;
            let record = lock_row(tx, job)
                .await?
                .ok_or_else(|| Fail::Corrupt(format!("job {} vanished while recorded", job.id)))?;
            (record, inserted)
        }
    };
    same_job(&record, job)?;
    Ok((record, inserted))
}

/// The rows of a batch's known jobs, locked in one statement (as
/// [`LOCK_JOB`] each), by id; unknown ids are missing.
async fn lock_rows(tx: &mut Tx<'_>, ids: &[&str]) -> Result<HashMap<String, JobRecord>, Fail> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!(
        "UPDATE jobs SET repo = repo WHERE id IN ({}) RETURNING {}",
        placeholders(1, ids.len()),
        job_columns!()
    );
    let records = on!(tx.conn(), |c| {
        let mut query = sqlx::query(&sql);
        for id in ids {
            query = query.bind(*id);
        }
        query
            .fetch_all(c)
            .await?
            .iter()
            .map(job_from_row)
            .collect::<Result<Vec<_>, _>>()?
    });
    Ok(records
        .into_iter()
        .map(|record| (record.id.as_str().to_string(), record))
        .collect())
}

/// Of `pipelines`, those with no job waiting: a result of a job that is
/// its own pipeline there has nothing to release, and skips the read of
/// the pipeline's jobs.
async fn pipelines_without_waiting(
    tx: &mut Tx<'_>,
    pipelines: &[&str],
) -> Result<std::collections::HashSet<String>, Fail> {
    if pipelines.is_empty() {
        return Ok(Default::default());
    }
    let sql = format!(
        "SELECT DISTINCT pipeline FROM jobs WHERE status = $1 AND pipeline IN ({})",
        placeholders(2, pipelines.len())
    );
    let waiting: Vec<String> = on!(tx.conn(), |c| {
        let mut query = sqlx::query(&sql).bind(JobStatus::Waiting.as_str());
        for pipeline in pipelines {
            query = query.bind(*pipeline);
        }
        query
            .fetch_all(c)
            .await?
            .iter()
            .map(|row| row.try_get::<String, _>(0))
            .collect::<Result<Vec<_>, _>>()?
    });
    Ok(pipelines
        .iter()
        .filter(|p| !waiting.iter().any(|w| w == *p))
        .map(|p| p.to_string())
        .collect())
}

/// `$first, $first+1, …`, `count` of them.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn lock_row(tx: &mut Tx<'_>, job: &Job) -> Result<Option<JobRecord>, Fail> {
    Ok(on!(tx.conn(), |c| {
        match sqlx::query(LOCK_JOB)
            .bind(job.id.as_str())
            .fetch_optional(c)
            .await?
        {
            Some(row) => Some(job_from_row(&row)?),
            None => None,
        }
    }))
}

/// Records `jobs` of a pipeline as `waiting` (unless known), for the
/// pipeline's advance to release or skip: a plan's jobs, a rerun's copies.
async fn timings_in(conn: Conn<'_>, repo: &model::RepoUrl) -> Result<HashMap<TestId, u64>, Fail> {
    let rows: Vec<(String, i64)> = on!(conn, |c| sqlx::query(TEST_TIMINGS)
        .bind(repo.as_str())
        .fetch_all(c)
        .await?
        .iter()
        .map(|row| Ok::<_, sqlx::Error>((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<Vec<_>, _>>()?);
    rows.into_iter()
        .map(|(test, ms)| {
            let id = TestId::from_line(&test)
                .ok_or_else(|| Fail::Corrupt(format!("{test:?} is not a test id")))?;
            Ok((id, ms.max(0) as u64))
        })
        .collect()
}

async fn write_tests_in(tx: &mut Tx<'_>, run: &TestsRun<'_>) -> Result<(), Fail> {
    for outcome in run.outcomes {
        let test = outcome.test.as_str();
        let previous: Option<String> = on!(tx.conn(), |c| {
            match sqlx::query(TEST_RESULT)
                .bind(run.parent.as_str())
                .bind(test)
                .fetch_optional(c)
                .await?
            {
                Some(row) => Some(row.try_get::<String, _>(0)?),
                None => None,
            }
        });
        let previous = previous.map(|p| parse::<TestStatus>(&p)).transpose()?;
        let status = model::split::merge(previous, outcome.status);
        on!(tx.conn(), |c| sqlx::query(PUT_TEST_RESULT)
            .bind(run.parent.as_str())
            .bind(test)
            .bind(status.as_str())
            .bind(ms(outcome.duration_ms))
            .bind(run.runner)
            .bind(run.batch.as_str())
            .execute(c)
            .await?
            .rows_affected());
        if outcome.status == TestStatus::Skipped {
            continue;
        }
        let old: Option<i64> = on!(tx.conn(), |c| {
            match sqlx::query(TEST_TIMING)
                .bind(run.repo.as_str())
                .bind(test)
                .fetch_optional(c)
                .await?
            {
                Some(row) => Some(row.try_get::<i64, _>(0)?),
                None => None,
            }
        });
        let smoothed = model::split::smooth(old.map(|ms| ms.max(0) as u64), outcome.duration_ms);
        on!(tx.conn(), |c| sqlx::query(PUT_TEST_TIMING)
            .bind(run.repo.as_str())
            .bind(test)
            .bind(ms(smoothed))
            .bind(ms(run.at_ms))
            .execute(c)
            .await?
            .rows_affected());
    }
    Ok(())
}

async fn tests_in(conn: Conn<'_>, parent: &JobId) -> Result<Vec<TestRecord>, Fail> {
    type Row = (String, String, i64, String, String, i64);
    let rows: Vec<Row> = on!(conn, |c| sqlx::query(TESTS_OF)
        .bind(parent.as_str())
        .fetch_all(c)
        .await?
        .iter()
        .map(|row| {
            Ok::<_, sqlx::Error>((
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
                row.try_get(4)?,
                row.try_get(5)?,
            ))
        })
        .collect::<Result<Vec<_>, _>>()?);
    rows.into_iter()
        .map(|(test, status, duration_ms, runner, batch, attempts)| {
            Ok(TestRecord {
                test: TestId::from_line(&test)
                    .ok_or_else(|| Fail::Corrupt(format!("{test:?} is not a test id")))?,
                status: parse(&status)?,
                duration_ms: duration_ms.max(0) as u64,
                runner,
                batch,
                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            })
        })
        .collect()
}

async fn insert_waiting(tx: &mut Tx<'_>, jobs: &[Job]) -> Result<(), Fail> {
    for job in jobs {
        let mut values = JobValues::of(job);
        values.status = JobStatus::Waiting;
        on!(tx.conn(), |c| bind_job!(sqlx::query(QUEUE_JOB), values)
            .execute(c)
            .await?
            .rows_affected());
    }
    Ok(())
}

async fn job_by_id(conn: Conn<'_>, id: &str) -> Result<Option<JobRecord>, Fail> {
    Ok(on!(conn, |c| {
        match sqlx::query(JOB_BY_ID).bind(id).fetch_optional(c).await? {
            Some(row) => Some(job_from_row(&row)?),
            None => None,
        }
    }))
}

/// What a batch of results found when it began, in its transaction.
struct BatchLocks {
    /// The batch's known jobs as they were, their rows locked; each is
    /// taken by its first result.
    rows: HashMap<String, JobRecord>,
    /// Jobs of the batch that are their own pipeline, with no job waiting
    /// in it.
    calm: std::collections::HashSet<String>,
    /// Outcomes already written together (see `outcomes_together`): the
    /// row as written, or `None` when the job had its outcome already.
    outcomes: HashMap<String, Option<JobRecord>>,
}

/// Outcomes written by one statement at most (11 parameters each).
const OUTCOMES_PER_STATEMENT: usize = 256;

/// The outcomes of `rows` jobs in one statement, each only if the job
/// has none yet: 11 parameters per job (id, status, runner, started, finished,
/// duration, exit code, reason, truncated, log bytes, sandbox), then the
/// two statuses a job may have to take an outcome. The same SQL on both
/// backends (SQLite 3.33 has `UPDATE … FROM`); the casts give PostgreSQL
/// the parameters' types.
fn finish_jobs_sql(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|n| {
            let p = |k: usize| format!("${}", 11 * n + k);
            format!(
                "({}, {}, {}, CAST({} AS BIGINT), CAST({} AS BIGINT), CAST({} AS BIGINT), \
                 CAST({} AS BIGINT), {}, CAST({} AS BOOLEAN), CAST({} AS BIGINT), {})",
                p(1),
                p(2),
                p(3),
                p(4),
                p(5),
                p(6),
                p(7),
                p(8),
                p(9),
                p(10),
                p(11)
            )
        })
        .collect();
    let returning: Vec<String> = job_columns!()
        .split(", ")
        .map(|column| format!("jobs.{column}"))
        .collect();
    format!(
        "WITH v (id, status, runner, started_at_ms, finished_at_ms, duration_ms, exit_code, \
         reason, truncated, log_bytes, sandbox) AS (VALUES {}) \
         UPDATE jobs SET status = v.status, runner = v.runner, \
         started_at_ms = v.started_at_ms, finished_at_ms = v.finished_at_ms, \
         duration_ms = v.duration_ms, exit_code = v.exit_code, reason = v.reason, \
         truncated = v.truncated, log_bytes = v.log_bytes, \
         attempts = CASE WHEN jobs.attempts < 1 THEN 1 ELSE jobs.attempts END, \
         sandbox = v.sandbox \
         FROM v WHERE jobs.id = v.id AND jobs.status IN (${}, ${}) RETURNING {}",
        values.join(", "),
        11 * rows + 1,
        11 * rows + 2,
        returning.join(", ")
    )
}

/// What recording a batch of outcomes writes besides the jobs' rows,
/// gathered so each kind is one statement for the whole batch.
#[derive(Default)]
struct OutcomeWrites {
    /// (job, its log), each job once: only a job's first result writes.
    logs: Vec<(String, String)>,
    /// Runner → the jobs it finished.
    runners: std::collections::BTreeMap<String, Vec<String>>,
}

impl OutcomeWrites {
    fn log(&mut self, job: &str, text: String) {
        self.logs.push((job.to_string(), text));
    }

    fn runner_done(&mut self, runner: &str, job: &str) {
        self.runners
            .entry(runner.to_string())
            .or_default()
            .push(job.to_string());
    }

    async fn flush(self, tx: &mut Tx<'_>) -> Result<(), Fail> {
        if !self.logs.is_empty() {
            let sql = replace_logs_sql(self.logs.len());
            on!(tx.conn(), |c| {
                let mut query = sqlx::query(&sql);
                for (job, text) in &self.logs {
                    query = query.bind(job.as_str()).bind(text.as_str());
                }
                query.execute(c).await?.rows_affected()
            });
        }
        for (runner, jobs) in &self.runners {
            let sql = runner_done_sql(jobs.len());
            on!(tx.conn(), |c| {
                let mut query = sqlx::query(&sql)
                    .bind(runner.as_str())
                    .bind(jobs.len() as i64);
                for job in jobs {
                    query = query.bind(job.as_str());
                }
                query.execute(c).await?.rows_affected()
            });
        }
        Ok(())
    }
}

/// Replaces the logs of `rows` jobs at once (as [`REPLACE_LOG`]).
fn replace_logs_sql(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|n| format!("(${}, ${})", 2 * n + 1, 2 * n + 2))
        .collect();
    format!(
        "INSERT INTO job_logs (job_id, text) VALUES {} \
         ON CONFLICT (job_id) DO UPDATE SET text = excluded.text",
        values.join(", ")
    )
}

/// Jobs of one runner ($1) finished: its count grows by $2 (the number
/// of jobs, bound as $3…), and its current job is cleared if it is one.
fn runner_done_sql(jobs: usize) -> String {
    let list: Vec<String> = (0..jobs).map(|n| format!("${}", n + 3)).collect();
    format!(
        "UPDATE runners SET jobs_done = jobs_done + $2, \
         current_job = CASE WHEN current_job IN ({}) THEN NULL ELSE current_job END WHERE id = $1",
        list.join(", ")
    )
}

pub(crate) async fn replace_log(conn: Conn<'_>, id: &str, text: &str) -> Result<(), Fail> {
    on!(conn, |c| sqlx::query(REPLACE_LOG)
        .bind(id)
        .bind(text)
        .execute(c)
        .await?
        .rows_affected());
    Ok(())
}

async fn runner_seen(
    conn: Conn<'_>,
    runner: &RunnerInfo,
    job: Option<&str>,
    at_ms: i64,
) -> Result<(), Fail> {
    let (host, connection) = (storable(&runner.host), storable(&runner.connection));
    let queues = serde_json::to_string(&runner.served_queues()).unwrap_or_else(|_| "[]".into());
    on!(conn, |c| sqlx::query(RUNNER_SEEN)
        .bind(runner.id.as_str())
        .bind(host.as_ref())
        .bind(connection.as_ref())
        .bind(job)
        .bind(at_ms)
        .bind(runner.sandbox.as_str())
        .bind(queues.as_str())
        .execute(c)
        .await?
        .rows_affected());
    Ok(())
}

/// `SELECT` of a histogram's count, sum and cumulative bucket counts of
/// `expr` over the jobs matching `filter`, the bucket bounds bound as $1…
fn histogram_sql(expr: &str, filter: &str, buckets: usize) -> String {
    let mut sql = format!("SELECT COUNT(*), CAST(COALESCE(SUM({expr}), 0) AS BIGINT)");
    for n in 1..=buckets {
        let _ = write!(
            sql,
            ", CAST(COALESCE(SUM(CASE WHEN {expr} <= ${n} THEN 1 ELSE 0 END), 0) AS BIGINT)"
        );
    }
    let _ = write!(sql, " FROM jobs WHERE {filter}");
    sql
}

async fn histogram(
    conn: Conn<'_>,
    expr: &str,
    filter: &str,
    buckets: &[f64],
) -> Result<Histogram, Fail> {
    let sql = histogram_sql(expr, filter, buckets.len());
    let values: Vec<i64> = on!(conn, |c| {
        let mut query = sqlx::query(&sql);
        for bound in buckets {
            query = query.bind((bound * 1000.0) as i64);
        }
        let row = query.fetch_one(c).await?;
        (0..buckets.len() + 2)
            .map(|i| row.try_get::<i64, _>(i))
            .collect::<Result<_, _>>()?
    });
    Ok(Histogram {
        count: values[0],
        sum_seconds: values[1] as f64 / 1000.0,
        buckets: buckets
            .iter()
            .copied()
            .zip(values[2..].iter().copied())
            .collect(),
    })
}

/// The store for either backend.
pub(crate) struct SqlStore {
    pool: Pool,
    url: StoreUrl,
    settings: StoreSettings,
    /// PostgreSQL: the connection whose session holds the duties' advisory
    /// lock, while this store leads (see [`Store::try_lead`]).
    leader: tokio::sync::Mutex<Option<Single>>,
}

/// The advisory lock's key: one lock per database, whatever the
/// namespace (a database belongs to one deployment).
const DUTIES_LOCK: i64 = 0x7761_7272_656e_0001;

/// How long checking or taking the lock may take.
const LEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

impl SqlStore {
    pub(crate) async fn open(url: &StoreUrl, settings: StoreSettings) -> Result<Self, StoreError> {
        let mut single = connect(url, &settings, false).await?;
        let migrated = crate::migrate::apply(&mut single, url, &settings).await;
        single.close().await;
        migrated?;
        let pool = match url.kind() {
            Kind::Sqlite(path) => Pool::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(settings.max_connections)
                    .acquire_timeout(settings.acquire_timeout)
                    .connect_lazy_with(sqlite_options(path, &settings, false)),
            ),
            Kind::Postgres(target) => Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(settings.max_connections)
                    .acquire_timeout(settings.acquire_timeout)
                    .connect_lazy_with(postgres_options(target, &settings)),
            ),
        };
        Ok(SqlStore {
            pool,
            url: url.clone(),
            settings,
            leader: Default::default(),
        })
    }

    /// Puts a failure in words, naming what was being done.
    fn failed(&self, doing: &'static str) -> impl FnOnce(Fail) -> StoreError + '_ {
        move |fail| fail.describe(&self.url, &self.settings, doing)
    }

    /// A result's output as the log keeps it, cut to the output cap (with a
    /// note saying so), and whether it was cut here or by the runner.
    fn capped_output<'a>(&self, output: &'a str, truncated: bool) -> (Cow<'a, str>, bool) {
        let cap = self.settings.output_cap;
        let output = storable(output);
        if output.len() <= cap {
            return (output, truncated);
        }
        let note = format!("\n[warren: log cut to the store's cap of {cap} bytes]\n");
        if note.len() >= cap {
            return (Cow::Owned(cut(&output, cap).to_string()), true);
        }
        let kept = cut(&output, cap - note.len());
        (Cow::Owned(format!("{kept}{note}")), true)
    }

    async fn queue(&self, job: &Job) -> Result<Queued, Fail> {
        let values = JobValues::of(job);
        let mut held = self.pool.acquire().await?;
        let inserted: Result<u64, Fail> = async {
            Ok(on!(held.conn(), |c| bind_job!(
                sqlx::query(QUEUE_JOB),
                values
            )
            .execute(c)
            .await?
            .rows_affected()))
        }
        .await;
        held.discard_if(&inserted);
        let inserted = inserted?;
        let record = job_by_id(held.conn(), job.id.as_str())
            .await?
            .ok_or_else(|| Fail::Corrupt(format!("job {} vanished once recorded", job.id)))?;
        same_job(&record, job)?;
        Ok(Queued {
            record,
            new: inserted == 1,
        })
    }

    async fn start(&self, job: &Job, runner: &RunnerInfo, at_ms: u64) -> Result<Started, Fail> {
        let at_ms = ms(at_ms);
        let mut tx = self.pool.begin().await?;
        let (before, inserted) = lock_job(&mut tx, job).await?;
        // The late `started` of the execution whose result is recorded is
        // not another attempt.
        let same_execution =
            before.runner.as_ref() == Some(&runner.id) && before.started_at_ms == Some(at_ms);
        let connection = storable(&runner.connection);
        let record = on!(tx.conn(), |c| {
            let row = sqlx::query(START_JOB)
                .bind(job.id.as_str())
                .bind(i64::from(!same_execution))
                .bind(runner.id.as_str())
                .bind(connection.as_ref())
                .bind(at_ms)
                .bind(JobStatus::Queued.as_str())
                .bind(JobStatus::Running.as_str())
                .bind(runner.sandbox.as_str())
                .fetch_one(c)
                .await?;
            job_from_row(&row)?
        });
        runner_seen(tx.conn(), runner, Some(job.id.as_str()), at_ms).await?;
        tx.commit().await?;
        Ok(Started {
            record,
            was: (!inserted).then_some(before.status),
            same_execution,
        })
    }

    async fn finish_one(&self, result: &JobResult) -> Result<Recorded, Fail> {
        let mut recorded = self.finish_all(std::slice::from_ref(result)).await?;
        recorded
            .pop()
            .ok_or_else(|| Fail::Corrupt("a result recorded nothing".into()))
    }

    /// Records `results` in one transaction, in order (one commit, one
    /// sync to disk, for a whole batch of the results queue). The batch's
    /// logs and runner counts are written last, a statement for all of
    /// them, rather than a round trip per result.
    ///
    /// The batch's known jobs are locked in one statement first, and the
    /// pipelines of those that are their own pipeline looked at in one
    /// more: a lone job (most of them) then costs one statement, its
    /// outcome, instead of three.
    async fn finish_all(&self, results: &[JobResult]) -> Result<Vec<Recorded>, Fail> {
        let mut tx = self.pool.begin().await?;
        let mut ids: Vec<&str> = results.iter().map(|r| r.job.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut batch = BatchLocks {
            rows: lock_rows(&mut tx, &ids).await?,
            calm: Default::default(),
            outcomes: HashMap::new(),
        };
        let own: Vec<&str> = batch
            .rows
            .values()
            .filter(|record| record.pipeline == record.id)
            .map(|record| record.id.as_str())
            .collect();
        batch.calm = pipelines_without_waiting(&mut tx, &own).await?;
        self.outcomes_together(&mut tx, results, &mut batch).await?;
        let mut recorded = Vec::with_capacity(results.len());
        let mut writes = OutcomeWrites::default();
        for result in results {
            recorded.push(
                self.finish(&mut tx, result, &mut batch, &mut writes)
                    .await?,
            );
        }
        writes.flush(&mut tx).await?;
        tx.commit().await?;
        Ok(recorded)
    }

    /// Writes in one statement the outcomes of the batch's known jobs
    /// whose results need nothing else first: a job's first result in the
    /// batch, no plan, not a part of a split job (a gate released by a
    /// batch's outcome must find every batch's tests already recorded).
    /// Their rows, as written, go to `batch.outcomes`; the rest of each
    /// result is done in order by [`finish`](Self::finish).
    async fn outcomes_together(
        &self,
        tx: &mut Tx<'_>,
        results: &[JobResult],
        batch: &mut BatchLocks,
    ) -> Result<(), Fail> {
        let mut seen = std::collections::HashSet::new();
        let mut together: Vec<&JobResult> = Vec::new();
        for result in results {
            let id = result.job.id.as_str();
            if !seen.insert(id) {
                continue;
            }
            let Some(record) = batch.rows.get(id) else {
                continue;
            };
            same_job(record, &result.job)?;
            if result.plan.is_none() && record.spec.as_ref().is_none_or(|s| s.split.is_none()) {
                together.push(result);
            }
        }
        for chunk in together.chunks(OUTCOMES_PER_STATEMENT) {
            let written = self.write_outcomes(tx, chunk).await?;
            for record in written {
                batch
                    .outcomes
                    .insert(record.id.as_str().to_string(), Some(record));
            }
            // Those not written already had an outcome: duplicates.
            for result in chunk {
                batch
                    .outcomes
                    .entry(result.job.id.as_str().to_string())
                    .or_insert(None);
            }
        }
        Ok(())
    }

    /// Writes the outcomes of `results` (each job once) in one statement,
    /// each only if its job has none yet; returns the rows written.
    async fn write_outcomes(
        &self,
        tx: &mut Tx<'_>,
        results: &[&JobResult],
    ) -> Result<Vec<JobRecord>, Fail> {
        let sql = finish_jobs_sql(results.len());
        Ok(on!(tx.conn(), |c| {
            let mut query = sqlx::query(&sql);
            for result in results {
                let (log, truncated) = self.capped_output(&result.output, result.truncated);
                let reason = result.reason.as_deref().map(storable);
                query = query
                    .bind(result.job.id.as_str())
                    .bind(JobStatus::from(result.outcome).as_str())
                    .bind(result.runner.id.as_str())
                    .bind(ms(result.started_at_ms))
                    .bind(ms(result.finished_at_ms))
                    .bind(ms(result.duration_ms))
                    .bind(result.exit_code.map(i64::from))
                    .bind(reason.map(Cow::into_owned))
                    .bind(truncated)
                    .bind(log.len() as i64)
                    .bind(result.runner.sandbox.as_str());
            }
            query
                .bind(JobStatus::Queued.as_str())
                .bind(JobStatus::Running.as_str())
                .fetch_all(c)
                .await?
                .iter()
                .map(job_from_row)
                .collect::<Result<Vec<_>, _>>()?
        }))
    }

    async fn finish(
        &self,
        tx: &mut Tx<'_>,
        result: &JobResult,
        batch: &mut BatchLocks,
        writes: &mut OutcomeWrites,
    ) -> Result<Recorded, Fail> {
        let id = result.job.id.as_str();
        // A job's second result in the batch sees what its first did.
        let (before, inserted) = match batch.rows.remove(id) {
            Some(record) => {
                same_job(&record, &result.job)?;
                (record, false)
            }
            None => lock_job(tx, &result.job).await?,
        };
        let outcome = match batch.outcomes.remove(id) {
            Some(written) => written,
            None => self.write_outcomes(tx, &[result]).await?.pop(),
        };
        let recorded = match outcome {
            Some(record) => {
                let (log, _) = self.capped_output(&result.output, result.truncated);
                writes.log(id, log.into_owned());
                writes.runner_done(result.runner.id.as_str(), id);
                self.split_result(tx, &record, result).await?;
                if result.plan.is_some() || record.spec.as_ref().is_some_and(|s| s.split.is_some())
                {
                    // It may add waiting jobs: look again from now on.
                    batch.calm.clear();
                }
                let (record, pipeline) = match &result.plan {
                    Some(plan) if result.outcome == model::Outcome::Passed => {
                        self.plan(tx, &result.job, plan).await?
                    }
                    _ if record.pipeline == record.id => {
                        // Its row is locked (above), so no job can have
                        // joined its pipeline since the batch looked.
                        let pipeline = if batch.calm.contains(id) {
                            Vec::new()
                        } else {
                            self.advance_locked(tx, &record.pipeline).await?
                        };
                        (record, pipeline)
                    }
                    _ => {
                        let pipeline = self.advance(tx, &record.pipeline).await?;
                        (record, pipeline)
                    }
                };
                Recorded::New {
                    record,
                    was: (!inserted).then_some(before.status),
                    pipeline,
                }
            }
            None => Recorded::Duplicate(on!(tx.conn(), |c| {
                let row = sqlx::query(COUNT_DUPLICATE).bind(id).fetch_one(c).await?;
                job_from_row(&row)?
            })),
        };
        Ok(recorded)
    }

    /// Records a planning job's plan, in its result's transaction: the job
    /// is named `plan`, its pipeline's jobs are recorded `waiting`, and
    /// those that need nothing are released at once. Returns the planning
    /// job and the jobs made.
    async fn plan(
        &self,
        tx: &mut Tx<'_>,
        planning: &Job,
        plan: &model::Plan,
    ) -> Result<(JobRecord, Vec<JobRecord>), Fail> {
        let record = on!(tx.conn(), |c| {
            let row = sqlx::query(NAME_PLAN)
                .bind(planning.id.as_str())
                .bind(model::pipeline::PLAN_JOB_NAME)
                .fetch_one(c)
                .await?;
            job_from_row(&row)?
        });
        let planned: Vec<Job> = plan
            .jobs
            .iter()
            .map(|spec| planning.planned(spec.clone()))
            .collect();
        insert_waiting(tx, &planned).await?;
        // The planning job's row is locked: its result's `lock_job`.
        let released = self.advance_locked(tx, &planning.id).await?;
        let mut made = Vec::with_capacity(plan.jobs.len());
        for job in self.pipeline_jobs(tx.conn(), &planning.id).await? {
            if job.id == planning.id {
                continue;
            }
            made.push(
                released
                    .iter()
                    .find(|r| r.id == job.id)
                    .cloned()
                    .unwrap_or(job),
            );
        }
        if plan.cancel_superseded {
            let older: Vec<String> = on!(tx.conn(), |c| sqlx::query(SUPERSEDED_JOBS)
                .bind(record.repo.as_str())
                .bind(record.branch.as_str())
                .bind(record.seq)
                .bind(JobStatus::Waiting.as_str())
                .bind(JobStatus::Queued.as_str())
                .bind(JobStatus::Running.as_str())
                .fetch_all(c)
                .await?
                .iter()
                .map(|row| row.try_get::<String, _>(0))
                .collect::<Result<Vec<_>, _>>()?);
            if !older.is_empty() {
                let older = older
                    .iter()
                    .map(|id| parse(id))
                    .collect::<Result<Vec<JobId>, _>>()?;
                let reason = format!("canceled: superseded by {}", record.commit);
                let canceled = self
                    .cancel_in(tx, &older, &reason, ms(model::now_ms()))
                    .await?;
                made.extend(canceled);
            }
        }
        Ok((record, made))
    }

    /// Cancels those of `ids` that have not ended, in the caller's
    /// transaction: each becomes `canceled` with `reason` (also appended
    /// to its log), its unsent outbox row is dropped, and then each
    /// pipeline they belong to is advanced (their waiting dependents are
    /// skipped). Rows are locked jobs first, planning jobs last, each
    /// group by id, the order every transition takes (a job, then its
    /// pipeline), so concurrent transactions cannot deadlock. Returns the
    /// jobs canceled, then the jobs skipped.
    async fn cancel_in(
        &self,
        tx: &mut Tx<'_>,
        ids: &[JobId],
        reason: &str,
        now: i64,
    ) -> Result<Vec<JobRecord>, Fail> {
        let reason = storable(reason);
        let note = format!("\nwarren: {reason}\n");
        let mut order: Vec<&JobId> = ids.iter().collect();
        order.sort();
        order.dedup();
        let mut canceled: Vec<JobRecord> = Vec::new();
        // Pipelines' planning jobs last: every transition locks a job
        // before its pipeline.
        for planning_last in [false, true] {
            for id in &order {
                let known = job_by_id(tx.conn(), id.as_str()).await?;
                let Some(known) = known else { continue };
                if (known.pipeline == known.id) != planning_last {
                    continue;
                }
                let row = on!(tx.conn(), |c| sqlx::query(CANCEL_JOB)
                    .bind(id.as_str())
                    .bind(JobStatus::Canceled.as_str())
                    .bind(reason.as_ref())
                    .bind(now)
                    .bind(note.len() as i64)
                    .bind(JobStatus::Waiting.as_str())
                    .bind(JobStatus::Queued.as_str())
                    .bind(JobStatus::Running.as_str())
                    .fetch_optional(c)
                    .await?
                    .map(|row| job_from_row(&row))
                    .transpose()?);
                let Some(record) = row else { continue };
                on!(tx.conn(), |c| sqlx::query(APPEND_LOG)
                    .bind(id.as_str())
                    .bind(note.as_str())
                    .execute(c)
                    .await?
                    .rows_affected());
                on!(tx.conn(), |c| sqlx::query(OUTBOX_DROP)
                    .bind(id.as_str())
                    .execute(c)
                    .await?
                    .rows_affected());
                canceled.push(record);
            }
        }
        let mut pipelines: Vec<JobId> = canceled.iter().map(|job| job.pipeline.clone()).collect();
        pipelines.sort();
        pipelines.dedup();
        for pipeline in pipelines {
            let skipped = self.advance(tx, &pipeline).await?;
            canceled.extend(skipped);
        }
        Ok(canceled)
    }

    async fn cancel(
        &self,
        ids: &[JobId],
        reason: &str,
        at_ms: u64,
    ) -> Result<Vec<JobRecord>, Fail> {
        let mut tx = self.pool.begin().await?;
        let changed = self.cancel_in(&mut tx, ids, reason, ms(at_ms)).await?;
        tx.commit().await?;
        Ok(changed)
    }

    /// Runs the jobs of `pipeline` that did not pass again: see
    /// [`Store::rerun_failed`].
    async fn rerun(&self, pipeline: &JobId, salt: &str) -> Result<Vec<JobRecord>, Fail> {
        let mut tx = self.pool.begin().await?;
        on!(tx.conn(), |c| sqlx::query(LOCK_PIPELINE)
            .bind(pipeline.as_str())
            .execute(c)
            .await?
            .rows_affected());
        let jobs = self.pipeline_jobs(tx.conn(), pipeline).await?;
        let current = model::pipeline::current(&jobs);
        let did_not_pass = |job: &JobRecord| {
            job.status.is_failure()
                || matches!(job.status, JobStatus::Canceled | JobStatus::Skipped)
        };
        let mut again: Vec<Job> = Vec::new();
        for job in &current {
            if &job.id == pipeline || job.spec.is_none() {
                continue;
            }
            match job.spec.as_ref().and_then(|s| s.split.as_ref()) {
                // A split runs again from its list job: new batches, cut
                // by the timings the last run left.
                Some(SplitPart::Batch { .. }) => {}
                Some(SplitPart::Gate { .. }) if did_not_pass(job) => {
                    let list_name = model::split::list_name(&job.name);
                    let mut gate = job.to_job().again(salt);
                    if let Some(spec) = gate.spec.as_mut() {
                        spec.needs = vec![list_name.clone()];
                    }
                    again.push(gate);
                    if let Some(list) = current
                        .iter()
                        .find(|other| other.name == list_name && !did_not_pass(other))
                    {
                        again.push(list.to_job().again(salt));
                    }
                }
                _ if did_not_pass(job) => again.push(job.to_job().again(salt)),
                _ => {}
            }
        }
        if again.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        insert_waiting(&mut tx, &again).await?;
        let released = self.advance(&mut tx, pipeline).await?;
        let mut made = Vec::with_capacity(again.len());
        for job in &again {
            let record = match released.iter().find(|r| r.id == job.id) {
                Some(record) => record.clone(),
                None => job_by_id(tx.conn(), job.id.as_str())
                    .await?
                    .ok_or_else(|| {
                        Fail::Corrupt(format!("job {} vanished once recorded", job.id))
                    })?,
            };
            made.push(record);
        }
        // Skipped in the same advance (a need that is still failed): not
        // expected, since every job that did not pass is run again, but
        // reported all the same.
        for record in released {
            if !made.iter().any(|m| m.id == record.id) {
                made.push(record);
            }
        }
        tx.commit().await?;
        Ok(made)
    }

    async fn pipeline_jobs(
        &self,
        conn: Conn<'_>,
        pipeline: &JobId,
    ) -> Result<Vec<JobRecord>, Fail> {
        Ok(on!(conn, |c| sqlx::query(PIPELINE_JOBS)
            .bind(pipeline.as_str())
            .fetch_all(c)
            .await?
            .iter()
            .map(job_from_row)
            .collect::<Result<Vec<_>, _>>()?))
    }

    /// After a job of `pipeline` ended: releases the waiting jobs whose
    /// needs all ended well (queued, and into the outbox) and skips those
    /// whose need failed, by [`model::pipeline::advance`]. In the caller's
    /// transaction, the pipeline locked first. Returns the jobs changed.
    async fn advance(&self, tx: &mut Tx<'_>, pipeline: &JobId) -> Result<Vec<JobRecord>, Fail> {
        on!(tx.conn(), |c| sqlx::query(LOCK_PIPELINE)
            .bind(pipeline.as_str())
            .execute(c)
            .await?
            .rows_affected());
        self.advance_locked(tx, pipeline).await
    }

    /// [`advance`](Self::advance) for a caller whose transaction holds
    /// the pipeline's row already (the planning job's own result, or a
    /// job that is its own pipeline): one round trip less per result.
    async fn advance_locked(
        &self,
        tx: &mut Tx<'_>,
        pipeline: &JobId,
    ) -> Result<Vec<JobRecord>, Fail> {
        // A gate released ends at once (see `finish_gate`), which may
        // release its dependents: advance again until nothing changes.
        let mut changed = Vec::new();
        loop {
            let (now, gates) = self.advance_once(tx, pipeline).await?;
            changed.extend(now);
            if gates == 0 {
                return Ok(changed);
            }
        }
    }

    /// One step of [`advance`](Self::advance); also says how many gates
    /// it ended.
    async fn advance_once(
        &self,
        tx: &mut Tx<'_>,
        pipeline: &JobId,
    ) -> Result<(Vec<JobRecord>, usize), Fail> {
        let jobs = self.pipeline_jobs(tx.conn(), pipeline).await?;
        if !jobs.iter().any(|job| job.status == JobStatus::Waiting) {
            return Ok((Vec::new(), 0));
        }
        let newest = model::pipeline::current(&jobs);
        let mut gates = 0;
        let states: Vec<model::pipeline::JobState<'_>> = newest
            .iter()
            .map(|job| model::pipeline::state(job))
            .collect();
        let next = model::pipeline::advance(&states);
        let now = ms(model::now_ms());
        let mut changed = Vec::new();
        for name in &next.skip {
            let Some(job) = newest.iter().find(|job| &job.name == name) else {
                continue;
            };
            let unmet = next.unmet.get(name).map(Vec::as_slice).unwrap_or_default();
            let reason = format!("skipped: {} did not pass", unmet.join(", "));
            let log = format!("warren: {reason}\n");
            let row = on!(tx.conn(), |c| sqlx::query(SKIP_JOB)
                .bind(job.id.as_str())
                .bind(JobStatus::Skipped.as_str())
                .bind(reason.as_str())
                .bind(now)
                .bind(log.len() as i64)
                .bind(JobStatus::Waiting.as_str())
                .fetch_optional(c)
                .await?
                .map(|row| job_from_row(&row))
                .transpose()?);
            if let Some(record) = row {
                replace_log(tx.conn(), record.id.as_str(), &log).await?;
                changed.push(record);
            }
        }
        for name in &next.release {
            let Some(job) = newest.iter().find(|job| &job.name == name) else {
                continue;
            };
            if let Some(SplitPart::Gate { flaky }) =
                job.spec.as_ref().and_then(|s| s.split.as_ref())
            {
                if let Some(record) = self.finish_gate(tx, job, *flaky, &newest, now).await? {
                    changed.push(record);
                    gates += 1;
                }
                continue;
            }
            let row = on!(tx.conn(), |c| sqlx::query(RELEASE_JOB)
                .bind(job.id.as_str())
                .bind(JobStatus::Queued.as_str())
                .bind(now)
                .bind(JobStatus::Waiting.as_str())
                .fetch_optional(c)
                .await?
                .map(|row| job_from_row(&row))
                .transpose()?);
            let Some(record) = row else { continue };
            let body = serde_json::to_string(&record.to_job())
                .map_err(|e| Fail::Corrupt(format!("job {}: {e}", record.id)))?;
            on!(tx.conn(), |c| sqlx::query(OUTBOX_ADD)
                .bind(record.id.as_str())
                .bind(record.queue.as_str())
                .bind(body.as_str())
                .bind(now)
                .execute(c)
                .await?
                .rows_affected());
            changed.push(record);
        }
        Ok((changed, gates))
    }

    /// What a split job's result changes, in its transaction (issue 18):
    /// a list job's tests are cut into batches; a batch's test outcomes
    /// are recorded, its failed tests retried alone once, and the next
    /// batch let out when the split runs at most `parallel` at once.
    async fn split_result(
        &self,
        tx: &mut Tx<'_>,
        record: &JobRecord,
        result: &JobResult,
    ) -> Result<(), Fail> {
        let Some(part) = record.spec.as_ref().and_then(|s| s.split.clone()) else {
            return Ok(());
        };
        match (part, &result.tests) {
            (
                SplitPart::List {
                    gate,
                    run,
                    parallel,
                    ..
                },
                Some(TestsReport::Listed { tests }),
            ) if result.outcome == model::Outcome::Passed && !tests.is_empty() => {
                self.split_listed(tx, record, &gate, &run, parallel, tests)
                    .await
            }
            (SplitPart::Batch { gate, tests, retry }, report) => {
                let outcomes = match report {
                    Some(TestsReport::Ran { outcomes }) => outcomes.clone(),
                    _ => model::split::spread(
                        &tests,
                        result.duration_ms,
                        result.outcome == model::Outcome::Passed,
                    ),
                };
                self.split_batch_done(
                    tx,
                    record,
                    &gate,
                    retry,
                    &outcomes,
                    result.runner.id.as_str(),
                )
                .await
            }
            _ => Ok(()),
        }
    }

    /// The newest job named `name` in `record`'s pipeline.
    async fn sibling(
        &self,
        tx: &mut Tx<'_>,
        record: &JobRecord,
        name: &str,
    ) -> Result<Option<JobRecord>, Fail> {
        let jobs = self.pipeline_jobs(tx.conn(), &record.pipeline).await?;
        Ok(model::pipeline::current(&jobs)
            .into_iter()
            .find(|job| job.name == name)
            .cloned())
    }

    /// Sets a waiting job's needs (its row and its spec).
    async fn set_needs(tx: &mut Tx<'_>, job: &JobRecord, needs: Vec<String>) -> Result<(), Fail> {
        let mut spec = job
            .spec
            .clone()
            .ok_or_else(|| Fail::Corrupt(format!("job {} of a split has no spec", job.id)))?;
        spec.needs = needs;
        let needs_json =
            serde_json::to_string(&spec.needs).map_err(|e| Fail::Corrupt(format!("needs: {e}")))?;
        let spec_json =
            serde_json::to_string(&spec).map_err(|e| Fail::Corrupt(format!("spec: {e}")))?;
        on!(tx.conn(), |c| sqlx::query(SET_NEEDS)
            .bind(job.id.as_str())
            .bind(needs_json.as_str())
            .bind(spec_json.as_str())
            .execute(c)
            .await?
            .rows_affected());
        Ok(())
    }

    /// Cuts a list job's tests into batches (by the repository's past
    /// timings, for `parallel` runners or those online) and records them
    /// waiting; the gate then needs them too. The first `parallel` need
    /// nothing (the advance releases them); the others need the gate,
    /// which holds them back until [`split_batch_done`](Self::split_batch_done)
    /// lets them out.
    async fn split_listed(
        &self,
        tx: &mut Tx<'_>,
        list: &JobRecord,
        gate_name: &str,
        run: &str,
        parallel: Option<u32>,
        tests: &[model::split::TestId],
    ) -> Result<(), Fail> {
        let Some(gate) = self.sibling(tx, list, gate_name).await? else {
            return Ok(());
        };
        let Some(list_spec) = list.spec.clone() else {
            return Ok(());
        };
        let past = timings_in(tx.conn(), &list.repo).await?;
        let runners = match parallel {
            Some(n) => n as usize,
            None => {
                let since = ms(model::now_ms()).saturating_sub(SPLIT_RUNNERS_SEEN_WITHIN_MS);
                let online: i64 = on!(tx.conn(), |c| sqlx::query(RUNNERS_SEEN_SINCE)
                    .bind(since)
                    .fetch_one(c)
                    .await?
                    .try_get(0)?);
                online.max(1) as usize
            }
        };
        let batches = model::split::cut(
            model::split::estimates(tests, &past),
            runners,
            SPLIT_MIN_BATCH_MS,
        );
        let Some(root) = job_by_id(tx.conn(), list.pipeline.as_str()).await? else {
            return Ok(());
        };
        let root = root.to_job();
        let count = batches.len();
        let out_at_once = parallel.map_or(count, |n| n as usize);
        // A rerun's list job (a salt of its own) makes batches of its own.
        let jobs: Vec<Job> = batches
            .into_iter()
            .enumerate()
            .map(|(i, batch)| {
                root.planned(JobSpec {
                    name: model::split::batch_name(gate_name, i + 1, count),
                    run: model::split::command_for(run, &batch.tests),
                    needs: if i < out_at_once {
                        Vec::new()
                    } else {
                        vec![gate_name.to_string()]
                    },
                    allow_failure: true,
                    split: Some(SplitPart::Batch {
                        gate: gate_name.to_string(),
                        tests: batch.tests,
                        retry: false,
                    }),
                    ..list_spec.clone()
                })
                .again(&list.salt)
            })
            .collect();
        insert_waiting(tx, &jobs).await?;
        let mut needs = gate.needs.clone();
        needs.extend(jobs.iter().map(|job| job.name().to_string()));
        Self::set_needs(tx, &gate, needs).await
    }

    /// Records a batch's outcomes under its gate, retries each failed test
    /// of a first attempt alone (the gate needs the retries too), and lets
    /// the next held-back batch out.
    async fn split_batch_done(
        &self,
        tx: &mut Tx<'_>,
        batch: &JobRecord,
        gate_name: &str,
        retry: bool,
        outcomes: &[model::split::TestOutcome],
        runner: &str,
    ) -> Result<(), Fail> {
        let Some(gate) = self.sibling(tx, batch, gate_name).await? else {
            return Ok(());
        };
        write_tests_in(
            tx,
            &TestsRun {
                parent: &gate.id,
                repo: &gate.repo,
                batch: &batch.id,
                runner,
                outcomes,
                at_ms: model::now_ms(),
            },
        )
        .await?;
        let jobs = self.pipeline_jobs(tx.conn(), &batch.pipeline).await?;
        let of_gate = |job: &&JobRecord| {
            matches!(
                job.spec.as_ref().and_then(|s| s.split.as_ref()),
                Some(SplitPart::Batch { gate, .. }) if gate == gate_name
            )
        };
        let mut gate_needs = gate.needs.clone();
        if !retry {
            let failed: Vec<&model::split::TestOutcome> = outcomes
                .iter()
                .filter(|o| o.status == TestStatus::Failed)
                .collect();
            let list = model::pipeline::current(&jobs)
                .into_iter()
                .find(|job| job.name == model::split::list_name(gate_name))
                .cloned();
            let template = list
                .as_ref()
                .and_then(|l| match l.spec.as_ref()?.split.as_ref()? {
                    SplitPart::List { run, .. } => Some(run.clone()),
                    _ => None,
                });
            if let (Some(template), Some(spec), Some(root)) = (
                template,
                batch.spec.clone(),
                job_by_id(tx.conn(), batch.pipeline.as_str()).await?,
            ) {
                let root = root.to_job();
                let before = jobs
                    .iter()
                    .filter(of_gate)
                    .filter(|job| {
                        matches!(
                            job.spec.as_ref().and_then(|s| s.split.as_ref()),
                            Some(SplitPart::Batch { retry: true, .. })
                        )
                    })
                    .count();
                let retries: Vec<Job> = failed
                    .iter()
                    .enumerate()
                    .map(|(i, outcome)| {
                        let tests = vec![outcome.test.clone()];
                        root.planned(JobSpec {
                            name: model::split::retry_name(gate_name, before + i + 1),
                            run: model::split::command_for(&template, &tests),
                            needs: Vec::new(),
                            split: Some(SplitPart::Batch {
                                gate: gate_name.to_string(),
                                tests,
                                retry: true,
                            }),
                            ..spec.clone()
                        })
                        .again(&batch.salt)
                    })
                    .collect();
                insert_waiting(tx, &retries).await?;
                gate_needs.extend(retries.iter().map(|job| job.name().to_string()));
            }
        }
        if gate_needs != gate.needs {
            Self::set_needs(tx, &gate, gate_needs).await?;
        }
        // At most `parallel` batches out: let the next held-back one go.
        let held: Vec<&JobRecord> = jobs
            .iter()
            .filter(of_gate)
            .filter(|job| job.status == JobStatus::Waiting && !job.needs.is_empty())
            .collect();
        if let Some(next) = held.into_iter().min_by_key(|job| job.seq) {
            Self::set_needs(tx, next, Vec::new()).await?;
        }
        Ok(())
    }

    /// Ends a released gate with its tests' merged verdict (a test of one
    /// of its batches with no result counts as failed: its batch ended
    /// without reporting it).
    async fn finish_gate(
        &self,
        tx: &mut Tx<'_>,
        gate: &JobRecord,
        flaky: model::split::FlakyPolicy,
        jobs: &[&JobRecord],
        now: i64,
    ) -> Result<Option<JobRecord>, Fail> {
        let mut tests = tests_in(tx.conn(), &gate.id).await?;
        for job in jobs {
            let Some(SplitPart::Batch {
                gate: of,
                tests: listed,
                ..
            }) = job.spec.as_ref().and_then(|s| s.split.as_ref())
            else {
                continue;
            };
            if of != &gate.name {
                continue;
            }
            for test in listed {
                if !tests.iter().any(|t| &t.test == test) {
                    tests.push(model::split::TestRecord {
                        test: test.clone(),
                        status: TestStatus::Failed,
                        duration_ms: 0,
                        runner: String::new(),
                        batch: job.id.to_string(),
                        attempts: 0,
                    });
                }
            }
        }
        let (passed, summary) = model::split::gate_verdict(&tests, flaky);
        let status = if passed {
            JobStatus::Passed
        } else {
            JobStatus::Failed
        };
        let mut log = format!("warren: {summary}\n");
        let mut slowest: Vec<&model::split::TestRecord> = tests.iter().collect();
        slowest.sort_by_key(|t| std::cmp::Reverse(t.duration_ms));
        for test in slowest.iter().take(10) {
            log.push_str(&format!(
                "warren:   {} ms  {}  {}\n",
                test.duration_ms,
                test.status.as_str(),
                test.test
            ));
        }
        for test in tests.iter().filter(|t| t.status != TestStatus::Passed) {
            log.push_str(&format!("warren: {} {}\n", test.status.as_str(), test.test));
        }
        let row = on!(tx.conn(), |c| sqlx::query(SKIP_JOB)
            .bind(gate.id.as_str())
            .bind(status.as_str())
            .bind(summary.as_str())
            .bind(now)
            .bind(log.len() as i64)
            .bind(JobStatus::Waiting.as_str())
            .fetch_optional(c)
            .await?
            .map(|row| job_from_row(&row))
            .transpose()?);
        if let Some(record) = &row {
            replace_log(tx.conn(), record.id.as_str(), &log).await?;
        }
        Ok(row)
    }

    async fn read_pipeline(&self, pipeline: &JobId) -> Result<Vec<JobRecord>, Fail> {
        let mut held = self.pool.acquire().await?;
        self.pipeline_jobs(held.conn(), pipeline).await
    }

    async fn read_outbox(&self, max: u32) -> Result<Vec<Outgoing>, Fail> {
        let mut held = self.pool.acquire().await?;
        let rows: Vec<(String, String, String)> = on!(held.conn(), |c| sqlx::query(OUTBOX_PENDING)
            .bind(i64::from(max))
            .fetch_all(c)
            .await?
            .iter()
            .map(|row| Ok::<_, sqlx::Error>((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
            .collect::<Result<Vec<_>, _>>()?);
        rows.into_iter()
            .map(|(job, queue, body)| {
                Ok(Outgoing {
                    job: parse(&job)?,
                    queue: parse(&queue)?,
                    body,
                })
            })
            .collect()
    }

    async fn mark_sent(&self, job: &JobId, at_ms: u64) -> Result<(), Fail> {
        let mut held = self.pool.acquire().await?;
        let done: Result<u64, Fail> = async {
            Ok(on!(held.conn(), |c| sqlx::query(OUTBOX_SENT)
                .bind(job.as_str())
                .bind(ms(at_ms))
                .execute(c)
                .await?
                .rows_affected()))
        }
        .await;
        held.discard_if(&done);
        done.map(|_| ())
    }

    async fn read_changes(&self, max: u32) -> Result<Vec<JobChange>, Fail> {
        let mut held = self.pool.acquire().await?;
        let rows: Vec<(i64, String, String)> = on!(held.conn(), |c| sqlx::query(CHANGES_PENDING)
            .bind(i64::from(max))
            .fetch_all(c)
            .await?
            .iter()
            .map(|row| Ok::<_, sqlx::Error>((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
            .collect::<Result<Vec<_>, _>>()?);
        let mut changes = Vec::with_capacity(rows.len());
        let mut gone = Vec::new();
        for (seq, job, status) in rows {
            match job_by_id(held.conn(), &job).await? {
                Some(job) => changes.push(JobChange {
                    seq,
                    status: parse(&status)?,
                    job,
                }),
                None => gone.push(seq),
            }
        }
        drop(held);
        if !gone.is_empty() {
            self.delete_changes(&gone).await?;
        }
        Ok(changes)
    }

    async fn delete_changes(&self, seqs: &[i64]) -> Result<(), Fail> {
        if seqs.is_empty() {
            return Ok(());
        }
        // Numbers the store made, so writing them into the statement is
        // safe; one statement whatever their count.
        let list: Vec<String> = seqs.iter().map(i64::to_string).collect();
        let sql = format!("DELETE FROM job_changes WHERE seq IN ({})", list.join(","));
        let mut held = self.pool.acquire().await?;
        let done: Result<u64, Fail> = async {
            Ok(on!(held.conn(), |c| sqlx::query(&sql)
                .execute(c)
                .await?
                .rows_affected()))
        }
        .await;
        held.discard_if(&done);
        done.map(|_| ())
    }

    async fn read_test_timings(&self, repo: &model::RepoUrl) -> Result<HashMap<TestId, u64>, Fail> {
        let mut held = self.pool.acquire().await?;
        timings_in(held.conn(), repo).await
    }

    async fn write_tests(&self, run: &TestsRun<'_>) -> Result<(), Fail> {
        let mut tx = self.pool.begin().await?;
        write_tests_in(&mut tx, run).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn read_tests_of(&self, parent: &JobId) -> Result<Vec<TestRecord>, Fail> {
        let mut held = self.pool.acquire().await?;
        tests_in(held.conn(), parent).await
    }

    async fn delete_old(&self, rule: &Retention, now_ms: u64, max: u32) -> Result<u64, Fail> {
        if !rule.prunes() {
            return Ok(0);
        }
        let mut tx = self.pool.begin().await?;
        let line: i64 = match rule.keep_jobs {
            None => i64::MIN,
            Some(keep) => on!(tx.conn(), |c| sqlx::query(KEEP_JOBS_LINE)
                .bind(i64::try_from(keep).unwrap_or(i64::MAX))
                .fetch_optional(c)
                .await?
                .map(|row| row.try_get::<i64, _>(0))
                .transpose()?)
            .unwrap_or(i64::MIN),
        };
        let before: i64 = match rule.keep_days {
            None => i64::MIN,
            Some(days) => ms(now_ms).saturating_sub(i64::from(days) * 86_400_000),
        };
        let [t1, t2, t3, t4, t5, t6] = [
            JobStatus::Passed,
            JobStatus::Failed,
            JobStatus::Error,
            JobStatus::Timeout,
            JobStatus::Skipped,
            JobStatus::Canceled,
        ]
        .map(JobStatus::as_str);
        let ids: Vec<String> = on!(tx.conn(), |c| sqlx::query(PRUNABLE)
            .bind(t1)
            .bind(t2)
            .bind(t3)
            .bind(t4)
            .bind(t5)
            .bind(t6)
            .bind(line)
            .bind(before)
            .bind(JobStatus::Waiting.as_str())
            .bind(JobStatus::Queued.as_str())
            .bind(JobStatus::Running.as_str())
            .bind(i64::from(max))
            .fetch_all(c)
            .await?
            .iter()
            .map(|row| row.try_get::<String, _>(0))
            .collect::<Result<Vec<_>, _>>()?);
        if ids.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        // Ids the store wrote, each checked against the id rule before it
        // goes into the statements as a literal.
        let mut literals = Vec::with_capacity(ids.len());
        for id in &ids {
            let id: JobId = parse(id)?;
            literals.push(format!("'{}'", id.as_str()));
        }
        let list = literals.join(",");
        for (table, column) in [
            ("job_logs", "job_id"),
            ("test_results", "job_id"),
            ("job_changes", "job_id"),
            ("outbox", "job_id"),
            ("jobs", "id"),
        ] {
            let sql = format!("DELETE FROM {table} WHERE {column} IN ({list})");
            on!(tx.conn(), |c| sqlx::query(&sql)
                .execute(c)
                .await?
                .rows_affected());
        }
        tx.commit().await?;
        Ok(ids.len() as u64)
    }

    async fn count_ahead(&self, queue: &model::QueueName, seq: i64) -> Result<i64, Fail> {
        let mut held = self.pool.acquire().await?;
        Ok(on!(held.conn(), |c| sqlx::query(QUEUED_AHEAD)
            .bind(queue.as_str())
            .bind(JobStatus::Queued.as_str())
            .bind(seq)
            .fetch_one(c)
            .await?
            .try_get::<i64, _>(0)?))
    }

    /// See [`Store::try_lead`].
    async fn lead(&self) -> bool {
        if matches!(self.url.kind(), Kind::Sqlite(_)) {
            return true;
        }
        let mut held = self.leader.lock().await;
        if let Some(single) = held.as_mut() {
            // Still our session? A lost connection has lost the lock.
            let alive = tokio::time::timeout(LEAD_TIMEOUT, async {
                on!(single.conn(), |c| sqlx::query("SELECT 1")
                    .execute(c)
                    .await
                    .is_ok())
            })
            .await
            .unwrap_or(false);
            if alive {
                return true;
            }
            if let Some(single) = held.take() {
                drop(single);
            }
        }
        let taken = tokio::time::timeout(LEAD_TIMEOUT, async {
            let mut single = connect(&self.url, &self.settings, false).await.ok()?;
            let locked: bool = on!(single.conn(), |c| sqlx::query_scalar(
                "SELECT pg_try_advisory_lock($1)"
            )
            .bind(DUTIES_LOCK)
            .fetch_one(c)
            .await
            .ok()?);
            if locked {
                Some(single)
            } else {
                single.close().await;
                None
            }
        })
        .await
        .ok()
        .flatten();
        let leads = taken.is_some();
        *held = taken;
        leads
    }

    async fn dead(&self, job: &Job, reason: &str, at_ms: u64) -> Result<Recorded, Fail> {
        let reason = storable(reason);
        let log = format!("warren: {reason}\n");
        let log = cut(&log, self.settings.output_cap);
        let mut tx = self.pool.begin().await?;
        let (before, inserted) = lock_job(&mut tx, job).await?;
        let outcome = on!(tx.conn(), |c| {
            let row = sqlx::query(DEAD_JOB)
                .bind(job.id.as_str())
                .bind(JobStatus::Error.as_str())
                .bind(reason.as_ref())
                .bind(ms(at_ms))
                .bind(true)
                .bind(log.len() as i64)
                .bind(JobStatus::Queued.as_str())
                .bind(JobStatus::Running.as_str())
                .fetch_optional(c)
                .await?;
            match row {
                Some(row) => Some(job_from_row(&row)?),
                None => None,
            }
        });
        let recorded = match outcome {
            Some(record) => {
                replace_log(tx.conn(), job.id.as_str(), log).await?;
                let pipeline = self.advance(&mut tx, &record.pipeline).await?;
                Recorded::New {
                    record,
                    was: (!inserted).then_some(before.status),
                    pipeline,
                }
            }
            None => Recorded::Duplicate(before),
        };
        tx.commit().await?;
        Ok(recorded)
    }

    async fn append(&self, id: &JobId, offset: u64, text: &str) -> Result<bool, Fail> {
        let cap = self.settings.output_cap;
        let Ok(start) = usize::try_from(offset) else {
            return Ok(false);
        };
        let text = storable(text);
        let kept = cut(&text, cap.saturating_sub(start));
        if start > 0 && kept.is_empty() {
            return Ok(false);
        }
        let (queued, running) = (JobStatus::Queued.as_str(), JobStatus::Running.as_str());
        let mut tx = self.pool.begin().await?;
        let changed = on!(tx.conn(), |c| {
            let query = if start == 0 {
                sqlx::query(RESTART_LOG_BYTES)
                    .bind(id.as_str())
                    .bind(kept.len() as i64)
                    .bind(queued)
                    .bind(running)
            } else {
                sqlx::query(GROW_LOG_BYTES)
                    .bind(id.as_str())
                    .bind(kept.len() as i64)
                    .bind(queued)
                    .bind(running)
                    .bind(start as i64)
            };
            query.execute(c).await?.rows_affected()
        });
        if changed != 1 {
            return Ok(false);
        }
        let statement = if start == 0 { REPLACE_LOG } else { APPEND_LOG };
        on!(tx.conn(), |c| sqlx::query(statement)
            .bind(id.as_str())
            .bind(kept)
            .execute(c)
            .await?
            .rows_affected());
        tx.commit().await?;
        Ok(true)
    }

    async fn seen(&self, runner: &RunnerInfo, job: Option<&JobId>, at_ms: u64) -> Result<(), Fail> {
        let mut held = self.pool.acquire().await?;
        let seen = runner_seen(held.conn(), runner, job.map(JobId::as_str), ms(at_ms)).await;
        held.discard_if(&seen);
        seen
    }

    async fn read_job(&self, id: &JobId) -> Result<Option<JobRecord>, Fail> {
        let mut held = self.pool.acquire().await?;
        job_by_id(held.conn(), id.as_str()).await
    }

    async fn read_by_commit(&self, prefix: &str) -> Result<CommitMatch, Fail> {
        let hex = prefix.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex || prefix.len() < 7 || prefix.len() > 64 {
            return Ok(CommitMatch::None);
        }
        let low = prefix.to_ascii_lowercase();
        let high = format!("{low}g");
        let mut held = self.pool.acquire().await?;
        let commits: Vec<String> = on!(held.conn(), |c| {
            sqlx::query(COMMITS_WITH_PREFIX)
                .bind(low.as_str())
                .bind(high.as_str())
                .bind(AMBIGUOUS_LISTED as i64 + 1)
                .fetch_all(c)
                .await?
                .iter()
                .map(|row| row.try_get::<String, _>(0))
                .collect::<Result<_, _>>()?
        });
        let commits = commits
            .iter()
            .map(|commit| parse::<CommitId>(commit))
            .collect::<Result<Vec<_>, _>>()?;
        let [commit] = commits.as_slice() else {
            return Ok(if commits.is_empty() {
                CommitMatch::None
            } else {
                CommitMatch::Several(commits)
            });
        };
        let record = on!(held.conn(), |c| {
            let row = sqlx::query(NEWEST_OF_COMMIT)
                .bind(commit.as_str())
                .fetch_one(c)
                .await?;
            job_from_row(&row)?
        });
        Ok(CommitMatch::One(Box::new(record)))
    }

    async fn list(&self, query: &JobQuery) -> Result<Vec<JobRecord>, Fail> {
        // Only the conditions in use, so the database walks the matching
        // (status, seq) or (branch, seq) index instead of scanning.
        let mut conditions = Vec::new();
        let mut next = 0;
        let mut placeholder = || {
            next += 1;
            format!("${next}")
        };
        if query.status.is_some() {
            conditions.push(format!("status = {}", placeholder()));
        }
        if query.repo.is_some() {
            conditions.push(format!("repo = {}", placeholder()));
        }
        if query.branch.is_some() {
            conditions.push(format!("branch = {}", placeholder()));
        }
        if query.before.is_some() {
            conditions.push(format!("seq < {}", placeholder()));
        }
        let limit = placeholder();
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            concat!(
                "SELECT ",
                job_columns!(),
                " FROM jobs{} ORDER BY seq DESC LIMIT {}"
            ),
            filter, limit
        );
        let limit = i64::from(query.limit.clamp(1, model::api::PAGE_MAX));
        let mut held = self.pool.acquire().await?;
        Ok(on!(held.conn(), |c| {
            let mut select = sqlx::query(&sql);
            if let Some(status) = query.status {
                select = select.bind(status.as_str());
            }
            if let Some(repo) = &query.repo {
                select = select.bind(repo.as_str());
            }
            if let Some(branch) = &query.branch {
                select = select.bind(branch.as_str());
            }
            if let Some(before) = query.before {
                select = select.bind(before);
            }
            select
                .bind(limit)
                .fetch_all(c)
                .await?
                .iter()
                .map(job_from_row)
                .collect::<Result<Vec<_>, _>>()?
        }))
    }

    async fn read_running(&self) -> Result<Vec<JobRecord>, Fail> {
        let mut held = self.pool.acquire().await?;
        Ok(on!(held.conn(), |c| sqlx::query(RUNNING)
            .bind(JobStatus::Running.as_str())
            .fetch_all(c)
            .await?
            .iter()
            .map(job_from_row)
            .collect::<Result<Vec<_>, _>>()?))
    }

    async fn read_runners(&self) -> Result<Vec<RunnerRecord>, Fail> {
        let mut held = self.pool.acquire().await?;
        Ok(on!(held.conn(), |c| sqlx::query(RUNNERS)
            .fetch_all(c)
            .await?
            .iter()
            .map(runner_from_row)
            .collect::<Result<Vec<_>, _>>()?))
    }

    async fn read_repos(&self) -> Result<Vec<Repo>, Fail> {
        let mut held = self.pool.acquire().await?;
        Ok(on!(held.conn(), |c| sqlx::query(REPOS)
            .fetch_all(c)
            .await?
            .iter()
            .map(repo_from_row)
            .collect::<Result<Vec<_>, _>>()?))
    }

    async fn read_repo(&self, name: &RepoName) -> Result<Option<Repo>, Fail> {
        let mut held = self.pool.acquire().await?;
        Ok(on!(held.conn(), |c| {
            match sqlx::query(REPO)
                .bind(name.as_str())
                .fetch_optional(c)
                .await?
            {
                Some(row) => Some(repo_from_row(&row)?),
                None => None,
            }
        }))
    }

    async fn write_repo(&self, repo: &Repo) -> Result<bool, Fail> {
        let branches = serde_json::to_string(&repo.branches)
            .map_err(|e| Fail::Corrupt(format!("branches: {e}")))?;
        let status = repo.status.as_ref();
        let mut tx = self.pool.begin().await?;
        let existed = on!(tx.conn(), |c| sqlx::query(REPO_EXISTS)
            .bind(repo.name.as_str())
            .fetch_one(c)
            .await?
            .try_get::<i64, _>(0)?)
            > 0;
        on!(tx.conn(), |c| sqlx::query(PUT_REPO)
            .bind(repo.name.as_str())
            .bind(repo.url.as_str())
            .bind(&branches)
            .bind(repo.poll_secs)
            .bind(repo.webhook_secret_env.as_deref())
            .bind(status.map(|s| s.kind.as_str()))
            .bind(status.map(|s| s.api.as_str()))
            .bind(status.map(|s| s.repo.as_str()))
            .bind(status.map(|s| s.token_env.as_str()))
            .bind(model::now_ms() as i64)
            .execute(c)
            .await?
            .rows_affected());
        tx.commit().await?;
        Ok(!existed)
    }

    async fn delete_repo(&self, name: &RepoName) -> Result<bool, Fail> {
        let mut held = self.pool.acquire().await?;
        let deleted: Result<u64, Fail> = async {
            Ok(on!(held.conn(), |c| sqlx::query(REMOVE_REPO)
                .bind(name.as_str())
                .execute(c)
                .await?
                .rows_affected()))
        }
        .await;
        held.discard_if(&deleted);
        Ok(deleted? > 0)
    }

    async fn read_count(&self, status: JobStatus) -> Result<i64, Fail> {
        let mut held = self.pool.acquire().await?;
        Ok(on!(held.conn(), |c| sqlx::query(COUNT_OF_STATUS)
            .bind(status.as_str())
            .fetch_one(c)
            .await?
            .try_get::<i64, _>(0)?))
    }

    async fn read_log(&self, id: &JobId) -> Result<Option<String>, Fail> {
        let mut held = self.pool.acquire().await?;
        Ok(on!(held.conn(), |c| {
            match sqlx::query(LOG).bind(id.as_str()).fetch_optional(c).await? {
                Some(row) => Some(row.try_get::<String, _>(0)?),
                None => None,
            }
        }))
    }

    async fn read_finished_before(&self, job: &JobRecord) -> Result<Option<JobRecord>, Fail> {
        let [a, b, c_, d] = Outcome::ALL.map(|outcome| JobStatus::from(outcome).as_str());
        let mut held = self.pool.acquire().await?;
        Ok(on!(held.conn(), |c| {
            let row = sqlx::query(FINISHED_BEFORE)
                .bind(job.repo.as_str())
                .bind(job.branch.as_str())
                .bind(job.id.as_str())
                .bind(job.finished_at_ms.unwrap_or(i64::MAX))
                .bind(job.seq)
                .bind(a)
                .bind(b)
                .bind(c_)
                .bind(d)
                .bind(job.name.as_str())
                .fetch_optional(c)
                .await?;
            match row {
                Some(row) => Some(job_from_row(&row)?),
                None => None,
            }
        }))
    }

    async fn read_totals(&self, buckets: &[f64]) -> Result<Totals, Fail> {
        let mut held = self.pool.acquire().await?;
        let counted: Vec<(String, i64)> = on!(held.conn(), |c| sqlx::query(COUNT_BY_STATUS)
            .fetch_all(c)
            .await?
            .iter()
            .map(|row| Ok::<_, sqlx::Error>((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<_, _>>()?);
        let mut jobs: Vec<(JobStatus, i64)> = JobStatus::ALL.map(|s| (s, 0)).to_vec();
        for (word, count) in counted {
            let status: JobStatus = parse(&word)?;
            if let Some(slot) = jobs.iter_mut().find(|(s, _)| *s == status) {
                slot.1 = count;
            }
        }
        let (duplicates, dead_lettered): (i64, i64) = on!(held.conn(), |c| {
            let row = sqlx::query(SUMS).fetch_one(c).await?;
            (row.try_get(0)?, row.try_get(1)?)
        });
        let duration = histogram(
            held.conn(),
            "duration_ms",
            "duration_ms IS NOT NULL",
            buckets,
        )
        .await?;
        let queue_wait = histogram(
            held.conn(),
            "(started_at_ms - enqueued_at_ms)",
            "started_at_ms IS NOT NULL AND enqueued_at_ms IS NOT NULL AND started_at_ms >= enqueued_at_ms",
            buckets,
        )
        .await?;
        Ok(Totals {
            jobs,
            duplicates,
            dead_lettered,
            duration,
            queue_wait,
        })
    }

    async fn probe_write(&self) -> Result<(), Fail> {
        let mut tx = self.pool.begin().await?;
        on!(tx.conn(), |c| sqlx::query(PROBE_WRITE)
            .execute(c)
            .await?
            .rows_affected());
        tx.rollback().await?;
        Ok(())
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn job_queued(&self, job: &Job) -> Result<Queued, StoreError> {
        self.queue(job)
            .await
            .map_err(self.failed("recording a job"))
    }

    async fn job_started(
        &self,
        job: &Job,
        runner: &RunnerInfo,
        at_ms: u64,
    ) -> Result<Started, StoreError> {
        self.start(job, runner, at_ms)
            .await
            .map_err(self.failed("recording a start"))
    }

    async fn job_finished(&self, result: &JobResult) -> Result<Recorded, StoreError> {
        self.finish_one(result)
            .await
            .map_err(self.failed("recording a result"))
    }

    async fn jobs_finished(&self, results: &[JobResult]) -> Result<Vec<Recorded>, StoreError> {
        self.finish_all(results)
            .await
            .map_err(self.failed("recording results"))
    }

    async fn job_dead(&self, job: &Job, reason: &str, at_ms: u64) -> Result<Recorded, StoreError> {
        self.dead(job, reason, at_ms)
            .await
            .map_err(self.failed("recording a dead letter"))
    }

    async fn append_live_output(
        &self,
        job: &JobId,
        offset: u64,
        text: &str,
    ) -> Result<bool, StoreError> {
        self.append(job, offset, text)
            .await
            .map_err(self.failed("appending live output"))
    }

    async fn runner_seen(
        &self,
        runner: &RunnerInfo,
        job: Option<&JobId>,
        at_ms: u64,
    ) -> Result<(), StoreError> {
        self.seen(runner, job, at_ms)
            .await
            .map_err(self.failed("recording a heartbeat"))
    }

    async fn jobs_canceled(
        &self,
        jobs: &[JobId],
        reason: &str,
        at_ms: u64,
    ) -> Result<Vec<JobRecord>, StoreError> {
        self.cancel(jobs, reason, at_ms)
            .await
            .map_err(self.failed("canceling jobs"))
    }

    async fn rerun_failed(
        &self,
        pipeline: &JobId,
        salt: &str,
    ) -> Result<Vec<JobRecord>, StoreError> {
        self.rerun(pipeline, salt)
            .await
            .map_err(self.failed("running failed jobs again"))
    }

    async fn job(&self, id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        self.read_job(id)
            .await
            .map_err(self.failed("reading a job"))
    }

    async fn pipeline(&self, pipeline: &JobId) -> Result<Vec<JobRecord>, StoreError> {
        self.read_pipeline(pipeline)
            .await
            .map_err(self.failed("reading a pipeline"))
    }

    async fn outbox_pending(&self, max: u32) -> Result<Vec<Outgoing>, StoreError> {
        self.read_outbox(max)
            .await
            .map_err(self.failed("reading the outbox"))
    }

    async fn outbox_sent(&self, job: &JobId, at_ms: u64) -> Result<(), StoreError> {
        self.mark_sent(job, at_ms)
            .await
            .map_err(self.failed("marking a job sent"))
    }

    async fn changes_pending(&self, max: u32) -> Result<Vec<JobChange>, StoreError> {
        self.read_changes(max)
            .await
            .map_err(self.failed("reading the job changes to announce"))
    }

    async fn changes_announced(&self, seqs: &[i64]) -> Result<(), StoreError> {
        self.delete_changes(seqs)
            .await
            .map_err(self.failed("deleting announced job changes"))
    }

    async fn test_timings(
        &self,
        repo: &model::RepoUrl,
    ) -> Result<HashMap<TestId, u64>, StoreError> {
        self.read_test_timings(repo)
            .await
            .map_err(self.failed("reading test timings"))
    }

    async fn record_tests(&self, run: &TestsRun<'_>) -> Result<(), StoreError> {
        self.write_tests(run)
            .await
            .map_err(self.failed("recording test results"))
    }

    async fn tests_of(&self, parent: &JobId) -> Result<Vec<TestRecord>, StoreError> {
        self.read_tests_of(parent)
            .await
            .map_err(self.failed("reading test results"))
    }

    async fn prune(&self, rule: &Retention, now_ms: u64, max: u32) -> Result<u64, StoreError> {
        self.delete_old(rule, now_ms, max)
            .await
            .map_err(self.failed("pruning old jobs"))
    }

    async fn queued_ahead(&self, queue: &model::QueueName, seq: i64) -> Result<i64, StoreError> {
        self.count_ahead(queue, seq)
            .await
            .map_err(self.failed("counting a queue"))
    }

    async fn job_by_commit(&self, prefix: &str) -> Result<CommitMatch, StoreError> {
        self.read_by_commit(prefix)
            .await
            .map_err(self.failed("finding a commit"))
    }

    async fn jobs(&self, query: &JobQuery) -> Result<Vec<JobRecord>, StoreError> {
        self.list(query).await.map_err(self.failed("listing jobs"))
    }

    async fn running(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.read_running()
            .await
            .map_err(self.failed("listing running jobs"))
    }

    async fn runners(&self) -> Result<Vec<RunnerRecord>, StoreError> {
        self.read_runners()
            .await
            .map_err(self.failed("listing runners"))
    }

    async fn log(&self, id: &JobId) -> Result<Option<String>, StoreError> {
        self.read_log(id)
            .await
            .map_err(self.failed("reading a log"))
    }

    async fn finished_before(&self, job: &JobRecord) -> Result<Option<JobRecord>, StoreError> {
        self.read_finished_before(job)
            .await
            .map_err(self.failed("finding the previous outcome"))
    }

    async fn repos(&self) -> Result<Vec<Repo>, StoreError> {
        self.read_repos()
            .await
            .map_err(self.failed("listing repositories"))
    }

    async fn repo(&self, name: &RepoName) -> Result<Option<Repo>, StoreError> {
        self.read_repo(name)
            .await
            .map_err(self.failed("reading a repository"))
    }

    async fn put_repo(&self, repo: &Repo) -> Result<bool, StoreError> {
        self.write_repo(repo)
            .await
            .map_err(self.failed("registering a repository"))
    }

    async fn remove_repo(&self, name: &RepoName) -> Result<bool, StoreError> {
        self.delete_repo(name)
            .await
            .map_err(self.failed("removing a repository"))
    }

    async fn count(&self, status: JobStatus) -> Result<i64, StoreError> {
        self.read_count(status)
            .await
            .map_err(self.failed("counting jobs of one status"))
    }

    async fn totals(&self, buckets: &[f64]) -> Result<Totals, StoreError> {
        self.read_totals(buckets)
            .await
            .map_err(self.failed("counting jobs"))
    }

    async fn writable(&self) -> bool {
        self.probe_write().await.is_ok()
    }

    async fn try_lead(&self) -> bool {
        self.lead().await
    }

    async fn close(&self) {
        // Ending the session releases the advisory lock at once, so the
        // next dispatcher takes over without waiting for a timeout.
        if let Some(single) = self.leader.lock().await.take() {
            single.close().await;
        }
        match &self.pool {
            Pool::Sqlite(pool) => pool.close().await,
            Pool::Postgres(pool) => pool.close().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutting_keeps_whole_characters() {
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("héllo", 3), "hé");
        assert_eq!(cut("abc", 10), "abc");
        assert_eq!(cut("abc", 0), "");
    }

    #[test]
    fn nul_becomes_one_byte_so_offsets_hold() {
        let text = "a\0b";
        assert_eq!(storable(text).len(), text.len());
        assert!(!storable(text).contains('\0'));
        assert!(matches!(storable("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn histograms_bind_their_bounds_rather_than_printing_them() {
        let sql = histogram_sql("duration_ms", "duration_ms IS NOT NULL", 2);
        assert!(sql.contains("duration_ms <= $1") && sql.contains("duration_ms <= $2"));
        assert!(!sql.contains("$3"));
    }
}
