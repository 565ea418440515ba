//! Issue 3: nothing lost, nothing recorded twice, with real faults —
//! SIGKILL, SIGSTOP, SIGTERM, a dead dispatcher, a dead observer, poison and
//! unrunnable jobs, and a soak with runners killed at random.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn a_runner_killed_mid_test_has_its_job_rerun_elsewhere_and_recorded_once() {
    let ns = Namespace::new("sigkill");
    let scratch = Scratch::new();
    let (origin, staging) = origin_and_staging(&scratch);
    let dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let mut runners: Vec<Proc> = ["r1", "r2"]
        .iter()
        .map(|id| {
            runner(
                &ns,
                &scratch,
                id,
                &["--test-command", "sleep 2; cat value.txt"],
            )
        })
        .collect();
    let _observer = observer(&ns, &scratch, origin.path_str(), &[]);
    let commit = head(&staging);
    let api = dispatcher.api();
    let (_, victim) = wait_running(&api, &commit);
    take_runner(&mut runners, &victim).kill();

    let jobs = api.wait_terminal(std::slice::from_ref(&commit), Duration::from_secs(60));
    let job = one_job(&jobs, &commit);
    assert_eq!(job["status"], "passed", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    assert_eq!(job["duplicates"], 0, "{job}");
    assert_ne!(job["runner"], victim.as_str(), "{job}");
    let _ = push_commits; // (used by other tests)
}

#[test]
fn a_frozen_runner_loses_its_lease_and_its_job_completes_elsewhere() {
    let ns = Namespace::new("sigstop");
    let scratch = Scratch::new();
    let (origin, staging) = origin_and_staging(&scratch);
    let dispatcher = Dispatcher::start(
        &ns,
        &scratch,
        &["--heartbeat", "0.5", "--lease-missed", "4"],
    );
    let runner_args = [
        "--heartbeat",
        "0.5",
        "--test-command",
        "sleep 1.5; cat value.txt",
    ];
    let mut runners: Vec<Proc> = ["r1", "r2"]
        .iter()
        .map(|id| runner(&ns, &scratch, id, &runner_args))
        .collect();
    let _observer = observer(&ns, &scratch, origin.path_str(), &[]);
    let commit = head(&staging);
    let api = dispatcher.api();
    let (_, frozen_id) = wait_running(&api, &commit);
    let frozen = take_runner(&mut runners, &frozen_id);
    frozen.signal(libc::SIGSTOP);

    // Completes elsewhere: the lease (2 s) expires and the dispatcher
    // closes the frozen runner's connection through the management API.
    let jobs = api.wait_terminal(std::slice::from_ref(&commit), Duration::from_secs(30));
    let job = one_job(&jobs, &commit);
    assert_eq!(job["status"], "passed", "{job}");
    assert_ne!(job["runner"], frozen_id.as_str());
    assert_eq!(job["attempts"], 2, "{job}");
    let log = dispatcher.proc.log_text();
    assert!(
        log.contains("closed the frozen runner's connection"),
        "{log}"
    );

    // Resumed, the runner makes no second record and takes new jobs.
    frozen.signal(libc::SIGCONT);
    wait_for(
        "the resumed runner to reconnect",
        Duration::from_secs(30),
        || frozen.log_text().contains("reconnecting").then_some(()),
    );
    let job = one_job(&api.jobs_by_commit(), &commit);
    assert_eq!(job["status"], "passed");
    assert_eq!(
        job["runner"],
        runners[0].name.as_str(),
        "the outcome is still the first one recorded"
    );
    for mut other in runners {
        other.kill();
    }
    let next = push_commits(&origin, &staging, 1..2);
    let jobs = api.wait_terminal(&next, Duration::from_secs(60));
    let job = one_job(&jobs, &next[0]);
    assert_eq!(job["status"], "passed");
    assert_eq!(
        job["runner"],
        frozen_id.as_str(),
        "the resumed runner took the new job"
    );
}

#[test]
fn without_a_management_api_a_frozen_runners_job_is_republished_and_the_duplicate_cut_short() {
    let ns = Namespace::new("republish");
    let scratch = Scratch::new();
    let (origin, staging) = origin_and_staging(&scratch);
    let unreachable = format!("http://guest:guest@127.0.0.1:{}", free_port());
    let dispatcher = Dispatcher::start(
        &ns,
        &scratch,
        &[
            "--heartbeat",
            "0.5",
            "--lease-missed",
            "4",
            "--management-url",
            &unreachable,
        ],
    );
    let marks = scratch.join("marks");
    std::fs::create_dir_all(&marks).expect("mkdir");
    let command = format!(
        "touch {}/started.$$; sleep 4; cat value.txt",
        marks.display()
    );
    let runner_args = ["--heartbeat", "0.5", "--test-command", &command];
    let mut runners: Vec<Proc> = ["r1", "r2"]
        .iter()
        .map(|id| runner(&ns, &scratch, id, &runner_args))
        .collect();
    let _observer = observer(&ns, &scratch, origin.path_str(), &[]);
    let commit = head(&staging);
    let api = dispatcher.api();
    let (_, frozen_id) = wait_running(&api, &commit);
    // Freeze it once its test is really running, so the two executions
    // end seconds apart and the second is the one cut short.
    wait_for(
        "the first execution's test to start",
        Duration::from_secs(30),
        || std::fs::read_dir(&marks).ok()?.next().map(|_| ()),
    );
    let frozen = take_runner(&mut runners, &frozen_id);
    frozen.signal(libc::SIGSTOP);
    wait_for("the job to be republished", Duration::from_secs(30), || {
        dispatcher
            .proc
            .log_text()
            .contains("republished the job")
            .then_some(())
    });
    wait_for(
        "the other runner to take the job",
        Duration::from_secs(30),
        || runners[0].log_text().contains("job running").then_some(()),
    );
    // Both now run the job; the first result is recorded, the other runner
    // is told to stop.
    frozen.signal(libc::SIGCONT);
    let jobs = api.wait_terminal(std::slice::from_ref(&commit), Duration::from_secs(60));
    let job = one_job(&jobs, &commit);
    assert_eq!(job["status"], "passed", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    wait_for(
        "the duplicate execution to be cut short",
        Duration::from_secs(30),
        || {
            (frozen.log_text() + &runners[0].log_text())
                .contains("told to stop the job")
                .then_some(())
        },
    );
    let job = one_job(&api.jobs_by_commit(), &commit);
    assert_eq!(
        job["duplicates"], 0,
        "the stopped runner published nothing: {job}"
    );
}

#[test]
fn results_wait_for_a_dead_dispatcher_and_are_recorded_once_when_it_returns() {
    let ns = Namespace::new("dispatcher-down");
    let scratch = Scratch::new();
    let (origin, staging) = origin_and_staging(&scratch);
    let mut dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let runner = runner(&ns, &scratch, "r1", &["--test-command", "cat value.txt"]);
    let _observer = observer(&ns, &scratch, origin.path_str(), &[]);
    let initial = head(&staging);
    dispatcher
        .api()
        .wait_terminal(std::slice::from_ref(&initial), Duration::from_secs(60));

    dispatcher.proc.kill();
    let commits = push_commits(&origin, &staging, 1..6);
    wait_for(
        "the runner to test every commit while the dispatcher is down",
        Duration::from_secs(60),
        || (runner.log_text().matches("job finished").count() == 6).then_some(()),
    );

    let dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let jobs = dispatcher
        .api()
        .wait_terminal(&commits, Duration::from_secs(60));
    for commit in commits.iter().chain([&initial]) {
        let job = one_job(&jobs, commit);
        assert_eq!(job["status"], "passed", "{job}");
        assert_eq!(job["attempts"], 1, "{job}");
        assert_eq!(job["duplicates"], 0, "{job}");
    }
    assert_eq!(dispatcher.api().jobs().len(), 6);
}

#[test]
fn an_observer_killed_while_commits_arrive_skips_none_and_repeats_none() {
    let ns = Namespace::new("observer-kill");
    let scratch = Scratch::new();
    let repo = Repo::new(scratch.join("repo"));
    repo.write("value.txt", "value=0\n");
    let initial = repo.commit("initial");
    let dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let _runners: Vec<Proc> = ["r1", "r2"]
        .iter()
        .map(|id| runner(&ns, &scratch, id, &["--test-command", "cat value.txt"]))
        .collect();
    let mut obs = observer(&ns, &scratch, repo.path_str(), &[]);
    let state = scratch.join("observer-state.json");
    wait_for("the first publish", Duration::from_secs(30), || {
        std::fs::read_to_string(&state)
            .ok()
            .filter(|s| s.contains(&initial))
    });

    let mut commits = Vec::new();
    for i in 1..=30 {
        repo.write("value.txt", &format!("value={i}\n"));
        commits.push(repo.commit(&format!("commit {i}")));
        if i == 10 {
            let published = commits[4].clone();
            wait_for(
                "the observer to publish a few",
                Duration::from_secs(30),
                || {
                    std::fs::read_to_string(&state)
                        .ok()
                        .filter(|s| !s.contains(&initial) || s.contains(&published))
                },
            );
            obs.kill();
        }
        if i == 20 {
            obs = observer(&ns, &scratch, repo.path_str(), &[]);
        }
        std::thread::sleep(Duration::from_millis(50)); // commits keep arriving
    }
    let jobs = dispatcher
        .api()
        .wait_terminal(&commits, Duration::from_secs(120));
    for commit in &commits {
        let job = one_job(&jobs, commit);
        assert_eq!(job["attempts"], 1, "published once, run once: {job}");
        assert_eq!(job["status"], "passed");
    }
    assert_eq!(dispatcher.api().jobs().len(), 31);
    drop(obs);
}

/// The window the test above can only hit by luck, made certain: the
/// observer "died" after the broker took commits 2 and 3 but before its
/// state file recorded them (it still says commit 1, publishes in flight).
/// Restarted, it publishes what the ledger does not vouch for; returns the
/// commits and the jobs published, in order, and the observer's log.
fn restart_after_the_window(test: &str, broker_failed: bool) -> (Vec<String>, Vec<String>, String) {
    let ns = Namespace::new(test);
    let scratch = Scratch::new();
    let repo = Repo::new(scratch.join("repo"));
    let commits: Vec<String> = (1..=4)
        .map(|i| {
            repo.write("value.txt", &format!("value={i}\n"));
            repo.commit(&format!("commit {i}"))
        })
        .collect();
    let location = std::fs::canonicalize(repo.path_str()).expect("canonical path");
    let location = location.to_str().expect("utf8");
    let names = broker::Names::new(ns.name.clone());
    let taken: Vec<(String, String, Vec<u8>)> = commits[1..3]
        .iter()
        .map(|c| {
            let job = model::Job::try_new(location, "main", c).expect("a valid job");
            (
                names.jobs_exchange(),
                String::new(),
                broker::message::encode(&job),
            )
        })
        .collect();
    publish_raw(&ns, &taken);
    let state = scratch.join("observer-state.json");
    let saved = serde_json::json!({
        "version": 1, "repo": location, "branches": {"main": commits[0]},
        "publishing": true, "broker_failed": broker_failed
    });
    std::fs::write(&state, saved.to_string()).expect("write state");

    let observer = observer(&ns, &scratch, repo.path_str(), &[]);
    wait_for("the observer to catch up", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&state).ok()?;
        let state: serde_json::Value = serde_json::from_str(&text).ok()?;
        (state["branches"]["main"] == commits[3].as_str() && state["publishing"] == false)
            .then_some(())
    });
    let (ledger, work_depth) = ns.with_broker(async |broker| {
        let ledger = broker.recent_jobs(64 * 1024).await.expect("ledger");
        let depth = broker
            .queue_stats(&broker.names().work_queue())
            .await
            .expect("work queue")
            .ready;
        (ledger, depth)
    });
    let published: Vec<String> = ledger
        .into_iter()
        .map(|job| job.commit.into_string())
        .collect();
    assert_eq!(
        work_depth as usize,
        published.len(),
        "ledger and work queue agree"
    );
    (commits, published, observer.log_text())
}

#[test]
fn an_observer_that_died_between_confirm_and_state_write_publishes_nothing_twice() {
    let (commits, published, log) = restart_after_the_window("observer-window", false);
    assert_eq!(published, commits[1..], "each once");
    assert!(log.contains("the broker took commits"), "{log}");
}

/// When the broker itself failed under those publishes, the ledger may hold
/// what the work queue lost: then the commits are published again (counted
/// duplicates), never skipped.
#[test]
fn after_a_broker_failure_in_the_window_the_ledger_is_not_trusted() {
    let (commits, published, log) = restart_after_the_window("observer-window-failed", true);
    let again: Vec<String> = [1, 2, 1, 2, 3]
        .iter()
        .map(|&i| commits[i].clone())
        .collect();
    assert_eq!(published, again, "commits 2 and 3 again, then 4");
    assert!(!log.contains("the broker took commits"), "{log}");
}

#[test]
fn a_poison_job_is_dead_lettered_after_the_delivery_limit_and_recorded_as_error() {
    let ns = Namespace::new("poison");
    let scratch = Scratch::new();
    let repo = Repo::new(scratch.join("repo"));
    // The test kills its runner every time.
    repo.write(".warren-test", KILL_MY_RUNNER);
    let poison = repo.commit("a test that kills its runner");
    let up = Up::start(
        &ns,
        &scratch,
        repo.path_str(),
        "2",
        &["--delivery-limit", "2"],
        &[],
    );
    let api = up.api();
    let jobs = api.wait_terminal(std::slice::from_ref(&poison), Duration::from_secs(90));
    let job = one_job(&jobs, &poison);
    assert_eq!(job["status"], "error", "{job}");
    assert!(
        job["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("after 2 deliveries (--delivery-limit 2)"),
        "{job}"
    );
    assert_eq!(job["attempts"], 2, "exactly --delivery-limit runs: {job}");

    // Warren carries on: the next commit is tested normally.
    repo.write(".warren-test", "true");
    let good = repo.commit("fixed");
    let jobs = api.wait_terminal(std::slice::from_ref(&good), Duration::from_secs(60));
    assert_eq!(one_job(&jobs, &good)["status"], "passed");
}

#[test]
fn a_missing_commit_and_an_unreachable_repository_end_as_error_with_the_reason() {
    let ns = Namespace::new("unrunnable");
    let scratch = Scratch::new();
    let repo = Repo::new(scratch.join("repo"));
    repo.write("a", "1");
    let kept = repo.commit("kept");
    repo.write("a", "2");
    let lost = repo.commit("will disappear");
    let _observer = observer(&ns, &scratch, repo.path_str(), &[]);
    let state = scratch.join("observer-state.json");
    wait_for("the job to be published", Duration::from_secs(30), || {
        std::fs::read_to_string(&state)
            .ok()
            .filter(|s| s.contains(&lost))
    });
    // The commit disappears before any runner fetches it.
    git(&repo.path, &["reset", "-q", "--hard", &kept]);
    git(&repo.path, &["reflog", "expire", "--expire=now", "--all"]);
    git(&repo.path, &["gc", "-q", "--prune=now"]);
    let dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let _runner = runner(&ns, &scratch, "r1", &["--test-command", "true"]);
    let jobs = dispatcher
        .api()
        .wait_terminal(std::slice::from_ref(&lost), Duration::from_secs(60));
    let job = one_job(&jobs, &lost);
    assert_eq!(job["status"], "error", "{job}");
    assert!(
        job["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("does not exist"),
        "{job}"
    );
    assert_eq!(job["attempts"], 1, "not requeued: {job}");

    // A repository that disappears entirely.
    let ns2 = Namespace::new("unreachable");
    let gone = Repo::new(scratch.join("gone"));
    gone.write("a", "1");
    let commit = gone.commit("soon unreachable");
    let state2 = scratch.join("observer2-state.json");
    let mut obs2 = Proc::spawn(
        "observer2",
        &ns2,
        &scratch,
        &[
            "observer",
            "--interval",
            "0.2",
            "--state",
            state2.to_str().expect("utf8"),
            gone.path_str(),
        ],
        &[],
    );
    wait_for("the job to be published", Duration::from_secs(30), || {
        std::fs::read_to_string(&state2)
            .ok()
            .filter(|s| s.contains(&commit))
    });
    obs2.kill();
    std::fs::remove_dir_all(&gone.path).expect("remove repo");
    let scratch2 = Scratch::new();
    let dispatcher2 = Dispatcher::start(&ns2, &scratch2, &[]);
    let _runner2 = runner(&ns2, &scratch2, "r2", &["--test-command", "true"]);
    let jobs = dispatcher2
        .api()
        .wait_terminal(std::slice::from_ref(&commit), Duration::from_secs(60));
    let job = one_job(&jobs, &commit);
    assert_eq!(job["status"], "error", "{job}");
    assert!(
        job["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot be reached"),
        "{job}"
    );
    assert_eq!(job["attempts"], 1, "{job}");
}

#[test]
fn sigterm_lets_the_running_job_finish_or_hands_it_back_and_stops_cleanly() {
    let ns = Namespace::new("sigterm");
    let scratch = Scratch::new();
    let (origin, staging) = origin_and_staging(&scratch);
    let mut dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let api = dispatcher.api();
    let mut obs = observer(&ns, &scratch, origin.path_str(), &[]);

    // Within the grace period: the job finishes and is recorded.
    let mut patient = runner(
        &ns,
        &scratch,
        "patient",
        &[
            "--grace",
            "20",
            "--test-command",
            "sleep 1.5; cat value.txt",
        ],
    );
    let first = head(&staging);
    wait_running(&api, &first);
    patient.signal(libc::SIGTERM);
    assert!(patient.wait_exit(Duration::from_secs(30)).success());
    let job = one_job(
        &api.wait_terminal(std::slice::from_ref(&first), Duration::from_secs(10)),
        &first,
    );
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("passed"), Some(1)),
        "{job}"
    );

    // Past the grace period: the job is stopped and handed back, not lost.
    let mut hasty = runner(
        &ns,
        &scratch,
        "hasty",
        &["--grace", "0.5", "--test-command", "sleep 30"],
    );
    let second = push_commits(&origin, &staging, 1..2);
    wait_running(&api, &second[0]);
    hasty.signal(libc::SIGTERM);
    assert!(hasty.wait_exit(Duration::from_secs(30)).success());
    let _finisher = runner(
        &ns,
        &scratch,
        "finisher",
        &["--test-command", "cat value.txt"],
    );
    let job = one_job(
        &api.wait_terminal(&second, Duration::from_secs(60)),
        &second[0],
    );
    assert_eq!(job["status"], "passed", "{job}");
    assert_eq!(job["runner"], "finisher");
    assert_eq!(job["attempts"], 2, "{job}");

    // The observer and the dispatcher exit cleanly too.
    obs.signal(libc::SIGTERM);
    assert!(obs.wait_exit(Duration::from_secs(20)).success());
    dispatcher.proc.signal(libc::SIGTERM);
    assert!(dispatcher.proc.wait_exit(Duration::from_secs(20)).success());
}

#[test]
fn soak_two_hundred_commits_while_runners_are_killed_at_random() {
    let ns = Namespace::new("soak");
    let scratch = Scratch::new();
    let (origin, staging) = origin_and_staging(&scratch);
    let dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let args = ["--test-command", "cat value.txt"];
    let mut runners: Vec<Proc> = (1..=4)
        .map(|i| runner(&ns, &scratch, &format!("r{i}"), &args))
        .collect();
    let mut next_id = 5;
    let _observer = observer(&ns, &scratch, origin.path_str(), &[]);
    let mut commits = vec![head(&staging)];
    for batch in 0..4 {
        commits.extend(push_commits(
            &origin,
            &staging,
            batch * 50 + 1..batch * 50 + 51,
        ));
    }
    let api = dispatcher.api();
    // A small deterministic generator: which runner to kill, and when.
    let mut seed = u64::from(std::process::id()) | 1;
    let mut random = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut kills = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let jobs = api.jobs_by_commit();
        if commits
            .iter()
            .all(|c| jobs.get(c).is_some_and(|j| j.iter().all(is_terminal)))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "soak did not finish in time"
        );
        // Kill one at random, start a replacement: at least 3 stay alive.
        let victim = random(runners.len() as u64) as usize;
        runners.remove(victim).kill();
        kills += 1;
        runners.push(runner(&ns, &scratch, &format!("r{next_id}"), &args));
        next_id += 1;
        std::thread::sleep(Duration::from_millis(500 + random(1500)));
    }
    let jobs = api.jobs_by_commit();
    let mut executions = 0;
    for commit in &commits {
        let job = one_job(&jobs, commit);
        assert_eq!(job["status"], "passed", "{job}");
        executions += job["attempts"].as_i64().unwrap_or_default();
    }
    assert_eq!(api.jobs().len(), commits.len());
    println!(
        "soak: {} jobs, {executions} executions, {kills} runners killed",
        commits.len()
    );
}

/// A small tmpfs of the test's own, to fill up; unmounted on drop (after
/// the processes using it, which are declared later and so dropped first).
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(path: std::path::PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&path).expect("mkdir");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test needs to mount a tmpfs (run it as root, as scripts/test does in CI): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { path }
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

#[test]
fn a_full_disk_under_the_store_is_named_as_such_and_loses_nothing() {
    let ns = Namespace::new("fulldisk");
    let scratch = Scratch::new();
    let disk = SmallDisk::mount(scratch.join("small-disk"), "4m");
    let repo = Repo::new(scratch.join("repo"));
    repo.write(".warren-test", "true");
    let first = repo.commit("first");
    let data = disk.path.join("data");
    let dispatcher = Dispatcher::start_at(&ns, &scratch, data, &[], &[]);
    let _runner = runner(&ns, &scratch, "r1", &[]);
    let _observer = observer(&ns, &scratch, repo.path_str(), &[]);
    let api = dispatcher.api();
    api.wait_terminal(std::slice::from_ref(&first), Duration::from_secs(60));

    let filler = disk.fill();
    let second = repo.commit("second, while the disk is full");
    wait_for("the store to fail", Duration::from_secs(60), || {
        dispatcher
            .proc
            .log_text()
            .contains("cannot write to the store")
            .then_some(())
    });
    let log = dispatcher.proc.log_text();
    assert!(
        !log.contains("lost the broker"),
        "the broker is not to blame: {log}"
    );

    std::fs::remove_file(filler).expect("free the disk");
    let jobs = api.wait_terminal(std::slice::from_ref(&second), Duration::from_secs(60));
    assert_eq!(one_job(&jobs, &second)["status"], "passed");
}
