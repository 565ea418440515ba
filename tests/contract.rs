//! Issue 12: the wire contract as an outside client sees it. A client
//! written only from MESSAGES.md (tests/outside_client.py: Python's
//! standard library, RabbitMQ's management HTTP API, Warren's JSON API)
//! queues a job by the documented id rule, publishes a malformed job, a job
//! with a forged id and a poison job, and reads the dead letters back.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use model::Job;
use serde_json::Value;

const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/outside_client.py");

/// Runs the outside client and returns what it printed.
fn client(args: &[&str]) -> Value {
    let out = Command::new("python3")
        .arg(CLIENT)
        .args(args)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "outside_client.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the client prints JSON")
}

/// Dead letters the client took from the namespace's dead-letter queue,
/// waiting until there are `count`.
fn take_dead_letters(ns: &Namespace, count: usize) -> Vec<Value> {
    let mut taken = Vec::new();
    wait_for(
        &format!("{count} dead letters"),
        Duration::from_secs(30),
        || {
            if let Value::Array(letters) = client(&["dead-letters", &ns.name]) {
                taken.extend(letters);
            }
            (taken.len() >= count).then_some(())
        },
    );
    taken
}

fn header<'a>(letter: &'a Value, name: &str) -> &'a str {
    letter["headers"][name].as_str().unwrap_or_default()
}

#[test]
fn a_client_that_knows_only_the_documentation_queues_jobs_and_reads_dead_letters() {
    let ns = Namespace::new("contract");
    let scratch = Scratch::new();
    let repo = Repo::new(scratch.join("repo"));
    repo.write(".warren-test", "true");
    let good = repo.commit("good");
    repo.write(".warren-test", KILL_MY_RUNNER);
    let poison = repo.commit("a test that kills its runner");
    repo.write(".warren-test", "true");
    let head = repo.commit("head");
    let up = Up::start(
        &ns,
        &scratch,
        repo.path_str(),
        "2",
        &["--delivery-limit", "2"],
        &[],
    );
    let url = up.url.clone();
    let api = up.api();
    // The observer's job for the head: Warren is up.
    api.wait_terminal(std::slice::from_ref(&head), Duration::from_secs(60));

    // A job composed from the documentation is the job Warren makes for
    // the same commit, and runs.
    let composed = client(&["publish-job", &ns.name, repo.path_str(), "main", &good]);
    let id = composed["id"].as_str().expect("id").to_string();
    let made = Job::try_new(repo.path_str(), "main", &good).expect("a valid job");
    assert_eq!(id, made.id.as_str());
    let jobs = api.wait_terminal(std::slice::from_ref(&good), Duration::from_secs(60));
    let job = one_job(&jobs, &good);
    assert_eq!(
        (job["id"].as_str(), job["status"].as_str()),
        (Some(id.as_str()), Some("passed")),
        "{job}"
    );
    let read = client(&["job", &url, &id]);
    assert_eq!(read["status"], "passed", "read over plain HTTP: {read}");

    // A malformed job and a job whose id names another job: one dead
    // letter each, with the reason and the client's own header.
    client(&["publish-raw", &ns.name, r#"{"v": 1, "id": "x"}"#]);
    let mut forged = composed.clone();
    forged["commit"] = Value::String(head.clone());
    client(&["publish-raw", &ns.name, &forged.to_string()]);
    wait_for("the runner to refuse both", Duration::from_secs(30), || {
        (up.proc
            .log_text()
            .matches("refused a malformed job")
            .count()
            >= 2)
            .then_some(())
    });
    let letters = take_dead_letters(&ns, 2);
    assert_eq!(letters.len(), 2, "one dead letter each: {letters:#?}");
    let reasons: Vec<&str> = letters
        .iter()
        .map(|l| header(l, "x-warren-reason"))
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("missing field")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains(&format!("id {id} is not the id of this job"))),
        "{reasons:?}"
    );
    for letter in &letters {
        assert_eq!(header(letter, "x-client"), "outside-client.py", "{letter}");
        assert_eq!(
            header(letter, "x-warren-queue"),
            format!("{}.dispatcher.jobs", ns.name),
            "{letter}"
        );
    }
    // The forged job was not recorded over the real one.
    assert_eq!(one_job(&api.jobs_by_commit(), &good)["status"], "passed");

    // A poison job is delivered exactly --delivery-limit times, then
    // dead-lettered once with the reason the job is recorded with.
    let composed = client(&["publish-job", &ns.name, repo.path_str(), "main", &poison]);
    let jobs = api.wait_terminal(std::slice::from_ref(&poison), Duration::from_secs(90));
    let job = one_job(&jobs, &poison);
    assert_eq!(job["status"], "error", "{job}");
    assert_eq!(
        job["attempts"], 2,
        "delivered exactly --delivery-limit times: {job}"
    );
    let letters = take_dead_letters(&ns, 1);
    assert_eq!(letters.len(), 1, "{letters:#?}");
    let letter = &letters[0];
    let reason = header(letter, "x-warren-reason");
    assert!(reason.contains("after 2 deliveries"), "{letter}");
    assert_eq!(job["reason"].as_str(), Some(reason), "{job}");
    assert_eq!(header(letter, "x-client"), "outside-client.py", "{letter}");
    assert_eq!(
        header(letter, "x-warren-queue"),
        format!("{}.dispatcher.rejected", ns.name)
    );
    let body: Value = serde_json::from_str(letter["body"].as_str().expect("body")).expect("json");
    assert_eq!(body["id"], composed["id"]);
}
