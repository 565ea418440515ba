//! Publishes the jobs a pipeline released. The store writes each released
//! job into its outbox in the same transaction as the outcome that
//! released it (see `store`'s `advance`); this task publishes what is
//! unsent to the job's work queue, waits for the broker's confirms, and
//! only then marks the rows sent. A dispatcher killed anywhere in between
//! leaves the rows unsent, and the next one (or this one, restarted)
//! publishes them again, unless the job is no longer queued (a runner
//! took it). So a job is never lost, and published twice only when the
//! dispatcher died between the confirm and the mark and no runner had
//! taken the job yet. That second copy has the same id: the runner that
//! ran the first acks it unrun (it remembers the results it delivered),
//! another is told to stop when it announces it (the recorder's duplicate
//! execution path), and any result is counted as a duplicate.
//!
//! It follows the event bus (a job released or planned wakes it) and also
//! looks every [`POLL`], so rows left by a dispatcher that died, or by a
//! broker that was away, go out without a new event.

use std::sync::Arc;
use std::time::Duration;

use broker::Transport;
use observer::producer::Producer;
use store::Store;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::events::JobEvent;
use crate::BrokerSlot;

/// How often the outbox is read without an event.
pub const POLL: Duration = Duration::from_secs(1);
/// The most rows published in flight at once.
const BATCH: u32 = 64;
/// The longest wait for a batch's confirms.
const CONFIRM_WITHIN: Duration = Duration::from_secs(30);

/// Publishes the outbox until `stopping` fires.
pub async fn publish(
    store: Arc<dyn Store>,
    broker: BrokerSlot,
    mut events: mpsc::UnboundedReceiver<JobEvent>,
    mut leader: tokio::sync::watch::Receiver<bool>,
    stopping: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stopping.cancelled() => return,
            // Just took over the duties: publish what the last holder left.
            changed = leader.changed() => if changed.is_err() { return },
            event = events.recv() => match event {
                // A job queued by a plan (not by a publisher, which queued
                // it itself): something may be in the outbox.
                Some(event) if is_released(&event) => {}
                Some(_) => continue,
                None => return,
            },
            _ = tokio::time::sleep(POLL) => {}
        }
        // Take every event already waiting: one drain serves them all.
        while events.try_recv().is_ok() {}
        // One dispatcher publishes (see `leader`): two would double jobs.
        if !*leader.borrow() {
            continue;
        }
        let transport = broker.read().ok().and_then(|slot| slot.clone());
        let Some(transport) = transport else {
            continue;
        };
        if let Err(err) = drain(store.as_ref(), transport.as_ref(), &stopping).await {
            tracing::warn!("cannot publish released jobs yet ({err}); trying again");
        }
    }
}

fn is_released(event: &JobEvent) -> bool {
    event.job.status == model::JobStatus::Queued && event.job.pipeline != event.job.id
}

/// Publishes unsent rows in batches until none is left.
async fn drain(
    store: &dyn Store,
    transport: &dyn Transport,
    stopping: &CancellationToken,
) -> anyhow::Result<()> {
    while !stopping.is_cancelled() {
        let batch = store.outbox_pending(BATCH).await?;
        if batch.is_empty() {
            return Ok(());
        }
        let mut in_flight = Vec::with_capacity(batch.len());
        for out in &batch {
            // A job no longer queued was published before (a dispatcher
            // died after the confirm, before marking it): a runner took it,
            // or it was cancelled. Publishing it again would only make a
            // duplicate.
            let still_queued = store
                .job(&out.job)
                .await?
                .is_some_and(|job| job.status == model::JobStatus::Queued);
            if !still_queued {
                store.outbox_sent(&out.job, model::now_ms()).await?;
                continue;
            }
            let job: model::Job = serde_json::from_str(&out.body)
                .map_err(|e| anyhow::anyhow!("outbox row of job {}: {e}", out.job))?;
            let confirm = Producer::new(transport).send(&job).await?;
            in_flight.push((out, confirm));
        }
        for (out, confirm) in in_flight {
            tokio::time::timeout(CONFIRM_WITHIN, confirm.wait())
                .await
                .map_err(|_| anyhow::anyhow!("no confirm within {CONFIRM_WITHIN:?}"))??;
            store.outbox_sent(&out.job, model::now_ms()).await?;
            tracing::info!(job = %out.job, queue = %out.queue, "published a released pipeline job");
        }
    }
    Ok(())
}
