//! Issue 19: retention. A dispatcher with `--keep-jobs 2` prunes the
//! older finished jobs with their logs, by itself, while it records; a bad
//! value is a one-line error naming the flag.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn keep_jobs_prunes_older_finished_jobs_and_their_logs_while_recording() {
    let ns = Namespace::new("retention");
    let scratch = Scratch::new();
    let (origin, staging) = origin_and_staging(&scratch);
    let dispatcher =
        Dispatcher::start(&ns, &scratch, &["--keep-jobs", "2", "--prune-every", "0.3"]);
    let api = dispatcher.api();
    let _runner = runner(&ns, &scratch, "r1", &["--test-command", "cat value.txt"]);
    let _observer = observer(&ns, &scratch, origin.path_str(), &[]);
    let mut commits = vec![head(&staging)];
    commits.extend(push_commits(&origin, &staging, 1..6));
    let last = &commits[commits.len() - 2..];
    api.wait_terminal(last, Duration::from_secs(60));

    // The two newest stay, with their logs; the others go.
    let kept = wait_for("the older jobs pruned", Duration::from_secs(30), || {
        let jobs = api.jobs();
        (jobs.len() == 2).then_some(jobs)
    });
    let mut kept_commits: Vec<&str> = kept
        .iter()
        .map(|job| job["commit"].as_str().unwrap_or_default())
        .collect();
    kept_commits.sort_unstable();
    let mut newest: Vec<&str> = last.iter().map(String::as_str).collect();
    newest.sort_unstable();
    assert_eq!(kept_commits, newest);
    for job in &kept {
        let id = job["id"].as_str().expect("id");
        assert!(api.log(id).contains("value="), "{job}");
    }
    let gone = api.get_json(&format!("/api/jobs/{}", commits[0]));
    assert!(gone.is_err(), "the oldest job is gone: {gone:?}");
    assert!(dispatcher.proc.log_text().contains("pruned old jobs"));
}

#[test]
fn a_bad_retention_value_is_one_line_naming_the_flag() {
    for (flag, value) in [("--keep-jobs", "0"), ("--keep-days", "soon")] {
        let out = std::process::Command::new(WARREN)
            .args(["dispatcher", flag, value])
            .output()
            .expect("warren");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}
