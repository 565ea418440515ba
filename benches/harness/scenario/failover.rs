//! Scenario 4: failover.
//!
//! - SIGKILL of the runner running a job → the job running on another
//!   runner (the broker requeues on connection loss).
//! - SIGSTOP of that runner → the job running elsewhere (the dispatcher's
//!   lease expires, it closes the frozen runner's connection through the
//!   management API, the broker requeues).
//! - A broker restart (on a private node: the shared one serves other
//!   work) → the first result recorded after the broker is back.

use std::fmt::Write as _;
use std::time::Duration;

use crate::harness::bus::Bus;
use crate::harness::fixture::{Setup, Warren};
use crate::harness::logs;
use crate::harness::node::Node;
use crate::harness::report::{breakdown_table, Row, Target, Unit};
use crate::harness::repos::{add_commits, location, now_ms, small_repo};
use crate::harness::{Report, Sizes};

const LEASE_HEARTBEAT: &str = "0.5";
const LEASE_MISSED: &str = "4";
/// heartbeat × missed heartbeats, in ms.
const LEASE_MS: f64 = 2000.0;

/// The samples of one takeover run, in ms from the signal.
#[derive(Default)]
struct Takeover {
    /// Until another runner logged `job running` for the job.
    running_elsewhere: Vec<f64>,
    /// Until the dispatcher logged the lease as expired (SIGSTOP only).
    lease_expired: Vec<f64>,
    /// Until the dispatcher had closed the frozen runner's connection.
    connection_closed: Vec<f64>,
}

/// Kills (or freezes) the runner of each job mid-test and measures until
/// another runner starts it.
fn takeover(
    warren: &mut Warren,
    repo_location: &str,
    commits: &[String],
    freeze: bool,
) -> Takeover {
    let mut samples = Takeover::default();
    for commit in commits {
        let job = Bus::job(repo_location, commit);
        warren.bus.publish(std::slice::from_ref(&job));
        let (victim, _) =
            warren.wait_runner_line("job running", &job.id, 0.0, Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(300)); // mid-test
        let at = now_ms();
        if freeze {
            warren.runners[victim].signal(libc::SIGSTOP);
        } else {
            warren.runners[victim].kill();
        }
        let (taker, line) =
            warren.wait_runner_line("job running", &job.id, at, Duration::from_secs(60));
        assert_ne!(taker, victim, "another runner took the job");
        samples.running_elsewhere.push(line.at_ms - at);
        warren.wait_recorded(&[job.id.to_string()], Duration::from_secs(60));
        if freeze {
            let lines = logs::read(&warren.dispatcher_log());
            let when = |message: &str| {
                lines
                    .iter()
                    .find(|l| {
                        l.at_ms >= at
                            && l.message.starts_with(message)
                            && l.field("job") == Some(job.id.as_str())
                    })
                    .map(|l| l.at_ms - at)
            };
            if let Some(ms) = when("lease expired") {
                samples.lease_expired.push(ms);
            }
            if let Some(ms) = when("closed the frozen runner's connection")
                .or_else(|| when("the runner's connection is already gone"))
            {
                samples.connection_closed.push(ms);
            }
        }
        // A frozen process takes SIGKILL too; a fresh runner replaces it.
        warren.replace_runner(victim);
    }
    samples
}

/// Launches the private node; with `overlap` returns at once (it boots
/// while the other failover parts run: the smoke test's size), otherwise
/// when it answers.
fn start_node(overlap: bool) -> Option<Node> {
    if !Node::available() {
        return None;
    }
    let mut node = Node::new();
    node.launch();
    if !overlap {
        wait_node(&mut node);
    }
    Some(node)
}

fn wait_node(node: &mut Node) {
    let clock = std::time::Instant::now();
    node.wait_ready(Duration::from_secs(180));
    eprintln!(
        "private RabbitMQ node answered after {:.1} s more",
        clock.elapsed().as_secs_f64()
    );
}

fn restarts(sizes: &Sizes, report: &mut Report, node: Option<Node>) {
    let Some(mut node) = node else {
        report.section(4).skipped.push(format!(
            "broker restart: no local RabbitMQ installation ({}) to run a private node",
            crate::harness::node::SERVER_SCRIPT
        ));
        return;
    };
    if sizes.overlap_node_start {
        wait_node(&mut node);
    }
    let management = node.management_url();
    let setup = Setup::new(2, "sleep 0.2")
        .url(&node.amqp_url())
        .dispatcher_args(&["--management-url", &management]);
    let warren = Warren::start("bench-restart", setup);
    let repo = small_repo(&warren.scratch.join("repo"));
    let repo_location = location(&repo.path);
    // A backlog that outlasts every restart (each job takes ~0.25 s).
    let commits = add_commits(&repo.path, 100 * sizes.restart_samples + 20, "restart");
    let jobs: Vec<_> = commits
        .iter()
        .map(|c| Bus::job(&repo_location, c))
        .collect();
    warren.bus.publish(&jobs);
    let log = warren.dispatcher_log();

    let mut first_result = Vec::new();
    let mut reconnects: Vec<(String, Vec<f64>)> = vec![
        ("dispatcher reconnected".into(), Vec::new()),
        ("runners reconnected (each)".into(), Vec::new()),
    ];
    let mut boot = Vec::new();
    let mut random = crate::harness::Random::new();
    for _ in 0..sizes.restart_samples {
        // Steady state: results are being recorded.
        let before = logs::count(&log, "job finished");
        crate::common::wait_for(
            "results before the restart",
            Duration::from_secs(60),
            || (logs::count(&log, "job finished") >= before + 2).then_some(()),
        );
        node.stop(Duration::from_secs(60));
        // Outages differ in length, and with them where the components are
        // in their reconnect backoff when the broker returns: stay down a
        // random 0–5 s longer before starting again.
        std::thread::sleep(Duration::from_secs_f64(
            random.unit() * sizes.restart_extra_down,
        ));
        let down = now_ms();
        let back = node.start(Duration::from_secs(180));
        eprintln!(
            "private RabbitMQ node restarted: back after {:.1} s",
            (back - down) / 1000.0
        );
        boot.push((back - down) / 1000.0);
        let first = crate::common::wait_for(
            "the first result after the broker is back",
            Duration::from_secs(60),
            || {
                logs::read(&log)
                    .into_iter()
                    .find(|l| l.message == "job finished" && l.at_ms > back)
                    .map(|l| l.at_ms)
            },
        );
        first_result.push(first - back);
        let reconnected = |path: &std::path::Path| {
            logs::read(path)
                .into_iter()
                .find(|l| l.message == "connected to the broker" && l.at_ms > back)
                .map(|l| l.at_ms - back)
        };
        if let Some(ms) = reconnected(&log) {
            reconnects[0].1.push(ms);
        }
        for runner in &warren.runners {
            if let Some(ms) = reconnected(&runner.log) {
                reconnects[1].1.push(ms);
            }
        }
    }
    report.add(
        4,
        Row::new(
            "broker restart: broker back → first result recorded",
            Unit::Ms,
            first_result,
        )
        .target(Target::max_at_most(
            5000.0,
            "≤ 5 s after the broker is back",
        )),
    );
    let mut details = format!(
        "Broker restart: a private RabbitMQ node of the same installation (own ports and data; \
         the shared broker serves other work), management plugin on; a dispatcher and two runners \
         (test `sleep 0.2`) with a backlog of {} jobs in the durable quorum queue. Each sample \
         stops the node gracefully (SIGTERM), waits a random 0–{:.0} s and starts it again (it \
         took {} to answer again); \"back\" is when its AMQP port accepts connections again (RabbitMQ opens its listeners last, after \
         recovering its queues). Time from back to each component's reconnection (components \
         retry with a backoff doubling from 0.2 s to 5 s):\n\n{}",
        jobs.len(),
        sizes.restart_extra_down,
        boot.iter()
            .map(|s| format!("{s:.1} s"))
            .collect::<Vec<_>>()
            .join(", "),
        breakdown_table(
            Unit::Ms,
            &reconnects
                .iter()
                .map(|(name, v)| (name.as_str(), v.clone()))
                .collect::<Vec<_>>()
        )
    );
    let _ = writeln!(details);
    report.fact(
        "restart.reconnect.dispatcher",
        crate::harness::stats::median(&reconnects[0].1),
    );
    report.fact(
        "restart.reconnect.runners",
        crate::harness::stats::median(&reconnects[1].1),
    );
    report.fact(
        "restart.reconnect.max",
        reconnects
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .fold(f64::NAN, f64::max),
    );
    report.detail(4, &details);
    // `node` stops on drop, after `warren`'s processes.
    drop(warren);
    drop(node);
}

pub fn run(sizes: &Sizes, report: &mut Report) {
    let node = if sizes.overlap_node_start {
        start_node(true)
    } else {
        None
    };
    report.detail(
        4,
        &format!(
            "SIGKILL and SIGSTOP: a dispatcher and two runners, test `sleep 1`; 0.3 s into the \
             test the harness signals the runner that has the job and measures until another \
             runner logs `job running` for it (after announcing it with a confirmed `started` \
             event). The frozen or killed runner is then replaced by a fresh one. SIGSTOP uses \
             `--heartbeat {LEASE_HEARTBEAT} --lease-missed {LEASE_MISSED}` (a {:.0} s lease; \
             the default is 2 s × 5 = 10 s): the expected time is the lease, minus the time since \
             the last heartbeat, plus up to 0.5 s until the dispatcher's next lease check, plus \
             closing the connection through the management API.",
            LEASE_MS / 1000.0
        ),
    );
    // SIGKILL: the broker notices the closed connection and requeues.
    {
        let mut warren = Warren::start("bench-kill", Setup::new(2, "sleep 1"));
        let repo = small_repo(&warren.scratch.join("repo"));
        let repo_location = location(&repo.path);
        let commits = add_commits(&repo.path, sizes.kill_samples, "kill");
        let samples = takeover(&mut warren, &repo_location, &commits, false);
        report.add(
            4,
            Row::new(
                "SIGKILL of a runner mid-job → job running on another runner",
                Unit::Ms,
                samples.running_elsewhere,
            )
            .target(Target::max_at_most(1000.0, "≤ 1 s")),
        );
    }
    // SIGSTOP: the lease (heartbeat 0.5 s × 4 missed = 2 s) expires.
    {
        let setup = Setup::new(2, "sleep 1")
            .runner_args(&["--heartbeat", LEASE_HEARTBEAT])
            .dispatcher_args(&[
                "--heartbeat",
                LEASE_HEARTBEAT,
                "--lease-missed",
                LEASE_MISSED,
            ]);
        let mut warren = Warren::start("bench-stop", setup);
        let repo = small_repo(&warren.scratch.join("repo"));
        let repo_location = location(&repo.path);
        let commits = add_commits(&repo.path, sizes.stop_samples, "stop");
        let samples = takeover(&mut warren, &repo_location, &commits, true);
        report.detail(
            4,
            &format!(
                "Where the SIGSTOP failover time goes (from the SIGSTOP, by the dispatcher's \
                 log):\n\n{}",
                breakdown_table(
                    Unit::Ms,
                    &[
                        (
                            "lease expired (dispatcher noticed)",
                            samples.lease_expired.clone()
                        ),
                        (
                            "frozen runner's connection closed (management API)",
                            samples.connection_closed.clone(),
                        ),
                        (
                            "job running on another runner",
                            samples.running_elsewhere.clone(),
                        ),
                    ],
                )
            ),
        );
        report.fact(
            "stop.lease_expired",
            crate::harness::stats::median(&samples.lease_expired),
        );
        report.fact(
            "stop.close_ms",
            crate::harness::stats::median(
                &samples
                    .connection_closed
                    .iter()
                    .zip(&samples.lease_expired)
                    .map(|(closed, expired)| closed - expired)
                    .collect::<Vec<_>>(),
            ),
        );
        report.add(
            4,
            Row::new(
                format!(
                    "SIGSTOP of a runner mid-job → job running elsewhere (lease {:.0} s)",
                    LEASE_MS / 1000.0
                ),
                Unit::Ms,
                samples.running_elsewhere,
            )
            .target(Target::max_at_most(
                LEASE_MS + 1000.0,
                &format!("≤ lease + 1 s = {:.0} s", LEASE_MS / 1000.0 + 1.0),
            )),
        );
    }
    let node = if sizes.overlap_node_start {
        node
    } else {
        start_node(false)
    };
    restarts(sizes, report, node);
}
