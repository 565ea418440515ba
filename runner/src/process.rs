//! Running the test command: `sh -c CMD` in the checkout, in a process group
//! of its own, with a scrubbed environment, a timeout and an output cap.
//!
//! Whatever the test does (forks a daemon, prints a gigabyte, never ends),
//! the whole group is killed when it ends, times out or is cancelled, and
//! the runner carries on.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// How long to keep reading output after the test's group was killed, in
/// case something outside the group still holds the pipe.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);

/// How the test process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Exited(Option<i32>),
    TimedOut,
    Cancelled,
}

/// One run of the test command.
#[derive(Debug, Clone)]
pub struct TestRun {
    pub ending: Ending,
    pub output: String,
    pub truncated: bool,
    pub duration: Duration,
}

/// What a test has printed so far, shared with the heartbeat task so it
/// can send the output on while the test runs.
pub type LiveOutput = std::sync::Arc<std::sync::Mutex<Vec<u8>>>;

/// Output kept up to a cap; the rest is read and dropped so the test never
/// blocks on a full pipe.
struct Capture {
    bytes: LiveOutput,
    /// Where the test's output starts in `bytes` (the runner may have put a
    /// header before it); the cap counts from here.
    base: usize,
    cap: usize,
    truncated: bool,
}

impl Capture {
    fn push(&mut self, chunk: &[u8]) {
        let Ok(mut bytes) = self.bytes.lock() else {
            return;
        };
        let room = self.cap.saturating_sub(bytes.len() - self.base);
        if chunk.len() > room {
            self.truncated = true;
        }
        bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }

    fn text(&self) -> String {
        self.bytes
            .lock()
            .map(|bytes| String::from_utf8_lossy(&bytes[self.base..]).into_owned())
            .unwrap_or_default()
    }
}

/// The environment a test gets: enough to run tools, nothing of Warren's
/// (no broker URL, password or token).
pub fn scrubbed_env(commit: &str, branch: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("CI".to_string(), "true".to_string()),
        ("CI_COMMIT".to_string(), commit.to_string()),
        ("CI_BRANCH".to_string(), branch.to_string()),
        ("LANG".to_string(), "C.UTF-8".to_string()),
    ];
    for key in ["PATH", "HOME", "TMPDIR", "USER", "TZ"] {
        if let Ok(value) = std::env::var(key) {
            env.push((key.to_string(), value));
        }
    }
    env
}

/// Set once the runner has made itself the child subreaper: then processes
/// a test detached from its group (`setsid`, double fork) are reparented to
/// the runner instead of init, and are killed after the test.
static REAP_ORPHANS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes this process the subreaper of everything it starts, so no test
/// process can outlive its job by detaching. Called once by the runner.
pub fn become_subreaper() {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER only sets a process flag.
    let ok = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) } == 0;
    REAP_ORPHANS.store(ok, std::sync::atomic::Ordering::SeqCst);
}

/// Kills and reaps every remaining child of this process: between jobs the
/// runner has none of its own, so any left are a test's escaped daemons.
fn kill_orphans() {
    if !REAP_ORPHANS.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    for pid in child_pids() {
        tracing::info!(pid, "killing a process the test left behind");
        // SAFETY: kill and waitpid on our own child; no memory involved.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
}

/// The pids of this process's children. The kernel lists each thread's
/// children in `/proc/self/task/*/children`, which costs a few reads; only
/// where that file is missing (a kernel without CONFIG_PROC_CHILDREN) does
/// this scan every process on the machine for our pid as parent.
fn child_pids() -> Vec<i32> {
    let mut pids = Vec::new();
    let mut listed = false;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
                listed = true;
                pids.extend(
                    children
                        .split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
    }
    if listed {
        return pids;
    }
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let parent = status
            .lines()
            .find_map(|line| line.strip_prefix("PPid:"))
            .map(str::trim);
        if parent == Some(me.as_str()) {
            pids.push(pid);
        }
    }
    pids
}

fn kill_group(pgid: i32) {
    if pgid > 0 {
        // SAFETY: kill(2) with a negative pid signals the process group we
        // created for the test; it has no memory-safety preconditions.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// Runs `command` with `sh -c` in `dir`.
pub async fn run_test(
    command: &str,
    dir: &Path,
    env: &[(String, String)],
    timeout: Duration,
    output_cap: usize,
    live: &LiveOutput,
    cancel: &CancellationToken,
) -> std::io::Result<TestRun> {
    let started = Instant::now();
    let (sender, mut receiver) = tokio::net::unix::pipe::pipe()?;
    let write_end = sender.into_blocking_fd()?;
    let mut child = {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(command)
            .current_dir(dir)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(write_end.try_clone()?))
            .stderr(Stdio::from(write_end))
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        // If the runner dies (even by SIGKILL), the test's shell dies too.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd.spawn()?
        // `cmd` drops here, closing our copies of the write end.
    };
    let pgid = child.id().map(|id| id as i32).unwrap_or(0);
    let mut capture = Capture {
        bytes: live.clone(),
        base: live.lock().map(|bytes| bytes.len()).unwrap_or(0),
        cap: output_cap,
        truncated: false,
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut eof = false;
    let deadline = tokio::time::Instant::now() + timeout;
    let ending = loop {
        tokio::select! {
            status = child.wait() => break Ending::Exited(status?.code()),
            _ = tokio::time::sleep_until(deadline) => break Ending::TimedOut,
            _ = cancel.cancelled() => break Ending::Cancelled,
            read = receiver.read(&mut buf), if !eof => match read {
                Ok(0) | Err(_) => eof = true,
                Ok(n) => capture.push(&buf[..n]),
            },
        }
    };
    // Always kill the group: after a timeout or cancel, and also after a
    // normal exit, to take down daemons the test left behind.
    kill_group(pgid);
    if !matches!(ending, Ending::Exited(_)) {
        let _ = child.wait().await;
    }
    // Blocking /proc reads and waitpid: off the async workers, but awaited,
    // so it is done before the next job starts processes of its own.
    let _ = tokio::task::spawn_blocking(kill_orphans).await;
    let drain_deadline = tokio::time::Instant::now() + DRAIN_AFTER_EXIT;
    while !eof {
        tokio::select! {
            read = receiver.read(&mut buf) => match read {
                Ok(0) | Err(_) => eof = true,
                Ok(n) => capture.push(&buf[..n]),
            },
            _ = tokio::time::sleep_until(drain_deadline) => break,
        }
    }
    let mut output = capture.text();
    if capture.truncated {
        output.push_str(&format!(
            "\n[warren: output truncated at {} bytes]\n",
            capture.cap
        ));
    }
    Ok(TestRun {
        ending,
        output,
        truncated: capture.truncated,
        duration: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(command: &str, timeout: Duration, cap: usize) -> TestRun {
        let dir = tempfile::tempdir().expect("tempdir");
        run_test(
            command,
            dir.path(),
            &scrubbed_env(&"a".repeat(40), "main"),
            timeout,
            cap,
            &LiveOutput::default(),
            &CancellationToken::new(),
        )
        .await
        .expect("runs")
    }

    #[tokio::test]
    async fn output_is_visible_while_the_test_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let live = LiveOutput::default();
        let test = {
            let (dir, live) = (dir.path().to_path_buf(), live.clone());
            tokio::spawn(async move {
                run_test(
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
    async fn a_hanging_test_times_out() {
        let run = run("sleep 30", Duration::from_millis(300), 1024).await;
        assert_eq!(run.ending, Ending::TimedOut);
        assert!(run.duration < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn the_environment_is_scrubbed() {
        std::env::set_var("WARREN_AMQP_URL", "amqp://u:leak@h");
        let run = run("env", Duration::from_secs(10), 65536).await;
        assert!(!run.output.contains("leak"), "{}", run.output);
        assert!(run.output.contains("CI=true"));
    }
}
