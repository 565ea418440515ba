//! Issue 15: commit statuses. A repository registered with a status target
//! (through `warren repo add`, while the dispatcher runs) gets every change
//! of its jobs reported to a fake GitHub on loopback: `pending` when
//! queued, `pending` when running, then `success` or `failure`, in order,
//! with the token from the dispatcher's environment (never logged) and a
//! link to the job's page under `--public-url`. Also: a bad `--public-url`
//! is refused in one line, and the dashboard filters by repository.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::Value;

const API_TOKEN: &str = "status-api-token";
/// The forge token: only in the dispatcher's environment.
const FORGE_TOKEN: &str = "ghp_statusTestToken0123456789";
const TOKEN_VAR: &str = "WARREN_TEST_FORGE_TOKEN";
const PUBLIC_URL: &str = "https://ci.example.org/warren";

/// One request as the fake forge saw it.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    /// Header names in lower case.
    headers: Vec<(String, String)>,
    body: Value,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A forge's commit-status API on 127.0.0.1: records every request and
/// answers `201 Created`, one request per connection.
struct FakeForge {
    api: String,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl FakeForge {
    fn start() -> FakeForge {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let api = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                // Each connection on its own: one slow to send its request
                // (a loaded machine) holds up no other.
                let log = log.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    let Some(request) = read_request(&mut stream) else {
                        return;
                    };
                    log.lock().expect("lock").push(request);
                    let _ = stream.write_all(
                        b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n\
                          Content-Length: 2\r\nConnection: close\r\n\r\n{}",
                    );
                    let _ = stream.flush();
                });
            }
        });
        FakeForge { api, seen }
    }

    fn requests(&self) -> Vec<Request> {
        self.seen.lock().expect("lock").clone()
    }
}

/// One request, read by the common reader, with its JSON body parsed.
fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let request = read_http_request(stream)?;
    Some(Request {
        method: request.method().to_string(),
        path: request.path().to_string(),
        body: serde_json::from_slice(&request.body).unwrap_or(Value::Null),
        headers: request.headers,
    })
}

/// `warren ARGS…` as a client of `server`, with the API token.
fn warren(server: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(WARREN)
        .args(args)
        .env("WARREN_SERVER", server)
        .env("WARREN_API_TOKEN", API_TOKEN)
        .env_remove(TOKEN_VAR)
        .output()
        .expect("run warren");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_job_change_of_a_registered_repository_is_reported_to_its_forge() {
    let ns = Namespace::new("status-report");
    let scratch = Scratch::new();
    let forge = FakeForge::start();
    let repo = Repo::new(scratch.join("repo"));
    // A second's work, so that running and the outcome are reported apart.
    repo.write(".warren-test", "sleep 1; grep -q pass result.txt");

    let dispatcher = Dispatcher::start_with_env(
        &ns,
        &scratch,
        &["--public-url", &format!("{PUBLIC_URL}/")],
        &[("WARREN_API_TOKEN", API_TOKEN), (TOKEN_VAR, FORGE_TOKEN)],
    );
    let api = dispatcher.api();
    // Registered while the dispatcher runs: picked up without a restart.
    let (code, _, err) = warren(
        &dispatcher.url,
        &[
            "repo",
            "add",
            "app",
            repo.path_str(),
            "--no-poll",
            "--status-kind",
            "github",
            "--status-api",
            &forge.api,
            "--status-repo",
            "o/r",
            "--status-token-env",
            TOKEN_VAR,
        ],
    );
    assert_eq!(code, 0, "{err}");
    let _runner = runner(&ns, &scratch, "r1", &[]);

    // One passing commit, then one failing, each tested before the next.
    let mut jobs = Vec::new();
    let mut observer_proc = None;
    for (i, result) in ["pass", "fail"].iter().enumerate() {
        repo.write("result.txt", &format!("{result}\n"));
        let commit = repo.commit(&format!("commit {i}: {result}"));
        if observer_proc.is_none() {
            observer_proc = Some(observer(&ns, &scratch, repo.path_str(), &[]));
        }
        let done = api.wait_terminal(std::slice::from_ref(&commit), Duration::from_secs(60));
        let job = done[&commit][0].clone();
        let expected = if *result == "pass" {
            "passed"
        } else {
            "failed"
        };
        assert_eq!(job["status"], expected, "commit {i}: {job}");
        jobs.push((commit, job));
    }

    // Three reports per commit; the outcome is the last of each.
    let requests = wait_for(
        "the forge to have three statuses of each commit",
        Duration::from_secs(60),
        || {
            let requests = forge.requests();
            let finals = requests
                .iter()
                .filter(|r| matches!(r.body["state"].as_str(), Some("success" | "failure")))
                .count();
            (finals == 2 && requests.len() >= 6).then_some(requests)
        },
    );
    assert_eq!(requests.len(), 6, "{requests:#?}");

    let mut by_commit: HashMap<&str, Vec<&Request>> = HashMap::new();
    for request in &requests {
        let commit = request
            .path
            .strip_prefix("/repos/o/r/statuses/")
            .unwrap_or_else(|| panic!("a commit-status path: {}", request.path));
        by_commit.entry(commit).or_default().push(request);
    }
    for ((commit, job), outcome) in jobs
        .iter()
        .zip([("success", "Passed"), ("failure", "Failed")])
    {
        let id = job["id"].as_str().expect("id");
        let seen = &by_commit[commit.as_str()];
        let states: Vec<(&str, &str)> = seen
            .iter()
            .map(|r| {
                (
                    r.body["state"].as_str().unwrap_or_default(),
                    r.body["description"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            states,
            [("pending", "Queued"), ("pending", "Running"), outcome],
            "{commit}: {seen:#?}"
        );
        let link = format!("{PUBLIC_URL}/jobs/{id}");
        for request in seen {
            assert_eq!(request.method, "POST");
            let bearer = format!("Bearer {FORGE_TOKEN}");
            assert_eq!(request.header("authorization"), Some(bearer.as_str()));
            assert_eq!(request.header("content-type"), Some("application/json"));
            assert_eq!(request.body["context"], "warren");
            let description = request.body["description"].as_str().expect("description");
            assert!(description.chars().count() <= 140);
            assert_eq!(request.body["target_url"].as_str(), Some(link.as_str()));
        }
        // The link's path is the job's dashboard page.
        api.get_text(&format!("/jobs/{id}"))
            .expect("the job's dashboard page");
    }

    // The dashboard names the repository and filters by it.
    let page = api.get_text("/").expect("the jobs page");
    assert!(page.contains("id=\"repo-filter\""), "{page}");
    let script = api.get_text("/assets/jobs.js").expect("jobs.js");
    assert!(
        script.contains("/api/repos") && script.contains("q.set('repo'"),
        "the page reads the registry and filters jobs with ?repo="
    );
    let of_app = api.get_json("/api/jobs?repo=app").expect("app's jobs");
    assert_eq!(of_app.as_array().map(Vec::len), Some(2), "{of_app}");

    // The token is never logged.
    let log = dispatcher.proc.log_text();
    assert!(!log.contains(FORGE_TOKEN), "the forge token is in the log");
    assert!(
        log.contains(PUBLIC_URL),
        "the public URL is logged at start"
    );
}

#[test]
fn a_bad_public_url_is_refused_in_one_line_naming_the_flag() {
    for bad in ["ci.example.org", "ftp://ci.example.org", "https://me:pw@ci"] {
        let out = Command::new(WARREN)
            .args(["dispatcher", "--public-url", bad])
            .output()
            .expect("run warren");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("--public-url"), "{err}");
    }
}

/// A forge that accepts connections and never answers; counts them.
struct SilentForge {
    api: String,
    connections: Arc<Mutex<Vec<TcpStream>>>,
}

impl SilentForge {
    fn start() -> SilentForge {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let api = format!("http://{}", listener.local_addr().expect("addr"));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let held = connections.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                held.lock().expect("lock").push(stream);
            }
        });
        SilentForge { api, connections }
    }

    fn count(&self) -> usize {
        self.connections.lock().expect("lock").len()
    }
}

#[test]
fn a_forge_that_never_answers_holds_up_neither_recording_nor_the_stop() {
    let ns = Namespace::new("status-silent");
    let scratch = Scratch::new();
    let forge = SilentForge::start();
    let repo = Repo::new(scratch.join("repo"));
    repo.write(".warren-test", "true");
    let commit = repo.commit("a commit");

    let mut dispatcher = Dispatcher::start_with_env(
        &ns,
        &scratch,
        &[],
        &[("WARREN_API_TOKEN", API_TOKEN), (TOKEN_VAR, FORGE_TOKEN)],
    );
    let api = dispatcher.api();
    let (code, _, err) = warren(
        &dispatcher.url,
        &[
            "repo",
            "add",
            "app",
            repo.path_str(),
            "--no-poll",
            "--status-kind",
            "gitea",
            "--status-api",
            &forge.api,
            "--status-repo",
            "o/r",
            "--status-token-env",
            TOKEN_VAR,
        ],
    );
    assert_eq!(code, 0, "{err}");
    let _runner = runner(&ns, &scratch, "r1", &[]);
    let _observer = observer(&ns, &scratch, repo.path_str(), &[]);
    // Recorded to the end while the forge holds the first status.
    let done = api.wait_terminal(std::slice::from_ref(&commit), Duration::from_secs(60));
    assert_eq!(done[&commit][0]["status"], "passed");
    wait_for("the forge to be called", Duration::from_secs(10), || {
        (forge.count() > 0).then_some(())
    });

    dispatcher.proc.signal(libc::SIGTERM);
    let status = dispatcher.proc.wait_exit(Duration::from_secs(2));
    let log = dispatcher.proc.log_text();
    assert!(status.success(), "{status}: {log}");
    assert!(
        log.contains("commit statuses not sent"),
        "the stop says statuses were left: {log}"
    );
    // The default public URL is the --http address.
    assert!(
        log.contains(&format!("job links under {}", dispatcher.url)),
        "{log}"
    );
    assert!(!log.contains(FORGE_TOKEN));
}
