//! Issue 5: the JSON API and the `warren` client commands against a real
//! dispatcher, runner and observer.

mod common;

use std::io::Read;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn warren(server: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(WARREN)
        .args(args)
        .env("WARREN_SERVER", server)
        .env_remove("WARREN_API_TOKEN")
        .envs(env.iter().copied())
        .output()
        .expect("run warren");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_shows_logs_reruns_triggers_and_exits_non_zero_on_failure() {
    let ns = Namespace::new("cli");
    let scratch = Scratch::new();
    let repo = Repo::new(scratch.join("repo"));
    repo.write(".warren-test", "cat result.txt; grep -q pass result.txt");
    repo.write("result.txt", "pass\n");
    let good = repo.commit("a passing commit");
    let token = "test-token-123";
    let dispatcher = Dispatcher::start_with_env(&ns, &scratch, &[], &[("WARREN_API_TOKEN", token)]);
    let server = dispatcher.url.clone();
    let _runner = runner(&ns, &scratch, "r1", &[]);
    let _observer = observer(&ns, &scratch, repo.path_str(), &[]);
    let api = dispatcher.api();
    api.wait_terminal(std::slice::from_ref(&good), Duration::from_secs(60));
    repo.write("result.txt", "fail\n");
    let bad = repo.commit("a failing commit");
    let jobs = api.wait_terminal(std::slice::from_ref(&bad), Duration::from_secs(60));
    let bad_id = jobs[&bad][0]["id"].as_str().expect("id").to_string();

    // status: a table and JSON.
    let (code, table, _) = warren(&server, &["status"], &[]);
    assert_eq!(code, 0);
    assert!(
        table.contains(&bad_id) && table.contains("failed") && table.contains("a failing commit"),
        "{table}"
    );
    let (_, json, _) = warren(&server, &["status", "--json", "--status", "passed"], &[]);
    let listed: Value = serde_json::from_str(&json).expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");

    // show and log: exit status follows the job's outcome.
    let (code, shown, _) = warren(&server, &["show", &bad[..10]], &[]);
    assert_eq!(code, 1, "a failed job exits non-zero: {shown}");
    assert!(shown.contains(&bad), "{shown}");
    let (code, _, _) = warren(&server, &["show", &good], &[]);
    assert_eq!(code, 0);
    let (code, log, _) = warren(&server, &["log", &bad_id], &[]);
    assert_eq!(code, 1);
    assert!(log.contains("fail"), "{log}");

    // runners.
    let (code, runners, _) = warren(&server, &["runners"], &[]);
    assert_eq!(code, 0);
    assert!(
        runners.contains("r1") && runners.contains("online"),
        "{runners}"
    );

    // rerun and trigger need the token when it is set.
    let (code, _, err) = warren(&server, &["rerun", &bad_id], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("token"), "{err}");
    let (code, out, err) = warren(&server, &["rerun", &bad_id], &[("WARREN_API_TOKEN", token)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("rerun of"), "{out}");
    let (code, out, err) = warren(
        &server,
        &["trigger", "main"],
        &[("WARREN_API_TOKEN", token)],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&bad),
        "trigger resolved main to its head: {out}"
    );
    wait_for(
        "the rerun and the triggered job to finish",
        Duration::from_secs(60),
        || {
            let jobs = api.jobs_by_commit();
            let for_bad = jobs.get(&bad)?;
            (for_bad.len() == 3 && for_bad.iter().all(is_terminal)).then_some(())
        },
    );
    let (code, _, err) = warren(
        &server,
        &["trigger", "no-such-branch"],
        &[("WARREN_API_TOKEN", token)],
    );
    assert_ne!(code, 0);
    assert!(err.contains("no branch"), "{err}");

    // log --follow prints the output while the test runs (the test waits
    // for a file the test writes only once the first line was followed),
    // then exits with the outcome.
    let go = scratch.join("go");
    repo.write(
        ".warren-test",
        &format!(
            "echo first line; while [ ! -e {} ]; do sleep 0.1; done; echo second line",
            go.display()
        ),
    );
    let slow = repo.commit("slow");
    wait_for("the slow job to be queued", Duration::from_secs(30), || {
        api.jobs_by_commit().get(&slow).cloned()
    });
    let mut follow = Proc::spawn(
        "follow",
        &ns,
        &scratch,
        &["log", "--follow", &slow],
        &[("WARREN_SERVER", server.as_str())],
    );
    // Lines of the output itself (the log's header repeats the command).
    let lines = |text: &str, line: &str| text.lines().filter(|l| *l == line).count();
    wait_for("the first line, live", Duration::from_secs(30), || {
        (lines(&follow.log_text(), "first line") == 1).then_some(())
    });
    assert_eq!(
        api.jobs_by_commit()[&slow][0]["status"],
        "running",
        "the first line was shown before the test finished"
    );
    std::fs::write(&go, "").expect("let the test finish");
    let status = follow.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    let followed = follow.log_text();
    assert_eq!(lines(&followed, "first line"), 1, "{followed}");
    assert_eq!(lines(&followed, "second line"), 1, "{followed}");
    assert!(
        !followed.contains("warren: the"),
        "printed whole again: {followed}"
    );

    // A bad flag is one line naming it.
    let (code, _, err) = warren(&server, &["status", "--limit", "zero"], &[]);
    assert_eq!(code, 2);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--limit"), "{err}");
}

#[test]
fn metrics_health_readiness_and_live_events() {
    let ns = Namespace::new("metrics");
    let scratch = Scratch::new();
    let repo = Repo::new(scratch.join("repo"));
    repo.write(".warren-test", "true");
    let first = repo.commit("first");
    let dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let _runner = runner(&ns, &scratch, "r1", &[]);
    let _observer = observer(&ns, &scratch, repo.path_str(), &[]);
    let api = dispatcher.api();
    api.wait_terminal(std::slice::from_ref(&first), Duration::from_secs(60));

    assert_eq!(api.get_text("/healthz").expect("healthz").trim(), "ok");
    let ready = wait_for("readiness", Duration::from_secs(30), || {
        api.get_json("/readyz").ok()
    });
    assert_eq!(ready["broker_connected"], true);
    assert_eq!(ready["store_writable"], true);
    let metrics = api.get_text("/metrics").expect("metrics");
    for needle in [
        "warren_jobs{status=\"passed\"} 1",
        "warren_job_duration_seconds_count 1",
        "warren_queue_wait_seconds_bucket",
        "warren_runners_online 1",
        "warren_dead_lettered_jobs 0",
    ] {
        assert!(metrics.contains(needle), "{needle} in {metrics}");
    }
    let queue = api.get_json("/api/queue").expect("queue");
    assert_eq!(queue["consumers"], 1, "{queue}");

    // Server-sent events: a new commit shows up without polling.
    let mut events = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
        .get(format!("{}/api/events", dispatcher.url))
        .send()
        .expect("events");
    let second = repo.commit("second");
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !(seen.contains(&second) && seen.contains("\"status\":\"passed\"")) {
        let n = events.read(&mut buf).expect("read events");
        assert!(n > 0, "event stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("event: job"), "{seen}");
}
