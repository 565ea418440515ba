//! Where the observer reads commits from: a local repository directly, or a
//! mirror clone of a URL that it fetches on each poll.

use std::path::Path;

use anyhow::{anyhow, Context};
use git::Git;

/// A commit to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCommit {
    pub id: String,
    pub author: String,
    pub subject: String,
}

/// The repository being watched.
#[derive(Debug, Clone)]
pub struct RepoSource {
    location: String,
    git: Git,
    mirrored: bool,
}

fn is_url(repo: &str) -> bool {
    repo.contains("://")
        || repo
            .split_once(':')
            .is_some_and(|(user_host, _)| user_host.contains('@') && !user_host.contains('/'))
}

impl RepoSource {
    /// Opens a local repository, or clones a URL as a mirror next to the
    /// state file.
    pub async fn open(repo: &str, state_file: &Path) -> anyhow::Result<RepoSource> {
        if is_url(repo) {
            broker::message::validate_repo(repo).map_err(|e| anyhow!("REPO {repo:?}: {e}"))?;
            let mut mirror = state_file.as_os_str().to_owned();
            mirror.push(".mirror");
            let mirror = std::path::PathBuf::from(mirror);
            if !mirror.join("HEAD").exists() {
                let target = mirror.to_string_lossy().into_owned();
                Git::anywhere()
                    .run(&["clone", "--mirror", "--quiet", "--", repo, &target])
                    .await
                    .with_context(|| format!("cloning {repo}"))?;
            }
            return Ok(RepoSource {
                location: repo.to_string(),
                git: Git::new(mirror),
                mirrored: true,
            });
        }
        let path =
            std::fs::canonicalize(repo).with_context(|| format!("repository path {repo:?}"))?;
        let location = path
            .to_str()
            .ok_or_else(|| anyhow!("repository path {path:?} is not UTF-8"))?
            .to_string();
        broker::message::validate_repo(&location).map_err(|e| anyhow!("REPO {repo:?}: {e}"))?;
        let git = Git::new(&path);
        git.run(&["rev-parse", "--git-dir"])
            .await
            .with_context(|| format!("{location} is not a git repository"))?;
        Ok(RepoSource {
            location,
            git,
            mirrored: false,
        })
    }

    /// The location put into jobs: an absolute path or the URL.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Brings a mirror up to date; a local repository needs nothing.
    pub async fn refresh(&self) -> anyhow::Result<()> {
        if self.mirrored {
            self.git
                .run(&["fetch", "--prune", "--quiet", "origin"])
                .await
                .with_context(|| format!("fetching {}", self.location))?;
        }
        Ok(())
    }

    /// The branch HEAD points to.
    pub async fn head_branch(&self) -> anyhow::Result<String> {
        Ok(self
            .git
            .run(&["symbolic-ref", "--quiet", "--short", "HEAD"])
            .await?)
    }

    /// The commit a branch points to, if the branch exists.
    pub async fn branch_head(&self, branch: &str) -> anyhow::Result<Option<String>> {
        let reference = format!("refs/heads/{branch}^{{commit}}");
        Ok(self
            .git
            .try_run(&[
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                &reference,
            ])
            .await?)
    }

    /// Commits to publish, oldest first: those after `last` up to `head`,
    /// or only `head` on a first start (or when `last` is gone, e.g. after a
    /// force push and garbage collection).
    pub async fn new_commits(
        &self,
        last: Option<&str>,
        head: &str,
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
                        last,
                        head,
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
                let id = parts.next()?.to_string();
                broker::message::validate_commit(&id).ok()?;
                Some(NewCommit {
                    id,
                    author: parts.next().unwrap_or_default().to_string(),
                    subject: parts.next().unwrap_or_default().to_string(),
                })
            })
            .collect())
    }

    /// Whether the repository has `commit` (a validated commit id).
    async fn has_commit(&self, commit: &str) -> anyhow::Result<bool> {
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
        known: Option<&str>,
        candidates: &[String],
    ) -> anyhow::Result<Option<String>> {
        let mut choice = known.map(str::to_string);
        for candidate in candidates {
            if choice.as_deref() == Some(candidate.as_str()) {
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

    async fn commit(git: &Git, n: u32) -> String {
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
        git.run(&["rev-parse", "HEAD"]).await.expect("rev-parse")
    }

    /// A repository with three commits on `main`, opened as a source.
    async fn three_commits() -> (tempfile::TempDir, RepoSource, [String; 3]) {
        let dir = tempfile::tempdir().expect("tempdir");
        let git = Git::new(dir.path());
        git.run(&["init", "-q", "-b", "main"]).await.expect("init");
        let commits = [
            commit(&git, 1).await,
            commit(&git, 2).await,
            commit(&git, 3).await,
        ];
        let state = dir.path().join("state.json");
        let source = RepoSource::open(dir.path().to_str().expect("utf8"), &state)
            .await
            .expect("open");
        (dir, source, commits)
    }

    #[tokio::test]
    async fn lists_new_commits_oldest_first_and_only_head_at_first() {
        let (_dir, source, [c1, c2, c3]) = three_commits().await;
        assert_eq!(source.head_branch().await.expect("head"), "main");
        assert_eq!(
            source.branch_head("main").await.expect("ok"),
            Some(c3.clone())
        );
        assert_eq!(source.branch_head("nope").await.expect("ok"), None);
        let first: Vec<String> = source
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
        let gone = "f".repeat(40);
        let fallback = source
            .new_commits(Some(&gone), &c3)
            .await
            .expect("fallback");
        assert_eq!(fallback.len(), 1);
    }

    #[tokio::test]
    async fn the_furthest_descendant_skips_older_and_unknown_commits() {
        let (_dir, source, [c1, c2, c3]) = three_commits().await;
        let unknown = "e".repeat(40);
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

    #[test]
    fn urls_and_paths_are_told_apart() {
        assert!(is_url("https://example.org/r.git"));
        assert!(is_url("git@host:org/r.git"));
        assert!(!is_url("/srv/repo"));
        assert!(!is_url("relative/dir:with/colon"));
    }
}
