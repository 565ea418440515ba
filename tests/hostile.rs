//! Issues 6 and 12: hostile input, hostile tests and secrets. Each test
//! feeds real bad input (or a test that attacks its runner) to the real
//! binary against the real broker, and checks both that it was refused or
//! contained and that the good work around it still completed; attacks are
//! tried next to a control in which the same probe succeeds.

mod common;

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use broker::message::encode;
use broker::Names;
use common::*;
use futures::StreamExt;
use model::{Job, SCHEMA_VERSION};

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
                queue: delivery.header("x-warren-queue").unwrap_or_default(),
                reason: delivery.header("x-warren-reason").unwrap_or_default(),
                client: delivery.header("x-client"),
            });
            delivery.ack().await.expect("ack");
        }
        found
    });
    // The connection is closed: deliveries the consumer held unacked are
    // back in the queue, where they would count.
    let depth = ns.with_broker(async |broker| {
        broker
            .queue_stats(&broker.names().dead_letter_queue())
            .await
            .expect("queue stats")
            .ready
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

    let job = Job::try_new("/srv/repo", "main", &"a".repeat(40)).expect("a valid job");
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
    // The model's types cannot hold such values: the bad ones are edited
    // into the JSON of a good job.
    let good =
        serde_json::to_value(Job::try_new(repo.path_str(), "main", &commit).expect("a valid job"))
            .expect("json");
    let with = |field: &str, value: String| {
        let mut job = good.clone();
        job[field] = serde_json::Value::String(value);
        job
    };
    let bad_commit = with("commit", format!("--upload-pack=touch {}", pwned.display()));
    let bad_branch = with("branch", format!("x{touch}"));
    let option_repo = with("repo", "--upload-pack=touch /tmp/x".into());
    let shell_repo =
        Job::try_new(&format!("/nonexistent{touch}"), "main", &commit).expect("a valid job");
    publish_raw(
        &ns,
        &[bad_commit, bad_branch, option_repo]
            .iter()
            .map(|job| (names.jobs_exchange(), String::new(), encode(job)))
            .chain(std::iter::once((
                names.jobs_exchange(),
                String::new(),
                encode(&shell_repo),
            )))
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
        &["--sandbox", "bwrap"],
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
    // In the sandbox: it needs no host path, and the sandbox must keep
    // all of this working.
    let _runner = runner(
        &ns,
        &scratch,
        "r1",
        &["--job-timeout", "8", "--sandbox", "bwrap"],
    );
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
fn secrets_given_as_files_are_read_and_conflicts_are_one_line() {
    let ns = Namespace::new("secret-files");
    let scratch = Scratch::new();
    let file = |name: &str, content: &str| {
        let path = scratch.join(name);
        std::fs::write(&path, content).expect("secret file");
        path.to_string_lossy().into_owned()
    };
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(WARREN)
            .args(args)
            .env("WARREN_NAMESPACE", &ns.name)
            .envs(env.iter().copied())
            .output()
            .expect("run");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let url_file = file("amqp-url", "amqp://guest:file-SECRET@127.0.0.1:1/%2f\n");
    let workdir = scratch.join("w");
    let runner = ["runner", "--workdir", workdir.to_str().expect("utf8")];

    // Both the variable and its file: one line naming both, no value.
    let (code, err) = run(
        &runner,
        &[
            ("WARREN_AMQP_URL", "amqp://guest:env-SECRET@127.0.0.1:1/%2f"),
            ("WARREN_AMQP_URL_FILE", &url_file),
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("WARREN_AMQP_URL and WARREN_AMQP_URL_FILE"),
        "{err}"
    );
    assert!(!err.contains("SECRET"), "{err}");
    // A file that cannot be read, and an empty one: the variable and the
    // path, in one line.
    let folder = scratch.path().to_string_lossy().into_owned();
    let empty = file("empty", "\n");
    for (path, expected) in [
        (folder.as_str(), "cannot read"),
        (empty.as_str(), "is empty"),
    ] {
        let (code, err) = run(&runner, &[("WARREN_AMQP_URL_FILE", path)]);
        assert_eq!(code, 2, "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains("WARREN_AMQP_URL_FILE") && err.contains(path) && err.contains(expected),
            "{err}"
        );
    }

    // The file's value is used (the newline trimmed); an explicit flag
    // wins over both the variable and the file.
    for (name, args, port) in [
        ("from-file", vec![], ":1/"),
        (
            "flag-wins",
            vec!["--amqp-url", "amqp://guest:flag@127.0.0.1:9/%2f"],
            ":9/",
        ),
    ] {
        let mut full: Vec<&str> = runner.to_vec();
        full.extend(args.iter().copied());
        let env: Vec<(&str, &str)> = if args.is_empty() {
            vec![("WARREN_AMQP_URL_FILE", &url_file)]
        } else {
            vec![
                ("WARREN_AMQP_URL", "amqp://guest:env@127.0.0.1:1/%2f"),
                ("WARREN_AMQP_URL_FILE", &url_file),
            ]
        };
        let mut proc = Proc::spawn(name, &ns, &scratch, &full, &env);
        wait_for("a connection attempt", Duration::from_secs(20), || {
            proc.log_text().contains("retrying").then_some(())
        });
        proc.signal(libc::SIGTERM);
        proc.wait_exit(Duration::from_secs(10));
        let log = proc.log_text();
        assert!(log.contains(&format!("127.0.0.1{port}")), "{name}: {log}");
        if !args.is_empty() {
            assert!(!log.contains("127.0.0.1:1/"), "{name}: {log}");
        }
        assert!(!log.contains("SECRET"), "{name}: {log}");
    }

    // The dispatcher's token from a file guards the API, and the client
    // reads the same file.
    let token = file("token", "token-from-file\n");
    let dispatcher = Dispatcher::start_with_env(
        &ns,
        &scratch,
        &[],
        &[
            ("WARREN_API_TOKEN_FILE", &token),
            (
                "WARREN_MANAGEMENT_URL_FILE",
                &file("management-url", "http://guest:guest@127.0.0.1:15672\n"),
            ),
        ],
    );
    let rerun =
        |env: &[(&str, &str)]| run(&["rerun", "--server", &dispatcher.url, "nosuchjob"], env).1;
    assert!(rerun(&[]).contains("401"), "no token: refused");
    let with_token = rerun(&[("WARREN_API_TOKEN_FILE", &token)]);
    assert!(
        with_token.contains("404") && !with_token.contains("401"),
        "the token from the file is accepted: {with_token}"
    );
    let missing = rerun(&[("WARREN_API_TOKEN_FILE", "/nonexistent/token")]);
    assert!(
        missing.contains("WARREN_API_TOKEN_FILE") && missing.contains("/nonexistent/token"),
        "{missing}"
    );
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

/// Waits until `api` shows a runner, so the topology exists before jobs
/// are published by hand.
fn wait_for_a_runner(api: &Api) {
    wait_for("a runner to consume", Duration::from_secs(30), || {
        api.get_json("/api/runners")
            .ok()
            .filter(|r| r.as_array().is_some_and(|a| !a.is_empty()))
    });
}

/// Publishes a job for `commit` of `repo` and waits for its outcome.
fn run_job(ns: &Namespace, api: &Api, repo: &Repo, commit: &str) -> serde_json::Value {
    let job = Job::try_new(repo.path_str(), "main", commit).expect("a valid job");
    let names = Names::new(ns.name.clone());
    publish_raw(ns, &[(names.jobs_exchange(), String::new(), encode(&job))]);
    let jobs = api.wait_terminal(&[commit.to_string()], Duration::from_secs(60));
    one_job(&jobs, commit)
}

/// The hostile test of issue 12: from its checkout it plants hooks, config
/// that runs commands or redirects git, a filter, and branch and replace
/// refs that swap a later commit for an earlier one, in its own clone, in
/// the other repository's clone beside it and in a control clone; and in
/// its home, a global config and an attributes file that re-encodes the
/// file `note`. Argument `$1`: the control clone; `$2` its marker file.
fn planting_script(marker: &Path, swaps: &[(&str, &str)]) -> String {
    let swaps: String = swaps
        .iter()
        .map(|(from, to)| {
            format!(
                "  if git -C \"$1\" cat-file -e {from}^{{commit}} 2>/dev/null; then\n\
                 \x20   git -C \"$1\" update-ref refs/heads/{from} {to}\n\
                 \x20   git -C \"$1\" update-ref refs/replace/{from} {to}\n\
                 \x20 fi\n"
            )
        })
        .collect();
    format!(
        r#"set -e
plant() {{
  g="$1/.git"
{swaps}  mkdir -p "$g/hooks"
  for h in post-checkout reference-transaction post-index-change; do
    printf '#!/bin/sh\necho %s >> "%s"\nprintf "exit 0\\n" > .warren-test\n' "$h" "$2" > "$g/hooks/$h"
    chmod +x "$g/hooks/$h"
  done
  printf '[core]\n\tfsmonitor = "echo include >> %s; false"\n' "$2" > "$1.evil.cfg"
  git -C "$1" config include.path "$1.evil.cfg"
  git -C "$1" config core.fsmonitor "echo fsmonitor >> '$2'; false"
  git -C "$1" config url./nonexistent/evil.insteadOf /
  git -C "$1" config filter.evil.smudge "echo filter >> '$2'; printf 'exit 0\\n'"
  echo '.warren-test filter=evil' > "$g/info/attributes"
  git -C "$1" config core.sshCommand "echo ssh >> '$2'"
  git -C "$1" config credential.helper "!echo credential >> '$2'"
  git -C "$1" config diff.external "echo diff >> '$2'"
  git -C "$1" config protocol.allow always
}}
# The user's own git files, which every git of this user reads.
mkdir -p "$HOME/.config/git"
echo 'note working-tree-encoding=UTF-16' > "$HOME/.config/git/attributes"
git config --global core.fsmonitor "echo global >> '{marker}'; false"
# Every clone beside this checkout (this one included), then the control.
for clone in "$PWD"/../*/; do
  [ -d "$clone/.git" ] && plant "${{clone%/}}" '{marker}'
done
plant "$1" "$2"
echo planted
"#,
        marker = marker.display()
    )
}

#[test]
fn hooks_and_config_a_test_plants_in_clones_run_nothing_and_change_no_outcome() {
    let ns = Namespace::new("plant");
    let scratch = Scratch::new();
    let marker = scratch.join("planted-code-ran");
    let control_marker = scratch.join("control-planted-code-ran");
    let dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let api = dispatcher.api();
    // The runner's home, which its tests share.
    let home = scratch.join("home");
    std::fs::create_dir_all(&home).expect("home");
    let home = home.to_str().expect("utf8");
    let _runner = runner_with_env(&ns, &scratch, "r1", &[], &[("HOME", home)]);
    wait_for_a_runner(&api);

    // B: a passing commit, then a failing one the plants try to make pass.
    let b = Repo::new(scratch.join("b"));
    b.write("note", "b0");
    b.write(".warren-test", "echo passing-b0");
    let b0 = b.commit("b0 passes");
    b.write("note", "b3");
    b.write(".warren-test", "echo failing-$(cat note); exit 1");
    let b3 = b.commit("b3 fails");
    // A: an innocent commit, then the hostile one, which tries to swap the
    // innocent one's next run for itself.
    let a = Repo::new(scratch.join("a"));
    a.write("note", "a2");
    a.write(".warren-test", "echo fine-$(cat note)");
    let a2 = a.commit("a2");
    let control = scratch.join("control");
    git(
        scratch.path(),
        &["clone", "-q", "--shared", b.path_str(), "control"],
    );
    git(&control, &["checkout", "-q", "--detach", &b0]);
    a.write("note", "a1");
    a.write(
        ".warren-test",
        &format!(
            "sh plant.sh '{}' '{}'",
            control.display(),
            control_marker.display()
        ),
    );
    a.write(
        "plant.sh",
        &planting_script(&marker, &[(&b3, &b0), (&a2, "HEAD")]),
    );
    let a1 = a.commit("a1 plants");

    // B is cloned first, so that the hostile job finds its clone.
    assert_eq!(run_job(&ns, &api, &b, &b0)["status"], "passed");
    let hostile = run_job(&ns, &api, &a, &a1);
    let log = api.log(hostile["id"].as_str().expect("id"));
    assert_eq!(hostile["status"], "passed", "{hostile}\n{log}");
    assert!(log.contains("planted"), "{log}");
    let _ = std::fs::remove_file(&marker); // the plant's own git calls

    // The next jobs on the same runner: A's next commit, B's failing one.
    let innocent = run_job(&ns, &api, &a, &a2);
    let failing = run_job(&ns, &api, &b, &b3);
    let innocent_log = api.log(innocent["id"].as_str().expect("id"));
    let failing_log = api.log(failing["id"].as_str().expect("id"));
    assert!(
        !marker.exists(),
        "planted code ran in the runner's git: {}",
        std::fs::read_to_string(&marker).unwrap_or_default()
    );
    assert_eq!(innocent["status"], "passed", "{innocent}");
    assert!(innocent_log.contains("fine-a2"), "{innocent_log}");
    assert_eq!(failing["status"], "failed", "{failing}\n{failing_log}");
    assert!(failing_log.contains("failing-b3"), "{failing_log}");

    // Each plant is gone from the runner's clones or inert.
    let clones: Vec<_> = std::fs::read_dir(scratch.join("r1-work/repos"))
        .expect("clones")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(clones.len(), 2, "{clones:?}");
    for clone in clones {
        let git_dir = clone.join(".git");
        let config = std::fs::read_to_string(git_dir.join("config")).expect("config");
        for key in [
            "fsmonitor",
            "include",
            "insteadOf",
            "filter",
            "sshCommand",
            "credential",
            "external",
            "protocol",
        ] {
            assert!(!config.contains(key), "{key} survived in {config}");
        }
        assert!(!git_dir.join("hooks").exists());
        assert!(!git_dir.join("info/attributes").exists());
    }

    // The probe works: the same plants fire under plain git (with the same
    // home) and turn B's failing commit into a passing one.
    let _ = std::fs::remove_file(&control_marker);
    let plain = Command::new("git")
        .args(["checkout", "-q", "--force", "--detach", &b3, "--"])
        .current_dir(&control)
        .env("HOME", home)
        .output()
        .expect("plain git");
    assert!(plain.status.success(), "{plain:?}");
    let fired = std::fs::read_to_string(&control_marker).expect("the plants fire under plain git");
    assert!(
        fired.contains("post-checkout") && fired.contains("include"),
        "{fired}"
    );
    assert_eq!(
        std::fs::read_to_string(control.join(".warren-test")).expect("test file"),
        "exit 0\n",
        "under plain git the failing commit's test became a pass"
    );
    // (The swapped checkout wrote no file; the real commit writes `note`.)
    let real_b3 = format!("{b3}^{{commit}}");
    let plain = Command::new("git")
        .args(["checkout", "-q", "--force", "--detach", &real_b3, "--"])
        .current_dir(&control)
        .env("HOME", home)
        .env("GIT_NO_REPLACE_OBJECTS", "1")
        .output()
        .expect("plain git");
    assert!(plain.status.success(), "{plain:?}");
    let note = std::fs::read(control.join("note")).expect("note");
    assert!(
        note.starts_with(&[0xff, 0xfe]),
        "under plain git the home's attributes re-encode files: {note:?}"
    );
}

/// Creates `path` when dropped: the release file the test's processes in
/// the next test wait for, so they end even when an assertion fails.
struct Release(std::path::PathBuf);

impl Drop for Release {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, "");
    }
}

#[test]
fn a_runner_killed_mid_test_takes_its_whole_process_tree_with_it() {
    let ns = Namespace::new("tree");
    let scratch = Scratch::new();
    let release = Release(scratch.join("release"));
    let repo = Repo::new(scratch.join("repo"));
    // A tree with a daemon (setsid, writing a heartbeat), a double-forked
    // process and a plain child: each long-lived process carries the
    // checkout's path (unique per runner) on its command line. All of them
    // wait for the release file, so nothing outlives the test.
    repo.write(
        ".warren-test",
        r#"rel="$PWD/../../../release"
loop='while [ ! -e "$1" ]; do sleep 0.05; [ -n "$2" ] && date +%s%N >> "$2"; done; :'
setsid sh -c "$loop" "$PWD-daemon" "$rel" "$PWD.heartbeat" &
(sh -c "$loop" "$PWD-double-forked" "$rel" &)
sh -c "$loop" "$PWD-child" "$rel" &
while [ ! -e "$rel" ]; do sleep 0.05; done
echo released"#,
    );
    let commit = repo.commit("a tree of processes");
    let dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let mut runners: Vec<Proc> = ["r1", "r2"]
        .iter()
        .map(|id| runner(&ns, &scratch, id, &[]))
        .collect();
    let _observer = observer(&ns, &scratch, repo.path_str(), &[]);
    let api = dispatcher.api();
    let (_, victim) = wait_running(&api, &commit);
    let repos = scratch.join(&format!("{victim}-work/repos"));
    let checkout = wait_for("the victim's checkout", Duration::from_secs(20), || {
        std::fs::read_dir(&repos)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.is_dir())
    });
    let marker = checkout.to_string_lossy().into_owned();
    let heartbeat = checkout.with_extension("heartbeat");
    wait_for("the whole tree to run", Duration::from_secs(20), || {
        (processes_matching(&marker).len() >= 3 && heartbeat.exists()).then_some(())
    });

    take_runner(&mut runners, &victim).kill();
    let killed = std::time::Instant::now();
    wait_for(
        "every process of the killed runner's test to be gone",
        Duration::from_secs(1),
        || processes_matching(&marker).is_empty().then_some(()),
    );
    let size = std::fs::metadata(&heartbeat).expect("heartbeat").len();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        std::fs::metadata(&heartbeat).expect("heartbeat").len(),
        size,
        "the daemon still beats"
    );
    eprintln!("tree gone {:?} after the kill", killed.elapsed());

    // Rerun elsewhere and recorded once.
    drop(release);
    let jobs = api.wait_terminal(std::slice::from_ref(&commit), Duration::from_secs(60));
    let job = one_job(&jobs, &commit);
    assert_eq!(job["status"], "passed", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    assert_ne!(job["runner"], victim.as_str(), "{job}");
}

/// The unprivileged user the /proc test runs its runner as (nobody).
const UNPRIVILEGED: u32 = 65534;

/// A test that goes after its runner's secrets through /proc: for its
/// parent and every ancestor of the same user, it reads `environ`, and
/// `maps` then every readable region of `mem`, looking for the canaries
/// (given reversed, so that the script itself holds neither). One line per
/// process: `probe pid=N comm=C environ=denied|clean|FOUND mem=...`.
fn proc_probe(canaries: &[&str]) -> String {
    let reversed: Vec<String> = canaries
        .iter()
        .map(|c| format!("{:?}", c.chars().rev().collect::<String>()))
        .collect();
    format!(
        r#"import os
canaries = [c[::-1].encode() for c in [{list}]]
me = os.getuid()

def field(pid, name):
    for line in open(f"/proc/{{pid}}/status"):
        if line.startswith(name + ":"):
            return line.split()[1]

def verdict(data):
    return "FOUND" if any(c in data for c in canaries) else "clean"

def environ(pid):
    try:
        return verdict(open(f"/proc/{{pid}}/environ", "rb").read())
    except OSError:
        return "denied"

def memory(pid):
    try:
        maps = open(f"/proc/{{pid}}/maps").read().splitlines()
        mem = open(f"/proc/{{pid}}/mem", "rb", buffering=0)
    except OSError:
        return "denied"
    found = False
    for line in maps:
        span, perms = line.split()[:2]
        if perms[0] != "r":
            continue
        start, end = (int(x, 16) for x in span.split("-"))
        try:
            mem.seek(start)
            found = found or verdict(mem.read(min(end - start, 64 << 20))) == "FOUND"
        except (OSError, ValueError, OverflowError):
            pass
    return "FOUND" if found else "clean"

pid = os.getppid()
while pid > 1 and int(field(pid, "Uid")) == me:
    comm = open(f"/proc/{{pid}}/comm").read().strip()
    print(f"probe pid={{pid}} comm={{comm}} environ={{environ(pid)}} mem={{memory(pid)}}", flush=True)
    pid = int(field(pid, "PPid"))
"#,
        list = reversed.join(", ")
    )
}

/// Gives `path` (and everything under it) to the unprivileged user.
fn give_to_unprivileged(path: &Path) {
    let status = Command::new("chown")
        .args(["-R", &format!("{UNPRIVILEGED}:{UNPRIVILEGED}")])
        .arg(path)
        .status()
        .expect("chown");
    assert!(status.success());
}

#[test]
fn a_test_finds_no_secret_of_its_runner_through_proc() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test starts its runner as another user, which needs root"
    );
    let ns = Namespace::new("proc");
    let scratch = Scratch::new();
    // The runner's user must reach its workdir, the repository and files.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let canary_url = format!("url-canary-{}", std::process::id());
    let canary_env = format!("env-canary-{}", std::process::id());
    let secrets = scratch.join("secrets");
    std::fs::create_dir_all(&secrets).expect("mkdir");
    let url_file = secrets.join("amqp-url");
    std::fs::write(
        &url_file,
        format!("amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10&canary={canary_url}\n"),
    )
    .expect("secret file");
    let repo = Repo::new(scratch.join("repo"));
    let probe = proc_probe(&[&canary_url, &canary_env]);
    repo.write("probe.py", &probe);
    // exec: the probe's parent is then the supervisor, not its own shell.
    repo.write(".warren-test", "exec python3 probe.py");
    let commit = repo.commit("read the runner's secrets");
    let (home, workdir) = (scratch.join("home"), scratch.join("r1-work"));
    for dir in [&home, &workdir] {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    for path in [&repo.path, &home, &workdir, &secrets] {
        give_to_unprivileged(path);
    }

    let dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let api = dispatcher.api();
    let _runner = Proc::spawn_as_user(
        "r1",
        &ns,
        &scratch,
        &[
            "runner",
            "--id",
            "r1",
            "--workdir",
            workdir.to_str().expect("utf8"),
            // This is about non-dumpable processes, the defence without the
            // sandbox: in it, the probe would not see its ancestors at all
            // (tests/sandbox.rs).
            "--sandbox",
            "none",
        ],
        &[
            ("WARREN_AMQP_URL_FILE", url_file.to_str().expect("utf8")),
            // Even a secret left in the environment is out of reach.
            ("WARREN_API_TOKEN", &canary_env),
            ("HOME", home.to_str().expect("utf8")),
            ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ],
        UNPRIVILEGED,
    );
    wait_for_a_runner(&api);
    let job = run_job(&ns, &api, &repo, &commit);
    let log = api.log(job["id"].as_str().expect("id"));
    assert_eq!(job["status"], "passed", "{job}\n{log}");
    let probes: Vec<&str> = log.lines().filter(|l| l.starts_with("probe ")).collect();
    eprintln!("{}", probes.join("\n"));
    for line in &probes {
        assert!(
            line.ends_with("environ=denied mem=denied"),
            "a test could read its runner: {line}"
        );
    }
    assert!(
        probes.len() >= 2 && probes.iter().all(|l| l.contains("comm=warren")),
        "the probe reached the supervisor and the runner: {log}"
    );

    // Control: the same probe, as the same user, under a dumpable parent
    // holding a canary in its environment (and so in its memory) finds it.
    let out = Command::new("sh")
        .args(["-c", "python3 probe.py; true"])
        .current_dir(&repo.path)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("CANARY", &canary_env)
        .uid(UNPRIVILEGED)
        .gid(UNPRIVILEGED)
        .output()
        .expect("control probe");
    let control = String::from_utf8_lossy(&out.stdout);
    assert!(
        control.contains("environ=FOUND mem=FOUND"),
        "the probe must find a dumpable parent's secrets: {control}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
