//! Issue 5: webhook notifications against a real dispatcher, runner and
//! observer, received by a local HTTP server: the payload, its signature,
//! the retry after a 500, and silence for a second consecutive failure.

mod common;

use std::time::Duration;

use common::*;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

const SECRET: &str = "s3cret";

type Request = HttpRequest;

/// The body, which a notification always has as JSON.
fn json(request: &Request) -> Value {
    serde_json::from_slice(&request.body).expect("the body is JSON")
}

fn expected_signature(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

#[test]
fn a_failure_and_its_fix_are_posted_signed_and_retried_and_a_second_failure_is_quiet() {
    let ns = Namespace::new("webhooks");
    let scratch = Scratch::new();
    // 500 to the first request, 200 to the others.
    let receiver = WebhookReceiver::start(true);
    let repo = Repo::new(scratch.join("repo"));
    repo.write(".warren-test", "cat result.txt; grep -q pass result.txt");

    let dispatcher = Dispatcher::start_with_env(
        &ns,
        &scratch,
        &["--webhook", &receiver.url],
        &[("WARREN_WEBHOOK_SECRET", SECRET)],
    );
    let api = dispatcher.api();
    let _runner = runner(&ns, &scratch, "r1", &[]);

    // pass, fail, fail, pass: one commit at a time, each tested before the
    // next is made, so the outcomes are recorded in this order.
    let mut commits = Vec::new();
    let mut observer_proc = None;
    for (i, result) in ["pass", "fail", "fail", "pass"].iter().enumerate() {
        repo.write("result.txt", &format!("{result}\n"));
        let commit = repo.commit(&format!("commit {i}: {result}"));
        if observer_proc.is_none() {
            // Started after the first commit: its first poll publishes it.
            observer_proc = Some(observer(&ns, &scratch, repo.path_str(), &[]));
        }
        let jobs = api.wait_terminal(std::slice::from_ref(&commit), Duration::from_secs(60));
        let status = jobs[&commit][0]["status"].as_str().unwrap_or_default();
        let expected = if *result == "pass" {
            "passed"
        } else {
            "failed"
        };
        assert_eq!(status, expected, "commit {i}: {:?}", jobs[&commit]);
        let job = jobs[&commit][0].clone();
        commits.push((commit, job));
    }

    // The "fixed" notification comes last; each webhook gets its
    // notifications in order, so once it is here nothing else is coming
    // for the jobs before it.
    let requests = wait_for(
        "the webhook to receive the \"fixed\" notification",
        Duration::from_secs(30),
        || {
            let requests = receiver.requests();
            requests
                .iter()
                .any(|r| {
                    r.header("x-warren-event") == Some("fixed")
                        && r.header("x-warren-delivery").is_some()
                })
                .then_some(requests)
        },
    );
    // A moment for anything unexpected to show up.
    std::thread::sleep(Duration::from_millis(1500));
    let requests_now = receiver.requests();
    assert_eq!(
        requests.len(),
        requests_now.len(),
        "nothing after the \"fixed\" notification: {requests_now:#?}"
    );

    // Three requests: "failed" (answered 500), "failed" again (the retry,
    // byte for byte the same), "fixed". Nothing for the second failure or
    // the first pass.
    let summary: Vec<(String, String)> = requests
        .iter()
        .map(|r| {
            let json = json(r);
            (
                json["event"].as_str().unwrap_or_default().to_string(),
                json["job"]["commit"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    let (first_fail, fix) = (&commits[1].0, &commits[3].0);
    assert_eq!(
        summary,
        vec![
            ("failed".to_string(), first_fail.clone()),
            ("failed".to_string(), first_fail.clone()),
            ("fixed".to_string(), fix.clone()),
        ],
        "{requests:#?}"
    );
    assert_eq!(
        requests[0].body, requests[1].body,
        "the retry after the 500 sends the same payload"
    );
    assert_eq!(
        requests[0].header("x-warren-delivery"),
        requests[1].header("x-warren-delivery")
    );

    for request in &requests {
        assert!(
            request
                .request_line
                .starts_with("POST /hooks/warren HTTP/1.1"),
            "{}",
            request.request_line
        );
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(
            request.header("x-warren-signature"),
            Some(expected_signature(&request.body).as_str()),
            "the signature is the HMAC-SHA256 of the exact body"
        );
        let json = json(request);
        let event = json["event"].as_str().expect("event");
        assert_eq!(request.header("x-warren-event"), Some(event));
        let job = &json["job"];
        let id = job["id"].as_str().expect("id");
        let delivery = format!("{id}.{event}");
        assert_eq!(json["delivery"].as_str(), Some(delivery.as_str()));
        assert_eq!(request.header("x-warren-delivery"), Some(delivery.as_str()));
        assert_eq!(json["v"], 1);
        assert_eq!(job["repo"].as_str(), Some(repo.path_str()));
        assert_eq!(job["branch"], "main");
        assert_eq!(
            json["job_url"].as_str(),
            Some(format!("/jobs/{id}").as_str())
        );
        assert_eq!(
            json["api_url"].as_str(),
            Some(format!("/api/jobs/{id}").as_str())
        );
        assert_eq!(
            json["log_url"].as_str(),
            Some(format!("/api/jobs/{id}/log").as_str())
        );
        // The links work on the dispatcher.
        api.get_text(&format!("/jobs/{id}"))
            .expect("the job's dashboard page");
        let shown = api.get_json(&format!("/api/jobs/{id}")).expect("job");
        assert_eq!(shown["status"], job["status"]);
        assert!(api
            .log(id)
            .contains(if event == "failed" { "fail" } else { "pass" }));
    }

    let failed = json(&requests[0]);
    assert_eq!(failed["job"]["status"], "failed");
    assert_eq!(failed["job"]["id"], commits[1].1["id"]);
    assert_eq!(failed["job"]["subject"], "commit 1: fail");
    assert_eq!(
        failed["previous"]["commit"].as_str(),
        Some(commits[0].0.as_str())
    );
    assert_eq!(failed["previous"]["status"], "passed");
    let fixed = json(&requests[2]);
    assert_eq!(fixed["job"]["status"], "passed");
    assert_eq!(fixed["job"]["id"], commits[3].1["id"]);
    assert_eq!(
        fixed["previous"]["commit"].as_str(),
        Some(commits[2].0.as_str())
    );
    assert_eq!(fixed["previous"]["status"], "failed");

    // Every attempt is logged, the secret never.
    let log = dispatcher.proc.log_text();
    assert!(
        !log.contains(SECRET),
        "the secret is in the dispatcher's log"
    );
    let attempts: Vec<&str> = log.lines().filter(|l| l.contains("webhook")).collect();
    assert!(
        attempts
            .iter()
            .any(|l| l.contains("retrying") && l.contains("500")),
        "the 500 is logged: {attempts:#?}"
    );
    assert_eq!(
        attempts
            .iter()
            .filter(|l| l.contains("webhook notified"))
            .count(),
        2,
        "{attempts:#?}"
    );
}
