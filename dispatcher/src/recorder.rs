//! Consuming what the other components publish and recording it: the jobs
//! copy (queued), runner events (running, attempts, leases), results (the
//! one outcome) and dead letters (poison jobs become `error`).
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
//! its durable queues.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker::consume::REASON_HEADER;
use broker::topology::TopologySettings;
use broker::{header_string, Broker, BrokerError, Delivery, Incoming, Publisher};
use futures::StreamExt;
use model::{Control, Event, Job, JobId, JobResult, RunnerId, SCHEMA_VERSION};
use tokio_util::sync::CancellationToken;

use crate::leases::Leases;
use crate::management::{Closed, Management};
use crate::store::{Recorded, Store, StoreError};

/// Deliveries each dispatcher queue may have unacked at once.
const PREFETCH: u16 = 64;

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
    pub store: Store,
    pub leases: Arc<Mutex<Leases>>,
    pub management: Option<Management>,
    /// Every change of a job, for the dashboard's live view.
    pub updates: tokio::sync::broadcast::Sender<crate::store::JobRecord>,
    /// Held while a job's record is read and sent to `updates`, so the
    /// consumers (jobs, events, results run concurrently) send in the order
    /// they read: a page never sees a job go back from `running` to
    /// `queued`, or from its outcome to `running`.
    pub announcing: Arc<tokio::sync::Mutex<()>>,
    pub notifier: crate::notify::Notifier,
    /// Larger messages are dead-lettered.
    pub max_message_bytes: usize,
    /// The deployment's delivery limit, for the reason of a job the broker
    /// dead-lettered.
    pub settings: TopologySettings,
    /// The dispatcher's tasks: lease expiries run there, tracked, and are
    /// dropped when it stops.
    pub tasks: tasks::Tasks,
}

impl Recorder {
    /// Runs one broker session until the connection is lost or shutdown.
    pub async fn session(
        &self,
        broker: &Broker,
        shutdown: &CancellationToken,
    ) -> Result<(), RecordError> {
        let names = broker.names().clone();
        let publisher = broker.publisher().await?;
        let mut tasks = tokio::task::JoinSet::new();
        for queue in [
            names.dispatcher_jobs_queue(),
            names.dispatcher_events_queue(),
            names.dispatcher_results_queue(),
            names.dispatcher_dead_queue(),
            names.dispatcher_rejected_queue(),
            names.dispatcher_control_queue(),
        ] {
            let consumer = broker.consume(&queue, PREFETCH).await?;
            let recorder = self.clone();
            let publisher = publisher.clone();
            let names = names.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                recorder
                    .consume(consumer, queue, publisher, names, shutdown)
                    .await
            });
        }
        let recorder = self.clone();
        let lease_publisher = publisher.clone();
        let lease_names = names.clone();
        let lease_shutdown = shutdown.clone();
        tasks.spawn(async move {
            recorder
                .watch_leases(lease_publisher, lease_names, lease_shutdown)
                .await
        });
        tokio::select! {
            _ = shutdown.cancelled() => {
                // Each task stops between messages: in-flight stores and
                // acks complete first.
                while tasks.join_next().await.is_some() {}
                Ok(())
            }
            _ = broker.closed() => {
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
        mut consumer: broker::Consumer,
        queue: String,
        publisher: Publisher,
        names: broker::Names,
        shutdown: CancellationToken,
    ) -> Result<(), RecordError> {
        loop {
            let delivery = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                next = consumer.next() => match next {
                    Some(delivery) => delivery,
                    None => return Ok(()),
                },
            };
            let delivery = delivery.map_err(|source| BrokerError::Amqp {
                context: format!("receiving from {queue}"),
                source,
            })?;
            let handled = if queue == names.dispatcher_jobs_queue() {
                self.on_job(&delivery).await
            } else if queue == names.dispatcher_events_queue() {
                self.on_event(&delivery, &publisher, &names).await
            } else if queue == names.dispatcher_results_queue() {
                self.on_result(&delivery, &publisher, &names).await
            } else if queue == names.dispatcher_rejected_queue() {
                Ok(Some(self.rejected_reason(&delivery)))
            } else if queue == names.dispatcher_control_queue() {
                Ok(on_control(&delivery, self.max_message_bytes))
            } else {
                self.on_dead(&delivery, &publisher, &names).await
            };
            match handled {
                Ok(None) => {
                    delivery
                        .ack(Default::default())
                        .await
                        .map_err(|source| BrokerError::Amqp {
                            context: format!("acking on {queue}"),
                            source,
                        })?;
                }
                Ok(Some(reason)) => {
                    broker::dead_letter(&publisher, &names, &queue, &delivery, &reason).await?
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Returns `Some(reason)` for a message to dead-letter.
    async fn on_job(&self, delivery: &Delivery) -> Result<Option<String>, RecordError> {
        let job = match Incoming::<Job>::decode(delivery, self.max_message_bytes) {
            Incoming::Valid(job) => job,
            Incoming::Refused(reason) => return Ok(Some(reason.to_string())),
        };
        let id = job.id.clone();
        self.store.call(move |s| s.record_queued(&job)).await?;
        self.announce(&id).await?;
        Ok(None)
    }

    async fn on_event(
        &self,
        delivery: &Delivery,
        publisher: &Publisher,
        names: &broker::Names,
    ) -> Result<Option<String>, RecordError> {
        let event = match Incoming::<Event>::decode(delivery, self.max_message_bytes) {
            Incoming::Valid(event) => event,
            Incoming::Refused(reason) => return Ok(Some(reason.to_string())),
        };
        match event {
            Event::Started {
                job, runner, at_ms, ..
            } => {
                let (job_id, runner_id, connection) =
                    (job.id.clone(), runner.id.clone(), runner.connection.clone());
                let started = self
                    .store
                    .call(move |s| s.record_started(&job, &runner, at_ms))
                    .await?;
                let record = &started.record;
                if started.same_execution {
                    // The late announcement of the execution already recorded.
                } else if started.is_duplicate_execution() {
                    tracing::info!(job = %job_id, runner = %runner_id, "duplicate execution of a finished job; telling the runner to stop");
                    self.cancel(publisher, names, &job_id, None).await?;
                } else {
                    if record.attempts > 1 {
                        tracing::info!(job = %job_id, runner = %runner_id, attempts = record.attempts, "job running again");
                    } else {
                        tracing::info!(job = %job_id, runner = %runner_id, "job running");
                    }
                    self.lock_leases()
                        .grant(&job_id, &runner_id, &connection, Instant::now());
                    self.announce(&job_id).await?;
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
                    self.lock_leases()
                        .renew(job, &runner.id, &runner.connection, Instant::now());
                    if let Some(chunk) = output {
                        let id = job.clone();
                        let appended = self
                            .store
                            .call(move |s| s.append_live_output(&id, chunk.offset, &chunk.text))
                            .await;
                        // Best effort: the whole output comes with the result.
                        if let Err(err) = appended {
                            tracing::warn!(job = %job, "cannot keep the live output: {err}");
                        }
                    }
                }
                self.store
                    .call(move |s| s.record_heartbeat(&runner, job_id.as_deref(), at_ms))
                    .await?;
            }
        }
        Ok(None)
    }

    async fn on_result(
        &self,
        delivery: &Delivery,
        publisher: &Publisher,
        names: &broker::Names,
    ) -> Result<Option<String>, RecordError> {
        let result = match Incoming::<JobResult>::decode(delivery, self.max_message_bytes) {
            Incoming::Valid(result) => result,
            Incoming::Refused(reason) => return Ok(Some(reason.to_string())),
        };
        let (job_id, runner_id, outcome) = (
            result.job.id.clone(),
            result.runner.id.clone(),
            result.outcome,
        );
        let recorded = self.store.call(move |s| s.record_result(&result)).await?;
        match recorded {
            Recorded::New => {
                tracing::info!(job = %job_id, runner = %runner_id, outcome = outcome.as_str(), "job finished");
                self.finished(&job_id).await?;
                let holders = self.lock_leases().release(&job_id);
                if holders.iter().any(|r| r.as_str() != runner_id.as_str()) {
                    self.cancel(publisher, names, &job_id, Some(runner_id))
                        .await?;
                }
            }
            Recorded::Duplicate => {
                tracing::info!(job = %job_id, runner = %runner_id, outcome = outcome.as_str(), "duplicate result discarded; the job already has its outcome");
            }
        }
        Ok(None)
    }

    /// Why the broker dead-lettered a job of the work queue, in words:
    /// the reason its `x-death` header gives in a word or two.
    fn rejected_reason(&self, delivery: &Delivery) -> String {
        let limit = self.settings.delivery_limit;
        match header_string(delivery, "x-first-death-reason").as_deref() {
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
        publisher: &Publisher,
        names: &broker::Names,
    ) -> Result<Option<String>, RecordError> {
        let Incoming::Valid(job) = Incoming::<Job>::decode(delivery, self.max_message_bytes) else {
            // Not a job (a malformed message dead-lettered here): it stays
            // in the dead-letter queue for people; nothing to record.
            return Ok(None);
        };
        // The job's recorded reason is the dead letter's, word for word.
        let reason = header_string(delivery, REASON_HEADER)
            .unwrap_or_else(|| self.rejected_reason(delivery));
        let job_id = job.id.clone();
        let shown = reason.clone();
        if self
            .store
            .call(move |s| s.record_dead(&job, &reason))
            .await?
            == Recorded::New
        {
            tracing::warn!(job = %job_id, reason = %shown, "job recorded as error");
            let holders = self.lock_leases().release(&job_id);
            self.finished(&job_id).await?;
            if !holders.is_empty() {
                // Runners still on it (e.g. past the consumer timeout) stop.
                self.cancel(publisher, names, &job_id, None).await?;
            }
        }
        Ok(None)
    }

    /// Tells the dashboard about a job's new state.
    async fn announce(&self, job_id: &str) -> Result<Option<crate::store::JobRecord>, RecordError> {
        let _order = self.announcing.lock().await;
        let id = job_id.to_string();
        let record = self.store.call(move |s| s.job(&id)).await?;
        if let Some(record) = &record {
            let _ = self.updates.send(record.clone());
        }
        Ok(record)
    }

    /// A job got its outcome: tell the dashboard and the notifier.
    async fn finished(&self, job_id: &str) -> Result<(), RecordError> {
        if let Some(record) = self.announce(job_id).await? {
            self.notifier.finished(record);
        }
        Ok(())
    }

    async fn cancel(
        &self,
        publisher: &Publisher,
        names: &broker::Names,
        job_id: &JobId,
        except_runner: Option<RunnerId>,
    ) -> Result<(), BrokerError> {
        let control = Control::Cancel {
            v: SCHEMA_VERSION,
            job_id: job_id.clone(),
            except_runner,
            reason: "the job's result is already recorded".into(),
        };
        publisher
            .publish(&names.control_exchange(), "", &control)
            .await
    }

    fn lock_leases(&self) -> std::sync::MutexGuard<'_, Leases> {
        self.leases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every half second, acts on expired leases: close the runner's broker
    /// connection (the broker then requeues its job), or, without a
    /// management API, republish the job.
    async fn watch_leases(
        self,
        publisher: Publisher,
        names: broker::Names,
        shutdown: CancellationToken,
    ) -> Result<(), RecordError> {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            let expired = self.lock_leases().take_expired(Instant::now());
            for lease in expired {
                let job_id = lease.job_id.clone();
                let still_running = self
                    .store
                    .call(move |s| s.job(&job_id))
                    .await?
                    .filter(|job| !job.is_terminal());
                let Some(job) = still_running else { continue };
                tracing::warn!(job = %lease.job_id, runner = %lease.runner, "lease expired: the runner stopped sending heartbeats");
                // Off the watcher's loop: finding the connection may take a
                // few seconds (below).
                let job = match job.to_job() {
                    Ok(job) => job,
                    Err(err) => {
                        tracing::error!(job = %lease.job_id, "the store holds a job that is not valid ({err}); cannot republish it");
                        continue;
                    }
                };
                self.tasks.spawn(
                    format!("the expiry of job {}'s lease", lease.job_id),
                    expire(
                        self.management.clone(),
                        publisher.clone(),
                        names.clone(),
                        lease,
                        job,
                    ),
                );
            }
        }
    }
}

/// The dispatcher's copy of a control message: nothing to do with a valid
/// one (runners act on theirs); a malformed one is dead-lettered here.
fn on_control(delivery: &Delivery, max_message_bytes: usize) -> Option<String> {
    match Incoming::<Control>::decode(delivery, max_message_bytes) {
        Incoming::Valid(_) => None,
        Incoming::Refused(reason) => Some(reason.to_string()),
    }
}

/// How many times (a second apart) to look for an expired runner's
/// connection: the management API lists a new connection only after its
/// next statistics emission (every 5 s by default).
const CONNECTION_LOOKUPS: u32 = 8;

/// Acts on an expired lease: close the runner's connection so the broker
/// requeues its job, or republish the job when the management API cannot
/// be used.
async fn expire(
    management: Option<Management>,
    publisher: Publisher,
    names: broker::Names,
    lease: crate::leases::Lease,
    job: Job,
) {
    let reason = "warren: lease expired (runner frozen or cut off)";
    let mut outcome = Err(());
    if let Some(management) = &management {
        for attempt in 1..=CONNECTION_LOOKUPS {
            match management.close_connection(&lease.connection, reason).await {
                Ok(Closed::NotFound) if attempt < CONNECTION_LOOKUPS => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Ok(found) => {
                    outcome = Ok(found);
                    break;
                }
                Err(err) => {
                    tracing::warn!("cannot close the runner's connection: {err}");
                    break;
                }
            }
        }
    }
    match outcome {
        Ok(Closed::Closed) => {
            tracing::info!(job = %lease.job_id, runner = %lease.runner, "closed the frozen runner's connection; the broker requeues its job")
        }
        Ok(Closed::NotFound) => {
            tracing::info!(job = %lease.job_id, runner = %lease.runner, "the runner's connection is already gone; the broker requeued its job")
        }
        Err(()) => {
            let body = broker::message::encode(&job);
            match publisher
                .publish_raw("", &names.work_queue(), &body, Vec::new())
                .await
            {
                Ok(()) => {
                    tracing::info!(job = %lease.job_id, "republished the job (management API unavailable)")
                }
                Err(err) => tracing::warn!(job = %lease.job_id, "cannot republish the job: {err}"),
            }
        }
    }
}
