//! The one place jobs are made and queued: the poller, the API's trigger
//! and rerun (and the webhooks to come) all turn a repository, a branch
//! and a commit into a validated [`Job`] and publish it, confirmed, here.
//!
//! A trigger may name a branch instead of a commit: [`resolve`] asks the
//! repository for the branch's head with `git ls-remote`, under the git
//! timeout and holding no lock, so a stalled server delays only the caller.

use std::time::Duration;

use broker::transport::Transport;
use broker::{BrokerError, Confirm};
use git::{Git, GitError};
use model::{BranchName, CommitId, IdError, Job, RepoUrl};

/// Why a trigger's target could not be turned into a commit.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("target is neither a full commit id nor a branch: {0}")]
    NotACommitOrBranch(IdError),
    #[error("cannot read {repo}: {source}")]
    Git {
        repo: RepoUrl,
        #[source]
        source: GitError,
    },
    #[error("no branch {branch:?} in {repo}")]
    NoSuchBranch { repo: RepoUrl, branch: BranchName },
}

impl ResolveError {
    /// Whether the repository did not answer within the git timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, ResolveError::Git { source, .. } if source.is_timeout())
    }
}

/// What a trigger names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Commit(CommitId),
    Branch(BranchName),
}

impl Target {
    /// A full commit id, else a branch name; each checked.
    pub fn parse(text: &str) -> Result<Target, ResolveError> {
        let text = text.trim();
        if let Ok(commit) = CommitId::parse(text) {
            return Ok(Target::Commit(commit));
        }
        BranchName::parse(text)
            .map(Target::Branch)
            .map_err(ResolveError::NotACommitOrBranch)
    }
}

/// The commit a target names in `repo`: itself, or the branch's head as
/// the repository has it now (one `git ls-remote`, under `git_timeout`).
pub async fn resolve(
    repo: &RepoUrl,
    target: &Target,
    git_timeout: Duration,
) -> Result<CommitId, ResolveError> {
    let branch = match target {
        Target::Commit(commit) => return Ok(commit.clone()),
        Target::Branch(branch) => branch,
    };
    let reference = format!("refs/heads/{branch}");
    let listed = Git::anywhere()
        .with_timeout(git_timeout)
        .run(&["ls-remote", "--", repo, &reference])
        .await
        .map_err(|source| ResolveError::Git {
            repo: repo.clone(),
            source,
        })?;
    listed
        .split_whitespace()
        .next()
        .and_then(|id| CommitId::parse(id).ok())
        .ok_or_else(|| ResolveError::NoSuchBranch {
            repo: repo.clone(),
            branch: branch.clone(),
        })
}

/// Makes jobs and publishes them to the jobs exchange, confirmed by the
/// broker, over one connection.
pub struct Producer<'t> {
    transport: &'t dyn Transport,
    exchange: String,
}

impl<'t> Producer<'t> {
    pub fn new(transport: &'t dyn Transport) -> Producer<'t> {
        let exchange = transport.names().jobs_exchange();
        Producer {
            transport,
            exchange,
        }
    }

    /// The job of a commit seen on a branch, with what people read of it.
    pub fn job(
        repo: &RepoUrl,
        branch: &BranchName,
        commit: &CommitId,
        subject: Option<String>,
        author: Option<String>,
    ) -> Job {
        Job {
            subject,
            author,
            ..Job::for_commit(repo, branch, commit)
        }
    }

    /// Queues `job`: returns once the broker has taken it.
    pub async fn queue(&self, job: &Job) -> Result<(), BrokerError> {
        self.send(job).await?.wait().await
    }

    /// Sends `job` without waiting for the broker: it is queued once the
    /// returned confirm says so. Confirms come in the order of the sends,
    /// so a batch can be in flight at once (the poller's).
    ///
    /// A commit's first job goes to the jobs exchange (the work queue, the
    /// dispatcher's copy, the ledger). A pipeline job goes straight to its
    /// queue's work queue, declared if new: the dispatcher recorded it
    /// when its plan did, and the ledger is for what observers published.
    pub async fn send(&self, job: &Job) -> Result<Confirm, BrokerError> {
        match &job.spec {
            None => {
                self.transport
                    .publish_in_flight(&self.exchange, "", job)
                    .await
            }
            Some(spec) => {
                let queue = self.transport.declare_work_queue(&spec.queue).await?;
                self.transport.publish_in_flight("", &queue, job).await
            }
        }
    }

    /// Puts `job` back on its work queue only, waiting for the confirm: a
    /// job whose runner froze (its lease expired) with no management API
    /// to close that runner's connection.
    pub async fn requeue(&self, job: &Job) -> Result<(), BrokerError> {
        let queue = match &job.spec {
            None => self.transport.names().work_queue(),
            Some(spec) => self.transport.declare_work_queue(&spec.queue).await?,
        };
        self.transport
            .publish_in_flight("", &queue, job)
            .await?
            .wait()
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_a_full_commit_or_a_branch_and_nothing_else() {
        let commit = "a".repeat(40);
        assert!(matches!(Target::parse(&commit), Ok(Target::Commit(_))));
        assert!(matches!(Target::parse(" main "), Ok(Target::Branch(_))));
        assert!(matches!(
            Target::parse("release/1.2"),
            Ok(Target::Branch(_))
        ));
        for bad in ["--upload-pack=x", "a b", ""] {
            assert!(
                matches!(Target::parse(bad), Err(ResolveError::NotACommitOrBranch(_))),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_branch_resolves_to_its_head_and_a_missing_one_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let git = Git::new(dir.path());
        git.run(&["init", "-q", "-b", "main"]).await.expect("init");
        git.run(&[
            "-c",
            "user.name=T",
            "-c",
            "user.email=t@e",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "c",
        ])
        .await
        .expect("commit");
        let head = git.run(&["rev-parse", "HEAD"]).await.expect("head");
        let repo = RepoUrl::parse(dir.path().to_str().expect("utf8")).expect("repo");
        let timeout = Duration::from_secs(30);
        let main = Target::parse("main").expect("branch");
        let resolved = resolve(&repo, &main, timeout).await.expect("resolved");
        assert_eq!(resolved.as_str(), head);
        let missing = Target::parse("nope").expect("branch");
        assert!(matches!(
            resolve(&repo, &missing, timeout).await,
            Err(ResolveError::NoSuchBranch { .. })
        ));
    }

    #[tokio::test]
    async fn a_stalled_server_is_a_timeout() {
        // Accepts connections and never answers.
        let server = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("git://{}/stalled.git", server.local_addr().expect("addr"));
        let repo = RepoUrl::parse(&url).expect("repo");
        let main = Target::parse("main").expect("branch");
        let err = resolve(&repo, &main, Duration::from_millis(300))
            .await
            .expect_err("stalled");
        assert!(err.is_timeout(), "{err}");
    }
}
