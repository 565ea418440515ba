//! Commit statuses: every change of a job of a registered repository with
//! a status target (`warren repo add … --status-kind …`) is reported to its
//! forge's commit-status API, so the forge shows the verdict next to the
//! commit: queued and running `pending` (GitLab `running`), then the
//! outcome.
//!
//! A follower of the job changes [`crate::announce`] hands over (those of
//! every dispatcher, on the one holding the duties), like the notifier: a
//! queue that never drops an event, read by one task. For each event it looks
//! the job's repository up by its URL in a small copy of the registry
//! ([`Registry`], read again from the store every
//! [`REGISTRY_REFRESH`], and on a miss, so a repository registered
//! through the API is picked up without a restart), and hands the report
//! to [`forge::StatusReporter`], which sends it off the recording path
//! (ordered per commit, retried, never blocking). Duplicate results change
//! nothing on the forge and are not reported.
//!
//! The forge's token is read from the dispatcher's environment: the
//! variable the registry entry names, or the file `{VAR}_FILE` names (the
//! rule of [`tasks::secret`], as for Warren's own secrets). A repository
//! whose token is missing or unusable gets one warning (again only after it
//! was fixed and broke anew), never one per job; the token is never
//! logged.
//!
//! Each report links to the job's dashboard page, `{public URL}/jobs/{id}`
//! (`--public-url`; by default the `--http` address). Statuses still
//! queued when the dispatcher stops are not sent (the reporter warns how
//! many).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use forge::{StatusReporter, StatusTarget, StatusUpdate};
use model::{JobId, JobRecord, JobStatus, Repo, RepoName, RepoUrl};
use store::Store;
use tasks::Tasks;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use crate::events::{Change, JobEvent};

/// How old the copy of the registry may get before it is read again.
pub const REGISTRY_REFRESH: Duration = Duration::from_secs(2);

/// How soon a job of a repository the copy does not know may read the
/// registry again (many jobs of unregistered repositories cost one read
/// per this interval, not one each).
pub const MISS_REFRESH: Duration = Duration::from_millis(200);

/// The context of every report (jobs have no name of their own): reports
/// with the same context replace each other on the forge.
pub const CONTEXT: &str = "warren";

/// Checks `--public-url`: an `http` or `https` URL with a host and no
/// credentials, query or fragment. Returns it without a trailing `/`.
pub fn parse_public_url(value: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(value)
        .map_err(|err| format!("expected an http:// or https:// URL ({err})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("expected an http:// or https:// URL".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("expected a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("expected no credentials: forges show the links to everyone".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("expected no query or fragment".into());
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// The job's dashboard page under the public URL (the dashboard's
/// `/jobs/{id}` route).
pub fn job_page(public_url: &str, job: &JobRecord) -> String {
    format!("{}/jobs/{}", public_url.trim_end_matches('/'), job.id)
}

/// The report for an event, if it is one to report.
pub fn update_for(event: &JobEvent, public_url: &str) -> Option<StatusUpdate> {
    match event.change {
        Change::Queued | Change::Started { .. } | Change::Finished { .. } => {}
        Change::Duplicate => return None,
    }
    let job = &event.job;
    let mut update = StatusUpdate::new(job.commit.clone(), job.status);
    update.context = CONTEXT.to_string();
    update.target_url = Some(job_page(public_url, job));
    Some(update)
}

/// Reads a forge token: the variable's value, `None` when unset.
pub type TokenSource = fn(&str) -> Result<Option<String>, String>;

/// The registry's status targets by repository URL, as last read from the
/// store, with each target built (its token read) at that read.
pub struct Registry {
    store: Arc<dyn Store>,
    token: TokenSource,
    /// Every registered URL: `Some` when its statuses can be sent.
    by_url: HashMap<RepoUrl, Option<Arc<StatusTarget>>>,
    read_at: Option<Instant>,
    /// The last warning about each repository, so each is logged once.
    warned: HashMap<RepoName, String>,
    /// Whether the last read of the store failed (warned once).
    store_failing: bool,
    /// Warnings logged so far (for tests).
    pub warnings: u64,
}

impl Registry {
    pub fn new(store: Arc<dyn Store>, token: TokenSource) -> Registry {
        Registry {
            store,
            token,
            by_url: HashMap::new(),
            read_at: None,
            warned: HashMap::new(),
            store_failing: false,
            warnings: 0,
        }
    }

    /// Where the statuses of jobs of `url` go, if anywhere.
    pub async fn target(&mut self, url: &RepoUrl) -> Option<Arc<StatusTarget>> {
        let age = self.read_at.map(|at| at.elapsed());
        let stale = age.is_none_or(|age| age >= REGISTRY_REFRESH);
        let missed = !self.by_url.contains_key(url) && age.is_none_or(|age| age >= MISS_REFRESH);
        if stale || missed {
            self.read().await;
        }
        self.by_url.get(url).cloned().flatten()
    }

    async fn read(&mut self) {
        self.read_at = Some(Instant::now());
        let repos = match self.store.repos().await {
            Ok(repos) => repos,
            Err(err) => {
                if !self.store_failing {
                    self.store_failing = true;
                    self.warnings += 1;
                    tracing::warn!(
                        "cannot read the repository registry ({err}); commit statuses go by the last copy read"
                    );
                }
                return;
            }
        };
        if self.store_failing {
            self.store_failing = false;
            tracing::info!("the repository registry can be read again");
        }
        let mut by_url = HashMap::with_capacity(repos.len());
        for repo in &repos {
            let target = match self.build(repo) {
                Ok(target) => {
                    if target.is_some() && self.warned.remove(&repo.name).is_some() {
                        tracing::info!(repo = %repo.name, "commit statuses can be sent again");
                    }
                    target
                }
                Err(problem) => {
                    if self.warned.get(&repo.name) != Some(&problem) {
                        self.warnings += 1;
                        tracing::warn!(repo = %repo.name, "{problem}; its commit statuses are not sent");
                        self.warned.insert(repo.name.clone(), problem);
                    }
                    None
                }
            };
            by_url.insert(repo.url.clone(), target);
        }
        // A repository no longer registered may warn again if it comes back.
        self.warned
            .retain(|name, _| repos.iter().any(|repo| &repo.name == name));
        self.by_url = by_url;
    }

    /// The target of `repo`: `None` without one; an error (one line, never
    /// the token) when it cannot be used.
    fn build(&self, repo: &Repo) -> Result<Option<Arc<StatusTarget>>, String> {
        let Some(status) = &repo.status else {
            return Ok(None);
        };
        let var = &status.token_env;
        let token = match (self.token)(var) {
            Ok(Some(token)) => token,
            Ok(None) => {
                return Err(format!(
                "no forge token: neither {var} nor {var}{} is set in the dispatcher's environment",
                tasks::SECRET_FILE_SUFFIX
            ))
            }
            Err(err) => return Err(format!("cannot read the forge token: {err}")),
        };
        StatusTarget::new(status.kind, &status.api, &status.repo, &token)
            .map(|target| Some(Arc::new(target)))
            .map_err(|err| format!("unusable status target: {err}"))
    }
}

/// Reports job changes as commit statuses; see the module's text.
pub struct CommitStatuses;

impl CommitStatuses {
    /// Starts the follower as a lifetime task of `tasks`; `events` are every
    /// job event from now on, `reporter` sends (started on the same
    /// `tasks`), `public_url` is where the dashboard is seen from outside.
    pub fn start(
        reporter: StatusReporter,
        store: Arc<dyn Store>,
        events: UnboundedReceiver<JobEvent>,
        public_url: String,
        tasks: &Tasks,
    ) {
        CommitStatuses::start_with(reporter, store, events, public_url, tasks::secret, tasks)
    }

    /// [`CommitStatuses::start`] with tokens from elsewhere (tests).
    pub fn start_with(
        reporter: StatusReporter,
        store: Arc<dyn Store>,
        events: UnboundedReceiver<JobEvent>,
        public_url: String,
        token: TokenSource,
        tasks: &Tasks,
    ) {
        tracing::info!(
            "reporting job changes to the forges of registered repositories with a status target; job links under {public_url}"
        );
        let registry = Registry::new(store, token);
        tasks.lifetime(
            "the commit-status follower",
            follow(
                events,
                registry,
                reporter,
                public_url,
                tasks.stopping().clone(),
            ),
        );
    }
}

async fn follow(
    mut events: UnboundedReceiver<JobEvent>,
    mut registry: Registry,
    reporter: StatusReporter,
    public_url: String,
    stopping: CancellationToken,
) {
    // The last verdict reported of each pipeline, so a job event that
    // changes nothing of its commit sends nothing (bounded: forgotten all
    // at once past REPORTED_KEPT, at worst one repeated report each).
    let mut last: HashMap<JobId, model::Verdict> = HashMap::new();
    loop {
        let event = tokio::select! {
            _ = stopping.cancelled() => return,
            event = events.recv() => match event {
                Some(event) => event,
                None => return,
            },
        };
        let Some(mut update) = update_for(&event, &public_url) else {
            continue;
        };
        let Some(target) = registry.target(&event.job.repo).await else {
            continue;
        };
        // The commit's status is its pipeline's verdict: a job of a
        // pipeline reports the whole pipeline as it stands.
        let job = &event.job;
        match registry.store.pipeline(&job.pipeline).await {
            Ok(mut jobs) => {
                // The pipeline as of this event: the store may already hold
                // later changes of the same job, whose own events follow.
                if let Some(stored) = jobs.iter_mut().find(|j| j.id == job.id) {
                    *stored = job.clone();
                }
                let Some(verdict) = model::pipeline::verdict_of(&job.pipeline, &jobs) else {
                    continue;
                };
                if last.get(&job.pipeline) == Some(&verdict) {
                    continue;
                }
                if last.len() >= REPORTED_KEPT {
                    last.clear();
                }
                last.insert(job.pipeline.clone(), verdict);
                update = StatusUpdate::new(job.commit.clone(), verdict_status(verdict));
                update.context = CONTEXT.to_string();
                if let Some(first) = jobs.iter().find(|j| j.id == job.pipeline) {
                    update.target_url = Some(job_page(&public_url, first));
                }
            }
            Err(err) => {
                tracing::warn!(job = %job.id, "cannot read the job's pipeline ({err}); reporting the job's own status");
            }
        }
        reporter.report(&target, update);
    }
}

/// How many pipelines' last verdicts are remembered.
const REPORTED_KEPT: usize = 10_000;

/// The status word a verdict is reported with.
fn verdict_status(verdict: model::Verdict) -> JobStatus {
    match verdict {
        model::Verdict::Pending => JobStatus::Queued,
        model::Verdict::Running => JobStatus::Running,
        model::Verdict::Passed => JobStatus::Passed,
        model::Verdict::Failed => JobStatus::Failed,
        model::Verdict::Error => JobStatus::Error,
        model::Verdict::Canceled => JobStatus::Canceled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Mutex;

    use axum::body::Bytes;
    use axum::http::{HeaderMap, Uri};
    use model::{ForgeKind, Job, JobResult, JobStatus, Outcome, RunnerId, RunnerInfo};

    use crate::events::EventBus;
    use crate::jobs::Jobs;

    const TOKEN: &str = "glpat-secret-token-123";

    fn token(var: &str) -> Result<Option<String>, String> {
        Ok((var == "GITLAB_TOKEN").then(|| TOKEN.to_string()))
    }

    #[test]
    fn public_urls_are_http_urls_without_secrets() {
        assert_eq!(
            parse_public_url("https://ci.example.org/"),
            Ok("https://ci.example.org".into())
        );
        assert_eq!(
            parse_public_url("http://10.0.0.5:8080/warren"),
            Ok("http://10.0.0.5:8080/warren".into())
        );
        for bad in [
            "ci.example.org",
            "ftp://ci.example.org",
            "https://me:pw@ci.example.org",
            "https://ci.example.org/?a=1",
            "",
        ] {
            assert!(parse_public_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn each_change_but_a_duplicate_is_a_report_linking_to_the_job() {
        let job = Job::try_new("/r", "main", &"a".repeat(40)).expect("job");
        let mut record = JobRecord {
            seq: 1,
            id: job.id.clone(),
            repo: job.repo.clone(),
            branch: job.branch.clone(),
            commit: job.commit.clone(),
            subject: None,
            author: None,
            status: JobStatus::Queued,
            attempts: 0,
            duplicates: 0,
            runner: None,
            connection: None,
            enqueued_at_ms: None,
            started_at_ms: None,
            finished_at_ms: None,
            duration_ms: None,
            exit_code: None,
            reason: None,
            truncated: false,
            salt: String::new(),
            sandbox: None,
            name: "test".into(),
            pipeline: job.id.clone(),
            queue: Default::default(),
            needs: vec![],
            allow_failure: false,
            spec: None,
        };
        let event = |change, job: &JobRecord| JobEvent {
            change,
            job: job.clone(),
        };
        let queued =
            update_for(&event(Change::Queued, &record), "http://ci:8080/").expect("queued");
        assert_eq!(queued.status, JobStatus::Queued);
        assert_eq!(queued.context, "warren");
        assert_eq!(
            queued.target_url.as_deref(),
            Some(format!("http://ci:8080/jobs/{}", job.id).as_str())
        );
        record.status = JobStatus::Failed;
        let finished = update_for(
            &event(
                Change::Finished {
                    dead_lettered: false,
                },
                &record,
            ),
            "http://ci:8080",
        )
        .expect("finished");
        assert_eq!(finished.status, JobStatus::Failed);
        assert_eq!(
            update_for(&event(Change::Duplicate, &record), "http://ci"),
            None
        );
    }

    type Seen = Arc<Mutex<Vec<(String, HeaderMap, serde_json::Value)>>>;

    /// A forge on loopback that takes every status and records it.
    async fn fake_forge() -> (String, Seen) {
        let seen: Seen = Arc::default();
        let log = seen.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let log = log.clone();
            async move {
                let json = serde_json::from_slice(&body).unwrap_or_default();
                log.lock()
                    .expect("lock")
                    .push((uri.to_string(), headers, json));
                (axum::http::StatusCode::CREATED, "{}")
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/api/v4", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (url, seen)
    }

    fn registered(name: &str, url: &str, status: Option<model::StatusTarget>) -> Repo {
        Repo {
            name: RepoName::parse(name).expect("name"),
            url: RepoUrl::parse(url).expect("url"),
            branches: Vec::new(),
            poll_secs: None,
            webhook_secret_env: None,
            status,
        }
    }

    #[tokio::test]
    async fn a_gitlab_project_gets_running_then_the_outcome_and_others_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = store::StoreUrl::sqlite(dir.path().join("warren.db"));
        let store = store::open(&url, store::StoreSettings::default())
            .await
            .expect("open");
        let (api, seen) = fake_forge().await;
        let gitlab = |token_env: &str| model::StatusTarget {
            kind: ForgeKind::GitLab,
            api: api.clone(),
            repo: "group/app".into(),
            token_env: token_env.into(),
        };
        store
            .put_repo(&registered(
                "app",
                "/srv/app.git",
                Some(gitlab("GITLAB_TOKEN")),
            ))
            .await
            .expect("put");
        // Registered, without a usable token: one warning, nothing sent.
        store
            .put_repo(&registered(
                "lib",
                "/srv/lib.git",
                Some(gitlab("NO_SUCH_TOKEN")),
            ))
            .await
            .expect("put");
        // Registered without a status target.
        store
            .put_repo(&registered("doc", "/srv/doc.git", None))
            .await
            .expect("put");

        let tasks = Tasks::new(&CancellationToken::new());
        let reporter =
            StatusReporter::start(forge::StatusSettings::default(), &tasks).expect("reporter");
        let bus = EventBus::new();
        let jobs = Jobs::new(store.clone(), bus.clone());
        CommitStatuses::start_with(
            reporter.clone(),
            store.clone(),
            bus.subscribe(),
            "https://ci.example.org".into(),
            token,
            &tasks,
        );
        let runner = RunnerInfo {
            id: RunnerId::parse("r1").expect("id"),
            host: "h".into(),
            connection: "c".into(),
            sandbox: Default::default(),
            queues: Vec::new(),
        };
        // With `sent`, each change waits until the forge has its report (a
        // report still waiting when a newer one comes is replaced by it).
        let forge_has = async |count: usize| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while seen.lock().expect("lock").len() < count {
                assert!(Instant::now() < deadline, "the forge has {count} reports");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let run = async |repo: &str, commit: char, outcome: Outcome, sent: bool| {
            let job = Job::try_new(repo, "main", &commit.to_string().repeat(40)).expect("job");
            let before = seen.lock().expect("lock").len();
            jobs.queued(&job).await.expect("queued");
            if sent {
                forge_has(before + 1).await;
            }
            jobs.started(&job, &runner, 10).await.expect("started");
            if sent {
                forge_has(before + 2).await;
            }
            let result = JobResult {
                v: model::SCHEMA_VERSION,
                job: job.clone(),
                outcome,
                exit_code: Some(0),
                started_at_ms: 10,
                finished_at_ms: 20,
                duration_ms: 10,
                output: String::new(),
                truncated: false,
                runner: runner.clone(),
                reason: None,
                plan: None,
                tests: None,
            };
            jobs.finished(&result).await.expect("finished");
            if sent {
                forge_has(before + 3).await;
            }
            // The same result again: a duplicate, not reported.
            jobs.finished(&result).await.expect("duplicate");
            job
        };
        run("/srv/lib.git", 'b', Outcome::Passed, false).await;
        run("/srv/doc.git", 'c', Outcome::Passed, false).await;
        run("/srv/elsewhere.git", 'd', Outcome::Passed, false).await;
        run("/srv/lib.git", 'e', Outcome::Failed, false).await;
        let passed = run("/srv/app.git", 'a', Outcome::Passed, true).await;
        let failed = run("/srv/app.git", 'f', Outcome::Failed, true).await;
        forge_has(6).await;

        // Events are followed in order: anything the jobs before app's
        // caused was reported before; wait until it all settled.
        tokio::time::timeout(Duration::from_secs(10), reporter.idle())
            .await
            .expect("every report settled");
        let seen = seen.lock().expect("lock").clone();
        let mut by_commit: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for (uri, headers, body) in &seen {
            assert_eq!(
                headers.get("private-token").and_then(|v| v.to_str().ok()),
                Some(TOKEN)
            );
            assert!(headers.get("authorization").is_none());
            let (path, commit) = uri.rsplit_once('/').expect("a path");
            assert_eq!(path, "/api/v4/projects/group%2Fapp/statuses", "{uri}");
            assert_eq!(body["name"], "warren", "{body}");
            by_commit.entry(commit.to_string()).or_default().push((
                body["state"].as_str().unwrap_or_default().to_string(),
                body["target_url"].as_str().unwrap_or_default().to_string(),
            ));
        }
        let expect = |job: &Job, last: &str| {
            let link = format!("https://ci.example.org/jobs/{}", job.id);
            ["pending", "running", last]
                .iter()
                .map(|state| (state.to_string(), link.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(by_commit.len(), 2, "only app's commits: {seen:?}");
        assert_eq!(
            by_commit[passed.commit.as_str()],
            expect(&passed, "success")
        );
        assert_eq!(by_commit[failed.commit.as_str()], expect(&failed, "failed"));
        assert!(tasks.stop(Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn a_missing_token_is_one_warning_and_a_new_entry_is_seen_on_a_miss() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = store::StoreUrl::sqlite(dir.path().join("warren.db"));
        let store = store::open(&url, store::StoreSettings::default())
            .await
            .expect("open");
        let target = |token_env: &str| model::StatusTarget {
            kind: ForgeKind::GitHub,
            api: "https://api.github.com".into(),
            repo: "me/app".into(),
            token_env: token_env.into(),
        };
        store
            .put_repo(&registered(
                "lib",
                "/srv/lib.git",
                Some(target("NO_SUCH_TOKEN")),
            ))
            .await
            .expect("put");
        let mut registry = Registry::new(store.clone(), token);
        let lib = RepoUrl::parse("/srv/lib.git").expect("url");
        let app = RepoUrl::parse("/srv/app.git").expect("url");
        for _ in 0..3 {
            assert!(registry.target(&lib).await.is_none());
            registry.read_at = None; // as if 2 s had passed
        }
        assert_eq!(registry.warnings, 1, "one warning per repository");
        assert!(registry.target(&app).await.is_none());
        store
            .put_repo(&registered(
                "app",
                "/srv/app.git",
                Some(target("GITLAB_TOKEN")),
            ))
            .await
            .expect("put");
        // A miss reads the registry again (once MISS_REFRESH has passed).
        tokio::time::sleep(MISS_REFRESH).await;
        let found = registry.target(&app).await.expect("registered now");
        assert_eq!(found.repo(), "me/app");
        assert!(!format!("{found:?}").contains(TOKEN));
        assert_eq!(registry.warnings, 1);
    }
}
