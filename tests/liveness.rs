//! Issue 12, "Liveness": nothing hangs forever and nothing dies in silence.
//! A git server that accepts and never answers, used by a runner, the
//! observer and the API's trigger; a dispatcher stopped with live-view
//! clients connected; a runner whose control consumer is cancelled under
//! it; `warren up` with a crashing child and a second Ctrl-C.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::*;

/// Publishes jobs straight to the namespace's jobs exchange, as an
/// observer would.
fn publish_jobs(ns: &Namespace, jobs: &[model::Job]) {
    let exchange = broker::Names::new(ns.name.clone()).jobs_exchange();
    let messages: Vec<(String, String, Vec<u8>)> = jobs
        .iter()
        .map(|job| {
            (
                exchange.clone(),
                String::new(),
                broker::message::encode(job),
            )
        })
        .collect();
    publish_raw(ns, &messages);
}

#[test]
fn a_stalled_git_server_ends_the_job_as_error_and_the_runner_takes_the_next() {
    let ns = Namespace::new("stalled-runner");
    let scratch = Scratch::new();
    let server = StalledServer::start();
    let dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let _runner = runner(
        &ns,
        &scratch,
        "r1",
        &["--git-timeout", "1", "--test-command", "true"],
    );
    let stalled_commit = "a".repeat(40);
    let clock = Instant::now();
    publish_jobs(
        &ns,
        &[model::Job::try_new(&server.url, "main", &stalled_commit).expect("a valid job")],
    );
    let api = dispatcher.api();
    let jobs = api.wait_terminal(
        std::slice::from_ref(&stalled_commit),
        Duration::from_secs(60),
    );
    let job = one_job(&jobs, &stalled_commit);
    assert_eq!(job["status"], "error", "{job}");
    let reason = job["reason"].as_str().unwrap_or_default();
    for needle in [
        "cannot be reached",
        "git clone",
        "timed out after 1 s and was killed",
        "after 3 tries",
    ] {
        assert!(reason.contains(needle), "{needle:?} in {reason:?}");
    }
    // Three tries of one second each, and the backoff between them.
    assert!(clock.elapsed() < Duration::from_secs(30), "{clock:?}");

    // The same runner goes on with the next job.
    let repo = Repo::new(scratch.join("repo"));
    repo.write(".warren-test", "true");
    let good = repo.commit("a normal commit");
    publish_jobs(
        &ns,
        &[model::Job::try_new(repo.path_str(), "main", &good).expect("a valid job")],
    );
    let jobs = api.wait_terminal(std::slice::from_ref(&good), Duration::from_secs(60));
    let job = one_job(&jobs, &good);
    assert_eq!(
        (job["status"].as_str(), job["runner"].as_str()),
        (Some("passed"), Some("r1")),
        "{job}"
    );
}

#[test]
fn an_observer_on_a_stalled_server_logs_each_timeout_and_keeps_polling() {
    let ns = Namespace::new("stalled-observer");
    let scratch = Scratch::new();
    let server = StalledServer::start();
    let mut observer = observer(&ns, &scratch, &server.url, &["--git-timeout", "1"]);
    let needle = "timed out after 1 s and was killed";
    wait_for(
        "the observer to log the timeout twice",
        Duration::from_secs(30),
        || (log_count(&observer, needle) >= 2).then_some(()),
    );
    let log = observer.log_text();
    assert!(log.contains("git clone"), "{log}");
    let child = observer.child.as_mut().expect("running");
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the observer keeps running: {log}"
    );
    // It still stops cleanly.
    observer.signal(libc::SIGTERM);
    assert!(observer.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn a_trigger_on_a_stalled_server_answers_504_within_the_git_timeout() {
    let ns = Namespace::new("stalled-trigger");
    let scratch = Scratch::new();
    let server = StalledServer::start();
    let dispatcher = Dispatcher::start(&ns, &scratch, &["--git-timeout", "1"]);
    let clock = Instant::now();
    let response = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
        .post(format!("{}/api/trigger", dispatcher.url))
        .json(&serde_json::json!({ "target": "main", "repo": server.url }))
        .send()
        .expect("an answer");
    let elapsed = clock.elapsed();
    assert_eq!(response.status().as_u16(), 504);
    let body: serde_json::Value = response.json().expect("a JSON body");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("timed out"), "{body}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    // The API still answers.
    assert!(dispatcher.api().get_text("/healthz").is_ok());
}

#[test]
fn a_dispatcher_with_two_live_view_clients_stops_within_two_seconds() {
    let ns = Namespace::new("sse-stop");
    let scratch = Scratch::new();
    let mut dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let api = dispatcher.api();
    wait_for(
        "the dispatcher to be ready",
        Duration::from_secs(30),
        || api.get_json("/readyz").ok(),
    );
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    // `send` returns once the response head arrived: the stream is open.
    let streams: Vec<reqwest::blocking::Response> = (0..2)
        .map(|_| {
            let response = client
                .get(format!("{}/api/events", dispatcher.url))
                .send()
                .expect("live view connected");
            assert!(response.status().is_success());
            response
        })
        .collect();
    dispatcher.proc.signal(libc::SIGTERM);
    let status = dispatcher.proc.wait_exit(Duration::from_secs(2));
    assert!(status.success(), "{status}: {}", dispatcher.proc.log_text());
    // Each stream was ended by the server, not cut off.
    for mut stream in streams {
        let mut rest = String::new();
        stream
            .read_to_string(&mut rest)
            .expect("the stream ends cleanly");
    }
}

/// The runners' private queues bound to the namespace's control exchange:
/// one per runner session (from the management API). The dispatcher's
/// durable copy (`N.dispatcher.control`) is bound there too, and left out.
fn control_queues(ns: &Namespace) -> Vec<String> {
    let names = broker::Names::new(ns.name.clone());
    let url = format!(
        "http://127.0.0.1:15672/api/exchanges/%2f/{}/bindings/source",
        names.control_exchange()
    );
    let bindings: Vec<serde_json::Value> = reqwest::blocking::Client::new()
        .get(url)
        .basic_auth("guest", Some("guest"))
        .timeout(Duration::from_secs(10))
        .send()
        .and_then(|r| r.json())
        .unwrap_or_default();
    bindings
        .iter()
        .filter_map(|b| b["destination"].as_str().map(str::to_string))
        .filter(|queue| *queue != names.dispatcher_control_queue())
        .collect()
}

#[test]
fn a_runner_whose_control_consumer_is_cancelled_starts_a_new_session() {
    let ns = Namespace::new("control-cancelled");
    let scratch = Scratch::new();
    let mut runner = runner(&ns, &scratch, "r1", &[]);
    let first = wait_for(
        "the runner's control queue",
        Duration::from_secs(30),
        || control_queues(&ns).first().cloned(),
    );
    // The broker cancels the runner's control consumer; its connection,
    // and the work queue's consumer, stay up.
    let deleted = rabbit::shared_ctl(&["delete_queue", &first]);
    assert!(
        deleted.status.success(),
        "{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    wait_for(
        "a new session, with a new control queue",
        Duration::from_secs(30),
        || control_queues(&ns).into_iter().find(|q| *q != first),
    );
    let log = runner.log_text();
    assert!(
        log.contains("the control watcher ended while the connection is up"),
        "{log}"
    );
    let child = runner.child.as_mut().expect("running");
    assert!(child.try_wait().expect("try_wait").is_none(), "{log}");
}

#[test]
fn warren_up_restarts_a_crashing_child_with_growing_delays() {
    let ns = Namespace::new("up-backoff");
    let scratch = Scratch::new();
    let repo = Repo::new(scratch.join("repo"));
    repo.commit("initial");
    let data = scratch.join("up-data");
    // The observer cannot listen for webhooks on a port in use: it exits
    // at start each time.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hooks = taken.local_addr().expect("addr").to_string();
    let http = format!("127.0.0.1:{}", free_port());
    let mut up = Proc::spawn(
        "up",
        &ns,
        &scratch,
        &[
            "up",
            repo.path_str(),
            "--runners",
            "1",
            "--http",
            &http,
            "--hooks-http",
            &hooks,
            "--data-dir",
            data.to_str().expect("utf8"),
        ],
        &[],
    );
    let delays = [
        "restarting in 0.5 s",
        "restarting in 1 s",
        "restarting in 2 s",
    ];
    wait_for(
        "three restarts, each after a longer wait",
        Duration::from_secs(30),
        || {
            delays
                .iter()
                .all(|d| up.log_text().contains(d))
                .then_some(())
        },
    );
    let log = up.log_text();
    let at = |needle: &str| log.find(needle).expect("logged");
    assert!(at(delays[0]) < at(delays[1]) && at(delays[1]) < at(delays[2]));
    assert!(log.contains("observer exited"), "{log}");
    up.signal(libc::SIGINT);
    assert!(up.wait_exit(Duration::from_secs(20)).success());
    assert!(processes_matching(data.to_str().expect("utf8")).is_empty());
}

#[test]
fn a_second_ctrl_c_stops_warren_up_and_every_child_at_once() {
    let ns = Namespace::new("up-twice");
    let scratch = Scratch::new();
    let repo = Repo::new(scratch.join("repo"));
    // `exec`: the test is this very process, so it can be found, and it
    // dies with its runner (the runner gives its shell a parent-death
    // signal).
    let test = format!("sleep 60.{}", std::process::id());
    repo.write(".warren-test", &format!("exec {test}"));
    let commit = repo.commit("a long test");
    let data = scratch.join("up-data");
    let marker = data.to_str().expect("utf8").to_string();
    let http = format!("127.0.0.1:{}", free_port());
    let mut up = Proc::spawn(
        "up",
        &ns,
        &scratch,
        &[
            "up",
            repo.path_str(),
            "--runners",
            "1",
            "--interval",
            "0.2",
            "--http",
            &http,
            "--hooks-http",
            &format!("127.0.0.1:{}", free_port()),
            "--data-dir",
            &marker,
        ],
        &[],
    );
    let api = Api::new(&format!("http://{http}"));
    wait_for("the dashboard", Duration::from_secs(30), || {
        api.get_text("/healthz").ok()
    });
    wait_running(&api, &commit);
    assert!(
        processes_matching(&marker).len() >= 4,
        "up and its children"
    );
    wait_for("the test to run", Duration::from_secs(10), || {
        (!processes_matching(&test).is_empty()).then_some(())
    });

    // The first Ctrl-C: the runner holds its job for its grace period.
    up.signal(libc::SIGINT);
    wait_for(
        "the runner to start its grace period",
        Duration::from_secs(10),
        || {
            up.log_text()
                .contains("letting the current job finish")
                .then_some(())
        },
    );
    // The second: everything stops now.
    let clock = Instant::now();
    up.signal(libc::SIGINT);
    up.wait_exit(Duration::from_secs(4));
    assert!(clock.elapsed() < Duration::from_secs(4));
    wait_for("no child left", Duration::from_secs(2), || {
        (processes_matching(&marker).is_empty() && processes_matching(&test).is_empty())
            .then_some(())
    });
}
