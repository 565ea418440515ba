//! Scenario 2: the time a runner spends per job outside the test itself,
//! with `true` as the test on a small repository, broken down from the
//! runner's own timing lines:
//!
//! - announce: `started` event published and confirmed (job received →
//!   "job running" logged),
//! - fetch (when the commit is new: the first checkout, which fails, and
//!   `git fetch`), checkout and clean (skipped when the last job left the
//!   tree as its checkout made it),
//! - process: `warren supervise` → `bwrap` → `sh -c true` spawned, waited
//!   for and its output drained (without `bwrap` on a `--sandbox none`
//!   runner),
//! - result publish with confirm, and ack,
//! - other: the rest (reading `.warren-test`, building the result, logging).
//!
//! "Total" runs from the job's receipt (`started_at_ms`) to the ack.

use std::time::Duration;

use crate::harness::bus::Bus;
use crate::harness::fixture::{Setup, Warren};
use crate::harness::logs::Line;
use crate::harness::report::{breakdown_table, Row, Target, Unit};
use crate::harness::repos::{add_commits, commit_now, location, small_repo};
use crate::harness::stats::median;
use crate::harness::{Report, Sizes};

/// Reads one part of a job's time.
type Part = fn(&Parts) -> f64;

/// One job's parts, in milliseconds.
#[derive(Debug, Clone, Default)]
struct Parts {
    announce: f64,
    fetch: f64,
    checkout: f64,
    clean: f64,
    process: f64,
    publish: f64,
    ack: f64,
    total: f64,
    finished_at: f64,
}

impl Parts {
    fn other(&self) -> f64 {
        self.total
            - (self.announce
                + self.fetch
                + self.checkout
                + self.clean
                + self.process
                + self.publish
                + self.ack)
    }
}

fn parts_of(id: &str, lines: &[Line], started_at_ms: f64) -> Option<Parts> {
    let find = |message: &str| lines.iter().find(|l| l.is(message, id));
    let running = find("job running")?;
    let checkout = find("checkout timings")?;
    let test = find("test timings")?;
    let finished = find("job finished")?;
    Some(Parts {
        announce: running.at_ms - started_at_ms,
        fetch: checkout.number("fetch_ms")?,
        checkout: checkout.number("checkout_ms")?,
        clean: checkout.number("clean_ms")?,
        process: test.number("test_ms")?,
        publish: finished.number("publish_ms")?,
        ack: finished.number("ack_ms")?,
        total: finished.at_ms - started_at_ms,
        finished_at: finished.at_ms,
    })
}

/// The parts of each list of jobs, from the runners' log lines and the
/// API's `started_at_ms`, both read once; a job missing from either is left
/// out.
fn parts_in<const N: usize>(warren: &Warren, lists: [&[String]; N]) -> [Vec<Parts>; N] {
    let lines = warren.all_runner_lines();
    let api = warren.api_jobs();
    lists.map(|ids| {
        ids.iter()
            .filter_map(|id| {
                let started = api.get(id.as_str())?["started_at_ms"].as_f64()?;
                parts_of(id, &lines, started)
            })
            .collect()
    })
}

/// Jobs run back to back, in the order they ended: all but the first (the
/// one that fetched every commit), that first one, and the cycle from each
/// job's ack to the next one's (the next delivery included: prefetch is 1).
fn back_to_back(mut jobs: Vec<Parts>) -> (Vec<Parts>, Option<Parts>, Vec<f64>) {
    jobs.sort_by(|a, b| a.finished_at.total_cmp(&b.finished_at));
    let cycle = jobs
        .windows(2)
        .map(|w| w[1].finished_at - w[0].finished_at)
        .collect();
    let first = (!jobs.is_empty()).then(|| jobs.remove(0));
    (jobs, first, cycle)
}

fn table(parts: &[Parts]) -> String {
    let column = |f: fn(&Parts) -> f64| parts.iter().map(f).collect::<Vec<f64>>();
    breakdown_table(
        Unit::Ms,
        &[
            (
                "announce (`started` event, confirmed)",
                column(|p| p.announce),
            ),
            (
                "fetch (a first checkout that fails, then `git fetch`; new commits only)",
                column(|p| p.fetch),
            ),
            (
                "checkout (`git checkout --force --detach`)",
                column(|p| p.checkout),
            ),
            (
                "clean (`git clean -ffdxq`, when the tree changed)",
                column(|p| p.clean),
            ),
            (
                "test process (`warren supervise` → sandbox → `sh -c true`, waited, drained)",
                column(|p| p.process),
            ),
            ("result publish with confirm", column(|p| p.publish)),
            ("ack", column(|p| p.ack)),
            ("other", column(Parts::other)),
            ("**total: job received → acked**", column(|p| p.total)),
        ],
    )
}

/// What starting a process costs on this machine: the median of `n` runs
/// of `program args` (spawned, waited for), in ms.
pub fn process_start_ms(program: &str, args: &[&str], n: usize) -> f64 {
    let samples: Vec<f64> = (0..n)
        .map(|_| {
            let clock = std::time::Instant::now();
            let _ = std::process::Command::new(program)
                .args(args)
                .stdout(std::process::Stdio::null())
                .status();
            clock.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    median(&samples)
}

pub fn run(sizes: &Sizes, report: &mut Report) {
    let git_start = process_start_ms("git", &["--version"], 30);
    let sh_start = process_start_ms("sh", &["-c", "true"], 30);
    report.fact("machine.git_start_ms", git_start);
    report.fact("machine.sh_start_ms", sh_start);
    let warren = Warren::start("bench-overhead", Setup::new(1, "true"));
    let repo = small_repo(&warren.scratch.join("repo"));
    // The same repository two ways: by path the runner shares its objects
    // (`git clone --shared`), by URL it must fetch every new commit.
    let path_location = location(&repo.path);
    let url_location = format!("file://{path_location}");

    // Warm-up: the runner clones the repository both ways.
    let head = crate::common::git(&repo.path, &["rev-parse", "HEAD"]);
    let warmups = [
        Bus::job(&path_location, &head),
        Bus::job(&url_location, &head),
    ];
    warren.bus.publish(&warmups);
    let warmup_ids: Vec<String> = warmups.iter().map(|j| j.id.to_string()).collect();
    warren.wait_recorded(&warmup_ids, Duration::from_secs(60));

    // A: one job at a time, each for a new commit, by path and by URL.
    let one_at_a_time = |location: &str, label: &str| -> Vec<String> {
        (0..sizes.overhead_fetch)
            .map(|i| {
                let (commit, _) = commit_now(&repo, &format!("overhead {label} {i}"));
                let job = Bus::job(location, &commit);
                warren.bus.publish(std::slice::from_ref(&job));
                let id = job.id.to_string();
                warren.wait_recorded(std::slice::from_ref(&id), Duration::from_secs(60));
                id
            })
            .collect()
    };
    let shared_ids = one_at_a_time(&path_location, "shared");
    let fetched_ids = one_at_a_time(&url_location, "url");

    // B: jobs by URL queued at once for commits made together; the first
    // job fetches them all, the others find their commit present.
    let queued_at_once = |warren: &Warren| -> Vec<String> {
        let commits = add_commits(&repo.path, sizes.overhead_warm + 1, "warm");
        let jobs: Vec<_> = commits.iter().map(|c| Bus::job(&url_location, c)).collect();
        warren.bus.publish(&jobs);
        let ids: Vec<String> = jobs.iter().map(|j| j.id.to_string()).collect();
        warren.wait_recorded(&ids, Duration::from_secs(120));
        ids
    };
    let warm_ids = queued_at_once(&warren);
    let [shared, fetched, warm] = parts_in(&warren, [&shared_ids, &fetched_ids, &warm_ids]);
    let (warm, warm_fetched_all, cycle) = back_to_back(warm);

    // B again on a runner without a sandbox: Warren's own part of a job,
    // to which the sandbox adds its cost (scenario 8).
    let bare = Warren::start(
        "bench-overhead-bare",
        Setup::new(1, "true").runner_args(&["--sandbox", "none"]),
    );
    let warmup = Bus::job(&url_location, &head);
    bare.bus.publish(std::slice::from_ref(&warmup));
    bare.wait_recorded(&[warmup.id.to_string()], Duration::from_secs(60));
    let [bare_warm] = parts_in(&bare, [&queued_at_once(&bare)]);
    let (bare_warm, _, _) = back_to_back(bare_warm);
    // The repository is in the first deployment's scratch folder.
    drop(bare);
    drop(warren);

    for (mode, parts) in [
        ("shared", &shared),
        ("fetch", &fetched),
        ("warm", &warm),
        ("bare", &bare_warm),
    ] {
        let medians: [(&str, Part); 9] = [
            ("announce", |p| p.announce),
            ("fetch", |p| p.fetch),
            ("checkout", |p| p.checkout),
            ("clean", |p| p.clean),
            ("process", |p| p.process),
            ("publish", |p| p.publish),
            ("ack", |p| p.ack),
            ("other", Parts::other),
            ("total", |p| p.total),
        ];
        for (name, f) in medians {
            let values: Vec<f64> = parts.iter().map(f).collect();
            report.fact(&format!("overhead.{mode}.{name}"), median(&values));
        }
    }
    let target = || Target::median_at_most(30.0, "≤ 30 ms median");
    report.add(
        2,
        Row::new(
            "per-job overhead, each job a new commit, repository by path (shared clone)",
            Unit::Ms,
            shared.iter().map(|p| p.total).collect(),
        )
        .target(target()),
    );
    report.add(
        2,
        Row::new(
            "per-job overhead, each job a new commit, repository by URL (fetch)",
            Unit::Ms,
            fetched.iter().map(|p| p.total).collect(),
        )
        .target(target()),
    );
    report.add(
        2,
        Row::new(
            "per-job overhead, commit already fetched (by URL)",
            Unit::Ms,
            warm.iter().map(|p| p.total).collect(),
        )
        .target(Target::median_at_most(
            10.0,
            "≤ 10 ms median (issue 19; issue 7: ≤ 30 ms)",
        )),
    );
    report.add(
        2,
        Row::new(
            "per-job overhead, commit already fetched (by URL), runner with `--sandbox none`",
            Unit::Ms,
            bare_warm.iter().map(|p| p.total).collect(),
        )
        .target(Target::median_at_most(10.0, "≤ 10 ms median (issue 19)")),
    );
    report.add(
        2,
        Row::new(
            "back-to-back cycle per job (ack to next ack), queue full",
            Unit::Ms,
            cycle,
        ),
    );
    report.detail(
        2,
        &format!(
            "One runner, test command `true`, a small repository (~20 files), named in the \
             jobs by its path (the runner's clone shares its objects, `git clone --shared`) \
             and by a `file://` URL (the runner fetches). \
             **A, by path** — {} jobs one at a time, each for a new commit (`git commit`, then \
             the job published); the commit is already visible to the shared clone:\n\n{}\n\
             **A, by URL** — {} jobs the same way, so every job fetches:\n\n{}\n\
             **B** — {} jobs by URL queued at once for commits the runner already fetched \
             (the first job of the batch, which fetched them all, is left out{}):\n\n{}\n\
             **B without a sandbox** — the same on a second runner started with \
             `--sandbox none` ({} jobs): Warren's own part of a job, to which the sandbox \
             adds its cost (scenario 8):\n\n{}\n\
             For scale, on this machine starting a process and waiting for it costs \
             {git_start:.1} ms for `git --version` and {sh_start:.1} ms for `sh -c true` \
             (medians of 30, from the harness).",
            shared.len(),
            table(&shared),
            fetched.len(),
            table(&fetched),
            warm.len(),
            warm_fetched_all
                .map(|p| format!(
                    "; it took {:.1} ms in total, {:.1} ms of it fetching",
                    p.total, p.fetch
                ))
                .unwrap_or_default(),
            table(&warm),
            bare_warm.len(),
            table(&bare_warm),
        ),
    );
}
