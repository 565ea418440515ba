//! The runner's test process (`runner::run_test`) with the real `warren`
//! binary as its supervisor: output, exit codes, signals, the output cap,
//! timeouts, the scrubbed environment, and a supervisor started by anyone
//! but the runner. No broker needed.

mod common;

use std::path::Path;
use std::time::Duration;

use runner::{run_test, scrubbed_env, Ending, LiveOutput, TestRun};
use tokio_util::sync::CancellationToken;

async fn run_in(dir: &Path, command: &str, timeout: Duration, cap: usize) -> TestRun {
    run_test(
        Path::new(common::WARREN),
        command,
        dir,
        &scrubbed_env(&"a".repeat(40), "main"),
        timeout,
        cap,
        &LiveOutput::default(),
        &CancellationToken::new(),
    )
    .await
    .expect("runs")
}

async fn run(command: &str, timeout: Duration, cap: usize) -> TestRun {
    let dir = tempfile::tempdir().expect("tempdir");
    run_in(dir.path(), command, timeout, cap).await
}

#[tokio::test]
async fn output_is_visible_while_the_test_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = LiveOutput::default();
    let test = {
        let (dir, live) = (dir.path().to_path_buf(), live.clone());
        tokio::spawn(async move {
            run_test(
                Path::new(common::WARREN),
                "echo first; while [ ! -e go ]; do sleep 0.05; done; echo second",
                &dir,
                &scrubbed_env(&"a".repeat(40), "main"),
                Duration::from_secs(30),
                1024,
                &live,
                &CancellationToken::new(),
            )
            .await
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !live.lock().expect("lock").starts_with(b"first\n") {
        assert!(tokio::time::Instant::now() < deadline, "no live output");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::write(dir.path().join("go"), "").expect("go");
    let run = test.await.expect("joined").expect("runs");
    assert_eq!(run.output, "first\nsecond\n");
}

#[tokio::test]
async fn captures_stdout_and_stderr_and_the_exit_code() {
    let run = run(
        "echo out; echo err >&2; exit 3",
        Duration::from_secs(10),
        1024,
    )
    .await;
    assert_eq!(run.ending, Ending::Exited(Some(3)));
    assert!(
        run.output.contains("out") && run.output.contains("err"),
        "{}",
        run.output
    );
    assert!(!run.truncated);
}

#[tokio::test]
async fn a_test_killed_by_a_signal_is_reported_as_such() {
    let run = run("kill -TERM $$", Duration::from_secs(10), 1024).await;
    assert_eq!(run.ending, Ending::Exited(None), "{}", run.output);
}

#[tokio::test]
async fn caps_output_and_marks_it_truncated() {
    let run = run(
        "head -c 100000 /dev/zero | tr '\\0' x",
        Duration::from_secs(10),
        1000,
    )
    .await;
    assert_eq!(run.ending, Ending::Exited(Some(0)));
    assert!(run.truncated);
    assert!(run.output.starts_with(&"x".repeat(1000)));
    assert!(run.output.contains("truncated"));
}

#[tokio::test]
async fn a_hanging_test_times_out_and_its_whole_tree_is_killed() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A marker only this test's processes carry on their command line.
    let marker = dir.path().to_string_lossy().into_owned();
    let run = run_in(
        dir.path(),
        "setsid sh -c 'sleep 300' \"$PWD\" & (sh -c 'sleep 300' \"$PWD\" &); sleep 300",
        Duration::from_millis(500),
        1024,
    )
    .await;
    assert_eq!(run.ending, Ending::TimedOut);
    assert!(run.duration < Duration::from_secs(10));
    assert_eq!(
        common::processes_matching(&marker),
        Vec::<String>::new(),
        "the test's daemons outlived it"
    );
}

#[tokio::test]
async fn the_environment_is_scrubbed() {
    std::env::set_var("WARREN_AMQP_URL", "amqp://u:leak@h");
    let run = run("env", Duration::from_secs(10), 65536).await;
    assert!(!run.output.contains("leak"), "{}", run.output);
    assert!(run.output.contains("CI=true"));
}

#[test]
fn the_supervisor_refuses_to_run_without_the_runners_pipe() {
    let out = std::process::Command::new(common::WARREN)
        .args(["supervise", "--", "sh", "-c", "echo ran"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("liveness pipe"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ran"));
    // Hidden from people: not in the list of commands.
    let help = std::process::Command::new(common::WARREN)
        .arg("--help")
        .output()
        .expect("help");
    assert!(!String::from_utf8_lossy(&help.stdout).contains("supervise"));
}
