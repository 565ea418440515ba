//! Where a job stands. A job is `queued` when published, `running` once a
//! runner announced it, and ends with exactly one outcome: `passed`,
//! `failed`, `error` or `timeout`. A job of a pipeline is `waiting` until
//! its needs have ended, and `skipped` (its end) when one of them failed.
//! A job stopped by hand (`warren cancel`), or superseded by a newer push,
//! ends `canceled`: not a failure, and not a need met either.
//! An ended job never changes status again (later results are counted as
//! duplicates).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a runner concluded about one execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The test exited with status 0.
    Passed,
    /// The test exited with another status, or was killed by a signal.
    Failed,
    /// The commit could not be fetched or checked out, the test could not
    /// start, or the job was dead-lettered.
    Error,
    /// The test ran past the job timeout.
    Timeout,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Passed,
        Outcome::Failed,
        Outcome::Error,
        Outcome::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        JobStatus::from(self).as_str()
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// In a pipeline, not yet published: a job it needs has not ended.
    Waiting,
    Queued,
    Running,
    Passed,
    Failed,
    Error,
    Timeout,
    /// Never ran: a job it needs failed (or was skipped).
    Skipped,
    /// Stopped before its end, by hand or because a newer push of its
    /// branch superseded it: no outcome, and not a failure.
    Canceled,
}

/// A word that names no status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status {0:?} (one of waiting, queued, running, passed, failed, error, timeout, skipped, canceled)")]
pub struct UnknownStatus(pub String);

impl JobStatus {
    pub const ALL: [JobStatus; 9] = [
        JobStatus::Waiting,
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Passed,
        JobStatus::Failed,
        JobStatus::Error,
        JobStatus::Timeout,
        JobStatus::Skipped,
        JobStatus::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Waiting => "waiting",
            JobStatus::Skipped => "skipped",
            JobStatus::Canceled => "canceled",
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Passed => "passed",
            JobStatus::Failed => "failed",
            JobStatus::Error => "error",
            JobStatus::Timeout => "timeout",
        }
    }

    /// Whether the job has ended (and so never changes again).
    pub fn is_terminal(self) -> bool {
        self.outcome().is_some() || matches!(self, JobStatus::Skipped | JobStatus::Canceled)
    }

    /// The outcome, for a job that ran to its end.
    pub fn outcome(self) -> Option<Outcome> {
        match self {
            JobStatus::Waiting
            | JobStatus::Queued
            | JobStatus::Running
            | JobStatus::Skipped
            | JobStatus::Canceled => None,
            JobStatus::Passed => Some(Outcome::Passed),
            JobStatus::Failed => Some(Outcome::Failed),
            JobStatus::Error => Some(Outcome::Error),
            JobStatus::Timeout => Some(Outcome::Timeout),
        }
    }

    /// `failed`, `error` and `timeout`: the commit is not known to be good.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            JobStatus::Failed | JobStatus::Error | JobStatus::Timeout
        )
    }
}

impl From<Outcome> for JobStatus {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Passed => JobStatus::Passed,
            Outcome::Failed => JobStatus::Failed,
            Outcome::Error => JobStatus::Error,
            Outcome::Timeout => JobStatus::Timeout,
        }
    }
}

impl FromStr for JobStatus {
    type Err = UnknownStatus;
    fn from_str(word: &str) -> Result<Self, UnknownStatus> {
        JobStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == word)
            .ok_or_else(|| UnknownStatus(word.to_string()))
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_and_write_as_lowercase_words_and_unknown_words_are_refused() {
        for status in JobStatus::ALL {
            assert_eq!(status.as_str().parse::<JobStatus>(), Ok(status));
            let json = serde_json::to_string(&status).expect("json");
            assert_eq!(json, format!("\"{status}\""));
        }
        assert!("Passed".parse::<JobStatus>().is_err());
        assert!("done".parse::<JobStatus>().is_err());
        assert!(serde_json::from_str::<JobStatus>("\"done\"").is_err());
    }

    #[test]
    fn outcomes_and_skipped_are_terminal_and_three_of_them_are_failures() {
        let terminal: Vec<JobStatus> = JobStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        let mut expected = Outcome::ALL.map(JobStatus::from).to_vec();
        expected.push(JobStatus::Skipped);
        expected.push(JobStatus::Canceled);
        assert_eq!(terminal, expected);
        assert!(!JobStatus::Skipped.is_failure() && !JobStatus::Waiting.is_terminal());
        assert!(!JobStatus::Canceled.is_failure() && JobStatus::Canceled.outcome().is_none());
        assert!(!JobStatus::Passed.is_failure());
        assert!(JobStatus::Timeout.is_failure() && JobStatus::Error.is_failure());
        assert!(!JobStatus::Running.is_failure());
    }
}
