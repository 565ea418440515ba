//! Smoke test of the benchmark harness (issue 7): every scenario once at a
//! tiny size, through the same code as `cargo bench --bench scenarios`,
//! checking that each produced rows with sane values. It measures nothing
//! worth reading; the numbers live in BENCHMARKS.md.

mod common;
#[path = "../benches/harness/mod.rs"]
mod harness;

use harness::report::{Report, Unit};
use harness::{scenario, Sizes};

/// Runs scenario `id` at the smoke size and checks the rows of `sections`.
fn smoke(id: u8, sections: &[u8]) -> Report {
    let mut report = Report::new();
    scenario::run(id, &Sizes::smoke(), &mut report);
    for &section in sections {
        let section = report.section(section).clone();
        assert!(
            !section.rows.is_empty() || !section.skipped.is_empty(),
            "scenario {id} produced no rows for section {}",
            section.id
        );
        for row in &section.rows {
            assert!(!row.samples.is_empty(), "no samples: {row:?}");
            let bound = match row.unit {
                Unit::Ms => 120_000.0,
                Unit::Secs => 600.0,
                Unit::JobsPerSec => 100_000.0,
                Unit::MiB => 4096.0,
                Unit::Percent => 100.0 * 64.0,
            };
            for &value in &row.samples {
                assert!(
                    value.is_finite() && value >= 0.0 && value <= bound,
                    "{}: insane value {value} {}",
                    row.metric,
                    row.unit.suffix()
                );
            }
            assert!(row.summary().is_some(), "{row:?}");
        }
    }
    eprintln!("{}", report.console());
    report
}

#[test]
fn scenario_1_commit_to_start_and_outcome() {
    let report = smoke(1, &[1]);
    let rows = &report.sections[0].rows;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows.iter().all(|r| r.samples.iter().all(|v| *v > 0.0)),
        "latencies are positive: {rows:?}"
    );
}

#[test]
fn scenario_2_per_job_overhead() {
    let report = smoke(2, &[2]);
    assert_eq!(report.sections[1].rows.len(), 5);
    assert!(report.sections[1].details.contains("checkout"));
    // Warren's own part, on a runner without a sandbox.
    assert!(report.sections[1]
        .rows
        .iter()
        .any(|r| r.metric.contains("--sandbox none") && !r.samples.is_empty()));
}

#[test]
fn scenario_3_throughput_and_memory_under_load() {
    let report = smoke(3, &[3, 5]);
    let rates: Vec<f64> = report.sections[2]
        .rows
        .iter()
        .filter(|r| r.unit == Unit::JobsPerSec)
        .flat_map(|r| r.samples.clone())
        .collect();
    // One drain per runner count, and one with the dispatcher on PostgreSQL.
    assert_eq!(rates.len(), Sizes::smoke().throughput_runners.len() + 1);
    assert!(rates.iter().all(|r| *r > 0.0), "{rates:?}");
    assert!(report.sections[2]
        .rows
        .iter()
        .any(|r| r.metric.contains("dispatcher on PostgreSQL")));
    assert!(report.sections[4]
        .rows
        .iter()
        .any(|r| r.metric.contains("observer RSS")));
}

#[test]
fn scenario_4_failover() {
    let report = smoke(4, &[4]);
    let section = &report.sections[3];
    let expected = if harness::node::Node::available() {
        3
    } else {
        2
    };
    assert_eq!(section.rows.len(), expected, "{section:?}");
    assert!(section
        .rows
        .iter()
        .all(|r| r.samples.iter().all(|v| *v > 0.0)));
}

#[test]
fn scenario_5_idle_memory_and_cpu() {
    let report = smoke(5, &[5]);
    // Three components, CPU and RSS each.
    assert_eq!(report.sections[4].rows.len(), 6);
}

#[test]
fn scenario_6_api_with_a_full_store() {
    let report = smoke(6, &[5, 6]);
    assert_eq!(report.sections[5].rows.len(), 8);
    let run = harness::markdown::Run {
        machine: harness::system::machine(),
        commit: "0123456789abcdef".into(),
        started: harness::markdown::utc_now(),
        seconds: 1.0,
        load: (0.0, 0.0),
    };
    let markdown = harness::markdown::render(&report, &run, None);
    assert!(
        markdown.contains("| 6 | GET /api/jobs (first page"),
        "{markdown}"
    );
    // The next run reads this one back and shows its medians beside its own.
    let previous = harness::report::Previous::parse(&markdown).expect("a previous run");
    assert_eq!(previous.commit, "0123456789abcdef");
    let next = harness::markdown::render(&report, &run, Some(&previous));
    assert!(next.contains("| before (0123456) |"), "{next}");
    for row in &report.sections[5].rows {
        let median = row.summary().expect("samples").median;
        let written = format!("{} {}", row.unit.format(median), row.unit.suffix());
        assert_eq!(previous.median(6, &row.metric), Some(written.as_str()));
        assert!(
            next.contains(&format!("| {written} | {written} |")),
            "the before column holds the previous median: {next}"
        );
    }
}

#[test]
fn scenario_7_webhooks_and_many_repositories() {
    let report = smoke(7, &[7]);
    let rows = &report.sections[6].rows;
    // Webhook → start and its answer; the burst's answer and recording;
    // the many repositories' CPU (whole, per window), RSS, peak, first round.
    assert_eq!(rows.len(), 9, "{rows:?}");
    assert!(rows[0].metric.starts_with("webhook → job start"));
    assert!(
        rows.iter()
            .filter(|r| r.unit == Unit::Ms || r.unit == Unit::Secs || r.unit == Unit::MiB)
            .all(|r| r.samples.iter().all(|v| *v > 0.0)),
        "times and memory are positive: {rows:?}"
    );
    assert!(report.sections[6]
        .details
        .contains("Webhook → test started"));
}

#[test]
fn scenario_8_sandbox_cost_per_job() {
    // Not through `smoke`'s checks for every row: the two costs are
    // differences of medians, which may be below zero at this size.
    let report = smoke(8, &[]);
    let section = &report.sections[7];
    // The test step with none, bwrap and bwrap with a cgroup; the two costs.
    assert_eq!(section.rows.len(), 5, "{section:?}");
    for row in &section.rows[..3] {
        assert_eq!(row.samples.len(), Sizes::smoke().sandbox_jobs, "{row:?}");
        assert!(
            row.samples.iter().all(|v| *v > 0.0 && *v < 120_000.0),
            "test steps are positive: {row:?}"
        );
    }
    for row in &section.rows[3..] {
        assert_eq!(row.samples.len(), 1, "{row:?}");
        assert!(row.samples[0].is_finite(), "{row:?}");
    }
    assert!(section.rows[3].target.is_some());
    assert!(section.details.contains("--sandbox bwrap"));
    assert!(harness::analysis::render(&report).contains("The sandbox"));
}

#[test]
fn scenario_9_pipelines() {
    let mut report = smoke(9, &[9]);
    let section = report.section(9);
    assert!(
        section
            .rows
            .iter()
            .any(|row| row.metric.contains("chain") && row.target.is_some()),
        "the chain's gap, with its target: {section:?}"
    );
}

#[test]
fn scenario_10_test_splitting() {
    let mut report = smoke(10, &[10]);
    let section = report.section(10);
    assert_eq!(section.rows.len(), 4, "{section:?}");
    assert!(
        section.rows[1].target.is_some(),
        "the second run has the issue's target: {section:?}"
    );
    assert!(section.details.contains("| method | wall |"));
}

#[test]
fn scenario_11_a_store_of_many_jobs_on_both_backends() {
    let mut report = smoke(11, &[11]);
    let section = report.section(11);
    for backend in ["SQLite", "PostgreSQL"] {
        let rows: Vec<_> = section
            .rows
            .iter()
            .filter(|row| row.metric.contains(backend))
            .collect();
        assert_eq!(rows.len(), 12, "{backend}: {section:?}");
        assert!(rows.iter().all(|row| row.target.is_some()), "{rows:?}");
        assert!(
            rows.iter()
                .any(|row| row.metric.contains("commit page of a 64-job pipeline")),
            "issue 20's commit page: {rows:?}"
        );
    }
}

#[test]
fn scenario_12_recording_and_publishing_at_scale() {
    let mut report = smoke(12, &[12]);
    let section = report.section(12);
    assert_eq!(section.rows.len(), 3, "{section:?}");
    assert!(section.rows.iter().all(|row| row.target.is_some()));
}

#[test]
fn log_lines_statistics_and_dates_are_parsed() {
    use harness::logs::{parse_line, parse_timestamp};
    let line = parse_line(
        "2025-11-22T04:01:02.123456Z DEBUG warren_runner::workspace: checkout timings job=ab12 fetch_ms=3 checkout_ms=4 clean_ms=2",
    )
    .expect("line");
    assert_eq!(line.message, "checkout timings");
    assert_eq!(line.target, "warren_runner::workspace");
    assert_eq!(line.field("job"), Some("ab12"));
    assert_eq!(line.number("clean_ms"), Some(2.0));
    assert!((line.at_ms - 1_763_784_062_123.456).abs() < 0.01);
    let info = parse_line(
        "2025-11-22T04:01:02.000001Z  INFO warren_runner: job running job=x commit=abc branch=main",
    )
    .expect("line");
    assert!(info.is("job running", "x"));
    assert!(parse_line("warren: cannot start").is_none());
    assert_eq!(parse_timestamp("1970-01-01T00:00:01.5Z"), Some(1500.0));

    let s = harness::stats::summarize(&[5.0, 1.0, 3.0]).expect("summary");
    assert_eq!((s.n, s.median, s.p95, s.max), (3, 3.0, 5.0, 5.0));
    let many: Vec<f64> = (1..=100).map(f64::from).collect();
    let s = harness::stats::summarize(&many).expect("summary");
    assert_eq!((s.median, s.p95, s.max), (50.5, 95.0, 100.0));
    assert!(harness::stats::summarize(&[]).is_none());

    let now = harness::markdown::utc_now();
    assert!(now.ends_with(" UTC") && now.len() == 20, "{now}");
}
