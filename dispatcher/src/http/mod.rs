//! The dispatcher's HTTP face: the JSON API that the CLI and the dashboard
//! read ([`api`]), the live feed of job changes ([`live`]), the pages
//! ([`dashboard`]), metrics and health checks.
//!
//! Every error is JSON, `{"error": "…"}`, with the status that says what
//! went wrong: handlers answer with [`error`], and [`json_errors`] turns
//! whatever else answers (axum's own rejections, 404 and 405) into the same
//! shape, keeping headers such as `Allow` and `WWW-Authenticate`.

// Handlers return ready-made error responses; boxing them buys nothing.
#![allow(clippy::result_large_err)]

mod api;
mod commits;
mod dashboard;
mod live;
mod repos;
mod trends;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use model::api::ErrorBody;
use model::JobRecord;
use store::{CommitMatch, Store, AMBIGUOUS_LISTED};
use tokio_util::sync::CancellationToken;

use crate::events::EventBus;
use crate::jobs::Jobs;
use crate::metrics::Metrics;
use crate::BrokerSlot;

/// What every handler may use.
#[derive(Clone)]
pub struct AppState {
    pub jobs: Jobs,
    pub broker: BrokerSlot,
    pub metrics: Arc<Metrics>,
    /// Required (as `Authorization: Bearer …`) by rerun and trigger, if set.
    pub api_token: Option<String>,
    pub heartbeat: Duration,
    pub management_url: String,
    /// How long the trigger's `git ls-remote` may take.
    pub git_timeout: Duration,
    /// Fires when the dispatcher stops: live-view streams end then, so the
    /// server's graceful shutdown is not held up by open dashboards.
    pub stopping: CancellationToken,
}

impl AppState {
    fn store(&self) -> &Arc<dyn Store> {
        self.jobs.store()
    }

    fn bus(&self) -> &EventBus {
        self.jobs.bus()
    }

    fn broker(&self) -> Option<Arc<dyn broker::Transport>> {
        self.broker.read().ok().and_then(|slot| slot.clone())
    }

    pub fn online_within_ms(&self) -> i64 {
        crate::online_within_ms(self.heartbeat)
    }
}

/// Every route of the dispatcher.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(api::routes())
        .merge(commits::routes())
        .merge(repos::routes())
        .merge(trends::routes())
        .route("/api/events", get(live::events))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .merge(dashboard::routes())
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such page or API path") })
        .layer(axum::middleware::map_response(json_errors))
        .with_state(state)
}

/// An error answer: `{"error": message}` with `status`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = ErrorBody {
        error: message.into(),
        commits: None,
    };
    (status, Json(body)).into_response()
}

/// A failure of ours: logged, and answered without detail.
pub fn internal(err: impl std::fmt::Display) -> Response {
    tracing::error!("API: {err}");
    error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
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

/// Finds a job by id, or by full or abbreviated commit (the newest job of
/// the commit). A 404 when nothing matches, a 409 listing the commits when
/// an abbreviation matches several.
pub async fn find_job(store: &dyn Store, key: &str) -> Result<JobRecord, Response> {
    if let Ok(id) = model::JobId::parse(key) {
        if let Some(job) = store.job(&id).await.map_err(internal)? {
            return Ok(job);
        }
    }
    find_commit(store, key).await
}

/// The newest job of the commit `key` abbreviates (at least 7 hex
/// digits): 404 when none, 409 (listing them) when several commits match.
pub async fn find_commit(store: &dyn Store, key: &str) -> Result<JobRecord, Response> {
    match store.job_by_commit(key).await.map_err(internal)? {
        CommitMatch::One(job) => Ok(*job),
        CommitMatch::None => Err(error(
            StatusCode::NOT_FOUND,
            format!("no job and no commit {key:?}"),
        )),
        CommitMatch::Several(commits) => {
            let more = commits.len() > AMBIGUOUS_LISTED;
            let listed: Vec<String> = commits
                .into_iter()
                .take(AMBIGUOUS_LISTED)
                .map(|c| c.into_string())
                .collect();
            let count = if more {
                format!("more than {AMBIGUOUS_LISTED}")
            } else {
                listed.len().to_string()
            };
            let body = ErrorBody {
                error: format!("{key:?} matches {count} commits; give more digits"),
                commits: Some(listed),
            };
            Err((StatusCode::CONFLICT, Json(body)).into_response())
        }
    }
}

/// `GET /metrics`: from the figures kept in memory, no query.
async fn metrics(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// `GET /readyz`: the broker is connected and the store can take a write.
async fn ready(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    let broker = state.broker().is_some_and(|b| b.is_connected());
    let store = state.store().writable().await;
    let body = serde_json::json!({ "broker_connected": broker, "store_writable": store });
    let status = if broker && store {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
