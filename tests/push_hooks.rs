//! Issue 15: pushes. The observer, watching the registry, receives each
//! forge's signed push on `POST /hooks/NAME` and queues one job per pushed
//! commit, each confirmed before it answers `202`; a redelivery, a wrong
//! signature, an unknown repository, a deleted branch, a tag, a ping and a
//! body over 25 MiB each get their answer and queue nothing; a push cut
//! short (GitLab lists 20) is completed from the repository; with the
//! broker unreachable the answer is `503` and the forge's retry loses
//! nothing. Polls and pushes of several repositories at once give every
//! commit exactly one job, attributed to its repository, and a bare
//! repository's `warren hook post-receive` does what a forge does.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const API_TOKEN: &str = "push-hooks-token";
const SECRET_VAR: &str = "WARREN_TEST_HOOK_SECRET";
/// GitHub's documented example secret.
const SECRET: &str = "It's a Secret to Everybody";
const ZERO: &str = "0000000000000000000000000000000000000000";

#[test]
fn githubs_documented_signature_vector_holds() {
    assert_eq!(
        forge::sign(SECRET.as_bytes(), b"Hello, World!"),
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    );
}

/// A dispatcher, and an observer for its registry with the webhook secret
/// in its environment.
struct Warren {
    dispatcher: Dispatcher,
    observer: Proc,
    /// `http://ADDRESS` of the observer's webhooks.
    hooks: String,
}

impl Warren {
    fn start(ns: &Namespace, scratch: &Scratch) -> Warren {
        Warren::start_with(ns, scratch, &[])
    }

    /// With `extra` arguments for the observer.
    fn start_with(ns: &Namespace, scratch: &Scratch, extra: &[&str]) -> Warren {
        let dispatcher =
            Dispatcher::start_with_env(ns, scratch, &[], &[("WARREN_API_TOKEN", API_TOKEN)]);
        let address = format!("127.0.0.1:{}", free_port());
        let observer = registry_observer(ns, scratch, &dispatcher.url, &address, extra);
        let hooks = format!("http://{address}");
        wait_for("the observer's webhooks", Duration::from_secs(20), || {
            post(&hooks, "/hooks", &[], b"").ok()
        });
        Warren {
            dispatcher,
            observer,
            hooks,
        }
    }

    /// Stops the observer (SIGKILL) and starts it again, on the same state
    /// and address, with `extra` arguments.
    fn restart_observer(&mut self, ns: &Namespace, scratch: &Scratch, extra: &[&str]) {
        self.observer.kill();
        let address = self.hooks.trim_start_matches("http://").to_string();
        self.observer = registry_observer(ns, scratch, &self.dispatcher.url, &address, extra);
    }

    fn api(&self) -> Api {
        self.dispatcher.api()
    }

    /// Puts a repository in the registry, as `warren repo add` does.
    fn register(&self, name: &str, url: &str, poll_secs: Option<f64>, secret: bool) {
        let entry = json!({
            "name": name,
            "url": url,
            "poll_secs": poll_secs,
            "webhook_secret_env": secret.then_some(SECRET_VAR),
        });
        let answer = reqwest::blocking::Client::new()
            .put(format!("{}/api/repos/{name}", self.dispatcher.url))
            .bearer_auth(API_TOKEN)
            .json(&entry)
            .send()
            .expect("PUT /api/repos");
        assert!(answer.status().is_success(), "{}", answer.status());
    }

    fn deliver(
        &self,
        name: &str,
        delivery: &(Vec<(&'static str, String)>, Vec<u8>),
    ) -> (u16, Value) {
        post(
            &self.hooks,
            &format!("/hooks/{name}"),
            &delivery.0,
            &delivery.1,
        )
        .expect("the observer answers")
    }

    /// The repository's jobs by commit.
    fn jobs_of(&self, name: &str) -> HashMap<String, Vec<Value>> {
        let mut jobs: HashMap<String, Vec<Value>> = HashMap::new();
        let listed = self
            .api()
            .get_json(&format!("/api/jobs?repo={name}&limit=1000"))
            .expect("jobs");
        for job in listed.as_array().expect("a list") {
            let commit = job["commit"].as_str().expect("commit").to_string();
            jobs.entry(commit).or_default().push(job.clone());
        }
        jobs
    }

    /// Waits until the repository's jobs are for exactly `commits`, one
    /// each, and none comes after (a late duplicate).
    fn expect_jobs(&self, name: &str, url: &str, commits: &[String]) {
        let mut wanted: Vec<&String> = commits.iter().collect();
        wanted.sort();
        wait_for(
            &format!("{} jobs of {name}", commits.len()),
            Duration::from_secs(30),
            || {
                let jobs = self.jobs_of(name);
                let mut have: Vec<&String> = jobs.keys().collect();
                have.sort();
                (have == wanted).then_some(())
            },
        );
        for (commit, jobs) in self.jobs_of(name) {
            assert_eq!(jobs.len(), 1, "{name}: {commit} has {} jobs", jobs.len());
            assert_eq!(jobs[0]["repo"], url, "{commit} is {name}'s");
        }
    }
}

fn registry_observer(
    ns: &Namespace,
    scratch: &Scratch,
    server: &str,
    hooks: &str,
    extra: &[&str],
) -> Proc {
    let state = scratch.join("observer-state");
    let mut args = vec![
        "observer",
        "--server",
        server,
        "--state-dir",
        state.to_str().expect("utf8"),
        "--hooks-http",
        hooks,
    ];
    args.extend_from_slice(extra);
    Proc::spawn("observer", ns, scratch, &args, &[(SECRET_VAR, SECRET)])
}

/// POSTs `body`; the answer's status and JSON.
fn post(
    base: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<(u16, Value), String> {
    let mut request = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
        .post(format!("{base}{path}"))
        .body(body.to_vec());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let answer = request.send().map_err(|e| e.to_string())?;
    let status = answer.status().as_u16();
    let text = answer.text().map_err(|e| e.to_string())?;
    let json = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
    Ok((status, json))
}

type Delivery = (Vec<(&'static str, String)>, Vec<u8>);

/// Payload commits, oldest first.
fn listed(ids: &[String]) -> Vec<Value> {
    ids.iter()
        .map(|id| json!({"id": id, "message": format!("pushed {}\n\nbody", &id[..8]), "author": {"name": "Ann"}}))
        .collect()
}

fn github(
    git_ref: &str,
    before: &str,
    after: &str,
    commits: &[String],
    delivery: &str,
    secret: &str,
) -> Delivery {
    let body =
        json!({"ref": git_ref, "before": before, "after": after, "commits": listed(commits)})
            .to_string()
            .into_bytes();
    let headers = vec![
        ("X-GitHub-Event", "push".to_string()),
        ("X-GitHub-Delivery", delivery.to_string()),
        ("X-Hub-Signature-256", forge::sign(secret.as_bytes(), &body)),
        ("Content-Type", "application/json".to_string()),
    ];
    (headers, body)
}

fn gitea(before: &str, after: &str, commits: &[String], delivery: &str) -> Delivery {
    // Gitea lists the newest first.
    let mut newest_first = listed(commits);
    newest_first.reverse();
    let body = json!({"ref": "refs/heads/main", "before": before, "after": after,
                      "commits": newest_first, "total_commits": commits.len()})
    .to_string()
    .into_bytes();
    let signature = forge::sign(SECRET.as_bytes(), &body);
    let headers = vec![
        ("X-Gitea-Event", "push".to_string()),
        ("X-Gitea-Delivery", delivery.to_string()),
        (
            "X-Gitea-Signature",
            signature.trim_start_matches("sha256=").to_string(),
        ),
        ("Content-Type", "application/json".to_string()),
    ];
    (headers, body)
}

fn gitlab(before: &str, after: &str, commits: &[String], total: usize, delivery: &str) -> Delivery {
    let body =
        json!({"object_kind": "push", "ref": "refs/heads/main", "before": before, "after": after,
                      "commits": listed(commits), "total_commits_count": total})
        .to_string()
        .into_bytes();
    let headers = vec![
        ("X-Gitlab-Event", "Push Hook".to_string()),
        ("X-Gitlab-Event-UUID", delivery.to_string()),
        ("X-Gitlab-Token", SECRET.to_string()),
        ("Content-Type", "application/json".to_string()),
    ];
    (headers, body)
}

/// A declared body over 25 MiB, sent raw: the answer comes before the body.
fn too_large(hooks: &str, name: &str) -> String {
    let address = hooks.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let head = format!(
        "POST /hooks/{name} HTTP/1.1\r\nHost: {address}\r\nX-GitHub-Event: push\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        26 * 1024 * 1024
    );
    stream.write_all(head.as_bytes()).expect("write");
    let _ = stream.write_all(&[b' '; 4096]);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn commits(repo: &Repo, count: usize, label: &str) -> Vec<String> {
    (0..count)
        .map(|i| repo.commit(&format!("{label} {i}")))
        .collect()
}

#[test]
fn each_forges_push_queues_exactly_the_pushed_commits_and_every_other_delivery_its_answer() {
    let ns = Namespace::new("push-hooks");
    let scratch = Scratch::new();
    let warren = Warren::start(&ns, &scratch);
    let repo = Repo::new(scratch.join("app"));
    let c0 = repo.commit("initial");
    // Pushed only: never polled.
    warren.register("app", repo.path_str(), None, true);
    let url = repo.path_str();

    // GitHub: the two commits after c0.
    let first = commits(&repo, 2, "github");
    let push = github("refs/heads/main", &c0, &first[1], &first, "gh-1", SECRET);
    assert_eq!(warren.deliver("app", &push), (202, json!({"queued": 2})));
    warren.expect_jobs("app", url, &first);
    let job = &warren.jobs_of("app")[&first[0]][0];
    assert_eq!(
        job["subject"],
        format!("pushed {}", &first[0][..8]),
        "from the payload"
    );
    assert_eq!(job["author"], "Ann");

    // The same delivery again (forges redeliver): nothing queued.
    let (status, answer) = warren.deliver("app", &push);
    assert_eq!((status, answer["queued"].clone()), (200, json!(0)));

    // Signed with another secret: 401 and no detail of why.
    let forged = commits(&repo, 1, "forged");
    let push = github(
        "refs/heads/main",
        &first[1],
        &forged[0],
        &forged,
        "gh-2",
        "not the secret",
    );
    assert_eq!(
        warren.deliver("app", &push),
        (401, json!({"error": "unauthorized"}))
    );
    // No signature at all.
    let (mut headers, body) = push.clone();
    headers.retain(|(name, _)| *name != "X-Hub-Signature-256");
    assert_eq!(warren.deliver("app", &(headers, body)).0, 401);
    // A repository nobody registered.
    assert_eq!(warren.deliver("nope", &push).0, 404);

    // Gitea: the forged commit (it is in the repository) and one more.
    let more = commits(&repo, 1, "gitea");
    let gitea_commits = vec![forged[0].clone(), more[0].clone()];
    let push = gitea(&first[1], &more[0], &gitea_commits, "gt-1");
    assert_eq!(warren.deliver("app", &push), (202, json!({"queued": 2})));

    // GitLab lists 20 of the 22 commits: the other 2 come from the repository.
    let many = commits(&repo, 22, "gitlab");
    let push = gitlab(&more[0], &many[21], &many[2..], 22, "gl-1");
    assert_eq!(warren.deliver("app", &push), (202, json!({"queued": 22})));

    // A deleted branch, a tag and a ping queue nothing.
    let push = github("refs/heads/main", &many[21], ZERO, &[], "gh-3", SECRET);
    assert_eq!(warren.deliver("app", &push).0, 200);
    let push = github("refs/tags/v1", ZERO, &many[21], &[], "gh-4", SECRET);
    assert_eq!(warren.deliver("app", &push).0, 200);
    let body = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#.to_vec();
    let ping = (
        vec![
            ("X-GitHub-Event", "ping".to_string()),
            ("X-GitHub-Delivery", "gh-5".to_string()),
            ("X-Hub-Signature-256", forge::sign(SECRET.as_bytes(), &body)),
        ],
        body,
    );
    assert_eq!(warren.deliver("app", &ping).0, 200);
    let answer = too_large(&warren.hooks, "app");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"error\""), "JSON: {answer}");

    let all: Vec<String> = [first, forged, more, many].concat();
    warren.expect_jobs("app", url, &all);
    let log = warren.observer.log_text();
    assert!(!log.contains(SECRET), "the secret is never logged");
}

#[test]
fn with_the_broker_unreachable_a_push_is_answered_503_and_its_retry_loses_nothing() {
    let ns = Namespace::new("push-broker-down");
    let scratch = Scratch::new();
    // An observer whose broker does not answer (nothing listens there).
    let dead_broker = format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port());
    let mut warren = Warren::start_with(&ns, &scratch, &["--amqp-url", &dead_broker]);
    let repo = Repo::new(scratch.join("app"));
    let c0 = repo.commit("initial");
    warren.register("app", repo.path_str(), None, true);
    let pushed = commits(&repo, 3, "pushed");
    let push = github("refs/heads/main", &c0, &pushed[2], &pushed, "gh-1", SECRET);
    let (status, answer) = warren.deliver("app", &push);
    assert_eq!(status, 503, "{answer}");
    assert!(warren.jobs_of("app").is_empty());

    // The broker is back (the observer reaches it now); the forge retries.
    warren.restart_observer(&ns, &scratch, &[]);
    let answer = wait_for(
        "the observer, with the broker",
        Duration::from_secs(20),
        || {
            post(&warren.hooks, "/hooks/app", &push.0, &push.1)
                .ok()
                .filter(|(status, _)| *status != 503)
        },
    );
    assert_eq!(answer, (202, json!({"queued": 3})));
    warren.expect_jobs("app", repo.path_str(), &pushed);
}

#[test]
fn two_polled_repositories_and_one_pushed_at_once_give_every_commit_one_job_of_its_own_repository()
{
    let ns = Namespace::new("push-and-poll");
    let scratch = Scratch::new();
    let warren = Warren::start(&ns, &scratch);
    let one = Repo::new(scratch.join("one"));
    let two = Repo::new(scratch.join("two"));
    let three = Repo::new(scratch.join("three"));
    let heads = [
        one.commit("one 0"),
        two.commit("two 0"),
        three.commit("three 0"),
    ];
    warren.register("one", one.path_str(), Some(0.2), true);
    warren.register("two", two.path_str(), Some(0.2), false);
    warren.register("three", three.path_str(), None, true);
    // The first poll of each polled repository queues its head.
    warren.expect_jobs("one", one.path_str(), &heads[..1]);
    warren.expect_jobs("two", two.path_str(), &heads[1..2]);

    let (mut all_one, mut all_two, mut all_three) =
        (vec![heads[0].clone()], vec![heads[1].clone()], Vec::new());
    let mut before = heads[2].clone();
    for round in 0..5 {
        let new_one = commits(&one, 2, &format!("one {round}"));
        let new_two = commits(&two, 1, &format!("two {round}"));
        let new_three = commits(&three, 2, &format!("three {round}"));
        // "three" is pushed; "one" is pushed too while it is polled.
        let push = github(
            "refs/heads/main",
            &before,
            &new_three[1],
            &new_three,
            &format!("three-{round}"),
            SECRET,
        );
        assert_eq!(warren.deliver("three", &push), (202, json!({"queued": 2})));
        let (status, _) = warren.deliver(
            "one",
            &github(
                "refs/heads/main",
                all_one.last().expect("one"),
                &new_one[1],
                &new_one,
                &format!("one-{round}"),
                SECRET,
            ),
        );
        assert!(status == 202 || status == 200, "{status}");
        before = new_three[1].clone();
        all_one.extend(new_one);
        all_two.extend(new_two);
        all_three.extend(new_three);
    }
    warren.expect_jobs("one", one.path_str(), &all_one);
    warren.expect_jobs("two", two.path_str(), &all_two);
    warren.expect_jobs("three", three.path_str(), &all_three);
}

#[test]
fn a_bare_repositorys_post_receive_hook_queues_what_is_pushed_to_it() {
    let ns = Namespace::new("post-receive");
    let scratch = Scratch::new();
    let warren = Warren::start(&ns, &scratch);
    let bare = scratch.join("origin.git");
    let made = Command::new("git")
        .args(["init", "-q", "--bare", "-b", "main"])
        .arg(&bare)
        .status()
        .expect("git init");
    assert!(made.success());
    let hook = bare.join("hooks/post-receive");
    std::fs::write(
        &hook,
        format!("#!/bin/sh\nexec '{WARREN}' hook post-receive --server {} --repo origin --secret-env {SECRET_VAR}\n", warren.hooks),
    )
    .expect("hook");
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let bare_path = bare.to_str().expect("utf8");
    warren.register("origin", bare_path, None, true);

    let work = Repo::new(scratch.join("work"));
    let push = |expect: &str| {
        let out = Command::new("git")
            .arg("-C")
            .arg(&work.path)
            .args(["push", "-q", bare_path, "main"])
            .env(SECRET_VAR, SECRET)
            .output()
            .expect("git push");
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{said}");
        assert!(said.contains(expect), "the pusher sees the answer: {said}");
    };
    // A new branch: its head only, as a first poll would.
    let first = work.commit("first");
    push("202 Accepted");
    let pushed = commits(&work, 3, "pushed");
    push("202 Accepted");
    let mut all = vec![first];
    all.extend(pushed);
    warren.expect_jobs("origin", bare_path, &all);
}
