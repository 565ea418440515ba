//! Issue 20: the commit page (the pipeline as a graph, and a timeline) and
//! the trend charts, in a real headless Chromium against a real
//! dispatcher, runners, observer and broker. Screenshots of each page are
//! saved in the test's scratch dir and copied to `$WARREN_SCREENSHOTS`
//! when set (the README's come from there).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::browser::*;
use common::*;
use serde_json::{json, Value};

/// `build` waits for a mark the test makes, so the page is seen while the
/// pipeline runs; `test` is a matrix of two and `suite` a split job (its
/// list, two batches and its gate): one node each; `package` needs three.
const PIPELINE: &str = r#"jobs:
  build:
    run: until test -f "$MARKS/go"; do sleep 0.1; done; echo built
  test:
    run: echo "test $MATRIX_V"
    needs: [build]
    matrix:
      v: [1, 2]
  lint:
    run: echo lint
  suite:
    split:
      list: printf 's1\ns2\ns3\ns4\n'
      run: echo {tests}
      parallel: 2
  package:
    run: echo package
    needs: [test, lint, suite]
"#;

/// The node a job is drawn in, by the page's rule: a matrix job's `(…)`
/// and a split job's `[…]` dropped.
fn node_of(name: &str) -> String {
    let mut name = name.to_string();
    if name.ends_with(']') {
        if let Some(at) = name.rfind(" [") {
            name.truncate(at);
        }
    }
    if name.ends_with(')') {
        if let Some(at) = name.rfind(" (") {
            name.truncate(at);
        }
    }
    name
}

/// The edges `needs` calls for, between nodes.
fn expected_edges(view: &Value) -> BTreeSet<(String, String)> {
    let mut edges = BTreeSet::new();
    for job in view["jobs"].as_array().expect("jobs") {
        let to = node_of(job["name"].as_str().expect("name"));
        for need in job["needs"].as_array().expect("needs") {
            let from = node_of(need.as_str().expect("need"));
            if from != to {
                edges.insert((from, to.clone()));
            }
        }
    }
    edges
}

fn graph_on_page(browser: &Browser) -> Value {
    browser.exec(
        "const nodes = {};
         for (const g of document.querySelectorAll('#graph g.node')) {
           nodes[g.dataset.node] = { status: g.dataset.status, jobs: Number(g.dataset.jobs),
                                     detail: g.querySelector('.node-detail').textContent };
         }
         const edges = [...document.querySelectorAll('#graph path.edge')]
           .map((p) => [p.dataset.from, p.dataset.to]);
         return { nodes, edges };",
        json!([]),
    )
}

fn node_status(graph: &Value, node: &str) -> String {
    graph["nodes"][node]["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_commit_page_draws_the_pipeline_live_and_the_trends_match_the_api() {
    let chromedriver = require_chromium();
    let ns = Namespace::new("dashboard-graph");
    let scratch = Scratch::new();
    let marks = scratch.join("marks");
    std::fs::create_dir_all(&marks).expect("marks");
    let repo = Repo::new(scratch.join("repo"));
    repo.write(
        ".warren.yml",
        &PIPELINE.replace("$MARKS", marks.to_str().expect("utf8")),
    );
    let commit = repo.commit("a pipeline to draw");
    let dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let _runners: Vec<Proc> = (1..=2)
        .map(|i| runner(&ns, &scratch, &format!("r{i}"), &[]))
        .collect();
    let _observer = observer(&ns, &scratch, repo.path_str(), &[]);
    let api = dispatcher.api();

    let unknown = reqwest::blocking::get(format!("{}/commits/{}", dispatcher.url, "f".repeat(40)))
        .expect("GET an unknown commit");
    assert_eq!(unknown.status().as_u16(), 404);

    let running = wait_for("build to run", Duration::from_secs(90), || {
        let view = api.get_json(&format!("/api/commits/{commit}")).ok()?;
        let jobs = by_name(&view);
        (jobs.get("build")?["status"] == "running").then_some(view)
    });

    let browser = Browser::start(&chromedriver, &scratch);
    browser.goto(&format!("{}/commits/{commit}", dispatcher.url));
    browser.exec("window.__sameDocument = 'yes'", json!([]));
    let graph = browser.wait_until(
        "the graph while build runs",
        Duration::from_secs(20),
        || {
            let graph = graph_on_page(&browser);
            (node_status(&graph, "build") == "running" && node_status(&graph, "test") == "waiting")
                .then(|| graph.clone())
                .ok_or(format!("{graph}"))
        },
    );
    // One node per job, the matrix grouped; the edges are `needs`.
    let nodes: BTreeSet<&str> = graph["nodes"]
        .as_object()
        .expect("nodes")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        nodes,
        BTreeSet::from(["plan", "build", "test", "lint", "suite", "package"]),
        "{graph}"
    );
    assert_eq!(graph["nodes"]["test"]["jobs"], 2, "{graph}");
    let detail = graph["nodes"]["test"]["detail"]
        .as_str()
        .unwrap_or_default();
    assert!(
        detail.contains("build"),
        "a waiting node says what it waits for: {detail:?}"
    );
    let edges: BTreeSet<(String, String)> = graph["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| {
            (
                e[0].as_str().unwrap_or_default().to_string(),
                e[1].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let expected = expected_edges(&running);
    assert_eq!(
        expected,
        BTreeSet::from([
            ("build".to_string(), "test".to_string()),
            ("lint".to_string(), "package".to_string()),
            ("suite".to_string(), "package".to_string()),
            ("test".to_string(), "package".to_string()),
        ]),
        "the API's needs, grouped"
    );
    assert_eq!(edges, expected, "the graph's edges are the needs");
    let (path, png) = browser.screenshot("commit-running.png");
    assert_png_not_blank(&path, &png);

    // The rest runs while the page is open: nodes change state live.
    std::fs::write(marks.join("go"), "").expect("mark");
    let mut statuses_of_test: Vec<String> = Vec::new();
    browser.wait_until("every node passed", Duration::from_secs(90), || {
        let graph = graph_on_page(&browser);
        let test = node_status(&graph, "test");
        if statuses_of_test.last() != Some(&test) {
            statuses_of_test.push(test);
        }
        let all_passed = graph["nodes"]
            .as_object()
            .is_some_and(|nodes| nodes.values().all(|n| n["status"] == "passed"));
        all_passed.then_some(()).ok_or(format!("{graph}"))
    });
    assert_eq!(
        statuses_of_test.first().map(String::as_str),
        Some("waiting"),
        "{statuses_of_test:?}"
    );
    assert_eq!(
        browser.exec("return window.__sameDocument", json!([])),
        "yes",
        "the page was not reloaded"
    );

    // The timeline: one bar per job, a running bar for each job that ran.
    let view = wait_verdict(&api, &commit, Duration::from_secs(30));
    assert_eq!(view["status"], "passed", "{view:#}");
    let jobs = view["jobs"].as_array().expect("jobs").len();
    let batches: Vec<String> = by_name(&view)
        .into_keys()
        .filter(|name| name.starts_with("suite [") && name != "suite [list]")
        .collect();
    assert!(batches.len() >= 2, "{batches:?}");
    assert_eq!(
        jobs,
        8 + batches.len(),
        "plan, build, two tests, lint, the suite's list, batches and gate, package: {view:#}"
    );
    assert_eq!(
        browser.exec(
            "return Number(document.querySelector('#graph g.node[data-node=\"suite\"]').dataset.jobs)",
            json!([])
        ),
        2 + batches.len(),
        "the split job's list, batches and gate are one node"
    );
    // A gate ends when its batches have, without a runner: no bar of its own.
    let started = view["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter(|job| job["started_at_ms"].is_i64())
        .count();
    let timeline = browser.wait_until("the finished timeline", Duration::from_secs(20), || {
        let timeline = browser.exec(
            "const chart = Chart.getChart(document.getElementById('timeline'));
             return chart && { bars: chart.data.labels.length,
                               ran: chart.data.datasets[1].data.filter((d) => d).length,
                               rows: document.querySelectorAll('#timeline-table tr').length,
                               labels: chart.data.labels };",
            json!([]),
        );
        (timeline["ran"] == started)
            .then(|| timeline.clone())
            .ok_or(format!("{timeline}"))
    });
    assert_eq!(timeline["bars"], jobs, "{timeline}");
    let labels: Vec<&str> = timeline["labels"]
        .as_array()
        .expect("labels")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for batch in &batches {
        assert!(
            labels
                .iter()
                .any(|label| label.starts_with(&format!("{batch} ·"))),
            "the split job's batches each have a bar: {labels:?}"
        );
    }
    assert_eq!(timeline["rows"], jobs, "{timeline}");
    let (path, png) = browser.screenshot("commit.png");
    assert_png_not_blank(&path, &png);
    // The job page links to its commit's page.
    let build = &by_name(&view)["build"];
    browser.goto(&format!(
        "{}/jobs/{}",
        dispatcher.url,
        build["id"].as_str().expect("id")
    ));
    let link = browser.wait_until(
        "the link to the commit page",
        Duration::from_secs(20),
        || {
            let href = browser.exec(
            "const a = document.getElementById('commit-link'); return a && a.getAttribute('href');",
            json!([]),
        );
            href.as_str()
                .filter(|h| h.starts_with("/commits/"))
                .map(str::to_string)
                .ok_or(format!("{href}"))
        },
    );
    assert_eq!(link, format!("/commits/{commit}"));

    // Three more commits, the last with a failing lint (so `package` is
    // skipped): the trends get several runs and a red dot.
    for (n, lint) in ["echo lint", "echo lint", "exit 1"].iter().enumerate() {
        repo.write(
            ".warren.yml",
            &PIPELINE
                .replace("$MARKS", marks.to_str().expect("utf8"))
                .replace("run: echo lint", &format!("run: {lint}")),
        );
        let next = repo.commit(&format!("change {n}"));
        let view = wait_verdict(&api, &next, Duration::from_secs(60));
        let want = if *lint == "exit 1" {
            "failed"
        } else {
            "passed"
        };
        assert_eq!(view["status"], want, "{view:#}");
    }

    // The front page's trends: as many points as the API gives.
    browser.goto(&format!("{}/", dispatcher.url));
    browser.wait_until(
        "the job names to choose from",
        Duration::from_secs(30),
        || {
            let chosen = browser.exec(
                "const select = document.getElementById('trend-name');
             if (![...select.options].some((o) => o.value === 'lint')) return null;
             select.value = 'lint';
             select.dispatchEvent(new Event('change'));
             return select.value;",
                json!([]),
            );
            (chosen == "lint").then_some(()).ok_or(format!("{chosen}"))
        },
    );
    let shown = browser.wait_until("the trend charts", Duration::from_secs(30), || {
        let trends = api.get_json("/api/trends").map_err(|e| e.to_string())?;
        let shown = browser.exec(
            "const get = (id) => Chart.getChart(document.getElementById(id));
             const d = get('durations-chart'), p = get('pass-rate-chart'), l = get('load-chart');
             if (!d || !p || !l || document.getElementById('trends').hidden) return null;
             return { name: document.getElementById('trend-name').value,
                      runs: d.data.datasets[0].data.length,
                      run_rows: document.querySelectorAll('#durations-table tr').length,
                      days: p.data.labels.length,
                      day_rows: document.querySelectorAll('#pass-rate-table tr').length,
                      samples: l.data.datasets[0].data.length,
                      sample_rows: document.querySelectorAll('#load-table tr').length };",
            json!([]),
        );
        if shown.is_null() {
            return Err("no charts yet".into());
        }
        let durations = trends["durations"].as_array().cloned().unwrap_or_default();
        let chosen = durations
            .iter()
            .find(|d| d["name"] == shown["name"])
            .ok_or(format!("{shown} not in {trends}"))?;
        let want = json!({
            "name": shown["name"],
            "runs": chosen["runs"].as_array().map_or(0, Vec::len),
            "run_rows": chosen["runs"].as_array().map_or(0, Vec::len),
            "days": trends["pass_rate"].as_array().map_or(0, Vec::len),
            "day_rows": trends["pass_rate"].as_array().map_or(0, Vec::len),
            "samples": trends["load"].as_array().map_or(0, Vec::len),
            "sample_rows": trends["load"].as_array().map_or(0, Vec::len),
        });
        let has_points = want["runs"].as_u64() > Some(0)
            && want["days"].as_u64() > Some(0)
            && want["samples"].as_u64() > Some(0);
        (shown == want && has_points)
            .then(|| (shown.clone(), trends.clone()))
            .ok_or(format!("page {shown} API {want}"))
    });
    let (shown, trends) = shown;
    let names: Vec<&str> = trends["durations"]
        .as_array()
        .expect("durations")
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    for name in ["plan", "build", "lint", "package"] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    assert_eq!(trends["branch"], "main", "{trends}");
    assert_eq!(shown["name"], "lint", "{shown}");
    assert_eq!(shown["runs"], 4, "lint ran once per commit: {shown}");
    let ended: u64 = trends["pass_rate"]
        .as_array()
        .expect("pass_rate")
        .iter()
        .filter_map(|day| day["total"].as_u64())
        .sum();
    let with_outcome = api
        .get_json("/api/jobs?limit=1000")
        .expect("jobs")
        .as_array()
        .expect("jobs")
        .iter()
        .filter(|job| {
            ["passed", "failed", "error", "timeout"]
                .contains(&job["status"].as_str().unwrap_or_default())
        })
        .count();
    assert_eq!(
        ended as usize, with_outcome,
        "every job that ended with an outcome, the skipped package not: {trends}"
    );
    browser.exec(
        "document.getElementById('trends').scrollIntoView()",
        json!([]),
    );
    let (path, png) = browser.screenshot("trends.png");
    assert_png_not_blank(&path, &png);
    let errors = console_errors(&browser);
    assert!(errors.is_empty(), "the browser console: {errors:?}");

    // Per repository: the same figures when asked for this repository,
    // none for a registered-looking name that is no repository.
    let of_repo = api
        .get_json(&format!("/api/trends?repo={}", repo.path_str()))
        .expect("trends of the repository");
    assert_eq!(of_repo["repo"], repo.path_str(), "{of_repo}");
    assert_eq!(of_repo["pass_rate"], trends["pass_rate"], "{of_repo}");
    let unknown =
        reqwest::blocking::get(format!("{}/api/trends?repo=no-such-repo", dispatcher.url))
            .expect("GET /api/trends");
    assert_eq!(unknown.status().as_u16(), 404);

    // Bad input is a JSON error naming the parameter.
    let bad = reqwest::blocking::get(format!("{}/api/trends?branch=..", dispatcher.url))
        .expect("GET /api/trends");
    assert_eq!(bad.status().as_u16(), 400);
    let body: Value = bad.json().expect("JSON error");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("branch:"),
        "{body}"
    );
}
