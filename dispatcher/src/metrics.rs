//! `/metrics` in Prometheus' text format, served from figures kept in
//! memory, so a scrape costs no query.
//!
//! The monotonic figures (jobs finished by status, duplicate results,
//! dead-lettered jobs, the duration and queue-wait histograms) are
//! counters: read from the store once at start, then moved by the job
//! events (see `events`). The current ones (jobs queued and running,
//! runners online) are gauges that a sampler refreshes every few seconds
//! with small indexed counts. The gauges' last hour is kept too, for the
//! dashboard's load chart (`GET /api/trends`).

use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use model::trends::LoadSample;
use model::{JobRecord, JobStatus, Outcome};
use store::{Histogram, Store, StoreError};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use crate::events::{Change, JobEvent};

/// Bucket bounds in seconds for durations and queue waits.
pub const BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];

/// How often the gauges are refreshed.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// The figures `/metrics` shows.
#[derive(Debug, Clone, Default, PartialEq)]
struct Figures {
    finished: [u64; 4],
    duplicates: u64,
    dead_lettered: u64,
    duration: Histogram,
    queue_wait: Histogram,
    queued: i64,
    running: i64,
    runners_online: i64,
}

/// One load sample kept per this many milliseconds.
pub const LOAD_EVERY_MS: i64 = 10_000;

/// How far back load samples are kept.
pub const LOAD_KEPT_MS: i64 = 3_600_000;

/// The gauges over the last hour, oldest first.
#[derive(Debug, Default)]
struct LoadHistory(VecDeque<LoadSample>);

impl LoadHistory {
    fn add(&mut self, sample: LoadSample) {
        if self
            .0
            .back()
            .is_some_and(|last| sample.at_ms - last.at_ms < LOAD_EVERY_MS)
        {
            return;
        }
        self.0.push_back(sample);
        while self
            .0
            .front()
            .is_some_and(|first| sample.at_ms - first.at_ms > LOAD_KEPT_MS)
        {
            self.0.pop_front();
        }
    }
}

/// Warren's metrics. Shared by the event follower, the sampler and the
/// HTTP handler.
#[derive(Debug, Default)]
pub struct Metrics {
    figures: Mutex<Figures>,
    load: Mutex<LoadHistory>,
}

fn outcome_index(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Passed => 0,
        Outcome::Failed => 1,
        Outcome::Error => 2,
        Outcome::Timeout => 3,
    }
}

/// Adds one observation (seconds) to a cumulative histogram.
fn observe(histogram: &mut Histogram, seconds: f64) {
    if histogram.buckets.is_empty() {
        histogram.buckets = BUCKETS.iter().map(|bound| (*bound, 0)).collect();
    }
    for (bound, count) in &mut histogram.buckets {
        if seconds <= *bound {
            *count += 1;
        }
    }
    histogram.sum_seconds += seconds;
    histogram.count += 1;
}

fn seconds_between(from: Option<i64>, to: Option<i64>) -> Option<f64> {
    let (from, to) = (from?, to?);
    (to >= from).then(|| (to - from) as f64 / 1000.0)
}

impl Metrics {
    /// The counters as the store has them now.
    pub async fn load(store: &dyn Store) -> Result<Metrics, StoreError> {
        let totals = store.totals(&BUCKETS).await?;
        let mut figures = Figures {
            duplicates: totals.duplicates.max(0) as u64,
            dead_lettered: totals.dead_lettered.max(0) as u64,
            duration: totals.duration.clone(),
            queue_wait: totals.queue_wait.clone(),
            queued: totals.count(JobStatus::Queued),
            running: totals.count(JobStatus::Running),
            ..Figures::default()
        };
        for outcome in Outcome::ALL {
            figures.finished[outcome_index(outcome)] =
                totals.count(JobStatus::from(outcome)).max(0) as u64;
        }
        Ok(Metrics {
            figures: Mutex::new(figures),
            ..Metrics::default()
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Figures> {
        self.figures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Moves the counters by one job event.
    pub fn apply(&self, event: &JobEvent) {
        let mut figures = self.lock();
        let job: &JobRecord = &event.job;
        match event.change {
            Change::Queued => {}
            Change::Started { first } => {
                if first {
                    if let Some(wait) = seconds_between(job.enqueued_at_ms, job.started_at_ms) {
                        observe(&mut figures.queue_wait, wait);
                    }
                }
            }
            Change::Finished { dead_lettered } => {
                if let Some(outcome) = job.status.outcome() {
                    figures.finished[outcome_index(outcome)] += 1;
                }
                if dead_lettered {
                    figures.dead_lettered += 1;
                }
                if let Some(ms) = job.duration_ms.filter(|ms| *ms >= 0) {
                    observe(&mut figures.duration, ms as f64 / 1000.0);
                }
            }
            Change::Duplicate => figures.duplicates += 1,
        }
    }

    /// The gauges, as last sampled.
    pub fn set_gauges(&self, queued: i64, running: i64, runners_online: i64) {
        {
            let mut figures = self.lock();
            figures.queued = queued;
            figures.running = running;
            figures.runners_online = runners_online;
        }
        self.load
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .add(LoadSample {
                at_ms: model::now_ms() as i64,
                queued,
                running,
                runners_online,
            });
    }

    /// The gauges' samples of the last hour, one per [`LOAD_EVERY_MS`],
    /// oldest first.
    pub fn load_history(&self) -> Vec<LoadSample> {
        self.load
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
            .iter()
            .copied()
            .collect()
    }

    /// Every metric, in Prometheus' text format.
    pub fn render(&self) -> String {
        let figures = self.lock().clone();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP warren_jobs_finished_total Jobs that got their outcome, by outcome.\n# TYPE warren_jobs_finished_total counter"
        );
        for outcome in Outcome::ALL {
            let _ = writeln!(
                out,
                "warren_jobs_finished_total{{status=\"{outcome}\"}} {}",
                figures.finished[outcome_index(outcome)]
            );
        }
        let _ = writeln!(
            out,
            "# HELP warren_jobs Jobs waiting or running now, by status.\n# TYPE warren_jobs gauge\nwarren_jobs{{status=\"queued\"}} {}\nwarren_jobs{{status=\"running\"}} {}",
            figures.queued, figures.running
        );
        histogram(
            &mut out,
            "warren_job_duration_seconds",
            "Time from start to outcome of finished jobs.",
            &figures.duration,
        );
        histogram(
            &mut out,
            "warren_queue_wait_seconds",
            "Time from enqueue to first start of started jobs.",
            &figures.queue_wait,
        );
        let _ = writeln!(out, "# HELP warren_runners_online Runners seen recently.\n# TYPE warren_runners_online gauge\nwarren_runners_online {}", figures.runners_online);
        let _ = writeln!(out, "# HELP warren_dead_lettered_jobs_total Jobs dead-lettered by the broker (recorded as error).\n# TYPE warren_dead_lettered_jobs_total counter\nwarren_dead_lettered_jobs_total {}", figures.dead_lettered);
        let _ = writeln!(out, "# HELP warren_duplicate_results_total Results discarded because the job already had one.\n# TYPE warren_duplicate_results_total counter\nwarren_duplicate_results_total {}", figures.duplicates);
        out
    }
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (index, bound) in BUCKETS.iter().enumerate() {
        let count = h.buckets.get(index).map_or(0, |(_, count)| *count);
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum {}", h.sum_seconds);
    let _ = writeln!(out, "{name}_count {}", h.count);
}

/// Moves the counters by every job event until the dispatcher stops.
pub async fn follow(
    metrics: Arc<Metrics>,
    mut events: UnboundedReceiver<JobEvent>,
    stopping: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stopping.cancelled() => return,
            event = events.recv() => match event {
                Some(event) => metrics.apply(&event),
                None => return,
            },
        }
    }
}

/// Refreshes the gauges every [`SAMPLE_EVERY`] until the dispatcher stops;
/// `online_within_ms`: a runner seen that recently is online.
pub async fn sample(
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
    online_within_ms: i64,
    stopping: CancellationToken,
) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopping.cancelled() => return,
            _ = tick.tick() => {}
        }
        let sampled = async {
            let queued = store.count(JobStatus::Queued).await?;
            let running = store.count(JobStatus::Running).await?;
            let cutoff = model::now_ms() as i64 - online_within_ms;
            let online = store
                .runners()
                .await?
                .iter()
                .filter(|runner| runner.last_seen_ms >= cutoff)
                .count() as i64;
            Ok::<_, StoreError>((queued, running, online))
        };
        match sampled.await {
            Ok((queued, running, online)) => metrics.set_gauges(queued, running, online),
            Err(err) => tracing::warn!("cannot sample the gauges for /metrics: {err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::{BranchName, CommitId, JobId, RepoUrl};

    fn record(status: JobStatus, duration_ms: Option<i64>) -> JobRecord {
        JobRecord {
            seq: 1,
            id: JobId::parse("0123456789abcdef").expect("id"),
            repo: RepoUrl::parse("/r").expect("repo"),
            branch: BranchName::parse("main").expect("branch"),
            commit: CommitId::parse(&"a".repeat(40)).expect("commit"),
            subject: None,
            author: None,
            status,
            attempts: 1,
            duplicates: 0,
            runner: None,
            connection: None,
            enqueued_at_ms: Some(1_000),
            started_at_ms: Some(1_100),
            finished_at_ms: Some(1_400),
            duration_ms,
            exit_code: None,
            reason: None,
            truncated: false,
            salt: String::new(),
            sandbox: None,
            name: "test".into(),
            pipeline: JobId::parse("0123456789abcdef").expect("id"),
            queue: Default::default(),
            needs: vec![],
            allow_failure: false,
            spec: None,
        }
    }

    #[test]
    fn the_load_history_keeps_one_sample_per_interval_for_an_hour() {
        let mut history = LoadHistory::default();
        let sample = |at_ms| LoadSample {
            at_ms,
            queued: at_ms,
            running: 0,
            runners_online: 1,
        };
        for at_ms in (0..2 * LOAD_KEPT_MS).step_by(2_000) {
            history.add(sample(at_ms));
        }
        let kept: Vec<i64> = history.0.iter().map(|s| s.at_ms).collect();
        assert_eq!(kept.len() as i64, LOAD_KEPT_MS / LOAD_EVERY_MS + 1);
        assert!(
            kept.windows(2).all(|w| w[1] - w[0] == LOAD_EVERY_MS),
            "{kept:?}"
        );
        assert_eq!(kept.last(), Some(&(2 * LOAD_KEPT_MS - LOAD_EVERY_MS)));
    }

    #[test]
    fn every_outcome_is_a_counter_from_the_first_scrape_and_events_move_them() {
        let metrics = Metrics::default();
        let text = metrics.render();
        for outcome in Outcome::ALL {
            assert!(
                text.contains(&format!(
                    "warren_jobs_finished_total{{status=\"{outcome}\"}} 0"
                )),
                "{text}"
            );
        }
        assert!(text.contains("# TYPE warren_jobs_finished_total counter"));
        assert!(text.contains("# TYPE warren_duplicate_results_total counter"));
        assert!(text.contains("warren_job_duration_seconds_bucket{le=\"0.5\"} 0"));

        metrics.apply(&JobEvent {
            change: Change::Started { first: true },
            job: record(JobStatus::Running, None),
        });
        metrics.apply(&JobEvent {
            change: Change::Finished {
                dead_lettered: false,
            },
            job: record(JobStatus::Passed, Some(300)),
        });
        metrics.apply(&JobEvent {
            change: Change::Duplicate,
            job: record(JobStatus::Passed, Some(300)),
        });
        metrics.apply(&JobEvent {
            change: Change::Finished {
                dead_lettered: true,
            },
            job: record(JobStatus::Error, None),
        });
        metrics.set_gauges(3, 1, 2);
        let text = metrics.render();
        for line in [
            "warren_jobs_finished_total{status=\"passed\"} 1",
            "warren_jobs_finished_total{status=\"error\"} 1",
            "warren_duplicate_results_total 1",
            "warren_dead_lettered_jobs_total 1",
            "warren_job_duration_seconds_bucket{le=\"0.25\"} 0",
            "warren_job_duration_seconds_bucket{le=\"0.5\"} 1",
            "warren_job_duration_seconds_count 1",
            "warren_queue_wait_seconds_bucket{le=\"0.1\"} 1",
            "warren_queue_wait_seconds_count 1",
            "warren_jobs{status=\"queued\"} 3",
            "warren_runners_online 2",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
