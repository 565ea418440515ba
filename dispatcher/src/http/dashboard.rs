//! The dashboard: four static pages and their scripts, embedded in the
//! binary, that render the JSON API in the browser.
//!
//! The HTML holds no data at all. The scripts fetch `/api/…`, build the
//! DOM with `textContent` (never `innerHTML` with data) and follow
//! `/api/events` to update live. Every page is served with a strict
//! Content-Security-Policy (scripts only from this server, no inline
//! scripts), so even a bug in the escaping could not run injected code.
//!
//! | path | page |
//! |---|---|
//! | `/` | jobs, newest first; `?status=`, `?repo=` (a registered name or a URL), `?branch=`, `?before=<seq>` |
//! | `/jobs/{id}` | one job (id or commit), its log, rerun |
//! | `/commits/{sha}` | a commit's pipeline as a graph, and its timeline |
//! | `/runners` | runners, queue depth, dead letters |
//! | `/assets/{name}` | the CSS and scripts |
//!
//! The front page also draws trends (`/api/trends`). Charts are drawn by
//! Chart.js, vendored in `assets/vendor/` with its licence and served
//! from here like every other asset: nothing is loaded from elsewhere.
//!
//! Rerun: the job page POSTs to `/api/jobs/{id}/rerun`. If the dispatcher
//! has an API token (`WARREN_API_TOKEN`), the first rerun prompts for it and
//! the page keeps it in the browser's localStorage (`warren.apiToken`); a
//! token the server refuses is forgotten and asked for again.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::{find_commit, find_job, AppState};

const JOBS_PAGE: &str = include_str!("../../assets/index.html");
const JOB_PAGE: &str = include_str!("../../assets/job.html");
const RUNNERS_PAGE: &str = include_str!("../../assets/runners.html");
const COMMIT_PAGE: &str = include_str!("../../assets/commit.html");

/// `(name, content type, body)` of every asset under `/assets/`.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "warren.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/warren.css"),
    ),
    (
        "common.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/common.js"),
    ),
    (
        "jobs.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/jobs.js"),
    ),
    (
        "job.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/job.js"),
    ),
    (
        "commit.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/commit.js"),
    ),
    (
        "charts.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/charts.js"),
    ),
    (
        "trends.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/trends.js"),
    ),
    (
        "chart.umd.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/vendor/chart.umd.min.js"),
    ),
    (
        "runners.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/runners.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../../assets/favicon.svg"),
    ),
];

/// Scripts and styles from this server only; nothing inline, no frames,
/// no plugins, requests only back to this server.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The dashboard's routes, to merge into the API router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { page(StatusCode::OK, JOBS_PAGE) }))
        .route("/jobs/{id}", get(job_page))
        .route("/commits/{sha}", get(commit_page))
        .route(
            "/runners",
            get(|| async { page(StatusCode::OK, RUNNERS_PAGE) }),
        )
        .route("/assets/{name}", get(asset))
}

fn page(status: StatusCode, html: &'static str) -> Response {
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// The job page; 404 (with the same page, which says so) for an unknown
/// job, 409 for an ambiguous commit, so that links to it fail visibly for
/// scripts too.
async fn job_page(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match find_job(state.store().as_ref(), &id).await {
        Ok(_) => page(StatusCode::OK, JOB_PAGE),
        // The page says why, from the same API call.
        Err(response) => page(response.status(), JOB_PAGE),
    }
}

/// The commit page; 404 or 409 as the job page.
async fn commit_page(State(state): State<AppState>, Path(sha): Path<String>) -> Response {
    match find_commit(state.store().as_ref(), &sha).await {
        Ok(_) => page(StatusCode::OK, COMMIT_PAGE),
        Err(response) => page(response.status(), COMMIT_PAGE),
    }
}

async fn asset(Path(name): Path<String>) -> Response {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return (StatusCode::NOT_FOUND, "no such asset\n").into_response();
    };
    (
        [
            (header::CONTENT_TYPE, *content_type),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // Small files from the same binary: revalidate, so an upgrade
            // shows at once.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        *body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_only_load_assets_that_exist() {
        for page in [JOBS_PAGE, JOB_PAGE, RUNNERS_PAGE, COMMIT_PAGE] {
            for reference in page.split("/assets/").skip(1) {
                let name = reference.split('"').next().unwrap_or_default();
                assert!(
                    ASSETS.iter().any(|(n, _, _)| *n == name),
                    "a page refers to a missing asset {name:?}"
                );
            }
            assert!(
                !page.contains("<script>") && !page.contains("<style") && !page.contains(" style="),
                "pages hold no inline scripts or styles (the CSP forbids them)"
            );
        }
    }
}
