//! Shared fixtures for the integration tests: a namespace on the real broker
//! that is deleted afterwards, real git repositories in temp dirs, the real
//! `warren` binary in child processes that are killed on drop (also when a
//! test fails), and waiting for conditions with a deadline.

#![allow(dead_code)]

pub mod browser;
pub mod rabbit;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const WARREN: &str = env!("CARGO_BIN_EXE_warren");
pub const BROKER_ADDR: &str = "127.0.0.1:5672";

/// Fails (never skips) when the broker is not there, saying how to start it.
pub fn require_broker() {
    if std::net::TcpStream::connect_timeout(
        &BROKER_ADDR.parse().expect("addr"),
        Duration::from_secs(2),
    )
    .is_err()
    {
        panic!(
            "RabbitMQ is not answering on {BROKER_ADDR}. Start it with `rabbitmq-server -detached` \
             (Debian: apt-get install rabbitmq-server), or run `scripts/test`, which does it for you."
        );
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after
/// `within` with `what` and the last state seen.
pub fn wait_for<T>(what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A namespace of its own for one test; its queues and exchanges are
/// deleted on drop.
pub struct Namespace {
    pub name: String,
}

impl Namespace {
    pub fn new(test: &str) -> Self {
        require_broker();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "wt-{test}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        Namespace { name }
    }
}

impl Namespace {
    /// The pipeline queues (`N.jobs.<queue>`) the test declared, from the
    /// management API: AMQP cannot list queues, so `topology --delete`
    /// deletes only those it is named.
    fn named_work_queues(&self) -> Vec<String> {
        let prefix = format!("{}.jobs.", self.name);
        // On a thread of its own: a namespace may be dropped inside an
        // async test, where a blocking client must not run.
        let listed = std::thread::spawn(|| {
            reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .ok()
                .and_then(|client| {
                    client
                        .get("http://127.0.0.1:15672/api/queues/%2F?columns=name")
                        .basic_auth("guest", Some("guest"))
                        .send()
                        .ok()?
                        .json::<Vec<Value>>()
                        .ok()
                })
                .unwrap_or_default()
        })
        .join()
        .unwrap_or_default();
        listed
            .iter()
            .filter_map(|queue| queue["name"].as_str()?.strip_prefix(&prefix))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let named = self.named_work_queues();
        let mut args = vec!["topology", "--delete", "--namespace", &self.name];
        let queues = named.join(",");
        if !named.is_empty() {
            args.extend(["--queue", queues.as_str()]);
        }
        let delete = Command::new(WARREN)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Ok(child) = delete {
            let mut proc = Proc {
                name: "topology --delete".into(),
                child: Some(child),
                log: PathBuf::new(),
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if proc
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                    .is_some()
                {
                    proc.child = None;
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            eprintln!("could not delete namespace {} within 30 s", self.name);
        }
    }
}

/// A temp folder for one test; kept (and named) if the test fails, to
/// read the logs.
pub struct Scratch {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Scratch {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("warren-test-")
            .tempdir()
            .expect("tempdir");
        let path = dir.path().to_path_buf();
        Scratch {
            dir: Some(dir),
            path,
        }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                eprintln!("test files (logs) kept in {}", dir.keep().display());
            }
        }
    }
}

/// Runs git in `dir`, panicking with git's message on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Warren Test",
            "-c",
            "user.email=test@warren.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A git repository in a temp dir.
pub struct Repo {
    pub path: PathBuf,
}

impl Repo {
    pub fn new(at: PathBuf) -> Self {
        std::fs::create_dir_all(&at).expect("mkdir");
        git(&at, &["init", "-q", "-b", "main"]);
        Repo { path: at }
    }

    pub fn write(&self, file: &str, content: &str) {
        let path = self.path.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, content).expect("write");
    }

    /// Commits all changes and returns the new commit id.
    pub fn commit(&self, message: &str) -> String {
        git(&self.path, &["add", "-A"]);
        git(
            &self.path,
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        git(&self.path, &["rev-parse", "HEAD"])
    }

    pub fn path_str(&self) -> &str {
        self.path.to_str().expect("utf8 path")
    }
}

/// A `warren` child process, killed (SIGKILL) on drop. Its stderr goes to
/// a log file in the scratch dir.
pub struct Proc {
    pub name: String,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(
        name: &str,
        ns: &Namespace,
        scratch: &Scratch,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Proc {
        Proc::spawn_with(name, ns, scratch, args, env, |_| {})
    }

    /// Like [`Proc::spawn`], as another user (the tests run as root, who
    /// may read any process's memory: an attack by a test on its runner has
    /// to be tried as an unprivileged user).
    pub fn spawn_as_user(
        name: &str,
        ns: &Namespace,
        scratch: &Scratch,
        args: &[&str],
        env: &[(&str, &str)],
        uid: u32,
    ) -> Proc {
        use std::os::unix::process::CommandExt;
        Proc::spawn_with(name, ns, scratch, args, env, |command| {
            command.uid(uid).gid(uid);
        })
    }

    fn spawn_with(
        name: &str,
        ns: &Namespace,
        scratch: &Scratch,
        args: &[&str],
        env: &[(&str, &str)],
        configure: impl FnOnce(&mut Command),
    ) -> Proc {
        let log = scratch.join(&format!("{name}.log"));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let mut command = Command::new(WARREN);
        command
            .args(args)
            .env("WARREN_NAMESPACE", &ns.name)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().expect("clone"))
            .stderr(stderr);
        configure(&mut command);
        let child = command.spawn().expect("spawn warren");
        Proc {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn signal(&self, signal: i32) {
        if self.pid() > 0 {
            // SAFETY: kill(2) on our own child.
            unsafe {
                libc::kill(self.pid(), signal);
            }
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("running");
        let status = wait_for(&format!("{} to exit", self.name), within, || {
            child.try_wait().ok().flatten()
        });
        self.child = None;
        status
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The PostgreSQL server the tests use (`WARREN_TEST_POSTGRES`, as for the
/// store's conformance suite; `scripts/ensure-postgres` starts one).
pub fn postgres_server() -> String {
    std::env::var("WARREN_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A database of the test's own on the test PostgreSQL server, dropped on
/// drop (also when the test fails). Made and dropped with `psql`.
pub struct PgDatabase {
    pub name: String,
    /// `postgres://…/<name>`, for `--store`.
    pub url: String,
}

impl PgDatabase {
    pub fn new(test: &str) -> PgDatabase {
        let name = format!(
            "warren_test_{}_{}_{}",
            test.replace('-', "_"),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let server = postgres_server();
        let out = psql(&server, &format!("CREATE DATABASE {name}"));
        assert!(
            out.status.success(),
            "cannot create a database on {server} ({}); start PostgreSQL with scripts/ensure-postgres",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let base = server
            .rsplit_once('/')
            .map_or(server.as_str(), |(base, _)| base);
        PgDatabase {
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = psql(
            &postgres_server(),
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

impl PgDatabase {
    /// The first column of the first row `sql` returns, as text.
    pub fn query_value(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .args([
                "-X",
                "-q",
                "-tA",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.url,
                "-c",
                sql,
            ])
            .output()
            .expect("run psql (Debian's postgresql-client)");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

fn psql(server: &str, sql: &str) -> std::process::Output {
    Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", server, "-c", sql])
        .output()
        .expect("run psql (Debian's postgresql-client)")
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A dispatcher with its own data dir and port.
pub struct Dispatcher {
    pub proc: Proc,
    pub url: String,
    pub data_dir: PathBuf,
}

impl Dispatcher {
    pub fn start(ns: &Namespace, scratch: &Scratch, extra: &[&str]) -> Dispatcher {
        Dispatcher::start_with_env(ns, scratch, extra, &[])
    }

    pub fn start_with_env(
        ns: &Namespace,
        scratch: &Scratch,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Dispatcher {
        Dispatcher::start_at(ns, scratch, scratch.join("dispatcher-data"), extra, env)
    }

    /// Like [`Dispatcher::start_with_env`], with its data in `data_dir`.
    pub fn start_at(
        ns: &Namespace,
        scratch: &Scratch,
        data_dir: PathBuf,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Dispatcher {
        let port = free_port();
        let http = format!("127.0.0.1:{port}");
        let mut args = vec![
            "dispatcher",
            "--data-dir",
            data_dir.to_str().expect("utf8"),
            "--http",
            &http,
        ];
        args.extend_from_slice(extra);
        // Its own log file when there are several (named after the data).
        let name = match data_dir.file_name().and_then(|n| n.to_str()) {
            Some("dispatcher-data") | None => "dispatcher".to_string(),
            Some(dir) => format!("dispatcher-{dir}"),
        };
        let proc = Proc::spawn(&name, ns, scratch, &args, env);
        let url = format!("http://{http}");
        let api = Api::new(&url);
        wait_for("the dispatcher's API", Duration::from_secs(20), || {
            api.get_json("/healthz")
                .ok()
                .or_else(|| api.get_text("/healthz").ok().map(|_| Value::Null))
        });
        Dispatcher {
            proc,
            url,
            data_dir,
        }
    }

    pub fn api(&self) -> Api {
        Api::new(&self.url)
    }
}

/// `warren up` on a repository: its own data folder and dashboard port,
/// polling every 0.2 s.
pub struct Up {
    pub proc: Proc,
    /// The dashboard's address.
    pub url: String,
    pub data: PathBuf,
}

impl Up {
    /// `warren GLOBAL… up REPO --runners RUNNERS … EXTRA…`.
    pub fn start(
        ns: &Namespace,
        scratch: &Scratch,
        repo: &str,
        runners: &str,
        global: &[&str],
        extra: &[&str],
    ) -> Up {
        let http = format!("127.0.0.1:{}", free_port());
        let hooks = format!("127.0.0.1:{}", free_port());
        let data = scratch.join("up-data");
        let mut args: Vec<&str> = global.to_vec();
        args.extend([
            "up",
            repo,
            "--runners",
            runners,
            "--http",
            &http,
            "--hooks-http",
            &hooks,
            "--interval",
            "0.2",
            "--data-dir",
            data.to_str().expect("utf8"),
        ]);
        args.extend_from_slice(extra);
        // Its runners without the sandbox, as `runner` starts them (see
        // there): a poison job has to find its runner among the host's
        // processes.
        let proc = Proc::spawn("up", ns, scratch, &args, &[("WARREN_SANDBOX", "none")]);
        Up {
            proc,
            url: format!("http://{http}"),
            data,
        }
    }

    pub fn api(&self) -> Api {
        Api::new(&self.url)
    }
}

/// A blocking client of the dispatcher's HTTP API.
pub struct Api {
    base: String,
    http: reqwest::blocking::Client,
}

impl Api {
    pub fn new(base: &str) -> Self {
        Api {
            base: base.to_string(),
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
        }
    }

    pub fn get_text(&self, path: &str) -> Result<String, String> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("{path}: {}", response.status()));
        }
        response.text().map_err(|e| e.to_string())
    }

    pub fn get_json(&self, path: &str) -> Result<Value, String> {
        let text = self.get_text(path)?;
        serde_json::from_str(&text).map_err(|e| format!("{path}: {e}: {text}"))
    }

    /// All jobs (up to 1000), newest first.
    pub fn jobs(&self) -> Vec<Value> {
        match self.get_json("/api/jobs?limit=1000") {
            Ok(Value::Array(jobs)) => jobs,
            _ => Vec::new(),
        }
    }

    /// Jobs by commit id.
    pub fn jobs_by_commit(&self) -> HashMap<String, Vec<Value>> {
        let mut map: HashMap<String, Vec<Value>> = HashMap::new();
        for job in self.jobs() {
            map.entry(job["commit"].as_str().unwrap_or_default().to_string())
                .or_default()
                .push(job);
        }
        map
    }

    /// Waits until every commit in `commits` has a job with a terminal
    /// status, and returns the jobs by commit.
    pub fn wait_terminal(
        &self,
        commits: &[String],
        within: Duration,
    ) -> HashMap<String, Vec<Value>> {
        wait_for(
            &format!("{} commits to reach an outcome", commits.len()),
            within,
            || {
                let by_commit = self.jobs_by_commit();
                let done = commits.iter().all(|c| {
                    by_commit
                        .get(c)
                        .is_some_and(|jobs| jobs.iter().all(is_terminal) && !jobs.is_empty())
                });
                done.then_some(by_commit)
            },
        )
    }

    pub fn log(&self, job_id: &str) -> String {
        self.get_text(&format!("/api/jobs/{job_id}/log"))
            .unwrap_or_default()
    }
}

pub fn is_terminal(job: &Value) -> bool {
    matches!(
        job["status"].as_str(),
        Some("passed" | "failed" | "error" | "timeout" | "skipped" | "canceled")
    )
}

/// Starts a runner with its own workdir.
pub fn runner(ns: &Namespace, scratch: &Scratch, name: &str, extra: &[&str]) -> Proc {
    runner_with_env(ns, scratch, name, extra, &[])
}

/// Like [`runner`], with extra environment variables.
///
/// Without the sandbox unless `extra` names one (`--sandbox bwrap`): most
/// tests coordinate with their jobs through files in the scratch folder
/// (gates, marks, control clones) or have a job find its runner among the
/// host's processes (a poison job), which the sandbox rightly hides. They
/// are about queues, faults and the runner's own defences; the sandbox and
/// the runner's default (`auto`) are tested in tests/sandbox.rs, and the
/// hostile tests that need no host path run under `--sandbox bwrap` too.
pub fn runner_with_env(
    ns: &Namespace,
    scratch: &Scratch,
    name: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Proc {
    let workdir = scratch.join(&format!("{name}-work"));
    let mut args = vec![
        "runner",
        "--id",
        name,
        "--workdir",
        workdir.to_str().expect("utf8"),
    ];
    let chooses = extra
        .iter()
        .any(|a| *a == "--sandbox" || a.starts_with("--sandbox="))
        || env.iter().any(|(k, _)| *k == "WARREN_SANDBOX");
    if !chooses {
        args.extend(["--sandbox", "none"]);
    }
    args.extend_from_slice(extra);
    Proc::spawn(name, ns, scratch, &args, env)
}

/// Starts an observer on `repo` with a state file in the scratch dir.
pub fn observer(ns: &Namespace, scratch: &Scratch, repo: &str, extra: &[&str]) -> Proc {
    observer_with_env(ns, scratch, repo, extra, &[])
}

/// Like [`observer`], with extra environment variables.
pub fn observer_with_env(
    ns: &Namespace,
    scratch: &Scratch,
    repo: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Proc {
    let state = scratch.join("observer-state.json");
    let mut args = vec![
        "observer",
        "--interval",
        "0.2",
        "--state",
        state.to_str().expect("utf8"),
    ];
    args.extend_from_slice(extra);
    args.push(repo);
    Proc::spawn("observer", ns, scratch, &args, env)
}

/// A test command that kills the runner running it (SIGKILL): a poison
/// job. It walks up from its shell to the first ancestor whose command line
/// is `warren runner …`, whatever processes sit in between.
pub const KILL_MY_RUNNER: &str = r#"p=$$
while [ "$p" -gt 1 ]; do
  if tr '\0' ' ' < /proc/$p/cmdline | grep -q '^[^ ]*warren runner '; then kill -9 "$p"; break; fi
  p=$(awk '{print $4}' /proc/$p/stat)
done
sleep 30"#;

/// Processes whose command line contains `marker` (from /proc).
pub fn processes_matching(marker: &str) -> Vec<String> {
    processes_where(|cmdline| cmdline.contains(marker))
}

/// Processes whose command line starts with `prefix`.
pub fn processes_starting_with(prefix: &str) -> Vec<String> {
    processes_where(|cmdline| cmdline.starts_with(prefix))
}

fn processes_where(test: impl Fn(&str) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let pid = entry.file_name().to_string_lossy().to_string();
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                if test(&cmdline) {
                    found.push(format!("{pid}: {cmdline}"));
                }
            }
        }
    }
    found
}

/// A bare repository to watch and a staging clone to push commits from.
pub fn origin_and_staging(scratch: &Scratch) -> (Repo, Repo) {
    let bare = scratch.join("origin.git");
    std::fs::create_dir_all(&bare).expect("mkdir");
    git(&bare, &["init", "-q", "--bare", "-b", "main"]);
    let staging = Repo::new(scratch.join("staging"));
    staging.write("value.txt", "value=0\n");
    staging.commit("initial");
    git(
        &staging.path,
        &["push", "-q", bare.to_str().expect("utf8"), "HEAD:main"],
    );
    (Repo { path: bare }, staging)
}

pub fn push_commits(origin: &Repo, staging: &Repo, range: std::ops::Range<usize>) -> Vec<String> {
    let commits = range
        .map(|i| {
            staging.write("value.txt", &format!("value={i}\n"));
            staging.commit(&format!("commit {i}"))
        })
        .collect();
    git(
        &staging.path,
        &["push", "-q", origin.path_str(), "HEAD:main"],
    );
    commits
}

pub fn head(repo: &Repo) -> String {
    git(&repo.path, &["rev-parse", "HEAD"])
}

/// Waits until the job for `commit` is running and returns (job id, runner id).
pub fn wait_running(api: &Api, commit: &str) -> (String, String) {
    wait_for(
        &format!("{commit} to be running"),
        Duration::from_secs(60),
        || {
            let jobs = api.jobs_by_commit();
            let job = jobs.get(commit)?.first()?.clone();
            (job["status"] == "running").then(|| {
                (
                    job["id"].as_str().unwrap_or_default().to_string(),
                    job["runner"].as_str().unwrap_or_default().to_string(),
                )
            })
        },
    )
}

/// The commit's pipeline from `GET /api/commits/{sha}` once its verdict
/// is final (`passed`, `failed` or `error`).
pub fn wait_verdict(api: &Api, commit: &str, within: Duration) -> Value {
    wait_for(&format!("commit {commit}'s verdict"), within, || {
        let view = api.get_json(&format!("/api/commits/{commit}")).ok()?;
        let status = view["status"].as_str()?.to_string();
        matches!(status.as_str(), "passed" | "failed" | "error").then_some(view)
    })
}

/// A commit view's jobs by name.
pub fn by_name(view: &Value) -> HashMap<String, Value> {
    view["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|job| (job["name"].as_str().expect("name").to_string(), job.clone()))
        .collect()
}

pub fn one_job(jobs: &HashMap<String, Vec<Value>>, commit: &str) -> Value {
    let for_commit = &jobs[commit];
    assert_eq!(
        for_commit.len(),
        1,
        "exactly one job for {commit}: {for_commit:?}"
    );
    for_commit[0].clone()
}

pub fn take_runner(runners: &mut Vec<Proc>, id: &str) -> Proc {
    let index = runners
        .iter()
        .position(|r| r.name == id)
        .unwrap_or_else(|| panic!("no runner {id}"));
    runners.remove(index)
}

impl Namespace {
    /// How the tests themselves reach the namespace through the broker
    /// crate (the one way to talk to RabbitMQ).
    pub fn broker_config(&self) -> broker::BrokerConfig {
        broker::BrokerConfig {
            urls: vec!["amqp://guest:guest@127.0.0.1:5672/%2f".into()],
            quorum_size: None,
            names: broker::Names::new(self.name.clone()),
            settings: broker::topology::TopologySettings::default(),
            max_message_bytes: 64 * 1024,
        }
    }

    /// Runs `work` with a connection to the namespace (the transport the
    /// components use), then closes it.
    pub fn with_broker<T>(&self, work: impl AsyncFnOnce(&dyn broker::Transport) -> T) -> T {
        use broker::Connector;
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async {
            let transport = self
                .broker_config()
                .connect("warren-test", &tokio_util::sync::CancellationToken::new())
                .await
                .expect("connect to the broker");
            let out = work(&*transport).await;
            transport.close().await;
            out
        })
    }
}

/// The `x-client` header [`publish_raw`] puts on every message, so tests
/// can check that a dead letter kept the publisher's headers.
pub const CLIENT_HEADER_VALUE: &str = "warren-test";

/// Publishes raw bodies to exchanges of the namespace, each confirmed:
/// (exchange, routing key, body), with the header `x-client:
/// warren-test`.
pub fn publish_raw(ns: &Namespace, messages: &[(String, String, Vec<u8>)]) {
    ns.with_broker(async |broker| {
        for (exchange, key, body) in messages {
            let headers = vec![("x-client".to_string(), CLIENT_HEADER_VALUE.to_string())];
            broker
                .publish_raw(exchange, key, body, headers)
                .await
                .expect("publish");
        }
    });
}

/// A git server that accepts connections and never answers a byte: the
/// stalled server of issue 12. A thread accepts and holds every connection
/// until the server is dropped.
pub struct StalledServer {
    /// `git://127.0.0.1:PORT/stalled.git`
    pub url: String,
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StalledServer {
    pub fn start() -> StalledServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            for connection in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(connection) = connection {
                    held.push(connection);
                }
            }
        });
        StalledServer {
            url: format!("git://{addr}/stalled.git"),
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for StalledServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the thread blocked in accept.
        let _ = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How many times `needle` occurs in a process's log so far.
pub fn log_count(proc: &Proc, needle: &str) -> usize {
    proc.log_text().matches(needle).count()
}

/// A webhook receiver on 127.0.0.1 that records every request, answering
/// 200 (or 500 to the first one when `fail_first`). One request per
/// connection; the thread ends with the test process.
pub struct WebhookReceiver {
    pub url: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<HttpRequest>>>,
}

impl WebhookReceiver {
    pub fn start(fail_first: bool) -> WebhookReceiver {
        use std::io::Write;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!(
            "http://{}/hooks/warren",
            listener.local_addr().expect("addr")
        );
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let Some(request) = read_http_request(&mut stream) else {
                    continue;
                };
                let first = {
                    let mut seen = log.lock().expect("lock");
                    seen.push(request);
                    seen.len() == 1
                };
                let status = if first && fail_first {
                    "500 Internal Server Error"
                } else {
                    "200 OK"
                };
                let _ = stream.write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                );
                let _ = stream.flush();
            }
        });
        WebhookReceiver { url, seen }
    }

    pub fn requests(&self) -> Vec<HttpRequest> {
        self.seen.lock().expect("lock").clone()
    }
}

/// One HTTP/1.1 request as a test's fake server (a forge, a webhook
/// receiver) read it.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// `POST /path HTTP/1.1`.
    pub request_line: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn method(&self) -> &str {
        self.request_line.split(' ').next().unwrap_or_default()
    }

    pub fn path(&self) -> &str {
        self.request_line.split(' ').nth(1).unwrap_or_default()
    }
}

/// Reads one HTTP/1.1 request with a `Content-Length` body; `None` when
/// the client goes away first.
pub fn read_http_request(stream: &mut std::net::TcpStream) -> Option<HttpRequest> {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).ok()?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Some(HttpRequest {
        request_line,
        headers,
        body,
    })
}
