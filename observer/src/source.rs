//! Where the observer reads commits from: a local repository directly, or a
//! mirror clone of a URL that it fetches on each poll. Every git call has
//! the `--git-timeout` deadline, and making the mirror is part of a poll, so
//! a server that is down or stalls is retried, never fatal.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};
use git::Git;
use model::{BranchName, CommitId, RepoUrl};

/// A commit to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCommit {
    pub id: CommitId,
    pub author: String,
    pub subject: String,
}

/// The repository being watched.
#[derive(Debug, Clone)]
pub struct RepoSource {
    location: RepoUrl,
    /// Git in the repository (a local one, or the mirror).
    git: Git,
    mirrored: bool,
}

/// Whether `repo` names a remote (a URL, or `user@host:path`) rather than a
/// local path.
pub fn is_url(repo: &str) -> bool {
    repo.contains("://")
        || repo
            .split_once(':')
            .is_some_and(|(user_host, _)| user_host.contains('@') && !user_host.contains('/'))
}

impl RepoSource {
    /// Opens a local repository, or names the mirror of a URL next to the
    /// state file (made by the first [`RepoSource::refresh`] that reaches
    /// the server).
    pub async fn open(
        repo: &str,
        state_file: &Path,
        git_timeout: Duration,
    ) -> anyhow::Result<RepoSource> {
        if is_url(repo) {
            let location = RepoUrl::parse(repo).map_err(|e| anyhow!("REPO {repo:?}: {e}"))?;
            let mut mirror = state_file.as_os_str().to_owned();
            mirror.push(".mirror");
            return Ok(RepoSource {
                location,
                git: Git::new(PathBuf::from(mirror)).with_timeout(git_timeout),
                mirrored: true,
            });
        }
        let path =
            std::fs::canonicalize(repo).with_context(|| format!("repository path {repo:?}"))?;
        let location = path
            .to_str()
            .ok_or_else(|| anyhow!("repository path {path:?} is not UTF-8"))?;
        let location = RepoUrl::parse(location).map_err(|e| anyhow!("REPO {repo:?}: {e}"))?;
        let git = Git::new(&path).with_timeout(git_timeout);
        git.run(&["rev-parse", "--git-dir"])
            .await
            .with_context(|| format!("{location} is not a git repository"))?;
        Ok(RepoSource {
            location,
            git,
            mirrored: false,
        })
    }

    /// A registered repository, under the exact location the registry
    /// gives (jobs are attributed to it): a URL is mirrored next to the
    /// state file, a local path read directly. Nothing is read yet, so a
    /// path that does not exist is a failed poll, retried, not an error.
    pub fn open_registered(url: &RepoUrl, state_file: &Path, git_timeout: Duration) -> RepoSource {
        if is_url(url) {
            let mut mirror = state_file.as_os_str().to_owned();
            mirror.push(".mirror");
            return RepoSource {
                location: url.clone(),
                git: Git::new(PathBuf::from(mirror)).with_timeout(git_timeout),
                mirrored: true,
            };
        }
        RepoSource {
            location: url.clone(),
            git: Git::new(Path::new(url.as_str())).with_timeout(git_timeout),
            mirrored: false,
        }
    }

    /// Where a mirror of a URL is kept; `None` for a local repository.
    pub fn mirror_dir(&self) -> Option<&Path> {
        self.mirrored.then(|| self.git.dir()).flatten()
    }

    /// The location put into jobs: an absolute path or the URL.
    pub fn location(&self) -> &RepoUrl {
        &self.location
    }

    /// Whether this is a mirror of a URL (which may be unreachable for a
    /// while) rather than a local repository.
    pub fn is_mirror(&self) -> bool {
        self.mirrored
    }

    /// Brings a mirror up to date, cloning it first if needed; a local
    /// repository needs nothing.
    pub async fn refresh(&self) -> anyhow::Result<()> {
        if !self.mirrored {
            return Ok(());
        }
        let mirror = self.git.dir().unwrap_or(Path::new("."));
        if tokio::fs::try_exists(mirror.join("HEAD"))
            .await
            .unwrap_or(false)
        {
            self.git
                .run(&["fetch", "--prune", "--quiet", "origin"])
                .await
                .with_context(|| format!("fetching {}", self.location))?;
            return Ok(());
        }
        // Cloned beside it and renamed: a clone cut off half-way never
        // passes for the mirror.
        let mut partial = mirror.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let _ = tokio::fs::remove_dir_all(&partial).await;
        let target = partial.to_string_lossy().into_owned();
        Git::anywhere()
            .with_timeout(self.git.timeout())
            .run(&[
                "clone",
                "--mirror",
                "--quiet",
                "--",
                &self.location,
                &target,
            ])
            .await
            .with_context(|| format!("cloning {}", self.location))?;
        tokio::fs::rename(&partial, mirror)
            .await
            .with_context(|| format!("moving the new mirror to {}", mirror.display()))?;
        Ok(())
    }

    /// The branch HEAD points to.
    pub async fn head_branch(&self) -> anyhow::Result<BranchName> {
        let name = self
            .git
            .run(&["symbolic-ref", "--quiet", "--short", "HEAD"])
            .await?;
        Ok(BranchName::parse(&name)?)
    }

    /// The commit a branch points to, if the branch exists.
    pub async fn branch_head(&self, branch: &BranchName) -> anyhow::Result<Option<CommitId>> {
        let reference = format!("refs/heads/{branch}^{{commit}}");
        let head = self
            .git
            .try_run(&[
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                &reference,
            ])
            .await?;
        Ok(head.map(|id| CommitId::parse(&id)).transpose()?)
    }

    /// Every branch and the commit it points to.
    pub async fn branch_heads(&self) -> anyhow::Result<Vec<(BranchName, CommitId)>> {
        let listed = self
            .git
            .run(&[
                "for-each-ref",
                "--format=%(refname:strip=2) %(objectname)",
                "refs/heads/",
            ])
            .await?;
        Ok(listed
            .lines()
            .filter_map(|line| {
                let (name, id) = line.rsplit_once(' ')?;
                Some((BranchName::parse(name).ok()?, CommitId::parse(id).ok()?))
            })
            .collect())
    }

    /// Commits to publish, oldest first: those after `last` up to `head`,
    /// or only `head` on a first start (or when `last` is gone, e.g. after a
    /// force push and garbage collection).
    pub async fn new_commits(
        &self,
        last: Option<&CommitId>,
        head: &CommitId,
    ) -> anyhow::Result<Vec<NewCommit>> {
        let format = "--format=%H%x1f%an%x1f%s";
        let known_last = match last {
            Some(last) if self.has_commit(last).await? => Some(last),
            _ => None,
        };
        let output = match known_last {
            Some(last) => {
                self.git
                    .run(&[
                        "log",
                        "--reverse",
                        format,
                        "--end-of-options",
                        &format!("{last}..{head}"),
                    ])
                    .await?
            }
            None => {
                if let Some(last) = last {
                    tracing::warn!(
                        %last,
                        %head,
                        "last published commit is gone; publishing the head only"
                    );
                }
                self.git
                    .run(&["log", "-1", format, "--end-of-options", head])
                    .await?
            }
        };
        Ok(output
            .lines()
            .filter_map(|line| {
                let mut parts = line.splitn(3, '\u{1f}');
                let id = CommitId::parse(parts.next()?).ok()?;
                Some(NewCommit {
                    id,
                    author: parts.next().unwrap_or_default().to_string(),
                    subject: parts.next().unwrap_or_default().to_string(),
                })
            })
            .collect())
    }

    /// Whether the repository has `commit` (a validated commit id).
    async fn has_commit(&self, commit: &CommitId) -> anyhow::Result<bool> {
        let object = format!("{commit}^{{commit}}");
        Ok(self
            .git
            .try_run(&["cat-file", "-e", "--end-of-options", &object])
            .await?
            .is_some())
    }

    /// Of `known` and `candidates` (in the order they were published), the
    /// commit furthest along the history: a candidate replaces the choice
    /// when it descends from it. Candidates this repository does not have,
    /// or that sit behind the choice, are passed over.
    pub async fn furthest_descendant(
        &self,
        known: Option<&CommitId>,
        candidates: &[CommitId],
    ) -> anyhow::Result<Option<CommitId>> {
        let mut choice = known.cloned();
        for candidate in candidates {
            if choice.as_ref() == Some(candidate) {
                continue;
            }
            if !self.has_commit(candidate).await? {
                continue;
            }
            let descends = match &choice {
                None => true,
                Some(current) => self
                    .git
                    .try_run(&["merge-base", "--is-ancestor", current, candidate])
                    .await?
                    .is_some(),
            };
            if descends {
                choice = Some(candidate.clone());
            }
        }
        Ok(choice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn branch(name: &str) -> BranchName {
        BranchName::parse(name).expect("a branch name")
    }

    async fn commit(git: &Git, n: u32) -> CommitId {
        std::fs::write(git.dir().expect("a repository").join("f"), n.to_string()).expect("write");
        git.run(&["add", "f"]).await.expect("add");
        git.run(&[
            "-c",
            "user.name=T",
            "-c",
            "user.email=t@e",
            "commit",
            "-q",
            "-m",
            &format!("c{n}"),
        ])
        .await
        .expect("commit");
        let head = git.run(&["rev-parse", "HEAD"]).await.expect("rev-parse");
        CommitId::parse(&head).expect("a commit id")
    }

    /// A repository with three commits on `main`, opened as a source.
    async fn three_commits() -> (tempfile::TempDir, RepoSource, [CommitId; 3]) {
        let dir = tempfile::tempdir().expect("tempdir");
        let git = Git::new(dir.path());
        git.run(&["init", "-q", "-b", "main"]).await.expect("init");
        let commits = [
            commit(&git, 1).await,
            commit(&git, 2).await,
            commit(&git, 3).await,
        ];
        let state = dir.path().join("state.json");
        let source = RepoSource::open(
            dir.path().to_str().expect("utf8"),
            &state,
            git::DEFAULT_TIMEOUT,
        )
        .await
        .expect("open");
        (dir, source, commits)
    }

    #[tokio::test]
    async fn lists_new_commits_oldest_first_and_only_head_at_first() {
        let (_dir, source, [c1, c2, c3]) = three_commits().await;
        assert_eq!(source.head_branch().await.expect("head"), "main");
        assert_eq!(
            source.branch_head(&branch("main")).await.expect("ok"),
            Some(c3.clone())
        );
        assert_eq!(source.branch_head(&branch("nope")).await.expect("ok"), None);
        let first: Vec<CommitId> = source
            .new_commits(None, &c3)
            .await
            .expect("first")
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(first, vec![c3.clone()]);
        let later = source.new_commits(Some(&c1), &c3).await.expect("later");
        assert_eq!(
            later.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
            vec![c2, c3.clone()]
        );
        assert_eq!(later[1].subject, "c3");
        assert_eq!(later[1].author, "T");
        let gone = CommitId::parse(&"f".repeat(40)).expect("commit");
        let fallback = source
            .new_commits(Some(&gone), &c3)
            .await
            .expect("fallback");
        assert_eq!(fallback.len(), 1);
    }

    #[tokio::test]
    async fn the_furthest_descendant_skips_older_and_unknown_commits() {
        let (_dir, source, [c1, c2, c3]) = three_commits().await;
        let unknown = CommitId::parse(&"e".repeat(40)).expect("commit");
        // The broker took c2 and c3 after the saved c1, then an old c1 again.
        let ledger = [c2.clone(), c3.clone(), c1.clone()];
        let furthest = source.furthest_descendant(Some(&c1), &ledger).await;
        assert_eq!(furthest.expect("ok"), Some(c3));
        // Nothing newer in the ledger: the saved commit stands.
        let furthest = source
            .furthest_descendant(Some(&c1), std::slice::from_ref(&unknown))
            .await;
        assert_eq!(furthest.expect("ok"), Some(c1));
        // First start: the first known candidate, then its descendants.
        let furthest = source
            .furthest_descendant(None, &[unknown, c2.clone()])
            .await;
        assert_eq!(furthest.expect("ok"), Some(c2));
        let furthest = source.furthest_descendant(None, &[]).await;
        assert_eq!(furthest.expect("ok"), None);
    }

    #[tokio::test]
    async fn a_stalled_server_times_out_and_leaves_no_half_made_mirror() {
        // Accepts connections and never answers.
        let server = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("git://{}/stalled.git", server.local_addr().expect("addr"));
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state.json");
        let source = RepoSource::open(&url, &state, Duration::from_millis(300))
            .await
            .expect("opening a URL does not reach the server");
        for _ in 0..2 {
            let err = format!("{:#}", source.refresh().await.expect_err("stalls"));
            assert!(
                err.contains("cloning") && err.contains("timed out"),
                "{err}"
            );
            assert!(!dir.path().join("state.json.mirror").exists());
        }
    }

    #[tokio::test]
    async fn a_url_is_mirrored_on_the_first_refresh() {
        let (origin, _source, [_, _, c3]) = three_commits().await;
        let url = format!("file://{}", origin.path().display());
        let dir = tempfile::tempdir().expect("tempdir");
        let source = RepoSource::open(&url, &dir.path().join("s.json"), git::DEFAULT_TIMEOUT)
            .await
            .expect("open");
        source.refresh().await.expect("clone");
        assert_eq!(
            source.branch_head(&branch("main")).await.expect("ok"),
            Some(c3)
        );
        source.refresh().await.expect("fetch");
    }

    #[test]
    fn urls_and_paths_are_told_apart() {
        assert!(is_url("https://example.org/r.git"));
        assert!(is_url("git@host:org/r.git"));
        assert!(!is_url("/srv/repo"));
        assert!(!is_url("relative/dir:with/colon"));
    }
}
