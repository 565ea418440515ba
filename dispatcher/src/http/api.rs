//! The JSON API: jobs (list, one, its log), rerun, cancel and trigger,
//! runners and the work queue. Its request and answer types are the model's
//! (`model::api`), shared with the `warren` client commands.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use model::api::{
    CancelAnswer, JobView, QueueView, Queued, RunnerView, TriggerRequest, PAGE_DEFAULT, PAGE_MAX,
};
use model::{BranchName, Job, JobQuery, JobStatus, RepoUrl};
use observer::producer::{self, Producer, Target};
use serde::Deserialize;
use store::Store;

use super::commits::with_reasons;
use super::{authorize, error, find_job, internal, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/jobs", get(list_jobs))
        .route("/api/jobs/{id}", get(show_job))
        .route("/api/jobs/{id}/log", get(job_log))
        .route("/api/jobs/{id}/tests", get(job_tests))
        .route("/api/jobs/{id}/rerun", post(rerun))
        .route("/api/jobs/{id}/cancel", post(cancel_job))
        .route("/api/trigger", post(trigger))
        .route("/api/runners", get(list_runners))
        .route("/api/queue", get(queue))
}

/// `GET /api/jobs`'s query, as given: each value is checked by
/// [`ListParams::query`] so that a bad one gets an answer that names it.
#[derive(Debug, Deserialize)]
pub struct ListParams {
    pub status: Option<String>,
    /// A registered repository's name, or a repository's URL.
    pub repo: Option<String>,
    pub branch: Option<String>,
    pub before: Option<String>,
    pub limit: Option<String>,
}

impl ListParams {
    /// The store query, or a 400 that says which parameter is wrong (a 404
    /// for a repository that is neither registered nor a URL).
    pub async fn query(self, store: &dyn Store) -> Result<JobQuery, Response> {
        let bad = |message: String| error(StatusCode::BAD_REQUEST, message);
        let status = match self.status.filter(|s| !s.is_empty()) {
            None => None,
            Some(word) => Some(
                word.parse::<JobStatus>()
                    .map_err(|e| bad(format!("status: {e}")))?,
            ),
        };
        let branch = match self.branch.filter(|s| !s.is_empty()) {
            None => None,
            Some(name) => {
                Some(BranchName::parse(&name).map_err(|e| bad(format!("branch: {}", e.reason)))?)
            }
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
        let repo = match self.repo.filter(|s| !s.is_empty()) {
            None => None,
            Some(key) => Some(super::repos::resolve(store, &key).await?),
        };
        Ok(JobQuery {
            status,
            repo,
            branch,
            before,
            limit,
        })
    }
}

/// `GET /api/jobs`: newest first, filtered, one page.
async fn list_jobs(State(state): State<AppState>, Query(params): Query<ListParams>) -> Response {
    let query = match params.query(state.store().as_ref()).await {
        Ok(query) => query,
        Err(response) => return response,
    };
    let jobs = match state.store().jobs(&query).await {
        Ok(jobs) => jobs,
        Err(err) => return internal(err),
    };
    match with_reasons(&state, jobs.into_iter().map(JobView::from).collect()).await {
        Ok(views) => Json(views).into_response(),
        Err(response) => response,
    }
}

async fn show_job(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let job = match find_job(state.store().as_ref(), &id).await {
        Ok(job) => job,
        Err(response) => return response,
    };
    match with_reasons(&state, vec![JobView::from(job)]).await {
        Ok(mut views) => Json(views.remove(0)).into_response(),
        Err(response) => response,
    }
}

/// `GET /api/jobs/{id}/log`: the output so far, or the whole of it.
async fn job_log(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let job = match find_job(state.store().as_ref(), &id).await {
        Ok(job) => job,
        Err(response) => return response,
    };
    match state.store().log(&job.id).await {
        Ok(text) => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            text.unwrap_or_default(),
        )
            .into_response(),
        Err(err) => internal(err),
    }
}

/// `GET /api/jobs/{id}/tests`: a split job's tests (issue 18), one entry
/// per test id with its merged status (`flaky`: failed, then passed
/// alone), its newest attempt's time, runner and batch, and how many
/// attempts it had. Empty for a job that is not split.
async fn job_tests(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let job = match find_job(state.store().as_ref(), &id).await {
        Ok(job) => job,
        Err(response) => return response,
    };
    match state.store().tests_of(&job.id).await {
        Ok(tests) => Json(tests).into_response(),
        Err(err) => internal(err),
    }
}

/// Why jobs canceled through the API are canceled.
pub const CANCELED_BY_HAND: &str = "canceled by hand";

/// `POST /api/jobs/{id}/cancel`: stops one job that has not ended (its
/// waiting dependents are skipped). 200 with what changed; 409 when the
/// job had already ended.
async fn cancel_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(denied) = authorize(&state, &headers) {
        return denied;
    }
    let job = match find_job(state.store().as_ref(), &id).await {
        Ok(job) => job,
        Err(response) => return response,
    };
    if job.is_terminal() {
        return error(
            StatusCode::CONFLICT,
            format!("job {} has already ended ({})", job.id, job.status),
        );
    }
    cancel_jobs(&state, &[job.id]).await
}

/// Cancels `ids` (those not ended) and answers with what changed: 200, or
/// 409 when every one had ended meanwhile.
pub async fn cancel_jobs(state: &AppState, ids: &[model::JobId]) -> Response {
    let changed = match state.jobs.canceled(ids, CANCELED_BY_HAND).await {
        Ok(changed) => changed,
        Err(err) => return internal(err),
    };
    let (canceled, skipped): (Vec<_>, Vec<_>) = changed
        .into_iter()
        .partition(|job| job.status == JobStatus::Canceled);
    if canceled.is_empty() {
        return error(
            StatusCode::CONFLICT,
            "nothing to cancel: every job has ended",
        );
    }
    for job in &canceled {
        tracing::info!(job = %job.id, name = %job.name, commit = %job.commit, "job canceled by hand");
    }
    Json(CancelAnswer {
        canceled: canceled.into_iter().map(|job| job.id).collect(),
        skipped: skipped.into_iter().map(|job| job.id).collect(),
    })
    .into_response()
}

/// Queues `job` through the producer and records it, so the answer can
/// name it at once.
pub async fn queue_job(state: &AppState, job: &Job) -> Result<(), Response> {
    let broker = state.broker().ok_or_else(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the broker; try again",
        )
    })?;
    Producer::new(&*broker)
        .queue(job)
        .await
        .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    state.jobs.queued(job).await.map_err(internal)?;
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
    let original = match find_job(state.store().as_ref(), &id).await {
        Ok(job) => job,
        Err(response) => return response,
    };
    let job = original
        .to_job()
        .again(&format!("rerun-{}", model::now_ms()));
    if let Err(response) = queue_job(&state, &job).await {
        return response;
    }
    let answer = Queued {
        id: job.id,
        commit: None,
        branch: None,
        repo: None,
        rerun_of: Some(original.id),
    };
    (StatusCode::ACCEPTED, Json(answer)).into_response()
}

/// `POST /api/trigger`: queue a job by hand (like a forced build).
async fn trigger(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(request): Json<TriggerRequest>,
) -> Response {
    if let Err(denied) = authorize(&state, &headers) {
        return denied;
    }
    let newest = match state
        .store()
        .jobs(&JobQuery {
            limit: 1,
            ..JobQuery::default()
        })
        .await
    {
        Ok(jobs) => jobs.into_iter().next(),
        Err(err) => return internal(err),
    };
    let repo = match (request.repo.as_deref(), &newest) {
        (Some(repo), _) => match RepoUrl::parse(repo) {
            Ok(repo) => repo,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("repo: {}", e.reason)),
        },
        (None, Some(newest)) => newest.repo.clone(),
        (None, None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "no repository known yet; pass repo",
            )
        }
    };
    let target = match Target::parse(&request.target) {
        Ok(target) => target,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let commit = match producer::resolve(&repo, &target, state.git_timeout).await {
        Ok(commit) => commit,
        Err(e) if e.is_timeout() => return error(StatusCode::GATEWAY_TIMEOUT, e.to_string()),
        Err(e @ producer::ResolveError::NoSuchBranch { .. }) => {
            return error(StatusCode::NOT_FOUND, e.to_string())
        }
        Err(e) => return error(StatusCode::BAD_GATEWAY, e.to_string()),
    };
    // The branch to file the job under: given, else the target's own,
    // else the repository's newest job's.
    let branch = match (request.branch.as_deref(), &target) {
        (Some(branch), _) => match BranchName::parse(branch) {
            Ok(branch) => branch,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("branch: {}", e.reason)),
        },
        (None, Target::Branch(branch)) => branch.clone(),
        (None, Target::Commit(_)) => newest
            .filter(|job| job.repo == repo)
            .map(|job| job.branch)
            .unwrap_or_else(BranchName::main),
    };
    let job =
        Job::for_commit(&repo, &branch, &commit).again(&format!("manual-{}", model::now_ms()));
    if let Err(response) = queue_job(&state, &job).await {
        return response;
    }
    let answer = Queued {
        id: job.id,
        commit: Some(job.commit.into_string()),
        branch: Some(job.branch.into_string()),
        repo: None,
        rerun_of: None,
    };
    (StatusCode::ACCEPTED, Json(answer)).into_response()
}

/// `GET /api/runners`: every runner seen, online or not.
async fn list_runners(State(state): State<AppState>) -> Response {
    match runner_views(&state).await {
        Ok(runners) => Json(runners).into_response(),
        Err(response) => response,
    }
}

pub async fn runner_views(state: &AppState) -> Result<Vec<RunnerView>, Response> {
    let runners = state.store().runners().await.map_err(internal)?;
    let cutoff = model::now_ms() as i64 - state.online_within_ms();
    Ok(runners
        .into_iter()
        .map(|record| RunnerView {
            online: record.last_seen_ms >= cutoff,
            last_seen: model::api::rfc3339(Some(record.last_seen_ms)),
            record,
        })
        .collect())
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
        (Ok(work), Ok(dead)) => Json(QueueView {
            queue: names.work_queue(),
            depth: work.ready,
            consumers: work.consumers,
            dead_letter_queue: names.dead_letter_queue(),
            dead_letters: dead.ready,
            management_ui: without_credentials(&state.management_url),
        })
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
