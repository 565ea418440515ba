//! The observer for every repository in the dispatcher's registry.
//!
//! It reads `GET {server}/api/repos` every [`SYNC_EVERY`] (and at once
//! when a webhook names a repository it does not know yet), and keeps one
//! watcher per repository: started when one is added, restarted when its
//! URL, branches or interval change, stopped (and its state and mirror
//! deleted) when it is removed. Each watcher polls on its own interval;
//! the git work of all of them shares [`RegistryConfig::concurrency`]
//! permits, and every git call has the git timeout, so a slow or
//! unreachable repository delays no other. They share one broker
//! connection. Pushes come through [`crate::hooks`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use broker::BrokerConfig;
use model::{Repo, RepoName};
use tasks::Tasks;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::hooks::{HookTarget, Hooks, SecretReader};
use crate::session::Session;
use crate::source::RepoSource;
use crate::state::StateFile;
use crate::watch::{watch, PushRequest, WatchSpec, Watcher};

/// How often the registry is read: a repository added through the API is
/// watched within this (and polled at once).
pub const SYNC_EVERY: Duration = Duration::from_secs(2);

/// Limit on one read of the registry.
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a watcher that stopped on an error waits to start again.
const RETRY_FAILED_AFTER: Duration = Duration::from_secs(10);

/// How long a stopped watcher gets to end before its files are removed.
const STOP_WATCHER_WITHIN: Duration = Duration::from_secs(5);

/// Pushes waiting for one repository's watcher, at most.
const PUSH_QUEUE: usize = 64;

/// Everything the registry observer needs.
#[derive(Clone)]
pub struct RegistryConfig {
    pub broker: BrokerConfig,
    /// The dispatcher's API (`--server`).
    pub server: String,
    /// Where each repository's state (`NAME.json`) and mirror are kept.
    pub state_dir: PathBuf,
    /// Where webhooks are received.
    pub hooks_http: SocketAddr,
    pub git_timeout: Duration,
    /// Repositories read (fetched, listed) at once, at most.
    pub concurrency: usize,
    /// Reads webhook secrets by variable name.
    pub secrets: SecretReader,
}

/// One repository being watched.
struct Running {
    repo: Repo,
    stop: CancellationToken,
    pushes: mpsc::Sender<PushRequest>,
    /// Fires when the watcher has ended (`true`: cleanly).
    ended: oneshot::Receiver<bool>,
    /// When it ended on an error.
    failed_at: Option<Instant>,
}

impl Running {
    /// Whether a change of `repo` needs a new watcher (the webhook secret
    /// is read per delivery and needs none).
    fn differs(&self, repo: &Repo) -> bool {
        self.repo.url != repo.url
            || self.repo.branches != repo.branches
            || self.repo.poll_secs != repo.poll_secs
    }
}

/// Runs the registry observer until `shutdown` fires.
pub async fn run(config: RegistryConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("--state-dir {}", config.state_dir.display()))?;
    let listener = crate::hooks::bind(config.hooks_http).await?;
    let hooks = Hooks::new(config.secrets.clone());
    let tasks = Tasks::new(&shutdown);
    let session = Arc::new(Session::new());
    {
        let (session, broker, stopping) = (
            session.clone(),
            config.broker.clone(),
            tasks.stopping().clone(),
        );
        tasks.lifetime("the broker session", async move {
            let name = format!("warren-observer-{}", std::process::id());
            if let Err(err) = session.keep_connected(&broker, &name, &stopping).await {
                tracing::error!("cannot use the broker: {err}");
            }
        });
    }
    {
        let (hooks, stopping) = (hooks.clone(), tasks.stopping().clone());
        tasks.lifetime("the webhook server", async move {
            if let Err(err) = crate::hooks::serve(listener, hooks, stopping).await {
                tracing::error!("the webhook server failed: {err}");
            }
        });
    }
    let client = reqwest::Client::builder()
        .timeout(SYNC_TIMEOUT)
        .build()
        .context("building the HTTP client")?;
    let mut fleet = Fleet {
        config: &config,
        tasks: &tasks,
        session,
        gate: Arc::new(Semaphore::new(config.concurrency.max(1))),
        running: HashMap::new(),
    };
    tracing::info!(server = %config.server, hooks = %config.hooks_http, "observer started for the registry");
    let mut last_error: Option<String> = None;
    let ended = loop {
        match read_registry(&client, &config.server).await {
            Ok(repos) => {
                if last_error.take().is_some() {
                    tracing::info!("the registry is readable again");
                }
                fleet.apply(repos).await;
                hooks.synced(fleet.hook_targets());
            }
            Err(err) => {
                let text = format!("{err:#}");
                if last_error.as_deref() != Some(&text) {
                    tracing::warn!(
                        "cannot read the registry: {text}; trying again every {SYNC_EVERY:?}"
                    );
                    last_error = Some(text);
                }
                fleet.restart_failed();
                hooks.sync_failed();
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            died = tasks.died() => break Err(anyhow!("{died}")),
            _ = tokio::time::sleep(SYNC_EVERY) => {}
            _ = hooks.resync_requested() => {}
        }
    };
    fleet.running.clear();
    tasks.stop(Duration::from_secs(2)).await;
    tracing::info!("observer stopped");
    ended
}

async fn read_registry(client: &reqwest::Client, server: &str) -> anyhow::Result<Vec<Repo>> {
    let url = format!("{}/api/repos", server.trim_end_matches('/'));
    let answer = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = answer.status();
    if !status.is_success() {
        return Err(anyhow!("GET {url}: {status}"));
    }
    answer
        .json()
        .await
        .with_context(|| format!("GET {url}: not a list of repositories"))
}

/// The watchers, one per registered repository.
struct Fleet<'a> {
    config: &'a RegistryConfig,
    tasks: &'a Tasks,
    session: Arc<Session>,
    gate: Arc<Semaphore>,
    running: HashMap<RepoName, Running>,
}

impl Fleet<'_> {
    fn state_file(&self, name: &RepoName) -> PathBuf {
        self.config.state_dir.join(format!("{name}.json"))
    }

    /// Makes the watchers match the registry.
    async fn apply(&mut self, repos: Vec<Repo>) {
        let mut wanted: HashMap<RepoName, Repo> = repos
            .into_iter()
            .map(|repo| (repo.name.clone(), repo))
            .collect();
        let names: Vec<RepoName> = self.running.keys().cloned().collect();
        for name in names {
            match wanted.get(&name) {
                None => {
                    self.stop(&name).await;
                    self.forget(&name).await;
                    tracing::info!(repo = %name, "no longer watched: removed from the registry");
                }
                Some(repo) if self.running[&name].differs(repo) => {
                    let moved = self.running[&name].repo.url != repo.url;
                    self.stop(&name).await;
                    if moved {
                        // Another repository under the old name: start over.
                        self.forget(&name).await;
                    }
                }
                Some(repo) => {
                    if let Some(running) = self.running.get_mut(&name) {
                        running.repo = repo.clone();
                    }
                }
            }
        }
        self.restart_failed();
        for (name, repo) in wanted.drain() {
            if !self.running.contains_key(&name) {
                let running = self.start(repo);
                self.running.insert(name, running);
            }
        }
    }

    /// Notes watchers that ended on an error, and starts again those that
    /// did long enough ago.
    fn restart_failed(&mut self) {
        let now = Instant::now();
        let mut again = Vec::new();
        for (name, running) in &mut self.running {
            if running.failed_at.is_none() {
                match running.ended.try_recv() {
                    Err(oneshot::error::TryRecvError::Empty) => continue,
                    _ => running.failed_at = Some(now),
                }
            }
            if running
                .failed_at
                .is_some_and(|at| now.duration_since(at) >= RETRY_FAILED_AFTER)
            {
                again.push(name.clone());
            }
        }
        for name in again {
            if let Some(old) = self.running.remove(&name) {
                tracing::info!(repo = %name, "watching again");
                let running = self.start(old.repo);
                self.running.insert(name, running);
            }
        }
    }

    fn start(&self, repo: Repo) -> Running {
        let stop = self.tasks.stopping().child_token();
        let (pushes, mut requests) = mpsc::channel(PUSH_QUEUE);
        let (done, ended) = oneshot::channel();
        let state_file = self.state_file(&repo.name);
        let source = RepoSource::open_registered(&repo.url, &state_file, self.config.git_timeout);
        let spec = WatchSpec {
            label: repo.name.to_string(),
            branches: repo.branches.clone(),
            interval: repo.poll_secs.map(Duration::from_secs_f64),
            max_message_bytes: self.config.broker.max_message_bytes,
        };
        tracing::info!(
            repo = %repo.name, url = %repo.url, branches = ?spec.branches,
            poll_secs = ?repo.poll_secs, "watching"
        );
        let (session, gate, token) = (self.session.clone(), self.gate.clone(), stop.clone());
        let label = repo.name.to_string();
        self.tasks.spawn(format!("watching {label}"), async move {
            let watched = async {
                let watcher =
                    Watcher::open(spec, source, StateFile::new(state_file), token).await?;
                watch(watcher, &session, Some(&gate), Some(&mut requests)).await
            }
            .await;
            if let Err(err) = &watched {
                tracing::error!(repo = %label, "stopped watching: {err}; trying again in {RETRY_FAILED_AFTER:?}");
            }
            let _ = done.send(watched.is_ok());
        });
        Running {
            repo,
            stop,
            pushes,
            ended,
            failed_at: None,
        }
    }

    /// Stops a watcher and waits (a bounded time) for it to end.
    async fn stop(&mut self, name: &RepoName) {
        let Some(running) = self.running.remove(name) else {
            return;
        };
        running.stop.cancel();
        if running.failed_at.is_none()
            && tokio::time::timeout(STOP_WATCHER_WITHIN, running.ended)
                .await
                .is_err()
        {
            tracing::warn!(repo = %name, "the watcher did not stop within {STOP_WATCHER_WITHIN:?}");
        }
    }

    /// Deletes a repository's state and mirror.
    async fn forget(&self, name: &RepoName) {
        let state_file = self.state_file(name);
        remove(&state_file, false).await;
        let mut mirror = state_file.into_os_string();
        mirror.push(".mirror");
        remove(Path::new(&mirror), true).await;
    }

    fn hook_targets(&self) -> HashMap<RepoName, HookTarget> {
        self.running
            .iter()
            .map(|(name, running)| {
                let target = HookTarget {
                    secret_env: running.repo.webhook_secret_env.clone(),
                    pushes: running.pushes.clone(),
                };
                (name.clone(), target)
            })
            .collect()
    }
}

async fn remove(path: &Path, dir: bool) {
    let removed = if dir {
        tokio::fs::remove_dir_all(path).await
    } else {
        tokio::fs::remove_file(path).await
    };
    if let Err(err) = removed {
        if err.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("cannot remove {}: {err}", path.display());
        }
    }
}
