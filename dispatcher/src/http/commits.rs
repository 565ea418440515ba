//! A commit's pipeline (`GET /api/commits/{sha}`), canceling it and
//! running its failed jobs again, and why jobs wait: the `waiting_reason`
//! every job view carries, worked out when it is shown (it changes with
//! runners and queues, so it is not stored).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use model::api::{CommitView, JobView, RerunAnswer};
use model::{JobId, JobRecord, JobStatus, QueueName};
use serde::Deserialize;

use super::api::{cancel_jobs, queue_job};
use super::{authorize, error, find_commit, internal, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/commits/{sha}", get(show_commit))
        .route("/api/commits/{sha}/cancel", post(cancel_commit))
        .route("/api/commits/{sha}/rerun", post(rerun_commit))
}

/// `POST /api/commits/{sha}/cancel`: stops every job of the commit's
/// newest pipeline that has not ended (waiting, queued or running; the
/// planning job too while it plans). 200 with the jobs canceled; 409 when
/// every job had ended.
async fn cancel_commit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(sha): Path<String>,
) -> Response {
    if let Err(denied) = authorize(&state, &headers) {
        return denied;
    }
    let newest = match find_commit(state.store().as_ref(), &sha).await {
        Ok(job) => job,
        Err(response) => return response,
    };
    let jobs = match state.store().pipeline(&newest.pipeline).await {
        Ok(jobs) => jobs,
        Err(err) => return internal(err),
    };
    let open: Vec<JobId> = jobs
        .into_iter()
        .filter(|job| !job.is_terminal())
        .map(|job| job.id)
        .collect();
    if open.is_empty() {
        return error(
            StatusCode::CONFLICT,
            format!(
                "nothing to cancel: every job of commit {} has ended",
                newest.commit
            ),
        );
    }
    cancel_jobs(&state, &open).await
}

/// `POST /api/commits/{sha}/rerun`'s query.
#[derive(Debug, Deserialize)]
struct RerunParams {
    failed: Option<String>,
}

/// `POST /api/commits/{sha}/rerun`: the commit again from its first job
/// (a new pipeline, planned again). With `?failed=true`: only the jobs of
/// its newest pipeline that did not pass (failed, error, timeout,
/// canceled, and the jobs skipped because of them), as new jobs of the
/// same pipeline, in one store transaction; those whose needs passed are
/// published at once, the others wait for the new copies they need. When
/// the first job itself did not pass (no plan, or the one job of a commit
/// without a pipeline file), it is run again: a new pipeline. 202 with the
/// new jobs; 409 when nothing failed.
async fn rerun_commit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(sha): Path<String>,
    Query(params): Query<RerunParams>,
) -> Response {
    if let Err(denied) = authorize(&state, &headers) {
        return denied;
    }
    let failed_only = match params.failed.as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("failed: expected true or false, got {other:?}"),
            )
        }
    };
    let newest = match find_commit(state.store().as_ref(), &sha).await {
        Ok(job) => job,
        Err(response) => return response,
    };
    let first = match state.store().job(&newest.pipeline).await {
        Ok(Some(first)) => first,
        Ok(None) => return internal(format!("pipeline {} has no planning job", newest.pipeline)),
        Err(err) => return internal(err),
    };
    let salt = format!("rerun-{}", model::now_ms());
    let first_failed = first.status.is_failure() || first.status == JobStatus::Canceled;
    if !failed_only || first_failed {
        if failed_only && !first.is_terminal() {
            return error(StatusCode::CONFLICT, "the commit's first job has not ended");
        }
        let job = first.to_job().again(&salt);
        if let Err(response) = queue_job(&state, &job).await {
            return response;
        }
        let record = match state.store().job(&job.id).await {
            Ok(Some(record)) => record,
            Ok(None) => return internal(format!("job {} vanished once recorded", job.id)),
            Err(err) => return internal(err),
        };
        let answer = RerunAnswer {
            pipeline: record.pipeline.clone(),
            jobs: vec![JobView::from(record)],
        };
        return (StatusCode::ACCEPTED, Json(answer)).into_response();
    }
    let copies = match state.jobs.rerun_failed(&first.id, &salt).await {
        Ok(copies) => copies,
        Err(err) => return internal(err),
    };
    if copies.is_empty() {
        return error(
            StatusCode::CONFLICT,
            format!(
                "no job of commit {} failed: nothing to run again",
                first.commit
            ),
        );
    }
    for job in &copies {
        tracing::info!(job = %job.id, name = %job.name, commit = %job.commit, status = %job.status, "failed job run again");
    }
    match with_reasons(&state, copies.into_iter().map(JobView::from).collect()).await {
        Ok(jobs) => (
            StatusCode::ACCEPTED,
            Json(RerunAnswer {
                pipeline: first.id,
                jobs,
            }),
        )
            .into_response(),
        Err(response) => response,
    }
}

/// `GET /api/commits/{sha}`: the commit's newest pipeline, its verdict and
/// every job (404 for an unknown commit, 409 for an ambiguous one).
async fn show_commit(State(state): State<AppState>, Path(sha): Path<String>) -> Response {
    let newest = match find_commit(state.store().as_ref(), &sha).await {
        Ok(job) => job,
        Err(response) => return response,
    };
    match commit_view(&state, &newest.pipeline).await {
        Ok(Some(view)) => Json(view).into_response(),
        Ok(None) => internal(format!("pipeline {} has no planning job", newest.pipeline)),
        Err(response) => response,
    }
}

/// The pipeline whose planning job is `pipeline`, with its verdict and
/// each job's waiting reason. None when the planning job is unknown.
pub async fn commit_view(
    state: &AppState,
    pipeline: &JobId,
) -> Result<Option<CommitView>, Response> {
    let jobs = state.store().pipeline(pipeline).await.map_err(internal)?;
    let Some(verdict) = model::pipeline::verdict_of(pipeline, &jobs) else {
        return Ok(None);
    };
    let Some(first) = jobs.iter().find(|job| &job.id == pipeline).cloned() else {
        return Ok(None);
    };
    let views = with_reasons(state, jobs.into_iter().map(JobView::from).collect()).await?;
    Ok(Some(CommitView {
        commit: first.commit,
        repo: first.repo,
        branch: first.branch,
        status: verdict,
        pipeline: first.id,
        jobs: views,
    }))
}

/// Fills in why each job that has not started waits: the needs it waits
/// for, a queue no online runner serves, or how many jobs are ahead of it
/// on its queue.
pub async fn with_reasons(
    state: &AppState,
    mut views: Vec<JobView>,
) -> Result<Vec<JobView>, Response> {
    let waiting = |status| matches!(status, JobStatus::Waiting | JobStatus::Queued);
    if !views.iter().any(|view| waiting(view.record.status)) {
        return Ok(views);
    }
    let cutoff = model::now_ms() as i64 - state.online_within_ms();
    let runners = state.store().runners().await.map_err(internal)?;
    let served: Vec<QueueName> = runners
        .into_iter()
        .filter(|runner| runner.last_seen_ms >= cutoff)
        .flat_map(|runner| runner.queues)
        .collect();
    let mut pipelines: HashMap<JobId, Vec<JobRecord>> = HashMap::new();
    for view in &mut views {
        let job = &view.record;
        view.waiting_reason = match job.status {
            JobStatus::Waiting => {
                if !pipelines.contains_key(&job.pipeline) {
                    let jobs = state
                        .store()
                        .pipeline(&job.pipeline)
                        .await
                        .map_err(internal)?;
                    pipelines.insert(job.pipeline.clone(), jobs);
                }
                let jobs = &pipelines[&job.pipeline];
                let current: Vec<_> = model::pipeline::current(jobs)
                    .into_iter()
                    .map(model::pipeline::state)
                    .collect();
                let needs = model::pipeline::waiting_for(&model::pipeline::state(job), &current);
                Some(format!("waiting for {}", needs.join(", ")))
            }
            JobStatus::Queued if !served.contains(&job.queue) => {
                Some(format!("no runner serves queue '{}'", job.queue))
            }
            JobStatus::Queued => {
                let ahead = state
                    .store()
                    .queued_ahead(&job.queue, job.seq)
                    .await
                    .map_err(internal)?;
                Some(match ahead {
                    0 => format!("next on queue '{}'", job.queue),
                    1 => "queued behind 1 job".to_string(),
                    n => format!("queued behind {n} jobs"),
                })
            }
            _ => None,
        };
    }
    Ok(views)
}
