//! The dispatcher: thin, and not on the path from commit to test.
//!
//! It records every job and its one outcome (SQLite plus log files), holds
//! leases on running jobs and acts when a runner freezes, and serves the
//! JSON API and the dashboard. If it is down, jobs keep running and results
//! wait in its durable queues.

pub mod api;
pub mod dashboard;
pub mod leases;
pub mod management;
pub mod metrics;
pub mod notify;
pub mod recorder;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use broker::{BrokerConfig, BrokerError};
use tokio_util::sync::CancellationToken;

use crate::leases::Leases;
use crate::management::Management;
use crate::recorder::Recorder;
use crate::store::Store;

/// Everything the dispatcher needs.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    pub broker: BrokerConfig,
    pub data_dir: PathBuf,
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
}

/// The broker connection while there is one, for the API's actions
/// (rerun, trigger) and queue statistics.
pub type BrokerSlot = Arc<RwLock<Option<Arc<broker::Broker>>>>;

/// Runs the dispatcher until `shutdown` fires.
pub async fn run(config: DispatcherConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let store = Store::open(&config.data_dir).with_context(|| {
        format!(
            "opening the store in --data-dir {}",
            config.data_dir.display()
        )
    })?;
    let management = match Management::new(&config.management_url) {
        Ok(management) => Some(management),
        Err(err) => {
            tracing::warn!(
                "--management-url: {err}; frozen runners' jobs will be republished instead"
            );
            None
        }
    };
    let mut leases = Leases::new(config.lease);
    let now = Instant::now();
    for job in store.running().context("reading running jobs")? {
        if let (Some(runner), Some(connection)) = (&job.runner, &job.connection) {
            leases.grant(&job.id, runner, connection, now);
        }
    }
    let (updates, _) = tokio::sync::broadcast::channel(1024);
    let notifier = notify::Notifier::start(
        config.webhooks.clone(),
        config.webhook_secret.clone(),
        store.clone(),
        shutdown.clone(),
    );
    let recorder = Recorder {
        store: store.clone(),
        leases: Arc::new(Mutex::new(leases)),
        management,
        updates: updates.clone(),
        announcing: Arc::default(),
        notifier,
        max_message_bytes: config.broker.max_message_bytes,
    };
    let broker_slot: BrokerSlot = Arc::new(RwLock::new(None));

    let listener = tokio::net::TcpListener::bind(config.http)
        .await
        .with_context(|| format!("cannot listen on --http {}", config.http))?;
    let address = listener.local_addr().unwrap_or(config.http);
    tracing::info!("dashboard and API on http://{address}");
    let app = api::router(api::AppState {
        store: store.clone(),
        broker: broker_slot.clone(),
        updates,
        api_token: config.api_token.clone(),
        heartbeat: config.heartbeat,
        management_url: config.management_url.clone(),
        git_timeout: config.git_timeout,
    });
    let http_shutdown = shutdown.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
            .await
    });

    let connection_name = format!("warren-dispatcher-{}", std::process::id());
    while !shutdown.is_cancelled() {
        let broker =
            match broker::connect_with_retry(&config.broker, &connection_name, &shutdown).await {
                Ok(broker) => broker,
                Err(BrokerError::Shutdown) => break,
                Err(err) => return Err(err.into()),
            };
        let broker = Arc::new(broker);
        set_broker(&broker_slot, Some(broker.clone()));
        let ended = recorder.session(&broker, &shutdown).await;
        set_broker(&broker_slot, None);
        match ended {
            Ok(()) if shutdown.is_cancelled() => {}
            Ok(()) => tracing::warn!("a consumer stopped; reconnecting"),
            Err(err) => tracing::warn!("lost the broker ({err}); reconnecting"),
        }
        broker.close().await;
    }
    shutdown.cancel();
    match http.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!("HTTP server: {err}"),
        Err(err) => tracing::warn!("HTTP server task: {err}"),
    }
    tracing::info!("dispatcher stopped");
    Ok(())
}

fn set_broker(slot: &BrokerSlot, broker: Option<Arc<broker::Broker>>) {
    *slot
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = broker;
}
