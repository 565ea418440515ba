//! Warren's vocabulary, shared by every crate: typed identifiers that are
//! valid by construction, a job's status, the messages components send
//! each other, and the HTTP API's request and response types.
//!
//! Nothing here does I/O: no broker, no database, no runtime. So the store,
//! the HTTP API and the command-line client name a job without depending
//! on RabbitMQ, and the rules (what a commit id is, how a job's id is made,
//! which status follows which) are written once.

pub mod api;
pub mod branch;
mod ids;
pub mod message;
pub mod pipeline;
mod record;
pub mod repo;
mod sandbox;
pub mod split;
mod status;
pub mod trends;

pub use ids::{BranchName, CommitId, IdError, JobId, QueueName, RepoName, RepoUrl, RunnerId};
pub use message::{
    job_id, Control, Event, Invalid, Job, JobResult, Message, OutputChunk, RunnerInfo,
    SCHEMA_VERSION,
};
pub use pipeline::{JobSpec, Plan, Verdict};
pub use record::{JobQuery, JobRecord, RunnerRecord};
pub use repo::{ForgeKind, Repo, RepoError, StatusTarget};
pub use sandbox::Sandbox;
pub use status::{JobStatus, Outcome, UnknownStatus};

/// Milliseconds since the Unix epoch: the one clock format in messages.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
