//! Issue 2: every commit flows from the observer through RabbitMQ to
//! competing runners, and the dispatcher records each result. Real broker,
//! real git, the real binary.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;

const PASSING_AND_FAILING: &str = "import unittest

class Passing(unittest.TestCase):
    def test_that_passes(self):
        self.assertEqual(1 + 1, 2)

class Failing(unittest.TestCase):
    def test_that_fails(self):
        self.assertEqual(1 + 1, 3)
";

#[test]
fn a_failing_unittest_is_recorded_as_failed_with_its_log() {
    let ns = Namespace::new("failing");
    let scratch = Scratch::new();
    let repo = Repo::new(scratch.join("repo"));
    repo.write("tests/test_example.py", PASSING_AND_FAILING);
    let commit = repo.commit("add tests");

    let dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let _runner = runner(&ns, &scratch, "r1", &[]);
    let _observer = observer(&ns, &scratch, repo.path_str(), &[]);

    let jobs = dispatcher
        .api()
        .wait_terminal(std::slice::from_ref(&commit), Duration::from_secs(60));
    let job = &jobs[&commit][0];
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["branch"], "main");
    assert_eq!(job["subject"], "add tests");
    assert_eq!(job["attempts"], 1);
    let log = dispatcher.api().log(job["id"].as_str().expect("id"));
    assert!(log.contains("test_that_fails"), "{log}");
    assert!(log.contains("test_that_passes"), "{log}");
    assert!(log.contains("FAILED (failures=1)"), "{log}");
    let shown = dispatcher
        .api()
        .get_json(&format!("/api/jobs/{}", job["id"].as_str().expect("id")))
        .expect("show");
    assert_eq!(shown["commit"], commit.as_str());
}

/// Pushes `n` commits numbered from `from`; returns (commit, number) pairs.
fn push_numbered_commits(
    origin: &Repo,
    staging: &Repo,
    n: usize,
    from: usize,
) -> Vec<(String, usize)> {
    push_commits(origin, staging, from..from + n)
        .into_iter()
        .zip(from..)
        .collect()
}

#[test]
fn twenty_commits_pushed_at_once_become_twenty_jobs_each_tested_at_its_own_commit() {
    let ns = Namespace::new("twenty");
    let scratch = Scratch::new();
    let (origin, staging) = origin_and_staging(&scratch);
    let initial = git(&staging.path, &["rev-parse", "HEAD"]);

    let dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let _runners: Vec<Proc> = (1..=2)
        .map(|i| {
            runner(
                &ns,
                &scratch,
                &format!("r{i}"),
                &["--test-command", "cat value.txt"],
            )
        })
        .collect();
    let _observer = observer(&ns, &scratch, origin.path_str(), &[]);
    // First start: only the current head is published.
    dispatcher
        .api()
        .wait_terminal(std::slice::from_ref(&initial), Duration::from_secs(60));

    let commits = push_numbered_commits(&origin, &staging, 20, 1);
    let ids: Vec<String> = commits.iter().map(|(c, _)| c.clone()).collect();
    let jobs = dispatcher
        .api()
        .wait_terminal(&ids, Duration::from_secs(120));
    assert_eq!(
        dispatcher.api().jobs().len(),
        21,
        "one job per commit, no more"
    );
    for (commit, number) in &commits {
        let for_commit = &jobs[commit];
        assert_eq!(for_commit.len(), 1, "exactly one job for {commit}");
        let job = &for_commit[0];
        assert_eq!(job["status"], "passed", "{job}");
        let log = dispatcher.api().log(job["id"].as_str().expect("id"));
        assert!(
            log.contains(&format!("value={number}\n")),
            "commit {commit} should show value={number}: {log}"
        );
    }
    // The jobs were queued in commit order, oldest first. (Not their
    // `seq`, the order the dispatcher first saw them: a runner's start
    // of the second job may reach it before its copy of the first.)
    let mut queued_at = vec![jobs_enqueued_at(&dispatcher, &initial)];
    queued_at.extend(ids.iter().map(|id| jobs_enqueued_at(&dispatcher, id)));
    assert!(
        queued_at.windows(2).all(|pair| pair[0] <= pair[1]),
        "queued in commit order: {queued_at:?}"
    );
}

fn jobs_enqueued_at(dispatcher: &Dispatcher, commit: &str) -> i64 {
    let job = dispatcher
        .api()
        .get_json(&format!("/api/jobs/{commit}"))
        .expect("the commit's job");
    job["enqueued_at_ms"]
        .as_i64()
        .unwrap_or_else(|| panic!("enqueued_at_ms of {job}"))
}

#[test]
fn three_runners_share_the_work_and_every_job_is_recorded_once() {
    let ns = Namespace::new("three");
    let scratch = Scratch::new();
    let (origin, staging) = origin_and_staging(&scratch);

    let dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let _runners: Vec<Proc> = (1..=3)
        .map(|i| {
            runner(
                &ns,
                &scratch,
                &format!("r{i}"),
                &["--test-command", "sleep 0.3; cat value.txt"],
            )
        })
        .collect();
    let _observer = observer(&ns, &scratch, origin.path_str(), &[]);
    let commits = push_numbered_commits(&origin, &staging, 12, 1);
    let ids: Vec<String> = commits.iter().map(|(c, _)| c.clone()).collect();
    let jobs = dispatcher
        .api()
        .wait_terminal(&ids, Duration::from_secs(120));
    let mut runners_used = HashSet::new();
    for commit in &ids {
        assert_eq!(jobs[commit].len(), 1, "one job for {commit}");
        let job = &jobs[commit][0];
        assert_eq!(job["status"], "passed");
        assert_eq!(job["attempts"], 1, "{job}");
        assert_eq!(job["duplicates"], 0, "{job}");
        runners_used.insert(job["runner"].as_str().expect("runner").to_string());
    }
    assert!(
        runners_used.len() >= 2,
        "at least two runners did work: {runners_used:?}"
    );
}

#[test]
fn runner_and_dispatcher_started_after_the_observer_published_lose_nothing() {
    let ns = Namespace::new("order");
    let scratch = Scratch::new();
    let (origin, staging) = origin_and_staging(&scratch);
    let initial = git(&staging.path, &["rev-parse", "HEAD"]);
    let _observer = observer(&ns, &scratch, origin.path_str(), &[]);
    let state = scratch.join("observer-state.json");
    wait_for(
        "the observer to publish the head",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&state)
                .ok()
                .filter(|s| s.contains(&initial))
        },
    );
    let commits = push_numbered_commits(&origin, &staging, 5, 1);
    let last = commits.last().expect("commits").0.clone();
    wait_for(
        "the observer to publish every commit",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&state)
                .ok()
                .filter(|s| s.contains(&last))
        },
    );

    // Only now do the runner and the dispatcher start.
    let _runner = runner(&ns, &scratch, "late", &["--test-command", "cat value.txt"]);
    let dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let mut ids = vec![initial];
    ids.extend(commits.iter().map(|(c, _)| c.clone()));
    let jobs = dispatcher
        .api()
        .wait_terminal(&ids, Duration::from_secs(90));
    for id in &ids {
        assert_eq!(jobs[id].len(), 1);
        assert_eq!(jobs[id][0]["status"], "passed");
    }
}

#[test]
fn warren_up_runs_everything_and_stops_everything() {
    let ns = Namespace::new("up");
    let scratch = Scratch::new();
    let repo = Repo::new(scratch.join("repo"));
    repo.write(
        "tests/test_ok.py",
        "import unittest\nclass T(unittest.TestCase):\n    def test_ok(self):\n        pass\n",
    );
    repo.commit("first");
    let mut up = Up::start(&ns, &scratch, repo.path_str(), "2", &[], &[]);
    let api = up.api();
    wait_for(
        "the dashboard of warren up",
        Duration::from_secs(30),
        || api.get_text("/healthz").ok(),
    );
    assert!(
        up.proc
            .log_text()
            .contains(&format!("dashboard at {}", up.url)),
        "{}",
        up.proc.log_text()
    );

    let commit = repo.commit("made after warren up started");
    let jobs = api.wait_terminal(std::slice::from_ref(&commit), Duration::from_secs(60));
    assert_eq!(jobs[&commit][0]["status"], "passed");

    up.proc.signal(libc::SIGINT);
    let status = up.proc.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "warren up exits cleanly: {status}");
    let marker = up.data.to_str().expect("utf8").to_string();
    wait_for(
        "every child of warren up to exit",
        Duration::from_secs(10),
        || processes_matching(&marker).is_empty().then_some(()),
    );
}

#[test]
fn a_test_that_runs_past_the_job_timeout_ends_as_timeout_and_leaves_nothing_running() {
    let ns = Namespace::new("timeout");
    let scratch = Scratch::new();
    let repo = Repo::new(scratch.join("repo"));
    repo.write("README", "hangs\n");
    let commit = repo.commit("a test that hangs");
    // A marker only this test's processes carry, to look for leftovers.
    let marker = format!("{}.{}", 700 + std::process::id() % 100, std::process::id());
    let command = format!("sleep {marker} & sleep {marker}");

    let dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let _runner = runner(
        &ns,
        &scratch,
        "r1",
        &["--test-command", &command, "--job-timeout", "1"],
    );
    let _observer = observer(&ns, &scratch, repo.path_str(), &[]);
    let jobs = dispatcher
        .api()
        .wait_terminal(std::slice::from_ref(&commit), Duration::from_secs(60));
    let job = &jobs[&commit][0];
    assert_eq!(job["status"], "timeout", "{job}");
    assert!(
        job["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("timeout"),
        "{job}"
    );
    let leftovers = processes_starting_with(&format!("sleep {marker}"));
    assert!(
        leftovers.is_empty(),
        "the test's processes were killed: {leftovers:?}"
    );
}
