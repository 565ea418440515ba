//! `GET /api/trends?repo=&branch=`: the figures behind the dashboard's
//! charts (see [`model::trends`]). The job figures come from the newest
//! jobs, read a page at a time through the store's ordinary listing (its
//! indexes serve every filter), so a store of a million jobs answers as
//! fast as one of a hundred; the load samples from the dispatcher's memory.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use model::api::PAGE_MAX;
use model::trends::{self, TrendsView};
use model::{JobQuery, JobRecord};
use serde::Deserialize;

use super::api::ListParams;
use super::{internal, AppState};

/// Jobs read for the pass rate: the newest this many of the repository
/// (or of all).
pub const PASS_RATE_JOBS: usize = 5_000;

/// Jobs of the branch read for the durations: enough for the last 100
/// runs of a pipeline of 20 jobs.
pub const DURATION_JOBS: usize = 2_000;

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/trends", get(show_trends))
}

#[derive(Debug, Deserialize)]
struct TrendsParams {
    /// A registered repository's name, or a repository's URL.
    repo: Option<String>,
    branch: Option<String>,
}

async fn show_trends(
    State(state): State<AppState>,
    Query(params): Query<TrendsParams>,
) -> Response {
    let list = ListParams {
        status: None,
        repo: params.repo,
        branch: params.branch,
        before: None,
        limit: None,
    };
    let query = match list.query(state.store().as_ref()).await {
        Ok(query) => query,
        Err(response) => return response,
    };
    let scope = match newest(&state, query.clone(), PASS_RATE_JOBS).await {
        Ok(jobs) => jobs,
        Err(response) => return response,
    };
    // Without a branch, the durations are of the newest job's branch.
    let branch = query
        .branch
        .clone()
        .or_else(|| scope.first().map(|job| job.branch.clone()));
    let durations = match &branch {
        Some(branch) if query.branch.is_none() => {
            let query = JobQuery {
                branch: Some(branch.clone()),
                ..query.clone()
            };
            match newest(&state, query, DURATION_JOBS).await {
                Ok(jobs) => trends::durations(&jobs),
                Err(response) => return response,
            }
        }
        _ => trends::durations(&scope[..scope.len().min(DURATION_JOBS)]),
    };
    Json(TrendsView {
        repo: query.repo,
        branch,
        durations,
        pass_rate: trends::pass_rate(&scope),
        load: state.metrics.load_history(),
    })
    .into_response()
}

/// The newest `max` jobs `query` matches, newest first, a page at a time.
async fn newest(
    state: &AppState,
    mut query: JobQuery,
    max: usize,
) -> Result<Vec<JobRecord>, Response> {
    let mut jobs: Vec<JobRecord> = Vec::new();
    while jobs.len() < max {
        query.limit = PAGE_MAX.min((max - jobs.len()) as u32);
        let page = state.store().jobs(&query).await.map_err(internal)?;
        let full = page.len() == query.limit as usize;
        query.before = page.last().map(|job| job.seq);
        jobs.extend(page);
        if !full {
            break;
        }
    }
    Ok(jobs)
}
