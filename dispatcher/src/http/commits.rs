//! A commit's pipeline (`GET /api/commits/{sha}`) and why jobs wait: the
//! `waiting_reason` every job view carries, worked out when it is shown
//! (it changes with runners and queues, so it is not stored).

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use model::api::{CommitView, JobView};
use model::{JobId, JobRecord, JobStatus, QueueName};

use super::{find_commit, internal, AppState};

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/commits/{sha}", get(show_commit))
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
