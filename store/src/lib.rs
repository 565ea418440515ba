//! Warren's durable record: every job, its one outcome, its log, and the
//! runners, behind one async [`Store`] trait with two backends: SQLite (a
//! file beside the dispatcher, the default) and PostgreSQL (shared by
//! several dispatchers).
//!
//! Every change of a job's state is one of the `job_*` methods (or
//! `append_live_output`), each one transaction that first locks the job's
//! row; a result is recorded only
//! if the job has none yet, so two dispatchers consuming the same results
//! never record a job twice. [`open`] applies the schema migrations
//! (numbered files in `migrations/`) and refuses a store whose schema is
//! newer than this build; [`migrate`] applies or checks them on demand.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use model::split::{TestId, TestOutcome, TestRecord};
use model::{
    CommitId, Job, JobId, JobQuery, JobRecord, JobResult, JobStatus, Repo, RepoName, RunnerInfo,
    RunnerRecord,
};

mod error;
mod migrate;
mod sql;
mod url;

pub use error::StoreError;
pub use migrate::{MigrationReport, MigrationStep};
pub use url::StoreUrl;

/// How many commits an ambiguous abbreviation lists (one more is fetched
/// to tell "exactly this many" from "more").
pub const AMBIGUOUS_LISTED: usize = 10;

/// How the store connects and what it keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// The most bytes of log kept per job: a longer result output is cut
    /// (and marked truncated), live output past it is dropped. The runner
    /// caps a test's output at 1 MiB by default and adds a header and a
    /// note, hence the margin.
    pub output_cap: usize,
    /// The longest wait for the first connection (TCP, TLS and the
    /// server's answer): a server that accepts and never answers fails
    /// the open after this long.
    pub connect_timeout: Duration,
    /// The longest wait for a connection from the pool, connecting
    /// included.
    pub acquire_timeout: Duration,
    /// PostgreSQL: the server cancels a statement running longer, and ends
    /// a session idle in a transaction this long.
    pub statement_timeout: Duration,
    /// SQLite: how long a write waits for another connection's lock.
    pub busy_timeout: Duration,
    /// Connections in the pool.
    pub max_connections: u32,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            output_cap: (1 << 20) + (64 << 10),
            connect_timeout: Duration::from_secs(10),
            acquire_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(30),
            busy_timeout: Duration::from_secs(5),
            max_connections: 8,
        }
    }
}

/// What recording a published job found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub record: JobRecord,
    /// The job was not known before.
    pub new: bool,
}

/// What recording a `started` event found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// The job after the event.
    pub record: JobRecord,
    /// Its status before the event; `None` if the job was not known (the
    /// event recorded it), so counters kept by status can follow.
    pub was: Option<JobStatus>,
    /// The event belongs to the execution whose result is already
    /// recorded (events and results travel on different queues): it was
    /// not counted as another attempt.
    pub same_execution: bool,
}

impl Started {
    /// Someone is running a job that already has its outcome.
    pub fn is_duplicate_execution(&self) -> bool {
        self.record.is_terminal() && !self.same_execution
    }
}

/// What recording a result or a dead letter did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// It is the job's one outcome: the job as recorded now, and its
    /// status before (`None` if the job was not known).
    New {
        record: JobRecord,
        was: Option<JobStatus>,
        /// Other jobs this changed, in the same transaction: a plan's new
        /// jobs (`waiting`, or `queued` when they need nothing), jobs of
        /// its pipeline released (`queued`, in the outbox) and jobs
        /// skipped; and for a plan with `cancel_superseded`, the jobs of
        /// the branch's older pipelines it canceled (and the jobs that
        /// skipped).
        pipeline: Vec<JobRecord>,
    },
    /// The job already had an outcome: this result was counted in
    /// `duplicates` (a dead letter changes nothing). The job as it stands.
    Duplicate(JobRecord),
}

impl Recorded {
    pub fn is_new(&self) -> bool {
        matches!(self, Recorded::New { .. })
    }

    pub fn record(&self) -> &JobRecord {
        match self {
            Recorded::New { record, .. } | Recorded::Duplicate(record) => record,
        }
    }

    pub fn into_record(self) -> JobRecord {
        match self {
            Recorded::New { record, .. } | Recorded::Duplicate(record) => record,
        }
    }
}

/// A job a transition released, to be published to its queue: the
/// outbox's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub job: JobId,
    pub queue: model::QueueName,
    /// The job message, as JSON.
    pub body: String,
}

/// A change of a job's status not yet announced (the `job_changes` row
/// the store writes with every status change): the status it changed to,
/// and the job as it stands now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobChange {
    /// The change's number: changes of one job are numbered in the order
    /// they were made.
    pub seq: i64,
    pub status: JobStatus,
    pub job: JobRecord,
}

/// Which finished jobs to keep (`--keep-jobs`, `--keep-days`); the others
/// are pruned with their logs and test results. `None`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep the newest this many jobs (of any status).
    pub keep_jobs: Option<u64>,
    /// Keep the jobs that finished within this many days.
    pub keep_days: Option<u32>,
}

impl Retention {
    /// Whether it prunes anything at all.
    pub fn prunes(&self) -> bool {
        self.keep_jobs.is_some() || self.keep_days.is_some()
    }
}

/// A batch's test outcomes, for [`Store::record_tests`].
#[derive(Debug, Clone)]
pub struct TestsRun<'a> {
    /// The split job the batch belongs to.
    pub parent: &'a JobId,
    pub repo: &'a model::RepoUrl,
    /// The batch's own job.
    pub batch: &'a JobId,
    pub runner: &'a str,
    pub outcomes: &'a [TestOutcome],
    pub at_ms: u64,
}

/// What an abbreviated commit id matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitMatch {
    None,
    /// The newest job of the one commit it matches.
    One(Box<JobRecord>),
    /// Several commits (at most [`AMBIGUOUS_LISTED`] + 1 of them).
    Several(Vec<CommitId>),
}

/// Cumulative bucket counts (`le` bounds in seconds), sum and count of one
/// histogram, as Prometheus shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, i64)>,
    pub sum_seconds: f64,
    pub count: i64,
}

/// The store's figures, read once at start to initialise the counters
/// `/metrics` serves (which then follow the `job_*` calls).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    /// Every status, in [`JobStatus::ALL`] order, zeros included.
    pub jobs: Vec<(JobStatus, i64)>,
    /// Results discarded because their job already had one.
    pub duplicates: i64,
    /// Jobs recorded as `error` because they were dead-lettered.
    pub dead_lettered: i64,
    /// From start to outcome, of jobs with a result.
    pub duration: Histogram,
    /// From enqueue to start, of started jobs.
    pub queue_wait: Histogram,
}

impl Totals {
    pub fn count(&self, status: JobStatus) -> i64 {
        self.jobs
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n)
    }
}

/// The dispatcher's record. Object-safe: the dispatcher holds an
/// `Arc<dyn Store>` from [`open`].
#[async_trait]
pub trait Store: Send + Sync {
    /// A job was published: recorded as queued unless already known. A
    /// known id naming another job (repository, branch, commit or salt
    /// differ) is a [`StoreError::Collision`].
    async fn job_queued(&self, job: &Job) -> Result<Queued, StoreError>;

    /// A runner started a job (recorded first if unknown): one more
    /// attempt unless the event is the late `started` of the execution
    /// whose result is recorded; the job turns `running` only from
    /// `queued` or `running`; the runner's row is updated.
    async fn job_started(
        &self,
        job: &Job,
        runner: &RunnerInfo,
        at_ms: u64,
    ) -> Result<Started, StoreError>;

    /// A result: the first one for a job is its outcome (status, times,
    /// exit code, reason, runner, and the log replaced by the output, cut
    /// to the output cap), and the runner's `jobs_done` grows; any later
    /// one only counts as a duplicate.
    async fn job_finished(&self, result: &JobResult) -> Result<Recorded, StoreError>;

    /// Results, each as [`Store::job_finished`] records it, in order, in
    /// one transaction: all are recorded or none (a later result for a job
    /// of the batch sees the earlier one).
    async fn jobs_finished(&self, results: &[JobResult]) -> Result<Vec<Recorded>, StoreError>;

    /// A job was dead-lettered: its outcome is `error` with `reason` (and
    /// it is marked dead-lettered) unless it already has one.
    async fn job_dead(&self, job: &Job, reason: &str, at_ms: u64) -> Result<Recorded, StoreError>;

    /// Output of a running job's test, `text` starting at byte `offset`:
    /// offset 0 starts the log again (a new attempt), an offset equal to
    /// the log's length appends, anything else is skipped (a heartbeat
    /// lost or repeated), as is everything once the job has an outcome or
    /// past the output cap. Returns whether anything was kept.
    async fn append_live_output(
        &self,
        job: &JobId,
        offset: u64,
        text: &str,
    ) -> Result<bool, StoreError>;

    /// A runner's heartbeat: who it is and what it runs.
    async fn runner_seen(
        &self,
        runner: &RunnerInfo,
        job: Option<&JobId>,
        at_ms: u64,
    ) -> Result<(), StoreError>;

    /// Cancels those of `jobs` that have not ended (waiting, queued or
    /// running), in one transaction: each becomes `canceled` with `reason`
    /// (also appended to its log) and `finished_at_ms`, its unsent outbox
    /// row is dropped (a released job not yet published is never
    /// published), and each pipeline they belong to is advanced (a
    /// canceled need is not met: its waiting dependents are skipped).
    /// Jobs that had ended are left as they are. Returns the jobs
    /// canceled, then the jobs skipped. Stopping a running job's runner
    /// is the caller's (a `cancel` on the control exchange).
    async fn jobs_canceled(
        &self,
        jobs: &[JobId],
        reason: &str,
        at_ms: u64,
    ) -> Result<Vec<JobRecord>, StoreError>;

    /// Runs again, in one transaction, the jobs of the pipeline whose
    /// planning job is `pipeline` that did not pass: each job whose
    /// current run (the newest of its name) is failed, error, timeout,
    /// canceled or skipped gets a new copy (`Job::again(salt)`, the same
    /// name and spec, an id of its own) recorded `waiting`; then the
    /// pipeline is advanced, so the copies whose needs have passed are
    /// released (`queued`, in the outbox) and the others wait for the
    /// copies they need. Jobs that passed, or have not ended, are left
    /// alone; the planning job is never copied (a pipeline whose plan
    /// failed has nothing to rerun here: rerun its planning job). Returns
    /// the copies as recorded (empty when nothing failed).
    async fn rerun_failed(
        &self,
        pipeline: &JobId,
        salt: &str,
    ) -> Result<Vec<JobRecord>, StoreError>;

    async fn job(&self, id: &JobId) -> Result<Option<JobRecord>, StoreError>;
    /// Every job of the pipeline whose planning job is `pipeline`, oldest
    /// first.
    async fn pipeline(&self, pipeline: &JobId) -> Result<Vec<JobRecord>, StoreError>;
    /// Released jobs not yet marked sent, oldest first.
    async fn outbox_pending(&self, max: u32) -> Result<Vec<Outgoing>, StoreError>;
    /// The broker confirmed `job`'s publish.
    async fn outbox_sent(&self, job: &JobId, at_ms: u64) -> Result<(), StoreError>;
    /// Status changes not yet announced, oldest first (a change of a job
    /// no longer stored is dropped).
    async fn changes_pending(&self, max: u32) -> Result<Vec<JobChange>, StoreError>;
    /// The changes numbered `seqs` were announced: they are deleted.
    async fn changes_announced(&self, seqs: &[i64]) -> Result<(), StoreError>;
    /// The smoothed time of each test of `repo` that has one (issue 18).
    async fn test_timings(&self, repo: &model::RepoUrl)
        -> Result<HashMap<TestId, u64>, StoreError>;
    /// Records a batch's test outcomes under the split job `parent`, in one
    /// transaction: each test's result merged with its earlier attempts
    /// ([`model::split::merge`]), and each test's time in `repo` smoothed
    /// ([`model::split::smooth`]; skipped tests keep theirs).
    async fn record_tests(&self, tests: &TestsRun<'_>) -> Result<(), StoreError>;
    /// The merged results of the split job `parent`, by test id.
    async fn tests_of(&self, parent: &JobId) -> Result<Vec<TestRecord>, StoreError>;
    /// Deletes up to `max` finished jobs that `rule` does not keep, oldest
    /// first, with their logs, test results and leftover rows, in one
    /// transaction; a job whose pipeline has a job not yet ended is kept.
    /// Returns how many were deleted (fewer than `max`: none is left).
    async fn prune(&self, rule: &Retention, now_ms: u64, max: u32) -> Result<u64, StoreError>;
    /// How many jobs of `queue` are queued ahead of the job numbered `seq`.
    async fn queued_ahead(&self, queue: &model::QueueName, seq: i64) -> Result<i64, StoreError>;

    /// The newest job of a full or abbreviated (at least 7 hex digits)
    /// commit id, or the commits an abbreviation matches when several.
    async fn job_by_commit(&self, prefix: &str) -> Result<CommitMatch, StoreError>;

    /// Jobs newest first (by `seq`), filtered, at most `limit` (1 to
    /// 1000); `before` pages by keyset.
    async fn jobs(&self, query: &JobQuery) -> Result<Vec<JobRecord>, StoreError>;

    /// Every job shown as running (their leases are restored at start).
    async fn running(&self) -> Result<Vec<JobRecord>, StoreError>;

    async fn runners(&self) -> Result<Vec<RunnerRecord>, StoreError>;

    /// A job's log; `None` if nothing was kept for it (yet).
    async fn log(&self, id: &JobId) -> Result<Option<String>, StoreError>;

    /// The job on the same repository and branch that got its outcome
    /// last before `job` did (by `finished_at_ms`, then `seq`): what the
    /// notifier compares a new outcome with when it first sees a branch.
    async fn finished_before(&self, job: &JobRecord) -> Result<Option<JobRecord>, StoreError>;

    /// The repository registry, by name.
    async fn repos(&self) -> Result<Vec<Repo>, StoreError>;

    async fn repo(&self, name: &RepoName) -> Result<Option<Repo>, StoreError>;

    /// Adds an entry, or replaces the one of the same name; whether it is
    /// new. The caller has validated it (`Repo::validate`).
    async fn put_repo(&self, repo: &Repo) -> Result<bool, StoreError>;

    /// Removes an entry (its jobs stay); whether there was one.
    async fn remove_repo(&self, name: &RepoName) -> Result<bool, StoreError>;

    /// How many jobs have `status` now: cheap for the few queued and
    /// running ones (an index range), for the gauges of `/metrics`.
    async fn count(&self, status: JobStatus) -> Result<i64, StoreError>;

    /// Counts by status, duplicates, dead letters, and the duration and
    /// queue-wait histograms for `buckets` (upper bounds in seconds), in a
    /// few aggregate queries.
    async fn totals(&self, buckets: &[f64]) -> Result<Totals, StoreError>;

    /// Whether the store can take a write now (for `/readyz`).
    async fn writable(&self) -> bool;

    /// Closes the connections (at shutdown).
    /// Whether this store (its dispatcher) holds the duties that must be
    /// done by one dispatcher at a time (lease expiry, the outbox): takes
    /// them if nobody holds them, and keeps them while its session lives.
    /// PostgreSQL: a session-level advisory lock on a connection of its
    /// own, released when that connection closes (a dispatcher killed by
    /// SIGKILL releases it as soon as the server sees the socket close);
    /// each call checks the session is still alive. SQLite: always true
    /// (one dispatcher per store file). Never fails: an unreachable
    /// database means not leading.
    async fn try_lead(&self) -> bool;
    async fn close(&self);
}

/// Opens the store at `url`: connects (within `connect_timeout`), applies
/// pending migrations, refuses a schema newer than this build, and for
/// SQLite imports the log files of a store from before logs lived in it.
pub async fn open(url: &StoreUrl, settings: StoreSettings) -> Result<Arc<dyn Store>, StoreError> {
    let store = sql::SqlStore::open(url, settings).await?;
    Ok(Arc::new(store))
}

/// Applies the pending migrations (or, with `check_only`, only reports
/// what is applied and what is pending, changing nothing).
pub async fn migrate(url: &StoreUrl, check_only: bool) -> Result<MigrationReport, StoreError> {
    migrate::run(url, &StoreSettings::default(), check_only).await
}
