//! The observer: watches one repository and turns every new commit on a
//! watched branch into one job, oldest first.
//!
//! It remembers the last published commit per branch in a state file, and
//! writes it only after the broker confirmed the publishes, so a restart
//! never skips a commit. A poll's commits go out in batches: each batch's
//! publishes are in flight together, their confirms awaited in order, and
//! the state written once per batch, off the async runtime. A crash between
//! the broker taking a publish and the state file recording it would repeat
//! that commit; to close that window the state file also says when
//! publishes are in flight, and a restart that finds them asks the broker's
//! ledger (a bounded copy of every job published, see `Names::ledger_queue`)
//! which commits it took.

pub mod producer;
mod source;
mod state;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use broker::{Broker, BrokerConfig, Publisher};
use model::{BranchName, CommitId, Job};
use tokio_util::sync::CancellationToken;

pub use source::{NewCommit, RepoSource};
pub use state::{State, StateError, StateFile};

/// Publishes in flight at once, at most. Well below the ledger's 1,000
/// entries, so that after a crash every publish whose fate is unknown is
/// still in the ledger.
const BATCH: usize = 256;

/// Everything the observer needs.
#[derive(Debug, Clone)]
pub struct ObserverConfig {
    pub broker: BrokerConfig,
    /// A local path or a git URL.
    pub repo: String,
    /// Branches to watch; empty means the repository's HEAD branch.
    pub branches: Vec<BranchName>,
    pub interval: Duration,
    pub state_file: PathBuf,
    /// How long one git call may take before it is killed.
    pub git_timeout: Duration,
}

/// Runs the observer until `shutdown` fires.
pub async fn run(config: ObserverConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let file = StateFile::new(config.state_file.clone());
    let mut state = file.load().await?;
    let source = RepoSource::open(&config.repo, &config.state_file, config.git_timeout).await?;
    state.check_repo(source.location())?;
    let Some(branches) = watched_branches(&source, &config, &shutdown).await? else {
        tracing::info!("observer stopped");
        return Ok(());
    };
    tracing::info!(
        repo = %source.location(),
        branches = ?branches,
        interval_secs = config.interval.as_secs_f64(),
        "observer started"
    );

    let connection_name = format!("warren-observer-{}", std::process::id());
    let mut session: Option<(Broker, Publisher)> = None;
    // Only a start after a crash has publishes whose fate is unknown, and
    // the ledger only knows it if the broker did not fail under them.
    let mut reconcile = state.publishing() && !state.broker_failed();
    while !shutdown.is_cancelled() {
        if session.is_none() {
            let broker =
                match broker::connect_with_retry(&config.broker, &connection_name, &shutdown).await
                {
                    Ok(broker) => broker,
                    Err(broker::BrokerError::Shutdown) => break,
                    Err(err) => return Err(err.into()),
                };
            match broker.publisher().await {
                Ok(publisher) => session = Some((broker, publisher)),
                Err(err) => {
                    tracing::warn!("lost the broker while opening a channel ({err}); reconnecting");
                    broker.close().await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            }
        }
        let Some((broker, publisher)) = session.as_ref() else {
            continue;
        };
        if reconcile {
            match reconcile_with_ledger(
                &source,
                &branches,
                &mut state,
                &file,
                broker,
                config.broker.max_message_bytes,
            )
            .await
            {
                Ok(()) => reconcile = false,
                Err(PollError::Broker(err)) => {
                    tracing::warn!(
                        "lost the broker while reading the ledger ({err}); reconnecting"
                    );
                    if let Some((broker, _)) = session.take() {
                        broker.close().await;
                    }
                    continue;
                }
                Err(PollError::Repo(err)) => {
                    tracing::warn!("cannot read the repository: {err:#}");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(config.interval) => {}
                    }
                    continue;
                }
                Err(PollError::State(err)) => return Err(err.into()),
            }
        }
        // A fetch from a stalled server lasts up to --git-timeout: shutting
        // down does not wait for it (dropping the call kills git).
        let refreshed = tokio::select! {
            _ = shutdown.cancelled() => break,
            refreshed = source.refresh() => refreshed,
        };
        let polled = match refreshed {
            Ok(()) => poll_once(&source, &branches, &mut state, &file, broker, publisher).await,
            Err(err) => Err(PollError::Repo(err)),
        };
        match polled {
            Ok(()) => {}
            Err(PollError::Broker(err)) => {
                tracing::warn!("lost the broker while publishing ({err}); reconnecting");
                // A failing broker may keep a publish in the ledger but not
                // in the work queue: from now until this poll's commits are
                // all confirmed, a restart must publish them again instead.
                if state.publishing() && !state.broker_failed() {
                    state.set_broker_failed();
                    file.save(&state).await?;
                }
                if let Some((broker, _)) = session.take() {
                    broker.close().await;
                }
                continue;
            }
            Err(PollError::Repo(err)) => tracing::warn!("cannot read the repository: {err:#}"),
            Err(PollError::State(err)) => return Err(err.into()),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(config.interval) => {}
        }
    }
    if let Some((broker, _)) = session {
        broker.close().await;
    }
    tracing::info!("observer stopped");
    Ok(())
}

/// The branches to watch: those configured, or the repository's HEAD
/// branch. For a URL that takes the mirror, which the server may not give
/// yet (down, or stalled until the git timeout): each failure is logged and
/// tried again after an interval. `None`: shut down meanwhile.
async fn watched_branches(
    source: &RepoSource,
    config: &ObserverConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Vec<BranchName>>> {
    if !config.branches.is_empty() {
        return Ok(Some(config.branches.clone()));
    }
    loop {
        let found = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            found = async {
                source.refresh().await?;
                source
                    .head_branch()
                    .await
                    .context("finding the repository's HEAD branch")
            } => found,
        };
        match found {
            Ok(branch) => return Ok(Some(vec![branch])),
            Err(err) if source.is_mirror() => {
                tracing::warn!("cannot read the repository: {err:#}")
            }
            Err(err) => return Err(err),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(config.interval) => {}
        }
    }
}

enum PollError {
    Broker(broker::BrokerError),
    Repo(anyhow::Error),
    State(StateError),
}

/// After a crash with publishes in flight: move each branch's last
/// published commit forward to the newest one the broker's ledger holds for
/// it, so what the broker already took is not published again.
async fn reconcile_with_ledger(
    source: &RepoSource,
    branches: &[BranchName],
    state: &mut State,
    file: &StateFile,
    broker: &Broker,
    max_message_bytes: usize,
) -> Result<(), PollError> {
    let ledger = broker
        .recent_jobs(max_message_bytes)
        .await
        .map_err(PollError::Broker)?;
    for branch in branches {
        // Only plain per-commit jobs: reruns and manual triggers carry a
        // salted id and say nothing about what the observer published.
        let published: Vec<CommitId> = ledger
            .iter()
            .filter(|job| {
                job.repo == *source.location() && job.branch == *branch && job.is_first_of_commit()
            })
            .map(|job| job.commit.clone())
            .collect();
        let saved = state.last(branch).cloned();
        let furthest = source
            .furthest_descendant(saved.as_ref(), &published)
            .await
            .map_err(PollError::Repo)?;
        if let Some(commit) = furthest.filter(|c| Some(c) != saved.as_ref()) {
            tracing::info!(
                %branch,
                saved = saved.as_ref().map_or("none", |c| c.as_str()),
                %commit,
                "the broker took commits the state file had not recorded; resuming after them"
            );
            state.set_last(branch, &commit);
        }
    }
    state.set_publishing(false);
    file.save(state).await.map_err(PollError::State)?;
    Ok(())
}

/// One poll of a refreshed repository: publish every new commit of every
/// branch, oldest first, in batches of at most [`BATCH`]. The state is
/// written ahead (publishes in flight), then once per batch after its
/// confirms, naming only commits the broker confirmed.
async fn poll_once(
    source: &RepoSource,
    branches: &[BranchName],
    state: &mut State,
    file: &StateFile,
    broker: &Broker,
    publisher: &Publisher,
) -> Result<(), PollError> {
    let mut new: Vec<(&BranchName, NewCommit)> = Vec::new();
    for branch in branches {
        let Some(head) = source.branch_head(branch).await.map_err(PollError::Repo)? else {
            tracing::debug!(%branch, "branch does not exist (yet)");
            continue;
        };
        let last = state.last(branch).cloned();
        if last.as_ref() == Some(&head) {
            continue;
        }
        let commits = source
            .new_commits(last.as_ref(), &head)
            .await
            .map_err(PollError::Repo)?;
        new.extend(commits.into_iter().map(|commit| (branch, commit)));
    }
    if new.is_empty() {
        // A poll cut short by the broker may have left the flag set.
        if state.publishing() {
            state.set_publishing(false);
            file.save(state).await.map_err(PollError::State)?;
        }
        return Ok(());
    }
    if !state.publishing() {
        // Written ahead: a crash from here on leaves the flag set.
        state.set_publishing(true);
        file.save(state).await.map_err(PollError::State)?;
    }
    let exchange = broker.names().jobs_exchange();
    let batches = new.len().div_ceil(BATCH);
    for (number, batch) in new.chunks(BATCH).enumerate() {
        let mut in_flight = Vec::with_capacity(batch.len());
        let mut failed = None;
        for (branch, commit) in batch {
            let mut job = Job::for_commit(source.location(), branch, &commit.id);
            job.subject = Some(commit.subject.clone());
            job.author = Some(commit.author.clone());
            match publisher.publish_in_flight(&exchange, "", &job).await {
                Ok(confirm) => in_flight.push((branch, commit, job.id, confirm)),
                Err(err) => {
                    failed = Some(err);
                    break;
                }
            }
        }
        // Confirms come in publish order; the state moves to the end of the
        // unbroken run of confirmed publishes and no further.
        let mut confirmed = 0;
        for (branch, commit, id, confirm) in in_flight {
            if failed.is_some() {
                break;
            }
            match confirm.wait().await {
                Ok(()) => {
                    state.set_last(branch, &commit.id);
                    confirmed += 1;
                    tracing::info!(job = %id, %branch, commit = %commit.id, "job queued");
                }
                Err(err) => failed = Some(err),
            }
        }
        let all_done = failed.is_none() && number + 1 == batches;
        if all_done {
            state.set_publishing(false);
        }
        if confirmed > 0 || all_done {
            file.save(state).await.map_err(PollError::State)?;
        }
        if let Some(err) = failed {
            return Err(PollError::Broker(err));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    /// A repository whose `main` has `count` commits, made in one go by
    /// `git fast-import`; returns them oldest first.
    fn repo_with_commits(dir: &std::path::Path, count: usize) -> Vec<CommitId> {
        let git = |args: &[&str]| {
            let mut command = Command::new("git");
            command.arg("-C").arg(dir).args(args);
            command
        };
        assert!(git(&["init", "-q", "-b", "main"])
            .status()
            .expect("init")
            .success());
        let mut stream = String::new();
        for i in 1..=count {
            let (message, content) = (format!("c{i}"), i.to_string());
            stream.push_str(&format!(
                "commit refs/heads/main\nmark :{i}\ncommitter T <t@e> {} +0000\ndata {}\n{message}\n",
                1_700_000_000 + i,
                message.len()
            ));
            if i > 1 {
                stream.push_str(&format!("from :{}\n", i - 1));
            }
            stream.push_str(&format!(
                "M 644 inline f\ndata {}\n{content}\n\n",
                content.len()
            ));
        }
        let mut import = git(&["fast-import", "--quiet"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("fast-import");
        import
            .stdin
            .take()
            .expect("stdin")
            .write_all(stream.as_bytes())
            .expect("write");
        assert!(import.wait().expect("wait").success());
        let listed = git(&["rev-list", "--reverse", "main"])
            .output()
            .expect("rev-list");
        String::from_utf8_lossy(&listed.stdout)
            .lines()
            .map(|id| CommitId::parse(id).expect("a commit id"))
            .collect()
    }

    /// Deletes the test's namespace, also when the test fails.
    struct DeleteNamespace(BrokerConfig);

    impl Drop for DeleteNamespace {
        fn drop(&mut self) {
            let config = self.0.clone();
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Runtime::new().expect("runtime");
                runtime.block_on(async {
                    let never = CancellationToken::new();
                    let delete = broker::delete_namespace(&config, &never);
                    let _ = tokio::time::timeout(Duration::from_secs(20), delete).await;
                });
            })
            .join();
        }
    }

    /// Through the real broker on 127.0.0.1:5672 (as every test here is).
    #[tokio::test]
    async fn a_polls_commits_go_out_in_batches_with_one_state_write_each_after_the_confirms() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(&repo).expect("mkdir");
        let commits = repo_with_commits(&repo, 1 + 300);
        let config = BrokerConfig {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            names: broker::Names::new(format!(
                "wt-observer-batches-{}-{}",
                std::process::id(),
                broker::now_ms()
            )),
            settings: Default::default(),
            max_message_bytes: broker::message::DEFAULT_MAX_MESSAGE_BYTES,
        };
        let _cleanup = DeleteNamespace(config.clone());
        let never = CancellationToken::new();
        let broker = tokio::time::timeout(
            Duration::from_secs(20),
            broker::connect_with_retry(&config, "warren-observer-test", &never),
        )
        .await
        .expect("the broker answers on 127.0.0.1:5672")
        .expect("connect");
        let publisher = broker.publisher().await.expect("publisher");
        let source = RepoSource::open(
            repo.to_str().expect("utf8"),
            &dir.path().join("state.json"),
            git::DEFAULT_TIMEOUT,
        )
        .await
        .expect("open");
        let file = StateFile::new(dir.path().join("state.json"));
        let mut state = file.load().await.expect("load");
        state.check_repo(source.location()).expect("repo");
        let main = BranchName::parse("main").expect("branch");
        state.set_last(&main, &commits[0]);

        let branches = [main.clone()];
        let polled = poll_once(&source, &branches, &mut state, &file, &broker, &publisher).await;
        assert!(polled.is_ok(), "the poll publishes everything");

        let written = file.written.lock().expect("lock").clone();
        let summary: Vec<(Option<&CommitId>, bool)> = written
            .iter()
            .map(|s| (s.last(&main), s.publishing()))
            .collect();
        assert_eq!(
            summary,
            vec![
                // The in-flight flag, written ahead of the first publish.
                (Some(&commits[0]), true),
                // Then once per batch: the first 256, then the last 44.
                (Some(&commits[256]), true),
                (Some(&commits[300]), false),
            ]
        );
        // Each commit a write named, the broker had taken, once and in order.
        let ledger = broker.recent_jobs(config.max_message_bytes).await;
        let ledger: Vec<CommitId> = ledger
            .expect("ledger")
            .into_iter()
            .map(|j| j.commit)
            .collect();
        assert_eq!(ledger, commits[1..]);
        assert_eq!(State::load(file.path()).expect("load"), state);
        broker.close().await;
    }
}
