//! Issue 5: the dashboard in a real headless Chromium, against a real
//! dispatcher, runner, observer and broker.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs
//! them); without them the test fails and says so. Chromium is driven
//! through chromedriver's WebDriver HTTP API by the tiny client in
//! `common::browser`.
//! Screenshots are saved in the test's scratch dir, and also copied to
//! `$WARREN_SCREENSHOTS` when that is set (to look at them after a
//! passing run).

mod common;

use std::time::Duration;

use common::browser::*;
use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "dashboard-test-token";

const HOSTILE_SUBJECT: &str = "<b>bold?</b> & \"quoted\" <script>window.__pwned = 3</script>";

const HOSTILE_TEST: &str = r#"echo 'testing the dashboard'
printf '\033[31mRED ALERT\033[0m then \033[1;32mbold green\033[0m and \033[38;5;208morange\033[0m\n'
echo '<script>window.__pwned = 1; alert(1)</script>'
echo '<img src=x onerror="window.__pwned = 2">'
printf '\033]0;a window title\007progress 10%%\rprogress 100%%\n'
sleep 4
echo 'the end'
exit 1
"#;

#[test]
fn the_dashboard_shows_jobs_live_renders_logs_safely_and_lists_runners() {
    let chromedriver = require_chromium();
    let ns = Namespace::new("dashboard");
    let scratch = Scratch::new();
    let repo = Repo::new(scratch.join("repo"));
    repo.write(".warren-test", "echo all good\n");
    let first = repo.commit("a first, passing commit");
    let dispatcher = Dispatcher::start_with_env(&ns, &scratch, &[], &[("WARREN_API_TOKEN", TOKEN)]);
    let _runner = runner(&ns, &scratch, "r1", &[]);
    let _observer = observer(&ns, &scratch, repo.path_str(), &[]);
    let api = dispatcher.api();
    api.wait_terminal(std::slice::from_ref(&first), Duration::from_secs(60));

    // Pages carry a CSP that allows no inline script; unknown jobs are 404.
    let front = reqwest::blocking::get(format!("{}/", dispatcher.url)).expect("GET /");
    let csp = front
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let missing =
        reqwest::blocking::get(format!("{}/jobs/no-such-job", dispatcher.url)).expect("GET");
    assert_eq!(missing.status().as_u16(), 404);

    let browser = Browser::start(&chromedriver, &scratch);
    let row_js = "const tr = document.querySelector('tr[data-commit=\"' + arguments[0] + '\"]');
        return tr && { status: tr.dataset.status,
                       duration: tr.querySelector('.duration').textContent,
                       subject: tr.querySelector('.subject').textContent,
                       runner: tr.querySelector('.runner').textContent };";

    // The jobs list shows the first job, and follows the live events.
    browser.goto(&format!("{}/", dispatcher.url));
    browser.wait_until("the first job, passed", Duration::from_secs(20), || {
        let row = browser.exec(row_js, json!([first]));
        (row["status"] == "passed")
            .then_some(())
            .ok_or(format!("{row}"))
    });
    browser.wait_until("the live indicator", Duration::from_secs(20), || {
        let live = browser.exec(
            "return document.getElementById('live').textContent",
            json!([]),
        );
        (live == "live").then_some(()).ok_or(format!("{live}"))
    });
    browser.exec("window.__sameDocument = 'yes'", json!([]));
    // The console is readable (so "no console errors" below means something).
    browser.exec("console.error('warren-probe')", json!([]));
    let errors = console_errors(&browser);
    assert!(
        errors.len() == 1 && errors[0].contains("warren-probe"),
        "the browser console, with only the probe in it: {errors:?}"
    );

    // A commit made while the page is open appears and reaches its outcome.
    repo.write(".warren-test", HOSTILE_TEST);
    let hostile = repo.commit(HOSTILE_SUBJECT);
    let mut seen: Vec<(String, String)> = Vec::new();
    let row = browser.wait_until(
        "the new commit's job to appear and reach its outcome",
        Duration::from_secs(90),
        || {
            let row = browser.exec(row_js, json!([hostile]));
            let status = row["status"].as_str().ok_or("no row yet")?.to_string();
            let duration = row["duration"].as_str().unwrap_or_default().to_string();
            if seen.last() != Some(&(status.clone(), duration.clone())) {
                if status == "running" && !seen.iter().any(|(s, _)| s == "running") {
                    browser.screenshot("dashboard-running.png");
                }
                seen.push((status.clone(), duration));
            }
            is_terminal(&row)
                .then(|| row.clone())
                .ok_or(format!("{row}"))
        },
    );
    assert_eq!(row["status"], "failed", "{row}");
    assert_eq!(row["subject"], HOSTILE_SUBJECT, "the subject shows as text");
    assert_eq!(row["runner"], "r1", "{row}");
    let running: Vec<&String> = seen
        .iter()
        .filter(|(status, _)| status == "running")
        .map(|(_, duration)| duration)
        .collect();
    assert!(
        running.len() >= 2,
        "the running job's elapsed time ticks on the page: {seen:?}"
    );
    assert_eq!(
        browser.exec("return window.__sameDocument", json!([])),
        "yes",
        "the page was not reloaded"
    );
    assert_eq!(
        browser.exec("return typeof window.__pwned", json!([])),
        "undefined"
    );
    let (path, png) = browser.screenshot("dashboard-jobs.png");
    assert_png_not_blank(&path, &png);

    // Its job page: every field, and the log as text, coloured, numbered.
    browser.click(&format!("tr[data-commit=\"{hostile}\"] a.sha"));
    let job_id = api
        .jobs_by_commit()
        .get(&hostile)
        .and_then(|jobs| jobs[0]["id"].as_str().map(str::to_string))
        .expect("the job in the API");
    let log_js = "const log = document.getElementById('log');
        return { lines: log.querySelectorAll('.line').length,
                 text: Array.from(log.querySelectorAll('.code'), c => c.textContent).join('\\n'),
                 output: Array.from(log.querySelectorAll('.code'), c => c.textContent)
                     .filter(line => /RED ALERT|progress/.test(line) && !line.includes('printf')),
                 first_number: (log.querySelector('.ln') || {}).textContent,
                 red: Array.from(log.querySelectorAll('span.ansi-fg-1'), s => s.textContent),
                 green: Array.from(log.querySelectorAll('span.ansi-fg-2.ansi-bold'), s => s.textContent),
                 elements_in_log: log.querySelectorAll('script, img, b').length,
                 scripts: document.scripts.length,
                 status: document.querySelector('[data-field=status] .status').dataset.status,
                 exit_code: document.querySelector('[data-field=exit_code]').textContent,
                 subject: document.querySelector('[data-field=subject]').textContent,
                 title: document.getElementById('job-title').textContent,
                 runner: document.querySelector('[data-field=runner]').textContent,
                 raw: document.getElementById('raw-log').href,
                 pwned: typeof window.__pwned };";
    let page = browser.wait_until("the job page and its log", Duration::from_secs(20), || {
        if !browser.current_url().contains(&format!("/jobs/{job_id}")) {
            return Err(browser.current_url());
        }
        let page = browser
            .try_exec(log_js, json!([]))
            .map_err(|e| e.to_string())?;
        (page["lines"].as_u64() > Some(0))
            .then(|| page.clone())
            .ok_or(format!("{page}"))
    });
    let text = page["text"].as_str().expect("log text");
    assert!(
        text.contains("<script>window.__pwned = 1; alert(1)</script>")
            && text.contains("<img src=x onerror=\"window.__pwned = 2\">"),
        "the markup in the log shows literally: {text}"
    );
    assert_eq!(page["elements_in_log"], 0, "no markup became elements");
    assert_eq!(page["scripts"], 2, "only the dashboard's own scripts");
    assert_eq!(page["pwned"], "undefined", "no injected script ran");
    assert_eq!(browser.alert_text(), None, "no alert opened");
    // (The log also shows the test script itself, escapes written out.)
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "{text:?}"
    );
    assert_eq!(
        page["output"],
        json!(["RED ALERT then bold green and orange", "progress 100%"]),
        "ANSI escapes and the OSC title are rendered or dropped, never shown; \
         a carriage return overwrites the line: {text}"
    );
    assert_eq!(page["red"], json!(["RED ALERT"]), "{page}");
    assert_eq!(page["green"], json!(["bold green"]), "{page}");
    assert_eq!(page["first_number"], "1");
    let raw = api.log(&job_id);
    assert_eq!(
        page["lines"].as_u64(),
        Some(raw.lines().count() as u64),
        "one numbered line per line of the log"
    );
    assert!(raw.contains("\u{1b}[31mRED ALERT"), "the raw log is raw");
    assert!(
        page["raw"]
            .as_str()
            .is_some_and(|href| href.ends_with(&format!("/api/jobs/{job_id}/log"))),
        "{page}"
    );
    assert_eq!(page["status"], "failed");
    assert_eq!(page["exit_code"], "1");
    assert_eq!(page["runner"], "r1");
    assert_eq!(page["subject"], HOSTILE_SUBJECT);
    assert_eq!(page["title"], HOSTILE_SUBJECT);
    let errors = console_errors(&browser);
    assert!(errors.is_empty(), "console errors: {errors:?}");
    let (path, png) = browser.screenshot("dashboard-job.png");
    assert_png_not_blank(&path, &png);
    browser.exec(
        "document.getElementById('L9').scrollIntoView({block: 'start'})",
        json!([]),
    );
    let (path, png) = browser.screenshot("dashboard-log.png");
    assert_png_not_blank(&path, &png);

    // Rerun from the page: the dispatcher wants its token, which the page
    // asks for (a wrong one is refused and forgotten) and then keeps. The
    // rerun is a new job for the same commit, whose page follows it live
    // to its outcome and then shows its log.
    let answer_prompt = |token: &str| {
        browser.click("#rerun");
        let asked = browser.wait_until("the token prompt", Duration::from_secs(20), || {
            browser.alert_text().ok_or("no prompt".to_string())
        });
        assert!(asked.contains("API token"), "{asked}");
        browser
            .session("POST", "/alert/text", Some(json!({ "text": token })))
            .expect("type into the prompt");
        browser
            .session("POST", "/alert/accept", None)
            .expect("accept the prompt");
    };
    answer_prompt("not-the-token");
    browser.wait_until("a refused rerun", Duration::from_secs(20), || {
        let result = browser.exec(
            "return [document.getElementById('rerun-result').textContent, localStorage.getItem('warren.apiToken')]",
            json!([]),
        );
        (result[0].as_str().is_some_and(|r| r.contains("needs the API token")) && result[1].is_null())
            .then_some(())
            .ok_or(format!("{result}"))
    });
    answer_prompt(TOKEN);
    let rerun_id = browser.wait_until("the rerun to be queued", Duration::from_secs(20), || {
        let link = browser.exec(
            "const a = document.getElementById('rerun-link'); return a ? a.textContent : document.getElementById('rerun-result').textContent",
            json!([]),
        );
        let text = link.as_str().unwrap_or_default().to_string();
        (text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit()))
            .then_some(text.clone())
            .ok_or(text)
    });
    assert_ne!(rerun_id, job_id);
    assert_eq!(
        browser.exec("return localStorage.getItem('warren.apiToken')", json!([])),
        TOKEN,
        "the page keeps the token"
    );
    let rerun = api
        .get_json(&format!("/api/jobs/{rerun_id}"))
        .expect("the rerun in the API");
    assert_eq!(rerun["commit"], hostile.as_str());
    browser.click("#rerun-link");
    browser.wait_until(
        "the rerun's page to follow it to its outcome",
        Duration::from_secs(60),
        || {
            let page = browser
                .try_exec(log_js, json!([]))
                .map_err(|e| e.to_string())?;
            (browser.current_url().contains(&rerun_id)
                && page["status"] == "failed"
                && page["lines"].as_u64() > Some(0))
            .then_some(())
            .ok_or(format!("{page}"))
        },
    );

    // The only console errors so far: the refused reruns.
    let errors = console_errors(&browser);
    assert!(
        errors
            .iter()
            .all(|e| e.contains("/rerun") && e.contains("401")),
        "console errors: {errors:?}"
    );

    // Filters and keyset pagination live in the URL.
    let list_js =
        "return { ids: Array.from(document.querySelectorAll('#job-rows tr'), tr => tr.dataset.id),
                            older: !document.getElementById('older').hidden,
                            newest: !document.getElementById('newest').hidden,
                            empty: !document.getElementById('empty').hidden };";
    let list = |url: &str, expect: &[&str]| -> Value {
        browser.goto(&format!("{}{url}", dispatcher.url));
        browser.wait_until(
            &format!("{url} to list {expect:?}"),
            Duration::from_secs(20),
            || {
                let page = browser.exec(list_js, json!([]));
                (page["ids"] == json!(expect) && (!expect.is_empty() || page["empty"] == true))
                    .then(|| page.clone())
                    .ok_or(format!("{page}"))
            },
        )
    };
    let page = list("/?status=failed&limit=1", &[&rerun_id]);
    assert_eq!(
        (&page["older"], &page["newest"]),
        (&json!(true), &json!(false))
    );
    browser.click("#older");
    browser.wait_until("the next page", Duration::from_secs(20), || {
        let page = browser.exec(list_js, json!([]));
        (page["ids"] == json!([job_id]) && page["newest"] == true && page["older"] == false)
            .then_some(())
            .ok_or(format!("{page}"))
    });
    assert!(
        browser.current_url().contains("before="),
        "{}",
        browser.current_url()
    );
    let first_id = api.jobs_by_commit()[&first][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    list("/?branch=main", &[&rerun_id, &job_id, &first_id]);
    list("/?status=passed", &[&first_id]);
    list("/?branch=elsewhere", &[]);

    // The runners page: the runner online, the queue and the dead letters.
    browser.goto(&format!("{}/runners", dispatcher.url));
    let runners = browser.wait_until("runner r1 online", Duration::from_secs(20), || {
        let page = browser.exec(
            "const tr = document.querySelector('tr[data-runner=\"r1\"]');
             return { online: tr && tr.dataset.online,
                      state: tr && tr.querySelector('.presence').textContent,
                      jobs_done: tr && tr.lastElementChild.textContent,
                      depth: document.getElementById('queue-depth').textContent,
                      dead: document.getElementById('dead-letters').textContent,
                      management: document.getElementById('management-ui').href };",
            json!([]),
        );
        (page["online"] == "true" && page["depth"] != "–")
            .then(|| page.clone())
            .ok_or(format!("{page}"))
    });
    assert_eq!(runners["state"], "online");
    assert!(
        runners["jobs_done"]
            .as_str()
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n >= 3),
        "{runners}"
    );
    for number in ["depth", "dead"] {
        assert!(
            runners[number]
                .as_str()
                .is_some_and(|n| n.parse::<u64>().is_ok()),
            "{runners}"
        );
    }
    let management = runners["management"].as_str().unwrap_or_default();
    assert!(
        management.starts_with("http://") && management.contains(":15672"),
        "{runners}"
    );
    assert!(
        !management.contains("guest:guest"),
        "no credentials in links: {management}"
    );
    let errors = console_errors(&browser);
    assert!(errors.is_empty(), "console errors: {errors:?}");
    let (path, png) = browser.screenshot("dashboard-runners.png");
    assert_png_not_blank(&path, &png);
    eprintln!("screenshots in {}", scratch.path().display());
}

/// Issue 18: a split job's page lists its tests, those that did not pass
/// first, each with its status, attempts and batch, and the pipeline
/// shows each batch with its runner.
#[test]
fn a_split_jobs_page_lists_its_tests_and_its_batches_with_their_runners() {
    let chromedriver = require_chromium();
    let ns = Namespace::new("dashboard-split");
    let scratch = Scratch::new();
    let repo = Repo::new(scratch.join("repo"));
    repo.write(
        "run-tests.sh",
        "#!/bin/sh\nrc=0\nfor t in \"$@\"; do case \"$t\" in *fail*) rc=1 ;; esac; done\nexit $rc\n",
    );
    repo.write("tests.txt", "a01\na02\na03_fail\na04\n");
    repo.write(
        ".warren.yml",
        "jobs:\n  test:\n    split:\n      list: cat tests.txt\n      run: sh ./run-tests.sh {tests}\n",
    );
    let commit = repo.commit("a split suite with a failing test");
    let dispatcher = Dispatcher::start(&ns, &scratch, &[]);
    let _runner = runner(&ns, &scratch, "r1", &[]);
    let _observer = observer(&ns, &scratch, repo.path_str(), &[]);
    let api = dispatcher.api();
    let gate = wait_for("the split job's verdict", Duration::from_secs(90), || {
        let view = api.get_json(&format!("/api/commits/{commit}")).ok()?;
        let gate = view["jobs"]
            .as_array()?
            .iter()
            .find(|job| job["name"] == "test")?
            .clone();
        (gate["status"] == "failed").then_some(gate)
    });
    let gate_id = gate["id"].as_str().expect("id").to_string();

    let browser = Browser::start(&chromedriver, &scratch);
    browser.goto(&format!("{}/jobs/{gate_id}", dispatcher.url));
    let rows = browser.wait_until("the tests table", Duration::from_secs(20), || {
        let rows = browser.exec(
            "const section = document.getElementById('tests');
             if (!section || section.hidden) return null;
             return [...document.querySelectorAll('#tests-body tr')].map((tr) => ({
               test: tr.dataset.test,
               status: tr.querySelector('[data-status]').dataset.status,
               attempts: tr.children[3].textContent,
               batch: tr.querySelector('a').getAttribute('href') }));",
            json!([]),
        );
        rows.as_array()
            .filter(|rows| rows.len() == 4)
            .cloned()
            .ok_or(format!("{rows}"))
    });
    // Without a report each test of the failed batch was retried alone:
    // the failing one failed again and comes first.
    assert_eq!(rows[0]["test"], "a03_fail", "{rows:?}");
    assert_eq!(rows[0]["status"], "failed");
    assert_eq!(rows[0]["attempts"], "2");
    assert!(rows.iter().all(|row| row["batch"]
        .as_str()
        .is_some_and(|href| href.starts_with("/jobs/"))));
    let summary = browser.exec(
        "return document.getElementById('tests-summary').textContent",
        json!([]),
    );
    assert!(
        summary.as_str().is_some_and(|s| s.starts_with("4 tests: ")),
        "{summary}"
    );
    // The pipeline lists the list job, the batches and the retries, each
    // with the runner that ran it.
    let pipeline = browser.exec(
        "return [...document.querySelectorAll('#pipeline li')].map((li) => li.textContent)",
        json!([]),
    );
    let items: Vec<&str> = pipeline
        .as_array()
        .expect("items")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        items
            .iter()
            .any(|item| item.contains("test [1/") && item.contains("r1")),
        "{items:?}"
    );
    assert!(
        items.iter().any(|item| item.contains("test [retry ")),
        "{items:?}"
    );
    assert!(
        console_errors(&browser).is_empty(),
        "{:?}",
        console_errors(&browser)
    );
}
