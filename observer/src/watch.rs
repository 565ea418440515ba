//! Watching one repository: polls on its interval, pushes from webhooks as
//! they come, both turned into jobs by one [`Watcher`] that alone owns the
//! repository's state, so a commit is never queued twice.
//!
//! The state names the last published commit per branch, written only
//! after the broker confirmed the publishes, so a restart never skips a
//! commit. Commits go out in batches: each batch's publishes are in flight
//! together, their confirms awaited in order, and the state written once
//! per batch, off the async runtime. A crash between the broker taking a
//! publish and the state recording it would repeat that commit; to close
//! that window the state also says when publishes are in flight, and a
//! restart that finds them asks the broker's ledger (a bounded copy of
//! every job published, see `Names::ledger_queue`) which commits it took.

use std::time::Duration;

use anyhow::anyhow;
use broker::Transport;
use model::branch::branch_matches;
use model::{BranchName, CommitId};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::producer::Producer;
use crate::session::Session;
use crate::source::{NewCommit, RepoSource};
use crate::state::{State, StateError, StateFile};

/// Publishes in flight at once, at most. Well below the ledger's 1,000
/// entries, so that after a crash every publish whose fate is unknown is
/// still in the ledger.
const BATCH: usize = 256;

/// How one repository is watched.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchSpec {
    /// What logs call the repository: its registry name, or its location.
    pub label: String,
    /// Branch patterns to build (`main`, `release/*`); empty: the
    /// repository's HEAD branch.
    pub branches: Vec<String>,
    /// Time between polls; `None`: never polled (webhooks only).
    pub interval: Option<Duration>,
    /// Largest ledger message read back after a crash.
    pub max_message_bytes: usize,
}

/// A push of one branch, as a webhook or the post-receive hook told it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    pub branch: BranchName,
    /// Where the branch was; `None` when the push created it.
    pub before: Option<CommitId>,
    pub after: CommitId,
    /// The pushed commits, oldest first, as far as the payload lists them.
    pub commits: Vec<NewCommit>,
    /// Whether `commits` is all of `before..after`.
    pub complete: bool,
    /// The forge's delivery id, `forge:id`: a delivery seen before queues
    /// nothing.
    pub delivery: Option<String>,
}

/// What became of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// This many jobs were queued, each confirmed by the broker (0: the
    /// branch had nothing new).
    Queued(usize),
    /// The delivery was acted on before.
    Seen,
    /// The branch is not one the repository builds.
    NotBuilt,
    /// No broker now, or it failed under the publishes: send it again.
    BrokerDown,
    /// The repository could not be read (the reason is logged).
    Failed,
}

/// A push to act on, and where to say what became of it.
#[derive(Debug)]
pub struct PushRequest {
    pub push: Push,
    pub reply: oneshot::Sender<PushOutcome>,
}

#[derive(Debug)]
pub(crate) enum WatchError {
    Broker(broker::BrokerError),
    Repo(anyhow::Error),
    State(StateError),
}

impl From<StateError> for WatchError {
    fn from(err: StateError) -> Self {
        WatchError::State(err)
    }
}

/// One repository's source, state and progress.
pub(crate) struct Watcher {
    spec: WatchSpec,
    source: RepoSource,
    state: State,
    file: StateFile,
    /// The HEAD branch, when no patterns are given (read on refresh).
    head: Option<BranchName>,
    /// A start after a crash with publishes in flight: read the ledger
    /// before publishing anything.
    reconcile: bool,
    shutdown: CancellationToken,
}

impl Watcher {
    pub(crate) async fn open(
        spec: WatchSpec,
        source: RepoSource,
        file: StateFile,
        shutdown: CancellationToken,
    ) -> Result<Watcher, StateError> {
        let mut state = file.load().await?;
        state.check_repo(source.location())?;
        // Only a start after a crash has publishes whose fate is unknown,
        // and the ledger only knows it if the broker did not fail under them.
        let reconcile = state.publishing() && !state.broker_failed();
        Ok(Watcher {
            spec,
            source,
            state,
            file,
            head: None,
            reconcile,
            shutdown,
        })
    }

    /// Fetches (a mirror), holding one of the `gate`'s permits so that a
    /// few repositories are read at once; re-reads the HEAD branch. A fetch
    /// from a stalled server lasts up to the git timeout; stopping does not
    /// wait for it (dropping the call kills git).
    async fn refresh(&mut self, gate: Option<&Semaphore>) -> Result<(), WatchError> {
        let refreshed = async {
            let _permit = match gate {
                Some(gate) => Some(gate.acquire().await.map_err(|_| anyhow!("stopping"))?),
                None => None,
            };
            self.source.refresh().await?;
            if self.spec.branches.is_empty() {
                return Ok(Some(self.source.head_branch().await.map_err(|err| {
                    err.context("finding the repository's HEAD branch")
                })?));
            }
            Ok(None)
        };
        let head = tokio::select! {
            _ = self.shutdown.cancelled() => Err(anyhow!("stopping")),
            head = refreshed => head,
        }
        .map_err(WatchError::Repo)?;
        if head.is_some() {
            self.head = head;
        }
        Ok(())
    }

    /// Whether `branch` is one this repository builds.
    fn builds(&self, branch: &BranchName) -> bool {
        if self.spec.branches.is_empty() {
            return self.head.as_ref() == Some(branch);
        }
        self.spec
            .branches
            .iter()
            .any(|pattern| branch_matches(pattern, branch))
    }

    /// The built branches that exist, with their heads.
    async fn branches(&self) -> Result<Vec<(BranchName, CommitId)>, WatchError> {
        if self.spec.branches.is_empty() {
            let Some(branch) = &self.head else {
                return Ok(Vec::new());
            };
            let head = self
                .source
                .branch_head(branch)
                .await
                .map_err(WatchError::Repo)?;
            return Ok(head
                .map(|head| (branch.clone(), head))
                .into_iter()
                .collect());
        }
        let heads = self.source.branch_heads().await.map_err(WatchError::Repo)?;
        Ok(heads
            .into_iter()
            .filter(|(branch, _)| self.builds(branch))
            .collect())
    }

    /// Every new commit of every built branch, oldest first per branch.
    async fn new_commits(&self) -> Result<Vec<(BranchName, NewCommit)>, WatchError> {
        let mut new = Vec::new();
        for (branch, head) in self.branches().await? {
            let last = self.state.last(&branch).cloned();
            if last.as_ref() == Some(&head) {
                continue;
            }
            let commits = self
                .source
                .new_commits(last.as_ref(), &head)
                .await
                .map_err(WatchError::Repo)?;
            new.extend(commits.into_iter().map(|commit| (branch.clone(), commit)));
        }
        Ok(new)
    }

    /// One poll: fetch, then publish what is new.
    pub(crate) async fn poll(
        &mut self,
        transport: &dyn Transport,
        gate: Option<&Semaphore>,
    ) -> Result<usize, WatchError> {
        self.reconciled(transport, gate).await?;
        self.refresh(gate).await?;
        let new = self.new_commits().await?;
        self.publish(new, transport, None).await
    }

    /// Acts on a push: the payload's commits when they are all of what
    /// follows the last published commit, else what the repository itself
    /// has after it (fetched now).
    pub(crate) async fn push(
        &mut self,
        push: Push,
        transport: &dyn Transport,
        gate: Option<&Semaphore>,
    ) -> Result<PushOutcome, WatchError> {
        if let Some(id) = &push.delivery {
            if self.state.seen_delivery(id) {
                return Ok(PushOutcome::Seen);
            }
        }
        self.reconciled(transport, gate).await?;
        if self.head.is_none() && self.spec.branches.is_empty() {
            self.refresh(gate).await?;
        }
        if !self.builds(&push.branch) {
            return Ok(PushOutcome::NotBuilt);
        }
        let last = self.state.last(&push.branch).cloned();
        // Nothing published for the branch yet (a repository that is not
        // polled, or not yet): the push says where it starts.
        let base = last.clone().or_else(|| push.before.clone());
        let ends_at_after = push.commits.last().map(|c| &c.id) == Some(&push.after);
        let commits = if last.as_ref() == Some(&push.after) {
            Vec::new()
        } else if push.complete && ends_at_after && base.is_some() && push.before == base {
            push.commits
        } else if base.is_none() && ends_at_after {
            // A new branch: its head only, as a first poll does.
            push.commits.into_iter().last().into_iter().collect()
        } else {
            // Cut short, force-pushed, or behind what was published: the
            // repository says what is new.
            self.refresh(gate).await?;
            let head = self
                .source
                .branch_head(&push.branch)
                .await
                .map_err(WatchError::Repo)?;
            match head {
                Some(head) if last.as_ref() != Some(&head) => self
                    .source
                    .new_commits(base.as_ref(), &head)
                    .await
                    .map_err(WatchError::Repo)?,
                _ => Vec::new(),
            }
        };
        let new = commits
            .into_iter()
            .map(|commit| (push.branch.clone(), commit))
            .collect();
        let queued = self
            .publish(new, transport, push.delivery.as_deref())
            .await?;
        Ok(PushOutcome::Queued(queued))
    }

    /// After a crash with publishes in flight: move each branch's last
    /// published commit forward to the newest one the broker's ledger holds
    /// for it, so what the broker already took is not published again.
    async fn reconciled(
        &mut self,
        transport: &dyn Transport,
        gate: Option<&Semaphore>,
    ) -> Result<(), WatchError> {
        if !self.reconcile {
            return Ok(());
        }
        self.refresh(gate).await?;
        let ledger = transport
            .recent_jobs(self.spec.max_message_bytes)
            .await
            .map_err(WatchError::Broker)?;
        let mut branches: Vec<BranchName> = self
            .state
            .branches()
            .filter_map(|name| BranchName::parse(name).ok())
            .collect();
        for (branch, _) in self.branches().await? {
            if !branches.contains(&branch) {
                branches.push(branch);
            }
        }
        for branch in branches {
            // Only plain per-commit jobs: reruns and manual triggers carry a
            // salted id and say nothing about what the observer published.
            let published: Vec<CommitId> = ledger
                .iter()
                .filter(|job| {
                    job.repo == *self.source.location()
                        && job.branch == branch
                        && job.is_first_of_commit()
                })
                .map(|job| job.commit.clone())
                .collect();
            let saved = self.state.last(&branch).cloned();
            let furthest = self
                .source
                .furthest_descendant(saved.as_ref(), &published)
                .await
                .map_err(WatchError::Repo)?;
            if let Some(commit) = furthest.filter(|c| Some(c) != saved.as_ref()) {
                tracing::info!(
                    repo = %self.spec.label,
                    %branch,
                    saved = saved.as_ref().map_or("none", |c| c.as_str()),
                    %commit,
                    "the broker took commits the state file had not recorded; resuming after them"
                );
                self.state.set_last(&branch, &commit);
            }
        }
        self.state.set_publishing(false);
        self.file.save(&self.state).await?;
        self.reconcile = false;
        Ok(())
    }

    /// Publishes `new` (oldest first per branch) in batches of at most
    /// [`BATCH`]. The state is written ahead (publishes in flight), then
    /// once per batch after its confirms, naming only commits the broker
    /// confirmed. A push's `delivery` is remembered in the write that
    /// follows the last confirm (one write fewer per push). Returns how
    /// many were queued.
    async fn publish(
        &mut self,
        new: Vec<(BranchName, NewCommit)>,
        transport: &dyn Transport,
        delivery: Option<&str>,
    ) -> Result<usize, WatchError> {
        let (state, file) = (&mut self.state, &self.file);
        if new.is_empty() {
            // A publish cut short by the broker may have left the flag set.
            let stale = state.publishing();
            state.set_publishing(false);
            if let Some(id) = delivery {
                state.remember_delivery(id);
            }
            if stale || delivery.is_some() {
                file.save(state).await?;
            }
            return Ok(0);
        }
        if !state.publishing() {
            // Written ahead: a crash from here on leaves the flag set.
            state.set_publishing(true);
            file.save(state).await?;
        }
        let producer = Producer::new(transport);
        let batches = new.len().div_ceil(BATCH);
        let mut queued = 0;
        for (number, batch) in new.chunks(BATCH).enumerate() {
            let mut in_flight = Vec::with_capacity(batch.len());
            let mut failed = None;
            for (branch, commit) in batch {
                let job = Producer::job(
                    self.source.location(),
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
            // Confirms come in publish order; the state moves to the end of
            // the unbroken run of confirmed publishes and no further.
            let mut confirmed = 0;
            for (branch, commit, id, confirm) in in_flight {
                if failed.is_some() {
                    break;
                }
                match confirm.wait().await {
                    Ok(()) => {
                        state.set_last(branch, &commit.id);
                        confirmed += 1;
                        tracing::info!(
                            repo = %self.spec.label, job = %id, %branch, commit = %commit.id,
                            "job queued"
                        );
                    }
                    Err(err) => failed = Some(err),
                }
            }
            queued += confirmed;
            let all_done = failed.is_none() && number + 1 == batches;
            if all_done {
                state.set_publishing(false);
                if let Some(id) = delivery {
                    state.remember_delivery(id);
                }
            }
            if confirmed > 0 || all_done {
                file.save(state).await?;
            }
            if let Some(err) = failed {
                // A failing broker may keep a publish in the ledger but not
                // in the work queue: from now until these commits are all
                // confirmed, a restart must publish them again instead.
                if state.publishing() && !state.broker_failed() {
                    state.set_broker_failed();
                    file.save(state).await?;
                }
                return Err(WatchError::Broker(err));
            }
        }
        Ok(queued)
    }
}

/// Waits for the next push, or forever when there are none to wait for.
async fn next_push(pushes: &mut Option<&mut mpsc::Receiver<PushRequest>>) -> PushRequest {
    match pushes {
        Some(pushes) => match pushes.recv().await {
            Some(request) => request,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Watches one repository until `shutdown`: polls on its interval (the
/// first at once) and acts on `pushes`, one at a time. Ends with an error
/// only when its state cannot be written.
pub(crate) async fn watch(
    mut watcher: Watcher,
    session: &Session,
    gate: Option<&Semaphore>,
    mut pushes: Option<&mut mpsc::Receiver<PushRequest>>,
) -> Result<(), StateError> {
    let shutdown = watcher.shutdown.clone();
    let interval = watcher.spec.interval;
    let mut next_poll = Instant::now();
    // A poll is due but there is no broker: it runs on the next connection.
    let mut awaiting_broker = false;
    loop {
        let (transport, request) = tokio::select! {
            _ = shutdown.cancelled() => break,
            request = next_push(&mut pushes) => (session.current(), Some(request)),
            transport = session.connected(), if awaiting_broker => (Some(transport), None),
            _ = tokio::time::sleep_until(next_poll), if !awaiting_broker && interval.is_some() => {
                (session.current(), None)
            }
        };
        let Some(transport) = transport else {
            match request {
                Some(request) => {
                    let _ = request.reply.send(PushOutcome::BrokerDown);
                }
                None => awaiting_broker = true,
            }
            continue;
        };
        let failed = match request {
            Some(request) => {
                let (answer, failed) = match watcher.push(request.push, &*transport, gate).await {
                    Ok(outcome) => (outcome, None),
                    Err(err @ WatchError::Broker(_)) => (PushOutcome::BrokerDown, Some(err)),
                    Err(err) => (PushOutcome::Failed, Some(err)),
                };
                let _ = request.reply.send(answer);
                failed
            }
            None => {
                awaiting_broker = false;
                let polled = watcher.poll(&*transport, gate).await;
                if let Some(interval) = interval {
                    next_poll = Instant::now() + interval;
                }
                polled.err()
            }
        };
        match failed {
            None => {}
            Some(WatchError::Repo(_)) if shutdown.is_cancelled() => {}
            Some(WatchError::Broker(err)) => {
                if !shutdown.is_cancelled() {
                    tracing::warn!(repo = %watcher.spec.label, "lost the broker ({err})");
                }
                session.lost(&transport);
                awaiting_broker = interval.is_some();
            }
            Some(WatchError::Repo(err)) => {
                tracing::warn!(repo = %watcher.spec.label, "cannot read the repository: {err:#}");
            }
            Some(WatchError::State(err)) => return Err(err),
        }
    }
    Ok(())
}

/// Watches one repository with a broker session of its own (the
/// single-repository observer), until `shutdown`.
pub(crate) async fn watch_alone(
    spec: WatchSpec,
    source: RepoSource,
    file: StateFile,
    connector: &dyn broker::Connector,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    // Either half ending stops the other.
    let stop = shutdown.child_token();
    let watcher = Watcher::open(spec, source, file, stop.clone()).await?;
    tracing::info!(
        repo = %watcher.spec.label,
        branches = ?watcher.spec.branches,
        interval_secs = watcher.spec.interval.map(|i| i.as_secs_f64()),
        "observer started"
    );
    let session = Session::new();
    let name = format!("warren-observer-{}", std::process::id());
    let keeping = async {
        let kept = session.keep_connected(connector, &name, &stop).await;
        stop.cancel();
        kept
    };
    let watching = async {
        let watched = watch(watcher, &session, None, None).await;
        stop.cancel();
        watched
    };
    let (kept, watched) = tokio::join!(keeping, watching);
    watched?;
    kept?;
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
        repo: String,
        spec: WatchSpec,
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
            let spec = WatchSpec {
                label: "repo".into(),
                branches: vec!["main".into()],
                interval: Some(Duration::from_millis(10)),
                max_message_bytes: broker::message::DEFAULT_MAX_MESSAGE_BYTES,
            };
            let state_file = dir.path().join("state.json");
            let main = BranchName::parse("main").expect("branch");
            let mut state = State::load(&state_file).expect("load");
            let location = std::fs::canonicalize(&repo).expect("canonical");
            state
                .check_repo(location.to_str().expect("utf8"))
                .expect("repo");
            state.set_last(&main, &commits[0]);
            state.set_publishing(publishing);
            if broker_failed {
                state.set_broker_failed();
            }
            state.save(&state_file).expect("save");
            let broker = MemoryBroker::new(&names, &Topology::new(&names, Default::default()))
                .expect("memory broker");
            Fixture {
                file: StateFile::new(state_file),
                repo: repo.to_str().expect("utf8").to_string(),
                _dir: dir,
                commits,
                main,
                spec,
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
            let source = self.open_source().await;
            let observer = watch_alone(
                self.spec.clone(),
                source,
                self.file.clone(),
                &self.broker,
                &shutdown,
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
            RepoSource::open(&self.repo, self.file.path(), git::DEFAULT_TIMEOUT)
                .await
                .expect("open")
        }

        /// A watcher over the fixture's repository and state file.
        async fn watcher(&self) -> Watcher {
            let source = self.open_source().await;
            Watcher::open(
                self.spec.clone(),
                source,
                self.file.clone(),
                CancellationToken::new(),
            )
            .await
            .expect("open the watcher")
        }
    }

    #[tokio::test]
    async fn a_polls_commits_go_out_in_batches_with_one_state_write_each_after_the_confirms() {
        let f = Fixture::new(300, false, false);
        let mut watcher = f.watcher().await;
        let transport = f.broker.open("observer").expect("open");
        let polled = watcher.poll(&transport, None).await;
        assert_eq!(polled.ok(), Some(300), "the poll publishes everything");
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
        assert_eq!(State::load(f.file.path()).expect("load"), watcher.state);
    }

    #[tokio::test]
    async fn a_publish_nacked_or_failing_mid_batch_moves_the_state_only_over_confirmed_commits() {
        let f = Fixture::new(300, false, false);
        let mut watcher = f.watcher().await;
        let jobs = f.names.jobs_exchange();
        let c = &f.commits;

        // The 100th publish is nacked; those after it in the batch are
        // confirmed, but the state stops before the refused one.
        f.broker.fail_publish(&jobs, 99, PublishFault::Nacked);
        let transport = f.broker.open("observer").expect("open");
        let polled = watcher.poll(&transport, None).await;
        assert!(matches!(
            polled,
            Err(WatchError::Broker(broker::BrokerError::Nacked { .. }))
        ));
        assert_eq!(
            f.written(),
            [
                (Some(c[0].clone()), true, false),
                (Some(c[99].clone()), true, false),
                // A restart now would not trust the ledger.
                (Some(c[99].clone()), true, true),
            ]
        );

        // A send that fails (the connection is gone) leaves the state where
        // it was: nothing of the batch is claimed.
        f.broker.fail_publish(&jobs, 5, PublishFault::Fails);
        let polled = watcher.poll(&transport, None).await;
        assert!(matches!(
            polled,
            Err(WatchError::Broker(broker::BrokerError::ConnectionLost))
        ));
        assert_eq!(f.written().len(), 3, "no write: nothing more was confirmed");

        // A new connection's poll publishes the rest (c100 on, one batch;
        // the flag is still set).
        let transport = f.broker.open("observer-2").expect("open");
        let polled = watcher.poll(&transport, None).await;
        assert_eq!(polled.ok(), Some(201), "the poll publishes the rest");
        assert_eq!(f.written()[3..], [(Some(c[300].clone()), false, false)]);
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

    fn push_of(f: &Fixture, from: usize, to: usize, complete: bool, delivery: &str) -> Push {
        let c = &f.commits;
        Push {
            branch: f.main.clone(),
            before: Some(c[from].clone()),
            after: c[to].clone(),
            commits: c[from + 1..=to]
                .iter()
                .map(|id| NewCommit {
                    id: id.clone(),
                    author: "A".into(),
                    subject: "from the payload".into(),
                })
                .collect(),
            complete,
            delivery: Some(delivery.into()),
        }
    }

    #[tokio::test]
    async fn a_push_queues_its_commits_once_and_neither_a_redelivery_nor_a_poll_repeats_them() {
        let f = Fixture::new(5, false, false);
        let mut watcher = f.watcher().await;
        let transport = f.broker.open("observer").expect("open");
        let c = &f.commits;
        let pushed = watcher
            .push(push_of(&f, 0, 3, true, "github:1"), &transport, None)
            .await;
        assert_eq!(pushed.ok(), Some(PushOutcome::Queued(3)));
        let again = watcher
            .push(push_of(&f, 0, 3, true, "github:1"), &transport, None)
            .await;
        assert_eq!(again.ok(), Some(PushOutcome::Seen), "a redelivery");
        // The same push under another delivery id: nothing new.
        let other = watcher
            .push(push_of(&f, 0, 3, true, "github:2"), &transport, None)
            .await;
        assert_eq!(other.ok(), Some(PushOutcome::Queued(0)));
        // The poll finds only what no push named.
        assert_eq!(watcher.poll(&transport, None).await.ok(), Some(2));
        assert_eq!(f.commits_in(&f.names.work_queue()), c[1..]);
        let jobs: Vec<Job> = f
            .broker
            .ready(&f.names.work_queue())
            .iter()
            .map(|m| broker::message::decode::<Job>(&m.body, usize::MAX).expect("a job"))
            .collect();
        assert_eq!(jobs[0].subject.as_deref(), Some("from the payload"));
        assert_eq!(jobs[4].subject.as_deref(), Some("c6"), "from git");
        // The delivery is remembered in the state file.
        assert!(State::load(f.file.path())
            .expect("load")
            .seen_delivery("github:1"));
    }

    #[tokio::test]
    async fn a_cut_short_push_reads_the_rest_from_the_repository() {
        let f = Fixture::new(30, false, false);
        let mut watcher = f.watcher().await;
        let transport = f.broker.open("observer").expect("open");
        // GitLab lists the newest 20 of 30.
        let mut push = push_of(&f, 0, 30, false, "gitlab:1");
        push.commits.drain(..10);
        let pushed = watcher.push(push, &transport, None).await;
        assert_eq!(pushed.ok(), Some(PushOutcome::Queued(30)));
        assert_eq!(f.commits_in(&f.names.work_queue()), f.commits[1..]);
    }

    #[tokio::test]
    async fn a_push_of_a_branch_not_built_or_without_a_broker_queues_nothing() {
        let f = Fixture::new(2, false, false);
        let mut watcher = f.watcher().await;
        let transport = f.broker.open("observer").expect("open");
        let mut push = push_of(&f, 0, 2, true, "gitea:1");
        push.branch = BranchName::parse("feature").expect("branch");
        let pushed = watcher.push(push, &transport, None).await;
        assert_eq!(pushed.ok(), Some(PushOutcome::NotBuilt));

        // The broker refuses: an error the hook answers 503, the delivery
        // is not remembered, and the forge's retry queues the commits.
        f.broker
            .fail_publish(&f.names.jobs_exchange(), 0, PublishFault::Fails);
        let pushed = watcher
            .push(push_of(&f, 0, 2, true, "gitea:2"), &transport, None)
            .await;
        assert!(matches!(pushed, Err(WatchError::Broker(_))));
        let transport = f.broker.open("observer-2").expect("open");
        let pushed = watcher
            .push(push_of(&f, 0, 2, true, "gitea:2"), &transport, None)
            .await;
        assert_eq!(pushed.ok(), Some(PushOutcome::Queued(2)));
        assert_eq!(f.commits_in(&f.names.work_queue()), f.commits[1..]);
    }
}
