//! The runner's clones: one per repository under the workdir, brought to the
//! exact commit of each job (fetched if needed, checked out detached and
//! forced, untracked files cleaned).
//!
//! A clone that cannot be brought to a clean state is thrown away and cloned
//! again, so one broken job never taints the ones after it.

use std::path::PathBuf;
use std::time::Duration;

use broker::message::Job;
use git::Git;
use sha2::{Digest, Sha256};

/// Tries for an operation that talks to the remote (clone, fetch).
const REMOTE_TRIES: u32 = 3;

/// Why a job's checkout could not be prepared. Every variant becomes an
/// `error` outcome with this text as the reason.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("repository {repo} cannot be reached: {reason}")]
    Unreachable { repo: String, reason: String },
    #[error("commit {commit} does not exist in {repo} (not found after fetching)")]
    MissingCommit { repo: String, commit: String },
    #[error("the workspace is broken: {0}")]
    Broken(String),
}

/// The folder holding the runner's clones.
#[derive(Debug, Clone)]
pub struct Workspace {
    root: PathBuf,
    /// How long one git call may take (`--git-timeout`).
    git_timeout: Duration,
}

impl Workspace {
    pub fn new(root: PathBuf) -> Self {
        Workspace {
            root,
            git_timeout: git::DEFAULT_TIMEOUT,
        }
    }

    /// Every git call is killed, with its process group, after `timeout`.
    pub fn with_git_timeout(mut self, timeout: Duration) -> Self {
        self.git_timeout = timeout;
        self
    }

    /// How the workspace runs git; every git call starts from here.
    fn git(&self) -> Git {
        Git::anywhere().with_timeout(self.git_timeout)
    }

    fn clone_dir(&self, repo: &str) -> PathBuf {
        let digest = Sha256::digest(repo.as_bytes());
        let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        self.root.join("repos").join(name)
    }

    /// Brings the clone of `job.repo` to `job.commit` and returns its path.
    pub async fn checkout(&self, job: &Job) -> Result<PathBuf, PrepareError> {
        match self.try_checkout(job).await {
            Err(PrepareError::Broken(reason)) => {
                tracing::warn!(job = %job.id, %reason, "workspace broken; cloning again");
                let dir = self.clone_dir(&job.repo);
                let _ = tokio::fs::remove_dir_all(&dir).await;
                self.try_checkout(job).await
            }
            other => other,
        }
    }

    async fn try_checkout(&self, job: &Job) -> Result<PathBuf, PrepareError> {
        let clock = std::time::Instant::now();
        let dir = self.clone_dir(&job.repo);
        if !dir.join(".git").exists() {
            tokio::fs::create_dir_all(self.root.join("repos"))
                .await
                .map_err(|e| {
                    PrepareError::Broken(format!("creating {}: {e}", self.root.display()))
                })?;
            let target = dir.to_string_lossy().into_owned();
            let mut clone = vec!["clone", "--no-checkout", "--quiet"];
            // A repository on this machine is shared, not copied: its new
            // commits are then visible to the clone at once, with no fetch.
            // If it later loses objects the clone used (a force push and a
            // gc), the checkout fails as broken and the clone is redone.
            if is_local_path(&job.repo) {
                clone.push("--shared");
            }
            clone.extend(["--", job.repo.as_str(), target.as_str()]);
            // A clone cut off (timed out) leaves a partial folder behind:
            // each try starts without it.
            remote(&self.git(), &job.repo, &clone, Some(&dir)).await?;
        }
        let git = self.git().in_dir(&dir);
        let broken = |e: git::GitError| PrepareError::Broken(e.to_string());
        // Optimistic: most commits are already here (a shared clone sees
        // them at once), and every git process costs a few milliseconds.
        let mut fetch_ms = 0;
        if let Err(first) = checkout(&git, &job.commit).await {
            // Either the commit is new (fetch it) or the clone is broken.
            if let Err(unreachable) = remote(
                &git,
                &job.repo,
                &["fetch", "--quiet", "--prune", "origin"],
                None,
            )
            .await
            {
                return Err(match self.classify(&git, &job.commit).await {
                    Ok(false) => unreachable,
                    Ok(true) => PrepareError::Broken(first.to_string()),
                    Err(err) => err,
                });
            }
            fetch_ms = clock.elapsed().as_millis() as u64;
            if let Err(second) = checkout(&git, &job.commit).await {
                if !self.classify(&git, &job.commit).await? {
                    // Some servers serve unadvertised commits by id.
                    let _ = git.run(&["fetch", "--quiet", "origin", &job.commit]).await;
                    if !self.classify(&git, &job.commit).await? {
                        return Err(PrepareError::MissingCommit {
                            repo: job.repo.clone(),
                            commit: job.commit.clone(),
                        });
                    }
                    checkout(&git, &job.commit).await.map_err(broken)?;
                } else {
                    return Err(broken(second));
                }
            }
        }
        let checkout_ms = clock.elapsed().as_millis() as u64 - fetch_ms;
        git.run(&["clean", "-ffdxq"]).await.map_err(broken)?;
        let clean_ms = clock.elapsed().as_millis() as u64 - fetch_ms - checkout_ms;
        // The per-job overhead, for the benchmarks (RUST_LOG=warren_runner=debug).
        tracing::debug!(job = %job.id, fetch_ms, checkout_ms, clean_ms, "checkout timings");
        Ok(dir)
    }

    /// After a checkout failed: whether the clone has the commit (so the
    /// failure was not about a missing commit), or an error if git no longer
    /// recognises the clone at all.
    async fn classify(&self, git: &Git, commit: &str) -> Result<bool, PrepareError> {
        let broken = |e: git::GitError| PrepareError::Broken(e.to_string());
        git.run(&["rev-parse", "--git-dir"]).await.map_err(broken)?;
        let object = format!("{commit}^{{commit}}");
        git.try_run(&["cat-file", "-e", "--end-of-options", &object])
            .await
            .map(|found| found.is_some())
            .map_err(broken)
    }
}

/// Checks out `commit` detached, discarding any change to tracked files.
async fn checkout(git: &Git, commit: &str) -> Result<String, git::GitError> {
    git.run(&["checkout", "--quiet", "--force", "--detach", commit, "--"])
        .await
}

/// Whether `repo` names a folder on this machine rather than a URL (jobs
/// carry absolute paths or URLs, see `broker::message::validate_repo`).
fn is_local_path(repo: &str) -> bool {
    repo.starts_with('/')
}

/// Runs a remote operation up to [`REMOTE_TRIES`] times with a short
/// backoff; a try that runs past the git timeout counts as a failed one.
/// `scrap` is removed before each try (the target of a clone).
async fn remote(
    git: &Git,
    repo: &str,
    args: &[&str],
    scrap: Option<&std::path::Path>,
) -> Result<(), PrepareError> {
    let mut delay = Duration::from_millis(300);
    let mut last = String::new();
    for attempt in 1..=REMOTE_TRIES {
        if let Some(scrap) = scrap {
            let _ = tokio::fs::remove_dir_all(scrap).await;
        }
        match git.run(args).await {
            Ok(_) => return Ok(()),
            Err(err) => {
                last = err.to_string();
                tracing::debug!(attempt, repo, %last, "remote git operation failed");
            }
        }
        if attempt < REMOTE_TRIES {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    Err(PrepareError::Unreachable {
        repo: repo.to_string(),
        reason: format!("{last} (after {REMOTE_TRIES} tries)"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Commits `content` as file `a` (with `extra` arguments to `git
    /// commit`) and returns the new head.
    async fn commit_in(repo: &std::path::Path, content: &str, extra: &[&str]) -> String {
        let git = Git::new(repo);
        std::fs::write(repo.join("a"), content).expect("write");
        git.run(&["add", "a"]).await.expect("add");
        let mut args = vec!["-c", "user.name=T", "-c", "user.email=t@e"];
        args.extend_from_slice(&["commit", "-qm", "next"]);
        args.extend_from_slice(extra);
        git.run(&args).await.expect("commit");
        git.run(&["rev-parse", "HEAD"]).await.expect("head")
    }

    async fn repo_with_commit() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        Git::new(dir.path())
            .run(&["init", "-q", "-b", "main"])
            .await
            .expect("init");
        let head = commit_in(dir.path(), "1", &[]).await;
        (dir, head)
    }

    /// A repository with one commit and a runner workspace: (repository,
    /// its head, workspace folder, workspace).
    async fn fixture() -> (tempfile::TempDir, String, tempfile::TempDir, Workspace) {
        let (repo, head) = repo_with_commit().await;
        let work = tempfile::tempdir().expect("tempdir");
        let ws = Workspace::new(work.path().to_path_buf());
        (repo, head, work, ws)
    }

    #[tokio::test]
    async fn checks_out_the_commit_and_cleans_untracked_files() {
        let (repo, head, _work, ws) = fixture().await;
        let job = Job::for_commit(repo.path().to_str().expect("utf8"), "main", &head);
        let dir = ws.checkout(&job).await.expect("checkout");
        assert_eq!(std::fs::read_to_string(dir.join("a")).expect("a"), "1");
        std::fs::write(dir.join("junk"), "x").expect("junk");
        let again = ws.checkout(&job).await.expect("again");
        assert!(!again.join("junk").exists());
    }

    #[tokio::test]
    async fn a_local_repository_is_shared_so_new_commits_need_no_fetch() {
        let (repo, head, _work, ws) = fixture().await;
        let location = repo.path().to_str().expect("utf8");
        let dir = ws
            .checkout(&Job::for_commit(location, "main", &head))
            .await
            .expect("checkout");
        assert!(dir.join(".git/objects/info/alternates").exists());
        // With no way to fetch, the next commit can only come through the
        // shared object store.
        Git::new(&dir)
            .run(&["remote", "set-url", "origin", "/nonexistent/warren-repo"])
            .await
            .expect("set-url");
        let next = commit_in(repo.path(), "2", &[]).await;
        let dir = ws
            .checkout(&Job::for_commit(location, "main", &next))
            .await
            .expect("checkout without fetch");
        assert_eq!(std::fs::read_to_string(dir.join("a")).expect("a"), "2");
    }

    #[tokio::test]
    async fn a_shared_clone_whose_objects_were_pruned_is_cloned_again() {
        let (repo, head, _work, ws) = fixture().await;
        let location = repo.path().to_str().expect("utf8");
        ws.checkout(&Job::for_commit(location, "main", &head))
            .await
            .expect("checkout");
        // Rewrite history and prune: the clone's HEAD commit is gone.
        let amended = commit_in(repo.path(), "3", &["--amend"]).await;
        let git = Git::new(repo.path());
        git.run(&["reflog", "expire", "--expire=now", "--all"])
            .await
            .expect("reflog");
        git.run(&["gc", "--quiet", "--prune=now"])
            .await
            .expect("gc");
        let dir = ws
            .checkout(&Job::for_commit(location, "main", &amended))
            .await
            .expect("checkout after the prune");
        assert_eq!(std::fs::read_to_string(dir.join("a")).expect("a"), "3");
    }

    #[tokio::test]
    async fn a_missing_commit_and_an_unreachable_repo_are_errors() {
        let (repo, _, _work, ws) = fixture().await;
        let job = Job::for_commit(repo.path().to_str().expect("utf8"), "main", &"e".repeat(40));
        assert!(matches!(
            ws.checkout(&job).await,
            Err(PrepareError::MissingCommit { .. })
        ));
        let job = Job::for_commit("/nonexistent/warren-repo", "main", &"e".repeat(40));
        assert!(matches!(
            ws.checkout(&job).await,
            Err(PrepareError::Unreachable { .. })
        ));
    }

    #[tokio::test]
    async fn a_stalled_server_is_unreachable_after_three_timed_out_tries() {
        // Accepts connections and never answers.
        let server = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("git://{}/stalled.git", server.local_addr().expect("addr"));
        let work = tempfile::tempdir().expect("tempdir");
        let ws =
            Workspace::new(work.path().to_path_buf()).with_git_timeout(Duration::from_millis(300));
        let job = Job::for_commit(&url, "main", &"e".repeat(40));
        let err = ws.checkout(&job).await.expect_err("stalled");
        let reason = err.to_string();
        assert!(matches!(err, PrepareError::Unreachable { .. }), "{reason}");
        assert!(
            reason.contains("git clone") && reason.contains("timed out after 0.3 s"),
            "{reason}"
        );
        assert!(reason.ends_with("(after 3 tries)"), "{reason}");
    }
}
