//! The messages Warren's components send each other through the broker:
//! jobs, runner events, results and control messages. MESSAGES.md is their
//! reference; the broker crate turns them into bytes and back.
//!
//! Deserialising checks every identifier (see `ids`); [`Message::validate`]
//! checks what spans fields: the schema version, the id rule, the sizes of
//! free text.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::pipeline::{JobSpec, Plan, SINGLE_JOB_NAME};
use crate::{BranchName, CommitId, JobId, Outcome, QueueName, RepoUrl, RunnerId};

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Why a message that deserialised is still not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("unknown schema version {0} (this build reads version {SCHEMA_VERSION})")]
    UnknownVersion(u64),
    #[error("invalid field {field}: {reason}")]
    Field { field: &'static str, reason: String },
    #[error("id {given} is not the id of this job: its repo, branch, commit, salt (and pipeline and name) give {expected} (the id rule is in MESSAGES.md), so the id may name another job")]
    ForeignId { given: JobId, expected: String },
}

/// A message that can be checked after it was deserialised.
pub trait Message: Serialize + DeserializeOwned {
    fn validate(&self) -> Result<(), Invalid>;
}

fn check_version(v: u32) -> Result<(), Invalid> {
    if v == SCHEMA_VERSION {
        Ok(())
    } else {
        Err(Invalid::UnknownVersion(u64::from(v)))
    }
}

/// One commit to test. Published by the observer (or by a trigger, a
/// rerun, anyone following the id rule) to the jobs exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub v: u32,
    /// Made from the other fields by [`job_id`]: the same repository,
    /// branch, commit and salt give the same id, so a publish repeated
    /// after a crash is recorded once.
    pub id: JobId,
    pub repo: RepoUrl,
    pub branch: BranchName,
    pub commit: CommitId,
    pub enqueued_at_ms: u64,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub author: Option<String>,
    /// Empty for the job of a commit; anything else makes another job of
    /// the same commit (a rerun, a manual trigger), with an id of its own.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub salt: String,
    /// A job of a pipeline: the id of the commit's planning job, whose
    /// plan made it. Absent for the commit's first job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<JobId>,
    /// A job of a pipeline: its name and what it runs (with `pipeline`).
    /// Boxed: most jobs have none, and a job travels inside every event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Box<JobSpec>>,
}

impl Job {
    /// The job of a commit: the one the observer (or anyone following the
    /// id rule) publishes for it, enqueued now.
    pub fn for_commit(repo: &RepoUrl, branch: &BranchName, commit: &CommitId) -> Job {
        Job {
            v: SCHEMA_VERSION,
            id: job_id(repo, branch, commit, ""),
            repo: repo.clone(),
            branch: branch.clone(),
            commit: commit.clone(),
            enqueued_at_ms: crate::now_ms(),
            subject: None,
            author: None,
            salt: String::new(),
            pipeline: None,
            spec: None,
        }
    }

    /// A job of the pipeline this (planning) job planned, enqueued now.
    pub fn planned(&self, spec: JobSpec) -> Job {
        let mut job = Job {
            pipeline: Some(self.id.clone()),
            spec: Some(Box::new(spec)),
            salt: String::new(),
            enqueued_at_ms: crate::now_ms(),
            ..self.clone()
        };
        job.id = job.expected_id();
        job
    }

    /// Its name in its pipeline: the spec's, or [`SINGLE_JOB_NAME`] for a
    /// commit's first job.
    pub fn name(&self) -> &str {
        self.spec
            .as_ref()
            .map_or(SINGLE_JOB_NAME, |spec| spec.name.as_str())
    }

    /// The id the id rule gives this job's fields.
    pub fn expected_id(&self) -> JobId {
        match (&self.pipeline, &self.spec) {
            (Some(pipeline), Some(spec)) => job_id_with(
                &self.repo,
                &self.branch,
                &self.commit,
                &[&self.salt, pipeline.as_str(), &spec.name],
            ),
            _ => job_id(&self.repo, &self.branch, &self.commit, &self.salt),
        }
    }

    /// The job of a commit given as text: each value is checked.
    pub fn try_new(repo: &str, branch: &str, commit: &str) -> Result<Job, crate::IdError> {
        Ok(Job::for_commit(
            &RepoUrl::parse(repo)?,
            &BranchName::parse(branch)?,
            &CommitId::parse(commit)?,
        ))
    }

    /// Another job of the same commit (a rerun, a manual trigger): `salt`
    /// gives it an id of its own; enqueued now.
    pub fn again(&self, salt: &str) -> Job {
        let mut job = Job {
            salt: salt.to_string(),
            enqueued_at_ms: crate::now_ms(),
            ..self.clone()
        };
        job.id = job.expected_id();
        job
    }

    /// Whether this is the job of its commit rather than another run of it
    /// or a job of its pipeline.
    pub fn is_first_of_commit(&self) -> bool {
        self.salt.is_empty() && self.pipeline.is_none()
    }
}

impl Message for Job {
    fn validate(&self) -> Result<(), Invalid> {
        check_version(self.v)?;
        if self.salt.len() > 128 || self.salt.chars().any(char::is_control) {
            return Err(Invalid::Field {
                field: "salt",
                reason: "must be at most 128 bytes without control characters".into(),
            });
        }
        match (&self.pipeline, &self.spec) {
            (None, None) => {}
            (Some(_), Some(spec)) => spec.validate().map_err(|e| Invalid::Field {
                field: "spec",
                reason: e.to_string(),
            })?,
            _ => {
                return Err(Invalid::Field {
                    field: "pipeline",
                    reason: "a pipeline job has both pipeline and spec".into(),
                })
            }
        }
        let expected = self.expected_id();
        if self.id != expected {
            return Err(Invalid::ForeignId {
                given: self.id.clone(),
                expected: expected.into_string(),
            });
        }
        Ok(())
    }
}

/// The job id for (repo, branch, commit, salt): the first 8 bytes, as 16
/// lowercase hex digits, of the SHA-256 of the four values, each followed
/// by a zero byte. The same commit of the same branch and repository has
/// the same id whoever publishes it, so a repeated publish is one job.
pub fn job_id(repo: &RepoUrl, branch: &BranchName, commit: &CommitId, salt: &str) -> JobId {
    job_id_with(repo, branch, commit, &[salt])
}

/// The id rule over the repository, branch, commit and `rest` (the salt,
/// then, for a pipeline job, the planning job's id and the job's name).
fn job_id_with(repo: &RepoUrl, branch: &BranchName, commit: &CommitId, rest: &[&str]) -> JobId {
    let mut hasher = Sha256::new();
    for part in [repo.as_str(), branch.as_str(), commit.as_str()]
        .into_iter()
        .chain(rest.iter().copied())
    {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    let digest = hasher.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    // Sixteen hex digits always pass the id rule.
    JobId::parse(&hex).unwrap_or_else(|_| unreachable!("hex digits are a valid id"))
}

/// Who is running what; carried by `started` and `heartbeat` events and by
/// results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerInfo {
    pub id: RunnerId,
    pub host: String,
    /// The AMQP connection name, so the dispatcher can close a frozen
    /// runner's connection through the management API.
    pub connection: String,
    /// How it isolates jobs; `none` from runners that predate the sandbox.
    #[serde(default)]
    pub sandbox: crate::Sandbox,
    /// The work queues it serves (`--queue`), so the dispatcher knows
    /// which queues online runners serve. Empty (runners that predate
    /// queues) means `default` only: see [`RunnerInfo::served_queues`].
    #[serde(default)]
    pub queues: Vec<QueueName>,
}

impl RunnerInfo {
    /// The most queues one runner says it serves.
    pub const MAX_QUEUES: usize = 64;

    /// The queues it serves: `default` when it names none.
    pub fn served_queues(&self) -> Vec<QueueName> {
        if self.queues.is_empty() {
            vec![QueueName::default()]
        } else {
            self.queues.clone()
        }
    }

    fn validate(&self) -> Result<(), Invalid> {
        if self.host.len() > 255 || self.connection.len() > 255 {
            return Err(Invalid::Field {
                field: "runner",
                reason: "host and connection must be at most 255 bytes".into(),
            });
        }
        if self.queues.len() > Self::MAX_QUEUES {
            return Err(Invalid::Field {
                field: "runner",
                reason: format!("at most {} queues", Self::MAX_QUEUES),
            });
        }
        Ok(())
    }
}

/// A piece of a running test's output: `text` starts at byte `offset` of
/// everything the test printed so far. The whole output still comes with
/// the result; these pieces let people watch it while the test runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputChunk {
    pub offset: u64,
    pub text: String,
}

/// Runner events, published to the events exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Event {
    /// A runner took a job and is about to run it.
    Started {
        v: u32,
        job: Job,
        runner: RunnerInfo,
        at_ms: u64,
    },
    /// A runner is alive; `job_id` is the job it is running, if any, and
    /// `output` what that job's test printed since the last heartbeat.
    Heartbeat {
        v: u32,
        runner: RunnerInfo,
        job_id: Option<JobId>,
        at_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<OutputChunk>,
    },
}

impl Event {
    pub fn routing_key(&self) -> &'static str {
        match self {
            Event::Started { .. } => "event.started",
            Event::Heartbeat { .. } => "event.heartbeat",
        }
    }
}

impl Message for Event {
    fn validate(&self) -> Result<(), Invalid> {
        match self {
            Event::Started { v, job, runner, .. } => {
                check_version(*v)?;
                job.validate()?;
                runner.validate()
            }
            Event::Heartbeat { v, runner, .. } => {
                check_version(*v)?;
                runner.validate()
            }
        }
    }
}

/// The outcome of one execution, published to the results exchange with
/// routing key `result.<outcome>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    pub v: u32,
    pub job: Job,
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
    pub duration_ms: u64,
    /// Captured stdout and stderr, interleaved, up to the output cap.
    pub output: String,
    pub truncated: bool,
    pub runner: RunnerInfo,
    /// Why the outcome is `error` or `timeout`, in words.
    #[serde(default)]
    pub reason: Option<String>,
    /// A planning job's pipeline (its outcome is then `passed`): the jobs
    /// the dispatcher is to run next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
    /// A split job's tests: the list job's listing, or a batch's results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<crate::split::TestsReport>,
}

impl JobResult {
    pub fn routing_key(&self) -> String {
        format!("result.{}", self.outcome.as_str())
    }
}

impl Message for JobResult {
    fn validate(&self) -> Result<(), Invalid> {
        check_version(self.v)?;
        self.job.validate()?;
        if let Some(plan) = &self.plan {
            if self.job.spec.is_some() {
                return Err(Invalid::Field {
                    field: "plan",
                    reason: "only a commit's first job plans a pipeline".into(),
                });
            }
            plan.validate().map_err(|e| Invalid::Field {
                field: "plan",
                reason: e.to_string(),
            })?;
        }
        self.runner.validate()
    }
}

/// Instructions from the dispatcher to runners (control exchange).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Control {
    /// Stop running `job_id` and ack it: its result is already recorded.
    /// The runner named in `except_runner` (the one whose result was
    /// recorded) ignores it.
    Cancel {
        v: u32,
        job_id: JobId,
        except_runner: Option<RunnerId>,
        reason: String,
    },
}

impl Message for Control {
    fn validate(&self) -> Result<(), Invalid> {
        match self {
            Control::Cancel { v, .. } => check_version(*v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job::for_commit(
            &RepoUrl::parse("/srv/repo").expect("repo"),
            &BranchName::parse("main").expect("branch"),
            &CommitId::parse("0123456789abcdef0123456789abcdef01234567").expect("commit"),
        )
    }

    #[test]
    fn job_ids_are_stable_and_distinct() {
        assert_eq!(job().id, job().id);
        let other = Job::for_commit(
            &job().repo,
            &BranchName::parse("dev").expect("branch"),
            &job().commit,
        );
        assert_ne!(other.id, job().id);
        assert_ne!(job().again("rerun-1").id, job().id);
        assert_eq!(job().id.as_str().len(), 16);
    }

    #[test]
    fn a_job_whose_id_does_not_follow_the_rule_is_invalid_and_says_which_id_it_should_have() {
        assert_eq!(job().validate(), Ok(()));
        assert_eq!(job().again("rerun-1").validate(), Ok(()));
        let mut forged = job().again("rerun-1");
        forged.id = job().id;
        let err = forged.validate().expect_err("foreign id");
        let text = err.to_string();
        assert!(
            text.contains(job().id.as_str()) && text.contains(job().again("rerun-1").id.as_str()),
            "{text}"
        );
    }

    #[test]
    fn a_pipeline_jobs_id_covers_its_pipeline_and_name_and_a_rerun_of_it_has_its_own() {
        let spec = |name: &str| crate::pipeline::JobSpec {
            name: name.into(),
            run: "make".into(),
            env: Default::default(),
            matrix: Default::default(),
            timeout_ms: None,
            queue: Default::default(),
            needs: vec![],
            allow_failure: false,
            split: None,
        };
        let lint = job().planned(spec("lint"));
        let test = job().planned(spec("test"));
        assert_ne!(lint.id, test.id);
        assert_ne!(lint.id, job().id);
        assert_eq!(lint.validate(), Ok(()));
        assert_eq!(lint.name(), "lint");
        assert_eq!(job().name(), "test");
        let other_pipeline = job().again("rerun-1").planned(spec("lint"));
        assert_ne!(other_pipeline.id, lint.id);
        let rerun = lint.again("rerun-2");
        assert_eq!(rerun.validate(), Ok(()));
        assert_ne!(rerun.id, lint.id);
        let mut renamed = lint.clone();
        renamed.spec = Some(Box::new(spec("deploy")));
        assert!(matches!(renamed.validate(), Err(Invalid::ForeignId { .. })));
        let mut half = lint.clone();
        half.pipeline = None;
        assert!(half.validate().is_err());
    }

    #[test]
    fn versions_other_than_ours_are_refused_in_words() {
        let mut old = job();
        old.v = 2;
        let text = old.validate().expect_err("v2").to_string();
        assert!(text.starts_with("unknown schema version 2 "), "{text}");
    }

    #[test]
    fn a_runner_that_names_no_queues_serves_the_default_one() {
        let old: RunnerInfo =
            serde_json::from_str(r#"{"id": "r", "host": "h", "connection": "c"}"#)
                .expect("decodes");
        assert!(old.queues.is_empty());
        assert_eq!(old.served_queues(), [QueueName::default()]);
        let gpu = QueueName::parse("gpu").expect("a queue name");
        let new = RunnerInfo {
            queues: vec![QueueName::default(), gpu.clone()],
            ..old.clone()
        };
        let text = serde_json::to_string(&new).expect("encodes");
        assert!(text.contains(r#""queues":["default","gpu"]"#), "{text}");
        assert_eq!(new.served_queues(), [QueueName::default(), gpu.clone()]);
        let many = RunnerInfo {
            queues: vec![gpu; RunnerInfo::MAX_QUEUES + 1],
            ..old
        };
        assert!(many.validate().is_err());
    }
}
