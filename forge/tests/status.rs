//! Commit statuses against a fake forge on loopback: each forge's path,
//! token header, body and state words; a commit's reports arriving in
//! order; retries on server errors; giving up after the bound without the
//! token in any log; a slow forge never holding up `report` or other
//! commits; the bound on parallel requests; and shutdown.

mod common;

use warren_forge as forge;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Answer, FakeForge, LogCapture};
use forge::{status_word, StatusReporter, StatusSettings, StatusTarget, StatusUpdate};
use model::{CommitId, ForgeKind, JobStatus};
use tasks::Tasks;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "tok_s3cr3t_9f8e7d";

fn commit(n: u32) -> CommitId {
    CommitId::parse(&format!("{n:08x}").repeat(5)).expect("a commit id")
}

fn quick() -> StatusSettings {
    StatusSettings {
        parallel: 4,
        request_timeout: Duration::from_secs(5),
        first_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        give_up_after: Duration::from_secs(20),
    }
}

/// A reporter, its tasks, and everything logged meanwhile (the tests run
/// on one thread, so the reporter's tasks log there too).
struct Setup {
    reporter: StatusReporter,
    tasks: Tasks,
    logs: LogCapture,
}

fn start(settings: StatusSettings) -> Setup {
    let logs = LogCapture::start();
    let tasks = Tasks::new(&CancellationToken::new());
    let reporter = StatusReporter::start(settings, &tasks).expect("a reporter");
    Setup {
        reporter,
        tasks,
        logs,
    }
}

impl Setup {
    async fn idle(&self) {
        tokio::time::timeout(Duration::from_secs(10), self.reporter.idle())
            .await
            .expect("every report settled within 10 s");
    }

    /// Stops the reporter, and checks that no log line held the token.
    async fn stop(self) {
        assert!(
            self.tasks.stop(Duration::from_secs(2)).await,
            "the reporter's tasks end on shutdown"
        );
        let text = self.logs.text();
        assert!(!text.contains(TOKEN), "the token is never logged: {text}");
    }
}

fn target(kind: ForgeKind, forge: &FakeForge, api_path: &str, repo: &str) -> Arc<StatusTarget> {
    Arc::new(
        StatusTarget::new(kind, &format!("{}{api_path}", forge.url), repo, TOKEN)
            .expect("a valid target"),
    )
}

#[tokio::test]
async fn each_forge_gets_its_path_token_header_and_state_words() {
    let forge = FakeForge::start().await;
    let setup = start(quick());
    let sha = commit(1);
    let forges = [
        (
            ForgeKind::GitHub,
            "",
            "octo/hello",
            format!("/repos/octo/hello/statuses/{sha}"),
            ("authorization", format!("Bearer {TOKEN}")),
            "context",
            ["pending", "pending", "success", "failure", "error", "error"],
        ),
        (
            ForgeKind::Gitea,
            "/api/v1",
            "gitea/webhooks",
            format!("/api/v1/repos/gitea/webhooks/statuses/{sha}"),
            ("authorization", format!("token {TOKEN}")),
            "context",
            ["pending", "pending", "success", "failure", "error", "error"],
        ),
        (
            ForgeKind::GitLab,
            "/api/v4",
            "mike/diaspora",
            format!("/api/v4/projects/mike%2Fdiaspora/statuses/{sha}"),
            ("private-token", TOKEN.to_string()),
            "name",
            [
                "pending", "running", "success", "failed", "failed", "failed",
            ],
        ),
    ];
    let statuses = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Passed,
        JobStatus::Failed,
        JobStatus::Error,
        JobStatus::Timeout,
    ];
    for (kind, api_path, repo, path, (auth, auth_value), label, words) in forges {
        let target = target(kind, &forge, api_path, repo);
        for (status, word) in statuses.into_iter().zip(words) {
            let mut update = StatusUpdate::new(sha.clone(), status);
            update.target_url = Some("https://ci.example/jobs/0123abcd".into());
            update.description = format!("{} — {}", status.as_str(), "x".repeat(300));
            setup.reporter.report(&target, update);
            // One at a time, so no report replaces another.
            setup.idle().await;
            let request = forge.requests().pop().expect("a request");
            assert_eq!(request.method, "POST");
            assert_eq!(request.path, path, "{kind}");
            assert_eq!(request.headers.get(auth), Some(&auth_value), "{kind}");
            assert_eq!(
                request.headers.get("content-type").map(String::as_str),
                Some("application/json")
            );
            assert!(
                request
                    .headers
                    .get("user-agent")
                    .is_some_and(|ua| ua.starts_with("warren/")),
                "{kind}: GitHub refuses requests without a User-Agent"
            );
            let body = request.json();
            assert_eq!(body["state"], word, "{kind} {status}");
            assert_eq!(body[label], "warren", "{kind}");
            assert_eq!(body["target_url"], "https://ci.example/jobs/0123abcd");
            let description = body["description"].as_str().expect("a description");
            assert_eq!(description.chars().count(), 140, "{kind}: cut to 140");
            assert!(description.starts_with(status.as_str()) && description.ends_with('…'));
        }
    }
    assert_eq!(setup.reporter.counts().sent, 18);
    setup.stop().await;
}

#[tokio::test]
async fn each_commit_gets_pending_first_and_its_final_state_last() {
    // Pending is answered slowly, so later reports pile up behind it, and
    // a final state sent beside it would be answered first.
    let forge = FakeForge::scripted(|request, _| {
        let delay = if request.state() == "pending" { 60 } else { 5 };
        Answer::status(201).after(Duration::from_millis(delay))
    })
    .await;
    let setup = start(quick());
    let target = target(ForgeKind::GitHub, &forge, "", "octo/hello");
    let finals = [
        JobStatus::Passed,
        JobStatus::Failed,
        JobStatus::Error,
        JobStatus::Timeout,
        JobStatus::Passed,
        JobStatus::Failed,
    ];
    for (n, outcome) in finals.iter().enumerate() {
        for status in [JobStatus::Queued, JobStatus::Running, *outcome] {
            setup
                .reporter
                .report(&target, StatusUpdate::new(commit(n as u32), status));
        }
    }
    setup.idle().await;
    for (n, outcome) in finals.iter().enumerate() {
        let states: Vec<String> = forge
            .requests_to(&commit(n as u32))
            .iter()
            .map(|r| r.state())
            .collect();
        let last = status_word(ForgeKind::GitHub, *outcome);
        assert_eq!(
            states.first().map(String::as_str),
            Some("pending"),
            "{n}: {states:?}"
        );
        assert_eq!(
            states.last().map(String::as_str),
            Some(last),
            "{n}: {states:?}"
        );
        assert!(
            states[..states.len() - 1].iter().all(|s| s == "pending"),
            "{n}: nothing after the final state: {states:?}"
        );
    }
    assert_eq!(
        forge.overlapped_paths(),
        Vec::<String>::new(),
        "one request at a time per commit"
    );
    let counts = setup.reporter.counts();
    assert_eq!(counts.sent + counts.superseded, 18, "{counts:?}");
    assert!(
        counts.superseded > 0,
        "waiting reports were replaced: {counts:?}"
    );
    setup.stop().await;
}

#[tokio::test]
async fn server_errors_and_429_are_retried_with_the_same_body_then_succeed() {
    let forge = FakeForge::scripted(|_, n| match n {
        0 => Answer::status(502),
        1 => Answer::status(503),
        2 => Answer::status(429).with_header("retry-after", "0"),
        _ => Answer::status(201),
    })
    .await;
    let setup = start(quick());
    let target = target(ForgeKind::Gitea, &forge, "/api/v1", "o/r");
    let started = Instant::now();
    setup
        .reporter
        .report(&target, StatusUpdate::new(commit(7), JobStatus::Passed));
    setup.idle().await;
    let requests = forge.requests();
    assert_eq!(requests.len(), 4, "three failures, then success");
    assert!(requests.iter().all(|r| r.body == requests[0].body));
    // 20 ms then 40 ms of back-off; the 429's Retry-After said 0.
    assert!(started.elapsed() >= Duration::from_millis(60));
    let counts = setup.reporter.counts();
    assert_eq!((counts.sent, counts.given_up), (1, 0), "{counts:?}");
    setup.stop().await;
}

#[tokio::test]
async fn refusals_are_final_and_gitlab_saying_the_state_is_there_counts_as_sent() {
    let forge = FakeForge::scripted(|request, _| {
        if request.path.contains("/projects/") {
            Answer::status(400)
                .with_body(r#"{"message":"Cannot transition status via :run from :running"}"#)
        } else {
            Answer::status(401).with_body(r#"{"message":"Bad credentials"}"#)
        }
    })
    .await;
    let setup = start(quick());
    let github = target(ForgeKind::GitHub, &forge, "", "octo/hello");
    let gitlab = target(ForgeKind::GitLab, &forge, "/api/v4", "15");
    setup
        .reporter
        .report(&github, StatusUpdate::new(commit(1), JobStatus::Running));
    setup
        .reporter
        .report(&gitlab, StatusUpdate::new(commit(2), JobStatus::Running));
    setup.idle().await;
    assert_eq!(forge.requests().len(), 2, "neither is retried");
    let counts = setup.reporter.counts();
    assert_eq!((counts.refused, counts.sent), (1, 1), "{counts:?}");
    setup.stop().await;
}

#[tokio::test]
async fn a_forge_that_keeps_failing_is_given_up_on_after_the_bound_and_logs_no_token() {
    let forge = FakeForge::scripted(|_, _| Answer::status(500)).await;
    let unreachable = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        drop(listener);
        format!("http://127.0.0.1:{port}")
    };
    let bound = Duration::from_millis(400);
    let setup = start(StatusSettings {
        give_up_after: bound,
        first_delay: Duration::from_millis(25),
        ..quick()
    });
    let failing = target(ForgeKind::GitHub, &forge, "", "octo/hello");
    let down = Arc::new(
        StatusTarget::new(ForgeKind::GitLab, &unreachable, "mike/diaspora", TOKEN).expect("valid"),
    );
    let started = Instant::now();
    setup
        .reporter
        .report(&failing, StatusUpdate::new(commit(1), JobStatus::Failed));
    setup
        .reporter
        .report(&down, StatusUpdate::new(commit(2), JobStatus::Failed));
    setup.idle().await;
    let took = started.elapsed();
    assert!(took < bound + Duration::from_secs(2), "bounded: {took:?}");
    let tries = forge.requests().len();
    // 25, 50, 100, 200 ms of back-off fit 400 ms at most: 4 or 5 tries.
    assert!((3..=5).contains(&tries), "{tries} tries");
    assert_eq!(setup.reporter.counts().given_up, 2);
    let text = setup.logs.text();
    assert!(text.contains("giving up on the commit status"), "{text}");
    let host = forge.url.trim_start_matches("http://");
    assert!(text.contains(host), "the forge's host is named: {text}");
    assert!(
        text.contains(unreachable.trim_start_matches("http://")),
        "{text}"
    );
    setup.stop().await;
}

#[tokio::test]
async fn a_forge_that_never_answers_holds_up_neither_report_nor_other_commits() {
    let stuck = commit(1);
    let stuck_text = stuck.to_string();
    let forge = FakeForge::scripted(move |request, _| {
        if request.path.contains(&stuck_text) {
            Answer::never()
        } else {
            Answer::status(201)
        }
    })
    .await;
    let setup = start(StatusSettings {
        request_timeout: Duration::from_secs(60),
        ..quick()
    });
    let target = target(ForgeKind::GitHub, &forge, "", "octo/hello");
    setup
        .reporter
        .report(&target, StatusUpdate::new(stuck.clone(), JobStatus::Queued));
    forge.wait_for_requests(1).await;
    // The first request hangs; a thousand more for that commit return at
    // once and wait (replacing each other) behind it.
    let started = Instant::now();
    for _ in 0..1000 {
        setup.reporter.report(
            &target,
            StatusUpdate::new(stuck.clone(), JobStatus::Running),
        );
    }
    setup
        .reporter
        .report(&target, StatusUpdate::new(commit(2), JobStatus::Passed));
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "report never waits: {took:?}"
    );
    forge.wait_for_requests(2).await;
    let other = forge.requests_to(&commit(2));
    assert_eq!(other.len(), 1, "the other commit went through");
    assert_eq!(setup.reporter.counts().superseded, 999);
    // Shutdown ends the stuck request too.
    let stopping = Instant::now();
    setup.stop().await;
    assert!(stopping.elapsed() < Duration::from_secs(2));
    assert_eq!(forge.requests_to(&stuck).len(), 1);
}

#[tokio::test]
async fn a_newer_report_replaces_one_being_retried() {
    // Pending is refused with 503 for as long as it is tried.
    let forge = FakeForge::scripted(|request, _| {
        if request.state() == "pending" {
            Answer::status(503)
        } else {
            Answer::status(201)
        }
    })
    .await;
    let setup = start(StatusSettings {
        first_delay: Duration::from_millis(50),
        give_up_after: Duration::from_secs(60),
        ..quick()
    });
    let target = target(ForgeKind::GitHub, &forge, "", "octo/hello");
    let started = Instant::now();
    setup
        .reporter
        .report(&target, StatusUpdate::new(commit(3), JobStatus::Queued));
    forge.wait_for_requests(1).await;
    setup
        .reporter
        .report(&target, StatusUpdate::new(commit(3), JobStatus::Passed));
    setup.idle().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "not held for the minute the pending one could be retried"
    );
    let states: Vec<String> = forge.requests().iter().map(|r| r.state()).collect();
    assert_eq!(
        states.last().map(String::as_str),
        Some("success"),
        "{states:?}"
    );
    let counts = setup.reporter.counts();
    assert_eq!((counts.superseded, counts.sent, counts.given_up), (1, 1, 0));
    setup.stop().await;
}

#[tokio::test]
async fn commits_are_reported_side_by_side_up_to_the_bound() {
    let forge =
        FakeForge::scripted(|_, _| Answer::status(201).after(Duration::from_millis(100))).await;
    let setup = start(StatusSettings {
        parallel: 2,
        ..quick()
    });
    let target = target(ForgeKind::GitLab, &forge, "/api/v4", "15");
    for n in 0..6 {
        setup
            .reporter
            .report(&target, StatusUpdate::new(commit(n), JobStatus::Queued));
    }
    setup.idle().await;
    assert_eq!(forge.requests().len(), 6);
    assert_eq!(forge.max_in_flight(), 2, "in parallel, and no more than 2");
    setup.stop().await;
}

#[tokio::test]
async fn a_redirect_never_carries_the_token_elsewhere() {
    // A forge (or something in front of it) that sends the client on to
    // another server: the token's header must not follow.
    let elsewhere = FakeForge::start().await;
    let location = format!("{}/collect", elsewhere.url);
    let forge =
        FakeForge::scripted(move |_, _| Answer::status(307).with_header("location", &location))
            .await;
    let setup = start(quick());
    for (kind, api_path, repo) in [
        (ForgeKind::GitLab, "/api/v4", "15"),
        (ForgeKind::Gitea, "/api/v1", "o/r"),
        (ForgeKind::GitHub, "", "o/r"),
    ] {
        setup.reporter.report(
            &target(kind, &forge, api_path, repo),
            StatusUpdate::new(commit(4), JobStatus::Passed),
        );
        setup.idle().await;
    }
    assert_eq!(forge.requests().len(), 3);
    assert!(
        elsewhere.requests().is_empty(),
        "nothing reached the other server: {:?}",
        elsewhere.requests()
    );
    assert_eq!(setup.reporter.counts().refused, 3, "a redirect is final");
    setup.stop().await;
}
