//! Scenario 10 (issue 18): test splitting. A generated suite of skewed
//! tests (a few long, many short; each test id carries its duration, which
//! the suite's script sleeps) run four ways on one deployment of four
//! runners (`--sandbox none`), each from a commit of its own:
//!
//! - **split, first run**: `split:` with no past timings (every test
//!   estimated alike);
//! - **split, second run**: the same suite, cut by the first run's timings;
//! - **static round-robin**: four jobs, test `i` in job `i mod 4`, what a
//!   split made before the run does;
//! - **one runner**: one job running every test.
//!
//! Each is timed from its first job's start to its last job's end (the
//! planning job left out; the split's listing counted), from the jobs'
//! `started_at_ms`/`finished_at_ms` in `GET /api/commits/{sha}`; and set
//! against the ideal, the tests' sum ÷ 4.

use std::time::Duration;

use serde_json::Value;

use crate::common::{wait_for, Repo};
use crate::harness::bus::Bus;
use crate::harness::fixture::{Setup, Warren};
use crate::harness::report::{Row, Target, Unit};
use crate::harness::repos::{location, small_repo};
use crate::harness::{Report, Sizes};

const RUNNERS: usize = 4;

/// The suite: `count` tests, each id ending in its duration in seconds
/// (`t007_1.500`). One in 40 takes 100 × `scale` ms, two in 40 take 25 ×
/// `scale`, the rest 0.67 to 2.15 × `scale` (sum ≈ 1,000 × `scale` ms for
/// 200 tests).
fn suite(count: usize, scale_ms: f64) -> Vec<(String, f64)> {
    (0..count)
        .map(|i| {
            let units = match i % 40 {
                0 => 100.0,
                1 | 2 => 25.0,
                _ => (40 + (i * 37) % 90) as f64 / 60.0,
            };
            let seconds = units * scale_ms / 1000.0;
            (format!("t{i:03}_{seconds:.3}"), seconds)
        })
        .collect()
}

const SCRIPT: &str = "#!/bin/sh\n# Each test sleeps the seconds its id ends with.\nfor t in \"$@\"; do sleep \"${t##*_}\"; done\n";

/// Publishes `commit`'s planning job and returns its pipeline once every
/// job has ended; it must have passed.
fn run_commit(warren: &Warren, url: &str, commit: &str, within: Duration) -> Vec<Value> {
    warren.bus.publish(&[Bus::job(url, commit)]);
    let api = warren.dispatcher.api();
    let view = wait_for(&format!("commit {commit}'s verdict"), within, || {
        let view = api.get_json(&format!("/api/commits/{commit}")).ok()?;
        let status = view["status"].as_str()?;
        matches!(status, "passed" | "failed" | "error").then_some(view)
    });
    assert_eq!(
        view["status"],
        "passed",
        "commit {commit}: {view:#} (logs in {})",
        warren.scratch.path().display()
    );
    view["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter(|job| job["name"] != "plan")
        .cloned()
        .collect()
}

/// First start to last end of `jobs` that ran, in seconds (a gate never
/// starts).
fn wall(jobs: &[Value]) -> f64 {
    let starts = jobs.iter().filter_map(|j| j["started_at_ms"].as_f64());
    let ends = jobs.iter().filter_map(|j| j["finished_at_ms"].as_f64());
    let first = starts.fold(f64::MAX, f64::min);
    let last = ends.fold(f64::MIN, f64::max);
    (last - first) / 1000.0
}

fn batches(jobs: &[Value]) -> usize {
    jobs.iter()
        .filter(|j| {
            j["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("test [") && !n.contains("list"))
        })
        .count()
}

pub fn run(sizes: &Sizes, report: &mut Report) {
    let (count, scale_ms) = sizes.split_suite;
    report.detail(
        10,
        "Reproduce: `cargo bench --bench scenarios -- 10` runs this scenario alone (about \
         three minutes) and prints its rows, verdicts and this section.",
    );
    let mut warren = Warren::start(
        "bench-splitting",
        Setup::new(RUNNERS, "true").runner_args(&["--sandbox", "none"]),
    );
    let repo: Repo = small_repo(&warren.scratch.join("repo"));
    let url = location(&repo.path);
    let tests = suite(count, scale_ms);
    let sum: f64 = tests.iter().map(|(_, s)| s).sum();
    let ideal = sum / RUNNERS as f64;
    let within = Duration::from_secs_f64(sum * 2.0 + 120.0);
    let ids: Vec<&str> = tests.iter().map(|(id, _)| id.as_str()).collect();
    repo.write("run-tests.sh", SCRIPT);
    repo.write("tests.txt", &format!("{}\n", ids.join("\n")));
    let split_file = "jobs:\n  test:\n    split:\n      list: cat tests.txt\n      run: sh ./run-tests.sh {tests}\n";

    // Split, twice: without timings, then with the first run's.
    repo.write(".warren.yml", split_file);
    let first = repo.commit("split, first run");
    let first_run = run_commit(&warren, &url, &first, within);
    repo.write("value.txt", "again\n");
    let second = repo.commit("split, second run");
    let second_run = run_commit(&warren, &url, &second, within);

    // Static round-robin into four jobs.
    let mut file = String::from("jobs:\n");
    for shard in 0..RUNNERS {
        let mine: Vec<&str> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| i % RUNNERS == shard)
            .map(|(_, id)| *id)
            .collect();
        file.push_str(&format!(
            "  shard{shard}:\n    run: sh ./run-tests.sh {}\n",
            mine.join(" ")
        ));
    }
    repo.write(".warren.yml", &file);
    let shards = repo.commit("static round-robin");
    let static_run = run_commit(&warren, &url, &shards, within);

    // One runner: one job with every test.
    repo.write(
        ".warren.yml",
        "jobs:\n  all:\n    run: sh ./run-tests.sh $(cat tests.txt)\n",
    );
    let all = repo.commit("one runner");
    let one_run = run_commit(&warren, &url, &all, within);
    let load = crate::harness::system::load_average();
    warren.runners.clear();

    let target = ideal * 1.1 + 0.5;
    let runs = [
        ("split, first run (no timings)", &first_run, None),
        (
            "split, second run (cut by the first run's timings)",
            &second_run,
            Target::max_at_most(target, &format!("≤ 1.1 × sum/4 + 0.5 s = {target:.1} s")),
        ),
        ("static round-robin into 4 jobs", &static_run, None),
        ("one runner", &one_run, None),
    ];
    let mut lines = Vec::new();
    for (name, jobs, goal) in runs {
        let seconds = wall(jobs);
        report.add(
            10,
            Row::new(
                format!("{count} skewed tests (sum {sum:.1} s), {RUNNERS} runners: {name}"),
                Unit::Secs,
                vec![seconds],
            )
            .target(goal),
        );
        lines.push(format!(
            "| {name} | {seconds:.1} s | {:+.0} % | {} |",
            (seconds / ideal - 1.0) * 100.0,
            if name.starts_with("split") {
                batches(jobs).to_string()
            } else {
                "—".into()
            }
        ));
        report.fact(
            &format!("split.{}", name.split(',').next().unwrap_or(name)),
            seconds,
        );
    }
    report.detail(
        10,
        &format!(
            "The suite: {count} tests whose ids end with their duration (the script sleeps \
             it): one in 40 takes {:.1} s, two in 40 {:.2} s, the rest {:.2} to {:.2} s; \
             {sum:.1} s in all, so the ideal on {RUNNERS} runners is sum ÷ 4 = {ideal:.1} s. \
             Each run is its own commit on one deployment of {RUNNERS} runners \
             (`--sandbox none`), timed from its first job's start to its last job's end \
             (the split's listing included, the planning job not). Load average at the \
             end {load:.2}.\n\n\
             | method | wall | from sum ÷ 4 | batches |\n|---|--:|--:|--:|\n{}\n",
            100.0 * scale_ms / 1000.0,
            25.0 * scale_ms / 1000.0,
            40.0 / 60.0 * scale_ms / 1000.0,
            129.0 / 60.0 * scale_ms / 1000.0,
            lines.join("\n")
        ),
    );
}
