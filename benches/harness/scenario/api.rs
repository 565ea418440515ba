//! Scenario 6: the dashboard and the API with 100,000 jobs in the store.
//!
//! The store is filled directly: the dispatcher creates its schema on a
//! first start and is stopped, then the `sqlite3` command-line tool inserts
//! the jobs in one statement (publishing 100,000 jobs through the broker
//! would take minutes and measure the broker, not the API), and the
//! dispatcher starts again on that store.

use std::time::{Duration, Instant};

use crate::common::{Dispatcher, Namespace, Scratch};
use crate::harness::generate::StoreAt;
use crate::harness::report::{Row, Target, Unit};
use crate::harness::system::rss_mib;
use crate::harness::{Report, Sizes};

/// Fills the store in `data_dir` with `count` finished jobs.
fn fill_store(data_dir: &std::path::Path, count: usize) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let base = now_ms.saturating_sub(count as u64 * 1000);
    let sql = format!(
        "PRAGMA journal_mode=WAL;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count})
         INSERT INTO jobs (id, repo, branch, commit_id, subject, author, status, attempts,
                           duplicates, runner, enqueued_at_ms, started_at_ms, finished_at_ms,
                           duration_ms, exit_code, truncated)
         SELECT lower(hex(randomblob(8))), '/srv/git/bench-project',
                CASE WHEN i % 10 = 0 THEN 'dev' ELSE 'main' END,
                lower(hex(randomblob(20))),
                'Change number ' || i || ' of the benchmark history',
                'Warren Bench',
                CASE WHEN i % 97 = 0 THEN 'error' WHEN i % 20 = 0 THEN 'failed' ELSE 'passed' END,
                1, 0, 'runner-' || (i % 8),
                {base} + i * 1000, {base} + i * 1000 + 40, {base} + i * 1000 + 1540, 1500,
                CASE WHEN i % 20 = 0 THEN 1 ELSE 0 END, 0
         FROM n;
         SELECT count(*) FROM jobs;"
    );
    let db = data_dir.join("warren.db");
    let rows = StoreAt::Sqlite(&db).count(&sql);
    assert!(
        rows >= count as i64,
        "the store holds {rows} jobs, wanted {count}"
    );
}

/// Times `n` GETs of `path` (after one untimed warm-up), in ms.
pub fn time_requests(
    client: &reqwest::blocking::Client,
    base: &str,
    path: &str,
    n: usize,
) -> Vec<f64> {
    let url = format!("{base}{path}");
    let get = || {
        let response = client.get(&url).send().expect("request");
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.bytes().expect("body").len()
    };
    get();
    (0..n)
        .map(|_| {
            let clock = Instant::now();
            get();
            clock.elapsed().as_secs_f64() * 1000.0
        })
        .collect()
}

/// The same-site resources the page at `/` loads (`src=`/`href=` under
/// `/assets/`), in order.
fn page_assets(html: &str) -> Vec<String> {
    let mut assets = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        for (at, _) in html.match_indices(attribute) {
            let rest = &html[at + attribute.len()..];
            if let Some(end) = rest.find('"') {
                let url = &rest[..end];
                if url.starts_with("/assets/")
                    && !url.ends_with(".svg")
                    && !assets.iter().any(|a| a == url)
                {
                    assets.push(url.to_string());
                }
            }
        }
    }
    assets
}

/// Times loading the jobs page as a browser with an empty cache would,
/// one request after the other: the HTML, its scripts and style sheet,
/// then the first page of jobs its script asks for (`jobs.js`:
/// `/api/jobs?limit=51`). In ms.
fn time_page_loads(client: &reqwest::blocking::Client, base: &str, n: usize) -> (Vec<f64>, usize) {
    let get = |path: &str| -> String {
        let response = client.get(format!("{base}{path}")).send().expect("request");
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.text().expect("body")
    };
    let load = || {
        let html = get("/");
        let assets = page_assets(&html);
        for asset in &assets {
            get(asset);
        }
        get("/api/jobs?limit=51");
        assets.len()
    };
    let assets = load();
    let samples = (0..n)
        .map(|_| {
            let clock = Instant::now();
            load();
            clock.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    (samples, assets)
}

pub fn run(sizes: &Sizes, report: &mut Report) {
    let ns = Namespace::new("bench-api");
    let scratch = Scratch::new();
    let mut first = Dispatcher::start(&ns, &scratch, &[]);
    first.proc.signal(libc::SIGTERM);
    first.proc.wait_exit(Duration::from_secs(30));
    let data_dir = first.data_dir.clone();
    let fill = Instant::now();
    fill_store(&data_dir, sizes.store_jobs);
    let fill_seconds = fill.elapsed().as_secs_f64();

    let start = Instant::now();
    let dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let start_seconds = start.elapsed().as_secs_f64();
    let api = dispatcher.api();
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");

    let middle = sizes.store_jobs / 2;
    let deep = api
        .get_json(&format!("/api/jobs?before={middle}&limit=1"))
        .expect("a job deep in the history");
    let deep = &deep[0];
    let deep_id = deep["id"].as_str().expect("id").to_string();
    let deep_commit = deep["commit"].as_str().expect("commit")[..12].to_string();

    let n = sizes.api_requests;
    let first_page = time_requests(&client, &dispatcher.url, "/api/jobs", n);
    let endpoints = [
        (
            "GET /api/jobs?limit=1000",
            "/api/jobs?limit=1000".to_string(),
        ),
        (
            "GET /api/jobs?status=failed (first page)",
            "/api/jobs?status=failed".into(),
        ),
        (
            "GET /api/jobs?branch=dev (first page)",
            "/api/jobs?branch=dev".into(),
        ),
        (
            "GET /api/jobs?before=… (a page halfway back)",
            format!("/api/jobs?before={middle}"),
        ),
        ("GET /api/jobs/{id}", format!("/api/jobs/{deep_id}")),
        (
            "GET /api/jobs/{abbreviated commit}",
            format!("/api/jobs/{deep_commit}"),
        ),
    ];
    let store = if sizes.store_jobs >= 1000 {
        format!("{},{:03}", sizes.store_jobs / 1000, sizes.store_jobs % 1000)
    } else {
        sizes.store_jobs.to_string()
    };
    report.add(
        6,
        Row::new(
            format!("GET /api/jobs (first page, 50 jobs), {store} jobs stored"),
            Unit::Ms,
            first_page,
        )
        .target(Target::median_at_most(50.0, "≤ 50 ms")),
    );
    for (name, path) in &endpoints {
        report.add(
            6,
            Row::new(
                name.to_string(),
                Unit::Ms,
                time_requests(&client, &dispatcher.url, path, n),
            ),
        );
    }
    let (page, assets) = time_page_loads(&client, &dispatcher.url, n);
    report.add(
        6,
        Row::new(
            format!("jobs page: GET / + {assets} assets + its /api/jobs call"),
            Unit::Ms,
            page,
        ),
    );
    let rss = rss_mib(dispatcher.proc.pid()).unwrap_or(f64::NAN);
    report.add(
        5,
        Row::new(
            format!("dispatcher RSS with {store} jobs stored, after the API requests"),
            Unit::MiB,
            vec![rss],
        )
        .target(Target::max_at_most(50.0, "≤ 50 MiB")),
    );
    report.detail(
        6,
        &format!(
            "{store} finished jobs (5 % failed, 1 % error, 10 % on `dev`) written into the \
             dispatcher's SQLite store with the `sqlite3` tool in {fill_seconds:.1} s, then the \
             dispatcher started on it (API answering after {start_seconds:.2} s). Each endpoint: \
             one untimed request, then {n} timed ones, one at a time over a kept-alive \
             connection, measured by the client (request sent → whole body read)."
        ),
    );
}
