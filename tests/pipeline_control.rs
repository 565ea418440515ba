//! Issue 16: controlling a pipeline by hand and by push — `warren cancel`
//! (a running job's process tree killed, the job `canceled`, its
//! dependents `skipped`), `warren rerun --failed` (only what did not pass
//! runs again), and `cancel_superseded: true` (a newer push cancels the
//! older pipeline of its branch). Real broker, real git, the real binary;
//! runners without the sandbox, so jobs can leave marks in the scratch
//! folder.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

const WITHIN: Duration = Duration::from_secs(90);

fn warren(server: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(WARREN)
        .args(args)
        .env("WARREN_SERVER", server)
        .env_remove("WARREN_API_TOKEN")
        .output()
        .expect("run warren");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `GET /api/commits/{sha}` once it answers.
fn commit_view(api: &Api, commit: &str) -> Option<Value> {
    api.get_json(&format!("/api/commits/{commit}")).ok()
}

/// The current job of each name (the newest), as (name → job).
fn current_jobs(view: &Value) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = Vec::new();
    for job in view["jobs"].as_array().into_iter().flatten() {
        let name = job["name"].as_str().unwrap_or_default().to_string();
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = job.clone(),
            None => out.push((name, job.clone())),
        }
    }
    out
}

fn status_of(view: &Value, name: &str) -> String {
    current_jobs(view)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, job)| job["status"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

/// Waits for the commit's verdict to be `verdict`; returns the view.
fn wait_verdict(api: &Api, commit: &str, verdict: &str) -> Value {
    wait_for(&format!("{commit} to be {verdict}"), WITHIN, || {
        commit_view(api, commit).filter(|view| view["status"] == verdict)
    })
}

/// Whether a process is gone (or a zombie waiting to be reaped).
fn process_gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

#[test]
fn cancel_kills_a_running_jobs_process_tree_and_skips_its_dependents() {
    require_broker();
    let ns = Namespace::new("pipe-cancel");
    let scratch = Scratch::new();
    let pid_file = scratch.join("slow.pid");
    let repo = Repo::new(scratch.join("repo"));
    repo.write(
        ".warren.yml",
        &format!(
            "jobs:\n  slow:\n    run: sleep 600 & echo $! > {}; wait\n  after:\n    run: \"true\"\n    needs: [slow]\n  elsewhere:\n    run: \"true\"\n    queue: nobody\n",
            path(&pid_file)
        ),
    );
    let commit = repo.commit("a slow pipeline");
    let dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let server = dispatcher.url.clone();
    let api = dispatcher.api();
    let _runner = runner(&ns, &scratch, "r1", &[]);
    let _observer = observer(&ns, &scratch, repo.path_str(), &[]);

    wait_for("slow to run its sleep", WITHIN, || {
        let view = commit_view(&api, &commit)?;
        (status_of(&view, "slow") == "running" && pid_file.exists()).then_some(())
    });
    let sleep_pid = wait_for("the sleep's pid", WITHIN, || {
        let text = std::fs::read_to_string(&pid_file).ok()?;
        let pid = text.trim().to_string();
        (!pid.is_empty()).then_some(pid)
    });
    assert!(!process_gone(&sleep_pid), "the sleep runs");
    let view = commit_view(&api, &commit).expect("view");
    assert_eq!(status_of(&view, "after"), "waiting", "{view}");

    let slow_id = current_jobs(&view)
        .into_iter()
        .find(|(n, _)| n == "slow")
        .and_then(|(_, job)| job["id"].as_str().map(str::to_string))
        .expect("slow's id");

    // One job: it stops, its dependent is skipped, the rest goes on.
    let (code, out, err) = warren(&server, &["cancel", &slow_id]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("canceled job {slow_id}")), "{out}");
    let view = commit_view(&api, &commit).expect("view");
    assert_eq!(status_of(&view, "slow"), "canceled", "{view}");
    assert_eq!(status_of(&view, "after"), "skipped", "{view}");
    assert_eq!(status_of(&view, "elsewhere"), "queued", "{view}");
    assert_eq!(view["status"], "running", "{view}");
    wait_for("the test's process tree to be killed", WITHIN, || {
        process_gone(&sleep_pid).then_some(())
    });

    // The commit: every job that has not ended (here one nobody serves).
    let (code, out, err) = warren(&server, &["cancel", &commit[..10]]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("canceled job"), "{out}");
    let view = wait_verdict(&api, &commit, "canceled");
    assert_eq!(status_of(&view, "elsewhere"), "canceled", "{view}");
    // The runner acked the job without a result: it stays canceled.
    let (_, slow) = current_jobs(&view)
        .into_iter()
        .find(|(n, _)| n == "slow")
        .expect("slow");
    assert_eq!(slow["reason"], "canceled by hand", "{slow}");

    // show: the verdict and each job; non-zero since it did not pass.
    let (code, shown, _) = warren(&server, &["show", &commit]);
    assert_eq!(code, 1, "{shown}");
    assert!(shown.contains("canceled"), "{shown}");
    assert!(shown.contains("slow") && shown.contains("after"), "{shown}");
    assert!(shown.contains("skipped: slow did not pass"), "{shown}");
    // Nothing left to cancel.
    let (code, _, err) = warren(&server, &["cancel", &commit]);
    assert_ne!(code, 0);
    assert!(err.contains("nothing to cancel"), "{err}");
}

#[test]
fn rerun_failed_runs_only_the_failed_job_and_its_skipped_dependent() {
    require_broker();
    let ns = Namespace::new("pipe-rerun");
    let scratch = Scratch::new();
    let result = scratch.join("result.txt");
    let lint_runs = scratch.join("lint.runs");
    std::fs::write(&result, "fail\n").expect("write");
    let repo = Repo::new(scratch.join("repo"));
    repo.write(
        ".warren.yml",
        &format!(
            "jobs:\n  lint:\n    run: echo run >> {}\n  test:\n    run: grep -q pass {}\n    needs: [lint]\n  deploy:\n    run: \"true\"\n    needs: [test]\n",
            path(&lint_runs),
            path(&result)
        ),
    );
    let commit = repo.commit("a pipeline whose test fails at first");
    let dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let server = dispatcher.url.clone();
    let api = dispatcher.api();
    let _runner = runner(&ns, &scratch, "r1", &[]);
    let _observer = observer(&ns, &scratch, repo.path_str(), &[]);

    let view = wait_verdict(&api, &commit, "failed");
    assert_eq!(status_of(&view, "lint"), "passed", "{view}");
    assert_eq!(status_of(&view, "test"), "failed", "{view}");
    assert_eq!(status_of(&view, "deploy"), "skipped", "{view}");

    std::fs::write(&result, "pass\n").expect("write");
    let (code, out, err) = warren(&server, &["rerun", "--failed", &commit]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("running 2 job(s) again"), "{out}");
    assert!(
        out.contains("test") && out.contains("deploy") && !out.contains("lint"),
        "{out}"
    );

    let view = wait_verdict(&api, &commit, "passed");
    assert_eq!(status_of(&view, "test"), "passed", "{view}");
    assert_eq!(status_of(&view, "deploy"), "passed", "{view}");
    // plan, lint, test, deploy, and the copies of test and deploy.
    assert_eq!(view["jobs"].as_array().map(Vec::len), Some(6), "{view}");
    let runs = std::fs::read_to_string(&lint_runs).expect("lint ran");
    assert_eq!(runs.lines().count(), 1, "lint ran once: {runs:?}");
    let (code, shown, _) = warren(&server, &["show", &commit]);
    assert_eq!(code, 0, "{shown}");

    // Nothing failed now.
    let (code, _, err) = warren(&server, &["rerun", "--failed", &commit]);
    assert_ne!(code, 0);
    assert!(err.contains("nothing to run again"), "{err}");
}

#[test]
fn a_newer_push_cancels_the_older_pipeline_of_its_branch_with_cancel_superseded() {
    require_broker();
    let ns = Namespace::new("pipe-supersede");
    let scratch = Scratch::new();
    let pid_file = scratch.join("first.pid");
    let repo = Repo::new(scratch.join("repo"));
    // The first commit's job sleeps (recording its sleep's pid); the
    // second's passes at once.
    repo.write(
        ".warren.yml",
        &format!(
            "cancel_superseded: true\njobs:\n  work:\n    run: if grep -q second value.txt; then exit 0; fi; sleep 600 & echo $! > {}; wait\n",
            path(&pid_file)
        ),
    );
    repo.write("value.txt", "first\n");
    let first = repo.commit("first");
    let dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let api = dispatcher.api();
    let _r1 = runner(&ns, &scratch, "r1", &[]);
    let _r2 = runner(&ns, &scratch, "r2", &[]);
    let _observer = observer(&ns, &scratch, repo.path_str(), &[]);

    wait_for("the first commit's job to run", WITHIN, || {
        let view = commit_view(&api, &first)?;
        (status_of(&view, "work") == "running" && pid_file.exists()).then_some(())
    });
    let sleep_pid = wait_for("the sleep's pid", WITHIN, || {
        let pid = std::fs::read_to_string(&pid_file).ok()?.trim().to_string();
        (!pid.is_empty()).then_some(pid)
    });

    repo.write("value.txt", "second\n");
    let second = repo.commit("second");
    wait_verdict(&api, &second, "passed");
    let view = wait_verdict(&api, &first, "canceled");
    let (_, work) = current_jobs(&view)
        .into_iter()
        .find(|(n, _)| n == "work")
        .expect("work");
    assert_eq!(work["status"], "canceled", "{view}");
    assert_eq!(
        work["reason"].as_str(),
        Some(format!("canceled: superseded by {second}").as_str()),
        "{work}"
    );
    wait_for("the first job's process tree to be killed", WITHIN, || {
        process_gone(&sleep_pid).then_some(())
    });
}
