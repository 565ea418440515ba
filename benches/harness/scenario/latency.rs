//! Scenario 1: wall time from `git commit` to the job starting on a runner
//! and to its outcome being recorded, with the observer polling a local
//! repository every 1 s and every 0.2 s.

use std::time::Duration;

use crate::harness::bus::Bus;

use crate::harness::fixture::{Setup, Warren};
use crate::harness::logs;
use crate::harness::report::{breakdown_table, Row, Target, Unit};
use crate::harness::repos::{commit_now, location, small_repo};
use crate::harness::stats::median;
use crate::harness::{Random, Report, Sizes};

pub fn run(sizes: &Sizes, report: &mut Report) {
    let mut random = Random::new();
    for &(interval, samples) in &sizes.latency {
        let mut warren = Warren::start("bench-latency", Setup::new(1, "true"));
        let repo = small_repo(&warren.scratch.join("repo"));
        let repo_location = location(&repo.path);
        warren.start_observer(&repo_location, &format!("{interval}"));
        // The first poll publishes the current head; its job also makes the
        // runner's clone, so the measured jobs only fetch.
        let head = crate::common::git(&repo.path, &["rev-parse", "HEAD"]);
        warren.wait_recorded(
            &[Bus::job_id(&repo_location, &head)],
            Duration::from_secs(60),
        );

        let (mut to_start, mut to_outcome) = (Vec::new(), Vec::new());
        let (mut poll_wait, mut to_runner, mut start_to_recorded, mut publish_and_save) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut git_commit = Vec::new();
        // Commits at phases of the observer's polling spread evenly over the
        // interval (the middles of `samples` equal slices, in random order):
        // the waits then cover the interval as commits at random moments
        // would, without the luck of a dozen random draws.
        let mut phases: Vec<f64> = (0..samples)
            .map(|i| (i as f64 + 0.5) / samples as f64)
            .collect();
        for i in (1..phases.len()).rev() {
            let j = (random.unit() * (i + 1) as f64) as usize;
            phases.swap(i, j.min(i));
        }
        for (i, phase) in phases.iter().enumerate() {
            std::thread::sleep(Duration::from_secs_f64(phase * interval));
            let (commit, committed) = commit_now(&repo, &format!("latency {i}"));
            // From the moment `git commit` is run (the user's view; the
            // branch moves shortly before git returns).
            let committed_at = committed.started;
            git_commit.push(committed.returned - committed.started);
            let id = Bus::job_id(&repo_location, &commit);
            let recorded =
                warren.wait_recorded(std::slice::from_ref(&id), Duration::from_secs(60))[&id];
            let job = warren
                .dispatcher
                .api()
                .get_json(&format!("/api/jobs/{id}"))
                .expect("the job in the API");
            let started = job["started_at_ms"].as_f64().expect("started_at_ms");
            // The observer stamps the job when it creates it, before
            // publishing; it logs "job queued" after the confirm and after
            // saving its state file.
            let created = job["enqueued_at_ms"].as_f64().expect("enqueued_at_ms");
            let queued_logged = warren
                .observer
                .as_ref()
                .map(|o| logs::read(&o.log))
                .unwrap_or_default()
                .into_iter()
                .find(|l| l.is("job queued", &id))
                .map(|l| l.at_ms)
                .unwrap_or(f64::NAN);
            to_start.push(started - committed_at);
            to_outcome.push(recorded - committed_at);
            poll_wait.push(created - committed_at);
            to_runner.push(started - created);
            start_to_recorded.push(recorded - started);
            publish_and_save.push(queued_logged - created);
        }
        for (name, values) in [
            ("to_start", &to_start),
            ("poll_wait", &poll_wait),
            ("to_runner", &to_runner),
            ("start_to_recorded", &start_to_recorded),
            ("publish_and_save", &publish_and_save),
        ] {
            report.fact(&format!("latency.{interval}.{name}"), median(values));
        }
        let half = interval * 1000.0 / 2.0;
        report.add(
            1,
            Row::new(
                format!("commit → job start, observer every {interval} s"),
                Unit::Ms,
                to_start,
            )
            .target(Target::median_at_most(
                half + 50.0,
                &format!("≤ {:.0} ms median (interval/2 + 50 ms)", half + 50.0),
            )),
        );
        report.add(
            1,
            Row::new(
                format!("commit → outcome recorded, observer every {interval} s"),
                Unit::Ms,
                to_outcome,
            ),
        );
        report.detail(
            1,
            &format!(
                "Observer every {interval} s, one runner, test command `true`, {samples} commits \
                 made with `git commit` at phases spread evenly over the polling interval (the \
                 middles of {samples} equal slices, in random order), timed from the moment \
                 `git commit` is run. Where the time goes:\n\n{}",
                breakdown_table(
                    Unit::Ms,
                    &[
                        ("`git commit` itself (run → returned)", git_commit),
                        (
                            "`git commit` run → observer saw it and made the job (poll wait)",
                            poll_wait,
                        ),
                        (
                            "job made → runner started it (publish, confirm, routing, delivery)",
                            to_runner,
                        ),
                        (
                            "runner started → outcome recorded by the dispatcher",
                            start_to_recorded,
                        ),
                        (
                            "(observer: job made → confirmed and state file saved)",
                            publish_and_save,
                        ),
                    ],
                )
            ),
        );
    }
}
