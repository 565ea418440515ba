//! Scenario 5 (idle part): resident memory and CPU of the dispatcher, the
//! observer and a runner on an idle system with default settings (observer
//! polling every 5 s, heartbeats every 2 s). The peaks under load come from
//! scenario 3, the dispatcher with 100,000 stored jobs from scenario 6.

use std::fmt::Write as _;
use std::time::Duration;

use crate::harness::bus::Bus;

use crate::harness::fixture::{Setup, Warren};
use crate::harness::report::{Row, Target, Unit};
use crate::harness::repos::{location, small_repo};
use crate::harness::system::{listener_pid, rss_mib, CpuMark};
use crate::harness::{Report, Sizes};

/// "About none": at most half a percent of one core.
const IDLE_CPU_PERCENT: f64 = 0.5;

pub fn run(sizes: &Sizes, report: &mut Report) {
    let mut warren = Warren::start("bench-idle", Setup::new(1, "true"));
    let repo = small_repo(&warren.scratch.join("repo"));
    let repo_location = location(&repo.path);
    warren.start_observer(&repo_location, "5");
    let head = crate::common::git(&repo.path, &["rev-parse", "HEAD"]);
    warren.wait_recorded(
        &[Bus::job_id(&repo_location, &head)],
        Duration::from_secs(60),
    );
    std::thread::sleep(Duration::from_secs(1));

    let observer = warren.observer.as_ref().map(|o| o.pid()).unwrap_or(0);
    let components = [
        ("dispatcher", warren.dispatcher.proc.pid()),
        ("observer", observer),
        ("runner", warren.runners[0].pid()),
    ];
    let broker = listener_pid(5672);
    let windows = (sizes.idle_secs / sizes.idle_window).round().max(1.0) as usize;
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); components.len()];
    let mut rss: Vec<Vec<f64>> = vec![Vec::new(); components.len()];
    let whole: Vec<Option<CpuMark>> = components.iter().map(|(_, p)| CpuMark::new(*p)).collect();
    let broker_mark = broker.and_then(CpuMark::new);
    for _ in 0..windows {
        let marks: Vec<Option<CpuMark>> =
            components.iter().map(|(_, p)| CpuMark::new(*p)).collect();
        std::thread::sleep(Duration::from_secs_f64(sizes.idle_window));
        for (i, mark) in marks.iter().enumerate() {
            if let Some((own, children)) = mark.as_ref().and_then(CpuMark::percent_since) {
                cpu[i].push(own + children);
            }
            if let Some(mib) = rss_mib(components[i].1) {
                rss[i].push(mib);
            }
        }
    }
    let mut overall = String::new();
    for (i, (name, _)) in components.iter().enumerate() {
        let (own, children) = whole[i]
            .as_ref()
            .and_then(CpuMark::percent_since)
            .unwrap_or((f64::NAN, f64::NAN));
        let _ = write!(
            overall,
            "{name} {:.2} % (itself {own:.2} %, the git/test processes it ran {children:.2} %); ",
            own + children
        );
        report.add(
            5,
            Row::new(
                format!("idle CPU, {name} (per {:.0} s window)", sizes.idle_window),
                Unit::Percent,
                cpu[i].clone(),
            )
            .target(Target::median_at_most(
                IDLE_CPU_PERCENT,
                "≈ 0 % (≤ 0.5 % of a core, median)",
            )),
        );
    }
    for (i, (name, _)) in components.iter().enumerate() {
        report.add(
            5,
            Row::new(format!("idle RSS, {name}"), Unit::MiB, rss[i].clone()).target(
                if *name == "runner" {
                    Target::max_at_most(20.0, "≤ 20 MiB")
                } else {
                    None
                },
            ),
        );
    }
    let broker_cpu = broker_mark
        .as_ref()
        .and_then(CpuMark::percent_since)
        .map(|(own, _)| format!("{own:.1} %"))
        .unwrap_or_else(|| "not measured".into());
    report.detail(
        5,
        &format!(
            "Idle: a dispatcher, an observer (default `--interval 5`) and one runner (default \
             `--heartbeat 2`) after their first job, measured for {:.0} s in {:.0} s windows; CPU \
             counts the process and the git/test processes it waited for (utime + stime from \
             /proc, 10 ms ticks, so one window resolves {:.1} %). Over the whole idle period: \
             {overall}RabbitMQ (shared with other work on this machine) {broker_cpu}.",
            sizes.idle_secs,
            sizes.idle_window,
            100.0 / (sizes.idle_window * crate::harness::system::ticks_per_second()),
        ),
    );
}
