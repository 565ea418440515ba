//! Turning Warren's messages (the `model` crate's types) into message
//! bodies and back: versioned JSON under a size cap.
//!
//! Decoding checks, in order, the size cap, the JSON, the schema version,
//! the shape and every identifier (the model's types refuse invalid ones
//! as they are built), then what spans fields ([`model::Message::validate`]:
//! the id rule, free-text sizes), before any of it reaches git, a command
//! line or the file system.

use model::{Invalid, Message, SCHEMA_VERSION};
use serde::Serialize;

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
    /// A field is missing, has the wrong type, or an identifier breaks its
    /// rule (`invalid field commit: …`).
    #[error("missing or malformed field: {0}")]
    Shape(String),
    #[error(transparent)]
    Invalid(#[from] Invalid),
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
        Some(other) => return Err(Invalid::UnknownVersion(other).into()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use model::{
        BranchName, CommitId, Event, Job, JobResult, Outcome, OutputChunk, RepoUrl, RunnerId,
        RunnerInfo,
    };

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    fn job() -> Job {
        Job::for_commit(
            &RepoUrl::parse("/srv/repo").expect("repo"),
            &BranchName::parse("main").expect("branch"),
            &CommitId::parse(COMMIT).expect("commit"),
        )
    }

    #[test]
    fn a_job_round_trips() {
        let job = job();
        let decoded: Job = decode(&encode(&job), DEFAULT_MAX_MESSAGE_BYTES).expect("decodes");
        assert_eq!(decoded, job);
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
            Err(DecodeError::Invalid(Invalid::UnknownVersion(2)))
        );
        value["v"] = serde_json::json!(1);
        value.as_object_mut().expect("object").remove("commit");
        assert!(matches!(
            decode::<Job>(&encode(&value), 10_000),
            Err(DecodeError::Shape(_))
        ));
    }

    #[test]
    fn an_invalid_identifier_is_refused_with_its_field_named() {
        let mut value: serde_json::Value = serde_json::from_slice(&encode(&job())).expect("json");
        value["commit"] = serde_json::json!("--upload-pack=touch /tmp/x");
        let text = decode::<Job>(&encode(&value), 10_000)
            .expect_err("invalid commit")
            .to_string();
        assert!(text.contains("invalid field commit"), "{text}");
    }

    #[test]
    fn an_id_that_does_not_follow_the_rule_is_refused_and_names_the_mismatch() {
        let rerun = job().again("rerun-1");
        assert_eq!(decode::<Job>(&encode(&rerun), 10_000), Ok(rerun.clone()));
        let mut forged = rerun.clone();
        forged.id = job().id;
        let text = decode::<Job>(&encode(&forged), 10_000)
            .expect_err("foreign id")
            .to_string();
        assert!(
            text.contains(job().id.as_str()) && text.contains(rerun.id.as_str()),
            "{text}"
        );
    }

    #[test]
    fn reasons_are_plain_words() {
        let text = decode::<Job>(br#"{"v": 2}"#, 100)
            .expect_err("v2")
            .to_string();
        assert!(text.starts_with("unknown schema version 2 "), "{text}");
        let text = decode::<Job>(b"{}", 100).expect_err("no v").to_string();
        assert!(text.contains("\"v\" is missing"), "{text}");
        assert!(!text.contains("Some(") && !text.contains("None"), "{text}");
    }

    #[test]
    fn events_and_results_round_trip() {
        let runner = RunnerInfo {
            id: RunnerId::parse("r1").expect("id"),
            host: "h".into(),
            connection: "c".into(),
            sandbox: Default::default(),
            queues: Vec::new(),
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
            plan: None,
            tests: None,
        };
        assert_eq!(result.routing_key(), "result.failed");
        assert_eq!(decode::<JobResult>(&encode(&result), 10_000), Ok(result));
    }
}
