//! Notifications: on a failure, and on the first pass after a failure on
//! the same branch, POST a signed JSON payload to each configured webhook.
//!
//! Recording never waits for this: the outcomes come from the store
//! through [`crate::announce`] (every dispatcher's, on the one holding the
//! duties) on an unbounded channel. Notifications are rare (only
//! transitions between red and green) and each is about a kilobyte, so the
//! queue stays small even while a webhook is down: every notification leaves
//! it after at most [`Retry::attempts`] tries.
//!
//! One task decides, in the order outcomes are recorded, what each outcome
//! means for its repository and branch ([`decide`]); then every webhook has
//! a task and a queue of its own, so a slow or dead receiver delays neither
//! the decisions nor the other receivers, and each receiver gets its
//! notifications in order (a `failed` before the `fixed` that follows it).
//!
//! The notification queue lives in memory: a notification still queued or
//! being retried when the dispatcher stops is not sent (a warning says how
//! many). A dispatcher killed before `announce` deleted the changes it
//! handed over leaves them to the next holder, which sends them again with
//! the same `X-Warren-Delivery` id, so a receiver can drop the repeat. The tasks are the dispatcher's lifetime tasks: one that ends
//! while the dispatcher runs stops it with an error.

use std::time::Duration;

use serde::Serialize;
use tasks::Tasks;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use model::api::JobView;
use model::{CommitId, JobId, JobRecord, JobStatus};
use store::Store;

use crate::events::{Change, JobEvent};

/// `sha256=<hex HMAC-SHA256 of the exact body, keyed with the secret>`.
pub const SIGNATURE_HEADER: &str = "X-Warren-Signature";
/// `failed` or `fixed`.
pub const EVENT_HEADER: &str = "X-Warren-Event";
/// `<job id>.<event>`: the same for every retry of one notification.
pub const DELIVERY_HEADER: &str = "X-Warren-Delivery";
/// Version of the payload's shape.
pub const PAYLOAD_VERSION: u32 = 1;

/// What an outcome means for its branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    /// The branch went red: a failure after a pass (or as its first outcome).
    Failed,
    /// The branch is green again: the first pass after a failure.
    Fixed,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Failed => "failed",
            Event::Fixed => "fixed",
        }
    }
}

/// `failed`, `error` and `timeout` all mean the commit is not known to be
/// good, so all three are failures.
fn is_failure(status: JobStatus) -> bool {
    status.is_failure()
}

/// Whether an outcome (`current`) is worth a notification, given the
/// previous outcome on the same repository and branch (`None`: the first
/// one seen). Only changes are announced: a failure after a pass or as the
/// first outcome, and a pass after a failure. A failure after a failure
/// (whatever the kind) and a pass after a pass stay quiet.
pub fn decide(previous: Option<JobStatus>, current: JobStatus) -> Option<Event> {
    let previous_failed = previous.map(is_failure);
    if is_failure(current) {
        (previous_failed != Some(true)).then_some(Event::Failed)
    } else if current == JobStatus::Passed {
        (previous_failed == Some(true)).then_some(Event::Fixed)
    } else {
        None
    }
}

/// Whether an ended job's outcome says something of its commit: not a
/// skipped job (it never ran: the need that failed speaks), nor a canceled
/// one, nor a batch of a split job (its gate speaks for the tests).
pub fn speaks_for_its_commit(job: &JobRecord) -> bool {
    let batch = matches!(
        job.spec.as_ref().and_then(|spec| spec.split.as_ref()),
        Some(model::split::SplitPart::Batch { .. })
    );
    !batch && !matches!(job.status, JobStatus::Skipped | JobStatus::Canceled)
}

pub use forge::sign;

/// The job an event compares with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Previous {
    pub id: JobId,
    pub commit: CommitId,
    pub status: JobStatus,
}

impl From<&JobRecord> for Previous {
    fn from(job: &JobRecord) -> Self {
        Previous {
            id: job.id.clone(),
            commit: job.commit.clone(),
            status: job.status,
        }
    }
}

/// The JSON body POSTed to every webhook.
#[derive(Debug, Clone, Serialize)]
pub struct Payload {
    pub v: u32,
    pub event: Event,
    /// `<job id>.<event>`, also in the `X-Warren-Delivery` header.
    pub delivery: String,
    /// The job as `GET /api/jobs/{id}` shows it.
    pub job: JobView,
    pub previous: Option<Previous>,
    /// Paths on the dispatcher's HTTP address: the job's dashboard page,
    /// the job in the JSON API, and its raw log.
    pub job_url: String,
    pub api_url: String,
    pub log_url: String,
}

impl Payload {
    pub fn new(event: Event, job: JobRecord, previous: Option<Previous>) -> Payload {
        Payload {
            v: PAYLOAD_VERSION,
            event,
            delivery: format!("{}.{}", job.id, event.as_str()),
            job_url: format!("/jobs/{}", job.id),
            api_url: format!("/api/jobs/{}", job.id),
            log_url: format!("/api/jobs/{}/log", job.id),
            job: JobView::from(job),
            previous,
        }
    }
}

/// One notification, ready to send: the body is fixed, so every retry
/// sends (and signs) exactly the same bytes.
#[derive(Debug, Clone)]
struct Notification {
    event: Event,
    job_id: JobId,
    delivery: String,
    body: Vec<u8>,
    signature: Option<String>,
}

/// How often and how patiently to try one notification.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Tries in all, the first one included.
    pub attempts: u32,
    /// Wait after the first failed try; doubles after each.
    pub first_delay: Duration,
    /// Limit on one request (connect, send, answer).
    pub timeout: Duration,
}

impl Default for Retry {
    /// Six tries, 0.5 s apart and doubling: the last one about 15.5 s
    /// after the first.
    fn default() -> Self {
        Retry {
            attempts: 6,
            first_delay: Duration::from_millis(500),
            timeout: Duration::from_secs(10),
        }
    }
}

impl Retry {
    /// The wait after failed try number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        self.first_delay * 2u32.saturating_pow(attempt.saturating_sub(1).min(16))
    }
}

/// Whether an answer with this status is worth another try: server
/// errors, and the two client errors that mean "later" (408, 429). Any
/// other answer (a 4xx, a redirect) would come again, so it is final.
pub fn retryable(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

/// `scheme://host:port` of a webhook URL, for logs: a URL's path or query
/// often holds a token (chat webhooks), and its userinfo a password.
fn origin(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(url) => match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}", url.scheme()),
            (Some(host), None) => format!("{}://{host}", url.scheme()),
            _ => url.scheme().to_string(),
        },
        Err(_) => "an unparsable URL".to_string(),
    }
}

/// Turns outcomes into webhook notifications, off the recording path: it
/// follows the job events (see `events`) and has a task and a queue per
/// webhook.
pub struct Notifier;

impl Notifier {
    /// Starts the senders, as lifetime tasks of `tasks`, if any webhook is
    /// configured; `events` are every job event from now on.
    pub fn start(
        webhooks: Vec<String>,
        secret: Option<String>,
        store: Arc<dyn Store>,
        events: UnboundedReceiver<JobEvent>,
        tasks: &Tasks,
    ) {
        Notifier::start_with(webhooks, secret, store, events, Retry::default(), tasks)
    }

    /// [`Notifier::start`] with a retry policy of one's own.
    pub fn start_with(
        webhooks: Vec<String>,
        secret: Option<String>,
        store: Arc<dyn Store>,
        events: UnboundedReceiver<JobEvent>,
        retry: Retry,
        tasks: &Tasks,
    ) {
        if webhooks.is_empty() {
            return;
        }
        if secret.is_some() {
            tracing::info!(
                webhooks = webhooks.len(),
                "notifying webhooks of failures and fixes, signed with WARREN_WEBHOOK_SECRET"
            );
        } else {
            tracing::warn!(
                webhooks = webhooks.len(),
                "notifying webhooks of failures and fixes UNSIGNED: set WARREN_WEBHOOK_SECRET so receivers can verify them"
            );
        }
        let client = match reqwest::Client::builder()
            .timeout(retry.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("warren/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(client) => client,
            Err(err) => {
                tracing::error!(
                    "cannot build the webhook client: {}; notifications are off",
                    err.without_url()
                );
                return;
            }
        };
        let senders = webhooks
            .into_iter()
            .enumerate()
            .map(|(index, url)| {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let webhook = Webhook {
                    label: format!("#{} {}", index + 1, origin(&url)),
                    url,
                    client: client.clone(),
                    retry,
                };
                tasks.lifetime(
                    format!("the sender to webhook {}", webhook.label),
                    webhook.run(rx, tasks.stopping().clone()),
                );
                tx
            })
            .collect();
        let stopping = tasks.stopping().clone();
        tasks.lifetime(
            "the notifier",
            decide_all(events, senders, secret, store, stopping),
        );
    }
}

/// Decides, outcome by outcome in the order they were recorded, which ones
/// to announce, and hands those to every webhook's queue.
///
/// The store says which job finished on the branch before each one: with
/// several dispatchers (see `announce`), the outcomes this one decided on
/// are not all the branch's outcomes, so nothing is remembered here.
async fn decide_all(
    mut events: UnboundedReceiver<JobEvent>,
    webhooks: Vec<UnboundedSender<Notification>>,
    secret: Option<String>,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.recv() => match event {
                Some(event) => event,
                None => return,
            },
        };
        let job = match event.change {
            Change::Finished { .. } if speaks_for_its_commit(&event.job) => event.job,
            _ => continue,
        };
        // Each job of a pipeline goes red and green on its own: `lint`
        // follows the last `lint` of the branch.
        let previous = match store.finished_before(&job).await {
            Ok(found) => found.as_ref().map(Previous::from),
            Err(err) => {
                tracing::warn!(job = %job.id, "cannot read the branch's previous outcome ({err}); deciding as if there were none");
                None
            }
        };
        let Some(event) = decide(previous.as_ref().map(|p| p.status), job.status) else {
            continue;
        };
        let job_id = job.id.clone();
        let payload = Payload::new(event, job, previous);
        let body = match serde_json::to_vec(&payload) {
            Ok(body) => body,
            Err(err) => {
                tracing::warn!(job = %job_id, "cannot encode the notification: {err}");
                continue;
            }
        };
        let notification = Notification {
            event,
            signature: secret.as_ref().map(|s| sign(s.as_bytes(), &body)),
            delivery: payload.delivery,
            job_id,
            body,
        };
        for webhook in &webhooks {
            let _ = webhook.send(notification.clone());
        }
    }
}

/// One configured URL and its queue.
struct Webhook {
    url: String,
    /// What the logs call it (never the path, query or credentials).
    label: String,
    client: reqwest::Client,
    retry: Retry,
}

impl Webhook {
    async fn run(self, mut queue: UnboundedReceiver<Notification>, shutdown: CancellationToken) {
        loop {
            let notification = tokio::select! {
                _ = shutdown.cancelled() => break,
                next = queue.recv() => match next {
                    Some(notification) => notification,
                    None => return,
                },
            };
            let sent = tokio::select! {
                _ = shutdown.cancelled() => false,
                _ = self.send(&notification) => true,
            };
            if !sent {
                tracing::warn!(webhook = %self.label, event = notification.event.as_str(), job = %notification.job_id, "shutting down before the webhook took the notification");
                break;
            }
        }
        let pending = queue.len();
        if pending > 0 {
            tracing::warn!(webhook = %self.label, pending, "shutting down with notifications not sent");
        }
    }

    /// Tries until the webhook answers 2xx, answers something final, or
    /// the tries run out. Every try is logged.
    async fn send(&self, notification: &Notification) {
        let (event, job) = (notification.event.as_str(), &notification.job_id);
        for attempt in 1..=self.retry.attempts {
            let mut request = self
                .client
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(EVENT_HEADER, event)
                .header(DELIVERY_HEADER, &notification.delivery)
                .body(notification.body.clone());
            if let Some(signature) = &notification.signature {
                request = request.header(SIGNATURE_HEADER, signature);
            }
            let last = attempt == self.retry.attempts;
            let delay = self.retry.delay(attempt);
            match request.send().await {
                Ok(response) if response.status().is_success() => {
                    tracing::info!(webhook = %self.label, event, job = %job, attempt, status = response.status().as_u16(), "webhook notified");
                    return;
                }
                Ok(response) if !retryable(response.status().as_u16()) => {
                    tracing::warn!(webhook = %self.label, event, job = %job, attempt, status = response.status().as_u16(), "webhook refused the notification; not retrying");
                    return;
                }
                Ok(response) if last => {
                    tracing::warn!(webhook = %self.label, event, job = %job, attempt, status = response.status().as_u16(), "webhook failed; giving up on this notification");
                    return;
                }
                Ok(response) => {
                    tracing::warn!(webhook = %self.label, event, job = %job, attempt, status = response.status().as_u16(), retry_in = ?delay, "webhook failed; retrying");
                }
                Err(err) if last => {
                    tracing::warn!(webhook = %self.label, event, job = %job, attempt, error = %err.without_url(), "webhook unreachable; giving up on this notification");
                    return;
                }
                Err(err) => {
                    tracing::warn!(webhook = %self.label, event, job = %job, attempt, error = %err.without_url(), retry_in = ?delay, "webhook unreachable; retrying");
                }
            }
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::{BranchName, RepoUrl};
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn only_changes_between_red_and_green_are_announced() {
        use Event::{Failed, Fixed};
        let cases: &[(Option<&str>, &str, Option<Event>)] = &[
            // The first outcome on a branch: a failure is news, a pass is not.
            (None, "failed", Some(Failed)),
            (None, "error", Some(Failed)),
            (None, "timeout", Some(Failed)),
            (None, "passed", None),
            // Green to red.
            (Some("passed"), "failed", Some(Failed)),
            (Some("passed"), "error", Some(Failed)),
            (Some("passed"), "timeout", Some(Failed)),
            // Still red, whatever the kind of failure: quiet.
            (Some("failed"), "failed", None),
            (Some("failed"), "error", None),
            (Some("error"), "timeout", None),
            (Some("timeout"), "failed", None),
            // Red to green.
            (Some("failed"), "passed", Some(Fixed)),
            (Some("error"), "passed", Some(Fixed)),
            (Some("timeout"), "passed", Some(Fixed)),
            // Still green.
            (Some("passed"), "passed", None),
            // Not an outcome.
            (None, "running", None),
            (Some("failed"), "queued", None),
        ];
        let status = |word: &str| word.parse::<JobStatus>().expect("a status");
        for (previous, current, expected) in cases {
            assert_eq!(
                decide(previous.map(status), status(current)),
                *expected,
                "{previous:?} then {current}"
            );
        }
        // pass, fail, fail, pass: announced are the first failure and the fix.
        let mut previous = None;
        let mut events = Vec::new();
        for word in ["passed", "failed", "failed", "passed"] {
            events.push(decide(previous, status(word)));
            previous = Some(status(word));
        }
        assert_eq!(events, vec![None, Some(Failed), None, Some(Fixed)]);
    }

    #[test]
    fn the_signature_is_the_hex_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let body = br#"{"event":"failed"}"#;
        assert_ne!(sign(b"s3cret", body), sign(b"other", body));
        assert_ne!(
            sign(b"s3cret", body),
            sign(b"s3cret", br#"{"event":"fixed"}"#)
        );
    }

    #[test]
    fn retries_back_off_and_stop_at_final_answers() {
        let retry = Retry::default();
        let delays: Vec<_> = (1..retry.attempts).map(|a| retry.delay(a)).collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000].map(Duration::from_millis)
        );
        for status in [500, 502, 503, 504, 408, 429] {
            assert!(retryable(status), "{status}");
        }
        for status in [400, 401, 403, 404, 410, 301, 302] {
            assert!(!retryable(status), "{status}");
        }
    }

    #[test]
    fn logs_name_only_the_webhooks_origin() {
        assert_eq!(
            origin("https://user:pw@hooks.example.com/services/T0/B0/token?x=1"),
            "https://hooks.example.com"
        );
        assert_eq!(
            origin("http://127.0.0.1:9000/hook"),
            "http://127.0.0.1:9000"
        );
    }

    fn record(id: &str, status: &str) -> JobRecord {
        JobRecord {
            seq: 7,
            id: JobId::parse(id).expect("id"),
            repo: RepoUrl::parse("/r").expect("repo"),
            branch: BranchName::main(),
            commit: CommitId::parse(&"a".repeat(40)).expect("commit"),
            subject: Some("s".into()),
            author: None,
            status: status.parse().expect("status"),
            attempts: 1,
            duplicates: 0,
            runner: Some(model::RunnerId::parse("r1").expect("id")),
            connection: Some("conn".into()),
            enqueued_at_ms: Some(1),
            started_at_ms: Some(2),
            finished_at_ms: Some(3),
            duration_ms: Some(1),
            exit_code: Some(1),
            reason: None,
            truncated: false,
            salt: String::new(),
            sandbox: None,
            name: "test".into(),
            pipeline: JobId::parse(id).expect("id"),
            queue: Default::default(),
            needs: vec![],
            allow_failure: false,
            spec: None,
        }
    }

    #[test]
    fn the_payload_carries_the_event_the_job_and_its_links() {
        let payload = Payload::new(
            Event::Fixed,
            record("abc", "passed"),
            Some(Previous::from(&record("def", "failed"))),
        );
        let json = serde_json::to_value(&payload).expect("json");
        assert_eq!(json["v"], 1);
        assert_eq!(json["event"], "fixed");
        assert_eq!(json["delivery"], "abc.fixed");
        assert_eq!(json["job"]["id"], "abc");
        assert_eq!(json["job"]["status"], "passed");
        assert_eq!(json["job"]["branch"], "main");
        assert_eq!(json["job"]["log_url"], "/api/jobs/abc/log");
        assert!(json["job"].get("connection").is_none());
        assert_eq!(json["previous"]["id"], "def");
        assert_eq!(json["previous"]["status"], "failed");
        assert_eq!(json["job_url"], "/jobs/abc");
        assert_eq!(json["api_url"], "/api/jobs/abc");
        assert_eq!(json["log_url"], "/api/jobs/abc/log");
    }

    /// Each request's head (in lower case) and body.
    type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

    /// A receiver that answers the given statuses in turn (the last one
    /// forever) and records each request's head and body.
    async fn receiver(statuses: Vec<u16>) -> (String, Seen) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let read = socket.read(&mut chunk).await.unwrap_or(0);
                    if read == 0 {
                        break (String::new(), Vec::new());
                    }
                    buf.extend_from_slice(&chunk[..read]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + length {
                        break (head, buf[end + 4..end + 4 + length].to_vec());
                    }
                };
                let status = statuses[n.min(statuses.len() - 1)];
                n += 1;
                log.lock().expect("lock").push((head, body));
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        (url, seen)
    }

    fn quick() -> Retry {
        Retry {
            attempts: 4,
            first_delay: Duration::from_millis(10),
            timeout: Duration::from_secs(5),
        }
    }

    async fn deliver_to(url: &str, statuses_seen: &Seen) -> usize {
        let webhook = Webhook {
            url: url.to_string(),
            label: "#1".into(),
            client: reqwest::Client::new(),
            retry: quick(),
        };
        let body = br#"{"event":"failed"}"#.to_vec();
        webhook
            .send(&Notification {
                event: Event::Failed,
                job_id: JobId::parse("abc").expect("id"),
                delivery: "abc.failed".into(),
                signature: Some(sign(b"k", &body)),
                body,
            })
            .await;
        statuses_seen.lock().expect("lock").len()
    }

    #[tokio::test]
    async fn a_server_error_is_retried_with_the_same_signed_body() {
        let (url, seen) = receiver(vec![500, 503, 200]).await;
        assert_eq!(deliver_to(&url, &seen).await, 3);
        let seen = seen.lock().expect("lock");
        for (head, body) in seen.iter() {
            assert_eq!(body, br#"{"event":"failed"}"#);
            assert!(head.starts_with("post /hook http/1.1"), "{head}");
            assert!(head.contains(&format!("x-warren-signature: {}", sign(b"k", body))));
            assert!(head.contains("x-warren-event: failed"));
            assert!(head.contains("x-warren-delivery: abc.failed"));
            assert!(head.contains("content-type: application/json"));
        }
    }

    #[tokio::test]
    async fn a_client_error_is_final_and_tries_run_out() {
        let (url, seen) = receiver(vec![404]).await;
        assert_eq!(deliver_to(&url, &seen).await, 1);
        let (url, seen) = receiver(vec![502]).await;
        assert_eq!(deliver_to(&url, &seen).await, quick().attempts as usize);
    }

    #[tokio::test]
    async fn an_unreachable_webhook_is_given_up_on() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let started = std::time::Instant::now();
        assert_eq!(
            deliver_to(&format!("http://127.0.0.1:{port}/"), &seen).await,
            0
        );
        // 10 + 20 + 40 ms of back-off between the four tries.
        assert!(started.elapsed() >= Duration::from_millis(70));
    }

    #[test]
    fn batches_skipped_and_canceled_jobs_say_nothing_of_their_commit() {
        let with = |status: &str, split: Option<model::split::SplitPart>| {
            let mut job = record("abc", status);
            job.spec = Some(model::JobSpec {
                name: "test [1/3]".into(),
                run: "true".into(),
                env: Default::default(),
                matrix: Default::default(),
                timeout_ms: None,
                queue: Default::default(),
                needs: Vec::new(),
                allow_failure: true,
                split,
            });
            job
        };
        let batch = model::split::SplitPart::Batch {
            gate: "test".into(),
            tests: Vec::new(),
            retry: false,
        };
        assert!(!speaks_for_its_commit(&with("failed", Some(batch))));
        assert!(speaks_for_its_commit(&with("failed", None)));
        assert!(speaks_for_its_commit(&record("abc", "passed")));
        assert!(!speaks_for_its_commit(&record("abc", "skipped")));
        assert!(!speaks_for_its_commit(&record("abc", "canceled")));
    }

    #[tokio::test]
    async fn after_a_restart_the_store_says_what_came_before() {
        use model::{Job, JobResult, Outcome, RunnerId, RunnerInfo, SCHEMA_VERSION};
        let dir = tempfile::tempdir().expect("tempdir");
        let url = store::StoreUrl::sqlite(dir.path().join("warren.db"));
        let store = store::open(&url, store::StoreSettings::default())
            .await
            .expect("open");
        let bus = crate::events::EventBus::new();
        let mut at = 100;
        let mut finish = async |commit: char, outcome: Outcome| {
            at += 10;
            let job =
                Job::try_new("/r", "main", &commit.to_string().repeat(40)).expect("a valid job");
            let recorded = store
                .job_finished(&JobResult {
                    v: SCHEMA_VERSION,
                    job: job.clone(),
                    outcome,
                    exit_code: None,
                    started_at_ms: at - 5,
                    finished_at_ms: at,
                    duration_ms: 5,
                    output: String::new(),
                    truncated: false,
                    runner: RunnerInfo {
                        id: RunnerId::parse("r1").expect("id"),
                        host: "h".into(),
                        connection: "c".into(),
                        sandbox: Default::default(),
                        queues: Vec::new(),
                    },
                    reason: None,
                    plan: None,
                    tests: None,
                })
                .await
                .expect("record");
            let record = recorded.into_record();
            bus.publish(JobEvent {
                change: Change::Finished {
                    dead_lettered: false,
                },
                job: record.clone(),
            });
            record
        };
        // Recorded before this notifier started: a failure.
        let before = finish('a', Outcome::Failed).await;
        let (webhook, seen) = receiver(vec![200]).await;
        let tasks = Tasks::new(&CancellationToken::new());
        Notifier::start_with(
            vec![webhook],
            None,
            store.clone(),
            bus.subscribe(),
            quick(),
            &tasks,
        );
        for (commit, outcome) in [
            ('b', Outcome::Passed),
            ('c', Outcome::Timeout),
            ('d', Outcome::Failed),
            ('e', Outcome::Passed),
            ('f', Outcome::Passed),
            // A sentinel: news that comes after everything else.
            ('9', Outcome::Failed),
        ] {
            finish(commit, outcome).await;
        }
        // Each webhook gets its notifications in order: once the sentinel
        // arrived, anything the others caused arrived before it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while seen.lock().expect("lock").len() < 4 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let events: Vec<(String, String, String)> = seen
            .lock()
            .expect("lock")
            .iter()
            .map(|(head, body)| {
                assert!(
                    !head.contains("x-warren-signature"),
                    "no secret, no signature"
                );
                let json: serde_json::Value = serde_json::from_slice(body).expect("json");
                (
                    json["event"].as_str().unwrap_or_default().to_string(),
                    json["job"]["commit"].as_str().unwrap_or_default()[..1].to_string(),
                    json["previous"]["commit"].as_str().unwrap_or_default()[..1].to_string(),
                )
            })
            .collect();
        let e = |event: &str, commit: &str, previous: &str| {
            (event.to_string(), commit.to_string(), previous.to_string())
        };
        assert_eq!(before.status, JobStatus::Failed);
        assert_eq!(
            events,
            vec![
                e("fixed", "b", "a"),
                e("failed", "c", "b"),
                e("fixed", "e", "d"),
                e("failed", "9", "f")
            ]
        );
        assert!(tasks.stop(Duration::from_secs(5)).await);
    }
}
