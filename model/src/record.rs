//! What the dispatcher knows about a job and a runner: the store's records,
//! which the API shows with a few derived fields (see `api`).

use serde::{Deserialize, Serialize};

use crate::{
    BranchName, CommitId, Job, JobId, JobSpec, JobStatus, QueueName, RepoUrl, RunnerId, Sandbox,
    SCHEMA_VERSION,
};

/// A job as recorded: its message, where it stands, and its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Order of first sight: newer jobs have larger numbers (pagination).
    pub seq: i64,
    pub id: JobId,
    pub repo: RepoUrl,
    pub branch: BranchName,
    pub commit: CommitId,
    pub subject: Option<String>,
    pub author: Option<String>,
    pub status: JobStatus,
    /// Executions started (a rerun after a runner died counts again).
    pub attempts: i64,
    /// Results that arrived after the job already had its outcome.
    pub duplicates: i64,
    pub runner: Option<RunnerId>,
    /// The AMQP connection of the runner holding it (to close when the
    /// runner freezes); not shown.
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
    /// [`Job::salt`]); not shown.
    #[serde(skip)]
    pub salt: String,
    /// How the runner that ran it isolated it (the last execution's);
    /// `None` until it starts.
    pub sandbox: Option<Sandbox>,
    /// Its name in its commit's pipeline (`test (stable, all)`; `test` for
    /// a commit without a pipeline file, `plan` for a planning job).
    pub name: String,
    /// The planning job of its pipeline (its own id for a commit's first
    /// job).
    pub pipeline: JobId,
    /// The work queue it goes to.
    pub queue: QueueName,
    /// Jobs of the same pipeline that end before it starts.
    pub needs: Vec<String>,
    /// Its failure does not fail the commit.
    pub allow_failure: bool,
    /// What a pipeline job runs (for republishing); not shown.
    #[serde(skip)]
    pub spec: Option<JobSpec>,
}

impl JobRecord {
    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }

    /// The job message this record came from (for republishing): the
    /// same id, since the salt is kept.
    pub fn to_job(&self) -> Job {
        Job {
            v: SCHEMA_VERSION,
            id: self.id.clone(),
            repo: self.repo.clone(),
            branch: self.branch.clone(),
            commit: self.commit.clone(),
            enqueued_at_ms: self.enqueued_at_ms.unwrap_or_default().max(0) as u64,
            subject: self.subject.clone(),
            author: self.author.clone(),
            salt: self.salt.clone(),
            pipeline: self.spec.as_ref().map(|_| self.pipeline.clone()),
            spec: self.spec.clone().map(Box::new),
        }
    }
}

/// A runner as recorded from its events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerRecord {
    pub id: RunnerId,
    pub host: String,
    pub current_job: Option<JobId>,
    pub last_seen_ms: i64,
    pub jobs_done: i64,
    /// How it isolates jobs (from its last event).
    pub sandbox: Sandbox,
    /// The work queues it takes jobs from.
    pub queues: Vec<QueueName>,
}

/// Which jobs to list, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobQuery {
    pub status: Option<JobStatus>,
    /// Only jobs of this repository.
    pub repo: Option<RepoUrl>,
    pub branch: Option<BranchName>,
    /// Only jobs with a smaller `seq` (the next page).
    pub before: Option<i64>,
    /// 1 to [`crate::api::PAGE_MAX`].
    pub limit: u32,
}
