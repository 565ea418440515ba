//! The HTTP face of the dispatcher: the JSON API that the CLI and the
//! dashboard read, metrics and health checks (the pages are in dashboard.rs).
//!
//! Every error is JSON, `{"error": "…"}`, with the status that says what
//! went wrong: handlers answer with [`error`], and [`json_errors`] turns
//! whatever else answers (axum's own rejections, 404 and 405) into the same
//! shape, keeping headers such as `Allow` and `WWW-Authenticate`.

// Handlers return ready-made error responses; boxing them buys nothing.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use model::{BranchName, CommitId, Job, RepoUrl};
use serde::{Deserialize, Serialize};

use crate::store::{CommitMatch, JobQuery, JobRecord, Store, AMBIGUOUS_LISTED, STATUSES};
use crate::BrokerSlot;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub broker: BrokerSlot,
    /// Every job change, for `/api/events`.
    pub updates: tokio::sync::broadcast::Sender<JobRecord>,
    /// Required (as `Authorization: Bearer …`) by rerun and trigger, if set.
    pub api_token: Option<String>,
    pub heartbeat: Duration,
    pub management_url: String,
    /// How long the trigger's `git ls-remote` may take.
    pub git_timeout: Duration,
    /// Fires when the dispatcher stops: live-view streams end then, so the
    /// server's graceful shutdown is not held up by open dashboards.
    pub stopping: tokio_util::sync::CancellationToken,
}

impl AppState {
    fn broker(&self) -> Option<Arc<broker::Broker>> {
        self.broker.read().ok().and_then(|slot| slot.clone())
    }

    /// Runners seen within three heartbeats (and at least 10 s) are online.
    pub fn online_within_ms(&self) -> i64 {
        (self.heartbeat.as_millis() as i64 * 3).max(10_000)
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/jobs", get(list_jobs))
        .route("/api/jobs/{id}", get(show_job))
        .route("/api/jobs/{id}/log", get(job_log))
        .route("/api/jobs/{id}/rerun", post(rerun))
        .route("/api/trigger", post(trigger))
        .route("/api/runners", get(list_runners))
        .route("/api/queue", get(queue))
        .route("/api/events", get(events))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .merge(crate::dashboard::routes())
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such page or API path") })
        .layer(axum::middleware::map_response(json_errors))
        .with_state(state)
}

/// An error answer: `{"error": message}` with `status`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// The longest error text kept from an answer that was not JSON.
const ERROR_TEXT_MAX: usize = 4096;

/// Rewrites an error answer that is not JSON (axum's rejections are plain
/// text, its 405 is empty) as `{"error": "…"}`, keeping its status and
/// headers. HTML pages (the dashboard's own 404 page) pass unchanged.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !(status.is_client_error() || status.is_server_error())
        || content_type.starts_with("application/json")
        || content_type.starts_with("text/html")
    {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, ERROR_TEXT_MAX)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_string())
        .unwrap_or_default();
    // axum adds `Allow` after this layer has run.
    let message = if status == StatusCode::METHOD_NOT_ALLOWED {
        "this method is not allowed on this path; the Allow header lists those that are".to_string()
    } else if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut rewritten = error(status, message);
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE {
            rewritten.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rewritten
}

/// Checks the API token for actions that change state.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    let Some(expected) = &state.api_token else {
        return Ok(());
    };
    // RFC 9110: the scheme is case-insensitive.
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let matches = given.is_some_and(|given| {
        // Compare in constant time.
        given.len() == expected.len()
            && given
                .bytes()
                .zip(expected.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if matches {
        Ok(())
    } else {
        let mut denied = error(
            StatusCode::UNAUTHORIZED,
            "this action needs the API token (Authorization: Bearer …)",
        );
        denied.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer realm=\"warren\""),
        );
        Err(denied)
    }
}

/// Publishes a job to the jobs exchange (confirmed).
async fn publish_job(state: &AppState, job: &Job) -> Result<(), Response> {
    let broker = state.broker().ok_or_else(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the broker; try again",
        )
    })?;
    let publisher = broker
        .publisher()
        .await
        .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    publisher
        .publish(&broker.names().jobs_exchange(), "", job)
        .await
        .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let stored = job.clone();
    state
        .store
        .call(move |s| s.record_queued(&stored))
        .await
        .map_err(internal)?;
    tracing::info!(job = %job.id, commit = %job.commit, branch = %job.branch, "job queued by hand");
    Ok(())
}

/// `POST /api/jobs/{id}/rerun`: the same commit again, as a new job.
async fn rerun(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(denied) = authorize(&state, &headers) {
        return denied;
    }
    let original = match find_job(&state.store, id).await {
        Ok(job) => job,
        Err(response) => return response,
    };
    let job = match original.to_job() {
        Ok(job) => job.again(&format!("rerun-{}", broker::now_ms())),
        Err(err) => return internal(err),
    };
    if let Err(response) = publish_job(&state, &job).await {
        return response;
    }
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "id": job.id, "rerun_of": original.id })),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
pub struct TriggerRequest {
    /// A full commit id, or a branch name to resolve.
    target: String,
    /// The branch to file the job under (default: the target if it is a
    /// branch, else the newest job's branch for the repository).
    branch: Option<String>,
    /// Default: the repository of the newest job.
    repo: Option<String>,
}

/// `POST /api/trigger`: enqueue a job by hand (like a forced build).
async fn trigger(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(request): Json<TriggerRequest>,
) -> Response {
    if let Err(denied) = authorize(&state, &headers) {
        return denied;
    }
    let newest = match state
        .store
        .call(|s| {
            s.jobs(&JobQuery {
                limit: 1,
                ..Default::default()
            })
        })
        .await
    {
        Ok(jobs) => jobs.into_iter().next(),
        Err(err) => return internal(err),
    };
    let repo = match request.repo.as_deref() {
        Some(repo) => match RepoUrl::parse(repo) {
            Ok(repo) => repo,
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        },
        None => match newest.as_ref() {
            Some(job) => match RepoUrl::parse(&job.repo) {
                Ok(repo) => repo,
                Err(e) => return internal(e),
            },
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "no repository known yet; pass repo",
                )
            }
        },
    };
    let target = request.target.trim().to_string();
    let (commit, branch) = if let Ok(commit) = CommitId::parse(&target) {
        let branch = request
            .branch
            .clone()
            .or_else(|| {
                newest
                    .as_ref()
                    .filter(|j| j.repo == repo.as_str())
                    .map(|j| j.branch.clone())
            })
            .unwrap_or_else(|| "main".to_string());
        (commit, branch)
    } else {
        if let Err(e) = BranchName::parse(&target) {
            return error(
                StatusCode::BAD_REQUEST,
                format!("target is neither a full commit id nor a branch: {e}"),
            );
        }
        let reference = format!("refs/heads/{target}");
        // No lock is held here: a slow server delays this request only.
        let listed = match git::Git::anywhere()
            .with_timeout(state.git_timeout)
            .run(&["ls-remote", "--", &repo, &reference])
            .await
        {
            Ok(listed) => listed,
            Err(e) if e.is_timeout() => {
                return error(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("cannot read {repo}: {e}"),
                )
            }
            Err(e) => return error(StatusCode::BAD_GATEWAY, format!("cannot read {repo}: {e}")),
        };
        let Some(commit) = listed
            .split_whitespace()
            .next()
            .and_then(|c| CommitId::parse(c).ok())
        else {
            return error(
                StatusCode::NOT_FOUND,
                format!("no branch {target:?} in {repo}"),
            );
        };
        (commit, request.branch.clone().unwrap_or(target))
    };
    let branch = match BranchName::parse(&branch) {
        Ok(branch) => branch,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let job =
        Job::for_commit(&repo, &branch, &commit).again(&format!("manual-{}", broker::now_ms()));
    if let Err(response) = publish_job(&state, &job).await {
        return response;
    }
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "id": job.id, "commit": job.commit, "branch": job.branch })),
    )
        .into_response()
}

/// `GET /api/queue`: the work queue's depth and consumers, and dead letters.
async fn queue(State(state): State<AppState>) -> Response {
    let Some(broker) = state.broker() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the broker",
        );
    };
    let names = broker.names().clone();
    let work = broker.queue_stats(&names.work_queue()).await;
    let dead = broker.queue_stats(&names.dead_letter_queue()).await;
    match (work, dead) {
        (Ok((depth, consumers)), Ok((dead_letters, _))) => Json(serde_json::json!({
            "queue": names.work_queue(),
            "depth": depth,
            "consumers": consumers,
            "dead_letter_queue": names.dead_letter_queue(),
            "dead_letters": dead_letters,
            "management_ui": without_credentials(&state.management_url),
        }))
        .into_response(),
        (Err(e), _) | (_, Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// A URL without its user name and password: anyone may read `/api/queue`.
fn without_credentials(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        }
        Err(_) => String::new(),
    }
}

/// `GET /api/events`: server-sent events, one `job` event per change. The
/// stream is polled by the client's connection (no task of its own) and
/// ends when the dispatcher stops.
async fn events(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    use tokio::sync::broadcast::error::RecvError;
    let updates = state.updates.subscribe();
    let stream = futures::stream::unfold(updates, |mut updates| async move {
        let event = match updates.recv().await {
            Ok(job) => {
                let data = serde_json::to_string(&JobView::from(job)).unwrap_or_default();
                SseEvent::default().event("job").data(data)
            }
            // Too slow a client: tell it to reload.
            Err(RecvError::Lagged(_)) => SseEvent::default().event("reload").data("{}"),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), updates))
    })
    .take_until(state.stopping.cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn metrics(State(state): State<AppState>) -> Response {
    let online = state.online_within_ms();
    match state
        .store
        .call(move |s| crate::metrics::render(s, online))
        .await
    {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(err) => internal(err),
    }
}

/// A job in the API: the record plus readable times.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    #[serde(flatten)]
    pub record: JobRecord,
    pub enqueued_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub log_url: String,
}

pub fn rfc3339(ms: Option<i64>) -> Option<String> {
    let ms = u64::try_from(ms?).ok()?;
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    Some(humantime::format_rfc3339_millis(time).to_string())
}

impl From<JobRecord> for JobView {
    fn from(record: JobRecord) -> Self {
        JobView {
            enqueued_at: rfc3339(record.enqueued_at_ms),
            started_at: rfc3339(record.started_at_ms),
            finished_at: rfc3339(record.finished_at_ms),
            log_url: format!("/api/jobs/{}/log", record.id),
            record,
        }
    }
}

/// `GET /api/jobs`'s query, as given: each value is checked by
/// [`ListParams::query`] so that a bad one gets an answer that names it.
#[derive(Debug, Deserialize)]
pub struct ListParams {
    pub status: Option<String>,
    pub branch: Option<String>,
    pub before: Option<String>,
    pub limit: Option<String>,
}

/// The most jobs one page holds, and how many it holds by default.
pub const PAGE_MAX: u32 = 1000;
pub const PAGE_DEFAULT: u32 = 50;

impl ListParams {
    /// The store query, or a 400 that says which parameter is wrong.
    pub fn query(self) -> Result<JobQuery, Response> {
        let bad = |message: String| error(StatusCode::BAD_REQUEST, message);
        let status = match self.status.filter(|s| !s.is_empty()) {
            Some(status) if !STATUSES.contains(&status.as_str()) => {
                return Err(bad(format!(
                    "status: unknown status {status:?} (one of {})",
                    STATUSES.join(", ")
                )))
            }
            status => status,
        };
        let limit = match self.limit.filter(|s| !s.is_empty()) {
            None => PAGE_DEFAULT,
            Some(text) => match text.parse::<u32>() {
                Ok(n) if (1..=PAGE_MAX).contains(&n) => n,
                _ => {
                    return Err(bad(format!(
                        "limit: expected a number from 1 to {PAGE_MAX}, got {text:?}"
                    )))
                }
            },
        };
        let before = match self.before.filter(|s| !s.is_empty()) {
            None => None,
            Some(text) => match text.parse::<i64>() {
                Ok(seq) if seq > 0 => Some(seq),
                _ => {
                    return Err(bad(format!(
                        "before: expected a job's seq (a positive number), got {text:?}"
                    )))
                }
            },
        };
        Ok(JobQuery {
            status,
            branch: self.branch.filter(|s| !s.is_empty()),
            before,
            limit,
        })
    }
}

pub fn internal(err: impl std::fmt::Display) -> Response {
    tracing::error!("API: {err}");
    error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}

pub async fn query_jobs(store: &Store, params: ListParams) -> Result<Vec<JobView>, Response> {
    let query = params.query()?;
    let jobs = store
        .call(move |s| s.jobs(&query))
        .await
        .map_err(internal)?;
    Ok(jobs.into_iter().map(JobView::from).collect())
}

async fn list_jobs(State(state): State<AppState>, Query(params): Query<ListParams>) -> Response {
    match query_jobs(&state.store, params).await {
        Ok(jobs) => Json(jobs).into_response(),
        Err(response) => response,
    }
}

/// Finds a job by id, or by full or abbreviated commit (the newest job of
/// the commit). A 404 when nothing matches, a 409 listing the commits when
/// an abbreviation matches several.
pub async fn find_job(store: &Store, key: String) -> Result<JobRecord, Response> {
    let shown = key.clone();
    let found = store
        .call(move |s| {
            if let Some(job) = s.job(&key)? {
                return Ok(CommitMatch::One(Box::new(job)));
            }
            s.job_by_commit(&key)
        })
        .await
        .map_err(internal)?;
    match found {
        CommitMatch::One(job) => Ok(*job),
        CommitMatch::None => Err(error(
            StatusCode::NOT_FOUND,
            format!("no job and no commit {shown:?}"),
        )),
        CommitMatch::Several(commits) => {
            let more = commits.len() > AMBIGUOUS_LISTED;
            let listed: Vec<&String> = commits.iter().take(AMBIGUOUS_LISTED).collect();
            let message = format!(
                "{shown:?} matches {} commits; give more digits",
                if more {
                    format!("more than {AMBIGUOUS_LISTED}")
                } else {
                    listed.len().to_string()
                }
            );
            Err((
                StatusCode::CONFLICT,
                Json(serde_json::json!({ "error": message, "commits": listed })),
            )
                .into_response())
        }
    }
}

async fn show_job(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match find_job(&state.store, id).await {
        Ok(job) => Json(JobView::from(job)).into_response(),
        Err(response) => response,
    }
}

async fn job_log(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let job = match find_job(&state.store, id).await {
        Ok(job) => job,
        Err(response) => return response,
    };
    let text = match state.store.log_path(&job.id) {
        Some(path) => tokio::fs::read_to_string(path).await.unwrap_or_default(),
        None => String::new(),
    };
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

/// A runner in the API: the record plus whether it is online.
#[derive(Debug, Clone, Serialize)]
pub struct RunnerView {
    #[serde(flatten)]
    pub record: crate::store::RunnerRecord,
    pub online: bool,
    pub last_seen: Option<String>,
}

pub async fn runner_views(state: &AppState) -> Result<Vec<RunnerView>, Response> {
    let runners = state.store.call(|s| s.runners()).await.map_err(internal)?;
    let cutoff = broker::now_ms() as i64 - state.online_within_ms();
    Ok(runners
        .into_iter()
        .map(|record| RunnerView {
            online: record.last_seen_ms >= cutoff,
            last_seen: rfc3339(Some(record.last_seen_ms)),
            record,
        })
        .collect())
}

async fn list_runners(State(state): State<AppState>) -> Response {
    match runner_views(&state).await {
        Ok(runners) => Json(runners).into_response(),
        Err(response) => response,
    }
}

async fn ready(State(state): State<AppState>) -> Response {
    let broker = state.broker().is_some_and(|b| b.is_connected());
    let store = state
        .store
        .call(|s| Ok(s.writable()))
        .await
        .unwrap_or(false);
    let body = serde_json::json!({ "broker_connected": broker, "store_writable": store });
    let status = if broker && store {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
