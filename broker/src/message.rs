//! The messages that travel between Warren's components: versioned JSON.
//!
//! Every message carries `"v": 1`. Decoding checks the size cap, the JSON,
//! the version and every field a consumer will use (commit ids, branch
//! names, repository locations, ids that end up in file names) before any
//! of it reaches git, a shell-free command line or the file system.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Default cap on an incoming message; results carry up to 1 MiB of output.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Why a message was refused. The text goes into the dead-letter header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {size} bytes exceeds the cap of {cap} bytes")]
    TooLarge { size: usize, cap: usize },
    #[error("not valid JSON: {0}")]
    NotJson(String),
    #[error("no schema version: the field \"v\" is missing or not a number (this build reads version {SCHEMA_VERSION})")]
    MissingVersion,
    #[error("unknown schema version {0} (this build reads version {SCHEMA_VERSION})")]
    UnknownVersion(u64),
    #[error("missing or malformed field: {0}")]
    Shape(String),
    #[error("invalid field {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("id {given} is not the id of this job: its repo, branch, commit and salt give {expected} (the id rule is in ARCHITECTURE.md, \"Messages\"), so the id may name another job")]
    ForeignId { given: String, expected: String },
}

/// What the runner concluded about one execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Passed,
    Failed,
    Error,
    Timeout,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed => "failed",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
        }
    }
}

/// One commit to test. Published by the observer (or by `trigger`/`rerun`)
/// to the jobs exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub v: u32,
    /// Stable id: the same repository, branch and commit give the same id,
    /// so a publish repeated after a crash is recorded once.
    pub id: String,
    pub repo: String,
    pub branch: String,
    pub commit: String,
    pub enqueued_at_ms: u64,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub author: Option<String>,
    /// Empty for the job of a commit; anything else makes another job of
    /// the same commit (a rerun, a manual trigger), with an id of its own.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub salt: String,
}

impl Job {
    /// The job of a commit: the one the observer (or anyone following the
    /// id rule) publishes for it.
    pub fn for_commit(repo: &str, branch: &str, commit: &str) -> Job {
        Job {
            v: SCHEMA_VERSION,
            id: job_id(repo, branch, commit, ""),
            repo: repo.to_string(),
            branch: branch.to_string(),
            commit: commit.to_string(),
            enqueued_at_ms: crate::now_ms(),
            subject: None,
            author: None,
            salt: String::new(),
        }
    }

    /// Another job of the same commit (a rerun, a manual trigger): `salt`
    /// gives it an id of its own; enqueued now.
    pub fn again(&self, salt: &str) -> Job {
        Job {
            id: job_id(&self.repo, &self.branch, &self.commit, salt),
            salt: salt.to_string(),
            enqueued_at_ms: crate::now_ms(),
            ..self.clone()
        }
    }

    /// Whether this is the job of its commit rather than another run of it.
    pub fn is_first_of_commit(&self) -> bool {
        self.salt.is_empty()
    }

    pub fn validate(&self) -> Result<(), DecodeError> {
        check_version(self.v)?;
        validate_id("id", &self.id)?;
        validate_repo(&self.repo)?;
        validate_branch(&self.branch)?;
        validate_commit(&self.commit)?;
        validate_salt(&self.salt)?;
        let expected = job_id(&self.repo, &self.branch, &self.commit, &self.salt);
        if self.id != expected {
            return Err(DecodeError::ForeignId {
                given: self.id.clone(),
                expected,
            });
        }
        Ok(())
    }
}

/// The job id for (repo, branch, commit, salt): the first 8 bytes, as 16
/// lowercase hex digits, of the SHA-256 of the four values, each followed
/// by a zero byte. The same commit of the same branch and repository has
/// the same id whoever publishes it, so a repeated publish is one job.
pub fn job_id(repo: &str, branch: &str, commit: &str, salt: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [repo, branch, commit, salt] {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    let digest = hasher.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Who is running what; carried by `started` and `heartbeat` events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerInfo {
    pub id: String,
    pub host: String,
    /// The AMQP connection name, so the dispatcher can close a frozen
    /// runner's connection through the management API.
    pub connection: String,
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
        job_id: Option<String>,
        at_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<OutputChunk>,
    },
}

/// A piece of a running test's output: `text` starts at byte `offset` of
/// everything the test printed so far. The whole output still comes with
/// the result; these pieces let people watch it while the test runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputChunk {
    pub offset: u64,
    pub text: String,
}

impl Event {
    pub fn routing_key(&self) -> &'static str {
        match self {
            Event::Started { .. } => "event.started",
            Event::Heartbeat { .. } => "event.heartbeat",
        }
    }

    pub fn validate(&self) -> Result<(), DecodeError> {
        match self {
            Event::Started { v, job, runner, .. } => {
                check_version(*v)?;
                job.validate()?;
                validate_runner(runner)
            }
            Event::Heartbeat {
                v, runner, job_id, ..
            } => {
                check_version(*v)?;
                if let Some(id) = job_id {
                    validate_id("job_id", id)?;
                }
                validate_runner(runner)
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
}

impl JobResult {
    pub fn routing_key(&self) -> String {
        format!("result.{}", self.outcome.as_str())
    }

    pub fn validate(&self) -> Result<(), DecodeError> {
        check_version(self.v)?;
        self.job.validate()?;
        validate_runner(&self.runner)
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
        job_id: String,
        except_runner: Option<String>,
        reason: String,
    },
}

impl Control {
    pub fn validate(&self) -> Result<(), DecodeError> {
        match self {
            Control::Cancel { v, job_id, .. } => {
                check_version(*v)?;
                validate_id("job_id", job_id)
            }
        }
    }
}

/// Messages that can be decoded and validated from a delivery body.
pub trait Message: DeserializeOwned + Serialize {
    fn validate(&self) -> Result<(), DecodeError>;
}

impl Message for Job {
    fn validate(&self) -> Result<(), DecodeError> {
        Job::validate(self)
    }
}
impl Message for Event {
    fn validate(&self) -> Result<(), DecodeError> {
        Event::validate(self)
    }
}
impl Message for JobResult {
    fn validate(&self) -> Result<(), DecodeError> {
        JobResult::validate(self)
    }
}
impl Message for Control {
    fn validate(&self) -> Result<(), DecodeError> {
        Control::validate(self)
    }
}

/// Decodes and validates a message body.
pub fn decode<T: Message>(body: &[u8], max_bytes: usize) -> Result<T, DecodeError> {
    if body.len() > max_bytes {
        return Err(DecodeError::TooLarge {
            size: body.len(),
            cap: max_bytes,
        });
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    match value.get("v").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(SCHEMA_VERSION) => {}
        Some(other) => return Err(DecodeError::UnknownVersion(other)),
        None => return Err(DecodeError::MissingVersion),
    }
    let message: T =
        serde_json::from_value(value).map_err(|e| DecodeError::Shape(e.to_string()))?;
    message.validate()?;
    Ok(message)
}

/// Serializes a message. Our own types always serialize.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    serde_json::to_vec(message).unwrap_or_default()
}

fn check_version(v: u32) -> Result<(), DecodeError> {
    if v == SCHEMA_VERSION {
        Ok(())
    } else {
        Err(DecodeError::UnknownVersion(u64::from(v)))
    }
}

/// A salt: at most 128 printable characters.
fn validate_salt(salt: &str) -> Result<(), DecodeError> {
    if salt.len() > 128 || salt.chars().any(char::is_control) {
        return Err(invalid(
            "salt",
            "must be at most 128 bytes without control characters",
        ));
    }
    Ok(())
}

fn invalid(field: &'static str, reason: impl Into<String>) -> DecodeError {
    DecodeError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// A full commit id: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
pub fn validate_commit(commit: &str) -> Result<(), DecodeError> {
    let hex = commit
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if (commit.len() == 40 || commit.len() == 64) && hex {
        Ok(())
    } else {
        Err(invalid("commit", "expected 40 or 64 lowercase hex digits"))
    }
}

/// A branch name that git's ref-format rules accept (`git check-ref-format
/// --branch`), and that cannot be mistaken for an option.
pub fn validate_branch(branch: &str) -> Result<(), DecodeError> {
    let bad = |why: &str| Err(invalid("branch", why.to_string()));
    if branch.is_empty() || branch.len() > 255 {
        return bad("must be 1 to 255 bytes");
    }
    if branch.starts_with('-') {
        return bad("must not start with '-'");
    }
    if branch == "@" {
        return bad("must not be '@'");
    }
    if branch.starts_with('/') || branch.ends_with('/') || branch.contains("//") {
        return bad("must not start or end with '/' or contain '//'");
    }
    if branch.ends_with('.') || branch.contains("..") || branch.contains("@{") {
        return bad("must not end with '.' or contain '..' or '@{'");
    }
    if branch
        .chars()
        .any(|c| c.is_control() || " ~^:?*[\\".contains(c))
    {
        return bad("must not contain spaces, control characters or any of ~^:?*[\\");
    }
    for component in branch.split('/') {
        if component.starts_with('.') || component.ends_with(".lock") {
            return bad("no component may start with '.' or end with '.lock'");
        }
    }
    Ok(())
}

/// A repository location: an absolute path, or a URL with an allowed scheme
/// (`https`, `http`, `ssh`, `git`, `file`) or scp-like `user@host:path`.
pub fn validate_repo(repo: &str) -> Result<(), DecodeError> {
    if repo.is_empty() || repo.len() > 4096 {
        return Err(invalid("repo", "must be 1 to 4096 bytes"));
    }
    if repo.chars().any(char::is_control) {
        return Err(invalid("repo", "must not contain control characters"));
    }
    if repo.starts_with('-') {
        return Err(invalid("repo", "must not start with '-'"));
    }
    if repo.starts_with('/') {
        return Ok(());
    }
    if let Some((scheme, _)) = repo.split_once("://") {
        return if ["https", "http", "ssh", "git", "file"].contains(&scheme) {
            Ok(())
        } else {
            Err(invalid(
                "repo",
                format!("scheme {scheme:?} is not one of https, http, ssh, git, file"),
            ))
        };
    }
    if let Some((user_host, _)) = repo.split_once(':') {
        if user_host.contains('@') && !user_host.contains('/') {
            return Ok(());
        }
    }
    Err(invalid(
        "repo",
        "expected an absolute path or a URL (https, http, ssh, git, file)",
    ))
}

/// An id that may become part of a file name: letters, digits, '-', '_',
/// '.', 1 to 128 of them, and never '.' or '..'.
pub fn validate_id(field: &'static str, id: &str) -> Result<(), DecodeError> {
    let ok_chars = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if id.is_empty() || id.len() > 128 || !ok_chars || id == "." || id == ".." {
        return Err(invalid(
            field,
            "expected 1 to 128 letters, digits, '-', '_' or '.'",
        ));
    }
    Ok(())
}

fn validate_runner(runner: &RunnerInfo) -> Result<(), DecodeError> {
    validate_id("runner.id", &runner.id)?;
    if runner.host.len() > 255 || runner.connection.len() > 255 {
        return Err(invalid(
            "runner",
            "host and connection must be at most 255 bytes",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    fn job() -> Job {
        Job::for_commit("/srv/repo", "main", COMMIT)
    }

    #[test]
    fn a_job_round_trips() {
        let job = job();
        let decoded: Job = decode(&encode(&job), DEFAULT_MAX_MESSAGE_BYTES).expect("decodes");
        assert_eq!(decoded, job);
    }

    #[test]
    fn job_ids_are_stable_and_distinct() {
        assert_eq!(job_id("r", "b", COMMIT, ""), job_id("r", "b", COMMIT, ""));
        assert_ne!(job_id("r", "b", COMMIT, ""), job_id("r", "c", COMMIT, ""));
        assert_ne!(
            job_id("r", "b", COMMIT, ""),
            job_id("r", "b", COMMIT, "rerun-1")
        );
        assert!(validate_id("id", &job_id("r", "b", COMMIT, "")).is_ok());
    }

    #[test]
    fn refuses_oversized_non_json_and_unknown_versions() {
        let body = encode(&job());
        assert!(matches!(
            decode::<Job>(&body, 10),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(matches!(
            decode::<Job>(b"{not json", 100),
            Err(DecodeError::NotJson(_))
        ));
        let mut value: serde_json::Value = serde_json::from_slice(&body).expect("json");
        value["v"] = serde_json::json!(2);
        assert_eq!(
            decode::<Job>(&encode(&value), 10_000),
            Err(DecodeError::UnknownVersion(2))
        );
        value["v"] = serde_json::json!(1);
        value.as_object_mut().expect("object").remove("commit");
        assert!(matches!(
            decode::<Job>(&encode(&value), 10_000),
            Err(DecodeError::Shape(_))
        ));
    }

    #[test]
    fn an_id_that_does_not_follow_the_rule_is_refused_and_names_the_mismatch() {
        let rerun = job().again("rerun-1");
        assert_ne!(rerun.id, job().id);
        assert_eq!(
            decode::<Job>(&encode(&rerun), 10_000),
            Ok(rerun.clone()),
            "a salted job decodes"
        );
        let mut forged = job().again("rerun-1");
        forged.id = job().id;
        let err = decode::<Job>(&encode(&forged), 10_000).expect_err("foreign id");
        assert!(matches!(err, DecodeError::ForeignId { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&job().id) && text.contains(&rerun.id),
            "{text}"
        );
    }

    #[test]
    fn reasons_are_plain_words() {
        let body = br#"{"v": 2}"#;
        let text = decode::<Job>(body, 100).expect_err("v2").to_string();
        assert!(text.starts_with("unknown schema version 2 "), "{text}");
        let text = decode::<Job>(b"{}", 100).expect_err("no v").to_string();
        assert!(text.contains("\"v\" is missing"), "{text}");
        assert!(!text.contains("Some(") && !text.contains("None"), "{text}");
    }

    #[test]
    fn commits_must_be_full_hex() {
        assert!(validate_commit(COMMIT).is_ok());
        assert!(validate_commit(&"a".repeat(64)).is_ok());
        for bad in [
            "",
            "abc",
            "--upload-pack=x",
            &"g".repeat(40),
            &"A".repeat(40),
        ] {
            assert!(validate_commit(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn branches_follow_ref_format() {
        for good in ["main", "feature/x", "release-1.2", "a_b"] {
            assert!(validate_branch(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-x",
            "--upload-pack=touch",
            "a..b",
            "a b",
            "x; touch /tmp/pwned",
            ".hidden",
            "a/.b",
            "x.lock",
            "a//b",
            "/a",
            "a/",
            "a~1",
            "a^",
            "a:b",
            "@",
            "a@{1}",
            "end.",
        ] {
            assert!(validate_branch(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn repos_are_paths_or_allowed_urls() {
        for good in [
            "/srv/git/repo",
            "https://example.org/r.git",
            "ssh://git@host/r",
            "git@host:org/r.git",
            "file:///srv/r",
        ] {
            assert!(validate_repo(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "relative/path",
            "-uhttps://x",
            "ext::sh -c touch",
            "fd::1",
            "javascript://x",
        ] {
            assert!(validate_repo(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_cannot_escape_a_folder() {
        for bad in [
            "",
            "..",
            ".",
            "../x",
            "/abs",
            "a/b",
            "nul\0",
            &"x".repeat(129),
        ] {
            assert!(validate_id("id", bad).is_err(), "{bad:?}");
        }
        assert!(validate_id("id", "runner-1.host_2").is_ok());
    }

    #[test]
    fn events_and_results_round_trip() {
        let runner = RunnerInfo {
            id: "r1".into(),
            host: "h".into(),
            connection: "c".into(),
        };
        let event = Event::Heartbeat {
            v: SCHEMA_VERSION,
            runner: runner.clone(),
            job_id: Some(job().id),
            at_ms: 1,
            output: Some(OutputChunk {
                offset: 7,
                text: "line\n".into(),
            }),
        };
        assert_eq!(decode::<Event>(&encode(&event), 10_000), Ok(event));
        // Heartbeats of runners that send no output still decode.
        let quiet = format!(
            "{{\"v\":1,\"type\":\"heartbeat\",\"runner\":{},\"job_id\":null,\"at_ms\":1}}",
            serde_json::to_string(&runner).expect("json")
        );
        assert!(matches!(
            decode::<Event>(quiet.as_bytes(), 10_000),
            Ok(Event::Heartbeat { output: None, .. })
        ));
        let result = JobResult {
            v: SCHEMA_VERSION,
            job: job(),
            outcome: Outcome::Failed,
            exit_code: Some(1),
            started_at_ms: 1,
            finished_at_ms: 2,
            duration_ms: 1,
            output: "out".into(),
            truncated: false,
            runner,
            reason: None,
        };
        assert_eq!(result.routing_key(), "result.failed");
        assert_eq!(decode::<JobResult>(&encode(&result), 10_000), Ok(result));
    }
}
