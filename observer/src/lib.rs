//! The observer: watches one repository and turns every new commit on a
//! watched branch into one job, oldest first.
//!
//! It remembers the last published commit per branch in a state file, and
//! writes it only after the broker confirmed the publish, so a restart never
//! skips a commit. A crash between the broker taking a publish and the
//! state file recording it would repeat that commit; to close that window
//! the state file also says when publishes are in flight, and a restart that
//! finds them asks the broker's ledger (a bounded copy of every job
//! published, see `Names::ledger_queue`) which commits it took.

mod source;
mod state;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use broker::message::{job_id, validate_branch, Job};
use broker::{Broker, BrokerConfig, Publisher};
use tokio_util::sync::CancellationToken;

pub use source::RepoSource;
pub use state::{State, StateError};

/// Everything the observer needs.
#[derive(Debug, Clone)]
pub struct ObserverConfig {
    pub broker: BrokerConfig,
    /// A local path or a git URL.
    pub repo: String,
    /// Branches to watch; empty means the repository's HEAD branch.
    pub branches: Vec<String>,
    pub interval: Duration,
    pub state_file: PathBuf,
    /// How long one git call may take before it is killed.
    pub git_timeout: Duration,
}

/// Runs the observer until `shutdown` fires.
pub async fn run(config: ObserverConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let state_file = config.state_file.clone();
    let mut state = State::load(&state_file)?;
    let source = RepoSource::open(&config.repo, &state_file, config.git_timeout).await?;
    state.check_repo(source.location())?;
    let Some(branches) = watched_branches(&source, &config, &shutdown).await? else {
        tracing::info!("observer stopped");
        return Ok(());
    };
    for branch in &branches {
        validate_branch(branch).map_err(|e| anyhow::anyhow!("--branch {branch:?}: {e}"))?;
    }
    tracing::info!(
        repo = source.location(),
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
                &state_file,
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
            Ok(()) => {
                poll_once(
                    &source,
                    &branches,
                    &mut state,
                    &state_file,
                    broker,
                    publisher,
                )
                .await
            }
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
                    state.save(&state_file)?;
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
) -> anyhow::Result<Option<Vec<String>>> {
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
    branches: &[String],
    state: &mut State,
    state_file: &std::path::Path,
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
        let published: Vec<String> = ledger
            .iter()
            .filter(|job| {
                job.repo == source.location()
                    && job.branch == *branch
                    && job.id == job_id(&job.repo, &job.branch, &job.commit, "")
            })
            .map(|job| job.commit.clone())
            .collect();
        let saved = state.last(branch).map(str::to_string);
        let furthest = source
            .furthest_descendant(saved.as_deref(), &published)
            .await
            .map_err(PollError::Repo)?;
        if let Some(commit) = furthest.filter(|c| Some(c) != saved.as_ref()) {
            tracing::info!(
                branch,
                saved = saved.as_deref().unwrap_or("none"),
                commit,
                "the broker took commits the state file had not recorded; resuming after them"
            );
            state.set_last(branch, &commit);
        }
    }
    state.set_publishing(false);
    state.save(state_file).map_err(PollError::State)?;
    Ok(())
}

/// One poll of a refreshed repository: publish every new commit of every
/// branch, oldest first, recording each after its confirm.
async fn poll_once(
    source: &RepoSource,
    branches: &[String],
    state: &mut State,
    state_file: &std::path::Path,
    broker: &Broker,
    publisher: &Publisher,
) -> Result<(), PollError> {
    for branch in branches {
        let Some(head) = source.branch_head(branch).await.map_err(PollError::Repo)? else {
            tracing::debug!(branch, "branch does not exist (yet)");
            continue;
        };
        let last = state.last(branch).map(str::to_string);
        if last.as_deref() == Some(head.as_str()) {
            continue;
        }
        let commits = source
            .new_commits(last.as_deref(), &head)
            .await
            .map_err(PollError::Repo)?;
        if !commits.is_empty() && !state.publishing() {
            // Written ahead: a crash from here on leaves the flag set.
            state.set_publishing(true);
            state.save(state_file).map_err(PollError::State)?;
        }
        for commit in commits {
            let mut job = Job::for_commit(source.location(), branch, &commit.id);
            job.subject = Some(commit.subject);
            job.author = Some(commit.author);
            publisher
                .publish(&broker.names().jobs_exchange(), "", &job)
                .await
                .map_err(PollError::Broker)?;
            state.set_last(branch, &commit.id);
            state.save(state_file).map_err(PollError::State)?;
            tracing::info!(job = %job.id, branch, commit = %commit.id, "job queued");
        }
    }
    if state.publishing() {
        state.set_publishing(false);
        state.save(state_file).map_err(PollError::State)?;
    }
    Ok(())
}
