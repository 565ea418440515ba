//! Leases on running jobs. A runner renews its lease with every heartbeat;
//! a lease that goes unrenewed for too long means the runner is frozen or
//! cut off while its TCP connection may still look alive, so the dispatcher
//! acts instead of waiting for the broker's own heartbeat timeout.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A runner's hold on a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub job_id: String,
    pub runner: String,
    /// The runner's AMQP connection name (to close it).
    pub connection: String,
    renewed: Instant,
}

/// All leases, keyed by (job, runner).
#[derive(Debug)]
pub struct Leases {
    ttl: Duration,
    leases: HashMap<(String, String), Lease>,
}

impl Leases {
    pub fn new(ttl: Duration) -> Self {
        Leases {
            ttl,
            leases: HashMap::new(),
        }
    }

    /// A runner started (or was found running) a job.
    pub fn grant(&mut self, job_id: &str, runner: &str, connection: &str, now: Instant) {
        self.leases.insert(
            (job_id.to_string(), runner.to_string()),
            Lease {
                job_id: job_id.to_string(),
                runner: runner.to_string(),
                connection: connection.to_string(),
                renewed: now,
            },
        );
    }

    /// A heartbeat from `runner` naming `job_id`.
    pub fn renew(&mut self, job_id: &str, runner: &str, connection: &str, now: Instant) {
        self.grant(job_id, runner, connection, now);
    }

    /// The job's outcome is recorded: its leases end. Returns the runners
    /// that held one.
    pub fn release(&mut self, job_id: &str) -> Vec<String> {
        let holders: Vec<String> = self
            .leases
            .keys()
            .filter(|(job, _)| job == job_id)
            .map(|(_, runner)| runner.clone())
            .collect();
        for runner in &holders {
            self.leases.remove(&(job_id.to_string(), runner.clone()));
        }
        holders
    }

    /// Removes and returns the leases not renewed within the TTL.
    pub fn take_expired(&mut self, now: Instant) -> Vec<Lease> {
        let ttl = self.ttl;
        let expired: Vec<(String, String)> = self
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_expire_unless_renewed_and_end_with_the_outcome() {
        let start = Instant::now();
        let mut leases = Leases::new(Duration::from_secs(10));
        leases.grant("j1", "r1", "c1", start);
        leases.grant("j2", "r2", "c2", start);
        leases.renew("j1", "r1", "c1", start + Duration::from_secs(8));
        let expired = leases.take_expired(start + Duration::from_secs(11));
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].job_id, "j2");
        assert!(leases
            .take_expired(start + Duration::from_secs(11))
            .is_empty());
        assert_eq!(leases.release("j1"), vec!["r1".to_string()]);
        assert!(leases
            .take_expired(start + Duration::from_secs(100))
            .is_empty());
    }
}
