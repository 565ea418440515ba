//! Issue 4: `warren up --runners MIN..MAX` grows the pool while jobs wait
//! and shrinks it back when the queue is empty, losing and doubling nothing.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn a_burst_grows_the_runner_pool_to_max_and_an_empty_queue_shrinks_it_to_min() {
    let ns = Namespace::new("manager");
    let scratch = Scratch::new();
    let bare = scratch.join("origin.git");
    std::fs::create_dir_all(&bare).expect("mkdir");
    git(&bare, &["init", "-q", "--bare", "-b", "main"]);
    let origin = Repo { path: bare };
    let staging = Repo::new(scratch.join("staging"));
    staging.write("n", "0");
    let mut commits = vec![staging.commit("initial")];
    git(
        &staging.path,
        &["push", "-q", origin.path_str(), "HEAD:main"],
    );

    let up = Up::start(
        &ns,
        &scratch,
        origin.path_str(),
        "1..4",
        &[],
        &["--test-command", "sleep 1"],
    );
    let api = up.api();
    api.wait_terminal(&commits, Duration::from_secs(60));
    // Runner processes of this `up` (not the git commands they run).
    let workdirs = format!("--workdir {}/runner-", up.data.display());
    let runner_count = || {
        processes_matching(" runner --id runner-")
            .iter()
            .filter(|p| p.contains(&workdirs))
            .count()
    };
    // The first job may already have made the manager start a second
    // runner; once the queue stays empty the pool settles at MIN.
    wait_for(
        "the pool to settle at MIN (1)",
        Duration::from_secs(60),
        || (runner_count() == 1).then_some(()),
    );

    for i in 1..=30 {
        staging.write("n", &i.to_string());
        commits.push(staging.commit(&format!("burst {i}")));
    }
    git(
        &staging.path,
        &["push", "-q", origin.path_str(), "HEAD:main"],
    );
    wait_for(
        "the pool to grow to MAX (4)",
        Duration::from_secs(60),
        || (runner_count() == 4).then_some(()),
    );

    let jobs = api.wait_terminal(&commits, Duration::from_secs(120));
    wait_for(
        "the pool to shrink back to MIN (1)",
        Duration::from_secs(60),
        || (runner_count() == 1).then_some(()),
    );
    let mut runners_used = std::collections::HashSet::new();
    for commit in &commits {
        let for_commit = &jobs[commit];
        assert_eq!(for_commit.len(), 1, "one job for {commit}");
        assert_eq!(for_commit[0]["status"], "passed", "{}", for_commit[0]);
        assert_eq!(for_commit[0]["attempts"], 1, "{}", for_commit[0]);
        runners_used.insert(
            for_commit[0]["runner"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    assert!(
        runners_used.len() >= 3,
        "the extra runners did work: {runners_used:?}"
    );
    let up_log = up.proc.log_text();
    assert!(up_log.contains("stopping an idle runner"), "{up_log}");
}
