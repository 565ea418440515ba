//! The command line: every subcommand, flag and `WARREN_*` variable.
//!
//! This is a contract that users, compose.yaml and the tests rely on. Bad
//! values are reported in one line naming the flag and what it expected.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use broker::topology::{Topology, TopologySettings};
use broker::{BrokerConfig, Names};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Parser, Subcommand};
use model::{BranchName, JobStatus, QueueName, RunnerId};
use tokio_util::sync::CancellationToken;

const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const DEFAULT_MANAGEMENT_URL: &str = "http://guest:guest@127.0.0.1:15672";

#[derive(Debug, Parser)]
#[command(
    name = "warren",
    version,
    about = "Distributed continuous integration on RabbitMQ",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// RabbitMQ URL (amqp:// or amqps://); repeat it, or separate URLs
    /// with commas, for the nodes of a cluster (tried in turn, in an order
    /// of this process's own); or read from the file named by
    /// WARREN_AMQP_URL_FILE [default: amqp://guest:***@127.0.0.1:5672/%2f]
    #[arg(
        long,
        env = "WARREN_AMQP_URL",
        default_value = DEFAULT_AMQP_URL,
        hide_default_value = true,
        hide_env_values = true,
        global = true,
        action = clap::ArgAction::Append
    )]
    pub amqp_url: Vec<String>,

    /// Replicas of each quorum queue (x-quorum-initial-group-size), capped
    /// by RabbitMQ at the cluster's size; unset, the broker's default (3)
    /// applies and the argument is not declared (must match across
    /// components)
    #[arg(long, env = "WARREN_QUORUM_SIZE", value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub quorum_size: Option<u32>,

    /// Prefix of every exchange and queue; deployments with different
    /// namespaces share a broker without seeing each other
    #[arg(long, env = "WARREN_NAMESPACE", default_value = "warren", value_parser = parse_namespace, global = true)]
    pub namespace: String,

    /// Deliveries after which a job that keeps killing its runner is
    /// dead-lettered and recorded as error (must match across components)
    #[arg(long, env = "WARREN_DELIVERY_LIMIT", default_value_t = broker::topology::DEFAULT_DELIVERY_LIMIT, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub delivery_limit: u32,

    /// Messages larger than this many bytes are refused and dead-lettered
    #[arg(long, env = "WARREN_MAX_MESSAGE_BYTES", default_value_t = broker::message::DEFAULT_MAX_MESSAGE_BYTES, value_parser = parse_message_cap, global = true)]
    pub max_message_bytes: usize,
}

impl Common {
    /// Every broker URL given: each `--amqp-url`, each split at commas.
    pub fn amqp_urls(&self) -> Vec<String> {
        self.amqp_url
            .iter()
            .flat_map(|list| broker::connect::split_urls(list))
            .collect()
    }

    pub fn broker_config(&self) -> BrokerConfig {
        BrokerConfig {
            urls: self.amqp_urls(),
            names: Names::new(self.namespace.clone()),
            settings: TopologySettings {
                delivery_limit: self.delivery_limit,
            },
            quorum_size: self.quorum_size,
            max_message_bytes: self.max_message_bytes,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch a git repository and publish one job per new commit
    Observer(ObserverArgs),
    /// Take jobs from the queue, test each commit, publish the result
    Runner(RunnerArgs),
    /// Record jobs and results, watch leases, serve the API and dashboard
    Dispatcher(DispatcherArgs),
    /// Run a dispatcher, an observer and N runners on this machine
    Up(UpArgs),
    /// Print or delete the namespace's RabbitMQ topology
    Topology(TopologyArgs),
    /// Apply the store's schema migrations, or with --check only report them
    Migrate(MigrateArgs),
    /// Recent jobs as a table
    Status(StatusArgs),
    /// One job (by id), or a commit's pipeline: its verdict and jobs;
    /// exits non-zero unless it passed
    Show(ShowArgs),
    /// A job's log (by id or commit); exits non-zero unless it passed
    Log(LogArgs),
    /// Run a job again, as a new job; with --failed, a commit's failed jobs
    Rerun(RerunArgs),
    /// Stop a job, or every unfinished job of a commit's pipeline
    Cancel(CancelArgs),
    /// Enqueue a job by hand for a commit or a branch's head
    Trigger(TriggerArgs),
    /// Runners seen by the dispatcher
    Runners(RunnersArgs),
    /// The repository registry: add, list, remove, or apply a TOML file
    #[command(subcommand)]
    Repo(crate::repo::RepoCommand),
    /// Git hooks: `warren hook post-receive` in a bare repository
    #[command(subcommand)]
    Hook(crate::hook::HookCommand),
    /// Run one test under a supervisor that kills its whole process tree
    /// when the test ends or the runner's liveness pipe closes (started by
    /// the runner, not by people)
    #[command(hide = true)]
    Supervise(SuperviseArgs),
}

#[derive(Debug, Clone, Args)]
pub struct SuperviseArgs {
    /// The test command and its arguments, after `--`
    #[arg(last = true, required = true, value_parser = clap::value_parser!(std::ffi::OsString))]
    pub command: Vec<std::ffi::OsString>,
}

/// Where the dispatcher's API is, for the client commands.
#[derive(Debug, Clone, Args)]
pub struct Server {
    /// The dispatcher's address
    #[arg(long, env = "WARREN_SERVER", default_value = "http://127.0.0.1:8080", value_parser = parse_http_url)]
    pub server: String,
}

/// Where the dispatcher keeps jobs, outcomes and logs.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Folder for the default SQLite store
    #[arg(long, env = "WARREN_DATA_DIR", default_value = "warren-data")]
    pub data_dir: PathBuf,

    /// The store: sqlite:PATH, or postgres://USER[:PASSWORD]@HOST[:PORT]/DB
    /// for several dispatchers; may be read from the file named by
    /// WARREN_STORE_FILE [default: sqlite:<--data-dir>/warren.db]
    #[arg(long, env = "WARREN_STORE", hide_env_values = true)]
    pub store: Option<String>,
}

impl StoreArgs {
    /// The store's URL: `--store`, else the SQLite file in `--data-dir`.
    pub fn url(&self) -> anyhow::Result<store::StoreUrl> {
        match &self.store {
            Some(url) => store::StoreUrl::parse(url).map_err(|e| anyhow::anyhow!("--store: {e}")),
            None => Ok(store::StoreUrl::sqlite(self.data_dir.join("warren.db"))),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub store: StoreArgs,

    /// Only report which migrations are applied and which are pending
    #[arg(long)]
    pub check: bool,
}

/// `warren migrate`: applies the pending migrations (or reports them).
/// Exits non-zero when `--check` finds some pending, so scripts can ask.
pub async fn migrate(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let url = args.store.url()?;
    let report = store::migrate(&url, args.check).await?;
    print!("{report}");
    Ok(if args.check && !report.pending.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The deadline of every git call, for the components that run git.
#[derive(Debug, Clone, Args)]
pub struct GitArgs {
    /// Seconds one git call (clone, fetch, checkout, ls-remote) may take
    /// before it is killed with its process group, fractions allowed
    #[arg(long, env = "WARREN_GIT_TIMEOUT", default_value = "600", value_parser = parse_seconds)]
    pub git_timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub server: Server,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// How many jobs
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// Only jobs with this status (queued, running, passed, failed, error, timeout)
    #[arg(long, value_parser = parse_status)]
    pub status: Option<JobStatus>,
    /// Only jobs of this branch
    #[arg(long)]
    pub branch: Option<String>,
    /// Only jobs of this repository (a registered name, or a URL)
    #[arg(long)]
    pub repo: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub server: Server,
    /// Job id, or a full or abbreviated commit id
    pub job: String,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    #[command(flatten)]
    pub server: Server,
    /// Job id, or a full or abbreviated commit id
    pub job: String,
    /// Print the log as the test prints it, until the job has its outcome
    #[arg(long)]
    pub follow: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RerunArgs {
    #[command(flatten)]
    pub server: Server,
    /// Job id, or a full or abbreviated commit id
    pub job: String,
    /// JOB is a commit: run again only the jobs of its pipeline that did
    /// not pass (failed, error, timeout, canceled) and the jobs skipped
    /// because of them; what passed is not run again
    #[arg(long)]
    pub failed: bool,
}

#[derive(Debug, Clone, Args)]
pub struct CancelArgs {
    #[command(flatten)]
    pub server: Server,
    /// Job id (that job), or a full or abbreviated commit id (every job
    /// of its pipeline that has not ended)
    pub target: String,
}

#[derive(Debug, Clone, Args)]
pub struct TriggerArgs {
    #[command(flatten)]
    pub server: Server,
    /// A full commit id, or a branch whose head to test
    pub target: String,
    /// The branch to file the job under
    #[arg(long)]
    pub branch: Option<String>,
    /// The repository [default: the newest job's]
    #[arg(long)]
    pub repo: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct RunnersArgs {
    #[command(flatten)]
    pub server: Server,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
#[command(allow_negative_numbers = true)]
pub struct ObserverArgs {
    /// Repository to watch alone: a local path or a git URL. Without it the
    /// observer watches every repository in the dispatcher's registry
    #[arg(env = "WARREN_REPO")]
    pub repo: Option<String>,

    /// With REPO: seconds between polls (fractions such as 0.2 are accepted)
    #[arg(long, env = "WARREN_INTERVAL", default_value = "5", value_parser = parse_seconds)]
    pub interval: Duration,

    /// With REPO: branch to watch; repeat for several [default: the repository's HEAD branch]
    #[arg(long = "branch", env = "WARREN_BRANCH", value_delimiter = ',', value_parser = parse_branch)]
    pub branches: Vec<BranchName>,

    /// With REPO: file where the last published commit per branch is kept
    #[arg(
        long,
        env = "WARREN_STATE",
        default_value = "warren-observer-state.json"
    )]
    pub state: PathBuf,

    #[command(flatten)]
    pub server: Server,

    /// Without REPO: folder for each repository's state (NAME.json) and
    /// mirror
    #[arg(long, env = "WARREN_STATE_DIR", default_value = "warren-observer")]
    pub state_dir: PathBuf,

    /// Without REPO: address where webhooks are received (POST /hooks/NAME)
    #[arg(long, env = "WARREN_HOOKS_HTTP", default_value = "127.0.0.1:8081")]
    pub hooks_http: SocketAddr,

    /// Without REPO: repositories read (fetched, listed) at once, at most
    #[arg(long, env = "WARREN_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    #[command(flatten)]
    pub git: GitArgs,
}

/// What `warren observer` runs.
pub enum ObserverMode {
    /// One repository, given on the command line.
    Alone(observer::ObserverConfig),
    /// Every repository of the registry.
    Registry(observer::registry::RegistryConfig),
}

impl ObserverArgs {
    pub fn into_mode(self, broker: BrokerConfig) -> anyhow::Result<ObserverMode> {
        let Some(repo) = self.repo else {
            if !self.branches.is_empty() {
                anyhow::bail!("--branch: only with REPO; a registered repository's branches are in the registry (warren repo add --branch)");
            }
            return Ok(ObserverMode::Registry(observer::registry::RegistryConfig {
                broker,
                server: self.server.server,
                state_dir: self.state_dir,
                hooks_http: self.hooks_http,
                git_timeout: self.git.git_timeout,
                concurrency: usize::from(self.concurrency),
                secrets: std::sync::Arc::new(secret),
            }));
        };
        Ok(ObserverMode::Alone(observer::ObserverConfig {
            broker,
            repo,
            branches: self.branches,
            interval: self.interval,
            state_file: self.state,
            git_timeout: self.git.git_timeout,
        }))
    }
}

#[derive(Debug, Clone, Args)]
#[command(allow_negative_numbers = true)]
pub struct RunnerArgs {
    /// Folder for the runner's clones (one per repository)
    #[arg(long, env = "WARREN_WORKDIR", default_value = "warren-runner")]
    pub workdir: PathBuf,

    /// Test command, run with `sh -c` in the checkout; a repository's own
    /// `.warren-test` file wins over it [default: python3 -m unittest discover -s tests -v]
    #[arg(long, env = "WARREN_TEST_COMMAND")]
    pub test_command: Option<String>,

    /// Seconds a test may run before its whole process tree is killed
    /// (outcome timeout); keep it below the broker's consumer_timeout
    #[arg(long, env = "WARREN_JOB_TIMEOUT", default_value = "1500", value_parser = parse_seconds)]
    pub job_timeout: Duration,

    /// Runner id shown in results [default: host name and pid]
    #[arg(long, env = "WARREN_RUNNER_ID", value_parser = parse_id)]
    pub id: Option<RunnerId>,

    /// Seconds between heartbeats while a job runs
    #[arg(long, env = "WARREN_HEARTBEAT", default_value = "2", value_parser = parse_seconds)]
    pub heartbeat: Duration,

    /// Bytes of test output kept per job; the rest is dropped and the log
    /// marked as truncated
    #[arg(long, env = "WARREN_OUTPUT_CAP", default_value_t = runner::DEFAULT_OUTPUT_CAP)]
    pub output_cap: usize,

    /// Seconds a running job may take to finish after SIGTERM before it is
    /// stopped and handed back to the queue
    #[arg(long, env = "WARREN_GRACE", default_value = "30", value_parser = parse_seconds)]
    pub grace: Duration,

    /// How jobs are isolated: bwrap (each test in bubblewrap's namespaces:
    /// it sees its checkout, the system read-only and nothing else of the
    /// runner) or none; auto is bwrap when it works here, else none with a
    /// warning
    #[arg(long, env = "WARREN_SANDBOX", default_value = "auto", value_parser = parse_sandbox)]
    pub sandbox: runner::SandboxChoice,

    /// A sandboxed job's network: host (shared with the runner) or none
    /// (only its own loopback); a repository's `.warren.yml` can ask for
    /// none per job (`network: false`)
    #[arg(long, env = "WARREN_NETWORK", default_value = "host", value_parser = parse_network)]
    pub network: runner::Network,

    /// A host path a sandboxed job may read (a toolchain outside /usr, such
    /// as ~/.cargo and ~/.rustup); repeat the flag, or separate with commas
    #[arg(long = "sandbox-ro", env = "WARREN_SANDBOX_RO", value_name = "PATH", value_delimiter = ',', value_parser = parse_absolute_path)]
    pub sandbox_ro: Vec<PathBuf>,

    /// Memory per job, in bytes or with K, M, G (a cgroup where one can be
    /// made, else RLIMIT_AS per process) [default: no limit]
    #[arg(long, env = "WARREN_JOB_MEMORY", value_name = "BYTES", value_parser = runner::sandbox::parse_bytes)]
    pub job_memory: Option<u64>,

    /// Processes and threads per job (a pids cgroup) [default: no limit]
    #[arg(long, env = "WARREN_JOB_PIDS", value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub job_pids: Option<u64>,

    /// Work queues to take jobs from, comma-separated: a pipeline job goes
    /// to the queue its `queue:` names, `default` when it names none
    #[arg(long = "queue", env = "WARREN_QUEUES", value_name = "QUEUE", value_delimiter = ',', default_value = QueueName::DEFAULT, value_parser = parse_queue)]
    pub queues: Vec<QueueName>,

    #[command(flatten)]
    pub git: GitArgs,
}

impl RunnerArgs {
    pub fn into_config(self, broker: BrokerConfig) -> runner::RunnerConfig {
        runner::RunnerConfig {
            broker,
            workdir: self.workdir,
            test_command: self.test_command,
            job_timeout: self.job_timeout,
            id: self.id.unwrap_or_else(runner::default_runner_id),
            heartbeat: self.heartbeat,
            output_cap: self.output_cap,
            grace: self.grace,
            // This very binary, as the kernel has it open: still the right
            // one if the file was replaced (an upgrade) while running.
            supervisor: PathBuf::from("/proc/self/exe"),
            git_timeout: self.git.git_timeout,
            queues: {
                let mut queues: Vec<QueueName> = Vec::new();
                for queue in self.queues {
                    if !queues.contains(&queue) {
                        queues.push(queue);
                    }
                }
                queues
            },
            isolation: runner::Isolation {
                sandbox: self.sandbox,
                network: self.network,
                read_only: self.sandbox_ro,
                memory: self.job_memory,
                pids: self.job_pids,
            },
        }
    }
}

#[derive(Debug, Clone, Args)]
#[command(allow_negative_numbers = true)]
pub struct DispatcherArgs {
    #[command(flatten)]
    pub store: StoreArgs,

    /// Address of the dashboard and JSON API
    #[arg(long, env = "WARREN_HTTP", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,

    /// RabbitMQ management API, used to close a frozen runner's connection,
    /// or read from the file named by WARREN_MANAGEMENT_URL_FILE [default: http://guest:***@127.0.0.1:15672]
    #[arg(
        long,
        env = "WARREN_MANAGEMENT_URL",
        default_value = DEFAULT_MANAGEMENT_URL,
        hide_default_value = true,
        hide_env_values = true
    )]
    pub management_url: String,

    /// Seconds between runner heartbeats (as configured on the runners)
    #[arg(long, env = "WARREN_HEARTBEAT", default_value = "2", value_parser = parse_seconds)]
    pub heartbeat: Duration,

    /// Missed heartbeats after which a running job's lease expires
    #[arg(long, env = "WARREN_LEASE_MISSED", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub lease_missed: u32,

    /// URL to POST a signed JSON payload to on a failure and on the first
    /// pass after one; repeat for several. The HMAC-SHA256 key comes from
    /// WARREN_WEBHOOK_SECRET (or the file WARREN_WEBHOOK_SECRET_FILE names).
    /// State-changing API calls need the token in WARREN_API_TOKEN (or
    /// WARREN_API_TOKEN_FILE) when it is set
    #[arg(long = "webhook", env = "WARREN_WEBHOOKS", value_delimiter = ',', value_parser = parse_http_url)]
    pub webhooks: Vec<String>,

    /// Where the dashboard is reached from outside: commit statuses on the
    /// forges link to PUBLIC_URL/jobs/ID [default: http://<--http>]
    #[arg(long, env = "WARREN_PUBLIC_URL", value_parser = dispatcher::status::parse_public_url)]
    pub public_url: Option<String>,

    /// Keep the newest N jobs; older finished ones are deleted with their
    /// logs [default: keep all]
    #[arg(long, env = "WARREN_KEEP_JOBS", value_parser = clap::value_parser!(u64).range(1..))]
    pub keep_jobs: Option<u64>,

    /// Keep jobs that finished within the last D days; older ones are
    /// deleted with their logs [default: keep all]
    #[arg(long, env = "WARREN_KEEP_DAYS", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_days: Option<u32>,

    /// Seconds between two prunings by --keep-jobs and --keep-days
    #[arg(long, env = "WARREN_PRUNE_EVERY", default_value = "300", value_parser = parse_seconds)]
    pub prune_every: Duration,

    /// From WARREN_WEBHOOK_SECRET or its file (see [`resolve_secrets`]).
    #[arg(skip)]
    pub webhook_secret: Option<String>,

    /// From WARREN_API_TOKEN or its file (see [`resolve_secrets`]).
    #[arg(skip)]
    pub api_token: Option<String>,

    #[command(flatten)]
    pub git: GitArgs,
}

impl DispatcherArgs {
    pub fn into_config(self, broker: BrokerConfig) -> anyhow::Result<dispatcher::DispatcherConfig> {
        Ok(dispatcher::DispatcherConfig {
            broker,
            store: self.store.url()?,
            http: self.http,
            management_url: self.management_url,
            lease: self.heartbeat * self.lease_missed,
            heartbeat: self.heartbeat,
            webhooks: self.webhooks,
            webhook_secret: self.webhook_secret,
            api_token: self.api_token,
            git_timeout: self.git.git_timeout,
            public_url: self.public_url,
            retention: store::Retention {
                keep_jobs: self.keep_jobs,
                keep_days: self.keep_days,
            },
            prune_every: self.prune_every,
        })
    }
}

#[derive(Debug, Clone, Args)]
#[command(allow_negative_numbers = true)]
pub struct UpArgs {
    /// Repositories to watch: local paths or git URLs. Each is put in the
    /// registry under the last part of its path (`app` for
    /// `/srv/app.git`) unless its URL is registered already
    #[arg(env = "WARREN_REPO", required = true, value_delimiter = ',')]
    pub repos: Vec<String>,

    /// Address where the observer receives webhooks (POST /hooks/NAME)
    #[arg(long, env = "WARREN_HOOKS_HTTP", default_value = "127.0.0.1:8081")]
    pub hooks_http: SocketAddr,

    /// Number of runner processes: N, or MIN..MAX to let the runner
    /// manager start runners while jobs wait and stop idle ones
    #[arg(long, env = "WARREN_RUNNERS", default_value = "2", value_parser = parse_runner_count)]
    pub runners: RunnerCount,

    /// Address of the dashboard and JSON API
    #[arg(long, env = "WARREN_HTTP", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,

    /// Folder for the store, logs, observer state and runner clones
    #[arg(long, env = "WARREN_DATA_DIR", default_value = "warren-data")]
    pub data_dir: PathBuf,

    /// Seconds between polls of each repository (as registered by `up`)
    #[arg(long, env = "WARREN_INTERVAL", default_value = "5", value_parser = parse_seconds)]
    pub interval: Duration,

    /// Test command for the runners [default: python3 -m unittest discover -s tests -v]
    #[arg(long, env = "WARREN_TEST_COMMAND")]
    pub test_command: Option<String>,

    /// Seconds a test may run before it is killed
    #[arg(long, env = "WARREN_JOB_TIMEOUT", default_value = "1500", value_parser = parse_seconds)]
    pub job_timeout: Duration,

    #[command(flatten)]
    pub git: GitArgs,
}

#[derive(Debug, Clone, Args)]
pub struct TopologyArgs {
    /// Print the topology as RabbitMQ definitions JSON (no broker needed)
    #[arg(long, conflicts_with = "delete")]
    pub definitions: bool,

    /// Virtual host named in the definitions
    #[arg(long, default_value = "/")]
    pub vhost: String,

    /// Delete the namespace's queues and exchanges from the broker
    #[arg(long)]
    pub delete: bool,

    /// With --delete: the named work queues (`N.jobs.<queue>`) to delete
    /// too; AMQP cannot list them, so those not named here stay
    #[arg(long = "queue", value_name = "QUEUE", requires = "delete", value_delimiter = ',', value_parser = parse_queue)]
    pub queues: Vec<QueueName>,
}

/// `warren topology`: print definitions, or delete the namespace.
pub async fn topology(
    broker: &BrokerConfig,
    args: TopologyArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if args.delete {
        broker::delete_namespace(broker, &args.queues, &shutdown)
            .await
            .context("deleting the namespace")?;
        println!("deleted namespace {}", broker.names.namespace());
        return Ok(());
    }
    let definitions = Topology::new(&broker.names, broker.settings).definitions(&args.vhost);
    println!("{}", serde_json::to_string_pretty(&definitions)?);
    Ok(())
}

/// Prints clap's error in one line (help and version as they are) and
/// returns the exit code.
pub fn exit_on_parse_error(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("warren: {}", one_line(&err.to_string()));
            ExitCode::from(2)
        }
    }
}

/// clap's message in one line: its first, and when that ends in a colon
/// ("required arguments were not provided:") the list under it, up to
/// the usage.
fn one_line(rendered: &str) -> String {
    let mut lines = rendered.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ");
    if !first.ends_with(':') {
        return first.to_string();
    }
    let listed: Vec<&str> = lines.take_while(|l| !l.starts_with("Usage:")).collect();
    format!("{first} {}", listed.join(", "))
}

/// How many runners `warren up` keeps: fixed (min = max) or managed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunnerCount {
    pub min: u32,
    pub max: u32,
}

impl std::fmt::Display for RunnerCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}..{}", self.min, self.max)
        }
    }
}

fn parse_runner_count(value: &str) -> Result<RunnerCount, String> {
    let expected = || {
        format!("expected a number of runners N or a range MIN..MAX (0 ≤ MIN ≤ MAX ≤ 64, MAX ≥ 1), got {value:?}")
    };
    let number = |s: &str| s.trim().parse::<u32>().map_err(|_| expected());
    let (min, max) = match value.split_once("..") {
        Some((min, max)) => (number(min)?, number(max)?),
        None => {
            let n = number(value)?;
            (n, n)
        }
    };
    if min > max || max == 0 || max > 64 {
        return Err(expected());
    }
    Ok(RunnerCount { min, max })
}

/// Seconds as a positive number, fractions allowed.
pub fn parse_seconds(value: &str) -> Result<Duration, String> {
    let expected =
        || format!("expected a positive number of seconds such as 5 or 0.2, got {value:?}");
    let secs: f64 = value.trim().parse().map_err(|_| expected())?;
    if !secs.is_finite() || secs <= 0.0 || secs > 1e9 {
        return Err(expected());
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_message_cap(value: &str) -> Result<usize, String> {
    match value.trim().parse::<usize>() {
        Ok(n) if n >= 64 * 1024 => Ok(n),
        _ => Err(format!(
            "expected a number of bytes of at least 65536, got {value:?}"
        )),
    }
}

/// A secret given as `NAME` or as a file named by `NAME_FILE`: one rule
/// for the binary and the dispatcher (which reads the forge tokens the
/// registry names), kept in the `tasks` crate they share.
pub use tasks::secret;

/// A secret that is also a flag (`--amqp-url`): the flag given on the
/// command line wins; otherwise `NAME` or its file as [`secret`] reads
/// them; otherwise the default clap filled in.
fn resolve_flag_secret(
    value: &mut String,
    source: Option<ValueSource>,
    name: &str,
) -> Result<(), String> {
    if source == Some(ValueSource::CommandLine) {
        return Ok(());
    }
    if let Some(secret) = secret(name)? {
        *value = secret;
    }
    Ok(())
}

/// The store's URL may hold a password: the flag wins, else
/// `WARREN_STORE` or the file `WARREN_STORE_FILE` names.
fn resolve_store_secret(store: &mut StoreArgs, sub: Option<&ArgMatches>) -> Result<(), String> {
    if sub.and_then(|m| m.value_source("store")) == Some(ValueSource::CommandLine) {
        return Ok(());
    }
    if let Some(url) = secret("WARREN_STORE")? {
        store.store = Some(url);
    }
    Ok(())
}

/// Fills in every secret of `cli` from the command line, the environment
/// or the files the `*_FILE` variables name. `matches` are the ones `cli`
/// was parsed from.
pub fn resolve_secrets(cli: &mut Cli, matches: &ArgMatches) -> Result<(), String> {
    // A global flag may be given before or after the subcommand; clap
    // records where it came from in the subcommand's matches.
    let sub = matches.subcommand().map(|(_, sub)| sub);
    let amqp_source = sub
        .and_then(|m| m.value_source("amqp_url"))
        .or_else(|| matches.value_source("amqp_url"));
    match &mut cli.command {
        // Started by the runner with a scrubbed environment: no secrets.
        Command::Supervise(_) => return Ok(()),
        Command::Migrate(args) => resolve_store_secret(&mut args.store, sub)?,
        Command::Dispatcher(args) => {
            let source = sub.and_then(|m| m.value_source("management_url"));
            resolve_flag_secret(&mut args.management_url, source, "WARREN_MANAGEMENT_URL")?;
            resolve_store_secret(&mut args.store, sub)?;
            args.webhook_secret = secret("WARREN_WEBHOOK_SECRET")?;
            args.api_token = secret("WARREN_API_TOKEN")?;
        }
        _ => {}
    }
    if amqp_source != Some(ValueSource::CommandLine) {
        if let Some(urls) = secret("WARREN_AMQP_URL")? {
            cli.common.amqp_url = vec![urls];
        }
    }
    Ok(())
}

pub fn parse_http_url(value: &str) -> Result<String, String> {
    if value.starts_with("http://") || value.starts_with("https://") {
        Ok(value.to_string())
    } else {
        Err(format!(
            "expected an http:// or https:// URL, got {:?}",
            broker::redact_url(value)
        ))
    }
}

fn parse_namespace(value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= 100
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(value.to_string())
    } else {
        Err(format!(
            "expected 1 to 100 letters, digits, '-' or '_', got {value:?}"
        ))
    }
}

fn parse_sandbox(value: &str) -> Result<runner::SandboxChoice, String> {
    value.parse()
}

fn parse_absolute_path(value: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(value);
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(format!("expected an absolute path, got {value:?}"))
    }
}

fn parse_network(value: &str) -> Result<runner::Network, String> {
    value.parse()
}

fn parse_id(value: &str) -> Result<RunnerId, String> {
    RunnerId::parse(value)
        .map_err(|_| format!("expected 1 to 128 letters, digits, '-', '_' or '.', got {value:?}"))
}

fn parse_queue(value: &str) -> Result<QueueName, String> {
    QueueName::parse(value.trim()).map_err(|e| e.reason)
}

fn parse_status(value: &str) -> Result<JobStatus, String> {
    value
        .parse()
        .map_err(|e: model::UnknownStatus| e.to_string())
}

fn parse_branch(value: &str) -> Result<BranchName, String> {
    BranchName::parse(value).map_err(|e| format!("{value:?}: {}", e.reason))
}

/// The clap command, for tests that check compose.yaml's flags.
#[cfg(test)]
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn seconds_accept_fractions_and_refuse_nonsense() {
        assert_eq!(parse_seconds("0.2"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_seconds("5"), Ok(Duration::from_secs(5)));
        for bad in ["", "abc", "-1", "0", "NaN", "inf"] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_component_that_runs_git_takes_a_git_timeout() {
        let timeout = |args: &[&str]| {
            let cli = Cli::try_parse_from(args.iter().copied()).expect("parses");
            match cli.command {
                Command::Observer(a) => a.git.git_timeout,
                Command::Runner(a) => a.git.git_timeout,
                Command::Dispatcher(a) => a.git.git_timeout,
                Command::Up(a) => a.git.git_timeout,
                _ => panic!("not a component"),
            }
        };
        for command in [
            &["warren", "observer", "/r"][..],
            &["warren", "runner"],
            &["warren", "dispatcher"],
            &["warren", "up", "/r"],
        ] {
            assert_eq!(timeout(command), Duration::from_secs(600), "{command:?}");
            let with = [command, &["--git-timeout", "1.5"]].concat();
            assert_eq!(timeout(&with), Duration::from_millis(1500), "{with:?}");
            let bad = [command, &["--git-timeout", "0"]].concat();
            let err = Cli::try_parse_from(bad).expect_err("refused").to_string();
            assert!(err.contains("--git-timeout"), "{err}");
        }
    }

    #[test]
    fn runner_counts_are_a_number_or_a_range() {
        assert_eq!(parse_runner_count("3"), Ok(RunnerCount { min: 3, max: 3 }));
        assert_eq!(
            parse_runner_count("1..4"),
            Ok(RunnerCount { min: 1, max: 4 })
        );
        assert_eq!(
            parse_runner_count("0..2"),
            Ok(RunnerCount { min: 0, max: 2 })
        );
        for bad in ["", "0", "4..1", "1..65", "a..b", "1..", "-1"] {
            assert!(parse_runner_count(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn namespaces_are_plain_words() {
        assert!(parse_namespace("warren-test_1").is_ok());
        for bad in ["", "a.b", "a b", "x/y"] {
            assert!(parse_namespace(bad).is_err(), "{bad}");
        }
    }
}
