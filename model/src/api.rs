//! The HTTP API's requests and answers, shared by the dispatcher that
//! serves them and the `warren` client commands that read them.

use serde::{Deserialize, Serialize};

use crate::record::{JobRecord, RunnerRecord};
use crate::{JobId, RepoUrl};

/// The most jobs one page holds, and how many it holds by default.
pub const PAGE_MAX: u32 = 1000;
pub const PAGE_DEFAULT: u32 = 50;

/// A job in the API: the record plus readable times and its log's path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    #[serde(flatten)]
    pub record: JobRecord,
    pub enqueued_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub log_url: String,
    /// Why a job that has not started waits: `waiting for lint`, `no
    /// runner serves queue 'gpu'`, `queued behind 3 jobs`.
    pub waiting_reason: Option<String>,
}

impl From<JobRecord> for JobView {
    fn from(record: JobRecord) -> Self {
        JobView {
            enqueued_at: rfc3339(record.enqueued_at_ms),
            started_at: rfc3339(record.started_at_ms),
            finished_at: rfc3339(record.finished_at_ms),
            log_url: format!("/api/jobs/{}/log", record.id),
            waiting_reason: None,
            record,
        }
    }
}

/// `GET /api/commits/{sha}`: a commit's pipeline (its newest, when the
/// commit was planned again) and its verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitView {
    pub commit: crate::CommitId,
    pub repo: RepoUrl,
    pub branch: crate::BranchName,
    /// The verdict: pending, running, passed, failed, error or canceled.
    pub status: crate::Verdict,
    /// The planning job (the commit's first job).
    pub pipeline: JobId,
    /// Every job of the pipeline, oldest first.
    pub jobs: Vec<JobView>,
}

/// Milliseconds since the epoch as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(ms: Option<i64>) -> Option<String> {
    let ms = u64::try_from(ms?).ok()?;
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    Some(humantime::format_rfc3339_millis(time).to_string())
}

/// A runner in the API: the record plus whether it is online.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerView {
    #[serde(flatten)]
    pub record: RunnerRecord,
    pub online: bool,
    pub last_seen: Option<String>,
}

/// `POST /api/trigger`: queue a job by hand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerRequest {
    /// A full commit id, or a branch name to resolve to its head.
    pub target: String,
    /// The branch to file the job under (default: the target if it is a
    /// branch, else the newest job's branch for the repository).
    #[serde(default)]
    pub branch: Option<String>,
    /// Default: the repository of the newest job.
    #[serde(default)]
    pub repo: Option<String>,
}

/// The answer to a trigger or a rerun: the job queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    pub id: JobId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<RepoUrl>,
    /// For a rerun: the job it runs again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<JobId>,
}

/// The answer to `POST /api/jobs/{id}/cancel` and `POST
/// /api/commits/{sha}/cancel`: the jobs canceled (waiting, queued or
/// running before) and the waiting jobs skipped because a job they need
/// was canceled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelAnswer {
    pub canceled: Vec<JobId>,
    pub skipped: Vec<JobId>,
}

/// The answer to `POST /api/commits/{sha}/rerun` (`?failed=true`): the
/// pipeline the new jobs belong to (a new one when the commit's first job
/// was run again) and the new jobs, as recorded (`waiting` or `queued`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RerunAnswer {
    pub pipeline: JobId,
    pub jobs: Vec<JobView>,
}

/// `GET /api/queue`: the work queue and the dead letters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueView {
    pub queue: String,
    pub depth: u32,
    pub consumers: u32,
    pub dead_letter_queue: String,
    pub dead_letters: u32,
    /// The broker's management UI, without credentials.
    pub management_ui: String,
}

/// Every error answer: `{"error": "…"}`, and the commits an ambiguous
/// abbreviation matched (409).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commits: Option<Vec<String>>,
}
