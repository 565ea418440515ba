//! Running the `git` program for the observer and the runner.
//!
//! Always an argument vector (never a shell string), never an interactive
//! prompt, and `--` before anything a user or a message controls. Errors
//! carry the command and git's own message.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

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
}

pub type Result<T, E = GitError> = std::result::Result<T, E>;

/// Git operating in one directory (a work tree or a bare repository).
#[derive(Debug, Clone)]
pub struct Git {
    dir: PathBuf,
}

impl Git {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Git { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `git -C dir ARGS...` and returns its stdout, trimmed at the end.
    pub async fn run(&self, args: &[&str]) -> Result<String> {
        run_in(Some(&self.dir), args).await
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

/// Runs git with `args`, in `dir` if given.
pub async fn run_in(dir: Option<&Path>, args: &[&str]) -> Result<String> {
    let mut command = Command::new("git");
    if let Some(dir) = dir {
        command.arg("-C").arg(dir);
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
        .kill_on_drop(true);
    let shown = args.join(" ");
    let output = command.output().await.map_err(|source| GitError::Spawn {
        args: shown.clone(),
        source,
    })?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
