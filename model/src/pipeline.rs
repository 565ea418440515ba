//! Pipelines: the jobs of one commit, what each needs, and the commit's
//! verdict. A runner reads the repository's `.warren.yml` and returns a
//! [`Plan`] with its result (the planning job); the dispatcher records the
//! plan's jobs and releases each once its needs have ended ([`advance`]).
//! A repository without a pipeline file has a pipeline of one job, the
//! commit's first job, named [`SINGLE_JOB_NAME`].
//!
//! Everything here is a pure function of the jobs' states, so the rules
//! (which job runs next, which is skipped, what the commit's verdict is)
//! are written once and tested without a broker or a database.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{JobRecord, JobStatus, QueueName};

/// The name of a commit's job when its repository has no pipeline file.
pub const SINGLE_JOB_NAME: &str = "test";
/// The name the commit's first job takes once it returned a plan.
pub const PLAN_JOB_NAME: &str = "plan";
/// The most jobs one pipeline may have, matrices expanded.
pub const MAX_PIPELINE_JOBS: usize = 256;
/// The most combinations one job's matrix may have.
pub const MAX_MATRIX_COMBINATIONS: usize = 64;
/// The longest job name (`test (stable, all)`).
pub const MAX_JOB_NAME_BYTES: usize = 200;
/// The longest `run` command.
pub const MAX_RUN_BYTES: usize = 64 * 1024;

/// One job of a pipeline, as the plan gives it: what to run and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Unique in the pipeline; a matrix job's is `test (stable, all)`.
    pub name: String,
    /// Run with `sh -c` in the checkout.
    pub run: String,
    /// Set in the job's environment (besides `MATRIX_*`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// This combination of the job's matrix (key → value); the runner sets
    /// `MATRIX_<KEY>` (upper case) for each.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub matrix: BTreeMap<String, String>,
    /// At most this long (the runner's `--job-timeout` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Only runners serving this queue take the job.
    #[serde(default)]
    pub queue: QueueName,
    /// Names of jobs of the same pipeline that must end first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    /// Its failure does not fail the commit, nor skip its dependents.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_failure: bool,
    /// Its part in a split job (issue 18): list, gate or batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<crate::split::SplitPart>,
}

/// What a planning job found in `.warren.yml`: the pipeline's jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub jobs: Vec<JobSpec>,
    /// `cancel_superseded: true` at the top of the file: when this plan is
    /// recorded, the jobs of the older pipelines of the same repository
    /// and branch that have not ended are canceled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_superseded: bool,
}

/// Why a plan cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the pipeline has no jobs")]
    Empty,
    #[error("the pipeline has {0} jobs, more than {MAX_PIPELINE_JOBS}")]
    TooManyJobs(usize),
    #[error("job {0:?}: {1}")]
    Job(String, String),
    #[error("two jobs are named {0:?}")]
    DuplicateName(String),
    #[error("job {job:?} needs {need:?}, which is no job of the pipeline")]
    UnknownNeed { job: String, need: String },
    #[error("jobs {0} need each other in a cycle")]
    Cycle(String),
}

impl JobSpec {
    /// What one job must be, alone.
    pub fn validate(&self) -> Result<(), PlanError> {
        let bad = |reason: &str| Err(PlanError::Job(self.name.clone(), reason.to_string()));
        if self.name.trim().is_empty() || self.name.len() > MAX_JOB_NAME_BYTES {
            return bad("a job's name must have 1 to 200 bytes");
        }
        if self.name.chars().any(char::is_control) {
            return bad("a job's name must not hold control characters");
        }
        let gate = matches!(self.split, Some(crate::split::SplitPart::Gate { .. }));
        if self.run.trim().is_empty() && !gate {
            return bad("run: must be a command");
        }
        if self.run.len() > MAX_RUN_BYTES {
            return bad("run: longer than 64 KiB");
        }
        if self.run.contains('\0') {
            return bad("run: must not hold a NUL byte");
        }
        for (key, value) in self.env.iter().chain(self.matrix.iter()) {
            if !is_env_name(key) {
                return bad(&format!(
                    "{key:?} is not a variable name (letters, digits and '_', not starting with a digit)"
                ));
            }
            if value.contains('\0') {
                return bad(&format!("the value of {key} must not hold a NUL byte"));
            }
        }
        if self.timeout_ms == Some(0) {
            return bad("timeout: must be longer than zero");
        }
        if self.needs.iter().any(|need| need == &self.name) {
            return bad("needs: a job cannot need itself");
        }
        Ok(())
    }

    /// `MATRIX_TOOLCHAIN=stable`, … for this combination.
    pub fn matrix_env(&self) -> impl Iterator<Item = (String, &str)> {
        self.matrix.iter().map(|(key, value)| {
            (
                format!("MATRIX_{}", key.to_ascii_uppercase()),
                value.as_str(),
            )
        })
    }
}

/// A variable name a shell can export.
pub fn is_env_name(key: &str) -> bool {
    let mut bytes = key.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl Plan {
    /// A plan of these jobs, superseding nothing.
    pub fn new(jobs: Vec<JobSpec>) -> Plan {
        Plan {
            jobs,
            cancel_superseded: false,
        }
    }

    /// What a whole plan must be: 1 to [`MAX_PIPELINE_JOBS`] valid jobs with
    /// distinct names, needs that name jobs of the plan, and no cycle.
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.jobs.is_empty() {
            return Err(PlanError::Empty);
        }
        if self.jobs.len() > MAX_PIPELINE_JOBS {
            return Err(PlanError::TooManyJobs(self.jobs.len()));
        }
        let mut names = BTreeSet::new();
        for job in &self.jobs {
            job.validate()?;
            if !names.insert(job.name.as_str()) {
                return Err(PlanError::DuplicateName(job.name.clone()));
            }
        }
        for job in &self.jobs {
            if let Some(need) = job.needs.iter().find(|n| !names.contains(n.as_str())) {
                return Err(PlanError::UnknownNeed {
                    job: job.name.clone(),
                    need: need.clone(),
                });
            }
        }
        if let Some(cycle) = find_cycle(&self.jobs) {
            return Err(PlanError::Cycle(cycle.join(" → ")));
        }
        Ok(())
    }
}

/// A cycle in `needs`, as the names along it (the first repeated last).
fn find_cycle(jobs: &[JobSpec]) -> Option<Vec<String>> {
    let needs: HashMap<&str, &[String]> = jobs
        .iter()
        .map(|job| (job.name.as_str(), job.needs.as_slice()))
        .collect();
    // 0: not seen, 1: on the current path, 2: done.
    let mut state: HashMap<&str, u8> = HashMap::new();
    for job in jobs {
        let mut path: Vec<(&str, usize)> = vec![(job.name.as_str(), 0)];
        if state.get(job.name.as_str()).copied().unwrap_or(0) != 0 {
            continue;
        }
        state.insert(job.name.as_str(), 1);
        while let Some((name, next)) = path.last().copied() {
            let list = needs.get(name).copied().unwrap_or(&[]);
            if next < list.len() {
                if let Some(top) = path.last_mut() {
                    top.1 += 1;
                }
                let need = list[next].as_str();
                match state.get(need).copied().unwrap_or(0) {
                    0 => {
                        state.insert(need, 1);
                        path.push((need, 0));
                    }
                    1 => {
                        let start = path.iter().position(|(n, _)| *n == need).unwrap_or(0);
                        let mut cycle: Vec<String> =
                            path[start..].iter().map(|(n, _)| n.to_string()).collect();
                        cycle.push(need.to_string());
                        return Some(cycle);
                    }
                    _ => {}
                }
            } else {
                state.insert(name, 2);
                path.pop();
            }
        }
    }
    None
}

/// A pipeline job's state, as [`advance`] and [`verdict`] read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobState<'a> {
    pub name: &'a str,
    pub status: JobStatus,
    pub needs: &'a [String],
    pub allow_failure: bool,
}

/// What changes in a pipeline after a job ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Advance {
    /// Waiting jobs whose needs all ended well: publish them.
    pub release: Vec<String>,
    /// Waiting jobs that will not run because a need failed or was
    /// skipped (transitively).
    pub skip: Vec<String>,
    /// For each job in `skip`, the needs that were not met (its reason).
    pub unmet: BTreeMap<String, Vec<String>>,
}

/// Whether a need that ended lets its dependents run: it passed, or it
/// may fail and did (a skipped or canceled need is never met, even one
/// allowed to fail: it did not run to its end).
pub fn need_met(job: &JobState<'_>) -> bool {
    job.status == JobStatus::Passed || (job.allow_failure && job.status.is_failure())
}

/// Which waiting jobs to release and which to skip, given every job of
/// one pipeline. A waiting job is skipped when one of its needs ended
/// without being met (failed, error or timeout and not `allow_failure`;
/// or skipped, or canceled), and released when every need ended and was met.
/// Skips cascade: a job that needs a skipped job is skipped in the same
/// call. A need that names no job of the pipeline is never met; plans are
/// validated, so that does not happen.
pub fn advance(jobs: &[JobState<'_>]) -> Advance {
    let mut status: HashMap<&str, JobState<'_>> =
        jobs.iter().map(|job| (job.name, job.clone())).collect();
    let mut out = Advance::default();
    loop {
        let mut skipped_now = Vec::new();
        for job in jobs {
            let Some(current) = status.get(job.name) else {
                continue;
            };
            if current.status != JobStatus::Waiting {
                continue;
            }
            let unmet: Vec<String> = job
                .needs
                .iter()
                .filter(|need| {
                    status
                        .get(need.as_str())
                        .is_some_and(|n| n.status.is_terminal() && !need_met(n))
                })
                .cloned()
                .collect();
            if !unmet.is_empty() {
                skipped_now.push(job.name);
                out.unmet.insert(job.name.to_string(), unmet);
            }
        }
        if skipped_now.is_empty() {
            break;
        }
        for name in skipped_now {
            if let Some(job) = status.get_mut(name) {
                job.status = JobStatus::Skipped;
            }
            out.skip.push(name.to_string());
        }
    }
    for job in jobs {
        if status.get(job.name).map(|j| j.status) != Some(JobStatus::Waiting) {
            continue;
        }
        let ready = job
            .needs
            .iter()
            .all(|need| status.get(need.as_str()).is_some_and(need_met));
        if ready {
            out.release.push(job.name.to_string());
        }
    }
    out
}

/// Why a waiting job waits: the needs that have not ended yet.
pub fn waiting_for(job: &JobState<'_>, jobs: &[JobState<'_>]) -> Vec<String> {
    job.needs
        .iter()
        .filter(|need| {
            !jobs
                .iter()
                .any(|other| other.name == need.as_str() && other.status.is_terminal())
        })
        .cloned()
        .collect()
}

/// A commit's verdict: the state of its pipeline as one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// No job has started yet.
    Pending,
    /// A job has started and not every job has ended.
    Running,
    /// Every job that may not fail passed.
    Passed,
    /// A job that may not fail failed, erred or timed out.
    Failed,
    /// The plan could not be made (or the commit's only job erred).
    Error,
    /// None failed, but a job that may not fail was canceled (by hand, or
    /// superseded by a newer push), or the planning job was: the commit
    /// is not known to be good, nor known to be bad.
    Canceled,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pending => "pending",
            Verdict::Running => "running",
            Verdict::Passed => "passed",
            Verdict::Failed => "failed",
            Verdict::Error => "error",
            Verdict::Canceled => "canceled",
        }
    }

    pub fn is_final(self) -> bool {
        !matches!(self, Verdict::Pending | Verdict::Running)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verdict of one pipeline, from the planning job's status and its
/// other jobs. `first` is the commit's first job (the planning job, or
/// the only job of a commit without a pipeline file); `planned` is every
/// other job. Until every job has ended the commit is `pending`, or
/// `running` once one has started; then `error` if the first job erred
/// (no plan, or the only job could not run), `failed` if a job that may
/// not fail failed, erred or timed out, `canceled` if none did but the
/// first job or a job that may not fail was canceled, else `passed`. A
/// job skipped because a need failed or was canceled changes nothing: that
/// need already decided the verdict; one still skipped after its need was
/// run again alone and passed makes the commit `failed` (it never ran).
/// Failures come first: a pipeline canceled after a job failed is
/// `failed`.
pub fn verdict(first: JobStatus, planned: &[JobState<'_>]) -> Verdict {
    let statuses = std::iter::once(first).chain(planned.iter().map(|job| job.status));
    let all_ended = statuses.clone().all(JobStatus::is_terminal);
    if !all_ended {
        let started = statuses
            .clone()
            .any(|s| s == JobStatus::Running || s.is_terminal());
        return if started {
            Verdict::Running
        } else {
            Verdict::Pending
        };
    }
    if first == JobStatus::Error {
        return Verdict::Error;
    }
    let failed = first.is_failure()
        || planned
            .iter()
            .any(|job| !job.allow_failure && job.status.is_failure());
    let canceled = first == JobStatus::Canceled
        || planned
            .iter()
            .any(|job| !job.allow_failure && job.status == JobStatus::Canceled);
    // A job still skipped whose failed need was run again and passed (a
    // rerun of that one job): it never ran, so the commit did not pass.
    let skipped = planned
        .iter()
        .any(|job| !job.allow_failure && job.status == JobStatus::Skipped);
    if failed {
        Verdict::Failed
    } else if canceled {
        Verdict::Canceled
    } else if skipped {
        Verdict::Failed
    } else {
        Verdict::Passed
    }
}

/// The jobs that stand for a pipeline, from every job recorded in it
/// (oldest first): a job run again by hand (a rerun has the same name)
/// stands for its name, so the newest of each name.
pub fn current(jobs: &[JobRecord]) -> Vec<&JobRecord> {
    let mut newest: Vec<&JobRecord> = Vec::new();
    for job in jobs {
        match newest.iter_mut().find(|seen| seen.name == job.name) {
            Some(seen) if seen.seq < job.seq => *seen = job,
            Some(_) => {}
            None => newest.push(job),
        }
    }
    newest
}

/// A recorded job as [`advance`] and [`verdict`] read it.
pub fn state(job: &JobRecord) -> JobState<'_> {
    JobState {
        name: &job.name,
        status: job.status,
        needs: &job.needs,
        allow_failure: job.allow_failure,
    }
}

/// The verdict of the pipeline whose planning job is `pipeline`, from
/// every job recorded in it. None when the planning job is not among
/// them.
pub fn verdict_of(pipeline: &crate::JobId, jobs: &[JobRecord]) -> Option<Verdict> {
    let first = jobs.iter().find(|job| &job.id == pipeline)?;
    let planned: Vec<JobState<'_>> = current(jobs)
        .into_iter()
        .filter(|job| &job.id != pipeline)
        .map(state)
        .collect();
    Some(verdict(first.status, &planned))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, needs: &[&str]) -> JobSpec {
        JobSpec {
            name: name.into(),
            run: "true".into(),
            env: BTreeMap::new(),
            matrix: BTreeMap::new(),
            timeout_ms: None,
            queue: QueueName::default(),
            needs: needs.iter().map(|n| n.to_string()).collect(),
            allow_failure: false,
            split: None,
        }
    }

    #[test]
    fn a_plan_with_unknown_needs_duplicates_or_cycles_is_refused_in_words() {
        let ok = Plan::new(vec![spec("lint", &[]), spec("test", &["lint"])]);
        assert_eq!(ok.validate(), Ok(()));
        let unknown = Plan::new(vec![spec("test", &["lint"])]);
        assert!(unknown
            .validate()
            .unwrap_err()
            .to_string()
            .contains("needs \"lint\""));
        let twice = Plan::new(vec![spec("a", &[]), spec("a", &[])]);
        assert_eq!(twice.validate(), Err(PlanError::DuplicateName("a".into())));
        let cycle = Plan::new(vec![
            spec("a", &["c"]),
            spec("b", &["a"]),
            spec("c", &["b"]),
            spec("d", &[]),
        ]);
        let text = cycle.validate().unwrap_err().to_string();
        assert!(
            text.contains("cycle") && text.contains("a → c → b → a"),
            "{text}"
        );
        assert_eq!(Plan::new(vec![]).validate(), Err(PlanError::Empty));
        let mut bad_env = spec("e", &[]);
        bad_env.env.insert("1X".into(), "v".into());
        assert!(Plan::new(vec![bad_env]).validate().is_err());
    }

    fn state<'a>(name: &'a str, status: JobStatus, needs: &'a [String]) -> JobState<'a> {
        JobState {
            name,
            status,
            needs,
            allow_failure: false,
        }
    }

    #[test]
    fn a_job_is_released_when_its_needs_passed_and_skipped_with_its_dependents_when_one_failed() {
        let none: Vec<String> = vec![];
        let lint = vec!["lint".to_string()];
        let test = vec!["test".to_string()];
        let jobs = [
            state("lint", JobStatus::Running, &none),
            state("test", JobStatus::Waiting, &lint),
            state("docs", JobStatus::Waiting, &test),
        ];
        assert_eq!(advance(&jobs), Advance::default());
        assert_eq!(waiting_for(&jobs[2], &jobs), vec!["test".to_string()]);

        let mut passed = jobs.clone();
        passed[0].status = JobStatus::Passed;
        assert_eq!(advance(&passed).release, vec!["test".to_string()]);

        let mut failed = jobs.clone();
        failed[0].status = JobStatus::Failed;
        let next = advance(&failed);
        assert!(next.release.is_empty());
        assert_eq!(next.skip, vec!["test".to_string(), "docs".to_string()]);

        let mut allowed = failed.clone();
        allowed[0].allow_failure = true;
        assert_eq!(advance(&allowed).release, vec!["test".to_string()]);
    }

    #[test]
    fn a_job_left_skipped_after_its_need_was_rerun_and_passed_keeps_the_commit_failed() {
        let none: Vec<String> = vec![];
        let lint = vec!["lint".to_string()];
        let rerun_lint = state("lint", JobStatus::Passed, &none);
        let test = state("test", JobStatus::Skipped, &lint);
        assert_eq!(
            verdict(JobStatus::Passed, &[rerun_lint, test]),
            Verdict::Failed
        );
    }

    #[test]
    fn the_verdict_waits_for_every_job_and_ignores_jobs_allowed_to_fail() {
        let none: Vec<String> = vec![];
        let mut docs = state("docs", JobStatus::Running, &none);
        docs.allow_failure = true;
        let test = state("test", JobStatus::Passed, &none);
        assert_eq!(verdict(JobStatus::Queued, &[]), Verdict::Pending);
        assert_eq!(verdict(JobStatus::Running, &[]), Verdict::Running);
        assert_eq!(verdict(JobStatus::Passed, &[]), Verdict::Passed);
        assert_eq!(verdict(JobStatus::Timeout, &[]), Verdict::Failed);
        assert_eq!(verdict(JobStatus::Error, &[]), Verdict::Error);
        let waiting = state("w", JobStatus::Waiting, &none);
        assert_eq!(
            verdict(JobStatus::Passed, &[test.clone(), waiting]),
            Verdict::Running
        );
        assert_eq!(
            verdict(JobStatus::Passed, &[test.clone(), docs.clone()]),
            Verdict::Running
        );
        docs.status = JobStatus::Failed;
        assert_eq!(
            verdict(JobStatus::Passed, &[test.clone(), docs]),
            Verdict::Passed
        );
        let mut broken = test.clone();
        broken.status = JobStatus::Error;
        let skipped = state("docs", JobStatus::Skipped, &none);
        assert_eq!(
            verdict(JobStatus::Passed, &[broken, skipped]),
            Verdict::Failed
        );
    }

    #[test]
    fn a_canceled_need_is_not_met_even_when_allowed_to_fail_and_the_verdict_says_canceled() {
        let none: Vec<String> = vec![];
        let needs_a = vec!["a".to_string()];
        let mut a = state("a", JobStatus::Canceled, &none);
        let b = state("b", JobStatus::Waiting, &needs_a);
        assert_eq!(advance(&[a.clone(), b.clone()]).skip, vec!["b".to_string()]);
        a.allow_failure = true;
        assert_eq!(advance(&[a.clone(), b]).skip, vec!["b".to_string()]);

        let passed = state("p", JobStatus::Passed, &none);
        let canceled = state("c", JobStatus::Canceled, &none);
        let skipped = state("s", JobStatus::Skipped, &none);
        let failed = state("f", JobStatus::Failed, &none);
        assert_eq!(
            verdict(
                JobStatus::Passed,
                &[passed.clone(), canceled.clone(), skipped]
            ),
            Verdict::Canceled
        );
        assert_eq!(verdict(JobStatus::Canceled, &[]), Verdict::Canceled);
        // A failure decides first.
        assert_eq!(
            verdict(JobStatus::Passed, &[canceled.clone(), failed]),
            Verdict::Failed
        );
        // A job allowed to fail that was canceled changes nothing.
        let mut optional = canceled;
        optional.allow_failure = true;
        assert_eq!(
            verdict(JobStatus::Passed, &[passed, optional]),
            Verdict::Passed
        );
        assert_eq!(Verdict::Canceled.as_str(), "canceled");
        assert!(Verdict::Canceled.is_final());
    }
}
