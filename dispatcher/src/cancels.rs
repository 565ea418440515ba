//! Tells runners to stop canceled jobs. A job canceled by hand (`POST
//! /api/jobs/{id}/cancel`, `POST /api/commits/{sha}/cancel`) or superseded
//! by a newer plan of its branch (`cancel_superseded`) is recorded
//! `canceled` by `jobs` and announced as `Finished`; this task follows the
//! bus and, for each such job that a runner had started, publishes
//! `cancel {job_id, except_runner: None}` on the control exchange: the
//! runner holding it kills the test's process group and acks the job
//! without a result.
//!
//! A canceled job no runner had started needs no message: if a runner
//! takes it from its queue later, its `started` event finds the job ended
//! and the recorder's duplicate-execution path sends the cancel then. A
//! runner that started it before the cancel was recorded has its `started`
//! recorded first (one transaction each, on the job's row), so the
//! canceled record names it. Messages that cannot be published (no broker
//! now) are kept and sent once it is back; a dispatcher that dies before
//! sending leaves the job running to its end, and its result is then
//! counted as a duplicate (the job stays `canceled`).

use std::time::Duration;

use model::{Control, JobId, JobStatus, SCHEMA_VERSION};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::events::{Change, JobEvent};
use crate::BrokerSlot;

/// How often unsent cancels are tried again.
const RETRY: Duration = Duration::from_secs(1);
/// The most cancels kept while the broker is away (the oldest dropped).
const KEEP: usize = 10_000;

/// Whether this event is a job a runner may be running that was just
/// canceled.
pub fn needs_stop(event: &JobEvent) -> bool {
    matches!(event.change, Change::Finished { .. })
        && event.job.status == JobStatus::Canceled
        && event.job.runner.is_some()
}

/// Publishes a cancel for each canceled job a runner started, until
/// `stopping` fires.
pub async fn follow(
    broker: BrokerSlot,
    mut events: mpsc::UnboundedReceiver<JobEvent>,
    stopping: CancellationToken,
) {
    let mut pending: Vec<(JobId, String)> = Vec::new();
    loop {
        tokio::select! {
            _ = stopping.cancelled() => return,
            event = events.recv() => match event {
                Some(event) if needs_stop(&event) => {
                    let reason = event.job.reason.clone().unwrap_or_else(|| "canceled".into());
                    pending.push((event.job.id, reason));
                }
                Some(_) => continue,
                None => return,
            },
            _ = tokio::time::sleep(RETRY), if !pending.is_empty() => {}
        }
        while let Ok(event) = events.try_recv() {
            if needs_stop(&event) {
                let reason = event
                    .job
                    .reason
                    .clone()
                    .unwrap_or_else(|| "canceled".into());
                pending.push((event.job.id, reason));
            }
        }
        if pending.len() > KEEP {
            let excess = pending.len() - KEEP;
            pending.drain(..excess);
        }
        let transport = broker.read().ok().and_then(|slot| slot.clone());
        let Some(transport) = transport else {
            continue;
        };
        let exchange = transport.names().control_exchange();
        while let Some((job_id, reason)) = pending.first().cloned() {
            let control = Control::Cancel {
                v: SCHEMA_VERSION,
                job_id: job_id.clone(),
                except_runner: None,
                reason,
            };
            match transport.publish(&exchange, "", &control).await {
                Ok(()) => {
                    tracing::info!(job = %job_id, "told runners to stop a canceled job");
                    pending.remove(0);
                }
                Err(err) => {
                    tracing::warn!(job = %job_id, "cannot publish a cancel yet ({err}); trying again");
                    break;
                }
            }
        }
    }
}
