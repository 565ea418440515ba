//! Issue 13: the dispatcher on PostgreSQL. The whole flow (commit to
//! outcome, log, rerun, dashboard) with `--store postgres://…`, a restarted
//! dispatcher that lists the same jobs, and two dispatchers on one database
//! consuming the same results: every job recorded exactly once.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use broker::message::encode;
use broker::Names;
use common::*;
use model::{JobResult, Outcome, RunnerId, RunnerInfo, SCHEMA_VERSION};

#[test]
fn a_dispatcher_on_postgres_runs_the_whole_flow_and_a_restart_keeps_every_job() {
    let ns = Namespace::new("pg-flow");
    let scratch = Scratch::new();
    let db = PgDatabase::new("flow");
    let repo = Repo::new(scratch.join("repo"));
    repo.write(".warren-test", "echo testing on postgres; exit 0");
    let first = repo.commit("first");
    let store = ["--store", db.url.as_str()];
    let mut dispatcher = Dispatcher::start(&ns, &scratch, &store);
    let _runner = runner(&ns, &scratch, "r1", &[]);
    let _observer = observer(&ns, &scratch, repo.path_str(), &[]);
    let api = dispatcher.api();
    let jobs = api.wait_terminal(std::slice::from_ref(&first), Duration::from_secs(60));
    let job = one_job(&jobs, &first);
    assert_eq!(job["status"], "passed", "{job}");
    let id = job["id"].as_str().expect("id").to_string();
    assert!(
        api.log(&id).contains("testing on postgres"),
        "the log is in the store"
    );
    assert!(
        api.get_text(&format!("/jobs/{id}")).is_ok(),
        "the job's page"
    );

    // A rerun: a second job of the same commit, also recorded.
    let rerun: serde_json::Value = reqwest::blocking::Client::new()
        .post(format!("{}/api/jobs/{id}/rerun", dispatcher.url))
        .send()
        .expect("rerun")
        .json()
        .expect("json");
    let rerun_id = rerun["id"].as_str().expect("id").to_string();
    wait_for("the rerun's outcome", Duration::from_secs(60), || {
        let job = api.get_json(&format!("/api/jobs/{rerun_id}")).ok()?;
        is_terminal(&job).then_some(())
    });

    // Restarted on the same database: the same jobs, the same logs.
    let before = api.jobs();
    dispatcher.proc.kill();
    let again = Dispatcher::start(&ns, &scratch, &store);
    let after = again.api().jobs();
    let ids = |jobs: &[serde_json::Value]| -> Vec<String> {
        jobs.iter().map(|j| j["id"].to_string()).collect()
    };
    assert_eq!(ids(&after), ids(&before));
    assert_eq!(after.len(), 2);
    assert!(again.api().log(&id).contains("testing on postgres"));
}

#[test]
fn two_dispatchers_on_one_database_record_every_job_exactly_once() {
    let ns = Namespace::new("pg-two");
    let scratch = Scratch::new();
    let db = PgDatabase::new("two");
    let store = ["--store", db.url.as_str()];
    // Two processes competing for the same dispatcher queues.
    let one = Dispatcher::start_at(&ns, &scratch, scratch.join("one"), &store, &[]);
    let two = Dispatcher::start_at(&ns, &scratch, scratch.join("two"), &store, &[]);
    wait_for(
        "both dispatchers consuming",
        Duration::from_secs(30),
        || {
            let queue = one.api().get_json("/api/queue").ok()?;
            let consumers = ns.with_broker(async |broker| {
                broker
                    .queue_stats(&broker.names().dispatcher_results_queue())
                    .await
                    .map(|stats| stats.consumers)
                    .unwrap_or(0)
            });
            (queue.is_object() && consumers == 2).then_some(())
        },
    );

    // 150 jobs, two results each with different outcomes, the two results
    // of a job next to each other so that both dispatchers race on it.
    let names = Names::new(ns.name.clone());
    let runner = |id: &str| RunnerInfo {
        id: RunnerId::parse(id).expect("id"),
        host: "h".into(),
        connection: format!("c-{id}"),
        sandbox: Default::default(),
        queues: Vec::new(),
    };
    let mut messages = Vec::new();
    let mut jobs = Vec::new();
    for i in 0..150 {
        let job = model::Job::try_new("/srv/repo", "main", &format!("{i:040x}")).expect("job");
        for (outcome, by) in [(Outcome::Passed, "r1"), (Outcome::Failed, "r2")] {
            let result = JobResult {
                v: SCHEMA_VERSION,
                job: job.clone(),
                outcome,
                exit_code: Some(i32::from(outcome != Outcome::Passed)),
                started_at_ms: 1,
                finished_at_ms: 2,
                duration_ms: 1,
                output: format!("{outcome} by {by}"),
                truncated: false,
                runner: runner(by),
                reason: None,
                plan: None,
                tests: None,
            };
            messages.push((
                names.results_exchange(),
                result.routing_key(),
                encode(&result),
            ));
        }
        jobs.push(job.id.to_string());
    }
    publish_raw(&ns, &messages);

    let recorded = wait_for("every job recorded", Duration::from_secs(60), || {
        let listed = one.api().jobs();
        let done: HashMap<String, serde_json::Value> = listed
            .into_iter()
            .filter(|j| is_terminal(j) && j["duplicates"] == 1)
            .map(|j| (j["id"].as_str().unwrap_or_default().to_string(), j))
            .collect();
        (done.len() == jobs.len()).then_some(done)
    });
    for id in &jobs {
        let job = &recorded[id];
        assert!(
            job["status"] == "passed" || job["status"] == "failed",
            "{job}"
        );
        assert_eq!(job["duplicates"], 1, "one outcome, one duplicate: {job}");
    }
    // Both took part (the round robin may give one of them every job's
    // second result, so taking part may mean recording duplicates only),
    // and both see the same record.
    for dispatcher in [&one, &two] {
        let log = dispatcher.proc.log_text();
        assert!(
            log.contains("job finished") || log.contains("duplicate result discarded"),
            "{log}"
        );
    }
    assert_eq!(two.api().jobs().len(), jobs.len());
    // Every finished result counted once across the two.
    let total: usize = [&one, &two]
        .iter()
        .map(|d| d.proc.log_text().matches("job finished").count())
        .sum();
    assert_eq!(total, jobs.len());
}

/// Runs `warren migrate ARGS` and returns (exit code, stdout and stderr).
fn migrate(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = std::process::Command::new(WARREN)
        .arg("migrate")
        .args(args)
        .env_remove("WARREN_STORE")
        .envs(env.iter().copied())
        .output()
        .expect("run warren migrate");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn warren_migrate_checks_then_applies_on_both_backends_and_hides_the_password() {
    let scratch = Scratch::new();
    let db = PgDatabase::new("migrate");
    let sqlite = format!("sqlite:{}", scratch.join("store/warren.db").display());
    for url in [sqlite.as_str(), db.url.as_str()] {
        let (code, text) = migrate(&["--store", url, "--check"], &[]);
        assert_eq!(code, 1, "pending migrations: {text}");
        let (code, text) = migrate(&["--store", url], &[]);
        assert_eq!(code, 0, "{text}");
        let (code, text) = migrate(&["--store", url, "--check"], &[]);
        assert_eq!(code, 0, "nothing pending any more: {text}");
    }
    // A URL from a file, with a password that must not show in any error.
    let secret = "Pa55-not-for-logs";
    let file = scratch.join("store-url");
    std::fs::write(
        &file,
        format!("postgres://postgres:{secret}@127.0.0.1:1/nowhere\n"),
    )
    .expect("write");
    let (code, text) = migrate(
        &["--check"],
        &[("WARREN_STORE_FILE", file.to_str().expect("utf8"))],
    );
    assert_ne!(code, 0, "nothing listens on port 1: {text}");
    assert!(text.contains("127.0.0.1:1"), "it says which store: {text}");
    assert!(!text.contains(secret), "the password is hidden: {text}");
}

/// The dispatcher of `pair` that says it holds the duties, waited for.
fn holder(pair: &[Dispatcher]) -> usize {
    wait_for(
        "a dispatcher to hold the duties",
        Duration::from_secs(20),
        || {
            pair.iter()
                .position(|d| d.proc.log_text().contains("holds the duties done once"))
        },
    )
}

/// Issue 17: the duties done once move with the lock. The holder is
/// killed (SIGKILL) with a runner frozen (SIGSTOP) on a job, and a burst
/// of passing and failing commits follows: the other dispatcher expires
/// the frozen runner's lease and the job runs again elsewhere, every job
/// ends once, and every notification (both dispatchers have the webhook)
/// is sent once, by whichever dispatcher holds the duties, whichever
/// recorded the outcome.
#[test]
fn when_the_dispatcher_holding_the_duties_is_killed_mid_burst_the_other_expires_a_frozen_lease_and_notifies_once(
) {
    let ns = Namespace::new("pg-takeover");
    let scratch = Scratch::new();
    let db = PgDatabase::new("takeover");
    let receiver = WebhookReceiver::start(false);
    let args = [
        "--store",
        db.url.as_str(),
        "--heartbeat",
        "0.5",
        "--lease-missed",
        "4",
        "--webhook",
        receiver.url.as_str(),
    ];
    let mut pair = vec![
        Dispatcher::start_at(&ns, &scratch, scratch.join("one"), &args, &[]),
        Dispatcher::start_at(&ns, &scratch, scratch.join("two"), &args, &[]),
    ];
    let first = holder(&pair);
    // Exactly one holds them.
    assert!(!pair[1 - first]
        .proc
        .log_text()
        .contains("holds the duties done once"));

    let (origin, staging) = origin_and_staging(&scratch);
    let runner_args = [
        "--heartbeat",
        "0.5",
        "--test-command",
        "sleep 2; ! grep -q fail value.txt",
    ];
    let mut runners: Vec<Proc> = ["r1", "r2"]
        .iter()
        .map(|id| runner(&ns, &scratch, id, &runner_args))
        .collect();
    let _observer = observer(&ns, &scratch, origin.path_str(), &[]);
    let mut commits = vec![head(&staging)];
    let api = pair[1 - first].api();
    let (_, frozen_id) = wait_running(&api, &commits[0]);
    let frozen = take_runner(&mut runners, &frozen_id);
    frozen.signal(libc::SIGSTOP);
    // The holder dies before the lease expires (2 s): the other must take
    // the duties over and act on it.
    pair[first].proc.signal(libc::SIGKILL);
    let killed_at = std::time::Instant::now();
    pair[first].proc.wait_exit(Duration::from_secs(10));
    // The burst: red and green in turns, so that notifications are due.
    for (i, value) in ["fail", "fail", "pass", "fail", "pass"].iter().enumerate() {
        staging.write("value.txt", &format!("{value}\n"));
        commits.push(staging.commit(&format!("commit {i}: {value}")));
    }
    git(
        &staging.path,
        &["push", "-q", origin.path_str(), "HEAD:main"],
    );
    let survivor = &pair[1 - first];
    wait_for(
        "the other to take the duties over",
        Duration::from_secs(10),
        || {
            survivor
                .proc
                .log_text()
                .contains("holds the duties done once")
                .then_some(())
        },
    );
    eprintln!(
        "the duties taken over {:.1} s after the holder's kill",
        killed_at.elapsed().as_secs_f64()
    );
    let (api_ref, frozen_commit) = (&api, commits[0].clone());
    wait_for(
        "the frozen runner's job to run again",
        Duration::from_secs(60),
        || {
            let job = api_ref
                .jobs_by_commit()
                .get(&frozen_commit)?
                .first()?
                .clone();
            (job["attempts"] == 2).then_some(())
        },
    );
    eprintln!(
        "the frozen runner's job started again {:.1} s after the holder's kill",
        killed_at.elapsed().as_secs_f64()
    );

    let jobs = api.wait_terminal(&commits, Duration::from_secs(90));
    eprintln!(
        "{} commits ended {:.1} s after the holder's kill",
        commits.len(),
        killed_at.elapsed().as_secs_f64()
    );
    let job = one_job(&jobs, &commits[0]);
    assert_eq!(job["status"], "passed", "{job}");
    assert_ne!(job["runner"], frozen_id.as_str());
    assert_eq!(job["attempts"], 2, "{job}");
    let log = survivor.proc.log_text();
    assert!(log.contains("lease expired"), "{log}");

    // The notifications the outcomes call for, in the order they ended:
    // a failure after none or a pass, a pass after a failure.
    let mut ended: Vec<serde_json::Value> = commits.iter().map(|c| one_job(&jobs, c)).collect();
    // RFC 3339 in one format, to the millisecond: sorts as text.
    ended.sort_by_key(|job| job["finished_at"].as_str().unwrap_or_default().to_string());
    let mut expected = Vec::new();
    let mut previous_failed = None;
    for job in &ended {
        let failed = job["status"] != "passed";
        match (failed, previous_failed) {
            (true, None | Some(false)) => {
                expected.push(format!("{}.failed", job["id"].as_str().unwrap_or_default()))
            }
            (false, Some(true)) => {
                expected.push(format!("{}.fixed", job["id"].as_str().unwrap_or_default()))
            }
            _ => {}
        }
        previous_failed = Some(failed);
    }
    expected.sort();
    assert!(
        expected.len() >= 2,
        "the burst calls for notifications: {ended:?}"
    );
    // Everything handed over (no change left to announce), and sent.
    let delivered = wait_for("every notification sent", Duration::from_secs(30), || {
        let left = db.query_value("SELECT COUNT(*) FROM job_changes");
        let mut delivered: Vec<String> = receiver
            .requests()
            .iter()
            .filter_map(|r| r.header("x-warren-delivery").map(str::to_string))
            .collect();
        delivered.sort();
        (left == "0" && delivered.len() >= expected.len()).then_some(delivered)
    });
    assert_eq!(delivered, expected, "each notification once");

    frozen.signal(libc::SIGCONT);
    // Resumed, the frozen runner's late result (if any) changes nothing.
    let job = one_job(&api.jobs_by_commit(), &commits[0]);
    assert_eq!(job["status"], "passed");
    assert_eq!(job["runner"], runners[0].name.as_str());
}
