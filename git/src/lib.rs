//! Running the `git` program for the observer, the runner and the API.
//!
//! Always an argument vector (never a shell string), never an interactive
//! prompt, `--` before anything a user or a message controls, and a
//! deadline on every call: a git server that accepts a connection and never
//! answers must not hang a component. A call that runs over is killed with
//! its whole process group (remote helpers, ssh), so nothing is left behind.
//!
//! The runner's git is [`Git::sealed`]: it works in clones that a test has
//! been able to write to, so nothing there may make it run a command.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::process::Command;

/// How long one git call may take unless told otherwise (`--git-timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// A git command that failed, with what git said.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot run git {args}: {source}")]
    Spawn {
        args: String,
        #[source]
        source: std::io::Error,
    },
    #[error("git {args} failed: {stderr}")]
    Failed { args: String, stderr: String },
    #[error("git {args} timed out after {} s and was killed", after.as_secs_f64())]
    TimedOut { args: String, after: Duration },
}

impl GitError {
    /// Whether git ran over its deadline (rather than answering with an
    /// error).
    pub fn is_timeout(&self) -> bool {
        matches!(self, GitError::TimedOut { .. })
    }
}

pub type Result<T, E = GitError> = std::result::Result<T, E>;

/// How to run git: where, for how long at most, and with what environment.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Git {
    dir: Option<PathBuf>,
    timeout: Duration,
    /// The whole environment git gets; `None`: this process's.
    env: Option<Arc<[(String, String)]>>,
    sealed: bool,
}

impl Git {
    /// Git operating in `dir` (a work tree or a bare repository).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Git {
            dir: Some(dir.into()),
            ..Git::anywhere()
        }
    }

    /// Git not bound to a repository (`clone`, `ls-remote`).
    pub fn anywhere() -> Self {
        Git {
            dir: None,
            timeout: DEFAULT_TIMEOUT,
            env: None,
            sealed: false,
        }
    }

    /// The same settings in another directory.
    pub fn in_dir(&self, dir: impl Into<PathBuf>) -> Self {
        Git {
            dir: Some(dir.into()),
            ..self.clone()
        }
    }

    /// Every call is killed, with its process group, after `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Git gets exactly this environment (plus the variables that keep it
    /// from prompting), not this process's.
    pub fn with_env(mut self, env: Vec<(String, String)>) -> Self {
        self.env = Some(env.into());
        self
    }

    /// For repositories that untrusted code could write to: hooks and the
    /// file-system monitor are off whatever the repository's config says,
    /// the user's global config and attributes (which a test can write) are
    /// ignored, and replace refs are not followed. The caller still owns the repository
    /// config itself (see the runner's workspace, which rewrites it).
    pub fn sealed(mut self) -> Self {
        self.sealed = true;
        self
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `git [-C dir] ARGS...` and returns its stdout, trimmed at the end.
    pub async fn run(&self, args: &[&str]) -> Result<String> {
        let path = match &self.env {
            Some(env) => env
                .iter()
                .find(|(key, _)| key == "PATH")
                .map(|(_, value)| OsString::from(value)),
            None => std::env::var_os("PATH"),
        };
        let mut command = Command::new(program(path.as_deref()));
        if self.sealed {
            // The user's attributes file (`~/.config/git/attributes`) is
            // read even without a global config, and can re-encode or
            // rewrite the files a checkout writes.
            command.args([
                "-c",
                "core.hooksPath=/dev/null",
                "-c",
                "core.fsmonitor=false",
                "-c",
                "core.attributesFile=/dev/null",
            ]);
        }
        if let Some(dir) = &self.dir {
            command.arg("-C").arg(dir);
        }
        if let Some(env) = &self.env {
            command
                .env_clear()
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        }
        if self.sealed {
            command
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .env("GIT_NO_REPLACE_OBJECTS", "1");
        }
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Never wait for a password or a host-key prompt.
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "true")
            .env("SSH_ASKPASS", "true")
            .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
            .env("LC_ALL", "C")
            // Its own process group, so that a call that runs over (or is
            // abandoned) is killed with the helpers it started.
            .process_group(0)
            .kill_on_drop(true);
        let shown = shown_command(args);
        let child = command.spawn().map_err(|source| GitError::Spawn {
            args: shown.clone(),
            source,
        })?;
        let group = GroupGuard(child.id().map(|pid| pid as i32));
        let output = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(output) => output.map_err(|source| GitError::Spawn {
                args: shown.clone(),
                source,
            })?,
            Err(_) => {
                return Err(GitError::TimedOut {
                    args: shown,
                    after: self.timeout,
                })
            }
        };
        group.disarm();
        if output.status.success() {
            let mut stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            let trimmed = stdout.trim_end().len();
            stdout.truncate(trimmed);
            Ok(stdout)
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let stderr = stderr.trim();
            Err(GitError::Failed {
                args: shown,
                stderr: if stderr.is_empty() {
                    format!("exit status {}", output.status)
                } else {
                    stderr.lines().take(5).collect::<Vec<_>>().join(" / ")
                },
            })
        }
    }

    /// Like [`Git::run`] but `Ok(None)` when git exits non-zero (for
    /// questions such as "does this object exist?").
    pub async fn try_run(&self, args: &[&str]) -> Result<Option<String>> {
        match self.run(args).await {
            Ok(out) => Ok(Some(out)),
            Err(GitError::Failed { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }
}

/// The git found on `path` (the PATH git is started with), by absolute
/// path, remembered for the last PATH asked about; plain `git` if none is
/// found (the spawn then says so). Named by path, git is started with
/// posix_spawn, which borrows this process's memory until the exec; by
/// name with an environment of its own, the standard library forks instead,
/// copying the page tables of the whole process (the runner's every job
/// paid that), and searches the PATH again each time.
fn program(path: Option<&OsStr>) -> PathBuf {
    static FOUND: Mutex<Option<(OsString, PathBuf)>> = Mutex::new(None);
    let Some(path) = path else {
        return PathBuf::from("git");
    };
    if let Ok(found) = FOUND.lock() {
        if let Some((searched, program)) = found.as_ref() {
            if searched == path {
                return program.clone();
            }
        }
    }
    let Some(program) = find_program("git", path) else {
        return PathBuf::from("git");
    };
    if let Ok(mut found) = FOUND.lock() {
        *found = Some((path.to_owned(), program.clone()));
    }
    program
}

/// The program `name` on `path` (a PATH value), by absolute path: the
/// first executable file of that name in one of its absolute folders
/// (relative ones, such as `.`, are never searched).
pub fn find_program(name: &str, path: &OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The command as errors show it: without leading `-c key=value` config
/// overrides, so that a reason reads "git clone … timed out".
fn shown_command(args: &[&str]) -> String {
    let mut rest = args;
    while let ["-c", _, tail @ ..] = rest {
        rest = tail;
    }
    rest.join(" ")
}

/// Kills a git call's process group when the call is abandoned: it ran
/// over its deadline, or the future running it was dropped (a cancelled
/// job, a shutdown).
struct GroupGuard(Option<i32>);

impl GroupGuard {
    /// The call finished by itself; its group needs nothing.
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.filter(|pgid| *pgid > 0) {
            // SAFETY: kill(2) with a negative pid signals the process group
            // this call created for git; no memory is involved.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_is_named_by_its_path_on_the_path_it_is_started_with() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = dir.path().join("git");
        std::fs::write(&fake, "#!/bin/sh\n").expect("write");
        let path = |dirs: &[&Path]| std::env::join_paths(dirs).expect("a PATH");
        // Not executable: passed over.
        assert_eq!(program(Some(&path(&[dir.path()]))), PathBuf::from("git"));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let empty = tempfile::tempdir().expect("tempdir");
        assert_eq!(program(Some(&path(&[empty.path(), dir.path()]))), fake);
        // Another PATH is searched anew, not answered from the last one.
        assert_eq!(program(Some(&path(&[empty.path()]))), PathBuf::from("git"));
        // Relative folders are never searched.
        assert_eq!(program(Some(OsStr::new("."))), PathBuf::from("git"));
    }

    #[tokio::test]
    async fn runs_git_and_reports_failures_with_context() {
        let dir = tempfile::tempdir().expect("tempdir");
        let git = Git::new(dir.path());
        git.run(&["init", "-q", "-b", "main"]).await.expect("init");
        let err = git
            .run(&[
                "rev-parse",
                "--verify",
                "--end-of-options",
                "refs/heads/nope",
            ])
            .await
            .expect_err("no such ref");
        assert!(err.to_string().contains("rev-parse"), "{err}");
        assert_eq!(
            git.try_run(&["rev-parse", "--verify", "-q", "HEAD"])
                .await
                .expect("ran"),
            None
        );
    }

    /// A TCP server that accepts connections and never answers: the stalled
    /// git server of the field report.
    fn silent_server() -> (std::net::TcpListener, String) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        (listener, format!("git://127.0.0.1:{port}/stalled.git"))
    }

    #[tokio::test]
    async fn a_stalled_server_is_cut_off_at_the_deadline_with_its_helpers() {
        let (_server, url) = silent_server();
        let git = Git::anywhere().with_timeout(Duration::from_millis(500));
        let started = std::time::Instant::now();
        let err = git
            .run(&["ls-remote", "--", &url])
            .await
            .expect_err("stalls");
        assert!(err.is_timeout(), "{err}");
        assert!(err.to_string().contains("ls-remote"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_sealed_git_runs_no_hook_and_no_fsmonitor_the_repository_asks_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("ran");
        let plain = Git::new(dir.path().join("repo"));
        std::fs::create_dir_all(dir.path().join("repo")).expect("mkdir");
        plain
            .run(&["init", "-q", "-b", "main"])
            .await
            .expect("init");
        let hook = dir.path().join("repo/.git/hooks/post-checkout");
        let script = format!("#!/bin/sh\necho hook >> {}\n", marker.display());
        std::fs::write(&hook, script).expect("hook");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let fsmonitor = format!("echo fsmonitor >> {}; false", marker.display());
        plain
            .run(&["config", "core.fsmonitor", &fsmonitor])
            .await
            .expect("config");
        let commit = [
            "-c",
            "user.name=T",
            "-c",
            "user.email=t@e",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "c",
        ];
        plain.run(&commit).await.expect("commit");
        // Making the commit may already have run the monitor.
        let _ = std::fs::remove_file(&marker);
        let sealed = plain.clone().sealed();
        sealed
            .run(&["checkout", "-q", "--detach", "HEAD"])
            .await
            .expect("checkout");
        sealed
            .run(&["status", "--porcelain"])
            .await
            .expect("status");
        assert!(!marker.exists(), "a sealed git ran the repository's code");
        // The same calls without the seal do run them: the probe works.
        plain
            .run(&["checkout", "-q", "--detach", "HEAD"])
            .await
            .expect("checkout");
        plain.run(&["status", "--porcelain"]).await.expect("status");
        let ran = std::fs::read_to_string(&marker).expect("the plain git ran them");
        assert!(ran.contains("hook") && ran.contains("fsmonitor"), "{ran}");
    }
}
