//! Scenario 3: throughput. 1,000 jobs (one per commit of a real
//! repository) published at once, `true` as the test, drained by 1, 2, 4
//! and 8 runners; then the same through the observer: 1,000 commits landing
//! in the watched repository at once. Resident memory and CPU of every
//! component are sampled during the drain (scenario 5 reports them).

use std::fmt::Write as _;
use std::time::Duration;

use crate::harness::bus::Bus;

use crate::harness::fixture::{Setup, Warren};
use crate::harness::logs;
use crate::harness::report::{Row, Target, Unit};
use crate::harness::repos::{add_commits, location, now_ms, small_repo};
use crate::harness::stats::{median, summarize};
use crate::harness::system::{
    listener_pid, machine_busy_percent, machine_cpu, CpuMark, RssSampler,
};
use crate::harness::{Report, Sizes};

/// What one drain measured.
struct Drain {
    runners: usize,
    jobs: usize,
    seconds: f64,
    publish_seconds: f64,
    cycle: Vec<f64>,
    cpu_dispatcher: f64,
    cpu_runners: f64,
    cpu_runner_children: f64,
    cpu_broker: f64,
    machine_busy: f64,
    rss_dispatcher: f64,
    rss_runner_max: f64,
    rss_observer: f64,
}

impl Drain {
    fn new(runners: usize, jobs: usize) -> Drain {
        Drain {
            runners,
            jobs,
            seconds: f64::NAN,
            publish_seconds: f64::NAN,
            cycle: Vec::new(),
            cpu_dispatcher: f64::NAN,
            cpu_runners: f64::NAN,
            cpu_runner_children: f64::NAN,
            cpu_broker: f64::NAN,
            machine_busy: f64::NAN,
            rss_dispatcher: f64::NAN,
            rss_runner_max: f64::NAN,
            rss_observer: f64::NAN,
        }
    }
}

/// CPU and memory bookkeeping around a drain.
struct Meter {
    dispatcher: Option<CpuMark>,
    runners: Vec<Option<CpuMark>>,
    broker: Option<CpuMark>,
    machine: (u64, u64),
    rss: RssSampler,
}

impl Meter {
    fn start(warren: &Warren) -> Meter {
        let (dispatcher, runners) = warren.pids();
        let observer = warren.observer.as_ref().map(|o| o.pid()).unwrap_or(0);
        let mut pids = vec![dispatcher, observer];
        pids.extend(&runners);
        Meter {
            dispatcher: CpuMark::new(dispatcher),
            runners: runners.iter().map(|p| CpuMark::new(*p)).collect(),
            broker: listener_pid(5672).and_then(CpuMark::new),
            machine: machine_cpu(),
            rss: RssSampler::start(pids, Duration::from_millis(200)),
        }
    }

    fn finish(self, drain: &mut Drain) {
        let own = |m: &Option<CpuMark>| {
            m.as_ref()
                .and_then(CpuMark::percent_since)
                .unwrap_or((f64::NAN, f64::NAN))
        };
        drain.cpu_dispatcher = own(&self.dispatcher).0;
        let runners: Vec<(f64, f64)> = self.runners.iter().map(own).collect();
        drain.cpu_runners = runners.iter().map(|r| r.0).sum();
        drain.cpu_runner_children = runners.iter().map(|r| r.1).sum();
        drain.cpu_broker = own(&self.broker).0;
        drain.machine_busy = machine_busy_percent(self.machine, machine_cpu());
        let peaks = self.rss.finish();
        drain.rss_dispatcher = peaks.first().copied().unwrap_or(f64::NAN);
        drain.rss_observer = peaks
            .get(1)
            .copied()
            .filter(|v| *v > 0.0)
            .unwrap_or(f64::NAN);
        drain.rss_runner_max = peaks.iter().skip(2).copied().fold(f64::NAN, f64::max);
    }
}

/// Per-runner gaps between consecutive "job finished" lines during the
/// drain: the time each job took a runner, back to back.
fn cycles(warren: &Warren, from_ms: f64) -> Vec<f64> {
    let mut gaps = Vec::new();
    for runner in &warren.runners {
        let finished: Vec<f64> = logs::read(&runner.log)
            .into_iter()
            .filter(|l| l.message == "job finished" && l.at_ms >= from_ms)
            .map(|l| l.at_ms)
            .collect();
        gaps.extend(finished.windows(2).map(|w| w[1] - w[0]));
    }
    gaps
}

/// The dispatcher's store for a drain: its SQLite default, or a database
/// of the test PostgreSQL server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreKind {
    Sqlite,
    Postgres,
}

fn drain_with_runners(
    runners: usize,
    store: StoreKind,
    repo_location: &str,
    warmups: &[String],
    commits: &[String],
) -> Drain {
    // Dropped after the deployment (declared first).
    let database = (store == StoreKind::Postgres).then(|| crate::common::PgDatabase::new("bench"));
    let mut setup = Setup::new(runners, "true");
    if let Some(database) = &database {
        setup = setup.dispatcher_args(&["--store", &database.url]);
    }
    let warren = Warren::start("bench-throughput", setup);
    // Warm-up: one job per runner, so each makes its clone first (with
    // prefetch 1, idle consumers get one each).
    let warm: Vec<_> = warmups[..runners]
        .iter()
        .map(|c| Bus::job(repo_location, c))
        .collect();
    warren.bus.publish(&warm);
    let warm_ids: Vec<String> = warm.iter().map(|j| j.id.to_string()).collect();
    warren.wait_recorded(&warm_ids, Duration::from_secs(120));

    let jobs: Vec<_> = commits.iter().map(|c| Bus::job(repo_location, c)).collect();
    let ids: Vec<String> = jobs.iter().map(|j| j.id.to_string()).collect();
    let meter = Meter::start(&warren);
    let started_ms = now_ms();
    let publish_seconds = warren.bus.publish(&jobs).as_secs_f64();
    let recorded = warren.wait_recorded(&ids, Duration::from_secs(600));
    let mut drain = Drain::new(runners, jobs.len());
    drain.publish_seconds = publish_seconds;
    drain.cycle = cycles(&warren, started_ms);
    meter.finish(&mut drain);
    let last = recorded.values().copied().fold(f64::NAN, f64::max);
    drain.seconds = (last - started_ms) / 1000.0;
    drain
}

fn drain_through_observer(jobs: usize, runners: usize) -> Drain {
    let mut warren = Warren::start("bench-burst", Setup::new(runners, "true"));
    let repo = small_repo(&warren.scratch.join("burst-repo"));
    let repo_location = location(&repo.path);
    warren.start_observer(&repo_location, "1");
    let head = crate::common::git(&repo.path, &["rev-parse", "HEAD"]);
    warren.wait_recorded(
        &[Bus::job_id(&repo_location, &head)],
        Duration::from_secs(60),
    );
    let meter = Meter::start(&warren);
    let started_ms = now_ms();
    let commits = add_commits(&repo.path, jobs, "burst");
    let ids: Vec<String> = commits
        .iter()
        .map(|c| Bus::job_id(&repo_location, c))
        .collect();
    let recorded = warren.wait_recorded(&ids, Duration::from_secs(600));
    let queued: Vec<f64> = warren
        .observer
        .as_ref()
        .map(|o| logs::read(&o.log))
        .unwrap_or_default()
        .into_iter()
        .filter(|l| l.message == "job queued" && l.at_ms >= started_ms)
        .map(|l| l.at_ms)
        .collect();
    let mut drain = Drain::new(runners, jobs);
    drain.publish_seconds = (queued.iter().copied().fold(f64::NAN, f64::max) - started_ms) / 1000.0;
    drain.cycle = cycles(&warren, started_ms);
    meter.finish(&mut drain);
    let last = recorded.values().copied().fold(f64::NAN, f64::max);
    drain.seconds = (last - started_ms) / 1000.0;
    drain
}

pub fn run(sizes: &Sizes, report: &mut Report) {
    let scratch = crate::common::Scratch::new();
    let repo = small_repo(&scratch.join("repo"));
    let repo_location = location(&repo.path);
    let max_runners = sizes.throughput_runners.iter().copied().max().unwrap_or(1);
    let warmups = add_commits(&repo.path, max_runners, "warmup");
    let commits = add_commits(&repo.path, sizes.throughput_jobs, "throughput");

    // Repeats interleaved (1, 2, 4, 8, 1, 2, …) so that the machine's
    // other load spreads over all runner counts.
    let mut drains = Vec::new();
    for _ in 0..sizes.throughput_repeats {
        for &runners in &sizes.throughput_runners {
            drains.push(drain_with_runners(
                runners,
                StoreKind::Sqlite,
                &repo_location,
                &warmups,
                &commits,
            ));
        }
    }
    // The same drain with the dispatcher on PostgreSQL (4 runners).
    let on_postgres: Vec<Drain> = (0..sizes.throughput_repeats)
        .map(|_| {
            drain_with_runners(
                4.min(max_runners),
                StoreKind::Postgres,
                &repo_location,
                &warmups,
                &commits,
            )
        })
        .collect();
    let burst = sizes
        .observer_burst
        .map(|(jobs, runners)| drain_through_observer(jobs, runners));

    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let jobs = sizes.throughput_jobs;
    for &runners in &sizes.throughput_runners {
        let runs: Vec<&Drain> = drains.iter().filter(|d| d.runners == runners).collect();
        let four = runners == 4;
        report.fact(
            &format!("throughput.rate.{runners}"),
            median(
                &runs
                    .iter()
                    .map(|d| d.jobs as f64 / d.seconds)
                    .collect::<Vec<_>>(),
            ),
        );
        report.add(
            3,
            Row::new(
                format!(
                    "throughput, {jobs} jobs published at once, {runners} runner{}",
                    plural(runners)
                ),
                Unit::JobsPerSec,
                runs.iter().map(|d| d.jobs as f64 / d.seconds).collect(),
            )
            .target(if four {
                Target::at_least(
                    300.0,
                    "≥ 300 jobs/s with 4 runners (issue 19; issue 7: ≥ 50)",
                )
            } else {
                None
            }),
        );
        report.add(
            3,
            Row::new(
                format!(
                    "time to drain {jobs} jobs, {runners} runner{}",
                    plural(runners)
                ),
                Unit::Secs,
                runs.iter().map(|d| d.seconds).collect(),
            )
            .target(if four && jobs >= 1000 {
                Target::max_at_most(30.0, "≤ 30 s for 1,000 jobs")
            } else {
                None
            }),
        );
    }
    report.add(
        3,
        Row::new(
            format!(
                "throughput, {} jobs published at once, {} runners, dispatcher on PostgreSQL",
                sizes.throughput_jobs,
                4.min(max_runners)
            ),
            Unit::JobsPerSec,
            on_postgres
                .iter()
                .map(|d| d.jobs as f64 / d.seconds)
                .collect(),
        ),
    );
    if let Some(burst) = &burst {
        report.add(
            3,
            Row::new(
                format!(
                    "{} commits at once via the observer → all recorded, {} runners",
                    burst.jobs, burst.runners
                ),
                Unit::Secs,
                vec![burst.seconds],
            ),
        );
        report.add(
            3,
            Row::new(
                format!(
                    "observer: {} commits published (confirmed, state saved)",
                    burst.jobs
                ),
                Unit::Secs,
                vec![burst.publish_seconds],
            ),
        );
        report.fact(
            "throughput.observer_publish_per_s",
            burst.jobs as f64 / burst.publish_seconds,
        );
    }

    // Memory during the drains (scenario 5), and the CPU cost per job for
    // the analysis, from the 4-runner runs (or the most runners measured).
    let reference = if sizes.throughput_runners.contains(&4) {
        4
    } else {
        max_runners
    };
    let runs: Vec<&Drain> = drains.iter().filter(|d| d.runners == reference).collect();
    let per_job = |f: fn(&Drain) -> f64| -> f64 {
        median(
            &runs
                .iter()
                .map(|d| f(d) / 100.0 * d.seconds * 1000.0 / d.jobs as f64)
                .collect::<Vec<_>>(),
        )
    };
    report.fact(
        "throughput.cpu_ms_per_job.runner",
        per_job(|d| d.cpu_runners),
    );
    report.fact(
        "throughput.cpu_ms_per_job.git_and_test",
        per_job(|d| d.cpu_runner_children),
    );
    report.fact(
        "throughput.cpu_ms_per_job.dispatcher",
        per_job(|d| d.cpu_dispatcher),
    );
    report.fact(
        "throughput.cpu_ms_per_job.rabbitmq",
        per_job(|d| d.cpu_broker),
    );
    report.fact(
        "throughput.cpu_ms_per_job.total",
        per_job(|d| d.cpu_runners + d.cpu_runner_children + d.cpu_dispatcher + d.cpu_broker),
    );
    report.fact(
        "throughput.machine_busy",
        median(&runs.iter().map(|d| d.machine_busy).collect::<Vec<_>>()),
    );
    report.fact("throughput.reference_runners", reference as f64);
    report.fact("throughput.max_runners", max_runners as f64);
    report.add(
        5,
        Row::new(
            format!("dispatcher RSS peak, draining {jobs} jobs, {reference} runners"),
            Unit::MiB,
            runs.iter().map(|d| d.rss_dispatcher).collect(),
        ),
    );
    report.add(
        5,
        Row::new(
            format!("runner RSS peak (largest), draining {jobs} jobs, {reference} runners"),
            Unit::MiB,
            runs.iter().map(|d| d.rss_runner_max).collect(),
        ),
    );
    if let Some(burst) = &burst {
        report.add(
            5,
            Row::new(
                format!("observer RSS peak, publishing {} commits", burst.jobs),
                Unit::MiB,
                vec![burst.rss_observer],
            ),
        );
    }

    let mut table = String::from(
        "| runners | jobs | drain | jobs/s | publish all | cycle/job median (p95) | CPU dispatcher | CPU runners (+ git, sh) | CPU RabbitMQ | machine busy | RSS dispatcher | RSS runner |\n\
         |--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for drain in drains.iter().chain(&burst) {
        let cycle = summarize(&drain.cycle);
        let _ = writeln!(
            table,
            "| {}{} | {} | {:.2} s | {:.1} | {:.2} s | {} | {:.0} % | {:.0} % (+{:.0} %) | {:.0} % | {:.0} % | {:.1} MiB | {:.1} MiB |",
            drain.runners,
            if drain.rss_observer.is_finite() { " (observer)" } else { "" },
            drain.jobs,
            drain.seconds,
            drain.jobs as f64 / drain.seconds,
            drain.publish_seconds,
            cycle
                .map(|c| format!("{:.1} ms ({:.1} ms)", c.median, c.p95))
                .unwrap_or_else(|| "–".into()),
            drain.cpu_dispatcher,
            drain.cpu_runners,
            drain.cpu_runner_children,
            drain.cpu_broker,
            drain.machine_busy,
            drain.rss_dispatcher,
            drain.rss_runner_max,
        );
    }
    report.detail(
        3,
        &format!(
            "Jobs for distinct commits of a small repository, published by the harness \
             through Warren's `broker` crate (persistent, confirmed, 64 in flight) after every \
             runner made its clone with one warm-up job; the drain runs from the first publish \
             to the last outcome recorded by the dispatcher. The observer row instead adds the \
             commits to the watched repository in one `git fast-import` and times from there. \
             CPU is in % of one core over the drain (the machine has {} cores: 100 % × cores is \
             everything); \"cycle\" is the gap between a runner's consecutive acks.\n\n{table}",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        ),
    );
}
