//! Scenario 12: recording and publishing at scale (issue 19) — how many
//! results one dispatcher records per second from a full results queue,
//! and how many commits per second the observer publishes when a branch
//! moves by thousands at once.

use std::time::{Duration, Instant};

use model::{JobResult, Outcome, RunnerId, RunnerInfo, SCHEMA_VERSION};

use crate::common::{wait_for, Dispatcher, Namespace, PgDatabase, Scratch};
use crate::harness::bus::{default_url, Bus};
use crate::harness::fixture::{Setup, Warren};
use crate::harness::generate::StoreAt;
use crate::harness::logs;
use crate::harness::report::{Row, Target, Unit};
use crate::harness::repos::{add_commits, location, now_ms, small_repo};
use crate::harness::{Report, Sizes};

const SCENARIO: u8 = 12;

pub fn run(sizes: &Sizes, report: &mut Report) {
    for backend in ["SQLite", "PostgreSQL"] {
        record_results(backend, sizes.prefilled_results, report);
    }
    publish_commits(sizes.branch_moves_by, report);
}

/// A runner's result for `job`: passed, with a line of output.
fn result_of(job: model::Job, runner: &RunnerInfo, at_ms: u64) -> JobResult {
    JobResult {
        v: SCHEMA_VERSION,
        job,
        outcome: Outcome::Passed,
        exit_code: Some(0),
        started_at_ms: at_ms,
        finished_at_ms: at_ms + 5,
        duration_ms: 5,
        output: "ok\n".into(),
        truncated: false,
        runner: runner.clone(),
        reason: None,
        plan: None,
        tests: None,
    }
}

/// One counter of `/metrics`, by its whole name and labels.
fn metric(dispatcher: &Dispatcher, series: &str) -> Option<f64> {
    let text = dispatcher.api().get_text("/metrics").ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// `count` jobs recorded as queued, then their results waiting in the
/// dispatcher's results queue while it is stopped; timed from its start
/// to the last result recorded.
fn record_results(backend: &str, count_of: usize, report: &mut Report) {
    let ns = Namespace::new("bench-results");
    let scratch = Scratch::new();
    let database = (backend == "PostgreSQL").then(|| PgDatabase::new("bench_results"));
    let mut args: Vec<&str> = Vec::new();
    if let Some(db) = &database {
        args.extend(["--store", db.url.as_str()]);
    }
    let sqlite = scratch.join("dispatcher-data").join("warren.db");
    let store = match &database {
        Some(db) => StoreAt::Postgres(db),
        None => StoreAt::Sqlite(&sqlite),
    };
    let mut dispatcher = Dispatcher::start(&ns, &scratch, &args);
    let bus = Bus::open(&ns.name, &default_url());
    let jobs: Vec<model::Job> = (0..count_of)
        .map(|i| Bus::job("/srv/git/bench-results", &format!("{:040x}", i + 1)))
        .collect();
    bus.publish(&jobs);
    wait_for(
        &format!("{count_of} jobs recorded as queued"),
        Duration::from_secs(600),
        || (store.count("SELECT count(*) FROM jobs") == count_of as i64).then_some(()),
    );
    dispatcher.proc.signal(libc::SIGTERM);
    dispatcher.proc.wait_exit(Duration::from_secs(30));

    let runner = RunnerInfo {
        id: RunnerId::parse("bench-runner").expect("runner id"),
        host: "bench".into(),
        connection: "bench".into(),
        sandbox: Default::default(),
        queues: Vec::new(),
    };
    let at = now_ms() as u64;
    let results: Vec<JobResult> = jobs
        .into_iter()
        .map(|job| result_of(job, &runner, at))
        .collect();
    bus.publish_results(&results);
    let queue = bus.names().dispatcher_results_queue();
    wait_for("the results queue filled", Duration::from_secs(60), || {
        (bus.queue_stats(&queue).0 as usize >= count_of).then_some(())
    });

    let clock = Instant::now();
    let dispatcher = Dispatcher::start(&ns, &scratch, &args);
    let series = "warren_jobs_finished_total{status=\"passed\"}";
    wait_for(
        &format!("{count_of} results recorded"),
        Duration::from_secs(600),
        || {
            let done = metric(&dispatcher, series)?;
            (done >= count_of as f64).then_some(())
        },
    );
    let seconds = clock.elapsed().as_secs_f64();
    let passed = store.count("SELECT count(*) FROM jobs WHERE status = 'passed'");
    let duplicates = store.count("SELECT COALESCE(SUM(duplicates), 0) FROM jobs");
    assert_eq!(passed, count_of as i64, "every result recorded once");
    assert_eq!(duplicates, 0, "no result recorded twice");
    assert_eq!(
        metric(&dispatcher, series),
        Some(count_of as f64),
        "each outcome counted once"
    );
    report.fact(
        &format!("scale.results.{}", backend.to_lowercase()),
        count_of as f64 / seconds,
    );
    report.add(
        SCENARIO,
        Row::new(
            format!(
                "results recorded per second, {count_of} waiting in the results queue, {backend}"
            ),
            Unit::JobsPerSec,
            vec![count_of as f64 / seconds],
        )
        .target(Target::at_least(2000.0, "≥ 2,000/s")),
    );
    report.detail(
        SCENARIO,
        &format!(
            "**Results, {backend}.** {count_of} jobs recorded as queued, the dispatcher stopped, \
             their results (`passed`, 3 bytes of output) published to the results exchange as \
             runners do; then the dispatcher started and timed from its start to the last \
             outcome counted on `/metrics` ({seconds:.1} s). Afterwards the store holds each \
             job once, `passed`, with no duplicate recorded.\n"
        ),
    );
}

/// A branch moving by `commits` at once: the observer (every 0.2 s)
/// publishes a job for each, confirmed, and saves its state.
fn publish_commits(commits: usize, report: &mut Report) {
    let mut warren = Warren::start("bench-branch-move", Setup::new(0, "true"));
    let repo = small_repo(&warren.scratch.join("moving-repo"));
    let repo_location = location(&repo.path);
    warren.start_observer(&repo_location, "0.2");
    let observer_log = warren
        .observer
        .as_ref()
        .map(|o| o.log.clone())
        .expect("the observer runs");
    let published = |at_least: usize| {
        wait_for(
            &format!("{at_least} jobs published by the observer"),
            Duration::from_secs(600),
            || (logs::count(&observer_log, "job queued") >= at_least).then_some(()),
        )
    };
    // The head first: from then on the observer only sees new commits.
    published(1);
    let added = add_commits(&repo.path, commits, "move");
    let in_repository_ms = now_ms();
    published(1 + commits);
    let wanted: std::collections::HashSet<String> = added
        .iter()
        .map(|c| Bus::job_id(&repo_location, c))
        .collect();
    let lines: Vec<_> = logs::read(&observer_log)
        .into_iter()
        .filter(|l| l.message == "job queued" && l.at_ms >= in_repository_ms)
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l.field("job").is_some_and(|job| wanted.contains(job))),
        "the observer published only the new commits"
    );
    let queued: Vec<f64> = lines.iter().map(|l| l.at_ms).collect();
    assert_eq!(queued.len(), commits, "one confirmed job per commit");
    let first = queued.iter().copied().fold(f64::NAN, f64::min);
    let last = queued.iter().copied().fold(f64::NAN, f64::max);
    let seconds = (last - in_repository_ms) / 1000.0;
    report.fact("scale.observer_per_s", commits as f64 / seconds);
    report.add(
        SCENARIO,
        Row::new(
            format!(
                "observer: a branch moves by {commits} commits, every one published (confirmed)"
            ),
            Unit::JobsPerSec,
            vec![commits as f64 / seconds],
        )
        .target(Target::at_least(1000.0, "≥ 1,000 commits/s")),
    );
    report.detail(
        SCENARIO,
        &format!(
            "**Observer.** {commits} commits added to the watched branch in one `git \
             fast-import`; from then to the observer's last `job queued` (logged once the \
             broker confirmed the job): {seconds:.2} s, of which {:.2} s before the first \
             (the poll interval, 0.2 s, and listing the new commits).\n",
            (first - in_repository_ms) / 1000.0
        ),
    );
}
