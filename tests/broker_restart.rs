//! Issue 3, cases 3 and 9, on private RabbitMQ nodes (tests/common/rabbit.rs)
//! so that stopping the broker disturbs no other test: the whole broker is
//! stopped and started again while a test runs and commits keep arriving,
//! and the broker's consumer timeout closes a long job's channel.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::rabbit::{private_namespace, PrivateNode};
use common::*;
use serde_json::Value;

/// A bare repository to watch and a staging clone to push commits from;
/// the first commit holds `files`.
fn origin_and_staging(scratch: &Scratch, files: &[(&str, &str)]) -> (Repo, Repo) {
    let bare = scratch.join("origin.git");
    std::fs::create_dir_all(&bare).expect("mkdir");
    git(&bare, &["init", "-q", "--bare", "-b", "main"]);
    let staging = Repo::new(scratch.join("staging"));
    staging.write("value.txt", "value=0\n");
    for (file, content) in files {
        staging.write(file, content);
    }
    staging.commit("initial");
    git(
        &staging.path,
        &["push", "-q", bare.to_str().expect("utf8"), "HEAD:main"],
    );
    (Repo { path: bare }, staging)
}

fn push_commits(origin: &Repo, staging: &Repo, range: std::ops::Range<usize>) -> Vec<String> {
    let commits = range
        .map(|i| {
            staging.write("value.txt", &format!("value={i}\n"));
            staging.commit(&format!("commit {i}"))
        })
        .collect();
    git(
        &staging.path,
        &["push", "-q", origin.path_str(), "HEAD:main"],
    );
    commits
}

fn head(repo: &Repo) -> String {
    git(&repo.path, &["rev-parse", "HEAD"])
}

/// Waits until the job for `commit` is running and returns (job id, runner id).
fn wait_running(api: &Api, commit: &str) -> (String, String) {
    wait_for(
        &format!("{commit} to be running"),
        Duration::from_secs(60),
        || {
            let jobs = api.jobs_by_commit();
            let job = jobs.get(commit)?.first()?.clone();
            (job["status"] == "running").then(|| {
                (
                    job["id"].as_str().unwrap_or_default().to_string(),
                    job["runner"].as_str().unwrap_or_default().to_string(),
                )
            })
        },
    )
}

fn one_job(jobs: &HashMap<String, Vec<Value>>, commit: &str) -> Value {
    let for_commit = &jobs[commit];
    assert_eq!(
        for_commit.len(),
        1,
        "exactly one job for {commit}: {for_commit:?}"
    );
    for_commit[0].clone()
}

fn wait_log(proc: &Proc, what: &str, within: Duration) {
    wait_for(&format!("{} to log {what:?}", proc.name), within, || {
        proc.log_text().contains(what).then_some(())
    });
}

fn assert_alive(procs: &mut [&mut Proc]) {
    for proc in procs.iter_mut() {
        let status = proc.child.as_mut().map(|c| c.try_wait().expect("try_wait"));
        assert!(
            matches!(status, Some(None)),
            "{} exited ({status:?}); its log:\n{}",
            proc.name,
            proc.log_text()
        );
    }
}

fn shell_path(path: &Path) -> String {
    let path = path.to_str().expect("utf8");
    assert!(
        !path.contains('\''),
        "a path usable in a shell command: {path}"
    );
    format!("'{path}'")
}

#[test]
fn a_broker_restart_mid_test_loses_nothing_and_every_component_reconnects_by_itself() {
    let mut node = PrivateNode::start("");
    let ns = private_namespace("broker-restart");
    let scratch = Scratch::new();
    let url = node.amqp_url();
    let amqp = ["--amqp-url", url.as_str()];

    // The first commit's test command runs until this test opens the gate,
    // so the broker is away for certain while it runs and when it ends.
    // Should the job run a second time after the restart (on the other
    // runner, before the first one has delivered its result), that run
    // waits until it is cut short: the first run's result is the one
    // recorded.
    let gate = scratch.join("gate");
    let first_run = scratch.join("first-run-done");
    let gated_test = format!(
        "while [ ! -e {gate} ]; do sleep 0.1; done\n\
         if [ -e {done} ]; then sleep 60; fi\n\
         touch {done}\n\
         cat value.txt\n",
        gate = shell_path(&gate),
        done = shell_path(&first_run),
    );
    let (origin, staging) = origin_and_staging(&scratch, &[(".warren-test", &gated_test)]);
    let mut dispatcher = Dispatcher::start(
        &ns,
        &scratch,
        &[
            "--amqp-url",
            &url,
            "--management-url",
            &node.management_url(),
        ],
    );
    let api = dispatcher.api();
    let runner_args = [amqp[0], amqp[1], "--test-command", "cat value.txt"];
    let mut r1 = runner(&ns, &scratch, "r1", &runner_args);
    let mut r2 = runner(&ns, &scratch, "r2", &runner_args);
    let mut obs = observer(&ns, &scratch, origin.path_str(), &amqp);

    let gated = head(&staging);
    let (_, holder) = wait_running(&api, &gated);
    let (holder_proc, other_proc) = if holder == "r1" {
        (&r1, &r2)
    } else {
        (&r2, &r1)
    };

    // The whole broker stops while the test runs.
    node.stop();
    // Commits arrive during the outage (with a plain test from now on).
    staging.write(".warren-test", "cat value.txt\n");
    let mut during = push_commits(&origin, &staging, 1..4);
    // The test ends while the broker is away: the runner keeps the result.
    std::fs::write(&gate, "").expect("open the gate");
    wait_for("the test to end", Duration::from_secs(30), || {
        first_run.exists().then_some(())
    });
    wait_log(holder_proc, "lost the broker", Duration::from_secs(30));
    assert!(
        !holder_proc.log_text().contains("job finished"),
        "the result could not have been delivered: {}",
        holder_proc.log_text()
    );

    node.restart();
    let after = push_commits(&origin, &staging, 4..6);

    let mut commits = vec![gated.clone()];
    commits.append(&mut during);
    commits.extend(after);
    let jobs = api.wait_terminal(&commits, Duration::from_secs(60));
    for commit in &commits {
        let job = one_job(&jobs, commit);
        assert_eq!(job["status"], "passed", "{job}");
        assert_eq!(job["duplicates"], 0, "{job}");
        if *commit != gated {
            assert_eq!(job["attempts"], 1, "{job}");
        }
    }
    assert_eq!(
        api.jobs().len(),
        commits.len(),
        "every commit published once"
    );

    // The gated job's outcome is the first run's, delivered after the
    // runner reconnected; a rerun elsewhere, if any, was cut short.
    let job = one_job(&jobs, &gated);
    assert_eq!(job["runner"], holder.as_str(), "{job}");
    assert!(
        api.log(job["id"].as_str().unwrap_or_default())
            .contains("value=0"),
        "{job}"
    );
    wait_log(
        holder_proc,
        "delivered a result kept while the broker was away",
        Duration::from_secs(10),
    );
    let attempts = job["attempts"].as_i64().unwrap_or_default();
    if attempts == 2 {
        wait_log(other_proc, "told to stop the job", Duration::from_secs(30));
    } else {
        assert_eq!(attempts, 1, "{job}");
    }

    // Nobody was restarted by hand: every process reconnected by itself.
    for proc in [&dispatcher.proc, &r1, &r2, &obs] {
        let log = proc.log_text();
        assert!(
            log.contains("reconnecting") || log.contains("retrying"),
            "{} noticed the outage: {log}",
            proc.name
        );
    }
    assert_alive(&mut [&mut dispatcher.proc, &mut r1, &mut r2, &mut obs]);
}

/// RabbitMQ closes the channel of a consumer that holds an unacked message
/// longer than `consumer_timeout`, and requeues the message. It checks on
/// every channel tick: `channel_tick_interval`, 60 s by default, an
/// advanced.config setting in 3.10. A 3 s timeout checked every 0.5 s makes
/// the fault happen within seconds.
const CONSUMER_TIMEOUT_MS: u64 = 3000;
/// What the broker logs when it closes such a channel.
const BROKER_CLOSED_A_CHANNEL: &str = "timed out waiting for delivery acknowledgement";

fn consumer_timeout_node() -> PrivateNode {
    PrivateNode::start_with_advanced(
        &format!("consumer_timeout = {CONSUMER_TIMEOUT_MS}"),
        "[{rabbit, [{channel_tick_interval, 500}]}].",
    )
}

/// Messages ready and unacknowledged in a queue of the node.
fn queue_depth(node: &PrivateNode, queue: &str) -> Option<(u64, u64)> {
    let out = node.ctl(&[
        "-q",
        "list_queues",
        "--no-table-headers",
        "name",
        "messages_ready",
        "messages_unacknowledged",
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields[..] {
                [name, ready, unacked] if name == queue => {
                    Some((ready.parse().ok()?, unacked.parse().ok()?))
                }
                _ => None,
            }
        })
}

/// How many times a runner's log says it started `job_id`.
fn runs_of(proc: &Proc, job_id: &str) -> usize {
    proc.log_text()
        .lines()
        .filter(|l| l.contains("job running") && l.contains(&format!("job={job_id}")))
        .count()
}

#[test]
fn a_job_longer_than_the_brokers_consumer_timeout_is_neither_killed_nor_rerun() {
    let node = consumer_timeout_node();
    let ns = private_namespace("consumer-timeout");
    let scratch = Scratch::new();
    let url = node.amqp_url();
    let amqp = ["--amqp-url", url.as_str()];
    let (origin, staging) = origin_and_staging(&scratch, &[]);
    let dispatcher = Dispatcher::start(
        &ns,
        &scratch,
        &[
            "--amqp-url",
            &url,
            "--management-url",
            &node.management_url(),
        ],
    );
    let api = dispatcher.api();
    let _observer = observer(&ns, &scratch, origin.path_str(), &amqp);

    // The rule Warren relies on (README): with the job timeout below the
    // consumer timeout, a hanging test ends as `timeout` and its job is
    // acked before the broker acts.
    let mut bounded = runner(
        &ns,
        &scratch,
        "bounded",
        &[
            amqp[0],
            amqp[1],
            "--job-timeout",
            "1",
            "--test-command",
            "sleep 30",
        ],
    );
    let first = head(&staging);
    let jobs = api.wait_terminal(std::slice::from_ref(&first), Duration::from_secs(60));
    let job = one_job(&jobs, &first);
    assert_eq!(job["status"], "timeout", "{job}");
    assert_eq!(job["attempts"], 1, "{job}");
    wait_log(&bounded, "job finished", Duration::from_secs(10));
    bounded.signal(libc::SIGTERM);
    assert!(bounded.wait_exit(Duration::from_secs(20)).success());
    assert!(
        !bounded.log_text().contains("lost the broker"),
        "{}",
        bounded.log_text()
    );
    assert!(
        !node.log_text().contains(BROKER_CLOSED_A_CHANNEL),
        "the broker closed no channel"
    );

    // Past the rule: the test outlives the consumer timeout, and the broker
    // closes the runner's channel mid-test and requeues the job. The test is
    // not killed; its result is delivered (on the publishing channel), and
    // the requeued job is acked without running it again.
    let long = runner(
        &ns,
        &scratch,
        "long",
        &[
            amqp[0],
            amqp[1],
            "--job-timeout",
            "60",
            "--test-command",
            "sleep 6; cat value.txt",
        ],
    );
    let second = push_commits(&origin, &staging, 1..2);
    let jobs = api.wait_terminal(&second, Duration::from_secs(60));
    let job = one_job(&jobs, &second[0]);
    assert!(
        node.log_text().contains(BROKER_CLOSED_A_CHANNEL),
        "the broker closed the runner's channel mid-test: {}",
        long.log_text()
    );
    assert_eq!(job["status"], "passed", "{job}");
    assert_eq!(job["attempts"], 1, "{job}");
    assert_eq!(job["duplicates"], 0, "{job}");
    assert_eq!(job["runner"], "long", "{job}");
    let job_id = job["id"].as_str().unwrap_or_default().to_string();
    wait_log(
        &long,
        "result already delivered; acking the redelivered job without running it",
        Duration::from_secs(30),
    );
    assert_eq!(runs_of(&long, &job_id), 1, "{}", long.log_text());
    let work_queue = format!("{}.jobs", ns.name);
    wait_for(
        "the work queue to be empty (the requeued job acked)",
        Duration::from_secs(30),
        || (queue_depth(&node, &work_queue) == Some((0, 0))).then_some(()),
    );

    // The runner goes on taking jobs.
    staging.write(".warren-test", "cat value.txt\n");
    let third = push_commits(&origin, &staging, 2..3);
    let jobs = api.wait_terminal(&third, Duration::from_secs(60));
    let job = one_job(&jobs, &third[0]);
    assert_eq!(job["status"], "passed", "{job}");
    assert_eq!(job["runner"], "long", "{job}");
}

/// A job that outlives the consumer timeout on every runner that takes it:
/// each runner's channel is closed in turn and the job requeued to the next
/// one, until the delivery limit (1 here: dead-lettered the first time it
/// comes back) ends it. Every run ends by itself, none is repeated.
#[test]
fn a_job_that_outlives_the_consumer_timeout_on_every_runner_is_bounded_by_the_delivery_limit() {
    let node = consumer_timeout_node();
    let ns = private_namespace("bouncing");
    let scratch = Scratch::new();
    let url = node.amqp_url();
    let common = ["--amqp-url", url.as_str(), "--delivery-limit", "1"];
    let (origin, staging) =
        origin_and_staging(&scratch, &[(".warren-test", "sleep 9; cat value.txt\n")]);
    let mgmt = node.management_url();
    let mut dispatcher_args = common.to_vec();
    dispatcher_args.extend(["--management-url", &mgmt]);
    let dispatcher = Dispatcher::start(&ns, &scratch, &dispatcher_args);
    let api = dispatcher.api();
    let runners: Vec<Proc> = ["r1", "r2", "r3"]
        .iter()
        .map(|id| runner(&ns, &scratch, id, &common))
        .collect();
    let _observer = observer(&ns, &scratch, origin.path_str(), &common);

    let commit = head(&staging);
    let jobs = api.wait_terminal(std::slice::from_ref(&commit), Duration::from_secs(60));
    let job_id = one_job(&jobs, &commit)["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    wait_for("every run to end", Duration::from_secs(60), || {
        let started: usize = runners.iter().map(|r| runs_of(r, &job_id)).sum();
        // A run ends with its result, or cut short once the job has its
        // outcome (here: the dead letter's `error`).
        let ended: usize = runners
            .iter()
            .map(|r| {
                let log = r.log_text();
                log.matches("job finished").count() + log.matches("stopped: its result").count()
            })
            .sum();
        (ended >= started).then_some(())
    });
    let job = one_job(&api.jobs_by_commit(), &commit);
    eprintln!(
        "a job longer than the consumer timeout, 3 runners, delivery limit 1: \
         {} ({}), {} runs, {} duplicate results",
        job["status"], job["reason"], job["attempts"], job["duplicates"]
    );
    // The broker writes its log a little after it acts.
    wait_for(
        "the broker to log the closed channel",
        Duration::from_secs(10),
        || {
            node.log_text()
                .contains(BROKER_CLOSED_A_CHANNEL)
                .then_some(())
        },
    );
    assert!(is_terminal(&job), "{job}");
    assert_eq!(job["attempts"], 1, "exactly --delivery-limit runs: {job}");
    for runner in &runners {
        assert!(
            runs_of(runner, &job_id) <= 1,
            "{} ran the job once at most: {}",
            runner.name,
            runner.log_text()
        );
    }

    // The runners go on taking jobs.
    staging.write(".warren-test", "cat value.txt\n");
    let next = push_commits(&origin, &staging, 1..2);
    let jobs = api.wait_terminal(&next, Duration::from_secs(60));
    assert_eq!(one_job(&jobs, &next[0])["status"], "passed");
}
