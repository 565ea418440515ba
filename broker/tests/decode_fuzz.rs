//! Property tests: the decoders never panic on random bytes or on mutated
//! valid messages, and whatever they accept passes validation. Bounded
//! (proptest's default 256 cases per property; `PROPTEST_CASES` raises it).

use model::{
    Control, Event, Job, JobResult, Message, Outcome, RunnerId, RunnerInfo, SCHEMA_VERSION,
};
use proptest::prelude::*;
use warren_broker::message::{decode, encode};

const CAP: usize = 64 * 1024;

fn sample_result() -> JobResult {
    JobResult {
        v: SCHEMA_VERSION,
        job: Job::try_new("/srv/repo", "main", &"ab".repeat(20)).expect("job"),
        outcome: Outcome::Failed,
        exit_code: Some(1),
        started_at_ms: 1,
        finished_at_ms: 2,
        duration_ms: 1,
        output: "out".into(),
        truncated: false,
        runner: RunnerInfo {
            id: RunnerId::parse("r1").expect("id"),
            host: "h".into(),
            connection: "c".into(),
            sandbox: Default::default(),
            queues: Vec::new(),
        },
        reason: None,
        plan: None,
        tests: None,
    }
}

fn valid_bodies() -> Vec<Vec<u8>> {
    let result = sample_result();
    vec![
        encode(&result.job),
        encode(&result),
        encode(&Event::Started {
            v: SCHEMA_VERSION,
            job: result.job.clone(),
            runner: result.runner.clone(),
            at_ms: 3,
        }),
        encode(&Control::Cancel {
            v: SCHEMA_VERSION,
            job_id: result.job.id.clone(),
            except_runner: None,
            reason: "r".into(),
        }),
    ]
}

/// Decodes `body` as every message type; must never panic, and anything
/// accepted must validate.
fn decode_all(body: &[u8]) {
    if let Ok(job) = decode::<Job>(body, CAP) {
        assert!(job.validate().is_ok());
    }
    if let Ok(result) = decode::<JobResult>(body, CAP) {
        assert!(result.validate().is_ok());
    }
    if let Ok(event) = decode::<Event>(body, CAP) {
        assert!(event.validate().is_ok());
    }
    if let Ok(control) = decode::<Control>(body, CAP) {
        assert!(control.validate().is_ok());
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        decode_all(&body);
    }

    #[test]
    fn mutated_valid_messages_never_panic(
        which in 0usize..4,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut body = valid_bodies().swap_remove(which);
        for (index, byte) in flips {
            let at = index.index(body.len());
            body[at] = byte;
        }
        if truncate {
            body.truncate(cut.index(body.len() + 1));
        }
        decode_all(&body);
    }

    #[test]
    fn field_values_from_anywhere_are_validated(
        commit in ".{0,70}",
        branch in ".{0,40}",
        repo in ".{0,60}",
        id in ".{0,40}",
    ) {
        let mut value = serde_json::to_value(sample_result().job).expect("json");
        value["commit"] = serde_json::json!(commit);
        value["branch"] = serde_json::json!(branch);
        value["repo"] = serde_json::json!(repo);
        value["id"] = serde_json::json!(id);
        if let Ok(job) = decode::<Job>(&encode(&value), CAP) {
            prop_assert!(job.commit.as_str().len() == 40 || job.commit.as_str().len() == 64);
            prop_assert!(!job.branch.starts_with('-') && !job.branch.contains(' '));
            prop_assert!(!job.id.contains('/') && job.id != "..");
            prop_assert!(job.repo.starts_with('/') || job.repo.contains("://") || job.repo.contains('@'));
        }
    }
}
