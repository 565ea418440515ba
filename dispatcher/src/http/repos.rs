//! The repository registry over HTTP: list, add, replace and remove
//! entries. Reading is open (an entry holds no secret, only the names of the
//! variables that hold them); every write needs the API token when one is
//! set. The observer reads the list to know what to watch.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use model::{Repo, RepoName, RepoUrl};
use store::Store;

use super::{authorize, error, internal, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/repos", get(list).post(add))
        .route("/api/repos/{name}", get(show).put(replace).delete(remove))
}

/// A repository named in a query (`?repo=`): a registered name, else a
/// repository's URL or path as jobs carry it.
pub async fn resolve(store: &dyn Store, key: &str) -> Result<RepoUrl, Response> {
    if let Ok(name) = RepoName::parse(key) {
        if let Some(repo) = store.repo(&name).await.map_err(internal)? {
            return Ok(repo.url);
        }
    }
    match RepoUrl::parse(key) {
        Ok(url) if key.contains('/') => Ok(url),
        _ => Err(error(
            StatusCode::NOT_FOUND,
            format!("repo: no registered repository {key:?}"),
        )),
    }
}

async fn list(State(state): State<AppState>) -> Response {
    match state.store().repos().await {
        Ok(repos) => Json(repos).into_response(),
        Err(err) => internal(err),
    }
}

async fn show(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    match find(state.store().as_ref(), &name).await {
        Ok(repo) => Json(repo).into_response(),
        Err(response) => response,
    }
}

/// `POST /api/repos`: a new entry (`201`). The same entry again is `200`,
/// so a retried request is harmless; a different one of the same name is a
/// `409` (replacing is `PUT`).
async fn add(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(repo): Json<Repo>,
) -> Response {
    if let Err(denied) = authorize(&state, &headers) {
        return denied;
    }
    let store = state.store().as_ref();
    match store.repo(&repo.name).await {
        Ok(Some(existing)) if existing == repo => return Json(existing).into_response(),
        Ok(Some(_)) => {
            return error(
                StatusCode::CONFLICT,
                format!(
                    "repository {} exists with other settings; PUT /api/repos/{} replaces it",
                    repo.name, repo.name
                ),
            )
        }
        Ok(None) => {}
        Err(err) => return internal(err),
    }
    put(store, repo).await
}

/// `PUT /api/repos/{name}`: adds or replaces the entry (`201` or `200`).
async fn replace(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(repo): Json<Repo>,
) -> Response {
    if let Err(denied) = authorize(&state, &headers) {
        return denied;
    }
    if repo.name.as_str() != name {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "name: the body names {:?}, the path {name:?}",
                repo.name.as_str()
            ),
        );
    }
    put(state.store().as_ref(), repo).await
}

/// Validates and stores an entry: one URL has one name, so that its
/// commits are queued once.
async fn put(store: &dyn Store, repo: Repo) -> Response {
    if let Err(e) = repo.validate() {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    let others = match store.repos().await {
        Ok(repos) => repos,
        Err(err) => return internal(err),
    };
    if let Some(other) = others
        .iter()
        .find(|other| other.url == repo.url && other.name != repo.name)
    {
        return error(
            StatusCode::CONFLICT,
            format!("url: {} is already registered as {}", repo.url, other.name),
        );
    }
    match store.put_repo(&repo).await {
        Ok(created) => {
            tracing::info!(repo = %repo.name, url = %repo.url, created, "repository registered");
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, Json(repo)).into_response()
        }
        Err(err) => internal(err),
    }
}

/// `DELETE /api/repos/{name}`: `204`; its jobs stay.
async fn remove(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if let Err(denied) = authorize(&state, &headers) {
        return denied;
    }
    let store = state.store().as_ref();
    let repo = match find(store, &name).await {
        Ok(repo) => repo,
        Err(response) => return response,
    };
    match store.remove_repo(&repo.name).await {
        Ok(_) => {
            tracing::info!(repo = %repo.name, "repository removed from the registry");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(err) => internal(err),
    }
}

async fn find(store: &dyn Store, name: &str) -> Result<Repo, Response> {
    let not_found = || {
        error(
            StatusCode::NOT_FOUND,
            format!("no registered repository {name:?}"),
        )
    };
    let name = RepoName::parse(name).map_err(|_| not_found())?;
    store
        .repo(&name)
        .await
        .map_err(internal)?
        .ok_or_else(not_found)
}
