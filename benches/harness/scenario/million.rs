//! Scenario 11: a dispatcher on a store of a million jobs (issue 19), on
//! SQLite and on PostgreSQL: the API's pages, one job, the `/metrics`
//! scrape, start to ready, and the memory it takes.
//!
//! The store is made by `warren migrate` and filled by the history
//! generator (`harness::generate`), then the dispatcher starts on it.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::browser::{require_chromium, Browser};
use crate::common::{Dispatcher, Namespace, PgDatabase, Scratch, WARREN};
use crate::harness::generate::{self, StoreAt};
use crate::harness::report::{Row, Target, Unit};
use crate::harness::scenario::api::time_requests;
use crate::harness::system::rss_mib;
use crate::harness::{Report, Sizes};

const SCENARIO: u8 = 11;

/// Run in every page before its own scripts: notes when the table
/// `tbody` (by id) first has rows (ms since the navigation started). The
/// jobs page fills `job-rows` once its first page is drawn; the commit
/// page fills `timeline-table` last, after its graph and its chart.
fn mark_rows(tbody: &str) -> String {
    format!(
        "new MutationObserver((_, watch) => {{ \
           const rows = document.getElementById('{tbody}'); \
           if (rows && rows.children.length > 0) {{ window.__rowsAt = performance.now(); watch.disconnect(); }} \
         }}).observe(document, {{ childList: true, subtree: true }});"
    )
}

/// Opens `page` `n` times (after one untimed) in headless Chromium: from
/// navigation start to the first rows in its table `tbody`.
fn page_renders(scratch: &Scratch, page: &str, tbody: &str, n: usize) -> Vec<f64> {
    let browser = Browser::start(&require_chromium(), scratch);
    browser
        .session(
            "POST",
            "/goog/cdp/execute",
            Some(json!({
                "cmd": "Page.addScriptToEvaluateOnNewDocument",
                "params": { "source": mark_rows(tbody) },
            })),
        )
        .expect("chromedriver runs a script in every new page");
    let mut samples: Vec<f64> = (0..=n)
        .map(|_| {
            browser.goto(page);
            browser.wait_until("the page's rows", Duration::from_secs(20), || {
                browser
                    .exec("return window.__rowsAt ?? null", json!([]))
                    .as_f64()
                    .ok_or_else(|| "no rows yet".to_string())
            })
        })
        .collect();
    samples.remove(0);
    samples
}

/// The thousands, separated: 1,000,000.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

pub fn run(sizes: &Sizes, report: &mut Report) {
    measure("SQLite", sizes, report);
    measure("PostgreSQL", sizes, report);
}

fn measure(backend: &str, sizes: &Sizes, report: &mut Report) {
    let ns = Namespace::new("bench-million");
    let scratch = Scratch::new();
    let data_dir = scratch.join("dispatcher-data");
    std::fs::create_dir_all(&data_dir).expect("data dir");
    let sqlite_file = data_dir.join("warren.db");
    let database = (backend == "PostgreSQL").then(|| PgDatabase::new("bench_million"));
    let url = match &database {
        Some(db) => db.url.clone(),
        None => format!("sqlite:{}", sqlite_file.display()),
    };
    let out = Command::new(WARREN)
        .args(["migrate", "--store", &url])
        .output()
        .expect("run warren migrate");
    assert!(
        out.status.success(),
        "warren migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let count = sizes.million_jobs;
    let fill = Instant::now();
    let store = match &database {
        Some(db) => StoreAt::Postgres(db),
        None => StoreAt::Sqlite(&sqlite_file),
    };
    generate::fill(&store, count);
    let fill_seconds = fill.elapsed().as_secs_f64();
    let big = generate::big_pipeline(&store);

    let clock = Instant::now();
    let dispatcher = Dispatcher::start_at(&ns, &scratch, data_dir, &["--store", &url], &[]);
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = client
            .get(format!("{}/readyz", dispatcher.url))
            .send()
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dispatcher on {backend} was not ready within 60 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let ready_ms = clock.elapsed().as_secs_f64() * 1000.0;

    let deep = generate::seq_at(count, 0.1);
    let one = dispatcher
        .api()
        .get_json(&format!("/api/jobs?before={deep}&limit=1"))
        .expect("a job deep in the history");
    let one_id = one[0]["id"].as_str().expect("id").to_string();
    // A service (1 % of the history) with failed jobs, so the filtered
    // page has rows to find.
    let service = (0..20)
        .map(generate::service)
        .find(|service| {
            dispatcher
                .api()
                .get_json(&format!("/api/jobs?status=failed&repo={service}&limit=1"))
                .ok()
                .and_then(|page| page.as_array().map(|jobs| !jobs.is_empty()))
                .unwrap_or(false)
        })
        .expect("the generator made failed jobs in some service");

    let jobs = thousands(count);
    let n = sizes.million_requests;
    let p99 = || Target::p99_at_most(50.0, "≤ 50 ms p99");
    let pages = [
        ("GET /api/jobs (first page)", "/api/jobs".to_string(), p99()),
        (
            "GET /api/jobs?status=failed&repo=… (a service with 1 % of the jobs)",
            format!("/api/jobs?status=failed&repo={service}"),
            p99(),
        ),
        (
            "GET /api/jobs?status=error&repo=…&branch=… (the monorepo, a feature branch: few jobs)",
            format!(
                "/api/jobs?status=error&repo={}&branch=feature-101",
                generate::MONOREPO
            ),
            p99(),
        ),
        (
            "GET /api/jobs?before=… (a page 90 % back in history)",
            format!("/api/jobs?before={deep}"),
            p99(),
        ),
        ("GET /api/jobs/{id}", format!("/api/jobs/{one_id}"), p99()),
        (
            "GET /api/commits/{sha} (a pipeline of 64 jobs)",
            format!("/api/commits/{big}"),
            p99(),
        ),
        (
            "GET /api/trends (reads the newest 7,000 jobs)",
            "/api/trends".to_string(),
            Target::p99_at_most(250.0, "≤ 250 ms p99"),
        ),
        (
            "GET /metrics",
            "/metrics".to_string(),
            Target::p99_at_most(5.0, "≤ 5 ms p99"),
        ),
    ];
    for (name, path, target) in pages {
        report.add(
            SCENARIO,
            Row::new(
                format!("{jobs} jobs, {backend}: {name}"),
                Unit::Ms,
                time_requests(&client, &dispatcher.url, &path, n),
            )
            .target(target),
        );
    }
    report.add(
        SCENARIO,
        Row::new(
            format!("{jobs} jobs, {backend}: dashboard's first page rendered (headless Chromium)"),
            Unit::Ms,
            page_renders(
                &scratch,
                &format!("{}/", dispatcher.url),
                "job-rows",
                sizes.million_renders,
            ),
        )
        .target(Target::max_at_most(500.0, "≤ 500 ms")),
    );
    report.add(
        SCENARIO,
        Row::new(
            format!("{jobs} jobs, {backend}: commit page of a 64-job pipeline rendered, graph and timeline (headless Chromium)"),
            Unit::Ms,
            page_renders(
                &scratch,
                &format!("{}/commits/{big}", dispatcher.url),
                "timeline-table",
                sizes.million_renders,
            ),
        )
        .target(Target::max_at_most(300.0, "≤ 300 ms (issue 20)")),
    );
    report.add(
        SCENARIO,
        Row::new(
            format!("{jobs} jobs, {backend}: dispatcher start → ready (/readyz)"),
            Unit::Ms,
            vec![ready_ms],
        )
        .target(Target::max_at_most(2000.0, "≤ 2 s")),
    );
    let key = backend.to_lowercase();
    report.fact(&format!("million.{key}.ready_ms"), ready_ms);
    report.fact(&format!("million.{key}.fill_s"), fill_seconds);
    let rss = rss_mib(dispatcher.proc.pid()).unwrap_or(f64::NAN);
    report.add(
        SCENARIO,
        Row::new(
            format!("{jobs} jobs, {backend}: dispatcher RSS after the requests"),
            Unit::MiB,
            vec![rss],
        )
        .target(Target::max_at_most(100.0, "≤ 100 MiB")),
    );
    report.detail(
        SCENARIO,
        &format!(
            "**{backend}.** {jobs} finished jobs made by the history generator \
             (`benches/harness/generate.rs`: `warren migrate`, then one `INSERT … SELECT` \
             through the real schema, indexes and triggers) in {fill_seconds:.1} s. Each \
             request: one untimed, then {n} timed, one at a time over a kept-alive \
             connection, measured by the client (request sent → whole body read). The \
             dashboard: the jobs page opened {renders} times (after one untimed) in headless \
             Chromium, from navigation start to its table's first rows (a script run before \
             the page's own notes the moment); the commit page of a pipeline of 64 jobs \
             (`generate::big_pipeline`: a planning job, 8 builds, 48 tests needing every \
             build, 6 lints, a package needing all of them) the same way, to the timeline's \
             table, which is filled after the graph and the chart are drawn.\n",
            renders = sizes.million_renders
        ),
    );
}
