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
//! its durable queues.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use broker::consume::REASON_HEADER;
use broker::topology::TopologySettings;
use broker::{header_string, Broker, BrokerError, Delivery, Incoming, Publisher};
use futures::StreamExt;
use model::{Control, Event, Job, JobId, JobResult, RunnerId, SCHEMA_VERSION};
use store::{Recorded, StoreError};
use tokio_util::sync::CancellationToken;

use crate::jobs::Jobs;
use crate::leases::{Expiry, Leases};

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
        let watcher = crate::leases::watch(
            self.leases.clone(),
            self.jobs.store().clone(),
            self.expiry.clone(),
            publisher.clone(),
            names.clone(),
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
                Err(RecordError::Store(StoreError::Collision { .. })) => {
                    // Not reachable through the id rule (every consumer
                    // checks it), but a store must not take it silently.
                    let reason = "the job's id already names another job in the store";
                    broker::dead_letter(&publisher, &names, &queue, &delivery, reason).await?
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
        self.jobs.queued(&job).await?;
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
                let started = self.jobs.started(&job, &runner, at_ms).await?;
                if started.same_execution {
                    // The late announcement of the execution already recorded.
                } else if started.is_duplicate_execution() {
                    tracing::info!(job = %job.id, runner = %runner.id, "duplicate execution of a finished job; telling the runner to stop");
                    self.cancel(publisher, names, &job.id, None).await?;
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
                    self.lock_leases()
                        .renew(job, &runner.id, &runner.connection, Instant::now());
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
        let (job, runner, outcome) = (&result.job.id, &result.runner.id, result.outcome);
        match self.jobs.finished(&result).await? {
            Recorded::New { .. } => {
                tracing::info!(job = %job, runner = %runner, %outcome, "job finished");
                let holders = self.lock_leases().release(job);
                if holders.iter().any(|holder| holder != runner) {
                    self.cancel(publisher, names, job, Some(runner.clone()))
                        .await?;
                }
            }
            Recorded::Duplicate(_) => {
                tracing::info!(job = %job, runner = %runner, %outcome, "duplicate result discarded; the job already has its outcome");
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
        if self.jobs.dead(&job, &reason).await?.is_new() {
            tracing::warn!(job = %job.id, %reason, "job recorded as error");
            let holders = self.lock_leases().release(&job.id);
            if !holders.is_empty() {
                // Runners still on it (e.g. past the consumer timeout) stop.
                self.cancel(publisher, names, &job.id, None).await?;
            }
        }
        Ok(None)
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
}

/// The dispatcher's copy of a control message: nothing to do with a valid
/// one (runners act on theirs); a malformed one is dead-lettered here.
fn on_control(delivery: &Delivery, max_message_bytes: usize) -> Option<String> {
    match Incoming::<Control>::decode(delivery, max_message_bytes) {
        Incoming::Valid(_) => None,
        Incoming::Refused(reason) => Some(reason.to_string()),
    }
}
