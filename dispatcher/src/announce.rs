//! Feeds the notifier and the commit-status reporter from the store rather
//! than from this dispatcher's own events, so that with several
//! dispatchers on one database each change is announced once, by one of
//! them, whichever recorded it.
//!
//! Every change of a job's status leaves a `job_changes` row in the
//! transaction that made it (store migration 0006). While this dispatcher
//! holds the duties done once ([`crate::leader`]), this task reads the
//! rows in order, turns each into a [`JobEvent`] (the job as it stands
//! now, with the status it changed to), hands it to every follower, and
//! only then deletes the rows. A holder killed between the handing and the
//! delete leaves the rows to the next holder, which announces them again:
//! a notification is then repeated with the same `X-Warren-Delivery` id,
//! and a commit status is set to the same state again. One killed after
//! the delete loses the sends still queued, as a stop does (see `notify`).
//!
//! It wakes on this dispatcher's own events, on taking the duties over,
//! and, on a store several dispatchers share, every [`POLL`] (for the
//! changes another dispatcher recorded).

use std::sync::Arc;
use std::time::Duration;

use model::JobStatus;
use store::{JobChange, Store};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::events::{Change, JobEvent};

/// How often the store is read without an event of this dispatcher's own.
pub const POLL: Duration = Duration::from_millis(500);
/// The most changes read at once.
const BATCH: u32 = 256;

/// The event a stored change stands for. `dead_lettered` is not stored
/// (only the metrics read it, and they follow each dispatcher's own
/// events).
pub fn event_of(change: JobChange) -> JobEvent {
    let mut job = change.job;
    job.status = change.status;
    let change = match change.status {
        JobStatus::Waiting | JobStatus::Queued => Change::Queued,
        JobStatus::Running => Change::Started {
            first: job.attempts <= 1,
        },
        _ => Change::Finished {
            dead_lettered: false,
        },
    };
    JobEvent { change, job }
}

/// Announces stored changes to `followers` while this dispatcher leads,
/// until `stopping`. `poll`: how often to look without an event of its
/// own — [`POLL`] on a store other dispatchers may write (PostgreSQL);
/// `None` on one only this dispatcher writes (SQLite), so that an idle
/// dispatcher does not wake.
pub async fn announce(
    store: Arc<dyn Store>,
    mut events: mpsc::UnboundedReceiver<JobEvent>,
    mut leader: watch::Receiver<bool>,
    followers: Vec<mpsc::UnboundedSender<JobEvent>>,
    poll: Option<Duration>,
    stopping: CancellationToken,
) {
    loop {
        let looked_for = async {
            match poll {
                Some(every) => tokio::time::sleep(every).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stopping.cancelled() => return,
            changed = leader.changed() => if changed.is_err() { return },
            event = events.recv() => if event.is_none() { return },
            _ = looked_for => {}
        }
        // One read serves every event already waiting.
        while events.try_recv().is_ok() {}
        if !*leader.borrow() {
            continue;
        }
        if let Err(err) = drain(store.as_ref(), &followers, &stopping).await {
            tracing::warn!("cannot read the job changes to announce yet ({err}); trying again");
        }
    }
}

/// Announces batches until none is left.
async fn drain(
    store: &dyn Store,
    followers: &[mpsc::UnboundedSender<JobEvent>],
    stopping: &CancellationToken,
) -> Result<(), store::StoreError> {
    while !stopping.is_cancelled() {
        let batch = store.changes_pending(BATCH).await?;
        if batch.is_empty() {
            return Ok(());
        }
        let seqs: Vec<i64> = batch.iter().map(|change| change.seq).collect();
        for change in batch {
            let event = event_of(change);
            for follower in followers {
                // A follower that is off (no webhook configured) or ended
                // (its task's end is reported) takes nothing.
                let _ = follower.send(event.clone());
            }
        }
        store.changes_announced(&seqs).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn changes_are_announced_in_order_only_while_leading_and_once() {
        use model::{Job, JobResult, Outcome, RunnerId, RunnerInfo, SCHEMA_VERSION};
        let dir = tempfile::tempdir().expect("tempdir");
        let url = store::StoreUrl::sqlite(dir.path().join("warren.db"));
        let store = store::open(&url, store::StoreSettings::default())
            .await
            .expect("open");
        let job = Job::try_new("/r", "main", &"a".repeat(40)).expect("a valid job");
        let runner = RunnerInfo {
            id: RunnerId::parse("r1").expect("id"),
            host: "h".into(),
            connection: "c".into(),
            sandbox: Default::default(),
            queues: Vec::new(),
        };
        store.job_queued(&job).await.expect("queued");
        store.job_started(&job, &runner, 5).await.expect("started");
        store
            .job_finished(&JobResult {
                v: SCHEMA_VERSION,
                job: job.clone(),
                outcome: Outcome::Failed,
                exit_code: Some(1),
                started_at_ms: 5,
                finished_at_ms: 9,
                duration_ms: 4,
                output: String::new(),
                truncated: false,
                runner,
                reason: None,
                plan: None,
                tests: None,
            })
            .await
            .expect("finished");

        let (leads, leader) = watch::channel(false);
        let (wake, events) = mpsc::unbounded_channel();
        let (follower, mut announced) = mpsc::unbounded_channel();
        let stopping = CancellationToken::new();
        let task = tokio::spawn(announce(
            store.clone(),
            events,
            leader,
            vec![follower],
            Some(POLL),
            stopping.clone(),
        ));
        // Not leading: a wake announces nothing.
        wake.send(event_of(JobChange {
            seq: 0,
            status: JobStatus::Queued,
            job: store.job(&job.id).await.expect("read").expect("stored"),
        }))
        .expect("wake");
        let nothing = tokio::time::timeout(Duration::from_millis(300), announced.recv()).await;
        assert!(nothing.is_err(), "announced while not leading: {nothing:?}");

        leads.send_replace(true);
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let event = tokio::time::timeout(Duration::from_secs(5), announced.recv())
                .await
                .expect("announced within 5 s")
                .expect("open");
            seen.push((event.change, event.job.status));
        }
        assert_eq!(
            seen,
            vec![
                (Change::Queued, JobStatus::Queued),
                (Change::Started { first: true }, JobStatus::Running),
                (
                    Change::Finished {
                        dead_lettered: false
                    },
                    JobStatus::Failed
                ),
            ]
        );
        // Announced once: the rows are gone, and polling finds nothing more.
        let again = tokio::time::timeout(POLL * 3, announced.recv()).await;
        assert!(again.is_err(), "announced twice: {again:?}");
        assert!(store.changes_pending(10).await.expect("read").is_empty());
        stopping.cancel();
        task.await.expect("the task ends on stopping");
    }
}
