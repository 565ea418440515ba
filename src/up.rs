//! `warren up`: everything on one machine, for a laptop. Starts one
//! dispatcher, one observer and runners as real child processes of this
//! same binary, restarts any that die (after a pause that grows while a
//! child keeps dying, see [`Backoff`]), and stops them all on Ctrl-C: the
//! first lets them finish their work, a second kills them at once.
//!
//! With `--runners MIN..MAX` it is also the runner manager (the original
//! design's "test runner manager" extension): it watches the work queue's
//! depth through the broker and the runners' state through the dispatcher's
//! API, starts runners up to MAX while jobs wait, and stops idle ones down
//! to MIN with SIGTERM (a runner that just took a job finishes it first).

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::cli::{Common, UpArgs};
use crate::client::Client;
use model::{Repo, RepoName, RepoUrl};

/// How long children get to stop after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// Runner grace under `up`: shorter than STOP_GRACE so runners go first.
const RUNNER_GRACE_SECS: &str = "10";
/// How often children are checked and the manager decides.
const TICK: Duration = Duration::from_millis(500);
/// Ticks the queue must stay empty before idle runners are stopped.
const SCALE_DOWN_AFTER_TICKS: u32 = 4;

/// When to restart a child that exited: 0.5 s after its first exit, twice
/// as long after each further one, at most 30 s; a child that ran for a
/// minute is healthy, and its next exit starts over at 0.5 s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
    started: Option<Instant>,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(500);
    pub const MAX: Duration = Duration::from_secs(30);
    pub const HEALTHY_AFTER: Duration = Duration::from_secs(60);

    pub fn new() -> Self {
        Backoff {
            next: Self::FIRST,
            started: None,
        }
    }

    /// The child was (re)started at `now`.
    pub fn started(&mut self, now: Instant) {
        self.started = Some(now);
    }

    /// The child exited (or could not be started) at `now`: how long to
    /// wait before starting it again.
    pub fn exited(&mut self, now: Instant) -> Duration {
        if self
            .started
            .is_some_and(|started| now.saturating_duration_since(started) >= Self::HEALTHY_AFTER)
        {
            self.next = Self::FIRST;
        }
        self.started = None;
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }
}

/// One supervised child: how to start it, and the running process.
struct Supervised {
    name: String,
    args: Vec<String>,
    child: Option<Child>,
    /// Stopped on purpose by the manager: reap it, do not restart it.
    retiring: bool,
    backoff: Backoff,
    /// It exited: when to start it again.
    restart_at: Option<Instant>,
}

impl Supervised {
    fn new(name: String, args: Vec<String>) -> Self {
        Supervised {
            name,
            args,
            child: None,
            retiring: false,
            backoff: Backoff::new(),
            restart_at: None,
        }
    }

    /// Starts (or restarts) the child; a failure is retried after a pause.
    fn start(&mut self, launch: &Launch) -> anyhow::Result<()> {
        let now = Instant::now();
        match launch.spawn(&self.args) {
            Ok(child) => {
                self.child = Some(child);
                self.backoff.started(now);
                Ok(())
            }
            Err(err) => {
                self.restart_at = Some(now + self.backoff.exited(now));
                Err(err)
            }
        }
    }

    /// Checks the child: restarts it when its pause is over, or notes that
    /// it exited and when to restart it.
    fn supervise(&mut self, launch: &Launch) {
        let now = Instant::now();
        if self.retiring {
            // Stopped on purpose: reaped, never restarted.
            self.restart_at = None;
            let _ = exited(self);
            return;
        }
        if let Some(at) = self.restart_at {
            if now >= at {
                self.restart_at = None;
                if let Err(err) = self.start(launch) {
                    tracing::error!(child = %self.name, "cannot restart: {err:#}");
                }
            }
            return;
        }
        let Some(status) = exited(self) else { return };
        let delay = self.backoff.exited(now);
        self.restart_at = Some(now + delay);
        tracing::warn!(
            "{} exited ({status}); restarting in {} s",
            self.name,
            delay.as_secs_f64()
        );
    }
}

/// What the manager should do this tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub start: u32,
    /// Runner names to stop.
    pub stop: Vec<String>,
}

/// The runner manager's decision, from what it can observe: jobs ready in
/// the queue, the runners alive (by name), which of them are idle, and for
/// how many ticks the queue has been empty.
pub fn plan(
    ready: u32,
    alive: &[String],
    idle: &HashSet<String>,
    empty_ticks: u32,
    min: u32,
    max: u32,
) -> Plan {
    let count = alive.len() as u32;
    if count < min {
        return Plan {
            start: min - count,
            stop: Vec::new(),
        };
    }
    if ready > 0 && count < max {
        return Plan {
            start: ready.min(max - count),
            stop: Vec::new(),
        };
    }
    if ready == 0 && count > min && empty_ticks >= SCALE_DOWN_AFTER_TICKS {
        // Newest first, so the long-lived runners keep their warm clones.
        let stop = alive
            .iter()
            .rev()
            .filter(|name| idle.contains(*name))
            .take((count - min) as usize)
            .cloned()
            .collect();
        return Plan { start: 0, stop };
    }
    Plan {
        start: 0,
        stop: Vec::new(),
    }
}

/// The repositories `up` was given, put in the registry once the
/// dispatcher answers (tried on each tick until then).
struct Registration {
    client: Client,
    pending: Vec<(String, RepoUrl)>,
    poll_secs: f64,
    /// When the first try failed, to say so once after a while.
    failing_since: Option<Instant>,
}

/// How long registering may fail before `up` says so.
const REGISTRATION_QUIET: Duration = Duration::from_secs(15);

impl Registration {
    fn new(args: &UpArgs) -> anyhow::Result<Registration> {
        let mut pending = Vec::new();
        for given in &args.repos {
            // A local path is registered absolute: jobs name it so.
            let location = if observer::is_url(given) {
                given.clone()
            } else {
                let path =
                    std::fs::canonicalize(given).with_context(|| format!("REPO {given:?}"))?;
                path.to_str()
                    .with_context(|| format!("REPO {given:?}: not UTF-8"))?
                    .to_string()
            };
            let url =
                RepoUrl::parse(&location).map_err(|e| anyhow::anyhow!("REPO {given:?}: {e}"))?;
            pending.push((registry_name(&location), url));
        }
        let server = crate::cli::Server {
            server: format!("http://{}", args.http),
        };
        Ok(Registration {
            client: Client::new(&server)?,
            pending,
            poll_secs: args.interval.as_secs_f64(),
            failing_since: None,
        })
    }

    /// Registers what is pending, if the dispatcher answers.
    async fn try_once(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        match tokio::time::timeout(TICK * 4, self.register()).await {
            Ok(Ok(())) => self.failing_since = None,
            Ok(Err(err)) => self.failed(format!("{err:#}")),
            Err(_) => self.failed("the dispatcher did not answer".into()),
        }
    }

    fn failed(&mut self, why: String) {
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= REGISTRATION_QUIET {
            tracing::warn!("cannot register the repositories yet: {why}");
            self.failing_since = Some(Instant::now());
        }
    }

    async fn register(&mut self) -> anyhow::Result<()> {
        let held: Vec<Repo> = self.client.get("/api/repos").await?;
        while let Some((base, url)) = self.pending.first().cloned() {
            if let Some(known) = held.iter().find(|repo| repo.url == url) {
                println!("{url} is registered as {}", known.name);
                self.pending.remove(0);
                continue;
            }
            let taken = |name: &str| held.iter().any(|repo| repo.name.as_str() == name);
            let name = (1..)
                .map(|n| {
                    if n == 1 {
                        base.clone()
                    } else {
                        format!("{base}-{n}")
                    }
                })
                .find(|name| !taken(name))
                .unwrap_or(base);
            let repo = Repo {
                name: RepoName::parse(&name).map_err(|e| anyhow::anyhow!("{name:?}: {e}"))?,
                url: url.clone(),
                branches: Vec::new(),
                poll_secs: Some(self.poll_secs),
                webhook_secret_env: None,
                status: None,
            };
            let _: Repo = self
                .client
                .send(reqwest::Method::PUT, &format!("/api/repos/{name}"), &repo)
                .await
                .with_context(|| format!("registering {url} as {name}"))?;
            println!("registered {url} as {name}");
            self.pending.remove(0);
        }
        Ok(())
    }
}

/// A registry name for a location: the last part of its path, without
/// `.git`, in the characters names allow.
fn registry_name(location: &str) -> String {
    let last = location
        .trim_end_matches('/')
        .rsplit(['/', ':'])
        .next()
        .unwrap_or_default();
    let last = last.strip_suffix(".git").unwrap_or(last);
    let name: String = last
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '.' | '_' | '-') => c,
            _ => '-',
        })
        .collect();
    let name = name.trim_start_matches(['.', '_', '-']);
    if name.is_empty() {
        "repo".to_string()
    } else {
        name.chars().take(64).collect()
    }
}

/// Runs until `shutdown`; then stops the children, at once if `again`
/// fires (a second Ctrl-C).
pub async fn run(
    common: &Common,
    args: UpArgs,
    shutdown: CancellationToken,
    again: CancellationToken,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding the warren binary")?;
    let mut unregistered = Registration::new(&args)?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating --data-dir {}", args.data_dir.display()))?;
    let data = std::fs::canonicalize(&args.data_dir)
        .with_context(|| format!("--data-dir {}", args.data_dir.display()))?;
    let amqp_url_file = data.join("amqp-url");
    write_private(&amqp_url_file, &common.amqp_urls().join(","))
        .with_context(|| format!("writing {}", amqp_url_file.display()))?;
    let launch = Launch {
        exe: &exe,
        common,
        amqp_url_file: &amqp_url_file,
    };
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let git_timeout = args.git.git_timeout.as_secs_f64().to_string();

    let mut services = vec![
        Supervised::new(
            "dispatcher".into(),
            vec![
                "dispatcher".into(),
                "--data-dir".into(),
                path(&data.join("dispatcher")),
                "--http".into(),
                args.http.to_string(),
                "--git-timeout".into(),
                git_timeout.clone(),
            ],
        ),
        Supervised::new(
            "observer".into(),
            vec![
                "observer".into(),
                "--server".into(),
                format!("http://{}", args.http),
                "--state-dir".into(),
                path(&data.join("observer")),
                "--hooks-http".into(),
                args.hooks_http.to_string(),
                "--git-timeout".into(),
                git_timeout.clone(),
            ],
        ),
    ];
    let runner_args = |name: &str| {
        let mut runner = vec![
            "runner".into(),
            "--id".into(),
            name.to_string(),
            "--workdir".into(),
            path(&data.join(name)),
            "--job-timeout".into(),
            args.job_timeout.as_secs_f64().to_string(),
            "--grace".into(),
            RUNNER_GRACE_SECS.into(),
            "--git-timeout".into(),
            git_timeout.clone(),
        ];
        if let Some(command) = &args.test_command {
            runner.extend(["--test-command".into(), command.clone()]);
        }
        runner
    };
    let mut runners: Vec<Supervised> = Vec::new();
    let mut next_runner = 1u32;
    let mut new_runner = |runners: &mut Vec<Supervised>| -> anyhow::Result<()> {
        let name = format!("runner-{next_runner}");
        next_runner += 1;
        let mut runner = Supervised::new(name.clone(), runner_args(&name));
        runner
            .start(&launch)
            .with_context(|| format!("starting {name}"))?;
        runners.push(runner);
        Ok(())
    };

    for service in &mut services {
        service
            .start(&launch)
            .with_context(|| format!("starting the {}", service.name))?;
    }
    for _ in 0..args.runners.min.max(1).min(args.runners.max) {
        new_runner(&mut runners)?;
    }
    let managed = args.runners.min != args.runners.max;
    println!(
        "Warren is up: dashboard at http://{}  (runners: {}{}, data in {}; Ctrl-C to stop)",
        args.http,
        args.runners,
        if managed { ", managed" } else { "" },
        data.display()
    );

    let mut manager = if managed {
        Some(Manager::new(common, &args.http.to_string()))
    } else {
        None
    };
    let mut check = tokio::time::interval(TICK);
    while !shutdown.is_cancelled() {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = check.tick() => {}
        }
        for service in services.iter_mut().chain(runners.iter_mut()) {
            service.supervise(&launch);
        }
        unregistered.try_once().await;
        runners.retain(|r| !(r.retiring && r.child.is_none()));
        if let Some(manager) = manager.as_mut() {
            let alive: Vec<String> = runners
                .iter()
                .filter(|r| !r.retiring)
                .map(|r| r.name.clone())
                .collect();
            let Some(plan) = manager
                .decide(&alive, args.runners.min, args.runners.max, &shutdown)
                .await
            else {
                continue;
            };
            for _ in 0..plan.start {
                new_runner(&mut runners)?;
                tracing::info!(
                    runners = alive.len() + 1,
                    "jobs are waiting: started a runner"
                );
            }
            for name in plan.stop {
                if let Some(runner) = runners.iter_mut().find(|r| r.name == name) {
                    signal(runner, libc::SIGTERM);
                    runner.retiring = true;
                    tracing::info!(runner = %name, "queue empty: stopping an idle runner");
                }
            }
        }
    }

    // Stop: SIGTERM everyone and wait, then SIGKILL those left, when the
    // grace is over or at once on a second signal.
    let mut everyone: Vec<Supervised> = runners.into_iter().chain(services).collect();
    for child in &everyone {
        signal(child, libc::SIGTERM);
    }
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    let mut forced = false;
    loop {
        let mut running = Vec::new();
        for supervised in &mut everyone {
            if let Some(child) = supervised.child.as_mut() {
                if matches!(child.try_wait(), Ok(None)) {
                    running.push(supervised.name.clone());
                }
            }
        }
        if running.is_empty() {
            break;
        }
        if again.is_cancelled() {
            tracing::warn!(children = ?running, "second signal: killing every child now");
            forced = true;
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(children = ?running, "did not stop in time; killing them");
            break;
        }
        tokio::select! {
            _ = again.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    for supervised in &mut everyone {
        if let Some(child) = supervised.child.as_mut() {
            let _ = child.start_kill();
        }
    }
    for supervised in &mut everyone {
        if let Some(child) = supervised.child.as_mut() {
            let _ = child.wait().await;
        }
    }
    if forced {
        anyhow::bail!("stopped at once by a second signal; the children were killed");
    }
    println!("Warren stopped");
    Ok(())
}

/// The child's exit status if it has exited (and forgets the child).
fn exited(supervised: &mut Supervised) -> Option<String> {
    let status = match supervised.child.as_mut().map(Child::try_wait) {
        Some(Ok(None)) => return None,
        Some(Ok(Some(status))) => status.to_string(),
        Some(Err(err)) => err.to_string(),
        None => "not running".into(),
    };
    supervised.child = None;
    Some(status)
}

fn signal(supervised: &Supervised, signal: i32) {
    if let Some(pid) = supervised.child.as_ref().and_then(Child::id) {
        // SAFETY: kill(2) on our own child's pid; no memory involved.
        unsafe {
            libc::kill(pid as i32, signal);
        }
    }
}

/// What the runner manager watches: the work queue (through the broker)
/// and the runners' current jobs (through the dispatcher's API).
struct Manager {
    broker: broker::BrokerConfig,
    connection: Option<std::sync::Arc<dyn broker::Transport>>,
    api: String,
    http: Option<reqwest::Client>,
    empty_ticks: u32,
}

impl Manager {
    fn new(common: &Common, http: &str) -> Self {
        Manager {
            broker: common.broker_config(),
            connection: None,
            api: format!("http://{http}/api/runners"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .ok(),
            empty_ticks: 0,
        }
    }

    /// Jobs ready in the work queue, or `None` if the broker is unreachable.
    async fn ready_jobs(&mut self, shutdown: &CancellationToken) -> Option<u32> {
        if self.connection.is_none() {
            let name = format!("warren-manager-{}", std::process::id());
            let connect = broker::Connector::connect(&self.broker, &name, shutdown);
            self.connection = tokio::time::timeout(Duration::from_secs(2), connect)
                .await
                .ok()?
                .ok();
        }
        let broker = self.connection.as_ref()?;
        match broker.queue_stats(&broker.names().work_queue()).await {
            Ok(stats) => Some(stats.ready),
            Err(err) => {
                tracing::warn!("runner manager cannot read the queue: {err}");
                self.connection = None;
                None
            }
        }
    }

    /// Runners the dispatcher sees without a current job.
    async fn idle_runners(&self) -> HashSet<String> {
        let Some(http) = &self.http else {
            return HashSet::new();
        };
        let Ok(response) = http.get(&self.api).send().await else {
            return HashSet::new();
        };
        let runners: Vec<serde_json::Value> = response.json().await.unwrap_or_default();
        runners
            .into_iter()
            .filter(|r| r["current_job"].is_null())
            .filter_map(|r| r["id"].as_str().map(str::to_string))
            .collect()
    }

    async fn decide(
        &mut self,
        alive: &[String],
        min: u32,
        max: u32,
        shutdown: &CancellationToken,
    ) -> Option<Plan> {
        let ready = self.ready_jobs(shutdown).await?;
        self.empty_ticks = if ready == 0 { self.empty_ticks + 1 } else { 0 };
        let idle = if ready == 0 && alive.len() as u32 > min {
            self.idle_runners().await
        } else {
            HashSet::new()
        };
        Some(plan(ready, alive, &idle, self.empty_ticks, min, max))
    }
}

/// How `up` starts its children: this binary, the common settings, and
/// the file holding the broker URL.
struct Launch<'a> {
    exe: &'a Path,
    common: &'a Common,
    amqp_url_file: &'a Path,
}

impl Launch<'_> {
    /// Starts `warren ARGS` with the common settings passed in the
    /// environment, and the broker URL in the file `amqp_url_file` (so its
    /// password is in neither `ps` nor any process's environment). The
    /// child gets SIGTERM if this process dies, so nothing is left behind.
    fn spawn(&self, args: &[String]) -> anyhow::Result<Child> {
        let common = self.common;
        let mut command = Command::new(self.exe);
        command
            .args(args)
            .env_remove("WARREN_AMQP_URL")
            .env("WARREN_AMQP_URL_FILE", self.amqp_url_file)
            .env("WARREN_NAMESPACE", &common.namespace)
            .env("WARREN_DELIVERY_LIMIT", common.delivery_limit.to_string())
            .env_remove("WARREN_QUORUM_SIZE")
            .env(
                "WARREN_MAX_MESSAGE_BYTES",
                common.max_message_bytes.to_string(),
            )
            .stdin(Stdio::null());
        if let Some(size) = common.quorum_size {
            command.env("WARREN_QUORUM_SIZE", size.to_string());
        }
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        Ok(command.spawn()?)
    }
}

/// Writes `content` to `path`, readable by this user only (0600), in one
/// step (a new file renamed over the old one).
fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temp = path.with_extension("new");
    let _ = std::fs::remove_file(&temp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)?;
    file.write_all(content.as_bytes())?;
    std::fs::rename(&temp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_name_is_the_last_part_of_the_location() {
        assert_eq!(registry_name("/srv/git/App.git"), "app");
        assert_eq!(
            registry_name("https://example.org/org/my_lib.git/"),
            "my_lib"
        );
        assert_eq!(registry_name("git@host:org/Web Site"), "web-site");
        assert_eq!(registry_name("/"), "repo");
        assert_eq!(registry_name("/tmp/.hidden"), "hidden");
        for location in ["/srv/git/App.git", "git@host:org/Web Site", "/", "/x/-é-"] {
            let name = registry_name(location);
            assert!(RepoName::parse(&name).is_ok(), "{location} gives {name}");
        }
    }

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("runner-{i}")).collect()
    }

    #[test]
    fn restarts_wait_twice_as_long_each_time_up_to_thirty_seconds() {
        let mut backoff = Backoff::new();
        let mut now = Instant::now();
        let mut delays = Vec::new();
        for _ in 0..9 {
            backoff.started(now);
            now += Duration::from_secs(1); // crashes a second after each start
            let delay = backoff.exited(now);
            delays.push(delay.as_secs_f64());
            now += delay;
        }
        assert_eq!(delays, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]);
        // A start that failed counts like an exit.
        assert_eq!(backoff.exited(now), Backoff::MAX);
    }

    #[test]
    fn a_minute_of_health_starts_the_pauses_over() {
        let mut backoff = Backoff::new();
        let start = Instant::now();
        for _ in 0..4 {
            backoff.started(start);
            backoff.exited(start);
        }
        backoff.started(start);
        let almost = start + Backoff::HEALTHY_AFTER - Duration::from_millis(1);
        assert_eq!(backoff.exited(almost), Duration::from_secs(8));
        backoff.started(almost);
        let healthy = almost + Backoff::HEALTHY_AFTER;
        assert_eq!(backoff.exited(healthy), Backoff::FIRST);
        backoff.started(healthy);
        assert_eq!(backoff.exited(healthy), Duration::from_secs(1));
    }

    #[test]
    fn grows_while_jobs_wait_up_to_max() {
        let none = HashSet::new();
        assert_eq!(plan(30, &names(1), &none, 0, 1, 4).start, 3);
        assert_eq!(plan(2, &names(1), &none, 0, 1, 4).start, 2);
        assert_eq!(
            plan(30, &names(4), &none, 0, 1, 4),
            Plan {
                start: 0,
                stop: vec![]
            }
        );
        assert_eq!(
            plan(0, &names(0), &none, 0, 1, 4).start,
            1,
            "never below min"
        );
    }

    #[test]
    fn shrinks_to_min_only_when_the_queue_stayed_empty_and_only_idle_runners() {
        let idle: HashSet<String> = ["runner-2", "runner-3", "runner-4"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(
            plan(0, &names(4), &idle, 1, 1, 4).stop.is_empty(),
            "not before the cool-down"
        );
        assert!(
            plan(1, &names(4), &idle, 9, 1, 4).stop.is_empty(),
            "not while jobs wait"
        );
        let plan_now = plan(0, &names(4), &idle, SCALE_DOWN_AFTER_TICKS, 1, 4);
        assert_eq!(plan_now.stop, vec!["runner-4", "runner-3", "runner-2"]);
        let busy: HashSet<String> = ["runner-4"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            plan(0, &names(4), &busy, 9, 1, 4).stop,
            vec!["runner-4"],
            "busy runners are kept"
        );
    }
}
