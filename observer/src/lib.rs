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
//!
//! It talks to the broker through [`broker::Transport`], so the unit tests
//! below run its polls, batches, faults mid-batch and the ledger's
//! reconciliation on the in-memory broker.

pub mod producer;
mod source;
mod state;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use broker::{BrokerConfig, Connector, Transport};
use model::{BranchName, CommitId};

use crate::producer::Producer;
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
    observe(&config, file, &config.broker, shutdown).await
}

/// The observer, with its state in `file` and connections from `connector`.
async fn observe(
    config: &ObserverConfig,
    file: StateFile,
    connector: &dyn Connector,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut state = file.load().await?;
    let source = RepoSource::open(&config.repo, &config.state_file, config.git_timeout).await?;
    state.check_repo(source.location())?;
    let Some(branches) = watched_branches(&source, config, &shutdown).await? else {
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
    let mut session: Option<std::sync::Arc<dyn Transport>> = None;
    // Only a start after a crash has publishes whose fate is unknown, and
    // the ledger only knows it if the broker did not fail under them.
    let mut reconcile = state.publishing() && !state.broker_failed();
    while !shutdown.is_cancelled() {
        let transport = match &session {
            Some(transport) => transport.clone(),
            None => match connector.connect(&connection_name, &shutdown).await {
                Ok(transport) => session.insert(transport).clone(),
                Err(broker::BrokerError::Shutdown) => break,
                Err(err) => return Err(err.into()),
            },
        };
        if reconcile {
            match reconcile_with_ledger(
                &source,
                &branches,
                &mut state,
                &file,
                &*transport,
                config.broker.max_message_bytes,
            )
            .await
            {
                Ok(()) => reconcile = false,
                Err(PollError::Broker(err)) => {
                    tracing::warn!(
                        "lost the broker while reading the ledger ({err}); reconnecting"
                    );
                    if let Some(transport) = session.take() {
                        transport.close().await;
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
            Ok(()) => poll_once(&source, &branches, &mut state, &file, &*transport).await,
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
                if let Some(transport) = session.take() {
                    transport.close().await;
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
    if let Some(transport) = session {
        transport.close().await;
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
    transport: &dyn Transport,
    max_message_bytes: usize,
) -> Result<(), PollError> {
    let ledger = transport
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
    transport: &dyn Transport,
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
    let producer = Producer::new(transport);
    let batches = new.len().div_ceil(BATCH);
    for (number, batch) in new.chunks(BATCH).enumerate() {
        let mut in_flight = Vec::with_capacity(batch.len());
        let mut failed = None;
        for (branch, commit) in batch {
            let job = Producer::job(
                source.location(),
                branch,
                &commit.id,
                Some(commit.subject.clone()),
                Some(commit.author.clone()),
            );
            match producer.send(&job).await {
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
    use broker::memory::{MemoryBroker, PublishFault};
    use broker::topology::Topology;
    use model::Job;
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

    /// Deadline for every wait: far above what any step takes.
    const WITHIN: Duration = Duration::from_secs(20);

    /// A repository of `1 + new` commits on `main`, a state file that
    /// names the first as published, and an in-memory broker.
    struct Fixture {
        _dir: tempfile::TempDir,
        commits: Vec<CommitId>,
        main: BranchName,
        config: ObserverConfig,
        file: StateFile,
        broker: MemoryBroker,
        names: broker::Names,
    }

    impl Fixture {
        fn new(new: usize, publishing: bool, broker_failed: bool) -> Fixture {
            let dir = tempfile::tempdir().expect("tempdir");
            let repo = dir.path().join("repo");
            std::fs::create_dir_all(&repo).expect("mkdir");
            let commits = repo_with_commits(&repo, 1 + new);
            let names = broker::Names::new("t");
            let config = ObserverConfig {
                broker: BrokerConfig {
                    url: "amqp://unused".into(),
                    names: names.clone(),
                    settings: Default::default(),
                    max_message_bytes: broker::message::DEFAULT_MAX_MESSAGE_BYTES,
                },
                repo: repo.to_str().expect("utf8").to_string(),
                branches: vec![BranchName::parse("main").expect("branch")],
                interval: Duration::from_millis(10),
                state_file: dir.path().join("state.json"),
                git_timeout: git::DEFAULT_TIMEOUT,
            };
            let main = config.branches[0].clone();
            let mut state = State::load(&config.state_file).expect("load");
            let location = std::fs::canonicalize(&repo).expect("canonical");
            state
                .check_repo(location.to_str().expect("utf8"))
                .expect("repo");
            state.set_last(&main, &commits[0]);
            state.set_publishing(publishing);
            if broker_failed {
                state.set_broker_failed();
            }
            state.save(&config.state_file).expect("save");
            let broker = MemoryBroker::new(&names, &Topology::new(&names, config.broker.settings))
                .expect("memory broker");
            Fixture {
                file: StateFile::new(config.state_file.clone()),
                _dir: dir,
                commits,
                main,
                config,
                broker,
                names,
            }
        }

        /// The commits of the jobs in `queue`, in order.
        fn commits_in(&self, queue: &str) -> Vec<CommitId> {
            self.broker
                .ready(queue)
                .iter()
                .map(|m| {
                    broker::message::decode::<Job>(&m.body, usize::MAX)
                        .expect("a job")
                        .commit
                })
                .collect()
        }

        /// Each state written: (last commit, in flight, broker failed).
        fn written(&self) -> Vec<(Option<CommitId>, bool, bool)> {
            self.file
                .written
                .lock()
                .expect("lock")
                .iter()
                .map(|s| {
                    (
                        s.last(&self.main).cloned(),
                        s.publishing(),
                        s.broker_failed(),
                    )
                })
                .collect()
        }

        /// Runs the whole observer until the work queue holds `jobs` jobs,
        /// then stops it (it finishes the poll it is in).
        async fn observe_until(&self, jobs: usize) {
            let shutdown = CancellationToken::new();
            let observer = observe(
                &self.config,
                self.file.clone(),
                &self.broker,
                shutdown.clone(),
            );
            tokio::pin!(observer);
            let queue = self.names.work_queue();
            let reached = self
                .broker
                .wait_for(WITHIN, |b| (b.counts(&queue).ready >= jobs).then_some(()));
            tokio::select! {
                ended = &mut observer => panic!("the observer ended first: {ended:?}"),
                reached = reached => reached.expect("the jobs in time"),
            }
            shutdown.cancel();
            tokio::time::timeout(WITHIN, observer)
                .await
                .expect("the observer stops in time")
                .expect("the observer ends cleanly");
        }

        async fn open_source(&self) -> RepoSource {
            RepoSource::open(
                &self.config.repo,
                &self.config.state_file,
                git::DEFAULT_TIMEOUT,
            )
            .await
            .expect("open")
        }
    }

    #[tokio::test]
    async fn a_polls_commits_go_out_in_batches_with_one_state_write_each_after_the_confirms() {
        let f = Fixture::new(300, false, false);
        let source = f.open_source().await;
        let mut state = f.file.load().await.expect("load");
        let transport = f.broker.open("observer").expect("open");
        let polled = poll_once(
            &source,
            std::slice::from_ref(&f.main),
            &mut state,
            &f.file,
            &transport,
        )
        .await;
        assert!(polled.is_ok(), "the poll publishes everything");
        let c = &f.commits;
        assert_eq!(
            f.written(),
            [
                // The in-flight flag, written ahead of the first publish.
                (Some(c[0].clone()), true, false),
                // Then once per batch: the first 256, then the last 44.
                (Some(c[256].clone()), true, false),
                (Some(c[300].clone()), false, false),
            ]
        );
        // Each commit a write named, the broker had taken, once and in order.
        assert_eq!(f.commits_in(&f.names.ledger_queue()), c[1..]);
        assert_eq!(f.commits_in(&f.names.work_queue()), c[1..]);
        let recent = (&transport as &dyn Transport)
            .recent_jobs(usize::MAX)
            .await
            .expect("ledger");
        assert_eq!(recent.len(), 300);
        assert_eq!(State::load(f.file.path()).expect("load"), state);
    }

    #[tokio::test]
    async fn a_publish_nacked_or_failing_mid_batch_moves_the_state_only_over_confirmed_commits() {
        let f = Fixture::new(300, false, false);
        let source = f.open_source().await;
        let branches = [f.main.clone()];
        let mut state = f.file.load().await.expect("load");
        let jobs = f.names.jobs_exchange();
        let c = &f.commits;

        // The 100th publish is nacked; those after it in the batch are
        // confirmed, but the state stops before the refused one.
        f.broker.fail_publish(&jobs, 99, PublishFault::Nacked);
        let transport = f.broker.open("observer").expect("open");
        let polled = poll_once(&source, &branches, &mut state, &f.file, &transport).await;
        assert!(matches!(
            polled,
            Err(PollError::Broker(broker::BrokerError::Nacked { .. }))
        ));
        assert_eq!(
            f.written(),
            [
                (Some(c[0].clone()), true, false),
                (Some(c[99].clone()), true, false)
            ]
        );

        // A send that fails (the connection is gone) leaves the state where
        // it was: nothing of the batch is claimed.
        f.broker.fail_publish(&jobs, 5, PublishFault::Fails);
        let polled = poll_once(&source, &branches, &mut state, &f.file, &transport).await;
        assert!(matches!(
            polled,
            Err(PollError::Broker(broker::BrokerError::ConnectionLost))
        ));
        assert_eq!(f.written().len(), 2, "no write: nothing more was confirmed");

        // A new connection's poll publishes the rest (c100 on, one batch;
        // the flag is still set).
        let transport = f.broker.open("observer-2").expect("open");
        poll_once(&source, &branches, &mut state, &f.file, &transport)
            .await
            .map_err(|_| "poll")
            .expect("the poll publishes the rest");
        assert_eq!(f.written()[2..], [(Some(c[300].clone()), false, false)]);
        // Nothing lost: every commit is in the work queue.
        let queued = f.commits_in(&f.names.work_queue());
        assert!(c[1..].iter().all(|commit| queued.contains(commit)));
    }

    #[tokio::test]
    async fn a_connection_lost_before_a_confirm_is_written_down_and_the_next_session_republishes() {
        let f = Fixture::new(300, false, false);
        // The 11th publish reaches the broker, its confirm does not.
        f.broker.fail_publish(
            &f.names.jobs_exchange(),
            10,
            PublishFault::LostBeforeConfirm,
        );
        f.observe_until(11 + 300).await;
        let c = &f.commits;
        assert_eq!(
            f.written(),
            [
                (Some(c[0].clone()), true, false),
                // Not one publish of the batch is claimed, and a restart now
                // would not trust the ledger.
                (Some(c[0].clone()), true, true),
                // The next session publishes them all again.
                (Some(c[256].clone()), true, true),
                (Some(c[300].clone()), false, false),
            ]
        );
        let queued = f.commits_in(&f.names.work_queue());
        assert_eq!(
            queued[..11],
            c[1..12],
            "what the broker took before the loss"
        );
        assert_eq!(queued[11..], c[1..], "then everything, none lost");
        assert_eq!(
            f.broker.connections().len(),
            0,
            "the observer closed its connection"
        );
    }

    /// The jobs of `commits` published by someone else (the observer that
    /// died), so that they are in the ledger and the work queue.
    async fn published_before_the_crash(f: &Fixture, commits: &[CommitId]) {
        let transport = f.broker.open("the observer that died").expect("open");
        let location = f.open_source().await.location().clone();
        for commit in commits {
            let job = Job::for_commit(&location, &f.main, commit);
            (&transport as &dyn Transport)
                .publish(&f.names.jobs_exchange(), "", &job)
                .await
                .expect("published");
        }
    }

    #[tokio::test]
    async fn a_restart_with_publishes_in_flight_moves_past_what_the_ledger_holds() {
        let f = Fixture::new(3, true, false);
        let c = &f.commits;
        published_before_the_crash(&f, &c[1..3]).await;
        f.observe_until(3).await;
        assert_eq!(f.commits_in(&f.names.work_queue()), c[1..], "none twice");
        assert_eq!(
            f.written(),
            [
                // The ledger read: the broker took c1 and c2.
                (Some(c[2].clone()), false, false),
                (Some(c[2].clone()), true, false),
                (Some(c[3].clone()), false, false),
            ]
        );
    }

    #[tokio::test]
    async fn after_a_broker_failure_under_publishes_a_restart_does_not_trust_the_ledger() {
        let f = Fixture::new(3, true, true);
        let c = &f.commits;
        published_before_the_crash(&f, &c[1..3]).await;
        f.observe_until(2 + 3).await;
        let queued = f.commits_in(&f.names.work_queue());
        assert_eq!(queued[2..], c[1..], "published again, none lost");
        assert_eq!(
            f.written().last(),
            Some(&(Some(c[3].clone()), false, false))
        );
    }
}
