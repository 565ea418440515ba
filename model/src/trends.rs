//! Trends (`GET /api/trends`): how long each job takes run after run, how
//! often jobs pass day by day, and how busy the queue and the runners
//! were in the last hour. The dashboard draws them as charts, each with a
//! table of the same numbers.
//!
//! Worked out here from jobs already read (newest first, as the store
//! lists them) so the rules are plain functions: which runs count, what a
//! day is, what the median is.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::record::JobRecord;
use crate::{BranchName, CommitId, JobId, JobStatus, RepoUrl};

/// Runs kept per job name.
pub const RUNS_PER_NAME: usize = 100;

/// Job names shown at most (those that ran most recently).
pub const NAMES_MAX: usize = 20;

/// `GET /api/trends?repo=&branch=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrendsView {
    /// The repository the figures are of; all when `None`.
    pub repo: Option<RepoUrl>,
    /// The branch the durations are of: the one asked for, else the
    /// newest job's. `None` when there is no job yet.
    pub branch: Option<BranchName>,
    /// Each job name's last runs on that branch, names that ran most
    /// recently first.
    pub durations: Vec<DurationTrend>,
    /// Outcomes per day (UTC), oldest first, over the jobs read.
    pub pass_rate: Vec<DayPassRate>,
    /// The dispatcher's samples of the last hour, oldest first.
    pub load: Vec<LoadSample>,
}

/// The last runs of one job name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurationTrend {
    pub name: String,
    /// The median of `runs`' durations.
    pub median_ms: i64,
    /// Oldest first, at most [`RUNS_PER_NAME`].
    pub runs: Vec<TrendRun>,
}

/// One run of a job, a dot on the duration chart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrendRun {
    pub id: JobId,
    pub commit: CommitId,
    pub status: JobStatus,
    pub finished_at_ms: i64,
    pub duration_ms: i64,
}

/// A day's outcomes: `passed` of `total` jobs that ended with an outcome
/// (canceled and skipped jobs have none and are not counted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayPassRate {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub passed: u64,
    pub total: u64,
}

/// What the dispatcher saw at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadSample {
    pub at_ms: i64,
    /// Jobs queued, not yet taken by a runner.
    pub queued: i64,
    /// Jobs running: runners busy.
    pub running: i64,
    pub runners_online: i64,
}

/// Whether the job ended with an outcome (not canceled or skipped).
fn has_outcome(job: &JobRecord) -> bool {
    matches!(
        job.status,
        JobStatus::Passed | JobStatus::Failed | JobStatus::Error | JobStatus::Timeout
    )
}

/// A job that ended with an outcome and a duration: a point of a trend.
/// (A split job's gate has no duration of its own: it ran nothing.)
fn outcome_run(job: &JobRecord) -> Option<TrendRun> {
    if !has_outcome(job) {
        return None;
    }
    Some(TrendRun {
        id: job.id.clone(),
        commit: job.commit.clone(),
        status: job.status,
        finished_at_ms: job.finished_at_ms?,
        duration_ms: job.duration_ms?.max(0),
    })
}

/// Each name's last [`RUNS_PER_NAME`] runs among `newest_first` (jobs of
/// one branch), at most [`NAMES_MAX`] names, the most recent first; a
/// split job's batches and retries left out.
pub fn durations(newest_first: &[JobRecord]) -> Vec<DurationTrend> {
    let mut order: Vec<&str> = Vec::new();
    let mut runs: BTreeMap<&str, Vec<TrendRun>> = BTreeMap::new();
    // A split job's batches are named anew each run: no trend of their own.
    for job in newest_first
        .iter()
        .filter(|job| !crate::split::is_part_name(&job.name))
    {
        let Some(run) = outcome_run(job) else {
            continue;
        };
        let name = job.name.as_str();
        let kept = runs.entry(name).or_default();
        if kept.is_empty() {
            if order.len() == NAMES_MAX {
                runs.remove(name);
                continue;
            }
            order.push(name);
        }
        if kept.len() < RUNS_PER_NAME {
            kept.push(run);
        }
    }
    order
        .into_iter()
        .filter_map(|name| {
            let mut runs = runs.remove(name)?;
            runs.reverse();
            Some(DurationTrend {
                name: name.to_string(),
                median_ms: median(runs.iter().map(|run| run.duration_ms).collect()),
                runs,
            })
        })
        .collect()
}

/// The middle value; the mean of the two middle ones for an even count;
/// 0 for none.
pub fn median(mut values: Vec<i64>) -> i64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2
    }
}

/// Passed of ended jobs per UTC day, oldest first.
pub fn pass_rate(jobs: &[JobRecord]) -> Vec<DayPassRate> {
    let mut days: BTreeMap<i64, (u64, u64)> = BTreeMap::new();
    for job in jobs.iter().filter(|job| has_outcome(job)) {
        let Some(finished_at_ms) = job.finished_at_ms else {
            continue;
        };
        let day = days.entry(finished_at_ms.div_euclid(DAY_MS)).or_default();
        day.1 += 1;
        if job.status == JobStatus::Passed {
            day.0 += 1;
        }
    }
    days.into_iter()
        .map(|(day, (passed, total))| DayPassRate {
            day: civil_date(day),
            passed,
            total,
        })
        .collect()
}

const DAY_MS: i64 = 86_400_000;

/// `YYYY-MM-DD` of a day counted from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
pub fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(
        n: i64,
        name: &str,
        status: JobStatus,
        duration_ms: i64,
        finished_at_ms: i64,
    ) -> JobRecord {
        let id = format!("{n:016x}");
        JobRecord {
            seq: n,
            id: JobId::parse(&id).expect("id"),
            repo: RepoUrl::parse("/r").expect("repo"),
            branch: BranchName::parse("main").expect("branch"),
            commit: CommitId::parse(&format!("{n:040x}")).expect("commit"),
            subject: None,
            author: None,
            status,
            attempts: 1,
            duplicates: 0,
            runner: None,
            connection: None,
            enqueued_at_ms: Some(finished_at_ms - duration_ms),
            started_at_ms: Some(finished_at_ms - duration_ms),
            finished_at_ms: Some(finished_at_ms),
            duration_ms: Some(duration_ms),
            exit_code: None,
            reason: None,
            truncated: false,
            salt: String::new(),
            sandbox: None,
            name: name.into(),
            pipeline: JobId::parse(&id).expect("id"),
            queue: Default::default(),
            needs: vec![],
            allow_failure: false,
            spec: None,
        }
    }

    #[test]
    fn each_name_keeps_its_last_runs_oldest_first_with_their_median() {
        // Newest first, as the store lists them.
        let mut jobs = Vec::new();
        for n in (1..=150).rev() {
            jobs.push(job(2 * n, "test", JobStatus::Passed, n, 1_000 + n));
            jobs.push(job(2 * n + 1, "lint", JobStatus::Failed, 10, 1_000 + n));
        }
        jobs.insert(0, job(999, "test", JobStatus::Running, 0, 0));
        jobs.insert(0, job(998, "deploy", JobStatus::Canceled, 5, 5_000));
        jobs.insert(0, job(997, "unit [2/4]", JobStatus::Passed, 5, 5_000));
        let trends = durations(&jobs);
        let names: Vec<&str> = trends.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["test", "lint"],
            "runs without an outcome are no point"
        );
        let test = &trends[0];
        assert_eq!(test.runs.len(), RUNS_PER_NAME);
        assert_eq!(test.runs.first().map(|r| r.duration_ms), Some(51));
        assert_eq!(test.runs.last().map(|r| r.duration_ms), Some(150));
        assert_eq!(test.median_ms, 100, "the mean of 100 and 101, rounded down");
        assert_eq!(trends[1].median_ms, 10);
    }

    #[test]
    fn names_are_capped_by_recency() {
        let jobs: Vec<JobRecord> = (0..NAMES_MAX as i64 + 5)
            .map(|n| job(n, &format!("job-{n}"), JobStatus::Passed, 1, 1))
            .collect();
        let trends = durations(&jobs);
        assert_eq!(trends.len(), NAMES_MAX);
        assert_eq!(trends[0].name, "job-0");
    }

    #[test]
    fn the_pass_rate_counts_outcomes_per_utc_day() {
        let day = DAY_MS;
        let jobs = vec![
            job(1, "t", JobStatus::Passed, 1, 20_000 * day + 5),
            job(2, "t", JobStatus::Failed, 1, 20_000 * day + day - 1),
            job(3, "t", JobStatus::Canceled, 1, 20_000 * day + 7),
            job(4, "t", JobStatus::Passed, 1, 20_001 * day),
        ];
        // A gate: an outcome without a duration of its own.
        let mut gate = job(5, "t", JobStatus::Failed, 1, 20_000 * day + 9);
        gate.duration_ms = None;
        let jobs = [jobs, vec![gate]].concat();
        let rate = pass_rate(&jobs);
        assert_eq!(
            rate,
            vec![
                DayPassRate {
                    day: "2024-10-04".into(),
                    passed: 1,
                    total: 3
                },
                DayPassRate {
                    day: "2024-10-05".into(),
                    passed: 1,
                    total: 1
                },
            ]
        );
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(11_016), "2000-02-29");
    }

    #[test]
    fn the_median_of_nothing_is_zero() {
        assert_eq!(median(vec![]), 0);
        assert_eq!(median(vec![3, 1, 2]), 2);
    }
}
