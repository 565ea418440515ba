//! Running the test command: `warren supervise -- sh -c CMD` in the
//! checkout, in a process group of its own, with a scrubbed environment, a
//! timeout and an output cap.
//!
//! Whatever the test does (forks a daemon, prints a gigabyte, never ends),
//! its whole process tree is killed when it ends, times out or is cancelled,
//! and also when the runner dies: the supervisor (see `supervisor.rs`)
//! holds the tree and kills it when the runner's end of a pipe closes. The
//! runner carries on, and as child subreaper it kills whatever a killed
//! supervisor leaves behind.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::sandbox::STATUS_FD;
use crate::supervisor::LIVENESS_FD;

/// How long to keep reading output after the test's group was killed, in
/// case something outside the group still holds the pipe.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);

/// How long the supervisor may take to kill a stopped test's tree and exit
/// before the runner kills it (and, as subreaper, the rest) itself.
const SUPERVISOR_STOP: Duration = Duration::from_secs(5);

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
    /// What the sandbox wrote on its status pipe, when it had one.
    pub sandbox_status: Option<String>,
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
/// a test detached from its group (`setsid`, double fork) whose supervisor
/// was killed are reparented to the runner instead of init, and are killed
/// after the test.
static REAP_ORPHANS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes this process the subreaper of everything it starts, so no test
/// process can outlive its job by detaching. Called once by the runner.
pub fn become_subreaper() {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER only sets a process flag.
    let ok = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) } == 0;
    REAP_ORPHANS.store(ok, std::sync::atomic::Ordering::SeqCst);
}

/// Makes this process non-dumpable: other processes of the same (non-root)
/// user, such as a test, can then neither read its environment or memory
/// through `/proc/<pid>/environ`, `mem` or `maps`, nor ptrace it, and no
/// core file is written. It holds secrets (the broker URL with its
/// password). The flag is reset by exec, so children started from another
/// binary are dumpable again: they get only a scrubbed environment.
pub fn become_non_dumpable() {
    // SAFETY: prctl with PR_SET_DUMPABLE only sets a process flag.
    let ok = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0) } == 0;
    if !ok {
        tracing::warn!(
            "cannot make this process non-dumpable: processes of the same user can read its memory"
        );
    }
}

/// Kills and reaps every remaining child of this process: between jobs the
/// runner has none of its own, so any left are a test's escaped daemons.
fn kill_orphans() {
    if !REAP_ORPHANS.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let killed = kill_all_children();
    if killed > 0 {
        tracing::info!(killed, "killed processes the test left behind");
    }
}

/// Kills (SIGKILL) and reaps every child of this process, again until none
/// is left: in a subreaper, the children of each killed process become its
/// own. Returns how many were killed.
pub(crate) fn kill_all_children() -> usize {
    // Bounded: each round takes down one more level of the tree, and a
    // killed process forks no more.
    const MAX_ROUNDS: usize = 1000;
    let mut killed = 0;
    for _ in 0..MAX_ROUNDS {
        let children = child_pids();
        if children.is_empty() {
            break;
        }
        for pid in children {
            // SAFETY: kill and waitpid on our own child; no memory involved.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            killed += 1;
        }
    }
    killed
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
        // created for the test's supervisor; no memory-safety preconditions.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// The liveness pipe: (read end for the supervisor, write end the runner
/// keeps). Both ends close on exec, so no other child inherits them; the
/// read end is moved to [`LIVENESS_FD`] in the supervisor only.
fn liveness_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into the local array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// How the supervisor's test is started, beyond `sh -c CMD`: in a sandbox,
/// in cgroups, under an address-space limit.
#[derive(Debug, Default)]
pub struct Launch {
    /// What goes before `sh -c CMD` (`bwrap ARGS --`); empty for none.
    pub wrapper: Vec<OsString>,
    /// Whether to give the wrapper a status pipe on
    /// [`crate::sandbox::STATUS_FD`] (bubblewrap's `--json-status-fd`).
    pub status_pipe: bool,
    /// Open `cgroup.procs` files the supervisor enters before it execs.
    pub cgroup_procs: Vec<RawFd>,
    /// `RLIMIT_AS` for the supervisor and everything it starts.
    pub address_space: Option<u64>,
}

/// Runs `command` with `sh -c` in `dir`, under the supervisor
/// (`supervisor supervise -- sh -c command`; `supervisor` is the `warren`
/// binary).
#[allow(clippy::too_many_arguments)]
pub async fn run_test(
    supervisor: &Path,
    command: &str,
    dir: &Path,
    env: &[(String, String)],
    timeout: Duration,
    output_cap: usize,
    live: &LiveOutput,
    cancel: &CancellationToken,
) -> std::io::Result<TestRun> {
    run_test_with(
        supervisor,
        command,
        dir,
        env,
        timeout,
        output_cap,
        live,
        cancel,
        &Launch::default(),
    )
    .await
}

/// [`run_test`], started as `launch` says (`supervisor supervise --
/// WRAPPER... sh -c command`).
#[allow(clippy::too_many_arguments)]
pub async fn run_test_with(
    supervisor: &Path,
    command: &str,
    dir: &Path,
    env: &[(String, String)],
    timeout: Duration,
    output_cap: usize,
    live: &LiveOutput,
    cancel: &CancellationToken,
    launch: &Launch,
) -> std::io::Result<TestRun> {
    let started = Instant::now();
    let (sender, mut receiver) = tokio::net::unix::pipe::pipe()?;
    let write_end = sender.into_blocking_fd()?;
    let (liveness_read, liveness_write) = liveness_pipe()?;
    let status = if launch.status_pipe {
        Some(status_pipe()?)
    } else {
        None
    };
    let mut child = {
        let read_fd = liveness_read.as_raw_fd();
        let status_fd = status.as_ref().map(|(_, write)| write.as_raw_fd());
        let procs = launch.cgroup_procs.clone();
        let address_space = launch.address_space;
        let mut cmd = Command::new(supervisor);
        cmd.arg0("warren")
            .args(["supervise", "--"])
            .args(&launch.wrapper)
            .args(["sh", "-c"])
            .arg(command)
            .current_dir(dir)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(write_end.try_clone()?))
            .stderr(Stdio::from(write_end))
            // Not killed on drop: dropping the liveness pipe (below) is
            // what stops it, and it must live to kill the test's tree.
            .process_group(0);
        // SAFETY: dup2 and fcntl are async-signal-safe and touch no memory
        // of ours. The read end goes to the fd the supervisor expects; dup2
        // clears close-on-exec on the copy (and when it already is that fd,
        // the flag is cleared directly).
        unsafe {
            cmd.pre_exec(move || {
                let ok = if read_fd == LIVENESS_FD {
                    libc::fcntl(read_fd, libc::F_SETFD, 0) != -1
                } else {
                    libc::dup2(read_fd, LIVENESS_FD) != -1
                };
                if !ok {
                    return Err(std::io::Error::last_os_error());
                }
                // The status pipe's write end is above 9 (see
                // `status_pipe`), so the dup2 above left it alone.
                if let Some(fd) = status_fd {
                    if libc::dup2(fd, STATUS_FD) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // Into the job's cgroups before anything of the test runs:
                // "0" is the writing process. A failure stops the job
                // rather than run it unlimited.
                for fd in &procs {
                    if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some(bytes) = address_space {
                    let limit = libc::rlimit {
                        rlim_cur: bytes as libc::rlim_t,
                        rlim_max: bytes as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        cmd.spawn()?
        // `cmd` drops here, closing our copies of the output's write end.
    };
    drop(liveness_read);
    let status_read = status.map(|(read, write)| {
        drop(write);
        read
    });
    // While this is open the supervisor lets the test run; closing it (or
    // this process dying) makes it kill the test's whole tree.
    let mut liveness = Some(liveness_write);
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
    if !matches!(ending, Ending::Exited(_)) {
        // One way to stop a test: the supervisor kills the tree and exits.
        drop(liveness.take());
        if tokio::time::timeout(SUPERVISOR_STOP, child.wait())
            .await
            .is_err()
        {
            tracing::warn!("the test's supervisor did not stop in time; killing it");
            kill_group(pgid);
            let _ = child.wait().await;
        }
    }
    drop(liveness);
    // The second layer: the supervisor's group, and whatever a killed
    // supervisor left to this process as subreaper.
    kill_group(pgid);
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
        sandbox_status: status_read.map(read_status),
    })
}

/// A pipe for the sandbox's status: (read end, write end), both
/// close-on-exec, the write end numbered 10 or above so that it survives
/// the moves to fds 3 and 4 in the child.
fn status_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = liveness_pipe()?;
    // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor; it is owned here.
    let high = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if high == -1 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `high` was just created and is owned by nobody else.
    Ok((read, unsafe { OwnedFd::from_raw_fd(high) }))
}

/// What the sandbox wrote on its status pipe (every writer has exited, or
/// the job was stopped: whatever is there is read without waiting).
fn read_status(read: OwnedFd) -> String {
    let fd = read.as_raw_fd();
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    // SAFETY: fcntl on our descriptor, read into a local buffer.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        loop {
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            if n <= 0 || text.len() > 64 * 1024 {
                break;
            }
            text.extend_from_slice(&buf[..n as usize]);
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}
