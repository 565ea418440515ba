//! Issue 18: a job's tests split into batches that runners pull from the
//! queue. Real broker, git, binary and runners (the harness's: without the
//! sandbox, so a job can see a file of the test's). The
//! suite's script sleeps per test, fails `*fail*` tests, and fails
//! `*flaky*` tests unless run alone (so the retry alone passes); with
//! `--junit` it writes a JUnit report to `$WARREN_JUNIT`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::Value;

const RUN_TESTS: &str = r#"#!/bin/sh
junit=
if [ "$1" = --junit ]; then junit=1; shift; fi
n=$#
cases=
rc=0
for t in "$@"; do
  sleep 0.3
  ok=1
  case "$t" in
    *fail*) ok=0 ;;
    *flaky*) [ "$n" -gt 1 ] && ok=0 ;;
  esac
  echo "$t ok=$ok (batch of $n)"
  if [ "$ok" = 1 ]; then
    cases="$cases<testcase classname=\"suite\" name=\"$t\" time=\"0.3\"/>"
  else
    cases="$cases<testcase classname=\"suite\" name=\"$t\" time=\"0.3\"><failure/></testcase>"
    rc=1
  fi
done
if [ -n "$junit" ]; then printf '<testsuite>%s</testsuite>\n' "$cases" > "$WARREN_JUNIT"; fi
exit $rc
"#;

const PIPELINE: &str = r#"flaky: fail
jobs:
  unit:
    split:
      list: cat tests.txt
      run: sh ./run-tests.sh --junit {tests}
  plain:
    split:
      list: cat plain.txt
      run: sh ./run-tests.sh {tests}
      parallel: 2
  after:
    needs: [unit]
    run: echo after
"#;

/// `GET /api/jobs/{id}/tests` as test id → (status, attempts).
fn tests_of(api: &Api, job: &Value) -> HashMap<String, (String, u64)> {
    let id = job["id"].as_str().expect("id");
    let tests = api
        .get_json(&format!("/api/jobs/{id}/tests"))
        .expect("tests");
    tests
        .as_array()
        .expect("a list")
        .iter()
        .map(|t| {
            (
                t["test"].as_str().expect("test").to_string(),
                (
                    t["status"].as_str().expect("status").to_string(),
                    t["attempts"].as_u64().expect("attempts"),
                ),
            )
        })
        .collect()
}

#[test]
fn a_split_suite_runs_every_test_once_over_three_runners_one_killed_retries_failures_and_finds_flaky_ones(
) {
    let ns = Namespace::new("split");
    let scratch = Scratch::new();
    let repo = Repo::new(scratch.join("repo"));
    repo.write("run-tests.sh", RUN_TESTS);
    let unit: Vec<String> = (1..=18)
        .map(|i| match i {
            5 => "t05_fail".to_string(),
            7 => "t07_flaky".to_string(),
            i => format!("t{i:02}"),
        })
        .collect();
    repo.write(
        "tests.txt",
        &format!(
            "collected:\n{}\n18 tests collected in 0.01s\n",
            unit.join("\n")
        ),
    );
    let plain: Vec<String> = (1..=12)
        .map(|i| match i {
            3 => "p03_flaky".to_string(),
            i => format!("p{i:02}"),
        })
        .collect();
    repo.write("plain.txt", &format!("{}\n", plain.join("\n")));
    repo.write(".warren.yml", PIPELINE);
    let first = repo.commit("a split suite");

    let dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let mut runners: Vec<Proc> = (1..=3)
        .map(|i| runner(&ns, &scratch, &format!("r{i}"), &[]))
        .collect();
    let _observer = observer(&ns, &scratch, repo.path_str(), &[]);
    let api = dispatcher.api();

    // A runner is killed in the middle of a batch: the broker gives the
    // batch to another runner.
    let (batch, victim) = wait_for("a batch running", Duration::from_secs(90), || {
        let view = api.get_json(&format!("/api/commits/{first}")).ok()?;
        view["jobs"].as_array()?.iter().find_map(|job| {
            let name = job["name"].as_str()?;
            (name.starts_with("unit [") && job["status"] == "running").then(|| {
                (
                    name.to_string(),
                    job["runner"].as_str().unwrap_or_default().to_string(),
                )
            })
        })
    });
    let mut killed = take_runner(&mut runners, &victim);
    killed.signal(libc::SIGKILL);
    killed.wait_exit(Duration::from_secs(10));

    let view = wait_verdict(&api, &first, Duration::from_secs(180));
    assert_eq!(view["status"], "failed", "{view:#}");
    let jobs = by_name(&view);
    let status = |name: &str| {
        jobs[name]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(status("unit [list]"), "passed");
    assert_eq!(status("unit"), "failed", "t05_fail fails: {view:#}");
    assert_eq!(status("after"), "skipped");
    assert_eq!(
        jobs[&batch]["status"], "passed",
        "the killed runner's batch ran again elsewhere: {view:#}"
    );

    // Every listed test reported once, with its merged status.
    let unit_tests = tests_of(&api, &jobs["unit"]);
    assert_eq!(unit_tests.len(), unit.len(), "{unit_tests:?}");
    for test in &unit {
        let (status, attempts) = &unit_tests[test];
        let expected = match test.as_str() {
            "t05_fail" => ("failed", 2),
            "t07_flaky" => ("flaky", 2),
            _ => ("passed", 1),
        };
        assert_eq!((status.as_str(), *attempts), expected, "{test}");
    }
    // Without a JUnit report: the batch's verdict for each of its tests;
    // a failed batch's tests are each retried alone, so p03_flaky and its
    // batch mates (which cannot be told apart) end flaky, the others
    // passed.
    let plain_tests = tests_of(&api, &jobs["plain"]);
    assert_eq!(plain_tests.len(), plain.len(), "{plain_tests:?}");
    let flaky: Vec<&String> = plain
        .iter()
        .filter(|t| plain_tests[*t].0 == "flaky")
        .collect();
    assert!(flaky.contains(&&"p03_flaky".to_string()), "{plain_tests:?}");
    assert!(
        flaky.len() > 1 && flaky.len() < plain.len(),
        "{plain_tests:?}"
    );
    assert!(plain
        .iter()
        .all(|t| matches!(plain_tests[t].0.as_str(), "flaky" | "passed")));
    assert_eq!(status("plain"), "failed", "flaky: fail");
    // `parallel: 2`: never more than two of its batches (retries aside)
    // running at once.
    let spans: Vec<(String, String)> = jobs
        .iter()
        .filter(|(name, _)| {
            name.starts_with("plain [") && !name.contains("retry") && !name.contains("list")
        })
        .map(|(_, job)| {
            (
                job["started_at"].as_str().unwrap_or_default().to_string(),
                job["finished_at"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert!(spans.len() > 2, "{spans:?}");
    for (start, _) in &spans {
        let running = spans
            .iter()
            .filter(|(s, f)| s.as_str() <= start.as_str() && start.as_str() < f.as_str())
            .count();
        assert!(running <= 2, "{running} batches at {start}: {spans:?}");
    }
    let log = api.log(jobs["unit"]["id"].as_str().expect("id"));
    assert!(
        log.contains("18 tests: 16 passed, 1 failed, 1 flaky"),
        "{log}"
    );

    // A listing that finds nothing is an error that says so.
    repo.write("tests.txt", "no tests ran\n");
    let second = repo.commit("an empty listing");
    let view = wait_verdict(&api, &second, Duration::from_secs(120));
    let jobs = by_name(&view);
    assert_eq!(jobs["unit [list]"]["status"], "error", "{view:#}");
    assert_eq!(
        jobs["unit [list]"]["reason"], "the listing printed no test ids",
        "{view:#}"
    );
    assert_eq!(jobs["unit"]["status"], "skipped");
    assert_ne!(view["status"], "passed");
}

/// The test ids of each batch of the split job `gate` in `view`, by
/// batch number (from `GET /api/jobs/{id}/tests`: each test's batch).
fn batches(api: &Api, view: &Value, gate: &str) -> Vec<Vec<String>> {
    let jobs = by_name(view);
    let id = jobs[gate]["id"].as_str().expect("id");
    let tests = api
        .get_json(&format!("/api/jobs/{id}/tests"))
        .expect("tests");
    let name_of: HashMap<&str, &str> = jobs
        .values()
        .filter_map(|job| Some((job["id"].as_str()?, job["name"].as_str()?)))
        .collect();
    let prefix = format!("{gate} [");
    let mut found: HashMap<usize, Vec<String>> = HashMap::new();
    for test in tests.as_array().expect("a list") {
        let batch = name_of[test["batch"].as_str().expect("batch")];
        let number: usize = batch
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split('/').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{batch} is a batch"));
        found
            .entry(number)
            .or_default()
            .push(test["test"].as_str().expect("test").to_string());
    }
    let mut numbers: Vec<usize> = found.keys().copied().collect();
    numbers.sort_unstable();
    numbers.into_iter().map(|n| found[&n].clone()).collect()
}

#[test]
fn the_second_run_cuts_by_the_first_runs_timings_so_the_slow_test_goes_first() {
    let ns = Namespace::new("split-timings");
    let scratch = Scratch::new();
    let repo = Repo::new(scratch.join("repo"));
    repo.write(
        "run-tests.sh",
        "#!/bin/sh\nfor t in \"$@\"; do case \"$t\" in slow*) sleep 2 ;; *) sleep 0.2 ;; esac; done\n",
    );
    let tests = ["a01", "a02", "a03", "a04", "a05", "a06", "slow1"];
    repo.write("tests.txt", &format!("{}\n", tests.join("\n")));
    repo.write(
        ".warren.yml",
        "jobs:\n  test:\n    split:\n      list: cat tests.txt\n      run: sh ./run-tests.sh {tests}\n      parallel: 2\n",
    );
    let first = repo.commit("a suite with one slow test");
    let dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let _runners: Vec<Proc> = (1..=2)
        .map(|i| runner(&ns, &scratch, &format!("r{i}"), &[]))
        .collect();
    let _observer = observer(&ns, &scratch, repo.path_str(), &[]);
    let api = dispatcher.api();
    let wall = |view: &Value| -> f64 {
        let jobs = by_name(view);
        let at = |name: &str| jobs[name]["finished_at_ms"].as_i64().expect("finished");
        (at("test") - at("test [list]")) as f64 / 1000.0
    };

    // First run: no timings, every test estimated alike; the slow one
    // sorts last and lands in the last batch.
    let view = wait_verdict(&api, &first, Duration::from_secs(120));
    assert_eq!(view["status"], "passed", "{view:#}");
    let cut = batches(&api, &view, "test");
    assert_eq!(cut.concat().len(), tests.len(), "{cut:?}");
    assert_eq!(cut.last(), Some(&vec!["slow1".to_string()]), "{cut:?}");
    let first_wall = wall(&view);

    // Second run: the slow test is known, and goes first, alone.
    repo.write("README", "again\n");
    let second = repo.commit("the same suite again");
    let view = wait_verdict(&api, &second, Duration::from_secs(120));
    assert_eq!(view["status"], "passed", "{view:#}");
    let cut = batches(&api, &view, "test");
    assert_eq!(cut.concat().len(), tests.len(), "{cut:?}");
    assert_eq!(cut.first(), Some(&vec!["slow1".to_string()]), "{cut:?}");
    eprintln!(
        "split over 2 runners: first run {first_wall:.2} s from listing to verdict, second {:.2} s",
        wall(&view)
    );
}

#[test]
fn rerun_failed_lists_and_splits_again_and_the_new_gate_judges_only_the_new_run() {
    let ns = Namespace::new("split-rerun");
    let scratch = Scratch::new();
    let fixed = scratch.join("fixed");
    let repo = Repo::new(scratch.join("repo"));
    repo.write(
        "run-tests.sh",
        &format!(
            "#!/bin/sh\nrc=0\nfor t in \"$@\"; do case \"$t\" in *fixable*) [ -e {} ] || rc=1 ;; esac; done\nexit $rc\n",
            fixed.display()
        ),
    );
    repo.write("tests.txt", "a01\na02_fixable\na03\na04\n");
    repo.write(
        ".warren.yml",
        "jobs:\n  test:\n    split:\n      list: cat tests.txt\n      run: sh ./run-tests.sh {tests}\n  after:\n    needs: [test]\n    run: \"true\"\n",
    );
    let commit = repo.commit("a split suite that fails at first");
    let dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let _runner = runner(&ns, &scratch, "r1", &[]);
    let _observer = observer(&ns, &scratch, repo.path_str(), &[]);
    let api = dispatcher.api();
    let view = wait_verdict(&api, &commit, Duration::from_secs(90));
    assert_eq!(view["status"], "failed", "{view:#}");
    let first_gate = by_name(&view)["test"]["id"]
        .as_str()
        .expect("id")
        .to_string();

    std::fs::write(&fixed, "").expect("fix");
    let out = std::process::Command::new(WARREN)
        .args(["rerun", "--failed", &commit])
        .env("WARREN_SERVER", &dispatcher.url)
        .env_remove("WARREN_API_TOKEN")
        .output()
        .expect("warren rerun");
    assert!(out.status.success(), "{out:?}");
    let view = wait_for("the rerun's verdict", Duration::from_secs(90), || {
        let view = api.get_json(&format!("/api/commits/{commit}")).ok()?;
        (view["status"] == "passed").then_some(view)
    });
    let jobs = by_name(&view);
    let gate = &jobs["test"];
    assert_ne!(gate["id"], first_gate.as_str(), "a new gate: {view:#}");
    assert_eq!(jobs["after"]["status"], "passed");
    assert_eq!(jobs["test [list]"]["status"], "passed");
    let tests = tests_of(&api, gate);
    assert_eq!(tests.len(), 4, "{tests:?}");
    assert!(
        tests
            .values()
            .all(|(status, attempts)| status == "passed" && *attempts == 1),
        "only the new run counts: {tests:?}"
    );
    // The first gate keeps its own verdict and tests.
    let old = tests_of(&api, &serde_json::json!({ "id": first_gate }));
    assert_eq!(old["a02_fixable"].0, "failed", "{old:?}");
}
