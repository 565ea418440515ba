//! Scenario 9 (issue 16): pipelines. One deployment (a dispatcher and
//! runners with `--sandbox none` in a namespace of its own) and a small
//! repository named by its path, whose commits carry a `.warren.yml`:
//!
//! - **A chain**: ten jobs `s0` … `s9` running `true`, each needing the
//!   previous. Pipelines run one after the other (each commit's planning
//!   job published as the observer would, the next once the previous
//!   pipeline has ended), with one runner and then with two. The figure is
//!   the **gap** between a job's end and the next one's start: the next
//!   job's `started_at_ms` minus the previous job's `finished_at_ms`, both
//!   from `GET /api/commits/{sha}`, both stamped by a runner (the same
//!   machine's clock). The runners' and the dispatcher's log lines
//!   (microseconds) split each gap into the result's way to the store and
//!   the released job's way back.
//! - **A fan-out**: one job with a 64-combination matrix (8 × 8, `true`)
//!   over four runners: from the planning job's end to the last job's end,
//!   jobs per second, and how many jobs each runner ran.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::common::{git, wait_for, Repo};
use crate::harness::bus::Bus;
use crate::harness::fixture::{Setup, Warren};
use crate::harness::logs::{self, Line};
use crate::harness::report::{breakdown_table, Row, Target, Unit};
use crate::harness::repos::{add_commits, location, small_repo};
use crate::harness::stats::{median, summarize};
use crate::harness::{Report, Sizes};

/// Jobs in the chain.
const CHAIN: usize = 10;

/// The target of issue 16 for the gap between two jobs of a chain.
const GAP_TARGET_MS: f64 = 20.0;

fn chain_file() -> String {
    let mut file = String::from("# a chain: s0 → s1 → … → s9, each `true`\njobs:\n");
    for i in 0..CHAIN {
        file.push_str(&format!("  s{i}:\n    run: \"true\"\n"));
        if i > 0 {
            file.push_str(&format!("    needs: [s{}]\n", i - 1));
        }
    }
    file
}

fn matrix_file(side: usize) -> String {
    let values: Vec<String> = (1..=side).map(|v| v.to_string()).collect();
    let values = values.join(", ");
    format!(
        "# a fan-out: one job, a {side} × {side} matrix, each `true`\njobs:\n  m:\n    run: \"true\"\n    matrix:\n      a: [{values}]\n      b: [{values}]\n"
    )
}

/// One ended pipeline, as the API shows it.
struct Pipeline {
    commit: String,
    jobs: HashMap<String, Value>,
}

impl Pipeline {
    fn job(&self, name: &str) -> &Value {
        self.jobs
            .get(name)
            .unwrap_or_else(|| panic!("commit {}: no job {name}", self.commit))
    }

    fn ms(&self, name: &str, field: &str) -> f64 {
        self.job(name)[field]
            .as_f64()
            .unwrap_or_else(|| panic!("commit {}: {name} has no {field}", self.commit))
    }

    fn id(&self, name: &str) -> String {
        self.job(name)["id"].as_str().expect("id").to_string()
    }
}

/// Publishes `commit`'s planning job (the observer's job for it) and waits
/// until every job of its pipeline (`jobs`, the plan included) has an
/// outcome in the dispatcher's log; returns the pipeline from the API,
/// which must have passed.
fn run_pipeline(warren: &Warren, url: &str, commit: &str, jobs: usize) -> Pipeline {
    let log = warren.dispatcher_log();
    let before = logs::count(&log, "job finished");
    warren.bus.publish(&[Bus::job(url, commit)]);
    // Counting lines in the log costs the dispatcher nothing; the API is
    // asked once, at the end.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while logs::count(&log, "job finished") < before + jobs {
        assert!(
            std::time::Instant::now() < deadline,
            "commit {commit}: its {jobs} jobs did not all end within 120 s (logs in {})",
            warren.scratch.path().display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let api = warren.dispatcher.api();
    let view = wait_for(
        &format!("commit {commit}'s verdict"),
        Duration::from_secs(30),
        || {
            let view = api.get_json(&format!("/api/commits/{commit}")).ok()?;
            let status = view["status"].as_str()?;
            matches!(status, "passed" | "failed" | "error").then_some(view)
        },
    );
    assert_eq!(
        view["status"],
        "passed",
        "commit {commit}: {view:#} (logs in {})",
        warren.scratch.path().display()
    );
    let jobs_by_name: HashMap<String, Value> = view["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|job| (job["name"].as_str().expect("name").to_string(), job.clone()))
        .collect();
    assert_eq!(jobs_by_name.len(), jobs, "commit {commit}: {view:#}");
    Pipeline {
        commit: commit.to_string(),
        jobs: jobs_by_name,
    }
}

/// One gap of a chain, in milliseconds, and its parts.
#[derive(Debug, Clone, Copy)]
struct Gap {
    /// Next job's `started_at_ms` − previous job's `finished_at_ms`.
    total: f64,
    /// Previous job's end → the dispatcher logged its outcome recorded (the
    /// result published, routed, consumed, stored with the advance that
    /// released the next job into the outbox, the event announced).
    to_recorded: f64,
    /// Recorded → next job started (the outbox woken, the job looked up,
    /// published to its work queue and delivered to a runner, received).
    recorded_to_start: f64,
    /// Recorded → the outbox logged the next job published (its confirm
    /// received, the row marked sent): after the start when the runner
    /// was quicker than the confirm.
    recorded_to_published: f64,
    /// Previous job's end → its runner logged it finished (the result
    /// published and confirmed, the job acked).
    runner_done: f64,
    /// The runner's `publish_ms` and `ack_ms` of the previous job.
    publish: f64,
    ack: f64,
    /// Whether the next job ran on the previous job's runner.
    same_runner: bool,
}

fn find<'a>(lines: &'a [Line], message: &str, job: &str) -> Option<&'a Line> {
    lines.iter().find(|l| l.is(message, job))
}

fn gap_of(
    pipeline: &Pipeline,
    previous: &str,
    next: &str,
    dispatcher: &[Line],
    runners: &[Line],
) -> Gap {
    let finished = pipeline.ms(previous, "finished_at_ms");
    let started = pipeline.ms(next, "started_at_ms");
    let (previous_id, next_id) = (pipeline.id(previous), pipeline.id(next));
    let at = |lines: &[Line], message: &str, job: &str| {
        find(lines, message, job).map_or(f64::NAN, |l| l.at_ms)
    };
    let recorded = at(dispatcher, "job finished", &previous_id);
    let published = at(dispatcher, "published a released pipeline job", &next_id);
    let done = find(runners, "job finished", &previous_id);
    Gap {
        total: started - finished,
        to_recorded: recorded - finished,
        recorded_to_start: started - recorded,
        recorded_to_published: published - recorded,
        runner_done: done.map_or(f64::NAN, |l| l.at_ms - finished),
        publish: done
            .and_then(|l| l.number("publish_ms"))
            .unwrap_or(f64::NAN),
        ack: done.and_then(|l| l.number("ack_ms")).unwrap_or(f64::NAN),
        same_runner: pipeline.job(previous)["runner"] == pipeline.job(next)["runner"],
    }
}

/// What one runner count's chains measured.
struct Chains {
    runners: usize,
    gaps: Vec<Gap>,
    /// Planning job's end → `s0` started.
    plan_to_first: Vec<f64>,
    /// The planning job's `duration_ms` (checkout, `.warren.yml` read and
    /// validated).
    plan_duration: Vec<f64>,
    /// The jobs' own `duration_ms` (checkout and `true`).
    job_duration: Vec<f64>,
    /// Planning job started → `s9` ended.
    pipeline: Vec<f64>,
}

fn run_chains(warren: &Warren, url: &str, commits: &[String]) -> Chains {
    // The first commit warms up (the runners' clones, the connections).
    let _ = run_pipeline(warren, url, &commits[0], CHAIN + 1);
    let pipelines: Vec<Pipeline> = commits[1..]
        .iter()
        .map(|commit| run_pipeline(warren, url, commit, CHAIN + 1))
        .collect();
    let dispatcher = logs::read(&warren.dispatcher_log());
    let runners = warren.all_runner_lines();
    let mut chains = Chains {
        runners: warren.runners.len(),
        gaps: Vec::new(),
        plan_to_first: Vec::new(),
        plan_duration: Vec::new(),
        job_duration: Vec::new(),
        pipeline: Vec::new(),
    };
    for pipeline in &pipelines {
        for i in 1..CHAIN {
            chains.gaps.push(gap_of(
                pipeline,
                &format!("s{}", i - 1),
                &format!("s{i}"),
                &dispatcher,
                &runners,
            ));
        }
        chains
            .plan_to_first
            .push(pipeline.ms("s0", "started_at_ms") - pipeline.ms("plan", "finished_at_ms"));
        chains
            .plan_duration
            .push(pipeline.ms("plan", "duration_ms"));
        for i in 0..CHAIN {
            chains
                .job_duration
                .push(pipeline.ms(&format!("s{i}"), "duration_ms"));
        }
        chains.pipeline.push(
            pipeline.ms(&format!("s{}", CHAIN - 1), "finished_at_ms")
                - pipeline.ms("plan", "started_at_ms"),
        );
    }
    chains
}

/// One fan-out's figures.
struct FanOut {
    /// Plan's end → the last job's end (seconds).
    wall: f64,
    /// Plan's end → the first job's start (ms).
    to_first: f64,
    /// Plan's end → the last job's start (ms).
    to_last_start: f64,
    /// Plan's end → its outcome recorded (the 64 jobs released into the
    /// outbox), and → the last of them published and confirmed (ms).
    to_recorded: f64,
    to_all_published: f64,
    /// Jobs per runner, by runner.
    per_runner: Vec<(String, usize)>,
}

pub fn run(sizes: &Sizes, report: &mut Report) {
    let per_config = sizes.pipeline_chains.max(1);
    let side = sizes.pipeline_matrix_side.max(1);
    let matrix_jobs = side * side;
    let fanouts = sizes.pipeline_fanouts.max(1);
    let fanout_runners = sizes.pipeline_fanout_runners.max(1);
    report.detail(
        9,
        "Reproduce: `cargo bench --bench scenarios -- 9` runs this scenario alone (about 10 \
         seconds) and prints its rows, verdicts, analysis and this section.",
    );
    let mut runner_counts = sizes.pipeline_chain_runners.clone();
    runner_counts.sort_unstable();
    let mut warren = Warren::start(
        "bench-pipelines",
        Setup::new(runner_counts.first().copied().unwrap_or(1).max(1), "true")
            .runner_args(&["--sandbox", "none"]),
    );
    let repo: Repo = small_repo(&warren.scratch.join("repo"));
    let url = location(&repo.path);

    // The chain's commits: one with the file, then more on top of it (each
    // changes value.txt; the file stays). One warm-up per runner count.
    repo.write(".warren.yml", &chain_file());
    let first = repo.commit("a chain of ten jobs");
    let mut chain_commits = vec![first];
    chain_commits.extend(add_commits(
        &repo.path,
        runner_counts.len() * (per_config + 1) - 1,
        "chain",
    ));
    // The fan-out's: the matrix file, and more commits on top.
    let head = git(&repo.path, &["rev-parse", "HEAD"]);
    git(&repo.path, &["reset", "-q", "--hard", &head]);
    repo.write(".warren.yml", &matrix_file(side));
    let first = repo.commit("a fan-out");
    let mut fanout_commits = vec![first];
    fanout_commits.extend(add_commits(&repo.path, fanouts, "fan-out"));

    let mut all_chains: Vec<Chains> = Vec::new();
    for (index, &count) in runner_counts.iter().enumerate() {
        while warren.runners.len() < count {
            warren.add_runner();
        }
        warren.wait_for_runners(warren.runners.len());
        let commits = &chain_commits[index * (per_config + 1)..(index + 1) * (per_config + 1)];
        all_chains.push(run_chains(&warren, &url, commits));
    }

    // The fan-out, over `fanout_runners` runners; the first one warms up
    // the runners added for it.
    while warren.runners.len() < fanout_runners {
        warren.add_runner();
    }
    warren.wait_for_runners(warren.runners.len());
    let _ = run_pipeline(&warren, &url, &fanout_commits[0], matrix_jobs + 1);
    let mut outs: Vec<FanOut> = Vec::new();
    for commit in &fanout_commits[1..] {
        let pipeline = run_pipeline(&warren, &url, commit, matrix_jobs + 1);
        let planned = pipeline.ms("plan", "finished_at_ms");
        let jobs: Vec<&Value> = pipeline
            .jobs
            .iter()
            .filter(|(name, _)| name.as_str() != "plan")
            .map(|(_, job)| job)
            .collect();
        let field = |job: &Value, f: &str| job[f].as_f64().expect("timestamp");
        let last_end = jobs
            .iter()
            .map(|j| field(j, "finished_at_ms"))
            .fold(f64::MIN, f64::max);
        let first_start = jobs
            .iter()
            .map(|j| field(j, "started_at_ms"))
            .fold(f64::MAX, f64::min);
        let last_start = jobs
            .iter()
            .map(|j| field(j, "started_at_ms"))
            .fold(f64::MIN, f64::max);
        let mut per_runner: HashMap<String, usize> = HashMap::new();
        for job in &jobs {
            let runner = job["runner"].as_str().unwrap_or("?").to_string();
            *per_runner.entry(runner).or_default() += 1;
        }
        let mut per_runner: Vec<(String, usize)> = per_runner.into_iter().collect();
        per_runner.sort();
        let dispatcher = logs::read(&warren.dispatcher_log());
        let recorded =
            find(&dispatcher, "job finished", &pipeline.id("plan")).map_or(f64::NAN, |l| l.at_ms);
        let all_published = jobs
            .iter()
            .filter_map(|j| {
                let id = j["id"].as_str()?;
                find(&dispatcher, "published a released pipeline job", id).map(|l| l.at_ms)
            })
            .fold(f64::MIN, f64::max);
        outs.push(FanOut {
            wall: (last_end - planned) / 1000.0,
            to_first: first_start - planned,
            to_last_start: last_start - planned,
            to_recorded: recorded - planned,
            to_all_published: all_published - planned,
            per_runner,
        });
    }
    let load = crate::harness::system::load_average();
    drop(warren);

    // Rows.
    let column = |gaps: &[Gap], f: fn(&Gap) -> f64| -> Vec<f64> { gaps.iter().map(f).collect() };
    for chains in &all_chains {
        let runners = chains.runners;
        let plural = if runners == 1 { "" } else { "s" };
        let gaps = column(&chains.gaps, |g| g.total);
        report.fact(&format!("pipelines.gap.{runners}"), median(&gaps));
        report.fact(
            &format!("pipelines.gap.{runners}.to_recorded"),
            median(&column(&chains.gaps, |g| g.to_recorded)),
        );
        report.fact(
            &format!("pipelines.gap.{runners}.recorded_to_start"),
            median(&column(&chains.gaps, |g| g.recorded_to_start)),
        );
        report.fact(
            &format!("pipelines.gap.{runners}.recorded_to_published"),
            median(&column(&chains.gaps, |g| g.recorded_to_published)),
        );
        report.fact(
            &format!("pipelines.gap.{runners}.runner_done"),
            median(&column(&chains.gaps, |g| g.runner_done)),
        );
        report.fact(
            &format!("pipelines.gap.{runners}.publish"),
            median(&column(&chains.gaps, |g| g.publish)),
        );
        // The slowest gap, and how long its runner waited for the result's
        // confirm.
        if let Some(slowest) = chains
            .gaps
            .iter()
            .max_by(|a, b| a.total.total_cmp(&b.total))
        {
            report.fact(&format!("pipelines.gap.{runners}.max"), slowest.total);
            report.fact(
                &format!("pipelines.gap.{runners}.max_publish"),
                slowest.publish,
            );
        }
        report.fact(
            &format!("pipelines.whole.{runners}"),
            median(&chains.pipeline),
        );
        report.fact(
            &format!("pipelines.plan.{runners}"),
            median(&chains.plan_duration),
        );
        report.fact(
            &format!("pipelines.job.{runners}"),
            median(&chains.job_duration),
        );
        report.fact(
            &format!("pipelines.plan_to_first.{runners}"),
            median(&chains.plan_to_first),
        );
        report.add(
            9,
            Row::new(
                format!(
                    "chain of {CHAIN} jobs (`true`): previous job's end → next job's start, {runners} runner{plural}"
                ),
                Unit::Ms,
                gaps,
            )
            .target(Target::median_at_most(GAP_TARGET_MS, "≤ 20 ms median")),
        );
    }
    if let Some(chains) = all_chains.first() {
        report.add(
            9,
            Row::new(
                "planning job (checkout, `.warren.yml` read and validated): its `duration_ms`",
                Unit::Ms,
                chains.plan_duration.clone(),
            ),
        );
        report.add(
            9,
            Row::new(
                "planning job's end → first job's start (plan recorded, first job published)",
                Unit::Ms,
                chains.plan_to_first.clone(),
            ),
        );
    }
    let walls: Vec<f64> = outs.iter().map(|o| o.wall).collect();
    let rates: Vec<f64> = outs.iter().map(|o| matrix_jobs as f64 / o.wall).collect();
    report.fact("pipelines.fanout.wall", median(&walls));
    report.fact(
        "pipelines.fanout.published",
        median(&outs.iter().map(|o| o.to_all_published).collect::<Vec<_>>()),
    );
    report.fact(
        "pipelines.fanout.to_first",
        median(&outs.iter().map(|o| o.to_first).collect::<Vec<_>>()),
    );
    report.fact("pipelines.fanout.jobs", matrix_jobs as f64);
    report.fact("pipelines.fanout.runners", fanout_runners as f64);
    report.fact("pipelines.fanout.rate", median(&rates));
    report.add(
        9,
        Row::new(
            format!(
                "fan-out, a {matrix_jobs}-job matrix over {fanout_runners} runners: planning job's end → last job's end"
            ),
            Unit::Secs,
            walls.clone(),
        ),
    );
    report.add(
        9,
        Row::new(
            format!("fan-out, a {matrix_jobs}-job matrix over {fanout_runners} runners: jobs per second"),
            Unit::JobsPerSec,
            rates.clone(),
        ),
    );

    // Details.
    let mut text = format!(
        "One deployment (its own namespace: a dispatcher on SQLite and runners with `--sandbox \
         none`, as in the other throughput scenarios, and `RUST_LOG=warren_runner=debug`) on {}, \
         and a small repository named by its path (the runners' clones share its objects, so no \
         job fetches). Each pipeline is started as the observer starts one — its commit's job \
         published to the jobs exchange, the commit's **planning job** — and the next only once \
         every job of the previous has an outcome in the dispatcher's log (then `GET \
         /api/commits/{{sha}}` must say `passed`). A first pipeline for each set of runners \
         warms up (clones, connections) and is not counted.\n\n\
         **Chain.** `.warren.yml`: ten jobs `s0` … `s9`, each `run: \"true\"` and `needs` the \
         one before. {per_config} pipelines with {}, one after the other: {} gaps each. A \
         **gap** is the next job's `started_at_ms` minus the previous job's `finished_at_ms`, \
         both from `GET /api/commits/{{sha}}`, both stamped by a runner (whole milliseconds; \
         all processes on this machine, one clock): the previous job's result published, \
         consumed and stored by the dispatcher with the advance that releases the next job \
         into the outbox, the outbox woken by the event bus, the job published to the work \
         queue and delivered to a runner. The split below comes from the dispatcher's log \
         (`job finished`: the outcome stored, the advance done, the event announced; \
         `published a released pipeline job`: the confirm received and the row marked sent) \
         and the runner's (`job finished`: result confirmed and job acked, with its \
         `publish_ms` and `ack_ms`), whose timestamps have microseconds.\n\n",
        if crate::harness::bus::default_url() == crate::harness::bus::DEFAULT_URL {
            "this machine's RabbitMQ (127.0.0.1:5672)".to_string()
        } else {
            "the RabbitMQ of `WARREN_AMQP_URL`".to_string()
        },
        runner_counts
            .iter()
            .map(|r| format!("{r} runner{}", if *r == 1 { "" } else { "s" }))
            .collect::<Vec<_>>()
            .join(", then "),
        CHAIN - 1,
    );
    for chains in &all_chains {
        let g = &chains.gaps;
        let same = g.iter().filter(|g| g.same_runner).count();
        text.push_str(&format!(
            "**{} runner{}** ({} of {} next jobs ran on the previous job's runner):\n\n{}\n",
            chains.runners,
            if chains.runners == 1 { "" } else { "s" },
            same,
            g.len(),
            breakdown_table(
                Unit::Ms,
                &[
                    (
                        "**gap**: next `started_at_ms` − previous `finished_at_ms`",
                        column(g, |g| g.total),
                    ),
                    (
                        "of it: previous job's end → its outcome recorded (result published, consumed; store transaction with the advance)",
                        column(g, |g| g.to_recorded),
                    ),
                    (
                        "of it: outcome recorded → next job started (outbox woken, job read, published, delivered, received)",
                        column(g, |g| g.recorded_to_start),
                    ),
                    (
                        "beside it: outcome recorded → next job's publish confirmed and marked sent",
                        column(g, |g| g.recorded_to_published),
                    ),
                    (
                        "beside it: previous job's end → its runner done (result confirmed, job acked)",
                        column(g, |g| g.runner_done),
                    ),
                    (
                        "of that: the runner's `publish_ms` (result published, confirm awaited)",
                        column(g, |g| g.publish),
                    ),
                    (
                        "of that: the runner's `ack_ms`",
                        column(g, |g| g.ack),
                    ),
                    (
                        "planning job's end → `s0` started",
                        chains.plan_to_first.clone(),
                    ),
                    (
                        "planning job's `duration_ms` (checkout, `.warren.yml` read, matrices expanded, validated)",
                        chains.plan_duration.clone(),
                    ),
                    (
                        "each chain job's `duration_ms` (checkout and `true`)",
                        chains.job_duration.clone(),
                    ),
                    (
                        "whole pipeline: planning job's start → `s9`'s end",
                        chains.pipeline.clone(),
                    ),
                ],
            )
        ));
    }
    let shares: Vec<String> = outs
        .iter()
        .map(|o| {
            o.per_runner
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect();
    text.push_str(&format!(
        "**Fan-out.** `.warren.yml`: one job `m`, `run: \"true\"`, `matrix: {{a: [1 … {side}], \
         b: [1 … {side}]}}`: {matrix_jobs} jobs, all released by the plan at once (one \
         transaction, {matrix_jobs} outbox rows, published in a batch and their confirms \
         awaited together). {fanouts} pipeline(s) over {fanout_runners} runners (after one \
         warm-up), timed from the planning job's `finished_at_ms` to the last job's \
         `finished_at_ms`: {}; {} jobs/s. From the planning job's end: its outcome recorded \
         (the {matrix_jobs} jobs released) {}, the last of them published and confirmed by the \
         outbox {}, the first job started {}, the last job started {}. Jobs per runner (the planning job not counted): {}. Load \
         average at the end {load:.2}.\n",
        walls
            .iter()
            .map(|w| format!("{w:.2} s"))
            .collect::<Vec<_>>()
            .join(", "),
        rates
            .iter()
            .map(|r| format!("{r:.1}"))
            .collect::<Vec<_>>()
            .join(", "),
        outs.iter()
            .map(|o| format!("{:.1} ms", o.to_recorded))
            .collect::<Vec<_>>()
            .join(", "),
        outs.iter()
            .map(|o| format!("{:.1} ms", o.to_all_published))
            .collect::<Vec<_>>()
            .join(", "),
        outs.iter()
            .map(|o| format!("{:.0} ms", o.to_first))
            .collect::<Vec<_>>()
            .join(", "),
        outs.iter()
            .map(|o| format!("{:.0} ms", o.to_last_start))
            .collect::<Vec<_>>()
            .join(", "),
        shares.join("; "),
    ));
    if let Some(s) = summarize(&rates) {
        report.fact("pipelines.fanout.rate.min", s.min);
    }
    report.detail(9, &text);
}
