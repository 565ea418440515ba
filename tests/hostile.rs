//! Issue 6: hostile input and secrets. Each test feeds real bad input to the
//! real binary against the real broker, and checks both that it was refused
//! with a reason and that the good work around it still completed.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use broker::message::{encode, Job, SCHEMA_VERSION};
use broker::Names;
use common::*;
use futures::StreamExt;

/// A message in the namespace's dead-letter queue.
#[derive(Debug)]
struct DeadLetter {
    /// The queue it was taken from (`x-warren-queue`).
    queue: String,
    /// Why (`x-warren-reason`).
    reason: String,
    /// The publisher's own `x-client` header, if it kept it.
    client: Option<String>,
}

/// Takes `count` dead letters of the namespace, then checks that no more
/// are waiting: call it once every consumer has seen the bad input, so a
/// message dead-lettered twice shows up as one too many.
fn dead_letters(ns: &Namespace, count: usize) -> Vec<DeadLetter> {
    let found = ns.with_broker(async |broker| {
        let queue = broker.names().dead_letter_queue();
        let mut consumer = broker.consume(&queue, 100).await.expect("consume");
        let mut found = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while found.len() < count {
            let next = tokio::time::timeout_at(deadline, consumer.next()).await;
            let Ok(Some(Ok(delivery))) = next else {
                panic!("expected {count} dead letters, got {found:?}");
            };
            found.push(DeadLetter {
                queue: broker::header_string(&delivery, "x-warren-queue").unwrap_or_default(),
                reason: broker::header_string(&delivery, "x-warren-reason").unwrap_or_default(),
                client: broker::header_string(&delivery, "x-client"),
            });
            delivery.ack(Default::default()).await.expect("ack");
        }
        found
    });
    // The connection is closed: deliveries the consumer held unacked are
    // back in the queue, where they would count.
    let (depth, _) = ns.with_broker(async |broker| {
        broker
            .queue_stats(&broker.names().dead_letter_queue())
            .await
            .expect("queue stats")
    });
    assert_eq!(
        depth, 0,
        "more dead letters than the {count} expected (a message dead-lettered twice?): {found:?}"
    );
    found
}

fn env_cap() -> [(&'static str, &'static str); 1] {
    [("WARREN_MAX_MESSAGE_BYTES", "65536")]
}

#[test]
fn malformed_messages_on_every_queue_are_dead_lettered_with_a_reason_and_work_goes_on() {
    let ns = Namespace::new("malformed");
    let scratch = Scratch::new();
    let names = Names::new(ns.name.clone());
    let dispatcher = Dispatcher::start_with_env(&ns, &scratch, &[], &env_cap());
    let runner = runner_with_env(&ns, &scratch, "r1", &["--test-command", "true"], &env_cap());
    wait_for("the runner to consume", Duration::from_secs(30), || {
        dispatcher
            .api()
            .get_json("/api/runners")
            .ok()
            .filter(|r| r.as_array().is_some_and(|a| !a.is_empty()))
    });

    let job = Job::for_commit("/srv/repo", "main", &"a".repeat(40));
    let mut wrong_version = serde_json::to_value(&job).expect("json");
    wrong_version["v"] = serde_json::json!(99);
    let mut missing = serde_json::to_value(&job).expect("json");
    missing.as_object_mut().expect("object").remove("commit");
    let oversized = format!("{{\"v\":1,\"pad\":\"{}\"}}", "x".repeat(70_000)).into_bytes();
    let (jobs, events, results, control) = (
        names.jobs_exchange(),
        names.events_exchange(),
        names.results_exchange(),
        names.control_exchange(),
    );
    publish_raw(
        &ns,
        &[
            (jobs.clone(), String::new(), b"not json at all".to_vec()),
            (jobs.clone(), String::new(), encode(&wrong_version)),
            (jobs.clone(), String::new(), encode(&missing)),
            (jobs.clone(), String::new(), oversized),
            (
                events,
                "event.started".into(),
                b"{\"v\":1,\"type\":\"started\"}".to_vec(),
            ),
            (results, "result.passed".into(), b"[1,2,3]".to_vec()),
            (control, String::new(), b"\xff\xfe garbage".to_vec()),
        ],
    );
    // The runner refuses its copies of the four jobs and of the control
    // message and drops them; the dispatcher dead-letters its copies: the
    // four jobs, the event, the result and the control message, once each.
    wait_for(
        "the runner to refuse its copies",
        Duration::from_secs(30),
        || {
            let log = runner.log_text();
            (log.matches("refused a malformed job").count() == 4
                && log.contains("refused a malformed control message"))
            .then_some(())
        },
    );
    let dead = dead_letters(&ns, 7);
    let mut by_queue: HashMap<String, Vec<String>> = HashMap::new();
    for letter in dead {
        assert!(
            !letter.reason.is_empty(),
            "every dead letter carries a reason"
        );
        assert!(
            !letter.reason.contains("Some(") && !letter.reason.contains("None"),
            "reasons are words, not debug text: {letter:?}"
        );
        assert_eq!(
            letter.client.as_deref(),
            Some(CLIENT_HEADER_VALUE),
            "the publisher's headers are kept: {letter:?}"
        );
        by_queue
            .entry(letter.queue)
            .or_default()
            .push(letter.reason);
    }
    let reasons = |queue: &str| by_queue.get(queue).cloned().unwrap_or_default().join(" | ");
    let jobs_copy = reasons(&names.dispatcher_jobs_queue());
    for expected in [
        "not valid JSON",
        "unknown schema version 99",
        "missing",
        "exceeds the cap",
    ] {
        assert!(jobs_copy.contains(expected), "jobs reasons: {jobs_copy}");
    }
    assert_eq!(
        by_queue.get(&names.dispatcher_jobs_queue()).map(Vec::len),
        Some(4),
        "{by_queue:?}"
    );
    assert!(
        reasons(&names.dispatcher_events_queue()).contains("missing"),
        "{by_queue:?}"
    );
    assert!(
        reasons(&names.dispatcher_results_queue()).contains("schema version"),
        "{by_queue:?}"
    );
    assert_eq!(
        by_queue
            .get(&names.dispatcher_control_queue())
            .map(Vec::len),
        Some(1),
        "the control message: {by_queue:?}"
    );

    // Both consumers keep going: a real commit is tested and recorded.
    let repo = Repo::new(scratch.join("repo"));
    repo.write("a", "1");
    let commit = repo.commit("good work after bad input");
    let _observer = observer(&ns, &scratch, repo.path_str(), &[]);
    let jobs = dispatcher
        .api()
        .wait_terminal(std::slice::from_ref(&commit), Duration::from_secs(60));
    assert_eq!(jobs[&commit][0]["status"], "passed");
}

#[test]
fn option_like_and_shell_like_values_do_nothing_but_fail_cleanly() {
    let ns = Namespace::new("injection");
    let scratch = Scratch::new();
    let pwned = scratch.join("pwned");
    let touch = format!("; touch {}", pwned.display());
    let repo = Repo::new(scratch.join("repo"));
    repo.write("a", "1");
    let commit = repo.commit("good");

    // Flags: refused in one line before anything runs.
    for branch in [
        "--upload-pack=touch /tmp/x".to_string(),
        format!("main{touch}"),
    ] {
        let out = Command::new(WARREN)
            .args([
                "observer",
                "--state",
                scratch.join("s.json").to_str().expect("utf8"),
                &format!("--branch={branch}"),
                repo.path_str(),
            ])
            .env("WARREN_NAMESPACE", &ns.name)
            .output()
            .expect("run");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--branch"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }

    // Messages: option-like and shell-like fields are dead-lettered; a
    // shell-like repository path is only ever a path that does not exist.
    let dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let _runner = runner(&ns, &scratch, "r1", &["--test-command", "true"]);
    let names = Names::new(ns.name.clone());
    let mut bad_commit = Job::for_commit(repo.path_str(), "main", &commit);
    bad_commit.commit = format!("--upload-pack=touch {}", pwned.display());
    let mut bad_branch = Job::for_commit(repo.path_str(), "main", &commit);
    bad_branch.branch = format!("x{touch}");
    let shell_repo = Job::for_commit(&format!("/nonexistent{touch}"), "main", &commit);
    let mut option_repo = Job::for_commit(repo.path_str(), "main", &commit);
    option_repo.repo = "--upload-pack=touch /tmp/x".into();
    publish_raw(
        &ns,
        &[bad_commit, bad_branch, shell_repo.clone(), option_repo]
            .iter()
            .map(|job| (names.jobs_exchange(), String::new(), encode(job)))
            .collect::<Vec<_>>(),
    );
    let jobs = dispatcher
        .api()
        .wait_terminal(std::slice::from_ref(&commit), Duration::from_secs(60));
    let job = &jobs[&commit][0];
    assert_eq!(job["status"], "error", "{job}");
    assert!(
        job["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot be reached"),
        "{job}"
    );
    assert_eq!(job["id"], shell_repo.id.as_str());
    let dead = dead_letters(&ns, 3);
    let reasons: Vec<&str> = dead.iter().map(|letter| letter.reason.as_str()).collect();
    for field in ["commit", "branch", "repo"] {
        assert!(
            reasons
                .iter()
                .any(|r| r.contains(&format!("invalid field {field}"))),
            "{reasons:?}"
        );
    }
    assert!(!pwned.exists(), "nothing was executed");
    let _ = SCHEMA_VERSION;
}

#[test]
fn the_test_process_gets_no_secret_and_no_warren_variable() {
    let ns = Namespace::new("scrub");
    let scratch = Scratch::new();
    let repo = Repo::new(scratch.join("repo"));
    repo.write(".warren-test", "env");
    let commit = repo.commit("print the environment");
    let dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let _runner = runner_with_env(
        &ns,
        &scratch,
        "r1",
        &[],
        &[
            (
                "WARREN_AMQP_URL",
                "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10",
            ),
            ("WARREN_API_TOKEN", "token-SECRET-1"),
            ("WARREN_WEBHOOK_SECRET", "hook-SECRET-2"),
            (
                "WARREN_MANAGEMENT_URL",
                "http://guest:mgmt-SECRET-3@127.0.0.1:15672",
            ),
        ],
    );
    let _observer = observer(&ns, &scratch, repo.path_str(), &[]);
    let jobs = dispatcher
        .api()
        .wait_terminal(std::slice::from_ref(&commit), Duration::from_secs(60));
    let log = dispatcher
        .api()
        .log(jobs[&commit][0]["id"].as_str().expect("id"));
    assert!(
        log.contains("CI=true") && log.contains(&format!("CI_COMMIT={commit}")),
        "{log}"
    );
    for secret in ["SECRET", "amqp://", "WARREN_", "guest"] {
        assert!(
            !log.contains(secret),
            "{secret} leaked into the test: {log}"
        );
    }
}

#[test]
fn daemons_floods_and_hangs_leave_the_runner_healthy_and_nothing_running() {
    let ns = Namespace::new("abuse");
    let scratch = Scratch::new();
    let repo = Repo::new(scratch.join("repo"));
    let tag = std::process::id() % 1000;
    let dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let _runner = runner(&ns, &scratch, "r1", &["--job-timeout", "8"]);
    let _observer = observer(&ns, &scratch, repo.path_str(), &[]);
    let api = dispatcher.api();
    let run = |script: &str, message: &str| {
        repo.write(".warren-test", script);
        let commit = repo.commit(message);
        let jobs = api.wait_terminal(std::slice::from_ref(&commit), Duration::from_secs(90));
        jobs[&commit][0].clone()
    };

    let daemon = run(
        &format!("setsid sleep 9{tag}1 & (sleep 9{tag}2 &); echo started"),
        "daemons",
    );
    assert_eq!(daemon["status"], "passed", "{daemon}");
    wait_for(
        "the test's daemons to be killed",
        Duration::from_secs(10),
        || {
            (processes_starting_with(&format!("sleep 9{tag}1")).is_empty()
                && processes_starting_with(&format!("sleep 9{tag}2")).is_empty())
            .then_some(())
        },
    );

    let flood = run(
        "head -c 1073741824 /dev/zero; echo done",
        "a gigabyte of output",
    );
    assert_eq!(flood["status"], "passed", "{flood}");
    assert_eq!(flood["truncated"], true, "{flood}");
    let log = api.log(flood["id"].as_str().expect("id"));
    assert!(
        log.len() < 2 * 1024 * 1024,
        "the log is capped: {} bytes",
        log.len()
    );

    let hang = run(&format!("sleep 9{tag}3"), "never ends");
    assert_eq!(hang["status"], "timeout", "{hang}");
    assert!(processes_starting_with(&format!("sleep 9{tag}3")).is_empty());

    let fine = run("echo healthy", "after all that");
    assert_eq!(fine["status"], "passed", "{fine}");
}

#[test]
fn a_broken_clone_is_thrown_away_and_cloned_again() {
    let ns = Namespace::new("broken-clone");
    let scratch = Scratch::new();
    let repo = Repo::new(scratch.join("repo"));
    repo.write("a", "1");
    let first = repo.commit("first");
    let dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let runner = runner(&ns, &scratch, "r1", &["--test-command", "cat a"]);
    let _observer = observer(&ns, &scratch, repo.path_str(), &[]);
    dispatcher
        .api()
        .wait_terminal(std::slice::from_ref(&first), Duration::from_secs(60));

    // Break the runner's clone: a HEAD git cannot read, and junk objects.
    let repos = scratch.join("r1-work/repos");
    let clone = std::fs::read_dir(&repos)
        .expect("repos")
        .flatten()
        .next()
        .expect("a clone")
        .path();
    std::fs::write(clone.join(".git/HEAD"), "garbage\n").expect("break HEAD");
    repo.write("a", "2");
    let second = repo.commit("second");
    let jobs = dispatcher
        .api()
        .wait_terminal(std::slice::from_ref(&second), Duration::from_secs(60));
    assert_eq!(jobs[&second][0]["status"], "passed", "{}", jobs[&second][0]);
    assert!(
        runner
            .log_text()
            .contains("workspace broken; cloning again"),
        "{}",
        runner.log_text()
    );
}

#[test]
fn secrets_stay_out_of_logs_errors_and_help() {
    let ns = Namespace::new("secrets");
    let scratch = Scratch::new();
    // An unreachable broker: retried with backoff and said so, password hidden.
    let mut unreachable = Proc::spawn(
        "runner",
        &ns,
        &scratch,
        &[
            "runner",
            "--workdir",
            scratch.join("w").to_str().expect("utf8"),
        ],
        &[(
            "WARREN_AMQP_URL",
            "amqp://guest:hunter2-SECRET@127.0.0.1:1/%2f",
        )],
    );
    wait_for("two retry warnings", Duration::from_secs(20), || {
        (unreachable.log_text().matches("retrying").count() >= 2).then_some(())
    });
    unreachable.signal(libc::SIGTERM);
    assert!(
        unreachable.wait_exit(Duration::from_secs(10)).success(),
        "stops cleanly while retrying"
    );
    let log = unreachable.log_text();
    assert!(log.contains("guest:***@127.0.0.1:1"), "{log}");
    assert!(
        !log.contains("hunter2") && !log.contains("panicked"),
        "{log}"
    );

    for sub in ["runner", "dispatcher", "observer"] {
        let out = Command::new(WARREN)
            .args([sub, "--help"])
            .env("WARREN_AMQP_URL", "amqp://u:amqp-SECRET@h/")
            .env("WARREN_MANAGEMENT_URL", "http://u:mgmt-SECRET@h")
            .output()
            .expect("help");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("--amqp-url")
                && !help.contains("amqp-SECRET")
                && !help.contains("mgmt-SECRET")
                && !help.contains("guest:guest"),
            "{help}"
        );
    }

    // The API shows the management UI's address without its user or
    // password (anyone may read /api/queue).
    let dispatcher = Dispatcher::start_with_env(
        &ns,
        &scratch,
        &[],
        &[(
            "WARREN_MANAGEMENT_URL",
            "http://guest:guest@127.0.0.1:15672",
        )],
    );
    let queue = wait_for("queue stats", Duration::from_secs(30), || {
        dispatcher.api().get_json("/api/queue").ok()
    });
    assert_eq!(queue["management_ui"], "http://127.0.0.1:15672/", "{queue}");
}

#[test]
fn bad_configuration_is_one_clear_line_and_changes_nothing() {
    let ns = Namespace::new("config");
    let scratch = Scratch::new();
    let repo = Repo::new(scratch.join("repo"));
    repo.write("a", "1");
    repo.commit("one");
    let run = |args: &[&str]| {
        let out = Command::new(WARREN)
            .args(args)
            .env("WARREN_NAMESPACE", &ns.name)
            .output()
            .expect("run");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let corrupt = scratch.join("corrupt.json");
    std::fs::write(
        &corrupt,
        "{\"version\":1,\"branches\":{\"main\":\"not-a-commit\"}}",
    )
    .expect("write");
    let (code, err) = run(&[
        "observer",
        "--state",
        corrupt.to_str().expect("utf8"),
        repo.path_str(),
    ]);
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("corrupt") && err.contains("corrupt.json"),
        "{err}"
    );
    assert!(
        std::fs::read_to_string(&corrupt)
            .expect("read")
            .contains("not-a-commit"),
        "not reset"
    );

    let unreadable = scratch.join("a-directory");
    std::fs::create_dir_all(&unreadable).expect("mkdir");
    let (code, err) = run(&[
        "observer",
        "--state",
        unreadable.to_str().expect("utf8"),
        repo.path_str(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot read the state file"), "{err}");

    let (code, err) = run(&["runner", "--job-timeout", "soon"]);
    assert_eq!(code, 2);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("--job-timeout") && err.contains("seconds"),
        "{err}"
    );

    let (code, err) = run(&["observer", "/no/such/repository"]);
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("/no/such/repository"), "{err}");
}
