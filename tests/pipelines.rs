//! Issue 16: pipelines in the repository. A commit's `.warren.yml` is
//! planned by a runner, the dispatcher records the plan and publishes each
//! job once its needs have ended, on the queue it names. Real broker, real
//! git, the real binary, real runners (without the sandbox: the jobs write
//! marks into the scratch folder).

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn ms(job: &Value, field: &str) -> i64 {
    job[field]
        .as_i64()
        .unwrap_or_else(|| panic!("{field} of {job}"))
}

const DIAMOND: &str = r#"# a → b (a 2×2 matrix), c → d; jobs allowed to fail, failing and skipped
jobs:
  a:
    run: echo "a ran" >> "$MARKS/a"
  b:
    run: echo "b $MATRIX_X $MATRIX_Y" && echo "$MATRIX_X$MATRIX_Y" >> "$MARKS/b"
    needs: [a]
    matrix:
      x: [1, 2]
      y: [p, q]
  c:
    run: echo c
    needs: [a]
    env: {GREETING: "hello c"}
  d:
    run: echo "d ran"
    needs: [b, c]
  may-fail:
    run: exit 3
    allow_failure: true
  after-may-fail:
    run: echo fine
    needs: [may-fail]
  broken:
    run: test -f "$MARKS/fixed"
    needs: [a]
  after-broken:
    run: echo never
    needs: [broken]
  release-only:
    run: echo release
    branches: ["release/*"]
"#;

#[test]
fn a_diamond_with_a_matrix_runs_each_job_once_after_its_needs_and_a_failing_need_skips_its_dependents(
) {
    let ns = Namespace::new("pipe-diamond");
    let scratch = Scratch::new();
    let marks = scratch.join("marks");
    std::fs::create_dir_all(&marks).expect("marks");
    let repo = Repo::new(scratch.join("repo"));
    repo.write(
        ".warren.yml",
        &DIAMOND.replace("$MARKS", marks.to_str().expect("utf8")),
    );
    let first = repo.commit("a pipeline");

    let dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let _runners: Vec<Proc> = (1..=2)
        .map(|i| runner(&ns, &scratch, &format!("r{i}"), &[]))
        .collect();
    let _observer = observer(&ns, &scratch, repo.path_str(), &[]);
    let api = dispatcher.api();

    let view = wait_verdict(&api, &first, Duration::from_secs(120));
    assert_eq!(view["status"], "failed", "{view:#}");
    assert_eq!(view["commit"], first.as_str());
    assert_eq!(view["branch"], "main");
    let jobs = by_name(&view);
    let mut names: Vec<&str> = jobs.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "a",
            "after-broken",
            "after-may-fail",
            "b (1, p)",
            "b (1, q)",
            "b (2, p)",
            "b (2, q)",
            "broken",
            "c",
            "d",
            "may-fail",
            "plan"
        ],
        "release-only is not built on main"
    );
    let status = |name: &str| jobs[name]["status"].as_str().expect("status").to_string();
    for name in [
        "plan",
        "a",
        "b (1, p)",
        "b (2, q)",
        "c",
        "d",
        "after-may-fail",
    ] {
        assert_eq!(status(name), "passed", "{name}: {:#}", jobs[name]);
    }
    assert_eq!(status("may-fail"), "failed");
    assert_eq!(status("broken"), "failed");
    assert_eq!(status("after-broken"), "skipped");
    assert_eq!(
        jobs["after-broken"]["reason"],
        "skipped: broken did not pass"
    );
    assert_eq!(jobs["d"]["needs"].as_array().map(Vec::len), Some(5));
    // Each job started after every job it needs had ended.
    for (name, job) in &jobs {
        for need in job["needs"].as_array().expect("needs") {
            let need = &jobs[need.as_str().expect("need")];
            if job["status"] != "skipped" {
                assert!(
                    ms(job, "started_at_ms") >= ms(need, "finished_at_ms"),
                    "{name} started before {} ended",
                    need["name"]
                );
            }
        }
        assert_eq!(job["commit"], first.as_str());
        assert!(job["attempts"].as_i64().unwrap_or(0) <= 1, "{job}");
    }
    // Every combination ran once with its values; a ran once.
    let mut combos: Vec<String> = std::fs::read_to_string(marks.join("b"))
        .expect("b marks")
        .lines()
        .map(String::from)
        .collect();
    combos.sort();
    assert_eq!(combos, vec!["1p", "1q", "2p", "2q"]);
    assert_eq!(
        std::fs::read_to_string(marks.join("a"))
            .expect("a marks")
            .lines()
            .count(),
        1
    );
    let log = api.log(jobs["b (2, q)"]["id"].as_str().expect("id"));
    assert!(log.contains("b 2 q"), "{log}");
    let plan_log = api.log(jobs["plan"]["id"].as_str().expect("id"));
    assert!(plan_log.contains("\"after-broken\""), "{plan_log}");

    // Fixed, and the broken job alone run again: it passes, in the same
    // pipeline under the same name, but the job it skipped never ran, so
    // the commit stays failed (`warren rerun --failed` runs both).
    std::fs::write(marks.join("fixed"), "").expect("fix");
    let broken_id = jobs["broken"]["id"].as_str().expect("id").to_string();
    let rerun: Value = reqwest::blocking::Client::new()
        .post(format!("{}/api/jobs/{broken_id}/rerun", dispatcher.url))
        .send()
        .expect("rerun")
        .json()
        .expect("json");
    let rerun_id = rerun["id"].as_str().expect("the rerun's id").to_string();
    let view = wait_for("the rerun to pass", Duration::from_secs(60), || {
        let view = api.get_json(&format!("/api/commits/{first}")).ok()?;
        let rerun = view["jobs"]
            .as_array()?
            .iter()
            .find(|job| job["id"] == rerun_id.as_str())?
            .clone();
        (rerun["status"] == "passed").then_some(view)
    });
    let jobs = by_name(&view);
    assert_eq!(
        jobs["broken"]["id"],
        rerun_id.as_str(),
        "the rerun stands for its name"
    );
    assert_eq!(jobs["broken"]["pipeline"], jobs["plan"]["id"]);
    assert_eq!(jobs["after-broken"]["status"], "skipped");
    assert_eq!(view["status"], "failed", "{view:#}");

    // The next commit's pipeline passes as a whole.
    repo.write("README", "fixed\n");
    let second = repo.commit("fix");
    let view = wait_verdict(&api, &second, Duration::from_secs(120));
    let jobs = by_name(&view);
    assert_eq!(view["status"], "passed", "{view:#}");
    assert_eq!(jobs["after-broken"]["status"], "passed");
    assert_eq!(jobs["may-fail"]["status"], "failed", "allowed to fail");
}

#[test]
fn a_job_on_a_queue_no_runner_serves_says_so_and_runs_when_such_a_runner_starts() {
    let ns = Namespace::new("pipe-queue");
    let scratch = Scratch::new();
    let repo = Repo::new(scratch.join("repo"));
    repo.write(
        ".warren.yml",
        "jobs:\n  lint:\n    run: echo lint\n  cuda:\n    run: echo on the gpu\n    queue: gpu\n  report:\n    run: echo report\n    needs: [cuda, lint]\n",
    );
    let commit = repo.commit("needs a gpu");

    let dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let _cpu = runner(&ns, &scratch, "cpu", &[]);
    let _observer = observer(&ns, &scratch, repo.path_str(), &[]);
    let api = dispatcher.api();

    let view = wait_for(
        "the gpu job to wait for a runner",
        Duration::from_secs(60),
        || {
            let view = api.get_json(&format!("/api/commits/{commit}")).ok()?;
            let jobs = by_name(&view);
            let lint_done = jobs.get("lint")?["status"] == "passed";
            (lint_done && jobs.get("cuda")?["waiting_reason"] == "no runner serves queue 'gpu'")
                .then_some(view)
        },
    );
    let jobs = by_name(&view);
    assert_eq!(view["status"], "running", "{view:#}");
    assert_eq!(jobs["cuda"]["status"], "queued");
    assert_eq!(jobs["cuda"]["queue"], "gpu");
    assert_eq!(jobs["report"]["status"], "waiting");
    assert_eq!(jobs["report"]["waiting_reason"], "waiting for cuda");
    // The same reason in the job's own answer and in the list.
    let cuda_id = jobs["cuda"]["id"].as_str().expect("id").to_string();
    let shown = api.get_json(&format!("/api/jobs/{cuda_id}")).expect("job");
    assert_eq!(shown["waiting_reason"], "no runner serves queue 'gpu'");

    let _gpu = runner(&ns, &scratch, "gpu", &["--queue", "gpu"]);
    let view = wait_verdict(&api, &commit, Duration::from_secs(60));
    let jobs = by_name(&view);
    assert_eq!(view["status"], "passed", "{view:#}");
    assert_eq!(jobs["cuda"]["runner"], "gpu");
    assert_eq!(jobs["lint"]["runner"], "cpu");
    let runners = api.get_json("/api/runners").expect("runners");
    let gpu = runners
        .as_array()
        .expect("runners")
        .iter()
        .find(|r| r["id"] == "gpu")
        .expect("gpu runner")
        .clone();
    assert_eq!(gpu["queues"], serde_json::json!(["gpu"]));
}

#[test]
fn an_invalid_pipeline_file_ends_the_commit_as_error_naming_the_field_and_line_and_one_without_is_one_job(
) {
    let ns = Namespace::new("pipe-invalid");
    let scratch = Scratch::new();
    let repo = Repo::new(scratch.join("repo"));
    let cases: &[(&str, &str)] = &[
        ("jobs:\n  a:\n    run: true\n    color: red\n", "line 4"),
        (
            "jobs:\n  a:\n    run: true\n    needs: [b]\n  b:\n    run: true\n    needs: [a]\n",
            "cycle",
        ),
        (
            "jobs:\n  a:\n    run: true\n    needs: [nothing]\n",
            "nothing",
        ),
        ("jobs:\n  a:\n    run: true\n    matrix: {}\n", "matrix"),
        ("jobs:\n  a:\n    run: true\n    timeout: 10x\n", "timeout"),
    ];
    repo.write("README", "a repository\n");
    repo.commit("start");
    let dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let _runner = runner(&ns, &scratch, "r1", &[]);
    let _observer = observer(&ns, &scratch, repo.path_str(), &[]);
    let api = dispatcher.api();

    // One commit at a time: the observer builds the newest commit of a
    // branch it sees for the first time, then every new one.
    for (text, says) in cases {
        repo.write(".warren.yml", text);
        let commit = repo.commit("a bad pipeline");
        let view = wait_verdict(&api, &commit, Duration::from_secs(60));
        assert_eq!(view["status"], "error", "{view:#}");
        let jobs = view["jobs"].as_array().expect("jobs");
        assert_eq!(jobs.len(), 1, "no job runs: {view:#}");
        let reason = jobs[0]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(".warren.yml"), "{reason}");
        assert!(reason.contains(says), "{reason} should say {says}");
    }
    // A file over 256 KiB is refused the same way, unread.
    let huge = format!("jobs:\n  a:\n    run: true\n# {}\n", "x".repeat(300 * 1024));
    repo.write(".warren.yml", &huge);
    let commit = repo.commit("a huge pipeline file");
    let view = wait_verdict(&api, &commit, Duration::from_secs(60));
    assert_eq!(view["status"], "error", "{view:#}");
    let reason = view["jobs"][0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(".warren.yml") && reason.contains("larger than"),
        "{reason}"
    );

    repo.write(".warren.yml", "network: true\n");
    repo.write(".warren-test", "echo the old way\n");
    let plain = repo.commit("no pipeline");
    let view = wait_verdict(&api, &plain, Duration::from_secs(60));
    assert_eq!(view["status"], "passed", "{view:#}");
    let jobs = view["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["name"], "test");
    assert_eq!(jobs[0]["pipeline"], jobs[0]["id"]);
    assert!(api
        .log(jobs[0]["id"].as_str().expect("id"))
        .contains("the old way"));
    // An unknown and an ambiguous commit are answered in JSON.
    assert!(api.get_json("/api/commits/0000000000").is_err());
}

#[test]
fn a_dispatcher_killed_again_and_again_during_a_chain_publishes_each_job_once() {
    let ns = Namespace::new("pipe-kill");
    let scratch = Scratch::new();
    let marks = scratch.join("marks");
    std::fs::create_dir_all(&marks).expect("marks");
    let mut pipeline = String::from("jobs:\n");
    for i in 0..8 {
        pipeline.push_str(&format!(
            "  step{i}:\n    run: echo step{i} >> {}/ran && sleep 0.2\n",
            marks.to_str().expect("utf8")
        ));
        if i > 0 {
            pipeline.push_str(&format!("    needs: [step{}]\n", i - 1));
        }
    }
    let repo = Repo::new(scratch.join("repo"));
    repo.write(".warren.yml", &pipeline);
    let commit = repo.commit("a chain");

    let data = scratch.join("dispatcher-data");
    let mut dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    // One runner: a job published twice (the dispatcher killed between
    // the broker's confirm and marking it sent) would reach it again, and
    // it must not run it twice.
    let _runner = runner(&ns, &scratch, "r1", &[]);
    let _observer = observer(&ns, &scratch, repo.path_str(), &[]);

    // Kill the dispatcher each time another step has run, until the
    // chain is done: results wait in the broker, released jobs in the
    // outbox, and the next dispatcher goes on from there.
    let mut kills = 0;
    for step in 1..8 {
        wait_for(
            &format!("step {step} to run"),
            Duration::from_secs(60),
            || {
                let ran = std::fs::read_to_string(marks.join("ran")).unwrap_or_default();
                (ran.lines().count() >= step).then_some(())
            },
        );
        if step % 2 == 1 {
            dispatcher.proc.signal(libc::SIGKILL);
            dispatcher.proc.wait_exit(Duration::from_secs(10));
            kills += 1;
            dispatcher = Dispatcher::start_at(&ns, &scratch, data.clone(), &[], &[]);
        }
    }
    assert!(kills >= 3);
    let view = wait_verdict(&dispatcher.api(), &commit, Duration::from_secs(120));
    assert_eq!(view["status"], "passed", "{view:#}");
    let ran = std::fs::read_to_string(marks.join("ran")).expect("marks");
    let lines: Vec<&str> = ran.lines().collect();
    let expected: Vec<String> = (0..8).map(|i| format!("step{i}")).collect();
    assert_eq!(lines, expected, "each step ran once, in order");
    for job in view["jobs"].as_array().expect("jobs") {
        assert_eq!(job["attempts"], 1, "{job}");
    }
}
