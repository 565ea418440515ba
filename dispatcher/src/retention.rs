//! Retention (`--keep-jobs`, `--keep-days`): prunes finished jobs the
//! rule does not keep, with their logs and test results, so a store that
//! runs for years stays the size its users chose.
//!
//! A duty done once ([`crate::leader`]): only the dispatcher holding it
//! prunes. It prunes every `every` (and once it takes the duties over), in
//! small transactions of [`BATCH`] jobs with a pause between them, so
//! recording, which takes the same store, never waits long behind it.
//! A job whose pipeline has a job not yet ended is never pruned.

use std::sync::Arc;
use std::time::Duration;

use store::{Retention, Store};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Jobs deleted per transaction.
pub const BATCH: u32 = 500;
/// The pause between two batches.
const BETWEEN_BATCHES: Duration = Duration::from_millis(50);

/// Prunes by `rule` every `every` while this dispatcher leads, until
/// `stopping`.
pub async fn prune(
    store: Arc<dyn Store>,
    rule: Retention,
    every: Duration,
    mut leader: watch::Receiver<bool>,
    stopping: CancellationToken,
) {
    if !rule.prunes() {
        return stopping.cancelled().await;
    }
    loop {
        if *leader.borrow() {
            prune_all(store.as_ref(), &rule, &stopping).await;
        }
        tokio::select! {
            _ = stopping.cancelled() => return,
            changed = leader.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Batches until none is left (or `stopping`).
async fn prune_all(store: &dyn Store, rule: &Retention, stopping: &CancellationToken) {
    let mut total = 0;
    while !stopping.is_cancelled() {
        match store.prune(rule, model::now_ms(), BATCH).await {
            Ok(deleted) => {
                total += deleted;
                if deleted < u64::from(BATCH) {
                    break;
                }
            }
            Err(err) => {
                tracing::warn!("cannot prune old jobs ({err}); trying again later");
                break;
            }
        }
        tokio::select! {
            _ = stopping.cancelled() => break,
            _ = tokio::time::sleep(BETWEEN_BATCHES) => {}
        }
    }
    if total > 0 {
        tracing::info!(
            jobs = total,
            keep_jobs = rule.keep_jobs,
            keep_days = rule.keep_days,
            "pruned old jobs"
        );
    }
}
