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
    // How the runner isolates jobs: on its row, and on each job it ran.
    let listed = api.get_json("/api/runners").expect("runners");
    let sandbox = listed[0]["sandbox"]
        .as_str()
        .expect("a sandbox")
        .to_string();
    assert!(["bwrap", "none"].contains(&sandbox.as_str()), "{listed}");
    assert_eq!(jobs[&bad][0]["sandbox"], sandbox.as_str());
    let r1 = runners
        .lines()
        .find(|line| line.starts_with("r1"))
        .expect("r1's row");
    assert!(
        r1.split_whitespace().any(|word| word == sandbox),
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
    // Counters kept as jobs change; every outcome there from the start.
    let expected = [
        "# TYPE warren_jobs_finished_total counter",
        "warren_jobs_finished_total{status=\"passed\"} 1",
        "warren_jobs_finished_total{status=\"failed\"} 0",
        "warren_jobs_finished_total{status=\"error\"} 0",
        "warren_jobs_finished_total{status=\"timeout\"} 0",
        "warren_job_duration_seconds_count 1",
        "warren_queue_wait_seconds_bucket",
        "# TYPE warren_dead_lettered_jobs_total counter",
        "warren_dead_lettered_jobs_total 0",
        "# TYPE warren_duplicate_results_total counter",
    ];
    let metrics = api.get_text("/metrics").expect("metrics");
    for needle in expected {
        assert!(metrics.contains(needle), "{needle} in {metrics}");
    }
    // Gauges are sampled every 2 s.
    wait_for("the runner counted online", Duration::from_secs(10), || {
        let metrics = api.get_text("/metrics").ok()?;
        metrics.contains("warren_runners_online 1").then_some(())
    });
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
    drop(events);

    // A restarted dispatcher starts its counters from the store.
    let mut dispatcher = dispatcher;
    dispatcher.proc.kill();
    let again = Dispatcher::start_at(&ns, &scratch, dispatcher.data_dir.clone(), &[], &[]);
    let metrics = again.api().get_text("/metrics").expect("metrics");
    assert!(
        metrics.contains("warren_jobs_finished_total{status=\"passed\"} 2"),
        "{metrics}"
    );
}

/// One raw answer: status, headers and the JSON body.
fn answer(response: reqwest::blocking::Response) -> (u16, reqwest::header::HeaderMap, Value) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().expect("body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status {status}: the body is not JSON ({e}): {text:?}"));
    (status, headers, body)
}

#[test]
fn every_api_error_is_json_with_the_status_that_says_what_went_wrong() {
    let ns = Namespace::new("http-errors");
    let scratch = Scratch::new();
    let token = "t0ken";
    let dispatcher = Dispatcher::start_with_env(&ns, &scratch, &[], &[("WARREN_API_TOKEN", token)]);
    let api = dispatcher.api();
    // Two jobs whose commits share their first 7 digits.
    let commits = [
        format!("1234567a{}", "0".repeat(32)),
        format!("1234567b{}", "0".repeat(32)),
    ];
    let names = broker::Names::new(ns.name.clone());
    publish_raw(
        &ns,
        &commits
            .iter()
            .map(|c| {
                let job = model::Job::try_new("/srv/repo", "main", c).expect("a valid job");
                (
                    names.jobs_exchange(),
                    String::new(),
                    broker::message::encode(&job),
                )
            })
            .collect::<Vec<_>>(),
    );
    wait_for("both jobs queued", Duration::from_secs(30), || {
        (api.jobs().len() == 2).then_some(())
    });
    let http = reqwest::blocking::Client::new();
    let url = |path: &str| format!("{}{path}", dispatcher.url);
    let get = |path: &str| answer(http.get(url(path)).send().expect("GET"));

    for (query, names_it) in [
        ("status=bogus", "status"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("before=abc", "before"),
        ("before=-1", "before"),
    ] {
        let (status, _, body) = get(&format!("/api/jobs?{query}"));
        assert_eq!(status, 400, "{query}: {body}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(message.starts_with(names_it), "{query}: {body}");
    }
    assert_eq!(get("/api/jobs?limit=1000").0, 200);
    assert_eq!(get("/api/jobs?limit=1").2.as_array().map(Vec::len), Some(1));

    // 404 and 409.
    assert_eq!(get("/api/jobs/no-such-job").0, 404);
    assert_eq!(get("/no/such/path").0, 404);
    let (status, _, body) = get("/api/jobs/1234567");
    assert_eq!(status, 409, "{body}");
    let mut listed: Vec<&str> = body["commits"]
        .as_array()
        .expect("the commits")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    listed.sort_unstable();
    assert_eq!(listed, [commits[0].as_str(), commits[1].as_str()]);
    assert_eq!(get("/api/jobs/1234567a").0, 200, "more digits settle it");

    // 401 with the challenge; the scheme is case-insensitive.
    let rerun = url(&format!("/api/jobs/{}/rerun", &commits[0][..10]));
    let (status, headers, body) = answer(http.post(&rerun).send().expect("POST"));
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer realm=\"warren\"")
    );
    let (status, _, body) = answer(
        http.post(&rerun)
            .header("authorization", format!("bearer {token}"))
            .send()
            .expect("POST"),
    );
    assert_eq!(status, 202, "{body}");

    // 405 with Allow; bodies that are not the JSON asked for.
    let (status, headers, body) = answer(http.delete(url("/api/jobs")).send().expect("DELETE"));
    assert_eq!(status, 405, "{body}");
    let allow = headers
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(allow.contains("GET"), "Allow: {allow:?}");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("Allow")),
        "{body}"
    );
    let trigger = url("/api/trigger");
    let with_token = |request: reqwest::blocking::RequestBuilder| request.bearer_auth(token);
    let (status, _, body) = answer(
        with_token(http.post(&trigger))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .expect("POST"),
    );
    assert_eq!(status, 400, "{body}");
    let (status, _, body) = answer(
        with_token(http.post(&trigger))
            .body("x")
            .send()
            .expect("POST"),
    );
    assert_eq!(status, 415, "{body}");

    // The queue's management link names no user to anyone.
    let (status, _, body) = get("/api/queue");
    assert_eq!(status, 200, "{body}");
    let link = body["management_ui"].as_str().unwrap_or_default();
    assert!(!link.contains("guest") && !link.contains('@'), "{link}");
}
