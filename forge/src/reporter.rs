//! Sending commit statuses to the forges, off the recording path.
//!
//! [`StatusReporter::report`] only puts the report on an unbounded channel
//! and returns: the dispatcher's event follower calls it and must never
//! wait for a forge. One task (the router) files each report under its
//! commit; each commit with reports to send has a worker that sends them
//! one after the other, so a forge sees a commit's `pending` before its
//! `success`. Workers of different commits run side by side, at most
//! [`StatusSettings::parallel`] requests at once.
//!
//! A report waiting behind another of the same commit and context is
//! replaced by a newer one (only the latest state matters to the forge),
//! and a report being retried is abandoned once a newer one for its
//! context is waiting: a commit holds at most one waiting report per
//! context, however long its forge is down, and the forge ends with the
//! newest state.
//!
//! Network errors, `5xx`, `408` and `429` are retried with exponential
//! back-off (a `Retry-After` in seconds is honoured), until
//! [`StatusSettings::give_up_after`] has passed since the first try: then
//! a warning, and the next report. Other answers are final (a warning for a
//! refusal: wrong token, unknown repository or commit). Logs name the
//! forge's host and the repository, never a URL's path or the token.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use model::CommitId;
use tasks::Tasks;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::status::{StatusRequest, StatusTarget, StatusUpdate};

/// How the reporter sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusSettings {
    /// Requests in flight at most, over all forges.
    pub parallel: usize,
    /// Limit on one request (connect, send, answer).
    pub request_timeout: Duration,
    /// Wait after the first failed try; doubles after each.
    pub first_delay: Duration,
    /// The longest wait between two tries.
    pub max_delay: Duration,
    /// A report not delivered this long after its first try is given up.
    pub give_up_after: Duration,
}

impl Default for StatusSettings {
    /// 8 requests at once, 10 s each; retries 0.5 s, 1 s, 2 s … at most
    /// 30 s apart, for 5 minutes.
    fn default() -> Self {
        StatusSettings {
            parallel: 8,
            request_timeout: Duration::from_secs(10),
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            give_up_after: Duration::from_secs(300),
        }
    }
}

impl StatusSettings {
    /// The wait after failed try number `attempt` (1-based).
    fn delay(&self, attempt: u32) -> Duration {
        self.first_delay
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)))
            .min(self.max_delay)
    }
}

/// What became of the reports so far, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusCounts {
    /// Taken by the forge (a `2xx`, or GitLab saying the commit already
    /// has that state).
    pub sent: u64,
    /// Answered with a final refusal (`4xx`).
    pub refused: u64,
    /// Replaced by a newer report of the same commit and context before
    /// being delivered.
    pub superseded: u64,
    /// Not delivered within [`StatusSettings::give_up_after`].
    pub given_up: u64,
}

/// The reporter could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the commit-status HTTP client: {0}")]
pub struct ReporterError(String);

/// Reports job changes to forges' commit-status APIs. Cheap to clone.
#[derive(Clone)]
pub struct StatusReporter {
    queue: mpsc::UnboundedSender<Item>,
    shared: Arc<Shared>,
}

/// One report, with where it goes.
struct Item {
    target: Arc<StatusTarget>,
    update: StatusUpdate,
}

/// Which reports must be sent in order: those of one commit on one
/// repository of one forge.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CommitKey {
    target: String,
    commit: CommitId,
}

struct Shared {
    settings: StatusSettings,
    client: reqwest::Client,
    permits: Semaphore,
    /// The reports waiting behind the one each commit's worker is sending;
    /// a commit is here exactly while it has a worker.
    waiting: Mutex<HashMap<CommitKey, VecDeque<Item>>>,
    /// Reports accepted and not yet sent, refused, superseded or given up.
    outstanding: watch::Sender<usize>,
    sent: AtomicU64,
    refused: AtomicU64,
    superseded: AtomicU64,
    given_up: AtomicU64,
}

impl StatusReporter {
    /// Starts the reporter's router as a lifetime task of `tasks` (its
    /// workers are bounded tasks of `tasks`); everything ends when `tasks`
    /// stops, with a warning saying how many reports were not sent.
    pub fn start(settings: StatusSettings, tasks: &Tasks) -> Result<StatusReporter, ReporterError> {
        let client = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout)
            // A redirect could carry the token's header to another host.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("warren/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| ReporterError(err.without_url().to_string()))?;
        let shared = Arc::new(Shared {
            settings,
            client,
            permits: Semaphore::new(settings.parallel.max(1)),
            waiting: Mutex::default(),
            outstanding: watch::Sender::new(0),
            sent: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            superseded: AtomicU64::new(0),
            given_up: AtomicU64::new(0),
        });
        let (queue, incoming) = mpsc::unbounded_channel();
        tasks.lifetime(
            "the commit-status router",
            route(incoming, shared.clone(), tasks.clone()),
        );
        Ok(StatusReporter { queue, shared })
    }

    /// Queues `update` for `target` and returns at once (never waits, never
    /// fails: what becomes of it is logged and counted).
    pub fn report(&self, target: &Arc<StatusTarget>, update: StatusUpdate) {
        self.shared.outstanding.send_modify(|n| *n += 1);
        let item = Item {
            target: target.clone(),
            update,
        };
        if self.queue.send(item).is_err() {
            // The router has ended: the reporter is stopping.
            self.shared.outstanding.send_modify(|n| *n -= 1);
            tracing::debug!("commit status not queued: the reporter is stopping");
        }
    }

    /// Resolves once every report made so far has been sent, refused,
    /// superseded or given up (at shutdown, a bounded wait on it lets the
    /// last statuses out).
    pub async fn idle(&self) {
        let mut outstanding = self.shared.outstanding.subscribe();
        // The sender lives in `shared`, which `self` holds: never closed.
        let _ = outstanding.wait_for(|n| *n == 0).await;
    }

    pub fn counts(&self) -> StatusCounts {
        let shared = &self.shared;
        StatusCounts {
            sent: shared.sent.load(Ordering::Relaxed),
            refused: shared.refused.load(Ordering::Relaxed),
            superseded: shared.superseded.load(Ordering::Relaxed),
            given_up: shared.given_up.load(Ordering::Relaxed),
        }
    }
}

/// Files each report under its commit: behind the report that commit's
/// worker is sending (replacing a waiting one of the same context), or in
/// a new worker.
async fn route(mut incoming: mpsc::UnboundedReceiver<Item>, shared: Arc<Shared>, tasks: Tasks) {
    let stopping = tasks.stopping().clone();
    loop {
        let item = tokio::select! {
            biased;
            _ = stopping.cancelled() => break,
            item = incoming.recv() => match item {
                Some(item) => item,
                // Every reporter handle is gone: nothing more will come.
                None => {
                    stopping.cancelled().await;
                    break;
                }
            },
        };
        let key = CommitKey {
            target: item.target.queue_key(),
            commit: item.update.commit.clone(),
        };
        let mut waiting = shared.lock_waiting();
        if let Some(queue) = waiting.get_mut(&key) {
            if let Some(at) = queue
                .iter()
                .position(|w| w.update.context == item.update.context)
            {
                queue.remove(at);
                shared.finish(&shared.superseded);
            }
            queue.push_back(item);
            continue;
        }
        waiting.insert(key.clone(), VecDeque::new());
        drop(waiting);
        let name = format!("the commit-status sender for {}", short(&key.commit));
        tasks.spawn(name, deliver_commit(shared.clone(), key, item));
    }
    let unsent = *shared.outstanding.borrow();
    if unsent > 0 {
        tracing::warn!(unsent, "stopping with commit statuses not sent");
    }
}

/// Sends one commit's reports in order, until none is waiting.
async fn deliver_commit(shared: Arc<Shared>, key: CommitKey, first: Item) {
    let mut next = Some(first);
    while let Some(item) = next {
        shared.deliver(&key, &item).await;
        let mut waiting = shared.lock_waiting();
        next = waiting.get_mut(&key).and_then(VecDeque::pop_front);
        if next.is_none() {
            waiting.remove(&key);
        }
    }
}

/// What one try came to.
enum Try {
    Sent,
    Refused(u16, String),
    Again { why: String, wait: Option<Duration> },
}

impl Shared {
    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, HashMap<CommitKey, VecDeque<Item>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a report's end.
    fn finish(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.outstanding.send_modify(|n| *n = n.saturating_sub(1));
    }

    /// Whether a newer report of the same commit and context is waiting.
    fn superseded(&self, key: &CommitKey, context: &str) -> bool {
        self.lock_waiting()
            .get(key)
            .is_some_and(|queue| queue.iter().any(|w| w.update.context == context))
    }

    /// Tries one report until it is delivered, refused, superseded or
    /// given up.
    async fn deliver(&self, key: &CommitKey, item: &Item) {
        let (target, update) = (&item.target, &item.update);
        let request = target.request(update);
        let started = Instant::now();
        for attempt in 1u32.. {
            let outcome = {
                let _permit = self.permits.acquire().await.ok();
                self.try_once(target, &request).await
            };
            let (why, wait) = match outcome {
                Try::Sent => {
                    tracing::debug!(forge = %target.host(), repo = %target.repo(), commit = %short(&update.commit), context = %update.context, state = request.state, attempt, "commit status sent");
                    return self.finish(&self.sent);
                }
                Try::Refused(status, answer) => {
                    tracing::warn!(forge = %target.host(), repo = %target.repo(), commit = %short(&update.commit), context = %update.context, state = request.state, status, answer = %answer, "the forge refused the commit status; not retrying");
                    return self.finish(&self.refused);
                }
                Try::Again { why, wait } => (why, wait),
            };
            let wait = wait
                .unwrap_or_else(|| self.settings.delay(attempt))
                .min(self.settings.max_delay);
            if started.elapsed() + wait > self.settings.give_up_after {
                tracing::warn!(forge = %target.host(), repo = %target.repo(), commit = %short(&update.commit), context = %update.context, state = request.state, attempts = attempt, error = %why, "giving up on the commit status after {:.1} s", started.elapsed().as_secs_f64());
                return self.finish(&self.given_up);
            }
            if self.superseded(key, &update.context) {
                return self.finish(&self.superseded);
            }
            tracing::info!(forge = %target.host(), repo = %target.repo(), commit = %short(&update.commit), state = request.state, attempt, error = %why, retry_in = ?wait, "commit status not delivered; retrying");
            tokio::time::sleep(wait).await;
            if self.superseded(key, &update.context) {
                return self.finish(&self.superseded);
            }
        }
    }

    async fn try_once(&self, target: &StatusTarget, request: &StatusRequest) -> Try {
        let mut builder = self.client.post(&request.url).body(request.body.clone());
        for (name, value) in &request.headers {
            builder = builder.header(*name, value);
        }
        let response = match builder.send().await {
            Ok(response) => response,
            Err(err) => {
                return Try::Again {
                    why: error_chain(&err.without_url()),
                    wait: None,
                }
            }
        };
        let status = response.status().as_u16();
        if response.status().is_success() {
            return Try::Sent;
        }
        if status >= 500 || status == 408 || status == 429 {
            let wait = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return Try::Again {
                why: format!("answered {status}"),
                wait,
            };
        }
        let answer = read_some(response, 2048).await;
        // GitLab refuses to "change" a status to the one it has (a repeated
        // report, or one sent again after a lost answer): it is there.
        if status == 400 && answer.contains("Cannot transition status") {
            return Try::Sent;
        }
        // Forges do not echo tokens, but what is logged must not hold one.
        let answer: String = answer
            .replace(target.token(), "***")
            .chars()
            .take(200)
            .collect();
        Try::Refused(status, answer)
    }
}

/// At most `limit` bytes of an answer's body, as text.
async fn read_some(mut response: reqwest::Response, limit: usize) -> String {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(limit);
    String::from_utf8_lossy(&body).into_owned()
}

/// An error and its causes, on one line ("error sending request: …
/// connection refused").
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn short(commit: &CommitId) -> &str {
    &commit[..12]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_limit() {
        let settings = StatusSettings::default();
        let waits: Vec<u64> = (1..=8)
            .map(|a| settings.delay(a).as_millis() as u64)
            .collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        assert_eq!(settings.delay(u32::MAX), settings.max_delay);
    }
}
