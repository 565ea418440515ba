//! Consuming what the other components publish and recording it: the jobs
//! copy (queued), runner events (running, attempts, leases), results (the
//! one outcome) and dead letters (poison jobs become `error`). Every change
//! goes through [`Jobs`], which announces it; this module only reads the
//! broker and says what each message means.
//!
//! The dispatcher is also the one consumer that dead-letters: every message
//! Warren routes reaches one of its queues (the jobs and control exchanges
//! fan out a copy to it), so a malformed message goes to the dead-letter
//! queue once, from here, while runners only log and drop theirs. Jobs the
//! broker itself dead-letters (the delivery limit) come here first too, to
//! be given a reason in words.
//!
//! Every message is acked only after the store committed it, so a
//! dispatcher killed at any point loses nothing: unacked messages wait in
//! its durable queues. Results that wait together (a backlog, a burst)
//! are recorded together: one transaction per batch of up to 128, which is
//! what lets one dispatcher keep up with many runners.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use broker::consume::REASON_HEADER;
use broker::topology::TopologySettings;
use broker::transport::{Deliveries, Delivery, Transport};
use broker::{BrokerError, Incoming};
use futures::{FutureExt, StreamExt};
use model::{Control, Event, Job, JobId, JobResult, RunnerId, SCHEMA_VERSION};
use store::{Recorded, StoreError};
use tokio_util::sync::CancellationToken;

use crate::jobs::Jobs;
use crate::leases::{Expiry, Leases};

/// Deliveries each dispatcher queue may have unacked at once.
const PREFETCH: u16 = 64;
/// The most results recorded in one transaction (a statement or two per
/// batch, one commit: larger batches cost less per result).
const RESULTS_BATCH: usize = 128;
/// The results queue's prefetch: two batches, so the next one is already
/// here while one is being recorded (with only one batch unacked the
/// broker could send nothing meanwhile, and batches would shrink). It
/// bounds the results held in memory at once.
const RESULTS_PREFETCH: u16 = 2 * RESULTS_BATCH as u16;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a session needs, shared by its consumer tasks.
#[derive(Clone)]
pub struct Recorder {
    pub jobs: Jobs,
    pub leases: Arc<Mutex<Leases>>,
    /// What to do when a lease expires.
    pub expiry: Expiry,
    /// Larger messages are dead-lettered.
    pub max_message_bytes: usize,
    /// The deployment's delivery limit, for the reason of a job the broker
    /// dead-lettered.
    pub settings: TopologySettings,
}

impl Recorder {
    /// Runs one broker session until the connection is lost or shutdown.
    pub async fn session(
        &self,
        transport: &Arc<dyn Transport>,
        shutdown: &CancellationToken,
    ) -> Result<(), RecordError> {
        let names = transport.names().clone();
        let mut tasks = tokio::task::JoinSet::new();
        for queue in [
            names.dispatcher_jobs_queue(),
            names.dispatcher_events_queue(),
            names.dispatcher_results_queue(),
            names.dispatcher_dead_queue(),
            names.dispatcher_rejected_queue(),
            names.dispatcher_control_queue(),
        ] {
            let prefetch = if queue == names.dispatcher_results_queue() {
                RESULTS_PREFETCH
            } else {
                PREFETCH
            };
            let deliveries = transport.consume(&queue, prefetch).await?;
            let recorder = self.clone();
            let transport = transport.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                recorder
                    .consume(deliveries, queue, transport, shutdown)
                    .await
            });
        }
        let watcher = crate::leases::watch(
            self.leases.clone(),
            self.jobs.store().clone(),
            self.expiry.clone(),
            transport.clone(),
            shutdown.clone(),
        );
        tasks.spawn(async move { watcher.await.map_err(RecordError::from) });
        tokio::select! {
            _ = shutdown.cancelled() => {
                // Each task stops between messages: in-flight stores and
                // acks complete first.
                while tasks.join_next().await.is_some() {}
                Ok(())
            }
            _ = transport.closed() => {
                tasks.abort_all();
                Err(BrokerError::ConnectionLost.into())
            }
            ended = tasks.join_next() => {
                tasks.abort_all();
                match ended {
                    Some(Ok(Err(err))) => Err(err),
                    _ => Ok(()),
                }
            }
        }
    }

    async fn consume(
        self,
        mut deliveries: Deliveries,
        queue: String,
        transport: Arc<dyn Transport>,
        shutdown: CancellationToken,
    ) -> Result<(), RecordError> {
        let names = transport.names().clone();
        loop {
            let delivery = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                next = deliveries.next() => match next {
                    Some(delivery) => delivery?,
                    None => return Ok(()),
                },
            };
            let handled = if queue == names.dispatcher_jobs_queue() {
                self.on_job(&delivery).await
            } else if queue == names.dispatcher_events_queue() {
                self.on_event(&delivery, &*transport).await
            } else if queue == names.dispatcher_results_queue() {
                let ended = self
                    .on_results(delivery, &mut deliveries, &queue, &*transport)
                    .await?;
                if ended {
                    return Ok(());
                }
                continue;
            } else if queue == names.dispatcher_rejected_queue() {
                Ok(Some(self.rejected_reason(&delivery)))
            } else if queue == names.dispatcher_control_queue() {
                Ok(on_control(&delivery, self.max_message_bytes))
            } else {
                self.on_dead(&delivery, &*transport).await
            };
            settle(delivery, handled, &queue, &*transport).await?;
        }
    }

    /// Returns `Some(reason)` for a message to dead-letter.
    async fn on_job(&self, delivery: &Delivery) -> Result<Option<String>, RecordError> {
        let job = match Incoming::<Job>::decode(delivery, self.max_message_bytes) {
            Incoming::Valid(job) => job,
            Incoming::Refused(reason) => return Ok(Some(reason.to_string())),
        };
        self.jobs.queued(&job).await?;
        Ok(None)
    }

    async fn on_event(
        &self,
        delivery: &Delivery,
        transport: &dyn Transport,
    ) -> Result<Option<String>, RecordError> {
        let event = match Incoming::<Event>::decode(delivery, self.max_message_bytes) {
            Incoming::Valid(event) => event,
            Incoming::Refused(reason) => return Ok(Some(reason.to_string())),
        };
        match event {
            Event::Started {
                job, runner, at_ms, ..
            } => {
                let started = self.jobs.started(&job, &runner, at_ms).await?;
                if started.same_execution {
                    // The late announcement of the execution already recorded.
                } else if started.is_duplicate_execution() {
                    tracing::info!(job = %job.id, runner = %runner.id, "duplicate execution of a finished job; telling the runner to stop");
                    self.cancel(transport, &job.id, None).await?;
                } else {
                    if started.record.attempts > 1 {
                        tracing::info!(job = %job.id, runner = %runner.id, attempts = started.record.attempts, "job running again");
                    } else {
                        tracing::info!(job = %job.id, runner = %runner.id, "job running");
                    }
                    self.lock_leases().grant(
                        &job.id,
                        &runner.id,
                        &runner.connection,
                        at_ms,
                        Instant::now(),
                    );
                }
            }
            Event::Heartbeat {
                runner,
                job_id,
                at_ms,
                output,
                ..
            } => {
                if let Some(job) = &job_id {
                    self.lock_leases().renew(
                        job,
                        &runner.id,
                        &runner.connection,
                        at_ms,
                        Instant::now(),
                    );
                    if let Some(chunk) = output {
                        // Best effort: the whole output comes with the result.
                        if let Err(err) = self.jobs.output(job, chunk.offset, &chunk.text).await {
                            tracing::warn!(job = %job, "cannot keep the live output: {err}");
                        }
                    }
                }
                self.jobs
                    .store()
                    .runner_seen(&runner, job_id.as_ref(), at_ms)
                    .await?;
            }
        }
        Ok(None)
    }

    /// The results queue, in batches: `first` and every delivery already
    /// waiting behind it (up to [`RESULTS_BATCH`]) are recorded in one
    /// transaction, then acked. Returns whether the deliveries ended.
    async fn on_results(
        &self,
        first: Delivery,
        deliveries: &mut Deliveries,
        queue: &str,
        transport: &dyn Transport,
    ) -> Result<bool, RecordError> {
        let mut batch = vec![first];
        let mut ended = false;
        while batch.len() < RESULTS_BATCH {
            match deliveries.next().now_or_never() {
                Some(Some(delivery)) => batch.push(delivery?),
                Some(None) => {
                    ended = true;
                    break;
                }
                None => break,
            }
        }
        let mut valid = Vec::with_capacity(batch.len());
        for delivery in batch {
            match Incoming::<JobResult>::decode(&delivery, self.max_message_bytes) {
                Incoming::Valid(result) => valid.push((delivery, result)),
                Incoming::Refused(reason) => {
                    delivery
                        .dead_letter(transport, queue, &reason.to_string())
                        .await?
                }
            }
        }
        // One lock order for every dispatcher's batches (PostgreSQL then
        // rarely has two transactions wait for each other); a job's own
        // results keep their order.
        valid.sort_by(|(_, a), (_, b)| a.job.id.as_str().cmp(b.job.id.as_str()));
        let (deliveries_of, results): (Vec<Delivery>, Vec<JobResult>) = valid.into_iter().unzip();
        if results.is_empty() {
            return Ok(ended);
        }
        let clock = Instant::now();
        let outcome = self.jobs.finished_all(&results).await;
        tracing::debug!(
            results = results.len(),
            ms = clock.elapsed().as_secs_f64() * 1000.0,
            "results recorded together"
        );
        match outcome {
            Ok(recorded) => {
                for ((delivery, result), recorded) in
                    deliveries_of.into_iter().zip(&results).zip(recorded)
                {
                    self.after_result(result, &recorded, transport).await?;
                    delivery.ack().await?;
                }
            }
            Err(err) if results.len() > 1 => {
                // One result the store refuses (an id naming another job)
                // must not hold back the rest: each on its own, as a
                // single result is handled.
                tracing::info!(
                    "recording {} results together failed ({err}); recording them one by one",
                    results.len()
                );
                for (delivery, result) in deliveries_of.into_iter().zip(&results) {
                    let handled = self.on_result(result, transport).await;
                    settle(delivery, handled, queue, transport).await?;
                }
            }
            Err(err) => {
                if let Some(delivery) = deliveries_of.into_iter().next() {
                    settle(delivery, Err(err.into()), queue, transport).await?;
                }
            }
        }
        Ok(ended)
    }

    async fn on_result(
        &self,
        result: &JobResult,
        transport: &dyn Transport,
    ) -> Result<Option<String>, RecordError> {
        let recorded = self.jobs.finished(result).await?;
        self.after_result(result, &recorded, transport).await?;
        Ok(None)
    }

    /// What follows a recorded result: a runner still on a job that got
    /// its outcome elsewhere is told to stop.
    async fn after_result(
        &self,
        result: &JobResult,
        recorded: &Recorded,
        transport: &dyn Transport,
    ) -> Result<(), RecordError> {
        let (job, runner, outcome) = (&result.job.id, &result.runner.id, result.outcome);
        match recorded {
            Recorded::New { .. } => {
                tracing::info!(job = %job, runner = %runner, %outcome, "job finished");
                let holders = self.lock_leases().release(job);
                if holders.iter().any(|holder| holder != runner) {
                    self.cancel(transport, job, Some(runner.clone())).await?;
                }
            }
            Recorded::Duplicate(_) => {
                tracing::info!(job = %job, runner = %runner, %outcome, "duplicate result discarded; the job already has its outcome");
            }
        }
        Ok(())
    }

    /// Why the broker dead-lettered a job of the work queue, in words:
    /// the reason its `x-death` header gives in a word or two.
    fn rejected_reason(&self, delivery: &Delivery) -> String {
        let limit = self.settings.delivery_limit;
        match delivery.header("x-first-death-reason").as_deref() {
            Some("delivery_limit") => format!(
                "dead-lettered after {limit} deliveries (--delivery-limit {limit}): each runner that took this job died, lost its connection, or held it past the broker's consumer_timeout"
            ),
            Some("rejected") => "dead-lettered: a consumer rejected it without requeueing".into(),
            Some("expired") => "dead-lettered: its time to live ran out in the queue".into(),
            Some("maxlen") => "dead-lettered: the queue was full".into(),
            Some(other) => format!("dead-lettered by the broker ({other})"),
            None => "dead-lettered by the broker (no reason given)".into(),
        }
    }

    async fn on_dead(
        &self,
        delivery: &Delivery,
        transport: &dyn Transport,
    ) -> Result<Option<String>, RecordError> {
        let Incoming::Valid(job) = Incoming::<Job>::decode(delivery, self.max_message_bytes) else {
            // Not a job (a malformed message dead-lettered here): it stays
            // in the dead-letter queue for people; nothing to record.
            return Ok(None);
        };
        // The job's recorded reason is the dead letter's, word for word.
        let reason = delivery
            .header(REASON_HEADER)
            .unwrap_or_else(|| self.rejected_reason(delivery));
        if self.jobs.dead(&job, &reason).await?.is_new() {
            tracing::warn!(job = %job.id, %reason, "job recorded as error");
            let holders = self.lock_leases().release(&job.id);
            if !holders.is_empty() {
                // Runners still on it (e.g. past the consumer timeout) stop.
                self.cancel(transport, &job.id, None).await?;
            }
        }
        Ok(None)
    }

    async fn cancel(
        &self,
        transport: &dyn Transport,
        job_id: &JobId,
        except_runner: Option<RunnerId>,
    ) -> Result<(), BrokerError> {
        let control = Control::Cancel {
            v: SCHEMA_VERSION,
            job_id: job_id.clone(),
            except_runner,
            reason: "the job's result is already recorded".into(),
        };
        transport
            .publish(&transport.names().control_exchange(), "", &control)
            .await
    }

    fn lock_leases(&self) -> std::sync::MutexGuard<'_, Leases> {
        self.leases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Acks a handled delivery, dead-letters one with a reason (a store
/// collision included), or passes the error on (the session ends and the
/// delivery waits in its queue).
async fn settle(
    delivery: Delivery,
    handled: Result<Option<String>, RecordError>,
    queue: &str,
    transport: &dyn Transport,
) -> Result<(), RecordError> {
    match handled {
        Ok(None) => delivery.ack().await?,
        Ok(Some(reason)) => delivery.dead_letter(transport, queue, &reason).await?,
        Err(RecordError::Store(StoreError::Collision { .. })) => {
            // Not reachable through the id rule (every consumer
            // checks it), but a store must not take it silently.
            let reason = "the job's id already names another job in the store";
            delivery.dead_letter(transport, queue, reason).await?
        }
        Err(err) => return Err(err),
    }
    Ok(())
}

/// The dispatcher's copy of a control message: nothing to do with a valid
/// one (runners act on theirs); a malformed one is dead-lettered here.
fn on_control(delivery: &Delivery, max_message_bytes: usize) -> Option<String> {
    match Incoming::<Control>::decode(delivery, max_message_bytes) {
        Incoming::Valid(_) => None,
        Incoming::Refused(reason) => Some(reason.to_string()),
    }
}

#[cfg(test)]
mod tests {
    //! The recorder on the in-memory broker and an SQLite store in a temp
    //! folder: what it records, acks, dead-letters and tells runners, with
    //! no RabbitMQ.

    use std::time::Duration;

    use broker::memory::{MemoryBroker, MemoryTransport};
    use broker::topology::Topology;
    use broker::Names;
    use model::{Event, Job, JobResult, JobStatus, Outcome, RunnerInfo};
    use tasks::Tasks;

    use super::*;
    use crate::events::EventBus;

    const WAIT: Duration = Duration::from_secs(10);

    /// A recorder running one session on a memory broker.
    struct Harness {
        broker: MemoryBroker,
        names: Names,
        /// The other components' connection.
        client: MemoryTransport,
        jobs: Jobs,
        shutdown: CancellationToken,
        session: tokio::task::JoinHandle<Result<(), RecordError>>,
        _dir: tempfile::TempDir,
    }

    impl Harness {
        async fn start() -> Harness {
            let names = Names::new("t");
            let settings = TopologySettings { delivery_limit: 2 };
            let broker =
                MemoryBroker::new(&names, &Topology::new(&names, settings)).expect("broker");
            let dir = tempfile::tempdir().expect("tempdir");
            let url = store::StoreUrl::sqlite(dir.path().join("warren.db"));
            let store = store::open(&url, store::StoreSettings::default())
                .await
                .expect("store");
            let jobs = Jobs::new(store, EventBus::new());
            let shutdown = CancellationToken::new();
            let recorder = Recorder {
                jobs: jobs.clone(),
                leases: Arc::new(Mutex::new(crate::leases::Leases::new(Duration::from_secs(
                    60,
                )))),
                expiry: crate::leases::Expiry {
                    management: None,
                    tasks: Tasks::new(&shutdown),
                    leader: tokio::sync::watch::channel(true).1,
                    shared_store: false,
                },
                max_message_bytes: 64 * 1024,
                settings,
            };
            let transport: Arc<dyn Transport> = Arc::new(broker.open("dispatcher").expect("open"));
            let session = tokio::spawn({
                let shutdown = shutdown.clone();
                async move { recorder.session(&transport, &shutdown).await }
            });
            Harness {
                client: broker.open("client").expect("open"),
                broker,
                names,
                jobs,
                shutdown,
                session,
                _dir: dir,
            }
        }

        fn client(&self) -> &dyn Transport {
            &self.client
        }

        async fn publish_job(&self, job: &Job) {
            self.client()
                .publish(&self.names.jobs_exchange(), "", job)
                .await
                .expect("publish");
        }

        async fn publish_started(&self, job: &Job, runner: &RunnerInfo, at_ms: u64) {
            let event = Event::Started {
                v: SCHEMA_VERSION,
                job: job.clone(),
                runner: runner.clone(),
                at_ms,
            };
            self.client()
                .publish(&self.names.events_exchange(), event.routing_key(), &event)
                .await
                .expect("publish");
        }

        async fn publish_result(&self, result: &JobResult) {
            self.client()
                .publish(
                    &self.names.results_exchange(),
                    &result.routing_key(),
                    result,
                )
                .await
                .expect("publish");
        }

        /// Waits until `count` messages were acked from `queue`.
        async fn acked(&self, queue: &str, count: usize) {
            self.broker
                .wait_for(WAIT, |b| (b.acked(queue).len() >= count).then_some(()))
                .await
                .unwrap_or_else(|e| panic!("{count} acks on {queue}: {e}"));
        }

        async fn job(&self, job: &Job) -> model::JobRecord {
            self.jobs
                .store()
                .job(&job.id)
                .await
                .expect("store")
                .expect("recorded")
        }

        async fn stop(self) -> Result<(), RecordError> {
            self.shutdown.cancel();
            self.session.await.expect("session task")
        }
    }

    fn job(n: u32) -> Job {
        Job::try_new("/srv/repo", "main", &format!("{n:040x}")).expect("job")
    }

    fn runner(id: &str) -> RunnerInfo {
        RunnerInfo {
            id: RunnerId::parse(id).expect("id"),
            host: "h".into(),
            connection: format!("c-{id}"),
            sandbox: Default::default(),
            queues: Vec::new(),
        }
    }

    fn result(job: &Job, outcome: Outcome, by: &str) -> JobResult {
        JobResult {
            v: SCHEMA_VERSION,
            job: job.clone(),
            outcome,
            exit_code: Some(0),
            started_at_ms: 10,
            finished_at_ms: 20,
            duration_ms: 10,
            output: format!("output of {by}"),
            truncated: false,
            runner: runner(by),
            reason: None,
            plan: None,
            tests: None,
        }
    }

    #[tokio::test]
    async fn the_first_result_is_the_outcome_and_a_second_one_a_counted_duplicate() {
        let h = Harness::start().await;
        let job = job(1);
        h.publish_job(&job).await;
        h.acked(&h.names.dispatcher_jobs_queue(), 1).await;
        assert_eq!(h.job(&job).await.status, JobStatus::Queued);
        h.publish_result(&result(&job, Outcome::Passed, "r1")).await;
        h.publish_result(&result(&job, Outcome::Failed, "r2")).await;
        h.acked(&h.names.dispatcher_results_queue(), 2).await;
        let record = h.job(&job).await;
        assert_eq!((record.status, record.duplicates), (JobStatus::Passed, 1));
        let log = h.jobs.store().log(&job.id).await.expect("log");
        assert_eq!(log.as_deref(), Some("output of r1"));
        h.stop().await.expect("a clean stop");
    }

    #[tokio::test]
    async fn results_waiting_together_are_recorded_together_each_once_and_a_bad_one_is_dead_lettered(
    ) {
        let h = Harness::start().await;
        let jobs: Vec<Job> = (100..130).map(job).collect();
        // Published back to back, they wait behind the first in the
        // session's prefetch and are recorded in batches.
        for (n, job) in jobs.iter().enumerate() {
            h.publish_result(&result(job, Outcome::Passed, "r1")).await;
            if n == 10 {
                h.client()
                    .publish_raw(
                        &h.names.results_exchange(),
                        "result.passed",
                        b"{\"v\": 1}",
                        Vec::new(),
                    )
                    .await
                    .expect("publish");
            }
            h.publish_result(&result(job, Outcome::Failed, "r2")).await;
        }
        h.acked(&h.names.dispatcher_results_queue(), jobs.len() * 2 + 1)
            .await;
        for job in &jobs {
            let record = h.job(job).await;
            assert_eq!((record.status, record.duplicates), (JobStatus::Passed, 1));
        }
        let dead = h.broker.ready(&h.names.dead_letter_queue());
        assert_eq!(dead.len(), 1, "the bad one, once");
        assert_eq!(
            dead[0].header("x-warren-queue"),
            Some(h.names.dispatcher_results_queue())
        );
        h.stop().await.expect("a clean stop");
    }

    #[tokio::test]
    async fn a_runner_still_running_a_recorded_job_is_told_to_stop_and_the_winner_is_spared() {
        let h = Harness::start().await;
        let mut control = h
            .client()
            .subscribe(&h.names.control_exchange())
            .await
            .expect("subscribe");
        let job = job(2);
        h.publish_started(&job, &runner("r1"), 10).await;
        h.publish_started(&job, &runner("r2"), 11).await;
        h.acked(&h.names.dispatcher_events_queue(), 2).await;
        assert_eq!(h.job(&job).await.attempts, 2);
        h.publish_result(&result(&job, Outcome::Passed, "r2")).await;
        let delivery = tokio::time::timeout(WAIT, control.next())
            .await
            .expect("a control message in time")
            .expect("a control message")
            .expect("delivered");
        match Incoming::<Control>::decode(&delivery, 64 * 1024) {
            Incoming::Valid(Control::Cancel {
                job_id,
                except_runner,
                ..
            }) => {
                assert_eq!(job_id, job.id);
                assert_eq!(except_runner, Some(RunnerId::parse("r2").expect("id")));
            }
            Incoming::Refused(reason) => panic!("{reason}"),
        }
        h.stop().await.expect("a clean stop");
    }

    #[tokio::test]
    async fn a_malformed_message_is_dead_lettered_once_with_its_headers_and_the_reason() {
        let h = Harness::start().await;
        h.client()
            .publish_raw(
                &h.names.jobs_exchange(),
                "",
                b"{\"v\": 1, \"id\": \"x\"}",
                vec![("x-client".into(), "test".into())],
            )
            .await
            .expect("publish");
        h.acked(&h.names.dispatcher_jobs_queue(), 1).await;
        let dead = h.broker.ready(&h.names.dead_letter_queue());
        assert_eq!(dead.len(), 1, "once");
        assert_eq!(dead[0].header("x-client").as_deref(), Some("test"));
        let reason = dead[0].header("x-warren-reason").unwrap_or_default();
        assert!(reason.contains("missing field"), "{reason}");
        assert_eq!(
            dead[0].header("x-warren-queue"),
            Some(h.names.dispatcher_jobs_queue())
        );
        h.stop().await.expect("a clean stop");
    }

    #[tokio::test]
    async fn a_job_the_broker_gives_up_on_gets_a_reason_and_is_recorded_as_error_with_it() {
        let h = Harness::start().await;
        let job = job(3);
        h.publish_job(&job).await;
        // Two runners take it in turn and die (the delivery limit is 2).
        for attempt in 1..=2 {
            let name = format!("runner-{attempt}");
            let runner = h.broker.open(&name).expect("open");
            let mut work = (&runner as &dyn Transport)
                .consume(&h.names.work_queue(), 1)
                .await
                .expect("consume");
            let taken = tokio::time::timeout(WAIT, work.next()).await;
            assert!(matches!(taken, Ok(Some(Ok(_)))), "delivery {attempt}");
            assert!(h.broker.close_connection(&name));
        }
        h.broker
            .wait_for(WAIT, |b| {
                (!b.ready(&h.names.dead_letter_queue()).is_empty()).then_some(())
            })
            .await
            .expect("a dead letter");
        h.acked(&h.names.dispatcher_dead_queue(), 1).await;
        let dead = h.broker.ready(&h.names.dead_letter_queue());
        let reason = dead[0].header("x-warren-reason").unwrap_or_default();
        assert!(reason.contains("after 2 deliveries"), "{reason}");
        let record = h.job(&job).await;
        assert_eq!(record.status, JobStatus::Error);
        assert_eq!(record.reason.as_deref(), Some(reason.as_str()));
        h.stop().await.expect("a clean stop");
    }

    #[tokio::test]
    async fn a_store_that_cannot_write_ends_the_session_and_the_message_waits_unacked() {
        let h = Harness::start().await;
        h.jobs.store().close().await;
        let job = job(4);
        h.publish_result(&result(&job, Outcome::Passed, "r1")).await;
        let ended = tokio::time::timeout(WAIT, h.session)
            .await
            .expect("the session ends")
            .expect("session task");
        assert!(matches!(ended, Err(RecordError::Store(_))), "{ended:?}");
        // Nothing was acked: the result is still the broker's.
        assert!(h
            .broker
            .acked(&h.names.dispatcher_results_queue())
            .is_empty());
        let queue = h.names.dispatcher_results_queue();
        let counts = h.broker.counts(&queue);
        assert_eq!(counts.ready + counts.unacked, 1, "{counts:?}");
    }
}
