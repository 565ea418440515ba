//! `/metrics` in Prometheus' text format, computed from the store at scrape
//! time (so it survives restarts and needs no bookkeeping on the hot path).

use std::fmt::Write;

use crate::store::{Store, StoreError};

/// Bucket bounds in seconds for durations and queue waits.
const BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];

/// Renders every metric. `online_within_ms`: a runner seen that recently is
/// online.
pub fn render(store: &Store, online_within_ms: i64) -> Result<String, StoreError> {
    let stats = store.stats(&BUCKETS, online_within_ms)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP warren_jobs Jobs by status.\n# TYPE warren_jobs gauge"
    );
    for (status, count) in &stats.by_status {
        let _ = writeln!(out, "warren_jobs{{status=\"{status}\"}} {count}");
    }
    histogram(
        &mut out,
        "warren_job_duration_seconds",
        "Time from start to outcome of finished jobs.",
        &stats.duration,
    );
    histogram(
        &mut out,
        "warren_queue_wait_seconds",
        "Time from enqueue to start of started jobs.",
        &stats.wait,
    );
    let _ = writeln!(out, "# HELP warren_runners_online Runners seen recently.\n# TYPE warren_runners_online gauge\nwarren_runners_online {}", stats.runners_online);
    let _ = writeln!(out, "# HELP warren_dead_lettered_jobs Jobs dead-lettered (recorded as error).\n# TYPE warren_dead_lettered_jobs gauge\nwarren_dead_lettered_jobs {}", stats.dead_lettered);
    let _ = writeln!(out, "# HELP warren_duplicate_results Results discarded because the job already had one.\n# TYPE warren_duplicate_results gauge\nwarren_duplicate_results {}", stats.duplicates);
    Ok(out)
}

/// Cumulative bucket counts, sum and count of one histogram.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, i64)>,
    pub sum: f64,
    pub count: i64,
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (bound, count) in &h.buckets {
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum {}", h.sum);
    let _ = writeln!(out, "{name}_count {}", h.count);
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::{Job, JobResult, Outcome, RunnerId, RunnerInfo, SCHEMA_VERSION};

    #[test]
    fn renders_counts_and_histograms() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let job = Job::try_new("/r", "main", &"a".repeat(40)).expect("a valid job");
        store.record_queued(&job).expect("queued");
        let result = JobResult {
            v: SCHEMA_VERSION,
            job: job.clone(),
            outcome: Outcome::Passed,
            exit_code: Some(0),
            started_at_ms: job.enqueued_at_ms + 100,
            finished_at_ms: job.enqueued_at_ms + 400,
            duration_ms: 300,
            output: String::new(),
            truncated: false,
            runner: RunnerInfo {
                id: RunnerId::parse("r").expect("id"),
                host: "h".into(),
                connection: "c".into(),
            },
            reason: None,
        };
        store.record_result(&result).expect("result");
        store
            .record_queued(&Job::try_new("/r", "main", &"b".repeat(40)).expect("a valid job"))
            .expect("queued");
        let text = render(&store, 10_000).expect("render");
        assert!(text.contains("warren_jobs{status=\"passed\"} 1"), "{text}");
        assert!(text.contains("warren_jobs{status=\"queued\"} 1"), "{text}");
        assert!(
            text.contains("warren_job_duration_seconds_bucket{le=\"0.25\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("warren_job_duration_seconds_bucket{le=\"0.5\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("warren_job_duration_seconds_count 1"),
            "{text}"
        );
        assert!(text.contains("warren_queue_wait_seconds_count 1"), "{text}");
    }
}
