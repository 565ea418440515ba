//! The runner's clones: one per repository under the workdir, brought to the
//! exact commit of each job (fetched if needed, checked out detached and
//! forced, untracked files cleaned — unless the tree provably holds none,
//! see `tidy.rs`).
//!
//! A clone that cannot be brought to a clean state is thrown away and cloned
//! again, so one broken job never taints the ones after it.
//!
//! A test can write to every clone (its own checkout, and the others beside
//! it in the workdir), `.git` included. So the runner's git never runs
//! anything from there: it is [`Git::sealed`] (no hooks, no fsmonitor, no
//! user config, no replace refs), it gets the test's scrubbed environment,
//! and before each job `.git` is checked and rebuilt ([`seal_git_dir`]):
//! the repository config is rewritten from the job alone, and the files
//! that make git run commands or read from elsewhere are removed.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use git::Git;
use model::{CommitId, Job, RepoUrl};
use sha2::{Digest, Sha256};

use crate::process::scrubbed_env;
use crate::tidy::TreeState;

/// Tries for an operation that talks to the remote (clone, fetch).
const REMOTE_TRIES: u32 = 3;

/// Files and folders under `.git` that a clone made by the runner does not
/// have, and through which a test could make git run a command or read
/// objects, refs or config from elsewhere.
const FORBIDDEN_IN_GIT_DIR: [&str; 7] = [
    "hooks",
    "info/attributes",
    "info/grafts",
    "config.worktree",
    "commondir",
    "objects/info/http-alternates",
    "shallow",
];

/// Why a job's checkout could not be prepared. Every variant becomes an
/// `error` outcome with this text as the reason.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("repository {repo} cannot be reached: {reason}")]
    Unreachable { repo: RepoUrl, reason: String },
    #[error("commit {commit} does not exist in {repo} (not found after fetching)")]
    MissingCommit { repo: RepoUrl, commit: CommitId },
    #[error("the workspace is broken: {0}")]
    Broken(String),
}

/// A job's prepared clone.
#[derive(Debug)]
pub struct Checkout {
    /// The clone's work tree, at the job's commit.
    pub dir: PathBuf,
    /// Whether `git clean` ran (it is skipped when the tree was left as the
    /// previous checkout made it).
    pub cleaned: bool,
}

/// The folder holding the runner's clones.
#[derive(Debug, Clone)]
pub struct Workspace {
    root: PathBuf,
    /// How the workspace runs git, before the job's environment is added:
    /// see [`Workspace::git_for`].
    git: Git,
    /// Each clone's state right after its last checkout and clean; taken
    /// out when the next checkout starts, so a failed one leaves none.
    tidy: Arc<Mutex<HashMap<PathBuf, TreeState>>>,
}

impl Workspace {
    pub fn new(root: PathBuf) -> Self {
        Workspace {
            root,
            git: Git::anywhere().sealed(),
            tidy: Arc::default(),
        }
    }

    /// Every git call is killed, with its process group, after `timeout`.
    pub fn with_git_timeout(mut self, timeout: Duration) -> Self {
        self.git = self.git.with_timeout(timeout);
        self
    }

    /// The one place the workspace's git is made: sealed, with the git
    /// timeout, and with exactly the environment the job's test gets
    /// (nothing of the runner's own).
    fn git_for(&self, job: &Job) -> Git {
        self.git
            .clone()
            .with_env(scrubbed_env(&job.commit, &job.branch))
    }

    fn repos_dir(&self) -> PathBuf {
        self.root.join("repos")
    }

    fn clone_dir(&self, repo: &str) -> PathBuf {
        let digest = Sha256::digest(repo.as_bytes());
        let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        self.repos_dir().join(name)
    }

    /// Brings the clone of `job.repo` to `job.commit` and returns its path.
    pub async fn checkout(&self, job: &Job) -> Result<Checkout, PrepareError> {
        match self.try_checkout(job).await {
            Err(PrepareError::Broken(reason)) => {
                tracing::warn!(job = %job.id, %reason, "workspace broken; cloning again");
                remove_clone(&self.clone_dir(&job.repo)).await;
                self.try_checkout(job).await
            }
            other => other,
        }
    }

    async fn try_checkout(&self, job: &Job) -> Result<Checkout, PrepareError> {
        let clock = std::time::Instant::now();
        let dir = self.clone_dir(&job.repo);
        let anywhere = self.git_for(job);
        let shared = shared_objects(&job.repo);
        // A test may have replaced the folder of clones, a clone or its
        // `.git` with a symlink (or removed them): then start afresh.
        if !is_real_dir(&self.repos_dir()) {
            remove_clone(&self.repos_dir()).await;
        }
        if !is_real_dir(&dir) || !is_real_dir(&dir.join(".git")) {
            remove_clone(&dir).await;
            tokio::fs::create_dir_all(self.repos_dir())
                .await
                .map_err(|e| {
                    PrepareError::Broken(format!("creating {}: {e}", self.root.display()))
                })?;
            let target = dir.to_string_lossy().into_owned();
            // Always the files ref format: the config the workspace writes
            // (below) describes exactly that.
            let mut clone = vec![
                "-c",
                "init.defaultRefFormat=files",
                "clone",
                "--no-checkout",
                "--quiet",
            ];
            // A repository on this machine is shared, not copied: its new
            // commits are then visible to the clone at once, with no fetch.
            // If it later loses objects the clone used (a force push and a
            // gc), the checkout fails as broken and the clone is redone.
            if shared.is_some() {
                clone.push("--shared");
            }
            clone.extend(["--", job.repo.as_str(), target.as_str()]);
            // A clone cut off (timed out) leaves a partial folder behind:
            // each try starts without it.
            remote(&anywhere, &job.repo, &clone, Some(&dir)).await?;
        }
        seal_git_dir(&dir, job, shared.as_deref()).map_err(PrepareError::Broken)?;
        // Before the checkout changes it: is the tree as the last one left it?
        let tidy = self.still_tidy(&dir).await;
        let git = anywhere.in_dir(&dir);
        let broken = |e: git::GitError| PrepareError::Broken(e.to_string());
        // Optimistic: most commits are already here (a shared clone sees
        // them at once), and every git process costs a few milliseconds.
        let mut fetched = Duration::ZERO;
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
            fetched = clock.elapsed();
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
        let checked_out = clock.elapsed();
        if !tidy {
            git.run(&["clean", "-ffdxq"]).await.map_err(broken)?;
        }
        let cleaned = clock.elapsed();
        self.remember_tidy(&dir).await;
        // The per-job overhead, for the benchmarks (RUST_LOG=warren_runner=debug).
        tracing::debug!(
            job = %job.id,
            fetch_ms = crate::millis(fetched),
            checkout_ms = crate::millis(checked_out - fetched),
            clean_ms = crate::millis(cleaned - checked_out),
            cleaned = !tidy,
            "checkout timings"
        );
        Ok(Checkout {
            dir,
            cleaned: !tidy,
        })
    }

    /// Whether the clone at `dir` is in the state its last checkout and
    /// clean left (then `git clean` has nothing to remove). The remembered
    /// state is used once.
    async fn still_tidy(&self, dir: &Path) -> bool {
        let remembered = self.tidy.lock().ok().and_then(|mut map| map.remove(dir));
        let Some(remembered) = remembered else {
            return false;
        };
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || TreeState::of(&dir) == Some(remembered))
            .await
            .unwrap_or(false)
    }

    /// Remembers the state of the clone at `dir`, just checked out and
    /// clean, for the next job's [`Workspace::still_tidy`].
    async fn remember_tidy(&self, dir: &Path) {
        let path = dir.to_path_buf();
        let state = tokio::task::spawn_blocking(move || TreeState::of(&path))
            .await
            .ok()
            .flatten();
        if let (Some(state), Ok(mut map)) = (state, self.tidy.lock()) {
            map.insert(dir.to_path_buf(), state);
        }
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
/// `^{commit}` makes git read the id as an object name only: a bare 40-hex
/// argument would lose to a branch or tag of that name, which a test could
/// have planted to swap a later job's commit for another.
async fn checkout(git: &Git, commit: &str) -> Result<String, git::GitError> {
    let object = format!("{commit}^{{commit}}");
    git.run(&["checkout", "--quiet", "--force", "--detach", &object, "--"])
        .await
}

/// Checks and rebuilds a clone's `.git` so that nothing a test left there
/// affects the runner's git: the clone folder and `.git` must be real
/// folders and `HEAD` a plain file naming a ref or a commit (otherwise git
/// would look for a repository in the folders above, where a test could
/// have put one); the config is written anew from the job alone (never read
/// back: no `core.fsmonitor`, `core.sshCommand`, `core.hooksPath`,
/// `core.worktree`, `include.*`, `url.*`, `filter.*`, `credential.*`,
/// `protocol.*`, `diff.external` or anything else survives); hooks and the
/// other files of [`FORBIDDEN_IN_GIT_DIR`] are removed; the alternates file
/// is exactly the shared source's object folder, or absent.
///
/// A few system calls and small writes, no git process: it runs before
/// every job. An error means the clone is broken (cloned again).
pub(crate) fn seal_git_dir(dir: &Path, job: &Job, shared: Option<&Path>) -> Result<(), String> {
    let git_dir = dir.join(".git");
    for (path, what) in [
        (dir.to_path_buf(), "the clone"),
        (git_dir.clone(), ".git"),
        (git_dir.join("objects"), ".git/objects"),
        (git_dir.join("refs"), ".git/refs"),
    ] {
        if !is_real_dir(&path) {
            return Err(format!(
                "{what} ({}) is not a folder (a symlink, a file or missing)",
                path.display()
            ));
        }
    }
    let head = git_dir.join("HEAD");
    let head_ok = std::fs::symlink_metadata(&head)
        .is_ok_and(|m| m.file_type().is_file() && m.len() <= 1024)
        && std::fs::read_to_string(&head).is_ok_and(|text| is_valid_head(&text));
    if !head_ok {
        return Err(format!("{} is not a valid HEAD", head.display()));
    }
    for name in FORBIDDEN_IN_GIT_DIR {
        let path = git_dir.join(name);
        if std::fs::symlink_metadata(&path).is_ok() {
            remove_any(&path);
            if std::fs::symlink_metadata(&path).is_ok() {
                return Err(format!("cannot remove {}", path.display()));
            }
        }
    }
    write_atomically(&git_dir.join("config"), &canonical_config(job))?;
    let alternates = git_dir.join("objects/info/alternates");
    match shared {
        Some(objects) => {
            let info = git_dir.join("objects/info");
            if !is_real_dir(&info) {
                remove_any(&info);
                std::fs::create_dir(&info)
                    .map_err(|e| format!("creating {}: {e}", info.display()))?;
            }
            let line = format!("{}\n", objects.display());
            write_atomically(&alternates, &line)?;
        }
        None => {
            if std::fs::symlink_metadata(&alternates).is_ok() {
                remove_any(&alternates);
            }
        }
    }
    Ok(())
}

/// The repository config of a runner's clone, from the job alone: what
/// `git clone` writes, less the branch section (checkouts are detached).
fn canonical_config(job: &Job) -> String {
    // Commit ids are validated as 40 (SHA-1) or 64 (SHA-256) hex digits.
    let (version, extensions) = if job.commit.len() == 64 {
        ("1", "[extensions]\n\tobjectformat = sha256\n")
    } else {
        ("0", "")
    };
    // Always quoted, with git's escapes: a repository path may hold
    // characters (`#`, `;`, `"`) that mean something in a config file.
    let url = job.repo.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "[core]\n\trepositoryformatversion = {version}\n\tfilemode = true\n\tbare = false\n\tlogallrefupdates = true\n{extensions}[remote \"origin\"]\n\turl = \"{url}\"\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n"
    )
}

/// Whether `text` is what git accepts in `HEAD`: a symbolic ref under
/// `refs/`, or an object id.
fn is_valid_head(text: &str) -> bool {
    let line = text.trim_end_matches('\n');
    if let Some(target) = line.strip_prefix("ref: ") {
        return target.starts_with("refs/") && !target.contains(char::is_whitespace);
    }
    (line.len() == 40 || line.len() == 64) && line.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Replaces `path` with `content` in one step (a new file renamed over it),
/// so git never reads half a file and a symlink at `path` is replaced, not
/// followed.
fn write_atomically(path: &Path, content: &str) -> Result<(), String> {
    let temp = path.with_extension("warren-new");
    remove_any(&temp);
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&temp)?;
        file.write_all(content.as_bytes())?;
        std::fs::rename(&temp, path)
    };
    write().map_err(|e| {
        remove_any(&temp);
        format!("writing {}: {e}", path.display())
    })
}

/// Whether `path` is a folder itself, not a symlink to one.
fn is_real_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_dir())
}

/// [`remove_any`] off the async workers: a clone can be large.
async fn remove_clone(path: &Path) {
    let path = path.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || remove_any(&path)).await;
}

/// Removes whatever is at `path` (a folder with its content, a file, a
/// symlink — never what it points to); nothing there is fine.
fn remove_any(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_dir() => {
            let _ = std::fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
}

/// The object folder a clone of `repo` shares (`git clone --shared`), when
/// `repo` is a repository on this machine: `<repo>/.git/objects` for one
/// with a work tree, `<repo>/objects` for a bare one. Other repositories
/// (URLs, or paths laid out otherwise) are copied, not shared. Jobs carry
/// absolute paths or URLs (see `model::RepoUrl`).
fn shared_objects(repo: &str) -> Option<PathBuf> {
    if !repo.starts_with('/') {
        return None;
    }
    let repo = Path::new(repo);
    let dot_git = repo.join(".git");
    if dot_git.is_dir() {
        return Some(dot_git.join("objects"));
    }
    (repo.join("objects").is_dir() && repo.join("HEAD").is_file()).then(|| repo.join("objects"))
}

/// Runs a remote operation up to [`REMOTE_TRIES`] times with a short
/// backoff; a try that runs past the git timeout counts as a failed one.
/// `scrap` is removed before each try (the target of a clone).
async fn remote(
    git: &Git,
    repo: &RepoUrl,
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
                tracing::debug!(attempt, %repo, %last, "remote git operation failed");
            }
        }
        if attempt < REMOTE_TRIES {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    Err(PrepareError::Unreachable {
        repo: repo.clone(),
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
        let job =
            Job::try_new(repo.path().to_str().expect("utf8"), "main", &head).expect("a valid job");
        let dir = ws.checkout(&job).await.expect("checkout").dir;
        assert_eq!(std::fs::read_to_string(dir.join("a")).expect("a"), "1");
        std::fs::write(dir.join("junk"), "x").expect("junk");
        let again = ws.checkout(&job).await.expect("again").dir;
        assert!(!again.join("junk").exists());
    }

    #[tokio::test]
    async fn the_clean_is_skipped_only_while_the_tree_is_as_the_last_checkout_left_it() {
        let (repo, first, _work, ws) = fixture().await;
        let location = repo.path().to_str().expect("utf8");
        let job = |commit: &str| Job::try_new(location, "main", commit).expect("a valid job");
        // The first checkout of a clone always cleans.
        assert!(ws.checkout(&job(&first)).await.expect("first").cleaned);
        let second = commit_in(repo.path(), "2", &[]).await;
        let prepared = ws.checkout(&job(&second)).await.expect("second");
        assert!(!prepared.cleaned, "nothing was left to clean");
        assert_eq!(
            std::fs::read_to_string(prepared.dir.join("a")).expect("a"),
            "2"
        );
        // A tracked file changed in place: checkout's business, no clean.
        std::fs::write(prepared.dir.join("a"), "changed").expect("write");
        let prepared = ws.checkout(&job(&first)).await.expect("back");
        assert!(!prepared.cleaned);
        assert_eq!(
            std::fs::read_to_string(prepared.dir.join("a")).expect("a"),
            "1"
        );
        // An ignored file in a new folder: cleaned, then skipped again.
        std::fs::create_dir(prepared.dir.join("target")).expect("mkdir");
        std::fs::write(prepared.dir.join("target/out"), "x").expect("write");
        let prepared = ws.checkout(&job(&second)).await.expect("after the build");
        assert!(prepared.cleaned);
        assert!(!prepared.dir.join("target").exists());
        assert!(!ws.checkout(&job(&first)).await.expect("again").cleaned);
    }

    #[tokio::test]
    async fn a_file_untracked_by_editing_the_index_is_still_cleaned() {
        // The attack: drop a file from the index, so that it stays in the
        // tree (same paths as before) but the next checkout leaves it
        // behind as untracked, planted into a commit that does not have it.
        let (repo, _, _work, ws) = fixture().await;
        let location = repo.path().to_str().expect("utf8");
        std::fs::write(repo.path().join("planted"), "from an earlier job").expect("write");
        Git::new(repo.path())
            .run(&["add", "planted"])
            .await
            .expect("add");
        let with = commit_in(repo.path(), "2", &[]).await;
        Git::new(repo.path())
            .run(&["rm", "-q", "planted"])
            .await
            .expect("rm");
        let without = commit_in(repo.path(), "3", &[]).await;
        let job = |commit: &str| Job::try_new(location, "main", commit).expect("a valid job");
        let untrack = |dir: PathBuf| async move {
            Git::new(&dir)
                .run(&["rm", "-q", "--cached", "planted"])
                .await
                .expect("untrack");
        };
        // The probe works: without a clean, git's checkout keeps the file.
        let dir = ws.checkout(&job(&with)).await.expect("with").dir;
        untrack(dir.clone()).await;
        Git::new(&dir)
            .run(&["checkout", "-q", "--force", "--detach", &without])
            .await
            .expect("plain checkout");
        assert!(dir.join("planted").exists(), "the probe plants nothing");
        // Through the workspace it is cleaned.
        let dir = ws.checkout(&job(&with)).await.expect("with").dir;
        untrack(dir.clone()).await;
        let prepared = ws.checkout(&job(&without)).await.expect("without");
        assert!(prepared.cleaned);
        assert!(
            !prepared.dir.join("planted").exists(),
            "planted file survived"
        );
    }

    #[tokio::test]
    async fn a_local_repository_is_shared_so_new_commits_need_no_fetch() {
        let (repo, head, _work, ws) = fixture().await;
        let location = repo.path().to_str().expect("utf8");
        let dir = ws
            .checkout(&Job::try_new(location, "main", &head).expect("a valid job"))
            .await
            .expect("checkout")
            .dir;
        assert_eq!(
            std::fs::read_to_string(dir.join(".git/objects/info/alternates")).expect("alternates"),
            format!("{location}/.git/objects\n")
        );
        let next = commit_in(repo.path(), "2", &[]).await;
        let dir = ws
            .checkout(&Job::try_new(location, "main", &next).expect("a valid job"))
            .await
            .expect("checkout without fetch")
            .dir;
        assert_eq!(std::fs::read_to_string(dir.join("a")).expect("a"), "2");
        // A fetch would have moved the remote-tracking branch to `next`.
        let tracking = Git::new(&dir)
            .run(&["rev-parse", "refs/remotes/origin/main"])
            .await
            .expect("tracking branch");
        assert_eq!(tracking, head, "the new commit came without a fetch");
    }

    #[tokio::test]
    async fn a_shared_clone_whose_objects_were_pruned_is_cloned_again() {
        let (repo, head, _work, ws) = fixture().await;
        let location = repo.path().to_str().expect("utf8");
        ws.checkout(&Job::try_new(location, "main", &head).expect("a valid job"))
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
            .checkout(&Job::try_new(location, "main", &amended).expect("a valid job"))
            .await
            .expect("checkout after the prune")
            .dir;
        assert_eq!(std::fs::read_to_string(dir.join("a")).expect("a"), "3");
    }

    #[tokio::test]
    async fn a_missing_commit_and_an_unreachable_repo_are_errors() {
        let (repo, _, _work, ws) = fixture().await;
        let job = Job::try_new(repo.path().to_str().expect("utf8"), "main", &"e".repeat(40))
            .expect("a valid job");
        assert!(matches!(
            ws.checkout(&job).await,
            Err(PrepareError::MissingCommit { .. })
        ));
        let job =
            Job::try_new("/nonexistent/warren-repo", "main", &"e".repeat(40)).expect("a valid job");
        assert!(matches!(
            ws.checkout(&job).await,
            Err(PrepareError::Unreachable { .. })
        ));
    }

    /// Plants in `clone` every way a test could make git run a command or
    /// read from elsewhere; each that fires appends its name to `marker`.
    /// Branch and replace refs named after `target` point at `decoy`.
    async fn plant(clone: &Path, marker: &Path, target: &str, decoy: &str) {
        use std::os::unix::fs::PermissionsExt;
        let git_dir = clone.join(".git");
        let echo = |name: &str| format!("echo {name} >> '{}'", marker.display());
        let hooks = git_dir.join("hooks");
        std::fs::create_dir_all(&hooks).expect("hooks");
        for hook in [
            "post-checkout",
            "reference-transaction",
            "post-index-change",
        ] {
            let path = hooks.join(hook);
            std::fs::write(&path, format!("#!/bin/sh\n{}\n", echo(hook))).expect("hook");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let included = clone.with_extension("included.cfg");
        std::fs::write(
            &included,
            format!("[core]\n\tfsmonitor = \"{}; false\"\n", echo("included")),
        )
        .expect("included config");
        std::fs::write(git_dir.join("info/attributes"), "* filter=evil\n").expect("attributes");
        let git = Git::new(clone);
        git.run(&["update-ref", &format!("refs/heads/{target}"), decoy])
            .await
            .expect("branch named like the commit");
        git.run(&["update-ref", &format!("refs/replace/{target}"), decoy])
            .await
            .expect("replace ref");
        let fsmonitor = format!("{}; false", echo("fsmonitor"));
        let smudge = format!("{}; cat", echo("filter"));
        let included = included.to_string_lossy().into_owned();
        for (key, value) in [
            ("core.fsmonitor", fsmonitor.as_str()),
            ("filter.evil.smudge", smudge.as_str()),
            ("include.path", included.as_str()),
            ("url./nonexistent/evil.insteadOf", "/"),
            ("core.sshCommand", "touch /tmp/warren-evil"),
            ("core.gitProxy", "touch /tmp/warren-evil"),
            ("credential.helper", "!touch /tmp/warren-evil"),
            ("diff.external", "touch /tmp/warren-evil"),
            ("protocol.allow", "always"),
        ] {
            git.run(&["config", "--add", key, value])
                .await
                .expect("config");
        }
        for (file, content) in [
            // Itself, so that the plain git of the control still works;
            // pointed at another repository it swaps the whole of it.
            ("commondir", ".\n"),
            ("config.worktree", "[core]\n\tfsmonitor = true\n"),
            ("info/grafts", &format!("{target} {decoy}\n")),
            ("shallow", &format!("{target}\n")),
            ("objects/info/http-alternates", "http://127.0.0.1:1/evil\n"),
        ] {
            std::fs::write(git_dir.join(file), content).expect("plant file");
        }
        // Writing the config may already have run the monitor.
        let _ = std::fs::remove_file(marker);
    }

    #[tokio::test]
    async fn nothing_planted_in_a_clone_runs_or_redirects_the_next_checkout() {
        let (repo, first, work, ws) = fixture().await;
        let location = repo.path().to_str().expect("utf8");
        let dir = ws
            .checkout(&Job::try_new(location, "main", &first).expect("a valid job"))
            .await
            .expect("first checkout")
            .dir;
        let second = commit_in(repo.path(), "2", &[]).await;
        let marker = work.path().join("fired");
        plant(&dir, &marker, &second, &first).await;

        let job = Job::try_new(location, "main", &second).expect("a valid job");
        let dir = ws
            .checkout(&job)
            .await
            .expect("checkout after the plant")
            .dir;
        assert!(
            !marker.exists(),
            "planted code ran: {}",
            std::fs::read_to_string(&marker).unwrap_or_default()
        );
        assert_eq!(std::fs::read_to_string(dir.join("a")).expect("a"), "2");
        let git_dir = dir.join(".git");
        assert_eq!(
            std::fs::read_to_string(git_dir.join("config")).expect("config"),
            canonical_config(&job)
        );
        for name in FORBIDDEN_IN_GIT_DIR {
            assert!(!git_dir.join(name).exists(), "{name} was left");
        }
        assert_eq!(
            std::fs::read_to_string(git_dir.join("objects/info/alternates")).expect("alternates"),
            format!("{location}/.git/objects\n")
        );

        // The probe works: the same plants in a clone used by plain git
        // fire and swap the commit.
        let control = work.path().join("control");
        Git::anywhere()
            .run(&[
                "clone",
                "-q",
                "--no-checkout",
                "--shared",
                location,
                control.to_str().expect("utf8"),
            ])
            .await
            .expect("control clone");
        let plain = Git::new(&control);
        plain
            .run(&["checkout", "-q", "--detach", &first])
            .await
            .expect("control checkout");
        plant(&control, &marker, &second, &first).await;
        plain
            .run(&["checkout", "-q", "--force", "--detach", &second, "--"])
            .await
            .expect("plain checkout");
        let fired = std::fs::read_to_string(&marker).expect("the plants fire under plain git");
        // (The included config's monitor wins over the other, being read
        // last; the commit swap leaves no file for the filter to write.)
        for name in ["post-index-change", "included"] {
            assert!(fired.contains(name), "{name} did not fire: {fired}");
        }
        assert_eq!(
            std::fs::read_to_string(control.join("a")).expect("a"),
            "1",
            "a branch named like the commit swaps it for plain git"
        );
    }

    #[tokio::test]
    async fn a_git_dir_replaced_by_a_symlink_or_a_gitdir_file_is_cloned_again() {
        let (repo, head, work, ws) = fixture().await;
        let location = repo.path().to_str().expect("utf8");
        let job = Job::try_new(location, "main", &head).expect("a valid job");
        // An empty repository elsewhere that git would otherwise use.
        let elsewhere = work.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).expect("mkdir");
        Git::new(&elsewhere)
            .run(&["init", "-q"])
            .await
            .expect("init");
        let elsewhere_git = elsewhere.join(".git");
        let replace_git_dir: [&dyn Fn(&Path); 3] = [
            &|dir: &Path| {
                std::fs::remove_dir_all(dir.join(".git")).expect("rm");
                std::os::unix::fs::symlink(&elsewhere_git, dir.join(".git")).expect("symlink");
            },
            &|dir: &Path| {
                std::fs::remove_dir_all(dir.join(".git")).expect("rm");
                std::fs::write(
                    dir.join(".git"),
                    format!("gitdir: {}\n", elsewhere_git.display()),
                )
                .expect("gitdir file");
            },
            &|dir: &Path| {
                std::fs::write(dir.join(".git/HEAD"), "garbage\n").expect("HEAD");
            },
        ];
        for replace in replace_git_dir {
            let dir = ws.checkout(&job).await.expect("checkout").dir;
            replace(&dir);
            let dir = ws
                .checkout(&job)
                .await
                .expect("checkout after the swap")
                .dir;
            assert!(is_real_dir(&dir.join(".git")));
            assert_eq!(std::fs::read_to_string(dir.join("a")).expect("a"), "1");
        }
        // The clone folder itself replaced by a symlink: the target is left alone.
        let dir = ws.checkout(&job).await.expect("checkout").dir;
        std::fs::remove_dir_all(&dir).expect("rm");
        std::os::unix::fs::symlink(&elsewhere, &dir).expect("symlink");
        ws.checkout(&job).await.expect("checkout after the swap");
        assert!(is_real_dir(&dir));
        assert!(
            elsewhere_git.join("HEAD").exists(),
            "the symlink's target is untouched"
        );
        assert!(!elsewhere.join("a").exists());
    }

    #[tokio::test]
    async fn a_stalled_server_is_unreachable_after_three_timed_out_tries() {
        // Accepts connections and never answers.
        let server = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("git://{}/stalled.git", server.local_addr().expect("addr"));
        let work = tempfile::tempdir().expect("tempdir");
        let ws =
            Workspace::new(work.path().to_path_buf()).with_git_timeout(Duration::from_millis(300));
        let job = Job::try_new(&url, "main", &"e".repeat(40)).expect("a valid job");
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
