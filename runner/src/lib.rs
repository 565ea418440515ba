//! The runner: competes with other runners for jobs on the work queues it
//! serves (`--queue`, manual ack), tests one commit at a time, publishes
//! the result with a confirm, and only then acks the job.
//!
//! A runner serving one queue consumes it with prefetch 1. One serving
//! several polls them with `basic.get`, in turn, starting after the queue
//! that gave the last job, waiting 20 ms doubling to 500 ms while all are
//! empty. Not one consumer per queue: each would hold a prefetched job
//! while another runs, and handing it back (a requeue or a closed channel)
//! counts against the quorum queue's delivery limit, so a job could be
//! dead-lettered without ever running (and quorum queues have no
//! channel-wide prefetch to share one slot between consumers). Polling never holds a job it is not
//! running and never returns one; the price is up to half a second before
//! an idle runner sees a new job.
//!
//! While a job runs it sends heartbeats, so the dispatcher can tell a frozen
//! runner from a slow test. If the broker goes away mid-test, the test runs
//! on; the result is kept and delivered after reconnecting, and the
//! redelivered job is then acked without running it again.
//!
//! The control watcher and the heartbeat sender are tasks of the broker
//! session: tracked, stopped and awaited when it ends. If one of them ends
//! first, the session ends too (logged) and the runner reconnects, rather
//! than go on deaf to cancels or silent to the dispatcher.
//!
//! The sessions talk to the broker through [`broker::Transport`] and run
//! jobs through `Execute`, so the unit tests below drive everything a
//! runner does with the broker (taking, announcing, heartbeats, the result
//! before the ack, cancels, redeliveries, a result kept while the broker is
//! away) on the in-memory broker with scripted jobs.

pub mod junit;
mod limits;
pub mod pipeline;
mod process;
pub mod repo_files;
pub mod sandbox;
pub mod supervisor;
mod tidy;
mod workspace;

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker::transport::{Deliveries, Delivery};
use broker::{BrokerConfig, BrokerError, Connector, Incoming, Transport};
use futures::future::BoxFuture;
use futures::StreamExt;
use model::split::{SplitPart, TestStatus, TestsReport};
use model::{
    Control, Event, Job, JobId, JobResult, Outcome, OutputChunk, QueueName, RunnerId, RunnerInfo,
    SCHEMA_VERSION,
};
use tasks::Tasks;
use tokio_util::sync::CancellationToken;

pub use limits::Limits;
pub use process::{
    become_non_dumpable, become_subreaper, run_test, run_test_with, scrubbed_env, Ending, Launch,
    LiveOutput, TestRun,
};
pub use repo_files::{RepoConfig, REPO_COMMAND_FILE, REPO_CONFIG_FILE};
pub use sandbox::{Isolation, JobSandbox, Network, SandboxChoice};
pub use workspace::{Checkout, PrepareError, Workspace};

/// Default cap on captured test output.
pub const DEFAULT_OUTPUT_CAP: usize = 1024 * 1024;
/// The original design's convention: unittest discovery under `tests/`.
pub const DEFAULT_TEST_COMMAND: &str = "python3 -m unittest discover -s tests -v";
/// How many delivered job ids to remember, to ack redeliveries unrun.
const COMPLETED_MEMORY: usize = 1000;

/// Everything a runner needs.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub broker: BrokerConfig,
    pub workdir: PathBuf,
    /// Overrides the default test command (a repository's file wins).
    pub test_command: Option<String>,
    pub job_timeout: Duration,
    pub id: RunnerId,
    pub heartbeat: Duration,
    pub output_cap: usize,
    /// How long a running job may take to finish after SIGTERM.
    pub grace: Duration,
    /// The `warren` binary, whose `supervise` subcommand runs each test
    /// (see [`supervisor`]).
    pub supervisor: PathBuf,
    /// How long one git call may take before it is killed.
    pub git_timeout: Duration,
    /// The sandbox and the limits each job gets (see [`sandbox`]).
    pub isolation: Isolation,
    /// The work queues it takes jobs from (`--queue`); empty means
    /// `default`.
    pub queues: Vec<QueueName>,
}

impl RunnerConfig {
    /// The queues it serves, each once: `default` when it names none.
    pub fn served_queues(&self) -> Vec<QueueName> {
        let mut queues: Vec<QueueName> = Vec::new();
        for queue in &self.queues {
            if !queues.contains(queue) {
                queues.push(queue.clone());
            }
        }
        if queues.is_empty() {
            queues.push(QueueName::default());
        }
        queues
    }
}

/// `<host>-<pid>`, so `--scale runner=N` needs no per-runner setting.
pub fn default_runner_id() -> RunnerId {
    let id: String = format!("{}-{}", host_name(), std::process::id())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(128)
        .collect();
    // Only letters, digits, '-', '_' and '.' remain, and the pid makes it
    // neither empty nor a dot.
    RunnerId::parse(&id).unwrap_or_else(|_| unreachable!("a sanitised id is valid"))
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "runner".to_string())
}

/// The job a runner is executing, and how to stop it.
struct Current {
    job_id: JobId,
    cancel: CancellationToken,
    output: LiveOutput,
}

type SharedCurrent = Arc<Mutex<Option<Current>>>;

/// The first wait of a runner polling several queues that are all empty.
const POLL_WAIT_MIN: Duration = Duration::from_millis(20);
/// The longest: an idle runner of several queues sees a new job within it.
const POLL_WAIT_MAX: Duration = Duration::from_millis(500);

/// Where a session's jobs come from (see the module documentation).
enum Jobs {
    /// The one queue it serves, consumed with prefetch 1.
    Consumed(Deliveries),
    /// Several queues, polled with `get`.
    Polled(Poller),
}

impl Jobs {
    /// Declares the session's queues and starts taking from them.
    async fn open(transport: &dyn Transport, queues: &[QueueName]) -> Result<Jobs, BrokerError> {
        let mut names = Vec::with_capacity(queues.len());
        for queue in queues {
            names.push(transport.declare_work_queue(queue).await?);
        }
        Ok(match names.as_slice() {
            [one] => Jobs::Consumed(transport.consume(one, 1).await?),
            _ => Jobs::Polled(Poller {
                queues: names,
                next: 0,
                wait: POLL_WAIT_MIN,
            }),
        })
    }

    /// The next job; `None` once the consumer is gone. Dropped while it
    /// waits, nothing is taken.
    async fn next(&mut self, transport: &dyn Transport) -> Option<Result<Delivery, BrokerError>> {
        match self {
            Jobs::Consumed(deliveries) => deliveries.next().await,
            Jobs::Polled(poller) => Some(poller.next(transport).await),
        }
    }
}

/// Takes one job at a time from several queues, in turn.
struct Poller {
    queues: Vec<String>,
    /// Where the next round starts: after the queue of the last job.
    next: usize,
    /// The wait after the next round that finds every queue empty.
    wait: Duration,
}

impl Poller {
    async fn next(&mut self, transport: &dyn Transport) -> Result<Delivery, BrokerError> {
        loop {
            for i in 0..self.queues.len() {
                let index = (self.next + i) % self.queues.len();
                if let Some(delivery) = transport.get(&self.queues[index]).await? {
                    self.next = (index + 1) % self.queues.len();
                    self.wait = POLL_WAIT_MIN;
                    return Ok(delivery);
                }
            }
            tokio::time::sleep(self.wait).await;
            self.wait = (self.wait * 2).min(POLL_WAIT_MAX);
        }
    }
}

/// How long a session's tasks get to end once it is over.
const SESSION_TASKS_STOP: Duration = Duration::from_secs(2);

/// How a broker session ended.
enum SessionEnd {
    Shutdown,
    Lost,
    /// A task of the session ended while the connection was up.
    TaskEnded,
}

/// What to do after handling a job.
enum Next {
    Continue,
    /// Shutting down: take no more jobs.
    Stop,
}

enum Execution {
    Finished(Box<JobResult>),
    Cancelled,
}

/// How a job is run: checked out and tested for real ([`TestCommand`]),
/// or scripted by the unit tests.
trait Execute: Send + Sync {
    /// Runs `job`, writing what it prints to `live`, until it ends or
    /// `cancel` fires.
    fn execute(
        &self,
        job: Job,
        runner: RunnerInfo,
        started_at_ms: u64,
        live: LiveOutput,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, Execution>;
}

/// Checks out the job's commit and runs the test command.
struct TestCommand {
    config: RunnerConfig,
    workspace: Workspace,
    sandbox: JobSandbox,
    limits: Arc<Limits>,
}

impl Execute for TestCommand {
    fn execute(
        &self,
        job: Job,
        runner: RunnerInfo,
        started_at_ms: u64,
        live: LiveOutput,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, Execution> {
        Box::pin(execute(
            job,
            self.config.clone(),
            self.workspace.clone(),
            self.sandbox.clone(),
            self.limits.clone(),
            runner,
            started_at_ms,
            live,
            cancel,
        ))
    }
}

/// Runs a runner until `shutdown` fires.
pub async fn run(config: RunnerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    become_subreaper();
    // It holds the broker URL with its password; a test runs as the same user.
    become_non_dumpable();
    let (sandbox, warning) = JobSandbox::choose(&config.isolation)
        .await
        .map_err(anyhow::Error::msg)?;
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
    let (limits, warnings) = Limits::prepare(
        config.isolation.memory,
        config.isolation.pids,
        config.id.as_str(),
    );
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    tracing::info!(
        sandbox = %sandbox.kind,
        network = ?config.isolation.network,
        job_memory = ?limits.memory,
        job_pids = ?limits.pids,
        "job isolation"
    );
    let limits = Arc::new(limits);
    let kind = sandbox.kind;
    let tests = TestCommand {
        workspace: Workspace::new(config.workdir.clone()).with_git_timeout(config.git_timeout),
        config: config.clone(),
        sandbox,
        limits: limits.clone(),
    };
    let connector = config.broker.clone();
    let ended = Runner::new(config, Arc::new(tests))
        .with_sandbox(kind)
        .run(&connector, shutdown)
        .await;
    limits.remove_runner_dirs();
    ended
}

struct Runner {
    config: RunnerConfig,
    tests: Arc<dyn Execute>,
    host: String,
    current: SharedCurrent,
    /// Results published and confirmed, newest last.
    completed: VecDeque<JobId>,
    /// A result not yet confirmed by the broker; delivered after reconnect.
    pending: Option<JobResult>,
    /// How the jobs are isolated, as every event and result says.
    sandbox: model::Sandbox,
}

impl Runner {
    fn new(config: RunnerConfig, tests: Arc<dyn Execute>) -> Self {
        Runner {
            tests,
            host: host_name(),
            current: Arc::new(Mutex::new(None)),
            completed: VecDeque::new(),
            pending: None,
            sandbox: model::Sandbox::Off,
            config,
        }
    }

    fn with_sandbox(mut self, sandbox: model::Sandbox) -> Self {
        self.sandbox = sandbox;
        self
    }

    async fn run(
        mut self,
        connector: &dyn Connector,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        tracing::info!(runner = %self.config.id, workdir = %self.config.workdir.display(), "runner started");
        let mut session_number = 0u32;
        loop {
            session_number += 1;
            let connection = format!(
                "warren-runner-{}-{}-{}",
                self.config.id,
                std::process::id(),
                session_number
            );
            let transport = match connector.connect(&connection, &shutdown).await {
                Ok(transport) => transport,
                Err(BrokerError::Shutdown) => break,
                Err(err) => return Err(err.into()),
            };
            match self.session(&transport, &shutdown).await {
                Ok(SessionEnd::Shutdown) => {
                    transport.close().await;
                    break;
                }
                Ok(SessionEnd::Lost) => tracing::warn!("lost the broker; reconnecting"),
                Ok(SessionEnd::TaskEnded) => {}
                Err(err) => tracing::warn!("lost the broker ({err}); reconnecting"),
            }
            // A channel may be gone (e.g. the broker's consumer timeout)
            // while the connection lives: close it before the next one.
            transport.close().await;
            if shutdown.is_cancelled() && self.pending.is_none() {
                break;
            }
        }
        tracing::info!(runner = %self.config.id, "runner stopped");
        Ok(())
    }

    /// One connection's life: deliver a pending result, then take jobs.
    async fn session(
        &mut self,
        transport: &Arc<dyn Transport>,
        shutdown: &CancellationToken,
    ) -> Result<SessionEnd, BrokerError> {
        let info = RunnerInfo {
            id: self.config.id.clone(),
            host: self.host.clone(),
            connection: transport.connection_name().to_string(),
            sandbox: self.sandbox,
            queues: self.config.served_queues(),
        };
        if let Some(result) = self.pending.take() {
            if let Err(err) = self.publish_result(&**transport, &result).await {
                self.pending = Some(result);
                return Err(err);
            }
            tracing::info!(job = %result.job.id, outcome = result.outcome.as_str(), "delivered a result kept while the broker was away");
        }
        let names = transport.names();
        let mut jobs = Jobs::open(&**transport, &info.queues).await?;
        let control = transport.subscribe(&names.control_exchange()).await?;
        // Not stopped by `shutdown`: a job finishing within its grace
        // period still sends heartbeats and still obeys a cancel. They stop
        // with the session.
        let tasks = Tasks::new(&CancellationToken::new());
        tasks.lifetime(
            "the control watcher",
            watch_control(
                control,
                self.config.broker.max_message_bytes,
                self.current.clone(),
                self.config.id.clone(),
                tasks.stopping().clone(),
            ),
        );
        tasks.lifetime(
            "the heartbeat sender",
            send_heartbeats(
                transport.clone(),
                info.clone(),
                self.current.clone(),
                self.config.heartbeat,
                self.config.broker.max_message_bytes,
                tasks.stopping().clone(),
            ),
        );
        let ended = self
            .take_jobs(&mut jobs, &tasks, &**transport, &info, shutdown)
            .await;
        tasks.stop(SESSION_TASKS_STOP).await;
        ended
    }

    /// Takes jobs one at a time until shutdown, the connection is lost, or
    /// a task of the session ends. A task that ends while a job runs is
    /// seen once the job is done (meanwhile, without heartbeats, the
    /// dispatcher's lease takes the job back if needed).
    async fn take_jobs(
        &mut self,
        jobs: &mut Jobs,
        tasks: &Tasks,
        transport: &dyn Transport,
        info: &RunnerInfo,
        shutdown: &CancellationToken,
    ) -> Result<SessionEnd, BrokerError> {
        loop {
            let delivery = tokio::select! {
                _ = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
                _ = transport.closed() => return Ok(SessionEnd::Lost),
                died = tasks.died() => {
                    if !transport.is_connected() {
                        return Ok(SessionEnd::Lost);
                    }
                    tracing::error!("{died} while the connection is up; starting a new session");
                    return Ok(SessionEnd::TaskEnded);
                }
                next = jobs.next(transport) => match next {
                    Some(delivery) => delivery?,
                    None => return Ok(SessionEnd::Lost),
                },
            };
            if let Next::Stop = self.handle(delivery, transport, info, shutdown).await? {
                return Ok(SessionEnd::Shutdown);
            }
        }
    }

    /// Handles one delivery from the work queue.
    async fn handle(
        &mut self,
        delivery: Delivery,
        transport: &dyn Transport,
        info: &RunnerInfo,
        shutdown: &CancellationToken,
    ) -> Result<Next, BrokerError> {
        let names = transport.names();
        let job = match Incoming::<Job>::decode(&delivery, self.config.broker.max_message_bytes) {
            Incoming::Valid(job) => job,
            Incoming::Refused(reason) => {
                // The dispatcher dead-letters its copy of the same message,
                // so it lands in the dead-letter queue once.
                tracing::warn!(%reason, "refused a malformed job; dropping it");
                ack(delivery).await;
                return Ok(Next::Continue);
            }
        };
        if self.completed.contains(&job.id) {
            tracing::info!(job = %job.id, "result already delivered; acking the redelivered job without running it");
            ack(delivery).await;
            return Ok(Next::Continue);
        }
        let cancel = CancellationToken::new();
        let output = LiveOutput::default();
        set_current(
            &self.current,
            Some(Current {
                job_id: job.id.clone(),
                cancel: cancel.clone(),
                output: output.clone(),
            }),
        );
        let started_at_ms = broker::now_ms();
        let started = Event::Started {
            v: SCHEMA_VERSION,
            job: job.clone(),
            runner: info.clone(),
            at_ms: started_at_ms,
        };
        // Its confirm is awaited once the job has run, not before: the
        // checkout need not wait for the broker's disk. Confirms come in
        // order, so the result is never the broker's before the start.
        let announced = transport
            .publish_in_flight(&names.events_exchange(), started.routing_key(), &started)
            .await;
        tracing::info!(job = %job.id, commit = %job.commit, branch = %job.branch, "job running");

        let execution = self.tests.execute(
            job.clone(),
            info.clone(),
            started_at_ms,
            output,
            cancel.clone(),
        );
        tokio::pin!(execution);
        let execution = tokio::select! {
            done = &mut execution => Some(done),
            _ = shutdown.cancelled() => {
                tracing::info!(job = %job.id, grace_secs = self.config.grace.as_secs_f64(), "stopping: letting the current job finish");
                tokio::select! {
                    done = &mut execution => Some(done),
                    _ = tokio::time::sleep(self.config.grace) => {
                        cancel.cancel();
                        let _ = execution.await;
                        tracing::warn!(job = %job.id, "grace period over: job stopped and handed back to the queue");
                        None
                    }
                }
            }
        };
        set_current(&self.current, None);
        if let Err(err) = match announced {
            Ok(confirm) => confirm.wait().await,
            Err(err) => Err(err),
        } {
            tracing::warn!(job = %job.id, "cannot announce the job ({err}); ran it anyway");
        }
        let result = match execution {
            None => return Ok(Next::Stop),
            Some(Execution::Cancelled) => {
                tracing::info!(job = %job.id, "stopped: its result was already recorded elsewhere");
                ack(delivery).await;
                return Ok(if shutdown.is_cancelled() {
                    Next::Stop
                } else {
                    Next::Continue
                });
            }
            Some(Execution::Finished(result)) => *result,
        };
        let mut result = result;
        fit_to_cap(&mut result, self.config.broker.max_message_bytes);
        self.pending = Some(result.clone());
        let publish_clock = std::time::Instant::now();
        self.publish_result(transport, &result).await?;
        let publish_ms = millis(publish_clock.elapsed());
        self.pending = None;
        let ack_clock = std::time::Instant::now();
        ack(delivery).await;
        let ack_ms = millis(ack_clock.elapsed());
        tracing::info!(
            job = %job.id,
            outcome = result.outcome.as_str(),
            duration_ms = result.duration_ms,
            publish_ms,
            ack_ms,
            "job finished"
        );
        Ok(if shutdown.is_cancelled() {
            Next::Stop
        } else {
            Next::Continue
        })
    }

    async fn publish_result(
        &mut self,
        transport: &dyn Transport,
        result: &JobResult,
    ) -> Result<(), BrokerError> {
        transport
            .publish(
                &transport.names().results_exchange(),
                &result.routing_key(),
                result,
            )
            .await?;
        if self.completed.len() >= COMPLETED_MEMORY {
            self.completed.pop_front();
        }
        self.completed.push_back(result.job.id.clone());
        Ok(())
    }
}

/// A duration in milliseconds to 10 µs, as the runner's timing lines give
/// it: whole milliseconds would hide the small steps of a job.
pub(crate) fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 100_000.0).round() / 100.0
}

/// Shrinks a result's output until the encoded message fits the cap (JSON
/// escaping can make output grow several times), marking it truncated. A
/// plan too large for a message even without output (256 jobs of long
/// commands) makes the planning job an `error` that says so.
fn fit_to_cap(result: &mut JobResult, cap: usize) {
    let budget = cap.saturating_sub(16 * 1024);
    let mut shrunk = false;
    while broker::message::encode(result).len() > budget && !result.output.is_empty() {
        let mut keep = result.output.len() / 2;
        while !result.output.is_char_boundary(keep) {
            keep -= 1;
        }
        result.output.truncate(keep);
        shrunk = true;
    }
    if shrunk {
        result.truncated = true;
        result
            .output
            .push_str("\n[warren: output truncated to fit the message size cap]\n");
    }
    if result.tests.is_some() && broker::message::encode(result).len() > budget {
        let size = result
            .tests
            .take()
            .map_or(0, |tests| broker::message::encode(&tests).len());
        let reason = format!(
            "the split's test ids take {size} bytes, more than a message may carry ({cap} bytes with the result): split the job into several"
        );
        result.outcome = Outcome::Error;
        result.output.push_str(&format!("warren: {reason}\n"));
        result.reason = Some(reason);
    }
    if result.plan.is_some() && broker::message::encode(result).len() > budget {
        let size = result
            .plan
            .take()
            .map_or(0, |plan| broker::message::encode(&plan).len());
        let reason = format!(
            "the plan of {REPO_CONFIG_FILE} takes {size} bytes, more than a message may carry ({cap} bytes with the result): shorten the jobs' commands or split the pipeline"
        );
        result.outcome = Outcome::Error;
        result.output.push_str(&format!("warren: {reason}\n"));
        result.reason = Some(reason);
    }
}

fn set_current(current: &SharedCurrent, value: Option<Current>) {
    if let Ok(mut guard) = current.lock() {
        *guard = value;
    }
}

/// Acks a job. A failed ack (connection gone) is harmless: the job comes
/// back and is acked unrun because its result is remembered.
async fn ack(delivery: Delivery) {
    if let Err(err) = delivery.ack().await {
        tracing::debug!("ack failed ({err}); the job will be redelivered and acked then");
    }
}

/// Checks out the commit and runs the test command.
#[allow(clippy::too_many_arguments)]
async fn execute(
    job: Job,
    config: RunnerConfig,
    workspace: Workspace,
    sandbox: JobSandbox,
    limits: Arc<Limits>,
    runner: RunnerInfo,
    started_at_ms: u64,
    live: LiveOutput,
    cancel: CancellationToken,
) -> Execution {
    let clock = std::time::Instant::now();
    // Every result but a planning job's has no plan.
    let finish_with = |outcome: Outcome,
                       exit_code: Option<i32>,
                       output: String,
                       truncated: bool,
                       reason: Option<String>,
                       plan: Option<model::Plan>| {
        Execution::Finished(Box::new(JobResult {
            v: SCHEMA_VERSION,
            job: job.clone(),
            outcome,
            exit_code,
            started_at_ms,
            finished_at_ms: broker::now_ms(),
            duration_ms: clock.elapsed().as_millis() as u64,
            output,
            truncated,
            runner: runner.clone(),
            reason,
            plan,
            tests: None,
        }))
    };
    let finish = |outcome: Outcome,
                  exit_code: Option<i32>,
                  output: String,
                  truncated: bool,
                  reason: Option<String>| {
        finish_with(outcome, exit_code, output, truncated, reason, None)
    };
    let checkout = tokio::select! {
        checkout = workspace.checkout(&job) => checkout,
        _ = cancel.cancelled() => return Execution::Cancelled,
    };
    let dir = match checkout {
        Ok(checkout) => checkout.dir,
        Err(err) => {
            tracing::warn!(job = %job.id, "cannot prepare the checkout: {err}");
            return finish(
                Outcome::Error,
                None,
                format!("warren: {err}\n"),
                false,
                Some(err.to_string()),
            );
        }
    };
    // The repository's own files: untrusted, read sealed (see repo_files).
    // `.warren-test` only matters to a commit without a pipeline.
    let repo_files = tokio::task::spawn_blocking({
        let dir = dir.clone();
        let first_job = job.spec.is_none();
        move || {
            let config = RepoConfig::read(&dir)?;
            let command = if first_job && config.jobs.is_none() {
                repo_files::read_repo_file(&dir, REPO_COMMAND_FILE)?
            } else {
                None
            };
            Ok::<_, String>((config, command))
        }
    })
    .await
    .unwrap_or_else(|e| Err(format!("cannot read the repository's files: {e}")));
    let (repo_config, repo_command) = match repo_files {
        Ok(read) => read,
        Err(reason) => {
            tracing::warn!(job = %job.id, "{reason}");
            return finish(
                Outcome::Error,
                None,
                format!("warren: {reason}\n"),
                false,
                Some(reason),
            );
        }
    };
    // A commit's first job with a pipeline plans it and runs nothing.
    if job.spec.is_none() {
        if let Some(pipeline) = &repo_config.jobs {
            let plan = pipeline.for_branch(&job.branch);
            let output = plan_output(&job, &runner, pipeline, plan.as_ref());
            if let Ok(mut live) = live.lock() {
                live.extend_from_slice(output.as_bytes());
            }
            tracing::info!(job = %job.id, jobs = plan.as_ref().map_or(0, |p| p.jobs.len()), "planned the pipeline");
            return finish_with(Outcome::Passed, None, output, false, None, plan);
        }
    }
    let sandbox = if repo_config.network {
        sandbox
    } else if sandbox.kind == model::Sandbox::Off {
        // Never run a job with more access than it asked for.
        let reason = format!(
            "{REPO_CONFIG_FILE}: network: false needs a runner with a sandbox (this one runs jobs without one)"
        );
        tracing::warn!(job = %job.id, "{reason}");
        return finish(
            Outcome::Error,
            None,
            format!("warren: {reason}\n"),
            false,
            Some(reason),
        );
    } else {
        sandbox.without_network()
    };
    let env = scrubbed_env(&job.commit, &job.branch);
    let mut timeout = config.job_timeout;
    let mut notes = String::new();
    // What `sh -c` runs: the command, after a pipeline job's variables.
    let mut script = None;
    let command = match &job.spec {
        // A job of a pipeline: its own command, variables and timeout.
        Some(spec) => {
            let mut variables: Vec<(String, String)> = spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .chain(spec.matrix_env().map(|(k, v)| (k, v.to_string())))
                .collect();
            if matches!(spec.split, Some(SplitPart::Batch { .. })) {
                // Where the batch's command writes its JUnit report: in
                // the checkout, the one place the runner reads back. A
                // report the commit itself carries is removed first.
                let _ = std::fs::remove_file(dir.join(JUNIT_REPORT_FILE));
                let inside = match sandbox.kind {
                    model::Sandbox::Bwrap => Path::new(sandbox::CHECKOUT).join(JUNIT_REPORT_FILE),
                    model::Sandbox::Off => dir.join(JUNIT_REPORT_FILE),
                };
                variables.push(("WARREN_JUNIT".into(), inside.display().to_string()));
            }
            match exporting(&variables, &spec.run) {
                Ok(text) => script = Some(text),
                Err(reason) => {
                    return finish(
                        Outcome::Error,
                        None,
                        format!("warren: {reason}\n"),
                        false,
                        Some(reason),
                    )
                }
            }
            if !variables.is_empty() {
                let listed: Vec<String> =
                    variables.iter().map(|(k, v)| format!("{k}={v}")).collect();
                notes.push_str(&format!("warren: with {}\n", listed.join(" ")));
            }
            if let Some(ms) = spec.timeout_ms {
                let asked = Duration::from_millis(ms);
                if asked > config.job_timeout {
                    notes.push_str(&format!(
                        "warren: the job's timeout of {} s is capped at this runner's --job-timeout of {} s\n",
                        asked.as_secs_f64(),
                        config.job_timeout.as_secs_f64()
                    ));
                } else {
                    timeout = asked;
                }
            }
            spec.run.clone()
        }
        None => match repo_command {
            Some(text) if !text.trim().is_empty() => text.trim().to_string(),
            _ => config
                .test_command
                .clone()
                .unwrap_or_else(|| DEFAULT_TEST_COMMAND.to_string()),
        },
    };
    let isolation = match sandbox.kind {
        model::Sandbox::Off => "no sandbox".to_string(),
        model::Sandbox::Bwrap => format!(
            "sandbox bwrap, network {}{}, in {}",
            match sandbox.network() {
                Network::Host => "host",
                Network::None => "none",
            },
            if repo_config.network {
                ""
            } else {
                " (network: false in .warren.yml)"
            },
            sandbox::CHECKOUT
        ),
    };
    let named = match &job.spec {
        Some(spec) => format!(" job {:?}", spec.name),
        None => String::new(),
    };
    let header = format!(
        "warren: testing {} ({}){named} on {} ({isolation})\n{notes}warren: $ {}\n",
        job.commit, job.branch, runner.id, command
    );
    // Watchers see the same header the recorded log starts with.
    if let Ok(mut live) = live.lock() {
        live.extend_from_slice(header.as_bytes());
    }
    let cgroup = {
        let limits = limits.clone();
        tokio::task::spawn_blocking(move || limits.job())
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
    };
    let mut cgroup = match cgroup {
        Ok(cgroup) => cgroup,
        Err(err) => {
            // Never run a job with less than the limits the runner has.
            let reason = format!("cannot make the job's cgroup: {err}");
            return finish(
                Outcome::Error,
                None,
                format!("{header}warren: {reason}\n"),
                false,
                Some(reason),
            );
        }
    };
    let launch = Launch {
        wrapper: sandbox.wrapper(&dir, true),
        status_pipe: sandbox.kind == model::Sandbox::Bwrap,
        cgroup_procs: cgroup.procs.iter().map(|fd| fd.as_raw_fd()).collect(),
        address_space: limits.rlimit_as(),
    };
    let ran = run_test_with(
        &config.supervisor,
        script.as_deref().unwrap_or(&command),
        &dir,
        &env,
        timeout,
        config.output_cap,
        &live,
        &cancel,
        &launch,
    )
    .await;
    let out_of_memory = cgroup.out_of_memory();
    let _ = tokio::task::spawn_blocking(move || cgroup.remove()).await;
    match ran {
        Err(err) => {
            let reason = format!("cannot start the test command: {err}");
            finish(
                Outcome::Error,
                None,
                format!("{header}warren: {reason}\n"),
                false,
                Some(reason),
            )
        }
        Ok(run) => {
            tracing::debug!(job = %job.id, test_ms = millis(run.duration), "test timings");
            let output = format!("{header}{}", run.output);
            let sandbox_failed = matches!(run.ending, Ending::Exited(_))
                && run
                    .sandbox_status
                    .as_deref()
                    .is_some_and(|status| !sandbox::ran_to_the_end(status));
            if sandbox_failed && !out_of_memory {
                // bubblewrap ended before the test did, or never started it:
                // the job did not run in the sandbox this runner advertises.
                let said = run
                    .output
                    .lines()
                    .rev()
                    .find(|line| line.starts_with("bwrap:"))
                    .unwrap_or("no message from bwrap")
                    .to_string();
                let reason = format!("the sandbox (bwrap) could not be set up: {said}");
                tracing::warn!(job = %job.id, "{reason}");
                let output = format!("{output}\nwarren: {reason}\n");
                return finish(Outcome::Error, None, output, run.truncated, Some(reason));
            }
            let memory_reason = out_of_memory.then(|| {
                format!(
                    "the job went over its memory limit (--job-memory {} bytes) and was killed",
                    limits.memory.unwrap_or(0)
                )
            });
            let with_memory_note = |output: String| match &memory_reason {
                Some(reason) => format!("{output}\nwarren: {reason}\n"),
                None => output,
            };
            let mut execution = match run.ending {
                Ending::Cancelled => Execution::Cancelled,
                Ending::Exited(Some(0)) => {
                    finish(Outcome::Passed, Some(0), output, run.truncated, None)
                }
                Ending::Exited(Some(code)) => finish(
                    Outcome::Failed,
                    Some(code),
                    with_memory_note(output),
                    run.truncated,
                    memory_reason.clone(),
                ),
                Ending::Exited(None) => finish(
                    Outcome::Failed,
                    None,
                    with_memory_note(output),
                    run.truncated,
                    Some(
                        memory_reason
                            .clone()
                            .unwrap_or_else(|| "the test was killed by a signal".into()),
                    ),
                ),
                Ending::TimedOut => {
                    let reason = format!(
                        "exceeded the job timeout of {} s; its process group was killed",
                        timeout.as_secs_f64()
                    );
                    let output = format!("{output}\nwarren: {reason}\n");
                    finish(Outcome::Timeout, None, output, run.truncated, Some(reason))
                }
            };
            if let (Execution::Finished(result), Some(part)) = (
                &mut execution,
                job.spec.as_ref().and_then(|s| s.split.as_ref()),
            ) {
                report_tests(result, part, &dir, &run.output).await;
            }
            execution
        }
    }
}

/// The file in the checkout a split batch's command writes its JUnit
/// report to (`$WARREN_JUNIT`).
const JUNIT_REPORT_FILE: &str = ".warren-junit.xml";

/// A split job's tests on its result (issue 18): a list job's ids (none
/// is an `error`), or a batch's outcomes from its JUnit report, else its
/// time spread over its tests. A batch whose command failed though its
/// report shows no failed test (it crashed between tests) counts every
/// test failed, so each is retried alone.
async fn report_tests(result: &mut JobResult, part: &SplitPart, dir: &Path, output: &str) {
    match part {
        SplitPart::List { .. } if result.outcome == Outcome::Passed => {
            let tests = model::split::parse_listing(output);
            if tests.is_empty() {
                let reason = "the listing printed no test ids".to_string();
                result.output.push_str(&format!("\nwarren: {reason}\n"));
                result.outcome = Outcome::Error;
                result.reason = Some(reason);
            } else {
                result
                    .output
                    .push_str(&format!("\nwarren: listed {} tests\n", tests.len()));
                result.tests = Some(TestsReport::Listed { tests });
            }
        }
        SplitPart::Batch { tests, .. } => {
            let passed = result.outcome == Outcome::Passed;
            let read = tokio::task::spawn_blocking({
                let dir = dir.to_path_buf();
                move || {
                    repo_files::read_repo_file_up_to(
                        &dir,
                        JUNIT_REPORT_FILE,
                        junit::MAX_REPORT_BYTES as u64,
                    )
                }
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            let (mut outcomes, note) = match read {
                Ok(Some(text)) => match junit::parse(&text) {
                    Ok(cases) => (junit::outcomes(tests, &cases), "from its JUnit report"),
                    Err(err) => {
                        result.output.push_str(&format!("\nwarren: {err}\n"));
                        (
                            model::split::spread(tests, result.duration_ms, passed),
                            "spread over its tests (unreadable report)",
                        )
                    }
                },
                Ok(None) | Err(_) => (
                    model::split::spread(tests, result.duration_ms, passed),
                    "spread over its tests (no JUnit report)",
                ),
            };
            if !passed && outcomes.iter().all(|o| o.status != TestStatus::Failed) {
                outcomes = model::split::spread(tests, result.duration_ms, false);
            }
            result.output.push_str(&format!(
                "\nwarren: {} tests, results {note}\n",
                outcomes.len()
            ));
            result.tests = Some(TestsReport::Ran { outcomes });
        }
        _ => {}
    }
}

/// `run` after `export NAME='value'` lines for a pipeline job's variables
/// (`env` and `MATRIX_*`). They are set by the job's shell, not put in the
/// environment the runner starts the supervisor with: that environment is
/// also the supervisor's and the sandbox's (bubblewrap), which run outside
/// the sandbox, so a repository's `LD_PRELOAD: ./evil.so` there would run
/// its code outside the sandbox. Err: a name that is not a variable name
/// (the model refuses those; checked again here as it is quoted unescaped).
fn exporting(variables: &[(String, String)], run: &str) -> Result<String, String> {
    let mut script = String::new();
    for (name, value) in variables {
        if !model::pipeline::is_env_name(name) || value.contains('\0') {
            return Err(format!("the job's variable {name:?} cannot be set"));
        }
        let quoted = value.replace('\'', "'\\''");
        script.push_str(&format!("export {name}='{quoted}'\n"));
    }
    script.push_str(run);
    Ok(script)
}

/// What a planning job prints: the jobs it planned, one a line, and those
/// `branches` left out.
fn plan_output(
    job: &Job,
    runner: &RunnerInfo,
    pipeline: &pipeline::Pipeline,
    plan: Option<&model::Plan>,
) -> String {
    use std::fmt::Write;
    let mut out = format!(
        "warren: planning {} ({}) on {}: the jobs of {REPO_CONFIG_FILE}\n",
        job.commit, job.branch, runner.id
    );
    let planned: Vec<&model::JobSpec> = plan.map(|p| p.jobs.iter().collect()).unwrap_or_default();
    for spec in &planned {
        let _ = write!(
            out,
            "warren: job {:?} on queue {}",
            spec.name,
            spec.queue.as_str()
        );
        if !spec.needs.is_empty() {
            let needs: Vec<String> = spec.needs.iter().map(|n| format!("{n:?}")).collect();
            let _ = write!(out, ", needs {}", needs.join(", "));
        }
        if spec.allow_failure {
            out.push_str(", allowed to fail");
        }
        out.push('\n');
    }
    let left_out: Vec<String> = pipeline
        .job_names()
        .filter(|name| !planned.iter().any(|spec| spec.name == *name))
        .map(|name| format!("{name:?}"))
        .collect();
    if !left_out.is_empty() {
        let _ = writeln!(
            out,
            "warren: left out on branch {} (branches): {}",
            job.branch,
            left_out.join(", ")
        );
    }
    if planned.is_empty() {
        let _ = writeln!(
            out,
            "warren: no job of {REPO_CONFIG_FILE} runs on branch {}: nothing to do",
            job.branch
        );
    } else {
        let _ = writeln!(out, "warren: {} jobs planned", planned.len());
    }
    out
}

/// The most output one heartbeat carries; the rest goes with the next.
const LIVE_OUTPUT_CHUNK: usize = 64 * 1024;

/// Sends a heartbeat every `every`, naming the current job if any, with
/// what its test printed since the last heartbeat that was confirmed.
async fn send_heartbeats(
    transport: Arc<dyn Transport>,
    runner: RunnerInfo,
    current: SharedCurrent,
    every: Duration,
    max_message_bytes: usize,
    stopping: CancellationToken,
) {
    let chunk_max = LIVE_OUTPUT_CHUNK.min(max_message_bytes / 2).max(1);
    let exchange = transport.names().events_exchange();
    // The job whose output is being sent, and how many bytes of it went.
    let mut sent: Option<(JobId, usize)> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopping.cancelled() => return,
            _ = tick.tick() => {}
        }
        let running = current
            .lock()
            .ok()
            .and_then(|guard| guard.as_ref().map(|c| (c.job_id.clone(), c.output.clone())));
        let mut next_sent = None;
        let output = running.as_ref().and_then(|(job_id, live)| {
            let from = match &sent {
                Some((sent_job, bytes)) if sent_job == job_id => *bytes,
                _ => 0,
            };
            let (consumed, text) = live
                .lock()
                .ok()
                .and_then(|bytes| next_chunk(&bytes, from, chunk_max))?;
            next_sent = Some((job_id.clone(), from + consumed));
            Some(OutputChunk {
                offset: from as u64,
                text,
            })
        });
        let beat = Event::Heartbeat {
            v: SCHEMA_VERSION,
            runner: runner.clone(),
            job_id: running.map(|(job_id, _)| job_id),
            at_ms: broker::now_ms(),
            output,
        };
        let published = tokio::select! {
            _ = stopping.cancelled() => return,
            published = transport.publish(&exchange, beat.routing_key(), &beat) => published,
        };
        match published {
            Ok(()) => {
                if next_sent.is_some() {
                    sent = next_sent;
                }
            }
            Err(err) => tracing::debug!("heartbeat not sent: {err}"),
        }
    }
}

/// The output after byte `from`, at most `max` bytes of it, as text: the
/// bytes taken and the text. A character cut in two at the end is held
/// back for the next piece. None when there is nothing new.
fn next_chunk(output: &[u8], from: usize, max: usize) -> Option<(usize, String)> {
    let end = output.len().min(from.saturating_add(max));
    let mut piece = output.get(from..end).filter(|p| !p.is_empty())?;
    if let Err(e) = std::str::from_utf8(piece) {
        if e.error_len().is_none() {
            if e.valid_up_to() == 0 {
                return None;
            }
            piece = &piece[..e.valid_up_to()];
        }
    }
    Some((piece.len(), String::from_utf8_lossy(piece).into_owned()))
}

/// Stops the current job when the dispatcher says its result is recorded.
async fn watch_control(
    mut control: Deliveries,
    max_bytes: usize,
    current: SharedCurrent,
    me: RunnerId,
    stopping: CancellationToken,
) {
    loop {
        let delivery = tokio::select! {
            _ = stopping.cancelled() => return,
            next = control.next() => match next {
                Some(Ok(delivery)) => delivery,
                // The control queue's consumer is gone (the connection or
                // the channel closed, or the queue was deleted).
                _ => return,
            },
        };
        let message = Incoming::<Control>::decode(&delivery, max_bytes);
        ack(delivery).await;
        if let Incoming::Refused(reason) = &message {
            // Every runner got a copy; the dispatcher dead-letters its own.
            tracing::warn!(%reason, "refused a malformed control message; dropping it");
            continue;
        }
        match message {
            Incoming::Valid(Control::Cancel {
                job_id,
                except_runner,
                reason,
                ..
            }) => {
                if except_runner.as_ref() == Some(&me) {
                    continue;
                }
                if let Ok(guard) = current.lock() {
                    if let Some(running) = guard.as_ref().filter(|c| c.job_id == job_id) {
                        tracing::info!(job = %job_id, %reason, "told to stop the job");
                        running.cancel.cancel();
                    }
                }
            }
            Incoming::Refused(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker::memory::{MemoryBroker, MemoryTransport, PublishFault};
    use broker::topology::Topology;
    use broker::Names;
    use tokio::sync::{mpsc, oneshot};

    /// Deadline for every wait: far above what any step takes.
    const WITHIN: Duration = Duration::from_secs(10);

    /// Jobs whose ending each test decides.
    struct Script {
        runs: mpsc::UnboundedSender<Run>,
        count: std::sync::atomic::AtomicUsize,
    }

    /// One execution in progress.
    struct Run {
        job: Job,
        live: LiveOutput,
        cancel: CancellationToken,
        finish: oneshot::Sender<Outcome>,
    }

    impl Run {
        fn print(&self, text: &str) {
            self.live
                .lock()
                .expect("live output")
                .extend_from_slice(text.as_bytes());
        }
    }

    impl Execute for Script {
        fn execute(
            &self,
            job: Job,
            runner: RunnerInfo,
            started_at_ms: u64,
            live: LiveOutput,
            cancel: CancellationToken,
        ) -> BoxFuture<'static, Execution> {
            self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (finish, finished) = oneshot::channel();
            let _ = self.runs.send(Run {
                job: job.clone(),
                live,
                cancel: cancel.clone(),
                finish,
            });
            Box::pin(async move {
                let outcome = tokio::select! {
                    outcome = finished => outcome.ok(),
                    _ = cancel.cancelled() => None,
                };
                let Some(outcome) = outcome else {
                    cancel.cancelled().await;
                    return Execution::Cancelled;
                };
                Execution::Finished(Box::new(JobResult {
                    v: SCHEMA_VERSION,
                    job,
                    outcome,
                    exit_code: None,
                    started_at_ms,
                    finished_at_ms: broker::now_ms(),
                    duration_ms: 0,
                    output: "scripted\n".into(),
                    truncated: false,
                    runner,
                    reason: None,
                    plan: None,
                    tests: None,
                }))
            })
        }
    }

    /// A runner on an in-memory broker, with scripted jobs.
    struct Harness {
        broker: MemoryBroker,
        names: Names,
        /// The test's own connection, to publish jobs and control messages.
        client: MemoryTransport,
        runs: mpsc::UnboundedReceiver<Run>,
        script: Arc<Script>,
        shutdown: CancellationToken,
        runner: tokio::task::JoinHandle<anyhow::Result<()>>,
    }

    impl Harness {
        fn start() -> Harness {
            Harness::start_with(model::Sandbox::Off)
        }

        fn start_with(sandbox: model::Sandbox) -> Harness {
            Harness::start_serving(sandbox, &[])
        }

        /// A runner serving `queues` (none: `default`).
        fn start_serving(sandbox: model::Sandbox, queues: &[&str]) -> Harness {
            let names = Names::new("t");
            let config = RunnerConfig {
                broker: BrokerConfig {
                    urls: vec!["amqp://unused".into()],
                    quorum_size: None,
                    names: names.clone(),
                    settings: Default::default(),
                    max_message_bytes: broker::message::DEFAULT_MAX_MESSAGE_BYTES,
                },
                workdir: PathBuf::from("/nonexistent"),
                test_command: None,
                job_timeout: Duration::from_secs(60),
                id: RunnerId::parse("r1").expect("id"),
                heartbeat: Duration::from_millis(10),
                output_cap: DEFAULT_OUTPUT_CAP,
                grace: Duration::from_millis(50),
                supervisor: PathBuf::from("/nonexistent"),
                git_timeout: Duration::from_secs(60),
                isolation: Isolation::default(),
                queues: queues
                    .iter()
                    .map(|q| QueueName::parse(q).expect("a queue name"))
                    .collect(),
            };
            let broker = MemoryBroker::new(&names, &Topology::new(&names, config.broker.settings))
                .expect("memory broker");
            let (runs_sender, runs) = mpsc::unbounded_channel();
            let script = Arc::new(Script {
                runs: runs_sender,
                count: Default::default(),
            });
            let shutdown = CancellationToken::new();
            let runner = tokio::spawn({
                let (broker, script, shutdown) = (broker.clone(), script.clone(), shutdown.clone());
                async move {
                    Runner::new(config, script)
                        .with_sandbox(sandbox)
                        .run(&broker, shutdown)
                        .await
                }
            });
            Harness {
                client: broker.open("test-client").expect("client"),
                broker,
                names,
                runs,
                script,
                shutdown,
                runner,
            }
        }

        fn transport(&self) -> &dyn Transport {
            &self.client
        }

        async fn queue_job(&self, commit: char) -> Job {
            let job =
                Job::try_new("/srv/repo", "main", &commit.to_string().repeat(40)).expect("job");
            self.transport()
                .publish(&self.names.jobs_exchange(), "", &job)
                .await
                .expect("queued");
            job
        }

        async fn next_run(&mut self) -> Run {
            tokio::time::timeout(WITHIN, self.runs.recv())
                .await
                .expect("a job starts in time")
                .expect("the runner is running")
        }

        fn executions(&self) -> usize {
            self.script.count.load(std::sync::atomic::Ordering::SeqCst)
        }

        async fn wait<T>(&self, what: &str, check: impl FnMut(&MemoryBroker) -> Option<T>) -> T {
            self.broker
                .wait_for(WITHIN, check)
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        }

        /// Results published so far (left in their queue).
        fn results(&self) -> Vec<JobResult> {
            self.broker
                .ready(&self.names.dispatcher_results_queue())
                .iter()
                .map(|m| broker::message::decode(&m.body, usize::MAX).expect("a result"))
                .collect()
        }

        fn events(&self) -> Vec<Event> {
            self.broker
                .ready(&self.names.dispatcher_events_queue())
                .iter()
                .map(|m| broker::message::decode(&m.body, usize::MAX).expect("an event"))
                .collect()
        }

        /// How many times the job was returned before each ack of it.
        fn acks_of_work(&self) -> Vec<u32> {
            self.broker
                .acked(&self.names.work_queue())
                .iter()
                .map(|a| a.message.returns)
                .collect()
        }

        /// The work queue has nothing ready and nothing unacked.
        async fn wait_work_queue_drained(&self) {
            let queue = self.names.work_queue();
            self.wait("the work queue to be drained", |b| {
                let counts = b.counts(&queue);
                (counts.ready == 0 && counts.unacked == 0).then_some(())
            })
            .await;
        }

        /// Waits until a connection of the runner's `session` is open.
        async fn wait_session(&self, session: u32) {
            let suffix = format!("-{session}");
            self.wait("the runner's session", |b| {
                b.connections()
                    .iter()
                    .any(|c| c.starts_with("warren-runner-r1-") && c.ends_with(&suffix))
                    .then_some(())
            })
            .await;
        }

        async fn stop(self) {
            self.shutdown.cancel();
            tokio::time::timeout(WITHIN, self.runner)
                .await
                .expect("the runner stops in time")
                .expect("the runner's task")
                .expect("the runner ends cleanly");
        }
    }

    #[tokio::test]
    async fn a_job_is_announced_run_and_acked_after_its_result_is_confirmed() {
        let mut h = Harness::start();
        let job = h.queue_job('a').await;
        let run = h.next_run().await;
        assert_eq!(run.job, job);
        let started = h
            .wait("the started event", |_| {
                h.events().into_iter().find_map(|e| match e {
                    Event::Started { job, runner, .. } => Some((job, runner)),
                    _ => None,
                })
            })
            .await;
        assert_eq!(started.0, job);
        assert!(
            h.broker.connections().contains(&started.1.connection),
            "the event names the runner's connection"
        );
        assert_eq!(h.broker.counts(&h.names.work_queue()).unacked, 1);
        run.finish.send(Outcome::Passed).expect("finish");
        h.wait_work_queue_drained().await;
        let results = h.results();
        assert_eq!(results.len(), 1);
        assert_eq!(
            (&results[0].job, results[0].outcome),
            (&job, Outcome::Passed)
        );
        let result_published = h.broker.ready(&h.names.dispatcher_results_queue())[0].published;
        let acks = h.broker.acked(&h.names.work_queue());
        assert_eq!(acks.len(), 1);
        assert!(
            result_published < acks[0].at,
            "the result was confirmed before the ack"
        );
        // The runner takes the next job.
        let next = h.queue_job('b').await;
        assert_eq!(h.next_run().await.job, next);
        h.stop().await;
    }

    #[tokio::test]
    async fn every_event_and_result_says_how_the_runner_isolates_jobs() {
        for sandbox in [model::Sandbox::Bwrap, model::Sandbox::Off] {
            let mut h = Harness::start_with(sandbox);
            h.queue_job('a').await;
            let run = h.next_run().await;
            h.wait("a heartbeat", |_| {
                h.events()
                    .iter()
                    .any(|e| matches!(e, Event::Heartbeat { .. }))
                    .then_some(())
            })
            .await;
            run.finish.send(Outcome::Passed).expect("finish");
            h.wait_work_queue_drained().await;
            for event in h.events() {
                let (Event::Started { runner, .. } | Event::Heartbeat { runner, .. }) = event;
                assert_eq!(runner.sandbox, sandbox);
            }
            let results = h.results();
            assert_eq!(results.len(), 1);
            assert_eq!(results[0].runner.sandbox, sandbox);
            h.stop().await;
        }
    }

    /// Publishes a job to the work queue of `queue` (declared if need be),
    /// as the dispatcher does: the default exchange, the queue's name.
    async fn queue_job_on(h: &Harness, queue: &str, commit: char) -> Job {
        let queue = QueueName::parse(queue).expect("a queue name");
        let name = h
            .transport()
            .declare_work_queue(&queue)
            .await
            .expect("declared");
        let job = Job::try_new("/srv/repo", "main", &commit.to_string().repeat(40)).expect("job");
        h.transport()
            .publish("", &name, &job)
            .await
            .expect("queued");
        job
    }

    #[tokio::test]
    async fn a_runner_of_several_queues_takes_jobs_in_turn_and_never_holds_one_it_is_not_running() {
        let mut h = Harness::start_serving(model::Sandbox::Off, &["default", "gpu"]);
        h.wait_session(1).await;
        let (default, gpu) = (h.names.work_queue(), "t.jobs.gpu".to_string());
        h.wait("the runner to declare the gpu queue", |b| {
            b.queues().contains(&gpu).then_some(())
        })
        .await;
        // Queued without yielding: the runner's next round sees all three.
        let a = queue_job_on(&h, "default", 'a').await;
        let b = queue_job_on(&h, "gpu", 'b').await;
        let c = queue_job_on(&h, "gpu", 'c').await;
        // Round robin, from the queue after the last job's: a, b, then the
        // default queue is empty and c.
        for expected in [&a, &b, &c] {
            let run = h.next_run().await;
            assert_eq!(&run.job, expected);
            let (d, g) = (h.broker.counts(&default), h.broker.counts(&gpu));
            assert_eq!(d.unacked + g.unacked, 1, "holds only the job it runs");
            assert_eq!(d.consumers + g.consumers, 0, "polls, never consumes");
            run.finish.send(Outcome::Passed).expect("finish");
            let done = h.results().len() + 1;
            h.wait("the result", |_| (h.results().len() == done).then_some(()))
                .await;
        }
        for queue in [&default, &gpu] {
            h.wait("the queues to be drained", |b| {
                let counts = b.counts(queue);
                (counts.ready == 0 && counts.unacked == 0).then_some(())
            })
            .await;
            assert!(
                h.broker
                    .acked(queue)
                    .iter()
                    .all(|acked| acked.message.returns == 0),
                "nothing handed back"
            );
        }
        assert_eq!(h.executions(), 3);
        let served: Vec<String> = h.results()[0]
            .runner
            .queues
            .iter()
            .map(|q| q.to_string())
            .collect();
        assert_eq!(served, ["default", "gpu"], "results say what it serves");
        assert!(h.events().iter().all(|e| {
            let (Event::Started { runner, .. } | Event::Heartbeat { runner, .. }) = e;
            runner.queues.len() == 2
        }));
        h.stop().await;
    }

    #[tokio::test]
    async fn a_runner_of_the_gpu_queue_never_takes_a_default_job() {
        let mut h = Harness::start_serving(model::Sandbox::Off, &["gpu"]);
        h.wait_session(1).await;
        let gpu = "t.jobs.gpu".to_string();
        h.wait("the runner to consume the gpu queue", |b| {
            (b.counts(&gpu).consumers == 1).then_some(())
        })
        .await;
        let default_job = h.queue_job('a').await;
        let gpu_job = queue_job_on(&h, "gpu", 'b').await;
        let run = h.next_run().await;
        assert_eq!(run.job, gpu_job);
        run.finish.send(Outcome::Passed).expect("finish");
        h.wait("the gpu queue to be drained", |b| {
            let counts = b.counts(&gpu);
            (counts.ready == 0 && counts.unacked == 0).then_some(())
        })
        .await;
        let waiting = h.broker.counts(&h.names.work_queue());
        assert_eq!(
            (waiting.ready, waiting.unacked, waiting.consumers),
            (1, 0, 0)
        );
        assert_eq!(
            broker::message::decode::<Job>(
                &h.broker.ready(&h.names.work_queue())[0].body,
                usize::MAX
            )
            .expect("job"),
            default_job
        );
        assert_eq!(h.executions(), 1);
        let served: Vec<String> = h.results()[0]
            .runner
            .queues
            .iter()
            .map(|q| q.to_string())
            .collect();
        assert_eq!(served, ["gpu"]);
        h.stop().await;
    }

    #[tokio::test]
    async fn a_nacked_result_is_kept_delivered_next_session_and_its_job_not_run_again() {
        let mut h = Harness::start();
        h.queue_job('a').await;
        let run = h.next_run().await;
        h.broker
            .fail_publish(&h.names.results_exchange(), 0, PublishFault::Nacked);
        run.finish.send(Outcome::Failed).expect("finish");
        // Not acked over a refused result: the session ends, the job goes
        // back, the next session delivers the result first and acks the
        // redelivered job unrun.
        h.wait_session(2).await;
        h.wait_work_queue_drained().await;
        let results = h.results();
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].outcome, Outcome::Failed);
        assert_eq!(h.executions(), 1, "run once");
        assert_eq!(
            h.acks_of_work(),
            [1],
            "acked only once back, never over the nack"
        );
        h.stop().await;
    }

    #[tokio::test]
    async fn a_result_confirmed_before_a_lost_ack_is_not_run_again() {
        let mut h = Harness::start();
        h.queue_job('a').await;
        let run = h.next_run().await;
        h.broker.drop_connection_at_next_ack(&h.names.work_queue());
        run.finish.send(Outcome::Passed).expect("finish");
        h.wait_session(2).await;
        h.wait_work_queue_drained().await;
        assert_eq!(h.results().len(), 1);
        assert_eq!(h.executions(), 1, "the redelivered job was acked unrun");
        assert_eq!(h.acks_of_work(), [1]);
        h.stop().await;
    }

    #[tokio::test]
    async fn a_result_is_kept_while_the_broker_is_away_and_delivered_when_it_returns() {
        let mut h = Harness::start();
        h.queue_job('a').await;
        let run = h.next_run().await;
        h.broker.stop();
        run.finish.send(Outcome::Passed).expect("finish");
        assert!(h.results().is_empty());
        h.broker.start();
        h.wait_session(2).await;
        h.wait("the kept result", |_| {
            (h.results().len() == 1).then_some(())
        })
        .await;
        h.wait_work_queue_drained().await;
        assert_eq!(h.results().len(), 1);
        assert_eq!(h.executions(), 1);
        assert_eq!(h.acks_of_work(), [1]);
        h.stop().await;
    }

    #[tokio::test]
    async fn heartbeats_carry_the_running_jobs_new_output() {
        let mut h = Harness::start();
        let job = h.queue_job('a').await;
        let run = h.next_run().await;
        let output_of = |h: &Harness| -> Vec<OutputChunk> {
            h.events()
                .into_iter()
                .filter_map(|e| match e {
                    Event::Heartbeat {
                        job_id: Some(id),
                        output: Some(output),
                        ..
                    } if id == job.id => Some(output),
                    _ => None,
                })
                .collect()
        };
        run.print("hello\n");
        h.wait("the first output", |_| {
            (!output_of(&h).is_empty()).then_some(())
        })
        .await;
        run.print("world\n");
        h.wait("the second output", |_| {
            (output_of(&h).len() == 2).then_some(())
        })
        .await;
        let chunks: Vec<(u64, String)> = output_of(&h)
            .into_iter()
            .map(|c| (c.offset, c.text))
            .collect();
        assert_eq!(chunks, [(0, "hello\n".into()), (6, "world\n".into())]);
        run.finish.send(Outcome::Passed).expect("finish");
        h.wait_work_queue_drained().await;
        h.stop().await;
    }

    #[tokio::test]
    async fn a_cancel_stops_the_job_which_is_acked_without_a_result_unless_it_spares_this_runner() {
        let mut h = Harness::start();
        let job = h.queue_job('a').await;
        let run = h.next_run().await;
        let cancel = |job_id: &JobId, except_runner: Option<&str>| Control::Cancel {
            v: SCHEMA_VERSION,
            job_id: job_id.clone(),
            except_runner: except_runner.map(|r| RunnerId::parse(r).expect("id")),
            reason: "recorded elsewhere".into(),
        };
        let control = h.names.control_exchange();
        h.transport()
            .publish(&control, "", &cancel(&job.id, Some("r1")))
            .await
            .expect("published");
        // Then one for another job: once the runner acked that, it has
        // acted on the first (one task takes them in order).
        let other = Job::try_new("/srv/repo", "main", &"f".repeat(40)).expect("job");
        h.transport()
            .publish(&control, "", &cancel(&other.id, None))
            .await
            .expect("published");
        h.wait("the control messages to be handled", |b| {
            let private: Vec<_> = b
                .queues()
                .into_iter()
                .filter(|q| q.starts_with("amq.gen-"))
                .map(|q| b.counts(&q))
                .collect();
            let handled = broker::memory::QueueCounts {
                ready: 0,
                unacked: 0,
                consumers: 1,
            };
            (private == [handled]).then_some(())
        })
        .await;
        assert!(
            !run.cancel.is_cancelled(),
            "a cancel that spares this runner"
        );
        h.transport()
            .publish(&control, "", &cancel(&job.id, None))
            .await
            .expect("published");
        tokio::time::timeout(WITHIN, run.cancel.cancelled())
            .await
            .expect("the job is told to stop");
        h.wait_work_queue_drained().await;
        assert!(h.results().is_empty(), "no result for a cancelled job");
        assert_eq!(h.acks_of_work(), [0], "acked");
        let next = h.queue_job('b').await;
        assert_eq!(h.next_run().await.job, next);
        h.stop().await;
    }

    #[tokio::test]
    async fn a_malformed_job_is_dropped_not_dead_lettered_and_the_next_one_runs() {
        let mut h = Harness::start();
        h.transport()
            .publish_raw(&h.names.jobs_exchange(), "", b"{not json", Vec::new())
            .await
            .expect("published");
        let job = h.queue_job('a').await;
        assert_eq!(h.next_run().await.job, job);
        assert_eq!(h.executions(), 1);
        // The dispatcher dead-letters its own copy; the runner only drops.
        assert!(h.broker.ready(&h.names.dead_letter_queue()).is_empty());
        assert_eq!(h.broker.counts(&h.names.work_queue()).unacked, 1);
        assert_eq!(h.broker.counts(&h.names.work_queue()).ready, 0);
        h.stop().await;
    }

    #[tokio::test]
    async fn a_job_still_running_past_the_grace_on_shutdown_is_stopped_and_handed_back() {
        let mut h = Harness::start();
        let job = h.queue_job('a').await;
        let run = h.next_run().await;
        h.shutdown.cancel();
        tokio::time::timeout(WITHIN, run.cancel.cancelled())
            .await
            .expect("stopped after the grace period");
        let queue = h.names.work_queue();
        let back = h
            .wait("the job back in the queue", |b| b.ready(&queue).pop())
            .await;
        assert_eq!(
            broker::message::decode::<Job>(&back.body, usize::MAX).expect("job"),
            job
        );
        assert_eq!(back.returns, 1);
        assert!(h.results().is_empty());
        h.stop().await;
    }

    #[tokio::test]
    async fn a_session_whose_control_queue_is_deleted_ends_and_the_next_subscribes_again() {
        let h = Harness::start();
        h.wait_session(1).await;
        let private = h
            .wait("the control queue", |b| {
                b.queues().into_iter().find(|q| q.starts_with("amq.gen-"))
            })
            .await;
        assert!(h.broker.delete_queue(&private));
        h.wait_session(2).await;
        let again = h
            .wait("a new control queue", |b| {
                b.queues().into_iter().find(|q| q.starts_with("amq.gen-"))
            })
            .await;
        assert_ne!(again, private);
        h.stop().await;
    }

    #[test]
    fn live_output_goes_in_pieces_that_never_split_a_character() {
        let output = "ab\u{e9}cd".as_bytes(); // é is two bytes: 2 and 3
        assert_eq!(next_chunk(output, 0, 100), Some((6, "ab\u{e9}cd".into())));
        // A piece that would end inside é stops before it.
        assert_eq!(next_chunk(output, 0, 3), Some((2, "ab".into())));
        assert_eq!(next_chunk(output, 2, 3), Some((3, "\u{e9}c".into())));
        assert_eq!(next_chunk(output, 2, 1), None);
        assert_eq!(next_chunk(output, 6, 100), None);
        assert_eq!(next_chunk(output, 60, 100), None);
        // Bytes that are not UTF-8 at all still move on.
        assert_eq!(next_chunk(b"a\xffb", 0, 10), Some((3, "a\u{fffd}b".into())));
    }

    #[test]
    fn results_are_shrunk_to_fit_the_message_cap() {
        let runner = RunnerInfo {
            id: RunnerId::parse("r").expect("id"),
            host: "h".into(),
            connection: "c".into(),
            sandbox: Default::default(),
            queues: Vec::new(),
        };
        let mut result = JobResult {
            v: SCHEMA_VERSION,
            job: Job::try_new("/r", "main", &"a".repeat(40)).expect("a valid job"),
            outcome: Outcome::Passed,
            exit_code: Some(0),
            started_at_ms: 0,
            finished_at_ms: 0,
            duration_ms: 0,
            // Control characters: each becomes six bytes of JSON.
            output: "\u{1}é".repeat(200_000),
            truncated: false,
            runner,
            reason: None,
            plan: None,
            tests: None,
        };
        let cap = 256 * 1024;
        fit_to_cap(&mut result, cap);
        assert!(broker::message::encode(&result).len() <= cap);
        assert!(result.truncated);
        assert!(result.output.ends_with("cap]\n"));
    }

    /// Checks out and runs jobs for real, from a git repository in a
    /// temporary folder, under a stand-in for `warren supervise` (the
    /// `warren` binary is not built with this crate).
    struct Real {
        repo: tempfile::TempDir,
        head: String,
        _work: tempfile::TempDir,
        config: RunnerConfig,
        workspace: Workspace,
    }

    /// Runs `supervise -- CMD...` as the supervisor would: CMD runs until
    /// it ends or the liveness pipe (fd 3) closes, which kills it.
    const FAKE_SUPERVISOR: &str = r#"#!/bin/sh
echo "supervisor sees FOO=${FOO-unset}"
shift 2
"$@" 3<&- &
child=$!
(cat <&3; kill -KILL "$child") >/dev/null 2>&1 &
exec 3<&-
wait "$child"
"#;

    impl Real {
        /// A repository whose one commit (on `main`) has `files`.
        async fn with(files: &[(&str, &str)]) -> Real {
            let repo = tempfile::tempdir().expect("tempdir");
            let git = git::Git::new(repo.path());
            git.run(&["init", "-q", "-b", "main"]).await.expect("init");
            for (name, text) in files {
                std::fs::write(repo.path().join(name), text).expect("write");
                git.run(&["add", name]).await.expect("add");
            }
            git.run(&[
                "-c",
                "user.name=T",
                "-c",
                "user.email=t@e",
                "commit",
                "-qm",
                "c",
            ])
            .await
            .expect("commit");
            let head = git.run(&["rev-parse", "HEAD"]).await.expect("head");
            let work = tempfile::tempdir().expect("tempdir");
            let supervisor = work.path().join("supervise");
            {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o755)
                    .open(&supervisor)
                    .expect("supervisor");
                file.write_all(FAKE_SUPERVISOR.as_bytes()).expect("write");
            }
            let config = RunnerConfig {
                broker: BrokerConfig {
                    urls: vec!["amqp://unused".into()],
                    quorum_size: None,
                    names: Names::new("t"),
                    settings: Default::default(),
                    max_message_bytes: broker::message::DEFAULT_MAX_MESSAGE_BYTES,
                },
                workdir: work.path().join("jobs"),
                test_command: Some("echo default command ran".into()),
                job_timeout: Duration::from_secs(20),
                id: RunnerId::parse("r1").expect("id"),
                heartbeat: Duration::from_secs(1),
                output_cap: DEFAULT_OUTPUT_CAP,
                grace: Duration::from_millis(50),
                supervisor,
                git_timeout: Duration::from_secs(60),
                isolation: Isolation::default(),
                queues: Vec::new(),
            };
            let workspace = Workspace::new(work.path().join("jobs"));
            Real {
                repo,
                head: head.trim().to_string(),
                _work: work,
                config,
                workspace,
            }
        }

        /// The commit's first job.
        fn first_job(&self, branch: &str) -> Job {
            Job::try_new(self.repo.path().to_str().expect("utf8"), branch, &self.head)
                .expect("a valid job")
        }

        async fn run(&self, job: Job) -> JobResult {
            let runner = RunnerInfo {
                id: self.config.id.clone(),
                host: "h".into(),
                connection: "c".into(),
                sandbox: Default::default(),
                queues: Vec::new(),
            };
            let execution = execute(
                job,
                self.config.clone(),
                self.workspace.clone(),
                JobSandbox::none(),
                Arc::new(Limits::unlimited()),
                runner,
                0,
                LiveOutput::default(),
                CancellationToken::new(),
            );
            match tokio::time::timeout(WITHIN, execution).await {
                Ok(Execution::Finished(result)) => *result,
                Ok(Execution::Cancelled) => panic!("cancelled"),
                Err(_) => panic!("the job did not end within {WITHIN:?}"),
            }
        }
    }

    const PIPELINE: &str = "network: false
jobs:
  lint:
    run: echo lint
  test:
    run: echo \"$MATRIX_TOOLCHAIN $MATRIX_FEATURES $FOO\"; echo \"$TRICKY\"
    needs: [lint]
    matrix:
      toolchain: [stable, beta]
      features: [all]
    env: {FOO: bar, TRICKY: \"it's $HOME `x`\"}
    timeout: 1h
    queue: linux-x86
  docs:
    run: make docs
    needs: [test]
    allow_failure: true
    branches: [main]
";

    #[tokio::test]
    async fn a_commits_first_job_with_a_pipeline_returns_the_plan_and_runs_nothing() {
        // network: false would be an error for a test on this runner
        // (no sandbox), but planning runs nothing.
        let real = Real::with(&[
            (REPO_CONFIG_FILE, PIPELINE),
            (REPO_COMMAND_FILE, "echo the test command ran"),
        ])
        .await;
        let result = real.run(real.first_job("main")).await;
        assert_eq!(result.outcome, Outcome::Passed, "{}", result.output);
        assert_eq!(result.reason, None);
        let plan = result.plan.clone().expect("a plan");
        let names: Vec<&str> = plan.jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(
            names,
            vec!["lint", "test (stable, all)", "test (beta, all)", "docs"]
        );
        assert!(!result.output.contains("ran"), "{}", result.output);
        for line in [
            "warren: job \"lint\" on queue default\n",
            "warren: job \"test (beta, all)\" on queue linux-x86, needs \"lint\"\n",
            "warren: job \"docs\" on queue default, needs \"test (stable, all)\", \"test (beta, all)\", allowed to fail\n",
            "warren: 4 jobs planned\n",
        ] {
            assert!(result.output.contains(line), "{line:?} in\n{}", result.output);
        }
        use model::Message as _;
        assert_eq!(result.validate(), Ok(()));

        let feature = real.run(real.first_job("feature")).await;
        assert_eq!(feature.plan.expect("a plan").jobs.len(), 3);
        assert!(feature
            .output
            .contains("warren: left out on branch feature (branches): \"docs\""));
    }

    #[tokio::test]
    async fn an_invalid_pipeline_is_an_error_naming_the_line_and_field_without_a_plan() {
        let text = "jobs:\n  lint:\n    run: echo lint\n    timeout: 10x\n";
        let real = Real::with(&[(REPO_CONFIG_FILE, text)]).await;
        let result = real.run(real.first_job("main")).await;
        assert_eq!(result.outcome, Outcome::Error);
        assert_eq!(result.plan, None);
        assert_eq!(
            result.reason.as_deref(),
            Some(".warren.yml is not valid: line 4: jobs.lint.timeout: \"10x\" is not a duration (such as 10m, 90s or 1h 30m)")
        );
    }

    #[tokio::test]
    async fn a_pipeline_job_runs_its_command_with_its_variables_and_never_plans() {
        let text = PIPELINE.replace("network: false\n", "");
        let real = Real::with(&[(REPO_CONFIG_FILE, &text)]).await;
        let first = real.first_job("main");
        let plan = real.run(first.clone()).await.plan.expect("a plan");
        let spec = plan.jobs[2].clone();
        assert_eq!(spec.name, "test (beta, all)");
        let result = real.run(first.planned(spec)).await;
        assert_eq!(result.outcome, Outcome::Passed, "{}", result.output);
        assert_eq!(result.plan, None);
        assert!(
            result.output.contains("\nbeta all bar\n"),
            "{}",
            result.output
        );
        assert!(
            result
                .output
                .contains(") job \"test (beta, all)\" on r1 (no sandbox)"),
            "{}",
            result.output
        );
        // 1 h asked, 20 s allowed by this runner.
        assert!(
            result.output.contains(
                "warren: the job's timeout of 3600 s is capped at this runner's --job-timeout of 20 s"
            ),
            "{}",
            result.output
        );
    }

    #[tokio::test]
    async fn a_pipeline_jobs_own_timeout_ends_it() {
        let text = "jobs:\n  slow:\n    run: sleep 30\n    timeout: 300ms\n";
        let real = Real::with(&[(REPO_CONFIG_FILE, text)]).await;
        let first = real.first_job("main");
        let spec = real.run(first.clone()).await.plan.expect("a plan").jobs[0].clone();
        let clock = std::time::Instant::now();
        let result = real.run(first.planned(spec)).await;
        assert_eq!(result.outcome, Outcome::Timeout, "{}", result.output);
        assert!(
            result
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("timeout of 0.3 s")),
            "{:?}",
            result.reason
        );
        assert!(!result.output.contains("capped"));
        assert!(clock.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn without_jobs_the_commit_is_one_test_as_before() {
        let real = Real::with(&[
            (REPO_CONFIG_FILE, "network: true\n"),
            (REPO_COMMAND_FILE, "echo the repository command ran"),
        ])
        .await;
        let result = real.run(real.first_job("main")).await;
        assert_eq!(result.outcome, Outcome::Passed, "{}", result.output);
        assert_eq!(result.plan, None);
        assert!(result.output.contains("the repository command ran"));
        assert!(!result.output.contains(" job \""), "{}", result.output);

        let plain = Real::with(&[("README", "x")]).await;
        let result = plain.run(plain.first_job("main")).await;
        assert_eq!(result.outcome, Outcome::Passed, "{}", result.output);
        assert!(result.output.contains("default command ran"));
    }

    #[test]
    fn a_plan_too_large_for_a_message_is_an_error_that_says_so() {
        let runner = RunnerInfo {
            id: RunnerId::parse("r").expect("id"),
            host: "h".into(),
            connection: "c".into(),
            sandbox: Default::default(),
            queues: Vec::new(),
        };
        let spec = |i: usize| model::JobSpec {
            name: format!("j{i}"),
            run: "x".repeat(60 * 1024),
            env: Default::default(),
            matrix: Default::default(),
            timeout_ms: None,
            queue: Default::default(),
            needs: vec![],
            allow_failure: false,
            split: None,
        };
        let mut result = JobResult {
            v: SCHEMA_VERSION,
            job: Job::try_new("/r", "main", &"a".repeat(40)).expect("a valid job"),
            outcome: Outcome::Passed,
            exit_code: None,
            started_at_ms: 0,
            finished_at_ms: 0,
            duration_ms: 0,
            output: "planned\n".into(),
            truncated: false,
            runner,
            reason: None,
            plan: Some(model::Plan::new((0..10).map(spec).collect())),
            tests: None,
        };
        let mut fits = result.clone();
        fit_to_cap(&mut fits, 4 * 1024 * 1024);
        assert_eq!(fits, result);
        fit_to_cap(&mut result, 256 * 1024);
        assert_eq!(result.outcome, Outcome::Error);
        assert_eq!(result.plan, None);
        assert!(result
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("more than a message may carry")));
    }
}
