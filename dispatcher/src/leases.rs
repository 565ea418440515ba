//! Leases on running jobs. A runner renews its lease with every heartbeat;
//! a lease that goes unrenewed for too long means the runner is frozen or
//! cut off while its TCP connection may still look alive, so the dispatcher
//! acts instead of waiting for the broker's own heartbeat timeout: it
//! closes the runner's connection through the management API (the broker
//! then requeues the job), or, without one, republishes the job.
//!
//! With several dispatchers, each records the events it consumes (they
//! compete on the events queue), and only the one that holds the duties
//! ([`crate::leader`]) acts on expired leases. So that it acts on every
//! running job, it adopts those it never saw start from the store; and
//! before acting, it reads the runner's last heartbeat as recorded by any
//! dispatcher (`runners.last_seen_ms`, the runner's own clock, compared
//! only with the runner's earlier heartbeats): a runner seen since the
//! lease's last renewal is alive, its lease renewed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker::transport::Transport;
use model::{Job, JobId, JobRecord, RunnerId, RunnerRecord};
use store::{Store, StoreError};
use tasks::Tasks;
use tokio_util::sync::CancellationToken;

use crate::management::{Closed, Management};

/// How often expired leases are looked for.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// How many times (a second apart) to look for an expired runner's
/// connection: the management API lists a new connection only after its
/// next statistics emission (every 5 s by default).
const CONNECTION_LOOKUPS: u32 = 8;

/// A runner's hold on a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub job_id: JobId,
    pub runner: RunnerId,
    /// The runner's AMQP connection name (to close it).
    pub connection: String,
    /// The `at_ms` of the runner's event that granted or last renewed it.
    pub seen_ms: u64,
    renewed: Instant,
}

/// All leases, keyed by (job, runner).
#[derive(Debug)]
pub struct Leases {
    ttl: Duration,
    leases: HashMap<(JobId, RunnerId), Lease>,
}

impl Leases {
    pub fn new(ttl: Duration) -> Self {
        Leases {
            ttl,
            leases: HashMap::new(),
        }
    }

    /// A runner started (or was found running) a job.
    pub fn grant(
        &mut self,
        job_id: &JobId,
        runner: &RunnerId,
        connection: &str,
        seen_ms: u64,
        now: Instant,
    ) {
        self.leases.insert(
            (job_id.clone(), runner.clone()),
            Lease {
                job_id: job_id.clone(),
                runner: runner.clone(),
                connection: connection.to_string(),
                seen_ms,
                renewed: now,
            },
        );
    }

    /// A heartbeat from `runner` naming `job_id`.
    pub fn renew(
        &mut self,
        job_id: &JobId,
        runner: &RunnerId,
        connection: &str,
        seen_ms: u64,
        now: Instant,
    ) {
        self.grant(job_id, runner, connection, seen_ms, now);
    }

    /// Leases for the running jobs in the store that have none here (their
    /// events went to another dispatcher, or this one just started), as of
    /// their runner's last recorded heartbeat.
    pub fn adopt(&mut self, running: &[JobRecord], runners: &[RunnerRecord], now: Instant) {
        for job in running {
            let (Some(runner), Some(connection)) = (&job.runner, &job.connection) else {
                continue;
            };
            if self.leases.keys().any(|(leased, _)| leased == &job.id) {
                continue;
            }
            let seen_ms = runners
                .iter()
                .find(|r| &r.id == runner)
                .map_or(0, |r| r.last_seen_ms.max(0) as u64);
            self.grant(&job.id, runner, connection, seen_ms, now);
        }
    }

    /// The job's outcome is recorded: its leases end. Returns the runners
    /// that held one.
    pub fn release(&mut self, job_id: &JobId) -> Vec<RunnerId> {
        let holders: Vec<RunnerId> = self
            .leases
            .keys()
            .filter(|(job, _)| job == job_id)
            .map(|(_, runner)| runner.clone())
            .collect();
        for runner in &holders {
            self.leases.remove(&(job_id.clone(), runner.clone()));
        }
        holders
    }

    /// Removes and returns the leases not renewed within the TTL.
    pub fn take_expired(&mut self, now: Instant) -> Vec<Lease> {
        let ttl = self.ttl;
        let expired: Vec<(JobId, RunnerId)> = self
            .leases
            .iter()
            .filter(|(_, lease)| now.duration_since(lease.renewed) > ttl)
            .map(|(key, _)| key.clone())
            .collect();
        expired
            .into_iter()
            .filter_map(|key| self.leases.remove(&key))
            .collect()
    }
}

/// What acting on an expired lease needs: the management API (if usable)
/// and the dispatcher's tasks, where each expiry runs (finding the
/// connection may take a few seconds).
#[derive(Clone)]
pub struct Expiry {
    pub management: Option<Management>,
    pub tasks: Tasks,
    /// Whether this dispatcher holds the duties (acts on expiries).
    pub leader: tokio::sync::watch::Receiver<bool>,
    /// Whether other dispatchers may record on the same store (PostgreSQL):
    /// then the running jobs and runners' heartbeats they recorded are
    /// read every time; on a store of its own (SQLite) once per session,
    /// so an idle dispatcher does not wake the store.
    pub shared_store: bool,
}

/// Every half second until `shutdown`, acts on the leases that expired
/// while their job still has no outcome.
pub async fn watch(
    leases: Arc<Mutex<Leases>>,
    store: Arc<dyn Store>,
    expiry: Expiry,
    transport: Arc<dyn Transport>,
    shutdown: CancellationToken,
) -> Result<(), StoreError> {
    let mut tick = tokio::time::interval(WATCH_EVERY);
    let mut adopted = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let lock = || {
            leases
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if !*expiry.leader.borrow() {
            // Another dispatcher acts; forget what expired here.
            lock().take_expired(Instant::now());
            adopted = false;
            continue;
        }
        if expiry.shared_store || !adopted {
            let running = store.running().await?;
            let runners = store.runners().await?;
            lock().adopt(&running, &runners, Instant::now());
            adopted = true;
        }
        let expired = lock().take_expired(Instant::now());
        if expired.is_empty() {
            continue;
        }
        let runners = store.runners().await?;
        for lease in expired {
            let Some(job) = store.job(&lease.job_id).await? else {
                continue;
            };
            if job.is_terminal() {
                continue;
            }
            // Heartbeats another dispatcher recorded since this lease's
            // last renewal: the runner is alive.
            let seen = runners
                .iter()
                .find(|r| r.id == lease.runner)
                .map_or(0, |r| r.last_seen_ms.max(0) as u64);
            if seen > lease.seen_ms {
                lock().renew(
                    &lease.job_id,
                    &lease.runner,
                    &lease.connection,
                    seen,
                    Instant::now(),
                );
                continue;
            }
            tracing::warn!(job = %lease.job_id, runner = %lease.runner, "lease expired: the runner stopped sending heartbeats");
            expiry.tasks.spawn(
                format!("the expiry of job {}'s lease", lease.job_id),
                expire(
                    expiry.management.clone(),
                    transport.clone(),
                    lease,
                    job.to_job(),
                ),
            );
        }
    }
}

/// Acts on an expired lease: close the runner's connection so the broker
/// requeues its job, or republish the job when the management API cannot
/// be used.
async fn expire(
    management: Option<Management>,
    transport: Arc<dyn Transport>,
    lease: Lease,
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
            match observer::producer::Producer::new(&*transport)
                .requeue(&job)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str) -> JobId {
        JobId::parse(id).expect("id")
    }

    fn runner(id: &str) -> RunnerId {
        RunnerId::parse(id).expect("id")
    }

    #[test]
    fn leases_expire_unless_renewed_and_end_with_the_outcome() {
        let start = Instant::now();
        let mut leases = Leases::new(Duration::from_secs(10));
        leases.grant(&job("j1"), &runner("r1"), "c1", 1, start);
        leases.grant(&job("j2"), &runner("r2"), "c2", 1, start);
        leases.renew(
            &job("j1"),
            &runner("r1"),
            "c1",
            2,
            start + Duration::from_secs(8),
        );
        let expired = leases.take_expired(start + Duration::from_secs(11));
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].job_id, job("j2"));
        assert!(leases
            .take_expired(start + Duration::from_secs(11))
            .is_empty());
        assert_eq!(leases.release(&job("j1")), vec![runner("r1")]);
        assert!(leases
            .take_expired(start + Duration::from_secs(100))
            .is_empty());
    }
}
