//! The one place a job's state changes.
//!
//! Every transition (queued, started, finished, dead-lettered) is one call
//! of the store, which makes it one conditional statement or transaction
//! there (so a job gets one outcome however many dispatchers record), and
//! then one event on the bus. Changes of the same job are made and
//! announced in order: a live view never sees a job go back from
//! `running` to `queued`, although the recorder's consumers run
//! concurrently.

use std::sync::Arc;

use model::{Job, JobId, JobResult, RunnerInfo};
use store::{Queued, Recorded, Started, Store, StoreError};

use crate::events::{Change, EventBus, JobEvent};

/// How many locks order the changes of jobs (a job always takes the same
/// one; different jobs rarely share one).
const ORDER_SHARDS: usize = 64;

/// Changes jobs in the store and announces each change. Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    store: Arc<dyn Store>,
    bus: EventBus,
    order: Arc<Vec<tokio::sync::Mutex<()>>>,
}

impl Jobs {
    pub fn new(store: Arc<dyn Store>, bus: EventBus) -> Jobs {
        Jobs {
            store,
            bus,
            order: Arc::new((0..ORDER_SHARDS).map(|_| Default::default()).collect()),
        }
    }

    /// The store, for reading.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn bus(&self) -> &EventBus {
        &self.bus
    }

    /// The lock that orders the changes of `job`.
    fn order_of(&self, job: &JobId) -> &tokio::sync::Mutex<()> {
        &self.order[self.shard_of(job)]
    }

    fn shard_of(&self, job: &JobId) -> usize {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        job.hash(&mut hasher);
        (hasher.finish() as usize) % self.order.len()
    }

    /// The locks that order the changes of `jobs`, taken in one order
    /// (by shard) so two callers cannot wait for each other.
    async fn order_of_all(&self, jobs: &[JobId]) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let mut shards: Vec<usize> = jobs.iter().map(|job| self.shard_of(job)).collect();
        shards.sort_unstable();
        shards.dedup();
        let mut guards = Vec::with_capacity(shards.len());
        for shard in shards {
            guards.push(self.order[shard].lock().await);
        }
        guards
    }

    fn announce(&self, change: Change, job: &model::JobRecord) {
        self.bus.publish(JobEvent {
            change,
            job: job.clone(),
        });
    }

    /// A job was published: recorded as queued unless already known.
    pub async fn queued(&self, job: &Job) -> Result<Queued, StoreError> {
        let _order = self.order_of(&job.id).lock().await;
        let queued = self.store.job_queued(job).await?;
        if queued.new {
            self.announce(Change::Queued, &queued.record);
        }
        Ok(queued)
    }

    /// A runner announced it runs a job.
    pub async fn started(
        &self,
        job: &Job,
        runner: &RunnerInfo,
        at_ms: u64,
    ) -> Result<Started, StoreError> {
        let _order = self.order_of(&job.id).lock().await;
        let started = self.store.job_started(job, runner, at_ms).await?;
        // The late announcement of the execution already recorded, or a
        // duplicate execution of a finished job: the job did not change.
        if !started.same_execution && !started.is_duplicate_execution() {
            let first = started.record.attempts <= 1;
            self.announce(Change::Started { first }, &started.record);
        }
        Ok(started)
    }

    /// A runner's result.
    pub async fn finished(&self, result: &JobResult) -> Result<Recorded, StoreError> {
        let _order = self.order_of(&result.job.id).lock().await;
        let recorded = self.store.job_finished(result).await?;
        self.announce_result(&recorded);
        Ok(recorded)
    }

    /// Runners' results recorded in one transaction (a batch of the
    /// results queue: one commit instead of one per result), then
    /// announced in order. All are recorded or none.
    pub async fn finished_all(&self, results: &[JobResult]) -> Result<Vec<Recorded>, StoreError> {
        let ids: Vec<JobId> = results.iter().map(|r| r.job.id.clone()).collect();
        let _order = self.order_of_all(&ids).await;
        let recorded = self.store.jobs_finished(results).await?;
        for one in &recorded {
            self.announce_result(one);
        }
        Ok(recorded)
    }

    fn announce_result(&self, recorded: &Recorded) {
        match recorded {
            Recorded::New {
                record, pipeline, ..
            } => {
                self.announce(
                    Change::Finished {
                        dead_lettered: false,
                    },
                    record,
                );
                self.announce_pipeline(pipeline);
            }
            Recorded::Duplicate(record) => self.announce(Change::Duplicate, record),
        }
    }

    /// The broker gave up on a job: `error` with `reason`, unless it
    /// already has an outcome.
    pub async fn dead(&self, job: &Job, reason: &str) -> Result<Recorded, StoreError> {
        let _order = self.order_of(&job.id).lock().await;
        let recorded = self.store.job_dead(job, reason, model::now_ms()).await?;
        if let Recorded::New {
            record, pipeline, ..
        } = &recorded
        {
            self.announce(
                Change::Finished {
                    dead_lettered: true,
                },
                record,
            );
            self.announce_pipeline(pipeline);
        }
        Ok(recorded)
    }

    /// Cancels those of `jobs` that have not ended, their dependents
    /// skipped, in one store transaction (see `Store::jobs_canceled`);
    /// each change is announced, a canceled job as `Finished` (the
    /// dispatcher's canceller then tells runners to stop it). Returns the
    /// jobs changed.
    pub async fn canceled(
        &self,
        jobs: &[JobId],
        reason: &str,
    ) -> Result<Vec<model::JobRecord>, StoreError> {
        let _order = self.order_of_all(jobs).await;
        let changed = self
            .store
            .jobs_canceled(jobs, reason, model::now_ms())
            .await?;
        self.announce_pipeline(&changed);
        Ok(changed)
    }

    /// Runs the jobs of a pipeline that did not pass again (see
    /// `Store::rerun_failed`); each copy is announced as queued (the
    /// outbox publisher publishes those released). Returns the copies.
    pub async fn rerun_failed(
        &self,
        pipeline: &JobId,
        salt: &str,
    ) -> Result<Vec<model::JobRecord>, StoreError> {
        let copies = self.store.rerun_failed(pipeline, salt).await?;
        self.announce_pipeline(&copies);
        Ok(copies)
    }

    /// The other jobs a job's end changed, in the same transaction:
    /// planned (waiting), released (queued), skipped or canceled.
    fn announce_pipeline(&self, changed: &[model::JobRecord]) {
        for job in changed {
            let change = if matches!(
                job.status,
                model::JobStatus::Skipped | model::JobStatus::Canceled
            ) {
                Change::Finished {
                    dead_lettered: false,
                }
            } else {
                Change::Queued
            };
            self.announce(change, job);
        }
    }

    /// What a running job's test printed, passed on with a heartbeat.
    pub async fn output(&self, job: &JobId, offset: u64, text: &str) -> Result<bool, StoreError> {
        let _order = self.order_of(job).lock().await;
        self.store.append_live_output(job, offset, text).await
    }
}
