//! Scenario 8 (issue 14): the sandbox's cost per job. The same stream of
//! trivial jobs (test command `true`, commits already in the runner's
//! clone) on three runners, each alone in its own deployment (namespace):
//!
//! - `--sandbox none`: `warren supervise -- sh -c true`,
//! - `--sandbox bwrap`: the same inside bubblewrap's namespaces,
//! - `--sandbox bwrap --job-memory 512M`: and a cgroup made for the job
//!   before it and removed after it.
//!
//! Each job's **test step** is timed from the runner's own log (microsecond
//! timestamps): from its `checkout timings` line (the checkout is done) to
//! its `test timings` line (the test has ended, its output is drained, the
//! job's cgroup is removed). That holds everything the variants do
//! differently; the rest of the job (announce, checkout, publish, ack) is
//! the same in all three and is scenario 2's. The runner's `test_ms` (the
//! supervisor's start to its end) and the result's
//! `duration_ms` (checkout included, whole milliseconds) are shown beside it.
//! The variants take turns in rounds, so a change in the machine's load
//! falls on all three alike. The sandbox's cost is the difference of the
//! medians against `none`.

use std::collections::HashMap;
use std::time::Duration;

use crate::harness::bus::Bus;
use crate::harness::fixture::{Setup, Warren};
use crate::harness::logs::Line;
use crate::harness::report::{breakdown_table, Row, Target, Unit};
use crate::harness::repos::{add_commits, location, small_repo};
use crate::harness::scenario::overhead::process_start_ms;
use crate::harness::stats::median;
use crate::harness::{Report, Sizes};

/// One way of running the jobs.
struct Variant {
    /// Name in the facts (`sandbox.<key>.…`).
    key: &'static str,
    /// Name in the rows and tables.
    label: &'static str,
    /// The runner's options (besides `--test-command true`).
    args: &'static [&'static str],
    /// What the runner must report in each result's `sandbox`.
    sandbox: &'static str,
}

const VARIANTS: [Variant; 3] = [
    Variant {
        key: "none",
        label: "`--sandbox none`",
        args: &["--sandbox", "none"],
        sandbox: "none",
    },
    Variant {
        key: "bwrap",
        label: "`--sandbox bwrap`",
        args: &["--sandbox", "bwrap"],
        sandbox: "bwrap",
    },
    Variant {
        key: "cgroup",
        label: "`--sandbox bwrap --job-memory 512M`",
        args: &["--sandbox", "bwrap", "--job-memory", "512M"],
        sandbox: "bwrap",
    },
];

/// Jobs per variant in one round (the variants take turns).
const ROUND: usize = 10;

/// One job's times, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Times {
    /// `checkout timings` → `test timings` (log timestamps, µs).
    step: f64,
    /// The runner's `test_ms`.
    process: f64,
    /// The result's `duration_ms` (whole ms).
    duration: f64,
}

fn times_of(id: &str, lines: &[Line], job: Option<&serde_json::Value>) -> Option<Times> {
    let find = |message: &str| lines.iter().find(|l| l.is(message, id));
    let checkout = find("checkout timings")?;
    let test = find("test timings")?;
    Some(Times {
        step: test.at_ms - checkout.at_ms,
        process: test.number("test_ms")?,
        duration: job
            .and_then(|j| j["duration_ms"].as_f64())
            .unwrap_or(f64::NAN),
    })
}

pub fn run(sizes: &Sizes, report: &mut Report) {
    let jobs = sizes.sandbox_jobs.max(1);
    report.detail(
        8,
        "Reproduce: `cargo bench --bench scenarios -- 8` runs this scenario alone (about 10 \
         seconds) and prints its rows, verdicts, analysis and this section.",
    );
    // For scale: one process started and waited for, bare and in a
    // bubblewrap sandbox like the runner's (without its binds of the
    // checkout and the toolchains).
    let sh_start = process_start_ms("sh", &["-c", "true"], 30);
    let bwrap_start = process_start_ms(
        "bwrap",
        &[
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--die-with-parent",
            "--new-session",
            "--ro-bind",
            "/usr",
            "/usr",
            "--ro-bind",
            "/etc",
            "/etc",
            "--symlink",
            "usr/bin",
            "/bin",
            "--symlink",
            "usr/lib",
            "/lib",
            "--symlink",
            "usr/lib64",
            "/lib64",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",
            "sh",
            "-c",
            "true",
        ],
        30,
    );
    report.fact("sandbox.sh_start_ms", sh_start);
    report.fact("sandbox.bwrap_start_ms", bwrap_start);

    // One deployment per variant, all up at once (idle ones cost nothing).
    let warrens: Vec<Warren> = VARIANTS
        .iter()
        .map(|v| {
            Warren::start(
                &format!("bench-sandbox-{}", v.key),
                Setup::new(1, "true").runner_args(v.args),
            )
        })
        .collect();
    let repo = small_repo(&warrens[0].scratch.join("repo"));
    let url = location(&repo.path);
    // Warm-up: each runner clones the repository (by path: a shared clone,
    // so the commits made next are in it without a fetch).
    let head = crate::common::git(&repo.path, &["rev-parse", "HEAD"]);
    for warren in &warrens {
        let job = Bus::job(&url, &head);
        warren.bus.publish(std::slice::from_ref(&job));
        warren.wait_recorded(&[job.id.to_string()], Duration::from_secs(60));
    }
    let commits = add_commits(&repo.path, jobs, "sandbox");

    // The same jobs on each runner, one at a time, the variants taking
    // turns round by round (the first variant of a round rotates).
    let mut ids: Vec<Vec<String>> = vec![Vec::new(); VARIANTS.len()];
    for (round, chunk) in commits.chunks(ROUND).enumerate() {
        for turn in 0..VARIANTS.len() {
            let index = (round + turn) % VARIANTS.len();
            let warren = &warrens[index];
            for commit in chunk {
                let job = Bus::job(&url, commit);
                warren.bus.publish(std::slice::from_ref(&job));
                let id = job.id.to_string();
                warren.wait_recorded(std::slice::from_ref(&id), Duration::from_secs(60));
                ids[index].push(id);
            }
        }
    }

    let mut times: Vec<Vec<Times>> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    for (index, (variant, warren)) in VARIANTS.iter().zip(&warrens).enumerate() {
        let lines = warren.all_runner_lines();
        let api: HashMap<String, serde_json::Value> = warren.api_jobs();
        for id in &ids[index] {
            let job = api.get(id);
            let status = job.and_then(|j| j["status"].as_str()).unwrap_or("?");
            let sandbox = job.and_then(|j| j["sandbox"].as_str()).unwrap_or("?");
            // A job that did not run as the variant says would time
            // something else (a failed bwrap ends fast).
            assert!(
                status == "passed" && sandbox == variant.sandbox,
                "{}: job {id} ended {status} with sandbox {sandbox} (logs in {})",
                variant.label,
                warren.scratch.path().display()
            );
        }
        times.push(
            ids[index]
                .iter()
                .filter_map(|id| times_of(id, &lines, api.get(id)))
                .collect(),
        );
        // What the runner said at start about its isolation (a cgroup it
        // could not make is a warning, and RLIMIT_AS instead).
        let warnings: Vec<String> = lines
            .iter()
            .filter(|l| l.level == "WARN")
            .map(|l| l.message.clone())
            .collect();
        if !warnings.is_empty() {
            notes.push(format!(
                "the runner with {} warned at start: {}",
                variant.label,
                warnings
                    .iter()
                    .map(|w| format!("\"{w}\""))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
    }
    drop(warrens);

    let column =
        |times: &[Times], f: fn(&Times) -> f64| -> Vec<f64> { times.iter().map(f).collect() };
    let medians: Vec<f64> = times
        .iter()
        .map(|t| median(&column(t, |t| t.step)))
        .collect();
    for (variant, times) in VARIANTS.iter().zip(&times) {
        let key = variant.key;
        report.fact(
            &format!("sandbox.{key}.step"),
            median(&column(times, |t| t.step)),
        );
        report.fact(
            &format!("sandbox.{key}.process"),
            median(&column(times, |t| t.process)),
        );
        report.fact(
            &format!("sandbox.{key}.rest"),
            median(&column(times, |t| t.step - t.process)),
        );
        report.fact(
            &format!("sandbox.{key}.duration"),
            median(&column(times, |t| t.duration)),
        );
        report.add(
            8,
            Row::new(
                format!("test step per job (`true`), {}", variant.label),
                Unit::Ms,
                column(times, |t| t.step),
            ),
        );
    }
    let sandbox_cost = medians[1] - medians[0];
    let cgroup_cost = medians[2] - medians[0];
    report.fact("sandbox.cost", sandbox_cost);
    report.fact("sandbox.cgroup_cost", cgroup_cost);
    report.fact("sandbox.cgroup_only", medians[2] - medians[1]);
    report.add(
        8,
        Row::new(
            "sandbox's cost per job: median test step, `bwrap` − `none`",
            Unit::Ms,
            vec![sandbox_cost],
        )
        .target(Target::median_at_most(10.0, "≤ 10 ms median")),
    );
    report.add(
        8,
        Row::new(
            "sandbox and job cgroup per job: median test step, `bwrap --job-memory 512M` − `none`",
            Unit::Ms,
            vec![cgroup_cost],
        ),
    );

    let mut tables = String::new();
    for (variant, times) in VARIANTS.iter().zip(&times) {
        tables.push_str(&format!(
            "**{}**:\n\n{}\n",
            variant.label,
            breakdown_table(
                Unit::Ms,
                &[
                    (
                        "**test step** (`checkout timings` → `test timings` in the runner's log)",
                        column(times, |t| t.step),
                    ),
                    (
                        "of it the test process (`test_ms`: supervisor started → ended, drained)",
                        column(times, |t| t.process),
                    ),
                    (
                        "of it the rest (`.warren-test` read, the job's cgroup made and removed, logging)",
                        column(times, |t| t.step - t.process),
                    ),
                    (
                        "the result's `duration_ms` (checkout to result; whole ms)",
                        column(times, |t| t.duration),
                    ),
                ],
            )
        ));
    }
    report.detail(
        8,
        &format!(
            "Three deployments (each its own namespace, dispatcher and one runner, test \
             command `true`): {}. A small repository named by its path (the runners' clones \
             share its objects, so no job fetches); after one warm-up job each (the clone), \
             {jobs} new commits made at once, and the same {jobs} jobs run on each runner one at \
             a time (each published once the previous outcome is recorded, so the runner is \
             idle when the job arrives), the variants taking turns in rounds of {ROUND} jobs so \
             that a change in the machine's load falls on all three. Every job must end \
             `passed` with the variant's sandbox in its result. Each job's **test step** is \
             timed from the runner's own log lines (microsecond timestamps, `RUST_LOG=\
             warren_runner=debug`): from `checkout timings` (the checkout is done) to `test \
             timings` (the test has ended and its output is drained; the job's cgroup, if any, \
             is made before and removed before this line). It holds everything the variants do \
             differently; the rest of a job (announce, checkout, result, ack) is the same in \
             all three and is scenario 2's. The sandbox's cost is the median test step with \
             `bwrap` minus the median with `none`: **{sandbox_cost:.1} ms**; with the job's \
             cgroup as well, {cgroup_cost:.1} ms. For scale, measured by the harness (medians \
             of 30): `sh -c true` started and waited for {sh_start:.1} ms, the same in a \
             bubblewrap sandbox like the runner's (new PID, IPC and UTS namespaces, `/usr` and \
             `/etc` read-only, `/proc`, `/dev`, a `/tmp` of its own) {bwrap_start:.1} ms.{}\n\n{tables}",
            VARIANTS
                .iter()
                .map(|v| v.label)
                .collect::<Vec<_>>()
                .join(", "),
            if notes.is_empty() {
                String::new()
            } else {
                format!(" Note: {}.", notes.join("; "))
            },
        ),
    );
}
