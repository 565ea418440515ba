//! Scenario 7 (issue 15): webhooks and many repositories, through the
//! observer for the dispatcher's registry (`warren observer --server …
//! --hooks-http …`, no REPO).
//!
//! - **Webhook → test started**: a repository registered for pushes only
//!   (`poll_secs: null`), one idle runner; each sample is one commit and a
//!   signed GitHub push for it, timed from just before the POST to the job's
//!   `started_at_ms` (the runner's clock at receipt), and the POST's answer.
//! - **A 1,000-commit push**: 1,000 commits after the last published one,
//!   pushed at once; the payload lists the last 20 (GitHub's cap), so the
//!   observer reads the rest from the repository. Timed to the `202
//!   {"queued":1000}` (sent only once every publish is confirmed) and to
//!   the dispatcher having recorded all of them. No runner: the jobs stay
//!   queued, so only the observer, the broker and the dispatcher work.
//! - **200 repositories polled every 30 s**: one observer, its CPU time
//!   (itself and the git processes it runs) and resident memory over a
//!   fixed window once every repository's head is published.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{wait_for, Repo};
use crate::harness::bus::Bus;
use crate::harness::fixture::{Setup, Warren};
use crate::harness::logs;
use crate::harness::report::{breakdown_table, Row, Target, Unit};
use crate::harness::repos::{add_commits, commit_now, location, now_ms, small_repo};
use crate::harness::stats::median;
use crate::harness::system::{cpu_ticks, rss_mib, status_mib, ticks_per_second, CpuMark};
use crate::harness::{Report, Sizes};

/// The variable naming the webhook secret, set in the observer's
/// environment only.
const SECRET_VAR: &str = "WARREN_BENCH_HOOK_SECRET";
const SECRET: &str = "warren-bench-webhook-secret";

/// Figures of scenario 1 in the run of f376ca1 (BENCHMARKS.md of issue 13),
/// quoted as the "before" when scenario 1 did not run alongside.
const POLLING_BEFORE: (f64, f64) = (116.0, 512.0);

pub fn run(sizes: &Sizes, report: &mut Report) {
    let mut warren = Warren::start("bench-pushes", Setup::new(1, "true"));
    let hooks = warren.start_registry_observer(&[(SECRET_VAR, SECRET)]);
    report.detail(
        7,
        "Reproduce: `cargo bench --bench scenarios -- 7` runs this scenario alone (about 2 \
         minutes) and prints its rows, verdicts, analysis and this section.",
    );
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    webhook_to_start(sizes, report, &warren, &client, &hooks);
    // The burst is the observer's, the broker's and the dispatcher's work
    // alone: no runner takes the jobs.
    for runner in &mut warren.runners {
        runner.kill();
    }
    thousand_commit_push(sizes, report, &warren, &client, &hooks);
    drop(warren);
    many_repositories(sizes, report);
}

/// A signed GitHub push of `branch` main from `before` to `after`,
/// listing `listed` (oldest first): (headers, body).
fn github_push(
    before: &str,
    after: &str,
    listed: &[String],
    delivery: &str,
) -> (Vec<(&'static str, String)>, Vec<u8>) {
    let commits: Vec<Value> = listed
        .iter()
        .map(|id| json!({"id": id, "message": "m", "author": {"name": "a"}}))
        .collect();
    let body =
        json!({"ref": "refs/heads/main", "before": before, "after": after, "commits": commits})
            .to_string()
            .into_bytes();
    let headers = vec![
        ("X-GitHub-Event", "push".to_string()),
        ("X-GitHub-Delivery", delivery.to_string()),
        ("X-Hub-Signature-256", forge::sign(SECRET.as_bytes(), &body)),
        ("Content-Type", "application/json".to_string()),
    ];
    (headers, body)
}

/// POSTs a push to `/hooks/NAME`: (status, JSON answer, when the POST was
/// sent and when its answer was read, epoch ms).
fn deliver(
    client: &reqwest::blocking::Client,
    hooks: &str,
    name: &str,
    push: (Vec<(&'static str, String)>, Vec<u8>),
) -> (u16, Value, f64, f64) {
    let (headers, body) = push;
    let mut request = client.post(format!("{hooks}/hooks/{name}")).body(body);
    for (header, value) in headers {
        request = request.header(header, value);
    }
    let sent = now_ms();
    let answer = request.send().expect("the observer answers the webhook");
    let status = answer.status().as_u16();
    let text = answer.text().expect("the answer's body");
    let answered = now_ms();
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, json, sent, answered)
}

/// Waits until the dispatcher has a record of the job `id`; returns it.
fn wait_job(warren: &Warren, id: &str, within: Duration) -> Value {
    let api = warren.dispatcher.api();
    wait_for(&format!("the job {id} in the API"), within, || {
        api.get_json(&format!("/api/jobs/{id}")).ok()
    })
}

fn webhook_to_start(
    sizes: &Sizes,
    report: &mut Report,
    warren: &Warren,
    client: &reqwest::blocking::Client,
    hooks: &str,
) {
    let repo = small_repo(&warren.scratch.join("pushed"));
    let url = location(&repo.path);
    warren.register("pushed", &url, None, Some(SECRET_VAR));
    // The first push: the observer may not have read the registry yet (it
    // does at once for an unknown name), reads the HEAD branch, and the
    // runner makes its clone. Not measured.
    let mut before = crate::common::git(&repo.path, &["rev-parse", "HEAD"]);
    let (first, _) = commit_now(&repo, "first push");
    let (status, answer, _, _) = deliver(
        client,
        hooks,
        "pushed",
        github_push(&before, &first, std::slice::from_ref(&first), "warm-up"),
    );
    assert_eq!(
        (status, &answer),
        (202, &json!({"queued": 1})),
        "warm-up push"
    );
    let id = Bus::job_id(&url, &first);
    warren.wait_recorded(std::slice::from_ref(&id), Duration::from_secs(60));
    before = first;
    std::thread::sleep(Duration::from_millis(200));

    let (mut to_start, mut answered, mut to_made, mut made_to_start) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut confirmed, mut to_recorded) = (Vec::new(), Vec::new());
    for i in 0..sizes.hook_pushes {
        let (commit, _) = commit_now(&repo, &format!("push {i}"));
        let push = github_push(
            &before,
            &commit,
            std::slice::from_ref(&commit),
            &format!("push-{i}"),
        );
        let (status, answer, sent, answer_read) = deliver(client, hooks, "pushed", push);
        assert_eq!((status, &answer), (202, &json!({"queued": 1})), "push {i}");
        let id = Bus::job_id(&url, &commit);
        let recorded =
            warren.wait_recorded(std::slice::from_ref(&id), Duration::from_secs(60))[&id];
        let job = wait_job(warren, &id, Duration::from_secs(10));
        let started = job["started_at_ms"].as_f64().expect("started_at_ms");
        let made = job["enqueued_at_ms"].as_f64().expect("enqueued_at_ms");
        let queued_logged = warren
            .observer
            .as_ref()
            .map(|o| logs::read(&o.log))
            .unwrap_or_default()
            .into_iter()
            .find(|l| l.is("job queued", &id))
            .map(|l| l.at_ms)
            .unwrap_or(f64::NAN);
        to_start.push(started - sent);
        answered.push(answer_read - sent);
        to_made.push(made - sent);
        made_to_start.push(started - made);
        confirmed.push(queued_logged - sent);
        to_recorded.push(recorded - sent);
        before = commit;
        // The runner acks after its result is out: let it go idle.
        std::thread::sleep(Duration::from_millis(100));
    }
    report.fact("pushes.to_start", median(&to_start));
    report.fact("pushes.to_made", median(&to_made));
    report.fact("pushes.made_to_start", median(&made_to_start));
    report.fact("pushes.answered", median(&answered));
    report.fact("pushes.confirmed", median(&confirmed));
    report.add(
        7,
        Row::new(
            "webhook → job start, idle runner",
            Unit::Ms,
            to_start.clone(),
        )
        .target(Target::median_at_most(20.0, "≤ 20 ms median")),
    );
    report.add(
        7,
        Row::new(
            "webhook answered (POST → 202), one commit",
            Unit::Ms,
            answered.clone(),
        ),
    );
    let (before_02, before_1, whence) = match (
        report.get("latency.0.2.to_start"),
        report.get("latency.1.to_start"),
    ) {
        (Some(fast), Some(slow)) => (fast, slow, "scenario 1 of this run".to_string()),
        _ => (
            POLLING_BEFORE.0,
            POLLING_BEFORE.1,
            "scenario 1 in the run of f376ca1".to_string(),
        ),
    };
    report.detail(
        7,
        &format!(
            "**Webhook → test started.** A dispatcher, an observer for its registry \
             (`--server`, `--hooks-http`, the webhook secret in its environment) and one idle \
             runner (test command `true`); a small repository registered with `poll_secs: null` \
             (pushes only). {} times: one `git commit`, then a GitHub push listing that commit, \
             signed (`X-Hub-Signature-256`), POSTed to `/hooks/pushed` over a kept-alive \
             connection; timed from just before the POST to the job's `started_at_ms` (stamped by \
             the runner when the job reaches it; whole milliseconds), and to the answer (`202 \
             {{\"queued\":1}}`) being read. Each push waits for the previous outcome to be \
             recorded, so the runner is idle. **Before** issue 15 there was no webhook path: a \
             commit waited for the observer's next poll, {before_02:.0} ms at the median polling \
             every 0.2 s and {before_1:.0} ms every 1 s ({whence}). Where the time goes:\n\n{}",
            sizes.hook_pushes,
            breakdown_table(
                Unit::Ms,
                &[
                    (
                        "POST → job made by the observer (HTTP, signature, payload, its watcher, state file written ahead)",
                        to_made,
                    ),
                    (
                        "job made → runner started it (publish, routing, delivery)",
                        made_to_start,
                    ),
                    ("**POST → job started**", to_start),
                    (
                        "POST → publish confirmed (observer's `job queued`, after the confirm)",
                        confirmed,
                    ),
                    (
                        "POST → answer read (state saved, delivery id remembered)",
                        answered,
                    ),
                    ("POST → outcome recorded by the dispatcher", to_recorded),
                ],
            )
        ),
    );
}

fn thousand_commit_push(
    sizes: &Sizes,
    report: &mut Report,
    warren: &Warren,
    client: &reqwest::blocking::Client,
    hooks: &str,
) {
    let (count, repeats) = sizes.push_burst;
    let repo = small_repo(&warren.scratch.join("burst"));
    let url = location(&repo.path);
    warren.register("burst", &url, None, Some(SECRET_VAR));
    // Something published first: the burst follows the last published commit.
    let c0 = crate::common::git(&repo.path, &["rev-parse", "HEAD"]);
    let (c1, _) = commit_now(&repo, "published");
    let (status, answer, _, _) = deliver(
        client,
        hooks,
        "burst",
        github_push(&c0, &c1, std::slice::from_ref(&c1), "burst-warm-up"),
    );
    assert_eq!(
        (status, &answer),
        (202, &json!({"queued": 1})),
        "warm-up push"
    );
    wait_job(warren, &Bus::job_id(&url, &c1), Duration::from_secs(30));

    let api = warren.dispatcher.api();
    let mut before = c1;
    let (mut to_answer, mut to_recorded) = (Vec::new(), Vec::new());
    let (mut to_first, mut first_to_last, mut last_to_answer, mut answer_to_recorded) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut recorded_per_s = Vec::new();
    for round in 0..repeats {
        let commits = add_commits(&repo.path, count, &format!("burst {round}"));
        let last = commits.last().expect("commits").clone();
        let listed = &commits[commits.len().saturating_sub(20)..];
        let push = github_push(&before, &last, listed, &format!("burst-{round}"));
        let (status, answer, sent, answer_read) = deliver(client, hooks, "burst", push);
        assert_eq!(
            (status, &answer),
            (202, &json!({"queued": count})),
            "a push of {count} commits listing {}",
            listed.len()
        );
        let ids: HashSet<String> = commits.iter().map(|c| Bus::job_id(&url, c)).collect();
        let last_id = Bus::job_id(&url, &last);
        // Jobs are recorded in publish order: once the last is there, the
        // list is checked for all of them.
        let deadline = Instant::now() + Duration::from_secs(120);
        let recorded = loop {
            let at = now_ms();
            if api.get_json(&format!("/api/jobs/{last_id}")).is_ok() {
                let listed = api
                    .get_json(&format!("/api/jobs?repo=burst&limit={count}"))
                    .unwrap_or(Value::Null);
                let have = listed
                    .as_array()
                    .map(|jobs| {
                        jobs.iter()
                            .filter(|j| j["id"].as_str().is_some_and(|id| ids.contains(id)))
                            .count()
                    })
                    .unwrap_or(0);
                if have == count {
                    break at;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the dispatcher did not record the {count} jobs of the push"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let queued: Vec<f64> = warren
            .observer
            .as_ref()
            .map(|o| logs::read(&o.log))
            .unwrap_or_default()
            .into_iter()
            .filter(|l| {
                l.message == "job queued" && l.field("job").is_some_and(|j| ids.contains(j))
            })
            .map(|l| l.at_ms)
            .collect();
        let first = queued.iter().copied().fold(f64::INFINITY, f64::min);
        let last_queued = queued.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        to_answer.push((answer_read - sent) / 1000.0);
        to_recorded.push((recorded - sent) / 1000.0);
        to_first.push(first - sent);
        first_to_last.push(last_queued - first);
        last_to_answer.push(answer_read - last_queued);
        answer_to_recorded.push(recorded - answer_read);
        recorded_per_s.push(count as f64 / ((recorded - first) / 1000.0));
        before = last;
    }
    let observer_peak = warren
        .observer
        .as_ref()
        .and_then(|o| status_mib(o.pid(), "VmHWM:"))
        .unwrap_or(f64::NAN);
    report.fact("pushes.burst.answer", median(&to_answer));
    report.fact("pushes.burst.to_first", median(&to_first));
    report.fact("pushes.burst.first_to_last", median(&first_to_last));
    report.fact("pushes.burst.recorded", median(&to_recorded));
    report.fact("pushes.burst.recorded_per_s", median(&recorded_per_s));
    report.add(
        7,
        Row::new(
            format!("{count}-commit push (20 listed): POST → 202 {{\"queued\":{count}}}"),
            Unit::Secs,
            to_answer,
        )
        .target(Target::max_at_most(2.0, "≤ 2 s")),
    );
    report.add(
        7,
        Row::new(
            format!("{count}-commit push: POST → all {count} jobs recorded by the dispatcher"),
            Unit::Secs,
            to_recorded,
        )
        .target(Target::max_at_most(2.0, "≤ 2 s")),
    );
    report.detail(
        7,
        &format!(
            "**A {count}-commit push.** The same deployment with its runner stopped (the jobs \
             stay queued), another pushes-only repository with one commit published; {repeats} \
             times, {count} new commits made at once with `git fast-import` and one GitHub push \
             from the last published commit to the newest, listing the last 20 (GitHub's cap: \
             the observer reads the rest from the repository, `git rev-list`). The answer must \
             be `202 {{\"queued\":{count}}}`, sent once every job is confirmed by the broker; \
             \"recorded\" is when the dispatcher's API has all {count} (polled every 10 ms). The \
             observer's peak resident memory after the pushes: {observer_peak:.1} MiB \
             (VmHWM). Where the time goes (the observer logs `job queued` after each confirm):\
             \n\n{}",
            breakdown_table(
                Unit::Ms,
                &[
                    (
                        "POST → first job confirmed (payload, `git rev-list`, state written ahead, publish)",
                        to_first,
                    ),
                    ("first → last job confirmed (publishing)", first_to_last),
                    (
                        "last job confirmed → answer read (state saved, delivery remembered)",
                        last_to_answer,
                    ),
                    ("answer → all recorded by the dispatcher", answer_to_recorded),
                ],
            )
        ),
    );
}

/// A small repository of one commit (three git processes).
fn tiny_repo(at: &std::path::Path, label: &str) -> Repo {
    let repo = Repo::new(at.to_path_buf());
    repo.write("README.md", &format!("# {label}\n"));
    crate::common::git(&repo.path, &["add", "-A"]);
    crate::common::git(&repo.path, &["commit", "-q", "--no-verify", "-m", label]);
    repo
}

fn many_repositories(sizes: &Sizes, report: &mut Report) {
    let many = &sizes.many_repos;
    let (count, poll, window, step) =
        (many.count, many.poll_secs, many.window_secs, many.step_secs);
    let mut warren = Warren::start("bench-many", Setup::new(0, "true"));
    let made = Instant::now();
    for i in 0..count {
        let repo = tiny_repo(
            &warren.scratch.join(&format!("repos/r{i:03}")),
            &format!("r{i}"),
        );
        warren.register(&format!("r{i:03}"), &location(&repo.path), Some(poll), None);
    }
    let made = made.elapsed().as_secs_f64();
    let start = Instant::now();
    warren.start_registry_observer(&[]);
    let observer = warren.observer.as_ref().expect("observer");
    let pid = observer.pid();
    // Every watcher's first poll publishes its repository's head.
    let log = observer.log.clone();
    wait_for(
        &format!("the observer to publish the heads of {count} repositories"),
        Duration::from_secs(120),
        || (logs::count(&log, "job queued") >= count).then_some(()),
    );
    let first_round = start.elapsed().as_secs_f64();
    let startup_cpu = cpu_ticks(pid)
        .map(|(own, children)| (own + children) as f64 / ticks_per_second())
        .unwrap_or(f64::NAN);

    let dispatcher = warren.dispatcher.proc.pid();
    let whole = CpuMark::new(pid);
    let whole_dispatcher = CpuMark::new(dispatcher);
    let windows = (window / step).round().max(1.0) as usize;
    let (mut cpu, mut rss, mut own_cpu, mut git_cpu) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..windows {
        let mark = CpuMark::new(pid);
        std::thread::sleep(Duration::from_secs_f64(step));
        if let Some((own, children)) = mark.as_ref().and_then(CpuMark::percent_since) {
            cpu.push(own + children);
            own_cpu.push(own);
            git_cpu.push(children);
        }
        if let Some(mib) = rss_mib(pid) {
            rss.push(mib);
        }
    }
    let (own, children) = whole
        .as_ref()
        .and_then(CpuMark::percent_since)
        .unwrap_or((f64::NAN, f64::NAN));
    let dispatcher_cpu = whole_dispatcher
        .as_ref()
        .and_then(CpuMark::percent_since)
        .map(|(own, children)| own + children)
        .unwrap_or(f64::NAN);
    let peak = status_mib(pid, "VmHWM:").unwrap_or(f64::NAN);
    let polls = logs::count(&log, "job queued");
    report.fact("pushes.many.cpu", own + children);
    report.fact("pushes.many.own", own);
    report.fact("pushes.many.git", children);
    report.fact("pushes.many.peak", peak);
    report.fact("pushes.many.count", count as f64);
    report.fact("pushes.many.poll", poll);
    let label = format!("{count} repositories polled every {poll} s");
    report.add(
        7,
        Row::new(
            format!("observer CPU, {label} (over {window:.0} s)"),
            Unit::Percent,
            vec![own + children],
        ),
    );
    report.add(
        7,
        Row::new(
            format!("observer CPU, {label} (per {step:.0} s window)"),
            Unit::Percent,
            cpu.clone(),
        ),
    );
    report.add(
        7,
        Row::new(
            format!("observer RSS, {label} (every {step:.0} s)"),
            Unit::MiB,
            rss,
        ),
    );
    report.add(
        7,
        Row::new(
            format!("observer peak RSS (VmHWM), {label}"),
            Unit::MiB,
            vec![peak],
        ),
    );
    report.add(
        7,
        Row::new(
            format!("observer start → the heads of all {count} repositories published"),
            Unit::Secs,
            vec![first_round],
        ),
    );
    let mut out = String::new();
    let _ = write!(
        out,
        "**{count} repositories polled every {poll} s by one observer.** {count} local \
         repositories of one commit each (made and registered with `PUT /api/repos/NAME`, \
         `poll_secs: {poll}`, in {made:.1} s), then the registry observer started (default \
         `--concurrency 8`), no runner. Its first poll of every repository publishes the \
         repository's head: {count} jobs {first_round:.1} s after it started, having used \
         {startup_cpu:.2} s of CPU (itself and its git processes). Then {window:.0} s measured \
         in {step:.0} s windows: CPU is utime + stime from /proc (10 ms ticks) of the observer \
         and of the git processes it waited for, in % of one core; over the whole window \
         {:.2} % (itself {own:.2} %, git {children:.2} %), the dispatcher answering the \
         registry reads every 2 s {dispatcher_cpu:.2} %. No commit was added, so every later \
         poll found nothing new ({polls} jobs in all). Peak resident memory (VmHWM) \
         {peak:.1} MiB. Per window:\n\n{}",
        own + children,
        breakdown_table(
            Unit::Percent,
            &[
                ("observer and its git processes", cpu),
                ("observer itself", own_cpu),
                ("its git processes", git_cpu),
            ],
        )
    );
    report.detail(7, &out);
}
