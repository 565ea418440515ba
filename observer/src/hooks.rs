//! Receiving pushes: `POST /hooks/{name}` on the observer's own address
//! (`--hooks-http`), for the repository `name` of the registry.
//!
//! The observer, not the dispatcher, receives them because it alone owns
//! each repository's state: a push and a poll of the same repository are
//! acted on one after the other by its watcher, so together they never
//! queue a commit twice. The delivery is checked by the `forge` crate
//! (which forge, the signature or token against the secret the registry's
//! `webhook_secret_env` names in the observer's environment, the payload);
//! the answer is `202` only once every job is confirmed by the broker.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::Context;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use forge::{Event, HookError, MAX_BODY_BYTES};
use model::RepoName;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::source::NewCommit;
use crate::watch::{Push, PushOutcome, PushRequest};

/// Reads a secret by the name of its environment variable (or the file
/// `NAME_FILE` names): `Ok(None)` when neither is set.
pub type SecretReader = Arc<dyn Fn(&str) -> Result<Option<String>, String> + Send + Sync>;

/// Forges give up on a hook after 10 s (GitHub): answer before.
const ANSWER_WITHIN: Duration = Duration::from_secs(9);

/// How long a delivery for a name the observer does not know waits for
/// the registry to be read again (the repository may have just been added).
const RESYNC_WITHIN: Duration = Duration::from_secs(5);

/// Where a repository's pushes go.
#[derive(Clone)]
pub(crate) struct HookTarget {
    /// The variable holding its webhook secret; `None`: webhooks refused.
    pub(crate) secret_env: Option<String>,
    pub(crate) pushes: mpsc::Sender<PushRequest>,
}

/// The repositories that take pushes, kept by the registry's sync.
#[derive(Clone)]
pub struct Hooks {
    inner: Arc<Inner>,
}

struct Inner {
    targets: RwLock<HashMap<RepoName, HookTarget>>,
    secrets: SecretReader,
    /// A delivery for an unknown name asks for the registry to be read now.
    resync: Notify,
    /// Counts the registry's reads.
    synced: watch::Sender<u64>,
}

impl Hooks {
    pub(crate) fn new(secrets: SecretReader) -> Self {
        Hooks {
            inner: Arc::new(Inner {
                targets: RwLock::default(),
                secrets,
                resync: Notify::new(),
                synced: watch::Sender::new(0),
            }),
        }
    }

    /// The registry was read: these are the repositories now.
    pub(crate) fn synced(&self, targets: HashMap<RepoName, HookTarget>) {
        *self
            .inner
            .targets
            .write()
            .unwrap_or_else(PoisonError::into_inner) = targets;
        self.inner.synced.send_modify(|count| *count += 1);
    }

    /// The registry could not be read: the repositories stay as they were.
    pub(crate) fn sync_failed(&self) {
        self.inner.synced.send_modify(|count| *count += 1);
    }

    /// Resolves when a delivery asks for the registry to be read now.
    pub(crate) async fn resync_requested(&self) {
        self.inner.resync.notified().await
    }

    fn lookup(&self, name: &RepoName) -> Option<HookTarget> {
        self.inner
            .targets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// The repository's target; for a name not known yet, after one more
    /// read of the registry (one that started after this call).
    async fn find(&self, name: &RepoName) -> Option<HookTarget> {
        if let Some(target) = self.lookup(name) {
            return Some(target);
        }
        let mut synced = self.inner.synced.subscribe();
        let asked_at = *synced.borrow_and_update();
        self.inner.resync.notify_one();
        // A read under way may have begun before the name was added: wait
        // for the one after it.
        let _ = tokio::time::timeout(
            RESYNC_WITHIN,
            synced.wait_for(|count| *count >= asked_at + 2),
        )
        .await;
        self.lookup(name)
    }
}

/// Binds the hooks' address; the error names the flag.
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on --hooks-http {address}"))
}

/// Serves `POST /hooks/{name}` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    hooks: Hooks,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(hooks))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

fn router(hooks: Hooks) -> Router {
    Router::new()
        .route("/hooks/{name}", post(receive))
        // The body's limit is the forge crate's, answered as JSON below.
        .layer(DefaultBodyLimit::disable())
        .fallback(|| async {
            answer(
                StatusCode::NOT_FOUND,
                json!({"error": "no such path: webhooks go to POST /hooks/NAME"}),
            )
        })
        .with_state(hooks)
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}

fn error(status: StatusCode, text: impl Into<String>) -> Response {
    answer(status, json!({ "error": text.into() }))
}

/// Nothing to queue, and nothing for the forge to retry.
fn nothing(reason: &str) -> Response {
    answer(StatusCode::OK, json!({ "queued": 0, "reason": reason }))
}

async fn receive(
    State(hooks): State<Hooks>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Ok(name) = RepoName::parse(&name) else {
        return error(StatusCode::NOT_FOUND, "no such repository");
    };
    let Some(target) = hooks.find(&name).await else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no repository {name} in the registry"),
        );
    };
    // A declared length over the limit is refused before reading a byte.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            HookError::TooLarge.to_string(),
        );
    }
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            HookError::TooLarge.to_string(),
        );
    };
    // No secret: every delivery is refused (as one with a wrong signature;
    // why is for this log only).
    let secret = match &target.secret_env {
        None => None,
        Some(var) => match (hooks.inner.secrets)(var) {
            Ok(secret) => {
                if secret.is_none() {
                    tracing::warn!(repo = %name, "webhook refused: {var} is not set in the observer's environment");
                }
                secret
            }
            Err(err) => {
                tracing::warn!(repo = %name, "webhook refused: {err}");
                None
            }
        },
    };
    let delivery = match forge::parse_push(&headers, &body, secret.unwrap_or_default().as_bytes()) {
        Ok(delivery) => delivery,
        Err(err) => {
            if let HookError::Unauthorized(why) = &err {
                tracing::warn!(repo = %name, "webhook refused: {why}");
            }
            let status = StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
            return error(status, err.to_string());
        }
    };
    let push = match delivery.event {
        Event::Push(push) => push,
        Event::Ping => return nothing("ping"),
        Event::Other(event) => {
            tracing::debug!(repo = %name, %event, "webhook event ignored");
            return nothing("not a push");
        }
    };
    let Some(branch) = push.built_branch().cloned() else {
        return nothing("a tag, or a deleted branch: nothing to build");
    };
    let push = Push {
        branch,
        before: (!push.created).then_some(push.before),
        after: push.after,
        commits: push
            .commits
            .into_iter()
            .map(|commit| NewCommit {
                id: commit.id,
                author: commit.author.unwrap_or_default(),
                subject: commit.subject.unwrap_or_default(),
            })
            .collect(),
        complete: !push.truncated,
        delivery: delivery.id.map(|id| format!("{}:{id}", delivery.forge)),
    };
    let (reply, outcome) = oneshot::channel();
    let delivery_id = push.delivery.clone().unwrap_or_default();
    let branch = push.branch.clone();
    let sent = tokio::time::timeout(ANSWER_WITHIN, async {
        target.pushes.send(PushRequest { push, reply }).await.ok()?;
        outcome.await.ok()
    })
    .await;
    let outcome = match sent {
        Ok(Some(outcome)) => outcome,
        Ok(None) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{name} is not being watched now; deliver again later"),
            )
        }
        Err(_) => {
            tracing::warn!(repo = %name, delivery = %delivery_id, "push not done within {ANSWER_WITHIN:?}; answered 503");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "still working on it; deliver again later",
            );
        }
    };
    tracing::info!(repo = %name, forge = %delivery.forge, delivery = %delivery_id, %branch, ?outcome, "push received");
    match outcome {
        PushOutcome::Queued(0) => nothing("nothing new on the branch"),
        PushOutcome::Queued(queued) => answer(StatusCode::ACCEPTED, json!({ "queued": queued })),
        PushOutcome::Seen => nothing("delivery seen before"),
        PushOutcome::NotBuilt => nothing("the branch is not built"),
        PushOutcome::BrokerDown => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the broker is unreachable; deliver again later",
        ),
        PushOutcome::Failed => error(
            StatusCode::BAD_GATEWAY,
            "cannot read the repository; deliver again later",
        ),
    }
}
