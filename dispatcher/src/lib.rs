//! The dispatcher: thin, and not on the path from commit to test.
//!
//! It records every job and its one outcome in the store, holds leases on
//! running jobs and acts when a runner freezes, and serves the JSON API and
//! the dashboard. If it is down, jobs keep running and results wait in its
//! durable queues.
//!
//! Split by responsibility, around one channel of job events:
//!
//! - [`recorder`] reads the broker and says what each message means;
//! - [`jobs`] is the one place a job's state changes (a store transition,
//!   then an event on the [`events`] bus);
//! - [`leases`] watches running jobs' heartbeats and acts on frozen runners;
//! - [`cancels`] tells runners to stop the canceled jobs they run;
//! - [`leader`] says whether this dispatcher does the duties done once
//!   (lease expiry, the outbox, announcing changes, [`retention`]) when
//!   several share a PostgreSQL store;
//! - [`outbox`] publishes the pipeline jobs a transition released (the
//!   store's outbox, written in the transition's transaction);
//! - [`announce`] reads every dispatcher's changes back from the store for
//!   [`notify`] and [`status`] (commit statuses on the forges), so each is
//!   announced once; [`metrics`] follows the events; [`http`] serves the
//!   API, the pages and the live feed (also from the events).
//!
//! Every task it starts is tracked ([`tasks::Tasks`]) and awaited when it
//! stops. One that should run as long as the dispatcher (the HTTP server,
//! the notifier, the metrics) and ends anyway stops it with an error, so
//! that Compose or systemd restarts it, rather than leaving it running
//! without that part.

pub mod announce;
pub mod cancels;
pub mod events;
pub mod http;
pub mod jobs;
pub mod leader;
pub mod leases;
pub mod management;
pub mod metrics;
pub mod notify;
pub mod outbox;
pub mod recorder;
pub mod retention;
pub mod status;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use broker::{BrokerConfig, BrokerError, Connector, Transport};
use store::{StoreSettings, StoreUrl};
use tasks::Tasks;
use tokio_util::sync::CancellationToken;

use crate::events::EventBus;
use crate::jobs::Jobs;
use crate::leases::{Expiry, Leases};
use crate::management::Management;
use crate::metrics::Metrics;
use crate::recorder::{RecordError, Recorder};

/// How long to wait before trying again after the store failed to write
/// (a full disk): the broker keeps the unrecorded messages meanwhile.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// Everything the dispatcher needs.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    pub broker: BrokerConfig,
    /// Where jobs, outcomes and logs are kept (`--store`).
    pub store: StoreUrl,
    pub http: SocketAddr,
    /// Management API URL (may hold credentials; never logged).
    pub management_url: String,
    /// How long a running job's lease lasts without a heartbeat.
    pub lease: Duration,
    /// Seconds between runner heartbeats (a runner is online while seen
    /// within three of them).
    pub heartbeat: Duration,
    /// URLs to POST failure and recovery notifications to.
    pub webhooks: Vec<String>,
    /// HMAC-SHA256 key for webhook signatures (from the environment).
    pub webhook_secret: Option<String>,
    /// Token that state-changing API calls must carry, if set.
    pub api_token: Option<String>,
    /// How long one git call (the trigger's `ls-remote`) may take.
    pub git_timeout: Duration,
    /// Where the dashboard is reached from outside (`--public-url`, checked
    /// by [`status::parse_public_url`]): commit statuses link to
    /// `{public_url}/jobs/{id}`. `None`: `http://{the --http address}`.
    pub public_url: Option<String>,
    /// Which finished jobs to keep (`--keep-jobs`, `--keep-days`), and how
    /// often to prune the others (`--prune-every`).
    pub retention: store::Retention,
    pub prune_every: Duration,
}

/// How long the dispatcher's tasks get to end once it stops (the whole
/// stop must fit in 2 s).
const STOP_TASKS_WITHIN: Duration = Duration::from_millis(1500);

/// The broker connection while there is one, for the API's actions
/// (rerun, trigger) and queue statistics.
pub type BrokerSlot = Arc<RwLock<Option<Arc<dyn Transport>>>>;

/// How recently a runner must have been seen to count as online: within
/// three heartbeats, and at least 10 s.
pub fn online_within_ms(heartbeat: Duration) -> i64 {
    (heartbeat.as_millis() as i64 * 3).max(10_000)
}

/// Runs the dispatcher until `shutdown` fires, or until one of its
/// lifetime tasks ends (an error).
pub async fn run(config: DispatcherConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let store = store::open(&config.store, StoreSettings::default())
        .await
        .with_context(|| format!("opening the store {}", config.store))?;
    let management = match Management::new(&config.management_url) {
        Ok(management) => Some(management),
        Err(err) => {
            tracing::warn!(
                "--management-url: {err}; frozen runners' jobs will be republished instead"
            );
            None
        }
    };
    // Running jobs are adopted from the store by the lease watcher.
    let leases = Leases::new(config.lease);
    let metrics = Arc::new(
        Metrics::load(store.as_ref())
            .await
            .context("reading the store's figures for /metrics")?,
    );
    let listener = tokio::net::TcpListener::bind(config.http)
        .await
        .with_context(|| format!("cannot listen on --http {}", config.http))?;
    let address = listener.local_addr().unwrap_or(config.http);

    // Everything below stops on `stopping`: on shutdown, or when a lifetime
    // task died.
    let tasks = Tasks::new(&shutdown);
    // Other dispatchers may record on a PostgreSQL store: what they
    // recorded is looked for there (see `announce` and `leases`).
    let shared_store = config.store.is_postgres();
    let stopping = tasks.stopping().clone();
    let (leads, leader) = tokio::sync::watch::channel(false);
    tasks.lifetime(
        "the leadership check",
        leader::follow(store.clone(), leads, stopping.clone()),
    );
    // First: if it cannot start, nothing else has.
    let reporter = forge::StatusReporter::start(forge::StatusSettings::default(), &tasks)
        .context("starting the commit-status reporter")?;
    let bus = EventBus::new();
    let jobs = Jobs::new(store.clone(), bus.clone());
    // Notifications and commit statuses follow the store's changes, read
    // by the dispatcher holding the duties (see `announce`).
    let (to_notifier, for_notifier) = tokio::sync::mpsc::unbounded_channel();
    let (to_statuses, for_statuses) = tokio::sync::mpsc::unbounded_channel();
    tasks.lifetime(
        "the announcer",
        announce::announce(
            store.clone(),
            bus.subscribe(),
            leader.clone(),
            vec![to_notifier, to_statuses],
            shared_store.then_some(announce::POLL),
            stopping.clone(),
        ),
    );
    notify::Notifier::start(
        config.webhooks.clone(),
        config.webhook_secret.clone(),
        store.clone(),
        for_notifier,
        &tasks,
    );
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{address}"));
    status::CommitStatuses::start(reporter, store.clone(), for_statuses, public_url, &tasks);
    tasks.lifetime(
        "the metrics' event follower",
        metrics::follow(metrics.clone(), bus.subscribe(), stopping.clone()),
    );
    let online_within_ms = online_within_ms(config.heartbeat);
    tasks.lifetime(
        "the metrics' sampler",
        metrics::sample(
            metrics.clone(),
            store.clone(),
            online_within_ms,
            stopping.clone(),
        ),
    );
    let recorder = Recorder {
        jobs: jobs.clone(),
        leases: Arc::new(Mutex::new(leases)),
        expiry: Expiry {
            management,
            tasks: tasks.clone(),
            leader: leader.clone(),
            shared_store,
        },
        max_message_bytes: config.broker.max_message_bytes,
        settings: config.broker.settings,
    };
    let broker_slot: BrokerSlot = Arc::new(RwLock::new(None));
    tasks.lifetime(
        "the outbox publisher",
        outbox::publish(
            store.clone(),
            broker_slot.clone(),
            bus.subscribe(),
            leader.clone(),
            stopping.clone(),
        ),
    );
    tasks.lifetime(
        "the pruner",
        retention::prune(
            store.clone(),
            config.retention,
            config.prune_every,
            leader.clone(),
            stopping.clone(),
        ),
    );
    tasks.lifetime(
        "the canceller",
        cancels::follow(broker_slot.clone(), bus.subscribe(), stopping.clone()),
    );

    tracing::info!(store = %config.store, "dashboard and API on http://{address}");
    let app = http::router(http::AppState {
        jobs,
        broker: broker_slot.clone(),
        metrics,
        api_token: config.api_token.clone(),
        heartbeat: config.heartbeat,
        management_url: config.management_url.clone(),
        git_timeout: config.git_timeout,
        stopping: stopping.clone(),
    });
    let http_stopping = stopping.clone();
    tasks.lifetime("the HTTP server", async move {
        // Waits for every connection to end; live-view streams end on
        // `stopping` (see http::live).
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(http_stopping.cancelled_owned())
            .await;
        if let Err(err) = served {
            tracing::error!("HTTP server: {err}");
        }
    });

    let recording = record(&config.broker, &recorder, &broker_slot, &stopping);
    tokio::pin!(recording);
    let outcome = tokio::select! {
        recorded = &mut recording => recorded,
        died = tasks.died() => {
            tracing::error!("{died} while the dispatcher was running; stopping it");
            stopping.cancel();
            // Finish what is in flight, as on a shutdown.
            let _ = tokio::time::timeout(Duration::from_secs(5), recording).await;
            Err(anyhow::anyhow!("{died}"))
        }
    };
    tasks.stop(STOP_TASKS_WITHIN).await;
    store.close().await;
    tracing::info!("dispatcher stopped");
    outcome
}

/// Records what the broker delivers, reconnecting as needed, until
/// `stopping` fires.
async fn record(
    connector: &dyn Connector,
    recorder: &Recorder,
    broker_slot: &BrokerSlot,
    stopping: &CancellationToken,
) -> anyhow::Result<()> {
    let connection_name = format!("warren-dispatcher-{}", std::process::id());
    while !stopping.is_cancelled() {
        let broker = match connector.connect(&connection_name, stopping).await {
            Ok(broker) => broker,
            Err(BrokerError::Shutdown) => break,
            Err(err) => return Err(err.into()),
        };
        set_broker(broker_slot, Some(broker.clone()));
        let ended = recorder.session(&broker, stopping).await;
        set_broker(broker_slot, None);
        let store_failed = matches!(ended, Err(RecordError::Store(_)));
        match ended {
            Ok(()) if stopping.is_cancelled() => {}
            Ok(()) => tracing::warn!("a consumer stopped; reconnecting"),
            Err(RecordError::Broker(err)) => {
                tracing::warn!("lost the broker ({err}); reconnecting")
            }
            Err(RecordError::Store(err)) => {
                // Not the broker's fault: say what failed. The message being
                // recorded was not acked, so the broker hands it out again.
                tracing::error!(
                    "cannot write to the store ({err}); nothing is lost (unrecorded messages wait in the broker); retrying in {} s",
                    STORE_RETRY.as_secs()
                )
            }
        }
        broker.close().await;
        if store_failed {
            tokio::select! {
                _ = stopping.cancelled() => {}
                _ = tokio::time::sleep(STORE_RETRY) => {}
            }
        }
    }
    Ok(())
}

fn set_broker(slot: &BrokerSlot, broker: Option<Arc<dyn Transport>>) {
    *slot
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = broker;
}
